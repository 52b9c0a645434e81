"""``PeerConn.read_directly``: the socket read by the connection's own reader, on uvloop.

A real loopback TCP connection, the accepting side a :class:`PeerConn`: once it
reads directly, the transport reads nothing more, its writes still go out,
a download limit's pause and resume add and remove the loop's reader, and
every way the connection ends (the peer closes, a failed read, a protocol
error, our abort) closes the socket's duplicate descriptor too.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from typing import Any

import pytest
import uvloop

from torrent import _speedups as _k
from torrent.errors import RemoteProtocolError
from torrent.net.peer import PeerConn
from torrent.wire.framing import ReceiveBuffer

pytestmark = pytest.mark.timeout(60)

#: Bound on each wait for an event of the connection (seconds).
WAIT = 10.0


class Handler:
    """The connection's owner: a receive buffer and what happened to it."""

    def __init__(self) -> None:
        self.rb = ReceiveBuffer(1 << 16)
        self.reads = 0
        self.event = asyncio.Event()
        self.lost_reason: str | None = None
        self.fail: Exception | None = None

    def read(self, fd: int) -> int:
        """A plain read through the kernel (nothing predicted), as ``read_from`` does."""
        if self.fail is not None:
            raise self.fail
        room = len(self.rb.get_buffer())
        start, end, n, _taken = _k.recv_blocks(fd, self.rb.buf, self.rb.start, self.rb.end,
                                               {}, {}, None, [])
        if n > 0:
            self.rb.read_done(start, end, n, n == room)
            self.reads += 1
        return n

    def data_received(self) -> None:
        self.event.set()

    def writable(self) -> None:
        pass

    def lost(self, reason: str) -> None:
        self.lost_reason = reason
        self.event.set()

    def received(self) -> bytes:
        return bytes(self.rb.view[self.rb.start : self.rb.end])


async def until(cond: Callable[[], bool], h: Handler) -> None:
    """Wait for ``cond``, woken by the handler's events (bounded by WAIT)."""
    async with asyncio.timeout(WAIT):
        while not cond():
            h.event.clear()
            if cond():
                return
            await h.event.wait()


def run(body: Callable[[PeerConn, Handler, socket.socket], Any]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        h = Handler()
        got: asyncio.Future[PeerConn] = loop.create_future()

        def accept(conn: PeerConn) -> Handler:
            got.set_result(conn)
            return h

        server = await loop.create_server(lambda: PeerConn(accept), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        try:
            conn = await asyncio.wait_for(got, WAIT)
            await body(conn, h, client)
        finally:
            client.close()
            server.close()

    uvloop.run(main())


def fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_reads_go_through_the_reader_and_writes_through_the_transport() -> None:
    async def body(conn: PeerConn, h: Handler, client: socket.socket) -> None:
        client.sendall(b"before")
        await until(lambda: h.received() == b"before", h)  # the transport's read
        assert h.reads == 0
        assert conn.read_directly(h.read)
        assert not conn.read_directly(h.read)  # once
        client.sendall(b"-after")
        await until(lambda: h.received() == b"before-after", h)
        assert h.reads >= 1 and h.rb.received == len(b"before-after")
        conn.write(b"reply")
        assert client.recv(5) == b"reply"

    run(body)


class Watch:
    """The loop as the connection uses it, recording which descriptors it watches."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.watched: set[int] = set()

    def add_reader(self, fd: int, cb: Callable[[], None]) -> None:
        self.watched.add(fd)
        self.loop.add_reader(fd, cb)

    def remove_reader(self, fd: int) -> None:
        self.watched.discard(fd)
        self.loop.remove_reader(fd)


def test_a_pause_removes_the_reader_and_a_resume_adds_it() -> None:
    async def body(conn: PeerConn, h: Handler, client: socket.socket) -> None:
        assert conn.read_directly(h.read)
        dfd = conn._dfd
        watch = Watch(asyncio.get_running_loop())
        watch.watched.add(dfd)
        conn._loop = watch  # type: ignore[assignment]
        conn.pause()
        assert dfd not in watch.watched
        conn.pause()  # (twice: no change)
        client.sendall(b"held")
        conn.resume()
        assert dfd in watch.watched
        await until(lambda: h.received() == b"held", h)
        conn.pause()
        conn.abort("done")  # paused: the reader was removed already; the descriptor closes
        assert dfd not in watch.watched and not fd_open(dfd)

    run(body)


@pytest.mark.parametrize("how", ["peer closes", "read fails", "protocol error", "we abort"])
def test_every_end_closes_the_duplicate_descriptor(how: str) -> None:
    async def body(conn: PeerConn, h: Handler, client: socket.socket) -> None:
        assert conn.read_directly(h.read)
        dfd = conn._dfd
        assert fd_open(dfd)
        if how == "peer closes":
            client.close()
        elif how == "read fails":
            h.fail = OSError(104, "Connection reset by peer")
            client.sendall(b"x")
        elif how == "protocol error":
            h.fail = RemoteProtocolError("no receive memory left")
            client.sendall(b"x")
        else:
            conn.abort("done with it")
        await until(lambda: h.lost_reason is not None, h)
        assert conn.closed and conn._dfd == -1
        assert not fd_open(dfd)
        expected = {"peer closes": "closed by peer",
                    "read fails": "connection lost: Connection reset by peer",
                    "protocol error": "protocol error: no receive memory left",
                    "we abort": "done with it"}[how]
        assert h.lost_reason == expected
        assert conn.remote_closed == (how in ("peer closes", "read fails"))
        if how != "peer closes":
            client.settimeout(WAIT)
            # the connection itself is gone (read off the loop, which closes it): the end
            # of the stream here, or a reset where bytes were left unread
            try:
                assert await asyncio.to_thread(client.recv, 1) == b""
            except ConnectionResetError:
                pass

    run(body)
