"""RC4 for MSE/PE on the receive path: in place against update plus a copy back.

Run: ``python -m pytest bench/test_bench_rc4.py --benchmark-only``. The
receive buffer's transform must rewrite each read where it lies
(:class:`torrent.wire.rc4.RC4` calls ``update_into`` with the same view as
input and output); the alternative, ``update`` into a new ``bytes`` and a slice
assignment back, costs an allocation and a copy per read. Both run over a
1 MiB buffer, the largest read a receive buffer takes (RECV_BUFFER_LIMIT).

Next to them, a minimal native RC4 (``bench/_rc4_native.pyx``, compiled here
with pyximport; skipped without Cython or a C compiler): the figure that
decides whether RC4 is worth a kernel in ``_fast.pyx``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from torrent.wire.framing import RECV_BUFFER_LIMIT
from torrent.wire.rc4 import RC4

SIZE = RECV_BUFFER_LIMIT  # 1 MiB: one full read
KEY = bytes(range(20))  # MSE keys are 20-byte SHA-1 digests
ROUNDS: dict[str, Any] = {"rounds": 50, "iterations": 1, "warmup_rounds": 2}

Recorder = Callable[[int], "float | None"]


def test_rc4_in_place_1mib(benchmark: Any, record_mbps: Recorder) -> None:
    benchmark.group = "rc4 1 MiB"
    buf = bytearray(os.urandom(SIZE))
    view = memoryview(buf)
    c = RC4(KEY)
    benchmark.pedantic(c, args=(view,), **ROUNDS)
    record_mbps(SIZE)
    assert len(buf) == SIZE


def test_rc4_update_and_copy_1mib(benchmark: Any, record_mbps: Recorder) -> None:
    benchmark.group = "rc4 1 MiB"
    buf = bytearray(os.urandom(SIZE))
    view = memoryview(buf)
    c = RC4(KEY)

    def update_and_copy() -> None:
        view[:] = c.crypt(view)

    benchmark.pedantic(update_and_copy, **ROUNDS)
    record_mbps(SIZE)
    assert len(buf) == SIZE


def test_rc4_in_place_equals_update() -> None:
    """The two paths give the same bytes (what is timed above is the same work)."""
    data = os.urandom(SIZE)
    buf = bytearray(data)
    RC4(KEY)(memoryview(buf))
    assert bytes(buf) == RC4(KEY).crypt(data) != data


@pytest.fixture(scope="module")
def native_rc4(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pyximport = pytest.importorskip("pyximport")
    build = tmp_path_factory.mktemp("rc4build")
    pyximport.install(build_dir=str(build), language_level=3, inplace=False)
    try:
        import _rc4_native  # type: ignore[import-not-found]
    except Exception as e:  # no compiler: nothing to compare
        pytest.skip(f"cannot build the native RC4: {e}")
    return _rc4_native.NativeRC4


def test_native_rc4_in_place_1mib(benchmark: Any, record_mbps: Recorder, native_rc4: Any) -> None:
    benchmark.group = "rc4 1 MiB"
    data = os.urandom(SIZE)
    buf = bytearray(data)
    native_rc4(KEY)(memoryview(buf))
    assert bytes(buf) == RC4(KEY).crypt(data)  # the same stream as OpenSSL's
    c = native_rc4(KEY)
    benchmark.pedantic(c, args=(memoryview(buf),), **ROUNDS)
    record_mbps(SIZE)
