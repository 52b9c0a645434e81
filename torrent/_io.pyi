"""Type stub for the native I/O thread in torrent/_io.pyx.

It has no pure twin: it runs without the GIL.
"""

from collections.abc import Iterable
from typing import Final, TypeAlias

from typing_extensions import Buffer

__all__ = [
    "DIRECT_ALIGN",
    "JOB_BAD",
    "JOB_IO_ERROR",
    "JOB_OK",
    "MAX_SEGMENTS",
    "MAX_WRITERS",
    "IOThread",
]

JOB_BAD: Final[int]
JOB_OK: Final[int]
JOB_IO_ERROR: Final[int]
MAX_SEGMENTS: Final[int]
MAX_WRITERS: Final[int]
DIRECT_ALIGN: Final[int]

# A segment of a piece job: (fd, file_offset, buf_offset, length), and optionally
# the same file opened with O_DIRECT (or -1).  A list of either kind, or of both.
_Seg: TypeAlias = tuple[int, int, int, int]
_DirectSeg: TypeAlias = tuple[int, int, int, int, int]
_Segments: TypeAlias = list[_Seg] | list[_DirectSeg] | list[_Seg | _DirectSeg]

class IOThread:
    def __init__(self, notify_fd: int, lock_writes: bool = False, writers: int = ...) -> None: ...
    @property
    def busy_seconds(self) -> tuple[float, float]: ...
    @property
    def pending(self) -> int: ...
    def submit_piece(
        self,
        job_id: int,
        buf: Buffer,
        length: int,
        digest: Buffer,
        segments: _Segments,
    ) -> None: ...
    def run_piece(
        self,
        job_id: int,
        buf: Buffer,
        length: int,
        digest: Buffer,
        segments: _Segments,
    ) -> tuple[int, int]: ...
    def submit_sync(self, job_id: int, fds: Iterable[int]) -> None: ...
    def completed(self) -> list[tuple[int, int, int]]: ...
    def close(self) -> list[tuple[int, int, int]]: ...
