"""torrent.wire.metadata_conn: the metadata-only connection of a magnet download, sans-IO.

The peer side is scripted bytes; what we send is read back through the
production framer (helpers.framereader). Every stream is also fed one byte at
a time (chunking invariance).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from helpers.framereader import FrameReader

from torrent import bencoding
from torrent.errors import RemoteProtocolError
from torrent.wire.extension import (
    EXTENSION_HANDSHAKE_ID,
    MAX_METADATA_SIZE,
    METADATA_PIECE,
    OUR_EXTENSION_IDS,
    UT_METADATA,
    ExtensionHandshake,
    MetadataData,
    MetadataReject,
    MetadataRequest,
)
from torrent.wire.handshake import (
    DHT_BIT,
    HANDSHAKE_LENGTH,
    RESERVED_DHT,
    RESERVED_NONE,
    RESERVED_OURS,
    encode_handshake,
    parse_handshake,
)
from torrent.wire.messages import (
    HASHES,
    Bitfield,
    Extended,
    Hashes,
    HashReject,
    HashRequest,
    Have,
    HaveAll,
    HaveNone,
    Interested,
    LocalProtocolError,
    Port,
    Unchoke,
    Unknown,
    encode,
    frame,
)
from torrent.wire.metadata_conn import (
    MAX_HANDOVER_BYTES,
    MAX_PIECES_BEFORE_METADATA,
    MAX_REJECTS_SENT,
    ConnectionReady,
    MetadataConnection,
    MetadataConnState,
    MetadataOffer,
)

INFO = bencoding.encode({b"name": b"x", b"piece length": 16384, b"length": 1,
                         b"pieces": bytes(20), b"pad": bytes(40_000)})
HASH = hashlib.sha1(INFO).digest()
OURS = b"-FT0100-ourpeerid000"
THEIRS = b"-LT2000-theirpeerid0"
PEER_UT_METADATA = 3  # the id the peer wants ut_metadata under (not ours: 1)
OUR_UT_METADATA = OUR_EXTENSION_IDS[UT_METADATA]


def peer_handshake(info_hash: bytes = HASH, reserved: bytes = RESERVED_OURS,
                   peer_id: bytes = THEIRS) -> bytes:
    return encode_handshake(info_hash, peer_id, reserved)


def peer_ext(size: int | None = len(INFO), m: dict[str, int] | None = None) -> bytes:
    hs = ExtensionHandshake(m={UT_METADATA: PEER_UT_METADATA} if m is None else m,
                            v="libtorrent", metadata_size=size)
    return encode(Extended(EXTENSION_HANDSHAKE_ID, hs.encode()))


def peer_data(piece: int) -> bytes:
    data = INFO[piece * METADATA_PIECE : (piece + 1) * METADATA_PIECE]
    return encode(Extended(OUR_UT_METADATA, MetadataData(piece, len(INFO), data).encode()))


def sent(mc: MetadataConnection) -> list[object]:
    """What we sent after our handshake, as messages."""
    return FrameReader(1).feed(mc.data_to_send())


def whole(mc: MetadataConnection, data: bytes) -> list[object]:
    return list(mc.receive_data(data))


def bytewise(mc: MetadataConnection, data: bytes) -> list[object]:
    out: list[object] = []
    for i in range(len(data)):
        out += mc.receive_data(data[i : i + 1])
    return out


FEEDS = [whole, bytewise]
Feed = Callable[[MetadataConnection, bytes], list[object]]


def ready(feed: Feed = whole) -> MetadataConnection:
    mc = MetadataConnection(HASH, OURS, client="fasttorrent 0", listen_port=6881)
    hs = parse_handshake(mc.data_to_send())
    assert (hs.info_hash, hs.peer_id, hs.reserved) == (HASH, OURS, RESERVED_OURS)
    assert feed(mc, peer_handshake()) == [ConnectionReady(THEIRS)]
    assert mc.state is MetadataConnState.AWAIT_EXTENSIONS
    [ext] = sent(mc)
    assert isinstance(ext, Extended) and ext.ext_id == EXTENSION_HANDSHAKE_ID
    ours = ExtensionHandshake.decode(ext.body)
    assert dict(ours.m) == {UT_METADATA: OUR_UT_METADATA}  # only what this connection reads
    assert (ours.p, ours.v, ours.metadata_size) == (6881, "fasttorrent 0", None)
    assert feed(mc, peer_ext()) == [MetadataOffer(len(INFO), "libtorrent")]
    assert mc.state is MetadataConnState.READY and mc.can_request
    return mc


@pytest.mark.parametrize("feed", FEEDS)
def test_handshakes_then_requests_and_data(feed: Feed) -> None:
    mc = ready(feed)
    mc.request(0)
    mc.request(2)
    msgs = sent(mc)
    assert [(m.ext_id, m.body) for m in msgs] == [  # type: ignore[attr-defined]
        (PEER_UT_METADATA, MetadataRequest(0).encode()),
        (PEER_UT_METADATA, MetadataRequest(2).encode()),
    ]
    # Anything but extended messages is framed and ignored, a huge bitfield included.
    noise = (encode(Bitfield(b"\xff" * (MAX_PIECES_BEFORE_METADATA // 8))) + encode(HaveAll())
             + encode(Unchoke()) + b"\x00\x00\x00\x00" + encode(Unknown(99, b"x" * 100)))
    stream = noise + peer_data(0) + peer_data(2)
    reject = encode(Extended(OUR_UT_METADATA, MetadataReject(1).encode()))
    got = feed(mc, stream + reject)
    assert got == [MetadataData(0, len(INFO), INFO[:METADATA_PIECE]),
                   MetadataData(2, len(INFO), INFO[2 * METADATA_PIECE :]),
                   MetadataReject(1)]


@pytest.mark.parametrize("feed", FEEDS)
def test_a_peers_requests_get_rejects_up_to_the_bound(feed: Feed) -> None:
    mc = ready()
    req = encode(Extended(OUR_UT_METADATA, MetadataRequest(0).encode()))
    assert feed(mc, req * (MAX_REJECTS_SENT + 5)) == []
    msgs = sent(mc)
    assert len(msgs) == MAX_REJECTS_SENT == mc.rejects_sent
    assert all(m == Extended(PEER_UT_METADATA, MetadataReject(0).encode()) for m in msgs)


def test_other_extension_ids_are_ignored_and_a_later_handshake_keeps_the_size() -> None:
    mc = ready()
    assert mc.receive_data(encode(Extended(77, b"whatever"))) == []
    assert mc.receive_data(peer_ext(size=999, m={"ut_pex": 5})) == []
    assert mc.metadata_size == len(INFO) and mc.can_request
    # turning ut_metadata off (id 0) withdraws the offer
    assert mc.receive_data(peer_ext(size=None, m={UT_METADATA: 0})) == [
        MetadataOffer(None, "libtorrent")]
    assert not mc.can_request
    with pytest.raises(LocalProtocolError):
        mc.request(0)


@pytest.mark.parametrize(("m", "size"), [({UT_METADATA: 3}, None), ({"ut_pex": 2}, len(INFO))])
def test_no_offer_without_ut_metadata_and_size(m: dict[str, int], size: int | None) -> None:
    mc = MetadataConnection(HASH, OURS)
    mc.receive_data(peer_handshake())
    assert mc.receive_data(peer_ext(size=size, m=m)) == [MetadataOffer(None, "libtorrent")]
    assert not mc.can_request
    with pytest.raises(LocalProtocolError):
        mc.request(0)


def _oversized_ext() -> bytes:
    body = bencoding.encode({b"m": {b"ut_metadata": 3}, b"metadata_size": MAX_METADATA_SIZE + 1})
    return encode(Extended(EXTENSION_HANDSHAKE_ID, body))


@pytest.mark.parametrize(
    ("stream", "why"),
    [
        (peer_handshake(info_hash=bytes(20)), "not ours"),
        (peer_handshake(reserved=RESERVED_NONE), "BEP 10"),
        (peer_handshake(peer_id=OURS), "connected to self"),
        (b"\x13BitTorrent protocoX", "handshake"),
        (peer_handshake() + _oversized_ext(), "metadata_size"),
        (peer_handshake() + encode(Extended(OUR_UT_METADATA, MetadataRequest(0).encode())),
         "before its extension handshake"),
        (peer_handshake() + b"\x7f\xff\xff\xff", "bound"),
        (peer_handshake() + (70 * 1024).to_bytes(4, "big") + b"\x14", "extended"),
    ],
)
@pytest.mark.parametrize("feed", FEEDS)
def test_hostile_streams_close_the_connection(stream: bytes, why: str, feed: Feed) -> None:
    mc = MetadataConnection(HASH, OURS)
    mc.data_to_send()
    with pytest.raises(RemoteProtocolError, match=why):
        feed(mc, stream)
    assert mc.state is MetadataConnState.CLOSED
    with pytest.raises(LocalProtocolError):
        mc.events()


def test_data_with_a_total_size_other_than_offered_is_refused() -> None:
    mc = ready()
    body = MetadataData(0, len(INFO) - 1, INFO[:METADATA_PIECE]).encode()
    with pytest.raises(RemoteProtocolError, match="total_size"):
        mc.receive_data(encode(Extended(OUR_UT_METADATA, body)))


def test_handshake_length_is_checked_as_it_arrives() -> None:
    mc = MetadataConnection(HASH, OURS)
    assert mc.receive_data(peer_handshake()[: HANDSHAKE_LENGTH - 1]) == []
    assert mc.state is MetadataConnState.AWAIT_HANDSHAKE
    with pytest.raises(RemoteProtocolError):
        MetadataConnection(HASH, OURS).receive_data(b"GET / HTTP/1.1\r\n")


def test_close_is_idempotent_and_requests_need_ready() -> None:
    mc = MetadataConnection(HASH, OURS)
    with pytest.raises(LocalProtocolError):
        mc.request(0)
    mc.close()
    mc.close()
    assert mc.state is MetadataConnState.CLOSED


@pytest.mark.parametrize("feed", FEEDS)
def test_handover_gives_the_peers_stream_without_its_metadata_messages(feed: Feed) -> None:
    mc = MetadataConnection(HASH, OURS)
    other_ext = encode(Extended(7, b"not one of ours"))  # an id we never offered: kept
    partial = encode(Have(9))[:5]  # a frame not whole yet
    stream = (peer_handshake() + encode(HaveAll()) + peer_ext() + b"\x00\x00\x00\x00"
              + peer_data(0) + encode(Have(3)) + other_ext + peer_data(2) + partial)
    feed(mc, stream)
    assert mc.state is MetadataConnState.READY
    # in stream order; keep-alives and ut_metadata out; the partial frame last
    assert mc.handover() == (peer_handshake() + encode(HaveAll()) + peer_ext()
                             + encode(Have(3)) + other_ext + partial)


@pytest.mark.parametrize("feed", FEEDS)
def test_with_our_dht_node_the_handshake_says_so_and_the_peers_port_is_handed_over(
        feed: Feed) -> None:
    """The download's DHT node runs while the fetch does: our handshake sets the DHT bit
    (as the workers' do), so a peer sends its PORT on the connection, and the worker
    that takes the connection over reads it (BEP 5)."""
    plain = MetadataConnection(HASH, OURS)
    assert parse_handshake(plain.data_to_send()[:HANDSHAKE_LENGTH]).reserved == RESERVED_OURS
    mc = MetadataConnection(HASH, OURS, dht=True)
    ours = parse_handshake(mc.data_to_send()[:HANDSHAKE_LENGTH])
    assert ours.reserved == RESERVED_DHT and ours.has_bit(DHT_BIT)
    stream = peer_handshake(reserved=RESERVED_DHT) + encode(Port(6882)) + peer_ext()
    feed(mc, stream)
    assert mc.handover() == stream


def test_handover_before_the_peers_handshakes_gives_what_came_of_them() -> None:
    mc = MetadataConnection(HASH, OURS)
    assert mc.handover() == b""  # our handshake went out; the worker reads the peer's
    mc.receive_data(peer_handshake()[:30])
    assert mc.handover() == peer_handshake()[:30]
    mc.receive_data(peer_handshake()[30:] + encode(HaveAll()))
    assert mc.state is MetadataConnState.AWAIT_EXTENSIONS  # its extension handshake to come
    assert mc.handover() == peer_handshake() + encode(HaveAll())


def test_no_handover_once_closed_or_after_too_much() -> None:
    mc = ready()
    # the largest bitfield taken before the metadata, then HAVEs past the bound:
    # the connection still works, but is dialled again rather than handed over
    big = encode(Bitfield(b"\xff" * (MAX_PIECES_BEFORE_METADATA // 8)))
    haves = b"".join(encode(Have(i)) for i in range(
        (MAX_HANDOVER_BYTES - len(big)) // 9 + 1))
    assert mc.receive_data(big + haves) == []
    assert mc.state is MetadataConnState.READY and mc.can_request
    assert mc.handover() is None
    closed = ready()
    closed.close()
    assert closed.handover() is None


# -- INTERESTED to a peer that has pieces ----------------------------------------------
@pytest.mark.parametrize("feed", FEEDS)
@pytest.mark.parametrize("announce", [
    encode(HaveAll()),
    encode(Have(5)),
    encode(Bitfield(b"\x00" * 40 + b"\x01")),  # one bit, in the last byte
], ids=["have_all", "have", "bitfield"])
def test_a_peer_announcing_a_piece_is_sent_interested_once(feed: Feed, announce: bytes) -> None:
    mc = ready(feed)
    assert not mc.interested
    feed(mc, announce + encode(Have(7)) + encode(HaveAll()))
    assert mc.interested
    assert sent(mc) == [Interested()]  # once, whatever follows
    assert mc.handover() is not None  # the stream is kept as before


@pytest.mark.parametrize("feed", FEEDS)
def test_a_peer_with_nothing_is_not_sent_interested(feed: Feed) -> None:
    mc = ready(feed)
    # an empty bitfield (the largest taken before the metadata), HAVE_NONE, an unchoke
    feed(mc, encode(Bitfield(bytes(MAX_PIECES_BEFORE_METADATA // 8))) + encode(HaveNone())
         + encode(Unchoke()))
    assert not mc.interested
    assert sent(mc) == []


def test_interested_follows_our_extension_handshake() -> None:
    """The peer's handshake and its HAVE_ALL in one read: our extension handshake goes
    out first, then INTERESTED."""
    mc = MetadataConnection(HASH, OURS)
    mc.data_to_send()  # our handshake
    mc.receive_data(peer_handshake() + encode(HaveAll()))
    ext, interested = sent(mc)
    assert isinstance(ext, Extended) and ext.ext_id == EXTENSION_HANDSHAKE_ID
    assert interested == Interested()


# --- BEP 52 hash messages (a v2 magnet's piece layers) -----------------------------

ROOT = bytes(range(32))


@pytest.mark.parametrize("feed", FEEDS)
def test_hash_requests_go_out_and_replies_come_back_as_events(feed: Feed) -> None:
    mc = ready(feed)
    req = HashRequest(ROOT, 0, 0, 4, 1)
    mc.request_hashes(req)
    assert sent(mc) == [req]
    reply = Hashes(ROOT, 0, 0, 4, 1, bytes(range(128)))
    reject = HashReject(ROOT, 0, 4, 4, 1)
    assert feed(mc, encode(reply) + encode(reject)) == [reply, reject]
    # the fetch's business: not in the stream a download would take over
    assert encode(reply) not in (mc.handover() or b"")


def test_a_peers_hash_requests_are_rejected_up_to_the_bound() -> None:
    mc = ready()
    req = HashRequest(ROOT, 0, 0, 2, 0)
    assert mc.receive_data(encode(req) * (MAX_REJECTS_SENT + 5)) == []
    rejects = sent(mc)
    assert rejects == [HashReject(ROOT, 0, 0, 2, 0)] * MAX_REJECTS_SENT


def test_a_hash_request_before_ready_is_a_local_error() -> None:
    mc = MetadataConnection(HASH, OURS)
    with pytest.raises(LocalProtocolError):
        mc.request_hashes(HashRequest(ROOT, 0, 0, 2, 0))


@pytest.mark.parametrize("stream", [
    frame(HASHES, ROOT + bytes(16) + bytes(31)),  # not whole hashes
    frame(HASHES, Hashes(ROOT, 0, 0, 4, 1, bytes(128)).payload()[:-32]),
], ids=["partial-hash", "one-short"])
def test_malformed_hashes_close_the_connection(stream: bytes) -> None:
    mc = ready()
    with pytest.raises(RemoteProtocolError):
        mc.receive_data(stream)
    assert mc.state is MetadataConnState.CLOSED


def test_hashes_before_the_extension_handshake_close_the_connection() -> None:
    mc = MetadataConnection(HASH, OURS)
    mc.data_to_send()
    with pytest.raises(RemoteProtocolError, match="before we asked"):
        mc.receive_data(peer_handshake() + encode(Hashes(ROOT, 0, 0, 2, 0, bytes(64))))
