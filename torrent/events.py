"""The event stream of a run: one JSON object per line, for fleets of machines.

Theory of operation
-------------------
:class:`TorrentEvents` belongs to one torrent (its info-hash); the run calls
it at each moment worth reporting, with the wall-clock time ``wall`` (unix
seconds) passed in, and it hands each event, a plain dict, to ``emit``.  It
does no I/O: ``torrent/eventwriter.py`` writes the lines; a test collects the
dicts in a list.  A process serving many torrents keeps one
:class:`TorrentEvents` per info-hash, all emitting into one writer.

Every event has, in this order, ``event`` (its kind, one of
:data:`EVENT_KINDS`), ``time`` (ISO 8601, UTC, milliseconds: e.g.
``2026-12-06T21:53:06.123Z``) and ``info_hash`` (40 hex digits; null only in
the ``error`` and ``stopped`` of a run whose torrent could not be read), then
its own fields:

- ``added``: ``source`` ("torrent" or "magnet"), ``name`` (the magnet's
  ``dn``, or the torrent's name; may be null).
- ``metadata``: the torrent is known: ``name``, ``total_size``,
  ``piece_length``, ``pieces``, ``files``, ``private``.  For a magnet, when
  its metadata arrived (or was found from an earlier run); for a .torrent,
  right after ``added``, so every stream has one.
- ``started``: the workers run: ``seeding``, ``port``, ``workers``,
  ``pieces_resumed``.
- ``progress``: every :data:`PROGRESS_INTERVAL` seconds (``--events-interval``),
  and once more when the run stops: ``bytes_done``, ``bytes_total``,
  ``pieces_verified``, ``pieces_total``, ``downloaded``, ``uploaded`` (this
  run's payload bytes), ``rate_down``, ``rate_up`` (bytes/s), ``peers``,
  ``seeding``.
- ``piece_failed``: a piece failed its hash check: ``piece``, ``peer``
  (``HOST:PORT`` or a web seed's URL; null when several peers sent blocks).
- ``peer_banned``: ``address`` (what the ban covers: the host, ``HOST:PORT`` on
  loopback; a web seed's URL), ``reason``; once per address.
- ``tracker_error``: an announce failed: ``url``, ``message``.
- ``completed``: every piece is verified: ``bytes_total``, ``downloaded``.
- ``error``: the run failed: ``exit_code`` (the CLI's), ``message``.
- ``stopped``: always the last line of a run: ``reason`` ("complete",
  "seed_time", "seed_ratio", "interrupted", "error"), ``exit_code``.

Free text (messages, reasons, names, URLs) is cut to :data:`MAX_TEXT`
characters, so a line stays small whatever a tracker or peer sent.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .snapshot import TorrentSnapshot

__all__ = [
    "EVENT_KINDS",
    "MAX_REMEMBERED_BANS",
    "MAX_TEXT",
    "PROGRESS_INTERVAL",
    "Event",
    "TorrentEvents",
    "encode_line",
    "iso_time",
    "make_event",
]

Event = dict[str, Any]

EVENT_KINDS = ("added", "metadata", "started", "progress", "piece_failed", "peer_banned",
               "tracker_error", "completed", "error", "stopped")
#: Seconds between two ``progress`` events: often enough for a dashboard, rare
#: enough that a fleet of thousands of runs is a trickle of lines.
PROGRESS_INTERVAL = 5.0
#: Characters of free text kept in an event (a tracker's failure reason is a
#: remote string of any length; error messages may quote input).
MAX_TEXT = 300
#: Banned addresses remembered to report each ban once: a run knows at most
#: ``coordinator.MAX_KNOWN_PEERS`` dialled peers; past the bound a ban of an
#: address not remembered may be reported twice, never lost.
MAX_REMEMBERED_BANS = 10_000


def iso_time(wall: float) -> str:
    """Unix seconds as ISO 8601 UTC with milliseconds (``2026-12-06T21:53:06.123Z``)."""
    t = datetime.fromtimestamp(wall, UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _clip(text: str | None) -> str | None:
    if text is None:
        return None
    text = str(text).replace("\n", " ")
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


def make_event(kind: str, info_hash: str | None, wall: float, **fields: Any) -> Event:
    """One event: ``event``, ``time``, ``info_hash``, then ``fields`` (free text clipped).

    Raises:
        ValueError: ``kind`` is not one of :data:`EVENT_KINDS` (a bug of ours).
    """
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    ev: Event = {"event": kind, "time": iso_time(wall), "info_hash": info_hash}
    for k, v in fields.items():
        ev[k] = _clip(v) if isinstance(v, str) else v
    return ev


def encode_line(ev: Event) -> bytes:
    """The event as one line of ASCII JSON, newline included (no raw newline inside)."""
    return (json.dumps(ev, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
            + "\n").encode("ascii")


class TorrentEvents:
    """The events of one torrent, handed to ``emit`` as they happen.

    Args:
        info_hash: hex, the key of every line.
        emit: receives each event (a dict; see :func:`make_event`).
        progress_interval: seconds between ``progress`` events.
    """

    def __init__(self, info_hash: str, emit: Callable[[Event], None], *,
                 progress_interval: float = PROGRESS_INTERVAL) -> None:
        self.info_hash = info_hash
        self.emit = emit
        self.progress_interval = progress_interval
        self._last_progress: float | None = None
        self._banned: set[str] = set()
        #: ``completed`` was emitted (it is, once per run)
        self.completed_told = False
        self._stopped = False

    def _put(self, kind: str, wall: float, **fields: Any) -> None:
        self.emit(make_event(kind, self.info_hash, wall, **fields))

    def added(self, wall: float, *, source: str, name: str | None) -> None:
        self._put("added", wall, source=source, name=name)

    def metadata(self, wall: float, *, name: str, total_size: int, piece_length: int,
                 pieces: int, files: int, private: bool) -> None:
        self._put("metadata", wall, name=name, total_size=total_size,
                  piece_length=piece_length, pieces=pieces, files=files, private=private)

    def started(self, wall: float, *, seeding: bool, port: int, workers: int,
                pieces_resumed: int) -> None:
        self._put("started", wall, seeding=seeding, port=port, workers=workers,
                  pieces_resumed=pieces_resumed)

    def progress_due(self, wall: float) -> bool:
        """Whether a ``progress`` event is due at ``wall`` (the clock going back: yes)."""
        last = self._last_progress
        return last is None or wall - last >= self.progress_interval or wall < last

    def progress(self, wall: float, snap: TorrentSnapshot) -> None:
        """A ``progress`` event now (see :meth:`progress_due`)."""
        self._last_progress = wall
        self._put("progress", wall, bytes_done=snap.bytes_done, bytes_total=snap.bytes_total,
                  pieces_verified=snap.pieces_verified, pieces_total=snap.pieces_total,
                  downloaded=snap.downloaded, uploaded=snap.uploaded,
                  rate_down=round(snap.rate_down), rate_up=round(snap.rate_up),
                  peers=snap.peers, seeding=snap.seeding)

    def piece_failed(self, wall: float, piece: int, peer: str | None) -> None:
        self._put("piece_failed", wall, piece=piece, peer=peer or None)

    def peer_banned(self, wall: float, address: str, reason: str) -> None:
        """A ban, reported once per address."""
        if address in self._banned:
            return
        if len(self._banned) < MAX_REMEMBERED_BANS:
            self._banned.add(address)
        self._put("peer_banned", wall, address=address, reason=reason)

    def tracker_error(self, wall: float, url: str, message: str) -> None:
        self._put("tracker_error", wall, url=url, message=message)

    def completed(self, wall: float, snap: TorrentSnapshot) -> None:
        """``completed``, once per run."""
        if self.completed_told:
            return
        self.completed_told = True
        self._put("completed", wall, bytes_total=snap.bytes_total, downloaded=snap.downloaded)

    def error(self, wall: float, exit_code: int, message: str) -> None:
        self._put("error", wall, exit_code=exit_code, message=message)

    def stopped(self, wall: float, reason: str, exit_code: int) -> None:
        """``stopped``, once: the last line of the run."""
        if self._stopped:
            return
        self._stopped = True
        self._put("stopped", wall, reason=reason, exit_code=exit_code)
