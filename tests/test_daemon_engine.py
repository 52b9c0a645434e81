"""``fasttorrent daemon`` with its real engine (torrent/service.py) against libtorrent.

The daemon runs as the CLI runs it, on 127.0.0.1, and is driven by a real
HTTP client (aiohttp): torrents added by .torrent and by magnet, listed,
paused, resumed and removed with their data; 401 without the token;
``/metrics`` read by prometheus_client's own parser. A daemon killed with
SIGKILL mid-download restarts from its state directory and finishes. Every
wait is bounded; the data is compared byte for byte.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from conftest import require_module
from helpers.ltpeer import LtPeer
from helpers.payload import ft_create, write_tree
from prometheus_client.parser import text_string_to_metric_families

from torrent import metainfo
from torrent.magnet import magnet_uri

pytestmark = pytest.mark.timeout(240)

TOKEN = "daemon-engine-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: A step (start, one request) ends well within this (seconds).
STEP = 60.0
#: A download of these few MiB ends well within this.
DONE = 120.0


@pytest.fixture(autouse=True)
def _libtorrent() -> None:
    require_module("libtorrent")


def daemon_cmd(tmp: Path, *peers: str) -> list[str]:
    (tmp / "token").write_text(TOKEN + "\n")
    (tmp / "token").chmod(0o600)
    return [sys.executable, "-m", "torrent", "daemon", "--listen", "127.0.0.1:0",
            "--token-file", str(tmp / "token"), "--download-dir", str(tmp / "dl"),
            "--state-dir", str(tmp / "state"), "--workers", "2", "--bind", "127.0.0.1",
            "--no-trackers", "--max-active", "2", *(f"--peer={p}" for p in peers)]


def start(cmd: list[str]) -> tuple[subprocess.Popen[str], int]:
    env = dict(os.environ)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    line = proc.stdout.readline() if sel.select(STEP) else ""
    if "port" not in line:
        proc.kill()
        _out, err = proc.communicate(timeout=STEP)
        pytest.fail(f"the daemon did not start: {line!r} {err}")
    words = line.split()
    return proc, int(words[words.index("port") + 1].rstrip(","))


def stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=STEP)
    return err


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, DONE + 2 * STEP))


async def call(s: aiohttp.ClientSession, port: int, method: str, path: str,
               body: Any = None, *, auth: bool = True) -> tuple[int, Any]:
    async with s.request(method, f"http://127.0.0.1:{port}{path}", json=body,
                         headers=AUTH if auth else {}) as r:
        if r.content_type == "application/json":
            return r.status, await r.json()
        return r.status, await r.text()


async def wait_state(s: aiohttp.ClientSession, port: int, ih: str, states: set[str],
                     what: Callable[[dict[str, Any]], bool] = lambda t: True,
                     ) -> dict[str, Any]:
    deadline = time.monotonic() + DONE
    while True:
        st, t = await call(s, port, "GET", f"/api/v1/torrents/{ih}")
        assert st == 200, t
        if t["state"] in states and what(t):
            return t  # type: ignore[no-any-return]
        assert t["state"] != "error", t
        assert time.monotonic() < deadline, f"not {states} after {DONE} s: {t}"
        await asyncio.sleep(0.1)


def torrents(tmp: Path, sizes: list[int]) -> list[tuple[Path, Path, str]]:
    out = []
    for k, size in enumerate(sizes):
        src = tmp / f"src{k}"
        name = f"d{k}.bin"
        write_tree(src, {name: size}, seed=200 + k)
        out.append((ft_create(src / name, tmp / f"d{k}.torrent", "64K"), src, name))
    return out


def test_the_api_adds_lists_pauses_resumes_and_removes_real_downloads(tmp_path: Path) -> None:
    (ta, srca, na), (tb, srcb, nb), (tc, srcc, nc) = torrents(
        tmp_path, [3_000_000, 2_000_000, 1_500_000])
    with LtPeer("seeder") as lt:
        for t, src, _n in ((ta, srca, na), (tb, srcb, nb), (tc, srcc, nc)):
            lt.seed(t, src)
        events = tmp_path / "events.jsonl"
        proc, port = start([*daemon_cmd(tmp_path, lt.addr), "--events", str(events)])
        try:
            async def main() -> None:
                async with aiohttp.ClientSession() as s:
                    st, _ = await call(s, port, "GET", "/api/v1/torrents", auth=False)
                    assert st == 401
                    st, got = await call(s, port, "POST", "/api/v1/torrents", {
                        "torrent": base64.b64encode(ta.read_bytes()).decode()})
                    assert st == 200, got
                    iha = got["info_hash"]
                    assert iha == metainfo.load(ta).info_hash_hex
                    link = magnet_uri(metainfo.load(tb), trackers=[],
                                      peers=[("127.0.0.1", lt.port)])
                    st, got = await call(s, port, "POST", "/api/v1/torrents",
                                         {"magnet": link, "save_path": "fromlink"})
                    assert st == 200, got
                    ihb = got["info_hash"]
                    st, got = await call(s, port, "POST", "/api/v1/torrents", {
                        "torrent": base64.b64encode(tc.read_bytes()).decode(), "paused": True})
                    ihc = got["info_hash"]
                    st, listed = await call(s, port, "GET", "/api/v1/torrents")
                    assert [t["info_hash"] for t in listed] == [iha, ihb, ihc]
                    done_a = await wait_state(s, port, iha, {"completed"})
                    assert done_a["progress"] == 1.0 and done_a["bytes_done"] == 3_000_000
                    await wait_state(s, port, ihb, {"completed"})
                    # the paused one stayed paused, and nothing of it was written
                    st, c = await call(s, port, "GET", f"/api/v1/torrents/{ihc}")
                    assert c["state"] == "paused" and not (tmp_path / "dl" / nc).exists()
                    st, _ = await call(s, port, "POST", f"/api/v1/torrents/{ihc}/resume")
                    assert st == 200
                    await wait_state(s, port, ihc, {"completed"})
                    assert (tmp_path / "dl" / nc).read_bytes() == (srcc / nc).read_bytes()
                    st, text = await call(s, port, "GET", "/metrics")
                    assert st == 200
                    names = {m.name for m in text_string_to_metric_families(text)}
                    assert any(n.startswith("fasttorrent_") for n in names), names
                    st, _ = await call(s, port, "DELETE",
                                       f"/api/v1/torrents/{ihc}?delete_data=true")
                    assert st == 200
                    assert not (tmp_path / "dl" / nc).exists()  # its data, and only its
                    st, _ = await call(s, port, "GET", f"/api/v1/torrents/{ihc}")
                    assert st == 404
                    st, _ = await call(s, port, "DELETE",
                                       f"/api/v1/torrents/{iha}?delete_data=false")
                    assert st == 200

            run(main())
        finally:
            err = stop(proc)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert (tmp_path / "dl" / na).read_bytes() == (srca / na).read_bytes()  # kept
    assert (tmp_path / "dl" / "fromlink" / nb).read_bytes() == (srcb / nb).read_bytes()
    # the same events as a download's feed the daemon's stream, each naming its torrent
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    for t in (ta, tb, tc):
        ih = metainfo.load(t).info_hash_hex
        kinds = [e["event"] for e in lines if e["info_hash"] == ih]
        assert {"added", "metadata", "started", "completed", "stopped"} <= set(kinds), kinds
        assert all("time" in e for e in lines)


def test_a_daemon_killed_with_sigkill_restarts_and_finishes_its_torrents(
        tmp_path: Path) -> None:
    ((t, src, name),) = torrents(tmp_path, [8_000_000])
    # a slow seeder: the daemon is killed mid-download
    with LtPeer("seeder") as lt:
        lt.seed(t, src).set_upload_limit(1_000_000)  # (a torrent's limit binds on loopback)
        proc, port = start(daemon_cmd(tmp_path, lt.addr))
        try:
            async def first() -> str:
                async with aiohttp.ClientSession() as s:
                    st, got = await call(s, port, "POST", "/api/v1/torrents", {
                        "torrent": base64.b64encode(t.read_bytes()).decode()})
                    assert st == 200, got
                    ih: str = got["info_hash"]
                    await wait_state(s, port, ih, {"downloading"},
                                     lambda x: 1_000_000 < x["bytes_done"] < 6_000_000)
                    return ih

            ih = run(first())
            workers = psutil.Process(proc.pid).children(recursive=True)
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=STEP)
            # its workers see the control connection close and exit by themselves
            _gone, alive = psutil.wait_procs(workers, timeout=STEP)
            assert not alive, alive
        finally:
            if proc.poll() is None:
                proc.kill()
        proc, port = start(daemon_cmd(tmp_path, lt.addr))
        try:
            async def second() -> dict[str, Any]:
                async with aiohttp.ClientSession() as s:
                    return await wait_state(s, port, ih, {"completed"})

            done = run(second())
        finally:
            err = stop(proc)
    assert done["progress"] == 1.0
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert (tmp_path / "dl" / name).read_bytes() == (src / name).read_bytes()


def test_pausing_one_magnet_while_its_metadata_comes_leaves_the_others_fetching(
        tmp_path: Path) -> None:
    """Two magnets whose peers never answer (the daemon waits for peers as long as it
    holds a torrent): pausing one stops its fetch only."""
    from torrent.engineapi import TorrentSpec
    from torrent.options import Options
    from torrent.ports import free_port
    from torrent.service import Service

    dead = ("127.0.0.1", free_port("127.0.0.1"))  # nothing listens there
    links = [f"magnet:?xt=urn:btih:{k * 40}&x.pe={dead[0]}:{dead[1]}" for k in "ab"]

    async def main() -> tuple[str, str, str]:
        opts = Options(workers=1, bind="127.0.0.1", use_trackers=False, dht=False,
                       stall_timeout=0)
        async with Service(opts, download_dir=str(tmp_path / "dl"), max_active=2) as svc:
            a = await svc.add(TorrentSpec(magnet=links[0]))
            b = await svc.add(TorrentSpec(magnet=links[1]))
            deadline = time.monotonic() + STEP
            while {svc.status(a).state, svc.status(b).state} != {"metadata"}:
                assert time.monotonic() < deadline, (svc.status(a), svc.status(b))
                await asyncio.sleep(0.05)
            await svc.pause(a)
            for _ in range(50):  # (a cancelled fetch ends its task within a few turns)
                await asyncio.sleep(0)
            return svc.status(a).state, svc.status(b).state, svc.status(b).error or ""

    got_a, got_b, err = run(main())
    assert got_a == "paused"
    assert got_b == "metadata", err
