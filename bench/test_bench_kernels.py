"""Micro-benchmarks of the native kernels against what Python would do without them.

Run: ``python -m pytest bench/ --benchmark-only`` (a throughput table is printed
at the end). Each compiled kernel is measured next to its baseline in the same
run, on the same buffers: hashlib for SHA-1, a Python loop over hashlib for
batch verification, slice assignment for block copies, and the pure twin
(torrent._pure) for frame scanning.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from torrent import _fast, _pure

MiB = 1 << 20
BIG = 64 * MiB  # large enough that per-call overhead is noise
BLOCK = 16 * 1024  # BEP 3: the request size every client uses

# Big buffers are timed a fixed number of rounds: each call takes tens of ms.
HEAVY: dict[str, Any] = {"rounds": 8, "iterations": 1, "warmup_rounds": 1}

Recorder = Callable[[int], "float | None"]


@pytest.fixture(scope="module")
def data() -> bytes:
    return os.urandom(BIG)


@pytest.fixture
def backend_named(request: pytest.FixtureRequest) -> Iterator[str]:
    default = _fast.backend()
    name = request.param
    if name != "hashlib":
        if name not in _fast.available_backends():
            pytest.skip(f"SHA-1 backend {name} is not available here")
        _fast._set_backend(name)
    try:
        yield name
    finally:
        _fast._set_backend(default)


@pytest.mark.parametrize(
    "backend_named", ["hashlib", "openssl", "sha-ni", "portable"], indirect=True
)
def test_sha1_64mib(benchmark: Any, record_mbps: Recorder, data: bytes, backend_named: str) -> None:
    benchmark.group = "sha1 64 MiB"
    if backend_named == "hashlib":
        digest = benchmark.pedantic(lambda: hashlib.sha1(data).digest(), **HEAVY)
    else:
        digest = benchmark.pedantic(_fast.sha1, args=(data,), **HEAVY)
    assert digest == hashlib.sha1(data).digest()
    record_mbps(BIG)


def _python_verify(buf: bytes, piece_length: int, digests: bytes) -> bytes:
    """What verification costs without the kernel: a Python loop over hashlib."""
    view = memoryview(buf)
    return bytes(
        hashlib.sha1(view[off : off + piece_length]).digest() == digests[20 * k : 20 * k + 20]
        for k, off in enumerate(range(0, len(buf), piece_length))
    )


@pytest.mark.parametrize("piece_length", [MiB, 256 * 1024], ids=["1MiB", "256KiB"])
@pytest.mark.parametrize("impl", ["fast", "python-hashlib-loop"])
def test_verify_pieces_64mib(
    benchmark: Any, record_mbps: Recorder, data: bytes, piece_length: int, impl: str
) -> None:
    benchmark.group = f"verify_pieces 64 MiB / {piece_length // 1024} KiB pieces"
    digests = _fast.sha1_pieces(data, piece_length)
    fn: Callable[[bytes, int, bytes], bytes] = (
        _fast.verify_pieces if impl == "fast" else _python_verify
    )
    result = benchmark.pedantic(fn, args=(data, piece_length, digests), **HEAVY)
    assert result == b"\x01" * (BIG // piece_length)
    record_mbps(BIG)


@pytest.mark.parametrize("impl", ["fast", "slice-assignment"])
def test_copy_block_16kib(benchmark: Any, record_mbps: Recorder, impl: str) -> None:
    benchmark.group = "copy one 16 KiB block into a piece slot"
    slot = bytearray(4 * MiB)
    recv = bytearray(os.urandom(BLOCK + 13))  # payload at offset 13, after the header
    if impl == "fast":
        benchmark(_fast.copy_block, slot, 3 * BLOCK, recv, 13, BLOCK)
    else:
        dst, src = memoryview(slot), memoryview(recv)

        def assign() -> None:
            dst[3 * BLOCK : 4 * BLOCK] = src[13 : 13 + BLOCK]

        benchmark(assign)
    assert slot[3 * BLOCK : 4 * BLOCK] == recv[13:]
    record_mbps(BLOCK)


@pytest.mark.parametrize("impl", ["fast", "pure"])
def test_scan_frame(benchmark: Any, record_mbps: Recorder, impl: str) -> None:
    benchmark.group = "scan_frame: one piece message header"
    # a whole 'piece' message (id 7, index, begin, 16 KiB block) in a receive buffer
    body = b"\x07" + bytes(8) + bytes(BLOCK)
    buf = bytearray(len(body).to_bytes(4, "big") + body + bytes(100))
    mod = _fast if impl == "fast" else _pure
    length = benchmark(mod.scan_frame, buf, 0, len(buf), 1 << 17)
    assert length == len(body)
    record_mbps(4 + len(body))  # bytes framed per call
