"""End-to-end downloads: the ``fasttorrent`` CLI against real libtorrent seeders on 127.0.0.1.

Every test runs the real command as a subprocess (bounded by a timeout) and
checks what a user would: the files, byte for byte, at the paths ``fasttorrent
info`` lists; the exit code; the ``--json`` counters.  After every run no
process of it and no ``/dev/shm/psm_*`` segment it used may remain
(:func:`helpers.payload.assert_clean_after`).  Payloads are a few MiB so each
test takes seconds; slow seeders are made with libtorrent's upload limit.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import IN_CI, require_module
from helpers.payload import (
    CLI,
    Live,
    RunResult,
    assert_clean_after,
    ft_create,
    lt_create,
    partial_copy,
    run_cli,
    torrent_info,
    tree_bytes,
    write_tree,
)
from helpers.swarm import Seeder

from torrent import bencoding
from torrent.journal import HEADER_SIZE

pytestmark = pytest.mark.timeout(120)


StartSeeders = Callable[..., list[Seeder]]


@pytest.fixture(autouse=True)
def _libtorrent() -> None:
    require_module("libtorrent")


def download(
    torrent: Path,
    out: Path,
    peers: list[Seeder] | list[str],
    *extra: str,
    workers: int = 2,
    json_out: bool = True,
    **kw: Any,
) -> RunResult:
    args = ["download", str(torrent), "-o", str(out), "--workers", str(workers), "--no-trackers"]
    for p in peers:
        args += ["--peer", p if isinstance(p, str) else p.addr]
    if json_out:
        args.append("--json")
    res = run_cli([*args, *extra], **kw)
    assert_clean_after(res)
    return res


def info_files(torrent: Path) -> list[dict[str, Any]]:
    return torrent_info(torrent)["files"]  # type: ignore[no-any-return]


def assert_downloaded(torrent: Path, src: Path, out: Path) -> None:
    """Every file at the path ``info --json`` lists, bit-exact; no pad file, nothing else."""
    want = {
        f["path"]: (src / f["path"]).read_bytes() for f in info_files(torrent) if not f.get("pad")
    }
    got = tree_bytes(out)
    assert sorted(got) == sorted(want), "files on disk differ from the torrent's file list"
    for path, data in want.items():
        assert got[path] == data, f"{path}: content differs"
    r = subprocess.run(
        [*CLI, "verify", str(torrent), str(out), "--workers", "1"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def assert_ok(res: RunResult) -> dict[str, Any]:
    assert res.returncode == 0, res.describe()
    assert "Traceback" not in res.stderr, res.describe()
    j = res.json
    assert j["complete"] is True
    assert sum(w["pieces"] for w in j["workers"]) + j["pieces_resumed"] == j["pieces_total"]
    assert j["hash_failures"] == 0 and j["banned_peers"] == []
    return j


@pytest.fixture
def single(tmp_path: Path) -> tuple[Path, Path]:
    """A single-file torrent, 2 MiB + a short last piece (65 pieces of 32 KiB)."""
    src = tmp_path / "src"
    write_tree(src, {"payload.bin": 2 * 1024 * 1024 + 1234}, seed=1)
    return ft_create(src / "payload.bin", tmp_path / "single.torrent", "32K"), src


@pytest.fixture
def four_mib(tmp_path: Path) -> tuple[Path, Path]:
    """A single-file torrent of 4 MiB + 100 bytes in 64 KiB pieces (65 pieces)."""
    src = tmp_path / "src4"
    write_tree(src, {"big.bin": 4 * 1024 * 1024 + 100}, seed=4)
    return ft_create(src / "big.bin", tmp_path / "four.torrent", "64K"), src


# ----------------------------------------------------------------------------- 1. single file


@pytest.mark.parametrize("workers", [1, 2])
def test_single_file_two_seeders(
    single: tuple[Path, Path], seeders: StartSeeders, tmp_path: Path, workers: int
) -> None:
    torrent, src = single
    peers = seeders(torrent, [src, src])
    out = tmp_path / "out"
    j = assert_ok(download(torrent, out, peers, workers=workers))
    assert_downloaded(torrent, src, out)
    assert j["pieces_total"] == 65 and len(j["workers"]) == workers
    assert j["bytes_downloaded"] >= 2 * 1024 * 1024 + 1234
    assert all(p["connected"] for p in j["peers"])
    assert all(w["alive"] for w in j["workers"])  # alive: did not die
    # from a .torrent no metadata is fetched; the first piece came during the download
    assert j["metadata_seconds"] == 0
    assert j["first_piece_seconds"] > 0
    if workers == 2:
        firsts = [w["pieces"] for w in j["workers"]]
        assert all(n > 0 for n in firsts), f"a worker verified no piece first: {j['workers']}"
        assert sum(firsts) == j["pieces_total"]
        assert j["duplicate_pieces"] == 0, j["workers"]


def test_plain_writes_on_request(
    single: tuple[Path, Path], seeders: StartSeeders, tmp_path: Path
) -> None:
    """--no-direct-io: the same download through the page cache only."""
    torrent, src = single
    peers = seeders(torrent, [src])
    out = tmp_path / "out"
    assert_ok(download(torrent, out, peers, "--no-direct-io", workers=1))
    assert_downloaded(torrent, src, out)


# ----------------------------------------------------------------------------- 2. multi file

TREE = {
    "a.bin": 200_000,
    "empty.txt": 0,
    "sub/b.bin": 70_001,
    "sub/deeper/c.bin": 32_768,
    "sub/tiny": 3,
    "z.dat": 333_333,
}


@pytest.mark.parametrize("v1_only", [True, False], ids=["v1", "hybrid"])
def test_multi_file_libtorrent_torrent(
    seeders: StartSeeders, tmp_path: Path, v1_only: bool
) -> None:
    src = tmp_path / "src"
    write_tree(src / "album", TREE, seed=2)
    torrent = lt_create(src, "album", tmp_path / "m.torrent", 32768, v1_only=v1_only)
    files = info_files(torrent)
    pads = [f for f in files if f.get("pad")]
    assert bool(pads) is not v1_only  # libtorrent pads hybrid torrents (BEP 47)
    peers = seeders(torrent, [src, src, src])
    out = tmp_path / "out"
    assert_ok(download(torrent, out, peers))
    # every real file bit-exact; no pad file, no journal folder, nothing else
    assert_downloaded(torrent, src, out)
    assert not (out / ".fasttorrent").exists()
    assert not any(".pad" in p.parts for p in out.rglob("*"))


# ----------------------------------------------------------------------------- 3. partial and slow


def test_partial_seeders_and_a_slow_one(
    four_mib: tuple[Path, Path], seeders: StartSeeders, tmp_path: Path
) -> None:
    torrent, src = four_mib
    n = 65
    first, second = tmp_path / "first_half", tmp_path / "second_half"
    partial_copy(torrent, src, first, range(n // 2))
    partial_copy(torrent, src, second, range(n // 2, n))
    a, b, c = seeders(torrent, [first, second, src], upload_limits=[0, 0, 300_000])
    assert a.pieces == list(range(n // 2)) and b.pieces == list(range(n // 2, n))
    assert len(c.pieces) == n
    out = tmp_path / "out"
    assert_ok(download(torrent, out, [a, b, c]))
    assert_downloaded(torrent, src, out)


def test_fast_worker_takes_over_from_slow_one(
    single: tuple[Path, Path], seeders: StartSeeders, tmp_path: Path
) -> None:
    torrent, src = single
    # One peer per worker (the coordinator gives each new peer to the worker
    # with the fewest): one worker is fed at 2 MB/s, the other at 100 KB/s.
    # (An unlimited seeder on loopback would finish before the slow one unchokes.)
    fast, slow = seeders(torrent, [src, src], upload_limits=[2_000_000, 100_000])
    out = tmp_path / "out"
    j = assert_ok(download(torrent, out, [fast, slow]))
    assert_downloaded(torrent, src, out)
    # 2 MiB at 100 KB/s would take 20 s: the fast worker did most of it. (Whether by
    # a steal, free pieces after the start-up grace or the endgame depends on what
    # the slow worker had started when the fast one ran dry: a matter of timing, so
    # each way is asserted on its own in test_leases.py, not here.)
    assert j["workers"][0]["pieces"] > j["pieces_total"] // 2, j["workers"]


def test_slow_peer_does_not_hold_the_tail(
    single: tuple[Path, Path], seeders: StartSeeders, tmp_path: Path
) -> None:
    torrent, src = single
    fast, slow = seeders(torrent, [src, src], upload_limits=[2_000_000, 100_000])
    j = assert_ok(download(torrent, tmp_path / "out", [fast, slow]))
    fast_w, slow_w = j["workers"]
    # The fast worker takes the slow one's work, by whichever way the timing
    # offers: free pieces once the start-up grace is over, unstarted ones by
    # stealing, ones stuck at the slow peer in endgame (each way is tested on
    # its own in test_leases.py); here it is the outcome that counts.
    assert fast_w["pieces"] > 2 * slow_w["pieces"], j["workers"]


# ----------------------------------------------------------------------------- 4. fewer peers


def test_fewer_peers_than_workers(
    single: tuple[Path, Path], seeders: StartSeeders, tmp_path: Path
) -> None:
    torrent, src = single
    (peer,) = seeders(torrent, [src])
    out = tmp_path / "out"
    j = assert_ok(download(torrent, out, [peer], workers=2))
    assert_downloaded(torrent, src, out)
    assert len(j["workers"]) == 2


# ----------------------------------------------------------------------------- 5. killed worker


def _first_bytes_written(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return any(f.read())
    except OSError:
        return False


def _download_killing_worker(torrent: Path, src: Path, out: Path, seeders: StartSeeders,
                             victim: int, *, json_out: bool) -> tuple[RunResult, dict[str, int]]:
    """Download from two slow seeders and SIGKILL worker ``victim`` once data is flowing."""
    # 2 MiB at 2 x 300 KB/s: about 3.5 s, time enough to kill a worker mid-way
    peers = seeders(torrent, [src, src], upload_limits=[300_000, 300_000])
    killed: dict[str, int] = {}

    def kill_one(live: Live) -> None:
        if killed:
            return
        ws = live.workers()
        if len(ws) == 2 and (_first_bytes_written(out / "payload.bin") or live.elapsed > 3):
            ws.sort(key=lambda p: (p.create_time(), p.pid))  # spawn order = worker id
            killed["pid"] = ws[victim].pid
            ws[victim].send_signal(signal.SIGKILL)

    return download(torrent, out, peers, json_out=json_out, during=kill_one), killed


def test_worker_killed_mid_download(
    single: tuple[Path, Path], seeders: StartSeeders, tmp_path: Path
) -> None:
    torrent, src = single
    out = tmp_path / "out"
    res, killed = _download_killing_worker(torrent, src, out, seeders, 1, json_out=True)
    assert killed, "the download ended before a worker could be killed"
    assert res.returncode == 0, res.describe()
    j = res.json
    assert j["complete"] is True
    assert_downloaded(torrent, src, out)
    assert j["workers"][1]["alive"] is False
    assert j["workers"][0]["alive"] is True
    assert (
        not psutil.pid_exists(killed["pid"])
        or psutil.Process(killed["pid"]).status() == psutil.STATUS_ZOMBIE
    )
    # the survivor took over the dead worker's peer and pieces
    assert j["workers"][0]["pieces"] > 0


def test_worker_killed_is_reported(
    single: tuple[Path, Path], seeders: StartSeeders, tmp_path: Path
) -> None:
    """Without --json the coordinator warns that the worker died, names it, and goes on."""
    torrent, src = single
    out = tmp_path / "out"
    res, killed = _download_killing_worker(torrent, src, out, seeders, 0, json_out=False)
    assert res.returncode == 0, res.describe()
    assert killed, "the download ended before a worker could be killed"
    assert "worker 0 died" in res.stderr, res.describe()
    assert "Traceback" not in res.stderr
    assert_downloaded(torrent, src, out)


# ----------------------------------------------------------------------------- 6. stall


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening: connections are refused, and it stays ours."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.mark.parametrize("json_out", [False, True], ids=["text", "json"])
def test_stall_exits_6_naming_the_peer(
    single: tuple[Path, Path], tmp_path: Path, closed_port: int, json_out: bool
) -> None:
    torrent, _src = single
    addr = f"127.0.0.1:{closed_port}"
    res = download(
        torrent,
        tmp_path / "out",
        [addr],
        "--stall-timeout",
        "2",
        "-q",
        workers=1,
        json_out=json_out,
        timeout=30,
    )
    assert res.returncode == 6, res.describe()
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.describe()
    assert addr in lines[0] and "Traceback" not in res.stderr
    if json_out:
        j = res.json
        assert j["complete"] is False and j["pieces_total"] == 65
        assert [(p["host"], p["port"], p["connected"]) for p in j["peers"]] == [
            ("127.0.0.1", closed_port, False)
        ]
    else:
        assert res.stdout == ""


# ----------------------------------------------------------------------------- 7. disk full


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
        check=False,
        capture_output=True,
        text=True,
        timeout=10,
    )
    if r.returncode != 0:
        if IN_CI:
            pytest.fail(f"cannot mount a tmpfs in CI: {r.stderr}")
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True, timeout=10)


def test_disk_full_exits_4_at_once(
    four_mib: tuple[Path, Path], small_tmpfs: Path, closed_port: int
) -> None:
    torrent, _src = four_mib
    res = download(
        torrent,
        small_tmpfs / "out",
        [f"127.0.0.1:{closed_port}"],
        "-q",
        workers=1,
        json_out=False,
        timeout=30,
    )
    assert res.returncode == 4, res.describe()
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "disk full" in lines[0], res.describe()
    assert "Traceback" not in res.stderr
    # (the free-space check runs before any peer is contacted)


# ----------------------------------------------------------------------------- 8. SIGTERM + resume


def test_sigterm_saves_state_and_resume_completes(
    four_mib: tuple[Path, Path], seeders: StartSeeders, tmp_path: Path
) -> None:
    torrent, src = four_mib
    (slow,) = seeders(torrent, [src], upload_limits=[250_000])
    out = tmp_path / "out"
    info_hash = json.loads(
        subprocess.run(
            [*CLI, "info", str(torrent), "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    )["info_hash"]
    journal = out / ".fasttorrent" / f"{info_hash}.resume"

    def term_once_journaled(live: Live) -> None:
        # SIGTERM once the journal holds a record (pieces flushed), or after 8 s
        if "sent" in live.state:
            return
        size = journal.stat().st_size if journal.exists() else 0
        if size > HEADER_SIZE or live.elapsed > 8:
            live.state["sent"] = True
            live.popen.send_signal(signal.SIGTERM)

    res = download(torrent, out, [slow], during=term_once_journaled)
    assert res.returncode == 7, res.describe()
    assert "Traceback" not in res.stderr
    j = res.json
    assert j["complete"] is False
    assert journal.exists() and journal.stat().st_size > HEADER_SIZE
    slow.stop()

    fast = seeders(torrent, [src, src])
    res2 = download(torrent, out, fast)
    j2 = assert_ok(res2)
    assert j2["pieces_resumed"] > 0, j2
    assert j2["pieces_resumed"] + sum(w["pieces"] for w in j2["workers"]) == 65
    assert_downloaded(torrent, src, out)
    assert not journal.exists()


# ----------------------------------------------------------------------------- 10. bad input


def test_missing_torrent_exits_3(tmp_path: Path) -> None:
    res = run_cli(
        ["download", str(tmp_path / "nope.torrent"), "-o", str(tmp_path / "out"), "--no-trackers"],
        timeout=30,
    )
    assert_clean_after(res)
    assert res.returncode == 3, res.describe()
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "bad", ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999", "host:port", ":6881"]
)
def test_bad_peer_exits_2(single: tuple[Path, Path], tmp_path: Path, bad: str) -> None:
    torrent, _src = single
    res = run_cli(
        ["download", str(torrent), "-o", str(tmp_path / "out"), "--peer", bad], timeout=30
    )
    assert_clean_after(res)
    assert res.returncode == 2, res.describe()
    assert "Traceback" not in res.stderr and "--peer" in res.stderr
    assert not (tmp_path / "out").exists()


def _hand_made(tmp_path: Path, name: bytes, files: list[tuple[list[bytes], int]]) -> Path:
    import hashlib

    piece = 16384
    total = sum(n for _, n in files)
    hashes = b"".join(hashlib.sha1(bytes([k])).digest() for k in range(-(-total // piece)))
    info = {
        b"name": name,
        b"piece length": piece,
        b"pieces": hashes,
        b"files": [{b"path": p, b"length": n} for p, n in files],
    }
    t = tmp_path / "hand.torrent"
    t.write_bytes(bencoding.encode({b"info": info}))
    return t


@pytest.mark.parametrize(
    "path",
    [[b"..", b"escape.txt"], [b"a", b"..", b"..", b"x"], [b"/etc", b"passwd"]],
    ids=["dotdot", "deep", "absolute"],
)
def test_path_traversal_torrent_exits_3(tmp_path: Path, path: list[bytes]) -> None:
    torrent = _hand_made(tmp_path, b"top", [([b"ok.bin"], 100), (path, 100)])
    out = tmp_path / "out"
    out.mkdir()
    res = run_cli(
        ["download", str(torrent), "-o", str(out), "--no-trackers", "--peer", "127.0.0.1:1"],
        timeout=30,
    )
    assert_clean_after(res)
    assert res.returncode == 3, res.describe()
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert list(out.iterdir()) == []
    assert not (tmp_path / "escape.txt").exists()


def test_symlink_leading_outside_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_tree(src / "top", {"a.bin": 50_000, "sub/b.bin": 20_000}, seed=9)
    torrent = ft_create(src / "top", tmp_path / "top.torrent", "16K")
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "top").symlink_to(elsewhere)
    res = run_cli(
        ["download", str(torrent), "-o", str(out), "--no-trackers", "--peer", "127.0.0.1:1"],
        timeout=30,
    )
    assert_clean_after(res)
    assert res.returncode in (3, 5), res.describe()
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "symlink" in lines[0] and "Traceback" not in res.stderr
    assert list(elsewhere.iterdir()) == [], "something was written through the symlink"
    assert sorted(p.name for p in out.iterdir()) == ["top"]
