"""An independent check of BEP 52 ``hashes`` replies for the tests: fold a reply's
hashes and uncles up to the root with hashlib, not with the code under test."""

from __future__ import annotations

import hashlib

from torrent import merkle
from torrent.wire.messages import Hashes


def fold_to_root(msg: Hashes, level: int) -> bytes:
    """The root a ``hashes`` reply proves; ``level``: its base layer's height above the
    16 KiB leaves (0 for the leaves, or the piece layer of 16 KiB pieces)."""
    node = merkle.layer_root(msg.base, merkle.BLOCK_SIZE << level) if msg.length > 1 else msg.base
    pos = msg.index // msg.length
    u = msg.uncles
    for k in range(0, len(u), 32):
        node = hashlib.sha256(node + u[k:k + 32] if pos % 2 == 0 else u[k:k + 32] + node).digest()
        pos //= 2
    return node
