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
import contextlib
import fcntl
import os
import struct
import termios
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import RemoteProtocolError
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
        # reading the socket ourselves (read_directly): its duplicate descriptor, the
        # read, and whether reading is paused (a download limit)
        self._dfd = -1
        self._read: Callable[[int], int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._paused = False

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
        self._stop_direct()
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
        if self.transport is not None and not self.closed and not self._paused:
            self._paused = True
            if self._loop is not None and self._dfd >= 0:
                self._loop.remove_reader(self._dfd)
            else:
                self.transport.pause_reading()

    def resume(self) -> None:
        """Read again."""
        if self.transport is not None and not self.closed and self._paused:
            self._paused = False
            if self._loop is not None and self._dfd >= 0:
                self._loop.add_reader(self._dfd, self._readable)
            else:
                self.transport.resume_reading()

    # -- reading the socket ourselves -----------------------------------------------
    def read_directly(self, read: Callable[[int], int]) -> bool:
        """From now on ``read(fd)`` reads the socket, not the transport (which still writes).

        ``read`` returns the bytes read into the handler's buffer (or elsewhere:
        :meth:`~torrent.wire.peer.PeerProtocol.read_from` puts predicted blocks
        straight into their slots), 0 at the end of the stream, -1 when there was
        nothing; the handler hears :meth:`ConnectionHandler.data_received` after
        each read that brought bytes. The transport's reading is paused for good,
        and the loop watches a duplicate of the socket's descriptor (it refuses
        to watch one a transport owns), closed with the connection.

        Returns:
            False where the transport has no socket to read (nothing changed).
        """
        tr = self.transport
        if tr is None or self.closed or self._dfd >= 0:
            return False
        sock = tr.get_extra_info("socket")
        if sock is None:
            return False
        try:
            fd = os.dup(sock.fileno())  # (not inheritable: os.dup sets close-on-exec)
        except OSError:
            return False
        tr.pause_reading()
        self._dfd = fd
        self._read = read
        self._loop = asyncio.get_running_loop()
        if not self._paused:
            self._loop.add_reader(fd, self._readable)
        return True

    def _readable(self) -> None:
        if self.closed or self._read is None:
            return
        try:
            n = self._read(self._dfd)
        except RemoteProtocolError as e:
            self.abort(f"protocol error: {e}")
            return
        except OSError as e:
            self.remote_closed = True
            self.abort(f"connection lost: {e.strerror or e}")
            return
        if n == 0:
            self.remote_closed = True
            self.abort("closed by peer")
        elif n > 0 and not self.closed:
            self._handler.data_received()  # type: ignore[union-attr]

    def _stop_direct(self) -> None:
        fd, self._dfd = self._dfd, -1
        if fd >= 0:
            if not self._paused and self._loop is not None:
                with contextlib.suppress(RuntimeError, ValueError):  # (a loop closed)
                    self._loop.remove_reader(fd)
            os.close(fd)

    def abort(self, reason: str) -> None:
        """Drop the connection now; the handler hears :meth:`ConnectionHandler.lost` once."""
        if self.closed:
            return
        self.close_reason = reason
        self.closed = True
        self._stop_direct()
        if self.transport is not None:
            self.transport.abort()
        if self._handler is not None:
            self._handler.lost(reason)
