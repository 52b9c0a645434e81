"""Reading, validating and building .torrent metainfo (BEP 3, 12, 27, 47, 52).

Theory of operation
-------------------
:func:`parse` decodes the file with the strict decoder of
:mod:`torrent.bencoding` (bounded, no duplicate keys, byte spans of the
top-level values), then checks every field the downloader relies on and turns
it into a frozen :class:`Metainfo`. Whatever is wrong raises
:class:`~torrent.errors.InvalidTorrent` with a one-line message naming the
field, e.g. ``invalid torrent: info.piece length: must be an integer between
16 KiB and 536854528 (512 MiB less 16 KiB, libtorrent's limit), got 1000``.
Where it is safe the reading is
libtorrent's (2.1: ``torrent_info.cpp``, ``file_storage.cpp``); where
libtorrent would rename or rewrite, we refuse (docs/ARCHITECTURE.md, "Torrents
as we read them").

The info-hash is SHA-1 over the exact bytes of the ``info`` value as they sit
in the file (never a re-encoding: real torrents carry unsorted and unknown
keys, and peers and trackers know the torrent by the hash of those bytes).

Rules, and why:

- ``piece length``: an integer from 16 KiB (one request block, BEP 3's de
  facto minimum) to 32767 blocks of 16 KiB (libtorrent's limit; whether the
  shared-memory arena can hold such pieces is checked before any file is
  created). BEP 3 does not require a power of two and old torrents exist
  without one, so v1 torrents may have any length in range; hybrids must use
  a power of two (BEP 52).
- The input may end in whitespace after the top-level dict (libtorrent
  ignores it); any other trailing byte is refused.
- ``pieces``: a byte string of 20-byte SHA-1 digests, exactly
  ``ceil(total_size / piece length)`` of them. A torrent of total size 0 is
  refused (there is nothing to download and no piece to verify).
- exactly one of ``length`` (single file) or ``files`` (multi-file, a
  non-empty list); lengths are non-negative integers.
- Paths are **rejected, not sanitised**: a path component ``..``, ``.`` or
  empty, one containing ``/``, ``\\`` or NUL, or a drive letter (``C:``)
  refuses the whole torrent, as does a ``name`` breaking the same rules.
  Renaming files silently would produce a download other clients could not
  seed from the same directory; refusing is the safe, explainable choice.
  Two files with the same path, or a file whose path is a directory of
  another file (``a/b`` and ``a/b/c``), are refused too. Pad files are never
  written, so they are exempt (libtorrent reuses ``.pad/N`` paths).
- Names the filesystem cannot hold are refused when read, not when opened:
  a component over ``MAX_NAME_BYTES`` (255, NAME_MAX) or a path over
  ``MAX_PATH_BYTES`` (4095, PATH_MAX less its NUL), name included (pad files
  exempt). libtorrent cuts components to 240 bytes instead; we keep them.
- Names and paths must be UTF-8; ``name.utf-8`` / ``path.utf-8`` win when
  present and valid (the convention of BitComet-era torrents).
- Pad files (BEP 47): ``attr`` containing ``p`` (``path`` then optional:
  listed as ``.pad/LENGTH``, libtorrent's name), a first path component
  ``.pad`` (libtorrent's convention), or ``_____padding_file_`` anywhere in
  the path (BitComet's; libtorrent's rule). They count in sizes and offsets,
  as in libtorrent, and are never written to disk.
- Symlinks (BEP 47 ``l``): 0 bytes whatever ``length`` says (it may be
  absent); ``symlink path`` is relative to the torrent's root and holds
  plain names only (``..``, ``.``, empty or separator components refuse the
  torrent: libtorrent drops them, but such a target could lead outside the
  output directory). A target that is no file or directory of the torrent,
  directly or through its other links, points to the link itself
  (libtorrent's ``sanitize_symlinks``). ``l`` without ``symlink path`` is an
  empty file, as libtorrent reads it. ``x`` (executable) and ``h`` (hidden)
  are recorded; a per-file ``sha1`` is ignored.
- Trackers (BEP 12): tiers in file order from ``announce-list``; when it has
  no usable URL, ``announce``. URLs must be strings (anything else refuses
  the torrent), but URLs with a scheme we cannot speak (anything but http,
  https, udp), or not UTF-8, are dropped silently: a torrent is still usable
  through its other trackers. Duplicate URLs keep their first place.
- Web seeds (BEP 19): ``url-list``, one URL or a list of them. Entries that
  are not http(s) URLs, not UTF-8 or not strings are dropped silently (the
  torrent is still usable through its peers); duplicates keep their first
  place; at most ``MAX_WEB_SEEDS`` are kept.
- ``private`` (BEP 27): an integer when present; 1 means private.
- BEP 52: ``meta version`` 2 with ``pieces`` is a hybrid, read through its v1
  part; ``meta version`` 2 without ``pieces`` is v2-only: its files come from
  the ``file tree`` (tree order), with the pad files libtorrent 2.1 lays out
  after each non-empty file not ending on a piece boundary (``.pad/N``, the
  last file included), so sizes and piece counts are libtorrent's; every
  piece holds bytes of one file, checked by its merkle root
  (:mod:`torrent.v2pieces`) in ``verify``, the download and the resume check,
  and it is known on the wire by its truncated v2 info-hash. Both carry
  ``info_hash_v2``, the SHA-256 of the info bytes. The top-level ``piece
  layers`` must be a dict of 32-byte roots to whole hashes; every file larger
  than one piece needs its layer, exactly 32 bytes per piece, hashing up to
  its ``pieces root`` (:func:`torrent.merkle.check_piece_layer`); layers of
  roots no file has are ignored (libtorrent 2.0 ignores them). A hybrid with
  no ``piece layers`` at all (a magnet's fetched info dict) is read through
  its v1 part, as libtorrent reads it; a v2-only torrent needs them (we could
  verify nothing without them). A hybrid's halves must agree (:func:`_check_hybrid`): the file tree
  is well formed and lists the v1 files (pads aside) in the same order, with
  the same lengths and symlink targets; each non-empty v1 file starts where
  the v2 layout puts it (a piece boundary), and the total is the v2
  layout's, with or without a tail pad.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torrent import bencoding, merkle
from torrent.bencoding import BencodeError
from torrent.errors import InvalidTorrent
from torrent.webseed import MAX_WEB_SEEDS, checked_url

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "MAX_PIECE_LENGTH",
    "MAX_TORRENT_SIZE",
    "MIN_PIECE_LENGTH",
    "SHA1_LEN",
    "TRACKER_SCHEMES",
    "FileEntry",
    "Metainfo",
    "build",
    "load",
    "pad_layout",
    "parse",
    "v2_order",
]

# Largest .torrent file read. The biggest real ones (10**5 files, or v2 piece
# layers) are tens of MB; the bound keeps a hostile file to one bounded read.
MAX_TORRENT_SIZE = bencoding.MAX_INPUT

# One request block (BEP 3 clients request 16 KiB); smaller pieces would make
# every piece a partial block and are not produced by any current client.
MIN_PIECE_LENGTH = 16 * 1024

# Upper bound on piece length: libtorrent's (file_storage::max_piece_size,
# 32767 blocks of 16 KiB: 512 MiB less one block). A piece is assembled whole
# in one shared-memory slot; whether the arena can hold it is checked before
# any file is created (torrent.shm.plan_slots).
MAX_PIECE_LENGTH = 32767 * 16 * 1024

# Filesystem limits on what we create (Linux: NAME_MAX 255 bytes a component,
# PATH_MAX 4096 bytes a path with its NUL). A torrent whose names exceed them
# is refused when read, not when the file is opened mid-download.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4095

# BEP 3: 'pieces' is a concatenation of 20-byte SHA-1 digests.
SHA1_LEN = 20

# Tracker URL schemes we can announce to (BEP 3 http(s), BEP 15 udp).
TRACKER_SCHEMES = ("http://", "https://", "udp://")

# BEP 47 pad-file marker in 'attr', and libtorrent's directory for pad files.
_PAD_ATTR = "p"
_PAD_DIR = ".pad"
# BEP 47's other attributes: symlink, executable, hidden.
_LINK_ATTR = "l"
_EXEC_ATTR = "x"
_HIDDEN_ATTR = "h"
# BitComet's pad files: libtorrent treats a file as a pad when this occurs
# anywhere in its path (torrent_info.cpp, extract_single_file).
_BITCOMET_PAD = "_____padding_file_"

# Bytes after the top-level dict that parse() ignores.
_TRAILING_SPACE = (b" ", b"\t", b"\r", b"\n")

_DRIVE_RE = re.compile(r"[A-Za-z]:")
# Fast pre-check: matches exactly the components _check_component refuses, so
# the common (safe) case costs one regex search and no message formatting.
_UNSAFE_RE = re.compile(r"[/\\\x00]|\A(?:[A-Za-z]:|\.{0,2}\Z)")


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of the torrent.

    Attributes:
        path: relative to the output directory, '/'-separated, exactly as
            written in the torrent; for multi-file torrents it starts with
            the torrent name.
        length: size in bytes.
        offset: byte offset of the file's first byte in the torrent's
            concatenated byte space.
        pad: BEP 47 pad file: counted in sizes and offsets, never written.
        attr: the BEP 47 attribute string ('p' pad, 'x' executable, 'h'
            hidden, 'l' symlink), "" when absent.
        symlink: a BEP 47 symlink's target, relative to the output directory
            and '/'-separated like ``path`` (the torrent's ``symlink path``
            under the torrent's root); None for every other file. A symlink
            holds no byte of the torrent (its length is 0).
        pieces_root: BEP 52: the file's ``pieces root`` from the ``file tree``
            (32 bytes) in v2-only and hybrid torrents; ``b""`` for v1
            torrents, pad files, symlinks and empty files.
    """

    path: str
    length: int
    offset: int
    pad: bool
    attr: str = ""
    symlink: str | None = None
    pieces_root: bytes = b""

    def __reduce__(self) -> tuple[type[FileEntry], tuple[object, ...]]:
        # pickled into every worker's config: a plain constructor call is 3x faster
        # to pickle and 6x to unpickle than a slotted dataclass's state (10,000
        # files: 36 and 63 ms, now 11 and 11)
        return (FileEntry, (self.path, self.length, self.offset, self.pad, self.attr,
                            self.symlink, self.pieces_root))

    @property
    def executable(self) -> bool:
        """BEP 47 ``x``: the file gets its executable bits once complete."""
        return _EXEC_ATTR in self.attr and self.symlink is None and not self.pad

    @property
    def hidden(self) -> bool:
        """BEP 47 ``h``: recorded only."""
        return _HIDDEN_ATTR in self.attr


@dataclass(frozen=True, slots=True)
class Metainfo:
    """A validated torrent. Build it with :func:`parse` or :func:`load`.

    Attributes:
        info_hash: SHA-1 of the exact info bytes (the v1 info-hash, also for
            hybrids).
        name: the torrent's name (file name, or top directory).
        piece_length: bytes per piece (the last piece may be shorter).
        piece_hashes: concatenated 20-byte SHA-1 digests, one per piece.
        num_pieces: number of pieces.
        total_size: sum of all file lengths, pad files included.
        files: every file in torrent order, pad files included.
        trackers: tiers of tracker URLs in file order (BEP 12).
        private: BEP 27 private flag.
        multi_file: the torrent has a 'files' list.
        hybrid: BEP 52 v1+v2 hybrid (read through its v1 part).
        v2_only: BEP 52 v2-only torrent: read (files, pieces roots, piece
            layers checked), checked by its merkle roots; ``piece_hashes`` is
            empty and ``files`` holds the pad files libtorrent lays out
            after files (every file starts on a piece boundary).
        info_hash_v2: SHA-256 of the exact info bytes for v2-only and hybrid
            torrents (BEP 52), None for v1.
        info_bytes: the exact bencoded info dict from the file.
        comment, created_by, creation_date: informational, None if absent.
        piece_layers: a v2-only or hybrid torrent's raw bencoded top-level
            'piece layers' (every layer checked against its file's pieces
            root when read), if any.
        web_seeds: BEP 19 ``url-list`` URLs (http and https only).
    """

    info_hash: bytes
    name: str
    piece_length: int
    piece_hashes: bytes
    num_pieces: int
    total_size: int
    files: tuple[FileEntry, ...]
    trackers: tuple[tuple[str, ...], ...]
    private: bool
    multi_file: bool
    hybrid: bool
    info_bytes: bytes
    comment: str | None = None
    created_by: str | None = None
    creation_date: int | None = None
    piece_layers: bytes | None = None
    web_seeds: tuple[str, ...] = ()
    v2_only: bool = False
    info_hash_v2: bytes | None = None

    @property
    def info_hash_hex(self) -> str:
        """The info-hash as 40 lowercase hex digits."""
        return self.info_hash.hex()

    @property
    def info_hash_v2_hex(self) -> str | None:
        """The v2 info-hash as 64 lowercase hex digits (None for a v1 torrent)."""
        return None if self.info_hash_v2 is None else self.info_hash_v2.hex()

    @property
    def info_hash_v2_truncated(self) -> bytes | None:
        """The v2 info-hash cut to 20 bytes: what v2 handshakes, trackers and
        the DHT carry (BEP 52); None for a v1 torrent."""
        return None if self.info_hash_v2 is None else self.info_hash_v2[:SHA1_LEN]

    def piece_size(self, index: int) -> int:
        """Size of piece ``index`` in bytes (the last one may be short).

        Raises:
            IndexError: index out of range.
        """
        if not 0 <= index < self.num_pieces:
            raise IndexError(f"piece {index} out of range 0..{self.num_pieces - 1}")
        if index == self.num_pieces - 1:
            return self.total_size - self.piece_length * index
        return self.piece_length

    def piece_hash(self, index: int) -> bytes:
        """The expected 20-byte SHA-1 digest of piece ``index``.

        Raises:
            IndexError: index out of range.
        """
        if not 0 <= index < self.num_pieces:
            raise IndexError(f"piece {index} out of range 0..{self.num_pieces - 1}")
        return self.piece_hashes[index * SHA1_LEN : (index + 1) * SHA1_LEN]

    def to_json_dict(self) -> dict[str, Any]:
        """The object `fasttorrent info --json` prints."""
        files: list[dict[str, Any]] = []
        for f in self.files:
            entry: dict[str, Any] = {"path": f.path, "length": f.length}
            if f.pad:
                entry["pad"] = True
            if f.symlink is not None:
                entry["symlink"] = f.symlink
            if f.executable:
                entry["executable"] = True
            if f.hidden:
                entry["hidden"] = True
            if f.pieces_root:
                entry["pieces_root"] = f.pieces_root.hex()
            files.append(entry)
        return {
            "info_hash": None if self.v2_only else self.info_hash_hex,
            "info_hash_v2": self.info_hash_v2_hex,
            "name": self.name,
            "total_size": self.total_size,
            "piece_length": self.piece_length,
            "num_pieces": self.num_pieces,
            "private": self.private,
            "trackers": [list(tier) for tier in self.trackers],
            "web_seeds": list(self.web_seeds),
            "files": files,
            "hybrid": self.hybrid,
            "v2_only": self.v2_only,
            "multi_file": self.multi_file,
        }


def _bad(field: str, why: str) -> InvalidTorrent:
    return InvalidTorrent(f"invalid torrent: {field}: {why}")


def _is_int(value: object) -> bool:
    # bencode has no booleans; bencode.py never returns one, but build() callers might.
    return isinstance(value, int) and not isinstance(value, bool)


def _short(raw: bytes | str) -> str:
    """A bounded repr for error messages (a path component can be megabytes)."""
    return repr(raw[:60]) + ("..." if len(raw) > 60 else "")


def _text(d: dict[bytes, Any], key: bytes, field: str) -> str:
    """A UTF-8 name or path component list entry: prefer '<key>.utf-8' when valid."""
    alt = d.get(key + b".utf-8")
    if isinstance(alt, bytes):
        try:
            return alt.decode("utf-8")
        except UnicodeDecodeError:
            pass
    raw = d.get(key)
    if raw is None:
        raise _bad(field, "missing")
    if not isinstance(raw, bytes):
        raise _bad(field, f"must be a byte string, got {type(raw).__name__}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(field, f"not valid UTF-8 at byte {exc.start}: {_short(raw)}") from None


def _check_component(comp: str, field: str) -> None:
    """Refuse a path component that could escape or confuse the output directory."""
    if not comp:
        raise _bad(field, "empty path component")
    if comp in (".", ".."):
        raise _bad(field, f"unsafe path component {comp!r}")
    for ch, what in (("/", "'/'"), ("\\", "'\\'"), ("\0", "NUL")):
        if ch in comp:
            raise _bad(field, f"path component contains {what}: {_short(comp)}")
    if _DRIVE_RE.match(comp):
        raise _bad(field, f"path component is a drive letter: {_short(comp)}")


def _optional_text(d: dict[bytes, Any], key: bytes) -> str | None:
    """An informational string: lenient (wrong type -> None, bad UTF-8 replaced)."""
    for k in (key + b".utf-8", key):
        v = d.get(k)
        if isinstance(v, bytes):
            return v.decode("utf-8", "replace")
    return None


def _trackers(top: dict[bytes, Any]) -> tuple[tuple[str, ...], ...]:
    seen: set[str] = set()

    def usable(raw: object, field: str) -> str | None:
        if not isinstance(raw, bytes):
            raise _bad(field, f"must be a string, got {type(raw).__name__}")
        try:
            url = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            return None
        if not url.lower().startswith(TRACKER_SCHEMES) or url in seen:
            return None
        seen.add(url)
        return url

    tiers: list[tuple[str, ...]] = []
    announce_list = top.get(b"announce-list")
    if announce_list is not None:
        if not isinstance(announce_list, list):
            raise _bad("announce-list", "must be a list of tiers")
        for t, tier in enumerate(announce_list):
            if not isinstance(tier, list):
                raise _bad(f"announce-list[{t}]", "must be a list of URLs")
            urls = [usable(u, f"announce-list[{t}][{i}]") for i, u in enumerate(tier)]
            kept = tuple(u for u in urls if u is not None)
            if kept:
                tiers.append(kept)
    announce = top.get(b"announce")
    if announce is not None:
        url = usable(announce, "announce")
        if not tiers and url is not None:
            tiers.append((url,))
    return tuple(tiers)


def _web_seeds(top: dict[bytes, Any]) -> tuple[str, ...]:
    raw = top.get(b"url-list")
    items = raw if isinstance(raw, list) else [raw] if raw is not None else []
    out: list[str] = []
    for item in items:
        if len(out) >= MAX_WEB_SEEDS:
            break
        if not isinstance(item, bytes):
            continue
        try:
            url = checked_url(item.decode("utf-8"))
        except UnicodeDecodeError:
            continue
        if url is not None and url not in out:
            out.append(url)
    return tuple(out)


def _attr(d: dict[bytes, Any]) -> str:
    attr = d.get(b"attr")
    return attr.decode("ascii", "replace") if isinstance(attr, bytes) else ""


def _check_fits(comps: Sequence[bytes], field: str, shown: str) -> None:
    """Refuse a path the filesystem cannot hold: a component over MAX_NAME_BYTES,
    or the whole (relative) path over MAX_PATH_BYTES."""
    total = len(comps) - 1
    for c in comps:
        if len(c) > MAX_NAME_BYTES:
            raise _bad(field, f"{_short(shown)}: a name of {len(c)} bytes is longer than the"
                       f" filesystem's limit of {MAX_NAME_BYTES}")
        total += len(c)
    if total > MAX_PATH_BYTES:
        raise _bad(field, f"{_short(shown)}: the path is {total} bytes, longer than the"
                   f" filesystem's limit of {MAX_PATH_BYTES}")


def _path_text(path: list[Any], field: str) -> list[str]:
    """Decode and check the components of a path list (raises naming ``field[j]``)."""
    comps: list[str] = []
    for j, comp in enumerate(path):
        # Field names are only formatted on the error path: this loop runs
        # once per path component of every file (10**5 in big torrents).
        if not isinstance(comp, bytes):
            raise _bad(f"{field}[{j}]", f"must be a byte string, got {type(comp).__name__}")
        try:
            text = comp.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _bad(
                f"{field}[{j}]", f"not valid UTF-8 at byte {exc.start}: {_short(comp)}"
            ) from None
        if _UNSAFE_RE.search(text):
            _check_component(text, f"{field}[{j}]")
        comps.append(text)
    return comps


def _symlink_target(f: dict[bytes, Any], field: str, link: str, root: list[str]) -> str:
    """A BEP 47 symlink's target: relative to the torrent's root, plain names only."""
    raw = f.get(b"symlink path")
    if not isinstance(raw, list) or not raw:
        raise _bad(f"{field}.symlink path", f"symlink {link!r}: must be a non-empty list of"
                   " strings")
    if not all(isinstance(c, bytes) for c in raw):
        raise _bad(f"{field}.symlink path", f"symlink {link!r}: must be a list of strings")
    shown = "/".join(c.decode("utf-8", "replace") for c in raw)
    try:
        comps = [c.decode("utf-8") for c in raw]
    except UnicodeDecodeError:
        raise _bad(f"{field}.symlink path", f"symlink {link!r}: target not valid UTF-8: "
                   f"{_short(shown)}") from None
    for c in comps:
        if _UNSAFE_RE.search(c):
            raise _bad(f"{field}.symlink path", f"symlink {link!r} points to {_short(shown)}:"
                       " not a relative path inside the torrent (it could lead outside the"
                       " output directory)")
    target = [*root, *comps]
    _check_fits([c.encode() for c in target], f"{field}.symlink path", "/".join(target))
    return "/".join(target)


def _files(info: dict[bytes, Any], name: str) -> tuple[tuple[FileEntry, ...], bool]:
    has_length = b"length" in info
    has_files = b"files" in info
    if has_length == has_files:
        raise _bad("info", "must have exactly one of 'length' (one file) or 'files' (several)")
    name_b = name.encode()
    if has_length:
        length = info[b"length"]
        if not _is_int(length) or length < 0:
            raise _bad("info.length", f"must be a non-negative integer, got {length!r}")
        attr_s = _attr(info)
        if _LINK_ATTR in attr_s:
            length = 0  # a lone symlink holds no data: an empty torrent
        pad = _PAD_ATTR in attr_s or _BITCOMET_PAD in name
        if not pad:
            _check_fits([name_b], "info.name", name)
        return (FileEntry(name, length, 0, pad, attr_s),), False

    raw_files = info[b"files"]
    if not isinstance(raw_files, list) or not raw_files:
        raise _bad("info.files", "must be a non-empty list")
    _check_fits([name_b], "info.name", name)
    entries: list[FileEntry] = []
    offset = 0
    real_paths: dict[tuple[str, ...], int] = {}
    for i, f in enumerate(raw_files):
        field = f"info.files[{i}]"
        if not isinstance(f, dict):
            raise _bad(field, "must be a dict")
        attr_s = _attr(f)
        link = _LINK_ATTR in attr_s
        flen: Any = f.get(b"length")
        if link:
            flen = 0  # a symlink holds no byte of the torrent, whatever 'length' says
        elif not _is_int(flen) or flen < 0:
            raise _bad(f"{field}.length", f"must be a non-negative integer, got {flen!r}")
        path = f.get(b"path.utf-8")
        key = "path.utf-8"
        if not _valid_path_list(path):
            path, key = f.get(b"path"), "path"
        if (not isinstance(path, list) or not path) and _PAD_ATTR in attr_s:
            # a pad without a path: libtorrent's name for it, outside the torrent's
            # directory (never written, so its path is only what 'info' shows)
            entries.append(FileEntry(f"{_PAD_DIR}/{flen}", flen, offset, True, attr_s))
            offset += flen
            continue
        if not isinstance(path, list) or not path:
            raise _bad(f"{field}.path", "must be a non-empty list of strings")
        comps = _path_text(path, f"{field}.{key}")
        full = "/".join([name, *comps])
        pad = _PAD_ATTR in attr_s or comps[0] == _PAD_DIR or _BITCOMET_PAD in full
        target = None
        if not pad:
            t = tuple(comps)
            if t in real_paths:
                raise _bad(f"{field}.path", f"same path as info.files[{real_paths[t]}]")
            real_paths[t] = i
            _check_fits([name_b, *path], f"{field}.{key}", full)
            # libtorrent: 'l' without a 'symlink path' is an ordinary (empty) file
            if link and b"symlink path" in f:
                target = _symlink_target(f, field, full, [name])
        entries.append(FileEntry(full, flen, offset, pad, attr_s, target))
        offset += flen
    # A file whose path is a directory of another file cannot be created.
    dirs: dict[tuple[str, ...], int] = {}
    for t, i in real_paths.items():
        for k in range(1, len(t)):
            dirs.setdefault(t[:k], i)
    for t, i in real_paths.items():
        if t in dirs:
            raise _bad(
                f"info.files[{i}].path",
                f"{'/'.join(t)!r} is a file and a directory of info.files[{dirs[t]}]",
            )
    return tuple(entries), True


# Symlinks followed through other symlinks while resolving one target (Linux's
# MAXSYMLINKS): bounds the work a torrent of many chained links can cause.
MAX_SYMLINK_HOPS = 40


def _sanitize_symlinks(files: tuple[FileEntry, ...]) -> tuple[FileEntry, ...]:
    """libtorrent's ``file_storage::sanitize_symlinks``: a symlink whose target is
    not a file or directory of the torrent (directly, or through the torrent's
    other symlinks) is made to point to itself, as libtorrent makes it.

    Targets are already plain names under the torrent's root (no ``..``, not
    absolute: :func:`_symlink_target`), so every link stays inside it.
    """
    links = [k for k, f in enumerate(files) if f.symlink is not None]
    if not links:
        return files
    paths = {f.path: f for f in files}
    dirs = {f.path[:i] for f in files for i, ch in enumerate(f.path) if ch == "/"}
    dir_links: dict[str, str] = {}
    pending: list[int] = []
    for k in links:
        f = files[k]
        t = f.symlink
        assert t is not None
        hit = paths.get(t)
        if hit is not None and hit.symlink is None:
            continue
        dir_links[f.path] = t  # a directory, or maybe one (another link)
        if hit is None and t not in dirs:
            pending.append(k)
    out = list(files)
    for k in pending:
        f = files[k]
        target = f.symlink
        assert target is not None
        hops = 0
        ok = True
        i = target.find("/")
        while i != -1:
            branch = target[:i]
            if branch not in dirs:
                via = dir_links.get(branch)
                hops += 1
                if via is None or hops > MAX_SYMLINK_HOPS:
                    ok = False
                    break
                target = via + target[i:]
                i = target.find("/")
                continue
            i = target.find("/", i + 1)
        if not ok or (target not in paths and target not in dirs):
            out[k] = FileEntry(f.path, f.length, f.offset, f.pad, f.attr, f.path)
    return tuple(out)


_PIECES_ROOT_LEN = 32  # BEP 52: SHA-256 merkle root of a file


@dataclass(frozen=True, slots=True)
class _TreeFile:
    """One file of a v2 ``file tree``, in tree order."""

    path: str
    length: int
    symlink: str | None
    attr: str
    pieces_root: bytes


def _tree_files(tree: object, name: str, multi_file: bool, what: str) -> list[_TreeFile]:
    """A v2 ``file tree``'s files in tree order (paths start with ``name`` when
    ``multi_file``).

    Walked with an explicit stack (the decoder already bounds the nesting).
    Paths are checked like v1 paths; a broken node raises naming its path.
    """
    if not isinstance(tree, dict) or not tree:
        raise _bad("info.file tree", f"missing, empty or not a dict ({what} needs it)")
    out: list[_TreeFile] = []
    root = [name] if multi_file else []
    stack: list[tuple[Any, list[str]]] = [(iter(tree.items()), root)]
    while stack:
        it, prefix = stack[-1]
        item = next(it, None)
        if item is None:
            stack.pop()
            continue
        key, node = item
        field = "info.file tree"
        [comp] = _path_text([key], field)
        comps = [*prefix, comp]
        path = "/".join(comps)
        field = f"info.file tree[{_short(path)}]"
        if not isinstance(node, dict) or not node:
            raise _bad(field, "must be a non-empty dict")
        if b"" not in node:
            stack.append((iter(node.items()), comps))
            continue
        leaf = node[b""]
        if len(node) != 1 or not isinstance(leaf, dict):
            raise _bad(field, "a file's node must hold only its '' key, a dict")
        attr_s = _attr(leaf)
        length: Any = leaf.get(b"length")
        target = None
        pr: Any = b""
        if _LINK_ATTR in attr_s:
            length = 0
            if b"symlink path" in leaf:
                target = _symlink_target(leaf, field, path, [name] if multi_file else [])
        elif not _is_int(length) or length < 0:
            raise _bad(f"{field}.length", f"must be a non-negative integer, got {length!r}")
        elif length > 0:
            pr = leaf.get(b"pieces root")
            if not isinstance(pr, bytes) or len(pr) != _PIECES_ROOT_LEN:
                raise _bad(f"{field}.pieces root", f"must be a {_PIECES_ROOT_LEN}-byte string")
        out.append(_TreeFile(path, length, target, attr_s, pr))
    return out


def _v2_files(info: dict[bytes, Any], name: str, piece_length: int
              ) -> tuple[tuple[FileEntry, ...], list[_TreeFile], bool, str]:
    """A v2-only torrent's files as libtorrent 2.1 lays them out: after each
    non-empty file that does not end on a piece boundary (the last one too, and
    even the only one), a pad file ``<name>/.pad/N`` (attr ``p``). Also its name:
    a tree of one file at the top is a single-file torrent named by that file's
    key, whatever ``name`` says (libtorrent makes such a torrent of a directory
    holding one file, and reads it so)."""
    tree = info.get(b"file tree")
    top = next(iter(tree.values())) if isinstance(tree, dict) and len(tree) == 1 else None
    multi_file = not (isinstance(top, dict) and b"" in top)
    v2 = _tree_files(tree, name, multi_file, "a v2 torrent")
    if not multi_file:
        name = v2[0].path
    name_b = name.encode()
    entries: list[FileEntry] = []
    pos = 0
    for f in v2:
        comps = [c.encode() for c in f.path.split("/")]
        _check_fits(comps if multi_file else [name_b], "info.file tree", f.path)
        entries.append(FileEntry(f.path, f.length, pos, False, f.attr, f.symlink, f.pieces_root))
        pos += f.length
        if pos % piece_length:
            pad = piece_length - pos % piece_length
            entries.append(FileEntry("/".join([name, _PAD_DIR, str(pad)]), pad, pos, True,
                                     _PAD_ATTR))
            pos += pad
    return tuple(entries), v2, multi_file, name


def _check_hybrid(
    info: dict[bytes, Any],
    name: str,
    files: tuple[FileEntry, ...],
    multi_file: bool,
    piece_length: int,
) -> list[_TreeFile]:
    """Refuse a hybrid whose v1 and v2 halves describe different files; return
    the v2 half's files.

    Same files in the same order (path, length, symlink target); in the v1
    list each non-empty file starts where the v2 layout puts it (at a piece
    boundary: pad files between files); the total is the v2 layout's, with or
    without a tail pad (libtorrent accepts both).
    """
    v2 = _tree_files(info.get(b"file tree"), name, multi_file, "a hybrid")
    if not multi_file and (len(v2) != 1 or v2[0].path != name):
        shown = ", ".join(repr(t.path) for t in v2[:3])
        raise _bad("info.file tree", f"a single-file hybrid must hold one file named"
                   f" info.name {name!r}, has {shown}")
    v1 = [f for f in files if not f.pad]
    what = "hybrid v1 and v2 parts disagree"
    for k in range(max(len(v1), len(v2))):
        if k >= len(v1):
            raise _bad("info.files", f"{what}: the file tree has {v2[k].path!r}, info.files not")
        if k >= len(v2):
            raise _bad("info.files", f"{what}: info.files has {v1[k].path!r}, the file tree not")
        f, t = v1[k], v2[k]
        path, length, target = t.path, t.length, t.symlink
        if f.path != path:
            raise _bad("info.files", f"{what}: file {k} is {f.path!r} in info.files but"
                       f" {path!r} in the file tree")
        if f.length != length:
            raise _bad("info.files", f"{what}: {path!r} is {f.length} bytes in info.files but"
                       f" {length} in the file tree")
        if f.symlink != target:
            raise _bad("info.files", f"{what}: symlink {path!r} points to {f.symlink!r} in"
                       f" info.files but to {target!r} in the file tree")
    pos = 0
    for f in v1:
        if f.length:
            pos = -(-pos // piece_length) * piece_length
            if f.offset != pos:
                raise _bad("info.files", f"{what}: {f.path!r} starts at byte {f.offset} in"
                           f" info.files but at {pos} in the v2 layout (pad files must start"
                           " each file on a piece boundary)")
            pos += f.length
    total = sum(f.length for f in files)
    if total not in (pos, -(-pos // piece_length) * piece_length):
        raise _bad("info.files", f"{what}: info.files totals {total} bytes, the v2 layout"
                   f" {pos} (pad files past the last file)")
    return v2


def _with_roots(files: tuple[FileEntry, ...], v2: list[_TreeFile]) -> tuple[FileEntry, ...]:
    """A hybrid's v1 files with the pieces roots of the (matching) v2 files."""
    roots = iter(t.pieces_root for t in v2)
    return tuple(f if f.pad else FileEntry(f.path, f.length, f.offset, f.pad, f.attr,
                                           f.symlink, next(roots)) for f in files)


def _check_layers(layers: object, v2: list[_TreeFile], piece_length: int, required: bool,
                  ) -> None:
    """Check the top-level ``piece layers`` (BEP 52) against the file tree.

    Every file larger than one piece needs its layer (keyed by its pieces
    root), exactly 32 bytes per piece of the file, hashing up to that root.
    Entries must be 32-byte keys to strings of whole hashes (as libtorrent
    requires); an entry for a root no file has is ignored (libtorrent 2.0
    ignores it, 2.1's ``load_torrent`` refuses it). ``required`` False: a
    hybrid without any ``piece layers`` (a magnet's fetched info dict) is read
    through its v1 half.
    """
    if layers is None:
        if not required:
            return
        layers = {}
    if not isinstance(layers, dict):
        raise _bad("piece layers", f"must be a dict, got {type(layers).__name__}")
    for key, value in layers.items():
        if len(key) != merkle.HASH_SIZE:
            raise _bad("piece layers", f"a key is {len(key)} bytes, not a {merkle.HASH_SIZE}-byte"
                       " pieces root")
        if not isinstance(value, bytes) or len(value) % merkle.HASH_SIZE:
            raise _bad(f"piece layers[{key.hex()}]", f"must be a string of whole"
                       f" {merkle.HASH_SIZE}-byte hashes")
    for t in v2:
        if t.length <= piece_length:
            continue
        field = f"piece layers[{_short(t.path)}]"
        layer = layers.get(t.pieces_root)
        if layer is None:
            raise _bad(field, f"missing: a file of {t.length} bytes, more than one piece,"
                       " needs its layer (keyed by its pieces root)")
        try:
            ok = merkle.check_piece_layer(layer, t.pieces_root, t.length, piece_length)
        except ValueError as exc:
            raise _bad(field, str(exc)) from None
        if not ok:
            raise _bad(field, "does not hash to the file's pieces root")


def _valid_path_list(path: object) -> bool:
    """True when a 'path.utf-8' candidate is a non-empty list of UTF-8 byte strings."""
    if not isinstance(path, list) or not path:
        return False
    for comp in path:
        if not isinstance(comp, bytes):
            return False
        try:
            comp.decode("utf-8")
        except UnicodeDecodeError:
            return False
    return True


def parse(data: bytes, *, require_layers: bool = True) -> Metainfo:
    """Validate a .torrent file's bytes and return its :class:`Metainfo`.

    Args:
        data: the whole file.
        require_layers: False: a v2-only torrent may lack ``piece layers`` (a
            v2 magnet's info dict, read for its files before its layers are
            fetched from peers); its pieces cannot be verified then. Layers
            that are there are checked all the same.

    Returns:
        The validated metainfo.

    Raises:
        InvalidTorrent: malformed bencode, a missing or bad field (named in
            the message), unsafe paths, or a piece layer that does not match
            its file's pieces root.
    """
    if len(data) > MAX_TORRENT_SIZE:
        raise InvalidTorrent(
            f"invalid torrent: file is {len(data)} bytes, more than {MAX_TORRENT_SIZE}"
        )
    # Whitespace after the top-level dict (an editor's newline) is tolerated, as
    # libtorrent does; any other trailing byte is refused by the decoder.
    if data[-1:] in _TRAILING_SPACE:
        data = data.rstrip(b"".join(_TRAILING_SPACE))
    try:
        top, spans = bencoding.decode_with_spans(data, max_size=MAX_TORRENT_SIZE)
    except BencodeError as exc:
        raise InvalidTorrent(f"invalid torrent: not valid bencode: {exc}") from None
    if not isinstance(top, dict):
        raise InvalidTorrent("invalid torrent: top level must be a dict")
    info = top.get(b"info")
    info_span = spans.info
    if not isinstance(info, dict) or info_span is None:
        raise _bad("info", "missing or not a dict")
    info_bytes = bytes(data[info_span[0] : info_span[1]])

    hybrid = v2_only = False
    if b"meta version" in info:
        version = info[b"meta version"]
        if version != 2 or not _is_int(version):
            raise _bad("info.meta version", f"unsupported version {version!r}")
        hybrid = b"pieces" in info
        v2_only = not hybrid

    name = _text(info, b"name", "info.name")
    _check_component(name, "info.name")

    piece_length: Any = info.get(b"piece length")
    v2 = hybrid or v2_only
    if (
        not _is_int(piece_length)
        or not MIN_PIECE_LENGTH <= piece_length <= MAX_PIECE_LENGTH
        or (v2 and piece_length & (piece_length - 1))
    ):
        rule = "a power of two" if v2 else "an integer"
        raise _bad(
            "info.piece length",
            f"must be {rule} between 16 KiB and {MAX_PIECE_LENGTH} (512 MiB less 16 KiB,"
            f" libtorrent's limit), got {piece_length!r}",
        )

    tree: list[_TreeFile] = []
    pieces: Any
    if v2_only:
        files, tree, multi_file, name = _v2_files(info, name, piece_length)
        pieces = b""
        total = sum(f.length for f in files)
        if total == 0:
            raise _bad("info.file tree", "empty torrent (total size 0)")
        num_pieces = -(-total // piece_length)
    else:
        pieces = info.get(b"pieces")
        if not isinstance(pieces, bytes):
            raise _bad("info.pieces", "missing or not a byte string")
        if len(pieces) % SHA1_LEN:
            raise _bad("info.pieces", f"length {len(pieces)} is not a multiple of {SHA1_LEN}")

        files, multi_file = _files(info, name)
        total = sum(f.length for f in files)
        if total == 0:
            raise _bad("info.files" if multi_file else "info.length",
                       "empty torrent (total size 0)")
        expected = -(-total // piece_length)
        num_pieces = len(pieces) // SHA1_LEN
        if num_pieces != expected:
            raise _bad(
                "info.pieces",
                f"has {num_pieces} hashes, but {total} bytes in pieces of {piece_length}"
                f" need {expected}",
            )
        if hybrid:
            tree = _check_hybrid(info, name, files, multi_file, piece_length)
            files = _with_roots(files, tree)
    if v2:
        _check_layers(top.get(b"piece layers"), tree, piece_length,
                      required=(v2_only and require_layers) or b"piece layers" in top)
    files = _sanitize_symlinks(files)

    private = info.get(b"private", 0)
    if not _is_int(private):
        raise _bad("info.private", f"must be an integer, got {type(private).__name__}")

    creation_date = top.get(b"creation date")
    layers_span = spans.top.get(b"piece layers") if v2 else None
    info_hash_v2 = hashlib.sha256(info_bytes).digest() if v2 else None
    return Metainfo(
        # a v2-only torrent has no v1 info-hash: it is known by its truncated v2 one
        info_hash=info_hash_v2[:SHA1_LEN] if info_hash_v2 and v2_only
        else hashlib.sha1(info_bytes).digest(),
        name=name,
        piece_length=piece_length,
        piece_hashes=pieces,
        num_pieces=num_pieces,
        total_size=total,
        files=files,
        trackers=_trackers(top),
        web_seeds=_web_seeds(top),
        private=private == 1,
        multi_file=multi_file,
        hybrid=hybrid,
        info_bytes=info_bytes,
        comment=_optional_text(top, b"comment"),
        created_by=_optional_text(top, b"created by"),
        creation_date=creation_date if _is_int(creation_date) else None,
        piece_layers=bytes(data[layers_span[0] : layers_span[1]]) if layers_span else None,
        v2_only=v2_only,
        info_hash_v2=info_hash_v2,
    )


def load(path: str | os.PathLike[str]) -> Metainfo:
    """Read and parse a .torrent file, reading at most MAX_TORRENT_SIZE + 1 bytes.

    Raises:
        InvalidTorrent: the file is missing, unreadable, too big, or invalid.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TORRENT_SIZE + 1)
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise InvalidTorrent(
            f"invalid torrent: cannot read {os.fspath(path)!r}: {reason}"
        ) from None
    if len(data) > MAX_TORRENT_SIZE:
        raise InvalidTorrent(
            f"invalid torrent: {os.fspath(path)!r} is larger than {MAX_TORRENT_SIZE} bytes"
        )
    return parse(data)


def pad_layout(files: Sequence[tuple[str, int]], piece_length: int,
               ) -> list[tuple[str, int, bool]]:
    """A multi-file hybrid's v1 file list as libtorrent 2.1 lays it out (BEP 47):
    after each non-empty file not ending on a piece boundary, the last one too,
    a pad file ``.pad/N`` of the N bytes to the boundary.

    Args:
        files: ``(path, length)`` in torrent order (paths without the name).

    Returns:
        ``(path, length, pad)`` in torrent order, the pads included.
    """
    out: list[tuple[str, int, bool]] = []
    pos = 0
    for path, size in files:
        out.append((path, size, False))
        pos += size
        if pos % piece_length:
            pad = piece_length - pos % piece_length
            out.append((f"{_PAD_DIR}/{pad}", pad, True))
            pos += pad
    return out


def v2_order(path: str) -> list[bytes]:
    """The sort key that puts ``'/'``-separated paths in ``file tree`` order
    (component by component, bytewise, as a bencoded dict sorts its keys)."""
    return [c.encode() for c in path.split("/")]


def build(
    *,
    name: str,
    files: Sequence[tuple[str, int]] | None,
    length: int | None,
    piece_length: int,
    piece_hashes: bytes | None,
    trackers: Sequence[Sequence[str]] = (),
    private: bool = False,
    created_by: str = "fasttorrent",
    creation_date: int | None = None,
    comment: str | None = None,
    web_seeds: Sequence[str] = (),
    v2: Sequence[merkle.FileHashes] | None = None,
) -> bytes:
    """Encode a v1, v2-only or hybrid .torrent; the result is checked with
    :func:`parse`.

    v1: ``piece_hashes`` and no ``v2``. v2-only (BEP 52): ``v2`` and
    ``piece_hashes`` None. Hybrid: both; a multi-file hybrid's v1 list gets
    the pad files of :func:`pad_layout`, which ``piece_hashes`` must have been
    computed over. For v2 and hybrids, ``files`` must be in ``file tree``
    order (:func:`v2_order`).

    Args:
        name: the file name (single file) or top directory (multi-file).
        files: multi-file: ``(relative '/'-separated path, length)`` in torrent
            order, without the name prefix; None for a single file.
        length: single file: its size; None for multi-file.
        piece_length: bytes per piece.
        piece_hashes: concatenated SHA-1 digests of the pieces (None: v2-only).
        v2: each file's pieces root and piece layer (:func:`torrent.merkle.file_hashes`),
            in the order of ``files`` (one entry for a single file).
        trackers: tiers of tracker URLs; written as 'announce' (first URL) and,
            when there is more than one URL, 'announce-list'.
        private: set the BEP 27 private flag.
        web_seeds: BEP 19 web seed URLs, written as 'url-list'.
        created_by, creation_date, comment: informational fields (omitted when
            None; no creation date by default so builds are reproducible).

    Returns:
        The .torrent bytes (canonical bencoding).

    Raises:
        ValueError: both or neither of ``files`` and ``length``.
        InvalidTorrent: the torrent would be invalid (unsafe path, wrong number
            of hashes, ...); the message names the field as :func:`parse` does.
    """
    if (files is None) == (length is None):
        raise ValueError("build() needs exactly one of files= or length=")
    if piece_hashes is None and v2 is None:
        raise ValueError("build() needs piece_hashes=, v2=, or both")
    info: dict[bytes, Any] = {b"name": name, b"piece length": piece_length}
    top: dict[bytes, Any] = {b"info": info}
    listed = list(files) if files is not None else [(name, length or 0)]
    if piece_hashes is not None:
        info[b"pieces"] = piece_hashes
        if files is not None:
            laid = pad_layout(files, piece_length) if v2 is not None else [
                (p, n, False) for p, n in files]
            info[b"files"] = [
                {b"attr": b"p", b"length": n, b"path": p.split("/")} if pad
                else {b"length": n, b"path": p.split("/")} for p, n, pad in laid]
        else:
            info[b"length"] = length
    if v2 is not None:
        if len(v2) != len(listed):
            raise ValueError(f"build() got {len(v2)} v2 hashes for {len(listed)} files")
        info[b"meta version"] = 2
        tree: dict[bytes, Any] = {}
        layers: dict[bytes, bytes] = {}
        for (path, size), h in zip(listed, v2, strict=True):
            node = tree
            for comp in path.split("/"):
                node = node.setdefault(comp.encode(), {})
            node[b""] = {b"length": size, b"pieces root": h.pieces_root} if size else {
                b"length": 0}
            if h.piece_layer:
                layers[h.pieces_root] = h.piece_layer
        info[b"file tree"] = tree
        top[b"piece layers"] = layers
    if private:
        info[b"private"] = 1
    tiers = [list(t) for t in trackers if t]
    urls = [u for t in tiers for u in t]
    if urls:
        top[b"announce"] = urls[0]
        if len(urls) > 1:
            top[b"announce-list"] = tiers
    if web_seeds:
        top[b"url-list"] = list(web_seeds)
    if created_by:
        top[b"created by"] = created_by
    if creation_date is not None:
        top[b"creation date"] = creation_date
    if comment is not None:
        top[b"comment"] = comment
    try:
        out = bencoding.encode(top)
    except (BencodeError, UnicodeEncodeError) as exc:
        raise InvalidTorrent(f"invalid torrent: cannot encode: {exc}") from None
    parse(out)
    return out
