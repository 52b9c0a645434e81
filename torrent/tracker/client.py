"""Async tracker clients (HTTP, UDP) and the runner that drives a TrackerSet.

The protocol work is in the sans-IO modules (``http.py``, ``udp.py``,
``multitracker.py``); this module only moves bytes and waits. It runs on any
asyncio loop, uvloop included. Every OS-level failure is translated here, at
the I/O boundary, into :class:`~torrent.errors.TrackerError`: a tracker that
is dead, slow or lying never stops a download.

Redirects are not followed: trackers practically never redirect announces,
and following one would let a torrent's tracker send us to any other host
(a private tracker's passkey included). A 3xx is a TrackerError naming the
target.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence

from ..errors import TrackerError
from .common import DEFAULT_NUMWANT, AnnounceParams, AnnounceResult, Peer
from .http import (
    HTTPResponseReader,
    announce_url_for,
    build_request,
    parse_announce_response,
    split_http_url,
)
from .multitracker import Announce, TrackerSet
from .udp import UDPAnnounce, retry_schedule, split_udp_url

__all__ = [
    "CLIENT_UDP_SCHEDULE",
    "HTTP_TIMEOUT",
    "STOP_TIMEOUT",
    "AnnounceFn",
    "TrackerRunner",
    "announce",
    "announce_http",
    "announce_udp",
    "make_announce_fn",
]

#: Default time for a whole HTTP announce (connect, request, response), seconds.
HTTP_TIMEOUT = 30.0

#: UDP retry schedule the client uses: BEP 15's 15 s and 30 s (n = 0, 1) but
#: not up to n = 8. Why: after 45 s of silence BEP 12 moves on to the next
#: tracker, and this one is retried after its backoff anyway; waiting 2 hours
#: on one dead tracker would starve the download of peers.
CLIENT_UDP_SCHEDULE = retry_schedule(max_n=1)

#: Time given to the "stopped" announces at shutdown (best effort), seconds.
STOP_TIMEOUT = 5.0

#: Bytes read from an HTTP connection per read call.
_READ_CHUNK = 64 * 1024

#: Datagrams queued between the UDP socket and the announce loop. Why: we
#: expect one answer per request; a flood beyond this is dropped, not buffered.
MAX_QUEUED_DATAGRAMS = 32

#: Time allowed for resolving a tracker's host name, seconds.
RESOLVE_TIMEOUT = 10.0

AnnounceFn = Callable[[Announce], Awaitable[AnnounceResult]]


# --------------------------------------------------------------------------- HTTP


async def announce_http(
    url: str,
    params: AnnounceParams,
    *,
    timeout: float = HTTP_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
) -> AnnounceResult:
    """Announce to an http:// or https:// tracker.

    Args:
        url: the tracker's announce URL (from the torrent).
        params: what to announce.
        timeout: seconds for the whole exchange.
        ssl_context: for https; default ``ssl.create_default_context()``.

    Returns:
        The parsed, checked answer.

    Raises:
        TrackerError: unreachable, timed out, HTTP error or redirect, bad body,
            or the tracker's "failure reason".
    """
    full_url = announce_url_for(url, params)
    request = build_request(full_url)
    scheme, host, port, _ = split_http_url(full_url)
    ctx = None
    if scheme == "https":
        ctx = ssl_context if ssl_context is not None else ssl.create_default_context()
    writer: asyncio.StreamWriter | None = None
    reader_state = HTTPResponseReader()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
            writer.write(request)
            await writer.drain()
            while not reader_state.complete:
                data = await reader.read(_READ_CHUNK)
                if not data:
                    reader_state.feed_eof()
                    break
                reader_state.feed(data)
    except TimeoutError:
        raise TrackerError(f"no answer from {url} within {timeout:g}s") from None
    except (OSError, UnicodeError) as exc:
        raise TrackerError(f"cannot reach {url}: {exc}") from None
    finally:
        if writer is not None:
            writer.transport.abort()  # one request per connection; no lingering
    status = reader_state.status or 0
    if status == 200:
        return _parse_body(reader_state.body)
    if 300 <= status < 400:
        location = reader_state.headers.get("location", "?")
        raise TrackerError(f"tracker {url} redirects to {location!r:.200}; not followed")
    detail = ""
    try:
        _parse_body(reader_state.body)
    except TrackerError as exc:
        if str(exc).startswith("tracker failure"):
            detail = f": {exc}"
    raise TrackerError(f"tracker {url} answered HTTP {status} {reader_state.reason}{detail}")


def _parse_body(body: bytes) -> AnnounceResult:
    return parse_announce_response(body)


# --------------------------------------------------------------------------- UDP


class _DatagramQueue(asyncio.DatagramProtocol):
    """Bounded queue of received datagrams plus the last socket error."""

    def __init__(self) -> None:
        self.queue: collections.deque[bytes] = collections.deque()
        self.error: OSError | None = None
        self._waiter: asyncio.Future[None] | None = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def datagram_received(self, data: bytes, addr: object) -> None:
        if len(self.queue) < MAX_QUEUED_DATAGRAMS:
            self.queue.append(data)
        self._wake()

    def error_received(self, exc: Exception) -> None:
        # On a connected UDP socket this is an ICMP error (port unreachable):
        # the tracker is down, so give up at once and let BEP 12 move on.
        self.error = exc if isinstance(exc, OSError) else OSError(str(exc))
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._wake()

    async def get(self, timeout: float) -> bytes | None:
        """Next datagram, or None after ``timeout`` seconds."""
        if not self.queue and self.error is None:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._waiter), max(timeout, 0.0))
            except TimeoutError:
                return None
            finally:
                self._waiter = None
        if self.error is not None:
            raise self.error
        return self.queue.popleft() if self.queue else None


async def announce_udp(
    url: str,
    params: AnnounceParams,
    *,
    timeout_schedule: Sequence[float] = CLIENT_UDP_SCHEDULE,
    clock: Callable[[], float] = time.monotonic,
    rng: Callable[[int], int] = secrets.randbits,
    connections: dict[str, tuple[int, float]] | None = None,
) -> AnnounceResult:
    """Announce to a udp:// tracker (BEP 15), with retries.

    Args:
        url: ``udp://host:port[/path]``; the path is sent as BEP 41 URL data.
        params: what to announce.
        timeout_schedule: seconds to wait before each retransmission.
        clock: monotonic clock in seconds (the waits are computed from it).
        rng: source of transaction ids.
        connections: optional cache of connection ids per URL, so a
            re-announce within a minute skips the connect step.

    Raises:
        TrackerError: no answer after the schedule, an error action, a
            malformed answer, or an unreachable tracker.
    """
    host, port, url_data = split_udp_url(url)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except TimeoutError:
        raise TrackerError(f"cannot resolve {host!r} within {RESOLVE_TIMEOUT:g}s") from None
    except (OSError, UnicodeError) as exc:
        raise TrackerError(f"cannot resolve {host!r}: {exc}") from None
    if not infos:
        raise TrackerError(f"cannot resolve {host!r}")
    family, _, _, _, sockaddr = infos[0]
    try:
        transport, proto = await loop.create_datagram_endpoint(
            _DatagramQueue, remote_addr=(str(sockaddr[0]), int(sockaddr[1])), family=family
        )
    except OSError as exc:
        raise TrackerError(f"cannot reach {url}: {exc}") from None
    cached = connections.get(url) if connections is not None else None
    session = UDPAnnounce(
        params,
        schedule=timeout_schedule,
        rng=rng,
        ipv6=family == socket.AF_INET6,
        url_data=url_data,
        connection=cached,
    )
    try:
        transport.sendto(session.start(clock()))
        while True:
            assert session.deadline is not None  # set while a request is out
            try:
                data = await proto.get(session.deadline - clock())
            except OSError as exc:
                raise TrackerError(f"cannot reach {url}: {exc}") from None
            if data is None:
                if clock() >= session.deadline:
                    transport.sendto(session.on_timeout(clock()))
                continue
            out = session.receive(data, clock())
            if isinstance(out, bytes):
                transport.sendto(out)
            elif out is not None:
                return out
    finally:
        transport.close()
        if connections is not None and session.connection is not None:
            connections[url] = session.connection


# --------------------------------------------------------------------------- dispatch


async def announce(
    url: str,
    params: AnnounceParams,
    *,
    http_timeout: float = HTTP_TIMEOUT,
    udp_schedule: Sequence[float] = CLIENT_UDP_SCHEDULE,
    clock: Callable[[], float] = time.monotonic,
    udp_connections: dict[str, tuple[int, float]] | None = None,
) -> AnnounceResult:
    """Announce to ``url`` with the client its scheme needs.

    Raises:
        TrackerError: as :func:`announce_http` / :func:`announce_udp`, or an
            unsupported scheme.
    """
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("http", "https"):
        return await announce_http(url, params, timeout=http_timeout)
    if scheme == "udp":
        return await announce_udp(
            url, params, timeout_schedule=udp_schedule, clock=clock, connections=udp_connections
        )
    raise TrackerError(f"unsupported tracker URL scheme in {url!r}")


def make_announce_fn(
    *,
    info_hash: bytes,
    peer_id: bytes,
    port: int,
    stats: Callable[[], tuple[int, int, int]],
    key: int | None = None,
    numwant: int = DEFAULT_NUMWANT,
    http_timeout: float = HTTP_TIMEOUT,
    udp_schedule: Sequence[float] = CLIENT_UDP_SCHEDULE,
    clock: Callable[[], float] = time.monotonic,
) -> AnnounceFn:
    """An ``announce_fn`` for :meth:`TrackerRunner.run`.

    Args:
        stats: returns (uploaded, downloaded, left) at announce time.
        key: our BEP 3 key; a random one if None.
        others: as :class:`AnnounceParams` and :func:`announce`.
    """
    the_key = key if key is not None else secrets.randbits(32)
    connections: dict[str, tuple[int, float]] = {}

    async def announce_fn(a: Announce) -> AnnounceResult:
        uploaded, downloaded, left = stats()
        params = AnnounceParams(
            info_hash=info_hash,
            peer_id=peer_id,
            port=port,
            uploaded=uploaded,
            downloaded=downloaded,
            left=left,
            event=a.event,
            numwant=0 if a.event == "stopped" else numwant,
            key=the_key,
            tracker_id=a.tracker_id,
        )
        return await announce(
            a.url,
            params,
            http_timeout=http_timeout,
            udp_schedule=udp_schedule,
            clock=clock,
            udp_connections=connections,
        )

    return announce_fn


# --------------------------------------------------------------------------- runner


class TrackerRunner:
    """Drives a :class:`TrackerSet`: announces when due, waits otherwise.

    Args:
        trackers: the sans-IO schedule.
        clock: seconds, monotonic; the same clock ``sleep`` advances.
        sleep: ``await sleep(seconds)``; tests inject one that advances a fake
            clock, so no test waits out a backoff.
        on_warning: receives a human-readable string per tracker problem.
        on_error: receives ``(url, message)`` of each failed announce (the event stream).
        stop_timeout: seconds given to the "stopped" announces at shutdown.
    """

    def __init__(
        self,
        trackers: TrackerSet,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        on_warning: Callable[[str], None] | None = None,
        stop_timeout: float = STOP_TIMEOUT,
        on_error: Callable[[str, str], None] | None = None,
    ) -> None:
        self.trackers = trackers
        self.clock = clock
        self.sleep = sleep
        self.on_warning = on_warning if on_warning is not None else (lambda _w: None)
        self.stop_timeout = stop_timeout
        self.on_error = on_error if on_error is not None else (lambda _u, _m: None)
        self._poke = asyncio.Event()

    def completed(self, *, final: bool = False) -> None:
        """The download completed: announce ``completed`` soon (once); ``final``: now."""
        self.trackers.set_completed(self.clock(), final=final)
        self._poke.set()

    async def _until(self, aw: Awaitable[object], stop_event: asyncio.Event, *, poke: bool) -> bool:
        """Await ``aw`` unless ``stop_event`` (or, if ``poke``, a
        :meth:`completed` call) comes first; True if ``aw`` finished."""
        task = asyncio.ensure_future(aw)
        waiters = [asyncio.ensure_future(stop_event.wait())]
        if poke:
            waiters.append(asyncio.ensure_future(self._poke.wait()))
        try:
            await asyncio.wait({task, *waiters}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in waiters:
                t.cancel()
        if task.done():
            return True
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except TrackerError:
            pass
        return False

    async def run(
        self,
        announce_fn: AnnounceFn,
        on_peers: Callable[[tuple[Peer, ...]], None],
        stop_event: asyncio.Event,
    ) -> None:
        """Announce until ``stop_event`` is set, then send ``stopped`` (best effort).

        Args:
            announce_fn: carries out one :class:`Announce` (see
                :func:`make_announce_fn`); raises TrackerError on failure.
            on_peers: receives each non-empty peer list.
            stop_event: set it to stop.
        """
        for url, why in self.trackers.skipped:
            self.on_warning(f"tracker {url} skipped: {why}")
        while not stop_event.is_set():
            due = self.trackers.due(self.clock())
            for a in due:
                task = asyncio.ensure_future(announce_fn(a))
                finished = await self._until(task, stop_event, poke=False)
                if not finished:  # stopped mid-announce
                    self.trackers.on_failure(a, "cancelled at shutdown", self.clock())
                    break
                try:
                    result = task.result()
                except TrackerError as exc:
                    self.on_warning(self.trackers.on_failure(a, exc, self.clock()))
                    self.on_error(a.url, str(exc))
                else:
                    warning = self.trackers.on_success(a, result, self.clock())
                    if warning:
                        self.on_warning(warning)
                    if result.peers:
                        on_peers(result.peers)
            if due or stop_event.is_set():
                continue
            self._poke.clear()
            at = self.trackers.next_announce_at(self.clock())
            if at is None:  # cannot happen outside an announce; be safe
                at = self.clock()
            delay = at - self.clock()
            if delay > 0:
                await self._until(self.sleep(delay), stop_event, poke=True)
        await self._send_stopped(announce_fn)

    async def _send_stopped(self, announce_fn: AnnounceFn) -> None:
        announces = self.trackers.stopping()
        if not announces:
            return
        tasks = {asyncio.ensure_future(announce_fn(a)): a for a in announces}
        done, pending = await asyncio.wait(tasks, timeout=self.stop_timeout)
        for t in pending:
            t.cancel()
            self.on_warning(f"tracker {tasks[t].url} did not answer 'stopped' in time")
        for t in done:
            exc = t.exception()
            if isinstance(exc, TrackerError):
                self.on_warning(f"tracker {tasks[t].url} failed 'stopped': {exc}")
                self.on_error(tasks[t].url, f"'stopped': {exc}")
            elif exc is not None:
                raise exc
        if pending:
            await asyncio.wait(pending)
