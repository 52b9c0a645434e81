"""The HTTP adapter of web seeds (BEP 19): one aiohttp session per worker.

Theory of operation
-------------------
:class:`HttpFetcher` sends one ``Range`` request and hands the body's bytes,
as aiohttp receives them (one ``bytes`` per read of the socket, never joined),
to a ``sink`` callback that copies them into the piece slots: the one copy
of web-seed data.  Everything it decides comes from
:func:`torrent.webseed.check_response` (status and headers) and the length
asked for (a body longer or shorter than that is an error); every failure
aiohttp or the OS reports (reset, refused, redirect loop, time-out) becomes
a FAIL verdict with a one-line reason.  HTTP/1.1 keep-alive comes from the
session's connection pool; HTTPS uses the system's CA store (aiohttp's
default ``ssl`` context).  The policy (which runs, back-off, bans) is the
worker's (``torrent/webseed_worker.py``) and the sans-IO core's.
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

from .. import __version__
from ..webseed import MAX_REDIRECTS, Verdict, VerdictKind, check_response

__all__ = ["CONNECT_TIMEOUT", "READ_BUFFER", "READ_TIMEOUT", "HttpFetcher"]

#: Seconds to connect to a web seed (DNS and TLS included).
CONNECT_TIMEOUT = 10.0
#: Seconds without a byte from a web seed before its request fails.  A slow
#: server that keeps trickling is not failed for it: the endgame hands its
#: pieces to faster sources instead.
READ_TIMEOUT = 30.0
#: What aiohttp buffers of a body before it stops reading the socket (its
#: flow control): 1 MiB lets uvloop read large chunks.
READ_BUFFER = 1 << 20
#: Connections per host (and per worker): the requests in flight per seed.
CONNECTIONS_PER_HOST = 4


class HttpFetcher:
    """One worker's HTTP client for every web seed (created on its running loop)."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=CONNECTIONS_PER_HOST,
                                               enable_cleanup_closed=False),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT,
                                              sock_read=READ_TIMEOUT),
                headers={"User-Agent": f"fasttorrent/{__version__}",
                         "Accept-Encoding": "identity"},
                auto_decompress=False, read_bufsize=READ_BUFFER,
                cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def fetch(self, url: str, start: int, length: int, file_size: int,
                    sink: Callable[[memoryview], None]) -> Verdict:
        """Fetch bytes ``start .. start + length - 1`` of the file at ``url`` into ``sink``.

        Returns:
            READ when all ``length`` bytes went to ``sink``; else MISSING, BUSY
            or FAIL (``sink`` may have had part of the range).
        """
        session = self._get_session()
        headers = {"Range": f"bytes={start}-{start + length - 1}"}
        try:
            async with session.get(url, headers=headers, allow_redirects=True,
                                   max_redirects=MAX_REDIRECTS) as resp:
                enc = resp.headers.get("Content-Encoding", "identity").strip().lower()
                if enc not in ("identity", ""):
                    return Verdict(VerdictKind.FAIL, reason=f"Content-Encoding {enc[:40]}")
                verdict = check_response(resp.status, resp.headers.get("Content-Range"),
                                         resp.content_length, resp.headers.get("Retry-After"),
                                         start=start, length=length, file_size=file_size)
                if verdict.kind is not VerdictKind.READ:
                    return verdict
                body = length if resp.status == 206 else file_size
                return await _read_body(resp.content, verdict.skip, length, body, sink)
        except aiohttp.TooManyRedirects:
            return Verdict(VerdictKind.FAIL, reason=f"more than {MAX_REDIRECTS} redirects")
        except aiohttp.ClientResponseError as e:
            return Verdict(VerdictKind.FAIL, reason=f"bad response: {e.message}"[:200])
        except aiohttp.ClientPayloadError as e:
            return Verdict(VerdictKind.FAIL, reason=f"body cut short: {e}"[:200])
        except aiohttp.ClientConnectorError as e:
            return Verdict(VerdictKind.FAIL, reason=f"cannot connect: {e.strerror or e}"[:200])
        except aiohttp.ClientError as e:
            return Verdict(VerdictKind.FAIL, reason=f"{e.__class__.__name__}: {e}"[:200])
        except TimeoutError:
            return Verdict(VerdictKind.FAIL, reason="timed out")
        except (OSError, ValueError) as e:  # ValueError: a URL aiohttp cannot use
            return Verdict(VerdictKind.FAIL, reason=f"{e.__class__.__name__}: {e}"[:200])

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


async def _read_body(content: aiohttp.StreamReader, skip: int, length: int, body: int,
                     sink: Callable[[memoryview], None]) -> Verdict:
    """Skip ``skip`` bytes, give the next ``length`` to ``sink``; the body must be
    ``body`` bytes long (the range; or the whole file, for a 200)."""
    end = skip + length
    pos = 0
    while True:
        chunk, _ = await content.readchunk()  # one buffered read, never a join
        if not chunk:
            break
        n = len(chunk)
        lo = max(skip - pos, 0)
        hi = min(end - pos, n)
        if lo < hi:
            sink(memoryview(chunk)[lo:hi])
        pos += n
        if pos > body:
            return Verdict(VerdictKind.FAIL, reason=f"body longer than the {body} bytes expected")
    if pos < body:
        return Verdict(VerdictKind.FAIL, reason=f"body of {pos} bytes, {body} expected")
    return Verdict(VerdictKind.READ)
