"""Throughput of ``verify`` (torrent.verifier.verify_data) on a 512 MiB payload in the page cache.

Run: ``python -m pytest bench/test_bench_verify.py --benchmark-only``.

The payload (one file, 1 MiB pieces) is built once per session in a temporary
directory and read once before timing, so every timed round reads from the page
cache: what is measured is reading + hashing + process overhead, not the disk.
Next to it, in the same run and on the same bytes, two single-process baselines:

- ``hashlib-in-memory``: ``hashlib.sha1`` per piece over bytes already in memory
  (the pure hashing cost, no reads);
- ``hashlib-read-file``: read the file in 16 MiB chunks (``readinto``) and hash
  each piece with ``hashlib`` -- what a plain one-process verifier does.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from torrent import metainfo
from torrent.verifier import verify_data

MiB = 1 << 20
#: Payload size; FT_BENCH_VERIFY_MIB=2048 amortizes the workers' start-up (~0.1 s each).
SIZE = int(os.environ.get("FT_BENCH_VERIFY_MIB", "512")) * MiB
PIECE = MiB
#: Bytes generated and read per step while building / baseline-reading the payload.
CHUNK = 16 * MiB

# Each call reads and hashes 512 MiB (a few hundred ms): a fixed, small number of rounds.
HEAVY: dict[str, Any] = {"rounds": 5, "iterations": 1, "warmup_rounds": 1}

Recorder = Callable[[int], "float | None"]


class Payload:
    def __init__(self, root: Path, data: bytearray, meta: metainfo.Metainfo) -> None:
        self.root = root
        self.data = data
        self.meta = meta
        self.path = root / meta.name


@pytest.fixture(scope="session")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Payload]:
    root = tmp_path_factory.mktemp("verify-bench")
    rnd = random.Random(512)
    data = bytearray(SIZE)
    with open(root / "payload.bin", "wb") as f:
        for off in range(0, SIZE, CHUNK):
            data[off : off + CHUNK] = rnd.randbytes(CHUNK)
            f.write(memoryview(data)[off : off + CHUNK])
    view = memoryview(data)
    digests = b"".join(hashlib.sha1(view[o : o + PIECE]).digest() for o in range(0, SIZE, PIECE))
    meta = metainfo.parse(metainfo.build(name="payload.bin", files=None, length=SIZE,
                                         piece_length=PIECE, piece_hashes=digests))
    p = Payload(root, data, meta)
    _read_and_hash(p)  # into the page cache before anything is timed
    yield p
    p.path.unlink()


def _read_and_hash(p: Payload) -> bytes:
    """The one-process baseline: read chunks from the file, hashlib each piece."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    out: list[bytes] = []
    with open(p.path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            out.extend(hashlib.sha1(view[o : min(o + PIECE, n)]).digest()
                       for o in range(0, n, PIECE))
    return b"".join(out)


@pytest.mark.parametrize("workers", [1, 2])
def test_verify_data_512mib(benchmark: Any, record_mbps: Recorder, payload: Payload,
                            workers: int) -> None:
    benchmark.group = "verify 512 MiB / 1 MiB pieces (page cache)"
    rep = benchmark.pedantic(verify_data, args=(payload.meta, str(payload.root)),
                             kwargs={"workers": workers}, **HEAVY)
    assert rep.complete and rep.pieces_ok == SIZE // PIECE
    assert rep.bytes_checked == SIZE
    assert len(rep.workers) == workers
    mbps = record_mbps(SIZE)
    if mbps is not None:
        benchmark.extra_info["pieces per worker"] = [w["pieces"] for w in rep.workers]


def test_hashlib_in_memory_512mib(benchmark: Any, record_mbps: Recorder,
                                  payload: Payload) -> None:
    benchmark.group = "verify 512 MiB / 1 MiB pieces (page cache)"
    view = memoryview(payload.data)

    def run() -> bytes:
        return b"".join(hashlib.sha1(view[o : o + PIECE]).digest()
                        for o in range(0, SIZE, PIECE))

    digests = benchmark.pedantic(run, **HEAVY)
    assert digests == payload.meta.piece_hashes
    record_mbps(SIZE)


def test_hashlib_read_file_512mib(benchmark: Any, record_mbps: Recorder,
                                  payload: Payload) -> None:
    benchmark.group = "verify 512 MiB / 1 MiB pieces (page cache)"
    digests = benchmark.pedantic(_read_and_hash, args=(payload,), **HEAVY)
    assert digests == payload.meta.piece_hashes
    record_mbps(SIZE)
