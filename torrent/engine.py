"""Many torrents in one run: one coordinator process, one set of workers, one port, one arena.

Theory of operation
-------------------
``fasttorrent download T1 T2 'magnet:...' --input FILE --max-active N -o DIR``
runs every torrent through one :class:`Engine` on the coordinator's loop:

- **One process tree.** The engine opens one :class:`~torrent.pool.WorkerPool`
  (one worker process per core, each serving every torrent of the run; see
  :mod:`torrent.workerhost`), one listening port and one arena, cut into
  ``max_active`` equal windows: each running torrent has one, so the arena
  is shared fairly by construction. Incoming connections are routed to their
  torrent by the info-hash (or the MSE SKEY) their first bytes name. One DHT
  node serves every torrent (and the magnets' metadata fetches).
- **Each torrent is a** :class:`~torrent.coordinator.Coordinator` attached
  to the pool, exactly as a run of one torrent, but without the pool, the
  DHT node and the signals, which are the engine's. Its peer budget is its
  share: ``max_connections`` and ``max_peers`` divided by ``max_active``.
- **Order.** The .torrent files and URLs are read first, all of them, and
  two torrents that would write one path (the same torrent twice included)
  are refused before anything starts. Then at most ``max_active`` run at
  once, in the order given; a magnet takes its place while its metadata is
  fetched and is checked against every other torrent's paths once its files
  are known. Each torrent's files go under ``DIR`` as a single download
  would put them (its journal and kept metadata under ``DIR/.fasttorrent``).
- **The end.** Each torrent ends as a single run would (complete, stalled,
  failed, interrupted) without stopping the others; a signal interrupts the
  running ones (state saved) and skips those not started. The batch's exit
  code is 0 when every torrent completed, else the worst
  (:func:`~torrent.sources.batch_exit_code`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from . import errors, metainfo
from .coordinator import Coordinator, DownloadResult, _load_kept_metainfo, run_error
from .errors import FastTorrentError, Interrupted, UsageError
from .options import MAX_ACTIVE, Options, dht_wanted
from .pool import PrestartedWorkers, WorkerPool
from .ports import free_port
from .reporting import RunReport

if TYPE_CHECKING:
    from .dht.service import Dht
    from .metrics import MetricsServer
from .shm import run_arena_bytes
from .sources import PathClaims, PathCollision, Source, batch_exit_code, load_url
from .storage import layout_for

__all__ = ["MAX_ACTIVE", "Engine", "Outcome", "download_batch"]

#: Seconds between the engine's checks of its worker processes.
WATCH_INTERVAL: Final = 0.5


@dataclass(slots=True)
class Outcome:
    """How one torrent of a batch ended."""

    source: str  # as given (a path, magnet or URL)
    info_hash: str | None = None
    name: str | None = None
    #: "completed", "failed", "interrupted", "incomplete" or "skipped" (never started)
    status: str = "skipped"
    exit_code: int = 0
    error: str | None = None
    result: DownloadResult | None = None

    def to_json_dict(self) -> dict[str, Any]:
        return {"source": self.source, "info_hash": self.info_hash, "name": self.name,
                "status": self.status, "exit_code": self.exit_code, "error": self.error,
                "result": None if self.result is None else self.result.to_json_dict()}


@dataclass(slots=True)
class _Item:
    source: Source
    outcome: Outcome
    outdir: str = ""  # where its files go ("": the engine's directory)
    meta: Any = None
    paths: frozenset[str] = field(default_factory=frozenset)
    #: what it is doing: "queued", "metadata", "checking", "downloading", "seeding", then
    #: the outcome's status
    state: str = "queued"
    coord: Coordinator | None = None  # while it runs
    select: str | None = None  # its --select (the daemon's per-torrent selection)
    report: RunReport | None = None  # its events and metrics (else the engine's factory's)


class Engine:
    """Downloads many torrents with one pool of workers (see the module docstring).

    Args:
        opts: the run's settings (``workers`` resolved), shared by every torrent.
        outdir: every torrent's files go under it.
        max_active: torrents at once (1 to :data:`MAX_ACTIVE`).
        log: progress and warning lines (each torrent's prefixed with its name).
        report: makes the report of one torrent (events, metrics); None: none.
        prestarted: worker processes already started.
        metrics: the run's metrics server (started and closed by the run).
    """

    def __init__(self, opts: Options, outdir: str, *, max_active: int = 1,
                 log: Callable[[str], None] | None = None,
                 report: Callable[[], RunReport] | None = None,
                 prestarted: PrestartedWorkers | None = None,
                 metrics: MetricsServer | None = None) -> None:
        if not 1 <= max_active <= MAX_ACTIVE:
            raise UsageError(f"--max-active must be 1..{MAX_ACTIVE}, got {max_active}")
        self.opts = opts
        self.outdir = os.path.abspath(outdir)
        self.max_active = max_active
        self.log = log or (lambda s: None)
        self.make_report = report
        self.prestarted = prestarted
        self.metrics = metrics
        self.pool: WorkerPool | None = None
        self.dht: Dht | None = None
        self.running: dict[int, Coordinator] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.fetches: set[asyncio.Future[Any]] = set()  # magnets' metadata fetches
        self.interrupted = False
        # the paths each torrent known so far writes: key (info-hash) -> paths
        self.claims = PathClaims()

    def torrent_options(self) -> Options:
        """A torrent's options: its share of the connections and peers."""
        o = self.opts
        n = self.max_active
        conns = o.max_connections
        return o.replace(max_connections=None if conns is None else max(1, conns // n),
                         max_peers=max(1, o.max_peers // n), save_torrent=None)

    # -- reading the sources -------------------------------------------------------------
    async def _read(self, item: _Item) -> None:
        """A .torrent file's or URL's torrent (magnets wait for their turn)."""
        src = item.source
        if src.kind == "file":
            item.meta = metainfo.load(src.text)
        elif src.kind == "url":
            item.meta = await load_url(src.text)
        if item.meta is not None:
            self._know(item)

    def _know(self, item: _Item) -> None:
        meta = item.meta
        item.outcome.info_hash = meta.info_hash_hex
        item.outcome.name = meta.name
        layout = layout_for(meta, item.outdir or self.outdir, None)
        item.paths = frozenset(sp.path for sp in layout.spans if sp.regular)

    def _claim(self, item: _Item) -> None:
        """Refuse a torrent writing a path another one of the run writes (or the same
        torrent twice); else record its paths."""
        key = item.outcome.info_hash or item.source.text
        label = f"{item.outcome.name or item.source.text} ({key[:12]})"
        if key in self.claims:
            raise PathCollision(f"{label} is in the batch twice", key)
        self.claims.claim(key, label, item.paths)

    # -- one torrent ---------------------------------------------------------------------
    async def _run_one(self, item: _Item, slots: asyncio.Semaphore) -> None:
        out = item.outcome
        try:
            async with slots:
                if self.interrupted:
                    return
                out.status = "running"
                await self._download(item)
        except asyncio.CancelledError:
            out.status, out.exit_code = "interrupted", Interrupted.exit_code
            out.error = "interrupted before it completed"
        except FastTorrentError as e:
            out.exit_code = e.exit_code
            out.error = str(e)
            out.result = getattr(e, "result", None)
            out.status = ("interrupted" if isinstance(e, Interrupted) else
                          "incomplete" if isinstance(e, errors.Incomplete) else "failed")
            self.log(f"{out.name or item.source.text}: {e}")
        finally:
            if out.status == "running":
                out.status = "failed"

    async def _download(self, item: _Item) -> None:
        assert self.pool is not None
        out = item.outcome
        outdir = item.outdir or self.outdir
        opts = self.torrent_options()
        if item.select is not None:
            opts = opts.replace(select=item.select)
        began = time.monotonic()
        conns: tuple[Any, ...] = ()
        banned: frozenset[tuple[str, int]] = frozenset()
        peer_id = None
        report = item.report or (self.make_report() if self.make_report is not None else None)
        try:
            if item.source.kind == "magnet":
                item.state = "metadata"
                meta, opts, peer_id, banned, conns = await self._magnet(item, opts, report)
                item.meta = meta
                self._know(item)
                self._claim(item)
            else:
                meta = item.meta
                if report is not None:
                    report.added(meta.info_hash_hex, source="torrent", name=meta.name)
            if report is not None:
                report.metadata(meta)
            name = meta.name

            def log(line: str, _name: str = name) -> None:
                self.log(f"{_name}: {line}")

            coord = Coordinator(meta, outdir, opts, log=log, began=began,
                                metadata_seconds=time.monotonic() - began
                                if item.source.kind == "magnet" else 0.0,
                                dht=self.dht if dht_wanted(opts, private=meta.private) else None,
                                handover=conns, pool=self.pool)
            conns = ()
            coord.handle_signals = False
            coord.own_dht = False
            coord.report = report
            if peer_id is not None:
                coord.peer_id = peer_id
            coord.ban_peers(banned, "banned: its metadata does not hash to the info-hash")
            # the resume check hashes: off the loop, so the other torrents go on
            item.state = "checking"
            item.coord = coord
            await asyncio.get_running_loop().run_in_executor(None, coord.prepare)
            if self.interrupted or item.state == "stopping":
                if coord.journal is not None:
                    coord.journal.close()
                raise Interrupted("stopped before it started; state saved")
            self.running[id(coord)] = coord
            try:
                item.state = "downloading"
                res = await coord.run()
            finally:
                self.running.pop(id(coord), None)
                if coord.handover:
                    from .magnetfetch import close_handovers

                    close_handovers(coord.handover)
            out.result = res
            err = run_error(coord, res)
            if report is not None:
                report.finished(err)
            if err is not None:
                raise err
            out.status = "completed"
            log(f"done: {res.bytes_downloaded} bytes in {res.seconds:.2f} s")
        except BaseException as e:
            if conns:
                from .magnetfetch import close_handovers

                close_handovers(conns)
            if report is not None and report.info_hash is not None and \
                    isinstance(e, FastTorrentError) and out.result is None:
                report.finished(e)
            raise

    async def _magnet(self, item: _Item, opts: Options, report: RunReport | None,
                      ) -> tuple[Any, Options, bytes, frozenset[tuple[str, int]], tuple[Any, ...]]:
        """The metainfo of a magnet: kept from an earlier run, else fetched on this loop."""
        from .journal import metadata_path
        from .magnet import parse_magnet
        from .magnetfetch import close_handovers, fetch_metadata
        from .metadata import metainfo_from_info, torrent_bytes
        from .wire.handshake import make_peer_id

        assert self.pool is not None
        magnet = parse_magnet(item.source.text)
        item.outcome.info_hash = magnet.info_hash_hex
        item.outcome.name = magnet.display_name
        if report is not None:
            report.added(magnet.info_hash_hex, source="magnet", name=magnet.display_name)
        peers = tuple(dict.fromkeys((*opts.peers, *magnet.peers)))
        opts = opts.replace(peers=peers, select_only=magnet.select_only, port=self.pool.port)
        peer_id = make_peer_id()
        kept = metadata_path(item.outdir or self.outdir, magnet.info_hash)
        meta = _load_kept_metainfo(kept, magnet, self.log)
        if meta is not None:
            return meta, opts, peer_id, frozenset(), ()
        fetch = asyncio.ensure_future(fetch_metadata(
            magnet, opts, peer_id=peer_id, port=self.pool.port, log=self.log,
            dht=self.dht if dht_wanted(opts) else None, handle_signals=False))
        self.fetches.add(fetch)  # a signal cancels it
        try:
            info, banned, conns, layers = await fetch
        finally:
            self.fetches.discard(fetch)
        try:
            # the strict .torrent checks (a v2 magnet's layers against their roots too)
            meta = metainfo_from_info(info, magnet, piece_layers=layers)
            os.makedirs(os.path.dirname(kept), exist_ok=True)
            with open(kept, "wb") as f:
                f.write(torrent_bytes(meta.info_bytes, magnet, piece_layers=meta.piece_layers))
        except OSError as e:
            close_handovers(conns)
            raise errors.StorageError(f"cannot keep the metadata in {kept}: "
                                      f"{e.strerror or e}") from None
        except BaseException:
            close_handovers(conns)
            raise
        return meta, opts, peer_id, banned, conns

    # -- the run ---------------------------------------------------------------------------
    def _on_signal(self) -> None:
        self.interrupted = True
        for coord in list(self.running.values()):
            coord._on_signal()
        for fetch in list(self.fetches):
            fetch.cancel()

    async def run(self, sources: Sequence[Source]) -> list[Outcome]:
        """Download every source; the outcomes in the order given."""
        items = [_Item(s, Outcome(s.text)) for s in sources]
        # the .torrent files and URLs first: a bad one fails alone, a collision both
        for item in items:
            if item.source.kind == "magnet":
                continue
            try:
                await self._read(item)
            except FastTorrentError as e:
                item.outcome.status, item.outcome.exit_code = "failed", e.exit_code
                item.outcome.error = str(e)
                self.log(f"{item.source.text}: {e}")
        self._refuse_collisions(items)
        todo = [i for i in items if i.outcome.status == "skipped"
                and (i.meta is not None or i.source.kind == "magnet")]
        if not todo:
            return [i.outcome for i in items]
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal)
        watch: asyncio.Task[None] | None = None
        try:
            await self.open()
            if self.metrics is not None:
                await self.metrics.start()
            watch = loop.create_task(self._watch())
            slots = asyncio.Semaphore(self.max_active)
            for item in todo:
                task = loop.create_task(self._run_one(item, slots))
                self.tasks.add(task)
            await asyncio.gather(*self.tasks, return_exceptions=True)
        finally:
            if watch is not None:
                watch.cancel()
                await asyncio.gather(watch, return_exceptions=True)
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            if self.dht is not None:
                await self.dht.detach()
                self.dht.close()
            if self.pool is not None:
                await self.pool.close()
            if self.metrics is not None:
                await self.metrics.close()
        for item in todo:
            if item.outcome.status == "skipped" and self.interrupted:
                item.outcome.exit_code = Interrupted.exit_code
                item.outcome.error = "not started: interrupted"
        return [i.outcome for i in items]

    async def open(self) -> None:
        """The run's worker processes (the prestarted ones first), port, arena and DHT node.

        Raises:
            ResourceExhausted: a process could not be started, or the arena created.
        """
        self.pool = WorkerPool(self.opts, prestarted=self.prestarted, regions=self.max_active)
        self.prestarted = None
        want_dht = dht_wanted(self.opts)
        self.pool.open(run_arena_bytes(self.opts.arena_bytes, self.opts.workers or 1),
                       udp=want_dht,
                       free_port=lambda bind, udp: free_port(bind, udp=udp))
        if want_dht:
            from .dht.service import start_dht

            self.dht = start_dht(self.opts, self.pool.port, self.log)
            if self.dht is not None:
                await self.dht.attach()

    def _refuse_collisions(self, items: list[_Item]) -> None:
        """Claim every known torrent's paths; the torrents of a collision both fail (the
        one claimed first keeps its paths: a later torrent writing them is refused too)."""
        known = [i for i in items if i.meta is not None and i.outcome.status == "skipped"]
        by_key: dict[str | None, _Item] = {}
        for i in known:
            by_key.setdefault(i.outcome.info_hash, i)  # the first of a torrent given twice
        for item in known:
            try:
                self._claim(item)
            except PathCollision as e:
                self.log(f"{item.outcome.name}: {e}")
                for refused in (item, by_key.get(e.other)):
                    if refused is not None:
                        refused.outcome.status = "failed"
                        refused.outcome.exit_code = e.exit_code
                        refused.outcome.error = str(e)

    async def _watch(self) -> None:
        assert self.pool is not None
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            self.pool.check_alive()


def download_batch(sources: Sequence[Source], outdir: str, opts: Options, *,
                   max_active: int = 1, log: Callable[[str], None] | None = None,
                   report: Callable[[], RunReport] | None = None,
                   metrics: MetricsServer | None = None) -> tuple[int, list[Outcome]]:
    """Download every torrent of ``sources`` under ``outdir`` in one engine.

    Returns:
        The batch's exit code (0: all completed, else the worst) and each
        torrent's :class:`Outcome`, in the order given.
    """
    from .coordinator import _resolve, _run_loop

    opts = _resolve(opts, {})
    prestarted = PrestartedWorkers(opts.workers or 1, fork=opts.fork_workers,
                                   mse=opts.encryption != "disabled")
    engine = Engine(opts, outdir, max_active=max_active, log=log, report=report,
                    prestarted=prestarted, metrics=metrics)
    try:
        outcomes: list[Outcome] = _run_loop(engine.run(sources))
    finally:
        prestarted.close()
    return batch_exit_code(o.exit_code for o in outcomes), outcomes
