"""The asyncio adapter of one peer connection (the only socket code for peers).

Theory of operation
-------------------
A thin :class:`asyncio.BufferedProtocol`: uvloop reads straight into this
connection's receive buffer (no ``bytes`` object per read); the native frame
scanner (:func:`torrent._fast.scan_frame`) walks the complete messages, each
length checked against :func:`~torrent.wire.messages.max_message_length`
before anything more is buffered.  A ``piece`` message is handed to the
worker with its position in the buffer so the block is copied once, by the
native core, into its piece slot; every other message goes through the
sans-IO :class:`~torrent.wire.peer.PeerProtocol`, whose events the worker
carries out.  Policy (what to request, when to give up) lives in the worker
and the picker, not here.

Buffer ownership: bytes between ``_start`` and ``_end`` are unconsumed; the
buffer is compacted only between reads, never while a message view is alive.
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import TYPE_CHECKING, Any

from .. import _fast
from ..errors import RemoteProtocolError
from ..wire import peer as wp
from ..wire.handshake import HANDSHAKE_LENGTH
from ..wire.messages import LocalProtocolError, frame_bounds, max_message_length, message_name

if TYPE_CHECKING:
    from ..worker import Worker

__all__ = ["RECV_BUFFER", "PeerConn"]

#: Receive buffer per connection.  One read of up to this much carries ~60
#: blocks, so the per-read Python work is spread thin; it must also hold the
#: largest message we accept (a bitfield of 200,000 pieces is 25 KB).
RECV_BUFFER = 1 << 20
#: Transport write buffer high-water mark (uploading: see Worker.serve).
SEND_BUFFER_HIGH = 1 << 20
#: Free tail below which the buffer is compacted before the next read.
_MIN_TAIL = 64 << 10

_PIECE = 7
_HDR = struct.Struct(">II")
_REQ = struct.Struct(">IBIII")


class PeerConn(asyncio.BufferedProtocol):
    """One TCP connection to a peer, owned by one worker."""

    def __init__(self, worker: Worker, addr: tuple[str, int], outgoing: bool) -> None:
        self.worker = worker
        self.addr = addr
        self.outgoing = outgoing
        meta = worker.meta
        self.proto = wp.PeerProtocol(meta.info_hash, worker.peer_id, meta.num_pieces,
                                     meta.piece_length, meta.total_size,
                                     we_initiated=outgoing, now=time.monotonic())
        self.transport: asyncio.Transport | None = None
        size = max(RECV_BUFFER, max_message_length(meta.num_pieces) + 4 + _MIN_TAIL)
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._max = max_message_length(meta.num_pieces)
        self._bounds = frame_bounds(meta.num_pieces)
        self.active = False
        self.closed = False
        self.created_at = time.monotonic()
        self.close_reason = ""
        # transfer accounting (read by the worker's tick)
        self.rate = 0.0
        self._window_bytes = 0
        self.depth = 0  # request pipeline target, set by the worker
        self.uploaded = 0
        self.serve_pending = False  # requests arrived in this read: serve after framing
        self.up_rate = 0.0
        self._up_window = 0

    # -- asyncio callbacks --------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        # resume_writing() fires when the queued upload drains below the low mark
        transport.set_write_buffer_limits(high=SEND_BUFFER_HIGH, low=SEND_BUFFER_HIGH // 2)
        if self.outgoing:
            transport.write(self.proto.handshake())
        self.worker.peer_connected(self)

    def pause_writing(self) -> None:
        pass  # serve() checks the transport's buffer size itself

    def resume_writing(self) -> None:
        if not self.closed and self.active:
            self.worker.serve(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        if len(self._buf) - self._end < _MIN_TAIL:
            n = self._end - self._start
            self._buf[:n] = self._view[self._start : self._end]
            self._start, self._end = 0, n
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        self._window_bytes += nbytes
        limiter = self.worker.limiter
        if limiter is not None:
            limiter.consume(nbytes)
        try:
            if not self.active:
                if not self._handshake():
                    return
            self._frames()
            if not self.closed:
                if self.serve_pending:
                    self.serve_pending = False
                    self.worker.serve(self)
                self.worker.pump(self)
        except RemoteProtocolError as e:
            self.abort(f"protocol error: {e}")
        except LocalProtocolError as e:  # a bug of ours: drop the peer, keep the download
            self.abort(f"internal error: {e}")
        if self._start == self._end:
            self._start = self._end = 0

    def eof_received(self) -> bool:
        self.abort("closed by peer")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self.close_reason = self.close_reason or (f"connection lost: {exc}" if exc
                                                      else "connection closed")
            self.worker.peer_lost(self)

    # -- receiving ------------------------------------------------------------
    def _handshake(self) -> bool:
        if self._end - self._start < HANDSHAKE_LENGTH:
            # Let the machine reject a non-BitTorrent stream from its first bytes.
            return False
        hs = bytes(self._view[self._start : self._start + HANDSHAKE_LENGTH])
        self._start += HANDSHAKE_LENGTH
        events = self.proto.receive_data(hs)
        if not self.outgoing:
            self.transport.write(self.proto.handshake())  # type: ignore[union-attr]
        self.active = True
        self.worker.peer_handshaken(self, events)
        return True

    def _frames(self) -> None:
        buf = self._buf
        view = self._view
        pos = self._start
        end = self._end
        mx = self._max
        scan = _fast.scan_frame
        take = _fast.take_blocks
        proto = self.proto
        worker = self.worker
        active = worker.picker.active
        full: list = []
        while not self.closed:
            # the run of plain blocks natively; anything else, one message at a time below
            pos, taken = take(buf, pos, end, proto.request_table, active, self, full)
            if taken:
                proto.blocks_taken()
                worker.blocks_taken(taken, full)
                if self.closed:
                    break
            n = scan(buf, pos, end, mx)
            if n < 0:
                if n == -2:
                    raise RemoteProtocolError(
                        f"message length {_fast.read_u32(buf, pos)} exceeds the bound {mx}")
                if end - pos >= 5:
                    # Check the bound of this message id before buffering its body.
                    ln = _fast.read_u32(buf, pos)
                    if ln > self._bounds[buf[pos + 4]]:
                        raise RemoteProtocolError(
                            f"{message_name(buf[pos + 4])} message of length {ln} exceeds its "
                            f"bound {self._bounds[buf[pos + 4]]}")
                break
            if n and buf[pos + 4] == _PIECE and n >= 9:
                index, begin = _HDR.unpack_from(buf, pos + 5)
                length = n - 9
                if proto.accept_block(index, begin, length):
                    worker.on_block(self, index, begin, buf, pos + 13, length)
            elif n:
                events = proto.receive_frame(buf[pos + 4], view[pos + 5 : pos + 4 + n])
                if events:
                    worker.on_events(self, events)
            else:
                proto.receive_frame(-1, b"")  # keep-alive
            pos += 4 + n
        self._start = pos

    # -- sending ----------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def send_requests(self, reqs: list[tuple[int, int, int]], now: float) -> None:
        self.write(self.proto.send_requests(reqs, now))

    def pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def abort(self, reason: str) -> None:
        if self.closed:
            return
        self.close_reason = reason
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self.worker.peer_lost(self)
