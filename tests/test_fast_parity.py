"""Parity of the compiled kernels (torrent._fast) with their pure twins (torrent._pure).

Every kernel gets the same inputs in both modules and must give the same
result, or raise the same exception type. SHA-1 is also checked against
hashlib on every backend this machine has (openssl, sha-ni, portable).
"""

from __future__ import annotations

import hashlib
import mmap
import sys
import threading
from array import array
from collections.abc import Callable, Iterator
from multiprocessing import shared_memory
from typing import Any

import pytest
from helpers.kernelparity import both, outcome
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torrent import _fast, _pure

BACKENDS = _fast.available_backends()
SSIZE_MAX = sys.maxsize


@pytest.fixture(params=BACKENDS)
def sha1_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test once per SHA-1 backend, restoring the default after."""
    default = _fast.backend()
    _fast._set_backend(request.param)
    try:
        yield request.param
    finally:
        _fast._set_backend(default)


# Buffers of every kind the kernels meet: receive buffers (bytearray), slices of
# them (memoryview at an odd offset, so nothing is aligned), bytes from disk.
KINDS = ("bytes", "bytearray", "memoryview", "offset_view", "readonly_view")


def as_kind(data: bytes, kind: str) -> Any:
    if kind == "bytes":
        return bytes(data)
    if kind == "bytearray":
        return bytearray(data)
    if kind == "memoryview":
        return memoryview(bytearray(data))
    if kind == "offset_view":
        return memoryview(b"\x5a" * 3 + data + b"\xa5" * 5)[3 : 3 + len(data)]
    if kind == "readonly_view":
        return memoryview(bytes(data)).toreadonly()
    raise AssertionError(kind)


# ---------------------------------------------------------------------- SHA-1


def test_backends_are_found_and_the_best_is_default() -> None:
    assert "portable" in BACKENDS
    assert _fast.backend() == BACKENDS[0]
    # this project's machines have libcrypto (hashlib is built on it)
    assert "openssl" in BACKENDS, "libcrypto could not be loaded with dlopen"
    assert _fast.openssl_library().startswith("libcrypto.so")


def test_set_backend_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown SHA-1 backend"):
        _fast._set_backend("md5")
    assert _fast.backend() == BACKENDS[0]


@pytest.mark.parametrize(
    "n", [0, 1, 3, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 2047, 2048, 65537]
)
def test_sha1_block_and_padding_boundaries(sha1_backend: str, n: int) -> None:
    data = bytes((i * 131 + 7) & 0xFF for i in range(n))
    assert _fast.sha1(data) == hashlib.sha1(data).digest()


def test_sha1_known_answers(sha1_backend: str) -> None:
    # FIPS 180-2 appendix A.1 and A.2
    assert _fast.sha1(b"abc").hex() == "a9993e364706816aba3e25717850c26c9cd0d89d"
    msg = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
    assert _fast.sha1(msg).hex() == "84983e441c3bd26ebaae4aa1f95129e5e54670f1"


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    piece_length=st.integers(1, 4096),
    npieces=st.floats(0, 3),
    seed=st.binary(min_size=1, max_size=32),
    kind=st.sampled_from(KINDS),
)
def test_sha1_kernels_match_hashlib_on_every_backend(
    sha1_backend: str, piece_length: int, npieces: float, seed: bytes, kind: str
) -> None:
    n = int(piece_length * npieces)
    data = (seed * (n // len(seed) + 1))[:n]
    buf = as_kind(data, kind)
    assert _fast.sha1(buf) == hashlib.sha1(data).digest()
    want = b"".join(
        hashlib.sha1(data[i : i + piece_length]).digest() for i in range(0, n, piece_length)
    )
    assert both("sha1_pieces", buf, piece_length) == ("ok", want)
    assert both("verify_pieces", buf, piece_length, want) == ("ok", b"\x01" * (len(want) // 20))


@settings(max_examples=80)
@given(
    data=st.binary(max_size=600),
    piece_length=st.integers(1, 200),
    flips=st.lists(st.integers(0, 10_000), max_size=4),
    kind=st.sampled_from(KINDS),
)
def test_verify_pieces_finds_exactly_the_bad_pieces(
    data: bytes, piece_length: int, flips: list[int], kind: str
) -> None:
    digests = _pure.sha1_pieces(data, piece_length)
    corrupt = bytearray(data)
    bad = set()
    for f in flips:
        if corrupt:
            corrupt[f % len(corrupt)] ^= 0xFF
            bad.add((f % len(corrupt)) // piece_length)
    # a byte flipped twice is good again; compute the truth from the bytes
    bad = {
        k
        for k in bad
        if corrupt[k * piece_length : (k + 1) * piece_length]
        != data[k * piece_length : (k + 1) * piece_length]
    }
    _, result = both("verify_pieces", as_kind(bytes(corrupt), kind), piece_length, digests)
    assert [k for k, ok in enumerate(result) if not ok] == sorted(bad)


@settings(max_examples=100)
@given(
    n=st.integers(0, 300),
    piece_length=st.one_of(
        st.integers(-3, 300), st.sampled_from([0, -SSIZE_MAX - 1, SSIZE_MAX, SSIZE_MAX + 1])
    ),
    dlen_delta=st.integers(-25, 25),
)
def test_hash_kernel_errors_match(n: int, piece_length: int, dlen_delta: int) -> None:
    data = bytes(n)
    both("sha1_pieces", data, piece_length)
    npieces = -(-n // piece_length) if piece_length > 0 else 0
    digests = bytes(max(0, 20 * npieces + dlen_delta))
    result = both("verify_pieces", data, piece_length, digests)
    if piece_length <= 0 or len(digests) != 20 * npieces or piece_length > SSIZE_MAX:
        assert result[0] == "raised"


BUFFER_CALLS: dict[str, Callable[[Any], tuple[Any, ...]]] = {
    "sha1": lambda b: (b,),
    "sha1_pieces": lambda b: (b, 3),
    "verify_pieces": lambda b: (b"abc", 3, b),
    "bitfield_count": lambda b: (b, 0),
    "bitfield_spare_ok": lambda b: (b, 0),
    "availability_add": lambda b: (array("H"), b, 0, 1),
    "scan_frame": lambda b: (b, 0, 0, 0),
    "read_u32": lambda b: (b, 0),
    "copy_block-dst": lambda b: (b, 0, b"", 0, 0),
    "copy_block-src": lambda b: (bytearray(4), 0, b, 0, 0),
}


@pytest.mark.parametrize("name", sorted(BUFFER_CALLS))
@pytest.mark.parametrize(
    "bad",
    [
        None,
        5,
        "text",
        array("i", [1, 2]),
        memoryview(b"abcdef")[::2],
        memoryview(b"abcd").cast("B", (2, 2)),
    ],
    ids=["none", "int", "str", "int-array", "strided", "2d"],
)
def test_non_byte_buffers_are_rejected_alike(name: str, bad: Any) -> None:
    assert both(name.split("-")[0], *BUFFER_CALLS[name](bad))[0] == "raised"


def test_argument_conversion_order_matches() -> None:
    # a float offset is reported before a bad buffer, in both modules
    assert both("copy_block", b"readonly", 0.5, b"", 0, 0) == ("raised", TypeError)
    assert both("copy_block", b"readonly", 0, b"", 0, 0) == ("raised", BufferError)
    assert both("scan_frame", None, 0, 0, 1 << 64) == ("raised", OverflowError)
    assert both("read_u32", array("i", [7]), 0) == ("raised", ValueError)


def test_float_and_huge_integer_arguments_are_rejected_alike() -> None:
    assert both("sha1_pieces", b"abc", 1.5) == ("raised", TypeError)
    assert both("sha1_pieces", b"abc", 1 << 70) == ("raised", OverflowError)
    assert both("read_u32", b"abcd", "0") == ("raised", TypeError)


def test_mmap_and_shared_memory_buffers() -> None:
    data = bytes(range(256)) * 300
    with mmap.mmap(-1, len(data)) as mm:
        mm[:] = data
        assert _fast.sha1(mm) == hashlib.sha1(data).digest()
        assert _fast.sha1_pieces(mm, 16384) == _pure.sha1_pieces(data, 16384)
    shm = shared_memory.SharedMemory(create=True, size=len(data))
    try:
        assert shm.buf is not None
        shm.buf[: len(data)] = data
        view = shm.buf[: len(data)]
        digests = _fast.sha1_pieces(view, 16384)
        assert _fast.verify_pieces(view, 16384, digests) == b"\x01" * 5
        _fast.copy_block(view, 100, b"\x00" * 16, 0, 16)
        assert _fast.verify_pieces(view, 16384, digests) == b"\x00\x01\x01\x01\x01"
        view.release()
    finally:
        shm.close()
        shm.unlink()


# ------------------------------------------------ GIL released while hashing


@pytest.mark.parametrize("kernel", ["verify_pieces", "sha1_pieces", "sha1"])
def test_hash_kernels_release_the_gil(kernel: str) -> None:
    """A Python thread runs while the kernel hashes 256 MiB.

    With a switch interval of 1000 s the interpreter never takes the GIL from
    the hashing thread by force, so the main thread can run before the hashing
    thread is done only if the kernel released the GIL itself. No timing: the
    main thread either saw the kernel still running or it did not.
    """
    piece = 1 << 20
    buf = bytes(256 << 20)  # calloc'd zero pages: no 256 MiB of RSS
    digests = hashlib.sha1(bytes(piece)).digest() * 256
    calls = {
        "verify_pieces": lambda: _fast.verify_pieces(buf, piece, digests),
        "sha1_pieces": lambda: _fast.sha1_pieces(buf, piece),
        "sha1": lambda: _fast.sha1(buf),
    }
    state: dict[str, Any] = {"done": False, "result": None}

    def hash_it() -> None:
        state["result"] = calls[kernel]()
        state["done"] = True

    old = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        t = threading.Thread(target=hash_it)
        t.start()  # returns only once the new thread gives the GIL up
        ran_while_hashing = not state["done"]
        t.join()
    finally:
        sys.setswitchinterval(old)
    assert ran_while_hashing, f"{kernel} held the GIL for the whole 256 MiB"
    expected = {
        "verify_pieces": b"\x01" * 256,
        "sha1_pieces": digests,
        "sha1": hashlib.sha1(buf).digest(),
    }
    assert state["result"] == expected[kernel]


# ------------------------------------------------------------- block assembly


@settings(max_examples=150)
@given(
    dst_len=st.integers(0, 64),
    src_len=st.integers(0, 64),
    dst_offset=st.integers(-3, 70),
    src_offset=st.integers(-3, 70),
    length=st.integers(-3, 70),
    src_kind=st.sampled_from(KINDS),
)
def test_copy_block_matches(
    dst_len: int, src_len: int, dst_offset: int, src_offset: int, length: int, src_kind: str
) -> None:
    src_bytes = bytes((i * 7 + 1) & 0xFF for i in range(src_len))
    dst_fast, dst_pure = bytearray(dst_len), bytearray(dst_len)
    fast = outcome(
        _fast.copy_block, dst_fast, dst_offset, as_kind(src_bytes, src_kind), src_offset, length
    )
    pure = outcome(
        _pure.copy_block, dst_pure, dst_offset, as_kind(src_bytes, src_kind), src_offset, length
    )
    assert fast == pure
    assert dst_fast == dst_pure
    if fast[0] == "ok":
        assert (
            dst_fast[dst_offset : dst_offset + length]
            == src_bytes[src_offset : src_offset + length]
        )


@pytest.mark.parametrize("dst_offset,src_offset", [(0, 5), (5, 0), (3, 3)])
def test_copy_block_overlapping_spans_in_one_buffer(dst_offset: int, src_offset: int) -> None:
    fast_buf = bytearray(range(32))
    pure_buf = bytearray(range(32))
    _fast.copy_block(fast_buf, dst_offset, fast_buf, src_offset, 20)
    _pure.copy_block(pure_buf, dst_offset, pure_buf, src_offset, 20)
    expected = bytearray(range(32))
    expected[dst_offset : dst_offset + 20] = bytes(range(32))[src_offset : src_offset + 20]
    assert fast_buf == pure_buf == expected


@pytest.mark.parametrize(
    "dst", [b"\x00" * 8, memoryview(bytearray(8)).toreadonly(), memoryview(bytearray(16))[::2]]
)
def test_copy_block_into_unwritable_or_strided_dst_is_rejected_alike(dst: Any) -> None:
    assert both("copy_block", dst, 0, b"ab", 0, 2) == ("raised", BufferError)


def test_copy_block_large_copy_releases_and_copies() -> None:
    src = bytes(range(256)) * 8192  # 2 MiB: above the no-GIL threshold
    dst = bytearray(len(src) + 10)
    _fast.copy_block(dst, 10, src, 0, len(src))
    assert dst[10:] == src and dst[:10] == bytes(10)


OPS = st.lists(
    st.tuples(
        st.sampled_from(["set", "has", "clear", "missing", "count", "full", "len"]),
        st.integers(-2, 40),
    ),
    max_size=60,
)


@settings(max_examples=150)
@given(nblocks=st.integers(-1, 38), ops=OPS)
def test_blockmap_matches(nblocks: int, ops: list[tuple[str, int]]) -> None:
    made, made_pure = outcome(_fast.BlockMap, nblocks), outcome(_pure.BlockMap, nblocks)
    assert made[0] == made_pure[0] and (made[0] == "ok" or made == made_pure)
    if made[0] == "raised":
        assert not 1 <= nblocks <= _fast.MAX_BLOCKS
        return
    fast, pure = _fast.BlockMap(nblocks), _pure.BlockMap(nblocks)
    for op, i in ops:
        if op in ("set", "has"):
            a, b = outcome(getattr(fast, op), i), outcome(getattr(pure, op), i)
        elif op in ("clear", "missing"):
            a, b = outcome(getattr(fast, op)), outcome(getattr(pure, op))
        elif op == "len":
            a, b = ("ok", len(fast)), ("ok", len(pure))
        else:
            a, b = ("ok", getattr(fast, op)), ("ok", getattr(pure, op))
        assert a == b, (op, i)
        assert fast.count == len(range(nblocks)) - len(fast.missing())
    assert fast.full == (fast.count == nblocks) == (fast.missing() == [])


def test_blockmap_reports_full_once_every_block_is_set() -> None:
    bm = _fast.BlockMap(4)
    assert [bm.set(i) for i in (2, 0, 2, 3)] == [True, True, False, True]
    assert not bm.full and bm.missing() == [1] and bm.count == 3
    assert bm.set(1) and bm.full and bm.missing() == []
    bm.clear()
    assert bm.count == 0 and not bm.full and bm.missing() == [0, 1, 2, 3]
    with pytest.raises(IndexError):
        bm.has(4)
    with pytest.raises(ValueError):
        _fast.BlockMap(_fast.MAX_BLOCKS + 1)


# ------------------------------------------------------------------ bitfields


@settings(max_examples=200)
@given(bits=st.binary(max_size=40), nbits=st.integers(-2, 330))
def test_bitfield_count_and_spare_bits_match(bits: bytes, nbits: int) -> None:
    count = both("bitfield_count", bits, nbits)
    spare = both("bitfield_spare_ok", bits, nbits)
    if count[0] == "ok":
        expected = sum(b.bit_count() for b in bits[: nbits // 8])
        if nbits % 8:
            expected += (bits[nbits // 8] >> (8 - nbits % 8)).bit_count()
        assert count[1] == expected
        # MSB first: the spare bits are the low bits of the last used byte
        spare_mask = [0xFF >> (nbits % 8)] if nbits % 8 else []
        tail = bits[nbits // 8 :]
        # the masks run past the tail on purpose: zip stops at the tail's end
        masks = spare_mask + [0xFF] * len(tail)
        assert spare[1] == all((b & m) == 0 for b, m in zip(tail, masks, strict=False))
    else:
        assert nbits < 0 or len(bits) < (nbits + 7) // 8


def test_bitfield_is_msb_first() -> None:
    # BEP 3: "The high bit in the first byte corresponds to piece index 0"
    assert _fast.bitfield_count(b"\x80", 1) == 1
    assert _fast.bitfield_count(b"\x01", 7) == 0
    assert _fast.bitfield_spare_ok(b"\xfe", 7)
    assert not _fast.bitfield_spare_ok(b"\xff", 7)
    assert not _fast.bitfield_spare_ok(b"\xff\x00\x01", 8)


COUNT_TYPES = {"H": (0, 0xFFFF), "i": (-(1 << 31), (1 << 31) - 1)}


@settings(max_examples=200)
@given(
    typecode=st.sampled_from(sorted(COUNT_TYPES)),
    data=st.data(),
    nbits=st.integers(-1, 100),
    ncounts=st.integers(0, 100),
    delta=st.one_of(st.integers(-3, 3), st.sampled_from([1 << 31, -(1 << 31), 0xFFFF, 1 << 64])),
)
def test_availability_add_matches(
    typecode: str, data: st.DataObject, nbits: int, ncounts: int, delta: int
) -> None:
    lo, hi = COUNT_TYPES[typecode]
    bits = data.draw(st.binary(min_size=0, max_size=14))
    start = data.draw(
        st.lists(
            st.sampled_from([lo, lo + 1, 0, 5, hi - 1, hi]), min_size=ncounts, max_size=ncounts
        )
    )
    fast, pure = array(typecode, start), array(typecode, start)
    a = outcome(_fast.availability_add, fast, bits, nbits, delta)
    b = outcome(_pure.availability_add, pure, bits, nbits, delta)
    assert a == b
    assert fast == pure
    if a[0] == "raised":
        assert fast == array(typecode, start)  # all or nothing


def test_availability_add_counts_peers() -> None:
    counts = array("H", [0] * 10)
    _fast.availability_add(counts, b"\xa0\x40", 10, 1)  # pieces 0, 2, 9
    _fast.availability_add(counts, b"\x80\x00", 10, 1)  # piece 0
    assert list(counts) == [2, 0, 1, 0, 0, 0, 0, 0, 0, 1]
    _fast.availability_add(counts, b"\xa0\x40", 10, -1)
    assert list(counts) == [1] + [0] * 9
    with pytest.raises(OverflowError):
        _fast.availability_add(counts, b"\xa0\x40", 10, -1)  # piece 2 would go below 0
    assert list(counts) == [1] + [0] * 9


@pytest.mark.parametrize(
    "counts",
    [
        bytes(20),
        array("d", [0.0] * 10),
        array("I", [0] * 10),
        memoryview(bytearray(40)).cast("i")[::2],
        memoryview(bytes(40)).cast("i"),
        "not a buffer",
    ],
    ids=["bytes", "double", "uint32", "strided", "readonly", "str"],
)
def test_availability_add_rejects_wrong_count_buffers_alike(counts: Any) -> None:
    assert both("availability_add", counts, b"\xff\xff", 10, 1) == ("raised", TypeError)


# -------------------------------------------------------------------- framing


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


@settings(max_examples=100)
@given(
    bodies=st.lists(st.binary(max_size=40), max_size=6),
    max_len=st.integers(0, 45),
    garbage=st.binary(max_size=6),
)
def test_scan_frame_is_chunking_invariant(
    bodies: list[bytes], max_len: int, garbage: bytes
) -> None:
    """Feed the stream one byte more at a time: the answer depends only on what is there."""
    stream = b"".join(frame(b) for b in bodies) + garbage
    buf = bytearray(stream)
    start = 0
    for body in bodies:
        for end in range(start, len(stream) + 1):
            got = both("scan_frame", buf, start, end, max_len)[1]
            if end - start < 4:
                assert got == -1
            elif len(body) > max_len:
                assert got == -2  # from the 4 prefix bytes alone
            elif end - start < 4 + len(body):
                assert got == -1
            else:
                assert got == len(body)
        if len(body) > max_len:
            return
        assert both("read_u32", buf, start) == ("ok", len(body))
        start += 4 + len(body)


def test_scan_frame_rejects_an_oversized_prefix_from_four_bytes() -> None:
    # 2**32-1 announced: never wait for (or buffer) 4 GiB
    assert _fast.scan_frame(b"\xff\xff\xff\xff", 0, 4, 1 << 17) == -2
    assert _fast.scan_frame(b"\x00\x00\x00\x00", 0, 4, 0) == 0  # keep-alive
    assert _fast.read_u32(b"\x12\x34\x56\x78\x9a", 1) == 0x3456789A


@settings(max_examples=200)
@given(
    n=st.integers(0, 12),
    start=st.one_of(st.integers(-2, 14), st.just(SSIZE_MAX + 1)),
    end=st.integers(-2, 14),
    max_len=st.integers(-2, 300),
    kind=st.sampled_from(KINDS),
)
def test_frame_kernel_errors_match(n: int, start: int, end: int, max_len: int, kind: str) -> None:
    buf = as_kind(bytes([0, 0, 1, 0]) + bytes(range(1, n + 1)), kind)
    result = both("scan_frame", buf, start, end, max_len)
    if not 0 <= start <= end <= n + 4 or max_len < 0:
        assert result[0] == "raised"
    both("read_u32", buf, start)
    both("read_u32", buf, end)
