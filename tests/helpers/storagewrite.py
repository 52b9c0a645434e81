"""Write bytes through a Storage the way the native I/O thread does (for tests).

The package writes pieces only from its I/O thread (``torrent/_io.pyx``),
from the segments ``Storage.write_segments`` hands out; tests that need data
on disk go through the same segments here, with plain ``pwrite``.
"""

from __future__ import annotations

import os

from torrent.storage import Storage


def write(st: Storage, start: int, data: bytes | bytearray | memoryview) -> None:
    """Write ``data`` at ``start`` of the torrent's byte range (pad files skipped)."""
    view = memoryview(data)
    segs, pinned = st.write_segments(start, len(view))
    try:
        for seg in segs:
            fd, foff, roff, n = seg[0], seg[1], seg[2], seg[3]
            done = 0
            while done < n:
                w = os.pwrite(fd, view[roff + done : roff + n], foff + done)
                assert w > 0, "a short write of nothing: the test's disk is full"
                done += w
    finally:
        st.unpin(pinned)
