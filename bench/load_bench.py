#!/usr/bin/env python3
"""Connection load figures for docs/RELIABILITY.md, as JSON lines on stdout.

    python bench/load_bench.py                          # every case, ~1.5 minutes
    python bench/load_bench.py --cases idle,tracker --out load.jsonl

The same scenarios as tests/test_load.py (tests/helpers/load.py), without
assertions: the real ``fasttorrent seed`` / ``download`` on 127.0.0.1, the
private memory (USS) of the whole process tree measured from a baseline
taken before the load arrives.

Cases:

- ``idle``: N idle connections (``--trickle`` of them trickling a handshake a
  byte a second) to a seed allowed to hold them all; its memory per held
  connection, then the handshake time-out closes them all.
- ``flood``: the same flood against the default limits (``--max-half-open``)
  and against ``--max-connections 100``: what is held, what is refused.
- ``tracker``: a tracker answers ``fasttorrent download`` with ``--peers``
  peers, nearly all dead, the real seeder last of those the codec keeps; and
  the same download from a tracker answering with the seeder alone
  (``tracker_control``), so the difference is what the huge reply costs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)  # the seed/download children

from helpers.load import idle_flood, tracker_flood, write_figures  # noqa: E402

CASES = ("idle", "flood", "tracker")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help="comma list of " + ", ".join(CASES))
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--trickle", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--peers", type=int, default=100_000)
    ap.add_argument("--blackholed", type=int, default=8)
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    a = ap.parse_args()
    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    bad = sorted(set(cases) - set(CASES))
    if bad:
        ap.error(f"unknown case(s): {', '.join(bad)}")
    out = Path(a.out) if a.out else None
    with tempfile.TemporaryDirectory(prefix="load-bench-") as tmp:
        work = Path(tmp)
        figs = _Emit(out)
        if "idle" in cases:
            figs.append(idle_flood(work / "idle", connections=a.connections, trickle=a.trickle,
                                   workers=a.workers, handshake_timeout=15,
                                   extra=["--max-connections", str(2 * a.connections),
                                          "--max-half-open", str(2 * a.connections)],
                                   case="idle_connections"))
        if "flood" in cases:
            figs.append(idle_flood(work / "flood1", connections=a.connections,
                                   workers=a.workers, handshake_timeout=5,
                                   case="flood_half_open_cap"))
            figs.append(idle_flood(work / "flood2", connections=a.connections,
                                   workers=a.workers, handshake_timeout=5,
                                   extra=["--max-connections", "100",
                                          "--max-half-open", str(2 * a.connections)],
                                   case="flood_connection_cap"))
        if "tracker" in cases:
            figs.append(tracker_flood(work / "tracker", peers=a.peers,
                                      blackholed=a.blackholed, workers=a.workers))
            figs.append(tracker_flood(work / "control", peers=1, blackholed=0,
                                      workers=a.workers, case="tracker_control"))
    return 0


class _Emit:
    """Prints (and appends to ``out``) each case's figures as soon as it is done."""

    def __init__(self, out: Path | None) -> None:
        self.out = out

    def append(self, fig: dict[str, Any]) -> None:
        print(write_figures(self.out, fig), flush=True)


if __name__ == "__main__":
    sys.exit(main())
