"""A process's end of the coordinator <-> worker control connection, inside an event loop.

Theory of operation
-------------------
Before their loops run, the coordinator and a worker talk over a plain
:class:`multiprocessing.connection.Connection` (blocking): the config, the
arena's memfd and the connections a magnet's fetch hands over
(``SCM_RIGHTS``). Once a loop watches the connection, its descriptor is
non-blocking (libuv's poll handle sets ``O_NONBLOCK``), and the
``Connection`` methods are no longer safe there: ``Connection.send`` writes
a message over 16 KiB as two writes, so the reader could see the length
before the body and ``recv`` failed with ``EAGAIN`` mid-message (measured:
a download of 16 KiB pieces lost its workers so, to one ``Durable`` of
thousands of pieces); and a ``send`` into a full buffer failed the same way,
leaving half a message on the wire.

A :class:`Channel` keeps the same framing (a 4-byte big-endian length, or
``-1`` and an 8-byte one, then the pickle), so either end may still be a
``Connection``, and never blocks: :meth:`Channel.receive` reads what is
there and returns the messages complete so far; :meth:`Channel.send` writes
what the kernel takes and queues the rest, written as the descriptor turns
writable. :meth:`Channel.flush` writes the queue out, blocking, for the end
of a process. A message over :data:`MAX_MESSAGE` bytes is a broken channel
(both ends are ours; this is a bug, not an attack, but the bound keeps a
corrupt length from taking the memory).

**Descriptors.** ``send(msg, fd=FD)`` passes a copy of a descriptor with
the message (``SCM_RIGHTS``: a connection a magnet's fetch hands over to a
worker whose loop already runs). The descriptor goes with the message's
first byte: a write never carries bytes of a later message that has a
descriptor of its own, and the kernel delivers a descriptor with the read
that returns the first byte it came with and never merges two such writes
into one read. Every read is a ``recvmsg``, so the receiver's descriptors
queue in order (:meth:`Channel.take_fd`) and a message is only returned once
its last byte is in, by when its descriptor is queued.
"""

from __future__ import annotations

import array
import asyncio
import os
import pickle
import socket
import struct
from collections import deque
from typing import Any, Final

__all__ = ["MAX_MESSAGE", "Channel"]

#: The largest message read (bytes). The biggest a run sends are a worker's
#: availability bitfield (pieces / 8: 2 MiB for 2^24 pieces) and batches of
#: piece indices (a second of 16 KiB pieces is thousands); 64 MiB is far above.
MAX_MESSAGE: Final = 64 << 20

#: Bytes read per ``read`` call.
_READ_SIZE: Final = 1 << 20
#: Descriptors one read may bring (the kernel gives one message's at a time).
MAX_FDS_PER_READ: Final = 4
#: Descriptors received and not taken yet, at most: beyond, the channel is
#: broken (both ends are ours; a bug, not an attack).
MAX_QUEUED_FDS: Final = 1024
_CMSG_SPACE: Final = socket.CMSG_SPACE(MAX_FDS_PER_READ * 4)

_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")


class Channel:
    """Messages over a control connection's descriptor, never blocking (see the module
    docstring).

    Args:
        fd: the connection's descriptor (still owned by its ``Connection``).
        loop: the loop that watches it; :meth:`send` registers a writer there
            while a queue is left.
    """

    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        self.fd = fd
        self.loop = loop
        self._in = bytearray()
        self._out = bytearray()
        # descriptors to send: (bytes of _out before the message they go with, fd);
        # each is a duplicate, closed once sent
        self._out_fds: deque[tuple[int, int]] = deque()
        self._fds: deque[int] = deque()  # received, not taken yet
        self._writing = False
        #: the other end closed the connection (after the messages before it)
        self.eof = False
        #: a write failed (the other end is gone): nothing more is sent
        self.broken = False
        os.set_blocking(fd, False)

    # -- sending ----------------------------------------------------------------
    def send(self, msg: Any, *, fd: int | None = None) -> None:
        """Queue ``msg`` and write what the kernel takes now.

        Args:
            fd: a descriptor to pass with the message (a copy is sent; the
                caller keeps and closes its own). The other end takes it with
                :meth:`take_fd` when it reads the message.

        Raises:
            BrokenPipeError: the channel is broken (a write failed).
        """
        if self.broken:
            raise BrokenPipeError("the control connection is closed")
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        n = len(data)
        head = _SHORT.pack(n) if n <= 0x7FFFFFFF else _SHORT.pack(-1) + _LONG.pack(n)
        if fd is not None:
            self._out_fds.append((len(self._out), os.dup(fd)))
        self._out += head
        self._out += data
        if not self._writing:
            self._write()
            if self._out and not self.broken:
                self._writing = True
                self.loop.add_writer(self.fd, self._writable)

    def _write(self) -> None:
        """Write from the queue until it is empty or the kernel takes no more."""
        while self._out:
            try:
                n = self._write_some()
            except BlockingIOError:
                return
            except OSError:
                self._break()
                return
            del self._out[:n]
            if self._out_fds:
                self._out_fds = deque((at - n, fd) for at, fd in self._out_fds)

    def _write_some(self) -> int:
        """One write: up to the next message with a descriptor, or that message with it."""
        fds = self._out_fds
        if not fds:
            return os.write(self.fd, self._out)
        at, fd = fds[0]
        if at > 0:
            return os.write(self.fd, memoryview(self._out)[:at])
        end = fds[1][0] if len(fds) > 1 else len(self._out)
        sock = self._socket()
        try:
            n = sock.sendmsg([memoryview(self._out)[:end]],
                             [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
        finally:
            sock.detach()
        fds.popleft()
        os.close(fd)  # the kernel holds its own reference now
        return n

    def _socket(self) -> socket.socket:
        """A socket object over our descriptor, for one call (``detach`` it after: the
        descriptor stays the ``Connection``'s, and no duplicate keeps the connection
        open past its owner's ``close``)."""
        return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, self.fd)

    def _break(self) -> None:
        self.broken = True
        self._out.clear()
        while self._out_fds:
            os.close(self._out_fds.popleft()[1])

    def _writable(self) -> None:
        self._write()
        if not self._out or self.broken:
            self._writing = False
            self.loop.remove_writer(self.fd)

    @property
    def pending(self) -> int:
        """Bytes queued, not yet written."""
        return len(self._out)

    def flush(self) -> None:
        """Write the whole queue, blocking (the end of a process); the descriptor stays
        blocking after, for a plain ``Connection`` to go on with."""
        if self._writing:
            self._writing = False
            self.loop.remove_writer(self.fd)
        os.set_blocking(self.fd, True)
        try:
            while self._out:
                n = self._write_some()
                del self._out[:n]
                if self._out_fds:
                    self._out_fds = deque((at - n, fd) for at, fd in self._out_fds)
        except OSError:
            self._break()

    # -- receiving --------------------------------------------------------------
    def receive(self) -> list[Any]:
        """The messages complete so far, in order (reads what the descriptor has).

        At EOF, :attr:`eof` is set (after the messages before it are returned).

        Raises:
            OSError: reading failed, or a message is over :data:`MAX_MESSAGE`
                (the channel cannot go on).
        """
        while not self.eof:
            sock = self._socket()
            try:
                chunk, anc, _flags, _addr = sock.recvmsg(_READ_SIZE, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            finally:
                sock.detach()
            for level, kind, body in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    got = array.array("i")
                    got.frombytes(body[: len(body) - len(body) % got.itemsize])
                    for fd in got:
                        os.set_inheritable(fd, False)
                        self._fds.append(fd)
            if len(self._fds) > MAX_QUEUED_FDS:
                raise OSError(f"{len(self._fds)} descriptors received and not taken "
                              f"(at most {MAX_QUEUED_FDS})")
            if not chunk:
                self.eof = True
                break
            self._in += chunk
            if len(chunk) < _READ_SIZE and not anc:
                break
        out: list[Any] = []
        buf = self._in
        pos = 0
        while len(buf) - pos >= 4:
            (n,) = _SHORT.unpack_from(buf, pos)
            head = 4
            if n == -1:
                if len(buf) - pos < 12:
                    break
                (n,) = _LONG.unpack_from(buf, pos + 4)
                head = 12
            if n < 0 or n > MAX_MESSAGE:
                raise OSError(f"control message of {n} bytes (at most {MAX_MESSAGE})")
            if len(buf) - pos < head + n:
                break
            out.append(pickle.loads(buf[pos + head : pos + head + n]))
            pos += head + n
        if pos:
            del buf[:pos]
        return out

    def take_fd(self) -> int:
        """The next descriptor received (close-on-exec; the caller owns it).

        Call it for each message sent with a descriptor, when that message is read.

        Raises:
            OSError: none was received (the other end sent the message without one).
        """
        if not self._fds:
            raise OSError("expected a descriptor on the control connection")
        return self._fds.popleft()

    def close(self) -> None:
        """Close the descriptors received and not taken, and unsent ones (the
        connection's own descriptor stays its owner's). Twice is harmless."""
        while self._fds:
            os.close(self._fds.popleft())
        while self._out_fds:
            os.close(self._out_fds.popleft()[1])
