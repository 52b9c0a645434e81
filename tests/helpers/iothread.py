"""Collecting the outcomes of the native I/O thread (torrent._io.IOThread) in tests."""

from __future__ import annotations

import os
import select

from torrent import _io

__all__ = ["WAIT_S", "wait_all"]

#: Bound on each wait for a finished job (seconds).
WAIT_S = 10


def wait_all(t: _io.IOThread, efd: int, n: int) -> list[tuple[int, int, int]]:
    """Collect ``n`` outcomes, waking on the eventfd (bounded: :data:`WAIT_S` per wait)."""
    out: list[tuple[int, int, int]] = []
    while len(out) < n:
        ready, _, _ = select.select([efd], [], [], WAIT_S)
        assert ready, f"only {len(out)} of {n} jobs finished"
        os.eventfd_read(efd)
        out += t.completed()
    return out
