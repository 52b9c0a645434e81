"""What this process may use of the machine: CPUs (affinity and cgroup quota)."""

from __future__ import annotations

import math
import os

__all__ = ["available_cpus"]


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
