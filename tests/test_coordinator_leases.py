"""The coordinator's lease / steal / death bookkeeping, driven directly (no processes).

Each worker handle's pipe is replaced by a recorder of the control messages
the coordinator sends; the scenarios are what real downloads hit only by
timing (a steal whose victim dies before it answers).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from torrent import ipc
from torrent.coordinator import Coordinator, WorkerHandle

N = 16  # pieces


class Pipe:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, msg: Any) -> None:
        self.sent.append(msg)

    def fileno(self) -> int:
        return -1


def coordinator(workers: int) -> tuple[Coordinator, list[WorkerHandle]]:
    meta = SimpleNamespace(num_pieces=N, piece_length=16384, total_size=N * 16384,
                           info_hash=b"\1" * 20, trackers=())
    c = Coordinator(meta, "/nonexistent", workers=workers, peers=[], port=0, bind="127.0.0.1",
                    max_peers=10, stall_timeout=0, recheck=False, use_trackers=False,
                    arena_bytes=None, progress=None, status_line=None, request_timeout=None)
    hs = []
    for w in range(workers):
        h = WorkerHandle(w, SimpleNamespace(exitcode=-9), Pipe(), avail=bytearray(b"\xff\xff"),
                         cursor=w * N // workers)
        h.peers = 1
        h.asked = True
        hs.append(h)
    c.workers = hs
    return c, hs


def lease_to(c: Coordinator, h: WorkerHandle, pieces: range) -> None:
    """As if ``h`` had been leased ``pieces`` earlier."""
    for p in pieces:
        c.state[p] = 1
        c.owner[p] = h.wid
    h.leased.update(pieces)


def leases(h: WorkerHandle) -> list[ipc.Lease]:
    return [m for m in h.conn.sent if isinstance(m, ipc.Lease)]


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
    assert all(c.owner[p] == 1 for p in got)


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
    give = sorted(victim.leased)[-2:]
    c.handle(victim, ipc.Released(tuple(give)))
    assert sorted(p for lease in leases(w2) for p in lease.pieces) == give
    assert w2.steals == 2
