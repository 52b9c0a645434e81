"""``fasttorrent daemon``: many torrents in one engine, driven over an HTTP/JSON control API.

Theory of operation
-------------------
The daemon is a thin aiohttp front over an engine it knows only through
:class:`~torrent.engineapi.EngineAPI` (re-exported here).  :func:`make_app`
builds the application; :class:`Daemon` serves it on a socket bound before
anything starts (:func:`bind_listen`: a port in use is a usage error, port 0
picks a free one); :func:`run_daemon` is the command: read the token, bind,
build the engine (:func:`_make_engine`), add back every torrent the state
directory records (:func:`restore`), serve until SIGINT or SIGTERM.

Every request must carry ``Authorization: Bearer <token>`` (the token file's
one line; compared in constant time), ``/metrics`` included: Prometheus
sends it with ``authorization: {credentials_file: FILE}`` in its scrape
config.  A request without it is answered 401 before its body is read.

Endpoints (JSON in and out; every error is ``{"error": "<one line naming
the field>"}``)::

    POST   /api/v1/torrents                 {"magnet"|"url"|"torrent": ..., "save_path",
                                             "select", "paused"} -> {"info_hash"}
    GET    /api/v1/torrents                 -> [status, ...]
    GET    /api/v1/torrents/{hash}          -> status
    POST   /api/v1/torrents/{hash}/pause    -> status
    POST   /api/v1/torrents/{hash}/resume   -> status
    DELETE /api/v1/torrents/{hash}?delete_data=true|false  -> {"info_hash"}
    GET    /metrics                         -> Prometheus text

400: a bad body or hash (the spec's fields are checked by
:meth:`~torrent.engineapi.TorrentSpec.from_json`); 401: no or a wrong
token; 404: an unknown torrent; 409: already added; 413: a body over
:data:`MAX_BODY`; 507: :data:`~torrent.engineapi.MAX_TORRENTS` held, or the
engine or the state directory is out of room.

A ``save_path`` is resolved under the download directory (a relative one is
joined to it; an absolute one must lie inside it; links are followed): one
that resolves outside is refused, so no file is ever written outside it.
Each torrent added is recorded in the state directory
(``torrent/daemonstate.py``) before the answer, and the record follows
pause, resume and delete.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import os
import re
import signal
import socket
import stat
import sys
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any, NoReturn

from aiohttp import web
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from .daemonstate import StateDir, load_state
from .engineapi import (
    MAX_SAVE_PATH,
    MAX_TORRENT_BASE64,
    MAX_TORRENTS,
    STATES,
    AlreadyAdded,
    EngineAPI,
    TorrentSpec,
    TorrentStatus,
)
from .errors import DiskFull, FastTorrentError, InvalidTorrent, ResourceExhausted, UsageError
from .metrics import CONTENT_TYPE, SocketServer, bind_metrics

if TYPE_CHECKING:
    from .options import Options

__all__ = [
    "API_PREFIX",
    "DEFAULT_LISTEN",
    "MAX_BODY",
    "MAX_SAVE_PATH",
    "MAX_TOKEN_FILE",
    "MAX_TORRENTS",
    "MIN_TOKEN_LENGTH",
    "STATES",
    "AlreadyAdded",
    "Daemon",
    "EngineAPI",
    "TorrentSpec",
    "TorrentStatus",
    "bind_listen",
    "load_state",
    "make_app",
    "read_token",
    "resolve_save_path",
    "restore",
    "run_daemon",
]

#: Where the API is served unless ``--listen`` says otherwise: loopback only.
DEFAULT_LISTEN = "127.0.0.1:6880"
API_PREFIX = "/api/v1"
#: The largest request body (aiohttp's ``client_max_size``; 413 past it): the
#: base64 of the largest .torrent read (64 MiB, ``metainfo.MAX_TORRENT_SIZE``)
#: with its line breaks (one per 76 characters, as ``base64`` wraps), and
#: 1 MiB for the other fields (a save path and a ``select`` are bounded below).
MAX_BODY = MAX_TORRENT_BASE64 + MAX_TORRENT_BASE64 // 38 + (1 << 20)
#: A body larger than this is decoded (JSON, base64) on a thread, so that a
#: large .torrent does not hold up the loop the engine's torrents share.
INLINE_PARSE_LIMIT = 1 << 20
#: The longest token file read: a token is one line.
MAX_TOKEN_FILE = 4096
#: The shortest token taken: a guessable token guards nothing
#: (``openssl rand -hex 32`` makes one of 64).
MIN_TOKEN_LENGTH = 16
#: The longest error text in an answer (an engine's message included).
MAX_ERROR_TEXT = 1000
#: How long a stop waits for requests in flight (an add fetching a URL).
SHUTDOWN_GRACE = 5.0

_HASH_RE = re.compile(r"[0-9a-fA-F]{40}")
_log = logging.getLogger(__name__)

Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# -- inputs ----------------------------------------------------------------------------------
def read_token(path: str, log: Log = _stderr) -> str:
    """The API token: the one line of ``path``, stripped.

    A file that group or others may read or write is taken with a warning
    (a Kubernetes secret is mounted 0644 unless told otherwise).

    Raises:
        UsageError: a missing or unreadable file, an empty one, a token of
            spaces, control or non-ASCII characters, or shorter than
            :data:`MIN_TOKEN_LENGTH`.
    """
    flag = f"--token-file {path}"
    try:
        # O_NONBLOCK: a FIFO in its place is refused below, not waited on
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise UsageError(f"{flag}: not a regular file")
            data = f.read(MAX_TOKEN_FILE + 1)
    except FileNotFoundError:
        raise UsageError(f"{flag}: no such file") from None
    except OSError as e:
        raise UsageError(f"{flag}: cannot read it ({e.strerror or e})") from None
    if len(data) > MAX_TOKEN_FILE:
        raise UsageError(f"{flag}: more than {MAX_TOKEN_FILE} bytes; a token is one line")
    token = data.strip().decode("ascii", "replace")
    if not token:
        raise UsageError(f"{flag}: the file is empty")
    if any(not "!" <= c <= "~" for c in token):
        raise UsageError(f"{flag}: the token must be one word of printable ASCII")
    if len(token) < MIN_TOKEN_LENGTH:
        raise UsageError(f"{flag}: the token is shorter than {MIN_TOKEN_LENGTH} characters "
                         "(make one with: openssl rand -hex 32 > FILE)")
    if mode & 0o066:
        log(f"warning: {flag}: group or others may read or write it "
            f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it")
    return token


def bind_listen(text: str) -> socket.socket:
    """A listening socket for ``--listen HOST:PORT`` (PORT alone: 127.0.0.1; 0: a free one).

    Raises:
        UsageError: a bad address, or one that cannot be bound.
    """
    return bind_metrics(text, flag="--listen", min_port=0)


def resolve_save_path(save_path: str, root: str) -> str:
    """Where a torrent's files go: ``""`` stays ``""`` (the default: ``root``);
    otherwise the absolute path, links resolved, which must lie inside ``root``.

    Raises:
        UsageError: ``save_path`` resolves outside ``root``, or is too long.
    """
    if save_path == "":
        return ""
    if len(save_path.encode("utf-8", "surrogateescape")) > MAX_SAVE_PATH or "\0" in save_path:
        raise UsageError(f"save_path: longer than {MAX_SAVE_PATH} bytes or holds a NUL")
    base = os.path.realpath(root)
    full = os.path.realpath(os.path.join(base, save_path))
    if os.path.commonpath([base, full]) != base:
        raise UsageError(f"save_path: {save_path[:200]!r} is outside the download "
                         f"directory {base}")
    return full


def _parse_body(body: bytes) -> TorrentSpec:
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        raise UsageError("body: not valid JSON") from None
    return TorrentSpec.from_json(obj)


def _status_json(s: TorrentStatus) -> dict[str, Any]:
    d = asdict(s)
    for k, v in d.items():
        if isinstance(v, float) and not math.isfinite(v):
            d[k] = 0.0  # JSON has no NaN or infinity
    return d


# -- answers ---------------------------------------------------------------------------------
class _Answer(web.HTTPException):
    """An error answer with its JSON body (raised from a handler)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        self.status_code = status
        text = message.replace("\n", " ")[:MAX_ERROR_TEXT]
        super().__init__(text=json.dumps({"error": text}), content_type="application/json",
                         headers=headers)


def _fail(status: int, message: str) -> NoReturn:
    raise _Answer(status, message)


def _engine_error(e: FastTorrentError) -> NoReturn:
    """The answer to an error the engine raised: whose fault it is decides the status."""
    if isinstance(e, AlreadyAdded):
        _fail(409, str(e))
    if isinstance(e, UsageError | InvalidTorrent):
        _fail(400, str(e))
    if isinstance(e, DiskFull | ResourceExhausted):
        _fail(507, str(e))
    _fail(500, str(e))


#: The JSON text of the errors aiohttp raises itself (the router's, the body limit).
_AIOHTTP_ERRORS = {404: "no such endpoint", 405: "method not allowed on this endpoint",
                   413: f"body: more than {MAX_BODY} bytes"}


@web.middleware
async def _json_errors(request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
    try:
        return await handler(request)
    except _Answer:
        raise
    except web.HTTPException as e:
        if e.status < 400:
            raise
        headers = {k: v for k, v in e.headers.items() if k in ("Allow",)}
        raise _Answer(e.status, _AIOHTTP_ERRORS.get(e.status, e.reason), headers) from None
    except Exception as e:  # a bug of ours or the engine's: logged, and the daemon serves on
        _log.exception("daemon: %s %s failed", request.method, request.path)
        raise _Answer(500, f"internal error (a bug in fasttorrent): "
                           f"{e.__class__.__name__}") from None


def _digest(token: str) -> bytes:
    """Hashed first, so the comparison takes the same time whatever the lengths."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


# -- the application -------------------------------------------------------------------------
class _Api:
    """The handlers, over one engine, one token, one download root and a state directory."""

    def __init__(self, engine: EngineAPI, token: str, root: str, state: StateDir | None,
                 log: Log) -> None:
        self.engine = engine
        self.digest = _digest(token)
        self.root = os.path.realpath(root)
        self.state = state
        self.log = log
        #: adds still in the engine's hands: counted against MAX_TORRENTS
        self.adding = 0
        #: one state write at a time, in the order asked (pause then resume stays resumed)
        self.state_lock = asyncio.Lock()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(engine.metrics_collector())

    @web.middleware
    async def auth(self, request: web.Request,
                   handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                   ) -> web.StreamResponse:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(_digest(given.strip()),
                                                                 self.digest):
            raise _Answer(401, "missing or wrong bearer token (Authorization: Bearer TOKEN)",
                          {"WWW-Authenticate": 'Bearer realm="fasttorrent"'})
        return await handler(request)

    async def _record(self, what: str, write: Callable[[], None]) -> FastTorrentError | None:
        """Run a state write on a thread, in order; its error, or None."""
        if self.state is None:
            return None
        async with self.state_lock:
            try:
                await asyncio.to_thread(write)
            except FastTorrentError as e:
                self.log(f"warning: state directory: {what}: {e}")
                return e
        return None

    @staticmethod
    def _hash(request: web.Request) -> str:
        ih = request.match_info["info_hash"]
        if not _HASH_RE.fullmatch(ih):
            _fail(400, "info_hash: expected 40 hex digits")
        return ih.lower()

    def _status(self, ih: str) -> web.Response:
        try:
            return web.json_response(_status_json(self.engine.status(ih)))
        except KeyError:
            _fail(404, f"info_hash: no torrent {ih}")

    async def add(self, request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_BODY:
            _fail(413, _AIOHTTP_ERRORS[413])
        body = await request.read()  # 413 past client_max_size, also when chunked
        try:
            spec = (await asyncio.to_thread(_parse_body, body)
                    if len(body) > INLINE_PARSE_LIMIT else _parse_body(body))
            spec = replace(spec, save_path=resolve_save_path(spec.save_path, self.root))
        except UsageError as e:
            _fail(400, str(e))
        if len(self.engine.torrents()) + self.adding >= MAX_TORRENTS:
            _fail(507, f"the daemon holds {MAX_TORRENTS} torrents, its most")
        self.adding += 1
        try:
            ih = await self.engine.add(spec)
        except FastTorrentError as e:
            _engine_error(e)
        finally:
            self.adding -= 1
        state = self.state
        if state is not None:
            err = await self._record(f"recording {ih}", lambda: state.save(ih, spec))
            if err is not None:  # not recorded: not kept, or a restart would lose it
                try:
                    await self.engine.remove(ih, False)
                except (KeyError, FastTorrentError) as e2:
                    self.log(f"warning: removing {ih} again: {e2}")
                _fail(507 if isinstance(err, DiskFull) else 500,
                      f"state directory: cannot record the torrent: {err}")
        return web.json_response({"info_hash": ih})

    async def list_all(self, _request: web.Request) -> web.Response:
        return web.json_response([_status_json(s) for s in self.engine.torrents()])

    async def get(self, request: web.Request) -> web.Response:
        return self._status(self._hash(request))

    async def pause(self, request: web.Request) -> web.Response:
        return await self._pause(request, True)

    async def resume(self, request: web.Request) -> web.Response:
        return await self._pause(request, False)

    async def _pause(self, request: web.Request, paused: bool) -> web.Response:
        ih = self._hash(request)
        try:
            await (self.engine.pause(ih) if paused else self.engine.resume(ih))
        except KeyError:
            _fail(404, f"info_hash: no torrent {ih}")
        except FastTorrentError as e:
            _engine_error(e)
        state = self.state
        if state is not None:  # a failure is a warning: the torrent is paused all the same
            await self._record(f"recording {ih} paused={paused}",
                               lambda: state.set_paused(ih, paused))
        return self._status(ih)

    async def delete(self, request: web.Request) -> web.Response:
        ih = self._hash(request)
        values = request.query.getall("delete_data", [])
        if len(values) > 1 or (values and values[0] not in ("true", "false")):
            _fail(400, "delete_data: expected true or false")
        try:
            await self.engine.remove(ih, bool(values) and values[0] == "true")
        except KeyError:
            _fail(404, f"info_hash: no torrent {ih}")
        except FastTorrentError as e:
            _engine_error(e)
        state = self.state
        if state is not None:
            await self._record(f"forgetting {ih}", lambda: state.remove(ih))
        return web.json_response({"info_hash": ih})

    async def metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE})


def make_app(engine: EngineAPI, token: str, *, download_dir: str,
             state: StateDir | None = None, log: Log = _stderr) -> web.Application:
    """The control API over ``engine`` (see the module's docstring for the endpoints).

    Args:
        engine: the torrents.
        token: what ``Authorization: Bearer`` must carry.
        download_dir: the root every ``save_path`` must lie under.
        state: where each torrent added is recorded; None: nowhere.
        log: called with one-line warnings.
    """
    api = _Api(engine, token, download_dir, state, log)
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_json_errors, api.auth])
    t = f"{API_PREFIX}/torrents"
    app.router.add_post(t, api.add)
    app.router.add_get(t, api.list_all)
    app.router.add_get(t + "/{info_hash}", api.get)
    app.router.add_delete(t + "/{info_hash}", api.delete)
    app.router.add_post(t + "/{info_hash}/pause", api.pause)
    app.router.add_post(t + "/{info_hash}/resume", api.resume)
    app.router.add_get("/metrics", api.metrics)
    return app


class Daemon(SocketServer):
    """The control API of ``engine`` served on ``sock`` (see :func:`make_app` for the rest).

    Args:
        sock: a listening socket (:func:`bind_listen`); closed by :meth:`close`.
    """

    def __init__(self, engine: EngineAPI, token: str, sock: socket.socket, *,
                 download_dir: str, state: StateDir | None = None, log: Log = _stderr) -> None:
        super().__init__(sock, shutdown_timeout=SHUTDOWN_GRACE)
        self.app = make_app(engine, token, download_dir=download_dir, state=state, log=log)

    def make_app(self) -> web.Application:
        return self.app


# -- the command -----------------------------------------------------------------------------
async def restore(engine: EngineAPI, state: StateDir, download_dir: str,
                  log: Log = _stderr) -> int:
    """Add every torrent the state directory records; return how many the engine took.

    A record the engine refuses (a save path now outside ``download_dir``, a
    torrent it finds invalid, one it already holds) is one warning, and kept.
    """
    n = 0
    for ih, spec in state.load().items():
        try:
            spec = replace(spec, save_path=resolve_save_path(spec.save_path, download_dir))
            got = await engine.add(spec)
        except FastTorrentError as e:
            log(f"warning: state record {ih}: not restored: {e}")
            continue
        n += 1
        if got != ih:  # a URL that serves another torrent now: its record follows
            try:
                state.save(got, spec)
                state.remove(ih)
            except FastTorrentError as e:
                log(f"warning: state record {ih}: {e}")
    return n


def _make_engine(opts: Options, download_dir: str, state_dir: str,
                 max_active: int | None = None) -> AbstractAsyncContextManager[EngineAPI]:
    """The engine (``torrent/service.py`` on ``torrent/engine.py``), imported only now.

    The engine is an async context manager: entered before the API serves
    (its workers start), left after the API closed (its torrents stop, their
    state saved).  It gets the run's options, the default download directory
    and the state directory (its DHT table goes there).

    Raises:
        UsageError: the engine is not part of this installation.
    """
    try:
        from .service import Service
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.service":
            raise
        raise UsageError("the engine is not available in this installation") from None
    from .options import DEFAULT_MAX_ACTIVE

    engine: AbstractAsyncContextManager[EngineAPI] = Service(
        opts, download_dir=download_dir, state_dir=state_dir,
        max_active=max_active or DEFAULT_MAX_ACTIVE)
    return engine


async def _serve(engine_cm: AbstractAsyncContextManager[EngineAPI], token: str,
                 sock: socket.socket, download_dir: str, state: StateDir, log: Log,
                 ready: Callable[[int, int], None]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with engine_cm as engine:
        restored = await restore(engine, state, download_dir, log)
        if stop.is_set():  # stopped while restoring
            return
        daemon = Daemon(engine, token, sock, download_dir=download_dir, state=state, log=log)
        await daemon.start()
        try:
            ready(daemon.port, restored)
            await stop.wait()
        finally:
            await daemon.close()


def run_daemon(opts: Options, *, listen: str, token_file: str, download_dir: str,
               state_dir: str, log: Log = _stderr,
               ready: Callable[[int, int], None] | None = None,
               make_engine: Callable[..., AbstractAsyncContextManager[EngineAPI]] = _make_engine,
               max_active: int | None = None) -> int:
    """``fasttorrent daemon``: serve the control API until SIGINT or SIGTERM (then 0).

    Args:
        opts: the engine's options (workers, ports, limits, DHT).
        listen: ``--listen HOST:PORT``.
        token_file: ``--token-file``.
        download_dir: the default save path and the root of every other one (made
            when missing).
        state_dir: the records of the torrents (see ``torrent/daemonstate.py``).
        log: called with one-line messages.
        ready: called with the API's port and the number of torrents restored, once it serves.
        make_engine: builds the engine, ``(opts, download_dir, state_dir, max_active)``
            (the default imports ``torrent/service.py``).
        max_active: torrents downloading at once (None: the default).

    Raises:
        UsageError: a bad token file, listen address, or no engine.
        StorageError: the directories cannot be made.
    """
    from .storage import os_error

    token = read_token(token_file, log)
    download_dir = os.path.abspath(download_dir)
    try:
        os.makedirs(download_dir, exist_ok=True)
    except OSError as e:
        raise os_error(e, f"making the download directory {download_dir}") from None
    state = StateDir(state_dir, log)
    sock = bind_listen(listen)
    try:
        engine_cm = make_engine(opts, download_dir, state_dir, max_active)
        _run(_serve(engine_cm, token, sock, download_dir, state, log,
                    ready or (lambda port, n: None)))
    finally:
        sock.close()
    return 0


def _run(coro: Any) -> None:
    """The daemon's loop: uvloop (asyncio where uvloop is missing)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    uvloop.run(coro)
