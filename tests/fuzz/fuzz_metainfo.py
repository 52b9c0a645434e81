"""Fuzz the metainfo parser (torrent/metainfo.py ``parse``).

Input: the bytes of a .torrent file.

Holds for every input:
- ``parse`` returns a :class:`Metainfo` or raises ``InvalidTorrent``, nothing else;
- no file path of a parsed torrent (pad files included) is absolute, has a
  component that is empty, ``.`` or ``..`` or starts with a drive letter
  (``C:``), or holds a backslash or a NUL;
- the torrent is self-consistent: the info-hash is SHA-1 of ``info_bytes``,
  which are the input's bytes; one 20-byte hash per piece; files tile the
  byte space; every tracker URL has a scheme we speak.

Run: ``python tests/fuzz/fuzz_metainfo.py [libFuzzer flags] [corpus dirs]``.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import sys

from fuzzlib import check, fuzz, instrumented

with instrumented(__name__):
    from torrent.errors import InvalidTorrent
    from torrent.metainfo import SHA1_LEN, TRACKER_SCHEMES, parse

#: A Windows drive (``C:``) at the start of a component, as the parser's rules name it.
_DRIVE = re.compile(r"[A-Za-z]:")


def check_path(path: str) -> None:
    """A path that stays inside the output directory (POSIX; and no Windows drive or UNC)."""
    check(not posixpath.isabs(path) and not path.startswith("\\"), f"absolute path {path[:80]!r}")
    check("\\" not in path and "\0" not in path, f"backslash or NUL in {path[:80]!r}")
    for comp in path.split("/"):
        check(comp not in ("", ".", ".."), f"unsafe component {comp!r} in {path[:80]!r}")
        check(not _DRIVE.match(comp), f"drive letter {comp!r} in {path[:80]!r}")


def TestOneInput(data: bytes) -> None:
    """Parse ``data``; check path safety and consistency (see the module docstring)."""
    try:
        m = parse(data)
    except InvalidTorrent:
        return
    check_path(m.name)
    check("/" not in m.name, f"name with a '/': {m.name[:80]!r}")
    check(m.info_bytes in data, "info_bytes are not bytes of the input")
    check(hashlib.sha1(m.info_bytes).digest() == m.info_hash, "info_hash is not SHA-1 of info")
    check(len(m.piece_hashes) == m.num_pieces * SHA1_LEN, "piece hashes do not match num_pieces")
    check(m.num_pieces == -(-m.total_size // m.piece_length) > 0, "piece count off")
    offset = 0
    for f in m.files:
        check_path(f.path)
        check(f.length >= 0 and f.offset == offset, f"file {f.path[:80]!r} does not tile")
        if m.multi_file:
            check(f.path.startswith(m.name + "/"), f"{f.path[:80]!r} is outside {m.name!r}")
        offset += f.length
    check(offset == m.total_size, "file lengths do not add up to total_size")
    for tier in m.trackers:
        check(tier, "an empty tracker tier")
        for url in tier:
            check(url.lower().startswith(TRACKER_SCHEMES), f"tracker URL {url[:80]!r}")
    m.to_json_dict()


if __name__ == "__main__":
    fuzz(TestOneInput)
    sys.exit(0)
