"""The per-piece v2 expectation (torrent.v2pieces) against libtorrent's torrents.

libtorrent makes v2-only and hybrid torrents of files of odd sizes (empty,
smaller than a block, one piece, one piece and a byte, ...) with pieces of
16 KiB, 64 KiB and 1 MiB; every piece of the real data must hash, by the pure
twin's merkle tree over the piece's file bytes padded to its width, to the root
the expectation gives, and a flipped byte must fail exactly its piece.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import pytest
from conftest import require_module
from helpers.v2payload import BLOCK, KINDS, odd_files, piece_space, v2_torrent

from torrent import _fast, _pure, bencoding, metainfo
from torrent.v2pieces import MAX_PIECES, V2Pieces, v2_pieces

KiB = 1024
PIECES = [16 * KiB, 64 * KiB, 1024 * KiB]


@pytest.fixture(scope="module")
def lt() -> Any:
    return require_module("libtorrent")


def pure_root(data: bytes | bytearray | memoryview, width: int) -> bytes:
    """The merkle root of ``data``'s 16 KiB blocks padded with zero hashes to ``width``."""
    return _pure.merkle_root(_pure.merkle_leaves(data), width)


def failing(vp: V2Pieces, space: bytearray) -> list[int]:
    pl = vp.piece_length
    out = []
    for i in range(len(vp)):
        root, n, width = vp.expected(i)
        if pure_root(memoryview(space)[i * pl : i * pl + n], width) != root:
            out.append(i)
    return out


@pytest.mark.parametrize("piece", PIECES, ids=["16KiB", "64KiB", "1MiB"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", ["multi", "single"])
def test_every_piece_of_libtorrents_data_checks_and_a_flip_fails_only_its_piece(
        lt: Any, tmp_path: Path, piece: int, kind: str, shape: str) -> None:
    files = odd_files(piece) if shape == "multi" else {"": 2 * piece + BLOCK + 5}
    _t, meta = v2_torrent(tmp_path, files, piece, kind, seed=piece)
    vp = v2_pieces(meta)
    assert vp is not None and len(vp) == meta.num_pieces
    assert len(vp.roots) == 32 * meta.num_pieces
    # every byte of every file is in exactly one piece; the rest is pad
    assert sum(vp.lengths) == sum(files.values())
    assert all(0 < n <= piece for n in vp.lengths)
    assert all(w & (w - 1) == 0 and -(-n // BLOCK) <= w <= piece // BLOCK
               for n, w in zip(vp.lengths, vp.widths, strict=True))
    space = piece_space(meta, tmp_path)
    assert failing(vp, space) == []
    # a flipped byte of a file fails its piece and no other
    for j in sorted({0, len(vp) // 2, len(vp) - 1}):
        _root, n, _w = vp.expected(j)
        pos = j * piece + n // 2
        space[pos] ^= 0x10
        assert failing(vp, space) == [j]
        space[pos] ^= 0x10
    # pad bytes are not hashed by v2 (a hybrid's SHA-1 covers them, not this)
    pads = [f for f in meta.files if f.pad]
    if pads:
        space[pads[0].offset] ^= 1
        assert failing(vp, space) == []


def test_lengths_and_widths_follow_bep_52(lt: Any, tmp_path: Path) -> None:
    piece = 64 * KiB  # 4 blocks per piece
    _t, meta = v2_torrent(tmp_path, odd_files(piece), piece, "v2", seed=3)
    vp = v2_pieces(meta)
    assert vp is not None
    by_file = [
        # (file bytes per piece, width per piece), files in file tree order
        ([1], [1]),  # one byte: one leaf
        ([BLOCK - 1], [1]),
        ([BLOCK], [1]),
        ([BLOCK + 1], [2]),  # two leaves: a tree of 2, not of a piece's 4
        ([piece], [4]),  # exactly one piece: its pieces root, 4 leaves
        ([piece, 1], [4, 4]),  # a layer: every piece 4 wide, the last mostly zero hashes
        ([piece, piece, piece, 5 * KiB + 3], [4, 4, 4, 4]),
        ([piece, piece], [4, 4]),
    ]
    assert list(vp.lengths) == [n for ns, _ in by_file for n in ns]
    assert list(vp.widths) == [w for _, ws in by_file for w in ws]


def test_a_short_last_piece_is_padded_with_zero_hashes_not_hashes_of_zero_blocks(
        lt: Any, tmp_path: Path) -> None:
    piece = 64 * KiB
    _t, meta = v2_torrent(tmp_path, {"": 2 * piece + BLOCK + 5}, piece, "v2", seed=4)
    vp = v2_pieces(meta)
    assert vp is not None and list(vp.lengths) == [piece, piece, BLOCK + 5]
    space = piece_space(meta, tmp_path)
    root, n, width = vp.expected(2)
    last = bytes(space[2 * piece : 2 * piece + n])
    leaves = _pure.merkle_leaves(last)
    assert _pure.merkle_root(leaves, width) == root
    zero_block_leaf = hashlib.sha256(bytes(BLOCK)).digest()
    assert _pure.merkle_root(leaves + zero_block_leaf * 2, width) != root
    # and the last block is hashed at its length (5 bytes), not padded to 16 KiB
    padded = last + bytes(2 * BLOCK - len(last))
    assert _pure.merkle_root(_pure.merkle_leaves(padded), width) != root


def test_v1_torrents_and_hybrids_without_their_layers_have_none(lt: Any,
                                                                 tmp_path: Path) -> None:
    piece = 16 * KiB
    t, meta = v2_torrent(tmp_path / "big", {"x": 3 * piece, "y": 5}, piece, "hybrid", seed=5)
    assert v2_pieces(meta) is not None
    top = bencoding.decode(t.read_bytes())
    del top[b"piece layers"]
    stripped = metainfo.parse(bencoding.encode(top))
    assert stripped.hybrid and stripped.piece_layers is None
    assert v2_pieces(stripped) is None  # "x" needs its layer: SHA-1 alone
    # files of at most one piece need no layer: checked by v2 without one
    t2, _meta2 = v2_torrent(tmp_path / "small", {"x": piece, "y": 5}, piece, "hybrid", seed=6)
    top2 = bencoding.decode(t2.read_bytes())
    top2.pop(b"piece layers", None)
    small = metainfo.parse(bencoding.encode(top2))
    vp = v2_pieces(small)
    assert vp is not None and list(vp.lengths) == [piece, 5]
    v1 = dataclasses.replace(meta, hybrid=False, info_hash_v2=None, piece_layers=None)
    assert v2_pieces(v1) is None


def test_a_layout_that_is_not_v2_is_refused(lt: Any, tmp_path: Path) -> None:
    piece = 16 * KiB
    _t, meta = v2_torrent(tmp_path, {"x": 2 * piece + 1, "y": 5}, piece, "v2", seed=7)
    with pytest.raises(ValueError, match=f"more than {MAX_PIECES}"):
        v2_pieces(dataclasses.replace(meta, num_pieces=MAX_PIECES + 1))
    shifted = tuple(dataclasses.replace(f, offset=f.offset + 1) if f.path.endswith("/y") else f
                    for f in meta.files)
    with pytest.raises(ValueError, match="not at the start of piece"):
        v2_pieces(dataclasses.replace(meta, files=shifted))
    with pytest.raises(ValueError, match="the torrent has"):
        v2_pieces(dataclasses.replace(meta, num_pieces=meta.num_pieces + 1))
    with pytest.raises(IndexError):
        vp = v2_pieces(meta)
        assert vp is not None
        vp.expected(meta.num_pieces)


@pytest.mark.parametrize("piece", [16 * KiB, 64 * KiB], ids=["16KiB", "64KiB"])
@pytest.mark.parametrize("kind", KINDS)
def test_the_native_kernel_checks_libtorrents_pieces_on_every_backend(
        lt: Any, tmp_path: Path, sha256_backend: str, piece: int, kind: str) -> None:
    _t, meta = v2_torrent(tmp_path, odd_files(piece), piece, kind, seed=8)
    vp = v2_pieces(meta)
    assert vp is not None
    n = len(vp)
    buf = piece_space(meta, tmp_path)[: meta.total_size]  # a hybrid may have no tail pad
    assert _fast.verify_pieces_v2(buf, piece, vp.roots, vp.lengths, vp.widths) == b"\1" * n
    # in chunks of pieces, as the hashing workers take them
    for first, end in [(0, 3), (3, n - 1), (n - 1, n)]:
        view = memoryview(buf)[first * piece : min(len(buf), end * piece)]
        assert _fast.verify_pieces_v2(view, piece, *vp.chunk(first, end)) == b"\1" * (end - first)
    for j in (0, n // 2, n - 1):
        _root, length, _w = vp.expected(j)
        buf[j * piece + length - 1] ^= 0x80
        got = _fast.verify_pieces_v2(buf, piece, vp.roots, vp.lengths, vp.widths)
        assert got == bytes(k != j for k in range(n))
        buf[j * piece + length - 1] ^= 0x80
