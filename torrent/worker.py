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
import os
import signal
import socket
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any

from . import _fast, ipc
from .errors import FastTorrentError
from .picker import BLOCK_SIZE, Picker, PieceDL
from .shm import Arena
from .storage import Storage, layout_for
from .wire import peer as wp

__all__ = ["Worker", "WorkerConfig", "worker_main"]

#: Seconds between fdatasync batches (and Durable reports).  Longer batches
#: mean fewer flushes; shorter ones mean less refetching after a crash.
FLUSH_INTERVAL = 1.0
#: The worker's housekeeping tick.
TICK = 0.25
#: A request unanswered this long is re-issued elsewhere (libtorrent's
#: request_timeout is 60 s; loopback and LAN peers answer in milliseconds,
#: and a peer silently dropping requests must not stall the tail).
REQUEST_TIMEOUT = 10.0
#: Request pipeline per peer: rate x PIPELINE_SECONDS / 16 KiB, clamped to
#: [MIN_DEPTH, MAX_DEPTH] (libtorrent: 3 s, [2, 500]).  Slow start at INITIAL_DEPTH.
PIPELINE_SECONDS = 3.0
MIN_DEPTH = 4
MAX_DEPTH = 500
INITIAL_DEPTH = 64
#: Ask the coordinator for more pieces when fewer unstarted leased pieces
#: remain than this many per slot... in practice: a lease of 2 x slots is
#: asked for when fewer than `slots` are left, so a peer never waits on the
#: coordinator round trip.
LOW_WATER = 4
#: Peers we upload to at once (BEP 3 choking: the best by rate, plus one
#: optimistic unchoke).  A server has bandwidth to spare; 8 keeps each
#: unchoked peer's share large enough to be worth its while.
UPLOAD_SLOTS = 8
#: Seconds between choking rounds (BEP 3 / libtorrent: 10 s, so rates settle).
CHOKE_INTERVAL = 10.0
#: Every this many rounds the optimistic unchoke moves to another peer (30 s).
OPTIMISTIC_ROUNDS = 3
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
#: Verified pieces are reported to the coordinator at most this late (batched).
VERIFIED_DELAY = 0.05
#: A connection that has not completed the handshake this long after it was
#: made is dropped (libtorrent: handshake_timeout 10 s; we are a little laxer).
HANDSHAKE_TIMEOUT = 20.0
#: Connect timeout for outgoing peers.
CONNECT_TIMEOUT = 10.0
_DEBUG = bool(os.environ.get("FASTTORRENT_DEBUG"))


class WorkerConfig:
    """What a worker needs from the coordinator (pickled once at spawn)."""

    def __init__(self, *, wid: int, meta: Any, outdir: str, arena_fd: int, slot_size: int,
                 arena_slots: int, first_slot: int, nslots: int, port: int, bind: str,
                 peer_id: bytes, done: bytes, max_rate: int = 0,
                 request_timeout: float = REQUEST_TIMEOUT, writable: bool = True,
                 lock_writes: bool = False, max_up_rate: int = 0,
                 direct_io: bool = True) -> None:
        self.wid = wid
        self.meta = meta
        self.outdir = outdir
        self.arena_fd = arena_fd  # the arena's memfd, inherited at this number
        self.slot_size = slot_size
        self.arena_slots = arena_slots
        self.first_slot = first_slot
        self.nslots = nslots
        self.port = port
        self.bind = bind
        self.peer_id = peer_id
        self.done = done  # bitfield of pieces already verified (resume)
        self.max_rate = max_rate
        self.request_timeout = request_timeout
        self.writable = writable  # False when only seeding: never create or change files
        self.lock_writes = lock_writes  # several workers write the same files
        self.max_up_rate = max_up_rate  # bytes/s this worker uploads at most (0: unlimited)
        self.direct_io = direct_io  # whole pages bypass the page cache (Storage)


class RateLimiter:
    """Token bucket over all of one worker's connections (``--download-limit`` / N workers).

    Reading stops (``pause_reading`` on every peer) when the bucket is empty and
    resumes when the refill timer has put bytes back; the kernel's socket
    buffers and TCP flow control then slow the senders down.
    """

    #: Refill period; a smaller one smooths the rate at a little CPU cost.
    PERIOD = 0.05
    #: Burst allowance, in seconds of the rate.
    BURST = 0.25

    def __init__(self, worker: Worker, rate: int) -> None:
        self.worker = worker
        self.rate = rate
        self.tokens = rate * self.BURST
        self.paused = False
        self.handle: asyncio.TimerHandle | None = None
        self._tick()

    def consume(self, n: int) -> None:
        self.tokens -= n
        if self.tokens <= 0 and not self.paused:
            self.paused = True
            for pc in self.worker.peers:
                pc.pause()

    def _tick(self) -> None:
        self.tokens = min(self.rate * self.BURST, self.tokens + self.rate * self.PERIOD)
        if self.paused and self.tokens > 0:
            self.paused = False
            for pc in self.worker.peers:
                pc.resume()
        self.handle = self.worker.loop.call_later(self.PERIOD, self._tick)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.cancel()


#: A stop after seeding (its limit reached) first lets the blocks already
#: written reach the peers, at most this long: a peer must not lose the last
#: blocks it was sent because we closed the connection under them.
DRAIN_TIMEOUT = 5.0
#: How often the drain looks at the send queues (a bounded wait, not a spin).
DRAIN_POLL = 0.02


class TokenBucket:
    """A token bucket, sans-IO: ``rate`` bytes per second, at most ``burst`` saved up.

    The clock (seconds, monotonic) is injected, so the arithmetic is tested
    with a fake one.  A sender asks :meth:`ready`, sends one whole block and
    :meth:`consume`s it: the bucket may run into debt by up to one block, so a
    rate below the block size still moves, and over time no more than
    ``burst + rate x t`` (plus that one block) leaves.  :meth:`wait` says how
    long until it is ready again.
    """

    __slots__ = ("_stamp", "burst", "clock", "rate", "tokens")

    #: Ready when less than this many bytes short: after sleeping exactly
    #: :meth:`wait`, rounding may leave the bucket a hair below zero, and a
    #: clock of limited resolution would never make up for it.
    SLACK = 1.0

    def __init__(self, rate: float, burst: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not rate > 0 or not burst >= 0:
            raise ValueError(f"token bucket: rate {rate} must be > 0 and burst {burst} >= 0")
        self.rate = float(rate)
        self.burst = float(burst)
        self.clock = clock
        self.tokens = float(burst)  # starts full
        self._stamp = clock()

    def _refill(self) -> None:
        now = self.clock()
        if now > self._stamp:
            self.tokens = min(self.burst, self.tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def ready(self) -> bool:
        """Whether a block may be sent now (the bucket is not in debt)."""
        self._refill()
        return self.tokens > -self.SLACK

    def consume(self, n: int) -> None:
        """``n`` bytes were sent."""
        self._refill()
        self.tokens -= n

    def wait(self) -> float:
        """Seconds until :meth:`ready` holds again (0.0 if it holds now)."""
        self._refill()
        return 0.0 if self.tokens > -self.SLACK else -self.tokens / self.rate


class UploadLimiter:
    """``--upload-limit`` / N workers, over all of one worker's connections.

    :meth:`Worker.serve` asks :meth:`may_send` before each block and reports it
    with :meth:`sent`.  When the bucket is empty, serving stops (the requests
    wait in each peer's queue, bounded by the wire protocol) and one timer,
    never more than one, serves the peers again once the bucket has refilled;
    each round starts with the next peer, so no peer starves the others.
    """

    #: Burst allowance, in seconds of the rate (as the download limiter's).
    BURST = 0.25
    #: Shortest wait once empty: a bucket a rounding error short of ready
    #: must not arm a timer after every block.
    MIN_WAIT = 0.005

    def __init__(self, worker: Worker, rate: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.worker = worker
        self.bucket = TokenBucket(rate, rate * self.BURST, clock)
        self.handle: asyncio.TimerHandle | None = None
        self.turn = 0

    def may_send(self) -> bool:
        if self.bucket.ready():
            return True
        if self.handle is None:
            self.handle = self.worker.loop.call_later(max(self.MIN_WAIT, self.bucket.wait()),
                                                      self._resume)
        return False

    def sent(self, n: int) -> None:
        self.bucket.consume(n)

    def _resume(self) -> None:
        self.handle = None
        peers = [p for p in self.worker.peers if p.active and not p.closed]
        if not peers:
            return
        k = self.turn % len(peers)
        self.turn += 1
        for pc in peers[k:] + peers[:k]:
            self.worker.serve(pc)
            if self.handle is not None:
                return  # empty again: the others go first next round

    def close(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


def _unsent(pc: Any) -> int:
    """Bytes written to ``pc`` that the peer has not yet received (our buffer + the kernel's)."""
    tr = pc.transport
    if tr is None or pc.closed:
        return 0
    n = tr.get_write_buffer_size()
    sock = tr.get_extra_info("socket")
    if sock is not None:
        import fcntl
        import struct
        import termios

        try:  # TIOCOUTQ (SIOCOUTQ): sent but not yet acknowledged by the peer
            n += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
        except (OSError, ValueError):
            pass
    return n


class Slot:
    """A piece slot in the shared arena and the block map of the piece it holds.

    ``raw`` is the whole slot; ``view`` is where the current piece lies in it
    (all of it, or -- multi-file torrents -- the piece's bytes shifted so that
    they are aligned in memory as in their file; see :meth:`Worker.alloc_slot`).
    """

    __slots__ = ("blocks", "raw", "view")

    def __init__(self, view: memoryview, nblocks: int) -> None:
        self.raw = view
        self.view = view
        self.blocks = _fast.BlockMap(nblocks)


class Worker:
    def __init__(self, cfg: WorkerConfig, conn: Any) -> None:
        self.cfg = cfg
        self.wid = cfg.wid
        self.meta = cfg.meta
        self.peer_id = cfg.peer_id
        self.conn = conn
        self.loop = asyncio.get_running_loop()
        m = self.meta
        self.picker = Picker(m.num_pieces, m.piece_length, m.total_size)
        self.have = bytearray(cfg.done)  # pieces verified anywhere (bitfield)
        self.have_count = _fast.bitfield_count(self.have, m.num_pieces)
        self.arena = Arena.attach(cfg.arena_fd, cfg.slot_size, cfg.arena_slots)
        nb = -(-m.piece_length // BLOCK_SIZE)
        self.free_slots = [Slot(self.arena.slot(cfg.first_slot + k), nb)
                           for k in range(cfg.nslots)]
        self.storage = Storage(layout_for(m, cfg.outdir), writable=cfg.writable,
                               direct=cfg.direct_io)
        # The native I/O thread (see torrent/_fast.pyx): verifies and writes
        # full slots and flushes files without the GIL, waking us via an eventfd.
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.iot = _fast.IOThread(self.efd, lock_writes=cfg.lock_writes)
        # fdatasync runs on a thread of its own: on this machine's disk a flush of
        # one second of downloading takes longer than a second, and queued behind
        # it, verification and writes would stall the download.
        self.sync_iot = _fast.IOThread(self.efd, writers=1)  # syncs only, one at a time
        self.in_io: dict[int, tuple[PieceDL, list[int]]] = {}  # piece -> (state, pinned spans)
        self.syncs: dict[int, tuple[list[int], list[int]]] = {}  # job -> (pieces, pinned)
        self._sync_seq = 0
        self.flush_on_stop = True
        self.drain_on_stop = False
        self._verified_timer: asyncio.TimerHandle | None = None
        self.blocks = 0  # blocks stored (a plain attribute: counted per block)
        self.limiter = RateLimiter(self, cfg.max_rate) if cfg.max_rate > 0 else None
        self.up_limiter = UploadLimiter(self, cfg.max_up_rate) if cfg.max_up_rate > 0 else None
        self.unchoked: set[Any] = set()
        self.optimistic: Any = None
        self.choke_rounds = 0
        self.next_choke = time.monotonic() + CHOKE_INTERVAL
        self.uploaded = 0
        self._serve_buffers: list[bytearray] = []  # reused upload buffers (see serve)
        self.peers: set[Any] = set()
        self.banned: set[str] = set()
        self.need_pending = False
        self.last_need = 0.0
        self.written: list[int] = []  # verified and written, not yet flushed
        self.verified_batch: list[int] = []
        self.avail = bytearray(len(cfg.done))
        self.avail_dirty = False
        self.stop_event = asyncio.Event()
        self.failed_crcs: dict[int, list[tuple[Any, int, int]]] = {}  # piece -> [(sender, block, crc)]
        self.stats: dict[str, Any] = {"worker": cfg.wid, "peers": 0, "pieces": 0, "bytes": 0,
                                      "blocks": 0, "steals": 0, "released": 0,
                                      "hash_failures": 0, "banned": [], "endgame": False}
        self.fatal: tuple[str, str] | None = None
        self.server: asyncio.base_events.Server | None = None
        self._last_flush = time.monotonic()
        self.low_water = max(LOW_WATER, cfg.nslots)

    # -- control pipe ----------------------------------------------------------
    def send(self, msg: Any) -> None:
        try:
            self.conn.send(msg)
        except (BrokenPipeError, OSError):
            self.stop_event.set()

    def on_control(self) -> None:
        try:
            while self.conn.poll():
                self.handle(self.conn.recv())
        except (EOFError, OSError):
            self.stop_event.set()  # the coordinator is gone: stop by ourselves

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
            if _ban_key(msg.host, msg.port) not in self.banned:
                self.loop.create_task(self.connect(msg.host, msg.port))
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
            self.broadcast_haves(msg.pieces)
        elif t is ipc.Stop:
            self.flush_on_stop = msg.flush
            self.drain_on_stop = msg.drain
            self.stop_event.set()

    # -- peers -------------------------------------------------------------------
    async def connect(self, host: str, port: int) -> None:
        from .net.peer import PeerConn

        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: PeerConn(self, (host, port), True),
                                            host, port),
                CONNECT_TIMEOUT)
        except (TimeoutError, OSError) as e:
            reason = "timed out" if isinstance(e, asyncio.TimeoutError) else (e.strerror or str(e))
            self.send(ipc.PeerClosed(host, port, f"connect failed: {reason}", False, False))

    def peer_connected(self, pc: Any) -> None:
        if _DEBUG:
            import sys
            print(f"w{self.wid} pid={os.getpid()} connected {pc.addr}", file=sys.stderr, flush=True)
        if _ban_key(*pc.addr) in self.banned:
            pc.abort("banned")
            return
        self.peers.add(pc)
        pc.depth = INITIAL_DEPTH
        self.stats["peers"] += 1
        if self.limiter is not None and self.limiter.paused:
            pc.pause()

    def peer_handshaken(self, pc: Any, events: Iterable[Any]) -> None:
        if any(self.have):
            pc.write(pc.proto.send_bitfield(bytes(self.have)))

    def peer_lost(self, pc: Any) -> None:
        if pc not in self.peers:
            return
        self.peers.discard(pc)
        self.unchoked.discard(pc)
        if self.optimistic is pc:
            self.optimistic = None
        self.picker.peer_gone(pc)
        if pc.active:
            self._availability(pc.proto.peer_bitfield, -1)
        banned = _ban_key(*pc.addr) in self.banned
        if _DEBUG:
            import sys
            print(f"w{self.wid} lost {pc.addr}: {pc.close_reason}", file=sys.stderr, flush=True)
        self.send(ipc.PeerClosed(pc.addr[0], pc.addr[1], pc.close_reason, banned, True))
        self.pump_all()

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

    def on_events(self, pc: Any, events: list[Any]) -> None:
        """Carry out one message's events (from PeerConn._frames).

        The connection pumps requests once after the whole read (see
        PeerConn.buffer_updated); HAVEs only note availability here and ask for
        one interest check at the end, so a later bitfield announcing thousands
        of pieces costs one scan of the peer's bitfield, not one per piece.
        """
        haves = False
        for ev in events:
            t = type(ev)
            if t is wp.Unchoked:
                self.pump(pc)
            elif t is wp.HaveReceived:
                self.picker.add_availability((ev.index,), 1)
                i = ev.index
                if not self.avail[i >> 3] & (0x80 >> (i & 7)):
                    self.avail[i >> 3] |= 0x80 >> (i & 7)
                    self.avail_dirty = True
                haves = True
            elif t is wp.BitfieldReceived:
                self._availability(ev.bits, 1)
                if self.avail_dirty:  # tell the coordinator now: it leases by availability
                    self.avail_dirty = False
                    self.send(ipc.Availability(bytes(self.avail)))
                self._interest(pc)
            elif t is wp.RequestsCancelled:
                for i, b, _ln in ev.requests:
                    self.picker.block_lost(i, b, pc)
                self.pump_all()
            elif t is wp.RequestReceived:
                # answered once the whole read is framed (PeerConn.buffer_updated):
                # one write for all the requests it carried, not one per request
                pc.serve_pending = True
            elif t is wp.PeerInterested:
                if pc not in self.unchoked and len(self.unchoked) < UPLOAD_SLOTS:
                    self._unchoke(pc)
            elif t is wp.PeerNotInterested:
                if pc in self.unchoked:
                    self._choke(pc)
        if haves:
            self._interest(pc)

    # -- uploading -------------------------------------------------------------------
    def _unchoke(self, pc: Any) -> None:
        self.unchoked.add(pc)
        pc.write(pc.proto.send_unchoke())

    def _choke(self, pc: Any) -> None:
        self.unchoked.discard(pc)
        if not pc.closed and pc.active:
            pc.write(pc.proto.send_choke())

    def serve(self, pc: Any) -> None:
        """Send queued blocks the peer asked for, as long as its transport has room.

        Up to :data:`SERVE_BATCH` blocks go out per write: their frames are
        laid out in one buffer, the data of each run of consecutive blocks is
        read with one ``preadv`` straight into the frames (one copy from the
        page cache), and the buffer is written with one call (one copy into
        the socket).  A write per block cost a send() per 16 KiB: a quarter
        of a seeding worker's time.
        """
        proto = pc.proto
        tr = pc.transport
        if tr is None or pc.closed or self.stop_event.is_set():
            return  # stopping: a drain must not start new blocks
        pl = self.meta.piece_length
        up = self.up_limiter
        while tr.get_write_buffer_size() < SEND_HIGH_WATER:
            blocks = []
            while len(blocks) < SERVE_BATCH:
                if up is not None and not up.may_send():
                    break  # the limiter serves us again once its bucket refilled
                blk = proto.next_request()
                if blk is None:
                    break
                if not self._has(blk[0]):
                    continue  # never announced: an honest peer does not ask; drop it
                blocks.append(blk)
                if up is not None:
                    up.sent(blk[2])
            if not blocks:
                return
            size = sum(13 + ln for _i, _b, ln in blocks)
            pool = self._serve_buffers
            buf = pool.pop() if pool and size <= SERVE_BUFFER else bytearray(max(size, SERVE_BUFFER))
            view = memoryview(buf)
            pos = 0
            run: list[memoryview] = []
            run_start = run_end = -1
            try:
                for index, begin, length in blocks:
                    wp.pack_piece_header(view[pos : pos + 13], index, begin, length)
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
            tr.write(view[:pos])
            view.release()
            if tr.get_write_buffer_size() == 0 and len(pool) < SERVE_POOL:
                # all of it went to the socket: the buffer is free again (else the
                # transport holds a view of it until it is sent, and it is let go)
                pool.append(buf)
            n = pos - 13 * len(blocks)
            pc.uploaded += n
            pc._up_window += n
            self.uploaded += n
            if len(blocks) < SERVE_BATCH:
                return  # the queue is empty, or the limiter stopped us

    def choke_round(self, now: float) -> None:
        """BEP 3 choking: unchoke the best peers by rate, plus one optimistic unchoke.

        While downloading, "best" is the rate they send to us (tit-for-tat);
        once complete, the rate we upload to them, which rotates the slots
        between the fastest takers.
        """
        self.next_choke = now + CHOKE_INTERVAL
        self.choke_rounds += 1
        cands = [p for p in self.peers if p.active and not p.closed and p.proto.peer_interested]
        seeding = self.complete
        cands.sort(key=lambda p: p.up_rate if seeding else p.rate, reverse=True)
        keep = set(cands[: UPLOAD_SLOTS - 1])
        rest = [p for p in cands if p not in keep]
        if self.choke_rounds % OPTIMISTIC_ROUNDS == 0 or self.optimistic not in rest:
            self.optimistic = rest[self.choke_rounds % len(rest)] if rest else None
        if self.optimistic is not None:
            keep.add(self.optimistic)
        for p in list(self.unchoked):
            if p not in keep:
                self._choke(p)
        for p in keep:
            if p not in self.unchoked:
                self._unchoke(p)

    def _interest(self, pc: Any) -> None:
        if pc.proto.am_interested or self.complete:
            return
        bits = pc.proto.peer_bitfield
        for k, byte in enumerate(bits):
            if byte & ~self.have[k] & 0xFF:
                pc.write(pc.proto.send_interested())
                return

    @property
    def complete(self) -> bool:
        # a counter, not a scan: this is asked per verified piece, and a scan of
        # a 200,000-piece bitfield each time would make a download quadratic
        return self.have_count == self.meta.num_pieces

    def _has(self, i: int) -> bool:
        return bool(self.have[i >> 3] & (0x80 >> (i & 7)))

    def _mark_have(self, i: int) -> None:
        mask = 0x80 >> (i & 7)
        if not self.have[i >> 3] & mask:
            self.have[i >> 3] |= mask
            self.have_count += 1

    # -- requests ----------------------------------------------------------------
    def alloc_slot(self, index: int) -> Slot | None:
        """A free slot for piece ``index``, its block map sized to that piece."""
        if not self.free_slots:
            return None
        slot = self.free_slots.pop()
        size = self.picker.piece_size(index)
        nb = -(-size // BLOCK_SIZE)
        if slot.blocks.nblocks != nb:
            slot.blocks = _fast.BlockMap(nb)
        if len(slot.raw) > self.meta.piece_length:
            # the slot has a page of slack: place the piece so that its first file's
            # bytes are aligned in memory as on disk (O_DIRECT straight from the slot)
            shift = self.storage.alignment(index * self.meta.piece_length, size,
                                           _fast.DIRECT_ALIGN)
            slot.view = slot.raw[shift : shift + size]
        return slot

    def pump(self, pc: Any) -> None:
        proto = pc.proto
        if pc.closed or not pc.active or proto.peer_choking or not proto.am_interested:
            return
        want = pc.depth - proto.num_outstanding
        if want < min(REFILL_BATCH, pc.depth):
            return
        reqs = self.picker.pick(pc, proto.peer_has, want, self.alloc_slot)
        if reqs:
            pc.send_requests(reqs, time.monotonic())
        if len(self.picker.unstarted) < self.low_water:
            self.ask_for_pieces()

    def pump_all(self) -> None:
        for pc in list(self.peers):
            self.pump(pc)

    def ask_for_pieces(self) -> None:
        if self.need_pending or not self.peers or self.complete:
            return
        now = time.monotonic()
        if self.picker.endgame and now - self.last_need < TICK:
            return  # nothing was left last time: ask at most once a tick
        self.need_pending = True
        self.last_need = now
        self.send(ipc.NeedPieces(max(LOW_WATER, 2 * self.cfg.nslots)))

    # -- blocks --------------------------------------------------------------------
    def on_block(self, pc: Any, index: int, begin: int, buf: bytearray, off: int,
                 length: int) -> None:
        """A requested block arrived in ``pc``'s receive buffer at ``off``: copy it to its slot.

        Runs once per 16 KiB block (65,536 times per GiB): keep it lean.
        """
        pd = self.picker.active.get(index)
        if pd is None:
            return  # the piece was finished elsewhere meanwhile
        b = begin >> 14
        if begin & 0x3FFF or b >= pd.nblocks or length != pd.block_length(b):
            pc.abort(f"block ({index}, {begin}, {length}) does not match any request")
            return
        slot = pd.slot
        if not slot.blocks.set(b):
            return  # an endgame duplicate that lost the race
        _fast.copy_block(slot.view, begin, buf, off, length)
        self.blocks += 1
        cancels = self.picker.block_arrived(pd, b, pc)
        if cancels:
            for other, ob in cancels:
                if not other.closed and other.active:
                    other.write(other.proto.send_cancel(index, ob * BLOCK_SIZE,
                                                        pd.block_length(ob)))
        if slot.blocks.full:
            self.picker.finish(index)
            self.submit_piece(pd)
        # The connection pumps once after the whole read (see PeerConn.buffer_updated):
        # one write of many requests instead of a 17-byte write per block.

    def blocks_taken(self, n: int, full: list[PieceDL]) -> None:
        """``n`` blocks were stored by the native fast path; ``full`` lists the pieces it filled."""
        self.blocks += n
        while full:
            pd = full.pop()
            self.picker.finish(pd.index)
            self.submit_piece(pd)

    def submit_piece(self, pd: PieceDL) -> None:
        """Hand a full slot to the native I/O thread: verify, then write if good."""
        m = self.meta
        i = pd.index
        try:
            segs, pinned = self.storage.write_segments(i * m.piece_length, pd.size)
        except FastTorrentError as e:
            self._fatal(e.__class__.__name__, str(e))
            return
        self.in_io[i] = (pd, pinned)
        self.iot.submit_piece(i, pd.slot.view, pd.size, m.piece_hashes[i * 20 : i * 20 + 20],
                              segs)

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
                pieces, pinned = self.syncs.pop(jid)
                self.storage.unpin(pinned)
                if status == _fast.JOB_OK:
                    self.send(ipc.Durable(tuple(pieces)))
                else:
                    self._io_error(err, "flushing files")
                continue
            pd, pinned = self.in_io.pop(jid)
            self.storage.unpin(pinned)
            if status == _fast.JOB_IO_ERROR:
                self._io_error(err, f"writing piece {jid}")
                self._release_slot(pd)
                continue
            self._piece_checked(pd, status == _fast.JOB_OK)
        if self.verified_batch and self._verified_timer is None:
            # soon, not at the next tick (the coordinator leases and steals by it),
            # but batched: one pipe message per piece cost 11 % of a worker's time
            self._verified_timer = self.loop.call_later(VERIFIED_DELAY, self._send_verified)
        if outcomes:
            self.pump_all()

    def _send_verified(self) -> None:
        self._verified_timer = None
        if self.verified_batch:
            self.send(ipc.Verified(tuple(self.verified_batch)))
            self.verified_batch = []

    def _io_error(self, err: int, what: str) -> None:
        from .storage import os_error

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
            self.stats["pieces"] += 1
            self.stats["bytes"] += pd.size
            self.written.append(i)
            self.verified_batch.append(i)
            self._release_slot(pd)
            self.broadcast_haves((i,))
        else:
            self.stats["hash_failures"] += 1
            self._hash_failed(pd)

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

    def ban(self, pc: Any, why: str) -> None:
        self.banned.add(_ban_key(*pc.addr))
        self.stats["banned"].append(f"{pc.addr[0]}:{pc.addr[1]}")
        pc.abort(f"banned: {why}")

    def broadcast_haves(self, pieces: Iterable[int]) -> None:
        pieces = tuple(pieces)
        for pc in list(self.peers):
            if pc.active and not pc.closed and not pc.proto.peer_is_seed:
                # a seed has every piece: a HAVE tells it nothing (libtorrent skips them too)
                pc.write(b"".join(pc.proto.send_have(i) for i in pieces))
                if self.complete and pc.proto.am_interested:
                    pc.write(pc.proto.send_not_interested())

    # -- housekeeping -----------------------------------------------------------
    def tick(self) -> None:
        now = time.monotonic()
        for pc in list(self.peers):
            if pc.closed:
                continue
            if not pc.active:
                if now - pc.created_at > HANDSHAKE_TIMEOUT:
                    pc.abort(f"no handshake within {HANDSHAKE_TIMEOUT:.0f} s")
                continue
            # pipeline depth from the measured rate (bytes per second over the tick)
            rate = pc._window_bytes / TICK
            pc._window_bytes = 0
            pc.up_rate = 0.7 * pc.up_rate + 0.3 * (pc._up_window / TICK)
            pc._up_window = 0
            pc.rate = 0.7 * pc.rate + 0.3 * rate
            target = int(pc.rate * PIPELINE_SECONDS / BLOCK_SIZE)
            pc.depth = max(MIN_DEPTH, min(MAX_DEPTH, max(pc.depth, target)
                                          if pc.rate > 0 else pc.depth))
            for i, b, _ln in pc.proto.timed_out_requests(now, self.cfg.request_timeout):
                self.picker.block_lost(i, b, pc)
            if pc.proto.needs_keepalive(now):
                pc.write(pc.proto.send_keepalive())
            if pc.proto.is_idle(now, wp.IDLE_TIMEOUT):
                pc.abort("idle for two minutes")
        if now >= self.next_choke:
            self.choke_round(now)
        if self.verified_batch:
            self.send(ipc.Verified(tuple(self.verified_batch)))
            self.verified_batch = []
        if self.avail_dirty:
            self.avail_dirty = False
            self.send(ipc.Availability(bytes(self.avail)))
        if self.written and now - self._last_flush >= FLUSH_INTERVAL:
            self.flush()
        if len(self.picker.unstarted) < self.low_water:
            self.ask_for_pieces()
        self.pump_all()
        self.send(ipc.Stats(self.wid, self._stats()))
        if _DEBUG:
            import sys
            print(f"w{self.wid} t={now:.2f} slots={len(self.free_slots)} io={self.iot.pending} busy={self.iot.busy_seconds[0]:.2f}/{self.iot.busy_seconds[1]:.2f} unstarted="
                  f"{len(self.picker.unstarted)} active={len(self.picker.active)} peers=" + " ".join(
                      f"[{p.addr[1]} out={p.proto.num_outstanding} d={p.depth} "
                      f"r={p.rate / 1e6:.0f} ch={int(p.proto.peer_choking)}]" for p in self.peers),
                  file=sys.stderr, flush=True)

    def flush(self) -> None:
        """fdatasync what was written (natively, after the writes queued before it)."""
        if self.syncs:
            return  # one flush at a time; the next one takes everything since
        batch, self.written = self.written, []
        self._last_flush = time.monotonic()
        fds, pinned = self.storage.pin_dirty()
        self._sync_seq -= 1
        self.syncs[self._sync_seq] = (batch, pinned)
        self.sync_iot.submit_sync(self._sync_seq, fds)

    def _stats(self) -> dict[str, Any]:
        s = dict(self.stats)
        s["blocks"] = self.blocks
        s["uploaded"] = self.uploaded
        s["connected"] = sum(1 for p in self.peers if p.active)
        s["rate"] = sum(p.rate for p in self.peers)
        s["slots_free"] = len(self.free_slots)
        return s

    async def run(self) -> None:
        self.loop.add_reader(self.conn.fileno(), self.on_control)
        self.loop.add_reader(self.efd, self.on_io_done)
        if self.cfg.port:

            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.cfg.bind, self.cfg.port))
            sock.listen(64)
            self.server = await self.loop.create_server(
                lambda: _Incoming(self), sock=sock)
        self.send(ipc.Ready(self.wid))
        try:
            while not self.stop_event.is_set():
                try:
                    await asyncio.wait_for(self.stop_event.wait(), TICK)
                except TimeoutError:
                    pass
                self.tick()
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        if self.limiter is not None:
            self.limiter.close()
        if self.up_limiter is not None:
            self.up_limiter.close()
        if self.server is not None:
            self.server.close()
        if self.drain_on_stop:
            await self._drain()
        for pc in list(self.peers):
            pc.abort("shutting down")
        # Let queued pieces finish (they are verified data), then flush and report.
        self.loop.remove_reader(self.efd)
        self._collect(self.iot.close())
        if self.flush_on_stop:
            self._collect(self.sync_iot.close())
        # else: a flush still running is left to finish on its own; the
        # process exits without waiting for it (worker_main: os._exit).
        if self.verified_batch:
            self.send(ipc.Verified(tuple(self.verified_batch)))
            self.verified_batch = []
        if self.written and self.fatal is None and self.flush_on_stop:
            # pieces verified by the last outcomes: flush them synchronously
            batch, self.written = self.written, []
            try:
                self.storage.sync()
                self.send(ipc.Durable(tuple(batch)))
            except FastTorrentError as e:
                self.send(ipc.Fatal(e.__class__.__name__, str(e)))
        self.send(ipc.Stats(self.wid, self._stats()))
        os.close(self.efd)
        self.storage.close()
        self.free_slots.clear()
        self.picker.active.clear()
        try:
            self.loop.remove_reader(self.conn.fileno())
        except (OSError, ValueError):
            pass
        self.arena.close()


    async def _drain(self) -> None:
        """Wait (at most DRAIN_TIMEOUT) until the peers received every block we wrote."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while time.monotonic() < deadline and any(_unsent(pc) for pc in list(self.peers)):
            await asyncio.sleep(DRAIN_POLL)


def _Incoming(worker: Worker) -> Any:
    from .net.peer import PeerConn

    class _In(PeerConn):
        def connection_made(self, transport: Any) -> None:
            peer = transport.get_extra_info("peername") or ("?", 0)
            self.addr = (peer[0], peer[1])
            super().connection_made(transport)

    return _In(worker, ("?", 0), False)


def _ban_key(host: str, port: int) -> str:
    """What a ban covers: the host, but host:port on loopback, where every peer is 127.x
    (a test swarm or several clients on one machine) and only the port tells them apart."""
    return f"{host}:{port}" if host.startswith("127.") or host == "::1" else host


def _bits_to_indices(bits: bytes) -> list[int]:
    out = []
    for k, byte in enumerate(bits):
        if byte:
            base = k * 8
            for j in range(8):
                if byte & (0x80 >> j):
                    out.append(base + j)
    return out


def worker_main(cfg: WorkerConfig, conn: Any) -> None:
    """Entry point of a worker process (started by the coordinator with torrent.launch)."""
    # The coordinator handles SIGINT/SIGTERM and tells us to stop; a Ctrl-C or
    # a SIGTERM sent to the whole process group (a terminal, systemd, a job
    # control `kill %1`) must not kill us mid-write.  If the coordinator itself
    # is killed we exit on our own: EOF on the control pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    import sys as _sys
    if os.environ.get("FT_SWITCH"):
        _sys.setswitchinterval(float(os.environ["FT_SWITCH"]))
    try:
        import uvloop
    except ImportError:
        uvloop = None  # type: ignore[assignment]

    async def main() -> None:
        w = Worker(cfg, conn)
        await w.run()

    try:
        if uvloop is not None:
            uvloop.run(main())
        else:
            asyncio.run(main())
    except FastTorrentError as e:
        try:
            conn.send(ipc.Fatal(e.__class__.__name__, str(e)))
        except OSError:
            pass
    # Everything this worker owes the coordinator was sent synchronously; exit
    # without waiting for a flush thread still inside fdatasync (see shutdown).
    os._exit(0)
