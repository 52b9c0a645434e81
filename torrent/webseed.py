"""Web seeds (BEP 19): HTTP servers as sources of pieces, the sans-IO part.

Theory of operation
-------------------
A web seed is an HTTP(S) URL that serves the torrent's files.  It comes from
the torrent's ``url-list``, a magnet's ``ws=`` or ``--web-seed``.  Every
worker fetches from every web seed on its own connections; the coordinator's
leases decide which pieces a worker fetches, as for peers, and the worker
hands a web seed runs of consecutive leased pieces.

This module holds what needs no socket and no clock:

- :func:`file_url`: the URL of one file (BEP 19: a URL ending in ``/`` gets
  the torrent's name appended, and for a multi-file torrent each file's
  path, every component percent-encoded);
- :class:`RangePlanner`: a run of pieces as one ``Range`` request per file
  segment (a piece spanning files becomes several), pad files (BEP 47) left
  out to be zero-filled locally, never requested;
- :func:`check_response`: what to do with a response's status line and
  headers (read it, the file is missing, back off, or an error), before any
  byte of its body is read;
- :class:`SeedState`: one seed's failures, back-off and missing files, with
  ``now`` passed in; a seed failing :data:`MAX_FAILURES` times in a row is
  dropped.

The I/O (aiohttp) is ``torrent/net/webseed.py``; the worker's side (slots,
the picker, the native verify-and-write path) is ``torrent/webseed_worker.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from urllib.parse import quote

from .spans import TorrentFile, file_segments, pieces_of_file

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_MAX",
    "MAX_BUSY",
    "MAX_FAILURES",
    "MAX_REDIRECTS",
    "MAX_REQUESTS_IN_FLIGHT",
    "MAX_REQUEST_BYTES",
    "MAX_RETRY_AFTER",
    "MAX_URL_LENGTH",
    "MAX_WEB_SEEDS",
    "MAX_WHOLE_FILE_BODY",
    "Plan",
    "RangePlanner",
    "SeedState",
    "Segment",
    "Verdict",
    "VerdictKind",
    "check_response",
    "checked_url",
    "file_url",
    "parse_retry_after",
    "request_pieces",
    "web_seed_urls",
]

#: Web seeds of one torrent at most (url-list, ws= and --web-seed together;
#: a magnet with more is refused, a torrent's list is cut here).  Real
#: torrents list a handful of mirrors; each one costs every worker a
#: connection or two.
MAX_WEB_SEEDS = 100
#: Longest URL taken (as for a magnet's values).
MAX_URL_LENGTH = 4096
#: Bytes asked for in one request at most: libtorrent asks up to 16 MiB of a
#: web seed at once.  Large requests keep a keep-alive connection busy (one
#: round trip per 16 MiB); the run is still finished piece by piece, so a
#: slot is handed to the verifier as soon as its piece has arrived.
MAX_REQUEST_BYTES = 16 << 20
#: Requests in flight per web seed and worker: two keep the link busy across
#: the round trip between one request's end and the next one's first byte.
MAX_REQUESTS_IN_FLIGHT = 2
#: Redirects followed per request at most (a loop ends there, as an error).
MAX_REDIRECTS = 5
#: A server that answers a ``Range`` request with the whole file (200) is
#: read only when the whole file is at most this big: a small file costs
#: little to read whole; a large one would be read whole for each request.
MAX_WHOLE_FILE_BODY = 4 << 20
#: Failed requests in a row after which a seed is dropped (for this worker).
MAX_FAILURES = 5
#: 503 / 429 answers in a row after which a seed is dropped: a server that is
#: always busy is as useless as a broken one, but it says so politely.
MAX_BUSY = 30
#: Back-off after a failure: BACKOFF_BASE x 2^(failures - 1), at most BACKOFF_MAX.
BACKOFF_BASE = 0.5
BACKOFF_MAX = 60.0
#: A ``Retry-After`` is honoured up to this many seconds (a server asking for
#: a day's pause is answered by dropping it when it keeps asking).
MAX_RETRY_AFTER = 300.0

_SCHEMES = ("http://", "https://")
_CONTROL_RE = re.compile(r"[\x00-\x20\x7f]")
_CONTENT_RANGE_RE = re.compile(r"\s*bytes\s+(\d{1,19})-(\d{1,19})/(\d{1,19}|\*)\s*\Z", re.I)


def checked_url(url: str) -> str | None:
    """``url`` stripped if it is a usable web seed (http or https, bounded, no spaces
    or control characters inside), else None."""
    url = url.strip()
    if not url.lower().startswith(_SCHEMES) or len(url) > MAX_URL_LENGTH \
            or _CONTROL_RE.search(url) or len(url) <= len("https://"):
        return None
    return url


def web_seed_urls(*sources: Iterable[str]) -> tuple[str, ...]:
    """The usable URLs of ``sources`` (iterables of URLs), first ones first, without
    duplicates, at most MAX_WEB_SEEDS."""
    out: list[str] = []
    for urls in sources:
        for u in urls:
            url = checked_url(u)
            if url is not None and url not in out and len(out) < MAX_WEB_SEEDS:
                out.append(url)
    return tuple(out)


def file_url(base: str, multi_file: bool, path: str) -> str:
    """The URL of one file of the torrent on web seed ``base`` (BEP 19).

    Args:
        base: the web seed's URL.
        multi_file: the torrent has a file list (the URL is then a directory).
        path: the file's path as the torrent has it ('/'-separated; for a
            multi-file torrent it starts with the torrent's name).

    Returns:
        Single file: ``base`` as it is, or with the name appended when it ends
        in ``/``.  Several files: ``base`` as a directory with the file's path
        appended.  Each path component is percent-encoded.
    """
    tail = "/".join(quote(c, safe="") for c in path.split("/"))
    if multi_file:
        return base + ("" if base.endswith("/") else "/") + tail
    return base + tail if base.endswith("/") else base


@dataclass(frozen=True, slots=True)
class Segment:
    """One request: ``length`` bytes of file ``file`` from ``file_offset``, which are
    the torrent's bytes from ``offset``."""

    file: int
    file_offset: int
    length: int
    offset: int


@dataclass(frozen=True, slots=True)
class Plan:
    """A run of pieces: its requests in order, and the pad ranges to zero-fill
    (``(offset, length)`` in the torrent's byte space)."""

    start: int
    end: int
    segments: tuple[Segment, ...]
    pads: tuple[tuple[int, int], ...]


class RangePlanner:
    """Runs of pieces as requests per file segment (a bisect over the file offsets)."""

    __slots__ = ("_offsets", "files", "piece_length", "total_size")

    def __init__(self, files: Sequence[TorrentFile], piece_length: int, total_size: int) -> None:
        self.files = tuple(files)
        self.piece_length = piece_length
        self.total_size = total_size
        self._offsets = [f.offset for f in self.files]

    def plan(self, first: int, count: int) -> Plan:
        """The requests for pieces ``first .. first + count - 1``."""
        pl = self.piece_length
        start = first * pl
        end = min(self.total_size, (first + count) * pl)
        segs: list[Segment] = []
        pads: list[tuple[int, int]] = []
        for i, file_off, range_off, n in file_segments(self.files, self._offsets, start,
                                                       end - start):
            if self.files[i].pad:
                pads.append((start + range_off, n))
            else:
                segs.append(Segment(i, file_off, n, start + range_off))
        return Plan(start, end, tuple(segs), tuple(pads))

    def files_of(self, first: int, count: int) -> list[int]:
        """The non-pad files holding bytes of pieces ``first .. first + count - 1``."""
        return [s.file for s in self.plan(first, count).segments]

    def pieces_of_file(self, k: int) -> range:
        """The pieces holding any byte of file ``k`` (empty for a zero-length file)."""
        return pieces_of_file(self.files[k], self.piece_length)


def request_pieces(piece_length: int, free_slots: int) -> int:
    """Pieces in one run: MAX_REQUEST_BYTES' worth (at least one), no more than the
    free slots."""
    return max(0, min(max(1, MAX_REQUEST_BYTES // piece_length), free_slots))


class VerdictKind(IntEnum):
    """What to do with a response (:func:`check_response`)."""

    READ = 0  # read the body: skip ``skip`` bytes, then the ``length`` asked for
    MISSING = 1  # the file is not there (404, 410): drop that file for this seed
    BUSY = 2  # 503 / 429: back off (``retry_after`` when the server said)
    FAIL = 3  # an error for this request (``reason``)


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: VerdictKind
    skip: int = 0
    retry_after: float | None = None
    reason: str = ""


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds, bounded by
    MAX_RETRY_AFTER); None when absent or an HTTP date (then the usual back-off)."""
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit() or len(value) > 9:
        return None
    return min(float(int(value)), MAX_RETRY_AFTER)


def check_response(status: int, content_range: str | None, content_length: int | None,
                   retry_after: str | None, *, start: int, length: int,
                   file_size: int) -> Verdict:
    """Judge a response to ``Range: bytes=start-(start+length-1)`` of a file of
    ``file_size`` bytes, from its status and headers.

    Returns:
        READ for a 206 whose ``Content-Range`` is exactly the range asked for
        (and whose ``Content-Length``, if any, is its length), or for a 200
        carrying the whole file when that is at most MAX_WHOLE_FILE_BODY
        (``skip``: the bytes before the range); MISSING for 404 and 410; BUSY
        for 503 and 429; FAIL for anything else (416, another status, a
        mismatched range or length, a 200 for a large file).
    """
    if status == 206:
        m = _CONTENT_RANGE_RE.match(content_range or "")
        if m is None:
            return Verdict(VerdictKind.FAIL, reason=f"206 without a usable Content-Range "
                                                   f"({(content_range or '')[:80]!r})")
        first, last, total = int(m.group(1)), int(m.group(2)), m.group(3)
        if first != start or last != start + length - 1:
            return Verdict(VerdictKind.FAIL, reason=f"Content-Range {first}-{last} for "
                                                   f"{start}-{start + length - 1}")
        if total != "*" and int(total) != file_size:
            return Verdict(VerdictKind.FAIL, reason=f"file is {total} bytes there, "
                                                   f"{file_size} in the torrent")
        if content_length is not None and content_length != length:
            return Verdict(VerdictKind.FAIL, reason=f"Content-Length {content_length} for "
                                                   f"{length} bytes")
        return Verdict(VerdictKind.READ)
    if status == 200:
        if content_length != file_size:
            return Verdict(VerdictKind.FAIL, reason=f"200 instead of 206 with a body of "
                                                   f"{content_length} bytes, not the file's "
                                                   f"{file_size}")
        if file_size > MAX_WHOLE_FILE_BODY:
            return Verdict(VerdictKind.FAIL, reason=f"200 instead of 206 for a file of "
                                                   f"{file_size} bytes (no Range support)")
        return Verdict(VerdictKind.READ, skip=start)
    if status in (404, 410):
        return Verdict(VerdictKind.MISSING, reason=f"HTTP {status}")
    if status in (503, 429):
        return Verdict(VerdictKind.BUSY, retry_after=parse_retry_after(retry_after),
                       reason=f"HTTP {status}")
    if status == 416:
        return Verdict(VerdictKind.FAIL, reason="416 range not satisfiable")
    return Verdict(VerdictKind.FAIL, reason=f"HTTP {status}")


class SeedState:
    """One web seed as one worker sees it: failures, back-off, missing files, drop.

    Every method that depends on time takes ``now``.  A success resets the
    counts of failures and busy answers; :data:`MAX_FAILURES` failures (or
    :data:`MAX_BUSY` busy answers) in a row drop the seed, as does a ban or
    every file missing.
    """

    __slots__ = ("backoff_until", "busy", "dropped", "failures", "last_error", "missing", "url")

    def __init__(self, url: str) -> None:
        self.url = url
        self.failures = 0
        self.busy = 0
        self.backoff_until = 0.0
        self.missing: set[int] = set()  # files it answered 404 for
        self.dropped: str | None = None  # why it is no longer used
        self.last_error = ""

    def usable(self, now: float) -> bool:
        """Not dropped, and not backing off."""
        return self.dropped is None and now >= self.backoff_until

    def succeeded(self) -> None:
        self.failures = 0
        self.busy = 0

    def failed(self, now: float, reason: str) -> bool:
        """A request failed; returns True when this drops the seed."""
        self.last_error = reason
        self.failures += 1
        if self.failures >= MAX_FAILURES and self.dropped is None:
            self.dropped = f"{self.failures} failed requests in a row, the last: {reason}"
            return True
        self.backoff_until = now + min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (self.failures - 1))
        return False

    def busy_answer(self, now: float, retry_after: float | None, reason: str) -> bool:
        """503 / 429: pause for its ``Retry-After`` (else the usual back-off);
        returns True when this drops the seed."""
        self.last_error = reason
        self.busy += 1
        if self.busy >= MAX_BUSY and self.dropped is None:
            self.dropped = f"busy ({reason}) {self.busy} times in a row"
            return True
        pause = retry_after if retry_after is not None else \
            min(BACKOFF_MAX, BACKOFF_BASE * 2 ** min(self.busy - 1, 16))
        self.backoff_until = max(self.backoff_until, now + pause)
        return False

    def file_missing(self, k: int, files: int) -> bool:
        """File ``k`` is not on this seed; returns True when none of the torrent's
        ``files`` (non-pad, non-empty) is left, which drops it."""
        self.missing.add(k)
        if len(self.missing) >= files and self.dropped is None:
            self.dropped = "none of the torrent's files is there (404)"
            return True
        return False

    def ban(self, reason: str) -> None:
        self.dropped = f"banned: {reason}"
