"""``fasttorrent seed``: real downloaders fetch bit-exact from it.

libtorrent's own downloader (PyPI bindings, loopback-only settings, the
benchmark's torrent/tools/benchclients/lt_download.py) and fasttorrent's downloader fetch a
multi-file torrent from two `fasttorrent seed` processes; a mixed swarm of a
libtorrent seeder and a fasttorrent seeder serves fasttorrent. SIGINT stops a
seeder cleanly (exit 7, `--json` summary with the bytes it uploaded).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_module
from helpers.clients import FasttorrentSeed
from helpers.payload import ft_create, write_tree
from helpers.swarm import start_seeders

TREE = {"a.bin": 700_001, "sub/b.bin": 1_300_000, "sub/c/d.bin": 65_536, "e.txt": 10}
#: Every process here is bounded: a download by this, a seeder by the fixture.
RUN_TIMEOUT = 60


@pytest.fixture
def swarm(tmp_path: Path) -> Iterator[tuple[Path, Path, list[FasttorrentSeed]]]:
    """Two ``fasttorrent seed`` processes (one and two workers) over a multi-file torrent;
    killed when the test ends, pass or fail."""
    src = tmp_path / "src" / "tree"
    write_tree(src, TREE)
    torrent = ft_create(src, tmp_path / "t.torrent", piece_length="32K")
    with contextlib.ExitStack() as stack:
        seeds = [stack.enter_context(FasttorrentSeed(torrent, src.parent)),
                 stack.enter_context(FasttorrentSeed(torrent, src.parent, workers=2))]
        yield torrent, src, seeds


def same_tree(a: Path, b: Path) -> None:
    for rel in TREE:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_libtorrent_downloads_from_fasttorrent_seeders(
        swarm: tuple[Path, Path, list[FasttorrentSeed]], tmp_path: Path) -> None:
    require_module("libtorrent")
    torrent, src, seeds = swarm
    out = tmp_path / "lt"
    r = subprocess.run([sys.executable, "-m", "torrent.tools.benchclients.lt_download", "--peers",
                        ",".join(s.addr for s in seeds), "--timeout", str(RUN_TIMEOUT - 10),
                        str(torrent), str(out)], capture_output=True, text=True, check=False,
                       timeout=RUN_TIMEOUT)
    assert r.returncode == 0, r.stderr
    same_tree(src, out / "tree")
    uploaded = 0
    for s in seeds:
        summary = s.stop_summary()  # exit 7, no traceback, its --json summary
        uploaded += summary["bytes_uploaded"]
    assert uploaded >= sum(TREE.values())


def test_fasttorrent_downloads_from_a_mixed_swarm(
        swarm: tuple[Path, Path, list[FasttorrentSeed]], tmp_path: Path) -> None:
    require_module("libtorrent")
    torrent, src, seeds = swarm
    (lt_seed,) = start_seeders(str(torrent), [str(src.parent)], str(tmp_path))
    try:
        out = tmp_path / "ft"
        r = subprocess.run([sys.executable, "-m", "torrent", "download", str(torrent), "-o",
                            str(out), "--no-trackers", "--json", "--peer", lt_seed.addr,
                            "--peer", seeds[0].addr], capture_output=True, text=True, check=False,
                           timeout=RUN_TIMEOUT)
        assert r.returncode == 0, r.stderr
        j = json.loads(r.stdout)
        assert j["complete"] and j["hash_failures"] == 0
        same_tree(src, out / "tree")
        assert {p["port"] for p in j["peers"] if p["connected"]} == {lt_seed.port, seeds[0].port}
    finally:
        lt_seed.stop()


def test_seed_refuses_missing_data(tmp_path: Path) -> None:
    src = tmp_path / "src" / "tree"
    write_tree(src, TREE)
    torrent = ft_create(src, tmp_path / "t.torrent", piece_length="32K")
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run([sys.executable, "-m", "torrent", "seed", str(torrent), str(empty),
                        "--bind", "127.0.0.1", "--no-trackers"], capture_output=True, text=True,
                       timeout=RUN_TIMEOUT, check=False)
    assert r.returncode == 6, r.stderr
    assert "nothing to seed" in r.stderr and "Traceback" not in r.stderr
    assert os.listdir(empty) == []  # seeding never creates files
