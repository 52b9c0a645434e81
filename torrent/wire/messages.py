"""BitTorrent peer wire messages (BEP 3): one class per message, one table, one framing path.

Theory of operation
-------------------
After the handshake, the peer wire stream is a sequence of frames::

    <length: u32 big-endian> <msg_id: u8> <payload: length - 1 bytes>

A frame of length 0 (no id, no payload) is a keep-alive.

- Every message is a frozen, slotted class (a :class:`~torrent.wire.record.Record`)
  that knows its id, how to write its payload (:meth:`Message.payload`) and
  how to read one (:meth:`Message.decode_payload`).
- :data:`MESSAGE_TYPES` is the one table of message ids: id -> class.  Each
  class also states the bound of its payload (:meth:`Message.max_payload`),
  from which :func:`frame_bounds` derives the per-id frame-length table the
  framer checks *before* it buffers a body.  A new message is one class in
  the table plus one handler in :class:`~torrent.wire.peer.PeerProtocol`.
- The table holds BEP 3 (ids 0-8), BEP 5's PORT (9), BEP 6's Fast messages
  (0x0D-0x11), BEP 10's extended message (20) and BEP 52's hash messages
  (21-23: hash request, hashes, hash reject).  An :class:`Extended`
  message only carries its extension id and body; the extension handshake,
  ``ut_metadata`` and ``ut_pex`` bodies are :mod:`torrent.wire.extension`'s.
  Whether a Fast or extended message is *allowed* (both sides set the
  reserved bit) is the connection's business, not the codec's.
- :func:`frame` is the *only* place frames are built; :func:`encode` and
  :func:`decode` go through the table.

Splitting a byte stream into frames is :mod:`torrent.wire.framing`'s job.

Buffer ownership: :class:`Piece` ``data`` decoded from a receive buffer is a
``memoryview`` into it (no copy on the hot path), valid until the buffer is
next written to; a consumer that keeps a block longer must copy it (its
normal fate is to be copied once into its piece slot anyway).
"""

from __future__ import annotations

import struct
from typing import ClassVar, Final

from ..errors import RemoteProtocolError
from .record import Record, setfield

__all__ = [
    "ALLOWED_FAST",
    "BITFIELD",
    "BLOCK_SIZE",
    "CANCEL",
    "CHOKE",
    "EXTENDED",
    "HASHES",
    "HASH_REJECT",
    "HASH_REQUEST",
    "HAVE",
    "HAVE_ALL",
    "HAVE_NONE",
    "INTERESTED",
    "MAX_EXTENDED_LENGTH",
    "MAX_HASHES_PER_REQUEST",
    "MAX_PROOF_LAYERS",
    "MAX_REQUEST_LENGTH",
    "MAX_UNKNOWN_MESSAGE_LENGTH",
    "MESSAGE_TYPES",
    "NOT_INTERESTED",
    "PIECE",
    "PORT",
    "REJECT",
    "REQUEST",
    "SUGGEST",
    "UNCHOKE",
    "AllowedFast",
    "Bitfield",
    "Cancel",
    "Choke",
    "Extended",
    "HashReject",
    "HashRequest",
    "Hashes",
    "Have",
    "HaveAll",
    "HaveNone",
    "Interested",
    "KeepAlive",
    "LocalProtocolError",
    "Message",
    "NotInterested",
    "Piece",
    "Port",
    "Reject",
    "Request",
    "Suggest",
    "Unchoke",
    "Unknown",
    "bitfield_length",
    "decode",
    "encode",
    "frame",
    "frame_bounds",
    "max_message_length",
    "message_name",
    "pack_piece_header",
    "uncle_count",
]


class LocalProtocolError(RuntimeError):
    """A bug of ours: the wire API was used against the protocol rules.

    Deliberately *not* a :class:`~torrent.errors.FastTorrentError`: it must
    never be mistaken for a peer's or the user's fault; it surfaces as an
    internal error (exit 1) with a traceback.
    """


# --- message ids (BEP 3; PORT is BEP 5) -------------------------------------
CHOKE: Final = 0  # BEP 3: "I will not answer your requests"; no payload
UNCHOKE: Final = 1  # BEP 3: "I will answer your requests"; no payload
INTERESTED: Final = 2  # BEP 3: "I want something you have"; no payload
NOT_INTERESTED: Final = 3  # BEP 3: no payload
HAVE: Final = 4  # BEP 3: <index u32>: the sender just completed and verified a piece
BITFIELD: Final = 5  # BEP 3: one bit per piece, high bit first; only as the first message
REQUEST: Final = 6  # BEP 3: <index u32><begin u32><length u32>
PIECE: Final = 7  # BEP 3: <index u32><begin u32><block>: the answer to a request
CANCEL: Final = 8  # BEP 3: <index u32><begin u32><length u32>, same layout as REQUEST
PORT: Final = 9  # BEP 5: <listen port u16> of the sender's DHT node
# BEP 6 Fast extension (both sides set reserved[7] & 0x04):
SUGGEST: Final = 0x0D  # <index u32>: "you might like to download this piece"; advisory
HAVE_ALL: Final = 0x0E  # no payload: replaces the bitfield of a seed
HAVE_NONE: Final = 0x0F  # no payload: replaces the bitfield of a peer with nothing
REJECT: Final = 0x10  # <index u32><begin u32><length u32>: this request will not be served
ALLOWED_FAST: Final = 0x11  # <index u32>: "ask for this piece, I serve it even if choked"
# BEP 10 extension protocol (both sides set reserved[5] & 0x10):
EXTENDED: Final = 20  # <extension id u8><body>: id 0 is the extension handshake
# BEP 52 (BitTorrent v2) merkle hashes; each starts with <pieces root 32><base layer u32>
# <index u32><length u32><proof layers u32> (the request it is about):
HASH_REQUEST: Final = 21  # that header alone: "send me these hashes of this file's tree"
HASHES: Final = 22  # the header, then the hashes asked for, then the uncle (proof) hashes
HASH_REJECT: Final = 23  # the header alone: "I will not send these"

# --- named bounds -------------------------------------------------------------
# The de-facto request size. BEP 3 (since 2008) says "all current implementations
# use 2^14 (16 kiB), and close connections which request an amount greater than that".
BLOCK_SIZE: Final = 16 * 1024

# The largest request we accept from a peer, and the largest block we accept in
# a piece message (we never request more). libtorrent rejects any request with
# length > block_size() (16 KiB by default, peer_connection.cpp
# incoming_request) and disconnects with packet_too_large on a piece message
# whose block is larger than block_size(); we do the same, so a peer cannot make
# us read or buffer more than one 16 KiB block per request.
MAX_REQUEST_LENGTH: Final = BLOCK_SIZE

# Bound for messages whose id is not in the table (ids of extensions nobody
# standardised, BEP 52's hash messages before they had their rows); they are
# ignored. 1 MiB leaves ample room for any of them and is half
# libtorrent's whole receive buffer limit (max_peer_recv_buffer_size, 2 MiB), so
# no well-behaved peer sends more. It bounds what one peer can make us buffer.
MAX_UNKNOWN_MESSAGE_LENGTH: Final = 1024 * 1024

# Bound for a BEP 10 extended message's payload (extension id byte + body).
# The largest legitimate ones: a BEP 9 ut_metadata data message, 16 KiB of
# metadata behind a bencoded header of a few dozen bytes (libtorrent drops a
# peer whose ut_metadata message exceeds 17 KiB); a BEP 11 ut_pex message,
# whose ``added`` libtorrent caps at 100 peers and whose ``dropped`` lists the
# peers it lost in the last minute, a few KB (libtorrent refuses more than
# 500 KiB); an extension handshake, a few hundred bytes. 64 KiB is four times
# the largest of them and a sixteenth of MAX_UNKNOWN_MESSAGE_LENGTH, which
# applied to id 20 before BEP 10 had its own row.
MAX_EXTENDED_LENGTH: Final = 64 * 1024

# BEP 52: the most hashes one hash request may ask for (and one ``hashes`` reply
# carry, besides its proof). libtorrent refuses a request for more
# (hash_picker.cpp validate_hash_request: count > 8192) and asks for 512 at a
# time itself; 8192 hashes are 256 KiB, a quarter of MAX_UNKNOWN_MESSAGE_LENGTH.
MAX_HASHES_PER_REQUEST: Final = 8192

# BEP 52: the most proof layers a hash request or reply may name. They are
# counted from the base layer up the file's tree, so they never exceed its
# height: 48 levels above the 16 KiB leaves is 4 EiB per file
# (torrent.merkle.MAX_TREE_DEPTH, the native core's bound; libtorrent's trees,
# indexed by int, stop near 2**30 nodes). It bounds a reply's uncle hashes.
MAX_PROOF_LAYERS: Final = 48

_HASH_SIZE: Final = 32  # BEP 52: SHA-256 digests, roots and nodes alike

_PREFIX = struct.Struct(">I")  # frame length prefix
_PREFIX_ID = struct.Struct(">IB")  # frame length prefix + message id
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_U32X2 = struct.Struct(">II")
_U32X3 = struct.Struct(">III")
# BEP 52: pieces root, base layer, index, length, proof layers (48 bytes)
_HASH_HEADER = struct.Struct(">32sIIII")
# The first 13 bytes of a piece frame: length, id 7 (BEP 3), index, begin.
_PIECE_HEADER: Final = struct.Struct(">IBII")


def bitfield_length(num_pieces: int) -> int:
    """Bytes in a bitfield of ``num_pieces`` bits: ``ceil(num_pieces / 8)`` (BEP 3)."""
    return (num_pieces + 7) >> 3


def uncle_count(length: int, proof_layers: int) -> int:
    """How many uncle (proof) hashes follow the ``length`` hashes of a BEP 52 reply.

    The ``length`` hashes are the leaves of a subtree ``log2(length)`` layers
    high (``length`` rounded up to a power of two); proof layers from there up
    each need the sibling of the subtree's ancestor: ``proof_layers -
    log2(length) + 1`` of them, none when the proof stops inside the subtree.
    This is libtorrent's count (``bt_peer_connection::on_hashes``,
    ``hash_picker::add_hashes``).
    """
    height = max(0, length - 1).bit_length()
    return max(0, proof_layers - height + 1)


def _exact(name: str, payload: bytes | memoryview, expected: int) -> None:
    if len(payload) != expected:
        raise RemoteProtocolError(
            f"peer sent a {name} message with a {len(payload)}-byte payload; "
            f"it must be {expected} bytes")


# --- message classes -----------------------------------------------------------
class Message(Record):
    """Base class of every peer wire message.

    Subclasses set ``ID`` and ``NAME``, and ``FIXED`` (the exact payload
    length) or override :meth:`max_payload`.
    """

    __slots__ = ()

    ID: ClassVar[int] = -1
    NAME: ClassVar[str] = "message"
    FIXED: ClassVar[int | None] = None

    @classmethod
    def max_payload(cls, num_pieces: int) -> int:
        """The largest payload (bytes after the id) accepted for this id."""
        return cls.FIXED if cls.FIXED is not None else MAX_UNKNOWN_MESSAGE_LENGTH

    def payload(self) -> bytes:
        """The bytes after the id byte."""
        return b""

    @classmethod
    def decode_payload(cls, payload: bytes | memoryview) -> Message:
        """Parse the bytes after the id byte.

        Raises:
            RemoteProtocolError: the payload has the wrong length for the id.
        """
        _exact(cls.NAME, payload, cls.FIXED or 0)
        return cls()


class _Packed(Message):
    """A message whose payload is its fields, in order, packed by ``STRUCT``."""

    __slots__ = ()

    STRUCT: ClassVar[struct.Struct]

    @classmethod
    def max_payload(cls, num_pieces: int) -> int:
        return cls.STRUCT.size  # exact: the decoder checks it

    def payload(self) -> bytes:
        return self.STRUCT.pack(*self._astuple(self))

    @classmethod
    def decode_payload(cls, payload: bytes | memoryview) -> Message:
        _exact(cls.NAME, payload, cls.STRUCT.size)
        return cls(*cls.STRUCT.unpack_from(payload))


class KeepAlive(Message):
    """A zero-length frame: "I am still here" (BEP 3)."""

    __slots__ = ()

    NAME: ClassVar[str] = "keep-alive"


class Choke(Message):
    """The sender will not answer requests; pending requests are discarded (BEP 3)."""

    __slots__ = ()

    ID: ClassVar[int] = CHOKE
    NAME: ClassVar[str] = "choke"
    FIXED: ClassVar[int | None] = 0


class Unchoke(Message):
    """The sender will answer requests (BEP 3)."""

    __slots__ = ()

    ID: ClassVar[int] = UNCHOKE
    NAME: ClassVar[str] = "unchoke"
    FIXED: ClassVar[int | None] = 0


class Interested(Message):
    """The sender wants pieces the receiver has (BEP 3)."""

    __slots__ = ()

    ID: ClassVar[int] = INTERESTED
    NAME: ClassVar[str] = "interested"
    FIXED: ClassVar[int | None] = 0


class NotInterested(Message):
    """The sender wants nothing from the receiver (BEP 3)."""

    __slots__ = ()

    ID: ClassVar[int] = NOT_INTERESTED
    NAME: ClassVar[str] = "not interested"
    FIXED: ClassVar[int | None] = 0


class Have(_Packed):
    """The sender has completed and verified piece ``index`` (BEP 3)."""

    ID: ClassVar[int] = HAVE
    NAME: ClassVar[str] = "have"
    STRUCT: ClassVar[struct.Struct] = _U32

    index: int

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        setfield(self, "index", index)


class Bitfield(Message):
    """The pieces the sender has, piece 0 in the high bit of byte 0 (BEP 3)."""

    ID: ClassVar[int] = BITFIELD
    NAME: ClassVar[str] = "bitfield"

    bits: bytes

    __slots__ = ("bits",)

    def __init__(self, bits: bytes) -> None:
        setfield(self, "bits", bits)

    @classmethod
    def max_payload(cls, num_pieces: int) -> int:
        return bitfield_length(num_pieces)

    def payload(self) -> bytes:
        return self.bits

    @classmethod
    def decode_payload(cls, payload: bytes | memoryview) -> Message:
        return cls(bytes(payload))  # its exact length is checked by whoever knows num_pieces


class Request(_Packed):
    """Ask for ``length`` bytes of piece ``index`` from offset ``begin`` (BEP 3)."""

    ID: ClassVar[int] = REQUEST
    NAME: ClassVar[str] = "request"
    STRUCT: ClassVar[struct.Struct] = _U32X3

    index: int
    begin: int
    length: int

    __slots__ = ("begin", "index", "length")

    def __init__(self, index: int, begin: int, length: int) -> None:
        setfield(self, "index", index)
        setfield(self, "begin", begin)
        setfield(self, "length", length)


class Piece(Message):
    """A block of data: the answer to a :class:`Request` (BEP 3).

    ``data`` may be a memoryview into a receive buffer: see the module docstring
    for how long it stays valid.
    """

    ID: ClassVar[int] = PIECE
    NAME: ClassVar[str] = "piece"

    index: int
    begin: int
    data: bytes | memoryview

    __slots__ = ("begin", "data", "index")

    def __init__(self, index: int, begin: int, data: bytes | memoryview) -> None:
        setfield(self, "index", index)
        setfield(self, "begin", begin)
        setfield(self, "data", data)

    @classmethod
    def max_payload(cls, num_pieces: int) -> int:
        return 8 + MAX_REQUEST_LENGTH  # index + begin + at most one block

    def payload(self) -> bytes:
        return _U32X2.pack(self.index, self.begin) + self.data

    @classmethod
    def decode_payload(cls, payload: bytes | memoryview) -> Message:
        if len(payload) < 8:
            raise RemoteProtocolError(
                f"peer sent a piece message with a {len(payload)}-byte payload; "
                "needs at least 8")
        index, begin = _U32X2.unpack_from(payload)
        return cls(index, begin, memoryview(payload)[8:])


class Cancel(_Packed):
    """Withdraw an earlier :class:`Request` (BEP 3); used in endgame."""

    ID: ClassVar[int] = CANCEL
    NAME: ClassVar[str] = "cancel"
    STRUCT: ClassVar[struct.Struct] = _U32X3

    index: int
    begin: int
    length: int

    __slots__ = ("begin", "index", "length")

    def __init__(self, index: int, begin: int, length: int) -> None:
        setfield(self, "index", index)
        setfield(self, "begin", begin)
        setfield(self, "length", length)


class Port(_Packed):
    """The sender's DHT node listens on UDP ``port`` (BEP 5)."""

    ID: ClassVar[int] = PORT
    NAME: ClassVar[str] = "port"
    STRUCT: ClassVar[struct.Struct] = _U16

    port: int

    __slots__ = ("port",)

    def __init__(self, port: int) -> None:
        setfield(self, "port", port)


class Suggest(_Packed):
    """BEP 6: the sender suggests downloading piece ``index``; advisory only."""

    ID: ClassVar[int] = SUGGEST
    NAME: ClassVar[str] = "suggest"
    STRUCT: ClassVar[struct.Struct] = _U32

    index: int

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        setfield(self, "index", index)


class HaveAll(Message):
    """BEP 6: the sender has every piece; sent instead of a bitfield, first only."""

    __slots__ = ()

    ID: ClassVar[int] = HAVE_ALL
    NAME: ClassVar[str] = "have all"
    FIXED: ClassVar[int | None] = 0


class HaveNone(Message):
    """BEP 6: the sender has no piece; sent instead of a bitfield, first only."""

    __slots__ = ()

    ID: ClassVar[int] = HAVE_NONE
    NAME: ClassVar[str] = "have none"
    FIXED: ClassVar[int | None] = 0


class Reject(_Packed):
    """BEP 6: the sender will not serve this earlier :class:`Request`.

    With the Fast extension every request gets exactly one answer, a
    :class:`Piece` or this; a choke no longer discards requests implicitly.
    """

    ID: ClassVar[int] = REJECT
    NAME: ClassVar[str] = "reject"
    STRUCT: ClassVar[struct.Struct] = _U32X3

    index: int
    begin: int
    length: int

    __slots__ = ("begin", "index", "length")

    def __init__(self, index: int, begin: int, length: int) -> None:
        setfield(self, "index", index)
        setfield(self, "begin", begin)
        setfield(self, "length", length)


class AllowedFast(_Packed):
    """BEP 6: the sender serves requests for piece ``index`` even while choking us.

    It does not mean the sender has the piece.
    """

    ID: ClassVar[int] = ALLOWED_FAST
    NAME: ClassVar[str] = "allowed fast"
    STRUCT: ClassVar[struct.Struct] = _U32

    index: int

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        setfield(self, "index", index)


class Extended(Message):
    """BEP 10: an extension message: extension id ``ext_id`` (0: the handshake) and its body.

    ``ext_id`` is one byte. For messages we receive it is one of the ids *we*
    announced in our extension handshake; for messages we send, one the peer
    announced in its own. The body (bencoded, for ut_metadata followed by raw
    metadata) is decoded by :mod:`torrent.wire.extension`; it is copied out of
    the receive buffer, as extension messages are rare and small.
    """

    ID: ClassVar[int] = EXTENDED
    NAME: ClassVar[str] = "extended"

    ext_id: int
    body: bytes

    __slots__ = ("body", "ext_id")

    def __init__(self, ext_id: int, body: bytes) -> None:
        setfield(self, "ext_id", ext_id)
        setfield(self, "body", body)

    @classmethod
    def max_payload(cls, num_pieces: int) -> int:
        return MAX_EXTENDED_LENGTH

    def payload(self) -> bytes:
        if not 0 <= self.ext_id <= 255:
            raise LocalProtocolError(f"extension id {self.ext_id} does not fit in one byte")
        return bytes((self.ext_id,)) + self.body

    @classmethod
    def decode_payload(cls, payload: bytes | memoryview) -> Message:
        if len(payload) < 1:
            raise RemoteProtocolError(
                "peer sent an extended message without an extension id (BEP 10)")
        return cls(payload[0], bytes(payload[1:]))


class _HashHeader(_Packed):
    """The fields of a :class:`HashRequest` and of the :class:`HashReject` that repeats it."""

    STRUCT: ClassVar[struct.Struct] = _HASH_HEADER

    pieces_root: bytes
    base_layer: int
    index: int
    length: int
    proof_layers: int

    __slots__ = ("base_layer", "index", "length", "pieces_root", "proof_layers")

    def __init__(self, pieces_root: bytes, base_layer: int, index: int, length: int,
                 proof_layers: int) -> None:
        setfield(self, "pieces_root", pieces_root)
        setfield(self, "base_layer", base_layer)
        setfield(self, "index", index)
        setfield(self, "length", length)
        setfield(self, "proof_layers", proof_layers)


class HashRequest(_HashHeader):
    """BEP 52: ask for ``length`` hashes of the tree whose root is ``pieces_root``.

    ``base_layer`` is the layer they are taken from (0: the 16 KiB leaves;
    ``log2(piece_length / 16 KiB)``: the piece layer), ``index`` the first one's
    position in it, and ``proof_layers`` how many layers above the base layer
    the reply proves them (the uncle hashes, see :func:`uncle_count`). The
    values are checked by whoever answers (out of range: a :class:`HashReject`,
    the connection stays).
    """

    ID: ClassVar[int] = HASH_REQUEST
    NAME: ClassVar[str] = "hash request"

    __slots__ = ()


class HashReject(_HashHeader):
    """BEP 52: the sender will not answer this :class:`HashRequest` (it repeats it)."""

    ID: ClassVar[int] = HASH_REJECT
    NAME: ClassVar[str] = "hash reject"

    __slots__ = ()


class Hashes(Message):
    """BEP 52: the answer to a :class:`HashRequest`: its fields, then ``length``
    hashes of the base layer and :func:`uncle_count` uncle hashes, bottom up.

    ``hashes`` is all of them, concatenated (32 bytes each, copied out of the
    receive buffer). The decoder checks the count against the header and the
    bounds (:data:`MAX_HASHES_PER_REQUEST`, :data:`MAX_PROOF_LAYERS`); whether
    they are the hashes asked for, and true, is the receiver's business.
    """

    ID: ClassVar[int] = HASHES
    NAME: ClassVar[str] = "hashes"

    pieces_root: bytes
    base_layer: int
    index: int
    length: int
    proof_layers: int
    hashes: bytes

    __slots__ = ("base_layer", "hashes", "index", "length", "pieces_root", "proof_layers")

    def __init__(self, pieces_root: bytes, base_layer: int, index: int, length: int,
                 proof_layers: int, hashes: bytes) -> None:
        setfield(self, "pieces_root", pieces_root)
        setfield(self, "base_layer", base_layer)
        setfield(self, "index", index)
        setfield(self, "length", length)
        setfield(self, "proof_layers", proof_layers)
        setfield(self, "hashes", hashes)

    @classmethod
    def max_payload(cls, num_pieces: int) -> int:
        return _HASH_HEADER.size + _HASH_SIZE * (MAX_HASHES_PER_REQUEST + MAX_PROOF_LAYERS + 1)

    @property
    def base(self) -> bytes:
        """The ``length`` hashes asked for (without the proof)."""
        return self.hashes[: _HASH_SIZE * self.length]

    @property
    def uncles(self) -> bytes:
        """The uncle hashes, from the lowest layer up."""
        return self.hashes[_HASH_SIZE * self.length :]

    def payload(self) -> bytes:
        return _HASH_HEADER.pack(self.pieces_root, self.base_layer, self.index, self.length,
                                 self.proof_layers) + self.hashes

    @classmethod
    def decode_payload(cls, payload: bytes | memoryview) -> Message:
        if len(payload) < _HASH_HEADER.size:
            raise RemoteProtocolError(
                f"peer sent a hashes message with a {len(payload)}-byte payload; "
                f"needs at least {_HASH_HEADER.size}")
        root, base, index, length, proof = _HASH_HEADER.unpack_from(payload)
        if not 1 <= length <= MAX_HASHES_PER_REQUEST or proof > MAX_PROOF_LAYERS:
            raise RemoteProtocolError(
                f"peer sent hashes for {length} hashes with {proof} proof layers; at most "
                f"{MAX_HASHES_PER_REQUEST} and {MAX_PROOF_LAYERS} (BEP 52)")
        want = _HASH_SIZE * (length + uncle_count(length, proof))
        if len(payload) - _HASH_HEADER.size != want:
            raise RemoteProtocolError(
                f"peer sent {len(payload) - _HASH_HEADER.size} bytes of hashes for "
                f"{length} hashes with {proof} proof layers; they need {want}")
        return cls(root, base, index, length, proof, bytes(payload[_HASH_HEADER.size :]))


class Unknown(Message):
    """A message with an id we do not implement; callers ignore it.

    Its bound is :data:`MAX_UNKNOWN_MESSAGE_LENGTH` (the base class default).
    """

    msg_id: int
    payload_bytes: bytes

    __slots__ = ("msg_id", "payload_bytes")

    def __init__(self, msg_id: int, payload_bytes: bytes) -> None:
        setfield(self, "msg_id", msg_id)
        setfield(self, "payload_bytes", payload_bytes)

    def payload(self) -> bytes:
        return self.payload_bytes


#: The one table of message ids we implement: id -> class.  Any other id
#: decodes to :class:`Unknown`, bounded by MAX_UNKNOWN_MESSAGE_LENGTH.
MESSAGE_TYPES: Final[dict[int, type[Message]]] = {
    cls.ID: cls
    for cls in (Choke, Unchoke, Interested, NotInterested, Have, Bitfield, Request, Piece,
                Cancel, Port, Suggest, HaveAll, HaveNone, Reject, AllowedFast, Extended,
                HashRequest, Hashes, HashReject)
}


def message_name(msg_id: int) -> str:
    """A message id's name, for error messages."""
    cls = MESSAGE_TYPES.get(msg_id)
    return cls.NAME if cls is not None else f"unknown (id {msg_id})"


def frame_bounds(num_pieces: int) -> tuple[int, ...]:
    """The largest legal frame length (id byte + payload) for each of the 256 ids."""
    bounds = [1 + MAX_UNKNOWN_MESSAGE_LENGTH] * 256
    for msg_id, cls in MESSAGE_TYPES.items():
        bounds[msg_id] = 1 + cls.max_payload(num_pieces)
    return tuple(bounds)


def max_message_length(num_pieces: int) -> int:
    """The largest frame length prefix we accept for a torrent of ``num_pieces``.

    The maximum of :func:`frame_bounds`: a full bitfield
    (``1 + ceil(num_pieces / 8)``), a piece message carrying one block
    (``9 + MAX_REQUEST_LENGTH``), an extended message
    (``1 + MAX_EXTENDED_LENGTH``) and a message of an unknown id
    (``1 + MAX_UNKNOWN_MESSAGE_LENGTH``).

    Returns:
        The bound in bytes, not counting the 4-byte length prefix itself.
    """
    return max(frame_bounds(num_pieces))


# --- encoding ----------------------------------------------------------------------
def frame(msg_id: int, payload: bytes | memoryview = b"") -> bytes:
    """Build one frame: length prefix, id, payload. Every encoder goes through here.

    Args:
        msg_id: the message id, 0..255.
        payload: the message body after the id.

    Returns:
        The frame, ready to write.
    """
    return _PREFIX_ID.pack(len(payload) + 1, msg_id) + payload


_KEEPALIVE_FRAME: Final = _PREFIX.pack(0)  # the one frame with no id (BEP 3)


def encode(msg: Message) -> bytes:
    """Encode one message as a frame.

    Raises:
        LocalProtocolError: ``msg`` is not a message type we know how to encode.
    """
    t = type(msg)
    if t is Unknown:
        return frame(msg.msg_id, msg.payload_bytes)  # type: ignore[attr-defined]
    if t is KeepAlive:
        return _KEEPALIVE_FRAME
    if MESSAGE_TYPES.get(t.ID) is not t:
        raise LocalProtocolError(f"cannot encode {msg!r}: not a peer wire message")
    return frame(t.ID, msg.payload())


def pack_piece_header(buf: bytearray | memoryview, index: int, begin: int, length: int) -> None:
    """Write the 13 bytes that precede ``length`` bytes of block data in a piece frame.

    The upload path lays the header out in place and reads the block straight
    behind it (one copy from the page cache); it is :func:`frame` for a
    :class:`Piece`, without building the payload.
    """
    _PIECE_HEADER.pack_into(buf, 0, 9 + length, PIECE, index, begin)


# --- decoding ----------------------------------------------------------------------
def decode(msg_id: int, payload: bytes | memoryview) -> Message:
    """Decode one message body (the bytes after the length prefix and id).

    Piece data is a zero-copy memoryview slice of ``payload``; every other
    variable-size field is copied to ``bytes``.

    Returns:
        The message; :class:`Unknown` for ids we do not implement.

    Raises:
        RemoteProtocolError: the payload length is wrong for the id.
    """
    cls = MESSAGE_TYPES.get(msg_id)
    if cls is None:
        return Unknown(msg_id, bytes(payload))
    return cls.decode_payload(payload)
