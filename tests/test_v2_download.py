"""Downloading and seeding BitTorrent v2 (BEP 52) torrents, against libtorrent on 127.0.0.1.

v2-only and hybrid torrents made by libtorrent's own ``create_torrent``
(odd file sizes, a file of one block, one byte past a piece, an empty file,
16 KiB and 64 KiB pieces) are downloaded from libtorrent seeders bit-exact:
a v2-only torrent is known on the wire by its truncated v2 info-hash and
every piece is checked by its merkle root (``torrent.v2pieces``, in the
native I/O thread); a hybrid's pieces by both hashes. A peer sending bad
data for a v2-only torrent is banned, the download completes from the honest
seeder. libtorrent downloads a fasttorrent-created v2-only torrent from
``fasttorrent seed``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import require_module
from helpers import payload
from helpers.clients import FasttorrentSeed
from helpers.payload import CLI, write_tree
from helpers.testpeer import GatedRelay, TestPeer

from torrent import metainfo

pytestmark = pytest.mark.timeout(180)

#: Bound on one CLI run (a download of a few MiB takes about a second).
RUN_TIMEOUT = 90

#: Odd sizes: one block, several pieces with a layer padded to a power of two, one
#: byte past a piece, a file smaller than a block, an empty file, nested directories.
FILES = {
    "a.bin": 100_000,
    "big.bin": 70 * 16384 + 1000,
    "sub/b.bin": 5 * 16384 + 3,
    "sub/c.txt": 7,
    "sub/deeper/one-past.bin": 65536 + 1,
    "z/empty": 0,
    "a.txt": 16384,
}


@pytest.fixture(scope="module")
def lt() -> Any:
    return require_module("libtorrent")


def lt_create(path: Path, out: Path, piece_length: int, kind: str) -> Path:
    return payload.lt_create(path.parent, path.name, out, piece_length, v1_only=False,
                             v2_only=kind == "v2")


def download(torrent: Path, out: Path, peers: list[str]) -> dict[str, Any]:
    argv = [*CLI, "download", str(torrent), "-o", str(out), "--workers", "2", "--no-trackers",
            "--no-dht", "--json", "--bind", "127.0.0.1", "--stall-timeout", "30"]
    for p in peers:
        argv += ["--peer", p]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    assert r.returncode == 0, r.stderr
    result: dict[str, Any] = json.loads(r.stdout)
    assert result["complete"] is True
    return result


def same_tree(got: Path, want: Path, files: dict[str, int]) -> None:
    for rel in files:
        assert (got / rel).read_bytes() == (want / rel).read_bytes(), rel
    assert not (got / ".pad").exists()  # pads are never written


@pytest.mark.parametrize("kind", ["v2", "hybrid"])
@pytest.mark.parametrize(("layout", "piece_length"),
                         [("single", 16384), ("multi", 16384), ("multi", 65536),
                          ("dir-of-one", 16384)])
def test_download_from_libtorrent_seeders(lt: Any, tmp_path: Path, kind: str, layout: str,
                                          piece_length: int) -> None:
    from helpers.swarm import start_seeders

    src = tmp_path / "src"
    if layout == "single":
        write_tree(src, {"one.bin": 300_000 + 17}, seed=1)
        path, files = src / "one.bin", {"one.bin": 300_017}
    elif layout == "dir-of-one":
        # libtorrent makes a v2-only torrent of a directory holding one file a single-file
        # one named by the file (its info.name the directory's); read as libtorrent does
        write_tree(src / "d", {"x.bin": 50_000}, seed=3)
        path = src / "d"
        files = {"x.bin": 50_000} if kind == "v2" else {"d/x.bin": 50_000}
        src_for_seed = src / "d" if kind == "v2" else src
    else:
        write_tree(src / "d", FILES, seed=2)
        path, files = src / "d", {f"d/{k}": v for k, v in FILES.items()}
    torrent = lt_create(path, tmp_path / f"{kind}.torrent", piece_length, kind)
    meta = metainfo.load(torrent)
    assert meta.v2_only == (kind == "v2") and meta.hybrid == (kind == "hybrid")
    ti = lt.torrent_info(str(torrent))
    assert meta.name == ti.name() and meta.total_size == ti.total_size()
    seed_dir = src_for_seed if layout == "dir-of-one" else src
    seeders = start_seeders(str(torrent), [str(seed_dir)], str(tmp_path))
    try:
        out = tmp_path / "out"
        result = download(torrent, out, [f"127.0.0.1:{seeders[0].port}"])
    finally:
        for s in seeders:
            s.stop()
    assert result["pieces_total"] == meta.num_pieces
    assert result["info_hash"] == meta.info_hash.hex()  # v2-only: the truncated v2 one
    assert result["hash_failures"] == 0
    same_tree(out, seed_dir, files)


def test_a_liar_is_banned_and_the_v2_download_completes(lt: Any, tmp_path: Path) -> None:
    """The lying peer is the only source until it has sent a corrupt block of every
    piece it was asked for (the relay to the honest libtorrent seeder opens on the
    first corrupt block): its pieces fail their merkle roots, it is banned."""
    from helpers.swarm import start_seeders

    src = tmp_path / "src"
    write_tree(src / "d", FILES, seed=5)
    torrent = lt_create(src / "d", tmp_path / "v2.torrent", 16384, "v2")
    meta = metainfo.load(torrent)
    seeders = start_seeders(str(torrent), [str(src)], str(tmp_path))
    gate = threading.Event()
    liar = TestPeer(torrent, src, corrupt_pieces=range(meta.num_pieces))
    try:
        with liar, GatedRelay(("127.0.0.1", seeders[0].port), gate) as relay:
            watcher = threading.Thread(target=lambda: (liar.remote_closed.wait(RUN_TIMEOUT),
                                                       gate.set()), daemon=True)
            watcher.start()
            result = download(torrent, tmp_path / "out", [liar.addr, relay.addr])
            assert liar.corrupted  # it did lie
    finally:
        for s in seeders:
            s.stop()
    assert result["hash_failures"] >= 1
    assert any(str(liar.port) in b for b in result["banned_peers"]), result["banned_peers"]
    same_tree(tmp_path / "out", src, {f"d/{k}": v for k, v in FILES.items()})


def test_libtorrent_downloads_a_created_v2_torrent_from_fasttorrent_seed(
        tmp_path: Path) -> None:
    src = tmp_path / "src" / "d"
    write_tree(src, FILES, seed=7)
    torrent = tmp_path / "v2.torrent"
    r = subprocess.run([*CLI, "create", str(src), "-o", str(torrent), "--v2",
                        "--piece-length", "32768", "-q", "--workers", "1"],
                       capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    assert r.returncode == 0, r.stderr
    assert metainfo.load(torrent).v2_only
    out = tmp_path / "lt"
    with FasttorrentSeed(torrent, src.parent) as seed:
        r = subprocess.run([sys.executable, "-m", "torrent.tools.benchclients.lt_download",
                            "--peers", seed.addr, "--timeout", str(RUN_TIMEOUT - 10),
                            str(torrent), str(out)], capture_output=True, text=True,
                           check=False, timeout=RUN_TIMEOUT)
        assert r.returncode == 0, r.stderr
        summary = seed.stop_summary()
    same_tree(out / "d", src, FILES)
    assert summary["bytes_uploaded"] >= sum(FILES.values())
