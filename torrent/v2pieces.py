"""What each piece of a BitTorrent v2 torrent must hash to (BEP 52), built once per
torrent (sans-IO).

Theory of operation
-------------------
v2 hashes every file on its own (:mod:`torrent.merkle`), and a v2 piece never
spans two files: in the piece space of a v2-only or hybrid torrent every
non-empty file starts on a piece boundary, and a pad file fills the rest of
its last piece (the layout :mod:`torrent.metainfo` reads). So piece ``i``
holds the bytes of exactly one file, from the start of the piece, followed by
pad bytes in its file's last piece; pad bytes are not hashed by v2.

Its expected hash is a merkle root over the piece's 16 KiB blocks of file
bytes (the file's last block hashed at its real length, never padded):

- a file larger than one piece: entry ``k`` of its ``piece layers`` value for
  its piece ``k``, the root of ``piece_length / 16 KiB`` leaves; the missing
  leaves of the file's last piece are zero hashes (32 zero bytes), not hashes
  of zero blocks;
- a file of at most one piece has no layer: its one piece's hash is its
  ``pieces root``, the root of its own leaves padded with zero hashes to the
  next power of two (at least 1).

Empty files, symlinks and pad files have no piece. :class:`V2Pieces` holds,
per piece of the torrent, the expected root (32 bytes), the file bytes it
holds (the rest of the piece is pad) and the tree's width in leaves, as
compact arrays that cross to the hashing processes and the native kernels
(``verify_pieces_v2``, the I/O thread) as they are.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

from .bencoding import MAX_INPUT, decode
from .merkle import BLOCK_SIZE, HASH_SIZE, check_piece_length, tree_width
from .metainfo import Metainfo

__all__ = ["MAX_PIECES", "V2Pieces", "v2_pieces"]

#: Bound on the pieces of one torrent, checked before the arrays are built: each
#: piece of a v2 torrent costs the torrent file at least 32 bytes (its entry in a
#: ``piece layers`` value, or the ``pieces root`` of a file of one piece), and a
#: torrent is at most :data:`torrent.bencoding.MAX_INPUT` bytes. 48 bytes per
#: piece are held (root, length, width): 96 MiB at this bound.
MAX_PIECES = MAX_INPUT // HASH_SIZE


@dataclass(frozen=True, slots=True)
class V2Pieces:
    """Per piece of a v2-only or hybrid torrent, what its v2 check needs.

    Attributes:
        piece_length: bytes per piece (a power of two, at least 16 KiB).
        roots: the expected 32-byte merkle root of each piece, back to back.
        lengths: the file bytes each piece holds (``'q'``, 1 to ``piece_length``;
            the rest of the piece is pad, not hashed).
        widths: the leaves each piece's tree is padded to with zero hashes
            (``'q'``, a power of two: ``piece_length / 16 KiB`` for a piece of a
            file larger than one piece, else the file's blocks rounded up).
    """

    piece_length: int
    roots: bytes
    lengths: array[int]
    widths: array[int]

    def __len__(self) -> int:
        return len(self.lengths)

    def expected(self, index: int) -> tuple[bytes, int, int]:
        """``(root, file_bytes, width)`` of piece ``index``.

        Raises:
            IndexError: ``index`` is not a piece of the torrent.
        """
        if not 0 <= index < len(self.lengths):
            raise IndexError(f"piece {index} out of range 0..{len(self.lengths) - 1}")
        return (self.roots[HASH_SIZE * index : HASH_SIZE * (index + 1)], self.lengths[index],
                self.widths[index])

    def chunk(self, first: int, end: int) -> tuple[bytes, array[int], array[int]]:
        """``(roots, lengths, widths)`` of pieces ``first`` to ``end - 1``."""
        return (self.roots[HASH_SIZE * first : HASH_SIZE * end], self.lengths[first:end],
                self.widths[first:end])


def v2_pieces(meta: Metainfo) -> V2Pieces | None:
    """The v2 expectation of every piece of ``meta``.

    Returns:
        A :class:`V2Pieces` with ``meta.num_pieces`` pieces; None for a v1
        torrent, and for a hybrid read without the ``piece layers`` one of its
        files needs (a magnet's fetched info dict has none): such a torrent is
        checked by SHA-1 alone.

    Raises:
        ValueError: ``meta`` does not lay its files out as a v2 torrent (a file
            not starting on a piece boundary, a piece of no file, a layer of the
            wrong length) or has more than :data:`MAX_PIECES` pieces; a torrent
            read by :func:`torrent.metainfo.parse` never does.
    """
    if not (meta.v2_only or meta.hybrid):
        return None
    pl = meta.piece_length
    check_piece_length(pl)
    if meta.num_pieces > MAX_PIECES:
        raise ValueError(f"{meta.num_pieces} pieces, more than {MAX_PIECES}")
    layers = decode(meta.piece_layers) if meta.piece_layers else {}
    if not isinstance(layers, dict):
        raise ValueError("piece layers must be a dict")
    per_piece = pl // BLOCK_SIZE
    roots = bytearray()
    lengths = array("q")
    widths = array("q")
    for f in meta.files:
        if f.pad or f.length == 0:
            continue
        if f.offset % pl or f.offset // pl != len(lengths):
            raise ValueError(f"{f.path!r} starts at byte {f.offset}, not at the start of piece"
                             f" {len(lengths)}")
        if len(f.pieces_root) != HASH_SIZE:
            raise ValueError(f"{f.path!r} has no {HASH_SIZE}-byte pieces root")
        n = -(-f.length // pl)
        if n == 1:
            roots += f.pieces_root
            lengths.append(f.length)
            widths.append(tree_width(-(-f.length // BLOCK_SIZE)))
            continue
        layer = layers.get(f.pieces_root)
        if layer is None:
            return None
        if not isinstance(layer, bytes) or len(layer) != HASH_SIZE * n:
            raise ValueError(f"the piece layer of {f.path!r} is not {HASH_SIZE} bytes per piece")
        roots += layer
        lengths.extend(array("q", [pl]) * (n - 1))
        lengths.append(f.length - (n - 1) * pl)
        widths.extend(array("q", [per_piece]) * n)
    if len(lengths) != meta.num_pieces:
        raise ValueError(f"the files fill {len(lengths)} pieces, the torrent has"
                         f" {meta.num_pieces}")
    return V2Pieces(pl, bytes(roots), lengths, widths)
