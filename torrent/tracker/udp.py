"""UDP tracker protocol (BEP 15, with BEP 41 URL data), sans-IO.

Messages are frozen dataclasses; :func:`encode` frames every one of them
through one request header and one response header; :func:`decode_request`
and :func:`decode_response` are the inverses (the test tracker uses the
request side).

:class:`UDPAnnounce` is the state machine for one announce::

    start(now) -> connect datagram          state CONNECTING
    receive(connect response) -> announce    state ANNOUNCING
    receive(announce response) -> result     state DONE
    on_timeout(now) at .deadline -> the same datagram again (retry), or
        TrackerError once the schedule is used up

Theory of operation. BEP 15 asks a client to retransmit after 15 * 2**n
seconds, n = 0..8. ``n`` counts *every* timeout of one announce (connect and
announce together), so even a tracker that answers connects but never
announces is given up after ``sum(schedule)`` seconds. A connection id is
good for one minute (BEP 15); a retransmitted announce whose id has expired
goes back to connecting. Answers carrying a transaction id we did not send
are ignored (they may be late, spoofed or for somebody else); an *error*
action or a malformed answer with our transaction id is the tracker's fault
and raises TrackerError.
"""

from __future__ import annotations

import enum
import secrets
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import TrackerError
from ..peeraddr import COMPACT_V4, COMPACT_V6, pack_compact_list, unpack_compact
from .common import (
    MAX_PEERS_PER_RESPONSE,
    AnnounceParams,
    AnnounceResult,
    Peer,
    clean_text,
    normalize_peer,
)

__all__ = [
    "BEP15_SCHEDULE",
    "CONNECTION_ID_LIFETIME",
    "PROTOCOL_ID",
    "Action",
    "AnnounceRequest",
    "AnnounceResponse",
    "ConnectRequest",
    "ConnectResponse",
    "ErrorResponse",
    "UDPAnnounce",
    "UDPEvent",
    "UDPMessage",
    "decode_request",
    "decode_response",
    "encode",
    "retry_schedule",
    "split_udp_url",
]

#: Magic constant opening every connect request (BEP 15).
PROTOCOL_ID = 0x41727101980

#: A connection id may be used for one minute after it was received (BEP 15).
CONNECTION_ID_LIFETIME = 60.0

#: Longest BEP 41 URL data we send. Why: it rides in every announce datagram;
#: 1 KiB keeps the datagram far below any path MTU trouble.
MAX_URL_DATA = 1024


def retry_schedule(max_n: int = 8, base: float = 15.0) -> tuple[float, ...]:
    """Timeouts ``base * 2**n`` for n = 0..max_n (BEP 15: base 15 s, n up to 8)."""
    if max_n < 0 or base <= 0:
        raise ValueError("need max_n >= 0 and base > 0")
    return tuple(base * 2**n for n in range(max_n + 1))


#: The full BEP 15 schedule: 15, 30, ..., 3840 seconds (about 2 hours in all).
BEP15_SCHEDULE = retry_schedule()


class Action(enum.IntEnum):
    """BEP 15 actions."""

    CONNECT = 0
    ANNOUNCE = 1
    SCRAPE = 2
    ERROR = 3


class UDPEvent(enum.IntEnum):
    """BEP 15 event numbers (note: not in the order of the BEP 3 names)."""

    NONE = 0
    COMPLETED = 1
    STARTED = 2
    STOPPED = 3


_EVENT_TO_UDP: dict[str | None, UDPEvent] = {
    None: UDPEvent.NONE,
    "completed": UDPEvent.COMPLETED,
    "started": UDPEvent.STARTED,
    "stopped": UDPEvent.STOPPED,
}
_UDP_TO_EVENT = {v: k for k, v in _EVENT_TO_UDP.items()}


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    transaction_id: int


@dataclass(frozen=True, slots=True)
class ConnectResponse:
    transaction_id: int
    connection_id: int


@dataclass(frozen=True, slots=True)
class AnnounceRequest:
    connection_id: int
    transaction_id: int
    info_hash: bytes
    peer_id: bytes
    downloaded: int
    left: int
    uploaded: int
    event: UDPEvent
    ip: int
    key: int
    num_want: int
    port: int
    url_data: bytes = b""  # BEP 41: the path and query of the tracker URL

    @property
    def event_name(self) -> str | None:
        """The event as the BEP 3 name ("started", ...) or None."""
        return _UDP_TO_EVENT[self.event]


@dataclass(frozen=True, slots=True)
class AnnounceResponse:
    transaction_id: int
    interval: int
    leechers: int
    seeders: int
    peers: tuple[Peer, ...]
    #: the answer to a request over IPv6: its peers are IPv6, 18 bytes each
    #: (BEP 15); not on the wire itself, so :func:`decode_response` is told
    ipv6: bool = False


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    transaction_id: int
    message: str


UDPMessage = ConnectRequest | ConnectResponse | AnnounceRequest | AnnounceResponse | ErrorResponse

_REQ_HEADER = struct.Struct(">QII")  # connection_id, action, transaction_id
_RESP_HEADER = struct.Struct(">II")  # action, transaction_id
_ANNOUNCE_BODY = struct.Struct(">20s20sQQQIIIiH")  # 82 bytes, BEP 15 offsets 16..98
_ANNOUNCE_RESP = struct.Struct(">III")  # interval, leechers, seeders
_CONNECT_RESP = struct.Struct(">Q")

# BEP 41 option types.
_OPT_END = 0
_OPT_NOP = 1
_OPT_URL_DATA = 2


def _frame_request(connection_id: int, action: Action, tid: int, payload: bytes) -> bytes:
    return _REQ_HEADER.pack(connection_id, action, tid) + payload


def _frame_response(action: Action, tid: int, payload: bytes) -> bytes:
    return _RESP_HEADER.pack(action, tid) + payload


def _url_data_options(data: bytes) -> bytes:
    out = bytearray()
    for off in range(0, len(data), 255):  # BEP 41: one length byte per option
        part = data[off : off + 255]
        out += bytes((_OPT_URL_DATA, len(part))) + part
    return bytes(out)


def encode(msg: UDPMessage) -> bytes:
    """Encode any BEP 15 message (requests and responses) to a datagram."""
    match msg:
        case ConnectRequest(transaction_id=tid):
            return _frame_request(PROTOCOL_ID, Action.CONNECT, tid, b"")
        case ConnectResponse(transaction_id=tid, connection_id=cid):
            return _frame_response(Action.CONNECT, tid, _CONNECT_RESP.pack(cid))
        case AnnounceRequest():
            body = _ANNOUNCE_BODY.pack(
                msg.info_hash,
                msg.peer_id,
                msg.downloaded,
                msg.left,
                msg.uploaded,
                msg.event,
                msg.ip,
                msg.key,
                msg.num_want,
                msg.port,
            )
            if msg.url_data:
                body += _url_data_options(msg.url_data)
            return _frame_request(msg.connection_id, Action.ANNOUNCE, msg.transaction_id, body)
        case AnnounceResponse(transaction_id=tid):
            body = _ANNOUNCE_RESP.pack(msg.interval, msg.leechers, msg.seeders)
            # BEP 15: 18-byte peers in an answer to an IPv6 request, 6-byte ones otherwise
            width = COMPACT_V6 if msg.ipv6 else COMPACT_V4
            return _frame_response(Action.ANNOUNCE, tid,
                                   body + pack_compact_list(msg.peers, width))
        case ErrorResponse(transaction_id=tid, message=text):
            return _frame_response(Action.ERROR, tid, text.encode("utf-8"))
    raise TypeError(f"not a UDP tracker message: {msg!r}")


def _parse_options(data: bytes) -> bytes:
    url = bytearray()
    i = 0
    while i < len(data):
        kind = data[i]
        if kind == _OPT_END:
            break
        if kind == _OPT_NOP:
            i += 1
            continue
        if i + 1 >= len(data):
            break
        length = data[i + 1]
        if kind == _OPT_URL_DATA:
            url += data[i + 2 : i + 2 + length]
        i += 2 + length
    return bytes(url[:MAX_URL_DATA])


def decode_request(data: bytes) -> ConnectRequest | AnnounceRequest:
    """Decode a client's datagram (what a tracker receives).

    Raises:
        TrackerError: malformed datagram or unsupported action.
    """
    if len(data) < _REQ_HEADER.size:
        raise TrackerError(f"UDP tracker request of {len(data)} bytes is too short")
    cid, action, tid = _REQ_HEADER.unpack_from(data)
    if action == Action.CONNECT:
        if cid != PROTOCOL_ID:
            raise TrackerError("UDP connect request without the BEP 15 protocol id")
        return ConnectRequest(tid)
    if action == Action.ANNOUNCE:
        if len(data) < _REQ_HEADER.size + _ANNOUNCE_BODY.size:
            raise TrackerError(f"UDP announce request of {len(data)} bytes is too short")
        (info_hash, peer_id, downloaded, left, uploaded, ev, ip, key, num_want, port) = (
            _ANNOUNCE_BODY.unpack_from(data, _REQ_HEADER.size)
        )
        try:
            event = UDPEvent(ev)
        except ValueError:
            raise TrackerError(f"UDP announce with unknown event {ev}") from None
        return AnnounceRequest(
            connection_id=cid,
            transaction_id=tid,
            info_hash=info_hash,
            peer_id=peer_id,
            downloaded=downloaded,
            left=left,
            uploaded=uploaded,
            event=event,
            ip=ip,
            key=key,
            num_want=num_want,
            port=port,
            url_data=_parse_options(data[_REQ_HEADER.size + _ANNOUNCE_BODY.size :]),
        )
    raise TrackerError(f"UDP tracker request with unsupported action {action}")


def decode_response(
    data: bytes, *, ipv6: bool = False
) -> ConnectResponse | AnnounceResponse | ErrorResponse:
    """Decode a tracker's datagram.

    Args:
        data: the datagram.
        ipv6: the announce went over IPv6, so peers are 18 bytes each (BEP 15).

    Raises:
        TrackerError: malformed datagram or unknown action.
    """
    if len(data) < _RESP_HEADER.size:
        raise TrackerError(f"UDP tracker answer of {len(data)} bytes is too short")
    action, tid = _RESP_HEADER.unpack_from(data)
    rest = data[_RESP_HEADER.size :]
    if action == Action.CONNECT:
        if len(rest) < _CONNECT_RESP.size:
            raise TrackerError("UDP connect answer is too short")
        return ConnectResponse(tid, _CONNECT_RESP.unpack_from(rest)[0])
    if action == Action.ANNOUNCE:
        if len(rest) < _ANNOUNCE_RESP.size:
            raise TrackerError("UDP announce answer is too short")
        interval, leechers, seeders = _ANNOUNCE_RESP.unpack_from(rest)
        blob = rest[_ANNOUNCE_RESP.size :]
        try:
            # decoded up to the bound only; a repeat is dropped below
            entries = unpack_compact(blob, COMPACT_V6 if ipv6 else COMPACT_V4,
                                     MAX_PEERS_PER_RESPONSE)
        except ValueError as exc:
            raise TrackerError(f"UDP announce answer: {exc}") from None
        peers = [p for p in (normalize_peer(h, port) for h, port in entries) if p is not None]
        unique = tuple(dict.fromkeys(peers))[:MAX_PEERS_PER_RESPONSE]
        return AnnounceResponse(tid, interval, leechers, seeders, unique, ipv6)
    if action == Action.ERROR:
        return ErrorResponse(tid, clean_text(rest))
    raise TrackerError(f"UDP tracker answered with unknown action {action}")


def split_udp_url(url: str) -> tuple[str, int, bytes]:
    """Split ``udp://host:port[/path][?query]`` into (host, port, BEP 41 url data).

    Raises:
        TrackerError: not a udp:// URL with a host and a port 1..65535.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise TrackerError(f"bad tracker URL {url!r}: {exc}") from None
    if parts.scheme.lower() != "udp":
        raise TrackerError(f"not a UDP tracker URL: {url!r}")
    if not parts.hostname:
        raise TrackerError(f"UDP tracker URL has no host: {url!r}")
    if not port:
        raise TrackerError(f"UDP tracker URL needs a port: {url!r}")
    path = parts.path if parts.path not in ("", "/") else ""
    data = path + ("?" + parts.query if parts.query else "")
    url_data = data.encode("utf-8", "replace")
    return parts.hostname, port, url_data if len(url_data) <= MAX_URL_DATA else b""


class _State(enum.IntEnum):
    IDLE = 0
    CONNECTING = 1
    ANNOUNCING = 2
    DONE = 3


class UDPAnnounce:
    """One BEP 15 announce: connect, announce, retries. Sans-IO.

    Args:
        params: what to announce.
        schedule: the timeout before each retransmission, in seconds
            (BEP15_SCHEDULE, or something shorter; tests inject tiny ones).
        rng: ``getrandbits``-like source of transaction ids.
        ipv6: the socket is IPv6 (18-byte peers in the answer).
        url_data: BEP 41 path and query to send with the announce.
        connection: a still-valid (connection_id, received_at) from an earlier
            announce to the same tracker, to skip the connect step.
    """

    def __init__(
        self,
        params: AnnounceParams,
        *,
        schedule: Sequence[float] = BEP15_SCHEDULE,
        rng: Callable[[int], int] = secrets.randbits,
        ipv6: bool = False,
        url_data: bytes = b"",
        connection: tuple[int, float] | None = None,
    ) -> None:
        if not schedule or any(t <= 0 for t in schedule):
            raise ValueError("schedule must be a non-empty list of positive timeouts")
        self.params = params
        self.schedule = tuple(schedule)
        self._rng = rng
        self._ipv6 = ipv6
        self._url_data = url_data
        self.connection = connection
        self._state = _State.IDLE
        self._tid = 0
        self._datagram = b""
        self._tries = 0  # timeouts so far: n of BEP 15
        self.deadline: float | None = None
        #: Datagrams ignored: wrong transaction id, or too short to have one.
        self.ignored = 0
        self.result: AnnounceResult | None = None

    def _connection_valid(self, now: float) -> bool:
        return self.connection is not None and now - self.connection[1] < CONNECTION_ID_LIFETIME

    def _send(self, now: float) -> bytes:
        """Build the datagram for the current step with a fresh transaction id."""
        self._tid = self._rng(32)
        if self._connection_valid(now):
            assert self.connection is not None
            p = self.params
            self._state = _State.ANNOUNCING
            self._datagram = encode(
                AnnounceRequest(
                    connection_id=self.connection[0],
                    transaction_id=self._tid,
                    info_hash=p.info_hash,
                    peer_id=p.peer_id,
                    downloaded=p.downloaded,
                    left=p.left,
                    uploaded=p.uploaded,
                    event=_EVENT_TO_UDP[p.event],
                    ip=0,
                    key=p.key if p.key is not None else 0,
                    num_want=p.numwant,
                    port=p.port,
                    url_data=self._url_data,
                )
            )
        else:
            self.connection = None
            self._state = _State.CONNECTING
            self._datagram = encode(ConnectRequest(self._tid))
        self.deadline = now + self.schedule[min(self._tries, len(self.schedule) - 1)]
        return self._datagram

    def start(self, now: float) -> bytes:
        """Return the first datagram to send (connect, or announce if connected)."""
        if self._state is not _State.IDLE:
            raise RuntimeError("UDPAnnounce.start() called twice")
        return self._send(now)

    def on_timeout(self, now: float) -> bytes:
        """The deadline passed without an answer: return the datagram to resend.

        Raises:
            TrackerError: every timeout in the schedule has passed.
        """
        if self._state not in (_State.CONNECTING, _State.ANNOUNCING):
            raise RuntimeError(f"on_timeout() in state {self._state.name}")
        self._tries += 1
        if self._tries >= len(self.schedule):
            self._state = _State.DONE
            self.deadline = None
            raise TrackerError(f"no answer from the UDP tracker after {self._tries} tries")
        if self._state is _State.ANNOUNCING and not self._connection_valid(now):
            return self._send(now)  # id expired: connect again (BEP 15)
        # Same datagram, same transaction id: a late answer to an earlier copy
        # is as good as an answer to this one.
        self.deadline = now + self.schedule[self._tries]
        return self._datagram

    def receive(self, data: bytes, now: float) -> bytes | AnnounceResult | None:
        """Feed a datagram from the tracker.

        Returns:
            bytes to send next (the announce after a connect), the
            AnnounceResult when done, or None if the datagram was ignored.

        Raises:
            TrackerError: the tracker sent an error or a malformed answer to
                our transaction.
        """
        if self._state not in (_State.CONNECTING, _State.ANNOUNCING):
            return None
        if len(data) < _RESP_HEADER.size:
            self.ignored += 1
            return None
        action, tid = _RESP_HEADER.unpack_from(data)
        if tid != self._tid:
            self.ignored += 1
            return None
        try:
            msg = decode_response(data, ipv6=self._ipv6)
        except TrackerError:
            self._state = _State.DONE
            self.deadline = None
            raise
        if isinstance(msg, ErrorResponse):
            self._state = _State.DONE
            self.deadline = None
            raise TrackerError(f"tracker failure: {msg.message}")
        if self._state is _State.CONNECTING:
            if not isinstance(msg, ConnectResponse):
                self._state = _State.DONE
                raise TrackerError(f"UDP tracker answered a connect with action {action}")
            self.connection = (msg.connection_id, now)
            return self._send(now)
        if not isinstance(msg, AnnounceResponse):
            self._state = _State.DONE
            raise TrackerError(f"UDP tracker answered an announce with action {action}")
        self._state = _State.DONE
        self.deadline = None
        self.result = AnnounceResult(
            peers=msg.peers,
            interval=msg.interval,
            complete=msg.seeders,
            incomplete=msg.leechers,
        )
        return self.result
