"""Piece leases: which worker fetches which piece (sans-IO).

Theory of operation
-------------------
Every piece is in one of four states (:class:`PieceState`): *free*,
*leased* to exactly one worker, *verified*, or *unwanted* (outside the run's
selection of files or its shard, ``torrent/selection.py``: never leased,
stolen or duplicated; a resumed copy of one is verified and served all the
same).  The download is complete (:attr:`LeaseTable.complete`) when every
wanted piece is verified.  Workers ask for pieces when
their lease runs low, and the answer is one of, in this order of preference:

1. **A lease of free pieces** that the worker's peers have, scanned from the
   worker's *cursor* (where its last lease ended), so that a worker keeps
   fetching one stretch of the torrent and writes different parts of the
   files than the others.  Two limits shape it:

   - *start-up affinity*: until every other worker with peers has asked for
     pieces too, or :data:`LEASE_GRACE` has passed since the workers
     started, a worker leases only in its own region (worker ``k`` of ``m``
     alive: ``[k/m, (k+1)/m)`` of the piece space), so the first worker to
     get an unchoke cannot take the whole torrent;
   - *fair share*: never more than ``ceil(free / alive workers)`` at once,
     so the tail is spread over every worker.

2. **Waiting**: free pieces exist but this worker's peers have none of them
   (or none in its region yet).  Nothing is sent; the request is remembered
   and served when its availability changes, pieces are freed or the grace
   period ends (:meth:`LeaseTable.serve_waiting`).

3. **A steal**: nothing is free.  The worker holding the largest lease (of
   those holding more than one piece this worker's peers have) is asked to
   give back a share of it, in proportion to the thief's speed.  The victim
   answers with the unstarted pieces it gives up (:meth:`LeaseTable.released`)
   and those go to the thief, all of them (they were sized for it).

4. **An endgame lease**: nothing is free and nothing can be stolen.  Pieces
   another worker has held for at least :data:`ENDGAME_MIN_AGE` are leased a
   second time (at most :data:`ENDGAME_MAX_EXTRA` extra holder each); the
   first verified copy counts and the others are cancelled.  The answer may
   be empty: the worker then knows it is in endgame and asks again later.

A verified piece leaves every lease and every worker but the one that
verified it is told (:class:`~torrent.ipc.PiecesDone`).  A dead worker's
leases become free again, thieves waiting on its answer stop waiting, and
waiting workers are served.

Invariant: ``p in workers[w].leased`` exactly when ``state[p]`` is
``LEASED`` and ``owner[p] == w``.  Endgame copies are not in ``leased``.

:class:`LeaseTable` does no I/O and reads no clock: the caller passes
``now`` and carries out the :class:`Send` actions the methods return, in
order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from . import ipc

__all__ = [
    "ENDGAME_MAX_EXTRA",
    "ENDGAME_MIN_AGE",
    "LEASE_GRACE",
    "LeaseTable",
    "PieceState",
    "Send",
    "WorkerLeases",
]

#: Start-up affinity: a worker leases outside its region before every worker
#: with peers has asked for pieces only after this long.  Long enough for the
#: other workers' first unchokes (a round trip or two to their peers), short
#: enough that a worker whose peers have nothing in its region is not idle
#: for long.
LEASE_GRACE = 1.0
#: A piece leased to another worker this long ago may be duplicated in
#: endgame.  A piece moving at normal speed is done well before this, so no
#: piece of a healthy download is fetched twice; one held longer sits with
#: slow peers and a second copy finishes the tail sooner.
ENDGAME_MIN_AGE = 2.0
#: Extra holders of one piece in endgame: each is a whole piece fetched
#: again, so one is enough to route around a slow worker.
ENDGAME_MAX_EXTRA = 1


class PieceState(IntEnum):
    """The coordinator's view of one piece."""

    FREE = 0
    LEASED = 1
    VERIFIED = 2
    UNWANTED = 3


_FREE = PieceState.FREE.value
_LEASED = PieceState.LEASED.value
_VERIFIED = PieceState.VERIFIED.value
_UNWANTED = PieceState.UNWANTED.value


@dataclass(frozen=True, slots=True)
class Send:
    """An action: send ``msg`` to worker ``worker``."""

    worker: int
    msg: ipc.Lease | ipc.Steal | ipc.PiecesDone


@dataclass(slots=True)
class WorkerLeases:
    """One worker as the lease table sees it."""

    wid: int
    avail: bytearray  # bitfield: pieces this worker's peers have
    cursor: int  # where its next lease scan starts
    alive: bool = True
    peers: int = 0  # peers assigned to it (a worker without any holds nobody up)
    rate: float = 0.0  # bytes/s it downloads (sizes a steal)
    leased: set[int] = field(default_factory=set)
    steal_from: int = -1  # the worker asked to give this one pieces (-1: none)
    waiting_need: int = 0  # pieces asked for that could not be served yet
    asked: bool = False  # has asked for pieces at least once (a peer unchoked it)
    steals: int = 0  # pieces received from a steal
    pieces_first: int = 0  # pieces it verified first
    endgame_pieces: int = 0  # of those, leased to another worker at the time

    def has(self, i: int) -> bool:
        """Does one of this worker's peers have piece ``i``?"""
        return bool(self.avail[i >> 3] & (0x80 >> (i & 7)))


class LeaseTable:
    """Every piece's state and every worker's lease; see the module docstring.

    Args:
        num_pieces: pieces in the torrent.
        workers: worker ids are ``0 .. workers - 1``; worker ``w`` starts
            leasing at piece ``w * num_pieces // workers``.
        started_at: when the workers started (the start of the grace period;
            :meth:`start` sets it again).
        wanted: one byte per piece, nonzero for a piece this run fetches
            (``selection.wanted_pieces``); None: every piece.
    """

    def __init__(self, num_pieces: int, workers: int, *, started_at: float = 0.0,
                 wanted: bytes | bytearray | None = None) -> None:
        n = num_pieces
        self.num_pieces = n
        self.started_at = started_at
        self.state = bytearray(n)  # PieceState values
        if wanted is not None:
            self.state = bytearray(_FREE if w else _UNWANTED for w in wanted)
        #: wanted pieces not verified yet: 0 is a complete download
        self.wanted_left = self.state.count(_FREE)
        self.owner = [-1] * n  # the leaseholder, then the worker that verified it
        self.leased_at = [0.0] * n  # when each piece was last leased (endgame age)
        self.endgame_dups: dict[int, set[int]] = {}  # piece -> its extra holders
        self.num_verified = 0
        self.duplicates = 0  # pieces verified again after the first copy
        # the stretch holding the wanted pieces: the workers' regions divide it
        firsts = [i for i in (self.state.find(_FREE), self.state.rfind(_FREE)) if i >= 0]
        self.span = (firsts[0], firsts[1] + 1) if firsts else (0, n)
        lo, width = self.span[0], self.span[1] - self.span[0]
        self.workers = [WorkerLeases(w, bytearray(-(-n // 8)), lo + (w * width) // max(1, workers))
                        for w in range(workers)]

    # -- set-up --------------------------------------------------------------
    def start(self, now: float) -> None:
        """The workers start now: the start-up affinity lasts LEASE_GRACE from here."""
        self.started_at = now

    def first_lease(self, wid: int, count: int, now: float) -> list[int]:
        """The lease worker ``wid`` starts with: up to ``count`` free pieces from the
        start of its region, before anyone knows what its peers have.

        It saves the first ``NeedPieces`` round trip: the worker can request as
        soon as a peer unchokes it, without the coordinator being scheduled on
        busy cores. A piece its peers turn out to lack is taken by another
        worker as any held piece is (a steal, or the endgame).
        """
        w = self.workers[wid]
        lo, hi = self._region(w, now)
        got: list[int] = []
        for i in range(max(lo, w.cursor), hi):
            if len(got) >= count:
                break
            if self.state[i] == _FREE:
                self.state[i] = _LEASED
                self.owner[i] = wid
                self.leased_at[i] = now
                got.append(i)
        if got:
            w.cursor = (got[-1] + 1) % self.num_pieces
            w.leased.update(got)
        return got

    def mark_have(self, pieces: Iterable[int]) -> None:
        """Pieces verified before any worker started (resumed, or being seeded)."""
        for i in pieces:
            if self.state[i] != _VERIFIED:
                if self.state[i] != _UNWANTED:
                    self.wanted_left -= 1
                self.state[i] = _VERIFIED
                self.num_verified += 1

    @property
    def complete(self) -> bool:
        """Every wanted piece is verified."""
        return self.wanted_left == 0

    @property
    def num_wanted(self) -> int:
        """Pieces this run fetches or already had (every piece but the unwanted ones)."""
        return self.num_pieces - self.state.count(_UNWANTED)

    def verified_pieces(self) -> list[int]:
        """Indices of the verified pieces, ascending."""
        return [i for i, s in enumerate(self.state) if s == _VERIFIED]

    def set_peers(self, wid: int, count: int) -> None:
        """Worker ``wid`` now has ``count`` peers assigned."""
        self.workers[wid].peers = count

    def set_rate(self, wid: int, rate: float) -> None:
        """Worker ``wid`` downloads ``rate`` bytes/s (its last report)."""
        self.workers[wid].rate = rate

    # -- events --------------------------------------------------------------
    def need(self, wid: int, count: int, now: float) -> list[Send]:
        """Worker ``wid`` asks for ``count`` more pieces (:class:`~torrent.ipc.NeedPieces`).

        Returns:
            A lease to it, a steal sent to a victim, an endgame lease to it,
            or nothing (it waits; see :meth:`serve_waiting`, or it is dead:
            a request read from its pipe after its death gets nothing).
        """
        w = self.workers[wid]
        if not w.alive:
            return []  # nobody would ever free what it was given
        w.asked = True
        out: list[Send] = []
        self._lease(w, count, now, out)
        return out

    def availability(self, wid: int, bits: bytes, now: float) -> list[Send]:
        """Worker ``wid``'s peers now have the pieces in bitfield ``bits``; serve waiters."""
        self.workers[wid].avail = bytearray(bits)
        return self.serve_waiting(now)

    def released(self, wid: int, pieces: Sequence[int], now: float) -> list[Send]:
        """Worker ``wid`` answered a steal and gave back ``pieces`` (maybe none).

        The thieves waiting on it get free pieces, as many as were given back
        (at least one) and without the fair-share cap; then every other waiting
        worker is served.
        """
        w = self.workers[wid]
        state, owner = self.state, self.owner
        for i in pieces:
            if state[i] == _LEASED and owner[i] == wid:
                state[i] = _FREE
                owner[i] = -1
            w.leased.discard(i)
        out: list[Send] = []
        for thief in self.workers:
            if thief.steal_from == wid and thief.alive:
                thief.steal_from = -1
                thief.steals += self._lease(thief, max(len(pieces), 1), now, out,
                                            steal_ok=False, fair_share=False)
        out += self.serve_waiting(now)
        return out

    def verified(self, wid: int, pieces: Sequence[int]) -> tuple[list[int], list[Send]]:
        """Worker ``wid`` verified (and wrote) ``pieces``.

        Returns:
            The pieces verified for the first time, and the
            :class:`~torrent.ipc.PiecesDone` to send to every other worker
            (none when nothing is new).  A piece verified again counts in
            :attr:`duplicates`.
        """
        w = self.workers[wid]
        state, owner = self.state, self.owner
        new: list[int] = []
        workers = self.workers
        for i in pieces:
            if state[i] != _VERIFIED:
                holder = owner[i]
                if holder not in (-1, wid):
                    w.endgame_pieces += 1  # taken over from a slower worker
                if state[i] != _UNWANTED:
                    self.wanted_left -= 1
                if state[i] == _LEASED:
                    # only its leaseholder has it in ``leased`` (the invariant): not
                    # a walk over every worker per piece
                    workers[holder].leased.discard(i)
                state[i] = _VERIFIED
                owner[i] = wid
                self.num_verified += 1
                w.pieces_first += 1
                new.append(i)
                self.endgame_dups.pop(i, None)  # verified for good: no copy is needed
            else:
                self.duplicates += 1
        if not new:
            return new, []
        done = ipc.PiecesDone(tuple(new))
        return new, [Send(o.wid, done) for o in self.workers if o is not w and o.alive]

    def worker_died(self, wid: int, now: float, *, reclaim: bool = True) -> list[Send]:
        """Worker ``wid`` is gone.

        With ``reclaim`` (it died on its own), its leased pieces become free,
        its endgame copies no longer count as extra holders, the thieves
        waiting on its answer stop waiting and every waiting worker is served.
        Without (the download is being stopped), it is only marked dead.
        """
        w = self.workers[wid]
        w.alive = False
        if not reclaim:
            return []
        state, owner = self.state, self.owner
        for i in range(self.num_pieces):
            if state[i] == _LEASED and owner[i] == wid:
                state[i] = _FREE
                owner[i] = -1
        w.leased.clear()
        for o in self.workers:
            if o.steal_from == wid:
                o.steal_from = -1  # its answer will never come: served below
        for holders in self.endgame_dups.values():
            holders.discard(wid)  # its copies are lost: another worker may take them
        return self.serve_waiting(now)

    def serve_waiting(self, now: float) -> list[Send]:
        """Serve every worker waiting for pieces (not for a steal's answer).

        Called when pieces were freed or availability changed, and
        periodically (the grace period ends by itself).
        """
        out: list[Send] = []
        for w in self.workers:
            if w.alive and w.waiting_need and w.steal_from < 0:
                self._lease(w, w.waiting_need, now, out)
        return out

    # -- the decision --------------------------------------------------------
    def _region(self, w: WorkerLeases, now: float) -> tuple[int, int]:
        """The pieces ``w`` may lease from: its own region during start-up, else all."""
        n = self.num_pieces
        if now - self.started_at < LEASE_GRACE and not all(
                o.asked for o in self.workers if o.alive and o.peers and o is not w):
            alive_ids = [o.wid for o in self.workers if o.alive]
            k, m = alive_ids.index(w.wid), len(alive_ids)
            lo, width = self.span[0], self.span[1] - self.span[0]
            return lo + k * width // m, lo + (k + 1) * width // m
        return 0, n

    def _lease(self, w: WorkerLeases, count: int, now: float, out: list[Send], *,
               steal_ok: bool = True, fair_share: bool = True) -> int:
        """Answer ``w``'s request for ``count`` pieces into ``out``; returns pieces leased.

        Free pieces its peers have, else a steal from the worker holding the
        most, else an endgame lease.  A worker whose peers have none of the
        free pieces waits (nothing is sent).
        """
        n = self.num_pieces
        state = self.state
        w.waiting_need = 0
        free_total = state.count(_FREE)
        alive = sum(1 for o in self.workers if o.alive) or 1
        if free_total and fair_share:
            # spread the tail: never more than a fair share of what is left
            count = max(1, min(count, -(-free_total // alive)))
        lo, hi = self._region(w, now)
        span = hi - lo
        start = w.cursor if lo <= w.cursor < hi else lo
        got: list[int] = []
        for k in range(span):
            i = lo + (start - lo + k) % span
            if state[i] == _FREE and w.has(i):
                state[i] = _LEASED
                self.owner[i] = w.wid
                self.leased_at[i] = now
                got.append(i)
                if len(got) >= count:
                    break
        if got:
            w.cursor = (got[-1] + 1) % n
            w.leased.update(got)
            out.append(Send(w.wid, ipc.Lease(tuple(got))))
            return len(got)
        if free_total:
            # free pieces exist, but not at this worker's peers (or not in its
            # region yet): wait for availability, freed pieces or the grace end
            w.waiting_need = count
            return 0
        if steal_ok:
            victims = [v for v in self.workers
                       if v is not w and v.alive and sum(1 for p in v.leased if w.has(p)) > 1]
            if victims:
                v = max(victims, key=lambda v: len(v.leased))
                w.steal_from = v.wid
                w.waiting_need = count
                # A share in proportion to speed: half between equals, little for
                # a thief much slower than its victim (it would hold the tail).
                tr, vr = w.rate, v.rate
                share = tr / (tr + vr) if tr + vr > 0 else 0.5
                out.append(Send(v.wid, ipc.Steal(max(1, int(len(v.leased) * share)))))
                return 0
        # Endgame: pieces another worker has held for a while (its peers are
        # slow) and this one's peers have, as many as it asked for, each with
        # at most ENDGAME_MAX_EXTRA extra holders.  Only the other workers'
        # leases are walked: small sets, not a scan of every piece.
        dups: list[int] = []
        held = sorted(p for v in self.workers if v is not w and v.alive for p in v.leased)
        for p in held:
            if state[p] == _LEASED and self.owner[p] != w.wid and w.has(p) \
                    and now - self.leased_at[p] >= ENDGAME_MIN_AGE:
                holders = self.endgame_dups.setdefault(p, set())
                if w.wid not in holders and len(holders) < ENDGAME_MAX_EXTRA:
                    holders.add(w.wid)
                    dups.append(p)
                    if len(dups) >= count:
                        break
        out.append(Send(w.wid, ipc.Lease(tuple(dups), endgame=True)))
        return 0
