"""Writes the event stream (torrent/events.py) to a file or stdout, one line per event.

Each line goes out with its own ``write`` system call as soon as it is made
(no buffer to lose in a crash, nothing half-written for a reader that tails
the file).  A file is opened for appending, so the runs of one torrent
follow one another in it.  A failed write (the reader of ``--events -``
went away: EPIPE; the disk is full: ENOSPC) is one warning, and the stream
stops there: the download never fails because of its events.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable

from .errors import StorageError
from .events import Event, encode_line

__all__ = ["STDOUT", "EventWriter", "open_events"]

#: The ``--events`` path that means stdout.
STDOUT = "-"


class EventWriter:
    """Appends events as JSON lines to ``path`` (``-``: stdout).

    Args:
        path: the file (created if missing, appended to) or ``-``.
        warn: receives the one warning of a failed write.

    Raises:
        StorageError (or DiskFull): the file cannot be opened (see
            :func:`~torrent.storage.os_error`).
    """

    def __init__(self, path: str, warn: Callable[[str], None]) -> None:
        self.path = path
        self.warn = warn
        self.failed = False
        self.lines = 0
        if path == STDOUT:
            try:
                sys.stdout.flush()
                self.fd = sys.stdout.fileno()
            except (AttributeError, ValueError, OSError):  # no stdout (closed, or None)
                raise StorageError("--events -: this process has no stdout") from None
            self._owned = False
        else:
            try:
                self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                                  0o644)
            except OSError as e:
                from .storage import os_error

                raise os_error(e, f"--events {path}") from None
            self._owned = True

    def write(self, ev: Event) -> None:
        """Write one event (nothing once a write failed)."""
        if self.failed:
            return
        data = memoryview(encode_line(ev))
        try:
            while data:
                n = os.write(self.fd, data)
                data = data[n:]
        except OSError as e:
            self.failed = True
            where = "stdout" if self.path == STDOUT else self.path
            self.warn(f"events: writing to {where} failed ({e.strerror or e}); "
                      "no more events in this run")
            if not self._owned:
                # the reader of stdout is gone: later writes there (at exit too) go nowhere
                self._to_devnull()
            return
        self.lines += 1

    def _to_devnull(self) -> None:
        with contextlib.suppress(OSError):
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self.fd)
            os.close(null)

    def close(self) -> None:
        if self._owned and self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def open_events(path: str | None, warn: Callable[[str], None]) -> EventWriter | None:
    """The writer of ``--events PATH`` (None: no stream). Raises StorageError (see above)."""
    return None if path is None else EventWriter(path, warn)

