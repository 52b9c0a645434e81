"""The event stream (``--events``) and the Prometheus metrics (``--metrics-listen``).

First the sans-IO parts with the clock passed in (torrent/events.py,
torrent/snapshot.py, the collector of torrent/metrics.py), the writer's
failures (ENOSPC on /dev/full, EPIPE on a pipe nobody reads) and the
address parsing; then real ``fasttorrent download`` runs from a libtorrent
seeder on 127.0.0.1: the events of a download, a dead tracker, a scrape of
``/metrics`` while the run seeds, and the clean failures (an unwritable
events path, a metrics port in use, ``--events -`` read by ``head -1``).
Hash failures and bans are checked against a hostile peer in
tests/test_hostile_peers.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_module
from helpers.payload import CLI, ft_create, start_seeders, write_tree

from torrent.errors import Interrupted, UsageError
from torrent.events import (
    EVENT_KINDS,
    MAX_TEXT,
    TorrentEvents,
    encode_line,
    iso_time,
    make_event,
)
from torrent.eventwriter import EventWriter
from torrent.snapshot import STAGES, payload_of, take

pytestmark = pytest.mark.timeout(120)

IH = "ab" * 20
#: 1 MiB and a bit, 32 KiB pieces (the last one short).
SIZE = 1024 * 1024 + 4321
#: Bound on one download subprocess (a normal one takes a second or two).
RUN_TIMEOUT = 60
#: How long to wait for a line in the events file of a running download.
WAIT_LINE = 30.0


def snap(**kw: Any) -> Any:
    args: dict[str, Any] = {"info_hash": IH, "total_size": 100, "piece_length": 32,
                            "pieces_total": 4, "pieces_verified": 0, "last_verified": False,
                            "seeding": False, "workers": []}
    args.update(kw)
    return take(**args)


# -- sans-IO ---------------------------------------------------------------------------------
def test_every_event_has_kind_time_and_info_hash_in_order() -> None:
    ev = make_event("tracker_error", IH, 1_700_000_000.25, url="http://t/a", message="x")
    assert list(ev)[:3] == ["event", "time", "info_hash"]
    assert ev["time"] == "2023-11-14T22:13:20.250Z"
    line = encode_line(ev)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == ev
    with pytest.raises(ValueError, match="unknown event kind"):
        make_event("nonsense", IH, 0.0)


def test_iso_time_is_utc_with_milliseconds() -> None:
    assert iso_time(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso_time(86400.9999) == "1970-01-02T00:00:00.999Z"


def test_free_text_is_clipped_and_stays_on_one_line() -> None:
    ev = make_event("tracker_error", IH, 0.0, url="u", message="bad\nline" + "x" * 10_000)
    assert len(ev["message"]) == MAX_TEXT
    assert "\n" not in ev["message"] and ev["message"].endswith("...")
    assert len(encode_line(ev)) < 2 * MAX_TEXT


def test_progress_follows_the_interval_of_the_clock_passed_in() -> None:
    got: list[dict[str, Any]] = []
    ev = TorrentEvents(IH, got.append, progress_interval=5.0)
    assert ev.progress_due(100.0)  # the first one at once
    ev.progress(100.0, snap(pieces_verified=2))
    assert not ev.progress_due(104.9)
    assert ev.progress_due(105.0)
    assert ev.progress_due(50.0)  # the wall clock went back
    (p,) = got
    assert p["event"] == "progress" and p["bytes_done"] == 64 and p["bytes_total"] == 100
    assert p["pieces_verified"] == 2 and p["pieces_total"] == 4


def test_bans_are_reported_once_and_completed_and_stopped_once() -> None:
    got: list[dict[str, Any]] = []
    ev = TorrentEvents(IH, got.append)
    ev.peer_banned(1.0, "127.0.0.1:5", "banned: bad piece")
    ev.peer_banned(2.0, "127.0.0.1:5", "banned")
    ev.peer_banned(3.0, "127.0.0.1:6", "banned")
    ev.completed(4.0, snap())
    ev.completed(5.0, snap())
    ev.stopped(6.0, "complete", 0)
    ev.stopped(7.0, "complete", 0)
    assert [(e["event"], e.get("address")) for e in got] == [
        ("peer_banned", "127.0.0.1:5"), ("peer_banned", "127.0.0.1:6"), ("completed", None),
        ("stopped", None)]
    assert all(e["info_hash"] == IH for e in got)


def test_snapshot_counts_the_short_last_piece_and_sums_the_workers() -> None:
    w0 = {"bytes": 64, "uploaded": 10, "hash_failures": 1, "banned": ["a:1"], "connected": 2,
          "rate": 5.0, "up_rate": 1.0, "busy_hash": 0.5, "busy_write": 0.25, "busy_sync": 0.125,
          "slots_free": 1}
    w1 = {"bytes": 36, "banned": ["a:1", "b:2"], "connected": 7, "rate": 9.0}
    s = snap(pieces_verified=4, last_verified=True, workers=[(0, True, w0), (1, False, w1)],
             banned=["c:3"], slots_per_worker=4)
    assert s.bytes_done == 100  # 3 x 32 + the 4-byte last piece
    assert snap(pieces_verified=1, last_verified=True).bytes_done == 4
    assert s.downloaded == 100 and s.uploaded == 10 and s.hash_failures == 1
    assert s.bans == 3  # a:1, b:2, c:3
    assert (s.peers, s.rate_down, s.rate_up) == (2, 5.0, 1.0)  # the dead worker's are gone
    assert (s.slots_total, s.slots_in_use) == (4, 3)  # the dead worker's are gone
    assert snap(pieces_verified=4, last_verified=True, downloaded=7).downloaded == 7
    fresh = snap(workers=[(0, True, {})], slots_per_worker=6)  # no stats yet: all free
    assert (fresh.slots_total, fresh.slots_in_use) == (6, 0)
    assert dict(s.workers[0].busy) == {"hash": 0.5, "write": 0.25, "sync": 0.125}


def test_payload_of_pieces_counts_the_short_last_piece() -> None:
    assert payload_of([0, 1], 32, 100, 4) == 64
    assert payload_of([3], 32, 100, 4) == 4
    assert payload_of([0, 1, 2, 3], 32, 100, 4) == 100
    assert payload_of([], 32, 100, 4) == 0


def test_the_collector_reports_every_family_labelled_by_info_hash() -> None:
    require_module("prometheus_client")
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.registry import CollectorRegistry

    from torrent.metrics import TorrentCollector

    w = {"bytes": 100, "uploaded": 7, "busy_hash": 1.5, "slots_free": 6}
    c = TorrentCollector()
    c.add(IH, lambda: snap(pieces_verified=4, last_verified=True, workers=[(0, True, w)],
                           slots_per_worker=8))
    c.add("cd" * 20, lambda: snap(info_hash="cd" * 20))
    reg = CollectorRegistry(auto_describe=False)
    reg.register(c)
    fams = {f.name: f for f in text_string_to_metric_families(generate_latest(reg).decode())}
    assert fams["fasttorrent_downloaded_bytes"].type == "counter"
    by_hash = {s.labels["info_hash"]: s.value for s in fams["fasttorrent_downloaded_bytes"].samples}
    assert by_hash == {IH: 100.0, "cd" * 20: 0.0}
    assert [s.value for s in fams["fasttorrent_arena_slots_in_use"].samples
            if s.labels["info_hash"] == IH] == [2.0]
    busy = {(s.labels["worker"], s.labels["stage"]): s.value
            for s in fams["fasttorrent_worker_busy_seconds"].samples
            if s.labels["info_hash"] == IH and s.name.endswith("_total")}
    assert busy == {("0", "hash"): 1.5, ("0", "write"): 0.0, ("0", "sync"): 0.0}
    c.remove("cd" * 20)
    fams = {f.name: f for f in text_string_to_metric_families(generate_latest(reg).decode())}
    assert {s.labels["info_hash"] for s in fams["fasttorrent_uploaded_bytes"].samples} == {IH}


def test_parse_listen_defaults_to_loopback() -> None:
    require_module("prometheus_client")
    from torrent.metrics import parse_listen

    assert parse_listen("9100") == ("127.0.0.1", 9100)
    assert parse_listen(":9100") == ("127.0.0.1", 9100)
    assert parse_listen("[::1]:9100") == ("::1", 9100)
    assert parse_listen("0.0.0.0:80") == ("0.0.0.0", 80)
    for bad in ("", "host", "host:80", "127.0.0.1:0", "::1:80", "1.2.3.4:99999", "[::1]",
                "1.2.3.4:-1", "x" * 10_000):
        with pytest.raises(UsageError, match="--metrics-listen"):
            parse_listen(bad)


def test_bind_metrics_on_a_port_in_use_is_a_usage_error() -> None:
    require_module("prometheus_client")
    from torrent.metrics import bind_metrics

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(UsageError, match="in use"):
            bind_metrics(f"127.0.0.1:{port}")


# -- the writer ------------------------------------------------------------------------------
def test_a_full_disk_is_one_warning_and_the_stream_stops() -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    warnings: list[str] = []
    w = EventWriter("/dev/full", warnings.append)
    for _ in range(3):
        w.write(make_event("stopped", IH, 0.0, reason="complete", exit_code=0))
    w.close()
    assert w.failed and w.lines == 0
    assert len(warnings) == 1 and "No space left" in warnings[0]


def test_a_closed_pipe_is_one_warning_and_the_stream_stops(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    r, wfd = os.pipe()
    os.close(r)  # nobody will ever read it: a write is EPIPE
    with open(wfd, "w") as out:
        monkeypatch.setattr("sys.stdout", out)  # stdout is the pipe
        warnings: list[str] = []
        w = EventWriter("-", warnings.append)
        w.write(make_event("added", IH, 0.0, source="torrent", name="x"))
        w.write(make_event("added", IH, 0.0, source="torrent", name="x"))
        assert os.write(wfd, b"after") == 5  # the pipe's fd now goes to /dev/null
    assert w.failed and w.lines == 0
    assert len(warnings) == 1 and "Broken pipe" in warnings[0]


def test_an_unwritable_events_path_is_a_storage_error(tmp_path: Path) -> None:
    from torrent.errors import StorageError

    with pytest.raises(StorageError, match="--events"):
        EventWriter(str(tmp_path / "missing" / "ev.jsonl"), lambda s: None)


# -- real runs -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A payload, its torrent, one libtorrent seeder on 127.0.0.1 (shared by the module)."""
    require_module("libtorrent")
    root = tmp_path_factory.mktemp("events")
    src = root / "src"
    write_tree(src, {"data.bin": SIZE}, seed=5)
    torrent = ft_create(src / "data.bin", root / "t.torrent", "32K")
    seeders = start_seeders(str(torrent), [str(src)], str(root))
    try:
        yield {"root": root, "src": src, "torrent": torrent, "seeder": seeders[0]}
    finally:
        for s in seeders:
            s.stop()


@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: a connect is refused
        yield s.getsockname()[1]


def ft(args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("FASTTORRENT_FAULT", None)
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=RUN_TIMEOUT,
                          env=env, check=False, **kw)


def download_args(swarm: dict[str, Any], out: Path, *extra: str,
                  torrent: Path | None = None) -> list[str]:
    return ["download", str(torrent or swarm["torrent"]), "-o", str(out), "--workers", "1",
            "--no-trackers", "--bind", "127.0.0.1", "--peer", swarm["seeder"].addr,
            "--stall-timeout", "30", *extra]


def read_events(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()
    events = [json.loads(ln) for ln in lines]  # every line valid JSON
    for e in events:
        assert e["event"] in EVENT_KINDS
        assert e["time"].endswith("Z") and e["time"][10] == "T"
    return events


def test_the_events_of_a_download(swarm: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "ev.jsonl"
    res = ft(download_args(swarm, tmp_path / "out", "--events", str(path),
                           "--events-interval", "0.01", "-q"))
    assert res.returncode == 0, res.stderr
    assert res.stdout == "" and res.stderr == ""
    assert (tmp_path / "out" / "data.bin").read_bytes() == (swarm["src"] / "data.bin").read_bytes()
    events = read_events(path)
    kinds = [e["event"] for e in events]
    info_hash = json.loads(ft(["info", str(swarm["torrent"]), "--json"]).stdout)["info_hash"]
    assert all(e["info_hash"] == info_hash for e in events)
    assert kinds[:3] == ["added", "metadata", "started"]
    assert kinds[-1] == "stopped" and events[-1]["reason"] == "complete"
    assert events[-1]["exit_code"] == 0
    assert kinds.count("completed") == 1 and "error" not in kinds
    assert kinds.index("completed") < len(kinds) - 1
    assert events[0]["source"] == "torrent"
    assert events[1]["total_size"] == SIZE and events[1]["pieces"] == -(-SIZE // 32768)
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and all(p["bytes_total"] == SIZE for p in progress)
    assert progress[-1]["bytes_done"] == SIZE and progress[-1]["downloaded"] == SIZE
    assert [p["bytes_done"] for p in progress] == sorted(p["bytes_done"] for p in progress)
    # a second run appends: the file holds both runs, the second one already complete
    res = ft(download_args(swarm, tmp_path / "out", "--events", str(path), "-q"))
    assert res.returncode == 0, res.stderr
    again = read_events(path)[len(events):]
    assert [e["event"] for e in again][:2] == ["added", "metadata"]
    assert again[-1]["event"] == "stopped" and again[-1]["reason"] == "complete"


def test_a_dead_tracker_is_a_tracker_error_event(swarm: dict[str, Any], tmp_path: Path,
                                                 closed_port: int) -> None:
    dead = f"http://127.0.0.1:{closed_port}/announce"
    torrent = ft_create(swarm["src"] / "data.bin", tmp_path / "dead.torrent", "32K",
                        trackers=[dead])
    path = tmp_path / "ev.jsonl"
    args = download_args(swarm, tmp_path / "out", "--events", str(path), "-q", torrent=torrent)
    args.remove("--no-trackers")
    res = ft(args)
    assert res.returncode == 0, res.stderr
    errors = [e for e in read_events(path) if e["event"] == "tracker_error"]
    assert errors and errors[0]["url"] == dead
    assert errors[0]["message"] and len(errors[0]["message"]) <= MAX_TEXT


def wait_for_event(path: Path, kind: str, proc: subprocess.Popen[str]) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_LINE
    while time.monotonic() < deadline:
        if path.exists():
            for ln in path.read_text().splitlines():
                if ln.endswith("}") and json.loads(ln)["event"] == kind:
                    return dict(json.loads(ln))
        assert proc.poll() is None, f"the run ended before its {kind!r} event"
        time.sleep(0.05)  # polling a file, bounded by WAIT_LINE
    raise AssertionError(f"no {kind!r} event within {WAIT_LINE} s")


def busy_hash(body: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(x.value for f in text_string_to_metric_families(body)
               if f.name == "fasttorrent_worker_busy_seconds" for x in f.samples
               if x.labels["stage"] == "hash" and x.name.endswith("_total"))


async def scrape(port: int) -> tuple[int, str, str]:
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
            body = await r.text()
            status = r.status
        async with s.get(f"http://127.0.0.1:{port}/other") as r2:
            return status, body, str(r2.status)


def test_metrics_scraped_while_the_run_seeds(swarm: dict[str, Any], tmp_path: Path) -> None:
    require_module("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "ev.jsonl"
    args = download_args(swarm, tmp_path / "out", "--events", str(path), "-q",
                         "--metrics-listen", str(port), "--seed-time", "120")
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        done = wait_for_event(path, "completed", proc)
        # the workers' own counters (busy seconds) come with their stats, every tick
        # (torrent/worker.py TICK): scrape until they did, as Prometheus would
        deadline = time.monotonic() + WAIT_LINE
        while True:
            status, body, other = asyncio.run(scrape(port))
            if busy_hash(body) > 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)  # the next scrape; bounded by WAIT_LINE
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # ends the seeding: exit 0
        _out, err = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, err
    assert status == 200 and other == "404"
    ih = done["info_hash"]
    fams = {f.name: f for f in text_string_to_metric_families(body)}
    for name in ("downloaded_bytes", "uploaded_bytes", "download_rate_bytes_per_second",
                 "upload_rate_bytes_per_second", "peers_connected", "pieces_verified",
                 "hash_failures", "bans", "worker_busy_seconds", "arena_slots_in_use",
                 "arena_slots"):
        fam = fams["fasttorrent_" + name]
        assert fam.samples and all(x.labels["info_hash"] == ih for x in fam.samples), name

    def value(name: str) -> float:
        (v,) = [x.value for x in fams["fasttorrent_" + name].samples
                if not x.name.endswith("_created")]
        return float(v)

    assert value("downloaded_bytes") == SIZE
    assert value("pieces_verified") == -(-SIZE // 32768)
    assert value("hash_failures") == 0 and value("bans") == 0
    assert value("arena_slots") > 0
    stages = {x.labels["stage"] for x in fams["fasttorrent_worker_busy_seconds"].samples}
    assert stages == set(STAGES)
    hashed = [x.value for x in fams["fasttorrent_worker_busy_seconds"].samples
              if x.labels["stage"] == "hash" and x.name.endswith("_total")]
    assert hashed and hashed[0] > 0  # 33 pieces were hashed
    events = read_events(path)
    assert events[-1]["event"] == "stopped" and events[-1]["reason"] == "interrupted"
    assert events[-1]["exit_code"] == 0


def test_a_metrics_port_in_use_is_a_one_line_usage_error(swarm: dict[str, Any],
                                                         tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        res = ft(download_args(swarm, tmp_path / "out", "--metrics-listen", f"127.0.0.1:{port}"))
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "in use" in res.stderr
    assert "Traceback" not in res.stderr


def test_an_unwritable_events_path_is_a_one_line_error(swarm: dict[str, Any],
                                                       tmp_path: Path) -> None:
    res = ft(download_args(swarm, tmp_path / "out", "--events",
                           str(tmp_path / "no" / "such" / "dir" / "ev.jsonl")))
    assert res.returncode == 5, res.stderr
    assert res.stderr.count("\n") == 1 and "--events" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()  # refused before anything started


def test_events_on_stdout_exclude_json(swarm: dict[str, Any], tmp_path: Path) -> None:
    res = ft(download_args(swarm, tmp_path / "out", "--events", "-", "--json"))
    assert res.returncode == 2
    assert "--json" in res.stderr and res.stderr.count("\n") == 1


def test_events_on_stdout_keep_stdout_to_themselves(swarm: dict[str, Any],
                                                    tmp_path: Path) -> None:
    res = ft(download_args(swarm, tmp_path / "out", "--events", "-"))
    assert res.returncode == 0, res.stderr
    events = [json.loads(ln) for ln in res.stdout.splitlines()]  # nothing else on stdout
    assert events[0]["event"] == "added" and events[-1]["event"] == "stopped"
    assert "done:" in res.stderr


def test_a_full_events_disk_does_not_fail_the_download(swarm: dict[str, Any],
                                                       tmp_path: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    res = ft(download_args(swarm, tmp_path / "out", "--events", "/dev/full"))
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    warned = [ln for ln in res.stderr.splitlines() if "events:" in ln]
    assert len(warned) == 1 and "No space left" in warned[0]


def test_events_to_head_dash_1_end_without_a_traceback(swarm: dict[str, Any], tmp_path: Path,
                                                       closed_port: int) -> None:
    """``--events - | head -1``: head leaves after the first line; the run goes on (here
    until it gives up on its one dead peer, so events follow the first line for 2 s)."""
    args = ["download", str(swarm["torrent"]), "-o", str(tmp_path / "out"), "--workers", "1",
            "--no-trackers", "--bind", "127.0.0.1", "--peer", f"127.0.0.1:{closed_port}",
            "--stall-timeout", "2", "--events", "-", "--events-interval", "0.05"]
    cmd = " ".join(map(_quote, [*CLI, *args])) + " 2>" + _quote(str(tmp_path / "err")) + \
        " | head -1; echo \"exit=${PIPESTATUS[0]}\""
    res = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True,
                         timeout=RUN_TIMEOUT, check=False)
    first, status = res.stdout.splitlines()
    assert json.loads(first)["event"] == "added"
    err = (tmp_path / "err").read_text()
    assert status == "exit=6", err  # incomplete: its only peer is dead
    assert "Traceback" not in err and "Exception ignored" not in err
    assert len([ln for ln in err.splitlines() if "events:" in ln]) == 1, err
    assert "Broken pipe" in err


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)



def test_the_events_of_a_magnet_download(swarm: dict[str, Any], tmp_path: Path) -> None:
    from torrent import metainfo
    from torrent.magnet import magnet_uri

    meta = metainfo.load(swarm["torrent"])
    seeder = swarm["seeder"]
    uri = magnet_uri(meta, name="named", trackers=[], peers=[("127.0.0.1", seeder.port)])
    path = tmp_path / "ev.jsonl"
    res = ft(["download", uri, "-o", str(tmp_path / "out"), "--workers", "1", "--no-trackers",
              "--bind", "127.0.0.1", "--stall-timeout", "30", "--events", str(path), "-q"])
    assert res.returncode == 0, res.stderr
    events = read_events(path)
    kinds = [e["event"] for e in events]
    assert kinds[:3] == ["added", "metadata", "started"]
    assert events[0]["source"] == "magnet" and events[0]["name"] == "named"
    assert events[1]["name"] == "data.bin" and events[1]["total_size"] == SIZE
    assert all(e["info_hash"] == meta.info_hash_hex for e in events)
    assert "completed" in kinds and kinds[-1] == "stopped"


def test_the_events_of_a_seed_run(swarm: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "ev.jsonl"
    args = ["seed", str(swarm["torrent"]), str(swarm["src"]), "--workers", "1",
            "--no-trackers", "--bind", "127.0.0.1", "--events", str(path), "-q"]
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        started = wait_for_event(path, "started", proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == 7, err  # a seed ends by a signal (exit 7)
    assert started["seeding"] is True and started["port"] == int(out.split()[-1])
    events = read_events(path)
    assert [e["event"] for e in events][:3] == ["added", "metadata", "started"]
    assert events[-1]["event"] == "stopped" and events[-1]["reason"] == "interrupted"
    assert events[-1]["exit_code"] == 7 and "error" not in [e["event"] for e in events]
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and progress[-1]["bytes_done"] == SIZE and progress[-1]["seeding"] is True
    assert "Traceback" not in err


def test_an_unreadable_torrent_is_an_error_event_without_info_hash(tmp_path: Path) -> None:
    bad = tmp_path / "bad.torrent"
    bad.write_bytes(b"not bencoded")
    path = tmp_path / "ev.jsonl"
    res = ft(["download", str(bad), "-o", str(tmp_path / "out"), "--events", str(path)])
    assert res.returncode == 3, res.stderr
    events = read_events(path)
    assert [e["event"] for e in events] == ["error", "stopped"]
    assert events[0]["exit_code"] == 3 and events[0]["info_hash"] is None
    assert events[0]["message"] == res.stderr.strip().removeprefix("fasttorrent: ")[:MAX_TEXT]
    assert events[1]["reason"] == "error" and events[1]["exit_code"] == 3


@pytest.mark.parametrize(("exc", "kinds", "reason", "code"), [
    (None, ["stopped"], "complete", 0),
    (Interrupted("stop"), ["stopped"], "interrupted", 7),
    (UsageError("bad flag"), ["error", "stopped"], "error", 2),
    (RuntimeError("oops"), ["error", "stopped"], "error", 1),
])
def test_the_last_events_of_a_run(exc: BaseException | None, kinds: list[str], reason: str,
                                  code: int) -> None:
    from torrent.reporting import RunReport

    got: list[dict[str, Any]] = []
    rep = RunReport(got.append, clock=lambda: 10.0)
    rep.added(IH, source="torrent", name="n")
    rep.finished(exc)
    assert [e["event"] for e in got[1:]] == kinds
    assert got[-1]["reason"] == reason and got[-1]["exit_code"] == code
    if "error" in kinds:
        assert got[1]["exit_code"] == code and str(exc) in got[1]["message"]
    assert all(e["info_hash"] == IH and e["time"] == "1970-01-01T00:00:10.000Z" for e in got)
