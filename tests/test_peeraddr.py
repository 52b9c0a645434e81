"""torrent/peeraddr.py: canonical addresses, the compact 6/18-byte forms, HOST:PORT text."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torrent.peeraddr import (
    COMPACT_V4,
    COMPACT_V6,
    canonical_ip,
    compact_count,
    family,
    format_peer,
    is_loopback,
    normalize_peer,
    pack_compact,
    pack_compact_list,
    parse_hostport,
    unpack_compact,
)


def test_canonical_forms() -> None:
    assert canonical_ip("2001:DB8:0:0::1") == "2001:db8::1"
    assert canonical_ip("::ffff:10.1.2.3") == "10.1.2.3"  # one peer, one record
    assert canonical_ip("::ffff:a01:203") == "10.1.2.3"
    assert canonical_ip("010.1.2.3") is None  # leading zeros: ambiguous, refused
    assert canonical_ip("peer.example") is None
    assert (family("::1"), family("127.0.0.1"), family("::ffff:127.0.0.1"), family("x")) == (
        6, 4, 4, None)
    assert is_loopback("::1") and is_loopback("127.0.0.5") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("2001:db8::1") and not is_loopback("localhost")


def test_normalize_peer() -> None:
    assert normalize_peer("::FFFF:192.0.2.1", 80) == ("192.0.2.1", 80)
    assert normalize_peer("2001:db8::1", 6881) == ("2001:db8::1", 6881)
    assert normalize_peer("Peer.Example", 1) == ("peer.example", 1)
    for host, port in (("::", 1), ("0.0.0.0", 1), ("::ffff:0.0.0.0", 1), ("ff02::1", 1),
                       ("224.0.0.1", 1), ("::1", 0), ("::1", 65536), ("-bad-", 1), ("1.2.3", 1)):
        assert normalize_peer(host, port) is None, (host, port)


def test_compact_layout() -> None:
    assert pack_compact("10.0.0.1", 6881) == bytes([10, 0, 0, 1, 0x1A, 0xE1])
    v6 = pack_compact("2001:db8::1", 80)
    assert len(v6) == COMPACT_V6 and v6 == ipaddress.IPv6Address("2001:db8::1").packed + b"\0P"
    assert len(pack_compact("::ffff:10.0.0.1", 1)) == COMPACT_V4  # the IPv4 peer it is
    with pytest.raises(ValueError, match="not an IP address"):
        pack_compact("peer.example", 1)
    with pytest.raises(ValueError, match="port"):
        pack_compact("::1", 70000)
    with pytest.raises(ValueError, match="not an IPv6 address"):
        pack_compact_list([("::1", 1), ("10.0.0.1", 2)], COMPACT_V6)
    with pytest.raises(ValueError, match="not an IPv4 address"):
        pack_compact_list([("::1", 1)], COMPACT_V4)


@pytest.mark.parametrize(("width", "length"), [(6, 5), (6, 7), (6, 17), (18, 1), (18, 6),
                                                (18, 17), (18, 19), (18, 35), (18, 37)])
def test_truncated_and_odd_lists_are_refused(width: int, length: int) -> None:
    with pytest.raises(ValueError, match=f"{length} bytes is not a multiple of {width}"):
        unpack_compact(b"\x01" * length, width, 10)
    with pytest.raises(ValueError):
        compact_count(b"\x01" * length, width)


def test_other_widths_are_a_bug() -> None:
    with pytest.raises(ValueError, match="6 or 18"):
        unpack_compact(b"", 8, 1)


def test_a_huge_list_is_decoded_only_up_to_the_limit() -> None:
    n = 200_000  # 3.6 MB of IPv6 peers
    raw = pack_compact("2001:db8::1", 1) * n
    assert compact_count(raw, COMPACT_V6) == n
    out = unpack_compact(raw, COMPACT_V6, 50)
    assert out == [("2001:db8::1", 1)] * 50
    assert unpack_compact(raw, COMPACT_V6, 0) == [] and unpack_compact(raw, COMPACT_V6, -5) == []


def test_mapped_entries_in_a_v6_list_come_out_as_ipv4() -> None:
    raw = ipaddress.IPv6Address("::ffff:198.51.100.7").packed + b"\x00\x07"
    assert unpack_compact(raw, COMPACT_V6, 5) == [("198.51.100.7", 7)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.ip_addresses(v=6), st.integers(0, 65535)), max_size=40))
def test_v6_round_trip(peers: list[tuple[ipaddress.IPv6Address, int]]) -> None:
    wanted = [(canonical_ip(str(ip)), p) for ip, p in peers]
    native = [(str(ip), p) for ip, p in peers if ip.ipv4_mapped is None]
    raw = pack_compact_list(native, COMPACT_V6)
    assert len(raw) == COMPACT_V6 * len(native)
    assert unpack_compact(raw, COMPACT_V6, len(native)) == [
        w for w, (ip, _) in zip(wanted, peers, strict=True) if ip.ipv4_mapped is None]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([COMPACT_V4, COMPACT_V6]), st.integers(-1, 20))
def test_unpack_random_bytes_only_raises_value_error(raw: bytes, width: int, limit: int) -> None:
    try:
        out = unpack_compact(raw, width, limit)
    except ValueError:
        assert len(raw) % width
        return
    assert len(out) == min(len(raw) // width, max(0, limit))
    assert all(canonical_ip(h) == h and 0 <= p <= 65535 for h, p in out)


@pytest.mark.parametrize(("text", "peer"), [
    ("[::1]:6881", ("::1", 6881)),
    ("[2001:DB8::0:1]:1", ("2001:db8::1", 1)),
    ("[::ffff:127.0.0.1]:80", ("127.0.0.1", 80)),
    ("10.0.0.1:65535", ("10.0.0.1", 65535)),
    ("Peer.Example:80", ("peer.example", 80)),
])
def test_parse_hostport(text: str, peer: tuple[str, int]) -> None:
    assert parse_hostport(text) == peer
    assert parse_hostport(format_peer(*peer)) == peer


@pytest.mark.parametrize(("text", "match"), [
    ("::1:6881", r"must be in brackets, as in \[::1\]:PORT"),
    ("2001:db8::1", "must be in brackets"),
    ("[::1]", r"expected \[IPV6\]:PORT"),
    ("[::1]6881", r"expected \[IPV6\]:PORT"),
    ("[::1:6881", "unclosed"),
    ("[10.0.0.1]:1", "not an IPv6 address"),
    ("[zz::1]:1", "not an IPv6 address"),
    ("[::1]:0", "port must be 1-65535"),
    ("[::1]:65536", "port must be 1-65535"),
    ("[::1]:http", "port must be 1-65535"),
    ("[::1]:", "port must be 1-65535"),
    ("[::]:1", "nobody listens"),
    ("0.0.0.0:1", "nobody listens"),
    ("300.1.1.1:1", "not an IPv4 address"),
    (":1", "expected HOST:PORT"),
    ("10.0.0.1", "expected HOST:PORT"),
    ("a b:1", "not a host name"),
    ("[" + "1" * 400 + "]:1", "longer than"),
])
def test_parse_hostport_refusals(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_hostport(text)
