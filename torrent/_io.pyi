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
    "MAX_V2_WIDTH",
    "MAX_WRITERS",
    "IOThread",
    "syncfs",
]

JOB_BAD: Final[int]
JOB_OK: Final[int]
JOB_IO_ERROR: Final[int]
MAX_SEGMENTS: Final[int]
MAX_V2_WIDTH: Final[int]
MAX_WRITERS: Final[int]
DIRECT_ALIGN: Final[int]

# A segment of a piece job: (fd, file_offset, buf_offset, length), and optionally
# the same file opened with O_DIRECT (or -1).  A list of either kind, or of both.
_Seg: TypeAlias = tuple[int, int, int, int]
_DirectSeg: TypeAlias = tuple[int, int, int, int, int]
_Segments: TypeAlias = list[_Seg] | list[_DirectSeg] | list[_Seg | _DirectSeg]
# A piece's BEP 52 expectation: (root, file_bytes, width) (torrent.v2pieces).
_V2: TypeAlias = tuple[Buffer, int, int]

class IOThread:
    def __init__(self, notify_fd: int, lock_writes: bool = False, writers: int = ...,
                 file_writers: int = ...) -> None: ...
    @property
    def busy_seconds(self) -> tuple[float, float]: ...
    @property
    def pending(self) -> int: ...
    def submit_piece(
        self,
        job_id: int,
        buf: Buffer,
        length: int,
        digest: Buffer | None,
        segments: _Segments,
        v2: _V2 | None = None,
    ) -> None: ...
    def run_piece(
        self,
        job_id: int,
        buf: Buffer,
        length: int,
        digest: Buffer | None,
        segments: _Segments,
        v2: _V2 | None = None,
    ) -> tuple[int, int]: ...
    def submit_sync(self, job_id: int, fds: Iterable[int],
                    whole_fs: Iterable[int] = ()) -> None: ...
    def completed(self) -> list[tuple[int, int, int]]: ...
    def close(self) -> list[tuple[int, int, int]]: ...

def syncfs(fd: int) -> None: ...
