"""The per-peer protocol state machine (BEP 3), sans-IO.

Theory of operation
-------------------
One :class:`PeerProtocol` per TCP connection. It does no I/O and reads no
clock. Received bytes land in its :class:`~torrent.wire.framing.ReceiveBuffer`
(``proto.rb``): the network adapter lets the socket read straight into it,
a test copies them in with :meth:`PeerProtocol.receive_data`. Either way
:meth:`PeerProtocol.next_event` is the one receive path: it frames the
buffer (every length checked against its bound before the body is
buffered), runs the block fast path and the message handlers, and returns
one event at a time until it needs more data (``None``). Handling each
event before asking for the next keeps everything in stream order. The
caller calls ``send_*`` methods and writes the bytes they return; it passes
``now`` (a monotonic clock) where time matters and asks the machine what
has timed out. The model is python-hyper/h11 (``next_event``).

The block fast path: once the owner attached its table of pieces in flight
(:meth:`PeerProtocol.attach_store`), the run of plain ``piece`` messages at
the front of the buffer is taken by the ``take_blocks`` kernel (native, or
its pure twin) -- request forgotten, block copied into its slot, bit set,
sender credited -- and reported as one :class:`BlocksTaken` per run: no
Python call per block. Anything else (a late, unrequested or duplicate
block; any other message) stops the kernel and goes through
:meth:`PeerProtocol.accept_block` and the handlers, the one home of every
rule; a block accepted there is reported as :class:`BlockReceived` for the
owner to store. ``fast_path=False`` turns the kernel off; the parity tests
run the same streams both ways and compare every piece of state.

Connection states (:class:`PeerState`), changed only by ``_transition``::

    AWAIT_HANDSHAKE --(valid handshake received)--> ACTIVE
    AWAIT_HANDSHAKE --(EOF / peer protocol error)--> CLOSED
    ACTIVE          --(EOF / peer protocol error)--> CLOSED

Inside ACTIVE the four BEP 3 flags (am_choking, am_interested, peer_choking,
peer_interested) start as choked / not interested on both sides.

Errors: a peer that breaks a rule makes ``next_event`` raise
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
:class:`BlockReceived` ``data`` is a memoryview into the receive buffer (no
copy). It is valid until the next read into the buffer: store it before
asking for more data.

Time
----
``next_event`` and most ``send_*`` methods take no ``now``: they only mark
"something was received/sent". :meth:`PeerProtocol.is_idle` and
:meth:`PeerProtocol.needs_keepalive` turn those marks into timestamps using the
``now`` they are given, so their precision is the caller's polling period
(poll every few seconds; the limits are a minute or two). Errors lean the safe
way: a keep-alive may go out early, an idle peer may be dropped late.
"""

from __future__ import annotations

import re
import struct
from collections import deque
from collections.abc import Iterable
from enum import IntEnum
from typing import Any, Final

from .. import _speedups as _k
from ..errors import RemoteProtocolError
from .extension import (
    EXTENSION_HANDSHAKE_ID,
    OUR_EXTENSION_NAMES,
    UT_METADATA,
    UT_PEX,
    ExtensionHandshake,
    MetadataMessage,
    Pex,
    decode_metadata_message,
    merge_peer_ids,
)
from .fastext import MAX_ALLOWED_FAST
from .framing import Framer, ReceiveBuffer, RecvBudget, next_frame
from .handshake import (
    DHT_BIT,
    EXTENSION_BIT,
    FAST_BIT,
    HANDSHAKE_LENGTH,
    PSTR,
    RESERVED_OURS,
    check_handshake_prefix,
    encode_handshake,
    parse_handshake,
)
from .messages import (
    MAX_REQUEST_LENGTH,
    AllowedFast,
    Bitfield,
    Cancel,
    Choke,
    Extended,
    Hashes,
    HashReject,
    HashRequest,
    Have,
    HaveAll,
    HaveNone,
    Interested,
    LocalProtocolError,
    Message,
    NotInterested,
    Piece,
    Port,
    Reject,
    Request,
    Suggest,
    Unchoke,
    Unknown,
    bitfield_length,
    decode,
    encode,
)
from .mse import CRYPTO_RC4, Established, MSEInitiator, MSEReceiver, skey_table
from .record import Record, setfield

__all__ = [
    "IDLE_TIMEOUT",
    "KEEPALIVE_INTERVAL",
    "MAX_OUTSTANDING_REQUESTS",
    "MAX_PEER_REQUESTS",
    "MAX_RECENTLY_CANCELLED",
    "BitfieldReceived",
    "BlockReceived",
    "BlocksTaken",
    "CancelReceived",
    "Choked",
    "ConnectionClosed",
    "Event",
    "ExtensionHandshakeReceived",
    "HandshakeReceived",
    "HashRejectReceived",
    "HashRequestReceived",
    "HashesReceived",
    "HaveReceived",
    "MetadataReceived",
    "PeerInterested",
    "PeerNotInterested",
    "PeerProtocol",
    "PeerState",
    "PexReceived",
    "PortReceived",
    "RequestDropped",
    "RequestReceived",
    "RequestRejected",
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
class Event(Record):
    """Base class of what :meth:`PeerProtocol.next_event` returns."""

    __slots__ = ()


class HandshakeReceived(Event):
    """The peer's valid handshake; the connection is ACTIVE."""

    peer_id: bytes
    reserved: bytes

    __slots__ = ("peer_id", "reserved")

    def __init__(self, peer_id: bytes, reserved: bytes) -> None:
        setfield(self, "peer_id", peer_id)
        setfield(self, "reserved", reserved)


class BitfieldReceived(Event):
    """The peer's full bitfield (its first message), validated."""

    bits: bytes

    __slots__ = ("bits",)

    def __init__(self, bits: bytes) -> None:
        setfield(self, "bits", bits)


class HaveReceived(Event):
    """The peer now has piece ``index``; only reported the first time."""

    index: int

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        setfield(self, "index", index)


class Choked(Event):
    """The peer choked us (followed by :class:`RequestsCancelled` if any were out)."""

    __slots__ = ()


class Unchoked(Event):
    """The peer unchoked us: we may request."""

    __slots__ = ()


class PeerInterested(Event):
    """The peer became interested in us."""

    __slots__ = ()


class PeerNotInterested(Event):
    """The peer is no longer interested in us."""

    __slots__ = ()


class BlockReceived(Event):
    """A block we requested, for the owner to store (the slow path).

    ``data`` is a view into the receive buffer, valid until the next read.
    """

    index: int
    begin: int
    data: bytes | memoryview

    __slots__ = ("begin", "data", "index")

    def __init__(self, index: int, begin: int, data: bytes | memoryview) -> None:
        setfield(self, "index", index)
        setfield(self, "begin", begin)
        setfield(self, "data", data)


class BlocksTaken(Event):
    """The fast path stored ``count`` blocks; ``full`` is a piece it completed, or None.

    ``full`` is the owner's piece object (a ``PieceDL``) from the table given
    to :meth:`PeerProtocol.attach_store`.
    """

    count: int
    full: object | None

    __slots__ = ("count", "full")

    def __init__(self, count: int, full: object | None) -> None:
        setfield(self, "count", count)
        setfield(self, "full", full)


class RequestReceived(Event):
    """The peer asks for a block; it is queued until :meth:`PeerProtocol.send_piece`."""

    index: int
    begin: int
    length: int

    __slots__ = ("begin", "index", "length")

    def __init__(self, index: int, begin: int, length: int) -> None:
        setfield(self, "index", index)
        setfield(self, "begin", begin)
        setfield(self, "length", length)


class CancelReceived(Event):
    """The peer withdrew a queued request; do not send that block."""

    index: int
    begin: int
    length: int

    __slots__ = ("begin", "index", "length")

    def __init__(self, index: int, begin: int, length: int) -> None:
        setfield(self, "index", index)
        setfield(self, "begin", begin)
        setfield(self, "length", length)


class RequestsCancelled(Event):
    """Our outstanding requests the peer discarded by choking us; re-issue them."""

    requests: tuple[Block, ...]

    __slots__ = ("requests",)

    def __init__(self, requests: tuple[Block, ...]) -> None:
        setfield(self, "requests", requests)


class RequestRejected(Event):
    """BEP 6: the peer will not serve this request of ours; re-issue it elsewhere."""

    index: int
    begin: int
    length: int

    __slots__ = ("begin", "index", "length")

    def __init__(self, index: int, begin: int, length: int) -> None:
        setfield(self, "index", index)
        setfield(self, "begin", begin)
        setfield(self, "length", length)


class RequestDropped(Event):
    """BEP 6: a request of the peer's we will not serve (we choke it, it cancelled it, or
    its queue is full): the owner answers it with :meth:`PeerProtocol.send_reject`."""

    index: int
    begin: int
    length: int

    __slots__ = ("begin", "index", "length")

    def __init__(self, index: int, begin: int, length: int) -> None:
        setfield(self, "index", index)
        setfield(self, "begin", begin)
        setfield(self, "length", length)


class ExtensionHandshakeReceived(Event):
    """BEP 10: the peer's extension handshake (its ids are merged into ``peer_extensions``)."""

    handshake: ExtensionHandshake

    __slots__ = ("handshake",)

    def __init__(self, handshake: ExtensionHandshake) -> None:
        setfield(self, "handshake", handshake)


class MetadataReceived(Event):
    """BEP 9: a ``ut_metadata`` message (request, data or reject)."""

    message: MetadataMessage

    __slots__ = ("message",)

    def __init__(self, message: MetadataMessage) -> None:
        setfield(self, "message", message)


class PexReceived(Event):
    """BEP 11: a ``ut_pex`` message (the owner applies BEP 11's rate and BEP 27)."""

    pex: Pex

    __slots__ = ("pex",)

    def __init__(self, pex: Pex) -> None:
        setfield(self, "pex", pex)


class PortReceived(Event):
    """BEP 5: the peer's DHT node listens on UDP ``port`` (only when both sides set the
    DHT bit; the owner pings it)."""

    port: int

    __slots__ = ("port",)

    def __init__(self, port: int) -> None:
        setfield(self, "port", port)


class HashRequestReceived(Event):
    """BEP 52: the peer asks for hashes of a file's merkle tree; the owner answers it
    with :meth:`PeerProtocol.send_hashes` or :meth:`PeerProtocol.send_hash_reject`
    (its values are unchecked: the owner knows the trees)."""

    request: HashRequest

    __slots__ = ("request",)

    def __init__(self, request: HashRequest) -> None:
        setfield(self, "request", request)


class HashesReceived(Event):
    """BEP 52: hashes from the peer (their count checked against the header)."""

    hashes: Hashes

    __slots__ = ("hashes",)

    def __init__(self, hashes: Hashes) -> None:
        setfield(self, "hashes", hashes)


class HashRejectReceived(Event):
    """BEP 52: the peer will not answer a hash request."""

    reject: HashReject

    __slots__ = ("reject",)

    def __init__(self, reject: HashReject) -> None:
        setfield(self, "reject", reject)


class ConnectionClosed(Event):
    """The peer closed the connection (EOF)."""

    __slots__ = ()


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
        framer: the torrent's framing limits (shared by its connections);
            built from ``num_pieces`` when not given.
        fast_path: take plain blocks with the ``take_blocks`` kernel once a
            store is attached (off: every block goes through the slow path).
        recv_budget: the owner's bound on the growth of all its receive buffers.
        reserved: the reserved bytes of our handshake: the extensions we offer
            (default: BEP 10 and the Fast extension, BEP 6).
        accept_mse: an incoming connection may open with an MSE/PE handshake
            (the libtorrent family tries it first); then the plaintext or RC4
            stream it selects follows.
        require_mse: an incoming connection must open with MSE/PE: a plaintext
            handshake is refused (``--encryption required``).
        initiate_mse: an outgoing connection opens with our side of MSE/PE
            (offering RC4 and plaintext), our handshake its initial payload:
            write :meth:`take_output` once connected instead of :meth:`handshake`.

    Raises:
        ValueError: the geometry is inconsistent (a bug of the caller).
    """

    __slots__ = (
        "_active",
        "_allowed_fast",
        "_cancelled",
        "_events",
        "_fast_path",
        "_first_message",
        "_framer",
        "_full",
        "_granted",
        "_handshake_sent",
        "_have_all",
        "_key",
        "_last_piece",
        "_last_piece_size",
        "_last_received",
        "_last_sent",
        "_mse",
        "_out",
        "_outstanding",
        "_peer_bits",
        "_peer_count",
        "_peer_requests",
        "_received_mark",
        "_require_mse",
        "_sent_checked",
        "_sent_mark",
        "_state",
        "_we_sent_message",
        "accept_mse",
        "am_choking",
        "am_interested",
        "dropped_peer_requests",
        "encrypt",
        "expect_peer_id",
        "extensions",
        "fast",
        "ignored_blocks",
        "info_hash",
        "mse_method",
        "num_pieces",
        "our_peer_id",
        "peer_choking",
        "peer_extensions",
        "peer_handshake",
        "peer_id",
        "peer_interested",
        "peer_reserved",
        "piece_length",
        "rb",
        "reserved",
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
        framer: Framer | None = None,
        fast_path: bool = True,
        recv_budget: RecvBudget | None = None,
        reserved: bytes = RESERVED_OURS,
        accept_mse: bool = True,
        require_mse: bool = False,
        initiate_mse: bool = False,
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
        self.reserved = bytes(reserved)
        self.accept_mse = accept_mse and not we_initiated
        self._require_mse = require_mse and not we_initiated
        # an MSE handshake under way (incoming: from the first bytes; outgoing: from the start)
        self._mse: MSEReceiver | MSEInitiator | None = None
        # Bytes the machine itself has to send (the MSE handshake's own): the
        # owner writes take_output() after each read. Bounded by the handshake.
        self._out = bytearray()
        # RC4 for what we send, once an MSE handshake selected it (None: plaintext)
        self.encrypt: Any = None
        self.mse_method: int | None = None  # what an MSE handshake selected (None: none)
        # Negotiated once the peer's handshake is in: both sides set the bit.
        self.fast = False  # BEP 6
        self.extensions = False  # BEP 10
        self.peer_extensions: dict[str, int] = {}  # the peer's ids of the extensions we speak
        self.peer_handshake: ExtensionHandshake | None = None  # its latest, for reqq etc.
        # Pieces the peer lets us request while it chokes us (BEP 6), at most MAX_ALLOWED_FAST.
        self._allowed_fast: set[int] = set()
        # Pieces we let the peer request while we choke it (BEP 6; send_allowed_fast).
        self._granted: set[int] = set()
        self._have_all = False  # it sent HAVE_ALL: a later bitfield is out of place
        self._framer = framer if framer is not None else Framer(num_pieces)
        # The receive buffer: starts small, grows with the peer's pipeline, and
        # always holds the largest frame the framer admits.
        self.rb = ReceiveBuffer(self._framer.max_len + 4, budget=recv_budget)
        # Events of the last message not yet returned (a choke makes two, a
        # late bitfield one per new piece): bounded by what one frame can say.
        self._events: deque[Event] = deque()
        self._fast_path = fast_path
        self._active: dict[int, Any] | None = None  # the owner's pieces in flight
        self._key: object = None  # how the owner's pieces name this peer
        self._full: list[Any] = []  # the fast path's completed piece (at most one)
        self._handshake_sent = False
        self._first_message = True  # no message received yet (bitfield allowed)
        self._we_sent_message = False  # any message sent after the handshake
        self._last_piece = num_pieces - 1
        self._last_piece_size = total_size - self._last_piece * piece_length
        # The peer's pieces: allocated once its handshake checked out, so that a
        # connection that never gets that far costs the same whatever the torrent's
        # size (a million pieces would be 128 KiB each).
        self._peer_bits = bytearray()
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
        if require_mse and not accept_mse:
            raise ValueError("require_mse needs accept_mse")
        if initiate_mse:
            if not we_initiated:
                raise ValueError("initiate_mse is for connections we dial")
            # our handshake travels as the IA of step 3 (RC4-encrypted, as the spec has it)
            self._mse = MSEInitiator(self.info_hash, self.handshake())
            self._out += self._mse.data_to_send()  # Ya and PadA

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
        """The pieces the peer has (BEP 3 bitfield layout, high bit first); empty
        before its handshake."""
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
        """Whether the peer has piece ``index`` (asked once its handshake is in)."""
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

    # --- receiving: the one receive path ---------------------------------------------
    def attach_store(self, active: dict[int, Any], key: object) -> None:
        """Turn on the block fast path.

        Args:
            active: the owner's pieces in flight, ``{index: PieceDL}`` (the
                picker's table; see ``take_blocks`` for the fields it uses).
            key: the object the owner's pieces record as this peer (the holder
                of a request, the sender of a block).
        """
        self._active = active
        self._key = key

    def next_event(self) -> Event | None:
        """The next event from the bytes in :attr:`rb`, or None when it needs more.

        Raises:
            RemoteProtocolError: the peer broke the protocol; drop it. The
                machine is then CLOSED.
            LocalProtocolError: called after the connection was closed.
        """
        if self._events:
            return self._events.popleft()
        if self._state is PeerState.CLOSED:
            raise LocalProtocolError("next_event called on a closed peer connection")
        try:
            return self._next()
        except RemoteProtocolError:
            if self.state is not PeerState.CLOSED:  # accept_block may have closed it
                self._transition(PeerState.CLOSED)
            raise

    def _next(self) -> Event | None:
        rb = self.rb
        if self._state is PeerState.AWAIT_HANDSHAKE:
            if self._mse is None and self.accept_mse and rb.end > rb.start:
                n = min(rb.end - rb.start, len(_PLAIN_PREFIX))
                if bytes(rb.view[rb.start : rb.start + n]) != _PLAIN_PREFIX[:n]:
                    # not "\x13BitTorrent protocol": an MSE/PE handshake (its Ya)
                    self._mse = MSEReceiver(skey_table([self.info_hash]))
                    self.accept_mse = False
                elif n < len(_PLAIN_PREFIX):
                    return None  # too few bytes to tell yet
                else:
                    self.accept_mse = False  # a plaintext handshake
                    if self._require_mse:
                        raise RemoteProtocolError(
                            "plaintext handshake refused: encryption (MSE/PE) is required")
            if self._mse is not None:
                if not self._mse_step():
                    return None
            if rb.end - rb.start < HANDSHAKE_LENGTH:
                # reject a non-BitTorrent stream from its first byte
                check_handshake_prefix(rb.view[rb.start : rb.end])
                return None
            self._received_mark = True
            ev = self._receive_handshake(rb.view[rb.start : rb.start + HANDSHAKE_LENGTH])
            rb.start += HANDSHAKE_LENGTH
            return ev
        active = self._active
        framer = self._framer
        events = self._events
        while True:
            if active is not None and self._fast_path:
                pos, taken = _k.take_blocks(rb.buf, rb.start, rb.end, self._outstanding,
                                            active, self._key, self._full)
                if taken:
                    rb.start = pos
                    self._received_mark = True
                    self._first_message = False
                    full = self._full
                    return BlocksTaken(taken, full.pop() if full else None)
            n = next_frame(rb, framer)
            if n < 0:
                return None
            start = rb.start
            rb.start = start + 4 + n
            self._received_mark = True
            if n == 0:
                continue  # a keep-alive: only refreshes the idle timer
            buf = rb.buf
            msg = decode(buf[start + 4], rb.view[start + 5 : start + 4 + n])
            _HANDLERS.get(type(msg), PeerProtocol._on_other)(self, msg, events)
            if events:
                return events.popleft()

    def _mse_step(self) -> bool:
        """Feed the MSE handshake; True once it is done and the BitTorrent stream follows."""
        rb = self.rb
        mse = self._mse
        assert mse is not None
        data = bytes(rb.view[rb.start : rb.end])  # handshake bytes only: a few hundred
        rb.start = rb.end
        self._received_mark = True
        est = mse.receive_data(data)
        self._out += mse.data_to_send()
        if est is None:
            return False
        self._mse = None
        self._established(est)
        return True

    def _established(self, est: Established) -> None:
        self.encrypt = est.encrypt if est.method == CRYPTO_RC4 else None
        self.mse_method = est.method
        self.rb.feed(est.payload)  # already decrypted: before the transform is set
        if est.method == CRYPTO_RC4:
            self.rb.transform = est.decrypt

    def mse_established_elsewhere(self, est: Established) -> None:
        """An incoming connection's MSE/PE handshake was answered before this machine
        existed (the worker routes a connection to its torrent by the SKEY the
        handshake names): go on from it. ``est.payload`` is read first.

        Raises:
            LocalProtocolError: not a fresh incoming connection, or another torrent.
        """
        if self.we_initiated or self._state is not PeerState.AWAIT_HANDSHAKE \
                or self._mse is not None or self.rb.end > self.rb.start:
            raise LocalProtocolError("only a fresh incoming connection takes an MSE handshake")
        if est.info_hash != self.info_hash:
            raise LocalProtocolError("the MSE handshake named another torrent")
        self.accept_mse = False
        self._established(est)

    @property
    def mse_pending(self) -> bool:
        """An MSE/PE handshake is under way (begun, not finished)."""
        return self._mse is not None

    def take_output(self) -> bytes:
        """Bytes the machine has to send on its own: an MSE handshake's (our opening
        Ya and PadA on a connection we dial with ``initiate_mse``, then each reply)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Copy received bytes in and return every event they complete; ``b""`` is EOF.

        The same path as a socket read into :attr:`rb` followed by
        :meth:`next_event` until it returns None (for tests and callers
        without a socket). Block data in the events points into :attr:`rb`:
        it is valid until the next call.

        Raises:
            RemoteProtocolError: the peer broke the protocol (the machine is CLOSED);
                the events of the same call before the error are not returned (the
                connection is over; a caller that needs each event as it comes
                uses :meth:`next_event`, as the worker does).
            LocalProtocolError: called after the connection was closed.
        """
        if self._state is PeerState.CLOSED:
            raise LocalProtocolError("receive_data called on a closed peer connection")
        if not data:
            return [self.receive_eof()]
        self.rb.feed(data)
        out: list[Event] = []
        while (ev := self.next_event()) is not None:
            out.append(ev)
        return out

    def receive_eof(self) -> ConnectionClosed:
        """The peer closed the connection."""
        self._transition(PeerState.CLOSED)
        return ConnectionClosed()

    def _receive_handshake(self, data: memoryview) -> Event:
        hs = parse_handshake(data)
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
        self.fast = _has(self.reserved, FAST_BIT) and hs.supports_fast
        self.extensions = _has(self.reserved, EXTENSION_BIT) and hs.supports_extensions
        self._peer_bits = bytearray(bitfield_length(self.num_pieces))
        self._transition(PeerState.ACTIVE)
        return HandshakeReceived(hs.peer_id, hs.reserved)

    def _check_block(self, what: str, index: int, begin: int, length: int) -> None:
        if index >= self.num_pieces:
            raise RemoteProtocolError(
                f"peer sent a {what} for piece {index}; the torrent has {self.num_pieces}")
        size = self.piece_size(index)
        if begin + length > size:
            raise RemoteProtocolError(
                f"peer sent a {what} for bytes {begin}..{begin + length} of piece {index}, "
                f"which has {size} bytes")

    # --- message handlers: one per message class (see _HANDLERS) ---------------------
    def _on_piece(self, msg: Piece, events: deque[Event]) -> None:
        if self.accept_block(msg.index, msg.begin, len(msg.data)):
            events.append(BlockReceived(msg.index, msg.begin, msg.data))

    def _on_have(self, msg: Have, events: deque[Event]) -> None:
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

    def _on_request(self, msg: Request, events: deque[Event]) -> None:
        self._first_message = False
        self._receive_request(msg, events)

    def _on_cancel(self, msg: Cancel, events: deque[Event]) -> None:
        self._first_message = False
        block = (msg.index, msg.begin, msg.length)
        if block in self._peer_requests:
            del self._peer_requests[block]
            # BEP 6: a cancelled request is answered, by the block or a reject
            events.append(RequestDropped(*block) if self.fast else CancelReceived(*block))

    def _on_choke(self, msg: Choke, events: deque[Event]) -> None:
        self._first_message = False
        if not self.peer_choking:
            self.peer_choking = True
            events.append(_CHOKED)
        if self._outstanding and not self.fast:
            # BEP 3 without BEP 6: a choke discards every pending request (with
            # BEP 6 the peer rejects or serves each one).
            lost = self.outstanding_requests
            self._outstanding.clear()  # in place: the fast path holds this table
            for index, begin, _length in lost:
                self._forget((index, begin))
            events.append(RequestsCancelled(tuple(lost)))

    def _on_unchoke(self, msg: Unchoke, events: deque[Event]) -> None:
        self._first_message = False
        if self.peer_choking:
            self.peer_choking = False
            events.append(_UNCHOKED)

    def _on_interested(self, msg: Interested, events: deque[Event]) -> None:
        self._first_message = False
        if not self.peer_interested:
            self.peer_interested = True
            events.append(_PEER_INTERESTED)

    def _on_not_interested(self, msg: NotInterested, events: deque[Event]) -> None:
        self._first_message = False
        if self.peer_interested:
            self.peer_interested = False
            events.append(_PEER_NOT_INTERESTED)

    def _on_bitfield(self, msg: Bitfield, events: deque[Event]) -> None:
        self._receive_bitfield(msg.bits, events)

    def _require_fast(self, msg: Message) -> None:
        if not self.fast:  # BEP 6: "the peer must close the connection"
            raise RemoteProtocolError(
                f"peer sent {msg.NAME} without the Fast extension negotiated (BEP 6)")

    def _on_have_all(self, msg: HaveAll, events: deque[Event]) -> None:
        self._require_fast(msg)
        if not self._first_message:
            raise RemoteProtocolError("peer sent have all after its first message (BEP 6)")
        self._first_message = False
        self._have_all = True
        n = self.num_pieces
        bits = bytearray(b"\xff" * bitfield_length(n))
        if n & 7:
            bits[-1] = (0xFF << (8 - (n & 7))) & 0xFF
        self._peer_bits[:] = bits
        self._peer_count = n
        events.append(BitfieldReceived(bytes(bits)))

    def _on_have_none(self, msg: HaveNone, events: deque[Event]) -> None:
        self._require_fast(msg)
        if not self._first_message:
            raise RemoteProtocolError("peer sent have none after its first message (BEP 6)")
        self._first_message = False

    def _on_reject(self, msg: Reject, events: deque[Event]) -> None:
        self._require_fast(msg)
        self._first_message = False
        key = (msg.index, msg.begin)
        entry = self._outstanding.get(key)
        if entry is not None and entry[0] == msg.length:
            del self._outstanding[key]
            self._forget(key)  # a block may still cross the reject: it is late, not unasked
            events.append(RequestRejected(msg.index, msg.begin, msg.length))
            return
        if key in self._cancelled:
            return  # we gave it up already (cancel, time-out): nothing to re-issue
        # BEP 6: "a reject for a request that was never sent" closes the connection
        raise RemoteProtocolError(
            f"peer rejected a request we never sent ({msg.index}, {msg.begin}, {msg.length})")

    def _on_allowed_fast(self, msg: AllowedFast, events: deque[Event]) -> None:
        self._require_fast(msg)
        self._first_message = False
        if msg.index >= self.num_pieces:
            raise RemoteProtocolError(
                f"peer sent allowed fast for piece {msg.index}; the torrent has "
                f"{self.num_pieces}")
        if len(self._allowed_fast) < MAX_ALLOWED_FAST:
            self._allowed_fast.add(msg.index)

    def _on_suggest(self, msg: Suggest, events: deque[Event]) -> None:
        self._require_fast(msg)
        self._first_message = False
        if msg.index >= self.num_pieces:
            raise RemoteProtocolError(
                f"peer suggested piece {msg.index}; the torrent has {self.num_pieces}")
        # advisory only (BEP 6): the picker goes by rarity and leases

    def _on_extended(self, msg: Extended, events: deque[Event]) -> None:
        # Not a "first message" for BEP 3/6: the extension handshake comes right
        # after the handshake, before the bitfield or have all (libtorrent's order).
        if not self.extensions:
            return  # it never offered BEP 10, or we did not: nothing it says can be meant for us
        if msg.ext_id == EXTENSION_HANDSHAKE_ID:
            hs = ExtensionHandshake.decode(msg.body)
            self.peer_extensions = merge_peer_ids(self.peer_extensions, hs.m)
            self.peer_handshake = hs
            events.append(ExtensionHandshakeReceived(hs))
            return
        name = OUR_EXTENSION_NAMES.get(msg.ext_id)
        if name == UT_METADATA:
            # no size to check against here: a request is about our info dict, data
            # about the peer's; the server and the fetch check the piece ranges
            meta_msg = decode_metadata_message(msg.body)
            if meta_msg is not None:  # None: a msg_type we do not know (BEP 9: ignore it)
                events.append(MetadataReceived(meta_msg))
        elif name == UT_PEX:
            events.append(PexReceived(Pex.decode(msg.body)))
        # an id we never announced: ignored (a later handshake may have withdrawn it)

    @property
    def allowed_fast(self) -> frozenset[int]:
        """Pieces the peer lets us request while it chokes us (BEP 6)."""
        return frozenset(self._allowed_fast)

    def _on_port(self, msg: Port, events: deque[Event]) -> None:
        # BEP 5: meaningful only when both sides announced the DHT; port 0 names nothing
        self._first_message = False
        if msg.port and _has(self.reserved, DHT_BIT) and self.peer_reserved is not None \
                and _has(self.peer_reserved, DHT_BIT):
            events.append(PortReceived(msg.port))

    def _on_hash_request(self, msg: HashRequest, events: deque[Event]) -> None:
        self._first_message = False
        events.append(HashRequestReceived(msg))

    def _on_hashes(self, msg: Hashes, events: deque[Event]) -> None:
        self._first_message = False
        events.append(HashesReceived(msg))

    def _on_hash_reject(self, msg: HashReject, events: deque[Event]) -> None:
        self._first_message = False
        events.append(HashRejectReceived(msg))

    def _on_other(self, msg: Message, events: deque[Event]) -> None:
        # Unknown ids: ignored, but they are messages, so a bitfield after them is
        # out of place.
        self._first_message = False

    def _receive_bitfield(self, bits: bytes, events: deque[Event]) -> None:
        # BEP 3 sends the bitfield first only; aria2 also sends a fresh one later
        # instead of many HAVEs when that is shorter.  A later bitfield is taken
        # as those HAVEs (bits are never cleared), checked like the first.
        if self._have_all:
            raise RemoteProtocolError("peer sent a bitfield after have all (BEP 6)")
        late = not self._first_message
        self._first_message = False
        expected = bitfield_length(self.num_pieces)
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

    def _receive_request(self, msg: Request, events: deque[Event]) -> None:
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
        # wire); without BEP 6 it is silently discarded, as BEP 3 prescribes; with
        # BEP 6 it is rejected, unless it is for a piece we granted (allowed fast).
        if (self.am_choking and index not in self._granted) \
                or len(self._peer_requests) >= MAX_PEER_REQUESTS:
            self.dropped_peer_requests += 1
            if self.fast:
                events.append(RequestDropped(index, begin, length))
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

    def handshake_sent_elsewhere(self) -> None:
        """Our handshake went out on this connection before this machine took it over
        (a magnet's metadata fetch made the connection): count it as sent.

        Raises:
            LocalProtocolError: already sent, or the connection is closed.
        """
        self.handshake()

    def interested_sent_elsewhere(self) -> None:
        """Our INTERESTED went out on this connection before this machine took it over
        (the metadata fetch sends it to a peer that announces a piece): count it as sent.

        Raises:
            LocalProtocolError: the handshake not sent yet, or the connection closed.
        """
        self.send_interested()

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
        return encode_handshake(self.info_hash, self.our_peer_id, self.reserved)

    @property
    def first_message_sent(self) -> bool:
        """A message of ours went out after the handshake (here or before the connection
        was handed to us): a bitfield or HAVE_ALL can no longer be sent, only HAVEs."""
        return self._we_sent_message

    def send_bitfield(self, bits: bytes) -> bytes:
        """Our bitfield; only as our first message (omit it when we have nothing).

        Raises:
            LocalProtocolError: not first, wrong length or spare bits set.
        """
        if self._we_sent_message:
            raise LocalProtocolError("the bitfield must be our first message (BEP 3)")
        if len(bits) != bitfield_length(self.num_pieces) \
                or bits[-1] & ((1 << ((-self.num_pieces) & 7)) - 1):
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

    def send_port(self, port: int) -> bytes:
        """BEP 5: our DHT node listens on UDP ``port`` (send it only when both sides set
        the DHT bit).

        Raises:
            LocalProtocolError: a port out of 1..65535, or the wrong state.
        """
        if not 0 < port < 65536:
            raise LocalProtocolError(f"DHT port {port} out of range")
        self._check_can_send("port")
        return encode(Port(port))

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
        """Choke the peer: its queued requests are discarded (BEP 3), or, with the Fast
        extension, rejected one by one (BEP 6): the bytes include those rejects.
        Requests for pieces we granted it (allowed fast) stay queued and are served."""
        self._check_can_send("choke")
        self.am_choking = True
        rejects = b""
        if self.fast and self._peer_requests:
            dropped = [b for b in self._peer_requests if b[0] not in self._granted]
            rejects = b"".join(encode(Reject(*block)) for block in dropped)
            for block in dropped:
                del self._peer_requests[block]
        else:
            self._peer_requests.clear()
        return encode(Choke()) + rejects

    def send_allowed_fast(self, pieces: Iterable[int]) -> bytes:
        """BEP 6: let the peer request ``pieces`` while we choke it (one message each).

        At most :data:`~torrent.wire.fastext.MAX_ALLOWED_FAST` pieces are granted on
        one connection; further ones are not sent.

        Raises:
            LocalProtocolError: no Fast extension, or a piece out of range.
        """
        if not self.fast:
            raise LocalProtocolError("allowed fast needs the Fast extension")
        self._check_can_send("allowed fast")
        out = []
        for index in pieces:
            if not 0 <= index < self.num_pieces:
                raise LocalProtocolError(f"allowed fast for piece {index} of {self.num_pieces}")
            if index in self._granted or len(self._granted) >= MAX_ALLOWED_FAST:
                continue
            self._granted.add(index)
            out.append(encode(AllowedFast(index)))
        return b"".join(out)

    @property
    def granted(self) -> frozenset[int]:
        """Pieces we let the peer request while we choke it (BEP 6)."""
        return frozenset(self._granted)

    def send_have_all(self) -> bytes:
        """BEP 6: we have every piece (in place of a full bitfield, as our first message).

        Raises:
            LocalProtocolError: no Fast extension, or not our first message.
        """
        if not self.fast or self._we_sent_message:
            raise LocalProtocolError("have all needs the Fast extension and must come first")
        self._check_can_send("have all")
        return encode(HaveAll())

    def send_reject(self, index: int, begin: int, length: int) -> bytes:
        """BEP 6: we will not serve this request of the peer's (see :class:`RequestDropped`).

        Raises:
            LocalProtocolError: no Fast extension.
        """
        if not self.fast:
            raise LocalProtocolError("reject needs the Fast extension")
        self._check_can_send("reject")
        return encode(Reject(index, begin, length))

    def send_extension_handshake(self, handshake: ExtensionHandshake) -> bytes:
        """BEP 10: our extension handshake (right after the handshake, and again to update).

        Raises:
            LocalProtocolError: BEP 10 was not negotiated.
        """
        if not self.extensions:
            raise LocalProtocolError("the peer did not offer the extension protocol (BEP 10)")
        self._check_can_send("extension handshake")
        return encode(Extended(EXTENSION_HANDSHAKE_ID, handshake.encode()))

    def send_extended(self, name: str, body: bytes) -> bytes:
        """An extension message, under the peer's id for extension ``name``.

        Raises:
            LocalProtocolError: the peer did not announce ``name`` (check
                :attr:`peer_extensions` first).
        """
        ext_id = self.peer_extensions.get(name)
        if not self.extensions or ext_id is None:
            raise LocalProtocolError(f"the peer does not take {name} messages")
        self._check_can_send(name)
        return encode(Extended(ext_id, body))

    def send_hash_request(self, request: HashRequest) -> bytes:
        """BEP 52: ask the peer for hashes of a file's tree."""
        self._check_can_send("hash request")
        return encode(request)

    def send_hashes(self, hashes: Hashes) -> bytes:
        """BEP 52: answer a :class:`HashRequestReceived` with the hashes."""
        self._check_can_send("hashes")
        return encode(hashes)

    def send_hash_reject(self, request: HashRequest) -> bytes:
        """BEP 52: refuse a :class:`HashRequestReceived` (it is repeated back)."""
        self._check_can_send("hash reject")
        return encode(HashReject(request.pieces_root, request.base_layer, request.index,
                                 request.length, request.proof_layers))

    def send_unchoke(self) -> bytes:
        """Unchoke the peer: we will serve its requests."""
        self._check_can_send("unchoke")
        self.am_choking = False
        return encode(Unchoke())

    def send_request(self, index: int, begin: int, length: int, now: float) -> bytes:
        """Request a block, recording it as outstanding since ``now``.

        Raises:
            LocalProtocolError: the peer is choking us (and the piece is not
                allowed fast), the block is already outstanding, too many are, or
                it is out of range.
        """
        self._check_can_send("request")
        if self.peer_choking and index not in self._allowed_fast:
            raise LocalProtocolError("cannot request while the peer chokes us "
                                     f"(piece {index} is not allowed fast)")
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
            LocalProtocolError: the peer chokes us (and a block is not of a
                piece it allowed fast), a block is already outstanding, or too
                many would be.
        """
        self._check_can_send("request")
        if self.peer_choking and not all(b[0] in self._allowed_fast for b in blocks):
            raise LocalProtocolError("cannot request while the peer chokes us "
                                     "(only its allowed-fast pieces)")
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

    def requests_sent_elsewhere(self, blocks: list[Block], now: float) -> None:
        """Count as outstanding block requests that went out on this connection before
        this machine took it over (the coordinator sends a magnet's first requests
        while the download is set up): their blocks are accepted as answers.

        Raises:
            LocalProtocolError: the handshake not done, a block already outstanding,
                or too many would be.
        """
        self._check_can_send("request")
        outstanding = self._outstanding
        if len(outstanding) + len(blocks) > MAX_OUTSTANDING_REQUESTS:
            raise LocalProtocolError(
                f"more than {MAX_OUTSTANDING_REQUESTS} requests outstanding to one peer")
        for index, begin, length in blocks:
            key = (index, begin)
            if key in outstanding:
                raise LocalProtocolError(f"block {key} is already requested from this peer")
            outstanding[key] = (length, now)

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

        The caller sends the block (``messages.pack_piece_header`` + the data). None
        when nothing is queued. While we choke the peer only requests for pieces we
        granted it (BEP 6 allowed fast) are queued: the others were dropped.
        """
        reqs = self._peer_requests
        if not reqs:
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


#: The handler of each message class: a new message is a row here (and in
#: ``messages.MESSAGE_TYPES``) plus its method above.
_HANDLERS: Final[dict[type[Message], Any]] = {
    Piece: PeerProtocol._on_piece,
    Have: PeerProtocol._on_have,
    Request: PeerProtocol._on_request,
    Cancel: PeerProtocol._on_cancel,
    Choke: PeerProtocol._on_choke,
    Unchoke: PeerProtocol._on_unchoke,
    Interested: PeerProtocol._on_interested,
    NotInterested: PeerProtocol._on_not_interested,
    Bitfield: PeerProtocol._on_bitfield,
    HaveAll: PeerProtocol._on_have_all,
    HaveNone: PeerProtocol._on_have_none,
    Reject: PeerProtocol._on_reject,
    AllowedFast: PeerProtocol._on_allowed_fast,
    Suggest: PeerProtocol._on_suggest,
    Extended: PeerProtocol._on_extended,
    Port: PeerProtocol._on_port,
    HashRequest: PeerProtocol._on_hash_request,
    Hashes: PeerProtocol._on_hashes,
    HashReject: PeerProtocol._on_hash_reject,
    Unknown: PeerProtocol._on_other,
}


#: How a plaintext handshake opens (BEP 3); anything else on an incoming
#: connection is taken for MSE/PE.
_PLAIN_PREFIX: Final = bytes([len(PSTR)]) + PSTR


def _has(reserved: bytes, bit: tuple[int, int]) -> bool:
    return bool(reserved[bit[0]] & bit[1])
