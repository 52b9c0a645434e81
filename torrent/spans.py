"""Where a range of the torrent's byte space lies in its files (sans-IO).

A torrent's files are laid end to end in one byte space (each at its
``offset``); pieces cut that space in ``piece_length`` steps. The storage
layer (``storage.Layout``) and the web-seed planner (``webseed.RangePlanner``)
both turn a range of it into file segments, with the functions here.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from typing import Protocol

__all__ = ["TorrentFile", "file_segments", "pieces_of_file"]


class _Extent(Protocol):
    """A file's place in the byte space (a ``metainfo.FileEntry``, a ``storage.FileSpan``)."""

    @property
    def offset(self) -> int: ...
    @property
    def length(self) -> int: ...


class TorrentFile(_Extent, Protocol):
    """A file of the torrent as ``metainfo.FileEntry`` has it: its path in the torrent,
    its place in the byte space, whether it is padding (the selection's and the
    web-seed planner's view of a file)."""

    @property
    def path(self) -> str: ...
    @property
    def pad(self) -> bool: ...


def file_segments(files: Sequence[_Extent], offsets: Sequence[int], start: int,
                  length: int) -> Iterator[tuple[int, int, int, int]]:
    """The files holding bytes ``start .. start + length - 1`` of the torrent's byte
    space, in order: ``(file index, offset in the file, offset in the range, length)``.

    ``offsets``: the files' offsets (a list to bisect). Zero-length files are
    skipped: they hold no byte of any piece.
    """
    end = start + length
    i = max(0, bisect.bisect_right(offsets, start) - 1)
    pos = start
    while pos < end and i < len(files):
        f = files[i]
        f_end = f.offset + f.length
        if f_end > pos:
            seg_end = min(end, f_end)
            yield i, pos - f.offset, pos - start, seg_end - pos
            pos = seg_end
        i += 1


def pieces_of_file(f: _Extent, piece_length: int) -> range:
    """The pieces holding any byte of file ``f`` (empty for a zero-length file)."""
    if f.length == 0:
        return range(0)
    return range(f.offset // piece_length, (f.offset + f.length - 1) // piece_length + 1)
