"""Fuzz the resume journal reader (torrent/journal.py ``Journal.read``) on any file bytes.

Input: ``flags | pieces | bytes``.  The journal is for a torrent of
``pieces + 1`` pieces.  Flag 0x01 puts this torrent's valid header in front
of the bytes; flag 0x02 then fixes every record's checksum (and a seal's,
for index 0xFFFFFFFF) as the reader walks them, so the fuzzer gets past the
CRCs to the record and seal structure.  The bytes are written to a file
and read back: an anonymous in-memory file where there is ``memfd_create``,
so a disk filled by something else is never taken for a finding.

Holds for every input: ``read`` never raises; it returns None or a set of
piece indices of this torrent; a seal table, when one is kept, is a list
of (size, mtime_ns) pairs of non-negative integers, within
``MAX_SEAL_FILES``.

Run: ``python tests/fuzz/fuzz_journal.py [libFuzzer flags] [corpus dirs]``.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import struct
import sys
import tempfile
import zlib

from fuzzlib import check, fuzz, instrumented

with instrumented(__name__):
    from torrent import journal
    from torrent.journal import Journal

INFO_HASH = hashlib.sha1(b"fuzz the journal").digest()
PIECE_LENGTH = 1 << 18
_RECORD = struct.Struct("<II")
if hasattr(os, "memfd_create"):
    _FD = os.memfd_create("fuzz-journal")
    PATH = f"/proc/self/fd/{_FD}"
else:
    _DIR = tempfile.mkdtemp(prefix="fuzz-journal-")
    atexit.register(shutil.rmtree, _DIR, True)
    PATH = os.path.join(_DIR, "journal.resume")


def fix_checksums(body: bytearray) -> None:
    """Give every record the right CRC, walking records and seals as the reader does."""
    off = 0
    while off + _RECORD.size <= len(body):
        index = _RECORD.unpack_from(body, off)[0]
        crc = zlib.crc32(INFO_HASH + index.to_bytes(4, "little"))
        _RECORD.pack_into(body, off, index, crc)
        off += _RECORD.size
        if index == journal.SEAL and off + 4 <= len(body):
            off += 4 + 16 * int.from_bytes(body[off : off + 4], "little")


def TestOneInput(data: bytes) -> None:
    """Read ``data`` as this torrent's journal (see the module docstring)."""
    if len(data) < 2:
        return
    flags, num = data[0], data[1] + 1
    j = Journal(PATH, INFO_HASH, num, PIECE_LENGTH)
    body = bytearray(data[2:])
    if flags & 0x02:
        fix_checksums(body)
    with open(PATH, "wb") as f:
        if flags & 0x01:
            f.write(j.header())
        f.write(body)
    done = j.read()
    if done is None:
        return
    check(isinstance(done, set), f"read gave {type(done).__name__}")
    for i in done:
        check(isinstance(i, int) and 0 <= i < num, f"piece {i!r} of {num}")
    table = j.seal_table
    if table is not None:
        check(len(table) <= journal.MAX_SEAL_FILES, "seal table over its bound")
        for entry in table:
            check(len(entry) == 2 and all(isinstance(v, int) and v >= 0 for v in entry),
                  f"seal entry {entry!r}")


if __name__ == "__main__":
    fuzz(TestOneInput)
    sys.exit(0)
