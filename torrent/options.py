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
import os
from dataclasses import dataclass
from typing import Any, Final

from .errors import UsageError
from .events import PROGRESS_INTERVAL as EVENTS_PROGRESS_INTERVAL
from .peeraddr import canonical_ip
from .selection import check_shard
from .webseed import MAX_WEB_SEEDS, checked_url

__all__ = [
    "DEFAULT_MAX_HALF_OPEN",
    "DEFAULT_MAX_PEERS",
    "DEFAULT_STALL_TIMEOUT",
    "ENCRYPTION_MODES",
    "FD_OTHER",
    "FD_RESERVE",
    "HANDSHAKE_TIMEOUT",
    "MAX_CONNECTIONS_CAP",
    "NO_DHT_ENV",
    "REQUEST_TIMEOUT",
    "Options",
    "default_max_connections",
    "dht_wanted",
    "dial_order",
    "share",
]

#: Default maximum number of connected peers (over all workers).
DEFAULT_MAX_PEERS = 200
#: Give up after this long without progress (seconds); 0 never gives up.
DEFAULT_STALL_TIMEOUT = 120.0
#: Torrents of one run downloading at once at most (``--max-active``; torrent/engine.py):
#: each holds a window of the arena and a share of the connections.
MAX_ACTIVE = 64
#: ... and by default (aria2 runs 5 at once; 4 keeps each torrent's arena window at a
#: quarter of the run's, 32 slots of 1 MiB per worker on two cores).
DEFAULT_MAX_ACTIVE = 4
#: A request unanswered this long is re-issued elsewhere (libtorrent's
#: request_timeout is 60 s; loopback and LAN peers answer in milliseconds,
#: and a peer silently dropping requests must not stall the tail).
REQUEST_TIMEOUT = 10.0
#: The default cap on connections over all workers, when the fd limit allows
#: more: every connection may come to hold a receive buffer of up to 1 MiB
#: and a share of the worker's time, and a bulk download gains nothing past a
#: few hundred peers (libtorrent's connections_limit is 200, Transmission's
#: peer-limit-global 200; a server seeding to many peers can raise it).
MAX_CONNECTIONS_CAP = 1000
#: Descriptors a worker keeps for other things than peers and data files: its
#: control pipe, eventfd, listening socket and the loop's own.
FD_OTHER = 64
#: Descriptors a worker keeps for other things than peers under a limit of 1,024
#: or more: its data files (``storage.open_fd_budget``: at most 256, the O_DIRECT
#: ones included; a quarter of a lower limit) and :data:`FD_OTHER`; the rest of
#: the fd limit may go to connections.
FD_RESERVE = 256 + FD_OTHER
#: Connections still in their handshake (accepted or dialled, no valid
#: handshake yet) at most, over all workers; past it, incoming ones are
#: refused at once.  An honest peer handshakes within a round trip, so
#: hundreds at a time only happen in a flood, and each one costs a receive
#: buffer (4-16 KiB) and a connection object until the handshake time-out.
DEFAULT_MAX_HALF_OPEN = 256
#: A connection without a valid handshake this long after it was made is
#: dropped: libtorrent's handshake_timeout, 10 s.  A handshake takes one round
#: trip (a few with encryption), so 10 s is ample even over a satellite link,
#: and it is how long a connection that sends nothing, or trickles bytes,
#: holds a descriptor and a buffer: 20 s (the earlier value) let a flood hold
#: twice as many.
HANDSHAKE_TIMEOUT = 10.0

#: ``--encryption`` (MSE/PE), in libtorrent's terms:
#:
#: - ``enabled``: incoming connections may be plaintext or MSE; outgoing ones
#:   try MSE and, when the peer drops it before its handshake, plaintext once
#:   on a new connection (:func:`dial_order`).
#: - ``required`` (libtorrent's ``pe_forced`` with its default
#:   ``allowed_enc_level`` ``pe_both``): every handshake is MSE, both ways; a
#:   plaintext one is dropped and never retried. After the handshake the
#:   payload is plaintext when the peer offers or accepts it (the handshake is
#:   already obfuscated, and RC4 costs a pass over every byte), RC4 when the
#:   peer insists.
#: - ``disabled``: never offers MSE, and refuses it on incoming connections.
ENCRYPTION_MODES = ("enabled", "required", "disabled")

#: ``enabled``'s order for outgoing connections: MSE first (True), then
#: plaintext (False), as libtorrent and Transmission dial. Measured on
#: 127.0.0.1 against the three common clients at their defaults
#: (``bench/mse_dial_order.py``, numbers in bench/README.md): transmission-cli
#: (encryption "preferred") closes a plaintext handshake, so plaintext-first
#: took 1.46 s to its handshake against 0.96 s; libtorrent answers both (MSE
#: costs it 0.9 ms more) and aria2c too (MSE 42 ms more). MSE first is the
#: fastest overall and has the best worst case; a plaintext-only peer costs
#: one refused connection.
_ENABLED_DIAL_ORDER = (True, False)


def dial_order(encryption: str) -> tuple[bool, ...]:
    """The kinds of handshake an outgoing connection tries, in order (True: MSE/PE).

    A second entry is the fallback: dialled once, on a new connection, when
    the peer closed the first before its handshake.
    """
    if encryption == "required":
        return (True,)
    if encryption == "disabled":
        return (False,)
    return _ENABLED_DIAL_ORDER


#: ``FASTTORRENT_NO_DHT=1`` in the environment keeps the DHT off unless the
#: caller names its bootstrap nodes (``--dht-bootstrap``): the test suite sets
#: it, so that no test, in-process or a child, can reach the public routers.
NO_DHT_ENV: Final = "FASTTORRENT_NO_DHT"


def dht_wanted(opts: Options, *, private: bool = False) -> bool:
    """Whether a run with ``opts`` runs a DHT node: asked for, the torrent not private
    (BEP 27), and not turned off by :data:`NO_DHT_ENV` without bootstrap nodes named.
    (Here, not in :mod:`torrent.dht.service`: a run without a node never imports it.)"""
    if not opts.dht or private:
        return False
    return opts.dht_bootstrap is not None or os.environ.get(NO_DHT_ENV, "") in ("", "0")


def default_max_connections(workers: int, fd_soft_limit: int) -> int:
    """The default connection cap over ``workers`` worker processes.

    Each worker is a process with its own descriptor table, so each may use
    its ``fd_soft_limit`` less its data files' budget
    (``storage.open_fd_budget``) and :data:`FD_OTHER` for peers (1,024 or
    more: less :data:`FD_RESERVE`); the total is capped at
    :data:`MAX_CONNECTIONS_CAP`, and is at least one per worker.
    """
    from .storage import open_fd_budget

    per_worker = max(1, fd_soft_limit - open_fd_budget(fd_soft_limit) - FD_OTHER)
    return max(workers, min(MAX_CONNECTIONS_CAP, workers * per_worker))


def share(total: int, workers: int, wid: int) -> int:
    """Worker ``wid``'s part of a per-run ``total`` split evenly (at least 1)."""
    return max(1, total // workers + (1 if wid < total % workers else 0))


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
        bind: the address to listen on: an IPv4 or IPv6 address (``"::1"``),
            or ``""`` (the default) for every address of both families (an
            IPv4 and an IPv6 socket per worker; IPv4 alone where the machine
            has no IPv6).  ``"0.0.0.0"`` is every IPv4 address only, ``"::"``
            every IPv6 address only.
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
        max_connections: open connections at most (incoming, outgoing and
            half-open), over all workers, split evenly between them; None:
            from the fd limit (:func:`default_max_connections`), resolved
            once by :func:`~torrent.coordinator.download` /
            :func:`~torrent.coordinator.seed`.
        max_half_open: connections still in their handshake at most, over all
            workers (split evenly); past it, incoming ones are refused.
        handshake_timeout: drop a connection without a valid handshake this
            many seconds after it was made.
        save_torrent: (download) write the torrent's .torrent file here once
            its metadata is known (for a magnet: with the magnet's trackers).
        fork_workers: start the workers as forks of this process, ready in
            milliseconds instead of an interpreter start (about 0.2 s each),
            when it runs one thread (:func:`torrent.launch.fork_child`). For a
            process that owns everything in it, as the CLI's does: the
            workers close every descriptor but stdio. False: fresh interpreters.
        encryption: MSE/PE, one of :data:`ENCRYPTION_MODES` (``enabled``,
            ``required``, ``disabled``).
        dht: run a Mainline DHT node (BEP 5) as a peer source and announce
            to it; never for a private torrent (BEP 27).
        dht_bootstrap: DHT nodes to start from (``(host, port)``); None: the
            well-known routers (``torrent.dht.service.DEFAULT_BOOTSTRAP``).
        state_dir: where the DHT's routing table and node id are kept
            between runs; None: ``$XDG_CACHE_HOME/fasttorrent`` (else
            ``~/.cache/fasttorrent``).
        events: write the run's event stream (JSON lines, torrent/events.py)
            to this file (appended to), or to stdout for ``-``; None: none.
        events_interval: seconds between two ``progress`` events.
        metrics_listen: serve Prometheus metrics (``GET /metrics``) at
            ``HOST:PORT`` (``PORT`` alone: on 127.0.0.1) while the run goes on.
        select: (download) the indices of the files to download, as
            ``fasttorrent info --json`` numbers them (pads included, as
            libtorrent numbers them); None: every file, or the magnet's
            ``so=``, or the selection a resumed run saved.
        include, exclude: (download) globs on the files' paths in the torrent
            (``fnmatch``): a file is downloaded if it matches any ``include``
            (or none is given) and no ``exclude``; see ``torrent/selection.py``.
        select_only: a magnet's BEP 53 ``so=`` indices, used when ``select`` is None.
        shard: (download) ``(index, count)``, 0-based: fetch only shard
            ``index`` of ``count`` contiguous ranges of the pieces.
    """

    workers: int | None = None
    peers: tuple[tuple[str, int], ...] = ()
    port: int = 0
    bind: str = ""
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
    max_connections: int | None = None
    max_half_open: int = DEFAULT_MAX_HALF_OPEN
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    save_torrent: str | None = None
    fork_workers: bool = False
    encryption: str = "enabled"
    dht: bool = True
    dht_bootstrap: tuple[tuple[str, int], ...] | None = None
    state_dir: str | None = None
    web_seeds: tuple[str, ...] = ()
    events: str | None = None
    events_interval: float = EVENTS_PROGRESS_INTERVAL
    metrics_listen: str | None = None
    select: tuple[int, ...] | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    select_only: tuple[int, ...] = ()
    shard: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "peers", tuple((str(h), int(p)) for h, p in self.peers))
        if self.bind != "":
            text = str(self.bind).strip()
            if text.startswith("[") and text.endswith("]"):  # [::1], as in a URL
                text = text[1:-1]
            ip = canonical_ip(text)
            if ip is None:
                raise UsageError(f"bind must be an IPv4 or IPv6 address, got {self.bind!r:.60}")
            object.__setattr__(self, "bind", ip)
        if self.dht_bootstrap is not None:
            object.__setattr__(self, "dht_bootstrap",
                               tuple((str(h), int(p)) for h, p in self.dht_bootstrap))
            for host, port in self.dht_bootstrap:
                if not 1 <= port <= 65535:
                    raise UsageError(f"DHT bootstrap node {host}:{port}: port out of range")
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
        if self.max_connections is not None and self.max_connections < 1:
            raise UsageError(f"max_connections must be at least 1, got {self.max_connections}")
        if self.max_half_open < 1:
            raise UsageError(f"max_half_open must be at least 1, got {self.max_half_open}")
        if not (math.isfinite(self.handshake_timeout) and self.handshake_timeout > 0):
            raise UsageError(f"handshake_timeout must be a positive number, "
                             f"got {self.handshake_timeout!r}")
        if self.encryption not in ENCRYPTION_MODES:
            raise UsageError(f"encryption must be one of {', '.join(ENCRYPTION_MODES)}, "
                             f"got {self.encryption!r}")
        object.__setattr__(self, "web_seeds", tuple(str(u) for u in self.web_seeds))
        if len(self.web_seeds) > MAX_WEB_SEEDS:
            raise UsageError(f"at most {MAX_WEB_SEEDS} web seeds, got {len(self.web_seeds)}")
        for url in self.web_seeds:
            if checked_url(url) is None:
                raise UsageError(f"web seed {url[:100]!r}: expected an http:// or https:// URL")
        if not (math.isfinite(self.events_interval) and self.events_interval > 0):
            raise UsageError(f"events_interval must be a positive number of seconds, "
                             f"got {self.events_interval!r}")
        if self.select is not None:
            object.__setattr__(self, "select", tuple(sorted({int(i) for i in self.select})))
            if any(i < 0 for i in self.select):
                raise UsageError("select: file indices are 0 or more")
        for name in ("include", "exclude"):
            object.__setattr__(self, name, tuple(str(g) for g in getattr(self, name)))
        object.__setattr__(self, "select_only", tuple(int(i) for i in self.select_only))
        if self.shard is not None:
            object.__setattr__(self, "shard", check_shard(*(int(v) for v in self.shard)))
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
