"""Tests of the shared-memory arena (torrent/shm.py): sizing, cross-process use, cleanup.

Real segments in /dev/shm and real spawned processes; every test checks that it
leaves no segment of its own behind.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from torrent import shm
from torrent.errors import ResourceExhausted
from torrent.shm import MAX_SLOT_BYTES, MAX_SLOTS, MIN_SLOTS, SHM_DIR, Arena, plan_slots

MiB = 1 << 20
#: How long the resource tracker may take to unlink a dead coordinator's segment.
TRACKER_DEADLINE_S = 20.0


def segment_exists(name: str) -> bool:
    return os.path.exists(os.path.join(SHM_DIR, name.lstrip("/")))


@pytest.fixture
def no_leak(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fail a test that leaves behind a segment created in this process.

    Only this test's own segments are watched (names recorded at creation), so
    other test runs sharing /dev/shm cannot make it fail.
    """
    created: list[str] = []
    real = shm.shared_memory.SharedMemory

    class Recording(real):  # type: ignore[misc, valid-type]
        def __init__(self, name: str | None = None, create: bool = False, size: int = 0) -> None:
            super().__init__(name=name, create=create, size=size)
            if create:
                created.append(self.name)

    monkeypatch.setattr(shm.shared_memory, "SharedMemory", Recording)
    yield created
    assert [n for n in created if segment_exists(n)] == []


# -- plan_slots ---------------------------------------------------------------------------


def free_shm(monkeypatch: pytest.MonkeyPatch, nbytes: int) -> None:
    monkeypatch.setattr(shm, "shm_free_bytes", lambda: nbytes)


@pytest.mark.parametrize(
    ("free", "piece", "workers", "budget", "expected"),
    [
        (64 << 30, MiB, 2, None, 64),  # default 256 MiB budget: 128 per worker, 64 MiB cap
        (64 << 30, MiB // 4, 1, None, 256),  # small pieces: more slots, the same 64 MiB
        (64 << 30, 16384, 1, None, MAX_SLOTS),  # tiny pieces: the count cap
        (64 << 30, 16 * MiB, 2, None, 8),  # 256 MiB / (16 MiB x 2)
        (64 << 30, MiB, 1, 10 * MiB, 10),  # the budget binds
        (64 << 30, MiB, 4, MiB, MIN_SLOTS),  # a tiny budget still gets the minimum
        (40 * MiB, MiB, 2, None, 10),  # half of the free space: 20 MiB / 2 MiB
        (8 * MiB, MiB, 2, None, MIN_SLOTS),  # half the free space is 4 MiB: just the minimum
    ],
)
def test_plan_slots_bounds(monkeypatch: pytest.MonkeyPatch, free: int, piece: int, workers: int,
                           budget: int | None, expected: int) -> None:
    free_shm(monkeypatch, free)
    per = plan_slots(piece, workers, budget)
    assert per == expected
    assert MIN_SLOTS <= per <= MAX_SLOTS
    assert per <= 64 or per * piece <= MAX_SLOT_BYTES
    assert per * piece * workers <= free  # never more than /dev/shm holds


@pytest.mark.parametrize(("free", "piece", "workers"),
                         [(3 * MiB, MiB, 2), (0, 16384, 1), (64 * MiB, 16 * MiB, 4)])
def test_plan_slots_too_small_is_resource_exhausted(monkeypatch: pytest.MonkeyPatch, free: int,
                                                    piece: int, workers: int) -> None:
    free_shm(monkeypatch, free)
    with pytest.raises(ResourceExhausted) as ei:
        plan_slots(piece, workers)
    msg = str(ei.value)
    assert ei.value.exit_code == 8
    assert SHM_DIR in msg and f"{free >> 20} MiB free" in msg
    assert f"{workers} worker(s)" in msg and "--workers" in msg
    assert "\n" not in msg


def test_shm_free_bytes_matches_statvfs() -> None:
    st = os.statvfs(SHM_DIR)
    assert shm.shm_free_bytes() == pytest.approx(st.f_bavail * st.f_frsize, rel=0.01)


def test_shm_free_bytes_is_zero_without_dev_shm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shm, "SHM_DIR", "/nonexistent/shm")
    assert shm.shm_free_bytes() == 0


# -- one process ----------------------------------------------------------------------------


def test_create_reserves_and_close_unlinks(no_leak: list[str]) -> None:
    a = Arena.create(64 * 1024, 3)
    try:
        assert segment_exists(a.name)
        st = os.stat(os.path.join(SHM_DIR, a.name.lstrip("/")))
        assert st.st_size == 3 * 64 * 1024
        assert st.st_blocks * 512 >= 3 * 64 * 1024  # reserved up front (posix_fallocate)
    finally:
        a.close()
    assert not segment_exists(a.name)
    assert not a.owner
    a.close()  # twice: harmless


def test_slots_are_disjoint_views() -> None:
    a = Arena.create(16384, 4)
    try:
        views = [a.slot(i) for i in range(4)]
        for i, v in enumerate(views):
            assert len(v) == 16384 and not v.readonly
            v[:] = bytes([i + 1]) * 16384
        assert [bytes(v[:1]) for v in views] == [b"\x01", b"\x02", b"\x03", b"\x04"]
        assert bytes(a.slot(2)) == b"\x03" * 16384
        for bad in (-1, 4):
            with pytest.raises(IndexError):
                a.slot(bad)
    finally:
        a.close()


def test_close_releases_every_view(no_leak: list[str]) -> None:
    a = Arena.create(16384, 2)
    v0, v1 = a.slot(0), a.slot(1)
    a.close()
    for v in (v0, v1):
        with pytest.raises(ValueError, match="released"):
            v[0]
    assert not segment_exists(a.name)


def test_close_with_a_foreign_view_still_unlinks(no_leak: list[str]) -> None:
    """A view the arena did not hand out blocks the unmap, not the unlink."""
    a = Arena.create(16384, 1)
    held = a.slot(0)[0:10]  # a derived view: not released by close()
    a.close()
    assert not segment_exists(a.name)
    held[0] = 1  # the mapping lives on with the process
    held.release()


def test_create_larger_than_dev_shm_is_resource_exhausted(no_leak: list[str]) -> None:
    st = os.statvfs(SHM_DIR)
    total = st.f_blocks * st.f_frsize
    if total == 0:
        pytest.skip(f"{SHM_DIR} has no size limit to exceed")
    with pytest.raises(ResourceExhausted, match="shared memory"):
        Arena.create(total + (1 << 30), 1)
    assert len(no_leak) == 1  # it was created, then unlinked (checked by the fixture)


# -- across processes ---------------------------------------------------------------------------


def _child_writes(name: str, slot_size: int, nslots: int, slot: int, fill: int) -> None:
    """Spawned worker: attach, fill one slot, close (never unlink)."""
    a = Arena.attach(name, slot_size, nslots)
    assert not a.owner
    v = a.slot(slot)
    v[:] = bytes([fill]) * slot_size
    a.close()


def test_spawned_child_writes_a_slot_the_parent_reads(no_leak: list[str]) -> None:
    ctx = mp.get_context("spawn")
    a = Arena.create(32768, 4)
    try:
        view = a.slot(2)
        view[:] = bytes(32768)
        p = ctx.Process(target=_child_writes, args=(a.name, 32768, 4, 2, 0xA5))
        p.start()
        p.join(timeout=60)
        assert p.exitcode == 0
        assert bytes(view) == b"\xa5" * 32768
        assert bytes(a.slot(1)) == bytes(32768)  # other slots untouched
        assert segment_exists(a.name)  # the child closed, it did not unlink
    finally:
        a.close()
    assert not segment_exists(a.name)


def test_attach_to_a_missing_segment_is_resource_exhausted() -> None:
    with pytest.raises(ResourceExhausted, match="psm_doesnotexist"):
        Arena.attach("psm_doesnotexist", 16384, 1)


_COORDINATOR = textwrap.dedent(
    """
    import sys
    from torrent.shm import Arena
    a = Arena.create(1 << 20, 2)
    a.slot(0)[:4] = b"live"
    print(a.name, flush=True)
    sys.stdin.read()  # wait to be killed
    """
)

_CLEAN_RUN = textwrap.dedent(
    """
    import multiprocessing as mp
    import sys
    sys.path.insert(0, sys.argv[1])
    from test_shm import _child_writes
    from torrent.shm import Arena
    if __name__ == "__main__":
        a = Arena.create(16384, 2)
        p = mp.get_context("spawn").Process(target=_child_writes, args=(a.name, 16384, 2, 1, 7))
        p.start(); p.join(60)
        ok = p.exitcode == 0 and bytes(a.slot(1)) == b"\\x07" * 16384
        a.close()
        print(a.name, ok, flush=True)
    """
)


def test_normal_run_leaves_nothing_and_prints_no_tracker_warning(tmp_path: Path,
                                                                 no_leak: list[str]) -> None:
    """Coordinator creates, a spawned worker attaches and closes, the coordinator unlinks:
    the resource tracker must not complain (a worker that unregisters makes it print a
    traceback; one that unlinks makes it warn about leaks)."""
    script = tmp_path / "run.py"
    script.write_text(_CLEAN_RUN)
    r = subprocess.run([sys.executable, str(script), str(Path(__file__).parent)],
                       check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    name, ok = r.stdout.split()
    assert ok == "True"
    assert not segment_exists(name)
    assert r.stderr == ""


def test_killed_coordinator_leaves_no_segment(tmp_path: Path, no_leak: list[str]) -> None:
    # stderr to a file, not a pipe: the resource tracker outlives the coordinator
    with open(tmp_path / "stderr.txt", "w+b") as err:
        _kill_coordinator_and_wait(err)


def _kill_coordinator_and_wait(err: IO[bytes]) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _COORDINATOR], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=err)
    try:
        assert proc.stdout is not None
        name = proc.stdout.readline().decode().strip()
        assert name.startswith("psm_"), (name, err.name)
        assert segment_exists(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + TRACKER_DEADLINE_S
        while segment_exists(name) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling a condition with a deadline, not synchronising
        assert not segment_exists(name), f"{name} outlived its SIGKILLed coordinator"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdin is not None:
            proc.stdin.close()
        if proc.stdout is not None:
            proc.stdout.close()
