"""The package's public surface.

``torrent`` exports the API (``download``, ``seed``, ``create``, ``verify``,
``load``, ``Options``) and the error classes, and imports none of the API's
modules until one is used (every worker process imports ``torrent``).  The
layering rules (no cycles, who may import the CLI and the tools) are in
test_sourcecode.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import torrent

PKG = Path(torrent.__file__).resolve().parent
API = {
    "download": "torrent.coordinator",
    "seed": "torrent.coordinator",
    "create": "torrent.creator",
    "verify": "torrent.verifier",
    "load": "torrent.metainfo",
    "Options": "torrent.options",
}
ERRORS = ["DiskFull", "FastTorrentError", "Incomplete", "Interrupted", "InvalidTorrent",
          "RemoteProtocolError", "ResourceExhausted", "StorageError", "TrackerError",
          "UsageError"]


# -- the public API ---------------------------------------------------------------------------


def test_all_lists_the_api_and_the_errors() -> None:
    assert set(torrent.__all__) == set(API) | set(ERRORS) | {"__version__"}
    for name in torrent.__all__:
        assert getattr(torrent, name) is not None, name
    for name in ERRORS:
        assert issubclass(getattr(torrent, name), torrent.FastTorrentError)


def test_api_names_are_the_functions() -> None:
    from torrent.coordinator import download, seed
    from torrent.creator import create_torrent
    from torrent.metainfo import load
    from torrent.options import Options
    from torrent.verifier import verify_data

    assert torrent.download is download and torrent.seed is seed
    assert torrent.create is create_torrent
    assert torrent.verify is verify_data
    assert torrent.load is load
    assert torrent.Options is Options


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        torrent.no_such_thing  # noqa: B018


def _fresh(code: str) -> str:
    """Run ``code`` in a fresh interpreter with this package first on the path; its stdout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PKG.parent), env.get("PYTHONPATH")]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, check=True, env=env)
    return r.stdout


def test_import_torrent_is_cheap() -> None:
    loaded = json.loads(_fresh(
        "import json, sys, torrent\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('torrent'))))"))
    assert loaded == ["torrent", "torrent.errors"]
