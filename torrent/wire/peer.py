"""The per-peer protocol state machine (BEP 3), sans-IO.

Theory of operation
-------------------
One :class:`PeerProtocol` per TCP connection. It does no I/O and reads no
clock: the caller feeds it received bytes (:meth:`PeerProtocol.receive_data`)
and gets events back; it calls ``send_*`` methods and writes the bytes they
return; it passes ``now`` (a monotonic clock) where time matters and asks the
machine what has timed out. The model is python-hyper/h11.

Connection states (:class:`PeerState`), changed only by ``_transition``::

    AWAIT_HANDSHAKE --(valid handshake received)--> ACTIVE
    AWAIT_HANDSHAKE --(EOF / peer protocol error)--> CLOSED
    ACTIVE          --(EOF / peer protocol error)--> CLOSED

Inside ACTIVE the four BEP 3 flags (am_choking, am_interested, peer_choking,
peer_interested) start as choked / not interested on both sides.

Errors: a peer that breaks a rule makes ``receive_data`` raise
:class:`~torrent.errors.RemoteProtocolError` (the caller drops it; the machine
moves to CLOSED). Using the API against the rules (sending before the
handshake, requesting while choked, an illegal state change) raises
:class:`~torrent.wire.messages.LocalProtocolError`: a bug of ours.

Requests and their loss
-----------------------
Without the Fast extension (BEP 6, which we do not negotiate) a peer that
chokes us silently discards every request we had outstanding; the machine
reports them in :class:`RequestsCancelled` so the caller re-issues them
elsewhere. Requests can also just get lost (a peer's own queue limit): the
caller polls :meth:`PeerProtocol.timed_out_requests`. A block that arrives
after we cancelled it, timed it out or lost it to a choke is normal (it was
in flight) and is dropped silently, thanks to a small bounded memory of
recently abandoned requests; any other unrequested block is a protocol error.

Buffer ownership
----------------
:class:`BlockReceived` ``data`` is a memoryview that may point into the buffer
passed to ``receive_data`` (no copy). It is valid until the next
``receive_data`` call: copy it into its piece slot before then.

Time
----
``receive_data`` and most ``send_*`` methods take no ``now``: they only mark
"something was received/sent". :meth:`PeerProtocol.is_idle` and
:meth:`PeerProtocol.needs_keepalive` turn those marks into timestamps using the
``now`` they are given, so their precision is the caller's polling period
(poll every few seconds; the limits are a minute or two). Errors lean the safe
way: a keep-alive may go out early, an idle peer may be dropped late.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from ..errors import RemoteProtocolError
from .handshake import HANDSHAKE_LENGTH, check_handshake_prefix, encode_handshake, parse_handshake
from .messages import (
    MAX_REQUEST_LENGTH,
    Bitfield,
    Cancel,
    Choke,
    FrameReader,
    Have,
    Interested,
    KeepAlive,
    LocalProtocolError,
    Message,
    NotInterested,
    Piece,
    Request,
    Unchoke,
    bitfield_length,
    decode,
    encode,
)

__all__ = [
    "IDLE_TIMEOUT",
    "KEEPALIVE_INTERVAL",
    "MAX_OUTSTANDING_REQUESTS",
    "MAX_PEER_REQUESTS",
    "MAX_RECENTLY_CANCELLED",
    "BitfieldReceived",
    "BlockReceived",
    "CancelReceived",
    "Choked",
    "ConnectionClosed",
    "Event",
    "HandshakeReceived",
    "HaveReceived",
    "PeerInterested",
    "PeerNotInterested",
    "PeerProtocol",
    "PeerState",
    "RequestReceived",
    "RequestsCancelled",
    "Unchoked",
]

# --- named bounds and timers --------------------------------------------------
# Requests we may have outstanding to one peer. The pipeline depth is
# rate x 3 s / 16 KiB clamped to [2, 500] (libtorrent's max_out_request_queue
# default is 500 too): a deeper queue only adds latency at any sane rate.
MAX_OUTSTANDING_REQUESTS: Final = 500

# Requests we abandoned (cancel, timeout, choke) whose blocks may still be in
# flight. Everything in flight was outstanding, and at most
# MAX_OUTSTANDING_REQUESTS are, so a memory that size covers one round trip of
# abandoned requests; the oldest are forgotten first.
MAX_RECENTLY_CANCELLED: Final = MAX_OUTSTANDING_REQUESTS

# Requests a peer may have queued with us: 2000, as libtorrent's
# high_performance_seed() allows (max_allowed_in_request_queue).  A fast
# downloader keeps up to 500 requests outstanding per peer (libtorrent's
# max_out_request_queue, and ours), and a queue shorter than its pipeline
# silently drops the excess, which it only notices after a request timeout.
# Only (index, begin, length) tuples are queued, never data: 2000 are ~200 KB.
# Beyond the bound a request is dropped silently, as libtorrent does: we
# advertise no limit (no BEP 10 yet), so an honest peer may overshoot.
MAX_PEER_REQUESTS: Final = 2000

# BEP 3: "Keepalives are generally sent once every two minutes"; peers drop a
# connection silent for two minutes (libtorrent's peer_timeout is 120 s). We send
# one after 60 s without sending anything, so a late timer tick or one slow
# segment does not get us dropped.
KEEPALIVE_INTERVAL: Final = 60.0

# BEP 3 two-minute rule: a peer silent this long (not even keep-alives) is dead.
IDLE_TIMEOUT: Final = 120.0

Block = tuple[int, int, int]  # (index, begin, length)

# A byte with any bit set (where a later bitfield announces new pieces).
_NONZERO_BYTE: Final = re.compile(rb"[^\x00]")

# The first 13 bytes of a piece frame: length, id 7 (BEP 3), index, begin.
_PIECE_HEADER: Final = struct.Struct(">IBII")


def piece_header(index: int, begin: int, length: int) -> bytes:
    """The 13 bytes that precede ``length`` bytes of block data in a ``piece`` frame."""
    return _PIECE_HEADER.pack(9 + length, 7, index, begin)


def pack_piece_header(buf: bytearray, index: int, begin: int, length: int) -> None:
    """Write :func:`piece_header` into the first 13 bytes of ``buf``."""
    _PIECE_HEADER.pack_into(buf, 0, 9 + length, 7, index, begin)


# A whole request frame: length 13, id 6 (BEP 3), index, begin, length.
_REQUEST_FRAME: Final = struct.Struct(">IBIII")


class PeerState(IntEnum):
    """Connection states; see the module docstring for the transitions."""

    AWAIT_HANDSHAKE = 0
    ACTIVE = 1
    CLOSED = 2


_TRANSITIONS: Final = {
    PeerState.AWAIT_HANDSHAKE: frozenset({PeerState.ACTIVE, PeerState.CLOSED}),
    PeerState.ACTIVE: frozenset({PeerState.CLOSED}),
    PeerState.CLOSED: frozenset(),
}


# --- events ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Event:
    """Base class of what :meth:`PeerProtocol.receive_data` returns."""


@dataclass(frozen=True, slots=True)
class HandshakeReceived(Event):
    """The peer's valid handshake; the connection is ACTIVE."""

    peer_id: bytes
    reserved: bytes


@dataclass(frozen=True, slots=True)
class BitfieldReceived(Event):
    """The peer's full bitfield (its first message), validated."""

    bits: bytes


@dataclass(frozen=True, slots=True)
class HaveReceived(Event):
    """The peer now has piece ``index``; only reported the first time."""

    index: int


@dataclass(frozen=True, slots=True)
class Choked(Event):
    """The peer choked us (followed by :class:`RequestsCancelled` if any were out)."""


@dataclass(frozen=True, slots=True)
class Unchoked(Event):
    """The peer unchoked us: we may request."""


@dataclass(frozen=True, slots=True)
class PeerInterested(Event):
    """The peer became interested in us."""


@dataclass(frozen=True, slots=True)
class PeerNotInterested(Event):
    """The peer is no longer interested in us."""


@dataclass(frozen=True, slots=True)
class BlockReceived(Event):
    """A block we requested. ``data`` is valid until the next ``receive_data``."""

    index: int
    begin: int
    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class RequestReceived(Event):
    """The peer asks for a block; it is queued until :meth:`PeerProtocol.send_piece`."""

    index: int
    begin: int
    length: int


@dataclass(frozen=True, slots=True)
class CancelReceived(Event):
    """The peer withdrew a queued request; do not send that block."""

    index: int
    begin: int
    length: int


@dataclass(frozen=True, slots=True)
class RequestsCancelled(Event):
    """Our outstanding requests the peer discarded by choking us; re-issue them."""

    requests: tuple[Block, ...]


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The peer closed the connection (EOF)."""


_CHOKED: Final = Choked()
_UNCHOKED: Final = Unchoked()
_PEER_INTERESTED: Final = PeerInterested()
_PEER_NOT_INTERESTED: Final = PeerNotInterested()


class PeerProtocol:
    """The protocol state of one peer connection.

    Args:
        info_hash: the torrent's 20-byte info-hash.
        our_peer_id: our 20-byte peer id.
        num_pieces: pieces in the torrent.
        piece_length: the nominal piece size (every piece but maybe the last).
        total_size: the torrent's total size in bytes.
        we_initiated: we opened the connection (we send our handshake first;
            the other side answers after seeing our info-hash).
        now: the current monotonic time.
        expect_peer_id: the peer id a tracker announced for this address, if
            any; a different one in the handshake is a protocol error.

    Raises:
        ValueError: the geometry is inconsistent (a bug of the caller).
    """

    __slots__ = (
        "_cancelled",
        "_first_message",
        "_handshake_sent",
        "_hs_buf",
        "_last_piece",
        "_last_piece_size",
        "_last_received",
        "_last_sent",
        "_outstanding",
        "_peer_bits",
        "_peer_count",
        "_peer_requests",
        "_reader",
        "_received_mark",
        "_sent_checked",
        "_sent_mark",
        "_state",
        "_we_sent_message",
        "am_choking",
        "am_interested",
        "dropped_peer_requests",
        "expect_peer_id",
        "ignored_blocks",
        "info_hash",
        "num_pieces",
        "our_peer_id",
        "peer_choking",
        "peer_id",
        "peer_interested",
        "peer_reserved",
        "piece_length",
        "total_size",
        "we_initiated",
    )

    def __init__(
        self,
        info_hash: bytes,
        our_peer_id: bytes,
        num_pieces: int,
        piece_length: int,
        total_size: int,
        *,
        we_initiated: bool,
        now: float,
        expect_peer_id: bytes | None = None,
    ) -> None:
        if len(info_hash) != 20 or len(our_peer_id) != 20:
            raise ValueError("info_hash and our_peer_id must be 20 bytes")
        if num_pieces < 1 or piece_length < 1 or total_size < 1:
            raise ValueError("num_pieces, piece_length and total_size must be positive")
        if num_pieces != -(-total_size // piece_length):
            raise ValueError(
                f"{num_pieces} pieces do not fit total_size {total_size} "
                f"with piece_length {piece_length}")
        self.info_hash = bytes(info_hash)
        self.our_peer_id = bytes(our_peer_id)
        self.num_pieces = num_pieces
        self.piece_length = piece_length
        self.total_size = total_size
        self.we_initiated = we_initiated
        self.expect_peer_id = expect_peer_id
        self.peer_id: bytes | None = None
        self.peer_reserved: bytes | None = None
        # BEP 3: "Connections start out choked and not interested."
        self.am_choking = True
        self.am_interested = False
        self.peer_choking = True
        self.peer_interested = False

        self._state = PeerState.AWAIT_HANDSHAKE
        self._hs_buf = bytearray()  # bounded: at most HANDSHAKE_LENGTH bytes
        self._reader = FrameReader(num_pieces)
        self._handshake_sent = False
        self._first_message = True  # no message received yet (bitfield allowed)
        self._we_sent_message = False  # any message sent after the handshake
        self._last_piece = num_pieces - 1
        self._last_piece_size = total_size - self._last_piece * piece_length
        self._peer_bits = bytearray(bitfield_length(num_pieces))
        self._peer_count = 0
        # Our requests to the peer, in send order: (index, begin) -> (length, sent_at).
        # Bounded by MAX_OUTSTANDING_REQUESTS.
        self._outstanding: dict[tuple[int, int], tuple[int, float]] = {}
        # Abandoned requests whose block may still arrive; FIFO, MAX_RECENTLY_CANCELLED.
        self._cancelled: dict[tuple[int, int], None] = {}
        # The peer's requests to us, in arrival order; MAX_PEER_REQUESTS.
        self._peer_requests: dict[Block, None] = {}
        self.dropped_peer_requests = 0  # requests dropped: queue full or we choke
        self.ignored_blocks = 0  # blocks that arrived after we abandoned them
        self._last_received = now
        self._received_mark = False
        self._last_sent = now
        self._sent_mark = False
        self._sent_checked = now  # when needs_keepalive last looked

    # --- state ------------------------------------------------------------------
    @property
    def state(self) -> PeerState:
        """The connection state."""
        return self._state

    def _transition(self, new: PeerState) -> None:
        """The one place the state changes; an illegal change is our bug."""
        if new not in _TRANSITIONS[self._state]:
            raise LocalProtocolError(
                f"illegal peer state transition {self._state.name} -> {new.name}")
        self._state = new

    def piece_size(self, index: int) -> int:
        """Size of piece ``index`` in bytes (the last piece may be shorter)."""
        return self._last_piece_size if index == self._last_piece else self.piece_length

    # --- the peer's pieces ---------------------------------------------------------
    @property
    def peer_bitfield(self) -> bytes:
        """The pieces the peer has (BEP 3 bitfield layout, high bit first)."""
        return bytes(self._peer_bits)

    @property
    def peer_piece_count(self) -> int:
        """How many pieces the peer has."""
        return self._peer_count

    @property
    def peer_is_seed(self) -> bool:
        """The peer has every piece."""
        return self._peer_count == self.num_pieces

    def peer_has(self, index: int) -> bool:
        """Whether the peer has piece ``index``."""
        return bool(self._peer_bits[index >> 3] & (0x80 >> (index & 7)))

    # --- requests --------------------------------------------------------------------
    @property
    def outstanding_requests(self) -> list[Block]:
        """Our requests not yet answered, in send order."""
        return [(i, b, ln) for (i, b), (ln, _t) in self._outstanding.items()]

    @property
    def num_outstanding(self) -> int:
        """How many of our requests are outstanding."""
        return len(self._outstanding)

    @property
    def peer_requests(self) -> list[Block]:
        """The peer's queued requests, oldest first."""
        return list(self._peer_requests)

    def is_request_pending(self, index: int, begin: int, length: int) -> bool:
        """Whether the peer still wants this block (not cancelled, not choked away)."""
        return (index, begin, length) in self._peer_requests

    def _forget(self, key: tuple[int, int]) -> None:
        """Remember an abandoned request, whose block may still be in flight."""
        cancelled = self._cancelled
        cancelled[key] = None
        if len(cancelled) > MAX_RECENTLY_CANCELLED:
            del cancelled[next(iter(cancelled))]

    # --- receiving ---------------------------------------------------------------------
    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Feed bytes received from the peer; ``b""`` means EOF.

        Args:
            data: the received bytes. Block data in the events may point into
                it: it must stay unchanged until the next call.

        Returns:
            The events, in order.

        Raises:
            RemoteProtocolError: the peer broke the protocol; drop it. The
                machine is then CLOSED.
            LocalProtocolError: called after the connection was closed.
        """
        if self._state is PeerState.CLOSED:
            raise LocalProtocolError("receive_data called on a closed peer connection")
        if not data:
            self._transition(PeerState.CLOSED)
            return [ConnectionClosed()]
        self._received_mark = True
        events: list[Event] = []
        try:
            if self._state is PeerState.AWAIT_HANDSHAKE:
                data = self._receive_handshake(data, events)
                if not data:
                    return events
            for msg in self._reader.feed(data):
                self._handle(msg, events)
        except RemoteProtocolError:
            self._transition(PeerState.CLOSED)
            raise
        return events

    def _receive_handshake(
        self, data: bytes | bytearray | memoryview, events: list[Event]
    ) -> memoryview:
        buf = self._hs_buf
        take = HANDSHAKE_LENGTH - len(buf)
        view = memoryview(data)
        buf += view[:take]
        check_handshake_prefix(buf)  # reject a non-BitTorrent stream from its first byte
        if len(buf) < HANDSHAKE_LENGTH:
            return view[len(view):]
        hs = parse_handshake(buf)
        if hs.info_hash != self.info_hash:
            raise RemoteProtocolError(
                f"peer handshake is for info-hash {hs.info_hash.hex()}, "
                f"not ours ({self.info_hash.hex()})")
        if hs.peer_id == self.our_peer_id:
            raise RemoteProtocolError("connected to self: the peer id is our own")
        if self.expect_peer_id is not None and hs.peer_id != self.expect_peer_id:
            raise RemoteProtocolError(
                f"peer id {hs.peer_id!r} differs from the one announced ({self.expect_peer_id!r})")
        self.peer_id = hs.peer_id
        self.peer_reserved = hs.reserved
        self._hs_buf = bytearray()
        self._transition(PeerState.ACTIVE)
        events.append(HandshakeReceived(hs.peer_id, hs.reserved))
        return view[take:]

    def _check_block(self, what: str, index: int, begin: int, length: int) -> None:
        if index >= self.num_pieces:
            raise RemoteProtocolError(
                f"peer sent a {what} for piece {index}; the torrent has {self.num_pieces}")
        size = self.piece_size(index)
        if begin + length > size:
            raise RemoteProtocolError(
                f"peer sent a {what} for bytes {begin}..{begin + length} of piece {index}, "
                f"which has {size} bytes")

    def _handle(self, msg: Message, events: list[Event]) -> None:
        # Ordered by frequency: blocks dominate a download.
        if isinstance(msg, Piece):
            self._first_message = False
            key = (msg.index, msg.begin)
            entry = self._outstanding.pop(key, None)
            data = msg.data
            if entry is not None and entry[0] == len(data):
                events.append(BlockReceived(msg.index, msg.begin, data))
                return
            if entry is not None:
                raise RemoteProtocolError(
                    f"peer sent {len(data)} bytes for block {key}; we requested {entry[0]}")
            self._check_block("block", msg.index, msg.begin, len(data))
            if key in self._cancelled:
                del self._cancelled[key]
                self.ignored_blocks += 1
                return
            raise RemoteProtocolError(
                f"peer sent block (piece {msg.index}, offset {msg.begin}) we did not request")
        if isinstance(msg, Have):
            self._first_message = False
            index = msg.index
            if index >= self.num_pieces:
                raise RemoteProtocolError(
                    f"peer sent have for piece {index}; the torrent has {self.num_pieces}")
            bits = self._peer_bits
            mask = 0x80 >> (index & 7)
            if not bits[index >> 3] & mask:
                bits[index >> 3] |= mask
                self._peer_count += 1
                events.append(HaveReceived(index))
            return
        if isinstance(msg, Request):
            self._first_message = False
            self._receive_request(msg, events)
            return
        if isinstance(msg, Cancel):
            self._first_message = False
            block = (msg.index, msg.begin, msg.length)
            if block in self._peer_requests:
                del self._peer_requests[block]
                events.append(CancelReceived(*block))
            return
        if isinstance(msg, Choke):
            self._first_message = False
            if not self.peer_choking:
                self.peer_choking = True
                events.append(_CHOKED)
            if self._outstanding:
                # BEP 3 without BEP 6: a choke discards every pending request.
                lost = self.outstanding_requests
                self._outstanding = {}
                for index, begin, _length in lost:
                    self._forget((index, begin))
                events.append(RequestsCancelled(tuple(lost)))
            return
        if isinstance(msg, Unchoke):
            self._first_message = False
            if self.peer_choking:
                self.peer_choking = False
                events.append(_UNCHOKED)
            return
        if isinstance(msg, Interested):
            self._first_message = False
            if not self.peer_interested:
                self.peer_interested = True
                events.append(_PEER_INTERESTED)
            return
        if isinstance(msg, NotInterested):
            self._first_message = False
            if self.peer_interested:
                self.peer_interested = False
                events.append(_PEER_NOT_INTERESTED)
            return
        if isinstance(msg, Bitfield):
            self._receive_bitfield(msg.bits, events)
            return
        # KeepAlive: only refreshes the idle timer (already marked), and does not
        # count as the first message. Port (BEP 5) and Unknown: ignored, but they
        # are messages, so a bitfield after them is out of place.
        if not isinstance(msg, KeepAlive):
            self._first_message = False

    def _receive_bitfield(self, bits: bytes, events: list[Event]) -> None:
        # BEP 3 sends the bitfield first only; aria2 also sends a fresh one later
        # instead of many HAVEs when that is shorter.  A later bitfield is taken
        # as those HAVEs (bits are never cleared), checked like the first.
        late = not self._first_message
        self._first_message = False
        expected = len(self._peer_bits)
        if len(bits) != expected:
            raise RemoteProtocolError(
                f"peer sent a {len(bits)}-byte bitfield; {self.num_pieces} pieces need "
                f"exactly {expected}")
        spare = (-self.num_pieces) & 7
        if bits[-1] & ((1 << spare) - 1):
            raise RemoteProtocolError("peer sent a bitfield with spare bits set (BEP 3)")
        if late:
            # whole-bitfield integer arithmetic and a regex scan for the bytes that
            # changed: a repeated bitfield costs C time, not a Python loop per byte
            have = int.from_bytes(self._peer_bits, "big")
            new = int.from_bytes(bits, "big") & ~have
            if not new:
                return
            self._peer_bits[:] = (have | new).to_bytes(expected, "big")
            self._peer_count += new.bit_count()
            changed = new.to_bytes(expected, "big")
            for m in _NONZERO_BYTE.finditer(changed):
                k = m.start()
                byte = changed[k]
                events.extend(HaveReceived(k * 8 + j) for j in range(8) if byte & (0x80 >> j))
            return
        self._peer_bits[:] = bits
        self._peer_count = int.from_bytes(bits, "big").bit_count()
        events.append(BitfieldReceived(bits))

    def _receive_request(self, msg: Request, events: list[Event]) -> None:
        index, begin, length = msg.index, msg.begin, msg.length
        if length == 0:
            raise RemoteProtocolError(f"peer sent a zero-length request for piece {index}")
        if length > MAX_REQUEST_LENGTH:
            raise RemoteProtocolError(
                f"peer requested {length} bytes; the largest request we serve is "
                f"{MAX_REQUEST_LENGTH}")
        self._check_block("request", index, begin, length)
        block = (index, begin, length)
        # A request while we choke it is normal (it crossed our choke on the
        # wire); without BEP 6 it is silently discarded, as BEP 3 prescribes.
        if self.am_choking or len(self._peer_requests) >= MAX_PEER_REQUESTS:
            self.dropped_peer_requests += 1
            return
        if block in self._peer_requests:
            return  # a duplicate: it is already queued
        self._peer_requests[block] = None
        events.append(RequestReceived(index, begin, length))

    # --- sending -------------------------------------------------------------------------
    def _check_can_send(self, what: str) -> None:
        if not self._handshake_sent or self._state is not PeerState.ACTIVE:
            raise LocalProtocolError(
                f"cannot send {what} in state {self._state.name} "
                f"(handshake sent: {self._handshake_sent})")
        self._we_sent_message = True
        self._sent_mark = True

    def handshake(self) -> bytes:
        """Our handshake; send it first (initiator) or after HandshakeReceived.

        Returns:
            68 bytes to write.

        Raises:
            LocalProtocolError: already sent, or the connection is closed.
        """
        if self._handshake_sent or self._state is PeerState.CLOSED:
            raise LocalProtocolError(
                f"cannot send a handshake in state {self._state.name} "
                f"(already sent: {self._handshake_sent})")
        self._handshake_sent = True
        self._sent_mark = True
        return encode_handshake(self.info_hash, self.our_peer_id)

    def send_bitfield(self, bits: bytes) -> bytes:
        """Our bitfield; only as our first message (omit it when we have nothing).

        Raises:
            LocalProtocolError: not first, wrong length or spare bits set.
        """
        if self._we_sent_message:
            raise LocalProtocolError("the bitfield must be our first message (BEP 3)")
        if len(bits) != len(self._peer_bits) or bits[-1] & ((1 << ((-self.num_pieces) & 7)) - 1):
            raise LocalProtocolError("bitfield has the wrong length or spare bits set")
        self._check_can_send("bitfield")
        return encode(Bitfield(bytes(bits)))

    def send_have(self, index: int) -> bytes:
        """Announce a piece we completed and verified.

        Raises:
            LocalProtocolError: index out of range or wrong state.
        """
        if not 0 <= index < self.num_pieces:
            raise LocalProtocolError(f"have for piece {index} of {self.num_pieces}")
        self._check_can_send("have")
        return encode(Have(index))

    def send_interested(self) -> bytes:
        """Tell the peer we want pieces it has."""
        self._check_can_send("interested")
        self.am_interested = True
        return encode(Interested())

    def send_not_interested(self) -> bytes:
        """Tell the peer we want nothing from it."""
        self._check_can_send("not interested")
        self.am_interested = False
        return encode(NotInterested())

    def send_choke(self) -> bytes:
        """Choke the peer: its queued requests are discarded (BEP 3, no BEP 6)."""
        self._check_can_send("choke")
        self.am_choking = True
        self._peer_requests.clear()
        return encode(Choke())

    def send_unchoke(self) -> bytes:
        """Unchoke the peer: we will serve its requests."""
        self._check_can_send("unchoke")
        self.am_choking = False
        return encode(Unchoke())

    def send_request(self, index: int, begin: int, length: int, now: float) -> bytes:
        """Request a block, recording it as outstanding since ``now``.

        Raises:
            LocalProtocolError: the peer is choking us, the block is already
                outstanding, too many are, or it is out of range.
        """
        self._check_can_send("request")
        if self.peer_choking:
            raise LocalProtocolError("cannot request while the peer chokes us")
        key = (index, begin)
        if key in self._outstanding:
            raise LocalProtocolError(f"block {key} is already requested from this peer")
        if len(self._outstanding) >= MAX_OUTSTANDING_REQUESTS:
            raise LocalProtocolError(
                f"more than {MAX_OUTSTANDING_REQUESTS} requests outstanding to one peer")
        if not (0 <= index < self.num_pieces and begin >= 0
                and 0 < length <= MAX_REQUEST_LENGTH
                and begin + length <= self.piece_size(index)):
            raise LocalProtocolError(f"invalid request ({index}, {begin}, {length})")
        # A key still in _cancelled stays there: the copy asked for before the
        # cancel (or choke, or timeout) may yet arrive as well as the new one,
        # and the second of the two must be ignored, not taken as unrequested.
        self._outstanding[key] = (length, now)
        return encode(Request(index, begin, length))

    def send_requests(self, blocks: list[Block], now: float) -> bytes:
        """Request many blocks at once (the hot path's batch form of :meth:`send_request`).

        The picker only hands out valid, distinct blocks; the checks of
        :meth:`send_request` that cannot fail for them are skipped, the rest kept.

        Raises:
            LocalProtocolError: the peer chokes us, a block is already
                outstanding, or too many would be.
        """
        self._check_can_send("request")
        if self.peer_choking:
            raise LocalProtocolError("cannot request while the peer chokes us")
        outstanding = self._outstanding
        if len(outstanding) + len(blocks) > MAX_OUTSTANDING_REQUESTS:
            raise LocalProtocolError(
                f"more than {MAX_OUTSTANDING_REQUESTS} requests outstanding to one peer")
        pack = _REQUEST_FRAME.pack
        out = []
        for index, begin, length in blocks:
            key = (index, begin)
            if key in outstanding:
                raise LocalProtocolError(f"block {key} is already requested from this peer")
            # as in send_request: a key in _cancelled stays there (two copies may come)
            outstanding[key] = (length, now)
            out.append(pack(13, 6, index, begin, length))
        return b"".join(out)

    def send_cancel(self, index: int, begin: int, length: int) -> bytes:
        """Withdraw a request (endgame); a block that still arrives is ignored."""
        self._check_can_send("cancel")
        key = (index, begin)
        if self._outstanding.pop(key, None) is not None:
            self._forget(key)
        return encode(Cancel(index, begin, length))

    def send_piece(self, index: int, begin: int, data: bytes | memoryview) -> bytes:
        """Answer a queued peer request with its block.

        Raises:
            LocalProtocolError: the request is not pending (cancelled, choked
                away, never made; check :meth:`is_request_pending`) or we choke.
        """
        self._check_can_send("piece")
        block = (index, begin, len(data))
        if self.am_choking or block not in self._peer_requests:
            raise LocalProtocolError(f"block {block} is not a pending request of the peer")
        del self._peer_requests[block]
        return encode(Piece(index, begin, data))

    def next_request(self) -> Block | None:
        """Take the peer's oldest queued request to serve it (the hot path of uploading).

        The caller sends the block with :func:`piece_header` + the data. None
        when nothing is queued (or we choke the peer: its requests were dropped).
        """
        reqs = self._peer_requests
        if not reqs or self.am_choking:
            return None
        block = next(iter(reqs))
        del reqs[block]
        self._we_sent_message = True
        self._sent_mark = True
        return block

    def send_keepalive(self) -> bytes:
        """A keep-alive frame."""
        if not self._handshake_sent or self._state is PeerState.CLOSED:
            raise LocalProtocolError(f"cannot send a keep-alive in state {self._state.name}")
        self._sent_mark = True
        return b"\x00\x00\x00\x00"

    # --- timers ------------------------------------------------------------------------------
    def timed_out_requests(self, now: float, timeout: float) -> list[Block]:
        """Forget and return our requests outstanding for longer than ``timeout``.

        A block that still arrives for them later is ignored.

        Args:
            now: the current monotonic time (never earlier than a send's ``now``).
            timeout: seconds.

        Returns:
            The timed-out requests, oldest first, to re-issue elsewhere.
        """
        deadline = now - timeout
        expired: list[Block] = []
        outstanding = self._outstanding
        for key, (length, sent_at) in outstanding.items():
            if sent_at > deadline:
                break  # send order is time order
            expired.append((key[0], key[1], length))
        for index, begin, _length in expired:
            del outstanding[(index, begin)]
            self._forget((index, begin))
        return expired

    def needs_keepalive(self, now: float, interval: float = KEEPALIVE_INTERVAL) -> bool:
        """Whether nothing was sent for ``interval`` seconds; then send_keepalive()."""
        if self._sent_mark:
            # Something was sent since the previous check; assume the earliest
            # time it could have been, so an error only makes keep-alives early.
            self._sent_mark = False
            self._last_sent = self._sent_checked
        self._sent_checked = now
        return now - self._last_sent >= interval

    def is_idle(self, now: float, limit: float = IDLE_TIMEOUT) -> bool:
        """Whether nothing was received for ``limit`` seconds (BEP 3 two-minute rule)."""
        if self._received_mark:
            # Something arrived since the previous check; assume the latest time
            # it could have been, so an error only makes us slower to drop a peer.
            self._received_mark = False
            self._last_received = now
        return now - self._last_received >= limit

    # --- the hot path: frames split by the caller -----------------------------------
    def accept_block(self, index: int, begin: int, length: int) -> bool:
        """A ``piece`` message framed by the caller (the native scanner), payload not copied.

        Returns:
            True: we requested this block; the caller stores it from its buffer.
            False: a late block of an abandoned request; ignore it.

        Raises:
            RemoteProtocolError: a block we never requested, or of the wrong length.
        """
        if self._state is not PeerState.ACTIVE:
            raise LocalProtocolError(f"accept_block in state {self._state.name}")
        self._received_mark = True
        self._first_message = False
        key = (index, begin)
        entry = self._outstanding.pop(key, None)
        if entry is not None:
            if entry[0] == length:
                return True
            self._transition(PeerState.CLOSED)
            raise RemoteProtocolError(
                f"peer sent {length} bytes for block {key}; we requested {entry[0]}")
        try:
            self._check_block("block", index, begin, length)
        except RemoteProtocolError:
            self._transition(PeerState.CLOSED)
            raise
        if key in self._cancelled:
            del self._cancelled[key]
            self.ignored_blocks += 1
            return False
        self._transition(PeerState.CLOSED)
        raise RemoteProtocolError(
            f"peer sent block (piece {index}, offset {begin}) we did not request")

    @property
    def request_table(self) -> dict[tuple[int, int], tuple[int, float]]:
        """Our outstanding requests, ``{(index, begin): (length, sent_at)}``, live.

        For the native block fast path (``_fast.take_blocks``), which removes
        the entries of the blocks it takes and then calls :meth:`blocks_taken`.
        Nothing else may change it.
        """
        return self._outstanding

    def blocks_taken(self) -> None:
        """Blocks were accepted through :attr:`request_table` (as by :meth:`accept_block`)."""
        if self._state is not PeerState.ACTIVE:
            raise LocalProtocolError(f"blocks_taken in state {self._state.name}")
        self._received_mark = True
        self._first_message = False

    def receive_frame(self, msg_id: int, payload: bytes | memoryview) -> list[Event]:
        """One complete message other than ``piece``, framed by the caller.

        Args:
            msg_id: the message id, or -1 for a keep-alive.
            payload: the bytes after the id (valid for this call only).

        Raises:
            RemoteProtocolError: a malformed or out-of-place message.
        """
        if self._state is not PeerState.ACTIVE:
            raise LocalProtocolError(f"receive_frame in state {self._state.name}")
        self._received_mark = True
        if msg_id < 0:
            return []
        events: list[Event] = []
        try:
            self._handle(decode(msg_id, payload), events)
        except RemoteProtocolError:
            self._transition(PeerState.CLOSED)
            raise
        return events

    def cancel_all(self) -> list[Block]:
        """Forget and return every outstanding request (on disconnect, to re-issue)."""
        lost = self.outstanding_requests
        self._outstanding = {}
        return lost

