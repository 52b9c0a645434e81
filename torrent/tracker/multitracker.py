"""Which tracker to announce to, when, and with which event (BEP 12), sans-IO.

Theory of operation. A torrent's trackers come in tiers (BEP 12
"announce-list"); each tier is shuffled once when the set is built. One
announce "round" walks the tiers in order and, inside a tier, the trackers in
their current order, skipping trackers still in backoff, until one answers.
The one that answered moves to the front of its tier, so the next round asks
it first. A failed tracker is put in backoff (15 s, doubling, capped at
BACKOFF_CAP) and the round goes on with the next tracker *at once*: a dead
first tier costs one timeout, not one interval.

After a success the next round is due ``interval`` seconds later (clamped to
[MIN_ANNOUNCE_INTERVAL, MAX_ANNOUNCE_INTERVAL]). If every tracker is in
backoff the round waits for the earliest backoff to end.

Events (BEP 3): each tracker gets ``started`` on its first announce (until
one succeeds), ``completed`` is sent once, on the first announce after
:meth:`TrackerSet.set_completed` (which brings that announce forward, but not
before the last tracker's ``min interval``), and :meth:`TrackerSet.stopping`
lists a ``stopped`` announce for each tracker that knows about us.

Private torrents (BEP 27): the caller passes only the torrent's own trackers
(and must not add DHT/PEX peers); nothing here adds trackers from elsewhere.

Nothing here reads a clock or sleeps: every method takes ``now`` (seconds, any
monotonic origin), and the async runner in ``client.py`` does the waiting.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import TrackerError
from .common import AnnounceResult, Event

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_CAP",
    "MAX_ANNOUNCE_INTERVAL",
    "MAX_TRACKERS",
    "MIN_ANNOUNCE_INTERVAL",
    "SUPPORTED_SCHEMES",
    "Announce",
    "TrackerSet",
    "TrackerState",
]

#: First backoff after a tracker fails, in seconds; doubles with each failure
#: in a row. 15 s matches BEP 15's first UDP timeout.
BACKOFF_BASE = 15.0

#: Longest backoff (seconds). Why: a tracker down for a while should still be
#: retried within the hour it comes back.
BACKOFF_CAP = 3600.0

#: Shortest interval we honour (seconds). Why: a tracker saying "interval 0"
#: must not make us hammer it (or anyone) in a loop.
MIN_ANNOUNCE_INTERVAL = 30.0

#: Longest interval we honour (seconds). Why: a tracker saying "interval 2**31"
#: would otherwise cut us off from new peers for decades.
MAX_ANNOUNCE_INTERVAL = 4 * 3600.0

#: Most trackers kept from one torrent. Why: announce lists are user input;
#: real ones have a few dozen entries at most.
MAX_TRACKERS = 200

#: URL schemes we have clients for; other trackers (wss://, ...) are skipped.
SUPPORTED_SCHEMES = ("http", "https", "udp")


@dataclass(frozen=True, slots=True)
class Announce:
    """One announce to carry out: to ``url`` with ``event`` (None: regular)."""

    url: str
    event: str | None
    tracker_id: bytes | None = None


@dataclass(slots=True)
class TrackerState:
    """What we know about one tracker (read it; only TrackerSet changes it)."""

    url: str
    tier: int
    failures: int = 0  # in a row
    retry_at: float = 0.0  # backoff: not before this time
    started: bool = False  # a "started" announce succeeded
    tracker_id: bytes | None = None
    last_error: str | None = None
    last_success: float | None = None
    seeders: int | None = None
    leechers: int | None = None


class TrackerSet:
    """BEP 12 tiers of trackers and their schedule.

    Args:
        tiers: tracker URLs, tier by tier, in the torrent's order. Duplicate
            URLs, empty tiers and unsupported schemes are dropped.
        rng: random source for the one-time shuffle of each tier (inject a
            seeded ``random.Random`` in tests).
        backoff_base, backoff_cap: backoff after failures, seconds.
        min_interval_floor, max_interval: clamp for the tracker's interval.

    Raises:
        ValueError: no usable tracker at all.
    """

    def __init__(
        self,
        tiers: Iterable[Iterable[str]],
        *,
        rng: random.Random | None = None,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
        min_interval_floor: float = MIN_ANNOUNCE_INTERVAL,
        max_interval: float = MAX_ANNOUNCE_INTERVAL,
    ) -> None:
        rng = rng if rng is not None else random.Random()
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.min_interval_floor = min_interval_floor
        self.max_interval = max_interval
        #: URLs left out at construction, with the reason (for a warning).
        self.skipped: list[tuple[str, str]] = []
        seen: set[str] = set()
        self._tiers: list[list[TrackerState]] = []
        count = 0
        for tier in tiers:
            urls: list[str] = []
            for url in tier:
                url = url.strip()
                scheme = url.split(":", 1)[0].lower() if ":" in url else ""
                if scheme not in SUPPORTED_SCHEMES:
                    self.skipped.append((url, "unsupported scheme"))
                elif url in seen:
                    continue
                elif count >= MAX_TRACKERS:
                    self.skipped.append((url, f"more than {MAX_TRACKERS} trackers"))
                else:
                    seen.add(url)
                    urls.append(url)
                    count += 1
            if urls:
                rng.shuffle(urls)  # BEP 12: shuffle each tier once
                index = len(self._tiers)
                self._tiers.append([TrackerState(u, index) for u in urls])
        if not self._tiers:
            raise ValueError("no usable tracker URL")
        self._by_url = {t.url: t for tier in self._tiers for t in tier}
        self._next_round = 0.0  # the next regular announce is due at this time
        self._in_flight: Announce | None = None
        self._completed_pending = False
        self._last_success_at: float | None = None
        self._min_interval = 0.0

    @classmethod
    def from_metainfo(
        cls,
        announce: str | None,
        announce_list: Sequence[Sequence[str]] | None,
        **kwargs: object,
    ) -> TrackerSet:
        """Build from a torrent's "announce" and "announce-list" (BEP 12: the
        list, when present and non-empty, replaces "announce")."""
        if announce_list and any(announce_list):
            return cls(announce_list, **kwargs)  # type: ignore[arg-type]
        if announce:
            return cls([[announce]], **kwargs)  # type: ignore[arg-type]
        raise ValueError("torrent has no tracker")

    # ------------------------------------------------------------ inspection

    @property
    def completed_pending(self) -> bool:
        """A 'completed' announce is owed and not yet answered."""
        return self._completed_pending

    @property
    def tiers(self) -> tuple[tuple[str, ...], ...]:
        """The current order: tiers, and trackers within each tier."""
        return tuple(tuple(t.url for t in tier) for tier in self._tiers)

    def state(self, url: str) -> TrackerState:
        """The state of one tracker (KeyError if unknown)."""
        return self._by_url[url]

    # ------------------------------------------------------------ scheduling

    def _event_for(self, t: TrackerState) -> str | None:
        if not t.started:
            return Event.STARTED.value
        if self._completed_pending:
            return Event.COMPLETED.value
        return None

    def _candidate(self, now: float) -> TrackerState | None:
        for tier in self._tiers:
            for t in tier:
                if t.retry_at <= now:
                    return t
        return None

    def due(self, now: float) -> list[Announce]:
        """The announces to make now: at most one (BEP 12 asks the tiers one
        tracker at a time), none while one is in flight or before it is due.

        Every returned announce must be answered with :meth:`on_success` or
        :meth:`on_failure`.
        """
        if self._in_flight is not None or now < self._next_round:
            return []
        t = self._candidate(now)
        if t is None:
            return []
        self._in_flight = Announce(t.url, self._event_for(t), t.tracker_id)
        return [self._in_flight]

    def next_announce_at(self, now: float) -> float | None:
        """When :meth:`due` will next return something (may be <= now);
        None while an announce is in flight."""
        if self._in_flight is not None:
            return None
        earliest = min(t.retry_at for t in self._by_url.values())
        return max(self._next_round, earliest)

    def _finish(self, announce: Announce) -> TrackerState:
        if self._in_flight is None or announce != self._in_flight:
            raise RuntimeError(f"{announce!r} was not handed out by due()")
        self._in_flight = None
        return self._by_url[announce.url]

    def on_success(self, announce: Announce, result: AnnounceResult, now: float) -> str | None:
        """Record a successful announce.

        Returns:
            A warning to show (the tracker's "warning message"), or None.
        """
        t = self._finish(announce)
        t.failures = 0
        t.retry_at = 0.0
        t.last_error = None
        t.last_success = now
        t.seeders, t.leechers = result.complete, result.incomplete
        if result.tracker_id is not None:
            t.tracker_id = result.tracker_id
        if announce.event == Event.STARTED:
            t.started = True
        elif announce.event == Event.COMPLETED:
            self._completed_pending = False
        tier = self._tiers[t.tier]
        tier.remove(t)
        tier.insert(0, t)  # BEP 12: a tracker that answered goes first in its tier
        interval = min(max(float(result.interval), self.min_interval_floor), self.max_interval)
        min_interval = float(result.min_interval or 0)
        self._min_interval = min(max(min_interval, self.min_interval_floor), interval)
        self._last_success_at = now
        self._next_round = now + interval
        if result.warning:
            return f"tracker {t.url} warns: {result.warning}"
        return None

    def on_failure(self, announce: Announce, error: TrackerError | str, now: float) -> str:
        """Record a failed announce; put the tracker in backoff.

        Returns:
            A warning to show (names the tracker and the error).
        """
        t = self._finish(announce)
        t.failures += 1
        delay = min(self.backoff_base * 2 ** min(t.failures - 1, 30), self.backoff_cap)
        t.retry_at = now + delay
        t.last_error = str(error)
        return f"tracker {t.url} failed ({error}); next try in {delay:.0f}s"

    def set_completed(self, now: float, *, final: bool = False) -> None:
        """The download completed: send ``completed`` once, as soon as the
        last answer's min interval allows (``final``: at once, because we are
        about to leave; 'stopped' follows right after)."""
        self._completed_pending = True
        if final:
            self._next_round = now
        elif self._last_success_at is not None:
            soon = max(now, self._last_success_at + self._min_interval)
            self._next_round = min(self._next_round, soon)

    def stopping(self) -> list[Announce]:
        """``stopped`` announces for every tracker that saw our ``started``."""
        return [
            Announce(t.url, Event.STOPPED.value, t.tracker_id)
            for tier in self._tiers
            for t in tier
            if t.started
        ]
