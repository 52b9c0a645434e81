"""``fasttorrent demo``: the main job on a generated payload, with nothing set up.

Everything stays on 127.0.0.1 and in one temporary directory, removed at the end.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from .. import metainfo
from ..console import Status
from ..create import create_torrent
from ..errors import StorageError
from ..sysinfo import available_cpus
from ..verify import verify_data

__all__ = ["make_payload", "run_demo"]

#: How long a local seeder may take to start listening.
SEEDER_START_TIMEOUT = 30.0
#: Bytes generated per write when making a payload.
_GEN_CHUNK = 4 << 20


def make_payload(path: str, size: int, *, seed: int = 1) -> None:
    """Write ``size`` deterministic pseudo-random bytes to ``path`` (cheap: one block repeated
    with a per-block counter, so no two pieces are alike)."""
    import random

    rnd = random.Random(seed)
    block = bytearray(rnd.randbytes(_GEN_CHUNK))
    with open(path, "wb") as f:
        left, n = size, 0
        while left > 0:
            block[:8] = n.to_bytes(8, "little")
            for k in range(0, _GEN_CHUNK, 1 << 16):  # vary every 64 KiB
                block[k : k + 8] = (n * 1000 + k).to_bytes(8, "little")
            take = min(left, _GEN_CHUNK)
            f.write(memoryview(block)[:take])
            left -= take
            n += 1


def _start_seeder(torrent: str, data_dir: str, workdir: str, k: int) -> tuple[Any, int]:
    """A ``fasttorrent seed`` process on 127.0.0.1; returns it and its port."""
    with open(os.path.join(workdir, f"seed{k}.log"), "w+") as log:
        return _spawn_seeder(torrent, data_dir, log)


def _spawn_seeder(torrent: str, data_dir: str, log: Any) -> tuple[Any, int]:
    p = subprocess.Popen(
        [sys.executable, "-m", "torrent", "seed", torrent, data_dir, "--bind", "127.0.0.1",
         "--workers", "1", "--skip-check", "--no-trackers", "-q"],
        stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
    assert p.stdout is not None
    deadline = time.monotonic() + SEEDER_START_TIMEOUT
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if line.startswith("seeding on port "):
            return p, int(line.split()[-1])
        if not line and p.poll() is not None:
            break
    p.kill()
    log.seek(0)
    raise StorageError(f"demo: a local seeder did not start: {log.read().strip()[-300:]}")


def run_demo(*, size: int, workers: int | None = None, seeders: int = 2, keep: bool = False,
             out: Callable[[str], None] = print) -> int:
    """The main job with nothing set up: a payload, local seeders, a full download, a check.

    Generates ``size`` bytes, makes the torrent on every core, starts
    ``seeders`` ``fasttorrent seed`` processes on 127.0.0.1, downloads with
    the multi-process engine (live progress on a terminal), verifies the
    result against the payload, prints a summary and removes everything.
    """
    from ..coordinator import download

    workers = workers or available_cpus()
    root = tempfile.mkdtemp(prefix="fasttorrent-demo-")
    procs: list[Any] = []
    try:
        data_dir = os.path.join(root, "seed")
        os.makedirs(data_dir)
        payload = os.path.join(data_dir, "demo.bin")
        t = time.perf_counter()
        make_payload(payload, size)
        out(f"payload: {size / 2**20:.0f} MiB generated in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        tdata = create_torrent(payload, workers=workers, piece_length=1 << 20)
        dt = time.perf_counter() - t
        tpath = os.path.join(root, "demo.torrent")
        with open(tpath, "wb") as f:
            f.write(tdata)
        meta = metainfo.parse(tdata)
        out(f"create: {meta.num_pieces} pieces, info hash {meta.info_hash_hex}, "
            f"{size / dt / 1e6:.0f} MB/s on {workers} worker(s)")
        peers = []
        for k in range(seeders):
            p, port = _start_seeder(tpath, data_dir, root, k)
            procs.append(p)
            peers.append(("127.0.0.1", port))
        out(f"seeders: {seeders} fasttorrent seed processes on "
            + ", ".join(f"127.0.0.1:{port}" for _, port in peers))
        dl_dir = os.path.join(root, "download")
        st = Status(False)
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self0 = resource.getrusage(resource.RUSAGE_SELF)
        res = download(tpath, dl_dir, workers=workers, peers=peers, bind="127.0.0.1",
                       use_trackers=False, stall_timeout=30, log=st.log, status_line=st.line)
        st.end()
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
               + self1.ru_utime + self1.ru_stime - self0.ru_utime - self0.ru_stime)
        out(f"download: {res.bytes_downloaded / 2**20:.0f} MiB in {res.seconds:.2f} s = "
            f"{res.bytes_downloaded / res.seconds / 1e6:.0f} MB/s on {len(res.workers)} "
            f"worker(s), CPU {cpu:.2f} s ({cpu / (size / 2**30):.2f} s/GiB; seeders not "
            "counted), " + ", ".join(f"worker {w['worker']}: {w['pieces']} pieces"
                                     for w in res.workers))
        rep = verify_data(meta, dl_dir, workers=workers)
        same = _same_file(payload, os.path.join(dl_dir, "demo.bin"))
        out(f"verify: {rep.pieces_ok}/{rep.pieces_total} pieces good, "
            f"{rep.bytes_checked / rep.seconds / 1e6:.0f} MB/s; identical to the payload: "
            f"{'yes' if same else 'NO'}")
        return 0 if rep.complete and same else 6
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if keep:
            out(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _same_file(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x = fa.read(1 << 20)
            if x != fb.read(1 << 20):
                return False
            if not x:
                return True
