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
with the same rules (:func:`_acquire_bytes`, in ``_buffers.pxi``, which
:mod:`torrent._io` includes too): a typed memoryview allocates an
object per call, which cost more than the 16 KiB copy itself (see
``bench/test_bench_kernels.py``).

Hashing releases the GIL for inputs of :data:`_HASH_NOGIL_MIN` bytes or more, and
the batch kernels (:func:`sha1_pieces`, :func:`verify_pieces`) release it once
for the whole batch: the event loop of the worker keeps running while a piece
is hashed on another thread. SHA-1 itself lives in ``_sha1.h`` (libcrypto
loaded with ``dlopen`` at import, else SHA-NI, else portable C).

BEP 52 (v2) trees hash with SHA-256 from ``_sha256.h`` (libcrypto the same
way, else SHA-NI, else portable C), folded into roots by ``_merkle.h`` (padding
costs one hash per level, from the roots of all-zero subtrees computed at
import), which the I/O thread shares: :func:`merkle_leaves` (one leaf per
16 KiB block), :func:`merkle_root` (pairwise up to the root),
:func:`piece_layer` (each piece's subtree root) and :func:`verify_pieces_v2`
(a batch of pieces against their expected roots), each releasing the GIL once
for the whole input. The tree arithmetic and checks built on them are in
:mod:`torrent.merkle`, the expectation of each piece of a torrent in
:mod:`torrent.v2pieces`.

The native I/O thread, which hashes and writes whole piece slots on pthreads
of its own, is a module of its own: :mod:`torrent._io`.
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
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Malloc
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

cdef extern from "_sha256.h" nogil:
    void ft_sha256_setup() noexcept
    int ft_sha256_available(int backend) noexcept
    int ft_sha256_get_backend() noexcept
    int ft_sha256_set_backend(int backend) noexcept
    void ft_sha256(const unsigned char *p, size_t n, unsigned char *out) noexcept

cdef extern from "_merkle.h" nogil:
    ctypedef struct ft_merkle_acc:
        pass
    void ft_merkle_setup() noexcept
    int ft_merkle_log2(uint64_t x) noexcept
    void ft_merkle_init(ft_merkle_acc *a, int level) noexcept
    void ft_merkle_push(ft_merkle_acc *a, const unsigned char *node) noexcept
    void ft_merkle_finish(const ft_merkle_acc *a, int depth, unsigned char *root) noexcept
    void ft_merkle_root_of(const unsigned char *p, size_t n, uint64_t width,
                           unsigned char *out) noexcept
    int ft_merkle_check(const unsigned char *p, size_t n, uint64_t width,
                        const unsigned char *want) noexcept

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

# A SHA-256 digest is 32 bytes (BEP 52 leaves, nodes and roots); a leaf hashes
# one 16 KiB block of a file.
cdef enum:
    _SHA256 = 32
    _MERKLE_BLOCK = 16384
MERKLE_BLOCK = _MERKLE_BLOCK

# Bound on the height of a BEP 52 tree: 2**48 leaves of 16 KiB is 4 EiB per
# file, beyond any file; a count or level taken from a torrent or a peer beyond
# it is refused before anything is allocated or hashed.
cdef enum:
    _MAX_MERKLE_DEPTH = 48
MAX_MERKLE_DEPTH = _MAX_MERKLE_DEPTH

_SHA256_BACKEND_NAMES = ("openssl", "sha-ni", "portable")

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

include "_buffers.pxi"


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


# ------------------------------------------------------- SHA-256 and BEP 52 trees

def sha256_backend() -> str:
    """Return the SHA-256 backend in use: ``"openssl"``, ``"sha-ni"`` or ``"portable"``."""
    return _SHA256_BACKEND_NAMES[ft_sha256_get_backend()]


def sha256_backends() -> tuple:
    """Return the SHA-256 backends that loaded and passed their self-test, fastest first."""
    return tuple(name for i, name in enumerate(_SHA256_BACKEND_NAMES) if ft_sha256_available(i))


def _set_sha256_backend(str name) -> None:
    """Force a SHA-256 backend (for tests and benchmarks).

    Not thread-safe: do not switch while another thread is hashing.

    Raises:
        ValueError: ``name`` is unknown or that backend is not available here.
    """
    if name not in _SHA256_BACKEND_NAMES:
        raise ValueError(
            f"unknown SHA-256 backend {name!r}; expected one of {_SHA256_BACKEND_NAMES}"
        )
    if ft_sha256_set_backend(_SHA256_BACKEND_NAMES.index(name)) != 0:
        raise ValueError(f"SHA-256 backend {name!r} is not available on this machine")


ft_sha256_setup()
ft_merkle_setup()


cdef inline Py_ssize_t _nblocks(Py_ssize_t n) noexcept nogil:
    return n // _MERKLE_BLOCK + (1 if n % _MERKLE_BLOCK else 0)


cdef inline bint _is_pow2(Py_ssize_t x) noexcept nogil:
    return x > 0 and (x & (x - 1)) == 0


cdef void _leaves_c(const unsigned char *p, Py_ssize_t n, unsigned char *out) noexcept nogil:
    cdef Py_ssize_t off = 0
    cdef Py_ssize_t take
    while off < n:
        take = _MERKLE_BLOCK if n - off > _MERKLE_BLOCK else n - off
        ft_sha256(p + off, <size_t>take, out)
        out += _SHA256
        off += take


cdef void _root_c(const unsigned char *nodes, Py_ssize_t n, int level, int depth,
                  unsigned char *root) noexcept nogil:
    # The root `depth` levels above n nodes at height `level` (missing nodes are
    # the zero roots of their height), folded as in _merkle.h.
    cdef ft_merkle_acc acc
    cdef Py_ssize_t i
    ft_merkle_init(&acc, level)
    for i in range(n):
        ft_merkle_push(&acc, nodes + _SHA256 * i)
    ft_merkle_finish(&acc, depth, root)


cdef void _piece_layer_c(const unsigned char *p, Py_ssize_t n, Py_ssize_t piece_length,
                         unsigned char *out) noexcept nogil:
    cdef Py_ssize_t off = 0
    cdef Py_ssize_t take
    cdef uint64_t width = <uint64_t>(piece_length // _MERKLE_BLOCK)
    while off < n:
        take = piece_length if n - off > piece_length else n - off
        ft_merkle_root_of(p + off, <size_t>take, width, out)
        out += _SHA256
        off += take


cdef void _verify_v2_c(const unsigned char *p, Py_ssize_t n, Py_ssize_t piece_length,
                       const unsigned char *roots, const int64_t *lengths,
                       const int64_t *widths, unsigned char *ok) noexcept nogil:
    cdef Py_ssize_t k = 0
    cdef Py_ssize_t off = 0
    while off < n:
        ok[k] = ft_merkle_check(p + off, <size_t>lengths[k], <uint64_t>widths[k],
                                roots + _SHA256 * k)
        k += 1
        off += piece_length


cdef int _check_merkle_piece_length(Py_ssize_t piece_length) except -1:
    if (not _is_pow2(piece_length) or piece_length < _MERKLE_BLOCK
            or piece_length // _MERKLE_BLOCK > _MAX_BLOCKS):
        raise ValueError(
            f"piece_length must be a power of two from {_MERKLE_BLOCK} to "
            f"{_MERKLE_BLOCK * <Py_ssize_t>_MAX_BLOCKS} bytes, got {piece_length}"
        )
    return 0


def sha256(const unsigned char[::1] buf not None) -> bytes:
    """Return the SHA-256 digest of ``buf``."""
    cdef unsigned char out[_SHA256]
    cdef Py_ssize_t n = buf.shape[0]
    cdef const unsigned char *p = &buf[0]
    if n >= _HASH_NOGIL_MIN:
        with nogil:
            ft_sha256(p, <size_t>n, out)
    else:
        ft_sha256(p, <size_t>n, out)
    return PyBytes_FromStringAndSize(<char *>out, _SHA256)


def merkle_leaves(const unsigned char[::1] buf not None) -> bytes:
    """Hash each 16 KiB block of ``buf`` with SHA-256 (BEP 52 leaves).

    The last block may be short: it is hashed as it is.

    Returns:
        The concatenated 32-byte digests; ``b""`` for an empty ``buf``.
    """
    cdef Py_ssize_t n = buf.shape[0]
    cdef bytes result = PyBytes_FromStringAndSize(NULL, _nblocks(n) * _SHA256)
    cdef unsigned char *out = <unsigned char *>PyBytes_AS_STRING(result)
    cdef const unsigned char *p = &buf[0]
    if n >= _HASH_NOGIL_MIN:
        with nogil:
            _leaves_c(p, n, out)
    else:
        _leaves_c(p, n, out)
    return result


def merkle_root(const unsigned char[::1] leaves not None, Py_ssize_t count,
                int level=0) -> bytes:
    """Return the root of a merkle tree over ``leaves`` padded to ``count`` nodes.

    Args:
        leaves: 32-byte digests back to back, at most ``count`` of them.
        count: the width of the tree, a power of two from 1 to
            2 ** (:data:`MAX_MERKLE_DEPTH` - ``level``).
        level: the height of ``leaves`` above the 16 KiB blocks (0 for block
            hashes, log2(blocks per piece) for a piece layer): a missing node
            is the root of an all-zero subtree of that height.

    Raises:
        ValueError: ``leaves`` is not a whole number of digests, or holds more
            than ``count``; ``count`` is not a power of two or too large;
            ``level`` is out of range.
    """
    cdef Py_ssize_t nbytes = leaves.shape[0]
    cdef Py_ssize_t n = nbytes // _SHA256
    if level < 0 or level > _MAX_MERKLE_DEPTH:
        raise ValueError(f"level must be from 0 to {_MAX_MERKLE_DEPTH}, got {level}")
    if not _is_pow2(count) or ft_merkle_log2(<uint64_t>count) > _MAX_MERKLE_DEPTH - level:
        raise ValueError(
            f"count must be a power of two from 1 to 2**{_MAX_MERKLE_DEPTH - level}, got {count}"
        )
    if nbytes % _SHA256:
        raise ValueError(f"leaves holds {nbytes} bytes, not a multiple of {_SHA256}")
    if n > count:
        raise ValueError(f"leaves holds {n} digests, more than count ({count})")
    cdef unsigned char root[_SHA256]
    cdef int depth = ft_merkle_log2(<uint64_t>count)
    cdef const unsigned char *p = &leaves[0]
    if n >= _HASH_NOGIL_MIN // _SHA256:
        with nogil:
            _root_c(p, n, level, depth, root)
    else:
        _root_c(p, n, level, depth, root)
    return PyBytes_FromStringAndSize(<char *>root, _SHA256)


def piece_layer(const unsigned char[::1] buf not None, Py_ssize_t piece_length) -> bytes:
    """Return the BEP 52 piece-layer hashes of one file's data.

    Each piece's hash is the root of the merkle tree over its 16 KiB blocks,
    ``piece_length // 16384`` leaves wide; the last piece, when short, is
    padded to that width with zero hashes.

    Args:
        buf: the file's bytes (or whole pieces of it, from a piece boundary).
        piece_length: a power of two, at least 16 KiB and at most
            :data:`MAX_BLOCKS` blocks.

    Returns:
        32 bytes per piece; ``b""`` for an empty ``buf``.

    Raises:
        ValueError: ``piece_length`` is out of range.
    """
    _check_merkle_piece_length(piece_length)
    cdef Py_ssize_t n = buf.shape[0]
    cdef Py_ssize_t count = _npieces(n, piece_length)
    cdef bytes result = PyBytes_FromStringAndSize(NULL, count * _SHA256)
    cdef unsigned char *out = <unsigned char *>PyBytes_AS_STRING(result)
    cdef const unsigned char *p = &buf[0]
    if n >= _HASH_NOGIL_MIN:
        with nogil:
            _piece_layer_c(p, n, piece_length, out)
    else:
        _piece_layer_c(p, n, piece_length, out)
    return result


def verify_pieces_v2(const unsigned char[::1] buf not None, Py_ssize_t piece_length,
                     const unsigned char[::1] roots not None,
                     const int64_t[::1] lengths not None,
                     const int64_t[::1] widths not None) -> bytes:
    """Check consecutive pieces of ``buf`` against their BEP 52 (v2) roots.

    Piece ``k`` starts at ``k * piece_length``; its first ``lengths[k]`` bytes
    are its file's (the rest is pad, not hashed), hashed as 16 KiB leaves
    padded with zero hashes to ``widths[k]`` leaves (see
    :mod:`torrent.v2pieces`).

    Args:
        buf: the pieces, back to back; the last may be short.
        piece_length: a power of two, at least 16 KiB and at most
            :data:`MAX_BLOCKS` blocks.
        roots: the expected 32-byte root of each piece, back to back.
        lengths: the file bytes of each piece (int64: ``array('q')``), 1 to
            the piece's size in ``buf``.
        widths: each piece's tree width in leaves (int64), a power of two
            from the blocks of ``lengths[k]`` to ``piece_length // 16384``.

    Returns:
        One byte per piece: 1 if its root matches, 0 if not.

    Raises:
        ValueError: ``piece_length`` is out of range; ``roots``, ``lengths`` or
            ``widths`` does not hold one entry per piece of ``buf``; a length or
            width is out of range for its piece.
    """
    _check_merkle_piece_length(piece_length)
    cdef Py_ssize_t n = buf.shape[0]
    cdef Py_ssize_t count = _npieces(n, piece_length)
    cdef Py_ssize_t k, size
    cdef int64_t ln, w
    if roots.shape[0] != count * _SHA256:
        raise ValueError(f"roots holds {roots.shape[0]} bytes, expected {_SHA256} per piece "
                         f"for {count} pieces ({count * _SHA256})")
    if lengths.shape[0] != count or widths.shape[0] != count:
        raise ValueError(f"lengths and widths hold {lengths.shape[0]} and {widths.shape[0]} "
                         f"items, expected one per piece ({count})")
    for k in range(count):
        size = piece_length if n - k * piece_length > piece_length else n - k * piece_length
        ln = lengths[k]
        w = widths[k]
        if ln < 1 or ln > size:
            raise ValueError(f"piece {k} holds {size} bytes; its file length {ln} is not "
                             f"from 1 to {size}")
        if not _is_pow2(<Py_ssize_t>w) or w < _nblocks(<Py_ssize_t>ln) \
                or w > piece_length // _MERKLE_BLOCK:
            raise ValueError(f"piece {k}: width {w} is not a power of two from "
                             f"{_nblocks(<Py_ssize_t>ln)} to {piece_length // _MERKLE_BLOCK}")
    cdef bytes result = PyBytes_FromStringAndSize(NULL, count)
    cdef unsigned char *ok = <unsigned char *>PyBytes_AS_STRING(result)
    cdef const unsigned char *p = &buf[0]
    cdef const unsigned char *r = &roots[0]
    cdef const int64_t *lp = &lengths[0]
    cdef const int64_t *wp = &widths[0]
    if n >= _HASH_NOGIL_MIN:
        with nogil:
            _verify_v2_c(p, n, piece_length, r, lp, wp, ok)
    else:
        _verify_v2_c(p, n, piece_length, r, lp, wp, ok)
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
