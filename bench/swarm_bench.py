#!/usr/bin/env python3
"""Whole-download benchmark on a loopback swarm of libtorrent seeders (``fasttorrent bench``).

    python bench/swarm_bench.py --size 4G --piece 1M --seeders 4 --runs 5
    python bench/swarm_bench.py --size 1G --seeders 1,4 --clients ft1,ft2,lt-default,lt-fast

The harness lives in the package (:mod:`torrent.tools.bench`, also reachable as
``fasttorrent bench``); this script keeps the older command line: ``--seeders``
is a comma list of seeder *counts* (libtorrent seeders), ``--clients`` also
takes ``LABEL=COMMAND`` (a shell command with ``{torrent}``, ``{out}``,
``{peers}``, ``{port}``, ``{python}``, ``{here}`` placeholders), and the runs
go to a JSONL file (``--out``, a header line with every version first) with
the JSON, Markdown and PNG reports next to it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# Run as a script, the checkout's package must win over an installed one, so the
# package is imported inside main(), after this insert.
sys.path.insert(0, os.path.dirname(HERE))


def main() -> int:
    """Parse the older command line, run the benchmark; return the exit code."""
    from torrent.errors import FastTorrentError
    from torrent.sysinfo import available_cpus
    from torrent.tools.bench import BenchConfig, parse_clients, run_bench
    from torrent.units import parse_size

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="4G")
    ap.add_argument("--files", type=int, default=1)
    ap.add_argument("--piece", default="1M")
    ap.add_argument("--seeders", default="4", help="comma list of seeder counts, e.g. 1,4")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--clients", default="ft1,ft2,lt-default,lt-fast",
                    help="comma list of ftN, lt-default, lt-fast, aria2, transmission "
                         "or LABEL=COMMAND")
    ap.add_argument("--timeout", type=float, default=600, help="per run")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false",
                    help="skip the untimed warm-up download after the seeders start")
    ap.add_argument("--workdir", default=None, help="work here and keep it")
    ap.add_argument("--out", default=None, help="JSONL results (default bench/results/...)")
    a = ap.parse_args()
    try:
        size, piece = parse_size(a.size), parse_size(a.piece)
        counts = [int(x) for x in a.seeders.split(",") if x.strip()]
    except ValueError as e:
        ap.error(str(e))
    if not counts or min(counts) < 1 or a.files < 1 or a.runs < 1:
        ap.error("--seeders, --files and --runs must be positive")
    name = f"swarm-{a.size}-{a.files}f-{a.piece}-s{'_'.join(map(str, counts))}"
    out = a.out or os.path.join(HERE, "results", time.strftime("%Y%m%d-%H%M%S-") + name + ".jsonl")
    try:
        cfg = BenchConfig(size=size, files=a.files, piece=piece, seeder_kind="libtorrent",
                          num_seeders=counts, runs=a.runs,
                          clients=parse_clients(a.clients, available_cpus()),
                          results=os.path.dirname(out), timeout=a.timeout, warmup=a.warmup,
                          workdir=a.workdir, base=out.removesuffix(".jsonl"), jsonl=True,
                          extra_fmt={"here": HERE})
        run_bench(cfg)
    except FastTorrentError as e:
        print(f"swarm_bench: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 7
    return 0


if __name__ == "__main__":
    sys.exit(main())
