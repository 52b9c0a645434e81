"""Many torrents in one run (torrent/engine.py): one set of workers, one port, one arena.

Against real libtorrent sessions on 127.0.0.1: a batch of 20 torrents (two of
them magnets) from one libtorrent session, with ``--max-active 4``; libtorrent
seeders that dial us, their connections routed to their torrent by the
info-hash (plaintext) and by the MSE SKEY (encrypted); torrents that would
write one path refused before either starts; a broken torrent in a batch
failing alone with the batch's exit code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import require_module
from helpers.ltpeer import LtPeer
from helpers.payload import Live, RunResult, assert_clean_after, ft_create, run_cli, write_tree

from torrent import metainfo
from torrent.magnet import magnet_uri
from torrent.ports import free_port

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(autouse=True)
def _libtorrent() -> None:
    require_module("libtorrent")


def make_torrents(tmp: Path, sizes: list[int], *, piece: str = "32K",
                  ) -> list[tuple[Path, Path, str]]:
    """One single-file torrent per size: (torrent, its data's directory, its file name)."""
    out = []
    for k, size in enumerate(sizes):
        src = tmp / f"src{k}"
        name = f"file{k:02d}.bin"
        write_tree(src, {name: size}, seed=100 + k)
        out.append((ft_create(src / name, tmp / f"t{k:02d}.torrent", piece), src, name))
    return out


def batch(args: list[str], out: Path, *, timeout: float = 180,
          during: object = None) -> RunResult:
    res = run_cli(["download", *args, "-o", str(out), "--workers", "2", "--no-trackers",
                   "--bind", "127.0.0.1", "--json"], timeout=timeout,
                  during=during)  # type: ignore[arg-type]
    assert_clean_after(res)
    assert "Traceback" not in res.stderr, res.describe()
    return res


def test_twenty_torrents_two_of_them_magnets_from_one_libtorrent_session_max_active_4(
        tmp_path: Path) -> None:
    sizes = [(k * 389_111) % 3_000_000 + 20_000 for k in range(20)]
    torrents = make_torrents(tmp_path, sizes)
    with LtPeer("seeder") as lt:
        for t, src, _name in torrents:
            lt.seed(t, src)
        peer = lt.addr
        lines = ["# a batch: paths, and two magnets", ""]
        for k, (t, _src, _name) in enumerate(torrents):
            if k in (3, 11):
                lines.append(magnet_uri(metainfo.load(t), trackers=[],
                                        peers=[("127.0.0.1", lt.port)]))
            else:
                lines.append(f"{t}   # torrent {k}")
        listing = tmp_path / "input.txt"
        listing.write_text("\n".join(lines) + "\n")
        out = tmp_path / "out"
        res = batch(["--input", str(listing), "--max-active", "4", "--peer", peer], out)
    assert res.returncode == 0, res.describe()
    j = res.json
    assert j["exit_code"] == 0
    assert [t["status"] for t in j["torrents"]] == ["completed"] * 20, res.describe()
    for (t, src, name), got in zip(torrents, j["torrents"], strict=True):
        assert got["info_hash"] == metainfo.load(t).info_hash_hex
        assert (out / name).read_bytes() == (src / name).read_bytes(), name
    # one process tree for all: the workers of the run, never one set per torrent
    assert len(res.descendants) <= 2 + 2, sorted(p.name() for p in res.descendants.values())
    assert sorted(os.listdir(out)) == sorted(n for _t, _s, n in torrents)


@pytest.mark.parametrize("encryption", ["off", "forced"])
def test_libtorrent_seeders_dialling_us_are_routed_to_their_torrent(
        tmp_path: Path, encryption: str) -> None:
    """Two torrents on one port; each seeder dials us (we dial nobody), plaintext or
    MSE-only: each connection reaches the torrent its handshake names."""
    (ta, srca, na), (tb, srcb, nb) = make_torrents(tmp_path, [1_500_000, 2_300_000])
    port = free_port("127.0.0.1")
    with LtPeer("seeder-a", encryption=encryption) as la, \
            LtPeer("seeder-b", encryption=encryption) as lb:
        ha = la.seed(ta, srca)
        hb = lb.seed(tb, srcb)

        def dial_us(live: Live) -> None:
            if live.elapsed > 0.5:  # (duplicates are ignored by libtorrent)
                ha.connect_peer(("127.0.0.1", port))
                hb.connect_peer(("127.0.0.1", port))

        out = tmp_path / "out"
        res = batch([str(ta), str(tb), "--port", str(port), "--stall-timeout", "60"], out,
                    during=dial_us)
    assert res.returncode == 0, res.describe()
    assert [t["status"] for t in res.json["torrents"]] == ["completed", "completed"]
    assert (out / na).read_bytes() == (srca / na).read_bytes()
    assert (out / nb).read_bytes() == (srcb / nb).read_bytes()
    for t in res.json["torrents"]:
        w = t["result"]["workers"]
        if encryption == "forced":
            assert sum(x["mse"] for x in w) >= 1, w  # routed by the SKEY


def test_two_torrents_writing_one_path_are_refused_before_either_starts(
        tmp_path: Path) -> None:
    # the same file name, other contents: both would write out/same.bin
    a = tmp_path / "a"
    b = tmp_path / "b"
    write_tree(a, {"same.bin": 100_000}, seed=1)
    write_tree(b, {"same.bin": 200_000}, seed=2)
    ta = ft_create(a / "same.bin", tmp_path / "a.torrent", "32K")
    tb = ft_create(b / "same.bin", tmp_path / "b.torrent", "32K")
    (tc, srcc, nc), = make_torrents(tmp_path, [300_000])
    with LtPeer("seeder") as lt:
        lt.seed(tc, srcc)
        out = tmp_path / "out"
        res = batch([str(ta), str(tb), str(tc), "--peer", lt.addr], out)
    assert res.returncode == 2, res.describe()  # the worst: a usage error
    j = res.json
    st = {t["source"]: t for t in j["torrents"]}
    assert st[str(ta)]["status"] == st[str(tb)]["status"] == "failed"
    assert "same.bin" in st[str(tb)]["error"], st[str(tb)]
    assert st[str(tc)]["status"] == "completed"
    assert not (out / "same.bin").exists()  # neither started
    assert (out / nc).read_bytes() == (srcc / nc).read_bytes()


def test_a_broken_torrent_fails_alone_and_sets_the_batch_exit_code(tmp_path: Path) -> None:
    (t, src, name), = make_torrents(tmp_path, [400_000])
    bad = tmp_path / "bad.torrent"
    bad.write_bytes(b"d4:infoi1ee")
    with LtPeer("seeder") as lt:
        lt.seed(t, src)
        out = tmp_path / "out"
        res = batch([str(bad), str(t), str(tmp_path / "missing.torrent"), "--peer", lt.addr],
                    out)
    assert res.returncode == 3, res.describe()
    got = [(x["status"], x["exit_code"]) for x in res.json["torrents"]]
    assert got[1] == ("completed", 0) and got[0][0] == "failed" and got[2][0] == "failed", got
    assert (out / name).read_bytes() == (src / name).read_bytes()


def test_batch_usage_errors_are_one_line(tmp_path: Path) -> None:
    (t, _src, _name), = make_torrents(tmp_path, [50_000])
    for args, needle in [([str(t), str(t), "--select", "0"], "--select"),
                         ([str(t), str(t), "--save-torrent", str(tmp_path / "x")],
                          "--save-torrent"),
                         ([str(t), "--max-active", "2"], "--max-active"),
                         (["--input", str(tmp_path / "nothere.txt")], "nothere.txt"),
                         ([], "no torrent")]:
        res = run_cli(["download", *args, "-o", str(tmp_path / "o")], timeout=60)
        assert res.returncode == 2, res.describe()
        lines = res.stderr.strip().splitlines()
        assert lines and needle in lines[-1] and "Traceback" not in res.stderr, res.describe()


def test_the_same_torrent_twice_is_refused_as_a_collision(tmp_path: Path) -> None:
    (t, src, name), = make_torrents(tmp_path, [120_000])
    with LtPeer("seeder") as lt:
        lt.seed(t, src)
        res = batch([str(t), str(t), "--peer", lt.addr], tmp_path / "out")
    j = res.json
    assert [x["status"] for x in j["torrents"]] == ["failed", "failed"], json.dumps(j)[:2000]
    assert res.returncode == 2
    assert not (tmp_path / "out" / name).exists()


def test_sigint_stops_the_running_torrents_saves_their_state_and_skips_the_rest(
        tmp_path: Path) -> None:
    """A slow seeder holds the first torrents mid-download when the batch is told to
    stop: they end interrupted with their journals kept, the queued one is skipped,
    the exit code is 7, and a second run finishes them all."""
    import signal

    torrents = make_torrents(tmp_path, [6_000_000, 6_000_000, 500_000], piece="64K")
    with LtPeer("seeder") as lt:
        for t, src, _n in torrents:
            lt.seed(t, src).set_upload_limit(400_000)  # (a torrent's limit binds on loopback)
        out = tmp_path / "out"

        def interrupt(live: Live) -> None:
            # once the first torrent has data on disk: a journal exists for it
            if not live.state.get("sent") and any((out / ".fasttorrent").glob("*.resume")) \
                    and live.elapsed > 2:
                live.state["sent"] = True
                live.popen.send_signal(signal.SIGINT)

        args = [str(t) for t, _s, _n in torrents] + ["--max-active", "2", "--peer", lt.addr]
        res = batch(args, out, during=interrupt)
        assert res.returncode == 7, res.describe()
        got = [(x["status"], x["exit_code"]) for x in res.json["torrents"]]
        assert got[0] == ("interrupted", 7) and got[1] == ("interrupted", 7), got
        assert got[2][0] == "skipped" and got[2][1] == 7, got  # never started
        assert len(list((out / ".fasttorrent").glob("*.resume"))) == 2  # state saved
        for h in lt.ses.get_torrents():
            h.set_upload_limit(0)
        again = batch(args, out)
    assert again.returncode == 0, again.describe()
    for (_t, src, name), x in zip(torrents, again.json["torrents"], strict=True):
        assert x["status"] == "completed"
        assert (out / name).read_bytes() == (src / name).read_bytes()
    resumed = again.json["torrents"][0]["result"]["pieces_resumed"]
    assert resumed > 0, again.json["torrents"][0]  # the first run's pieces were kept
