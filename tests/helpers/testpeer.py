"""A scriptable BitTorrent seeding peer for tests (BEP 3), honest or hostile.

Theory of operation
-------------------
:class:`TestPeer` runs an asyncio server on ``127.0.0.1`` (port 0) with its own
event loop in a background thread (``start()``/``stop()``, or ``with``).  It
serves the torrent's data from ``save_path`` (the directory the torrent's
files live under, as for libtorrent), read through
:func:`torrent.storage.layout_for` and :class:`torrent.storage.Storage`.  Each
accepted connection:

1. reads the initiator's 68-byte handshake and checks the info-hash, then
   answers with its own handshake;
2. sends a bitfield of the pieces in ``has`` (all by default);
3. unchokes the remote as soon as it is interested;
4. serves requested blocks in arrival order (one per ``block_delay`` seconds),
   dropping the ones the remote cancels.

Everything a test may assert on is recorded thread-safely: every request
received (``requests``), connection counts, and :class:`threading.Event` flags
for the moments that matter (``handshake_received``, ``remote_closed``...).

Misbehaviour modes (constructor flags) turn it into a hostile peer:

- ``corrupt_pieces``: for each of these pieces, one byte of the first block
  sent on a connection is flipped (so the piece fails its SHA-1).
- ``oversized_prefix``: right after the handshake, a length prefix of 2**31,
  and nothing more; ``closed_after_prefix`` is set when the remote closes the
  connection while the body is still owed (it never comes).
- ``bad_bitfield``: ``"length"`` (one byte short) or ``"spare"`` (spare bits
  at the end set; needs a piece count that is not a multiple of 8).
- ``unrequested_block``: right after unchoking, a ``piece`` message nobody
  asked for (a block of a piece *not* in ``has``, so the remote can never
  have requested it; of the last piece when ``has`` is everything).
- ``silent``: accepts, reads, never sends a byte (no handshake).

The extension protocol (BEP 10) and the Fast extension (BEP 6), both offered
in its handshake when ``extensions`` is set (implied by every mode below).
It answers the remote's extension handshake with its own (announcing
``ut_metadata`` and ``ut_pex`` under ids other than fasttorrent's, so a
remote that mixed up whose ids to use would be caught) and records it
(``remote_extensions``, ``extension_handshake_received``):

- ``oversized_extension_handshake``: right after the handshake, an extension
  handshake :data:`OVERSIZED_EXTENSION_PAD` bytes over BEP 10's bound
  (:data:`~torrent.wire.extension.MAX_HANDSHAKE_LENGTH`), still within the
  frame bound of extended messages.
- ``pex_flood=(messages, addresses)``: once the remote's extension handshake
  came, that many ut_pex messages, one every ``pex_interval`` seconds, each
  listing that many distinct addresses (far past BEP 11's 50), the remote's
  own listening address (its ``p``) first; ``pex_flood_sent`` is set once
  all of them went out.  ``pex_addresses`` holds what each message listed.
  With ``pex_own_mapped`` the remote's own address goes in ``added6`` instead,
  in IPv4-mapped IPv6 form (``::ffff:127.0.0.1``), after the IPv4 ones:
  the same socket address, written another way.
- ``metadata_requests``: once the remote's extension handshake came, that
  many ut_metadata requests for piece 0 in one write, then one for a piece
  the metadata does not have (:data:`METADATA_PIECE_OUT_OF_RANGE`); every
  answer is recorded in ``metadata_answers`` and ``metadata_answered`` is set
  once there is one per request.
- ``allowed_fast``: after the bitfield, an allowed-fast message per index
  (out of range ones included: the mode exists to send those).
- ``have_all_then_bitfield``: have all, then a bitfield anyway (BEP 6
  forbids it).

:class:`GatedRelay` forwards TCP connections to another peer only once a
:class:`threading.Event` is set.  Tests use it to order events without
timing: "the honest seeder serves only after the hostile peer was dropped".
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import struct
import threading
from collections.abc import Iterable
from typing import Any

from torrent import bencoding, metainfo
from torrent.errors import RemoteProtocolError
from torrent.storage import Storage, layout_for
from torrent.wire.extension import (
    MAX_HANDSHAKE_LENGTH,
    METADATA_PIECE,
    UT_METADATA,
    UT_PEX,
    ExtensionHandshake,
    MetadataData,
    MetadataMessage,
    MetadataRequest,
    decode_metadata_message,
)
from torrent.wire.handshake import (
    HANDSHAKE_LENGTH,
    RESERVED_NONE,
    RESERVED_OURS,
    encode_handshake,
    make_peer_id,
    parse_handshake,
)
from torrent.wire.messages import (
    BLOCK_SIZE,
    AllowedFast,
    Bitfield,
    Cancel,
    Extended,
    HaveAll,
    Interested,
    Piece,
    Request,
    Unchoke,
    bitfield_length,
    encode,
)

from .framereader import FrameReader

__all__ = ["BAD_BITFIELD_MODES", "METADATA_PIECE_OUT_OF_RANGE", "OVERSIZED_EXTENSION_PAD",
           "OVERSIZED_LENGTH", "TEST_PEER_EXTENSION_IDS", "GatedRelay", "TestPeer",
           "pex_flood_addresses"]

#: The length prefix the ``oversized_prefix`` mode announces: 2 GiB, far over
#: any bound a client may accept (BEP 3 frames; see torrent.wire.messages).
OVERSIZED_LENGTH = 2**31
BAD_BITFIELD_MODES = ("length", "spare")
#: Bytes read from a socket at once; the FrameReader bounds what is buffered.
READ_CHUNK = 64 * 1024
#: How long start() waits for the server thread to listen.
START_TIMEOUT = 10.0
#: How long stop() waits for the server thread to finish.
STOP_TIMEOUT = 10.0
#: How long a GatedRelay connection waits for its gate before giving up.
GATE_TIMEOUT = 60.0
#: Poll period of a gate (a threading.Event set from another thread).
GATE_POLL = 0.01

_PREFIX = struct.Struct(">I")

#: The ids the test peer receives its extension messages under (BEP 10 ``m``):
#: deliberately not fasttorrent's own (1 and 2), so a remote that sent with its
#: own ids instead of ours would not be understood.
TEST_PEER_EXTENSION_IDS = {UT_METADATA: 7, UT_PEX: 9}
#: How far past the extension handshake bound the oversized one goes.
OVERSIZED_EXTENSION_PAD = 4096
#: A ut_metadata piece the metadata of a small torrent does not have (it has one:
#: BEP 9 pieces are 16 KiB), but that any metadata size allows a peer to ask for.
METADATA_PIECE_OUT_OF_RANGE = 5


def pex_flood_addresses(message: int, count: int, port: int) -> list[tuple[str, int]]:
    """``count`` distinct loopback addresses for flood message ``message``, all on ``port``.

    Addresses ``127.(100+message).x.y``: distinct across messages, so a
    remote that took more than one message shows it, and loopback, so a
    remote dialling them is refused at once instead of waiting on the network.
    """
    return [(f"127.{100 + message}.{j // 250}.{1 + j % 250}", port) for j in range(count)]


class _LoopServer:
    """A TCP server on 127.0.0.1:0 run by its own asyncio loop in a daemon thread."""

    name = "loop-server"

    def __init__(self) -> None:
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop_ev: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lock = threading.Lock()
        self.stopping = False
        self.connections = 0  # connections accepted

    @property
    def addr(self) -> str:
        """``"127.0.0.1:PORT"``, as ``--peer`` takes it."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> _LoopServer:
        """Start listening; returns when the port is known.

        Raises:
            RuntimeError: the server thread did not come up.
        """
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise RuntimeError(f"{self.name} did not start")
        if self._error is not None:
            raise RuntimeError(f"{self.name} failed to start: {self._error}")
        return self

    def stop(self) -> None:
        """Close the server and every connection; wait for the thread."""
        self.stopping = True
        loop, ev = self._loop, self._stop_ev
        if loop is not None and ev is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:
                pass  # the loop already ended
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as e:
            self._error = e
            self._ready.set()
        finally:
            loop.close()
            self.closed()

    async def _main(self) -> None:
        self._stop_ev = asyncio.Event()
        server = await asyncio.start_server(self._on_connection, "127.0.0.1", 0)
        self.port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        await self._stop_ev.wait()
        server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_connection(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        with self._lock:
            self.connections += 1
        try:
            await self.serve(reader, writer)
        except (ConnectionError, OSError):
            pass  # reset by the remote: serve() records what it needs to
        finally:
            self._tasks.discard(task)
            writer.close()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def closed(self) -> None:
        """Called in the server thread after the loop ended (release resources)."""


class TestPeer(_LoopServer):
    """A seeding peer that records what it is asked and can misbehave on purpose.

    Args:
        torrent: path of the .torrent it serves.
        save_path: directory its files are under (``layout_for(meta, save_path)``).
        has: pieces it announces and serves (default: all).
        corrupt_pieces: pieces whose first block sent per connection gets one byte flipped.
        oversized_prefix: send a 2**31 length prefix after the handshake, then nothing.
        bad_bitfield: ``"length"`` or ``"spare"`` (see the module docstring), or None.
        unrequested_block: send an unrequested ``piece`` message right after unchoking.
        block_delay: seconds to wait before sending each block.
        silent: accept connections and never send anything.
        extensions: offer BEP 10 and the Fast extension (see the module docstring).
        oversized_extension_handshake: an extension handshake over the bound first.
        pex_flood: ``(messages, addresses)`` per message, sent ``pex_interval`` apart.
        pex_interval: seconds between two flood messages.
        pex_port: the port of every flood address but the remote's own.
        pex_own_mapped: list the remote's own address as IPv4-mapped IPv6, in ``added6``.
        metadata_requests: ut_metadata requests for piece 0 sent in one write.
        allowed_fast: pieces to send allowed fast for, after the bitfield.
        have_all_then_bitfield: send have all, then a bitfield.
        serve_metadata: offer and serve the info dict over ut_metadata (BEP 9), so a
            magnet can start from this peer.
    """

    __test__ = False  # not a pytest test class, despite its name
    name = "test-peer"

    def __init__(self, torrent: str | os.PathLike[str], save_path: str | os.PathLike[str], *,
                 has: Iterable[int] | None = None, corrupt_pieces: Iterable[int] = (),
                 oversized_prefix: bool = False, bad_bitfield: str | None = None,
                 unrequested_block: bool = False, block_delay: float = 0.0,
                 silent: bool = False, extensions: bool = False,
                 oversized_extension_handshake: bool = False,
                 pex_flood: tuple[int, int] | None = None, pex_interval: float = 0.05,
                 pex_port: int = 1, pex_own_mapped: bool = False, metadata_requests: int = 0,
                 allowed_fast: Iterable[int] = (),
                 have_all_then_bitfield: bool = False, serve_metadata: bool = False) -> None:
        super().__init__()
        self.meta = metainfo.load(torrent)
        n = self.meta.num_pieces
        self.has = frozenset(range(n) if has is None else has)
        if any(not 0 <= i < n for i in self.has):
            raise ValueError(f"has: piece out of range 0..{n - 1}")
        if bad_bitfield not in (None, *BAD_BITFIELD_MODES):
            raise ValueError(f"bad_bitfield must be one of {BAD_BITFIELD_MODES} or None")
        if bad_bitfield == "spare" and n % 8 == 0:
            raise ValueError(f"{n} pieces leave no spare bits in a bitfield")
        self.corrupt_pieces = frozenset(corrupt_pieces)
        self.oversized_prefix = oversized_prefix
        self.bad_bitfield = bad_bitfield
        self.unrequested_block = unrequested_block
        self.block_delay = block_delay
        self.silent = silent
        self.oversized_extension_handshake = oversized_extension_handshake
        self.pex_flood = pex_flood
        self.pex_interval = pex_interval
        self.pex_port = pex_port
        self.pex_own_mapped = pex_own_mapped
        self.metadata_requests = metadata_requests
        self.allowed_fast = tuple(allowed_fast)
        self.have_all_then_bitfield = have_all_then_bitfield
        self.extensions = (extensions or oversized_extension_handshake or pex_flood is not None
                           or metadata_requests > 0 or bool(self.allowed_fast)
                           or have_all_then_bitfield or serve_metadata)
        self.serve_metadata = serve_metadata
        self.peer_id = make_peer_id(b"-TP0001-")
        self._storage = Storage(layout_for(self.meta, os.fspath(save_path)))
        missing = sorted(set(range(n)) - self.has)
        ui = missing[-1] if missing else n - 1
        self.unrequested = (ui, 0, min(BLOCK_SIZE, self.meta.piece_size(ui)))
        # -- records (read from the test's thread) --
        self._requests: list[tuple[int, int, int]] = []
        self.corrupted: list[tuple[int, int]] = []  # (index, begin) of corrupted blocks sent
        self.protocol_errors: list[str] = []  # what the remote did wrong, if anything
        self.handshakes = 0  # valid handshakes received
        self.blocks_sent = 0
        #: what the remote sent, in order, over all connections: "ext" (an extension
        #: handshake), "interested", "request"
        self.arrivals: list[str] = []
        #: requests received when the first block went out (any connection), or None
        self.requests_at_first_block: int | None = None
        #: the most requests queued on one connection at once, not yet answered
        self.max_queued = 0
        self.handshake_received = threading.Event()
        self.remote_closed = threading.Event()  # a connection was closed by the remote
        self.prefix_sent = threading.Event()
        self.closed_after_prefix = threading.Event()
        self.unrequested_sent = threading.Event()
        self.remote_extensions: ExtensionHandshake | None = None
        self.extension_handshake_received = threading.Event()
        self.pex_addresses: list[list[tuple[str, int]]] = []  # what each flood message listed
        self.pex_flood_sent = threading.Event()
        self.metadata_answers: list[MetadataMessage] = []
        self.metadata_answered = threading.Event()

    # -- records -------------------------------------------------------------------
    @property
    def requests(self) -> list[tuple[int, int, int]]:
        """Every request received so far, ``(index, begin, length)``, in arrival order."""
        with self._lock:
            return list(self._requests)

    def requested_pieces(self) -> set[int]:
        """The pieces any request named."""
        return {i for i, _b, _ln in self.requests}

    def _record(self, attr: str, item: Any) -> None:
        with self._lock:
            getattr(self, attr).append(item)

    def _count(self, attr: str) -> None:
        with self._lock:
            setattr(self, attr, getattr(self, attr) + 1)

    # -- the connection -----------------------------------------------------------
    def bitfield(self) -> bytes:
        """The bitfield this peer sends (deliberately malformed in ``bad_bitfield`` mode)."""
        n = self.meta.num_pieces
        bits = bytearray(bitfield_length(n))
        for i in self.has:
            bits[i >> 3] |= 0x80 >> (i & 7)
        if self.bad_bitfield == "length":
            return bytes(bits[:-1])
        if self.bad_bitfield == "spare":
            bits[-1] |= (1 << ((-n) & 7)) - 1
        return bytes(bits)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hs = await reader.readexactly(HANDSHAKE_LENGTH)
        except asyncio.IncompleteReadError:
            self._closed_by_remote()
            return
        try:
            theirs = parse_handshake(hs)
        except RemoteProtocolError as e:
            self._record("protocol_errors", str(e))
            return
        if theirs.info_hash != self.meta.info_hash:
            self._record("protocol_errors", "handshake for another torrent")
            return
        self._count("handshakes")
        self.handshake_received.set()
        if self.silent:
            await self._until_eof(reader)
            return
        writer.write(encode_handshake(self.meta.info_hash, self.peer_id,
                                      RESERVED_OURS if self.extensions else RESERVED_NONE))
        if self.oversized_extension_handshake:
            # a valid dict, just too large: only the length bound can refuse it
            pad = b"x" * (MAX_HANDSHAKE_LENGTH + OVERSIZED_EXTENSION_PAD)
            writer.write(encode(Extended(0, bencoding.encode({b"m": {}, b"pad": pad}))))
        if self.oversized_prefix:
            writer.write(_PREFIX.pack(OVERSIZED_LENGTH))
            await writer.drain()
            self.prefix_sent.set()
            # We owe 2 GiB of body and never send a byte of it: a client that
            # checks the prefix first hangs up now; one that buffers waits forever.
            if await self._until_eof(reader):
                self.closed_after_prefix.set()
            return
        if self.have_all_then_bitfield:
            writer.write(encode(HaveAll()))  # BEP 6: instead of the bitfield, never before it
            writer.write(encode(Bitfield(self.bitfield())))
        elif self.has or self.bad_bitfield:
            writer.write(encode(Bitfield(self.bitfield())))
        for i in self.allowed_fast:
            writer.write(encode(AllowedFast(i)))
        await self._exchange(reader, writer)

    async def _until_eof(self, reader: asyncio.StreamReader) -> bool:
        """Read and discard until the remote closes; True if it did (not our stop())."""
        try:
            while await reader.read(READ_CHUNK):
                pass
        except (ConnectionError, OSError):
            pass
        if self.stopping:
            return False
        self._closed_by_remote()
        return True

    def _closed_by_remote(self) -> None:
        if not self.stopping:
            self.remote_closed.set()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames = FrameReader(self.meta.num_pieces)
        # The remote's queued requests in arrival order; bounded by what the
        # remote pipelines (a client keeps at most a few hundred outstanding).
        pending: dict[tuple[int, int, int], None] = {}
        wake = asyncio.Event()
        state = {"unchoked": False, "extended": False}
        loop = asyncio.get_running_loop()
        sender = loop.create_task(self._send_blocks(writer, pending, wake))
        scripts: list[asyncio.Task[None]] = []  # this connection's extension scripts
        try:
            while True:
                try:
                    data = await reader.read(READ_CHUNK)
                except (ConnectionError, OSError):
                    data = b""
                if not data:
                    self._closed_by_remote()
                    return
                try:
                    msgs = frames.feed(data)
                except RemoteProtocolError as e:
                    self._record("protocol_errors", str(e))
                    return
                for msg in msgs:
                    self._handle(msg, writer, pending, wake, state, scripts)
                await writer.drain()
        finally:
            for task in (sender, *scripts):
                task.cancel()
            await asyncio.gather(sender, *scripts, return_exceptions=True)

    def _handle(self, msg: Any, writer: asyncio.StreamWriter,
                pending: dict[tuple[int, int, int], None], wake: asyncio.Event,
                state: dict[str, bool], scripts: list[asyncio.Task[None]]) -> None:
        if isinstance(msg, Request):
            block = (msg.index, msg.begin, msg.length)
            self._record("_requests", block)
            self._record("arrivals", "request")
            if state["unchoked"] and self._servable(*block):
                pending[block] = None
                self.max_queued = max(self.max_queued, len(pending))
                wake.set()
        elif isinstance(msg, Cancel):
            pending.pop((msg.index, msg.begin, msg.length), None)
        elif isinstance(msg, Extended) and self.extensions:
            self._extended(msg, writer, state, scripts)
        elif isinstance(msg, Interested):
            self._record("arrivals", "interested")
        if isinstance(msg, Interested) and not state["unchoked"]:
            state["unchoked"] = True
            writer.write(encode(Unchoke()))
            if self.unrequested_block:
                i, b, ln = self.unrequested
                writer.write(encode(Piece(i, b, self._read(i, b, ln))))
                self.unrequested_sent.set()
        # have, bitfield, not interested, keep-alive: nothing to do for a seed

    # -- the extension protocol -------------------------------------------------
    def _extended(self, msg: Extended, writer: asyncio.StreamWriter, state: dict[str, bool],
                  scripts: list[asyncio.Task[None]]) -> None:
        ids = TEST_PEER_EXTENSION_IDS
        if msg.ext_id == 0:
            hs = ExtensionHandshake.decode(msg.body)
            self._record("arrivals", "ext")
            self.remote_extensions = hs
            self.extension_handshake_received.set()
            if state["extended"]:
                return  # a later handshake (BEP 10 allows it): the scripts run once
            state["extended"] = True
            if not self.oversized_extension_handshake:
                size = len(self.meta.info_bytes) if self.serve_metadata else None
                writer.write(encode(Extended(0, ExtensionHandshake(
                    m=ids, v="test peer", reqq=250, metadata_size=size).encode())))
            loop = asyncio.get_running_loop()
            if self.pex_flood is not None and hs.m.get(UT_PEX):
                scripts.append(loop.create_task(self._flood_pex(writer, hs)))
            if self.metadata_requests and hs.m.get(UT_METADATA):
                self._request_metadata(writer, hs.m[UT_METADATA])
        elif msg.ext_id == ids[UT_METADATA]:
            answer = decode_metadata_message(msg.body)
            if isinstance(answer, MetadataRequest) and self.serve_metadata:
                info = self.meta.info_bytes
                piece = answer.piece
                data = info[piece * METADATA_PIECE : (piece + 1) * METADATA_PIECE]
                if data and self.remote_extensions is not None:
                    theirs = self.remote_extensions.m.get(UT_METADATA)
                    if theirs:
                        writer.write(encode(Extended(theirs, MetadataData(
                            piece, len(info), data).encode())))
                return
            if answer is None:
                return
            with self._lock:
                self.metadata_answers.append(answer)
                if len(self.metadata_answers) >= self.metadata_requests + 1:
                    self.metadata_answered.set()

    async def _flood_pex(self, writer: asyncio.StreamWriter, hs: ExtensionHandshake) -> None:
        messages, count = self.pex_flood or (0, 0)
        own = ("127.0.0.1", hs.p) if hs.p else None
        for k in range(messages):
            addrs = pex_flood_addresses(k, count - (own is not None), self.pex_port)
            added6 = b""
            if own is not None and self.pex_own_mapped:
                mapped = ipaddress.IPv6Address(f"::ffff:{own[0]}")
                added6 = mapped.packed + own[1].to_bytes(2, "big")
                listed = [*addrs, (str(mapped), own[1])]
            elif own is not None:
                listed = [own, *addrs]  # its own address first, where it is sure to be read
            else:
                listed = addrs
            with self._lock:
                self.pex_addresses.append(listed)
            v4 = listed if not added6 else addrs
            compact = b"".join(ipaddress.IPv4Address(ip).packed + port.to_bytes(2, "big")
                               for ip, port in v4)
            d = {b"added": compact, b"added.f": bytes(len(v4)), b"dropped": b""}
            if added6:
                d[b"added6"], d[b"added6.f"] = added6, b"\x00"
            writer.write(encode(Extended(hs.m[UT_PEX], bencoding.encode(d))))
            await writer.drain()
            if k + 1 < messages:
                await asyncio.sleep(self.pex_interval)  # "many a second": the flood's pace
        self.pex_flood_sent.set()

    def _request_metadata(self, writer: asyncio.StreamWriter, ext_id: int) -> None:
        pieces = [0] * self.metadata_requests + [METADATA_PIECE_OUT_OF_RANGE]
        writer.write(b"".join(encode(Extended(ext_id, MetadataRequest(p).encode()))
                              for p in pieces))

    def _servable(self, index: int, begin: int, length: int) -> bool:
        if index not in self.has or not 0 < length <= BLOCK_SIZE:
            return False
        return begin >= 0 and begin + length <= self.meta.piece_size(index)

    def _read(self, index: int, begin: int, length: int) -> bytes:
        buf = bytearray(length)
        self._storage.read_into(index * self.meta.piece_length + begin, memoryview(buf))
        return bytes(buf)

    async def _send_blocks(self, writer: asyncio.StreamWriter,
                           pending: dict[tuple[int, int, int], None],
                           wake: asyncio.Event) -> None:
        corrupted_here: set[int] = set()  # corrupt pieces already damaged on this connection
        while True:
            await wake.wait()
            wake.clear()
            while pending:
                block = next(iter(pending))
                if self.block_delay:
                    await asyncio.sleep(self.block_delay)
                    if block not in pending:
                        continue  # cancelled meanwhile
                del pending[block]
                i, b, ln = block
                with self._lock:
                    if self.requests_at_first_block is None:
                        self.requests_at_first_block = len(self._requests)
                data = bytearray(self._read(i, b, ln))
                if i in self.corrupt_pieces and i not in corrupted_here:
                    corrupted_here.add(i)
                    data[ln // 2] ^= 0xFF
                    self._record("corrupted", (i, b))
                writer.write(encode(Piece(i, b, bytes(data))))
                self._count("blocks_sent")
                await writer.drain()

    def closed(self) -> None:
        self._storage.close()


class GatedRelay(_LoopServer):
    """Forward each accepted connection to ``target`` once ``gate`` is set.

    Until then the connection is accepted but nothing is read or forwarded
    (the remote's first bytes wait in the kernel).  A connection whose gate
    stays shut for :data:`GATE_TIMEOUT` is closed.

    Args:
        target: ``(host, port)`` of the real peer.
        gate: set it (from any thread) to let traffic through.
    """

    name = "gated-relay"

    def __init__(self, target: tuple[str, int], gate: threading.Event) -> None:
        super().__init__()
        self.target = target
        self.gate = gate

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GATE_TIMEOUT
        while not self.gate.is_set():
            if loop.time() > deadline:
                return
            await asyncio.sleep(GATE_POLL)  # the gate is a threading.Event: poll it
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        try:
            a = loop.create_task(_pipe(reader, up_writer))
            b = loop.create_task(_pipe(up_reader, writer))
            try:
                await asyncio.wait((a, b), return_when=asyncio.FIRST_COMPLETED)
            finally:
                a.cancel()
                b.cancel()
                await asyncio.gather(a, b, return_exceptions=True)
        finally:
            up_writer.close()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(READ_CHUNK):
            dst.write(data)
            await dst.drain()
    except (ConnectionError, OSError):
        pass
