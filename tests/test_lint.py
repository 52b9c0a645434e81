"""The linters and the pure twins run as part of the suite.

- ruff, with the rules selected in pyproject.toml, over the package, the
  tests and the benchmarks;
- mypy over the package (strict on the sans-IO modules; see pyproject.toml);
- the wire and picker tests once more with ``FASTTORRENT_PURE=1``, so the
  pure twins of the kernels are driven by the same tests as the compiled ones.

Each is a subprocess bounded in time.  A missing linter skips on a developer
machine and fails under ``CI=true`` (it is in the ``test`` extra).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import IN_CI

ROOT = Path(__file__).resolve().parent.parent
#: Bound on each linter run (seconds); mypy from a cold cache takes ~20 s here.
LINT_TIMEOUT = 300
#: The tests that run again on the pure twins.
PURE_TESTS = ["tests/test_wire_messages.py", "tests/test_wire_peer.py", "tests/test_picker.py",
              "tests/test_receive_parity.py", "tests/test_take_blocks.py",
              "tests/test_merkle.py"]


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        if IN_CI:
            pytest.fail(f"{module} is required in CI but is not installed")
        pytest.skip(f"{module} not installed")


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=LINT_TIMEOUT, env=env, check=False)


def test_ruff_is_clean() -> None:
    _require("ruff")
    r = _run("ruff", "check", "--no-cache", "torrent", "tests", "bench", "setup.py")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_is_clean() -> None:
    _require("mypy")
    r = _run("mypy", "--no-incremental")
    assert r.returncode == 0, r.stdout + r.stderr


def test_wire_and_picker_tests_pass_on_the_pure_twins() -> None:
    env = dict(os.environ, FASTTORRENT_PURE="1")
    probe = subprocess.run(
        [sys.executable, "-c", "from torrent import _speedups; print(_speedups.IMPLEMENTATION)"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env=env, check=True)
    assert probe.stdout.strip() == "pure"
    r = _run("pytest", "-q", "-p", "no:cacheprovider", *PURE_TESTS, env=env)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout.splitlines()[-1]
