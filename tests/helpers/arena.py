"""The shared-memory arena seen from outside: which processes map or hold it (no psutil).

The arena (torrent/shm.py) is an anonymous memfd: it shows as
``/memfd:fasttorrent-arena (deleted)`` in ``/proc/PID/maps`` and in the
links of ``/proc/PID/fd``, with its inode.  The kernel frees it when no
process maps it and no descriptor refers to it, so "nothing holds these
inodes" is how a test checks that a run's arena is gone.
"""

from __future__ import annotations

import contextlib
import os

__all__ = ["ARENA_TAG", "SHM_DIR", "WORKER_CMDLINE", "WORKER_NAME", "arena_holders",
           "arena_inodes", "is_worker", "mapped_files", "shm_files"]

SHM_DIR = "/dev/shm"
#: The command line of a download worker started as a fresh interpreter (torrent/launch.py).
WORKER_CMDLINE = ("torrent.launch", "fasttorrent-worker-")
#: The process name (``comm``) of a download worker forked by the CLI (torrent/launch.py).
WORKER_NAME = "ft-worker-"


def is_worker(pid: int) -> bool:
    """Process ``pid`` is a download worker, forked or exec'd (False if it is gone)."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            if f.read().startswith(WORKER_NAME):
                return True
        with open(f"/proc/{pid}/cmdline", "rb") as fb:
            cmd = fb.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return all(s in cmd for s in WORKER_CMDLINE)

#: How the arena shows in /proc/PID/maps and in fd links.
ARENA_TAG = "/memfd:fasttorrent-arena"


def mapped_files(pid: int) -> list[tuple[int, str]]:
    """``(inode, path)`` of every file process ``pid`` maps (empty if it is gone)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6:
            out.append((int(fields[4]), fields[5]))
    return out


def arena_inodes(pid: int) -> set[int]:
    """Inodes of the arena segments process ``pid`` maps (empty if it is gone)."""
    return {inode for inode, path in mapped_files(pid) if path.startswith(ARENA_TAG)}


def shm_files(pid: int) -> set[str]:
    """Files under /dev/shm that process ``pid`` maps (named segments: there must be none)."""
    return {path.removesuffix(" (deleted)") for _inode, path in mapped_files(pid)
            if path.startswith(SHM_DIR + "/")}


def arena_holders(inodes: set[int]) -> set[int]:
    """Pids of every process on the machine that still maps or holds open one of ``inodes``.

    The kernel frees a memfd when nothing maps it and no descriptor refers to
    it: an empty answer means the segments are gone.
    """
    holders = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if arena_inodes(pid) & inodes:
            holders.add(pid)
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    path = f"/proc/{pid}/fd/{fd}"
                    if os.readlink(path).startswith(ARENA_TAG) and os.stat(path).st_ino in inodes:
                        holders.add(pid)
                        break
    return holders
