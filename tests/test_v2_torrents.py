"""BitTorrent v2 (BEP 52) torrents: reading them as libtorrent does, and making them.

``fasttorrent create --v2`` and ``--hybrid`` against libtorrent's own
``create_torrent`` of the same data: libtorrent loads ours and reports the same
info-hashes (v1 and v2) and files, and our info dicts and piece layers are
libtorrent's, byte for byte (so the pieces roots are the same). Then hostile
v2 torrents (piece layers of the wrong length, not hashing to their root, not a
dict; a bad pieces root): one line, exit 3, naming the file. The v2 hashing of
large files in chunks across threads agrees with hashing each file whole.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_module
from helpers.clients import FasttorrentSeed
from helpers.payload import CLI, write_tree

from torrent import bencoding, creator, merkle
from torrent.metainfo import parse

pytestmark = pytest.mark.timeout(120)

#: Bound on one CLI run.
RUN_TIMEOUT = 60

#: Odd sizes: files of one block, of several pieces (layers padded to a power of
#: two), a file ending one byte past a piece, an empty file, nested directories.
MULTI = {
    "a.bin": 100_000,
    "big.bin": 33 * 16384 + 1000,
    "sub/b.bin": 5 * 16384 + 3,
    "sub/c.txt": 7,
    "sub/deeper/one-past.bin": 32768 + 1,
    "z/empty": 0,
    "a.txt": 16384,
}


@pytest.fixture(scope="module")
def lt() -> Any:
    return require_module("libtorrent")


@pytest.fixture(autouse=True)
def _quiet_libtorrent_deprecations() -> Iterator[None]:
    # libtorrent 2.1 deprecates file_storage-based creation and files(); both still work.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=RUN_TIMEOUT,
                          check=False)


def info_json(torrent: Path) -> dict[str, Any]:
    r = run("info", str(torrent), "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def refused(torrent: Path, *words: str) -> str:
    """``info`` exits 3 with one line naming ``words``."""
    r = run("info", str(torrent))
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def lt_files(lt: Any, torrent: Path) -> list[dict[str, Any]]:
    fs = lt.torrent_info(str(torrent)).files()
    out = []
    for i in range(fs.num_files()):
        e: dict[str, Any] = {"path": fs.file_path(i), "length": fs.file_size(i)}
        if fs.file_flags(i) & fs.flag_pad_file:
            e["pad"] = True
        elif fs.file_size(i):
            e["pieces_root"] = fs.root(i).to_bytes().hex()
        out.append(e)
    return out


def lt_create(lt: Any, parent: Path, name: str, piece_length: int, kind: str) -> bytes:
    fs = lt.file_storage()
    lt.add_files(fs, str(parent / name))
    flags = lt.create_torrent.v2_only if kind == "v2" else 0
    ct = lt.create_torrent(fs, piece_length, flags=flags)
    lt.set_piece_hashes(ct, str(parent))
    return lt.bencode(ct.generate())  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["v2", "hybrid"])
@pytest.mark.parametrize(("layout", "piece_length"),
                         [("single", 16384), ("multi", 16384), ("multi", 65536)])
def test_created_torrents_are_libtorrents(lt: Any, tmp_path: Path, kind: str, layout: str,
                                          piece_length: int) -> None:
    if layout == "single":
        write_tree(tmp_path, {"one.bin": 3 * 16384 + 77}, seed=1)
        name = "one.bin"
    else:
        write_tree(tmp_path / "d", MULTI, seed=2)
        name = "d"
    ours = tmp_path / "ours.torrent"
    r = run("create", str(tmp_path / name), "-o", str(ours), f"--{kind}", "--piece-length",
            str(piece_length), "--workers", "2")
    assert r.returncode == 0, r.stderr

    # libtorrent loads ours and knows it by the same info-hashes and files
    ti = lt.torrent_info(str(ours))
    ih = ti.info_hashes()
    d = info_json(ours)
    assert d["info_hash_v2"] == str(ih.v2) and ih.has_v2()
    if kind == "hybrid":
        assert d["info_hash"] == str(ih.v1) and d["hybrid"] and not d["v2_only"]
    else:
        assert d["info_hash"] is None and not ih.has_v1() and d["v2_only"]
    keep = ("path", "length", "pad", "pieces_root")
    assert [{k: f[k] for k in keep if k in f} for f in d["files"]] == lt_files(lt, ours)
    assert d["total_size"] == ti.total_size() and d["num_pieces"] == ti.num_pieces()

    # libtorrent's own torrent of the same data: the same info dict and piece layers
    theirs = bencoding.decode(lt_create(lt, tmp_path, name, piece_length, kind))
    mine = bencoding.decode(ours.read_bytes())
    assert mine[b"info"] == theirs[b"info"]
    assert mine[b"piece layers"] == theirs[b"piece layers"]
    m = parse(ours.read_bytes())
    roots = [f.pieces_root for f in m.files if not f.pad and f.length]
    assert roots and all(len(r) == 32 for r in roots)


def test_created_torrents_verify(tmp_path: Path) -> None:
    write_tree(tmp_path / "d", MULTI, seed=3)
    for kind in ("hybrid", "v2"):
        t = tmp_path / f"{kind}.torrent"
        assert run("create", str(tmp_path / "d"), "-o", str(t), f"--{kind}",
                   "--piece-length", "16384", "-q").returncode == 0
        r = run("verify", str(t), str(tmp_path), "--json")
        assert r.returncode == 0, r.stderr
        rep = json.loads(r.stdout)
        assert rep["pieces_bad"] == 0 and rep["pieces_missing"] == 0
        assert rep["pieces_ok"] == rep["pieces_total"] > 0


def test_v2_hashes_in_chunks_and_threads_equal_whole_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = {"a": 10 * 65536 + 5, "b": 65536, "c": 3 * 65536, "d": 1}
    write_tree(tmp_path, sizes, seed=4)
    files = [(str(tmp_path / n), n, s) for n, s in sizes.items()]
    monkeypatch.setattr(creator, "CHUNK_BYTES", 2 * 65536)  # several chunks per file
    got = creator.v2_hashes(files, 32768, workers=3)
    want = [merkle.file_hashes((tmp_path / n).read_bytes(), 32768) for n in sizes]
    assert got == want
    assert got[0].piece_layer and not got[3].piece_layer


# -- hostile v2 torrents ---------------------------------------------------------------------


@pytest.fixture
def v2_top(tmp_path: Path) -> dict[bytes, Any]:
    write_tree(tmp_path / "d", {"a.bin": 5 * 16384 + 9, "b.bin": 100}, seed=5)
    t = tmp_path / "made.torrent"
    assert run("create", str(tmp_path / "d"), "-o", str(t), "--v2", "--piece-length",
               "16384", "-q").returncode == 0
    return bencoding.decode(t.read_bytes())  # type: ignore[no-any-return]


def _write(tmp_path: Path, top: dict[bytes, Any]) -> Path:
    t = tmp_path / "h.torrent"
    t.write_bytes(bencoding.encode(top))
    return t


def _root(top: dict[bytes, Any]) -> bytes:
    return top[b"info"][b"file tree"][b"a.bin"][b""][b"pieces root"]  # type: ignore[no-any-return]


def test_piece_layer_of_wrong_length(lt: Any, tmp_path: Path, v2_top: dict[bytes, Any]) -> None:
    v2_top[b"piece layers"][_root(v2_top)] += b"\0" * 32
    t = _write(tmp_path, v2_top)
    refused(t, "piece layers['d/a.bin']", "expected 192")
    with pytest.raises(RuntimeError):
        lt.torrent_info(str(t))  # libtorrent refuses it too


def test_piece_layer_not_hashing_to_its_root(lt: Any, tmp_path: Path,
                                             v2_top: dict[bytes, Any]) -> None:
    layer = bytearray(v2_top[b"piece layers"][_root(v2_top)])
    layer[40] ^= 1
    v2_top[b"piece layers"][_root(v2_top)] = bytes(layer)
    t = _write(tmp_path, v2_top)
    refused(t, "piece layers['d/a.bin']", "does not hash to the file's pieces root")
    with pytest.raises(RuntimeError):
        lt.torrent_info(str(t))


def test_piece_layers_not_a_dict(tmp_path: Path, v2_top: dict[bytes, Any]) -> None:
    v2_top[b"piece layers"] = [b"x"]
    refused(_write(tmp_path, v2_top), "piece layers", "must be a dict")


def test_piece_layer_missing(tmp_path: Path, v2_top: dict[bytes, Any]) -> None:
    del v2_top[b"piece layers"][_root(v2_top)]
    refused(_write(tmp_path, v2_top), "piece layers['d/a.bin']", "missing")
    del v2_top[b"piece layers"]
    refused(_write(tmp_path, v2_top), "piece layers['d/a.bin']", "missing")


def test_piece_layers_bad_keys_and_values(tmp_path: Path, v2_top: dict[bytes, Any]) -> None:
    v2_top[b"piece layers"][b"short"] = b"\0" * 32
    refused(_write(tmp_path, v2_top), "piece layers", "not a 32-byte pieces root")
    del v2_top[b"piece layers"][b"short"]
    v2_top[b"piece layers"][b"k" * 32] = b"\0" * 33
    refused(_write(tmp_path, v2_top), "piece layers[", "whole 32-byte hashes")


def test_piece_layer_of_unknown_root_is_ignored(tmp_path: Path,
                                                v2_top: dict[bytes, Any]) -> None:
    v2_top[b"piece layers"][b"k" * 32] = b"\0" * 64
    d = info_json(_write(tmp_path, v2_top))
    assert [f["path"] for f in d["files"] if not f.get("pad")] == ["d/a.bin", "d/b.bin"]


def test_bad_pieces_root_length(tmp_path: Path, v2_top: dict[bytes, Any]) -> None:
    v2_top[b"info"][b"file tree"][b"b.bin"][b""][b"pieces root"] = b"r" * 31
    refused(_write(tmp_path, v2_top), "info.file tree['d/b.bin'].pieces root", "32-byte")


def test_hybrid_layers_checked_when_present(tmp_path: Path) -> None:
    write_tree(tmp_path / "d", {"a.bin": 3 * 16384, "b.bin": 10}, seed=6)
    t = tmp_path / "hy.torrent"
    assert run("create", str(tmp_path / "d"), "-o", str(t), "--hybrid", "--piece-length",
               "16384", "-q").returncode == 0
    top = bencoding.decode(t.read_bytes())
    root = top[b"info"][b"file tree"][b"a.bin"][b""][b"pieces root"]
    top[b"piece layers"][root] = top[b"piece layers"][root][::-1]
    refused(_write(tmp_path, top), "piece layers['d/a.bin']", "does not hash")
    # without any piece layers (a magnet's info dict) a hybrid is read through v1
    del top[b"piece layers"]
    m = parse(bencoding.encode(top))
    assert m.hybrid and m.info_hash_v2 is not None and m.piece_layers is None


# -- a created hybrid, seeded by fasttorrent (through its v1 half), downloaded by libtorrent --


def test_libtorrent_downloads_a_created_hybrid_from_fasttorrent_seed(lt: Any,
                                                                     tmp_path: Path) -> None:
    src = tmp_path / "src" / "d"
    write_tree(src, MULTI, seed=7)
    torrent = tmp_path / "hy.torrent"
    assert run("create", str(src), "-o", str(torrent), "--hybrid", "--piece-length", "32768",
               "-q", "--workers", "1").returncode == 0
    out = tmp_path / "lt"
    with FasttorrentSeed(torrent, src.parent) as seed:
        r = subprocess.run([sys.executable, "-m", "torrent.tools.benchclients.lt_download",
                            "--peers", seed.addr, "--timeout", str(RUN_TIMEOUT - 10),
                            str(torrent), str(out)], capture_output=True, text=True,
                           check=False, timeout=RUN_TIMEOUT)
        assert r.returncode == 0, r.stderr
        summary = seed.stop_summary()
    for rel in MULTI:
        assert (out / "d" / rel).read_bytes() == (src / rel).read_bytes(), rel
    assert not (out / "d" / ".pad").exists()
    assert summary["bytes_uploaded"] >= sum(MULTI.values())
