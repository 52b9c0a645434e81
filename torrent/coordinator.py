"""The coordinator: owns the torrent's global state and divides the work between workers.

Theory of operation
-------------------
The coordinator (the CLI's process) checks the output directory, resumes
from the journal, creates the shared arena, spawns one worker per core and
then only moves small control messages:

- **Peers** from ``--peer``, the trackers, PEX and the DHT are handed out, each to exactly
  one worker (the one with the fewest), and retried with a backoff when a
  connection fails.  A worker that dies gives its peers to the others.
- **Pieces** are leased.  A worker asks for pieces when its lease runs low;
  it gets free pieces that its own peers have, starting from its own region
  of the piece space (worker ``w`` of ``N`` starts at ``w/N`` of it, so the
  workers write different parts of the files).  When no free piece is left,
  the coordinator *steals* part of the lease of the worker holding the most
  and gives it to the idle one.  When nothing is left to steal it sends
  pieces in flight elsewhere as an endgame lease; the first verified copy
  counts, the others are cancelled.  Every such decision is made by
  :class:`~torrent.leases.LeaseTable` (sans-IO); the coordinator only sends
  the messages it returns.
- **Records**: verified pieces are broadcast to every worker (HAVE, cancel
  duplicates) in batches, one message per worker at most every
  :data:`PIECES_DONE_DELAY`; flushed pieces (:class:`~torrent.ipc.Durable`) are appended to
  the resume journal.

The download ends when every piece is verified and durable (exit 0), when
no usable peer was seen for ``stall_timeout`` seconds (:class:`Incomplete`),
on SIGINT/SIGTERM (:class:`Interrupted`, after the workers flushed), or on a
fatal worker error such as a full disk.

**Seeding after the download** (``seed_time`` / ``seed_ratio``): once every
piece is verified, the workers simply keep serving (they upload all along);
the coordinator announces ``completed`` and, instead of stopping, waits until
the first limit is reached: seconds since completion, or bytes uploaded in
this run / torrent size (the workers report their uploads every tick).  Then
the workers are stopped with ``drain`` so that the peers receive the blocks
already sent.  A signal in this phase ends it early; the download is
complete, so it is not an interruption.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import errors, ipc, metainfo
from ._io import DIRECT_ALIGN
from .errors import FastTorrentError, Incomplete, Interrupted, StorageError, UsageError
from .hashing import PIECE_GOOD, chunk_ranges, hash_pieces
from .journal import Journal, journal_path, load_selection, metadata_path, save_selection
from .leases import LeaseTable, PieceState, Send
from .options import Options, default_max_connections, dht_wanted
from .peeraddr import ban_key, format_peer, normalize_peer, parse_hostport
from .pool import WORKER_EXIT_TIMEOUT, PrestartedWorkers, WorkerHandle, WorkerPool
from .ports import free_port as _free_port
from .ports import is_local_address
from .reporting import RunReport, run_report
from .selection import Selection, changed_files, resolve, wanted_pieces
from .shm import Arena, plan_slots, run_arena_bytes, slot_stride
from .snapshot import TorrentSnapshot, payload_of
from .snapshot import take as take_snapshot
from .storage import (
    Layout,
    Storage,
    check_free_space,
    check_output_paths,
    existing_files,
    finish_files,
    layout_for,
    os_error,
)
from .sysinfo import available_cpus, fd_limit
from .v2pieces import v2_pieces
from .wire.handshake import make_peer_id
from .wire.messages import BLOCK_SIZE, Request, encode
from .worker import DIAL_BUDGET, WorkerConfig

if TYPE_CHECKING:
    from .dht.service import Dht
    from .earlypiece import EarlyPiece
    from .magnetfetch import Handover

__all__ = ["Coordinator", "DownloadResult", "download", "parse_peer", "seed"]


#: Delay before retrying a peer whose connection failed, doubling each time.
PEER_RETRY_BASE = 2.0
PEER_RETRY_MAX = 60.0
#: Connection attempts per peer before it is given up.
PEER_MAX_ATTEMPTS = 8
#: How often the progress display is refreshed.
PROGRESS_INTERVAL = 0.5
#: How long the final tracker announces ('completed', 'stopped') may take.
TRACKER_STOP_TIMEOUT = 6.0
#: Peer addresses remembered at most (from trackers and --peer): bounds the
#: table the coordinator walks every half second.
MAX_KNOWN_PEERS = 10_000
#: Connected peers past which the DHT searches only every 15 minutes (a
#: download with fewer asks again within minutes; see torrent/dht/service.py).
DHT_ENOUGH_PEERS = 30
#: Verified pieces are told to the other workers (``PiecesDone``) at most this
#: late, batched: one message per worker per batch.  Sent per ``Verified``
#: message, K workers each reporting every ``VERIFIED_DELAY`` made the
#: coordinator send K x (K - 1) messages per interval: at 64 workers, 740 us
#: of its CPU per ``Verified``, 285 us per piece, and the coordinator saturated
#: at ~3,500 pieces/s (bench/coord_capacity.py; 27 us per piece batched).  The
#: first batch after a quiet spell goes at once.
PIECES_DONE_DELAY = 0.05
#: How often :meth:`Coordinator.stop_workers` looks for a worker process that died
#: without saying Stopped (each Stopped wakes it at once).
STOP_POLL = 0.05
#: Pieces each worker is leased with its config (``LeaseTable.first_lease``), from its
#: region: its first requests need no round trip to this process.
FIRST_LEASE = 4
#: A fresh download of more files than this has them created (sized, blocks
#: reserved) in a thread once its workers run, not before: 10,000 files took
#: 0.6-4 s to create (ext4, more where files were just deleted), all of it
#: before the first request. A worker creates a file it writes first as this
#: would (sizes never cut, data never touched).
CREATE_LATER_FILES = 64
#: Block requests at most per kept connection of a magnet when its workers read
#: them (``request_early``; not a v1 piece the coordinator reads): a quarter of a
#: 1 MiB piece over four peers; the worker's pipeline until its first
#: piece is complete is shorter (``worker.COLD_DEPTH``) and grows from there.
EARLY_REQUESTS = 16
#: ``Handover.worker`` of a kept connection whose early requests were written only in
#: part: its stream cannot go on, so it is closed instead of handed over.
STREAM_CUT = -2


@dataclass(slots=True)
class PeerRecord:
    host: str
    port: int
    worker: int | None = None
    attempts: int = 0
    retry_at: float = 0.0
    connected: bool = False
    banned: bool = False
    last_reason: str = ""
    source: str = "manual"
    dialing: bool = False  # handed to its worker, neither Dialled nor PeerClosed yet
    last_worker: int | None = None  # the worker it was last handed to (kept after it closed)


@dataclass(slots=True)
class EarlyHold:
    """A magnet's first piece read by the coordinator (:mod:`torrent.earlypiece`): the
    worker whose lease holds it, and the connections still held (``conns[k]``
    goes with ``piece.conns[k]``; None once handed to its worker)."""

    piece: EarlyPiece
    owner: int
    conns: list[Handover | None]
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class DownloadResult:
    info_hash: str
    complete: bool
    bytes_downloaded: int
    seconds: float
    pieces_total: int
    pieces_resumed: int
    workers: list[dict[str, Any]]
    #: every peer of the table: host, port, source, connected (at some point), worker
    #: (the last it was handed to; None: never dialled), banned, last_reason
    peers: list[dict[str, Any]]
    hash_failures: int
    banned_peers: list[str]
    duplicate_pieces: int
    bytes_uploaded: int = 0
    seed_seconds: float = 0.0  # seeding after completion (seed_time / seed_ratio)
    seed_stop: str | None = None  # what ended it: "time", "ratio" or "interrupted"
    #: from the start of :func:`download` until a magnet's metadata was known
    #: (fetched, or loaded from an earlier run's copy); 0 for a .torrent
    metadata_seconds: float = 0.0
    #: from the start of :func:`download` (or of the :class:`Coordinator`) until the
    #: first piece verified in this run; None when no piece was (all resumed, or none came)
    first_piece_seconds: float | None = None
    #: a magnet's first pieces read by the coordinator while the workers started
    #: (torrent/earlypiece.py), one line each: "piece N: verified" or "piece N: handed
    #: back (why)"
    early_pieces: list[str] | None = None
    #: the DHT node's counters and table sizes (None: no DHT in this run), and when it
    #: first found a peer, from the start of :func:`download`
    dht: dict[str, Any] | None = None
    #: what the run downloaded (torrent/selection.py): the selected files' indices
    #: (None: all), their count and bytes (pads not counted), the shard
    #: ``(index, count)`` (None: all pieces) and the pieces wanted
    selected_files: list[int] | None = None
    selected_file_count: int = 0
    selected_bytes: int = 0
    shard: tuple[int, int] | None = None
    pieces_wanted: int = 0
    wanted_bytes: int = 0

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "info_hash": self.info_hash,
            "complete": self.complete,
            "bytes_downloaded": self.bytes_downloaded,
            "seconds": round(self.seconds, 6),
            "rate_bytes_per_s": round(self.bytes_downloaded / self.seconds) if self.seconds else 0,
            "pieces_total": self.pieces_total,
            "pieces_resumed": self.pieces_resumed,
            "duplicate_pieces": self.duplicate_pieces,
            "bytes_uploaded": self.bytes_uploaded,
            "uploaded_bytes": self.bytes_uploaded,
            "seed_seconds": round(self.seed_seconds, 6),
            "seed_stop": self.seed_stop,
            "metadata_seconds": round(self.metadata_seconds, 6),
            "first_piece_seconds": (None if self.first_piece_seconds is None
                                    else round(self.first_piece_seconds, 6)),
            "early_pieces": self.early_pieces or [],
            "hash_failures": self.hash_failures,
            "banned_peers": self.banned_peers,
            "workers": self.workers,
            "peers": self.peers,
            "dht": self.dht,
            "selection": {"files": self.selected_files,
                          "selected_files": self.selected_file_count,
                          "selected_bytes": self.selected_bytes,
                          "shard": None if self.shard is None else list(self.shard),
                          "pieces_wanted": self.pieces_wanted,
                          "wanted_bytes": self.wanted_bytes},
        }


def parse_peer(s: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 as ``[addr]:port``) -> a canonical (host, port); raises UsageError."""
    s = s.strip()
    try:
        return parse_hostport(s)
    except ValueError as e:
        raise UsageError(f"--peer {s[:80]!r}: {e} (expected HOST:PORT or [IPV6]:PORT)") from None


def _file_stats(layout: Any) -> list[tuple[int, int]]:
    """(size, mtime_ns) of every file holding data (no pad, no symlink), (0, 0) if missing."""
    out = []
    for sp in layout.spans:
        if not sp.regular:
            continue
        try:
            st = os.stat(sp.path)
            out.append((st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((0, 0))
    return out


def _bits_from(indices: Sequence[int] | set[int], n: int) -> bytes:
    b = bytearray(-(-n // 8))
    for i in indices:
        b[i >> 3] |= 0x80 >> (i & 7)
    return bytes(b)


class Coordinator:
    """One download or seed: the global state, the workers, the trackers.

    Args:
        meta: the parsed torrent.
        outdir: where its files are (created for a download).
        opts: the run's settings; ``opts.workers`` must be resolved (not None).
        seeding: serve only (``fasttorrent seed``): no journal, never done by itself.
        log: called with a progress or warning line.
        status_line: called with the live status line.
        began: when the download began (``time.monotonic()``; default: now), the
            origin of ``first_piece_seconds``: :func:`download` passes its own start,
            so that a magnet's metadata fetch counts.
        metadata_seconds: the time the metadata took, reported as is.
        prestarted: worker processes already started (:class:`PrestartedWorkers`),
            used by :meth:`start_workers`; closed if the run needs none.
        dht: a DHT node already open (a magnet's metadata fetch used it); else one
            is started with the workers when ``opts`` wants one (never for a
            private torrent). The coordinator closes it at the end.
        handover: connections a magnet's fetch made, for the workers to take
            over (:meth:`start_workers`); those not taken stay in
            :attr:`handover` for the caller to close.
        clock: the time now (monotonic seconds) for the batching of ``PiecesDone``.
        pool: the worker processes of a run of several torrents (else the run
            starts its own, from ``prestarted``).
    """

    def __init__(self, meta: Any, outdir: str, opts: Options, *, seeding: bool = False,
                 log: Callable[[str], None] | None = None,
                 status_line: Callable[[str], None] | None = None,
                 began: float | None = None, metadata_seconds: float = 0.0,
                 prestarted: PrestartedWorkers | None = None,
                 dht: Dht | None = None, handover: Sequence[Handover] = (),
                 clock: Callable[[], float] = time.monotonic,
                 pool: WorkerPool | None = None) -> None:
        opts = _resolve_connections(opts)  # a caller of ours that left it unset
        if opts.workers is None:
            raise ValueError("Coordinator needs a resolved worker count")
        self.meta = meta
        self.opts = opts
        self.outdir = os.path.abspath(outdir)
        self.nworkers = opts.workers
        self.port = opts.port  # a free one is chosen when the workers start
        self.log = log or (lambda s: None)
        self.status_line = status_line
        self.seeding = seeding
        # Seeding after the download: stop at the first limit given (None: no limit).
        self.seed_after = not seeding and opts.seed_after
        self.seed_started: float | None = None  # when the seeding phase began
        self.seed_ended: float | None = None
        self.seed_stop: str | None = None
        self._seed_timer: asyncio.TimerHandle | None = None
        self._completed_told = False  # 'completed' handed to the tracker runner
        n = meta.num_pieces
        self.durable = bytearray(n)
        self.durable_count = 0
        self.resumed = 0
        self.workers: list[WorkerHandle] = []
        self.peers: dict[tuple[str, int], PeerRecord] = {}
        self.peer_id = make_peer_id()
        self.journal: Journal | None = None
        self.arena: Arena | None = None
        #: the run's worker processes (None until start_workers, unless given)
        self.pool: WorkerPool | None = pool
        self.own_pool = False  # this run opened the pool, and closes it
        self.tid = 0  # the torrent's number in the pool
        #: signals end this run (False when a batch or daemon handles them for all)
        self.handle_signals = True
        #: the DHT node is the run's (a batch or daemon shares one and closes it)
        self.own_dht = True
        self._arena_plan: tuple[int, int] | None = None
        #: prepare's outcome while its files and journal are still to be made
        self._output: tuple[Layout, Journal, set[int]] | None = None
        #: pieces reported durable while the journal was being made (make_output)
        self._durable_unjournaled: list[int] = []
        #: first leases given out early (request_early), for start_workers
        self._first_leases: dict[int, list[int]] = {}
        # a magnet's first piece, read here while the workers start: which worker's
        # and which piece (request_early), then the connections held for it
        self._early_plan: tuple[int, int] | None = None
        self._early: EarlyHold | None = None
        self.early_outcomes: list[str] = []  # DownloadResult.early_pieces
        self._files_finished = False
        self.done_event: asyncio.Event | None = None
        #: set when a worker stops or dies (see :meth:`stop_workers`)
        self._worker_gone: asyncio.Event | None = None
        self.fatal: FastTorrentError | None = None
        self.interrupted = False
        self.last_progress = time.monotonic()
        self.start_time = time.monotonic()
        self.began = self.start_time if began is None else began
        self.metadata_seconds = metadata_seconds
        self.first_piece_at: float | None = None  # the first piece verified in this run
        # piece states and leases: every lease / steal / endgame decision
        self.leases = LeaseTable(n, self.nworkers)
        # what this run downloads (prepare() narrows it: torrent/selection.py)
        self.selection = Selection()
        self.selected: frozenset[int] | None = None
        self.wanted: bytearray | None = None
        self.warnings: list[str] = []
        self.tracker_runner: Any = None
        self.on_ready: Callable[[int], None] | None = None
        self.stopping = False
        self.ready_count = 0
        self._dials_freed = False  # a worker has room for dials again: assign peers
        self.prestarted = prestarted
        self.dht = dht
        self.handover: list[Handover] = list(handover)
        self.web_seeds_dropped: dict[str, str] = {}  # url -> why (warned once)
        # PEX across workers: each worker's live peers, and what each was told of
        # the others' (see share_live_peers)
        self.live_peers: dict[int, frozenset[tuple[str, int]]] = {}
        self._others_sent: dict[int, frozenset[tuple[str, int]]] = {}
        self._live_dirty = False
        #: payload of the pieces verified in this run, each counted once (the workers'
        #: own counts arrive with their next Stats, and count endgame duplicates twice)
        self.bytes_verified = 0
        self.slots_per_worker = 0  # the arena's slots of each worker (once they start)
        #: the run's event stream and metrics (torrent/reporting.py); None: neither
        self.report: RunReport | None = None
        # PiecesDone batching (PIECES_DONE_DELAY): worker id -> pieces the others verified
        self.clock = clock
        self._done_pending: dict[int, list[int]] = {}
        self._done_sent_at = -PIECES_DONE_DELAY
        self._done_timer: asyncio.TimerHandle | None = None

    @property
    def verified(self) -> int:
        """Pieces verified so far (resumed ones included)."""
        return self.leases.num_verified

    @property
    def duplicates(self) -> int:
        """Pieces verified again after their first copy (endgame)."""
        return self.leases.duplicates

    # -- set-up --------------------------------------------------------------------
    def prepare(self) -> None:
        """Check the output directory, resume, create the files.  Before any worker."""
        meta = self.meta
        journal = Journal(journal_path(self.outdir, meta.info_hash, self.opts.shard),
                          meta.info_hash, meta.num_pieces, meta.piece_length)
        # the files and pieces of this run (torrent/selection.py), kept for a resume
        saved = Selection.from_json(load_selection(journal.path), len(meta.files))
        o = self.opts
        self.selection, notes = resolve(meta.files, select=o.select, include=o.include,
                                        exclude=o.exclude, select_only=o.select_only,
                                        shard=o.shard, saved=saved)
        for line in notes:
            self.log(line)
        self.selected = self.selection.files
        self.wanted = wanted_pieces(meta.files, meta.piece_length, meta.num_pieces,
                                    self.selected, o.shard)
        self.leases = LeaseTable(meta.num_pieces, self.nworkers, wanted=self.wanted)
        layout = layout_for(meta, self.outdir, self.selected)
        # The arena must hold a piece per slot: said before any file is created.
        self.plan_arena()
        try:
            os.makedirs(self.outdir, exist_ok=True)
        except OSError as e:
            from .storage import os_error

            raise os_error(e, f"creating {self.outdir}") from None
        check_output_paths(layout, self.outdir)
        existed = next(existing_files(layout), None) is not None
        recorded = None if self.opts.recheck else journal.read()
        sizes_ok = all(not s.regular or (os.path.isfile(s.path)
                                         and os.path.getsize(s.path) == s.length)
                       for s in layout.spans)
        check_free_space(layout, self.outdir)
        done: set[int] = set()
        if recorded is not None and sizes_ok:
            done = set(recorded)
            if journal.seal_table is not None:
                # Files changed since the last run ended lose their records.
                files = [(k, sp) for k, sp in enumerate(layout.spans) if sp.regular]
                now_stats = _file_stats(layout)
                if len(journal.seal_table) != len(now_stats):
                    done = set()
                else:
                    for (k, _sp), then, now in zip(files, journal.seal_table, now_stats,
                                                   strict=True):
                        if then != now:
                            self.log(f"resume: {layout.spans[k].rel} changed since the last "
                                     "run; checking its pieces")
                            done.difference_update(layout.pieces_of_span(k))
            # a file whose selection changed: its bytes of shared pieces moved (file <->
            # parts file), so those pieces are checked again where they now belong
            for k in changed_files(saved.files if saved else None, self.selected, meta.files):
                done.difference_update(layout.pieces_of_span(k))
            # (a hybrid's pieces are checked by both hashes: its SHA-1 digests and,
            # where its piece layers are known, its v2 roots; torrent.v2pieces)
            rest = [i for i in range(meta.num_pieces)
                    if i not in done and (self.wanted is None or self.wanted[i])]
            if rest:
                self.log(f"resume: {len(done)} pieces in the journal; checking the other "
                         f"{len(rest)}")
                res = hash_pieces(layout, digests=_sha1_digests(meta), workers=self.nworkers,
                                  ranges=chunk_ranges(layout, rest),
                                  fork=self.opts.fork_workers, v2=v2_pieces(meta))
                done.update(i for i in rest if res.status[i] == PIECE_GOOD)
        elif existed:
            self.log("checking existing data (full recheck)")
            mine = [i for i in range(meta.num_pieces) if self.wanted is None or self.wanted[i]]
            res = hash_pieces(layout, digests=_sha1_digests(meta), workers=self.nworkers,
                              ranges=chunk_ranges(layout, mine), fork=self.opts.fork_workers,
                              v2=v2_pieces(meta))
            done = {i for i in mine if res.status[i] == PIECE_GOOD}
        self._output = (layout, journal, done)
        if not done and self.handover and not self.seeding:
            # A fresh magnet with kept connections: its first requests go out now, and
            # the files and the journal are made once the workers have the torrent
            # (make_output, from run): ~3.5 ms off its first piece. A worker creates
            # a file it writes first as the coordinator would (sizes never cut,
            # data never touched), and its reports wait on this process's loop.
            self.request_early()
        elif not done and not self.seeding and \
                sum(1 for s in layout.spans if s.regular) > CREATE_LATER_FILES:
            pass  # many files: made by run, in a thread, while the workers download
        else:
            self.make_output()
        self.leases.mark_have(done)
        for i in done:
            self.durable[i] = 1
        self.durable_count = self.resumed = len(done)

    def finish_files(self) -> None:
        """The data is complete: make the torrent's symlinks, set its executable bits (once;
        not before the files are made: then :meth:`run` calls it once they are)."""
        if self._files_finished or self._output is not None:
            return
        self._files_finished = True
        try:
            finish_files(layout_for(self.meta, self.outdir, self.selected), self.outdir)
        except FastTorrentError as e:
            if self.fatal is None:
                self.fatal = e

    def plan_arena(self) -> tuple[int, int]:
        """The arena's slot size and slots per worker (:func:`torrent.shm.plan_slots`).

        Several files: a slot has one page of slack, so that a piece can sit in
        it aligned like its file (its whole pages then go out with O_DIRECT
        straight from the slot; see Worker.alloc_slot).

        Raises:
            ResourceExhausted: the arena cannot hold the slots of one piece each.
        """
        if self._arena_plan is None:
            meta = self.meta
            slot_size = meta.piece_length + (DIRECT_ALIGN if len(meta.files) > 1 else 0)
            n = max(1, self.nworkers)
            pool = self.pool
            if pool is not None and pool.regions > 1:  # a batch: this torrent's window
                slots = plan_slots(slot_size, n, pool.region_bytes)
                if slots * slot_stride(slot_size) * n > pool.region_bytes:
                    raise errors.ResourceExhausted(
                        f"shared memory: a torrent's share of the arena "
                        f"({pool.region_bytes >> 20} MiB) cannot hold {n} worker(s) x "
                        f"{slots} slots of one piece ({slot_size >> 10} KiB); run fewer "
                        "torrents at once or give the arena more")
            else:
                slots = plan_slots(slot_size, n, self.opts.arena_bytes)
            self._arena_plan = (slot_size, slots)
        return self._arena_plan

    # -- workers -------------------------------------------------------------------
    def start_workers(self) -> None:
        """Attach the torrent to the run's worker processes (:class:`WorkerPool`): the
        pool given (a batch, the daemon), else one of its own, opened here."""
        meta = self.meta
        slot_size, slots = self.plan_arena()
        want_dht = self.dht is None and dht_wanted(self.opts, private=meta.private)
        pool = self.pool
        used = slot_stride(slot_size) * slots * self.nworkers
        if pool is None:  # a run of its own: its arena is what this torrent needs
            pool = self.pool = WorkerPool(self.opts, prestarted=self.prestarted)
            self.own_pool = True
            self.prestarted = None
        pool.open(used, udp=want_dht, free_port=lambda bind, udp: _free_port(bind, udp=udp))
        if self.own_pool:
            pool.fit(used)  # (configured before the piece size was known)
        self.port = pool.port
        if want_dht and self.own_pool:
            from .dht.service import start_dht

            self.dht = start_dht(self.opts, self.port, self.log)  # on the run's port if free
        self.tid, offset, self.workers = pool.attach(self, reserve=used)
        self.arena = pool.arena
        self.slots_per_worker = slots
        done_bits = bytes(_bits_from(self.leases.verified_pieces(), meta.num_pieces))
        wanted = None if self.wanted is None else _bits_from(
            [i for i, want in enumerate(self.wanted) if want], meta.num_pieces)
        adopt = self._plan_handover(done_bits)
        self._hold_early(adopt)
        # the start-up affinity runs from here, not from before the resume check
        now = time.monotonic()
        self.leases.start(now)
        try:
            for h in self.workers:
                early = self._first_leases.pop(h.wid, None)
                first = () if self.seeding or not h.alive else tuple(
                    early if early is not None else
                    self.leases.first_lease(h.wid, FIRST_LEASE, now))
                if self._early is not None and self._early.owner == h.wid:
                    # its first piece is read here while it starts (torrent.earlypiece)
                    first = tuple(i for i in first if i != self._early.piece.index)
                cfg = WorkerConfig(wid=h.wid, tid=self.tid, meta=meta, outdir=self.outdir,
                                   options=self.opts, slot_size=slot_size,
                                   arena_slots=slots * self.nworkers, arena_offset=offset,
                                   first_slot=h.wid * slots, nslots=slots, port=self.port,
                                   peer_id=self.peer_id, done=done_bits,
                                   writable=not self.seeding, lock_writes=self.nworkers > 1,
                                   workers=self.nworkers,
                                   dht_port=self.dht.port if self.dht is not None else 0,
                                   selected=self.selected, wanted=wanted, lease=first)
                if not h.alive:
                    continue
                try:
                    h.channel.add_torrent(cfg)
                    self._send_adopts(h, adopt.get(h.wid, []))
                except OSError:
                    pass  # it died: the liveness check reports it
        finally:
            if adopt:
                from .magnetfetch import close_handovers

                close_handovers(c for mine in adopt.values() for c in mine)  # theirs are copies

    @staticmethod
    def _send_adopts(h: WorkerHandle, conns: Iterable[Handover]) -> None:
        """Hand ``conns`` to worker ``h`` (the descriptors travel as copies: the caller
        closes its own).

        Raises:
            OSError: the worker's pipe is gone.
        """
        assert h.channel is not None
        for c in conns:
            h.channel.send(ipc.Adopt(c.host, c.port, c.data, c.interested, c.requested),
                           fd=c.fd)

    # -- a magnet's first piece, read here while the workers start -----------------
    def _hold_early(self, adopt: dict[int, list[Handover]]) -> None:
        """Take the connections that carry the early piece's requests
        (:meth:`request_early`) out of the hand-over ``adopt``: this process reads the
        piece from them while the workers start (:mod:`torrent.earlypiece`), and
        hands each to its worker once its share is answered (:meth:`start_early`)."""
        if self._early_plan is None:
            return
        owner, index = self._early_plan
        from .earlypiece import EarlyConn, EarlyPiece

        carrying = [c for mine in adopt.values() for c in mine if c.requested]
        if not carrying:
            return
        try:
            early = EarlyPiece(index, self.meta.piece_size(index),
                               self.meta.piece_hashes[index * 20 : index * 20 + 20],
                               [EarlyConn(c.fd, c.data, c.requested) for c in carrying])
        except ValueError:
            return  # (a stream without the handshake: left to the workers)
        for c in carrying:
            adopt[c.worker].remove(c)
        self._early = EarlyHold(early, owner, list(carrying))

    def start_early(self) -> None:
        """Read the held connections as their bytes come, on the running loop, for at
        most ``EARLY_PIECE_WAIT``; each goes to its worker once its share of the piece
        is answered, or once the piece is done with (:meth:`end_early`)."""
        held = self._early
        if held is None:
            return
        from .earlypiece import EARLY_PIECE_WAIT

        loop = asyncio.get_running_loop()
        for k, c in enumerate(held.piece.conns):
            loop.add_reader(c.fd, self._early_readable, k)
        held.timer = loop.call_later(EARLY_PIECE_WAIT, self._early_timeout)
        self._early_progress()  # (what the fetch's streams held already)

    def _early_readable(self, k: int) -> None:
        held = self._early
        if held is None or held.conns[k] is None:
            return
        held.piece.read(held.piece.conns[k])
        self._early_progress()

    def _early_progress(self) -> None:
        """Hand over the connections whose share is answered; end when the piece is
        whole or will not be."""
        held = self._early
        if held is None:
            return
        if held.piece.done:
            self.end_early()
            return
        for k, ec in enumerate(held.piece.conns):
            if held.conns[k] is not None and not ec.outstanding:
                self._early_hand_over(k)

    def _early_timeout(self) -> None:
        if self._early is not None:
            self._early.timer = None
            self._early.piece.fail("not whole in time")
            self.end_early()

    def _early_hand_over(self, k: int) -> None:
        """Give held connection ``k`` to its worker, with what its peer sent besides the
        piece's blocks and the requests not answered; close this process's copy."""
        held = self._early
        assert held is not None
        c, ec = held.conns[k], held.piece.conns[k]
        if c is None:
            return
        held.conns[k] = None
        with contextlib.suppress(RuntimeError):  # (no loop: the run never read)
            asyncio.get_running_loop().remove_reader(ec.fd)
        ec.close()
        h = next((w for w in self.workers if w.wid == c.worker), None)
        try:
            if h is not None and h.alive:
                self._send_adopts(h, [c._replace(data=ec.stream(), requested=ec.unanswered())])
        except OSError:
            pass  # it died: the liveness check reports it
        finally:
            from .magnetfetch import close_handovers

            close_handovers([c])  # (the worker's is a copy)

    def end_early(self) -> None:
        """The early piece is whole, or will not be (:class:`~torrent.earlypiece.EarlyPiece`
        says why): write and report it, or lease it to its worker; then hand every
        connection still held to its worker."""
        held = self._early
        if held is None:
            return
        early = held.piece
        if held.timer is not None:
            held.timer.cancel()
            held.timer = None
        h = next((w for w in self.workers if w.wid == held.owner), None)
        written = h is not None and h.alive and early.check() and \
            self._write_early(held.owner, early)
        self.early_outcomes.append(f"piece {early.index}: " + (
            "verified" if written else f"handed back ({early.failed or 'its worker is gone'})"))
        if h is not None and h.alive:
            self.send(h, ipc.PiecesDone((early.index,), written=True) if written  # (the others:
                      else ipc.Lease((early.index,)))  # by queue_pieces_done)
        for k in range(len(held.conns)):
            self._early_hand_over(k)
        self._early = None

    def close_early(self) -> None:
        """Stop reading the held connections and close them (the run ends first)."""
        held, self._early = self._early, None
        if held is None:
            return
        from .magnetfetch import close_handovers

        if held.timer is not None:
            held.timer.cancel()
        for k, c in enumerate(held.conns):
            if c is not None:
                with contextlib.suppress(RuntimeError):
                    asyncio.get_running_loop().remove_reader(held.piece.conns[k].fd)
                held.piece.conns[k].close()
                close_handovers([c])

    def _write_early(self, wid: int, early: Any) -> bool:
        """Write a verified early piece to its files (through the page cache) and report it
        verified; worker ``wid``, whose lease held it, flushes it with its own writes
        (``ipc.PiecesDone(written=True)``, sent by the caller). False when it cannot
        be written here (the worker then fetches it again, and meets the error
        itself)."""
        layout = layout_for(self.meta, self.outdir, self.selected)
        try:
            with Storage(layout, writable=True) as st:
                segs, _pinned = st.write_segments(early.index * self.meta.piece_length,
                                                  early.size)
                view = early.slot.view
                for fd, foff, roff, n, *_direct in segs:
                    done = 0
                    while done < n:
                        done += os.pwrite(fd, view[roff + done : roff + n], foff + done)
        except (OSError, FastTorrentError) as e:
            early.fail(f"not written here: {e}")
            return False
        self.pieces_verified(wid, (early.index,))
        return True
    def make_output(self) -> None:
        """Create the files (sized, blocks reserved) and the journal of :meth:`prepare`'s
        outcome; once (from :meth:`prepare`, or from :meth:`run` when deferred)."""
        if self._output is None:
            return
        layout, journal, done = self._output
        with Storage(layout, writable=True) as st:
            st.create_files()
        journal.open(done)
        save_selection(journal.path, None if self.selection.files is None
                       else self.selection.to_json())
        self.journal = journal
        self._output = None  # (after the journal: a Durable meanwhile waits for it)

    def request_early(self) -> None:
        """Ask the peers of a magnet's kept connections for the first pieces now, while
        the output is made and the workers take the torrent (~10 ms on two busy cores).

        Each connection whose peer has unchoked us (by the fetch's end, or since:
        what it sent meanwhile is read first, ``magnetfetch.caught_up``) is given
        its worker here (as :meth:`_plan_handover` would: round robin).

        - A v1 torrent: the first worker's first lease (:meth:`LeaseTable.first_lease`,
          kept for :meth:`start_workers`) gives the piece; its blocks are split
          between *every* unchoked connection, at most ``MAX_EARLY_REQUESTS``
          each, and this process reads them (:meth:`start_early`,
          :mod:`torrent.earlypiece`).
        - Otherwise (or when the piece needs more requests than that), each such
          worker's first piece is split between its own unchoked connections, at
          most :data:`EARLY_REQUESTS` each; the worker counts them as sent
          (``ipc.Adopt.requested``) and reads the blocks as answers to its own.

        Only for a fresh download (nothing verified): the caller checks.
        """
        from .magnetfetch import caught_up

        now = time.monotonic()
        self.leases.start(now)
        # a peer that unchoked us since the fetch ended (the kernel holds its UNCHOKE)
        self.handover = [caught_up(c) for c in self.handover]
        seen: set[tuple[str, int]] = set()
        mine: dict[int, list[int]] = {}  # worker -> indices in self.handover
        k = 0
        for j, c in enumerate(self.handover):
            key = normalize_peer(c.host, c.port)
            rec = self.peers.get(key) if key is not None else None
            if key is None or key in seen or (rec is not None and rec.banned):
                continue
            seen.add(key)
            if c.unchoked:
                mine.setdefault(k % self.nworkers, []).append(j)
            k += 1  # (the connections that are not unchoked take their turn too)
        conns = list(self.handover)
        every = sorted(j for idx in mine.values() for j in idx)
        if every and not (self.meta.hybrid or self.meta.v2_only):
            # This process reads the first piece (torrent.earlypiece): it is asked of
            # every unchoked peer, whichever worker will take the connection.
            from .earlypiece import MAX_EARLY_REQUESTS

            owner = next(w for w, idx in mine.items() if every[0] in idx)
            first = self.leases.first_lease(owner, FIRST_LEASE, now)
            self._first_leases[owner] = first
            if first:
                blocks = self._blocks_of(first[0])
                share = -(-len(blocks) // len(every))
                if share <= MAX_EARLY_REQUESTS:
                    self._early_plan = (owner, first[0])
                    for n, j in enumerate(every):
                        wid = next(w for w, idx in mine.items() if j in idx)
                        self._send_early(conns, j, wid, blocks[n * share : (n + 1) * share])
                    self.handover = conns
                    return
        for wid, idx in mine.items():
            first = self._first_leases.get(wid) or self.leases.first_lease(wid, FIRST_LEASE, now)
            self._first_leases[wid] = first
            if not first:
                continue
            blocks = self._blocks_of(first[0])
            share = min(EARLY_REQUESTS, -(-len(blocks) // len(idx)))
            for n, j in enumerate(idx):
                self._send_early(conns, j, wid, blocks[n * share : (n + 1) * share])
        self.handover = conns

    def _blocks_of(self, index: int) -> list[tuple[int, int, int]]:
        size = self.meta.piece_size(index)
        return [(index, b, min(BLOCK_SIZE, size - b)) for b in range(0, size, BLOCK_SIZE)]

    @staticmethod
    def _send_early(conns: list[Handover], j: int, wid: int,
                    blocks: list[tuple[int, int, int]]) -> None:
        """Write the requests for ``blocks`` on kept connection ``conns[j]``, which worker
        ``wid`` is to take (see :meth:`request_early`)."""
        c = conns[j]
        if blocks:
            data = b"".join(encode(Request(*b)) for b in blocks)
            try:
                sent = os.write(c.fd, data)
            except OSError:
                sent = 0
            if sent != len(data):
                if sent:  # a request cut in two: the stream cannot go on
                    conns[j] = c._replace(worker=STREAM_CUT)
                return
        conns[j] = c._replace(worker=wid, requested=tuple(blocks))

    def _plan_handover(self, done_bits: bytes) -> dict[int, list[Handover]]:
        """Which worker takes each connection a magnet's fetch kept (:attr:`handover`):
        the one with the fewest peers. The peer is then connected there, and not dialled.
        Only while nothing is verified: the fetch sent the peer no bitfield, and one now
        would follow other messages. Those not taken are closed here."""
        conns, self.handover = self.handover, []
        plan: dict[int, list[Handover]] = {}
        if not conns:  # (a .torrent's run: the fetch's module is not even imported)
            return plan
        left: list[Handover] = []
        for c in conns:
            key = normalize_peer(c.host, c.port)
            rec = self.peers.get(key) if key is not None else None
            if key is None or not self.workers or any(done_bits) or c.worker == STREAM_CUT or (
                    rec is not None and (rec.banned or rec.worker is not None)):
                left.append(c)
                continue
            if c.worker >= 0:  # it carries requests for that worker's first lease
                w = next((h for h in self.workers if h.wid == c.worker), None)
                if w is None or not w.alive:
                    left.append(c)
                    continue
            else:
                w = min(self.workers, key=lambda w: (w.peers, w.wid))
            plan.setdefault(w.wid, []).append(
                c if (c.host, c.port) == key else c._replace(host=key[0], port=key[1]))
            if rec is None:
                rec = self.peers[key] = PeerRecord(*key, source=c.source)
            rec.worker = rec.last_worker = w.wid
            rec.connected = True
            w.peers += 1
            self.leases.set_peers(w.wid, w.peers)
        from .magnetfetch import close_handovers

        close_handovers(left)
        return plan

    def release_prestarted(self) -> None:
        """Let worker processes started for this run and never used exit."""
        if self.prestarted is not None:
            self.prestarted.close()
            self.prestarted = None

    def send(self, h: WorkerHandle, msg: Any) -> None:
        if not h.alive:
            return
        try:
            if h.channel is not None:
                h.channel.send(msg)
            else:
                h.conn.send(msg)
        except (BrokenPipeError, OSError):
            self.worker_died(h)

    def on_worker_message(self, h: WorkerHandle) -> None:
        ch = h.channel
        if ch is None:
            return
        try:
            for msg in ch.receive():
                if not h.alive:
                    break
                self.handle(h, msg)
        except OSError:
            self.worker_died(h)
        if ch.eof:
            self.worker_died(h)
        if self._dials_freed:
            # once per batch of messages, not per answered dial: assign_peers
            # walks the peer table
            self._dials_freed = False
            self.assign_peers()

    def carry_out(self, actions: list[Send]) -> None:
        """Send what the lease table decided, in order."""
        for a in actions:
            self.send(self.workers[a.worker], a.msg)

    def pieces_verified(self, wid: int, pieces: Sequence[int]) -> None:
        """Worker ``wid`` (or this process, for it: :meth:`end_early`) verified and
        wrote ``pieces``."""
        new, done = self.leases.verified(wid, pieces)
        self.bytes_verified += payload_of(new, self.meta.piece_length,
                                          self.meta.total_size, self.meta.num_pieces)
        if new:
            self.last_progress = time.monotonic()
            if self.first_piece_at is None:
                self.first_piece_at = self.last_progress
            self._check_done()
            self.queue_pieces_done(done)

    def pieces_durable(self, pieces: Sequence[int]) -> None:
        """``pieces`` are flushed to disk: into the journal with them."""
        fresh = [i for i in pieces if not self.durable[i]]
        for i in fresh:
            self.durable[i] = 1
        self.durable_count += len(fresh)
        if self.journal is None and self._output is not None:
            self._durable_unjournaled += fresh  # recorded once make_output is done
        elif self.journal is not None:
            try:
                self.journal.append(fresh)
            except FastTorrentError as e:
                # the journal's disk is full (or failing): stop with that error;
                # these pieces are on disk, and the next start finds them there
                if self.fatal is None:
                    self.fatal = e
                self._finish()
                return
        self._check_done()

    def handle(self, h: WorkerHandle, msg: Any) -> None:
        t = type(msg)
        if t is ipc.Verified:
            self.pieces_verified(h.wid, msg.pieces)
        elif t is ipc.Durable:
            self.pieces_durable(msg.pieces)
        elif t is ipc.NeedPieces:
            self.carry_out(self.leases.need(h.wid, msg.wanted, time.monotonic()))
        elif t is ipc.Released:
            self.carry_out(self.leases.released(h.wid, msg.pieces, time.monotonic()))
        elif t is ipc.Availability:
            self.carry_out(self.leases.availability(h.wid, msg.bits, time.monotonic()))
        elif t is ipc.PeersFound:
            if not self.meta.private:  # BEP 27: private torrents take peers from trackers only
                self.add_peers(msg.peers, msg.source)
        elif t is ipc.LivePeers:
            if not self.meta.private:
                self.live_peers[h.wid] = frozenset(list(msg.peers)[:ipc.MAX_SHARED_PEERS])
                self._live_dirty = True
        elif t is ipc.DhtNode:
            if self.dht is not None:
                self.dht.add_node(msg.host, msg.port)
        elif t is ipc.PeerClosed:
            if msg.banned and self.report is not None:
                # what the ban covers: the host (host:port on loopback), reported once
                self.report.peer_banned(ban_key(msg.host, msg.port), msg.reason)
            self.peer_closed(h, msg)
        elif t is ipc.HashFailed:
            if self.report is not None:
                self.report.piece_failed(msg.piece, msg.peer)
        elif t is ipc.Dialled:
            rec = self.peers.get((msg.host, msg.port))
            if rec is not None:
                # up: so it is in the summary whatever ends a later dial (a worker
                # redialling a peer lost after completion reports only the redial)
                rec.connected = True
                if rec.worker == h.wid:
                    self._dial_answered(h, rec)
        elif t is ipc.Stats:
            if msg.stats.get("blocks", 0) != h.stats.get("blocks", 0):
                self.last_progress = time.monotonic()  # bytes are flowing
            h.stats = msg.stats
            self.leases.set_rate(h.wid, float(msg.stats.get("rate", 0.0)))  # sizes steals
            if self.seed_started is not None:
                self._check_seed_limits()
        elif t is ipc.Ready:
            self.ready_count += 1
            if self.ready_count == self.nworkers and self.on_ready is not None:
                self.on_ready(self.port)
        elif t is ipc.WebSeedDropped:
            self.web_seed_dropped(h, msg)
        elif t is ipc.Fatal:
            cls = getattr(errors, msg.kind, StorageError)
            if not (isinstance(cls, type) and issubclass(cls, FastTorrentError)):
                cls = StorageError
            self.fatal = cls(msg.message)
            self._finish()

    def queue_pieces_done(self, done: list[Send]) -> None:
        """Send the lease table's ``PiecesDone`` in batches (:data:`PIECES_DONE_DELAY`).

        At once when no batch went out for that long, or when the torrent is
        complete (seeding workers announce every piece); else when the delay
        since the last batch is over (a timer on the running loop).
        """
        for a in done:
            if type(a.msg) is ipc.PiecesDone:
                self._done_pending.setdefault(a.worker, []).extend(a.msg.pieces)
            else:
                self.send(self.workers[a.worker], a.msg)  # (verified() returns none)
        if not self._done_pending:
            return
        wait = self._done_sent_at + PIECES_DONE_DELAY - self.clock()
        if wait <= 0 or self.verified == self.meta.num_pieces:
            self.flush_pieces_done()
        elif self._done_timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop runs this coordinator: nothing could wait
                self.flush_pieces_done()
                return
            self._done_timer = loop.call_later(wait, self.flush_pieces_done)

    def flush_pieces_done(self) -> None:
        """Send each worker one ``PiecesDone`` with what the others verified since the last."""
        if self._done_timer is not None:
            self._done_timer.cancel()  # (a no-op when it is the timer calling)
            self._done_timer = None
        pending, self._done_pending = self._done_pending, {}
        self._done_sent_at = self.clock()
        for wid, pieces in pending.items():
            self.send(self.workers[wid], ipc.PiecesDone(tuple(pieces)))

    def serve_waiting(self) -> None:
        """Serve the workers waiting for pieces (the start-up grace period may be over)."""
        self.carry_out(self.leases.serve_waiting(time.monotonic()))

    def worker_died(self, h: WorkerHandle) -> None:
        if not h.alive:
            return
        h.alive = False
        if self._worker_gone is not None:
            self._worker_gone.set()
        if self.stopping or (self.done_event is not None and self.done_event.is_set()):
            self.leases.worker_died(h.wid, time.monotonic(), reclaim=False)
            return  # it exited because we told it to
        h.died = True
        if self.live_peers.pop(h.wid, None):
            self._live_dirty = True  # its peers are gone with it
        self.warn(f"worker {h.wid} died (exit code {h.proc.exitcode}); "
                  "its peers and pieces go to the others")
        # its leases go back to the others, thieves waiting on it are served
        self.carry_out(self.leases.worker_died(h.wid, time.monotonic()))
        h.dialing = 0
        for rec in self.peers.values():
            if rec.worker == h.wid:
                rec.worker = None
                rec.connected = False
                rec.dialing = False
                rec.retry_at = 0.0
        if not any(w.alive for w in self.workers):
            self.fatal = StorageError("every worker process died")
            self._finish()
            return
        self.assign_peers()

    def web_seed_dropped(self, h: WorkerHandle, msg: ipc.WebSeedDropped) -> None:
        """A worker stopped using a web seed: warn once; a ban holds in every worker."""
        if msg.url in self.web_seeds_dropped:
            return
        if msg.banned and self.report is not None:
            self.report.peer_banned(msg.url, msg.reason)
        self.web_seeds_dropped[msg.url] = msg.reason
        self.warn(f"web seed {msg.url} dropped: {msg.reason}")
        if msg.banned:
            for o in self.workers:
                if o is not h:
                    self.send(o, ipc.DropWebSeed(msg.url, msg.reason))

    # -- peers -----------------------------------------------------------------------
    def share_live_peers(self) -> None:
        """PEX across workers: tell each worker the peers the others are connected to
        (:class:`ipc.OtherPeers`, bounded), when that changed; a peer of any worker
        then hears of the whole run's swarm. Never for a private torrent (BEP 27)."""
        if not self._live_dirty:
            return
        self._live_dirty = False
        for h in self.workers:
            if not h.alive:
                continue
            others: set[tuple[str, int]] = set()
            for wid, peers in self.live_peers.items():
                if wid != h.wid:
                    others.update(peers)
            shared = frozenset(list(others)[:ipc.MAX_SHARED_PEERS])
            if shared != self._others_sent.get(h.wid, frozenset()):
                self._others_sent[h.wid] = shared
                self.send(h, ipc.OtherPeers(shared))

    def add_peers(self, addrs: Sequence[tuple[str, int]], source: str) -> None:
        for addr in addrs:
            # one peer, one record: ::ffff:10.0.0.1 is 10.0.0.1, 2001:DB8::1 is 2001:db8::1
            key = normalize_peer(*addr)
            if key is None:
                continue
            if len(self.peers) >= MAX_KNOWN_PEERS:
                break  # trackers keep answering; the first MAX_KNOWN_PEERS are plenty
            if key not in self.peers and not self._is_us(*key):
                self.peers[key] = PeerRecord(*key, source=source)
        self.assign_peers()

    def ban_peers(self, addrs: Iterable[tuple[str, int]], reason: str) -> None:
        """Record ``addrs`` as banned before the run: never dialled (a magnet's fetch
        banned them for lying metadata, and they may be among the magnet's peers)."""
        for addr in addrs:
            key = normalize_peer(*addr)
            if key is None:
                continue
            rec = self.peers.get(key)
            if rec is None:
                if len(self.peers) >= MAX_KNOWN_PEERS:
                    break
                rec = self.peers[key] = PeerRecord(*key, source="magnet")
            rec.banned = True
            rec.last_reason = reason

    def _is_us(self, host: str, port: int) -> bool:
        """``host:port`` is our own listening socket, in whatever form a peer list names it
        (PEX lists the receiver itself; a dial to it is a connection to ourselves, which
        the handshake refuses and which, retried, would be refused forever)."""
        return port == self.port and (host == self.opts.bind or is_local_address(host))

    def assign_peers(self) -> None:
        now = time.monotonic()
        alive = [w for w in self.workers if w.alive]
        if not alive or (self.leases.complete and not self.seeding
                         and self.seed_started is None):
            return
        active = sum(1 for r in self.peers.values() if r.worker is not None)
        # the workers cannot hold more connections than max_connections in all
        limit = min(self.opts.max_peers, self.opts.max_connections or self.opts.max_peers)
        for rec in self.peers.values():
            if active >= limit:
                break
            if rec.worker is not None or rec.banned or rec.attempts >= PEER_MAX_ATTEMPTS:
                continue
            if rec.retry_at > now:
                continue
            # never more dials at a worker than it can queue (its DIAL_BUDGET)
            room = [w for w in alive if w.dialing < DIAL_BUDGET]
            if not room:
                break
            w = min(room, key=lambda w: (w.peers, w.wid))
            rec.worker = rec.last_worker = w.wid
            rec.attempts += 1
            rec.dialing = True
            w.peers += 1
            w.dialing += 1
            self.leases.set_peers(w.wid, w.peers)
            active += 1
            self.send(w, ipc.Connect(rec.host, rec.port))

    def peer_closed(self, h: WorkerHandle, msg: ipc.PeerClosed) -> None:
        rec = self.peers.get((msg.host, msg.port))
        if rec is None:
            return  # an incoming peer
        if rec.worker == h.wid:
            if rec.dialing:
                self._dial_answered(h, rec)
            rec.worker = None
            h.peers = max(0, h.peers - 1)
            self.leases.set_peers(h.wid, h.peers)
        rec.last_reason = msg.reason
        if msg.connected:
            rec.connected = True
            rec.attempts = 0
        if msg.banned:
            rec.banned = True
        delay = min(PEER_RETRY_MAX, PEER_RETRY_BASE * 2 ** max(0, rec.attempts - 1))
        rec.retry_at = time.monotonic() + delay

    def _dial_answered(self, h: WorkerHandle, rec: PeerRecord) -> None:
        """A dial handed to ``h`` is over (connected, or failed)."""
        if not rec.dialing:
            return
        rec.dialing = False
        h.dialing = max(0, h.dialing - 1)
        if h.dialing <= DIAL_BUDGET // 2:
            self._dials_freed = True  # hand out a batch, not one dial per answer

    # -- the run -----------------------------------------------------------------------
    def _check_done(self) -> None:
        # Complete once every piece is verified and written: the journal exists
        # for crash recovery and is removed at the end, so the last flush need
        # not be waited for (no client fsyncs a finished download).
        if self.leases.complete and not self.seeding:
            if self.report is not None:
                self.report.completed(self.snapshot)
            if self.seed_after:
                self._start_seeding()
            else:
                self._finish()

    def _output_made(self, fut: asyncio.Future[None]) -> None:
        """:meth:`make_output`, run in a thread by :meth:`run`, is done (a bug's exception
        is raised by :meth:`run`)."""
        e = fut.exception()
        if isinstance(e, FastTorrentError):
            self.fatal = e  # the workers are stopped as after any fatal error
            self._finish()
            return
        if e is not None:
            return
        if self._durable_unjournaled and self.journal is not None:
            try:
                self.journal.append(self._durable_unjournaled)
            except FastTorrentError as e:
                if self.fatal is None:
                    self.fatal = e
                self._finish()
                return
            self._durable_unjournaled = []
        if self.seed_started is not None:
            self.finish_files()  # completed (and seeding) while they were made

    # -- seeding after the download ------------------------------------------------
    def _start_seeding(self) -> None:
        """Complete: keep serving until the first of seed_time / seed_ratio is reached."""
        if self.seed_started is not None:
            return
        self.finish_files()
        self.seed_started = time.monotonic()
        limits = []
        if self.opts.seed_ratio is not None:
            limits.append(f"ratio {self.opts.seed_ratio:g}")
        if self.opts.seed_time is not None:
            limits.append(f"{self.opts.seed_time:g} s")
            self._seed_timer = asyncio.get_running_loop().call_later(
                self.opts.seed_time, self._check_seed_limits)
        self.log(f"download complete; seeding until {' or '.join(limits)}")
        if self.tracker_runner is not None and self.resumed < self.leases.num_wanted:
            self.tracker_runner.completed()  # 'completed' now, not when we leave
            self._completed_told = True
        self._check_seed_limits()

    def uploaded(self) -> int:
        """Bytes uploaded in this run, as the workers last reported."""
        return sum(int(w.stats.get("uploaded", 0)) for w in self.workers)

    def _check_seed_limits(self) -> None:
        if self.seed_started is None or self.seed_stop is not None:
            return
        if self.opts.seed_ratio is not None and \
                self.uploaded() >= self.opts.seed_ratio * self.meta.total_size:
            self.seed_stop = "ratio"
        elif self.opts.seed_time is not None and \
                time.monotonic() - self.seed_started >= self.opts.seed_time:
            self.seed_stop = "time"
        else:
            return
        self._finish()

    def prepare_seed(self, check: bool) -> None:
        """Seeding: hash the data (all cores) unless told not to; serve the good pieces.

        The data of a selective download: the files not there are read from its parts
        file (``storage.parts_path``), so the pieces they share with the files there
        are served too.
        """
        from .storage import parts_path

        meta = self.meta
        if os.path.exists(parts_path(self.outdir, meta.info_hash)):
            present = frozenset(k for k, f in enumerate(meta.files) if not f.pad and os.path.exists(
                os.path.join(self.outdir, *f.path.split("/"))))
            self.selected = present if len(present) < sum(not f.pad for f in meta.files) \
                else None
        layout = layout_for(meta, self.outdir, self.selected)
        check_output_paths(layout, self.outdir, writing=False)
        self.plan_arena()
        if check:
            self.log(f"checking {meta.total_size / 2**20:.0f} MiB of data")
            res = hash_pieces(layout, digests=_sha1_digests(meta), workers=self.nworkers,
                              fork=self.opts.fork_workers, v2=v2_pieces(meta))
            good = [i for i, st in enumerate(res.status) if st == PIECE_GOOD]
        else:
            good = list(range(meta.num_pieces))
        self.leases.mark_have(good)
        self.resumed = len(good)
        if not good:
            raise Incomplete(f"nothing to seed: none of the {meta.num_pieces} pieces is in "
                             f"{self.outdir}")
        if len(good) < meta.num_pieces:
            self.warn(f"seeding {len(good)} of {meta.num_pieces} pieces: the rest are "
                      "missing or bad")

    def _finish(self) -> None:
        if self.done_event is not None:
            self.done_event.set()

    def _stalled(self) -> bool:
        if not self.opts.stall_timeout or self.seed_started is not None:
            return False
        return time.monotonic() - self.last_progress > self.opts.stall_timeout

    def snapshot(self) -> TorrentSnapshot:
        """The run's numbers now (the event stream's and the metrics')."""
        n = self.meta.num_pieces
        return take_snapshot(
            info_hash=self.meta.info_hash_hex, total_size=self.meta.total_size,
            piece_length=self.meta.piece_length, pieces_total=n,
            pieces_verified=self.verified, downloaded=self.bytes_verified,
            slots_per_worker=self.slots_per_worker,
            last_verified=n > 0 and self.leases.state[n - 1] == PieceState.VERIFIED,
            seeding=self.seeding or self.seed_started is not None,
            workers=[(h.wid, h.alive, h.stats) for h in self.workers],
            banned=[ban_key(r.host, r.port) for r in self.peers.values() if r.banned])

    def _status(self) -> str:
        el = time.monotonic() - self.start_time
        if self.seed_started is not None:
            up = self.uploaded()
            return (f"seeding: uploaded {up / 2**20:.1f} MiB (ratio "
                    f"{up / max(1, self.meta.total_size):.2f})  "
                    f"{time.monotonic() - self.seed_started:.0f}s")
        rate = sum(w.stats.get("rate", 0.0) for w in self.workers if w.alive)
        left = self.leases.wanted_left * self.meta.piece_length
        n = max(1, self.leases.num_wanted)  # a selection: the percentage of its pieces
        eta = f"{left / rate:.0f}s" if rate > 1 else "-"
        conn = sum(w.stats.get("connected", 0) for w in self.workers if w.alive)
        per = " ".join(f"w{w.wid}:{w.stats.get('rate', 0) / 1e6:.0f}MB/s/"
                       f"{w.stats.get('connected', 0)}p" for w in self.workers if w.alive)
        done = 100 * (n - self.leases.wanted_left) / n
        return (f"{done:5.1f}%  {rate / 1e6:7.1f} MB/s  ETA {eta:>6}  "
                f"peers {conn}  [{per}]  {el:.0f}s")

    async def run(self) -> DownloadResult:
        loop = asyncio.get_running_loop()
        self.done_event = asyncio.Event()
        if self.leases.complete and not self.seeding and not self.seed_after:
            if self.report is not None:
                self.report.completed(self.snapshot)
            self.release_prestarted()
            self.finish_files()
            if self.journal is not None:
                self.journal.remove()  # nothing left to resume
            if self.dht is not None and self.own_dht:
                self.dht.close()
            return self.result(True)
        self.start_workers()
        self.start_early()
        output: asyncio.Future[None] | None = None
        if self._output is not None:
            # in a thread, as prepare runs in a batch: reserving a large file's blocks
            # can take a while (glibc writes them where fallocate is missing), and
            # this loop serves every torrent of a daemon; the peers are dialled
            # meanwhile (10,000 files take seconds to create)
            output = loop.run_in_executor(None, self.make_output)
            output.add_done_callback(self._output_made)
        if self.report is not None:
            await self.report.started(self.snapshot, seeding=self.seeding, port=self.port,
                                      workers=self.nworkers, pieces_resumed=self.resumed)
        if self.seeding:
            self.log(f"seeding {self.meta.name} ({self.meta.info_hash_hex}) on "
                     f"{format_peer(self.opts.bind or '*', self.port)} with {self.nworkers} "
                     "worker(s)")
        for sig in (signal.SIGINT, signal.SIGTERM) if self.handle_signals else ():
            try:
                loop.add_signal_handler(sig, self._on_signal)
            except (NotImplementedError, RuntimeError):
                pass
        self.add_peers(self.opts.peers, "manual")
        tracker_task = None
        tracker_stop = asyncio.Event()
        if self.opts.use_trackers and self.meta.trackers:
            tracker_task = loop.create_task(run_trackers(self, tracker_stop))
        dht_stop = asyncio.Event()
        dht_task = await self._start_dht(dht_stop)
        self._check_done()  # complete from the start (resumed): seed right away
        last_status = 0.0
        try:
            while not self.done_event.is_set():
                try:
                    await asyncio.wait_for(self.done_event.wait(), PROGRESS_INTERVAL)
                except TimeoutError:
                    pass
                if self.own_pool and self.pool is not None:
                    self.pool.check_alive()  # (a batch's pool is watched by its engine)
                if self.arena is not None and self.fatal is None:
                    err = self.arena.reservation_error()
                    if err is not None:
                        self.fatal = errors.ResourceExhausted(err)
                        self._finish()
                self.assign_peers()
                self.serve_waiting()
                self.share_live_peers()
                now = time.monotonic()
                if self.status_line is not None and now - last_status >= PROGRESS_INTERVAL:
                    self.status_line(self._status())
                    last_status = now
                if self.seed_started is not None:
                    self._check_seed_limits()
                if self.report is not None:
                    self.report.tick()
                if self._stalled():
                    break
        finally:
            if self._seed_timer is not None:
                self._seed_timer.cancel()
            if self.seed_started is not None:
                self.seed_ended = time.monotonic()
            self.close_early()
            if output is not None:
                await asyncio.wait([output])  # the files made (its outcome: _output_made)
            await self.stop_workers()
            if output is not None and output.exception() is not None and \
                    not isinstance(output.exception(), FastTorrentError):
                raise output.exception()  # type: ignore[misc]
            if tracker_task is not None:
                # 'completed' (if we are and it was not sent yet) and 'stopped', bounded
                # by the runner's stop timeout
                runner = self.tracker_runner
                if runner is not None and self.leases.complete and not self.seeding \
                        and self.resumed < self.leases.num_wanted \
                        and (not self._completed_told or runner.trackers.completed_pending):
                    runner.completed(final=True)
                    deadline = time.monotonic() + TRACKER_STOP_TIMEOUT / 2
                    while runner.trackers.completed_pending and time.monotonic() < deadline \
                            and not tracker_task.done():
                        await asyncio.sleep(0.02)
                tracker_stop.set()
                try:
                    await asyncio.wait_for(tracker_task, TRACKER_STOP_TIMEOUT)
                except (TimeoutError, asyncio.CancelledError):
                    pass
            await self._stop_dht(dht_task, dht_stop)
            for sig in (signal.SIGINT, signal.SIGTERM) if self.handle_signals else ():
                try:
                    loop.remove_signal_handler(sig)
                except (NotImplementedError, RuntimeError):
                    pass
            if self.report is not None:
                await self.report.ended(self.seed_stop)
        complete = self.leases.complete
        if complete and not self.seeding and self.fatal is None:
            self.finish_files()
        if self.journal is not None and not self.seeding:
            if complete:
                self.journal.remove()
            else:
                # the workers flushed what they wrote: record the files as they are now
                try:
                    self.journal.seal(_file_stats(layout_for(self.meta, self.outdir,
                                                             self.selected)))
                except FastTorrentError as e:
                    self.warn(str(e))
                self.journal.close()
        return self.result(complete)

    # -- the DHT (torrent/dht/service.py) -------------------------------------------
    def lacks_peers(self) -> bool:
        """Whether the DHT should search again soon: downloading with few peers connected."""
        if self.seeding or self.leases.complete:
            return False
        conn = sum(int(w.stats.get("connected", 0)) for w in self.workers if w.alive)
        return conn < min(self.opts.max_peers, DHT_ENOUGH_PEERS)

    async def _start_dht(self, stop: asyncio.Event) -> asyncio.Task[None] | None:
        """Serve the DHT on this loop; search for peers and announce our port (we listen)."""
        if self.dht is None:
            return None
        await self.dht.attach()
        return asyncio.get_running_loop().create_task(self.dht.search(
            self.meta.info_hash, lambda peers: self.add_peers(peers, "dht"), stop,
            lacking=self.lacks_peers, announce_port=self.port))

    async def _stop_dht(self, task: asyncio.Task[None] | None, stop: asyncio.Event) -> None:
        if self.dht is None:
            return
        stop.set()
        if task is not None:
            if task.done() and not task.cancelled() and task.exception() is not None:
                self.warn(f"dht: the peer search failed: {task.exception()!r}")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self.dht.detach()
        if self.own_dht:
            self.dht.close()  # saves the table

    def _on_signal(self) -> None:
        self.interrupted = True
        if self.seed_started is not None and self.seed_stop is None:
            self.seed_stop = "interrupted"
        self._finish()

    def warn(self, text: str) -> None:
        """A problem that does not stop the download (a tracker, a worker)."""
        self.warnings.append(text)
        self.log(f"warning: {text}")

    async def stop_workers(self) -> None:
        """Stop the torrent in every worker: each flushes, reports its last pieces and
        stats, and says Stopped (at most WORKER_EXIT_TIMEOUT); then leave the pool
        (and close it, when the run opened it)."""
        self.stopping = True
        complete = self.leases.complete
        # A seeding limit reached: the peers get the blocks already sent to them.
        drain = self.seed_stop in ("time", "ratio")
        for h in self.workers:
            self.send(h, ipc.Stop(flush=not complete, drain=drain))
        pool = self.pool
        if pool is not None:
            gone = self._worker_gone = asyncio.Event()
            deadline = time.monotonic() + WORKER_EXIT_TIMEOUT
            while True:
                gone.clear()  # (before the look: a Stopped read after it wakes the wait)
                if self.own_pool:
                    pool.check_alive()  # (a process that died without a word)
                left = deadline - time.monotonic()
                if left <= 0 or not any(h.alive for h in self.workers):
                    break
                # woken by each Stopped as it is read, not by a poll
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(gone.wait(), min(left, STOP_POLL))
            self._worker_gone = None
            pool.detach(self.tid)
            if self.own_pool:
                await pool.close()
        self.arena = None

    def result(self, complete: bool) -> DownloadResult:
        ws = []
        for h in self.workers:
            s = h.stats
            lw = self.leases.workers[h.wid]
            ws.append({"worker": h.wid, "alive": not h.died, "peers": s.get("peers", 0),
                       "pieces": lw.pieces_first, "pieces_verified": s.get("pieces", 0),
                       "endgame_pieces": lw.endgame_pieces,
                       "bytes": s.get("bytes", 0), "steals": lw.steals,
                       "released": s.get("released", 0),
                       "hash_failures": s.get("hash_failures", 0),
                       "uploaded": s.get("uploaded", 0),
                       "mse": s.get("mse", 0), "mse_rc4": s.get("mse_rc4", 0),
                       "dial_fallbacks": s.get("dial_fallbacks", 0),
                       "redials": s.get("redials", 0),
                       "endgame": s.get("endgame", False),
                       # the connection limits at work (torrent/worker.py)
                       "refused": s.get("refused", 0),
                       "handshake_timeouts": s.get("handshake_timeouts", 0),
                       # connections a magnet's fetch handed over (never dialled again)
                       "adopted": s.get("adopted", 0),
                       "peak_connections": s.get("peak_connections", 0),
                       "peak_half_open": s.get("peak_half_open", 0),
                       "peak_dialing": s.get("peak_dialing", 0),
                       "peak_dial_queue": s.get("peak_dial_queue", 0),
                       "web_seed_bytes": s.get("web_seed_bytes", 0),
                       "web_seed_errors": s.get("web_seed_errors", 0)})
        banned = sorted({b for h in self.workers for b in h.stats.get("banned", [])}
                        | {ban_key(r.host, r.port) for r in self.peers.values() if r.banned})
        peers = [{"host": r.host, "port": r.port, "source": r.source, "connected": r.connected,
                  "worker": r.last_worker, "banned": r.banned, "last_reason": r.last_reason}
                 for r in self.peers.values()]
        return DownloadResult(
            info_hash=self.meta.info_hash_hex,
            complete=complete,
            bytes_downloaded=sum(w["bytes"] for w in ws),
            seconds=time.monotonic() - self.start_time,
            pieces_total=self.meta.num_pieces,
            pieces_resumed=self.resumed,
            workers=ws,
            peers=peers,
            hash_failures=sum(w["hash_failures"] for w in ws),
            banned_peers=banned,
            duplicate_pieces=self.duplicates,
            bytes_uploaded=sum(w["uploaded"] for w in ws),
            seed_seconds=((self.seed_ended or time.monotonic()) - self.seed_started
                          if self.seed_started is not None else 0.0),
            seed_stop=self.seed_stop,
            metadata_seconds=self.metadata_seconds,
            first_piece_seconds=(None if self.first_piece_at is None
                                 else self.first_piece_at - self.began),
            early_pieces=list(self.early_outcomes),
            dht=None if self.dht is None else {
                **self.dht.summary(),
                "first_peer_seconds": (None if self.dht.first_peer_at is None
                                       else round(self.dht.first_peer_at - self.began, 6))},
            **self._selection_summary(),
        )

    def _selection_summary(self) -> dict[str, Any]:
        """The :class:`DownloadResult` fields saying what this run downloaded."""
        pl = self.meta.piece_length
        files = [k for k, f in enumerate(self.meta.files) if not f.pad
                 and (self.selected is None or k in self.selected)]
        return {"selected_files": None if self.selected is None else files,
                "selected_file_count": len(files),
                "selected_bytes": sum(self.meta.files[k].length for k in files),
                "shard": self.selection.shard,
                "pieces_wanted": self.meta.num_pieces if self.wanted is None
                else sum(self.wanted),
                "wanted_bytes": self.meta.total_size if self.wanted is None
                else sum(min(pl, self.meta.total_size - i * pl)
                         for i, w in enumerate(self.wanted) if w)}


async def run_trackers(coord: Coordinator, stop: asyncio.Event) -> None:
    """Announce to the torrent's trackers (BEP 12 tiers) and feed the peers to the coordinator.

    Only the torrent's own trackers are announced to here (the DHT and PEX are
    other peer sources, both off for private torrents, as BEP 27 asks).  A dead,
    slow or lying tracker is a warning; the download goes on with the other
    tiers and the ``--peer`` peers.
    """
    from .tracker.client import TrackerRunner, make_announce_fn
    from .tracker.multitracker import TrackerSet

    try:
        ts = TrackerSet(coord.meta.trackers)
    except ValueError as e:
        coord.warn(f"trackers: {e}")
        return
    report = coord.report
    runner = TrackerRunner(ts, on_warning=coord.warn,
                           on_error=None if report is None else report.tracker_error)
    coord.tracker_runner = runner
    m = coord.meta

    def stats() -> tuple[int, int, int]:
        left = max(0, m.total_size - coord.verified * m.piece_length)
        done = sum(w.stats.get("bytes", 0) for w in coord.workers)
        return coord.uploaded(), done, left

    fn = make_announce_fn(info_hash=m.info_hash, peer_id=coord.peer_id, port=coord.port,
                          stats=stats)
    await runner.run(fn, lambda peers: coord.add_peers(list(peers), "tracker"), stop)


def _run_loop(coro: Any) -> Any:
    """Run the coordinator's loop on uvloop (asyncio where uvloop is missing)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _resolve(options: Options | None, overrides: dict[str, Any]) -> Options:
    """The run's options with the machine-dependent defaults filled in, once."""
    opts = (options or Options()).replace(**overrides) if overrides else (options or Options())
    if opts.workers is None:
        opts = opts.replace(workers=available_cpus())
    return _resolve_connections(opts)


def _resolve_connections(opts: Options) -> Options:
    """``max_connections`` from the fd limit when not given (``opts.workers`` resolved)."""
    if opts.max_connections is None:
        opts = opts.replace(max_connections=default_max_connections(
            opts.workers or 1, fd_limit()))
    return opts


def _write_file(path: str, data: bytes, what: str) -> None:
    """Write ``data`` to ``path`` whole or not at all (a temporary file, then a rename)."""
    # our own temporary name: shards of one magnet (--shard) keep its metadata at one path
    tmp = f"{path}.{os.getpid()}.part"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise os_error(e, f"writing {what} {path}") from None


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(metainfo.MAX_TORRENT_SIZE + 1)
    except OSError as e:
        raise os_error(e, f"reading {path}") from None


def _load_or_fetch_metainfo(
        uri: str, outdir: str, opts: Options, log: Callable[[str], None],
        on_dialled: Callable[[], None] | None = None,
) -> tuple[metainfo.Metainfo, Options, bytes, Dht | None, frozenset[tuple[str, int]],
           tuple[Handover, ...]]:
    """The torrent of a magnet link: kept from an earlier run, else fetched from peers.

    The metadata kept beside the journal (``DIR/.fasttorrent/<info-hash>.torrent``)
    is used when it loads and hashes to the magnet's info-hash; otherwise the
    info dict (and a v2 magnet's piece layers) is fetched
    (:func:`~torrent.magnetfetch.fetch_metadata`) and kept there once it
    passed the .torrent checks. Either way the torrent
    carries the magnet's trackers, and its ``x.pe`` peers join ``opts.peers``.
    ``on_dialled`` goes to the fetch (see :func:`~torrent.magnetfetch.fetch_metadata`),
    or is called before it when the DHT or trackers will look names up.

    Returns:
        The torrent, the options for the download (peers; the port announced
        while fetching), the peer id the fetch used, the DHT node the fetch
        used (None: none, or the torrent is private), for the download, the
        peers the fetch banned for bad metadata, and the connections it hands
        over (:class:`~torrent.magnetfetch.Handover`; the caller closes them
        if the download does not take them).

    Raises:
        InvalidTorrent: a malformed magnet, or metadata that is not a valid,
            safe torrent (exit 3).
        Incomplete, Interrupted: from the fetch.
    """
    from .magnet import parse_magnet
    from .magnetfetch import close_handovers, fetch_metadata
    from .metadata import metainfo_from_info, torrent_bytes

    magnet = parse_magnet(uri)
    peers = tuple(dict.fromkeys((*opts.peers, *magnet.peers)))
    # BEP 53 so=: the link's selection, applied once the files are known (selection.py)
    opts = opts.replace(peers=peers, select_only=magnet.select_only)
    peer_id = make_peer_id()
    kept = metadata_path(os.path.abspath(outdir), magnet.info_hash)
    meta = None
    dht: Dht | None = None
    banned: frozenset[tuple[str, int]] = frozenset()
    conns: tuple[Handover, ...] = ()
    meta = _load_kept_metainfo(kept, magnet, log)
    if meta is None:
        # a magnet does not say whether its torrent is private: the DHT may find its peers
        want_dht = dht_wanted(opts)
        if on_dialled is not None and (want_dht or (opts.use_trackers and magnet.trackers)):
            # a name lookup (DHT routers, trackers) starts resolver threads that stay,
            # and a process with threads cannot fork: the workers start first
            on_dialled()
            on_dialled = None
        if opts.port == 0:  # the port the trackers hear of is the one the workers take
            opts = opts.replace(port=_free_port(opts.bind, udp=want_dht))
        if want_dht:
            from .dht.service import start_dht

            dht = start_dht(opts, opts.port, log)
        try:
            info, banned, conns, layers = _run_loop(fetch_metadata(
                magnet, opts, peer_id=peer_id, port=opts.port, log=log, dht=dht,
                on_dialled=on_dialled))
            # the strict .torrent checks (a v2 magnet's layers against their roots too)
            meta = metainfo_from_info(info, magnet, piece_layers=layers)
            _write_file(kept, torrent_bytes(meta.info_bytes, magnet,
                                            piece_layers=meta.piece_layers),
                        "the metadata to")
        except BaseException:
            close_handovers(conns)
            if dht is not None:
                dht.close()
            raise
        if meta.private and dht is not None:  # BEP 27: no DHT for a private torrent
            dht.close()
            dht = None
    if opts.save_torrent:
        try:
            _write_file(opts.save_torrent, torrent_bytes(meta.info_bytes, magnet,
                                                         piece_layers=meta.piece_layers),
                        "the .torrent to")
        except BaseException:
            close_handovers(conns)
            raise
    return meta, opts, peer_id, dht, banned, conns


def load_fetch(opts: Options) -> None:
    """Import what a magnet's fetch runs: its modules, the DHT's when a node will run,
    and the RC4 cipher when MSE may be spoken (forked workers share it).

    Part of a magnet run's start-up, before its clock starts (as libtorrent's
    library is loaded before its session's): imported lazily in the fetch
    instead, ~30 ms of it blocked the fetch's loop just after its first dial,
    and a plain .torrent's run imports none of it (docs/ARCHITECTURE.md,
    "Start-up imports only what the run uses").
    """
    from . import magnetfetch, metadata  # noqa: F401

    if dht_wanted(opts):
        from .dht import service  # noqa: F401
    if opts.encryption != "disabled":
        from .wire import rc4

        rc4.preload()


def _load_kept_metainfo(kept: str, magnet: Any, log: Callable[[str], None],
                        ) -> metainfo.Metainfo | None:
    """The torrent of ``magnet`` kept beside the journal by an earlier run (None: none,
    or not usable: then said in a warning, and the metadata is fetched again)."""
    from .metadata import metainfo_from_info

    if not os.path.exists(kept):
        return None
    try:
        old = metainfo.load(kept)
        if old.info_hash != magnet.info_hash:
            raise errors.InvalidTorrent(f"it is torrent {old.info_hash_hex}")
        # a v2 magnet's layers were fetched once and kept with it
        meta = metainfo_from_info(old.info_bytes, magnet, piece_layers=old.piece_layers)
    except errors.InvalidTorrent as e:
        log(f"warning: ignoring the kept metadata {kept} ({e}); fetching it again")
        return None
    log(f"magnet {magnet.info_hash_hex}: metadata kept from an earlier run")
    return meta


def download(torrent: str, outdir: str, options: Options | None = None, *,
             log: Callable[[str], None] | None = None,
             status_line: Callable[[str], None] | None = None,
             **overrides: Any) -> DownloadResult:
    """Download ``torrent`` into ``outdir`` with one worker process per core.

    Args:
        torrent: path of the .torrent, or a magnet URI (its metadata is
            fetched from its ``x.pe`` peers, ``peers`` and its trackers first,
            and kept beside the resume journal until the download completes).
        outdir: files are written under it at the paths ``fasttorrent info`` lists.
        options: the run's settings (:class:`~torrent.options.Options`; its
            defaults are the CLI's).  Without ``seed_time`` / ``seed_ratio``
            nothing is seeded after completion; with both, the first limit
            reached ends the run; SIGINT/SIGTERM while seeding ends it early
            and returns normally (the download is complete).
        log: called with each progress or warning line.
        status_line: called with the live status line.
        **overrides: settings to change in ``options`` (e.g. ``workers=2,
            peers=[("127.0.0.1", 6881)]``): the same names as its fields.

    Returns:
        A :class:`DownloadResult`; ``complete`` is True only when every piece
        is verified and written.

    Raises:
        InvalidTorrent, UsageError, DiskFull, StorageError, ResourceExhausted:
            see :mod:`torrent.errors`.
        Incomplete: stalled (the result is attached as ``.result``), or a
            magnet's metadata did not come.
        Interrupted: SIGINT / SIGTERM; state saved.
        TypeError: an unknown setting in ``overrides``.
    """
    from .magnet import is_magnet

    opts = _resolve(options, overrides)
    if is_magnet(torrent):
        load_fetch(opts)
    began = time.monotonic()  # the origin of metadata_seconds and first_piece_seconds
    with run_report(opts, log or (lambda s: None)) as report:
        return _download(torrent, outdir, opts, log, status_line, began, report)


def _download(torrent: str, outdir: str, opts: Options, log: Callable[[str], None] | None,
              status_line: Callable[[str], None] | None, began: float,
              report: RunReport) -> DownloadResult:
    """:func:`download` once its options are resolved and its report opened."""
    from .magnet import is_magnet, parse_magnet

    peer_id = None
    metadata_seconds = 0.0
    dht = None
    banned: frozenset[tuple[str, int]] = frozenset()
    conns: tuple[Handover, ...] = ()
    from_magnet = is_magnet(torrent)
    # The workers import while the torrent is read, checked or fetched. Forks are
    # ready in milliseconds, but block this process meanwhile: a magnet's fetch
    # forks them once its first handshake went out, while the peers answer.
    prestarted = PrestartedWorkers(opts.workers or 1, fork=opts.fork_workers,
                                   start=not (from_magnet and opts.fork_workers),
                                   mse=opts.encryption != "disabled")
    # The worker processes are configured (port, arena, listening) while the torrent
    # is read, checked or fetched: the arena is cut by bytes, so it needs no piece size.
    want_dht = dht_wanted(opts)
    if from_magnet and opts.port == 0:  # the port the fetch announces is the workers'
        opts = opts.replace(port=_free_port(opts.bind, udp=want_dht))
    pool = WorkerPool(opts, prestarted=prestarted)
    deferred: list[FastTorrentError] = []

    def configure_pool() -> None:
        try:
            pool.configure(run_arena_bytes(opts.arena_bytes, opts.workers or 1),
                           udp=want_dht, free_port=lambda bind, udp: _free_port(bind, udp=udp))
        except FastTorrentError as e:
            deferred.append(e)  # raised once the fetch is over

    def configure() -> None:
        """Configure the workers as soon as the torrent is known, so that their set-up
        (loop, listening sockets) overlaps the output's. (Not while a magnet's metadata
        comes: the fetch's loop must not wait, and a thread doing it there would hold
        the GIL against that loop: measured, the metadata came ~5 ms later.)"""
        prestarted.start()  # and a failure it deferred
        if not pool.configured:
            configure_pool()
        if deferred:
            raise deferred[0]

    coord = None
    try:
        if from_magnet:
            magnet = parse_magnet(torrent)
            report.added(magnet.info_hash_hex, source="magnet", name=magnet.display_name)
            meta, opts, peer_id, dht, banned, conns = _load_or_fetch_metainfo(
                torrent, outdir, opts, log or (lambda s: None),
                on_dialled=lambda: prestarted.start(defer_error=True))
            metadata_seconds = time.monotonic() - began
        else:
            meta = metainfo.load(torrent)
            report.added(meta.info_hash_hex, source="torrent", name=meta.name)
            if opts.save_torrent:
                _write_file(opts.save_torrent, _read_file(torrent), "the .torrent to")
        configure()
        report.metadata(meta)
        coord = Coordinator(meta, outdir, opts, log=log, status_line=status_line, began=began,
                            metadata_seconds=metadata_seconds, dht=dht, handover=conns,
                            pool=pool)
        coord.own_pool = True
        coord.report = report
        if peer_id is not None:
            coord.peer_id = peer_id  # the trackers heard of it while the metadata was fetched
        coord.ban_peers(banned, "banned: its metadata does not hash to the info-hash")
        try:
            coord.prepare()
        except BaseException:
            if dht is not None:  # the run closes it; this one never ran
                dht.close()
            raise
        res: DownloadResult = _run_loop(coord.run())
    finally:
        if coord is not None:
            coord.close_early()  # (closed by the run, unless it failed before its loop)
        pool.close_now()  # (closed by the run, unless it never ran its workers)
        prestarted.close()  # those not taken (an error, or nothing left to do)
        left = conns if coord is None else coord.handover
        if left:  # not taken (an error, or nothing left to do)
            from .magnetfetch import close_handovers

            close_handovers(left)
    err = run_error(coord, res)
    if err is not None:
        raise err
    return res


def _sha1_digests(meta: metainfo.Metainfo) -> bytes | None:
    """The SHA-1 digests a piece check needs: None for a v2-only torrent (its merkle
    roots alone, from ``torrent.v2pieces``)."""
    return None if meta.v2_only else meta.piece_hashes


def run_error(coord: Coordinator, res: DownloadResult) -> FastTorrentError | None:
    """How a download's run ended badly (the result attached as ``.result``), or None."""
    if coord.fatal is not None:
        return coord.fatal
    meta = coord.meta
    if coord.interrupted and not (res.complete and coord.seed_started is not None):
        e = Interrupted(f"interrupted: {coord.verified}/{meta.num_pieces} pieces verified; "
                        "state saved, run again to resume")
        e.result = res  # type: ignore[attr-defined]
        return e
    if not res.complete:
        tried = ", ".join(f"{format_peer(r.host, r.port)} ({r.last_reason or 'no answer'})"
                          for r in list(coord.peers.values())[:5]) or "none"
        more = len(coord.peers) - 5
        e2 = Incomplete(
            f"incomplete: {coord.verified}/{meta.num_pieces} pieces after no progress for "
            f"{coord.opts.stall_timeout:.0f} s; peers tried: {tried}"
            + (f" and {more} more" if more > 0 else "")
            + ("; " + "; ".join(coord.warnings[-3:]) if coord.warnings else ""))
        e2.result = res  # type: ignore[attr-defined]
        return e2
    return None


def seed(torrent: str, directory: str, options: Options | None = None, *,
         log: Callable[[str], None] | None = None,
         status_line: Callable[[str], None] | None = None,
         ready: Callable[[int], None] | None = None, **overrides: Any) -> DownloadResult:
    """Serve the data in ``directory`` until SIGINT/SIGTERM (then :class:`Interrupted`).

    Args:
        torrent: path of the .torrent.
        directory: holds the files at the paths ``fasttorrent info`` lists.
        options: the run's settings (``check``: hash the data first, on every
            core, and serve only good pieces; ``peers``: peers to dial, for
            clients that ignore loopback peers from a tracker; ``port`` 0: a
            free one, reported to ``ready``).
        log, status_line: as for :func:`download`.
        ready: called with the listening port once the workers serve.
        **overrides: settings to change in ``options``.

    Raises:
        Interrupted: stopped by a signal (the normal end of seeding).
        InvalidTorrent, StorageError, Incomplete (no good piece at all), ...
    """
    opts = _resolve(options, overrides).replace(stall_timeout=0)
    with run_report(opts, log or (lambda s: None)) as report:
        return _seed(torrent, directory, opts, log, status_line, ready, report)


def _seed(torrent: str, directory: str, opts: Options, log: Callable[[str], None] | None,
          status_line: Callable[[str], None] | None, ready: Callable[[int], None] | None,
          report: RunReport) -> DownloadResult:
    """:func:`seed` once its options are resolved and its report opened (always raises)."""
    # importing (or forked, ready) while the data is checked
    prestarted = PrestartedWorkers(opts.workers or 1, fork=opts.fork_workers,
                                   mse=opts.encryption != "disabled")
    try:
        meta = metainfo.load(torrent)
        report.added(meta.info_hash_hex, source="torrent", name=meta.name)
        report.metadata(meta)
        coord = Coordinator(meta, directory, opts, seeding=True, log=log,
                            status_line=status_line, prestarted=prestarted)
        coord.report = report
        coord.prepare_seed(opts.check)
        coord.on_ready = ready
        res = _run_loop(coord.run())
    finally:
        prestarted.close()
    if coord.fatal is not None:
        raise coord.fatal
    e = Interrupted(f"stopped: uploaded {res.bytes_uploaded} bytes")
    e.result = res  # type: ignore[attr-defined]
    raise e
