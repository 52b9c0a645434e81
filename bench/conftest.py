"""Shared bench helpers: throughput (MB/s) of each benchmark, summarised at the end.

Run with ``python -m pytest bench/ --benchmark-only``; the normal ``pytest`` run
collects ``tests/`` only (``testpaths`` in pyproject.toml).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

# name -> (MB/s at the median time, bytes per call); filled by the record_mbps fixture
_THROUGHPUT: dict[str, tuple[float, int]] = {}


@pytest.fixture
def record_mbps(request: pytest.FixtureRequest, benchmark: Any) -> Callable[[int], float | None]:
    """Return ``record(nbytes)``: after the benchmark ran, note its MB/s (10**6 bytes/s)."""

    def record(nbytes: int) -> float | None:
        stats = getattr(benchmark, "stats", None)
        if stats is None:  # --benchmark-disable: nothing was timed
            return None
        mbps = nbytes / stats.stats.median / 1e6
        benchmark.extra_info["MB/s"] = round(mbps, 1)
        _THROUGHPUT[request.node.name] = (mbps, nbytes)
        return mbps

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _THROUGHPUT:
        return
    terminalreporter.section("throughput (MB/s = 10**6 bytes/s, at the median time)")
    width = max(len(name) for name in _THROUGHPUT)
    for name, (mbps, nbytes) in sorted(_THROUGHPUT.items()):
        terminalreporter.write_line(
            f"{name:<{width}}  {mbps:10.1f} MB/s  ({nbytes} bytes per call)"
        )
