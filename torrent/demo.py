"""``fasttorrent demo``: the main job on a generated payload, with nothing set up."""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from . import metainfo
from .create import create_torrent
from .sysinfo import available_cpus
from .verify import verify_data

__all__ = ["make_payload", "run_demo"]

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


def run_demo(*, size: int, workers: int | None = None, keep: bool = False,
             out=print) -> int:
    """Generate a payload, make its torrent on every core, verify it on every core."""
    workers = workers or available_cpus()
    root = tempfile.mkdtemp(prefix="fasttorrent-demo-")
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
        meta = metainfo.parse(tdata)
        out(f"create: {meta.num_pieces} pieces, info hash {meta.info_hash_hex}, "
            f"{size / dt / 1e6:.0f} MB/s on {workers} worker(s)")
        rep = verify_data(meta, data_dir, workers=workers)
        out(f"verify: {rep.pieces_ok}/{rep.pieces_total} pieces good, "
            f"{rep.bytes_checked / rep.seconds / 1e6:.0f} MB/s on {len(rep.workers)} worker(s)")
        return 0 if rep.complete else 6
    finally:
        if keep:
            out(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
