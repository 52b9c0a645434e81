"""HTTP tracker protocol (BEP 3, BEP 7, BEP 23), sans-IO.

Three pieces, none of which touches a socket or a clock:

- :func:`build_announce_url` / :func:`build_request`: what we send.
- :class:`HTTPResponseReader`: an HTTP/1.1 response parser fed with whatever
  bytes the socket produced (content-length, chunked, or close-delimited
  bodies), every length checked against a named bound before it is buffered.
- :func:`parse_announce_response`: the bencoded body turned into an
  :class:`~torrent.tracker.common.AnnounceResult`, or a
  :class:`~torrent.errors.TrackerError` saying what the tracker got wrong.

Missing ``interval``: we use DEFAULT_INTERVAL (as libtorrent does) instead of
failing, because the peers in such an answer are still good and minimal
trackers do omit it. A *malformed* interval (not an integer, negative) is a
TrackerError: a tracker that garbles a required field is not trusted with
peers either.
"""

from __future__ import annotations

import enum
from urllib.parse import quote_from_bytes, urlsplit

import bencodepy

from ..errors import TrackerError
from ..peeraddr import COMPACT_V4, COMPACT_V6, unpack_compact
from .common import (
    MAX_PEERS_PER_RESPONSE,
    AnnounceParams,
    AnnounceResult,
    Peer,
    check_event,
    clean_text,
    normalize_peer,
)

__all__ = [
    "DEFAULT_INTERVAL",
    "MAX_HEADER_SIZE",
    "MAX_RESPONSE_SIZE",
    "HTTPResponseReader",
    "announce_url_for",
    "build_announce_url",
    "build_request",
    "parse_announce_response",
    "split_http_url",
]

#: Largest announce body we accept. Why: 2000 compact peers take 12 KB; even a
#: dictionary peer list of MAX_PEERS_PER_RESPONSE fits well under 2 MiB, and
#: anything bigger is a broken or hostile tracker we refuse to buffer.
MAX_RESPONSE_SIZE = 2 * 1024 * 1024

#: Largest status line + headers block. Why: trackers send a handful of short
#: headers; 16 KiB is what many HTTP servers accept for requests, too.
MAX_HEADER_SIZE = 16 * 1024

#: Most header lines we accept. Why: bounds the per-header work and dict size.
MAX_HEADER_COUNT = 100

#: Longest chunk-size line (hex size plus chunk extensions, RFC 9112 §7.1).
MAX_CHUNK_LINE = 1024

#: Re-announce interval used when a tracker omits "interval" (seconds; the
#: value libtorrent assumes, and a common tracker default).
DEFAULT_INTERVAL = 1800

#: Longest "tracker id" we keep and echo back. Why: it is sent on every later
#: announce; real ones are short tokens.
MAX_TRACKER_ID_LENGTH = 256

_BDECODER = bencodepy.Bencode(encoding=None)


# --------------------------------------------------------------------------- request


def _pct(data: bytes) -> str:
    # quote_from_bytes leaves exactly RFC 3986's unreserved set (ALPHA DIGIT
    # "-" "." "_" "~") alone and writes "%XX" for everything else, which is
    # what BEP 3 asks for binary info_hash / peer_id.
    return quote_from_bytes(data, safe="")


def build_announce_url(
    base_url: str,
    *,
    info_hash: bytes,
    peer_id: bytes,
    port: int,
    uploaded: int,
    downloaded: int,
    left: int,
    event: str | None,
    numwant: int,
    compact: int = 1,
    key: int | None = None,
    trackerid: bytes | None = None,
) -> str:
    """Return the announce URL: ``base_url`` plus the BEP 3 query parameters.

    The parameters are appended with ``&`` if ``base_url`` already has a query
    (private trackers put passkeys there); a ``#fragment`` is dropped (it is
    never sent to a server).

    Args:
        base_url: the tracker's announce URL from the torrent.
        info_hash, peer_id: 20 raw bytes each, percent-encoded here.
        port, uploaded, downloaded, left, numwant: non-negative integers.
        event: "started", "completed", "stopped", or None/"" for none.
        compact: 1 asks for a compact peer list (BEP 23).
        key: 32-bit number, sent as 8 hex digits.
        trackerid: the tracker id a previous response gave us.

    Returns:
        The full URL.

    Raises:
        ValueError: an argument out of range (a bug of the caller).
    """
    params = AnnounceParams(
        info_hash=info_hash,
        peer_id=peer_id,
        port=port,
        uploaded=uploaded,
        downloaded=downloaded,
        left=left,
        event=check_event(event),
        numwant=numwant,
        key=key,
        tracker_id=trackerid,
    )
    if compact not in (0, 1):
        raise ValueError("compact must be 0 or 1")
    base = base_url.split("#", 1)[0]
    parts = [
        f"info_hash={_pct(params.info_hash)}",
        f"peer_id={_pct(params.peer_id)}",
        f"port={params.port}",
        f"uploaded={params.uploaded}",
        f"downloaded={params.downloaded}",
        f"left={params.left}",
        f"compact={compact}",
        f"numwant={params.numwant}",
    ]
    if params.event is not None:
        parts.append(f"event={params.event}")
    if params.key is not None:
        parts.append(f"key={params.key:08X}")
    if params.tracker_id is not None:
        parts.append(f"trackerid={_pct(params.tracker_id)}")
    query = "&".join(parts)
    if "?" not in base:
        sep = "?"
    elif base.endswith(("?", "&")):
        sep = ""
    else:
        sep = "&"
    return f"{base}{sep}{query}"


def announce_url_for(base_url: str, params: AnnounceParams) -> str:
    """:func:`build_announce_url` from an :class:`AnnounceParams` (compact=1)."""
    return build_announce_url(
        base_url,
        info_hash=params.info_hash,
        peer_id=params.peer_id,
        port=params.port,
        uploaded=params.uploaded,
        downloaded=params.downloaded,
        left=params.left,
        event=params.event,
        numwant=params.numwant,
        key=params.key,
        trackerid=params.tracker_id,
    )


def split_http_url(url: str) -> tuple[str, str, int, str]:
    """Split an http(s) URL into (scheme, host, port, request-target).

    Raises:
        TrackerError: not an http/https URL with a host (the torrent's fault).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TrackerError(f"bad tracker URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise TrackerError(f"not an HTTP tracker URL: {url!r}")
    host = parts.hostname
    if not host:
        raise TrackerError(f"tracker URL has no host: {url!r}")
    if port is None:
        port = 443 if scheme == "https" else 80
    if port == 0:
        raise TrackerError(f"tracker URL has port 0: {url!r}")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return scheme, host, port, target


def build_request(url: str, *, user_agent: str = "fasttorrent/0.1") -> bytes:
    """Return the bytes of an HTTP/1.1 GET for ``url`` (a full announce URL).

    ``Connection: close`` keeps the client simple (one request per connection);
    ``Accept-Encoding: identity`` because we do not decompress.

    Raises:
        TrackerError: a URL we cannot request (bad scheme, no host, control
            characters that would let a torrent inject headers).
    """
    scheme, host, port, target = split_http_url(url)
    if any(ord(ch) < 0x21 or ord(ch) > 0x7E for ch in target):
        raise TrackerError(f"tracker URL has characters that must be escaped: {url!r}")
    hostport = f"[{host}]" if ":" in host else host
    if port != (443 if scheme == "https" else 80):
        hostport += f":{port}"
    return (
        f"GET {target} HTTP/1.1\r\n"
        f"Host: {hostport}\r\n"
        f"User-Agent: {user_agent}\r\n"
        "Accept-Encoding: identity\r\n"
        "Connection: close\r\n"
        "\r\n"
    ).encode("ascii")


# --------------------------------------------------------------------------- response body


def _compact_peers(blob: bytes, width: int, key: str, out: dict[Peer, None]) -> None:
    """Add the peers of a compact list to ``out`` until it holds MAX_PEERS_PER_RESPONSE."""
    room = MAX_PEERS_PER_RESPONSE - len(out)
    try:
        # only what still fits is decoded: 100,000 peers cost no more than 2,000
        entries = unpack_compact(blob, width, room)
    except ValueError as exc:
        raise TrackerError(f"tracker sent a bad {key!r}: {exc}") from None
    for host, port in entries:
        peer = normalize_peer(host, port)
        if peer is not None:
            out[peer] = None


def _dict_peers(items: list[object], out: dict[Peer, None]) -> None:
    """Add the peers of a dictionary list to ``out`` until it holds MAX_PEERS_PER_RESPONSE."""
    for item in items:
        if len(out) >= MAX_PEERS_PER_RESPONSE:
            return
        # Malformed entries are dropped one by one, the way a bad compact
        # address is: one bad entry does not cost the good ones.
        if not isinstance(item, dict):
            continue
        ip = item.get(b"ip")
        port = item.get(b"port")
        if not isinstance(ip, bytes) or not isinstance(port, int) or len(ip) > 253:
            continue
        try:
            host = ip.decode("ascii")
        except UnicodeDecodeError:
            continue
        peer = normalize_peer(host, port)
        if peer is not None:
            out[peer] = None


def _opt_count(d: dict[bytes, object], key: bytes) -> int | None:
    value = d.get(key)
    # Optional statistics: a wrong type is ignored rather than fatal.
    if isinstance(value, int) and 0 <= value < 2**63:
        return value
    return None


def parse_announce_response(body: bytes) -> AnnounceResult:
    """Parse a tracker's bencoded announce response (BEP 3, BEP 7, BEP 23).

    Args:
        body: the HTTP body, at most MAX_RESPONSE_SIZE bytes.

    Returns:
        The checked result: peers deduplicated, invalid ones (port 0, bad
        hosts) dropped, at most MAX_PEERS_PER_RESPONSE kept.

    Raises:
        TrackerError: "failure reason" (with the tracker's reason), a body that
            is too big or not a bencoded dictionary, a malformed interval or
            peer list.
    """
    if len(body) > MAX_RESPONSE_SIZE:
        raise TrackerError(f"tracker response is larger than {MAX_RESPONSE_SIZE} bytes")
    try:
        data = _BDECODER.decode(bytes(body))
    except bencodepy.BencodeDecodeError as exc:
        raise TrackerError(f"tracker response is not bencoded: {exc}") from None
    if not isinstance(data, dict):
        raise TrackerError("tracker response is not a bencoded dictionary")

    failure = data.get(b"failure reason")
    if failure is not None:
        reason = clean_text(failure) if isinstance(failure, bytes) else "(unreadable)"
        raise TrackerError(f"tracker failure: {reason}")

    interval = data.get(b"interval", DEFAULT_INTERVAL)
    if not isinstance(interval, int) or not 0 <= interval < 2**31:
        raise TrackerError(f"tracker sent an invalid interval {interval!r:.40}")
    min_interval = data.get(b"min interval")
    if not isinstance(min_interval, int) or not 0 <= min_interval < 2**31:
        min_interval = None

    # unique peers in order of appearance, IPv4 then IPv6, the first
    # MAX_PEERS_PER_RESPONSE only: the decoding stops there
    peers: dict[Peer, None] = {}
    raw_peers = data.get(b"peers", b"")
    if isinstance(raw_peers, bytes):
        _compact_peers(raw_peers, COMPACT_V4, "peers", peers)
    elif isinstance(raw_peers, list):
        _dict_peers(raw_peers, peers)
    else:
        raise TrackerError("tracker sent a peer list that is neither a string nor a list")
    raw_peers6 = data.get(b"peers6")
    if raw_peers6 is not None:
        if not isinstance(raw_peers6, bytes):
            raise TrackerError("tracker sent a peers6 value that is not a string")
        _compact_peers(raw_peers6, COMPACT_V6, "peers6", peers)

    tracker_id = data.get(b"tracker id")
    if not isinstance(tracker_id, bytes) or not 0 < len(tracker_id) <= MAX_TRACKER_ID_LENGTH:
        tracker_id = None
    warning = data.get(b"warning message")
    warning_text = clean_text(warning) if isinstance(warning, bytes) else None

    return AnnounceResult(
        peers=tuple(peers),
        interval=interval,
        min_interval=min_interval,
        tracker_id=tracker_id,
        complete=_opt_count(data, b"complete"),
        incomplete=_opt_count(data, b"incomplete"),
        warning=warning_text,
    )


# --------------------------------------------------------------------------- HTTP response parser


class _State(enum.IntEnum):
    HEADERS = 0
    BODY_LENGTH = 1
    BODY_EOF = 2
    CHUNK_SIZE = 3
    CHUNK_DATA = 4
    CHUNK_CRLF = 5
    TRAILERS = 6
    DONE = 7


class HTTPResponseReader:
    """Incremental HTTP/1.x response parser (one response, then done).

    Feed it bytes in any split with :meth:`feed`, and :meth:`feed_eof` when the
    connection closes. When :attr:`complete` is true, :attr:`status`,
    :attr:`headers` and :attr:`body` are set. Interim 1xx responses are skipped.

    Every error is the server's fault and raises :class:`TrackerError`.

    Args:
        max_body: body size bound (default MAX_RESPONSE_SIZE).
        max_header: status line + headers bound (default MAX_HEADER_SIZE).
    """

    def __init__(
        self, *, max_body: int = MAX_RESPONSE_SIZE, max_header: int = MAX_HEADER_SIZE
    ) -> None:
        self.max_body = max_body
        self.max_header = max_header
        self.status: int | None = None
        self.reason: str = ""
        self.headers: dict[str, str] = {}
        self._buf = bytearray()
        self._body = bytearray()
        self._state = _State.HEADERS
        self._remaining = 0

    @property
    def complete(self) -> bool:
        """True once the whole response has been read."""
        return self._state is _State.DONE

    @property
    def body(self) -> bytes:
        """The de-chunked body; only meaningful once :attr:`complete`."""
        return bytes(self._body)

    def feed(self, data: bytes) -> None:
        """Consume bytes from the connection; bytes after the response are ignored.

        Raises:
            TrackerError: malformed or oversized response.
        """
        if self._state is _State.DONE or not data:
            return
        self._buf += data
        self._advance()

    def feed_eof(self) -> None:
        """The server closed the connection.

        Raises:
            TrackerError: the response was cut short.
        """
        if self._state is _State.BODY_EOF:
            self._state = _State.DONE
        elif self._state is not _State.DONE:
            raise TrackerError("tracker closed the connection in the middle of its response")

    # One transition function; each branch consumes what it can from _buf.
    def _advance(self) -> None:
        while self._state is not _State.DONE:
            st = self._state
            if st is _State.HEADERS:
                if not self._take_headers():
                    return
            elif st is _State.BODY_LENGTH:
                take = min(self._remaining, len(self._buf))
                self._body += self._buf[:take]
                del self._buf[:take]
                self._remaining -= take
                if self._remaining:
                    return
                self._state = _State.DONE
            elif st is _State.BODY_EOF:
                if len(self._body) + len(self._buf) > self.max_body:
                    raise TrackerError(f"tracker response body exceeds {self.max_body} bytes")
                self._body += self._buf
                self._buf.clear()
                return
            elif st is _State.CHUNK_SIZE:
                line = self._take_line(MAX_CHUNK_LINE, "chunk size line")
                if line is None:
                    return
                size_text = line.split(b";", 1)[0].strip()
                if not size_text or any(c not in b"0123456789abcdefABCDEF" for c in size_text):
                    raise TrackerError(f"tracker sent a bad chunk size {bytes(size_text)[:20]!r}")
                size = int(size_text, 16)
                if len(self._body) + size > self.max_body:
                    raise TrackerError(f"tracker response body exceeds {self.max_body} bytes")
                if size == 0:
                    self._state = _State.TRAILERS
                    self._remaining = 0  # trailer bytes seen so far
                else:
                    self._remaining = size
                    self._state = _State.CHUNK_DATA
            elif st is _State.CHUNK_DATA:
                take = min(self._remaining, len(self._buf))
                self._body += self._buf[:take]
                del self._buf[:take]
                self._remaining -= take
                if self._remaining:
                    return
                self._state = _State.CHUNK_CRLF
            elif st is _State.CHUNK_CRLF:
                if len(self._buf) < 2:
                    return
                if self._buf[:2] != b"\r\n":
                    raise TrackerError("tracker sent a chunk not followed by CRLF")
                del self._buf[:2]
                self._state = _State.CHUNK_SIZE
            elif st is _State.TRAILERS:
                line = self._take_line(self.max_header, "trailer")
                if line is None:
                    return
                self._remaining += len(line) + 2
                if self._remaining > self.max_header:
                    raise TrackerError(f"tracker trailers exceed {self.max_header} bytes")
                if not line:
                    self._state = _State.DONE

    def _take_line(self, bound: int, what: str) -> bytearray | None:
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > bound:
                raise TrackerError(f"tracker sent a {what} longer than {bound} bytes")
            return None
        if end > bound:
            raise TrackerError(f"tracker sent a {what} longer than {bound} bytes")
        line = self._buf[:end]
        del self._buf[: end + 2]
        return line

    def _take_headers(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > self.max_header:
                raise TrackerError(f"tracker response headers exceed {self.max_header} bytes")
            return False
        if end + 4 > self.max_header:
            raise TrackerError(f"tracker response headers exceed {self.max_header} bytes")
        block = bytes(self._buf[:end])
        del self._buf[: end + 4]
        lines = block.split(b"\r\n")
        if len(lines) > MAX_HEADER_COUNT + 1:
            raise TrackerError(f"tracker sent more than {MAX_HEADER_COUNT} headers")
        status_line = lines[0].split(b" ", 2)
        if (
            len(status_line) < 2
            or not status_line[0].startswith(b"HTTP/1.")
            or len(status_line[1]) != 3
            or not status_line[1].isdigit()
            # RFC 9110 §15: "Values outside the range 100..599 are invalid" ("050" is not 50)
            or not 100 <= int(status_line[1]) <= 599
        ):
            raise TrackerError(f"tracker sent a bad HTTP status line {lines[0][:60]!r}")
        status = int(status_line[1])
        headers: dict[str, str] = {}
        for raw in lines[1:]:
            name, sep, value = raw.partition(b":")
            if not sep or not name or name != name.strip():
                raise TrackerError(f"tracker sent a bad header line {raw[:60]!r}")
            key = name.decode("latin-1").lower()
            val = value.strip().decode("latin-1")
            if key in headers and key == "content-length" and headers[key] != val:
                raise TrackerError("tracker sent conflicting Content-Length headers")
            if key in headers and key != "content-length":
                val = f"{headers[key]}, {val}"  # RFC 9110 §5.3: repeated = joined
            headers[key] = val
        if 100 <= status < 200:
            return True  # interim response: the real one follows; stay in HEADERS
        self.status = status
        self.reason = clean_text(status_line[2]) if len(status_line) > 2 else ""
        self.headers = headers
        te = headers.get("transfer-encoding")
        if te is not None:
            if te.strip().lower() != "chunked":
                raise TrackerError(f"tracker used an unsupported transfer-encoding {te!r:.40}")
            self._state = _State.CHUNK_SIZE
        elif "content-length" in headers:
            text = headers["content-length"]
            if not text or len(text) > 18 or any(c not in "0123456789" for c in text):
                raise TrackerError(f"tracker sent a bad Content-Length {text!r:.40}")
            length = int(text)
            if length > self.max_body:
                raise TrackerError(f"tracker response body exceeds {self.max_body} bytes")
            self._remaining = length
            self._state = _State.BODY_LENGTH
        elif status in (204, 304):
            self._state = _State.DONE
        else:
            self._state = _State.BODY_EOF
        return True
