"""BEP 52 (BitTorrent v2) merkle trees of a file: its ``pieces root``, its
``piece layers`` entry, and the checks of both (sans-IO).

Theory of operation
-------------------
v2 hashes every file on its own. A file is cut in 16 KiB blocks
(:data:`BLOCK_SIZE`); each block's SHA-256 is a leaf (the last block is
hashed as it is, short). The leaves are padded with zero hashes (32 zero
bytes) to a power of two and hashed pairwise up to one root: the file's
``pieces root`` in the ``file tree``. An empty file has no tree and no root.

The ``piece layers`` entry of a file is the tree's layer at the height of one
piece: the root of each piece's subtree (``piece_length / 16 KiB`` leaves; the
last piece's subtree is padded to that width with zero hashes, like the rest
of the tree). A file no larger than one piece has no piece layer: its only
piece hash is its ``pieces root``, whose tree is as wide as its own leaves
(padded to a power of two), not as wide as a piece.

A piece layer read from a torrent or received from a peer is checked up to the
file's ``pieces root`` (:func:`check_piece_layer`): its length must be exactly
32 bytes per piece of the file (:func:`layer_length`), and the tree built on
it, padded with the roots of all-zero pieces, must give the root. A piece
received from a peer is then checked against its entry in the layer
(:func:`check_piece`).

The hashing is the native core's (:mod:`torrent._speedups`: ``merkle_leaves``,
``merkle_root``, ``piece_layer``, with the GIL released); this module does the
arithmetic of sizes and the checks. :mod:`torrent.metainfo` checks a torrent's
piece layers with it and :mod:`torrent.creator` makes v2 and hybrid torrents
with it, and :mod:`torrent.piecelayers` exchanges layers with peers by it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._speedups import merkle_leaves, merkle_root, piece_layer

__all__ = [
    "BLOCK_SIZE",
    "HASH_SIZE",
    "MAX_FILE_LENGTH",
    "MAX_PIECE_LENGTH",
    "MAX_TREE_DEPTH",
    "FileHashes",
    "check_piece",
    "check_piece_layer",
    "check_piece_length",
    "file_hashes",
    "layer_length",
    "layer_root",
    "piece_count",
    "piece_hash",
    "tree_width",
]

#: BEP 52: a leaf is the SHA-256 of one 16 KiB block.
BLOCK_SIZE = 16384
#: A SHA-256 digest: every leaf, node, piece-layer entry and root.
HASH_SIZE = 32
#: Bound on a tree's height, in levels above the leaves (the native core's):
#: 2**48 leaves of 16 KiB, 4 EiB. A file length from a torrent or a peer beyond
#: :data:`MAX_FILE_LENGTH` is refused before anything is hashed or allocated.
MAX_TREE_DEPTH = 48
MAX_FILE_LENGTH = BLOCK_SIZE << MAX_TREE_DEPTH
#: Bound on a v2 piece length (a power of two, at least one block): 2**20
#: blocks, 16 GiB, the native core's bound on blocks per piece.
MAX_PIECE_LENGTH = BLOCK_SIZE << 20


@dataclass(frozen=True, slots=True)
class FileHashes:
    """A file's v2 hashes as a torrent carries them.

    Attributes:
        pieces_root: the file tree's ``pieces root`` (32 bytes); ``b""`` for an
            empty file, which has none.
        piece_layer: the file's ``piece layers`` value (32 bytes per piece);
            ``b""`` for a file no larger than one piece, which has none.
    """

    pieces_root: bytes
    piece_layer: bytes


def check_piece_length(piece_length: int) -> None:
    """Refuse a v2 piece length that is not a power of two from 16 KiB to
    :data:`MAX_PIECE_LENGTH`.

    Raises:
        ValueError: with a one-line message.
    """
    if (
        not isinstance(piece_length, int)
        or piece_length < BLOCK_SIZE
        or piece_length > MAX_PIECE_LENGTH
        or piece_length & (piece_length - 1)
    ):
        raise ValueError(
            f"v2 piece length must be a power of two from {BLOCK_SIZE} to {MAX_PIECE_LENGTH},"
            f" got {piece_length!r}"
        )


def _check_file_length(file_length: int) -> None:
    if not isinstance(file_length, int) or not 0 <= file_length <= MAX_FILE_LENGTH:
        raise ValueError(f"file length must be from 0 to {MAX_FILE_LENGTH}, got {file_length!r}")


def tree_width(n: int) -> int:
    """The smallest power of two no smaller than ``n`` (1 for 0 or 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def piece_count(file_length: int, piece_length: int) -> int:
    """How many pieces a file of ``file_length`` bytes has (v2 pieces never span files)."""
    _check_file_length(file_length)
    check_piece_length(piece_length)
    return -(-file_length // piece_length)


def layer_length(file_length: int, piece_length: int) -> int:
    """The exact length in bytes of a file's ``piece layers`` value: 32 per piece,
    or 0 for a file no larger than one piece (it has none).

    Raises:
        ValueError: a length out of range.
    """
    n = piece_count(file_length, piece_length)
    return HASH_SIZE * n if n > 1 else 0


def file_hashes(data: bytes | bytearray | memoryview, piece_length: int) -> FileHashes:
    """Compute a file's ``pieces root`` and ``piece layers`` value from its bytes.

    Raises:
        ValueError: ``piece_length`` is out of range.
    """
    check_piece_length(piece_length)
    n = len(data)
    if n == 0:
        return FileHashes(b"", b"")
    if n <= piece_length:
        leaves = merkle_leaves(data)
        return FileHashes(merkle_root(leaves, tree_width(len(leaves) // HASH_SIZE)), b"")
    layer = piece_layer(data, piece_length)
    return FileHashes(layer_root(layer, piece_length), layer)


def layer_root(layer: bytes | bytearray | memoryview, piece_length: int) -> bytes:
    """The root of the tree over a piece layer, padded with the roots of
    all-zero pieces: the file's ``pieces root`` when the layer is right.

    Raises:
        ValueError: ``layer`` is empty or not a whole number of hashes, or
            ``piece_length`` is out of range.
    """
    check_piece_length(piece_length)
    n, rem = divmod(len(layer), HASH_SIZE)
    if n == 0 or rem:
        raise ValueError(f"a piece layer must be a non-empty multiple of {HASH_SIZE} bytes,"
                         f" got {len(layer)}")
    level = (piece_length // BLOCK_SIZE).bit_length() - 1
    if tree_width(n).bit_length() - 1 > MAX_TREE_DEPTH - level:
        raise ValueError(f"a piece layer of {n} pieces of {piece_length} bytes is too large")
    return merkle_root(layer, tree_width(n), level)


def check_piece_layer(layer: bytes | bytearray | memoryview, pieces_root: bytes,
                      file_length: int, piece_length: int) -> bool:
    """Check a file's ``piece layers`` value (from a torrent or a peer) up to its
    ``pieces root`` (BEP 52).

    Returns:
        True if the layer hashes up to ``pieces_root``, False if it does not.

    Raises:
        ValueError: the layer's length is not 32 bytes per piece of the file, the
            file has no piece layer (no larger than one piece), the root is not
            32 bytes, or a length is out of range.
    """
    if len(pieces_root) != HASH_SIZE:
        raise ValueError(f"pieces root must be {HASH_SIZE} bytes, got {len(pieces_root)}")
    want = layer_length(file_length, piece_length)
    if want == 0:
        raise ValueError(f"a file of {file_length} bytes has no piece layer with"
                         f" {piece_length}-byte pieces")
    if len(layer) != want:
        raise ValueError(f"piece layer holds {len(layer)} bytes, expected {want}"
                         f" ({HASH_SIZE} per piece)")
    return layer_root(layer, piece_length) == bytes(pieces_root)


def piece_hash(data: bytes | bytearray | memoryview, file_length: int, piece_length: int) -> bytes:
    """The hash of one piece of a file as the torrent holds it: its subtree root
    (the entry of the piece layer), or for a file no larger than one piece, the
    file's ``pieces root``.

    Raises:
        ValueError: ``data`` is empty or longer than a piece, or a length is out
            of range.
    """
    n = piece_count(file_length, piece_length)
    if not 0 < len(data) <= min(piece_length, file_length):
        raise ValueError(f"a piece holds 1 to {min(piece_length, file_length)} bytes,"
                         f" got {len(data)}")
    if n == 1:
        leaves = merkle_leaves(data)
        return merkle_root(leaves, tree_width(len(leaves) // HASH_SIZE))
    return piece_layer(data, piece_length)


def check_piece(data: bytes | bytearray | memoryview, index: int, expected: bytes,
                file_length: int, piece_length: int) -> bool:
    """Check piece ``index`` of a file against its expected hash (its piece-layer
    entry, or the file's ``pieces root`` for a file of one piece).

    Returns:
        True if the piece's data hashes to ``expected``, False if not (also when
        ``data`` has the wrong length for that piece: a peer sent too much or
        too little).

    Raises:
        ValueError: ``index`` is not a piece of the file, ``expected`` is not 32
            bytes, or a length is out of range.
    """
    n = piece_count(file_length, piece_length)
    if not 0 <= index < n:
        raise ValueError(f"piece {index} is not in a file of {n} pieces")
    if len(expected) != HASH_SIZE:
        raise ValueError(f"expected hash must be {HASH_SIZE} bytes, got {len(expected)}")
    size = min(piece_length, file_length - index * piece_length)
    if len(data) != size:
        return False
    return piece_hash(data, file_length, piece_length) == bytes(expected)
