"""The asyncio adapter of one peer connection (the only socket code for peers).

Theory of operation
-------------------
A thin :class:`asyncio.BufferedProtocol`.  When the connection is made it
asks its owner's ``accept`` callback for a :class:`ConnectionHandler` (the
owner's per-peer object; ``None`` refuses the connection).  From then on
uvloop reads straight into the handler's receive buffer
(:class:`~torrent.wire.framing.ReceiveBuffer`: no ``bytes`` object per
read), and each read, each drained send queue and the end of the
connection are reported to the handler.  Framing, the block fast path and
every protocol rule live in :mod:`torrent.wire`; policy (what to request,
when to give up) in the worker and the picker.  This module knows neither:
it depends only on the small :class:`ConnectionHandler` interface, so the
owner and the adapter never import each other.
"""

from __future__ import annotations

import asyncio
import fcntl
import struct
import termios
from collections.abc import Callable
from typing import Any, Protocol

from ..peeraddr import canonical_ip
from ..wire.framing import ReceiveBuffer

__all__ = ["SEND_BUFFER_HIGH", "Accept", "ConnectionHandler", "PeerConn"]

#: Transport write buffer high-water mark: past it the owner stops queueing
#: uploads for this peer until :meth:`ConnectionHandler.writable` (1 MiB is
#: ~64 blocks in flight).
SEND_BUFFER_HIGH = 1 << 20


class ConnectionHandler(Protocol):
    """What a connection reports to: the owner's object for this peer."""

    @property
    def rb(self) -> ReceiveBuffer:
        """The buffer the socket reads into."""
        ...

    def data_received(self) -> None:
        """Bytes arrived in :attr:`rb`."""

    def writable(self) -> None:
        """The send queue drained below half of :data:`SEND_BUFFER_HIGH`."""

    def lost(self, reason: str) -> None:
        """The connection is gone (called exactly once, after :meth:`PeerConn.abort` too)."""


#: Called when a connection is made (its ``addr`` known): the handler, or None to refuse it.
Accept = Callable[["PeerConn"], "ConnectionHandler | None"]


class PeerConn(asyncio.BufferedProtocol):
    """One TCP connection to a peer.

    Args:
        accept: see :data:`Accept`.
        addr: the peer's address (outgoing); incoming ones read it from the socket.
        outgoing: we dialled it.
    """

    def __init__(self, accept: Accept, addr: tuple[str, int] | None = None,
                 outgoing: bool = False) -> None:
        self._accept = accept
        self.addr: tuple[str, int] = addr or ("?", 0)
        self.outgoing = outgoing
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.close_reason = ""
        self.remote_closed = False  # the peer closed it (end of stream, reset), not we
        self._handler: ConnectionHandler | None = None
        self._rb: ReceiveBuffer | None = None

    # -- asyncio callbacks --------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if not self.outgoing:
            # (host, port) of IPv4, (host, port, flowinfo, scope) of IPv6; the host
            # canonical (torrent/peeraddr.py), so that bans and tables see one form
            peer = transport.get_extra_info("peername") or ("?", 0)
            self.addr = (canonical_ip(peer[0]) or peer[0], peer[1])
        # resume_writing() fires when the queued upload drains below the low mark
        transport.set_write_buffer_limits(high=SEND_BUFFER_HIGH, low=SEND_BUFFER_HIGH // 2)
        handler = self._accept(self)
        if handler is None:
            self.closed = True
            self.close_reason = "refused"
            transport.abort()
            return
        self._handler = handler
        self._rb = handler.rb

    def pause_writing(self) -> None:
        pass  # the owner checks write_buffer_size() itself before queueing more

    def resume_writing(self) -> None:
        if not self.closed and self._handler is not None:
            self._handler.writable()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._rb.get_buffer(sizehint)  # type: ignore[union-attr]

    def buffer_updated(self, nbytes: int) -> None:
        self._rb.updated(nbytes)  # type: ignore[union-attr]
        if not self.closed:
            self._handler.data_received()  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        if not self.closed:
            self.remote_closed = True
        self.abort("closed by peer")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self.remote_closed = True
            self.close_reason = (f"connection lost: {exc}" if exc else "connection closed")
            if self._handler is not None:
                self._handler.lost(self.close_reason)

    def rehome(self, handler: ConnectionHandler) -> None:
        """Report to ``handler`` from now on (a connection routed to its torrent once its
        first bytes named it); the next read goes into its buffer."""
        if not self.closed:
            self._handler = handler
            self._rb = handler.rb

    @property
    def refused(self) -> bool:
        """The owner's ``accept`` refused this connection (it was closed at once)."""
        return self.transport is not None and self._handler is None

    # -- the owner's calls --------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue bytes to send (dropped once closed)."""
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def write_buffer_size(self) -> int:
        """Bytes queued in the transport, not yet handed to the kernel."""
        tr = self.transport
        return tr.get_write_buffer_size() if tr is not None and not self.closed else 0

    def unsent(self) -> int:
        """Bytes written that the peer has not received yet (our queue and the kernel's)."""
        tr = self.transport
        if tr is None or self.closed:
            return 0
        n = tr.get_write_buffer_size()
        sock = tr.get_extra_info("socket")
        if sock is not None:
            try:  # TIOCOUTQ (SIOCOUTQ): sent but not yet acknowledged by the peer
                n += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ,
                                                    b"\0" * 4))[0]
            except (OSError, ValueError):
                pass
        return n

    def pause(self) -> None:
        """Stop reading (a download limit)."""
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        """Read again."""
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def abort(self, reason: str) -> None:
        """Drop the connection now; the handler hears :meth:`ConnectionHandler.lost` once."""
        if self.closed:
            return
        self.close_reason = reason
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        if self._handler is not None:
            self._handler.lost(reason)
