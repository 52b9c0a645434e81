"""Lookups (torrent/dht/lookup.py) on a simulated in-memory DHT of a few hundred nodes.

Every node of the network is a real :class:`RoutingTable` plus
:class:`DhtServer`; queries and answers go through the KRPC codec. Time is a
number the test advances; ids come from a seeded generator, so every run is
the same.
"""

from __future__ import annotations

import itertools
import random

import pytest

from torrent.dht import krpc
from torrent.dht.krpc import Address, Error, NodeInfo, Response
from torrent.dht.lookup import (
    ALPHA,
    MAX_CANDIDATES,
    MAX_PEERS,
    QUERY_TIMEOUT,
    SLOW_AFTER,
    K,
    Lookup,
    LookupKind,
)
from torrent.dht.node import DhtServer
from torrent.dht.routing import RoutingTable, distance


class Network:
    """``n`` nodes at 10.0.x.y:6881, each knowing every other one (as far as its table keeps)."""

    def __init__(self, n: int, seed: int, dead: float = 0.0) -> None:
        rng = random.Random(seed)
        self.rng = rng
        self.ids = [rng.randbytes(20) for _ in range(n)]
        self.addrs: list[Address] = [(f"10.0.{i >> 8}.{i & 255}", 6881) for i in range(n)]
        self.servers: dict[Address, DhtServer] = {}
        self.dead = {self.addrs[i] for i in rng.sample(range(1, n), int(n * dead))}
        for i in range(n):
            t = RoutingTable(self.ids[i], 0.0, rng=random.Random(i))
            others = list(range(n))
            rng.shuffle(others)
            for j in others:
                if j != i:
                    t.heard_from(self.ids[j], *self.addrs[j], 0.0, response=True)
            self.servers[self.addrs[i]] = DhtServer(t, 0.0, secret_source=rng.randbytes)
        self.tids = (i.to_bytes(4, "big") for i in itertools.count())
        self.sent = 0

    def new_tid(self) -> bytes:
        return next(self.tids)

    def ask(self, src: Address, dst: Address, query: krpc.Query,
            now: float) -> Response | Error | None:
        """Send ``query`` through the codec and back; None if ``dst`` is dead or silent."""
        self.sent += 1
        if dst in self.dead:
            return None
        decoded = krpc.decode(krpc.encode(query))
        assert isinstance(decoded, krpc.Ping | krpc.FindNode | krpc.GetPeers
                          | krpc.AnnouncePeer | krpc.UnknownQuery)
        reply = self.servers[dst].answer(src, decoded, now)
        if reply is None:
            return None
        back = krpc.decode(krpc.encode(reply))
        assert isinstance(back, Response | Error)
        return back

    def run(self, lookup: Lookup, src: Address, now: float) -> float:
        """Drive ``lookup`` to the end; answers arrive at once, the dead time out."""
        for _ in range(1000):
            if lookup.done:
                return now
            queries = lookup.next_queries(now)
            for addr, q in queries:
                reply = self.ask(src, addr, q, now)
                if reply is not None:
                    assert lookup.response(addr, reply, now)
            if not queries:
                now = max(now, lookup.deadline(now) or now)
                lookup.timeout(now)
        raise AssertionError("the lookup never finished")

    def truly_closest(self, target: bytes) -> list[bytes]:
        live = [self.ids[i] for i, a in enumerate(self.addrs) if a not in self.dead]
        return sorted(live, key=lambda i: distance(i, target))[:K]


@pytest.fixture(scope="module")
def net() -> Network:
    return Network(300, seed=5, dead=0.1)


def test_find_node_converges_on_the_true_closest(net: Network) -> None:
    src = net.addrs[0]
    table = net.servers[src].table
    for trial in range(5):
        target = net.rng.randbytes(20)
        lookup = Lookup(LookupKind.FIND_NODE, target, table.own_id,
                        table.closest(target, K), net.new_tid)
        net.run(lookup, src, 100.0 * trial)
        got = [n.id for n in lookup.closest()]
        expected = [i for i in net.truly_closest(target) if i != table.own_id][:K]
        assert got == expected[: len(got)] and len(got) == K
        assert lookup.queries_sent < 100


def test_get_peers_announce_then_find(net: Network) -> None:
    info_hash = net.rng.randbytes(20)
    seeder = net.addrs[1]
    t = net.servers[seeder].table
    lookup = Lookup(LookupKind.GET_PEERS, info_hash, t.own_id, t.closest(info_hash), net.new_tid)
    now = net.run(lookup, seeder, 1000.0)
    assert lookup.peers == []
    targets = lookup.announce_targets()
    assert [n.id for n, _ in targets] == [
        i for i in net.truly_closest(info_hash) if i != t.own_id][:K]
    for addr, q in lookup.announce_queries(6881, implied_port=True):
        reply = net.ask(seeder, addr, q, now)
        assert isinstance(reply, Response)
    # Another node finds the seeder; with implied_port the port is the UDP source port.
    leecher = net.addrs[2]
    t2 = net.servers[leecher].table
    found = Lookup(LookupKind.GET_PEERS, info_hash, t2.own_id, t2.closest(info_hash),
                   net.new_tid)
    net.run(found, leecher, now + 1)
    assert found.peers == [seeder]


def test_bootstrap_from_a_router_address_only(net: Network) -> None:
    # A newcomer that knows nothing but one router's address.
    own = net.rng.randbytes(20)
    lookup = Lookup(LookupKind.FIND_NODE, own, own, [], net.new_tid, bootstrap=[net.addrs[3]])
    net.run(lookup, ("10.9.9.9", 6881), 5000.0)
    assert [n.id for n in lookup.closest()] == net.truly_closest(own)


def _node(i: int) -> NodeInfo:
    return NodeInfo(bytes([i]) * 20, f"10.1.0.{i}", 6881)


def test_alpha_in_flight_and_slow_queries() -> None:
    target = bytes(20)
    lk = Lookup(LookupKind.GET_PEERS, target, b"\xff" * 20, [_node(i) for i in range(1, 11)],
                lambda: b"tt")
    first = lk.next_queries(0.0)
    assert len(first) == ALPHA
    assert [a for a, _ in first] == [("10.1.0.1", 6881), ("10.1.0.2", 6881), ("10.1.0.3", 6881)]
    assert lk.next_queries(1.0) == []  # all three still count
    assert lk.deadline(1.0) == SLOW_AFTER
    assert lk.deadline(SLOW_AFTER) == QUERY_TIMEOUT
    # Slow ones stop counting: three more go out; nothing has failed yet.
    assert len(lk.next_queries(SLOW_AFTER)) == ALPHA
    assert lk.timeout(SLOW_AFTER) == []
    failed = lk.timeout(QUERY_TIMEOUT)
    assert failed == [a for a, _ in first]
    assert not lk.done


def test_hostile_answers_are_ignored_or_fail_the_node() -> None:
    own = b"\xff" * 20
    tids = (bytes([i]) for i in itertools.count())
    lk = Lookup(LookupKind.GET_PEERS, bytes(20), own, [_node(1), _node(2), _node(3)],
                lambda: next(tids))
    (a1, q1), (a2, q2), (a3, q3) = lk.next_queries(0.0)
    # Unknown address, wrong tid, not in flight: ignored.
    assert not lk.response(("6.6.6.6", 1), Response(q1.tid, _node(1).id), 0.1)
    assert not lk.response(a1, Response(b"zz", _node(1).id), 0.1)
    assert lk.ignored == 2
    # A node answering with our own id fails, and its nodes are not used.
    assert lk.response(a1, Response(q1.tid, own, nodes=(_node(9),)), 0.2)
    assert not lk.response(a1, Response(q1.tid, own), 0.3)  # a repeat: ignored
    # A node answering under another id than the one it was listed with fails too.
    assert lk.response(a2, Response(q2.tid, _node(7).id, nodes=(_node(9),)), 0.2)
    # An error fails the node.
    assert lk.response(a3, Error(q3.tid, 202, "Server Error"), 0.2)
    assert lk.done and lk.closest() == [] and lk.announce_targets() == []
    assert lk.next_queries(1.0) == []


def test_nodes_listing_our_own_id_or_floods_are_bounded() -> None:
    own = b"\xff" * 20
    tids = (i.to_bytes(3, "big") for i in itertools.count())
    lk = Lookup(LookupKind.GET_PEERS, bytes(20), own, [_node(1)], lambda: next(tids))
    ((addr, q),) = lk.next_queries(0.0)
    values = tuple((f"10.2.{i >> 8}.{i & 255}", 1) for i in range(100))
    nodes = (NodeInfo(own, "10.3.0.1", 1), *(NodeInfo(bytes([0, i]) * 10, f"10.3.1.{i}", 1)
                                               for i in range(16)))
    assert lk.response(addr, Response(q.tid, _node(1).id, nodes=nodes, values=values,
                                      token=b"tok"), 0.1)
    assert own not in [c.id for c in lk._cands.values()]
    # Many answers, each full of new nodes and values: every set stays bounded.
    for round_ in range(40):
        for j, (addr, q) in enumerate(lk.next_queries(round_ + 0.5)):
            vals = tuple((f"10.{4 + round_}.{j}.{i}", 1) for i in range(100))
            lk.response(addr, Response(q.tid, lk._cands[addr].id or b"", values=vals),
                        round_ + 0.6)
    assert len(lk.peers) == MAX_PEERS
    assert len(lk._cands) <= MAX_CANDIDATES
    assert lk.announce_targets() == [(_node(1), b"tok")]


def test_candidates_stay_bounded_under_a_flood_of_closer_nodes() -> None:
    own = b"\xff" * 20
    rng = random.Random(3)
    tids = (i.to_bytes(3, "big") for i in itertools.count())
    lk = Lookup(LookupKind.FIND_NODE, bytes(20), own, [_node(1)], lambda: next(tids))
    n = 0
    for step in range(200):
        qs = lk.next_queries(float(step))
        if not qs:
            break
        for addr, q in qs:
            cand = lk._cands[addr]
            fresh = []
            for _ in range(16):
                n += 1
                # Each answer claims nodes closer than any seen (a poisoning attempt).
                fresh.append(NodeInfo(rng.randbytes(20), f"10.{n >> 16}.{(n >> 8) & 255}."
                                      f"{n & 255}", 1))
            lk.response(addr, Response(q.tid, cand.id or b"", nodes=tuple(fresh)), float(step))
        assert len(lk._cands) <= MAX_CANDIDATES
    assert lk.queries_sent <= 200 and lk.done
