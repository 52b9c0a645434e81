"""Torrent sources of a batch run (torrent/sources.py).

- :func:`classify`: the three kinds, any case of the scheme, the refusals
  (other schemes, control characters, broken magnets and URLs), each naming
  ``FILE:LINE`` for an input-file line;
- :func:`read_input`: comments (and ``#`` kept inside links and names),
  blank lines, CRLF, a BOM, stdin, every bound at and one past it, non-UTF-8,
  unreadable files;
- :func:`fetch_torrent_url` / :func:`load_url`: a real nginx on 127.0.0.1
  serving a .torrent, its 404 and an HTML page; small aiohttp servers of our
  own on 127.0.0.1 for the hostile cases (5xx, bodies over the cap with and
  without Content-Length, a server that never finishes against a short
  injected time-out, redirects to ftp: and in a loop, a compressed or cut
  body, a refused connection).  Each scenario runs under a time bound;
  outcomes are asserted, never durations;
- :func:`check_collisions` and :func:`batch_exit_code`.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import require_binary
from helpers.nginx import Nginx

from torrent import errors, metainfo
from torrent.creator import create_torrent
from torrent.errors import InvalidTorrent, UsageError
from torrent.sources import (
    EXIT_SEVERITY,
    MAX_INPUT_BYTES,
    MAX_LINE_LENGTH,
    MAX_SOURCES,
    MAX_TORRENT_DOWNLOAD,
    MAX_URL_LENGTH,
    MAX_URL_REDIRECTS,
    PathClaims,
    PathCollision,
    Source,
    batch_exit_code,
    check_collisions,
    classify,
    fetch_torrent_url,
    load_url,
    read_input,
)

pytestmark = pytest.mark.timeout(120)

#: Seconds any one scenario (its servers and fetches) may take before it fails.
SCENARIO_BOUND = 30.0
#: The short time-out injected into the fetch of a server that never finishes.
SHORT_TIMEOUT = 0.3

HASH = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a"
MAGNET = f"magnet:?xt=urn:btih:{HASH}&dn=Debian"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on a fresh loop, bounded by SCENARIO_BOUND."""
    return asyncio.run(asyncio.wait_for(coro, SCENARIO_BOUND))


def raises(exc: type[Exception], awaitable: Awaitable[Any]) -> str:
    """Run ``awaitable``; it must raise ``exc``: its message."""
    async def go() -> None:
        await awaitable

    with pytest.raises(exc) as info:
        run(go())
    return str(info.value)


# -- classify ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "kind"), [
    (MAGNET, "magnet"),
    ("MAGNET:?xt=urn:btih:" + HASH, "magnet"),
    ("Magnet:?xt=urn:btih:" + HASH + "#frag", "magnet"),
    ("http://127.0.0.1/a.torrent", "url"),
    ("https://example.org:8443/dl?id=5&t=x#top", "url"),
    ("HTTPS://example.org/a.torrent", "url"),
    ("a.torrent", "file"),
    ("/srv/torrents/a b.torrent", "file"),
    ("dir/Re:Zero.torrent", "file"),  # a colon after a slash: no scheme
    ("./Re:Zero.torrent", "file"),
    ("disc#2.torrent", "file"),
    ("1:2.torrent", "file"),  # a scheme starts with a letter
])
def test_classify_kinds(text: str, kind: str) -> None:
    src = classify(f"  {text}\t ")
    assert src == Source(kind, text, 0, "")
    assert src.where == ""


def test_classify_keeps_the_line_and_origin() -> None:
    src = classify("x.torrent", line=7, origin="list.txt")
    assert (src.kind, src.text, src.line, src.origin, src.where) == \
        ("file", "x.torrent", 7, "list.txt", "list.txt:7")
    assert classify("x", line=2, origin="-").where == "stdin:2"


@pytest.mark.parametrize(("text", "why"), [
    ("ftp://host/a.torrent", "unsupported URL scheme 'ftp:'"),
    ("file:///srv/a.torrent", "unsupported URL scheme 'file:'"),
    ("FTP://host/a.torrent", "unsupported URL scheme 'FTP:'"),
    ("data:application/x-bittorrent;base64,ZA==", "unsupported URL scheme 'data:'"),
    ("udp://tracker:80", "unsupported URL scheme 'udp:'"),
    ("", "empty torrent name"),
    ("   ", "empty torrent name"),
    ("a\x00b.torrent", "control character"),
    ("a\x1b[31mred.torrent", "control character"),
    ("http://host/a\tb", "control character"),
    ("magnet:?xt=urn:btih:1234", "invalid magnet: xt"),
    ("magnet:?dn=x", "invalid magnet: xt: missing"),
    ("http://", "URL has no host"),
    ("https:///a.torrent", "URL has no host"),
    ("http://host/a b.torrent", "URL contains whitespace"),
    ("http://host:99999/a", "malformed URL"),
    ("http://[::1/a", "malformed URL"),
    ("http://h/" + "a" * MAX_URL_LENGTH, f"more than {MAX_URL_LENGTH}"),
])
def test_classify_refuses(text: str, why: str) -> None:
    with pytest.raises(InvalidTorrent) as info:
        classify(text)
    assert why in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(InvalidTorrent) as info:
        classify(text, line=12, origin="batch.txt")
    assert str(info.value).startswith("batch.txt:12: ")
    assert why in str(info.value)


def test_a_name_that_looks_like_a_scheme_is_told_how_to_be_a_file() -> None:
    with pytest.raises(InvalidTorrent, match=r"for a file of that name write './Re:Zero.torrent'"):
        classify("Re:Zero.torrent")
    with pytest.raises(InvalidTorrent) as info:  # a real URL gets no such hint
        classify("ftp://host/x")
    assert "for a file" not in str(info.value)


def test_classify_bounds_the_text() -> None:
    assert classify("a" * MAX_LINE_LENGTH).kind == "file"
    with pytest.raises(InvalidTorrent, match=f"more than {MAX_LINE_LENGTH}"):
        classify("a" * (MAX_LINE_LENGTH + 1))
    assert classify("http://h/" + "a" * (MAX_URL_LENGTH - 9)).kind == "url"


def test_errors_carry_their_exit_codes() -> None:
    assert InvalidTorrent.exit_code == 3 and UsageError.exit_code == 2


# -- read_input --------------------------------------------------------------------------------


def write(tmp_path: Path, data: bytes | str, name: str = "list.txt") -> Path:
    p = tmp_path / name
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def kinds(sources: list[Source]) -> list[tuple[str, str, int]]:
    return [(s.kind, s.text, s.line) for s in sources]


def test_input_comments_blank_lines_and_hashes_inside_sources(tmp_path: Path) -> None:
    p = write(tmp_path, "\n".join([
        "# a batch",                                  # 1
        "",                                           # 2
        "a.torrent",                                  # 3
        "   # an indented comment",                   # 4
        "http://h/x.torrent#frag   # a trailing one", # 5
        f"{MAGNET}#not-a-comment",                    # 6
        "disc#2.torrent",                             # 7
        "b.torrent\t# after a tab",                   # 8
        "   \t  ",                                    # 9
        "#",                                          # 10
        "/abs/c d.torrent #",                         # 11
        "",
    ]))
    got = read_input(p)
    assert kinds(got) == [
        ("file", "a.torrent", 3),
        ("url", "http://h/x.torrent#frag", 5),
        ("magnet", f"{MAGNET}#not-a-comment", 6),
        ("file", "disc#2.torrent", 7),
        ("file", "b.torrent", 8),
        ("file", "/abs/c d.torrent", 11),
    ]
    assert {s.origin for s in got} == {str(p)}
    assert got[0].where == f"{p}:3"


def test_input_crlf_and_bom(tmp_path: Path) -> None:
    p = write(tmp_path, b"\xef\xbb\xbfa.torrent\r\n# c\r\n\r\n" + MAGNET.encode() + b"\r\n")
    assert kinds(read_input(p)) == [("file", "a.torrent", 1), ("magnet", MAGNET, 4)]


def test_input_without_a_final_newline_and_empty(tmp_path: Path) -> None:
    assert kinds(read_input(write(tmp_path, "a\nb"))) == [("file", "a", 1), ("file", "b", 2)]
    assert read_input(write(tmp_path, "", "empty.txt")) == []
    assert read_input(write(tmp_path, "# only\n\n  \n", "comments.txt")) == []


def test_input_relative_paths_are_kept_as_written(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative to the current directory, not the list's: the text is not rewritten."""
    sub = tmp_path / "lists"
    sub.mkdir()
    p = write(sub, "x/a.torrent\n../b.torrent\n")
    monkeypatch.chdir(tmp_path)
    assert [s.text for s in read_input(p)] == ["x/a.torrent", "../b.torrent"]


def test_input_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    data = f"a.torrent\n# c\n{MAGNET}\n".encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    got = read_input("-")
    assert kinds(got) == [("file", "a.torrent", 1), ("magnet", MAGNET, 3)]
    assert got[1].origin == "-" and got[1].where == "stdin:3"


def test_input_bad_line_names_file_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, "a.torrent\n\n# x\nftp://h/b.torrent\n")
    with pytest.raises(InvalidTorrent) as info:
        read_input(p)
    assert str(info.value).startswith(f"{p}:4: unsupported URL scheme 'ftp:'")


def test_input_bad_magnet_names_file_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, f"{MAGNET}\nmagnet:?xt=urn:btih:zz\n")
    with pytest.raises(InvalidTorrent, match=r":2: invalid magnet: xt"):
        read_input(p)


def test_input_not_utf8_names_the_line(tmp_path: Path) -> None:
    p = write(tmp_path, b"a.torrent\n# ok\nb\xe9.torrent\n")
    with pytest.raises(InvalidTorrent) as info:
        read_input(p)
    assert str(info.value) == f"{p}:3: not UTF-8 text (byte 0xe9 at column 2)"


def test_input_line_length_bound(tmp_path: Path) -> None:
    ok = "a" * MAX_LINE_LENGTH
    assert kinds(read_input(write(tmp_path, f"{ok}\r\n"))) == [("file", ok, 1)]
    p = write(tmp_path, f"x\n{ok}b\n", "long.txt")
    with pytest.raises(InvalidTorrent) as info:
        read_input(p)
    assert str(info.value) == (f"{p}:2: line is {MAX_LINE_LENGTH + 1} characters,"
                               f" more than {MAX_LINE_LENGTH}")


def test_input_source_count_bound(tmp_path: Path) -> None:
    body = "# header\n" + "a.torrent\n" * MAX_SOURCES + "# comments do not count\n\n"
    assert len(read_input(write(tmp_path, body))) == MAX_SOURCES
    p = write(tmp_path, body + "b.torrent\n", "many.txt")
    with pytest.raises(UsageError) as info:
        read_input(p)
    assert f"more than {MAX_SOURCES} torrents (line {MAX_SOURCES + 4})" in str(info.value)


def test_input_size_bound(tmp_path: Path) -> None:
    line = b"# " + b"x" * 1021 + b"\n"  # 1 KiB of comment
    full = line * (MAX_INPUT_BYTES // len(line))
    assert len(full) == MAX_INPUT_BYTES
    assert read_input(write(tmp_path, full)) == []
    p = write(tmp_path, full + b"a", "big.txt")
    with pytest.raises(UsageError, match=f"larger than {MAX_INPUT_BYTES} bytes"):
        read_input(p)


def test_input_unreadable(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        read_input(tmp_path / "missing.txt")
    assert str(info.value) == \
        f"cannot read input file {str(tmp_path / 'missing.txt')!r}: No such file or directory"
    with pytest.raises(UsageError, match="Is a directory"):
        read_input(tmp_path)


# -- fetching .torrent URLs: a real nginx --------------------------------------------------


@pytest.fixture
def torrent_bytes(tmp_path: Path) -> bytes:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(bytes(range(256)) * 700)
    return create_torrent(str(payload), piece_length=1 << 16)


def test_load_url_from_nginx(tmp_path: Path, torrent_bytes: bytes) -> None:
    require_binary("nginx")
    root = tmp_path / "www"
    root.mkdir()
    (root / "my file.torrent").write_bytes(torrent_bytes)
    (root / "index.html").write_text("<!doctype html><title>Downloads</title>\n")
    with Nginx(root, tmp_path / "ng") as ng:
        url = ng.url + "my%20file.torrent"
        assert classify(url).kind == "url"

        async def fetch_both() -> tuple[bytes, metainfo.Metainfo]:
            return await fetch_torrent_url(url), await load_url(url)

        data, meta = run(fetch_both())
        assert data == torrent_bytes
        assert meta.info_hash == metainfo.parse(torrent_bytes).info_hash
        assert meta.name == "payload.bin"
        # the cap: exactly the file's length is read; one byte less is refused before
        # the body (nginx sends Content-Length)
        assert run(fetch_torrent_url(url, max_bytes=len(torrent_bytes))) == torrent_bytes
        msg = raises(InvalidTorrent, fetch_torrent_url(url, max_bytes=len(torrent_bytes) - 1))
        assert msg == (f"cannot fetch {url!r}: the body is {len(torrent_bytes)} bytes,"
                       f" more than {len(torrent_bytes) - 1}")

        missing = ng.url + "nope.torrent"
        msg = raises(InvalidTorrent, load_url(missing))
        assert msg == f"cannot fetch {missing!r}: 404 Not Found"

        page = ng.url + "index.html"
        msg = raises(InvalidTorrent, load_url(page))
        assert msg.startswith(f"{page!r}: invalid torrent: not valid bencode")
        log = ng.access_log()
    assert [line.split()[1] for line in log] == [
        "/my%20file.torrent", "/my%20file.torrent", "/my%20file.torrent",
        "/my%20file.torrent", "/nope.torrent", "/index.html"]


# -- fetching .torrent URLs: hostile servers of our own ----------------------------------------


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serve(routes: dict[str, Handler]) -> AsyncIterator[str]:
    """An aiohttp server on 127.0.0.1 (this loop) with ``routes``; yields its base URL."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server: Any = site._server
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def fails_with(routes: dict[str, Handler], path: str, **kwargs: Any) -> tuple[str, str]:
    """Fetch ``path`` from a server with ``routes``: (the URL, the InvalidTorrent message)."""
    async def go() -> tuple[str, str]:
        async with serve(routes) as base:
            url = base + path
            with pytest.raises(InvalidTorrent) as info:
                await fetch_torrent_url(url, **kwargs)
            return url, str(info.value)

    return run(go())


@pytest.mark.parametrize(("status", "reason"), [
    (404, "Not Found"), (500, "Internal Server Error"), (403, "Forbidden"),
    (304, "Not Modified"), (300, "Multiple Choices")])
def test_status_outside_2xx(status: int, reason: str) -> None:
    async def h(_r: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=b"d4:infod" if status != 304 else None)

    url, msg = fails_with({"/t": h}, "/t")
    assert msg == f"cannot fetch {url!r}: {status} {reason}"


def test_a_hostile_reason_phrase_is_bounded_and_cleaned() -> None:
    """A raw server (aiohttp's own refuses to send a control character in a header)."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 502 Bad \x1b[31m" + b"x" * 500 + b"\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def go() -> tuple[str, str]:
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/t"
        try:
            with pytest.raises(InvalidTorrent) as info:
                await fetch_torrent_url(url)
        finally:
            server.close()
            await server.wait_closed()
        return url, str(info.value)

    url, msg = run(go())
    assert msg == f"cannot fetch {url!r}: " + ("502 " + ("Bad ?[31m" + "x" * 500)[:80])


def test_content_length_over_the_cap_is_refused_before_the_body() -> None:
    """The real cap: a Content-Length of one byte more is refused with the body unread
    (the server sends 1 KiB of it, then waits until the client has given up)."""
    done = asyncio.Event()

    async def h(r: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = MAX_TORRENT_DOWNLOAD + 1
        await resp.prepare(r)
        await resp.write(b"d" * 1024)
        await asyncio.wait_for(done.wait(), SCENARIO_BOUND)
        return resp

    async def go() -> tuple[str, str]:
        async with serve({"/t": h}) as base:
            with pytest.raises(InvalidTorrent) as info:
                await fetch_torrent_url(base + "/t")
            done.set()
            return base + "/t", str(info.value)

    url, msg = run(go())
    assert msg == (f"cannot fetch {url!r}: the body is {MAX_TORRENT_DOWNLOAD + 1} bytes,"
                   f" more than {MAX_TORRENT_DOWNLOAD}")


def chunked(total: int, sent: list[int], chunk: int = 1 << 16) -> Handler:
    """A chunked (no Content-Length) body of ``total`` bytes; ``sent[0]`` counts what the
    server got written before the client went away."""
    async def h(r: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(r)
        try:
            while sent[0] < total:
                n = min(chunk, total - sent[0])
                await resp.write(b"x" * n)
                sent[0] += n
            await resp.write_eof()
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            pass
        return resp

    return h


@pytest.mark.parametrize("over", [0, 1])
def test_a_chunked_body_is_read_up_to_the_cap(over: int) -> None:
    cap = 100_000
    sent = [0]

    async def go() -> bytes:
        async with serve({"/t": chunked(cap + over, sent, chunk=7_000)}) as base:
            return await fetch_torrent_url(base + "/t", max_bytes=cap)

    if over:
        with pytest.raises(InvalidTorrent, match=f"the body is larger than {cap} bytes"):
            run(go())
    else:
        assert run(go()) == b"x" * cap


def test_an_endless_body_is_dropped_at_the_cap() -> None:
    """Without Content-Length, the fetch stops when byte cap + 1 arrives and closes the
    connection: the server could not write more than the socket buffers held."""
    total = 512 << 20
    sent = [0]
    url, msg = fails_with({"/t": chunked(total, sent)}, "/t", max_bytes=10_000)
    assert msg == f"cannot fetch {url!r}: the body is larger than 10000 bytes"
    assert sent[0] < total


def test_a_server_that_never_finishes_hits_the_timeout() -> None:
    """Headers and part of the body, then nothing: the injected time-out ends the fetch."""
    done = asyncio.Event()

    async def part(r: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = 1000
        await resp.prepare(r)
        await resp.write(b"d" * 10)
        await asyncio.wait_for(done.wait(), SCENARIO_BOUND)
        return resp

    async def silent(_r: web.Request) -> web.StreamResponse:
        await asyncio.wait_for(done.wait(), SCENARIO_BOUND)
        return web.Response(body=b"late")

    async def go() -> list[str]:
        out = []
        async with serve({"/part": part, "/silent": silent}) as base:
            for path in ("/part", "/silent"):
                with pytest.raises(InvalidTorrent) as info:
                    await fetch_torrent_url(base + path, timeout=SHORT_TIMEOUT)
                out.append(str(info.value))
            done.set()
        return out

    for msg in run(go()):
        assert msg.endswith(f": no complete answer within {SHORT_TIMEOUT:g} s")


def test_a_redirect_to_another_scheme_is_refused() -> None:
    async def h(_r: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("ftp://127.0.0.1/a.torrent")

    url, msg = fails_with({"/t": h}, "/t")
    assert msg == (f"cannot fetch {url!r}: redirected to 'ftp://127.0.0.1/a.torrent',"
                   " which is not an http(s) URL")


def test_redirects_are_followed_up_to_the_bound(torrent_bytes: bytes) -> None:
    hops: list[str] = []

    async def hop(r: web.Request) -> web.StreamResponse:
        n = int(r.match_info["n"])
        hops.append(r.path)
        if n == 0:
            return web.Response(body=torrent_bytes)
        raise web.HTTPTemporaryRedirect(f"../{n - 1}/x" if n % 2 else
                                        f"http://127.0.0.1:{r.url.port}/hop/{n - 1}/x")

    async def go(start: int) -> bytes:
        async with serve({"/hop/{n}/x": hop}) as base:
            return await fetch_torrent_url(f"{base}/hop/{start}/x")

    assert run(go(MAX_URL_REDIRECTS)) == torrent_bytes
    assert len(hops) == MAX_URL_REDIRECTS + 1
    hops.clear()
    with pytest.raises(InvalidTorrent, match=f"more than {MAX_URL_REDIRECTS} redirects"):
        run(go(MAX_URL_REDIRECTS + 1))
    assert len(hops) == MAX_URL_REDIRECTS + 1  # the last redirect is not followed


def test_a_redirect_loop_and_a_redirect_without_location() -> None:
    count = [0]

    async def loop(_r: web.Request) -> web.StreamResponse:
        count[0] += 1
        raise web.HTTPMovedPermanently("/loop")

    async def bare(_r: web.Request) -> web.StreamResponse:
        return web.Response(status=302)

    _url, msg = fails_with({"/loop": loop}, "/loop", max_redirects=3)
    assert msg.endswith(": more than 3 redirects") and count[0] == 4
    _url, msg = fails_with({"/bare": bare}, "/bare")
    assert msg.endswith(": 302 redirect without a Location")


def test_a_compressed_body_is_refused() -> None:
    async def h(_r: web.Request) -> web.StreamResponse:
        return web.Response(body=b"\x1f\x8b" + b"\0" * 20, headers={"Content-Encoding": "gzip"})

    _url, msg = fails_with({"/t": h}, "/t")
    assert msg.endswith(": the server sent a gzip-encoded body (identity was asked for)")


def test_a_body_cut_short() -> None:
    async def h(r: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = 1000
        await resp.prepare(r)
        await resp.write(b"d" * 100)
        assert r.transport is not None
        r.transport.close()
        return resp

    _url, msg = fails_with({"/t": h}, "/t")
    assert ": the body was cut short" in msg


def test_html_is_not_a_torrent() -> None:
    async def h(_r: web.Request) -> web.StreamResponse:
        return web.Response(text="<html><body>Log in to download</body></html>",
                            content_type="text/html")

    async def go() -> tuple[str, str]:
        async with serve({"/dl": h}) as base:
            with pytest.raises(InvalidTorrent) as info:
                await load_url(base + "/dl")
            return base + "/dl", str(info.value)

    url, msg = run(go())
    assert msg.startswith(f"{url!r}: invalid torrent: not valid bencode")
    assert "\n" not in msg


def test_connection_refused() -> None:
    with socket.socket() as s:  # bound, never listening: a connect is refused
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/a.torrent"
        msg = raises(InvalidTorrent, fetch_torrent_url(url))
    assert msg == f"cannot fetch {url!r}: cannot connect: Connection refused"


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/a", "a.torrent", "http://", MAGNET,
                                 "http://h/a b"])
def test_fetch_refuses_what_is_not_an_http_url(url: str) -> None:
    msg = raises(InvalidTorrent, fetch_torrent_url(url))
    assert msg.startswith(f"cannot fetch {url!r}: ")


def test_a_shared_session_is_used_and_left_open(torrent_bytes: bytes) -> None:
    seen: list[str] = []

    async def h(r: web.Request) -> web.StreamResponse:
        seen.append(r.headers.get("User-Agent", ""))
        return web.Response(body=torrent_bytes)

    async def go() -> bool:
        async with serve({"/a": h, "/b": h}) as base, aiohttp.ClientSession() as session:
            metas = [await load_url(base + p, session=session) for p in ("/a", "/b")]
            assert all(m.info_hash == metas[0].info_hash for m in metas)
            return session.closed

    assert run(go()) is False
    assert len(seen) == 2 and all(ua.startswith("fasttorrent/") for ua in seen)


# -- collisions --------------------------------------------------------------------------------


def test_no_collision() -> None:
    check_collisions([])
    check_collisions([
        ("a", ["/o/a/x", "/o/a/sub/y"]),
        ("b", ["/o/ab/x", "/o/a.bin"]),  # siblings, and a name prefix that is no directory
        ("c", ["/o/a/z"]),  # a shared directory, a file of its own
        ("d", iter(["/p/q"])),  # any iterable, read once
    ])


def test_two_torrents_writing_one_file() -> None:
    with pytest.raises(UsageError) as info:
        check_collisions([("Debian", ["/o/iso/a"]), ("Ubuntu", ["/o/x", "/o/iso/a"])])
    assert str(info.value) == "torrents 'Debian' and 'Ubuntu' would both write '/o/iso/a'"


def test_paths_are_compared_normalised() -> None:
    with pytest.raises(UsageError, match="would both write '/o/a/x'"):
        check_collisions([("A", ["/o//a/./x"]), ("B", ["/o/a/x"])])


@pytest.mark.parametrize("file_first", [True, False])
def test_a_file_where_another_torrent_needs_a_directory(file_first: bool) -> None:
    items: list[tuple[str, list[str]]] = [("album", ["/o/album"]),
                                          ("box", ["/o/box/1", "/o/album/cd1/t.flac"])]
    if not file_first:
        items.reverse()
    with pytest.raises(UsageError) as info:
        check_collisions(items)
    assert str(info.value) == ("torrent 'album' would write the file '/o/album', where torrent"
                               " 'box' needs a directory (for '/o/album/cd1/t.flac')")


def test_a_collision_above_a_torrents_own_layout_is_still_seen() -> None:
    """A's own file-above-file is not judged here, and does not hide B's collision with it."""
    with pytest.raises(UsageError,
                       match=r"torrent 'A' would write the file '/o/x', where torrent 'B'"):
        check_collisions([("A", ["/o/x", "/o/x/y/z"]), ("B", ["/o/x/y/w"])])
    check_collisions([("A", ["/o/x", "/o/x/y/z"])])


def test_a_relative_path_is_a_callers_bug() -> None:
    with pytest.raises(ValueError, match="not an absolute path"):
        check_collisions([("A", ["o/x"])])


# -- the batch's exit code ---------------------------------------------------------------------


def test_the_severity_order() -> None:
    """Worst first: a bug; the machine (disk, memory, storage); the input; the swarm;
    an interruption (see EXIT_SEVERITY's comment for why)."""
    assert EXIT_SEVERITY == (1, 4, 8, 5, 2, 3, 6, 7)
    codes = {c.exit_code for c in vars(errors).values()
             if isinstance(c, type) and issubclass(c, errors.FastTorrentError)}
    assert set(EXIT_SEVERITY) == codes  # every code errors.py defines is ranked


def test_batch_exit_code() -> None:
    assert batch_exit_code([]) == 0
    assert batch_exit_code([0, 0, 0]) == 0
    assert batch_exit_code(iter([0, 7, 0])) == 7
    assert batch_exit_code([7, 6, 0]) == 6
    assert batch_exit_code([6, 3, 7]) == 3
    assert batch_exit_code([3, 2]) == 2
    assert batch_exit_code([2, 5, 6]) == 5
    assert batch_exit_code([5, 8]) == 8
    assert batch_exit_code([8, 4, 3]) == 4
    assert batch_exit_code([4, 1, 0]) == 1
    for worse, better in itertools.pairwise(EXIT_SEVERITY):
        assert batch_exit_code([better, worse]) == worse == batch_exit_code([worse, better])


def test_an_unknown_code_counts_as_internal() -> None:
    assert batch_exit_code([0, -9]) == 1
    assert batch_exit_code([137, 7]) == 1


def test_claims_name_the_holder_refuse_all_or_nothing_and_free_on_release() -> None:
    claims = PathClaims()
    claims.claim("a", "A", ["/o/a/x", "/o/shared/1"])
    with pytest.raises(PathCollision) as info:
        claims.claim("b", "B", ["/o/b/y", "/o/a"])  # a file where A needs a directory
    assert info.value.other == "a" and "'B' would write the file '/o/a'" in str(info.value)
    assert "b" not in claims
    claims.claim("c", "C", ["/o/b/y"])  # B's refused claim left nothing behind
    with pytest.raises(PathCollision) as info:
        claims.claim("d", "D", ["/o/shared/1"])
    assert info.value.other == "a"
    claims.release("a")
    claims.claim("d", "D", ["/o/shared/1", "/o/a"])  # A's paths and directories are free
    with pytest.raises(ValueError, match="claimed already"):
        claims.claim("d", "D", [])
