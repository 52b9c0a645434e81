"""Trackers: announce over HTTP (BEP 3, 7, 23) and UDP (BEP 15, 41), BEP 12 tiers.

Modules, from the bottom up:

- :mod:`.common`: AnnounceParams, AnnounceResult, Event, peer address checks.
- :mod:`.http`, :mod:`.udp`: sans-IO codecs (bytes in, results or
  TrackerError out; no sockets, no clock).
- :mod:`.multitracker`: :class:`TrackerSet`, the sans-IO BEP 12 schedule
  (which tracker, when, which event; backoff; interval).
- :mod:`.client`: the asyncio side: ``announce_http``, ``announce_udp``,
  ``announce``, ``make_announce_fn`` and ``TrackerRunner``. Import it
  explicitly; this package only re-exports the sans-IO layer so that the
  engine can use it without pulling in asyncio.

Private torrents (BEP 27): pass only the torrent's own trackers.
"""

from __future__ import annotations

from .common import AnnounceParams, AnnounceResult, Event, Peer
from .multitracker import Announce, TrackerSet

__all__ = ["Announce", "AnnounceParams", "AnnounceResult", "Event", "Peer", "TrackerSet"]
