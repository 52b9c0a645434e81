"""Sans-IO tracker codecs: HTTP announce URL and response, HTTP response
framing, UDP (BEP 15) messages and the UDP announce state machine."""

from __future__ import annotations

import ipaddress
import random
import struct
from typing import Any
from urllib.parse import unquote_to_bytes

import bencodepy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torrent.errors import TrackerError
from torrent.tracker import http as th
from torrent.tracker import udp as tu
from torrent.tracker.common import (
    MAX_PEERS_PER_RESPONSE,
    AnnounceParams,
    AnnounceResult,
    clean_text,
    normalize_peer,
)

IH = bytes(range(0x80, 0x94))
PID = b"-FT0001-" + bytes(range(12))


def enc(d: object) -> bytes:
    return bencodepy.encode(d)


def compact(*peers: tuple[str, int]) -> bytes:
    return b"".join(bytes(map(int, h.split("."))) + struct.pack(">H", p) for h, p in peers)


def url(base: str = "http://t.example/announce", **kw: object) -> str:
    args: dict[str, object] = {
        "info_hash": IH,
        "peer_id": PID,
        "port": 6881,
        "uploaded": 1,
        "downloaded": 2,
        "left": 3,
        "event": None,
        "numwant": 50,
    }
    args.update(kw)
    return th.build_announce_url(base, **args)  # type: ignore[arg-type]


def query_of(u: str) -> dict[str, bytes]:
    q = u.split("?", 1)[1]
    return {k: unquote_to_bytes(v) for k, _, v in (p.partition("=") for p in q.split("&"))}


# --------------------------------------------------------------------------- announce URL


def test_url_has_all_fields_and_decodes_back() -> None:
    u = url(event="started", key=0xDEADBEEF, trackerid=b"t id\x00")
    q = query_of(u)
    assert u.startswith("http://t.example/announce?info_hash=")
    assert q["info_hash"] == IH and q["peer_id"] == PID
    assert (q["port"], q["uploaded"], q["downloaded"], q["left"]) == (b"6881", b"1", b"2", b"3")
    assert q["event"] == b"started" and q["compact"] == b"1" and q["numwant"] == b"50"
    assert q["key"] == b"DEADBEEF" and q["trackerid"] == b"t id\x00"


def test_url_no_event_omits_event() -> None:
    assert "event=" not in url(event=None)
    assert "event=" not in url(event="")


@pytest.mark.parametrize(
    ("base", "prefix"),
    [
        ("http://t/a?passkey=abc", "http://t/a?passkey=abc&info_hash="),
        ("http://t/a?", "http://t/a?info_hash="),
        ("http://t/a?x=1&", "http://t/a?x=1&info_hash="),
        ("http://t/a#frag", "http://t/a?info_hash="),
    ],
)
def test_url_appends_to_existing_query(base: str, prefix: str) -> None:
    assert url(base).startswith(prefix)


def test_percent_encoding_of_all_256_byte_values() -> None:
    unreserved = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
    for start in range(0, 256, 20):
        chunk = bytes((start + i) % 256 for i in range(20))
        u = url(info_hash=chunk, peer_id=chunk[::-1])
        raw = u.split("info_hash=", 1)[1].split("&", 1)[0]
        assert unquote_to_bytes(raw) == chunk
        # Each byte: itself if unreserved, else exactly "%XX" upper-case.
        expected = "".join(chr(b) if b in unreserved else f"%{b:02X}" for b in chunk)
        assert raw == expected
        assert query_of(u)["peer_id"] == chunk[::-1]


@pytest.mark.parametrize(
    "bad",
    [
        {"info_hash": b"short"},
        {"peer_id": bytes(21)},
        {"port": 70000},
        {"left": -1},
        {"event": "paused"},
        {"key": 2**32},
        {"compact": 2},
    ],
)
def test_url_rejects_bad_arguments(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        url(**bad)


def test_build_request_is_http11_get_with_host() -> None:
    req = th.build_request("http://127.0.0.1:8080/ann?x=%00")
    assert req.startswith(b"GET /ann?x=%00 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n")
    assert req.endswith(b"\r\n\r\n") and b"Connection: close" in req
    assert b"Host: [::1]:99\r\n" in th.build_request("http://[::1]:99/a")
    assert b"Host: h\r\n" in th.build_request("http://h/")


@pytest.mark.parametrize(
    "bad", ["ftp://h/a", "http:///a", "http://h:x/a", "http://h/a b", "http://h/a\r\nX: y"]
)
def test_build_request_refuses_bad_urls(bad: str) -> None:
    with pytest.raises(TrackerError):
        th.build_request(bad)


# --------------------------------------------------------------------------- announce response


def test_compact_response() -> None:
    body = enc(
        {
            b"interval": 900,
            b"min interval": 60,
            b"complete": 5,
            b"incomplete": 7,
            b"tracker id": b"abc",
            b"warning message": b"be nice",
            b"peers": compact(("10.0.0.1", 6881), ("192.168.1.2", 51413)),
        }
    )
    r = th.parse_announce_response(body)
    assert r == AnnounceResult(
        peers=(("10.0.0.1", 6881), ("192.168.1.2", 51413)),
        interval=900,
        min_interval=60,
        tracker_id=b"abc",
        complete=5,
        incomplete=7,
        warning="be nice",
    )


def test_dict_response_drops_invalid_entries() -> None:
    peers = [
        {b"ip": b"10.0.0.1", b"port": 1, b"peer id": bytes(20)},
        {b"ip": b"::1", b"port": 2},
        {b"ip": b"peer.example.org", b"port": 3},
        {b"ip": b"10.0.0.2", b"port": 0},  # port 0
        {b"ip": b"10.0.0.3", b"port": 70000},  # port out of range
        {b"ip": b"bad host!", b"port": 4},
        {b"ip": b"1.2.3.999", b"port": 5},  # not an IP, not a name
        {b"ip": b"0.0.0.0", b"port": 6},  # unspecified
        {b"ip": b"\xff\xfe", b"port": 7},
        {b"port": 8},
        b"not a dict",
        {b"ip": 5, b"port": 9},
        {b"ip": b"10.0.0.1", b"port": 1},  # duplicate
    ]
    r = th.parse_announce_response(enc({b"interval": 60, b"peers": peers}))
    assert r.peers == (("10.0.0.1", 1), ("::1", 2), ("peer.example.org", 3))


def test_peers6_and_compact_port_zero() -> None:
    v6 = bytes.fromhex("20010db8000000000000000000000001") + struct.pack(">H", 6881)
    body = enc(
        {b"interval": 60, b"peers": compact(("10.0.0.1", 0), ("10.0.0.2", 2)), b"peers6": v6}
    )
    assert th.parse_announce_response(body).peers == (("10.0.0.2", 2), ("2001:db8::1", 6881))


def compact6(*peers: tuple[str, int]) -> bytes:
    return b"".join(ipaddress.IPv6Address(h).packed + struct.pack(">H", p) for h, p in peers)


def test_peers6_canonical_forms_and_deduplication() -> None:
    # BEP 7: peers6 beside peers; an IPv4-mapped entry is that IPv4 peer (one record),
    # the unspecified, multicast and port-0 entries are nobody's
    v6 = compact6(("2001:DB8::2", 7), ("::ffff:10.0.0.2", 2), ("::", 5), ("ff02::1", 5),
                  ("2001:db8::3", 0), ("2001:db8::2", 7), ("::1", 8))
    body = enc({b"interval": 60, b"peers": compact(("10.0.0.2", 2)), b"peers6": v6})
    assert th.parse_announce_response(body).peers == (
        ("10.0.0.2", 2), ("2001:db8::2", 7), ("::1", 8))


def test_peers6_in_dictionary_form() -> None:
    # a non-compact answer names IPv6 peers in the dict list (BEP 3), in any spelling
    peers = [{b"ip": b"2001:DB8:0:0::9", b"port": 9}, {b"ip": b"::ffff:192.0.2.1", b"port": 1},
             {b"ip": b"[::1]", b"port": 3}, {b"ip": b"192.0.2.1", b"port": 1}]
    r = th.parse_announce_response(enc({b"interval": 60, b"peers": peers}))
    assert r.peers == (("2001:db8::9", 9), ("192.0.2.1", 1))


@pytest.mark.parametrize("extra", [1, 17, 19, 35])
def test_truncated_peers6_is_refused_whole(extra: int) -> None:
    # whole entries followed by a truncated one: the tracker garbled the list
    body = enc({b"interval": 60, b"peers6": compact6(("::1", 1)) + b"\x01" * extra})
    with pytest.raises(TrackerError, match=r"'peers6'.*IPv6 peer list .* multiple of 18"):
        th.parse_announce_response(body)


def test_peers6_count_is_bounded_with_peers() -> None:
    # the bound counts both lists: 1,500 IPv4 then 100,000 IPv6 peers keep 2,000 in all,
    # and the IPv6 list is decoded only as far as the bound
    v4 = [(f"10.0.{i >> 8}.{i & 255}", 1) for i in range(1, 1501)]
    v6 = b"".join(ipaddress.IPv6Address(0x2001_0DB8 << 96 | i).packed + b"\x00\x01"
                  for i in range(1, 100_001))
    r = th.parse_announce_response(enc({b"interval": 60, b"peers": compact(*v4), b"peers6": v6}))
    assert len(r.peers) == MAX_PEERS_PER_RESPONSE
    assert r.peers[1500] == ("2001:db8::1", 1) and r.peers[-1] == ("2001:db8::1f4", 1)


def test_missing_interval_uses_default_and_missing_peers_is_empty() -> None:
    r = th.parse_announce_response(enc({b"complete": 1}))
    assert r.interval == th.DEFAULT_INTERVAL and r.peers == ()
    assert r.min_interval is None and r.tracker_id is None


def test_failure_reason_raises_with_the_reason() -> None:
    body = enc({b"failure reason": b"torrent not registered\n", b"interval": 5})
    with pytest.raises(TrackerError, match="torrent not registered"):
        th.parse_announce_response(body)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"", "not bencoded"),
        (b"<html>502 Bad Gateway</html>", "not bencoded"),
        (b"d8:intervali5e", "not bencoded"),
        (b"d8:intervali5ee trailing", "not bencoded"),
        (b"li1ee", "not a bencoded dictionary"),
        (enc({b"interval": -1}), "invalid interval"),
        (enc({b"interval": b"60"}), "invalid interval"),
        (enc({b"interval": 60, b"peers": compact(("1.2.3.4", 5)) + b"x"}), "multiple of 6"),
        (enc({b"interval": 60, b"peers": 5}), "neither"),
        (enc({b"interval": 60, b"peers6": b"\x00" * 17}), "multiple of 18"),
        (enc({b"interval": 60, b"peers6": [1]}), "peers6"),
        (enc({b"failure reason": 5}), "unreadable"),
    ],
)
def test_malformed_responses(body: bytes, match: str) -> None:
    with pytest.raises(TrackerError, match=match):
        th.parse_announce_response(body)


def test_response_size_is_bounded() -> None:
    body = enc({b"interval": 60, b"x": b"a" * th.MAX_RESPONSE_SIZE})
    with pytest.raises(TrackerError, match="larger than"):
        th.parse_announce_response(body)


def test_peer_count_is_bounded() -> None:
    many = [(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 1) for i in range(1, 3001)]
    r = th.parse_announce_response(enc({b"interval": 60, b"peers": compact(*many)}))
    assert len(r.peers) == MAX_PEERS_PER_RESPONSE
    assert r.peers[0] == many[0]


def test_optional_fields_of_wrong_type_are_ignored() -> None:
    body = enc(
        {
            b"interval": 60,
            b"min interval": b"x",
            b"complete": -3,
            b"incomplete": b"7",
            b"tracker id": b"",
            b"warning message": 5,
        }
    )
    r = th.parse_announce_response(body)
    assert (r.min_interval, r.complete, r.incomplete, r.tracker_id, r.warning) == (
        None,
        None,
        None,
        None,
        None,
    )


def test_tracker_text_is_cleaned_and_cut() -> None:
    body = enc({b"failure reason": b"\x1b[31mred\x00" + b"y" * 5000})
    with pytest.raises(TrackerError) as info:
        th.parse_announce_response(body)
    msg = str(info.value)
    assert "\x1b" not in msg and "\x00" not in msg and len(msg) < 600
    assert clean_text(b"\xff ok") == "\ufffd ok"


@pytest.mark.parametrize(
    ("host", "port", "out"),
    [
        ("10.0.0.1", 1, ("10.0.0.1", 1)),
        ("::ffff:10.0.0.1", 1, ("10.0.0.1", 1)),
        ("2001:DB8::1", 1, ("2001:db8::1", 1)),
        ("Example.COM", 1, ("example.com", 1)),
        ("224.0.0.1", 1, None),
        ("::", 1, None),
        ("-bad.example", 1, None),
        ("a" * 64 + ".example", 1, None),
        ("10.0.0.1", 0, None),
        ("", 1, None),
    ],
)
def test_normalize_peer(host: str, port: int, out: object) -> None:
    assert normalize_peer(host, port) == out


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400))
def test_parse_random_bytes_only_raises_tracker_error(body: bytes) -> None:
    try:
        r = th.parse_announce_response(body)
    except TrackerError:
        return
    assert isinstance(r, AnnounceResult)


_bvalues = st.recursive(
    st.integers(-(2**40), 2**40) | st.binary(max_size=30),
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [b"interval", b"peers", b"peers6", b"ip", b"port", b"min interval", b"complete"]
            )
            | st.binary(max_size=5),
            kids,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                b"interval",
                b"peers",
                b"peers6",
                b"failure reason",
                b"min interval",
                b"tracker id",
                b"warning message",
                b"complete",
            ]
        ),
        _bvalues,
    )
)
def test_parse_random_structures_only_raises_tracker_error(d: dict[bytes, object]) -> None:
    try:
        r = th.parse_announce_response(enc(d))
    except TrackerError:
        return
    for host, port in r.peers:
        assert normalize_peer(host, port) == (host, port)


# --------------------------------------------------------------------------- HTTP framing


def _feed(raw: bytes, mode: str, **kw: int) -> th.HTTPResponseReader:
    r = th.HTTPResponseReader(**kw)
    if mode == "whole":
        r.feed(raw)
    elif mode == "bytewise":
        for i in range(len(raw)):
            r.feed(raw[i : i + 1])
    elif mode == "trailing":
        r.feed(raw + b"HTTP/1.1 500 junk after the response")
    if not r.complete:
        r.feed_eof()
    return r


MODES = ["whole", "bytewise", "trailing"]


@pytest.mark.parametrize("mode", MODES)
def test_content_length_body(mode: str) -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello"
    r = _feed(raw, mode)
    assert (r.status, r.reason, r.body) == (200, "OK", b"hello")
    assert r.headers["x-a"] == "1, 2"


@pytest.mark.parametrize("mode", MODES)
def test_chunked_body(mode: str) -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4;ext=1\r\nd8:i\r\nA\r\nntervali6e\r\n1\r\ne\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )
    r = _feed(raw, mode)
    assert r.body == b"d8:intervali6ee"
    assert th.parse_announce_response(r.body).interval == 6


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_close_delimited_body_and_interim_response(mode: str) -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 404 Not Found\r\n\r\nno such torrent"
    r = _feed(raw, mode)
    assert (r.status, r.body) == (404, b"no such torrent")


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "closed the connection"),
        (b"HTTP/1.1 200 OK\r\n", "closed the connection"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "status line"),
        (b"HTTP/1.1 2x0 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 050 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 600 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n", "Content-Length"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "conflicting",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "transfer-encoding"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc", "CRLF"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n", "closed"),
    ],
)
def test_malformed_http(raw: bytes, match: str) -> None:
    with pytest.raises(TrackerError, match=match):
        _feed(raw, "whole")


def test_http_bounds_checked_before_buffering() -> None:
    r = th.HTTPResponseReader(max_body=100, max_header=200)
    with pytest.raises(TrackerError, match="headers exceed"):
        r.feed(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 50)
    r = th.HTTPResponseReader(max_body=100)
    with pytest.raises(TrackerError, match="exceeds 100"):
        r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n")
    r = th.HTTPResponseReader(max_body=100)
    with pytest.raises(TrackerError, match="exceeds 100"):
        r.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n")
    r = th.HTTPResponseReader(max_body=100)
    r.feed(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 100)
    with pytest.raises(TrackerError, match="exceeds 100"):
        r.feed(b"x")
    r = th.HTTPResponseReader()
    with pytest.raises(TrackerError, match="chunk size line"):
        r.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;" + b"e" * 2000)


# --------------------------------------------------------------------------- UDP messages

ALL_UDP: list[tu.UDPMessage] = [
    tu.ConnectRequest(0xDEADBEEF),
    tu.ConnectResponse(1, 0x0123456789ABCDEF),
    tu.AnnounceRequest(
        connection_id=7,
        transaction_id=8,
        info_hash=IH,
        peer_id=PID,
        downloaded=2**40,
        left=3,
        uploaded=4,
        event=tu.UDPEvent.STARTED,
        ip=0,
        key=0xCAFEBABE,
        num_want=-1,
        port=6881,
    ),
    tu.AnnounceRequest(
        7, 8, IH, PID, 1, 2, 3, tu.UDPEvent.NONE, 0, 0, 50, 1, b"/ann?k=" + b"x" * 600
    ),
    tu.AnnounceResponse(9, 1800, 3, 4, (("10.0.0.1", 6881), ("10.0.0.2", 1))),
    tu.ErrorResponse(10, "torrent not registered"),
]


@pytest.mark.parametrize("msg", ALL_UDP, ids=lambda m: type(m).__name__)
def test_udp_round_trip(msg: tu.UDPMessage) -> None:
    data = tu.encode(msg)
    decoded = (
        tu.decode_request(data)
        if isinstance(msg, (tu.ConnectRequest, tu.AnnounceRequest))
        else tu.decode_response(data)
    )
    assert decoded == msg


def test_udp_wire_layout_matches_bep15() -> None:
    assert tu.encode(tu.ConnectRequest(5)) == bytes.fromhex("0000041727101980") + bytes(
        [0, 0, 0, 0, 0, 0, 0, 5]
    )
    ann = tu.encode(ALL_UDP[2])
    assert len(ann) == 98
    assert ann[8:12] == b"\x00\x00\x00\x01" and ann[16:36] == IH and ann[36:56] == PID
    assert ann[80:84] == b"\x00\x00\x00\x02"  # started = 2
    assert ann[92:96] == b"\xff\xff\xff\xff" and ann[96:98] == b"\x1a\xe1"
    assert [e.value for e in tu.UDPEvent] == [0, 1, 2, 3]
    assert tu.PROTOCOL_ID == 0x41727101980


def test_udp_ipv6_announce_response() -> None:
    blob = (
        struct.pack(">IIIII", 1, 5, 60, 1, 2)
        + bytes.fromhex("20010db8" + "0" * 23 + "1")
        + b"\x00\x50"
    )
    r = tu.decode_response(blob, ipv6=True)
    assert isinstance(r, tu.AnnounceResponse) and r.peers == (("2001:db8::1", 80),)


def test_udp_ipv6_round_trip_and_layout() -> None:
    msg = tu.AnnounceResponse(3, 900, 1, 2, (("2001:db8::1", 80), ("::1", 6881)), ipv6=True)
    data = tu.encode(msg)
    assert len(data) == 20 + 2 * 18  # BEP 15: 18 bytes a peer over IPv6
    assert data[20:38] == ipaddress.IPv6Address("2001:db8::1").packed + b"\x00\x50"
    assert tu.decode_response(data, ipv6=True) == msg
    with pytest.raises(ValueError, match="not an IPv6 address"):
        tu.encode(tu.AnnounceResponse(3, 900, 1, 2, (("10.0.0.1", 80),), ipv6=True))


@pytest.mark.parametrize("extra", [1, 6, 17, 19])
def test_udp_ipv6_truncated_peers(extra: int) -> None:
    head = struct.pack(">IIIII", 1, 5, 60, 1, 2)
    with pytest.raises(TrackerError, match=r"IPv6 peer list .* not a multiple of 18"):
        tu.decode_response(head + b"\x01" * (18 + extra), ipv6=True)
    # six 6-byte IPv4 peers are 36 bytes, two IPv6 ones: the family decides the width
    r = tu.decode_response(head + compact6(("::1", 1), ("::2", 2)), ipv6=True)
    assert isinstance(r, tu.AnnounceResponse) and r.peers == (("::1", 1), ("::2", 2))


def test_udp_ipv6_peer_count_is_bounded() -> None:
    head = struct.pack(">IIIII", 1, 5, 60, 1, 2)
    blob = b"".join(ipaddress.IPv6Address(0x2001_0DB8 << 96 | i).packed + b"\x00\x01"
                    for i in range(1, 3001))
    r = tu.decode_response(head + blob, ipv6=True)
    assert isinstance(r, tu.AnnounceResponse) and len(r.peers) == MAX_PEERS_PER_RESPONSE


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x00\x00\x00", "too short"),
        (struct.pack(">II", 0, 1) + b"\x00" * 7, "connect answer is too short"),
        (struct.pack(">II", 1, 1) + b"\x00" * 11, "announce answer is too short"),
        (struct.pack(">IIIII", 1, 1, 1, 1, 1) + b"\x00" * 7, "multiple of 6"),
        (struct.pack(">II", 9, 1), "unknown action"),
    ],
)
def test_udp_malformed_responses(data: bytes, match: str) -> None:
    with pytest.raises(TrackerError, match=match):
        tu.decode_response(data)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x00" * 15, "too short"),
        (struct.pack(">QII", 1234, 0, 1), "protocol id"),
        (struct.pack(">QII", 1, 1, 1) + b"\x00" * 81, "too short"),
        (struct.pack(">QII", 1, 2, 1), "unsupported action"),
        (struct.pack(">QII20s20sQQQIIIiH", 1, 1, 1, IH, PID, 0, 0, 0, 9, 0, 0, 0, 1), "event"),
    ],
)
def test_udp_malformed_requests(data: bytes, match: str) -> None:
    with pytest.raises(TrackerError, match=match):
        tu.decode_request(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_udp_decode_random_only_raises_tracker_error(data: bytes, ipv6: bool) -> None:
    for fn in (lambda: tu.decode_response(data, ipv6=ipv6), lambda: tu.decode_request(data)):
        try:
            fn()
        except TrackerError:
            pass


def test_retry_schedule() -> None:
    assert tu.BEP15_SCHEDULE == tuple(15 * 2**n for n in range(9))
    assert tu.BEP15_SCHEDULE[-1] == 3840
    assert tu.retry_schedule(max_n=2, base=0.5) == (0.5, 1.0, 2.0)
    with pytest.raises(ValueError):
        tu.retry_schedule(max_n=-1)


@pytest.mark.parametrize(
    ("u", "out"),
    [
        ("udp://tracker.example:6969", ("tracker.example", 6969, b"")),
        ("udp://tracker.example:6969/", ("tracker.example", 6969, b"")),
        ("udp://tracker.example:6969/announce", ("tracker.example", 6969, b"/announce")),
        ("UDP://1.2.3.4:80/a?passkey=x", ("1.2.3.4", 80, b"/a?passkey=x")),
        ("udp://[::1]:1337/announce", ("::1", 1337, b"/announce")),
        (" udp://h:1 ", ("h", 1, b"")),
    ],
)
def test_split_udp_url(u: str, out: tuple[str, int, bytes]) -> None:
    assert tu.split_udp_url(u) == out


@pytest.mark.parametrize(
    "u", ["udp://h", "udp://h:0", "udp://h:99999", "udp://:80", "http://h:80", "udp://h:x/"]
)
def test_split_udp_url_rejects(u: str) -> None:
    with pytest.raises(TrackerError):
        tu.split_udp_url(u)


# --------------------------------------------------------------------------- UDP state machine


class Tids:
    """Deterministic getrandbits(32) stand-in: 100, 101, ..."""

    def __init__(self) -> None:
        self.n = 99

    def __call__(self, bits: int) -> int:
        assert bits == 32
        self.n += 1
        return self.n


PARAMS = AnnounceParams(info_hash=IH, peer_id=PID, port=6881, left=10, event="started", key=5)


def session(**kw: object) -> tu.UDPAnnounce:
    return tu.UDPAnnounce(PARAMS, rng=Tids(), **kw)  # type: ignore[arg-type]


def test_udp_session_connect_then_announce() -> None:
    s = session(schedule=(1.0, 2.0), url_data=b"/announce")
    c = tu.decode_request(s.start(now=0.0))
    assert c == tu.ConnectRequest(100) and s.deadline == 1.0
    out = s.receive(tu.encode(tu.ConnectResponse(100, 42)), now=0.5)
    assert isinstance(out, bytes)
    a = tu.decode_request(out)
    assert isinstance(a, tu.AnnounceRequest)
    assert (a.connection_id, a.transaction_id, a.event_name, a.left, a.key, a.port) == (
        42,
        101,
        "started",
        10,
        5,
        6881,
    )
    assert a.url_data == b"/announce" and s.deadline == 1.5
    res = s.receive(tu.encode(tu.AnnounceResponse(101, 600, 2, 1, (("10.0.0.9", 7),))), 0.6)
    assert res == AnnounceResult(peers=(("10.0.0.9", 7),), interval=600, complete=1, incomplete=2)
    assert s.deadline is None and s.connection == (42, 0.5)


def test_udp_session_ignores_wrong_transaction_id() -> None:
    s = session()
    s.start(0.0)
    assert s.receive(tu.encode(tu.ConnectResponse(999, 1)), 0.1) is None
    assert s.receive(tu.encode(tu.ErrorResponse(999, "spoofed")), 0.1) is None
    assert s.receive(b"\x00\x01", 0.1) is None
    assert s.ignored == 3
    assert isinstance(s.receive(tu.encode(tu.ConnectResponse(100, 1)), 0.2), bytes)


def test_udp_session_error_action_raises() -> None:
    s = session()
    s.start(0.0)
    with pytest.raises(TrackerError, match="tracker failure: go away"):
        s.receive(tu.encode(tu.ErrorResponse(100, "go away")), 0.1)


def test_udp_session_wrong_action_and_malformed_raise() -> None:
    s = session()
    s.start(0.0)
    with pytest.raises(TrackerError, match="answered a connect"):
        s.receive(tu.encode(tu.AnnounceResponse(100, 1, 1, 1, ())), 0.1)
    s = session()
    s.start(0.0)
    with pytest.raises(TrackerError, match="too short"):
        s.receive(struct.pack(">II", 0, 100) + b"\x00", 0.1)


def test_udp_session_retries_per_schedule_then_gives_up() -> None:
    s = session(schedule=(15.0, 30.0, 60.0))
    first = s.start(0.0)
    assert s.deadline == 15.0
    assert s.on_timeout(15.0) == first  # same datagram, same transaction id
    assert s.deadline == 45.0
    assert s.on_timeout(45.0) == first
    assert s.deadline == 105.0
    with pytest.raises(TrackerError, match="after 3 tries"):
        s.on_timeout(105.0)


def test_udp_session_reconnects_when_connection_id_expired() -> None:
    s = session(schedule=(50.0, 50.0, 50.0))
    s.start(0.0)
    s.receive(tu.encode(tu.ConnectResponse(100, 42)), now=1.0)  # announce tid 101
    again = s.on_timeout(51.0)  # id still valid (50 s old): same announce
    assert tu.decode_request(again).transaction_id == 101
    fresh = tu.decode_request(s.on_timeout(101.0))  # 100 s old: connect again
    assert isinstance(fresh, tu.ConnectRequest) and fresh.transaction_id == 102
    assert s.connection is None


def test_udp_session_reuses_valid_connection() -> None:
    s = session(connection=(77, 100.0))
    first = tu.decode_request(s.start(now=130.0))
    assert isinstance(first, tu.AnnounceRequest) and first.connection_id == 77
    s2 = session(connection=(77, 100.0))
    assert isinstance(tu.decode_request(s2.start(now=160.0)), tu.ConnectRequest)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=8), st.integers(0, 2**32 - 1))
def test_udp_session_random_datagrams(datagrams: list[bytes], seed: int) -> None:
    s = tu.UDPAnnounce(PARAMS, rng=random.Random(seed).getrandbits)
    s.start(0.0)
    for d in datagrams:
        try:
            s.receive(d, 1.0)
        except TrackerError:
            break


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 50))
def test_http_reader_random_bytes_only_raise_tracker_error(data: bytes, step: int) -> None:
    r = th.HTTPResponseReader(max_body=100, max_header=200)
    try:
        for i in range(0, len(data), step):
            r.feed(data[i : i + step])
        r.feed_eof()
    except TrackerError:
        return
    assert r.complete and r.status is not None and len(r.body) <= 100


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(1, 400), max_size=10), st.booleans())
def test_http_reader_is_chunking_invariant(body: bytes, cuts: list[int], chunked: bool) -> None:
    if chunked:
        parts = [body[i : i + 7] for i in range(0, len(body), 7)]
        payload = b"".join(b"%X\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    else:
        payload = body
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    raw = head + payload
    r = th.HTTPResponseReader()
    pos = 0
    for cut in sorted(set(cuts)):
        r.feed(raw[pos:cut])
        pos = max(pos, cut)
    r.feed(raw[pos:])
    assert r.complete and r.body == body
