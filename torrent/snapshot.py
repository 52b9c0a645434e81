"""A torrent's live numbers as one frozen record: what the event stream and the metrics read.

The coordinator keeps its workers' last :class:`~torrent.ipc.Stats` (one dict
each, sent every worker tick) and its own piece counts; :func:`take` turns
them into a :class:`TorrentSnapshot` on demand.  ``torrent/events.py`` (the
``progress`` lines) and ``torrent/metrics.py`` (the Prometheus collector)
both read snapshots and never the coordinator itself, so a process serving
several torrents keys one snapshot source per info-hash and reuses both.
Sans-IO: numbers in, a record out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["STAGES", "TorrentSnapshot", "WorkerSnapshot", "payload_of", "take"]

#: The busy counters of a worker, by stage (the keys ``busy_<stage>`` of its
#: stats): SHA-1 hashing and writing pieces on its I/O thread, ``fdatasync``
#: on its sync thread (torrent/_io.pyx ``IOThread.busy_seconds``).
STAGES = ("hash", "write", "sync")


@dataclass(frozen=True, slots=True)
class WorkerSnapshot:
    """One worker's numbers: seconds busy per stage, its arena slots."""

    worker: int
    alive: bool
    busy: tuple[tuple[str, float], ...]
    slots_total: int
    slots_free: int


@dataclass(frozen=True, slots=True)
class TorrentSnapshot:
    """One torrent's numbers at one moment.

    ``bytes_done`` counts every verified piece (resumed ones included);
    ``downloaded`` only the payload verified in this run, ``uploaded`` the
    payload sent in this run. Rates are the workers' smoothed ones (bytes/s).
    """

    info_hash: str
    bytes_total: int
    bytes_done: int
    pieces_total: int
    pieces_verified: int
    downloaded: int
    uploaded: int
    rate_down: float
    rate_up: float
    peers: int
    hash_failures: int
    bans: int
    seeding: bool
    workers: tuple[WorkerSnapshot, ...] = ()

    @property
    def slots_total(self) -> int:
        return sum(w.slots_total for w in self.workers if w.alive)

    @property
    def slots_in_use(self) -> int:
        return sum(w.slots_total - w.slots_free for w in self.workers if w.alive)


def payload_of(pieces: Sequence[int], piece_length: int, total_size: int,
               num_pieces: int) -> int:
    """Bytes of the torrent's ``pieces`` (distinct indices; the last piece may be short)."""
    short = num_pieces * piece_length - total_size if num_pieces - 1 in pieces else 0
    return len(pieces) * piece_length - short


def take(*, info_hash: str, total_size: int, piece_length: int, pieces_total: int,
         pieces_verified: int, last_verified: bool, seeding: bool,
         downloaded: int | None = None, slots_per_worker: int = 0,
         workers: Iterable[tuple[int, bool, Mapping[str, Any]]],
         banned: Iterable[str] = ()) -> TorrentSnapshot:
    """A snapshot from the coordinator's counts and its workers' last stats.

    Args:
        info_hash: hex.
        total_size, piece_length, pieces_total: the torrent's.
        pieces_verified: verified pieces, resumed ones included.
        last_verified: the (possibly short) last piece is among them.
        seeding: serving only, or seeding after completion.
        downloaded: payload verified in this run, each piece once (None: the sum of
            the workers' counts).
        slots_per_worker: the arena's slots of each worker (all free until its
            first stats say otherwise).
        workers: ``(worker id, alive, last stats dict)`` of each worker.
        banned: peers the coordinator banned itself (joined with the workers' lists).
    """
    done = pieces_verified * piece_length
    if last_verified and pieces_total:
        done -= pieces_total * piece_length - total_size  # the short last piece
    ws = []
    worker_bytes = uploaded = peers = failures = 0
    down = up = 0.0
    bans = set(banned)
    for wid, alive, s in workers:
        worker_bytes += int(s.get("bytes", 0))
        uploaded += int(s.get("uploaded", 0))
        failures += int(s.get("hash_failures", 0))
        bans.update(s.get("banned", ()))
        if alive:
            peers += int(s.get("connected", 0))
            down += float(s.get("rate", 0.0))
            up += float(s.get("up_rate", 0.0))
        ws.append(WorkerSnapshot(
            worker=wid, alive=alive,
            busy=tuple((st, float(s.get(f"busy_{st}", 0.0))) for st in STAGES),
            slots_total=slots_per_worker,
            slots_free=int(s.get("slots_free", slots_per_worker))))
    return TorrentSnapshot(
        info_hash=info_hash, bytes_total=total_size, bytes_done=max(0, min(done, total_size)),
        pieces_total=pieces_total, pieces_verified=pieces_verified,
        downloaded=worker_bytes if downloaded is None else downloaded,
        uploaded=uploaded, rate_down=down, rate_up=up, peers=peers, hash_failures=failures,
        bans=len(bans), seeding=seeding, workers=tuple(ws))
