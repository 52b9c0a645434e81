"""BitTorrent v2 payloads for the verification tests: files of odd sizes, their
v2-only or hybrid torrent made by libtorrent, and the torrent's piece space.
"""

from __future__ import annotations

from pathlib import Path

from helpers.payload import lt_create, write_tree
from torrent import metainfo

__all__ = ["BLOCK", "KINDS", "odd_files", "piece_space", "v2_torrent"]

#: BEP 52's leaf block.
BLOCK = 16384
#: The torrents libtorrent makes with v2 hashes.
KINDS = ("v2", "hybrid")


def odd_files(piece: int) -> dict[str, int]:
    """Files of the sizes BEP 52 treats apart: empty, smaller than a block, one
    block, a block and a byte, exactly one piece, one piece and a byte, several
    pieces with a short last one, whole pieces."""
    return {
        "a-empty": 0,
        "b-one-byte": 1,
        "c-block-less-one": BLOCK - 1,
        "d-block": BLOCK,
        "e-block-plus-one": BLOCK + 1,
        "f-one-piece": piece,
        "g-piece-plus-one": piece + 1,
        "h-short-last": 3 * piece + 5 * 1024 + 3,
        "i-two-pieces": 2 * piece,
    }


def v2_torrent(parent: Path, files: dict[str, int], piece: int, kind: str, *,
               seed: int = 0) -> tuple[Path, metainfo.Metainfo]:
    """``files`` written under ``parent/payload`` (a single file ``parent/payload``
    when ``files`` is ``{"": size}``) and libtorrent's ``kind`` torrent of them."""
    if list(files) == [""]:
        write_tree(parent, {"payload": files[""]}, seed=seed)
    else:
        write_tree(parent / "payload", files, seed=seed)
    out = parent / f"{kind}.torrent"
    lt_create(parent, "payload", out, piece, v1_only=False, v2_only=kind == "v2")
    meta = metainfo.load(out)
    assert meta.v2_only == (kind == "v2") and meta.hybrid == (kind == "hybrid")
    return out, meta


def piece_space(meta: metainfo.Metainfo, directory: Path) -> bytearray:
    """The torrent's bytes as its pieces hold them: each file at its offset, pad
    files zero (the whole last piece, pad included, for a v2-only torrent)."""
    space = bytearray(meta.num_pieces * meta.piece_length)
    for f in meta.files:
        if f.pad or not f.length:
            continue
        data = (directory / f.path).read_bytes()
        assert len(data) == f.length
        space[f.offset : f.offset + f.length] = data
    return space
