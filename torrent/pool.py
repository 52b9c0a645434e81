"""The run's worker processes, shared by its torrents: started, fed, watched, ended.

Theory of operation
-------------------
A run has one set of worker processes (one per core), one listening port
and one shared-memory arena, whatever the number of torrents: each worker
process serves every torrent of the run (:mod:`torrent.workerhost`). The
:class:`WorkerPool` is the coordinator's side of that:

- **Start.** The processes are usually started before the first torrent is
  known (:class:`PrestartedWorkers`: forks of the CLI, or fresh interpreters
  importing meanwhile). :meth:`WorkerPool.open` picks the port, creates the
  arena's memfd and sends each process its :class:`~torrent.workerhost.HostConfig`
  and the memfd; from then on each control connection is a never-blocking
  :class:`~torrent.channel.Channel` watched on the coordinator's loop.
- **Torrents.** Each torrent's :class:`~torrent.coordinator.Coordinator`
  attaches (:meth:`WorkerPool.attach`): it gets a number (``tid``), a window
  of the arena, and one :class:`WorkerHandle` per process whose channel is a
  :class:`TorrentChannel`: what it sends goes out as ``Tagged(tid, msg)``,
  and what the process sends about it is queued for it. The pool reads each
  connection, hands every tagged message to its torrent's queue, and calls
  that coordinator's reader once per batch. A torrent stopped in every
  process (:class:`~torrent.ipc.Stopped`) detaches, and its window serves
  the next.
- **The arena** is one memfd of :attr:`WorkerPool.arena_bytes`, cut into
  ``regions`` equal windows (page-aligned), one per torrent running at once:
  the arena is shared fairly between the torrents of a batch by construction.
  A run of one torrent has one window, the size that torrent needs.
- **Death.** A process that exits, or whose connection breaks, is dead to
  every torrent attached (each coordinator's ``worker_died``).
- **End.** :meth:`WorkerPool.close` closes the connections (EOF: a process
  stops its torrents, flushing, and exits), waits at most
  :data:`WORKER_EXIT_TIMEOUT` and kills what is left.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from . import errors, ipc
from .channel import Channel
from .launch import Child, can_fork, fork_child, send_fd, start_child
from .options import Options
from .shm import SLOT_ALIGN, Arena
from .wire import rc4

__all__ = ["WORKER_EXIT_TIMEOUT", "PrestartedWorkers", "TorrentChannel", "WorkerHandle",
           "WorkerPool"]

#: How long workers get to flush and exit after Stop (or EOF) before they are killed.
WORKER_EXIT_TIMEOUT: Final = 15.0
#: The entry point of a worker process.
WORKER_TARGET: Final = "torrent.workerhost:host_main"


class PrestartedWorkers:
    """Worker processes started before their torrent is known.

    A worker's interpreter start and imports take about 0.2 s here, longer
    than parsing a .torrent, checking the output directory or fetching a
    magnet's metadata from a fast peer. :func:`download` and :func:`seed`
    start the workers first: as forks of this process when
    ``Options.fork_workers`` asks for it (the CLI does) and the process runs
    one thread, ready within milliseconds; else as fresh interpreters that
    import while the coordinator does that work. :meth:`Coordinator.start_workers`
    then sends each its config and hands it the arena's memfd (``SCM_RIGHTS``,
    :func:`~torrent.launch.send_fd`).
    Workers never taken (an error, nothing left to download) are closed: at
    EOF on its control connection a waiting worker exits by itself.

    Before it forks, this process imports what the children will run (the
    worker host's modules, and MSE's cipher when ``mse``), so that they are
    imported once, here, rather than in every child after the fork.
    """

    def __init__(self, n: int, *, fork: bool = False, start: bool = True,
                 mse: bool = True) -> None:
        self.n = n
        self.children: list[tuple[Child, Any]] = []
        #: started by fork (``fork`` asked and :func:`~torrent.launch.can_fork`)
        self.forked = fork
        #: the workers may speak MSE/PE (encryption not disabled): they need RC4
        self.mse = mse
        self.started = False
        self._error: errors.ResourceExhausted | None = None
        if start:
            self.start()

    def start(self, *, defer_error: bool = False) -> None:
        """Start the workers, once (later calls only raise what the first one deferred).

        Args:
            defer_error: keep a failure for the next call to raise, instead of
                raising it here (a callback on the metadata fetch's loop, where
                it would only be logged).

        Raises:
            ResourceExhausted: a worker could not be started (the others are closed).
        """
        if not self.started:
            self.started = True
            self.forked = self.forked and can_fork()
            if self.forked:
                importlib.import_module(WORKER_TARGET.partition(":")[0])
                if self.mse:
                    rc4.preload()
            try:
                for w in range(self.n):
                    if self.forked:
                        self.children.append(fork_child(WORKER_TARGET,
                                                        name=f"ft-worker-{w}"))
                    else:
                        self.children.append(start_child(WORKER_TARGET,
                                                         name=f"fasttorrent-worker-{w}"))
            except OSError as e:
                self.close()
                self._error = errors.ResourceExhausted(
                    f"cannot start worker {len(self.children)}: {e.strerror or e}")
        if self._error is not None and not defer_error:
            err, self._error = self._error, None
            raise err

    def take(self, n: int) -> list[tuple[Child, Any]]:
        """The first ``n`` started workers (fewer if fewer were started); the rest are closed."""
        taken, self.children = self.children[:n], self.children[n:]
        self.close()
        return taken

    def close(self) -> None:
        """Let every worker not taken exit (EOF), and reap it."""
        children, self.children = self.children, []
        for _proc, conn in children:
            conn.close()
        for proc, _conn in children:
            proc.join(WORKER_EXIT_TIMEOUT)
            proc.kill()  # only if it is still there


@dataclass(slots=True)
class WorkerHandle:
    wid: int
    proc: Any
    conn: Any
    alive: bool = True
    died: bool = False  # exited without being told to
    peers: int = 0
    dialing: int = 0  # dials handed out and not answered (at most DIAL_BUDGET)
    stats: dict[str, Any] = field(default_factory=dict)
    #: the control connection once the run's loop watches it (before: ``conn``, blocking):
    #: in a pool, the torrent's view of it (:class:`TorrentChannel`)
    channel: Any = None
    stopped: bool = False  # the worker said Stopped: it serves the torrent no more


class TorrentChannel:
    """One torrent's view of a worker's control connection (see the module docstring).

    ``send`` tags the message with the torrent's number; ``receive`` returns
    what the pool queued for the torrent since the last call; ``eof`` is the
    connection's end, or the worker's Stopped for this torrent.
    """

    def __init__(self, channel: Channel, tid: int) -> None:
        self._channel = channel
        self.tid = tid
        self.inbox: list[Any] = []
        self.closed = False

    def send(self, msg: Any, *, fd: int | None = None) -> None:
        self._channel.send(ipc.Tagged(self.tid, msg), fd=fd)

    def add_torrent(self, cfg: Any) -> None:
        """Give the worker the torrent (its ``WorkerConfig``, whose ``tid`` is ours)."""
        self._channel.send(ipc.AddTorrent(cfg))

    def receive(self) -> list[Any]:
        out, self.inbox = self.inbox, []
        return out

    @property
    def eof(self) -> bool:
        return self._channel.eof or self.closed

    @property
    def pending(self) -> int:
        return self._channel.pending


@dataclass(slots=True)
class _Proc:
    wid: int
    proc: Any
    conn: Any
    channel: Channel | None = None
    alive: bool = True


class WorkerPool:
    """The run's worker processes (see the module docstring).

    Args:
        opts: the run's settings (``workers`` resolved; ``bind``, ``port``).
        prestarted: processes already started (taken first; the rest are started).
        regions: torrents at once (the arena's windows).
    """

    def __init__(self, opts: Options, *, prestarted: PrestartedWorkers | None = None,
                 regions: int = 1) -> None:
        self.opts = opts
        self.nworkers = opts.workers or 1
        self.prestarted = prestarted
        self.regions = max(1, regions)
        self.port = opts.port
        self.arena: Arena | None = None
        self.arena_bytes = 0
        self.region_bytes = 0
        self.procs: list[_Proc] = []
        self.coords: dict[int, Any] = {}
        self._region_of: dict[int, int] = {}
        self._next_tid = 0
        self.configured = False  # processes started and configured (configure)
        self.closed = False
        self.opened = False  # ... and watched on the running loop (watch)

    # -- start -------------------------------------------------------------------
    def open(self, arena_bytes: int, *, udp: bool = False,
             free_port: Callable[[str, bool], int] | None = None) -> None:
        """:meth:`configure`, then :meth:`watch` on the running loop."""
        if not self.configured:
            self.configure(arena_bytes, udp=udp, free_port=free_port)
        self.watch()

    def configure(self, arena_bytes: int, *, udp: bool = False,
                  free_port: Callable[[str, bool], int] | None = None) -> None:
        """Start (or take) the processes, pick the port, create the arena, configure them.

        No loop is needed: a magnet's download does it while the metadata is fetched
        (the arena is cut by bytes, not by the piece size), so that the processes
        listen and wait, ready, when the torrent comes.

        Args:
            arena_bytes: the whole arena (``regions`` windows of equal size). Its pages
                are reserved window by window, as torrents take them (:meth:`attach`).
            udp: the port must be free for UDP too (the DHT takes it).
            free_port: picks a free port, ``(bind, udp)`` (when ``opts.port`` is 0).

        Raises:
            ResourceExhausted: a process could not be started, or the arena created.
        """
        from .workerhost import HostConfig

        region = arena_bytes // self.regions // SLOT_ALIGN * SLOT_ALIGN
        self.region_bytes = region
        self.arena_bytes = region * self.regions
        self.arena = Arena.create(SLOT_ALIGN, self.arena_bytes // SLOT_ALIGN, reserve=False)
        if self.port == 0 and self.nworkers and free_port is not None:
            self.port = free_port(self.opts.bind, udp)
        ready = self.prestarted.take(self.nworkers) if self.prestarted is not None else []
        self.prestarted = None
        for w in range(self.nworkers):
            if w < len(ready):
                proc, conn = ready[w]
            else:
                # A fresh interpreter (torrent/launch.py): never a re-import of the
                # caller's main module, whatever the caller is.
                try:
                    proc, conn = start_child(WORKER_TARGET, name=f"fasttorrent-worker-{w}")
                except OSError as e:
                    for p in self.procs:
                        p.conn.close()  # EOF: they exit by themselves
                        p.proc.join(WORKER_EXIT_TIMEOUT)
                    self.procs.clear()
                    self.arena.close()
                    self.arena = None
                    raise errors.ResourceExhausted(
                        f"cannot start worker {w}: {e.strerror or e}") from None
            self.procs.append(_Proc(w, proc, conn))
        # Sent once every worker started, so that they start up side by side.
        for p in self.procs:
            try:
                p.conn.send(HostConfig(wid=p.wid, options=self.opts, port=self.port,
                                       workers=self.nworkers))
                send_fd(p.conn, self.arena.fd)
            except OSError:
                pass  # it died starting: the liveness check reports it
        self.configured = True

    def watch(self) -> None:
        """Read the processes' connections on the running loop (once)."""
        if self.opened:
            return
        loop = asyncio.get_running_loop()
        for p in self.procs:
            p.channel = Channel(p.conn.fileno(), loop)
            loop.add_reader(p.conn.fileno(), self._readable, p)
        self.opened = True

    def fit(self, nbytes: int) -> None:
        """A run of one torrent: make its one window hold ``nbytes`` (the arena was cut
        before the piece size was known; large pieces may need more than the budget).

        Raises:
            ResourceExhausted: the segment cannot grow (no memory).
        """
        if self.regions != 1 or self.arena is None or nbytes <= self.region_bytes:
            return
        self.arena.grow(nbytes)
        self.region_bytes = self.arena_bytes = nbytes

    # -- torrents ------------------------------------------------------------------
    @property
    def free_regions(self) -> int:
        return self.regions - len(self._region_of)

    def attach(self, coord: Any, reserve: int = 0) -> tuple[int, int, list[WorkerHandle]]:
        """Take a window of the arena and a number for ``coord``'s torrent.

        Args:
            reserve: bytes of the window the torrent uses: their pages are reserved
                in the background (``Arena.reserve``, at ``SCHED_IDLE``).

        Returns:
            The torrent's number, its window's offset in the arena, and one
            handle per process (dead ones marked so).

        Raises:
            ResourceExhausted: every window is taken (more torrents than ``regions``).
        """
        used = set(self._region_of.values())
        free = [r for r in range(self.regions) if r not in used]
        if not free:
            raise errors.ResourceExhausted(f"the arena serves {self.regions} torrent(s) at once")
        tid = self._next_tid
        self._next_tid += 1
        self._region_of[tid] = free[0]
        if reserve and self.arena is not None:
            self.arena.reserve(free[0] * self.region_bytes, min(reserve, self.region_bytes))
        self.coords[tid] = coord
        handles = []
        for p in self.procs:
            assert p.channel is not None
            h = WorkerHandle(p.wid, p.proc, p.conn, channel=TorrentChannel(p.channel, tid))
            h.alive = p.alive
            handles.append(h)
        return tid, free[0] * self.region_bytes, handles

    def detach(self, tid: int) -> None:
        """The torrent is done with the processes: its window and number are free."""
        self.coords.pop(tid, None)
        self._region_of.pop(tid, None)

    # -- messages ------------------------------------------------------------------
    def _readable(self, p: _Proc) -> None:
        ch = p.channel
        if ch is None or not p.alive:
            return
        touched: dict[int, Any] = {}
        broken = False
        try:
            for msg in ch.receive():
                if type(msg) is ipc.Tagged:
                    coord = self.coords.get(msg.tid)
                    if coord is None:
                        continue  # a torrent detached meanwhile
                    h = coord.workers[p.wid]
                    h.channel.inbox.append(msg.msg)
                    if type(msg.msg) is ipc.Stopped:
                        h.channel.closed = True
                    touched[msg.tid] = coord
                elif type(msg) is ipc.Fatal:  # the process's own: every torrent hears
                    for tid, coord in self.coords.items():
                        coord.workers[p.wid].channel.inbox.append(msg)
                        touched[tid] = coord
        except OSError:
            broken = True
        for coord in touched.values():
            coord.on_worker_message(coord.workers[p.wid])
        if broken or ch.eof:
            self._died(p)

    def check_alive(self) -> None:
        """Find processes that exited (their last messages are read first)."""
        for p in self.procs:
            if p.alive and not p.proc.is_alive():
                self._readable(p)
                self._died(p)

    def _died(self, p: _Proc) -> None:
        if not p.alive:
            return
        p.alive = False
        self._unwatch(p)
        for coord in list(self.coords.values()):
            h = coord.workers[p.wid]
            h.channel.closed = True
            coord.worker_died(h)

    def _unwatch(self, p: _Proc) -> None:
        try:
            loop = asyncio.get_running_loop()
            loop.remove_reader(p.conn.fileno())
            loop.remove_writer(p.conn.fileno())
        except (OSError, ValueError, RuntimeError):
            pass

    @property
    def alive(self) -> bool:
        return any(p.alive for p in self.procs)

    # -- end -----------------------------------------------------------------------
    def close_now(self) -> None:
        """:meth:`close` without a loop (a run that ended before its loop: an error, or
        nothing left to download): EOF, then each process is reaped or killed."""
        if self.closed:
            return
        self.closed = True
        for p in self.procs:
            if p.channel is not None:
                p.channel.close()
            p.conn.close()
            p.alive = False
        for p in self.procs:
            p.proc.join(WORKER_EXIT_TIMEOUT)
            p.proc.kill()  # only if it is still there
        self._release()

    def _release(self) -> None:
        """The arena, and the prestarted processes never taken."""
        if self.arena is not None:
            self.arena.close()
            self.arena = None
        if self.prestarted is not None:
            self.prestarted.close()
            self.prestarted = None

    async def close(self) -> None:
        """End the processes: EOF (they stop their torrents, flushing), a bounded wait, kill."""
        if self.closed:
            return
        self.closed = True
        for p in self.procs:
            if p.channel is not None and p.alive:
                try:
                    p.channel.flush()  # what they are owed (a Stop queued behind a full buffer)
                except OSError:
                    pass
            self._unwatch(p)
            p.alive = False
            if p.channel is not None:
                p.channel.close()
            p.conn.close()
        # (each wait wakes when its process exits: the run's end waits for no poll)
        await asyncio.gather(*(p.proc.exited(WORKER_EXIT_TIMEOUT) for p in self.procs))
        for p in self.procs:
            if p.proc.is_alive():
                p.proc.kill()
            p.proc.join(timeout=5)
        self._release()
