"""Tests of the shared-memory arena (torrent/shm.py): sizing, memfd lifecycle, cleanup.

Real memfd segments and real child processes (started by torrent/launch.py).
A memfd has no name to leak; what a test checks instead is that nothing is
left holding it (:func:`helpers.payload.arena_holders`: no process maps it or
has it open, so the kernel has freed it) and that nothing appeared in
``/dev/shm``.  The last test SIGKILLs the whole process group of a running
download ten times (the ``timeout -s KILL`` / ``docker kill`` / OOM-killer
case) and checks just that, then that a restart completes.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers.arena import SHM_DIR, arena_holders, arena_inodes, is_worker
from helpers.testpeer import TestPeer

from torrent import metainfo, shm, sysinfo
from torrent._io import DIRECT_ALIGN
from torrent.creator import create_torrent
from torrent.errors import ResourceExhausted
from torrent.launch import start_child
from torrent.shm import MAX_SLOT_BYTES, MAX_SLOTS, MIN_SLOTS, Arena, plan_slots, slot_stride

pytestmark = pytest.mark.timeout(180)

MiB = 1 << 20
#: Bound on a child process's start-up and on one download subprocess.
CHILD_TIMEOUT = 60.0
#: How long the processes of a killed run (and so its arena) may take to go.
CLEANUP_TIMEOUT = 10.0
#: Poll period while waiting for a condition with a deadline.
POLL = 0.02


def fds_open() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


@pytest.fixture
def no_leak() -> Iterator[None]:
    """Fail a test that leaves a descriptor open, or an arena mapped, in this process."""
    fds, inodes = fds_open(), arena_inodes(os.getpid())
    yield
    assert fds_open() <= fds  # (the listing's own descriptor is gone by then)
    assert arena_inodes(os.getpid()) <= inodes


def free_memory(monkeypatch: pytest.MonkeyPatch, nbytes: int | None,
                what: str = "MemAvailable") -> None:
    monkeypatch.setattr(shm, "arena_free_bytes", lambda: None if nbytes is None else (nbytes, what))


# -- plan_slots ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("free", "piece", "workers", "budget", "expected"),
    [
        (64 << 30, MiB, 2, None, 64),  # default 256 MiB budget: 128 per worker, 64 MiB cap
        (64 << 30, MiB // 4, 1, None, 256),  # small pieces: more slots, the same 64 MiB
        (64 << 30, MiB // 4, 2, None, 128),  # ... that 64 MiB split between two workers
        (64 << 30, MiB // 4, 8, None, 64),  # ... at least 16 MiB each
        (64 << 30, 16384, 1, None, MAX_SLOTS),  # tiny pieces: the count cap
        (64 << 30, 16 * MiB, 2, None, 8),  # 256 MiB / (16 MiB x 2)
        (64 << 30, MiB, 1, 10 * MiB, 10),  # the budget binds
        (64 << 30, MiB, 4, MiB, MIN_SLOTS),  # a tiny budget still gets the minimum
        (40 * MiB, MiB, 2, None, 10),  # half of the available memory: 20 MiB / 2 MiB
        (8 * MiB, MiB, 2, None, MIN_SLOTS),  # half the memory is 4 MiB: just the minimum
        (None, MiB, 2, 10 * MiB, 5),  # memory unknown: the budget alone
        (64 << 30, MiB, 16, None, 16),  # 16 workers: still 256 MiB in all
        (64 << 30, MiB, 64, None, 16),  # 64 workers: 16 MiB each (1 GiB), not 4 MiB
        (1 << 30, MiB, 64, None, 8),  # ... within half of the available memory
    ],
)
def test_plan_slots_bounds(monkeypatch: pytest.MonkeyPatch, free: int | None, piece: int,
                           workers: int, budget: int | None, expected: int) -> None:
    free_memory(monkeypatch, free)
    per = plan_slots(piece, workers, budget)
    assert per == expected
    assert MIN_SLOTS <= per <= MAX_SLOTS
    assert per <= 64 or per * piece <= MAX_SLOT_BYTES
    bound = free if free is not None else budget
    assert bound is not None and per * piece * workers <= bound  # never more


def test_plan_slots_counts_the_aligned_stride(monkeypatch: pytest.MonkeyPatch) -> None:
    """A slot of a piece plus one page of slack, or of an odd size, takes whole pages."""
    free_memory(monkeypatch, 64 << 30)
    odd = 100_000  # 24.4 pages: 25 pages apart
    assert slot_stride(odd) == 25 * 4096
    assert plan_slots(odd, 1, 100 * 25 * 4096) == 100
    assert plan_slots(MiB + DIRECT_ALIGN, 2, 10 * (MiB + DIRECT_ALIGN)) == 5


@pytest.mark.parametrize(("free", "piece", "workers", "what"),
                         [(3 * MiB, MiB, 2, "MemAvailable"), (0, 16384, 1, "MemAvailable"),
                          (64 * MiB, 16 * MiB, 4, "cgroup memory limit")])
def test_plan_slots_too_small_is_resource_exhausted(monkeypatch: pytest.MonkeyPatch, free: int,
                                                    piece: int, workers: int, what: str) -> None:
    free_memory(monkeypatch, free, what)
    with pytest.raises(ResourceExhausted) as ei:
        plan_slots(piece, workers)
    msg = str(ei.value)
    assert ei.value.exit_code == 8
    assert f"{free >> 20} MiB free ({what})" in msg
    assert f"{workers} worker(s)" in msg and "--workers" in msg
    assert "\n" not in msg


def test_cli_reports_exhausted_shared_memory_in_one_line_with_exit_8(tmp_path: Path) -> None:
    """The whole path: the CLI maps the arena's ResourceExhausted to exit 8, no traceback."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(random.Random(1).randbytes(256 * 1024))
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(create_torrent(str(src / "a.bin"), piece_length=64 * 1024))
    code = textwrap.dedent("""
        import sys
        import torrent.shm
        torrent.shm.arena_free_bytes = lambda: (1 << 20, "cgroup memory limit")
        from torrent.cli import main
        sys.exit(main(sys.argv[1:]))
        """)
    r = subprocess.run([sys.executable, "-c", code, "download", str(torrent), "-o",
                        str(tmp_path / "out"), "--no-trackers", "--workers", "16",
                        "--peer", "127.0.0.1:9"],
                       capture_output=True, text=True, timeout=CHILD_TIMEOUT, check=False)
    assert r.returncode == 8, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "shared memory" in lines[0] and "cgroup memory limit" in lines[0]
    assert "Traceback" not in r.stderr


# -- available memory (torrent/sysinfo.py), on fake /proc and cgroup trees ------------------


def fake_tree(root: Path, files: dict[str, str]) -> tuple[str, str]:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return str(root / "proc"), str(root / "cgroup")


MEMINFO = "MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:    8000000 kB\n"


def test_available_memory_without_a_cgroup_limit_is_memavailable(tmp_path: Path) -> None:
    proc, cg = fake_tree(tmp_path, {"proc/meminfo": MEMINFO, "proc/self/cgroup": "0::/\n",
                                    "cgroup/memory.current": "123\n"})
    assert sysinfo.available_memory(proc, cg) == (8000000 * 1024, "MemAvailable")


def test_available_memory_v2_limit_counts_inactive_cache_as_free(tmp_path: Path) -> None:
    # 1 GiB limit, 900 MiB used of which 600 MiB inactive page cache: 724 MiB free
    proc, cg = fake_tree(tmp_path, {
        "proc/meminfo": MEMINFO, "proc/self/cgroup": "0::/svc/job\n",
        "cgroup/svc/job/memory.max": "max\n", "cgroup/svc/job/memory.current": "5\n",
        "cgroup/svc/memory.max": f"{1 << 30}\n", "cgroup/svc/memory.current": f"{900 * MiB}\n",
        "cgroup/svc/memory.stat": f"anon 1\ninactive_file {600 * MiB}\nactive_file 7\n"})
    assert sysinfo.available_memory(proc, cg) == (724 * MiB, "cgroup memory limit")


def test_available_memory_v2_tightest_limit_on_the_way_up(tmp_path: Path) -> None:
    proc, cg = fake_tree(tmp_path, {
        "proc/meminfo": MEMINFO, "proc/self/cgroup": "0::/a/b\n",
        "cgroup/a/b/memory.max": f"{500 * MiB}\n", "cgroup/a/b/memory.current": f"{100 * MiB}\n",
        "cgroup/a/memory.max": f"{300 * MiB}\n", "cgroup/a/memory.current": f"{250 * MiB}\n"})
    assert sysinfo.available_memory(proc, cg) == (50 * MiB, "cgroup memory limit")


def test_available_memory_v1_hierarchical_limit(tmp_path: Path) -> None:
    proc, cg = fake_tree(tmp_path, {
        "proc/meminfo": MEMINFO, "proc/self/cgroup": "7:cpu:/x\n4:memory:/docker/abc\n",
        "cgroup/memory/docker/abc/memory.usage_in_bytes": f"{300 * MiB}\n",
        "cgroup/memory/docker/abc/memory.stat":
            f"cache 1\nhierarchical_memory_limit {512 * MiB}\ntotal_inactive_file {100 * MiB}\n"})
    assert sysinfo.available_memory(proc, cg) == (312 * MiB, "cgroup memory limit")


def test_available_memory_v1_unlimited_is_memavailable(tmp_path: Path) -> None:
    proc, cg = fake_tree(tmp_path, {
        "proc/meminfo": MEMINFO, "proc/self/cgroup": "4:memory:/\n",
        "cgroup/memory/memory.usage_in_bytes": "1\n",
        "cgroup/memory/memory.stat": "hierarchical_memory_limit 9223372036854771712\n"})
    assert sysinfo.available_memory(proc, cg) == (8000000 * 1024, "MemAvailable")


def test_available_memory_unknown_is_none(tmp_path: Path) -> None:
    assert sysinfo.available_memory(str(tmp_path / "p"), str(tmp_path / "c")) is None


def test_available_memory_here_is_at_most_memavailable() -> None:
    got = sysinfo.available_memory()
    assert got is not None
    with open("/proc/meminfo") as f:
        avail = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemAvailable:"))
    assert 0 < got[0] <= avail * 1.1  # (MemAvailable moves between the two reads)


# -- one process ----------------------------------------------------------------------------


def test_create_is_an_anonymous_reserved_memfd(no_leak: None) -> None:
    a = Arena.create(64 * 1024, 3)
    try:
        fd = a.fd
        link = os.readlink(f"/proc/self/fd/{fd}")
        assert link.startswith("/memfd:fasttorrent-arena")  # no path in /dev/shm
        assert not os.get_inheritable(fd)  # MFD_CLOEXEC: only pass_fds hands it on
        st = os.fstat(fd)
        assert st.st_size == 3 * 64 * 1024
        assert st.st_blocks * 512 >= 3 * 64 * 1024  # reserved up front (posix_fallocate)
        assert arena_inodes(os.getpid()) >= {st.st_ino}
        assert a.owner
    finally:
        a.close()
    assert not a.owner
    with pytest.raises(ValueError):
        a.fd  # noqa: B018 - closed
    a.close()  # twice: harmless


@pytest.mark.parametrize("slot_size", [16384, 40_000, MiB + DIRECT_ALIGN])
def test_slots_are_disjoint_aligned_views(slot_size: int, no_leak: None) -> None:
    a = Arena.create(slot_size, 4)
    try:
        views = [a.slot(i) for i in range(4)]
        for i, v in enumerate(views):
            assert len(v) == slot_size and not v.readonly
            # O_DIRECT writes straight from a slot: it must start on a page
            assert ctypes.addressof(ctypes.c_char.from_buffer(v)) % DIRECT_ALIGN == 0
            v[:] = bytes([i + 1]) * slot_size
        assert [bytes(v[-1:]) for v in views] == [b"\x01", b"\x02", b"\x03", b"\x04"]
        assert bytes(a.slot(2)) == b"\x03" * slot_size
        for bad in (-1, 4):
            with pytest.raises(IndexError):
                a.slot(bad)
    finally:
        a.close()


def test_close_releases_every_view(no_leak: None) -> None:
    a = Arena.create(16384, 2)
    v0, v1 = a.slot(0), a.slot(1)
    a.close()
    for v in (v0, v1):
        with pytest.raises(ValueError, match="released"):
            v[0]
    with pytest.raises(ValueError, match="closed"):
        a.slot(0)


def test_close_with_a_foreign_view_keeps_the_mapping_until_the_view_goes(no_leak: None) -> None:
    """A view the arena did not hand out keeps the mapping alive, then frees it."""
    a = Arena.create(16384, 1)
    ino = os.fstat(a.fd).st_ino
    held = a.slot(0)[0:10]  # a derived view: not released by close()
    a.close()
    with pytest.raises(ValueError):
        a.fd  # noqa: B018 - the arena's descriptor is closed
    held[0] = 1  # the mapping lives on while the view does
    assert ino in arena_inodes(os.getpid())
    held.release()
    # the last view gone, the mmap object goes: unmapped (checked again by no_leak)
    assert ino not in arena_inodes(os.getpid())


def test_create_more_than_the_available_memory_is_resource_exhausted(
        monkeypatch: pytest.MonkeyPatch, no_leak: None) -> None:
    free_memory(monkeypatch, 10 * MiB, "cgroup memory limit")
    monkeypatch.setattr(os, "memfd_create", lambda *a: pytest.fail("allocated anyway"))
    with pytest.raises(ResourceExhausted, match="shared memory: 16 MiB wanted, only 10 MiB free "
                                                r"\(cgroup memory limit\)") as ei:
        Arena.create(MiB, 16)
    assert ei.value.exit_code == 8


def test_a_failed_reservation_is_resource_exhausted(monkeypatch: pytest.MonkeyPatch,
                                                    no_leak: None) -> None:
    def no_room(fd: int, off: int, size: int) -> None:
        raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))

    monkeypatch.setattr(os, "posix_fallocate", no_room)
    with pytest.raises(ResourceExhausted, match="cannot reserve 1 MiB") as ei:
        Arena.create(MiB, 1)
    assert ei.value.exit_code == 8
    assert "\n" not in str(ei.value)


def test_no_descriptor_left_is_resource_exhausted(monkeypatch: pytest.MonkeyPatch) -> None:
    def emfile(name: str, flags: int = 0) -> int:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(os, "memfd_create", emfile)
    with pytest.raises(ResourceExhausted, match="Too many open files"):
        Arena.create(16384, 1)


def test_attach_to_a_bad_descriptor_is_resource_exhausted() -> None:
    with pytest.raises(ResourceExhausted, match="descriptor"):
        Arena.attach(os.open(os.devnull, os.O_RDONLY), 16384, 1)  # not a segment; closed


# -- across processes ---------------------------------------------------------------------------


def _child_writes(arg: tuple[int, int, int, int, int], conn: Any) -> None:
    """Child: attach the inherited arena, fill one slot, close, report."""
    fd, slot_size, nslots, slot, fill = arg
    a = Arena.attach(fd, slot_size, nslots)
    assert not a.owner
    v = a.slot(slot)
    v[:] = bytes([fill]) * slot_size
    a.close()
    conn.send(("done", sorted(fds_open())))


def test_child_writes_a_slot_the_parent_reads(tests_on_path: None, no_leak: None) -> None:
    a = Arena.create(32768, 4)
    try:
        view = a.slot(2)
        view[:] = bytes(32768)
        proc, conn = start_child("test_shm:_child_writes", name="arena-test",
                                 pass_fds=(a.fd,))
        try:
            conn.send((a.fd, 32768, 4, 2, 0xA5))
            assert conn.poll(CHILD_TIMEOUT)
            kind, child_fds = conn.recv()
            assert kind == "done"
            assert a.fd not in child_fds  # the child closed its copy once mapped
        finally:
            conn.close()
            proc.join(CHILD_TIMEOUT)
        assert proc.exitcode == 0
        assert bytes(view) == b"\xa5" * 32768
        assert bytes(a.slot(1)) == bytes(32768)  # other slots untouched
    finally:
        a.close()


_COORDINATOR = textwrap.dedent(
    """
    import os, sys
    from torrent.launch import start_child
    from torrent.shm import Arena
    a = Arena.create(1 << 20, 2)
    a.slot(0)[:4] = b"live"
    proc, conn = start_child("test_shm:_child_waits", name="arena-test", pass_fds=(a.fd,))
    conn.send((a.fd, 1 << 20, 2))
    conn.recv()  # attached
    print(os.fstat(a.fd).st_ino, proc.pid, flush=True)
    sys.stdin.read()  # wait to be killed
    """
)


def _child_waits(arg: tuple[int, int, int], conn: Any) -> None:
    """Child: attach, say so, then wait for the parent (EOF when it dies)."""
    a = Arena.attach(*arg)
    conn.send("attached")
    try:
        conn.recv()
    except EOFError:
        pass
    a.close()


def wait_until_released(inodes: set[int], pids: list[int]) -> None:
    """Until no process in ``pids`` runs and nothing holds the arenas ``inodes``."""
    deadline = time.monotonic() + CLEANUP_TIMEOUT
    while True:
        alive = [p for p in pids if _running(p)]
        holders = arena_holders(inodes)
        if not alive and not holders:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{CLEANUP_TIMEOUT} s after the kill: processes {alive} run "
                                 f"and {sorted(holders)} hold the arena")
        time.sleep(POLL)  # polling a condition with a deadline, not synchronising


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_killed_coordinator_frees_the_arena(tests_on_path: None) -> None:
    """SIGKILL the creator alone: its child sees EOF, exits, and the segment is freed."""
    proc = subprocess.Popen([sys.executable, "-c", _COORDINATOR], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().split()
        assert len(line) == 2, proc.stderr.read() if proc.stderr else ""  # type: ignore[union-attr]
        ino, child = int(line[0]), int(line[1])
        assert arena_holders({ino}) == {proc.pid, child}
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        wait_until_released({ino}, [child])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for s in (proc.stdin, proc.stdout, proc.stderr):
            if s is not None:
                s.close()


# -- a whole process group SIGKILLed, ten times ---------------------------------------------

#: A download the slow peer needs about ten seconds for: it is always mid-way when killed.
KILL_PAYLOAD = 2 * MiB + 12345
KILL_PIECE = 32 * 1024
#: The slow peer sends one 16 KiB block per this many seconds.
SLOW_BLOCK_DELAY = 0.08
KILLS = 10


def shm_entries() -> set[str]:
    try:
        return set(os.listdir(SHM_DIR))
    except FileNotFoundError:
        return set()


def shm_entries_held() -> set[str]:
    """/dev/shm entries some process maps or has open (other programs' live segments)."""
    held = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/maps") as f:
                for line in f:
                    i = line.find(SHM_DIR + "/")
                    if i >= 0:
                        held.add(line[i + len(SHM_DIR) + 1 :].split(" (deleted)")[0].strip())
            for fd in os.listdir(f"/proc/{entry}/fd"):
                target = os.readlink(f"/proc/{entry}/fd/{fd}")
                if target.startswith(SHM_DIR + "/"):
                    held.add(target[len(SHM_DIR) + 1 :].split(" (deleted)")[0])
        except OSError:
            continue
    return held


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (OSError, psutil.Error):
            pass
    return out


@pytest.fixture(scope="module")
def kill_payload(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("killed")
    data = root / "src" / "payload.bin"
    data.parent.mkdir()
    data.write_bytes(random.Random(99).randbytes(KILL_PAYLOAD))
    torrent = root / "payload.torrent"
    torrent.write_bytes(create_torrent(str(data), piece_length=KILL_PIECE))
    return root / "src", str(torrent)


def download_cmd(torrent: str, out: Path, peer: str) -> list[str]:
    return [sys.executable, "-m", "torrent", "download", torrent, "-o", str(out), "--workers",
            "2", "--no-trackers", "--json", "--stall-timeout", "30", "--bind", "127.0.0.1",
            "--peer", peer]


def kill_group_once(cmd: list[str]) -> set[int]:
    """Start a download in its own session; once a worker maps the arena, SIGKILL the group.

    Returns the inodes of the arena it had, after checking that no process of
    the group is left and nothing holds the arena.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    pgid = proc.pid
    seen: set[int] = set()
    inodes: set[int] = set()
    try:
        deadline = time.monotonic() + CHILD_TIMEOUT
        while not inodes:
            assert proc.poll() is None, f"the download ended first: {proc.returncode}"
            assert time.monotonic() < deadline, "no worker mapped the arena in time"
            for c in psutil.Process(proc.pid).children():
                seen.add(c.pid)
                try:
                    if is_worker(c.pid):
                        inodes |= arena_inodes(c.pid)
                except psutil.Error:
                    pass
            time.sleep(POLL)  # polling for a condition, bounded by the deadline
        os.killpg(pgid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(pgid, signal.SIGKILL)
            proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + CLEANUP_TIMEOUT
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(POLL)  # polling for exit, bounded by CLEANUP_TIMEOUT
    assert group_members(pgid) == [], "processes of the killed group remain"
    wait_until_released(inodes, [proc.pid, *seen])
    return inodes


def test_whole_group_sigkills_leave_nothing_and_a_restart_completes(
        kill_payload: tuple[Path, str], tmp_path: Path) -> None:
    src, torrent = kill_payload
    out = tmp_path / "out"
    before = shm_entries()
    arenas: set[int] = set()
    with TestPeer(torrent, src, block_delay=SLOW_BLOCK_DELAY) as slow:
        for _ in range(KILLS):
            arenas |= kill_group_once(download_cmd(torrent, out, slow.addr))
    assert len(arenas) == KILLS  # one arena per run, each one gone
    # Nothing new in /dev/shm, except other programs' live segments.
    assert shm_entries() - before - shm_entries_held() == set()
    with TestPeer(torrent, src) as peer:
        r = subprocess.run(download_cmd(torrent, out, peer.addr), capture_output=True,
                           text=True, timeout=CHILD_TIMEOUT, check=False)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["complete"] is True
    assert (out / "payload.bin").read_bytes() == (src / "payload.bin").read_bytes()
    meta = metainfo.load(torrent)
    assert json.loads(r.stdout)["pieces_total"] == meta.num_pieces


def test_a_reservation_in_the_background_that_fails_is_reported(
        monkeypatch: pytest.MonkeyPatch, no_leak: None) -> None:
    def no_room(fd: int, off: int, size: int) -> None:
        raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))

    monkeypatch.setattr(os, "posix_fallocate", no_room)
    a = Arena.create(MiB, 2, background=True)  # the workers may start on it at once
    a.slot(0)[:4] = b"good"
    a.close()  # waits for the reservation (it uses the descriptor)
    assert a.reservation_error() == "shared memory: cannot reserve 2 MiB: " + \
        os.strerror(errno.ENOMEM)


def test_the_background_reservation_runs_only_on_idle_cpu(
        monkeypatch: pytest.MonkeyPatch, no_leak: None) -> None:
    policies: list[int] = []
    real = os.posix_fallocate

    def seen(fd: int, off: int, size: int) -> None:
        policies.append(os.sched_getscheduler(0))  # the reserving thread's own policy
        real(fd, off, size)

    monkeypatch.setattr(os, "posix_fallocate", seen)
    a = Arena.create(MiB, 2, background=True)
    a.close()  # waits for the reservation
    assert policies == [os.SCHED_IDLE] and a.reservation_error() is None
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # this thread is left as it was


def test_a_reservation_in_the_background_that_succeeds_reports_nothing(no_leak: None) -> None:
    a = Arena.create(MiB, 2, background=True)
    a.slot(1)[-4:] = b"tail"
    assert bytes(a.slot(1)[-4:]) == b"tail"
    a.close()
    assert a.reservation_error() is None


def test_a_memory_reading_is_reused_for_a_second_then_read_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    readings = iter([5 << 30, 7 << 30])
    monkeypatch.setattr(sysinfo, "_mem_available", lambda proc: next(readings))
    monkeypatch.setattr(sysinfo, "_cgroup_headroom", lambda proc, root: None)
    monkeypatch.setattr(sysinfo, "_reading", None)
    assert sysinfo.available_memory(now=100.0) == (5 << 30, "MemAvailable")
    assert sysinfo.available_memory(now=100.0 + sysinfo.MEMORY_READING_TTL / 2) == \
        (5 << 30, "MemAvailable")  # the same reading: no file read
    assert sysinfo.available_memory(now=100.0 + sysinfo.MEMORY_READING_TTL + 0.01) == \
        (7 << 30, "MemAvailable")


def test_a_grown_arena_serves_a_window_past_its_first_size() -> None:
    from torrent.shm import SLOT_ALIGN, Arena

    a = Arena.create(SLOT_ALIGN, 4, reserve=False)
    try:
        fd = os.dup(a.fd)
        with pytest.raises(ResourceExhausted):  # not there yet
            Arena.attach(fd, SLOT_ALIGN, 2, offset=4 * SLOT_ALIGN, keep_fd=True)
        a.grow(8 * SLOT_ALIGN)
        w = Arena.attach(fd, SLOT_ALIGN, 2, offset=4 * SLOT_ALIGN)  # (closes fd)
        w.slot(1)[:3] = b"abc"
        assert os.pread(a.fd, 3, 5 * SLOT_ALIGN) == b"abc"  # the same segment
        w.close()
    finally:
        a.close()
