"""File layout and piece I/O: map the torrent's byte space onto files, read and write pieces.

Theory of operation
-------------------
A torrent's pieces cover the concatenation of its files (pad files included,
BEP 47).  :class:`Layout` maps a byte range of that space onto file segments
with a bisect over the file offsets.  :class:`Storage` opens files lazily and
keeps at most a budget of descriptors open (:func:`open_fd_budget`: at most
:data:`MAX_OPEN_FDS`, a quarter of ``RLIMIT_NOFILE`` when that is low; a
torrent may list 100,000 files, and the default soft limit is 1,024).

Descriptors the native writer holds are *pinned*; the others sit in an LRU
and the least recently used is closed when the budget is reached.  A file
written since the last flush is not synced where it is closed (that blocked
the worker's loop for an ``fdatasync`` per evicted file: with 10,000 small
files, nearly every file).  On the output directory's filesystem it is
closed, and the next flush syncs that filesystem (``syncfs``, through a
descriptor of the output directory opened before the first write, so that
it reports every write-back error since); a flush of more than
:data:`SYNCFS_FILES` files does the same instead of an ``fdatasync`` each
(each one waited for the device: 10,000 of them kept the flush thread busy
for the whole download, and the pieces waited for it).  A file elsewhere (a
mount point inside the output directory) is *retired*: kept open, still
counted, until the next flush has ``fdatasync``ed it on the flush thread
(:meth:`Storage.pin_dirty`, :meth:`Storage.flushed`).  A writer asks
:meth:`Storage.room_for` before it takes a piece's segments: when the
files of the piece do not fit in the budget beside the pinned and retired
ones, the piece waits for writes or a flush to finish.  Reads and writes use
``os.preadv`` / ``os.pwrite`` at explicit offsets and loop on short transfers,
so several processes can share the files without sharing file positions.

Pad files are never opened: reads see zeros (that is what their digest
covers), writes skip them.

Files left out of a selection (``torrent/selection.py``) are never created.
Their spans are mapped onto the *parts file* (:func:`parts_path`, beside
the resume journal) at their offsets in the torrent's byte space, so the
bytes of a piece shared with a selected file (a boundary piece) are kept
there: the piece still verifies, is served and resumes like any other. The
parts file is sparse; it holds only the bytes of boundary pieces. Since the
mapping is by torrent offset, it does not depend on the selection, and
several runs (shards) may share one parts file.

Errors are translated here, at the I/O boundary: ``ENOSPC``/``EDQUOT`` become
:class:`~torrent.errors.DiskFull`, every other ``OSError`` a
:class:`~torrent.errors.StorageError` naming the file.
"""

from __future__ import annotations

import errno
import os
import resource
import stat
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeAlias

from .errors import DiskFull, InvalidTorrent, StorageError
from .spans import file_segments, pieces_of_file

__all__ = [
    "MAX_OPEN_FDS",
    "FileSpan",
    "Flush",
    "Layout",
    "Storage",
    "check_free_space",
    "check_output_paths",
    "existing_files",
    "finish_files",
    "layout_for",
    "open_beneath",
    "open_fd_budget",
    "parts_path",
]

#: Descriptors of data files one :class:`Storage` keeps open at most (a file written
#: with ``O_DIRECT`` holds two): 128 files.  Well under the usual 1,024 soft limit
#: so the sockets of a worker's peers always have room (``options.FD_RESERVE``).
MAX_OPEN_FDS = 256
#: Under a low ``RLIMIT_NOFILE`` the budget is this fraction of it (1,024: 256;
#: 256: 64), the rest left to sockets, pipes and the loop.
FD_LIMIT_SHARE = 4
#: The budget is never below this: a piece over a few files must fit.
MIN_OPEN_FDS = 8
#: A flush of more files than this syncs their filesystem once (``syncfs``) instead
#: of each file (``fdatasync``, a wait for the device each).
SYNCFS_FILES = 16
#: Directory descriptors a writable :class:`Storage` keeps (part of its budget), so
#: that opening a file beneath the output directory is one ``openat`` from its
#: directory instead of one per path component (10,000 files: 4 opens each).
DIR_FDS = 4
#: Buffers per preadv() at most (IOV_MAX is 1024 on Linux).
_MAX_IOV = 1024

_ENOSPC = (errno.ENOSPC, errno.EDQUOT)

#: ``(fd, file_offset, range_offset, length)``, with ``direct`` on also the
#: file's ``O_DIRECT`` descriptor or -1 (see :meth:`Storage.write_segments`).
_WriteSegment: TypeAlias = tuple[int, int, int, int] | tuple[int, int, int, int, int]


@dataclass(frozen=True, slots=True)
class FileSpan:
    """One file of the torrent's byte space."""

    path: str  # absolute path on disk (unused for pad files)
    rel: str  # path relative to the output directory, '/'-separated
    length: int
    offset: int  # first byte in the torrent's byte space
    pad: bool = False
    #: BEP 47 symlink: its target relative to the output directory, '/'-separated
    #: (a symlink holds no data; :func:`finish_files` creates it)
    symlink: str | None = None
    #: BEP 47 ``x``: :func:`finish_files` sets the executable bits
    executable: bool = False
    #: left out of the selection: ``path`` is the parts file, where this file's
    #: bytes lie at ``offset`` (see the module docstring)
    part: bool = False

    @property
    def regular(self) -> bool:
        """A file of its own on disk: not a pad, a symlink, or left out of the selection
        (whose bytes of shared pieces go to the parts file)."""
        return not self.pad and self.symlink is None and not self.part


def open_fd_budget(limit: int | None = None) -> int:
    """Descriptors a :class:`Storage` may hold under the soft ``RLIMIT_NOFILE`` ``limit``
    (None: this process's)."""
    if limit is None:
        limit, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if limit == resource.RLIM_INFINITY:
            return MAX_OPEN_FDS
    return max(MIN_OPEN_FDS, min(MAX_OPEN_FDS, limit // FD_LIMIT_SHARE))


class Flush(NamedTuple):
    """What one flush ``fdatasync``s (:meth:`Storage.pin_dirty`); give it back to
    :meth:`Storage.flushed` once done."""

    fds: list[int]  #: the descriptors to sync: the files written, the retired ones
    spans: list[int]  #: the spans pinned meanwhile
    retired: list[int]  #: descriptors closed once the sync is done
    whole_fs: list[int]  #: descriptors whose whole filesystem to sync (``syncfs``)


def os_error(exc: OSError, what: str) -> Exception:
    """Translate an OSError at the I/O boundary into our error types."""
    reason = exc.strerror or str(exc)
    if exc.errno in _ENOSPC:
        return DiskFull(f"disk full while {what}: {reason}")
    return StorageError(f"{what}: {reason}")


class Layout:
    """Maps byte ranges of the torrent's concatenated space onto file segments."""

    __slots__ = ("_offsets", "_parts", "piece_length", "root", "spans", "total_size")

    def __init__(self, spans: Sequence[FileSpan], piece_length: int, total_size: int,
                 root: str | None = None) -> None:
        self.spans = tuple(spans)
        #: the output directory: when set, files are opened beneath it without
        #: following any symlink (see :func:`open_beneath`)
        self.root = root
        self.piece_length = piece_length
        self.total_size = total_size
        self._offsets = [s.offset for s in self.spans]
        self._parts = any(s.part for s in self.spans)  # a selection: offsets to translate

    @property
    def num_pieces(self) -> int:
        return -(-self.total_size // self.piece_length)

    def piece_size(self, index: int) -> int:
        start = index * self.piece_length
        return min(self.piece_length, self.total_size - start)

    def segments(self, start: int, length: int) -> Iterator[tuple[int, int, int, int]]:
        """Yield ``(span_index, file_offset, range_offset, seg_length)`` covering the range
        (:func:`torrent.spans.file_segments`; zero-length files skipped).

        ``file_offset`` is where the bytes are in the file at the span's ``path``:
        for a span mapped onto the parts file, its offset there.
        """
        segs = file_segments(self.spans, self._offsets, start, length)
        if not self._parts:
            return segs  # the whole torrent: no wrapper (measured 3x the cost per piece)
        spans = self.spans
        return ((i, foff + spans[i].offset if spans[i].part else foff, roff, n)
                for i, foff, roff, n in segs)

    def pieces_of_span(self, i: int) -> range:
        """The pieces holding any byte of span ``i`` (empty for a zero-length file)."""
        return pieces_of_file(self.spans[i], self.piece_length)


#: The native writer's O_DIRECT unit (``_io.DIRECT_ALIGN``; a test holds them equal).
_PAGE = 4096


def _has_whole_page(file_off: int, n: int) -> bool:
    """Whether a segment at ``file_off`` of ``n`` bytes covers a whole aligned page (the
    only bytes the native writer sends with O_DIRECT)."""
    return n - ((-file_off) & (_PAGE - 1)) >= _PAGE


def parts_path(outdir: str, info_hash: bytes) -> str:
    """The parts file: the bytes of unselected files in pieces shared with selected ones."""
    return os.path.join(os.path.abspath(outdir), ".fasttorrent", info_hash.hex() + ".parts")


def layout_for(meta: object, outdir: str, selected: frozenset[int] | None = None) -> Layout:
    """The :class:`Layout` of a parsed torrent (``torrent.metainfo.Metainfo``) under ``outdir``.

    ``selected``: the indices of the files written (None: all); the others are
    mapped onto the parts file (:func:`parts_path`).
    """
    root = os.path.abspath(outdir)
    parts = parts_path(root, meta.info_hash) if selected is not None else ""  # type: ignore[attr-defined]
    spans = [
        FileSpan(
            path=(parts if selected is not None and k not in selected and not f.pad
                  else os.path.join(root, *f.path.split("/"))),
            rel=f.path,
            length=f.length,
            offset=f.offset,
            pad=f.pad,
            symlink=getattr(f, "symlink", None),
            executable=getattr(f, "executable", False),
            part=selected is not None and k not in selected and not f.pad,
        )
        for k, f in enumerate(meta.files)  # type: ignore[attr-defined]
    ]
    return Layout(spans, meta.piece_length, meta.total_size, root)  # type: ignore[attr-defined]


def _beneath_error(e: OSError, rel: str, what: str) -> Exception:
    if e.errno in (errno.ELOOP, errno.ENOTDIR):
        return StorageError(f"refusing to {what} {rel!r}: a symlink (or a file) in the output"
                            " directory is in its way; nothing is written through a link")
    return os_error(e, f"{what} {rel}")


def open_beneath(root: str, rel: str, flags: int, mode: int = 0o644, *,
                 create_dirs: bool = False) -> int:
    """Open ``rel`` ('/'-separated) under the directory ``root`` without following
    any symlink below ``root``: each directory is opened with ``O_NOFOLLOW`` from
    its parent's descriptor, and so is the file.  ``root`` itself may be a link.

    Args:
        create_dirs: make the missing directories on the way (0o777 less the umask).

    Raises:
        OSError: ``ELOOP`` / ``ENOTDIR`` when a symlink (or a file) stands where a
            directory or the file should be; anything else the open says.
    """
    parts = rel.split("/")
    dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for comp in parts[:-1]:
            dflags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                nfd = os.open(comp, dflags, dir_fd=dfd)
            except FileNotFoundError:
                if not create_dirs:
                    raise
                try:
                    os.mkdir(comp, 0o777, dir_fd=dfd)  # less the umask, as makedirs
                except FileExistsError:
                    pass
                nfd = os.open(comp, dflags, dir_fd=dfd)
            os.close(dfd)
            dfd = nfd
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
    finally:
        os.close(dfd)


#: Longest absolute path we create (Linux PATH_MAX, 4096 bytes with its NUL).
PATH_MAX_BYTES = 4095


def check_output_paths(layout: Layout, outdir: str, *, writing: bool = True) -> None:
    """Refuse a layout that would write outside ``outdir``, through a link, or two
    files to one path.

    The metainfo parser already rejects ``..``, absolute and empty components
    and names too long for the filesystem; this guards the filesystem side:
    the whole path under ``outdir`` must fit in PATH_MAX, a symlink already
    inside the output directory must not lead outside it (and, when
    ``writing``, no symlink may stand on a file's path at all: nothing is
    written through a link; a torrent's own symlinks are made last, by
    :func:`finish_files`), and paths must not collide (including on a
    case-insensitive filesystem, where ``A`` and ``a`` are one file).

    Raises:
        InvalidTorrent: two files on one path; a path longer than PATH_MAX.
        StorageError: a path through a symlink that leads outside the output
            directory (or, when ``writing``, through any symlink).
    """
    root = os.path.realpath(outdir)
    seen: dict[str, str] = {}
    linkfree: set[str] = set()  # directories known to be no symlink
    real_dirs: dict[str, str] = {}  # directory -> its realpath (10,000 files, 10 directories)
    for s in layout.spans:
        if s.pad:
            continue
        key = s.rel.casefold()
        if key in seen:
            raise InvalidTorrent(
                f"invalid torrent: info.files: two files on one path: {seen[key]!r} and {s.rel!r}"
            )
        seen[key] = s.rel
        if s.part:
            continue  # never created
        if len(os.fsencode(s.path)) > PATH_MAX_BYTES:
            raise InvalidTorrent(
                f"invalid torrent: {s.rel[:60]!r}...: the path under {outdir!r} is "
                f"{len(os.fsencode(s.path))} bytes, longer than the filesystem's limit of "
                f"{PATH_MAX_BYTES}")
        # a torrent's symlink: only the directories above it count
        parent = os.path.dirname(s.path)
        real_parent = real_dirs.get(parent)
        if real_parent is None:
            real_parent = real_dirs[parent] = os.path.realpath(parent)
        if s.symlink is not None:
            real = real_parent
        else:
            real = os.path.join(real_parent, os.path.basename(s.path))
            if os.path.islink(real):
                real = os.path.realpath(real)
        if real != root and not real.startswith(root + os.sep):
            raise StorageError(
                f"refusing to write {s.rel!r}: a symlink in the output directory leads outside it"
            )
        if writing:
            _refuse_links(layout.root or os.path.abspath(outdir), s, linkfree)


def _refuse_links(root: str, s: FileSpan, linkfree: set[str]) -> None:
    """Raise StorageError when a component of ``s.rel`` under ``root`` is a symlink."""
    parts = s.rel.split("/")
    if s.symlink is not None:
        parts = parts[:-1]
    cur = ""
    for comp in parts:
        cur = f"{cur}/{comp}" if cur else comp
        if cur in linkfree:
            continue
        try:
            st = os.lstat(os.path.join(root, cur))
        except OSError:
            return  # missing: created as a directory (or file) on the way
        if stat.S_ISLNK(st.st_mode):
            raise StorageError(
                f"refusing to write {s.rel!r}: {cur!r} is a symlink in the output directory "
                "(nothing is written through a link)")
        linkfree.add(cur)


def existing_files(layout: Layout) -> Iterator[tuple[FileSpan, os.stat_result]]:
    """The regular files of ``layout`` that exist, with their ``stat``: a file in a
    directory that does not exist is not asked for (a fresh download of 10,000 files
    in 10 directories: 10 lookups, not 10,000)."""
    dirs: dict[str, bool] = {}
    for s in layout.spans:
        if not s.regular:
            continue
        parent = os.path.dirname(s.path)
        there = dirs.get(parent)
        if there is None:
            there = dirs[parent] = os.path.isdir(parent)
        if not there:
            continue
        try:
            yield s, os.stat(s.path)
        except OSError:
            continue


def check_free_space(layout: Layout, outdir: str) -> None:
    """Raise :class:`DiskFull` when the output filesystem cannot hold what is still missing."""
    need = sum(s.length for s in layout.spans if s.regular)
    for s, have in existing_files(layout):
        need -= min(s.length, have.st_blocks * 512)
    probe = outdir
    while not os.path.isdir(probe):
        parent = os.path.dirname(probe) or "."
        if parent == probe:
            break
        probe = parent
    try:
        st = os.statvfs(probe)
    except OSError as e:
        raise os_error(e, f"checking free space in {outdir}") from None
    free = st.f_bavail * st.f_frsize
    if need > free:
        raise DiskFull(
            f"disk full: {outdir} has {free} bytes free, the torrent needs {need} more"
        )


class Storage:
    """Reads and writes ranges of the torrent's byte space to its files.

    One instance per process; descriptors are opened lazily and cached (LRU,
    at most ``max_fds``: :func:`open_fd_budget`, see the module docstring).
    ``writable=False`` never creates anything.
    With ``direct=True`` (writable only) :meth:`write_segments` also hands out
    a second descriptor of each file opened with ``O_DIRECT``, through which
    the native writer sends whole aligned pages (see ``_io.IOThread``); a
    filesystem that refuses ``O_DIRECT`` turns it off for this storage.
    """

    def __init__(self, layout: Layout, *, writable: bool = False, direct: bool = False,
                 max_fds: int | None = None) -> None:
        self.layout = layout
        self.writable = writable
        self.direct = direct and writable and hasattr(os, "O_DIRECT")
        self.max_fds = open_fd_budget() if max_fds is None else max(1, max_fds)
        self._fds: dict[int, int] = {}  # span index -> its descriptor
        self._dfds: dict[int, int] = {}  # span index -> its O_DIRECT descriptor
        # The open spans nobody pins, least recently used first: what may be closed.
        self._idle: OrderedDict[int, None] = OrderedDict()
        self._dirty: set[int] = set()
        # Descriptors handed to the native I/O thread: never closed while a job
        # may still use them (span index -> pin count).
        self._pins: dict[int, int] = {}
        # Descriptors of files written since the last flush, closed from the
        # cache: open (and counted) until a flush has synced them.
        self._retired: list[tuple[int, int]] = []  # (descriptor, span index)
        # directories (relative, '/'-separated) -> descriptor, least recently used first
        self._dirs: OrderedDict[str, int] = OrderedDict()
        # the output directory, opened before the first write: its filesystem is
        # synced whole (syncfs) for the files closed since the last flush
        self._root_fd = -1
        self._root_dev = -1
        self._fs_dirty = False  # files of that filesystem closed unsynced

    @property
    def open_fds(self) -> int:
        """Descriptors held now (cached, pinned, retired)."""
        return (len(self._fds) + len(self._dfds) + len(self._retired) + len(self._dirs)
                + (self._root_fd >= 0))

    @property
    def retired(self) -> int:
        """Descriptors waiting for a flush before they are closed."""
        return len(self._retired)

    # -- descriptors -------------------------------------------------------
    def _evict(self, i: int) -> int:
        """Close span ``i``'s descriptors (unpinned); a file written since the last
        flush keeps one open, retired, for the next flush to sync. Returns how many
        descriptors were closed."""
        self._idle.pop(i, None)
        fd = self._fds.pop(i)
        dfd = self._dfds.pop(i, None)
        closed = 0
        if dfd is not None:
            os.close(dfd)  # (fdatasync of the other descriptor syncs the inode)
            closed = 1
        if i in self._dirty:
            self._dirty.discard(i)
            if self._root_fd >= 0 and os.fstat(fd).st_dev == self._root_dev:
                os.close(fd)
                self._fs_dirty = True  # the next flush syncs the filesystem
                return closed + 1
            self._retired.append((fd, i))
            return closed
        os.close(fd)
        return closed + 1

    def _make_room(self, need: int, keep: int = 0) -> None:
        """Close least recently used idle spans until ``need`` more descriptors fit in
        the budget, or only the ``keep`` most recently used idle ones are left."""
        over = self.open_fds + need - self.max_fds  # (counted once: called per file opened)
        idle = self._idle
        while over > 0 and len(idle) > keep:
            over -= self._evict(next(iter(idle)))
        while over > 0 and self._dirs:
            os.close(self._dirs.popitem(last=False)[1])
            over -= 1

    def _open_beneath(self, rel: str, flags: int, *, create: bool) -> int:
        """:func:`open_beneath` of ``rel`` under the layout's root, from a cached
        descriptor of its directory (opened beneath the root as that would; the
        directories on the way made when ``create``)."""
        parent, _, name = rel.rpartition("/")
        dfd = self._dirs.get(parent)
        if dfd is None:
            root = self.layout.root
            assert root is not None
            dflags = os.O_RDONLY | os.O_DIRECTORY
            dfd = (open_beneath(root, parent + "/.", dflags, create_dirs=create) if parent
                   else os.open(root, dflags | os.O_CLOEXEC))
            if len(self._dirs) >= DIR_FDS:
                os.close(self._dirs.popitem(last=False)[1])
            self._dirs[parent] = dfd
        else:
            self._dirs.move_to_end(parent)
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dfd)

    def _pin(self, i: int) -> None:
        c = self._pins.get(i, 0)
        self._pins[i] = c + 1
        if not c:
            self._idle.pop(i, None)

    def _fd(self, i: int) -> int | None:
        fd = self._fds.get(i)
        if fd is not None:
            if i in self._idle:
                self._idle.move_to_end(i)
            return fd
        span = self.layout.spans[i]
        self._make_room(1)
        if self.writable:
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                if self.layout.root is not None:
                    fd = self._open_beneath(self._rel(span), flags, create=True)
                else:
                    os.makedirs(os.path.dirname(span.path), exist_ok=True)
                    fd = os.open(span.path, flags, 0o644)
            except OSError as e:
                raise _beneath_error(e, span.rel, "open") from None
        else:
            try:
                fd = os.open(span.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return None
            except OSError as e:
                if e.errno in (errno.ENOTDIR, errno.EISDIR):
                    return None
                raise os_error(e, f"opening {span.rel}") from None
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                os.close(fd)  # a directory where the file should be: missing data
                return None
        self._fds[i] = fd
        if not self._pins.get(i):
            self._idle[i] = None
        return fd

    def _rel(self, span: FileSpan) -> str:
        """Where ``span``'s bytes are, under the output directory ('/'-separated): its
        path, or for a file left out of the selection the parts file's."""
        if span.part and self.layout.root is not None:
            return os.path.relpath(span.path, self.layout.root).replace(os.sep, "/")
        return span.rel

    def _direct_fd(self, i: int) -> int:
        """The O_DIRECT descriptor of span ``i`` (opened after :meth:`_fd`), or -1."""
        dfd = self._dfds.get(i)
        if dfd is not None:
            return dfd
        self._make_room(1)
        flags = os.O_RDWR | os.O_DIRECT | os.O_NOFOLLOW | os.O_CLOEXEC
        span = self.layout.spans[i]
        try:
            if self.layout.root is not None:
                dfd = self._open_beneath(self._rel(span), flags, create=False)
            else:
                dfd = os.open(span.path, flags)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                self.direct = False  # this filesystem does not do direct I/O
                return -1
            raise _beneath_error(e, span.rel, "open") from None
        self._dfds[i] = dfd
        return dfd

    def room_for(self, start: int, length: int) -> bool:
        """Whether the descriptors :meth:`write_segments` needs for the range fit in the
        budget now (closing idle files to make room).

        False: the caller should wait until a write or a flush in flight is done
        (pinned and retired descriptors are freed then) and ask again.  A range
        that needs more than the whole budget is allowed once nothing else is
        pinned or retired: waiting would not help, so it goes over the budget
        (a piece over hundreds of files).
        """
        need = int(self._root_fd < 0 and self.layout.root is not None)  # (write_segments)
        mine = 0
        spans = self.layout.spans
        for i, foff, _roff, n in self.layout.segments(start, length):
            if spans[i].pad:
                continue
            want_direct = self.direct and _has_whole_page(foff, n)
            if i in self._fds:
                if i in self._idle:
                    self._idle.move_to_end(i)  # (not closed below to make room)
                    mine += 1
                need += want_direct and i not in self._dfds
            else:
                need += 1 + want_direct
        if self.open_fds + need <= self.max_fds:
            return True
        self._make_room(need, keep=mine)
        return (self.open_fds + need <= self.max_fds
                or not (self._pins or self._retired))

    def write_segments(self, start: int, length: int) -> tuple[list[_WriteSegment], list[int]]:
        """For a native writer: ``(fd, file_offset, range_offset, length)`` per non-pad
        segment of the range, and the span indices now pinned (see :meth:`unpin`).

        With ``direct`` on, each tuple has a fifth item: the file's ``O_DIRECT``
        descriptor, or -1 (also where the segment holds no whole aligned page:
        the writer sends that one through the page cache anyway).
        """
        segs: list[_WriteSegment] = []
        spans = []
        if self._root_fd < 0 and self.layout.root is not None:
            self._open_root()
        for i, foff, roff, n in self.layout.segments(start, length):
            if self.layout.spans[i].pad:
                continue
            self._pin(i)
            spans.append(i)
            fd = self._fd(i)
            assert fd is not None  # writable storage always opens
            if self.direct:
                segs.append((fd, foff, roff, n,
                             self._direct_fd(i) if _has_whole_page(foff, n) else -1))
            else:
                segs.append((fd, foff, roff, n))
            self._dirty.add(i)
        return segs, spans

    def _open_root(self) -> None:
        """Open the output directory (before anything is written; see ``_root_fd``)."""
        assert self.layout.root is not None
        try:
            fd = os.open(self.layout.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise os_error(e, f"opening {self.layout.root}") from None
        self._root_fd, self._root_dev = fd, os.fstat(fd).st_dev

    def _on_root_fs(self, spans: list[int]) -> tuple[list[int], list[int]]:
        """``spans`` split: on the output directory's filesystem, elsewhere."""
        mine: list[int] = []
        other: list[int] = []
        for i in spans:
            (mine if os.fstat(self._fds[i]).st_dev == self._root_dev else other).append(i)
        return mine, other

    def pin_dirty(self) -> Flush:
        """What to sync now (natively, on the flush thread): the files written since the
        last call (pinned, to ``fdatasync``), the retired descriptors, and the
        output directory's filesystem (``syncfs``) for the files closed since or
        when there are more than :data:`SYNCFS_FILES`; hand it back to
        :meth:`flushed` once synced."""
        spans = [i for i in self._dirty if i in self._fds]
        whole_fs: list[int] = []
        if self._root_fd >= 0 and (self._fs_dirty or len(spans) > SYNCFS_FILES):
            _mine, spans = self._on_root_fs(spans)
            whole_fs.append(self._root_fd)
            self._fs_dirty = False
        for i in spans:
            self._pin(i)
        self._dirty.clear()
        retired = [fd for fd, _i in self._retired]
        self._retired = []
        return Flush([self._fds[i] for i in spans] + retired, spans, retired, whole_fs)

    def flushed(self, flush: Flush) -> None:
        """A flush from :meth:`pin_dirty` is done (or failed): unpin its files, close its
        retired descriptors."""
        self.unpin(flush.spans)
        for fd in flush.retired:
            try:
                os.close(fd)
            except OSError:
                pass
        self._make_room(0)  # unpinned files past the budget (a piece that went over it)

    def mark_dirty(self, spans: list[int]) -> None:
        """A native write to ``spans`` finished: the next :meth:`pin_dirty` includes them.

        :meth:`write_segments` marks them too, but a flush taken while the
        write was still in flight cleared that mark before the bytes landed.
        """
        self._dirty.update(spans)

    def unpin(self, spans: list[int]) -> None:
        for i in spans:
            c = self._pins.get(i, 0) - 1
            if c > 0:
                self._pins[i] = c
            else:
                self._pins.pop(i, None)
                if i in self._fds:
                    self._idle[i] = None  # most recently used

    def close(self) -> None:
        for fd in [*self._fds.values(), *self._dfds.values(), *(fd for fd, _ in self._retired),
                   *self._dirs.values(), *([self._root_fd] if self._root_fd >= 0 else [])]:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
        self._dfds.clear()
        self._idle.clear()
        self._retired.clear()
        self._dirs.clear()
        self._dirty.clear()
        self._root_fd = -1
        self._fs_dirty = False

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -----------------------------------------------------------
    def read_into(self, start: int, buf: memoryview) -> bool:
        """Fill ``buf`` with the bytes at ``start``; return False if any are missing.

        Missing bytes (absent or short files) are zero-filled; pad files read
        as zeros, as BEP 47 defines them.
        """
        complete = True
        for i, foff, roff, n in self.layout.segments(start, len(buf)):
            span = self.layout.spans[i]
            dst = buf[roff : roff + n]
            if span.pad:
                dst[:] = bytes(n)
                continue
            fd = self._fd(i)
            if fd is None:
                dst[:] = bytes(n)
                complete = False
                continue
            got = 0
            while got < n:
                try:
                    r = os.preadv(fd, [dst[got:]], foff + got)
                except OSError as e:
                    raise os_error(e, f"reading {span.rel}") from None
                if r == 0:
                    dst[got:] = bytes(n - got)
                    complete = False
                    break
                got += r
        if self.open_fds > self.max_fds:
            self._make_room(0)  # a read beside pinned files: closed again at once
        return complete

    def alignment(self, start: int, length: int, align: int) -> int:
        """Where in an ``align``-aligned buffer the range must start for its first
        non-pad file's bytes to be aligned in memory as in that file (0 if none)."""
        for i, foff, roff, _n in self.layout.segments(start, length):
            if not self.layout.spans[i].pad:
                return (foff - roff) % align
        return 0

    def read_run_into(self, start: int, bufs: list[memoryview]) -> bool:
        """Fill ``bufs``, in order, with the consecutive bytes from ``start``.

        One ``preadv`` when the range lies in one file and is read whole (the
        common case: a run of blocks requested in order); otherwise
        :meth:`read_into` buffer by buffer.  Returns False if any byte was missing.
        """
        total = sum(len(b) for b in bufs)
        segs = list(self.layout.segments(start, total))
        if len(segs) == 1 and len(bufs) <= _MAX_IOV and not self.layout.spans[segs[0][0]].pad:
            i, foff, _roff, _n = segs[0]
            fd = self._fd(i)
            if fd is not None:
                try:
                    got = os.preadv(fd, bufs, foff)
                except OSError as e:
                    raise os_error(e, f"reading {self.layout.spans[i].rel}") from None
                if self.open_fds > self.max_fds:
                    self._make_room(0)
                if got == total:
                    return True
        complete = True
        for b in bufs:
            complete = self.read_into(start, b) and complete
            start += len(b)
        return complete

    # -- writing -----------------------------------------------------------
    def sync(self) -> None:
        """``fdatasync`` every file written since the last sync (here, blocking; their
        filesystem's ``syncfs`` for files closed meanwhile, see :meth:`pin_dirty`)."""
        if self._fs_dirty:
            from ._io import syncfs

            try:
                syncfs(self._root_fd)
            except OSError as e:
                raise os_error(e, f"flushing the files in {self.layout.root}") from None
            self._fs_dirty = False
        while self._retired:
            rfd, i = self._retired[-1]
            try:
                os.fdatasync(rfd)
            except OSError as e:
                raise os_error(e, f"flushing {self.layout.spans[i].rel}") from None
            self._retired.pop()
            os.close(rfd)
        for i in list(self._dirty):
            fd = self._fds.get(i)
            if fd is not None:
                try:
                    os.fdatasync(fd)
                except OSError as e:
                    raise os_error(e, f"flushing {self.layout.spans[i].rel}") from None
            self._dirty.discard(i)

    def create_files(self, preallocate: bool = True) -> None:
        """Create every (non-pad, selected) file at its full length, so sizes are final.

        An existing file is never cut below its length, nor its data touched: several
        runs (``--shard``) may create the same files at once and write them side by side.

        With ``preallocate`` the blocks are reserved up front (``posix_fallocate``):
        a full disk fails here, at once, instead of mid-download, and writes
        into reserved blocks measured 2-7x faster than into a sparse file on
        ext4 (no block allocation per write).  Filesystems without fallocate
        get a sparse file.
        """
        for i, span in enumerate(self.layout.spans):
            if not span.regular:
                continue
            fd = self._fd(i)
            assert fd is not None
            try:
                st = os.fstat(fd)
                if preallocate and span.length and st.st_blocks * 512 < span.length:
                    try:
                        os.posix_fallocate(fd, 0, span.length)
                    except OSError as e:
                        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                            raise
                if os.fstat(fd).st_size != span.length:
                    os.ftruncate(fd, span.length)
            except OSError as e:
                raise os_error(e, f"sizing {span.rel}") from None


def finish_files(layout: Layout, outdir: str) -> None:
    """A complete download's last step (BEP 47): create its symlinks, set the
    executable bits of its ``x`` files.

    A link is relative (from its directory to its target, as libtorrent makes
    it) and made only when its target resolves inside ``outdir`` (the parser
    allows no ``..`` in a target; this guards against a symlink already in the
    output directory).  A link already there with the same target is kept.

    Raises:
        StorageError: the target leads outside ``outdir``, something other than
            that link is in the way, or the filesystem refuses.
    """
    root = os.path.realpath(outdir)
    base = layout.root or os.path.abspath(outdir)
    for s in layout.spans:
        if s.pad or s.part:
            continue  # (a file left out of the selection is not created)
        if s.executable and s.symlink is None:
            try:
                fd = open_beneath(base, s.rel, os.O_RDONLY)
                try:
                    mode = stat.S_IMODE(os.fstat(fd).st_mode)
                    # x where r is: 0o644 -> 0o755
                    os.fchmod(fd, mode | (mode & 0o444) >> 2)
                finally:
                    os.close(fd)
            except OSError as e:
                raise _beneath_error(e, s.rel, "set the executable bit of") from None
        if s.symlink is None:
            continue
        target_abs = os.path.join(base, *s.symlink.split("/"))
        real = os.path.realpath(target_abs)
        if real != root and not real.startswith(root + os.sep):
            raise StorageError(f"refusing to link {s.rel!r} to {s.symlink!r}: it resolves "
                               "outside the output directory")
        parent, name = os.path.split(s.rel)
        link = os.path.relpath(target_abs, os.path.dirname(s.path))
        try:
            dfd = (open_beneath(base, parent + "/.", os.O_RDONLY | os.O_DIRECTORY,
                                create_dirs=True) if parent
                   else os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        except OSError as e:
            raise _beneath_error(e, s.rel, "link") from None
        try:
            try:
                os.symlink(link, name, dir_fd=dfd)
            except FileExistsError:
                try:
                    same = os.readlink(name, dir_fd=dfd) == link
                except OSError:
                    same = False
                if not same:
                    raise StorageError(f"cannot link {s.rel!r} to {s.symlink!r}: something "
                                       "else is already there") from None
        except OSError as e:
            raise os_error(e, f"linking {s.rel}") from None
        finally:
            os.close(dfd)
