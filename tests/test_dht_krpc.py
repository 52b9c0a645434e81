"""Tests of the KRPC codec (torrent/dht/krpc.py): round trips, BEP 5 examples, hostile datagrams."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torrent import bencoding
from torrent.dht import krpc
from torrent.dht.krpc import (
    MAX_DATAGRAM,
    MAX_NODES,
    MAX_TOKEN,
    MAX_TRANSACTION_ID,
    MAX_VALUES,
    AnnouncePeer,
    Error,
    FindNode,
    GetPeers,
    KRPCError,
    NodeInfo,
    Ping,
    Response,
    UnknownQuery,
)
from torrent.wire.messages import LocalProtocolError

A = b"a" * 20
B = b"m" * 20
H = b"h" * 20


@pytest.mark.parametrize("msg", [
    Ping(b"aa", A),
    Ping(b"\x00\x01", A, read_only=True),
    FindNode(b"t1", A, B),
    FindNode(b"t1", A, B, want=(b"n4", b"n6")),
    GetPeers(b"t2", A, H),
    AnnouncePeer(b"t3", A, H, 6881, b"tok"),
    AnnouncePeer(b"t3", A, H, 0, b"tok", implied_port=True),
    AnnouncePeer(b"t3", A, H, 6881, b"tok", implied_port=True),
    UnknownQuery(b"t4", A, b"sample_infohashes"),
    Response(b"aa", B),
    Response(b"aa", B, nodes=(NodeInfo(A, "1.2.3.4", 6881),),
             nodes6=(NodeInfo(H, "2001:db8::1", 1),), token=b"x" * MAX_TOKEN),
    Response(b"aa", B, values=(("1.2.3.4", 1), ("::1", 65535)), token=b"t",
             ip=("5.6.7.8", 9)),
    Response(b"aa", B, values=tuple(("10.0.0.1", p) for p in range(1, MAX_VALUES + 1))),
    Error(b"aa", 201, "A Generic Error Ocurred"),
])
def test_round_trip(msg: krpc.Message) -> None:
    data = krpc.encode(msg)
    assert len(data) <= MAX_DATAGRAM
    assert krpc.decode(data) == msg
    assert krpc.decode(data[:]) == msg  # bytes-like input


def test_bep5_examples() -> None:
    # The examples of BEP 5, byte for byte.
    assert krpc.decode(b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe") == \
        Ping(b"aa", b"abcdefghij0123456789")
    assert krpc.encode(Response(b"aa", b"mnopqrstuvwxyz123456")) == \
        b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re"
    assert krpc.encode(Error(b"aa", 201, "A Generic Error Ocurred")) == \
        b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee"
    ann = (b"d1:ad2:id20:abcdefghij012345678912:implied_porti1e9:info_hash20:"
           b"mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer"
           b"1:t2:aa1:y1:qe")
    assert krpc.decode(ann) == AnnouncePeer(b"aa", b"abcdefghij0123456789",
                                            b"mnopqrstuvwxyz123456", 6881, b"aoeusnth", True)
    assert krpc.encode(krpc.decode(ann)) == ann


def _q(method: bytes, a: dict[bytes, object], **top: object) -> bytes:
    d: dict[bytes, object] = {b"t": b"aa", b"y": b"q", b"q": method, b"a": a}
    d.update({k.encode(): v for k, v in top.items()})
    return bencoding.encode(d)


def _r(r: dict[bytes, object], **top: object) -> bytes:
    d: dict[bytes, object] = {b"t": b"aa", b"y": b"r", b"r": r}
    d.update({k.encode(): v for k, v in top.items()})
    return bencoding.encode(d)


@pytest.mark.parametrize(("data", "field"), [
    (b"", "datagram"),
    (b"x" * (MAX_DATAGRAM + 1), "datagram"),
    (b"d1:t2:aa1:y1:q", "datagram"),  # truncated
    (b"le", "datagram"),
    (b"d1:y1:qe", "t"),
    (bencoding.encode({b"t": b"", b"y": b"q"}), "t"),
    (bencoding.encode({b"t": b"x" * (MAX_TRANSACTION_ID + 1), b"y": b"q"}), "t"),
    (bencoding.encode({b"t": 5, b"y": b"q"}), "t"),
    (bencoding.encode({b"t": b"aa", b"y": b"z"}), "y"),
    (bencoding.encode({b"t": b"aa", b"y": b"q", b"a": {b"id": A}}), "q"),
    (bencoding.encode({b"t": b"aa", b"y": b"q", b"q": b"x" * 33, b"a": {b"id": A}}), "q"),
    (_q(b"ping", {}), "a.id"),
    (_q(b"ping", {b"id": b"short"}), "a.id"),
    (_q(b"ping", {b"id": 7}), "a.id"),
    (bencoding.encode({b"t": b"aa", b"y": b"q", b"q": b"ping", b"a": [A]}), "a"),
    (_q(b"ping", {b"id": A}, ro=b"yes"), "ro"),
    (_q(b"find_node", {b"id": A}), "a.target"),
    (_q(b"find_node", {b"id": A, b"target": A, b"want": b"n4"}), "a.want"),
    (_q(b"find_node", {b"id": A, b"target": A, b"want": [1]}), "a.want"),
    (_q(b"find_node", {b"id": A, b"target": A, b"want": [b"n4"] * 5}), "a.want"),
    (_q(b"get_peers", {b"id": A, b"info_hash": b"x" * 21}), "a.info_hash"),
    (_q(b"announce_peer", {b"id": A, b"info_hash": H, b"token": b"t"}), "a.port"),
    (_q(b"announce_peer", {b"id": A, b"info_hash": H, b"token": b"t", b"port": 0}), "a.port"),
    (_q(b"announce_peer", {b"id": A, b"info_hash": H, b"token": b"t", b"port": 70000}),
     "a.port"),
    (_q(b"announce_peer", {b"id": A, b"info_hash": H, b"port": 1}), "a.token"),
    (_q(b"announce_peer", {b"id": A, b"info_hash": H, b"port": 1,
                           b"token": b"x" * (MAX_TOKEN + 1)}), "a.token"),
    (_q(b"announce_peer", {b"id": A, b"info_hash": H, b"port": 1, b"token": b"t",
                           b"implied_port": b"1"}), "a.implied_port"),
    (_r({}), "r.id"),
    (bencoding.encode({b"t": b"aa", b"y": b"r"}), "r"),
    (_r({b"id": A, b"nodes": b"x" * 27}), "r.nodes"),
    (_r({b"id": A, b"nodes": [b"x" * 26]}), "r.nodes"),
    (_r({b"id": A, b"nodes6": b"x" * 26}), "r.nodes6"),
    (_r({b"id": A, b"values": b"x" * 6}), "r.values"),
    (_r({b"id": A, b"values": [5]}), "r.values"),
    (_r({b"id": A, b"token": 5}), "r.token"),
    (_r({b"id": A, b"token": b""}), "r.token"),
    (_r({b"id": A}, ip=b"x" * 5), "ip"),
    (bencoding.encode({b"t": b"aa", b"y": b"e", b"e": [201]}), "e"),
    (bencoding.encode({b"t": b"aa", b"y": b"e", b"e": b"oops"}), "e"),
    (bencoding.encode({b"t": b"aa", b"y": b"e", b"e": [b"201", b"x"]}), "e"),
])
def test_malformed(data: bytes, field: str) -> None:
    with pytest.raises(KRPCError) as info:
        krpc.decode(data)
    assert info.value.field == field
    # The transaction id is carried once read, so error 203 can go back.
    assert info.value.tid == (None if field in ("datagram", "t") else b"aa")


def test_unknown_method_is_a_query_to_answer_204() -> None:
    assert krpc.decode(_q(b"get", {b"id": A, b"target": H})) == UnknownQuery(b"aa", A, b"get")


def test_thousands_of_values_are_cut_at_the_bound() -> None:
    # A reply padded with values: 1500 bytes hold ~180 IPv4 values; even so we keep MAX_VALUES.
    values = [bytes([10, 0, i >> 8, i & 255, 0, 1]) for i in range(180)]
    data = _r({b"id": A, b"values": values})
    assert len(data) <= MAX_DATAGRAM
    msg = krpc.decode(data)
    assert isinstance(msg, Response)
    assert len(msg.values) == MAX_VALUES and msg.ignored == 180 - MAX_VALUES
    # Thousands do not fit a datagram at all: refused before decoding.
    big = _r({b"id": A, b"values": values * 20})
    with pytest.raises(KRPCError, match="datagram"):
        krpc.decode(big)


def test_odd_values_and_port_zero_nodes_are_ignored() -> None:
    node = A + bytes([1, 2, 3, 4, 0, 0])  # port 0
    values = [b"x" * 7, bytes([1, 2, 3, 4, 0, 0]), bytes([1, 2, 3, 4, 0, 9])]
    data = _r({b"id": B, b"values": values, b"nodes": node + B + bytes([1, 2, 3, 4, 0, 1])})
    msg = krpc.decode(data)
    assert isinstance(msg, Response)
    assert msg.values == (("1.2.3.4", 9),)
    assert msg.nodes == (NodeInfo(B, "1.2.3.4", 1),)
    assert msg.ignored == 3


def test_nodes_past_the_bound_are_ignored() -> None:
    raw = b"".join(bytes([i]) * 20 + bytes([1, 2, 3, i, 0, 1]) for i in range(MAX_NODES + 4))
    msg = krpc.decode(_r({b"id": B, b"nodes": raw}))
    assert isinstance(msg, Response)
    assert len(msg.nodes) == MAX_NODES and msg.ignored == 4


def test_error_text_is_bounded_and_printable() -> None:
    msg = krpc.decode(bencoding.encode({b"t": b"aa", b"y": b"e",
                                        b"e": [202, b"\x1b[31m" + b"x" * 1000]}))
    assert isinstance(msg, Error)
    assert msg.code == 202 and len(msg.message) <= krpc.MAX_ERROR_MESSAGE
    assert "\x1b" not in msg.message


@pytest.mark.parametrize("msg", [
    Ping(b"", A),
    Ping(b"x" * (MAX_TRANSACTION_ID + 1), A),
    Ping(b"aa", b"short"),
    FindNode(b"aa", A, b"x"),
    AnnouncePeer(b"aa", A, H, 0, b"t"),
    AnnouncePeer(b"aa", A, H, 1, b""),
    Response(b"aa", A, values=(("1.2.3.4", 0),)),
    Response(b"aa", A, values=(("nope", 1),)),
    Response(b"aa", A, nodes=(NodeInfo(A, "::1", 1),)),
    Response(b"aa", A, nodes6=(NodeInfo(A, "1.2.3.4", 1),)),
    Response(b"aa", A, values=(("1.2.3.4", 1),) * (MAX_VALUES + 1)),
    Response(b"aa", A, nodes=(NodeInfo(A, "1.2.3.4", 1),) * (MAX_NODES + 1)),
    Response(b"aa", A, values=(("::1", 1),) * MAX_VALUES, nodes6=(NodeInfo(A, "::1", 1),) * 16),
])
def test_encode_refuses_what_breaks_the_protocol(msg: krpc.Message) -> None:
    with pytest.raises(LocalProtocolError):
        krpc.encode(msg)


_ids = st.binary(min_size=20, max_size=20)
_field_values = st.recursive(
    st.one_of(st.integers(-(2**40), 2**40), st.binary(max_size=40),
              st.sampled_from([A, b"aa", b"q", b"r", b"e", b"ping", b"get_peers",
                               b"announce_peer", b"find_node", b"n4"])),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(
                                [b"id", b"target", b"info_hash", b"port", b"token",
                                 b"implied_port", b"nodes", b"nodes6", b"values", b"want"]),
                                inner, max_size=5)),
    max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from([b"t", b"y", b"q", b"a", b"r", b"e", b"ip", b"ro"]),
                       _field_values, max_size=6))
def test_decode_raises_only_krpc_error_on_structured_input(d: dict[bytes, object]) -> None:
    data = bencoding.encode(d)
    try:
        msg = krpc.decode(data)
    except KRPCError:
        return
    # Whatever decodes encodes again, to something that decodes the same
    # (unless it is one of the fields encode rightly refuses to send).
    try:
        again = krpc.encode(msg)
    except LocalProtocolError:
        return
    assert krpc.decode(again) == msg


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decode_raises_only_krpc_error_on_bytes(data: bytes) -> None:
    try:
        krpc.decode(data)
    except KRPCError:
        pass


@settings(max_examples=200, deadline=None)
@given(tid=st.binary(min_size=1, max_size=MAX_TRANSACTION_ID), sender=_ids,
       nodes=st.lists(st.tuples(_ids, st.ip_addresses(v=4).map(str), st.integers(1, 65535)),
                      max_size=8),
       values=st.lists(st.tuples(st.ip_addresses().map(str), st.integers(1, 65535)),
                       max_size=40),
       token=st.none() | st.binary(min_size=1, max_size=MAX_TOKEN))
def test_response_round_trip_property(tid: bytes, sender: bytes,
                                      nodes: list[tuple[bytes, str, int]],
                                      values: list[tuple[str, int]], token: bytes | None) -> None:
    msg = Response(tid, sender, tuple(NodeInfo(*n) for n in nodes), (), tuple(values), token)
    assert krpc.decode(krpc.encode(msg)) == msg
