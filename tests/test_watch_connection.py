"""Control connections on uvloop: a message split across two writes is read whole.

uvloop's ``add_reader`` makes a descriptor non-blocking; a ``Connection``
writes a message of over 16 KiB as two ``send`` calls, and a non-blocking
read between them failed with ``EAGAIN`` mid-message, which the coordinator
took for the worker's death (and a worker for the coordinator's).
``launch.watch_connection`` keeps the descriptor blocking.  Here the first
part of a 32 KiB message (an ``Availability`` of a 262,144-piece torrent:
64 GiB of 256 KiB pieces) is in the socket when the reader runs, and the
rest comes later from a thread.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import struct
import threading
import time
from multiprocessing.connection import Connection
from types import SimpleNamespace
from typing import Any

from conftest import require_module

from torrent import ipc
from torrent.coordinator import Coordinator, WorkerHandle
from torrent.launch import watch_connection
from torrent.options import Options

PIECES = 262_144
#: How long the rest of the message takes to come (the reader must wait for it).
LATE = 0.2


def split_message(msg: Any) -> tuple[bytes, bytes]:
    """``msg`` as a Connection frames it (length header, pickle), cut after 1,000 bytes."""
    body = pickle.dumps(msg)
    raw = struct.pack("!i", len(body)) + body
    return raw[:1000], raw[1000:]


def send_late(sock: socket.socket, data: bytes) -> threading.Thread:
    def run() -> None:
        time.sleep(LATE)  # makes the old, non-blocking read fail; never needed to pass
        sock.sendall(data)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def test_a_split_message_is_read_whole_on_uvloop() -> None:
    uvloop = require_module("uvloop")
    ours, theirs = socket.socketpair()
    conn = Connection(ours.detach())
    msg = ipc.Availability(b"\xff" * (PIECES // 8))
    first, rest = split_message(msg)
    theirs.sendall(first)
    got: list[Any] = []
    errors: list[BaseException] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def readable() -> None:
            try:
                while conn.poll():
                    got.append(conn.recv())
            except (EOFError, OSError) as e:
                errors.append(e)
            done.set()

        watch_connection(loop, conn, readable)
        assert os.get_blocking(conn.fileno())
        th = send_late(theirs, rest)
        await asyncio.wait_for(done.wait(), 30)
        loop.remove_reader(conn.fileno())
        th.join(30)

    uvloop.run(main())
    conn.close()
    theirs.close()
    assert errors == [] and got == [msg]


def test_the_coordinator_keeps_a_worker_whose_availability_arrives_in_two_parts() -> None:
    uvloop = require_module("uvloop")
    meta = SimpleNamespace(num_pieces=PIECES, piece_length=256 << 10,
                           total_size=PIECES * (256 << 10), info_hash=b"\1" * 20,
                           info_hash_hex="01" * 20, trackers=(), private=False)
    c = Coordinator(meta, "/nonexistent", Options(workers=1, stall_timeout=0,
                                                  use_trackers=False))
    ours, theirs = socket.socketpair()
    h = WorkerHandle(0, SimpleNamespace(exitcode=None), Connection(ours.detach()))
    c.workers = [h]
    first, rest = split_message(ipc.Availability(b"\xff" * (PIECES // 8)))
    theirs.sendall(first)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        watch_connection(loop, h.conn, c.on_worker_message, h)  # as Coordinator.run
        th = send_late(theirs, rest)
        for _ in range(3000):  # at most 30 s
            await asyncio.sleep(0.01)
            if not h.alive or (not th.is_alive() and c.leases.workers[0].has(PIECES - 1)):
                break
        loop.remove_reader(h.conn.fileno())

    uvloop.run(main())
    assert h.alive and not c.warnings
    assert c.leases.workers[0].has(0) and c.leases.workers[0].has(PIECES - 1)
    h.conn.close()
    theirs.close()
