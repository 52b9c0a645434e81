"""BitTorrent v2 magnets (BEP 52 ``urn:btmh:``) end to end, against libtorrent on 127.0.0.1.

``fasttorrent download`` gets only the link (``x.pe`` of libtorrent
seeders; DHT, LSD, UPnP, NAT-PMP off, loopback): it fetches the info dict
under the truncated v2 hash, checks its SHA-256, fetches the piece layers of
every file larger than a piece with BEP 52 hash requests, and downloads
bit-exact; the kept .torrent holds the layers, so a resumed run fetches
nothing again. A hybrid link downloads too. libtorrent given only the btmh
link of ``fasttorrent seed`` must ask us for the layers: that tests serving.
Hostile peers (:class:`helpers.metapeer.MetadataPeer` answering hash
requests with lies) are banned while an honest libtorrent seeder completes
the fetch.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import require_module
from helpers.clients import FasttorrentSeed
from helpers.framereader import FrameReader
from helpers.merkleproof import fold_to_root
from helpers.metapeer import MetadataPeer
from helpers.payload import Live, RunResult, assert_clean_after, lt_create, run_cli, write_tree
from helpers.swarm import Seeder
from helpers.testpeer import GatedRelay

from torrent import bencoding, metainfo
from torrent.journal import HEADER_SIZE
from torrent.magnet import magnet_uri, parse_magnet
from torrent.piecelayers import LAYER_REQUEST_HASHES, LayerServer
from torrent.wire.handshake import (
    HANDSHAKE_LENGTH,
    RESERVED_OURS,
    encode_handshake,
    make_peer_id,
    parse_handshake,
)
from torrent.wire.messages import (
    HASH_REQUEST,
    HASHES,
    Hashes,
    HashReject,
    HashRequest,
    KeepAlive,
    Message,
    encode,
    frame,
)

pytestmark = pytest.mark.timeout(180)

RUN_TIMEOUT = 90

#: Odd sizes in 16 KiB pieces: files over one piece (their layers are fetched),
#: one of exactly a piece, a block and a byte, a byte, an empty file, and one of
#: 600 pieces (two requests of 512 hashes, each proved by an uncle).
FILES = {
    "a.bin": 100_000,
    "big.bin": 70 * 16384 + 1000,
    "huge.bin": 600 * 16384 - 7,
    "sub/one-piece.bin": 16384,
    "sub/b.bin": 16385,
    "sub/c.txt": 1,
    "z/empty": 0,
}

StartSeeders = Callable[..., list[Seeder]]


@pytest.fixture(autouse=True)
def _libtorrent() -> None:
    require_module("libtorrent")


def download(uri: str, out: Path, *extra: str,
             during: Callable[[Live], None] | None = None) -> RunResult:
    res = run_cli(["download", uri, "-o", str(out), "--workers", "2", "--no-trackers",
                   "--no-dht", "--bind", "127.0.0.1", "--stall-timeout", "30", *extra],
                  during=during, timeout=RUN_TIMEOUT)
    assert_clean_after(res)
    assert "Traceback" not in res.stderr, res.describe()
    return res


def same_files(meta: metainfo.Metainfo, src: Path, out: Path) -> None:
    for f in meta.files:
        if not f.pad:
            assert (out / f.path).read_bytes() == (src / f.path).read_bytes(), f.path
    assert not (out / meta.name / ".pad").exists()


def v2_magnet(meta: metainfo.Metainfo, peers: list[Seeder | str]) -> str:
    addrs = [("127.0.0.1", int(p.rsplit(":", 1)[1])) if isinstance(p, str)
             else ("127.0.0.1", p.port) for p in peers]
    return magnet_uri(meta, trackers=[], peers=addrs)


@pytest.mark.parametrize("layout", ["multi", "single"])
def test_a_v2_magnet_downloads_from_libtorrent_and_keeps_its_layers(
        seeders: StartSeeders, tmp_path: Path, layout: str) -> None:
    src = tmp_path / "src"
    if layout == "multi":
        write_tree(src / "d", FILES, seed=11)
        torrent = lt_create(src, "d", tmp_path / "v2.torrent", 16384, v1_only=False,
                            v2_only=True)
    else:
        write_tree(src, {"one.bin": 700 * 16384 + 5}, seed=12)
        torrent = lt_create(src, "one.bin", tmp_path / "v2.torrent", 16384, v1_only=False,
                            v2_only=True)
    meta = metainfo.load(torrent)
    assert meta.v2_only
    peers = seeders(torrent, [src])
    uri = v2_magnet(meta, peers)
    assert "urn:btih:" not in uri and parse_magnet(uri).v2_only
    out = tmp_path / "out"
    saved = tmp_path / "saved.torrent"
    res = download(uri, out, "--json", "--save-torrent", str(saved))
    assert res.returncode == 0, res.describe()
    j = res.json
    assert j["complete"] is True and j["hash_failures"] == 0
    assert j["info_hash"] == meta.info_hash.hex()  # the truncated v2 hash
    # the connection the metadata and layers came over went on to the download
    assert sum(w["adopted"] for w in j["workers"]) == 1, j["workers"]
    same_files(meta, src, out)
    # --save-torrent: libtorrent's torrent, layers and all
    got = metainfo.load(saved)
    assert got.info_hash_v2 == meta.info_hash_v2 and got.v2_only
    assert bencoding.decode(got.piece_layers or b"de") == bencoding.decode(meta.piece_layers)


def test_an_interrupted_v2_magnet_resumes_without_fetching_again(
        seeders: StartSeeders, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_tree(src / "d", FILES, seed=13)
    torrent = lt_create(src, "d", tmp_path / "v2.torrent", 16384, v1_only=False, v2_only=True)
    meta = metainfo.load(torrent)
    (slow,) = seeders(torrent, [src], upload_limits=[250_000])
    out = tmp_path / "out"
    kept = out / ".fasttorrent" / f"{meta.info_hash.hex()}.torrent"
    journal = out / ".fasttorrent" / f"{meta.info_hash.hex()}.resume"

    def int_once_journaled(live: Live) -> None:
        # SIGINT once the metadata is kept and a piece is recorded (or after 15 s)
        if "sent" in live.state:
            return
        size = journal.stat().st_size if journal.exists() else 0
        if (kept.exists() and size > HEADER_SIZE) or live.elapsed > 15:
            live.state["sent"] = True
            live.popen.send_signal(signal.SIGINT)

    res = download(v2_magnet(meta, [slow]), out, during=int_once_journaled)
    assert res.returncode == 7, res.describe()
    assert "fetching the piece layers" in res.stderr, res.describe()
    assert kept.exists() and journal.stat().st_size > HEADER_SIZE
    assert metainfo.load(kept).piece_layers  # the layers were kept with the info dict
    slow.stop()

    fast = seeders(torrent, [src])
    res2 = download(v2_magnet(meta, fast), out)
    assert res2.returncode == 0, res2.describe()
    assert "metadata kept from an earlier run" in res2.stderr, res2.describe()
    assert "fetching the metadata" not in res2.stderr, res2.describe()
    assert "fetching the piece layers" not in res2.stderr, res2.describe()
    assert " 0 pieces resumed" not in res2.stdout, res2.describe()
    same_files(meta, src, out)


def test_a_hybrid_magnet_downloads_from_libtorrent(seeders: StartSeeders, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_tree(src / "d", FILES, seed=14)
    torrent = lt_create(src, "d", tmp_path / "h.torrent", 16384, v1_only=False)
    meta = metainfo.load(torrent)
    assert meta.hybrid
    peers = seeders(torrent, [src])
    uri = v2_magnet(meta, peers)
    m = parse_magnet(uri)
    assert m.info_hash == meta.info_hash and m.info_hash_v2 == meta.info_hash_v2
    res = download(uri, tmp_path / "out", "--json")
    assert res.returncode == 0, res.describe()
    assert res.json["complete"] is True and res.json["info_hash"] == meta.info_hash.hex()
    same_files(meta, src, tmp_path / "out")


def test_libtorrent_fetches_the_layers_from_fasttorrent_seed(tmp_path: Path) -> None:
    """libtorrent given only the btmh link has no piece layers: it must ask us (BEP 52
    hash requests) before it can verify a piece of a file larger than one piece."""
    src = tmp_path / "src"
    write_tree(src / "d", FILES, seed=15)
    torrent = ft_create_v2(src / "d", tmp_path / "v2.torrent")
    meta = metainfo.load(torrent)
    out = tmp_path / "lt"
    with FasttorrentSeed(torrent, src) as seed:
        uri = v2_magnet(meta, [seed.addr])
        r = subprocess.run([sys.executable, "-m", "torrent.tools.benchclients.lt_download",
                            "--timeout", str(RUN_TIMEOUT - 10), "--magnet", uri, str(out)],
                           capture_output=True, text=True, check=False, timeout=RUN_TIMEOUT)
        assert r.returncode == 0, r.stderr + r.stdout
        summary = seed.stop_summary()
    same_files(meta, src, out)
    assert summary["bytes_uploaded"] >= sum(FILES.values())


def ft_create_v2(path: Path, out: Path) -> Path:
    """``fasttorrent create --v2`` of ``path`` in 16 KiB pieces."""
    r = subprocess.run([*_cli(), "create", str(path), "-o", str(out), "--v2",
                        "--piece-length", "16384", "-q", "--workers", "1"],
                       capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    assert r.returncode == 0, r.stderr
    return out


def _cli() -> list[str]:
    from helpers.payload import CLI

    return list(CLI)


# ----------------------------------------------------------------------------- hostile peers


def _lie(server: LayerServer, kind: str) -> Callable[[HashRequest], bytes]:
    """What a lying peer answers a hash request with (``server`` knows the truth)."""

    def answer(req: HashRequest) -> bytes:
        true = server.answer(req)
        assert isinstance(true, Hashes), true  # the fetch asks only what a seeder has
        if kind == "bad-hash":  # one bit off: the hashes no longer fold up to the root
            h = bytearray(true.hashes)
            h[5] ^= 0x40
            return encode(Hashes(req.pieces_root, req.base_layer, req.index, req.length,
                                 req.proof_layers, bytes(h)))
        if kind == "out-of-range":  # hashes for a range nobody asked for
            return encode(Hashes(req.pieces_root, req.base_layer, req.index + 4096,
                                 req.length, req.proof_layers, true.hashes))
        # wrong-count: one hash short of what its header says
        payload = Hashes(req.pieces_root, req.base_layer, req.index, req.length,
                         req.proof_layers, true.hashes[:-32]).payload()
        return frame(HASHES, payload)

    return answer


@pytest.mark.parametrize("kind", ["bad-hash", "out-of-range", "wrong-count"])
def test_a_peer_lying_in_its_hashes_is_dropped_and_the_fetch_goes_on(
        seeders: StartSeeders, tmp_path: Path, kind: str) -> None:
    """The liar serves true metadata, so it is asked for the layers first; the honest
    libtorrent seeder (behind a relay) answers only once the liar was asked."""
    src = tmp_path / "src"
    write_tree(src / "d", FILES, seed=16)
    torrent = lt_create(src, "d", tmp_path / "v2.torrent", 16384, v1_only=False, v2_only=True)
    meta = metainfo.load(torrent)
    server = LayerServer.from_metainfo(meta)
    assert server is not None
    (honest,) = seeders(torrent, [src])
    gate = threading.Event()
    with MetadataPeer(meta.info_hash, meta.info_bytes, hashes=_lie(server, kind)) as liar, \
            GatedRelay(("127.0.0.1", honest.port), gate) as relay:
        threading.Thread(target=lambda: gate.set() if liar.hash_requested.wait(60) else None,
                         daemon=True).start()
        uri = v2_magnet(meta, [f"127.0.0.1:{liar.port}", f"127.0.0.1:{relay.port}"])
        res = download(uri, tmp_path / "out", "--json", "--encryption", "disabled")
        gate.set()
        assert liar.hash_requests, "the liar was never asked: the test proves nothing"
        assert all(r.base_layer == 0 and r.length <= LAYER_REQUEST_HASHES
                   for r in liar.hash_requests)  # 16 KiB pieces: the piece layer is 0
    assert res.returncode == 0, res.describe()
    j = res.json
    assert j["complete"] is True and j["hash_failures"] == 0
    if kind == "wrong-count":  # a malformed message: dropped (a protocol error), not banned
        assert f"127.0.0.1:{liar.port}" not in j["banned_peers"], j["banned_peers"]
    else:  # hashes that do not prove: banned, never dialled by the download
        assert f"127.0.0.1:{liar.port}" in j["banned_peers"], j["banned_peers"]
    same_files(meta, src, tmp_path / "out")


class _Wire:
    """A bare peer connection to ``fasttorrent seed`` (blocking, bounded in time)."""

    def __init__(self, port: int, meta: metainfo.Metainfo) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.frames = FrameReader(meta.num_pieces)
        self.sock.sendall(encode_handshake(meta.info_hash, make_peer_id(b"-HW0001-"),
                                           RESERVED_OURS))
        got = b""
        while len(got) < HANDSHAKE_LENGTH:
            chunk = self.sock.recv(HANDSHAKE_LENGTH - len(got))
            assert chunk, "the seed closed the connection at its handshake"
            got += chunk
        assert parse_handshake(got).info_hash == meta.info_hash

    def read_until(self, done: Callable[[list[Message]], bool],
                   timeout: float = 10) -> list[Message]:
        """Messages until ``done`` says so, or the seed closes (then a KeepAlive marks it)."""
        msgs: list[Message] = []
        end = time.monotonic() + timeout
        while not done(msgs):
            self.sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"no answer in {timeout} s; got {msgs[-5:]}") from None
            if not data:
                msgs.append(KeepAlive())  # a marker: closed
                return msgs
            msgs.extend(self.frames.feed(data))
        return msgs

    def close(self) -> None:
        self.sock.close()


def test_the_seed_answers_true_hashes_and_rejects_what_it_must(tmp_path: Path) -> None:
    """fasttorrent seed of a v2-only torrent: a valid request gets hashes that prove
    up to the root; a million hashes, an unknown root, the leaf layer, an unaligned
    run get a hash reject and the connection stays; a flood of requests gets answers
    within the per-tick bound and rejects beyond it; a hash request frame longer than
    the table's bound drops the connection."""
    src = tmp_path / "src"
    write_tree(src / "d", {"big.bin": 1500 * 16384 + 3, "small": 10}, seed=17)
    torrent = ft_create_v2(src / "d", tmp_path / "v2.torrent")
    meta = metainfo.load(torrent)
    (big,) = [f for f in meta.files if f.path.endswith("big.bin")]
    root = big.pieces_root

    def answers(n: int) -> Callable[[list[Message]], bool]:
        return lambda msgs: sum(isinstance(m, (Hashes, HashReject)) for m in msgs) >= n \
            or any(type(m) is KeepAlive for m in msgs)

    with FasttorrentSeed(torrent, src) as seed:
        w = _Wire(seed.port, meta)
        try:
            ok = HashRequest(root, 0, 1024, 512, 10)  # width 2048: proved to the root
            hostile = [HashRequest(root, 0, 0, 10**6, 0),
                       HashRequest(os.urandom(32), 0, 0, 512, 10),
                       HashRequest(root, 0, 3, 2, 0),
                       HashRequest(root, 0, 0, 512, 2**32 - 1)]
            w.sock.sendall(b"".join(encode(q) for q in [ok, *hostile]))
            msgs = [m for m in w.read_until(answers(5)) if isinstance(m, (Hashes, HashReject))]
            assert len(msgs) == 5, msgs
            first = msgs[0]
            assert isinstance(first, Hashes) and first.index == 1024 and first.length == 512
            assert fold_to_root(first, 0) == root  # 16 KiB pieces: the leaves
            assert [type(m) for m in msgs[1:]] == [HashReject] * 4
            assert [(m.pieces_root, m.length) for m in msgs[1:]] == \
                [(q.pieces_root, q.length) for q in hostile]
            # a flood: every request answered once, hashes within the bound, then rejects
            flood = [HashRequest(root, 0, 512 * (k % 3), 512, 10) for k in range(1000)]
            w.sock.sendall(b"".join(encode(q) for q in flood))
            got = [m for m in w.read_until(answers(1000), timeout=30)
                   if isinstance(m, (Hashes, HashReject))]
            assert len(got) == 1000
            assert any(isinstance(m, HashReject) for m in got)
            assert 1 <= sum(isinstance(m, Hashes) for m in got) < 1000
            # a frame of id 21 longer than its bound (48 bytes): dropped at its length
            w.sock.sendall(frame(HASH_REQUEST, bytes(60)))
            tail = w.read_until(lambda msgs: False if not msgs else type(msgs[-1]) is KeepAlive)
            assert type(tail[-1]) is KeepAlive  # closed
        finally:
            w.close()
        seed.stop_summary()


