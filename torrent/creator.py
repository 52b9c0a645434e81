"""Make a .torrent from a file or a directory, hashing on every core.

v1 (BEP 3), v2-only or hybrid (BEP 52). The SHA-1 pieces are hashed by
:func:`torrent.hashing.hash_pieces` in ``workers`` processes (a hybrid's over
the pad layout of :func:`torrent.metainfo.pad_layout`); the v2 merkle trees by
:func:`v2_hashes`, ``workers`` threads running the native core (which releases
the GIL) on chunks of whole pieces of each file.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from . import merkle, metainfo
from ._speedups import piece_layer
from .errors import StorageError, UsageError
from .hashing import CHUNK_BYTES, hash_pieces
from .storage import FileSpan, Layout, os_error

__all__ = ["MAX_AUTO_PIECE", "MIN_AUTO_PIECE", "auto_piece_length", "create_torrent",
           "v2_hashes"]

#: The kinds of torrent :func:`create_torrent` makes.
VERSIONS = ("v1", "v2", "hybrid")

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


def _read(full: str, rel: str, start: int, size: int) -> bytes:
    try:
        with open(full, "rb") as f:
            data = os.pread(f.fileno(), size, start)
    except OSError as e:
        raise os_error(e, f"reading {rel}") from None
    if len(data) != size:
        raise StorageError(f"{rel} changed size while it was being hashed")
    return data


def v2_hashes(files: list[tuple[str, str, int]], piece_length: int, workers: int = 1,
              progress: Callable[[int, int], None] | None = None,
              ) -> list[merkle.FileHashes]:
    """Each file's BEP 52 pieces root and piece layer, hashed in ``workers`` threads.

    Args:
        files: ``(absolute path, relative path, size)``.
        piece_length: a power of two of at least 16 KiB.

    Raises:
        StorageError: a file could not be read or changed size.
    """
    per = max(piece_length, CHUNK_BYTES // piece_length * piece_length)
    tasks: list[tuple[int, int, int]] = []  # (file, first byte, bytes)
    for k, (_, _, size) in enumerate(files):
        if size > piece_length:
            tasks += [(k, s, min(per, size - s)) for s in range(0, size, per)]
    total = sum(n for _, _, n in tasks)
    done = 0

    def layer_of(task: tuple[int, int, int]) -> bytes:
        k, start, size = task
        full, rel, _ = files[k]
        return piece_layer(_read(full, rel, start, size), piece_length)

    parts: dict[int, list[bytes]] = {}
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for (k, _, n), out in zip(tasks, pool.map(layer_of, tasks), strict=True):
            parts.setdefault(k, []).append(out)
            done += n
            if progress is not None:
                progress(done, total)
    result = []
    for k, (full, rel, size) in enumerate(files):
        if size > piece_length:
            layer = b"".join(parts[k])
            result.append(merkle.FileHashes(merkle.layer_root(layer, piece_length), layer))
        else:  # one piece at most: hashed whole (its root is no piece layer's)
            result.append(merkle.file_hashes(_read(full, rel, 0, size), piece_length))
    return result


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
    version: str = "v1",
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
        version: ``"v1"``, ``"v2"`` (v2-only, BEP 52) or ``"hybrid"`` (both, with
            BEP 47 pad files so each file starts on a piece boundary).

    Raises:
        UsageError: nothing to share, or a bad piece length.
        StorageError: a file could not be read (or changed size while hashed).
    """
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    name, files, multi = _collect(path)
    if version != "v1":  # the file tree's order (the v1 list must follow it)
        files.sort(key=lambda f: metainfo.v2_order(f[1]))
    total = sum(f[2] for f in files)
    if total == 0:
        raise UsageError(f"nothing to share in {path}: no data (empty files only)")
    if piece_length is None:
        piece_length = auto_piece_length(total)
    elif piece_length < 16384 or piece_length & (piece_length - 1):
        raise UsageError("--piece-length must be a power of two of at least 16384, "
                         f"got {piece_length}")
    prefix = name + "/"
    listed = [(rel[len(prefix):], size) for _, rel, size in files]
    pieces = None
    if version != "v2":
        spans = []
        off = 0
        by_rel = {rel: full for full, rel, _ in files}
        laid = metainfo.pad_layout(listed, piece_length) if version == "hybrid" and multi \
            else [(rel[len(prefix):] if multi else rel, size, False) for _, rel, size in files]
        for rel, size, pad in laid:
            full_rel = prefix + rel if multi else rel
            spans.append(FileSpan(path="" if pad else by_rel[full_rel], rel=full_rel,
                                  length=size, offset=off, pad=pad))
            off += size
        layout = Layout(spans, piece_length, off)
        res = hash_pieces(layout, digests=None, workers=workers, progress=progress, fork=fork)
        if res.bytes_read != off:  # pads included (zeros, never read)
            raise StorageError("a file changed size while it was being hashed")
        pieces = bytes(res.digests)
    v2 = v2_hashes(files, piece_length, workers, progress) if version != "v1" else None
    for full, rel, size in files:
        try:
            if os.stat(full).st_size != size:
                raise StorageError(f"{rel} changed size while it was being hashed")
        except OSError as e:
            raise os_error(e, f"reading {rel}") from None
    return metainfo.build(
        name=name,
        files=listed if multi else None,
        length=None if multi else total,
        piece_length=piece_length,
        piece_hashes=pieces,
        trackers=trackers or [],
        private=private,
        comment=comment,
        creation_date=int(time.time()) if creation_date is None else creation_date,
        v2=v2,
    )
