"""What this process may use of the machine: CPUs (affinity, cgroup quota), memory, descriptors."""

from __future__ import annotations

import math
import os
import resource
import time

__all__ = ["available_cpus", "available_memory", "fd_limit", "raise_fd_limit"]


def _cgroup_cpu_limit() -> float | None:
    """The cgroup v2 CPU quota in CPUs (``cpu.max``), or None when unlimited/unknown."""
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def available_cpus() -> int:
    """The number of CPUs this process may run on: affinity mask, capped by a cgroup quota.

    Never ``os.cpu_count()``: a container or ``taskset`` may allow fewer cores
    than the machine has, and a worker per unusable core only adds contention.
    """
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        n = min(n, max(1, math.ceil(limit)))
    return max(1, n)


#: A cgroup v1 limit at or above this means "no limit" (the kernel reports
#: PAGE_COUNTER_MAX pages, about 2**63 bytes).
_V1_UNLIMITED = 1 << 62


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _stat_value(text: str | None, key: str) -> int | None:
    """``key``'s value in a ``name value`` file (memory.stat, /proc/meminfo without the unit)."""
    for line in (text or "").splitlines():
        parts = line.replace(":", " ").split()
        if len(parts) >= 2 and parts[0] == key:
            try:
                return int(parts[1])
            except ValueError:
                return None
    return None


def _mem_available(proc: str) -> int | None:
    kib = _stat_value(_read(os.path.join(proc, "meminfo")), "MemAvailable")
    return None if kib is None else kib * 1024


def _cgroup_dirs(proc: str, cgroup_root: str) -> tuple[list[str], list[str]]:
    """This process's memory cgroup directories, (v2, v1), innermost first, with ancestors.

    In a container with its own cgroup namespace the path is ``/`` and the
    container's limit sits at the root of the mount; on a host (a systemd
    service) it sits at the path, or at one of its parents.
    """
    v2: list[str] = []
    v1: list[str] = []
    for line in (_read(os.path.join(proc, "self", "cgroup")) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _hid, controllers, path = parts
        if controllers == "":
            base = cgroup_root
        elif "memory" in controllers.split(","):
            base = os.path.join(cgroup_root, "memory")
        else:
            continue
        rel = path.strip("/")
        dirs = []
        while True:
            dirs.append(os.path.join(base, rel) if rel else base)
            if not rel:
                break
            rel = os.path.dirname(rel)
        (v2 if controllers == "" else v1).extend(dirs)
    return v2, v1


def _cgroup_headroom(proc: str, cgroup_root: str) -> int | None:
    """Bytes the memory cgroup still lets us take (the tightest limit on the way up), or None.

    Usage counts the page cache, which a download fills up to the limit: the
    inactive file pages are reclaimed before anything else, so they count as
    free (usage minus inactive_file is the "working set" that container
    runtimes compare with the limit).
    """
    v2, v1 = _cgroup_dirs(proc, cgroup_root)
    best: int | None = None
    for d in v2:
        limit = (_read(os.path.join(d, "memory.max")) or "").strip()
        current = (_read(os.path.join(d, "memory.current")) or "").strip()
        if not limit.isdigit() or not current.isdigit():
            continue  # "max", or not a memory cgroup directory
        inactive = _stat_value(_read(os.path.join(d, "memory.stat")), "inactive_file") or 0
        room = max(0, int(limit) - max(0, int(current) - inactive))
        best = room if best is None else min(best, room)
    for d in v1:
        stat = _read(os.path.join(d, "memory.stat"))
        usage = (_read(os.path.join(d, "memory.usage_in_bytes")) or "").strip()
        # hierarchical_memory_limit already is the tightest limit of the ancestors
        v1_limit = _stat_value(stat, "hierarchical_memory_limit")
        if v1_limit is None or v1_limit >= _V1_UNLIMITED or not usage.isdigit():
            continue
        inactive = _stat_value(stat, "total_inactive_file") or 0
        room = max(0, v1_limit - max(0, int(usage) - inactive))
        best = room if best is None else min(best, room)
        break  # the innermost readable directory has the hierarchical answer
    return best


#: How long a reading of :func:`available_memory` (its default files) is reused: the
#: arena's plan and its creation ask within milliseconds, and each reading costs ~0.5 ms
#: (procfs and cgroup files) when a magnet's first piece is due.
MEMORY_READING_TTL = 1.0
_reading: tuple[float, tuple[int, str] | None] | None = None


def available_memory(proc: str = "/proc", cgroup_root: str = "/sys/fs/cgroup", *,
                     now: float | None = None) -> tuple[int, str] | None:
    """Memory this process may still take without pushing the machine or its cgroup into an OOM.

    The smaller of the kernel's ``MemAvailable`` (free memory plus page cache
    it can drop) and the headroom under the memory cgroup's limit (v2
    ``memory.max``, v1 ``memory.limit_in_bytes``, the tightest one on the way
    to the root).

    Args:
        proc, cgroup_root: where procfs and the cgroup hierarchy are mounted
            (tests point them at a fake tree).

    Returns:
        ``(bytes, what)``, where ``what`` names the limit that binds
        (``"MemAvailable"`` or ``"cgroup memory limit"``); None when neither
        can be read.
    """
    global _reading
    default = proc == "/proc" and cgroup_root == "/sys/fs/cgroup"
    t = time.monotonic() if now is None else now
    if default and _reading is not None and 0 <= t - _reading[0] < MEMORY_READING_TTL:
        return _reading[1]
    found: list[tuple[int, str]] = []
    avail = _mem_available(proc)
    if avail is not None:
        found.append((avail, "MemAvailable"))
    room = _cgroup_headroom(proc, cgroup_root)
    if room is not None:
        found.append((room, "cgroup memory limit"))
    got = min(found) if found else None
    if default:
        _reading = (t, got)
    return got


def fd_limit() -> int:
    """This process's soft ``RLIMIT_NOFILE``: how many descriptors it may hold open."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def raise_fd_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard one; the soft limit now in force.

    The soft limit is 1,024 on most systems for the sake of programs that
    still use ``select()``; the hard one is what the administrator allows.  A
    server program that holds a descriptor per connection takes what it is
    allowed, as Go's runtime does for every program at start and as nginx
    does with ``worker_rlimit_nofile``; nothing here uses ``select()``.  The
    worker processes inherit the raised limit.  A refusal (a sandbox) keeps
    the old limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError):
            pass
    return fd_limit()
