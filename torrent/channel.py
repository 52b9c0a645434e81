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
"""

from __future__ import annotations

import asyncio
import os
import pickle
import struct
from typing import Any, Final

__all__ = ["MAX_MESSAGE", "Channel"]

#: The largest message read (bytes). The biggest a run sends are a worker's
#: availability bitfield (pieces / 8: 2 MiB for 2^24 pieces) and batches of
#: piece indices (a second of 16 KiB pieces is thousands); 64 MiB is far above.
MAX_MESSAGE: Final = 64 << 20

#: Bytes read per ``read`` call.
_READ_SIZE: Final = 1 << 20

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
        self._writing = False
        #: the other end closed the connection (after the messages before it)
        self.eof = False
        #: a write failed (the other end is gone): nothing more is sent
        self.broken = False
        os.set_blocking(fd, False)

    # -- sending ----------------------------------------------------------------
    def send(self, msg: Any) -> None:
        """Queue ``msg`` and write what the kernel takes now.

        Raises:
            BrokenPipeError: the channel is broken (a write failed).
        """
        if self.broken:
            raise BrokenPipeError("the control connection is closed")
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        n = len(data)
        head = _SHORT.pack(n) if n <= 0x7FFFFFFF else _SHORT.pack(-1) + _LONG.pack(n)
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
                n = os.write(self.fd, self._out)
            except BlockingIOError:
                return
            except OSError:
                self.broken = True
                self._out.clear()
                return
            del self._out[:n]

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
                del self._out[:os.write(self.fd, self._out)]
        except OSError:
            self.broken = True
            self._out.clear()

    # -- receiving --------------------------------------------------------------
    def receive(self) -> list[Any]:
        """The messages complete so far, in order (reads what the descriptor has).

        At EOF, :attr:`eof` is set (after the messages before it are returned).

        Raises:
            OSError: reading failed, or a message is over :data:`MAX_MESSAGE`
                (the channel cannot go on).
        """
        while not self.eof:
            try:
                chunk = os.read(self.fd, _READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            if not chunk:
                self.eof = True
                break
            self._in += chunk
            if len(chunk) < _READ_SIZE:
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
