"""Seeding after a download (``--seed-time``, ``--seed-ratio``) and ``--upload-limit``.

- The upload token bucket (:class:`torrent.worker.TokenBucket`) runs on a
  fake clock: burst, debt, refill, the long-run rate; the worker's
  :class:`~torrent.worker.UploadLimiter` arms one timer, never a spin.
- End to end, with real libtorrent peers on 127.0.0.1: fasttorrent downloads
  from a libtorrent seeder while a libtorrent downloader fetches from it and
  exits 0 by itself once it uploaded ``ratio x size``; ``--seed-time`` ends
  the run by itself; Ctrl-C while seeding a complete download exits 0;
  ``seed --upload-limit`` still serves libtorrent bit-exact, and no faster
  than the limit allows (a lower bound on the time: only a slow machine
  lengthens it, so it cannot flake).  Bad values are one-line usage errors.

Every process is bounded (timeouts, kill in ``finally``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import require_module
from helpers.clients import FasttorrentSeed
from helpers.payload import ft_create, tree_bytes, write_tree
from helpers.swarm import Seeder, start_seeders
from trackers import HTTPTestTracker

from torrent.picker import BLOCK_SIZE
from torrent.ports import free_port
from torrent.wire.handshake import PEER_ID_PREFIX
from torrent.worker import TokenBucket, UploadLimiter

LT_DOWNLOAD = "torrent.tools.benchclients.lt_download"
TREE = {"a.bin": 1_500_001, "sub/b.bin": 1_200_000, "sub/c.bin": 65_536, "d.txt": 10}
SIZE = sum(TREE.values())
#: Bound on every process these tests start (seconds).
RUN_TIMEOUT = 90
#: How long fasttorrent may take to start listening.
LISTEN_TIMEOUT = 30.0


# -- the token bucket, on a fake clock ------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_starts_full_and_goes_into_debt_by_one_block() -> None:
    clock = FakeClock()
    b = TokenBucket(rate=1000, burst=500, clock=clock)
    assert b.ready() and b.wait() == 0.0
    b.consume(400)
    assert b.ready()  # 100 left
    b.consume(BLOCK_SIZE)  # a whole block goes out: debt
    assert not b.ready()
    debt = BLOCK_SIZE - 100
    assert b.wait() == pytest.approx(debt / 1000)
    clock.now += debt / 1000 / 2
    assert not b.ready()
    assert b.wait() == pytest.approx(debt / 1000 / 2)
    clock.now += debt / 1000 / 2
    assert b.ready()


def test_bucket_refill_is_capped_at_the_burst() -> None:
    clock = FakeClock()
    b = TokenBucket(rate=1000, burst=500, clock=clock)
    b.consume(500)
    clock.now += 3600  # an hour idle saves up no more than the burst
    b.consume(500)
    assert b.ready()
    b.consume(1)
    assert not b.ready()
    assert b.wait() == pytest.approx(0.001)


def test_bucket_ignores_a_clock_that_steps_back() -> None:
    clock = FakeClock()
    b = TokenBucket(rate=1000, burst=0, clock=clock)
    b.consume(1000)
    clock.now -= 5
    assert b.wait() == pytest.approx(1.0)
    clock.now += 5 + 1.0
    assert b.ready()


@pytest.mark.parametrize("rate", [1000, 100_000, 10 << 20])
def test_bucket_long_run_rate(rate: int) -> None:
    """A sender that sends a block whenever allowed and otherwise sleeps exactly wait():
    over T seconds it sends rate x T, give or take the burst and one block."""
    clock = FakeClock()
    burst = rate * UploadLimiter.BURST
    b = TokenBucket(rate=rate, burst=burst, clock=clock)
    start = clock.now
    seconds = 50.0
    sent = wakeups = 0
    while clock.now - start < seconds:
        if b.ready():
            b.consume(BLOCK_SIZE)
            sent += BLOCK_SIZE
        else:
            w = b.wait()
            assert w > 0  # never "not ready, wait 0": that would be a spin
            clock.now += w
            wakeups += 1
    elapsed = clock.now - start
    assert sent <= burst + rate * elapsed + BLOCK_SIZE
    assert sent >= rate * elapsed - BLOCK_SIZE
    assert wakeups <= sent // BLOCK_SIZE + 1  # at most one wake-up per block sent


def test_bucket_rejects_a_zero_rate() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=10)
    with pytest.raises(ValueError):
        TokenBucket(rate=float("nan"), burst=10)


def test_upload_limiter_arms_one_timer_for_the_refill() -> None:
    """Empty bucket: no sending, one timer (however often it is asked) due when the bucket
    is ready again; when it fires, every peer is served, the next one first each round."""
    loop = asyncio.new_event_loop()
    try:
        clock = FakeClock()
        served: list[str] = []
        peers = [SimpleNamespace(name=n, active=True, closed=False) for n in "abc"]
        host = SimpleNamespace(loop=loop, peers=peers, serve=lambda pc: served.append(pc.name))
        lim = UploadLimiter(host, 64 << 10, clock=clock)  # type: ignore[arg-type]
        assert lim.may_send()
        lim.sent(64 << 10)  # the 16 KiB burst and 48 KiB of debt
        t0 = loop.time()
        assert not lim.may_send()
        handle = lim.handle
        assert handle is not None
        for _ in range(100):
            assert not lim.may_send()
        assert lim.handle is handle  # one timer, not one per call
        expected = (48 << 10) / (64 << 10)
        assert handle.when() - t0 == pytest.approx(expected, abs=0.05)
        clock.now += expected
        lim._resume()  # what the timer does when it fires
        lim._resume()
        assert served == ["a", "b", "c", "b", "c", "a"]
        assert lim.may_send()  # refilled
        lim.sent(1 << 20)
        assert not lim.may_send()
        again = lim.handle
        assert again is not None and again is not handle
        lim.close()
        assert again.cancelled() and lim.handle is None
    finally:
        loop.close()


# -- end to end ------------------------------------------------------------------------------


@pytest.fixture
def payload(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "src" / "tree"
    write_tree(src, TREE, seed=7)
    return src, ft_create(src, tmp_path / "t.torrent", piece_length="64K")


@pytest.fixture
def lt_seeder(payload: tuple[Path, Path], tmp_path: Path) -> Iterator[Seeder]:
    require_module("libtorrent")
    src, torrent = payload
    (s,) = start_seeders(str(torrent), [str(src.parent)], str(tmp_path))
    try:
        yield s
    finally:
        s.stop()


def ft_download(torrent: Path, out: Path, *extra: str, port: int = 0,
                trackers: bool = False) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "torrent", "download", str(torrent), "-o", str(out),
         *([] if trackers else ["--no-trackers"]), "--bind", "127.0.0.1", "--port", str(port),
         "--workers", "2", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"did not exit by itself within {RUN_TIMEOUT} s: {err}")
    return proc.returncode, out, err


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def wait_listening(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + LISTEN_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exited before listening: {proc.stderr.read()}")  # type: ignore[union-attr]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"nothing listens on port {port} after {LISTEN_TIMEOUT} s")


def lt_fetch(torrent: Path, out: Path, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", LT_DOWNLOAD, "--peers", f"127.0.0.1:{port}",
                           "--timeout", str(RUN_TIMEOUT - 10), str(torrent), str(out)],
                          check=False, capture_output=True, text=True, timeout=RUN_TIMEOUT)


def test_seed_ratio_serves_libtorrent_then_exits_by_itself(
        payload: tuple[Path, Path], lt_seeder: Seeder, tmp_path: Path) -> None:
    src, torrent = payload
    port = free_port()
    ft = ft_download(torrent, tmp_path / "ft", "--peer", lt_seeder.addr, "--seed-ratio", "1",
                     "--json", port=port)
    try:
        wait_listening(port, ft)
        lt = lt_fetch(torrent, tmp_path / "lt", port)  # its only peer is fasttorrent
        assert lt.returncode == 0, lt.stderr
        rc, out, err = finish(ft)
    finally:
        kill(ft)
    assert rc == 0, err
    assert "Traceback" not in err
    j = json.loads(out)
    assert j["complete"] and j["hash_failures"] == 0
    assert j["seed_stop"] == "ratio"
    assert j["uploaded_bytes"] >= 1.0 * SIZE
    assert j["seed_seconds"] > 0
    expected = tree_bytes(src)
    assert tree_bytes(tmp_path / "ft" / "tree") == expected
    assert tree_bytes(tmp_path / "lt" / "tree") == expected


def test_seed_time_exits_by_itself(payload: tuple[Path, Path], lt_seeder: Seeder,
                                   tmp_path: Path) -> None:
    src, torrent = payload
    ft = ft_download(torrent, tmp_path / "ft", "--peer", lt_seeder.addr, "--seed-time", "2",
                     "--seed-ratio", "50", "--json")
    try:
        rc, out, err = finish(ft)
    finally:
        kill(ft)
    assert rc == 0, err
    j = json.loads(out)
    assert j["complete"]
    assert j["seed_stop"] == "time"  # nobody downloads: the ratio is never reached
    assert j["seed_seconds"] >= 2.0
    assert tree_bytes(tmp_path / "ft" / "tree") == tree_bytes(src)
    assert not os.path.exists(tmp_path / "ft" / ".fasttorrent" /
                              f"{j['info_hash']}.resume")  # complete: journal removed


def test_no_seeding_by_default(payload: tuple[Path, Path], lt_seeder: Seeder,
                               tmp_path: Path) -> None:
    src, torrent = payload
    ft = ft_download(torrent, tmp_path / "ft", "--peer", lt_seeder.addr, "--json")
    try:
        rc, out, err = finish(ft)
    finally:
        kill(ft)
    assert rc == 0, err
    j = json.loads(out)
    assert j["complete"] and j["seed_stop"] is None and j["seed_seconds"] == 0
    assert tree_bytes(tmp_path / "ft" / "tree") == tree_bytes(src)


def test_seeding_announces_completed_once(tmp_path: Path) -> None:
    """'completed' is owed from completion on (sent once the tracker's min interval
    allows, else when the run ends), exactly once, and 'stopped' comes last."""
    require_module("libtorrent")
    src = tmp_path / "src" / "tree"
    write_tree(src, TREE, seed=7)
    with HTTPTestTracker() as tracker:
        torrent = ft_create(src, tmp_path / "t.torrent", piece_length="64K",
                            trackers=[tracker.announce_url])
        (seeder,) = start_seeders(str(torrent), [str(src.parent)], str(tmp_path))
        try:
            tracker.wait_until(lambda: any(r.left == 0 for r in tracker.requests), 20.0)
            ft = ft_download(torrent, tmp_path / "ft", "--seed-time", "1", "--json",
                             trackers=True)
            try:
                rc, out, err = finish(ft)
            finally:
                kill(ft)
        finally:
            seeder.stop()
        mine = [r for r in tracker.requests if r.peer_id.startswith(PEER_ID_PREFIX)]
    assert rc == 0, err
    assert json.loads(out)["seed_stop"] == "time"
    events = [r.event for r in mine]
    assert events[0] == "started" and events[-1] == "stopped", events
    assert events.count("completed") == 1, events
    assert tree_bytes(tmp_path / "ft" / "tree") == tree_bytes(src)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_seeding_a_complete_download_exits_0(
        payload: tuple[Path, Path], lt_seeder: Seeder, tmp_path: Path, sig: int) -> None:
    src, torrent = payload
    ft = ft_download(torrent, tmp_path / "ft", "--peer", lt_seeder.addr, "--seed-time", "600")
    watchdog = threading.Timer(RUN_TIMEOUT, ft.kill)
    watchdog.start()
    try:
        assert ft.stderr is not None
        for line in ft.stderr:  # log lines (not a terminal): wait for the seeding phase
            if "seeding until" in line:
                break
        else:
            pytest.fail("exited without seeding")
        ft.send_signal(sig)
        rc, out, err = finish(ft)
    finally:
        watchdog.cancel()
        kill(ft)
    assert rc == 0, err
    assert "Traceback" not in err
    assert "stopped by interrupted" in out
    assert tree_bytes(tmp_path / "ft" / "tree") == tree_bytes(src)


def test_seed_upload_limit_serves_libtorrent(payload: tuple[Path, Path],
                                             tmp_path: Path) -> None:
    require_module("libtorrent")
    src, torrent = payload
    limit = 1 << 20
    with FasttorrentSeed(torrent, src.parent, extra=["--upload-limit", "1M"]) as seeder:
        t0 = time.monotonic()
        lt = lt_fetch(torrent, tmp_path / "lt", seeder.port)
        elapsed = time.monotonic() - t0
        assert lt.returncode == 0, lt.stderr
        j = seeder.stop_summary()  # exit 7, no traceback, its --json summary
    assert tree_bytes(tmp_path / "lt" / "tree") == tree_bytes(src)
    assert j["uploaded_bytes"] >= SIZE
    # No more than the burst, plus one block of debt, plus the limit per second can
    # have left: a lower bound on the time (a busy machine only makes it longer).
    assert elapsed >= (SIZE - limit * UploadLimiter.BURST - BLOCK_SIZE) / limit


BAD = [
    ("download", "--seed-time", "-1"),
    ("download", "--seed-time", "nan"),
    ("download", "--seed-time", "inf"),
    ("download", "--seed-time", "soon"),
    ("download", "--seed-ratio", "-0.5"),
    ("download", "--seed-ratio", "NaN"),
    ("download", "--upload-limit", "0"),
    ("download", "--upload-limit", "-5M"),
    ("download", "--upload-limit", "fast"),
    ("download", "--upload-limit", "inf"),
    ("seed", "--upload-limit", "0"),
    ("seed", "--upload-limit", "-1K"),
    ("seed", "--upload-limit", "nan"),
]


@pytest.mark.parametrize(("cmd", "flag", "value"), BAD)
def test_bad_values_are_one_line_usage_errors(payload: tuple[Path, Path], tmp_path: Path,
                                              cmd: str, flag: str, value: str) -> None:
    src, torrent = payload
    target = ["-o", str(tmp_path / "out")] if cmd == "download" else [str(src.parent)]
    r = subprocess.run([sys.executable, "-m", "torrent", cmd, str(torrent), *target,
                        "--no-trackers", f"{flag}={value}"],
                       check=False, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("fasttorrent: ") and flag in lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert not (tmp_path / "out").exists()
