"""Web seeds that misbehave: small aiohttp servers on 127.0.0.1 (tests/helpers/hostile_http.py).

Each misbehaviour is an error for that request and the download goes on: from
the same seed once it behaves, or from another source (nginx, a libtorrent
peer).  A seed that serves data failing the hash check is banned and the
data is fetched again from a peer; a seed that keeps failing is dropped with
a warning naming it.  Outcomes are asserted, never durations.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import require_binary, require_module
from helpers.hostile_http import HostileServer
from helpers.nginx import Nginx
from helpers.payload import run_cli, start_seeders

from torrent.creator import create_torrent
from torrent.webseed import MAX_FAILURES, MAX_WHOLE_FILE_BODY

pytestmark = pytest.mark.timeout(180)


def payload(tmp_path: Path, size: int, piece: int = 1 << 16) -> tuple[Path, Path, bytes]:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    data = random.Random(size).randbytes(size)
    (src / "f.bin").write_bytes(data)
    torrent = tmp_path / "f.torrent"
    torrent.write_bytes(create_torrent(str(src / "f.bin"), piece_length=piece))
    return src, torrent, data


def download(tmp_path: Path, torrent: Path, *extra: str, stall: str = "30") -> dict:
    r = run_cli(["download", str(torrent), "-o", str(tmp_path / "out"), "--no-trackers",
                 "--json", "--workers", "1", "--stall-timeout", stall, *extra])
    assert r.returncode == 0, r.describe()
    assert "Traceback" not in r.stderr
    return r.json


def errors(res: dict) -> int:
    return sum(w["web_seed_errors"] for w in res["workers"])


@pytest.mark.parametrize("mode", ["short", "long", "reset", "416", "503", "redirect-loop"])
def test_request_errors_then_the_same_seed_recovers(tmp_path: Path, mode: str) -> None:
    """The first two requests misbehave, then the seed serves: it is the only source."""
    _src, torrent, data = payload(tmp_path, 1_000_003)
    with HostileServer({"/f.bin": data}, mode, count=2) as hs:
        res = download(tmp_path, torrent, "--web-seed", hs.url)
        assert hs.hostile_requests() >= 1 and hs.served() >= 1
    assert (tmp_path / "out" / "f.bin").read_bytes() == data
    assert res["complete"] and errors(res) >= 1 and res["hash_failures"] == 0


@pytest.mark.parametrize("mode", ["short", "long", "reset", "416", "redirect-loop"])
def test_a_seed_that_always_fails_leaves_the_download_to_another(tmp_path: Path,
                                                                 mode: str) -> None:
    require_binary("nginx")
    src, torrent, data = payload(tmp_path, 800_000)
    with HostileServer({"/f.bin": data}, mode) as hs, Nginx(src, tmp_path / "ng") as ng:
        res = download(tmp_path, torrent, "--web-seed", hs.url, "--web-seed", ng.url)
        assert hs.hostile_requests() >= 1 and hs.served() == 0
    assert (tmp_path / "out" / "f.bin").read_bytes() == data
    assert res["complete"] and errors(res) >= 1 and res["hash_failures"] == 0


def test_redirects_are_followed_with_the_range(tmp_path: Path) -> None:
    _src, torrent, data = payload(tmp_path, 900_001)
    with HostileServer({"/f.bin": data}, "redirect") as hs:
        res = download(tmp_path, torrent, "--web-seed", hs.url)
        assert hs.hostile_requests() >= 1
        # every redirected request came back to /moved with its Range, and was served
        moved = [r for r in hs.requests if r[0].startswith("/moved/")]
        assert moved and all(rng.startswith("bytes=") for _p, rng, _w in moved)
    assert (tmp_path / "out" / "f.bin").read_bytes() == data
    assert res["complete"] and errors(res) == 0


def test_200_instead_of_206_is_read_for_a_small_file(tmp_path: Path) -> None:
    _src, torrent, data = payload(tmp_path, 700_001)
    assert len(data) <= MAX_WHOLE_FILE_BODY
    with HostileServer({"/f.bin": data}, "full-200") as hs:
        res = download(tmp_path, torrent, "--web-seed", hs.url)
        assert hs.hostile_requests() >= 1
    assert (tmp_path / "out" / "f.bin").read_bytes() == data
    assert res["complete"] and errors(res) == 0


def test_200_instead_of_206_for_a_large_file_is_an_error(tmp_path: Path) -> None:
    require_binary("nginx")
    src, torrent, data = payload(tmp_path, MAX_WHOLE_FILE_BODY + 300_000, piece=1 << 18)
    with HostileServer({"/f.bin": data}, "full-200") as hs, Nginx(src, tmp_path / "ng") as ng:
        res = download(tmp_path, torrent, "--web-seed", hs.url, "--web-seed", ng.url)
        assert hs.hostile_requests() >= 1
    assert (tmp_path / "out" / "f.bin").read_bytes() == data
    assert res["complete"] and errors(res) >= 1


def test_slow_body_the_tail_goes_to_the_faster_seed(tmp_path: Path) -> None:
    """The slow seed takes the first run; in endgame its pieces go to nginx as well."""
    require_binary("nginx")
    src, torrent, data = payload(tmp_path, 2 << 20)
    with HostileServer({"/f.bin": data}, "slow") as hs, Nginx(src, tmp_path / "ng") as ng:
        res = download(tmp_path, torrent, "--web-seed", hs.url, "--web-seed", ng.url)
        assert hs.hostile_requests() >= 1
        assert ng.access_log()  # the fast seed served (part of) the tail
    assert (tmp_path / "out" / "f.bin").read_bytes() == data
    assert res["complete"] and res["hash_failures"] == 0


def test_corrupt_web_seed_is_banned_and_the_data_refetched_from_a_peer(tmp_path: Path) -> None:
    """First the corrupt seed is the only source (so its pieces are surely hashed,
    not raced by a peer's copy): banned, nothing of it written. Then the same
    output directory resumes from a libtorrent peer, and every byte comes from it."""
    require_module("libtorrent")
    src, torrent, data = payload(tmp_path, 1 << 20)
    out = tmp_path / "out"
    with HostileServer({"/f.bin": data}, "corrupt") as hs:
        alone = run_cli(["download", str(torrent), "-o", str(out), "--no-trackers", "--json",
                         "--workers", "1", "--stall-timeout", "5", "--web-seed", hs.url,
                         "--events", str(tmp_path / "events.jsonl")])
        assert hs.hostile_requests() >= 1
    assert alone.returncode == 6, alone.describe()  # nothing left to fetch from: stalled
    assert "Traceback" not in alone.stderr
    assert f"web seed {hs.url} dropped" in alone.stderr and "hash" in alone.stderr, \
        alone.describe()
    assert hs.url in alone.json["banned_peers"] and alone.json["hash_failures"] >= 1
    assert sum(w["web_seed_bytes"] for w in alone.json["workers"]) == 0
    # the event stream names the seed as the sender of the bad piece and as banned
    events = [json.loads(ln) for ln in (tmp_path / "events.jsonl").read_text().splitlines()]
    failed = [e for e in events if e["event"] == "piece_failed"]
    assert failed and {e["peer"] for e in failed} == {hs.url}
    assert [e["address"] for e in events if e["event"] == "peer_banned"] == [hs.url]
    assert [(e["event"], e["exit_code"]) for e in events[-2:]] == [("error", 6), ("stopped", 6)]
    assert not out.joinpath("f.bin").exists() or out.joinpath("f.bin").read_bytes() != data
    (seeder,) = start_seeders(str(torrent), [str(src)], str(tmp_path))
    try:
        res = download(tmp_path, torrent, "--peer", seeder.addr)
    finally:
        seeder.stop()
    assert (out / "f.bin").read_bytes() == data
    assert res["complete"] and res["bytes_downloaded"] == len(data)  # all of it, from the peer
    assert res["hash_failures"] == 0


def test_a_seed_that_keeps_failing_is_dropped_and_the_download_stops(tmp_path: Path) -> None:
    """The only source answers 416 to everything: dropped after MAX_FAILURES with a
    warning naming it, then --stall-timeout ends the download (exit 6)."""
    _src, torrent, data = payload(tmp_path, 300_000)
    with HostileServer({"/f.bin": data}, "416") as hs:
        r = run_cli(["download", str(torrent), "-o", str(tmp_path / "out"), "--no-trackers",
                     "--workers", "1", "--stall-timeout", "15", "--web-seed", hs.url])
        assert hs.hostile_requests() == MAX_FAILURES  # then it was no longer asked
    assert r.returncode == 6, r.describe()
    assert f"web seed {hs.url} dropped" in r.stderr and "416" in r.stderr
    assert "Traceback" not in r.stderr
