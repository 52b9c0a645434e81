"""Micro-benchmarks of the native kernels against what Python would do without them.

Run: ``python -m pytest bench/ --benchmark-only`` (a throughput table is printed
at the end). Each compiled kernel is measured next to its baseline in the same
run, on the same buffers: hashlib for SHA-1, a Python loop over hashlib for
batch verification, v1 (SHA-1 per piece) and v2 (SHA-256 per 16 KiB block and
the pure tree above each piece), and for BEP 52 leaves and piece layers, slice
assignment for block copies, and the pure twin (torrent._pure) for frame
scanning.
"""

from __future__ import annotations

import hashlib
import os
from array import array
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


def _python_leaves(buf: bytes) -> bytes:
    """What BEP 52 leaves cost without the kernel: hashlib.sha256 per 16 KiB block."""
    view = memoryview(buf)
    return b"".join(
        hashlib.sha256(view[off : off + BLOCK]).digest() for off in range(0, len(buf), BLOCK)
    )


@pytest.fixture
def sha256_backend_named(request: pytest.FixtureRequest) -> Iterator[str]:
    default = _fast.sha256_backend()
    name = request.param
    if name != "python-hashlib-loop":
        if name not in _fast.sha256_backends():
            pytest.skip(f"SHA-256 backend {name} is not available here")
        _fast._set_sha256_backend(name)
    try:
        yield name
    finally:
        _fast._set_sha256_backend(default)


@pytest.mark.parametrize(
    "sha256_backend_named", ["python-hashlib-loop", "openssl", "sha-ni", "portable"], indirect=True
)
def test_merkle_leaves_64mib(
    benchmark: Any, record_mbps: Recorder, data: bytes, sha256_backend_named: str
) -> None:
    benchmark.group = "BEP 52 leaves 64 MiB (SHA-256 per 16 KiB block)"
    fn: Callable[[bytes], bytes] = (
        _python_leaves if sha256_backend_named == "python-hashlib-loop" else _fast.merkle_leaves
    )
    leaves = benchmark.pedantic(fn, args=(data,), **HEAVY)
    assert leaves == _pure.merkle_leaves(data)
    record_mbps(BIG)


def _python_piece_layer(buf: bytes, piece_length: int) -> bytes:
    """The piece layer without the kernels: hashlib leaves, the pure tree above them."""
    width = piece_length // BLOCK
    leaves = _python_leaves(buf)
    step = 32 * width
    return b"".join(
        _pure.merkle_root(leaves[off : off + step], width) for off in range(0, len(leaves), step)
    )


@pytest.mark.parametrize("piece_length", [MiB, 64 * 1024], ids=["1MiB", "64KiB"])
@pytest.mark.parametrize("impl", ["fast", "python-hashlib-loop"])
def test_piece_layer_64mib(
    benchmark: Any, record_mbps: Recorder, data: bytes, piece_length: int, impl: str
) -> None:
    benchmark.group = f"BEP 52 piece layer 64 MiB / {piece_length // 1024} KiB pieces"
    fn: Callable[[bytes, int], bytes] = (
        _fast.piece_layer if impl == "fast" else _python_piece_layer
    )
    layer = benchmark.pedantic(fn, args=(data, piece_length), **HEAVY)
    assert len(layer) == 32 * (BIG // piece_length)
    assert layer == _fast.piece_layer(data, piece_length)
    record_mbps(BIG)


def _python_verify_v2(buf: bytes, piece_length: int, roots: bytes) -> bytes:
    """v2 verification without the kernel: hashlib.sha256 per 16 KiB block in a
    Python loop, the pure tree above each piece's leaves, compared with its root."""
    view = memoryview(buf)
    width = piece_length // BLOCK
    out = bytearray()
    for k, off in enumerate(range(0, len(buf), piece_length)):
        leaves = b"".join(hashlib.sha256(view[o : o + BLOCK]).digest()
                          for o in range(off, min(off + piece_length, len(buf)), BLOCK))
        out.append(_pure.merkle_root(leaves, width) == roots[32 * k : 32 * k + 32])
    return bytes(out)


@pytest.mark.parametrize("piece_length", [MiB, 64 * 1024], ids=["1MiB", "64KiB"])
@pytest.mark.parametrize(
    "sha256_backend_named", ["python-hashlib-loop", "openssl", "sha-ni", "portable"], indirect=True
)
def test_verify_pieces_v2_64mib(
    benchmark: Any, record_mbps: Recorder, data: bytes, piece_length: int,
    sha256_backend_named: str
) -> None:
    """v2 (BEP 52) verification of 64 MiB in whole pieces, one core: the native
    batch kernel (each piece's merkle root, GIL released once) per SHA-256
    backend, against hashlib per 16 KiB block in a Python loop."""
    benchmark.group = f"verify_pieces_v2 64 MiB / {piece_length // 1024} KiB pieces"
    n = BIG // piece_length
    roots = _fast.piece_layer(data, piece_length)
    lengths = array("q", [piece_length]) * n
    widths = array("q", [piece_length // BLOCK]) * n
    if sha256_backend_named == "python-hashlib-loop":
        result = benchmark.pedantic(_python_verify_v2, args=(data, piece_length, roots), **HEAVY)
    else:
        result = benchmark.pedantic(_fast.verify_pieces_v2,
                                    args=(data, piece_length, roots, lengths, widths), **HEAVY)
    assert result == b"\x01" * n
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


# -- the block fast path: one 1 MiB piece (64 blocks) out of a receive buffer ----------

PIECE_BLOCKS = 64


def _piece_setup() -> tuple[Any, ...]:
    """A picker with one 1 MiB piece in flight to ``peer``, its 64 requests outstanding
    in a PeerProtocol, and a receive buffer holding the 64 piece messages."""
    import struct

    from torrent.picker import Picker
    from torrent.wire.handshake import encode_handshake
    from torrent.wire.messages import Unchoke, encode
    from torrent.wire.peer import PeerProtocol
    from torrent.worker import Slot

    piece = PIECE_BLOCKS * BLOCK
    picker = Picker(1, piece, piece)
    picker.add_lease([0])
    info_hash = b"\1" * 20
    proto = PeerProtocol(info_hash, b"\2" * 20, 1, piece, piece, now=0.0, we_initiated=True)
    proto.handshake()
    proto.receive_data(encode_handshake(info_hash, b"\3" * 20))
    proto.receive_data(encode(Unchoke()))
    peer = object()
    reqs = picker.pick(peer, lambda i: True, PIECE_BLOCKS,
                       lambda i: Slot(memoryview(bytearray(piece)), PIECE_BLOCKS))
    proto.send_requests(reqs, 0.0)
    block = os.urandom(BLOCK)
    buf = bytearray(b"".join(struct.pack(">IBII", 9 + BLOCK, 7, 0, b * BLOCK) + block
                             for b in range(PIECE_BLOCKS)))
    return (buf, proto, picker, peer), {}


def _take_native(buf: bytearray, proto: Any, picker: Any, peer: Any) -> None:
    full: list = []
    _pos, taken = _fast.take_blocks(buf, 0, len(buf), proto.request_table, picker.active,
                                   peer, full)
    assert taken == PIECE_BLOCKS and full


def _take_python(buf: bytearray, proto: Any, picker: Any, peer: Any) -> None:
    """What the Python path does per block (PeerConn._frames + Worker.on_block)."""
    import struct

    hdr = struct.Struct(">II")
    pos, end = 0, len(buf)
    while pos < end:
        n = _fast.scan_frame(buf, pos, end, 1 << 17)
        index, begin = hdr.unpack_from(buf, pos + 5)
        length = n - 9
        if proto.accept_block(index, begin, length):
            pd = picker.active[index]
            b = begin >> 14
            if pd.slot.blocks.set(b):
                _fast.copy_block(pd.slot.view, begin, buf, pos + 13, length)
                picker.block_arrived(pd, b, peer)
        pos += 4 + n
    assert picker.active[0].slot.blocks.full


@pytest.mark.parametrize("impl", ["take_blocks", "python"])
def test_take_one_piece(benchmark: Any, record_mbps: Recorder, impl: str) -> None:
    benchmark.group = "receive path: 64 piece messages (1 MiB) into their slot"
    fn = _take_native if impl == "take_blocks" else _take_python
    benchmark.pedantic(fn, setup=_piece_setup, rounds=200, warmup_rounds=5)
    record_mbps(PIECE_BLOCKS * BLOCK)
