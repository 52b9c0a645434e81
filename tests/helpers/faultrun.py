"""Run the ``fasttorrent`` CLI with a fault injected into the resume journal.

    python tests/helpers/faultrun.py KIND:N download TORRENT -o DIR ...

KIND is ``kill-in-journal`` (SIGKILL in the middle of the record that brings
the journal to N pieces, as a power cut would tear it) or
``kill-after-journal`` (SIGKILL right after that record is fsynced).  The
fault is patched into :meth:`torrent.journal.Journal.append` of this
process (the coordinator, which owns the journal) before the CLI runs; the
package itself carries no fault hooks.

KIND ``no-fallocate`` (N is ignored) makes ``os.posix_fallocate`` fail with
``EOPNOTSUPP`` in this process for files on a filesystem (the arena, a
memfd, is still reserved).  The coordinator creates the data files here:
they are created sparse, as on a filesystem where preallocation reserves
nothing (NFS, copy-on-write filesystems), so a full disk shows up at the
data writes.
"""

from __future__ import annotations

import errno
import os
import signal
import sys

from torrent import cli, journal

#: The journal's record layout (index, crc), as written by Journal.append.
RECORD = journal._RECORD


def install(kind: str, at: int) -> None:
    """Patch Journal.append so that it dies as ``kind`` says once ``at`` pieces are recorded."""
    original = journal.Journal.append

    def append(self: journal.Journal, pieces: list[int]) -> None:
        if pieces and self._fd is not None and self.count + len(pieces) >= at:
            if kind == "kill-in-journal":
                rec = b"".join(RECORD.pack(i, journal._crc(self.info_hash, i)) for i in pieces)
                os.write(self._fd, rec[: len(rec) - RECORD.size // 2])  # torn mid-record
                os.kill(os.getpid(), signal.SIGKILL)
            original(self, pieces)
            os.kill(os.getpid(), signal.SIGKILL)
        original(self, pieces)

    journal.Journal.append = append  # type: ignore[method-assign]


def no_fallocate() -> None:
    """Make preallocation unsupported in this process (the coordinator creates the files)."""

    real = os.posix_fallocate

    def posix_fallocate(fd: int, offset: int, length: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:"):
            real(fd, offset, length)  # the shared-memory arena
            return
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    os.posix_fallocate = posix_fallocate


def main() -> int:
    kind, _, n = sys.argv[1].partition(":")
    if kind not in ("kill-in-journal", "kill-after-journal", "no-fallocate") or not n.isdigit():
        print(f"faultrun: unknown fault {sys.argv[1]!r}", file=sys.stderr)
        return 2
    if kind == "no-fallocate":
        no_fallocate()
    else:
        install(kind, int(n))
    return cli.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
