"""Tracker clients against real test trackers on 127.0.0.1, and the BEP 12
schedule (TrackerSet) and its runner with an injected clock."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from trackers import HTTPTestTracker, UDPTestTracker

from torrent.errors import TrackerError
from torrent.tracker.client import (
    TrackerRunner,
    announce,
    announce_http,
    announce_udp,
    make_announce_fn,
)
from torrent.tracker.common import AnnounceParams, AnnounceResult
from torrent.tracker.multitracker import Announce, TrackerSet

IH = bytes(range(100, 120))
PID = b"-FT0001-" + b"A" * 12
PID2 = b"-FT0001-" + b"B" * 12
PEERS = [("10.0.0.1", 6881), ("10.0.0.2", 6882)]
# Injected UDP retry schedules, seconds. Happy paths use NORMAL, which never
# expires on a working loopback tracker (so counts stay exact even on a loaded
# machine) and costs nothing since nobody waits for a timeout.
FAST = (0.05, 0.05, 0.05, 0.05, 0.05)
NORMAL = (5.0, 5.0)


def params(**kw: Any) -> AnnounceParams:
    base: dict[str, Any] = {
        "info_hash": IH,
        "peer_id": PID,
        "port": 6881,
        "left": 1000,
        "event": "started",
        "key": 0xABCD,
    }
    base.update(kw)
    return AnnounceParams(**base)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))  # type: ignore[arg-type]


def closed_port(kind: int) -> int:
    """A loopback port nobody listens on (just released by us)."""
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


@pytest.fixture
def http_tracker() -> Iterator[HTTPTestTracker]:
    with HTTPTestTracker(peers=PEERS, interval=900) as t:
        yield t


@pytest.fixture
def udp_tracker() -> Iterator[UDPTestTracker]:
    with UDPTestTracker(peers=PEERS, interval=900) as t:
        yield t


# --------------------------------------------------------------------------- HTTP


@pytest.mark.parametrize("framing", ["content-length", "chunked", "close-delimited"])
def test_http_compact(http_tracker: HTTPTestTracker, framing: str) -> None:
    http_tracker.chunked = framing == "chunked"
    http_tracker.close_delimited = framing == "close-delimited"
    r = run(announce_http(http_tracker.announce_url, params(), timeout=5))
    assert r.peers == tuple(PEERS) and r.interval == 900
    (req,) = http_tracker.requests
    assert (req.info_hash, req.peer_id, req.port, req.left, req.event) == (
        IH,
        PID,
        6881,
        1000,
        "started",
    )
    assert req.compact == 1 and req.key == 0xABCD and req.path == "/announce"


def test_http_dict_peers_and_extras(http_tracker: HTTPTestTracker) -> None:
    http_tracker.compact = False
    http_tracker.peers6 = [("2001:db8::1", 6881)]
    http_tracker.min_interval = 60
    http_tracker.warning = "slow down"
    http_tracker.tracker_id = b"T1"
    r = run(announce_http(http_tracker.announce_url, params(event=None), timeout=5))
    assert r.peers == (*PEERS, ("2001:db8::1", 6881))
    assert (r.min_interval, r.warning, r.tracker_id) == (60, "slow down", b"T1")
    r2 = run(announce_http(http_tracker.announce_url, params(tracker_id=b"T1"), timeout=5))
    assert r2.peers == r.peers
    assert http_tracker.requests[0].event is None
    assert http_tracker.requests[1].trackerid == b"T1"


def test_http_keeps_passkey_query(http_tracker: HTTPTestTracker) -> None:
    run(announce_http(http_tracker.announce_url + "?passkey=s3cr%2Ft", params(), timeout=5))
    (req,) = http_tracker.requests
    assert req.query["passkey"] == b"s3cr/t" and req.info_hash == IH


def test_http_swarm_second_peer_sees_first() -> None:
    with HTTPTestTracker() as t:
        first = run(announce_http(t.announce_url, params(port=7001), timeout=5))
        second = run(announce_http(t.announce_url, params(peer_id=PID2, port=7002), timeout=5))
    assert first.peers == ()
    assert second.peers == (("127.0.0.1", 7001),)


def test_http_failure_reason(http_tracker: HTTPTestTracker) -> None:
    http_tracker.failure_reason = "unregistered torrent"
    with pytest.raises(TrackerError, match="unregistered torrent"):
        run(announce_http(http_tracker.announce_url, params(), timeout=5))


def test_http_garbage(http_tracker: HTTPTestTracker) -> None:
    http_tracker.garbage = b"<html>nginx</html>"
    with pytest.raises(TrackerError, match="not bencoded"):
        run(announce_http(http_tracker.announce_url, params(), timeout=5))


def test_http_hang_times_out(http_tracker: HTTPTestTracker) -> None:
    http_tracker.hang = True
    with pytest.raises(TrackerError, match=r"no answer .* within 0\.2s"):
        run(announce_http(http_tracker.announce_url, params(), timeout=0.2))
    assert len(http_tracker.requests) == 1  # it did get the request


def test_http_dropped_connection(http_tracker: HTTPTestTracker) -> None:
    http_tracker.drop = True
    with pytest.raises(TrackerError, match="closed the connection"):
        run(announce_http(http_tracker.announce_url, params(), timeout=5))


@pytest.mark.parametrize(
    ("status", "match"), [(404, "HTTP 404 Not Found"), (302, "redirects to 'http://x/'")]
)
def test_http_error_status_and_redirect(
    http_tracker: HTTPTestTracker, status: int, match: str
) -> None:
    http_tracker.status = status
    http_tracker.location = "http://x/" if status == 302 else ""
    with pytest.raises(TrackerError, match=match):
        run(announce_http(http_tracker.announce_url, params(), timeout=5))


def test_http_error_status_carries_failure_reason(http_tracker: HTTPTestTracker) -> None:
    http_tracker.status = 500
    http_tracker.failure_reason = "overloaded"
    with pytest.raises(TrackerError, match=r"HTTP 500.*overloaded"):
        run(announce_http(http_tracker.announce_url, params(), timeout=5))


def test_http_connection_refused() -> None:
    port = closed_port(socket.SOCK_STREAM)
    with pytest.raises(TrackerError, match="cannot reach"):
        run(announce_http(f"http://127.0.0.1:{port}/announce", params(), timeout=5))


# --------------------------------------------------------------------------- UDP


def test_udp_announce(udp_tracker: UDPTestTracker) -> None:
    r = run(announce_udp(udp_tracker.announce_url, params(), timeout_schedule=NORMAL))
    assert r.peers == tuple(PEERS) and r.interval == 900
    (req,) = udp_tracker.requests
    assert (req.info_hash, req.peer_id, req.port, req.left, req.event, req.key) == (
        IH,
        PID,
        6881,
        1000,
        "started",
        0xABCD,
    )
    assert req.path == "/announce"  # BEP 41 URL data
    assert udp_tracker.connects == 1


def test_udp_retries_after_dropped_packets(udp_tracker: UDPTestTracker) -> None:
    udp_tracker.drop_first = 3  # connect, its retry, and one more
    # Three short timeouts to lose the dropped copies, then long ones so no
    # spurious retransmission can change the count.
    sched = (0.05, 0.05, 0.05, 5.0, 5.0)
    r = run(announce_udp(udp_tracker.announce_url, params(), timeout_schedule=sched))
    assert r.peers == tuple(PEERS)
    assert udp_tracker.dropped == 3
    assert udp_tracker.datagrams == 5  # 3 dropped connects, 1 connect, 1 announce


def test_udp_gives_up_after_schedule(udp_tracker: UDPTestTracker) -> None:
    udp_tracker.drop_first = 100
    with pytest.raises(TrackerError, match="after 3 tries"):
        run(announce_udp(udp_tracker.announce_url, params(), timeout_schedule=(0.05,) * 3))
    udp_tracker.wait_until(lambda: udp_tracker.datagrams >= 3)
    assert udp_tracker.datagrams == 3 and udp_tracker.connects == 0


def test_udp_wrong_transaction_id_ignored(udp_tracker: UDPTestTracker) -> None:
    udp_tracker.wrong_tid_decoy = True
    r = run(announce_udp(udp_tracker.announce_url, params(), timeout_schedule=NORMAL))
    assert r.peers == tuple(PEERS)
    assert ("6.6.6.6", 6666) not in r.peers


def test_udp_only_wrong_transaction_ids_time_out(udp_tracker: UDPTestTracker) -> None:
    udp_tracker.wrong_tid_always = True
    with pytest.raises(TrackerError, match="no answer"):
        run(announce_udp(udp_tracker.announce_url, params(), timeout_schedule=(0.05, 0.05)))
    assert udp_tracker.requests == []  # never got past connect


@pytest.mark.parametrize("mode", ["hang", "garbage"])
def test_udp_dead_or_lying(udp_tracker: UDPTestTracker, mode: str) -> None:
    setattr(udp_tracker, mode, True if mode == "hang" else b"\x00\x01junk")
    with pytest.raises(TrackerError, match="no answer"):
        run(announce_udp(udp_tracker.announce_url, params(), timeout_schedule=(0.05, 0.05)))


def test_udp_failure_reason(udp_tracker: UDPTestTracker) -> None:
    udp_tracker.failure_reason = "torrent not allowed"
    with pytest.raises(TrackerError, match="torrent not allowed"):
        run(announce_udp(udp_tracker.announce_url, params(), timeout_schedule=NORMAL))


def test_udp_port_unreachable_fails_fast() -> None:
    port = closed_port(socket.SOCK_DGRAM)
    # A 30 s schedule: only the ICMP error can end this within wait_for's 10 s.
    coro = announce_udp(f"udp://127.0.0.1:{port}", params(), timeout_schedule=(30.0,))
    with pytest.raises(TrackerError, match="cannot reach"):
        asyncio.run(asyncio.wait_for(coro, 10))


def test_udp_connection_id_reused_within_a_minute(udp_tracker: UDPTestTracker) -> None:
    conns: dict[str, tuple[int, float]] = {}

    async def twice() -> None:
        for _ in range(2):
            await announce_udp(
                udp_tracker.announce_url, params(), timeout_schedule=NORMAL, connections=conns
            )

    run(twice())
    assert len(udp_tracker.requests) == 2 and udp_tracker.connects == 1


def test_udp_swarm_and_dispatch_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def both(u: str, h: str) -> tuple[AnnounceResult, AnnounceResult, AnnounceResult]:
        a = await announce(u, params(port=7001), udp_schedule=NORMAL)
        b = await announce(u, params(peer_id=PID2, port=7002), udp_schedule=NORMAL)
        c = await announce(h, params(), http_timeout=5)
        return a, b, c

    with (
        UDPTestTracker() as ut,
        HTTPTestTracker(peers=PEERS) as ht,
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        a, b, c = runner.run(both(ut.announce_url, ht.announce_url))
    assert a.peers == () and b.peers == (("127.0.0.1", 7001),)
    assert c.peers == tuple(PEERS)


def test_unsupported_scheme() -> None:
    with pytest.raises(TrackerError, match="unsupported"):
        run(announce("wss://tracker.example/announce", params()))


# --------------------------------------------------------------------------- TrackerSet (sans-IO)


class NoShuffle(random.Random):
    def shuffle(self, x: Any, *args: Any) -> None:
        pass


def ok(interval: int = 600, **kw: Any) -> AnnounceResult:
    return AnnounceResult(peers=(("10.0.0.1", 1),), interval=interval, **kw)


def test_tiers_are_shuffled_once_with_the_injected_rng() -> None:
    tiers = [["http://a/1", "http://a/2", "http://a/3", "http://a/4"], ["udp://b:1"]]
    ts = TrackerSet(tiers, rng=random.Random(7))
    expected = list(tiers[0])
    random.Random(7).shuffle(expected)
    assert ts.tiers == (tuple(expected), ("udp://b:1",))
    assert ts.tiers == TrackerSet(tiers, rng=random.Random(7)).tiers


def test_bad_urls_are_skipped_and_empty_sets_refused() -> None:
    ts = TrackerSet([["wss://x/a", "http://a/1", "http://a/1"], [], ["dht://z"]], rng=NoShuffle())
    assert ts.tiers == (("http://a/1",),)
    assert [u for u, _ in ts.skipped] == ["wss://x/a", "dht://z"]
    with pytest.raises(ValueError):
        TrackerSet([["wss://x"]])
    assert TrackerSet.from_metainfo("http://a/", None).tiers == (("http://a/",),)
    assert TrackerSet.from_metainfo("http://a/", [["udp://b:1"]]).tiers == (("udp://b:1",),)


def test_fallback_within_tier_then_next_tier_and_move_to_front() -> None:
    ts = TrackerSet([["http://a/1", "http://a/2"], ["http://b/1", "http://b/2"]], rng=NoShuffle())
    now = 100.0
    order = []
    for _ in range(3):
        (a,) = ts.due(now)
        order.append(a.url)
        assert ts.due(now) == []  # one in flight at a time
        ts.on_failure(a, TrackerError("down"), now)
    (a,) = ts.due(now)
    order.append(a.url)
    assert order == ["http://a/1", "http://a/2", "http://b/1", "http://b/2"]
    ts.on_success(a, ok(), now)
    assert ts.tiers == (("http://a/1", "http://a/2"), ("http://b/2", "http://b/1"))
    assert ts.due(now + 599) == [] and ts.next_announce_at(now) == now + 600
    # Next round: tier 1 is out of backoff (15 s) and is asked first again.
    (a,) = ts.due(now + 600)
    assert a.url == "http://a/1"
    ts.on_success(a, ok(), now + 600)
    (a,) = ts.due(now + 1200)
    assert a.url == "http://a/1"


def test_success_moves_tracker_to_front_of_its_tier() -> None:
    ts = TrackerSet([["http://a/1", "http://a/2", "http://a/3"]], rng=NoShuffle())
    (a,) = ts.due(0)
    ts.on_failure(a, "x", 0)
    (a,) = ts.due(0)
    ts.on_success(a, ok(), 0)
    assert ts.tiers == (("http://a/2", "http://a/1", "http://a/3"),)


def test_backoff_is_exponential_and_capped() -> None:
    ts = TrackerSet([["http://a/1"]], rng=NoShuffle(), backoff_base=15, backoff_cap=100)
    now, delays = 0.0, []
    for _ in range(5):
        (a,) = ts.due(now)
        ts.on_failure(a, TrackerError("down"), now)
        nxt = ts.next_announce_at(now)
        assert nxt is not None and ts.due(nxt - 0.001) == []
        delays.append(nxt - now)
        now = nxt
    assert delays == [15, 30, 60, 100, 100]
    (a,) = ts.due(now)
    ts.on_success(a, ok(), now)
    assert ts.state("http://a/1").failures == 0


@pytest.mark.parametrize(("interval", "expected"), [(0, 30), (600, 600), (2**31 - 1, 4 * 3600)])
def test_interval_is_clamped(interval: int, expected: int) -> None:
    ts = TrackerSet([["http://a/1"]])
    (a,) = ts.due(0)
    ts.on_success(a, ok(interval), 0)
    assert ts.next_announce_at(0) == expected


def test_events_started_completed_stopped() -> None:
    ts = TrackerSet([["http://a/1"], ["http://b/1"]], rng=NoShuffle())
    (a,) = ts.due(0)
    assert a.event == "started"
    ts.on_failure(a, "down", 0)
    (b,) = ts.due(0)
    assert (b.url, b.event) == ("http://b/1", "started")
    ts.on_success(b, ok(1800, min_interval=120, tracker_id=b"tid"), 0)
    ts.set_completed(10)  # before min interval: brought forward to 0 + 120
    assert ts.next_announce_at(10) == 120
    (a,) = ts.due(120)
    assert (a.url, a.event) == ("http://a/1", "started")  # a never saw "started"
    ts.on_success(a, ok(1800), 120)
    ts.set_completed(130)
    (a,) = ts.due(160)
    assert a.event == "completed"
    ts.on_success(a, ok(1800), 160)
    (a,) = ts.due(160 + 1800)
    assert a.event is None  # completed is sent once
    ts.on_success(a, ok(), 2000)
    assert {(s.url, s.event, s.tracker_id) for s in ts.stopping()} == {
        ("http://a/1", "stopped", None),
        ("http://b/1", "stopped", b"tid"),
    }


def test_warnings_and_misuse() -> None:
    ts = TrackerSet([["http://a/1"]])
    (a,) = ts.due(0)
    assert "http://a/1" in ts.on_failure(a, TrackerError("boom"), 0)
    assert "boom" in (ts.state("http://a/1").last_error or "")
    with pytest.raises(RuntimeError):
        ts.on_success(a, ok(), 0)  # not in flight any more
    (a,) = ts.due(100)
    assert ts.on_success(a, ok(warning="quota"), 100) == "tracker http://a/1 warns: quota"


# --------------------------------------------------------------------------- runner


class FakeClock:
    """Injected clock; ``sleep`` advances it instead of waiting."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, delay: float) -> None:
        self.slept.append(delay)
        self.t += delay
        await asyncio.sleep(0)


AnnounceFn = Callable[[Announce], Awaitable[AnnounceResult]]


def recording(fn: AnnounceFn, clock: FakeClock, log: list[Any]) -> AnnounceFn:
    """Wrap an announce_fn to log (virtual time, url, event) of each call."""

    async def wrapped(a: Announce) -> AnnounceResult:
        log.append((clock(), a.url, a.event))
        return await fn(a)

    return wrapped


def announce_fn(left: list[int] | None = None, **kw: Any) -> Any:
    left = left if left is not None else [1000]
    return make_announce_fn(
        info_hash=IH,
        peer_id=PID,
        port=6881,
        stats=lambda: (0, 0, left[0]),
        key=1,
        udp_schedule=NORMAL,
        **kw,
    )


def test_runner_tier_fallback_with_dead_slow_and_lying_trackers() -> None:
    refused = f"http://127.0.0.1:{closed_port(socket.SOCK_STREAM)}/announce"
    with (
        HTTPTestTracker(garbage=b"not bencode") as liar,
        HTTPTestTracker(hang=True) as slow,
        UDPTestTracker(peers=PEERS, interval=900) as good,
    ):
        ts = TrackerSet(
            [[refused, liar.announce_url], [slow.announce_url, good.announce_url]],
            rng=NoShuffle(),
        )
        clock = FakeClock()
        log: list[Any] = []
        warnings: list[str] = []
        got: list[Any] = []
        stop = asyncio.Event()
        runner = TrackerRunner(ts, clock=clock, sleep=clock.sleep, on_warning=warnings.append)

        def on_peers(peers: tuple[tuple[str, int], ...]) -> None:
            got.append(peers)
            stop.set()

        fn = recording(announce_fn(http_timeout=0.2), clock, log)
        run(runner.run(fn, on_peers, stop))
        stopped = good.requests[-1]
    assert [url for _, url, _ in log[:4]] == [
        refused,
        liar.announce_url,
        slow.announce_url,
        good.announce_url,
    ]
    assert got == [tuple(PEERS)]
    assert len(warnings) == 3
    assert refused in warnings[0] and "not bencoded" in warnings[1] and "0.2s" in warnings[2]
    assert ts.tiers[1] == (good.announce_url, slow.announce_url)  # order updated
    assert (stopped.event, good.requests[0].event) == ("stopped", "started")
    assert len(liar.requests) == 1 and len(slow.requests) == 1


def test_runner_backoff_uses_the_injected_clock() -> None:
    dead = f"http://127.0.0.1:{closed_port(socket.SOCK_STREAM)}/announce"
    ts = TrackerSet([[dead]], backoff_base=15, backoff_cap=3600)
    clock = FakeClock()
    log: list[Any] = []
    warnings: list[str] = []
    stop = asyncio.Event()

    def on_warning(w: str) -> None:
        warnings.append(w)
        if len(warnings) == 5:
            stop.set()

    runner = TrackerRunner(ts, clock=clock, sleep=clock.sleep, on_warning=on_warning)
    started = time.monotonic()
    run(runner.run(recording(announce_fn(), clock, log), lambda p: None, stop))
    assert [t - 1000 for t, _, _ in log] == [0, 15, 45, 105, 225]
    assert clock.slept == [15, 30, 60, 120]
    assert time.monotonic() - started < 10  # 225 virtual seconds, not real ones
    assert "next try in 240s" in warnings[-1]
    assert ts.stopping() == []  # it never accepted "started": no "stopped" owed


def test_runner_started_completed_stopped_seen_by_tracker() -> None:
    with HTTPTestTracker(peers=PEERS, interval=1800, min_interval=60) as t:
        ts = TrackerSet([[t.announce_url]])
        clock = FakeClock()
        stop = asyncio.Event()
        left = [1000]
        runner = TrackerRunner(ts, clock=clock, sleep=clock.sleep)
        calls = []

        def on_peers(peers: tuple[tuple[str, int], ...]) -> None:
            calls.append(clock())
            if len(calls) == 1:
                left[0] = 0
                runner.completed()
            else:
                stop.set()

        run(runner.run(announce_fn(left), on_peers, stop))
        reqs = t.requests
    assert [r.event for r in reqs] == ["started", "completed", "stopped"]
    assert [r.left for r in reqs] == [1000, 0, 0]
    assert calls[1] - calls[0] == 60  # completed waited for the min interval only
    assert reqs[2].numwant == 0


def test_runner_stop_during_a_hung_announce_is_prompt() -> None:
    with HTTPTestTracker(hang=True) as t:
        ts = TrackerSet([[t.announce_url]])
        stop = asyncio.Event()
        runner = TrackerRunner(ts, stop_timeout=0.2)

        async def main() -> None:
            task = asyncio.ensure_future(
                runner.run(announce_fn(http_timeout=60), lambda p: None, stop)
            )
            await asyncio.to_thread(t.wait_for_requests, 1)
            stop.set()
            await asyncio.wait_for(task, 5)

        run(main())
        assert [r.event for r in t.requests] == ["started"]
