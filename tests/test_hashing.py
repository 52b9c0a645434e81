"""``hash_pieces`` (verify, resume checks, create) against hashlib, with every worker count.

With ``N`` workers this process hashes too and ``N - 1`` children (forks, or
fresh interpreters) take chunks; chunks are made small here so that every
case has several per worker.  The oracle reads each piece's bytes from the
files itself: a piece whose bytes are not all there is missing, else good
when its SHA-1 (hashlib) is the torrent's.  Cases: intact data, a flipped
byte in a piece spanning three files, a truncated file, a missing file.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from torrent import hashing, metainfo
from torrent.hashing import PIECE_BAD, PIECE_GOOD, PIECE_MISSING, hash_pieces
from torrent.storage import layout_for

PIECE = 16 << 10
#: File sizes (torrent order): pieces span file boundaries, one file is smaller
#: than a piece (so one piece spans three files), the last piece is short.
SIZES = [100_000, 5_000, 300_000, 77_777]
FILES = [f"f{k}.bin" for k in range(len(SIZES))]


def make(root: Path) -> tuple[metainfo.Metainfo, bytes]:
    rnd = random.Random(7)
    data = rnd.randbytes(sum(SIZES))
    top = root / "set"
    top.mkdir(parents=True)
    off = 0
    for name, size in zip(FILES, SIZES, strict=True):
        (top / name).write_bytes(data[off : off + size])
        off += size
    digests = b"".join(hashlib.sha1(data[o : o + PIECE]).digest()
                       for o in range(0, len(data), PIECE))
    meta = metainfo.parse(metainfo.build(name="set", files=list(zip(FILES, SIZES, strict=True)),
                                         length=None, piece_length=PIECE, piece_hashes=digests))
    return meta, data


def oracle(root: Path, meta: metainfo.Metainfo) -> bytearray:
    """Per piece, from the files as they are now: missing, good or bad (hashlib)."""
    have = bytearray()
    known = bytearray()  # 1 where the byte is on disk
    for name, size in zip(FILES, SIZES, strict=True):
        p = root / "set" / name
        got = p.read_bytes()[:size] if p.exists() else b""
        have += got + bytes(size - len(got))
        known += b"\1" * len(got) + bytes(size - len(got))
    out = bytearray()
    for i in range(meta.num_pieces):
        lo, hi = i * PIECE, min(len(have), (i + 1) * PIECE)
        if 0 in known[lo:hi]:
            out.append(PIECE_MISSING)
        elif hashlib.sha1(have[lo:hi]).digest() == meta.piece_hashes[i * 20 : i * 20 + 20]:
            out.append(PIECE_GOOD)
        else:
            out.append(PIECE_BAD)
    return out


def damage(root: Path, case: str) -> None:
    top = root / "set"
    if case == "flipped-byte-across-three-files":
        # piece 6 is bytes 98304..114687: the end of f0, all of f1, the start of f2
        raw = bytearray((top / "f1.bin").read_bytes())
        raw[2_000] ^= 0x01
        (top / "f1.bin").write_bytes(raw)
    elif case == "truncated":
        os.truncate(top / "f2.bin", 123_456)
    elif case == "missing":
        (top / "f0.bin").unlink()


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # 4 pieces per chunk: 8 chunks, several per worker (forked children inherit
    # this; fresh interpreters are sent the chunk ranges, which is what counts)
    monkeypatch.setattr(hashing, "CHUNK_BYTES", 4 * PIECE)


@pytest.mark.parametrize("case", ["intact", "flipped-byte-across-three-files", "truncated",
                                  "missing"])
@pytest.mark.parametrize(("workers", "fork"), [(1, False), (2, True), (2, False), (3, True)])
def test_verify_matches_hashlib(tmp_path: Path, case: str, workers: int, fork: bool) -> None:
    meta, _data = make(tmp_path)
    damage(tmp_path, case)
    want = oracle(tmp_path, meta)
    assert (case == "intact") == (want.count(PIECE_GOOD) == meta.num_pieces)
    res = hash_pieces(layout_for(meta, str(tmp_path)), digests=meta.piece_hashes,
                      workers=workers, fork=fork)
    assert res.status == want
    assert len(res.workers) == workers
    assert sum(w.pieces for w in res.workers) == meta.num_pieces
    # every worker did a share: this process and each child
    assert all(w.pieces > 0 for w in res.workers), res.workers


@pytest.mark.parametrize(("workers", "fork"), [(1, False), (2, True), (3, False)])
def test_digests_match_hashlib(tmp_path: Path, workers: int, fork: bool) -> None:
    meta, data = make(tmp_path)
    res = hash_pieces(layout_for(meta, str(tmp_path)), digests=None, workers=workers, fork=fork)
    assert bytes(res.digests) == meta.piece_hashes
    assert res.bytes_read == len(data)


def test_only_the_ranges_asked_are_hashed(tmp_path: Path) -> None:
    meta, _data = make(tmp_path)
    damage(tmp_path, "truncated")
    want = oracle(tmp_path, meta)
    layout = layout_for(meta, str(tmp_path))
    ranges = hashing.chunk_ranges(layout, [1, 2, *range(10, 20)])  # as a resume check asks
    assert len(ranges) >= 3
    res = hash_pieces(layout, digests=meta.piece_hashes, workers=2, ranges=ranges, fork=True)
    for i in range(meta.num_pieces):
        inside = any(a <= i < b for a, b in ranges)
        assert res.status[i] == (want[i] if inside else PIECE_BAD), i


def test_a_child_that_dies_is_an_error_not_a_hang(tmp_path: Path) -> None:
    """A hash child killed mid-run: a one-line StorageError naming it, nothing left running."""
    from torrent.errors import StorageError

    meta, _data = make(tmp_path)
    killed: list[int] = []

    def then_kill(start):  # type: ignore[no-untyped-def]
        def started(target: str, *, name: str):  # type: ignore[no-untyped-def]
            proc, conn = start(target, name=name)
            proc.kill()
            killed.append(proc.pid)
            return proc, conn
        return started

    mp = pytest.MonkeyPatch()
    # a fork when this process runs one thread, else a fresh interpreter: both die
    mp.setattr(hashing, "fork_child", then_kill(hashing.fork_child))
    mp.setattr(hashing, "start_child", then_kill(hashing.start_child))
    try:
        with pytest.raises(StorageError, match="hash worker fasttorrent-hash-1 died"):
            hash_pieces(layout_for(meta, str(tmp_path)), digests=meta.piece_hashes, workers=2,
                        fork=True)
    finally:
        mp.undo()
    assert killed
    with pytest.raises(ChildProcessError):
        os.waitpid(killed[0], os.WNOHANG)  # reaped
