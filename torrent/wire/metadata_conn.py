"""A connection that only fetches a torrent's metadata (BEP 9 over BEP 10), sans-IO.

Theory of operation
-------------------
A magnet download starts with the info-hash alone: until the info
dictionary is known there is no piece count, so :class:`PeerProtocol
<torrent.wire.peer.PeerProtocol>` (which needs one) cannot run yet. A
:class:`MetadataConnection` is the little that is needed before: we dial,
send our handshake with :data:`~torrent.wire.handshake.RESERVED_OURS`, read
the peer's (it must be for our info-hash and set the BEP 10 bit), send our
extension handshake offering ``ut_metadata``, and from then on carry
``ut_metadata`` messages. Every other message is framed (its length checked
against the one table's bound before it is buffered) and ignored: a
bitfield, HAVE_ALL, a choke mean nothing before the metadata is known, with
one exception: a peer that announces a piece (HAVE_ALL, HAVE, a bitfield
with a bit set) is sent INTERESTED at once (:attr:`MetadataConnection.interested`).
It has something we will want, whatever the pieces turn out to be, and its
unchoke then arrives while the metadata is checked and the download set up,
instead of one round trip after the download takes the connection (with
two busy cores, a libtorrent seeder's unchoke came 2-40 ms after our
INTERESTED).

The bitfield bound needs a piece count; the largest one a torrent whose
metadata we accept can have is :data:`MAX_PIECES_BEFORE_METADATA`
(MAX_METADATA_SIZE bytes of info dict hold at most that many 20-byte piece
hashes), so the framer is built for it.

States (:class:`MetadataConnState`), changed only by ``_transition``::

    AWAIT_HANDSHAKE  --(its handshake checks out)--------> AWAIT_EXTENSIONS
    AWAIT_EXTENSIONS --(its extension handshake)---------> READY
    any              --(EOF, a protocol error, close())--> CLOSED

Which pieces to request, from whom, and what the pieces add up to is the
fetch's business (:class:`~torrent.metadata.MetadataFetch`); time-outs are
the caller's (it knows when the connection was made). The connection
answers a peer's own ut_metadata requests with rejects (we have no metadata
to give), at most :data:`MAX_REJECTS_SENT` of them.

A v2 magnet's fetch goes on, on the same connections, with the file's piece
layers (BEP 52; :class:`~torrent.piecelayers.LayerFetch` decides what to ask):
:meth:`MetadataConnection.request_hashes` sends a ``hash request``, and the
peer's ``hashes`` and ``hash reject`` come back as events (their counts
checked by the codec). A peer's own hash requests are rejected (we have no
layers yet), within the same :data:`MAX_REJECTS_SENT`. None of the three is
kept for the hand-over: they are the fetch's business.

**Handing the connection over.** Once the metadata is in, the download
keeps the connections it came over (BEP 9's fetch and the download are one
swarm; a re-dial costs a connect, a handshake and, for a libtorrent peer,
its reconnect throttle). A worker's :class:`~torrent.wire.peer.PeerProtocol`
then takes the connection as if it had dialled it: :meth:`MetadataConnection.handover`
gives the stream it must read first, the peer's handshake and every frame
since, less keep-alives and ``ut_metadata`` messages (the fetch's business,
and up to 30 MiB of them), then whatever part of a frame is still buffered.
At most :data:`MAX_HANDOVER_BYTES` are kept; a connection that sent more,
or whose stream is RC4-encrypted (the cipher's state cannot move to another
process), is not handed over but closed and dialled again.

The caller reads bytes into :attr:`MetadataConnection.rb` (or copies them
in with :meth:`MetadataConnection.receive_data`), asks
:meth:`MetadataConnection.events` what they mean, and writes what
:meth:`MetadataConnection.data_to_send` returns.

With ``mse`` the connection opens with our side of MSE/PE
(:class:`~torrent.wire.mse.MSEInitiator`, our handshake as its initial
payload) before ``AWAIT_HANDSHAKE`` can complete; if the peer selects RC4,
what arrives is decrypted in place by the receive buffer's transform and what
:meth:`MetadataConnection.data_to_send` returns is encrypted.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final, cast

from ..errors import RemoteProtocolError
from .extension import (
    EXTENSION_HANDSHAKE_ID,
    MAX_METADATA_SIZE,
    OUR_EXTENSION_IDS,
    UT_METADATA,
    ExtensionHandshake,
    MetadataData,
    MetadataReject,
    MetadataRequest,
    decode_metadata_message,
    merge_peer_ids,
)
from .framing import Framer, ReceiveBuffer, next_frame
from .handshake import (
    HANDSHAKE_LENGTH,
    RESERVED_DHT,
    RESERVED_OURS,
    check_handshake_prefix,
    encode_handshake,
    parse_handshake,
)
from .messages import (
    BITFIELD,
    CHOKE,
    EXTENDED,
    HASH_REJECT,
    HASH_REQUEST,
    HAVE,
    HAVE_ALL,
    UNCHOKE,
    Extended,
    Hashes,
    HashReject,
    HashRequest,
    Interested,
    LocalProtocolError,
    decode,
    encode,
)
from .mse import CRYPTO_RC4, MSEInitiator
from .rc4 import RC4
from .record import Record, setfield

__all__ = [
    "MAX_HANDOVER_BYTES",
    "MAX_PIECES_BEFORE_METADATA",
    "MAX_REJECTS_SENT",
    "ConnectionReady",
    "MetadataConnState",
    "MetadataConnection",
    "MetadataEvent",
    "MetadataOffer",
]

#: The most pieces a torrent can have whose info dict we would accept: each
#: piece has a 20-byte SHA-1 in ``pieces``, and the whole dict is at most
#: MAX_METADATA_SIZE bytes. It bounds a bitfield received before we know the
#: real count (196,608 bytes), which is then ignored.
MAX_PIECES_BEFORE_METADATA: Final = MAX_METADATA_SIZE // 20

#: Rejects we send in answer to a peer's ut_metadata requests before we
#: ignore them: we announce no metadata_size, so an honest peer asks nothing;
#: the bound keeps one that keeps asking from filling our send queue.
MAX_REJECTS_SENT: Final = 64

#: The most bytes of a peer's stream kept for handing its connection over
#: (:meth:`MetadataConnection.handover`): its handshake, its extension
#: handshake (MAX_HANDSHAKE_LENGTH, 16 KiB) and a bitfield of the largest
#: torrent whose metadata we would take (196,608 bytes) fit, with room for
#: HAVEs. A peer that sent more is dialled again instead.
MAX_HANDOVER_BYTES: Final = 256 * 1024

# What our extension handshake offers: only ut_metadata. Nothing else is read
# on these connections (PEX and the rest wait for the download proper).
_OUR_M: Final = {UT_METADATA: OUR_EXTENSION_IDS[UT_METADATA]}


class MetadataConnState(IntEnum):
    """Where a metadata connection is (see the module docstring)."""

    AWAIT_HANDSHAKE = 0
    AWAIT_EXTENSIONS = 1
    READY = 2
    CLOSED = 3


_TRANSITIONS: Final = {
    MetadataConnState.AWAIT_HANDSHAKE: {MetadataConnState.AWAIT_EXTENSIONS,
                                        MetadataConnState.CLOSED},
    MetadataConnState.AWAIT_EXTENSIONS: {MetadataConnState.READY, MetadataConnState.CLOSED},
    MetadataConnState.READY: {MetadataConnState.CLOSED},
    MetadataConnState.CLOSED: set(),
}


class ConnectionReady(Record):
    """The peer's BT handshake checked out (our info-hash, BEP 10 set); ours went out."""

    peer_id: bytes

    __slots__ = ("peer_id",)

    def __init__(self, peer_id: bytes) -> None:
        setfield(self, "peer_id", peer_id)


class MetadataOffer(Record):
    """The peer's first extension handshake.

    Attributes:
        metadata_size: what it offers (BEP 9), or None: no ``ut_metadata``,
            or no ``metadata_size`` (it has no metadata to give).
        client: its ``v``, if any (for logs).
    """

    metadata_size: int | None
    client: str | None

    __slots__ = ("client", "metadata_size")

    def __init__(self, metadata_size: int | None, client: str | None = None) -> None:
        setfield(self, "metadata_size", metadata_size)
        setfield(self, "client", client)


#: What :meth:`MetadataConnection.events` returns: the handshake done, the
#: peer's offer, the pieces and rejects it sends, and (BEP 52) its hashes and
#: hash rejects.
MetadataEvent = (ConnectionReady | MetadataOffer | MetadataData | MetadataReject | Hashes
                 | HashReject)


class MetadataConnection:
    """One outgoing connection that fetches metadata (see the module docstring).

    Our handshake is queued at once: write :meth:`data_to_send` as soon as
    the connection is made.

    Args:
        info_hash: the magnet's 20-byte info-hash.
        peer_id: our 20-byte peer id.
        client: our ``v`` for the extension handshake.
        listen_port: our ``p`` (the port the download will accept peers on).
        mse: open with an MSE/PE handshake (offering RC4 and plaintext).
        dht: our DHT node runs: the handshake sets the DHT bit (``RESERVED_DHT``),
            and the peer's PORT message goes to the worker with the stream.

    Raises:
        LocalProtocolError: ``info_hash`` or ``peer_id`` is not 20 bytes.
    """

    def __init__(self, info_hash: bytes, peer_id: bytes, *, client: str | None = None,
                 listen_port: int | None = None, mse: bool = False,
                 dht: bool = False) -> None:
        self.info_hash = bytes(info_hash)
        self.our_peer_id = bytes(peer_id)
        self.peer_id: bytes | None = None
        self.client = client
        self.listen_port = listen_port if listen_port else None
        self._framer = Framer(MAX_PIECES_BEFORE_METADATA)
        #: The buffer the socket reads into; it holds the largest frame the framer admits.
        self.rb = ReceiveBuffer(self._framer.max_len + 4)
        self._state = MetadataConnState.AWAIT_HANDSHAKE
        handshake = encode_handshake(self.info_hash, self.our_peer_id,
                                     RESERVED_DHT if dht else RESERVED_OURS)
        # the MSE handshake under way (our BT handshake is its IA), or None
        self._mse = MSEInitiator(self.info_hash, handshake) if mse else None
        self._encrypt: RC4 | None = None  # RC4 for what we send, once MSE selected it
        #: what the MSE handshake selected (CRYPTO_PLAINTEXT or CRYPTO_RC4), else None
        self.mse_method: int | None = None
        # the MSE handshake's own bytes (it encrypts its parts itself), sent before _out
        self._mse_out = self._mse.data_to_send() if self._mse else b""
        self._out: list[bytes] = [] if self._mse else [handshake]
        self._peer_ids: dict[str, int] = {}  # the peer's extension ids (merge_peer_ids)
        self._metadata_size: int | None = None
        self._offered = False
        self.rejects_sent = 0
        #: INTERESTED went out (the peer announced a piece): a download taking the
        #: connection over counts it as sent
        self.interested = False
        #: the peer's last word on choking was UNCHOKE: requests sent now are answered
        self.unchoked = False
        # the peer's stream for handover(): its handshake, then its frames but
        # keep-alives and ut_metadata; None once over MAX_HANDOVER_BYTES
        self._replay: bytearray | None = bytearray()

    # --- state --------------------------------------------------------------------
    @property
    def state(self) -> MetadataConnState:
        """The connection state."""
        return self._state

    @property
    def metadata_size(self) -> int | None:
        """The size the peer offered (None before its extension handshake, or none offered)."""
        return self._metadata_size

    def _transition(self, new: MetadataConnState) -> None:
        """The one place the state changes; an illegal change is our bug."""
        if new not in _TRANSITIONS[self._state]:
            raise LocalProtocolError(
                f"illegal metadata connection transition {self._state.name} -> {new.name}")
        self._state = new

    def close(self) -> None:
        """We are done with it (idempotent)."""
        if self._state is not MetadataConnState.CLOSED:
            self._transition(MetadataConnState.CLOSED)

    # --- sending ------------------------------------------------------------------
    def data_to_send(self) -> bytes:
        """Everything queued to send since the last call (b"" when nothing)."""
        out = b"".join(self._out)
        self._out.clear()
        if self._encrypt is not None and out:
            out = self._encrypt.crypt(out)
        if self._mse_out:
            out, self._mse_out = self._mse_out + out, b""
        return out

    @property
    def can_request(self) -> bool:
        """READY, and the peer offers metadata: :meth:`request` may be called."""
        return (self._state is MetadataConnState.READY and self._metadata_size is not None
                and UT_METADATA in self._peer_ids)

    def request(self, piece: int) -> None:
        """Queue a ut_metadata request for ``piece``.

        Raises:
            LocalProtocolError: not :attr:`can_request`.
        """
        ext_id = self._peer_ids.get(UT_METADATA)
        if not self.can_request or ext_id is None:
            raise LocalProtocolError(f"metadata request in state {self._state.name} "
                                     "without the peer's ut_metadata id")
        self._out.append(encode(Extended(ext_id, MetadataRequest(piece).encode())))

    def request_hashes(self, request: HashRequest) -> None:
        """Queue a BEP 52 hash request (a v2 magnet's piece layers).

        Raises:
            LocalProtocolError: the connection is not READY.
        """
        if self._state is not MetadataConnState.READY:
            raise LocalProtocolError(f"hash request in state {self._state.name}")
        self._out.append(encode(request))

    # --- receiving ----------------------------------------------------------------
    def receive_data(self, data: bytes | bytearray | memoryview) -> list[MetadataEvent]:
        """Copy received bytes in and return the events they complete (for tests and tools).

        Raises:
            RemoteProtocolError: as :meth:`events`.
        """
        self.rb.feed(data)
        return self.events()

    def events(self) -> list[MetadataEvent]:
        """The events the bytes in :attr:`rb` complete, in stream order.

        Raises:
            RemoteProtocolError: not a BitTorrent handshake, another info-hash,
                our own peer id, no BEP 10 bit, a frame over its bound, a bad
                extension handshake (e.g. metadata_size over
                MAX_METADATA_SIZE) or ut_metadata message. The connection is
                then CLOSED: drop it.
            LocalProtocolError: called after the connection was closed.
        """
        if self._state is MetadataConnState.CLOSED:
            raise LocalProtocolError("events() called on a closed metadata connection")
        out: list[MetadataEvent] = []
        try:
            self._read(out)
        except RemoteProtocolError:
            self._transition(MetadataConnState.CLOSED)
            raise
        return out

    def receive_eof(self) -> None:
        """The peer closed the connection."""
        self.close()

    def _read(self, out: list[MetadataEvent]) -> None:
        rb = self.rb
        if self._mse is not None:
            if not self._mse_step():
                return
        if self._state is MetadataConnState.AWAIT_HANDSHAKE:
            if rb.end - rb.start < HANDSHAKE_LENGTH:
                check_handshake_prefix(rb.view[rb.start : rb.end])
                return
            out.append(self._on_handshake(rb.view[rb.start : rb.start + HANDSHAKE_LENGTH]))
            self._keep(rb.view[rb.start : rb.start + HANDSHAKE_LENGTH])
            rb.start += HANDSHAKE_LENGTH
        while self._state is not MetadataConnState.CLOSED:
            n = next_frame(rb, self._framer)
            if n < 0:
                return
            start = rb.start
            rb.start = start + 4 + n
            if n == 0:
                continue  # a keep-alive
            mid = rb.buf[start + 4]
            if HASH_REQUEST <= mid <= HASH_REJECT:
                self._on_hash_message(mid, rb.view[start + 5 : start + 4 + n], out)
                continue
            if mid != EXTENDED:
                self._keep(rb.view[start : start + 4 + n])  # means nothing yet: the worker's
                if not self.interested and (
                        mid == HAVE_ALL or mid == HAVE
                        or (mid == BITFIELD and rb.buf.count(0, start + 5, start + 4 + n) < n - 1)):
                    self.interested = True  # (see the module docstring)
                    self._out.append(encode(Interested()))
                elif mid == UNCHOKE or mid == CHOKE:
                    self.unchoked = mid == UNCHOKE
                continue
            msg = cast(Extended, Extended.decode_payload(rb.view[start + 5 : start + 4 + n]))
            if msg.ext_id != OUR_EXTENSION_IDS[UT_METADATA]:
                self._keep(rb.view[start : start + 4 + n])
            ev = self._on_extended(msg)
            if ev is not None:
                out.append(ev)

    def _on_hash_message(self, mid: int, payload: memoryview, out: list[MetadataEvent]) -> None:
        msg = decode(mid, payload)  # the codec checks the length and a reply's count
        if isinstance(msg, HashRequest):
            if self.rejects_sent < MAX_REJECTS_SENT:
                self.rejects_sent += 1
                self._out.append(encode(HashReject(
                    msg.pieces_root, msg.base_layer, msg.index, msg.length, msg.proof_layers)))
        elif isinstance(msg, (Hashes, HashReject)):
            if self._state is not MetadataConnState.READY:  # we asked nothing yet
                raise RemoteProtocolError(f"peer sent {msg.NAME} before we asked for any")
            out.append(msg)

    def _keep(self, data: memoryview) -> None:
        """Add ``data`` to the stream :meth:`handover` gives (bounded)."""
        r = self._replay
        if r is not None:
            if len(r) + len(data) > MAX_HANDOVER_BYTES:
                self._replay = None  # too much to replay: this one is dialled again
            else:
                r += data

    def handover(self) -> bytes | None:
        """What a worker taking this connection over must read before the socket's bytes.

        The peer's handshake, its frames since (keep-alives and ``ut_metadata``
        left out) and the part of a frame still buffered, in stream order; call
        it once the fetch stopped reading. A connection whose peer has not
        answered yet goes too (the bytes of its handshake so far, if any: the
        worker reads the rest), as does one whose extension handshake has not
        come (the worker reads it). None when the connection cannot be handed
        over: closed, its MSE handshake under way, RC4-encrypted, or more than
        :data:`MAX_HANDOVER_BYTES` kept (see the module docstring).
        """
        if (self._state is MetadataConnState.CLOSED or self._replay is None
                or self.mse_method == CRYPTO_RC4 or self._mse is not None):
            return None
        rb = self.rb
        if len(self._replay) + rb.end - rb.start > MAX_HANDOVER_BYTES:
            return None
        return bytes(self._replay) + bytes(rb.view[rb.start : rb.end])

    def _mse_step(self) -> bool:
        """Feed the MSE handshake; True once it is done and the BitTorrent stream follows."""
        rb, mse = self.rb, self._mse
        assert mse is not None
        data = bytes(rb.view[rb.start : rb.end])  # handshake bytes only: a few hundred
        rb.start = rb.end
        est = mse.receive_data(data)
        self._mse_out += mse.data_to_send()  # step 3, once Yb is in
        if est is None:
            return False
        self._mse = None
        self.mse_method = est.method
        rb.feed(est.payload)  # already decrypted: before the transform is set
        if est.method == CRYPTO_RC4:
            self._encrypt = est.encrypt
            rb.transform = est.decrypt
        return True

    def _on_handshake(self, data: memoryview) -> ConnectionReady:
        hs = parse_handshake(data)
        if hs.info_hash != self.info_hash:
            raise RemoteProtocolError(
                f"peer handshake is for info-hash {hs.info_hash.hex()}, "
                f"not ours ({self.info_hash.hex()})")
        if hs.peer_id == self.our_peer_id:
            raise RemoteProtocolError("connected to self: the peer id is our own")
        if not hs.supports_extensions:
            raise RemoteProtocolError(
                "peer does not speak the extension protocol (BEP 10): it cannot send metadata")
        self.peer_id = hs.peer_id
        self._transition(MetadataConnState.AWAIT_EXTENSIONS)
        ours = ExtensionHandshake(m=_OUR_M, v=self.client, p=self.listen_port)
        self._out.append(encode(Extended(EXTENSION_HANDSHAKE_ID, ours.encode())))
        return ConnectionReady(hs.peer_id)

    def _on_extended(self, msg: Extended) -> MetadataEvent | None:
        if msg.ext_id == EXTENSION_HANDSHAKE_ID:
            hs = ExtensionHandshake.decode(msg.body)
            self._peer_ids = merge_peer_ids(self._peer_ids, hs.m)
            if self._offered:
                # BEP 10 lets a peer update its ids; the size stays the first one, but a
                # peer that turned ut_metadata off (id 0) offers nothing any more
                if self._metadata_size is not None and UT_METADATA not in self._peer_ids:
                    self._metadata_size = None
                    return MetadataOffer(None, hs.v)
                return None
            self._offered = True
            if UT_METADATA in self._peer_ids:
                self._metadata_size = hs.metadata_size
            self._transition(MetadataConnState.READY)
            return MetadataOffer(self._metadata_size, hs.v)
        if msg.ext_id != OUR_EXTENSION_IDS[UT_METADATA]:
            return None  # an extension we did not offer: ignored (BEP 10)
        if self._state is not MetadataConnState.READY:
            raise RemoteProtocolError(
                "peer sent a ut_metadata message before its extension handshake")
        m = decode_metadata_message(msg.body, self._metadata_size)
        if isinstance(m, MetadataRequest):
            ext_id = self._peer_ids.get(UT_METADATA)
            if ext_id is not None and self.rejects_sent < MAX_REJECTS_SENT:
                # BEP 9: a peer without the piece rejects the request (we have none)
                self.rejects_sent += 1
                self._out.append(encode(Extended(ext_id, MetadataReject(m.piece).encode())))
            return None
        return m
