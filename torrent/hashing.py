"""Hash pieces on every core: ``verify`` data against a torrent, digest files for ``create``.

Theory of operation
-------------------
The piece space is cut into chunks of whole pieces of about
:data:`CHUNK_BYTES`.  ``N`` worker processes (spawned, so nothing of the
parent's state leaks in) pull chunk indices from one queue, read each chunk
straight from the files into their own reusable buffer with ``preadv``, and
hand the buffer to the native core (:mod:`torrent._fast`), which hashes the
whole batch with the GIL released.  Only chunk indices go to the workers and
only one status byte (or one 20-byte digest) per piece comes back: no piece
data is ever pickled between processes.  Pulling from a shared queue balances
the load by itself when files are unevenly cached.

With one worker the same loop runs in this process (no spawn cost).
"""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import _fast
from .errors import DiskFull, FastTorrentError, StorageError
from .storage import Layout, Storage

__all__ = [
    "CHUNK_BYTES",
    "PIECE_BAD",
    "PIECE_GOOD",
    "PIECE_MISSING",
    "HashResult",
    "WorkerStats",
    "hash_pieces",
]

#: Bytes read and hashed per task.  Big enough that per-task overhead (a queue
#: round trip, a few syscalls) is noise next to ~10 ms of hashing; small
#: enough that two workers finish within one chunk of each other.
CHUNK_BYTES = 16 << 20

#: Prefault the mapping in one call rather than a fault per page (Linux).
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)

PIECE_BAD = 0
PIECE_GOOD = 1
PIECE_MISSING = 2

#: How often an idle worker checks that its parent is still alive, so it never
#: outlives a killed parent.
_PARENT_POLL_S = 1.0


@dataclass(slots=True)
class WorkerStats:
    worker: int
    pieces: int = 0
    bytes: int = 0
    seconds: float = 0.0


@dataclass(slots=True)
class HashResult:
    """Per piece: a status byte (verify) or its digest (digest mode)."""

    status: bytearray  # verify: PIECE_* per piece
    digests: bytearray  # digest mode: 20 bytes per piece
    bytes_read: int
    seconds: float
    workers: list[WorkerStats] = field(default_factory=list)


def _chunks(layout: Layout) -> list[tuple[int, int]]:
    per = max(1, CHUNK_BYTES // layout.piece_length)
    n = layout.num_pieces
    return [(s, min(n, s + per)) for s in range(0, n, per)]


class _Hasher:
    """The per-process loop body: read a chunk of pieces, hash it natively."""

    def __init__(self, layout: Layout, digests: bytes | None) -> None:
        self.layout = layout
        self.digests = digests
        self.storage = Storage(layout)
        per = max(1, CHUNK_BYTES // layout.piece_length)
        self.buf = bytearray(per * layout.piece_length)

    def _mapped(self, start: int, length: int) -> tuple[mmap.mmap, memoryview] | None:
        """The range mapped straight from the page cache, when it lies in one whole file.

        Hashing from a mapping saves the copy into our buffer: with several
        workers, memory bandwidth is what runs out first (measured: 2 workers
        went from 1.38x to ~1.8x one worker).  Anything else (a range over
        several files, a short or missing file) is read with preadv instead.
        """
        segs = list(self.layout.segments(start, length))
        if len(segs) != 1:
            return None
        i, foff, _roff, n = segs[0]
        span = self.layout.spans[i]
        if span.pad:
            return None
        fd = self.storage._fd(i)
        if fd is None:
            return None
        try:
            if os.fstat(fd).st_size < foff + n:
                return None
            base = foff - foff % mmap.ALLOCATIONGRANULARITY
            m = mmap.mmap(fd, foff + n - base, flags=mmap.MAP_SHARED | _MAP_POPULATE,
                          prot=mmap.PROT_READ, offset=base)
        except (OSError, ValueError):
            return None
        return m, memoryview(m)[foff - base : foff - base + n]

    def run(self, first: int, end: int) -> tuple[bytes, int]:
        lay = self.layout
        pl = lay.piece_length
        start = first * pl
        length = min(lay.total_size, end * pl) - start
        mapped = self._mapped(start, length)
        if mapped is not None:
            m, view = mapped
            try:
                if self.digests is None:
                    return _fast.sha1_pieces(view, pl), length
                return _fast.verify_pieces(view, pl, self.digests[first * 20 : end * 20]), length
            finally:
                view.release()
                m.close()
        view = memoryview(self.buf)[:length]
        complete = self.storage.read_into(start, view)
        if self.digests is None:
            return _fast.sha1_pieces(view, pl), length
        status = bytearray(_fast.verify_pieces(view, pl, self.digests[first * 20 : end * 20]))
        if not complete:
            # Rare path: find which pieces miss bytes (absent or short files).
            one = memoryview(bytearray(pl))
            for k, i in enumerate(range(first, end)):
                size = lay.piece_size(i)
                if not self.storage.read_into(i * pl, one[:size]):
                    status[k] = PIECE_MISSING
        return bytes(status), length

    def close(self) -> None:
        self.storage.close()


def _worker_main(wid: int, layout: Layout, digests: bytes | None,
                 tasks: mp.Queue, results: mp.Queue, parent: int, start: Any) -> None:
    try:
        h = _Hasher(layout, digests)
    except FastTorrentError as e:
        results.put(("error", wid, e.__class__.__name__, str(e)))
        return
    # Start pulling only when every worker is up: a worker that finished
    # starting first would otherwise drain a small queue on its own.
    results.put(("ready", wid))
    while not start.wait(_PARENT_POLL_S):
        if os.getppid() != parent:
            return
    t_busy = 0.0
    try:
        while True:
            try:
                task = tasks.get(timeout=_PARENT_POLL_S)
            except queue.Empty:
                if os.getppid() != parent:
                    return
                continue
            if task is None:
                break
            t0 = time.perf_counter()
            try:
                out, nbytes = h.run(*task)
            except FastTorrentError as e:
                results.put(("error", wid, e.__class__.__name__, str(e)))
                return
            t_busy += time.perf_counter() - t0
            results.put(("ok", wid, task[0], out, nbytes, t_busy))
    finally:
        h.close()
    results.put(("done", wid))


#: Error types a hash worker may report back by name (the rest: StorageError).
_ERRORS = {c.__name__: c for c in (StorageError, DiskFull)}


def chunk_ranges(layout: Layout, pieces: list[int]) -> list[tuple[int, int]]:
    """Runs of consecutive ``pieces`` (sorted), cut into chunks of about CHUNK_BYTES."""
    per = max(1, CHUNK_BYTES // layout.piece_length)
    out: list[tuple[int, int]] = []
    for i in pieces:
        if out and out[-1][1] == i and i - out[-1][0] < per:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


def hash_pieces(layout: Layout, *, digests: bytes | None, workers: int,
                progress: Callable[[int, int], None] | None = None,
                ranges: list[tuple[int, int]] | None = None) -> HashResult:
    """Hash every piece of ``layout`` with ``workers`` processes.

    Args:
        layout: where the bytes are.
        digests: the expected 20-byte digests (verify mode), or None to
            compute digests (create mode).
        workers: processes to use (1 runs in this process).
        progress: called with ``(bytes_done, bytes_total)`` after each chunk.
        ranges: only these ``(first, end)`` piece ranges (default: all, in chunks);
            the status of pieces outside them stays PIECE_BAD.

    Returns:
        A :class:`HashResult` with per-piece status or digests and per-worker stats.

    Raises:
        StorageError, DiskFull: an I/O error other than a missing file.
    """
    n = layout.num_pieces
    status = bytearray(n)
    dig = bytearray(20 * n)
    chunks = _chunks(layout) if ranges is None else ranges
    workers = max(1, min(workers, len(chunks)))
    stats = [WorkerStats(w) for w in range(workers)]
    t0 = time.perf_counter()
    done_bytes = 0

    def record(wid: int, first: int, out: bytes, nbytes: int, busy: float) -> None:
        nonlocal done_bytes
        k = len(out) // 20 if digests is None else len(out)
        if digests is None:
            dig[first * 20 : first * 20 + len(out)] = out
        else:
            status[first : first + k] = out
        st = stats[wid]
        st.pieces += k
        st.bytes += nbytes
        st.seconds = busy
        done_bytes += nbytes
        if progress is not None:
            progress(done_bytes, layout.total_size)

    if workers == 1:
        h = _Hasher(layout, digests)
        busy = 0.0
        try:
            for first, end in chunks:
                t = time.perf_counter()
                out, nbytes = h.run(first, end)
                busy += time.perf_counter() - t
                record(0, first, out, nbytes, busy)
        finally:
            h.close()
    else:
        ctx = mp.get_context("spawn")
        tasks: mp.Queue = ctx.Queue()
        results: mp.Queue = ctx.Queue()
        for c in chunks:
            tasks.put(c)
        for _ in range(workers):
            tasks.put(None)
        start = ctx.Event()
        procs = [ctx.Process(target=_worker_main,
                             args=(w, layout, digests, tasks, results, os.getpid(), start),
                             daemon=True, name=f"fasttorrent-hash-{w}")
                 for w in range(workers)]
        for p in procs:
            p.start()
        try:
            finished = ready = 0
            while finished < workers:
                try:
                    msg = results.get(timeout=_PARENT_POLL_S)
                except queue.Empty:
                    dead = [p for p in procs if p.exitcode not in (None, 0)]
                    if dead:
                        raise StorageError(
                            f"hash worker {dead[0].name} died (exit code {dead[0].exitcode})")
                    continue
                kind = msg[0]
                if kind == "ready":
                    ready += 1
                    if ready == workers:
                        start.set()
                elif kind == "ok":
                    record(msg[1], msg[2], msg[3], msg[4], msg[5])
                elif kind == "done":
                    finished += 1
                else:
                    cls = _ERRORS.get(msg[2], StorageError)
                    raise cls(msg[3])
        finally:
            for p in procs:
                p.join(timeout=2)
                if p.is_alive():
                    p.kill()
                    p.join()
            tasks.close()
            results.close()
    return HashResult(status=status, digests=dig, bytes_read=done_bytes,
                      seconds=time.perf_counter() - t0, workers=stats)
