"""Start-up of ``fasttorrent download``: from exec to the first block REQUEST on the wire.

Run (quiet machine):

    python bench/startup.py --runs 9 --out bench/results/startup/NAME
    python bench/startup.py --runs 9 --before ../base --out ...   # vs another tree, interleaved

One libtorrent seeder (``torrent.tools.benchclients.lt_seed``, the same for
every tree measured) serves a 16 MiB single-file payload (``--size``, 256 KiB
pieces) on 127.0.0.1. Between it and the downloader sits a relay in this
process (:class:`FirstRequest`): it forwards bytes both ways as they come and
reads the downloader's side of the stream (plaintext: the download runs with
``--encryption disabled``; the seeder has encryption off) up to the first
REQUEST message (BEP 3, id 6), stamping ``time.monotonic()`` when the
``recv`` that brought its id byte returned. Each run is

    python -m torrent download T.torrent -o DIR --peer RELAY --no-dht --no-trackers
        --bind 127.0.0.1 --encryption disabled --json

from the measured tree (``PYTHONPATH`` and working directory), into a fresh
directory, and it counts only if it exits 0 and the file is byte-identical to
the payload. Reported per run (medians over ``--runs``):

- ``first_request_ms``: from ``time.monotonic()`` just before this process's
  ``Popen`` of the download (its fork and exec included) to the stamp above
  (``CLOCK_MONOTONIC`` is one clock for every process of the machine);
- ``exit_ms``: to the download's exit (the whole 16 MiB download).

Then, untimed, the imports (``--import-runs`` runs of the same download under
``python -X importtime``): the sum of the "self" column over every module the
CLI process imported (``cli_import_ms``), and over every module each worker
imported after it was forked from the CLI (``worker_import_ms``, the median
worker). A worker writes its own lines to a file of its own: the download is
started through a few lines (:data:`IMPORTTIME_CHILD`) that register an
``os.register_at_fork`` hook pointing a forked child's stderr there (and its
``importlib.import_module``, which ``-X importtime`` does not see, to the
``import`` statement's path), then run ``torrent`` as ``python -m`` does.
``importtime`` slows every import, so these are shares, not parts of the
times above. The modules with the largest self time in the CLI process are
listed.

Each tree's package is compiled to bytecode first (``compileall``, as ``pip
install`` does), so no run compiles a module.

Floors, timed the same way (wall time of the whole command, median):
``python -c pass``, ``python -m torrent --version`` and
``python -m torrent info T.torrent``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from torrent.creator import create_torrent  # noqa: E402
from torrent.tools.bench import save_results  # noqa: E402
from torrent.tools.payload import make_payload, same_files  # noqa: E402
from torrent.tools.procs import Processes  # noqa: E402
from torrent.tools.seeders import start_seeders  # noqa: E402
from torrent.units import size_arg  # noqa: E402

PIECE = 256 << 10
#: BEP 3: the handshake is 1 + 19 + 8 + 20 + 20 bytes; then <length:4><id:1> messages.
HANDSHAKE_LEN = 68
REQUEST_ID = 6
#: A message longer than this from the downloader is not one we expect before
#: its first REQUEST (a bitfield of 64 pieces, an extension handshake): the
#: relay stops reading the stream rather than buffer it.
MAX_EARLY_MESSAGE = 1 << 20
#: Bytes per recv of the relay.
RELAY_CHUNK = 1 << 16
#: Bound on one command (a run that takes longer fails the bench).
RUN_TIMEOUT = 120.0
#: Modules listed as the CLI's largest imports.
TOP_IMPORTS = 15

#: The child that runs the download under ``-X importtime`` (argv: DIR, then the
#: CLI's arguments): a forked child's stderr goes to ``DIR/worker-PID.importtime``.
IMPORTTIME_CHILD = """\
import os, runpy, sys
d = sys.argv.pop(1)
def child():
    fd = os.open(os.path.join(d, f"worker-{os.getpid()}.importtime"),
                 os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    import importlib
    def import_module(name, package=None):
        __import__(name)  # through the import statement's path, which -X importtime times
        return sys.modules[name]
    importlib.import_module = import_module
os.register_at_fork(after_in_child=child)
sys.argv[0] = "fasttorrent"
runpy.run_module("torrent", run_name="__main__", alter_sys=True)
"""


class FirstRequest:
    """A relay on 127.0.0.1 to ``target`` that stamps the downloader's first REQUEST.

    Each accepted connection gets a connection to ``target`` and two threads
    copying bytes, one each way; the downloader-to-seeder one parses the
    stream (handshake, then length-prefixed messages) until it has seen a
    REQUEST. :attr:`first` is the ``time.monotonic()`` of the first REQUEST
    since the last :meth:`reset`.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.first: float | None = None
        self.connections = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.first = None
            self.connections = 0

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                up = socket.create_connection(self.target, timeout=10)
            except OSError:
                down.close()
                continue
            up.settimeout(None)
            for s in (down, up):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._pipe, args=(down, up, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, down, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, parse: bool) -> None:
        buf = bytearray()
        need_handshake = True
        try:
            while data := src.recv(RELAY_CHUNK):
                now = time.monotonic()
                dst.sendall(data)
                if not parse:
                    continue
                buf += data
                if need_handshake:
                    if len(buf) < HANDSHAKE_LEN:
                        continue
                    del buf[:HANDSHAKE_LEN]
                    need_handshake = False
                while len(buf) >= 5:
                    n = int.from_bytes(buf[:4], "big")
                    if n > MAX_EARLY_MESSAGE:
                        parse = False
                        break
                    if n and buf[4] == REQUEST_ID:
                        with self._lock:
                            if self.first is None:
                                self.first = now
                        parse = False
                        break
                    if len(buf) < 4 + n:
                        break
                    del buf[:4 + n]
                if not parse:
                    buf.clear()
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            src.close()


def compile_tree(tree: str) -> None:
    """Write the bytecode of ``tree``'s package, as ``pip install`` does (an environment
    with ``PYTHONDONTWRITEBYTECODE`` set would otherwise compile every module on every run)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(tree, "torrent")],
                   env=env, stdout=subprocess.DEVNULL, timeout=RUN_TIMEOUT, check=True)


def wall(argv: list[str], tree: str) -> float:
    """Seconds from just before ``Popen`` of ``argv`` (run from ``tree``) to its exit."""
    env = dict(os.environ, PYTHONPATH=tree)
    t0 = time.monotonic()
    r = subprocess.run(argv, cwd=tree, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True, timeout=RUN_TIMEOUT, check=False)
    t = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {r.returncode}: {r.stderr[-500:]}")
    return t


def download_args(torrent: str, out: str, relay: FirstRequest) -> list[str]:
    return ["download", torrent, "-o", out, "--peer", f"127.0.0.1:{relay.port}", "--no-dht",
            "--no-trackers", "--bind", "127.0.0.1", "--encryption", "disabled", "--json"]


def timed_download(tree: str, torrent: str, work: str, relay: FirstRequest,
                   src: str, rels: list[str]) -> dict[str, float]:
    """One download from ``tree``: milliseconds to the first REQUEST and to its exit."""
    out = tempfile.mkdtemp(prefix="out-", dir=work)
    relay.reset()
    env = dict(os.environ, PYTHONPATH=tree)
    argv = [sys.executable, "-m", "torrent", *download_args(torrent, out, relay)]
    t0 = time.monotonic()
    r = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True,
                       timeout=RUN_TIMEOUT, check=False)
    t_exit = time.monotonic()
    try:
        if r.returncode != 0 or not same_files(src, out, rels):
            raise SystemExit(f"download from {tree} failed (exit {r.returncode}): "
                             f"{r.stderr[-500:]}")
        if relay.first is None:
            raise SystemExit("the download completed, but no REQUEST went through the relay")
        return {"first_request_ms": round((relay.first - t0) * 1e3, 2),
                "exit_ms": round((t_exit - t0) * 1e3, 2), "connections": relay.connections}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def parse_importtime(text: str) -> list[tuple[str, int]]:
    """(module, self microseconds) of every ``import time:`` line of ``text``."""
    got = []
    for line in text.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = line[len("import time:"):].split("|")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            continue  # the header
        got.append((parts[2].strip(), int(parts[0])))
    return got


def import_run(tree: str, torrent: str, work: str, relay: FirstRequest,
               src: str, rels: list[str]) -> dict[str, Any]:
    """One download under ``-X importtime``: the CLI's and each forked worker's imports."""
    out = tempfile.mkdtemp(prefix="out-", dir=work)
    logs = tempfile.mkdtemp(prefix="importtime-", dir=work)
    relay.reset()
    env = dict(os.environ, PYTHONPATH=tree)
    argv = [sys.executable, "-X", "importtime", "-c", IMPORTTIME_CHILD, logs,
            *download_args(torrent, out, relay)]
    try:
        r = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True,
                           timeout=RUN_TIMEOUT, check=False)
        if r.returncode != 0 or not same_files(src, out, rels):
            raise SystemExit(f"download under -X importtime from {tree} failed "
                             f"(exit {r.returncode}): {r.stderr[-500:]}")
        cli = parse_importtime(r.stderr)
        workers = []
        for name in sorted(os.listdir(logs)):
            with open(os.path.join(logs, name)) as f:
                workers.append(parse_importtime(f.read()))
        return {"cli_import_ms": round(sum(us for _, us in cli) / 1e3, 2),
                "cli_modules": len(cli),
                "worker_import_ms": [round(sum(us for _, us in w) / 1e3, 2) for w in workers],
                "worker_modules": [len(w) for w in workers],
                "cli_top": sorted(cli, key=lambda m: -m[1])[:TOP_IMPORTS],
                "worker_top": sorted(workers[0], key=lambda m: -m[1])[:TOP_IMPORTS]
                if workers else []}
    finally:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(logs, ignore_errors=True)


def git_head(tree: str) -> str:
    """The commit checked out in ``tree`` ("" if it is not a git checkout)."""
    r = subprocess.run(["git", "-C", tree, "rev-parse", "HEAD"], capture_output=True, text=True,
                       timeout=RUN_TIMEOUT, check=False)
    dirty = subprocess.run(["git", "-C", tree, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    return r.stdout.strip() + (" (modified)" if dirty.stdout.strip() else "")


def median(xs: list[float]) -> float:
    return round(statistics.median(xs), 2) if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=9, help="timed runs per tree (default 9)")
    ap.add_argument("--import-runs", type=int, default=5,
                    help="runs under -X importtime per tree (default 5)")
    ap.add_argument("--size", type=size_arg, default=16 << 20, help="payload (default 16M)")
    ap.add_argument("--before", default=None, metavar="TREE",
                    help="also run from this source checkout (core built in place), "
                         "interleaved with this one")
    ap.add_argument("--out", default=None, help="path prefix of the .json and .md written")
    a = ap.parse_args(argv)
    trees = {"this": ROOT} | ({"before": os.path.abspath(a.before)} if a.before else {})
    work = tempfile.mkdtemp(prefix="fasttorrent-startup-")
    procs = Processes()
    relay: FirstRequest | None = None
    try:
        srcdir = os.path.join(work, "src")
        os.makedirs(srcdir)
        target, rels = make_payload(srcdir, a.size, 1)
        torrent = os.path.join(work, "startup.torrent")
        with open(torrent, "wb") as f:
            f.write(create_torrent(target, piece_length=PIECE))
        n_runs = len(trees) * (a.runs * 4 + a.import_runs + 1)
        seeder = start_seeders(procs, "libtorrent", 1, torrent, srcdir, work,
                               lifetime=n_runs * RUN_TIMEOUT, who="startup")[0]
        relay = FirstRequest(("127.0.0.1", seeder.port))
        for tree in trees.values():
            compile_tree(tree)
        for tree in trees.values():  # warm-up: the page cache
            timed_download(tree, torrent, work, relay, srcdir, rels)
        runs: dict[str, dict[str, list[Any]]] = {
            label: {"download": [], "version": [], "info": [], "python": [], "imports": []}
            for label in trees}
        order = list(trees)
        for r in range(a.runs):
            for label in order[r % len(order):] + order[:r % len(order)]:
                tree = trees[label]
                d = timed_download(tree, torrent, work, relay, srcdir, rels)
                runs[label]["download"].append(d)
                py = [sys.executable]
                runs[label]["python"].append(round(wall([*py, "-c", "pass"], tree) * 1e3, 2))
                runs[label]["version"].append(
                    round(wall([*py, "-m", "torrent", "--version"], tree) * 1e3, 2))
                runs[label]["info"].append(
                    round(wall([*py, "-m", "torrent", "info", torrent], tree) * 1e3, 2))
                print(f"run {r + 1} {label:6s} first REQUEST {d['first_request_ms']:7.1f} ms  "
                      f"exit {d['exit_ms']:7.1f} ms  --version {runs[label]['version'][-1]:6.1f}"
                      f" ms  info {runs[label]['info'][-1]:6.1f} ms", flush=True)
        for r in range(a.import_runs):
            for label in order:
                imp = import_run(trees[label], torrent, work, relay, srcdir, rels)
                runs[label]["imports"].append(imp)
                print(f"importtime {r + 1} {label:6s} CLI {imp['cli_import_ms']:6.1f} ms "
                      f"({imp['cli_modules']} modules), workers {imp['worker_import_ms']} ms "
                      f"({imp['worker_modules']} modules)", flush=True)
    finally:
        if relay is not None:
            relay.close()
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    summary = {}
    for label, rs in runs.items():
        imps = rs["imports"]
        summary[label] = {
            "tree": trees[label],
            "commit": git_head(trees[label]),
            "first_request_ms": median([d["first_request_ms"] for d in rs["download"]]),
            "first_request_min_ms": min(d["first_request_ms"] for d in rs["download"]),
            "exit_ms": median([d["exit_ms"] for d in rs["download"]]),
            "cli_import_ms": median([i["cli_import_ms"] for i in imps]),
            "cli_import_min_ms": min((i["cli_import_ms"] for i in imps), default=float("nan")),
            "worker_import_ms": median([w for i in imps for w in i["worker_import_ms"]]),
            "python_c_pass_ms": median(rs["python"]),
            "version_ms": median(rs["version"]),
            "info_ms": median(rs["info"])}
    doc = {"when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
           "command": " ".join(["python", "bench/startup.py", *(argv or sys.argv[1:])]),
           "size": a.size, "piece": PIECE, "loadavg": os.getloadavg(),
           "machine": platform.platform(), "cpus": sorted(os.sched_getaffinity(0)),
           "python": sys.version.split()[0], "runs": runs, "summary": summary}
    lines = [f"# fasttorrent download start-up ({doc['when']})", "", f"`{doc['command']}`", "",
             f"{a.size >> 20} MiB, one file, {PIECE >> 10} KiB pieces, one libtorrent seeder "
             f"on 127.0.0.1, {a.runs} runs (medians; importtime: {a.import_runs} runs), "
             f"load average at the end {tuple(round(x, 2) for x in doc['loadavg'])}.", "",
             "| tree | first REQUEST ms (min) | exit ms | CLI imports ms (min) | worker imports ms "
             "| `python -c pass` ms | `--version` ms | `info` ms |",
             "|---|---|---|---|---|---|---|---|"]
    for label, s in summary.items():
        lines.append(f"| {label} ({s['commit'][:7]}) | {s['first_request_ms']:.1f} "
                     f"({s['first_request_min_ms']:.1f})"
                     f" | {s['exit_ms']:.1f} | {s['cli_import_ms']:.1f} "
                     f"({s['cli_import_min_ms']:.1f}) | "
                     f"{s['worker_import_ms']:.1f} | {s['python_c_pass_ms']:.1f} | "
                     f"{s['version_ms']:.1f} | {s['info_ms']:.1f} |")
    for label, rs in runs.items():
        if rs["imports"]:
            top = rs["imports"][-1]["cli_top"]
            lines += ["", f"Largest self import times of the CLI process ({label}, last "
                      "importtime run): " + ", ".join(f"{m} {us / 1e3:.1f}" for m, us in top)
                      + " (ms)"]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        save_results(a.out, doc, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
