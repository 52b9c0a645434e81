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

:class:`GatedRelay` forwards TCP connections to another peer only once a
:class:`threading.Event` is set.  Tests use it to order events without
timing: "the honest seeder serves only after the hostile peer was dropped".
"""

from __future__ import annotations

import asyncio
import os
import struct
import threading
from collections.abc import Iterable
from typing import Any

from torrent import metainfo
from torrent.errors import RemoteProtocolError
from torrent.storage import Storage, layout_for
from torrent.wire.handshake import HANDSHAKE_LENGTH, encode_handshake, make_peer_id, parse_handshake
from torrent.wire.messages import (
    BLOCK_SIZE,
    Bitfield,
    Cancel,
    Interested,
    Piece,
    Request,
    Unchoke,
    bitfield_length,
    encode,
)

from .framereader import FrameReader

__all__ = ["BAD_BITFIELD_MODES", "OVERSIZED_LENGTH", "GatedRelay", "TestPeer"]

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
    """

    __test__ = False  # not a pytest test class, despite its name
    name = "test-peer"

    def __init__(self, torrent: str | os.PathLike[str], save_path: str | os.PathLike[str], *,
                 has: Iterable[int] | None = None, corrupt_pieces: Iterable[int] = (),
                 oversized_prefix: bool = False, bad_bitfield: str | None = None,
                 unrequested_block: bool = False, block_delay: float = 0.0,
                 silent: bool = False) -> None:
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
        self.handshake_received = threading.Event()
        self.remote_closed = threading.Event()  # a connection was closed by the remote
        self.prefix_sent = threading.Event()
        self.closed_after_prefix = threading.Event()
        self.unrequested_sent = threading.Event()

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
        writer.write(encode_handshake(self.meta.info_hash, self.peer_id))
        if self.oversized_prefix:
            writer.write(_PREFIX.pack(OVERSIZED_LENGTH))
            await writer.drain()
            self.prefix_sent.set()
            # We owe 2 GiB of body and never send a byte of it: a client that
            # checks the prefix first hangs up now; one that buffers waits forever.
            if await self._until_eof(reader):
                self.closed_after_prefix.set()
            return
        if self.has or self.bad_bitfield:
            writer.write(encode(Bitfield(self.bitfield())))
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
        state = {"unchoked": False}
        sender = asyncio.get_running_loop().create_task(self._send_blocks(writer, pending, wake))
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
                    self._handle(msg, writer, pending, wake, state)
                await writer.drain()
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)

    def _handle(self, msg: Any, writer: asyncio.StreamWriter,
                pending: dict[tuple[int, int, int], None], wake: asyncio.Event,
                state: dict[str, bool]) -> None:
        if isinstance(msg, Request):
            block = (msg.index, msg.begin, msg.length)
            self._record("_requests", block)
            if state["unchoked"] and self._servable(*block):
                pending[block] = None
                wake.set()
        elif isinstance(msg, Cancel):
            pending.pop((msg.index, msg.begin, msg.length), None)
        elif isinstance(msg, Interested) and not state["unchoked"]:
            state["unchoked"] = True
            writer.write(encode(Unchoke()))
            if self.unrequested_block:
                i, b, ln = self.unrequested
                writer.write(encode(Piece(i, b, self._read(i, b, ln))))
                self.unrequested_sent.set()
        # have, bitfield, not interested, keep-alive: nothing to do for a seed

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
