"""Make a v1 .torrent from a file or a directory, hashing on every core."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable

from . import metainfo
from .errors import StorageError, UsageError
from .hashing import hash_pieces
from .storage import FileSpan, Layout, os_error

__all__ = ["MAX_AUTO_PIECE", "MIN_AUTO_PIECE", "auto_piece_length", "create_torrent"]

#: Bounds of the automatic piece length.  256 KiB keeps per-piece overhead
#: (HAVE messages, bitfield size, picker work) low on small torrents; 16 MiB is
#: the largest size common clients handle well.
MIN_AUTO_PIECE = 256 << 10
MAX_AUTO_PIECE = 16 << 20
#: The piece count the automatic piece length aims for (at most twice this).
_TARGET_PIECES = 1500


def auto_piece_length(total: int) -> int:
    """A power of two in [MIN_AUTO_PIECE, MAX_AUTO_PIECE] giving about 1,500-3,000 pieces."""
    pl = MIN_AUTO_PIECE
    while pl < MAX_AUTO_PIECE and total > pl * _TARGET_PIECES * 2:
        pl *= 2
    return pl


def _collect(path: str) -> tuple[str, list[tuple[str, str, int]], bool]:
    """Return ``(name, [(abs_path, rel_path, size)], multi_file)``; regular files only."""
    path = os.path.abspath(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    name = os.path.basename(path.rstrip(os.sep))
    if stat.S_ISREG(st.st_mode):
        return name, [(path, name, st.st_size)], False
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{path} is neither a file nor a directory")
    out: list[tuple[str, str, int]] = []

    def onerror(e: OSError) -> None:
        raise os_error(e, f"listing {e.filename}")

    for dirpath, dirnames, filenames in os.walk(path, onerror=onerror):
        dirnames.sort()
        for fn in sorted(filenames):
            full = os.path.join(dirpath, fn)
            try:
                fst = os.lstat(full)
            except OSError as e:
                raise os_error(e, f"reading {full}") from None
            if not stat.S_ISREG(fst.st_mode):
                continue  # symlinks, sockets, devices: not shared
            rel = os.path.relpath(full, os.path.dirname(path)).replace(os.sep, "/")
            out.append((full, rel, fst.st_size))
    out.sort(key=lambda t: t[1])
    return name, out, True


def create_torrent(
    path: str,
    *,
    piece_length: int | None = None,
    trackers: list[list[str]] | None = None,
    private: bool = False,
    workers: int = 1,
    comment: str | None = None,
    creation_date: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    fork: bool = False,
) -> bytes:
    """Hash ``path`` (a file or a directory) and return the bencoded .torrent.

    Args:
        path: the file or directory to share.
        piece_length: bytes per piece; a power of two of at least 16 KiB.
            Default: :func:`auto_piece_length`.
        trackers: announce tiers (BEP 12); the first URL is also ``announce``.
        private: set the BEP 27 private flag.
        workers: hashing processes.
        fork: the hashing children may be forks of this process (see
            :func:`torrent.hashing.hash_pieces`); for a caller that owns its process.

    Raises:
        UsageError: nothing to share, or a bad piece length.
        StorageError: a file could not be read (or changed size while hashed).
    """
    name, files, multi = _collect(path)
    total = sum(f[2] for f in files)
    if total == 0:
        raise UsageError(f"nothing to share in {path}: no data (empty files only)")
    if piece_length is None:
        piece_length = auto_piece_length(total)
    elif piece_length < 16384 or piece_length & (piece_length - 1):
        raise UsageError("--piece-length must be a power of two of at least 16384, "
                         f"got {piece_length}")
    spans = []
    off = 0
    for full, rel, size in files:
        spans.append(FileSpan(path=full, rel=rel, length=size, offset=off))
        off += size
    layout = Layout(spans, piece_length, total)
    res = hash_pieces(layout, digests=None, workers=workers, progress=progress, fork=fork)
    if res.bytes_read != total:
        raise StorageError("a file changed size while it was being hashed")
    for full, rel, size in files:
        try:
            if os.stat(full).st_size != size:
                raise StorageError(f"{rel} changed size while it was being hashed")
        except OSError as e:
            raise os_error(e, f"reading {rel}") from None
    prefix = name + "/"
    return metainfo.build(
        name=name,
        files=[(rel[len(prefix):], size) for _, rel, size in files] if multi else None,
        length=None if multi else total,
        piece_length=piece_length,
        piece_hashes=bytes(res.digests),
        trackers=trackers or [],
        private=private,
        comment=comment,
        creation_date=int(time.time()) if creation_date is None else creation_date,
    )
