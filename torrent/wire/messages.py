"""BitTorrent peer wire messages (BEP 3): one class per message, one framing path.

Theory of operation
-------------------
After the handshake, the peer wire stream is a sequence of frames::

    <length: u32 big-endian> <msg_id: u8> <payload: length - 1 bytes>

A frame of length 0 (no id, no payload) is a keep-alive. This module has three
separate layers, so the hot path can later swap one of them for Cython:

- :func:`frame` / :func:`encode`: the *only* place frames are built.
- :func:`decode`: one message body (id + payload) to a message object; checks
  the payload length each id requires. It knows nothing about the stream.
- :class:`FrameReader`: the stream splitter, a bounded receive buffer. It checks
  every length prefix against :func:`max_message_length` as soon as the 4 prefix
  bytes are in, and against the bound for the message id as soon as the id byte
  is in, *before* it buffers any of the body. So a peer cannot make us buffer
  more than one maximum-size frame.

Buffer ownership: :class:`Piece` ``data`` decoded by :class:`FrameReader` is a
``memoryview`` that may point into the buffer given to :meth:`FrameReader.feed`
(no copy on the hot path). It is valid until the next ``feed`` call; a consumer
that keeps a block longer must copy it (the block's normal fate is to be copied
once into its piece slot anyway).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from ..errors import RemoteProtocolError

__all__ = [
    "BITFIELD",
    "BLOCK_SIZE",
    "CANCEL",
    "CHOKE",
    "HAVE",
    "INTERESTED",
    "MAX_REQUEST_LENGTH",
    "MAX_UNKNOWN_MESSAGE_LENGTH",
    "NOT_INTERESTED",
    "PIECE",
    "PORT",
    "REQUEST",
    "UNCHOKE",
    "Bitfield",
    "Cancel",
    "Choke",
    "FrameReader",
    "Have",
    "Interested",
    "KeepAlive",
    "LocalProtocolError",
    "Message",
    "NotInterested",
    "Piece",
    "Port",
    "Request",
    "Unchoke",
    "Unknown",
    "bitfield_length",
    "decode",
    "encode",
    "frame",
    "max_message_length",
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

# Bound for messages whose id we do not know (BEP 10 extension messages, BEP 6
# fast messages we never negotiated, ...). The largest legitimate ones are BEP 9
# ut_metadata pieces (16 KiB + a small bencoded header) and BEP 10 handshakes (a
# few hundred bytes); 1 MiB leaves ample room for future extensions and is half
# libtorrent's whole receive buffer limit (max_peer_recv_buffer_size, 2 MiB), so
# no well-behaved peer sends more. It bounds what one peer can make us buffer.
MAX_UNKNOWN_MESSAGE_LENGTH: Final = 1024 * 1024

_PREFIX = struct.Struct(">I")  # frame length prefix
_PREFIX_ID = struct.Struct(">IB")  # frame length prefix + message id
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_U32X2 = struct.Struct(">II")
_U32X3 = struct.Struct(">III")


# --- message classes -----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Message:
    """Base class of every peer wire message."""


@dataclass(frozen=True, slots=True)
class KeepAlive(Message):
    """A zero-length frame: "I am still here" (BEP 3)."""


@dataclass(frozen=True, slots=True)
class Choke(Message):
    """The sender will not answer requests; pending requests are discarded (BEP 3)."""


@dataclass(frozen=True, slots=True)
class Unchoke(Message):
    """The sender will answer requests (BEP 3)."""


@dataclass(frozen=True, slots=True)
class Interested(Message):
    """The sender wants pieces the receiver has (BEP 3)."""


@dataclass(frozen=True, slots=True)
class NotInterested(Message):
    """The sender wants nothing from the receiver (BEP 3)."""


@dataclass(frozen=True, slots=True)
class Have(Message):
    """The sender has completed and verified piece ``index`` (BEP 3)."""

    index: int


@dataclass(frozen=True, slots=True)
class Bitfield(Message):
    """The pieces the sender has, piece 0 in the high bit of byte 0 (BEP 3)."""

    bits: bytes


@dataclass(frozen=True, slots=True)
class Request(Message):
    """Ask for ``length`` bytes of piece ``index`` from offset ``begin`` (BEP 3)."""

    index: int
    begin: int
    length: int


@dataclass(frozen=True, slots=True)
class Piece(Message):
    """A block of data: the answer to a :class:`Request` (BEP 3).

    ``data`` may be a memoryview into a receive buffer: see the module docstring
    for how long it stays valid.
    """

    index: int
    begin: int
    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class Cancel(Message):
    """Withdraw an earlier :class:`Request` (BEP 3); used in endgame."""

    index: int
    begin: int
    length: int


@dataclass(frozen=True, slots=True)
class Port(Message):
    """The sender's DHT node listens on UDP ``port`` (BEP 5)."""

    port: int


@dataclass(frozen=True, slots=True)
class Unknown(Message):
    """A message with an id we do not implement; callers ignore it."""

    msg_id: int
    payload: bytes


# Field-less messages carry no information beyond their type: share one instance.
_KEEPALIVE: Final = KeepAlive()
_CHOKE: Final = Choke()
_UNCHOKE: Final = Unchoke()
_INTERESTED: Final = Interested()
_NOT_INTERESTED: Final = NotInterested()

_NAMES: Final = {
    CHOKE: "choke",
    UNCHOKE: "unchoke",
    INTERESTED: "interested",
    NOT_INTERESTED: "not interested",
    HAVE: "have",
    BITFIELD: "bitfield",
    REQUEST: "request",
    PIECE: "piece",
    CANCEL: "cancel",
    PORT: "port",
}

# Exact payload length (without the id byte) of every fixed-size message.
_FIXED_PAYLOAD: Final = {
    CHOKE: 0,
    UNCHOKE: 0,
    INTERESTED: 0,
    NOT_INTERESTED: 0,
    HAVE: 4,
    REQUEST: 12,
    CANCEL: 12,
    PORT: 2,
}


def message_name(msg_id: int) -> str:
    """A message id's BEP 3 name, for error messages."""
    return _name(msg_id)


def _name(msg_id: int) -> str:
    return _NAMES.get(msg_id, f"unknown (id {msg_id})")


def bitfield_length(num_pieces: int) -> int:
    """Bytes in a bitfield of ``num_pieces`` bits: ``ceil(num_pieces / 8)`` (BEP 3)."""
    return (num_pieces + 7) >> 3


def frame_bounds(num_pieces: int) -> tuple[int, ...]:
    """The largest legal frame length (id byte + payload) for each of the 256 ids."""
    bounds = [1 + MAX_UNKNOWN_MESSAGE_LENGTH] * 256
    for msg_id, payload_len in _FIXED_PAYLOAD.items():
        bounds[msg_id] = 1 + payload_len
    bounds[BITFIELD] = 1 + bitfield_length(num_pieces)
    bounds[PIECE] = 9 + MAX_REQUEST_LENGTH  # id + index + begin + at most one block
    return tuple(bounds)


def max_message_length(num_pieces: int) -> int:
    """The largest frame length prefix we accept for a torrent of ``num_pieces``.

    The maximum of: a full bitfield (``1 + ceil(num_pieces / 8)``), a piece
    message carrying one block (``9 + MAX_REQUEST_LENGTH``) and an unknown or
    extension message (``1 + MAX_UNKNOWN_MESSAGE_LENGTH``).

    Args:
        num_pieces: pieces in the torrent.

    Returns:
        The bound in bytes, not counting the 4-byte length prefix itself.
    """
    return max(1 + bitfield_length(num_pieces), 9 + MAX_REQUEST_LENGTH,
               1 + MAX_UNKNOWN_MESSAGE_LENGTH)


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

    Args:
        msg: any :class:`Message`.

    Returns:
        The frame bytes.

    Raises:
        LocalProtocolError: ``msg`` is not a message type we know how to encode.
    """
    # Ordered by frequency: blocks and requests dominate a download.
    if isinstance(msg, Piece):
        return frame(PIECE, _U32X2.pack(msg.index, msg.begin) + msg.data)
    if isinstance(msg, Request):
        return frame(REQUEST, _U32X3.pack(msg.index, msg.begin, msg.length))
    if isinstance(msg, Have):
        return frame(HAVE, _U32.pack(msg.index))
    if isinstance(msg, Cancel):
        return frame(CANCEL, _U32X3.pack(msg.index, msg.begin, msg.length))
    if isinstance(msg, KeepAlive):
        return _KEEPALIVE_FRAME
    if isinstance(msg, Choke):
        return frame(CHOKE)
    if isinstance(msg, Unchoke):
        return frame(UNCHOKE)
    if isinstance(msg, Interested):
        return frame(INTERESTED)
    if isinstance(msg, NotInterested):
        return frame(NOT_INTERESTED)
    if isinstance(msg, Bitfield):
        return frame(BITFIELD, msg.bits)
    if isinstance(msg, Port):
        return frame(PORT, _U16.pack(msg.port))
    if isinstance(msg, Unknown):
        return frame(msg.msg_id, msg.payload)
    raise LocalProtocolError(f"cannot encode {msg!r}: not a peer wire message")


# --- decoding ----------------------------------------------------------------------
def decode(msg_id: int, payload: bytes | memoryview) -> Message:
    """Decode one message body (the bytes after the length prefix and id).

    Piece data is a zero-copy memoryview slice of ``payload``; every other
    variable-size field is copied to ``bytes``.

    Args:
        msg_id: the message id byte.
        payload: the rest of the frame.

    Returns:
        The message; :class:`Unknown` for ids we do not implement.

    Raises:
        RemoteProtocolError: the payload length is wrong for the id.
    """
    n = len(payload)
    if msg_id == PIECE:
        if n < 8:
            raise RemoteProtocolError(
                f"peer sent a piece message with a {n}-byte payload; needs at least 8")
        index, begin = _U32X2.unpack_from(payload)
        return Piece(index, begin, memoryview(payload)[8:])
    if msg_id > PORT:
        return Unknown(msg_id, bytes(payload))
    if msg_id == BITFIELD:
        return Bitfield(bytes(payload))  # its length is checked by whoever knows num_pieces
    expected = _FIXED_PAYLOAD[msg_id]
    if n != expected:
        raise RemoteProtocolError(
            f"peer sent a {_name(msg_id)} message with a {n}-byte payload; "
            f"it must be {expected} bytes")
    if msg_id == REQUEST:
        return Request(*_U32X3.unpack_from(payload))
    if msg_id == HAVE:
        return Have(_U32.unpack_from(payload)[0])
    if msg_id == CANCEL:
        return Cancel(*_U32X3.unpack_from(payload))
    if msg_id == CHOKE:
        return _CHOKE
    if msg_id == UNCHOKE:
        return _UNCHOKE
    if msg_id == INTERESTED:
        return _INTERESTED
    if msg_id == NOT_INTERESTED:
        return _NOT_INTERESTED
    return Port(_U16.unpack_from(payload)[0])  # msg_id == PORT


class FrameReader:
    """Split a peer wire byte stream into messages; a bounded receive buffer.

    Only an incomplete frame is ever held between calls (at most
    :func:`max_message_length` + 4 bytes, because prefixes are checked first);
    complete frames are decoded straight from the data given to :meth:`feed`.

    Args:
        num_pieces: pieces in the torrent; sizes the bitfield bound.
    """

    __slots__ = ("_bounds", "_max", "_pend", "_pend_len")

    def __init__(self, num_pieces: int) -> None:
        self._max = max_message_length(num_pieces)
        self._bounds = frame_bounds(num_pieces)
        # The bytes of one incomplete frame carried over from the last feed().
        # Replaced (never cleared in place) once complete, because decoded
        # Piece data may still be a view into it.
        self._pend = bytearray()
        self._pend_len = 0  # the pending frame's length prefix, once known

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held over to the next :meth:`feed`."""
        return len(self._pend)

    def _check_prefix(self, length: int) -> None:
        if length > self._max:
            raise RemoteProtocolError(
                f"peer sent a frame length prefix of {length} bytes; "
                f"the largest we accept is {self._max}")

    def _check_id(self, msg_id: int, length: int) -> None:
        bound = self._bounds[msg_id]
        if length > bound:
            raise RemoteProtocolError(
                f"peer sent a {_name(msg_id)} message of {length} bytes; "
                f"at most {bound} allowed")

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Consume received bytes; return the messages completed by them.

        Args:
            data: the next bytes of the stream (any length, possibly empty).

        Returns:
            The complete messages, in order. Piece data may be a view into
            ``data``, valid until the next call.

        Raises:
            RemoteProtocolError: a length prefix over its bound (raised as soon
                as the prefix, or the prefix and id, are in) or a bad payload.
        """
        out: list[Message] = []
        view = memoryview(data)
        n = len(view)
        pos = 0
        pend = self._pend
        # 1. Finish the frame left incomplete by the last call, copying only the
        #    bytes that complete it. Header bytes are taken in two steps (prefix,
        #    then id) so each is checked before anything more is buffered.
        while pend and pos < n:
            have = len(pend)
            if have < 4:
                target = 4
            elif have == 4:
                target = 5
            else:
                target = 4 + self._pend_len
            take = min(target - have, n - pos)
            pend += view[pos:pos + take]
            pos += take
            have += take
            if have < target:
                break  # data exhausted
            if target == 4:
                length = _PREFIX.unpack_from(pend)[0]
                self._check_prefix(length)
                self._pend_len = length
                if length == 0:
                    out.append(_KEEPALIVE)
                    self._pend = pend = bytearray()
                continue
            if target == 5:
                self._check_id(pend[4], self._pend_len)
                if self._pend_len > 1:
                    continue
            out.append(decode(pend[4], memoryview(pend)[5:]))
            self._pend = pend = bytearray()
        if pend:
            return out
        # 2. Whole frames straight from ``data``; no copies.
        bounds = self._bounds
        while True:
            avail = n - pos
            if avail < 4:
                break
            if avail >= 5:
                length, msg_id = _PREFIX_ID.unpack_from(view, pos)
                if length == 0:
                    out.append(_KEEPALIVE)
                    pos += 4
                    continue
                if length > bounds[msg_id]:
                    self._check_prefix(length)
                    self._check_id(msg_id, length)
                end = pos + 4 + length
                if end > n:
                    self._pend_len = length
                    break
                out.append(decode(msg_id, view[pos + 5:end]))
                pos = end
            else:
                length = _PREFIX.unpack_from(view, pos)[0]
                if length == 0:
                    out.append(_KEEPALIVE)
                    pos += 4
                    continue
                self._check_prefix(length)
                self._pend_len = length
                break
        if pos < n:
            # 3. Keep the incomplete tail (bounded: its prefix, if in, was checked).
            self._pend = bytearray(view[pos:])
        return out
