# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""The native I/O thread of fasttorrent: verify and write piece slots without the GIL.

Theory of operation
-------------------
A worker's event loop holds the GIL nearly all the time.  A Python I/O thread
that hashes and writes pieces must re-take the GIL several times per piece,
and each time may wait out the loop's switch interval (5 ms): measured here,
hash + pwrite of 1 MiB pieces fell from ~900 MB/s to 75 MB/s next to a busy
Python thread.  So the I/O thread is a plain pthread that never touches the
GIL or a Python object: the loop submits jobs (a slot's address, its expected
hashes, and where its bytes go on disk), the thread verifies and pwrite()s
them, appends the outcome to a done list and wakes the loop through an
eventfd; the loop collects the outcomes with completed().  A submitted slot's
buffer stays acquired (so it can be neither released nor resized) until its
outcome is collected.

:class:`IOThread` has no pure-Python twin: it exists only to run without the
GIL.  SHA-1 comes from ``_sha1.h``, SHA-256 and the merkle roots from
``_sha256.h`` and ``_merkle.h``, compiled into this module as into
:mod:`torrent._fast`; the headers' backend choice is per module, so
``torrent._fast._set_backend`` (a test hook) does not affect this one.
Bounds checking is compiled off for the whole module (see the directives
above), as in :mod:`torrent._fast`: the typed memoryviews here, the digest
and the root given to :meth:`IOThread.submit_piece`, have their lengths
checked before they are read.

A piece is checked by every hash it is given: its SHA-1 (BEP 3: a v1
torrent's, and a hybrid's), and its BEP 52 merkle root over the file bytes
at the start of the slot (a v2-only torrent's, and a hybrid's: see
:mod:`torrent.v2pieces`); it is written only if all of them match, so a
hybrid piece whose two hashes disagree is bad data.
"""

from libc.string cimport memcmp, memcpy, memset
import os

cdef extern from "_sha1.h" nogil:
    void ft_sha1_setup() noexcept
    void ft_sha1(const unsigned char *p, size_t n, unsigned char *out) noexcept

cdef extern from "_sha256.h" nogil:
    void ft_sha256_setup() noexcept

cdef extern from "_merkle.h" nogil:
    void ft_merkle_setup() noexcept
    int ft_merkle_check(const unsigned char *p, size_t n, unsigned long long width,
                        const unsigned char *want) noexcept

include "_buffers.pxi"

__all__ = [
    "DIRECT_ALIGN",
    "JOB_BAD",
    "JOB_IO_ERROR",
    "JOB_OK",
    "MAX_SEGMENTS",
    "MAX_V2_WIDTH",
    "MAX_WRITERS",
    "IOThread",
    "syncfs",
]

# A SHA-1 digest is 20 bytes (BEP 3); the same constant as torrent._fast's.
# A BEP 52 root is a SHA-256 digest, 32 bytes, over 16 KiB leaf blocks.
cdef enum:
    _DIGEST = 20
    _ROOT = 32
    _MERKLE_BLOCK = 16384

# Bound on a v2 piece's tree width in leaves: 2**20 blocks of 16 KiB, a 16 GiB
# piece (torrent._fast.MAX_BLOCKS, the bound on a slot's blocks).
cdef enum:
    _MAX_V2_WIDTH = 1 << 20
MAX_V2_WIDTH = _MAX_V2_WIDTH

# Which checks a piece job carries (ft_job.checks).
cdef enum:
    _CHECK_SHA1 = 1
    _CHECK_V2 = 2

ft_sha1_setup()
ft_sha256_setup()
ft_merkle_setup()


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
    int c_syncfs "syncfs" (int fd)

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t c_pwritev "pwritev" (int fd, const iovec *iov, int iovcnt, long long offset)

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
    int checks           # _CHECK_SHA1 | _CHECK_V2: every one given must pass
    unsigned char digest[20]
    unsigned char root[32]
    long long v2_len     # the file bytes at the start of the slot the root covers
    long long v2_width   # leaves the root's tree is padded to
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
    """Stage 1 of a piece job: does the slot match every hash given (its SHA-1, its
    v2 root)?  (Sets status 0 if not.)"""
    cdef unsigned char d[_DIGEST]
    if j.checks & _CHECK_SHA1:
        ft_sha1(j.buf, <size_t>j.length, d)
        if memcmp(d, j.digest, _DIGEST) != 0:
            j.status = 0
            return False
    if j.checks & _CHECK_V2:
        if not ft_merkle_check(j.buf, <size_t>j.v2_len, <unsigned long long>j.v2_width, j.root):
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
            # dfd 1: the whole filesystem of that descriptor (see submit_sync)
            if (c_syncfs(j.segs[k].fd) if j.segs[k].dfd == 1
                    else c_fdatasync(j.segs[k].fd)) != 0:
                j.status = 2
                j.err = errno
                return
        j.status = 1


ctypedef struct ft_io:
    # Three locks, one per hand-over, so that the loop, the hash stage and the
    # writers wait on each other only where one hands the other a job:
    pthread_mutex_t mu    # the hash stage's queue (head, tail, stop; cv)
    pthread_mutex_t mu2   # the write stage's (head2, tail2, stop2, writing, wbarrier,
    #                       inflight; cv2, cv3)
    pthread_mutex_t mu3   # the done list (done)
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
    ft_job *inflight[_MAX_WRITERS]  # the piece job each writer is writing, or NULL
    int file_writers      # writers at most at once on one file (see _take_write)


ctypedef struct ft_writer:
    ft_io *io
    int index             # its entry in io.inflight


#: Queued piece jobs a writer looks past for one whose files no other writer is
#: writing (see _take_write).
cdef enum:
    _WRITE_SCAN = 64


cdef ft_job *_piece_job(long long job_id, object buf, Py_ssize_t length, digest,
                        list segments, v2) except NULL:
    """A piece job (see :meth:`IOThread.submit_piece`), its buffer acquired."""
    cdef Py_ssize_t nseg = len(segments)
    if nseg > _MAX_SEGMENTS:
        raise ValueError(f"a piece spans {nseg} files; at most {_MAX_SEGMENTS}")
    cdef const unsigned char[::1] dg
    cdef const unsigned char[::1] rt
    cdef long long v2_len = 0, v2_width = 0
    if digest is None and v2 is None:
        raise ValueError("a piece needs a SHA-1 digest, a v2 root, or both")
    if digest is not None:
        dg = digest
        if dg.shape[0] != _DIGEST:
            raise ValueError("digest must be 20 bytes")
    if v2 is not None:
        root, v2_len, v2_width = v2
        rt = root
        if rt.shape[0] != _ROOT:
            raise ValueError(f"a v2 root must be {_ROOT} bytes")
        if v2_len < 1 or v2_len > length:
            raise ValueError(f"v2 file bytes {v2_len} not from 1 to the piece's {length}")
        if (v2_width < 1 or v2_width > _MAX_V2_WIDTH or v2_width & (v2_width - 1)
                or v2_width * _MERKLE_BLOCK < v2_len):
            raise ValueError(f"v2 width {v2_width} is not a power of two from the"
                             f" {(v2_len + _MERKLE_BLOCK - 1) // _MERKLE_BLOCK} blocks of"
                             f" its bytes to {_MAX_V2_WIDTH}")
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
    if digest is not None:
        j.checks |= _CHECK_SHA1
        memcpy(j.digest, &dg[0], _DIGEST)
    if v2 is not None:
        j.checks |= _CHECK_V2
        memcpy(j.root, &rt[0], _ROOT)
        j.v2_len = v2_len
        j.v2_width = v2_width
    j.nseg = <int>nseg
    j.segs = segs
    j.owner = view
    return j


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
        file_writers: writers at most at once on one file (default: no limit).
    """

    cdef ft_io *_io
    cdef pthread_t _thread
    cdef pthread_t _writers[_MAX_WRITERS]
    cdef ft_writer _wargs[_MAX_WRITERS]  # each writer's argument (lives as long as it)
    cdef int _nwriters
    cdef bint _started
    cdef bint _closed
    cdef Py_ssize_t _pending

    def __cinit__(self, int notify_fd, bint lock_writes=False, int writers=_WRITERS,
                  int file_writers=_MAX_WRITERS):
        if writers < 1 or writers > _MAX_WRITERS:
            raise ValueError(f"writers must be in 1..{_MAX_WRITERS}, got {writers}")
        if file_writers < 1:
            raise ValueError(f"file_writers must be at least 1, got {file_writers}")
        self._io = <ft_io *>calloc(1, sizeof(ft_io))
        if self._io is NULL:
            raise MemoryError()
        self._io.notify_fd = notify_fd
        self._io.lock_writes = lock_writes
        self._io.file_writers = file_writers
        pthread_mutex_init(&self._io.mu, NULL)
        pthread_mutex_init(&self._io.mu2, NULL)
        pthread_mutex_init(&self._io.mu3, NULL)
        pthread_cond_init(&self._io.cv, NULL)
        pthread_cond_init(&self._io.cv2, NULL)
        pthread_cond_init(&self._io.cv3, NULL)
        cdef int k
        for k in range(writers):
            self._wargs[k].io = self._io
            self._wargs[k].index = k
            if pthread_create(&self._writers[k], NULL, _write_main,
                              <void *>&self._wargs[k]) != 0:
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
            pthread_mutex_lock(&self._io.mu2)
            self._io.stop2 = 1
            pthread_cond_broadcast(&self._io.cv2)
            pthread_mutex_unlock(&self._io.mu2)
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
                     list segments, v2=None) -> None:
        """Verify ``buf[:length]`` against its hashes; if all match, write its segments.

        Args:
            job_id: reported back by :meth:`completed`.
            buf: the slot (kept acquired until the outcome is collected).
            length: the piece's size.
            digest: its expected 20-byte SHA-1 (a v1 or hybrid torrent's), or
                None (a v2-only torrent's piece: ``v2`` alone).
            segments: ``(fd, file_offset, buf_offset, length)`` tuples, inside
                ``buf[:length]``; pad files are simply left out.  A fifth item,
                the same file opened with ``O_DIRECT`` (or -1), lets the
                segment's whole pages bypass the page cache.
            v2: ``(root, file_bytes, width)``, the piece's BEP 52 expectation
                (:meth:`torrent.v2pieces.V2Pieces.expected`): the 32-byte merkle
                root of ``buf[:file_bytes]`` as 16 KiB leaves padded with zero
                hashes to ``width`` leaves; None (the default) for none.  Given
                with ``digest`` (a hybrid), both must match.

        Raises:
            ValueError: neither ``digest`` nor ``v2`` is given, a hash has the
                wrong length, ``v2``'s bytes are not 1 to ``length`` or its width
                not a power of two from their blocks to :data:`MAX_V2_WIDTH`, a
                segment is outside the piece, or the thread is closed.
        """
        if self._closed:
            raise ValueError("the I/O thread is closed")
        self._push(_piece_job(job_id, buf, length, digest, segments, v2))

    def run_piece(self, long long job_id, object buf, Py_ssize_t length, digest,
                  list segments, v2=None) -> tuple:
        """:meth:`submit_piece`'s job, done now in the calling thread (the GIL released):
        hashed, and if good written; returns ``(status, errno)`` as :meth:`completed`
        reports a job. For the one piece whose latency matters more than the caller's
        time (a run's first): no hand-over to the hash and write stages, no wake-up."""
        if self._closed:
            raise ValueError("the I/O thread is closed")
        cdef ft_job *j = _piece_job(job_id, buf, length, digest, segments, v2)
        cdef unsigned char *bounce = NULL
        cdef int lock = self._io.lock_writes
        with nogil:
            if _hash_ok(j):
                _write_job(j, lock, &bounce)
            else:
                j.status = 0
        free(bounce)
        out = (j.status, j.err)
        _free_job(j)
        return out

    def submit_sync(self, long long job_id, fds, whole_fs=()) -> None:
        """``fdatasync`` each descriptor of ``fds``, then ``syncfs`` each of ``whole_fs``
        (every file of its filesystem), after every job submitted before this one."""
        if self._closed:
            raise ValueError("the I/O thread is closed")
        fds = list(fds)
        cdef Py_ssize_t plain = len(fds)
        fds += list(whole_fs)
        cdef Py_ssize_t n = len(fds), k
        cdef ft_job *j = <ft_job *>calloc(1, sizeof(ft_job))
        cdef ft_seg *segs = <ft_seg *>calloc(max(n, 1), sizeof(ft_seg))
        if j is NULL or segs is NULL:
            free(j)
            free(segs)
            raise MemoryError()
        for k in range(n):
            segs[k].fd = <int>fds[k]
            segs[k].dfd = -1 if k < plain else 1
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
            pthread_mutex_lock(&io.mu3)
            d = io.done
            io.done = NULL
            pthread_mutex_unlock(&io.mu3)
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
        pthread_mutex_destroy(&self._io.mu2)
        pthread_mutex_destroy(&self._io.mu3)
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
    """Hand a finished job to the owner: onto the done list, and a wake-up if the list
    was empty (else the wake-up of its first job is still to be answered: the owner
    reads the eventfd before it takes the list, and takes the whole list)."""
    cdef unsigned long long one = 1
    cdef bint first
    pthread_mutex_lock(&io.mu3)
    first = io.done is NULL
    j.next = io.done
    io.done = j
    pthread_mutex_unlock(&io.mu3)
    if first and io.notify_fd >= 0:
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
            pthread_mutex_unlock(&io.mu)
            pthread_mutex_lock(&io.mu2)
            io.stop2 = 1
            pthread_cond_broadcast(&io.cv2)
            pthread_mutex_unlock(&io.mu2)
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
        pthread_mutex_lock(&io.mu2)
        _enqueue(&io.head2, &io.tail2, j)
        pthread_cond_signal(&io.cv2)
        pthread_mutex_unlock(&io.mu2)
    return NULL


cdef bint _shares_a_file(ft_job *a, ft_job *b) noexcept nogil:
    cdef int x, y
    for x in range(a.nseg):
        for y in range(b.nseg):
            if a.segs[x].fd == b.segs[y].fd:
                return True
    return False


cdef ft_job *_take_write(ft_io *io, int me) noexcept nogil:
    """The next job for writer ``me`` (``mu2`` held), unlinked from the queue, or NULL.

    A piece job one of whose files ``io.file_writers`` other writers are writing
    now waits, and a later one goes first (at most :data:`_WRITE_SCAN` looked at).
    Small writes to one file from several writers mostly wait on its locks in
    the kernel (the inode's, and the extent tree's as each write's unwritten
    extents are converted), spinning there: with 256 KiB pieces one writer per
    file was faster and cheaper; with 1 MiB pieces of one file four at once were
    (the owner sets the number: :meth:`IOThread.__cinit__`). A sync job is taken
    only at the head: no job queued before it is left behind.
    """
    cdef ft_job *prev = NULL
    cdef ft_job *j = io.head2
    cdef int k, sharing, seen = 0
    while j is not NULL and seen < _WRITE_SCAN:
        if j.kind == _JOB_SYNC:
            if prev is not NULL:
                return NULL  # the sync waits for the jobs ahead of it
            break
        sharing = 0
        for k in range(_MAX_WRITERS):
            if k != me and io.inflight[k] is not NULL and _shares_a_file(io.inflight[k], j):
                sharing += 1
        if sharing < io.file_writers:
            break
        prev = j
        j = j.next
        seen += 1
    if j is NULL or seen >= _WRITE_SCAN:
        return NULL
    return _unlink(io, prev, j)


cdef inline ft_job *_unlink(ft_io *io, ft_job *prev, ft_job *j) noexcept nogil:
    """Take ``j`` (after ``prev``, or at the head when NULL) out of the write queue
    (``mu2`` held); returns it."""
    if prev is NULL:
        io.head2 = j.next
    else:
        prev.next = j.next
    if io.tail2 == j:
        io.tail2 = prev
    j.next = NULL
    return j


# Adjacent pieces of one file written as one (see _write_chain): at most this many.
cdef enum:
    _CHAIN = 8


cdef bint _chainable(ft_job *j) noexcept nogil:
    """A piece that may join a chain: one segment, with an O_DIRECT descriptor, its
    memory aligned like its file offset (a slot's view is), at least two pages long."""
    cdef ft_seg *sg
    if j.kind != _JOB_PIECE or j.nseg != 1:
        return False
    sg = &j.segs[0]
    return (sg.dfd >= 0 and sg.length >= 2 * _DIRECT_ALIGN and
            ((<size_t>(j.buf + sg.buf_off)) - <size_t>sg.file_off) & (_DIRECT_ALIGN - 1) == 0)


cdef ft_job *_take_adjacent(ft_io *io, ft_job *prev) noexcept nogil:
    """The queued piece that continues ``prev`` in its file, unlinked (``mu2`` held), or
    NULL. The scan stops at a sync job: nothing queued behind one is taken ahead of it."""
    cdef ft_job *before = NULL
    cdef ft_job *j = io.head2
    cdef ft_seg *a = &prev.segs[0]
    cdef int seen = 0
    while j is not NULL and seen < _WRITE_SCAN:
        if j.kind == _JOB_SYNC:
            return NULL
        if (_chainable(j) and j.segs[0].fd == a.fd and j.segs[0].dfd == a.dfd
                and j.segs[0].file_off == a.file_off + a.length):
            return _unlink(io, before, j)
        before = j
        j = j.next
        seen += 1
    return NULL


cdef void _write_each(ft_job **chain, int n, int lock_writes,
                      unsigned char **bounce) noexcept nogil:
    """A chain's pieces written one by one (where it cannot go out as one)."""
    cdef int i
    for i in range(n):
        _write_job(chain[i], lock_writes, bounce)


cdef void _write_chain(ft_job **chain, int n, int lock_writes,
                       unsigned char **bounce) noexcept nogil:
    """Write ``n`` verified pieces that follow one another in one file as one: the
    partial page at the start and at the end through the page cache, every page
    between them with one ``pwritev`` through the O_DIRECT descriptor -- each piece's
    whole pages from its slot, and each page two pieces share assembled in the
    writer's bounce buffer. A piece alone costs three writes (its two partial pages
    and its middle) and a device round trip; a chain of ``n``, three and one.
    Every piece of the chain gets the outcome; a descriptor that refuses
    O_DIRECT (EINVAL) gets each piece written on its own instead. The shared pages
    take at most ``_CHAIN - 1`` pages of the bounce buffer (``_BOUNCE``), and each
    piece is at least two pages long (``_chainable``), so no page is shared by
    three of them."""
    cdef iovec iov[2 * _CHAIN]
    cdef int niov = 0, i, k, e = 0
    cdef ft_seg *sg
    cdef ft_seg *first = &chain[0].segs[0]
    cdef ft_seg *last = &chain[n - 1].segs[0]
    cdef const unsigned char *p
    cdef long long o, ln, start, stop, fp, lp, bp, off, head, tail, a, b
    cdef ssize_t w
    cdef unsigned char *page
    if bounce[0] is NULL and posix_memalign(<void **>bounce, _DIRECT_ALIGN, _BOUNCE) != 0:
        bounce[0] = NULL
        _write_each(chain, n, lock_writes, bounce)
        return
    start = first.file_off
    stop = last.file_off + last.length
    head = (-start) & (_DIRECT_ALIGN - 1)
    tail = stop & (_DIRECT_ALIGN - 1)
    a = start + head
    b = stop - tail
    for i in range(n):
        sg = &chain[i].segs[0]
        p = chain[i].buf + sg.buf_off
        o = sg.file_off
        ln = sg.length
        fp = max((o + _DIRECT_ALIGN - 1) & ~(<long long>_DIRECT_ALIGN - 1), a)
        lp = min((o + ln) & ~(<long long>_DIRECT_ALIGN - 1), b)
        if fp < lp:
            iov[niov].iov_base = <void *>(p + (fp - o))
            iov[niov].iov_len = <size_t>(lp - fp)
            niov += 1
        if i < n - 1 and (o + ln) & (_DIRECT_ALIGN - 1):
            # the page this piece shares with the next: its end, then the next's start
            bp = (o + ln) & ~(<long long>_DIRECT_ALIGN - 1)
            page = bounce[0] + i * _DIRECT_ALIGN
            memcpy(page, p + (bp - o), <size_t>(o + ln - bp))
            memcpy(page + (o + ln - bp), chain[i + 1].buf + chain[i + 1].segs[0].buf_off,
                   <size_t>(bp + _DIRECT_ALIGN - o - ln))
            iov[niov].iov_base = page
            iov[niov].iov_len = _DIRECT_ALIGN
            niov += 1
    if lock_writes:
        _file_lock(first.fd, F_WRLCK)
    if head:
        e = _write_all(first.fd, chain[0].buf + first.buf_off, head, start)
    k = 0
    off = a
    while not e and k < niov:
        w = c_pwritev(first.dfd, &iov[k], niov - k, off)
        if w < 0:
            if errno == EINTR:
                continue
            e = errno
            break
        if w == 0:
            e = ENOSPC
            break
        off += w
        while k < niov and w >= <ssize_t>iov[k].iov_len:
            w -= iov[k].iov_len
            k += 1
        if w:  # a short write, inside vector k
            iov[k].iov_base = <void *>(<unsigned char *>iov[k].iov_base + w)
            iov[k].iov_len -= <size_t>w
    if not e and tail:
        e = _write_all(last.fd, chain[n - 1].buf + last.buf_off + (b - last.file_off),
                       tail, b)
    if lock_writes:
        _file_lock(first.fd, F_UNLCK)
    if e == EINVAL and off == a:
        # no O_DIRECT here after all (nothing went through it): each on its own
        _write_each(chain, n, lock_writes, bounce)
        return
    # a failure midway (a full disk): the pieces written whole before it are written
    # (each piece but the last is whole once the page it ends in is; the last once
    # the chain's end is), so that what is on disk is reported and recorded. A
    # failed first write leaves ``off`` at ``a``, short of every piece's end.
    for i in range(n):
        sg = &chain[i].segs[0]
        if e == 0 or (i < n - 1 and off >= (
                (sg.file_off + sg.length + _DIRECT_ALIGN - 1) & ~(<long long>_DIRECT_ALIGN - 1))):
            chain[i].status = 1
            chain[i].err = 0
        else:
            chain[i].status = 2
            chain[i].err = e


cdef void *_write_main(void *arg) noexcept nogil:
    """A writer: writes verified pieces; a sync runs once the writes taken before it are done."""
    cdef ft_writer *w = <ft_writer *>arg
    cdef ft_io *io = w.io
    cdef int me = w.index
    cdef ft_job *j
    cdef long long t0
    cdef unsigned char *bounce = NULL  # allocated by the first segment that needs it
    cdef ft_job *chain[_CHAIN]
    cdef int n, k
    while True:
        pthread_mutex_lock(&io.mu2)
        while True:
            while io.wbarrier:  # a sync ahead waits for the writes before it
                pthread_cond_wait(&io.cv2, &io.mu2)
            j = _take_write(io, me)
            if j is not NULL or (io.stop2 and io.head2 is NULL):
                break
            pthread_cond_wait(&io.cv2, &io.mu2)
        if j is NULL:
            # stopping, and the queue is drained: wake every writer still waiting, so
            # that each ends too. One that passed over the last jobs (their files were
            # being written) went back to sleep after the hash stage's wake-up, and the
            # writer that then took them sends no other (the queue was empty after it)
            pthread_cond_broadcast(&io.cv2)
            pthread_mutex_unlock(&io.mu2)
            break
        if io.head2 is not NULL:
            # more queued: wake one more writer (it passes the word on in turn, or, if
            # what is left waits for files being written, sleeps: their writers take it)
            pthread_cond_signal(&io.cv2)
        chain[0] = j
        n = 1
        if j.kind == _JOB_SYNC:
            io.wbarrier = 1
            while io.writing > 0:
                pthread_cond_wait(&io.cv3, &io.mu2)
            io.wbarrier = 0
            pthread_cond_broadcast(&io.cv2)
        else:
            io.inflight[me] = j
            if io.file_writers == 1 and _chainable(j):
                # the pieces queued that continue it in its file go with it (the
                # file is this writer's alone: no other takes a piece of it meanwhile)
                while n < _CHAIN:
                    chain[n] = _take_adjacent(io, chain[n - 1])
                    if chain[n] is NULL:
                        break
                    n += 1
        io.writing += 1
        pthread_mutex_unlock(&io.mu2)
        t0 = _now_ns()
        if n > 1:
            _write_chain(chain, n, io.lock_writes, &bounce)
        else:
            _write_job(j, io.lock_writes, &bounce)
        pthread_mutex_lock(&io.mu2)
        io.write_ns += _now_ns() - t0
        io.writing -= 1
        io.inflight[me] = NULL
        if io.wbarrier:
            pthread_cond_broadcast(&io.cv3)  # a sync waits for the writes before it
        # (a job that waited for this one's files: this writer takes it, next round)
        pthread_mutex_unlock(&io.mu2)
        for k in range(n):
            _finish(io, chain[k])
    free(bounce)
    return NULL


def syncfs(int fd) -> None:
    """``syncfs(2)``: write out every dirty file of ``fd``'s filesystem and wait
    (``os`` has none).  Raises OSError."""
    cdef int r, e = 0
    with nogil:
        r = c_syncfs(fd)
        if r != 0:
            e = errno
    if r != 0:
        raise OSError(e, os.strerror(e))
