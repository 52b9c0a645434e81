"""Process groups the tools start: spawned in sessions of their own, found and stopped whole.

Theory of operation
-------------------
Every process a tool starts (a seeder, a downloader under test) leads a
session of its own (``start_new_session``), optionally under coreutils
``timeout`` so that it ends by itself even if the tool is killed.  Its whole
tree is then "every live process in that session", read from ``/proc``
(:func:`session_pids`), which is how it is measured (:func:`pss`,
:func:`cpu_seconds`) and stopped: :meth:`Processes.stop` sends SIGINT to
each group, SIGKILL to what is left after a grace period, reaps the leader
and unlinks any ``/dev/shm`` segment a process of the group had mapped (a
SIGKILLed fasttorrent download cannot unlink its arena itself).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SHM_DIR", "STOP_GRACE", "Proc", "Processes", "child_env", "cpu_seconds", "pss",
           "session_pids", "shm_names"]

#: After SIGINT, how long a process group gets to exit before SIGKILL (a
#: fasttorrent download unlinks its shared-memory arena on the way out).
STOP_GRACE = 10.0
#: How often a stopping group is checked for processes left.
STOP_POLL = 0.05
SHM_DIR = "/dev/shm"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3 on), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2:].decode("ascii", "replace").split()


def session_pids(sid: int) -> list[int]:
    """Every live process in session ``sid`` (each started process leads its own session)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            f = _stat_fields(int(name))
            if f is not None and len(f) > 3 and f[3] == str(sid) and f[0] != "Z":
                out.append(int(name))
    return out


def pss(pid: int) -> int:
    """The proportional set size of ``pid`` in bytes (shared pages split between their
    users), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for ln in f:
                if ln.startswith("Pss:"):
                    return int(ln.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def shm_names(pid: int) -> set[str]:
    """The names of the ``/dev/shm`` segments ``pid`` maps."""
    out = set()
    try:
        with open(f"/proc/{pid}/maps") as f:
            for ln in f:
                i = ln.find(SHM_DIR + "/")
                if i >= 0:
                    out.add(ln[i + len(SHM_DIR) + 1:].strip().removesuffix(" (deleted)"))
    except OSError:
        pass
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds the live processes ``pids`` have used so far."""
    t = 0
    for pid in pids:
        f = _stat_fields(pid)
        if f is not None and len(f) > 12:
            t += int(f[11]) + int(f[12])
    return t / _CLK_TCK


def child_env(tree: str | None = None) -> dict[str, str]:
    """This environment, with this very ``torrent`` package first on the path, so that
    ``python -m torrent`` in a child runs the same code as this process; or, given
    ``tree`` (a source checkout with its core built in place), that tree's package."""
    env = dict(os.environ)
    root = tree or str(Path(__file__).resolve().parents[2])  # the directory holding torrent/
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


@dataclass(eq=False)
class Proc:
    """A started process, leader of its own session (so its whole tree can be found and killed)."""

    popen: subprocess.Popen[Any]
    name: str
    shm: set[str] = field(default_factory=set)
    reaped: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def note_shm(self) -> None:
        """Record the /dev/shm segments its group maps now (unlinked once it is stopped)."""
        for pid in session_pids(self.pid):
            self.shm |= shm_names(pid)


class Processes:
    """Every process group a tool started; each is stopped once, all of them at the end."""

    def __init__(self) -> None:
        self.live: list[Proc] = []
        self._lock = threading.Lock()

    def spawn(self, argv: Sequence[str], name: str, *, timeout: float | None,
              stdout: Any = None, stderr: Any = None, cwd: str | None = None,
              tree: str | None = None, cpus: Sequence[int] | None = None) -> Proc:
        """Start ``argv`` in its own session.

        Args:
            timeout: its lifetime: SIGINT after ``timeout`` s, SIGKILL :data:`STOP_GRACE`
                later (coreutils ``timeout``, so it holds even if this process is
                killed); None: no bound (it is stopped by :meth:`stop` only).
            stdout, stderr: as for :class:`subprocess.Popen` (text mode); default DEVNULL.
            tree: run ``torrent`` from this source checkout (see :func:`child_env`).
            cpus: run it and every process it starts on these CPUs only (``taskset``:
                the affinity is set before ``argv`` starts, so every child inherits it).
        """
        cmd = list(argv)
        if timeout is not None:
            cmd = ["timeout", "-s", "INT", "-k", str(int(STOP_GRACE)),
                   str(max(1, int(timeout))), *cmd]
        if cpus:
            cmd = ["taskset", "-c", ",".join(map(str, cpus)), *cmd]
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=child_env(tree),
                             stdout=stdout if stdout is not None else subprocess.DEVNULL,
                             stderr=stderr if stderr is not None else subprocess.DEVNULL,
                             cwd=cwd, start_new_session=True, text=True)
        proc = Proc(p, name)
        with self._lock:
            self.live.append(proc)
        return proc

    @staticmethod
    def _signal(proc: Proc, sig: int) -> None:
        if proc.pid > 1:  # never a broadcast, whatever happened to the Popen
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)

    def stop(self, procs: Sequence[Proc], grace: float = STOP_GRACE) -> None:
        """SIGINT to each group, SIGKILL to what is left after ``grace``; reap; sweep /dev/shm."""
        procs = [p for p in procs if p in self.live]
        for p in procs:
            if not p.reaped and p.popen.poll() is None:
                p.note_shm()
            self._signal(p, signal.SIGINT)
        end = time.monotonic() + grace
        for p in procs:
            while session_pids(p.pid) and time.monotonic() < end:
                time.sleep(STOP_POLL)  # waiting for the group to exit, bounded by `grace`
            self._signal(p, signal.SIGKILL)
            if not p.reaped:
                with contextlib.suppress(subprocess.TimeoutExpired, ChildProcessError):
                    p.popen.wait(grace)
            if p.popen.stdout is not None:
                p.popen.stdout.close()
            for name in p.shm:
                # mapped by a process of this group, all of which are gone now
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(SHM_DIR, name))
            with self._lock:
                self.live.remove(p)

    def stop_all(self) -> None:
        """Stop every group, including one whose start an interrupt cut short (a child
        of ours leading its own session that never made it into :attr:`live`)."""
        self.stop(list(self.live))
        me = str(os.getpid())
        for name in os.listdir("/proc"):
            f = _stat_fields(int(name)) if name.isdigit() else None
            if f is not None and len(f) > 3 and f[1] == me and f[3] == name:
                pid = int(name)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)

