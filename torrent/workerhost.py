"""A worker process: every torrent of the run on one uvloop loop, one listening port.

Theory of operation
-------------------
The coordinator starts one worker process per core, and each serves every
torrent of the run: many torrents share the processes, the port and the
arena instead of each starting its own (``fasttorrent download T1 T2 ...``,
the daemon). A :class:`WorkerHost` owns what is the process's:

- **the control connection** (a never-blocking :class:`~torrent.channel.Channel`).
  The first message, before the loop, is the :class:`HostConfig`, then the
  arena's memfd. On the loop each torrent arrives as an
  :class:`~torrent.ipc.AddTorrent` (a :class:`~torrent.worker.WorkerConfig`:
  its window of the arena, its pieces, its options), and every message about
  one torrent travels in an :class:`~torrent.ipc.Tagged` with its number,
  both ways. A connection a magnet's fetch hands over is a tagged
  :class:`~torrent.ipc.Adopt` with the socket's descriptor beside it.
- **the torrents**, one :class:`~torrent.worker.Worker` each, ticked every
  :data:`~torrent.worker.TICK`. A torrent told to stop (or failing) is shut
  down on its own; its coordinator hears :class:`~torrent.ipc.Stopped` after
  its last report. The process ends when the connection reaches EOF (the
  coordinator is done with it, or died).
- **the listening sockets** (``SO_REUSEPORT``, both families), listening
  from the start and accepting from the first torrent on (a peer that dials
  before waits in the backlog instead of being refused). With one
  torrent an incoming connection goes straight to it, as before. With
  several, a :class:`Router` reads the connection's first bytes: the
  info-hash of a plaintext handshake, or the SKEY an MSE/PE handshake names
  (the router answers the DH exchange with every torrent's ``req2`` hash).
  The torrent then takes the connection over with the bytes read so far
  (``Worker.accept(routed=...)``), as it takes over a magnet fetch's. A
  connection for no torrent of ours is closed. At most :data:`MAX_ROUTING`
  connections are being routed at once, each for at most the run's handshake
  time-out.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass
from typing import Any, Final

from . import ipc
from .channel import Channel
from .errors import FastTorrentError, RemoteProtocolError
from .launch import recv_fd
from .net.peer import PeerConn
from .options import Options
from .ports import listen_sockets
from .wire.framing import ReceiveBuffer
from .wire.handshake import HANDSHAKE_LENGTH, PSTR
from .wire.mse import MSEReceiver, req2_hash
from .worker import LISTEN_BACKLOG, TICK, Worker, WorkerConfig

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio still works
    uvloop = None  # type: ignore[assignment]

__all__ = ["MAX_ROUTING", "HostConfig", "Router", "WorkerHost", "host_main"]

log = logging.getLogger(__name__)

#: Incoming connections being routed (their first bytes not read yet) at most, per
#: process: past it a new one is refused, as past a torrent's half-open cap.
MAX_ROUTING: Final = 256
#: The router's receive buffer: a plaintext handshake names its torrent by its
#: 48th byte; an MSE handshake is fed to the receiver as it comes.
ROUTE_BUFFER: Final = 4096
#: Where a plaintext handshake carries the info-hash.
_HASH_AT: Final = 1 + len(PSTR) + 8
_PLAIN: Final = bytes([len(PSTR)]) + PSTR


@dataclass(frozen=True, slots=True, kw_only=True)
class HostConfig:
    """What a worker process needs before its first torrent (its first message)."""

    wid: int
    options: Options
    port: int  # the run's listening port (SO_REUSEPORT in every worker); 0: none
    workers: int = 1


class Router:
    """An incoming connection until its first bytes name the torrent (a
    :class:`~torrent.net.peer.ConnectionHandler`)."""

    __slots__ = ("_rb", "conn", "created_at", "done", "host", "mse")

    def __init__(self, host: WorkerHost, conn: PeerConn, now: float) -> None:
        self.host = host
        self.conn = conn
        self.created_at = now
        self._rb = ReceiveBuffer(HANDSHAKE_LENGTH, initial=ROUTE_BUFFER, limit=ROUTE_BUFFER)
        self.mse: MSEReceiver | None = None
        self.done = False

    @property
    def rb(self) -> ReceiveBuffer:
        return self._rb

    def writable(self) -> None:
        pass

    def lost(self, reason: str) -> None:
        self._end()

    def _end(self) -> None:
        if not self.done:
            self.done = True
            self.host.routing.discard(self)

    def abort(self, reason: str) -> None:
        self._end()
        self.conn.abort(reason)

    def data_received(self) -> None:
        if self.done:
            return  # (closed, or handed over: nothing more is ours)
        rb = self._rb
        data = bytes(rb.view[rb.start : rb.end])
        try:
            if self.mse is None:
                n = min(len(data), len(_PLAIN))
                if data[:n] == _PLAIN[:n]:
                    if len(data) < _HASH_AT + 20:
                        return  # the info-hash is not in yet
                    rb.start = rb.end
                    self._hand_over(data[_HASH_AT : _HASH_AT + 20], routed=data)
                    return
                if not self.host.accept_mse:
                    self.abort("not a BitTorrent handshake (encryption is disabled)")
                    return
                self.mse = MSEReceiver(self.host.skeys)
            rb.start = rb.end
            est = self.mse.receive_data(data)
            out = self.mse.data_to_send()
            if out:
                self.conn.write(out)
            if est is not None:
                self._hand_over(est.info_hash, routed_mse=est)
        except RemoteProtocolError as e:
            self.abort(str(e))

    def _hand_over(self, info_hash: bytes, **how: Any) -> None:
        w = self.host.by_hash.get(info_hash)
        if w is None or w.stop_event.is_set():
            self.abort(f"no torrent {info_hash.hex()} here")
            return
        self._end()
        peer = w.accept(self.conn, **how)
        if peer is None:
            self.conn.abort("refused")
            return
        self.conn.rehome(peer)


class WorkerHost:
    """One worker process's loop: its torrents, control connection and listeners."""

    def __init__(self, cfg: HostConfig, conn: Any, arena_fd: int) -> None:
        self.cfg = cfg
        self.wid = cfg.wid
        self.conn = conn
        self.arena_fd = arena_fd
        self.loop = asyncio.get_running_loop()
        self.channel = Channel(conn.fileno(), self.loop)
        self.torrents: dict[int, Worker] = {}
        self.by_hash: dict[bytes, Worker] = {}
        #: HASH('req2', info_hash) -> info_hash of every torrent served (MSE routing)
        self.skeys: dict[bytes, bytes] = {}
        self.routing: set[Router] = set()
        self.accept_mse = cfg.options.encryption != "disabled"
        self.servers: list[asyncio.base_events.Server] = []
        self.stop_event = asyncio.Event()
        self._stopping: dict[int, asyncio.Task[None]] = {}
        # flush threads of stopped torrents still in fdatasync, with their eventfds:
        # kept (a thread must not be joined on the loop, nor its eventfd reused)
        self._lingering: list[tuple[Any, int]] = []
        self.refused = 0  # incoming connections refused before routing (MAX_ROUTING)

    # -- control ---------------------------------------------------------------
    def send_tagged(self, tid: int, msg: Any) -> None:
        self.send(ipc.Tagged(tid, msg))

    def send(self, msg: Any) -> None:
        try:
            self.channel.send(msg)
        except OSError:
            self.stop_event.set()

    def on_control(self) -> None:
        try:
            for msg in self.channel.receive():
                self.handle(msg)
        except OSError:
            self.stop_event.set()
        if self.channel.eof:
            self.stop_event.set()  # the coordinator is gone, or done with us

    def handle(self, msg: Any) -> None:
        t = type(msg)
        if t is ipc.Tagged:
            w = self.torrents.get(msg.tid)
            inner = msg.msg
            if type(inner) is ipc.Adopt:
                fd = self.channel.take_fd()
                if w is None or w.stop_event.is_set():
                    os.close(fd)
                    return
                w.adopt(inner.host, inner.port, fd, inner.data, inner.interested,
                        inner.requested)
            elif w is not None:
                w.handle(inner)
                if w.stop_event.is_set():
                    self._stop(w)
        elif t is ipc.AddTorrent:
            self.add(msg.cfg)

    def add(self, cfg: WorkerConfig) -> None:
        """Serve a torrent; a failure to start it is its coordinator's Fatal."""
        if cfg.tid in self.torrents:
            return
        try:
            w = Worker(cfg, self, self.arena_fd)
        except FastTorrentError as e:
            self.send_tagged(cfg.tid, ipc.Fatal(e.__class__.__name__, str(e)))
            self.send_tagged(cfg.tid, ipc.Stopped(self.wid))
            return
        self.torrents[cfg.tid] = w
        ih = cfg.meta.info_hash
        self.by_hash[ih] = w
        self.skeys[req2_hash(ih)] = ih
        w.start()
        for server in self.servers:
            if not server.is_serving():
                self.loop.create_task(server.start_serving())

    def _stop(self, w: Worker) -> None:
        if w.tid not in self._stopping:
            self._stopping[w.tid] = self.loop.create_task(self._shutdown(w))

    async def _shutdown(self, w: Worker) -> None:
        ih = w.meta.info_hash
        if self.by_hash.get(ih) is w:
            del self.by_hash[ih]
            self.skeys.pop(req2_hash(ih), None)
        try:
            await w.shutdown()
        except FastTorrentError as e:
            w.send(ipc.Fatal(e.__class__.__name__, str(e)))
        finally:
            self.torrents.pop(w.tid, None)
            self._stopping.pop(w.tid, None)
            self.send_tagged(w.tid, ipc.Stopped(self.wid))

    def linger(self, iot: Any, efd: int) -> None:
        """Keep a stopped torrent's flush thread and eventfd until its flush is over
        (:meth:`reap_lingering`): a long-lived process (the daemon's) stops many."""
        self._lingering.append((iot, efd))

    def reap_lingering(self) -> None:
        """Release the flush threads of stopped torrents whose flush is over (their
        outcomes go nowhere: the torrent reported what it owed when it stopped)."""
        left = []
        for iot, efd in self._lingering:
            iot.completed()
            if iot.pending:
                left.append((iot, efd))
            else:
                iot.close()  # idle: joined at once
                os.close(efd)
        self._lingering = left

    # -- connections -------------------------------------------------------------
    def accept(self, conn: PeerConn) -> Any:
        """An incoming connection: straight to the one torrent, else routed."""
        live = [w for w in self.torrents.values() if not w.stop_event.is_set()]
        if len(live) == 1:
            return live[0].accept(conn)
        if not live or len(self.routing) >= MAX_ROUTING:
            self.refused += 1
            return None
        r = Router(self, conn, self.loop.time())
        self.routing.add(r)
        return r

    def _expire_routing(self, now: float) -> None:
        limit = self.cfg.options.handshake_timeout
        for r in [r for r in self.routing if now - r.created_at > limit]:
            r.abort(f"no handshake within {limit:g} s")

    # -- the loop ----------------------------------------------------------------
    async def run(self) -> None:
        self.loop.add_reader(self.conn.fileno(), self.on_control)
        if self.cfg.port:  # IPv4 and IPv6 (torrent/ports.py); one accept, one set of caps
            for sock in listen_sockets(self.cfg.options.bind, self.cfg.port, LISTEN_BACKLOG):
                # the backlog again: create_server listens anew, with 100 unless told
                # accepting starts with the first torrent (add): until then a peer that
                # dialled waits in the backlog, where it would be refused (no torrent)
                self.servers.append(await self.loop.create_server(
                    lambda: PeerConn(self.accept), sock=sock, backlog=LISTEN_BACKLOG,
                    start_serving=False))
        self.on_control()  # what came with the config, before the loop watched
        try:
            while not self.stop_event.is_set():
                try:
                    await asyncio.wait_for(self.stop_event.wait(), TICK)
                except TimeoutError:
                    pass
                for w in list(self.torrents.values()):
                    if w.stop_event.is_set():
                        self._stop(w)
                    elif w.tid not in self._stopping:
                        w.tick()
                        if w.stop_event.is_set():
                            self._stop(w)
                if self.routing:
                    self._expire_routing(self.loop.time())
                if self._lingering:
                    self.reap_lingering()
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """The coordinator is gone or done: stop every torrent (flushing), then report."""
        for server in self.servers:
            server.close()
        for r in list(self.routing):
            r.abort("shutting down")
        for w in list(self.torrents.values()):
            w.stop_event.set()
            self._stop(w)
        if self._stopping:
            await asyncio.gather(*self._stopping.values(), return_exceptions=True)
        try:
            self.loop.remove_reader(self.conn.fileno())
        except (OSError, ValueError):
            pass
        self.channel.flush()  # what the coordinators are owed, before the process exits


def host_main(cfg: HostConfig, conn: Any) -> None:
    """Entry point of a worker process (started by the coordinator with torrent.launch).

    The process may have been started long before its config came (while
    the coordinator parsed, checked or fetched the first torrent): this
    module and uvloop are imported by then. The arena's memfd follows the
    config on the control connection (``SCM_RIGHTS``); the torrents come on
    the loop.
    """
    # The coordinator handles SIGINT/SIGTERM and tells us to stop; a Ctrl-C or
    # a SIGTERM sent to the whole process group (a terminal, systemd, a job
    # control `kill %1`) must not kill us mid-write.  If the coordinator itself
    # is killed we exit on our own: EOF on the control pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.environ.get("FASTTORRENT_DEBUG"):
        # the per-tick state of each torrent on stderr (see Worker.tick)
        logging.basicConfig(level=logging.DEBUG, format="%(message)s")
    try:
        arena_fd = recv_fd(conn)
    except (EOFError, OSError):
        os._exit(0)  # the coordinator went away (or failed) before the arena existed

    hosts: list[WorkerHost] = []

    async def main() -> None:
        hosts.append(WorkerHost(cfg, conn, arena_fd))
        await hosts[0].run()

    try:
        if uvloop is not None:
            uvloop.run(main())
        else:
            asyncio.run(main())
    except FastTorrentError as e:  # the listening sockets: every torrent's coordinator hears
        try:
            if hosts:
                hosts[0].channel.flush()  # what it queued first; blocking from here
            else:
                os.set_blocking(conn.fileno(), True)  # a loop may have watched it
            conn.send(ipc.Fatal(e.__class__.__name__, str(e)))
        except OSError:
            pass
    # Everything this process owes the coordinator was written out (Channel.flush);
    # exit without waiting for a flush thread still inside fdatasync (see shutdown).
    os._exit(0)
