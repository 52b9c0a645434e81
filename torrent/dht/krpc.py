"""The KRPC codec of the Mainline DHT (BEP 5, BEP 32 for IPv6, BEP 43 read-only), sans-IO.

Theory of operation
-------------------
A KRPC message is one bencoded dict in one UDP datagram: ``t`` the
transaction id (echoed back by the answer), ``y`` the kind (``q`` query,
``r`` response, ``e`` error). A query names its method in ``q`` and carries
its arguments in ``a``; a response carries a dict in ``r``; an error a list
``[code, message]`` in ``e``.

One frozen class per message: :class:`Ping`, :class:`FindNode`,
:class:`GetPeers`, :class:`AnnouncePeer` (queries), :class:`UnknownQuery` (a
method we do not speak, to be answered with error 204), :class:`Response`,
:class:`Error`. A response does not say which query it answers -- the sender
matches it by transaction id -- so one :class:`Response` holds every field a
BEP 5 answer may carry: ``nodes`` (compact IPv4 node infos, 26 bytes each),
``nodes6`` (BEP 32, 38 bytes each), ``values`` (compact peers, 6 or 18
bytes each) and ``token``.

:func:`decode` takes a datagram and returns one message or raises
:class:`KRPCError`, which names the field at fault and, once the
transaction id is known, carries it (so a server can answer error 203).
Nothing else escapes it (a Hypothesis test holds it to that). Lists a
sender may pad -- nodes, values -- are cut at their bound and the rest is
counted in ``ignored`` rather than refused: a reply with a thousand values
still yields its first :data:`MAX_VALUES`. :func:`encode` raises
:class:`~torrent.wire.messages.LocalProtocolError` for values that break the
protocol: those are our bugs.

What needs state -- matching a response to our query, our own id in a node
list, BEP 42 checks, tokens -- belongs to the routing table, the lookup and
the node, not here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from .. import bencoding
from ..errors import RemoteProtocolError
from ..wire.messages import LocalProtocolError

__all__ = [
    "ERROR_GENERIC",
    "ERROR_METHOD_UNKNOWN",
    "ERROR_PROTOCOL",
    "ERROR_SERVER",
    "ID_LENGTH",
    "MAX_DATAGRAM",
    "MAX_ERROR_MESSAGE",
    "MAX_METHOD",
    "MAX_NODES",
    "MAX_TOKEN",
    "MAX_TRANSACTION_ID",
    "MAX_VALUES",
    "Address",
    "AnnouncePeer",
    "Error",
    "FindNode",
    "GetPeers",
    "KRPCError",
    "Message",
    "NodeInfo",
    "Ping",
    "Query",
    "Response",
    "UnknownQuery",
    "decode",
    "encode",
]

#: An (ip, port) pair, ip as text ("1.2.3.4" or "::1").
Address = tuple[str, int]

ID_LENGTH: Final = 20  # BEP 5: node ids and info-hashes are 160 bits

# The largest datagram we decode or send. KRPC messages are meant to travel in
# one unfragmented UDP datagram, and 1500 bytes is the Ethernet MTU most paths
# have. The largest answer we can provoke is a get_peers reply: 100 values
# (the number libtorrent caps its replies at) of 8 encoded bytes, 8 IPv4 and 8
# IPv6 nodes (8 * 26 + 8 * 38 bytes), a token and the envelope come to about
# 1.4 KB. We never send BEP 33 scrapes or BEP 44 puts, whose messages can be
# larger; a query of that kind is not one we answer anyway. A bigger datagram
# is refused before any parsing, so each one costs us at most 1500 bytes of work.
MAX_DATAGRAM: Final = 1500

# Transaction ids: real clients use 2 (libtorrent, uTorrent) to 4 or 8 bytes.
# We echo a querier's id back, so it must be bounded; 16 is twice the longest
# seen and stops a querier from making our answer carry its garbage.
MAX_TRANSACTION_ID: Final = 16

# Tokens (BEP 5 get_peers -> announce_peer): libtorrent sends 4 bytes, others a
# 20-byte SHA-1 digest or its 40-character hex form. We hold one per node that
# answered a lookup until the announce, so bound it; 64 covers a SHA-256 hex.
MAX_TOKEN: Final = 64

# Peers kept from one get_peers reply. 100 is what libtorrent answers with at
# most; a reply carrying more (a flood of fake peers) gives us its first 100.
MAX_VALUES: Final = 100

# Nodes kept from one reply, per family. BEP 5 answers with the K = 8 closest;
# some clients send 16. More is a node padding its answer to poison lookups.
MAX_NODES: Final = 16

# Method names: the longest BEP 5 one is "announce_peer" (13); BEP 44's
# "put"/"get", BEP 51's "sample_infohashes" (17). 32 names anything real.
MAX_METHOD: Final = 32

# Error message text: real ones are a few words ("Method Unknown"). Kept for
# logs only; longer text is cut, not refused.
MAX_ERROR_MESSAGE: Final = 256

# BEP 32 ``want`` entries: "n4" and "n6" are all that exist.
_MAX_WANT: Final = 4

# Nesting of a KRPC message: the dict, ``r``/``a``, ``values``/``want``, a
# string. Unknown keys may nest a little; nothing real goes past 8.
_MAX_DEPTH: Final = 8

# BEP 5 error codes.
ERROR_GENERIC: Final = 201
ERROR_SERVER: Final = 202
ERROR_PROTOCOL: Final = 203
ERROR_METHOD_UNKNOWN: Final = 204

_V4_PEER: Final = 6  # compact peer: 4-byte address, 2-byte port
_V6_PEER: Final = 18
_V4_NODE: Final = ID_LENGTH + _V4_PEER  # compact node info: id, then a compact peer
_V6_NODE: Final = ID_LENGTH + _V6_PEER


class KRPCError(RemoteProtocolError):
    """A datagram is not a valid KRPC message; the message names the field.

    Attributes:
        field: the field at fault (``"t"``, ``"a.info_hash"``, ``"datagram"``...).
        tid: the message's transaction id if it was read before the fault,
            so that an error 203 can be sent back; None otherwise.
    """

    def __init__(self, field: str, why: str, tid: bytes | None = None) -> None:
        super().__init__(f"KRPC {field}: {why}")
        self.field = field
        self.tid = tid


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node as a reply lists it: its id and its UDP address."""

    id: bytes
    ip: str
    port: int


@dataclass(frozen=True, slots=True)
class Ping:
    """``ping``: are you there? Answered with just the responder's id."""

    tid: bytes
    sender: bytes
    read_only: bool = False  # BEP 43: the querier does not answer queries


@dataclass(frozen=True, slots=True)
class FindNode:
    """``find_node``: the nodes closest to ``target`` the responder knows.

    ``want`` (BEP 32): which families of nodes to return, ``b"n4"`` /
    ``b"n6"``; empty means the family of the query's own address.
    """

    tid: bytes
    sender: bytes
    target: bytes
    want: tuple[bytes, ...] = ()
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class GetPeers:
    """``get_peers``: peers of ``info_hash``, or the closest nodes; and a token."""

    tid: bytes
    sender: bytes
    info_hash: bytes
    want: tuple[bytes, ...] = ()
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class AnnouncePeer:
    """``announce_peer``: the querier downloads ``info_hash`` on ``port``.

    With ``implied_port`` the port is the UDP source port of the query (the
    querier is behind a NAT that maps both the same way) and ``port`` is
    ignored. ``token`` is the one the responder gave in its get_peers reply.
    """

    tid: bytes
    sender: bytes
    info_hash: bytes
    port: int
    token: bytes
    implied_port: bool = False
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class UnknownQuery:
    """A query whose method we do not speak (BEP 44 ``get``, BEP 51...): answer error 204.

    Its sender id is still read: a valid query of any method tells us about a node.
    """

    tid: bytes
    sender: bytes
    method: bytes
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class Response:
    """An answer to any query, matched to it by ``tid``.

    Attributes:
        sender: the responder's id.
        nodes: compact IPv4 node infos (``find_node``, ``get_peers``), at
            most MAX_NODES.
        nodes6: the same for IPv6 (BEP 32).
        values: peers (``get_peers``), at most MAX_VALUES.
        token: for a later ``announce_peer`` (``get_peers``), or None.
        ip: our own address as the responder saw it (BEP 42), or None.
        ignored: entries the decoder left out: past the bounds, with port 0,
            or of the wrong length. Never set when encoding.
    """

    tid: bytes
    sender: bytes
    nodes: tuple[NodeInfo, ...] = ()
    nodes6: tuple[NodeInfo, ...] = ()
    values: tuple[Address, ...] = ()
    token: bytes | None = None
    ip: Address | None = None
    ignored: int = 0


@dataclass(frozen=True, slots=True)
class Error:
    """A KRPC error: ``code`` (201..204 in BEP 5) and a short ``message``."""

    tid: bytes
    code: int
    message: str


Query = Ping | FindNode | GetPeers | AnnouncePeer | UnknownQuery
Message = Query | Response | Error

_METHODS: Final[Mapping[type, bytes]] = {
    Ping: b"ping", FindNode: b"find_node", GetPeers: b"get_peers",
    AnnouncePeer: b"announce_peer",
}


# --- encoding ---------------------------------------------------------------------------------
def encode(msg: Message) -> bytes:
    """The datagram for ``msg``.

    Raises:
        LocalProtocolError: a field breaks the protocol (an id not 20 bytes, a
            transaction id or token past its bound, a bad address or port, more
            nodes or values than the bounds) or the datagram would exceed
            MAX_DATAGRAM.
    """
    _check_tid(msg.tid)
    out: dict[bytes, Any] = {b"t": msg.tid}
    if isinstance(msg, Response):
        out[b"y"] = b"r"
        r: dict[bytes, Any] = {b"id": _check_id("id", msg.sender)}
        if len(msg.nodes) > MAX_NODES or len(msg.nodes6) > MAX_NODES:
            raise LocalProtocolError(f"a KRPC reply holds at most {MAX_NODES} nodes per family")
        if msg.nodes:
            r[b"nodes"] = b"".join(_pack_node(n, 4) for n in msg.nodes)
        if msg.nodes6:
            r[b"nodes6"] = b"".join(_pack_node(n, 16) for n in msg.nodes6)
        if msg.values:
            if len(msg.values) > MAX_VALUES:
                raise LocalProtocolError(f"a KRPC reply holds at most {MAX_VALUES} values")
            r[b"values"] = [_pack_peer(ip, port) for ip, port in msg.values]
        if msg.token is not None:
            r[b"token"] = _check_token(msg.token)
        if msg.ip is not None:
            out[b"ip"] = _pack_peer(*msg.ip)
        out[b"r"] = r
    elif isinstance(msg, Error):
        if not 0 <= msg.code < 1 << 31:
            raise LocalProtocolError(f"KRPC error code {msg.code} out of range")
        out[b"y"] = b"e"
        out[b"e"] = [msg.code, msg.message.encode()[:MAX_ERROR_MESSAGE]]
    else:
        out[b"y"] = b"q"
        a: dict[bytes, Any] = {b"id": _check_id("id", msg.sender)}
        if isinstance(msg, UnknownQuery):
            if not 0 < len(msg.method) <= MAX_METHOD:
                raise LocalProtocolError(f"KRPC method {msg.method[:40]!r} length out of range")
            out[b"q"] = msg.method
        else:
            out[b"q"] = _METHODS[type(msg)]
        if isinstance(msg, FindNode):
            a[b"target"] = _check_id("target", msg.target)
        elif isinstance(msg, GetPeers | AnnouncePeer):
            a[b"info_hash"] = _check_id("info_hash", msg.info_hash)
        if isinstance(msg, FindNode | GetPeers) and msg.want:
            if len(msg.want) > _MAX_WANT:
                raise LocalProtocolError(f"at most {_MAX_WANT} 'want' entries")
            a[b"want"] = list(msg.want)
        if isinstance(msg, AnnouncePeer):
            if not 0 <= msg.port <= 65535 or (msg.port == 0 and not msg.implied_port):
                raise LocalProtocolError(f"announce_peer port {msg.port} out of range")
            a[b"port"] = msg.port
            a[b"token"] = _check_token(msg.token)
            if msg.implied_port:
                a[b"implied_port"] = 1
        out[b"a"] = a
        if msg.read_only:
            out[b"ro"] = 1
    try:
        data = bencoding.encode(out)
    except (TypeError, bencoding.BencodeError) as exc:
        raise LocalProtocolError(f"cannot bencode a KRPC message: {exc}") from exc
    if len(data) > MAX_DATAGRAM:
        raise LocalProtocolError(
            f"a {len(data)}-byte KRPC message exceeds the datagram bound of {MAX_DATAGRAM}")
    return data


def _check_tid(tid: bytes) -> None:
    if not 0 < len(tid) <= MAX_TRANSACTION_ID:
        raise LocalProtocolError(
            f"KRPC transaction ids are 1..{MAX_TRANSACTION_ID} bytes, not {len(tid)}")


def _check_id(what: str, value: bytes) -> bytes:
    if len(value) != ID_LENGTH:
        raise LocalProtocolError(f"KRPC {what} must be {ID_LENGTH} bytes, not {len(value)}")
    return value


def _check_token(token: bytes) -> bytes:
    if not 0 < len(token) <= MAX_TOKEN:
        raise LocalProtocolError(f"KRPC tokens are 1..{MAX_TOKEN} bytes, not {len(token)}")
    return token


def _pack_peer(ip: str, port: int) -> bytes:
    try:
        packed = ipaddress.ip_address(ip).packed
    except ValueError as exc:
        raise LocalProtocolError(f"not an IP address: {ip!r}") from exc
    if not 1 <= port <= 65535:
        raise LocalProtocolError(f"port {port} of {ip} out of range 1..65535")
    return packed + port.to_bytes(2, "big")


def _pack_node(node: NodeInfo, width: int) -> bytes:
    packed = _pack_peer(node.ip, node.port)
    if len(packed) != width + 2:
        raise LocalProtocolError(
            f"node {node.ip} listed under the wrong family (nodes are IPv4, nodes6 IPv6)")
    return _check_id("node id", node.id) + packed


# --- decoding ---------------------------------------------------------------------------------
def decode(data: bytes) -> Message:
    """Read one datagram.

    Raises:
        KRPCError: the datagram is larger than MAX_DATAGRAM, not strict
            bencode, not a dict, or a field is missing, of the wrong type or
            past its bound; the error names the field and carries the
            transaction id if it was read.
    """
    if len(data) > MAX_DATAGRAM:
        raise KRPCError("datagram", f"{len(data)} bytes, more than the bound of {MAX_DATAGRAM}")
    try:
        top = bencoding.decode(bytes(data), max_size=MAX_DATAGRAM, max_depth=_MAX_DEPTH)
    except bencoding.BencodeError as exc:
        raise KRPCError("datagram", f"not valid bencode: {exc}") from exc
    if not isinstance(top, dict):
        raise KRPCError("datagram", "not a dict")
    tid = top.get(b"t")
    if not isinstance(tid, bytes) or not 0 < len(tid) <= MAX_TRANSACTION_ID:
        raise KRPCError("t", f"a transaction id is a string of 1..{MAX_TRANSACTION_ID} bytes")
    kind = top.get(b"y")
    if kind == b"q":
        return _decode_query(top, tid)
    if kind == b"r":
        return _decode_response(top, tid)
    if kind == b"e":
        return _decode_error(top, tid)
    raise KRPCError("y", f"kind {kind!r:.40} is not 'q', 'r' or 'e'", tid)


def _dict(d: Mapping[bytes, Any], key: bytes, tid: bytes) -> Mapping[bytes, Any]:
    value = d.get(key)
    if not isinstance(value, dict):
        raise KRPCError(key.decode(), "missing or not a dict", tid)
    return value


def _id(d: Mapping[bytes, Any], key: bytes, where: str, tid: bytes) -> bytes:
    value = d.get(key)
    if not isinstance(value, bytes) or len(value) != ID_LENGTH:
        raise KRPCError(f"{where}.{key.decode()}", f"missing or not {ID_LENGTH} bytes", tid)
    return value


def _flag(d: Mapping[bytes, Any], key: bytes, where: str, tid: bytes) -> bool:
    value = d.get(key, 0)
    if not isinstance(value, int):
        raise KRPCError(f"{where}.{key.decode()}" if where else key.decode(), "not an integer", tid)
    return value != 0


def _want(a: Mapping[bytes, Any], tid: bytes) -> tuple[bytes, ...]:
    value = a.get(b"want")
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > _MAX_WANT:
        raise KRPCError("a.want", f"not a list of at most {_MAX_WANT} strings", tid)
    if not all(isinstance(w, bytes) for w in value):
        raise KRPCError("a.want", "an entry is not a string", tid)
    return tuple(value)


def _decode_query(top: Mapping[bytes, Any], tid: bytes) -> Query:
    method = top.get(b"q")
    if not isinstance(method, bytes) or not 0 < len(method) <= MAX_METHOD:
        raise KRPCError("q", f"a method is a string of 1..{MAX_METHOD} bytes", tid)
    a = _dict(top, b"a", tid)
    sender = _id(a, b"id", "a", tid)
    ro = _flag(top, b"ro", "", tid)
    if method == b"ping":
        return Ping(tid, sender, ro)
    if method == b"find_node":
        return FindNode(tid, sender, _id(a, b"target", "a", tid), _want(a, tid), ro)
    if method == b"get_peers":
        return GetPeers(tid, sender, _id(a, b"info_hash", "a", tid), _want(a, tid), ro)
    if method == b"announce_peer":
        info_hash = _id(a, b"info_hash", "a", tid)
        implied = _flag(a, b"implied_port", "a", tid)
        port = a.get(b"port")
        if implied and port is None:
            port = 0  # BEP 5: with implied_port the port argument is ignored
        if not isinstance(port, int) or not 0 <= port <= 65535 or (port == 0 and not implied):
            raise KRPCError("a.port", "missing or not a port 1..65535", tid)
        token = a.get(b"token")
        if not isinstance(token, bytes) or not 0 < len(token) <= MAX_TOKEN:
            raise KRPCError("a.token", f"missing or not a string of 1..{MAX_TOKEN} bytes", tid)
        return AnnouncePeer(tid, sender, info_hash, port, token, implied, ro)
    return UnknownQuery(tid, sender, method, ro)


def _decode_response(top: Mapping[bytes, Any], tid: bytes) -> Response:
    r = _dict(top, b"r", tid)
    sender = _id(r, b"id", "r", tid)
    ignored = 0
    families: list[tuple[NodeInfo, ...]] = []
    for key, width in ((b"nodes", _V4_NODE), (b"nodes6", _V6_NODE)):
        raw = r.get(key, b"")
        if not isinstance(raw, bytes) or len(raw) % width:
            raise KRPCError(f"r.{key.decode()}",
                            f"not a string of {width}-byte compact node infos", tid)
        count = len(raw) // width
        take = min(count, MAX_NODES)
        ignored += count - take
        nodes: list[NodeInfo] = []
        for i in range(take):
            entry = raw[i * width : (i + 1) * width]
            host, port = _unpack_peer(entry[ID_LENGTH:])
            if port == 0:
                ignored += 1
                continue
            nodes.append(NodeInfo(entry[:ID_LENGTH], host, port))
        families.append(tuple(nodes))
    values: list[Address] = []
    raw_values = r.get(b"values")
    if raw_values is not None:
        if not isinstance(raw_values, list):
            raise KRPCError("r.values", "not a list", tid)
        for v in raw_values:
            if not isinstance(v, bytes):
                raise KRPCError("r.values", "an entry is not a string", tid)
            if len(values) >= MAX_VALUES or len(v) not in (_V4_PEER, _V6_PEER):
                ignored += 1  # past the bound, or a stray length some clients send
                continue
            peer = _unpack_peer(v)
            if peer[1] == 0:
                ignored += 1
                continue
            values.append(peer)
    token = r.get(b"token")
    if token is not None and (not isinstance(token, bytes) or not 0 < len(token) <= MAX_TOKEN):
        raise KRPCError("r.token", f"not a string of 1..{MAX_TOKEN} bytes", tid)
    ip: Address | None = None
    raw_ip = top.get(b"ip")
    if raw_ip is not None:
        if not isinstance(raw_ip, bytes) or len(raw_ip) not in (_V4_PEER, _V6_PEER):
            raise KRPCError("ip", "not a compact address of 6 or 18 bytes", tid)
        ip = _unpack_peer(raw_ip)
    return Response(tid, sender, families[0], families[1], tuple(values), token, ip, ignored)


def _decode_error(top: Mapping[bytes, Any], tid: bytes) -> Error:
    e = top.get(b"e")
    if (not isinstance(e, list) or len(e) < 2 or not isinstance(e[0], int)
            or not isinstance(e[1], bytes)):
        raise KRPCError("e", "not a list [code, message]", tid)
    text = e[1][:MAX_ERROR_MESSAGE].decode("utf-8", "replace")
    return Error(tid, e[0], "".join(c if c.isprintable() else "?" for c in text))


def _unpack_peer(raw: bytes) -> Address:
    """A compact address: 4 or 16 address bytes, then a big-endian port."""
    return str(ipaddress.ip_address(raw[:-2])), int.from_bytes(raw[-2:], "big")
