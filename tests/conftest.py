"""Shared test helpers.

Real parts the interop tests need (libtorrent, opentracker, aria2,
Transmission) are skipped when missing on a developer machine, but with
``CI=true`` a missing one fails the run: CI installs them all.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session", autouse=True)
def _no_public_dht() -> Iterator[None]:
    """No test reaches the public DHT: every run (in-process or a child, which inherits
    the environment) keeps its DHT off unless the test names loopback bootstrap nodes
    (``FASTTORRENT_NO_DHT``, torrent/dht/service.py), and the state directory is a
    fresh one, so that no node saved by a real run on this machine is asked."""
    cache = tempfile.mkdtemp(prefix="fasttorrent-test-cache-")
    old = {k: os.environ.get(k) for k in ("FASTTORRENT_NO_DHT", "XDG_CACHE_HOME")}
    os.environ["FASTTORRENT_NO_DHT"] = "1"
    os.environ["XDG_CACHE_HOME"] = cache
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(cache, ignore_errors=True)


def require_module(name: str) -> ModuleType:
    """Import ``name``, or skip (fail under CI=true) when it is missing."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        if IN_CI:
            pytest.fail(f"{name} is required in CI but cannot be imported: {e}")
        pytest.skip(f"{name} not installed")
        raise  # unreachable


def require_binary(name: str) -> str:
    """Return the path of executable ``name``, or skip (fail under CI=true)."""
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is required in CI but is not installed")
        pytest.skip(f"{name} not installed")
    return path  # type: ignore[return-value]


@pytest.fixture
def tests_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Child processes (torrent/launch.py takes the environment along) can import test modules."""
    here = os.path.dirname(os.path.abspath(__file__))
    old = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", here + (os.pathsep + old if old else ""))


@pytest.fixture
def seeders(tmp_path: Path) -> Iterator[Callable[..., list[Any]]]:
    """``seeders(torrent, [save_path, ...], upload_limits=[...])``: libtorrent seeders on
    127.0.0.1 (``helpers.swarm.start_seeders``), all stopped at teardown."""
    from helpers.swarm import start_seeders

    started: list[Any] = []
    workdir = tmp_path / "seedwork"
    workdir.mkdir()

    def start(torrent: Path, save_paths: list[Path],
              upload_limits: list[int] | None = None) -> list[Any]:
        got = start_seeders(str(torrent), [str(p) for p in save_paths], str(workdir),
                            upload_limits=upload_limits)
        started.extend(got)
        return got

    yield start
    for s in started:
        s.stop()


def _sha256_backends() -> list[str]:
    from torrent import _fast

    return list(_fast.sha256_backends())


@pytest.fixture(params=_sha256_backends())
def sha256_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test once per SHA-256 backend of the native core, restoring the default."""
    from torrent import _fast

    default = _fast.sha256_backend()
    _fast._set_sha256_backend(request.param)
    try:
        yield request.param
    finally:
        _fast._set_sha256_backend(default)
