"""Tests of the DHT routing table (torrent/dht/routing.py), with injected time and randomness."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torrent.dht import routing
from torrent.dht.krpc import NodeInfo
from torrent.dht.routing import (
    BAD_AFTER_FAILURES,
    MAX_BUCKETS,
    QUESTIONABLE_AFTER,
    Insert,
    K,
    NodeState,
    RoutingTable,
    bep42_exempt,
    bep42_id,
    bep42_valid,
    distance,
)

OWN = bytes(20)  # our id: 0, so ids with many leading zero bits are "near"


def nid(top: int, low: int = 0) -> bytes:
    """An id whose first byte is ``top`` and whose last two bytes are ``low``."""
    return bytes([top]) + bytes(17) + low.to_bytes(2, "big")


def ip(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def table(**kw: object) -> RoutingTable:
    return RoutingTable(OWN, 0.0, rng=random.Random(1), **kw)  # type: ignore[arg-type]


# BEP 42's own examples: address, the last byte, the id's first 21 bits.
BEP42_VECTORS = [
    ("124.31.75.21", 1, "5fbfbf"),
    ("21.75.31.124", 86, "5a3ce9"),
    ("65.23.51.170", 22, "a5d432"),
    ("84.124.73.14", 65, "1b0321"),
    ("43.213.53.83", 90, "e56f6c"),
]


@pytest.mark.parametrize(("addr", "rand", "prefix"), BEP42_VECTORS)
def test_bep42_vectors(addr: str, rand: int, prefix: str) -> None:
    example = bytes.fromhex(prefix) + bytes(16) + bytes([rand])
    assert bep42_valid(example, addr)
    made = bep42_id(addr, rand, bytes(17))
    assert made[:2] == example[:2] and made[2] & 0xF8 == example[2] & 0xF8
    assert bep42_valid(made, addr)
    # One bit off in the first 21, or another last byte: refused.
    assert not bep42_valid(bytes([example[0] ^ 1]) + example[1:], addr)
    assert not bep42_valid(example[:19] + bytes([(rand + 1) & 0xFF]), addr)


def test_bep42_ipv6_and_exemptions() -> None:
    good = bep42_id("2001:db8::1", 7, bytes(range(17)))
    assert bep42_valid(good, "2001:db8::1")
    assert not bep42_valid(good, "2001:db9::1")
    for addr in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.0.1",
                 "::1", "fd00::1", "fe80::1"):
        assert bep42_exempt(addr) and bep42_valid(b"\xff" * 20, addr)
    assert not bep42_exempt("8.8.8.8") and not bep42_valid(b"\xff" * 20, "8.8.8.8")
    assert not bep42_valid(b"\xff" * 19, "10.0.0.1")
    assert not bep42_valid(b"\xff" * 20, "not an address")


def test_first_bucket_fills_then_splits_only_near_our_id() -> None:
    t = table()
    # K far nodes (top bit set) fill the only bucket.
    for i in range(K):
        assert t.heard_from(nid(0x80 + i), ip(i), 1, 1.0, response=True) == Insert.ADDED
    assert t.bucket_count == 1
    # One more far node: the bucket holds our id, so it splits; the far half is full.
    assert t.heard_from(nid(0xF0), ip(100), 1, 1.0, response=True) == Insert.REPLACEMENT
    assert t.bucket_count == 2
    # Near nodes (top bit clear) go into the other half, splitting it as needed:
    # 0x01..0x17 fill [0x10, 0x20), [0x08, 0x10), [0x04, 0x08)... without overflowing one.
    for i in range(3 * K - 1):
        assert t.heard_from(nid(i + 1), ip(200 + i), 1, 1.0, response=True) == Insert.ADDED
    assert t.bucket_count == 5 + 1  # [0x80..), [0x40..), [0x20..), [0x10..), [0x08..), the rest
    # The next one lands in the full [0x10, 0x20), which does not hold our id: it waits.
    assert t.heard_from(nid(0x18), ip(400), 1, 1.0, response=True) == Insert.REPLACEMENT
    # The far bucket never split again and still holds exactly K.
    far = [n for n in t.nodes() if n.id[0] >= 0x80]
    assert len(far) == K
    assert len(t) == K + 3 * K - 1


def test_splitting_is_bounded_by_160_buckets() -> None:
    t = table(enforce_bep42=False)
    # Ids one bit apart from ours at every depth: the worst case for splitting.
    for bit in range(160):
        for j in range(K + 1):
            n = (1 << bit) | (j if bit > 4 else 0)
            if n == 0:
                continue
            t.heard_from(n.to_bytes(20, "big"), ip(bit * 16 + j), 1, 1.0, response=True)
    assert t.bucket_count <= MAX_BUCKETS
    assert len(t) <= MAX_BUCKETS * K


def test_node_states_follow_time() -> None:
    t = table()
    t.heard_from(nid(0x80), ip(1), 1, 0.0, response=True)
    node = t.get(nid(0x80))
    assert node is not None
    assert node.state(QUESTIONABLE_AFTER - 1) == NodeState.GOOD
    assert node.state(QUESTIONABLE_AFTER) == NodeState.QUESTIONABLE
    # It queried us at 1000 s: it answered once, so it is good again for 15 minutes.
    t.heard_from(nid(0x80), ip(1), 1, 1000.0, response=False)
    assert node.state(1000.0 + QUESTIONABLE_AFTER - 1) == NodeState.GOOD
    assert node.state(1000.0 + QUESTIONABLE_AFTER) == NodeState.QUESTIONABLE
    # A node that only ever queried us is never good.
    t.heard_from(nid(0x81), ip(2), 1, 0.0, response=False)
    other = t.get(nid(0x81))
    assert other is not None and other.state(1.0) == NodeState.QUESTIONABLE
    # Failures make a node bad; an answer clears them.
    for _ in range(BAD_AFTER_FAILURES):
        t.failed(nid(0x80), 2000.0)
    assert node.state(2000.0) == NodeState.BAD
    assert nid(0x80) not in [n.id for n in t.closest(nid(0x80))]
    t.heard_from(nid(0x80), ip(1), 1, 2001.0, response=True)
    assert node.state(2001.0) == NodeState.GOOD


def _full_far_bucket(t: RoutingTable) -> None:
    for i in range(K):
        t.heard_from(nid(0x80 + i), ip(i), 1, 0.0, response=True)
    t.heard_from(nid(0x01), ip(50), 1, 0.0, response=True)  # forces the split
    assert t.bucket_count >= 2


def test_bad_node_gives_its_place_to_the_newest_replacement() -> None:
    t = table()
    _full_far_bucket(t)
    assert t.heard_from(nid(0xF0), ip(90), 1, 10.0, response=True) == Insert.REPLACEMENT
    assert t.heard_from(nid(0xF1), ip(91), 1, 20.0, response=True) == Insert.REPLACEMENT
    for _ in range(BAD_AFTER_FAILURES - 1):
        t.failed(nid(0x80), 30.0)
    assert nid(0x80) in [n.id for n in t.nodes()]  # not bad yet
    t.failed(nid(0x80), 30.0)
    ids = [n.id for n in t.nodes()]
    assert nid(0x80) not in ids and nid(0xF1) in ids and nid(0xF0) not in ids
    assert t.get(nid(0x80)) is None


def test_a_bad_node_is_replaced_by_the_next_newcomer() -> None:
    t = table()
    _full_far_bucket(t)
    for _ in range(BAD_AFTER_FAILURES):
        t.failed(nid(0x83), 5.0)  # no replacement waiting: it stays, bad
    assert nid(0x83) in [n.id for n in t.nodes()]
    assert t.heard_from(nid(0xF5), ip(95), 1, 6.0, response=True) == Insert.ADDED
    assert nid(0x83) not in [n.id for n in t.nodes()]


def test_replacement_cache_is_bounded() -> None:
    t = table()
    _full_far_bucket(t)
    for i in range(3 * K):
        t.heard_from(nid(0xC0 + i), ip(300 + i), 1, float(i), response=True)
    # Only the K most recent replacements are remembered.
    remembered = [i for i in range(3 * K) if t.get(nid(0xC0 + i)) is not None]
    assert remembered == list(range(2 * K, 3 * K))


def test_hostile_nodes_never_enter() -> None:
    t = table()
    assert t.heard_from(OWN, ip(1), 1, 0.0, response=True) == Insert.REJECTED  # our own id
    assert t.heard_from(nid(0x80), ip(1), 0, 0.0, response=True) == Insert.REJECTED  # port 0
    assert t.heard_from(nid(0x80), "::1", 1, 0.0, response=True) == Insert.REJECTED  # family
    assert t.heard_from(nid(0x80), "224.0.0.1", 1, 0.0, response=True) == Insert.REJECTED
    assert t.heard_from(b"short", ip(1), 1, 0.0, response=True) == Insert.REJECTED
    # BEP 42: a public address with an id not derived from it.
    assert t.heard_from(nid(0x80), "8.8.8.8", 1, 0.0, response=True) == Insert.REJECTED
    ok = bep42_id("8.8.8.8", 3, bytes(17))
    assert t.heard_from(ok, "8.8.8.8", 1, 0.0, response=True) == Insert.ADDED
    assert table(enforce_bep42=False).heard_from(
        nid(0x80), "8.8.8.8", 1, 0.0, response=True) == Insert.ADDED
    assert len(t) == 1


def test_a_live_node_cannot_be_moved_or_shadowed() -> None:
    t = table()
    t.heard_from(nid(0x80), ip(1), 1, 0.0, response=True)
    # Its id from another address (a spoofer): ignored while it is not bad.
    assert t.heard_from(nid(0x80), ip(2), 1, 1.0, response=True) == Insert.REJECTED
    node = t.get(nid(0x80))
    assert node is not None and node.ip == ip(1)
    # Another id from its address: refused while it is good.
    assert t.heard_from(nid(0x90), ip(1), 1, 1.0, response=True) == Insert.REJECTED
    # Once it is bad, it may move (the node got a new address).
    for _ in range(BAD_AFTER_FAILURES):
        t.failed(nid(0x80), 2.0)
    assert t.heard_from(nid(0x80), ip(2), 1, 3.0, response=True) == Insert.UPDATED
    assert node.ip == ip(2) and node.state(3.0) == NodeState.GOOD
    # Once it is questionable, its old address may be taken by a new id.
    assert t.heard_from(nid(0x90), ip(2), 1, 3.0 + QUESTIONABLE_AFTER, response=True) \
        == Insert.ADDED
    assert t.get(nid(0x80)) is None


def test_closest_orders_by_xor_distance() -> None:
    t = table()
    rng = random.Random(7)
    ids = [bytes(rng.randrange(256) for _ in range(20)) for _ in range(200)]
    for i, node_id in enumerate(ids):
        t.heard_from(node_id, ip(i), 1, 0.0, response=True)
    target = bytes(rng.randrange(256) for _ in range(20))
    got = t.closest(target, 8)
    assert len(got) == 8
    dists = [distance(n.id, target) for n in got]
    assert dists == sorted(dists)
    inside = [n.id for n in t.nodes()]
    assert dists[0] == min(distance(i, target) for i in inside)


def test_nodes_to_ping_and_refresh_follow_time() -> None:
    t = table()
    t.heard_from(nid(0x80), ip(1), 1, 0.0, response=True)
    t.heard_from(nid(0x81), ip(2), 1, 100.0, response=True)
    assert t.nodes_to_ping(QUESTIONABLE_AFTER - 1) == []
    assert [n.id for n in t.nodes_to_ping(QUESTIONABLE_AFTER + 100)] == [nid(0x80), nid(0x81)]
    assert [n.id for n in t.nodes_to_ping(QUESTIONABLE_AFTER + 100, limit=1)] == [nid(0x80)]
    # The one bucket changed at 100 s: refreshed once 15 minutes later, then not again.
    assert t.nodes_to_refresh(100.0 + QUESTIONABLE_AFTER - 1) == []
    targets = t.nodes_to_refresh(100.0 + QUESTIONABLE_AFTER)
    assert len(targets) == 1 and len(targets[0]) == 20
    assert t.nodes_to_refresh(100.0 + QUESTIONABLE_AFTER + 1) == []
    assert len(t.nodes_to_refresh(100.0 + 2 * QUESTIONABLE_AFTER)) == 1


def test_save_and_load() -> None:
    t = table()
    for i in range(20):
        t.heard_from(nid(0x10 + i * 8), ip(i), 1000 + i, 0.0, response=True)
    for _ in range(BAD_AFTER_FAILURES):
        t.failed(nid(0x10), 1.0)
    data = routing.dump(t, 1.0)
    assert len(data) <= routing.MAX_STATE_SIZE
    saved = routing.load(data)
    assert saved.own_id == OWN
    assert {n.id for n in saved.nodes} == {n.id for n in t.nodes()} - {nid(0x10)}
    fresh = RoutingTable(OWN, 5.0, rng=random.Random(2))
    assert fresh.restore(saved.nodes, 5.0) == len(saved.nodes)
    # Restored nodes are questionable until they answer.
    assert all(n.state(5.0) == NodeState.QUESTIONABLE for n in fresh.nodes())
    v6 = RoutingTable(OWN, 0.0, family=6)
    v6.heard_from(nid(0x80), "::1", 7, 0.0, response=True)
    assert routing.load(routing.dump(v6, 0.0)).nodes == (NodeInfo(nid(0x80), "::1", 7),)


@pytest.mark.parametrize("data", [
    b"", b"garbage", b"le", b"d2:id3:abce", b"d2:id20:" + bytes(20) + b"5:nodes3:abce",
    b"d2:id20:" + bytes(20) + b"5:nodesi5ee", b"x" * (routing.MAX_STATE_SIZE + 1),
])
def test_a_corrupt_state_is_an_empty_one(data: bytes) -> None:
    assert routing.load(data) == routing.SavedState(None, ())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_load_never_raises(data: bytes) -> None:
    saved = routing.load(data)
    assert saved.own_id is None or len(saved.own_id) == 20


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**160 - 1), st.integers(0, 40), st.booleans(),
                          st.integers(0, 3)), max_size=120))
def test_invariants_under_any_sequence(ops: list[tuple[int, int, bool, int]]) -> None:
    t = table(enforce_bep42=False)
    now = 0.0
    for n, addr, response, fails in ops:
        now += 30.0
        node_id = n.to_bytes(20, "big")
        t.heard_from(node_id, ip(addr), 1, now, response=response)
        for _ in range(fails):
            t.failed(node_id, now)
    buckets = t._buckets
    assert buckets[0].lo == 0 and buckets[-1].hi == 2**160
    for a, b in itertools.pairwise(buckets):
        assert a.hi == b.lo
    for b in buckets:
        assert len(b.nodes) <= K and len(b.replacements) <= K
        for node in b.nodes + b.replacements:
            assert b.covers(int.from_bytes(node.id, "big"))
            assert t.get(node.id) is node
    addrs = [(n.ip, n.port) for b in buckets for n in b.nodes + b.replacements]
    assert len(addrs) == len(set(addrs))
    assert len(t._by_id) == len(addrs)
