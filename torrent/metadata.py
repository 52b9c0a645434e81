"""BEP 9 metadata exchange: fetch a torrent's info dictionary from peers, serve it to them.

Theory of operation
-------------------
A magnet link gives only the info-hash; the info dictionary (the torrent's
"metadata") comes from peers, in 16 KiB pieces, over the ``ut_metadata``
extension (BEP 9 on top of BEP 10). This module is sans-IO: the caller
carries the messages and passes the time in as ``now``.

The messages (request, data, reject) and their bounds are the wire
layer's (:mod:`torrent.wire.extension`); this module keeps the state.

:class:`MetadataFetch` is the downloading side. Peer identities are opaque
hashable values chosen by the caller (an address is best: bans outlive a
connection).

- **Size.** Each peer's extension handshake announces ``metadata_size``
  (:meth:`MetadataFetch.add_peer`). A size of 0, a missing one, or one over
  ``max_size`` leaves that peer out. Peers may disagree: the size first
  announced by a usable peer is fetched, from the peers that announced it;
  when none of them is left (banned, gone, struck out) the next size is
  tried. A size "checks out" when its pieces hash to the info-hash.
- **Requests.** :meth:`MetadataFetch.next_request` hands out the lowest
  missing piece nobody is fetching: each piece to one peer at a time, at
  most ``max_outstanding`` per peer, so several peers fetch in parallel.
  :meth:`MetadataFetch.timed_out` releases requests unanswered for
  ``request_timeout`` so another peer can take them; a late answer is still
  welcome. A reject, and a time-out, are strikes: a rejecting peer is left
  alone for REJECT_BACKOFF, and a peer with MAX_STRIKES strikes is asked no
  more.
- **Data.** :meth:`MetadataFetch.data` takes a piece: it must have been
  requested from that peer, be in range, have the announced ``total_size``
  and exactly the piece's length (16 KiB, the last one shorter). Anything
  else is the peer's fault (:class:`~torrent.errors.RemoteProtocolError`:
  drop it).
- **Check.** When every piece is in, the SHA-1 of the whole must be the
  info-hash (for a v2 magnet, BEP 52: its SHA-256 the v2 info-hash; a hybrid
  link's metadata may match either): then it is the result
  (:class:`MetadataComplete`). Otherwise
  (:class:`MetadataHashFailed`) the round starts over. A peer that alone
  supplied the bad copy is banned. With several senders the culprit is not
  known: the digest of each sender's pieces is recorded, and the metadata is
  fetched again from one peer at a time; a peer whose solo copy is bad is
  banned, and when a good copy arrives, every recorded sender whose pieces
  differ from it is banned. An honest peer is never banned (the same rule
  as for bad data pieces, docs/ARCHITECTURE.md).

:func:`metainfo_from_info` then puts the info dict into a .torrent (with the
magnet's trackers) and runs it through :func:`torrent.metainfo.parse`:
exactly the strict validation of a .torrent file, unsafe paths refused.

:class:`MetadataServer` is the serving side: data for a piece in range, a
reject otherwise.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from torrent import bencoding, metainfo
from torrent.bencoding import BencodeError
from torrent.errors import InvalidTorrent, RemoteProtocolError
from torrent.magnet import Magnet
from torrent.metainfo import Metainfo
from torrent.peeraddr import format_peer
from torrent.wire.extension import (
    MAX_METADATA_SIZE,
    METADATA_PIECE,
    MetadataData,
    MetadataReject,
    metadata_piece_count,
    metadata_piece_length,
)

__all__ = [
    "MAX_METADATA_PEERS",
    "MAX_OUTSTANDING_PER_PEER",
    "MAX_STRIKES",
    "METADATA_REQUEST_TIMEOUT",
    "REJECT_BACKOFF",
    "MetadataComplete",
    "MetadataFetch",
    "MetadataHashFailed",
    "MetadataServer",
    "PeerReport",
    "metainfo_from_info",
    "torrent_bytes",
]

# --- named bounds -------------------------------------------------------------

# Requests outstanding per peer. libtorrent sends 2 and queues up to 1024
# incoming ones before it rejects; 4 halves the round trips of a one-peer
# fetch (a 1 MiB info dict is 64 pieces) while leaving pieces for other
# peers to fetch in parallel.
MAX_OUTSTANDING_PER_PEER: Final = 4

# Peers remembered by one fetch (connected ones, and gone ones for the report
# and their bans). The coordinator connects to 200 peers by default; the
# bound keeps a churn of connections from growing the table without end.
MAX_METADATA_PEERS: Final = 1024

# A request unanswered this long is handed to another peer (seconds). Before
# the metadata is known we ask a peer for nothing else, so its answer waits
# behind none of our traffic: one round trip, even on a satellite link well
# under a second. Shorter than options.REQUEST_TIMEOUT, which covers blocks
# queued behind hundreds of others.
METADATA_REQUEST_TIMEOUT: Final = 5.0

# After a reject, leave the peer alone this long (seconds). libtorrent waits a
# minute after a reject; a peer that announced metadata_size and rejects has
# a full queue (libtorrent rejects past 1024 queued requests), which drains
# in seconds, and one that has nothing to give is struck out anyway.
REJECT_BACKOFF: Final = 30.0

# Strikes before a peer is asked no more: a peer that neither answers nor
# serves must not take requests from the ones that do, time-out after
# time-out. Rejects count one strike per back-off, time-outs one per
# request_timeout (requests sent together fail together).
MAX_STRIKES: Final = 5

# --- fetching -----------------------------------------------------------------

P = TypeVar("P", bound=Hashable)


@dataclass(frozen=True, slots=True)
class MetadataComplete(Generic[P]):
    """The metadata is in and hashes to the info-hash.

    Attributes:
        info_bytes: the info dictionary, exactly as hashed.
        banned: peers banned now: senders of an earlier bad copy whose pieces
            differ from the good one (disconnect them).
    """

    info_bytes: bytes
    banned: tuple[P, ...] = ()


@dataclass(frozen=True, slots=True)
class MetadataHashFailed(Generic[P]):
    """Every piece was in but the whole did not hash to the info-hash; fetching starts over.

    Attributes:
        banned: peers banned now (one that alone sent the bad copy; disconnect it).
        suspects: the senders when there were several: the metadata is now
            fetched from one peer at a time until the culprit is known.
    """

    banned: tuple[P, ...] = ()
    suspects: tuple[P, ...] = ()


@dataclass(frozen=True, slots=True)
class PeerReport(Generic[P]):
    """What one peer did for a fetch (for logs and the "no metadata" message).

    Attributes:
        peer: its identity.
        metadata_size: the size it announced.
        received: metadata pieces accepted from it.
        rejects: its rejects.
        timeouts: its requests that timed out.
        banned: it sent bad metadata.
        connected: not reported gone.
    """

    peer: P
    metadata_size: int
    received: int
    rejects: int
    timeouts: int
    banned: bool
    connected: bool


@dataclass(slots=True)
class _Peer:
    size: int
    order: int
    connected: bool = True
    banned: bool = False
    # piece -> time its request was sent; at most max_outstanding entries.
    outstanding: dict[int, float] = field(default_factory=dict)
    # Every piece requested on this connection: an answer to one of them is
    # never a protocol error, however late. At most num_pieces entries.
    asked: set[int] = field(default_factory=set)
    received: int = 0
    rejects: int = 0
    timeouts: int = 0
    strikes: int = 0
    # No requests to this peer before this time (a reject's back-off).
    not_before: float = -math.inf
    # When its last time-out strike was counted.
    last_timeout: float = -math.inf


def _peer_name(peer: object) -> str:
    if (
        isinstance(peer, tuple)
        and len(peer) == 2
        and isinstance(peer[0], str)
        and isinstance(peer[1], int)
    ):
        return format_peer(*peer)
    return str(peer)


class MetadataFetch(Generic[P]):
    """Fetch the info dictionary of ``info_hash`` from peers (BEP 9), sans-IO.

    Args:
        info_hash: the 20-byte info-hash the metadata's SHA-1 must be (a v2
            magnet's truncated v2 info-hash, which no SHA-1 matches).
        info_hash_v2: BEP 52: the 32-byte v2 info-hash its SHA-256 may be instead.
        max_size: largest metadata_size accepted.
        request_timeout: seconds before an unanswered request goes elsewhere.
        max_outstanding: requests outstanding per peer.
        max_peers: peers remembered.

    Raises:
        ValueError: ``info_hash`` is not 20 bytes or ``info_hash_v2`` not 32.
    """

    def __init__(
        self,
        info_hash: bytes,
        *,
        info_hash_v2: bytes | None = None,
        max_size: int = MAX_METADATA_SIZE,
        request_timeout: float = METADATA_REQUEST_TIMEOUT,
        max_outstanding: int = MAX_OUTSTANDING_PER_PEER,
        max_peers: int = MAX_METADATA_PEERS,
    ) -> None:
        if len(info_hash) != 20:
            raise ValueError(f"an info-hash is 20 bytes, got {len(info_hash)}")
        if info_hash_v2 is not None and len(info_hash_v2) != 32:
            raise ValueError(f"a v2 info-hash is 32 bytes, got {len(info_hash_v2)}")
        self.info_hash = bytes(info_hash)
        self.info_hash_v2 = None if info_hash_v2 is None else bytes(info_hash_v2)
        self.max_size = max_size
        self.request_timeout = request_timeout
        self.max_outstanding = max_outstanding
        self.max_peers = max_peers
        self._peers: dict[P, _Peer] = {}
        self._order = 0
        self._size: int | None = None
        self._pieces: list[bytes | None] = []
        self._senders: list[P | None] = []
        self._have = 0
        # Missing pieces nobody is fetching, sorted.
        self._free: list[int] = []
        # piece -> the peer fetching it.
        self._assigned: dict[int, P] = {}
        # After a bad copy with several senders: fetch from one peer at a time.
        self._solo_mode = False
        self._solo: P | None = None
        # Senders of bad copies: peer -> piece -> SHA-1 of the piece it sent.
        self._suspects: dict[P, dict[int, bytes]] = {}
        self._result: bytes | None = None

    # -- state -------------------------------------------------------------

    @property
    def result(self) -> bytes | None:
        """The verified info dictionary's bytes, once complete."""
        return self._result

    @property
    def done(self) -> bool:
        """The metadata is in and verified."""
        return self._result is not None

    @property
    def size(self) -> int | None:
        """The metadata size being fetched (None until a usable peer announced one)."""
        return self._size

    @property
    def pieces_have(self) -> int:
        """Pieces of the current round received so far."""
        return self._have

    @property
    def banned(self) -> frozenset[P]:
        """Peers banned for bad metadata."""
        return frozenset(p for p, st in self._peers.items() if st.banned)

    def report(self) -> tuple[PeerReport[P], ...]:
        """One :class:`PeerReport` per remembered peer, in the order they were added."""
        return tuple(
            PeerReport(p, st.size, st.received, st.rejects, st.timeouts, st.banned, st.connected)
            for p, st in self._peers.items()
        )

    def describe_peers(self, limit: int = 10) -> str:
        """One line naming the peers tried and what each did (for "no metadata" errors).

        ``(host, port)`` identities print as ``host:port``; at most ``limit``
        peers are named, the rest counted.
        """
        if not self._peers:
            return "no peer offered the metadata"
        parts = []
        for r in list(self.report())[:limit]:
            what = [f"size {r.metadata_size}", f"{r.received} pieces"]
            if r.rejects:
                what.append(f"{r.rejects} rejects")
            if r.timeouts:
                what.append(f"{r.timeouts} time-outs")
            if r.banned:
                what.append("banned: bad metadata")
            parts.append(f"{_peer_name(r.peer)} ({', '.join(what)})")
        more = len(self._peers) - limit
        tail = f" and {more} more" if more > 0 else ""
        return f"peers tried: {'; '.join(parts)}{tail}"

    def next_wakeup(self, now: float) -> float | None:
        """When :meth:`timed_out` or :meth:`next_request` next has something to do.

        The earliest request deadline (possibly already past: call
        :meth:`timed_out`), or the end of a peer's back-off after ``now``;
        None when nothing is pending.
        """
        if self._result is not None:
            return None
        times = [
            t + self.request_timeout
            for st in self._peers.values()
            if st.connected
            for t in st.outstanding.values()
        ]
        times.extend(
            st.not_before
            for st in self._peers.values()
            if st.connected and not st.banned and st.not_before > now
        )
        return min(times) if times else None

    def _usable(self, st: _Peer) -> bool:
        return st.connected and not st.banned and st.strikes < MAX_STRIKES

    def usable(self, peer: P) -> bool:
        """The peer is in the fetch and may still be asked: connected, not banned,
        not struck out, the fetch not done. A peer for which this turns False will
        get no more requests: the caller may close its connection."""
        st = self._peers.get(peer)
        return self._result is None and st is not None and self._usable(st)

    # -- peers -------------------------------------------------------------

    def add_peer(self, peer: P, metadata_size: int | None) -> bool:
        """A peer's extension handshake offered ut_metadata with ``metadata_size``.

        A later handshake on the same connection does not change the size
        first announced.

        Returns:
            True when the peer takes part in the fetch; False when it is left
            out: no size, 0, over ``max_size``, banned, the fetch is done, or
            the table is full of connected peers.
        """
        if self._result is not None:
            return False
        if (
            not isinstance(metadata_size, int)
            or isinstance(metadata_size, bool)
            or not 0 < metadata_size <= self.max_size
        ):
            return False
        st = self._peers.get(peer)
        if st is not None:
            if st.banned:
                return False
            if not st.connected:  # a new connection: a fresh start, same record
                st.connected = True
                st.size = metadata_size
                st.order = self._next_order()
                st.outstanding.clear()
                st.asked.clear()
            return self._usable(st)
        if len(self._peers) >= self.max_peers and not self._evict():
            return False
        self._peers[peer] = _Peer(size=metadata_size, order=self._next_order())
        return True

    def _next_order(self) -> int:
        self._order += 1
        return self._order

    def _evict(self) -> bool:
        """Forget the oldest gone peer (an unbanned one first); False if none can go.

        Senders of the current round's pieces and recorded suspects stay: a
        bad copy must still be traced to them.
        """
        keep = {p for p in self._senders if p is not None}
        keep.update(self._suspects)
        for want_banned in (False, True):
            for p, st in self._peers.items():
                if not st.connected and st.banned == want_banned and p not in keep:
                    del self._peers[p]
                    return True
        return False

    def peer_gone(self, peer: P) -> None:
        """The peer disconnected: its requests go to others. Idempotent."""
        st = self._peers.get(peer)
        if st is None or not st.connected:
            return
        st.connected = False
        self._release_all(peer, st)
        if self._solo is not None and self._solo == peer:
            self._solo = None
            self._new_round()

    def _release(self, peer: P, piece: int) -> None:
        """``peer`` no longer fetches ``piece``: it is free for others if still missing."""
        if piece in self._assigned and self._assigned[piece] == peer:
            del self._assigned[piece]
            if piece < len(self._pieces) and self._pieces[piece] is None:
                bisect.insort(self._free, piece)

    def _release_all(self, peer: P, st: _Peer) -> None:
        for piece in st.outstanding:
            self._release(peer, piece)
        st.outstanding.clear()

    def _ban(self, peer: P) -> None:
        st = self._peers[peer]
        st.banned = True
        self._release_all(peer, st)
        if self._solo is not None and self._solo == peer:
            self._solo = None

    # -- rounds ------------------------------------------------------------

    def _new_round(self) -> None:
        """Start fetching the current size from scratch (requests in flight stay counted)."""
        n = metadata_piece_count(self._size) if self._size is not None else 0
        self._pieces = [None] * n
        self._senders = [None] * n
        self._have = 0
        self._free = list(range(n))
        self._assigned = {}

    def _refresh(self) -> None:
        """Keep the size while a usable peer announced it, else take the next one."""
        if self._solo is not None and not self._usable(self._peers[self._solo]):
            self._solo = None
            self._new_round()
        usable = [st for st in self._peers.values() if self._usable(st)]
        if self._size is not None and any(st.size == self._size for st in usable):
            return
        if not usable:
            return
        size = min(usable, key=lambda st: st.order).size
        if size != self._size:
            self._size = size
            self._solo_mode = False
            self._solo = None
            self._suspects = {}
            self._new_round()

    # -- requests ----------------------------------------------------------

    def next_request(self, peer: P, now: float) -> int | None:
        """The metadata piece to request from ``peer`` now, or None.

        Call it until it returns None whenever the peer may take more (after
        its handshake, an answer, a reject, a time-out), and send a
        :class:`MetadataRequest` for each piece returned.
        """
        if self._result is not None:
            return None
        st = self._peers.get(peer)
        if st is None or not self._usable(st) or now < st.not_before:
            return None
        self._refresh()
        if st.size != self._size or len(st.outstanding) >= self.max_outstanding:
            return None
        if self._solo_mode:
            if self._solo is None:
                self._solo = peer
            elif self._solo != peer:
                return None
        if not self._free:
            return None
        piece = self._free.pop(0)
        self._assigned[piece] = peer
        st.outstanding[piece] = now
        st.asked.add(piece)
        return piece

    def reject(self, peer: P, piece: int, now: float) -> None:
        """The peer rejected a request: the piece goes to others, the peer backs off.

        A reject for a piece never requested from the peer is ignored.
        """
        st = self._peers.get(peer)
        if st is None or piece not in st.asked:
            return
        if piece in st.outstanding:
            del st.outstanding[piece]
            self._release(peer, piece)
        st.rejects += 1
        # Rejects of requests sent together come together: one strike per back-off.
        if now >= st.not_before:
            st.strikes += 1
        st.not_before = max(st.not_before, now + REJECT_BACKOFF)

    def timed_out(self, now: float) -> list[tuple[P, int]]:
        """Release the requests unanswered for ``request_timeout``.

        Returns:
            ``(peer, piece)`` of each expired request; their pieces are free
            again, so call :meth:`next_request` for the peers that can take them.
        """
        expired: list[tuple[P, int]] = []
        for peer, st in self._peers.items():
            if not st.connected or not st.outstanding:
                continue
            late = [p for p, t in st.outstanding.items() if now - t >= self.request_timeout]
            if not late:
                continue
            st.timeouts += len(late)
            # One stall of the peer expires all its requests, maybe over several
            # calls: one strike per request_timeout.
            if now - st.last_timeout >= self.request_timeout:
                st.strikes += 1
                st.last_timeout = now
            for piece in late:
                del st.outstanding[piece]
                self._release(peer, piece)
                expired.append((peer, piece))
        return expired

    # -- data --------------------------------------------------------------

    def _protocol_error(self, peer: P, why: str) -> RemoteProtocolError:
        self.peer_gone(peer)
        return RemoteProtocolError(f"peer {why}")

    def data(
        self, peer: P, piece: int, total_size: int, payload: bytes | memoryview
    ) -> MetadataComplete[P] | MetadataHashFailed[P] | None:
        """A metadata piece arrived from ``peer``.

        Returns:
            None (stored, or ignored: already have it, late, from an earlier
            round), :class:`MetadataComplete`, or :class:`MetadataHashFailed`.

        Raises:
            RemoteProtocolError: the peer is not in the fetch, or the piece is
                out of range, was never requested from it, has a
                ``total_size`` other than the one it announced, or the wrong
                length. The peer is then forgotten as by :meth:`peer_gone`;
                drop its connection.
        """
        st = self._peers.get(peer)
        if st is None or not st.connected:
            raise self._protocol_error(peer, "sent metadata it never offered")
        if total_size != st.size:
            raise self._protocol_error(
                peer, f"announced metadata_size {st.size} but sent total_size {total_size}"
            )
        n = metadata_piece_count(st.size)
        if not 0 <= piece < n:
            raise self._protocol_error(
                peer, f"sent metadata piece {piece}, out of range 0..{n - 1}"
            )
        expected = metadata_piece_length(st.size, piece)
        if len(payload) != expected:
            raise self._protocol_error(
                peer, f"sent metadata piece {piece} of {len(payload)} bytes, expected {expected}"
            )
        if piece not in st.asked:
            raise self._protocol_error(peer, f"sent metadata piece {piece}, never requested")
        st.outstanding.pop(piece, None)
        if (
            self._result is not None
            or st.banned
            or st.size != self._size
            or (self._solo_mode and self._solo != peer)
            or self._pieces[piece] is not None
        ):
            return None
        holder = self._assigned.pop(piece, None)
        if holder is None:
            self._free.remove(piece)  # released by a time-out: a late answer is welcome
        elif holder != peer:  # re-issued elsewhere: that request is now moot
            self._peers[holder].outstanding.pop(piece, None)
        self._pieces[piece] = bytes(payload)
        self._senders[piece] = peer
        self._have += 1
        st.received += 1
        if self._have < n:
            return None
        return self._check()

    def _check(self) -> MetadataComplete[P] | MetadataHashFailed[P]:
        pieces = [p for p in self._pieces if p is not None]
        info = b"".join(pieces)
        if hashlib.sha1(info).digest() == self.info_hash or (
                self.info_hash_v2 is not None
                and hashlib.sha256(info).digest() == self.info_hash_v2):
            self._result = info
            banned: list[P] = []
            for suspect, digests in self._suspects.items():
                if self._peers[suspect].banned:
                    continue
                if any(hashlib.sha1(pieces[i]).digest() != d for i, d in digests.items()):
                    self._ban(suspect)
                    banned.append(suspect)
            for st in self._peers.values():
                st.outstanding.clear()
            self._assigned = {}
            self._free = []
            return MetadataComplete(info, tuple(banned))
        senders = list(dict.fromkeys(s for s in self._senders if s is not None))
        if len(senders) == 1:
            self._ban(senders[0])
            self._new_round()
            return MetadataHashFailed(banned=(senders[0],))
        for i, sender in enumerate(self._senders):
            if sender is not None:
                self._suspects.setdefault(sender, {}).setdefault(
                    i, hashlib.sha1(pieces[i]).digest()
                )
        self._solo_mode = True
        self._solo = None
        self._new_round()
        return MetadataHashFailed(suspects=tuple(senders))


# --- serving ------------------------------------------------------------------


class MetadataServer:
    """Answers ut_metadata requests from a known info dictionary (``seed``, and
    ``download`` once the metadata is in).

    BEP 27: libtorrent offers no ut_metadata for private torrents; the caller
    decides whether to offer it at all.

    Args:
        info_bytes: the info dictionary, exactly as hashed.
    """

    def __init__(self, info_bytes: bytes) -> None:
        self._info = bytes(info_bytes)

    @property
    def metadata_size(self) -> int:
        """The ``metadata_size`` to announce in the extension handshake."""
        return len(self._info)

    @property
    def num_pieces(self) -> int:
        """Number of 16 KiB metadata pieces."""
        return metadata_piece_count(len(self._info))

    def answer(self, piece: int) -> MetadataData | MetadataReject:
        """The answer to a request for ``piece``: its data, or a reject when out of range."""
        if not 0 <= piece < self.num_pieces:
            return MetadataReject(piece)
        start = piece * METADATA_PIECE
        return MetadataData(
            piece, len(self._info), self._info[start : start + METADATA_PIECE]
        )


# --- from metadata to a torrent -----------------------------------------------


def torrent_bytes(info_bytes: bytes, magnet: Magnet | None = None, *,
                  piece_layers: bytes | None = None) -> bytes:
    """A .torrent holding ``info_bytes`` unchanged, with the magnet's trackers and web seeds.

    ``announce`` is the first tracker and ``announce-list`` (when there are
    several) has one tier per ``tr``, as in the magnet; ``ws`` become
    ``url-list`` (BEP 19); ``piece_layers``, a bencoded dict (a v2 magnet's,
    fetched from peers: :mod:`torrent.piecelayers`), is the top-level
    ``piece layers`` (BEP 52). Used for ``--save-torrent`` and to keep the
    metadata beside the resume journal.

    Raises:
        InvalidTorrent: ``info_bytes`` is not one bencoded dict.
    """
    try:
        bencoding.scan(info_bytes)
    except BencodeError as exc:
        raise InvalidTorrent(f"invalid torrent: info: not valid bencode: {exc}") from None
    if info_bytes[:1] != b"d":
        raise InvalidTorrent("invalid torrent: info: missing or not a dict")
    top: dict[bytes, Any] = {b"created by": b"fasttorrent"}
    if magnet is not None:
        urls = [url for tier in magnet.trackers for url in tier]
        if urls:
            top[b"announce"] = urls[0]
            if len(urls) > 1:
                top[b"announce-list"] = [list(tier) for tier in magnet.trackers]
        if magnet.web_seeds:
            top[b"url-list"] = list(magnet.web_seeds)
    raw = {b"info": info_bytes}
    if piece_layers is not None:
        raw[b"piece layers"] = piece_layers
    # Keys in sorted order (canonical bencoding), the info dict spliced in as is:
    # re-encoding it could change its bytes and so its info-hash.
    out = [b"d"]
    for key in sorted([*top, *raw]):
        out.append(bencoding.encode(key))
        out.append(raw[key] if key in raw else bencoding.encode(top[key]))
    out.append(b"e")
    return b"".join(out)


def metainfo_from_info(info_bytes: bytes, magnet: Magnet, *,
                       piece_layers: bytes | None = None) -> Metainfo:
    """Validate fetched metadata exactly as a .torrent file, and return its metainfo.

    Args:
        info_bytes: the info dictionary (e.g. :attr:`MetadataFetch.result`,
            or the copy kept beside the resume journal).
        magnet: the magnet it belongs to (info-hash, trackers).
        piece_layers: a v2 torrent's bencoded ``piece layers`` (fetched from
            peers, or kept), checked against each file's root as a
            .torrent's are.

    Returns:
        The :class:`Metainfo`, as :func:`torrent.metainfo.parse` gives for
        the .torrent of :func:`torrent_bytes`.

    Raises:
        InvalidTorrent: the bytes do not hash to the magnet's info-hash, or
            the torrent is invalid or unsafe (the message names the field, as
            for a .torrent file: exit 3).
    """
    if magnet.info_hash_v2 is not None:  # BEP 52: a hybrid link's both hashes must hold
        digest = hashlib.sha256(info_bytes).digest()
        if digest != magnet.info_hash_v2:
            raise InvalidTorrent(
                f"invalid torrent: info: metadata hashes to {digest.hex()} (SHA-256),"
                f" not to the magnet's v2 info-hash {magnet.info_hash_v2.hex()}"
            )
    if not magnet.v2_only:
        digest = hashlib.sha1(info_bytes).digest()
        if digest != magnet.info_hash:
            raise InvalidTorrent(
                f"invalid torrent: info: metadata hashes to {digest.hex()},"
                f" not to the magnet's info-hash {magnet.info_hash_hex}"
            )
    meta = metainfo.parse(torrent_bytes(info_bytes, magnet, piece_layers=piece_layers))
    if meta.info_hash != magnet.info_hash:  # the bytes were more than one value
        raise InvalidTorrent("invalid torrent: info: metadata is not exactly one bencoded dict")
    return meta
