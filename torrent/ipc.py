"""Control messages between the coordinator and its workers (small; never block data).

Every message is a frozen NamedTuple sent pickled over the worker's duplex
pipe.  They are per lease, per batch of pieces or per peer, never per block:
a block never crosses a process boundary.

A worker process serves every torrent of the run (:mod:`torrent.workerhost`):
the first message is its :class:`HostConfig`, each torrent comes as an
:class:`AddTorrent`, and every message about one torrent travels inside a
:class:`Tagged` naming it, both ways.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = [
    "MAX_SHARED_PEERS",
    "AddTorrent",
    "Adopt",
    "Availability",
    "Connect",
    "DhtNode",
    "Dialled",
    "DropWebSeed",
    "Durable",
    "Fatal",
    "HashFailed",
    "Lease",
    "LivePeers",
    "NeedPieces",
    "OtherPeers",
    "PeerClosed",
    "PeersFound",
    "PiecesDone",
    "Ready",
    "Released",
    "Stats",
    "Steal",
    "Stop",
    "Stopped",
    "Tagged",
    "Verified",
    "WebSeedDropped",
]

#: At most this many peers in a :class:`LivePeers` or :class:`OtherPeers`: a
#: PEX message lists 50 added at a time (``extension.MAX_PEX_ADDED``), and a
#: peer that stays hears of more over the minutes.
MAX_SHARED_PEERS = 200

# -- both ways ---------------------------------------------------------------


class Tagged(NamedTuple):
    """A message about torrent ``tid`` of the run (the coordinator numbers them)."""

    tid: int
    msg: Any


# -- coordinator -> worker ----------------------------------------------------


class AddTorrent(NamedTuple):
    """Serve this torrent from now on (``cfg``: a ``worker.WorkerConfig``, its
    ``tid`` naming it in every :class:`Tagged` message after)."""

    cfg: Any


class Lease(NamedTuple):
    """Pieces this worker may fetch; ``endgame``: they may also be in flight elsewhere."""

    pieces: tuple[int, ...]
    endgame: bool = False


class Connect(NamedTuple):
    """Connect out to this peer (it is this worker's alone)."""

    host: str
    port: int


class Adopt(NamedTuple):
    """Take over this connection, which a magnet's metadata fetch made: its socket's
    descriptor travels with the message (``SCM_RIGHTS``, ``Channel.send(fd=)``);
    ``data`` is the stream to read before the socket's bytes (the peer's handshake
    and its frames since; at most ``metadata_conn.MAX_HANDOVER_BYTES``); ``interested``:
    the fetch sent the peer our INTERESTED; ``requested``: the block requests the
    coordinator sent on it (of pieces in this worker's first lease)."""

    host: str
    port: int
    data: bytes
    interested: bool = False
    requested: tuple[tuple[int, int, int], ...] = ()


class Steal(NamedTuple):
    """Give back up to ``wanted`` unstarted leased pieces (answered by :class:`Released`)."""

    wanted: int


class PiecesDone(NamedTuple):
    """Pieces verified by some worker: send HAVE, cancel duplicates, drop from the lease.

    ``written``: the coordinator verified and wrote them for this worker, whose lease
    held them (a magnet's first piece, ``torrent.earlypiece``): it flushes them with
    its own writes and reports them :class:`Durable`."""

    pieces: tuple[int, ...]
    written: bool = False


class Stop(NamedTuple):
    """Finish queued writes, report final stats and exit; ``flush``: fdatasync first
    (not needed once the download is complete: the journal is then removed);
    ``drain``: first let the peers receive the blocks already sent to them (the
    end of seeding, a limit reached)."""

    flush: bool = True
    drain: bool = False


class OtherPeers(NamedTuple):
    """The peers the other workers are connected to, as ``(ip, listen port)``
    (at most :data:`MAX_SHARED_PEERS`): this worker's PEX lists them too, so a
    peer learns the whole swarm of the run, not a worker's share of it."""

    peers: frozenset[tuple[str, int]]


class DropWebSeed(NamedTuple):
    """Stop using this web seed: another worker banned it (it served a bad piece)."""

    url: str
    reason: str


# -- worker -> coordinator ----------------------------------------------------


class Ready(NamedTuple):
    worker: int


class Availability(NamedTuple):
    """Pieces newly available from this worker's peers (``bits``: a full bitfield), or lost."""

    bits: bytes


class NeedPieces(NamedTuple):
    wanted: int


class Verified(NamedTuple):
    """Pieces verified and written (not yet flushed); ``hash_fail``: failures seen."""

    pieces: tuple[int, ...]


class Durable(NamedTuple):
    """Pieces whose data was fdatasync'ed: safe to record in the journal."""

    pieces: tuple[int, ...]


class HashFailed(NamedTuple):
    """A piece failed its hash check: ``peer`` sent all of it (``HOST:PORT``, or a web
    seed's URL); empty when several peers sent blocks of it. One per failed copy."""

    piece: int
    peer: str


class Released(NamedTuple):
    pieces: tuple[int, ...]


class Dialled(NamedTuple):
    """The connection to a peer handed out by :class:`Connect` is up: its dial is over
    (the coordinator hands a worker no more dials than it can hold; see
    :data:`torrent.worker.DIAL_BUDGET`)."""

    host: str
    port: int


class LivePeers(NamedTuple):
    """The peers this worker is connected to whose listen port it knows, as
    ``(ip, listen port)``, at most :data:`MAX_SHARED_PEERS`; sent when the set
    changes (at most once a tick), never for a private torrent."""

    peers: frozenset[tuple[str, int]]


class PeerClosed(NamedTuple):
    host: str
    port: int
    reason: str
    banned: bool
    connected: bool


class PeersFound(NamedTuple):
    """Peer addresses a worker learned (PEX, BEP 11), for the coordinator's bounded table.

    At most ``extension.MAX_PEX_ADDED`` per message, at most one message per
    peer a minute: the coordinator's table bound does the rest.
    """

    peers: tuple[tuple[str, int], ...]
    source: str


class DhtNode(NamedTuple):
    """A peer's DHT node listens at ``host:port`` (its BEP 5 ``port`` message): the
    coordinator's DHT pings it. At most one per connection."""

    host: str
    port: int


class WebSeedDropped(NamedTuple):
    """This worker no longer uses a web seed (it kept failing, or was banned)."""

    url: str
    reason: str
    banned: bool


class Stopped(NamedTuple):
    """This worker stopped serving the torrent (its last Verified, Durable and Stats
    came before): the torrent's coordinator is done with this worker."""

    worker: int


class Stats(NamedTuple):
    worker: int
    stats: dict[str, Any]


class Fatal(NamedTuple):
    """An error that stops the download: the exception's class name and message."""

    kind: str
    message: str
