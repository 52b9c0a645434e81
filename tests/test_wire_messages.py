"""Peer wire messages and the framer: round trips, chunking invariance, bounds, bad lengths.

The framer under test is the production one (``framing.next_frame`` over a
``ReceiveBuffer``, decoded through the message table), driven as
``PeerProtocol.next_event`` drives it; the whole receive path, handshake and
block fast path included, is tested in test_wire_peer.py and
test_receive_parity.py.
"""

from __future__ import annotations

import struct

import pytest
from helpers.framereader import FrameReader
from hypothesis import given, settings
from hypothesis import strategies as st

from torrent.errors import RemoteProtocolError
from torrent.wire.messages import (
    ALLOWED_FAST,
    BITFIELD,
    BLOCK_SIZE,
    CANCEL,
    CHOKE,
    EXTENDED,
    HASH_REJECT,
    HASH_REQUEST,
    HASHES,
    HAVE,
    HAVE_ALL,
    HAVE_NONE,
    INTERESTED,
    MAX_EXTENDED_LENGTH,
    MAX_HASHES_PER_REQUEST,
    MAX_PROOF_LAYERS,
    MAX_REQUEST_LENGTH,
    MAX_UNKNOWN_MESSAGE_LENGTH,
    MESSAGE_TYPES,
    NOT_INTERESTED,
    PIECE,
    PORT,
    REJECT,
    REQUEST,
    SUGGEST,
    UNCHOKE,
    AllowedFast,
    Bitfield,
    Cancel,
    Choke,
    Extended,
    Hashes,
    HashReject,
    HashRequest,
    Have,
    HaveAll,
    HaveNone,
    Interested,
    KeepAlive,
    LocalProtocolError,
    Message,
    NotInterested,
    Piece,
    Port,
    Reject,
    Request,
    Suggest,
    Unchoke,
    Unknown,
    decode,
    encode,
    frame,
    max_message_length,
    uncle_count,
)

NUM_PIECES = 100  # bitfield of 13 bytes, 4 spare bits
ROOT = bytes(range(32))  # a BEP 52 pieces root
HASHES6 = bytes(range(6 * 32))  # six 32-byte hashes


# One of every message kind, with the exact bytes BEP 3 prescribes.
CASES: list[tuple[Message, bytes]] = [
    (KeepAlive(), b"\x00\x00\x00\x00"),
    (Choke(), b"\x00\x00\x00\x01\x00"),
    (Unchoke(), b"\x00\x00\x00\x01\x01"),
    (Interested(), b"\x00\x00\x00\x01\x02"),
    (NotInterested(), b"\x00\x00\x00\x01\x03"),
    (Have(0x01020304), b"\x00\x00\x00\x05\x04\x01\x02\x03\x04"),
    (Bitfield(b"\xa5" * 12 + b"\xf0"), b"\x00\x00\x00\x0e\x05" + b"\xa5" * 12 + b"\xf0"),
    (Request(1, 16384, 16384), b"\x00\x00\x00\x0d\x06" + struct.pack(">III", 1, 16384, 16384)),
    (Piece(7, 32768, b"block-data"), b"\x00\x00\x00\x13\x07" + struct.pack(">II", 7, 32768)
     + b"block-data"),
    (Piece(2, 0, b""), b"\x00\x00\x00\x09\x07" + struct.pack(">II", 2, 0)),
    (Cancel(1, 16384, 16384), b"\x00\x00\x00\x0d\x08" + struct.pack(">III", 1, 16384, 16384)),
    (Port(6881), b"\x00\x00\x00\x03\x09\x1a\xe1"),
    # BEP 6 Fast extension
    (Suggest(0x01020304), b"\x00\x00\x00\x05\x0d\x01\x02\x03\x04"),
    (HaveAll(), b"\x00\x00\x00\x01\x0e"),
    (HaveNone(), b"\x00\x00\x00\x01\x0f"),
    (Reject(1, 16384, 16384), b"\x00\x00\x00\x0d\x10" + struct.pack(">III", 1, 16384, 16384)),
    (AllowedFast(1313), b"\x00\x00\x00\x05\x11\x00\x00\x05\x21"),
    # BEP 10: extension id, then the body
    (Extended(0, b"d1:md11:ut_metadatai1eee"),
     b"\x00\x00\x00\x1a\x14\x00d1:md11:ut_metadatai1eee"),
    (Extended(3, b""), b"\x00\x00\x00\x02\x14\x03"),
    # BEP 52: pieces root, base layer, index, length, proof layers (+ hashes for id 22)
    (HashRequest(ROOT, 2, 512, 512, 10), b"\x00\x00\x00\x31\x15" + ROOT
     + struct.pack(">IIII", 2, 512, 512, 10)),
    (HashReject(ROOT, 0, 4, 2, 1), b"\x00\x00\x00\x31\x17" + ROOT
     + struct.pack(">IIII", 0, 4, 2, 1)),
    # 4 hashes of a subtree 2 layers high, proof up 3 layers: 2 uncles
    (Hashes(ROOT, 1, 8, 4, 3, HASHES6), struct.pack(">IB", 1 + 48 + 6 * 32, 22) + ROOT
     + struct.pack(">IIII", 1, 8, 4, 3) + HASHES6),
    (Unknown(24, b"\x00\x01"), b"\x00\x00\x00\x03\x18\x00\x01"),
    (Unknown(200, b""), b"\x00\x00\x00\x01\xc8"),
]
STREAM = b"".join(raw for _, raw in CASES)
MESSAGES = [msg for msg, _ in CASES]


@pytest.mark.parametrize(("msg", "raw"), CASES, ids=[type(m).__name__ for m, _ in CASES])
def test_encode_and_decode_round_trip(msg: Message, raw: bytes) -> None:
    assert encode(msg) == raw
    if raw[3] != 0:  # everything but the keep-alive has an id and a body
        assert decode(raw[4], raw[5:]) == msg
        assert decode(raw[4], memoryview(raw)[5:]) == msg


def test_frame_reader_whole_bytewise_and_with_trailing_data() -> None:
    whole = FrameReader(NUM_PIECES)
    assert whole.feed(STREAM) == MESSAGES
    assert whole.buffered == 0

    bytewise = FrameReader(NUM_PIECES)
    got: list[Message] = []
    for i in range(len(STREAM)):
        # Copy each result: block views are only valid until the next feed.
        got += [_own(m) for m in bytewise.feed(STREAM[i:i + 1])]
    assert got == MESSAGES
    assert bytewise.buffered == 0

    trailing = FrameReader(NUM_PIECES)
    partial = encode(Piece(3, 0, b"x" * 100))[:50]
    assert trailing.feed(STREAM + partial) == MESSAGES
    assert trailing.buffered == 50
    assert trailing.feed(encode(Piece(3, 0, b"x" * 100))[50:]) == [Piece(3, 0, b"x" * 100)]
    assert trailing.buffered == 0


def test_feed_of_nothing_returns_nothing() -> None:
    reader = FrameReader(NUM_PIECES)
    assert reader.feed(b"") == []
    assert reader.feed(b"\x00\x00") == []
    assert reader.feed(b"") == []
    assert reader.feed(b"\x00\x00") == [KeepAlive()]


def _own(msg: Message) -> Message:
    """A copy of ``msg`` that does not point into a receive buffer."""
    if isinstance(msg, Piece):
        return Piece(msg.index, msg.begin, bytes(msg.data))
    return msg


message_strategy = st.one_of(
    st.sampled_from([KeepAlive(), Choke(), Unchoke(), Interested(), NotInterested()]),
    st.builds(Have, st.integers(0, NUM_PIECES - 1)),
    st.builds(Bitfield, st.binary(min_size=13, max_size=13)),
    st.builds(Request, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
              st.integers(0, 2**32 - 1)),
    st.builds(Cancel, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
              st.integers(0, 2**32 - 1)),
    st.builds(Piece, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
              st.binary(max_size=300)),
    st.builds(Port, st.integers(0, 65535)),
    st.sampled_from([HaveAll(), HaveNone()]),
    st.builds(Suggest, st.integers(0, 2**32 - 1)),
    st.builds(AllowedFast, st.integers(0, 2**32 - 1)),
    st.builds(Reject, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
              st.integers(0, 2**32 - 1)),
    st.builds(Extended, st.integers(0, 255), st.binary(max_size=300)),
    st.builds(HashRequest, st.binary(min_size=32, max_size=32), st.integers(0, 2**32 - 1),
              st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.builds(HashReject, st.binary(min_size=32, max_size=32), st.integers(0, 2**32 - 1),
              st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.builds(lambda root, base, index, length, proof, fill: Hashes(
        root, base, index, length, proof,
        bytes([fill]) * 32 * (length + uncle_count(length, proof))),
        st.binary(min_size=32, max_size=32), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
        st.integers(1, 40), st.integers(0, MAX_PROOF_LAYERS), st.integers(0, 255)),
    st.builds(Unknown, st.integers(PORT + 1, 255).filter(lambda i: i not in MESSAGE_TYPES),
              st.binary(max_size=50)),
)


@settings(max_examples=300, deadline=None)
@given(msgs=st.lists(message_strategy, max_size=20), data=st.data())
def test_frame_reader_random_splits_give_the_same_messages(
    msgs: list[Message], data: st.DataObject
) -> None:
    stream = b"".join(encode(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    reader = FrameReader(NUM_PIECES)
    got: list[Message] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        chunk = stream[prev:cut]
        # Hand in a mutable buffer, as a BufferedProtocol would.
        got += [_own(m) for m in reader.feed(bytearray(chunk))]
        prev = cut
    assert got == msgs
    assert reader.buffered == 0
    # encode(decode(b)) == b for canonical input
    assert b"".join(encode(m) for m in got) == stream


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_frame_reader_never_raises_anything_but_remote_protocol_error(junk: bytes) -> None:
    reader = FrameReader(NUM_PIECES)
    try:
        reader.feed(junk)
    except RemoteProtocolError:
        pass
    assert reader.buffered <= max_message_length(NUM_PIECES) + 4


def test_oversized_prefix_rejected_from_the_four_prefix_bytes_alone() -> None:
    too_big = max_message_length(NUM_PIECES) + 1
    reader = FrameReader(NUM_PIECES)
    with pytest.raises(RemoteProtocolError, match="length prefix"):
        reader.feed(struct.pack(">I", too_big))
    # ... also when the prefix trickles in one byte at a time
    reader = FrameReader(NUM_PIECES)
    prefix = struct.pack(">I", 2**32 - 1)
    for b in prefix[:3]:
        assert reader.feed(bytes([b])) == []
    with pytest.raises(RemoteProtocolError, match="length prefix"):
        reader.feed(prefix[3:])


def test_prefix_at_the_bound_is_buffered_not_rejected() -> None:
    limit = max_message_length(NUM_PIECES)
    assert limit == 1 + MAX_UNKNOWN_MESSAGE_LENGTH
    reader = FrameReader(NUM_PIECES)
    assert reader.feed(struct.pack(">IB", limit, 200) + b"x" * 10) == []
    assert reader.buffered == 15


def test_max_message_length_grows_with_a_huge_bitfield() -> None:
    pieces = 16 * 1024 * 1024  # a 2 MiB bitfield
    assert max_message_length(pieces) == 1 + pieces // 8
    assert max_message_length(1) == 1 + MAX_UNKNOWN_MESSAGE_LENGTH


@pytest.mark.parametrize(
    ("msg_id", "length"),
    [
        (PIECE, 9 + MAX_REQUEST_LENGTH + 1),  # a block bigger than any we request
        (BITFIELD, 1 + 13 + 1),  # longer than 100 pieces need
        (HAVE, 6),
        (CHOKE, 2),
        (REQUEST, 14),
        (SUGGEST, 6),
        (HAVE_ALL, 2),
        (HAVE_NONE, 2),
        (REJECT, 14),
        (ALLOWED_FAST, 6),
        (EXTENDED, 1 + MAX_EXTENDED_LENGTH + 1),  # its own bound, not the unknown ids' one
        (HASH_REQUEST, 1 + 48 + 1),
        (HASH_REJECT, 1 + 48 + 1),
        # the most hashes a reply can carry: the bound, and the proof of a 1-hash subtree
        (HASHES, 1 + 48 + 32 * (MAX_HASHES_PER_REQUEST + MAX_PROOF_LAYERS + 1) + 1),
    ],
)
def test_per_id_bound_rejected_from_the_id_byte(msg_id: int, length: int) -> None:
    # split after the id, so nothing of the body has been seen
    for chunks in ([struct.pack(">IB", length, msg_id)],
                   [struct.pack(">I", length), bytes([msg_id])]):
        reader = FrameReader(NUM_PIECES)
        with pytest.raises(RemoteProtocolError, match="at most"):
            for chunk in chunks:
                reader.feed(chunk)


def test_largest_block_is_accepted() -> None:
    block = bytes(range(256)) * (BLOCK_SIZE // 256)
    reader = FrameReader(NUM_PIECES)
    assert reader.feed(encode(Piece(5, 0, block))) == [Piece(5, 0, block)]


@pytest.mark.parametrize(
    ("msg_id", "payload", "needs"),
    [
        (CHOKE, b"\x00", "0 bytes"),
        (UNCHOKE, b"\x00", "0 bytes"),
        (INTERESTED, b"\x00", "0 bytes"),
        (NOT_INTERESTED, b"\x00\x00", "0 bytes"),
        (HAVE, b"\x00\x00\x00", "4 bytes"),
        (HAVE, b"\x00" * 5, "4 bytes"),
        (REQUEST, b"\x00" * 11, "12 bytes"),
        (REQUEST, b"\x00" * 13, "12 bytes"),
        (CANCEL, b"\x00" * 8, "12 bytes"),
        (PORT, b"\x00", "2 bytes"),
        (PIECE, b"\x00" * 7, "at least 8"),
        (SUGGEST, b"\x00" * 3, "4 bytes"),
        (HAVE_ALL, b"\x00", "0 bytes"),
        (HAVE_NONE, b"\x00", "0 bytes"),
        (REJECT, b"\x00" * 11, "12 bytes"),
        (ALLOWED_FAST, b"\x00" * 5, "4 bytes"),
        (EXTENDED, b"", "without an extension id"),
        (HASH_REQUEST, b"\x00" * 47, "48 bytes"),
        (HASH_REJECT, b"\x00" * 47, "48 bytes"),
        (HASHES, b"\x00" * 47, "at least 48"),
    ],
)
def test_wrong_payload_length_per_id(msg_id: int, payload: bytes, needs: str) -> None:
    with pytest.raises(RemoteProtocolError, match=needs):
        decode(msg_id, payload)
    # and through the stream reader (a too-long one already fails at its id byte)
    with pytest.raises(RemoteProtocolError, match="message"):
        FrameReader(NUM_PIECES).feed(frame(msg_id, payload))


def test_piece_data_is_a_view_not_a_copy() -> None:
    reader = FrameReader(NUM_PIECES)
    (msg,) = reader.feed(encode(Piece(1, 0, b"abcd")))
    assert isinstance(msg, Piece)
    assert isinstance(msg.data, memoryview)
    # the view tracks the receive buffer: hence the ownership rule
    reader.rb.buf[reader.rb.end - 1] = ord("z")
    assert bytes(msg.data) == b"abcz"


def test_encode_rejects_a_non_message() -> None:
    with pytest.raises(LocalProtocolError):
        encode(Message())


def test_every_table_row_round_trips_and_has_a_case() -> None:
    """A new row in MESSAGE_TYPES without a case here fails: the table is the list of kinds."""
    assert set(MESSAGE_TYPES.values()) <= {type(m) for m in MESSAGES}
    assert all(cls.ID == msg_id for msg_id, cls in MESSAGE_TYPES.items())


def test_extended_has_its_own_bound_below_the_unknown_ids_one() -> None:
    reader = FrameReader(NUM_PIECES)
    body = b"x" * (MAX_EXTENDED_LENGTH - 1)
    assert reader.feed(encode(Extended(1, body))) == [Extended(1, body)]
    assert reader.framer.bounds[EXTENDED] == 1 + MAX_EXTENDED_LENGTH
    assert reader.framer.bounds[24] == 1 + MAX_UNKNOWN_MESSAGE_LENGTH
    assert MAX_EXTENDED_LENGTH < MAX_UNKNOWN_MESSAGE_LENGTH


def test_extended_body_is_a_copy() -> None:
    reader = FrameReader(NUM_PIECES)
    (msg,) = reader.feed(encode(Extended(2, b"abcd")))
    assert isinstance(msg, Extended) and isinstance(msg.body, bytes)
    reader.rb.buf[reader.rb.end - 1] = ord("z")
    assert msg.body == b"abcd"


def test_extended_id_must_fit_a_byte() -> None:
    with pytest.raises(LocalProtocolError, match="one byte"):
        encode(Extended(256, b""))


# --- BEP 52 hash messages ------------------------------------------------------------


def _hashes_payload(length: int, proof: int, count: int) -> bytes:
    return ROOT + struct.pack(">IIII", 3, 0, length, proof) + b"\x11" * 32 * count


@pytest.mark.parametrize(
    ("length", "proof", "uncles"),
    [(1, 0, 1), (2, 0, 0), (2, 1, 1), (4, 1, 0), (4, 2, 1), (4, 5, 4), (512, 9, 1),
     (512, 8, 0), (3, 2, 1), (8192, 48, 36)],
)
def test_uncle_count_is_libtorrents(length: int, proof: int, uncles: int) -> None:
    # libtorrent: max(0, proof_layers - log2(merkle_num_leafs(count)) + 1)
    assert uncle_count(length, proof) == uncles
    decoded = decode(HASHES, _hashes_payload(length, proof, length + uncles))
    assert isinstance(decoded, Hashes) and len(decoded.uncles) == 32 * uncles
    assert len(decoded.base) == 32 * length


@pytest.mark.parametrize(("length", "proof", "count", "why"), [
    (4, 2, 4, "need"),  # one uncle short
    (4, 2, 6, "need"),  # one too many
    (0, 0, 0, "at most"),  # no hashes asked for
    (MAX_HASHES_PER_REQUEST + 1, 0, 0, "at most"),
    (2, MAX_PROOF_LAYERS + 1, 0, "at most"),
])
def test_hashes_with_a_wrong_count_or_over_a_bound_are_refused(
        length: int, proof: int, count: int, why: str) -> None:
    with pytest.raises(RemoteProtocolError, match=why):
        decode(HASHES, _hashes_payload(length, proof, count))


def test_hashes_not_a_whole_number_of_hashes_is_refused() -> None:
    with pytest.raises(RemoteProtocolError, match="need"):
        decode(HASHES, _hashes_payload(2, 0, 2) + b"\x00")


def test_the_largest_hashes_reply_is_framed_and_one_byte_more_is_not() -> None:
    proof = MAX_PROOF_LAYERS
    n = MAX_HASHES_PER_REQUEST + uncle_count(MAX_HASHES_PER_REQUEST, proof)
    msg = Hashes(ROOT, 0, 0, MAX_HASHES_PER_REQUEST, proof, b"\x22" * 32 * n)
    assert FrameReader(NUM_PIECES).feed(encode(msg)) == [msg]
    # a one-hash subtree proved up MAX_PROOF_LAYERS is the most uncles: also framed
    small = Hashes(ROOT, 0, 0, 1, proof, b"\x33" * 32 * (1 + proof + 1))
    assert FrameReader(NUM_PIECES).feed(encode(small)) == [small]


def test_a_hash_request_for_a_million_hashes_decodes_without_allocating_them() -> None:
    """The request is 48 bytes whatever it asks for: refusing it is the answerer's job."""
    msg = decode(HASH_REQUEST, ROOT + struct.pack(">IIII", 0, 0, 10**6, 2**32 - 1))
    assert msg == HashRequest(ROOT, 0, 0, 10**6, 2**32 - 1)
