"""A magnet's first piece, read by the coordinator while its workers start.

A magnet's metadata fetch keeps its connections (``magnetfetch.Handover``), and
the coordinator asks the peers that unchoked us for a first piece before any
worker runs (``Coordinator.request_early``). The answers used to wait in the
kernel until a worker had taken the torrent and the connections (10-20 ms on
two busy cores), and with two workers each worker's first piece came over the
half of the connections it was given.

Now the coordinator asks *every* unchoked connection for one piece (the first
of one worker's first lease), whichever worker will take the connection, and
reads the answers on its own loop while the workers start. An
:class:`EarlyPiece` holds those connections:

- the PIECE frames answering its requests go into a buffer of the piece's size
  through the workers' own native block path (``take_blocks``: one copy, no
  Python per block);
- every other frame is kept, in stream order, for the worker, as is the part of
  a frame not yet read.

A connection whose share is answered goes to its worker at once. Once the
piece is whole and its SHA-1 checks, the coordinator writes it and reports it
verified; the workers hear of it as of a piece another worker verified
(``ipc.PiecesDone``; the one whose lease held it flushes it with its own
writes). It is *handed back* instead (that worker gets the piece in a lease,
and each connection still held the requests not answered; the blocks read are
dropped, so at most one piece is fetched twice) when:

- a peer chokes us, rejects a request, closes, or sends a frame or a kept stream
  over :data:`~torrent.wire.metadata_conn.MAX_HANDOVER_BYTES`;
- the piece does not check, or cannot be written;
- :data:`EARLY_PIECE_WAIT` has passed.

Only v1 torrents' pieces are taken here: a hybrid's are checked against both
hashes by the workers.

This module is sans-loop: :meth:`EarlyPiece.read` reads what a socket holds now,
without waiting, and the coordinator calls it when the loop says the socket is
readable.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Sequence
from typing import Final

from . import _speedups as _k
from .picker import PieceDL, Slot
from .wire.handshake import HANDSHAKE_LENGTH
from .wire.messages import CHOKE, REJECT
from .wire.metadata_conn import MAX_HANDOVER_BYTES

__all__ = ["EARLY_PIECE_WAIT", "MAX_EARLY_REQUESTS", "EarlyConn", "EarlyPiece"]

#: The longest the coordinator holds connections for the early piece, from the
#: moment it starts reading (a peer that never answers its whole share).
EARLY_PIECE_WAIT: Final = 0.25

#: Requests at most on one connection for the early piece (``Coordinator.request_early``):
#: a piece that would need more (few peers, large pieces) is left to the workers. A
#: peer queues at least this many (libtorrent's and our ``reqq`` are 2000).
MAX_EARLY_REQUESTS: Final = 64

#: Bytes read from a socket at a time (a frame is at most 16 KiB and 13 bytes).
READ_SIZE: Final = 64 * 1024

_PREFIX = 4
_Block = tuple[int, int, int]


def _quick_ack(sock: socket.socket) -> None:
    """ACK what was read at once. This process sends nothing on the connection while
    it reads, so each ACK would wait for the delayed-ACK timer (40 ms), and a
    peer that holds back small segments until the last is ACKed (Nagle) stops
    there: measured, the last 3 blocks of a connection's 16 came 40 ms after
    the rest in 3 of 8 runs. Not sticky in the kernel: set after every read."""
    with contextlib.suppress(OSError):  # (not TCP: a socketpair in the tests)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


class EarlyConn:
    """One connection of an :class:`EarlyPiece`: its stream past the handshake.

    ``buf[start:end]`` holds the bytes not yet walked (a frame cut short at the
    end waits there for the rest); ``kept`` holds the handshake and the frames
    left for the worker, in order. ``outstanding`` maps each request not
    answered yet to ``(length, 0.0)``, as ``take_blocks`` wants it.
    """

    __slots__ = ("buf", "end", "fd", "kept", "outstanding", "requested", "sock", "start")

    def __init__(self, fd: int, data: bytes, requested: Sequence[_Block]) -> None:
        if len(data) < HANDSHAKE_LENGTH:
            raise ValueError("the stream must start with the peer's whole handshake")
        self.fd = fd
        self.sock: socket.socket | None = None  # a copy of fd, made at the first read
        self.requested = tuple(requested)
        self.outstanding: dict[tuple[int, int], tuple[int, float]] = {
            (i, b): (n, 0.0) for i, b, n in requested}
        self.kept = bytearray(data[:HANDSHAKE_LENGTH])
        rest = data[HANDSHAKE_LENGTH:]
        self.buf = bytearray(max(MAX_HANDOVER_BYTES, len(rest)))
        self.buf[: len(rest)] = rest
        self.start, self.end = 0, len(rest)

    def close(self) -> None:
        """Close this object's copy of the descriptor (``fd`` is the caller's)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def stream(self) -> bytes:
        """What the worker reads before the socket's bytes: the handshake, the frames
        kept, then the bytes not walked."""
        return bytes(self.kept) + bytes(self.buf[self.start : self.end])

    def unanswered(self) -> tuple[_Block, ...]:
        """The requests whose blocks were not taken, in the order they were sent."""
        return tuple(r for r in self.requested if (r[0], r[1]) in self.outstanding)


class EarlyPiece:
    """Piece ``index`` of ``size`` bytes, expected to hash to ``digest`` (SHA-1),
    asked for on ``conns`` (see the module docstring).

    Attributes:
        done: True once the piece is whole (then :meth:`check` it), or
            :attr:`failed` says why it will not be.
        failed: why it is handed back ("" while it may still come whole).
    """

    def __init__(self, index: int, size: int, digest: bytes, conns: Sequence[EarlyConn]) -> None:
        self.index = index
        self.size = size
        self.digest = digest
        self.conns = list(conns)
        self.slot = Slot(memoryview(bytearray(size)), -(-size // 16384))
        self.pd = PieceDL(index, size, self.slot)
        self._active = {index: self.pd}
        for c in self.conns:
            for (i, b), _entry in c.outstanding.items():
                if i != index:
                    raise ValueError(f"request for piece {i} in the early piece {index}")
                self.pd.outstanding[b // 16384] = c
        self.failed = ""
        self.whole = False
        for c in self.conns:  # what came with the fetch's stream (frames, no block)
            self._walk(c)

    @property
    def done(self) -> bool:
        return self.whole or bool(self.failed)

    def check(self) -> bool:
        """True when the piece is whole and hashes to its digest (else :attr:`failed`
        says why not)."""
        if not self.whole:
            self.fail("not whole")
            return False
        if bytes(_k.sha1(self.slot.view)) != self.digest:
            self.fail("its hash does not match")
            return False
        return True

    def fail(self, reason: str) -> None:
        """Hand it back (the first reason given is kept)."""
        if not self.failed:
            self.failed = reason

    def read(self, c: EarlyConn) -> None:
        """Read what ``c``'s socket holds now (without waiting) and walk it.

        The stream held for the worker (the frames kept and the bytes not
        walked) never exceeds :data:`MAX_HANDOVER_BYTES`, what an ``ipc.Adopt``
        carries: a peer that would need more is handed back.
        """
        if self.done:
            return
        if c.start:  # (a frame cut short moves to the front)
            n = c.end - c.start
            c.buf[:n] = c.buf[c.start : c.end]
            c.start, c.end = 0, n
        room = min(MAX_HANDOVER_BYTES - len(c.kept) - c.end, len(c.buf) - c.end, READ_SIZE)
        if room <= 0:
            self.fail("more than the hand-over holds")
            return
        try:
            if c.sock is None:
                c.sock = socket.socket(fileno=os.dup(c.fd))
            got = c.sock.recv_into(memoryview(c.buf)[c.end : c.end + room], room,
                                   socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError as e:
            self.fail(f"read failed: {e.strerror or e}")
            return
        if got == 0:
            self.fail("closed by the peer")
            return
        c.end += got
        _quick_ack(c.sock)
        self._walk(c)

    def _walk(self, c: EarlyConn) -> None:
        full: list[PieceDL] = []
        while not self.done:
            c.start, _taken = _k.take_blocks(c.buf, c.start, c.end, c.outstanding,
                                             self._active, c, full)
            if full:
                self.whole = True
                return
            n = _k.scan_frame(c.buf, c.start, c.end, MAX_HANDOVER_BYTES)
            if n == -1:
                return  # the rest of the frame is still to come
            if n == -2:
                self.fail("more than the hand-over holds")
                return
            frame = c.buf[c.start : c.start + _PREFIX + n]
            c.kept += frame
            c.start += _PREFIX + n
            if n and frame[_PREFIX] in (CHOKE, REJECT):
                # (a choke drops our requests without the Fast extension; a reject
                # drops one: the worker reads the frame and goes on from there)
                self.fail("choked" if frame[_PREFIX] == CHOKE else "a request rejected")
