"""Tests of the per-worker block picker (torrent/picker.py), sans-IO.

Scenarios are written compactly, in the style of libtorrent's
``setup_picker("2223333", ...)``:

- availability: one digit per piece, e.g. ``"2223333"``;
- lease: one character per piece, ``"*"`` leased, ``"."`` not (default: all);
- a peer's bitfield: ``"1"`` has the piece, ``"0"`` does not.

Pieces are 4 blocks (64 KiB) unless a test says otherwise, so a request
``(index, begin, length)`` is easy to read as ``(piece, block * BS, BS)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torrent.picker import BLOCK_SIZE, Picker, PieceDL, block_count

BS = BLOCK_SIZE
PIECE = 4 * BS


@dataclass(eq=False)
class Peer:
    """A peer as the picker sees it: hashable by identity, with a bitfield."""

    name: str
    bits: str

    def has(self, i: int) -> bool:
        return self.bits[i] == "1"

    def __repr__(self) -> str:
        return f"Peer({self.name})"


@dataclass
class Slots:
    """A pool of ``free`` slots; records which piece asked for each."""

    free: int
    asked: list[int] = field(default_factory=list)

    def alloc(self, index: int) -> object | None:
        self.asked.append(index)
        if self.free <= 0:
            return None
        self.free -= 1
        return ("slot", index)


def setup_picker(availability: str, lease: str | None = None, *,
                 piece_length: int = PIECE, total_size: int | None = None) -> Picker:
    """A picker over ``len(availability)`` pieces with that availability and lease."""
    n = len(availability)
    total = n * piece_length if total_size is None else total_size
    p = Picker(n, piece_length, total)
    for i, c in enumerate(availability):
        p.add_availability([i], int(c))
    lease = "*" * n if lease is None else lease
    assert len(lease) == n
    p.add_lease(i for i, c in enumerate(lease) if c == "*")
    return p


def pick(p: Picker, peer: Peer, want: int, slots: Slots | None = None) -> list[tuple[int, int]]:
    """Requests as ``(piece, block)`` pairs (lengths are checked separately)."""
    slots = slots if slots is not None else Slots(1000)
    reqs = p.pick(peer, peer.has, want, slots.alloc)
    for index, begin, length in reqs:
        assert begin % BS == 0
        assert length == min(BS, p.piece_size(index) - begin)
    return [(i, b // BS) for i, b, _ in reqs]


def blocks(piece: int, *bs: int) -> list[tuple[int, int]]:
    return [(piece, b) for b in bs]


# -- rarest first -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("availability", "lease", "expected"),
    [
        ("2223333", None, 0),  # ties: lowest index
        ("3332333", None, 3),  # the rarest
        ("3332111", "****...", 3),  # rarer pieces outside the lease do not count
        ("5555555", "..*.*.*", 2),  # only leased pieces
        ("0000001", None, 0),  # availability 0 (no peer told us yet) is still rarest
    ],
)
def test_new_piece_is_rarest_leased_lowest_index_on_ties(availability: str, lease: str | None,
                                                          expected: int) -> None:
    p = setup_picker(availability, lease)
    a = Peer("a", "1" * len(availability))
    assert pick(p, a, 1) == blocks(expected, 0)
    assert expected in p.active and expected not in p.unstarted


def test_pieces_started_in_rarity_order() -> None:
    p = setup_picker("4132")
    a = Peer("a", "1111")
    got = pick(p, a, 16)
    assert [i for i, _ in got[::4]] == [1, 3, 2, 0]
    assert got == blocks(1, 0, 1, 2, 3) + blocks(3, 0, 1, 2, 3) + blocks(2, 0, 1, 2, 3) + \
        blocks(0, 0, 1, 2, 3)


def test_availability_changes_move_the_choice() -> None:
    p = setup_picker("1111")
    p.add_availability([0, 1], 2)
    p.add_availability([3], -1)
    assert pick(p, Peer("a", "1111"), 1) == blocks(3, 0)


def test_order_follows_changes_between_picks() -> None:
    """The pick order is cached between picks: new leases, availability changes and
    pieces a peer lacked must all show up in the next choice."""
    p = setup_picker("2222", "**..")
    a, lacks = Peer("a", "1111"), Peer("lacks", "0111")
    assert pick(p, lacks, 4) == blocks(1, 0, 1, 2, 3)  # skips 0, which it lacks
    p.add_lease([2, 3])
    p.add_availability([3], -1)  # piece 3 becomes the rarest
    assert [i for i, _ in pick(p, a, 12)[::4]] == [3, 0, 2]


# -- what a peer is asked for ----------------------------------------------------------------


def test_a_peer_is_only_asked_for_pieces_it_has() -> None:
    p = setup_picker("1111")
    b = Peer("b", "0010")
    assert pick(p, b, 100) == blocks(2, 0, 1, 2, 3)
    assert p.unstarted == {0, 1, 3}
    assert pick(p, Peer("none", "0000"), 100) == []


def test_a_peer_is_not_given_in_flight_blocks_of_a_piece_it_lacks() -> None:
    p = setup_picker("1111")
    a = Peer("a", "1000")
    assert pick(p, a, 2) == blocks(0, 0, 1)
    c = Peer("c", "0100")
    assert pick(p, c, 2) == blocks(1, 0, 1)  # not piece 0's blocks 2, 3


def test_want_zero_or_negative_picks_nothing() -> None:
    p = setup_picker("1111")
    slots = Slots(10)
    assert p.pick(Peer("a", "1111"), lambda i: True, 0, slots.alloc) == []
    assert p.pick(Peer("a", "1111"), lambda i: True, -3, slots.alloc) == []
    assert slots.asked == [] and p.active == {}


def test_in_flight_pieces_are_finished_before_new_ones() -> None:
    p = setup_picker("1111")
    a, b = Peer("a", "1111"), Peer("b", "1111")
    assert pick(p, a, 2) == blocks(0, 0, 1)
    # b first takes the unrequested blocks of piece 0, then starts piece 1
    assert pick(p, b, 4) == blocks(0, 2, 3) + blocks(1, 0, 1)
    assert p.unstarted == {2, 3}


def test_a_peer_continues_its_own_piece_first() -> None:
    p = setup_picker("1211")
    a, b = Peer("a", "1100"), Peer("b", "0100")
    assert pick(p, a, 2) == blocks(0, 0, 1)  # rarest that a has
    assert pick(p, b, 2) == blocks(1, 0, 1)  # b has only piece 1
    # piece 1 was started (by b) before a asks again, but a's own piece 0 comes first
    assert pick(p, a, 3) == blocks(0, 2, 3) + blocks(1, 2)


def test_outside_endgame_a_block_is_requested_from_one_peer_at_a_time() -> None:
    p = setup_picker("11")
    a, b = Peer("a", "11"), Peer("b", "11")
    first = pick(p, a, 8)
    assert first == blocks(0, 0, 1, 2, 3) + blocks(1, 0, 1, 2, 3)
    assert pick(p, b, 8) == []
    assert all(not pd.dups for pd in p.active.values())


# -- slots bound what is in flight ----------------------------------------------------------


def test_no_free_slot_stops_new_pieces() -> None:
    p = setup_picker("1111")
    a = Peer("a", "1111")
    slots = Slots(free=1)
    assert pick(p, a, 100, slots) == blocks(0, 0, 1, 2, 3)
    # the second piece was tried once, refused, and nothing more was asked
    assert slots.asked == [0, 1]
    assert set(p.active) == {0}
    assert p.unstarted == {1, 2, 3}
    assert p.active[0].slot == ("slot", 0)


def test_no_free_slot_still_serves_in_flight_blocks() -> None:
    p = setup_picker("1111")
    a, b = Peer("a", "1111"), Peer("b", "1111")
    pick(p, a, 1, Slots(1))
    none = Slots(0)
    assert pick(p, b, 10, none) == blocks(0, 1, 2, 3)
    assert none.asked == [1]
    assert p.unstarted == {1, 2, 3}


def test_alloc_slot_is_asked_for_the_piece_it_will_hold() -> None:
    p = setup_picker("3123")
    slots = Slots(2)
    pick(p, Peer("a", "1111"), 8, slots)
    assert slots.asked == [1, 2]
    assert {i: pd.slot for i, pd in p.active.items()} == {1: ("slot", 1), 2: ("slot", 2)}


# -- lost blocks, chokes, disconnects -------------------------------------------------------


def test_block_lost_is_requeued_first() -> None:
    p = setup_picker("1")
    a, b = Peer("a", "1"), Peer("b", "1")
    assert pick(p, a, 3) == blocks(0, 0, 1, 2)
    p.block_lost(0, 1 * BS, a)
    assert 1 not in p.active[0].outstanding
    # block 1 comes before the never-requested block 3
    assert pick(p, b, 2) == blocks(0, 1, 3)


def test_block_lost_by_a_peer_that_does_not_hold_it_changes_nothing() -> None:
    p = setup_picker("1")
    a, b = Peer("a", "1"), Peer("b", "1")
    pick(p, a, 2)
    p.block_lost(0, 0, b)  # b never had block 0
    p.block_lost(5, 0, a)  # a piece not in flight
    pd = p.active[0]
    assert pd.outstanding == {0: a, 1: a}
    assert pd.pending == [3, 2]


def test_choke_returns_every_outstanding_block() -> None:
    """A choke without the Fast extension cancels all requests: the worker reports each lost."""
    p = setup_picker("11")
    a, b = Peer("a", "11"), Peer("b", "11")
    reqs = p.pick(a, a.has, 6, Slots(10).alloc)
    for index, begin, _ in reqs:
        p.block_lost(index, begin, a)
    assert all(not pd.outstanding for pd in p.active.values())
    got = pick(p, b, 8)
    assert sorted(got) == blocks(0, 0, 1, 2, 3) + blocks(1, 0, 1, 2, 3)


def test_peer_gone_returns_its_blocks_to_the_front() -> None:
    p = setup_picker("1")
    a, b = Peer("a", "1"), Peer("b", "1")
    pick(p, a, 2)
    assert p.active[0].owner is a
    p.peer_gone(a)
    pd = p.active[0]
    assert pd.outstanding == {} and pd.owner is None
    got = pick(p, b, 4)
    assert sorted(got[:2]) == blocks(0, 0, 1)  # a's blocks first
    assert got[2:] == blocks(0, 2, 3)


def test_peer_gone_keeps_other_peers_requests() -> None:
    p = setup_picker("11")
    a, b = Peer("a", "11"), Peer("b", "11")
    pick(p, a, 4)
    pick(p, b, 4)
    p.peer_gone(a)
    assert p.active[1].outstanding == {0: b, 1: b, 2: b, 3: b}
    assert sorted(p.active[0].pending) == [0, 1, 2, 3]


# -- endgame --------------------------------------------------------------------------------


def _all_requested(lease: str = "*") -> tuple[Picker, Peer]:
    p = setup_picker("1" * len(lease), lease)
    a = Peer("a", "1" * len(lease))
    pick(p, a, 100)
    return p, a


def test_no_duplicates_outside_endgame() -> None:
    p, _ = _all_requested()
    assert not p.endgame
    assert pick(p, Peer("b", "1"), 10) == []


def test_no_duplicates_in_endgame_while_unstarted_pieces_remain() -> None:
    p = setup_picker("11", "*.")
    a = Peer("a", "11")
    pick(p, a, 4)
    p.add_lease([1])
    p.endgame = True
    # c cannot serve the unstarted piece 1, but piece 1 is still waiting: no duplicates yet
    c = Peer("c", "10")
    assert pick(p, c, 10) == []
    assert p.active[0].dups == {}


def test_endgame_duplicates_blocks_another_peer_holds() -> None:
    p, a = _all_requested()
    p.endgame = True
    b = Peer("b", "1")
    assert pick(p, b, 10) == blocks(0, 0, 1, 2, 3)
    assert p.active[0].dups == {0: b, 1: b, 2: b, 3: b}
    assert p.active[0].outstanding == {0: a, 1: a, 2: a, 3: a}


def test_endgame_never_duplicates_to_the_holder_itself() -> None:
    p, a = _all_requested()
    p.endgame = True
    assert pick(p, a, 10) == []


def test_endgame_at_most_one_duplicate_per_block() -> None:
    p, _ = _all_requested()
    p.endgame = True
    b, c = Peer("b", "1"), Peer("c", "1")
    assert pick(p, b, 2) == blocks(0, 0, 1)
    assert pick(p, c, 10) == blocks(0, 2, 3)
    assert pick(p, Peer("d", "1"), 10) == []


def test_endgame_respects_what_the_peer_has() -> None:
    p, _ = _all_requested("**")
    p.endgame = True
    assert pick(p, Peer("b", "01"), 10) == blocks(1, 0, 1, 2, 3)


def test_block_arrived_returns_cancels_for_duplicates() -> None:
    p, a = _all_requested()
    p.endgame = True
    b = Peer("b", "1")
    pick(p, b, 10)
    pd = p.active[0]
    # the duplicate won: cancel the primary request
    assert p.block_arrived(pd, 0, b) == [(a, 0)]
    # the primary won: cancel the duplicate
    assert p.block_arrived(pd, 1, a) == [(b, 1)]
    assert 0 not in pd.outstanding and 0 not in pd.dups
    assert 1 not in pd.outstanding and 1 not in pd.dups
    assert pd.senders == {0: b, 1: a}
    assert pd.received == 2


def test_block_arrived_without_duplicate_cancels_nothing() -> None:
    p = setup_picker("1")
    a = Peer("a", "1")
    pick(p, a, 1)
    pd = p.active[0]
    assert p.block_arrived(pd, 0, a) == []
    assert pd.outstanding == {} and pd.received == 1


def test_losing_the_primary_promotes_the_duplicate() -> None:
    p, a = _all_requested()
    p.endgame = True
    b = Peer("b", "1")
    pick(p, b, 1)
    p.block_lost(0, 0, a)
    pd = p.active[0]
    assert pd.outstanding[0] is b and 0 not in pd.dups and 0 not in pd.pending
    # and a new duplicate may go out for it
    c = Peer("c", "1")
    assert sorted(pick(p, c, 10)) == blocks(0, 0, 1, 2, 3)
    assert pd.dups[0] is c


def test_losing_the_duplicate_keeps_the_primary() -> None:
    p, a = _all_requested()
    p.endgame = True
    b = Peer("b", "1")
    pick(p, b, 1)
    p.peer_gone(b)
    pd = p.active[0]
    assert pd.outstanding[0] is a and pd.dups == {} and pd.pending == []


# -- lease changes --------------------------------------------------------------------------


def test_release_gives_back_the_highest_unstarted() -> None:
    p = setup_picker("111111")
    pick(p, Peer("a", "100000"), 1)  # piece 0 in flight: never released
    assert p.release(2) == [4, 5]
    assert p.unstarted == {1, 2, 3}
    assert p.release(0) == []
    assert p.release(-1) == []
    assert p.release(10) == [1, 2, 3]
    assert p.unstarted == set()
    assert set(p.active) == {0}


def test_add_lease_skips_pieces_in_flight() -> None:
    p = setup_picker("11", "*.")
    pick(p, Peer("a", "11"), 1)
    p.add_lease([0, 1])
    assert p.unstarted == {1}


def test_drop_forgets_unstarted_and_in_flight_pieces() -> None:
    p = setup_picker("111")
    a = Peer("a", "111")
    pick(p, a, 2)
    assert p.drop(1) is None
    assert p.unstarted == {2}
    pd = p.drop(0)
    assert isinstance(pd, PieceDL) and pd.index == 0
    assert pd.outstanding == {0: a, 1: a}  # what the worker must cancel
    assert 0 not in p.active
    assert pick(p, a, 10) == blocks(2, 0, 1, 2, 3)
    assert p.drop(0) is None


def test_idle() -> None:
    p = setup_picker("1")
    assert not p.idle
    a = Peer("a", "1")
    pick(p, a, 4)
    assert not p.idle
    pd = p.active[0]
    for b in range(4):
        p.block_arrived(pd, b, a)
    assert p.finish(0) is pd
    assert p.idle
    assert p.finish(0) is None


# -- hash failure: retry, parole ------------------------------------------------------------


def _failed_piece() -> tuple[Picker, PieceDL, Peer, Peer]:
    p = setup_picker("1")
    a, b = Peer("a", "1"), Peer("b", "1")
    pick(p, a, 2)
    pick(p, b, 2)
    pd = p.active[0]
    for blk, sender in ((0, a), (1, a), (2, b), (3, b)):
        p.block_arrived(pd, blk, sender)
    assert p.finish(0) is pd
    return p, pd, a, b


def test_retry_with_parole_restricts_the_piece_to_that_peer() -> None:
    p, pd, a, b = _failed_piece()
    slot = pd.slot
    p.retry(pd, parole=a)
    assert p.active[0] is pd and pd.slot is slot  # same slot
    assert pd.received == 0 and pd.senders == {}
    assert pick(p, b, 10) == []
    assert pick(p, a, 10) == blocks(0, 0, 1, 2, 3)


def test_paroled_piece_gets_no_endgame_duplicates() -> None:
    p, pd, a, b = _failed_piece()
    p.retry(pd, parole=a)
    p.endgame = True
    pick(p, a, 10)
    assert pick(p, b, 10) == []
    assert pd.dups == {}


def test_parole_ends_when_the_paroled_peer_leaves() -> None:
    p, pd, a, b = _failed_piece()
    p.retry(pd, parole=a)
    pick(p, a, 2)
    p.peer_gone(a)
    assert pd.parole is None
    assert sorted(pick(p, b, 10)) == blocks(0, 0, 1, 2, 3)


def test_retry_without_parole_is_open_to_anyone() -> None:
    p, pd, _, b = _failed_piece()
    p.retry(pd, parole=None)
    assert pick(p, b, 10) == blocks(0, 0, 1, 2, 3)


# -- sizes ----------------------------------------------------------------------------------


def test_last_piece_has_short_blocks() -> None:
    # 3 pieces of 64 KiB; the last holds one full block and 100 bytes
    total = 2 * PIECE + BS + 100
    p = setup_picker("111", total_size=total)
    assert [p.piece_size(i) for i in range(3)] == [PIECE, PIECE, BS + 100]
    reqs = p.pick(Peer("a", "111"), lambda i: True, 100, Slots(10).alloc)
    assert reqs[-2:] == [(2, 0, BS), (2, BS, 100)]
    assert len(reqs) == 4 + 4 + 2
    assert p.active[2].nblocks == 2


def test_piece_smaller_than_a_block() -> None:
    p = setup_picker("1", piece_length=PIECE, total_size=1000)
    assert p.pick(Peer("a", "1"), lambda i: True, 5, Slots(1).alloc) == [(0, 0, 1000)]


@pytest.mark.parametrize(("size", "n"), [(1, 1), (BS - 1, 1), (BS, 1), (BS + 1, 2), (4 * BS, 4)])
def test_block_count(size: int, n: int) -> None:
    assert block_count(size) == n


def test_odd_piece_length_ends_in_a_short_block() -> None:
    # BEP 3 does not require a power of two: 40 KiB pieces are 16 + 16 + 8 KiB
    pl = 40 * 1024
    p = setup_picker("11", piece_length=pl)
    reqs = p.pick(Peer("a", "11"), lambda i: True, 3, Slots(1).alloc)
    assert reqs == [(0, 0, BS), (0, BS, BS), (0, 2 * BS, 8192)]


# -- property: no block is lost or requested twice -------------------------------------------

OPS = st.lists(
    st.tuples(st.sampled_from(["pick", "arrive", "lost", "gone", "endgame"]),
              st.integers(0, 2), st.integers(1, 6), st.integers(0, 1000)),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(bits=st.lists(st.text("01", min_size=4, max_size=4), min_size=3, max_size=3),
       avail=st.text("0123", min_size=4, max_size=4), slots=st.integers(1, 4), ops=OPS)
def test_every_block_is_pending_outstanding_or_received(bits: list[str], avail: str,
                                                        slots: int, ops: list) -> None:
    """Whatever happens, each block of a piece in flight is in exactly one place, no peer is
    asked for a piece it lacks, and duplicates exist only in endgame, one per block."""
    p = setup_picker(avail, total_size=3 * PIECE + 5000)
    peers = [Peer(str(k), b) for k, b in enumerate(bits)]
    pool = Slots(slots)
    arrived: dict[int, set[int]] = {}
    for op, k, n, r in ops:
        peer = peers[k]
        if op == "pick":
            for i, b in pick(p, peer, n, pool):
                assert peer.has(i)
                pd = p.active[i]
                assert pd.outstanding.get(b) is peer or pd.dups.get(b) is peer
        elif op == "endgame":
            p.endgame = True
        elif op == "gone":
            p.peer_gone(peer)
        else:
            held = sorted((i, b) for i, pd in p.active.items()
                          for b, q in list(pd.outstanding.items()) + list(pd.dups.items())
                          if q is peer)
            if not held:
                continue
            i, b = held[r % len(held)]
            if op == "lost":
                p.block_lost(i, b * BS, peer)
            else:
                pd = p.active[i]
                p.block_arrived(pd, b, peer)
                arrived.setdefault(i, set()).add(b)
                if len(arrived[i]) == pd.nblocks:
                    assert p.finish(i) is pd
                    pool.free += 1
                    del arrived[i]
        for i, pd in p.active.items():
            assert i not in p.unstarted
            got = arrived.get(i, set())
            pending = pd.pending
            assert len(pending) == len(set(pending)), "a block pending twice"
            places = [set(pending), set(pd.outstanding), got]
            assert sum(len(s) for s in places) == pd.nblocks, (i, places)
            assert set().union(*places) == set(range(pd.nblocks))
            assert set(pd.dups) <= set(pd.outstanding)
            assert all(pd.dups[b] is not pd.outstanding[b] for b in pd.dups)
            if not p.endgame:
                assert not pd.dups
        assert len(p.active) <= slots


def test_a_late_block_after_a_timeout_is_not_requested_again() -> None:
    """A request times out (block_lost), then the block arrives anyway: it is stored, so
    nobody should be asked for it again."""
    p = setup_picker("1")
    a, b = Peer("a", "1"), Peer("b", "1")
    pick(p, a, 2)
    p.block_lost(0, 0, a)  # timed out
    pd = p.active[0]
    p.block_arrived(pd, 0, a)  # ... and arrives late
    assert 0 not in pd.pending
    assert pick(p, b, 10) == blocks(0, 2, 3)


def test_a_peer_takes_a_whole_piece() -> None:
    p = setup_picker("2222")
    a = Peer("a", "1111")
    assert pick(p, a, 4) == blocks(0, 0, 1, 2, 3)


# -- requests sent elsewhere (a magnet's first requests, sent by the coordinator) -------


def test_adopted_requests_are_outstanding_and_not_asked_again() -> None:
    p = setup_picker("1111", "**..")
    a, b = Peer("a", "1111"), Peer("b", "1111")
    slots = Slots(1000)
    left = p.adopt_requests(a, [(0, 0, BS), (0, BS, BS)], slots.alloc)
    assert left == [] and slots.asked == [0]
    pd = p.active[0]
    assert pd.outstanding == {0: a, 1: a} and pd.owner is a
    assert 0 not in p.unstarted
    # the rest of the piece goes to whoever asks next; blocks 0 and 1 to nobody again
    assert pick(p, b, 10, slots) == blocks(0, 2, 3) + blocks(1, 0, 1, 2, 3)
    assert p.block_arrived(pd, 0, a) == []  # the answer to an adopted request: no cancel
    assert pd.received == 1 and pd.senders == {0: a}


def test_adopted_requests_outside_the_lease_or_without_a_slot_are_given_back() -> None:
    p = setup_picker("1111", "*...")
    a = Peer("a", "1111")
    stray = [(2, 0, BS)]  # not leased here
    assert p.adopt_requests(a, stray, Slots(1000).alloc) == stray
    assert p.adopt_requests(a, [(0, 0, BS)], Slots(0).alloc) == [(0, 0, BS)]  # no slot
    assert not p.active and p.unstarted == {0}
    p.adopt_requests(a, [(0, 0, BS)], Slots(1000).alloc)
    again = [(0, 0, BS)]  # already outstanding: not pending any more
    assert p.adopt_requests(Peer("b", "1111"), again, Slots(1000).alloc) == again
    assert p.active[0].outstanding == {0: a}
