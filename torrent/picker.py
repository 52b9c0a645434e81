"""Per-worker block picker: which 16 KiB blocks to request from which peer (sans-IO).

Theory of operation
-------------------
The coordinator leases pieces to a worker; this picker decides, inside the
lease, what each of the worker's peers is asked for:

1. blocks still unrequested in pieces already in flight (finish what was
   started: a slot is busy until its piece is complete), preferring pieces
   this peer already works on;
2. then a new piece, rarest first among the leased pieces the peer has
   (availability counted over this worker's peers), lowest index on ties, as
   long as a free slot is available (free slots bound what is in flight);
3. in endgame (the lease is empty and the coordinator has nothing left to
   give), blocks already requested from another peer, at most once more each,
   so a slow peer cannot hold the tail back.

A block is requested from one peer at a time outside endgame.  Blocks of a
peer that chokes, times out or disconnects go back to the front of their
piece's pending list.  Peers are any hashable objects.  No I/O and no clock
here; the worker calls in with what happened.

Storing a block: the wire layer accepts a block only if it was requested
from that peer with that length (``PeerProtocol.accept_block``); the picker
then stores it in its piece's slot (:meth:`Picker.store_block`).  The plain
case of both steps together is the ``take_blocks`` kernel, which reads and
writes the :class:`PieceDL` and :class:`Slot` fields named in their
docstrings; the parity tests run every stream with and without it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from . import _speedups as _k
from .errors import RemoteProtocolError
from .wire.messages import BLOCK_SIZE

__all__ = ["BLOCK_SIZE", "Picker", "PieceDL", "Slot", "block_count"]


_NO_CANCELS: list[tuple[Any, int]] = []  # shared, never mutated


def block_count(piece_size: int) -> int:
    return -(-piece_size // BLOCK_SIZE)


class Slot:
    """A piece slot in the shared arena and the block map of the piece it holds.

    ``raw`` is the whole slot; ``view`` is where the current piece lies in it
    (all of it, or -- multi-file torrents -- the piece's bytes shifted so that
    they are aligned in memory as in their file; see ``Worker.alloc_slot``).
    The block fast path copies into ``view`` and sets bits in ``blocks``.
    """

    __slots__ = ("blocks", "raw", "view")

    def __init__(self, view: memoryview, nblocks: int) -> None:
        self.raw = view
        self.view = view
        self.blocks = _k.BlockMap(nblocks)


class PieceDL:
    """A piece in flight in this worker: its slot and the state of its blocks.

    The block fast path reads ``size``, ``dups``, ``outstanding`` and ``slot``
    and, for a block it takes, removes it from ``outstanding`` and records it
    in ``senders`` and ``received``, as :meth:`Picker.store_block` does.
    """

    __slots__ = (
        "dups",
        "index",
        "nblocks",
        "outstanding",
        "owner",
        "parole",
        "pending",
        "received",
        "senders",
        "size",
        "slot",
    )

    def __init__(self, index: int, size: int, slot: Any) -> None:
        self.index = index
        self.size = size
        self.nblocks = block_count(size)
        # Stack of unrequested blocks; pop() yields the lowest block first.
        self.pending: list[int] = list(range(self.nblocks - 1, -1, -1))
        self.owner: Any | None = None
        self.outstanding: dict[int, Any] = {}
        self.dups: dict[int, Any] = {}
        self.received = 0
        self.slot = slot
        self.senders: dict[int, Any] = {}  # block -> peer that delivered it
        self.parole: Any | None = None  # only this peer may serve it (after a failure)

    def block_length(self, b: int) -> int:
        return min(BLOCK_SIZE, self.size - b * BLOCK_SIZE)


class Picker:
    """Block requests inside this worker's lease."""

    def __init__(self, num_pieces: int, piece_length: int, total_size: int) -> None:
        self.num_pieces = num_pieces
        self.piece_length = piece_length
        self.total_size = total_size
        self.availability = [0] * num_pieces
        self.unstarted: set[int] = set()  # leased, not yet in flight
        self.active: dict[int, PieceDL] = {}
        self.endgame = False
        # ``unstarted`` in pick order, rarest and lowest last (pop() takes the
        # next); rebuilt only when the lease or the availability changed, and
        # it may hold pieces no longer unstarted, which pick() skips.
        self._order: list[int] = []
        self._order_dirty = False

    # -- lease ---------------------------------------------------------------
    def piece_size(self, i: int) -> int:
        return min(self.piece_length, self.total_size - i * self.piece_length)

    def add_lease(self, pieces: Iterable[int]) -> None:
        for i in pieces:
            if i not in self.active:
                self.unstarted.add(i)
                self._order_dirty = True

    def release(self, n: int) -> list[int]:
        """Give back up to ``n`` unstarted pieces (the highest indices) for another worker."""
        out = sorted(self.unstarted)[-n:] if n > 0 else []
        self.unstarted.difference_update(out)
        return out

    def drop(self, index: int) -> PieceDL | None:
        """Forget a piece verified elsewhere; returns its in-flight state to cancel, if any."""
        self.unstarted.discard(index)
        return self.active.pop(index, None)

    # -- availability --------------------------------------------------------
    def add_availability(self, pieces: Iterable[int], delta: int) -> None:
        av = self.availability
        for i in pieces:
            av[i] += delta
        if self.unstarted:
            self._order_dirty = True

    # -- picking -------------------------------------------------------------
    def pick(self, peer: Any, has: Callable[[int], bool], want: int,
             alloc_slot: Callable[[int], Any]) -> list[tuple[int, int, int]]:
        """Up to ``want`` requests ``(index, begin, length)`` for ``peer``, marked outstanding."""
        out: list[tuple[int, int, int]] = []
        if want <= 0:
            return out
        # 1. pieces in flight with unrequested blocks, this peer's own first (two passes,
        # no sort: most pieces in flight have every block asked for already)
        for own in (True, False):
            for pd in self.active.values():
                if not pd.pending or (pd.owner is peer) is not own or not has(pd.index):
                    continue
                if pd.parole is not None and pd.parole is not peer:
                    continue
                self._take(pd, peer, want - len(out), out)
                if len(out) >= want:
                    return out
        # 2. new pieces, rarest first (lowest index on ties)
        if len(out) < want and self.unstarted:
            if self._order_dirty:
                av = self.availability
                self._order = sorted(self.unstarted, key=lambda k: (av[k], k), reverse=True)
                self._order_dirty = False
            order = self._order
            unstarted = self.unstarted
            skipped: list[int] = []  # pieces this peer lacks, put back in order below
            while len(out) < want and order:
                i = order[-1]
                if i not in unstarted:
                    order.pop()  # started, released or verified meanwhile
                    continue
                if not has(i):
                    skipped.append(order.pop())
                    continue
                slot = alloc_slot(i)
                if slot is None:
                    break
                order.pop()
                unstarted.discard(i)
                pd = PieceDL(i, self.piece_size(i), slot)
                pd.owner = peer
                self.active[i] = pd
                self._take(pd, peer, want - len(out), out)
            if skipped:
                order.extend(reversed(skipped))
        # 3. endgame: duplicate requests of blocks another peer holds
        if len(out) < want and self.endgame and not self.unstarted:
            for pd in self.active.values():
                if pd.parole is not None or not has(pd.index):
                    continue
                for b, holder in pd.outstanding.items():
                    if holder is peer or b in pd.dups:
                        continue
                    pd.dups[b] = peer
                    out.append((pd.index, b * BLOCK_SIZE, pd.block_length(b)))
                    if len(out) >= want:
                        return out
        return out

    def adopt_requests(self, peer: Any, blocks: Iterable[tuple[int, int, int]],
                       alloc_slot: Callable[[int], Any]) -> list[tuple[int, int, int]]:
        """Record requests ``peer`` was sent elsewhere (a magnet's first requests, sent by
        the coordinator) as outstanding to it; returns those that could not be: of a
        piece not leased here, a block not pending, or no free slot (their blocks,
        if they come, are dropped as a lost endgame race is)."""
        left: list[tuple[int, int, int]] = []
        for blk in blocks:
            index, begin, _length = blk
            pd = self.active.get(index)
            if pd is None and index in self.unstarted:
                slot = alloc_slot(index)
                if slot is not None:
                    self.unstarted.discard(index)
                    pd = PieceDL(index, self.piece_size(index), slot)
                    pd.owner = peer
                    self.active[index] = pd
            b = begin // BLOCK_SIZE
            if pd is None or b not in pd.pending:
                left.append(blk)
                continue
            pd.pending.remove(b)
            pd.outstanding[b] = peer
        return left

    @staticmethod
    def _take(pd: PieceDL, peer: Any, n: int, out: list[tuple[int, int, int]]) -> None:
        pending = pd.pending
        outstanding = pd.outstanding
        base, size = pd.index, pd.size
        while n > 0 and pending:
            b = pending.pop()
            outstanding[b] = peer
            begin = b * BLOCK_SIZE
            out.append((base, begin, min(BLOCK_SIZE, size - begin)))  # (pd.block_length)
            n -= 1

    # -- outcomes ------------------------------------------------------------
    def store_block(self, index: int, begin: int, data: Any,
                    peer: Any) -> tuple[PieceDL, list[tuple[Any, int]]] | None:
        """Store a block the wire layer accepted from ``peer`` (the slow path).

        Returns:
            None when there is nothing to store (the piece was finished or
            dropped meanwhile, or an endgame duplicate lost the race); else the
            piece and the other peers whose duplicate request to cancel.  The
            caller finishes the piece when ``pd.slot.blocks.full``.

        Raises:
            RemoteProtocolError: the block does not fit the piece's geometry.
        """
        pd = self.active.get(index)
        if pd is None:
            return None  # finished or dropped meanwhile
        b = begin >> 14
        length = len(data)
        if begin & (BLOCK_SIZE - 1) or b >= pd.nblocks or length != pd.block_length(b):
            raise RemoteProtocolError(
                f"block ({index}, {begin}, {length}) does not match any request")
        slot = pd.slot
        if not slot.blocks.set(b):
            return None  # an endgame duplicate that lost the race
        _k.copy_block(slot.view, begin, data, 0, length)
        return pd, self.block_arrived(pd, b, peer)

    def block_arrived(self, pd: PieceDL, b: int, peer: Any) -> list[tuple[Any, int]]:
        """A block was stored.  Returns other peers whose duplicate request to cancel."""
        holder = pd.outstanding.pop(b, None)
        if holder is None and b in pd.pending:
            pd.pending.remove(b)  # it timed out and was queued again, then arrived after all
        pd.senders[b] = peer
        pd.received += 1
        if not pd.dups:  # the common case: no endgame duplicate of this piece
            if holder is None or holder is peer:
                return _NO_CANCELS
            return [(holder, b)]
        cancels: list[tuple[Any, int]] = []
        dup = pd.dups.pop(b, None)
        if holder is not None and holder is not peer:
            cancels.append((holder, b))
        if dup is not None and dup is not peer:
            cancels.append((dup, b))
        return cancels

    def block_lost(self, index: int, begin: int, peer: Any) -> None:
        """A request to ``peer`` will not be served (choke, timeout, cancel, disconnect)."""
        pd = self.active.get(index)
        if pd is None:
            return
        b = begin // BLOCK_SIZE
        if pd.dups.get(b) is peer:
            del pd.dups[b]
        if pd.outstanding.get(b) is peer:
            del pd.outstanding[b]
            dup = pd.dups.pop(b, None)
            if dup is not None:
                pd.outstanding[b] = dup  # the duplicate request becomes the primary
            else:
                pd.pending.append(b)  # re-request it first

    def peer_gone(self, peer: Any) -> None:
        for pd in self.active.values():
            for b in [b for b, p in pd.outstanding.items() if p is peer]:
                self.block_lost(pd.index, b * BLOCK_SIZE, peer)
            for b in [b for b, p in pd.dups.items() if p is peer]:
                del pd.dups[b]
            if pd.owner is peer:
                pd.owner = None
            if pd.parole is peer:
                pd.parole = None

    def finish(self, index: int) -> PieceDL | None:
        """The piece left the picker (verified, or failed and about to be retried)."""
        return self.active.pop(index, None)

    def retry(self, pd: PieceDL, parole: Any | None) -> None:
        """A piece failed its hash: fetch it again in the same slot (from ``parole`` alone)."""
        pd.pending = list(range(pd.nblocks - 1, -1, -1))
        pd.outstanding.clear()
        pd.dups.clear()
        pd.received = 0
        pd.senders = {}
        pd.parole = parole
        pd.owner = parole
        self.active[pd.index] = pd

    @property
    def idle(self) -> bool:
        """Nothing leased and nothing in flight."""
        return not self.unstarted and not self.active
