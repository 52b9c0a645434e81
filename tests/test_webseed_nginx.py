"""Web seeds (BEP 19) against a real HTTP server: nginx on 127.0.0.1.

nginx is started by each test with its own configuration in a temporary
directory (no daemon, Range and keep-alive as nginx does them for static
files) and stopped at its end.  Single-file and multi-file torrents, the URL
with and without a trailing ``/``, BEP 47 pad files; a web-seed-only download
and a mixed one with libtorrent seeders; a seed that has nothing (404) with
no other source stops after --stall-timeout with exit 6.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import require_binary, require_module
from helpers.nginx import Nginx
from helpers.payload import lt_create, run_cli, start_seeders, tree_bytes

from torrent import bencoding, metainfo
from torrent.creator import create_torrent
from torrent.webseed import MAX_REQUESTS_IN_FLIGHT

pytestmark = pytest.mark.timeout(180)

_LOG_RE = re.compile(r'GET (\S+) range="([^"]*)" status=(\d+) bytes=(\d+) conn=(\d+) req=(\d+)')


def with_url_list(torrent: Path, urls: list[str]) -> Path:
    """``torrent`` with ``url-list`` set (the info dict, and so the info-hash, unchanged)."""
    data = torrent.read_bytes()
    before = metainfo.parse(data).info_hash
    top = bencoding.decode(data)
    top[b"url-list"] = [u.encode() for u in urls]
    torrent.write_bytes(bencoding.encode(top))
    assert metainfo.load(torrent).info_hash == before
    return torrent


def requests_of(ng: Nginx) -> list[tuple[str, str, int, int, int, int]]:
    out = []
    for line in ng.access_log():
        m = _LOG_RE.match(line)
        assert m, line
        out.append((m[1], m[2], int(m[3]), int(m[4]), int(m[5]), int(m[6])))
    return out


def check_served_by_ranges(ng: Nginx, workers: int) -> None:
    """Every request a Range answered 206; with more requests than the connections the
    workers may open, connections carried several (keep-alive)."""
    reqs = requests_of(ng)
    assert reqs
    for path, rng, status, _n, _conn, _req in reqs:
        assert rng.startswith("bytes="), (path, rng)
        assert status == 206, (path, rng, status)
        assert "/.pad/" not in path  # pad files are filled locally, never asked for
    if len(reqs) > workers * MAX_REQUESTS_IN_FLIGHT:
        assert max(r[5] for r in reqs) > 1
        assert len({r[4] for r in reqs}) <= workers * MAX_REQUESTS_IN_FLIGHT


def download(torrent: Path, out: Path, *extra: str) -> dict:
    r = run_cli(["download", str(torrent), "-o", str(out), "--no-trackers", "--json",
                 "--stall-timeout", "30", *extra])
    assert r.returncode == 0, r.describe()
    return r.json


def web_bytes(res: dict) -> int:
    return sum(w["web_seed_bytes"] for w in res["workers"])


@pytest.fixture
def nginx_bin() -> str:
    return require_binary("nginx")


@pytest.mark.parametrize("how", ["dir-slash", "file-url", "option"])
def test_single_file_from_nginx(tmp_path: Path, nginx_bin: str, how: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    payload = src / "data file.bin"  # a space: percent-encoded in the URL
    payload.write_bytes(bytes(range(256)) * 23_000 + b"tail")  # 5.6 MiB, a short last piece
    torrent = tmp_path / "s.torrent"
    torrent.write_bytes(create_torrent(str(payload), piece_length=1 << 18))
    with Nginx(src, tmp_path / "ng") as ng:
        extra: list[str] = ["--workers", "2"]
        if how == "dir-slash":
            with_url_list(torrent, [ng.url])
        elif how == "file-url":
            with_url_list(torrent, [ng.url + "data%20file.bin"])
        else:
            extra += ["--web-seed", ng.url]
        res = download(torrent, tmp_path / "out", *extra)
        check_served_by_ranges(ng, 2)
    assert (tmp_path / "out" / "data file.bin").read_bytes() == payload.read_bytes()
    assert res["complete"] and web_bytes(res) == payload.stat().st_size
    assert res["hash_failures"] == 0


@pytest.mark.parametrize("slash", [True, False])
def test_multi_file_with_pad_files_from_nginx(tmp_path: Path, nginx_bin: str,
                                              slash: bool) -> None:
    require_module("libtorrent")
    src = tmp_path / "src"
    files = {"album/a.bin": 100_000, "album/sub dir/b #1.bin": 333_333, "album/c.bin": 1,
             "album/d.bin": 250_001, "album/sub dir/e.bin": 70_000}
    import random

    rnd = random.Random(5)
    for rel, size in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(rnd.randbytes(size))
    # libtorrent's default (hybrid) torrent pads every file to a piece boundary (BEP 47)
    torrent = lt_create(src, "album", tmp_path / "m.torrent", 32768, v1_only=False)
    meta = metainfo.load(torrent)
    assert any(f.pad for f in meta.files)
    with Nginx(src, tmp_path / "ng") as ng:
        with_url_list(torrent, [ng.url if slash else ng.url.rstrip("/")])
        res = download(torrent, tmp_path / "out", "--workers", "2")
        check_served_by_ranges(ng, 2)
        assert len(requests_of(ng)) > 2 * MAX_REQUESTS_IN_FLIGHT  # keep-alive was checked
        # one request per file segment: each names one of the torrent's real files
        asked = {p for p, *_ in requests_of(ng)}
        assert asked <= {"/" + quote(f.path, safe="/") for f in meta.files if not f.pad}
        assert "/album/sub%20dir/b%20%231.bin" in asked  # percent-encoded, BEP 19
    assert tree_bytes(tmp_path / "out" / "album") == tree_bytes(src / "album")
    assert web_bytes(res) == meta.total_size  # every piece (its pad bytes zero-filled)


def test_multi_file_without_pads_piece_spanning_files(tmp_path: Path, nginx_bin: str) -> None:
    """fasttorrent's own torrents have no pads: a piece spans files and is several requests."""
    src = tmp_path / "src"
    (src / "p" / "x").mkdir(parents=True)
    import random

    rnd = random.Random(9)
    for rel, size in {"p/one.bin": 70_001, "p/x/two.bin": 5, "p/x/three.bin": 200_000}.items():
        (src / rel).write_bytes(rnd.randbytes(size))
    torrent = tmp_path / "p.torrent"
    torrent.write_bytes(create_torrent(str(src / "p"), piece_length=1 << 16))
    with Nginx(src, tmp_path / "ng") as ng:
        res = download(torrent, tmp_path / "out", "--web-seed", ng.url, "--workers", "1")
        check_served_by_ranges(ng, 1)
        assert len(requests_of(ng)) > MAX_REQUESTS_IN_FLIGHT  # keep-alive was checked
    assert tree_bytes(tmp_path / "out" / "p") == tree_bytes(src / "p")
    assert web_bytes(res) == 270_006


def test_mixed_libtorrent_peers_and_a_web_seed(tmp_path: Path, nginx_bin: str) -> None:
    """Two libtorrent seeders and nginx, each held to ~2 MB/s: both kinds of source
    deliver pieces, and the files are exact."""
    require_module("libtorrent")
    import random

    src = tmp_path / "src"
    (src / "mix").mkdir(parents=True)
    rnd = random.Random(3)
    (src / "mix" / "a.bin").write_bytes(rnd.randbytes(9 << 20))
    (src / "mix" / "b.bin").write_bytes(rnd.randbytes(7 << 20))
    torrent = tmp_path / "mix.torrent"
    torrent.write_bytes(create_torrent(str(src / "mix"), piece_length=1 << 18))
    seeders = start_seeders(str(torrent), [str(src), str(src)], str(tmp_path),
                            upload_limits=[2 << 20, 2 << 20])
    try:
        with Nginx(src, tmp_path / "ng", limit_rate=2 << 20) as ng:
            res = download(torrent, tmp_path / "out", "--workers", "2", "--web-seed", ng.url,
                           *[a for s in seeders for a in ("--peer", s.addr)])
            check_served_by_ranges(ng, 2)
    finally:
        for s in seeders:
            s.stop()
    assert tree_bytes(tmp_path / "out" / "mix") == tree_bytes(src / "mix")
    total = 16 << 20
    assert res["complete"] and res["hash_failures"] == 0
    from_web = web_bytes(res)
    assert 0 < from_web < total  # both kinds of source delivered pieces
    assert res["bytes_downloaded"] >= total


def test_only_web_seeds_none_works_stops_after_stall_timeout(tmp_path: Path,
                                                               nginx_bin: str) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    payload = tmp_path / "f.bin"
    payload.write_bytes(b"x" * 300_000)
    torrent = tmp_path / "f.torrent"
    torrent.write_bytes(create_torrent(str(payload), piece_length=1 << 16))
    with Nginx(empty, tmp_path / "ng") as ng:
        r = run_cli(["download", str(torrent), "-o", str(tmp_path / "out"), "--no-trackers",
                     "--stall-timeout", "3", "--web-seed", ng.url, "--workers", "1"])
        statuses = {s for _p, _r, s, *_ in requests_of(ng)}
    assert r.returncode == 6, r.describe()
    assert statuses == {404}
    assert f"web seed {ng.url} dropped" in r.stderr and "404" in r.stderr
    assert "Traceback" not in r.stderr
