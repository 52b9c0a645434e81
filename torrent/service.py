"""The daemon's torrents: added, paused, resumed and removed while the engine runs.

Theory of operation
-------------------
:class:`Service` is the engine of ``fasttorrent daemon``
(:class:`~torrent.engineapi.EngineAPI`): the batch engine of
:mod:`torrent.engine` (one worker pool, one port, one arena cut into
``max_active`` windows, one DHT node), with torrents that come and go:

- **add** reads the torrent (a .torrent's bytes, a URL fetched, a magnet
  parsed: its info-hash is known at once), refuses one already held
  (:class:`~torrent.engineapi.AlreadyAdded`) or one writing a path another
  one writes, and queues it. At most ``max_active`` run at once, in the
  order added; a magnet's metadata is fetched when its turn comes.
- **pause** stops a running torrent as a signal would (its workers flush,
  its journal records what is verified) or takes a queued one out of the
  queue; **resume** queues it again, and it resumes from its journal.
- **remove** pauses it, forgets it and, with ``delete_data``, deletes its
  files (the paths its torrent names under its save path, never another),
  its parts file, journal, selection and kept metadata.
- A torrent that completes stays listed as ``completed``; one that fails
  (stalled, a full disk, a bad torrent) stays as ``error`` with its one-line
  message, until removed or resumed.

The service owns no state record: the daemon writes them
(:mod:`torrent.daemonstate`) and adds them again at start, and the journals
make each torrent resume where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from . import metainfo
from .engine import Engine, Outcome, _Item
from .engineapi import MAX_TORRENTS, AlreadyAdded, TorrentSpec, TorrentStatus
from .errors import FastTorrentError, Interrupted, ResourceExhausted, UsageError
from .eventwriter import open_events
from .metrics import TorrentCollector
from .options import DEFAULT_MAX_ACTIVE, Options
from .reporting import RunReport
from .sources import Source, load_url

__all__ = ["Service"]


@dataclass(slots=True)
class _Entry:
    """One torrent of the service."""

    item: _Item
    spec: TorrentSpec
    info_hash: str
    paused: bool = False
    task: asyncio.Task[None] | None = None
    last_rates: tuple[float, float] = (0.0, 0.0)
    added: float = field(default_factory=time.monotonic)


class Service(Engine):
    """The daemon's engine (see the module docstring); an async context manager.

    Args:
        opts: the run's settings (``workers`` resolved or not).
        download_dir: the default save path.
        state_dir: where the DHT table is kept.
        max_active: torrents downloading at once.
        log: one-line messages.
    """

    def __init__(self, opts: Options, *, download_dir: str, state_dir: str = "",
                 max_active: int = DEFAULT_MAX_ACTIVE,
                 log: Callable[[str], None] | None = None) -> None:
        from .coordinator import _resolve

        opts = _resolve(opts, {})
        if state_dir and not opts.state_dir:
            opts = opts.replace(state_dir=state_dir)
        super().__init__(opts.replace(stall_timeout=opts.stall_timeout), download_dir,
                         max_active=max_active, log=log)
        self.entries: dict[str, _Entry] = {}
        self.collector = TorrentCollector()
        # every torrent's events, one JSON line each (--events; a failed write: a warning)
        self._events = open_events(opts.events, lambda s: self.log(f"warning: {s}"))
        self._slots: asyncio.Semaphore | None = None
        self._watcher: asyncio.Task[None] | None = None

    # -- lifetime -------------------------------------------------------------------------
    async def __aenter__(self) -> Service:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the worker processes (fresh interpreters), the port, the arena, the DHT."""
        await self.open()
        self._slots = asyncio.Semaphore(self.max_active)
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        """Stop every torrent (state saved), then the processes and the DHT node."""
        self.interrupted = True
        for e in list(self.entries.values()):
            self._stop(e)
        tasks = [e.task for e in self.entries.values() if e.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        if self.dht is not None:
            await self.dht.detach()
            self.dht.close()
            self.dht = None
        if self.pool is not None:
            await self.pool.close()
        if self._events is not None:
            self._events.close()
            self._events = None

    # -- EngineAPI ------------------------------------------------------------------------
    async def add(self, spec: TorrentSpec) -> str:
        if len(self.entries) >= MAX_TORRENTS:
            raise ResourceExhausted(f"the daemon holds {MAX_TORRENTS} torrents, its most")
        outdir = os.path.abspath(spec.save_path or self.outdir)
        if spec.magnet is not None:
            from .magnet import parse_magnet

            magnet = parse_magnet(spec.magnet)
            source = Source("magnet", spec.magnet)
            ih, name, meta = magnet.info_hash_hex, magnet.display_name, None
        else:
            if spec.torrent is not None:
                meta = metainfo.parse(spec.torrent)
                source = Source("file", "<torrent>")
            elif spec.url is not None:
                meta = await load_url(spec.url)
                source = Source("url", spec.url)
            else:
                raise UsageError("magnet, torrent, url: give exactly one of them")
            ih, name = meta.info_hash_hex, meta.name
        if ih in self.entries:
            raise AlreadyAdded(f"torrent {ih} is already added")
        item = _Item(source, Outcome(source.text, info_hash=ih, name=name), outdir=outdir,
                     meta=meta, select=spec.select)
        if meta is not None:
            self._know(item)
            self._claim(item)  # UsageError: it writes a path another torrent writes
        entry = _Entry(item, spec, ih, paused=spec.paused)
        self.entries[ih] = entry
        if not entry.paused:
            self._queue(entry)
        else:
            item.state = "paused"
        return ih

    def torrents(self) -> list[TorrentStatus]:
        return [self._status(e) for e in self.entries.values()]

    def status(self, info_hash: str) -> TorrentStatus:
        return self._status(self.entries[info_hash.lower()])

    async def pause(self, info_hash: str) -> None:
        e = self.entries[info_hash.lower()]
        e.paused = True
        e.spec = _replace(e.spec, paused=True)
        await self._halt(e)
        e.item.state = "paused"

    async def resume(self, info_hash: str) -> None:
        e = self.entries[info_hash.lower()]
        e.paused = False
        e.spec = _replace(e.spec, paused=False)
        if e.task is None or e.task.done():
            self._queue(e)

    async def remove(self, info_hash: str, delete_data: bool) -> None:
        e = self.entries[info_hash.lower()]
        e.paused = True
        await self._halt(e)
        del self.entries[info_hash.lower()]
        self.claims.release(e.info_hash)
        self.collector.remove(e.info_hash)
        if delete_data:
            await asyncio.get_running_loop().run_in_executor(None, self._delete, e)

    def metrics_collector(self) -> TorrentCollector:
        return self.collector

    # -- running ----------------------------------------------------------------------------
    def _queue(self, e: _Entry) -> None:
        item = e.item
        item.state = "queued"
        item.outcome = Outcome(item.source.text, info_hash=e.info_hash, name=item.outcome.name)
        e.task = asyncio.get_running_loop().create_task(self._run(e))

    async def _run(self, e: _Entry) -> None:
        assert self._slots is not None
        item = e.item
        try:
            async with self._slots:
                if e.paused or self.interrupted:
                    return
                item.report = RunReport(
                    None if self._events is None else self._events.write,
                    collector=self.collector, progress_interval=self.opts.events_interval)
                await self._download(item)
            item.state = "completed"
        except asyncio.CancelledError:
            item.state = "paused" if e.paused else "stopped"
        except Interrupted:
            item.state = "paused" if e.paused else "stopped"
        except FastTorrentError as err:
            item.state = "paused" if e.paused else "error"
            item.outcome.error = str(err)
            self.log(f"{item.outcome.name or e.info_hash}: {err}")
        finally:
            item.coord = None

    def _stop(self, e: _Entry) -> None:
        """Tell a torrent to stop, as a signal would (state saved)."""
        item = e.item
        coord = item.coord
        if coord is not None and item.state == "downloading":
            coord._on_signal()
        elif item.state == "checking":
            item.state = "stopping"  # (it stops once its check ends)
        elif e.task is not None and not e.task.done() and item.state in ("queued", "metadata"):
            e.task.cancel()  # (its metadata fetch, if one runs, is cancelled with it)

    async def _halt(self, e: _Entry) -> None:
        self._stop(e)
        if e.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(e.task, return_exceptions=True)
            e.task = None

    def _delete(self, e: _Entry) -> None:
        """Delete a removed torrent's files and records (its own paths only)."""
        from .journal import journal_path, metadata_path
        from .storage import layout_for, parts_path

        item = e.item
        outdir = item.outdir or self.outdir
        ih_bytes = bytes.fromhex(e.info_hash)
        doomed = [journal_path(outdir, ih_bytes, None), metadata_path(outdir, ih_bytes),
                  parts_path(outdir, ih_bytes)]
        dirs: set[str] = set()
        if item.meta is not None:
            layout = layout_for(item.meta, outdir, None)
            for sp in layout.spans:
                if sp.regular:
                    doomed.append(sp.path)
                    d = os.path.dirname(sp.path)
                    while d.startswith(outdir + os.sep):
                        dirs.add(d)
                        d = os.path.dirname(d)
        for path in doomed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        for d in sorted(dirs, key=len, reverse=True):  # empty ones only, deepest first
            with contextlib.suppress(OSError):
                os.rmdir(d)

    def _status(self, e: _Entry) -> TorrentStatus:
        item = e.item
        coord = item.coord
        meta = item.meta
        size = None if meta is None else int(meta.total_size)
        done = 0
        down = up = 0.0
        peers = 0
        state = item.state
        if coord is not None and item.state == "downloading":
            snap = coord.snapshot()
            done, down, up, peers = snap.bytes_done, snap.rate_down, snap.rate_up, snap.peers
            if snap.seeding:
                state = "seeding"
        elif item.outcome.result is not None:
            r = item.outcome.result
            done = int(r.wanted_bytes if item.state == "completed" else 0)
        if state == "stopping":
            state = "checking"
        if item.state == "completed" and size is not None:
            done = size
        progress = (done / size) if size else (1.0 if item.state == "completed" else 0.0)
        return TorrentStatus(info_hash=e.info_hash, name=item.outcome.name, state=state,
                             progress=min(1.0, progress), size=size, bytes_done=done,
                             download_rate=down, upload_rate=up, peers=peers,
                             save_path=item.outdir or self.outdir,
                             error=item.outcome.error if state == "error" else None)


def _replace(spec: TorrentSpec, **kw: Any) -> TorrentSpec:
    from dataclasses import replace

    return replace(spec, **kw)
