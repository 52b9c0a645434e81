"""``fasttorrent demo``: the main job on a generated payload, with nothing set up.

Everything stays on 127.0.0.1 and in one temporary directory, removed at the end.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable

from .. import metainfo
from ..console import Status
from ..creator import create_torrent
from ..sysinfo import available_cpus
from ..verifier import verify_data
from .payload import same_files, write_file
from .procs import Processes
from .seeders import start_seeders

__all__ = ["run_demo"]

#: How long the local seeders may take to start serving (they trust their data).
SEEDER_START_TIMEOUT = 30.0
#: The payload's file name (and the torrent's name).
PAYLOAD_NAME = "demo.bin"


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
    procs = Processes()
    try:
        data_dir = os.path.join(root, "seed")
        os.makedirs(data_dir)
        payload = os.path.join(data_dir, PAYLOAD_NAME)
        t = time.perf_counter()
        write_file(payload, size)
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
        # no lifetime bound: they serve until this demo stops them, however long it runs
        started = start_seeders(procs, "fasttorrent", seeders, tpath, data_dir, root,
                                lifetime=None, timeout=SEEDER_START_TIMEOUT, who="demo")
        peers = [("127.0.0.1", s.port) for s in started]
        out(f"seeders: {seeders} fasttorrent seed processes on "
            + ", ".join(s.addr for s in started))
        dl_dir = os.path.join(root, "download")
        st = Status(False)
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self0 = resource.getrusage(resource.RUSAGE_SELF)
        res = download(tpath, dl_dir, workers=workers, peers=peers, bind="127.0.0.1", dht=False,
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
        same = same_files(data_dir, dl_dir, [PAYLOAD_NAME])
        out(f"verify: {rep.pieces_ok}/{rep.pieces_total} pieces good, "
            f"{rep.bytes_checked / rep.seconds / 1e6:.0f} MB/s; identical to the payload: "
            f"{'yes' if same else 'NO'}")
        return 0 if rep.complete and same else 6
    finally:
        procs.stop_all()
        if keep:
            out(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
