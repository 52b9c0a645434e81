"""Hostile peers: the download completes from the honest one and the liar is dropped or banned.

Each download test runs the real ``fasttorrent download`` (``--workers 1``,
so both peers feed the same pieces) against one honest libtorrent seeder and
one hostile :class:`~tests.helpers.testpeer.TestPeer`, both on 127.0.0.1.

Ordering without timing: the honest seeder is reached through a
:class:`~tests.helpers.testpeer.GatedRelay` whose gate opens only once the
hostile peer has done its damage (its connection was closed by us, or, for
the silent peer, it received our handshake).  So the hostile peer always
gets its chance before the download can complete, whatever the machine's
load.

The first tests check the test peer itself over a raw socket: the download
tests mean something only if it misbehaves exactly as advertised.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_module
from helpers.framereader import recv_exact
from helpers.testpeer import OVERSIZED_LENGTH, GatedRelay, TestPeer

from torrent import metainfo
from torrent.creator import create_torrent
from torrent.wire.handshake import HANDSHAKE_LENGTH, encode_handshake, make_peer_id
from torrent.wire.messages import (
    BITFIELD,
    PIECE,
    UNCHOKE,
    Interested,
    Request,
    encode,
)

pytestmark = pytest.mark.timeout(120)

PIECE_LEN = 32 * 1024
#: 65 pieces: not a multiple of 8 (the bitfield has spare bits) and a short last piece.
PAYLOAD_SIZE = 64 * PIECE_LEN + 5000
#: Upper bound of one download subprocess; a normal one takes about a second.
DOWNLOAD_TIMEOUT = 60
#: How long to wait for the test peer's own records after the download ended.
EVENT_TIMEOUT = 10


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A payload, its torrent, and one honest libtorrent seeder shared by the module."""
    require_module("libtorrent")
    from helpers.swarm import start_seeders

    root = tmp_path_factory.mktemp("hostile")
    src = root / "src"
    src.mkdir()
    data = random.Random(20240607).randbytes(PAYLOAD_SIZE)
    (src / "payload.bin").write_bytes(data)
    torrent = root / "payload.torrent"
    torrent.write_bytes(create_torrent(str(src / "payload.bin"), piece_length=PIECE_LEN))
    seeders = start_seeders(str(torrent), [str(src)], str(root))
    try:
        assert len(seeders[0].pieces) == 65
        yield {"torrent": str(torrent), "src": str(src), "data": data, "seeder": seeders[0],
               "meta": metainfo.load(torrent)}
    finally:
        for s in seeders:
            s.stop()


def download(torrent: str, out: Path, peers: list[str],
             extra: tuple[str, ...] = ()) -> tuple[int, dict[str, Any], str]:
    """Run ``fasttorrent download`` (one worker, --json); return (exit code, result, stderr)."""
    cmd = [sys.executable, "-m", "torrent", "download", torrent, "-o", str(out),
           "--workers", "1", "--no-trackers", "--json", "--stall-timeout", "30",
           "--bind", "127.0.0.1", *extra]
    for p in peers:
        cmd += ["--peer", p]
    proc = subprocess.run(cmd, capture_output=True, timeout=DOWNLOAD_TIMEOUT, check=False)
    out_text = proc.stdout.decode()
    result = json.loads(out_text) if out_text.strip() else {}
    return proc.returncode, result, proc.stderr.decode()


def peer_entry(result: dict[str, Any], port: int) -> dict[str, Any]:
    (entry,) = [p for p in result["peers"] if p["port"] == port]
    return entry


def run_with_hostile(swarm: dict[str, Any], tmp_path: Path, hostile: TestPeer,
                     gate: threading.Event, *, expect_closed: bool = False,
                     extra: tuple[str, ...] = ()) -> tuple[dict[str, Any], GatedRelay]:
    """Download from the hostile peer and the honest seeder behind a relay opened by ``gate``.

    With ``expect_closed``, also wait (before the test peer stops) until a
    connection to the hostile peer was closed from the downloader's side.
    """
    seeder = swarm["seeder"]
    with hostile, GatedRelay(("127.0.0.1", seeder.port), gate) as relay:
        rc, result, err = download(swarm["torrent"], tmp_path / "out",
                                   [hostile.addr, relay.addr], extra)
        assert rc == 0, err
        assert result["complete"] is True
        assert (tmp_path / "out" / "payload.bin").read_bytes() == swarm["data"]
        assert gate.is_set()
        if expect_closed:
            assert hostile.remote_closed.wait(EVENT_TIMEOUT)
    return result, relay


# -- the test peer itself ----------------------------------------------------------------
class RawClient:
    """A minimal BEP 3 initiator over a blocking socket, to check the test peer's bytes."""

    def __init__(self, peer: TestPeer) -> None:
        self.meta = peer.meta
        self.sock = socket.create_connection(("127.0.0.1", peer.port), timeout=EVENT_TIMEOUT)

    def close(self) -> None:
        self.sock.close()

    def recv_exact(self, n: int) -> bytes:
        return recv_exact(self.sock, n)

    def handshake(self) -> bytes:
        self.sock.sendall(encode_handshake(self.meta.info_hash, make_peer_id()))
        return self.recv_exact(HANDSHAKE_LENGTH)

    def frame(self) -> tuple[int, bytes]:
        (n,) = struct.unpack(">I", self.recv_exact(4))
        body = self.recv_exact(n)
        return body[0], body[1:]

    def send(self, msg: Any) -> None:
        self.sock.sendall(encode(msg))


def expected_bitfield(n: int, has: set[int]) -> bytes:
    bits = bytearray(-(-n // 8))
    for i in has:
        bits[i >> 3] |= 0x80 >> (i & 7)
    return bytes(bits)


def test_testpeer_serves_exact_blocks_and_records_requests(swarm: dict[str, Any]) -> None:
    meta, data = swarm["meta"], swarm["data"]
    with TestPeer(swarm["torrent"], swarm["src"], has=range(60)) as peer:
        c = RawClient(peer)
        try:
            hs = c.handshake()
            assert hs[28:48] == meta.info_hash
            assert c.frame() == (BITFIELD, expected_bitfield(65, set(range(60))))
            c.send(Interested())
            assert c.frame() == (UNCHOKE, b"")
            asked = [(3, 16384, 16384), (59, 0, 16384), (0, 0, 100)]
            for i, b, ln in asked:
                c.send(Request(i, b, ln))
            for i, b, ln in asked:
                mid, payload = c.frame()
                assert mid == PIECE
                assert struct.unpack(">II", payload[:8]) == (i, b)
                start = i * PIECE_LEN + b
                assert payload[8:] == data[start : start + ln]
        finally:
            c.close()
        assert peer.requests == asked
        assert peer.handshakes == 1


@pytest.mark.parametrize("mode", ["length", "spare"])
def test_testpeer_bad_bitfield_is_malformed(swarm: dict[str, Any], mode: str) -> None:
    with TestPeer(swarm["torrent"], swarm["src"], bad_bitfield=mode) as peer:
        c = RawClient(peer)
        try:
            c.handshake()
            mid, bits = c.frame()
        finally:
            c.close()
    assert mid == BITFIELD
    if mode == "length":
        assert len(bits) == 8  # 65 pieces need 9 bytes
    else:
        assert len(bits) == 9 and bits[-1] & 0x7F == 0x7F  # the 7 spare bits set


def test_testpeer_corrupts_one_block_per_piece(swarm: dict[str, Any]) -> None:
    data = swarm["data"]
    with TestPeer(swarm["torrent"], swarm["src"], corrupt_pieces={2}) as peer:
        c = RawClient(peer)
        try:
            c.handshake()
            c.frame()  # bitfield
            c.send(Interested())
            c.frame()  # unchoke
            for b in (0, 16384):
                c.send(Request(2, b, 16384))
            got = [c.frame()[1][8:] for _ in range(2)]
        finally:
            c.close()
    start = 2 * PIECE_LEN
    assert got[0] != data[start : start + 16384]  # the first block sent is damaged
    assert sum(x != y for x, y in zip(got[0], data[start : start + 16384], strict=True)) == 1
    assert got[1] == data[start + 16384 : start + 32768]  # the second is not
    assert peer.corrupted == [(2, 0)]


def test_testpeer_oversized_prefix_and_unrequested_block(swarm: dict[str, Any]) -> None:
    with TestPeer(swarm["torrent"], swarm["src"], oversized_prefix=True) as peer:
        c = RawClient(peer)
        c.handshake()
        assert struct.unpack(">I", c.recv_exact(4)) == (OVERSIZED_LENGTH,)
        c.close()
        assert peer.closed_after_prefix.wait(EVENT_TIMEOUT)
    with TestPeer(swarm["torrent"], swarm["src"], has=range(64),
                  unrequested_block=True) as peer:
        c = RawClient(peer)
        try:
            c.handshake()
            c.frame()
            c.send(Interested())
            assert c.frame() == (UNCHOKE, b"")
            mid, payload = c.frame()
        finally:
            c.close()
        assert mid == PIECE and struct.unpack(">II", payload[:8]) == (64, 0)
        assert peer.requests == []


# -- downloads against a hostile peer ------------------------------------------------------
def test_corrupt_blocks_ban_the_liar_not_the_honest_seeder(swarm: dict[str, Any],
                                                           tmp_path: Path) -> None:
    hostile = TestPeer(swarm["torrent"], swarm["src"], corrupt_pieces=range(65))
    result, relay = run_with_hostile(swarm, tmp_path, hostile, hostile.remote_closed)
    assert hostile.corrupted, "the hostile peer was never asked for a block"
    assert result["hash_failures"] > 0
    assert hostile.addr in result["banned_peers"]
    assert relay.addr not in result["banned_peers"]
    assert peer_entry(result, relay.port)["banned"] is False
    assert peer_entry(result, hostile.port)["last_reason"].startswith("banned:")
    # the coordinator knows too, so it never connects to the liar again
    assert peer_entry(result, hostile.port)["banned"] is True


def test_oversized_length_prefix_is_refused_before_the_body(swarm: dict[str, Any],
                                                            tmp_path: Path) -> None:
    hostile = TestPeer(swarm["torrent"], swarm["src"], oversized_prefix=True)
    result, _relay = run_with_hostile(swarm, tmp_path, hostile, hostile.closed_after_prefix)
    assert hostile.prefix_sent.is_set()
    # It hung up while the 2 GiB body was still owed: nothing was buffered for it.
    assert hostile.closed_after_prefix.is_set()
    reason = peer_entry(result, hostile.port)["last_reason"]
    assert "length" in reason and "bound" in reason, reason
    assert str(OVERSIZED_LENGTH) in reason, reason
    assert peer_entry(result, hostile.port)["banned"] is False


@pytest.mark.parametrize("mode", ["length", "spare"])
def test_bad_bitfield_drops_the_peer(swarm: dict[str, Any], tmp_path: Path, mode: str) -> None:
    hostile = TestPeer(swarm["torrent"], swarm["src"], bad_bitfield=mode)
    result, _relay = run_with_hostile(swarm, tmp_path, hostile, hostile.remote_closed)
    reason = peer_entry(result, hostile.port)["last_reason"]
    assert "bitfield" in reason, reason
    assert ("spare bits" if mode == "spare" else "byte bitfield") in reason, reason
    assert hostile.requests == []  # nothing was asked of a peer whose pieces are unknown


def test_unrequested_block_drops_the_peer(swarm: dict[str, Any], tmp_path: Path) -> None:
    # The hostile peer lacks piece 64 and sends a block of it: it cannot have been requested.
    hostile = TestPeer(swarm["torrent"], swarm["src"], has=range(64), unrequested_block=True)
    result, _relay = run_with_hostile(swarm, tmp_path, hostile, hostile.remote_closed)
    assert hostile.unrequested_sent.is_set()
    reason = peer_entry(result, hostile.port)["last_reason"]
    assert "did not request" in reason and "piece 64" in reason, reason


def test_silent_peer_does_not_hold_up_the_download(swarm: dict[str, Any],
                                                   tmp_path: Path) -> None:
    hostile = TestPeer(swarm["torrent"], swarm["src"], silent=True)
    result, _relay = run_with_hostile(swarm, tmp_path, hostile, hostile.handshake_received,
                                     expect_closed=True)
    assert hostile.handshakes >= 1  # it was connected to and sent our handshake
    assert hostile.requests == []
    assert result["bytes_downloaded"] == PAYLOAD_SIZE


def test_a_peer_that_never_handshakes_is_dropped_at_the_handshake_timeout(
        swarm: dict[str, Any], tmp_path: Path) -> None:
    # The honest seeder is reachable only once the silent peer was dropped: the
    # download can complete only through the handshake time-out (the relay's own
    # first connection, silent until then, is dropped by it too and retried).
    hostile = TestPeer(swarm["torrent"], swarm["src"], silent=True)
    result, _relay = run_with_hostile(swarm, tmp_path, hostile, hostile.remote_closed,
                                      extra=("--handshake-timeout", "2"))
    assert hostile.handshakes >= 1 and hostile.requests == []
    assert result["workers"][0]["handshake_timeouts"] >= 1
    assert result["bytes_downloaded"] == PAYLOAD_SIZE


def test_corrupt_blocks_are_piece_failed_and_peer_banned_events(swarm: dict[str, Any],
                                                                tmp_path: Path) -> None:
    """The same liar, with ``--events``: its bad piece and its ban are events of the stream."""
    hostile = TestPeer(swarm["torrent"], swarm["src"], corrupt_pieces=range(65))
    path = tmp_path / "events.jsonl"
    result, relay = run_with_hostile(swarm, tmp_path, hostile, hostile.remote_closed,
                                     extra=("--events", str(path)))
    events = [json.loads(ln) for ln in path.read_text().splitlines()]
    assert all(e["info_hash"] == swarm["meta"].info_hash_hex for e in events)
    failed = [e for e in events if e["event"] == "piece_failed"]
    banned = [e for e in events if e["event"] == "peer_banned"]
    assert len(failed) == result["hash_failures"] > 0
    # the peer is named when it sent all of the piece (None: blocks from several peers)
    assert {e["peer"] for e in failed} <= {hostile.addr, None}
    assert all(0 <= e["piece"] < 65 for e in failed)
    assert [e["address"] for e in banned] == [hostile.addr]  # once, and never the relay
    assert relay.addr not in {e["peer"] for e in failed}
    assert banned[0]["reason"].startswith("banned:")
    kinds = [e["event"] for e in events]
    assert kinds.index("piece_failed") < kinds.index("peer_banned") < kinds.index("completed")
    assert kinds[-1] == "stopped"
