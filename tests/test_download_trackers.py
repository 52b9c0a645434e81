"""End-to-end downloads that find their peers through real trackers on 127.0.0.1.

The torrent names the tracker (``fasttorrent create --tracker URL``); libtorrent
seeders announce to it, and ``fasttorrent download`` is given no ``--peer``:
every peer it gets comes from the tracker.  Trackers: our HTTP and UDP test
trackers (tests/trackers.py, which record every announce) and Debian's
opentracker (whitelist-only, started as in tests/test_opentracker.py).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_binary, require_module
from helpers.payload import (
    RunResult,
    assert_clean_after,
    ft_create,
    run_cli,
    start_seeders,
    torrent_info,
    tree_bytes,
    write_tree,
)
from helpers.swarm import Seeder
from trackers import AnnounceRecord, HTTPTestTracker, UDPTestTracker

pytestmark = pytest.mark.timeout(120)

#: Our peer-id prefix (torrent/wire/handshake.py PEER_ID_PREFIX): tells our
#: announces from the libtorrent seeders'.
OUR_PEER_ID = b"-FT0100-"
#: How long the seeders may take to announce to a fresh tracker.
ANNOUNCE_WAIT = 20.0


@pytest.fixture(autouse=True)
def _libtorrent() -> None:
    require_module("libtorrent")


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    write_tree(src, {"data.bin": 1024 * 1024 + 4321}, seed=11)
    return src


@pytest.fixture
def seeders(tmp_path: Path) -> Iterator[Callable[..., list[Seeder]]]:
    started: list[Seeder] = []
    work = tmp_path / "seedwork"
    work.mkdir()

    def start(torrent: Path, src: Path, n: int = 2) -> list[Seeder]:
        got = start_seeders(str(torrent), [str(src)] * n, str(work))
        started.extend(got)
        return got

    yield start
    for s in started:
        s.stop()



def fetch(torrent: Path, out: Path, *extra: str) -> RunResult:
    """Download with the trackers only (no --peer)."""
    res = run_cli(["download", str(torrent), "-o", str(out), "--workers", "2", *extra])
    assert_clean_after(res)
    return res


def assert_complete(res: RunResult, src: Path, out: Path) -> None:
    assert res.returncode == 0, res.describe()
    assert "Traceback" not in res.stderr
    assert tree_bytes(out) == tree_bytes(src)


def ours(reqs: list[AnnounceRecord]) -> list[AnnounceRecord]:
    return [r for r in reqs if r.peer_id.startswith(OUR_PEER_ID)]


def seeders_announced(tracker: Any, n: int) -> None:
    """Wait until ``n`` distinct seeders announced (left == 0)."""
    tracker.wait_until(
        lambda: (
            len(
                {
                    r.port
                    for r in tracker._requests
                    if not r.peer_id.startswith(OUR_PEER_ID) and r.left == 0
                }
            )
            >= n
        ),
        ANNOUNCE_WAIT,
    )


# ----------------------------------------------------------------------------- 11. test trackers


@pytest.mark.parametrize("kind", ["http", "udp"])
def test_download_via_test_tracker(kind: str, payload: Path, seeders: Any, tmp_path: Path) -> None:
    cls = HTTPTestTracker if kind == "http" else UDPTestTracker
    with cls() as tracker:
        torrent = ft_create(
            payload / "data.bin", tmp_path / "t.torrent", "32K", trackers=[tracker.announce_url]
        )
        seeders(torrent, payload, 2)
        seeders_announced(tracker, 2)
        out = tmp_path / "out"
        res = fetch(torrent, out, "--json")
        assert_complete(res, payload, out)
        j = res.json
        assert {p["source"] for p in j["peers"]} == {"tracker"}
        assert sum(1 for p in j["peers"] if p["connected"]) >= 1
        # The run ended only after 'completed' and 'stopped' were sent (bounded
        # by the coordinator's stop timeout), so they are in the log already.
        mine = ours(tracker.requests)
        events = [r.event for r in mine]
        assert events[0] == "started", events
        assert "completed" in events and events[-1] == "stopped", events
        assert all(r.transport == kind for r in mine)
        ih = bytes.fromhex(torrent_info(torrent)["info_hash"])
        assert all(r.info_hash == ih for r in mine)
        completed = next(r for r in mine if r.event == "completed")
        assert completed.left == 0 and mine[0].left > 0
        assert completed.downloaded >= 1024 * 1024 + 4321


# ----------------------------------------------------------------------------- 12. opentracker


@pytest.fixture
def opentracker(tmp_path: Path) -> Iterator[Callable[[str], int]]:
    """``start(info_hash_hex) -> port``: opentracker whitelisting that info-hash."""
    from test_opentracker import _start, _stop

    binary = require_binary("opentracker")
    procs: list[Any] = []

    def start(info_hash: str) -> int:
        tdir = tmp_path / "ot"
        tdir.mkdir()
        (tdir / "wl.txt").write_text(info_hash + "\n")
        (tdir / "ot.conf").write_text(
            f"access.whitelist wl.txt\ntracker.rootdir {tdir}\ntracker.user nobody\n"
        )
        os.chmod(tdir, 0o755)
        os.chmod(tdir / "wl.txt", 0o644)
        os.chmod(tdir / "ot.conf", 0o644)
        proc, port = _start(binary, tdir)
        procs.append(proc)
        return port

    yield start
    for p in procs:
        _stop(p)


def wait_for_seeds(port: int, info_hash: str, n: int) -> None:
    """Poll opentracker's HTTP scrape until ``n`` seeds of ``info_hash`` are known
    (so our first announce already gets them; the re-announce is minutes away)."""
    import time
    import urllib.parse
    import urllib.request

    import bencodepy

    ih = bytes.fromhex(info_hash)
    url = f"http://127.0.0.1:{port}/scrape?info_hash={urllib.parse.quote_from_bytes(ih)}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
    deadline = time.monotonic() + ANNOUNCE_WAIT
    seen = 0
    while time.monotonic() < deadline:
        with opener.open(url, timeout=5) as r:
            files = bencodepy.decode(r.read()).get(b"files", {})
        seen = int(files.get(ih, {}).get(b"complete", 0))
        if seen >= n:
            return
        time.sleep(0.1)  # polling the tracker, bounded by ANNOUNCE_WAIT
    raise AssertionError(f"opentracker knows {seen} seeds, expected {n}")


@pytest.mark.parametrize("kind", ["http", "udp"])
def test_download_via_opentracker(
    kind: str, payload: Path, seeders: Any, opentracker: Any, tmp_path: Path
) -> None:
    # The info-hash does not depend on the announce URL (it is outside the info
    # dict): learn it from a first torrent, whitelist it, then name the tracker.
    probe = ft_create(payload / "data.bin", tmp_path / "probe.torrent", "32K")
    ih = torrent_info(probe)["info_hash"]
    port = opentracker(ih)
    url = f"{kind}://127.0.0.1:{port}/announce"
    torrent = ft_create(payload / "data.bin", tmp_path / "t.torrent", "32K", trackers=[url])
    assert torrent_info(torrent)["info_hash"] == ih
    seeders(torrent, payload, 2)
    wait_for_seeds(port, ih, 2)
    out = tmp_path / "out"
    res = fetch(torrent, out, "--json")
    assert_complete(res, payload, out)
    j = res.json
    assert {p["source"] for p in j["peers"]} == {"tracker"}
    assert any(p["connected"] for p in j["peers"])


# ----------------------------------------------------------------------------- 13. dead tier


@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def test_dead_first_tier_then_working_second(
    payload: Path, seeders: Any, closed_port: int, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{closed_port}/announce"
    with HTTPTestTracker() as tracker:
        torrent = ft_create(
            payload / "data.bin",
            tmp_path / "t.torrent",
            "32K",
            trackers=[dead, tracker.announce_url],
        )
        assert torrent_info(torrent)["trackers"] == [[dead], [tracker.announce_url]]
        seeders(torrent, payload, 2)
        seeders_announced(tracker, 2)
        out = tmp_path / "out"
        res = fetch(torrent, out)  # not -q: warnings go to stderr
        assert_complete(res, payload, out)
        warnings = [ln for ln in res.stderr.splitlines() if "warning" in ln]
        assert any(dead in ln for ln in warnings), res.describe()
        assert any(r.event == "started" for r in ours(tracker.requests))
