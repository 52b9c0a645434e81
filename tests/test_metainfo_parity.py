"""Torrents as libtorrent reads them: ``fasttorrent info --json`` against ``lt.torrent_info``.

Torrents are made by libtorrent's own binding (BEP 47 pad files, symlinks,
executable files, hybrids) or, for what the binding cannot produce, by hand
with bencode; each is read by both, and the total size, the file list, the
pad flags, the symlink targets and the executable and hidden flags must
agree.  Then what we refuse and libtorrent does not (unsafe symlink targets,
names the filesystem cannot hold, hybrid halves that disagree), each a
one-line exit 3; a real download of a torrent with a pad file, an executable
and symlinks from a libtorrent seeder; and the storage side of "never write
through a link".
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torrentgen as tg
from conftest import require_module
from helpers.payload import CLI, assert_clean_after, run_cli, start_seeders, write_tree

from torrent import bencoding
from torrent.errors import InvalidTorrent, StorageError
from torrent.metainfo import MAX_NAME_BYTES, MAX_PIECE_LENGTH, parse
from torrent.storage import (
    FileSpan,
    Layout,
    Storage,
    check_output_paths,
    finish_files,
    layout_for,
    open_beneath,
)

pytestmark = pytest.mark.timeout(120)

P = tg.PIECE
#: Bound on one ``fasttorrent info``.
INFO_TIMEOUT = 60


@pytest.fixture(scope="module")
def lt() -> Any:
    return require_module("libtorrent")


@pytest.fixture(autouse=True)
def _quiet_libtorrent_deprecations() -> Iterator[None]:
    # libtorrent 2.1 deprecates file_storage-based creation and files(); both still work.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


# -- the two views ---------------------------------------------------------------------------


def info(torrent: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "info", str(torrent), "--json"], capture_output=True,
                          text=True, timeout=INFO_TIMEOUT, check=False)


def ours(torrent: Path) -> dict[str, Any]:
    """What ``fasttorrent info --json`` says, in the terms compared."""
    r = info(torrent)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    keep = ("path", "length", "pad", "symlink", "executable", "hidden")
    return {"info_hash": d["info_hash"], "total_size": d["total_size"],
            "piece_length": d["piece_length"], "num_pieces": d["num_pieces"],
            "files": [{k: f[k] for k in keep if k in f} for f in d["files"]]}


def theirs(lt: Any, torrent: Path) -> dict[str, Any]:
    """What ``lt.torrent_info`` says, in the same terms."""
    ti = lt.torrent_info(str(torrent))
    fs = ti.files()
    files = []
    for i in range(fs.num_files()):
        fl = fs.file_flags(i)
        e: dict[str, Any] = {"path": fs.file_path(i), "length": fs.file_size(i)}
        pad = bool(fl & fs.flag_pad_file)
        if pad:
            e["pad"] = True
        if fl & fs.flag_symlink:
            e["symlink"] = fs.symlink(i)
        elif fl & fs.flag_executable and not pad:
            e["executable"] = True  # a link's mode is not its target's: not compared
        if fl & fs.flag_hidden:
            e["hidden"] = True
        files.append(e)
    return {"info_hash": str(ti.info_hashes().v1), "total_size": ti.total_size(),
            "piece_length": ti.piece_length(), "num_pieces": ti.num_pieces(), "files": files}


def refused(torrent: Path, *words: str) -> str:
    """``info`` exits 3 with one line naming ``words``; returns the line."""
    r = info(torrent)
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def hand_made(tmp_path: Path, files: list[dict[bytes, Any]], name: bytes = b"d",
              fname: str = "h.torrent", **info_extra: Any) -> Path:
    """A multi-file torrent of ``files`` (pieces: fake, of the right count)."""
    total = sum(0 if b"l" in f.get(b"attr", b"") else f.get(b"length", 0) for f in files)
    info_d: dict[bytes, Any] = {b"name": name, b"piece length": P, b"files": files,
                                b"pieces": tg.fake_hashes(-(-total // P))}
    info_d.update({k.encode(): v for k, v in info_extra.items()})
    t = tmp_path / fname
    t.write_bytes(bencoding.encode({b"info": info_d}))
    return t


def link(path: list[bytes], target: list[bytes], **more: Any) -> dict[bytes, Any]:
    return {b"attr": b"l", b"path": path, b"symlink path": target,
            **{k.encode(): v for k, v in more.items()}}


# -- torrents libtorrent makes ---------------------------------------------------------------


def make_tree(root: Path) -> None:
    """A regular file, an executable, links to a file, a directory and up a level."""
    write_tree(root, {"a.bin": 40_000, "sub/run.sh": 1_800, "sub/data": 20_000}, seed=3)
    (root / "sub" / "run.sh").chmod(0o755)
    (root / "link").symlink_to("a.bin")
    (root / "dirlink").symlink_to("sub")
    (root / "sub" / "up").symlink_to("../a.bin")


def lt_make(lt: Any, parent: Path, name: str, out: Path, flags: int) -> Path:
    fs = lt.file_storage()
    lt.add_files(fs, str(parent / name), flags=lt.create_torrent.symlinks)
    ct = lt.create_torrent(fs, P, flags | lt.create_torrent.symlinks)
    lt.set_piece_hashes(ct, str(parent))
    out.write_bytes(lt.bencode(ct.generate()))
    return out


@pytest.mark.parametrize("kind", ["v1", "v1-canonical", "hybrid", "hybrid-no-tail-pad"])
def test_libtorrent_made_torrents_read_alike(lt: Any, tmp_path: Path, kind: str) -> None:
    make_tree(tmp_path / "d")
    ct = lt.create_torrent
    flags = {"v1": ct.v1_only, "v1-canonical": ct.v1_only | ct.canonical_files,
             "hybrid": 0, "hybrid-no-tail-pad": ct.canonical_files_no_tail_padding}[kind]
    t = lt_make(lt, tmp_path, "d", tmp_path / f"{kind}.torrent", flags)
    a, b = ours(t), theirs(lt, t)
    if kind.startswith("hybrid"):
        # libtorrent lists a hybrid's files from its v2 half, where a pad may sit
        # before the empty entries (links) that v1 puts ahead of it; the bytes
        # are laid out alike (the hybrid check compares every file's offset).
        a_files, b_files = a.pop("files"), b.pop("files")
        assert [f for f in a_files if not f.get("pad")] == [f for f in b_files
                                                            if not f.get("pad")]
        assert [f for f in a_files if f.get("pad")] == [f for f in b_files if f.get("pad")]
        assert a == b
        a["files"] = a_files
    else:
        assert a == b
    # what each kind is meant to exercise is really in it
    if kind.startswith("v1"):
        assert {f["path"]: f.get("symlink") for f in a["files"] if "symlink" in f} == {
            "d/link": "d/a.bin", "d/dirlink": "d/sub", "d/sub/up": "d/a.bin"}
    assert any(f.get("executable") for f in a["files"])
    assert any(f.get("pad") for f in a["files"]) is (kind != "v1")


def test_info_text_shows_links_and_executables(lt: Any, tmp_path: Path) -> None:
    make_tree(tmp_path / "d")
    t = lt_make(lt, tmp_path, "d", tmp_path / "t.torrent", lt.create_torrent.v1_only)
    r = subprocess.run([*CLI, "info", str(t)], capture_output=True, text=True,
                       timeout=INFO_TIMEOUT, check=False)
    assert r.returncode == 0, r.stderr
    # each file: "  INDEX  LENGTH  PATH[ -> TARGET][  (executable)]"
    lines = [ln.split(None, 2)[2] for ln in r.stdout.splitlines() if ln.startswith("  ")]
    assert "d/link -> d/a.bin" in lines and "d/dirlink -> d/sub" in lines
    assert "d/sub/run.sh  (executable)" in lines and "d/a.bin" in lines


# -- BEP 47 edges libtorrent's creator does not make ----------------------------------------


BITCOMET = "_____padding_file_0_if you see this file, please update to BitComet 0.85 or above____"
EDGES: dict[str, list[dict[bytes, Any]]] = {
    "pad-without-path": [{b"length": 100, b"path": [b"a"]}, {b"length": P - 100, b"attr": b"p"},
                         {b"length": 10, b"path": [b"b"]}],
    "symlink-without-length": [{b"length": 100, b"path": [b"a"]}, link([b"l"], [b"a"])],
    "symlink-with-length": [{b"length": 100, b"path": [b"a"]},
                            link([b"l"], [b"a"], length=5000)],
    "l-without-target": [{b"length": 100, b"path": [b"a"]},
                         {b"attr": b"l", b"length": 0, b"path": [b"l"]}],
    "dangling-symlink": [{b"length": 100, b"path": [b"a"]}, link([b"l"], [b"nothere"])],
    "chained-symlinks": [{b"length": 100, b"path": [b"s", b"a"]}, link([b"l1"], [b"s"]),
                         link([b"l2"], [b"l1", b"a"]), link([b"l3"], [b"l2"]),
                         link([b"bad"], [b"l1", b"zz"]), link([b"c1"], [b"c2", b"x"]),
                         link([b"c2"], [b"c1", b"x"])],
    "bitcomet-padding": [{b"length": 100, b"path": [b"a"]},
                         {b"length": P - 100, b"path": [BITCOMET.encode()]},
                         {b"length": 10, b"path": [b"b"]}],
    "sha1-hidden-executable": [{b"length": 100, b"path": [b"a"], b"sha1": b"\0" * 20,
                                b"attr": b"hx"}],
}


@pytest.mark.parametrize("case", sorted(EDGES))
def test_bep47_edges_read_alike(lt: Any, tmp_path: Path, case: str) -> None:
    t = hand_made(tmp_path, EDGES[case])
    a = ours(t)
    assert a == theirs(lt, t)
    by_path = {f["path"]: f for f in a["files"]}
    expect = {  # what each case shows, so a wrong reading by both cannot pass
        "pad-without-path": (".pad/16284", {"pad": True}),
        "symlink-without-length": ("d/l", {"symlink": "d/a", "length": 0}),
        "symlink-with-length": ("d/l", {"symlink": "d/a", "length": 0}),
        "l-without-target": ("d/l", {"length": 0}),
        "dangling-symlink": ("d/l", {"symlink": "d/l"}),  # made to point to itself
        "chained-symlinks": ("d/l3", {"symlink": "d/l2"}),
        "bitcomet-padding": ("d/" + BITCOMET, {"pad": True}),
        "sha1-hidden-executable": ("d/a", {"hidden": True, "executable": True}),
    }[case]
    entry = by_path[expect[0]]
    assert {k: entry.get(k) for k in expect[1]} == expect[1]
    if case == "chained-symlinks":
        assert by_path["d/bad"]["symlink"] == "d/bad" and by_path["d/c1"]["symlink"] == "d/c1"
    if case == "l-without-target":
        assert "symlink" not in entry


def test_trailing_whitespace_is_tolerated_other_bytes_refused(lt: Any, tmp_path: Path) -> None:
    good = bencoding.encode(tg.base_single())
    for tail in (b"\n", b" \r\n\t"):
        t = tmp_path / "ws.torrent"
        t.write_bytes(good + tail)
        assert ours(t) == theirs(lt, t)
    for tail in (b"x", b"\n\0", b"\nde"):
        t = tmp_path / "garbage.torrent"
        t.write_bytes(good + tail)
        refused(t, "not valid bencode", "trailing data")


def test_piece_length_cap_is_libtorrents(lt: Any, tmp_path: Path) -> None:
    top = tg.base_single(length=100)
    top[b"info"][b"piece length"] = MAX_PIECE_LENGTH
    t = tmp_path / "big.torrent"
    t.write_bytes(bencoding.encode(tg.fix_pieces(top)))
    assert ours(t) == theirs(lt, t)
    top[b"info"][b"piece length"] = 512 << 20
    t.write_bytes(bencoding.encode(tg.fix_pieces(top)))
    with pytest.raises(RuntimeError):
        lt.torrent_info(str(t))
    refused(t, "info.piece length", str(MAX_PIECE_LENGTH))


# -- what we refuse: unsafe symlinks, names too long -------------------------------------------


@pytest.mark.parametrize("target", [[b"..", b"..", b"etc", b"passwd"], [b"", b"etc", b"passwd"],
                                    [b"/etc/passwd"], [b"sub", b"..", b"..", b"x"]],
                         ids=["dotdot", "absolute-empty-first", "absolute-slash", "deep"])
def test_symlink_target_escaping_is_refused(tmp_path: Path, target: list[bytes]) -> None:
    t = hand_made(tmp_path, [{b"length": 100, b"path": [b"a"]}, link([b"evil"], target)])
    refused(t, "info.files[1].symlink path", "'d/evil'", "outside")
    out = tmp_path / "out"
    res = run_cli(["download", str(t), "-o", str(out), "--no-trackers",
                   "--peer", "127.0.0.1:1"], timeout=30)
    assert_clean_after(res)
    assert res.returncode == 3, res.describe()
    assert len(res.stderr.strip().splitlines()) == 1 and "'d/evil'" in res.stderr
    assert not out.exists()  # refused before anything was created


def test_name_of_256_bytes_is_refused(lt: Any, tmp_path: Path) -> None:
    ok = hand_made(tmp_path, [{b"length": 100, b"path": [b"a" * 240]}], fname="ok")
    assert ours(ok) == theirs(lt, ok)
    # 241..255 bytes: libtorrent cuts the name to 240 bytes (a file other clients
    # would not find); we keep the torrent's name, which the filesystem holds.
    full = hand_made(tmp_path, [{b"length": 100, b"path": [b"a" * MAX_NAME_BYTES]}],
                     fname="full")
    assert ours(full)["files"][0]["path"] == "d/" + "a" * MAX_NAME_BYTES
    assert theirs(lt, full)["files"][0]["path"] == "d/" + "a" * 240
    long = b"\xc3\xa9" * 128  # 256 bytes, 128 characters: the limit is in bytes
    t = hand_made(tmp_path, [{b"length": 100, b"path": [b"sub", long]}])
    refused(t, "info.files[0].path", "256 bytes", "255")
    top = tg.base_single()
    top[b"info"][b"name"] = b"n" * 256
    single = tmp_path / "single.torrent"
    single.write_bytes(bencoding.encode(top))
    refused(single, "info.name", "256 bytes")


def test_path_over_4096_bytes_is_refused(tmp_path: Path) -> None:
    deep = [b"x" * 200] * 21 + [b"f"]  # 21 * 201 + 1 + the name: over 4095
    t = hand_made(tmp_path, [{b"length": 100, b"path": deep}])
    refused(t, "info.files[0].path", "longer than the filesystem's limit of 4095")
    t2 = hand_made(tmp_path, [{b"length": 100, b"path": [b"a"]}, link([b"l"], deep)],
                   fname="l.torrent")
    refused(t2, "info.files[1].symlink path", "4095")


def test_path_fitting_alone_but_not_under_the_output_dir_is_refused(tmp_path: Path) -> None:
    deep = [b"x" * 200] * 19 + [b"f" * 100]  # 19 * 201 + 100 + 2: fits on its own
    t = hand_made(tmp_path, [{b"length": 100, b"path": deep}])
    assert info(t).returncode == 0
    out = tmp_path / ("o" * 250) / ("o" * 250)
    res = run_cli(["download", str(t), "-o", str(out), "--no-trackers",
                   "--peer", "127.0.0.1:1"], timeout=30)
    assert_clean_after(res)
    assert res.returncode == 3, res.describe()
    assert "longer than the filesystem's limit" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


# -- hybrids: the v1 and v2 halves must agree --------------------------------------------------


def lt_hybrid(lt: Any, tmp_path: Path, files: dict[str, int], name: str = "h") -> dict[bytes, Any]:
    write_tree(tmp_path / name, files, seed=5)
    t = lt_make(lt, tmp_path, name, tmp_path / "hy.torrent", 0)
    top = bencoding.decode(t.read_bytes())
    assert top[b"info"][b"meta version"] == 2 and b"pieces" in top[b"info"]
    return top  # type: ignore[no-any-return]


def _mutate_size(info: dict[bytes, Any]) -> None:
    info[b"file tree"][b"b.bin"][b""][b"length"] += 1


def _mutate_missing(info: dict[bytes, Any]) -> None:
    del info[b"file tree"][b"c.bin"]


def _mutate_extra(info: dict[bytes, Any]) -> None:
    info[b"file tree"][b"z.bin"] = {b"": {b"length": 5, b"pieces root": b"\1" * 32}}


def _mutate_renamed(info: dict[bytes, Any]) -> None:
    tree = info[b"file tree"]
    tree[b"b2.bin"] = tree.pop(b"b.bin")


def _mutate_pads(info: dict[bytes, Any]) -> None:
    # the same total, but b.bin no longer starts on a piece boundary
    files = info[b"files"]
    pads = [f for f in files if b"p" in f.get(b"attr", b"")]
    first = files.index(pads[0])
    moved = files.pop(first)
    files.insert(first + 1, moved)


def _mutate_pieces_root(info: dict[bytes, Any]) -> None:
    del info[b"file tree"][b"b.bin"][b""][b"pieces root"]


def _mutate_tree_node(info: dict[bytes, Any]) -> None:
    info[b"file tree"][b"b.bin"] = b"not a dict"


def _mutate_leaf_extra_key(info: dict[bytes, Any]) -> None:
    info[b"file tree"][b"b.bin"][b"x"] = {b"": {b"length": 1}}


def _mutate_no_tree(info: dict[bytes, Any]) -> None:
    del info[b"file tree"]


HYBRID_BREAKS = {
    "a-size": (_mutate_size, "'h/b.bin' is 30000 bytes in info.files but 30001"),
    "a-missing-file": (_mutate_missing, "info.files has 'h/c.bin', the file tree not"),
    "an-extra-file": (_mutate_extra, "the file tree has 'h/z.bin', info.files not"),
    "a-name": (_mutate_renamed, "'h/b.bin' in info.files but 'h/b2.bin' in the file tree"),
    "pad-layout": (_mutate_pads, "pad files must start each file on a piece boundary"),
    "pieces-root": (_mutate_pieces_root, "pieces root"),
    "tree-node": (_mutate_tree_node, "info.file tree['h/b.bin']"),
    "leaf-extra-key": (_mutate_leaf_extra_key, "only its '' key"),
    "no-file-tree": (_mutate_no_tree, "info.file tree: missing"),
}


@pytest.mark.parametrize("case", sorted(HYBRID_BREAKS))
def test_hybrid_halves_that_disagree_are_refused(lt: Any, tmp_path: Path, case: str) -> None:
    top = lt_hybrid(lt, tmp_path, {"a.bin": 20_000, "b.bin": 30_000, "c.bin": 5_000})
    mutate, words = HYBRID_BREAKS[case]
    mutate(top[b"info"])
    t = tmp_path / "bad.torrent"
    t.write_bytes(bencoding.encode(top))
    refused(t, words)
    with pytest.raises(RuntimeError):  # libtorrent refuses each as well
        lt.torrent_info(str(t))


def test_hybrid_single_file_name_must_match(lt: Any, tmp_path: Path) -> None:
    write_tree(tmp_path, {"one.iso": 50_000}, seed=6)
    t = lt_make(lt, tmp_path, "one.iso", tmp_path / "s.torrent", 0)
    assert ours(t) == theirs(lt, t)
    top = bencoding.decode(t.read_bytes())
    tree = top[b"info"][b"file tree"]
    tree[b"two.iso"] = tree.pop(b"one.iso")
    t.write_bytes(bencoding.encode(top))
    refused(t, "info.file tree", "'one.iso'", "'two.iso'")
    with pytest.raises(RuntimeError):
        lt.torrent_info(str(t))


def test_hybrid_without_tail_pad_and_v2_only(lt: Any, tmp_path: Path) -> None:
    top = lt_hybrid(lt, tmp_path, {"a.bin": 20_000, "b.bin": 30_000})
    files = top[b"info"][b"files"]
    assert b"p" in files[-1].get(b"attr", b""), "libtorrent 2.1 pads the tail of a hybrid"
    files.pop()  # older libtorrents made none: both forms are read
    top[b"info"][b"pieces"] = top[b"info"][b"pieces"][: 20 * -(-sum(
        f[b"length"] for f in files) // P)]
    t = tmp_path / "notail.torrent"
    t.write_bytes(bencoding.encode(top))
    assert ours(t) == theirs(lt, t)
    del top[b"info"][b"pieces"], top[b"info"][b"files"]
    t.write_bytes(bencoding.encode(top))
    # v2-only: read as libtorrent reads it (pads between files, none at the tail)
    mine, lts = ours(t), theirs(lt, t)
    assert mine.pop("info_hash") is None and lts.pop("info_hash") == "0" * 40
    assert mine == lts


# -- the storage side: never through a link ----------------------------------------------------


def one_file_layout(root: Path, rel: str = "t/a.bin", length: int = 10) -> Layout:
    return Layout([FileSpan(str(root / rel), rel, length, 0)], P, length, str(root))


def test_storage_does_not_follow_a_link_made_after_the_check(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    lay = one_file_layout(out)
    check_output_paths(lay, str(out))  # nothing there yet: passes
    (out / "t").symlink_to(elsewhere)  # ... and then a link appears
    with Storage(lay, writable=True) as st, pytest.raises(StorageError, match="symlink"):
        st.create_files()
    assert list(elsewhere.iterdir()) == []


def test_storage_does_not_follow_a_link_on_the_file_itself(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "t").mkdir(parents=True)
    (out / "t" / "a.bin").symlink_to(tmp_path / "victim")
    with Storage(one_file_layout(out), writable=True) as st, \
            pytest.raises(StorageError, match="symlink"):
        st.create_files()
    assert not (tmp_path / "victim").exists()


def test_open_beneath_allows_a_linked_output_directory(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "out").symlink_to(real)  # the output directory itself may be a link
    fd = open_beneath(str(tmp_path / "out"), "x/y/z", os.O_RDWR | os.O_CREAT, create_dirs=True)
    os.close(fd)
    assert (real / "x" / "y" / "z").is_file()


def test_preexisting_link_inside_pointing_outside_download_refused(tmp_path: Path) -> None:
    t = hand_made(tmp_path, [{b"length": 100, b"path": [b"a"]},
                             {b"length": 100, b"path": [b"s", b"b"]}])
    out, victim = tmp_path / "out", tmp_path / "victim"
    (out / "d").mkdir(parents=True)
    victim.write_bytes(b"keep")
    (out / "d" / "a").symlink_to(victim)
    res = run_cli(["download", str(t), "-o", str(out), "--no-trackers",
                   "--peer", "127.0.0.1:1"], timeout=30)
    assert_clean_after(res)
    assert res.returncode == 5, res.describe()
    assert len(res.stderr.strip().splitlines()) == 1 and "symlink" in res.stderr
    assert victim.read_bytes() == b"keep"
    assert not (out / "d" / "s").exists()


def test_finish_files_links_and_executable_bits(tmp_path: Path) -> None:
    t = hand_made(tmp_path, [{b"length": 100, b"path": [b"s", b"run"], b"attr": b"x"},
                             link([b"l"], [b"s", b"run"]), link([b"s", b"up"], [b"s"]),
                             link([b"s", b"deep", b"l2"], [b"s", b"run"])])
    m = parse(t.read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    lay = layout_for(m, str(out))
    check_output_paths(lay, str(out))
    with Storage(lay, writable=True) as st:
        st.create_files()
    assert not (out / "d" / "l").exists()  # links come last
    finish_files(lay, str(out))
    assert os.readlink(out / "d" / "l") == "s/run"
    assert os.readlink(out / "d" / "s" / "up") == "."
    assert os.readlink(out / "d" / "s" / "deep" / "l2") == "../run"
    assert os.stat(out / "d" / "s" / "run").st_mode & 0o111 == 0o111
    finish_files(lay, str(out))  # again (a resumed, complete run): kept as they are
    assert os.readlink(out / "d" / "l") == "s/run"
    # a directory on the way replaced by a link: the executable bit is not set through it
    os.rename(out / "d" / "s", out / "d" / "s.real")
    (out / "d" / "s").symlink_to(out / "d" / "s.real")
    with pytest.raises(StorageError, match="nothing is written through a link"):
        finish_files(lay, str(out))
    # a target resolving outside through a link already there: no link made
    t2 = hand_made(tmp_path, [{b"length": 100, b"path": [b"s", b"run"]},
                              link([b"l"], [b"s", b"run"])], fname="t2.torrent")
    out2 = tmp_path / "out2"
    (out2 / "d").mkdir(parents=True)
    (out2 / "d" / "s").symlink_to(tmp_path)
    with pytest.raises(StorageError, match="outside the output directory"):
        finish_files(layout_for(parse(t2.read_bytes()), str(out2)), str(out2))
    assert not os.path.lexists(out2 / "d" / "l")


def test_arena_too_small_for_one_piece_is_one_line_before_any_file(tmp_path: Path) -> None:
    top = tg.base_single(length=MAX_PIECE_LENGTH + 100)
    top[b"info"][b"piece length"] = MAX_PIECE_LENGTH
    t = tmp_path / "huge.torrent"
    t.write_bytes(bencoding.encode(tg.fix_pieces(top)))
    out = tmp_path / "out"
    code = textwrap.dedent("""
        import sys
        import torrent.shm
        torrent.shm.arena_free_bytes = lambda: (256 << 20, "MemAvailable")
        from torrent.cli import main
        sys.exit(main(sys.argv[1:]))
        """)
    r = subprocess.run([sys.executable, "-c", code,
                        "download", str(t), "-o", str(out), "--no-trackers", "--workers", "1",
                        "--peer", "127.0.0.1:9"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 8, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "one piece" in lines[0] and "256 MiB free" in lines[0]
    assert not out.exists()


def test_a_magnets_fetched_info_dict_gets_the_same_checks() -> None:
    from torrent.magnet import Magnet
    from torrent.metadata import metainfo_from_info

    def fetched(files: list[dict[bytes, Any]]) -> Any:
        info_b = bencoding.encode({b"name": b"d", b"piece length": P, b"files": files,
                                   b"pieces": tg.fake_hashes(1)})
        return metainfo_from_info(info_b, Magnet(info_hash=hashlib.sha1(info_b).digest()))

    m = fetched([{b"length": 100, b"path": [b"a"], b"attr": b"x"}, link([b"l"], [b"a"])])
    assert [(f.path, f.symlink, f.executable) for f in m.files] == [
        ("d/a", None, True), ("d/l", "d/a", False)]
    with pytest.raises(InvalidTorrent, match=r"info.files\[1\].symlink path: symlink 'd/l'"):
        fetched([{b"length": 100, b"path": [b"a"]}, link([b"l"], [b"..", b"x"])])
    with pytest.raises(InvalidTorrent, match="256 bytes"):
        fetched([{b"length": 100, b"path": [b"a" * 256]}])


# -- a real download: pad file, executable, symlinks, from a libtorrent seeder ----------------


def test_download_pad_executable_and_symlinks_from_libtorrent(lt: Any, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src / "d")
    t = lt_make(lt, src, "d", tmp_path / "d.torrent",
                lt.create_torrent.v1_only | lt.create_torrent.canonical_files)
    view = ours(t)
    assert view == theirs(lt, t)
    assert any(f.get("pad") for f in view["files"])
    workdir = tmp_path / "seedwork"
    workdir.mkdir()
    seeders = start_seeders(str(t), [str(src)], str(workdir))
    try:
        out = tmp_path / "out"
        res = run_cli(["download", str(t), "-o", str(out), "--workers", "2", "--no-trackers",
                       "--peer", seeders[0].addr, "--json"])
        assert_clean_after(res)
    finally:
        for s in seeders:
            s.stop()
    assert res.returncode == 0, res.describe()
    assert res.json["complete"] is True and res.json["hash_failures"] == 0
    for rel in ("a.bin", "sub/run.sh", "sub/data"):
        assert (out / "d" / rel).read_bytes() == (src / "d" / rel).read_bytes(), rel
    for rel in ("link", "dirlink", "sub/up"):
        assert (out / "d" / rel).is_symlink(), rel
        assert os.readlink(out / "d" / rel) == os.readlink(src / "d" / rel), rel
    assert (out / "d" / "dirlink" / "run.sh").read_bytes() == (src / "d/sub/run.sh").read_bytes()
    assert stat.S_IMODE(os.stat(out / "d" / "sub" / "run.sh").st_mode) & 0o111 == 0o111
    assert stat.S_IMODE(os.stat(out / "d" / "a.bin").st_mode) & 0o111 == 0
    assert not (out / "d" / ".pad").exists() and not (out / ".pad").exists()
