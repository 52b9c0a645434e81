"""Start fasttorrent's child processes: a fresh interpreter running one entry function.

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

__all__ = ["Child", "start_child"]

#: The directory holding the ``torrent`` package: the child must import this copy.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def child_main(argv: Sequence[str]) -> int:
    """The child's side (``python -m torrent.launch NAME FD MODULE:FUNCTION``); its exit code."""
    # Before anything else: a Ctrl-C while the worker's modules load must not
    # print a traceback from every child (the parent handles it).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _name, fd, target = argv
    conn = Connection(int(fd))
    module, _, func = target.partition(":")
    fn = getattr(importlib.import_module(module), func)
    try:
        arg = conn.recv()
    except EOFError:
        return 0  # the parent went away before it told us anything
    fn(arg, conn)
    return 0


if __name__ == "__main__":
    # Run the imported module's copy, not this __main__ one, so that a target
    # importing torrent.launch sees one module.
    from torrent.launch import child_main as _main

    try:
        code = _main(sys.argv[1:])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    # No atexit handlers or thread joins: the child's work is done (or lost).
    os._exit(code)
