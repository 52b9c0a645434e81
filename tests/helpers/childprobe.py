"""Targets for children started by torrent/launch.py in tests: they import nothing else."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["describe", "echo"]


def echo(arg: Any, conn: Any) -> None:
    """Answer ``(arg, modules, main)`` once, then echo every message until EOF."""
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    conn.send((arg, sorted(sys.modules), spec.name if spec is not None else None))
    _echo_until_eof(conn)


def _echo_until_eof(conn: Any) -> None:
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        conn.send(msg)


def describe(arg: Any, conn: Any) -> None:
    """Answer what this process holds, then echo every message until EOF.

    The answer: its descriptors (with their targets), its number of logging
    handlers, and, when ``arg`` is ``"fd"``, the first bytes of the descriptor
    sent after the argument (:func:`torrent.launch.send_fd`).
    """
    import logging
    import os

    from torrent.launch import recv_fd

    got = None
    if arg == "fd":
        fd = recv_fd(conn)
        got = os.pread(fd, 64, 0).decode()
        os.close(fd)
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # the listing's own descriptor, closed meanwhile
    handlers = len(logging.getLogger().handlers) + sum(
        len(v.handlers) for v in logging.Logger.manager.loggerDict.values()
        if isinstance(v, logging.Logger))
    conn.send({"fds": fds, "handlers": handlers, "got": got, "pid": os.getpid()})
    _echo_until_eof(conn)
