#!/usr/bin/env python3
"""Whole-download benchmark on a loopback swarm of libtorrent seeders.

    python bench/swarm_bench.py --size 4G --piece 1M --seeders 4 --runs 5
    python bench/swarm_bench.py --size 1G --seeders 1,4 --clients ft1,ft2,lt-default,lt-fast

Makes a deterministic payload and its torrent (``fasttorrent create``), starts
N libtorrent seeders on 127.0.0.1 (DHT/LSD/UPnP/NAT-PMP/uTP off, several
connections per IP allowed), then runs the downloaders *interleaved*
(run 1 of every client, then run 2, ..., the order rotated each run, after
one untimed warm-up download), each into a fresh directory, and
counts a run only if the output is byte-identical to the payload (``cmp``).
Between runs (untimed) the output is deleted and ``sync`` flushes what is
still dirty, so one run's writeback does not slow down the next.

Per run it records wall time (spawn to exit), CPU seconds of the whole process
tree (``wait4`` rusage: the client and every descendant it reaped), peak PSS
of the tree sampled every 0.1 s (a shared-memory arena is counted once, split
between the processes that map it) and the seeders' CPU meanwhile.  Results go
to a JSONL file (one line per run, plus a header with every version) and a
Markdown summary next to it.  Everything is bounded: each client runs under
``timeout``, seeders exit by themselves after --lifetime.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(s: str) -> int:
    t = s.strip().upper().removesuffix("B").removesuffix("I")
    u = t[-1:] if t[-1:] in UNITS else ""
    return int(float(t[: len(t) - len(u)]) * UNITS[u])


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CLIENTS = {
    "ft1": "fasttorrent download {torrent} -o {out} --peer {peers} --no-trackers -q --workers 1",
    "ft2": "fasttorrent download {torrent} -o {out} --peer {peers} --no-trackers -q --workers 2",
    "ft": "fasttorrent download {torrent} -o {out} --peer {peers} --no-trackers -q",
    "lt-default": "{python} {here}/clients/lt_download.py --profile default --peers {peers} "
                  "{torrent} {out}",
    "lt-fast": "{python} {here}/clients/lt_download.py --profile fast --peers {peers} "
               "{torrent} {out}",
}


def versions() -> dict:
    v = {"python": platform.python_version(), "kernel": platform.release(),
         "machine": platform.machine(), "cpus": len(os.sched_getaffinity(0))}
    try:
        with open("/proc/cpuinfo") as f:
            v["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    for mod in ("libtorrent", "uvloop", "Cython", "torrent"):
        try:
            m = __import__(mod)
            v[mod] = getattr(m, "__version__", getattr(m, "version", "?"))
        except ImportError:
            v[mod] = None
    return v


def make_payload(root: str, size: int, files: int) -> list[str]:
    sys.path.insert(0, ROOT)
    from torrent.demo import make_payload as gen

    os.makedirs(root, exist_ok=True)
    if files == 1:
        p = os.path.join(root, "payload.bin")
        if not os.path.exists(p) or os.path.getsize(p) != size:
            gen(p, size)
        return [p]
    d = os.path.join(root, "payload")
    os.makedirs(d, exist_ok=True)
    paths = []
    # uneven sizes so files straddle piece boundaries
    weights = [1 + (i * 7919) % 13 for i in range(files)]
    tot = sum(weights)
    left = size
    for i, w in enumerate(weights):
        n = left if i == files - 1 else size * w // tot
        left -= n
        p = os.path.join(d, f"dir{i % 10}", f"file{i:05d}.bin")
        os.makedirs(os.path.dirname(p), exist_ok=True)
        if not os.path.exists(p) or os.path.getsize(p) != n:
            gen(p, n, seed=i + 1)
        paths.append(p)
    return paths


def tree_pss(pid: int) -> int:
    """PSS in bytes of ``pid`` and all its descendants (from /proc)."""
    import psutil

    total = 0
    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        return 0
    for p in procs:
        try:
            with open(f"/proc/{p.pid}/smaps_rollup") as f:
                for ln in f:
                    if ln.startswith("Pss:"):
                        total += int(ln.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


def run_client(cmd: str, timeout: float) -> dict:
    peak = 0
    stop = threading.Event()
    t0 = time.perf_counter()
    proc = subprocess.Popen(["timeout", "-s", "KILL", str(int(timeout)), "sh", "-c", cmd],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_pss(proc.pid))
            stop.wait(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # nothing of the run may outlive it
    except ProcessLookupError:
        pass
    return {"wall": wall, "exit": os.waitstatus_to_exitcode(status),
            "cpu_user": ru.ru_utime, "cpu_sys": ru.ru_stime,
            "cpu": ru.ru_utime + ru.ru_stime, "peak_pss": peak, "stderr": err}


def same_tree(payload: list[str], src_root: str, out_root: str) -> bool:
    for p in payload:
        rel = os.path.relpath(p, src_root)
        q = os.path.join(out_root, rel)
        if subprocess.run(["cmp", "-s", p, q]).returncode != 0:
            return False
    return True


def seeders_cpu(procs: list) -> float:
    import psutil

    t = 0.0
    for p in procs:
        try:
            top = psutil.Process(p.pid)
            for q in [top, *top.children(recursive=True)]:
                c = q.cpu_times()
                t += c.user + c.system
        except psutil.Error:
            pass
    return t


def start_seeders(n: int, torrent: str, save: str, workdir: str, lifetime: float) -> tuple[list, str]:
    procs, ports = [], []
    for i in range(n):
        port = free_port()
        ready = os.path.join(workdir, f"ready{i}.json")
        p = subprocess.Popen(["timeout", str(int(lifetime) + 10), sys.executable,
                              os.path.join(HERE, "clients", "lt_seed.py"), "--torrent", torrent,
                              "--save-path", save, "--port", str(port), "--ready", ready,
                              "--lifetime", str(lifetime)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append((p, ready))
        ports.append(port)
    deadline = time.monotonic() + 600
    for p, ready in procs:
        while not os.path.exists(ready):
            if p.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("a seeder failed to start")
            time.sleep(0.1)
    return [p for p, _ in procs], ",".join(f"127.0.0.1:{port}" for port in ports)


def summarize(rows: list[dict]) -> str:
    out = ["| client | seeders | valid/runs | MB/s median (min-max) | wall s median | "
           "CPU s/GiB median | peak PSS MiB median | vs best libtorrent |",
           "|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["seeders"], r["client"]), []).append(r)
    best_lt: dict[int, float] = {}
    for (ns, c), rs in groups.items():
        ok = [r for r in rs if r["ok"]]
        if c.startswith("lt") and ok:
            best_lt[ns] = max(best_lt.get(ns, 0), statistics.median(r["rate"] for r in ok))
    for (ns, c), rs in sorted(groups.items()):
        ok = [r for r in rs if r["ok"]]
        if not ok:
            out.append(f"| {c} | {ns} | 0/{len(rs)} | - | - | - | - | - |")
            continue
        rates = [r["rate"] / 1e6 for r in ok]
        med = statistics.median(rates)
        ratio = (statistics.median(r["rate"] for r in ok) / best_lt[ns]) if best_lt.get(ns) else None
        out.append(
            f"| {c} | {ns} | {len(ok)}/{len(rs)} | {med:.0f} ({min(rates):.0f}-{max(rates):.0f}) | "
            f"{statistics.median(r['wall'] for r in ok):.2f} | "
            f"{statistics.median(r['cpu_per_gib'] for r in ok):.2f} | "
            f"{statistics.median(r['peak_pss'] for r in ok) / 2**20:.0f} | "
            + (f"{ratio:.2f}x" if ratio else "-") + " |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="4G")
    ap.add_argument("--files", type=int, default=1)
    ap.add_argument("--piece", default="1M")
    ap.add_argument("--seeders", default="4", help="comma list, e.g. 1,4")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--clients", default="ft1,ft2,lt-default,lt-fast",
                    help="comma list of " + ", ".join(CLIENTS) + " or LABEL=COMMAND")
    ap.add_argument("--timeout", type=float, default=600, help="per run")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false",
                    help="skip the untimed warm-up download after the seeders start")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None, help="JSONL results (default bench/results/...)")
    a = ap.parse_args()
    size = parse_size(a.size)
    piece = parse_size(a.piece)
    work = a.workdir or tempfile.mkdtemp(prefix="ftbench-")
    os.makedirs(work, exist_ok=True)
    name = f"swarm-{a.size}-{a.files}f-{a.piece}-s{a.seeders.replace(',', '_')}"
    out_path = a.out or os.path.join(HERE, "results", time.strftime("%Y%m%d-%H%M%S-") + name + ".jsonl")
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    clients = []
    for c in a.clients.split(","):
        label, _, cmd = c.partition("=")
        clients.append((label, cmd or CLIENTS[label]))
    src = os.path.join(work, "src")
    log(f"payload {a.size} in {a.files} file(s) under {src}")
    payload = make_payload(src, size, a.files)
    os.sync()  # a payload still being written back would slow the first runs down
    target = payload[0] if a.files == 1 else os.path.dirname(payload[0]).rsplit("/dir", 1)[0]
    torrent = os.path.join(work, "bench.torrent")
    subprocess.run(["fasttorrent", "create", target, "-o", torrent, "--piece-length", str(piece), "-q"],
                   check=True)
    meta = {"kind": "header", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "size": size,
            "files": a.files, "piece": piece, "runs": a.runs, "versions": versions(),
            "clients": dict(clients)}
    rows: list[dict] = []
    with open(out_path, "w") as outf:
        outf.write(json.dumps(meta) + "\n")
        for ns in [int(x) for x in a.seeders.split(",")]:
            seeds, peers = start_seeders(ns, torrent, src, work,
                                         lifetime=a.runs * len(clients) * a.timeout + 120)
            log(f"{ns} seeder(s) ready: {peers}")
            try:
                if a.warmup:
                    # Seeders just started are slower for a run or so (their disk
                    # cache fills): one untimed download, not recorded.
                    label, tmpl = clients[-1]
                    out = os.path.join(work, "out-warmup")
                    os.makedirs(out, exist_ok=True)
                    run_client(tmpl.format(torrent=torrent, out=out, peers=peers,
                                           python=sys.executable, here=HERE), a.timeout)
                    shutil.rmtree(out, ignore_errors=True)
                    os.sync()
                    log(f"warm-up run ({label}) done")
                for run in range(a.runs):
                    # rotate the order, so no client is always first after another
                    order = clients[run % len(clients):] + clients[:run % len(clients)]
                    for label, tmpl in order:
                        out = os.path.join(work, f"out-{label}-{run}")
                        shutil.rmtree(out, ignore_errors=True)
                        os.makedirs(out)
                        cmd = tmpl.format(torrent=torrent, out=out, peers=peers,
                                          python=sys.executable, here=HERE)
                        s0 = seeders_cpu(seeds)
                        r = run_client(cmd, a.timeout)
                        r["seeders_cpu"] = seeders_cpu(seeds) - s0
                        ok = r["exit"] == 0 and same_tree(payload, src, out)
                        shutil.rmtree(out, ignore_errors=True)
                        # Flush what this run left dirty (untimed), so that its
                        # writeback does not land in the next client's run.
                        os.sync()
                        row = {"kind": "run", "client": label, "seeders": ns, "run": run, "ok": ok,
                               "rate": size / r["wall"], "cpu_per_gib": r["cpu"] / (size / 2**30),
                               **{k: v for k, v in r.items() if k != "stderr"}}
                        if not ok:
                            row["stderr"] = r["stderr"]
                        rows.append(row)
                        outf.write(json.dumps(row) + "\n")
                        outf.flush()
                        log(f"{label:12s} seeders={ns} run {run}: {'OK ' if ok else 'BAD'} "
                            f"{r['wall']:6.2f}s {size / r['wall'] / 1e6:7.1f} MB/s "
                            f"cpu {r['cpu']:5.2f}s pss {r['peak_pss'] / 2**20:5.0f}MiB "
                            f"seedcpu {r['seeders_cpu']:.2f}s")
            finally:
                for p in seeds:
                    p.terminate()
                for p in seeds:
                    try:
                        p.wait(10)
                    except subprocess.TimeoutExpired:
                        p.kill()
    md = summarize(rows)
    with open(out_path.removesuffix(".jsonl") + ".md", "w") as f:
        f.write(f"# {name}\n\n{meta['time']}; versions: {json.dumps(meta['versions'])}\n\n{md}\n")
    print(md)
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
