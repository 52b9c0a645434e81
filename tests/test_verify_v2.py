"""Verifying BitTorrent v2 data: ``hash_pieces`` and ``fasttorrent verify`` on v2-only
torrents (by their BEP 52 merkle roots) and hybrids (by their SHA-1 digests and
their roots: a piece is good only if both match).

The torrents are libtorrent's (and ``fasttorrent create --v2 / --hybrid``'s) of
files of odd sizes. The oracle reads each piece's bytes from the files itself:
missing when a byte of it is not there, else good when its merkle root (the
pure twin's) is the expected one, and for a hybrid its SHA-1 (hashlib) too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import require_module
from helpers.payload import CLI, RUN_TIMEOUT, lt_create, write_tree
from helpers.v2payload import BLOCK, KINDS, odd_files, v2_torrent

from torrent import _pure, hashing, metainfo
from torrent.hashing import PIECE_BAD, PIECE_GOOD, PIECE_MISSING, hash_pieces
from torrent.storage import layout_for
from torrent.v2pieces import V2Pieces, v2_pieces

PIECE = 16 * 1024
CASES = ["intact", "flipped", "truncated", "missing"]


@pytest.fixture(scope="module")
def lt() -> Any:
    return require_module("libtorrent")


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # 2 pieces per chunk: 7 chunks of the 14 pieces of odd_files, enough that this
    # process takes one before 3 workers' children can take the rest (forked
    # children inherit this; fresh interpreters are sent the chunk ranges)
    monkeypatch.setattr(hashing, "CHUNK_BYTES", 2 * PIECE)


def oracle(meta: metainfo.Metainfo, root: Path) -> bytearray:
    """Per piece, from the files as they are now: missing, good or bad."""
    vp = v2_pieces(meta)
    assert vp is not None
    pl = meta.piece_length
    have = bytearray(meta.num_pieces * pl)
    known = bytearray(b"\1" * len(have))  # pads are always there
    for f in meta.files:
        if f.pad or not f.length:
            continue
        p = root / f.path
        got = p.read_bytes()[: f.length] if p.exists() else b""
        have[f.offset : f.offset + len(got)] = got
        known[f.offset + len(got) : f.offset + f.length] = bytes(f.length - len(got))
    out = bytearray()
    for i in range(meta.num_pieces):
        lo, hi = i * pl, i * pl + meta.piece_size(i)
        expected, n, width = vp.expected(i)
        good = _pure.merkle_root(_pure.merkle_leaves(have[lo : lo + n]), width) == expected
        if meta.hybrid:
            good = good and hashlib.sha1(have[lo:hi]).digest() == meta.piece_hash(i)
        out.append(PIECE_MISSING if 0 in known[lo:hi] else PIECE_GOOD if good else PIECE_BAD)
    return out


def damage(meta: metainfo.Metainfo, root: Path, case: str) -> None:
    """Flip a byte of the file of several pieces, cut it short, or remove it."""
    f = next(f for f in meta.files if f.path.endswith("h-short-last"))
    path = root / f.path
    if case == "flipped":
        raw = bytearray(path.read_bytes())
        raw[PIECE + 5] ^= 0x01  # its second piece
        path.write_bytes(raw)
    elif case == "truncated":
        os.truncate(path, 2 * PIECE + 100)
    elif case == "missing":
        path.unlink()


# -- hash_pieces: the resume check's and verify's engine ---------------------------------------


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("workers", "fork"), [(1, False), (2, True), (2, False), (3, True)])
def test_hash_pieces_matches_the_oracle(lt: Any, tmp_path: Path, kind: str, case: str,
                                        workers: int, fork: bool) -> None:
    _t, meta = v2_torrent(tmp_path, odd_files(PIECE), PIECE, kind, seed=11)
    damage(meta, tmp_path, case)
    want = oracle(meta, tmp_path)
    assert (case == "intact") == (want.count(PIECE_GOOD) == meta.num_pieces)
    digests = meta.piece_hashes if kind == "hybrid" else None
    res = hash_pieces(layout_for(meta, str(tmp_path)), digests=digests, workers=workers,
                      fork=fork, v2=v2_pieces(meta))
    assert res.status == want
    assert len(res.workers) == workers
    assert sum(w.pieces for w in res.workers) == meta.num_pieces
    assert all(w.pieces > 0 for w in res.workers), res.workers


@pytest.mark.usefixtures("small_chunks")
def test_a_hybrid_piece_is_good_only_if_both_hashes_match(lt: Any, tmp_path: Path) -> None:
    _t, meta = v2_torrent(tmp_path, odd_files(PIECE), PIECE, "hybrid", seed=12)
    vp = v2_pieces(meta)
    assert vp is not None
    n = meta.num_pieces
    layout = layout_for(meta, str(tmp_path))
    # piece 3's root is wrong, its SHA-1 right; piece 7's SHA-1 wrong, its root right
    roots = bytearray(vp.roots)
    roots[3 * 32] ^= 1
    lying_v2 = dataclasses.replace(vp, roots=bytes(roots))
    digests = bytearray(meta.piece_hashes)
    digests[7 * 20] ^= 1
    for fork in (True, False):
        res = hash_pieces(layout, digests=bytes(digests), workers=2, fork=fork, v2=lying_v2)
        assert [i for i in range(n) if res.status[i] != PIECE_GOOD] == [3, 7]
    # each half alone sees only its own lie
    res = hash_pieces(layout, digests=meta.piece_hashes, workers=1, v2=lying_v2)
    assert [i for i in range(n) if res.status[i] != PIECE_GOOD] == [3]
    res = hash_pieces(layout, digests=bytes(digests), workers=1)
    assert [i for i in range(n) if res.status[i] != PIECE_GOOD] == [7]
    # a pad byte is the SHA-1's (libtorrent's hybrid pads are zeros), not v2's
    pad = next(f for f in meta.files if f.pad)
    owner = next(f for f in meta.files if not f.pad and f.offset + f.length == pad.offset)
    with open(tmp_path / owner.path, "ab") as fh:
        fh.write(b"\xff" * pad.length)  # the file grows into where its pad would be
    res = hash_pieces(layout, digests=meta.piece_hashes, workers=1, v2=vp)
    assert res.status == bytearray([PIECE_GOOD] * n)  # pads are read as zeros, never from disk


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("kind", KINDS)
def test_only_the_ranges_asked_are_hashed(lt: Any, tmp_path: Path, kind: str) -> None:
    _t, meta = v2_torrent(tmp_path, odd_files(PIECE), PIECE, kind, seed=13)
    damage(meta, tmp_path, "flipped")
    want = oracle(meta, tmp_path)
    layout = layout_for(meta, str(tmp_path))
    ranges = hashing.chunk_ranges(layout, [0, 1, *range(8, meta.num_pieces)])
    digests = meta.piece_hashes if kind == "hybrid" else None
    res = hash_pieces(layout, digests=digests, workers=2, ranges=ranges, fork=True,
                      v2=v2_pieces(meta))
    for i in range(meta.num_pieces):
        inside = any(a <= i < b for a, b in ranges)
        assert res.status[i] == (want[i] if inside else PIECE_BAD), i


def test_an_expectation_of_another_piece_count_is_refused(lt: Any, tmp_path: Path) -> None:
    _t, meta = v2_torrent(tmp_path, {"x": 3 * PIECE, "y": 1}, PIECE, "v2", seed=14)
    vp = v2_pieces(meta)
    assert vp is not None and len(vp) == 4
    short = V2Pieces(vp.piece_length, vp.roots[:64], vp.lengths[:2], vp.widths[:2])
    with pytest.raises(ValueError, match="2 pieces"):
        hash_pieces(layout_for(meta, str(tmp_path)), digests=None, workers=1, v2=short)


# -- fasttorrent verify ---------------------------------------------------------------------


def verify(torrent: Path, directory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "verify", str(torrent), str(directory), *extra],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)


def ft_create_kind(parent: Path, kind: str, piece: int) -> Path:
    out = parent / f"ft-{kind}.torrent"
    r = subprocess.run([*CLI, "create", str(parent / "payload"), "-o", str(out), f"--{kind}",
                        "--piece-length", str(piece), "-q", "--workers", "1"],
                       capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.parametrize("maker", ["libtorrent", "fasttorrent"])
@pytest.mark.parametrize("kind", KINDS)
def test_verify_cli_good_corrupt_and_missing(lt: Any, tmp_path: Path, kind: str,
                                             maker: str) -> None:
    piece = 64 * 1024
    t, meta = v2_torrent(tmp_path, odd_files(piece), piece, kind, seed=15)
    if maker == "fasttorrent":
        t = ft_create_kind(tmp_path, kind, piece)
        meta = metainfo.load(t)
    v1 = lt_create(tmp_path, "payload", tmp_path / "v1.torrent", piece, v1_only=True)
    r = verify(v1, tmp_path, "--json")
    assert r.returncode == 0, r.stderr
    v1_keys = set(json.loads(r.stdout))
    # good data: every piece good, the same report as a v1 torrent's
    r = verify(t, tmp_path, "--json", "--workers", "2")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert set(d) == v1_keys
    assert d["complete"] is True and d["pieces_ok"] == d["pieces_total"] == meta.num_pieces
    assert d["pieces_bad"] == d["pieces_missing"] == 0
    assert d["bytes_checked"] == meta.total_size
    assert d["info_hash_v2"] == meta.info_hash_v2_hex
    assert d["info_hash"] == (meta.info_hash_hex if kind == "hybrid" else None)
    assert all(f["complete"] for f in d["files"])
    # one flipped byte: exactly its piece is bad, in its file
    f = next(f for f in meta.files if f.path.endswith("h-short-last"))
    path = tmp_path / f.path
    raw = bytearray(path.read_bytes())
    raw[2 * piece + 1234] ^= 0x20
    path.write_bytes(raw)
    bad = f.offset // piece + 2
    r = verify(t, tmp_path, "--json")
    assert r.returncode == 6, r.stderr
    d = json.loads(r.stdout)
    assert d["bad_pieces"] == [bad] and d["missing_pieces"] == [] and not d["complete"]
    entry = next(e for e in d["files"] if e["path"] == f.path)
    assert entry["bad_pieces"] == [bad] and not entry["complete"]
    assert [e["path"] for e in d["files"] if not e["complete"]] == [f.path]
    r = verify(t, tmp_path)
    assert r.returncode == 6
    assert f"incomplete: {f.path}: bad pieces {bad}" in r.stdout
    assert r.stderr.strip().splitlines() == [
        f"fasttorrent: incomplete: 1 bad and 0 missing of {meta.num_pieces} pieces"]
    # a missing file: its pieces are missing, the others as they were
    raw[2 * piece + 1234] ^= 0x20
    path.write_bytes(raw)
    g = next(f for f in meta.files if f.path.endswith("g-piece-plus-one"))
    (tmp_path / g.path).unlink()
    r = verify(t, tmp_path, "--json")
    assert r.returncode == 6, r.stderr
    d = json.loads(r.stdout)
    assert d["missing_pieces"] == [g.offset // piece, g.offset // piece + 1]
    assert d["bad_pieces"] == []
    entry = next(e for e in d["files"] if e["path"] == g.path)
    assert entry["exists"] is False and not entry["complete"]


def test_verify_cli_single_file_v2(lt: Any, tmp_path: Path) -> None:
    write_tree(tmp_path, {"payload": 3 * PIECE + BLOCK // 2}, seed=16)
    t = lt_create(tmp_path, "payload", tmp_path / "one.torrent", PIECE, v1_only=False,
                  v2_only=True)
    r = verify(t, tmp_path, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["complete"] and d["pieces_ok"] == 4
    os.truncate(tmp_path / "payload", 3 * PIECE + 1)
    d = json.loads(verify(t, tmp_path, "--json").stdout)
    assert d["missing_pieces"] == [3] and d["pieces_ok"] == 3
