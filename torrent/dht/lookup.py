"""An iterative DHT lookup (``get_peers`` or ``find_node``, BEP 5) as a state machine, sans-IO.

Theory of operation
-------------------
A lookup walks towards ``target``: it keeps the candidates it knows, sorted
by XOR distance to the target, and queries the closest ones it has not
queried, at most :data:`ALPHA` at a time. Each answer brings nodes closer to
the target, which become candidates. The lookup is done when the :data:`K`
closest candidates that have not failed have all answered (or nothing is left
to ask, or :data:`MAX_QUERIES` were sent).

The owner drives it::

    next_queries(now)        -> [(address, query)]: send these
    response(addr, msg, now) -> an answer (or KRPC error) from ``addr``
    timeout(now)             -> [addresses]: these did not answer in time
    done, peers, announce_targets()

A query unanswered after :data:`SLOW_AFTER` seconds stops counting against
ALPHA (another one goes out, as libtorrent does), and after
:data:`QUERY_TIMEOUT` it has failed. An answer counts only if it comes from
the address we asked, with the transaction id we sent, while we wait for it:
anything else (spoofed, unknown or repeated transaction ids, floods) is
ignored. A node answering with our own id, or with an id other than the one
it was listed under, has failed and its nodes are not used. Every collection
is bounded: candidates (:data:`MAX_CANDIDATES`), peers (:data:`MAX_PEERS`),
queries (:data:`MAX_QUERIES`).

Bootstrap nodes (routers) are given by address only: their id is unknown
until they answer. They are asked first.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from .krpc import (
    ID_LENGTH,
    Address,
    AnnouncePeer,
    Error,
    FindNode,
    GetPeers,
    NodeInfo,
    Response,
)

__all__ = [
    "ALPHA",
    "MAX_CANDIDATES",
    "MAX_PEERS",
    "MAX_QUERIES",
    "QUERY_TIMEOUT",
    "SLOW_AFTER",
    "K",
    "Lookup",
    "LookupKind",
]

ALPHA: Final = 3  # BEP 5 / Kademlia: queries in flight at once
K: Final = 8  # BEP 5: the lookup ends when the 8 closest nodes have answered

# A query unanswered after 2 s no longer holds up the lookup (another goes out);
# most DHT answers come within a few hundred ms. After 10 s it has failed.
SLOW_AFTER: Final = 2.0
QUERY_TIMEOUT: Final = 10.0

# Candidates kept: the closest K that answer are what matters; 16 K leaves room
# for dead and lying nodes while keeping a reply flood (16 nodes per answer)
# from growing the set without end. The farthest unqueried ones are dropped.
MAX_CANDIDATES: Final = 16 * K

# Queries per lookup. A lookup converges in ~log2(network size / K) rounds of
# ALPHA; on the real DHT (~10^7 nodes) that is ~20 rounds, ~60 queries. 200 also
# bounds a lookup that hostile nodes keep feeding with new, ever closer fakes.
MAX_QUERIES: Final = 200

# Peers collected. A popular torrent's swarm answers with ~100 per node; a
# download wants a few hundred addresses to dial, never thousands.
MAX_PEERS: Final = 500


class LookupKind(enum.Enum):
    """What the lookup asks: ``get_peers`` (peers and tokens) or ``find_node`` (nodes)."""

    GET_PEERS = "get_peers"
    FIND_NODE = "find_node"


class _State(enum.IntEnum):
    NEW = 0
    IN_FLIGHT = 1
    ANSWERED = 2
    FAILED = 3


@dataclass(slots=True)
class _Candidate:
    addr: Address
    id: bytes | None  # None: a bootstrap node, its id unknown until it answers
    distance: int
    state: _State = _State.NEW
    tid: bytes = b""
    sent: float = 0.0
    token: bytes | None = None


class Lookup:
    """One iterative lookup.

    Args:
        kind: ``get_peers`` or ``find_node``.
        target: the info-hash or node id looked up (20 bytes).
        own_id: our id: sent in queries, and refused in answers.
        nodes: where to start: the routing table's closest nodes.
        new_tid: a fresh transaction id for each query; the owner's, so that
            ids are unique across everything it has in flight.
        bootstrap: router addresses to ask too, ids unknown.
        family: 4 or 6: which nodes of an answer to follow (``nodes`` or
            ``nodes6``, BEP 32).
    """

    def __init__(self, kind: LookupKind, target: bytes, own_id: bytes,
                 nodes: Iterable[NodeInfo], new_tid: Callable[[], bytes], *,
                 bootstrap: Iterable[Address] = (), family: int = 4) -> None:
        if len(target) != ID_LENGTH or len(own_id) != ID_LENGTH:
            raise ValueError(f"target and own id are {ID_LENGTH} bytes")
        self.kind = kind
        self.target = target
        self.own_id = own_id
        self.family = family
        self._t = int.from_bytes(target, "big")
        self._new_tid = new_tid
        self._cands: dict[Address, _Candidate] = {}
        self._ids: set[bytes] = set()
        self._peers: dict[Address, None] = {}  # insertion-ordered set
        self.queries_sent = 0
        self.ignored = 0  # answers not counted: unknown address or tid, repeats
        for addr in bootstrap:
            self._cands.setdefault(addr, _Candidate(addr, None, -1))
        self._add(nodes)

    # --- what the owner reads -------------------------------------------------------------
    @property
    def peers(self) -> list[Address]:
        """Peers ``get_peers`` answers gave, first seen first, at most MAX_PEERS."""
        return list(self._peers)

    @property
    def done(self) -> bool:
        """True once the K closest live candidates have answered, or nothing is left to do."""
        if self._top_answered():
            return True
        busy = any(c.state == _State.IN_FLIGHT for c in self._cands.values())
        if busy:
            return False
        return self.queries_sent >= MAX_QUERIES or not any(
            c.state == _State.NEW for c in self._cands.values())

    def closest(self) -> list[NodeInfo]:
        """The K closest nodes that answered, nearest first (a find_node lookup's result)."""
        return [NodeInfo(c.id, *c.addr) for c in self._ranked()
                if c.state == _State.ANSWERED and c.id is not None][:K]

    def announce_targets(self) -> list[tuple[NodeInfo, bytes]]:
        """The K closest nodes that answered with a token, and their tokens (BEP 5 announce)."""
        out = [(NodeInfo(c.id, *c.addr), c.token) for c in self._ranked()
               if c.state == _State.ANSWERED and c.id is not None and c.token is not None]
        return [(node, token) for node, token in out[:K] if token is not None]

    def announce_queries(self, port: int, *, implied_port: bool = False,
                         read_only: bool = False) -> list[tuple[Address, AnnouncePeer]]:
        """``announce_peer`` queries for :meth:`announce_targets`, with fresh transaction ids.

        Args:
            port: the TCP port we take peers on (ignored by the receiver with
                ``implied_port``).
            implied_port: ask the receiver to use the query's UDP source port
                (BEP 5; for a NAT that maps UDP and TCP the same way).
        """
        return [((node.ip, node.port),
                 AnnouncePeer(self._new_tid(), self.own_id, self.target, port, token,
                              implied_port, read_only))
                for node, token in self.announce_targets()]

    def deadline(self, now: float) -> float | None:
        """When :meth:`timeout` or :meth:`next_queries` next has something to do, or None.

        That is when a query in flight turns slow (another may go out) or times out.
        """
        times = [c.sent + (SLOW_AFTER if self._counts(c, now) else QUERY_TIMEOUT)
                 for c in self._cands.values() if c.state == _State.IN_FLIGHT]
        return min(times) if times else None

    # --- driving it -----------------------------------------------------------------------
    def next_queries(self, now: float, *,
                     read_only: bool = False) -> list[tuple[Address, GetPeers | FindNode]]:
        """The queries to send now: up to ALPHA in flight, closest unqueried candidates first."""
        out: list[tuple[Address, GetPeers | FindNode]] = []
        if self._top_answered():
            return out
        in_flight = sum(1 for c in self._cands.values() if self._counts(c, now))
        top = {id(c) for c in self._top()}
        for c in self._ranked():
            if in_flight >= ALPHA or self.queries_sent >= MAX_QUERIES:
                break
            if c.state != _State.NEW:
                continue
            if c.id is not None and id(c) not in top:
                break  # farther than the K closest live ones: not worth asking yet
            c.state = _State.IN_FLIGHT
            c.tid = self._new_tid()
            c.sent = now
            self.queries_sent += 1
            in_flight += 1
            query: GetPeers | FindNode
            if self.kind == LookupKind.GET_PEERS:
                query = GetPeers(c.tid, self.own_id, self.target, read_only=read_only)
            else:
                query = FindNode(c.tid, self.own_id, self.target, read_only=read_only)
            out.append((c.addr, query))
        return out

    def response(self, addr: Address, msg: Response | Error, now: float) -> bool:
        """An answer arrived from ``addr``.

        Returns:
            True if it answered a query of this lookup (the owner may then
            credit the node in its routing table), False if it was ignored.
        """
        c = self._cands.get(addr)
        if c is None or c.state != _State.IN_FLIGHT or msg.tid != c.tid:
            self.ignored += 1
            return False
        if isinstance(msg, Error) or msg.sender == self.own_id or (
                c.id is not None and msg.sender != c.id):
            c.state = _State.FAILED
            return True
        if c.id is None:  # a bootstrap node: now we know who it is
            if msg.sender in self._ids:
                c.state = _State.FAILED
                return True
            c.id = msg.sender
            c.distance = int.from_bytes(msg.sender, "big") ^ self._t
            self._ids.add(msg.sender)
        c.state = _State.ANSWERED
        c.token = msg.token
        if self.kind == LookupKind.GET_PEERS:
            for peer in msg.values:
                if len(self._peers) >= MAX_PEERS:
                    break
                self._peers[peer] = None
        self._add(msg.nodes if self.family == 4 else msg.nodes6)
        return True

    def timeout(self, now: float) -> list[Address]:
        """Queries unanswered for QUERY_TIMEOUT have failed: their addresses (for the table)."""
        out = []
        for c in self._cands.values():
            if c.state == _State.IN_FLIGHT and now - c.sent >= QUERY_TIMEOUT:
                c.state = _State.FAILED
                out.append(c.addr)
        return out

    # --- inside ---------------------------------------------------------------------------
    def _counts(self, c: _Candidate, now: float) -> bool:
        """Whether a query holds a place among the ALPHA in flight (not yet slow)."""
        return c.state == _State.IN_FLIGHT and now - c.sent < SLOW_AFTER

    def _ranked(self) -> list[_Candidate]:
        return sorted(self._cands.values(), key=lambda c: c.distance)

    def _top(self) -> list[_Candidate]:
        return [c for c in self._ranked() if c.id is not None and c.state != _State.FAILED][:K]

    def _top_answered(self) -> bool:
        top = self._top()
        return bool(top) and all(c.state == _State.ANSWERED for c in top) and not any(
            c.id is None and c.state in (_State.NEW, _State.IN_FLIGHT)
            for c in self._cands.values())

    def _add(self, nodes: Iterable[NodeInfo]) -> None:
        for n in nodes:
            addr = (n.ip, n.port)
            if n.id == self.own_id or n.id in self._ids or addr in self._cands:
                continue
            self._cands[addr] = _Candidate(addr, n.id, int.from_bytes(n.id, "big") ^ self._t)
            self._ids.add(n.id)
        if len(self._cands) > MAX_CANDIDATES:
            # Drop the farthest never-asked ones; asked ones keep their answers.
            spare = [c for c in self._ranked() if c.state == _State.NEW]
            for c in reversed(spare):
                if len(self._cands) <= MAX_CANDIDATES:
                    break
                del self._cands[c.addr]
                if c.id is not None:
                    self._ids.discard(c.id)
