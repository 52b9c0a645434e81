"""The DHT's UDP adapter: sockets, transaction ids, time-outs, lookups and the saved table.

Theory of operation
-------------------
:class:`Dht` is a thin asyncio adapter around the sans-IO core
(:mod:`.krpc`, :mod:`.routing`, :mod:`.lookup`, :mod:`.node`). It runs in
the coordinator's process, never on a worker's loop:

- **Sockets.** :meth:`Dht.open` binds one UDP socket per address family
  (BEP 32: IPv4 on an IPv4 bind address, IPv6 on an IPv6 one, both on
  ``::`` and on the default ``""``, which runs IPv4 alone on a machine
  without IPv6), preferably on the TCP port the run listens on, so that
  ``announce_peer`` can say ``implied_port``. The sockets outlive an event
  loop: :meth:`Dht.attach` hands each loop a duplicate of them, so the
  magnet's metadata fetch and the download that follows (two loop runs)
  share one node, one routing table and one id.
- **Datagrams** go to :func:`.krpc.decode` (bounded: a datagram over
  :data:`.krpc.MAX_DATAGRAM` is refused before parsing). Queries are
  answered by the family's :class:`.node.DhtServer` (rate limits, tokens,
  peer store). Answers and errors are matched to what we sent by
  transaction id *and* address (:class:`_Pending`); anything else is
  counted and dropped. At most :data:`MAX_PENDING` queries are in flight.
- **Lookups** (:meth:`Dht.lookup`) drive a :class:`.lookup.Lookup` until it
  is done or :data:`LOOKUP_TIMEOUT` passes, waking on each answer or at the
  lookup's own deadline. ``get_peers`` runs one lookup per family
  (:meth:`Dht.get_peers`), hands over new peers as they arrive, and
  :meth:`Dht.announce` sends ``announce_peer`` to the closest nodes that
  gave a token.
- **Upkeep** (a task while attached, every :data:`UPKEEP_TICK`): queries
  that were never answered time out (the node's failure is counted in its
  table), questionable nodes are pinged, stale buckets refreshed with a
  ``find_node`` lookup, and the table saved every :data:`SAVE_INTERVAL`.
- **Peer search** (:meth:`Dht.search`): ``get_peers`` at once, again after
  :data:`SEARCH_FIRST_RETRY` seconds, doubling up to
  :data:`SEARCH_MAX_INTERVAL` while the owner says it lacks peers, and every
  :data:`ANNOUNCE_INTERVAL` otherwise; each round announces when the owner
  listens.
- **State**: our id and the table's nodes are written to
  ``STATE_DIR/dht.state`` (:func:`.routing.dump` form) on :meth:`Dht.close`
  and periodically, and read at :meth:`Dht.open`: a restart starts from the
  nodes it knew. A corrupt file is one warning and a fresh start.

Time comes from an injected clock (``time.monotonic`` by default) and is
passed as ``now`` into the core.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from .. import bencoding
from ..ports import NO_IPV6_ERRNOS
from . import krpc, routing
from .krpc import Address, Error, KRPCError, NodeInfo, Ping, Response
from .lookup import Lookup, LookupKind
from .node import DhtServer
from .routing import K, RoutingTable

if TYPE_CHECKING:
    from ..options import Options

__all__ = [
    "ANNOUNCE_INTERVAL",
    "DEFAULT_BOOTSTRAP",
    "LOOKUP_TIMEOUT",
    "MAX_PENDING",
    "QUERY_TIMEOUT",
    "SAVE_INTERVAL",
    "SEARCH_FIRST_RETRY",
    "SEARCH_MAX_INTERVAL",
    "STATE_FILE",
    "UPKEEP_TICK",
    "Dht",
    "default_state_dir",
    "start_dht",
]

#: The well-known routers a node with an empty table asks first (BEP 5 leaves
#: bootstrapping to the client; these are the ones libtorrent and
#: Transmission ship with).
DEFAULT_BOOTSTRAP: Final = (("router.bittorrent.com", 6881), ("dht.transmissionbt.com", 6881),
                            ("router.utorrent.com", 6881), ("dht.libtorrent.org", 25401))

#: The saved table's file name inside the state directory.
STATE_FILE: Final = "dht.state"

#: Queries in flight at most (lookups, pings, announces together). Three
#: lookups of ALPHA = 3, a round of pings (K) and an announce (2 K) need ~40;
#: 256 leaves room for port messages from many peers while bounding the
#: table of transaction ids a flood of answers is matched against.
MAX_PENDING: Final = 256

#: A ping or announce unanswered this long has failed (the lookup's own
#: QUERY_TIMEOUT, for the same reason: most answers come within a second).
QUERY_TIMEOUT: Final = 10.0

#: A lookup ends after this long whatever it is waiting for: its own bounds
#: (200 queries, 10 s per query) could otherwise keep it alive for minutes
#: against nodes that answer just slowly enough.
LOOKUP_TIMEOUT: Final = 60.0

#: How often the upkeep runs (time-outs, pings, refreshes, the periodic save).
UPKEEP_TICK: Final = 1.0

#: Questionable nodes are pinged at most this often (K at a time).
PING_INTERVAL: Final = 60.0

#: The table is written this often while the node runs (and at the end).
SAVE_INTERVAL: Final = 5 * 60.0

#: The first ``get_peers`` goes out at once; while the owner lacks peers the
#: next one follows after this many seconds, the wait doubling each round...
SEARCH_FIRST_RETRY: Final = 5.0
#: ...up to this (libtorrent re-announces to the DHT every 15 minutes; a
#: download that lacks peers asks more often, a few minutes apart).
SEARCH_MAX_INTERVAL: Final = 5 * 60.0
#: With enough peers, search and announce every 15 minutes: tokens last 10,
#: stored peers 30 (BEP 5 practice), so this keeps us listed.
ANNOUNCE_INTERVAL: Final = 15 * 60.0

#: How long resolving one bootstrap host name may take.
RESOLVE_TIMEOUT: Final = 5.0

#: Nodes a ``nodes6`` list may bring into an empty IPv6 table per answer
#: (pinged; only an answer puts them in the table).
_V6_SEEDS: Final = 2


def start_dht(opts: Options, port: int, log: Callable[[str], None]) -> Dht | None:
    """A node bound for ``opts`` (``port``: the run's TCP port, wanted for UDP too),
    its saved table loaded; None (after a one-line warning) when no socket binds."""
    dht = Dht(bind=opts.bind, port=port,
              bootstrap=DEFAULT_BOOTSTRAP if opts.dht_bootstrap is None else opts.dht_bootstrap,
              state_dir=opts.state_dir or default_state_dir(), log=log)
    try:
        dht.open()
    except OSError as e:
        log(f"warning: dht: cannot bind a UDP socket on {opts.bind} ({e.strerror or e}); "
            "running without the DHT")
        return None
    return dht


def default_state_dir() -> str:
    """``$XDG_CACHE_HOME/fasttorrent``, else ``~/.cache/fasttorrent``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fasttorrent")


def _families(bind: str) -> tuple[int, ...]:
    """The families a bind address serves: ``""`` (the default: every address of
    both) and ``::`` both, an IPv6 address 6, else 4."""
    if bind == "":
        return (4, 6)
    try:
        addr = ipaddress.ip_address(bind)
    except ValueError:
        return (4,)
    if addr.version == 4:
        return (4,)
    return (4, 6) if addr.is_unspecified else (6,)


def _family_of(ip: str) -> int:
    return 6 if ":" in ip else 4


@dataclasses.dataclass(slots=True)
class _Pending:
    """A query we sent: whom to, when it expires, who waits for its answer."""

    addr: Address
    expires: float
    lookup: Lookup | None = None
    wake: asyncio.Event | None = None
    future: asyncio.Future[Response | Error | None] | None = None
    node_id: bytes | None = None  # the id we know it by (for its failures), if any


class _Protocol(asyncio.DatagramProtocol):
    """One family's socket: every datagram goes to the node."""

    def __init__(self, dht: Dht, family: int) -> None:
        self.dht = dht
        self.family = family

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.dht._datagram(self.family, data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the query times out like a lost one
        self.dht.stats["send_errors"] += 1


class Dht:
    """A Mainline DHT node for one run (see the module docstring).

    Args:
        bind: the local address (its family picks the sockets; ``::`` both).
        port: the UDP port wanted (the run's TCP port, for ``implied_port``);
            0 or taken: another is chosen.
        bootstrap: routers asked while the table holds fewer than K nodes.
        state_dir: where the table is saved (None: not saved).
        log: called with one-line warnings.
        clock: seconds, monotonic (injected in tests).
        enforce_bep42: refuse table nodes whose id does not fit their address.
    """

    def __init__(self, *, bind: str = "0.0.0.0", port: int = 0,
                 bootstrap: Sequence[Address] = DEFAULT_BOOTSTRAP,
                 state_dir: str | None = None, log: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 enforce_bep42: bool = True) -> None:
        self.bind = bind
        self.want_port = port
        self.bootstrap = tuple(bootstrap)
        self.state_dir = state_dir
        self.log = log or (lambda s: None)
        self.clock = clock
        self.enforce_bep42 = enforce_bep42
        self.families = _families(bind)
        self.own_id = secrets.token_bytes(krpc.ID_LENGTH)
        self.port = 0
        self.tables: dict[int, RoutingTable] = {}
        self.servers: dict[int, DhtServer] = {}
        self._socks: dict[int, socket.socket] = {}
        self._transports: dict[int, asyncio.DatagramTransport] = {}
        self._users = 0  # attach() calls not yet detached
        self._pending: dict[bytes, _Pending] = {}
        self._resolved: dict[int, list[Address]] | None = None
        self._upkeep: asyncio.Task[None] | None = None
        self._refresh: asyncio.Task[Any] | None = None
        self._pinged_at = 0.0
        self._saved_at = 0.0
        self._kept: dict[int, tuple[NodeInfo, ...]] = {}  # saved nodes of a family not run
        self.first_peer_at: float | None = None  # when a get_peers answer first gave a peer
        self.stats: dict[str, int] = dict.fromkeys(
            ("received", "sent", "malformed", "unexpected", "queries_answered",
             "send_errors", "peers_found", "port_nodes", "announces_acked"), 0)

    # -- set-up and tear-down -------------------------------------------------------------
    @property
    def state_path(self) -> str | None:
        return os.path.join(self.state_dir, STATE_FILE) if self.state_dir else None

    @property
    def implied_port(self) -> bool:
        """Whether our UDP port is the TCP port we announce (BEP 5 ``implied_port``)."""
        return self.port != 0 and self.port == self.want_port

    def open(self) -> None:
        """Bind the sockets and load the saved table.

        Raises:
            OSError: no socket could be bound (the caller runs without the DHT).
        """
        now = self.clock()
        saved = self._load_state()
        if saved is not None and saved.own_id is not None:
            self.own_id = saved.own_id
        for fam in self.families:
            self.tables[fam] = RoutingTable(self.own_id, now, family=fam,
                                            enforce_bep42=self.enforce_bep42)
            self.servers[fam] = DhtServer(self.tables[fam], now)
        if saved is not None:
            for fam in (4, 6):
                nodes = [n for n in saved.nodes if _family_of(n.ip) == fam]
                if fam in self.tables:
                    self.tables[fam].restore(nodes, now)
                elif nodes:
                    self._kept[fam] = tuple(nodes)
        self._bind()
        self._saved_at = self._pinged_at = now

    def _bind(self) -> None:
        ports = [self.want_port, 0] if self.want_port else [0]
        last: OSError | None = None
        for want in ports:
            socks: dict[int, socket.socket] = {}
            try:
                port = want
                for fam in self.families:
                    host = self.bind if len(self.families) == 1 else (
                        "::" if fam == 6 else "0.0.0.0")
                    try:
                        s = socket.socket(socket.AF_INET6 if fam == 6 else socket.AF_INET,
                                          socket.SOCK_DGRAM)
                    except OSError as e:
                        if fam == 6 and self.bind == "" and e.errno in NO_IPV6_ERRNOS:
                            continue  # the default bind on a machine without IPv6
                        raise
                    socks[fam] = s
                    if fam == 6:
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    try:
                        s.bind((host, port))
                    except OSError as e:
                        if fam == 6 and self.bind == "" and e.errno in NO_IPV6_ERRNOS:
                            del socks[fam]
                            s.close()
                            continue
                        raise
                    port = int(s.getsockname()[1])  # the second family takes the same
                    s.setblocking(False)
            except OSError as e:
                last = e
                for s in socks.values():
                    s.close()
                continue
            self._socks = socks
            self.port = port
            for fam in [f for f in self.families if f not in socks]:  # IPv6 missing
                self.tables.pop(fam, None)
                self.servers.pop(fam, None)
            self.families = tuple(socks)
            return
        raise last if last is not None else OSError("no DHT socket")

    async def attach(self) -> None:
        """Serve on the running loop (a duplicate of each socket) and start the upkeep.

        Counted: several users on one loop (the torrents of a batch, a magnet's
        fetch beside them) each attach and detach; the node serves until the last
        detaches.
        """
        self._users += 1
        if self._users > 1:
            return
        loop = asyncio.get_running_loop()
        for fam, sock in self._socks.items():
            transport, _ = await loop.create_datagram_endpoint(
                lambda fam=fam: _Protocol(self, fam), sock=sock.dup())  # type: ignore[misc]
            self._transports[fam] = transport
        self._upkeep = loop.create_task(self._upkeep_loop())

    async def detach(self) -> None:
        """Leave the running loop: stop the upkeep, close its sockets, end every pending query
        (once the last user detached)."""
        self._users = max(0, self._users - 1)
        if self._users:
            return
        for task in (self._upkeep, self._refresh):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._upkeep = self._refresh = None
        for transport in self._transports.values():
            transport.close()
        self._transports.clear()
        for p in self._pending.values():
            if p.future is not None and not p.future.done():
                p.future.set_result(None)
            if p.wake is not None:
                p.wake.set()
        self._pending.clear()
        await asyncio.sleep(0)  # the transports' connection_lost

    def close(self) -> None:
        """Save the table and close the sockets (after :meth:`detach`); once."""
        if self._socks:
            self.save()
        for s in self._socks.values():
            s.close()
        self._socks.clear()

    # -- state ------------------------------------------------------------------------------
    def _load_state(self) -> routing.SavedState | None:
        path = self.state_path
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                data = f.read(routing.MAX_STATE_SIZE + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            self.log(f"warning: dht: cannot read {path} ({e.strerror or e}); starting afresh")
            return None
        saved = routing.load(data)
        if saved.own_id is None:
            self.log(f"warning: dht: {path} is corrupt; starting afresh")
            return None
        return saved

    def state_bytes(self) -> bytes:
        """The saved form: our id, the nodes of every table (and those kept of a family
        not run this time)."""
        now = self.clock()
        out: dict[bytes, Any] = {b"id": self.own_id}
        for table in self.tables.values():
            out.update({k: v for k, v in bencoding.decode(routing.dump(table, now)).items()
                        if k != b"id"})
        for fam, nodes in self._kept.items():
            out[b"nodes6" if fam == 6 else b"nodes"] = b"".join(
                n.id + ipaddress.ip_address(n.ip).packed + n.port.to_bytes(2, "big")
                for n in nodes)
        return bencoding.encode(out)

    def save(self) -> None:
        """Write the table to the state directory (whole or not at all); a failure is a warning."""
        path = self.state_path
        if path is None:
            return
        self._saved_at = self.clock()
        tmp = f"{path}.{os.getpid()}.part"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(self.state_bytes())
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self.log(f"warning: dht: cannot save {path} ({e.strerror or e})")

    # -- datagrams --------------------------------------------------------------------------
    def _send(self, addr: Address, msg: krpc.Message) -> bool:
        transport = self._transports.get(_family_of(addr[0]))
        if transport is None or transport.is_closing():
            return False
        transport.sendto(krpc.encode(msg), addr)
        self.stats["sent"] += 1
        return True

    def _new_tid(self) -> bytes:
        while True:
            tid = secrets.token_bytes(4)
            if tid not in self._pending:
                return tid

    def _datagram(self, family: int, data: bytes, addr: Address) -> None:
        now = self.clock()
        self.stats["received"] += 1
        server = self.servers.get(family)
        if server is None:
            return
        try:
            msg = krpc.decode(data)
        except KRPCError as e:
            self.stats["malformed"] += 1
            if b"1:y1:q" in data[:krpc.MAX_DATAGRAM]:  # a query: say what was wrong (203)
                err = server.protocol_error(addr, e, now)
                if err is not None:
                    self._send(addr, err)
            return
        if isinstance(msg, Response | Error):
            self._answer(family, msg, addr, now)
            return
        reply = server.answer(addr, msg, now)
        if reply is not None:
            self.stats["queries_answered"] += 1
            self._send(addr, reply)

    def _answer(self, family: int, msg: Response | Error, addr: Address, now: float) -> None:
        p = self._pending.get(msg.tid)
        if p is None or p.addr != addr:
            self.stats["unexpected"] += 1  # unknown, repeated or spoofed transaction id
            return
        del self._pending[msg.tid]
        table = self.tables[family]
        if p.lookup is not None:
            before = len(p.lookup.peers)
            if p.lookup.response(addr, msg, now) and isinstance(msg, Response):
                table.heard_from(msg.sender, addr[0], addr[1], now, response=True)
            if len(p.lookup.peers) > before:
                self.stats["peers_found"] += len(p.lookup.peers) - before
                if self.first_peer_at is None:
                    self.first_peer_at = now
            if p.wake is not None:
                p.wake.set()
        else:
            if isinstance(msg, Response) and (p.node_id is None or msg.sender == p.node_id):
                table.heard_from(msg.sender, addr[0], addr[1], now, response=True)
            elif p.node_id is not None:
                table.failed(p.node_id, now)
            if p.future is not None and not p.future.done():
                p.future.set_result(msg)
        if isinstance(msg, Response) and msg.nodes6 and 6 in self.tables \
                and len(self.tables[6]) < K:
            for n in msg.nodes6[:_V6_SEEDS]:
                self.ping((n.ip, n.port))

    # -- queries ----------------------------------------------------------------------------
    def _register(self, addr: Address, msg: krpc.Query, *, lookup: Lookup | None = None,
                  wake: asyncio.Event | None = None, node_id: bytes | None = None,
                  ) -> asyncio.Future[Response | Error | None] | None:
        """Send ``msg`` and remember it; None when MAX_PENDING queries are in flight."""
        if len(self._pending) >= MAX_PENDING or not self._transports:
            return None
        fut: asyncio.Future[Response | Error | None] | None = None
        if lookup is None:
            fut = asyncio.get_running_loop().create_future()
        self._pending[msg.tid] = _Pending(addr, self.clock() + QUERY_TIMEOUT, lookup, wake, fut,
                                          node_id)
        if not self._send(addr, msg):
            del self._pending[msg.tid]
            return None
        return fut

    def ping(self, addr: Address, node_id: bytes | None = None) -> bool:
        """Ping ``addr``; an answer puts it in the table. False: not sent (family, bound)."""
        if _family_of(addr[0]) not in self._transports or not 0 < addr[1] < 65536:
            return False
        return self._register(addr, Ping(self._new_tid(), self.own_id), node_id=node_id) \
            is not None

    def add_node(self, host: str, port: int) -> bool:
        """A peer said its DHT node listens here (BEP 5 ``port`` message): ping it."""
        try:
            ip = str(ipaddress.ip_address(host))
        except ValueError:
            return False
        sent = self.ping((ip, port))
        self.stats["port_nodes"] += sent
        return sent

    async def _bootstrap_nodes(self, family: int) -> list[Address]:
        if self._resolved is None:
            self._resolved = {4: [], 6: []}
            loop = asyncio.get_running_loop()
            for host, port in self.bootstrap:
                try:
                    infos = await asyncio.wait_for(
                        loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM), RESOLVE_TIMEOUT)
                except (TimeoutError, OSError) as e:
                    self.log(f"warning: dht: cannot resolve bootstrap node {host}:{port} "
                             f"({getattr(e, 'strerror', None) or 'timed out'})")
                    continue
                for fam, _, _, _, sockaddr in infos:
                    f = 6 if fam == socket.AF_INET6 else 4
                    a = (str(sockaddr[0]), int(sockaddr[1]))
                    if a not in self._resolved[f]:
                        self._resolved[f].append(a)
        return self._resolved.get(family, [])

    async def lookup(self, kind: LookupKind, target: bytes, family: int,
                     on_peers: Callable[[list[Address]], None] | None = None) -> Lookup:
        """Run one iterative lookup to its end (or LOOKUP_TIMEOUT); new peers go to
        ``on_peers`` as they arrive."""
        table = self.tables[family]
        now = self.clock()
        good = sum(1 for n in table.nodes() if n.state(now) == routing.NodeState.GOOD)
        boot = await self._bootstrap_nodes(family) if good < K else []
        lk = Lookup(kind, target, self.own_id, table.closest(target, 2 * K), self._new_tid,
                    bootstrap=boot, family=family)
        want = (b"n4", b"n6") if len(self.tables) == 2 else ()
        wake = asyncio.Event()
        deadline = now + LOOKUP_TIMEOUT
        given = 0
        while self._transports:
            now = self.clock()
            for addr in lk.timeout(now):
                node_id = table.id_at(*addr)
                if node_id is not None:
                    table.failed(node_id, now)
            if on_peers is not None and len(lk.peers) > given:
                on_peers(lk.peers[given:])
                given = len(lk.peers)
            for addr, q in lk.next_queries(now):
                if want:
                    q = dataclasses.replace(q, want=want)
                self._register(addr, q, lookup=lk, wake=wake)
            if lk.done or now >= deadline:
                break
            at = lk.deadline(now)
            wait = min(deadline, at if at is not None else deadline) - now
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), max(0.01, wait))
        return lk

    async def get_peers(self, info_hash: bytes,
                        on_peers: Callable[[list[Address]], None] | None = None,
                        ) -> list[Lookup]:
        """A ``get_peers`` lookup in every family, side by side."""
        return list(await asyncio.gather(*(
            self.lookup(LookupKind.GET_PEERS, info_hash, fam, on_peers) for fam in self.tables)))

    async def announce(self, lookups: Iterable[Lookup], port: int) -> int:
        """``announce_peer`` to the nodes of ``lookups`` that gave a token; how many acked."""
        futures = []
        implied = self.implied_port and port == self.port
        for lk in lookups:
            for addr, q in lk.announce_queries(port, implied_port=implied):
                fut = self._register(addr, q)
                if fut is not None:
                    futures.append(fut)
        if not futures:
            return 0
        done = await asyncio.gather(*futures)
        acked = sum(1 for r in done if isinstance(r, Response))
        self.stats["announces_acked"] += acked
        return acked

    async def search(self, info_hash: bytes, on_peers: Callable[[list[Address]], None],
                     stop: asyncio.Event, *, lacking: Callable[[], bool] = lambda: True,
                     announce_port: int = 0) -> None:
        """Look for peers of ``info_hash`` (and announce ``announce_port``) until ``stop``."""
        retry = SEARCH_FIRST_RETRY
        while not stop.is_set() and self._transports:
            lookups = await self.get_peers(info_hash, on_peers)
            if announce_port and not stop.is_set():
                await self.announce(lookups, announce_port)
            if lacking():
                wait, retry = retry, min(2 * retry, SEARCH_MAX_INTERVAL)
            else:
                wait = ANNOUNCE_INTERVAL
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)

    # -- upkeep -----------------------------------------------------------------------------
    def expire(self, now: float) -> None:
        """Queries unanswered past their time: a failure for a known node, a wake-up for
        a waiting lookup, None for a waiting caller."""
        for tid in [t for t, p in self._pending.items() if p.expires <= now]:
            p = self._pending.pop(tid)
            if p.node_id is not None:
                self.tables[_family_of(p.addr[0])].failed(p.node_id, now)
            if p.future is not None and not p.future.done():
                p.future.set_result(None)
            if p.wake is not None:
                p.wake.set()

    async def _upkeep_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(UPKEEP_TICK)
            now = self.clock()
            self.expire(now)
            if now - self._pinged_at >= PING_INTERVAL:
                self._pinged_at = now
                for table in self.tables.values():
                    for n in table.nodes_to_ping(now):
                        self.ping((n.ip, n.port), n.id)
            if self._refresh is None or self._refresh.done():
                for fam, table in self.tables.items():
                    targets = table.nodes_to_refresh(now) if len(table) else []
                    if targets:  # one refresh at a time; the other buckets come next tick
                        self._refresh = loop.create_task(
                            self.lookup(LookupKind.FIND_NODE, targets[0], fam))
                        break
            if now - self._saved_at >= SAVE_INTERVAL:
                self.save()

    def summary(self) -> dict[str, Any]:
        """Counters and table sizes, for the run's JSON result."""
        return {"port": self.port, "nodes": {str(f): len(t) for f, t in self.tables.items()},
                **self.stats}

