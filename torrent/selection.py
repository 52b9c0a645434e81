"""Which files and pieces a run downloads: ``--select``, ``--include``/``--exclude``,
BEP 53 ``so=`` and ``--shard`` (sans-IO).

Theory of operation
-------------------
A run wants a set of *pieces*; everything else follows from it. The
:class:`~torrent.leases.LeaseTable` leases only wanted pieces, and the
download is complete when every wanted piece is verified.

- **Files.** File indices are the torrent's file list as libtorrent numbers
  it (``fasttorrent info --json`` prints them as ``index``): every entry of
  ``info.files`` in order, BEP 47 pad files included, so that a BEP 53
  ``so=`` written by libtorrent-based clients means the same files here.
  The base set is ``--select`` if given, else the magnet's ``so=``, else
  every file; ``--include`` globs then keep the files matching any of them
  (none given: all), and ``--exclude`` globs drop the files matching any.
  Globs are :func:`fnmatch.fnmatchcase` on the file's path inside the
  torrent (``info --json``'s ``path``; ``*`` also matches ``/``). Pad files
  are never selected (they are never written).
- **Pieces.** The wanted pieces are the pieces holding any byte of a
  selected file. A piece that also holds bytes of unselected files (a
  *boundary* piece) is fetched and verified whole; those bytes go to the
  parts file (``storage.parts_path``), never to the unselected files, which
  are not created.
- **Shards.** ``--shard i/N`` (0-based, like Kubernetes'
  ``JOB_COMPLETION_INDEX``) keeps the pieces ``[i*P//N, (i+1)*P//N)`` of
  the ``P`` pieces: contiguous ranges, every piece in exactly one shard,
  empty ranges when ``N > P``. Combined with a file selection, a shard
  wants the wanted pieces inside its range.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import UsageError
from .spans import TorrentFile

__all__ = [
    "MAX_PATTERNS",
    "MAX_SELECT_FILES",
    "MAX_SHARDS",
    "Selection",
    "changed_files",
    "check_shard",
    "parse_select",
    "parse_shard",
    "resolve",
    "select_files",
    "shard_pieces",
    "wanted_pieces",
]

#: Shards at most. Kubernetes caps an Indexed Job's completions at 100,000;
#: more shards than that would also mean shards of a piece or two each.
MAX_SHARDS = 100_000
#: File indices one ``--select`` may name once its ranges are expanded: the
#: largest real torrents have ~10**5 files, and ``0-999999999`` must not turn
#: into a billion integers (the same bound as a magnet's ``so``).
MAX_SELECT_FILES = 100_000
#: ``--include`` / ``--exclude`` globs at most, each: every file is matched
#: against every glob.
MAX_PATTERNS = 256

_ITEM_RE = re.compile(r"([0-9]{1,9})(?:-([0-9]{1,9}))?")
_SHARD_RE = re.compile(r"([0-9]{1,6})/([0-9]{1,6})")


def parse_select(spec: str) -> tuple[int, ...]:
    """``--select``'s ``1,3-5``: indices and inclusive ranges, sorted, without duplicates.

    Raises:
        UsageError: not of that form, a range running backwards, or more than
            :data:`MAX_SELECT_FILES` indices.
    """
    out: set[int] = set()
    for item in spec.split(","):
        m = _ITEM_RE.fullmatch(item.strip())
        if not m:
            raise UsageError(f"--select: expected file indices and ranges like 1,3-5, "
                             f"got {item.strip()[:40]!r}")
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) is not None else first
        if last < first:
            raise UsageError(f"--select: range {first}-{last} runs backwards")
        if len(out) + (last - first + 1) > MAX_SELECT_FILES:
            raise UsageError(f"--select: selects more than {MAX_SELECT_FILES} files")
        out.update(range(first, last + 1))
    return tuple(sorted(out))


def parse_shard(spec: str) -> tuple[int, int]:
    """``--shard``'s ``i/N`` (0-based ``i``): ``(i, N)``.

    Raises:
        UsageError: not of that form, ``N`` not in ``1 ..`` :data:`MAX_SHARDS`,
            or ``i`` not in ``0 .. N-1``.
    """
    m = _SHARD_RE.fullmatch(spec.strip())
    if not m:
        raise UsageError(f"--shard: expected INDEX/COUNT like 0/3 (0-based), got {spec[:40]!r}")
    return check_shard(int(m.group(1)), int(m.group(2)))


def check_shard(index: int, count: int) -> tuple[int, int]:
    """``(index, count)`` if it names a shard, else :class:`UsageError`."""
    if not 1 <= count <= MAX_SHARDS:
        raise UsageError(f"--shard: the shard count must be between 1 and {MAX_SHARDS}, "
                         f"got {count}")
    if not 0 <= index < count:
        raise UsageError(f"--shard: the index is 0-based and must be below {count}, got {index}")
    return index, count


def shard_pieces(index: int, count: int, num_pieces: int) -> range:
    """The pieces of shard ``index`` of ``count``: ``[i*P//N, (i+1)*P//N)``."""
    return range(index * num_pieces // count, (index + 1) * num_pieces // count)


def select_files(files: Sequence[TorrentFile], *, indices: Sequence[int] | None = None,
                 include: Sequence[str] = (), exclude: Sequence[str] = (),
                 what: str = "--select") -> frozenset[int] | None:
    """The selected files' indices, or None when every file is (nothing narrows it).

    Args:
        files: the torrent's files (pads included: they count in the numbering).
        indices: the base set (``--select`` or ``so=``); None: every file.
        include, exclude: globs on the files' paths (see the module docstring).
        what: names the source of ``indices`` in errors.

    Raises:
        UsageError: an index past the last file, too many globs, or a
            selection that leaves no file with data.
    """
    for flag, pats in (("--include", include), ("--exclude", exclude)):
        if len(pats) > MAX_PATTERNS:
            raise UsageError(f"{flag}: at most {MAX_PATTERNS} patterns, got {len(pats)}")
    if indices is None and not include and not exclude:
        return None
    n = len(files)
    if indices is not None:
        bad = [i for i in indices if i >= n]
        if bad:
            raise UsageError(f"{what}: file {bad[0]} does not exist (the torrent's files are "
                             f"0-{n - 1}; see fasttorrent info --json)")
        base: Iterable[int] = indices
    else:
        base = range(n)
    chosen = set()
    for i in base:
        f = files[i]
        if f.pad:
            continue
        if include and not any(fnmatch.fnmatchcase(f.path, p) for p in include):
            continue
        if any(fnmatch.fnmatchcase(f.path, p) for p in exclude):
            continue
        chosen.add(i)
    if not any(files[i].length for i in chosen) and any(not f.pad and f.length for f in files):
        raise UsageError("the selection leaves no file to download (see fasttorrent info)")
    if len(chosen) == sum(1 for f in files if not f.pad):
        return None
    return frozenset(chosen)


def wanted_pieces(files: Sequence[TorrentFile], piece_length: int, num_pieces: int,
                  selected: frozenset[int] | None,
                  shard: tuple[int, int] | None) -> bytearray | None:
    """One byte per piece, 1 for a wanted piece; None when every piece is wanted."""
    if selected is None and (shard is None or shard[1] == 1):
        return None
    if selected is None:
        wanted = bytearray(b"\x01") * num_pieces
    else:
        wanted = bytearray(num_pieces)
        for i in selected:
            f = files[i]
            if f.length and not f.pad:
                first = f.offset // piece_length
                last = (f.offset + f.length - 1) // piece_length
                wanted[first : last + 1] = b"\x01" * (last - first + 1)
    if shard is not None:
        r = shard_pieces(shard[0], shard[1], num_pieces)
        wanted[: r.start] = bytes(r.start)
        wanted[r.stop :] = bytes(num_pieces - r.stop)
    return wanted


@dataclass(frozen=True, slots=True)
class Selection:
    """A run's selection, as the resume state keeps it.

    Attributes:
        files: the selected files' indices; None: every file.
        shard: ``(index, count)``; None: every piece.
    """

    files: frozenset[int] | None = None
    shard: tuple[int, int] | None = None

    @property
    def everything(self) -> bool:
        return self.files is None and self.shard is None

    def to_json(self) -> dict[str, Any]:
        return {"files": None if self.files is None else sorted(self.files),
                "shard": None if self.shard is None else list(self.shard)}

    @classmethod
    def from_json(cls, d: object, num_files: int) -> Selection | None:
        """The saved form read back; None when it is not one (damaged, another torrent's)."""
        if not isinstance(d, dict):
            return None
        files, shard = d.get("files"), d.get("shard")
        if files is not None:
            if not (isinstance(files, list) and len(files) <= MAX_SELECT_FILES and all(
                    type(i) is int and 0 <= i < num_files for i in files)):
                return None
            files = frozenset(files)
        if shard is not None:
            if not (isinstance(shard, list) and len(shard) == 2
                    and all(type(v) is int for v in shard)):
                return None
            try:
                shard = check_shard(shard[0], shard[1])
            except UsageError:
                return None
        return cls(files, shard)


def resolve(files: Sequence[TorrentFile], *, select: Sequence[int] | None = None,
            include: Sequence[str] = (), exclude: Sequence[str] = (),
            select_only: Sequence[int] = (), shard: tuple[int, int] | None = None,
            saved: Selection | None = None) -> tuple[Selection, list[str]]:
    """The run's selection from its flags, a magnet's ``so=`` and the saved one.

    ``--select``/``--include``/``--exclude`` win; else the magnet's ``so=``
    (indices past the last file are dropped, with a note); else the
    selection a resumed run saved; else every file.

    Returns:
        The selection, and lines for the log.

    Raises:
        UsageError: see :func:`select_files`.
    """
    notes: list[str] = []
    chosen: frozenset[int] | None
    if select is not None or include or exclude:
        chosen = select_files(files, indices=select, include=include, exclude=exclude)
    elif select_only:
        kept = [i for i in select_only if i < len(files)]
        if len(kept) < len(select_only):
            notes.append(f"magnet so=: ignoring {len(select_only) - len(kept)} file index(es) "
                         f"past the torrent's last file ({len(files) - 1})")
        if not kept:
            raise UsageError("magnet so=: selects none of the torrent's files")
        chosen = select_files(files, indices=kept, what="magnet so=")
    elif saved is not None and saved.files is not None:
        chosen = saved.files
        notes.append(f"resume: downloading the {len(chosen)} file(s) selected by the last run")
    else:
        chosen = None
    return Selection(chosen, shard), notes


def changed_files(before: frozenset[int] | None, after: frozenset[int] | None,
                  files: Sequence[TorrentFile]) -> list[int]:
    """The files selected in one of two selections and not in the other (None: all)."""
    every = frozenset(i for i, f in enumerate(files) if not f.pad)
    return sorted((every if before is None else before) ^ (every if after is None else after))
