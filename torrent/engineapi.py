"""The engine interface the daemon's control API programs against, and a torrent spec's JSON form.

An engine holds many torrents in one process tree.  The daemon
(``torrent/daemon.py``) knows it only through :class:`EngineAPI`, a
``typing.Protocol``: what to add (:class:`TorrentSpec`), what to report
(:class:`TorrentStatus`), and the errors that say the caller's input was
wrong.  The engine imports this module, never the daemon, and the daemon
imports the engine only to build it, so neither depends on the other's
internals (and no import cycle runs between them).

A :class:`TorrentSpec` has one JSON form (:meth:`TorrentSpec.to_json`,
:meth:`TorrentSpec.from_json`), shared by the API's ``POST`` body and the
daemon's state records: every field is checked there, once, against a named
bound, and a refusal is one :class:`~torrent.errors.UsageError` line naming
the field.  Sans-IO: values in, values or errors out.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .errors import UsageError
from .magnet import MAX_MAGNET_LENGTH, is_magnet
from .metainfo import MAX_PATH_BYTES, MAX_TORRENT_SIZE
from .selection import MAX_SELECT_FILES, parse_select
from .webseed import MAX_URL_LENGTH, checked_url

if TYPE_CHECKING:
    from .metrics import TorrentCollector

__all__ = [
    "MAX_SAVE_PATH",
    "MAX_SELECT_LENGTH",
    "MAX_TORRENTS",
    "MAX_TORRENT_BASE64",
    "SOURCES",
    "SPEC_FIELDS",
    "STATES",
    "AlreadyAdded",
    "EngineAPI",
    "TorrentSpec",
    "TorrentStatus",
]

#: The states a torrent of the engine is in.
STATES = ("queued", "metadata", "checking", "downloading", "seeding", "paused", "completed",
          "error", "stopped")
#: Torrents one engine holds at most: each costs its piece tables, its journal,
#: a state record and a share of every scrape and listing (``GET`` answers list
#: them all); a server with more runs more daemons.
MAX_TORRENTS = 10_000
#: The longest ``save_path``: PATH_MAX less its NUL, as a torrent's own paths.
MAX_SAVE_PATH = MAX_PATH_BYTES
#: The longest ``select`` text: MAX_SELECT_FILES single indices of up to 9
#: digits, each with its comma (``--select`` bounds what it expands to).
MAX_SELECT_LENGTH = MAX_SELECT_FILES * 10
#: The longest base64 text of a .torrent: 4 characters per 3 bytes of the
#: largest .torrent read (``metainfo.MAX_TORRENT_SIZE``, 64 MiB), padded.
MAX_TORRENT_BASE64 = 4 * ((MAX_TORRENT_SIZE + 2) // 3)
#: Where a torrent comes from: exactly one of them in a spec.
SOURCES = ("magnet", "torrent", "url")
#: Every field of a spec's JSON form.
SPEC_FIELDS = (*SOURCES, "save_path", "select", "paused")

#: Line breaks and spaces a wrapped base64 text carries (``base64`` wraps at 76).
_B64_SPACE = b" \t\r\n"


class AlreadyAdded(UsageError):
    """The engine already holds a torrent of this info-hash (the API answers 409)."""


@dataclass(frozen=True, slots=True)
class TorrentSpec:
    """What to add: one source (a magnet, a .torrent's bytes or the URL of one) and how.

    Attributes:
        magnet: a magnet URI.
        torrent: a .torrent file's bytes.
        url: an http(s) URL of a .torrent.
        save_path: the directory the files go under; "" for the daemon's default
            download directory (the daemon passes an absolute path inside it).
        select: the files to download, as ``--select`` takes them (``1,3-5``);
            None for all (or a magnet's ``so=``).
        paused: added paused (nothing is fetched until it is resumed).
    """

    magnet: str | None = None
    torrent: bytes | None = None
    url: str | None = None
    save_path: str = ""
    select: str | None = None
    paused: bool = False

    def to_json(self) -> dict[str, Any]:
        """The JSON form: the source given (a .torrent as base64) and every other field."""
        out: dict[str, Any] = {}
        if self.magnet is not None:
            out["magnet"] = self.magnet
        if self.torrent is not None:
            out["torrent"] = base64.b64encode(self.torrent).decode("ascii")
        if self.url is not None:
            out["url"] = self.url
        out.update(save_path=self.save_path, select=self.select, paused=self.paused)
        return out

    @classmethod
    def from_json(cls, obj: object) -> TorrentSpec:
        """A spec from its JSON form (an API body or a state record), every field checked.

        Args:
            obj: a decoded JSON object: exactly one of ``magnet`` (text), ``torrent``
                (base64 text, line breaks allowed) or ``url`` (http or https); and
                optionally ``save_path`` (text), ``select`` (text) and ``paused``
                (true or false); a null is the field left out.

        Raises:
            UsageError: one line naming the field: an unknown field, a wrong type,
                no source or two, a value past its bound, bad base64, a bad ``select``.
        """
        if not isinstance(obj, Mapping):
            raise UsageError("body: expected a JSON object")
        for k in obj:
            if k not in SPEC_FIELDS:
                raise UsageError(f"{str(k)[:40]!r}: unknown field (expected one of "
                                 f"{', '.join(SPEC_FIELDS)})")
        given = [k for k in SOURCES if obj.get(k) is not None]
        if len(given) != 1:
            raise UsageError("magnet, torrent, url: give exactly one of them, got "
                             + (" and ".join(given) or "none"))
        magnet = _text(obj, "magnet", MAX_MAGNET_LENGTH)
        if magnet is not None and not is_magnet(magnet):
            raise UsageError("magnet: not a magnet link (expected magnet:?xt=...)")
        url = _text(obj, "url", MAX_URL_LENGTH)
        if url is not None and checked_url(url) is None:
            raise UsageError("url: expected an http or https URL without spaces or "
                             "control characters")
        b64 = _text(obj, "torrent", MAX_TORRENT_BASE64 * 2)  # room for line breaks
        torrent = None if b64 is None else _torrent_bytes(b64)
        save_path = _text(obj, "save_path", MAX_SAVE_PATH) or ""
        if "\0" in save_path:
            raise UsageError("save_path: contains a NUL character")
        select = _text(obj, "select", MAX_SELECT_LENGTH)
        if select is not None:
            try:
                parse_select(select)
            except UsageError as e:
                raise UsageError(str(e).replace("--select", "select", 1)) from None
        paused = obj.get("paused")
        if paused is None:
            paused = False
        elif not isinstance(paused, bool):
            raise UsageError("paused: expected true or false")
        return cls(magnet=magnet, torrent=torrent, url=url, save_path=save_path,
                   select=select, paused=paused)


def _text(obj: Mapping[str, Any], field: str, bound: int) -> str | None:
    """``obj[field]`` as text of at most ``bound`` characters (None when absent or null)."""
    v = obj.get(field)
    if v is None:
        return None
    if not isinstance(v, str):
        raise UsageError(f"{field}: expected a string")
    if len(v) > bound:
        raise UsageError(f"{field}: {len(v)} characters, more than {bound}")
    return v


def _torrent_bytes(text: str) -> bytes:
    """A .torrent's bytes from base64 ``text`` (spaces and line breaks ignored)."""
    try:
        raw = text.encode("ascii").translate(None, _B64_SPACE)
    except UnicodeEncodeError:
        raise UsageError("torrent: not base64 (a character outside ASCII)") from None
    if len(raw) > MAX_TORRENT_BASE64:
        raise UsageError(f"torrent: more than {MAX_TORRENT_SIZE} bytes once decoded")
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise UsageError("torrent: not valid base64") from None
    if not data:
        raise UsageError("torrent: empty")
    if len(data) > MAX_TORRENT_SIZE:
        raise UsageError(f"torrent: more than {MAX_TORRENT_SIZE} bytes once decoded")
    return data


@dataclass(frozen=True, slots=True)
class TorrentStatus:
    """One torrent as the engine sees it now.

    Attributes:
        info_hash: 40 lowercase hex digits (the v1 info-hash).
        name: the torrent's name; None while a magnet's metadata is unknown.
        state: one of :data:`STATES`.
        progress: 0..1 of the selected bytes.
        size: bytes selected; None while unknown.
        bytes_done: bytes of the selected, verified pieces.
        download_rate, upload_rate: bytes/s.
        peers: peers connected.
        save_path: the directory the files go under (absolute).
        error: the one-line reason of the ``error`` state, else None.
    """

    info_hash: str
    name: str | None
    state: str
    progress: float
    size: int | None
    bytes_done: int
    download_rate: float
    upload_rate: float
    peers: int
    save_path: str
    error: str | None


class EngineAPI(Protocol):
    """What the daemon asks of the engine. Every ``info_hash`` is 40 lowercase hex digits."""

    async def add(self, spec: TorrentSpec) -> str:
        """Add a torrent; return its info-hash (hex).

        Raises:
            AlreadyAdded: the engine holds this info-hash already.
            InvalidTorrent: the .torrent, the magnet or what the URL served is bad.
            UsageError: any other bad input (a ``select`` naming no file, a URL
                that cannot be fetched).
        """
        ...

    def torrents(self) -> list[TorrentStatus]:
        """Every torrent held, in the order they were added."""
        ...

    def status(self, info_hash: str) -> TorrentStatus:
        """One torrent. Raises KeyError when it is not held."""
        ...

    async def pause(self, info_hash: str) -> None:
        """Stop fetching and serving it, keeping what it has. Raises KeyError when unknown."""
        ...

    async def resume(self, info_hash: str) -> None:
        """Undo :meth:`pause`. Raises KeyError when unknown."""
        ...

    async def remove(self, info_hash: str, delete_data: bool) -> None:
        """Stop it and forget it; with ``delete_data`` its files too. Raises KeyError."""
        ...

    def metrics_collector(self) -> TorrentCollector:
        """The Prometheus collector over every torrent held (``GET /metrics``)."""
        ...
