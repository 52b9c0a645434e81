"""Fuzz the peer wire stream: bytes after a valid handshake into the one receive path.

Input: ``flags | split seed | stream``.  The stream is what a peer sends after
its (valid, harness-made) handshake; it reaches ``PeerProtocol`` in chunks cut
by :func:`fuzzlib.split` from the seed (seed 255: one chunk per frame, as
read from its length prefix), through ``receive_data`` or, with
flag 0x02, as socket reads (``rb.get_buffer`` / ``rb.updated`` and
``next_event``, what the network adapter does).  An owner plays the worker:
it keeps requests going through a real :class:`~torrent.picker.Picker`,
stores blocks, finishes pieces, re-issues lost requests.

Every input runs twice, the block fast path (``take_blocks`` over the
picker's table) off and on, and holds for each run:

- nothing but ``RemoteProtocolError`` escapes (from the protocol, or from the
  picker storing a block);
- after each chunk the receive buffer holds at most one incomplete frame and
  its capacity stays within a bound derived from the framer's largest frame
  (and the chunk size, for ``receive_data``, which takes a chunk whole);
- the request tables stay within their named bounds, and every request the
  wire layer has outstanding is outstanding to this peer in the picker;

and the two runs end in the same outcome (the same error, or none) with the
same protocol, picker and slot state: the fast path's parity, on any stream.
(When ``receive_data`` raises, the events it completed before the error are
lost to its caller, so after an error only the protocol state is compared
in that mode; with socket reads every event reaches the owner, as in the
worker, and everything is compared.)

Flags (first byte): 0x01 geometry (ten one-block pieces / three two-block
pieces with a short last block), 0x02 socket reads, 0x04 the peer unchokes us
before the stream, 0x08 we unchoke the peer (its requests are queued and
served), 0x10 requests time out as chunks go by, 0x20 one request is
cancelled at the start (its block may arrive late), 0x40 a block has an
endgame duplicate held by another peer, 0x80 the peer's handshake offers the
Fast extension and the extension protocol (BEP 6 and 10; ours offers both),
so have all / have none, reject, allowed fast, suggest and extended
messages are taken, not refused.

Run: ``FASTTORRENT_PURE=1 python tests/fuzz/fuzz_wire.py [libFuzzer flags] [corpus dirs]``.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from typing import Any

from fuzzlib import check, fuzz, instrumented, split

with instrumented(__name__):
    from torrent import _speedups as _k
    from torrent.errors import RemoteProtocolError
    from torrent.picker import BLOCK_SIZE, Picker, Slot, block_count
    from torrent.wire import peer as wp
    from torrent.wire.fastext import MAX_ALLOWED_FAST
    from torrent.wire.framing import MIN_READ, RECV_BUFFER_LIMIT
    from torrent.wire.handshake import RESERVED_OURS, encode_handshake
    from torrent.wire.messages import Unchoke, encode, max_message_length

#: (piece length, total size) of the torrents the stream is for.
GEOMETRIES = (
    (32, 32 * 9 + 5),  # ten pieces of one small block, the last 5 bytes: small inputs
    (2 * BLOCK_SIZE, 5 * BLOCK_SIZE + 100),  # three pieces of two blocks, the last block short
)
INFO_HASH = hashlib.sha1(b"fuzz the wire").digest()
OUR_ID = b"-FT0100-ourfuzzpeer0"
THEIR_ID = b"-XX0100-theirfuzzpr0"
#: Piece slots the owner has: bounds the pieces in flight, as the arena does.
SLOTS = 3
#: Requests the owner keeps outstanding.
WANT = 8
#: Largest chunk handed to ``receive_data`` at once (the capacity bound depends on it).
MAX_CHUNK = 1 << 16
#: Seconds after which a request times out (flag 0x10); the clock ticks once per chunk.
REQUEST_TIMEOUT = 3.0
#: Snapshot keys of the owner's side (picker, slots, events), as opposed to the protocol's.
OWNER_STATE = frozenset({"active", "finished", "events", "blocks", "unstarted", "availability",
                         "served"})
#: The split seed that cuts the stream frame by frame (the worker reacts after each).
FRAME_SEED = 255
#: Requests of the peer served after each chunk (flag 0x08).
SERVE_PER_CHUNK = 4


class Owner:
    """The worker's side of one connection: picker, slots, requests, stores."""

    def __init__(self, flags: int, fast: bool) -> None:
        self.flags = flags
        pl, total = GEOMETRIES[flags & 1]
        num = -(-total // pl)
        self.picker = Picker(num, pl, total)
        self.picker.add_lease(range(num))
        self.picker.add_availability(range(num), 1)
        self.proto = wp.PeerProtocol(INFO_HASH, OUR_ID, num, pl, total,
                                     we_initiated=True, now=0.0, fast_path=fast)
        self.peer = object()
        self.proto.attach_store(self.picker.active, self.peer)
        self.slots = [Slot(memoryview(bytearray(pl)), block_count(pl)) for _ in range(SLOTS)]
        self.max_len = max_message_length(num)
        self.now = 0.0
        self.events: list[str] = []  # non-block events, for the parity of the two runs
        self.finished: list[tuple[int, int, list[int], str]] = []
        self.blocks = 0
        self.fast_taken = 0
        self.served = 0

    # -- the worker's reactions ----------------------------------------------------------
    def alloc(self, index: int) -> Slot | None:
        if not self.slots:
            return None
        slot = self.slots.pop()
        size = self.picker.piece_size(index)
        slot.blocks = _k.BlockMap(block_count(size))
        slot.view = slot.raw[:size]
        return slot

    def finish(self, pd: Any) -> None:
        self.picker.finish(pd.index)
        digest = hashlib.sha1(pd.slot.view).hexdigest()
        self.finished.append((pd.index, pd.received, sorted(pd.senders), digest))
        self.slots.append(pd.slot)

    def request(self) -> None:
        p = self.proto
        if p.state is not wp.PeerState.ACTIVE or p.peer_choking:
            return
        want = WANT - p.num_outstanding
        if want > 0:
            reqs = self.picker.pick(self.peer, lambda i: True, want, self.alloc)
            if reqs:
                p.send_requests(reqs, self.now)

    def handle(self, ev: wp.Event) -> None:
        if isinstance(ev, wp.BlocksTaken):
            self.blocks += ev.count
            self.fast_taken += ev.count
            if ev.full is not None:
                self.finish(ev.full)
            return
        if isinstance(ev, wp.BlockReceived):
            out = self.picker.store_block(ev.index, ev.begin, ev.data, self.peer)
            if out is not None:
                self.blocks += 1
                pd, _cancels = out
                if pd.slot.blocks.full:
                    self.finish(pd)
            return
        if isinstance(ev, wp.RequestsCancelled):
            for i, b, _ln in ev.requests:
                self.picker.block_lost(i, b, self.peer)
        elif isinstance(ev, wp.RequestRejected):  # BEP 6: re-issue it elsewhere
            self.picker.block_lost(ev.index, ev.begin, self.peer)
        elif isinstance(ev, wp.RequestDropped):  # BEP 6: a request we do not serve
            self.proto.send_reject(ev.index, ev.begin, ev.length)
        elif isinstance(ev, wp.HaveReceived):
            self.picker.add_availability((ev.index,), 1)
        elif isinstance(ev, wp.BitfieldReceived):
            self.picker.add_availability(
                [i for i in range(self.picker.num_pieces) if self.proto.peer_has(i)], 1)
        self.events.append(repr(ev))

    def after_chunk(self) -> None:
        """What a worker does between reads: timers, uploads, more requests."""
        p = self.proto
        if p.state is not wp.PeerState.ACTIVE:
            return
        self.now += 1.0
        if self.flags & 0x10:
            for i, b, _ln in p.timed_out_requests(self.now, REQUEST_TIMEOUT):
                self.picker.block_lost(i, b, self.peer)
        if self.flags & 0x08:
            for _ in range(SERVE_PER_CHUNK):
                if p.next_request() is None:
                    break
                self.served += 1
        self.request()

    # -- the receive path ----------------------------------------------------------------
    def receive(self, chunk: bytes) -> None:
        p = self.proto
        if self.flags & 0x02:
            # as the network adapter: the socket reads into the buffer's free tail
            pos = 0
            while pos < len(chunk):
                tail = p.rb.get_buffer()
                n = min(len(tail), len(chunk) - pos)
                tail[:n] = chunk[pos : pos + n]
                p.rb.updated(n)
                pos += n
                while (ev := p.next_event()) is not None:
                    self.handle(ev)
            bound = max(RECV_BUFFER_LIMIT, self.max_len + 4 + MIN_READ)
        else:
            for ev in p.receive_data(chunk):
                self.handle(ev)
            bound = max(RECV_BUFFER_LIMIT, self.max_len + 4 + MAX_CHUNK)
        self.check_bounds(bound)

    def check_bounds(self, capacity: int) -> None:
        p = self.proto
        rb = p.rb
        check(rb.capacity <= capacity, f"receive buffer of {rb.capacity} bytes, bound {capacity}")
        check(rb.pending < 4 + self.max_len,
              f"{rb.pending} bytes left unconsumed: more than one incomplete frame")
        check(p.num_outstanding <= wp.MAX_OUTSTANDING_REQUESTS, "too many outstanding requests")
        check(len(p.peer_requests) <= wp.MAX_PEER_REQUESTS, "peer request queue over its bound")
        check(len(p._cancelled) <= wp.MAX_RECENTLY_CANCELLED, "cancelled memory over its bound")
        check(len(p.allowed_fast) <= MAX_ALLOWED_FAST, "allowed fast set over its bound")
        check(p.peer_piece_count == int.from_bytes(p.peer_bitfield, "big").bit_count(),
              "peer piece count differs from its bitfield")
        for i, begin, _ln in p.outstanding_requests:
            pd = self.picker.active.get(i)
            check(pd is not None and pd.outstanding.get(begin // BLOCK_SIZE) is self.peer,
                  f"request ({i}, {begin}) is outstanding on the wire but not in the picker")

    def start(self, data: bytes) -> None:
        p = self.proto
        p.handshake()
        reserved = RESERVED_OURS if self.flags & 0x80 else bytes(8)
        self.receive(encode_handshake(INFO_HASH, THEIR_ID, reserved))
        if self.flags & 0x08:
            p.send_unchoke()
        if self.flags & 0x04:
            self.receive(encode(Unchoke()))
            self.request()
            outstanding = p.outstanding_requests
            if self.flags & 0x20 and outstanding:
                i, begin, ln = outstanding[len(outstanding) // 2]
                p.send_cancel(i, begin, ln)
                self.picker.block_lost(i, begin, self.peer)
            if self.flags & 0x40 and outstanding:
                i, begin, _ln = outstanding[0]
                self.picker.active[i].dups[begin // BLOCK_SIZE] = object()
        self.events.clear()

    def snapshot(self) -> dict[str, Any]:
        p = self.proto
        active = {}
        for i, pd in sorted(self.picker.active.items()):
            active[i] = (sorted(pd.pending), sorted(pd.outstanding), sorted(pd.dups),
                         pd.received, sorted(pd.senders), bytes(pd.slot.view),
                         pd.slot.blocks.missing())
        return {
            "state": p.state, "outstanding": p.outstanding_requests,
            "cancelled": list(p._cancelled), "ignored": p.ignored_blocks,
            "choking": p.peer_choking, "interested": p.peer_interested,
            "fast": p.fast, "extensions": p.extensions, "allowed_fast": p.allowed_fast,
            "peer_extensions": p.peer_extensions,
            "bits": p.peer_bitfield, "peer_requests": p.peer_requests,
            "dropped": p.dropped_peer_requests, "served": self.served,
            "active": active, "finished": self.finished, "events": self.events,
            "blocks": self.blocks, "unstarted": sorted(self.picker.unstarted),
            "availability": self.picker.availability,
        }


def frames(stream: bytes) -> Iterator[bytes]:
    """``stream`` cut after each frame its length prefixes announce (at most MAX_CHUNK each)."""
    pos = 0
    while pos < len(stream):
        n = min(MAX_CHUNK, 4 + int.from_bytes(stream[pos : pos + 4], "big"))
        yield stream[pos : pos + n]
        pos += n


def run(data: bytes, fast: bool) -> tuple[str | None, dict[str, Any], int]:
    """One run: (the peer's error or None, the final state, blocks the fast path took)."""
    flags, seed, stream = data[0], data[1], data[2:]
    o = Owner(flags, fast)
    o.start(data)
    error = None
    try:
        chunks = frames(stream) if seed == FRAME_SEED else split(stream, seed, MAX_CHUNK)
        for chunk in chunks:
            o.receive(chunk)
            o.after_chunk()
        if o.proto.state is not wp.PeerState.CLOSED:
            o.proto.receive_data(b"")
    except RemoteProtocolError as exc:
        error = str(exc)
        check(o.proto.state is wp.PeerState.CLOSED, "a protocol error left the connection open")
    return error, o.snapshot(), o.fast_taken


def TestOneInput(data: bytes) -> None:
    """Feed the stream with the fast path off and on; check bounds and parity."""
    if len(data) < 2:
        return
    slow_error, slow, slow_taken = run(data, fast=False)
    fast_error, fast, _fast_taken = run(data, fast=True)
    check(slow_taken == 0, "the fast path ran while turned off")
    check(slow_error == fast_error,
          f"the fast path changes the outcome: {slow_error!r} vs {fast_error!r}")
    keys = list(slow)
    if slow_error is not None and not data[0] & 0x02:
        # receive_data raised: the events it completed before the error are not
        # returned, so the owner never saw them; only the protocol state compares
        keys = [k for k in keys if k not in OWNER_STATE]
    for key in keys:
        check(slow[key] == fast[key], f"the fast path changes {key}: {slow[key]!r:.300} vs "
                                      f"{fast[key]!r:.300}")


if __name__ == "__main__":
    fuzz(TestOneInput)
    sys.exit(0)
