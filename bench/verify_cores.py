"""``fasttorrent verify`` at 1..N workers against a one-process hashlib verifier, start-up included.

Run (quiet machine):

    python bench/verify_cores.py --size 4G --runs 5 --out bench/results/scale/verify-4G
    python bench/verify_cores.py --size 4G --runs 5 --before ../base --out ...   # vs another tree
    python bench/verify_cores.py --kind v2 --size 4G --runs 5 --workers 1,2 --out ...  # BEP 52

Every measured thing is a whole command, as a user runs it, so interpreter
start, imports, the torrent's parsing and the workers' start are in:

- ``hashlib``: ``python`` reading the file in 16 MiB chunks into one buffer
  (``readinto``) and hashing each piece with ``hashlib.sha1``, then comparing
  with the torrent's digests (this file, ``--hashlib-child``); for a v2 torrent
  (``--kind v2``), ``hashlib.sha256`` per 16 KiB block and the pure merkle tree
  above each piece, compared with its root; for a hybrid, both;
- ``ftK``: ``python -m torrent verify TORRENT DIR --workers K`` from this tree;
- ``ftK@before``: the same from ``--before TREE`` (its core built in place).

The payload (one file, 1 MiB pieces, pseudo-random) is made once in
``--dir`` with its torrent of each ``--kind`` (v1; v2-only and hybrid made by
``torrent.creator``), and read once before timing, so every run reads the page cache.
Runs are interleaved (round 1 of every command, then round 2, ...).  Wall
time and CPU (user + system, of the command and its children, from
``wait4``) per run; medians, and each command's speed over hashlib's.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from torrent import _pure, metainfo  # noqa: E402
from torrent.creator import create_torrent  # noqa: E402
from torrent.tools.bench import save_results  # noqa: E402
from torrent.units import size_arg  # noqa: E402
from torrent.v2pieces import v2_pieces  # noqa: E402

PIECE = 1 << 20
CHUNK = 16 << 20
BLOCK = 16 << 10  # BEP 52's leaf block
KINDS = ("v1", "v2", "hybrid")


def make_payload(d: str, size: int, kind: str = "v1") -> str:
    """``d/payload.bin`` and its torrent of ``kind`` (each made once); the torrent's path."""
    torrent = make_v1_payload(d, size)
    if kind == "v1":
        return torrent
    other = os.path.join(d, f"payload-{kind}-{size}.torrent")
    if not os.path.exists(other) or os.path.getmtime(other) < os.path.getmtime(torrent):
        body = create_torrent(os.path.join(d, "payload.bin"), piece_length=PIECE, version=kind,
                              workers=len(os.sched_getaffinity(0)))
        with open(other, "wb") as f:
            f.write(body)
    return other


def make_v1_payload(d: str, size: int) -> str:
    """``d/payload.bin`` and ``d/payload.torrent`` (made once); the torrent's path."""
    os.makedirs(d, exist_ok=True)
    data, torrent = os.path.join(d, "payload.bin"), os.path.join(d, "payload.torrent")
    if os.path.exists(torrent) and os.path.getsize(data) == size:
        return torrent
    rnd = random.Random(size)
    digests = []
    with open(data, "wb") as f:
        for off in range(0, size, CHUNK):
            b = rnd.randbytes(min(CHUNK, size - off))
            f.write(b)
            digests += [hashlib.sha1(b[o : o + PIECE]).digest() for o in range(0, len(b), PIECE)]
    with open(torrent, "wb") as f:
        f.write(metainfo.build(name="payload.bin", files=None, length=size, piece_length=PIECE,
                               piece_hashes=b"".join(digests)))
    return torrent


def hashlib_child(torrent: str, data: str) -> int:
    """The baseline: one process, readinto a 16 MiB buffer, hashlib per piece (SHA-1),
    or per 16 KiB block (SHA-256) with the pure merkle tree above each piece (v2)."""
    m = metainfo.load(torrent)
    v2 = v2_pieces(m)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    sha1: list[bytes] = []
    roots: list[bytes] = []
    with open(data, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            pieces = range(0, n, m.piece_length)
            if not m.v2_only:
                sha1.extend(hashlib.sha1(view[o : min(o + m.piece_length, n)]).digest()
                            for o in pieces)
            if v2 is not None:
                for o in pieces:
                    _root, length, width = v2.expected(len(roots))
                    leaves = b"".join(hashlib.sha256(view[b : min(b + BLOCK, o + length)]).digest()
                                      for b in range(o, o + length, BLOCK))
                    roots.append(_pure.merkle_root(leaves, width))
    ok = (m.v2_only or b"".join(sha1) == m.piece_hashes) and (
        v2 is None or b"".join(roots) == v2.roots)
    return 0 if ok else 6


def timed(argv: list[str], env: dict[str, str], cwd: str) -> dict[str, float]:
    """Wall and CPU seconds of ``argv`` and every process it starts.

    CPU from ``perf stat -e task-clock`` (which follows every descendant) when
    perf is installed; else from ``wait4`` (the command and the children it
    reaped: the hash workers' share may be missing).
    """
    perf = shutil.which("perf")
    with tempfile.NamedTemporaryFile("r", suffix=".perf") as out:
        cmd = ([perf, "stat", "-x,", "-e", "task-clock", "-o", out.name, "--", *argv]
               if perf else argv)
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=env, cwd=cwd)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise SystemExit(f"{' '.join(argv)}: exit {code}")
        cpu = ru.ru_utime + ru.ru_stime
        if perf:
            with open(out.name) as f:  # perf writes a new file at that path
                text = f.read()
            for ln in text.splitlines():
                if ln.endswith(",msec,task-clock,") or ",task-clock" in ln:
                    cpu = float(ln.split(",")[0]) / 1e3
    return {"wall": wall, "cpu": cpu}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=size_arg, default=4 << 30, help="payload (default 4G)")
    ap.add_argument("--kind", choices=KINDS, default="v1",
                    help="the torrent: v1 (SHA-1), v2 (BEP 52 merkle roots) or hybrid (both)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workers", default=None,
                    help="comma list of worker counts (default 1..the CPUs usable)")
    ap.add_argument("--dir", default="/tmp/fasttorrent-verify-cores", help="payload directory")
    ap.add_argument("--before", default=None, metavar="TREE",
                    help="also run verify from this source checkout (core built in place)")
    ap.add_argument("--out", default=None, help="path prefix of the .json and .md written")
    ap.add_argument("--hashlib-child", nargs=2, metavar=("TORRENT", "DATA"),
                    help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.hashlib_child:
        return hashlib_child(*a.hashlib_child)
    torrent = make_payload(a.dir, a.size, a.kind)
    data = os.path.join(a.dir, "payload.bin")
    hashlib_child(torrent, data)  # into the page cache
    counts = [int(x) for x in a.workers.split(",")] if a.workers else \
        list(range(1, len(os.sched_getaffinity(0)) + 1))
    trees = {"": ROOT} | ({"@before": os.path.abspath(a.before)} if a.before else {})
    # run from each tree: ``python -m`` puts the working directory first on the path
    cmds: dict[str, tuple[list[str], dict[str, str], str]] = {
        "hashlib": ([sys.executable, os.path.abspath(__file__), "--hashlib-child", torrent,
                     data], dict(os.environ), ROOT)}
    for suffix, tree in trees.items():
        env = dict(os.environ, PYTHONPATH=tree)
        for k in counts:
            cmds[f"ft{k}{suffix}"] = ([sys.executable, "-m", "torrent", "verify", torrent,
                                       a.dir, "--workers", str(k)], env, tree)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in cmds}
    for r in range(a.runs):
        names = list(cmds)
        names = names[r % len(names):] + names[:r % len(names)]
        for name in names:
            res = timed(*cmds[name])
            runs[name].append(res)
            print(f"round {r + 1} {name:12s} wall {res['wall']:.3f} s  cpu {res['cpu']:.3f} s",
                  flush=True)
    base = statistics.median(x["wall"] for x in runs["hashlib"])
    base_min = min(x["wall"] for x in runs["hashlib"])
    summary = []
    for name, rs in runs.items():
        wall = statistics.median(x["wall"] for x in rs)
        summary.append({"command": name, "wall_median": round(wall, 3),
                        "wall_min": round(min(x["wall"] for x in rs), 3),
                        "cpu_median": round(statistics.median(x["cpu"] for x in rs), 3),
                        "x_hashlib": round(base / wall, 3),
                        "x_hashlib_min": round(base_min / min(x["wall"] for x in rs), 3)})
    doc = {"when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
           "command": " ".join(["python", "bench/verify_cores.py", *(argv or sys.argv[1:])]),
           "size": a.size, "piece": PIECE, "kind": a.kind, "loadavg": os.getloadavg(),
           "machine": platform.platform(), "cpus": sorted(os.sched_getaffinity(0)),
           "runs": runs, "summary": summary}
    lines = [f"# verify at N cores ({doc['when']})", "", f"`{doc['command']}`", "",
             f"{a.size >> 20} MiB in the page cache, 1 MiB pieces, a {a.kind} torrent, "
             f"{a.runs} runs, "
             f"load average at the end {tuple(round(x, 2) for x in doc['loadavg'])}.", "",
             "| command | wall median s (min) | CPU median s | x hashlib (medians) | "
             "x hashlib (minima) |",
             "|---|---|---|---|---|"]
    lines += [f"| {s['command']} | {s['wall_median']} ({s['wall_min']}) | {s['cpu_median']} | "
              f"{s['x_hashlib']} | {s['x_hashlib_min']} |" for s in summary]
    md = "\n".join(lines) + "\n"
    print(md)
    if a.out:
        save_results(a.out, doc, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
