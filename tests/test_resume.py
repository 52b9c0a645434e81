"""Crash and resume: SIGKILL mid-download, torn and corrupt journals, --recheck, complete data.

Every download is the real ``fasttorrent download`` subprocess.  The crash
tests download from a libtorrent seeder that has only the first two thirds of
the pieces (the rest are zeroed in its copy) and from a slow
:class:`~tests.helpers.testpeer.TestPeer` that has all the others but the
last piece.  Nobody has the last piece, so the download cannot finish before
the injected fault fires: the kill is always mid-download, whatever the
machine's speed, and the slow peer is normally still sending blocks when it
comes.  (libtorrent's upload limit cannot do this job on loopback: it exempts
local peers unless ``ignore_limits_on_local_network`` is off, which
torrent/tools/benchclients/lt_seed.py now sets.)  The restart then runs against a
TestPeer with all the data, which records every request: a piece recorded in
the journal must never be asked for again.

The journal format (torrent/journal.py): a 36-byte header ``<4s20sIQ``
(magic, info-hash, pieces, piece length), then 8-byte records ``<II``
(index, crc32 of info-hash + index).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import require_module
from helpers.arena import SHM_DIR, arena_holders, arena_inodes, is_worker, shm_files
from helpers.payload import TorrentPayload, make_torrent_payload
from helpers.storagewrite import write
from helpers.testpeer import TestPeer

from torrent.journal import MAGIC, Journal, journal_path
from torrent.storage import Storage, layout_for

pytestmark = pytest.mark.timeout(120)

PIECE_LEN = 32 * 1024
#: Three files of odd sizes (pieces straddle file boundaries), about 4 MiB, 128 pieces.
FILES = {"a.bin": 3 * 512 * 1024 + 123, "sub/b.bin": 2 * 1024 * 1024 + 7777,
         "c.bin": 512 * 1024 - 7900}
#: The crash tests' seeder uploads this fast (once lt_seed.py applies limits
#: on loopback; see the module docstring): a few journal batches, one a
#: second, happen before the fault fires.
SEED_RATE = 2 << 20
#: The crash tests' slow peer sends one block per this many seconds: its ~84
#: blocks take about four seconds, longer than the journal takes to reach a
#: third of the pieces.  (The outcome does not depend on it: see the docstring.)
SLOW_BLOCK_DELAY = 0.05
#: Upper bound of one download subprocess; a normal one takes about a second.
DOWNLOAD_TIMEOUT = 60
#: How long the processes (and so the shared memory) of a killed run may take to go.
CLEANUP_TIMEOUT = 10.0
#: Poll period while watching a running download.
POLL = 0.02
HEADER = struct.Struct("<4s20sIQ")
RECORD = struct.Struct("<II")


@dataclass
class Payload(TorrentPayload):
    @property
    def cut(self) -> int:
        """The first piece the partial seeder lacks."""
        return 2 * self.n // 3


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Payload:
    p = make_torrent_payload(tmp_path_factory.mktemp("resume"), FILES, seed=4242,
                             piece_length=PIECE_LEN)
    return Payload(p.root, p.torrent, p.meta)


@pytest.fixture(scope="module")
def partial_seeder(payload: Payload, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A rate-limited libtorrent seeder with pieces [0, cut) only."""
    require_module("libtorrent")
    from helpers.swarm import start_seeders

    work = tmp_path_factory.mktemp("partial-seed")
    shutil.copytree(payload.root, work / "data")
    zero_pieces(payload.meta, work / "data", range(payload.cut, payload.n))
    seeders = start_seeders(payload.torrent, [str(work / "data")], str(work), [SEED_RATE])
    try:
        assert seeders[0].pieces == list(range(payload.cut))
        yield seeders[0]
    finally:
        for s in seeders:
            s.stop()


# -- helpers --------------------------------------------------------------------------------
def zero_pieces(meta: Any, root: Path, pieces: Any) -> None:
    with Storage(layout_for(meta, str(root)), writable=True) as st:
        for i in pieces:
            write(st, i * meta.piece_length, memoryview(bytes(meta.piece_size(i))))


def flip_byte(meta: Any, root: Path, piece: int) -> None:
    with Storage(layout_for(meta, str(root)), writable=True) as st:
        buf = bytearray(1)
        at = piece * meta.piece_length + meta.piece_size(piece) // 2
        st.read_into(at, memoryview(buf))
        buf[0] ^= 0xFF
        write(st, at, memoryview(buf))


def assert_same_files(payload: Payload, out: Path) -> None:
    for rel in FILES:
        got = (out / "payload" / rel).read_bytes()
        assert got == (payload.root / "payload" / rel).read_bytes(), rel


def journal_of(payload: Payload, out: Path) -> Journal:
    m = payload.meta
    return Journal(journal_path(str(out), m.info_hash), m.info_hash, m.num_pieces,
                   m.piece_length)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "FASTTORRENT_DEBUG"}


#: Runs the CLI with a fault patched into the journal (the package has no fault hooks).
FAULTRUN = str(Path(__file__).resolve().parent / "helpers" / "faultrun.py")


def download_cmd(payload: Payload, out: Path, peers: list[str], *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "torrent", "download", payload.torrent, "-o", str(out),
           "--workers", "1", "--no-trackers", "--json", "--stall-timeout", "30",
           "--bind", "127.0.0.1", *extra]
    for p in peers:
        cmd += ["--peer", p]
    return cmd


def download(payload: Payload, out: Path, peers: list[str],
             *extra: str) -> tuple[int, dict[str, Any], str]:
    """Run a download to its end (no fault); return (exit code, --json result, stderr)."""
    proc = subprocess.run(download_cmd(payload, out, peers, *extra), capture_output=True,
                          timeout=DOWNLOAD_TIMEOUT, env=clean_env(), check=False)
    text = proc.stdout.decode()
    return proc.returncode, (json.loads(text) if text.strip() else {}), proc.stderr.decode()


@dataclass
class KilledRun:
    returncode: int
    stderr: str
    procs: dict[int, Any] = field(default_factory=dict)  # pid -> psutil.Process (descendants)
    workers: set[int] = field(default_factory=set)  # pids of the download workers
    arenas: set[int] = field(default_factory=set)  # inodes of the arena memfds it mapped
    shm_files: set[str] = field(default_factory=set)  # /dev/shm paths it mapped (none expected)

    def leftovers(self) -> tuple[list[int], set[int]]:
        """Descendant processes still running, and processes still holding the arena."""
        import psutil

        alive = []
        for pid, p in self.procs.items():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        return alive, arena_holders(self.arenas)


def run_with_fault(cmd: list[str], fault: str) -> KilledRun:
    """Run a download with ``fault`` injected (helpers/faultrun.py), watching its processes
    and shared memory."""
    assert cmd[1:3] == ["-m", "torrent"]
    cmd = [cmd[0], FAULTRUN, fault, *cmd[3:]]
    psutil = require_module("psutil")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=clean_env())
    run = KilledRun(0, "")
    deadline = time.monotonic() + DOWNLOAD_TIMEOUT
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"the fault {fault} did not fire in {DOWNLOAD_TIMEOUT} s")
            try:
                kids = psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                kids = []
            for k in kids:
                run.procs.setdefault(k.pid, k)
                if k.pid in run.workers:
                    continue
                # Checked on every poll: just after fork a child still shows
                # its parent's command line, until it execs the interpreter.
                try:
                    if is_worker(k.pid):
                        run.workers.add(k.pid)
                except psutil.Error:
                    pass
            for pid in [proc.pid, *(k.pid for k in kids)]:
                run.arenas |= arena_inodes(pid)
                run.shm_files |= shm_files(pid)
            time.sleep(POLL)
    finally:
        if proc.poll() is None:
            proc.kill()
        _out, err = proc.communicate(timeout=DOWNLOAD_TIMEOUT)
    run.returncode = proc.returncode
    run.stderr = err.decode()
    return run


def assert_cleaned_up(run: KilledRun) -> None:
    assert run.workers, "no worker process was seen while the download ran"
    assert run.arenas, "no shared-memory arena was seen while the download ran"
    assert not run.shm_files, f"the download mapped files in {SHM_DIR}: {run.shm_files}"
    deadline = time.monotonic() + CLEANUP_TIMEOUT
    while True:
        alive, holders = run.leftovers()
        if not alive and not holders:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{CLEANUP_TIMEOUT} s after the kill: processes {alive} "
                                 f"remain and {holders} still hold the arena")
        time.sleep(POLL)


def resume_from_test_peer(payload: Payload, out: Path,
                          recorded: set[int]) -> tuple[dict[str, Any], TestPeer]:
    """Restart against a recording test peer alone; check it completes and skips ``recorded``."""
    with TestPeer(payload.torrent, payload.root) as peer:
        rc, result, err = download(payload, out, [peer.addr])
    assert rc == 0, err
    assert result["complete"] is True
    assert_same_files(payload, out)
    asked = peer.requested_pieces()
    assert not asked & recorded, f"journaled pieces fetched again: {sorted(asked & recorded)}"
    # nobody had the last piece before: it can only have come from the test peer now
    assert payload.n - 1 in asked
    assert result["pieces_resumed"] >= len(recorded)
    assert not os.path.exists(journal_of(payload, out).path)  # removed at completion
    return result, peer


# -- crash mid-download ------------------------------------------------------------------
def crash(payload: Payload, out: Path, seeder: Any, fault: str) -> KilledRun:
    """Download from the partial seeder and a slow peer lacking the last piece, with ``fault``."""
    with TestPeer(payload.torrent, payload.root, has=range(payload.cut, payload.n - 1),
                  block_delay=SLOW_BLOCK_DELAY) as slow:
        return run_with_fault(download_cmd(payload, out, [seeder.addr, slow.addr]), fault)


def test_sigkill_after_journal_then_resume(payload: Payload, partial_seeder: Any,
                                           tmp_path: Path) -> None:
    out = tmp_path / "out"
    need = payload.n // 3
    run = crash(payload, out, partial_seeder, f"kill-after-journal:{need}")
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert_cleaned_up(run)
    journal = journal_of(payload, out)
    assert os.path.exists(journal.path)
    recorded = journal.read()
    assert recorded is not None and len(recorded) >= need
    assert payload.n - 1 not in recorded  # nobody had it
    result, _peer = resume_from_test_peer(payload, out, recorded)
    assert result["pieces_resumed"] >= need


def test_sigkill_inside_a_journal_write_then_resume(payload: Payload, partial_seeder: Any,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = crash(payload, out, partial_seeder, f"kill-in-journal:{payload.n // 3}")
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert_cleaned_up(run)
    journal = journal_of(payload, out)
    size = os.path.getsize(journal.path)
    assert size > HEADER.size and (size - HEADER.size) % RECORD.size != 0, "no torn record"
    intact = journal.read()
    assert intact, "no intact record before the torn one"
    assert len(intact) == (size - HEADER.size) // RECORD.size
    resume_from_test_peer(payload, out, intact)


# -- bad journals and rechecks -----------------------------------------------------------------
def _bad_journal(kind: str, meta: Any) -> bytes:
    n = meta.num_pieces
    if kind == "garbage":
        return random.Random(7).randbytes(1000)
    if kind == "short-header":
        return HEADER.pack(MAGIC, meta.info_hash, n, meta.piece_length)[:20]
    if kind == "wrong-info-hash":
        # A valid journal of another torrent, claiming every piece.
        other = hashlib.sha1(b"another torrent").digest()
        return HEADER.pack(MAGIC, other, n, meta.piece_length) + b"".join(
            RECORD.pack(i, zlib.crc32(other + i.to_bytes(4, "little"))) for i in range(n))
    assert kind == "bad-crc"
    # Our header, but every record's checksum is off by one bit.
    return HEADER.pack(MAGIC, meta.info_hash, n, meta.piece_length) + b"".join(
        RECORD.pack(i, zlib.crc32(meta.info_hash + i.to_bytes(4, "little")) ^ 1)
        for i in range(n))


@pytest.mark.parametrize("kind", ["garbage", "short-header", "wrong-info-hash", "bad-crc"])
def test_corrupt_journal_costs_a_recheck_not_the_download(payload: Payload, tmp_path: Path,
                                                          kind: str) -> None:
    out = tmp_path / "out"
    shutil.copytree(payload.root, out)
    missing = set(range(0, payload.n, 5)) | {payload.n - 1}
    zero_pieces(payload.meta, out, missing)
    journal = journal_of(payload, out)
    os.makedirs(os.path.dirname(journal.path))
    with open(journal.path, "wb") as f:
        f.write(_bad_journal(kind, payload.meta))
    with TestPeer(payload.torrent, payload.root) as peer:
        rc, result, err = download(payload, out, [peer.addr])
    assert rc == 0, err
    assert_same_files(payload, out)
    # The recheck found every good piece on disk: only the missing ones were fetched.
    assert peer.requested_pieces() == missing
    assert result["pieces_resumed"] == payload.n - len(missing)


def test_recheck_refetches_a_piece_corrupted_after_it_was_journaled(payload: Payload,
                                                                    tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(payload.root, out)
    journal = journal_of(payload, out)
    journal.open(set(range(payload.n)))  # a journal claiming every piece
    journal.close()
    bad = payload.n // 2
    flip_byte(payload.meta, out, bad)
    with TestPeer(payload.torrent, payload.root) as peer:
        rc, result, err = download(payload, out, [peer.addr], "--recheck")
    assert rc == 0, err
    assert_same_files(payload, out)
    assert peer.requested_pieces() == {bad}
    assert result["pieces_resumed"] == payload.n - 1


def test_complete_data_is_checked_and_nothing_requested(payload: Payload,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(payload.root, out)
    with TestPeer(payload.torrent, payload.root) as peer:
        rc, result, err = download(payload, out, [peer.addr])
    assert rc == 0, err
    assert peer.requests == []
    assert peer.connections == 0
    assert result["complete"] is True
    assert result["pieces_resumed"] == payload.n
    assert result["bytes_downloaded"] == 0
    assert_same_files(payload, out)
    assert not (out / ".fasttorrent").exists()  # no journal left behind
