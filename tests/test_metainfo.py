"""torrent.metainfo: validation rules, field extraction, load() and build()."""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
import torrentgen as tg

from torrent import bencoding, merkle, metainfo
from torrent.errors import InvalidTorrent
from torrent.metainfo import FileEntry, Metainfo, build, load, parse

BAD = tg.bad_cases()


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_bad_torrent_is_refused_naming_the_field(case: tg.BadCase) -> None:
    with pytest.raises(InvalidTorrent) as info:
        parse(case.data)
    msg = str(info.value)
    assert msg.startswith("invalid torrent: ")
    assert case.field in msg
    assert "\n" not in msg
    assert info.value.exit_code == 3


def test_bad_case_ids_are_unique_and_base_torrents_are_good() -> None:
    assert len({c.id for c in BAD}) == len(BAD)
    parse(bencoding.encode(tg.base_single()))
    parse(bencoding.encode(tg.base_multi()))


def test_single_file_fields() -> None:
    top = tg.base_single(length=3 * tg.PIECE + 100)
    top[b"comment"] = b"hello"
    top[b"created by"] = b"tests"
    top[b"creation date"] = 1_700_000_000
    data = bencoding.encode(top)
    m = parse(data)
    assert m.name == "file.bin"
    assert not m.multi_file and not m.hybrid and not m.private
    assert m.files == (FileEntry("file.bin", 3 * tg.PIECE + 100, 0, False, ""),)
    assert m.total_size == 3 * tg.PIECE + 100
    assert m.piece_length == tg.PIECE
    assert m.num_pieces == 4
    assert [m.piece_size(i) for i in range(4)] == [tg.PIECE] * 3 + [100]
    assert m.piece_hash(3) == tg.fake_hashes(4)[60:80]
    assert m.trackers == (("http://127.0.0.1:6969/announce",),)
    assert (m.comment, m.created_by, m.creation_date) == ("hello", "tests", 1_700_000_000)
    assert m.info_bytes == bencoding.encode(top[b"info"])
    assert m.info_hash == hashlib.sha1(m.info_bytes).digest()
    assert m.info_hash_hex == m.info_hash.hex() and len(m.info_hash_hex) == 40
    for bad in (-1, 4):
        with pytest.raises(IndexError):
            m.piece_size(bad)
        with pytest.raises(IndexError):
            m.piece_hash(bad)


def test_exact_multiple_has_full_last_piece() -> None:
    m = parse(bencoding.encode(tg.base_single(length=2 * tg.PIECE)))
    assert m.num_pieces == 2 and m.piece_size(1) == tg.PIECE


def test_multi_file_paths_and_offsets() -> None:
    m = parse(bencoding.encode(tg.base_multi()))
    assert m.multi_file
    assert [(f.path, f.length, f.offset) for f in m.files] == [
        ("dir/a.bin", 20000, 0),
        ("dir/sub/b.txt", 5, 20000),
        ("dir/sub/c.dat", 30000, 20005),
    ]
    assert m.total_size == 50005
    assert m.num_pieces == 4


def test_metainfo_is_frozen() -> None:
    m = parse(bencoding.encode(tg.base_single()))
    with pytest.raises(AttributeError):
        m.name = "other"  # type: ignore[misc]


def test_pad_files_count_in_sizes_and_may_share_paths() -> None:
    top = tg.base_multi()
    top[b"info"][b"files"] = [
        {b"length": 100, b"path": [b"a"]},
        {b"length": tg.PIECE - 100, b"path": [b".pad", b"16284"], b"attr": b"p"},
        {b"length": 10, b"path": [b"b"], b"attr": b"x"},
        {b"length": tg.PIECE - 10, b"path": [b".pad", b"16284"]},  # libtorrent's convention
        {b"length": 1, b"path": [b"padding"], b"attr": b"ph"},
    ]
    m = parse(bencoding.encode(tg.fix_pieces(top)))
    assert [(f.path, f.pad, f.offset, f.attr) for f in m.files] == [
        ("dir/a", False, 0, ""),
        ("dir/.pad/16284", True, 100, "p"),
        ("dir/b", False, tg.PIECE, "x"),
        ("dir/.pad/16284", True, tg.PIECE + 10, ""),
        ("dir/padding", True, 2 * tg.PIECE, "ph"),
    ]
    assert m.total_size == 2 * tg.PIECE + 1
    assert m.num_pieces == 3
    js = m.to_json_dict()
    assert js["files"][1] == {"path": "dir/.pad/16284", "length": tg.PIECE - 100, "pad": True}
    assert "pad" not in js["files"][0]


def test_utf8_keys_win_when_valid() -> None:
    top = tg.base_multi()
    info = top[b"info"]
    info[b"name"] = b"caf\xe9"  # latin-1: invalid UTF-8 on its own
    info[b"name.utf-8"] = "café".encode()
    info[b"files"][0][b"path"] = [b"\xff"]
    info[b"files"][0][b"path.utf-8"] = ["ü.bin".encode()]
    info[b"files"][1][b"path.utf-8"] = [b"\xff"]  # invalid: falls back to 'path'
    m = parse(bencoding.encode(top))
    assert m.name == "café"
    assert [f.path for f in m.files] == ["café/ü.bin", "café/sub/b.txt", "café/sub/c.dat"]


def test_trackers_tiers_filtering_and_fallback() -> None:
    top = tg.base_single()
    top[b"announce"] = b"http://127.0.0.1/ignored-when-list-present"
    top[b"announce-list"] = [
        [b"udp://127.0.0.1:1/a", b"wss://127.0.0.1/x", b" https://127.0.0.1/b "],
        [b"dht://nope", b"\xff\xfe"],
        [],
        [b"http://127.0.0.1:2/c", b"udp://127.0.0.1:1/a"],
    ]
    m = parse(bencoding.encode(top))
    assert m.trackers == (
        ("udp://127.0.0.1:1/a", "https://127.0.0.1/b"),
        ("http://127.0.0.1:2/c",),
    )
    top[b"announce-list"] = [[b"magnet:?x"]]
    assert parse(bencoding.encode(top)).trackers == (
        ("http://127.0.0.1/ignored-when-list-present",),
    )
    top[b"announce"] = b"ftp://127.0.0.1/"
    assert parse(bencoding.encode(top)).trackers == ()
    del top[b"announce"], top[b"announce-list"]
    assert parse(bencoding.encode(top)).trackers == ()


@pytest.mark.parametrize(("value", "expected"), [(1, True), (0, False), (2, False)])
def test_private_flag(value: int, expected: bool) -> None:
    top = tg.base_single()
    top[b"info"][b"private"] = value
    m = parse(bencoding.encode(top))
    assert m.private is expected
    assert m.to_json_dict()["private"] is expected


def test_info_hash_is_over_original_bytes_with_unsorted_and_unknown_keys() -> None:
    pieces = tg.fake_hashes(1)
    info = (
        b"d4:name3:abc12:piece lengthi16384e6:lengthi10e"
        b"6:pieces20:" + pieces + b"9:x-unknownli1ei2ee6:sourcei7ee"
    )
    data = b"d4:info" + info + b"8:announce13:http://x/annoe"
    m = parse(data)
    assert m.info_bytes == info
    assert m.info_hash == hashlib.sha1(info).digest()
    reencoded = bencoding.encode(bencoding.decode(info))
    assert reencoded != info  # so the check above really tells the two apart
    assert m.info_hash != hashlib.sha1(reencoded).digest()


def test_hybrid_is_read_through_v1_part_and_keeps_v2_fields() -> None:
    top = tg.base_single(length=2 * tg.PIECE)
    info = top[b"info"]
    info[b"meta version"] = 2
    root = merkle.layer_root(b"h" * 64, tg.PIECE)  # the root of a (made-up) layer
    info[b"file tree"] = {b"file.bin": {b"": {b"length": 2 * tg.PIECE, b"pieces root": root}}}
    top[b"piece layers"] = {root: b"h" * 64}
    data = bencoding.encode(top)
    m = parse(data)
    assert m.hybrid and m.num_pieces == 2
    assert m.info_hash == hashlib.sha1(m.info_bytes).digest()
    assert m.info_hash_v2 == hashlib.sha256(m.info_bytes).digest()
    assert m.info_hash_v2_truncated == m.info_hash_v2[:20]
    assert m.files[0].pieces_root == root
    assert b"file tree" in bencoding.decode(m.info_bytes)
    assert m.piece_layers == bencoding.encode(top[b"piece layers"])
    assert m.to_json_dict()["hybrid"] is True


def test_to_json_dict_shape() -> None:
    m = parse(bencoding.encode(tg.base_multi()))
    js = m.to_json_dict()
    assert json.loads(json.dumps(js)) == js
    assert js == {
        "info_hash": m.info_hash_hex,
        "info_hash_v2": None,
        "name": "dir",
        "total_size": 50005,
        "piece_length": tg.PIECE,
        "num_pieces": 4,
        "private": False,
        "trackers": [["http://127.0.0.1:6969/announce"]],
        "web_seeds": [],
        "files": [
            {"path": "dir/a.bin", "length": 20000},
            {"path": "dir/sub/b.txt", "length": 5},
            {"path": "dir/sub/c.dat", "length": 30000},
        ],
        "hybrid": False,
        "v2_only": False,
        "multi_file": True,
    }


def test_large_torrent_parses_fast() -> None:
    # 200,000 pieces (a 4 MB 'pieces' string); real number in bench/.
    top = tg.base_single(length=200_000 * tg.PIECE - 7)
    data = bencoding.encode(top)
    start = time.perf_counter()
    m = parse(data)
    assert time.perf_counter() - start < 5  # catches hangs only
    assert m.num_pieces == 200_000


def test_oversize_input_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    data = bencoding.encode(tg.base_single())
    monkeypatch.setattr(metainfo, "MAX_TORRENT_SIZE", len(data) - 1)
    with pytest.raises(InvalidTorrent, match="more than"):
        parse(data)


# --- load() ------------------------------------------------------------------


def test_load_reads_a_file(tmp_path: Path) -> None:
    data = bencoding.encode(tg.base_multi())
    p = tmp_path / "t.torrent"
    p.write_bytes(data)
    assert load(p) == parse(data)
    assert load(str(p)).name == "dir"


def test_load_missing_file_says_why(tmp_path: Path) -> None:
    with pytest.raises(InvalidTorrent) as info:
        load(tmp_path / "nope.torrent")
    msg = str(info.value)
    assert "nope.torrent" in msg and "No such file or directory" in msg and "\n" not in msg


def test_load_directory_says_why(tmp_path: Path) -> None:
    with pytest.raises(InvalidTorrent, match="Is a directory"):
        load(tmp_path)


def test_load_too_big(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metainfo, "MAX_TORRENT_SIZE", 1000)
    p = tmp_path / "big.torrent"
    p.write_bytes(b"x" * 1001)
    with pytest.raises(InvalidTorrent, match="larger than 1000 bytes"):
        load(p)


def test_load_garbage(tmp_path: Path) -> None:
    p = tmp_path / "g.torrent"
    p.write_bytes(b"\x00" * 100)
    with pytest.raises(InvalidTorrent, match="not valid bencode"):
        load(p)


# --- build() -----------------------------------------------------------------


def _build_multi(**over: Any) -> bytes:
    args: dict[str, Any] = {
        "name": "dir",
        "files": [("a.bin", 20000), ("sub/b.txt", 5)],
        "length": None,
        "piece_length": tg.PIECE,
        "piece_hashes": tg.fake_hashes(2),
    }
    args.update(over)
    return build(**args)


def test_build_multi_round_trips() -> None:
    data = _build_multi(
        trackers=[["http://127.0.0.1/a", "udp://127.0.0.1:2/b"], ["http://127.0.0.1/c"]],
        private=True,
        comment="c",
        creation_date=5,
    )
    m = parse(data)
    assert [(f.path, f.length, f.offset) for f in m.files] == [
        ("dir/a.bin", 20000, 0),
        ("dir/sub/b.txt", 5, 20000),
    ]
    assert m.private and m.multi_file and m.created_by == "fasttorrent"
    assert m.trackers == (("http://127.0.0.1/a", "udp://127.0.0.1:2/b"), ("http://127.0.0.1/c",))
    assert (m.comment, m.creation_date) == ("c", 5)
    assert m.piece_hashes == tg.fake_hashes(2)
    assert bencoding.scan(data).canonical


def test_build_single_is_reproducible_and_minimal() -> None:
    kw: dict[str, Any] = {
        "name": "f.iso",
        "files": None,
        "length": 3 * tg.PIECE,
        "piece_length": tg.PIECE,
        "piece_hashes": tg.fake_hashes(3),
        "trackers": [["http://127.0.0.1/a"]],
    }
    a, b = build(**kw), build(**kw)
    assert a == b
    top = bencoding.decode(a)
    assert set(top) == {b"info", b"announce", b"created by"}  # one URL: no announce-list
    assert set(top[b"info"]) == {b"name", b"piece length", b"pieces", b"length"}
    m = parse(a)
    assert m.files == (FileEntry("f.iso", 3 * tg.PIECE, 0, False),)


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"files": [("../etc/passwd", 5)]}, "info.files[0].path[0]"),
        ({"files": [("a//b", 5)]}, "info.files[0].path[1]"),
        ({"files": [("/abs", 5)]}, "info.files[0].path[0]"),
        ({"name": "a/b"}, "info.name"),
        ({"piece_hashes": tg.fake_hashes(3)}, "info.pieces"),
        ({"piece_length": 1000}, "info.piece length"),
        ({"files": [("bad\udcff", 5)]}, "cannot encode"),  # os.listdir surrogate escape
    ],
)
def test_build_refuses_an_invalid_torrent(over: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidTorrent) as info:
        _build_multi(**over)
    assert field in str(info.value)


def test_build_needs_exactly_one_of_files_and_length() -> None:
    with pytest.raises(ValueError):
        _build_multi(length=5)
    with pytest.raises(ValueError):
        _build_multi(files=None)


def test_parse_result_equality_is_by_value() -> None:
    data = bencoding.encode(tg.base_multi())
    a, b = parse(data), parse(copy.copy(data))
    assert a == b and isinstance(a, Metainfo)


@pytest.mark.parametrize("entry", [
    FileEntry("t/a.bin", 10, 0, False),
    FileEntry("t/.pad/6", 6, 10, True, attr="p"),
    FileEntry("t/run.sh", 3, 16, False, attr="x"),
    FileEntry("t/link", 0, 19, False, attr="l", symlink="t/a.bin"),
    FileEntry("t/b.bin", 1 << 40, 19, False, pieces_root=bytes(range(32))),
])
def test_a_file_entry_survives_pickling_whole(entry: FileEntry) -> None:
    """Every worker's config carries the files pickled (FileEntry.__reduce__)."""
    import pickle

    back = pickle.loads(pickle.dumps(entry))
    assert back == entry and type(back) is FileEntry
    assert (back.executable, back.hidden) == (entry.executable, entry.hidden)
