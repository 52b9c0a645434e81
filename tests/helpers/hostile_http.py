"""A small aiohttp web server on 127.0.0.1 that misbehaves as a web seed, for the
hostile-server tests (a thread of its own, its own loop; stopped by the test).

It serves ``files`` (URL path -> bytes) with Range support, and the first
``count`` requests (all of them when None) get the misbehaviour ``mode``:

- ``short``: 206 with the right headers, half the body, then the connection closes;
- ``long``: 206 whose Content-Length is larger than the range;
- ``slow``: the right body, ``SLOW_CHUNK`` bytes every ``SLOW_PAUSE`` seconds;
- ``redirect``: 307 to the same file under ``/moved``, where it is served;
- ``redirect-loop``: 302 to another path that redirects back;
- ``full-200``: 200 with the whole file, the Range ignored;
- ``416``: 416 Range Not Satisfiable;
- ``503``: 503 with ``Retry-After: 0``;
- ``reset``: the headers and part of the body, then a reset (RST);
- ``corrupt``: the right headers and length, a byte flipped every ``CORRUPT_EVERY``
  bytes of the file (so every piece fails its hash).
"""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

from aiohttp import web

__all__ = ["MODES", "HostileServer"]

MODES = ("short", "long", "slow", "redirect", "redirect-loop", "full-200", "416", "503", "reset",
         "corrupt")
SLOW_CHUNK = 4096
CORRUPT_EVERY = 16384
SLOW_PAUSE = 0.05
#: Seconds the server thread gets to start and to stop.
THREAD_TIMEOUT = 10.0

_RANGE_RE = re.compile(r"bytes=(\d+)-(\d+)\Z")


class HostileServer:
    def __init__(self, files: dict[str, bytes], mode: str, count: int | None = None) -> None:
        assert mode in MODES, mode
        self.files = files
        self.mode = mode
        self.count = count
        self.requests: list[tuple[str, str, str]] = []  # (path, range, what was done)
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def hostile_requests(self) -> int:
        return sum(1 for _p, _r, what in self.requests if what == self.mode)

    def served(self) -> int:
        return sum(1 for _p, _r, what in self.requests if what == "ok")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        rng = request.headers.get("Range", "")
        hostile = self.count is None or len(self.requests) < self.count
        what = self.mode if hostile else "ok"
        if path.startswith("/__loop"):
            self.requests.append((path, rng, what))
            raise web.HTTPFound("/__loop" + ("a" if path.endswith("b") else "b")
                                + request.query_string)
        moved = path.startswith("/moved/")
        data = self.files.get(path[len("/moved"):] if moved else path)
        if moved and data is not None:
            what = "ok"
        if data is None:
            self.requests.append((path, rng, "404"))
            raise web.HTTPNotFound()
        self.requests.append((path, rng, what))
        if what == "redirect":
            raise web.HTTPTemporaryRedirect("/moved" + path)
        if what == "redirect-loop":
            raise web.HTTPFound("/__loopa")
        if what == "416":
            return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
        if what == "503":
            return web.Response(status=503, headers={"Retry-After": "0"})
        if what == "full-200":
            return web.Response(status=200, body=data)
        m = _RANGE_RE.match(rng)
        if m is None:
            return web.Response(status=200, body=data)
        a, b = int(m[1]), min(int(m[2]), len(data) - 1)
        body = data[a : b + 1]
        headers = {"Content-Range": f"bytes {a}-{b}/{len(data)}",
                   "Content-Type": "application/octet-stream"}
        if what == "long":
            headers["Content-Length"] = str(len(body) + 100)
            resp = web.StreamResponse(status=206, headers=headers)
            await resp.prepare(request)
            await resp.write(body + b"\0" * 100)
            return resp
        if what == "corrupt":  # a byte flipped in every 16 KiB of the file: every piece
            buf = bytearray(body)
            for off in range(-(-a // CORRUPT_EVERY) * CORRUPT_EVERY, b + 1, CORRUPT_EVERY):
                buf[off - a] ^= 0xFF
            body = bytes(buf)
        headers["Content-Length"] = str(len(body))
        resp = web.StreamResponse(status=206, headers=headers)
        await resp.prepare(request)
        if what in ("short", "reset"):
            await resp.write(body[: len(body) // 2])
            tr = request.transport
            if tr is not None:
                if what == "reset":
                    sock = tr.get_extra_info("socket")
                    if sock is not None:  # SO_LINGER 0: close() sends RST
                        import socket
                        import struct
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                    tr.abort()
                else:
                    tr.close()
            return resp
        if what == "slow":
            for k in range(0, len(body), SLOW_CHUNK):
                await resp.write(body[k : k + SLOW_CHUNK])
                await asyncio.sleep(SLOW_PAUSE)
            return resp
        await resp.write(body)
        return resp

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        self._runner = runner

        async def start() -> None:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            server: Any = site._server  # the listening socket's port
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()

        loop.run_until_complete(start())
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    def __enter__(self) -> HostileServer:
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        if not self._ready.wait(THREAD_TIMEOUT):
            raise RuntimeError("the hostile server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(THREAD_TIMEOUT)
