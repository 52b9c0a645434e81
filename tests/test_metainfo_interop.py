"""metainfo against real libtorrent: same info-hash, files, pieces, sizes.

Torrents are made by libtorrent from real files in tmp_path and parsed by us;
torrents made by build() are loaded by libtorrent. Without libtorrent the
tests skip, except under CI=true where they fail (see conftest.require_module).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import pytest
import torrentgen as tg
from conftest import require_module

from torrent import bencoding
from torrent.metainfo import Metainfo, build, load, parse


@pytest.fixture(scope="module")
def lt() -> Any:
    return require_module("libtorrent")


@pytest.fixture(autouse=True)
def _quiet_libtorrent_deprecations() -> Any:
    # libtorrent 2.1 deprecates file_storage-based creation; the calls still work.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _write_tree(root: Path, files: dict[str, int]) -> None:
    for rel, size in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        # Deterministic, non-repeating content so piece hashes differ.
        p.write_bytes(hashlib.shake_256(rel.encode()).digest(size) if size else b"")


def _lt_create(
    lt: Any, parent: Path, name: str, piece_size: int, flags: int, **extra: Any
) -> bytes:
    fs = lt.file_storage()
    lt.add_files(fs, str(parent / name))
    ct = lt.create_torrent(fs, piece_size, flags)
    for url, tier in extra.get("trackers", []):
        ct.add_tracker(url, tier)
    if extra.get("private"):
        ct.set_priv(True)
    lt.set_piece_hashes(ct, str(parent))
    return bytes(lt.bencode(ct.generate()))


def _lt_files(ti: Any) -> list[tuple[str, int, int, bool]]:
    fs = ti.layout() if hasattr(ti, "layout") else ti.files()
    pad_flag = fs.flag_pad_file
    return [
        (fs.file_path(i), fs.file_size(i), fs.file_offset(i), bool(fs.file_flags(i) & pad_flag))
        for i in range(fs.num_files())
    ]


def _assert_same(lt: Any, path: Path, m: Metainfo) -> Any:
    ti = lt.torrent_info(str(path))
    assert m.info_hash_hex == str(ti.info_hashes().v1)
    assert m.piece_length == ti.piece_length()
    assert m.num_pieces == ti.num_pieces()
    assert m.total_size == ti.total_size()
    assert m.name == ti.name()
    assert [(f.path, f.length, f.offset, f.pad) for f in m.files] == _lt_files(ti)
    for i in (0, m.num_pieces - 1):
        assert m.piece_size(i) == ti.piece_size(i)
        assert m.piece_hash(i) == bytes(ti.hash_for_piece(i))
    return ti


TREE = {"a.bin": 100_000, "c": 5, "sub/b.bin": 30_000, "sub/deeper/e.bin": 16_384, "z.txt": 1}


def test_v1_only_multi_file(lt: Any, tmp_path: Path) -> None:
    _write_tree(tmp_path / "d", TREE)
    data = _lt_create(lt, tmp_path, "d", 16384, lt.create_torrent.v1_only)
    (tmp_path / "v1.torrent").write_bytes(data)
    m = load(tmp_path / "v1.torrent")
    assert m.multi_file and not m.hybrid
    assert not any(f.pad for f in m.files)
    _assert_same(lt, tmp_path / "v1.torrent", m)


def test_default_hybrid_with_pad_files(lt: Any, tmp_path: Path) -> None:
    _write_tree(tmp_path / "d", TREE)
    data = _lt_create(lt, tmp_path, "d", 32768, 0)
    (tmp_path / "h.torrent").write_bytes(data)
    m = load(tmp_path / "h.torrent")
    assert m.hybrid and m.multi_file
    pads = [f for f in m.files if f.pad]
    assert pads, "libtorrent 2 pads hybrid torrents: expected pad files"
    assert all("/.pad/" in f.path for f in pads)
    real = [f for f in m.files if not f.pad]
    assert all(f.offset % m.piece_length == 0 for f in real)  # BEP 52 alignment
    assert sorted((f.path, f.length) for f in real) == sorted(
        (f"d/{k}", v) for k, v in TREE.items()
    )
    _assert_same(lt, tmp_path / "h.torrent", m)
    assert m.to_json_dict()["hybrid"] is True


@pytest.mark.parametrize("hybrid", [False, True], ids=["v1", "hybrid"])
def test_single_file_short_last_piece(lt: Any, tmp_path: Path, hybrid: bool) -> None:
    size = 5 * 16384 + 123
    _write_tree(tmp_path, {"one.iso": size})
    flags = 0 if hybrid else lt.create_torrent.v1_only
    data = _lt_create(lt, tmp_path, "one.iso", 16384, flags)
    (tmp_path / "s.torrent").write_bytes(data)
    m = parse(data)
    assert not m.multi_file and m.hybrid is hybrid
    assert m.num_pieces == 6 and m.piece_size(5) == 123
    assert [f.path for f in m.files] == ["one.iso"]
    _assert_same(lt, tmp_path / "s.torrent", m)


def test_trackers_and_private_match_libtorrent(lt: Any, tmp_path: Path) -> None:
    _write_tree(tmp_path / "d", {"x": 40_000})
    trackers = [
        ("http://127.0.0.1:1/announce", 0),
        ("udp://127.0.0.1:2/announce", 0),
        ("https://127.0.0.1:3/announce", 1),
    ]
    data = _lt_create(
        lt, tmp_path, "d", 16384, lt.create_torrent.v1_only, trackers=trackers, private=True
    )
    (tmp_path / "t.torrent").write_bytes(data)
    m = parse(data)
    ti = _assert_same(lt, tmp_path / "t.torrent", m)
    assert m.private and ti.priv()
    lt_tiers: dict[int, list[str]] = {}
    for ae in ti.trackers():
        lt_tiers.setdefault(ae.tier, []).append(ae.url)
    assert [list(t) for t in m.trackers] == [lt_tiers[k] for k in sorted(lt_tiers)]


def test_built_torrent_loads_in_libtorrent(lt: Any, tmp_path: Path) -> None:
    files = [("a.bin", 20_000), ("sub/b.txt", 5), ("sub/c.dat", 30_000)]
    total = sum(n for _, n in files)
    _write_tree(tmp_path / "dir", dict(files))
    # Real piece hashes over the concatenated files, so libtorrent could verify them.
    blob = b"".join((tmp_path / "dir" / rel).read_bytes() for rel, _ in files)
    hashes = b"".join(
        hashlib.sha1(blob[i : i + tg.PIECE]).digest() for i in range(0, total, tg.PIECE)
    )
    data = build(
        name="dir",
        files=files,
        length=None,
        piece_length=tg.PIECE,
        piece_hashes=hashes,
        trackers=[["http://127.0.0.1:1/a"], ["udp://127.0.0.1:2/b"]],
        private=True,
    )
    (tmp_path / "b.torrent").write_bytes(data)
    m = parse(data)
    ti = _assert_same(lt, tmp_path / "b.torrent", m)
    assert ti.priv()
    assert [ae.url for ae in ti.trackers()] == ["http://127.0.0.1:1/a", "udp://127.0.0.1:2/b"]

    # And libtorrent's own hashing of the same files gives the same pieces.
    ours = _lt_create(lt, tmp_path, "dir", tg.PIECE, lt.create_torrent.v1_only)
    assert parse(ours).piece_hashes == m.piece_hashes


def test_unsorted_and_unknown_info_keys_hash_over_original_bytes(lt: Any, tmp_path: Path) -> None:
    pieces = tg.fake_hashes(2)
    info = (
        b"d6:pieces40:" + pieces + b"4:name5:x.bin"
        b"12:piece lengthi16384e6:lengthi20000e"
        b"6:sourcei7e10:x-whateverd1:zi1e1:ai2eee"
    )
    data = b"d8:announce22:http://127.0.0.1:1/ann4:info" + info + b"7:comment2:hie"
    assert not bencoding.scan(data).canonical
    m = parse(data)
    start, end = bencoding.scan(data).info  # type: ignore[misc]
    assert data[start:end] == info == m.info_bytes
    assert m.info_hash == hashlib.sha1(info).digest()
    assert m.info_hash != hashlib.sha1(bencoding.encode(bencoding.decode(info))).digest()
    (tmp_path / "u.torrent").write_bytes(data)
    ti = lt.torrent_info(str(tmp_path / "u.torrent"))
    assert str(ti.info_hashes().v1) == m.info_hash_hex
    assert bytes(ti.info_section()) == info
