"""Pure-Python twins of the kernels in :mod:`torrent._fast`.

Same names, same results, same exception types for the same inputs: the parity
tests (``tests/test_fast_parity.py``) hold the two to that. This module is the
readable specification of each kernel and a fallback where the extension is not
built; it is not meant to be fast.

Argument checks happen in the order the compiled module does them: integer
arguments are range-checked as a C ``Py_ssize_t`` and buffers acquired in the
order the compiled signature converts them (typed memoryview and integer
arguments in declaration order; the ``object`` buffers of the per-message
kernels afterwards, in the body), then the bounds are checked.
"""

from __future__ import annotations

import hashlib
import operator
from typing import Any

__all__ = [
    "DIGEST_SIZE",
    "MAX_BLOCKS",
    "MAX_MERKLE_DEPTH",
    "MERKLE_BLOCK",
    "BlockMap",
    "availability_add",
    "available_backends",
    "backend",
    "bitfield_count",
    "bitfield_spare_ok",
    "copy_block",
    "merkle_leaves",
    "merkle_root",
    "piece_layer",
    "read_u32",
    "scan_frame",
    "sha1",
    "sha1_pieces",
    "sha256",
    "take_blocks",
    "verify_pieces",
    "verify_pieces_v2",
]

# A SHA-1 digest is 20 bytes; BEP 3 "pieces" is their concatenation.
DIGEST_SIZE = 20

# Bound on blocks per piece slot, checked before the bitmap is allocated: 2**20
# blocks of 16 KiB is a 16 GiB piece, far beyond any torrent in use, so a
# corrupt or hostile piece length cannot make us allocate without limit.
MAX_BLOCKS = 1 << 20

# BEP 3 length prefixes are 4-byte big-endian unsigned integers.
_PREFIX = 4

# The C types the compiled twin converts integer arguments to.
_SSIZE_MIN, _SSIZE_MAX = -(1 << 63), (1 << 63) - 1
_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1
_UINT16_MAX = 0xFFFF

# Item formats a byte buffer may have (struct syntax, byte order prefix removed).
_BYTE_FORMATS = ("B", "c")


def _ssize(value: Any) -> int:
    """Convert like Cython's ``Py_ssize_t`` argument: TypeError, OverflowError."""
    i = operator.index(value)
    if not _SSIZE_MIN <= i <= _SSIZE_MAX:
        raise OverflowError("Python int too large to convert to C ssize_t")
    return i


def _int64(value: Any) -> int:
    i = operator.index(value)
    if not _SSIZE_MIN <= i <= _SSIZE_MAX:
        raise OverflowError("Python int too large to convert to C int64")
    return i


def _bytes_view(buf: Any, *, writable: bool = False) -> memoryview:
    """Acquire ``buf`` like a ``const unsigned char[::1]`` (or writable) memoryview."""
    if buf is None:
        raise TypeError("buffer must not be None")
    mv = memoryview(buf)  # TypeError: not a buffer
    if writable and mv.readonly:
        raise BufferError("underlying buffer is not writable")
    if not mv.c_contiguous:
        raise BufferError("underlying buffer is not C-contiguous")
    if mv.ndim != 1:
        raise ValueError(f"Buffer has wrong number of dimensions (expected 1, got {mv.ndim})")
    if mv.format.lstrip("@=<>!") not in _BYTE_FORMATS:
        raise ValueError(f"Buffer dtype mismatch, expected bytes but got {mv.format!r}")
    return mv.cast("B") if mv.format != "B" else mv


# --------------------------------------------------------------------- hashing


def backend() -> str:
    """Return the SHA-1 backend of this twin: always ``"hashlib"``."""
    return "hashlib"


def available_backends() -> tuple[str, ...]:
    """Return ``("hashlib",)``."""
    return ("hashlib",)


def _check_piece_length(piece_length: int) -> None:
    if piece_length <= 0:
        raise ValueError(f"piece_length must be positive, got {piece_length}")


def _pieces(mv: memoryview, piece_length: int) -> list[memoryview]:
    return [mv[off : off + piece_length] for off in range(0, len(mv), piece_length)]


def sha1(buf: Any) -> bytes:
    """Return the SHA-1 digest of ``buf``."""
    return hashlib.sha1(_bytes_view(buf)).digest()


def sha1_pieces(buf: Any, piece_length: int) -> bytes:
    """Concatenated digests of consecutive pieces of ``buf`` (the last may be short).

    Raises:
        ValueError: ``piece_length`` is not positive.
    """
    mv = _bytes_view(buf)
    piece_length = _ssize(piece_length)
    _check_piece_length(piece_length)
    return b"".join(hashlib.sha1(p).digest() for p in _pieces(mv, piece_length))


def verify_pieces(buf: Any, piece_length: int, digests: Any) -> bytes:
    """One byte per piece of ``buf``: 1 if its SHA-1 matches ``digests``, else 0.

    Raises:
        ValueError: ``piece_length`` is not positive, or ``digests`` does not
            hold exactly 20 bytes per piece.
    """
    mv = _bytes_view(buf)
    piece_length = _ssize(piece_length)
    dv = _bytes_view(digests)
    _check_piece_length(piece_length)
    pieces = _pieces(mv, piece_length)
    if len(dv) != DIGEST_SIZE * len(pieces):
        raise ValueError(
            f"digests holds {len(dv)} bytes, expected {DIGEST_SIZE} per piece "
            f"for {len(pieces)} pieces ({DIGEST_SIZE * len(pieces)})"
        )
    want = bytes(dv)
    return bytes(
        hashlib.sha1(p).digest() == want[DIGEST_SIZE * k : DIGEST_SIZE * (k + 1)]
        for k, p in enumerate(pieces)
    )


# ------------------------------------------------------- SHA-256 and BEP 52 trees

# A BEP 52 leaf hashes one 16 KiB block of a file; digests are 32 bytes.
MERKLE_BLOCK = 16384
_SHA256 = 32

# Bound on the height of a BEP 52 tree: 2**48 leaves of 16 KiB is 4 EiB per
# file, beyond any file; a count or level beyond it is refused.
MAX_MERKLE_DEPTH = 48

_INT_MIN, _INT_MAX = _INT32_MIN, _INT32_MAX


def _zero_roots() -> list[bytes]:
    roots = [bytes(_SHA256)]
    for _ in range(MAX_MERKLE_DEPTH):
        roots.append(hashlib.sha256(roots[-1] + roots[-1]).digest())
    return roots


# _ZERO_ROOTS[k]: the root of 2**k zero leaves (k = 0: the zero leaf itself).
_ZERO_ROOTS = _zero_roots()


def _is_pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def _reduce(nodes: list[bytes], level: int, depth: int) -> bytes:
    """The root ``depth`` levels above ``nodes`` (at height ``level``), zero-padded."""
    top = level + depth
    if not nodes:
        return _ZERO_ROOTS[top]
    while level < top:
        if len(nodes) % 2:
            nodes.append(_ZERO_ROOTS[level])
        nodes = [hashlib.sha256(nodes[i] + nodes[i + 1]).digest() for i in range(0, len(nodes), 2)]
        level += 1
    return nodes[0]


def sha256(buf: Any) -> bytes:
    """Return the SHA-256 digest of ``buf``."""
    return hashlib.sha256(_bytes_view(buf)).digest()


def merkle_leaves(buf: Any) -> bytes:
    """SHA-256 of each 16 KiB block of ``buf`` (the last may be short), concatenated."""
    mv = _bytes_view(buf)
    return b"".join(hashlib.sha256(b).digest() for b in _pieces(mv, MERKLE_BLOCK))


def merkle_root(leaves: Any, count: int, level: int = 0) -> bytes:
    """The root of a merkle tree over ``leaves`` padded to ``count`` nodes.

    A missing node is the root of an all-zero subtree of height ``level``.

    Raises:
        ValueError: ``leaves`` is not a whole number of digests, or holds more
            than ``count``; ``count`` is not a power of two or too large;
            ``level`` is out of range.
    """
    mv = _bytes_view(leaves)
    count = _ssize(count)
    level = operator.index(level)
    if not _INT_MIN <= level <= _INT_MAX:
        raise OverflowError("value too large to convert to int")
    if not 0 <= level <= MAX_MERKLE_DEPTH:
        raise ValueError(f"level must be from 0 to {MAX_MERKLE_DEPTH}, got {level}")
    if not _is_pow2(count) or count.bit_length() - 1 > MAX_MERKLE_DEPTH - level:
        raise ValueError(
            f"count must be a power of two from 1 to 2**{MAX_MERKLE_DEPTH - level}, got {count}"
        )
    if len(mv) % _SHA256:
        raise ValueError(f"leaves holds {len(mv)} bytes, not a multiple of {_SHA256}")
    n = len(mv) // _SHA256
    if n > count:
        raise ValueError(f"leaves holds {n} digests, more than count ({count})")
    raw = bytes(mv)
    nodes = [raw[i : i + _SHA256] for i in range(0, len(raw), _SHA256)]
    return _reduce(nodes, level, count.bit_length() - 1)


def _check_merkle_piece_length(piece_length: int) -> None:
    if (
        not _is_pow2(piece_length)
        or piece_length < MERKLE_BLOCK
        or piece_length // MERKLE_BLOCK > MAX_BLOCKS
    ):
        raise ValueError(
            f"piece_length must be a power of two from {MERKLE_BLOCK} to "
            f"{MERKLE_BLOCK * MAX_BLOCKS} bytes, got {piece_length}"
        )


def _leaf_hashes(data: memoryview) -> list[bytes]:
    return [hashlib.sha256(b).digest() for b in _pieces(data, MERKLE_BLOCK)]


def piece_layer(buf: Any, piece_length: int) -> bytes:
    """BEP 52 piece-layer hashes of one file's data: each piece's subtree root.

    The last piece, when short, is padded to ``piece_length // 16384`` leaves
    with zero hashes.

    Raises:
        ValueError: ``piece_length`` is not a power of two from 16 KiB to
            :data:`MAX_BLOCKS` blocks.
    """
    mv = _bytes_view(buf)
    piece_length = _ssize(piece_length)
    _check_merkle_piece_length(piece_length)
    depth = (piece_length // MERKLE_BLOCK).bit_length() - 1
    return b"".join(_reduce(_leaf_hashes(piece), 0, depth) for piece in _pieces(mv, piece_length))


# Item formats of an int64 buffer (``array('q')``; ``'l'`` is the same C type on
# LP64 Linux), byte order prefix removed.
_INT64_FORMATS = ("q", "l")


def _int64_view(buf: Any) -> memoryview:
    """Acquire ``buf`` like a ``const int64_t[::1]`` memoryview."""
    if buf is None:
        raise TypeError("buffer must not be None")
    mv = memoryview(buf)  # TypeError: not a buffer
    if not mv.c_contiguous:
        raise BufferError("underlying buffer is not C-contiguous")
    if mv.ndim != 1:
        raise ValueError(f"Buffer has wrong number of dimensions (expected 1, got {mv.ndim})")
    if mv.format.lstrip("@=") not in _INT64_FORMATS or mv.itemsize != 8:
        raise ValueError(f"Buffer dtype mismatch, expected 'const int64_t' but got {mv.format!r}")
    return mv


def verify_pieces_v2(buf: Any, piece_length: int, roots: Any, lengths: Any, widths: Any) -> bytes:
    """One byte per piece of ``buf``: 1 if the merkle root of its first
    ``lengths[k]`` bytes (16 KiB leaves padded with zero hashes to ``widths[k]``)
    is ``roots[32k:32k+32]``, else 0 (BEP 52; see :mod:`torrent.v2pieces`).

    Raises:
        ValueError: ``piece_length`` is out of range; ``roots``, ``lengths`` or
            ``widths`` does not hold one entry per piece; a length or width is
            out of range for its piece.
    """
    mv = _bytes_view(buf)
    piece_length = _ssize(piece_length)
    rv = _bytes_view(roots)
    lv = _int64_view(lengths)
    wv = _int64_view(widths)
    _check_merkle_piece_length(piece_length)
    pieces = _pieces(mv, piece_length)
    count = len(pieces)
    if len(rv) != _SHA256 * count:
        raise ValueError(f"roots holds {len(rv)} bytes, expected {_SHA256} per piece "
                         f"for {count} pieces ({_SHA256 * count})")
    if len(lv) != count or len(wv) != count:
        raise ValueError(f"lengths and widths hold {len(lv)} and {len(wv)} items, expected "
                         f"one per piece ({count})")
    for k, piece in enumerate(pieces):
        size, n, w = len(piece), lv[k], wv[k]
        if not 1 <= n <= size:
            raise ValueError(f"piece {k} holds {size} bytes; its file length {n} is not "
                             f"from 1 to {size}")
        blocks = -(-n // MERKLE_BLOCK)
        if not _is_pow2(w) or w < blocks or w > piece_length // MERKLE_BLOCK:
            raise ValueError(f"piece {k}: width {w} is not a power of two from {blocks} to "
                             f"{piece_length // MERKLE_BLOCK}")
    want = bytes(rv)
    return bytes(
        _reduce(_leaf_hashes(piece[: lv[k]]), 0, wv[k].bit_length() - 1)
        == want[_SHA256 * k : _SHA256 * (k + 1)]
        for k, piece in enumerate(pieces)
    )


# -------------------------------------------------------------- block assembly


def _check_span(what: str, size: int, offset: int, length: int) -> None:
    if offset < 0 or offset > size or length > size - offset:
        raise ValueError(f"{what} span [{offset}, {offset}+{length}) is outside its {size} bytes")


def copy_block(dst: Any, dst_offset: int, src: Any, src_offset: int, length: int) -> None:
    """Copy ``src[src_offset:src_offset+length]`` into ``dst`` at ``dst_offset``.

    Raises:
        ValueError: ``length`` is negative or a span falls outside its buffer.
    """
    dst_offset, src_offset, length = _ssize(dst_offset), _ssize(src_offset), _ssize(length)
    dv = _bytes_view(dst, writable=True)
    sv = _bytes_view(src)
    if length < 0:
        raise ValueError(f"length must not be negative, got {length}")
    _check_span("dst", len(dv), dst_offset, length)
    _check_span("src", len(sv), src_offset, length)
    # bytes() first: overlapping spans copy as if through a temporary
    dv[dst_offset : dst_offset + length] = bytes(sv[src_offset : src_offset + length])


class BlockMap:
    """Which blocks of one piece slot have arrived; says when the piece is full.

    Raises:
        ValueError: ``nblocks`` is not in 1..MAX_BLOCKS.
    """

    __slots__ = ("_count", "_have")

    def __init__(self, nblocks: int) -> None:
        nblocks = _ssize(nblocks)
        if nblocks < 1 or nblocks > MAX_BLOCKS:
            raise ValueError(f"nblocks must be in 1..{MAX_BLOCKS}, got {nblocks}")
        self._have = bytearray(nblocks)
        self._count = 0

    def _check(self, i: Any) -> int:
        idx = _ssize(i)
        if idx < 0 or idx >= len(self._have):
            raise IndexError(f"block {idx} out of range 0..{len(self._have) - 1}")
        return idx

    def set(self, i: int) -> bool:
        """Mark block ``i`` present; return True if it was missing."""
        i = self._check(i)
        if self._have[i]:
            return False
        self._have[i] = 1
        self._count += 1
        return True

    def has(self, i: int) -> bool:
        """Return whether block ``i`` is present."""
        return self._have[self._check(i)] != 0

    def clear(self) -> None:
        """Forget every block."""
        self._have[:] = bytes(len(self._have))
        self._count = 0

    def missing(self) -> list[int]:
        """Return the indices of the missing blocks, ascending."""
        return [i for i, b in enumerate(self._have) if not b]

    @property
    def nblocks(self) -> int:
        """Blocks in the piece."""
        return len(self._have)

    @property
    def count(self) -> int:
        """Blocks present."""
        return self._count

    @property
    def full(self) -> bool:
        """True when every block is present."""
        return self._count == len(self._have)

    def __len__(self) -> int:
        return len(self._have)

    def __repr__(self) -> str:
        return f"BlockMap(nblocks={len(self._have)}, count={self._count})"


# ------------------------------------------------------------------- bitfields


def _check_bitfield(nbytes: int, nbits: int) -> None:
    if nbits < 0:
        raise ValueError(f"nbits must not be negative, got {nbits}")
    if nbytes < (nbits + 7) // 8:
        raise ValueError(f"a bitfield of {nbits} bits needs {(nbits + 7) // 8} bytes, got {nbytes}")


def _bit(bits: memoryview, i: int) -> bool:
    # BEP 3: the high bit of the first byte is piece 0
    return bool(bits[i >> 3] & (0x80 >> (i & 7)))


def bitfield_count(bits: Any, nbits: int) -> int:
    """Count the set bits among the first ``nbits`` of a BEP 3 bitfield (MSB first).

    Raises:
        ValueError: ``nbits`` is negative or ``bits`` is too short.
    """
    bv = _bytes_view(bits)
    nbits = _ssize(nbits)
    _check_bitfield(len(bv), nbits)
    return sum(1 for i in range(nbits) if _bit(bv, i))


def bitfield_spare_ok(bits: Any, nbits: int) -> bool:
    """Return True if every bit of ``bits`` past the first ``nbits`` is zero.

    Raises:
        ValueError: ``nbits`` is negative or ``bits`` is too short.
    """
    bv = _bytes_view(bits)
    nbits = _ssize(nbits)
    _check_bitfield(len(bv), nbits)
    return not any(_bit(bv, i) for i in range(nbits, 8 * len(bv)))


def _count_view(counts: Any) -> tuple[memoryview, int, int]:
    """Return a typed view of ``counts`` and the range of its items."""
    mv = memoryview(counts)  # TypeError: not a buffer
    fmt = mv.format.lstrip("@=")
    if mv.ndim != 1 or not mv.c_contiguous:
        raise TypeError("counts must be a one-dimensional contiguous buffer")
    if mv.readonly:
        raise TypeError("counts must be a writable buffer")
    if fmt == "H" and mv.itemsize == 2:
        return mv.cast("B").cast("H"), 0, _UINT16_MAX
    if fmt in ("i", "l") and mv.itemsize == 4:
        return mv.cast("B").cast("i"), _INT32_MIN, _INT32_MAX
    raise TypeError(f"counts must hold uint16 ('H') or int32 ('i') items, not {fmt!r}")


def availability_add(counts: Any, bits: Any, nbits: int, delta: int) -> None:
    """Add ``delta`` to ``counts[i]`` for every set bit ``i < nbits``; all or nothing.

    Raises:
        TypeError: ``counts`` is not a writable contiguous uint16 / int32 buffer.
        ValueError: ``nbits`` is negative, or ``counts`` / ``bits`` too short.
        OverflowError: ``delta`` is outside int32, or a count would overflow.
    """
    bv = _bytes_view(bits)
    nbits = _ssize(nbits)
    delta = _int64(delta)
    if not _INT32_MIN <= delta <= _INT32_MAX:
        raise OverflowError(f"delta {delta} is outside the int32 range")
    _check_bitfield(len(bv), nbits)
    cv, lo, hi = _count_view(counts)
    if len(cv) < nbits:
        raise ValueError(f"counts has {len(cv)} items, fewer than nbits={nbits}")
    have = [i for i in range(nbits) if _bit(bv, i)]
    for i in have:
        if not lo <= cv[i] + delta <= hi:
            raise OverflowError(f"count of piece {i} would leave [{lo}, {hi}] with delta {delta}")
    for i in have:
        cv[i] += delta


# --------------------------------------------------------------------- framing


def read_u32(buf: Any, pos: int) -> int:
    """Return the big-endian unsigned 32-bit integer at ``buf[pos:pos+4]``.

    Raises:
        ValueError: the four bytes are not all inside ``buf``.
    """
    pos = _ssize(pos)
    mv = _bytes_view(buf)
    if pos < 0 or pos > len(mv) - _PREFIX:
        raise ValueError(f"cannot read 4 bytes at {pos} from a buffer of {len(mv)}")
    return int.from_bytes(mv[pos : pos + _PREFIX], "big")


def scan_frame(buf: Any, start: int, end: int, max_len: int) -> int:
    """Body length of the BEP 3 message at ``buf[start:end]``, -1 if incomplete, -2 if too long.

    Raises:
        ValueError: not ``0 <= start <= end <= len(buf)``, or ``max_len < 0``.
    """
    start, end, max_len = _ssize(start), _ssize(end), _ssize(max_len)
    mv = _bytes_view(buf)
    if start < 0 or start > end or end > len(mv):
        raise ValueError(f"need 0 <= start <= end <= {len(mv)}, got start={start} end={end}")
    if max_len < 0:
        raise ValueError(f"max_len must not be negative, got {max_len}")
    if end - start < _PREFIX:
        return -1
    length = int.from_bytes(mv[start : start + _PREFIX], "big")
    if length > max_len:
        return -2
    if end - start - _PREFIX < length:
        return -1
    return length


# ------------------------------------------------------------ the block fast path

_BLOCK = 16384  # BEP 3's request size; the fast path takes only whole aligned blocks
_PIECE_ID = 7  # BEP 3 piece message
_PIECE_HDR = 13  # length prefix, id, index, begin


def take_blocks(buf: Any, pos: int, end: int, outstanding: dict[Any, Any],
                active: dict[int, Any], peer: Any, full: list[Any]) -> tuple[int, int]:
    """Take the plain ``piece`` messages at ``buf[pos:end]``; the twin of ``_fast.take_blocks``.

    A message is *plain* when all of these hold, and taking it does what the
    slow path (``PeerProtocol.accept_block`` then ``Picker.store_block``)
    would do for it, in one step:

    - it is a whole ``piece`` frame of one block (9 < length <= 9 + 16 KiB);
    - ``(index, begin)`` is in ``outstanding`` (the peer's request table,
      ``{(index, begin): (length, sent_at)}``) with this very length;
    - the piece is in ``active`` (``{index: PieceDL}``), has no endgame
      duplicate request (``pd.dups`` empty), and block ``begin // 16 KiB``
      is outstanding to ``peer`` (``pd.outstanding[b] is peer``);
    - the block is aligned, not received yet, and of the piece's block size.

    Taking it: the request leaves ``outstanding`` and ``pd.outstanding``, the
    block is copied into ``pd.slot.view`` at ``begin``, its bit is set in
    ``pd.slot.blocks``, ``pd.senders[b] = peer`` and ``pd.received += 1``.
    Taking stops at the first message that is not plain (left for the slow
    path) and after a piece becomes full (appended to ``full``).

    Returns:
        ``(pos, taken)``: where the first message not taken starts, and how
        many blocks were taken.

    Raises:
        ValueError: not ``0 <= pos <= end <= len(buf)``.
    """
    pos, end = _ssize(pos), _ssize(end)
    mv = _bytes_view(buf)
    if pos < 0 or pos > end or end > len(mv):
        raise ValueError(f"need 0 <= pos <= end <= {len(mv)}, got pos={pos} end={end}")
    taken = 0
    while end - pos >= _PIECE_HDR:
        n = int.from_bytes(mv[pos : pos + 4], "big")
        if mv[pos + 4] != _PIECE_ID or n < 9 or n > 9 + _BLOCK or end - pos - _PREFIX < n:
            break
        index = int.from_bytes(mv[pos + 5 : pos + 9], "big")
        begin = int.from_bytes(mv[pos + 9 : pos + 13], "big")
        length = n - 9
        if begin & (_BLOCK - 1) or length == 0:
            break
        key = (index, begin)
        entry = outstanding.get(key)
        if entry is None or entry[0] != length:
            break
        pd = active.get(index)
        if pd is None or pd.dups:
            break
        b = begin // _BLOCK
        if pd.outstanding.get(b) is not peer:
            break
        bm = pd.slot.blocks
        if b >= bm.nblocks or bm.has(b) or length != min(_BLOCK, pd.size - begin):
            break
        sv = _bytes_view(pd.slot.view, writable=True)
        if begin + length > len(sv):
            break
        sv[begin : begin + length] = mv[pos + _PIECE_HDR : pos + _PIECE_HDR + length]
        del outstanding[key]
        del pd.outstanding[b]
        bm.set(b)
        pd.senders[b] = peer
        pd.received += 1
        taken += 1
        pos += _PREFIX + n
        if bm.full:
            full.append(pd)
            break
    return pos, taken
