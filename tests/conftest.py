"""Shared test helpers.

Real parts the interop tests need (libtorrent, opentracker, aria2,
Transmission) are skipped when missing on a developer machine, but with
``CI=true`` a missing one fails the run: CI installs them all.
"""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


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
