"""The DHT server side (torrent/dht/node.py): answers, tokens, rate limits, the peer store."""

from __future__ import annotations

import itertools
import random

from torrent.dht import krpc, node
from torrent.dht.krpc import (
    AnnouncePeer,
    Error,
    FindNode,
    GetPeers,
    Ping,
    Response,
    UnknownQuery,
)
from torrent.dht.node import (
    MAX_PEERS_PER_TORRENT,
    MAX_TORRENTS,
    MAX_TRACKED_ADDRESSES,
    PEER_TTL,
    RATE_BURST,
    RATE_PER_ADDRESS,
    TOKEN_ROTATION,
    DhtServer,
    PeerStore,
    TokenBucket,
    Tokens,
)
from torrent.dht.routing import RoutingTable

OWN = b"\x80" * 20
Q = b"\x01" * 20
H = b"h" * 20
ALICE = ("10.0.0.1", 7000)


def server(now: float = 0.0) -> DhtServer:
    rng = random.Random(4)
    t = RoutingTable(OWN, now, rng=rng)
    for i in range(20):
        t.heard_from(bytes([i * 12]) * 20, f"10.5.0.{i}", 6881, now, response=True)
    return DhtServer(t, now, secret_source=rng.randbytes)


def test_answers_each_query() -> None:
    s = server()
    r = s.answer(ALICE, Ping(b"t1", Q), 1.0)
    assert r == Response(b"t1", OWN, ip=ALICE)
    r = s.answer(ALICE, FindNode(b"t2", Q, bytes(20)), 1.0)
    assert isinstance(r, Response) and len(r.nodes) == 8 and r.nodes6 == ()
    assert r.nodes == tuple(s.table.closest(bytes(20)))
    r = s.answer(ALICE, GetPeers(b"t3", Q, H), 1.0)
    assert isinstance(r, Response) and r.values == () and r.token and len(r.nodes) == 8
    assert s.answer(ALICE, UnknownQuery(b"t4", Q, b"get"), 1.0) == \
        Error(b"t4", krpc.ERROR_METHOD_UNKNOWN, "Method Unknown")
    # Every answer fits a datagram.
    for reply in (s.answer(ALICE, FindNode(b"t5", Q, H, want=(b"n4", b"n6")), 1.0),):
        assert reply is not None and len(krpc.encode(reply)) <= krpc.MAX_DATAGRAM
    # The querier entered the routing table as a node that queried us.
    known = s.table.get(Q)
    assert known is not None and known.last_response is None and known.last_query == 1.0


def test_read_only_queriers_stay_out_of_the_table() -> None:
    s = server()
    s.answer(ALICE, Ping(b"t1", Q, read_only=True), 1.0)
    assert s.table.get(Q) is None


def test_announce_then_get_peers() -> None:
    s = server()
    r = s.answer(ALICE, GetPeers(b"t1", Q, H), 1.0)
    assert isinstance(r, Response) and r.token is not None
    assert s.answer(ALICE, AnnouncePeer(b"t2", Q, H, 6881, r.token), 2.0) == \
        Response(b"t2", OWN, ip=ALICE)
    bob = ("10.0.0.2", 7001)
    r2 = s.answer(bob, GetPeers(b"t3", b"\x02" * 20, H), 3.0)
    assert isinstance(r2, Response) and r2.token is not None
    # implied_port: the UDP source port, not the one in the query.
    s.answer(bob, AnnouncePeer(b"t4", b"\x02" * 20, H, 1, r2.token, implied_port=True), 3.0)
    r3 = s.answer(("10.0.0.3", 1), GetPeers(b"t5", b"\x03" * 20, H), 4.0)
    assert isinstance(r3, Response)
    assert r3.values == (bob, ("10.0.0.1", 6881))
    # IPv6 peers go to IPv6 queriers only.
    v6 = ("fd00::1", 5)
    r4 = s.answer(v6, GetPeers(b"t6", b"\x04" * 20, H), 5.0)
    assert isinstance(r4, Response) and r4.values == () and r4.token is not None


def test_tokens_are_per_address_and_rotate() -> None:
    s = server()
    r = s.answer(ALICE, GetPeers(b"t1", Q, H), 0.0)
    assert isinstance(r, Response) and r.token is not None
    token = r.token
    # Another address cannot use Alice's token.
    bad = s.answer(("10.0.0.9", 7000), AnnouncePeer(b"t2", Q, H, 6881, token), 1.0)
    assert isinstance(bad, Error) and bad.code == krpc.ERROR_PROTOCOL
    # Still good in the next period (the previous secret), not in the one after.
    assert isinstance(s.answer(ALICE, AnnouncePeer(b"t3", Q, H, 6881, token),
                               TOKEN_ROTATION + 1), Response)
    assert isinstance(s.answer(ALICE, AnnouncePeer(b"t4", Q, H, 6881, token),
                               2 * TOKEN_ROTATION + 1), Error)


def test_token_rotation_schedule() -> None:
    counter = itertools.count()
    t = Tokens(0.0, secret_source=lambda n: next(counter).to_bytes(n, "big"))
    a = t.issue("1.2.3.4", 0.0)
    assert len(a) == node.TOKEN_LENGTH and t.issue("1.2.3.4", TOKEN_ROTATION - 1) == a
    b = t.issue("1.2.3.4", TOKEN_ROTATION)
    assert b != a and t.valid(a, "1.2.3.4", TOKEN_ROTATION) and t.valid(b, "1.2.3.4", 500)
    assert t.issue("1.2.3.5", TOKEN_ROTATION) != b
    assert not t.valid(a, "1.2.3.4", 2 * TOKEN_ROTATION)
    assert t.valid(b, "1.2.3.4", 2 * TOKEN_ROTATION)
    # After a long silence both secrets are new.
    assert not t.valid(b, "1.2.3.4", 100 * TOKEN_ROTATION)


def test_token_bucket() -> None:
    b = TokenBucket(2.0, 4.0, 0.0)
    assert [b.take(0.0) for _ in range(5)] == [True] * 4 + [False]
    assert b.take(0.5) and not b.take(0.5)
    assert not b.full(1.0) and b.full(2.5)
    assert b.take(100.0) and b.level == 3.0  # capped at the burst


def test_rate_limit_per_address() -> None:
    s = server()
    answers = [s.answer(ALICE, Ping(b"t", Q), 0.0) for _ in range(int(RATE_BURST) + 5)]
    assert sum(a is not None for a in answers) == RATE_BURST and s.dropped == 5
    # Another address is not affected; time refills Alice's bucket.
    assert s.answer(("10.0.0.2", 1), Ping(b"t", Q), 0.0) is not None
    assert s.answer(ALICE, Ping(b"t", Q), 1.0 / RATE_PER_ADDRESS) is not None
    # A malformed query from a limited address gets no error 203 either.
    exc = krpc.KRPCError("a.id", "bad", b"t")
    assert s.protocol_error(ALICE, exc, 1.0 / RATE_PER_ADDRESS) is None
    assert s.protocol_error(("10.0.0.3", 1), exc, 0.0) == \
        Error(b"t", krpc.ERROR_PROTOCOL, "Protocol Error: a.id")
    assert s.protocol_error(("10.0.0.4", 1), krpc.KRPCError("t", "bad"), 0.0) is None


def test_global_rate_limit_and_bounded_address_table() -> None:
    s = server()
    answered = sum(s.answer((f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 1),
                            Ping(b"t", Q, read_only=True), 0.0) is not None
                   for i in range(MAX_TRACKED_ADDRESSES + 100))
    assert answered == node.GLOBAL_BURST
    assert len(s._limits) <= MAX_TRACKED_ADDRESSES


def test_peer_store_bounds_and_expiry() -> None:
    store = PeerStore()
    for i in range(MAX_PEERS_PER_TORRENT + 50):
        store.add(H, (f"10.1.{i >> 8}.{i & 255}", 1), float(i))
    got = store.get(H, 1000.0, 4, 10_000)
    assert len(got) == MAX_PEERS_PER_TORRENT
    assert got[0] == ("10.1.2.37", 1)  # the newest first (549 = 2 * 256 + 37)
    assert ("10.1.0.0", 1) not in got  # the oldest went first
    # A re-announce refreshes a peer.
    store.add(H, ("10.1.0.50", 1), 2000.0)
    assert store.get(H, 2000.0, 4, 1) == [("10.1.0.50", 1)]
    # Expiry: after PEER_TTL only the refreshed one is left, then none.
    assert store.get(H, MAX_PEERS_PER_TORRENT + 50 + PEER_TTL, 4, 10_000) == [("10.1.0.50", 1)]
    store.expire(2000.0 + PEER_TTL)
    assert len(store) == 0


def test_peer_store_torrent_count_is_bounded() -> None:
    store = PeerStore()
    for i in range(MAX_TORRENTS):
        assert store.add(i.to_bytes(20, "big"), ("10.0.0.1", 1), 0.0)
    assert not store.add(b"\xff" * 20, ("10.0.0.1", 1), 1.0)
    assert len(store) == MAX_TORRENTS
    # Once the old ones expire there is room again.
    assert store.add(b"\xff" * 20, ("10.0.0.1", 1), PEER_TTL + 1)
    assert len(store) == 1
