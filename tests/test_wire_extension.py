"""BEP 10 extension handshake, BEP 9 ut_metadata, BEP 11 ut_pex and BEP 6 allowed-fast sets.

Round trips, the examples and test vectors the BEPs publish, a hostile case
for every bound, and Hypothesis fuzzing that holds every decoder to raising
nothing but RemoteProtocolError.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

import pytest
from helpers.framereader import FrameReader
from hypothesis import given, settings
from hypothesis import strategies as st

from torrent import bencoding
from torrent.errors import RemoteProtocolError
from torrent.peeraddr import canonical_ip
from torrent.wire.extension import (
    EXTENSION_HANDSHAKE_ID,
    MAX_CLIENT_NAME_LENGTH,
    MAX_EXTENSION_NAMES,
    MAX_HANDSHAKE_LENGTH,
    MAX_METADATA_HEADER_LENGTH,
    MAX_METADATA_PIECES,
    MAX_METADATA_SIZE,
    MAX_PEX_ADDED,
    MAX_PEX_DROPPED,
    MAX_PEX_LENGTH,
    MAX_REQQ,
    METADATA_PIECE,
    OUR_EXTENSION_IDS,
    OUR_EXTENSION_NAMES,
    PEX_ENCRYPTION,
    PEX_HOLEPUNCH,
    PEX_REACHABLE,
    PEX_SEED,
    PEX_UTP,
    UT_METADATA,
    UT_PEX,
    ExtensionHandshake,
    MetadataData,
    MetadataReject,
    MetadataRequest,
    Pex,
    PexPeer,
    decode_metadata_message,
    merge_peer_ids,
    metadata_data,
    metadata_piece_count,
    metadata_piece_length,
)
from torrent.wire.fastext import (
    ALLOWED_FAST_COUNT,
    MAX_ALLOWED_FAST,
    MAX_SUGGESTED,
    allowed_fast_set,
)
from torrent.wire.handshake import (
    DHT_BIT,
    EXTENSION_BIT,
    FAST_BIT,
    RESERVED_NONE,
    RESERVED_OURS,
    encode_handshake,
    parse_handshake,
    reserved_bits,
)
from torrent.wire.messages import (
    MAX_EXTENDED_LENGTH,
    Extended,
    LocalProtocolError,
    decode,
    encode,
)

b = bencoding.encode


# --- reserved bits --------------------------------------------------------------------
def test_reserved_ours_announces_bep10_and_fast_but_not_dht() -> None:
    hs = parse_handshake(encode_handshake(b"i" * 20, b"p" * 20, RESERVED_OURS))
    assert hs.supports_extensions and hs.supports_fast and not hs.supports_dht
    assert RESERVED_OURS == bytes([0, 0, 0, 0, 0, 0x10, 0, 0x04])
    # the default handshake is unchanged: no bits until the connection speaks them
    assert encode_handshake(b"i" * 20, b"p" * 20)[20:28] == RESERVED_NONE


def test_reserved_bits() -> None:
    assert reserved_bits() == RESERVED_NONE
    assert reserved_bits(DHT_BIT, FAST_BIT, EXTENSION_BIT) == bytes([0, 0, 0, 0, 0, 0x10, 0, 0x05])
    for bad in ((8, 1), (0, 0), (0, 0x100), (-1, 1)):
        with pytest.raises(LocalProtocolError):
            reserved_bits(bad)


# --- BEP 10 extension handshake ------------------------------------------------------------
def test_handshake_round_trip() -> None:
    hs = ExtensionHandshake(m={UT_METADATA: 1, UT_PEX: 2, "lt_donthave": 0}, v="fasttorrent 0.1.0",
                            p=6881, reqq=500, yourip="203.0.113.7", metadata_size=31235)
    assert ExtensionHandshake.decode(hs.encode()) == hs
    v6 = ExtensionHandshake(yourip="2001:db8::7")
    assert ExtensionHandshake.decode(v6.encode()) == v6
    own = ExtensionHandshake(yourip="::1", ipv4="198.51.100.4", ipv6="2001:db8::4")
    body = own.encode()
    assert bencoding.decode(body)[b"ipv6"] == ipaddress.IPv6Address("2001:db8::4").packed
    assert bencoding.decode(body)[b"ipv4"] == bytes((198, 51, 100, 4))
    assert ExtensionHandshake.decode(body) == own
    assert ExtensionHandshake.decode(ExtensionHandshake().encode()) == ExtensionHandshake()


def test_handshake_as_libtorrent_sends_it() -> None:
    body = b({b"e": 0, b"m": {b"lt_donthave": 7, b"share_mode": 8, b"upload_only": 3,
                              b"ut_holepunch": 4, b"ut_metadata": 2, b"ut_pex": 1},
              b"metadata_size": 31235, b"p": 6881, b"reqq": 2000, b"upload_only": 0,
              b"v": b"libtorrent/2.0.9.0", b"yourip": b"\x7f\x00\x00\x01",
              b"complete_ago": 5, b"ipv6": b"\x00" * 16})
    hs = ExtensionHandshake.decode(body)
    assert hs.m[UT_METADATA] == 2 and hs.m[UT_PEX] == 1 and hs.m["ut_holepunch"] == 4
    assert (hs.v, hs.p, hs.reqq, hs.yourip, hs.metadata_size) == (
        "libtorrent/2.0.9.0", 6881, 2000, "127.0.0.1", 31235)
    assert hs.ipv6 == "::" and hs.ipv4 is None


def test_handshake_with_nothing_and_with_unknown_keys() -> None:
    assert ExtensionHandshake.decode(b"de") == ExtensionHandshake()
    hs = ExtensionHandshake.decode(b(
        {b"m": {b"ut_pex": 3}, b"xx_future": [1, {b"deep": [b"x"]}], b"e": 1}))
    assert hs == ExtensionHandshake(m={UT_PEX: 3})


def test_handshake_size_bound() -> None:
    filler = b"x" * MAX_HANDSHAKE_LENGTH
    with pytest.raises(RemoteProtocolError, match="extension handshake; the bound"):
        ExtensionHandshake.decode(b({b"m": {}, b"zz": filler}))
    # just under the bound is fine
    ok = b({b"m": {b"ut_pex": 1}, b"zz": b"x" * (MAX_HANDSHAKE_LENGTH - 40)})
    assert len(ok) <= MAX_HANDSHAKE_LENGTH
    assert ExtensionHandshake.decode(ok).m == {UT_PEX: 1}


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"", "not valid bencode"),
        (b"d1:mde", "not valid bencode"),
        (b"d1:md6:ut_pexi1eee" + b"x", "not valid bencode"),  # trailing data
        (b"li1ee", "not a dict"),
        (b"d1:mli1eee", "'m' that is not a dict"),
        (b"d1:md6:ut_pexi256eee", "ut_pex.*ids are integers 0..255"),
        (b"d1:md6:ut_pexi-1eee", "ut_pex.*0..255"),
        (b"d1:md6:ut_pex1:1ee", "ut_pex.*0..255"),
        (b"d1:md6:ut_pexli1eeee", "ut_pex.*0..255"),
        (b"d1:md3:zzzi999eee", "zzz.*0..255"),  # unknown names still need real ids
        (b"d1:pi70000ee", "listen port 70000"),
        (b"d1:pi-1ee", "listen port -1"),
        (b"d1:p4:6881e", "'p' is not an integer"),
        (b"d4:reqq3:500e", "'reqq' is not an integer"),
        (b"d6:yourip5:abcdee", "yourip"),
        (b"d6:youripi1ee", "yourip"),
        (b"d6:yourip17:" + b"x" * 17 + b"e", "yourip"),
        (b"d4:ipv416:" + b"x" * 16 + b"e", "'ipv4'.*4-byte"),  # a v6 address under ipv4
        (b"d4:ipv43:xyze", "'ipv4'.*4-byte"),
        (b"d4:ipv4i1ee", "'ipv4'"),
        (b"d4:ipv64:abcde", "'ipv6'.*16-byte"),  # a v4 address under ipv6
        (b"d4:ipv615:" + b"x" * 15 + b"e", "'ipv6'.*16-byte"),  # truncated
        (b"d4:ipv617:" + b"x" * 17 + b"e", "'ipv6'.*16-byte"),
        (b"d4:ipv6lee", "'ipv6' of \\[\\]"),
        (b"d13:metadata_sizei-1ee", "metadata_size -1"),
        (b"d13:metadata_sizei%dee" % (MAX_METADATA_SIZE + 1), "metadata_size"),
        (b"d13:metadata_size2:10e", "not an integer"),
    ],
)
def test_handshake_hostile(body: bytes, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        ExtensionHandshake.decode(body)


def test_handshake_with_too_many_extensions() -> None:
    m = {b"x%03d" % i: 0 for i in range(MAX_EXTENSION_NAMES + 1)}
    with pytest.raises(RemoteProtocolError, match=f"{MAX_EXTENSION_NAMES + 1} extensions"):
        ExtensionHandshake.decode(b({b"m": m}))
    m.popitem()
    assert len(ExtensionHandshake.decode(b({b"m": m})).m) == MAX_EXTENSION_NAMES


def test_handshake_lenient_fields() -> None:
    assert ExtensionHandshake.decode(b"d4:reqqi1000000000ee").reqq == MAX_REQQ
    assert ExtensionHandshake.decode(b"d4:reqqi0ee").reqq is None
    assert ExtensionHandshake.decode(b"d4:reqqi-5ee").reqq is None
    assert ExtensionHandshake.decode(b"d1:pi0ee").p is None
    assert ExtensionHandshake.decode(b"d13:metadata_sizei0ee").metadata_size is None
    hs = ExtensionHandshake.decode(b({b"v": b"\xff\xfeclient" + b"y" * 1000}))
    assert hs.v is not None and len(hs.v) == MAX_CLIENT_NAME_LENGTH and hs.v[0] == "\ufffd"
    assert ExtensionHandshake.decode(b"d1:vi5ee").v is None  # display only: ignored
    # a name that is not UTF-8 cannot be one we speak: left out, not an error
    hs = ExtensionHandshake.decode(b({b"m": {b"\xff\xff": 5, b"ut_pex": 1}}))
    assert hs.m == {UT_PEX: 1}


@pytest.mark.parametrize(
    "hs",
    [
        ExtensionHandshake(m={"x": 256}),
        ExtensionHandshake(p=0),
        ExtensionHandshake(reqq=MAX_REQQ + 1),
        ExtensionHandshake(yourip="not an ip"),
        ExtensionHandshake(ipv4="2001:db8::1"),
        ExtensionHandshake(ipv6="192.0.2.1"),
        ExtensionHandshake(ipv6="not an ip"),
        ExtensionHandshake(metadata_size=MAX_METADATA_SIZE + 1),
    ],
)
def test_handshake_encode_refuses_our_own_bugs(hs: ExtensionHandshake) -> None:
    with pytest.raises(LocalProtocolError):
        hs.encode()


def test_our_extension_ids() -> None:
    assert set(OUR_EXTENSION_IDS) == {UT_METADATA, UT_PEX}
    ids = list(OUR_EXTENSION_IDS.values())
    assert len(set(ids)) == len(ids) and all(1 <= i <= 255 for i in ids)
    assert EXTENSION_HANDSHAKE_ID not in ids
    assert {OUR_EXTENSION_NAMES[i]: i for i in ids} == dict(OUR_EXTENSION_IDS)
    # what we announce is what a peer reads back
    ours = ExtensionHandshake(m=dict(OUR_EXTENSION_IDS))
    assert ExtensionHandshake.decode(ours.encode()).m == OUR_EXTENSION_IDS


def test_merge_peer_ids_is_additive_and_zero_disables() -> None:
    ids = merge_peer_ids({}, {UT_METADATA: 3, UT_PEX: 1, "lt_donthave": 7})
    assert ids == {UT_METADATA: 3, UT_PEX: 1}  # names we do not speak are not kept
    ids = merge_peer_ids(ids, {UT_PEX: 0})  # BEP 10: "d11:ut_pexi0ee" turns it off
    assert ids == {UT_METADATA: 3}
    ids = merge_peer_ids(ids, {UT_PEX: 9})  # and a later one turns it back on
    assert ids == {UT_METADATA: 3, UT_PEX: 9}
    assert merge_peer_ids(ids, {}) == ids  # absent names keep their ids
    assert merge_peer_ids({}, {UT_PEX: 0}) == {}


def test_handshake_through_the_framer() -> None:
    ours = ExtensionHandshake(m=dict(OUR_EXTENSION_IDS), reqq=2000, metadata_size=40000)
    frame = encode(Extended(EXTENSION_HANDSHAKE_ID, ours.encode()))
    (msg,) = FrameReader(10).feed(frame)
    assert isinstance(msg, Extended) and msg.ext_id == EXTENSION_HANDSHAKE_ID
    assert ExtensionHandshake.decode(msg.body) == ours


# --- BEP 9 ut_metadata ---------------------------------------------------------------------
INFO = bytes(range(256)) * 157 + b"tail"  # 40196 bytes: pieces of 16384, 16384, 7428


def test_metadata_pieces() -> None:
    assert metadata_piece_count(len(INFO)) == 3
    assert [metadata_piece_length(len(INFO), i) for i in range(3)] == [16384, 16384, 7428]
    assert metadata_piece_count(METADATA_PIECE) == 1
    assert metadata_piece_count(METADATA_PIECE + 1) == 2
    assert MAX_METADATA_PIECES == metadata_piece_count(MAX_METADATA_SIZE)
    with pytest.raises(LocalProtocolError):
        metadata_piece_length(len(INFO), 3)


def test_metadata_served_pieces_reassemble_and_round_trip() -> None:
    got = b""
    for piece in range(metadata_piece_count(len(INFO))):
        msg = metadata_data(INFO, piece)
        back = decode_metadata_message(msg.encode(), metadata_size=len(INFO))
        assert back == msg
        assert isinstance(back, MetadataData)
        got += back.data
    assert got == INFO
    assert hashlib.sha1(got).digest() == hashlib.sha1(INFO).digest()
    with pytest.raises(LocalProtocolError):
        metadata_data(INFO, 3)  # out of range: the caller answers with a reject


def test_metadata_bep9_examples() -> None:
    assert decode_metadata_message(b"d8:msg_typei0e5:piecei0ee") == MetadataRequest(0)
    assert MetadataRequest(0).encode() == b"d8:msg_typei0e5:piecei0ee"
    assert decode_metadata_message(b"d8:msg_typei2e5:piecei0ee") == MetadataReject(0)
    data = b"x" * 3425
    msg = decode_metadata_message(b"d8:msg_typei1e5:piecei0e10:total_sizei3425ee" + data)
    assert msg == MetadataData(0, 3425, data)
    assert MetadataReject(7).encode() == b"d8:msg_typei2e5:piecei7ee"


def test_metadata_data_whose_payload_looks_like_bencode() -> None:
    # the dict ends where the scanner says, whatever the raw bytes behind it are
    data = b"d1:ae" + b"e" * 3
    body = b"d8:msg_typei1e5:piecei0e10:total_sizei8ee" + data
    assert decode_metadata_message(body) == MetadataData(0, 8, data)


def test_metadata_unknown_msg_type_is_ignored() -> None:
    assert decode_metadata_message(b"d8:msg_typei3e5:piecei0ee") is None
    assert decode_metadata_message(b"d8:msg_typei99ee") is None  # needs no piece


def _data(piece: int, total: int, n: int) -> bytes:
    return b({b"msg_type": 1, b"piece": piece, b"total_size": total}) + b"m" * n


@pytest.mark.parametrize(
    ("body", "size", "match"),
    [
        # a piece index out of range for total_size
        (_data(3, 40196, 100), None, "piece 3; metadata of 40196 bytes has pieces 0..2"),
        # data longer than 16 KiB, or not what BEP 9 says the piece is
        (_data(0, 40196, METADATA_PIECE + 1), None, "16385 bytes for metadata piece 0"),
        (_data(0, 40196, METADATA_PIECE - 1), None, "16383 bytes for metadata piece 0"),
        (_data(2, 40196, 7429), None, "it is 7428 bytes long"),
        (_data(0, 10, 0), None, "0 bytes for metadata piece 0"),
        # total_size lies: out of range, or not what the handshake said
        (_data(0, 0, 0), None, "total_size 0"),
        (_data(0, MAX_METADATA_SIZE + 1, 16384), None, "total_size"),
        (_data(0, 3425, 3425), 3426, "total_size 3425, but the metadata is 3426"),
        # piece indices no metadata can have
        (b"d8:msg_typei0e5:piecei%dee" % MAX_METADATA_PIECES, None, "pieces 0..1919"),
        (b"d8:msg_typei0e5:piecei-1ee", None, "piece -1"),
        (b"d8:msg_typei2e5:piecei99999999999ee", None, "piece 99999999999"),
        # missing or mistyped keys
        (b"d5:piecei0ee", None, "without a msg_type"),
        (b"d8:msg_type1:0e", None, "'msg_type' is not an integer"),
        (b"d8:msg_typei0ee", None, "without a piece"),
        (b"d8:msg_typei0e5:piece1:0e", None, "'piece' is not an integer"),
        (b"d8:msg_typei1e5:piecei0ee", None, "without total_size"),
        (b"d8:msg_typei1e5:piecei0e10:total_size1:5e", None, "'total_size' is not"),
        # shapes
        (b"d8:msg_typei0e5:piecei0eexyz", None, "request with 3 bytes after its dict"),
        (b"d8:msg_typei2e5:piecei0eex", None, "reject with 1 bytes after"),
        (b"li0ee", None, "not a dict"),
        (b"", None, "valid bencoded dict"),
        (b"d8:msg_typei0e5:piecei0e", None, "valid bencoded dict"),  # truncated
        (b"xyz", None, "valid bencoded dict"),
        (b"d8:msg_typei0e5:piecei0e1:z%d:" % 2000 + b"z" * 2000 + b"e", None, "bound of 1024"),
        (_data(0, 40196, METADATA_PIECE) + b"x" * MAX_METADATA_HEADER_LENGTH, None,
         "-byte ut_metadata message; the bound"),
    ],
)
def test_metadata_hostile(body: bytes, size: int | None, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        decode_metadata_message(body, metadata_size=size)


@pytest.mark.parametrize(
    "msg",
    [
        MetadataRequest(-1),
        MetadataRequest(MAX_METADATA_PIECES),
        MetadataReject(MAX_METADATA_PIECES),
        MetadataData(0, 10, b"x" * 11),
        MetadataData(1, 10, b""),
        MetadataData(0, 0, b""),
    ],
)
def test_metadata_encode_refuses_our_own_bugs(msg: Any) -> None:
    with pytest.raises(LocalProtocolError):
        msg.encode()


def test_largest_metadata_message_fits_the_extended_bound() -> None:
    last = MAX_METADATA_PIECES - 1
    msg = MetadataData(0, MAX_METADATA_SIZE, b"q" * METADATA_PIECE).encode()
    assert 1 + len(msg) <= MAX_EXTENDED_LENGTH
    assert 1 + len(MetadataRequest(last).encode()) <= MAX_EXTENDED_LENGTH


# --- BEP 11 ut_pex ---------------------------------------------------------------------------
def _v4(ip: str, port: int) -> bytes:
    return ipaddress.IPv4Address(ip).packed + port.to_bytes(2, "big")


def _v6(ip: str, port: int) -> bytes:
    return ipaddress.IPv6Address(ip).packed + port.to_bytes(2, "big")


def test_pex_flags_are_bep11s() -> None:
    assert (PEX_ENCRYPTION, PEX_SEED, PEX_UTP, PEX_HOLEPUNCH, PEX_REACHABLE) == (
        0x01, 0x02, 0x04, 0x08, 0x10)


def test_pex_round_trip_v4_and_v6() -> None:
    pex = Pex(
        added=(PexPeer("10.0.0.1", 6881, PEX_SEED | PEX_REACHABLE), PexPeer("10.0.0.2", 1),
               PexPeer("2001:db8::1", 51413, PEX_UTP)),
        dropped=(("192.0.2.9", 65535), ("2001:db8::2", 6881)),
    )
    body = pex.encode()
    assert Pex.decode(body) == pex
    top = bencoding.decode(body)
    assert top[b"added"] == _v4("10.0.0.1", 6881) + _v4("10.0.0.2", 1)
    assert top[b"added.f"] == bytes([PEX_SEED | PEX_REACHABLE, 0])
    assert top[b"added6"] == _v6("2001:db8::1", 51413)
    assert top[b"added6.f"] == bytes([PEX_UTP])
    assert top[b"dropped"] == _v4("192.0.2.9", 65535)
    assert top[b"dropped6"] == _v6("2001:db8::2", 6881)
    # an IPv4-only message has no v6 keys, as libtorrent's peers expect
    assert set(bencoding.decode(Pex(added=(PexPeer("10.0.0.1", 1),)).encode())) == {
        b"added", b"added.f", b"dropped"}


def test_pex_as_libtorrent_sends_it() -> None:
    body = b({b"added": _v4("198.51.100.1", 6881), b"added.f": b"\x12",
              b"added6": b"", b"added6.f": b"", b"dropped": b"", b"dropped6": b""})
    assert Pex.decode(body) == Pex(added=(PexPeer("198.51.100.1", 6881, 0x12),))


def test_pex_empty_and_flagless() -> None:
    assert Pex.decode(b"de") == Pex()
    assert Pex.decode(b({b"added": _v4("10.1.1.1", 80)})) == Pex(added=(PexPeer("10.1.1.1", 80),))
    assert Pex.decode(b({b"xx": 1, b"dropped": _v4("10.1.1.1", 80)})).dropped == (
        ("10.1.1.1", 80),)


def test_pex_flood_takes_the_first_50_and_counts_the_rest() -> None:
    added = b"".join(_v4(f"10.{i >> 8}.{i & 255}.1", 6881) for i in range(5000))
    dropped = b"".join(_v4(f"11.{i >> 8}.{i & 255}.1", 6881) for i in range(3000))
    body = b({b"added": added, b"added.f": b"\x02" * 5000, b"dropped": dropped})
    assert len(body) <= MAX_PEX_LENGTH
    pex = Pex.decode(body)
    assert len(pex.added) == MAX_PEX_ADDED and len(pex.dropped) == MAX_PEX_DROPPED
    assert pex.added[0] == PexPeer("10.0.0.1", 6881, PEX_SEED)
    assert pex.added[-1] == PexPeer("10.0.49.1", 6881, PEX_SEED)
    assert pex.ignored == (5000 - MAX_PEX_ADDED) + (3000 - MAX_PEX_DROPPED)


def test_pex_50_is_for_v4_and_v6_together() -> None:
    body = b({b"added": b"".join(_v4(f"10.0.0.{i}", 1) for i in range(1, 41)),
              b"added6": b"".join(_v6(f"2001:db8::{i:x}", 1) for i in range(1, 41))})
    pex = Pex.decode(body)
    assert len(pex.added) == MAX_PEX_ADDED
    assert sum(":" in p.ip for p in pex.added) == MAX_PEX_ADDED - 40
    assert pex.ignored == 30


def test_pex_duplicates_and_port_zero_are_left_out() -> None:
    body = b({b"added": _v4("10.0.0.1", 1) * 3 + _v4("10.0.0.2", 0) + _v4("10.0.0.3", 3),
              b"dropped": _v4("10.0.0.9", 9) * 2})
    pex = Pex.decode(body)
    assert pex.added == (PexPeer("10.0.0.1", 1), PexPeer("10.0.0.3", 3))
    assert pex.dropped == (("10.0.0.9", 9),)
    assert pex.ignored == 4


def test_pex_our_own_address_is_just_data_here() -> None:
    # the connection's owner leaves itself out; the codec does not know who "we" are
    body = b({b"added": _v4("127.0.0.1", 6881)})
    assert Pex.decode(body).added == (PexPeer("127.0.0.1", 6881),)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b({b"added": b"x" * 13}), "'added': a compact IPv4 peer list of 13 bytes is not a "
                                   "multiple of 6"),
        (b({b"added6": b"x" * 17}), "'added6': a compact IPv6 peer list of 17 bytes is not a "
                                    "multiple of 18"),
        (b({b"dropped": b"x" * 5}), "'dropped': a compact IPv4 peer list of 5 bytes"),
        (b({b"dropped6": b"x" * 19}), "'dropped6': a compact IPv6 peer list of 19 bytes"),
        # a whole IPv6 entry and a truncated one
        (b({b"added6": b"x" * 35}), "'added6': a compact IPv6 peer list of 35 bytes"),
        (b({b"added": _v4("10.0.0.1", 1) * 2, b"added.f": b"\x00"}),
         "2 peers in 'added' but 1 flags"),
        (b({b"added6": b"", b"added6.f": b"\x00"}), "0 peers in 'added6' but 1 flags"),
        (b({b"added": 5}), "'added' is not a string"),
        (b({b"added": _v4("10.0.0.1", 1), b"added.f": [0]}), "'added.f' is not a string"),
        (b({b"dropped": [b"x"]}), "'dropped' is not a string"),
        (b"l5:added0:e", "not a dict"),
        (b"d5:added6:", "not valid bencode"),  # truncated
        (b"d5:added0:e" + b"\x00", "not valid bencode"),
        (b({b"added": b"x" * (MAX_PEX_LENGTH - 8)}), "ut_pex message; the bound"),
    ],
)
def test_pex_hostile(body: bytes, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        Pex.decode(body)


@pytest.mark.parametrize(
    "pex",
    [
        Pex(added=tuple(PexPeer(f"10.0.0.{i}", 1) for i in range(1, MAX_PEX_ADDED + 2))),
        Pex(dropped=tuple((f"10.0.0.{i}", 1) for i in range(1, MAX_PEX_DROPPED + 2))),
        Pex(added=(PexPeer("10.0.0.1", 0),)),
        Pex(added=(PexPeer("10.0.0.1", 1, 256),)),
        Pex(dropped=(("host.example", 1),)),
    ],
)
def test_pex_encode_refuses_our_own_bugs(pex: Pex) -> None:
    with pytest.raises(LocalProtocolError):
        pex.encode()


def test_largest_pex_we_send_fits_the_extended_bound() -> None:
    pex = Pex(added=tuple(PexPeer(f"2001:db8::{i:x}", 1, 0xFF) for i in range(1, 51)),
              dropped=tuple((f"2001:db8:1::{i:x}", 1) for i in range(1, 51)))
    assert 1 + len(pex.encode()) <= MAX_EXTENDED_LENGTH


# --- BEP 6 allowed-fast set -----------------------------------------------------------------
AA = b"\xaa" * 20


def test_allowed_fast_bep6_test_vectors() -> None:
    # BEP 6, "Example results": 1313 pieces, info-hash aa..aa, node 80.4.4.200
    assert allowed_fast_set("80.4.4.200", AA, 1313, 7) == [1059, 431, 808, 1217, 287, 376, 1188]
    assert allowed_fast_set("80.4.4.200", AA, 1313, 9) == [
        1059, 431, 808, 1217, 287, 376, 1188, 353, 508]


def test_allowed_fast_masks_the_ipv4_24() -> None:
    base = allowed_fast_set("80.4.4.200", AA, 1313, 9)
    assert allowed_fast_set("80.4.4.1", AA, 1313, 9) == base
    assert allowed_fast_set("::ffff:80.4.4.77", AA, 1313, 9) == base  # dual-stack socket
    assert allowed_fast_set("80.4.5.200", AA, 1313, 9) != base
    assert allowed_fast_set("80.4.4.200", b"\xab" * 20, 1313, 9) != base


def test_allowed_fast_ipv6_uses_the_48() -> None:
    a = allowed_fast_set("2001:db8:1::1", AA, 1313)
    assert allowed_fast_set("2001:db8:1:ffff::2", AA, 1313) == a
    assert allowed_fast_set("2001:db8:2::1", AA, 1313) != a
    assert len(set(a)) == ALLOWED_FAST_COUNT


def test_allowed_fast_grows_by_one_and_stays_in_range() -> None:
    full = allowed_fast_set("192.0.2.1", AA, 50, MAX_ALLOWED_FAST)
    assert len(set(full)) == MAX_ALLOWED_FAST and all(0 <= i < 50 for i in full)
    for k in range(MAX_ALLOWED_FAST + 1):
        assert allowed_fast_set("192.0.2.1", AA, 50, k) == full[:k]


def test_allowed_fast_small_torrents() -> None:
    # k larger than the torrent: every piece once (BEP 6's loop would never end)
    assert sorted(allowed_fast_set("192.0.2.1", AA, 5, 10)) == [0, 1, 2, 3, 4]
    assert allowed_fast_set("192.0.2.1", AA, 1, 10) == [0]
    assert allowed_fast_set("192.0.2.1", AA, 0, 10) == []
    assert allowed_fast_set("192.0.2.1", AA, 100, 0) == []


@pytest.mark.parametrize(
    ("ip", "info_hash", "num_pieces", "k"),
    [
        ("192.0.2.1", AA, 10, MAX_ALLOWED_FAST + 1),
        ("192.0.2.1", AA, 10, -1),
        ("192.0.2.1", AA, -1, 1),
        ("192.0.2.1", b"short", 10, 1),
        ("not-an-ip", AA, 10, 1),
    ],
)
def test_allowed_fast_refuses_bad_arguments(ip: str, info_hash: bytes, num_pieces: int,
                                            k: int) -> None:
    with pytest.raises(LocalProtocolError):
        allowed_fast_set(ip, info_hash, num_pieces, k)


def test_fast_bounds_are_sane() -> None:
    assert ALLOWED_FAST_COUNT <= MAX_ALLOWED_FAST
    assert MAX_SUGGESTED > 0


# --- fuzzing: nothing but RemoteProtocolError escapes ----------------------------------------
bvalue = st.recursive(
    st.integers(-(2**70), 2**70) | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.binary(max_size=10), children, max_size=4),
    max_leaves=12,
)

_HANDSHAKE_KEYS = [b"m", b"v", b"p", b"reqq", b"yourip", b"ipv4", b"ipv6", b"metadata_size",
                   b"e", b"ut_pex", b"ut_metadata"]
_METADATA_KEYS = [b"msg_type", b"piece", b"total_size"]
_PEX_KEYS = [b"added", b"added.f", b"added6", b"added6.f", b"dropped", b"dropped6"]


def _dicts(keys: list[bytes]) -> st.SearchStrategy[dict[bytes, Any]]:
    small = st.integers(-3, 40000) | st.binary(max_size=40) | bvalue
    return st.dictionaries(st.sampled_from(keys) | st.binary(max_size=6), small, max_size=6)


def _only_remote_errors(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except RemoteProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_raw_bytes(junk: bytes) -> None:
    _only_remote_errors(ExtensionHandshake.decode, junk)
    _only_remote_errors(decode_metadata_message, junk)
    _only_remote_errors(decode_metadata_message, junk, 100)
    _only_remote_errors(Pex.decode, junk)
    for msg_id in (0x0D, 0x0E, 0x0F, 0x10, 0x11, 20):
        _only_remote_errors(decode, msg_id, junk)


@settings(max_examples=300, deadline=None)
@given(d=_dicts(_HANDSHAKE_KEYS), m=st.dictionaries(
    st.binary(max_size=12), st.integers(-2, 300) | bvalue, max_size=5))
def test_fuzz_handshake_dicts(d: dict[bytes, Any], m: dict[bytes, Any]) -> None:
    body = b({**d, b"m": m})
    try:
        hs = ExtensionHandshake.decode(body)
    except RemoteProtocolError:
        return
    assert all(0 <= i <= 255 for i in hs.m.values())
    assert hs.reqq is None or 1 <= hs.reqq <= MAX_REQQ
    assert hs.metadata_size is None or 1 <= hs.metadata_size <= MAX_METADATA_SIZE
    assert ExtensionHandshake.decode(hs.encode()) == hs  # what we accept we can say back


@settings(max_examples=300, deadline=None)
@given(d=_dicts(_METADATA_KEYS), tail=st.binary(max_size=200),
       size=st.none() | st.integers(1, 40000))
def test_fuzz_metadata_dicts(d: dict[bytes, Any], tail: bytes, size: int | None) -> None:
    try:
        msg = decode_metadata_message(b(d) + tail, size)
    except RemoteProtocolError:
        return
    if msg is not None:
        assert decode_metadata_message(msg.encode(), size) == msg


@settings(max_examples=300, deadline=None)
@given(d=_dicts(_PEX_KEYS), lens=st.lists(st.integers(0, 60), min_size=6, max_size=6),
       data=st.data())
def test_fuzz_pex_dicts(d: dict[bytes, Any], lens: list[int], data: st.DataObject) -> None:
    # mostly well-formed lists, sometimes cut short, plus random other values
    for key, n in zip(_PEX_KEYS, lens, strict=True):
        if data.draw(st.booleans()):
            width = 1 if key.endswith(b".f") else (18 if b"6" in key else 6)
            d[key] = data.draw(st.binary(min_size=n * width - (n % 3 == 1),
                                         max_size=n * width))
    try:
        pex = Pex.decode(b(d))
    except RemoteProtocolError:
        return
    assert len(pex.added) <= MAX_PEX_ADDED and len(pex.dropped) <= MAX_PEX_DROPPED
    assert Pex.decode(pex.encode()) == Pex(pex.added, pex.dropped)


@settings(max_examples=200, deadline=None)
@given(
    added=st.lists(st.tuples(st.ip_addresses(), st.integers(1, 65535), st.integers(0, 255)),
                   max_size=MAX_PEX_ADDED, unique_by=lambda t: (t[0], t[1])),
    dropped=st.lists(st.tuples(st.ip_addresses(), st.integers(1, 65535)),
                     max_size=MAX_PEX_DROPPED, unique=True),
)
def test_pex_round_trip_property(added: list[Any], dropped: list[Any]) -> None:
    # one peer is one entry in its canonical form: an IPv4-mapped IPv6 address
    # travels as the IPv4 one (6 bytes, in "added"), and so it comes back
    added = list({(canonical_ip(str(ip)), port): f for ip, port, f in added}.items())
    dropped = list(dict.fromkeys((canonical_ip(str(ip)), port) for ip, port in dropped))
    pex = Pex(added=tuple(PexPeer(ip, port, f) for (ip, port), f in added),
              dropped=tuple(dropped))
    back = Pex.decode(pex.encode())
    # the wire groups IPv4 before IPv6; the sets of entries survive unchanged
    assert sorted(back.added, key=repr) == sorted(pex.added, key=repr)
    assert sorted(back.dropped) == sorted(pex.dropped)
    assert back.ignored == 0


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 5 * METADATA_PIECE), data=st.data())
def test_metadata_round_trip_property(size: int, data: st.DataObject) -> None:
    info = data.draw(st.binary(min_size=size, max_size=size))
    piece = data.draw(st.integers(0, metadata_piece_count(size) - 1))
    msg = metadata_data(info, piece)
    assert decode_metadata_message(msg.encode(), size) == msg
    for other in (MetadataRequest(piece), MetadataReject(piece)):
        assert decode_metadata_message(other.encode()) == other


@settings(max_examples=300, deadline=None)
@given(total=st.integers(-1, 3 * METADATA_PIECE + 1), piece=st.integers(-1, 4),
       delta=st.integers(-2, 2), announced=st.none() | st.integers(1, 3 * METADATA_PIECE))
def test_metadata_data_accepted_exactly_when_bep9_allows(
    total: int, piece: int, delta: int, announced: int | None
) -> None:
    expected = min(METADATA_PIECE, total - piece * METADATA_PIECE)
    n = max(0, expected + delta)
    valid = (1 <= total and 0 <= piece < metadata_piece_count(total) and n == expected
             and announced in (None, total))
    try:
        msg = decode_metadata_message(_data(piece, total, n), announced)
    except RemoteProtocolError:
        assert not valid
    else:
        assert valid and msg == MetadataData(piece, total, b"m" * n)
