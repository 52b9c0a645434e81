"""Selective download and ``--shard`` against real libtorrent seeders on loopback.

Every download is the real ``fasttorrent download`` subprocess. The payload's
files have odd sizes, so most pieces span two files: selecting ``b.bin`` alone
wants two pieces that it shares with ``a.bin`` and ``c.bin`` (boundary pieces,
whose bytes of the unselected files go to the parts file).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_module
from helpers.payload import CLI, TorrentPayload, make_torrent_payload, partial_copy, run_cli
from helpers.swarm import Seeder, start_seeders

from torrent.magnet import magnet_uri
from torrent.ports import free_port
from torrent.storage import parts_path

pytestmark = pytest.mark.timeout(180)

PIECE_LEN = 32 * 1024
#: 263,001 bytes, 9 pieces: a 0-99,999, b 100,000-149,999 (pieces 3-4, both shared with a
#: neighbour), c 150,000-220,000, d/e.txt and d/f.txt at the end.
FILES = {"a.bin": 100_000, "b.bin": 50_000, "c.bin": 70_001, "d/e.txt": 3000,
         "d/f.txt": 40_000}
#: Indices as `fasttorrent info --json` gives them (the creator sorts the paths).
INDEX = {"a.bin": 0, "b.bin": 1, "c.bin": 2, "d/e.txt": 3, "d/f.txt": 4}
#: Bound on one download subprocess (a normal one takes about a second).
DOWNLOAD_TIMEOUT = 60
#: A run that cannot finish gives up after this long without progress.
STALL = "3"


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> TorrentPayload:
    return make_torrent_payload(tmp_path_factory.mktemp("select"), FILES, seed=5353,
                                piece_length=PIECE_LEN)


@pytest.fixture(scope="module")
def seeder(payload: TorrentPayload,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeder]:
    require_module("libtorrent")
    work = tmp_path_factory.mktemp("seedwork")
    (s,) = start_seeders(payload.torrent, [str(payload.root)], str(work))
    yield s
    s.stop()


def src(payload: TorrentPayload, rel: str) -> bytes:
    return (payload.root / "payload" / rel).read_bytes()


def files_under(out: Path) -> set[str]:
    """The data files written (the state directory left out)."""
    return {p.relative_to(out).as_posix() for p in out.rglob("*")
            if p.is_file() and ".fasttorrent" not in p.parts}


def download(payload: TorrentPayload, out: Path, *flags: str,
             torrent: str | None = None) -> Any:
    r = run_cli(["download", torrent or payload.torrent, "-o", str(out), "--json",
                 "--workers", "2", "--stall-timeout", "20", "--no-dht", *flags],
                timeout=DOWNLOAD_TIMEOUT)
    assert r.returncode == 0, r.describe()
    return r.json


def test_only_the_selected_file_is_written_and_its_boundary_pieces_verify(
        payload: TorrentPayload, seeder: Seeder, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = download(payload, out, "--peer", seeder.addr, "--select", str(INDEX["b.bin"]))
    assert res["complete"]
    assert files_under(out) == {"payload/b.bin"}
    assert (out / "payload" / "b.bin").read_bytes() == src(payload, "b.bin")
    sel = res["selection"]
    assert sel["files"] == [1] and sel["selected_files"] == 1
    assert sel["selected_bytes"] == FILES["b.bin"]
    assert sel["pieces_wanted"] == 2 and sel["wanted_bytes"] == 2 * PIECE_LEN
    assert res["bytes_downloaded"] == 2 * PIECE_LEN  # the two boundary pieces, nothing more
    # the neighbours' bytes of those pieces are in the parts file, at their torrent offsets
    parts = Path(parts_path(str(out), payload.meta.info_hash))
    with open(parts, "rb") as f:
        f.seek(3 * PIECE_LEN)
        assert f.read(100_000 - 3 * PIECE_LEN) == src(payload, "a.bin")[3 * PIECE_LEN:]
        f.seek(150_000)
        assert f.read(5 * PIECE_LEN - 150_000) == src(payload, "c.bin")[:5 * PIECE_LEN - 150_000]
    # the journal and the saved selection go at the end; the parts file stays
    assert sorted(os.listdir(out / ".fasttorrent")) == [parts.name]


def test_include_and_exclude_pick_files_by_path(payload: TorrentPayload, seeder: Seeder,
                                                tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = download(payload, out, "--peer", seeder.addr, "--include", "payload/d/*",
                   "--include", "*/a.bin", "--exclude", "*/f.txt")
    assert files_under(out) == {"payload/a.bin", "payload/d/e.txt"}
    for rel in ("a.bin", "d/e.txt"):
        assert (out / "payload" / rel).read_bytes() == src(payload, rel)
    assert res["selection"]["files"] == [INDEX["a.bin"], INDEX["d/e.txt"]]


def test_a_magnet_with_so_downloads_the_files_it_selects(payload: TorrentPayload,
                                                         seeder: Seeder, tmp_path: Path) -> None:
    out = tmp_path / "out"
    uri = magnet_uri(payload.meta, trackers=(), peers=[("127.0.0.1", seeder.port)],
                     select_only=[INDEX["c.bin"], INDEX["d/f.txt"]])
    res = download(payload, out, torrent=uri)
    assert files_under(out) == {"payload/c.bin", "payload/d/f.txt"}
    for rel in ("c.bin", "d/f.txt"):
        assert (out / "payload" / rel).read_bytes() == src(payload, rel)
    assert res["selection"]["files"] == [2, 4]


def test_a_resumed_run_keeps_the_selection(payload: TorrentPayload, seeder: Seeder,
                                           tmp_path: Path) -> None:
    require_module("libtorrent")
    # A seeder without piece 5 (c.bin's middle): a run selecting c cannot finish.
    partial = tmp_path / "partial"
    partial_copy(Path(payload.torrent), payload.root, partial, keep=set(range(9)) - {5})
    (half,) = start_seeders(payload.torrent, [str(partial)], str(tmp_path))
    out = tmp_path / "out"
    try:
        r = run_cli(["download", payload.torrent, "-o", str(out), "--json", "--workers", "1",
                     "--stall-timeout", STALL, "--no-dht", "--peer", half.addr,
                     "--select", str(INDEX["c.bin"])], timeout=DOWNLOAD_TIMEOUT)
    finally:
        half.stop()
    assert r.returncode == 6, r.describe()  # incomplete: piece 5 never came
    first = r.json
    assert not first["complete"] and first["selection"]["files"] == [2]
    # Again, from a full seeder and without --select: the same file, and only it.
    res = download(payload, out, "--peer", seeder.addr)
    assert res["complete"] and res["selection"]["files"] == [2]
    assert res["pieces_resumed"] >= 1
    assert files_under(out) == {"payload/c.bin"}
    assert (out / "payload" / "c.bin").read_bytes() == src(payload, "c.bin")
    assert res["bytes_downloaded"] < 3 * PIECE_LEN  # what the first run had was kept


def test_a_different_selection_on_resume_replaces_the_saved_one(
        payload: TorrentPayload, seeder: Seeder, tmp_path: Path) -> None:
    out = tmp_path / "out"
    download(payload, out, "--peer", seeder.addr, "--select", str(INDEX["b.bin"]))
    # b done; now ask for a and b: a's bytes of the shared piece 3 were in the parts file,
    # so that piece is checked in its new place (the file a.bin) and fetched again
    res = download(payload, out, "--peer", seeder.addr, "--select", "0-1")
    assert res["complete"] and res["selection"]["files"] == [0, 1]
    assert files_under(out) == {"payload/a.bin", "payload/b.bin"}
    for rel in ("a.bin", "b.bin"):
        assert (out / "payload" / rel).read_bytes() == src(payload, rel)


def sha1_tree(root: Path) -> dict[str, str]:
    return {rel: hashlib.sha1((root / rel).read_bytes()).hexdigest()
            for rel in sorted(files_under(root))}


@pytest.mark.parametrize("source", ["torrent", "magnet"])
def test_three_shards_into_one_directory_join_into_the_whole_torrent(
        payload: TorrentPayload, seeder: Seeder, tmp_path: Path, source: str) -> None:
    out = tmp_path / "shared"
    # a magnet: each shard fetches the metadata and keeps it at the same path
    torrent = payload.torrent if source == "torrent" else magnet_uri(
        payload.meta, trackers=(), peers=[("127.0.0.1", seeder.port)])
    ports = [free_port() for _ in range(3)]
    procs = []
    try:
        for i in range(3):
            # each shard knows the seeder and the other shards, as peers
            peers = [seeder.addr] + [f"127.0.0.1:{ports[j]}" for j in range(3) if j != i]
            args = [*CLI, "download", torrent, "-o", str(out), "--shard", f"{i}/3",
                    "--port", str(ports[i]), "--json", "--workers", "1", "--no-dht",
                    "--stall-timeout", "20"]
            for p in peers:
                args += ["--peer", p]
            procs.append(subprocess.Popen(args, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        results = []
        for p in procs:
            stdout, stderr = p.communicate(timeout=DOWNLOAD_TIMEOUT)
            assert p.returncode == 0, stderr
            results.append(json.loads(stdout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    wanted = [r["selection"]["pieces_wanted"] for r in results]
    assert wanted == [3, 3, 3]  # pieces [0,3), [3,6), [6,9)
    for k, r in enumerate(results):
        assert r["complete"] and r["selection"]["shard"] == [k, 3]
        assert r["bytes_downloaded"] == r["selection"]["wanted_bytes"]  # its share only
    assert sum(r["selection"]["wanted_bytes"] for r in results) == payload.meta.total_size
    assert sha1_tree(out) == sha1_tree(payload.root)
    v = subprocess.run([*CLI, "verify", payload.torrent, str(out), "--json"],
                       capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT, check=False)
    assert v.returncode == 0, v.stdout + v.stderr
    assert json.loads(v.stdout)["pieces_ok"] == payload.n


def test_a_shard_with_no_piece_is_complete_at_once(payload: TorrentPayload,
                                                   tmp_path: Path) -> None:
    # 9 pieces in 10 shards: shard 0 owns none; it needs no peer at all
    res = download(payload, tmp_path / "out", "--shard", "0/10")
    assert res["complete"] and res["selection"]["pieces_wanted"] == 0
    assert res["bytes_downloaded"] == 0


@pytest.mark.parametrize("how", ["download", "seed"])
def test_boundary_pieces_are_checked_and_served_from_the_parts_file(
        payload: TorrentPayload, seeder: Seeder, tmp_path: Path, how: str) -> None:
    require_module("libtorrent")
    import signal

    import libtorrent as lt
    from helpers.ltpeer import LtPeer

    out = tmp_path / "out"
    download(payload, out, "--peer", seeder.addr, "--select", str(INDEX["b.bin"]))
    # Then serve b.bin, with no peer of our own: either the same download again, seeding
    # (the journal went with the first run's end, so both pieces are checked on disk), or
    # `seed`, which reads the files not there from the parts file. Either way the
    # neighbours' bytes of pieces 3 and 4 come from the parts file, and a libtorrent
    # leecher that wants b.bin only gets both pieces from us.
    with LtPeer("leecher") as lt_peer:
        atp = lt.add_torrent_params()
        atp.ti = lt.torrent_info(payload.torrent)
        atp.save_path = str(tmp_path / "leech")
        atp.file_priorities = [0, 1, 0, 0, 0]
        atp.flags &= ~lt.torrent_flags.auto_managed
        atp.flags &= ~lt.torrent_flags.paused
        h = lt_peer.ses.add_torrent(atp)
        # we dial the leecher (and retry): it is listening already
        common = ["--workers", "1", "--no-dht", "--peer", lt_peer.addr]
        args = (["download", payload.torrent, "-o", str(out), "--json", "--seed-time", "60",
                 "--select", str(INDEX["b.bin"])] if how == "download"
                else ["seed", payload.torrent, str(out)])
        proc = subprocess.Popen([*CLI, *args, *common], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            def got_both() -> bool:
                st = h.status()
                return bool(st.pieces and st.pieces[3] and st.pieces[4])

            lt_peer.wait_until(got_both, DOWNLOAD_TIMEOUT, "given pieces 3 and 4 by us")
            h.flush_cache()
            leeched = tmp_path / "leech" / "payload" / "b.bin"
            lt_peer.wait_until(leeched.exists, 10, "writing b.bin")
        finally:
            proc.send_signal(signal.SIGTERM)  # the end of seeding
            stdout, stderr = proc.communicate(timeout=DOWNLOAD_TIMEOUT)
    assert leeched.read_bytes() == src(payload, "b.bin")
    assert files_under(out) == {"payload/b.bin"}  # serving created nothing
    if how == "seed":
        assert proc.returncode == 7 and "Traceback" not in stderr, stderr  # stopped by a signal
        return
    assert proc.returncode == 0, stderr  # complete: a signal while seeding is the normal end
    res = json.loads(stdout)
    assert res["pieces_resumed"] == 2 and res["bytes_downloaded"] == 0
    assert res["bytes_uploaded"] >= 2 * PIECE_LEN


def test_file_indices_are_libtorrents_pad_files_included(tmp_path: Path) -> None:
    require_module("libtorrent")
    import libtorrent as lt
    from helpers.payload import lt_create, torrent_info, write_tree

    # a hybrid torrent made by libtorrent: it aligns every file to a piece with pad files
    write_tree(tmp_path / "src" / "set", {"a.bin": 40_000, "b.bin": 5_000, "c/d.bin": 70_000})
    t = lt_create(tmp_path / "src", "set", tmp_path / "set.torrent", 16384, v1_only=False)
    ours = [(f["index"], f["path"], bool(f.get("pad"))) for f in torrent_info(t)["files"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # files(): still there in 2.x
        fs = lt.torrent_info(str(t)).files()
    theirs = [(i, fs.file_path(i).replace(os.sep, "/"),
               bool(fs.file_flags(i) & lt.file_storage.flag_pad_file))
              for i in range(fs.num_files())]
    assert any(pad for _i, _p, pad in theirs)  # the numbering is tested with pads in it
    assert [(i, pad) for i, _p, pad in ours] == [(i, pad) for i, _p, pad in theirs]
    assert [p for _i, p, pad in ours if not pad] == [p for _i, p, pad in theirs if not pad]
