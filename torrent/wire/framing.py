"""The receive buffer of a peer connection and the framer over it (sans-IO).

Theory of operation
-------------------
A :class:`ReceiveBuffer` is the bytes received from one peer and not yet
consumed: ``buf[start:end]``.  The network adapter asks it for the free tail
(:meth:`ReceiveBuffer.get_buffer`), lets the socket read straight into it
(no ``bytes`` object per read) and reports how much arrived
(:meth:`ReceiveBuffer.updated`).  A test, or anything without a socket,
copies bytes in with :meth:`ReceiveBuffer.feed`.  Either way the same
framer then runs over the same buffer: :meth:`PeerProtocol.next_event
<torrent.wire.peer.PeerProtocol.next_event>` and :func:`next_frame`.

Memory is proportional to the work: a buffer starts at
:data:`INITIAL_RECV_BUFFER` (enough for the handshake and the first
messages) and doubles only when a read filled all of its free space (a fast
peer) or when a frame checked against its bound does not fit, up to
:data:`RECV_BUFFER_LIMIT` (or the largest frame the torrent allows, if
larger).

A *transform* can sit under the framer: a callable that rewrites each read's
bytes in place before they are framed (MSE/PE's RC4 decrypts there, with no
extra copy); framing and the block fast path never know it is there.

Buffer ownership: bytes between ``start`` and ``end`` are unconsumed; the
buffer is compacted or replaced only in :meth:`get_buffer` / :meth:`feed`,
that is between reads, never while a message view taken from it is in use.
Views handed out by the framer are valid until the next read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from .. import _speedups as _k
from ..errors import RemoteProtocolError
from .messages import frame_bounds, max_message_length, message_name

__all__ = [
    "INITIAL_RECV_BUFFER",
    "MIN_READ",
    "RECV_BUFFER_LIMIT",
    "ReceiveBuffer",
    "RecvBudget",
    "Transform",
    "next_frame",
]

#: A new connection's buffer: the 68-byte handshake, a bitfield of up to
#: ~30,000 pieces and the first few messages.  A connection that never gets
#: past its handshake costs no more than this.
INITIAL_RECV_BUFFER: Final = 4 << 10
#: The largest a buffer grows by itself (a larger frame, e.g. the bitfield of a
#: torrent with millions of pieces, grows it as far as its bound allows).  One
#: read of up to this much carries ~60 blocks, so the per-read Python work is
#: spread thin; measured, larger reads gained nothing on loopback.
RECV_BUFFER_LIMIT: Final = 1 << 20
#: Free tail below which the buffer is compacted (or grown) before a read: a
#: read smaller than this would cost a system call for too few bytes (half
#: the buffer while it is smaller than twice this).
MIN_READ: Final = 16 << 10

#: Rewrites bytes in place as they arrive (a stream cipher), before framing.
Transform = Callable[[memoryview], None]


class RecvBudget:
    """The memory a worker's receive buffers may hold beyond their first few KiB each.

    Growth a fast peer asks for (a read that filled its buffer) is taken only
    while the budget allows; growth a frame needs (checked against its bound
    first) must be granted, or the connection is dropped.  A buffer gives its
    share back when it shrinks (an idle peer) or is released (the connection
    ended).  So the receive memory of a worker is bounded by
    ``connections x INITIAL_RECV_BUFFER + limit``, whatever its peers do.

    Args:
        limit: the bytes granted in all.
    """

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        """Grant ``n`` more bytes if the budget allows."""
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        """``n`` bytes are free again."""
        self.used -= n


class ReceiveBuffer:
    """Bytes received from one peer, not yet consumed (see the module docstring).

    Args:
        max_frame: the largest frame (4-byte prefix included) that must fit.
        initial: the starting size (and the size it shrinks back to).
        limit: the size reads alone may grow it to.
        budget: the worker's :class:`RecvBudget` (None: unbounded, for tests).
    """

    __slots__ = ("_budget", "_charged", "_grow", "_initial", "_limit", "_want", "buf", "end",
                 "received", "start", "transform", "view")

    def __init__(self, max_frame: int, *, initial: int = INITIAL_RECV_BUFFER,
                 limit: int = RECV_BUFFER_LIMIT, budget: RecvBudget | None = None) -> None:
        self.buf = bytearray(initial)
        self.view = memoryview(self.buf)
        self.start = 0
        self.end = 0
        self._initial = initial
        self._limit = max(limit, max_frame + MIN_READ)  # a largest frame always fits
        self._budget = budget
        self._charged = 0  # bytes above ``initial`` taken from the budget
        self._grow = False  # the last read filled every free byte
        self._want = 0  # the incomplete frame at ``start`` needs this many bytes in all
        self.received = 0  # bytes received in all (read by rate meters)
        self.transform: Transform | None = None

    @property
    def capacity(self) -> int:
        """The buffer's current size in bytes."""
        return len(self.buf)

    @property
    def pending(self) -> int:
        """Unconsumed bytes."""
        return self.end - self.start

    def _resize(self, size: int, *, needed: bool) -> bool:
        """Reallocate to ``size`` bytes, charging or refunding the budget.

        Returns False (nothing changed) when optional growth is over budget.

        Raises:
            RemoteProtocolError: growth a frame needs is over budget.
        """
        charge = max(0, size - self._initial) - self._charged
        if charge > 0 and self._budget is not None and not self._budget.take(charge):
            if not needed:
                return False
            raise RemoteProtocolError(
                f"no receive memory left for a frame of up to {size} bytes: this worker's "
                f"buffers hold {self._budget.used} of {self._budget.limit} bytes")
        if charge < 0 and self._budget is not None:
            self._budget.give(-charge)
        self._charged += charge
        n = self.end - self.start
        new = bytearray(size)
        new[:n] = self.view[self.start : self.end]
        # a view of the old buffer (a frame just handled) stays valid on its own object
        self.buf = new
        self.view = memoryview(new)
        self.start, self.end = 0, n
        return True

    def _make_room(self, need: int, limit: int, *, needed: bool) -> None:
        """At least ``need`` free bytes after ``end``: compact, else grow (up to ``limit``)."""
        if len(self.buf) - self.end >= need:
            return
        n = self.end - self.start
        if len(self.buf) - n >= need:
            # compact in place: a same-size slice assignment never reallocates
            self.buf[:n] = self.view[self.start : self.end]
            self.start, self.end = 0, n
            return
        size = len(self.buf)
        while size - n < need and size < limit:
            size = min(limit, size * 2)
        if not self._resize(size, needed=needed) and self.start:
            self.buf[:n] = self.view[self.start : self.end]  # no growth: compact at least
            self.start, self.end = 0, n

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """The free tail for the next read (compacted or grown first if small)."""
        if self.start == self.end:
            self.start = self.end = 0
        if self._grow:
            # the last read filled the buffer: the peer sends faster than one read
            # takes; double it if the budget allows (only unconsumed bytes are copied)
            self._grow = False
            if len(self.buf) < self._limit:
                self._resize(min(self._limit, len(self.buf) * 2), needed=False)
        if self._want:
            # the frame at ``start`` was checked against its bound: it must fit
            need = self._want - (self.end - self.start)
            self._want = 0
            self._make_room(need, self._limit, needed=True)
        elif len(self.buf) - self.end < min(MIN_READ, len(self.buf) // 2):
            # a small tail: compact (reads of a few bytes would cost a system call each)
            self._make_room(min(MIN_READ, len(self.buf) // 2), len(self.buf), needed=False)
        return self.view[self.end :]

    def updated(self, nbytes: int) -> None:
        """``nbytes`` were read into the tail :meth:`get_buffer` returned."""
        end = self.end
        if self.transform is not None:
            self.transform(self.view[end : end + nbytes])
        self.end = end + nbytes
        self.received += nbytes
        if self.end == len(self.buf):
            self._grow = True

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Copy received bytes in (for callers without a socket: tests, tools).

        Unlike a socket read, one call may bring more than the read limit: the
        caller already holds those bytes, and the framer bounds every frame.
        """
        n = len(data)
        if not n:
            return
        if self.start == self.end:
            self.start = self.end = 0
        self._want = 0
        self._make_room(n, max(self._limit, self.end - self.start + n), needed=True)
        end = self.end
        self.view[end : end + n] = data
        if self.transform is not None:
            self.transform(self.view[end : end + n])
        self.end = end + n
        self.received += n

    def reserve_frame(self, total: int) -> None:
        """Note that the frame starting at ``start`` is ``total`` bytes long.

        Called by the framer once the frame's length was checked against its
        bound (so the growth is bounded too).  The room is made by the next
        :meth:`get_buffer`, between reads: never while views handed out for
        this read's frames may still be in use.
        """
        if self.start + total > len(self.buf):
            self._want = total

    def shrink(self) -> None:
        """Back to the initial size if nothing is pending (an idle peer), refunding the budget."""
        if self.start == self.end and len(self.buf) > self._initial:
            self.start = self.end = 0
            self._resize(self._initial, needed=False)

    def release(self) -> None:
        """The connection ended: give the budget back (the buffer is not used again)."""
        if self._budget is not None and self._charged:
            self._budget.give(self._charged)
        self._charged = 0


class Framer:
    """The per-connection framing limits: the largest frame and the bound of each id."""

    __slots__ = ("bounds", "max_len")

    def __init__(self, num_pieces: int) -> None:
        self.max_len = max_message_length(num_pieces)
        self.bounds = frame_bounds(num_pieces)


def next_frame(rb: ReceiveBuffer, framer: Framer) -> int:
    """The body length of the complete frame at ``rb.start``, or -1 if it is not all in.

    Every length is checked before anything more is buffered for it: the
    prefix against the largest frame as soon as its 4 bytes are in, and
    against the bound of its id as soon as the id byte is in.  An incomplete
    frame that passed both gets room reserved for the rest.

    Raises:
        RemoteProtocolError: a length over its bound.
    """
    buf = rb.buf
    pos = rb.start
    end = rb.end
    n = _k.scan_frame(buf, pos, end, framer.max_len)
    if n == -2:
        raise RemoteProtocolError(
            f"peer sent a frame length prefix of {_k.read_u32(buf, pos)} bytes, over the "
            f"bound of {framer.max_len}")
    if n > 0:
        bound = framer.bounds[buf[pos + 4]]
        if n > bound:
            _too_long(buf[pos + 4], n, bound)
        return n
    if n == 0:
        return 0
    if end - pos >= 5:
        ln = _k.read_u32(buf, pos)
        bound = framer.bounds[buf[pos + 4]]
        if ln > bound:
            _too_long(buf[pos + 4], ln, bound)
        rb.reserve_frame(4 + ln)
    return -1


def _too_long(msg_id: int, length: int, bound: int) -> None:
    raise RemoteProtocolError(
        f"peer sent a {message_name(msg_id)} message of {length} bytes; at most {bound} allowed")
