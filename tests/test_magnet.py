"""torrent.magnet: parsing magnet URIs strictly, every refusal naming its field, and the builder."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path

import pytest
import torrentgen as tg
from hypothesis import given, settings
from hypothesis import strategies as st

from torrent import bencoding, magnet
from torrent.errors import InvalidTorrent
from torrent.magnet import MAX_MAGNET_VALUE, Magnet, is_magnet, magnet_uri, parse_magnet
from torrent.metainfo import parse

HASH = bytes(range(20))
HEX = HASH.hex()
B32 = base64.b32encode(HASH).decode()


def test_hex_magnet_with_everything() -> None:
    uri = (
        f"magnet:?xt=urn:btih:{HEX.upper()}&dn=Ubuntu+22.04%20desktop"
        "&tr=http%3A%2F%2Ftracker.example%2Fannounce"
        "&tr=udp://tracker.example:1337&tr=wss://tracker.example/ws"
        "&tr=http%3A%2F%2Ftracker.example%2Fannounce"
        "&x.pe=10.0.0.1:6881&x.pe=%5B2001:db8::1%5D:51413&x.pe=peer.example:80"
        "&ws=https://mirror.example/files/&ws=ftp://mirror.example/"
        "&so=0,2,4-6&kt=linux"
    )
    m = parse_magnet(uri)
    assert m.info_hash == HASH and m.info_hash_hex == HEX
    assert m.display_name == "Ubuntu 22.04 desktop"
    # each tr its own tier, order kept, duplicate and unusable scheme dropped
    assert m.trackers == (("http://tracker.example/announce",), ("udp://tracker.example:1337",))
    assert m.peers == (("10.0.0.1", 6881), ("2001:db8::1", 51413), ("peer.example", 80))
    assert m.web_seeds == ("https://mirror.example/files/",)
    assert m.select_only == (0, 2, 4, 5, 6)
    assert ("kt", "linux") in m.params and m.params[0] == ("xt", f"urn:btih:{HEX.upper()}")


def test_base32_magnet_and_minimal_fields() -> None:
    for text in (B32, B32.lower()):
        m = parse_magnet(f"  magnet:?xt=urn:btih:{text}\n")
        assert m == Magnet(info_hash=HASH, params=(("xt", f"urn:btih:{text}"),))
    assert parse_magnet(f"MAGNET:?XT=urn:btih:{HEX}".replace("XT", "xt")).info_hash == HASH


def test_plus_is_a_space_only_in_the_name() -> None:
    m = parse_magnet(f"magnet:?xt=urn:btih:{HEX}&dn=a+b%2Bc&tr=http://t.example/a+b")
    assert m.display_name == "a b+c"
    assert m.trackers == (("http://t.example/a+b",),)


def test_several_xt_take_the_btih_one() -> None:
    btmh = "urn:btmh:1220" + "ab" * 32
    m = parse_magnet(f"magnet:?xt={btmh}&xt=urn:btih:{HEX}&xt.1=urn:sha1:ABC")
    assert m.info_hash == HASH  # a hybrid: the swarm is the v1 one
    assert m.info_hash_v2 == bytes.fromhex("ab" * 32) and not m.v2_only
    m = parse_magnet(f"magnet:?xt.1=urn:btih:{HEX}&xt.2=urn:btih:{B32}")
    assert m.info_hash == HASH


def test_so_ranges_merge_and_sort() -> None:
    m = parse_magnet(f"magnet:?xt=urn:btih:{HEX}&so=8-9,1&so=3,1-2")
    assert m.select_only == (1, 2, 3, 8, 9)


def test_ipv6_and_ipv4_peers_are_normalised_and_deduplicated() -> None:
    m = parse_magnet(
        f"magnet:?xt=urn:btih:{HEX}&x.pe=[2001:DB8:0::1]:1&x.pe=[2001:db8::1]:1&x.pe=127.0.0.1:2"
    )
    assert m.peers == (("2001:db8::1", 1), ("127.0.0.1", 2))


BAD: list[tuple[str, str, str]] = [
    # (id, uri, field the message must name)
    ("not-magnet", "http://example.com/?xt=urn:btih:" + HEX, "uri"),
    ("no-query", "magnet:xt=urn:btih:" + HEX, "uri"),
    ("missing-xt", "magnet:?dn=x&tr=http://t.example/", "xt"),
    ("empty", "magnet:?", "xt"),
    ("bad-hex", "magnet:?xt=urn:btih:" + "g" * 40, "xt"),
    ("hex-with-space", "magnet:?xt=urn:btih:" + HEX[:38] + "%20a", "xt"),
    ("bad-base32", "magnet:?xt=urn:btih:" + "1" * 32, "xt"),
    ("short-hash", "magnet:?xt=urn:btih:" + HEX[:39], "xt"),
    ("long-hash", "magnet:?xt=urn:btih:" + HEX + "0", "xt"),
    ("empty-hash", "magnet:?xt=urn:btih:", "xt"),
    ("btmh-short", "magnet:?xt=urn:btmh:1220" + "ab" * 31, "xt"),
    ("btmh-long", "magnet:?xt=urn:btmh:1220" + "ab" * 33, "xt"),
    ("btmh-not-hex", "magnet:?xt=urn:btmh:1220" + "zz" * 32, "xt"),
    ("btmh-not-sha256", "magnet:?xt=urn:btmh:1320" + "ab" * 32, "xt"),
    ("btmh-no-multihash", "magnet:?xt=urn:btmh:" + "ab" * 34, "xt"),
    ("two-btmh", "magnet:?xt=urn:btmh:1220" + "ab" * 32 + "&xt=urn:btmh:1220" + "cd" * 32,
     "xt"),
    ("other-urn", "magnet:?xt=urn:sha1:ABCDEF", "xt"),
    ("two-hashes", f"magnet:?xt=urn:btih:{HEX}&xt=urn:btih:{'0' * 40}", "xt"),
    ("bad-escape", f"magnet:?xt=urn:btih:{HEX}&tr=http://a/%zz", "tr"),
    ("truncated-escape", f"magnet:?xt=urn:btih:{HEX}&dn=abc%4", "dn"),
    ("not-utf8", f"magnet:?xt=urn:btih:{HEX}&dn=%ff%fe", "dn"),
    ("control-in-name", f"magnet:?xt=urn:btih:{HEX}&dn=a%0Ab", "dn"),
    ("control-in-tracker", f"magnet:?xt=urn:btih:{HEX}&tr=http://a/%00", "tr"),
    ("pe-no-port", f"magnet:?xt=urn:btih:{HEX}&x.pe=10.0.0.1", "x.pe"),
    ("pe-bad-port", f"magnet:?xt=urn:btih:{HEX}&x.pe=10.0.0.1:http", "x.pe"),
    ("pe-port-zero", f"magnet:?xt=urn:btih:{HEX}&x.pe=10.0.0.1:0", "x.pe"),
    ("pe-port-big", f"magnet:?xt=urn:btih:{HEX}&x.pe=10.0.0.1:65536", "x.pe"),
    ("pe-empty-host", f"magnet:?xt=urn:btih:{HEX}&x.pe=:6881", "x.pe"),
    ("pe-bad-ipv4", f"magnet:?xt=urn:btih:{HEX}&x.pe=300.1.1.1:6881", "x.pe"),
    ("pe-bare-ipv6", f"magnet:?xt=urn:btih:{HEX}&x.pe=2001:db8::1:6881", "x.pe"),
    ("pe-bad-ipv6", f"magnet:?xt=urn:btih:{HEX}&x.pe=[2001:zz::1]:6881", "x.pe"),
    ("pe-unclosed", f"magnet:?xt=urn:btih:{HEX}&x.pe=[2001:db8::1:6881", "x.pe"),
    ("pe-bad-host", f"magnet:?xt=urn:btih:{HEX}&x.pe=a%20b:6881", "x.pe"),
    ("so-bad", f"magnet:?xt=urn:btih:{HEX}&so=1,x", "so"),
    ("so-backwards", f"magnet:?xt=urn:btih:{HEX}&so=5-2", "so"),
    ("so-huge", f"magnet:?xt=urn:btih:{HEX}&so=0-999999999", "so"),
    ("so-negative", f"magnet:?xt=urn:btih:{HEX}&so=-1", "so"),
    ("oversized", f"magnet:?xt=urn:btih:{HEX}&dn=" + "a" * magnet.MAX_MAGNET_LENGTH, "uri"),
    ("long-value", f"magnet:?xt=urn:btih:{HEX}&dn=" + "a" * (magnet.MAX_MAGNET_VALUE + 1), "dn"),
    ("too-many-tr", f"magnet:?xt=urn:btih:{HEX}"
     + "".join(f"&tr=udp://t{i}.example:1" for i in range(magnet.MAX_MAGNET_TRACKERS + 1)), "tr"),
    ("too-many-pe", f"magnet:?xt=urn:btih:{HEX}"
     + "".join(f"&x.pe=10.0.{i // 250}.{i % 250}:1" for i in range(magnet.MAX_MAGNET_PEERS + 1)),
     "x.pe"),
    ("too-many-ws", f"magnet:?xt=urn:btih:{HEX}"
     + "&ws=http://w.example/" * (magnet.MAX_MAGNET_WEB_SEEDS + 1), "ws"),
    ("too-many-params", f"magnet:?xt=urn:btih:{HEX}" + "&a=" * magnet.MAX_MAGNET_PARAMS, "uri"),
]


@pytest.mark.parametrize(("uri", "field"), [(u, f) for _, u, f in BAD], ids=[i for i, _, _ in BAD])
def test_malformed_magnet_is_refused_naming_the_field(uri: str, field: str) -> None:
    with pytest.raises(InvalidTorrent) as info:
        parse_magnet(uri)
    msg = str(info.value)
    assert msg.startswith(f"invalid magnet: {field}: "), msg
    assert "\n" not in msg and len(msg) < 300
    assert info.value.exit_code == 3


def test_a_v2_magnet_is_known_by_its_truncated_v2_hash() -> None:
    """BEP 52: handshakes, trackers and the DHT carry the first 20 bytes of the v2 hash."""
    v2 = bytes(range(32))
    m = parse_magnet("magnet:?xt=urn:btmh:1220" + v2.hex().upper() + "&dn=x")
    assert m.info_hash_v2 == v2 and m.info_hash == v2[:20] and m.v2_only
    assert m.info_hash_hex == v2[:20].hex()
    # the same hash twice is one torrent
    twice = parse_magnet("magnet:?xt=urn:btmh:1220" + v2.hex() + "&xt.1=urn:btmh:1220"
                         + v2.hex())
    assert twice.info_hash_v2 == v2


def test_magnet_uri_of_v2_and_hybrid_torrents_round_trips(tmp_path: Path) -> None:
    from helpers.payload import write_tree

    from torrent import creator, metainfo

    write_tree(tmp_path / "d", {"a": 40_000, "b": 3}, seed=1)
    for version in ("v2", "hybrid"):
        meta = metainfo.parse(creator.create_torrent(str(tmp_path / "d"), version=version,
                                                     piece_length=16384))
        uri = magnet.magnet_uri(meta)
        assert ("urn:btih:" in uri) == (version == "hybrid")
        m = parse_magnet(uri)
        assert m.info_hash == meta.info_hash and m.info_hash_v2 == meta.info_hash_v2
        assert m.v2_only == (version == "v2")


def test_bounds_are_inclusive() -> None:
    trackers = "".join(f"&tr=udp://t{i}.example:1" for i in range(magnet.MAX_MAGNET_TRACKERS))
    assert len(parse_magnet(f"magnet:?xt=urn:btih:{HEX}{trackers}").trackers) == (
        magnet.MAX_MAGNET_TRACKERS
    )
    name = "a" * magnet.MAX_MAGNET_VALUE
    assert parse_magnet(f"magnet:?xt=urn:btih:{HEX}&dn={name}").display_name == name
    so = f"0-{magnet.MAX_SELECT_ONLY - 1}"
    assert len(parse_magnet(f"magnet:?xt=urn:btih:{HEX}&so={so}").select_only) == (
        magnet.MAX_SELECT_ONLY
    )


def test_is_magnet() -> None:
    assert is_magnet("magnet:?xt=urn:btih:" + HEX)
    assert is_magnet("  MAGNET:?x")
    assert not is_magnet("file.torrent")
    assert not is_magnet("./magnet:?x")
    assert not is_magnet(b"magnet:?x")  # type: ignore[arg-type]


def test_non_string_is_invalid_torrent() -> None:
    with pytest.raises(InvalidTorrent, match="uri"):
        parse_magnet(b"magnet:?xt=urn:btih:" + HEX.encode())  # type: ignore[arg-type]


def test_builder_round_trips_from_a_torrent() -> None:
    top = tg.base_multi()
    top[b"announce-list"] = [[b"http://a.example/ann?x=1&y=2"], [b"udp://b.example:80"]]
    top[b"info"][b"name"] = "dir with spaces & ünïcode+plus".encode()
    meta = parse(bencoding.encode(top))
    uri = magnet_uri(
        meta, peers=[("127.0.0.1", 6881), ("::1", 6882)], web_seeds=["http://w.example/"],
        select_only=[0, 2],
    )
    assert uri.startswith("magnet:?xt=urn:btih:" + meta.info_hash_hex)
    m = parse_magnet(uri)
    assert m.info_hash == meta.info_hash
    assert m.display_name == "dir with spaces & ünïcode+plus"
    assert m.trackers == (("http://a.example/ann?x=1&y=2",), ("udp://b.example:80",))
    assert m.peers == (("127.0.0.1", 6881), ("::1", 6882))
    assert m.web_seeds == ("http://w.example/",)
    assert m.select_only == (0, 2)


@pytest.mark.parametrize("select", [
    range(2000),  # index by index, 8,890 characters: over MAX_MAGNET_VALUE
    range(0, 20_000, 2),  # no runs at all: split over several 'so' parameters
    [5, 1, 2, 3, 9, 3],
])
def test_builder_writes_select_only_as_ranges_that_parse_back(select: Sequence[int]) -> None:
    uri = magnet_uri(HASH, select_only=list(select))
    values = [p.partition("=")[2] for p in uri.split("&") if p.startswith("so=")]
    assert all(len(v) <= MAX_MAGNET_VALUE for v in values)
    assert parse_magnet(uri).select_only == tuple(sorted(set(select)))
    if select == range(2000):
        assert values == ["0-1999"]


def test_builder_from_a_bare_hash() -> None:
    uri = magnet_uri(HASH, trackers=["udp://t.example:1"])
    assert parse_magnet(uri) == Magnet(
        info_hash=HASH, trackers=(("udp://t.example:1",),),
        params=(("xt", f"urn:btih:{HEX}"), ("tr", "udp://t.example:1")),
    )
    with pytest.raises(ValueError):
        magnet_uri(b"short")


_MAGNETISH = st.text(
    alphabet=st.sampled_from(
        list("magnet:?xt=urn:btih&dnrpws.%[]0123456789abcdefABCDEF+,-/ \x00é")
    ),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.text(max_size=300),
    _MAGNETISH,
    _MAGNETISH.map(lambda s: "magnet:?" + s),
    _MAGNETISH.map(lambda s: f"magnet:?xt=urn:btih:{HEX}&" + s),
))
def test_random_strings_only_raise_invalid_torrent(s: str) -> None:
    try:
        m = parse_magnet(s)
    except InvalidTorrent as exc:
        assert str(exc).startswith("invalid magnet: ")
        assert "\n" not in str(exc)
        return
    assert len(m.info_hash) == 20
    assert len(m.trackers) <= magnet.MAX_MAGNET_TRACKERS
