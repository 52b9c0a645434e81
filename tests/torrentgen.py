"""Build good and bad .torrent files for tests, programmatically.

A bad torrent is a good base torrent plus one mutation; :func:`bad_cases`
lists one case per validation rule of :mod:`torrent.metainfo`, each with the
field (or phrase) its error message must name. Mutations that change sizes
re-derive ``pieces`` so that only the rule under test is broken.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torrent import bencoding

__all__ = [
    "PIECE",
    "BadCase",
    "bad_cases",
    "base_multi",
    "base_single",
    "bencode_raw",
    "fake_hashes",
    "fix_pieces",
]

PIECE = 16 * 1024  # smallest piece length metainfo accepts: keeps test torrents tiny


def fake_hashes(count: int, seed: bytes = b"") -> bytes:
    """``count`` distinct deterministic 20-byte digests."""
    return b"".join(hashlib.sha1(seed + i.to_bytes(4, "big")).digest() for i in range(count))


def _total(info: dict[bytes, Any]) -> int:
    if b"length" in info:
        return int(info[b"length"])
    return sum(int(f[b"length"]) for f in info[b"files"])


def fix_pieces(top: dict[bytes, Any]) -> dict[bytes, Any]:
    """Give ``top``'s info exactly the number of hashes its size needs."""
    info = top[b"info"]
    count = -(-_total(info) // info[b"piece length"])
    info[b"pieces"] = fake_hashes(count)
    return top


def base_single(length: int = 3 * PIECE + 100) -> dict[bytes, Any]:
    """A valid single-file torrent (short last piece by default)."""
    return fix_pieces(
        {
            b"announce": b"http://127.0.0.1:6969/announce",
            b"info": {b"name": b"file.bin", b"piece length": PIECE, b"length": length},
        }
    )


def base_multi() -> dict[bytes, Any]:
    """A valid multi-file torrent with a nested directory."""
    return fix_pieces(
        {
            b"announce": b"http://127.0.0.1:6969/announce",
            b"info": {
                b"name": b"dir",
                b"piece length": PIECE,
                b"files": [
                    {b"length": 20000, b"path": [b"a.bin"]},
                    {b"length": 5, b"path": [b"sub", b"b.txt"]},
                    {b"length": 30000, b"path": [b"sub", b"c.dat"]},
                ],
            },
        }
    )


def bencode_raw(*parts: bytes) -> bytes:
    """Join hand-written bencode fragments (for inputs encode() would refuse)."""
    return b"".join(parts)


@dataclass(frozen=True)
class BadCase:
    """One invalid torrent and the text its InvalidTorrent message must contain."""

    id: str
    data: bytes
    field: str


Mutation = Callable[[dict[bytes, Any]], Any]


def _mutated(base: Callable[[], dict[bytes, Any]], mutate: Mutation, fix: bool) -> bytes:
    top = copy.deepcopy(base())
    mutate(top)
    if fix:
        fix_pieces(top)
    return bencoding.encode(top)


def _set(path: tuple[Any, ...], value: Any) -> Mutation:
    def mutate(top: dict[bytes, Any]) -> None:
        node: Any = top
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value

    return mutate


def _delete(path: tuple[Any, ...]) -> Mutation:
    def mutate(top: dict[bytes, Any]) -> None:
        node: Any = top
        for step in path[:-1]:
            node = node[step]
        del node[path[-1]]

    return mutate


def _path(i: int, value: Any) -> Mutation:
    return _set((b"info", b"files", i, b"path"), value)


def bad_cases() -> list[BadCase]:
    """One generated bad torrent per validation rule."""
    s, m = base_single, base_multi
    cases: list[tuple[str, Callable[[], dict[bytes, Any]], Mutation, bool, str]] = [
        # (id, base, mutation, re-derive pieces?, expected text in the message)
        ("info-missing", s, _delete((b"info",)), False, "info"),
        ("info-not-dict", s, _set((b"info",), [1, 2]), False, "info"),
        ("piece-length-missing", s, _delete((b"info", b"piece length")),
         False, "info.piece length"),
        ("piece-length-zero", s, _set((b"info", b"piece length"), 0), False, "info.piece length"),
        ("piece-length-negative", s, _set((b"info", b"piece length"), -PIECE),
         False, "info.piece length"),
        ("piece-length-1000", s, _set((b"info", b"piece length"), 1000), True, "info.piece length"),
        ("piece-length-huge", s, _set((b"info", b"piece length"), 512 << 20),
         False, "info.piece length"),
        ("piece-length-string", s, _set((b"info", b"piece length"), b"16384"),
         False, "info.piece length"),
        ("pieces-missing", s, _delete((b"info", b"pieces")), False, "info.pieces"),
        ("pieces-not-string", s, _set((b"info", b"pieces"), 7), False, "info.pieces"),
        ("pieces-not-multiple-of-20", s, _set((b"info", b"pieces"), b"x" * 21),
         False, "info.pieces"),
        ("pieces-too-few", s, _set((b"info", b"pieces"), fake_hashes(3)), False, "info.pieces"),
        ("pieces-too-many", s, _set((b"info", b"pieces"), fake_hashes(5)), False, "info.pieces"),
        ("length-negative", s, _set((b"info", b"length"), -1), False, "info.length"),
        ("length-string", s, _set((b"info", b"length"), b"100"), False, "info.length"),
        ("length-and-files", s, _set((b"info", b"files"), [{b"length": 1, b"path": [b"x"]}]),
         False, "exactly one of"),
        ("neither-length-nor-files", s, _delete((b"info", b"length")), False, "exactly one of"),
        ("empty-single", s, _set((b"info", b"length"), 0), True, "info.length"),
        ("empty-multi", m, _set((b"info", b"files"), [{b"length": 0, b"path": [b"x"]}]),
         True, "info.files"),
        ("files-empty-list", m, _set((b"info", b"files"), []), False, "info.files"),
        ("files-not-list", m, _set((b"info", b"files"), {b"a": 1}), False, "info.files"),
        ("file-not-dict", m, _set((b"info", b"files", 1), b"oops"), False, "info.files[1]"),
        ("file-length-missing", m, _delete((b"info", b"files", 1, b"length")),
         False, "info.files[1].length"),
        ("file-length-negative", m, _set((b"info", b"files", 1, b"length"), -5),
         False, "info.files[1].length"),
        ("file-path-missing", m, _delete((b"info", b"files", 1, b"path")),
         False, "info.files[1].path"),
        ("file-path-empty-list", m, _path(1, []), False, "info.files[1].path"),
        ("file-path-not-list", m, _path(1, b"sub/b.txt"), False, "info.files[1].path"),
        ("file-path-component-int", m, _path(1, [b"sub", 3]), False, "info.files[1].path[1]"),
        ("file-path-component-empty", m, _path(1, [b"sub", b""]), False, "info.files[1].path[1]"),
        ("file-path-dotdot", m, _path(1, [b"..", b"b.txt"]), False, "info.files[1].path[0]"),
        ("file-path-dot", m, _path(1, [b".", b"b.txt"]), False, "info.files[1].path[0]"),
        ("file-path-slash", m, _path(1, [b"sub/../../b.txt"]), False, "info.files[1].path[0]"),
        ("file-path-absolute", m, _path(1, [b"/etc", b"passwd"]), False, "info.files[1].path[0]"),
        ("file-path-backslash", m, _path(1, [b"..\\..\\b.txt"]), False, "info.files[1].path[0]"),
        ("file-path-nul", m, _path(1, [b"b\x00.txt"]), False, "info.files[1].path[0]"),
        ("file-path-drive-letter", m, _path(1, [b"C:", b"b.txt"]), False, "info.files[1].path[0]"),
        ("file-path-drive-letter-relative", m, _path(1, [b"c:b.txt"]),
         False, "info.files[1].path[0]"),
        ("file-path-not-utf8", m, _path(1, [b"sub", b"\xff\xfe.txt"]),
         False, "info.files[1].path[1]"),
        ("file-path-utf8-key-bad-too", m, _set((b"info", b"files", 1, b"path.utf-8"), [b".."]),
         False, "info.files[1].path.utf-8[0]"),
        ("file-path-duplicate", m, _path(2, [b"sub", b"b.txt"]), False, "info.files[2].path"),
        ("file-is-also-directory", m, _path(0, [b"sub"]), False, "info.files[0].path"),
        ("name-missing", s, _delete((b"info", b"name")), False, "info.name"),
        ("name-empty", s, _set((b"info", b"name"), b""), False, "info.name"),
        ("name-dotdot", m, _set((b"info", b"name"), b".."), False, "info.name"),
        ("name-slash", m, _set((b"info", b"name"), b"a/b"), False, "info.name"),
        ("name-absolute", s, _set((b"info", b"name"), b"/etc/passwd"), False, "info.name"),
        ("name-backslash", s, _set((b"info", b"name"), b"a\\b"), False, "info.name"),
        ("name-nul", s, _set((b"info", b"name"), b"a\x00b"), False, "info.name"),
        ("name-drive-letter", s, _set((b"info", b"name"), b"C:"), False, "info.name"),
        ("name-not-utf8", s, _set((b"info", b"name"), b"caf\xe9"), False, "info.name"),
        ("name-not-string", s, _set((b"info", b"name"), 5), False, "info.name"),
        ("v2-only-without-pieces-root", s, _v2_only, False,
         "info.file tree['file.bin'].pieces root"),
        ("meta-version-3", s, _set((b"info", b"meta version"), 3), False, "info.meta version"),
        ("hybrid-piece-length-not-power-of-two", s, _hybrid_piece_length(3 * PIECE),
         True, "info.piece length"),
        ("private-not-int", s, _set((b"info", b"private"), b"1"), False, "info.private"),
        ("announce-not-string", s, _set((b"announce",), 7), False, "announce"),
        ("announce-list-not-list", s, _set((b"announce-list",), b"http://x/"),
         False, "announce-list"),
        ("announce-list-tier-not-list", s, _set((b"announce-list",), [b"http://x/"]),
         False, "announce-list[0]"),
        ("announce-list-url-not-string", s, _set((b"announce-list",), [[b"http://x/", 5]]),
         False, "announce-list[0][1]"),
    ]  # fmt: skip
    out = [
        BadCase(id, _mutated(base, mutate, fix), field) for id, base, mutate, fix, field in cases
    ]
    # Inputs encode() refuses to produce: write them by hand.
    good = bencoding.encode(base_single())
    out += [
        BadCase("top-level-list", b"li1ee", "top level must be a dict"),
        BadCase("empty-file", b"", "not valid bencode"),
        BadCase("truncated", good[:-1], "not valid bencode"),
        BadCase("trailing-data", good + b"\nx", "not valid bencode"),
        BadCase("not-bencode", b"<html>404</html>", "not valid bencode"),
        BadCase(
            "duplicate-info-key",
            b"d4:infod4:name1:ae4:infod4:name1:bee",
            "duplicate dict key",
        ),
        BadCase("string-length-lie", b"d4:info999999999999:xe", "not valid bencode"),
    ]
    return out


def _v2_only(top: dict[bytes, Any]) -> None:
    info = top[b"info"]
    info[b"meta version"] = 2
    info[b"file tree"] = {b"file.bin": {b"": {b"length": info[b"length"]}}}
    del info[b"pieces"], info[b"length"]


def _hybrid_piece_length(value: int) -> Mutation:
    def mutate(top: dict[bytes, Any]) -> None:
        top[b"info"][b"piece length"] = value
        top[b"info"][b"meta version"] = 2
        top[b"info"][b"file tree"] = {b"file.bin": {b"": {b"length": top[b"info"][b"length"]}}}

    return mutate
