"""The native I/O thread (torrent._io.IOThread): verify, write, flush, without the GIL."""

from __future__ import annotations

import errno
import hashlib
import multiprocessing as mp
import os
from pathlib import Path

import pytest
from helpers.iothread import WAIT_S, wait_all

from torrent import _io

PIECE = 64 * 1024


def test_verify_write_and_sync(tmp_path: Path) -> None:
    efd = os.eventfd(0, os.EFD_CLOEXEC)
    t = _io.IOThread(efd)
    data = bytearray(os.urandom(PIECE))
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        good = hashlib.sha1(data).digest()
        # one piece split over two places in the file (as across two files)
        t.submit_piece(7, data, PIECE, good, [(fd, 100, 0, 1000), (fd, 5000, 1000, PIECE - 1000)])
        t.submit_piece(8, data, PIECE, b"\0" * 20, [(fd, 0, 0, 10)])
        t.submit_sync(-1, [fd])
        outcomes = wait_all(t, efd, 3)
        assert sorted(outcomes) == [(-1, _io.JOB_OK, 0), (7, _io.JOB_OK, 0),
                                    (8, _io.JOB_BAD, 0)]
        # a bad piece may finish early (it is never written), but a sync never
        # finishes before the writes submitted ahead of it
        assert outcomes.index((7, _io.JOB_OK, 0)) < outcomes.index((-1, _io.JOB_OK, 0))
        assert t.pending == 0
        body = (tmp_path / "f").read_bytes()
        assert body[100:1100] == data[:1000]
        assert body[5000:] == data[1000:]
        assert body[:10] == b"\0" * 10  # the bad piece wrote nothing
    finally:
        assert t.close() == []
        os.close(fd)
        os.close(efd)


def test_write_error_is_reported_with_errno(tmp_path: Path) -> None:
    t = _io.IOThread(-1)
    data = bytes(PIECE)
    rd = os.open(tmp_path / "ro", os.O_RDONLY | os.O_CREAT)
    try:
        t.submit_piece(1, data, PIECE, hashlib.sha1(data).digest(), [(rd, 0, 0, PIECE)])
        assert t.close() == [(1, _io.JOB_IO_ERROR, errno.EBADF)]
    finally:
        os.close(rd)


def test_run_piece_verifies_and_writes_in_the_calling_thread(tmp_path: Path) -> None:
    # the same job as submit_piece, done at once: nothing queued, nothing to collect
    t = _io.IOThread(-1)
    data = os.urandom(PIECE)
    digest = hashlib.sha1(data).digest()
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    rd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        buf = bytearray(data)
        half = PIECE // 2
        assert t.run_piece(1, buf, PIECE, digest,
                           [(fd, 100, 0, half), (fd, 100 + half, half, PIECE - half)]) == \
            (_io.JOB_OK, 0)
        assert os.pread(rd, PIECE, 100) == data
        buf.extend(b"x")  # its buffer is released already
        assert t.run_piece(2, data, PIECE, b"\1" * 20, [(fd, 0, 0, PIECE)]) == (_io.JOB_BAD, 0)
        assert os.pread(rd, 100, 0) == bytes(100)  # a bad piece writes nothing
        assert t.run_piece(3, data, PIECE, digest, [(rd, 0, 0, PIECE)]) == \
            (_io.JOB_IO_ERROR, errno.EBADF)
        with pytest.raises(ValueError, match="outside the piece"):
            t.run_piece(4, data, PIECE, digest, [(fd, 0, PIECE - 10, 11)])
        assert t.pending == 0 and t.close() == []
        with pytest.raises(ValueError, match="closed"):
            t.run_piece(5, data, PIECE, digest, [])
    finally:
        os.close(fd)
        os.close(rd)


def test_arguments_are_checked_and_closed_thread_refuses() -> None:
    t = _io.IOThread(-1)
    data = bytes(PIECE)
    digest = hashlib.sha1(data).digest()
    with pytest.raises(ValueError, match="outside the piece"):
        t.submit_piece(1, data, PIECE, digest, [(3, 0, PIECE - 10, 11)])
    with pytest.raises(ValueError, match="outside the buffer"):
        t.submit_piece(1, data, PIECE + 1, digest, [])
    with pytest.raises(ValueError, match="20 bytes"):
        t.submit_piece(1, data, PIECE, b"short", [])
    with pytest.raises(TypeError):
        t.submit_piece(1, None, 0, digest, [])  # type: ignore[arg-type]
    assert t.pending == 0
    t.close()
    with pytest.raises(ValueError, match="closed"):
        t.submit_piece(1, data, PIECE, digest, [])
    with pytest.raises(ValueError, match="closed"):
        t.submit_sync(-1, [])


def test_sync_of_a_whole_filesystem(tmp_path: Path) -> None:
    """submit_sync(whole_fs=...) runs syncfs on those descriptors (after the writes
    submitted ahead of it); a bad descriptor is the job's I/O error, with its errno."""
    efd = os.eventfd(0, os.EFD_CLOEXEC)
    t = _io.IOThread(efd)
    data = bytearray(os.urandom(PIECE))
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        t.submit_piece(1, data, PIECE, hashlib.sha1(data).digest(), [(fd, 0, 0, PIECE)])
        t.submit_sync(-1, [], [dfd])
        t.submit_sync(-2, [fd], [dfd])
        outcomes = wait_all(t, efd, 3)
        assert outcomes == [(1, _io.JOB_OK, 0), (-1, _io.JOB_OK, 0), (-2, _io.JOB_OK, 0)]
        assert (tmp_path / "f").read_bytes() == data
        bad = os.open(tmp_path / "f", os.O_RDONLY)
        os.close(bad)  # a closed descriptor
        t.submit_sync(-3, [], [bad])
        assert wait_all(t, efd, 1) == [(-3, _io.JOB_IO_ERROR, errno.EBADF)]
        _io.syncfs(dfd)
        with pytest.raises(OSError) as e:
            _io.syncfs(bad)
        assert e.value.errno == errno.EBADF
    finally:
        t.close()
        os.close(fd)
        os.close(dfd)
        os.close(efd)


def test_submitted_buffer_stays_acquired_until_collected() -> None:
    t = _io.IOThread(-1)
    buf = bytearray(PIECE)
    t.submit_piece(1, buf, PIECE, b"\1" * 20, [])
    with pytest.raises(BufferError):
        buf.extend(b"x")  # a bytearray with an exported buffer cannot be resized
    assert t.close() == [(1, _io.JOB_BAD, 0)]
    buf.extend(b"x")  # released once collected


def _writer(path: str, start: int, count: int, seed: int) -> None:
    efd = os.eventfd(0)
    t = _io.IOThread(efd, lock_writes=True)
    fd = os.open(path, os.O_RDWR)
    bufs = []
    for k in range(count):
        data = bytes([seed]) * PIECE
        bufs.append(data)
        i = start + k
        t.submit_piece(i, data, PIECE, hashlib.sha1(data).digest(), [(fd, i * PIECE, 0, PIECE)])
    outs = t.close()
    assert all(st == _io.JOB_OK for _, st, _ in outs) and len(outs) == count
    os._exit(0)


def test_two_processes_writing_one_file_with_locks(tmp_path: Path) -> None:
    path = tmp_path / "shared.bin"
    n = 64
    with open(path, "wb") as f:
        f.truncate(2 * n * PIECE)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), w * n, n, w + 1)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    body = path.read_bytes()
    assert body == b"\1" * (n * PIECE) + b"\2" * (n * PIECE)


def test_direct_descriptor_gets_exactly_the_whole_aligned_pages(tmp_path: Path) -> None:
    """The page-aligned middle of a segment goes through the O_DIRECT descriptor (from
    the slot, or through a bounce buffer when the memory is aligned differently),
    the partial pages at its ends through the plain one, and nothing through both.

    The two descriptors are deliberately two different files here, so each file
    shows which bytes went which way.
    """
    import mmap

    align = _io.DIRECT_ALIGN
    size = 16 * align
    buf = mmap.mmap(-1, size)  # page-aligned memory, like an arena slot
    data = os.urandom(size)
    buf[:] = data
    plain_path, direct_path = tmp_path / "plain", tmp_path / "direct"
    efd = os.eventfd(0, os.EFD_CLOEXEC)
    t = _io.IOThread(efd)
    fd = os.open(plain_path, os.O_RDWR | os.O_CREAT)
    os.ftruncate(fd, 4 * size)
    try:
        dfd = os.open(direct_path, os.O_RDWR | os.O_CREAT | os.O_DIRECT)
    except OSError as e:  # pragma: no cover - a filesystem without O_DIRECT
        pytest.skip(f"no O_DIRECT on {tmp_path}: {e}")
    os.ftruncate(dfd, 4 * size)
    try:
        digest = hashlib.sha1(data).digest()
        # (file offset, buffer offset, length): aligned whole; same misalignment in file
        # and buffer (head + middle + tail); misaligned differently (bounced); shorter
        # than a page (plain); a page-aligned span too short to hold a whole page (plain).
        cases = [(0, 0, 4 * align), (align + 100, 4 * align + 100, 5 * align),
                 (3 * size + 1, 10 * align + 7, 3 * align), (2 * size, 15 * align, 1000),
                 (2 * size + align + 10, 14 * align, align)]
        t.submit_piece(1, buf, size, digest, [(fd, fo, bo, n, dfd) for fo, bo, n in cases])
        assert wait_all(t, efd, 1) == [(1, _io.JOB_OK, 0)]
        plain = plain_path.read_bytes()
        with open(direct_path, "rb") as f:
            direct = f.read()
        expect_plain = bytearray(4 * size)
        expect_direct = bytearray(4 * size)
        for fo, bo, n in cases:
            head = (-fo) % align
            mid = (n - head) // align * align if n >= align else 0
            if mid <= 0:
                head, mid = n, 0
            expect_plain[fo : fo + head] = data[bo : bo + head]
            expect_direct[fo + head : fo + head + mid] = data[bo + head : bo + head + mid]
            rest = n - head - mid
            expect_plain[fo + head + mid : fo + n] = data[bo + head + mid : bo + head + mid + rest]
        assert direct == bytes(expect_direct)
        assert plain == bytes(expect_plain)
        # the cases above did exercise both ways
        assert any(direct) and any(plain)
    finally:
        t.close()
        os.close(fd)
        os.close(dfd)
        os.close(efd)
        buf.close()


def test_segments_with_a_bad_direct_descriptor_are_refused() -> None:
    t = _io.IOThread(-1)
    try:
        with pytest.raises(ValueError):
            t.submit_piece(1, bytearray(10), 10, b"\0" * 20, [(1, 0, 0, 10, -2)])
    finally:
        t.close()


@pytest.mark.parametrize("writers", [1, 2, 5])
def test_many_jobs_through_both_stages(tmp_path: Path, writers: int) -> None:
    """Good and bad pieces interleaved with syncs: every good piece written once at its
    place, no bad one written, each sync finished after the writes submitted before it."""
    import random

    rnd = random.Random(7)
    efd = os.eventfd(0, os.EFD_CLOEXEC)
    t = _io.IOThread(efd, writers=writers)
    n, size = 200, 4096
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    os.ftruncate(fd, n * size)
    good = {}
    order = []
    try:
        for i in range(n):
            data = bytes([i % 251 + 1]) * size
            ok = rnd.random() < 0.7
            digest = hashlib.sha1(data).digest() if ok else b"\1" * 20
            t.submit_piece(i, data, size, digest, [(fd, i * size, 0, size)])
            order.append(i)
            if ok:
                good[i] = data
            if i % 50 == 49:
                t.submit_sync(-i, [fd])
                order.append(-i)
        outcomes = wait_all(t, efd, len(order))
        pos = {jid: k for k, (jid, _s, _e) in enumerate(outcomes)}
        assert sorted(pos) == sorted(order)
        for jid, status, _e in outcomes:
            if jid >= 0:
                assert status == (_io.JOB_OK if jid in good else _io.JOB_BAD)
            else:
                assert status == _io.JOB_OK
                assert all(pos[g] < pos[jid] for g in good if g < -jid)
        body = (tmp_path / "f").read_bytes()
        for i in range(n):
            expect = good.get(i, bytes(size))
            assert body[i * size : (i + 1) * size] == expect
    finally:
        assert t.close() == []
        os.close(fd)
        os.close(efd)



@pytest.mark.parametrize("writers", [0, _io.MAX_WRITERS + 1])
def test_writer_count_is_bounded(writers: int) -> None:
    with pytest.raises(ValueError, match="writers"):
        _io.IOThread(-1, writers=writers)


def test_busy_seconds_count_both_stages(tmp_path: Path) -> None:
    t = _io.IOThread(-1)
    data = os.urandom(PIECE)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        assert t.busy_seconds == (0.0, 0.0)
        t.submit_piece(1, data, PIECE, hashlib.sha1(data).digest(), [(fd, 0, 0, PIECE)])
        assert t.close() == [(1, _io.JOB_OK, 0)]
        hashing, writing = t.busy_seconds
        assert hashing > 0 and writing > 0
    finally:
        os.close(fd)


def _ofd_lock(fd: int, kind: int) -> None:
    """Take (F_WRLCK) or drop (F_UNLCK) an open-file-description lock on byte 0, as the
    writers do with ``lock_writes``: ours excludes theirs, one open file from another."""
    import fcntl
    import struct

    # struct flock on Linux x86_64: short l_type, short l_whence, off_t l_start,
    # off_t l_len, pid_t l_pid (0 for OFD locks)
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhxxxxqqixxxx", kind, os.SEEK_SET, 0, 1, 0))


def test_a_writer_takes_no_piece_of_a_file_another_writer_is_writing(tmp_path: Path) -> None:
    """``file_writers=1``, two writers; the first piece of file A is held up (file A is
    locked elsewhere, so its writer waits on the lock). The second writer does not take
    A's next piece (it would only wait on A's inode lock in the kernel) but B's, queued
    after it: B's is written while A is still locked, and A's two when it is released."""
    import fcntl

    efd = os.eventfd(0, os.EFD_CLOEXEC)
    t = _io.IOThread(efd, lock_writes=True, writers=2, file_writers=1)
    a = os.open(tmp_path / "a", os.O_RDWR | os.O_CREAT)
    b = os.open(tmp_path / "b", os.O_RDWR | os.O_CREAT)
    holder = os.open(tmp_path / "a", os.O_RDWR)  # another open file description
    data = bytes(range(256)) * (PIECE // 256)
    good = hashlib.sha1(data).digest()
    try:
        _ofd_lock(holder, fcntl.F_WRLCK)
        t.submit_piece(1, data, PIECE, good, [(a, 0, 0, PIECE)])
        t.submit_piece(2, data, PIECE, good, [(a, PIECE, 0, PIECE)])
        t.submit_piece(3, data, PIECE, good, [(b, 0, 0, PIECE)])
        assert wait_all(t, efd, 1) == [(3, _io.JOB_OK, 0)]  # B's, past A's waiting one
        assert (tmp_path / "a").stat().st_size == 0
        _ofd_lock(holder, fcntl.F_UNLCK)
        assert sorted(wait_all(t, efd, 2)) == [(1, _io.JOB_OK, 0), (2, _io.JOB_OK, 0)]
        assert (tmp_path / "a").read_bytes() == data * 2
        assert (tmp_path / "b").read_bytes() == data
    finally:
        _ofd_lock(holder, fcntl.F_UNLCK)
        t.close()
        for fd in (a, b, holder):
            os.close(fd)
        os.close(efd)


def test_file_writers_must_be_positive_and_follow_the_piece_size() -> None:
    from torrent.worker import FILE_WRITER_BYTES, file_writers

    with pytest.raises(ValueError, match="file_writers"):
        _io.IOThread(-1, file_writers=0)
    assert file_writers(16384) == file_writers(FILE_WRITER_BYTES) == 1
    assert file_writers(4 * FILE_WRITER_BYTES) == 4


def _tasks() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def _task_state(tid: int) -> str:
    """A thread's scheduler state (``R`` running, ``S`` asleep...), "" once it is gone."""
    try:
        with open(f"/proc/self/task/{tid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return ""


def test_close_ends_a_writer_that_passed_over_the_last_jobs(tmp_path: Path) -> None:
    """A stop while a file's writes are held up (a worker's full disk, a stall, Ctrl-C).

    ``file_writers=1``, two writers: writer A holds piece 1 of file A (locked elsewhere);
    piece 2 of file A waits for it, and writer B, after piece 3 of file B, sleeps. Then
    :meth:`close`: the hash stage ends and wakes the writers, and B, finding only A's
    file queued, sleeps again. Once A's lock is released, A writes pieces 1 and 2 and
    ends; B must end too, or ``close`` never returns (a worker stuck in its stop lost
    the flush of what it had written: the coordinator gave up on it after
    ``WORKER_EXIT_TIMEOUT``).
    """
    import fcntl
    import threading

    efd = os.eventfd(0, os.EFD_CLOEXEC)
    before = _tasks()
    t = _io.IOThread(efd, lock_writes=True, writers=2, file_writers=1)
    own = _tasks() - before  # its hash stage and its two writers
    assert len(own) == 3
    a = os.open(tmp_path / "a", os.O_RDWR | os.O_CREAT)
    b = os.open(tmp_path / "b", os.O_RDWR | os.O_CREAT)
    holder = os.open(tmp_path / "a", os.O_RDWR)
    data = bytes(range(256)) * (PIECE // 256)
    good = hashlib.sha1(data).digest()
    outcomes: list[list[tuple[int, int, int]]] = []
    closer = threading.Thread(target=lambda: outcomes.append(t.close()), daemon=True)
    try:
        _ofd_lock(holder, fcntl.F_WRLCK)
        t.submit_piece(1, data, PIECE, good, [(a, 0, 0, PIECE)])
        t.submit_piece(2, data, PIECE, good, [(a, PIECE, 0, PIECE)])
        t.submit_piece(3, data, PIECE, good, [(b, 0, 0, PIECE)])
        assert wait_all(t, efd, 1) == [(3, _io.JOB_OK, 0)]  # B wrote past A's piece 2
        closer.start()
        # the hash stage has ended (stop2 and its wake-up), and both writers sleep:
        # A on the lock, B on the queue
        deadline = threading.Event()
        timer = threading.Timer(WAIT_S, deadline.set)
        timer.start()
        while not deadline.is_set():
            states = {tid: _task_state(tid) for tid in own}
            if sorted(states.values()) == ["", "S", "S"]:
                break
            os.sched_yield()  # polling /proc, bounded by the timer above
        timer.cancel()
        assert sorted(states.values()) == ["", "S", "S"], states
        _ofd_lock(holder, fcntl.F_UNLCK)
        closer.join(WAIT_S)
        assert not closer.is_alive(), "close() still waits for a writer"
        assert sorted(outcomes[0]) == [(1, _io.JOB_OK, 0), (2, _io.JOB_OK, 0)]
        assert (tmp_path / "a").read_bytes() == data * 2
        assert _tasks() & own == set()
    finally:
        _ofd_lock(holder, fcntl.F_UNLCK)
        for fd in (a, b, holder):
            os.close(fd)
        if not closer.is_alive():
            os.close(efd)


def _expected_writes(cases: list[tuple[int, int, int]], chained: list[list[int]],
                     data: bytes, size: int) -> tuple[bytearray, bytearray]:
    """What the plain and the direct file hold after ``cases`` (file offset, buffer
    offset, length) are written, the runs of ``chained`` (indices into ``cases``) each
    as one chain: its first and last partial pages plain, every page between direct."""
    align = _io.DIRECT_ALIGN
    plain, direct = bytearray(size), bytearray(size)
    for run in chained:
        fo = cases[run[0]][0]
        end = cases[run[-1]][0] + cases[run[-1]][2]
        a = fo + (-fo) % align
        b = end - end % align
        stream = b"".join(data[cases[i][1] : cases[i][1] + cases[i][2]] for i in run)
        plain[fo:a] = stream[: a - fo]
        direct[a:b] = stream[a - fo : b - fo]
        plain[b:end] = stream[b - fo :]
    return plain, direct


@pytest.mark.parametrize("failing", [False, True])
def test_adjacent_pieces_of_a_file_queued_together_are_written_as_one(
        tmp_path: Path, failing: bool) -> None:
    """One writer, one writer per file. It is held up on another file (locked elsewhere)
    while pieces 1, 2 and 3, which follow one another in file A, are hashed and
    queue; a bad piece submitted after them comes back from the hash stage first,
    which shows they are queued. Released, the writer writes 1, 2 and 3 as one chain:
    the pages two of them share go through the O_DIRECT descriptor, assembled from
    both, and only the chain's first and last partial pages through the page cache.
    The two descriptors of file A are two files here, so each shows which bytes
    went which way. ``failing``: the O_DIRECT descriptor cannot be written (EBADF),
    and every piece of the chain gets that error."""
    import fcntl
    import mmap

    align = _io.DIRECT_ALIGN
    piece = 5 * align + 1000  # not a multiple of a page: every boundary is mid-page
    start = 3 * align + 123  # the file offset of piece 1, mid-page
    size = 16 * align + start + 3 * piece
    mem = mmap.mmap(-1, 8 * piece)
    data = os.urandom(8 * piece)
    mem[:] = data
    plain_path, direct_path = tmp_path / "plain", tmp_path / "direct"
    efd = os.eventfd(0, os.EFD_CLOEXEC)
    t = _io.IOThread(efd, lock_writes=True, writers=1, file_writers=1)
    fd = os.open(plain_path, os.O_RDWR | os.O_CREAT)
    other = os.open(tmp_path / "other", os.O_RDWR | os.O_CREAT)
    holder = os.open(tmp_path / "other", os.O_RDWR)
    os.ftruncate(fd, size)
    try:
        dfd = os.open(direct_path, os.O_RDWR | os.O_CREAT | os.O_DIRECT)
    except OSError as e:  # pragma: no cover - a filesystem without O_DIRECT
        pytest.skip(f"no O_DIRECT on {tmp_path}: {e}")
    os.ftruncate(dfd, size)
    if failing:
        os.close(dfd)
        dfd = os.open(direct_path, os.O_RDONLY | os.O_DIRECT)
    # each piece in its own slot-like place, its memory aligned like its file offset
    cases = [(start + k * piece, 8 * k * align + (start + k * piece) % align, piece)
             for k in range(3)]
    views = [memoryview(mem)[bo : bo + n] for _fo, bo, n in cases]
    blocker = bytes(1000)
    try:
        _ofd_lock(holder, fcntl.F_WRLCK)
        t.submit_piece(10, blocker, 1000, hashlib.sha1(blocker).digest(), [(other, 0, 0, 1000)])
        for k, ((fo, _bo, n), view) in enumerate(zip(cases, views, strict=True)):
            t.submit_piece(k + 1, view, n, hashlib.sha1(view).digest(), [(fd, fo, 0, n, dfd)])
        t.submit_piece(99, blocker, 1000, b"\0" * 20, [(other, 0, 0, 1000)])  # the marker
        assert wait_all(t, efd, 1) == [(99, _io.JOB_BAD, 0)]
        _ofd_lock(holder, fcntl.F_UNLCK)
        if failing:
            assert sorted(wait_all(t, efd, 4)) == [
                *[(k, _io.JOB_IO_ERROR, errno.EBADF) for k in (1, 2, 3)], (10, _io.JOB_OK, 0)]
            return
        assert sorted(wait_all(t, efd, 4)) == [(k, _io.JOB_OK, 0) for k in (1, 2, 3, 10)]
        plain, direct = _expected_writes(cases, [[0, 1, 2]], data, size)
        assert direct_path.read_bytes() == bytes(direct)
        assert plain_path.read_bytes() == bytes(plain)
        # (written one by one, the two pages the pieces share would be plain only)
        assert any(direct[start + piece - 100 : start + piece + 100])
    finally:
        _ofd_lock(holder, fcntl.F_UNLCK)
        t.close()
        for x in (fd, dfd, other, holder, efd):
            os.close(x)
        for v in views:
            v.release()
        mem.close()
