"""What a run is told to do: one frozen options object, built once, handed down.

The CLI (or a library caller) builds one :class:`Options`; the coordinator
keeps it, and every worker receives it (pickled) inside its
:class:`~torrent.worker.WorkerConfig`.  No layer re-lists the settings as
keyword arguments of its own.  Values are checked once, here, when the
object is built: a bad one is a :class:`~torrent.errors.UsageError`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .errors import UsageError

__all__ = ["DEFAULT_MAX_PEERS", "DEFAULT_STALL_TIMEOUT", "REQUEST_TIMEOUT", "Options"]

#: Default maximum number of connected peers (over all workers).
DEFAULT_MAX_PEERS = 200
#: Give up after this long without progress (seconds); 0 never gives up.
DEFAULT_STALL_TIMEOUT = 120.0
#: A request unanswered this long is re-issued elsewhere (libtorrent's
#: request_timeout is 60 s; loopback and LAN peers answer in milliseconds,
#: and a peer silently dropping requests must not stall the tail).
REQUEST_TIMEOUT = 10.0


def _finite_non_negative(name: str, value: float | None) -> None:
    if value is not None and not (isinstance(value, int | float) and math.isfinite(value)
                                  and value >= 0):
        raise UsageError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """Settings of a download or a seed (every field has the CLI's default).

    Attributes:
        workers: worker processes; None means the CPUs this process may use.
        peers: peers to dial besides the trackers' (``(host, port)``).
        port: the TCP port to accept peers on (0: a free one).
        bind: the address to listen on and connect from.
        max_peers: connected peers at most, over all workers.
        stall_timeout: give up after this many seconds without progress (0: never).
        recheck: ignore the resume journal and hash what is on disk.
        use_trackers: announce to the torrent's trackers.
        arena_bytes: the shared arena's size (None: from the free memory).
        request_timeout: re-issue a request unanswered this long (seconds).
        download_limit: bytes per second over all workers (0: unlimited).
        upload_limit: bytes per second uploaded over all workers (0: unlimited).
        seed_time: once complete, keep serving for this many seconds.
        seed_ratio: once complete, serve until uploaded = ratio x the torrent's size.
        direct_io: write whole pages of verified pieces with ``O_DIRECT``.
        check: (seeding) hash the data first and serve only good pieces.
    """

    workers: int | None = None
    peers: tuple[tuple[str, int], ...] = ()
    port: int = 0
    bind: str = "0.0.0.0"
    max_peers: int = DEFAULT_MAX_PEERS
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    recheck: bool = False
    use_trackers: bool = True
    arena_bytes: int | None = None
    request_timeout: float = REQUEST_TIMEOUT
    download_limit: int = 0
    upload_limit: int = 0
    seed_time: float | None = None
    seed_ratio: float | None = None
    direct_io: bool = True
    check: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "peers", tuple((str(h), int(p)) for h, p in self.peers))
        if self.workers is not None and not 1 <= self.workers <= 1024:
            raise UsageError(f"workers must be between 1 and 1024, got {self.workers}")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"port must be between 0 and 65535, got {self.port}")
        if self.max_peers < 1:
            raise UsageError(f"max_peers must be at least 1, got {self.max_peers}")
        for host, port in self.peers:
            if not 1 <= port <= 65535:
                raise UsageError(f"peer {host}:{port}: port out of range")
        for name in ("stall_timeout", "seed_time", "seed_ratio"):
            _finite_non_negative(name, getattr(self, name))
        if not (math.isfinite(self.request_timeout) and self.request_timeout > 0):
            raise UsageError(f"request_timeout must be a positive number, "
                             f"got {self.request_timeout!r}")
        for name in ("download_limit", "upload_limit"):
            if getattr(self, name) < 0:
                raise UsageError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.arena_bytes is not None and self.arena_bytes <= 0:
            raise UsageError(f"arena_bytes must be positive, got {self.arena_bytes}")

    def replace(self, **changes: Any) -> Options:
        """A copy with ``changes`` (checked like a new object).

        Raises:
            TypeError: an unknown setting (a bug of the caller).
            UsageError: a bad value.
        """
        return dataclasses.replace(self, **changes)

    @property
    def seed_after(self) -> bool:
        """Keep serving after completion (a seeding limit is set)."""
        return self.seed_time is not None or self.seed_ratio is not None
