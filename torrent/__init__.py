"""fasttorrent: a multi-core BitTorrent downloader for servers.

The Python API (keyword-only options; errors are the classes below, each
saying whose fault it is)::

    download(torrent, outdir, *, workers=None, peers=(), ...) -> DownloadResult
        # torrent: a .torrent path or a magnet URI
    seed(torrent, directory, *, workers=None, peers=(), ...) -> DownloadResult
        # serves until SIGINT/SIGTERM, then raises Interrupted
    create(path, *, piece_length=None, trackers=None, private=False, workers=1,
           comment=None, version="v1", ...) -> bytes     # the .torrent's bytes
        # version: "v1", "v2" (v2-only) or "hybrid" (BEP 52)
    verify(meta, directory, *, workers) -> VerifyReport  # meta: as load() returns
    load(path) -> Metainfo

    Options(workers=..., peers=..., ...)                  # every setting, checked once

The functions are imported on first use, so ``import torrent`` stays cheap:
every worker process does it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    DiskFull,
    FastTorrentError,
    Incomplete,
    Interrupted,
    InvalidTorrent,
    RemoteProtocolError,
    ResourceExhausted,
    StorageError,
    TrackerError,
    UsageError,
)

if TYPE_CHECKING:
    from .coordinator import download, seed
    from .creator import create_torrent as create
    from .metainfo import load
    from .options import Options
    from .verifier import verify_data as verify

__version__ = "0.1.0"

__all__ = [
    "DiskFull",
    "FastTorrentError",
    "Incomplete",
    "Interrupted",
    "InvalidTorrent",
    "Options",
    "RemoteProtocolError",
    "ResourceExhausted",
    "StorageError",
    "TrackerError",
    "UsageError",
    "__version__",
    "create",
    "download",
    "load",
    "seed",
    "verify",
]

#: The API functions imported on first use: name -> (module, function).
_LAZY = {
    "download": ("coordinator", "download"),
    "seed": ("coordinator", "seed"),
    "create": ("creator", "create_torrent"),
    "verify": ("verifier", "verify_data"),
    "load": ("metainfo", "load"),
    "Options": ("options", "Options"),
}


def _api(name: str) -> Any:
    module, attr = _LAZY[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), attr)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return _api(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
