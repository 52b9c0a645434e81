"""fasttorrent: a multi-core BitTorrent downloader for servers.

The Python API (keyword-only options; errors are the classes below, each
saying whose fault it is)::

    download(torrent, outdir, *, workers=None, peers=(), ...) -> DownloadResult
    seed(torrent, directory, *, workers=None, peers=(), ...) -> DownloadResult
        # serves until SIGINT/SIGTERM, then raises Interrupted
    create(path, *, piece_length=None, trackers=None, private=False, workers=1,
           comment=None, ...) -> bytes                   # the .torrent's bytes
    verify(meta, directory, *, workers) -> VerifyReport  # meta: as load() returns
    load(path) -> Metainfo

The functions are imported on first use, so ``import torrent`` stays cheap:
every worker process does it.  ``torrent.create`` and ``torrent.verify`` are
the functions even once their modules are imported; import from the modules
by name (``from torrent.create import create_torrent``), not as
``import torrent.create as m``, which would give the function.
"""

from __future__ import annotations

import importlib
import sys
import types
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
    from .create import create_torrent as create
    from .metainfo import load
    from .verify import verify_data as verify

__version__ = "0.1.0"

__all__ = [
    "DiskFull",
    "FastTorrentError",
    "Incomplete",
    "Interrupted",
    "InvalidTorrent",
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
    "create": ("create", "create_torrent"),
    "verify": ("verify", "verify_data"),
    "load": ("metainfo", "load"),
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


class _Package(types.ModuleType):
    """This package's module type: ``create`` and ``verify`` are properties.

    Each names both an API function and a submodule, and importing a
    submodule sets it as an attribute of its package, which would hide the
    function from then on.  A property wins over that attribute; its setter
    drops the submodule (``sys.modules`` holds it).
    """

    create = property(lambda self: _api("create"), lambda self, value: None)
    verify = property(lambda self: _api("verify"), lambda self, value: None)


sys.modules[__name__].__class__ = _Package
