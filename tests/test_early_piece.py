"""A magnet's first piece read by the coordinator while its workers start
(torrent/earlypiece.py, Coordinator.end_early): the stream split between the
piece and the worker, the hostile cases, and what the coordinator then tells
its worker. Sockets are socketpairs; nothing waits on a clock."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from torrent import ipc, metainfo
from torrent.coordinator import Coordinator
from torrent.creator import create_torrent
from torrent.earlypiece import READ_SIZE, EarlyConn, EarlyPiece
from torrent.magnetfetch import Handover
from torrent.options import Options
from torrent.pool import WorkerHandle
from torrent.wire.handshake import encode_handshake, make_peer_id
from torrent.wire.messages import (
    Choke,
    Extended,
    Have,
    KeepAlive,
    Piece,
    Reject,
    Unchoke,
    encode,
)
from torrent.wire.metadata_conn import MAX_HANDOVER_BYTES

pytestmark = pytest.mark.timeout(60)

BLOCK = 16384
PIECE_LEN = 4 * BLOCK
HANDSHAKE = encode_handshake(b"\x01" * 20, make_peer_id())
DATA = random.Random(7).randbytes(3 * PIECE_LEN - 1000)  # three pieces, the last short


def blocks(index: int = 0, size: int = PIECE_LEN) -> list[tuple[int, int, int]]:
    return [(index, b, min(BLOCK, size - b)) for b in range(0, size, BLOCK)]


def piece_frames(reqs: list[tuple[int, int, int]], data: bytes = DATA) -> bytes:
    return b"".join(encode(Piece(i, b, data[i * PIECE_LEN + b : i * PIECE_LEN + b + n]))
                    for i, b, n in reqs)


def digest(index: int = 0) -> bytes:
    return hashlib.sha1(DATA[index * PIECE_LEN : (index + 1) * PIECE_LEN]).digest()


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made: list[tuple[socket.socket, socket.socket]] = []
    yield made
    for a, b in made:
        a.close()
        b.close()


def pair(pairs: list[tuple[socket.socket, socket.socket]]) -> tuple[socket.socket, socket.socket]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    pairs.append((ours, peer))
    return ours, peer


def read_all(early: EarlyPiece, conn: EarlyConn, rounds: int = 200) -> None:
    """Read until the socket has nothing more now (or the piece is done)."""
    for _ in range(rounds):
        before = conn.end, conn.start, len(conn.kept), early.done
        early.read(conn)
        if early.done or (conn.end, conn.start, len(conn.kept), early.done) == before:
            return


def test_the_answers_make_the_piece_and_every_other_frame_is_kept_in_order(pairs: Any) -> None:
    ours, peer = pair(pairs)
    reqs = blocks()
    have = encode(Have(2))
    conn = EarlyConn(ours.fileno(), HANDSHAKE + have, reqs)
    early = EarlyPiece(0, PIECE_LEN, digest(), [conn])
    ext = encode(Extended(1, b"d5:added0:e"))
    frames = piece_frames(reqs[:2]) + ext + encode(KeepAlive()) + piece_frames(reqs[2:])
    cut = encode(Have(1))[:5]  # a frame whose rest is still to come
    peer.sendall(frames + cut)
    read_all(early, conn)
    assert early.whole and not early.failed
    assert early.check()
    assert bytes(early.slot.view) == DATA[:PIECE_LEN]
    # the worker reads the handshake, then what came besides the blocks, in order
    assert conn.stream() == HANDSHAKE + have + ext + encode(KeepAlive()) + cut
    assert conn.unanswered() == ()


def test_blocks_split_between_connections_and_cut_across_reads(pairs: Any) -> None:
    (a, pa), (b, pb) = pair(pairs), pair(pairs)
    reqs = blocks()
    ca = EarlyConn(a.fileno(), HANDSHAKE, reqs[:2])
    cb = EarlyConn(b.fileno(), HANDSHAKE, reqs[2:])
    early = EarlyPiece(0, PIECE_LEN, digest(), [ca, cb])
    sa, sb = piece_frames(reqs[:2]), piece_frames(reqs[2:])
    for k in range(0, max(len(sa), len(sb)), 1000):  # a thousand bytes at a time
        if sa[k : k + 1000]:
            pa.sendall(sa[k : k + 1000])
            read_all(early, ca)
        if sb[k : k + 1000]:
            pb.sendall(sb[k : k + 1000])
            read_all(early, cb)
    assert early.whole and early.check()
    assert ca.stream() == cb.stream() == HANDSHAKE


def test_the_short_last_piece(pairs: Any) -> None:
    ours, peer = pair(pairs)
    size = len(DATA) - 2 * PIECE_LEN
    reqs = blocks(2, size)
    conn = EarlyConn(ours.fileno(), HANDSHAKE, reqs)
    early = EarlyPiece(2, size, hashlib.sha1(DATA[2 * PIECE_LEN:]).digest(), [conn])
    peer.sendall(piece_frames(reqs))
    read_all(early, conn)
    assert early.check()


@pytest.mark.parametrize(("frame", "reason"), [(encode(Choke()), "choked"),
                                               (encode(Reject(0, 2 * BLOCK, BLOCK)),
                                                "a request rejected")])
def test_a_choke_or_a_reject_hands_it_back_with_the_requests_left(
        pairs: Any, frame: bytes, reason: str) -> None:
    ours, peer = pair(pairs)
    reqs = blocks()
    conn = EarlyConn(ours.fileno(), HANDSHAKE, reqs)
    early = EarlyPiece(0, PIECE_LEN, digest(), [conn])
    after = piece_frames(reqs[3:])
    peer.sendall(piece_frames(reqs[:2]) + frame + after)
    read_all(early, conn)
    assert early.failed == reason and not early.whole
    assert not early.check()
    # the worker reads the choke or reject, and what followed it, itself
    stream = conn.stream()
    assert stream.startswith(HANDSHAKE + frame)
    assert after.startswith(stream[len(HANDSHAKE + frame):])
    assert conn.unanswered() == tuple(reqs[2:])


def test_a_peer_that_closes_hands_it_back(pairs: Any) -> None:
    ours, peer = pair(pairs)
    conn = EarlyConn(ours.fileno(), HANDSHAKE, blocks())
    early = EarlyPiece(0, PIECE_LEN, digest(), [conn])
    peer.sendall(piece_frames(blocks()[:1]))
    peer.close()
    read_all(early, conn)
    assert early.failed == "closed by the peer"
    assert conn.unanswered() == tuple(blocks()[1:])


def test_a_piece_that_does_not_hash_is_not_good(pairs: Any) -> None:
    ours, peer = pair(pairs)
    reqs = blocks()
    conn = EarlyConn(ours.fileno(), HANDSHAKE, reqs)
    early = EarlyPiece(0, PIECE_LEN, digest(), [conn])
    bad = bytearray(DATA)
    bad[BLOCK + 5] ^= 0xFF
    peer.sendall(piece_frames(reqs, bytes(bad)))
    read_all(early, conn)
    assert early.whole
    assert not early.check()
    assert early.failed == "its hash does not match"


def test_blocks_not_asked_for_here_are_left_to_the_worker(pairs: Any) -> None:
    ours, peer = pair(pairs)
    reqs = blocks()
    conn = EarlyConn(ours.fileno(), HANDSHAKE, reqs[:2])
    other = EarlyConn(-1, HANDSHAKE, reqs[2:])  # (asked on another connection)
    early = EarlyPiece(0, PIECE_LEN, digest(), [conn, other])
    stray = piece_frames([(1, 0, BLOCK)]) + piece_frames(reqs[2:3]) \
        + encode(Piece(0, 0, DATA[:100]))  # another piece; another's; a wrong length
    peer.sendall(stray + piece_frames(reqs[:2]))
    read_all(early, conn)
    assert not early.done
    assert early.pd.received == 2
    assert conn.stream() == HANDSHAKE + stray
    assert conn.unanswered() == () and other.unanswered() == tuple(reqs[2:])


def test_a_frame_longer_than_the_hand_over_hands_it_back(pairs: Any) -> None:
    ours, peer = pair(pairs)
    conn = EarlyConn(ours.fileno(), HANDSHAKE, blocks())
    early = EarlyPiece(0, PIECE_LEN, digest(), [conn])
    huge = (MAX_HANDOVER_BYTES + 1).to_bytes(4, "big") + b"\x14" + b"x" * 100
    peer.sendall(huge)
    read_all(early, conn)
    assert early.failed == "more than the hand-over holds"
    assert conn.stream() == HANDSHAKE + huge  # the worker's own bound judges it
    assert conn.unanswered() == tuple(blocks())


def test_a_flood_of_frames_is_bounded_by_the_hand_over(pairs: Any) -> None:
    ours, peer = pair(pairs)
    conn = EarlyConn(ours.fileno(), HANDSHAKE, blocks())
    early = EarlyPiece(0, PIECE_LEN, digest(), [conn])
    flood = encode(Have(1)) * ((MAX_HANDOVER_BYTES + 4 * READ_SIZE) // 9)
    peer.setblocking(False)
    sent = 0
    for _ in range(1000):
        try:
            sent += peer.send(flood[sent:])
        except BlockingIOError:
            pass
        read_all(early, conn)
        if early.done or sent == len(flood):
            break
    read_all(early, conn)
    assert early.failed == "more than the hand-over holds"
    assert len(conn.stream()) <= MAX_HANDOVER_BYTES


def test_what_an_early_piece_refuses_to_start_with() -> None:
    with pytest.raises(ValueError, match="handshake"):
        EarlyConn(-1, HANDSHAKE[:40], blocks())
    with pytest.raises(ValueError, match="piece 1"):
        EarlyPiece(0, PIECE_LEN, digest(), [EarlyConn(-1, HANDSHAKE, blocks(1))])


def test_a_choke_that_came_with_the_fetchs_stream_ends_it_before_any_read() -> None:
    stream = HANDSHAKE + encode(Unchoke()) + encode(Choke())
    early = EarlyPiece(0, PIECE_LEN, digest(), [EarlyConn(-1, stream, blocks())])
    assert early.failed == "choked"


# -- what the coordinator does with it ---------------------------------------------------
class Pipe:
    """A worker's control pipe as the coordinator's loop sees it: what it was sent, and
    the descriptor sent with each message (None: none)."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.fds: list[int | None] = []

    def send(self, msg: Any, fd: int | None = None) -> None:
        self.sent.append(msg)
        self.fds.append(fd)


PEERS = [("127.0.0.1", 6881 + k) for k in range(2)]


def held_coordinator(tmp_path: Path, pairs: Any, outdir: Path | None = None, conns: int = 1,
                     ) -> tuple[Coordinator, list[WorkerHandle], list[socket.socket]]:
    """A coordinator of two workers whose worker 0 has piece 0 in its first lease, and
    ``conns`` kept connections that carry the requests for it (split evenly, the
    k-th to be taken by worker k), held (``_hold_early``)."""
    src = tmp_path / "f.bin"
    src.write_bytes(DATA)
    meta = metainfo.parse(create_torrent(str(src), piece_length=PIECE_LEN))
    if outdir is None:
        outdir = tmp_path / "out"
        outdir.mkdir()  # (as prepare makes it)
    c = Coordinator(meta, str(outdir), Options(workers=2, bind="127.0.0.1",
                                               use_trackers=False))
    hs = [WorkerHandle(w, SimpleNamespace(exitcode=None), Pipe()) for w in range(2)]
    for h in hs:
        h.channel = h.conn  # type: ignore[assignment]  # the loop's view of the pipe
    c.workers = hs
    c.leases.start(0.0)
    assert c.leases.first_lease(0, 4, 0.0)[0] == 0
    c._early_plan = (0, 0)
    share = len(blocks()) // conns
    peers, adopt = [], {0: [], 1: []}  # type: ignore[var-annotated]
    for k in range(conns):
        ours, peer = pair(pairs)
        peers.append(peer)
        adopt[k].append(Handover(*PEERS[k], os.dup(ours.fileno()), HANDSHAKE, "magnet", True,
                                 True, k, tuple(blocks()[k * share : (k + 1) * share])))
        ours.close()  # (the coordinator holds the copy)
    c._hold_early(adopt)
    assert adopt == {0: [], 1: []}  # held: not handed over with the workers' torrent
    return c, hs, peers


def read_held(c: Coordinator) -> None:
    for _ in range(200):
        held = c._early
        if held is None:
            return
        before = [(ec.end, len(ec.outstanding)) for ec in held.piece.conns]
        for k in range(len(held.conns)):
            c._early_readable(k)
        if c._early is held and before == [(ec.end, len(ec.outstanding))
                                           for ec in held.piece.conns]:
            return


def test_a_whole_early_piece_is_written_reported_and_its_connections_handed_over(
        tmp_path: Path, pairs: Any) -> None:
    c, hs, peers = held_coordinator(tmp_path, pairs, conns=2)
    have = encode(Have(2))
    share = len(blocks()) // 2
    peers[0].sendall(piece_frames(blocks()[:share]) + have)

    async def scenario() -> None:
        c.start_early()
        read_held(c)
        # the first connection's share is answered: it is its worker's at once
        assert c._early is not None and c._early.conns[0] is None
        assert [type(m) for m in hs[0].conn.sent] == [ipc.Adopt]
        peers[1].sendall(piece_frames(blocks()[share:]))
        read_held(c)
        assert c._early is None

    asyncio.run(scenario())
    assert c.early_outcomes == ["piece 0: verified"]
    first, second = hs[0].conn, hs[1].conn
    adopt = first.sent[0]
    assert first.fds[0] is not None
    assert (adopt.host, adopt.port, adopt.interested) == (*PEERS[0], True)
    assert adopt.data == HANDSHAKE + have and adopt.requested == ()
    # the piece's worker serves it, never asks for it and flushes it with its own
    # writes; the other hears of it by the batch
    assert first.sent[1] == ipc.PiecesDone((0,), written=True)
    assert ipc.PiecesDone((0,)) in second.sent
    adopts = [m for m in second.sent if isinstance(m, ipc.Adopt)]
    assert len(adopts) == 1 and adopts[0].requested == () and adopts[0].data == HANDSHAKE
    assert (tmp_path / "out" / "f.bin").read_bytes()[:PIECE_LEN] == DATA[:PIECE_LEN]
    assert c.leases.verified_pieces() == [0] and c.first_piece_at is not None
    assert c.durable[0] == 0  # (until the worker's flush says so)


def test_an_early_piece_not_whole_in_time_goes_back_with_the_requests_left(
        tmp_path: Path, pairs: Any) -> None:
    c, hs, peers = held_coordinator(tmp_path, pairs)
    peers[0].sendall(piece_frames(blocks()[:2]))

    async def scenario() -> None:
        c.start_early()
        read_held(c)
        c._early_timeout()  # (its timer's call)

    asyncio.run(scenario())
    assert c.early_outcomes == ["piece 0: handed back (not whole in time)"]
    assert hs[0].conn.sent[0] == ipc.Lease((0,))
    assert hs[0].conn.sent[1].requested == tuple(blocks()[2:])  # the two read: asked again
    assert not (tmp_path / "out" / "f.bin").exists() and c.first_piece_at is None


def test_a_lying_peers_early_piece_is_not_written(tmp_path: Path, pairs: Any) -> None:
    c, hs, peers = held_coordinator(tmp_path, pairs)
    bad = bytearray(DATA)
    bad[7] ^= 1
    peers[0].sendall(piece_frames(blocks(), bytes(bad)))

    async def scenario() -> None:
        c.start_early()
        read_held(c)

    asyncio.run(scenario())
    assert c.early_outcomes == ["piece 0: handed back (its hash does not match)"]
    kinds = [type(m) for m in hs[0].conn.sent]
    assert ipc.Lease((0,)) in hs[0].conn.sent and kinds.count(ipc.Adopt) == 1
    assert not (tmp_path / "out" / "f.bin").exists() and c.first_piece_at is None


def test_an_early_piece_that_cannot_be_written_here_goes_to_its_worker(
        tmp_path: Path, pairs: Any) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"")
    c, hs, peers = held_coordinator(tmp_path, pairs, outdir=blocker)
    peers[0].sendall(piece_frames(blocks()))

    async def scenario() -> None:
        c.start_early()
        read_held(c)

    asyncio.run(scenario())
    assert len(c.early_outcomes) == 1
    assert c.early_outcomes[0].startswith("piece 0: handed back (not written here: ")
    assert ipc.Lease((0,)) in hs[0].conn.sent
    assert c.leases.verified_pieces() == [] and c.first_piece_at is None


def test_a_run_that_ends_first_closes_the_held_connections(tmp_path: Path, pairs: Any) -> None:
    c, hs, peers = held_coordinator(tmp_path, pairs)

    async def scenario() -> None:
        c.start_early()
        c.close_early()

    asyncio.run(scenario())
    assert c._early is None and hs[0].conn.sent == []
    peers[0].settimeout(5)
    assert peers[0].recv(1) == b""  # every copy of our end is closed: the peer sees it
