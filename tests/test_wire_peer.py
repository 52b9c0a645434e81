"""The per-peer state machine: handshake, protocol rules, requests, timers."""

from __future__ import annotations

import hashlib
import random
import socket
import struct
import warnings
from pathlib import Path

import pytest
from conftest import require_module

from torrent.errors import RemoteProtocolError
from torrent.wire.handshake import (
    HANDSHAKE_LENGTH,
    PSTR,
    RESERVED_OURS,
    Handshake,
    encode_handshake,
    make_peer_id,
    parse_handshake,
)
from torrent.wire.messages import (
    BLOCK_SIZE,
    HASH_REQUEST,
    MAX_REQUEST_LENGTH,
    Bitfield,
    Cancel,
    Choke,
    Hashes,
    HashReject,
    HashRequest,
    Have,
    Interested,
    KeepAlive,
    LocalProtocolError,
    NotInterested,
    Piece,
    Port,
    Request,
    Unchoke,
    encode,
    frame,
)
from torrent.wire.peer import (
    IDLE_TIMEOUT,
    KEEPALIVE_INTERVAL,
    MAX_OUTSTANDING_REQUESTS,
    MAX_PEER_REQUESTS,
    MAX_RECENTLY_CANCELLED,
    BitfieldReceived,
    BlockReceived,
    CancelReceived,
    Choked,
    ConnectionClosed,
    HandshakeReceived,
    HashesReceived,
    HashRejectReceived,
    HashRequestReceived,
    HaveReceived,
    PeerInterested,
    PeerNotInterested,
    PeerProtocol,
    PeerState,
    RequestReceived,
    RequestsCancelled,
    Unchoked,
)

INFO_HASH = bytes(range(20))
OUR_ID = b"-FT0100-ourpeeridxyz"
THEIR_ID = b"-LT2110-theirpeerid0"
PIECE_LEN = 2 * BLOCK_SIZE
NUM_PIECES = 10  # a 2-byte bitfield with 6 spare bits
LAST_PIECE_SIZE = 20_000
TOTAL = (NUM_PIECES - 1) * PIECE_LEN + LAST_PIECE_SIZE
THEIR_HANDSHAKE = encode_handshake(INFO_HASH, THEIR_ID)


def new_peer(*, now: float = 0.0, **kw: object) -> PeerProtocol:
    kw.setdefault("we_initiated", True)
    return PeerProtocol(INFO_HASH, OUR_ID, NUM_PIECES, PIECE_LEN, TOTAL, now=now, **kw)  # type: ignore[arg-type]


def active_peer(*, now: float = 0.0, unchoked: bool = False) -> PeerProtocol:
    """A peer past the handshake (both ways); optionally the peer unchoked us."""
    p = new_peer(now=now)
    assert len(p.handshake()) == HANDSHAKE_LENGTH
    assert p.receive_data(THEIR_HANDSHAKE) == [HandshakeReceived(THEIR_ID, bytes(8))]
    if unchoked:
        assert p.receive_data(encode(Unchoke())) == [Unchoked()]
    return p


def recv(p: PeerProtocol, *msgs: object) -> list[object]:
    """Feed encoded messages; copy block data (it is only valid until the next call)."""
    events = p.receive_data(b"".join(encode(m) for m in msgs))  # type: ignore[arg-type]
    return [BlockReceived(e.index, e.begin, bytes(e.data)) if isinstance(e, BlockReceived) else e
            for e in events]


# --- handshake ------------------------------------------------------------------------
def test_handshake_bytes_and_parse_round_trip() -> None:
    raw = encode_handshake(INFO_HASH, THEIR_ID)
    assert len(raw) == 68
    assert raw[:20] == b"\x13" + PSTR
    assert parse_handshake(raw) == Handshake(bytes(8), INFO_HASH, THEIR_ID)


def test_handshake_reserved_bits() -> None:
    reserved = bytearray(8)
    reserved[5] |= 0x10
    reserved[7] |= 0x05
    hs = parse_handshake(encode_handshake(INFO_HASH, THEIR_ID, bytes(reserved)))
    assert hs.supports_extensions and hs.supports_fast and hs.supports_dht
    plain = parse_handshake(encode_handshake(INFO_HASH, THEIR_ID))
    assert not (plain.supports_extensions or plain.supports_fast or plain.supports_dht)


def test_parse_handshake_rejects_wrong_pstr() -> None:
    raw = bytearray(encode_handshake(INFO_HASH, THEIR_ID))
    raw[1:20] = b"BitTorrent Protocol"
    with pytest.raises(RemoteProtocolError, match="handshake"):
        parse_handshake(bytes(raw))


def test_make_peer_id_is_azureus_style_and_uses_the_injected_source() -> None:
    a = make_peer_id(randbytes=random.Random(1).randbytes)
    b = make_peer_id(randbytes=random.Random(1).randbytes)
    c = make_peer_id(randbytes=random.Random(2).randbytes)
    assert a == b != c
    assert len(a) == 20 and a.startswith(b"-FT0100-")
    assert all(chr(x).isalnum() or chr(x) in "-_" for x in a[8:])  # URL-safe for trackers
    assert make_peer_id(b"-XX9999-").startswith(b"-XX9999-")
    with pytest.raises(LocalProtocolError):
        make_peer_id(b"-short-")


@pytest.mark.parametrize("chunk", [68 + 1000, 1, 7])
def test_handshake_then_messages_in_any_chunking(chunk: int) -> None:
    p = new_peer(we_initiated=False)
    stream = THEIR_HANDSHAKE + encode(Bitfield(b"\xff\xc0")) + encode(Have(3)) + encode(Unchoke())
    events: list[object] = []
    for i in range(0, len(stream), chunk):
        events += p.receive_data(stream[i:i + chunk])
    assert events == [HandshakeReceived(THEIR_ID, bytes(8)), BitfieldReceived(b"\xff\xc0"),
                      Unchoked()]
    assert p.state is PeerState.ACTIVE
    assert p.peer_id == THEIR_ID
    assert p.peer_is_seed and p.peer_piece_count == NUM_PIECES


def test_acceptor_answers_after_receiving_the_handshake() -> None:
    p = new_peer(we_initiated=False)
    assert p.receive_data(THEIR_HANDSHAKE) == [HandshakeReceived(THEIR_ID, bytes(8))]
    assert parse_handshake(p.handshake()).peer_id == OUR_ID
    assert p.send_interested() == encode(Interested())


def test_wrong_info_hash_is_a_peer_error() -> None:
    p = new_peer()
    with pytest.raises(RemoteProtocolError, match="info-hash"):
        p.receive_data(encode_handshake(b"\xee" * 20, THEIR_ID))
    assert p.state is PeerState.CLOSED


def test_connected_to_self() -> None:
    p = new_peer()
    with pytest.raises(RemoteProtocolError, match="connected to self"):
        p.receive_data(encode_handshake(INFO_HASH, OUR_ID))


def test_unexpected_peer_id() -> None:
    p = new_peer(expect_peer_id=b"-XX0000-000000000000")
    with pytest.raises(RemoteProtocolError, match="differs"):
        p.receive_data(THEIR_HANDSHAKE)
    ok = new_peer(expect_peer_id=THEIR_ID)
    assert ok.receive_data(THEIR_HANDSHAKE) == [HandshakeReceived(THEIR_ID, bytes(8))]


def test_non_bittorrent_stream_rejected_from_its_first_byte() -> None:
    p = new_peer()
    with pytest.raises(RemoteProtocolError, match="not send a BitTorrent handshake"):
        p.receive_data(b"G")  # e.g. "GET / HTTP/1.1", or an encrypted stream


def test_eof_during_handshake_closes() -> None:
    p = new_peer()
    assert p.receive_data(THEIR_HANDSHAKE[:30]) == []
    assert p.receive_data(b"") == [ConnectionClosed()]
    assert p.state is PeerState.CLOSED


# --- states -------------------------------------------------------------------------------
def test_state_transitions() -> None:
    p = new_peer()
    assert p.state is PeerState.AWAIT_HANDSHAKE
    p.receive_data(THEIR_HANDSHAKE)
    assert p.state is PeerState.ACTIVE
    assert p.receive_data(b"") == [ConnectionClosed()]
    assert p.state is PeerState.CLOSED
    with pytest.raises(LocalProtocolError, match="closed"):
        p.receive_data(encode(Choke()))


@pytest.mark.parametrize(
    ("start", "target"),
    [
        (PeerState.ACTIVE, PeerState.AWAIT_HANDSHAKE),
        (PeerState.CLOSED, PeerState.ACTIVE),
        (PeerState.CLOSED, PeerState.CLOSED),
        (PeerState.ACTIVE, PeerState.ACTIVE),
    ],
)
def test_illegal_transition_raises_our_bug_error(start: PeerState, target: PeerState) -> None:
    p = new_peer()
    if start is not PeerState.AWAIT_HANDSHAKE:
        p._transition(PeerState.ACTIVE)
    if start is PeerState.CLOSED:
        p._transition(PeerState.CLOSED)
    assert p.state is start
    with pytest.raises(LocalProtocolError, match="illegal"):
        p._transition(target)


def test_sending_before_the_handshake_is_our_bug() -> None:
    p = new_peer()
    with pytest.raises(LocalProtocolError):
        p.send_interested()
    p.handshake()
    with pytest.raises(LocalProtocolError):  # theirs is not in yet
        p.send_interested()
    with pytest.raises(LocalProtocolError):
        p.handshake()  # twice


def test_bad_geometry_is_refused() -> None:
    with pytest.raises(ValueError):
        PeerProtocol(INFO_HASH, OUR_ID, NUM_PIECES + 1, PIECE_LEN, TOTAL, we_initiated=True, now=0)


# --- protocol rules, one test each ---------------------------------------------------------------
def test_a_later_bitfield_counts_as_haves_of_the_new_pieces() -> None:
    """aria2 sends a fresh bitfield instead of many HAVEs: only new pieces are reported,
    and no piece is ever taken away."""
    p = active_peer()
    recv(p, Have(1))
    assert recv(p, Bitfield(b"\x60\x40")) == [HaveReceived(2), HaveReceived(9)]
    assert recv(p, Bitfield(b"\x00\x00")) == []  # clearing bits does nothing
    assert [p.peer_has(i) for i in range(NUM_PIECES)] == \
        [False, True, True] + [False] * 6 + [True]
    assert p.peer_piece_count == 3 and p.state is PeerState.ACTIVE


def test_a_later_bitfield_is_checked_like_the_first() -> None:
    p = active_peer()
    recv(p, Have(1))
    with pytest.raises(RemoteProtocolError, match="spare bits"):
        recv(p, Bitfield(b"\xff\xff"))
    assert p.state is PeerState.CLOSED


def test_keepalive_before_bitfield_is_fine() -> None:
    p = active_peer()
    assert recv(p, KeepAlive(), Bitfield(b"\x80\x40")) == [BitfieldReceived(b"\x80\x40")]
    assert p.peer_has(0) and p.peer_has(9) and not p.peer_has(1)
    assert p.peer_piece_count == 2


@pytest.mark.parametrize("bits", [b"\xff", b"\xff\xc0\x00"])
def test_bitfield_wrong_length(bits: bytes) -> None:
    p = active_peer()
    with pytest.raises(RemoteProtocolError, match=r"bitfield|at most"):
        recv(p, Bitfield(bits))


def test_bitfield_spare_bits_set() -> None:
    p = active_peer()
    with pytest.raises(RemoteProtocolError, match="spare bits"):
        recv(p, Bitfield(b"\xff\xe0"))  # bit 10 does not exist


def test_have_index_out_of_range() -> None:
    p = active_peer()
    with pytest.raises(RemoteProtocolError, match="have for piece 10"):
        recv(p, Have(NUM_PIECES))


def test_have_is_reported_once() -> None:
    p = active_peer()
    assert recv(p, Have(4), Have(4), Have(5)) == [HaveReceived(4), HaveReceived(5)]
    assert p.peer_piece_count == 2


def test_unrequested_block() -> None:
    p = active_peer(unchoked=True)
    with pytest.raises(RemoteProtocolError, match="did not request"):
        recv(p, Piece(0, 0, b"x" * BLOCK_SIZE))


def test_block_of_the_wrong_length() -> None:
    p = active_peer(unchoked=True)
    p.send_request(0, 0, BLOCK_SIZE, now=1.0)
    with pytest.raises(RemoteProtocolError, match="we requested 16384"):
        recv(p, Piece(0, 0, b"x" * 100))


def test_block_index_out_of_range() -> None:
    p = active_peer(unchoked=True)
    with pytest.raises(RemoteProtocolError, match="the torrent has 10"):
        recv(p, Piece(NUM_PIECES, 0, b"x"))


def test_block_beyond_the_piece() -> None:
    p = active_peer(unchoked=True)
    with pytest.raises(RemoteProtocolError, match="which has 20000 bytes"):
        recv(p, Piece(NUM_PIECES - 1, 16384, b"x" * 4000))


def test_request_index_out_of_range() -> None:
    p = active_peer()
    with pytest.raises(RemoteProtocolError, match="the torrent has 10"):
        recv(p, Request(NUM_PIECES, 0, BLOCK_SIZE))


def test_request_beyond_the_piece() -> None:
    p = active_peer()
    with pytest.raises(RemoteProtocolError, match="which has 20000 bytes"):
        recv(p, Request(NUM_PIECES - 1, BLOCK_SIZE, BLOCK_SIZE))


def test_request_of_zero_length() -> None:
    p = active_peer()
    with pytest.raises(RemoteProtocolError, match="zero-length"):
        recv(p, Request(0, 0, 0))


def test_request_too_long() -> None:
    p = active_peer()
    with pytest.raises(RemoteProtocolError, match="largest request"):
        recv(p, Request(0, 0, MAX_REQUEST_LENGTH + 1))


def test_unknown_and_port_messages_are_ignored() -> None:
    p = active_peer()
    assert p.receive_data(frame(20, b"d1:md11:ut_metadatai1eee") + encode(Port(6881))
                          + frame(200, b"")) == []
    # (BEP 6 messages without the Fast extension drop the peer: test_wire_extensions_peer.py)
    assert p.state is PeerState.ACTIVE


def test_bep52_hash_messages_are_events_and_their_answers_go_out() -> None:
    p = active_peer()
    root = bytes(range(32))
    req = HashRequest(root, 0, 0, 2, 0)
    reply = Hashes(root, 0, 0, 2, 0, bytes(64))
    reject = HashReject(root, 0, 2, 2, 0)
    assert recv(p, req, reply, reject) == [HashRequestReceived(req), HashesReceived(reply),
                                           HashRejectReceived(reject)]
    assert p.send_hash_request(req) == encode(req)
    assert p.send_hashes(reply) == encode(reply)
    assert p.send_hash_reject(req) == encode(HashReject(root, 0, 0, 2, 0))
    assert p.state is PeerState.ACTIVE


def test_a_hash_request_frame_over_its_bound_drops_the_peer() -> None:
    p = active_peer()
    with pytest.raises(RemoteProtocolError, match="at most"):
        p.receive_data(frame(HASH_REQUEST, bytes(49)))
    assert p.state is PeerState.CLOSED


def test_oversized_prefix_rejected_before_buffering() -> None:
    p = active_peer()
    with pytest.raises(RemoteProtocolError, match="length prefix"):
        p.receive_data(struct.pack(">I", 64 * 1024 * 1024))
    assert p.state is PeerState.CLOSED


def test_flags_follow_the_peer() -> None:
    p = active_peer()
    assert (p.peer_choking, p.peer_interested) == (True, False)
    assert recv(p, Unchoke(), Unchoke(), Interested()) == [Unchoked(), PeerInterested()]
    assert (p.peer_choking, p.peer_interested) == (False, True)
    assert recv(p, NotInterested(), Choke(), Choke()) == [PeerNotInterested(), Choked()]
    assert (p.peer_choking, p.peer_interested) == (True, False)


# --- our requests ---------------------------------------------------------------------------------
def test_request_and_block() -> None:
    p = active_peer(unchoked=True)
    assert p.send_request(2, BLOCK_SIZE, BLOCK_SIZE, now=5.0) == encode(
        Request(2, BLOCK_SIZE, BLOCK_SIZE))
    assert p.outstanding_requests == [(2, BLOCK_SIZE, BLOCK_SIZE)]
    block = bytes(range(256)) * 64
    assert recv(p, Piece(2, BLOCK_SIZE, block)) == [BlockReceived(2, BLOCK_SIZE, block)]
    assert p.num_outstanding == 0


def test_block_data_is_a_view_into_the_received_buffer() -> None:
    p = active_peer(unchoked=True)
    p.send_request(0, 0, 4, now=0.0)
    (ev,) = p.receive_data(encode(Piece(0, 0, b"abcd")))
    assert isinstance(ev, BlockReceived)
    assert isinstance(ev.data, memoryview) and ev.data == b"abcd"


def test_choke_cancels_outstanding_requests() -> None:
    p = active_peer(unchoked=True)
    for begin in (0, BLOCK_SIZE):
        p.send_request(1, begin, BLOCK_SIZE, now=1.0)
    events = recv(p, Choke())
    cancelled = ((1, 0, BLOCK_SIZE), (1, BLOCK_SIZE, BLOCK_SIZE))
    assert events == [Choked(), RequestsCancelled(cancelled)]
    assert p.num_outstanding == 0
    with pytest.raises(LocalProtocolError, match="chokes us"):
        p.send_request(1, 0, BLOCK_SIZE, now=2.0)
    # a block that crossed the choke on the wire is dropped silently
    assert recv(p, Piece(1, 0, b"x" * BLOCK_SIZE)) == []
    assert p.ignored_blocks == 1


def test_request_while_choked_is_our_bug() -> None:
    p = active_peer()
    with pytest.raises(LocalProtocolError, match="chokes us"):
        p.send_request(0, 0, BLOCK_SIZE, now=0.0)


@pytest.mark.parametrize(
    ("index", "begin", "length"),
    [(NUM_PIECES, 0, BLOCK_SIZE), (0, 0, 0), (0, 0, MAX_REQUEST_LENGTH + 1),
     (NUM_PIECES - 1, BLOCK_SIZE, BLOCK_SIZE), (0, -1, 10)],
)
def test_invalid_request_of_ours_is_our_bug(index: int, begin: int, length: int) -> None:
    p = active_peer(unchoked=True)
    with pytest.raises(LocalProtocolError, match="invalid request"):
        p.send_request(index, begin, length, now=0.0)


def test_duplicate_and_too_many_requests_are_our_bug() -> None:
    p = active_peer(unchoked=True)
    p.send_request(0, 0, BLOCK_SIZE, now=0.0)
    with pytest.raises(LocalProtocolError, match="already requested"):
        p.send_request(0, 0, BLOCK_SIZE, now=0.0)
    p2 = _peer_with_many_pieces()
    for i in range(MAX_OUTSTANDING_REQUESTS):
        p2.send_request(i, 0, BLOCK_SIZE, now=0.0)
    with pytest.raises(LocalProtocolError, match="outstanding"):
        p2.send_request(MAX_OUTSTANDING_REQUESTS, 0, BLOCK_SIZE, now=0.0)


def _peer_with_many_pieces(n: int = 1000) -> PeerProtocol:
    p = PeerProtocol(INFO_HASH, OUR_ID, n, BLOCK_SIZE, n * BLOCK_SIZE, we_initiated=True, now=0.0)
    p.handshake()
    p.receive_data(THEIR_HANDSHAKE + encode(Unchoke()))
    return p


def test_timeouts_reissue() -> None:
    p = active_peer(unchoked=True)
    p.send_request(0, 0, BLOCK_SIZE, now=10.0)
    p.send_request(0, BLOCK_SIZE, BLOCK_SIZE, now=20.0)
    p.send_request(1, 0, BLOCK_SIZE, now=30.0)
    assert p.timed_out_requests(now=39.0, timeout=30.0) == []
    assert p.timed_out_requests(now=50.0, timeout=30.0) == [(0, 0, BLOCK_SIZE),
                                                            (0, BLOCK_SIZE, BLOCK_SIZE)]
    assert p.timed_out_requests(now=50.0, timeout=30.0) == []  # forgotten
    assert p.outstanding_requests == [(1, 0, BLOCK_SIZE)]
    # a slow block for a timed-out request is not a protocol error
    assert recv(p, Piece(0, 0, b"x" * BLOCK_SIZE)) == []
    # ... and a re-request of it is a fresh request
    p.send_request(0, BLOCK_SIZE, BLOCK_SIZE, now=51.0)
    assert recv(p, Piece(0, BLOCK_SIZE, b"y" * BLOCK_SIZE)) == [
        BlockReceived(0, BLOCK_SIZE, b"y" * BLOCK_SIZE)]


def test_cancelled_then_arrived_block_is_ignored_once() -> None:
    p = active_peer(unchoked=True)
    p.send_request(3, 0, BLOCK_SIZE, now=0.0)
    assert p.send_cancel(3, 0, BLOCK_SIZE) == encode(Cancel(3, 0, BLOCK_SIZE))
    assert p.num_outstanding == 0
    assert recv(p, Piece(3, 0, b"x" * BLOCK_SIZE)) == []
    with pytest.raises(RemoteProtocolError, match="did not request"):
        recv(p, Piece(3, 0, b"x" * BLOCK_SIZE))  # a second copy is not in flight


def test_recently_cancelled_memory_is_bounded() -> None:
    p = _peer_with_many_pieces()
    for i in range(MAX_RECENTLY_CANCELLED + 1):
        p.send_request(i, 0, BLOCK_SIZE, now=0.0)
        p.send_cancel(i, 0, BLOCK_SIZE)
    assert recv(p, Piece(MAX_RECENTLY_CANCELLED, 0, b"x" * BLOCK_SIZE)) == []
    with pytest.raises(RemoteProtocolError, match="did not request"):
        recv(p, Piece(0, 0, b"x" * BLOCK_SIZE))  # the oldest was forgotten


# --- the peer's requests -------------------------------------------------------------------------
def test_peer_requests_while_we_choke_are_dropped() -> None:
    p = active_peer()
    assert recv(p, Interested(), Request(0, 0, BLOCK_SIZE)) == [PeerInterested()]
    assert p.dropped_peer_requests == 1 and p.peer_requests == []


def test_peer_request_queue_bound() -> None:
    p = _peer_with_many_pieces(MAX_PEER_REQUESTS + 1000)
    p.send_unchoke()
    events = recv(p, *[Request(i, 0, BLOCK_SIZE) for i in range(MAX_PEER_REQUESTS + 5)])
    assert len(events) == MAX_PEER_REQUESTS
    assert events[0] == RequestReceived(0, 0, BLOCK_SIZE)
    assert len(p.peer_requests) == MAX_PEER_REQUESTS
    assert p.dropped_peer_requests == 5
    # serving one frees a slot
    assert p.send_piece(0, 0, b"z" * BLOCK_SIZE) == encode(Piece(0, 0, b"z" * BLOCK_SIZE))
    last = MAX_PEER_REQUESTS + 999
    assert recv(p, Request(last, 0, BLOCK_SIZE)) == [RequestReceived(last, 0, BLOCK_SIZE)]


def test_peer_cancel_and_our_choke_discard_its_requests() -> None:
    p = active_peer()
    p.send_unchoke()
    assert recv(p, Request(0, 0, BLOCK_SIZE), Request(0, 0, BLOCK_SIZE), Request(1, 0, 10)) == [
        RequestReceived(0, 0, BLOCK_SIZE), RequestReceived(1, 0, 10)]
    assert recv(p, Cancel(0, 0, BLOCK_SIZE), Cancel(5, 0, 1)) == [CancelReceived(0, 0, BLOCK_SIZE)]
    assert not p.is_request_pending(0, 0, BLOCK_SIZE)
    with pytest.raises(LocalProtocolError, match="not a pending request"):
        p.send_piece(0, 0, b"x" * BLOCK_SIZE)
    assert p.is_request_pending(1, 0, 10)
    p.send_choke()
    assert p.peer_requests == []
    with pytest.raises(LocalProtocolError):
        p.send_piece(1, 0, b"x" * 10)


def test_bitfield_must_be_our_first_message() -> None:
    p = active_peer()
    assert p.send_bitfield(b"\x00\x40") == encode(Bitfield(b"\x00\x40"))
    with pytest.raises(LocalProtocolError, match="first"):
        p.send_bitfield(b"\x00\x40")
    q = active_peer()
    with pytest.raises(LocalProtocolError, match="spare bits"):
        q.send_bitfield(b"\x00\x20")
    q.send_have(1)
    with pytest.raises(LocalProtocolError, match="first"):
        q.send_bitfield(b"\x00\x40")
    with pytest.raises(LocalProtocolError):
        q.send_have(NUM_PIECES)


# --- timers -------------------------------------------------------------------------------------
def test_keepalive_timer() -> None:
    p = active_peer(now=100.0)
    assert not p.needs_keepalive(now=100.0 + KEEPALIVE_INTERVAL - 1)
    assert p.needs_keepalive(now=100.0 + KEEPALIVE_INTERVAL)
    assert p.send_keepalive() == b"\x00\x00\x00\x00"
    assert not p.needs_keepalive(now=100.0 + KEEPALIVE_INTERVAL + 1)  # just sent
    assert p.needs_keepalive(now=100.0 + 2 * KEEPALIVE_INTERVAL + 1)


def test_idle_two_minute_rule() -> None:
    p = new_peer(now=0.0)
    assert not p.is_idle(now=IDLE_TIMEOUT - 1)
    assert p.is_idle(now=IDLE_TIMEOUT)  # no handshake for two minutes
    p.receive_data(THEIR_HANDSHAKE)
    assert not p.is_idle(now=IDLE_TIMEOUT + 1)  # something arrived since the last check
    p.receive_data(encode(KeepAlive()))
    assert not p.is_idle(now=2 * IDLE_TIMEOUT)
    assert p.is_idle(now=3 * IDLE_TIMEOUT)


# --- two machines back to back -------------------------------------------------------------------
def test_two_machines_exchange_a_block() -> None:
    leecher = new_peer(we_initiated=True)
    seeder = PeerProtocol(INFO_HASH, THEIR_ID, NUM_PIECES, PIECE_LEN, TOTAL,
                          we_initiated=False, now=0.0)
    assert seeder.receive_data(leecher.handshake()) == [HandshakeReceived(OUR_ID, RESERVED_OURS)]
    to_leecher = seeder.handshake() + seeder.send_bitfield(b"\xff\xc0")
    assert leecher.receive_data(to_leecher) == [HandshakeReceived(THEIR_ID, RESERVED_OURS),
                                                BitfieldReceived(b"\xff\xc0")]
    assert leecher.fast and leecher.extensions and seeder.fast and seeder.extensions
    assert seeder.receive_data(leecher.send_interested()) == [PeerInterested()]
    assert leecher.receive_data(seeder.send_unchoke()) == [Unchoked()]
    last = NUM_PIECES - 1
    req = leecher.send_request(last, BLOCK_SIZE, LAST_PIECE_SIZE - BLOCK_SIZE, now=1.0)
    expected = RequestReceived(last, BLOCK_SIZE, LAST_PIECE_SIZE - BLOCK_SIZE)
    assert seeder.receive_data(req) == [expected]
    data = b"\x5a" * (LAST_PIECE_SIZE - BLOCK_SIZE)
    (block,) = leecher.receive_data(seeder.send_piece(last, BLOCK_SIZE, data))
    assert block == BlockReceived(last, BLOCK_SIZE, data)
    assert seeder.peer_requests == [] and leecher.num_outstanding == 0
    assert leecher.receive_data(seeder.send_have(0)) == []  # already in its bitfield


# --- against a real libtorrent seed on 127.0.0.1 -------------------------------------------------
def test_download_every_block_from_a_libtorrent_seed(tmp_path: Path) -> None:
    lt = require_module("libtorrent")
    piece_len = 2 * BLOCK_SIZE
    size = 3 * piece_len + 1000  # a short last piece: one short block
    content = hashlib.shake_256(b"wire").digest(size)
    (tmp_path / "f.bin").write_bytes(content)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # file_storage API, still works
        fs = lt.file_storage()
        lt.add_files(fs, str(tmp_path / "f.bin"))
        ct = lt.create_torrent(fs, piece_len)
        lt.set_piece_hashes(ct, str(tmp_path))
        ti = lt.torrent_info(lt.bencode(ct.generate()))
    ses = lt.session({
        "listen_interfaces": "127.0.0.1:0", "enable_dht": False, "enable_lsd": False,
        "enable_upnp": False, "enable_natpmp": False,
        "enable_outgoing_utp": False, "enable_incoming_utp": False,
    })
    atp = lt.add_torrent_params()
    atp.ti = ti
    atp.save_path = str(tmp_path)
    handle = ses.add_torrent(atp)
    for _ in range(200):  # wait for the check of the seed's data, ~0.5 s, bounded
        if handle.status().is_seeding:
            break
        ses.wait_for_alert(100)
        ses.pop_alerts()
    assert handle.status().is_seeding
    info_hash = ti.info_hash().to_bytes()

    p = PeerProtocol(info_hash, make_peer_id(), ti.num_pieces(), piece_len, size,
                     we_initiated=True, now=0.0)
    events: list[object] = []
    with socket.create_connection(("127.0.0.1", ses.listen_port()), timeout=10) as sock:

        def pump_until(kind: type) -> None:
            while not any(isinstance(e, kind) for e in events):
                data = sock.recv(65536)
                assert data, f"libtorrent closed the connection; events so far: {events}"
                for e in p.receive_data(data):
                    if isinstance(e, BlockReceived):  # copy: the view dies on the next call
                        e = BlockReceived(e.index, e.begin, bytes(e.data))
                    events.append(e)

        sock.sendall(p.handshake())
        pump_until(HandshakeReceived)
        hs = events[0]
        assert isinstance(hs, HandshakeReceived) and hs.peer_id.startswith(b"-LT")
        assert parse_handshake(b"\x13" + PSTR + hs.reserved + info_hash + hs.peer_id) \
            .supports_extensions  # libtorrent announces BEP 10; we do not, so it sends none
        sock.sendall(p.send_interested())
        pump_until(Unchoked)
        assert p.peer_is_seed  # its have all (BEP 6: both sides offer Fast) said so
        assert p.fast and p.extensions
        blocks = [(i, b, min(BLOCK_SIZE, p.piece_size(i) - b))
                  for i in range(ti.num_pieces()) for b in range(0, p.piece_size(i), BLOCK_SIZE)]
        sock.sendall(b"".join(p.send_request(i, b, n, now=1.0) for i, b, n in blocks))
        received: dict[tuple[int, int], bytes] = {}
        while len(received) < len(blocks):
            pump_until(BlockReceived)
            for e in events:
                if isinstance(e, BlockReceived):
                    received[(e.index, e.begin)] = bytes(e.data)
            events[:] = [e for e in events if not isinstance(e, BlockReceived)]
        assert p.num_outstanding == 0
    got = b"".join(received[(i, b)] for i, b, _n in blocks)
    assert got == content
    ses.remove_torrent(handle)


def test_block_requested_again_after_a_choke_may_arrive_twice() -> None:
    """Seen with libtorrent: blocks already queued when it choked still come, and the
    same blocks asked for again after the unchoke come a second time.  The second
    copy is a late one, not an unrequested block (which would end the connection)."""
    p = active_peer(unchoked=True)
    p.send_request(0, 0, BLOCK_SIZE, now=0.0)
    events = recv(p, Choke())
    assert RequestsCancelled(((0, 0, BLOCK_SIZE),)) in events
    recv(p, Unchoke())
    p.send_requests([(0, 0, BLOCK_SIZE)], now=1.0)
    block = b"q" * BLOCK_SIZE
    assert recv(p, Piece(0, 0, block)) == [BlockReceived(0, 0, block)]
    assert recv(p, Piece(0, 0, block)) == []  # the second copy: ignored
    assert p.ignored_blocks == 1
    # the fast path used by the worker behaves the same
    p.send_requests([(0, BLOCK_SIZE, BLOCK_SIZE)], now=2.0)
    recv(p, Choke())
    recv(p, Unchoke())
    p.send_requests([(0, BLOCK_SIZE, BLOCK_SIZE)], now=3.0)
    assert p.accept_block(0, BLOCK_SIZE, BLOCK_SIZE) is True
    assert p.accept_block(0, BLOCK_SIZE, BLOCK_SIZE) is False
    with pytest.raises(RemoteProtocolError, match="did not request"):
        p.accept_block(1, 0, BLOCK_SIZE)


def test_block_views_stay_valid_for_the_whole_call() -> None:
    """A frame cut by the end of the buffer must not move the bytes of the blocks before it.

    The buffer is only compacted or regrown between reads: a block view handed
    out in this call stays valid until the next one, even when a later frame
    in the same call does not fit.
    """
    p = active_peer(unchoked=True)
    where = [(0, 0), (0, BLOCK_SIZE), (1, 0), (1, BLOCK_SIZE)]
    for i, begin in where:
        p.send_request(i, begin, BLOCK_SIZE, now=1.0)
    blocks = [bytes([0x11 * (k + 1)]) * BLOCK_SIZE for k in range(4)]
    frames = [encode(Piece(i, begin, blocks[k])) for k, (i, begin) in enumerate(where)]
    # three whole frames and most of a fourth, which runs past the end of the buffer
    # (it grows to the next power of two that holds what was fed: 64 KiB)
    chunk = frames[0] + frames[1] + frames[2] + frames[3][:16000]
    assert len(chunk) <= 64 << 10 < len(chunk) - 16000 + len(frames[3])
    events = p.receive_data(chunk)
    assert [bytes(e.data) for e in events if isinstance(e, BlockReceived)] == blocks[:3]
    (last,) = p.receive_data(frames[3][16000:])
    assert isinstance(last, BlockReceived) and bytes(last.data) == blocks[3]


def _xor(view: memoryview) -> None:
    """A stand-in stream cipher: rewrites the bytes in place, as RC4 would."""
    for k in range(len(view)):
        view[k] ^= 0x5A


def test_a_transform_under_the_framer_sees_every_byte_once_in_place() -> None:
    """The receive buffer's transform (where MSE's RC4 goes) runs on each read's bytes in
    place before framing: the protocol sees the plain stream, from the handshake on, however
    the ciphertext is split, and whether it arrives by feed() or by a socket-style read."""
    plain = THEIR_HANDSHAKE + encode(Unchoke()) + encode(Have(3)) + encode(Interested())
    cipher = bytes(b ^ 0x5A for b in plain)
    expected = [HandshakeReceived(THEIR_ID, bytes(8)), Unchoked(), HaveReceived(3),
                PeerInterested()]
    for step in (1, 7, len(cipher)):
        p = new_peer()
        p.handshake()
        p.rb.transform = _xor
        got: list[object] = []
        for i in range(0, len(cipher), step):
            chunk = cipher[i : i + step]
            if (i // step) % 2:  # alternate: copied in, then read into the free tail
                p.rb.feed(chunk)
            else:
                tail = p.rb.get_buffer(-1)
                tail[: len(chunk)] = chunk
                p.rb.updated(len(chunk))
            while (ev := p.next_event()) is not None:
                got.append(ev)
        assert got == expected, step


def test_pure_twin_block_size_is_the_protocol_block_size() -> None:
    from torrent import _pure

    assert _pure._BLOCK == BLOCK_SIZE


# --- a connection taken over from the metadata fetch -----------------------------------
def test_interested_sent_elsewhere_counts_as_sent() -> None:
    p = new_peer()
    p.handshake_sent_elsewhere()
    with pytest.raises(LocalProtocolError):
        p.interested_sent_elsewhere()  # not before the peer's handshake
    assert p.receive_data(THEIR_HANDSHAKE) == [HandshakeReceived(THEIR_ID, bytes(8))]
    p.interested_sent_elsewhere()
    assert p.am_interested
    # what we say next follows it: a bitfield could no longer be our first message
    with pytest.raises(LocalProtocolError):
        p.send_bitfield(bytes(2))
    assert p.send_not_interested() == encode(NotInterested())
    assert not p.am_interested


def test_requests_sent_elsewhere_are_answered_by_blocks() -> None:
    p = new_peer()
    p.handshake_sent_elsewhere()
    with pytest.raises(LocalProtocolError):
        p.requests_sent_elsewhere([(0, 0, BLOCK_SIZE)], 0.0)  # not before the handshake
    assert p.receive_data(THEIR_HANDSHAKE) == [HandshakeReceived(THEIR_ID, bytes(8))]
    p.requests_sent_elsewhere([(0, 0, BLOCK_SIZE), (0, BLOCK_SIZE, BLOCK_SIZE)], 0.0)
    assert p.num_outstanding == 2
    with pytest.raises(LocalProtocolError, match="already requested"):
        p.requests_sent_elsewhere([(0, 0, BLOCK_SIZE)], 0.0)
    data = bytes(range(256)) * 64
    # sent while it still choked us in this machine's view: the peer unchoked the other
    events = recv(p, Unchoke(), Piece(0, 0, data))
    assert events == [Unchoked(), BlockReceived(0, 0, data)]
    assert p.num_outstanding == 1


def test_requests_sent_elsewhere_keep_the_outstanding_bound() -> None:
    p = active_peer()
    too_many = [(i % NUM_PIECES, (i // NUM_PIECES) * BLOCK_SIZE, BLOCK_SIZE)
                for i in range(MAX_OUTSTANDING_REQUESTS + 1)]
    with pytest.raises(LocalProtocolError, match="outstanding"):
        p.requests_sent_elsewhere(too_many, 0.0)
