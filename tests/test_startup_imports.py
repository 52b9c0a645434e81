"""Start-up: what the CLI imports, by module name (never by duration).

A download of a plain .torrent imports neither the parts of the package it
does not use (the DHT without a node, a magnet's fetch, the daemon and its
HTTP stack, metrics, web seeds, trackers it does not announce to, BEP 52's
piece-layer server, the tools) nor ``cryptography`` when encryption is
disabled; with MSE allowed, ``cryptography`` is imported by the CLI's process
before it forks the workers (so that they do not each import it). The run is
a real download from a libtorrent seeder on 127.0.0.1, whose CLI process
writes the names in ``sys.modules`` as it exits.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import require_module
from helpers.payload import make_torrent_payload, tree_bytes

#: What a plain .torrent's download (no DHT, no trackers, no web seed) must not import.
NOT_FOR_A_PLAIN_DOWNLOAD = [
    "aiohttp", "prometheus_client", "torrent.daemon", "torrent.daemonstate",
    "torrent.metrics", "torrent.engine", "torrent.sources",
    "torrent.dht", "torrent.dht.service", "torrent.dht.krpc", "torrent.dht.routing",
    "torrent.magnetfetch", "torrent.metadata", "torrent.wire.metadata_conn",
    "torrent.tracker.client", "torrent.net.webseed", "torrent.webseed_worker",
    "torrent.piecelayers", "torrent.tools", "torrent.creator", "torrent.verifier",
]
#: What ``--version`` and ``--help`` must not import (the daemon's and the bench's options).
NOT_FOR_VERSION = ["aiohttp", "torrent.daemon", "torrent.tools.bench", "torrent.coordinator"]
#: Bound on each command run here (seconds).
RUN_TIMEOUT = 120

#: Runs the CLI as ``python -m torrent`` does (argv: OUT, then the CLI's arguments), and
#: writes the names in ``sys.modules`` to OUT as it exits (``cli.run`` ends with
#: ``os._exit``, and a usage error with ``SystemExit``; its forked workers are not it).
_RECORD_MODULES = """\
import atexit, os, runpy, sys
out = sys.argv.pop(1)
me = os.getpid()
def record():
    if os.getpid() == me:
        with open(out, "w") as f:
            f.write("\\n".join(sorted(sys.modules)))
atexit.register(record)
_exit = os._exit
def exit_recorded(code):
    record()
    _exit(code)
os._exit = exit_recorded
sys.argv[0] = "fasttorrent"
runpy.run_module("torrent", run_name="__main__", alter_sys=True)
"""


def _cli_modules(tmp: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    out = tmp / "modules.txt"
    r = subprocess.run([sys.executable, "-c", _RECORD_MODULES, str(out), *args],
                       capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    return r, set(out.read_text().split()) if out.exists() else set()


def test_the_names_checked_are_modules() -> None:
    # a misspelt name would make its check pass whatever is imported
    for name in {*NOT_FOR_A_PLAIN_DOWNLOAD, *NOT_FOR_VERSION}:
        assert importlib.util.find_spec(name) is not None, name


@pytest.mark.parametrize("encryption", ["disabled", "enabled"])
def test_a_plain_torrent_download_imports_only_what_it_uses(
        tmp_path: Path, seeders: Callable[..., list[Any]], encryption: str) -> None:
    require_module("libtorrent")
    pl = make_torrent_payload(tmp_path, {"a.bin": 700_000, "b.bin": 300_000}, seed=14,
                              piece_length=1 << 16)
    (seeder,) = seeders(Path(pl.torrent), [pl.root])
    out = tmp_path / "out"
    r, modules = _cli_modules(tmp_path, "download", pl.torrent, "-o", str(out), "--peer",
                              seeder.addr, "--no-dht", "--no-trackers", "--bind", "127.0.0.1",
                              "--encryption", encryption, "--json")
    assert r.returncode == 0, r.stderr
    assert tree_bytes(out) == tree_bytes(pl.root)
    assert "torrent.coordinator" in modules and "torrent.workerhost" in modules
    assert not modules & set(NOT_FOR_A_PLAIN_DOWNLOAD), sorted(
        modules & set(NOT_FOR_A_PLAIN_DOWNLOAD))
    # MSE's cipher: only when MSE may be spoken, and then before the workers fork
    assert ("cryptography" in modules) == (encryption != "disabled")


def test_a_magnet_download_without_a_node_imports_no_dht(
        tmp_path: Path, seeders: Callable[..., list[Any]]) -> None:
    # the fetch's code is loaded before the run's clock starts, the DHT's only for a node
    # (it was imported in the fetch, unused: ~9 ms of the metadata's time)
    require_module("libtorrent")
    from torrent import metainfo
    from torrent.magnet import magnet_uri

    pl = make_torrent_payload(tmp_path, {"a.bin": 300_000}, seed=15, piece_length=1 << 16)
    (seeder,) = seeders(Path(pl.torrent), [pl.root])
    host, port = seeder.addr.rsplit(":", 1)
    uri = magnet_uri(metainfo.load(pl.torrent), peers=[(host, int(port))])
    out = tmp_path / "out"
    r, modules = _cli_modules(tmp_path, "download", uri, "-o", str(out), "--no-dht",
                              "--no-trackers", "--bind", "127.0.0.1", "--json")
    assert r.returncode == 0, r.stderr
    assert tree_bytes(out) == tree_bytes(pl.root)
    assert "torrent.magnetfetch" in modules
    dht = {m for m in modules if m == "torrent.dht" or m.startswith("torrent.dht.")}
    assert not dht, sorted(dht)


@pytest.mark.parametrize("args", [["--version"], ["--help"]])
def test_version_and_help_import_no_command(tmp_path: Path, args: list[str]) -> None:
    r, modules = _cli_modules(tmp_path, *args)
    assert r.returncode == 0, r.stderr
    assert "fasttorrent" in r.stdout
    assert not modules & set(NOT_FOR_VERSION), sorted(modules & set(NOT_FOR_VERSION))


def test_a_fresh_worker_imports_no_dht_fetch_or_cipher() -> None:
    # a library caller's workers are fresh interpreters importing the worker's entry point
    code = "import sys, torrent.workerhost; print('\\n'.join(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=RUN_TIMEOUT, check=True, env=dict(os.environ))
    modules = set(r.stdout.split())
    assert "torrent.worker" in modules
    assert not modules & {*NOT_FOR_A_PLAIN_DOWNLOAD, "cryptography"}, sorted(
        modules & {*NOT_FOR_A_PLAIN_DOWNLOAD, "cryptography"})
