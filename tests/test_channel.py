"""torrent.channel: the control connection inside an event loop, never blocking.

One end is a :class:`~torrent.channel.Channel` on a loop, the other a plain
``multiprocessing`` ``Connection`` (as the coordinator and a worker are
before their loops run): the framing is the same both ways. Messages larger
than the socket buffer go through in parts, a message seen in parts is
held until whole, and EOF, a broken peer and a corrupt length end the
channel cleanly. A socketpair's ``sendall`` has queued its bytes at the
other end when it returns, so ``receive`` is called right after, without
waiting.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import struct
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest

from torrent.channel import MAX_MESSAGE, Channel

pytestmark = pytest.mark.timeout(60)

#: Every wait in these tests ends well within this (seconds).
BOUND = 20.0


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, Connection]]:
    a, b = socket.socketpair()
    conn = Connection(b.detach())
    try:
        yield a, conn
    finally:
        a.close()
        conn.close()


def run(coro: object) -> object:
    return asyncio.run(asyncio.wait_for(coro, BOUND))  # type: ignore[arg-type]


def test_messages_both_ways_including_ones_larger_than_the_socket_buffer(
        pair: tuple[socket.socket, Connection]) -> None:
    sock, conn = pair
    sizes = [0, 10, 16 * 1024 + 1, 300_000, 3_000_000]  # the last: many buffers full
    sent = [bytes([k]) * n for k, n in enumerate(sizes)]

    def peer() -> None:  # the plain Connection end: echoes what it reads, blocking
        for _ in sizes:
            conn.send(("echo", conn.recv()))

    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        ch = Channel(sock.fileno(), loop)
        got: list[object] = []
        done = asyncio.Event()

        def readable() -> None:
            got.extend(ch.receive())
            if len(got) == len(sizes) or ch.eof:
                done.set()

        loop.add_reader(sock.fileno(), readable)
        for msg in sent:
            ch.send(msg)  # never blocks: what the kernel does not take is queued
        assert ch.pending > 0  # 3 MB did not fit at once
        await done.wait()
        loop.remove_reader(sock.fileno())
        assert ch.pending == 0 and not ch.broken
        return got

    t = threading.Thread(target=peer)
    t.start()
    got = run(main())
    t.join(BOUND)
    assert got == [("echo", m) for m in sent]


def test_a_message_in_parts_is_held_until_whole(pair: tuple[socket.socket, Connection]) -> None:
    sock, conn = pair
    data = pickle.dumps({"x": b"y" * 50_000}, protocol=pickle.HIGHEST_PROTOCOL)
    frame = struct.pack("!i", len(data)) + data
    writer = socket.socket(fileno=os.dup(conn.fileno()))

    async def main() -> None:
        ch = Channel(sock.fileno(), asyncio.get_running_loop())
        for part in (frame[:2], frame[2:4], frame[4:-1]):  # half the length, the rest...
            writer.sendall(part)
            assert ch.receive() == []  # ...and every body but the last byte: nothing yet
        writer.sendall(frame[-1:] + frame)  # the last byte, and a second copy whole
        assert ch.receive() == [{"x": b"y" * 50_000}] * 2

    try:
        run(main())
    finally:
        writer.close()


def test_the_long_length_form_is_read(pair: tuple[socket.socket, Connection]) -> None:
    sock, conn = pair
    data = pickle.dumps("long form")
    writer = socket.socket(fileno=os.dup(conn.fileno()))

    async def main() -> None:
        ch = Channel(sock.fileno(), asyncio.get_running_loop())
        writer.sendall(struct.pack("!i", -1) + struct.pack("!Q", len(data)) + data)
        assert ch.receive() == ["long form"]

    try:
        run(main())
    finally:
        writer.close()


def test_eof_comes_after_the_messages_before_it(pair: tuple[socket.socket, Connection]) -> None:
    sock, conn = pair
    conn.send("last words")
    conn.close()

    async def main() -> None:
        ch = Channel(sock.fileno(), asyncio.get_running_loop())
        got = ch.receive()
        if not ch.eof:  # (a read that filled nothing more: EOF shows on the next)
            got += ch.receive()
        assert got == ["last words"] and ch.eof
        assert ch.receive() == []  # and stays so

    run(main())


def test_a_length_over_the_bound_is_an_error(pair: tuple[socket.socket, Connection]) -> None:
    sock, conn = pair
    writer = socket.socket(fileno=os.dup(conn.fileno()))

    async def main() -> None:
        ch = Channel(sock.fileno(), asyncio.get_running_loop())
        writer.sendall(struct.pack("!i", -1) + struct.pack("!Q", MAX_MESSAGE + 1))
        with pytest.raises(OSError, match="control message"):
            ch.receive()

    try:
        run(main())
    finally:
        writer.close()


def test_a_gone_peer_breaks_the_channel_and_flush_blocks_for_the_rest(
        pair: tuple[socket.socket, Connection]) -> None:
    sock, conn = pair

    async def main() -> None:
        ch = Channel(sock.fileno(), asyncio.get_running_loop())
        ch.send(b"z" * 3_000_000)  # more than the buffers hold: a queue is left
        assert ch.pending > 0
        reader = threading.Thread(target=conn.recv)
        reader.start()
        ch.flush()  # blocking until the reader took it all
        reader.join(BOUND)
        assert ch.pending == 0 and not ch.broken and os.get_blocking(sock.fileno())
        os.set_blocking(sock.fileno(), False)
        conn.close()
        ch.send("to nobody")  # EPIPE: the channel is broken, nothing raised here
        assert ch.broken
        with pytest.raises(BrokenPipeError):
            ch.send("again")

    run(main())


def test_the_coordinator_keeps_a_worker_whose_message_arrives_in_two_parts() -> None:
    # An Availability of a 262,144-piece torrent (64 GiB of 256 KiB pieces) is 32 KiB:
    # Connection.send writes it as two writes, and the coordinator read it between them.
    from types import SimpleNamespace

    from torrent import ipc
    from torrent.coordinator import Coordinator, WorkerHandle
    from torrent.options import Options

    pieces = 262_144
    meta = SimpleNamespace(num_pieces=pieces, piece_length=256 << 10,
                           total_size=pieces * (256 << 10), info_hash=b"\1" * 20,
                           info_hash_hex="01" * 20, trackers=(), private=False, files=())
    c = Coordinator(meta, "/nonexistent", Options(workers=1, stall_timeout=0,
                                                  use_trackers=False))
    ours, theirs = socket.socketpair()
    h = WorkerHandle(0, SimpleNamespace(exitcode=None), Connection(ours.detach()))
    c.workers = [h]
    body = pickle.dumps(ipc.Availability(b"\xff" * (pieces // 8)))
    raw = struct.pack("!i", len(body)) + body
    theirs.sendall(raw[:1000])  # the length and a little: the rest comes later

    async def main() -> None:
        h.channel = Channel(h.conn.fileno(), asyncio.get_running_loop())  # as Coordinator.run
        c.on_worker_message(h)  # what the loop calls when the first part is readable
        assert h.alive and not c.leases.workers[0].has(0)  # nothing yet, and still alive
        theirs.sendall(raw[1000:])
        c.on_worker_message(h)  # and when the rest is

    try:
        run(main())
        assert h.alive and not c.warnings
        assert c.leases.workers[0].has(0) and c.leases.workers[0].has(pieces - 1)
    finally:
        h.conn.close()
        theirs.close()


def test_descriptors_travel_with_their_messages_through_a_full_buffer() -> None:
    """Messages with and without a descriptor, queued behind a full buffer: each
    descriptor is taken when its message is read, in order, and is the file sent."""
    a, b = socket.socketpair()
    files = []
    try:
        for k in range(3):
            r, w = os.pipe()
            os.write(w, f"file {k}".encode())
            os.close(w)
            files.append(r)

        async def main() -> list[tuple[object, bytes | None]]:
            loop = asyncio.get_running_loop()
            tx = Channel(a.fileno(), loop)
            rx = Channel(b.fileno(), loop)
            big = b"x" * 3_000_000  # fills the socket buffer: the rest queues
            tx.send(("big", big))
            tx.send(("fd", 0), fd=files[0])
            tx.send(("plain", 1))
            tx.send(("fd", 1), fd=files[1])
            tx.send(("fd", 2), fd=files[2])
            assert tx.pending, "the buffer should be full, the descriptors queued"
            got: list[tuple[object, bytes | None]] = []
            deadline = loop.time() + BOUND
            while len(got) < 5 and loop.time() < deadline:
                for msg in rx.receive():
                    if msg[0] == "fd":
                        fd = rx.take_fd()
                        got.append((msg, os.read(fd, 100)))
                        os.close(fd)
                    else:
                        got.append((msg[0], None))
                await asyncio.sleep(0)
            with pytest.raises(OSError, match="expected a descriptor"):
                rx.take_fd()  # none left over
            tx.close()
            rx.close()
            return got

        got = run(main())
        assert got == [("big", None), (("fd", 0), b"file 0"), ("plain", None),
                       (("fd", 1), b"file 1"), (("fd", 2), b"file 2")]
    finally:
        for fd in files:
            os.close(fd)  # the sender's own copies stay the caller's
        a.close()
        b.close()
