"""The native I/O thread (torrent._io.IOThread) checking BitTorrent v2 pieces.

A piece is written only if every hash it is given matches: its BEP 52 merkle
root alone (v2-only), or its SHA-1 and its root (hybrid: the two must agree).
The pieces are libtorrent's (v2-only and hybrid torrents of odd file sizes),
with their expectation from torrent.v2pieces and their segments from the
storage layer, as a download would submit them.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import require_module
from helpers.iothread import wait_all
from helpers.v2payload import BLOCK, KINDS, odd_files, piece_space, v2_torrent

from torrent import _io, _pure
from torrent.storage import Storage, layout_for
from torrent.v2pieces import v2_pieces

KiB = 1024
PIECE = 64 * KiB


@pytest.fixture(scope="module")
def lt() -> Any:
    return require_module("libtorrent")


def root_of(data: bytes | bytearray, width: int) -> bytes:
    """The reference: the pure twin's root of ``data``'s leaves padded to ``width``."""
    return _pure.merkle_root(_pure.merkle_leaves(data), width)


@pytest.mark.parametrize("piece", [16 * KiB, 64 * KiB], ids=["16KiB", "64KiB"])
@pytest.mark.parametrize("kind", KINDS)
def test_libtorrents_pieces_are_verified_and_written_and_a_flip_is_not(
        lt: Any, tmp_path: Path, piece: int, kind: str) -> None:
    _t, meta = v2_torrent(tmp_path / "src", odd_files(piece), piece, kind, seed=piece + 1)
    vp = v2_pieces(meta)
    assert vp is not None
    space = piece_space(meta, tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    layout = layout_for(meta, str(out))
    bad = {0, meta.num_pieces // 2, meta.num_pieces - 1}
    efd = os.eventfd(0, os.EFD_CLOEXEC)
    t = _io.IOThread(efd)
    slots = []
    try:
        with Storage(layout, writable=True) as st:
            st.create_files()
            for i in range(meta.num_pieces):
                size = meta.piece_size(i)
                slot = bytearray(space[i * piece : i * piece + size])
                root, n, width = vp.expected(i)
                if i in bad:
                    slot[n - 1] ^= 0x04  # the piece's last file byte
                segs, _spans = st.write_segments(i * piece, size)
                digest = meta.piece_hash(i) if kind == "hybrid" else None
                t.submit_piece(i, slot, size, digest, segs, (root, n, width))
                slots.append(slot)
            outcomes = wait_all(t, efd, meta.num_pieces)
    finally:
        assert t.close() == []
        os.close(efd)
    assert sorted(outcomes) == [(i, _io.JOB_BAD if i in bad else _io.JOB_OK, 0)
                                for i in range(meta.num_pieces)]
    for f in meta.files:
        if f.pad or not f.length:
            continue
        got = (out / f.path).read_bytes()
        for i in range(f.offset // piece, -(-(f.offset + f.length) // piece)):
            lo, hi = i * piece - f.offset, min(f.length, (i + 1) * piece - f.offset)
            want = bytes(hi - lo) if i in bad else bytes(space[i * piece : i * piece + hi - lo])
            assert got[lo:hi] == want, (f.path, i)


@pytest.mark.parametrize(
    "n, width",
    [(1, 1), (BLOCK - 1, 1), (BLOCK, 1), (BLOCK + 1, 2), (3 * BLOCK + 5, 4), (PIECE, 4),
     (1, 4), (BLOCK + 1, 4)],  # the last two: a layered file's short last piece
)
def test_odd_lengths_in_a_padded_slot(tmp_path: Path, n: int, width: int) -> None:
    data = os.urandom(n)
    slot = bytearray(data + b"\xaa" * (PIECE - n))  # pad bytes: not hashed
    root = root_of(data, width)
    t = _io.IOThread(-1)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        assert t.run_piece(1, slot, PIECE, None, [(fd, 0, 0, n)], (root, n, width)) == \
            (_io.JOB_OK, 0)
        assert os.pread(fd, PIECE, 0) == data
        # the same bytes against a tree of another width, or one byte less: bad
        other = width * 2 if width < 4 else width // 2
        if other * BLOCK >= n:
            assert t.run_piece(2, slot, PIECE, None, [], (root, n, other)) == (_io.JOB_BAD, 0)
        if n > 1:
            assert t.run_piece(3, slot, PIECE, None, [], (root, n - 1, width)) == (_io.JOB_BAD, 0)
        slot[n // 2] ^= 1
        assert t.run_piece(4, slot, PIECE, None, [(fd, PIECE, 0, n)], (root, n, width)) == \
            (_io.JOB_BAD, 0)
        assert os.fstat(fd).st_size == n  # nothing written
        assert t.close() == []
    finally:
        os.close(fd)


def test_a_hybrid_piece_must_match_both_hashes(tmp_path: Path) -> None:
    data = os.urandom(PIECE - 100)
    slot = bytearray(data + bytes(100))  # a hybrid's pad: zeros, covered by the SHA-1
    sha1 = hashlib.sha1(slot).digest()
    root = root_of(data, 4)
    wrong_root = root_of(data[:-1] + bytes([data[-1] ^ 1]), 4)
    efd = os.eventfd(0, os.EFD_CLOEXEC)
    t = _io.IOThread(efd)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        segs = [(fd, 0, 0, len(data))]
        t.submit_piece(1, slot, PIECE, sha1, segs, (wrong_root, len(data), 4))
        t.submit_piece(2, slot, PIECE, b"\0" * 20, segs, (root, len(data), 4))
        assert sorted(wait_all(t, efd, 2)) == [(1, _io.JOB_BAD, 0), (2, _io.JOB_BAD, 0)]
        assert os.fstat(fd).st_size == 0  # neither was written
        assert t.run_piece(3, slot, PIECE, sha1, segs, (wrong_root, len(data), 4)) == \
            (_io.JOB_BAD, 0)
        assert os.fstat(fd).st_size == 0
        t.submit_piece(4, slot, PIECE, sha1, segs, (root, len(data), 4))
        assert wait_all(t, efd, 1) == [(4, _io.JOB_OK, 0)]
        assert os.pread(fd, PIECE, 0) == data
        # the SHA-1 alone, as before: the root is not asked for
        t.submit_piece(5, slot, PIECE, sha1, [])
        assert wait_all(t, efd, 1) == [(5, _io.JOB_OK, 0)]
    finally:
        assert t.close() == []
        os.close(fd)
        os.close(efd)


@pytest.mark.parametrize(
    "digest, v2, match",
    [
        (None, None, "SHA-1 digest, a v2 root, or both"),
        (None, (bytes(31), 10, 1), "32 bytes"),
        (None, (bytes(33), 10, 1), "32 bytes"),
        (None, (bytes(32), 0, 1), "not from 1"),
        (None, (bytes(32), -1, 1), "not from 1"),
        (None, (bytes(32), PIECE + 1, 8), "not from 1"),
        (None, (bytes(32), BLOCK + 1, 1), "width 1"),  # two blocks in a tree of one
        (None, (bytes(32), 10, 3), "width 3"),
        (None, (bytes(32), 10, 0), "width 0"),
        (None, (bytes(32), 10, -2), "width -2"),
        (None, (bytes(32), 10, _io.MAX_V2_WIDTH * 2), "power of two"),
        (b"short", (bytes(32), 10, 1), "20 bytes"),
    ],
)
def test_v2_arguments_are_checked(digest: Any, v2: Any, match: str) -> None:
    t = _io.IOThread(-1)
    try:
        for call in (t.submit_piece, t.run_piece):
            with pytest.raises(ValueError, match=match):
                call(1, bytes(PIECE), PIECE, digest, [], v2)
        with pytest.raises((TypeError, ValueError)):
            t.submit_piece(1, bytes(PIECE), PIECE, None, [], (bytes(32), 10))  # not 3 items
        with pytest.raises(TypeError):
            t.submit_piece(1, bytes(PIECE), PIECE, None, [], ("x" * 32, 10, 1))
        assert t.pending == 0
    finally:
        assert t.close() == []


def test_the_hash_stage_counts_its_sha256_time() -> None:
    # a v2-only piece: no SHA-1 at all, so the hash stage's time is SHA-256's
    t = _io.IOThread(-1)
    data = bytes(16 << 20)
    width = len(data) // BLOCK
    t.submit_piece(1, data, len(data), None, [], (root_of(data, width), len(data), width))
    assert t.close() == [(1, _io.JOB_OK, 0)]
    hashing, writing = t.busy_seconds
    assert hashing > 0 and writing >= 0


def test_run_piece_hashes_a_v2_piece_without_the_gil() -> None:
    """A Python thread runs while run_piece hashes (no timing: with a switch interval
    of 1000 s the main thread runs before the hashing thread is done only if the
    GIL was released)."""
    data = bytes(64 << 20)  # calloc'd zero pages
    n = len(data)
    width = n // BLOCK
    root = root_of(data, width)
    sha1 = hashlib.sha1(data).digest()  # here: hashlib releases the GIL too
    t = _io.IOThread(-1)
    state: dict[str, Any] = {"done": False, "result": None}

    def hash_it() -> None:
        state["result"] = t.run_piece(1, data, n, sha1, [], (root, n, width))
        state["done"] = True

    old = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        th = threading.Thread(target=hash_it)
        th.start()
        ran_while_hashing = not state["done"]
        th.join()
    finally:
        sys.setswitchinterval(old)
        t.close()
    assert ran_while_hashing
    assert state["result"] == (_io.JOB_OK, 0)
