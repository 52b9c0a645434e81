"""The resume journal: which pieces are verified *and* durably on disk.

Theory of operation
-------------------
The journal lives beside the data, in ``OUTDIR/.fasttorrent/<info-hash>.resume``.
It is a fixed header followed by append-only 8-byte records:

    header:  b"FTJ1" | info_hash (20) | num_pieces (u32 LE) | piece_length (u64 LE)
    record:  piece index (u32 LE) | crc32(info_hash + index bytes) (u32 LE)

A piece is appended only after its bytes were written *and* ``fdatasync``ed
(the worker flushes a batch, then reports it; the coordinator appends the
batch and ``fsync``s the journal).  So a record never names a piece whose
data could be lost by a crash.  A torn tail (a partial record after SIGKILL
or power loss) or a record whose checksum is wrong ends the readable part:
everything after it is ignored, which only costs a recheck of those pieces.

On start the journal is trusted when the header matches this torrent and
every file exists at its full length; otherwise the caller does a full
recheck.  A run that ends without completing (stall, signal, error) appends
a *seal*: a marker record followed by every file's size and mtime (ns).  On
the next start a seal that is still the journal's last entry must match the
files: a file changed since (edited, truncated, replaced) loses its pieces'
records, which are then checked from disk.  After a crash there is no seal;
the records are still sound (each was written after its data was flushed),
but a file edited between the crash and the restart is only caught by
``--recheck``.  ``--recheck`` ignores it.  Pieces not in the journal are always
checked against the disk before being fetched, so a piece written but not
yet recorded when the process died is found, not downloaded again.

A full disk (or quota) typically lets part of a write through and then fails
it.  An append or a seal that fails is cut back to its last whole record
(nothing of a seal), so the journal never holds a torn entry that later
appends would follow, and the error (:class:`~torrent.errors.DiskFull`) is
raised: the run stops, and the pieces left unrecorded are found on disk by
the next start's check.

A run that downloads part of the torrent (``torrent/selection.py``) keeps
its selection beside the journal (``<info-hash>.selection``, a small JSON
object, written whole or not at all), so that a resumed run without
selection flags downloads the same files.  A ``--shard i/N`` run has a
journal of its own (``<info-hash>.shard-i-of-N.resume``): the shards of one
torrent share the output directory, never a journal.  Both go with the
journal when the download completes; the parts file (``storage.parts_path``)
stays, for seeding the boundary pieces and for a later, wider selection.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import struct
import zlib

from .storage import os_error

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "MAX_SELECTION_BYTES",
    "Journal",
    "journal_path",
    "load_selection",
    "metadata_path",
    "save_selection",
    "selection_path",
]

MAGIC = b"FTJ1"
_HEADER = struct.Struct("<4s20sIQ")
#: Bytes before the first record: magic, info-hash, piece count, piece length.
HEADER_SIZE = _HEADER.size
_RECORD = struct.Struct("<II")
#: The index that marks a seal record; a real piece index is always smaller.
SEAL = 0xFFFFFFFF
_STAT = struct.Struct("<QQ")  # size, mtime_ns
_COUNT = struct.Struct("<I")
#: Files in a seal at most (the metainfo parser's own bound is far below).
MAX_SEAL_FILES = 10_000_000
#: Bounds on what read() loads: records of this many runs' worth, plus seals.
MAX_JOURNAL_RUNS = 64
MAX_SEAL_BYTES = 64 << 20
#: The saved selection read at most: a list of up to 100,000 file indices
#: (``selection.MAX_SELECT_FILES``) in JSON is under 1 MiB.
MAX_SELECTION_BYTES = 1 << 20


def journal_path(outdir: str, info_hash: bytes, shard: tuple[int, int] | None = None) -> str:
    """The journal of a run; a ``--shard`` run (``(index, count)``) has its own."""
    stem = info_hash.hex() + ("" if shard is None else f".shard-{shard[0]}-of-{shard[1]}")
    return os.path.join(outdir, ".fasttorrent", stem + ".resume")


def selection_path(journal: str) -> str:
    """Where the selection of the run journaled in ``journal`` is kept."""
    return journal.removesuffix(".resume") + ".selection"


def save_selection(journal: str, saved: dict[str, object] | None) -> None:
    """Keep ``saved`` (JSON-able) beside ``journal``, atomically; None removes it."""
    path = selection_path(journal)
    if saved is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    tmp = path + ".tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(saved, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise os_error(e, f"writing the selection {path}") from None


def load_selection(journal: str) -> object | None:
    """The selection kept beside ``journal`` (as JSON decoded), or None: none, or unreadable
    (which costs only the selection: the caller falls back to the whole torrent)."""
    try:
        with open(selection_path(journal), "rb") as f:
            data = f.read(MAX_SELECTION_BYTES + 1)
    except OSError:
        return None
    if len(data) > MAX_SELECTION_BYTES:
        return None
    try:
        saved: object = json.loads(data)
    except ValueError:
        return None
    return saved


def metadata_path(outdir: str, info_hash: bytes) -> str:
    """Where a magnet download keeps the .torrent of its fetched metadata, beside the
    journal, so that a restart needs no second fetch; removed with the journal."""
    return os.path.join(outdir, ".fasttorrent", info_hash.hex() + ".torrent")


def _write_all(fd: int, data: bytes) -> tuple[int, OSError | None]:
    """``os.write`` all of ``data``, looping on short writes (a disk filling up lets
    part of a write through, then fails): the bytes written and the error, if any."""
    done = 0
    try:
        while done < len(data):
            w = os.write(fd, data[done:])
            if w == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done += w
    except OSError as e:
        return done, e
    return done, None


def _crc(info_hash: bytes, index: int) -> int:
    return zlib.crc32(info_hash + index.to_bytes(4, "little"))


class Journal:
    """Append-only record of durable verified pieces."""

    def __init__(self, path: str, info_hash: bytes, num_pieces: int, piece_length: int) -> None:
        self.path = path
        self.info_hash = info_hash
        self.num_pieces = num_pieces
        self.piece_length = piece_length
        self._fd: int | None = None
        self.count = 0  # records in the journal
        #: after read(): the files' (size, mtime_ns) from a seal that is the
        #: journal's last entry, else None
        self.seal_table: list[tuple[int, int]] | None = None

    def header(self) -> bytes:
        return _HEADER.pack(MAGIC, self.info_hash, self.num_pieces, self.piece_length)

    def read(self) -> set[int] | None:
        """The recorded pieces, or None when there is no journal for this torrent."""
        # A journal holds each piece once per run and a seal per stop; more than
        # this is damage (or not ours), which only costs a recheck.
        limit = _HEADER.size + _RECORD.size * self.num_pieces * MAX_JOURNAL_RUNS + MAX_SEAL_BYTES
        try:
            with open(self.path, "rb") as f:
                data = f.read(limit + 1)
            if len(data) > limit:
                return None
        except FileNotFoundError:
            return None
        except OSError:
            return None  # unreadable: costs a recheck, never fatal
        if len(data) < _HEADER.size or data[: _HEADER.size] != self.header():
            return None
        done: set[int] = set()
        self.seal_table = None
        off = _HEADER.size
        while off + _RECORD.size <= len(data):
            index, crc = _RECORD.unpack_from(data, off)
            if index == SEAL and crc == _crc(self.info_hash, SEAL):
                table = self._read_seal(data, off + _RECORD.size)
                if table is None:
                    break  # a torn seal: the records before it still count
                self.seal_table, off = table
                continue
            if index >= self.num_pieces or crc != _crc(self.info_hash, index):
                break  # corrupt from here on: ignore the rest
            done.add(index)
            self.seal_table = None  # records after a seal: that seal is stale
            off += _RECORD.size
        return done

    @staticmethod
    def _read_seal(data: bytes, off: int) -> tuple[list[tuple[int, int]], int] | None:
        if off + _COUNT.size > len(data):
            return None
        (n,) = _COUNT.unpack_from(data, off)
        off += _COUNT.size
        if n > MAX_SEAL_FILES or off + n * _STAT.size > len(data):
            return None
        table = [_STAT.unpack_from(data, off + k * _STAT.size) for k in range(n)]
        return table, off + n * _STAT.size

    def seal(self, stats: list[tuple[int, int]]) -> None:
        """Append the files' (size, mtime_ns), in file order: see the module docstring."""
        if self._fd is None:
            return
        body = _RECORD.pack(SEAL, _crc(self.info_hash, SEAL)) + _COUNT.pack(len(stats))
        body += b"".join(_STAT.pack(size, mtime) for size, mtime in stats)
        _kept, err = self._write(body, len(body))
        if err is not None:
            raise err

    def open(self, done: set[int] | None) -> None:
        """Start a fresh journal holding ``done`` (rewritten compactly, atomically)."""
        tmp = self.path + ".tmp"
        body = bytearray(self.header())
        for i in sorted(done or ()):
            body += _RECORD.pack(i, _crc(self.info_hash, i))
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                _done, err = _write_all(fd, bytes(body))
                if err is not None:
                    raise err
                if done:  # (a journal of no pieces lost to a crash is the same as none:
                    os.fsync(fd)  # the next start checks the data; the first append syncs)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)  # a partial journal is never put in place
                raise
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            self.count = len(done or ())
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as e:
            raise os_error(e, f"writing the resume journal {self.path}") from None

    def append(self, pieces: list[int]) -> None:
        """Record durable pieces (their data already flushed), then fsync the journal."""
        if not pieces or self._fd is None:
            return
        rec = b"".join(_RECORD.pack(i, _crc(self.info_hash, i)) for i in pieces)
        kept, err = self._write(rec, _RECORD.size)
        self.count += kept // _RECORD.size
        if err is not None:
            raise err

    def _write(self, body: bytes, whole: int) -> tuple[int, Exception | None]:
        """Append ``body`` and fsync; return the bytes kept and the error, if any.

        A full disk (or a quota) typically lets part of a write through, then
        fails: the journal is cut back to the last whole ``whole``-byte unit
        written (a record; a seal is one unit), so no torn entry is left for
        later appends to follow.  What is kept was fsynced.  The error is
        :class:`~torrent.errors.DiskFull` for ``ENOSPC`` / ``EDQUOT``, else
        :class:`~torrent.errors.StorageError`.
        """
        fd = self._fd
        assert fd is not None
        try:
            start = os.fstat(fd).st_size  # O_APPEND: every write goes to the end
        except OSError as e:
            return 0, os_error(e, "writing the resume journal")
        done, oserr = _write_all(fd, body)
        if oserr is None:
            try:
                os.fsync(fd)
                return done, None
            except OSError as e:
                oserr = e
                done = 0  # written, but not known to be durable: take all of it back
        keep = done - done % whole
        try:
            os.ftruncate(fd, start + keep)
            if keep:
                os.fsync(fd)
        except OSError:
            keep = 0  # counted as lost; a torn tail may remain, where read() stops
        return keep, os_error(oserr, "writing the resume journal")

    def remove(self) -> None:
        """The download is complete: the journal, the metadata kept beside it (a
        magnet's), and their folder, if empty, go."""
        self.close()
        kept = os.path.join(os.path.dirname(self.path),
                            os.path.basename(self.path).removesuffix(".resume") + ".torrent")
        for path in (kept, selection_path(self.path)):
            with contextlib.suppress(OSError):
                os.unlink(path)
        try:
            os.unlink(self.path)
            os.rmdir(os.path.dirname(self.path))
        except OSError:
            pass

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
