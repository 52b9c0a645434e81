"""A worker's web seeds (BEP 19): runs of leased pieces fetched over HTTP into its slots.

Theory of operation
-------------------
Every worker fetches from every web seed, each on its own connections
(:class:`~torrent.net.webseed.HttpFetcher`, one aiohttp session on the
worker's uvloop).  A web seed counts as one more source of every piece in
the worker's availability (less the files it answered 404 for), so the
coordinator's leases cover web seeds exactly as they cover peers: a worker
is leased pieces its sources have, and fetches only those.

Inside the lease, a seed takes a *run*: consecutive unstarted pieces, at
most :data:`~torrent.webseed.MAX_REQUEST_BYTES` of them and no more than the
free slots allow, each in a slot of its own (a :class:`~torrent.picker.PieceDL`
whose ``owner`` is the seed; the picker never sees it, so peers never write
into it).  The run becomes one ``Range`` request per file segment
(:class:`~torrent.webseed.RangePlanner`), pad ranges zero-filled in the
slots, and the body of each response is copied once, as aiohttp reads it,
into the slots (:class:`_Sink`).  Each piece is handed to the native
verify-and-write path as soon as its last byte has arrived, the same
``submit_piece`` as for peers; up to
:data:`~torrent.webseed.MAX_REQUESTS_IN_FLIGHT` runs per seed are in flight.

The tail goes to whichever source is faster.  In endgame (nothing left to
lease) an idle seed fetches a second copy of a piece peers are still
fetching, into a slot of its own, and a piece a seed has held for
:data:`WEB_DUP_AGE` is put back in the picker's lease so that peers (or
another seed) fetch it too.  The first complete copy goes to the verifier;
the other is dropped (a peer copy's requests are cancelled).  A copy is
never written into a slot another source writes to, and only verified data
is written.

Failures (``torrent/webseed.py``'s :class:`~torrent.webseed.SeedState`): a
failed request gives its unfinished pieces back to the lease and backs the
seed off; 404 drops that file for that seed; 503 and 429 pause it for their
``Retry-After``; a seed failing too often is dropped, and the coordinator
warns, naming it.  A piece from a seed that fails its hash check bans that
seed (in every worker, through the coordinator) and goes back to the lease.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from . import ipc
from .net.webseed import HttpFetcher
from .picker import PieceDL
from .webseed import (
    MAX_REQUESTS_IN_FLIGHT,
    RangePlanner,
    SeedState,
    Segment,
    Verdict,
    VerdictKind,
    file_url,
    request_pieces,
)

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["WEB_DUP_AGE", "WebSeed", "WebSeeds"]

#: In endgame, a piece a web seed has held this long is offered to the other
#: sources too (seconds): a healthy seed is done with a run well before, so a
#: fast download fetches nothing twice; a slow one no longer holds the tail.
WEB_DUP_AGE = 2.0

log = logging.getLogger(__name__)


class WebSeed:
    """One web seed in this worker: its state and what it holds."""

    __slots__ = ("_seen", "bytes", "has", "inflight", "rate", "state", "tasks", "url")

    def __init__(self, url: str, bits: bytes) -> None:
        self.url = url
        self.state = SeedState(url)
        self.has = bytearray(bits)  # the pieces it can serve (files not 404)
        self.inflight = 0  # runs in flight
        self.tasks: set[asyncio.Task[None]] = set()
        self.bytes = 0  # bytes of its pieces verified and written
        self.rate = 0.0
        self._seen = 0

    def can(self, i: int) -> bool:
        return bool(self.has[i >> 3] & (0x80 >> (i & 7)))

    def __repr__(self) -> str:
        return f"WebSeed({self.url})"


class _Sink:
    """Copies a run's body bytes into its slots and finishes each piece as it fills.

    ``pos`` is the torrent offset up to which every byte of the run is in its
    slot (written, or a pad zero-filled); the requests come in torrent order.
    """

    __slots__ = ("done", "owner", "pds", "pl", "pos", "seed", "start")

    def __init__(self, owner: WebSeeds, seed: WebSeed, pds: list[PieceDL], start: int,
                 pl: int) -> None:
        self.owner = owner
        self.seed = seed
        self.pds = pds
        self.start = start
        self.pl = pl
        self.pos = start
        self.done = 0  # pieces finished (handed on) so far, from the front

    def fill_zero(self, off: int, length: int) -> None:
        """Zero ``length`` bytes from torrent offset ``off`` (a pad file)."""
        end = off + length
        while off < end:
            k = (off - self.start) // self.pl
            pd = self.pds[k]
            o = off - (self.start + k * self.pl)
            m = min(pd.size - o, end - off)
            pd.slot.view[o : o + m] = bytes(m)
            off += m

    def seek(self, off: int) -> None:
        """Everything before torrent offset ``off`` is in place: finish those pieces."""
        self.pos = off
        self._finish()

    def write(self, data: memoryview) -> None:
        """The next bytes of the current request (one aiohttp read)."""
        n = len(data)
        c = 0
        pos = self.pos
        start, pl, pds = self.start, self.pl, self.pds
        while c < n:
            k = (pos - start) // pl
            pd = pds[k]
            o = pos - (start + k * pl)
            m = min(pd.size - o, n - c)
            pd.slot.view[o : o + m] = data[c : c + m]
            c += m
            pos += m
        self.pos = pos
        self._finish()

    def _finish(self) -> None:
        pds = self.pds
        while self.done < len(pds):
            pd = pds[self.done]
            if self.start + self.done * self.pl + pd.size > self.pos:
                return
            self.done += 1
            self.owner.piece_arrived(self.seed, pd)


class WebSeeds:
    """The web seeds of one worker (see the module docstring)."""

    def __init__(self, worker: Worker, urls: tuple[str, ...]) -> None:
        self.w = worker
        m = worker.meta
        self.meta = m
        self.planner = RangePlanner(m.files, m.piece_length, m.total_size)
        self.real_files = sum(1 for f in m.files if not f.pad and f.length)
        n = m.num_pieces
        bits = bytearray(b"\xff" * (-(-n // 8)))
        if n % 8:
            bits[-1] = (0xFF << (8 - n % 8)) & 0xFF
        self.seeds = [WebSeed(u, bytes(bits)) for u in urls]
        self.fetcher = HttpFetcher()
        self.held: dict[int, list[PieceDL]] = {}  # piece -> the copies runs are fetching
        self.since: dict[int, float] = {}  # piece -> when a run took it
        self.offered: set[int] = set()  # held pieces put back in the lease (endgame)
        self.closing = False
        self.errors = 0
        self.dups = 0

    # -- for the worker -------------------------------------------------------------
    @property
    def live(self) -> bool:
        """A seed is still in use."""
        return any(s.state.dropped is None for s in self.seeds)

    def owns(self, pd: PieceDL) -> bool:
        return type(pd.owner) is WebSeed

    def start(self) -> None:
        """Count every seed as a source of every piece, and tell the coordinator."""
        for s in self.seeds:
            self.w._availability(bytes(s.has), 1)
        if self.w.avail_dirty:
            self.w.avail_dirty = False
            self.w.send(ipc.Availability(bytes(self.w.avail)))
        self.w.ask_for_pieces()

    def pump(self) -> None:
        """Start the runs the seeds, the lease and the free slots allow."""
        w = self.w
        if self.closing or w.complete or w.stop_event.is_set():
            return
        now = w.loop.time()
        for seed in self.seeds:
            while seed.inflight < MAX_REQUESTS_IN_FLIGHT and seed.state.usable(now):
                pds = self._claim(seed, now)
                if not pds:
                    break
                self._start(seed, pds)
        if len(w.picker.unstarted) < w.low_water:
            w.ask_for_pieces()

    def tick(self, now: float, interval: float) -> None:
        """Rates; in endgame, offer pieces held too long to the other sources."""
        for s in self.seeds:
            s.rate = 0.7 * s.rate + 0.3 * ((s.bytes - s._seen) / interval)
            s._seen = s.bytes
        picker = self.w.picker
        if picker.endgame and not picker.unstarted:
            for i, t in self.since.items():
                if i not in self.offered and now - t >= WEB_DUP_AGE:
                    self.offered.add(i)
                    picker.add_lease((i,))

    def stats(self) -> dict[str, Any]:
        return {"web_seed_bytes": sum(s.bytes for s in self.seeds),
                "web_seed_rate": sum(s.rate for s in self.seeds),
                "web_seed_errors": self.errors,
                "web_seeds": {s.url: {"bytes": s.bytes, "dropped": s.state.dropped}
                              for s in self.seeds}}

    def verified(self, pd: PieceDL) -> None:
        """A piece from a web seed checked out and was written (it counts as its bytes)."""
        seed = pd.owner
        assert isinstance(seed, WebSeed)
        seed.bytes += pd.size

    def hash_failed(self, pd: PieceDL) -> None:
        """A piece from a web seed failed its hash: ban the seed, fetch the piece again."""
        seed = pd.owner
        assert isinstance(seed, WebSeed)
        self.w._release_slot(pd)
        self.ban(seed, f"sent piece {pd.index}, which failed its hash check")
        self._relet(pd.index)
        self.w.pump_all()

    def ban(self, seed: WebSeed, why: str) -> None:
        if seed.state.dropped is not None:
            return
        seed.state.ban(why)
        self.w.stats["banned"].append(seed.url)
        self._dropped(seed, banned=True)

    def drop_url(self, url: str, why: str) -> None:
        """The coordinator says: another worker banned this seed."""
        for s in self.seeds:
            if s.url == url and s.state.dropped is None:
                s.state.ban(why)
                self._dropped(s, banned=True, tell=False)

    async def close(self) -> None:
        self.closing = True
        tasks = [t for s in self.seeds for t in s.tasks]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.fetcher.close()
        self.held.clear()

    # -- runs -------------------------------------------------------------------------
    def _claim(self, seed: WebSeed, now: float) -> list[PieceDL]:
        """A run for ``seed``: consecutive unstarted pieces it has, each with a slot."""
        w = self.w
        picker = w.picker
        free = len(w.free_slots)
        if w.peers:
            free -= max(1, w.cfg.nslots // 4)  # leave the peers slots of their own
        n = request_pieces(self.meta.piece_length, free)
        if n <= 0:
            return []
        unstarted = picker.unstarted
        # (a piece another source holds is in the lease only as an endgame offer)
        cand = [i for i in unstarted if seed.can(i) and not self._holds(seed, i)]
        if cand:
            hi = max(cand)
            lo = hi
            while hi - lo + 1 < n and lo - 1 in unstarted and seed.can(lo - 1) \
                    and not self._holds(seed, lo - 1):
                lo -= 1
            run = range(lo, hi + 1)
        elif picker.endgame:
            # the tail: a second copy of a piece a peer is still fetching
            dup = next((i for i in picker.active if i not in w.in_io and i not in self.held
                        and seed.can(i)), None)
            if dup is None:
                return []
            self.dups += 1
            run = range(dup, dup + 1)
        else:
            return []
        out = []
        for i in run:
            unstarted.discard(i)
            slot = w.alloc_slot(i)
            pd = PieceDL(i, picker.piece_size(i), slot)
            pd.pending = []
            pd.owner = seed
            self.held.setdefault(i, []).append(pd)
            self.since.setdefault(i, now)
            out.append(pd)
        return out

    def _holds(self, seed: WebSeed, i: int) -> bool:
        copies = self.held.get(i)
        return copies is not None and any(pd.owner is seed for pd in copies)

    def _start(self, seed: WebSeed, pds: list[PieceDL]) -> None:
        seed.inflight += 1
        task = self.w.loop.create_task(self._run(seed, pds))
        seed.tasks.add(task)
        task.add_done_callback(seed.tasks.discard)

    async def _run(self, seed: WebSeed, pds: list[PieceDL]) -> None:
        m = self.meta
        plan = self.planner.plan(pds[0].index, len(pds))
        sink = _Sink(self, seed, pds, plan.start, m.piece_length)
        try:
            for off, ln in plan.pads:
                sink.fill_zero(off, ln)
            for seg in plan.segments:
                if seg.file in seed.state.missing or seed.state.dropped is not None:
                    return
                f = m.files[seg.file]
                sink.seek(seg.offset)
                verdict = await self.fetcher.fetch(file_url(seed.url, m.multi_file, f.path),
                                                   seg.file_offset, seg.length, f.length,
                                                   sink.write)
                if self.closing:
                    return
                if verdict.kind is not VerdictKind.READ:
                    self._failed(seed, seg, verdict)
                    return
                seed.state.succeeded()
                sink.seek(seg.offset + seg.length)
            sink.seek(plan.end)
        finally:
            seed.inflight -= 1
            for pd in pds[sink.done:]:
                self._give_back(pd)
            if not self.closing:
                self.w.pump_all()

    def piece_arrived(self, seed: WebSeed, pd: PieceDL) -> None:
        """Every byte of ``pd`` is in its slot: verify and write it, unless another copy
        is already there (then drop this one)."""
        w = self.w
        i = pd.index
        self._forget(pd)
        if self.closing or w._has(i) or i in w.in_io:
            w._release_slot(pd)
            return
        other = w.picker.drop(i)  # a peer copy of the tail, or an offer in the lease
        if other is not None:
            w._abandon(other)
        w.blocks += pd.nblocks
        w.submit_piece(pd)

    def _forget(self, pd: PieceDL) -> None:
        i = pd.index
        copies = self.held.get(i)
        if copies is not None:
            if pd in copies:
                copies.remove(pd)
            if not copies:
                del self.held[i]
                self.since.pop(i, None)
                self.offered.discard(i)

    def _give_back(self, pd: PieceDL) -> None:
        """A run ended without this piece: free its slot, and put it back in the lease."""
        self._forget(pd)
        if self.closing:
            return
        self.w._release_slot(pd)
        self._relet(pd.index)

    def _relet(self, i: int) -> None:
        w = self.w
        if not (w._has(i) or i in w.in_io or i in w.picker.active or i in self.held):
            w.picker.add_lease((i,))

    # -- failures ---------------------------------------------------------------------
    def _failed(self, seed: WebSeed, seg: Segment, v: Verdict) -> None:
        now = self.w.loop.time()
        self.errors += 1
        st = seed.state
        log.debug("web seed %s: %s", seed.url, v.reason)
        if v.kind is VerdictKind.MISSING:
            self._lose_file(seed, seg.file)
            dropped = st.file_missing(seg.file, self.real_files)
        elif v.kind is VerdictKind.BUSY:
            dropped = st.busy_answer(now, v.retry_after, v.reason)
        else:
            dropped = st.failed(now, v.reason)
        if dropped:
            self._dropped(seed, banned=False)

    def _lose_file(self, seed: WebSeed, k: int) -> None:
        """File ``k`` is not on ``seed``: it is no longer a source of its pieces."""
        lost = bytearray(len(seed.has))
        any_lost = False
        for i in self.planner.pieces_of_file(k):
            if seed.can(i):
                seed.has[i >> 3] &= ~(0x80 >> (i & 7)) & 0xFF
                lost[i >> 3] |= 0x80 >> (i & 7)
                any_lost = True
        if any_lost:
            self.w._availability(bytes(lost), -1)

    def _dropped(self, seed: WebSeed, *, banned: bool, tell: bool = True) -> None:
        """``seed`` is no longer used here: its pieces lose it as a source, its runs stop."""
        reason = seed.state.dropped or "dropped"
        if any(seed.has):
            self.w._availability(bytes(seed.has), -1)
            seed.has = bytearray(len(seed.has))
        for t in list(seed.tasks):
            t.cancel()
        if tell:
            self.w.send(ipc.WebSeedDropped(seed.url, reason, banned))
