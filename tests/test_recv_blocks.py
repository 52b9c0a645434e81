"""Blocks read straight into their slots (``recv_blocks``): the same outcome as a plain
read followed by ``take_blocks``, whatever the peer sends and however the reads cut it.

Each test runs on the compiled kernel and on its pure twin (each with its own
``BlockMap``), over a real socket pair (``readv`` on a non-blocking socket).
"""

from __future__ import annotations

import os
import random
import socket
import struct
from collections.abc import Iterator
from types import ModuleType

import pytest

from torrent import _fast, _pure
from torrent import picker as picker_mod
from torrent.picker import BLOCK_SIZE, Picker, Slot

KERNEL: ModuleType = _fast


@pytest.fixture(autouse=True, params=["native", "pure"])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Run each test on one implementation; the picker's slots get its BlockMap."""
    global KERNEL
    k = _fast if request.param == "native" else _pure
    monkeypatch.setattr(picker_mod, "_k", k)
    monkeypatch.setattr(__import__(__name__), "KERNEL", k)
    return k


PIECE = 4 * BLOCK_SIZE
HAVE = struct.pack(">IBI", 5, 4, 1)
KEEPALIVE = b"\0\0\0\0"


def frame(index: int, begin: int, data: bytes) -> bytes:
    return struct.pack(">IBII", 9 + len(data), 7, index, begin) + data


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


class Setup:
    """A picker with ``pieces`` pieces in flight to peer ``a``, every block requested of it
    (the request table in the order the requests went out)."""

    def __init__(self, pieces: int = 3, total: int | None = None, seed: int = 1) -> None:
        total = pieces * PIECE if total is None else total
        self.picker = Picker(-(-total // PIECE), PIECE, total)
        self.picker.add_lease(range(self.picker.num_pieces))
        self.a, self.b = object(), object()

        def alloc(i: int) -> Slot:
            return Slot(memoryview(bytearray(PIECE)),
                        -(-self.picker.piece_size(i) // BLOCK_SIZE))

        self.reqs = self.picker.pick(self.a, lambda i: True, 1000, alloc)
        self.table = {(i, b): (ln, 0.0) for i, b, ln in self.reqs}
        self.data = random.Random(seed).randbytes(total)
        self.full: list = []

    def block(self, i: int, begin: int) -> bytes:
        start = i * PIECE + begin
        return frame(i, begin, self.data[start : start + self.picker.piece_size(i) - begin]
                     [:BLOCK_SIZE])

    def in_order(self) -> bytes:
        return b"".join(self.block(i, b) for i, b, _ln in self.reqs)

    def taken(self) -> dict[tuple[int, int], bytes]:
        """Every block marked received, with its bytes in the slot."""
        out = {}
        for i, pd in self.picker.active.items():
            for b in range(pd.slot.blocks.nblocks):
                if pd.slot.blocks.has(b):
                    ln = min(BLOCK_SIZE, pd.size - b * BLOCK_SIZE)
                    out[(i, b)] = bytes(pd.slot.view[b * BLOCK_SIZE : b * BLOCK_SIZE + ln])
        return out


class Reader:
    """A connection's receive side as the worker drives it: a read, then the framer
    (``take_blocks``, then each other whole message to the slow path, here a list)."""

    def __init__(self, s: Setup, size: int) -> None:
        self.s = s
        self.buf = bytearray(size)
        self.start = self.end = 0
        self.taken = 0
        self.others: list[bytes] = []
        self.reads = 0

    def frame_all(self) -> None:
        s, buf = self.s, self.buf
        while True:
            pos, t = KERNEL.take_blocks(buf, self.start, self.end, s.table, s.picker.active,
                                        s.a, s.full)
            self.start, self.taken = pos, self.taken + t
            if t:
                continue  # (it stops after a block that completes a piece)
            if self.end - self.start >= 4:
                n = struct.unpack_from(">I", buf, self.start)[0]
                if self.end - self.start >= 4 + n:
                    self.others.append(bytes(buf[self.start : self.start + 4 + n]))
                    self.start += 4 + n
                    continue
            return

    def read_all(self, sock: socket.socket) -> int:
        """Read until the socket has nothing; returns the last ``nread`` (0 or -1)."""
        while True:
            if self.start == self.end:
                self.start = self.end = 0
            elif self.start:
                n = self.end - self.start
                self.buf[:n] = self.buf[self.start : self.end]
                self.start, self.end = 0, n
            s = self.s
            self.start, self.end, n, t = KERNEL.recv_blocks(
                sock.fileno(), self.buf, self.start, self.end, s.table, s.picker.active, s.a,
                s.full)
            self.reads += 1
            if n <= 0:
                return n
            self.taken += t
            self.frame_all()


def reference(stream: bytes, **kw: int) -> tuple[Setup, Reader]:
    """The same stream read whole into the buffer and framed (no prediction)."""
    s = Setup(**kw)
    r = Reader(s, len(stream) + 1)
    r.buf[: len(stream)] = stream
    r.end = len(stream)
    r.frame_all()
    return s, r


def drive(pair: tuple[socket.socket, socket.socket], stream: bytes, chunks: list[int],
          size: int, **kw: int) -> tuple[Setup, Reader]:
    a, b = pair
    s = Setup(**kw)
    r = Reader(s, size)
    pos = 0
    for c in chunks:
        b.sendall(stream[pos : pos + c])
        pos += c
        assert r.read_all(a) == -1
    assert pos == len(stream)
    return s, r


def assert_same(got: tuple[Setup, Reader], want: tuple[Setup, Reader]) -> None:
    (gs, gr), (ws, wr) = got, want
    assert gr.taken == wr.taken
    assert gs.taken() == ws.taken()
    assert gr.others == wr.others
    assert gs.table == ws.table
    assert [pd.index for pd in gs.full] == [pd.index for pd in ws.full]
    assert bytes(gr.buf[gr.start : gr.end]) == bytes(wr.buf[wr.start : wr.end])
    for i, pd in gs.picker.active.items():
        assert pd.received == ws.picker.active[i].received
        assert pd.outstanding == {b: (ws.a if h is ws.a else h)
                                  for b, h in pd.outstanding.items()}


def test_blocks_in_order_go_straight_to_their_slots(pair: tuple[socket.socket, socket.socket]
                                                   ) -> None:
    s = Setup(pieces=1)
    stream = s.in_order()
    a, b = pair
    b.sendall(stream)
    r = Reader(s, 1 << 20)
    assert r.read_all(a) == -1
    assert r.taken == 4 and r.reads == 2  # one read for all, one to find nothing more
    assert s.taken() == {(0, k): s.data[k * BLOCK_SIZE : (k + 1) * BLOCK_SIZE]
                         for k in range(4)}
    assert [pd.index for pd in s.full] == [0]
    # not one byte went through the receive buffer
    assert r.buf == bytearray(1 << 20) and r.start == r.end == 0


def test_a_block_cut_by_the_read_is_kept_in_the_buffer_then_finished_in_its_slot(
        pair: tuple[socket.socket, socket.socket]) -> None:
    s = Setup(pieces=1)
    stream = s.in_order()
    a, b = pair
    r = Reader(s, 1 << 20)
    cut = 13 + BLOCK_SIZE + 13 + 5000  # block 0, then block 1's header and 5,000 bytes
    b.sendall(stream[:cut])
    assert r.read_all(a) == -1
    assert r.taken == 1
    assert bytes(r.buf[r.start : r.end]) == stream[13 + BLOCK_SIZE : cut]  # all state here
    b.sendall(stream[cut:])
    assert r.read_all(a) == -1
    assert r.taken == 4 and r.start == r.end
    assert bytes(s.picker.active[0].slot.view) == s.data[:PIECE]


def test_an_unpredicted_message_and_all_after_it_are_framed_from_the_buffer(
        pair: tuple[socket.socket, socket.socket]) -> None:
    s = Setup(pieces=2)
    blocks = [s.block(i, b) for i, b, _ln in s.reqs]
    # a HAVE after the second block, then the rest out of order (the 4th before the 3rd)
    stream = b"".join(blocks[:2]) + HAVE + blocks[3] + blocks[2] + b"".join(blocks[4:])
    got = drive(pair, stream, [len(stream)], 1 << 20, pieces=2)
    assert_same(got, reference(stream, pieces=2))
    assert got[1].others == [HAVE]
    assert got[1].taken == 8


def test_the_block_that_completes_a_piece_ends_the_prediction(
        pair: tuple[socket.socket, socket.socket]) -> None:
    s = Setup(pieces=2)
    stream = s.in_order()
    got = drive(pair, stream, [len(stream)], 1 << 20, pieces=2)
    assert_same(got, reference(stream, pieces=2))
    gs, gr = got
    # piece 0's four blocks went to the slot; piece 1's came through the buffer
    # (the read stopped predicting at piece 0's last block)
    assert [pd.index for pd in gs.full] == [0, 1]
    assert bytes(gr.buf[: 4 * (13 + BLOCK_SIZE)]) == stream[4 * (13 + BLOCK_SIZE) :]


def test_a_late_duplicate_never_lands_in_a_block_already_received(
        pair: tuple[socket.socket, socket.socket]) -> None:
    s0 = Setup(pieces=2)
    b0 = s0.block(0, 0)
    lie = frame(0, 0, b"\xee" * BLOCK_SIZE)  # block 0 again, other bytes (not requested now)
    rest = b"".join(s0.block(i, b) for i, b, _ln in s0.reqs[1:])
    stream = b0 + lie + rest
    got = drive(pair, stream, [len(b0), len(lie) + 100, len(rest) - 100], 1 << 20, pieces=2)
    assert_same(got, reference(stream, pieces=2))
    assert got[0].taken()[(0, 0)] == s0.data[:BLOCK_SIZE]
    assert got[1].others == [lie]


def test_a_short_last_piece(pair: tuple[socket.socket, socket.socket]) -> None:
    total = PIECE + BLOCK_SIZE + 100
    s = Setup(total=total)
    stream = s.in_order()
    got = drive(pair, stream, [len(stream)], 1 << 20, total=total)
    assert_same(got, reference(stream, total=total))
    assert got[0].taken()[(1, 1)] == s.data[PIECE + BLOCK_SIZE :]


@pytest.mark.parametrize("seed", range(40))
def test_any_stream_cut_anywhere_ends_as_a_plain_read_would(
        seed: int, pair: tuple[socket.socket, socket.socket]) -> None:
    rng = random.Random(seed)
    s = Setup(pieces=3, seed=seed)
    items = [s.block(i, b) for i, b, _ln in s.reqs]
    for _ in range(rng.randrange(4)):  # answers out of order
        x, y = rng.randrange(len(items)), rng.randrange(len(items))
        items[x], items[y] = items[y], items[x]
    for _ in range(rng.randrange(4)):  # other messages between blocks
        items.insert(rng.randrange(len(items) + 1), rng.choice([HAVE, KEEPALIVE]))
    if rng.random() < 0.3:  # a block never asked for, a wrong length, a repeated block
        items.insert(rng.randrange(len(items) + 1), frame(5, 0, b"u" * BLOCK_SIZE))
        items.insert(rng.randrange(len(items) + 1), frame(1, BLOCK_SIZE, b"w" * 100))
        items.insert(rng.randrange(len(items) + 1), items[rng.randrange(len(items))])
    stream = b"".join(items)
    chunks, left = [], len(stream)
    while left:
        c = min(left, rng.choice([1, 7, 13, 14, 500, BLOCK_SIZE, BLOCK_SIZE + 13, 40000]))
        chunks.append(c)
        left -= c
    size = rng.choice([BLOCK_SIZE + 13, 3 * BLOCK_SIZE, 1 << 20])
    got = drive(pair, stream, chunks, size, pieces=3, seed=seed)
    assert_same(got, reference(stream, pieces=3, seed=seed))


def test_end_of_stream_nothing_there_and_a_failed_read(
        pair: tuple[socket.socket, socket.socket]) -> None:
    s = Setup(pieces=1)
    a, b = pair
    buf = bytearray(1 << 16)
    args = (buf, 0, 0, s.table, s.picker.active, s.a, s.full)
    assert KERNEL.recv_blocks(a.fileno(), *args) == (0, 0, -1, 0)  # nothing yet
    b.close()
    assert KERNEL.recv_blocks(a.fileno(), *args) == (0, 0, 0, 0)  # the peer closed
    r, w = os.pipe()
    os.close(w)
    os.close(r)
    with pytest.raises(OSError):
        KERNEL.recv_blocks(r, *args)  # a closed descriptor


def test_a_span_outside_the_buffer_or_no_room_is_refused(
        pair: tuple[socket.socket, socket.socket]) -> None:
    s = Setup(pieces=1)
    fd = pair[0].fileno()
    with pytest.raises(ValueError):
        KERNEL.recv_blocks(fd, bytearray(10), 0, 11, s.table, s.picker.active, s.a, s.full)
    with pytest.raises(ValueError):
        KERNEL.recv_blocks(fd, bytearray(10), 0, 10, s.table, s.picker.active, s.a, s.full)
