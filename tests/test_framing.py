"""The receive buffer: memory in proportion to the work, bounded per worker by a budget.

Reads are simulated the way the socket adapter does them (``get_buffer``,
write into the tail, ``updated``), so growth follows what a fast or a slow
peer would cause.
"""

from __future__ import annotations

import pytest

from torrent.errors import RemoteProtocolError
from torrent.wire.framing import (
    INITIAL_RECV_BUFFER,
    MIN_READ,
    RECV_BUFFER_LIMIT,
    ReceiveBuffer,
    RecvBudget,
)
from torrent.wire.messages import BLOCK_SIZE, Piece, encode

MAX_FRAME = 1 << 20


def read(rb: ReceiveBuffer, data: bytes) -> int:
    """One socket read of as much of ``data`` as the free tail takes; bytes taken."""
    tail = rb.get_buffer(-1)
    n = min(len(tail), len(data))
    tail[:n] = data[:n]
    rb.updated(n)
    return n


def consume(rb: ReceiveBuffer) -> None:
    rb.start = rb.end  # the framer handled everything


def test_a_new_buffer_is_small_and_a_trickle_keeps_it_small() -> None:
    rb = ReceiveBuffer(MAX_FRAME)
    assert rb.capacity == INITIAL_RECV_BUFFER
    for _ in range(1000):  # a slow peer: a few bytes per read
        assert read(rb, b"x" * 10) == 10
        consume(rb)
    assert rb.capacity == INITIAL_RECV_BUFFER


def test_a_fast_peer_grows_it_up_to_the_read_limit() -> None:
    rb = ReceiveBuffer(MAX_FRAME)
    for _ in range(64):  # every read fills the whole free tail
        read(rb, b"x" * (4 << 20))
        consume(rb)
    assert rb.capacity == max(RECV_BUFFER_LIMIT, MAX_FRAME + MIN_READ)  # a largest frame fits


def test_read_growth_stops_at_the_budget_and_reads_go_on() -> None:
    budget = RecvBudget(64 << 10)
    rb = ReceiveBuffer(MAX_FRAME, budget=budget)
    for _ in range(64):
        assert read(rb, b"x" * (4 << 20)) > 0
        consume(rb)
    assert rb.capacity <= INITIAL_RECV_BUFFER + budget.limit
    assert 0 < budget.used <= budget.limit
    rb.release()
    assert budget.used == 0


def test_a_frame_over_the_budget_drops_the_connection() -> None:
    budget = RecvBudget(8 << 10)  # room for 12 KiB in all: no 16 KiB block fits
    rb = ReceiveBuffer(MAX_FRAME, budget=budget)
    frame = encode(Piece(0, 0, b"z" * BLOCK_SIZE))
    read(rb, frame[:100])
    rb.reserve_frame(len(frame))  # what the framer does once the length passed its bound
    with pytest.raises(RemoteProtocolError, match="no receive memory left"):
        rb.get_buffer(-1)
    assert budget.used <= budget.limit


def test_a_frame_within_the_budget_gets_its_room() -> None:
    budget = RecvBudget(64 << 10)
    rb = ReceiveBuffer(MAX_FRAME, budget=budget)
    frame = encode(Piece(0, 0, b"z" * BLOCK_SIZE))
    taken = read(rb, frame)
    rb.reserve_frame(len(frame))
    while taken < len(frame):
        taken += read(rb, frame[taken:])
    assert bytes(rb.view[rb.start : rb.end]) == frame


def test_shrink_gives_an_idle_peers_memory_back() -> None:
    budget = RecvBudget(4 << 20)
    rb = ReceiveBuffer(MAX_FRAME, budget=budget)
    for _ in range(64):
        read(rb, b"x" * (4 << 20))
        consume(rb)
    assert budget.used > 0
    read(rb, b"y" * 5)  # something pending: no shrink under it
    rb.shrink()
    assert rb.capacity > INITIAL_RECV_BUFFER and budget.used > 0
    consume(rb)
    rb.shrink()
    assert rb.capacity == INITIAL_RECV_BUFFER and budget.used == 0


def test_many_buffers_share_one_budget() -> None:
    budget = RecvBudget(1 << 20)
    bufs = [ReceiveBuffer(MAX_FRAME, budget=budget) for _ in range(50)]
    for _ in range(20):
        for rb in bufs:
            read(rb, b"x" * (4 << 20))
            consume(rb)
            assert budget.used <= budget.limit
    assert sum(rb.capacity for rb in bufs) <= 50 * INITIAL_RECV_BUFFER + budget.limit
    for rb in bufs:
        rb.release()
    assert budget.used == 0


def test_a_small_tail_is_compacted_not_grown() -> None:
    rb = ReceiveBuffer(MAX_FRAME)
    data = b"a" * (INITIAL_RECV_BUFFER - 3)
    read(rb, data)
    rb.start = rb.end - 2  # two bytes of a length prefix left
    tail = rb.get_buffer(-1)
    assert rb.start == 0 and rb.end == 2 and len(tail) >= min(MIN_READ, rb.capacity // 2)
