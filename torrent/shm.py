"""The shared-memory arena of piece slots.

Theory of operation
-------------------
The coordinator creates one POSIX shared-memory segment holding
``workers * slots_per_worker`` piece slots and unlinks it when the run ends;
workers attach by name, each using only its own run of slots (so no two
processes ever write one slot, and no locking is needed).  A received block
is copied once, by the native core, from a connection's receive buffer into
its piece's slot; the full slot is hashed in place and written to disk from
there.

Lifecycle rules (Python 3.11, spawn start method):

- Workers share the coordinator's resource tracker.  A worker closes its
  mapping but never unlinks or unregisters it; the coordinator unlinks once.
  If the coordinator is SIGKILLed, the resource tracker (which outlives it)
  unlinks the segment, so none is left in ``/dev/shm``.
- ``close()`` fails while memoryviews into the mapping are alive: every slot
  view is released first (:meth:`Arena.close`).
- A full ``/dev/shm`` would raise SIGBUS on first touch.  The arena is sized
  from the free space (:func:`plan_slots`) and its pages are reserved up front
  with ``posix_fallocate``, so a shortage is a clear
  :class:`~torrent.errors.ResourceExhausted` at start-up instead.
"""

from __future__ import annotations

import os
from multiprocessing import resource_tracker, shared_memory

from .errors import ResourceExhausted

__all__ = ["DEFAULT_ARENA_BYTES", "MAX_SLOTS", "MAX_SLOT_BYTES", "MIN_SLOTS", "SHM_DIR", "Arena",
           "plan_slots"]

SHM_DIR = "/dev/shm"
#: Default arena size.  At 1 GB/s a 1 MiB piece spends about 1 ms in flight per
#: peer; 64 slots per worker cover a deep request pipeline to several peers
#: with room for pieces waiting on the hash/write thread.
DEFAULT_ARENA_BYTES = 256 << 20
#: Slots per worker: at least two (one filling while one is hashed).  Up to
#: BASE_SLOTS whatever the piece size (64 slots of 1 MiB: more in-flight data
#: only adds memory, not speed); small pieces get more, up to MAX_SLOT_BYTES
#: and MAX_SLOTS, so a worker keeps as many bytes in flight as with 1 MiB
#: pieces (64 slots of 256 KiB were 16 MiB: measured, all of them queued for
#: I/O while the peers idled).
MIN_SLOTS = 2
BASE_SLOTS = 64
MAX_SLOTS = 256
MAX_SLOT_BYTES = 64 << 20
#: Share of the free space in /dev/shm the arena may take; other programs live there too.
SHM_SHARE = 0.5


def shm_free_bytes() -> int:
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def plan_slots(piece_length: int, workers: int, arena_bytes: int | None = None) -> int:
    """Slots per worker that fit the budget and the free space in /dev/shm.

    Raises:
        ResourceExhausted: not even :data:`MIN_SLOTS` per worker fit.
    """
    budget = arena_bytes if arena_bytes is not None else DEFAULT_ARENA_BYTES
    free = int(shm_free_bytes() * SHM_SHARE)
    usable = min(budget, free)
    cap = min(MAX_SLOTS, max(BASE_SLOTS, MAX_SLOT_BYTES // piece_length))
    per = min(cap, usable // (piece_length * workers))
    # A small budget still gets the minimum as long as /dev/shm can hold it.
    if per < MIN_SLOTS and MIN_SLOTS * piece_length * workers <= free:
        per = MIN_SLOTS
    if per < MIN_SLOTS:
        need = MIN_SLOTS * piece_length * workers
        raise ResourceExhausted(
            f"shared memory: {SHM_DIR} has {shm_free_bytes() >> 20} MiB free, "
            f"{workers} worker(s) x {MIN_SLOTS} slots of {piece_length >> 10} KiB need "
            f"{need >> 20} MiB (use fewer --workers or free {SHM_DIR})")
    return int(per)


class Arena:
    """A shared-memory segment of equal piece slots."""

    def __init__(self, shm: shared_memory.SharedMemory, slot_size: int, nslots: int,
                 owner: bool) -> None:
        self._shm = shm
        self.slot_size = slot_size
        self.nslots = nslots
        self.owner = owner
        self._views: list[memoryview] = []

    @property
    def name(self) -> str:
        return self._shm.name

    @classmethod
    def create(cls, slot_size: int, nslots: int) -> Arena:
        """Create and reserve the segment (coordinator side)."""
        size = slot_size * nslots
        try:
            shm = shared_memory.SharedMemory(create=True, size=size)
        except OSError as e:
            raise ResourceExhausted(f"shared memory: cannot create {size >> 20} MiB: "
                                    f"{e.strerror}") from None
        try:
            os.posix_fallocate(shm._fd, 0, size)  # type: ignore[attr-defined]
        except OSError as e:
            shm.close()
            shm.unlink()
            raise ResourceExhausted(f"shared memory: cannot reserve {size >> 20} MiB in "
                                    f"{SHM_DIR}: {e.strerror}") from None
        except AttributeError:
            pass
        return cls(shm, slot_size, nslots, owner=True)

    @classmethod
    def attach(cls, name: str, slot_size: int, nslots: int) -> Arena:
        """Attach to the coordinator's segment (worker side)."""
        try:
            shm = shared_memory.SharedMemory(name=name)
        except OSError as e:
            raise ResourceExhausted(f"shared memory: cannot attach {name}: {e.strerror}") from None
        # Python 3.11 registers an attached segment with the (shared) resource
        # tracker as if we owned it; the registration is a set entry, and the
        # coordinator's unlink() removes it, so nothing more to do here.
        return cls(shm, slot_size, nslots, owner=False)

    def slot(self, i: int) -> memoryview:
        """A writable view of slot ``i``; released by :meth:`close`."""
        if not 0 <= i < self.nslots:
            raise IndexError(f"slot {i} out of range 0..{self.nslots - 1}")
        buf = self._shm.buf
        assert buf is not None
        v = buf[i * self.slot_size : (i + 1) * self.slot_size]
        self._views.append(v)
        return v

    def close(self) -> None:
        """Release every slot view and unmap; the owner also unlinks the segment."""
        for v in self._views:
            v.release()
        self._views.clear()
        try:
            self._shm.close()
        except BufferError:
            pass  # a caller still holds a view; the mapping goes with the process
        if self.owner:
            try:
                self._shm.unlink()
            except FileNotFoundError:
                try:
                    resource_tracker.unregister(self._shm._name, "shared_memory")  # type: ignore[attr-defined]
                except Exception:  # noqa: BLE001 - best effort on an already-gone segment
                    pass
            self.owner = False
