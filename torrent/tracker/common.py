"""Types shared by the HTTP and UDP tracker codecs, the clients and the scheduler.

Sans-IO: nothing here touches a socket or reads a clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..peeraddr import normalize_peer

__all__ = [
    "DEFAULT_NUMWANT",
    "MAX_MESSAGE_LENGTH",
    "MAX_PEERS_PER_RESPONSE",
    "AnnounceParams",
    "AnnounceResult",
    "Event",
    "Peer",
    "check_event",
    "clean_text",
    "normalize_peer",
]

#: A peer address as the rest of fasttorrent uses it: (host, port). The host is
#: a canonical IPv4/IPv6 literal, or (dictionary peer lists only, BEP 3) a DNS name
#: (:mod:`torrent.peeraddr`, where ``normalize_peer`` lives).
Peer = tuple[str, int]

#: How many peers we ask for. BEP 3 leaves the default to the tracker (usually
#: 50); opentracker caps at 200. 200 fills a few workers' connection budgets.
DEFAULT_NUMWANT = 200

#: At most this many peers are kept from one response; the rest are dropped.
#: Why: we ask for DEFAULT_NUMWANT; a tracker sending thousands is either
#: generous or hostile, and the coordinator's peer queue must stay bounded.
MAX_PEERS_PER_RESPONSE = 2000

#: Free text from a tracker (failure reason, warning, UDP error) is cut to this
#: many characters. Why: it goes into logs and exception messages.
MAX_MESSAGE_LENGTH = 512


class Event(enum.StrEnum):
    """Announce events (BEP 3). Members are ``str``, so plain strings work too.

    "No event" (a regular re-announce) is spelled ``None`` in the APIs.
    """

    STARTED = "started"
    COMPLETED = "completed"
    STOPPED = "stopped"


_EVENTS = frozenset(e.value for e in Event)


def check_event(event: str | None) -> str | None:
    """Return ``event`` if it is None, "" (treated as None) or a BEP 3 event.

    Raises:
        ValueError: unknown event (a bug of the caller).
    """
    if event is None or event == "":
        return None
    if event not in _EVENTS:
        raise ValueError(f"unknown announce event {event!r}")
    return str(event)


@dataclass(frozen=True, slots=True)
class AnnounceParams:
    """What we tell a tracker in one announce (BEP 3 / BEP 15 fields).

    Args:
        info_hash: the 20-byte SHA-1 info-hash.
        peer_id: our 20-byte peer id.
        port: the TCP port we accept peers on (0 allowed: "not listening").
        uploaded, downloaded, left: byte counters (BEP 3).
        event: "started", "completed", "stopped" or None.
        numwant: how many peers we would like.
        key: a 32-bit number identifying us across IP changes (BEP 3 "key",
            BEP 15 "key"); sent as 8 hex digits over HTTP.
        tracker_id: the "tracker id" an HTTP tracker gave us earlier.

    Raises:
        ValueError: a field out of range (a bug of the caller, never a remote's).
    """

    info_hash: bytes
    peer_id: bytes
    port: int
    uploaded: int = 0
    downloaded: int = 0
    left: int = 0
    event: str | None = None
    numwant: int = DEFAULT_NUMWANT
    key: int | None = None
    tracker_id: bytes | None = None

    def __post_init__(self) -> None:
        if len(self.info_hash) != 20:
            raise ValueError("info_hash must be 20 bytes")
        if len(self.peer_id) != 20:
            raise ValueError("peer_id must be 20 bytes")
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"port {self.port} out of range")
        # 2**63: what an int64 (BEP 15) and every tracker can hold.
        for name in ("uploaded", "downloaded", "left"):
            if not 0 <= getattr(self, name) < 2**63:
                raise ValueError(f"{name} out of range")
        if not 0 <= self.numwant < 2**31:
            raise ValueError("numwant out of range")
        if self.key is not None and not 0 <= self.key < 2**32:
            raise ValueError("key must fit in 32 bits")
        object.__setattr__(self, "event", check_event(self.event))


@dataclass(frozen=True, slots=True)
class AnnounceResult:
    """A tracker's successful answer, already checked and bounded.

    Attributes:
        peers: unique, valid (host, port) pairs, at most MAX_PEERS_PER_RESPONSE.
        interval: seconds until the next regular announce, as the tracker said
            (the scheduler clamps it).
        min_interval: seconds we must at least wait before re-announcing, or None.
        tracker_id: opaque id to send back on the next HTTP announce, or None.
        complete, incomplete: seeders and leechers, if the tracker said.
        warning: the tracker's "warning message", if any.
    """

    peers: tuple[Peer, ...]
    interval: int
    min_interval: int | None = None
    tracker_id: bytes | None = None
    complete: int | None = None
    incomplete: int | None = None
    warning: str | None = None


def clean_text(raw: bytes | str) -> str:
    """Tracker-supplied text made safe to log: decoded, control chars removed, cut."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = "".join(ch if ch.isprintable() else " " for ch in text[: MAX_MESSAGE_LENGTH * 2])
    if len(text) > MAX_MESSAGE_LENGTH:
        text = text[: MAX_MESSAGE_LENGTH - 3] + "..."
    return text
