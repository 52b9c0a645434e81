"""The one receive path: the block fast path on and off leave identical state.

The same byte stream from a peer -- plain blocks, blocks out of order, an
endgame duplicate, a late block after a cancel, a have, a keep-alive, a
choke that discards requests, an unchoke and more blocks -- is fed to
``PeerProtocol.next_event`` whole, one byte at a time and split around every
message boundary, with the ``take_blocks`` kernel (compiled and pure twin)
and without it.  Every run must leave the same protocol state, picker state,
slot bytes and block maps, and report the same non-block events; the runs
with the kernel must actually have taken blocks with it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest

from torrent import _fast, _pure
from torrent import picker as picker_mod
from torrent.picker import BLOCK_SIZE, Picker, Slot
from torrent.wire import peer as wp
from torrent.wire.handshake import encode_handshake
from torrent.wire.messages import Choke, Have, KeepAlive, Piece, Unchoke, encode

PIECE = 4 * BLOCK_SIZE
SIZE = 3 * PIECE + 40_000  # four pieces, the last of three blocks, its last one short
NUM = -(-SIZE // PIECE)
INFO_HASH = hashlib.sha1(b"parity").digest()
OUR_ID = b"-FT0100-ourpeeridxxx"
THEIR_ID = b"-XX0100-theirpeerid0"
DATA = bytes((i * 7 + (i >> 13)) & 0xFF for i in range(SIZE))


def block(index: int, b: int) -> bytes:
    start = index * PIECE + b * BLOCK_SIZE
    return DATA[start : min(start + BLOCK_SIZE, (index + 1) * PIECE, SIZE)]


class Owner:
    """What the worker does with the events, with the same picker calls."""

    def __init__(self, fast: bool, kernel: Any) -> None:
        self.picker = Picker(NUM, PIECE, SIZE)
        self.proto = wp.PeerProtocol(INFO_HASH, OUR_ID, NUM, PIECE, SIZE, we_initiated=True,
                                     now=0.0, fast_path=fast)
        self.peer = object()
        self.proto.attach_store(self.picker.active, self.peer)
        self.kernel = kernel
        self.slots = [Slot(memoryview(bytearray(PIECE)), 4) for _ in range(4)]  # kernel's BlockMap
        self.finished: list[int] = []
        self.events: list[Any] = []
        self.fast_taken = 0
        self.blocks = 0
        self.proto.handshake()

    def alloc(self, index: int) -> Slot | None:
        if not self.slots:
            return None
        slot = self.slots.pop()
        nb = -(-self.picker.piece_size(index) // BLOCK_SIZE)
        if slot.blocks.nblocks != nb:
            slot.blocks = self.kernel.BlockMap(nb)
        slot.view = slot.raw[: self.picker.piece_size(index)]
        return slot

    def drain(self) -> None:
        while (ev := self.proto.next_event()) is not None:
            if isinstance(ev, wp.BlocksTaken):
                self.fast_taken += ev.count
                self.blocks += ev.count
                if ev.full is not None:
                    self.finish(ev.full)
            elif isinstance(ev, wp.BlockReceived):
                out = self.picker.store_block(ev.index, ev.begin, ev.data, self.peer)
                if out is not None:
                    self.blocks += 1
                    pd, _cancels = out
                    if pd.slot.blocks.full:
                        self.finish(pd)
            else:
                if isinstance(ev, wp.RequestsCancelled):
                    for i, b, _ln in ev.requests:
                        self.picker.block_lost(i, b, self.peer)
                if isinstance(ev, wp.HaveReceived):
                    self.picker.add_availability((ev.index,), 1)
                self.events.append(ev)

    def finish(self, pd: Any) -> None:
        self.picker.finish(pd.index)
        self.finished.append((pd.index, pd.received, sorted(pd.senders), pd.slot.blocks.count))
        self.finished_bytes[pd.index] = bytes(pd.slot.view)

    finished_bytes: dict[int, bytes]

    def request(self, want: int) -> None:
        reqs = self.picker.pick(self.peer, lambda i: True, want, self.alloc)
        self.proto.send_requests(reqs, 0.0)

    def snapshot(self) -> dict[str, Any]:
        p = self.proto
        active = {}
        for i, pd in sorted(self.picker.active.items()):
            active[i] = (sorted(pd.pending), sorted(pd.outstanding), sorted(pd.dups),
                         pd.received, sorted(pd.senders), bytes(pd.slot.view),
                         pd.slot.blocks.missing())
        return {
            "state": p.state, "outstanding": p.outstanding_requests,
            "cancelled": list(p._cancelled),
            "ignored": p.ignored_blocks, "choking": p.peer_choking,
            "bits": p.peer_bitfield, "active": active, "finished": self.finished,
            "finished_bytes": self.finished_bytes, "events": self.events,
            "blocks": self.blocks, "unstarted": sorted(self.picker.unstarted),
        }


def scenario(fast: bool, kernel: Any) -> tuple[Owner, list[bytes]]:
    """The owner after the handshake and its first requests, and the stream, message by message."""
    o = Owner(fast, kernel)
    o.finished_bytes = {}
    o.picker.add_lease(range(NUM))
    o.picker.add_availability(range(NUM), 1)
    o.proto.receive_data(encode_handshake(INFO_HASH, THEIR_ID))
    o.proto.receive_data(encode(Unchoke()))
    o.events.clear()
    o.request(10)  # pieces 0 (4 blocks), 1 (4 blocks), 2 (blocks 0-1)
    # an endgame duplicate of piece 2 block 0 held by another peer: the slow path
    o.picker.active[2].dups[0] = object()
    # a request we abandon: its block arrives late and is ignored
    o.proto.send_cancel(1, 3 * BLOCK_SIZE, BLOCK_SIZE)
    o.picker.block_lost(1, 3 * BLOCK_SIZE, o.peer)
    msgs = [
        encode(Piece(0, 0, block(0, 0))),
        encode(Piece(0, BLOCK_SIZE, block(0, 1))),
        encode(KeepAlive()),
        encode(Piece(0, 3 * BLOCK_SIZE, block(0, 3))),  # out of order
        encode(Piece(0, 2 * BLOCK_SIZE, block(0, 2))),  # completes piece 0
        encode(Have(3)),
        encode(Piece(1, 0, block(1, 0))),
        encode(Piece(2, 0, block(2, 0))),  # has an endgame duplicate
        encode(Piece(1, 3 * BLOCK_SIZE, block(1, 3))),  # late: we cancelled it
        encode(Piece(1, BLOCK_SIZE, block(1, 1))),
        encode(Choke()),  # discards piece 1 block 2 and piece 2 block 1
        encode(Piece(2, BLOCK_SIZE, block(2, 1))),  # in flight before the choke: ignored
        encode(Unchoke()),
    ]
    return o, msgs


def run(fast: bool, kernel: Any, chunks: Iterator[bytes]) -> dict[str, Any]:
    o, _msgs = scenario(fast, kernel)
    for chunk in chunks:
        o.proto.rb.feed(chunk)
        o.drain()
    middle = o.snapshot()
    # after the unchoke: request the rest, and the peer sends all of it in one go
    o.request(20)
    tail = b"".join(encode(Piece(i, begin, block(i, begin // BLOCK_SIZE)))
                    for i, begin, _ln in o.proto.outstanding_requests)
    o.proto.rb.feed(tail)
    o.drain()
    snap = o.snapshot()
    snap["middle"] = middle
    snap["fast_taken"] = o.fast_taken
    return snap


def stream() -> tuple[bytes, list[int]]:
    _o, msgs = scenario(False, None)
    bounds = [0]
    for m in msgs:
        bounds.append(bounds[-1] + len(m))
    return b"".join(msgs), bounds


def splits() -> Iterator[tuple[str, list[bytes]]]:
    data, bounds = stream()
    yield "whole", [data]
    yield "bytewise", [data[i : i + 1] for i in range(len(data))]
    cuts = sorted({c + d for c in bounds for d in (-1, 1, 4, 5, 12, 13, 14, 8000)
                   if 0 < c + d < len(data)})
    for c in cuts:
        yield f"cut{c}", [data[:c], data[c:]]


KERNELS = {"native": _fast, "pure": _pure}


@pytest.fixture(params=sorted(KERNELS))
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """One implementation for the framer, the fast path and the slots' block maps."""
    k = KERNELS[request.param]
    monkeypatch.setattr(wp, "_k", k)
    monkeypatch.setattr(picker_mod, "_k", k)
    return k


def test_fast_path_on_and_off_leave_identical_state(kernel: Any) -> None:
    reference = run(False, kernel, iter([stream()[0]]))
    assert reference["fast_taken"] == 0
    # the scenario does what it says: piece 0 done, the rest fetched after the choke
    assert reference["finished"][0][0] == 0  # piece 0 is the first one completed
    assert sorted(f[0] for f in reference["finished"]) == [0, 1, 2, 3]
    assert reference["middle"]["active"], "pieces in flight at the choke"
    assert reference["ignored"] == 2  # the cancelled block and the one the choke discarded
    for i, data in reference["finished_bytes"].items():
        assert data == DATA[i * PIECE : (i + 1) * PIECE]
    assert [type(e).__name__ for e in reference["events"]] == [
        "HaveReceived", "Choked", "RequestsCancelled", "Unchoked"]
    for name, chunks in splits():
        for fast in (False, True):
            got = run(fast, kernel, iter(chunks))
            taken = got.pop("fast_taken")
            if fast and name == "whole":
                assert taken >= 10, "the kernel took no blocks: the parity is vacuous"
            ref = dict(reference)
            ref.pop("fast_taken")
            assert got == ref, (name, fast)
