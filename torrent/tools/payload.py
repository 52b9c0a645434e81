"""Deterministic pseudo-random payloads for the tools, and checking a download against one.

One generator (:func:`write_file`) is cheap enough for gigabytes: one
random block per file, repeated with a counter stamped every 64 KiB, so no
two pieces of 64 KiB or more are alike, and a payload is the same on every
run for a given seed.
:func:`make_payload` lays out a single file or a tree of uneven files with
it; :func:`same_files` compares a download with the payload byte for byte.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence

from ..storage import os_error

__all__ = ["GEN_CHUNK", "MULTI_NAME", "SINGLE_NAME", "make_payload", "same_files", "write_file"]

#: Bytes generated per write, and the length of the random block repeated.
GEN_CHUNK = 4 << 20
#: Within a block, a counter is stamped every this many bytes: two pieces of at
#: least this length never have the same bytes.
_STAMP_EVERY = 1 << 16
#: Bytes compared at a time when checking an output against the payload.
_CMP_CHUNK = 1 << 20
#: The torrent's name for a multi-file payload (its top directory).
MULTI_NAME = "payload"
#: The torrent's name for a single-file payload.
SINGLE_NAME = "payload.bin"


def write_file(path: str, size: int, *, seed: int = 1) -> None:
    """Write ``size`` deterministic pseudo-random bytes to ``path``.

    Cheap: one random block repeated, with a per-block counter stamped every
    64 KiB, so that no two pieces of 64 KiB or more are alike.

    Raises:
        DiskFull: no room for it.
        StorageError: it cannot be written.
    """
    rnd = random.Random(seed)
    # A small file needs only the start of the block: the same bytes (randbytes of a
    # whole number of 32-bit words is a prefix of a longer call's), generated in
    # microseconds instead of the 4 MiB's ~30 ms (10,000 files took minutes).
    chunk = min(GEN_CHUNK, -(-size // _STAMP_EVERY) * _STAMP_EVERY)
    block = bytearray(rnd.randbytes(chunk))
    try:
        with open(path, "wb") as f:
            left, n = size, 0
            while left > 0:
                block[:8] = n.to_bytes(8, "little")
                for k in range(0, chunk, _STAMP_EVERY):
                    block[k : k + 8] = (n * 1000 + k).to_bytes(8, "little")
                take = min(left, GEN_CHUNK)
                f.write(memoryview(block)[:take])
                left -= take
                n += 1
    except OSError as e:
        raise os_error(e, f"writing the payload {path}") from None


def make_payload(root: str, size: int, files: int) -> tuple[str, list[str]]:
    """Write a payload of ``size`` bytes in ``files`` files under ``root``.

    One file is ``root/payload.bin``; more are uneven files under
    ``root/payload/`` (so files straddle piece boundaries; each has at
    least one byte).

    Returns:
        The path to make the torrent of, and the files' paths relative to
        ``root`` (where a client writes them under its output directory).
    """
    if files == 1:
        write_file(os.path.join(root, SINGLE_NAME), size)
        return os.path.join(root, SINGLE_NAME), [SINGLE_NAME]
    weights = [1 + (i * 7919) % 13 for i in range(files)]
    total = sum(weights)
    spare = size - files
    rels, left = [], size
    for i, w in enumerate(weights):
        n = left if i == files - 1 else 1 + spare * w // total
        left -= n
        rel = os.path.join(MULTI_NAME, f"dir{i % 10}", f"file{i:05d}.bin")
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        write_file(os.path.join(root, rel), n, seed=i + 1)
        rels.append(rel)
    return os.path.join(root, MULTI_NAME), rels


def same_files(src_root: str, out_root: str, rels: Sequence[str]) -> bool:
    """Whether every file ``rels`` under ``out_root`` is byte-identical to the one under
    ``src_root`` (a missing or unreadable file is not)."""
    for rel in rels:
        try:
            with open(os.path.join(src_root, rel), "rb") as fa, \
                    open(os.path.join(out_root, rel), "rb") as fb:
                while True:
                    x = fa.read(_CMP_CHUNK)
                    if x != fb.read(_CMP_CHUNK):
                        return False
                    if not x:
                        break
        except OSError:
            return False
    return True
