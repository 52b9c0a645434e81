"""Interoperability with real clients: aria2c and transmission-cli (Debian packages).

Each direction moves a payload between fasttorrent and one real client on
127.0.0.1 and compares the result byte for byte with the original:

- aria2c downloads from ``fasttorrent seed`` (which dials it) and exits by
  itself once complete (``--seed-time=0``);
- fasttorrent downloads from aria2c seeding checked data (a multi-file torrent);
- transmission-cli downloads from ``fasttorrent seed`` (which dials it:
  Transmission 3.00 ignores loopback peers from trackers) a multi-file
  torrent; transmission-cli never exits by itself, so completion is read from
  its status line and confirmed by ``fasttorrent verify`` before it is stopped;
- fasttorrent downloads from transmission-cli seeding checked data.

The torrents are made by ``fasttorrent create``; file sizes are not multiples
of the piece length, so last pieces are short and pieces span files.  Every
client is bounded in time and killed when its test ends (helpers/clients.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import require_binary
from helpers.clients import (
    TRANSMISSION_SEEDING,
    aria2c_download,
    aria2c_seed,
    assert_same_payload,
    fasttorrent_seed,
    transmission,
    wait_verified,
)
from helpers.payload import RunResult, assert_clean_after, ft_create, run_cli, write_tree

from torrent.ports import free_port

#: One file, 8 MiB and a short last piece.
SINGLE = {"one.bin": (8 << 20) + 12_345}
SINGLE_PIECE = "64K"
#: A multi-file torrent's tree (paths start with its name): pieces span files.
TREE = {
    "tree/a.bin": 3_000_001,
    "tree/sub/b.bin": 5 << 20,
    "tree/sub/c/d.bin": 65_537,
    "tree/e.txt": 10,
}
TREE_PIECE = "32K"
#: Bound on a whole download by either side.  It takes seconds; Transmission
#: unchokes a new peer at its next rechoke (every 10 s) at the latest.
DOWNLOAD_TIMEOUT = 120.0
#: aria2c downloading 8 MiB: it needs a few seconds.
ARIA2C_DOWNLOAD_TIMEOUT = 30.0
#: How long Transmission may take to have its completed data on disk.
VERIFY_TIMEOUT = 30.0


def make_payload(tmp_path: Path, files: dict[str, int], piece: str) -> tuple[Path, Path]:
    """The payload under ``tmp_path/src`` and its torrent; (torrent, data dir)."""
    src = tmp_path / "src"
    write_tree(src, files)
    top = src / next(iter(files)).split("/")[0]
    return ft_create(top, tmp_path / "t.torrent", piece_length=piece), src


@pytest.fixture
def single(tmp_path: Path) -> tuple[Path, Path]:
    return make_payload(tmp_path, SINGLE, SINGLE_PIECE)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    return make_payload(tmp_path, TREE, TREE_PIECE)


def ft_download(torrent: Path, out: Path, port: int) -> RunResult:
    """``fasttorrent download`` from the one peer on ``port``; it must complete cleanly."""
    res = run_cli(["download", str(torrent), "-o", str(out), "--peer", f"127.0.0.1:{port}",
                   "--no-trackers", "--json", "--workers", "2"], timeout=DOWNLOAD_TIMEOUT)
    assert res.returncode == 0, res.describe()
    j = res.json
    assert j["complete"] and j["hash_failures"] == 0 and not j["banned_peers"], j
    assert [p["port"] for p in j["peers"] if p["connected"]] == [port], j["peers"]
    assert "Traceback" not in res.stderr
    assert_clean_after(res)
    return res


def test_aria2c_downloads_from_fasttorrent_seed(
        single: tuple[Path, Path], tmp_path: Path) -> None:
    """aria2 also sends later bitfields instead of HAVEs: the seeder must take them."""
    require_binary("aria2c")
    torrent, src = single
    out = tmp_path / "aria2c"
    port = free_port()
    with aria2c_download(torrent, out, port) as aria, \
            fasttorrent_seed(torrent, src, [f"127.0.0.1:{port}"]) as seed:
        try:
            rc = aria.wait(ARIA2C_DOWNLOAD_TIMEOUT)
        except AssertionError as e:
            peers = seed.stop_summary()["peers"]
            raise AssertionError(f"{e}\nthe seeder's peers: {peers}") from None
        assert rc == 0, aria.describe()
        summary = seed.stop_summary()
    assert_same_payload(torrent, src, out)
    assert summary["bytes_uploaded"] >= sum(SINGLE.values())


def test_fasttorrent_downloads_from_aria2c(tree: tuple[Path, Path], tmp_path: Path) -> None:
    require_binary("aria2c")
    torrent, src = tree
    data = tmp_path / "aria2c-data"
    shutil.copytree(src, data)
    out = tmp_path / "ft"
    port = free_port()
    with aria2c_seed(torrent, data, port) as aria:
        ft_download(torrent, out, port)
        assert aria.popen.poll() is None, aria.describe()  # still seeding: nothing failed
    assert_same_payload(torrent, src, out)


def test_transmission_downloads_from_fasttorrent_seed(
        tree: tuple[Path, Path], tmp_path: Path) -> None:
    require_binary("transmission-cli")
    torrent, src = tree
    out = tmp_path / "transmission"
    port = free_port()
    with transmission(torrent, out, port, tmp_path / "tr-config") as tr, \
            fasttorrent_seed(torrent, src, [f"127.0.0.1:{port}"]) as seed:
        tr.wait_for(TRANSMISSION_SEEDING, DOWNLOAD_TIMEOUT)  # its own word: complete
        wait_verified(torrent, out, VERIFY_TIMEOUT)
        assert tr.stop() == 0, tr.describe()
        summary = seed.stop_summary()
    assert_same_payload(torrent, src, out)
    assert summary["bytes_uploaded"] >= sum(TREE.values())
    assert [p["connected"] for p in summary["peers"]] == [True], summary["peers"]


def test_fasttorrent_downloads_from_transmission(
        single: tuple[Path, Path], tmp_path: Path) -> None:
    require_binary("transmission-cli")
    torrent, src = single
    data = tmp_path / "transmission-data"
    shutil.copytree(src, data)
    out = tmp_path / "ft"
    port = free_port()
    with transmission(torrent, data, port, tmp_path / "tr-config") as tr:
        status = tr.wait_for(r"^(Progress|Seeding), ", 0)
        assert status.group(1) == "Seeding", tr.describe()  # it checked the data: complete
        ft_download(torrent, out, port)
        assert tr.popen.poll() is None, tr.describe()
        assert tr.stop() == 0, tr.describe()
    assert_same_payload(torrent, src, out)
