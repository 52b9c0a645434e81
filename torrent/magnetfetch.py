"""Fetch a magnet link's metadata from peers (BEP 9), before the download starts.

Theory of operation
-------------------
A magnet link names a torrent by its info-hash; the info dictionary has to
come from peers before a download can be planned (piece count, files). This
module does that in the coordinator's process, on its own uvloop run, before
any worker exists; the download then proceeds as from a .torrent
(:func:`torrent.coordinator.download`).

- **Peers** come from the magnet's ``x.pe``, from ``--peer``
  (``opts.peers``), from the magnet's trackers (announced to with the
  info-hash, ``left`` = :data:`MAGNET_LEFT`) and from the DHT when the run
  has a node (:meth:`torrent.dht.service.Dht.search`, ``get_peers`` only:
  nothing listens yet, so nothing is announced). They go into one bounded
  table (:data:`MAX_CANDIDATES`) and are dialled at most
  :data:`MAX_METADATA_CONNECTIONS` at a time.
- **Each connection** runs a :class:`~torrent.wire.metadata_conn.MetadataConnection`
  (sans-IO: handshakes, ut_metadata) behind the usual socket adapter
  (:class:`~torrent.net.peer.PeerConn`). The connect and both handshakes
  must be done within ``opts.handshake_timeout``.
- **One shared** :class:`~torrent.metadata.MetadataFetch` decides which
  piece to ask whom, checks what arrives, times requests out
  (:meth:`~torrent.metadata.MetadataFetch.timed_out` on a :data:`TICK`
  timer) and bans the senders of bad metadata: their connections are closed
  and they are never dialled again. After every event the fetch is asked
  for the requests each ready connection may send now.
- **Encryption** (``opts.encryption``, :func:`~torrent.options.dial_order`):
  each dial opens plaintext or with MSE/PE; a peer that drops the first
  kind before its handshake is dialled at once with the other (once: the
  kind then sticks, and that redial is not counted as an attempt).
- **A peer that drops** is dialled again after a back-off
  (:data:`PEER_RETRY_BASE`, doubling) up to :data:`PEER_MAX_ATTEMPTS`
  times; one that cannot give metadata at all (no BEP 10, no ut_metadata,
  another torrent, a protocol error, a ban) is not.
- **A v2 magnet** (``urn:btmh:`` alone, BEP 52) is fetched under its
  truncated v2 info-hash, and its metadata must hash (SHA-256) to the v2
  one. Its info dict holds each file's ``pieces root`` but not the piece
  layers a file larger than one piece is verified by: those come next, over
  the same connections, with BEP 52 hash requests
  (:class:`~torrent.piecelayers.LayerFetch`: runs of 512 hashes proved up to
  the root, to the peers that offered the metadata, a reject or a time-out
  moving a request to another peer; a peer whose hashes do not fold up to
  the root is banned like a sender of bad metadata). A hybrid link is
  fetched through its v1 hash (no v1 connection may carry hash requests:
  libtorrent drops it) and downloaded as a hybrid without its layers is:
  its pieces checked by SHA-1.
- **The end**: the verified info dict (and a v2 magnet's layers) is
  returned as soon as the fetch is done. No metadata piece (or layer hashes)
  for ``opts.stall_timeout`` seconds (0: never give up), or no peer left
  that could send one and no tracker to ask, is
  :class:`~torrent.errors.Incomplete` (exit 6), with one line naming the
  peers tried and what each did. SIGINT / SIGTERM is
  :class:`~torrent.errors.Interrupted` (exit 7). On every path every
  connection, dial and tracker task is closed before the function returns.

Trackers see the same peer id and port as the download that follows (the
coordinator reuses them), so no ``stopped`` is sent between the two: the
download's own ``started`` continues the same session.

**The connections are kept** for the download (BEP 9: the fetch and the
download are one swarm). When the fetch is done, each connection that can be
handed over (:meth:`~torrent.wire.metadata_conn.MetadataConnection.handover`:
past any MSE handshake, not RC4-encrypted, nothing left unsent; the peer's
own handshakes may still be on their way) leaves as a
:class:`Handover`: a duplicate of its socket's descriptor and the stream a
worker must read before the socket's bytes. The coordinator passes each one
to a worker (``SCM_RIGHTS``), whose protocol takes it up as a connection it
dialled: no second connect, no second handshake. The rest are closed, and
the download dials those peers again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NamedTuple

from . import __version__, metainfo
from .errors import Incomplete, Interrupted, RemoteProtocolError, TrackerError
from .magnet import Magnet
from .metadata import MetadataComplete, MetadataFetch, MetadataHashFailed
from .net.peer import PeerConn
from .options import Options, dial_order
from .peeraddr import format_peer
from .wire.extension import MetadataData, MetadataReject
from .wire.framing import ReceiveBuffer
from .wire.handshake import HANDSHAKE_LENGTH
from .wire.messages import CHOKE, UNCHOKE, Hashes, HashReject
from .wire.metadata_conn import (
    MAX_HANDOVER_BYTES,
    ConnectionReady,
    MetadataConnection,
    MetadataConnState,
    MetadataEvent,
    MetadataOffer,
)

__all__ = [
    "MAGNET_LEFT",
    "MAX_CANDIDATES",
    "MAX_METADATA_CONNECTIONS",
    "PEER_MAX_ATTEMPTS",
    "PEER_RETRY_BASE",
    "TICK",
    "Fetched",
    "Handover",
    "caught_up",
    "close_handovers",
    "fetch_metadata",
]

if TYPE_CHECKING:
    from .dht.service import Dht
    from .piecelayers import LayerFetch

#: Connections open or being dialled at once (and never more than
#: ``opts.max_peers``). Metadata is at most a few MiB fetched 16 KiB at a time
#: from a few peers in parallel (metadata.MAX_OUTSTANDING_PER_PEER each):
#: a few dozen peers are plenty, and each costs a socket and a buffer.
MAX_METADATA_CONNECTIONS: Final = 32

#: Peers remembered (x.pe, --peer, trackers): the table the timer walks.
#: Trackers hand out at most a few hundred peers an announce; 1,024 is the
#: fetch's own table (metadata.MAX_METADATA_PEERS).
MAX_CANDIDATES: Final = 1024

#: A dropped peer is dialled again after this many seconds, doubling.
PEER_RETRY_BASE: Final = 2.0

#: Dials per peer at most: a peer that keeps dropping the connection is not
#: worth more, and the stall time-out ends the fetch anyway.
PEER_MAX_ATTEMPTS: Final = 4

#: How often request time-outs, handshake time-outs and the stall are checked
#: (seconds). Metadata requests time out after 5 s (METADATA_REQUEST_TIMEOUT),
#: so a quarter second is precise enough and costs nothing.
TICK: Final = 0.25

#: ``left`` announced to trackers while the torrent's size is unknown: not 0,
#: which would tell the tracker we are a seed (and get us no seeds back).
#: libtorrent announces 16 KiB in this case (``value_or(bytes_left(), 16*1024)``).
MAGNET_LEFT: Final = 16 * 1024

#: Peers named in the "no metadata" message (the rest are counted).
_DESCRIBE_LIMIT: Final = 8

Addr = tuple[str, int]


def _name(addr: Addr) -> str:
    return format_peer(*addr)


@dataclass(slots=True)
class _Candidate:
    """A peer we may dial, and what became of it."""

    source: str
    attempts: int = 0
    retry_at: float = 0.0
    reason: str = ""
    busy: bool = False  # being dialled or connected
    final: bool = False  # never dialled again (banned, cannot give metadata, attempts spent)
    kind: int = 0  # the entry of dial_order its dials open with (1: after the fallback)


class _Link:
    """One connection's :class:`~torrent.net.peer.ConnectionHandler`."""

    def __init__(self, owner: _Fetcher, addr: Addr, conn: PeerConn, started: float, *,
                 mse: bool = False) -> None:
        self.owner = owner
        self.addr = addr
        self.conn = conn
        self.started = started  # when the dial began: the handshake deadline counts from it
        self.mc = MetadataConnection(owner.magnet.info_hash, owner.peer_id,
                                     client=f"fasttorrent {__version__}",
                                     listen_port=owner.port or None, mse=mse,
                                     dht=owner.dht_bit)
        self.handshaken = False  # the peer's BitTorrent handshake checked out
        self.closed = False
        self.offered = False  # it is in the fetch
        self.final = False  # closed for a reason a new dial would not change

    @property
    def rb(self) -> ReceiveBuffer:
        return self.mc.rb

    def data_received(self) -> None:
        self.owner.on_data(self)

    def writable(self) -> None:
        pass  # we send a few small messages: nothing waits for the queue to drain

    def lost(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.mc.close()
            self.owner.on_lost(self, reason)

    def flush(self) -> None:
        data = self.mc.data_to_send()
        if data and not self.closed:
            self.conn.write(data)

    def close(self, reason: str) -> None:
        """Drop the connection; :meth:`lost` follows at once."""
        self.conn.abort(reason)


class _Fetcher:
    """The state of one :func:`fetch_metadata` run (see the module docstring)."""

    def __init__(self, magnet: Magnet, opts: Options, peer_id: bytes, port: int,
                 log: Callable[[str], None],
                 on_dialled: Callable[[], None] | None = None) -> None:
        self.magnet = magnet
        self.on_dialled = on_dialled  # called once, after the first handshake went out
        self.opts = opts
        self.peer_id = peer_id
        self.port = port
        self.log = log
        self.loop = asyncio.get_running_loop()
        self.fetch: MetadataFetch[Addr] = MetadataFetch(magnet.info_hash,
                                                         info_hash_v2=magnet.info_hash_v2)
        # a v2 magnet's piece layers, fetched once the metadata is in (start_layers)
        self.layer_fetch: LayerFetch[Addr] | None = None
        self.layers_started = False
        self.candidates: dict[Addr, _Candidate] = {}
        self.links: dict[Addr, _Link] = {}
        self.dials: set[asyncio.Task[None]] = set()
        self.max_connections = min(MAX_METADATA_CONNECTIONS, opts.max_peers)
        self.dial_order = dial_order(opts.encryption)  # MSE or not, in order
        self.wake = asyncio.Event()
        self.closing = False
        self.interrupted = False
        self.tracking = False  # the tracker task runs: peers may still come
        self.dht_searching = False  # the DHT searches: peers may still come
        self.dht_bit = False  # our DHT node runs: our handshakes say so (BEP 5)
        self.started = self.loop.time()
        self.last_progress = self.started

    # -- peers ------------------------------------------------------------------------
    def add_candidates(self, addrs: Iterable[Addr], source: str) -> None:
        """New peers to dial (known ones and those over MAX_CANDIDATES are skipped)."""
        added = False
        for host, port in addrs:
            addr = (str(host), int(port))
            if addr in self.candidates or len(self.candidates) >= MAX_CANDIDATES:
                continue
            self.candidates[addr] = _Candidate(source)
            added = True
        if added:
            self.wake.set()

    def dial_more(self, now: float) -> None:
        """Dial waiting candidates while fewer than ``max_connections`` are open or dialling."""
        if self.closing:
            return
        for addr, c in self.candidates.items():
            if len(self.links) + len(self.dials) >= self.max_connections:
                return
            if c.busy or c.final or c.retry_at > now:
                continue
            c.busy = True
            c.attempts += 1
            task = self.loop.create_task(self._dial(addr, now))
            self.dials.add(task)
            task.add_done_callback(self.dials.discard)

    async def _dial(self, addr: Addr, started: float) -> None:
        host, port = addr
        try:
            await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: PeerConn(lambda conn: self._accept(conn, addr, started), addr, True),
                    host, port),
                self.opts.handshake_timeout)
        except (TimeoutError, OSError) as e:
            why = ("timed out" if isinstance(e, TimeoutError)
                   else os.strerror(e.errno) if e.errno else str(e))
            self._ended(addr, f"connect failed: {why}", final=False)

    def _accept(self, conn: PeerConn, addr: Addr, started: float) -> _Link | None:
        c = self.candidates.get(addr)
        if self.closing or addr in self.links or c is None:
            return None
        link = _Link(self, addr, conn, started, mse=self.dial_order[c.kind])
        self.links[addr] = link
        link.flush()  # our handshake
        if self.on_dialled is not None:  # while the peers answer (after this batch of connects)
            self.loop.call_soon(self.on_dialled)
            self.on_dialled = None
        return link

    def _ended(self, addr: Addr, reason: str, *, final: bool) -> None:
        """A dial or connection ended: note why, and when (whether) to dial again."""
        c = self.candidates.get(addr)
        if c is None:
            return
        c.busy = False
        if not c.reason.startswith("banned"):
            c.reason = reason
        if final or c.attempts >= PEER_MAX_ATTEMPTS:
            c.final = True
        else:
            c.retry_at = self.loop.time() + PEER_RETRY_BASE * 2 ** (c.attempts - 1)
        self.wake.set()

    def on_lost(self, link: _Link, reason: str) -> None:
        """A connection is gone (we closed it, or the peer did)."""
        if self.links.get(link.addr) is link:
            del self.links[link.addr]
        self.fetch.peer_gone(link.addr)
        if self.layer_fetch is not None:
            self.layer_fetch.peer_gone(link.addr)
        c = self.candidates.get(link.addr)
        if (c is not None and not link.handshaken and not c.reason.startswith("banned")
                and c.kind + 1 < len(self.dial_order)):
            # dropped before its handshake: the other kind at once, once, not counted
            c.kind += 1
            c.attempts -= 1
            self._ended(link.addr, reason, final=False)
            c.retry_at = 0.0
        else:
            self._ended(link.addr, reason, final=link.final)
        if not self.closing:
            self.pump(self.loop.time())  # its requests went back to the others

    def close(self, link: _Link, reason: str, *, final: bool) -> None:
        """Drop ``link``; ``final``: never dial that peer again."""
        link.final = final
        link.close(reason)

    def ban(self, addr: Addr,
            why: str = "banned: its metadata does not hash to the info-hash") -> None:
        c = self.candidates.get(addr)
        if c is not None:
            c.reason = why
            c.final = True
        link = self.links.get(addr)
        if link is not None:
            self.close(link, why, final=True)

    # -- a v2 magnet's piece layers ---------------------------------------------------
    @property
    def done(self) -> bool:
        """The metadata is in, and a v2 magnet's piece layers too."""
        return self.fetch.done and self.layers_started and (
            self.layer_fetch is None or self.layer_fetch.done)

    def start_layers(self) -> None:
        """Once the metadata is in: plan a v2-only torrent's piece layers (none to fetch
        for a v1 or hybrid magnet, or when no file is larger than a piece).

        Raises:
            InvalidTorrent: the info dict is not a valid torrent (as a .torrent).
        """
        self.layers_started = True
        info = self.fetch.result
        if not self.magnet.v2_only or info is None:
            return
        from .piecelayers import LayerFetch, layer_files

        meta = metainfo.parse(b"d4:info" + info + b"e", require_layers=False)
        files = layer_files(meta)
        if not files:
            return
        self.layer_fetch = LayerFetch(files, meta.piece_length)
        self.log(f"magnet {self.magnet.info_hash_hex}: fetching the piece layers of "
                 f"{len(files)} file(s) ({self.layer_fetch.requests_left} hash requests)")
        for link in self.links.values():
            if link.offered and not link.closed:
                self.layer_fetch.add_peer(link.addr)
        self.last_progress = self.loop.time()
        self.pump(self.last_progress)

    def banned(self) -> frozenset[Addr]:
        """Every peer banned for bad metadata or bad hashes."""
        lf = self.layer_fetch
        return self.fetch.banned | (lf.banned if lf is not None else frozenset())

    # -- the protocol -----------------------------------------------------------------
    def on_data(self, link: _Link) -> None:
        """Bytes arrived on ``link``: handle its events, then send what is due."""
        if link.closed or self.closing:
            return
        now = self.loop.time()
        try:
            events = link.mc.events()
            for ev in events:
                if link.closed:
                    break
                self._handle(link, ev, now)
        except RemoteProtocolError as e:
            self.close(link, str(e), final=True)
            return
        link.flush()
        self.pump(now)

    def _handle(self, link: _Link, ev: MetadataEvent, now: float) -> None:
        addr = link.addr
        if isinstance(ev, ConnectionReady):
            link.handshaken = True
            link.flush()  # our extension handshake
        elif isinstance(ev, MetadataOffer):
            if ev.metadata_size is None:
                self.close(link, "offers no metadata (no ut_metadata or metadata_size)",
                           final=True)
            elif not link.offered and self.layer_fetch is not None:
                link.offered = True  # the metadata is in: it may have the layers
                self.layer_fetch.add_peer(addr)
            elif not link.offered and self.fetch.done and ev.metadata_size == self.fetch.size:
                pass  # its offer came after the metadata: a peer for the download all the same
            elif not link.offered:
                if not self.fetch.add_peer(addr, ev.metadata_size):
                    why = ("banned: its metadata does not hash to the info-hash"
                           if addr in self.fetch.banned else
                           f"metadata_size {ev.metadata_size} not taken")
                    self.close(link, why, final=True)
                else:
                    link.offered = True
        elif isinstance(ev, MetadataData):
            before = self.fetch.pieces_have
            result = self.fetch.data(addr, ev.piece, ev.total_size, ev.data)
            if self.fetch.pieces_have > before or self.fetch.done:
                self.last_progress = now
            if isinstance(result, MetadataHashFailed):
                who = ", ".join(map(_name, result.banned or result.suspects))
                self.log(f"warning: metadata from {who} does not hash to the info-hash; "
                         "fetching it again")
                for p in result.banned:
                    self.ban(p)
            elif isinstance(result, MetadataComplete):
                for p in result.banned:
                    self.ban(p)
                self.wake.set()
        elif isinstance(ev, MetadataReject):
            self.fetch.reject(addr, ev.piece, now)
        elif isinstance(ev, Hashes):
            lf = self.layer_fetch
            if lf is None:
                raise RemoteProtocolError("peer sent hashes we never asked for")
            got = lf.hashes(addr, ev)
            if got.banned is not None:
                self.log(f"warning: piece-layer hashes from {_name(addr)} do not hash to "
                         "the file's root; fetching them from another peer")
                self.ban(addr, "banned: its piece-layer hashes do not hash to the file's root")
            elif got.accepted:
                self.last_progress = now
                if lf.done:
                    self.wake.set()
        elif isinstance(ev, HashReject):
            if self.layer_fetch is not None:
                self.layer_fetch.reject(addr, ev)

    def pump(self, now: float) -> None:
        """Send each ready connection the requests the fetch hands it now; close
        the ones it will ask no more."""
        if self.fetch.done:
            if self.layer_fetch is not None and not self.layer_fetch.done:
                self._pump_layers(self.layer_fetch, now)
            self.wake.set()
            return
        for link in list(self.links.values()):
            if link.closed or not link.offered or not link.mc.can_request:
                continue
            if not self.fetch.usable(link.addr):
                self.close(link, "asked no more: it rejected or did not answer too often",
                           final=True)
                continue
            while (piece := self.fetch.next_request(link.addr, now)) is not None:
                link.mc.request(piece)
            link.flush()

    def _pump_layers(self, lf: LayerFetch[Addr], now: float) -> None:
        for link in list(self.links.values()):
            if link.closed or not link.offered or link.mc.state is not MetadataConnState.READY:
                continue
            if not lf.usable(link.addr):
                continue  # struck out: kept for the download, asked no more
            while (req := lf.next_request(link.addr, now)) is not None:
                link.mc.request_hashes(req)
            link.flush()

    def tick(self, now: float) -> None:
        """The timer: request and handshake time-outs, more dials."""
        self.fetch.timed_out(now)
        if self.layer_fetch is not None:
            self.layer_fetch.timed_out(now)
        deadline = self.opts.handshake_timeout
        for link in list(self.links.values()):
            if link.mc.state < MetadataConnState.READY and now - link.started > deadline:
                self.close(link, f"no handshake within {deadline:g} s", final=False)
        self.pump(now)
        self.dial_more(now)

    # -- trackers ---------------------------------------------------------------------
    async def announce(self) -> None:
        """Announce to the magnet's trackers (BEP 12 tiers) until cancelled; feed the peers."""
        # imported here: a fetch without trackers (--no-trackers, none in the
        # magnet) does not pay for the tracker clients (about 9 ms of imports)
        from .tracker.client import make_announce_fn
        from .tracker.multitracker import TrackerSet

        try:
            ts = TrackerSet(self.magnet.trackers)
        except ValueError as e:
            self.log(f"warning: trackers: {e}")
            return
        for url, why in ts.skipped:
            self.log(f"warning: tracker {url} skipped: {why}")
        fn = make_announce_fn(info_hash=self.magnet.info_hash, peer_id=self.peer_id,
                              port=self.port, stats=lambda: (0, 0, MAGNET_LEFT),
                              clock=self.loop.time)
        while True:
            for a in ts.due(self.loop.time()):
                try:
                    result = await fn(a)
                except TrackerError as e:
                    self.log(f"warning: {ts.on_failure(a, e, self.loop.time())}")
                else:
                    warning = ts.on_success(a, result, self.loop.time())
                    if warning:
                        self.log(f"warning: {warning}")
                    self.add_candidates(result.peers, "tracker")
                self.wake.set()
            at = ts.next_announce_at(self.loop.time())
            await asyncio.sleep(max(TICK, (at or 0.0) - self.loop.time()))

    # -- the end ----------------------------------------------------------------------
    def describe(self) -> str:
        """One line: the peers tried and what each did."""
        if not self.candidates:
            if not self.magnet.trackers:
                trackers = "it has no tracker"
            elif not self.opts.use_trackers:
                trackers = "its trackers are not used (--no-trackers)"
            else:
                trackers = "its trackers gave none"
            dht = " and the DHT found none" if self.dht_searching else ""
            return (f"no peer to ask: the magnet has no x.pe, no --peer was given and "
                    f"{trackers}{dht}")
        report = {r.peer: r for r in self.fetch.report()}
        parts = []
        for addr, c in list(self.candidates.items())[:_DESCRIBE_LIMIT]:
            r = report.get(addr)
            if r is not None:
                what = [f"metadata_size {r.metadata_size}", f"{r.received} pieces"]
                if r.rejects:
                    what.append(f"{r.rejects} rejects")
                if r.timeouts:
                    what.append(f"{r.timeouts} time-outs")
                if r.banned:
                    what.append("banned: bad metadata")
                elif c.reason and not r.connected:
                    what.append(c.reason)
            else:
                what = [c.reason or ("connected" if c.busy else "not dialled")]
            parts.append(f"{_name(addr)} ({', '.join(what)})")
        more = len(self.candidates) - _DESCRIBE_LIMIT
        return "peers tried: " + "; ".join(parts) + (f" and {more} more" if more > 0 else "")

    def stalled(self, now: float) -> str | None:
        """Why the fetch should give up now, or None: no metadata piece for
        ``stall_timeout``, or nothing left that could ever bring one (no peer
        left to dial and no tracker to ask for more)."""
        stall = self.opts.stall_timeout
        if stall and now - self.last_progress > stall:
            if self.layer_fetch is not None:
                return (f"no piece-layer hashes for {stall:g} s "
                        f"({self.layer_fetch.requests_left} hash requests unanswered)")
            return f"no metadata piece for {stall:g} s"
        if self.tracking or self.dht_searching or self.links or self.dials:
            return None
        if not self.candidates:
            return "no peer to fetch the metadata from"
        if all(c.final for c in self.candidates.values()):
            return "no peer left that could send the metadata"
        return None

    def hand_over(self) -> tuple[Handover, ...]:
        """Take the connections that can go on to the download out of the fetch (see the
        module docstring); call it once done, before :meth:`shutdown` closes the rest."""
        out: list[Handover] = []
        for link in list(self.links.values()):
            if link.closed:
                continue
            data = link.mc.handover()
            tr = link.conn.transport
            sock = tr.get_extra_info("socket") if tr is not None else None
            if data is None or sock is None or link.conn.write_buffer_size():
                continue
            try:
                fd = os.dup(sock.fileno())
            except OSError:
                continue  # out of descriptors: this one is dialled again
            c = self.candidates.get(link.addr)
            out.append(Handover(link.addr[0], link.addr[1], fd, data,
                                c.source if c is not None else "magnet", link.mc.interested,
                                link.mc.unchoked))
            # closing our descriptor leaves the socket open on the duplicate
            self.close(link, "handed over to the download", final=True)
        return tuple(out)

    async def shutdown(self) -> None:
        """Close every connection and dial (bounded: aborts, cancels)."""
        self.closing = True
        for link in list(self.links.values()):
            self.close(link, "metadata fetch over", final=True)
        for task in list(self.dials):
            task.cancel()
        if self.dials:
            await asyncio.gather(*self.dials, return_exceptions=True)
        # let the aborted transports deliver connection_lost before the loop goes
        await asyncio.sleep(0)


class Handover(NamedTuple):
    """A connection the fetch made, for the download to keep (see the module docstring).

    Attributes:
        host, port: the peer, as dialled.
        fd: a descriptor of the connected socket, owned by whoever holds this.
        data: the stream to read before the socket's bytes (the peer's
            handshake and its frames since, but ``ut_metadata``).
        source: where the fetch heard of the peer (``magnet``, ``manual``,
            ``tracker``, ``dht``).
        interested: our INTERESTED went out on it (the peer announced a piece).
        unchoked: the peer's last choke message unchoked us.
        worker: the worker that is to take it (set by the coordinator when it
            sends ``requested``; -1: any; ``coordinator.STREAM_CUT``: to be closed).
        requested: the block requests the coordinator sent on it before handing it
            to ``worker`` (``Coordinator.request_early``).
    """

    host: str
    port: int
    fd: int
    data: bytes
    source: str
    interested: bool = False
    unchoked: bool = False
    worker: int = -1
    requested: tuple[tuple[int, int, int], ...] = ()


def caught_up(h: Handover) -> Handover:
    """``h`` with what its peer sent since the fetch ended (read now, without waiting,
    up to :data:`MAX_HANDOVER_BYTES` in all) added to its stream, and ``unchoked``
    as that stream's last CHOKE or UNCHOKE says: a peer that answered the fetch's
    INTERESTED after the metadata was complete can be asked for blocks before its
    worker runs (``Coordinator.request_early``)."""
    room = MAX_HANDOVER_BYTES - len(h.data)
    if room <= 0:
        return h
    try:
        with socket.socket(fileno=os.dup(h.fd)) as sock:
            more = sock.recv(room, socket.MSG_DONTWAIT)
    except OSError:  # nothing came (EAGAIN), or the connection is gone: the worker sees
        return h
    if not more:
        return h  # the peer closed it: its worker hears the end of the stream
    data = h.data + more
    state = last_choke(data)
    return h._replace(data=data, unchoked=h.unchoked if state is None else state)


def last_choke(stream: bytes) -> bool | None:
    """The last CHOKE (False) or UNCHOKE (True) in a peer's stream, its 68-byte
    handshake first (None: neither came). The frames are only walked (a frame
    cut short at the end ends the walk): their checks are the worker's, which
    reads the same bytes."""
    state = None
    pos, end = HANDSHAKE_LENGTH, len(stream)
    while pos + 5 <= end:
        length = int.from_bytes(stream[pos : pos + 4])
        if length == 1 and stream[pos + 4] in (CHOKE, UNCHOKE):
            state = stream[pos + 4] == UNCHOKE
        pos += 4 + length
    return state


def close_handovers(conns: Iterable[Handover]) -> None:
    """Close the descriptors of connections not handed on (an error, nothing to do)."""
    for h in conns:
        try:
            os.close(h.fd)
        except OSError:
            pass


class Fetched(NamedTuple):
    """What a metadata fetch brings: the info dictionary, the peers it banned for
    sending metadata that does not hash to the info-hash or piece-layer hashes that
    do not hash to their root (the download that follows never dials them), the
    connections it hands over, and a v2 magnet's piece layers (the bencoded
    ``piece layers`` of its .torrent; None: none fetched)."""

    info: bytes
    banned: frozenset[tuple[str, int]]
    conns: tuple[Handover, ...] = ()
    layers: bytes | None = None


async def fetch_metadata(magnet: Magnet, opts: Options, *, peer_id: bytes, port: int,
                         log: Callable[[str], None], dht: Dht | None = None,
                         on_dialled: Callable[[], None] | None = None,
                         handle_signals: bool = True) -> Fetched:
    """Fetch the info dictionary of ``magnet`` from peers (BEP 9).

    Args:
        magnet: the parsed magnet link (info-hash, trackers, ``x.pe`` peers).
        opts: the run's options: ``peers`` (dialled too), ``use_trackers``,
            ``max_peers``, ``handshake_timeout``, ``stall_timeout``.
        peer_id: our peer id (the download that follows uses the same).
        port: the port we announce (``p`` and to trackers); the download
            listens on it.
        log: called with progress and warning lines.
        dht: an open DHT node to find peers with (served on this loop for the
            fetch, left open for the download).
        on_dialled: called once on the fetch's loop, soon after the first
            connection sent our handshake: work that blocks (the download forks
            its workers there) then overlaps the peers' answers.
        handle_signals: SIGINT / SIGTERM end the fetch (False: the caller's; a
            batch cancels the fetch instead).

    Returns:
        The info dictionary's bytes, verified against the info-hash (not yet
        validated as a torrent: :func:`~torrent.metadata.metainfo_from_info`),
        the peers banned for bad metadata or hashes, the connections handed
        over (their descriptors are the caller's to pass on or close), and a
        v2 magnet's piece layers, each proved against its file's root.

    Raises:
        Incomplete: no metadata piece (or piece-layer hashes) for
            ``opts.stall_timeout`` seconds, or no peer and no tracker at all;
            the message names the peers tried.
        InvalidTorrent: a v2 magnet's metadata is not a valid torrent.
        Interrupted: SIGINT / SIGTERM.
    """
    f = _Fetcher(magnet, opts, peer_id, port, log, on_dialled)
    f.dht_bit = dht is not None
    loop = f.loop

    def on_signal() -> None:
        f.interrupted = True
        f.wake.set()

    signals: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM) if handle_signals else ():
        try:
            loop.add_signal_handler(sig, on_signal)
            signals.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread: the caller handles signals
    f.add_candidates(magnet.peers, "magnet")
    f.add_candidates(opts.peers, "manual")
    tracker_task: asyncio.Task[None] | None = None
    if opts.use_trackers and magnet.trackers:
        tracker_task = loop.create_task(f.announce())
        f.tracking = True
    dht_stop = asyncio.Event()
    dht_task: asyncio.Task[None] | None = None
    if dht is not None:
        await dht.attach()
        dht_task = loop.create_task(dht.search(
            magnet.info_hash, lambda peers: f.add_candidates(peers, "dht"), dht_stop))
        f.dht_searching = True
    conns: tuple[Handover, ...] = ()
    asking = [w for w, on in (("the trackers", tracker_task), ("the DHT", dht_task)) if on]
    log(f"magnet {magnet.info_hash_hex}: fetching the metadata from peers "
        f"({len(f.candidates)} known{', asking ' + ' and '.join(asking) if asking else ''})")
    try:
        while True:
            now = loop.time()
            if f.interrupted:
                raise Interrupted("interrupted while fetching the metadata; nothing saved")
            if f.fetch.done and not f.layers_started:
                f.start_layers()
            if f.done:
                break
            f.tick(now)
            if f.fetch.done and not f.layers_started:
                f.start_layers()
            if f.done:
                break
            if tracker_task is not None and tracker_task.done() and f.tracking:
                f.tracking = False  # the announce loop ended: no usable tracker
                exc = None if tracker_task.cancelled() else tracker_task.exception()
                if exc is not None:
                    raise exc  # a bug of ours (tracker failures are warnings)
            if dht_task is not None and dht_task.done() and f.dht_searching:
                f.dht_searching = False  # the search ended (the node was closed under it)
                exc = None if dht_task.cancelled() else dht_task.exception()
                if exc is not None:
                    raise exc  # a bug of ours (a lying node is ignored, never raised)
            why = f.stalled(now)
            if why is not None:
                raise Incomplete(f"incomplete: {why} (magnet {magnet.info_hash_hex}); "
                                 f"{f.describe()}")
            f.wake.clear()
            try:
                await asyncio.wait_for(f.wake.wait(), TICK)
            except TimeoutError:
                pass
        conns = f.hand_over()
    finally:
        if tracker_task is not None:
            tracker_task.cancel()
            await asyncio.gather(tracker_task, return_exceptions=True)
        if dht is not None:
            dht_stop.set()
            if dht_task is not None:
                dht_task.cancel()
                await asyncio.gather(dht_task, return_exceptions=True)
            await dht.detach()
        await f.shutdown()
        for sig in signals:
            loop.remove_signal_handler(sig)
    info = f.fetch.result
    if info is None:  # cannot happen: the loop leaves only when done or by raising
        raise RuntimeError("metadata fetch ended without the metadata")
    served = sum(1 for r in f.fetch.report() if r.received)
    layers = f.layer_fetch.encoded() if f.layer_fetch is not None else None
    log(f"metadata: {len(info)} bytes from {served} peer(s)"
        f"{f' and piece layers of {len(layers)} bytes' if layers else ''} in "
        f"{loop.time() - f.started:.3f} s")
    return Fetched(info, f.banned(), conns, layers)
