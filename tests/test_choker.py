"""Choking and rate limiting (torrent/choker.py), on an injected clock.

- :class:`TokenBucket`: starts full, debt of one block, refill capped at the
  burst, a clock stepping back, the long-run rate, bad rates refused.
- :class:`Throttle`: one delay per stall (one timer), the resume time exact,
  a minimum wait, the burst bound over time for uploads (whole blocks) and
  downloads (reads of any size), a rate below one block still moving, and
  the rotation that serves the peers in turn after a pause.
- :class:`Choker`: unchoke on interest while a slot is free, a slot freed by
  lost interest or a departure, rounds keeping the best by rate plus one
  optimistic unchoke that moves every third round to each peer in turn.
"""

from __future__ import annotations

import ast
import random
import re
from pathlib import Path

import pytest

import torrent.choker
from torrent.choker import (
    BURST,
    CHOKE_INTERVAL,
    DOWNLOAD_MIN_WAIT,
    OPTIMISTIC_ROUNDS,
    UPLOAD_MIN_WAIT,
    UPLOAD_SLOTS,
    Choker,
    Throttle,
    TokenBucket,
)
from torrent.picker import BLOCK_SIZE

T0 = 1000.0
#: Largest read the download simulation makes (the size of a receive buffer).
MAX_READ = 256 << 10
#: The bucket counts as ready up to this many bytes short (rounding): part of every bound.
SLACK = TokenBucket.SLACK


# -- the token bucket ---------------------------------------------------------------------


def test_bucket_starts_full_and_goes_into_debt_by_one_block() -> None:
    now = T0
    b = TokenBucket(1000, 500, now)
    assert b.ready(now) and b.wait(now) == 0.0
    b.consume(400, now)
    assert b.ready(now)  # 100 left
    b.consume(BLOCK_SIZE, now)  # a whole block goes out: debt
    assert not b.ready(now)
    debt = BLOCK_SIZE - 100
    assert b.wait(now) == pytest.approx(debt / 1000)
    now += debt / 1000 / 2
    assert not b.ready(now)
    assert b.wait(now) == pytest.approx(debt / 1000 / 2)
    now += debt / 1000 / 2
    assert b.ready(now)


def test_bucket_refill_is_capped_at_the_burst() -> None:
    now = T0
    b = TokenBucket(1000, 500, now)
    b.consume(500, now)
    now += 3600  # an hour idle saves up no more than the burst
    b.consume(500, now)
    assert b.ready(now)
    b.consume(1, now)
    assert not b.ready(now)
    assert b.wait(now) == pytest.approx(0.001)


def test_bucket_ignores_a_clock_that_steps_back() -> None:
    now = T0
    b = TokenBucket(1000, 0, now)
    b.consume(1000, now)
    now -= 5
    assert b.wait(now) == pytest.approx(1.0)
    now += 5 + 1.0
    assert b.ready(now)


@pytest.mark.parametrize("rate", [1000, 100_000, 10 << 20])
def test_bucket_long_run_rate(rate: int) -> None:
    """A sender that sends a block whenever allowed and otherwise sleeps exactly wait():
    over T seconds it sends rate x T, give or take the burst and one block."""
    now = start = T0
    burst = rate * BURST
    b = TokenBucket(rate, burst, now)
    seconds = 50.0
    sent = wakeups = 0
    while now - start < seconds:
        if b.ready(now):
            b.consume(BLOCK_SIZE, now)
            sent += BLOCK_SIZE
        else:
            w = b.wait(now)
            assert w > 0  # never "not ready, wait 0": that would be a spin
            now += w
            wakeups += 1
    elapsed = now - start
    assert sent <= burst + rate * elapsed + BLOCK_SIZE
    assert sent >= rate * elapsed - BLOCK_SIZE
    assert wakeups <= sent // BLOCK_SIZE + 1  # at most one wake-up per block sent


@pytest.mark.parametrize(("rate", "burst"), [(0, 10), (float("nan"), 10), (-1, 10),
                                             (float("inf"), 10), (10, -1), (10, float("nan"))])
def test_bucket_rejects_a_bad_rate_or_burst(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, T0)


# -- the throttle ---------------------------------------------------------------------------


def test_one_delay_per_stall_and_the_resume_time_is_exact() -> None:
    """64 KiB/s: the 16 KiB burst and 48 KiB of debt stall it for exactly 0.75 s; a timer
    that fires early is told to wait the rest; afterwards a new stall gives a new delay."""
    now = T0
    th = Throttle(64 << 10, now=now)
    assert th.consume(16 << 10, now, "a") is None  # the burst: still ready (0 left)
    assert not th.paused and not th.blocked(now)
    delay = th.consume(48 << 10, now, "a")
    assert delay == pytest.approx(0.75)
    assert th.paused and th.blocked(now)
    for _ in range(100):  # more bytes while paused (a read already under way): no new timer
        assert th.consume(1, now) is None
    assert th.resume_in(now) == pytest.approx(0.75 + 100 / (64 << 10))
    early = now + 0.5
    again = th.resume(early)
    assert again == pytest.approx(0.25 + 100 / (64 << 10))
    assert th.paused  # still paused: the adapter re-arms
    assert again is not None
    assert th.resume(early + again) is None
    assert not th.paused and not th.blocked(early + again)
    assert th.resume_in(early + again) == 0.0
    assert th.consume(1 << 20, early + again) == pytest.approx(16.0)  # the next stall


def test_short_debt_waits_at_least_the_minimum() -> None:
    """A bucket a few bytes short must not arm a timer per block; the download side
    pauses at least its longer minimum (a system call per connection each time)."""
    up = Throttle(1_000_000, now=T0, burst_seconds=0)
    assert up.consume(2, T0) == UPLOAD_MIN_WAIT  # 2 us of debt
    down = Throttle(1_000_000, now=T0, burst_seconds=0, min_wait=DOWNLOAD_MIN_WAIT)
    assert down.consume(2, T0) == DOWNLOAD_MIN_WAIT
    assert down.resume(T0 + DOWNLOAD_MIN_WAIT) is None
    assert UPLOAD_MIN_WAIT < DOWNLOAD_MIN_WAIT < BURST  # no refill lost to the cap


@pytest.mark.parametrize("bad", [{"burst_seconds": -1.0}, {"min_wait": float("nan")},
                                 {"min_wait": -0.1}, {"burst_seconds": float("inf")}])
def test_throttle_rejects_bad_settings(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Throttle(1000, now=T0, **bad)
    with pytest.raises(ValueError):
        Throttle(0, now=T0)


def simulate(th: Throttle, now: float, seconds: float,
             size: random.Random | int) -> tuple[int, float, int]:
    """A sender as fast as the throttle lets it: it moves ``size`` bytes (or a random
    size up to MAX_READ) at a time while running, and sleeps exactly the delay it is
    given.  Returns (bytes moved, seconds elapsed, stalls)."""
    start = now
    moved = stalls = 0
    while now - start < seconds:
        n = size if isinstance(size, int) else size.randint(1, MAX_READ)
        assert not th.paused
        moved += n
        delay = th.consume(n, now)
        if delay is None:
            continue
        stalls += 1
        assert delay >= th.min_wait > 0  # never a spin
        while delay is not None:  # the timer; it fires on time, so at most once
            now += delay
            delay = th.resume(now)
    return moved, now - start, stalls


@pytest.mark.parametrize("rate", [1000, 100_000, 10 << 20])
def test_upload_burst_bound_over_time(rate: int) -> None:
    """Whole blocks: over t seconds no more than burst + rate x t + one block, no less
    than rate x t - one block; at most one stall (one timer) per block."""
    th = Throttle(rate, now=T0)
    moved, elapsed, stalls = simulate(th, T0, 50.0, BLOCK_SIZE)
    assert moved <= rate * BURST + rate * elapsed + BLOCK_SIZE + SLACK
    assert moved >= rate * elapsed - BLOCK_SIZE
    assert stalls <= moved // BLOCK_SIZE


@pytest.mark.parametrize("rate", [50_000, 1 << 20, 100 << 20])
def test_download_burst_bound_over_time(rate: int) -> None:
    """Reads of any size: no more than burst + rate x t + one read; the minimum pause
    loses nothing to the cap, so the long-run rate is the limit."""
    th = Throttle(rate, now=T0, min_wait=DOWNLOAD_MIN_WAIT)
    moved, elapsed, stalls = simulate(th, T0, 30.0, random.Random(rate))
    assert moved <= rate * BURST + rate * elapsed + MAX_READ + SLACK
    assert moved >= rate * elapsed * (1 - 1e-9)
    assert stalls <= elapsed / DOWNLOAD_MIN_WAIT + 1  # pauses at least DOWNLOAD_MIN_WAIT apart


def test_a_rate_below_one_block_still_moves() -> None:
    """100 bytes/s with 16 KiB blocks: a block goes out every ~164 s, not never."""
    rate = 100
    th = Throttle(rate, now=T0)
    moved, elapsed, stalls = simulate(th, T0, 1000.0, BLOCK_SIZE)
    assert moved >= 6 * BLOCK_SIZE
    assert stalls == moved // BLOCK_SIZE  # every block stalls it
    assert moved <= rate * BURST + rate * elapsed + BLOCK_SIZE + SLACK


def test_rotate_starts_one_further_each_round() -> None:
    th = Throttle(1000, now=T0)
    assert th.rotate(["a", "b", "c"]) == ["a", "b", "c"]
    assert th.rotate(["a", "b", "c"]) == ["b", "c", "a"]
    assert th.rotate(["a", "b", "c"]) == ["c", "a", "b"]
    assert th.rotate([]) == []


def test_rotate_starts_after_the_peer_served_when_it_paused() -> None:
    th = Throttle(1000, now=T0, burst_seconds=0)
    assert th.rotate(["a", "b", "c", "d"]) == ["a", "b", "c", "d"]
    assert th.consume(10, T0, "a") is not None  # a block to a stalled it
    assert th.rotate(["a", "b", "c", "d"]) == ["b", "c", "d", "a"]
    assert th.resume(T0 + 1) is None
    assert th.consume(10, T0 + 1, "c") is not None
    assert th.rotate(["a", "b", "c", "d"]) == ["d", "a", "b", "c"]
    # the peer it paused on is gone: the turn counter picks the start
    assert th.resume(T0 + 2) is None
    assert th.consume(10, T0 + 2, "d") is not None
    assert th.rotate(["a", "b", "c"]) == ["a", "b", "c"]  # 4th round: turn 3 % 3


def test_upload_serves_every_peer_in_turn() -> None:
    """The worker's upload path in miniature: serve a peer while the throttle runs, one
    timer at a time, and on resume serve the peers in rotate() order.  Three peers that
    always want more get the same number of blocks, give or take one."""
    rate = 10 * BLOCK_SIZE
    now = T0
    th = Throttle(rate, now=now)
    peers = ["a", "b", "c"]
    got = dict.fromkeys(peers, 0)
    timer: float | None = None

    def serve(p: str) -> None:
        nonlocal timer
        while not th.paused:
            got[p] += 1
            delay = th.consume(BLOCK_SIZE, now, p)
            if delay is not None:
                assert timer is None  # one timer, never two
                timer = now + delay

    for p in peers:  # each peer asks at once: the first takes the burst
        serve(p)
    assert got == {"a": 3, "b": 0, "c": 0}  # 2.5 blocks of burst, then one block of debt
    got = dict.fromkeys(peers, 0)
    rounds = 0
    while now < T0 + 60:
        assert timer is not None  # paused, so a timer is armed
        now, timer = timer, None
        again = th.resume(now)
        assert again is None
        for p in th.rotate(peers):
            serve(p)
            if th.paused:
                break
        rounds += 1
    assert max(got.values()) - min(got.values()) <= 1
    total = (3 + sum(got.values())) * BLOCK_SIZE
    assert total <= rate * BURST + rate * (now - T0) + BLOCK_SIZE + SLACK
    assert rounds >= 500  # ~10 blocks a second for 60 s, one per round


# -- the choker -----------------------------------------------------------------------------


def cands(spec: str) -> list[tuple[str, float]]:
    """'a9 b5 c0' -> [('a', 9.0), ('b', 5.0), ('c', 0.0)]: peer names and rates."""
    return [(m[1], float(m[2])) for m in re.finditer(r"([a-z]+)(\d+)", spec)]


def test_interested_unchokes_while_a_slot_is_free() -> None:
    ch: Choker[str] = Choker(now=T0, slots=2)
    assert ch.interested("a")
    assert not ch.interested("a")  # already unchoked
    assert ch.interested("b")
    assert not ch.interested("c")  # full: c waits for the round
    assert set(ch.unchoked) == {"a", "b"}


def test_not_interested_and_gone_free_a_slot() -> None:
    ch: Choker[str] = Choker(now=T0, slots=2)
    assert ch.interested("a") and ch.interested("b")
    assert not ch.not_interested("c")  # not unchoked: nothing to send
    assert ch.not_interested("a")  # choke it: its slot is free
    assert "a" not in ch.unchoked
    assert ch.interested("c")
    ch.gone("b")
    assert set(ch.unchoked) == {"c"}
    assert ch.interested("d")
    assert not ch.interested("e")


def test_rounds_are_due_every_interval() -> None:
    ch: Choker[str] = Choker(now=T0)
    assert not ch.due(T0) and not ch.due(T0 + CHOKE_INTERVAL - 0.01)
    assert ch.due(T0 + CHOKE_INTERVAL)
    ch.round(T0 + CHOKE_INTERVAL + 0.3, [])
    assert ch.next_round == T0 + 2 * CHOKE_INTERVAL + 0.3
    assert not ch.due(T0 + 2 * CHOKE_INTERVAL)
    assert ch.rounds == 1


def test_round_keeps_the_best_by_rate_plus_one_optimistic() -> None:
    ch: Choker[str] = Choker(now=T0, slots=3)
    choke, unchoke = ch.round(T0, cands("a1 b9 c5 d3 e7"))
    assert choke == []
    assert unchoke == ["b", "e", "c"]  # best first; c (fastest of the rest) optimistic
    assert ch.optimistic == "c"
    assert set(ch.unchoked) == {"b", "e", "c"}
    choke, unchoke = ch.round(T0 + 10, cands("a8 b9 c5 d3 e7"))  # a overtakes e
    assert (choke, unchoke) == (["e"], ["a"])  # c stays the optimistic unchoke


def test_round_chokes_peers_unchoked_on_interest_and_unchokes_the_waiting() -> None:
    ch: Choker[str] = Choker(now=T0, slots=2)
    assert ch.interested("slow") and ch.interested("idle")
    assert not ch.interested("fast")  # waits for the round
    choke, unchoke = ch.round(T0 + 10, cands("slow1 fast9 idle0"))
    # best 1 (fast) + optimistic: the one of the rest waiting longest, ties in rank order
    assert unchoke == ["fast"] and ch.optimistic == "slow"
    assert choke == ["idle"]
    assert list(ch.unchoked) == ["fast", "slow"]


def test_round_chokes_a_peer_that_is_no_longer_a_candidate() -> None:
    ch: Choker[str] = Choker(now=T0, slots=4)
    ch.round(T0, cands("a3 b2 c1"))
    assert set(ch.unchoked) == {"a", "b", "c"}
    choke, unchoke = ch.round(T0 + 10, cands("a3 c1"))  # b disconnected or lost interest
    assert (choke, unchoke) == (["b"], [])


def test_ties_keep_the_candidates_order() -> None:
    ch: Choker[str] = Choker(now=T0, slots=3)
    _, unchoke = ch.round(T0, cands("d0 a0 c0 b0"))
    assert unchoke == ["d", "a", "c"]


def test_optimistic_moves_every_third_round_to_each_peer_in_turn() -> None:
    """One slot for the best (a), one optimistic among b, c, d: each holds it for three
    rounds, in turn; a cycling index would have picked the same one every time."""
    ch: Choker[str] = Choker(now=T0, slots=2)
    assert OPTIMISTIC_ROUNDS == 3
    seen = []
    moves = []
    for r in range(1, 13):
        choke, unchoke = ch.round(T0 + 10 * r, cands("a9 b1 c1 d1"))
        seen.append(ch.optimistic)
        moves.append((choke, unchoke))
    assert "".join(str(o) for o in seen) == "bbcccdddbbbc"
    assert moves[0] == ([], ["a", "b"])
    assert moves[1] == ([], [])
    assert moves[2] == (["b"], ["c"])  # round 3: the optimistic unchoke moves
    assert moves[5] == (["c"], ["d"])
    assert moves[8] == (["d"], ["b"])


def test_a_newcomer_is_optimistic_before_a_peer_that_had_its_turn() -> None:
    ch: Choker[str] = Choker(now=T0, slots=2)
    for r in range(1, 4):
        ch.round(T0 + r, cands("a9 b1 c1"))
    assert ch.optimistic == "c"  # b had rounds 1-2
    for r in range(4, 7):
        ch.round(T0 + r, cands("a9 b1 c1 n0"))
    assert ch.optimistic == "n"  # round 6: never had a turn, so before b


def test_optimistic_is_replaced_when_it_joins_the_best_or_leaves() -> None:
    ch: Choker[str] = Choker(now=T0, slots=2)
    ch.round(T0, cands("a9 b1 c1"))
    assert ch.optimistic == "b"
    ch.round(T0 + 10, cands("b99 a9 c1"))  # b is now the best: another optimistic
    assert ch.optimistic == "a" and set(ch.unchoked) == {"b", "a"}
    ch.gone("a")
    assert ch.optimistic is None and set(ch.unchoked) == {"b"}
    choke, unchoke = ch.round(T0 + 20, cands("b99 c1"))
    assert ch.optimistic == "c" and (choke, unchoke) == ([], ["c"])


def test_one_slot_is_only_the_optimistic_unchoke() -> None:
    ch: Choker[str] = Choker(now=T0, slots=1)
    assert ch.round(T0, cands("a9 b1")) == ([], ["a"])
    assert ch.optimistic == "a"
    assert ch.round(T0 + 10, []) == (["a"], [])
    assert ch.optimistic is None and not ch.unchoked


def test_unchoked_is_a_live_view() -> None:
    ch: Choker[str] = Choker(now=T0, slots=3)
    view = ch.unchoked
    ch.round(T0, cands("a1 b2"))
    assert set(view) == {"a", "b"} and len(view) == 2
    ch.not_interested("a")
    assert "a" not in view


def test_defaults() -> None:
    ch: Choker[str] = Choker(now=T0)
    assert (ch.slots, ch.interval, ch.optimistic_rounds) == (UPLOAD_SLOTS, CHOKE_INTERVAL,
                                                             OPTIMISTIC_ROUNDS)
    _, unchoke = ch.round(T0, [(f"p{i}", float(i)) for i in range(20)])
    assert len(unchoke) == UPLOAD_SLOTS
    assert unchoke[: UPLOAD_SLOTS - 1] == [f"p{i}" for i in range(19, 19 - UPLOAD_SLOTS + 1, -1)]


@pytest.mark.parametrize("bad", [{"slots": 0}, {"optimistic_rounds": 0}, {"interval": 0.0},
                                 {"interval": float("nan")}])
def test_choker_rejects_bad_settings(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Choker(now=T0, **bad)


def test_choker_module_is_sans_io() -> None:
    """No loop, socket, process or clock: time comes in as ``now``."""
    tree = ast.parse(Path(torrent.choker.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported.isdisjoint({"asyncio", "socket", "time", "multiprocessing", "subprocess",
                                "uvloop", "selectors", "threading"}), imported
    exported = set(torrent.choker.__all__)
    assert all(hasattr(torrent.choker, n) for n in exported)
    defined = {n for n, v in vars(torrent.choker).items()
               if isinstance(v, type) and v.__module__ == "torrent.choker"}
    assert defined <= exported
