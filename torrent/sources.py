"""Torrent sources of a batch run: command-line arguments, ``--input FILE`` lines,
.torrent URLs; the batch's path collisions and its one exit code.

Theory of operation
-------------------
A run may name many torrents (``fasttorrent download T1 T2 'magnet:...'``,
``--input FILE``).  Each becomes a frozen :class:`Source`: a ``kind`` (a
.torrent ``file``, a ``magnet`` link, or an http(s) ``url`` of a .torrent),
the text as given, and where it was given (``FILE:LINE``, or the command
line).  Everything here is checked before any torrent starts, so a typo on
line 9,000 of a list stops the run at once with a one-line error naming that
line, not after hours of downloading the first 8,999.

- :func:`classify` tells the kinds apart by the text alone (no I/O):
  ``magnet:`` (any case) is a magnet, parsed once here so that a broken link
  is refused with its line; ``http://`` / ``https://`` a URL (a host, no
  whitespace, at most :data:`MAX_URL_LENGTH`); any other URI scheme
  (``ftp:``, ``file:``, ``data:``: letters, digits, ``+ - .``, then ``:``)
  is refused; anything else is a file path.  So a file whose name starts
  with ``word:`` (``Re:Zero.torrent``) is written ``./Re:Zero.torrent``; the
  error says so.  A control character refuses any source: it has no place in
  a URL, and a name printed on a terminal must not carry one.
- :func:`read_input` reads a list (see its docstring for the format).
- :func:`fetch_torrent_url` / :func:`load_url` GET a .torrent over http(s)
  (aiohttp) with every length and time bounded, and hand the bytes to the
  strict reader (:func:`torrent.metainfo.parse`).
- :func:`check_collisions` refuses a batch in which two torrents would write
  the same path, or one a file where another needs a directory (sans-IO).
- :func:`batch_exit_code` folds the torrents' exit codes into the run's.

Errors: an input file that cannot be read, or is over a bound as a whole, is
the command's fault (:class:`~torrent.errors.UsageError`, exit 2); a bad
line, a URL that cannot be fetched or does not hold a .torrent, is the
torrent's (:class:`~torrent.errors.InvalidTorrent`, exit 3, like a .torrent
file that is missing or unreadable, which :func:`torrent.metainfo.load`
reports the same way).  A fetch that times out is exit 3 too: the run cannot
start that torrent, and a retry is the operator's call.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from . import __version__
from .errors import (
    EXIT_INTERNAL,
    EXIT_OK,
    DiskFull,
    Incomplete,
    Interrupted,
    InvalidTorrent,
    ResourceExhausted,
    StorageError,
    UsageError,
)
from .magnet import MAX_MAGNET_LENGTH, parse_magnet
from .metainfo import MAX_TORRENT_SIZE, Metainfo, parse

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "EXIT_SEVERITY",
    "MAX_INPUT_BYTES",
    "MAX_LINE_LENGTH",
    "MAX_SOURCES",
    "MAX_TORRENT_DOWNLOAD",
    "MAX_URL_LENGTH",
    "MAX_URL_REDIRECTS",
    "URL_TIMEOUT",
    "PathClaims",
    "PathCollision",
    "Source",
    "SourceKind",
    "batch_exit_code",
    "check_collisions",
    "classify",
    "fetch_torrent_url",
    "load_url",
    "read_input",
]

#: Largest ``--input`` file read, in bytes: 100,000 magnets with a few
#: trackers each are ~30 MB at worst, typical lists a few KB; a bigger file is
#: refused after one bounded read.
MAX_INPUT_BYTES = 16 * 1024 * 1024
#: Most torrents one input file may list: each costs a Source now and a
#: torrent's state later; a fleet's batch is hundreds to thousands.
MAX_SOURCES = 100_000
#: Longest line of an input file, in characters: the longest magnet link
#: accepted (:data:`torrent.magnet.MAX_MAGNET_LENGTH`) is the longest source.
MAX_LINE_LENGTH = MAX_MAGNET_LENGTH
#: Longest http(s) URL of a .torrent, in characters. Signed download links
#: (a token in the query) run to 2-3 KB; servers refuse request lines over
#: ~8 KB (nginx's large_client_header_buffers).
MAX_URL_LENGTH = 8 * 1024
#: Largest .torrent body read from a URL: the strict reader's own bound.
MAX_TORRENT_DOWNLOAD = MAX_TORRENT_SIZE
#: Seconds for a whole URL fetch (connect, redirects, the body): enough for
#: the largest .torrent at ~0.5 MB/s; a typical one (< 1 MB) takes well under 1 s.
URL_TIMEOUT = 120.0
#: Redirects followed from a .torrent URL (a download page's mirror choice, an
#: http -> https upgrade; browsers allow 20, curl 50, but no real chain is long).
MAX_URL_REDIRECTS = 5

#: Shown of a source or URL in an error message, in characters.
_SHOWN = 200
#: Shown of a server's reason phrase, in characters.
_SHOWN_REASON = 80

_MAGNET = "magnet:"
_HTTP_SCHEMES = ("http", "https")
# RFC 3986 section 3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL, C1
_SPACE_RE = re.compile(r"\s")
# A comment: '#' first on a line, or after whitespace (see read_input).
_COMMENT_RE = re.compile(r"(?:\A|\s)#")
_BOM = b"\xef\xbb\xbf"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_STDIN = "-"
_HEADERS = {
    "User-Agent": f"fasttorrent/{__version__}",
    "Accept": "application/x-bittorrent, */*;q=0.5",
    # a compressed body would be inflated outside our byte count: ask for none
    "Accept-Encoding": "identity",
}


#: What a source names: a .torrent file, a magnet link, an http(s) URL of a .torrent.
SourceKind = Literal["file", "magnet", "url"]


@dataclass(frozen=True, slots=True)
class Source:
    """One torrent named by the user.

    Attributes:
        kind: ``"file"`` (a .torrent path), ``"magnet"`` or ``"url"`` (http or
            https).
        text: the path or URI as given, surrounding whitespace trimmed. A
            relative path is relative to the current directory, wherever it
            was given.
        line: its 1-based line in the input file; 0 for a command-line argument.
        origin: the input file's path as given (``"-"`` for stdin); ``""`` for
            a command-line argument.
    """

    kind: SourceKind
    text: str
    line: int = 0
    origin: str = ""

    @property
    def where(self) -> str:
        """``FILE:LINE`` (``stdin:LINE``) for an input-file line; ``""`` for an argument."""
        return _where(self.origin, self.line)


def _where(origin: str, line: int) -> str:
    if not origin:
        return ""
    return f"{'stdin' if origin == _STDIN else origin}:{line}"


def _short(text: str, limit: int = _SHOWN) -> str:
    """A bounded repr for error messages."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def _prefixed(where: str, message: str) -> str:
    return f"{where}: {message}" if where else message


def _url_problem(url: str) -> str | None:
    """Why ``url`` (already known to start with http:// or https://) cannot be fetched,
    or None."""
    if len(url) > MAX_URL_LENGTH:
        return f"URL is {len(url)} characters, more than {MAX_URL_LENGTH}"
    if _SPACE_RE.search(url):
        return f"URL contains whitespace (write a space as %20): {_short(url)}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError as e:
        return f"malformed URL ({e}): {_short(url)}"
    if not parts.hostname:
        return f"URL has no host: {_short(url)}"
    return None


def classify(text: str, *, line: int = 0, origin: str = "") -> Source:
    """The :class:`Source` that ``text`` names (rules in the module's docstring).

    Args:
        text: a .torrent path, a magnet link or an http(s) URL; surrounding
            whitespace is trimmed.
        line: its line in the input file (1-based), 0 for a command-line argument.
        origin: the input file ("-" for stdin), "" for a command-line argument.

    Returns:
        The source; a magnet has been parsed (and found valid), a URL checked
        (host, length, no whitespace), a file path not touched.

    Raises:
        InvalidTorrent: empty, over :data:`MAX_LINE_LENGTH`, a control
            character, another URI scheme, a malformed magnet or URL; the
            message starts with ``FILE:LINE:`` for an input-file line.
    """
    where = _where(origin, line)
    if len(text) > MAX_LINE_LENGTH:
        raise InvalidTorrent(_prefixed(
            where, f"{len(text)} characters, more than {MAX_LINE_LENGTH}: {_short(text)}"))
    text = text.strip()
    if not text:
        raise InvalidTorrent(_prefixed(where, "empty torrent name"))
    if _CONTROL_RE.search(text):
        raise InvalidTorrent(_prefixed(where, f"contains a control character: {_short(text)}"))
    m = _SCHEME_RE.match(text)
    prefix = m[0] if m else ""  # "scheme:"
    scheme = prefix[:-1].lower()
    if scheme == _MAGNET[:-1]:
        try:
            parse_magnet(text)
        except InvalidTorrent as e:
            raise InvalidTorrent(_prefixed(where, str(e))) from None
        return Source("magnet", text, line, origin)
    if scheme in _HTTP_SCHEMES:
        problem = _url_problem(text)
        if problem:
            raise InvalidTorrent(_prefixed(where, problem))
        return Source("url", text, line, origin)
    if scheme:
        hint = "" if text[len(scheme) + 1 :].startswith("//") else \
            f"; for a file of that name write {_short('./' + text)}"
        raise InvalidTorrent(_prefixed(
            where, f"unsupported URL scheme {prefix!r} in {_short(text)} (a torrent is a"
            f" .torrent file, a magnet link or an http(s) URL){hint}"))
    return Source("file", text, line, origin)


def _strip_comment(line: str) -> str:
    m = _COMMENT_RE.search(line)
    return line[: m.start()] if m else line


def read_input(path: str | os.PathLike[str]) -> list[Source]:
    """The sources listed in ``--input FILE`` (``-``: standard input).

    The format (one torrent a line, as in aria2's ``-i`` list, without its
    per-line options):

    - one .torrent path, magnet link or http(s) URL a line, surrounding
      whitespace trimmed; LF or CRLF line ends; a UTF-8 byte-order mark at the
      start is skipped; the text must be UTF-8;
    - blank lines are skipped;
    - ``#`` starts a comment when it is the first character of the line (after
      any whitespace) or follows whitespace (``a.torrent  # Debian``), to the
      end of the line.  A ``#`` right after another character is part of the
      source: a URL's fragment (``http://host/x.torrent#top``), a magnet's
      (``magnet:?xt=...#x``), a file named ``disc#2.torrent``.  Links hold no
      whitespace (it is percent-encoded), so no link is cut; a path whose
      name holds whitespace followed by ``#`` cannot be listed (give it on
      the command line);
    - a relative path is relative to the current directory, not to the input
      file's directory (as aria2 ``-i`` and wget ``-i`` do), and ``~`` is not
      expanded (no shell reads the file).

    Args:
        path: the input file, or ``"-"`` for standard input.

    Returns:
        The sources in file order, each with its line number; an empty list
        for a file of only comments and blank lines.

    Raises:
        UsageError: the file cannot be read, is larger than
            :data:`MAX_INPUT_BYTES`, or lists more than :data:`MAX_SOURCES`.
        InvalidTorrent: a line is not UTF-8, longer than
            :data:`MAX_LINE_LENGTH`, or not a valid source (:func:`classify`);
            the message starts with ``FILE:LINE:``.
    """
    origin = os.fspath(path)
    shown = "stdin" if origin == _STDIN else origin
    try:
        if origin == _STDIN:
            data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
        else:
            with open(origin, "rb") as f:
                data = f.read(MAX_INPUT_BYTES + 1)
    except OSError as e:
        reason = e.strerror or e.__class__.__name__
        raise UsageError(f"cannot read input file {shown!r}: {reason}") from None
    if len(data) > MAX_INPUT_BYTES:
        raise UsageError(f"input file {shown!r} is larger than {MAX_INPUT_BYTES} bytes")
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise InvalidTorrent(
            f"{shown}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column {column})"
        ) from None
    out: list[Source] = []
    for number, raw in enumerate(text.split("\n"), 1):
        if raw.endswith("\r"):
            raw = raw[:-1]
        if len(raw) > MAX_LINE_LENGTH:
            raise InvalidTorrent(
                f"{shown}:{number}: line is {len(raw)} characters, more than {MAX_LINE_LENGTH}")
        item = _strip_comment(raw).strip()
        if not item:
            continue
        if len(out) >= MAX_SOURCES:
            raise UsageError(
                f"input file {shown!r} lists more than {MAX_SOURCES} torrents (line {number})")
        out.append(classify(item, line=number, origin=origin))
    return out


# -- fetching a .torrent over http(s) --------------------------------------------------------


def _cannot(url: str, why: str) -> InvalidTorrent:
    return InvalidTorrent(f"cannot fetch {_short(url)}: {why}")


def _reason(text: str | None) -> str:
    """A server's reason phrase, bounded and without control characters."""
    return _CONTROL_RE.sub("?", (text or "").strip())[:_SHOWN_REASON]


async def _read_capped(content: aiohttp.StreamReader, max_bytes: int, url: str) -> bytes:
    """The body, read up to ``max_bytes``; one byte more refuses it (never buffered
    beyond ``max_bytes + 1`` by us; aiohttp's own buffer is its read_bufsize)."""
    buf = bytearray()
    while True:
        chunk = await content.read(max_bytes + 1 - len(buf))
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > max_bytes:
            raise _cannot(url, f"the body is larger than {max_bytes} bytes")


async def _get(session: aiohttp.ClientSession, url: str, max_bytes: int,
               max_redirects: int) -> bytes:
    """GET ``url``, following at most ``max_redirects`` redirects, each target checked
    like a URL the user typed."""
    import aiohttp
    from yarl import URL

    target = URL(url, encoded=False)
    for _hop in range(max_redirects + 1):
        async with session.get(target, headers=_HEADERS, allow_redirects=False) as resp:
            if resp.status in _REDIRECTS:
                location = resp.headers.get("Location")
                if not location:
                    raise _cannot(url, f"{resp.status} redirect without a Location")
                try:
                    nxt = resp.url.join(URL(location))
                except ValueError:
                    raise _cannot(url, f"redirected to a malformed URL {_short(location)}") \
                        from None
                shown = str(nxt)
                if nxt.scheme not in _HTTP_SCHEMES:
                    raise _cannot(url, f"redirected to {_short(shown)}, which is not"
                                  " an http(s) URL")
                problem = _url_problem(shown)
                if problem:
                    raise _cannot(url, f"redirected: {problem}")
                target = nxt
                continue
            if not 200 <= resp.status < 300:
                raise _cannot(url, f"{resp.status} {_reason(resp.reason)}".rstrip())
            encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding not in ("identity", ""):
                raise _cannot(url, f"the server sent a {_reason(encoding)}-encoded body"
                              " (identity was asked for)")
            if resp.content_length is not None and resp.content_length > max_bytes:
                raise _cannot(url, f"the body is {resp.content_length} bytes, more than"
                              f" {max_bytes}")
            try:
                return await _read_capped(resp.content, max_bytes, url)
            except aiohttp.ClientPayloadError as e:
                raise _cannot(url, f"the body was cut short ({_reason(str(e))})") from None
    raise _cannot(url, f"more than {max_redirects} redirects")


async def fetch_torrent_url(url: str, *, timeout: float = URL_TIMEOUT,
                            max_bytes: int = MAX_TORRENT_DOWNLOAD,
                            max_redirects: int = MAX_URL_REDIRECTS,
                            session: aiohttp.ClientSession | None = None) -> bytes:
    """GET a .torrent over http(s) and return its bytes, unparsed.

    Redirects (301, 302, 303, 307, 308) are followed here, not by aiohttp, so
    that each target passes the same check as a URL on the command line
    (http or https, a host, bounded, no whitespace); a body is never
    decompressed (``Accept-Encoding: identity``; a compressed answer is
    refused), so ``max_bytes`` bounds what is held. No cookies are kept and no
    proxy is used (aiohttp's defaults: ``HTTP_PROXY`` is not read).

    Args:
        url: an http:// or https:// URL.
        timeout: seconds for the whole fetch, redirects and body included.
        max_bytes: largest body accepted; a Content-Length over it is refused
            before a byte is read, a body without one when byte
            ``max_bytes + 1`` arrives.
        max_redirects: redirects followed before giving up.
        session: an aiohttp session to use (a batch may share one); by default
            one is made and closed for this fetch.

    Returns:
        The body.

    Raises:
        InvalidTorrent: ``cannot fetch 'URL': WHY``: not an http(s) URL, a
            status outside 2xx (``404 Not Found``), too many redirects or one
            to another scheme, a body over ``max_bytes``, a compressed or cut
            body, no answer within ``timeout``, a refused or failed connection.
    """
    import aiohttp

    m = _SCHEME_RE.match(url)
    if not m or m[0][:-1].lower() not in _HTTP_SCHEMES:
        raise _cannot(url, "not an http(s) URL")
    problem = _url_problem(url)
    if problem:
        raise _cannot(url, problem)
    own = session is None
    try:
        async with asyncio.timeout(timeout):
            if session is None:
                session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                                auto_decompress=False)
            return await _get(session, url, max_bytes, max_redirects)
    except TimeoutError:
        raise _cannot(url, f"no complete answer within {timeout:g} s") from None
    except aiohttp.ClientConnectorError as e:
        err = e.os_error
        why = os.strerror(err.errno) if err.errno else str(err) or e.__class__.__name__
        raise _cannot(url, f"cannot connect: {_reason(why)}") from None
    except aiohttp.ClientError as e:  # a reset, a malformed response, a TLS failure
        raise _cannot(url, f"{e.__class__.__name__}: {_reason(str(e))}") from None
    except (OSError, ValueError) as e:  # ValueError: a URL yarl or aiohttp cannot use
        raise _cannot(url, f"{e.__class__.__name__}: {_reason(str(e))}") from None
    finally:
        if own and session is not None:
            await session.close()


async def load_url(url: str, *, timeout: float = URL_TIMEOUT,
                   max_bytes: int = MAX_TORRENT_DOWNLOAD,
                   max_redirects: int = MAX_URL_REDIRECTS,
                   session: aiohttp.ClientSession | None = None) -> Metainfo:
    """Fetch a .torrent (:func:`fetch_torrent_url`) and read it with the strict reader.

    Returns:
        Its metainfo (a v2-only torrent too: the caller decides, as for
        :func:`torrent.metainfo.load`).

    Raises:
        InvalidTorrent: the fetch failed, or the body is not a valid .torrent
            (an HTML page, say): ``'URL': invalid torrent: WHY``.
    """
    data = await fetch_torrent_url(url, timeout=timeout, max_bytes=max_bytes,
                                   max_redirects=max_redirects, session=session)
    try:
        return parse(data)
    except InvalidTorrent as e:
        raise InvalidTorrent(f"{_short(url)}: {e}") from None


# -- a batch: collisions and the exit code -----------------------------------------------------


class PathCollision(UsageError):
    """Two torrents would write over each other; ``other`` is the key of the one
    already holding the path."""

    def __init__(self, message: str, other: str) -> None:
        super().__init__(message)
        self.other = other


class PathClaims:
    """The paths the torrents of a run write, claimed one torrent at a time.

    Two torrents collide when both would write the same path, or when one
    would write a file at a path the other needs as a directory (``/o/a`` and
    ``/o/a/b``). Paths are compared as strings after :func:`os.path.normpath`
    (no symbolic link is followed, no file is touched: this runs before
    anything is created); Linux file names are case-sensitive, so ``A`` and
    ``a`` do not collide. Collisions inside one torrent are the strict
    reader's business, not this table's. A claim costs its files' paths and
    their ancestors, whatever was claimed before (a batch of many torrents
    checks in linear time); a released torrent's paths are free again.
    """

    def __init__(self) -> None:
        self._files: dict[str, str] = {}  # path -> key of the torrent writing it
        #: directory -> {key of a torrent that needs it: one of its files below}
        self._dirs: dict[str, dict[str, str]] = {}
        self._labels: dict[str, str] = {}
        self._mine: dict[str, tuple[list[str], set[str]]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._mine

    def claim(self, key: str, label: str, files: Iterable[str]) -> None:
        """Record torrent ``key``'s files (named ``label`` in messages), or refuse them all.

        Raises:
            PathCollision: one of them collides with a torrent claimed before
                (the first in the order given), naming both torrents and the path.
            ValueError: a path is not absolute (a caller's bug), or ``key`` is claimed.
        """
        if key in self._mine:
            raise ValueError(f"torrent {key!r} is claimed already")
        mine: list[str] = []
        dirs: dict[str, str] = {}  # directory -> the first of our files below it
        for p in files:
            if not os.path.isabs(p):
                raise ValueError(f"not an absolute path: {p!r} (torrent {label!r})")
            p = os.path.normpath(p)
            j = self._files.get(p)
            if j is not None:
                raise PathCollision(f"torrents {self._labels[j]!r} and {label!r} would both "
                                    f"write {p!r}", j)
            needing = self._dirs.get(p)
            if needing:
                k, below = next(iter(needing.items()))
                raise PathCollision(
                    f"torrent {label!r} would write the file {p!r}, where torrent"
                    f" {self._labels[k]!r} needs a directory (for {below!r})", k)
            mine.append(p)
            d = os.path.dirname(p)
            while d not in dirs:
                k2 = self._files.get(d)
                if k2 is not None:
                    raise PathCollision(
                        f"torrent {self._labels[k2]!r} would write the file {d!r}, where "
                        f"torrent {label!r} needs a directory (for {p!r})", k2)
                dirs[d] = p
                parent = os.path.dirname(d)
                if parent == d:
                    break
                d = parent
        self._labels[key] = label
        self._mine[key] = (mine, set(dirs))
        for p in mine:
            self._files[p] = key
        for d, below in dirs.items():
            self._dirs.setdefault(d, {})[key] = below

    def release(self, key: str) -> None:
        """Forget torrent ``key``'s paths (nothing if it holds none)."""
        got = self._mine.pop(key, None)
        if got is None:
            return
        files, dirs = got
        for p in files:
            self._files.pop(p, None)
        for d in dirs:
            needing = self._dirs.get(d)
            if needing is not None:
                needing.pop(key, None)
                if not needing:
                    del self._dirs[d]
        self._labels.pop(key, None)


def check_collisions(items: Sequence[tuple[str, Iterable[str]]]) -> None:
    """Refuse a batch in which two torrents would write over each other
    (:class:`PathClaims`, the torrents claimed in the order given).

    Args:
        items: per torrent, its name for messages (display name or info-hash)
            and the absolute paths of the files it would write.

    Raises:
        UsageError: the first collision in the order given, naming both
            torrents and the path.
        ValueError: a path is not absolute (a caller's bug).
    """
    claims = PathClaims()
    for i, (name, files) in enumerate(items):
        claims.claim(str(i), name, files)


#: Exit codes from worst to least bad, for :func:`batch_exit_code`. The run's
#: code is what the operator should look at first:
#:
#: 1. internal (1): a bug; nothing else the run says can be trusted;
#: 2. disk full (4), resource exhausted (8), storage (5): the machine is short
#:    of space, memory or rights, which every torrent of the batch (and the
#:    next run) hits too, so a retry cannot help until someone acts;
#: 3. usage (2), invalid torrent (3): the command or one torrent is wrong;
#:    a retry gives the same answer, but the rest of the batch is fine;
#: 4. incomplete (6): the swarm did not deliver (no peers, a stall); the data
#:    saved resumes, and a later retry may well succeed by itself;
#: 5. interrupted (7): the operator asked for it, state was saved; any real
#:    failure of another torrent outranks it.
EXIT_SEVERITY: tuple[int, ...] = (
    EXIT_INTERNAL,
    DiskFull.exit_code,
    ResourceExhausted.exit_code,
    StorageError.exit_code,
    UsageError.exit_code,
    InvalidTorrent.exit_code,
    Incomplete.exit_code,
    Interrupted.exit_code,
)


def batch_exit_code(codes: Iterable[int]) -> int:
    """The exit code of a batch: 0 when every torrent's was 0, else the worst of them
    by :data:`EXIT_SEVERITY`.

    A code outside that table (a child killed by a signal, say) is counted as
    internal (1): it is unexplained, which errors.py calls a bug of ours.
    """
    worst = EXIT_OK
    rank = len(EXIT_SEVERITY)
    for code in codes:
        if code == EXIT_OK:
            continue
        if code not in EXIT_SEVERITY:
            code = EXIT_INTERNAL
        r = EXIT_SEVERITY.index(code)
        if r < rank:
            worst, rank = code, r
    return worst
