"""Real test trackers on 127.0.0.1: HTTP (BEP 3/23) and UDP (BEP 15).

Each tracker runs asyncio on its own loop in a background thread, so the same
object serves sync tests and async tests (whatever their loop)::

    with HTTPTestTracker(peers=[("10.0.0.1", 6881)], interval=60) as t:
        ... announce to t.announce_url ...
        assert t.requests[0].event == "started"

    async with UDPTestTracker(drop_first=1) as t: ...

Behaviour is set by keyword arguments or by assigning the attributes later
(plain attribute writes; the server reads them per request):

- ``peers``: list of (host, port) to return; ``None`` (default) = swarm mode:
  every announcer is remembered per info-hash (its source IP and announced
  port) and returned to the others, like a real tracker; ``stopped`` removes.
- ``interval``, ``min_interval`` (HTTP), ``failure_reason``, ``warning`` (HTTP),
  ``tracker_id`` (HTTP), ``garbage`` (bytes sent instead of an answer),
  ``hang`` (never answer; connections are held open until stop()).
- HTTP only: ``compact`` (True / False / None = as the request asks),
  ``peers6``, ``chunked``, ``close_delimited`` (no Content-Length),
  ``status`` (HTTP status code), ``location`` (for 3xx), ``drop`` (close the
  connection without answering).
- UDP only: ``drop_first`` (ignore the first N datagrams), ``wrong_tid_decoy``
  (send a datagram with a wrong transaction id and decoy peers before each
  real answer), ``wrong_tid_always`` (only ever answer with wrong ids).

Every announce received is recorded as an :class:`AnnounceRecord` in
``requests``; :meth:`wait_for_requests` blocks (on a condition variable, not a
sleep) until N have arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import unquote_to_bytes

import bencodepy

from torrent.errors import TrackerError
from torrent.peeraddr import COMPACT_V4, COMPACT_V6, pack_compact_list
from torrent.tracker import udp as udpc

__all__ = ["AnnounceRecord", "HTTPTestTracker", "UDPTestTracker"]

Peer = tuple[str, int]

#: Largest HTTP request head the test tracker reads (real clients send < 2 KiB).
MAX_REQUEST_HEAD = 64 * 1024


@dataclass(frozen=True)
class AnnounceRecord:
    """One announce as the tracker saw it."""

    transport: str  # "http" or "udp"
    info_hash: bytes
    peer_id: bytes
    port: int
    uploaded: int
    downloaded: int
    left: int
    event: str | None
    numwant: int | None
    key: int | None
    client: tuple[str, int]
    path: str = ""  # HTTP request target path, or UDP BEP 41 url data
    compact: int | None = None
    trackerid: bytes | None = None
    query: dict[str, bytes] = field(default_factory=dict)


class _TestTracker:
    """Background-thread event loop, request log, swarm memory."""

    scheme = ""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **behaviour: Any) -> None:
        self.host = host
        self.port = port
        self.peers: list[Peer] | None = None
        self.interval = 1800
        self.failure_reason: str | None = None
        self.garbage: bytes | None = None
        self.hang = False
        for name, value in behaviour.items():
            if not hasattr(self, name):
                raise TypeError(f"unknown test tracker behaviour {name!r}")
            setattr(self, name, value)
        self._cond = threading.Condition()
        self._requests: list[AnnounceRecord] = []
        self._swarm: dict[bytes, dict[Peer, int]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None

    # ---- lifecycle

    def start(self) -> _TestTracker:
        """Start serving; afterwards ``port`` is the bound port."""
        if self._loop is not None:
            raise RuntimeError("already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=type(self).__name__, daemon=True
        )
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._astart_wrapper(), self._loop).result(10)
        return self

    async def _astart_wrapper(self) -> None:
        self._stopping = asyncio.Event()
        await self._astart()

    def stop(self) -> None:
        """Stop serving and join the thread (idempotent)."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._astop_wrapper(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        loop.close()

    async def _astop_wrapper(self) -> None:
        assert self._stopping is not None
        self._stopping.set()
        await self._astop()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Any:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    async def _astart(self) -> None:
        raise NotImplementedError

    async def _astop(self) -> None:
        raise NotImplementedError

    # ---- addresses

    @property
    def announce_url(self) -> str:
        """The URL to announce to."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/announce"

    # ---- request log

    @property
    def requests(self) -> list[AnnounceRecord]:
        """Announces received so far (a copy)."""
        with self._cond:
            return list(self._requests)

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> list[AnnounceRecord]:
        """Block until at least ``n`` announces arrived; AssertionError on timeout."""
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self._requests) >= n, timeout)
            if not ok:
                raise AssertionError(f"{len(self._requests)} announces arrived, expected {n}")
            return list(self._requests)

    def wait_until(self, predicate: Any, timeout: float = 10.0) -> None:
        """Block until ``predicate()`` is true (re-checked whenever the tracker
        receives something); AssertionError on timeout."""
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise AssertionError("condition not reached before the timeout")

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _record(self, rec: AnnounceRecord) -> list[Peer]:
        """Log the announce, update the swarm; return the peers to answer with."""
        with self._cond:
            self._requests.append(rec)
            self._cond.notify_all()
            swarm = self._swarm.setdefault(rec.info_hash, {})
            me = (rec.client[0], rec.port)
            if rec.event == "stopped":
                swarm.pop(me, None)
            elif rec.port:
                swarm[me] = rec.left
            if self.peers is not None:
                return list(self.peers)
            return [p for p in swarm if p != me][: rec.numwant or 50]


# --------------------------------------------------------------------------- HTTP


class HTTPTestTracker(_TestTracker):
    """An HTTP tracker on 127.0.0.1 (see the module docstring for behaviours)."""

    scheme = "http"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **behaviour: Any) -> None:
        self.compact: bool | None = None
        self.peers6: list[Peer] = []
        self.min_interval: int | None = None
        self.warning: str | None = None
        self.tracker_id: bytes | None = None
        self.chunked = False
        self.close_delimited = False
        self.status = 200
        self.location = ""
        self.drop = False
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[None]] = set()
        super().__init__(host, port, **behaviour)

    async def _astart(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=MAX_REQUEST_HEAD
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _astop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await self._handle(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._conns.discard(task)
            writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        _method, target, _version = request_line.split(" ", 2)
        path, _, query = target.partition("?")
        params: dict[str, bytes] = {}
        for part in query.split("&"):
            if part:
                k, _, v = part.partition("=")
                params[k] = unquote_to_bytes(v)
        peer_addr = writer.get_extra_info("peername")
        if self.drop:
            return
        body = self._announce(params, path, (peer_addr[0], peer_addr[1]))
        if self.hang:
            assert self._stopping is not None
            await self._stopping.wait()
            return
        writer.write(self._frame(body))
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    def _announce(self, q: dict[str, bytes], path: str, client: tuple[str, int]) -> bytes:
        def num(name: str) -> int | None:
            try:
                return int(q[name])
            except (KeyError, ValueError):
                return None

        key_raw = q.get("key")
        try:
            key = int(key_raw, 16) if key_raw else None
        except ValueError:
            key = None
        event = q.get("event", b"").decode("latin-1") or None
        rec = AnnounceRecord(
            transport="http",
            info_hash=q.get("info_hash", b""),
            peer_id=q.get("peer_id", b""),
            port=num("port") or 0,
            uploaded=num("uploaded") or 0,
            downloaded=num("downloaded") or 0,
            left=num("left") or 0,
            event=event,
            numwant=num("numwant"),
            key=key,
            client=client,
            path=path,
            compact=num("compact"),
            trackerid=q.get("trackerid"),
            query=dict(q),
        )
        peers = self._record(rec)
        if self.garbage is not None:
            return self.garbage
        if self.failure_reason is not None:
            return bencodepy.encode({b"failure reason": self.failure_reason.encode()})
        resp: dict[bytes, Any] = {b"interval": self.interval}
        compact = self.compact if self.compact is not None else rec.compact == 1
        # BEP 7: compact IPv6 peers go in "peers6"; the dictionary form holds either family
        v4 = [(h, p) for h, p in peers if ":" not in h]
        v6 = [(h, p) for h, p in peers if ":" in h]
        if compact:
            resp[b"peers"] = pack_compact_list(v4, COMPACT_V4)
        else:
            resp[b"peers"] = [
                {b"ip": h.encode(), b"port": p, b"peer id": bytes(20)} for h, p in v4 + v6
            ]
            v6 = []
        if self.peers6 or v6:
            resp[b"peers6"] = pack_compact_list(v6 + list(self.peers6), COMPACT_V6)
        if self.min_interval is not None:
            resp[b"min interval"] = self.min_interval
        if self.warning is not None:
            resp[b"warning message"] = self.warning.encode()
        if self.tracker_id is not None:
            resp[b"tracker id"] = self.tracker_id
        swarm = self._swarm.get(rec.info_hash, {})
        resp[b"complete"] = sum(1 for left in swarm.values() if left == 0)
        resp[b"incomplete"] = sum(1 for left in swarm.values() if left > 0)
        return bencodepy.encode(resp)

    def _frame(self, body: bytes) -> bytes:
        reasons = {200: "OK", 302: "Found", 404: "Not Found", 500: "Internal Server Error"}
        head = [f"HTTP/1.1 {self.status} {reasons.get(self.status, 'Status')}"]
        head.append("Content-Type: text/plain")
        if self.location:
            head.append(f"Location: {self.location}")
        if self.chunked:
            head.append("Transfer-Encoding: chunked")
            half = len(body) // 2
            payload = b"".join(
                b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:half], body[half:]) if c
            )
            payload += b"0\r\n\r\n"
        elif self.close_delimited:
            payload = body
        else:
            head.append(f"Content-Length: {len(body)}")
            payload = body
        head.append("Connection: close")
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload


# --------------------------------------------------------------------------- UDP


class _UDPServer(asyncio.DatagramProtocol):
    def __init__(self, owner: UDPTestTracker) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        for reply in self.owner._on_datagram(data, addr):
            assert self.transport is not None
            self.transport.sendto(reply, addr)


class UDPTestTracker(_TestTracker):
    """A BEP 15 tracker on 127.0.0.1 (see the module docstring for behaviours)."""

    scheme = "udp"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **behaviour: Any) -> None:
        self.drop_first = 0
        self.wrong_tid_decoy = False
        self.wrong_tid_always = False
        #: Datagrams received, dropped (drop_first), and connect requests seen.
        self.datagrams = 0
        self.dropped = 0
        self.connects = 0
        self._conn_ids: set[int] = set()
        self._rng = random.Random(0x5EED)
        self._transport: asyncio.DatagramTransport | None = None
        super().__init__(host, port, **behaviour)

    async def _astart(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UDPServer(self), local_addr=(self.host, self.port)
        )
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    async def _astop(self) -> None:
        assert self._transport is not None
        self._transport.close()

    def _replies(self, tid: int, real: udpc.UDPMessage, decoy: udpc.UDPMessage) -> list[bytes]:
        if self.wrong_tid_always:
            return [udpc.encode(decoy)]
        if self.wrong_tid_decoy:
            return [udpc.encode(decoy), udpc.encode(real)]
        return [udpc.encode(real)]

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> list[bytes]:
        try:
            return self._answer(data, addr)
        finally:
            self._notify()

    def _answer(self, data: bytes, addr: tuple[str, int]) -> list[bytes]:
        self.datagrams += 1
        if self.dropped < self.drop_first:
            self.dropped += 1
            return []
        if self.hang:
            return []
        if self.garbage is not None:
            return [self.garbage]
        try:
            req = udpc.decode_request(data)
        except TrackerError:
            return []
        bad_tid = req.transaction_id ^ 0xFFFFFFFF
        if isinstance(req, udpc.ConnectRequest):
            self.connects += 1
            cid = self._rng.getrandbits(64)
            self._conn_ids.add(cid)
            return self._replies(
                req.transaction_id,
                udpc.ConnectResponse(req.transaction_id, cid),
                udpc.ConnectResponse(bad_tid, cid ^ 1),
            )
        if req.connection_id not in self._conn_ids:
            return [udpc.encode(udpc.ErrorResponse(req.transaction_id, "bad connection id"))]
        rec = AnnounceRecord(
            transport="udp",
            info_hash=req.info_hash,
            peer_id=req.peer_id,
            port=req.port,
            uploaded=req.uploaded,
            downloaded=req.downloaded,
            left=req.left,
            event=req.event_name,
            numwant=req.num_want if req.num_want >= 0 else None,
            key=req.key,
            client=(addr[0], addr[1]),
            path=req.url_data.decode("utf-8", "replace"),
        )
        peers = self._record(rec)
        if self.failure_reason is not None:
            return [udpc.encode(udpc.ErrorResponse(req.transaction_id, self.failure_reason))]
        swarm = self._swarm.get(rec.info_hash, {})
        seeders = sum(1 for left in swarm.values() if left == 0)
        # BEP 15: an announce over IPv6 is answered with IPv6 peers only (18 bytes
        # each), one over IPv4 with IPv4 peers (6 bytes)
        v6 = ":" in addr[0]
        real = udpc.AnnounceResponse(
            req.transaction_id, self.interval, len(swarm) - seeders, seeders,
            tuple(p for p in peers if (":" in p[0]) == v6), ipv6=v6,
        )
        decoy = udpc.AnnounceResponse(bad_tid, self.interval, 0, 0,
                                      (("2001:db8::6" if v6 else "6.6.6.6", 6666),), ipv6=v6)
        return self._replies(req.transaction_id, real, decoy)
