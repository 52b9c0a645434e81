"""A download worker: one process, one event loop (uvloop), its own peers and leased pieces.

Theory of operation
-------------------
The coordinator spawns one worker per core.  A worker attaches the shared
arena and uses its own run of piece slots; it connects to the peers the
coordinator gives it (each peer belongs to exactly one worker) and accepts
incoming ones on the shared ``SO_REUSEPORT`` port.  Its :class:`Picker`
chooses blocks inside its lease; when the lease runs low it asks the
coordinator for more (:class:`~torrent.ipc.NeedPieces`), and gives pieces
back when asked to (:class:`~torrent.ipc.Steal`).

A block is copied once from the receive buffer into its slot by the native
core.  A full slot goes to this worker's single I/O thread, which hashes it
(native SHA-1, GIL released) and, if good, ``pwrite``s it; the event loop
keeps receiving meanwhile.  Good pieces are reported as
:class:`~torrent.ipc.Verified`; every :data:`FLUSH_INTERVAL` the I/O thread
``fdatasync``s the files and the batch is reported as
:class:`~torrent.ipc.Durable`, which the coordinator journals.

A failed piece is fetched again.  If one peer sent all of it, that peer is
banned; otherwise the CRC32 of every block of the bad copy is kept with its
sender and the piece is refetched from one of them alone ("parole"); when a
good copy arrives, the senders whose blocks differ from it are the proven
culprits and are banned.  An honest peer is never banned.

The worker exits when told to stop, and by itself when its control pipe
reaches EOF (the coordinator died).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import __version__, _io, ipc
from . import _speedups as _k
from .choker import DOWNLOAD_MIN_WAIT, Choker, Throttle
from .errors import DiskFull, FastTorrentError, RemoteProtocolError
from .net.peer import PeerConn
from .options import MAX_CONNECTIONS_CAP, Options, dial_order, share
from .peeraddr import ban_key, format_peer
from .picker import BLOCK_SIZE, Picker, PieceDL, Slot
from .shm import Arena
from .storage import Flush, Storage, layout_for, os_error
from .v2pieces import v2_pieces
from .webseed import web_seed_urls
from .wire import peer as wp
from .wire.extension import (
    MAX_METADATA_SIZE,
    MAX_PEX_ADDED,
    MAX_PEX_DROPPED,
    OUR_EXTENSION_IDS,
    UT_METADATA,
    UT_PEX,
    ExtensionHandshake,
    MetadataReject,
    MetadataRequest,
    Pex,
    PexPeer,
    metadata_data,
    metadata_piece_count,
)
from .wire.fastext import allowed_fast_set
from .wire.framing import Framer, ReceiveBuffer, RecvBudget
from .wire.handshake import DHT_BIT, RESERVED_DHT, RESERVED_OURS
from .wire.messages import Hashes, HashRequest, LocalProtocolError, pack_piece_header
from .wire.mse import CRYPTO_RC4, Established

if TYPE_CHECKING:
    from .piecelayers import LayerServer
    from .webseed_worker import WebSeeds

__all__ = ["DIAL_BUDGET", "DIAL_QUEUE_LIMIT", "LEASE_MIN_BYTES", "MAX_DIALS", "Worker",
           "WorkerConfig", "lease_request"]

#: Seconds between fdatasync batches (and Durable reports).  Longer batches
#: mean fewer flushes; shorter ones mean less refetching after a crash.
FLUSH_INTERVAL = 1.0
#: The worker's housekeeping tick.
TICK = 0.25
#: Request pipeline per peer: rate x PIPELINE_SECONDS / 16 KiB, clamped to
#: [MIN_DEPTH, MAX_DEPTH] (libtorrent: 3 s, [2, 500]).  Slow start at INITIAL_DEPTH.
PIPELINE_SECONDS = 3.0
#: The run's first piece is verified and written on the loop when it is at most this
#: big (see Worker.submit_piece): ~1 ms of the loop for 1 MiB; a 64 MiB piece would
#: hold it ~40 ms, and goes to the I/O thread like the rest.
FIRST_PIECE_INLINE = 4 << 20
MIN_DEPTH = 4
MAX_DEPTH = 500
#: A peer's pipeline until the run's first piece is complete, refilled per read. A
#: seeder serves a new connection slowly (libtorrent keeps one block in its send
#: buffer until it has measured a rate), and unevenly: with deep pipelines a
#: quarter of the first piece each, that piece waited for the slowest of four
#: seeders. Short ones let the first piece's blocks go to whoever delivers. Only
#: for the worker's first COLD_BLOCKS blocks (4 MiB) at most: over a slow path 8
#: blocks a round trip would hold a run of huge pieces back (16 MiB at 50 ms is 1.6 s).
COLD_DEPTH = 8
COLD_BLOCKS = 256
INITIAL_DEPTH = 64
#: Ask the coordinator for more pieces when fewer unstarted leased pieces
#: remain than this many per slot... in practice: a lease of 2 x slots is
#: asked for when fewer than `slots` are left, so a peer never waits on the
#: coordinator round trip.
LOW_WATER = 4
#: Bytes queued in a connection's transport before we stop reading blocks from
#: disk for it; resume_writing() resumes.  1 MiB is ~64 blocks in flight.
SEND_HIGH_WATER = 1 << 20
#: Blocks answered per write when uploading (see Worker.serve): 1 MiB.
SERVE_BATCH = 64
#: Size of the reused upload buffers, and how many are kept: a fresh 1 MiB
#: buffer per write (zeroed, page-faulted in) cost 15 % of a seeding worker.
SERVE_BUFFER = SERVE_BATCH * (13 + 16384)
SERVE_POOL = 4
#: Refill a peer's request pipeline only when at least this many requests fit:
#: fewer, larger writes (a request is 17 bytes; a send on loopback runs the
#: receiver's TCP path inline, ~10 % of a worker's time at 16 per write).
REFILL_BATCH = 16
#: Piece bytes per writer one file may have at once (see file_writers).
FILE_WRITER_BYTES = 256 << 10


def file_writers(piece_length: int) -> int:
    """Writers at most at once on one file (``IOThread(file_writers=)``): one per
    :data:`FILE_WRITER_BYTES` of a piece. Measured (1 GiB in 200 files, 256 KiB
    pieces, and 4 GiB in one, 1 MiB pieces, 4 libtorrent seeders): several
    writers of one file waited on its locks in the kernel for small writes (one
    writer per file: 450 to 566 MB/s, 2.05 to 1.87 CPU s/GiB) and kept the device
    busy for large ones (one per file: 760 to 725 MB/s)."""
    return max(1, piece_length // FILE_WRITER_BYTES)


#: Verified pieces are reported to the coordinator at most this late (batched).
VERIFIED_DELAY = 0.05
#: A worker asks for at least this many bytes of pieces at a time (besides two
#: slots' worth): many workers share the arena, so each has few slots (64
#: workers: 4 slots of 1 MiB), and a lease of two slots' worth made one
#: NeedPieces per 8 pieces.  Unstarted leased pieces cost no memory; the
#: lease table's fair share and steals still spread the tail.
LEASE_MIN_BYTES = 32 << 20


def lease_request(nslots: int, piece_length: int) -> int:
    """The pieces a worker with ``nslots`` slots asks for (:class:`~torrent.ipc.NeedPieces`)."""
    return max(LOW_WATER, 2 * nslots, LEASE_MIN_BYTES // piece_length)
#: What the receive buffers of one worker may grow to beyond their first 4 KiB
#: each (torrent/wire/framing.py): 64 fast peers reading 1 MiB at a time.  A
#: frame that needs more drops its connection; idle buffers shrink back.
RECV_BUDGET = 64 << 20
#: A peer sending less than this (bytes/s) with nothing pending gets its
#: receive buffer shrunk back to the first few KiB (and the budget refunded).
SHRINK_BELOW_RATE = 64 << 10
#: BEP 11: PEX goes out to a peer at most once a minute, and a peer's is taken
#: at most that often (the 50-added bound of a message then bounds the rate).
PEX_INTERVAL = 60.0
#: A peer's PEX is taken a little early too: libtorrent sends its diffs 60-61 s
#: apart, and delivery jitter must not make us drop one (a flood still gets one
#: message a minute through).
PEX_SLACK = 5.0
#: Our first PEX to a peer goes out this soon after it connects (libtorrent
#: sends its first list within a second or so), then once a minute.
PEX_FIRST = 5.0
#: ut_metadata pieces (16 KiB) we answer one peer per tick at most: the info
#: dict of a large torrent is a few MiB, and a peer asking for it in a loop
#: gets rejects beyond this, not our upload.
MAX_METADATA_ANSWERS = 16
#: BEP 52 hash requests we answer one peer per tick at most (a reply carries up
#: to MAX_HASHES_PER_REQUEST hashes, 256 KiB): libtorrent keeps two out at a
#: time, so an honest peer never meets the bound; a flood gets hash rejects,
#: 48 bytes each, not our upload or our CPU.
MAX_HASH_ANSWERS = 8
#: Bytes queued to a peer past which its hash requests get rejects instead of
#: hashes: a peer that asks and does not read would otherwise have us queue
#: MAX_HASH_ANSWERS replies of 256 KiB every tick. Two of the largest replies.
MAX_HASH_BACKLOG = 512 * 1024
#: Completed connections the kernel queues for us until we accept them, per
#: worker (each has its own socket: SO_REUSEPORT).  Beyond it a burst of peers
#: is dropped by the kernel before we can count or refuse it (with SYN cookies
#: a client may even believe a connection open that we never see); accepting
#: and refusing is for our caps to do.  The kernel clamps it to somaxconn.
LISTEN_BACKLOG = 1024
#: Connect timeout for outgoing peers.
CONNECT_TIMEOUT = 10.0
#: Outgoing connection attempts in flight per worker (TCP connects not yet
#: answered).  A tracker may hand out thousands of addresses, most of them
#: dead: refused ones go by at once, silent ones hold their slot for
#: CONNECT_TIMEOUT, and never more than this many sockets wait on the
#: network (libtorrent paces with connection_speed, 30 attempts a second).
MAX_DIALS = 16
#: Candidates waiting per worker for a dial slot or a free connection.  The
#: coordinator keeps the peer table (MAX_KNOWN_PEERS) and hands a worker at
#: most DIAL_BUDGET dials at once, so this queue stays under its bound; past
#: it a candidate is handed back (PeerClosed "dial queue full").
DIAL_QUEUE_LIMIT = 64

#: A peer that closes on us within this many seconds of the HAVE that made us
#: complete, while it still lacks a piece we have, is dialled again, once (on
#: the address we dialled, or its BEP 10 ``p``). libtorrent 2.1, on a HAVE that
#: makes its peer a seed, drops a peer it is not interested in *before* it
#: updates that interest ("uninteresting upload-only peer"), so a leecher that
#: lacks exactly our last piece hangs up on the HAVE that would have made us
#: interesting, and dials back only a minute later. Our new connection opens
#: with HAVE_ALL, which it takes at once.
REDIAL_WINDOW = 5.0
#: At most this many such redials per worker per run.
MAX_REDIALS = 64
#: Dials the coordinator may have outstanding at one worker: in flight and queued.
DIAL_BUDGET = MAX_DIALS + DIAL_QUEUE_LIMIT

try:  # imported with the module: a worker started early has it loaded when its config comes
    import uvloop
except ImportError:
    uvloop = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerConfig:
    """What a worker needs from the coordinator (pickled once, at start).

    The run's settings travel whole, as ``options``; the rest is this
    worker's share of the run: its id, its slots in the arena, the port
    chosen for the run, the pieces already verified.
    """

    wid: int
    meta: Any
    outdir: str
    options: Options
    slot_size: int
    arena_slots: int  # the torrent's window of the arena: slots from arena_offset
    first_slot: int
    nslots: int
    arena_offset: int = 0  # bytes into the run's arena where the torrent's window starts
    port: int  # the listening port of every worker (SO_REUSEPORT); 0: none
    peer_id: bytes
    done: bytes  # bitfield of pieces already verified (resume)
    tid: int = 0  # the torrent's number in the run (every ipc.Tagged message names it)
    writable: bool = True  # False when only seeding: never create or change files
    lock_writes: bool = False  # several workers write the same files
    workers: int = 1  # worker processes in the run (the rate limits are split evenly)
    dht_port: int = 0  # the UDP port of the coordinator's DHT node; 0: no DHT (no DHT bit)
    #: the files written (``selection.select_files``; None: all): the others' bytes of
    #: shared pieces go to the parts file (``storage.layout_for``)
    selected: frozenset[int] | None = None
    #: bitfield of the pieces this run fetches (``selection.wanted_pieces``; None: all):
    #: a worker that has them all is complete (not interested, seeding)
    wanted: bytes | None = None
    #: the lease it starts with (``LeaseTable.first_lease``): no NeedPieces round trip
    #: before its first requests
    lease: tuple[int, ...] = ()

    @property
    def max_rate(self) -> int:
        """Bytes/s this worker downloads at most (0: unlimited)."""
        return -(-self.options.download_limit // self.workers)

    @property
    def max_up_rate(self) -> int:
        """Bytes/s this worker uploads at most (0: unlimited)."""
        return -(-self.options.upload_limit // self.workers)

    @property
    def max_connections(self) -> int:
        """Connections this worker holds at most (its share of ``max_connections``)."""
        return share(self.options.max_connections or MAX_CONNECTIONS_CAP, self.workers, self.wid)

    @property
    def max_half_open(self) -> int:
        """Connections in their handshake this worker holds at most (its share)."""
        return share(self.options.max_half_open, self.workers, self.wid)


#: A stop after seeding (its limit reached) first lets the blocks already
#: written reach the peers, at most this long: a peer must not lose the last
#: blocks it was sent because we closed the connection under them.
DRAIN_TIMEOUT = 5.0
#: How often the drain looks at the send queues (a bounded wait, not a spin).
DRAIN_POLL = 0.02


class Peer:
    """The worker's side of one connection: its protocol state, pipeline and rates.

    It is the connection's :class:`~torrent.net.peer.ConnectionHandler` and
    the key the picker records as the holder of a request and the sender of
    a block.  The connection (``conn``) is the socket; everything it reports
    goes to the worker, which owns the policy.
    """

    __slots__ = ("_counted", "_rate_seen", "_up_window", "active", "conn", "created_at",
                 "depth", "dht_heard", "dial_attempt", "hashes_served", "interested_elsewhere",
                 "listen_port", "max_depth", "metadata_served", "pex_at", "pex_heard", "pex_sent",
                 "proto", "rate", "requested_elsewhere", "serve_pending", "up_rate", "uploaded",
                 "worker")

    def __init__(self, worker: Worker, conn: PeerConn, now: float, dial_attempt: int = 0, *,
                 adopted: bool = False) -> None:
        m = worker.meta
        self.worker = worker
        self.conn = conn
        enc = worker.cfg.options.encryption
        # outgoing: which entry of dial_order this connection is (0, or 1 for the fallback)
        self.dial_attempt = dial_attempt
        self.proto = wp.PeerProtocol(m.info_hash, worker.peer_id, m.num_pieces, m.piece_length,
                                     m.total_size, we_initiated=conn.outgoing, now=now,
                                     framer=worker.framer, recv_budget=worker.recv_budget,
                                     accept_mse=enc != "disabled", require_mse=enc == "required",
                                     initiate_mse=conn.outgoing and not adopted
                                     and worker.dial_order[dial_attempt],
                                     reserved=RESERVED_DHT if worker.cfg.dht_port
                                     else RESERVED_OURS)
        self.proto.attach_store(worker.picker.active, self)
        self.dht_heard = False  # its BEP 5 port message went to the coordinator (once)
        # adopted: the metadata fetch sent it our INTERESTED (counted once it is active)
        self.interested_elsewhere = False
        # adopted: block requests the coordinator sent it (counted once it is active)
        self.requested_elsewhere: tuple[wp.Block, ...] = ()
        self.active = False  # handshake done
        self.created_at = now
        self.depth = INITIAL_DEPTH  # request pipeline target, set by the tick
        self.rate = 0.0  # bytes/s received, smoothed
        self.up_rate = 0.0  # bytes/s sent, smoothed
        self.uploaded = 0
        self._up_window = 0  # bytes sent since the last tick
        self._rate_seen = 0  # rb.received at the last tick
        self._counted = 0  # rb.received at the last read (download limit)
        self.serve_pending = False  # requests arrived in this read: serve after framing
        # the request pipeline's ceiling: ours, or the peer's queue (BEP 10 ``reqq``)
        self.max_depth = MAX_DEPTH
        # where it accepts connections: the address we dialled, or its BEP 10 ``p``
        self.listen_port: int | None = conn.addr[1] if conn.outgoing else None
        self.metadata_served = 0  # ut_metadata pieces sent since the last tick (bounded)
        self.hashes_served = 0  # BEP 52 hash requests answered since the last tick (bounded)
        # when we last sent it PEX (BEP 11: at most once a minute); the first goes early
        self.pex_at = now - PEX_INTERVAL + PEX_FIRST
        self.pex_heard = -PEX_INTERVAL  # when it last sent us PEX that we took
        self.pex_sent: set[tuple[str, int]] = set()  # what our PEX told it is connected

    # -- ConnectionHandler ------------------------------------------------------
    @property
    def rb(self) -> ReceiveBuffer:
        return self.proto.rb

    def data_received(self) -> None:
        self.worker.on_data(self)

    def writable(self) -> None:
        if self.active:
            self.worker.serve(self)

    def lost(self, reason: str) -> None:
        self.proto.rb.release()
        self.worker.peer_lost(self)

    # -- for the worker ------------------------------------------------------------
    @property
    def addr(self) -> tuple[str, int]:
        return self.conn.addr

    @property
    def closed(self) -> bool:
        return self.conn.closed

    @property
    def close_reason(self) -> str:
        return self.conn.close_reason

    def write(self, data: bytes | bytearray | memoryview) -> None:
        enc = self.proto.encrypt
        self.conn.write(data if enc is None else enc.crypt(data))  # RC4 (MSE) peers only

    def abort(self, reason: str) -> None:
        self.conn.abort(reason)

    def __repr__(self) -> str:
        return f"Peer({format_peer(*self.addr)})"


class Worker:
    """One torrent in a worker process: its peers, picker, slots, native I/O threads.

    The process (:class:`~torrent.workerhost.WorkerHost`) owns the control
    connection and the listening sockets, and drives every torrent it serves:
    it hands each its messages (:meth:`handle`), its connections (:meth:`accept`,
    routed by info-hash) and its ticks (:meth:`tick`).

    Args:
        cfg: the torrent's share of the run.
        host: where messages go (``host.send_tagged(tid, msg)``).
        arena_fd: the run's arena; the torrent maps its window (kept open).
    """

    def __init__(self, cfg: WorkerConfig, host: Any, arena_fd: int) -> None:
        self.cfg = cfg
        self.wid = cfg.wid
        self.tid = cfg.tid
        self.host = host
        self.meta = cfg.meta
        self.peer_id = cfg.peer_id
        self.loop = asyncio.get_running_loop()
        now = self.loop.time()
        m = self.meta
        self.picker = Picker(m.num_pieces, m.piece_length, m.total_size)
        self.picker.add_lease(cfg.lease)
        self.framer = Framer(m.num_pieces)  # the framing limits, shared by every connection
        self.recv_budget = RecvBudget(RECV_BUDGET)
        self.have = bytearray(cfg.done)  # pieces verified anywhere (bitfield)
        self.have_count = _k.bitfield_count(self.have, m.num_pieces)
        nbytes = len(self.have)
        self.want = (bytearray(cfg.wanted) if cfg.wanted is not None
                     else bytearray(b"\xff") * nbytes)
        # wanted pieces not yet had: 0 is complete (a counter: asked per piece)
        self.want_left = _k.bitfield_count(self.want, m.num_pieces) - _k.bitfield_count(
            bytes(a & b for a, b in zip(self.have, self.want, strict=True)), m.num_pieces)
        self.arena = Arena.attach(arena_fd, cfg.slot_size, cfg.arena_slots,
                                  offset=cfg.arena_offset, keep_fd=True)
        nb = -(-m.piece_length // BLOCK_SIZE)
        self.free_slots = [Slot(self.arena.slot(cfg.first_slot + k), nb)
                           for k in range(cfg.nslots)]
        self.storage = Storage(layout_for(m, cfg.outdir, cfg.selected), writable=cfg.writable,
                               direct=cfg.options.direct_io)
        # The native I/O thread (see torrent/_io.pyx): verifies and writes
        # full slots and flushes files without the GIL, waking us via an eventfd.
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.iot = _io.IOThread(self.efd, lock_writes=cfg.lock_writes,
                                file_writers=file_writers(self.meta.piece_length))
        # BEP 52: what each piece's merkle root must be (v2-only: the only check;
        # hybrid: besides SHA-1, where its piece layers are known)
        self.v2 = v2_pieces(self.meta)
        # BEP 52: answers hash requests from its piece layers (None: it has none),
        # built on the first request (most peers ask none)
        self.layer_server: LayerServer | None = None
        self._layers_built = False
        # fdatasync runs on a thread of its own: on this machine's disk a flush of
        # one second of downloading takes longer than a second, and queued behind
        # it, verification and writes would stall the download.
        self.sync_iot = _io.IOThread(self.efd, writers=1)  # syncs only, one at a time
        self.in_io: dict[int, tuple[PieceDL, list[int]]] = {}  # piece -> (state, pinned spans)
        # full pieces whose files do not fit in the storage's descriptor budget yet
        # (Storage.room_for): submitted in order as writes and flushes finish
        self.io_wait: deque[PieceDL] = deque()
        self._first_inline = True  # the next piece is the run's first (see submit_piece)
        self._cold = True  # no piece complete in this run yet (see pump)
        self.syncs: dict[int, tuple[list[int], Flush]] = {}  # job -> (pieces, its files)
        self._sync_seq = 0
        self.flush_on_stop = True
        self.completed_at: float | None = None  # when a HAVE first made us complete
        self.redialled: set[tuple[str, int]] = set()  # see REDIAL_WINDOW
        self.drain_on_stop = False
        self._verified_timer: asyncio.TimerHandle | None = None
        self._verified_sent = -VERIFIED_DELAY  # loop time of the last Verified sent
        self.blocks = 0  # blocks stored
        # --download-limit / --upload-limit shares: one throttle each, one timer each
        self.down = (Throttle(cfg.max_rate, now=now, min_wait=DOWNLOAD_MIN_WAIT)
                     if cfg.max_rate > 0 else None)
        self.up = Throttle(cfg.max_up_rate, now=now) if cfg.max_up_rate > 0 else None
        self._down_timer: asyncio.TimerHandle | None = None
        self._up_timer: asyncio.TimerHandle | None = None
        self.choker: Choker[Peer] = Choker(now=now)
        self.uploaded = 0
        self._serve_buffers: list[bytearray] = []  # reused upload buffers (see serve)
        self.peers: set[Peer] = set()
        self.banned: set[str] = set()
        # Connection limits (see accept and _dial_next): every connection counts,
        # dials in flight included; half-open ones have no valid handshake yet.
        self.max_connections = cfg.max_connections
        self.max_half_open = cfg.max_half_open
        self.half_open = 0  # peers in self.peers without a handshake
        self.dialing = 0  # outgoing TCP connects in flight (at most MAX_DIALS)
        # (host, port, which entry of dial_order to try): at most DIAL_QUEUE_LIMIT
        self.dial_queue: deque[tuple[str, int, int]] = deque()
        self.dial_order = dial_order(cfg.options.encryption)  # MSE or not, in order
        self.need_pending = False
        self.last_need = 0.0
        self.written: list[int] = []  # verified and written, not yet flushed
        self.verified_batch: list[int] = []
        self.avail = bytearray(len(cfg.done))
        self.avail_dirty = False
        self.stop_event = asyncio.Event()
        # piece -> [(sender, block, crc)] of a copy that failed its hash (smart ban)
        self.failed_crcs: dict[int, list[tuple[Peer, int, int]]] = {}
        self.stats: dict[str, Any] = {"worker": cfg.wid, "peers": 0, "pieces": 0, "bytes": 0,
                                      "blocks": 0, "steals": 0, "released": 0,
                                      "hash_failures": 0, "banned": [], "endgame": False,
                                      "mse": 0, "mse_rc4": 0, "dial_fallbacks": 0, "redials": 0,
                                      "refused": 0, "handshake_timeouts": 0, "adopted": 0,
                                      "peak_connections": 0, "peak_half_open": 0,
                                      "peak_dialing": 0, "peak_dial_queue": 0}
        self.fatal: tuple[str, str] | None = None
        self._last_flush = now
        self.low_water = max(LOW_WATER, cfg.nslots)
        # PEX across workers: what we last told the coordinator, what it told us
        self._live_shared: frozenset[tuple[str, int]] = frozenset()
        self.other_peers: frozenset[tuple[str, int]] = frozenset()
        # BEP 19 web seeds (torrent/webseed_worker.py): every worker fetches from each
        urls = web_seed_urls(getattr(self.meta, "web_seeds", ()), cfg.options.web_seeds) \
            if cfg.writable else ()
        self.webseeds: WebSeeds | None = None
        if urls:  # aiohttp is imported only by a worker that uses it
            from .webseed_worker import WebSeeds

            self.webseeds = WebSeeds(self, urls)

    # -- control pipe ----------------------------------------------------------
    def send(self, msg: Any) -> None:
        """To this torrent's coordinator (a broken connection stops the process's torrents)."""
        self.host.send_tagged(self.tid, msg)

    def handle(self, msg: Any) -> None:
        t = type(msg)
        if t is ipc.Lease:
            self.need_pending = False
            self.picker.add_lease(p for p in msg.pieces if not self._has(p))
            if msg.endgame or not msg.pieces:
                self.picker.endgame = True
                self.stats["endgame"] = True
            self.pump_all()
        elif t is ipc.Connect:
            if ban_key(msg.host, msg.port) in self.banned:
                self.send(ipc.PeerClosed(msg.host, msg.port, "banned", True, False))
            else:
                self.dial(msg.host, msg.port)
        elif t is ipc.Steal:
            out = self.picker.release(msg.wanted)
            self.stats["released"] += len(out)
            self.send(ipc.Released(tuple(out)))
        elif t is ipc.PiecesDone:
            for i in msg.pieces:
                self._mark_have(i)
                pd = self.picker.drop(i)
                if pd is not None:
                    self._abandon(pd)
                if msg.written:
                    self._written_elsewhere(i)
            self.broadcast_haves(msg.pieces)
        elif t is ipc.OtherPeers:
            self.other_peers = frozenset(list(msg.peers)[:ipc.MAX_SHARED_PEERS])
        elif t is ipc.DropWebSeed:
            if self.webseeds is not None:
                self.webseeds.drop_url(msg.url, msg.reason)
        elif t is ipc.Stop:
            self.flush_on_stop = msg.flush
            self.drain_on_stop = msg.drain
            self.stop_event.set()

    def _written_elsewhere(self, i: int) -> None:
        """Piece ``i`` of this worker's lease was verified and written by the coordinator
        (a magnet's first piece): the next flush syncs its files and reports it
        durable, as for a piece written here."""
        size = self.picker.piece_size(i)
        try:
            _segs, pinned = self.storage.write_segments(i * self.meta.piece_length, size)
        except FastTorrentError as e:
            self._fatal(e.__class__.__name__, str(e))
            return
        self.storage.unpin(pinned)
        self.storage.mark_dirty(pinned)
        self.written.append(i)
        # downloaded for this worker's lease, as the coordinator credits it (its
        # peers' connections brought it): the run's and the trackers' byte counts
        self.stats["bytes"] += size

    # -- peers -------------------------------------------------------------------
    @property
    def connections(self) -> int:
        """Connections this worker holds: peers (half-open included) and dials in flight."""
        return len(self.peers) + self.dialing

    def dial(self, host: str, port: int) -> None:
        """Queue a peer to connect to, and start the dials the limits allow."""
        if len(self.dial_queue) >= DIAL_QUEUE_LIMIT:
            self.send(ipc.PeerClosed(host, port, "dial queue full", False, False))
            return
        self.dial_queue.append((host, port, 0))
        st = self.stats
        st["peak_dial_queue"] = max(st["peak_dial_queue"], len(self.dial_queue))
        self._dial_next()

    def _dial_next(self) -> None:
        """Start queued dials while fewer than MAX_DIALS are in flight and a connection is free."""
        while (self.dial_queue and self.dialing < MAX_DIALS
               and self.connections < self.max_connections and not self.stop_event.is_set()):
            host, port, attempt = self.dial_queue.popleft()
            self.dialing += 1
            st = self.stats
            st["peak_dialing"] = max(st["peak_dialing"], self.dialing)
            self.loop.create_task(self._connect(host, port, attempt))

    async def _connect(self, host: str, port: int, attempt: int = 0) -> None:
        """One dial (counted in ``dialing`` until it is answered or times out); ``attempt``
        is the entry of ``dial_order`` it opens with."""
        failed: tuple[str, bool] | None = None

        def made() -> PeerConn:
            return PeerConn(lambda c: self.accept(c, attempt), (host, port), True)

        try:
            _tr, conn = await asyncio.wait_for(
                self.loop.create_connection(made, host, port),
                CONNECT_TIMEOUT)
            if conn.refused:  # by accept: banned meanwhile
                failed = ("banned", True)
        except (TimeoutError, OSError) as e:
            reason = "timed out" if isinstance(e, asyncio.TimeoutError) else (e.strerror or str(e))
            failed = (f"connect failed: {reason}", False)
        finally:
            self.dialing -= 1
        if failed is not None:
            self.send(ipc.PeerClosed(host, port, failed[0], failed[1], False))
        self._dial_next()

    def adopt(self, host: str, port: int, fd: int, data: bytes,
              interested: bool = False, requested: tuple[wp.Block, ...] = ()) -> None:
        """Take over a connection a magnet's metadata fetch made (:class:`ipc.Adopt`):
        our handshake went out on it already (and our INTERESTED with
        ``interested``), and ``data`` is what the peer sent since (its handshake
        first), read before the socket's bytes; ``requested``: block requests the
        coordinator sent on it, of this worker's first lease."""
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            os.close(fd)
            self.send(ipc.PeerClosed(host, port, f"handover failed: {e.strerror or e}",
                                     False, False))
            return
        self.loop.create_task(self._adopt(sock, host, port, data, interested, requested))

    async def _adopt(self, sock: socket.socket, host: str, port: int, data: bytes,
                     interested: bool, requested: tuple[wp.Block, ...]) -> None:
        def made() -> PeerConn:
            return PeerConn(lambda c: self.accept(c, replay=data, interested=interested,
                                                  requested=requested),
                            (host, port), True)

        try:
            _tr, conn = await self.loop.connect_accepted_socket(made, sock)
            refused = conn.refused
        except OSError as e:
            sock.close()
            self.send(ipc.PeerClosed(host, port, f"handover failed: {e.strerror or e}",
                                     False, False))
            return
        if refused:  # banned meanwhile, or no room
            self.send(ipc.PeerClosed(host, port, "refused", False, False))

    def accept(self, conn: PeerConn, dial_attempt: int = 0, *,
               replay: bytes | None = None, routed: bytes | None = None,
               routed_mse: Established | None = None,
               interested: bool = False, requested: tuple[wp.Block, ...] = ()) -> Peer | None:
        """A connection was made (either way): its handler, or None to refuse it.

        An incoming connection past this worker's share of ``max_connections``
        or ``max_half_open`` is refused here, before anything is allocated for
        it: it is closed (RST) at once. ``replay``: the connection is one a
        magnet's fetch handed over (see :meth:`adopt`); these bytes are the
        peer's stream so far. ``routed`` / ``routed_mse``: an incoming
        connection the process routed here by the info-hash its first bytes
        named (:class:`~torrent.workerhost.Router`): the bytes it read, or the
        MSE handshake it answered.
        """
        log.debug("w%d connected %s", self.wid, conn.addr)
        if ban_key(*conn.addr) in self.banned:
            return None
        st = self.stats
        if replay is not None:
            if self.connections >= self.max_connections:
                return None
        elif conn.outgoing:
            if not dial_attempt:  # (a fallback's first dial was answered already)
                self.send(ipc.Dialled(*conn.addr))  # its place in the dial budget is free
        elif self.connections >= self.max_connections or self.half_open >= self.max_half_open:
            st["refused"] += 1
            return None
        peer = Peer(self, conn, self.loop.time(), dial_attempt, adopted=replay is not None)
        self.peers.add(peer)
        self.half_open += 1
        st["peers"] += 1
        st["peak_connections"] = max(st["peak_connections"], len(self.peers))
        st["peak_half_open"] = max(st["peak_half_open"], self.half_open)
        if replay is not None:
            st["adopted"] += 1
            peer.proto.handshake_sent_elsewhere()  # the fetch sent ours
            peer.interested_elsewhere = interested
            peer.requested_elsewhere = requested
            peer.rb.feed(replay)  # before the socket's first read: the stream's order
            self.loop.call_soon(self._replayed, peer)
        elif routed is not None or routed_mse is not None:
            if routed_mse is not None:  # its payload goes into rb, decrypted
                peer.proto.mse_established_elsewhere(routed_mse)
            if routed:
                peer.rb.feed(routed)
            self.loop.call_soon(self._replayed, peer)
        elif conn.outgoing:  # our handshake, or with MSE its first step (the handshake in it)
            conn.write(peer.proto.take_output() or peer.proto.handshake())
        if self.down is not None and self.down.paused:
            conn.pause()
        return peer

    def _replayed(self, peer: Peer) -> None:
        """Read what an adopted connection's peer sent before (unless the socket's own
        first read did already)."""
        if not peer.closed and peer.rb.end > peer.rb.start:
            self.on_data(peer)
        if (peer.active and not peer.closed and peer.proto.am_interested
                and not self._wants_from(peer)):
            # the fetch's INTERESTED went to a peer that has nothing this download wants
            peer.write(peer.proto.send_not_interested())

    def _handshaken(self, peer: Peer) -> None:
        out = peer.proto.take_output()
        if out:  # the end of an MSE handshake goes before anything of the BitTorrent stream
            peer.conn.write(out)
        if peer.proto.mse_method is not None:
            self.stats["mse"] += 1
            self.stats["mse_rc4"] += peer.proto.mse_method == CRYPTO_RC4
        if not peer.proto.we_initiated:
            peer.write(peer.proto.handshake())  # answered once its info-hash checked out
        if not peer.active:
            self.half_open -= 1
        peer.active = True
        proto = peer.proto
        if peer.interested_elsewhere:
            proto.interested_sent_elsewhere()  # (nothing of ours went before it but the
            # handshakes and the fetch's extension handshake)
        if peer.requested_elsewhere:
            reqs, peer.requested_elsewhere = list(peer.requested_elsewhere), ()
            proto.requests_sent_elsewhere(reqs, self.loop.time())
            self.picker.adopt_requests(peer, reqs, self.alloc_slot)
        if proto.first_message_sent:
            # adopted after the fetch's INTERESTED or the coordinator's requests: no
            # bitfield now. The hand-over was planned with nothing verified, so what we
            # have is the few pieces verified since: a HAVE each.
            if self.have_count:
                peer.write(b"".join(proto.send_have(i)
                                    for i in _bits_to_indices(bytes(self.have))))
        elif proto.fast and self.complete:
            peer.write(proto.send_have_all())  # BEP 6: two bytes instead of the bitfield
        elif any(self.have):
            peer.write(proto.send_bitfield(bytes(self.have)))
        if proto.fast and self.have_count and _is_ip(peer.addr[0]):
            # BEP 6: pieces it may fetch while we choke it, to get a new peer
            # started; the canonical set for its address, those we have
            grant = [i for i in allowed_fast_set(peer.addr[0], self.meta.info_hash,
                                                 self.meta.num_pieces) if self._has(i)]
            if grant:
                peer.write(proto.send_allowed_fast(grant))
        if proto.extensions:
            peer.write(proto.send_extension_handshake(self._extension_handshake(peer)))
        if self.cfg.dht_port and proto.peer_reserved is not None \
                and proto.peer_reserved[DHT_BIT[0]] & DHT_BIT[1]:
            peer.write(proto.send_port(self.cfg.dht_port))  # BEP 5: where our DHT node is

    def _extension_handshake(self, peer: Peer) -> ExtensionHandshake:
        """Ours (BEP 10): ut_metadata whenever the info dict can be served, ut_pex unless
        private."""
        m = self.meta
        servable = _metadata_servable(m.info_bytes)
        ids = {UT_METADATA: OUR_EXTENSION_IDS[UT_METADATA]} if servable else {}
        if not m.private:  # BEP 27: no peer sources but the tracker
            ids[UT_PEX] = OUR_EXTENSION_IDS[UT_PEX]
        host = peer.addr[0]
        return ExtensionHandshake(
            m=ids, v=f"fasttorrent {__version__}", reqq=wp.MAX_PEER_REQUESTS,
            metadata_size=len(m.info_bytes) if servable else None, p=self.cfg.port or None,
            yourip=host if _is_ip(host) else None)

    def peer_lost(self, peer: Peer) -> None:
        if peer not in self.peers:
            return
        self.peers.discard(peer)
        self.choker.gone(peer)
        self.picker.peer_gone(peer)
        if peer.active:
            self._availability(peer.proto.peer_bitfield, -1)
        else:
            self.half_open -= 1
        banned = ban_key(*peer.addr) in self.banned
        log.debug("w%d lost %s: %s", self.wid, peer.addr, peer.close_reason)
        if (not peer.active and peer.conn.outgoing and not banned
                and peer.dial_attempt + 1 < len(self.dial_order)
                and not self.stop_event.is_set()):
            # Dropped before its handshake: the other kind (MSE / plaintext), once, on a
            # new connection ahead of the queue; the coordinator hears only how that ends.
            # (It takes the place of the connection just lost: the queue's bound holds,
            # give or take the connections closing at once.)
            self.stats["dial_fallbacks"] += 1
            self.dial_queue.appendleft((peer.addr[0], peer.addr[1], peer.dial_attempt + 1))
        elif (again := self._redial_after_completion(peer, banned)) is not None:
            # (as with the fallback, the coordinator hears only how the new dial ends;
            # of an incoming peer it heard nothing, and takes no dial for it)
            self.stats["redials"] += 1
            self.dial_queue.appendleft((again[0], again[1], 0))
        else:
            reason = peer.close_reason
            if peer.proto.mse_pending:
                reason += " during the MSE/PE handshake"
            self.send(ipc.PeerClosed(peer.addr[0], peer.addr[1], reason, banned, True))
        self._dial_next()  # a connection is free
        self.pump_all()

    def _redial_after_completion(self, peer: Peer, banned: bool) -> tuple[str, int] | None:
        """Where to dial ``peer`` again, lost just now (see :data:`REDIAL_WINDOW`), or None."""
        at = self.completed_at
        port = peer.listen_port
        if (at is None or banned or not peer.active or not peer.conn.remote_closed
                or port is None or self.stop_event.is_set()
                or self.loop.time() - at > REDIAL_WINDOW
                or len(self.redialled) >= MAX_REDIALS):
            return None
        key = (peer.addr[0], port)
        theirs = peer.proto.peer_bitfield
        if key in self.redialled or not (
                int.from_bytes(self.have) & ~int.from_bytes(theirs[:len(self.have)])):
            return None  # dialled again once already, or it has all we have
        self.redialled.add(key)
        return key

    def _availability(self, bits: bytes, delta: int) -> None:
        pieces = _bits_to_indices(bits)
        self.picker.add_availability(pieces, delta)
        if delta > 0:
            for i in pieces:
                if not self.avail[i >> 3] & (0x80 >> (i & 7)):
                    self.avail[i >> 3] |= 0x80 >> (i & 7)
                    self.avail_dirty = True
        else:
            av = self.picker.availability
            for i in pieces:
                if av[i] <= 0 and self.avail[i >> 3] & (0x80 >> (i & 7)):
                    self.avail[i >> 3] &= ~(0x80 >> (i & 7)) & 0xFF
                    self.avail_dirty = True

    # -- receiving: one read at a time -----------------------------------------------
    def on_data(self, peer: Peer) -> None:
        """Bytes arrived from ``peer``: carry out every event they complete, in order.

        Per read, not per block: the plain blocks come as one
        :class:`~torrent.wire.peer.BlocksTaken` per run.  Requests are
        answered and the pipeline refilled once, after the whole read (one
        write of many requests instead of a 17-byte write per block); HAVEs
        only note availability and ask for one interest check at the end, so a
        later bitfield announcing thousands of pieces costs one scan of the
        peer's bitfield, not one per piece.
        """
        down = self.down
        if down is not None:
            received = peer.rb.received
            delay = down.consume(received - peer._counted, self.loop.time(), peer)
            peer._counted = received
            if delay is not None:
                self._pause_reading(delay)
        proto = peer.proto
        haves = False
        try:
            while not peer.closed:
                ev = proto.next_event()
                if ev is None:
                    break
                t = type(ev)
                if t is wp.BlocksTaken:
                    self.blocks += ev.count  # type: ignore[attr-defined]
                    if ev.full is not None:  # type: ignore[attr-defined]
                        self._piece_full(ev.full)  # type: ignore[attr-defined]
                elif t is wp.BlockReceived:
                    self._store(peer, ev)  # type: ignore[arg-type]
                elif t is wp.HaveReceived:
                    self._have(ev.index)  # type: ignore[attr-defined]
                    haves = True
                else:
                    self._on_event(peer, ev)
        except RemoteProtocolError as e:
            peer.abort(f"protocol error: {e}")
        except LocalProtocolError as e:  # a bug of ours: drop the peer, keep the download
            peer.abort(f"internal error: {e}")
        if not peer.active:  # only an MSE handshake under way has replies of its own
            out = proto.take_output()
            if out:
                peer.conn.write(out)
        if peer.closed:
            return
        if haves:
            self._interest(peer)
        if peer.serve_pending:
            peer.serve_pending = False
            self.serve(peer)
        self.pump(peer)

    def _on_event(self, peer: Peer, ev: wp.Event) -> None:
        t = type(ev)
        if t is wp.Unchoked:
            self.pump(peer)
        elif t is wp.HandshakeReceived:
            self._handshaken(peer)
        elif t is wp.BitfieldReceived:
            self._availability(ev.bits, 1)  # type: ignore[attr-defined]
            if self.avail_dirty:  # tell the coordinator now: it leases by availability
                self.avail_dirty = False
                self.send(ipc.Availability(bytes(self.avail)))
            self._interest(peer)
        elif t is wp.RequestsCancelled:
            for i, b, _ln in ev.requests:  # type: ignore[attr-defined]
                self.picker.block_lost(i, b, peer)
            self.pump_all()
        elif t is wp.RequestReceived:
            # answered once the whole read is framed (on_data): one write for all
            # the requests it carried, not one per request
            peer.serve_pending = True
        elif t is wp.PeerInterested:
            if self.choker.interested(peer):
                peer.write(peer.proto.send_unchoke())
        elif t is wp.PeerNotInterested:
            if self.choker.not_interested(peer):
                peer.write(peer.proto.send_choke())
        elif t is wp.RequestRejected:  # BEP 6: re-issue it elsewhere
            self.picker.block_lost(ev.index, ev.begin, peer)  # type: ignore[attr-defined]
            self.pump_all()
        elif t is wp.RequestDropped:  # BEP 6: a request we will not serve gets a reject
            peer.write(peer.proto.send_reject(ev.index, ev.begin, ev.length))  # type: ignore[attr-defined]
        elif t is wp.ExtensionHandshakeReceived:
            hs = ev.handshake  # type: ignore[attr-defined]
            if hs.reqq:  # its request queue: a deeper pipeline would be dropped silently
                peer.max_depth = max(MIN_DEPTH, min(MAX_DEPTH, hs.reqq))
                peer.depth = min(peer.depth, peer.max_depth)
            if hs.p and not peer.conn.outgoing:
                peer.listen_port = hs.p
        elif t is wp.MetadataReceived:
            self._metadata(peer, ev.message)  # type: ignore[attr-defined]
        elif t is wp.HashRequestReceived:
            self._hash_request(peer, ev.request)  # type: ignore[attr-defined]
        # wp.HashesReceived, wp.HashRejectReceived: a worker asks for no hashes (a v2
        # magnet's layers came with its metadata); a late answer to the fetch's is dropped
        elif t is wp.PexReceived:
            self._pex_received(peer, ev.pex)  # type: ignore[attr-defined]
        elif t is wp.PortReceived:
            if not peer.dht_heard:  # one per connection: a peer cannot make us ping in a loop
                peer.dht_heard = True
                self.send(ipc.DhtNode(peer.addr[0], ev.port))  # type: ignore[attr-defined]

    def _metadata(self, peer: Peer, msg: Any) -> None:
        """BEP 9: answer a request for a piece of the info dict; the rest is not for us."""
        if not isinstance(msg, MetadataRequest) or UT_METADATA not in peer.proto.peer_extensions:
            return  # we never fetch metadata in a worker (the coordinator did, for magnets)
        info = self.meta.info_bytes
        if peer.metadata_served < MAX_METADATA_ANSWERS and _metadata_servable(info) \
                and msg.piece < metadata_piece_count(len(info)):
            peer.metadata_served += 1
            body = metadata_data(info, msg.piece).encode()
        else:
            body = MetadataReject(msg.piece).encode()
        peer.write(peer.proto.send_extended(UT_METADATA, body))

    def _hash_request(self, peer: Peer, req: HashRequest) -> None:
        """BEP 52: answer a hash request from the torrent's piece layers (at most
        MAX_HASH_ANSWERS per peer per tick, and none while MAX_HASH_BACKLOG bytes
        wait to go to it; a reject otherwise, and for whatever
        :class:`~torrent.piecelayers.LayerServer` does not serve)."""
        if not self._layers_built:
            self._layers_built = True
            from .piecelayers import LayerServer  # (v2 torrents only)

            self.layer_server = LayerServer.from_metainfo(self.meta)
        server = self.layer_server
        if server is not None and peer.hashes_served < MAX_HASH_ANSWERS \
                and peer.conn.write_buffer_size() < MAX_HASH_BACKLOG:
            peer.hashes_served += 1
            ans = server.answer(req)
            if isinstance(ans, Hashes):
                peer.write(peer.proto.send_hashes(ans))
                return
        peer.write(peer.proto.send_hash_reject(req))

    def _pex_received(self, peer: Peer, pex: Pex) -> None:
        """BEP 11: new peers for the coordinator's table (at most one message a minute)."""
        now = self.loop.time()
        if self.meta.private or now - peer.pex_heard < PEX_INTERVAL - PEX_SLACK:
            return  # BEP 27: never for private torrents; BEP 11: one a minute
        peer.pex_heard = now
        port = self.cfg.port  # (the coordinator's table checks every other form of us)
        ours = {(self.cfg.options.bind, port), ("127.0.0.1", port), ("::1", port)}
        addrs = tuple((p.ip, p.port) for p in pex.added if (p.ip, p.port) not in ours)
        if addrs:
            self.send(ipc.PeersFound(addrs, "pex"))

    def live_peers(self) -> frozenset[tuple[str, int]]:
        """Our connected peers whose listen port we know, as ``(ip, port)``: what PEX
        tells of (at most ``ipc.MAX_SHARED_PEERS``)."""
        out: set[tuple[str, int]] = set()
        for p in self.peers:
            if p.active and not p.closed and p.listen_port:
                out.add((p.addr[0], p.listen_port))
                if len(out) >= ipc.MAX_SHARED_PEERS:
                    break
        return frozenset(out)

    def _share_live_peers(self) -> None:
        """Tell the coordinator our live peers when they changed: the other workers'
        PEX lists them (:class:`ipc.OtherPeers`)."""
        if self.meta.private or self.cfg.workers < 2:
            return
        live = self.live_peers()
        if live != self._live_shared:
            self._live_shared = live
            self.send(ipc.LivePeers(live))

    def _send_pex(self, peer: Peer, now: float) -> None:
        """BEP 11: tell ``peer`` which peers of the run (ours and the other workers')
        joined or left since last time."""
        peer.pex_at = now
        me = (peer.addr[0], peer.listen_port)
        live = set(self.live_peers() | self.other_peers)
        live.discard(me)
        added = list(live - peer.pex_sent)[:MAX_PEX_ADDED]
        dropped = list(peer.pex_sent - live)[:MAX_PEX_DROPPED]
        if not added and not dropped:
            return
        peer.pex_sent.difference_update(dropped)
        peer.pex_sent.update(added)
        pex = Pex(added=tuple(PexPeer(h, p) for h, p in added), dropped=tuple(dropped))
        peer.write(peer.proto.send_extended(UT_PEX, pex.encode()))

    def _have(self, i: int) -> None:
        self.picker.add_availability((i,), 1)
        if not self.avail[i >> 3] & (0x80 >> (i & 7)):
            self.avail[i >> 3] |= 0x80 >> (i & 7)
            self.avail_dirty = True

    def _store(self, peer: Peer, ev: wp.BlockReceived) -> None:
        """A block the fast path left to the slow one (e.g. an endgame duplicate)."""
        out = self.picker.store_block(ev.index, ev.begin, ev.data, peer)
        if out is None:
            return
        pd, cancels = out
        self.blocks += 1
        for other, ob in cancels:
            if not other.closed and other.active:
                other.write(other.proto.send_cancel(pd.index, ob * BLOCK_SIZE,
                                                    pd.block_length(ob)))
        if pd.slot.blocks.full:
            self._piece_full(pd)

    def _piece_full(self, pd: Any) -> None:
        self._cold = False
        self.picker.finish(pd.index)
        self.submit_piece(pd)

    # -- rate limits ---------------------------------------------------------------
    def _pause_reading(self, delay: float) -> None:
        for p in self.peers:
            p.conn.pause()
        self._down_timer = self.loop.call_later(delay, self._resume_reading)

    def _resume_reading(self) -> None:
        self._down_timer = None
        delay = self.down.resume(self.loop.time())  # type: ignore[union-attr]
        if delay is not None:
            self._down_timer = self.loop.call_later(delay, self._resume_reading)
            return
        for p in self.peers:
            p.conn.resume()

    def _resume_serving(self) -> None:
        self._up_timer = None
        up = self.up
        delay = up.resume(self.loop.time())  # type: ignore[union-attr]
        if delay is not None:
            self._up_timer = self.loop.call_later(delay, self._resume_serving)
            return
        for p in up.rotate([p for p in self.peers if p.active and not p.closed]):  # type: ignore[union-attr]
            self.serve(p)
            if up.paused:  # type: ignore[union-attr]
                return  # empty again: the others go first next round

    # -- uploading -------------------------------------------------------------------
    def serve(self, peer: Peer) -> None:
        """Send queued blocks the peer asked for, as long as its transport has room.

        Up to :data:`SERVE_BATCH` blocks go out per write: their frames are
        laid out in one buffer, the data of each run of consecutive blocks is
        read with one ``preadv`` straight into the frames (one copy from the
        page cache), and the buffer is written with one call (one copy into
        the socket).  A write per block cost a send() per 16 KiB: a quarter
        of a seeding worker's time.
        """
        proto = peer.proto
        conn = peer.conn
        if conn.closed or self.stop_event.is_set():
            return  # stopping: a drain must not start new blocks
        pl = self.meta.piece_length
        up = self.up
        while conn.write_buffer_size() < SEND_HIGH_WATER:
            blocks: list[tuple[int, int, int]] = []
            while len(blocks) < SERVE_BATCH:
                if up is not None and up.paused:
                    break  # the throttle's timer serves us again
                blk = proto.next_request()
                if blk is None:
                    break
                if not self._has(blk[0]):
                    continue  # never announced: an honest peer does not ask; drop it
                blocks.append(blk)
                if up is not None:
                    delay = up.consume(blk[2], self.loop.time(), peer)
                    if delay is not None:
                        self._up_timer = self.loop.call_later(delay, self._resume_serving)
            if not blocks:
                return
            size = sum(13 + ln for _i, _b, ln in blocks)
            pool = self._serve_buffers
            buf = (pool.pop() if pool and size <= SERVE_BUFFER
                   else bytearray(max(size, SERVE_BUFFER)))
            view = memoryview(buf)
            pos = 0
            run: list[memoryview] = []
            run_start = run_end = -1
            try:
                for index, begin, length in blocks:
                    pack_piece_header(view[pos : pos + 13], index, begin, length)
                    start = index * pl + begin
                    if start != run_end:
                        if run:
                            self.storage.read_run_into(run_start, run)
                        run, run_start = [], start
                    run.append(view[pos + 13 : pos + 13 + length])
                    run_end = start + length
                    pos += 13 + length
                self.storage.read_run_into(run_start, run)
            except FastTorrentError as e:
                self._fatal(e.__class__.__name__, str(e))
                return
            finally:
                run.clear()
            peer.write(view[:pos])  # encrypted for an RC4 (MSE) peer, else as is
            view.release()
            if conn.write_buffer_size() == 0 and len(pool) < SERVE_POOL:
                # all of it went to the socket: the buffer is free again (else the
                # transport holds a view of it until it is sent, and it is let go)
                pool.append(buf)
            n = pos - 13 * len(blocks)
            peer.uploaded += n
            peer._up_window += n
            self.uploaded += n
            if len(blocks) < SERVE_BATCH:
                return  # the queue is empty, or the throttle stopped us

    def choke_round(self, now: float) -> None:
        """BEP 3 choking (torrent/choker.py): the best by rate plus an optimistic unchoke.

        While downloading, "best" is the rate they send to us (tit-for-tat);
        once complete, the rate we upload to them, which rotates the slots
        between the fastest takers.
        """
        seeding = self.complete
        cands = [(p, p.up_rate if seeding else p.rate) for p in self.peers
                 if p.active and not p.closed and p.proto.peer_interested]
        choke, unchoke = self.choker.round(now, cands)
        for p in choke:
            if not p.closed and p.active:
                p.write(p.proto.send_choke())
        for p in unchoke:
            p.write(p.proto.send_unchoke())

    def _interest(self, peer: Peer) -> None:
        if not peer.proto.am_interested and self._wants_from(peer):
            peer.write(peer.proto.send_interested())

    def _wants_from(self, peer: Peer) -> bool:
        """The peer has a piece this download wants."""
        if self.complete:
            return False
        have, want = self.have, self.want
        return any(byte & ~have[k] & want[k]
                   for k, byte in enumerate(peer.proto.peer_bitfield))

    @property
    def complete(self) -> bool:
        # a counter, not a scan: this is asked per verified piece, and a scan of
        # a 200,000-piece bitfield each time would make a download quadratic
        return self.want_left == 0

    def _has(self, i: int) -> bool:
        return bool(self.have[i >> 3] & (0x80 >> (i & 7)))

    def _mark_have(self, i: int) -> None:
        mask = 0x80 >> (i & 7)
        if not self.have[i >> 3] & mask:
            self.have[i >> 3] |= mask
            self.have_count += 1
            if self.want[i >> 3] & mask:
                self.want_left -= 1

    # -- requests ----------------------------------------------------------------
    def alloc_slot(self, index: int) -> Slot | None:
        """A free slot for piece ``index``, its block map sized to that piece."""
        if not self.free_slots:
            return None
        slot = self.free_slots.pop()
        size = self.picker.piece_size(index)
        nb = -(-size // BLOCK_SIZE)
        if slot.blocks.nblocks != nb:
            slot.blocks = _k.BlockMap(nb)
        if len(slot.raw) > self.meta.piece_length:
            # the slot has a page of slack: place the piece so that its first file's
            # bytes are aligned in memory as on disk (O_DIRECT straight from the slot)
            shift = self.storage.alignment(index * self.meta.piece_length, size,
                                           _io.DIRECT_ALIGN)
            slot.view = slot.raw[shift : shift + size]
        return slot

    def pump(self, peer: Peer) -> None:
        proto = peer.proto
        if peer.closed or not peer.active or not proto.am_interested:
            return
        has: Callable[[int], bool] = proto.peer_has
        if proto.peer_choking:
            # BEP 6: while it chokes us, only the pieces it allowed us
            allowed = proto.allowed_fast
            if not allowed:
                return

            def has_allowed(i: int, _allowed: frozenset[int] = allowed) -> bool:
                return i in _allowed and proto.peer_has(i)

            has = has_allowed

        if self._cold and self.blocks < COLD_BLOCKS:  # (see COLD_DEPTH)
            want = min(COLD_DEPTH, peer.max_depth) - proto.num_outstanding
            if want <= 0:
                return
        else:
            want = min(peer.depth, peer.max_depth) - proto.num_outstanding
            if want < min(REFILL_BATCH, peer.depth):
                return
        reqs = self.picker.pick(peer, has, want, self.alloc_slot)
        if reqs:
            peer.write(proto.send_requests(reqs, self.loop.time()))
        if len(self.picker.unstarted) < self.low_water:
            self.ask_for_pieces()

    def pump_all(self) -> None:
        for peer in list(self.peers):
            self.pump(peer)
        if self.webseeds is not None:
            self.webseeds.pump()

    def ask_for_pieces(self) -> None:
        if self.need_pending or self.complete or not (
                self.peers or (self.webseeds is not None and self.webseeds.live)):
            return
        now = self.loop.time()
        if self.picker.endgame and now - self.last_need < TICK:
            return  # nothing was left last time: ask at most once a tick
        self.need_pending = True
        self.last_need = now
        self.send(ipc.NeedPieces(lease_request(self.cfg.nslots, self.meta.piece_length)))

    # -- verify and write --------------------------------------------------------------
    def submit_piece(self, pd: PieceDL) -> None:
        """Hand a full slot to the native I/O thread: verify, then write if good.

        The run's first piece (up to :data:`FIRST_PIECE_INLINE` bytes) is verified
        and written here instead, through the page cache (``IOThread.run_piece``): on
        busy cores each hand-over between the loop, the hash stage and a writer
        waits for a CPU, and the first piece took 2-40 ms there (its report is what
        a run's start is judged by); here it costs the loop about a millisecond, once.
        """
        try:
            if self.io_wait or not self.storage.room_for(pd.index * self.meta.piece_length,
                                                         pd.size):
                # its files do not fit beside the descriptors pinned by writes in
                # flight and those a flush has yet to sync (a torrent of many small
                # files): it waits, in order, and holds its slot meanwhile
                self.io_wait.append(pd)
                self._flush_for_room()
                return
        except FastTorrentError as e:
            self._fatal(e.__class__.__name__, str(e))
            return
        self._submit(pd)

    def _submit(self, pd: PieceDL) -> None:
        m = self.meta
        i = pd.index
        try:
            segs, pinned = self.storage.write_segments(i * m.piece_length, pd.size)
        except FastTorrentError as e:
            self._fatal(e.__class__.__name__, str(e))
            return
        self.in_io[i] = (pd, pinned)
        digest = None if m.v2_only else m.piece_hashes[i * 20 : i * 20 + 20]
        v2 = None if self.v2 is None else self.v2.expected(i)
        if self._first_inline and pd.size <= FIRST_PIECE_INLINE:
            self._first_inline = False
            status, err = self.iot.run_piece(i, pd.slot.view, pd.size, digest,
                                             [seg[:4] for seg in segs], v2=v2)  # no O_DIRECT
            self._collect([(i, status, err)])
            return
        self.iot.submit_piece(i, pd.slot.view, pd.size, digest, segs, v2=v2)

    def _submit_waiting(self) -> None:
        """Submit the pieces that waited for descriptors (see :meth:`submit_piece`), as
        many as now fit."""
        m = self.meta
        try:
            while self.io_wait:
                pd = self.io_wait[0]
                if not self.storage.room_for(pd.index * m.piece_length, pd.size):
                    self._flush_for_room()
                    return
                self.io_wait.popleft()
                self._submit(pd)
        except FastTorrentError as e:
            self._fatal(e.__class__.__name__, str(e))

    def _flush_for_room(self) -> None:
        """Pieces wait for descriptors: a flush now frees the retired ones (unless one
        runs already; its end submits them)."""
        if not self.syncs and self.storage.retired:
            self.flush()

    def _fatal(self, kind: str, message: str) -> None:
        if self.fatal is None:
            self.fatal = (kind, message)
            self.send(ipc.Fatal(kind, message))
        self.stop_event.set()

    def on_io_done(self) -> None:
        try:
            os.eventfd_read(self.efd)
        except BlockingIOError:
            pass
        self._collect(self.iot.completed() + self.sync_iot.completed())

    def _collect(self, outcomes: list[tuple[int, int, int]]) -> None:
        for jid, status, err in outcomes:
            if jid < 0:
                pieces, flushed = self.syncs.pop(jid)
                self.storage.flushed(flushed)
                if status == _io.JOB_OK:
                    self.send(ipc.Durable(tuple(pieces)))
                else:
                    self._io_error(err, "flushing files")
                continue
            pd, pinned = self.in_io.pop(jid)
            if status == _io.JOB_OK:
                self.storage.mark_dirty(pinned)  # for the next flush (see mark_dirty)
            self.storage.unpin(pinned)
            if status == _io.JOB_IO_ERROR:
                self._io_error(err, f"writing piece {jid}")
                self._release_slot(pd)
                continue
            self._piece_checked(pd, status == _io.JOB_OK)
        if self.io_wait and outcomes:
            self._submit_waiting()
        if self.verified_batch and self._verified_timer is None:
            # soon, not at the next tick (the coordinator leases and steals by it),
            # but batched: one pipe message per piece cost 11 % of a worker's time.
            # At once when nothing was sent for VERIFIED_DELAY (the first piece of
            # a run is not held back), else when that much time has passed.
            wait = self._verified_sent + VERIFIED_DELAY - self.loop.time()
            if wait <= 0:
                self._send_verified()
            else:
                self._verified_timer = self.loop.call_later(wait, self._send_verified)
        if outcomes:
            self.pump_all()

    def _send_verified(self) -> None:
        if self._verified_timer is not None:
            self._verified_timer.cancel()  # (a no-op when it is the timer calling)
            self._verified_timer = None
        if self.verified_batch:
            self.send(ipc.Verified(tuple(self.verified_batch)))
            self.verified_batch = []
            self._verified_sent = self.loop.time()

    def _io_error(self, err: int, what: str) -> None:
        exc = os_error(OSError(err, os.strerror(err)), what)
        self._fatal(exc.__class__.__name__, str(exc))

    def _piece_checked(self, pd: PieceDL, good: bool) -> None:
        i = pd.index
        if good:
            self._smart_ban(pd)
            if self._has(i):
                self._release_slot(pd)  # an endgame duplicate: the other copy won
                return
            self._mark_have(i)
            if self.webseeds is not None and self.webseeds.owns(pd):
                self.webseeds.verified(pd)
            self.stats["pieces"] += 1
            self.stats["bytes"] += pd.size
            self.written.append(i)
            self.verified_batch.append(i)
            self._release_slot(pd)
            self.broadcast_haves((i,))
        else:
            self.stats["hash_failures"] += 1
            self.send(ipc.HashFailed(i, self._sender_of(pd)))
            self._hash_failed(pd)

    def _sender_of(self, pd: PieceDL) -> str:
        """Who sent all of a piece (a peer's address, a web seed's URL); "" if several."""
        if self.webseeds is not None and self.webseeds.owns(pd):
            return str(getattr(pd.owner, "url", ""))
        senders = set(pd.senders.values())
        if len(senders) != 1:
            return ""
        (peer,) = senders
        return format_peer(*peer.addr)

    def _release_slot(self, pd: PieceDL) -> None:
        slot = pd.slot
        slot.blocks.clear()
        self.free_slots.append(slot)

    def _abandon(self, pd: PieceDL) -> None:
        """A piece verified elsewhere: cancel what we asked for and free its slot."""
        for b, holder in list(pd.outstanding.items()) + list(pd.dups.items()):
            if not holder.closed and holder.active:
                holder.write(holder.proto.send_cancel(pd.index, b * BLOCK_SIZE,
                                                      pd.block_length(b)))
        self._release_slot(pd)

    def _hash_failed(self, pd: PieceDL) -> None:
        if self.webseeds is not None and self.webseeds.owns(pd):
            self.webseeds.hash_failed(pd)  # a web seed's piece: ban it, fetch the piece again
            return
        senders = set(pd.senders.values())
        if len(senders) == 1:
            (culprit,) = senders
            self.ban(culprit, f"sent piece {pd.index}, which failed its hash check")
            self.failed_crcs.pop(pd.index, None)
            parole = None
        else:
            view = pd.slot.view
            crcs = self.failed_crcs.setdefault(pd.index, [])
            for b, sender in pd.senders.items():
                start = b * BLOCK_SIZE
                crcs.append((sender, b, zlib.crc32(view[start : start + pd.block_length(b)])))
            live = [p for p in senders if not p.closed]
            parole = live[0] if live else None
        pd.slot.blocks.clear()
        self.picker.retry(pd, parole)

    def _smart_ban(self, pd: PieceDL) -> None:
        """A good copy arrived: ban the senders whose earlier blocks differ from it."""
        bad = self.failed_crcs.pop(pd.index, None)
        if not bad:
            return
        view = pd.slot.view
        for sender, b, crc in bad:
            start = b * BLOCK_SIZE
            if zlib.crc32(view[start : start + pd.block_length(b)]) != crc:
                self.ban(sender, f"sent a corrupt block of piece {pd.index}")

    def ban(self, peer: Peer, why: str) -> None:
        self.banned.add(ban_key(*peer.addr))
        self.stats["banned"].append(format_peer(*peer.addr))
        peer.abort(f"banned: {why}")

    def broadcast_haves(self, pieces: Iterable[int]) -> None:
        pieces = tuple(pieces)
        if self.complete and self.completed_at is None:
            self.completed_at = self.loop.time()  # these HAVEs make us a seed to our peers
        for peer in list(self.peers):
            if peer.active and not peer.closed and not peer.proto.peer_is_seed:
                # a seed has every piece: a HAVE tells it nothing (libtorrent skips them too)
                peer.write(b"".join(peer.proto.send_have(i) for i in pieces))
                if self.complete and peer.proto.am_interested:
                    peer.write(peer.proto.send_not_interested())

    # -- housekeeping -----------------------------------------------------------
    def tick(self) -> None:
        now = self.loop.time()
        handshake_timeout = self.cfg.options.handshake_timeout
        for peer in list(self.peers):
            if peer.closed:
                continue
            if not peer.active:
                # counted from the connection, not from the last byte: a peer that
                # trickles its handshake a byte at a time is dropped all the same
                if now - peer.created_at > handshake_timeout:
                    self.stats["handshake_timeouts"] += 1
                    peer.abort(f"no handshake within {handshake_timeout:g} s")
                continue
            # pipeline depth from the measured rate (bytes per second over the tick)
            received = peer.rb.received
            rate = (received - peer._rate_seen) / TICK
            peer._rate_seen = received
            peer.up_rate = 0.7 * peer.up_rate + 0.3 * (peer._up_window / TICK)
            peer._up_window = 0
            peer.rate = 0.7 * peer.rate + 0.3 * rate
            if peer.rate < SHRINK_BELOW_RATE:
                peer.rb.shrink()  # an idle peer's buffer back to a few KiB
            peer.metadata_served = 0
            peer.hashes_served = 0
            if now - peer.pex_at >= PEX_INTERVAL and UT_PEX in peer.proto.peer_extensions \
                    and not self.meta.private:
                self._send_pex(peer, now)
            target = int(peer.rate * PIPELINE_SECONDS / BLOCK_SIZE)
            peer.depth = max(MIN_DEPTH, min(MAX_DEPTH, max(peer.depth, target)
                                            if peer.rate > 0 else peer.depth))
            for i, b, _ln in peer.proto.timed_out_requests(now, self.cfg.options.request_timeout):
                self.picker.block_lost(i, b, peer)
            if peer.proto.needs_keepalive(now):
                peer.write(peer.proto.send_keepalive())
            if peer.proto.is_idle(now, wp.IDLE_TIMEOUT):
                peer.abort("idle for two minutes")
        if self.choker.due(now):
            self.choke_round(now)
        if self.webseeds is not None:
            self.webseeds.tick(now, TICK)
        self._send_verified()
        self._share_live_peers()
        if self.avail_dirty:
            self.avail_dirty = False
            self.send(ipc.Availability(bytes(self.avail)))
        if self.written and now - self._last_flush >= FLUSH_INTERVAL:
            self.flush()
        if len(self.picker.unstarted) < self.low_water:
            self.ask_for_pieces()
        self.pump_all()
        self.send(ipc.Stats(self.wid, self._stats()))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("w%d t=%.2f slots=%d io=%d busy=%.2f/%.2f unstarted=%d active=%d "
                      "peers=%s", self.wid, now, len(self.free_slots), self.iot.pending,
                      self.iot.busy_seconds[0], self.iot.busy_seconds[1],
                      len(self.picker.unstarted), len(self.picker.active),
                      " ".join(f"[{p.addr[1]} out={p.proto.num_outstanding} d={p.depth} "
                               f"r={p.rate / 1e6:.0f} ch={int(p.proto.peer_choking)}]"
                               for p in self.peers))

    def flush(self) -> None:
        """fdatasync what was written (natively, after the writes queued before it)."""
        if self.syncs:
            return  # one flush at a time; the next one takes everything since
        batch, self.written = self.written, []
        self._last_flush = self.loop.time()
        flush = self.storage.pin_dirty()
        self._sync_seq -= 1
        self.syncs[self._sync_seq] = (batch, flush)
        self.sync_iot.submit_sync(self._sync_seq, flush.fds, flush.whole_fs)

    def _stats(self) -> dict[str, Any]:
        s = dict(self.stats)
        s["blocks"] = self.blocks
        s["uploaded"] = self.uploaded
        s["connected"] = sum(1 for p in self.peers if p.active)
        s["rate"] = sum(p.rate for p in self.peers)
        s["slots_free"] = len(self.free_slots)
        s["half_open"] = self.half_open
        s["dialing"] = self.dialing
        s["dial_queue"] = len(self.dial_queue)
        s["up_rate"] = sum(p.up_rate for p in self.peers)
        # seconds each I/O stage has worked (torrent/snapshot.py STAGES)
        s["busy_hash"], s["busy_write"] = self.iot.busy_seconds
        s["busy_sync"] = self.sync_iot.busy_seconds[1]
        if self.webseeds is not None:
            s.update(self.webseeds.stats())
            s["rate"] += s["web_seed_rate"]
        return s

    def start(self) -> None:
        """Begin serving (the host ticks it from now on, until :attr:`stop_event`)."""
        self.loop.add_reader(self.efd, self.on_io_done)
        self.send(ipc.Ready(self.wid))
        if self.webseeds is not None:
            self.webseeds.start()

    async def shutdown(self) -> None:
        """Stop: drop the peers, let the queued pieces finish, flush, report, release.

        What this torrent owes its coordinator is queued on the host's channel
        when it returns; the process's loop and channel go on for the others.
        """
        for timer in (self._down_timer, self._up_timer, self._verified_timer):
            if timer is not None:
                timer.cancel()
        if self.drain_on_stop:
            await self._drain()
        for peer in list(self.peers):
            peer.abort("shutting down")
        if self.webseeds is not None:
            await self.webseeds.close()  # before the arena: runs write into its slots
        # Let queued pieces finish (they are verified data), then flush and report.
        # Pieces still waiting for descriptors are not verified yet: dropped.
        self.loop.remove_reader(self.efd)
        self.io_wait.clear()
        self._collect(self.iot.close())
        if self.flush_on_stop:
            self._collect(self.sync_iot.close())
        # else: a flush still running is left to finish on its own; the
        # process exits without waiting for it (workerhost.host_main: os._exit).
        if self.verified_batch:
            self.send(ipc.Verified(tuple(self.verified_batch)))
            self.verified_batch = []
        if self.written and self.flush_on_stop and \
                (self.fatal is None or self.fatal[0] == DiskFull.__name__):
            # pieces verified by the last outcomes: flush them synchronously (on a
            # full disk too: what was written is flushed and recorded, or not recorded)
            batch, self.written = self.written, []
            try:
                self.storage.sync()
                self.send(ipc.Durable(tuple(batch)))
            except FastTorrentError as e:
                self.send(ipc.Fatal(e.__class__.__name__, str(e)))
        self.send(ipc.Stats(self.wid, self._stats()))
        if self.flush_on_stop:
            os.close(self.efd)
        else:  # the flush thread may still be in fdatasync: it and its eventfd stay
            self.host.linger(self.sync_iot, self.efd)
        self.storage.close()
        self.free_slots.clear()
        self.picker.active.clear()
        self.arena.close()

    async def _drain(self) -> None:
        """Wait (at most DRAIN_TIMEOUT) until the peers received every block we wrote."""
        deadline = self.loop.time() + DRAIN_TIMEOUT
        while self.loop.time() < deadline and any(p.conn.unsent() for p in list(self.peers)):
            await asyncio.sleep(DRAIN_POLL)


def _metadata_servable(info: bytes) -> bool:
    """Whether peers take this info dict over ut_metadata (BEP 9): not over
    MAX_METADATA_SIZE, which they refuse, and which the handshake's
    ``metadata_size`` cannot even announce (a torrent file may hold up to
    64 MiB of info dict, so such a torrent still downloads and seeds)."""
    return len(info) <= MAX_METADATA_SIZE


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _bits_to_indices(bits: bytes) -> list[int]:
    out = []
    for k, byte in enumerate(bits):
        if byte:
            base = k * 8
            for j in range(8):
                if byte & (0x80 >> j):
                    out.append(base + j)
    return out
