"""The extension protocol (BEP 10), metadata exchange (BEP 9) and peer exchange (BEP 11), sans-IO.

Theory of operation
-------------------
An extension message travels in a BEP 10 ``extended`` frame
(:class:`~torrent.wire.messages.Extended`, message id 20): one byte of
extension id, then a body. Extension id 0 is the *extension handshake*
(:class:`ExtensionHandshake`), a bencoded dict each side sends right after
the BEP 3 handshake and may send again later. Its ``m`` maps extension names
to the ids its *sender* wants to receive those extensions under; it is
additive (a later handshake only lists changes) and id 0 disables one. So:

- messages we receive carry *our* ids, the ones we announced:
  :data:`OUR_EXTENSION_IDS` (name -> id) and :data:`OUR_EXTENSION_NAMES`
  (id -> name, to dispatch an incoming message);
- messages we send carry the *peer's* ids: :func:`merge_peer_ids` folds each
  handshake the peer sends into the table of its ids for the extensions we
  speak.

The bodies of the two extensions we speak:

- ``ut_metadata`` (BEP 9): :class:`MetadataRequest`, :class:`MetadataData`
  (a bencoded dict followed by up to 16 KiB of raw metadata) and
  :class:`MetadataReject`, read by :func:`decode_metadata_message`; the info
  dictionary is cut into :data:`METADATA_PIECE` pieces
  (:func:`metadata_piece_count`, :func:`metadata_data`).
- ``ut_pex`` (BEP 11): :class:`Pex`, peers added (with their flags) and
  dropped, IPv4 and IPv6, in compact form.

Every decoder takes the body bytes, checks each length and count against a
named bound, and raises :class:`~torrent.errors.RemoteProtocolError` naming
what is wrong; nothing else escapes (a Hypothesis test holds it to that).
Encoders raise :class:`~torrent.wire.messages.LocalProtocolError` for values
that break the protocol: those are our bugs. What needs state -- which
metadata pieces are outstanding, the one-PEX-message-a-minute rule, leaving
our own address out of what PEX taught us, private torrents (BEP 27) --
belongs to the connection and its owner, not here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from .. import bencoding
from ..errors import RemoteProtocolError
from ..peeraddr import COMPACT_V4, COMPACT_V6, compact_count, pack_compact, unpack_compact
from .messages import LocalProtocolError
from .record import Record, setfield

__all__ = [
    "EXTENSION_HANDSHAKE_ID",
    "MAX_CLIENT_NAME_LENGTH",
    "MAX_EXTENSION_NAMES",
    "MAX_HANDSHAKE_LENGTH",
    "MAX_METADATA_HEADER_LENGTH",
    "MAX_METADATA_PIECES",
    "MAX_METADATA_SIZE",
    "MAX_PEX_ADDED",
    "MAX_PEX_DROPPED",
    "MAX_PEX_LENGTH",
    "MAX_REQQ",
    "METADATA_DATA",
    "METADATA_PIECE",
    "METADATA_REJECT",
    "METADATA_REQUEST",
    "OUR_EXTENSION_IDS",
    "OUR_EXTENSION_NAMES",
    "PEX_ENCRYPTION",
    "PEX_HOLEPUNCH",
    "PEX_REACHABLE",
    "PEX_SEED",
    "PEX_UTP",
    "UT_METADATA",
    "UT_PEX",
    "Address",
    "ExtensionHandshake",
    "MetadataData",
    "MetadataMessage",
    "MetadataReject",
    "MetadataRequest",
    "Pex",
    "PexPeer",
    "decode_metadata_message",
    "merge_peer_ids",
    "metadata_data",
    "metadata_piece_count",
    "metadata_piece_length",
]

# --- BEP 10: the extension handshake ------------------------------------------------
EXTENSION_HANDSHAKE_ID: Final = 0  # BEP 10: extended message id 0 is the handshake

UT_METADATA: Final = "ut_metadata"  # BEP 9 metadata exchange
UT_PEX: Final = "ut_pex"  # BEP 11 peer exchange

#: The extension ids we announce in our handshake's ``m``: a peer sends us
#: each extension's messages under these ids. Any distinct non-zero one-byte
#: values do; these never change, so they are constants to dispatch on.
OUR_EXTENSION_IDS: Final[Mapping[str, int]] = MappingProxyType({UT_METADATA: 1, UT_PEX: 2})
#: The same table the other way: extended message id -> extension name.
OUR_EXTENSION_NAMES: Final[Mapping[int, str]] = MappingProxyType(
    {ext_id: name for name, ext_id in OUR_EXTENSION_IDS.items()})

# The largest extension handshake body we accept. Real ones are a few hundred
# bytes (libtorrent's, with m, v, p, reqq, yourip, metadata_size and a few of
# its own keys, is under 300); 16 KiB is fifty times that, and keeps a peer
# from making us decode a dict the size of the whole extended-message bound.
MAX_HANDSHAKE_LENGTH: Final = 16 * 1024

# Entries in a handshake's ``m``. Extension ids are one byte, so at most 255
# extensions can be live at once; real clients announce under 20. A longer
# ``m`` is a peer making us hold names for nothing.
MAX_EXTENSION_NAMES: Final = 255

# Nesting of an extension message body. A handshake's own fields nest two deep
# (the dict, then ``m``), ut_metadata and ut_pex bodies one; unknown keys may
# add some, but nothing legitimate nests deeper than this.
_MAX_DEPTH: Final = 16

# ``v``, the peer's client name, is only shown in logs and summaries: longer
# names are cut to this many characters rather than refused.
MAX_CLIENT_NAME_LENGTH: Final = 100

# The most outstanding requests a peer's ``reqq`` may announce; a larger value
# is clamped to it. libtorrent announces its max_allowed_in_request_queue,
# 500 by default and 2000 in its high-performance seed preset (the largest we
# know of); our own pipeline is capped lower still, so more than 2000 could
# never be used.
MAX_REQQ: Final = 2000

# --- BEP 9: metadata exchange ---------------------------------------------------------
# BEP 9: "The metadata is handled in blocks of 16KiB (16384 Bytes)"; every
# piece but the last is exactly this long.
METADATA_PIECE: Final = 16 * 1024

# The largest info dictionary we fetch from peers (``metadata_size`` in the
# handshake, ``total_size`` in data messages). libtorrent's default
# max_metadata_size is 30 MiB, anacrolix/torrent's 16 MiB. We take
# libtorrent's, so a magnet link libtorrent can open we can open too: 30 MiB
# is 1.5 million piece hashes or some 300,000 files, far past any torrent
# seen in practice, and it is the most one magnet download holds in memory
# while it assembles the metadata. A peer announcing more is refused.
MAX_METADATA_SIZE: Final = 30 * 1024 * 1024
MAX_METADATA_PIECES: Final = -(-MAX_METADATA_SIZE // METADATA_PIECE)  # 1920

# The bencoded dict at the front of a ut_metadata message: three small
# integers, about 50 bytes. libtorrent drops a peer whose ut_metadata message
# is over 17 KiB, i.e. 16 KiB of data plus at most 1 KiB of dict; we bound the
# dict the same way, so a whole message is at most 17 KiB.
MAX_METADATA_HEADER_LENGTH: Final = 1024

METADATA_REQUEST: Final = 0  # BEP 9 msg_type: "send me this piece"
METADATA_DATA: Final = 1  # BEP 9 msg_type: a piece, raw bytes behind the dict
METADATA_REJECT: Final = 2  # BEP 9 msg_type: "I do not have this piece"

# --- BEP 11: peer exchange -------------------------------------------------------------
# BEP 11 flags, one byte per added peer (``added.f`` / ``added6.f``).
PEX_ENCRYPTION: Final = 0x01  # prefers encryption (its handshake's ``e``)
PEX_SEED: Final = 0x02  # seed / upload only
PEX_UTP: Final = 0x04  # supports uTP
PEX_HOLEPUNCH: Final = 0x08  # announced ut_holepunch: usable as a rendezvous
PEX_REACHABLE: Final = 0x10  # the sender connected out to it: it accepts connections

# BEP 11: "Except for the initial PEX message the combined amount of added
# v4/v6 contacts should not exceed 50 entries. The same applies to dropped
# entries." We take at most this many of each from one message and count the
# rest as ignored instead of dropping the peer: the initial message may
# legitimately carry more, and libtorrent puts up to 100 added peers in any
# of its messages, so a longer list is no sign of a hostile peer, while
# parsing only the first 50 bounds what any message can cost us.
MAX_PEX_ADDED: Final = 50
MAX_PEX_DROPPED: Final = 50

# The largest ut_pex body we accept. An honest one is a few KB: libtorrent's
# ``added`` holds at most 100 peers, its ``dropped`` the peers it lost in the
# last minute, bounded by its connection limit. The frame bound of extended
# messages (64 KiB, MAX_EXTENDED_LENGTH) already caps it; this is the same
# bound for callers that hand a body in from elsewhere. Only the first
# MAX_PEX_ADDED / MAX_PEX_DROPPED entries are ever parsed.
MAX_PEX_LENGTH: Final = 64 * 1024

Address = tuple[str, int]  # (ip, port), the ip canonical (torrent/peeraddr.py)


# --- helpers ----------------------------------------------------------------------------
def _bdecode(what: str, body: bytes, max_size: int) -> Any:
    try:
        return bencoding.decode(body, max_size=max_size, max_depth=_MAX_DEPTH)
    except bencoding.BencodeError as exc:
        raise RemoteProtocolError(f"peer sent a {what} that is not valid bencode: {exc}") from exc


def _bencode(obj: Any) -> bytes:
    try:
        return bencoding.encode(obj)
    except (TypeError, bencoding.BencodeError) as exc:
        raise LocalProtocolError(f"cannot bencode {obj!r}: {exc}") from exc


def _int_field(what: str, d: Mapping[bytes, Any], key: bytes) -> int | None:
    """``d[key]`` if it is an integer, None if absent; anything else is an error."""
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, int):
        raise RemoteProtocolError(
            f"peer sent a {what} whose {key.decode()!r} is not an integer: {value!r:.40}")
    return value


def _pack_ip(ip: str) -> bytes:
    try:
        return ipaddress.ip_address(ip).packed
    except ValueError as exc:
        raise LocalProtocolError(f"not an IP address: {ip!r}") from exc


# --- BEP 10 handshake ---------------------------------------------------------------------
class ExtensionHandshake(Record):
    """A BEP 10 extension handshake (the body of extended message 0).

    Every field is optional (BEP 10); unknown keys are ignored on decode.

    Attributes:
        m: extension name -> the id its sender receives it under (0: disabled).
        v: the sender's client name and version, cut to MAX_CLIENT_NAME_LENGTH.
        p: the sender's TCP listen port.
        reqq: requests the sender queues without dropping any, clamped to
            [1, MAX_REQQ].
        yourip: the address the sender sees the receiver as (IPv4 or IPv6).
        ipv4: the sender's own IPv4 address, if it told it (4 bytes on the wire).
        ipv6: the sender's own IPv6 address, if it told it (16 bytes on the
            wire; BEP 10: a peer connected over IPv4 may use it to reach the
            sender over IPv6).
        metadata_size: BEP 9: bytes of the info dictionary, 1..MAX_METADATA_SIZE.
    """

    m: Mapping[str, int]
    v: str | None
    p: int | None
    reqq: int | None
    yourip: str | None
    ipv4: str | None
    ipv6: str | None
    metadata_size: int | None

    __slots__ = ("ipv4", "ipv6", "m", "metadata_size", "p", "reqq", "v", "yourip")

    def __init__(self, m: Mapping[str, int] | None = None, v: str | None = None,
                 p: int | None = None, reqq: int | None = None, yourip: str | None = None,
                 ipv4: str | None = None, ipv6: str | None = None,
                 metadata_size: int | None = None) -> None:
        setfield(self, "m", {} if m is None else m)
        setfield(self, "v", v)
        setfield(self, "p", p)
        setfield(self, "reqq", reqq)
        setfield(self, "yourip", yourip)
        setfield(self, "ipv4", ipv4)
        setfield(self, "ipv6", ipv6)
        setfield(self, "metadata_size", metadata_size)

    def encode(self) -> bytes:
        """The bencoded body of our handshake.

        Raises:
            LocalProtocolError: a field is out of its range.
        """
        if len(self.m) > MAX_EXTENSION_NAMES:
            raise LocalProtocolError(f"{len(self.m)} extensions in m, more than a peer accepts")
        for name, ext_id in self.m.items():
            if not 0 <= ext_id <= 255:
                raise LocalProtocolError(f"extension {name!r} has id {ext_id}; ids are 0..255")
        d: dict[bytes, Any] = {b"m": {name.encode(): ext_id for name, ext_id in self.m.items()}}
        if self.v is not None:
            d[b"v"] = self.v.encode()
        if self.p is not None:
            if not 1 <= self.p <= 65535:
                raise LocalProtocolError(f"listen port {self.p} is not 1..65535")
            d[b"p"] = self.p
        if self.reqq is not None:
            if not 1 <= self.reqq <= MAX_REQQ:
                raise LocalProtocolError(f"reqq {self.reqq} is not 1..{MAX_REQQ}")
            d[b"reqq"] = self.reqq
        if self.yourip is not None:
            d[b"yourip"] = _pack_ip(self.yourip)
        for key, ip, size in ((b"ipv4", self.ipv4, 4), (b"ipv6", self.ipv6, 16)):
            if ip is not None:
                packed = _pack_ip(ip)
                if len(packed) != size:
                    raise LocalProtocolError(f"{key.decode()} {ip!r} is not an "
                                             f"IPv{4 if size == 4 else 6} address")
                d[key] = packed
        if self.metadata_size is not None:
            if not 1 <= self.metadata_size <= MAX_METADATA_SIZE:
                raise LocalProtocolError(
                    f"metadata_size {self.metadata_size} is not 1..{MAX_METADATA_SIZE}")
            d[b"metadata_size"] = self.metadata_size
        out = _bencode(d)
        if len(out) > MAX_HANDSHAKE_LENGTH:
            raise LocalProtocolError(f"our extension handshake is {len(out)} bytes")
        return out

    @classmethod
    def decode(cls, body: bytes) -> ExtensionHandshake:
        """Read a peer's extension handshake.

        Args:
            body: the extended message's body (after the extension id 0).

        Returns:
            The handshake; names in ``m`` that are not UTF-8 are left out
            (they cannot name an extension we speak).

        Raises:
            RemoteProtocolError: larger than MAX_HANDSHAKE_LENGTH, not a
                strict bencoded dict, ``m`` not a dict, with more than
                MAX_EXTENSION_NAMES entries or an id that is not an integer
                0..255, ``p`` outside 0..65535, ``yourip`` not 4 or 16 bytes,
                ``ipv4`` not 4 bytes, ``ipv6`` not 16 bytes,
                ``metadata_size`` negative or over MAX_METADATA_SIZE, or a
                field we use with the wrong type.
        """
        if len(body) > MAX_HANDSHAKE_LENGTH:
            raise RemoteProtocolError(
                f"peer sent a {len(body)}-byte extension handshake; the bound is "
                f"{MAX_HANDSHAKE_LENGTH}")
        top = _bdecode("extension handshake", body, MAX_HANDSHAKE_LENGTH)
        if not isinstance(top, dict):
            raise RemoteProtocolError(
                f"peer sent an extension handshake that is not a dict: {body[:40]!r}")
        return cls(
            m=_decode_m(top.get(b"m")),
            v=_decode_client_name(top.get(b"v")),
            p=_decode_port(_int_field("extension handshake", top, b"p")),
            reqq=_decode_reqq(_int_field("extension handshake", top, b"reqq")),
            yourip=_decode_yourip(top.get(b"yourip")),
            ipv4=_decode_own_ip(top.get(b"ipv4"), "ipv4", 4),
            ipv6=_decode_own_ip(top.get(b"ipv6"), "ipv6", 16),
            metadata_size=_decode_metadata_size(
                _int_field("extension handshake", top, b"metadata_size")),
        )


def _decode_m(raw: Any) -> dict[str, int]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RemoteProtocolError(
            f"peer's extension handshake has an 'm' that is not a dict: {raw!r:.40}")
    if len(raw) > MAX_EXTENSION_NAMES:
        raise RemoteProtocolError(
            f"peer's extension handshake lists {len(raw)} extensions in 'm'; the bound is "
            f"{MAX_EXTENSION_NAMES}")
    out: dict[str, int] = {}
    for key, ext_id in raw.items():
        if not isinstance(ext_id, int) or not 0 <= ext_id <= 255:
            raise RemoteProtocolError(
                f"peer's extension handshake maps {key[:40]!r} to {ext_id!r:.40}; extension "
                "ids are integers 0..255 (BEP 10)")
        try:
            name = key.decode()
        except UnicodeDecodeError:
            continue  # not a name we could speak; BEP 10: ignore unknown names
        out[name] = ext_id
    return out


def _decode_client_name(raw: Any) -> str | None:
    # Display only: a wrong type is ignored rather than refused.
    if not isinstance(raw, bytes):
        return None
    return raw[: 4 * MAX_CLIENT_NAME_LENGTH].decode(errors="replace")[:MAX_CLIENT_NAME_LENGTH]


def _decode_port(port: int | None) -> int | None:
    if port is None or port == 0:  # 0: no listen port to tell
        return None
    if not 1 <= port <= 65535:
        raise RemoteProtocolError(
            f"peer's extension handshake gives listen port {port}; ports are 1..65535")
    return port


def _decode_reqq(reqq: int | None) -> int | None:
    if reqq is None or reqq < 1:  # as libtorrent: a non-positive reqq says nothing
        return None
    return min(reqq, MAX_REQQ)


def _decode_yourip(raw: Any) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, bytes) or len(raw) not in (4, 16):
        raise RemoteProtocolError(
            f"peer's extension handshake has a 'yourip' of {raw!r:.40}; BEP 10 wants a "
            "4- or 16-byte address")
    return str(ipaddress.ip_address(raw))


def _decode_own_ip(raw: Any, key: str, size: int) -> str | None:
    """BEP 10 ``ipv4`` / ``ipv6``: the sender's own address, exactly ``size`` bytes."""
    if raw is None:
        return None
    if not isinstance(raw, bytes) or len(raw) != size:
        raise RemoteProtocolError(
            f"peer's extension handshake has an {key!r} of {raw!r:.40}; BEP 10 wants a "
            f"{size}-byte address")
    return str(ipaddress.ip_address(raw))


def _decode_metadata_size(size: int | None) -> int | None:
    if size is None or size == 0:  # 0: the sender has no metadata to offer
        return None
    if not 1 <= size <= MAX_METADATA_SIZE:
        raise RemoteProtocolError(
            f"peer announced metadata_size {size}; we accept 1..{MAX_METADATA_SIZE} bytes")
    return size


def merge_peer_ids(current: Mapping[str, int], m: Mapping[str, int]) -> dict[str, int]:
    """The peer's ids for the extensions we speak, after it sent a handshake with ``m``.

    BEP 10: ``m`` is additive: a name it leaves out keeps its id, id 0
    disables the extension. Names we do not speak are ignored.

    Args:
        current: the peer's ids so far (empty before its first handshake).
        m: the ``m`` of the handshake it just sent.

    Returns:
        A new table name -> the id to send that extension's messages under;
        an extension absent from it must not be sent.
    """
    out = dict(current)
    for name in OUR_EXTENSION_IDS:
        ext_id = m.get(name)
        if ext_id is None:
            continue
        if ext_id == 0:
            out.pop(name, None)
        else:
            out[name] = ext_id
    return out


# --- BEP 9 ut_metadata ------------------------------------------------------------------
def metadata_piece_count(size: int) -> int:
    """How many METADATA_PIECE pieces an info dictionary of ``size`` bytes has."""
    return -(-size // METADATA_PIECE)


def metadata_piece_length(size: int, piece: int) -> int:
    """The length of ``piece`` of an info dictionary of ``size`` bytes (BEP 9).

    Raises:
        LocalProtocolError: ``piece`` is not one of its pieces.
    """
    if not 0 <= piece < metadata_piece_count(size):
        raise LocalProtocolError(f"metadata of {size} bytes has no piece {piece}")
    return min(METADATA_PIECE, size - piece * METADATA_PIECE)


class MetadataRequest(Record):
    """BEP 9 ``request``: send me ``piece`` of the info dictionary."""

    piece: int

    __slots__ = ("piece",)

    def __init__(self, piece: int) -> None:
        setfield(self, "piece", piece)

    def encode(self) -> bytes:
        """The body of the ut_metadata message."""
        _check_piece_index(self.piece)
        return _bencode({b"msg_type": METADATA_REQUEST, b"piece": self.piece})


class MetadataData(Record):
    """BEP 9 ``data``: ``piece`` of an info dictionary of ``total_size`` bytes."""

    piece: int
    total_size: int
    data: bytes

    __slots__ = ("data", "piece", "total_size")

    def __init__(self, piece: int, total_size: int, data: bytes) -> None:
        setfield(self, "piece", piece)
        setfield(self, "total_size", total_size)
        setfield(self, "data", data)

    def encode(self) -> bytes:
        """The body of the ut_metadata message: the bencoded dict, then the raw piece.

        Raises:
            LocalProtocolError: the piece does not fit ``total_size``.
        """
        if not 1 <= self.total_size <= MAX_METADATA_SIZE:
            raise LocalProtocolError(f"metadata total_size {self.total_size} out of range")
        if len(self.data) != metadata_piece_length(self.total_size, self.piece):
            raise LocalProtocolError(
                f"metadata piece {self.piece} of {self.total_size} bytes cannot be "
                f"{len(self.data)} bytes long")
        header = _bencode({b"msg_type": METADATA_DATA, b"piece": self.piece,
                           b"total_size": self.total_size})
        return header + bytes(self.data)


class MetadataReject(Record):
    """BEP 9 ``reject``: the sender does not have ``piece`` (or will not send it)."""

    piece: int

    __slots__ = ("piece",)

    def __init__(self, piece: int) -> None:
        setfield(self, "piece", piece)

    def encode(self) -> bytes:
        """The body of the ut_metadata message."""
        _check_piece_index(self.piece)
        return _bencode({b"msg_type": METADATA_REJECT, b"piece": self.piece})


MetadataMessage = MetadataRequest | MetadataData | MetadataReject


def _check_piece_index(piece: int) -> None:
    if not 0 <= piece < MAX_METADATA_PIECES:
        raise LocalProtocolError(f"metadata piece {piece} is not 0..{MAX_METADATA_PIECES - 1}")


def metadata_data(info: bytes, piece: int) -> MetadataData:
    """The ``data`` message that serves ``piece`` of the info dictionary ``info``.

    Raises:
        LocalProtocolError: ``info`` is larger than MAX_METADATA_SIZE or has
            no such piece (answer a request for it with a reject).
    """
    size = len(info)
    if size > MAX_METADATA_SIZE:
        raise LocalProtocolError(
            f"an info dictionary of {size} bytes is over MAX_METADATA_SIZE; peers refuse it")
    length = metadata_piece_length(size, piece)
    start = piece * METADATA_PIECE
    return MetadataData(piece, size, bytes(info[start : start + length]))


def decode_metadata_message(
    body: bytes, metadata_size: int | None = None
) -> MetadataMessage | None:
    """Read a ut_metadata message body (BEP 9).

    Args:
        body: the extended message's body (after our ut_metadata id).
        metadata_size: the size of the info dictionary as far as we know it
            (the peer's handshake, or the dictionary we have), to hold a data
            message's ``total_size`` to; None when unknown.

    Returns:
        The message, or None for an unknown ``msg_type`` (BEP 9: "an
        unrecognized message ID MUST be ignored").

    Raises:
        RemoteProtocolError: not a bencoded dict followed only by a data
            piece, a dict over MAX_METADATA_HEADER_LENGTH, ``msg_type`` or
            ``piece`` missing or not integers, a piece index no metadata of
            MAX_METADATA_SIZE has, bytes after a request or reject, or a data
            message whose ``total_size`` is out of range or differs from
            ``metadata_size``, whose piece is out of range for it, or whose
            piece is not exactly as long as BEP 9 says (16 KiB, the last less).
    """
    if len(body) > MAX_METADATA_HEADER_LENGTH + METADATA_PIECE:
        raise RemoteProtocolError(
            f"peer sent a {len(body)}-byte ut_metadata message; the bound is "
            f"{MAX_METADATA_HEADER_LENGTH + METADATA_PIECE}")
    try:
        header, end = bencoding.decode_prefix(
            body, max_size=MAX_METADATA_HEADER_LENGTH, max_depth=_MAX_DEPTH)
    except bencoding.BencodeError as exc:
        raise RemoteProtocolError(
            f"peer sent a ut_metadata message that does not start with a valid bencoded "
            f"dict: {exc}") from exc
    if not isinstance(header, dict):
        raise RemoteProtocolError(
            f"peer sent a ut_metadata message that is not a dict: {body[:40]!r}")
    msg_type = _int_field("ut_metadata message", header, b"msg_type")
    if msg_type is None:
        raise RemoteProtocolError("peer sent a ut_metadata message without a msg_type")
    if msg_type not in (METADATA_REQUEST, METADATA_DATA, METADATA_REJECT):
        return None
    piece = _int_field("ut_metadata message", header, b"piece")
    if piece is None:
        raise RemoteProtocolError(f"peer sent a ut_metadata message (msg_type {msg_type}) "
                                  "without a piece")
    if not 0 <= piece < MAX_METADATA_PIECES:
        raise RemoteProtocolError(
            f"peer sent a ut_metadata message for piece {piece}; metadata of at most "
            f"{MAX_METADATA_SIZE} bytes has pieces 0..{MAX_METADATA_PIECES - 1}")
    rest = len(body) - end
    if msg_type != METADATA_DATA:
        if rest:
            raise RemoteProtocolError(
                f"peer sent a ut_metadata {'request' if msg_type == 0 else 'reject'} with "
                f"{rest} bytes after its dict")
        return MetadataRequest(piece) if msg_type == METADATA_REQUEST else MetadataReject(piece)

    total_size = _int_field("ut_metadata data message", header, b"total_size")
    if total_size is None:
        raise RemoteProtocolError("peer sent a ut_metadata data message without total_size")
    if not 1 <= total_size <= MAX_METADATA_SIZE:
        raise RemoteProtocolError(
            f"peer sent metadata with total_size {total_size}; we accept "
            f"1..{MAX_METADATA_SIZE} bytes")
    if metadata_size is not None and total_size != metadata_size:
        raise RemoteProtocolError(
            f"peer sent metadata with total_size {total_size}, but the metadata is "
            f"{metadata_size} bytes")
    count = metadata_piece_count(total_size)
    if piece >= count:
        raise RemoteProtocolError(
            f"peer sent metadata piece {piece}; metadata of {total_size} bytes has pieces "
            f"0..{count - 1}")
    expected = min(METADATA_PIECE, total_size - piece * METADATA_PIECE)
    if rest != expected:
        raise RemoteProtocolError(
            f"peer sent {rest} bytes for metadata piece {piece} of {total_size} bytes; "
            f"it is {expected} bytes long")
    return MetadataData(piece, total_size, bytes(body[end:]))


# --- BEP 11 ut_pex --------------------------------------------------------------------------
class PexPeer(Record):
    """A peer a PEX message says the sender connected to, with its BEP 11 flags."""

    ip: str
    port: int
    flags: int

    __slots__ = ("flags", "ip", "port")

    def __init__(self, ip: str, port: int, flags: int = 0) -> None:
        setfield(self, "ip", ip)
        setfield(self, "port", port)
        setfield(self, "flags", flags)


class Pex(Record):
    """A BEP 11 ut_pex message: peers the sender connected to and lost since its last one.

    IPv4 and IPv6 peers share the tuples (``added`` / ``added6`` and
    ``dropped`` / ``dropped6`` on the wire), IPv4 first.

    Attributes:
        added: at most MAX_PEX_ADDED peers, no duplicates.
        dropped: at most MAX_PEX_DROPPED addresses, no duplicates.
        ignored: entries the decoder left out: past those bounds, repeated,
            or with port 0. Never set when encoding.
    """

    added: tuple[PexPeer, ...]
    dropped: tuple[Address, ...]
    ignored: int

    __slots__ = ("added", "dropped", "ignored")

    def __init__(self, added: tuple[PexPeer, ...] = (), dropped: tuple[Address, ...] = (),
                 ignored: int = 0) -> None:
        setfield(self, "added", added)
        setfield(self, "dropped", dropped)
        setfield(self, "ignored", ignored)

    def encode(self) -> bytes:
        """The bencoded body: ``added``, ``added.f`` and ``dropped`` always, the v6 keys if used.

        Raises:
            LocalProtocolError: more than MAX_PEX_ADDED added or
                MAX_PEX_DROPPED dropped peers, a bad address, port or flags.
        """
        if len(self.added) > MAX_PEX_ADDED or len(self.dropped) > MAX_PEX_DROPPED:
            raise LocalProtocolError(
                f"a PEX message holds at most {MAX_PEX_ADDED} added and {MAX_PEX_DROPPED} "
                f"dropped peers, not {len(self.added)} and {len(self.dropped)}")
        added = {COMPACT_V4: bytearray(), COMPACT_V6: bytearray()}
        flags = {COMPACT_V4: bytearray(), COMPACT_V6: bytearray()}
        dropped = {COMPACT_V4: bytearray(), COMPACT_V6: bytearray()}
        for peer in self.added:
            if not 0 <= peer.flags <= 0xFF:
                raise LocalProtocolError(f"PEX flags {peer.flags} do not fit a byte")
            entry = _pex_entry(peer.ip, peer.port)
            added[len(entry)] += entry
            flags[len(entry)].append(peer.flags)
        for ip, port in self.dropped:
            entry = _pex_entry(ip, port)
            dropped[len(entry)] += entry
        d: dict[bytes, bytes] = {b"added": bytes(added[COMPACT_V4]),
                                 b"added.f": bytes(flags[COMPACT_V4]),
                                 b"dropped": bytes(dropped[COMPACT_V4])}
        if added[COMPACT_V6]:
            d[b"added6"] = bytes(added[COMPACT_V6])
            d[b"added6.f"] = bytes(flags[COMPACT_V6])
        if dropped[COMPACT_V6]:
            d[b"dropped6"] = bytes(dropped[COMPACT_V6])
        return _bencode(d)

    @classmethod
    def decode(cls, body: bytes) -> Pex:
        """Read a ut_pex message body.

        Every key is optional; a message listing nothing is valid (and empty).
        Only the first MAX_PEX_ADDED added and MAX_PEX_DROPPED dropped
        entries are parsed; the rest are counted in ``ignored``.

        Raises:
            RemoteProtocolError: over MAX_PEX_LENGTH, not a strict bencoded
                dict, a known key that is not a string, a compact address list
                whose length is not a multiple of 6 (IPv4) or 18 (IPv6), or a
                flags string whose length differs from its address count.
        """
        if len(body) > MAX_PEX_LENGTH:
            raise RemoteProtocolError(
                f"peer sent a {len(body)}-byte ut_pex message; the bound is {MAX_PEX_LENGTH}")
        top = _bdecode("ut_pex message", body, MAX_PEX_LENGTH)
        if not isinstance(top, dict):
            raise RemoteProtocolError(
                f"peer sent a ut_pex message that is not a dict: {body[:40]!r}")
        ignored = 0
        added: list[PexPeer] = []
        seen: set[Address] = set()
        for key, fkey, width in ((b"added", b"added.f", COMPACT_V4),
                                 (b"added6", b"added6.f", COMPACT_V6)):
            raw = _pex_string(top, key)
            count = _compact_count(key, raw, width)
            raw_flags = top.get(fkey)
            if raw_flags is not None:
                raw_flags = _pex_string(top, fkey)
                if len(raw_flags) != count:
                    raise RemoteProtocolError(
                        f"peer sent a ut_pex message with {count} peers in "
                        f"{key.decode()!r} but {len(raw_flags)} flags in {fkey.decode()!r}")
            take = min(count, MAX_PEX_ADDED - len(added))
            ignored += count - take
            for i, addr in enumerate(unpack_compact(raw, width, take)):
                if addr[1] == 0 or addr in seen:
                    ignored += 1
                    continue
                seen.add(addr)
                added.append(PexPeer(addr[0], addr[1], raw_flags[i] if raw_flags else 0))
        dropped: list[Address] = []
        seen.clear()
        for key, width in ((b"dropped", COMPACT_V4), (b"dropped6", COMPACT_V6)):
            raw = _pex_string(top, key)
            count = _compact_count(key, raw, width)
            take = min(count, MAX_PEX_DROPPED - len(dropped))
            ignored += count - take
            for addr in unpack_compact(raw, width, take):
                if addr[1] == 0 or addr in seen:
                    ignored += 1
                    continue
                seen.add(addr)
                dropped.append(addr)
        return cls(tuple(added), tuple(dropped), ignored)


def _pex_string(top: Mapping[bytes, Any], key: bytes) -> bytes:
    raw = top.get(key, b"")
    if not isinstance(raw, bytes):
        raise RemoteProtocolError(
            f"peer sent a ut_pex message whose {key.decode()!r} is not a string: {raw!r:.40}")
    return raw


def _compact_count(key: bytes, raw: bytes, width: int) -> int:
    try:
        return compact_count(raw, width)
    except ValueError as exc:
        raise RemoteProtocolError(f"peer sent a bad ut_pex {key.decode()!r}: {exc}") from None


def _pex_entry(ip: str, port: int) -> bytes:
    """``ip:port`` in compact form (6 or 18 bytes) for a PEX message we send."""
    if not 1 <= port <= 65535:
        raise LocalProtocolError(f"PEX peer {ip} has port {port}; ports are 1..65535")
    try:
        return pack_compact(ip, port)
    except ValueError as exc:
        raise LocalProtocolError(f"PEX peer {ip!r}: {exc}") from None
