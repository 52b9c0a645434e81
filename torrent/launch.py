"""Start fasttorrent's child processes: a fresh interpreter (or a fork) running one function.

Theory of operation
-------------------
The download workers (:mod:`torrent.worker`) and the hash workers
(:mod:`torrent.hashing`) run in child processes started here, not by
:mod:`multiprocessing`.  Its ``spawn`` method re-imports the caller's main
module in every child: a script without an ``if __name__ == "__main__":``
guard then runs itself again in each worker, and code read from stdin has
no main module to re-import at all.  A library must not care how its caller
was started, so a child here is a plain subprocess::

    python -P -m torrent.launch NAME FD MODULE:FUNCTION

- ``-P`` keeps the current directory off ``sys.path`` (a file there must not
  shadow a module), and the directory holding this ``torrent`` package is put
  on ``PYTHONPATH`` unless it is a site directory already, so the child runs
  the same code as its parent whichever way the parent found it.
- ``FD`` is one end of a ``socketpair``, inherited through ``pass_fds``; both
  sides wrap their end in :class:`multiprocessing.connection.Connection`
  (length-prefixed pickles: no multiprocessing bootstrap, no main-module
  import).  The first message is the function's argument (a worker's
  config); the function is then called as ``FUNCTION(arg, conn)`` and owns
  the connection.  Other descriptors a child needs (the arena's memfd) are
  passed the same way and keep their numbers.
- The child ignores SIGINT and SIGTERM from the moment it starts: a Ctrl-C
  or a SIGTERM sent to the whole process group is the parent's to handle,
  and the parent tells its children to stop.  A child exits by itself when
  its control connection reaches EOF, which happens when the parent dies,
  however it dies: the parent's end is close-on-exec and every child is
  started with ``close_fds``, so no other process holds it.
- stdin is ``/dev/null`` (the caller may be reading a script or a REPL from
  it); stdout and stderr are the parent's.
- A descriptor made after the child started (the arena's memfd, once the
  torrent's piece size is known) is handed over on the connection as
  ``SCM_RIGHTS`` data (:func:`send_fd` / :func:`recv_fd`).

**Forked children.** An interpreter start and the worker's imports take about
0.2 s here, more than the whole metadata fetch of a magnet from a fast peer.
A process that owns everything in it (the CLI's) and runs one thread may
instead start a child as a plain ``fork`` (:func:`fork_child`): it has every
module imported and is ready in milliseconds. It then behaves as an exec'd
child: signals ignored, ``/dev/null`` as stdin, no descriptor but stdio and
its connection, no inherited logging handler, ``os._exit`` at the end.

:class:`Child` offers the part of :class:`multiprocessing.Process` the
callers use: ``is_alive()``, ``exitcode`` (negative: killed by that signal),
``kill()`` and ``join(timeout)``.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["Child", "can_fork", "fork_child", "recv_fd", "send_fd", "start_child"]

#: The directory holding the ``torrent`` package: the child must import this copy.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


#: How often :meth:`Child.exited` looks where the kernel offers no pidfd.
EXIT_POLL = 0.02


class Child:
    """A running child process (see :func:`start_child`)."""

    def __init__(self, popen: Any, name: str) -> None:
        self._popen = popen
        self.name = name
        self.pid: int = popen.pid

    def is_alive(self) -> bool:
        """True until the process has exited (it is reaped by this call then)."""
        return bool(self._popen.poll() is None)

    @property
    def exitcode(self) -> int | None:
        """The exit status, ``-N`` if killed by signal N, None while it runs."""
        code = self._popen.poll()
        return None if code is None else int(code)

    def kill(self) -> None:
        """SIGKILL the process (nothing happens if it has exited)."""
        if self._popen.poll() is None:
            self._popen.kill()  # safe: Popen never signals a pid it already reaped

    def join(self, timeout: float | None = None) -> None:
        """Wait until the process exits, at most ``timeout`` seconds (None: no limit)."""
        import subprocess

        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    async def exited(self, timeout: float) -> bool:
        """Wait, on the running loop, until the process exits (at most ``timeout`` s);
        whether it did. Woken by its pidfd (Linux 5.3+) the moment it exits;
        polled every :data:`EXIT_POLL` s where there is none."""
        import asyncio

        if not self.is_alive():
            return True
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # an old kernel: poll
            deadline = loop.time() + timeout
            while self.is_alive():
                if loop.time() >= deadline:
                    return False
                await asyncio.sleep(EXIT_POLL)
            return True
        gone: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not gone.done():
                gone.set_result(None)

        loop.add_reader(pidfd, readable)
        try:
            await asyncio.wait_for(gone, timeout)
        except TimeoutError:
            pass
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        return not self.is_alive()

    def __repr__(self) -> str:
        return f"<Child {self.name} pid={self.pid} exitcode={self.exitcode}>"


def _child_env() -> dict[str, str]:
    """The parent's environment, with this package's directory on PYTHONPATH if needed."""
    import site

    env = dict(os.environ)
    # (getsitepackages is missing in some old virtualenvs)
    dirs = [*getattr(site, "getsitepackages", list)(), site.getusersitepackages()]
    site_dirs = {os.path.abspath(p) for p in dirs}
    if _PACKAGE_ROOT not in site_dirs:
        old = env.get("PYTHONPATH", "")
        env["PYTHONPATH"] = _PACKAGE_ROOT + (os.pathsep + old if old else "")
    return env


def start_child(target: str, *, name: str,
                pass_fds: Sequence[int] = ()) -> tuple[Child, Connection]:
    """Start ``target`` in a fresh interpreter and return it with our end of its connection.

    The caller sends the function's argument as the first message on the
    connection; until then the child only imports ``target``'s module.
    Starting all children before sending lets them start up in parallel.

    Args:
        target: ``"package.module:function"``; called as ``function(arg, conn)``.
        name: shown in ``ps`` (the child's command line) and in messages.
        pass_fds: descriptors the child inherits, at the same numbers.

    Returns:
        The :class:`Child` and the parent's :class:`Connection` to it.

    Raises:
        OSError: the process could not be started (no memory, too many
            processes or descriptors).
    """
    import socket
    import subprocess

    ours, theirs = socket.socketpair()
    try:
        popen = subprocess.Popen(
            [sys.executable, "-P", "-m", "torrent.launch", name, str(theirs.fileno()), target],
            stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(), *pass_fds), close_fds=True,
            env=_child_env())
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return Child(popen, name), Connection(ours.detach())


def send_fd(conn: Connection, fd: int) -> None:
    """Give the process at the other end of ``conn`` a copy of descriptor ``fd``.

    The descriptor travels as ``SCM_RIGHTS`` ancillary data over the
    connection's socket, so a child started before the descriptor existed
    (a worker started while the coordinator still parses, checks or fetches
    the torrent) can be handed it later. The other side calls :func:`recv_fd`
    at the same point of the message stream.

    Raises:
        OSError: the other end is gone.
    """
    import socket

    with socket.socket(fileno=os.dup(conn.fileno())) as s:
        socket.send_fds(s, [b"F"], [fd])


def recv_fd(conn: Connection) -> int:
    """The descriptor :func:`send_fd` sent on ``conn`` (close-on-exec here).

    Raises:
        EOFError: the other end closed before sending one.
        OSError: what arrived carries no descriptor.
    """
    import socket

    with socket.socket(fileno=os.dup(conn.fileno())) as s:
        data, fds, _flags, _addr = socket.recv_fds(s, 1, 1)
    if not data:
        raise EOFError("the connection closed before a descriptor came")
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise OSError("expected one descriptor on the control connection")
    os.set_inheritable(fds[0], False)
    return int(fds[0])


def can_fork() -> bool:
    """True when this process runs one thread, so that a child may be a ``fork`` of it.

    Native threads count too (``/proc/self/task`` lists them): a lock held by
    a thread that does not exist in the child would never be released there.
    """
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


class _Forked:
    """The part of :class:`subprocess.Popen` that :class:`Child` uses, for a forked child."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = 0  # reaped elsewhere: it is gone
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        import subprocess
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.001
        while self.poll() is None:
            left = 0.05 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.05)
        return int(self.returncode or 0)

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)


def fork_child(target: str, *, name: str) -> tuple[Child, Connection]:
    """Like :func:`start_child`, but the child is a ``fork`` of this process, with no exec.

    The child has everything this process imported (the coordinator imports
    the worker's modules anyway), so it is ready in a few milliseconds
    instead of an interpreter start and its imports (about 0.2 s per worker
    here). It behaves as :func:`start_child`'s children do: it ignores
    SIGINT and SIGTERM, holds no descriptor but stdin (``/dev/null``),
    stdout, stderr and its connection, has no logging handler of ours, gets
    its argument as the first message, and exits (``os._exit``: no atexit
    handlers) when ``FUNCTION(arg, conn)`` returns or its connection reaches
    EOF.

    Only for a process that owns everything in it, as the CLI's does: the
    caller checks :func:`can_fork` (one thread), and the objects of this
    process that stay in the child must not use their descriptors there
    (they are closed). The objects are frozen out of the garbage collector
    for the fork (``gc.freeze``), so that the child neither collects them
    nor copies every page of the heap by walking it.

    Raises:
        OSError: the process could not be started.
    """
    import gc
    import socket

    for stream in (sys.stdout, sys.stderr):  # nothing buffered is written twice
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    ours, theirs = socket.socketpair()
    stop = {signal.SIGINT, signal.SIGTERM}
    # No SIGINT may reach the child between the fork and its SIG_IGN.
    old = signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    gc.freeze()
    try:
        pid = os.fork()
    except BaseException:
        gc.unfreeze()
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        ours.close()
        theirs.close()
        raise
    if pid == 0:  # the child
        code = 1
        try:
            for sig in stop:
                signal.signal(sig, signal.SIG_IGN)
            # a running event loop's wakeup descriptor is closed below (the fetch
            # of a magnet forks the workers from inside its loop)
            signal.set_wakeup_fd(-1)
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            keep = theirs.detach()
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
            os.closerange(3, keep)
            os.closerange(keep + 1, _max_fd())
            _drop_log_handlers()
            _set_name(name)
            code = _serve(target, Connection(keep))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            _flush_and_exit(code)
    gc.unfreeze()
    signal.pthread_sigmask(signal.SIG_SETMASK, old)
    theirs.close()
    return Child(_Forked(pid), name), Connection(ours.detach())


def _max_fd() -> int:
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def _drop_log_handlers() -> None:
    """Forget the logging handlers this process had: their files are closed here."""
    import logging

    for lg in [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values()
                                      if isinstance(v, logging.Logger))]:
        lg.handlers.clear()


def _set_name(name: str) -> None:
    """Show ``name`` (its first 15 bytes) as this process's name in ``ps`` and ``top``."""
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        pass


def _serve(target: str, conn: Connection) -> int:
    """Wait for the argument on ``conn``, then run ``target`` with it; the exit code."""
    module, _, func = target.partition(":")
    fn = getattr(importlib.import_module(module), func)
    try:
        arg = conn.recv()
    except EOFError:
        return 0  # the parent went away before it told us anything
    fn(arg, conn)
    return 0


def _flush_and_exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    # No atexit handlers or thread joins: the child's work is done (or lost).
    os._exit(code)


def child_main(argv: Sequence[str]) -> int:
    """The child's side (``python -m torrent.launch NAME FD MODULE:FUNCTION``); its exit code."""
    # Before anything else: a Ctrl-C while the worker's modules load must not
    # print a traceback from every child (the parent handles it).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _name, fd, target = argv
    return _serve(target, Connection(int(fd)))


if __name__ == "__main__":
    # Run the imported module's copy, not this __main__ one, so that a target
    # importing torrent.launch sees one module.
    from torrent.launch import _flush_and_exit
    from torrent.launch import child_main as _main

    try:
        code = _main(sys.argv[1:])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    _flush_and_exit(code)
