"""Magnet downloads end to end: ``fasttorrent download MAGNET`` against real peers on 127.0.0.1.

The seeders are libtorrent (DHT, LSD, UPnP, NAT-PMP off; helpers.swarm) and
serve ut_metadata by default; the hostile peers are
:class:`helpers.metapeer.MetadataPeer`. fasttorrent gets only the magnet
(``x.pe`` peers, no .torrent; trackers listed but unused unless a test says
so). Every run is the real command, bounded in time, checked as a user
would: files bit-exact, exit codes, one-line errors, nothing left running.
"""

from __future__ import annotations

import hashlib
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import require_module
from helpers.metapeer import MetadataPeer
from helpers.payload import (
    CLI,
    Live,
    RunResult,
    assert_clean_after,
    ft_create,
    lt_create,
    run_cli,
    tree_bytes,
    write_tree,
)
from helpers.swarm import Seeder
from helpers.testpeer import GatedRelay

from torrent import bencoding, metainfo
from torrent.journal import HEADER_SIZE
from torrent.magnet import magnet_uri
from torrent.options import Options, dial_order
from torrent.ports import free_port
from torrent.wire.extension import MAX_METADATA_SIZE
from torrent.wire.messages import Bitfield, encode

pytestmark = pytest.mark.timeout(120)

#: Trackers put in magnets: nothing listens there; the tests pass --no-trackers.
TRACKERS = ["http://127.0.0.1:9/announce", "udp://127.0.0.1:9/announce"]

StartSeeders = Callable[..., list[Seeder]]


@pytest.fixture(autouse=True)
def _libtorrent() -> None:
    require_module("libtorrent")


@pytest.fixture
def single(tmp_path: Path) -> tuple[Path, Path]:
    """A single-file torrent of 4 MiB + 100 bytes in 64 KiB pieces (65 pieces)."""
    src = tmp_path / "src"
    write_tree(src, {"big.bin": 4 * 1024 * 1024 + 100}, seed=4)
    return ft_create(src / "big.bin", tmp_path / "single.torrent", "64K"), src


def magnet(torrent: Path, peers: list[tuple[str, int]], trackers: list[str] | None = None) -> str:
    return magnet_uri(metainfo.load(torrent), trackers=trackers or [], peers=peers)


def addrs(seeders: list[Seeder]) -> list[tuple[str, int]]:
    return [("127.0.0.1", s.port) for s in seeders]


def download(uri: str, out: Path, *extra: str, during: Callable[[Live], None] | None = None,
             timeout: float = 60) -> RunResult:
    res = run_cli(["download", uri, "-o", str(out), "--workers", "2", "--no-trackers",
                   *extra], during=during, timeout=timeout)
    assert_clean_after(res)
    assert "Traceback" not in res.stderr, res.describe()
    return res


def assert_downloaded(torrent: Path, src: Path, out: Path) -> None:
    """Every file of the torrent under ``out``, bit-exact, and nothing else (no .fasttorrent)."""
    meta = metainfo.load(torrent)
    want = {f.path: (src / f.path).read_bytes() for f in meta.files if not f.pad}
    got = tree_bytes(out)
    assert sorted(got) == sorted(want), f"files differ: {sorted(got)}"
    for path, data in want.items():
        assert got[path] == data, f"{path}: content differs"


def one_line_error(res: RunResult, code: int) -> str:
    assert res.returncode == code, res.describe()
    lines = res.stderr.strip().splitlines()
    assert len(lines) >= 1 and "Traceback" not in res.stderr, res.describe()
    return lines[-1]


# ----------------------------------------------------------------------------- from libtorrent


def test_single_file_from_a_magnet_and_save_torrent(
        single: tuple[Path, Path], seeders: StartSeeders, tmp_path: Path) -> None:
    torrent, src = single
    peers = seeders(torrent, [src, src])
    out = tmp_path / "out"
    saved = tmp_path / "saved.torrent"
    uri = magnet(torrent, addrs(peers), TRACKERS)
    res = download(uri, out, "--json", "--save-torrent", str(saved))
    assert res.returncode == 0, res.describe()
    j = res.json
    assert j["complete"] is True and j["info_hash"] == metainfo.load(torrent).info_hash_hex
    # the metadata came first, then the first piece (both from the start of the download)
    assert 0 < j["metadata_seconds"] <= j["first_piece_seconds"]
    assert_downloaded(torrent, src, out)  # the kept metadata went with the journal
    # the fetch's connections went on to the download (one still connecting when
    # the metadata was in would be dialled again)
    assert 1 <= sum(w["adopted"] for w in j["workers"]) <= len(peers), j["workers"]
    # --save-torrent: the same info dict, the magnet's trackers (one tier each)
    got = metainfo.load(saved)
    assert got.info_hash == metainfo.load(torrent).info_hash
    assert got.trackers == tuple((t,) for t in TRACKERS)
    assert bencoding.decode(saved.read_bytes())[b"announce"] == TRACKERS[0].encode()


@pytest.mark.parametrize("v1_only", [True, False], ids=["v1", "hybrid"])
def test_multi_file_from_a_magnet(seeders: StartSeeders, tmp_path: Path, v1_only: bool) -> None:
    src = tmp_path / "src"
    write_tree(src / "album", {"a.bin": 300_001, "empty.txt": 0, "sub/b.bin": 70_001,
                               "sub/deeper/c.bin": 32_768, "z.dat": 123_457}, seed=7)
    torrent = lt_create(src, "album", tmp_path / "m.torrent", 32768, v1_only=v1_only)
    peers = seeders(torrent, [src])
    out = tmp_path / "out"
    res = download(magnet(torrent, addrs(peers)), out, "--json")
    assert res.returncode == 0, res.describe()
    assert res.json["complete"] is True
    assert_downloaded(torrent, src, out)


def test_interrupted_magnet_download_resumes_without_a_second_fetch(
        single: tuple[Path, Path], seeders: StartSeeders, tmp_path: Path) -> None:
    torrent, src = single
    info_hash = metainfo.load(torrent).info_hash_hex
    (slow,) = seeders(torrent, [src], upload_limits=[250_000])
    out = tmp_path / "out"
    kept = out / ".fasttorrent" / f"{info_hash}.torrent"
    journal = out / ".fasttorrent" / f"{info_hash}.resume"

    def int_once_journaled(live: Live) -> None:
        # SIGINT once the metadata is kept and a piece is recorded (or after 15 s)
        if "sent" in live.state:
            return
        size = journal.stat().st_size if journal.exists() else 0
        if (kept.exists() and size > HEADER_SIZE) or live.elapsed > 15:
            live.state["sent"] = True
            live.popen.send_signal(signal.SIGINT)

    res = download(magnet(torrent, addrs([slow])), out, during=int_once_journaled)
    assert res.returncode == 7, res.describe()
    assert "fetching the metadata" in res.stderr, res.describe()
    assert kept.exists() and journal.exists() and journal.stat().st_size > HEADER_SIZE
    assert metainfo.load(kept).info_hash_hex == info_hash
    slow.stop()

    fast = seeders(torrent, [src, src])
    res2 = download(magnet(torrent, addrs(fast)), out)
    assert res2.returncode == 0, res2.describe()
    assert "metadata kept from an earlier run" in res2.stderr, res2.describe()
    assert "fetching the metadata" not in res2.stderr, res2.describe()
    assert "pieces resumed" in res2.stdout and " 0 pieces resumed" not in res2.stdout
    assert_downloaded(torrent, src, out)
    assert not kept.exists() and not journal.exists()


# ----------------------------------------------------------------------------- failures


def test_no_metadata_exits_6_after_the_stall_timeout_naming_the_peers(
        single: tuple[Path, Path], tmp_path: Path) -> None:
    torrent, _src = single
    meta = metainfo.load(torrent)
    closed = ("127.0.0.1", free_port())
    with MetadataPeer(meta.info_hash, meta.info_bytes, answer=False) as silent, \
            MetadataPeer(meta.info_hash, meta.info_bytes, offer=False) as nothing:
        uri = magnet(torrent, [("127.0.0.1", silent.port), ("127.0.0.1", nothing.port), closed])
        res = download(uri, tmp_path / "out", "--stall-timeout", "3", timeout=30)
        assert silent.asked  # it was asked and never answered
    line = one_line_error(res, 6)
    assert "metadata" in line and "3 s" in line, line
    for _host, port in [("", silent.port), ("", nothing.port), closed]:
        assert f"127.0.0.1:{port}" in line, line
    assert res.seconds < 20, res.describe()
    assert not (tmp_path / "out").exists()  # nothing is created before the metadata is in


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("magnet:?xt=urn:btih:123&dn=x", "xt"),
        ("magnet:?dn=only-a-name", "xt"),
        ("magnet:?xt=urn:btih:" + "a" * 40 + "&x.pe=127.0.0.1", "x.pe"),
        ("magnet:?xt=urn:btmh:1220" + "a" * 63, "btmh"),
    ],
    ids=["short-hash", "no-xt", "bad-peer", "short-btmh"],
)
def test_bad_magnets_exit_3_in_one_line(tmp_path: Path, uri: str, why: str) -> None:
    res = download(uri, tmp_path / "out", timeout=30)
    line = one_line_error(res, 3)
    assert len(res.stderr.strip().splitlines()) == 1, res.describe()
    assert "invalid magnet" in line and why in line, line
    assert not (tmp_path / "out").exists()


def test_info_shows_a_magnet_and_verify_wants_a_torrent(
        single: tuple[Path, Path], tmp_path: Path) -> None:
    import json
    import subprocess

    torrent, src = single
    uri = magnet(torrent, [("127.0.0.1", 6881)], TRACKERS)
    r = subprocess.run([*CLI, "info", uri, "--json"], capture_output=True, text=True,
                       timeout=30, check=False)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["magnet"] is True and d["info_hash"] == metainfo.load(torrent).info_hash_hex
    assert d["trackers"] == [[t] for t in TRACKERS] and d["peers"] == ["127.0.0.1:6881"]
    r = subprocess.run([*CLI, "verify", uri, str(src)], capture_output=True, text=True,
                       timeout=30, check=False)
    assert r.returncode == 2 and "magnet" in r.stderr and "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- hostile peers


def test_bad_metadata_peer_is_banned_and_the_download_completes(
        single: tuple[Path, Path], seeders: StartSeeders, tmp_path: Path) -> None:
    torrent, src = single
    meta = metainfo.load(torrent)
    (honest,) = seeders(torrent, [src])
    bad_info = bytes(b ^ 1 if i == 10 else b for i, b in enumerate(meta.info_bytes))
    assert hashlib.sha1(bad_info).digest() != meta.info_hash
    gate = threading.Event()
    with MetadataPeer(meta.info_hash, bad_info) as liar, \
            GatedRelay(("127.0.0.1", honest.port), gate) as relay:
        # the honest seeder is reachable only once the liar's connection was closed
        threading.Thread(target=lambda: gate.set() if liar.remote_closed.wait(60) else None,
                         daemon=True).start()
        uri = magnet(torrent, [("127.0.0.1", liar.port), ("127.0.0.1", relay.port)])
        res = download(uri, tmp_path / "out", "--json")
        assert liar.asked, "the liar was never asked: the test proves nothing"
        gate.set()
        # the fetch's dials only (the first kind, then the fallback to the other):
        # the download that followed never dialled the banned liar again
        assert liar.connections == len(dial_order(Options().encryption)), liar.connections
    assert res.returncode == 0, res.describe()
    assert res.json["complete"] is True
    assert f"127.0.0.1:{liar.port}" in res.json["banned_peers"]
    (rec,) = [p for p in res.json["peers"] if p["port"] == liar.port]
    assert rec["banned"] and "does not hash" in rec["last_reason"], rec
    assert_downloaded(torrent, src, tmp_path / "out")


def test_a_handed_over_peer_lying_in_its_first_messages_is_dropped_by_the_download(
        single: tuple[Path, Path], seeders: StartSeeders, tmp_path: Path) -> None:
    # Before the metadata a bitfield of up to MAX_PIECES_BEFORE_METADATA pieces is
    # framed and ignored; the worker that takes the connection over reads it again
    # against the torrent's 65 pieces, and drops the peer.
    torrent, src = single
    meta = metainfo.load(torrent)
    (honest,) = seeders(torrent, [src])
    lie = encode(Bitfield(b"\xff" * 1000))
    gate = threading.Event()
    with MetadataPeer(meta.info_hash, meta.info_bytes, preamble=lie) as liar, \
            GatedRelay(("127.0.0.1", honest.port), gate) as relay:
        # the honest seeder answers only once the liar was asked for the metadata: the
        # liar's connection is past its handshakes when the fetch ends, and handed over
        threading.Thread(target=lambda: gate.set() if liar.requested.wait(60) else None,
                         daemon=True).start()
        uri = magnet(torrent, [("127.0.0.1", liar.port), ("127.0.0.1", relay.port)])
        res = download(uri, tmp_path / "out", "--json", "--encryption", "disabled")
        gate.set()
    assert res.returncode == 0, res.describe()
    j = res.json
    assert j["complete"] is True
    assert sum(w["adopted"] for w in j["workers"]) >= 1, j["workers"]
    # The fetch ignores a bitfield: only a worker reading the handed-over stream drops
    # the peer for it. (Whether the worker's own extension handshake reaches the liar
    # is a race: the drop resets the connection, and a reset discards what the liar
    # had not read yet.)
    (rec,) = [p for p in j["peers"] if p["port"] == liar.port]
    assert "bitfield" in rec["last_reason"], rec
    assert_downloaded(torrent, src, tmp_path / "out")


def test_oversized_metadata_size_is_ignored(
        single: tuple[Path, Path], seeders: StartSeeders, tmp_path: Path) -> None:
    torrent, src = single
    meta = metainfo.load(torrent)
    (honest,) = seeders(torrent, [src])
    with MetadataPeer(meta.info_hash, meta.info_bytes,
                      metadata_size=MAX_METADATA_SIZE + 1) as huge:
        uri = magnet(torrent, [("127.0.0.1", huge.port), ("127.0.0.1", honest.port)])
        res = download(uri, tmp_path / "out", "--json")
        assert huge.asked == []
        assert huge.remote_closed.wait(10)  # dropped at its extension handshake
    assert res.returncode == 0, res.describe()
    assert_downloaded(torrent, src, tmp_path / "out")


def test_unsafe_path_in_correctly_hashed_metadata_exits_3(tmp_path: Path) -> None:
    info = bencoding.encode({
        b"name": b"album", b"piece length": 16384, b"pieces": bytes(20),
        b"files": [{b"length": 100, b"path": [b"..", b"evil.bin"]}],
    })
    info_hash = hashlib.sha1(info).digest()
    with MetadataPeer(info_hash, info) as peer:
        uri = magnet_uri(info_hash, peers=[("127.0.0.1", peer.port)])
        res = download(uri, tmp_path / "out", "--save-torrent", str(tmp_path / "x.torrent"),
                       timeout=30)
        assert peer.asked
    line = one_line_error(res, 3)
    assert "invalid torrent" in line and "path" in line, line
    assert not (tmp_path / "evil.bin").exists() and not (tmp_path / "x.torrent").exists()
    assert not (tmp_path / "out" / ".fasttorrent").exists()  # unsafe metadata is not kept
