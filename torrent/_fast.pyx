# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""Native kernels of fasttorrent: hashing, block assembly, bitfields, framing.

Theory of operation
-------------------
Each kernel is a ``def`` wrapper that checks every argument and bound once, at
entry (raising ``ValueError`` / ``IndexError`` / ``TypeError`` exactly like its
pure-Python twin in :mod:`torrent._pure`), then hands raw pointers to a
``cdef ... noexcept nogil`` loop that cannot fail and touches no Python object.
Bounds checking is compiled off for the whole module (see the directives
above): that is only sound because of those entry checks.

Buffers are taken as ``const unsigned char[::1]`` typed memoryviews, so
``bytes``, ``bytearray``, ``memoryview``, ``mmap`` and shared memory all work,
read-only or not. The kernels called once per peer message (:func:`copy_block`,
:func:`scan_frame`, :func:`read_u32`) acquire a bare ``Py_buffer`` instead,
with the same rules (:func:`_acquire_bytes`): a typed memoryview allocates an
object per call, which cost more than the 16 KiB copy itself (see
``bench/test_bench_kernels.py``).

Hashing releases the GIL for inputs of :data:`_HASH_NOGIL_MIN` bytes or more, and
the batch kernels (:func:`sha1_pieces`, :func:`verify_pieces`) release it once
for the whole batch: the event loop of the worker keeps running while a piece
is hashed on another thread. SHA-1 itself lives in ``_sha1.h`` (libcrypto
loaded with ``dlopen`` at import, else SHA-NI, else portable C).
"""

from cpython.buffer cimport (
    PyBUF_C_CONTIGUOUS,
    PyBUF_FORMAT,
    PyBUF_STRIDES,
    PyBUF_WRITABLE,
    PyBuffer_Release,
    PyObject_GetBuffer,
)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from libc.stdint cimport int32_t, int64_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memmove, memset

cdef extern from "_sha1.h" nogil:
    int FT_SHA1_OPENSSL
    int FT_SHA1_SHANI
    int FT_SHA1_PORTABLE
    void ft_sha1_setup() noexcept
    int ft_sha1_available(int backend) noexcept
    int ft_sha1_get_backend() noexcept
    int ft_sha1_set_backend(int backend) noexcept
    void ft_sha1(const unsigned char *p, size_t n, unsigned char *out) noexcept
    const char *ft_sha1_openssl_path() noexcept

cdef extern from *:
    """
    /* GCC and clang lower this to POPCNT where the target has it, else to a
     * short bit-twiddling sequence; either is far cheaper than a byte table. */
    static inline int ft_popcount64(unsigned long long x) { return __builtin_popcountll(x); }
    """
    int ft_popcount64(unsigned long long x) noexcept nogil

__all__ = [
    "DIGEST_SIZE",
    "MAX_BLOCKS",
    "BlockMap",
    "availability_add",
    "available_backends",
    "backend",
    "bitfield_count",
    "bitfield_spare_ok",
    "copy_block",
    "read_u32",
    "scan_frame",
    "sha1",
    "sha1_pieces",
    "take_blocks",
    "verify_pieces",
]

# A SHA-1 digest is 20 bytes; BEP 3 "pieces" is their concatenation.
cdef enum:
    _DIGEST = 20
DIGEST_SIZE = _DIGEST

# Hash inputs at least this long without the GIL. Releasing and re-taking it
# costs about a microsecond when another thread wants it; hashlib uses the
# same threshold (HASHLIB_GIL_MINSIZE = 2048).
cdef enum:
    _HASH_NOGIL_MIN = 2048

# Copies at least this long release the GIL. A 16 KiB block (BEP 3's usual
# request size) copies in about a microsecond: cheaper than a GIL round trip
# that may wait out another thread's switch interval.
cdef enum:
    _COPY_NOGIL_MIN = 1 << 20

# Bound on blocks per piece slot, checked before the bitmap is allocated: 2**20
# blocks of 16 KiB is a 16 GiB piece, far beyond any torrent in use (clients
# create pieces of at most tens of MiB), so a corrupt or hostile piece length
# cannot make us allocate without limit.
cdef enum:
    _MAX_BLOCKS = 1 << 20
MAX_BLOCKS = _MAX_BLOCKS

# BEP 3 length prefixes are 4-byte big-endian unsigned integers.
cdef enum:
    _PREFIX = 4

_BACKEND_NAMES = ("openssl", "sha-ni", "portable")

ft_sha1_setup()


# --------------------------------------------------------------- SHA-1 backends

def backend() -> str:
    """Return the SHA-1 backend in use: ``"openssl"``, ``"sha-ni"`` or ``"portable"``."""
    return _BACKEND_NAMES[ft_sha1_get_backend()]


def available_backends() -> tuple:
    """Return the SHA-1 backends that loaded and passed their self-test, fastest first."""
    return tuple(name for i, name in enumerate(_BACKEND_NAMES) if ft_sha1_available(i))


def openssl_library() -> str:
    """Return the libcrypto soname that was loaded, or ``""`` if none was."""
    return ft_sha1_openssl_path().decode("ascii")


def _set_backend(str name) -> None:
    """Force a SHA-1 backend (for tests and benchmarks).

    Not thread-safe: do not switch while another thread is hashing.

    Raises:
        ValueError: ``name`` is unknown or that backend is not available here.
    """
    if name not in _BACKEND_NAMES:
        raise ValueError(f"unknown SHA-1 backend {name!r}; expected one of {_BACKEND_NAMES}")
    if ft_sha1_set_backend(_BACKEND_NAMES.index(name)) != 0:
        raise ValueError(f"SHA-1 backend {name!r} is not available on this machine")


# ------------------------------------------------------------ buffer acquisition

cdef int _acquire_bytes(object obj, Py_buffer *view, bint writable) except -1:
    """Fill ``view`` like a ``const unsigned char[::1]`` argument, without an object.

    The same rules and exception types as a typed memoryview argument (and the
    pure twin): TypeError if ``obj`` has no buffer, BufferError if it is not
    writable (when asked) or not C-contiguous, ValueError unless it is
    one-dimensional with byte items. On success the caller must release it.
    """
    if obj is None:
        raise TypeError("a bytes-like object is required, not 'NoneType'")
    PyObject_GetBuffer(obj, view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS
                       | (PyBUF_WRITABLE if writable else 0))
    cdef const char *fmt = view.format
    if fmt is not NULL and fmt[0] in b"@=<>!":
        fmt += 1
    if view.ndim != 1:
        PyBuffer_Release(view)
        raise ValueError(f"Buffer has wrong number of dimensions (expected 1, got {view.ndim})")
    if fmt is not NULL and not ((fmt[0] == b"B" or fmt[0] == b"c") and fmt[1] == 0):
        PyBuffer_Release(view)
        raise ValueError("Buffer dtype mismatch: expected a buffer of bytes")
    return 0


# ---------------------------------------------------------------------- hashing

cdef inline Py_ssize_t _npieces(Py_ssize_t n, Py_ssize_t piece_length) noexcept nogil:
    # written so that n + piece_length cannot overflow
    return n // piece_length + (1 if n % piece_length else 0)


cdef int _check_piece_length(Py_ssize_t piece_length) except -1:
    if piece_length <= 0:
        raise ValueError(f"piece_length must be positive, got {piece_length}")
    return 0


cdef void _sha1_pieces_c(const unsigned char *p, Py_ssize_t n, Py_ssize_t piece_length,
                         unsigned char *out) noexcept nogil:
    cdef Py_ssize_t off = 0
    cdef Py_ssize_t take
    while off < n:
        take = piece_length if n - off > piece_length else n - off
        ft_sha1(p + off, <size_t>take, out)
        out += _DIGEST
        off += take


cdef void _verify_pieces_c(const unsigned char *p, Py_ssize_t n, Py_ssize_t piece_length,
                           const unsigned char *digests, unsigned char *ok) noexcept nogil:
    cdef unsigned char d[_DIGEST]
    cdef Py_ssize_t off = 0
    cdef Py_ssize_t take
    while off < n:
        take = piece_length if n - off > piece_length else n - off
        ft_sha1(p + off, <size_t>take, d)
        ok[0] = memcmp(d, digests, _DIGEST) == 0
        ok += 1
        digests += _DIGEST
        off += take


def sha1(const unsigned char[::1] buf not None) -> bytes:
    """Return the SHA-1 digest of ``buf``.

    Args:
        buf: any contiguous byte buffer.

    Returns:
        The 20-byte digest.
    """
    cdef unsigned char out[_DIGEST]
    cdef Py_ssize_t n = buf.shape[0]
    cdef const unsigned char *p = &buf[0]
    if n >= _HASH_NOGIL_MIN:
        with nogil:
            ft_sha1(p, <size_t>n, out)
    else:
        ft_sha1(p, <size_t>n, out)
    return PyBytes_FromStringAndSize(<char *>out, _DIGEST)


def sha1_pieces(const unsigned char[::1] buf not None, Py_ssize_t piece_length) -> bytes:
    """Hash consecutive pieces of ``buf`` (BEP 3 "pieces"), the last may be short.

    Args:
        buf: the pieces, back to back.
        piece_length: bytes per piece, positive.

    Returns:
        The concatenated 20-byte digests; ``b""`` for an empty ``buf``.

    Raises:
        ValueError: ``piece_length`` is not positive.
    """
    _check_piece_length(piece_length)
    cdef Py_ssize_t n = buf.shape[0]
    cdef Py_ssize_t count = _npieces(n, piece_length)
    cdef bytes result = PyBytes_FromStringAndSize(NULL, count * _DIGEST)
    cdef unsigned char *out = <unsigned char *>PyBytes_AS_STRING(result)
    cdef const unsigned char *p = &buf[0]
    if n >= _HASH_NOGIL_MIN:
        with nogil:
            _sha1_pieces_c(p, n, piece_length, out)
    else:
        _sha1_pieces_c(p, n, piece_length, out)
    return result


def verify_pieces(const unsigned char[::1] buf not None, Py_ssize_t piece_length,
                  const unsigned char[::1] digests not None) -> bytes:
    """Check consecutive pieces of ``buf`` against their expected SHA-1 digests.

    Args:
        buf: the pieces, back to back; the last may be short.
        piece_length: bytes per piece, positive.
        digests: 20 bytes per piece, in order.

    Returns:
        One byte per piece: 1 if its digest matches, 0 if not.

    Raises:
        ValueError: ``piece_length`` is not positive, or ``digests`` does not
            hold exactly 20 bytes per piece of ``buf``.
    """
    _check_piece_length(piece_length)
    cdef Py_ssize_t n = buf.shape[0]
    cdef Py_ssize_t count = _npieces(n, piece_length)
    if digests.shape[0] != count * _DIGEST:
        raise ValueError(
            f"digests holds {digests.shape[0]} bytes, expected {_DIGEST} per piece "
            f"for {count} pieces ({count * _DIGEST})"
        )
    cdef bytes result = PyBytes_FromStringAndSize(NULL, count)
    cdef unsigned char *ok = <unsigned char *>PyBytes_AS_STRING(result)
    cdef const unsigned char *p = &buf[0]
    cdef const unsigned char *d = &digests[0]
    if n >= _HASH_NOGIL_MIN:
        with nogil:
            _verify_pieces_c(p, n, piece_length, d, ok)
    else:
        _verify_pieces_c(p, n, piece_length, d, ok)
    return result


# --------------------------------------------------------------- block assembly

cdef int _check_span(str what, Py_ssize_t size, Py_ssize_t offset, Py_ssize_t length) except -1:
    if offset < 0 or offset > size or length > size - offset:
        raise ValueError(f"{what} span [{offset}, {offset}+{length}) is outside its {size} bytes")
    return 0


def copy_block(object dst, Py_ssize_t dst_offset, object src, Py_ssize_t src_offset,
               Py_ssize_t length) -> None:
    """Copy ``src[src_offset:src_offset+length]`` to ``dst[dst_offset:...]``.

    The spans may overlap (same buffer): the copy behaves as if through a
    temporary.

    Args:
        dst: a writable contiguous byte buffer (a piece slot).
        dst_offset: where the bytes go in ``dst``.
        src: a contiguous byte buffer (a receive buffer).
        src_offset: where the bytes start in ``src``.
        length: how many bytes, not negative.

    Raises:
        TypeError: ``dst`` or ``src`` is not a buffer.
        BufferError: ``dst`` is read-only, or a buffer is not contiguous.
        ValueError: ``length`` is negative or a span falls outside its buffer.
    """
    cdef Py_buffer d
    cdef Py_buffer s
    _acquire_bytes(dst, &d, True)
    try:
        _acquire_bytes(src, &s, False)
        try:
            if length < 0:
                raise ValueError(f"length must not be negative, got {length}")
            _check_span("dst", d.len, dst_offset, length)
            _check_span("src", s.len, src_offset, length)
            if length >= _COPY_NOGIL_MIN:
                with nogil:
                    memmove(<char *>d.buf + dst_offset, <char *>s.buf + src_offset, <size_t>length)
            else:
                memmove(<char *>d.buf + dst_offset, <char *>s.buf + src_offset, <size_t>length)
        finally:
            PyBuffer_Release(&s)
    finally:
        PyBuffer_Release(&d)


cdef class BlockMap:
    """Which blocks of one piece slot have arrived; says when the piece is full.

    Args:
        nblocks: blocks in the piece, 1 to :data:`MAX_BLOCKS`.

    Raises:
        ValueError: ``nblocks`` is out of range.
    """

    cdef unsigned char *_have  # one byte per block: 0 missing, 1 present
    cdef Py_ssize_t _nblocks
    cdef Py_ssize_t _count

    def __cinit__(self, Py_ssize_t nblocks):
        if nblocks < 1 or nblocks > _MAX_BLOCKS:
            raise ValueError(f"nblocks must be in 1..{_MAX_BLOCKS}, got {nblocks}")
        self._have = <unsigned char *>PyMem_Calloc(<size_t>nblocks, 1)
        if self._have is NULL:
            raise MemoryError()
        self._nblocks = nblocks
        self._count = 0

    def __dealloc__(self):
        PyMem_Free(self._have)

    cdef int _check(self, Py_ssize_t i) except -1:
        if i < 0 or i >= self._nblocks:
            raise IndexError(f"block {i} out of range 0..{self._nblocks - 1}")
        return 0

    def set(self, Py_ssize_t i) -> bool:
        """Mark block ``i`` present; return True if it was missing (False for a duplicate)."""
        self._check(i)
        if self._have[i]:
            return False
        self._have[i] = 1
        self._count += 1
        return True

    def has(self, Py_ssize_t i) -> bool:
        """Return whether block ``i`` is present."""
        self._check(i)
        return self._have[i] != 0

    def clear(self) -> None:
        """Forget every block (the slot is reused for another piece or attempt)."""
        memset(self._have, 0, <size_t>self._nblocks)
        self._count = 0

    def missing(self) -> list:
        """Return the indices of the missing blocks, ascending."""
        cdef Py_ssize_t i
        return [i for i in range(self._nblocks) if not self._have[i]]

    @property
    def nblocks(self) -> int:
        """Blocks in the piece."""
        return self._nblocks

    @property
    def count(self) -> int:
        """Blocks present."""
        return self._count

    @property
    def full(self) -> bool:
        """True when every block is present."""
        return self._count == self._nblocks

    def __len__(self) -> int:
        return self._nblocks

    def __repr__(self) -> str:
        return f"BlockMap(nblocks={self._nblocks}, count={self._count})"


# -------------------------------------------------------------------- bitfields

cdef int _check_bitfield(Py_ssize_t nbytes, Py_ssize_t nbits) except -1:
    if nbits < 0:
        raise ValueError(f"nbits must not be negative, got {nbits}")
    if nbytes < nbits // 8 + (1 if nbits % 8 else 0):
        raise ValueError(f"a bitfield of {nbits} bits needs {(nbits + 7) // 8} bytes, got {nbytes}")
    return 0


cdef Py_ssize_t _popcount(const unsigned char *p, Py_ssize_t nbits) noexcept nogil:
    cdef Py_ssize_t nbytes = nbits >> 3
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t total = 0
    cdef unsigned long long word
    while i + 8 <= nbytes:
        memcpy(&word, p + i, 8)  # unaligned load; byte order does not matter to a count
        total += ft_popcount64(word)
        i += 8
    while i < nbytes:
        total += ft_popcount64(p[i])
        i += 1
    if nbits & 7:
        # BEP 3: the high bit of each byte is the lowest index
        total += ft_popcount64(p[nbytes] & (0xFF00 >> (nbits & 7)) & 0xFF)
    return total


def bitfield_count(const unsigned char[::1] bits not None, Py_ssize_t nbits) -> int:
    """Count the set bits among the first ``nbits`` of a BEP 3 bitfield (MSB first).

    Raises:
        ValueError: ``nbits`` is negative or ``bits`` is shorter than ``nbits`` needs.
    """
    _check_bitfield(bits.shape[0], nbits)
    return _popcount(&bits[0], nbits)


def bitfield_spare_ok(const unsigned char[::1] bits not None, Py_ssize_t nbits) -> bool:
    """Return True if every bit of ``bits`` past the first ``nbits`` is zero.

    BEP 3: "Spare bits at the end are set to zero"; a peer that sets them sent
    a bitfield for another torrent.

    Raises:
        ValueError: ``nbits`` is negative or ``bits`` is shorter than ``nbits`` needs.
    """
    _check_bitfield(bits.shape[0], nbits)
    cdef Py_ssize_t nbytes = bits.shape[0]
    cdef Py_ssize_t i = nbits >> 3
    if nbits & 7:
        if bits[i] & (0xFF >> (nbits & 7)):
            return False
        i += 1
    while i < nbytes:
        if bits[i]:
            return False
        i += 1
    return True


ctypedef fused count_t:
    uint16_t
    int32_t


cdef Py_ssize_t _availability_first_overflow(count_t *counts, const unsigned char *bits,
                                             Py_ssize_t nbits, int64_t delta,
                                             int64_t lo, int64_t hi) noexcept nogil:
    cdef Py_ssize_t i
    cdef int64_t v
    for i in range(nbits):
        if bits[i >> 3] & (0x80 >> (i & 7)):
            v = <int64_t>counts[i] + delta
            if v < lo or v > hi:
                return i
    return -1


cdef void _availability_apply(count_t *counts, const unsigned char *bits, Py_ssize_t nbits,
                              int64_t delta) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(nbits):
        if bits[i >> 3] & (0x80 >> (i & 7)):
            counts[i] = <count_t>(<int64_t>counts[i] + delta)


cdef int _count_kind(Py_buffer *view) except -1:
    """1 for a uint16 buffer, 4 for an int32 one; TypeError for anything else."""
    cdef bytes fmt = view.format if view.format is not NULL else b"B"
    if fmt[:1] in (b"@", b"="):
        fmt = fmt[1:]
    if view.ndim != 1 or (view.ndim == 1 and view.strides[0] != view.itemsize):
        raise TypeError("counts must be a one-dimensional contiguous buffer")
    if view.readonly:
        raise TypeError("counts must be a writable buffer")
    if fmt == b"H" and view.itemsize == 2:
        return 2
    if fmt in (b"i", b"l") and view.itemsize == 4:
        return 4
    raise TypeError(f"counts must hold uint16 ('H') or int32 ('i') items, not {fmt!r}")


def availability_add(object counts, const unsigned char[::1] bits not None,
                     Py_ssize_t nbits, int64_t delta) -> None:
    """Add ``delta`` to ``counts[i]`` for every set bit ``i < nbits`` of a BEP 3 bitfield.

    The update is all-or-nothing: if any count would leave the range of its
    type, nothing is changed.

    Args:
        counts: a writable contiguous buffer of uint16 (``array('H')``) or
            int32 (``array('i')``), at least ``nbits`` long: how many peers
            have each piece.
        bits: the bitfield, MSB first.
        nbits: pieces in the torrent.
        delta: usually +1 (a peer arrived or sent HAVE) or -1 (it left).

    Raises:
        TypeError: ``counts`` is not a writable contiguous uint16 / int32 buffer.
        ValueError: ``nbits`` is negative, or ``counts`` / ``bits`` too short.
        OverflowError: ``delta`` is outside the int32 range, or a count
            would leave the range of its type (a bookkeeping bug of ours).
    """
    cdef Py_buffer view
    cdef int kind
    cdef Py_ssize_t bad = -1
    cdef int64_t lo, hi
    if delta < -2147483648 or delta > 2147483647:
        raise OverflowError(f"delta {delta} is outside the int32 range")
    _check_bitfield(bits.shape[0], nbits)
    PyObject_GetBuffer(counts, &view, PyBUF_FORMAT | PyBUF_STRIDES)
    try:
        kind = _count_kind(&view)
        if view.shape[0] < nbits:
            raise ValueError(f"counts has {view.shape[0]} items, fewer than nbits={nbits}")
        if kind == 2:
            lo, hi = 0, 0xFFFF
            bad = _availability_first_overflow(<uint16_t *>view.buf, &bits[0], nbits, delta, lo, hi)
            if bad < 0:
                _availability_apply(<uint16_t *>view.buf, &bits[0], nbits, delta)
        else:
            lo, hi = -2147483648, 2147483647
            bad = _availability_first_overflow(<int32_t *>view.buf, &bits[0], nbits, delta, lo, hi)
            if bad < 0:
                _availability_apply(<int32_t *>view.buf, &bits[0], nbits, delta)
        if bad >= 0:
            raise OverflowError(f"count of piece {bad} would leave [{lo}, {hi}] with delta {delta}")
    finally:
        PyBuffer_Release(&view)


# ---------------------------------------------------------------------- framing

cdef inline uint32_t _be32(const unsigned char *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


def read_u32(object buf, Py_ssize_t pos) -> int:
    """Return the big-endian unsigned 32-bit integer at ``buf[pos:pos+4]``.

    Raises:
        TypeError, BufferError, ValueError: ``buf`` is not a contiguous byte
            buffer (as for :func:`copy_block`).
        ValueError: the four bytes are not all inside ``buf``.
    """
    cdef Py_buffer view
    cdef uint32_t value
    _acquire_bytes(buf, &view, False)
    try:
        if pos < 0 or pos > view.len - _PREFIX:
            raise ValueError(f"cannot read 4 bytes at {pos} from a buffer of {view.len}")
        value = _be32(<const unsigned char *>view.buf + pos)
    finally:
        PyBuffer_Release(&view)
    return value


def scan_frame(object buf, Py_ssize_t start, Py_ssize_t end, Py_ssize_t max_len) -> int:
    """Find the BEP 3 message at ``buf[start:end]``: 4-byte big-endian length, then body.

    The length prefix is checked against ``max_len`` as soon as its 4 bytes are
    there, before anything waits for (or buffers) the body.

    Args:
        buf: the receive buffer.
        start: where the next message begins.
        end: where the received bytes end.
        max_len: the largest body length accepted.

    Returns:
        The body length ``L`` (the message is ``buf[start:start+4+L]``; 0 is a
        keep-alive), -1 if ``buf[start:end]`` does not hold the whole message
        yet, or -2 if the length prefix exceeds ``max_len``.

    Raises:
        TypeError, BufferError, ValueError: ``buf`` is not a contiguous byte
            buffer (as for :func:`copy_block`).
        ValueError: not ``0 <= start <= end <= len(buf)``, or ``max_len < 0``.
    """
    cdef Py_buffer view
    cdef int64_t length
    _acquire_bytes(buf, &view, False)
    try:
        if start < 0 or start > end or end > view.len:
            raise ValueError(f"need 0 <= start <= end <= {view.len}, got start={start} end={end}")
        if max_len < 0:
            raise ValueError(f"max_len must not be negative, got {max_len}")
        if end - start < _PREFIX:
            return -1
        length = _be32(<const unsigned char *>view.buf + start)
        if length > max_len:
            return -2
        if end - start - _PREFIX < length:
            return -1
        return length
    finally:
        PyBuffer_Release(&view)


# ------------------------------------------------------------ the block fast path
#
# Theory of operation: a fast peer delivers ~65,000 blocks per GiB, and each
# microsecond of Python per block costs 0.065 CPU s/GiB.  ``take_blocks``
# walks the run of ``piece`` messages at the front of a receive buffer and,
# for each one that is the plain case -- requested from this very peer,
# its piece in flight here, no endgame duplicate, not yet received -- does
# what the sans-IO protocol (``PeerProtocol.accept_block``), the worker
# (``Worker.on_block``) and the picker (``Picker.block_arrived``) would do:
# forget the request, copy the block into its slot, mark it received and
# credit the sender.  It stops at the first message that is anything else
# (another message, an incomplete frame, a late or unrequested block, an
# endgame duplicate, a piece now full) and leaves it to the Python path, so
# every rule keeps exactly one implementation of its error handling.

cdef enum:
    _BLOCK = 16384
    _PIECE_ID = 7
    _PIECE_HDR = 13   # length prefix, id, index, begin


def take_blocks(object buf, Py_ssize_t pos, Py_ssize_t end, dict outstanding, dict active,
                object peer, list full) -> tuple:
    """Take the plain ``piece`` messages at ``buf[pos:end]`` (see the theory above).

    Args:
        buf: the connection's receive buffer.
        pos, end: the unconsumed bytes.
        outstanding: the peer's requests, ``{(index, begin): (length, sent_at)}``
            (``PeerProtocol``'s table); a taken block's entry is removed.
        active: the worker's pieces in flight, ``{index: PieceDL}`` (the picker's).
        peer: the connection, as recorded in ``PieceDL.outstanding``.
        full: a piece whose last block was taken is appended (and taking stops).

    Returns:
        ``(pos, taken)``: where the first message not taken starts, and how
        many blocks were taken.

    Raises:
        TypeError, BufferError, ValueError: a buffer is unusable, or the span
            is outside ``buf``.
    """
    cdef Py_buffer rb
    cdef Py_buffer sb
    cdef const unsigned char *p
    cdef int64_t n
    cdef Py_ssize_t index, begin, length, b, size, taken = 0
    cdef BlockMap bm
    cdef object key, entry, pd, pdout, slot
    _acquire_bytes(buf, &rb, False)
    try:
        if pos < 0 or pos > end or end > rb.len:
            raise ValueError(f"need 0 <= pos <= end <= {rb.len}, got pos={pos} end={end}")
        while end - pos >= _PIECE_HDR:
            p = <const unsigned char *>rb.buf + pos
            n = _be32(p)
            if p[4] != _PIECE_ID or n < 9 or n > 9 + _BLOCK or end - pos - _PREFIX < n:
                break
            index = _be32(p + 5)
            begin = _be32(p + 9)
            length = <Py_ssize_t>(n - 9)
            if begin & (_BLOCK - 1) or length == 0:
                break
            key = (index, begin)
            entry = outstanding.get(key)
            if entry is None or (<tuple>entry)[0] != length:
                break
            pd = active.get(index)
            if pd is None or pd.dups:
                break
            b = begin // _BLOCK
            pdout = pd.outstanding
            if pdout.get(b) is not peer:
                break
            slot = pd.slot
            bm = slot.blocks
            size = pd.size
            if b >= bm._nblocks or bm._have[b] or length != min(<Py_ssize_t>_BLOCK, size - begin):
                break
            _acquire_bytes(slot.view, &sb, True)
            try:
                if begin + length > sb.len:
                    break
                memcpy(<char *>sb.buf + begin, p + _PIECE_HDR, <size_t>length)
            finally:
                PyBuffer_Release(&sb)
            del outstanding[key]
            del pdout[b]
            bm._have[b] = 1
            bm._count += 1
            pd.senders[b] = peer
            pd.received += 1
            taken += 1
            pos += _PREFIX + <Py_ssize_t>n
            if bm._count == bm._nblocks:
                full.append(pd)
                break
    finally:
        PyBuffer_Release(&rb)
    return pos, taken


# ------------------------------------------------------------ the native I/O thread
#
# Theory of operation: a worker's event loop holds the GIL nearly all the
# time.  A Python I/O thread that hashes and writes pieces must re-take the
# GIL several times per piece, and each time may wait out the loop's switch
# interval (5 ms): measured here, hash + pwrite of 1 MiB pieces fell from
# ~900 MB/s to 75 MB/s next to a busy Python thread.  So the I/O thread is a
# plain pthread that never touches the GIL or a Python object: the loop
# submits jobs (a slot's address, its expected digest, and where its bytes go
# on disk), the thread verifies and pwrite()s them, appends the outcome to a
# done list and wakes the loop through an eventfd; the loop collects the
# outcomes with completed().  A submitted slot's buffer stays acquired (so it
# can be neither released nor resized) until its outcome is collected.

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    int pthread_create(pthread_t *t, const void *attr, void *(*start)(void *) noexcept nogil,
                       void *arg)
    int pthread_join(pthread_t t, void **ret)
    int pthread_mutex_init(pthread_mutex_t *m, const void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_cond_init(pthread_cond_t *c, const void *attr)
    int pthread_cond_destroy(pthread_cond_t *c)
    int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m)
    int pthread_cond_signal(pthread_cond_t *c)
    int pthread_cond_broadcast(pthread_cond_t *c)

cdef extern from "<unistd.h>" nogil:
    ssize_t c_pwrite "pwrite" (int fd, const void *buf, size_t count, long long offset)
    ssize_t c_write "write" (int fd, const void *buf, size_t count)
    int c_fdatasync "fdatasync" (int fd)

cdef extern from "<fcntl.h>" nogil:
    struct flock:
        short l_type
        short l_whence
        long long l_start
        long long l_len
        int l_pid
    int F_OFD_SETLKW
    int F_WRLCK
    int F_UNLCK
    int c_fcntl "fcntl" (int fd, int cmd, ...)

cdef extern from "<errno.h>" nogil:
    int errno
    int EINTR
    int EAGAIN
    int ENOSPC
    int EINVAL

cdef extern from "<time.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    int CLOCK_MONOTONIC
    int clock_gettime(int clk, timespec *ts)


cdef inline long long _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <long long>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef extern from "<stdlib.h>" nogil:
    void *calloc(size_t n, size_t size)
    void free(void *p)
    int posix_memalign(void **p, size_t alignment, size_t size)

# Writer threads per IOThread.  Each waits for its write to complete and then
# for the CPU; with several, the device has the next write queued meanwhile.
# Measured on a loaded 2-core VM (1 GiB, one worker, 4 runs each, median):
# 2 writers against 1, 627 against 572 MB/s; 4 against 2, 638 against 586
# (single file) and 568 against 522 (200 files, 256 KiB pieces): noisy
# runs, but the same direction every time.
cdef enum:
    _WRITERS = 4
    _MAX_WRITERS = 16
MAX_WRITERS = _MAX_WRITERS

# Job kinds and piece outcomes (the values completed() reports).
cdef enum:
    _JOB_PIECE = 0
    _JOB_SYNC = 1
JOB_BAD = 0        # the piece failed its hash check; nothing was written
JOB_OK = 1         # verified and written (or: synced)
JOB_IO_ERROR = 2   # verified, but a write/sync failed; errno is reported

# Segments per job at most: a piece spans at most this many files.  A 16 MiB
# piece over 1-byte files would need 16 Mi; real torrents with tiny files use
# small pieces, and a caller with more splits the write itself.
cdef enum:
    _MAX_SEGMENTS = 65536
MAX_SEGMENTS = _MAX_SEGMENTS

# Alignment of O_DIRECT transfers (file offset, length and memory address):
# the page size, which covers every logical block size in use (512 or 4096).
cdef enum:
    _DIRECT_ALIGN = 4096
DIRECT_ALIGN = _DIRECT_ALIGN

ctypedef struct ft_seg:
    int fd
    int dfd              # the same file opened with O_DIRECT, or -1
    long long file_off
    long long buf_off
    long long length

ctypedef struct ft_job:
    long long id
    int kind
    const unsigned char *buf
    long long length
    unsigned char digest[20]
    int nseg
    ft_seg *segs
    int status
    int err
    void *owner          # the job's Py_buffer (piece jobs), released by completed()
    ft_job *next


cdef int _write_all(int fd, const unsigned char *p, long long n, long long off) noexcept nogil:
    """pwrite() all of it, looping on short writes and EINTR; 0 or an errno."""
    cdef ssize_t w
    while n > 0:
        w = c_pwrite(fd, p, <size_t>n, off)
        if w < 0:
            if errno == EINTR:
                continue
            return errno
        if w == 0:
            return ENOSPC
        p += w
        n -= w
        off += w
    return 0


cdef void _file_lock(int fd, short kind) noexcept nogil:
    """Take or drop an open-file-description lock on byte 0 of ``fd`` (advisory).

    Two worker processes writing one file contend for its inode lock inside
    the kernel, and the loser *spins* there (measured: 13 % of all CPU in a
    2-worker download of one file).  Taking this lock first makes the loser
    sleep instead.  Each process opens the file itself, so the locks of two
    processes exclude each other, and the kernel drops them if a process
    dies.  Where OFD locks are unsupported the call fails and writes go on
    unserialized, as before.
    """
    cdef flock fl
    memset(&fl, 0, sizeof(fl))
    fl.l_type = kind
    fl.l_whence = 0  # SEEK_SET
    fl.l_start = 0
    fl.l_len = 1
    while c_fcntl(fd, F_OFD_SETLKW, &fl) != 0 and errno == EINTR:
        pass


# A writer's bounce buffer: a segment whose memory is not aligned like its
# file offset (a file starting mid-page in the torrent) is copied through it
# in chunks of this size, so its whole pages still go out with O_DIRECT.
cdef enum:
    _BOUNCE = 1 << 20


cdef int _write_direct(int fd, int dfd, const unsigned char *p, long long n,
                       long long off) noexcept nogil:
    """Write whole aligned pages (``p`` aligned, ``off`` and ``n`` page multiples) with
    O_DIRECT; a descriptor that refuses it (EINVAL) gets a plain write instead."""
    cdef int e = _write_all(dfd, p, n, off)
    if e == EINVAL:
        e = _write_all(fd, p, n, off)
    return e


cdef int _write_seg(ft_seg *sg, const unsigned char *p, unsigned char **bounce) noexcept nogil:
    """Write one segment; its whole pages through the O_DIRECT descriptor.

    The middle -- the whole pages of the file the segment covers -- goes to
    the device without the page cache: no page-cache page is allocated and
    filled, which measured here costs ~2 CPU s per GiB written (fresh guest
    memory) against ~0.1 s.  It goes straight from the slot when the memory
    is aligned like the file offset, else through the writer's ``*bounce``
    buffer (aligned, :data:`_BOUNCE` bytes, allocated on first use; if that
    fails, plainly), a copy far cheaper than the page cache.  The partial pages at either end go through the page
    cache; no page is written both ways.  A descriptor that refuses direct
    I/O makes that part fall back to a plain write.
    """
    cdef long long off = sg.file_off
    cdef long long n = sg.length
    cdef long long head, mid, done, take
    cdef int e
    if sg.dfd < 0 or n < _DIRECT_ALIGN:
        return _write_all(sg.fd, p, n, off)
    head = (-off) & (_DIRECT_ALIGN - 1)
    mid = (n - head) & ~(<long long>_DIRECT_ALIGN - 1)
    if mid <= 0:
        return _write_all(sg.fd, p, n, off)
    if (<size_t>(p + head)) & (_DIRECT_ALIGN - 1) and bounce[0] is NULL:
        if posix_memalign(<void **>bounce, _DIRECT_ALIGN, _BOUNCE) != 0:
            bounce[0] = NULL
            return _write_all(sg.fd, p, n, off)
    if head:
        e = _write_all(sg.fd, p, head, off)
        if e:
            return e
    if (<size_t>(p + head)) & (_DIRECT_ALIGN - 1) == 0:
        e = _write_direct(sg.fd, sg.dfd, p + head, mid, off + head)
    else:
        done = 0
        e = 0
        while done < mid and not e:
            take = min(mid - done, <long long>_BOUNCE)
            memcpy(bounce[0], p + head + done, <size_t>take)
            e = _write_direct(sg.fd, sg.dfd, bounce[0], take, off + head + done)
            done += take
    if e:
        return e
    head += mid
    return _write_all(sg.fd, p + head, n - head, off + head)


cdef bint _hash_ok(ft_job *j) noexcept nogil:
    """Stage 1 of a piece job: does the slot match its digest?  (Sets status 0 if not.)"""
    cdef unsigned char d[_DIGEST]
    ft_sha1(j.buf, <size_t>j.length, d)
    if memcmp(d, j.digest, _DIGEST) != 0:
        j.status = 0
        return False
    return True


cdef void _write_job(ft_job *j, int lock_writes, unsigned char **bounce) noexcept nogil:
    """Stage 2: write a verified piece's segments, or fdatasync a sync job's files."""
    cdef int k, e
    if j.kind == _JOB_PIECE:
        for k in range(j.nseg):
            if lock_writes:
                _file_lock(j.segs[k].fd, F_WRLCK)
            e = _write_seg(&j.segs[k], j.buf + j.segs[k].buf_off, bounce)
            if lock_writes:
                _file_lock(j.segs[k].fd, F_UNLCK)
            if e:
                j.status = 2
                j.err = e
                return
        j.status = 1
    else:
        for k in range(j.nseg):
            if c_fdatasync(j.segs[k].fd) != 0:
                j.status = 2
                j.err = errno
                return
        j.status = 1


ctypedef struct ft_io:
    pthread_mutex_t mu
    pthread_cond_t cv     # work for the hash stage, or stop
    pthread_cond_t cv2    # work for the write stage, or stop2
    ft_job *head          # submitted, not yet hashed
    ft_job *tail
    ft_job *head2         # hashed and good (or a sync job), not yet written
    ft_job *tail2
    ft_job *done
    int notify_fd
    int stop              # set by close(): the hash stage drains its queue and ends
    int stop2             # set by the hash stage when it ends: so does the write stage
    int lock_writes
    long long hash_ns     # time the hash stage spent hashing
    int writing           # jobs a writer has taken and not finished
    int wbarrier          # a sync waits for ``writing`` to drain: writers take no new job
    pthread_cond_t cv3    # ``writing`` went down
    long long write_ns    # time the write stage spent writing and syncing


cdef class IOThread:
    """Native threads that verify and write piece slots, and flush files, without the GIL.

    Two stages of pthreads: one thread hashes the submitted slots in order,
    ``writers`` threads write the good ones and run the syncs.  While a write
    waits on the device (an ``O_DIRECT`` write of 1 MiB takes about as long
    as hashing it), the next piece is already being hashed: one thread doing
    both in turn measured as the bottleneck of a one-worker download, with a
    third of the machine idle; more writers keep the device busy while one
    waits for its request to complete or for the CPU.  Jobs may finish out of submission
    order (a bad piece in the hash stage, writes side by side), but a sync
    starts only after every write submitted before it has finished.

    Args:
        notify_fd: an eventfd (``os.eventfd(0)``) the thread signals after each
            finished job; the owner reads it and then calls :meth:`completed`.
        lock_writes: serialize each file write with other processes' through an
            OFD lock on the file (several workers writing the same files).
        writers: write threads, 1 to :data:`MAX_WRITERS`.
    """

    cdef ft_io *_io
    cdef pthread_t _thread
    cdef pthread_t _writers[_MAX_WRITERS]
    cdef int _nwriters
    cdef bint _started
    cdef bint _closed
    cdef Py_ssize_t _pending

    def __cinit__(self, int notify_fd, bint lock_writes=False, int writers=_WRITERS):
        if writers < 1 or writers > _MAX_WRITERS:
            raise ValueError(f"writers must be in 1..{_MAX_WRITERS}, got {writers}")
        self._io = <ft_io *>calloc(1, sizeof(ft_io))
        if self._io is NULL:
            raise MemoryError()
        self._io.notify_fd = notify_fd
        self._io.lock_writes = lock_writes
        pthread_mutex_init(&self._io.mu, NULL)
        pthread_cond_init(&self._io.cv, NULL)
        pthread_cond_init(&self._io.cv2, NULL)
        pthread_cond_init(&self._io.cv3, NULL)
        cdef int k
        for k in range(writers):
            if pthread_create(&self._writers[k], NULL, _write_main, <void *>self._io) != 0:
                self._stop_writers()
                raise OSError("cannot start the I/O thread")
            self._nwriters += 1
        if pthread_create(&self._thread, NULL, _io_main, <void *>self._io) != 0:
            self._stop_writers()
            raise OSError("cannot start the I/O thread")
        self._started = True

    cdef void _stop_writers(self) noexcept:
        """Stop and join the writers directly (only when the hash stage never started)."""
        cdef int k
        with nogil:
            pthread_mutex_lock(&self._io.mu)
            self._io.stop2 = 1
            pthread_cond_broadcast(&self._io.cv2)
            pthread_mutex_unlock(&self._io.mu)
        for k in range(self._nwriters):
            with nogil:
                pthread_join(self._writers[k], NULL)
        self._nwriters = 0

    @property
    def busy_seconds(self) -> tuple:
        """``(hashing, writing)``: seconds each stage has spent working so far."""
        return self._io.hash_ns / 1e9, self._io.write_ns / 1e9

    @property
    def pending(self) -> int:
        """Jobs submitted and not yet collected by :meth:`completed`."""
        return self._pending

    cdef void _push(self, ft_job *j) noexcept:
        cdef ft_io *io = self._io
        with nogil:
            pthread_mutex_lock(&io.mu)
            _enqueue(&io.head, &io.tail, j)
            pthread_cond_signal(&io.cv)
            pthread_mutex_unlock(&io.mu)
        self._pending += 1

    def submit_piece(self, long long job_id, object buf, Py_ssize_t length, digest,
                     list segments) -> None:
        """Verify ``buf[:length]`` against ``digest``; if good, write its segments.

        Args:
            job_id: reported back by :meth:`completed`.
            buf: the slot (kept acquired until the outcome is collected).
            length: the piece's size.
            digest: its expected 20-byte SHA-1.
            segments: ``(fd, file_offset, buf_offset, length)`` tuples, inside
                ``buf[:length]``; pad files are simply left out.  A fifth item,
                the same file opened with ``O_DIRECT`` (or -1), lets the
                segment's whole pages bypass the page cache.
        """
        if self._closed:
            raise ValueError("the I/O thread is closed")
        cdef Py_ssize_t nseg = len(segments)
        if nseg > _MAX_SEGMENTS:
            raise ValueError(f"a piece spans {nseg} files; at most {_MAX_SEGMENTS}")
        cdef const unsigned char[::1] dg = digest
        if dg.shape[0] != _DIGEST:
            raise ValueError("digest must be 20 bytes")
        cdef Py_buffer *view = <Py_buffer *>calloc(1, sizeof(Py_buffer))
        if view is NULL:
            raise MemoryError()
        try:
            _acquire_bytes(buf, view, False)
        except BaseException:
            free(view)
            raise
        cdef ft_job *j = <ft_job *>calloc(1, sizeof(ft_job))
        cdef ft_seg *segs = <ft_seg *>calloc(max(nseg, 1), sizeof(ft_seg))
        cdef Py_ssize_t k
        cdef long long fd, foff, boff, ln, dfd
        try:
            if j is NULL or segs is NULL:
                raise MemoryError()
            if length < 0 or length > view.len:
                raise ValueError(f"length {length} outside the buffer of {view.len} bytes")
            for k in range(nseg):
                seg = segments[k]
                if len(seg) == 5:
                    fd, foff, boff, ln, dfd = seg
                else:
                    fd, foff, boff, ln = seg
                    dfd = -1
                if fd < 0 or foff < 0 or boff < 0 or ln < 0 or boff + ln > length or dfd < -1:
                    raise ValueError(f"segment {segments[k]!r} outside the piece")
                segs[k].fd = <int>fd
                segs[k].dfd = <int>dfd
                segs[k].file_off = foff
                segs[k].buf_off = boff
                segs[k].length = ln
        except BaseException:
            PyBuffer_Release(view)
            free(view)
            free(j)
            free(segs)
            raise
        j.id = job_id
        j.kind = _JOB_PIECE
        j.buf = <const unsigned char *>view.buf
        j.length = length
        memcpy(j.digest, &dg[0], _DIGEST)
        j.nseg = <int>nseg
        j.segs = segs
        j.owner = view
        self._push(j)

    def submit_sync(self, long long job_id, fds) -> None:
        """``fdatasync`` each descriptor, after every job submitted before this one."""
        if self._closed:
            raise ValueError("the I/O thread is closed")
        fds = list(fds)
        cdef Py_ssize_t n = len(fds), k
        cdef ft_job *j = <ft_job *>calloc(1, sizeof(ft_job))
        cdef ft_seg *segs = <ft_seg *>calloc(max(n, 1), sizeof(ft_seg))
        if j is NULL or segs is NULL:
            free(j)
            free(segs)
            raise MemoryError()
        for k in range(n):
            segs[k].fd = <int>fds[k]
            segs[k].dfd = -1
        j.id = job_id
        j.kind = _JOB_SYNC
        j.nseg = <int>n
        j.segs = segs
        self._push(j)

    def completed(self) -> list:
        """Collect finished jobs: ``[(job_id, status, errno), ...]`` in completion order."""
        cdef ft_io *io = self._io
        cdef ft_job *d
        with nogil:
            pthread_mutex_lock(&io.mu)
            d = io.done
            io.done = NULL
            pthread_mutex_unlock(&io.mu)
        # the done list is LIFO: reverse it into completion order
        cdef ft_job *rev = NULL
        cdef ft_job *nx
        while d is not NULL:
            nx = d.next
            d.next = rev
            rev = d
            d = nx
        out = []
        while rev is not NULL:
            out.append((rev.id, rev.status, rev.err))
            nx = rev.next
            _free_job(rev)
            self._pending -= 1
            rev = nx
        return out

    cdef void _join(self) noexcept:
        cdef ft_io *io = self._io
        cdef int k
        if self._started:
            with nogil:
                pthread_mutex_lock(&io.mu)
                io.stop = 1
                pthread_cond_signal(&io.cv)
                pthread_mutex_unlock(&io.mu)
                pthread_join(self._thread, NULL)  # the hash stage stops the write stage
            for k in range(self._nwriters):
                with nogil:
                    pthread_join(self._writers[k], NULL)
            self._nwriters = 0
            self._started = False

    def close(self) -> list:
        """Finish every queued job, stop the thread, and return the last outcomes."""
        self._closed = True
        self._join()
        return self.completed()

    def __dealloc__(self):
        cdef ft_job *j
        cdef ft_job *nx
        if self._io is NULL:
            return
        self._join()
        j = self._io.done
        while j is not NULL:
            nx = j.next
            _free_job(j)
            j = nx
        pthread_mutex_destroy(&self._io.mu)
        pthread_cond_destroy(&self._io.cv)
        pthread_cond_destroy(&self._io.cv2)
        pthread_cond_destroy(&self._io.cv3)
        free(self._io)
        self._io = NULL


cdef void _free_job(ft_job *j) noexcept:
    if j.owner is not NULL:
        PyBuffer_Release(<Py_buffer *>j.owner)
        free(j.owner)
    free(j.segs)
    free(j)


cdef inline void _enqueue(ft_job **head, ft_job **tail, ft_job *j) noexcept nogil:
    """Append ``j`` to the queue ``head``..``tail`` (the caller holds the mutex)."""
    j.next = NULL
    if tail[0] is NULL:
        head[0] = j
    else:
        tail[0].next = j
    tail[0] = j


cdef void _finish(ft_io *io, ft_job *j) noexcept nogil:
    """Hand a finished job to the owner: onto the done list, and a wake-up."""
    cdef unsigned long long one = 1
    pthread_mutex_lock(&io.mu)
    j.next = io.done
    io.done = j
    pthread_mutex_unlock(&io.mu)
    if io.notify_fd >= 0:
        c_write(io.notify_fd, &one, sizeof(one))


cdef void *_io_main(void *arg) noexcept nogil:
    """The hash stage: a bad piece is finished here, a good one (or a sync) goes on."""
    cdef ft_io *io = <ft_io *>arg  # freed only after both threads are joined
    cdef ft_job *j
    cdef long long t0
    cdef bint ok
    while True:
        pthread_mutex_lock(&io.mu)
        while io.head is NULL and not io.stop:
            pthread_cond_wait(&io.cv, &io.mu)
        j = io.head
        if j is NULL:  # stopping and drained: so is the write stage, after its queue
            io.stop2 = 1
            pthread_cond_broadcast(&io.cv2)
            pthread_mutex_unlock(&io.mu)
            break
        io.head = j.next
        if io.head is NULL:
            io.tail = NULL
        pthread_mutex_unlock(&io.mu)
        t0 = _now_ns()
        ok = j.kind != _JOB_PIECE or _hash_ok(j)
        io.hash_ns += _now_ns() - t0  # written by this thread only; read racily for stats
        if not ok:
            _finish(io, j)
            continue
        pthread_mutex_lock(&io.mu)
        _enqueue(&io.head2, &io.tail2, j)
        pthread_cond_signal(&io.cv2)
        pthread_mutex_unlock(&io.mu)
    return NULL


cdef void *_write_main(void *arg) noexcept nogil:
    """A writer: writes verified pieces; a sync runs once the writes taken before it are done."""
    cdef ft_io *io = <ft_io *>arg
    cdef ft_job *j
    cdef long long t0
    cdef unsigned char *bounce = NULL  # allocated by the first segment that needs it
    while True:
        pthread_mutex_lock(&io.mu)
        while (io.head2 is NULL or io.wbarrier) and not io.stop2:
            pthread_cond_wait(&io.cv2, &io.mu)
        while io.wbarrier:  # stopping: the sync ahead goes first
            pthread_cond_wait(&io.cv2, &io.mu)
        j = io.head2
        if j is NULL:
            pthread_mutex_unlock(&io.mu)
            break
        io.head2 = j.next
        if io.head2 is NULL:
            io.tail2 = NULL
        if j.kind == _JOB_SYNC:
            io.wbarrier = 1
            while io.writing > 0:
                pthread_cond_wait(&io.cv3, &io.mu)
            io.wbarrier = 0
            pthread_cond_broadcast(&io.cv2)
        io.writing += 1
        pthread_mutex_unlock(&io.mu)
        t0 = _now_ns()
        _write_job(j, io.lock_writes, &bounce)
        pthread_mutex_lock(&io.mu)
        io.write_ns += _now_ns() - t0
        io.writing -= 1
        pthread_cond_broadcast(&io.cv3)
        pthread_mutex_unlock(&io.mu)
        _finish(io, j)
    free(bounce)
    return NULL
