"""The shared-memory arena of piece slots.

Theory of operation
-------------------
The coordinator creates one anonymous shared-memory file
(``memfd_create``) holding ``workers * slots_per_worker`` piece slots,
reserves its pages and maps it.  Each worker inherits the descriptor (at
the same number: :func:`torrent.launch.start_child` passes it), maps it and
closes its copy of the descriptor; it then uses only its own run of slots,
so no two processes ever write one slot and no locking is needed.  A
received block is copied once, by the native core, from a connection's
receive buffer into its piece's slot; the full slot is hashed in place and
written to disk from there.

Lifecycle rules:

- The segment has no name: nothing appears in ``/dev/shm``, nothing is
  unlinked, nothing can leak.  The kernel frees it when the last descriptor
  and the last mapping are gone, that is when the last process of the run
  exits, however it ends (normal exit, Ctrl-C, a SIGKILL of the whole
  process group, the OOM killer).  A named POSIX segment outlived a SIGKILL
  of the whole group: the resource tracker that would have unlinked it died
  with it.
- ``close()`` releases every slot view handed out, then unmaps and closes
  the descriptor.  A view derived from a slot and still held elsewhere keeps
  the mapping alive until it goes (at the latest, with the process).
- Slots start on a :data:`SLOT_ALIGN` boundary (the mapping starts on a page
  and the slot stride is rounded up): the I/O thread writes whole pages with
  ``O_DIRECT`` straight from a slot.

Sizing: memfd pages are shared memory ("Shmem" in ``/proc/meminfo``) charged
to the memory cgroup, but they do not live in ``/dev/shm`` and its size
limit does not apply to them (the kernel's internal tmpfs has none; a
container's 64 MiB ``/dev/shm`` no longer matters).  What bounds the arena is
memory: :func:`plan_slots` takes at most :data:`MEMORY_SHARE` of
:func:`torrent.sysinfo.available_memory` (``MemAvailable``, and the headroom
under the cgroup's limit).  :meth:`Arena.create` then reserves every page
with ``posix_fallocate``, so a shortage is a clear
:class:`~torrent.errors.ResourceExhausted` at start-up instead of a SIGBUS,
or an OOM kill, on first touch in the middle of a download.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading

from ._io import DIRECT_ALIGN
from .errors import ResourceExhausted
from .sysinfo import available_memory

__all__ = ["ARENA_BYTES_PER_WORKER", "DEFAULT_ARENA_BYTES", "MAX_SLOTS", "MAX_SLOT_BYTES",
           "MEMORY_SHARE", "MIN_SLOTS", "SLOT_ALIGN", "Arena", "arena_free_bytes", "plan_slots",
           "run_arena_bytes", "slot_stride"]

#: Default arena size.  At 1 GB/s a 1 MiB piece spends about 1 ms in flight per
#: peer; 64 slots per worker cover a deep request pipeline to several peers
#: with room for pieces waiting on the hash/write thread.
DEFAULT_ARENA_BYTES = 256 << 20
#: ... and at least this much per worker: a slot is held from a piece's first
#: block to its write (~20 ms at a worker's ~800 MB/s), so a worker needs
#: ~16 MiB in flight; 256 MiB split 64 ways (4 MiB each) capped a 64-core run
#: at ~256 MiB / 20 ms = 12.8 GB/s whatever the cores (bench/README.md,
#: "Scaling past two cores").  Up to 16 workers this changes nothing.
ARENA_BYTES_PER_WORKER = 16 << 20
#: Slots per worker: at least two (one filling while one is hashed).  Up to
#: BASE_SLOTS whatever the piece size (64 slots of 1 MiB: more in-flight data
#: only adds memory, not speed); small pieces get more, up to MAX_SLOT_BYTES
#: (the run's, split between its workers, at least ARENA_BYTES_PER_WORKER each)
#: and MAX_SLOTS, so a run keeps as many bytes in flight as with 1 MiB pieces
#: (64 slots of 256 KiB were 16 MiB: measured, all of them queued for I/O while
#: the peers idled). Two workers of 256 KiB pieces had 252 slots each, all of
#: them used, zeroed and mapped: 126 each keep the rate (537.0 against 532.6
#: MB/s, 7 interleaved runs of 1 GiB in 200 files) with 63 MiB less memory.
MIN_SLOTS = 2
BASE_SLOTS = 64
MAX_SLOTS = 256
MAX_SLOT_BYTES = 64 << 20
#: Share of the available memory the arena may take; the page cache and other
#: programs need the rest.
MEMORY_SHARE = 0.5
#: Every slot starts at a multiple of this: the O_DIRECT alignment.
SLOT_ALIGN = DIRECT_ALIGN
#: The segment's name in /proc/PID/maps and /proc/PID/fd ("/memfd:NAME (deleted)").
MEMFD_NAME = "fasttorrent-arena"


def slot_stride(slot_size: int) -> int:
    """Distance between two slots: ``slot_size`` rounded up to :data:`SLOT_ALIGN`."""
    return -(-slot_size // SLOT_ALIGN) * SLOT_ALIGN


def arena_free_bytes() -> tuple[int, str] | None:
    """Memory the arena may come from, and what bounds it; None when unknown.

    See :func:`torrent.sysinfo.available_memory`.
    """
    return available_memory()


def plan_slots(slot_size: int, workers: int, arena_bytes: int | None = None) -> int:
    """Slots per worker that fit the budget and :data:`MEMORY_SHARE` of the available memory.

    Args:
        slot_size: bytes of one slot (a piece, plus any slack).
        workers: worker processes, each getting the same number of slots.
        arena_bytes: the budget (default: :data:`DEFAULT_ARENA_BYTES`, or
            :data:`ARENA_BYTES_PER_WORKER` per worker when that is more).

    Returns:
        Slots per worker, between :data:`MIN_SLOTS` and :data:`MAX_SLOTS`.

    Raises:
        ResourceExhausted: not even :data:`MIN_SLOTS` per worker fit in memory.
    """
    stride = slot_stride(slot_size)
    budget = arena_bytes if arena_bytes is not None else max(
        DEFAULT_ARENA_BYTES, workers * ARENA_BYTES_PER_WORKER)
    avail = arena_free_bytes()
    # Memory unknown (no /proc): the budget alone; the reservation still checks.
    free = avail[0] if avail is not None else budget
    usable = budget if avail is None else min(budget, int(free * MEMORY_SHARE))
    # MAX_SLOT_BYTES is the run's, shared by its workers (at least
    # ARENA_BYTES_PER_WORKER each): what must be in flight follows the run's rate
    # and its disk, not the number of processes it is split between
    cap = min(MAX_SLOTS, max(BASE_SLOTS, max(MAX_SLOT_BYTES // workers,
                                             ARENA_BYTES_PER_WORKER) // stride))
    per = min(cap, usable // (stride * workers))
    # A small budget or a tight machine still gets the minimum as long as it fits.
    need = MIN_SLOTS * stride * workers
    if per < MIN_SLOTS and need <= free:
        per = MIN_SLOTS
    if per < MIN_SLOTS:
        what = avail[1] if avail is not None else "memory"
        raise ResourceExhausted(
            f"shared memory: {free >> 20} MiB free ({what}) cannot hold this torrent's "
            f"pieces: {workers} worker(s) x {MIN_SLOTS} slots of one piece "
            f"({slot_size >> 10} KiB) need {need >> 20} MiB (use fewer --workers or free "
            "some memory)")
    return int(per)


def run_arena_bytes(arena_bytes: int | None, workers: int) -> int:
    """The arena of a run whose torrents are not known yet (a batch, the daemon, a
    magnet before its metadata): ``arena_bytes``, else the default budget for
    ``workers`` processes, within :data:`MEMORY_SHARE` of the available memory.
    Each torrent plans its slots in its window of it (:func:`plan_slots`)."""
    budget = arena_bytes if arena_bytes is not None else max(
        DEFAULT_ARENA_BYTES, workers * ARENA_BYTES_PER_WORKER)
    avail = arena_free_bytes()
    if avail is not None:
        budget = min(budget, int(avail[0] * MEMORY_SHARE))
    return max(budget, SLOT_ALIGN)


def _reserve_failed(size: int, e: OSError) -> str:
    return f"shared memory: cannot reserve {size >> 20} MiB: {e.strerror}"


class Arena:
    """An anonymous shared-memory segment of equal, aligned piece slots."""

    def __init__(self, fd: int | None, mm: mmap.mmap, slot_size: int, nslots: int,
                 owner: bool) -> None:
        self._fd = fd
        self._mm: mmap.mmap | None = mm
        self._base: memoryview | None = memoryview(mm)
        self.slot_size = slot_size
        self.stride = slot_stride(slot_size)
        self.nslots = nslots
        self.owner = owner
        self._views: list[memoryview] = []
        self._reserving: list[threading.Thread] = []  # one per range being reserved
        self._reserve_error: str | None = None

    @property
    def fd(self) -> int:
        """The segment's descriptor, to pass to the workers (creator only, until closed)."""
        if self._fd is None:
            raise ValueError("the arena has no descriptor (attached, or closed)")
        return self._fd

    @classmethod
    def create(cls, slot_size: int, nslots: int, *, background: bool = False,
               reserve: bool = True) -> Arena:
        """Create, reserve and map the segment (coordinator side).

        Args:
            background: reserve the pages (``posix_fallocate``, about 0.25 ms per
                MiB here) in a thread, while the workers already start on the
                segment: the run's owner checks :meth:`reservation_error`. The
                memory check before (:func:`plan_slots`) makes a failure there
                unlikely; reserving first would delay every download's start.
                The thread runs at ``SCHED_IDLE``: only on CPU time nothing
                else wants. At a download's start two cores are busy with the
                peers, and zeroing 128 MiB took a core for ~35 ms just when the
                first pieces were due; a page it has not reserved yet is
                allocated by the first block copied into it instead.
            reserve: reserve the pages at all (False: a run's arena, whose torrents
                each reserve their window when they take it: :meth:`reserve`).

        Raises:
            ResourceExhausted: more than the available memory, no descriptor
                left, or the pages cannot be reserved.
        """
        size = slot_stride(slot_size) * nslots
        avail = arena_free_bytes()
        if avail is not None and size > avail[0]:
            raise ResourceExhausted(f"shared memory: {size >> 20} MiB wanted, only "
                                    f"{avail[0] >> 20} MiB free ({avail[1]})")
        try:
            fd = os.memfd_create(MEMFD_NAME, os.MFD_CLOEXEC)
        except OSError as e:
            raise ResourceExhausted(f"shared memory: cannot create a segment: "
                                    f"{e.strerror}") from None
        try:
            os.ftruncate(fd, size)
            # Take every page now: a shortage fails here, with a message,
            # instead of with SIGBUS when a block first lands in a slot.
            if reserve and not background:
                os.posix_fallocate(fd, 0, size)
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            os.close(fd)
            raise ResourceExhausted(_reserve_failed(size, e)) from None
        arena = cls(fd, mm, slot_size, nslots, owner=True)
        if reserve and background:
            arena.reserve(0, size)
        return arena

    def grow(self, size: int) -> None:
        """Make the segment ``size`` bytes (creator side; pages come as they are reserved
        or touched). Mappings made before keep their length.

        Raises:
            ResourceExhausted: more than the available memory, or it cannot grow.
        """
        avail = arena_free_bytes()
        if avail is not None and size > avail[0]:
            raise ResourceExhausted(f"shared memory: {size >> 20} MiB wanted, only "
                                    f"{avail[0] >> 20} MiB free ({avail[1]})")
        try:
            os.ftruncate(self.fd, size)
        except OSError as e:
            raise ResourceExhausted(_reserve_failed(size, e)) from None

    def reserve(self, offset: int, length: int) -> None:
        """Reserve the pages of ``[offset, offset + length)`` in a background thread at
        ``SCHED_IDLE`` (see :meth:`create`); a failure is :meth:`reservation_error`'s."""
        self._reserving = [t for t in self._reserving if t.is_alive()]
        t = threading.Thread(target=self._reserve, args=(offset, length),
                             name="arena-reserve", daemon=True)
        self._reserving.append(t)
        t.start()

    def _reserve(self, offset: int, size: int) -> None:
        with contextlib.suppress(OSError, AttributeError):  # 0: this thread (Linux)
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        try:
            os.posix_fallocate(self.fd, offset, size)
        except OSError as e:
            self._reserve_error = _reserve_failed(size, e)

    def reservation_error(self) -> str | None:
        """Why reserving the pages in the background failed; None: done, or still going."""
        return self._reserve_error

    @classmethod
    def attach(cls, fd: int, slot_size: int, nslots: int, *, offset: int = 0,
               keep_fd: bool = False) -> Arena:
        """Map the segment behind ``fd`` (worker side); ``fd`` is closed once mapped.

        Args:
            offset: where this arena's slots begin in the segment (a multiple of
                :data:`SLOT_ALIGN`): one torrent's window of an engine's segment.
            keep_fd: leave ``fd`` open (the worker maps the windows of later torrents).

        Raises:
            ResourceExhausted: ``fd`` is not a segment of that size.
        """
        size = slot_stride(slot_size) * nslots
        if offset % mmap.ALLOCATIONGRANULARITY:
            raise ValueError(f"arena window at {offset} is not page-aligned")
        try:
            try:
                if os.fstat(fd).st_size < offset + size:
                    raise ResourceExhausted(f"shared memory: descriptor {fd} holds less than "
                                            f"{(offset + size) >> 20} MiB")
                mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED,
                               prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)
            finally:
                if not keep_fd:
                    os.close(fd)  # the mapping keeps the segment alive
        except OSError as e:
            raise ResourceExhausted(f"shared memory: cannot map descriptor {fd}: "
                                    f"{e.strerror}") from None
        return cls(None, mm, slot_size, nslots, owner=False)

    def slot(self, i: int) -> memoryview:
        """A writable view of slot ``i`` (it starts on a :data:`SLOT_ALIGN` boundary).

        Raises:
            IndexError: ``i`` is not a slot.
            ValueError: the arena is closed.
        """
        if not 0 <= i < self.nslots:
            raise IndexError(f"slot {i} out of range 0..{self.nslots - 1}")
        if self._base is None:
            raise ValueError("the arena is closed")
        v = self._base[i * self.stride : i * self.stride + self.slot_size]
        self._views.append(v)
        return v

    def close(self) -> None:
        """Release every slot view, unmap, close the descriptor.  Twice is harmless."""
        for t in self._reserving:
            t.join()  # it uses the descriptor
        self._reserving.clear()
        for v in self._views:
            v.release()
        self._views.clear()
        if self._base is not None:
            self._base.release()
            self._base = None
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass  # a caller still holds a derived view; the mapping goes with it
            self._mm = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.owner = False
