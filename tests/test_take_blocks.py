"""The block fast path (``take_blocks``): what it takes and where it stops.

Everything it does not take must be left exactly as it was, for the slow
path (``PeerProtocol.accept_block`` / ``Picker.store_block``) to handle.
Every test runs on the compiled kernel and on its pure twin (each with its
own ``BlockMap``).
"""

from __future__ import annotations

import os
import struct
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


def frame(index: int, begin: int, data: bytes) -> bytes:
    return struct.pack(">IBII", 9 + len(data), 7, index, begin) + data


class Setup:
    """A picker with pieces 0 and 1 in flight to peer ``a``, each block requested from it."""

    def __init__(self, total: int = 2 * PIECE) -> None:
        self.picker = Picker(-(-total // PIECE), PIECE, total)
        self.picker.add_lease(range(self.picker.num_pieces))
        self.a, self.b = object(), object()
        def alloc(i: int) -> Slot:  # a slot whose block map fits the piece, as the worker's
            return Slot(memoryview(bytearray(PIECE)), -(-self.picker.piece_size(i) // BLOCK_SIZE))

        self.reqs = self.picker.pick(self.a, lambda i: True, 100, alloc)
        self.table = {(i, b): (ln, 0.0) for i, b, ln in self.reqs}
        self.data = os.urandom(total)
        self.full: list = []

    def block(self, i: int, b: int) -> bytes:
        start = i * PIECE + b * BLOCK_SIZE
        return frame(i, b * BLOCK_SIZE, self.data[start : start + BLOCK_SIZE])

    def take(self, buf: bytes, peer: object | None = None, pos: int = 0) -> tuple[int, int]:
        return KERNEL.take_blocks(bytearray(buf), pos, len(buf), self.table, self.picker.active,
                                 peer or self.a, self.full)


def test_plain_blocks_are_taken_with_all_their_bookkeeping() -> None:
    s = Setup()
    buf = s.block(0, 0) + s.block(0, 2) + s.block(1, 3)
    assert s.take(buf) == (len(buf), 3)
    for i, b in [(0, 0), (0, 2), (1, 3)]:
        assert (i, b * BLOCK_SIZE) not in s.table
        pd = s.picker.active[i]
        assert b not in pd.outstanding and pd.senders[b] is s.a
        assert pd.slot.blocks.has(b)
        assert bytes(pd.slot.view[b * BLOCK_SIZE : (b + 1) * BLOCK_SIZE]) == \
            s.data[i * PIECE + b * BLOCK_SIZE : i * PIECE + (b + 1) * BLOCK_SIZE]
    assert s.picker.active[0].received == 2 and s.full == []
    assert len(s.table) == len(s.reqs) - 3


def test_the_block_that_fills_a_piece_reports_it_and_stops() -> None:
    s = Setup()
    buf = b"".join(s.block(0, b) for b in range(4)) + s.block(1, 0)
    pos, taken = s.take(buf)
    assert (pos, taken) == (4 * (13 + BLOCK_SIZE), 4)
    assert s.full == [s.picker.active[0]] and s.picker.active[0].slot.blocks.full
    assert bytes(s.picker.active[0].slot.view) == s.data[:PIECE]


@pytest.mark.parametrize("case", ["other message", "incomplete", "unrequested", "wrong length",
                                  "other peer", "duplicate", "not in flight", "endgame",
                                  "unaligned"])
def test_anything_else_is_left_untouched_for_the_python_path(case: str) -> None:
    s = Setup()
    first = s.block(0, 0)
    if case == "other message":
        odd = struct.pack(">IBI", 5, 4, 1)  # have
    elif case == "incomplete":
        odd = s.block(0, 1)[:-1]
    elif case == "unrequested":
        del s.table[(0, BLOCK_SIZE)]
        odd = s.block(0, 1)
    elif case == "wrong length":
        odd = frame(0, BLOCK_SIZE, b"x" * 100)
    elif case == "other peer":
        s.picker.active[0].outstanding[1] = s.b
        odd = s.block(0, 1)
    elif case == "duplicate":
        s.picker.active[0].slot.blocks.set(1)
        odd = s.block(0, 1)
    elif case == "not in flight":
        s.picker.finish(1)
        odd = s.block(1, 0)
    elif case == "endgame":
        s.picker.active[1].dups[3] = s.b
        odd = s.block(1, 0)
    else:
        s.table[(0, 100)] = (BLOCK_SIZE, 0.0)
        odd = frame(0, 100, b"y" * BLOCK_SIZE)
    before = dict(s.table)
    pd0 = s.picker.active[0]
    outstanding0 = dict(pd0.outstanding)
    pos, taken = s.take(first + odd)
    assert (pos, taken) == (len(first), 1)  # the first block, then a stop
    del before[(0, 0)]
    del outstanding0[0]
    assert s.table == before and pd0.outstanding == outstanding0
    assert pd0.received == 1 and s.full == []


def test_a_short_last_piece_takes_its_short_last_block() -> None:
    total = PIECE + BLOCK_SIZE + 100  # piece 1: a whole block and one of 100 bytes
    s = Setup(total)
    buf = s.block(1, 0) + frame(1, BLOCK_SIZE, s.data[PIECE + BLOCK_SIZE :])
    assert s.take(buf) == (len(buf), 2)
    assert s.full == [s.picker.active[1]]


def test_span_outside_the_buffer_is_refused() -> None:
    s = Setup()
    with pytest.raises(ValueError):
        KERNEL.take_blocks(bytearray(10), 0, 11, s.table, s.picker.active, s.a, s.full)
