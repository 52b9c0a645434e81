"""Error types: each says whose fault it is, and the CLI maps each to an exit code.

- the input (a bad .torrent, bad flags): :class:`InvalidTorrent`, :class:`UsageError`
- the environment (disk full, permissions, /dev/shm too small): :class:`DiskFull`,
  :class:`StorageError`, :class:`ResourceExhausted`
- a remote peer or tracker: :class:`RemoteProtocolError`, :class:`TrackerError`
  (never fatal to a download: the peer is dropped, the tracker skipped)
- the outcome: :class:`Incomplete`, :class:`Interrupted`

Anything else that escapes is a bug of ours (exit 1).
"""

from __future__ import annotations

__all__ = [
    "EXIT_INTERNAL",
    "EXIT_OK",
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
]

EXIT_OK = 0
EXIT_INTERNAL = 1


class FastTorrentError(Exception):
    """Base of every error fasttorrent raises on purpose."""

    exit_code = EXIT_INTERNAL


class UsageError(FastTorrentError):
    """Bad flags or arguments."""

    exit_code = 2


class InvalidTorrent(FastTorrentError):
    """An unreadable, malformed or unsafe .torrent; the message names the field."""

    exit_code = 3


class DiskFull(FastTorrentError):
    """No space left on the output device."""

    exit_code = 4


class StorageError(FastTorrentError):
    """Any other I/O or permission error on local files."""

    exit_code = 5


class Incomplete(FastTorrentError):
    """The data is not complete: missing or bad pieces, no usable peers, a stall."""

    exit_code = 6


class Interrupted(FastTorrentError):
    """Stopped by SIGINT / SIGTERM; state was saved."""

    exit_code = 7


class ResourceExhausted(FastTorrentError):
    """A local resource ran out: shared memory, file descriptors, memory."""

    exit_code = 8


class RemoteProtocolError(FastTorrentError):
    """A peer broke the protocol. Never fatal to a download: the peer is dropped."""


class TrackerError(FastTorrentError):
    """A tracker failed or answered nonsense. Never fatal: other tiers / peers go on."""
