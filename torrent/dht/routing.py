"""The DHT routing table (BEP 5), BEP 42 node id checks, and its saved form, sans-IO.

Theory of operation
-------------------
Ids are 160-bit integers; the distance between two is their XOR. The table
covers the whole id space with buckets, each a range ``[lo, hi)`` holding at
most :data:`K` nodes. It starts as one bucket; when a full bucket must take a
node and the bucket's range holds *our own* id, it splits in two halves
(BEP 5): the table knows many nodes near us and a few far away. A full bucket
that does not hold our id takes no more nodes: the newcomer waits in that
bucket's replacement cache (at most K, the most recent kept).

A node is in one of three states (:class:`NodeState`):

- **good**: it answered one of our queries in the last 15 minutes, or it
  answered one once and has queried us in the last 15 minutes;
- **bad**: it failed to answer :data:`BAD_AFTER_FAILURES` queries in a row;
- **questionable**: anything else (silent for 15 minutes, or never answered).

A bad node gives its place to the newest replacement, or to the next node
that wants in. Questionable nodes are what :meth:`RoutingTable.nodes_to_ping`
returns, and buckets unchanged for 15 minutes what
:meth:`RoutingTable.nodes_to_refresh` returns a target for; the owner carries
out the pings and lookups and reports back with :meth:`~RoutingTable.heard_from`
and :meth:`~RoutingTable.failed`.

Hostile nodes: a node claiming our own id, port 0, the other address family,
a second id at an address already in the table, or (when enforced) an id that
fails BEP 42 for its address never enters. A known id answering from a new
address is ignored while the old entry is not bad (a spoofer cannot move it).

BEP 32 keeps one table per address family; the owner creates two. Time is
always an argument (``now``, seconds, any epoch); randomness is injected.
"""

from __future__ import annotations

import enum
import ipaddress
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from .. import bencoding
from .krpc import ID_LENGTH, NodeInfo

__all__ = [
    "BAD_AFTER_FAILURES",
    "MAX_BUCKETS",
    "MAX_STATE_SIZE",
    "QUESTIONABLE_AFTER",
    "Insert",
    "K",
    "NodeState",
    "RoutingNode",
    "RoutingTable",
    "SavedState",
    "bep42_exempt",
    "bep42_id",
    "bep42_valid",
    "distance",
    "dump",
    "load",
]

K: Final = 8  # BEP 5: nodes per bucket, and the size of a lookup's answer set

# BEP 5: a node is good if it was heard from within 15 minutes; after that it
# is questionable, and a bucket unchanged for that long is refreshed.
QUESTIONABLE_AFTER: Final = 15 * 60.0

# BEP 5: a node that fails to answer "multiple queries in a row" is bad. Three
# tolerates a lost datagram or two (UDP) while still freeing a dead node's place
# within one refresh round.
BAD_AFTER_FAILURES: Final = 3

# Only the bucket holding our own id splits, one bit per split, so there are
# at most 160 buckets, and the table holds at most 160 * K nodes and as many
# replacements: a bound of ~2,600 entries however many nodes talk to us.
MAX_BUCKETS: Final = ID_LENGTH * 8

# Nodes a saved table holds: every node of a full table (a real one, with
# ~20 buckets, holds ~160). The bytes bound: one compact node info each (IPv6
# is 38 bytes) plus the envelope.
_MAX_SAVED_NODES: Final = MAX_BUCKETS * K
MAX_STATE_SIZE: Final = _MAX_SAVED_NODES * 40 + 1024

_SPACE: Final = 1 << (ID_LENGTH * 8)


class NodeState(enum.IntEnum):
    """BEP 5 node states."""

    GOOD = 0
    QUESTIONABLE = 1
    BAD = 2


class Insert(enum.Enum):
    """What :meth:`RoutingTable.heard_from` did with a node."""

    ADDED = "added"  # now in a bucket
    UPDATED = "updated"  # was in a bucket; its times were updated
    REPLACEMENT = "replacement"  # its bucket is full: kept in the replacement cache
    REJECTED = "rejected"  # never kept (own id, port 0, BEP 42, address conflict...)


def distance(a: bytes, b: bytes) -> int:
    """The XOR distance between two 20-byte ids."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


@dataclass(slots=True)
class RoutingNode:
    """A node the table knows.

    Attributes:
        last_response: when it last answered a query of ours; None: never.
        last_query: when it last sent us a query; None: never.
        failures: queries of ours it failed to answer since its last answer.
    """

    id: bytes
    ip: str
    port: int
    last_response: float | None = None
    last_query: float | None = None
    failures: int = 0

    def state(self, now: float) -> NodeState:
        """Its BEP 5 state at ``now``."""
        if self.failures >= BAD_AFTER_FAILURES:
            return NodeState.BAD
        if self.last_response is not None and (
                now - self.last_response < QUESTIONABLE_AFTER
                or (self.last_query is not None and now - self.last_query < QUESTIONABLE_AFTER)):
            return NodeState.GOOD
        return NodeState.QUESTIONABLE

    @property
    def info(self) -> NodeInfo:
        """Its id and address, as a reply lists it."""
        return NodeInfo(self.id, self.ip, self.port)

    def _seen(self, now: float, response: bool) -> None:
        if response:
            self.last_response = now
            self.failures = 0
        else:
            self.last_query = now


@dataclass(slots=True)
class _Bucket:
    lo: int
    hi: int
    nodes: list[RoutingNode]
    replacements: list[RoutingNode]
    changed: float  # last time a node was added, answered, or the bucket was refreshed

    def covers(self, n: int) -> bool:
        return self.lo <= n < self.hi


class RoutingTable:
    """The routing table of one address family.

    Args:
        own_id: our node id (20 bytes).
        now: the time the table starts (buckets count their 15 minutes from it).
        family: 4 or 6: nodes of the other family are refused (BEP 32: one
            table per family).
        enforce_bep42: refuse nodes whose id fails BEP 42 for their address
            (loopback and private addresses are exempt).
        rng: randomness for refresh targets; a seeded one in tests.
    """

    def __init__(self, own_id: bytes, now: float, *, family: int = 4,
                 enforce_bep42: bool = True, rng: random.Random | None = None) -> None:
        if len(own_id) != ID_LENGTH:
            raise ValueError(f"a node id is {ID_LENGTH} bytes, not {len(own_id)}")
        if family not in (4, 6):
            raise ValueError(f"family is 4 or 6, not {family}")
        self.own_id = own_id
        self.family = family
        self.enforce_bep42 = enforce_bep42
        self._own = int.from_bytes(own_id, "big")
        self._rng = rng if rng is not None else random.Random()
        self._buckets: list[_Bucket] = [_Bucket(0, _SPACE, [], [], now)]
        # Where each node (bucket entry or replacement) is, by id and by address.
        self._by_id: dict[bytes, RoutingNode] = {}
        self._by_addr: dict[tuple[str, int], bytes] = {}

    # --- queries --------------------------------------------------------------------------
    def __len__(self) -> int:
        """Nodes in buckets (replacements not counted)."""
        return sum(len(b.nodes) for b in self._buckets)

    @property
    def bucket_count(self) -> int:
        """How many buckets the table has split into."""
        return len(self._buckets)

    def get(self, node_id: bytes) -> RoutingNode | None:
        """The node with this id, in a bucket or a replacement cache, or None."""
        return self._by_id.get(node_id)

    def id_at(self, ip: str, port: int) -> bytes | None:
        """The id of the node (in a bucket or a replacement cache) at this address, or None."""
        return self._by_addr.get((ip, port))

    def nodes(self) -> list[RoutingNode]:
        """Every node in a bucket (not the replacements), bucket by bucket."""
        return [n for b in self._buckets for n in b.nodes]

    def closest(self, target: bytes, n: int = K) -> list[NodeInfo]:
        """The ``n`` nodes nearest ``target`` that are not bad, nearest first.

        Questionable nodes are included: distance alone orders them, and a
        lookup, which queries them, finds out which are alive.
        """
        t = int.from_bytes(target, "big")
        cands = [(int.from_bytes(node.id, "big") ^ t, node) for b in self._buckets
                 for node in b.nodes if node.failures < BAD_AFTER_FAILURES]
        cands.sort(key=lambda c: c[0])
        return [node.info for _, node in cands[:n]]

    def nodes_to_ping(self, now: float, limit: int = K) -> list[NodeInfo]:
        """Questionable nodes, longest silent first, at most ``limit``.

        A ping that is answered makes the node good again (:meth:`heard_from`
        with ``response=True``); one that times out counts as a failure
        (:meth:`failed`), and enough of them free its place.
        """
        out = [node for b in self._buckets for node in b.nodes
               if node.state(now) == NodeState.QUESTIONABLE]
        out.sort(key=lambda node: max(node.last_response or 0.0, node.last_query or 0.0))
        return [node.info for node in out[:limit]]

    def nodes_to_refresh(self, now: float) -> list[bytes]:
        """A random target id in each bucket unchanged for 15 minutes (BEP 5).

        The owner runs a ``find_node`` lookup for each; the buckets count as
        refreshed from ``now`` on, so each is returned once per 15 minutes.
        """
        out: list[bytes] = []
        for b in self._buckets:
            if now - b.changed >= QUESTIONABLE_AFTER:
                out.append(self._rng.randrange(b.lo, b.hi).to_bytes(ID_LENGTH, "big"))
                b.changed = now
        return out

    # --- updates --------------------------------------------------------------------------
    def heard_from(self, node_id: bytes, ip: str, port: int, now: float, *,
                   response: bool) -> Insert:
        """A node answered a query of ours (``response``) or sent us a query.

        Args:
            node_id: the id it gave (20 bytes).
            ip, port: the datagram's source address (never an address a third
                party listed: only the node itself tells us it is alive).
            now: the time.
            response: True for an answer to our query, False for its query.

        Returns:
            What became of it (:class:`Insert`).
        """
        if not self._acceptable(node_id, ip, port):
            return Insert.REJECTED
        known = self._by_id.get(node_id)
        if known is not None:
            if (known.ip, known.port) != (ip, port):
                if known.failures < BAD_AFTER_FAILURES or (ip, port) in self._by_addr:
                    return Insert.REJECTED  # a live node does not move; a spoofer cannot move it
                del self._by_addr[(known.ip, known.port)]
                known.ip, known.port = ip, port
                self._by_addr[(ip, port)] = node_id
            known._seen(now, response)
            bucket = self._bucket(self._int(node_id))
            if known in bucket.nodes:
                if response:
                    bucket.changed = now
                return Insert.UPDATED
            return Insert.REPLACEMENT
        other = self._by_addr.get((ip, port))
        if other is not None:
            old = self._by_id[other]
            if old.state(now) == NodeState.GOOD:
                return Insert.REJECTED  # one id per address: a good node keeps its place
            self._remove(old)
        node = RoutingNode(node_id, ip, port)
        node._seen(now, response)
        return self._insert(node, now)

    def failed(self, node_id: bytes, now: float) -> None:
        """A query of ours to this node timed out (or got nonsense back).

        Once it is bad, the newest replacement in its bucket takes its place.
        """
        node = self._by_id.get(node_id)
        if node is None:
            return
        node.failures += 1
        if node.failures < BAD_AFTER_FAILURES:
            return
        bucket = self._bucket(self._int(node_id))
        if node in bucket.replacements:
            self._remove(node)
            return
        fresh = [r for r in bucket.replacements if r.failures < BAD_AFTER_FAILURES]
        if fresh:
            newest = max(fresh, key=lambda r: max(r.last_response or -1e18,
                                                  r.last_query or -1e18))
            bucket.replacements.remove(newest)
            bucket.nodes[bucket.nodes.index(node)] = newest
            self._forget(node)
            bucket.changed = now

    def restore(self, nodes: Iterable[NodeInfo], now: float) -> int:
        """Put back the nodes of a saved table; they count as never heard from.

        They are questionable until they answer: the owner pings them (or
        starts a lookup through them) before trusting them. Returns how many
        went into buckets.
        """
        added = 0
        for info in nodes:
            if not self._acceptable(info.id, info.ip, info.port):
                continue
            if info.id in self._by_id or (info.ip, info.port) in self._by_addr:
                continue
            if self._insert(RoutingNode(info.id, info.ip, info.port), now) == Insert.ADDED:
                added += 1
        return added

    # --- inside ---------------------------------------------------------------------------
    @staticmethod
    def _int(node_id: bytes) -> int:
        return int.from_bytes(node_id, "big")

    def _acceptable(self, node_id: bytes, ip: str, port: int) -> bool:
        if len(node_id) != ID_LENGTH or node_id == self.own_id or not 0 < port < 65536:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if addr.version != self.family or addr.is_unspecified or addr.is_multicast:
            return False
        return not self.enforce_bep42 or bep42_valid(node_id, ip)

    def _bucket(self, n: int) -> _Bucket:
        # Buckets are kept sorted by range; at most 160 of them.
        lo, hi = 0, len(self._buckets)
        while lo < hi:
            mid = (lo + hi) // 2
            b = self._buckets[mid]
            if n < b.lo:
                hi = mid
            elif n >= b.hi:
                lo = mid + 1
            else:
                return b
        raise AssertionError("the buckets cover the whole id space")

    def _insert(self, node: RoutingNode, now: float) -> Insert:
        n = self._int(node.id)
        while True:
            bucket = self._bucket(n)
            if len(bucket.nodes) < K:
                bucket.nodes.append(node)
                bucket.changed = now
                self._index(node)
                return Insert.ADDED
            for i, old in enumerate(bucket.nodes):
                if old.failures >= BAD_AFTER_FAILURES:
                    bucket.nodes[i] = node
                    self._forget(old)
                    self._index(node)
                    bucket.changed = now
                    return Insert.ADDED
            if bucket.covers(self._own) and bucket.hi - bucket.lo > 1:
                self._split(bucket)
                continue
            if len(bucket.replacements) >= K:
                self._forget(bucket.replacements.pop(0))  # the oldest goes
            bucket.replacements.append(node)
            self._index(node)
            return Insert.REPLACEMENT

    def _split(self, bucket: _Bucket) -> None:
        mid = (bucket.lo + bucket.hi) // 2
        low = _Bucket(bucket.lo, mid, [], [], bucket.changed)
        high = _Bucket(mid, bucket.hi, [], [], bucket.changed)
        for node in bucket.nodes:
            (low if self._int(node.id) < mid else high).nodes.append(node)
        for node in bucket.replacements:
            (low if self._int(node.id) < mid else high).replacements.append(node)
        # Replacements move up into a half that now has room.
        for half in (low, high):
            while len(half.nodes) < K and half.replacements:
                half.nodes.append(half.replacements.pop())
        i = self._buckets.index(bucket)
        self._buckets[i : i + 1] = [low, high]

    def _index(self, node: RoutingNode) -> None:
        self._by_id[node.id] = node
        self._by_addr[(node.ip, node.port)] = node.id

    def _forget(self, node: RoutingNode) -> None:
        self._by_id.pop(node.id, None)
        if self._by_addr.get((node.ip, node.port)) == node.id:
            del self._by_addr[(node.ip, node.port)]

    def _remove(self, node: RoutingNode) -> None:
        bucket = self._bucket(self._int(node.id))
        if node in bucket.nodes:
            bucket.nodes.remove(node)
        elif node in bucket.replacements:
            bucket.replacements.remove(node)
        self._forget(node)


# --- BEP 42 ------------------------------------------------------------------------------------
def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # Castagnoli, reflected
        table.append(c)
    return table


_CRC32C: Final = _crc32c_table()


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# BEP 42: the address bits that go into the id (the rest an ISP may vary).
_V4_MASK: Final = bytes([0x03, 0x0F, 0x3F, 0xFF])
_V6_MASK: Final = bytes([0x01, 0x03, 0x07, 0x0F, 0x1F, 0x3F, 0x7F, 0xFF])

# BEP 42: addresses on local networks are exempt (their ids cannot be tied to
# a public address); we add their IPv6 counterparts.
_EXEMPT: Final = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "127.0.0.0/8",
    "::1/128", "fc00::/7", "fe80::/10"))


def bep42_exempt(ip: str) -> bool:
    """True for loopback, private and link-local addresses, which BEP 42 does not check."""
    addr = ipaddress.ip_address(ip)
    return any(addr.version == net.version and addr in net for net in _EXEMPT)


def _bep42_prefix(ip: str, r: int) -> int:
    packed = ipaddress.ip_address(ip).packed
    mask = _V4_MASK if len(packed) == 4 else _V6_MASK
    masked = bytearray(a & m for a, m in zip(packed, mask, strict=False))
    masked[0] |= (r & 7) << 5
    return _crc32c(bytes(masked))


def bep42_valid(node_id: bytes, ip: str) -> bool:
    """Whether ``node_id`` is one BEP 42 allows at ``ip`` (exempt addresses always are).

    The id's first 21 bits must match the CRC32-C of the masked address with
    the id's last byte's low 3 bits mixed in.
    """
    if len(node_id) != ID_LENGTH:
        return False
    try:
        if bep42_exempt(ip):
            return True
        crc = _bep42_prefix(ip, node_id[19])
    except ValueError:
        return False
    return (node_id[0] == crc >> 24 and node_id[1] == (crc >> 16) & 0xFF
            and node_id[2] & 0xF8 == (crc >> 8) & 0xF8)


def bep42_id(ip: str, rand: int, middle: bytes) -> bytes:
    """A node id BEP 42 allows at ``ip`` (our own, once we know our external address).

    Args:
        ip: the address the id is for.
        rand: the id's last byte (0..255); its low 3 bits pick one of 8 prefixes.
        middle: 17 random bytes: the low 3 bits of the first go into byte 2,
            the other 16 are bytes 3..18.
    """
    if len(middle) != 17 or not 0 <= rand <= 255:
        raise ValueError("bep42_id needs 17 random bytes and a last byte 0..255")
    crc = _bep42_prefix(ip, rand)
    head = bytes([crc >> 24, (crc >> 16) & 0xFF, ((crc >> 8) & 0xF8) | (middle[0] & 7)])
    return head + middle[1:] + bytes([rand])


# --- saved state -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SavedState:
    """What a saved table holds: our id (None if unreadable) and its nodes."""

    own_id: bytes | None
    nodes: tuple[NodeInfo, ...]


def dump(table: RoutingTable, now: float) -> bytes:
    """The table in its saved form (for the state directory): our id and its nodes.

    Bad nodes are left out, good ones first; at most one full table's worth.
    """
    nodes = sorted((n for n in table.nodes() if n.state(now) != NodeState.BAD),
                   key=lambda n: n.state(now))[:_MAX_SAVED_NODES]
    compact = b"".join(n.id + ipaddress.ip_address(n.ip).packed + n.port.to_bytes(2, "big")
                       for n in nodes)
    key = b"nodes" if table.family == 4 else b"nodes6"
    return bencoding.encode({b"id": table.own_id, key: compact})


def load(data: bytes) -> SavedState:
    """Read a saved table. Never raises: anything corrupt yields an empty state.

    A file larger than MAX_STATE_SIZE, not bencode, or with a field of the
    wrong shape is not trusted at all (a half-read table is no better than
    bootstrapping).
    """
    empty = SavedState(None, ())
    if len(data) > MAX_STATE_SIZE:
        return empty
    try:
        top = bencoding.decode(bytes(data), max_size=MAX_STATE_SIZE, max_depth=4)
    except bencoding.BencodeError:
        return empty
    if not isinstance(top, dict):
        return empty
    own = top.get(b"id")
    if not isinstance(own, bytes) or len(own) != ID_LENGTH:
        return empty
    nodes: list[NodeInfo] = []
    for key, width in ((b"nodes", 26), (b"nodes6", 38)):
        raw = top.get(key, b"")
        if not isinstance(raw, bytes) or len(raw) % width:
            return empty
        for i in range(min(len(raw) // width, _MAX_SAVED_NODES)):
            entry = raw[i * width : (i + 1) * width]
            port = int.from_bytes(entry[-2:], "big")
            if port:
                nodes.append(NodeInfo(entry[:ID_LENGTH],
                                      str(ipaddress.ip_address(entry[ID_LENGTH:-2])), port))
    return SavedState(own, tuple(nodes))
