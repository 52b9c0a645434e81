"""Check data on disk against a torrent, on every core: a v1 torrent by its SHA-1
digests, a v2-only one by its BEP 52 merkle roots (:mod:`torrent.v2pieces`), a
hybrid by both (a piece is good only if both match; one read without the piece
layers it needs, as from a magnet, by SHA-1 alone)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidTorrent
from .hashing import PIECE_BAD, PIECE_GOOD, PIECE_MISSING, hash_pieces
from .storage import layout_for
from .v2pieces import v2_pieces

__all__ = ["MAX_LISTED_PIECES", "VerifyReport", "verify_data"]

#: Piece indices listed per file and in total in a report; a wholly missing
#: 4 TB torrent would otherwise print millions of numbers.
MAX_LISTED_PIECES = 100


@dataclass(slots=True)
class VerifyReport:
    pieces_total: int
    pieces_ok: int
    pieces_bad: int
    pieces_missing: int
    bytes_checked: int
    seconds: float
    status: bytearray
    files: list[dict[str, Any]] = field(default_factory=list)
    workers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.pieces_ok == self.pieces_total

    def bad_pieces(self) -> list[int]:
        return [i for i, s in enumerate(self.status) if s == PIECE_BAD]

    def missing_pieces(self) -> list[int]:
        return [i for i, s in enumerate(self.status) if s == PIECE_MISSING]

    def to_json_dict(self) -> dict[str, Any]:
        bad = self.bad_pieces()
        missing = self.missing_pieces()
        return {
            "complete": self.complete,
            "pieces_total": self.pieces_total,
            "pieces_ok": self.pieces_ok,
            "pieces_bad": self.pieces_bad,
            "pieces_missing": self.pieces_missing,
            "bad_pieces": bad[:MAX_LISTED_PIECES],
            "missing_pieces": missing[:MAX_LISTED_PIECES],
            "bytes_checked": self.bytes_checked,
            "seconds": round(self.seconds, 6),
            "rate_bytes_per_s": round(self.bytes_checked / self.seconds) if self.seconds else 0,
            "workers": self.workers,
            "files": self.files,
        }


def verify_data(meta: Any, directory: str, *, workers: int,
                progress: Callable[[int, int], None] | None = None,
                fork: bool = False) -> VerifyReport:
    """Hash the data in ``directory`` (laid out as a download writes it) against ``meta``.

    Args:
        meta: a parsed torrent (:class:`torrent.metainfo.Metainfo`).
        directory: the output directory; file paths are ``meta.files[i].path`` under it.
        workers: hashing processes (this one and ``workers - 1`` children).
        fork: the children may be forks of this process (see
            :func:`torrent.hashing.hash_pieces`); for a caller that owns its process.

    Returns:
        A :class:`VerifyReport`; per piece good / bad / missing, per file complete or not.

    Raises:
        StorageError: an I/O error other than a missing file.
        InvalidTorrent: ``meta`` does not lay its files out as its v2 hashes need
            (only a hand-built one: a torrent read by :func:`torrent.metainfo.parse`
            always does).
    """
    try:
        v2 = v2_pieces(meta)
    except ValueError as exc:
        raise InvalidTorrent(f"invalid torrent: {exc}") from None
    if meta.v2_only and v2 is None:
        raise InvalidTorrent("invalid torrent: a v2-only torrent without its piece layers")
    layout = layout_for(meta, directory)
    res = hash_pieces(layout, digests=None if meta.v2_only else meta.piece_hashes,
                      workers=workers, progress=progress, fork=fork, v2=v2)
    st = res.status
    files = []
    for i, span in enumerate(layout.spans):
        if not span.regular:
            continue
        pieces = layout.pieces_of_span(i)
        bad = [p for p in pieces if st[p] == PIECE_BAD]
        missing = [p for p in pieces if st[p] == PIECE_MISSING]
        exists = os.path.isfile(span.path)
        files.append({
            "path": span.rel,
            "length": span.length,
            "exists": exists,
            "complete": exists and not bad and not missing
                        and os.path.getsize(span.path) >= span.length,
            "bad_pieces": bad[:MAX_LISTED_PIECES],
            "missing_pieces": missing[:MAX_LISTED_PIECES],
        })
    return VerifyReport(
        pieces_total=len(st),
        pieces_ok=st.count(PIECE_GOOD),
        pieces_bad=st.count(PIECE_BAD),
        pieces_missing=st.count(PIECE_MISSING),
        bytes_checked=res.bytes_read,
        seconds=res.seconds,
        status=st,
        files=files,
        workers=[{"worker": w.worker, "pieces": w.pieces, "bytes": w.bytes,
                  "seconds": round(w.seconds, 6)} for w in res.workers],
    )
