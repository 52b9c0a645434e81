"""A full disk: at the start, and filled by another process in the middle of a download.

Every download is the real ``fasttorrent download`` subprocess writing into a
small tmpfs mounted for the test (``mount -t tmpfs -o size=...``; CI runs as
root, and under ``CI=true`` a failed mount fails the test instead of skipping
it).  Another process (``dd``) fills the tmpfs while the download runs.

Where a full disk bites mid-run
-------------------------------
The data files are preallocated at the start (``posix_fallocate`` in
:meth:`torrent.storage.Storage.create_files`), and tmpfs, like ext4, really
reserves the pages: once another process took every free page, writes into
the preallocated files still succeed.  What still needs space mid-run is

1. the resume journal: it grows by 8 bytes per piece, and a record that
   crosses into a new page (or block) needs one.  With 640 pieces the
   journal's first 4 KiB page holds 507 records; the 508th straddles the
   boundary, and the kernel writes its first half and then fails (a short
   write followed by ``ENOSPC``).
2. the data itself where preallocation reserves nothing (NFS,
   copy-on-write filesystems): ``tests/helpers/faultrun.py no-fallocate``
   makes ``posix_fallocate`` unsupported in the coordinator, so the files are
   created sparse, and the ``ENOSPC`` comes from the kernel at the worker's
   ``pwrite``.

The scenario, ordered by observable events rather than by time: a first peer
has pieces ``[0, HAVE_FIRST)``; a second one, with every other piece but the
last, sits behind a :class:`~helpers.testpeer.GatedRelay`.  Once the journal
records all of the first peer's pieces, ``dd`` fills the disk (for sparse
files it leaves room for a few more pieces, written just before the
failure), then the gate opens.  Nobody has the last piece, so the download
cannot finish before the disk-full error.  It must exit 4 with one line on
stderr and leave a journal that lists only pieces whose data is on disk.
Started again while the disk is still full, it exits 4 at once and leaves
the journal as it was.  Once the space is freed, a restart (against a
:class:`~helpers.testpeer.TestPeer` that records every request) must
complete without asking for any piece that was on disk.  Each mid-run case
prints its figures as a JSON line (and records them as a test property).

``EDQUOT`` (a quota) is the same error to fasttorrent.  The test machine's
kernel has no quota support for tmpfs or ext4 (``CONFIG_TMPFS_QUOTA`` and
``CONFIG_QFMT_V2`` are off), so it is checked where it is translated: the
journal and :func:`torrent.storage.os_error`.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import IN_CI
from helpers.payload import TorrentPayload as Payload
from helpers.payload import make_torrent_payload
from helpers.testpeer import GatedRelay, TestPeer

from torrent.errors import DiskFull, StorageError
from torrent.hashing import PIECE_GOOD, hash_pieces
from torrent.journal import HEADER_SIZE, Journal, journal_path
from torrent.storage import layout_for, os_error

pytestmark = pytest.mark.timeout(180)

PIECE_LEN = 16 * 1024
#: Three files of odd sizes (pieces straddle file boundaries), 10 MiB, 640 pieces:
#: more records than the journal's first page holds (see the module docstring).
FILES = {"a.bin": 3 * 1024 * 1024 + 123, "sub/b.bin": 5 * 1024 * 1024 + 7777,
         "c.bin": 2 * 1024 * 1024 - 7900}
#: Pieces the first peer has; they are journaled before the disk fills.
HAVE_FIRST = 256
#: The tmpfs page (the unit in which it allocates).
PAGE = 4096
#: Journal layout (torrent/journal.py): a 36-byte header, then 8-byte records.
JOURNAL_RECORD = 8
#: A seal: a marker record and a file count, then (size, mtime) per file.
SEAL_HEAD = 12
SEAL_FILE = 16
#: Records that fit in the journal's first page.
RECORDS_IN_FIRST_PAGE = (PAGE - HEADER_SIZE) // JOURNAL_RECORD
#: What the filler leaves free when the data is not preallocated: room for a
#: few pieces (each takes 4 or 5 pages) after those journaled before.
LEAVE_FREE = 40 * PAGE
#: Room on the tmpfs beyond the data: the journal's page, directories, and the
#: filler's share, which it takes whole.
FS_SLACK = 1 << 20
#: Upper bound of one download subprocess; each takes a few seconds.
RUN_TIMEOUT = 60.0
#: Poll period while watching a running download (the journal, the process).
POLL = 0.02
#: How long a finished run's worker processes may take to go.
REAP_TIMEOUT = 10.0
#: Runs the CLI with posix_fallocate unsupported (see tests/helpers/faultrun.py).
FAULTRUN = str(Path(__file__).resolve().parent / "helpers" / "faultrun.py")


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Payload:
    p = make_torrent_payload(tmp_path_factory.mktemp("diskfull"), FILES, seed=9,
                             piece_length=PIECE_LEN)
    assert p.meta.num_pieces > RECORDS_IN_FIRST_PAGE > HAVE_FIRST
    return p


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Mount a tmpfs of ``size`` bytes (a factory); unmounted at teardown."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        mnt = tmp_path / f"fs{len(mounted)}"
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                           capture_output=True, text=True, timeout=10, check=False)
        if r.returncode != 0:
            if IN_CI:
                pytest.fail(f"cannot mount a tmpfs in CI: {r.stderr.strip()}")
            pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
        mounted.append(mnt)
        assert os.path.ismount(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        r = subprocess.run(["umount", str(mnt)], capture_output=True, timeout=10, check=False)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=10,
                           check=False)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(mnt: Path, leave: int = 0) -> int:
    """Another process takes the free pages of the tmpfs ``mnt`` but ``leave`` bytes;
    returns the bytes it took."""
    assert os.path.ismount(mnt), f"{mnt} is not a mount point: refusing to fill it"
    free = free_bytes(mnt)
    assert free < 64 << 20, f"{mnt} has {free} bytes free: not the small test filesystem"
    # bounded by count as well as by the filesystem: never more than what was free
    count = (free - leave) // PAGE + (0 if leave else 1)
    r = subprocess.run(["dd", "if=/dev/zero", f"of={mnt / 'filler'}", f"bs={PAGE}",
                        f"count={count}"], capture_output=True, text=True, timeout=30,
                       check=False)
    assert free_bytes(mnt) == leave, f"dd left {free_bytes(mnt)} bytes free: {r.stderr}"
    return os.path.getsize(mnt / "filler")


def data_bytes() -> int:
    """Pages the payload's files take on a tmpfs."""
    return sum(-(-size // PAGE) * PAGE for size in FILES.values())


def journal_of(payload: Payload, out: Path) -> Journal:
    m = payload.meta
    return Journal(journal_path(str(out), m.info_hash), m.info_hash, m.num_pieces,
                   m.piece_length)


def good_on_disk(payload: Payload, out: Path) -> set[int]:
    """The pieces whose data under ``out`` matches its SHA-1."""
    m = payload.meta
    res = hash_pieces(layout_for(m, str(out)), digests=m.piece_hashes, workers=1)
    return {i for i, s in enumerate(res.status) if s == PIECE_GOOD}


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "FASTTORRENT_DEBUG"}


def download_args(payload: Payload, out: Path, peers: list[str]) -> list[str]:
    args = ["download", payload.torrent, "-o", str(out), "--workers", "1", "--no-trackers",
            "--json", "--stall-timeout", "30", "--bind", "127.0.0.1"]
    for p in peers:
        args += ["--peer", p]
    return args


def assert_one_line_disk_full(rc: int, stderr: str) -> None:
    assert rc == 4, f"exit {rc}\n{stderr}"
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("fasttorrent: disk full"), stderr


@dataclass
class FullRun:
    rc: int
    stdout: str
    stderr: str
    filled: int  # bytes the filler took
    journaled_before: int  # records in the journal when the filler ran


def download_until_disk_full(payload: Payload, out: Path, mnt: Path, *,
                             no_fallocate: bool = False, leave: int = 0) -> FullRun:
    """The scenario of the module docstring, up to the end of the first run."""
    n = payload.n
    journal = journal_of(payload, out)
    gate = threading.Event()
    with TestPeer(payload.torrent, payload.root, has=range(HAVE_FIRST)) as first, \
            TestPeer(payload.torrent, payload.root, has=range(HAVE_FIRST, n - 1)) as rest, \
            GatedRelay(("127.0.0.1", rest.port), gate) as relay:
        args = download_args(payload, out, [first.addr, relay.addr])
        cmd = ([sys.executable, FAULTRUN, "no-fallocate:0", *args] if no_fallocate
               else [sys.executable, "-m", "torrent", *args])
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=clean_env(), start_new_session=True)
        kids: dict[int, psutil.Process] = {}
        filled = journaled = 0
        deadline = time.monotonic() + RUN_TIMEOUT
        try:
            while proc.poll() is None:
                assert time.monotonic() < deadline, f"the download ran over {RUN_TIMEOUT} s"
                try:
                    for k in psutil.Process(proc.pid).children(recursive=True):
                        kids.setdefault(k.pid, k)
                except psutil.NoSuchProcess:
                    pass
                if not gate.is_set():
                    recorded = journal.read() or set()
                    if len(recorded) >= HAVE_FIRST:
                        # every piece of the first peer is on disk and journaled:
                        # another process takes the rest of the disk, then the
                        # second peer starts sending
                        journaled = len(recorded)
                        filled = fill(mnt, leave)
                        gate.set()
                time.sleep(POLL)  # watching the journal and the process, bounded above
            stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate(timeout=RUN_TIMEOUT)
    assert gate.is_set(), f"the journal never held {HAVE_FIRST} pieces:\n{stderr}"
    reap = time.monotonic() + REAP_TIMEOUT
    while any(_running(k) for k in kids.values()) and time.monotonic() < reap:
        time.sleep(POLL)  # waiting for the workers to exit, bounded by REAP_TIMEOUT
    left = [pid for pid, k in kids.items() if _running(k)]
    assert not left, f"processes of the run outlived it: {left}"
    return FullRun(proc.returncode, stdout, stderr, filled, journaled)


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def start_on_a_full_disk(payload: Payload, out: Path) -> tuple[int, str]:
    """A download that must stop before contacting any peer: (exit code, stderr)."""
    with TestPeer(payload.torrent, payload.root) as peer:
        proc = subprocess.run([sys.executable, "-m", "torrent",
                               *download_args(payload, out, [peer.addr])],
                              capture_output=True, text=True, timeout=RUN_TIMEOUT,
                              env=clean_env(), check=False)
        assert peer.connections == 0, proc.stderr
    return proc.returncode, proc.stderr


def restart(payload: Payload, out: Path) -> tuple[dict[str, Any], set[int]]:
    """Run again against a recording peer with all the data; returns (--json, pieces asked)."""
    with TestPeer(payload.torrent, payload.root) as peer:
        proc = subprocess.run([sys.executable, "-m", "torrent",
                               *download_args(payload, out, [peer.addr])],
                              capture_output=True, text=True, timeout=RUN_TIMEOUT,
                              env=clean_env(), check=False)
        asked = peer.requested_pieces()
    assert proc.returncode == 0, proc.stderr
    for rel in FILES:
        assert (out / "payload" / rel).read_bytes() == \
            (payload.root / "payload" / rel).read_bytes(), rel
    return json.loads(proc.stdout), asked


def check_fault_and_restart(payload: Payload, out: Path, mnt: Path, run: FullRun,
                            where: str, record_property: Callable[[str, Any], None]
                            ) -> dict[str, Any]:
    """The journal lists only pieces on disk; the restart fetches none of them again.

    Returns the figures (also printed as a JSON line and recorded as a property).
    """
    assert_one_line_disk_full(run.rc, run.stderr)
    assert run.stdout == ""
    journal = journal_of(payload, out)
    recorded = journal.read()
    assert recorded is not None
    # every byte of the journal is a whole entry: nothing torn for later appends to follow
    seal = 0 if journal.seal_table is None else SEAL_HEAD + SEAL_FILE * len(journal.seal_table)
    assert os.path.getsize(journal.path) == HEADER_SIZE + JOURNAL_RECORD * len(recorded) + seal
    good = good_on_disk(payload, out)
    assert recorded <= good, f"journaled but not on disk: {sorted(recorded - good)[:20]}"
    assert set(range(HAVE_FIRST)) <= recorded
    assert payload.n - 1 not in good  # nobody had it
    # started again while the disk is still full: refused at once, the journal kept as it is
    before = Path(journal.path).read_bytes()
    rc, stderr = start_on_a_full_disk(payload, out)
    assert_one_line_disk_full(rc, stderr)
    assert Path(journal.path).read_bytes() == before
    os.unlink(mnt / "filler")  # space is free again
    result, asked = restart(payload, out)
    missing = set(range(payload.n)) - good
    assert not asked & good, f"pieces on disk fetched again: {sorted(asked & good)[:20]}"
    assert asked == missing
    assert result["complete"] is True
    assert result["pieces_resumed"] == len(good)
    m = payload.meta
    assert result["bytes_downloaded"] == sum(m.piece_size(i) for i in missing)
    assert not os.path.exists(journal.path)  # removed at completion
    figures = {"case": f"disk full mid-run ({where})", "pieces": payload.n,
               "filled_bytes": run.filled, "journaled_when_filled": run.journaled_before,
               "pieces_verified_on_disk_before_fault": len(good),
               "pieces_in_journal": len(recorded),
               "pieces_found_by_restart_check": len(good - recorded),
               "pieces_fetched_again": len(asked & good),
               "restart_pieces_resumed": result["pieces_resumed"],
               "restart_bytes_downloaded": result["bytes_downloaded"]}
    record_property("figures", figures)
    print(json.dumps(figures))
    return figures


# -- mid-run ------------------------------------------------------------------------------
def test_disk_filled_mid_run_fails_the_journal_append(
        payload: Payload, tmpfs: Callable[[int], Path],
        record_property: Callable[[str, Any], None]) -> None:
    """Preallocated data: the full disk bites where the journal needs a new page."""
    mnt = tmpfs(data_bytes() + FS_SLACK)
    out = mnt / "out"
    run = download_until_disk_full(payload, out, mnt)
    assert "resume journal" in run.stderr, run.stderr
    figures = check_fault_and_restart(payload, out, mnt, run, "resume journal",
                                      record_property)
    # the records that fit in the journal's first page are kept, whole
    assert figures["pieces_in_journal"] == RECORDS_IN_FIRST_PAGE


def test_disk_filled_mid_run_fails_a_data_write(
        payload: Payload, tmpfs: Callable[[int], Path],
        record_property: Callable[[str, Any], None]) -> None:
    """Files that could not be preallocated: the full disk bites at a piece's pwrite."""
    mnt = tmpfs(data_bytes() + FS_SLACK)
    out = mnt / "out"
    # room for a few of the second peer's pieces: they are verified and written
    # just before the disk is full
    run = download_until_disk_full(payload, out, mnt, no_fallocate=True, leave=LEAVE_FREE)
    assert "writing piece" in run.stderr, run.stderr
    assert len(good_on_disk(payload, out)) > HAVE_FIRST
    figures = check_fault_and_restart(payload, out, mnt, run, "data write", record_property)
    # the journal had room: every piece written before the failure was flushed and recorded
    assert figures["pieces_found_by_restart_check"] == 0


# -- at the start -------------------------------------------------------------------------
def test_disk_too_small_at_start_exits_4(payload: Payload, tmpfs: Callable[[int], Path]) -> None:
    mnt = tmpfs(data_bytes() // 2)
    rc, stderr = start_on_a_full_disk(payload, mnt / "out")
    assert_one_line_disk_full(rc, stderr)
    assert "the torrent needs" in stderr  # the free-space check, before any file is made


def test_no_room_left_for_the_journal_at_start_exits_4(
        payload: Payload, tmpfs: Callable[[int], Path]) -> None:
    """The data fits exactly (the free-space check passes); the journal's first page does not."""
    mnt = tmpfs(data_bytes())
    out = mnt / "out"
    rc, stderr = start_on_a_full_disk(payload, out)
    assert_one_line_disk_full(rc, stderr)
    assert "resume journal" in stderr
    assert os.listdir(out / ".fasttorrent") == []  # no partial journal left behind


def test_a_magnet_with_no_room_for_the_journal_exits_4(
        payload: Payload, tmpfs: Callable[[int], Path]) -> None:
    """A fresh magnet makes its files and journal once the workers have the torrent
    (Coordinator.make_output, from run): a failure there is the same one-line error."""
    kept = -(-len(Path(payload.torrent).read_bytes()) // PAGE) * PAGE  # its .torrent, kept
    mnt = tmpfs(data_bytes() + kept)
    out = mnt / "out"
    magnet = f"magnet:?xt=urn:btih:{payload.meta.info_hash.hex()}"
    with TestPeer(payload.torrent, payload.root, serve_metadata=True) as peer:
        args = ["download", f"{magnet}&x.pe={peer.addr}", *download_args(payload, out, [])[2:]]
        proc = subprocess.run([sys.executable, "-m", "torrent", *args], capture_output=True,
                              text=True, timeout=RUN_TIMEOUT, env=clean_env(), check=False)
    assert_one_line_disk_full(proc.returncode, proc.stderr)
    assert "resume journal" in proc.stderr
    assert os.listdir(out / ".fasttorrent") == [payload.meta.info_hash.hex() + ".torrent"]


# -- the journal's own handling -----------------------------------------------------------
def test_journal_append_on_a_full_disk_keeps_whole_records(
        payload: Payload, tmpfs: Callable[[int], Path]) -> None:
    """A record straddling the page the disk has no room for: a short write, then ENOSPC.

    The journal keeps the whole records that fit and nothing torn, and says DiskFull.
    """
    mnt = tmpfs(FS_SLACK)
    journal = journal_of(payload, mnt)
    journal.open(set())
    journal.append(list(range(RECORDS_IN_FIRST_PAGE - 10)))
    fill(mnt)
    with pytest.raises(DiskFull, match="disk full while writing the resume journal"):
        journal.append(list(range(RECORDS_IN_FIRST_PAGE - 10, RECORDS_IN_FIRST_PAGE + 10)))
    assert journal.count == RECORDS_IN_FIRST_PAGE
    with pytest.raises(DiskFull):
        journal.seal([(1, 2)] * 3)
    with pytest.raises(DiskFull):
        journal.append([RECORDS_IN_FIRST_PAGE + 20])
    journal.close()
    assert os.path.getsize(journal.path) == PAGE - (PAGE - HEADER_SIZE) % JOURNAL_RECORD
    assert journal.read() == set(range(RECORDS_IN_FIRST_PAGE))


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT])
def test_enospc_and_edquot_are_disk_full(payload: Payload, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    assert isinstance(os_error(OSError(err, os.strerror(err)), "writing x"), DiskFull)
    assert isinstance(os_error(OSError(errno.EIO, "I/O error"), "writing x"), StorageError)
    journal = journal_of(payload, tmp_path)
    journal.open(set())
    real_write = os.write
    calls = []

    def write(fd: int, data: bytes) -> int:
        # the kernel's behaviour at a quota or a full disk: part of it, then the error
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data)[:12])
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(DiskFull):
        journal.append([1, 2, 3])
    monkeypatch.undo()
    journal.close()
    assert journal.read() == {1}  # the whole record written; the torn half is gone
