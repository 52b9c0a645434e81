"""BEP 52 merkle trees: the native SHA-256 core (torrent._fast) against its pure
twin (torrent._pure) and hashlib, the tree arithmetic of torrent.merkle against
a plain reference tree, and both against the ``pieces root`` and ``piece
layers`` libtorrent writes into v2-only and hybrid torrents.
"""

from __future__ import annotations

import hashlib
import random
import sys
import threading
import warnings
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_module
from helpers.kernelparity import both

from torrent import _fast, _pure, merkle
from torrent.bencoding import decode

KiB = 1024
BLOCK = 16 * KiB
SHA256_BACKENDS = _fast.sha256_backends()


def data_of(n: int, seed: int = 0) -> bytes:
    return random.Random(seed * 1_000_003 + n).randbytes(n)


# ------------------------------------------------------------- a plain reference


def reference_tree(data: bytes, width: int) -> list[list[bytes]]:
    """Every level of the tree over ``data``'s blocks padded with zero leaves to
    ``width``, leaves first: BEP 52 written out the long way, zeros hashed."""
    leaves = [hashlib.sha256(data[i : i + BLOCK]).digest() for i in range(0, len(data), BLOCK)]
    assert len(leaves) <= width
    level = leaves + [bytes(32)] * (width - len(leaves))
    levels = [level]
    while len(level) > 1:
        level = [hashlib.sha256(level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
        levels.append(level)
    return levels


def pow2_at_least(n: int) -> int:
    w = 1
    while w < n:
        w *= 2
    return w


# -------------------------------------------------------------------- SHA-256


def test_sha256_backends_are_found_and_the_best_is_default() -> None:
    assert "portable" in SHA256_BACKENDS
    assert "openssl" in SHA256_BACKENDS, "libcrypto could not be loaded with dlopen"
    assert _fast.sha256_backend() == SHA256_BACKENDS[0]


def test_set_sha256_backend_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown SHA-256 backend"):
        _fast._set_sha256_backend("sha512")
    assert _fast.sha256_backend() == SHA256_BACKENDS[0]


@pytest.mark.parametrize(
    "n", [0, 1, 3, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 2047, 2048, 16384, 65537]
)
def test_sha256_block_and_padding_boundaries(sha256_backend: str, n: int) -> None:
    data = bytes((i * 131 + 7) & 0xFF for i in range(n))
    assert _fast.sha256(data) == hashlib.sha256(data).digest() == _pure.sha256(data)


def test_sha256_known_answers(sha256_backend: str) -> None:
    # FIPS 180-2 appendix B.1 and B.3 (one million 'a')
    assert _fast.sha256(b"abc").hex() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    assert _fast.sha256(b"a" * 1_000_000).hex() == (
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")


# ------------------------------------------------------------ kernel parity

SIZES = [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK, 3 * BLOCK + 7, 64 * KiB, 64 * KiB + 1,
         5 * 64 * KiB - 3, 9 * 64 * KiB]


@pytest.mark.parametrize("n", SIZES)
def test_merkle_leaves_match_pure_and_hashlib(sha256_backend: str, n: int) -> None:
    data = data_of(n)
    kind, leaves = both("merkle_leaves", data)
    assert kind == "ok"
    nblocks = -(-n // BLOCK)
    assert leaves == b"".join(reference_tree(data, pow2_at_least(nblocks))[0][:nblocks])
    assert len(leaves) == 32 * nblocks
    # any contiguous buffer: a view at an odd offset, a bytearray
    assert _fast.merkle_leaves(memoryview(b"x" + data)[1:]) == leaves
    assert _fast.merkle_leaves(bytearray(data)) == leaves


@pytest.mark.parametrize("piece_length", [BLOCK, 2 * BLOCK, 64 * KiB])
@pytest.mark.parametrize("n", SIZES)
def test_piece_layer_matches_pure_and_the_reference_tree(
    sha256_backend: str, piece_length: int, n: int
) -> None:
    data = data_of(n, 1)
    kind, layer = both("piece_layer", data, piece_length)
    assert kind == "ok"
    npieces = -(-n // piece_length)
    assert len(layer) == 32 * npieces
    per_piece = piece_length // BLOCK
    # the piece layer is the full tree's level at the height of a piece
    if npieces:
        levels = reference_tree(data, pow2_at_least(npieces) * per_piece)
        height = per_piece.bit_length() - 1
        assert layer == b"".join(levels[height][:npieces])


def test_merkle_root_matches_pure_on_random_inputs(sha256_backend: str) -> None:
    rng = random.Random(52)
    for _ in range(200):
        level = rng.choice([0, 0, 1, 2, 6])
        count = 1 << rng.randrange(0, 8)
        n = rng.randrange(0, count + 1)
        leaves = rng.randbytes(32 * n)
        kind, root = both("merkle_root", leaves, count, level)
        assert kind == "ok" and len(root) == 32


def test_merkle_root_pads_with_the_roots_of_zero_subtrees() -> None:
    z = [bytes(32)]
    for _ in range(10):
        z.append(hashlib.sha256(z[-1] + z[-1]).digest())
    a, b, c = (hashlib.sha256(bytes([i])).digest() for i in range(3))
    h = lambda x, y: hashlib.sha256(x + y).digest()  # noqa: E731
    for mod in (_fast, _pure):
        assert mod.merkle_root(a, 1) == a
        assert mod.merkle_root(b"", 1) == z[0]
        assert mod.merkle_root(b"", 256) == z[8]
        assert mod.merkle_root(a + b, 2) == h(a, b)
        assert mod.merkle_root(a + b + c, 4) == h(h(a, b), h(c, z[0]))
        assert mod.merkle_root(a, 4) == h(h(a, z[0]), z[1])
        # nodes at height 3: the missing ones are roots of 8 zero leaves
        assert mod.merkle_root(a + b + c, 4, 3) == h(h(a, b), h(c, z[3]))
        assert mod.merkle_root(a, 2, 5) == h(a, z[5])
    # the deepest tree allowed is padded without hashing 2**48 zeros
    assert _fast.merkle_root(b"", 1 << _fast.MAX_MERKLE_DEPTH) == (
        _pure.merkle_root(b"", 1 << _pure.MAX_MERKLE_DEPTH))


BAD_PIECE_LENGTHS = [0, -1, 1, BLOCK - 1, BLOCK + 1, 3 * BLOCK, BLOCK // 2,
                     BLOCK << 21, 1 << 62, 1 << 63, -(1 << 63) - 1, "16384", None]


@pytest.mark.parametrize("piece_length", BAD_PIECE_LENGTHS)
def test_piece_layer_refuses_bad_piece_lengths_alike(piece_length: Any) -> None:
    kind, exc = both("piece_layer", b"x" * 100, piece_length)
    assert kind == "raised" and exc in (ValueError, OverflowError, TypeError)


@pytest.mark.parametrize(
    "leaves, count, level",
    [
        (b"", 0, 0),  # count not a power of two
        (b"", -4, 0),
        (bytes(32), 3, 0),
        (bytes(33), 2, 0),  # not whole digests
        (bytes(31), 1, 0),
        (bytes(96), 2, 0),  # more digests than count
        (bytes(32), 1, -1),  # level out of range
        (bytes(32), 1, 49),
        (bytes(32), 1 << 48, 1),  # too deep for that level
        (bytes(32), 1 << 49, 0),
        (bytes(32), 1 << 62, 0),
        (bytes(32), 1, 1 << 40),  # does not fit a C int
        (bytes(32), "1", 0),
        ("abc", 1, 0),  # not a byte buffer of the right kind
        (None, 1, 0),
    ],
)
def test_merkle_root_refuses_bad_arguments_alike(leaves: Any, count: Any, level: Any) -> None:
    kind, exc = both("merkle_root", leaves, count, level)
    assert kind == "raised" and exc in (ValueError, OverflowError, TypeError)


def test_speedups_hand_out_the_chosen_twins() -> None:
    from torrent import _speedups

    names = ("sha256", "merkle_leaves", "merkle_root", "piece_layer", "verify_pieces_v2")
    impl = _fast if _speedups.IMPLEMENTATION == "native" else _pure
    for name in names:
        assert getattr(_speedups, name) is getattr(impl, name)


@pytest.mark.parametrize("kernel", ["sha256", "merkle_leaves", "piece_layer", "merkle_root",
                                    "verify_pieces_v2"])
def test_merkle_kernels_release_the_gil(kernel: str) -> None:
    """A Python thread runs while the kernel hashes (as test_fast_parity does for SHA-1).

    With a switch interval of 1000 s the interpreter never takes the GIL from
    the hashing thread by force, so the main thread runs before the hashing
    thread is done only if the kernel released the GIL itself. No timing.
    """
    buf = bytes(128 << 20)  # calloc'd zero pages
    zero_piece = _pure.merkle_root(hashlib.sha256(bytes(BLOCK)).digest() * 64, 64)
    leaves = bytes(32 << 20)  # 2**20 zero leaves
    calls = {
        "sha256": lambda: _fast.sha256(buf),
        "merkle_leaves": lambda: _fast.merkle_leaves(buf),
        "piece_layer": lambda: _fast.piece_layer(buf, 1 << 20),
        "merkle_root": lambda: _fast.merkle_root(leaves, 1 << 20),
        "verify_pieces_v2": lambda: _fast.verify_pieces_v2(
            buf, 1 << 20, zero_piece * 128, array("q", [1 << 20]) * 128, array("q", [64]) * 128),
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
    assert ran_while_hashing, f"{kernel} held the GIL for its whole input"
    zero_leaf = hashlib.sha256(bytes(BLOCK)).digest()
    expected = {
        "sha256": hashlib.sha256(buf).digest(),
        "merkle_leaves": zero_leaf * 8192,
        "piece_layer": _pure.merkle_root(zero_leaf * 64, 64) * 128,
        "merkle_root": _pure.merkle_root(b"", 1 << 20),
        "verify_pieces_v2": b"\1" * 128,
    }
    assert state["result"] == expected[kernel]


# ------------------------------------------------------ verify_pieces_v2 parity


def v2_expectation(sizes: list[int], piece_length: int, seed: int
                   ) -> tuple[bytearray, bytes, array[int], array[int]]:
    """Files of ``sizes`` laid out as a v2 torrent (each from a piece boundary,
    its last piece's rest pad: filled with 0xAA here, which v2 does not hash),
    and each piece's expected root, file bytes and width, from torrent.merkle."""
    buf = bytearray()
    roots = b""
    lengths, widths = array("q"), array("q")
    for k, n in enumerate(sizes):
        data = data_of(n, seed + k)
        fh = merkle.file_hashes(data, piece_length)
        npieces = -(-n // piece_length)
        if npieces == 1:
            roots += fh.pieces_root
            widths.append(pow2_at_least(-(-n // BLOCK)))
        else:
            roots += fh.piece_layer
            widths.extend([piece_length // BLOCK] * npieces)
        lengths.extend(min(piece_length, n - i * piece_length) for i in range(npieces))
        buf += data
        if n % piece_length and k < len(sizes) - 1:
            buf += b"\xaa" * (piece_length - n % piece_length)
    return buf, roots, lengths, widths


V2_LAYOUTS = [
    [1], [BLOCK - 1], [BLOCK], [BLOCK + 1], [64 * KiB], [64 * KiB + 1],
    [5, 3 * 64 * KiB + 7, BLOCK, 2 * 64 * KiB, 100_000, 64 * KiB - 1],
]


@pytest.mark.parametrize("piece_length", [BLOCK, 64 * KiB])
@pytest.mark.parametrize("sizes", V2_LAYOUTS, ids=lambda s: "-".join(map(str, s)))
def test_verify_pieces_v2_matches_pure_and_fails_exactly_a_flipped_piece(
    sha256_backend: str, piece_length: int, sizes: list[int]
) -> None:
    buf, roots, lengths, widths = v2_expectation(sizes, piece_length, 20)
    count = len(lengths)
    assert both("verify_pieces_v2", buf, piece_length, roots, lengths, widths) == (
        "ok", b"\1" * count)
    for j in sorted({0, count // 2, count - 1}):
        pos = j * piece_length + lengths[j] - 1  # the last file byte of the piece
        buf[pos] ^= 0x01
        ok = bytes(k != j for k in range(count))
        assert both("verify_pieces_v2", buf, piece_length, roots, lengths, widths) == ("ok", ok)
        buf[pos] ^= 0x01
    # a pad byte is not hashed
    if len(buf) > lengths[0] and lengths[0] < piece_length:
        buf[lengths[0]] ^= 0xFF
        assert both("verify_pieces_v2", buf, piece_length, roots, lengths, widths) == (
            "ok", b"\1" * count)
    # the first piece checked against the last one's root
    if count > 1 and roots[:32] != roots[-32:]:
        swapped = roots[-32:] + roots[32:]
        assert both("verify_pieces_v2", buf, piece_length, swapped, lengths, widths) == (
            "ok", b"\0" + b"\1" * (count - 1))


def test_verify_pieces_v2_takes_any_int64_buffer_and_an_empty_batch() -> None:
    buf, roots, lengths, widths = v2_expectation([BLOCK + 5], BLOCK, 21)
    assert both("verify_pieces_v2", buf, BLOCK, roots, array("l", lengths),
                memoryview(widths)) == ("ok", b"\1\1")
    assert both("verify_pieces_v2", memoryview(b"x" + buf)[1:], BLOCK, bytearray(roots),
                lengths, widths) == ("ok", b"\1\1")
    assert both("verify_pieces_v2", b"", BLOCK, b"", array("q"), array("q")) == ("ok", b"")


def q(*items: int) -> array[int]:
    return array("q", items)


BAD_V2_ARGS = [
    (bytes(BLOCK), BLOCK, bytes(31), q(BLOCK), q(1)),  # roots: not 32 per piece
    (bytes(BLOCK), BLOCK, bytes(64), q(BLOCK), q(1)),
    (bytes(BLOCK), BLOCK, bytes(32), q(), q(1)),  # lengths: not one per piece
    (bytes(BLOCK), BLOCK, bytes(32), q(1), q(1, 1)),
    (bytes(BLOCK), BLOCK, bytes(32), q(0), q(1)),  # a piece of no file byte
    (bytes(BLOCK), BLOCK, bytes(32), q(-1), q(1)),
    (bytes(100), BLOCK, bytes(32), q(101), q(1)),  # more than the piece holds
    (bytes(BLOCK), BLOCK, bytes(32), q(BLOCK), q(2)),  # wider than a piece
    (bytes(2 * BLOCK), 2 * BLOCK, bytes(32), q(BLOCK + 1), q(1)),  # narrower
    (bytes(4 * BLOCK), 4 * BLOCK, bytes(32), q(BLOCK), q(3)),  # not a power of 2
    (bytes(4 * BLOCK), 4 * BLOCK, bytes(32), q(BLOCK), q(0)),
    (bytes(4 * BLOCK), 4 * BLOCK, bytes(32), q(BLOCK), q(-4)),
    (bytes(BLOCK), 3 * BLOCK, bytes(32), q(BLOCK), q(1)),  # bad piece length
    (bytes(BLOCK), 0, bytes(32), q(BLOCK), q(1)),
    (bytes(BLOCK), BLOCK << 21, bytes(32), q(BLOCK), q(1)),
    (bytes(BLOCK), BLOCK, bytes(32), array("i", [BLOCK]), q(1)),  # not int64
    (bytes(BLOCK), BLOCK, bytes(32), q(BLOCK), array("Q", [1])),
    (bytes(BLOCK), BLOCK, bytes(32), q(BLOCK).tobytes(), q(1)),
    (bytes(BLOCK), BLOCK, bytes(32), [BLOCK], q(1)),
    (bytes(BLOCK), BLOCK, bytes(32), None, q(1)),
    (bytes(BLOCK), BLOCK, bytes(32), memoryview(q(BLOCK, 0, 1, 0))[::2], q(1)),
    (bytes(BLOCK), BLOCK, None, q(BLOCK), q(1)),
    ("abc", BLOCK, bytes(32), q(3), q(1)),
]


@pytest.mark.parametrize("buf, piece_length, roots, lengths, widths", BAD_V2_ARGS,
                         ids=[str(i) for i in range(len(BAD_V2_ARGS))])
def test_verify_pieces_v2_refuses_bad_arguments_alike(
    buf: Any, piece_length: Any, roots: Any, lengths: Any, widths: Any
) -> None:
    kind, exc = both("verify_pieces_v2", buf, piece_length, roots, lengths, widths)
    assert kind == "raised" and exc in (ValueError, TypeError, BufferError, OverflowError)


# --------------------------------------------------------------- torrent.merkle

PIECES = [BLOCK, 64 * KiB]
FILE_SIZES = [1, BLOCK - 1, BLOCK, BLOCK + 1, 64 * KiB, 64 * KiB + 1, 3 * 64 * KiB + 100,
              4 * 64 * KiB, 5 * 64 * KiB - 1]


@pytest.mark.parametrize("piece_length", PIECES)
@pytest.mark.parametrize("n", FILE_SIZES)
def test_file_hashes_match_the_reference_tree(piece_length: int, n: int) -> None:
    data = data_of(n, 2)
    fh = merkle.file_hashes(data, piece_length)
    nblocks = -(-n // BLOCK)
    levels = reference_tree(data, pow2_at_least(nblocks))
    assert fh.pieces_root == levels[-1][0]
    if n <= piece_length:
        assert fh.piece_layer == b""
        assert merkle.layer_length(n, piece_length) == 0
    else:
        height = (piece_length // BLOCK).bit_length() - 1
        npieces = -(-n // piece_length)
        assert fh.piece_layer == b"".join(levels[height][:npieces])
        assert merkle.layer_length(n, piece_length) == len(fh.piece_layer) == 32 * npieces
        assert merkle.check_piece_layer(fh.piece_layer, fh.pieces_root, n, piece_length)


def test_an_empty_file_has_no_root_and_no_layer() -> None:
    assert merkle.file_hashes(b"", BLOCK) == merkle.FileHashes(b"", b"")
    assert merkle.layer_length(0, BLOCK) == 0
    assert merkle.piece_count(0, BLOCK) == 0


@pytest.mark.parametrize("n", [3 * 64 * KiB + 100, 4 * 64 * KiB, 2 * 64 * KiB + 1])
def test_check_piece_layer_refuses_a_layer_that_does_not_hash_to_the_root(n: int) -> None:
    pl = 64 * KiB
    fh = merkle.file_hashes(data_of(n, 3), pl)
    for pos in (0, len(fh.piece_layer) - 1, len(fh.piece_layer) // 2):
        bad = bytearray(fh.piece_layer)
        bad[pos] ^= 1
        assert not merkle.check_piece_layer(bad, fh.pieces_root, n, pl)
    bad_root = bytes([fh.pieces_root[0] ^ 0x80]) + fh.pieces_root[1:]
    assert not merkle.check_piece_layer(fh.piece_layer, bad_root, n, pl)


@pytest.mark.parametrize(
    "layer_len, file_length, piece_length, match",
    [
        (32 * 3, 3 * BLOCK + 1, BLOCK, "expected 128"),  # one hash short
        (32 * 5, 3 * BLOCK + 1, BLOCK, "expected 128"),  # one too many
        (32 * 4 + 1, 3 * BLOCK + 1, BLOCK, "expected 128"),
        (0, 3 * BLOCK + 1, BLOCK, "expected 128"),
        (32, BLOCK, BLOCK, "has no piece layer"),  # a one-piece file has none
        (32, 0, BLOCK, "has no piece layer"),
        (64, 2 * BLOCK, BLOCK + 1, "power of two"),
        (64, 2 * BLOCK, BLOCK // 2, "power of two"),
        (64, 2 * BLOCK, merkle.MAX_PIECE_LENGTH * 2, "power of two"),
        (64, merkle.MAX_FILE_LENGTH + 1, BLOCK, "file length"),
        (64, -1, BLOCK, "file length"),
    ],
)
def test_check_piece_layer_refuses_hostile_lengths(
    layer_len: int, file_length: int, piece_length: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        merkle.check_piece_layer(bytes(layer_len), bytes(32), file_length, piece_length)


def test_check_piece_layer_refuses_a_root_of_the_wrong_size() -> None:
    fh = merkle.file_hashes(data_of(3 * BLOCK, 4), BLOCK)
    with pytest.raises(ValueError, match="pieces root must be 32 bytes"):
        merkle.check_piece_layer(fh.piece_layer, fh.pieces_root[:31], 3 * BLOCK, BLOCK)


def test_the_largest_file_allowed_is_bounded_before_hashing() -> None:
    # a torrent may claim a file of 4 EiB; its layer length is computed, not allocated
    n = merkle.MAX_FILE_LENGTH
    assert merkle.layer_length(n, merkle.MAX_PIECE_LENGTH) == 32 * (n // merkle.MAX_PIECE_LENGTH)
    with pytest.raises(ValueError, match="expected"):
        merkle.check_piece_layer(bytes(64), bytes(32), n, merkle.MAX_PIECE_LENGTH)


@pytest.mark.parametrize("piece_length", PIECES)
@pytest.mark.parametrize("n", FILE_SIZES)
def test_check_piece_accepts_each_piece_and_refuses_a_flipped_bit(
    piece_length: int, n: int
) -> None:
    data = data_of(n, 5)
    fh = merkle.file_hashes(data, piece_length)
    npieces = merkle.piece_count(n, piece_length)
    expected = (
        [fh.piece_layer[32 * i : 32 * i + 32] for i in range(npieces)]
        if fh.piece_layer else [fh.pieces_root]
    )
    for i in range(npieces):
        piece = data[i * piece_length : (i + 1) * piece_length]
        assert merkle.check_piece(piece, i, expected[i], n, piece_length)
        bad = bytearray(piece)
        bad[len(bad) // 2] ^= 4
        assert not merkle.check_piece(bad, i, expected[i], n, piece_length)
        # a peer that sends one byte more or less than the piece holds
        assert not merkle.check_piece(piece + b"\0", i, expected[i], n, piece_length)
        assert not merkle.check_piece(piece[:-1], i, expected[i], n, piece_length)
        # another piece's hash
        if npieces > 1:
            other = expected[(i + 1) % npieces]
            assert not merkle.check_piece(piece, i, other, n, piece_length)


def test_check_piece_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="piece 2 is not in a file of 2 pieces"):
        merkle.check_piece(b"x", 2, bytes(32), 2 * BLOCK, BLOCK)
    with pytest.raises(ValueError, match="piece -1"):
        merkle.check_piece(b"x", -1, bytes(32), 2 * BLOCK, BLOCK)
    with pytest.raises(ValueError, match="expected hash must be 32 bytes"):
        merkle.check_piece(b"x", 0, bytes(20), 2 * BLOCK, BLOCK)
    with pytest.raises(ValueError, match="a piece holds 1 to"):
        merkle.piece_hash(b"", 2 * BLOCK, BLOCK)
    with pytest.raises(ValueError, match="a piece holds 1 to"):
        merkle.piece_hash(bytes(BLOCK + 1), 2 * BLOCK, BLOCK)


# ------------------------------------------------------------ libtorrent parity

LT_PIECES = [16 * KiB, 64 * KiB, 1024 * KiB]


def _lt_files(piece: int) -> dict[str, int]:
    """Files of odd sizes: empty, one byte, one block, one block and a byte,
    whole pieces, several pieces and a short last one."""
    return {
        "a-empty": 0,
        "b-one-byte": 1,
        "c-block": BLOCK,
        "d-block-plus-one": BLOCK + 1,
        "e-two-pieces": 2 * piece,
        "f-short-last": 3 * piece + 5 * KiB + 3,
        "g-piece-plus-one": piece + 1,
    }


def _lt_create(lt: Any, root: Path, piece: int, flags: int) -> bytes:
    with warnings.catch_warnings():  # libtorrent 2.1 deprecates file_storage creation
        warnings.simplefilter("ignore", DeprecationWarning)
        fs = lt.file_storage()
        lt.add_files(fs, str(root))
        ct = lt.create_torrent(fs, piece, flags)
        lt.set_piece_hashes(ct, str(root.parent))
        return bytes(lt.bencode(ct.generate()))


def _walk(tree: dict[bytes, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, dict]]:
    for name, node in tree.items():
        if b"" in node:
            yield "/".join((*prefix, name.decode())), node[b""]
        else:
            yield from _walk(node, (*prefix, name.decode()))


@pytest.mark.parametrize("piece", LT_PIECES, ids=["16KiB", "64KiB", "1MiB"])
@pytest.mark.parametrize("hybrid", [False, True], ids=["v2-only", "hybrid"])
def test_roots_and_layers_equal_libtorrents(tmp_path: Path, piece: int, hybrid: bool) -> None:
    lt = require_module("libtorrent")
    root = tmp_path / "payload"
    root.mkdir()
    files = _lt_files(piece)
    contents = {}
    for i, (name, size) in enumerate(files.items()):
        contents[name] = data_of(size, 10 + i)
        (root / name).write_bytes(contents[name])
    flags = 0 if hybrid else lt.create_torrent.v2_only
    meta = decode(_lt_create(lt, root, piece, flags))
    info = meta[b"info"]
    assert info[b"meta version"] == 2 and info[b"piece length"] == piece
    assert (b"pieces" in info) == hybrid
    layers = meta.get(b"piece layers", {})
    seen = {}
    assert info[b"name"] == b"payload"
    for path, leaf in _walk(info[b"file tree"]):
        seen[path] = leaf
    assert set(seen) == set(files)
    used_layers = set()
    for name, size in files.items():
        leaf = seen[name]
        assert leaf[b"length"] == size
        ours = merkle.file_hashes(contents[name], piece)
        if size == 0:
            assert b"pieces root" not in leaf and ours.pieces_root == b""
            continue
        assert ours.pieces_root == leaf[b"pieces root"], name
        theirs = layers.get(ours.pieces_root, b"")
        assert ours.piece_layer == theirs, name
        assert len(theirs) == merkle.layer_length(size, piece)
        if theirs:
            used_layers.add(ours.pieces_root)
            assert merkle.check_piece_layer(theirs, leaf[b"pieces root"], size, piece)
    # every layer libtorrent wrote is one we computed: none left unexplained
    assert used_layers == set(layers)
    assert used_layers, "the file set must include files larger than a piece"
