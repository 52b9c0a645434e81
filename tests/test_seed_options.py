"""Seeding after a download (``--seed-time``, ``--seed-ratio``) and ``--upload-limit``.

- The token bucket and the throttle behind ``--upload-limit`` are tested
  on an injected clock in test_choker.py.
- End to end, with real libtorrent peers on 127.0.0.1: fasttorrent downloads
  from a libtorrent seeder while a libtorrent downloader fetches from it and
  exits 0 by itself once it uploaded ``ratio x size``; ``--seed-time`` ends
  the run by itself; Ctrl-C while seeding a complete download exits 0;
  ``seed --upload-limit`` still serves libtorrent bit-exact, and no faster
  than the limit allows (a lower bound on the time: only a slow machine
  lengthens it, so it cannot flake).  Bad values are one-line usage errors.

Every process is bounded (timeouts, kill in ``finally``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_module
from helpers.clients import FasttorrentSeed
from helpers.framereader import FrameReader, recv_exact
from helpers.payload import ft_create, tree_bytes, write_tree
from helpers.swarm import Seeder, start_seeders
from helpers.testpeer import GatedRelay, TestPeer
from trackers import HTTPTestTracker

from torrent import metainfo
from torrent.choker import BURST
from torrent.picker import BLOCK_SIZE
from torrent.ports import free_port
from torrent.wire.extension import EXTENSION_HANDSHAKE_ID, ExtensionHandshake
from torrent.wire.handshake import (
    HANDSHAKE_LENGTH,
    PEER_ID_PREFIX,
    RESERVED_OURS,
    encode_handshake,
    make_peer_id,
    parse_handshake,
)
from torrent.wire.messages import Bitfield, Extended, Have, HaveAll, Message, encode

LT_DOWNLOAD = "torrent.tools.benchclients.lt_download"
TREE = {"a.bin": 1_500_001, "sub/b.bin": 1_200_000, "sub/c.bin": 65_536, "d.txt": 10}
SIZE = sum(TREE.values())
#: Bound on every process these tests start (seconds).
RUN_TIMEOUT = 90
#: How long fasttorrent may take to start listening.
LISTEN_TIMEOUT = 30.0


# -- end to end ------------------------------------------------------------------------------


@pytest.fixture
def payload(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "src" / "tree"
    write_tree(src, TREE, seed=7)
    return src, ft_create(src, tmp_path / "t.torrent", piece_length="64K")


@pytest.fixture
def lt_seeder(payload: tuple[Path, Path], tmp_path: Path) -> Iterator[Seeder]:
    require_module("libtorrent")
    src, torrent = payload
    (s,) = start_seeders(str(torrent), [str(src.parent)], str(tmp_path))
    try:
        yield s
    finally:
        s.stop()


def ft_download(torrent: Path, out: Path, *extra: str, port: int = 0,
                trackers: bool = False) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "torrent", "download", str(torrent), "-o", str(out),
         *([] if trackers else ["--no-trackers"]), "--bind", "127.0.0.1", "--port", str(port),
         "--workers", "2", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"did not exit by itself within {RUN_TIMEOUT} s: {err}")
    return proc.returncode, out, err


def clean_json(rc: int, out: str, err: str) -> dict:
    """The run's JSON summary, once it is known to have exited 0 without a traceback."""
    assert rc == 0, err
    assert "Traceback" not in err
    return json.loads(out)  # type: ignore[no-any-return]


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def wait_listening(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + LISTEN_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exited before listening: {proc.stderr.read()}")  # type: ignore[union-attr]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"nothing listens on port {port} after {LISTEN_TIMEOUT} s")


def lt_fetch(torrent: Path, out: Path, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", LT_DOWNLOAD, "--peers", f"127.0.0.1:{port}",
                           "--timeout", str(RUN_TIMEOUT - 10), str(torrent), str(out)],
                          check=False, capture_output=True, text=True, timeout=RUN_TIMEOUT)


def test_seed_ratio_serves_libtorrent_then_exits_by_itself(
        payload: tuple[Path, Path], lt_seeder: Seeder, tmp_path: Path) -> None:
    src, torrent = payload
    port = free_port()
    ft = ft_download(torrent, tmp_path / "ft", "--peer", lt_seeder.addr, "--seed-ratio", "1",
                     "--json", port=port)
    try:
        wait_listening(port, ft)
        lt = lt_fetch(torrent, tmp_path / "lt", port)  # its only peer is fasttorrent
        assert lt.returncode == 0, lt.stderr
        rc, out, err = finish(ft)
    finally:
        kill(ft)
    j = clean_json(rc, out, err)
    assert j["complete"] and j["hash_failures"] == 0
    assert j["seed_stop"] == "ratio"
    assert j["uploaded_bytes"] >= 1.0 * SIZE
    assert j["seed_seconds"] > 0
    expected = tree_bytes(src)
    assert tree_bytes(tmp_path / "ft" / "tree") == expected
    assert tree_bytes(tmp_path / "lt" / "tree") == expected


class RawLeecher:
    """One BEP 3 / 10 / 6 connection over a blocking socket: a leecher with ``has``."""

    def __init__(self, sock: socket.socket, meta: metainfo.Metainfo) -> None:
        self.sock, self.meta = sock, meta
        sock.settimeout(EVENT_TIMEOUT)
        self.frames = FrameReader(meta.num_pieces)
        self.pending: list[Message] = []

    def handshake(self, listen_port: int, has: range, *, first: bool) -> None:
        """Both handshakes (ours first when ``first``), our extension handshake naming our
        listen port, and our bitfield."""
        ours = encode_handshake(self.meta.info_hash, make_peer_id(), RESERVED_OURS)
        if first:
            self.sock.sendall(ours)
        theirs = parse_handshake(recv_exact(self.sock, HANDSHAKE_LENGTH))
        assert theirs.info_hash == self.meta.info_hash
        if not first:
            self.sock.sendall(ours)
        bits = bytearray(-(-self.meta.num_pieces // 8))
        for i in has:
            bits[i >> 3] |= 0x80 >> (i & 7)
        self.sock.sendall(encode(Extended(EXTENSION_HANDSHAKE_ID,
                                          ExtensionHandshake(p=listen_port).encode()))
                          + encode(Bitfield(bytes(bits))))

    def next_message(self) -> Message:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("closed")
            self.pending.extend(self.frames.feed(data))
        return self.pending.pop(0)


#: Bound on one wait for fasttorrent's next move in the redial test (seconds).
EVENT_TIMEOUT = 30.0


def test_a_leecher_that_hangs_up_on_our_completing_have_is_dialled_again(
        payload: tuple[Path, Path], tmp_path: Path) -> None:
    """libtorrent 2.1 drops a peer whose HAVE makes it a seed before it updates its
    interest in it (worker.REDIAL_WINDOW): a leecher that lacks our last piece hangs up
    on the HAVE of it. fasttorrent dials it back on its listen port and opens with
    HAVE_ALL, instead of waiting for the minute libtorrent takes to dial again."""
    src, torrent = payload
    meta = metainfo.load(torrent)
    last = meta.num_pieces - 1
    gate = threading.Event()  # the last piece's only source serves once it is set
    port = free_port()
    with (TestPeer(torrent, src.parent, has=range(last)) as most,
          TestPeer(torrent, src.parent) as seed,
          GatedRelay(("127.0.0.1", seed.port), gate) as relay,
          socket.create_server(("127.0.0.1", 0)) as listener):
        listener.settimeout(EVENT_TIMEOUT)
        ft = ft_download(torrent, tmp_path / "ft", "--peer", most.addr, "--peer", relay.addr,
                         "--seed-time", str(RUN_TIMEOUT), "--json", port=port)
        try:
            wait_listening(port, ft)
            with socket.create_connection(("127.0.0.1", port), timeout=EVENT_TIMEOUT) as s:
                lee = RawLeecher(s, meta)
                lee.handshake(listener.getsockname()[1], range(last), first=True)
                gate.set()
                theirs: set[int] = set()  # what fasttorrent has, as it tells us
                while len(theirs) < meta.num_pieces:
                    m = lee.next_message()
                    if isinstance(m, Have):
                        theirs.add(m.index)
                    elif isinstance(m, Bitfield):
                        theirs |= {i for i in range(meta.num_pieces)
                                   if m.bits[i >> 3] & (0x80 >> (i & 7))}
                # the HAVE that made it a seed: we hang up (as libtorrent does)
            # dialled back on the listen port: MSE first (closed here, as by a peer
            # that speaks only plaintext), then plaintext
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(EVENT_TIMEOUT)
                assert conn.recv(1) != b"\x13"
            conn, _ = listener.accept()
            with conn:
                back = RawLeecher(conn, meta)
                back.handshake(listener.getsockname()[1], range(last), first=False)
                while isinstance(m := back.next_message(), Extended):
                    pass
                assert isinstance(m, HaveAll), m  # we offered Fast: two bytes, not a bitfield
            ft.send_signal(signal.SIGINT)
            rc, out, err = finish(ft)
        finally:
            kill(ft)
    j = clean_json(rc, out, err)
    assert j["complete"] and sum(w["redials"] for w in j["workers"]) == 1
    assert tree_bytes(tmp_path / "ft" / "tree") == tree_bytes(src)


def test_a_peer_that_dials_as_soon_as_we_listen_is_served(payload: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    """The workers listen before their torrent is set up; a peer that dials in between
    waits in the backlog and is answered, not refused (the first dial of
    wait_listening may land there too; ours comes right after it)."""
    src, torrent = payload
    meta = metainfo.load(torrent)
    with TestPeer(torrent, src.parent, has=range(1)) as one:
        port = free_port()
        ft = ft_download(torrent, tmp_path / "ft", "--peer", one.addr, port=port)
        try:
            wait_listening(port, ft)
            with socket.create_connection(("127.0.0.1", port), timeout=EVENT_TIMEOUT) as s:
                RawLeecher(s, meta).handshake(1, range(0), first=True)  # raises if refused
        finally:
            kill(ft)


def test_seed_time_exits_by_itself(payload: tuple[Path, Path], lt_seeder: Seeder,
                                   tmp_path: Path) -> None:
    src, torrent = payload
    ft = ft_download(torrent, tmp_path / "ft", "--peer", lt_seeder.addr, "--seed-time", "2",
                     "--seed-ratio", "50", "--json")
    try:
        rc, out, err = finish(ft)
    finally:
        kill(ft)
    j = clean_json(rc, out, err)
    assert j["complete"]
    assert j["seed_stop"] == "time"  # nobody downloads: the ratio is never reached
    assert j["seed_seconds"] >= 2.0
    assert tree_bytes(tmp_path / "ft" / "tree") == tree_bytes(src)
    assert not os.path.exists(tmp_path / "ft" / ".fasttorrent" /
                              f"{j['info_hash']}.resume")  # complete: journal removed


def test_no_seeding_by_default(payload: tuple[Path, Path], lt_seeder: Seeder,
                               tmp_path: Path) -> None:
    src, torrent = payload
    ft = ft_download(torrent, tmp_path / "ft", "--peer", lt_seeder.addr, "--json")
    try:
        rc, out, err = finish(ft)
    finally:
        kill(ft)
    j = clean_json(rc, out, err)
    assert j["complete"] and j["seed_stop"] is None and j["seed_seconds"] == 0
    assert tree_bytes(tmp_path / "ft" / "tree") == tree_bytes(src)


def test_seeding_announces_completed_once(tmp_path: Path) -> None:
    """'completed' is owed from completion on (sent once the tracker's min interval
    allows, else when the run ends), exactly once, and 'stopped' comes last."""
    require_module("libtorrent")
    src = tmp_path / "src" / "tree"
    write_tree(src, TREE, seed=7)
    with HTTPTestTracker() as tracker:
        torrent = ft_create(src, tmp_path / "t.torrent", piece_length="64K",
                            trackers=[tracker.announce_url])
        (seeder,) = start_seeders(str(torrent), [str(src.parent)], str(tmp_path))
        try:
            tracker.wait_until(lambda: any(r.left == 0 for r in tracker.requests), 20.0)
            ft = ft_download(torrent, tmp_path / "ft", "--seed-time", "1", "--json",
                             trackers=True)
            try:
                rc, out, err = finish(ft)
            finally:
                kill(ft)
        finally:
            seeder.stop()
        mine = [r for r in tracker.requests if r.peer_id.startswith(PEER_ID_PREFIX)]
    assert rc == 0, err
    assert json.loads(out)["seed_stop"] == "time"
    events = [r.event for r in mine]
    assert events[0] == "started" and events[-1] == "stopped", events
    assert events.count("completed") == 1, events
    assert tree_bytes(tmp_path / "ft" / "tree") == tree_bytes(src)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_seeding_a_complete_download_exits_0(
        payload: tuple[Path, Path], lt_seeder: Seeder, tmp_path: Path, sig: int) -> None:
    src, torrent = payload
    ft = ft_download(torrent, tmp_path / "ft", "--peer", lt_seeder.addr, "--seed-time", "600")
    watchdog = threading.Timer(RUN_TIMEOUT, ft.kill)
    watchdog.start()
    try:
        assert ft.stderr is not None
        for line in ft.stderr:  # log lines (not a terminal): wait for the seeding phase
            if "seeding until" in line:
                break
        else:
            pytest.fail("exited without seeding")
        ft.send_signal(sig)
        rc, out, err = finish(ft)
    finally:
        watchdog.cancel()
        kill(ft)
    assert rc == 0, err
    assert "Traceback" not in err
    assert "stopped by interrupted" in out
    assert tree_bytes(tmp_path / "ft" / "tree") == tree_bytes(src)


def test_seed_upload_limit_serves_libtorrent(payload: tuple[Path, Path],
                                             tmp_path: Path) -> None:
    require_module("libtorrent")
    src, torrent = payload
    limit = 1 << 20
    with FasttorrentSeed(torrent, src.parent, extra=["--upload-limit", "1M"]) as seeder:
        t0 = time.monotonic()
        lt = lt_fetch(torrent, tmp_path / "lt", seeder.port)
        elapsed = time.monotonic() - t0
        assert lt.returncode == 0, lt.stderr
        j = seeder.stop_summary()  # exit 7, no traceback, its --json summary
    assert tree_bytes(tmp_path / "lt" / "tree") == tree_bytes(src)
    assert j["uploaded_bytes"] >= SIZE
    # No more than the burst, plus one block of debt, plus the limit per second can
    # have left: a lower bound on the time (a busy machine only makes it longer).
    assert elapsed >= (SIZE - limit * BURST - BLOCK_SIZE) / limit


BAD = [
    ("download", "--seed-time", "-1"),
    ("download", "--seed-time", "nan"),
    ("download", "--seed-time", "inf"),
    ("download", "--seed-time", "soon"),
    ("download", "--seed-ratio", "-0.5"),
    ("download", "--seed-ratio", "NaN"),
    ("download", "--upload-limit", "0"),
    ("download", "--upload-limit", "-5M"),
    ("download", "--upload-limit", "fast"),
    ("download", "--upload-limit", "inf"),
    ("seed", "--upload-limit", "0"),
    ("seed", "--upload-limit", "-1K"),
    ("seed", "--upload-limit", "nan"),
]


@pytest.mark.parametrize(("cmd", "flag", "value"), BAD)
def test_bad_values_are_one_line_usage_errors(payload: tuple[Path, Path], tmp_path: Path,
                                              cmd: str, flag: str, value: str) -> None:
    src, torrent = payload
    target = ["-o", str(tmp_path / "out")] if cmd == "download" else [str(src.parent)]
    r = subprocess.run([sys.executable, "-m", "torrent", cmd, str(torrent), *target,
                        "--no-trackers", f"{flag}={value}"],
                       check=False, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("fasttorrent: ") and flag in lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert not (tmp_path / "out").exists()
