"""The kernels the rest of the package uses: the compiled ones, or their pure twins.

:mod:`torrent._fast` (Cython) and :mod:`torrent._pure` (Python) export the
same kernels with the same results; the parity tests hold them to it.  This
module chooses once, at import:

- ``FASTTORRENT_PURE=1`` in the environment forces the pure twins (CI runs
  the wire and picker tests once that way, so both implementations are
  driven by the same tests);
- otherwise the compiled module, or the pure twins where it is not built.

Everything outside the two kernel modules imports kernels from here.  The
native I/O thread (:mod:`torrent._io`) has no twin and is imported directly.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import TYPE_CHECKING

__all__ = [
    "IMPLEMENTATION",
    "BlockMap",
    "availability_add",
    "bitfield_count",
    "bitfield_spare_ok",
    "copy_block",
    "merkle_leaves",
    "merkle_root",
    "piece_layer",
    "read_u32",
    "scan_frame",
    "sha1",
    "sha1_pieces",
    "sha256",
    "take_blocks",
    "verify_pieces",
    "verify_pieces_v2",
]

#: The environment switch that forces the pure twins.
PURE_ENV = "FASTTORRENT_PURE"



def _choose() -> ModuleType:
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return importlib.import_module("._pure", __package__)
    try:
        return importlib.import_module("._fast", __package__)
    except ImportError:  # not built (a source checkout without the compiler step)
        return importlib.import_module("._pure", __package__)


if TYPE_CHECKING:  # the two share one stub (_fast.pyi); type against it
    from . import _fast as _impl
else:
    _impl = _choose()

#: "native" or "pure": which implementation was chosen.
IMPLEMENTATION = "pure" if _impl.__name__.endswith("_pure") else "native"

BlockMap = _impl.BlockMap
availability_add = _impl.availability_add
bitfield_count = _impl.bitfield_count
bitfield_spare_ok = _impl.bitfield_spare_ok
copy_block = _impl.copy_block
merkle_leaves = _impl.merkle_leaves
merkle_root = _impl.merkle_root
piece_layer = _impl.piece_layer
read_u32 = _impl.read_u32
scan_frame = _impl.scan_frame
sha1 = _impl.sha1
sha1_pieces = _impl.sha1_pieces
sha256 = _impl.sha256
take_blocks = _impl.take_blocks
verify_pieces = _impl.verify_pieces
verify_pieces_v2 = _impl.verify_pieces_v2
