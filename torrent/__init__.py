"""fasttorrent: a multi-core BitTorrent downloader for servers."""

from __future__ import annotations

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
]
