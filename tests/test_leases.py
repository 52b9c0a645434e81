"""Tests of the piece-lease table (torrent/leases.py), sans-IO.

Scenarios are written compactly, in the style of libtorrent's
``setup_picker("2223333", "* * *  ")``:

- piece states, one character per piece: ``"."`` free, a digit ``w``
  leased to worker ``w``, ``"v"`` verified, ``"x"`` unwanted (outside the
  run's selection or shard);
- what each worker's peers have, one string per worker: ``"*"`` has the
  piece, ``" "`` not (a shorter string: the rest is missing).

The actions a call returns are written one string each:
``"1 lease 4 5"``, ``"1 endgame 3"``, ``"0 steal 2"``, ``"2 done 7"``.

Time is an argument: ``now`` is seconds since the workers started.
"""

from __future__ import annotations

import ast
import pathlib

from hypothesis import given, settings
from hypothesis import strategies as st

from torrent import ipc, leases
from torrent.leases import ENDGAME_MIN_AGE, LEASE_GRACE, LeaseTable, PieceState, Send

ALL = "*" * 64


def setup(pieces: str, *peers: str, asked: bool = True, leased_at: float = 0.0) -> LeaseTable:
    """A table with these piece states and one worker per ``peers`` string.

    Every worker has peers; ``asked``: every worker has asked for pieces
    already (the start-up affinity is over).  Leased pieces were leased at
    ``leased_at``.
    """
    n = len(pieces)
    wanted = bytes(c != "x" for c in pieces) if "x" in pieces else None
    t = LeaseTable(n, len(peers), started_at=0.0, wanted=wanted)
    for w, has in enumerate(peers):
        bits = bytearray(-(-n // 8))
        for i, c in enumerate(has[:n]):
            if c == "*":
                bits[i >> 3] |= 0x80 >> (i & 7)
        t.workers[w].avail = bits
        t.workers[w].peers = 1
        t.workers[w].asked = asked
    for i, c in enumerate(pieces):
        if c == "v":
            t.mark_have([i])
        elif c.isdigit():
            t.state[i] = PieceState.LEASED
            t.owner[i] = int(c)
            t.leased_at[i] = leased_at
            t.workers[int(c)].leased.add(i)
    check(t)
    return t


def show(t: LeaseTable) -> str:
    """The piece states in :func:`setup`'s notation."""
    return "".join("." if s == PieceState.FREE else "v" if s == PieceState.VERIFIED
                   else "x" if s == PieceState.UNWANTED
                   else str(t.owner[i]) for i, s in enumerate(t.state))


def fmt(actions: list[Send]) -> list[str]:
    """Actions, one string each (see the module docstring)."""
    out = []
    for a in actions:
        m = a.msg
        if isinstance(m, ipc.Lease):
            kind, args = ("endgame" if m.endgame else "lease"), m.pieces
        elif isinstance(m, ipc.Steal):
            kind, args = "steal", (m.wanted,)
        else:
            kind, args = "done", m.pieces
        out.append(" ".join([str(a.worker), kind, *map(str, args)]))
    return out


def check(t: LeaseTable) -> None:
    """The table's invariants hold."""
    for w in t.workers:
        for p in w.leased:
            assert t.state[p] == PieceState.LEASED and t.owner[p] == w.wid, (p, w.wid)
    for p, s in enumerate(t.state):
        if s == PieceState.LEASED and t.workers[t.owner[p]].alive:
            assert p in t.workers[t.owner[p]].leased, p
    assert t.num_verified == t.state.count(PieceState.VERIFIED)
    assert t.wanted_left == t.state.count(PieceState.FREE) + t.state.count(PieceState.LEASED)
    assert all(len(h) <= leases.ENDGAME_MAX_EXTRA for h in t.endgame_dups.values())


# -- start-up affinity ------------------------------------------------------------
def test_at_start_a_worker_leases_only_in_its_own_region() -> None:
    # worker 0's peers have pieces 0-1 of its region [0, 4) and all of worker 1's
    t = setup("........", "**  ****", ALL, asked=False)
    assert fmt(t.need(0, 8, now=0.1)) == ["0 lease 0 1"]
    # nothing else in its region: it waits, worker 1's region is left to worker 1
    assert fmt(t.need(0, 8, now=0.2)) == []
    assert t.workers[0].waiting_need == 3  # its fair share of the 6 free pieces
    assert fmt(t.need(1, 8, now=0.3)) == ["1 lease 4 5 6"]
    assert show(t) == "00..111."


def test_a_worker_starts_in_its_own_region_even_when_its_peers_have_everything() -> None:
    t = setup("." * 9, ALL, ALL, ALL, asked=False)
    assert fmt(t.need(2, 9, now=0.0)) == ["2 lease 6 7 8"]
    assert fmt(t.need(0, 9, now=0.0)) == ["0 lease 0 1"]  # fair share: ceil(6 / 3)
    assert show(t) == "00....222"


def test_the_affinity_ends_with_the_grace_period() -> None:
    t = setup("........", "**  ****", ALL, asked=False)
    assert fmt(t.need(0, 2, now=0.1)) == ["0 lease 0 1"]
    assert fmt(t.need(0, 2, now=0.2)) == []  # waits
    assert fmt(t.serve_waiting(now=LEASE_GRACE - 0.01)) == []
    assert fmt(t.serve_waiting(now=LEASE_GRACE)) == ["0 lease 4 5"]
    check(t)


def test_the_grace_period_runs_from_start() -> None:
    t = setup("........", "**  ****", ALL, asked=False)
    t.start(100.0)  # the workers started late (after a long resume check)
    assert fmt(t.need(0, 4, now=100.0 + LEASE_GRACE - 0.01)) == ["0 lease 0 1"]
    assert fmt(t.need(0, 4, now=100.0 + LEASE_GRACE - 0.01)) == []  # waits
    assert fmt(t.serve_waiting(now=100.0 + LEASE_GRACE)) == ["0 lease 4 5 6"]


def test_the_affinity_ends_once_every_other_worker_with_peers_has_asked() -> None:
    t = setup("........", "**  ****", "    ****", "        ", asked=False)
    t.set_peers(2, 0)  # no peers: it cannot ask, and does not hold the others back
    assert fmt(t.need(0, 2, now=0.1)) == ["0 lease 0 1"]
    assert fmt(t.need(0, 2, now=0.1)) == []  # worker 1 has not asked yet
    # worker 1's own request: worker 0 has asked, so worker 1 leases anywhere
    assert fmt(t.need(1, 1, now=0.1)) == ["1 lease 4"]
    assert fmt(t.serve_waiting(now=0.2)) == ["0 lease 5 6"]


# -- fair share ------------------------------------------------------------------
def test_the_tail_is_shared_fairly() -> None:
    t = setup("vvvv......", ALL, ALL, ALL)
    assert fmt(t.need(0, 10, now=5.0)) == ["0 lease 4 5"]  # ceil(6 free / 3 workers)
    assert fmt(t.need(1, 10, now=5.0)) == ["1 lease 6 7"]
    assert fmt(t.need(2, 10, now=5.0)) == ["2 lease 8"]  # ceil(2 / 3)


def test_the_last_free_piece_is_leased_alone() -> None:
    t = setup("vvvv000.", ALL, ALL, ALL)
    assert fmt(t.need(1, 10, now=5.0)) == ["1 lease 7"]


def test_a_lease_continues_from_where_the_last_one_ended() -> None:
    t = setup("........", ALL, ALL)
    assert fmt(t.need(1, 2, now=5.0)) == ["1 lease 4 5"]
    assert fmt(t.need(1, 2, now=5.0)) == ["1 lease 6 7"]
    assert fmt(t.need(1, 1, now=5.0)) == ["1 lease 0"]  # wraps around


# -- waiting ---------------------------------------------------------------------
def test_a_worker_whose_peers_have_none_of_the_free_pieces_waits() -> None:
    t = setup("....0000", ALL, "    ****")
    assert fmt(t.need(1, 4, now=5.0)) == []  # no steal while pieces are free
    assert t.workers[1].waiting_need == 2  # fair share of 4 free pieces
    assert fmt(t.serve_waiting(now=6.0)) == []
    assert fmt(t.availability(1, bytes([0xFF]), now=7.0)) == ["1 lease 0 1"]
    assert t.workers[1].waiting_need == 0
    check(t)


def test_pieces_a_thief_cannot_use_serve_a_waiting_worker() -> None:
    t = setup("00000.", ALL, "   ** ", "**** *")
    assert fmt(t.need(1, 4, now=5.0)) == []  # piece 5 is free, its peers lack it
    assert fmt(t.need(2, 2, now=5.0)) == ["2 lease 5"]
    assert fmt(t.need(2, 2, now=5.0)) == ["0 steal 2"]  # nothing free: a steal
    assert fmt(t.released(0, [3, 4], now=5.5)) == ["2 lease 3", "1 lease 4"]
    assert t.workers[2].steals == 1 and t.workers[1].waiting_need == 0
    assert show(t) == "000212"
    check(t)


# -- steals ----------------------------------------------------------------------
def test_a_steal_asks_the_largest_lease_for_half_between_equals() -> None:
    t = setup("000000111v", ALL, ALL, ALL)
    assert fmt(t.need(2, 4, now=5.0)) == ["0 steal 3"]
    assert t.workers[2].steal_from == 0 and t.workers[2].waiting_need == 4


def test_a_steal_takes_a_share_in_proportion_to_speed() -> None:
    t = setup("00000000111", ALL, ALL, ALL)
    t.set_rate(0, 300.0)
    t.set_rate(2, 100.0)  # slower thief: a quarter
    assert fmt(t.need(2, 8, now=5.0)) == ["0 steal 2"]
    t = setup("00000000111", ALL, ALL, ALL)
    t.set_rate(0, 100.0)
    t.set_rate(2, 300.0)  # faster thief: three quarters
    assert fmt(t.need(2, 8, now=5.0)) == ["0 steal 6"]
    t = setup("00000000111", ALL, ALL, ALL)
    t.set_rate(0, 1000.0)  # a stalled thief still gets one
    assert fmt(t.need(2, 8, now=5.0)) == ["0 steal 1"]


def test_the_victim_holds_more_than_one_piece_the_thief_can_get() -> None:
    # worker 0 holds the most, but worker 2's peers have only one of its pieces
    t = setup("00000111", ALL, ALL, "*    ***")
    assert fmt(t.need(2, 4, now=5.0)) == ["1 steal 1"]


def test_released_pieces_go_to_the_thief_all_of_them() -> None:
    t = setup("000000111v", ALL, ALL, ALL)
    assert fmt(t.need(2, 4, now=5.0)) == ["0 steal 3"]
    # 3 free pieces and 3 workers: a fair share would be 1, but these were sized for it
    assert fmt(t.released(0, [3, 4, 5], now=5.5)) == ["2 lease 3 4 5"]
    assert t.workers[2].steals == 3 and t.workers[2].steal_from == -1
    assert show(t) == "000222111v"
    check(t)


def test_a_steal_is_answered_by_its_victim_only() -> None:
    t = setup("0000000000111111", ALL, ALL, ALL)
    assert fmt(t.need(2, 16, now=5.0)) == ["0 steal 5"]
    assert fmt(t.released(1, [], now=5.1)) == []  # not the one asked: keep waiting
    assert t.workers[2].steal_from == 0
    assert fmt(t.released(0, [8, 9], now=5.2)) == ["2 lease 8 9"]
    assert t.workers[2].steals == 2


def test_a_steal_answered_with_nothing_ends_in_endgame() -> None:
    t = setup("000011", ALL, ALL, ALL)
    assert fmt(t.need(2, 4, now=1.0)) == ["0 steal 2"]
    # everything was started already: an endgame lease, empty (the pieces are young)
    assert fmt(t.released(0, [], now=1.5)) == ["2 endgame"]
    assert t.workers[2].steals == 0


# -- endgame ---------------------------------------------------------------------
def test_endgame_duplicates_only_pieces_older_than_endgame_min_age() -> None:
    # nothing free; every lease holds one piece, so there is nothing to steal
    t = setup("vv0123", ALL, ALL, ALL, ALL, leased_at=10.0)
    assert fmt(t.need(0, 8, now=10.0 + ENDGAME_MIN_AGE - 0.1)) == ["0 endgame"]
    assert fmt(t.need(0, 2, now=10.0 + ENDGAME_MIN_AGE)) == ["0 endgame 3 4"]  # as asked
    assert fmt(t.need(0, 2, now=10.0 + ENDGAME_MIN_AGE)) == ["0 endgame 5"]


def test_endgame_gives_each_piece_one_extra_holder_at_most() -> None:
    t = setup("vv0123", ALL, ALL, ALL, ALL)
    assert fmt(t.need(0, 8, now=9.0)) == ["0 endgame 3 4 5"]
    assert fmt(t.need(0, 8, now=9.0)) == ["0 endgame"]  # not twice to the same worker
    assert fmt(t.need(1, 8, now=9.0)) == ["1 endgame 2"]  # 3-5 have their extra holder
    assert fmt(t.need(2, 8, now=9.0)) == ["2 endgame"]
    assert t.endgame_dups == {2: {1}, 3: {0}, 4: {0}, 5: {0}}
    check(t)


def test_endgame_only_pieces_the_workers_peers_have() -> None:
    t = setup("0123", ALL, ALL, ALL, "  * ")
    assert fmt(t.need(3, 8, now=9.0)) == ["3 endgame 2"]


# -- verification ----------------------------------------------------------------
def test_verified_pieces_leave_every_lease_and_the_others_are_told() -> None:
    t = setup("0011..", ALL, ALL, ALL)
    new, sends = t.verified(0, [0, 1])
    assert new == [0, 1] and fmt(sends) == ["1 done 0 1", "2 done 0 1"]
    assert show(t) == "vv11.." and t.workers[0].leased == set()
    assert t.workers[0].pieces_first == 2 and t.workers[0].endgame_pieces == 0
    assert t.num_verified == 2
    check(t)


def test_an_endgame_copy_verified_first_counts_and_the_late_one_is_a_duplicate() -> None:
    t = setup("vv0123", ALL, ALL, ALL, ALL)
    assert fmt(t.need(0, 1, now=9.0)) == ["0 endgame 3"]
    new, sends = t.verified(0, [3])  # the copy won
    assert new == [3] and fmt(sends) == ["1 done 3", "2 done 3", "3 done 3"]
    assert t.workers[0].endgame_pieces == 1 and t.workers[0].pieces_first == 1
    assert t.workers[1].leased == set() and 3 not in t.endgame_dups
    new, sends = t.verified(1, [3])  # the original, too late
    assert new == [] and sends == [] and t.duplicates == 1
    assert t.workers[1].pieces_first == 0
    assert show(t) == "vv0v23"
    check(t)


def test_the_dead_are_not_told() -> None:
    t = setup("012", ALL, ALL, ALL)
    t.worker_died(2, now=1.0)
    assert fmt(t.verified(0, [0])[1]) == ["1 done 0"]


# -- worker death ----------------------------------------------------------------
def test_a_dead_workers_leases_are_free_again_and_serve_the_waiting() -> None:
    t = setup("0000.vv1", ALL, "   *", "   *")
    assert fmt(t.need(2, 4, now=5.0)) == []  # piece 4 is free, its peers lack it
    assert fmt(t.worker_died(0, now=6.0)) == ["2 lease 3"]
    assert show(t) == "...2.vv1" and t.workers[0].leased == set()
    check(t)


def test_a_steal_whose_victim_dies_is_served_from_the_freed_pieces() -> None:
    t = setup("0" * 16, ALL, ALL)
    assert fmt(t.need(1, 4, now=5.0)) == ["0 steal 8"]
    got = fmt(t.worker_died(0, now=5.1))  # before it answered
    assert got == ["1 lease 8 9 10 11"], "the thief must not wait for an answer that cannot come"
    assert t.workers[1].steal_from == -1 and t.workers[1].steals == 0
    assert show(t) == "........1111...."


def test_an_endgame_copy_lost_with_its_worker_may_be_made_again() -> None:
    t = setup("vv0123", ALL, ALL, ALL, ALL)
    assert fmt(t.need(1, 1, now=9.0)) == ["1 endgame 2"]
    assert fmt(t.need(2, 1, now=9.0)) == ["2 endgame 3"]  # 2 has its extra holder
    t.worker_died(1, now=9.5)  # piece 3 is free again, piece 2's copy is lost
    assert show(t) == "vv0.23"
    assert fmt(t.need(3, 1, now=9.5)) == ["3 lease 3"]
    assert fmt(t.need(3, 1, now=9.5)) == ["3 endgame 2"]
    check(t)


def test_a_dead_worker_gets_nothing() -> None:
    # its last request, read from its pipe after its death, during start-up
    t = setup("........", ALL, ALL, asked=False)
    t.worker_died(0, now=0.1, reclaim=False)
    assert t.need(0, 4, now=0.2) == [] and show(t) == "........"


def test_a_stopping_worker_is_only_marked_dead() -> None:
    t = setup("0011", ALL, ALL)
    assert t.worker_died(0, now=1.0, reclaim=False) == []
    assert not t.workers[0].alive and show(t) == "0011"


# -- invariants under any sequence of events -------------------------------------
_event = st.one_of(
    st.tuples(st.just("need"), st.integers(0, 3), st.integers(1, 6)),
    st.tuples(st.just("avail"), st.integers(0, 3), st.integers(0, 2**16 - 1)),
    st.tuples(st.just("release"), st.integers(0, 3), st.integers(0, 4)),
    st.tuples(st.just("verify"), st.integers(0, 3), st.integers(0, 11)),
    st.tuples(st.just("die"), st.integers(0, 3), st.just(0)),
    st.tuples(st.just("tick"), st.just(0), st.just(0)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_event, max_size=60))
def test_any_sequence_of_events_keeps_the_invariants(events: list[tuple[str, int, int]]) -> None:
    t = LeaseTable(12, 4)
    for w in range(4):
        t.set_peers(w, 1)
    now = 0.0
    for kind, w, arg in events:
        now += 0.5
        if kind == "need":
            out = t.need(w, arg, now)
        elif kind == "avail":
            out = t.availability(w, arg.to_bytes(2, "big"), now)
        elif kind == "release":
            give = sorted(t.workers[w].leased)[-arg:] if arg else []
            out = t.released(w, give, now)
        elif kind == "verify":
            out = t.verified(w, [arg])[1]
        elif kind == "die":
            out = t.worker_died(w, now) if t.workers[w].alive else []
        else:
            out = t.serve_waiting(now)
        for a in out:
            m = a.msg
            if isinstance(m, ipc.Lease) and not m.endgame:
                assert all(t.owner[p] == a.worker for p in m.pieces)
            if isinstance(m, ipc.Lease):
                assert all(t.workers[a.worker].has(p) for p in m.pieces)
                assert t.workers[a.worker].alive
        check(t)


# -- wanted pieces (a selection of files, a shard) ---------------------------------
def test_unwanted_pieces_are_never_leased() -> None:
    t = setup("xx..xx..", ALL, ALL)
    assert fmt(t.need(0, 8, now=5.0)) == ["0 lease 2 3"]
    # the fair share counts wanted pieces only: 1 of the 2 left
    assert fmt(t.need(1, 8, now=5.0)) == ["1 lease 6"]
    assert fmt(t.need(1, 8, now=5.0)) == ["1 lease 7"]
    assert show(t) == "xx00xx11"
    assert t.num_wanted == 4 and t.wanted_left == 4 and not t.complete


def test_a_download_is_complete_when_its_wanted_pieces_are_verified() -> None:
    t = setup("xx01xxxx", ALL, ALL)
    t.verified(0, [2])
    assert not t.complete and t.wanted_left == 1
    new, done = t.verified(1, [3])
    assert new == [3] and fmt(done) == ["0 done 3"]
    assert t.complete and t.num_verified == 2
    check(t)


def test_nothing_free_among_the_wanted_steals_then_goes_to_endgame_over_wanted_only() -> None:
    # worker 1 holds the three wanted pieces; unwanted free-looking ones are never offered
    t = setup("x111xxxx", ALL, ALL, leased_at=0.0)
    assert fmt(t.need(0, 4, now=5.0)) == ["1 steal 1"]
    t = setup("x1xxxxxx", ALL, ALL, leased_at=0.0)
    assert fmt(t.need(0, 4, now=5.0)) == ["0 endgame 1"]


def test_a_resumed_unwanted_piece_is_verified_and_does_not_count_toward_completion() -> None:
    t = LeaseTable(4, 1, wanted=b"\x01\x00\x00\x01")
    t.mark_have([1, 0])
    assert show(t) == "vvx."
    assert t.num_verified == 2 and t.wanted_left == 1 and not t.complete
    check(t)


def test_the_start_up_regions_divide_the_wanted_stretch() -> None:
    # a shard's pieces 8-15 of 16: worker 1's region starts at 12, not at 8
    t = setup("x" * 8 + "." * 8, ALL * 1, ALL, asked=False)
    assert [w.cursor for w in t.workers] == [8, 12]
    assert fmt(t.need(1, 2, now=0.1)) == ["1 lease 12 13"]
    # its fair share of the 6 wanted pieces left, from its own region [8, 12)
    assert fmt(t.need(0, 9, now=0.2)) == ["0 lease 8 9 10"]


def test_nothing_wanted_is_complete_from_the_start() -> None:
    t = LeaseTable(3, 2, wanted=bytes(3))
    assert t.complete and t.num_wanted == 0
    assert fmt(t.need(0, 4, now=5.0)) == ["0 endgame"]


# -- house rules -----------------------------------------------------------------
def test_leases_is_sans_io() -> None:
    tree = ast.parse(pathlib.Path(leases.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "socket", "multiprocessing", "subprocess", "time",
                           "threading", "os", "selectors"}, imported


def test_first_lease_is_the_start_of_each_region_whatever_the_peers_have() -> None:
    """Before any worker reported its peers: pieces from the start of its region,
    skipping verified and unwanted ones; the next lease goes on after them."""
    t = setup("v.x.............", "", "", asked=False)  # no availability anywhere
    assert t.first_lease(0, 3, 0.0) == [1, 3, 4]
    assert t.first_lease(1, 3, 0.0) == [8, 9, 10]
    check(t)
    assert all(t.owner[i] == 0 for i in (1, 3, 4)) and t.workers[1].leased == {8, 9, 10}
    # once its peers have pieces, worker 0 is leased after its first lease
    t.workers[0].avail = bytearray(b"\xff\xff")
    (send,) = t.need(0, 2, 0.0)
    assert send == Send(0, ipc.Lease((5, 6)))
