#!/usr/bin/env python3
"""The daemon's API latency while its engine downloads at full speed (issue: p99 < 100 ms).

    python bench/daemon_latency.py --size 1G --seeders 4 --rate 50 --runs 3 \\
        --out bench/results/daemon

One run: a payload and its .torrent; ``--seeders`` libtorrent seeders on
127.0.0.1; ``fasttorrent daemon`` (the CLI, as a user starts it) with a token;
the torrent added over the API (base64); then, until the download completes,
a client asks ``--rate`` requests a second, round-robin over
``GET /api/v1/torrents``, ``GET /api/v1/torrents/{hash}`` and ``GET /metrics``,
each timed from send to the last byte of the answer, and never two at once
(a slow answer delays the next request, so a stall is counted in full, not
hidden behind concurrency). Each request gives one latency; the run gives
their p50, p99 and max, the download's MB/s, and the count of requests
answered during it. Results go to ``OUT/daemon-latency-<time>.json`` with the
machine and every client's version.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import aiohttp  # noqa: E402

from torrent import __version__  # noqa: E402
from torrent.tools.bench import versions  # noqa: E402
from torrent.tools.payload import make_payload  # noqa: E402
from torrent.tools.procs import Processes  # noqa: E402
from torrent.tools.seeders import start_seeders  # noqa: E402
from torrent.units import parse_size  # noqa: E402

TOKEN = "daemon-latency-benchmark-token-0123456789"
#: A run (seeders up, the download) ends within this, or fails.
RUN_TIMEOUT = 900.0
PATHS = ("/api/v1/torrents", "/api/v1/torrents/{ih}", "/metrics")


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile ``q`` (0-100) of ``values`` (not empty)."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, -(-len(s) * q // 100) - 1))
    return s[int(k)]


def start_daemon(procs: Processes, work: str, seeders: list[str], workers: int | None,
                 ) -> tuple[Any, int]:
    tok = os.path.join(work, "token")
    with open(tok, "w") as f:
        f.write(TOKEN + "\n")
    os.chmod(tok, 0o600)
    argv = [sys.executable, "-m", "torrent", "daemon", "--listen", "127.0.0.1:0",
            "--token-file", tok, "--download-dir", os.path.join(work, "dl"),
            "--state-dir", os.path.join(work, "state"), "--bind", "127.0.0.1",
            "--no-trackers", "--no-dht", *(f"--peer={s}" for s in seeders)]
    if workers:
        argv += ["--workers", str(workers)]
    with open(os.path.join(work, "daemon.log"), "w") as log:
        p = procs.spawn(argv, "daemon", timeout=RUN_TIMEOUT, stdout=subprocess.PIPE,
                        stderr=log)
    assert p.popen.stdout is not None
    line = p.popen.stdout.readline()
    if "port" not in line:
        raise SystemExit(f"the daemon did not start: {line!r}; see {work}/daemon.log")
    words = line.split()
    return p, int(words[words.index("port") + 1].rstrip(","))


async def drive(port: int, torrent: bytes, size: int, rate: float) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    base = f"http://127.0.0.1:{port}"
    lat: dict[str, list[float]] = {p: [] for p in PATHS}
    async with aiohttp.ClientSession(headers=auth) as s:
        async with s.post(base + "/api/v1/torrents",
                          json={"torrent": base64.b64encode(torrent).decode()}) as r:
            body = await r.json()
            if r.status != 200:
                raise SystemExit(f"add failed: {r.status} {body}")
            ih = body["info_hash"]
        began = time.monotonic()
        k = 0
        done_at = None
        while time.monotonic() - began < RUN_TIMEOUT:
            path = PATHS[k % len(PATHS)]
            k += 1
            t0 = time.perf_counter()
            async with s.get(base + path.format(ih=ih)) as r:
                data = await r.read()
            lat[path].append((time.perf_counter() - t0) * 1000)
            if path == "/api/v1/torrents/{ih}":
                st = json.loads(data)
                if st["state"] == "completed":
                    done_at = time.monotonic()
                    break
                if st["state"] == "error":
                    raise SystemExit(f"the download failed: {st['error']}")
            await asyncio.sleep(max(0.0, 1 / rate - (time.perf_counter() - t0)))
    if done_at is None:
        raise SystemExit("the download did not complete in time")
    seconds = done_at - began
    every = [v for vs in lat.values() for v in vs]
    return {"seconds": round(seconds, 3), "mb_per_s": round(size / seconds / 1e6, 1),
            "requests": len(every),
            "p50_ms": round(percentile(every, 50), 2), "p99_ms": round(percentile(every, 99), 2),
            "max_ms": round(max(every), 2),
            "per_path": {p: {"n": len(v), "p50_ms": round(percentile(v, 50), 2),
                             "p99_ms": round(percentile(v, 99), 2),
                             "max_ms": round(max(v), 2)} for p, v in lat.items() if v}}


def one_run(size: int, nseeders: int, rate: float, workers: int | None,
            work: str) -> dict[str, Any]:
    from torrent.creator import create_torrent

    src = os.path.join(work, "src")
    os.makedirs(src)
    root, _rels = make_payload(src, size, 1)
    tpath = os.path.join(work, "bench.torrent")
    with open(tpath, "wb") as f:
        f.write(create_torrent(root, piece_length=1 << 20))
    procs = Processes()
    try:
        seeders = start_seeders(procs, "libtorrent", nseeders, tpath, src, work,
                                lifetime=RUN_TIMEOUT, who="daemon_latency")
        daemon, port = start_daemon(procs, work, [s.addr for s in seeders], workers)
        with open(tpath, "rb") as f:
            res = asyncio.run(drive(port, f.read(), size, rate))
        daemon.popen.send_signal(signal.SIGTERM)
        daemon.popen.wait(60)
        return res
    finally:
        procs.stop_all()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--seeders", type=int, default=4)
    ap.add_argument("--rate", type=float, default=50.0, help="requests per second")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--out", default=None, help="directory for the JSON result")
    a = ap.parse_args()
    size = parse_size(a.size)
    runs = []
    for k in range(a.runs):
        work = tempfile.mkdtemp(prefix="fasttorrent-daemon-lat-")
        try:
            r = one_run(size, a.seeders, a.rate, a.workers, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"run {k + 1}: {json.dumps(r)}", flush=True)
        runs.append(r)
    doc = {"benchmark": "daemon_latency", "fasttorrent": __version__, "size": size,
           "seeders": a.seeders, "rate": a.rate, "machine": platform.uname()._asdict(),
           "cpus": len(os.sched_getaffinity(0)), "versions": versions(), "runs": runs,
           "p99_ms_worst": max(r["p99_ms"] for r in runs),
           "mb_per_s_median": sorted(r["mb_per_s"] for r in runs)[len(runs) // 2]}
    print(json.dumps({k: doc[k] for k in ("p99_ms_worst", "mb_per_s_median")}))
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        path = os.path.join(a.out, f"daemon-latency-{time.strftime('%Y%m%d-%H%M%S')}.json")
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
