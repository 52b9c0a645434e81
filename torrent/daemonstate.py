"""The daemon's state directory: one record per torrent it holds, for a restart.

Layout (``--state-dir DIR``; the directory is made private, mode 0700, since a
private tracker's .torrent carries its passkey)::

    DIR/torrents/<info-hash>.json   one record per torrent
    DIR/dht.state                   the DHT's table (torrent/dht/service.py)

A record is the torrent's :class:`~torrent.engineapi.TorrentSpec` in its JSON
form (the magnet, the .torrent's bytes as base64, or the URL; the save path,
the selection, the paused flag) with a ``version`` and the ``info_hash``.
It is written whole or not at all: a temporary file beside it, ``fsync``,
``rename`` over the old one, ``fsync`` of the directory.  It is written when
the torrent is added, again when it is paused or resumed, and removed when
the torrent is.  At start every record is read back; one that cannot be read
or does not check (size, JSON, fields, a name that is not its info-hash) is
one warning line and skipped, never a traceback.  A temporary file a crash
left behind is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import replace

from .engineapi import MAX_TORRENT_BASE64, MAX_TORRENTS, TorrentSpec
from .errors import UsageError
from .storage import os_error

__all__ = ["MAX_RECORD_SIZE", "RECORD_VERSION", "StateDir", "load_state"]

#: The form of a record; a record of another version is skipped with a warning.
RECORD_VERSION = 1
#: The largest record read: a .torrent of the largest size in base64, and room
#: for the other fields (a save path and a ``select`` are bounded far below).
MAX_RECORD_SIZE = MAX_TORRENT_BASE64 + (2 << 20)
#: A record's name: its info-hash.
_RECORD_RE = re.compile(r"([0-9a-f]{40})\.json")
#: The prefix of a record being written (a dot: never taken for a record).
_TMP_PREFIX = ".tmp-"

Log = Callable[[str], None]


def _stderr(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


class StateDir:
    """The records under ``path/torrents``; made (mode 0700) when missing.

    Args:
        path: the state directory.
        log: called with one-line warnings.

    Raises:
        StorageError: the directory cannot be made.
    """

    def __init__(self, path: str, log: Log = _stderr) -> None:
        self.path = path
        self.dir = os.path.join(path, "torrents")
        self.log = log
        #: the spec of each record written or read, to rewrite it on pause / resume
        self._specs: dict[str, TorrentSpec] = {}
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
        except OSError as e:
            raise os_error(e, f"making the state directory {self.dir}") from None

    def record_path(self, info_hash: str) -> str:
        return os.path.join(self.dir, f"{info_hash}.json")

    # -- writing -----------------------------------------------------------------------------
    def save(self, info_hash: str, spec: TorrentSpec) -> None:
        """Record ``spec`` under ``info_hash`` (whole or not at all).

        Raises:
            DiskFull, StorageError: it could not be written (the old record, if
                any, is left as it was).
        """
        rec = {"version": RECORD_VERSION, "info_hash": info_hash, **spec.to_json()}
        data = json.dumps(rec, ensure_ascii=True, separators=(",", ":")).encode("ascii")
        path = self.record_path(info_hash)
        fd, tmp = -1, ""
        try:
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=_TMP_PREFIX)
            with os.fdopen(fd, "wb") as f:
                fd = -1
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            tmp = ""
            self._sync_dir()
        except OSError as e:
            if fd >= 0:
                os.close(fd)
            if tmp:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise os_error(e, f"writing {path}") from None
        self._specs[info_hash] = spec

    def set_paused(self, info_hash: str, paused: bool) -> None:
        """Rewrite the record with its ``paused`` flag (nothing when there is no record).

        Raises:
            DiskFull, StorageError: as :meth:`save`.
        """
        spec = self._specs.get(info_hash)
        if spec is not None and spec.paused != paused:
            self.save(info_hash, replace(spec, paused=paused))

    def remove(self, info_hash: str) -> None:
        """Forget the record (none there is no error).

        Raises:
            StorageError: it could not be removed.
        """
        self._specs.pop(info_hash, None)
        path = self.record_path(info_hash)
        try:
            os.unlink(path)
            self._sync_dir()
        except FileNotFoundError:
            return
        except OSError as e:
            raise os_error(e, f"removing {path}") from None

    def _sync_dir(self) -> None:
        """Make a rename or unlink in the records' directory durable."""
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- reading -----------------------------------------------------------------------------
    def load(self) -> dict[str, TorrentSpec]:
        """Every readable record, by info-hash (sorted); at most ``MAX_TORRENTS``.

        A record that cannot be read or checked is one warning and skipped; a
        temporary file left by an interrupted write is removed.
        """
        try:
            names = sorted(os.listdir(self.dir))
        except OSError as e:
            self.log(f"warning: cannot read the state directory {self.dir} "
                     f"({e.strerror or e}); no torrent restored")
            return {}
        out: dict[str, TorrentSpec] = {}
        for name in names:
            path = os.path.join(self.dir, name)
            if name.startswith(_TMP_PREFIX):
                with contextlib.suppress(OSError):
                    os.unlink(path)
                continue
            m = _RECORD_RE.fullmatch(name)
            if m is None:
                continue  # not ours: left alone
            if len(out) >= MAX_TORRENTS:
                self.log(f"warning: {self.dir} holds more than {MAX_TORRENTS} records; "
                         "the rest are skipped")
                break
            try:
                spec = self._read(path, m.group(1))
            except UsageError as e:
                self.log(f"warning: state record {path}: {e}; skipped")
                continue
            out[m.group(1)] = spec
        self._specs.update(out)
        return out

    @staticmethod
    def _read(path: str, info_hash: str) -> TorrentSpec:
        """The spec of one record (UsageError with the reason it is refused)."""
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_RECORD_SIZE + 1)
        except OSError as e:
            raise UsageError(f"cannot read it ({e.strerror or e})") from None
        if len(data) > MAX_RECORD_SIZE:
            raise UsageError(f"more than {MAX_RECORD_SIZE} bytes")
        try:
            rec = json.loads(data)
        except (ValueError, RecursionError):
            raise UsageError("not a JSON record") from None
        if not isinstance(rec, dict):
            raise UsageError("not a JSON object")
        if rec.pop("version", None) != RECORD_VERSION:
            raise UsageError(f"not a version {RECORD_VERSION} record")
        if rec.pop("info_hash", None) != info_hash:
            raise UsageError("its info_hash is not its name")
        return TorrentSpec.from_json(rec)


def load_state(path: str, log: Log = _stderr) -> list[TorrentSpec]:
    """The specs recorded in the state directory ``path`` (see :meth:`StateDir.load`)."""
    return list(StateDir(path, log).load().values())
