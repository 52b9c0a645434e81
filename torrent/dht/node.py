"""The DHT server side: answering queries, tokens, the peer store, rate limits (BEP 5), sans-IO.

Theory of operation
-------------------
:class:`DhtServer` answers the four BEP 5 queries (:meth:`DhtServer.answer`):

- ``ping``: our id;
- ``find_node``: the K closest nodes of our routing table (BEP 32 ``want``
  picks the families);
- ``get_peers``: peers we store for the info-hash, if any, the K closest
  nodes always, and a token;
- ``announce_peer``: if the token is one we gave *this address*, the peer is
  stored; the port is the query's source port with ``implied_port``.

Tokens: SHA-1 over a secret and the querier's address, cut to 8 bytes. The
secret is replaced every :data:`TOKEN_ROTATION` seconds and the previous one
is still accepted, so a token is good for 5 to 10 minutes (BEP 5). Secrets
come from an injected source (``secrets.token_bytes`` unless a test says).

The peer store is bounded per info-hash (:data:`MAX_PEERS_PER_TORRENT`,
the least recently announced goes first), in info-hashes
(:data:`MAX_TORRENTS`) and in time (:data:`PEER_TTL`).

Every query first passes a per-address token bucket and a global one
(:class:`TokenBucket`); a query over either limit gets no answer at all
(``None``): an answer would make us an amplifier for a spoofed source. The
table of per-address buckets is itself bounded (:data:`MAX_TRACKED_ADDRESSES`).

Queriers enter the routing table as nodes that queried us (unless read-only,
BEP 43); the table decides whether they stay.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from collections.abc import Callable
from dataclasses import replace
from typing import Final

from .krpc import (
    ERROR_METHOD_UNKNOWN,
    ERROR_PROTOCOL,
    Address,
    Error,
    FindNode,
    GetPeers,
    KRPCError,
    NodeInfo,
    Ping,
    Query,
    Response,
    UnknownQuery,
)
from .routing import K, RoutingTable

__all__ = [
    "GLOBAL_BURST",
    "GLOBAL_RATE",
    "MAX_PEERS_PER_TORRENT",
    "MAX_TORRENTS",
    "MAX_TRACKED_ADDRESSES",
    "MAX_VALUES_V4",
    "MAX_VALUES_V6",
    "PEER_TTL",
    "RATE_BURST",
    "RATE_PER_ADDRESS",
    "TOKEN_LENGTH",
    "TOKEN_ROTATION",
    "DhtServer",
    "PeerStore",
    "TokenBucket",
    "Tokens",
]

TOKEN_ROTATION: Final = 5 * 60.0  # BEP 5: tokens change every 5 minutes, the last one still good
# 8 bytes of SHA-1: guessing one for an address is 2**64 tries; libtorrent uses 4.
TOKEN_LENGTH: Final = 8

# Peers kept per info-hash. A get_peers answer carries at most MAX_VALUES_V4;
# a swarm larger than a few hundred gains nothing from us holding more
# (libtorrent keeps 500). The least recently announced go first.
MAX_PEERS_PER_TORRENT: Final = 500

# Info-hashes we store peers for; libtorrent's default is 2000. Past it, new
# info-hashes are not stored (announces still get a normal answer).
MAX_TORRENTS: Final = 2000

# A stored peer expires after 30 minutes: twice the usual 15-minute re-announce.
PEER_TTL: Final = 30 * 60.0

# Values in one get_peers answer, so that it fits MAX_DATAGRAM with both node
# families: 100 IPv4 values are 800 bytes; 40 IPv6 ones 800.
MAX_VALUES_V4: Final = 100
MAX_VALUES_V6: Final = 40

# Per-address rate limit: libtorrent blocks an address that sends more than 5
# queries a second; a burst of 10 lets a lookup and a ping through at once.
RATE_PER_ADDRESS: Final = 5.0
RATE_BURST: Final = 10.0

# All queries together: a home node answers tens a second; 200 a second (about
# 300 KB/s of answers) keeps a flood from many addresses from costing more.
GLOBAL_RATE: Final = 200.0
GLOBAL_BURST: Final = 400.0

# Addresses whose bucket we remember. A flood from spoofed sources would
# otherwise grow the table; past the bound, full (idle) buckets are forgotten
# first, then the least recently used.
MAX_TRACKED_ADDRESSES: Final = 4096


class TokenBucket:
    """A token bucket: ``rate`` per second, at most ``burst`` saved up. Time is passed in."""

    __slots__ = ("burst", "level", "rate", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.level = burst
        self.stamp = now

    def take(self, now: float, amount: float = 1.0) -> bool:
        """Take ``amount`` if there is that much: True; else take nothing: False."""
        self.level = min(self.burst, self.level + max(0.0, now - self.stamp) * self.rate)
        self.stamp = max(self.stamp, now)
        if self.level >= amount:
            self.level -= amount
            return True
        return False

    def full(self, now: float) -> bool:
        """Whether the bucket is full again (its address has been quiet)."""
        return self.level + max(0.0, now - self.stamp) * self.rate >= self.burst


class Tokens:
    """Tokens for ``announce_peer``: issue one for an address, check one from it.

    Args:
        now: when the first secret was made.
        secret_source: ``n -> n random bytes``; ``secrets.token_bytes`` by default.
    """

    def __init__(self, now: float,
                 secret_source: Callable[[int], bytes] = secrets.token_bytes) -> None:
        self._source = secret_source
        self._current = secret_source(20)
        self._previous = self._current
        self._rotated = now

    def _rotate(self, now: float) -> None:
        if now - self._rotated >= 2 * TOKEN_ROTATION:
            self._previous = self._current = self._source(20)  # both are stale
            self._rotated = now
        elif now - self._rotated >= TOKEN_ROTATION:
            self._previous, self._current = self._current, self._source(20)
            self._rotated += TOKEN_ROTATION

    @staticmethod
    def _make(secret: bytes, ip: str) -> bytes:
        return hashlib.sha1(secret + ipaddress.ip_address(ip).packed).digest()[:TOKEN_LENGTH]

    def issue(self, ip: str, now: float) -> bytes:
        """The token to give ``ip`` now."""
        self._rotate(now)
        return self._make(self._current, ip)

    def valid(self, token: bytes, ip: str, now: float) -> bool:
        """Whether ``token`` is one we gave ``ip`` in the current or the previous period."""
        self._rotate(now)
        return token in (self._make(self._current, ip), self._make(self._previous, ip))


class PeerStore:
    """Peers announced to us, per info-hash, bounded in count and time."""

    def __init__(self) -> None:
        self._torrents: dict[bytes, dict[Address, float]] = {}  # addr -> expiry, oldest first

    def __len__(self) -> int:
        """How many info-hashes have peers."""
        return len(self._torrents)

    def add(self, info_hash: bytes, peer: Address, now: float) -> bool:
        """Store (or refresh) a peer; False if the store holds MAX_TORRENTS others."""
        peers = self._torrents.get(info_hash)
        if peers is None:
            if len(self._torrents) >= MAX_TORRENTS:
                self.expire(now)
                if len(self._torrents) >= MAX_TORRENTS:
                    return False
            peers = self._torrents[info_hash] = {}
        peers.pop(peer, None)  # re-announce: it moves to the newest end
        peers[peer] = now + PEER_TTL
        while len(peers) > MAX_PEERS_PER_TORRENT:
            del peers[next(iter(peers))]
        return True

    def get(self, info_hash: bytes, now: float, family: int, limit: int) -> list[Address]:
        """Up to ``limit`` live peers of that family, most recently announced first."""
        peers = self._torrents.get(info_hash)
        if not peers:
            return []
        self._expire_one(info_hash, peers, now)
        out: list[Address] = []
        for addr in reversed(peers):
            if len(out) >= limit:
                break
            if (":" in addr[0]) == (family == 6):
                out.append(addr)
        return out

    def expire(self, now: float) -> None:
        """Forget every expired peer, and info-hashes left with none."""
        for info_hash, peers in list(self._torrents.items()):
            self._expire_one(info_hash, peers, now)

    def _expire_one(self, info_hash: bytes, peers: dict[Address, float], now: float) -> None:
        # Expiry times grow along the dict (insertion = announce order): stop at the first live one.
        while peers:
            addr, expires = next(iter(peers.items()))
            if expires > now:
                break
            del peers[addr]
        if not peers:
            del self._torrents[info_hash]


class DhtServer:
    """Answers incoming queries for one address family.

    Args:
        table: our routing table (its ``own_id`` is our id).
        now: the time it starts.
        secret_source: randomness for the token secrets.
    """

    def __init__(self, table: RoutingTable, now: float, *,
                 secret_source: Callable[[int], bytes] = secrets.token_bytes) -> None:
        self.table = table
        self.tokens = Tokens(now, secret_source)
        self.store = PeerStore()
        self._global = TokenBucket(GLOBAL_RATE, GLOBAL_BURST, now)
        self._limits: dict[str, TokenBucket] = {}
        self.dropped = 0  # queries left unanswered by the rate limits

    def allow(self, ip: str, now: float) -> bool:
        """Whether a datagram from ``ip`` may be answered (per-address and global limits)."""
        bucket = self._limits.pop(ip, None)
        if bucket is None:
            if len(self._limits) >= MAX_TRACKED_ADDRESSES:
                self._forget_quiet(now)
            bucket = TokenBucket(RATE_PER_ADDRESS, RATE_BURST, now)
        self._limits[ip] = bucket  # the most recently used at the end
        if not bucket.take(now) or not self._global.take(now):
            self.dropped += 1
            return False
        return True

    def _forget_quiet(self, now: float) -> None:
        for ip in [ip for ip, b in self._limits.items() if b.full(now)]:
            del self._limits[ip]
        while len(self._limits) >= MAX_TRACKED_ADDRESSES:
            del self._limits[next(iter(self._limits))]

    def answer(self, addr: Address, query: Query, now: float) -> Response | Error | None:
        """The answer to ``query`` from ``addr``, or None when a rate limit says to stay silent."""
        ip, port = addr
        if not self.allow(ip, now):
            return None
        own = self.table.own_id
        if not query.read_only:
            self.table.heard_from(query.sender, ip, port, now, response=False)
        if isinstance(query, UnknownQuery):
            return Error(query.tid, ERROR_METHOD_UNKNOWN, "Method Unknown")
        if isinstance(query, Ping):
            return Response(query.tid, own, ip=addr)
        if isinstance(query, FindNode):
            return self._nodes(Response(query.tid, own, ip=addr), query.target, query.want, ip)
        if isinstance(query, GetPeers):
            family = 6 if ":" in ip else 4
            limit = MAX_VALUES_V6 if family == 6 else MAX_VALUES_V4
            values = tuple(self.store.get(query.info_hash, now, family, limit))
            reply = Response(query.tid, own, values=values,
                             token=self.tokens.issue(ip, now), ip=addr)
            return self._nodes(reply, query.info_hash, query.want, ip)
        if not self.tokens.valid(query.token, ip, now):
            return Error(query.tid, ERROR_PROTOCOL, "Bad token")
        self.store.add(query.info_hash, (ip, port if query.implied_port else query.port), now)
        return Response(query.tid, own, ip=addr)

    def protocol_error(self, addr: Address, exc: KRPCError, now: float) -> Error | None:
        """The error 203 for a malformed query, if it had a transaction id and limits allow."""
        if exc.tid is None or not self.allow(addr[0], now):
            return None
        return Error(exc.tid, ERROR_PROTOCOL, f"Protocol Error: {exc.field}")

    def _nodes(self, reply: Response, target: bytes, want: tuple[bytes, ...],
               ip: str) -> Response:
        # BEP 32: without ``want``, the querier's own family; we hold one table,
        # so we can only give that table's family.
        ours = b"n6" if self.table.family == 6 else b"n4"
        asked = ours in want if want else (":" in ip) == (self.table.family == 6)
        if not asked:
            return reply
        nodes: tuple[NodeInfo, ...] = tuple(self.table.closest(target, K))
        if self.table.family == 6:
            return replace(reply, nodes6=nodes)
        return replace(reply, nodes=nodes)
