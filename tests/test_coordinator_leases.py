"""The coordinator carries out the lease table's decisions (no processes).

Each worker handle's pipe is replaced by a recorder of the control messages
the coordinator sends.  The lease logic itself is tested in
tests/test_leases.py; these check that the coordinator feeds it the workers'
messages, sends what it returns to the right worker, and reports its counts
in the result.  The scenarios are what real downloads hit only by timing (a
steal whose victim dies before it answers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from torrent import ipc
from torrent.coordinator import PIECES_DONE_DELAY, Coordinator, WorkerHandle
from torrent.leases import PieceState
from torrent.options import Options

N = 16  # pieces


class Pipe:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, msg: Any) -> None:
        self.sent.append(msg)

    def fileno(self) -> int:
        return -1


def coordinator(workers: int, clock: Callable[[], float] | None = None,
                ) -> tuple[Coordinator, list[WorkerHandle]]:
    meta = SimpleNamespace(num_pieces=N, piece_length=16384, total_size=N * 16384,
                           info_hash=b"\1" * 20, info_hash_hex="01" * 20, trackers=(),
                           files=[SimpleNamespace(path="t", length=N * 16384, offset=0,
                                                  pad=False)])
    opts = Options(workers=workers, bind="127.0.0.1", max_peers=10, stall_timeout=0,
                   use_trackers=False)
    c = Coordinator(meta, "/nonexistent", opts) if clock is None else \
        Coordinator(meta, "/nonexistent", opts, clock=clock)
    hs = []
    for w in range(workers):
        h = WorkerHandle(w, SimpleNamespace(exitcode=-9), Pipe())
        h.peers = 1
        c.leases.set_peers(w, 1)
        hs.append(h)
        # every worker's peers have every piece
        c.handle(h, ipc.Availability(b"\xff" * (N // 8)))
    c.workers = hs
    return c, hs


def lease_to(c: Coordinator, h: WorkerHandle, pieces: range) -> None:
    """As if ``h`` had been leased ``pieces`` earlier."""
    for p in pieces:
        c.leases.state[p] = PieceState.LEASED
        c.leases.owner[p] = h.wid
    c.leases.workers[h.wid].leased.update(pieces)
    c.leases.workers[h.wid].asked = True


def leases(h: WorkerHandle) -> list[ipc.Lease]:
    return [m for m in h.conn.sent if isinstance(m, ipc.Lease)]


def test_a_need_is_answered_with_a_lease_to_the_worker_that_asked() -> None:
    c, (w0, w1) = coordinator(2)
    c.leases.start(-10.0)  # the start-up affinity is over
    c.handle(w1, ipc.NeedPieces(3))
    assert leases(w1) == [ipc.Lease((8, 9, 10))] and w0.conn.sent == []


def test_a_steal_whose_victim_dies_is_served_from_the_freed_pieces() -> None:
    c, (w0, w1) = coordinator(2)
    lease_to(c, w0, range(N))  # the whole torrent is w0's
    c.handle(w1, ipc.NeedPieces(4))  # nothing free: w1 asks w0 to give some back
    assert any(isinstance(m, ipc.Steal) for m in w0.conn.sent)
    assert leases(w1) == []
    c.worker_died(w0)  # before it answers
    got = [p for lease in leases(w1) for p in lease.pieces]
    assert got, "the thief must not wait forever for an answer that cannot come"
    assert not any(lease.endgame for lease in leases(w1))
    assert all(c.leases.owner[p] == 1 for p in got)
    assert c.warnings and "worker 0 died" in c.warnings[0]


def test_a_steal_is_answered_by_its_victim_only() -> None:
    c, (w0, w1, w2) = coordinator(3)
    lease_to(c, w0, range(10))  # w0 holds the most: it is the victim
    lease_to(c, w1, range(10, N))
    c.handle(w2, ipc.NeedPieces(N))
    assert [m for m in w0.conn.sent if isinstance(m, ipc.Steal)]
    assert not [m for m in w1.conn.sent if isinstance(m, ipc.Steal)]
    victim, other = w0, w1
    c.handle(other, ipc.Released(()))  # not the one asked: the thief keeps waiting
    assert leases(w2) == [] or all(not lease.pieces for lease in leases(w2))
    give = sorted(c.leases.workers[victim.wid].leased)[-2:]
    c.handle(victim, ipc.Released(tuple(give)))
    assert sorted(p for lease in leases(w2) for p in lease.pieces) == give
    assert c.result(False).workers[2]["steals"] == 2


def test_verified_pieces_are_announced_to_the_others_and_counted() -> None:
    c, (w0, w1, w2) = coordinator(3)
    lease_to(c, w0, range(4))
    c.handle(w0, ipc.Verified((0, 1)))
    assert c.verified == 2
    assert w1.conn.sent == w2.conn.sent == [ipc.PiecesDone((0, 1))] and w0.conn.sent == []
    c.handle(w1, ipc.Verified((1,)))  # a late endgame copy
    assert c.duplicates == 1 and w0.conn.sent == []
    res = c.result(False)
    assert res.duplicate_pieces == 1
    assert [w["pieces"] for w in res.workers] == [2, 0, 0]
    assert [w["endgame_pieces"] for w in res.workers] == [0, 0, 0]


def done_msgs(h: WorkerHandle) -> list[ipc.PiecesDone]:
    return [m for m in h.conn.sent if isinstance(m, ipc.PiecesDone)]


def test_pieces_done_goes_out_in_one_batch_per_interval() -> None:
    """K workers each reporting every 50 ms must not cost K x (K - 1) messages."""
    now = [100.0]
    c, (w0, w1, w2) = coordinator(3, clock=lambda: now[0])
    lease_to(c, w0, range(4))
    lease_to(c, w1, range(4, 8))

    async def run() -> None:
        c.handle(w0, ipc.Verified((0, 1)))  # the first batch goes at once
        assert done_msgs(w1) == done_msgs(w2) == [ipc.PiecesDone((0, 1))]
        now[0] += PIECES_DONE_DELAY / 5
        c.handle(w0, ipc.Verified((2,)))
        c.handle(w1, ipc.Verified((4, 5)))
        assert len(done_msgs(w2)) == 1 and done_msgs(w0) == []  # held back
        now[0] += PIECES_DONE_DELAY
        c.flush_pieces_done()  # what the timer runs
        assert done_msgs(w0) == [ipc.PiecesDone((4, 5))]  # never its own pieces
        assert done_msgs(w1)[1:] == [ipc.PiecesDone((2,))]
        assert done_msgs(w2)[1:] == [ipc.PiecesDone((2, 4, 5))]  # one message for both
        c.flush_pieces_done()  # nothing pending: nothing sent
        assert len(w0.conn.sent) + len(w1.conn.sent) + len(w2.conn.sent) == 5

    asyncio.run(run())
    assert c.verified == 5


def test_the_last_pieces_done_is_not_held_back() -> None:
    """Complete: the workers (seeding next) hear of every piece at once."""
    now = [100.0]
    c, (w0, w1) = coordinator(2, clock=lambda: now[0])
    lease_to(c, w0, range(N))

    async def run() -> None:
        c.handle(w0, ipc.Verified(tuple(range(N - 1))))
        now[0] += PIECES_DONE_DELAY / 5
        c.handle(w0, ipc.Verified((N - 1,)))
        assert done_msgs(w1) == [ipc.PiecesDone(tuple(range(N - 1))),
                                 ipc.PiecesDone((N - 1,))]

    asyncio.run(run())


def test_a_worker_with_few_slots_still_asks_for_32_mib_of_pieces() -> None:
    from torrent.worker import LEASE_MIN_BYTES, LOW_WATER, lease_request

    MiB = 1 << 20
    assert LEASE_MIN_BYTES == 32 * MiB
    assert lease_request(64, MiB) == 128  # 2 workers: two slots' worth, as before
    assert lease_request(4, MiB) == 32  # 64 workers, 4 slots each: 32 MiB, not 8 pieces
    assert lease_request(16, 256 << 10) == 128
    assert lease_request(2, 64 * MiB) == LOW_WATER  # huge pieces: the floor of the count
