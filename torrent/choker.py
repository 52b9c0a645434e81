"""Choking and rate limiting, sans-IO: who we upload to, and how fast bytes may move.

Theory of operation
-------------------
Nothing here reads a clock, owns a timer or touches a socket: every method
that depends on time takes ``now`` (seconds, monotonic), and timeouts come
back as delays for the caller to arm.  The worker is the thin adapter that
carries the decisions out.

Rate limits (``--download-limit`` and ``--upload-limit``, each divided
between the workers) are one :class:`Throttle` each, over a
:class:`TokenBucket` holding :data:`BURST` seconds of the rate:

- Bytes are counted after they moved (:meth:`Throttle.consume`).  A read or a
  block may take the bucket into debt (by up to one read, or one block), so a
  rate below the block size still moves, and over ``t`` seconds no more than
  ``burst + rate x t`` plus that one read or block gets through.
- The consume that leaves the bucket in debt *pauses* the throttle and
  returns how long to wait; it is the only one that does, so the adapter arms
  at most one timer per stall.  While paused, the download side stops reading
  on every connection (the kernel's socket buffers and TCP flow control then
  slow the senders down) and the upload side serves no blocks (requests wait
  in each peer's queue, bounded by the wire protocol).
- When the timer fires the adapter calls :meth:`Throttle.resume`: either it
  is ready (reading resumes everywhere; uploading serves the peers in
  :meth:`Throttle.rotate` order, which starts after the peer that was being
  served when the bucket ran dry, so no peer starves the others), or, if the
  adapter's clock ran short, it returns the delay to arm again.

Choking (BEP 3) is a :class:`Choker` over opaque hashable peer keys.  An
interested peer is unchoked at once while a slot is free; every
:data:`CHOKE_INTERVAL` a round keeps the best ``slots - 1`` interested peers by
rate (the rate they send to us while downloading, tit-for-tat; the rate we
upload to them once complete) plus one optimistic unchoke, which moves
every :data:`OPTIMISTIC_ROUNDS` rounds to the interested peer that has waited
longest for one (a newcomer first), so every peer gets a chance to show its
rate.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, KeysView, Sequence
from typing import Generic, TypeVar

__all__ = [
    "BURST",
    "CHOKE_INTERVAL",
    "DOWNLOAD_MIN_WAIT",
    "OPTIMISTIC_ROUNDS",
    "UPLOAD_MIN_WAIT",
    "UPLOAD_SLOTS",
    "Choker",
    "Throttle",
    "TokenBucket",
]

#: Peers we upload to at once (BEP 3 choking: the best by rate, plus one
#: optimistic unchoke).  A server has bandwidth to spare; 8 keeps each
#: unchoked peer's share large enough to be worth its while.
UPLOAD_SLOTS = 8
#: Seconds between choking rounds (BEP 3 / libtorrent: 10 s, so rates settle).
CHOKE_INTERVAL = 10.0
#: Every this many rounds the optimistic unchoke moves to another peer (30 s).
OPTIMISTIC_ROUNDS = 3

#: Burst allowance of both rate limits, in seconds of the rate: short enough
#: that the limit holds over any second, long enough that one stall's wait
#: (at least the minimum wait below) refills without hitting the cap, so the
#: long-run rate is the limit.
BURST = 0.25
#: Shortest upload pause: a bucket a rounding error short of ready must not
#: arm a timer after every block.
UPLOAD_MIN_WAIT = 0.005
#: Shortest download pause: pausing and resuming reading costs a system call
#: per connection, so the pauses are at least this long (the refill period
#: the download limit always had).  Less than :data:`BURST`, so no refill is
#: lost to the cap and the long-run rate holds.
DOWNLOAD_MIN_WAIT = 0.05

P = TypeVar("P", bound=Hashable)


class TokenBucket:
    """A token bucket: ``rate`` bytes per second, at most ``burst`` saved up.

    A sender asks :meth:`ready`, sends one whole block (or reads what came)
    and :meth:`consume`\\ s it: the bucket may run into debt by up to that one
    block, so a rate below the block size still moves, and over time no more
    than ``burst + rate x t`` (plus that one block) leaves.  :meth:`wait` says
    how long until it is ready again.  A ``now`` earlier than one seen before
    (a clock stepping back) refills nothing.
    """

    __slots__ = ("_stamp", "burst", "rate", "tokens")

    #: Ready when less than this many bytes short: after sleeping exactly
    #: :meth:`wait`, rounding may leave the bucket a hair below zero, and a
    #: clock of limited resolution would never make up for it.
    SLACK = 1.0

    def __init__(self, rate: float, burst: float, now: float) -> None:
        """Start full at time ``now``.

        Raises:
            ValueError: ``rate`` is not a finite number > 0, or ``burst`` not a
                finite number >= 0 (the caller's bug: limits are checked where
                they are parsed).
        """
        if not (rate > 0 and math.isfinite(rate) and burst >= 0 and math.isfinite(burst)):
            raise ValueError(f"token bucket: rate {rate} must be > 0 and burst {burst} >= 0")
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)  # starts full
        self._stamp = now

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self.tokens = min(self.burst, self.tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def ready(self, now: float) -> bool:
        """Whether a block may be sent now (the bucket is not in debt)."""
        self._refill(now)
        return self.tokens > -self.SLACK

    def consume(self, n: int, now: float) -> None:
        """``n`` bytes were sent (or received) at ``now``."""
        self._refill(now)
        self.tokens -= n

    def wait(self, now: float) -> float:
        """Seconds from ``now`` until :meth:`ready` holds again (0.0 if it holds now)."""
        self._refill(now)
        return 0.0 if self.tokens > -self.SLACK else -self.tokens / self.rate


class Throttle:
    """One rate limit over all of a worker's connections, in one direction.

    States: *running*, or *paused* from the :meth:`consume` that left the
    bucket in debt until :meth:`resume` finds it ready.  Only that one consume
    returns a delay, so the adapter arms exactly one timer per stall.  The
    adapter, for the download limit: pause reading on every connection (and
    on a new one while :attr:`paused`) when :meth:`consume` returns a delay,
    resume them all when :meth:`resume` returns None.  For the upload limit:
    serve no block while :attr:`paused`; when :meth:`resume` returns None,
    serve the peers in :meth:`rotate` order until it pauses again.
    """

    __slots__ = ("_cursor", "_paused", "_turn", "bucket", "min_wait")

    def __init__(self, rate: float, *, now: float, burst_seconds: float = BURST,
                 min_wait: float = UPLOAD_MIN_WAIT) -> None:
        """``rate`` bytes per second, ``burst_seconds`` of it saved up, pauses >= ``min_wait``.

        Raises:
            ValueError: ``rate`` not a finite number > 0, or ``burst_seconds``
                or ``min_wait`` not a finite number >= 0 (the caller's bug).
        """
        if not (min_wait >= 0 and math.isfinite(min_wait)):
            raise ValueError(f"throttle: min_wait {min_wait} must be >= 0")
        if not (burst_seconds >= 0 and math.isfinite(burst_seconds)):
            raise ValueError(f"throttle: burst_seconds {burst_seconds} must be >= 0")
        self.bucket = TokenBucket(rate, rate * burst_seconds, now)
        self.min_wait = float(min_wait)
        self._paused = False
        # rotate(): the peer after which the next round starts, and a turn
        # counter for when that peer is gone.
        self._cursor: object = None
        self._turn = 0

    @property
    def rate(self) -> float:
        """The limit, bytes per second."""
        return self.bucket.rate

    @property
    def paused(self) -> bool:
        """Whether traffic is stopped until :meth:`resume` returns None."""
        return self._paused

    def blocked(self, now: float) -> bool:
        """Whether the bucket is in debt at ``now`` (whatever :attr:`paused` says)."""
        return not self.bucket.ready(now)

    def resume_in(self, now: float) -> float:
        """Seconds from ``now`` until it may go on: 0.0 if not blocked, else >= ``min_wait``."""
        w = self.bucket.wait(now)
        return 0.0 if w == 0.0 else max(self.min_wait, w)

    def consume(self, n: int, now: float, peer: object = None) -> float | None:
        """``n`` bytes moved at ``now`` (to or from ``peer``, if given).

        Returns:
            None to carry on; or, when these bytes stalled a running throttle,
            the seconds after which to call :meth:`resume` (it is now paused;
            arm one timer).  ``peer`` is then where the next :meth:`rotate`
            round starts after.
        """
        self.bucket.consume(n, now)
        if self._paused or self.bucket.ready(now):
            return None
        self._paused = True
        if peer is not None:
            self._cursor = peer
        return self.resume_in(now)

    def resume(self, now: float) -> float | None:
        """The timer armed for a pause fired at ``now``.

        Returns:
            None: running again (resume reading / serve the peers).  Otherwise
            still blocked (the timer's clock ran ahead of ``now``): it stays
            paused; arm the timer again for the returned seconds.
        """
        w = self.resume_in(now)
        if w > 0.0:
            return w
        self._paused = False
        return None

    def rotate(self, peers: Sequence[P]) -> list[P]:
        """``peers`` in the order to serve them after a pause, starting a new round.

        A round starts with the peer after the one that was being served when
        the throttle last paused (see :meth:`consume`); if that peer is gone,
        or the last round ended without a pause, one further along than the
        last round's start, so every peer gets its turn to go first.
        """
        if not peers:
            return []
        n = len(peers)
        try:
            k = (peers.index(self._cursor) + 1) % n
        except ValueError:
            k = self._turn % n
        self._turn += 1
        order = [*peers[k:], *peers[:k]]
        self._cursor = order[0]
        return order


class Choker(Generic[P]):
    """BEP 3 choking over hashable peer keys; the caller sends the (un)chokes it returns.

    The caller reports interest changes (:meth:`interested`,
    :meth:`not_interested`), departures (:meth:`gone`), and runs a
    :meth:`round` whenever :meth:`due`.  It chokes or unchokes exactly the
    peers it is told to (a closed connection needs no message).
    """

    __slots__ = ("_next", "_optimistic", "_picked", "_rounds", "_unchoked", "interval",
                 "optimistic_rounds", "slots")

    def __init__(self, *, now: float, slots: int = UPLOAD_SLOTS,
                 interval: float = CHOKE_INTERVAL,
                 optimistic_rounds: int = OPTIMISTIC_ROUNDS) -> None:
        """The first round is due ``interval`` seconds after ``now``.

        Raises:
            ValueError: ``slots`` or ``optimistic_rounds`` < 1, or ``interval``
                not a finite number > 0 (the caller's bug).
        """
        if slots < 1 or optimistic_rounds < 1 or not (interval > 0 and math.isfinite(interval)):
            raise ValueError(f"choker: slots {slots} and optimistic_rounds {optimistic_rounds}"
                             f" must be >= 1 and interval {interval} > 0")
        self.slots = slots
        self.interval = float(interval)
        self.optimistic_rounds = optimistic_rounds
        # a dict for its insertion order: rounds choke in a reproducible order
        self._unchoked: dict[P, None] = {}
        self._optimistic: P | None = None
        # peer -> the round it last became the optimistic unchoke; one entry
        # per connected peer at most (gone() removes it), so bounded by the
        # worker's connection limit
        self._picked: dict[P, int] = {}
        self._rounds = 0
        self._next = now + self.interval

    @property
    def unchoked(self) -> KeysView[P]:
        """The peers we have unchoked (a live read-only view)."""
        return self._unchoked.keys()

    @property
    def optimistic(self) -> P | None:
        """The current optimistic unchoke, if any."""
        return self._optimistic

    @property
    def rounds(self) -> int:
        """How many rounds have run."""
        return self._rounds

    @property
    def next_round(self) -> float:
        """When the next round is due (the ``now`` clock's seconds)."""
        return self._next

    def interested(self, peer: P) -> bool:
        """``peer`` became interested.  Returns True: unchoke it now (a slot was free)."""
        if peer in self._unchoked or len(self._unchoked) >= self.slots:
            return False  # already unchoked, or it waits for the next round
        self._unchoked[peer] = None
        return True

    def not_interested(self, peer: P) -> bool:
        """``peer`` lost interest.  Returns True: choke it now (its slot is free)."""
        if peer not in self._unchoked:
            return False
        del self._unchoked[peer]
        return True

    def gone(self, peer: P) -> None:
        """``peer`` disconnected: its slot is free, it is nobody's optimistic unchoke."""
        self._unchoked.pop(peer, None)
        self._picked.pop(peer, None)
        if self._optimistic == peer:
            self._optimistic = None

    def due(self, now: float) -> bool:
        """Whether a :meth:`round` is due at ``now``."""
        return now >= self._next

    def round(self, now: float,
              candidates: Sequence[tuple[P, float]]) -> tuple[list[P], list[P]]:
        """Run a choking round at ``now``; the next is due ``interval`` later.

        Args:
            now: the current time.
            candidates: every connected peer that is interested in us, with its
                rate (bytes per second it sends us while we download; we send
                it once complete).  Ties keep this order.

        Returns:
            (choke, unchoke): the peers to send a choke, and the peers to send
            an unchoke (best first, the optimistic unchoke last).  Afterwards
            :attr:`unchoked` is the best ``slots - 1`` candidates by rate plus
            the optimistic unchoke, one of the others.  It moves every
            ``optimistic_rounds`` rounds (and as soon as it is no longer a
            candidate outside the best) to the candidate outside the best that
            has waited longest for a turn, so each gets one in turn.
        """
        self._next = now + self.interval
        self._rounds += 1
        ranked = sorted(candidates, key=lambda c: c[1], reverse=True)  # stable: ties keep order
        keep = [p for p, _rate in ranked[: self.slots - 1]]
        rest = [p for p, _rate in ranked[self.slots - 1 :]]
        if self._rounds % self.optimistic_rounds == 0 or self._optimistic not in rest:
            # the one that has waited longest for a turn (never: first), ties in
            # rank order; an index cycling with the round count would skip peers
            # (with 3 of them and a move every 3rd round, it is always the first)
            picked = self._picked
            self._optimistic = min(rest, key=lambda p: picked.get(p, -1)) if rest else None
            if self._optimistic is not None:
                picked[self._optimistic] = self._rounds
        if self._optimistic is not None:
            keep.append(self._optimistic)
        kept = dict.fromkeys(keep)
        choke = [p for p in self._unchoked if p not in kept]
        unchoke = [p for p in keep if p not in self._unchoked]
        self._unchoked.clear()  # in place: a view from `unchoked` stays live
        self._unchoked.update(kept)
        return choke, unchoke
