"""A run's reports to the outside: its event stream and its Prometheus metrics.

:class:`RunReport` is what the coordinator calls at each moment worth
reporting (hooks of one line each in ``torrent/coordinator.py``); it turns
them into events (:class:`~torrent.events.TorrentEvents`, written by an
:class:`~torrent.eventwriter.EventWriter`) and registers the run's snapshot
source with the metrics collector (:class:`~torrent.metrics.TorrentCollector`),
whose server it starts on the coordinator's loop when it owns one.

:func:`run_report` opens both for one ``download`` or ``seed`` from its
options (``events``, ``metrics_listen``), before any worker starts, so a bad
events path or a metrics port in use ends the run at once with a one-line
error; and on the way out it writes the run's last events: ``error`` (a
failure, with the CLI's exit code) and ``stopped``.  A process serving many
torrents would share one writer and one collector between their reports.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .errors import FastTorrentError, Interrupted
from .events import PROGRESS_INTERVAL, Event, TorrentEvents, make_event
from .eventwriter import EventWriter, open_events
from .snapshot import TorrentSnapshot

if TYPE_CHECKING:
    from .metrics import MetricsServer, TorrentCollector

__all__ = ["RunReport", "run_report"]

#: ``stopped``'s reason for each way a seeding phase ends (Coordinator.seed_stop).
_SEED_STOPS = {"time": "seed_time", "ratio": "seed_ratio", "interrupted": "interrupted"}


class RunReport:
    """The events and metrics of one torrent's run.

    Args:
        emit: receives each event (None: no event stream).
        collector: the metrics collector to register the run with (None: no metrics).
        server: a :class:`~torrent.metrics.MetricsServer` this report starts when the
            workers start and closes when the run ends (None: someone else's, or none).
        progress_interval: seconds between ``progress`` events.
        clock: wall-clock seconds (``time.time``), the events' ``time``.
    """

    def __init__(self, emit: Callable[[Event], None] | None = None, *,
                 collector: TorrentCollector | None = None,
                 server: MetricsServer | None = None,
                 progress_interval: float = PROGRESS_INTERVAL,
                 clock: Callable[[], float] = time.time) -> None:
        self.emit = emit
        self.collector = collector
        self.server = server
        self.progress_interval = progress_interval
        self.clock = clock
        self.events: TorrentEvents | None = None
        self.info_hash: str | None = None
        self.source: Callable[[], TorrentSnapshot] | None = None
        self.reason = "complete"

    # -- before the workers ------------------------------------------------------------
    def added(self, info_hash: str, *, source: str, name: str | None) -> None:
        """The torrent is known by its info-hash (a .torrent read, a magnet parsed)."""
        self.info_hash = info_hash
        if self.emit is not None:
            self.events = TorrentEvents(info_hash, self.emit,
                                        progress_interval=self.progress_interval)
            self.events.added(self.clock(), source=source, name=name)

    def metadata(self, meta: Any) -> None:
        """The torrent's metadata is at hand (:class:`~torrent.metainfo.Metainfo`)."""
        if self.events is not None:
            self.events.metadata(self.clock(), name=meta.name, total_size=meta.total_size,
                                 piece_length=meta.piece_length, pieces=meta.num_pieces,
                                 files=sum(1 for f in meta.files if not f.pad),
                                 private=bool(meta.private))

    # -- the run (called by the coordinator, on its loop) ----------------------------------
    async def started(self, source: Callable[[], TorrentSnapshot], *, seeding: bool, port: int,
                      workers: int, pieces_resumed: int) -> None:
        """The workers run; ``source`` gives the run's numbers from now on."""
        self.source = source
        if self.collector is not None and self.info_hash is not None:
            self.collector.add(self.info_hash, source)
        if self.server is not None:
            await self.server.start()
        if self.events is not None:
            self.events.started(self.clock(), seeding=seeding, port=port, workers=workers,
                                pieces_resumed=pieces_resumed)

    def tick(self) -> None:
        """A ``progress`` event when one is due."""
        ev, src = self.events, self.source
        if ev is not None and src is not None:
            wall = self.clock()
            if ev.progress_due(wall):
                ev.progress(wall, src())

    def completed(self, source: Callable[[], TorrentSnapshot]) -> None:
        """Every piece is verified (called again later: nothing more)."""
        if self.events is not None and not self.events.completed_told:
            self.events.completed(self.clock(), source())

    def piece_failed(self, piece: int, peer: str | None) -> None:
        if self.events is not None:
            self.events.piece_failed(self.clock(), piece, peer)

    def peer_banned(self, address: str, reason: str) -> None:
        if self.events is not None:
            self.events.peer_banned(self.clock(), address, reason)

    def tracker_error(self, url: str, message: str) -> None:
        if self.events is not None:
            self.events.tracker_error(self.clock(), url, message)

    async def ended(self, seed_stop: str | None) -> None:
        """The run is over: the final ``progress``; the metrics server (if ours) closes."""
        if seed_stop is not None:
            self.reason = _SEED_STOPS.get(seed_stop, seed_stop)
        if self.events is not None and self.source is not None:
            self.events.progress(self.clock(), self.source())
        if self.collector is not None and self.info_hash is not None:
            self.collector.remove(self.info_hash)
        if self.server is not None:
            server, self.server = self.server, None
            await server.close()

    # -- the end ---------------------------------------------------------------------------
    def finished(self, exc: BaseException | None) -> None:
        """The last events of the run: ``error`` for a failure, then ``stopped``."""
        if self.emit is None:
            return
        wall = self.clock()
        if exc is None:
            reason, code = self.reason, 0
        elif isinstance(exc, (Interrupted, KeyboardInterrupt)):
            reason, code = "interrupted", Interrupted.exit_code
        else:
            reason = "error"
            if isinstance(exc, FastTorrentError):
                code, message = exc.exit_code, str(exc)
            else:
                code, message = 1, f"internal error: {exc.__class__.__name__}: {exc}"
            if self.events is not None:
                self.events.error(wall, code, message)
            else:  # the torrent could not be read: no info-hash to name
                self.emit(make_event("error", None, wall, exit_code=code, message=message))
        if self.events is not None:
            self.events.stopped(wall, reason, code)
        else:
            self.emit(make_event("stopped", None, wall, reason=reason, exit_code=code))


def _outputs(opts: Any, log: Callable[[str], None],
             ) -> tuple[EventWriter | None, TorrentCollector | None, MetricsServer | None]:
    """A run's events file (opened) and metrics collector and server (its port bound)."""
    writer = open_events(opts.events, lambda s: log(f"warning: {s}"))
    try:
        if not opts.metrics_listen:
            return writer, None, None
        from .metrics import MetricsServer, TorrentCollector, bind_metrics

        collector = TorrentCollector()
        return writer, collector, MetricsServer(collector, bind_metrics(opts.metrics_listen))
    except BaseException:
        if writer is not None:
            writer.close()
        raise


@contextmanager
def run_report(opts: Any, log: Callable[[str], None]) -> Iterator[RunReport]:
    """The report of one run from its options: the events file opened, the metrics port bound.

    Raises:
        StorageError, DiskFull: the events file cannot be opened.
        UsageError: a bad ``metrics_listen``, or its port cannot be bound.
    """
    writer, collector, server = _outputs(opts, log)
    report = RunReport(None if writer is None else writer.write, collector=collector,
                       server=server, progress_interval=opts.events_interval)
    try:
        yield report
    except BaseException as e:
        report.finished(e)
        raise
    else:
        report.finished(None)
    finally:
        if server is not None:
            server.sock.close()  # never started (an early error), or closed already
        if writer is not None:
            writer.close()


@contextmanager
def batch_reports(opts: Any, log: Callable[[str], None],
                  ) -> Iterator[tuple[Callable[[], RunReport] | None, MetricsServer | None]]:
    """The reports of a run of many torrents: one events file and one metrics port for
    all, a :class:`RunReport` per torrent from the factory (None: neither is asked for).

    Returns (as the context's value):
        The factory, and the metrics server for the run to start and close (None: none).

    Raises:
        StorageError, DiskFull, UsageError: as :func:`run_report`.
    """
    writer, collector, server = _outputs(opts, log)
    try:
        if writer is None and collector is None:
            yield None, None
            return

        def make() -> RunReport:
            return RunReport(None if writer is None else writer.write, collector=collector,
                             progress_interval=opts.events_interval)

        yield make, server
    finally:
        if server is not None:
            server.sock.close()  # (closed already when the run started it)
        if writer is not None:
            writer.close()
