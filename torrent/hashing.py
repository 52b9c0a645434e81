"""Hash pieces on every core: ``verify`` data against a torrent, digest files for ``create``.

Theory of operation
-------------------
The piece space is cut into chunks of whole pieces of about
:data:`CHUNK_BYTES`.  With ``N`` workers, this process is worker 0 and
``N - 1`` child processes are the others: fresh interpreters started by
:mod:`torrent.launch` (so nothing of the caller's state leaks in and its
main module is never re-imported), or, when the caller owns its whole
process and asks for it (``fork``: the CLI), forks of this one, ready in
milliseconds instead of an interpreter start and its imports.  Each worker
hashes a chunk from a mapping of the file (or reads it into its own reusable
buffer with ``preadv`` when it spans files or a file is short) and hands it
to the native core (:mod:`torrent._fast`), which hashes the whole batch with
the GIL released: SHA-1 against a v1 torrent's digests, BEP 52 merkle roots
against a v2 torrent's expectation (:mod:`torrent.v2pieces`: each piece's
root, file bytes and tree width), and both for a hybrid, whose piece is good
only if both match.  Only chunk indices go to the children and only one status
byte (or one 20-byte digest) per piece comes back: no piece data is ever
pickled between processes.  A child has at most :data:`TASKS_IN_FLIGHT`
chunks at a time and gets the next one when it returns one; this process
answers the children between its own chunks and hashes from the start, while
they are still starting.  That balances the load by itself when files are
unevenly cached or a child is slow to start (each child is sent one chunk
at once, queued behind its start-up, so every worker does a share).  A child
exits when its connection reaches EOF: when the parent is done with it, or
dies.

Measured (``bench/README.md``, "verify at N cores"): the parent used to hash
nothing and wait for every child to be up before handing out any work, so
the second core cost two interpreter starts (about 0.1 s of CPU each, and
0.1-0.5 s of waiting on a loaded machine) before the first byte was hashed,
and the parent's core idled.
"""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, cast

from . import _speedups as _k
from .errors import DiskFull, FastTorrentError, ResourceExhausted, StorageError
from .launch import Child, can_fork, fork_child, start_child
from .storage import Layout, Storage
from .v2pieces import V2Pieces

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

#: Chunks a worker holds at a time: one being hashed and one waiting, so it
#: never idles for a round trip, and the last chunks still go to whichever
#: worker is free.
TASKS_IN_FLIGHT = 2
#: How long finished workers get to exit before they are killed.
_EXIT_TIMEOUT_S = 2.0


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


def _both(a: bytes, b: bytes) -> bytes:
    """Per piece, good (1) only where both statuses are."""
    return (int.from_bytes(a, "little") & int.from_bytes(b, "little")).to_bytes(len(a), "little")


class _Hasher:
    """The per-process loop body: read a chunk of pieces, hash it natively."""

    def __init__(self, layout: Layout, digests: bytes | None, v2: V2Pieces | None) -> None:
        self.layout = layout
        self.digests = digests
        self.v2 = v2
        #: verify (a status byte per piece) against digests, v2 roots or both; else
        #: compute SHA-1 digests (create)
        self.verify = digests is not None or v2 is not None
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

    def _check(self, view: memoryview, first: int, end: int) -> bytes:
        """The status of pieces ``first`` to ``end - 1`` (back to back in ``view``)."""
        pl = self.layout.piece_length
        status = b""
        if self.digests is not None:
            status = _k.verify_pieces(view, pl, self.digests[first * 20 : end * 20])
        if self.v2 is not None:
            v2 = _k.verify_pieces_v2(view, pl, *self.v2.chunk(first, end))
            status = v2 if self.digests is None else _both(status, v2)
        return status

    def run(self, first: int, end: int) -> tuple[bytes, int]:
        lay = self.layout
        pl = lay.piece_length
        start = first * pl
        length = min(lay.total_size, end * pl) - start
        mapped = self._mapped(start, length)
        if mapped is not None:
            m, view = mapped
            try:
                if not self.verify:
                    return _k.sha1_pieces(view, pl), length
                return self._check(view, first, end), length
            finally:
                view.release()
                m.close()
        view = memoryview(self.buf)[:length]
        complete = self.storage.read_into(start, view)
        if not self.verify:
            return _k.sha1_pieces(view, pl), length
        status = bytearray(self._check(view, first, end))
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


def _worker_main(arg: tuple[int, Layout, bytes | None, V2Pieces | None],
                 conn: Connection) -> None:
    """A hash worker (started by :func:`hash_pieces` through :mod:`torrent.launch`).

    It returns (and its process exits) when the connection reaches EOF or
    breaks: the parent is done with it, was interrupted, or died.
    """
    wid, layout, digests, v2 = arg
    try:
        h = _Hasher(layout, digests, v2)
    except FastTorrentError as e:
        _send(conn, ("error", wid, e.__class__.__name__, str(e)))
        return
    t_busy = 0.0
    try:
        if not _send(conn, ("ready", wid)):
            return
        while True:
            try:
                task = conn.recv()
            except (EOFError, OSError):
                return
            t0 = time.perf_counter()
            try:
                out, nbytes = h.run(*task)
            except FastTorrentError as e:
                _send(conn, ("error", wid, e.__class__.__name__, str(e)))
                return
            t_busy += time.perf_counter() - t0
            if not _send(conn, ("ok", wid, task[0], out, nbytes, t_busy)):
                return
    finally:
        h.close()


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
                ranges: list[tuple[int, int]] | None = None, fork: bool = False,
                v2: V2Pieces | None = None) -> HashResult:
    """Hash every piece of ``layout`` with ``workers`` processes.

    Args:
        layout: where the bytes are.
        digests: the expected 20-byte SHA-1 digests (verify mode), or None: to
            verify by ``v2`` alone (a v2-only torrent), or, without ``v2``, to
            compute digests (create mode).
        workers: processes to use (1 runs in this process).
        progress: called with ``(bytes_done, bytes_total)`` after each chunk.
        ranges: only these ``(first, end)`` piece ranges (default: all, in chunks);
            the status of pieces outside them stays PIECE_BAD.
        fork: start the other workers as forks of this process when it runs one
            thread (:func:`~torrent.launch.fork_child`; only for a caller that owns
            its process, as the CLI does); else fresh interpreters.
        v2: the BEP 52 expectation of every piece (:func:`torrent.v2pieces.v2_pieces`):
            verify mode, by the merkle roots; with ``digests`` too (a hybrid), a
            piece is good only if both match.

    Returns:
        A :class:`HashResult` with per-piece status or digests and per-worker stats.

    Raises:
        StorageError, DiskFull: an I/O error other than a missing file.
        ValueError: ``v2`` does not have one entry per piece of ``layout``.
    """
    n = layout.num_pieces
    if v2 is not None and len(v2) != n:
        raise ValueError(f"the v2 expectation has {len(v2)} pieces, the layout {n}")
    verify = digests is not None or v2 is not None
    status = bytearray(n)
    dig = bytearray(20 * n)
    chunks = _chunks(layout) if ranges is None else ranges
    workers = max(1, min(workers, len(chunks)))
    stats = [WorkerStats(w) for w in range(workers)]
    t0 = time.perf_counter()
    done_bytes = 0

    def record(wid: int, first: int, out: bytes, nbytes: int, busy: float) -> None:
        nonlocal done_bytes
        k = len(out) if verify else len(out) // 20
        if not verify:
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

    _hash_with_children(layout, digests, v2, chunks, workers, record, fork=fork)
    return HashResult(status=status, digests=dig, bytes_read=done_bytes,
                      seconds=time.perf_counter() - t0, workers=stats)


def _hash_with_children(layout: Layout, digests: bytes | None, v2: V2Pieces | None,
                        chunks: list[tuple[int, int]], workers: int,
                        record: Callable[[int, int, bytes, int, float], None],
                        *, fork: bool) -> None:
    """Hash ``chunks`` here (worker 0) and in ``workers - 1`` children, calling ``record``
    per chunk done."""
    h = _Hasher(layout, digests, v2)
    children: list[tuple[Child, Connection]] = []
    ready: set[int] = set()
    try:
        start = fork_child if fork and can_fork() else start_child
        for w in range(1, workers):
            try:
                children.append(start("torrent.hashing:_worker_main",
                                      name=f"fasttorrent-hash-{w}"))
            except OSError as e:
                raise ResourceExhausted(f"cannot start hash worker {w}: "
                                        f"{e.strerror or e}") from None
        conns = [c for _p, c in children]
        for w, conn in enumerate(conns, 1):
            _send(conn, (w, layout, digests, v2))
        wid_of = {id(conn): w for w, conn in enumerate(conns, 1)}
        todo = list(reversed(chunks))
        held = [0] * workers  # chunks each child holds
        # One chunk each right away, queued behind its start-up: every worker
        # does a share however late it starts (there are at least ``workers``
        # chunks), and the tail waits for a late child's one chunk at most.
        for w, conn in enumerate(conns, 1):
            _send(conn, todo.pop())
            held[w] += 1
        my_busy = 0.0
        while todo or any(held):
            # The children first, never kept waiting while this process hashes:
            # a child holds TASKS_IN_FLIGHT chunks, more than one of ours takes.
            for ready_conn in (wait(conns, timeout=0 if todo else None) if conns else ()):
                conn = cast(Connection, ready_conn)
                w = wid_of[id(conn)]
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    proc = children[w - 1][0]
                    proc.join(_EXIT_TIMEOUT_S)
                    raise StorageError(f"hash worker {proc.name} died (exit code "
                                       f"{proc.exitcode})") from None
                kind = msg[0]
                if kind == "ready":
                    ready.add(w)
                    while todo and held[w] < TASKS_IN_FLIGHT:
                        _send(conn, todo.pop())
                        held[w] += 1
                elif kind == "ok":
                    held[w] -= 1
                    record(msg[1], msg[2], msg[3], msg[4], msg[5])
                    if todo:
                        _send(conn, todo.pop())
                        held[w] += 1
                else:
                    cls = _ERRORS.get(msg[2], StorageError)
                    raise cls(msg[3])
            if todo:
                first, end = todo.pop()
                t = time.perf_counter()
                out, nbytes = h.run(first, end)
                my_busy += time.perf_counter() - t
                record(0, first, out, nbytes, my_busy)
    finally:
        h.close()
        for w, (proc, conn) in enumerate(children, 1):
            conn.close()  # EOF: the worker exits
            if w not in ready:
                proc.kill()  # still starting when an error ended the run: no need to wait
        for proc, _conn in children:
            proc.join(_EXIT_TIMEOUT_S)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _send(conn: Connection, msg: Any) -> bool:
    """Send ``msg``; False if the other side is gone (its EOF is read, and reported, next)."""
    try:
        conn.send(msg)
    except OSError:
        return False
    return True
