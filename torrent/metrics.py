"""Prometheus metrics of a run, served over HTTP (``--metrics-listen HOST:PORT``).

Theory of operation
-------------------
No counter is updated as things happen: :class:`TorrentCollector` is a
custom collector that, at each scrape, asks each torrent's snapshot source
(a callable returning a :class:`~torrent.snapshot.TorrentSnapshot`) for its
numbers and turns them into metric families, every sample labelled with the
torrent's ``info_hash``.  A run registers its one torrent; a process serving
many registers one source per info-hash (:meth:`TorrentCollector.add` /
:meth:`~TorrentCollector.remove`) into the same collector and server.

:class:`MetricsServer` is an aiohttp server on the coordinator's loop that
answers ``GET /metrics`` only, on a socket bound before the run starts
(:func:`bind_metrics`), so a port in use is a usage error before any
worker starts.  A bare ``PORT`` or ``:PORT`` binds loopback (127.0.0.1):
the numbers name the torrents of this machine, so exposing them is a choice.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterator

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from .errors import UsageError
from .peeraddr import canonical_ip
from .snapshot import STAGES, TorrentSnapshot

__all__ = [
    "DEFAULT_METRICS_HOST",
    "PREFIX",
    "MetricsServer",
    "SocketServer",
    "TorrentCollector",
    "bind_metrics",
    "parse_listen",
]

#: The address a ``--metrics-listen`` without a host binds.
DEFAULT_METRICS_HOST = "127.0.0.1"
#: Every metric's name starts with it.
PREFIX = "fasttorrent_"
#: The text exposition format generate_latest writes (named here: newer
#: prometheus-client releases call another format their latest).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Connections the metrics socket queues: scrapers come one at a time.
METRICS_BACKLOG = 16

Source = Callable[[], TorrentSnapshot]


class TorrentCollector(Collector):
    """The metrics of every registered torrent, read from their snapshots at each scrape."""

    def __init__(self) -> None:
        self._sources: dict[str, Source] = {}

    def add(self, info_hash: str, source: Source) -> None:
        """Report the torrent ``info_hash`` (hex) from ``source`` at each scrape."""
        self._sources[info_hash] = source

    def remove(self, info_hash: str) -> None:
        self._sources.pop(info_hash, None)

    def collect(self) -> Iterator[Metric]:
        snaps = [src() for src in list(self._sources.values())]
        ih = ["info_hash"]

        def family(kind: type[CounterMetricFamily] | type[GaugeMetricFamily], name: str,
                   doc: str, value: Callable[[TorrentSnapshot], float]) -> Metric:
            m = kind(PREFIX + name, doc, labels=ih)
            for s in snaps:
                m.add_metric([s.info_hash], value(s))
            return m

        def counter(name: str, doc: str, value: Callable[[TorrentSnapshot], float]) -> Metric:
            return family(CounterMetricFamily, name, doc, value)

        def gauge(name: str, doc: str, value: Callable[[TorrentSnapshot], float]) -> Metric:
            return family(GaugeMetricFamily, name, doc, value)

        yield counter("downloaded_bytes", "Payload bytes downloaded and verified in this run",
                      lambda s: s.downloaded)
        yield counter("uploaded_bytes", "Payload bytes uploaded in this run",
                      lambda s: s.uploaded)
        yield gauge("download_rate_bytes_per_second", "Download rate, smoothed",
                    lambda s: s.rate_down)
        yield gauge("upload_rate_bytes_per_second", "Upload rate, smoothed",
                    lambda s: s.rate_up)
        yield gauge("peers_connected", "Peers connected (handshake done)", lambda s: s.peers)
        yield gauge("pieces_verified", "Pieces verified, resumed ones included",
                    lambda s: s.pieces_verified)
        yield gauge("pieces", "Pieces of the torrent", lambda s: s.pieces_total)
        yield gauge("size_bytes", "Size of the torrent", lambda s: s.bytes_total)
        yield gauge("done_bytes", "Bytes of the verified pieces", lambda s: s.bytes_done)
        yield counter("hash_failures", "Pieces that failed their hash check",
                      lambda s: s.hash_failures)
        yield counter("bans", "Peers and web seeds banned", lambda s: s.bans)
        yield gauge("arena_slots_in_use", "Shared-memory piece slots holding a piece",
                    lambda s: s.slots_in_use)
        yield gauge("arena_slots", "Shared-memory piece slots", lambda s: s.slots_total)
        busy = CounterMetricFamily(PREFIX + "worker_busy_seconds",
                                   "Seconds a worker's I/O threads spent in each stage",
                                   labels=["info_hash", "worker", "stage"])
        for s in snaps:
            for w in s.workers:
                seconds = dict(w.busy)
                for st in STAGES:
                    busy.add_metric([s.info_hash, str(w.worker), st], seconds.get(st, 0.0))
        yield busy


def parse_listen(text: str, *, flag: str = "--metrics-listen",
                 min_port: int = 1) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT``, ``:PORT`` or ``PORT`` (loopback) -> (address, port).

    The host is an IP address (``0.0.0.0`` or ``[::]``: every address).

    Args:
        flag: the flag the text came with, named by a refusal.
        min_port: the lowest port accepted (0: any free port, chosen at bind time).

    Raises:
        UsageError: a one-line reason naming ``flag``.
    """
    t = text.strip()
    if t.isdigit() or (t.startswith(":") and t[1:].isdigit()):
        t = f"{DEFAULT_METRICS_HOST}:{t.lstrip(':')}"
    host, sep, port_text = t.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 address without brackets: ambiguous
    ip = canonical_ip(host) if sep and host else None
    if ip is None or not port_text.isdigit() or not min_port <= int(port_text) <= 65535:
        raise UsageError(f"{flag} {text[:80]!r}: expected HOST:PORT, [IPV6]:PORT "
                         f"or PORT, with an IP address and a port in {min_port}..65535")
    return ip, int(port_text)


def bind_metrics(text: str, *, flag: str = "--metrics-listen",
                 min_port: int = 1) -> socket.socket:
    """A listening TCP socket for ``--metrics-listen`` (see :func:`parse_listen`,
    which takes ``flag`` and ``min_port``).

    Raises:
        UsageError: a bad address, or one that cannot be bound (in use, not ours).
    """
    host, port = parse_listen(text, flag=flag, min_port=min_port)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(METRICS_BACKLOG)
    except OSError as e:
        sock.close()
        why = "in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
        raise UsageError(f"{flag} {text[:80]}: cannot listen there: {why}") from None
    sock.setblocking(False)
    return sock


class SocketServer:
    """An aiohttp application served on an already listening socket, on the running
    loop (the metrics server's, the daemon's API): no signal handling of its own, no
    access log.

    Args:
        sock: a listening socket; closed by :meth:`close`.
        shutdown_timeout: how long :meth:`close` lets requests in flight finish.
    """

    def __init__(self, sock: socket.socket, *, shutdown_timeout: float = 60.0) -> None:
        self.sock = sock
        self.shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def make_app(self) -> web.Application:
        raise NotImplementedError

    async def start(self) -> None:
        runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False,
                               shutdown_timeout=self.shutdown_timeout)
        await runner.setup()
        await web.SockSite(runner, self.sock).start()
        self._runner = runner

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self.sock.close()


class MetricsServer(SocketServer):
    """``GET /metrics`` of ``collector`` on ``sock`` (aiohttp, on the running loop).

    Args:
        collector: what to report.
        sock: a listening socket (:func:`bind_metrics`); closed by :meth:`close`.
    """

    def __init__(self, collector: TorrentCollector, sock: socket.socket) -> None:
        super().__init__(sock)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)

    def make_app(self) -> web.Application:
        async def metrics(_request: web.Request) -> web.Response:
            body = generate_latest(self.registry)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        return app
