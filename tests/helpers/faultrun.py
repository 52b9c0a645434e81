"""Run the ``fasttorrent`` CLI with a fault injected into the resume journal.

    python tests/helpers/faultrun.py KIND:N download TORRENT -o DIR ...

KIND is ``kill-in-journal`` (SIGKILL in the middle of the record that brings
the journal to N pieces, as a power cut would tear it) or
``kill-after-journal`` (SIGKILL right after that record is fsynced).  The
fault is patched into :meth:`torrent.journal.Journal.append` of this
process (the coordinator, which owns the journal) before the CLI runs; the
package itself carries no fault hooks.
"""

from __future__ import annotations

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


def main() -> int:
    kind, _, n = sys.argv[1].partition(":")
    if kind not in ("kill-in-journal", "kill-after-journal") or not n.isdigit():
        print(f"faultrun: unknown fault {sys.argv[1]!r}", file=sys.stderr)
        return 2
    install(kind, int(n))
    return cli.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
