"""``fasttorrent bench``: whole downloads by several clients from one loopback swarm.

    fasttorrent bench [--size 1G] [--files N] [--piece 1M] [--seeders fasttorrent|libtorrent]
                      [--num-seeders 4] [--runs 5] [--clients ft1,ft2,lt-default,...]
                      [--results DIR] [--timeout S] [--keep] [--keep-outputs]
                      [--compare-seeding] [--magnet]
                      [--seeder-encryption off|rc4] [--client-cpus LIST --seeder-cpus LIST]

Theory of operation
-------------------
1. *Payload.*  A deterministic pseudo-random payload (one file, or ``--files N``
   files of uneven sizes under ``payload/``, straddling piece boundaries) and
   its torrent (no trackers) in a fresh temporary directory.
2. *Seeders.*  ``--num-seeders`` long-lived seeders of one kind on 127.0.0.1:
   ``fasttorrent seed`` processes (one worker each) or libtorrent seeders
   (:mod:`torrent.tools.benchclients.lt_seed`).  With ``--compare-seeding`` both
   kinds run side by side and every client downloads from each in turn.
   With ``--seeder-encryption rc4`` the libtorrent seeders force MSE/PE with
   RC4 both ways (``pe_forced``, ``allowed_enc_level`` ``pe_rc4``): an
   encrypted download, for the clients that speak MSE (``ftK``, which dials
   plaintext, is dropped, and dials MSE; ``lt-enc``).
3. *Clients and how they find the seeders.*  ``ftK`` is ``fasttorrent download
   --workers K`` and ``lt-default`` / ``lt-fast`` libtorrent's downloader
   (default settings / ``high_performance_seed()``); these are given the
   seeders' addresses.  aria2c takes no peer addresses, so it is pointed
   (``--bt-tracker``) at a tracker inside this process that hands out the
   seeders (the torrent itself stays trackerless).  transmission-cli drops
   loopback peers that a tracker hands out, so it has to be dialled: once its
   port listens, ``--num-seeders`` extra seeders of the same kind are started
   for that run with ``--peer`` set to it.  The time from its port listening
   until the first of them serves is the seeders' start-up, not
   transmission's, and is subtracted from its time (recorded as
   ``dial_wait``).  Transmission never exits by itself: its torrent-done
   script (``-f``) only creates a marker file; this process sees it and sends
   SIGINT to transmission's process group, upon which it closes its files and
   exits.  aria2c exits by itself (``--seed-time=0``).  Every
   client has DHT, LPD/LSD, PEX, UPnP/NAT-PMP off and is bound to 127.0.0.1.
   With ``--magnet`` every client starts from a magnet link instead of the
   torrent: no tracker, the seeders named by ``x.pe`` (fasttorrent and
   libtorrent take them from there; aria2c is still pointed at the loopback
   tracker).  Transmission is refused then.
4. *Runs.*  One untimed warm-up download per seeder set, then the runs
   interleaved (run 1 of every client, then run 2, ..., the order rotated each
   run), each into a fresh directory.  A run counts only if the client exited
   0 and every file is byte-identical to the payload.  Between runs (untimed)
   the output is deleted and ``sync`` flushes what is still dirty.
5. *Measures.*  Wall time from spawn to exit; CPU of the client's whole
   process tree from ``wait4`` (the client and every descendant it reaped);
   peak PSS of the tree (every process in the client's session, sampled from
   ``/proc`` every :data:`SAMPLE_INTERVAL`; a shared arena is counted once,
   split between the processes that map it); the seeders' CPU meanwhile.
   fasttorrent (``--json``) and libtorrent's downloader report, on stdout,
   the time to the metadata (0 from a torrent) and to the first verified
   piece, counted inside the client from the start of its download (so the
   interpreter's start-up is in the wall time but not in these).
6. *Report.*  Per client: median and min-max MB/s (bytes over the whole wall
   time: with ``--magnet`` the metadata phase is in it), the median times to
   metadata and to the first piece, CPU s/GiB, peak PSS,
   and the ratio to the fastest fasttorrent configuration in the same seeder
   set (with ``--compare-seeding``: to the same client served by fasttorrent
   seeders).  JSON (raw runs, summary, versions), a Markdown table, and a PNG
   chart when matplotlib is installed (extra ``bench``).
7. *Pinning* (``--client-cpus 0 --seeder-cpus 1``): the client's process tree
   and the seeders run under ``taskset`` on disjoint CPU sets, so that ``ft1``
   on one core measures one worker's throughput (the coordinator shares its
   core) without the seeders taking turns on it.
8. *Bounds and cleanup.*  Every process runs in its own session under
   ``timeout`` (so it ends even if this process is killed), is stopped with
   SIGINT, then SIGKILL after :data:`~torrent.tools.procs.STOP_GRACE`; on
   Ctrl-C / SIGTERM every group is stopped, the temporary directory removed
   (unless ``--keep``) and any ``/dev/shm`` segment that a killed process had
   mapped is unlinked (:mod:`torrent.tools.procs`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import importlib.util
import io
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO

from ..errors import Interrupted, StorageError, UsageError
from ..ports import free_port
from ..units import size_arg
from .payload import make_payload, same_files
from .procs import Proc, Processes, cpu_seconds, pss, session_pids, shm_names
from .seeders import SEEDER_KINDS, Seeder, start_seeders

__all__ = ["BenchConfig", "add_arguments", "parse_clients", "run_bench", "run_from_args"]

#: How long a seeder may take to start serving (it trusts its data: no hashing).
SEEDER_START_TIMEOUT = 120.0
#: Peak PSS sampling period; shorter steals more CPU from the client measured.
SAMPLE_INTERVAL = 0.1
#: Every this many PSS samples, the /dev/shm segments mapped are noted too.
SHM_SCAN_EVERY = 10
#: How often the harness looks for transmission's torrent-done marker.
DONE_POLL = 0.02
#: How long transmission-cli may take to open its listening port.
LISTEN_TIMEOUT = 30.0
#: Default bound of one download.
DEFAULT_TIMEOUT = 600.0
#: Extra lifetime of the long-lived seeders beyond the longest possible bench.
SEEDER_LIFETIME_MARGIN = 600.0
#: Smallest piece length a torrent may have (a 16 KiB block).
MIN_PIECE = 16 << 10

#: At most this much of the end of a client's stdout is read: fasttorrent's --json
#: object (a few hundred bytes per peer and worker) or lt_download's one line.
MAX_CLIENT_STDOUT = 4 << 20
#: The times a client reports on stdout (seconds from the start of its download).
CLIENT_TIMES = ("metadata_seconds", "first_piece_seconds")

#: The client kinds that can start from a magnet link (--magnet).
MAGNET_KINDS = ("ft", "lt", "aria2")
#: ``--seeder-encryption``: the libtorrent seeders' MSE/PE (off, or forced with RC4).
SEEDER_ENCRYPTION = ("off", "rc4")
#: The client kinds that download a v2-only torrent (BEP 52): aria2 1.36 and
#: Transmission 3.00 read v1 only.
V2_KINDS = ("ft", "lt")

#: Accepted spellings of the external clients.
ALIASES = {"aria2c": "aria2", "transmission-cli": "transmission"}


def _positive_int(s: str) -> int:
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if not 1 <= n <= 100_000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 100000, got {n}")
    return n


#: At most this many CPUs in a --client-cpus / --seeder-cpus list.
MAX_CPU_LIST = 4096


def cpu_list_arg(text: str) -> tuple[int, ...]:
    """``taskset -c`` syntax, ``0``, ``0,2``, ``0-3,8``: the CPU numbers, sorted.

    Raises:
        argparse.ArgumentTypeError: not such a list, or more than MAX_CPU_LIST CPUs.
    """
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            lo, sep, hi = part.strip().partition("-")
            first, last = int(lo), int(hi) if sep else int(lo)
            if first < 0 or last < first or last - first >= MAX_CPU_LIST:
                raise ValueError(part)
            cpus.update(range(first, last + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a CPU list (e.g. 0 or 0-3,8): {text!r}") from None
    if len(cpus) > MAX_CPU_LIST:
        raise argparse.ArgumentTypeError(f"more than {MAX_CPU_LIST} CPUs: {text!r}")
    return tuple(sorted(cpus))


def _cpu_list_text(cpus: set[int]) -> str:
    return ",".join(map(str, sorted(cpus)))


def _log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# -- clients ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ClientSpec:
    """One downloader configuration: ``kind`` is ft, lt, aria2, transmission or custom."""

    label: str
    kind: str
    workers: int = 0  # ft: --workers
    profile: str = ""  # lt: default | fast
    template: str = ""  # custom: a shell command with {torrent} {magnet} {out} {peers} {port}
    #                     {python}
    tree: str = ""  # ft: run the package of this source checkout (ftN@TREE), not this one


def _have_libtorrent() -> bool:
    return importlib.util.find_spec("libtorrent") is not None


def _known(name: str) -> ClientSpec | None:
    name = ALIASES.get(name, name)
    base, at, tree = name.partition("@")
    if base.startswith("ft") and base[2:].isdigit() and 1 <= int(base[2:]) <= 1024:
        if not at:
            return ClientSpec(name, "ft", workers=int(base[2:]))
        # ftN@TREE: another build of fasttorrent (a checkout with its core built in
        # place), measured interleaved with this one on the same swarm
        path = os.path.abspath(os.path.expanduser(tree))
        if not os.path.isfile(os.path.join(path, "torrent", "__main__.py")):
            raise UsageError(f"--clients: {name}: {path} is not a fasttorrent source tree")
        return ClientSpec(f"{base}@{os.path.basename(path.rstrip('/'))}", "ft",
                          workers=int(base[2:]), tree=path)
    if name in ("lt-default", "lt-fast", "lt-enc"):
        return ClientSpec(name, "lt", profile=name[3:])
    if name in ("aria2", "transmission"):
        return ClientSpec(name, name)
    return None


def _missing_part(spec: ClientSpec) -> str | None:
    """What is not installed for this client to run, or None."""
    if spec.kind == "lt" and not _have_libtorrent():
        return "the libtorrent Python module (pip install libtorrent)"
    if spec.kind == "aria2" and shutil.which("aria2c") is None:
        return "aria2c (apt-get install aria2)"
    if spec.kind == "transmission" and shutil.which("transmission-cli") is None:
        return "transmission-cli (apt-get install transmission-cli)"
    return None


def default_clients(cpus: int) -> list[ClientSpec]:
    """ft1..ftN for N = ``cpus``, then lt-default, lt-fast, aria2, transmission where installed."""
    names = [f"ft{k}" for k in range(1, cpus + 1)]
    names += ["lt-default", "lt-fast", "aria2", "transmission"]
    out = []
    for n in names:
        spec = _known(n)
        if spec is not None and _missing_part(spec) is None:
            out.append(spec)
    return out


def parse_clients(text: str | None, cpus: int, *, allow_custom: bool = True) -> list[ClientSpec]:
    """The ``--clients`` list; the defaults when None.

    Raises:
        UsageError: an unknown name, one named twice, or one that is not installed.
    """
    if text is None:
        return default_clients(cpus)
    out: list[ClientSpec] = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        label, eq, cmd = item.partition("=")
        if eq and allow_custom:
            if not label or not cmd:
                raise UsageError(f"--clients: {item!r}: expected LABEL=COMMAND")
            spec = ClientSpec(label, "custom", template=cmd)
        else:
            known = _known(item)
            if known is None:
                raise UsageError(f"--clients: unknown client {item!r} (known: ftN for N workers, "
                                 "ftN@TREE for another source tree's build, lt-default, lt-enc, "
                                 "lt-fast, aria2, transmission)")
            missing = _missing_part(known)
            if missing is not None:
                raise UsageError(f"--clients: {item} needs {missing}, which is not installed")
            spec = known
        if any(s.label == spec.label for s in out):
            raise UsageError(f"--clients: {spec.label} named twice")
        out.append(spec)
    if not out:
        raise UsageError("--clients: no client named")
    return out


class LoopbackTracker:
    """A minimal HTTP tracker on 127.0.0.1 that hands out :attr:`peers` (for aria2c)."""

    def __init__(self) -> None:
        self.peers: list[tuple[str, int]] = []
        tracker = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                from ..bencoding import encode

                compact = b"".join(socket.inet_aton(h) + p.to_bytes(2, "big")
                                   for h, p in tracker.peers)
                body = encode({"interval": 1800, "min interval": 1800, "peers": compact})
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/announce"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- versions ---------------------------------------------------------------------------
def _first_line(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (r.stdout or r.stderr).strip()
    return text.splitlines()[0] if text else None


def versions() -> dict[str, Any]:
    """Versions of every client and of the machine, for the report."""
    from .. import __version__
    from ..sysinfo import available_cpus

    v: dict[str, Any] = {"fasttorrent": __version__, "python": platform.python_version(),
                         "kernel": platform.release(), "machine": platform.machine(),
                         "cpus": available_cpus(), "cpu": platform.processor() or None}
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        v["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f
                         if ln.startswith("model name")), v["cpu"])
    for dist in ("libtorrent", "uvloop", "matplotlib"):
        try:
            v[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            v[dist] = None
    v["aria2c"] = _first_line(["aria2c", "--version"])
    v["transmission-cli"] = _first_line(["transmission-cli", "--version"])
    return v


# -- one run ----------------------------------------------------------------------------
@dataclass
class RunContext:
    procs: Processes
    torrent: str
    peers: list[Seeder]
    seeder_kind: str
    num_seeders: int
    data_dir: str
    workdir: str
    timeout: float
    tracker: LoopbackTracker | None
    extra_fmt: dict[str, str] = field(default_factory=dict)
    #: with --magnet: the magnet every client starts from (x.pe: these seeders)
    magnet: str | None = None
    #: the libtorrent seeders' MSE/PE: "off" or "rc4" (forced)
    seeder_encryption: str = "off"
    #: --client-cpus / --seeder-cpus (None: any CPU)
    client_cpus: tuple[int, ...] | None = None
    seeder_cpus: tuple[int, ...] | None = None


def _listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port`` (from /proc/net/tcp, no connection)."""
    want = f"0100007F:{port:04X}"
    with contextlib.suppress(OSError), open("/proc/net/tcp") as f:
        for ln in f:
            parts = ln.split()
            if len(parts) > 3 and parts[1] == want and parts[3] == "0A":
                return True
    return False


def _transmission_setup(scratch: str, out: str, port: int) -> tuple[str, str, str]:
    """Write transmission's own config dir (loopback only) and its torrent-done script,
    which only leaves a marker file: this process sees it and stops transmission."""
    cfg = os.path.join(scratch, "cfg")
    os.makedirs(cfg)
    settings = {
        "bind-address-ipv4": "127.0.0.1", "bind-address-ipv6": "::1",
        "dht-enabled": False, "lpd-enabled": False, "pex-enabled": False,
        "utp-enabled": False, "port-forwarding-enabled": False, "blocklist-enabled": False,
        "peer-port": port, "peer-port-random-on-start": False,
        "encryption": 0,  # prefer plaintext (fasttorrent does not speak MSE)
        "speed-limit-down-enabled": False, "speed-limit-up-enabled": False,
        "alt-speed-enabled": False, "download-dir": out, "incomplete-dir-enabled": False,
        "rename-partial-files": False, "start-added-torrents": True, "message-level": 1,
    }
    with open(os.path.join(cfg, "settings.json"), "w") as f:
        json.dump(settings, f, indent=1)
    marker = os.path.join(scratch, "torrent-done")
    done = os.path.join(scratch, "done.sh")
    with open(done, "w") as f:
        f.write(f"#!/bin/sh\n: > {shlex.quote(marker)}\n")
    os.chmod(done, 0o755)
    return cfg, done, marker


def _stop_when_done(marker: str, proc: Proc, stop: threading.Event) -> None:
    """SIGINT to ``proc``'s group once ``marker`` exists (transmission finished its torrent)."""
    while not stop.is_set():
        if os.path.exists(marker):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGINT)
            return
        stop.wait(DONE_POLL)


#: Flags of ``download`` that not every fasttorrent tree has (see :func:`_tree_flags`).
OPTIONAL_FT_FLAGS = ("--no-dht", "--encryption")


@functools.cache
def _tree_flags(tree: str) -> frozenset[str]:
    """Which of :data:`OPTIONAL_FT_FLAGS` the CLI of ``tree`` (``""``: this one) has."""
    if not tree:
        return frozenset(OPTIONAL_FT_FLAGS)
    try:
        with open(os.path.join(tree, "torrent", "cli.py"), encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return frozenset()
    return frozenset(flag for flag in OPTIONAL_FT_FLAGS if f'"{flag}"' in text)


def _client_argv(spec: ClientSpec, ctx: RunContext, out: str, port: int, cfg: str,
                 done: str) -> list[str]:
    peers = ",".join(s.addr for s in ctx.peers)
    if spec.kind == "curl":  # the loopback HTTP path's limit: the file to /dev/null
        return ["curl", "-s", "--fail", "-o", "/dev/null", "-w", "%{stderr}%{size_download}",
                ctx.extra_fmt["web_file"]]
    if spec.kind == "ft":
        # --json: the result's metadata_seconds and first_piece_seconds, on stdout
        source = [ctx.magnet] if ctx.magnet else [ctx.torrent] + (
            ["--peer", peers] if peers else [])
        # the swarm's rule, as for lt-default and lt-fast: plaintext seeders are
        # dialled in plaintext; MSE seeders with --encryption enabled (MSE first)
        enc = "disabled" if ctx.seeder_encryption == "off" else "enabled"
        # an older tree (ftN@TREE, a before/after comparison) gets only the flags
        # it has: one without them had no DHT and dialled in plaintext anyway
        has = _tree_flags(spec.tree)
        return [sys.executable, "-m", "torrent", "download", *source, "-o", out,
                "--no-trackers", *(["--no-dht"] if "--no-dht" in has else []), "-q", "--json",
                "--workers", str(spec.workers),
                *(["--encryption", enc] if "--encryption" in has else []),
                "--bind", "127.0.0.1", "--port", str(port)]
    if spec.kind == "lt":
        source = ["--magnet", ctx.magnet] if ctx.magnet else ["--peers", peers, ctx.torrent]
        return [sys.executable, "-m", "torrent.tools.benchclients.lt_download", "--profile",
                spec.profile, "--port", str(port), "--timeout", str(int(ctx.timeout)),
                *source, out]
    if spec.kind == "aria2":
        assert ctx.tracker is not None
        return ["aria2c", "--no-conf=true", f"--dir={out}", "--seed-time=0",
                "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
                "--enable-peer-exchange=false", f"--listen-port={port}",
                "--interface=127.0.0.1", "--disable-ipv6=true", "--file-allocation=none",
                "--summary-interval=0", "--console-log-level=warn", "--quiet=true",
                "--bt-save-metadata=false", "--max-overall-upload-limit=0",
                "--max-overall-download-limit=0", "--bt-max-peers=0",
                f"--bt-tracker={ctx.tracker.url}", ctx.magnet or ctx.torrent]
    if spec.kind == "transmission":
        return ["transmission-cli", "-g", cfg, "-w", out, "-p", str(port), "-D", "-U", "-M",
                "-et", "-f", done, ctx.torrent]
    cmd = spec.template.format(torrent=ctx.torrent, magnet=ctx.magnet or "", out=out,
                               peers=peers, port=port, python=sys.executable, **ctx.extra_fmt)
    return ["sh", "-c", cmd]


def run_client(spec: ClientSpec, ctx: RunContext, out: str, scratch: str) -> dict[str, Any]:
    """One timed download of ``spec`` into ``out`` (empty); the measures, not yet verified."""
    port = free_port()
    cfg = done = marker = ""
    if spec.kind == "transmission":
        cfg, done, marker = _transmission_setup(scratch, out, port)
    argv = _client_argv(spec, ctx, out, port, cfg, done)
    if ctx.tracker is not None:
        ctx.tracker.peers = [("127.0.0.1", s.port) for s in ctx.peers]
    errpath = os.path.join(scratch, "client.err")
    outpath = os.path.join(scratch, "client.out")
    dialers: list[Seeder] = []
    peak = 0
    dial_wait = 0.0
    stop = threading.Event()
    seed_pids = [pid for s in ctx.peers for pid in session_pids(s.proc.pid)]
    seed_cpu0 = cpu_seconds(seed_pids)
    with open(errpath, "w+") as err, open(outpath, "wb+") as stdout:
        t0 = time.perf_counter()
        proc = ctx.procs.spawn(argv, spec.label, timeout=ctx.timeout, stdout=stdout,
                               stderr=err, cwd=scratch, tree=spec.tree or None,
                               cpus=ctx.client_cpus)
        if marker:
            threading.Thread(target=_stop_when_done, args=(marker, proc, stop),
                             daemon=True).start()

        def sample() -> None:
            nonlocal peak
            k = 0
            while not stop.is_set():
                pids = session_pids(proc.pid)
                peak = max(peak, sum(pss(pid) for pid in pids))
                if k % SHM_SCAN_EVERY == 0:
                    for pid in pids:
                        proc.shm |= shm_names(pid)
                k += 1
                stop.wait(SAMPLE_INTERVAL)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        try:
            if spec.kind == "transmission":
                dialers, dial_wait = _dial_in(ctx, proc, port)
            _, status, ru = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            proc.reaped = True
            proc.popen.returncode = os.waitstatus_to_exitcode(status)
        finally:
            stop.set()
            th.join()
            ctx.procs.stop([proc] + [d.proc for d in dialers])
        seed_pids = [pid for s in ctx.peers for pid in session_pids(s.proc.pid)]
        seed_cpu = cpu_seconds(seed_pids) - seed_cpu0
        err.seek(0)
        tail = err.read()[-2000:]
        # its last lines: where the JSON object is
        stdout.seek(max(0, stdout.seek(0, os.SEEK_END) - MAX_CLIENT_STDOUT))
        times = client_times(stdout.read().decode(errors="replace"))
    return {"exit": proc.popen.returncode, "wall": wall - dial_wait, "wall_raw": wall,
            "dial_wait": dial_wait, "cpu_user": ru.ru_utime, "cpu_sys": ru.ru_stime,
            "cpu": ru.ru_utime + ru.ru_stime, "peak_pss": peak, "seeders_cpu": seed_cpu,
            **times, "stderr": tail}


def client_times(stdout: str) -> dict[str, float | None]:
    """``metadata_seconds`` and ``first_piece_seconds`` from the last JSON object a client
    printed (``fasttorrent download --json``, lt_download); None where it said nothing."""
    doc: Any = None
    for ln in reversed(stdout.splitlines()):
        if ln.startswith("{"):
            with contextlib.suppress(ValueError):
                doc = json.loads(ln)
            break
    out: dict[str, float | None] = {}
    for key in CLIENT_TIMES:
        v = doc.get(key) if isinstance(doc, dict) else None
        # a number of seconds (JSON true is an int to Python: not one)
        if isinstance(v, int | float) and not isinstance(v, bool) and v >= 0:
            out[key] = float(v)
        else:
            out[key] = None
    return out


def _dial_in(ctx: RunContext, proc: Proc, port: int) -> tuple[list[Seeder], float]:
    """Once the client listens on ``port``, start seeders that dial it; return them and the
    time from listening until the first one served."""
    end = time.monotonic() + LISTEN_TIMEOUT
    while not _listening(port):
        if proc.popen.poll() is not None or time.monotonic() > end:
            return [], 0.0
        time.sleep(0.01)
    t_listen = time.perf_counter()
    first: list[float] = []
    dialers = start_seeders(ctx.procs, ctx.seeder_kind, ctx.num_seeders, ctx.torrent,
                            ctx.data_dir, ctx.workdir, lifetime=ctx.timeout,
                            timeout=SEEDER_START_TIMEOUT, dial=f"127.0.0.1:{port}",
                            on_ready=lambda: first.append(time.perf_counter()), who="bench",
                            encryption=ctx.seeder_encryption, cpus=ctx.seeder_cpus)
    return dialers, (first[0] - t_listen) if first else 0.0


# -- the bench --------------------------------------------------------------------------
@dataclass
class BenchConfig:
    """What to measure; see :func:`add_arguments` for the meaning of each field."""

    size: int = 1 << 30
    files: int = 1
    piece: int = 1 << 20
    seeder_kind: str = "fasttorrent"
    num_seeders: list[int] = field(default_factory=lambda: [4])
    runs: int = 5
    clients: list[ClientSpec] = field(default_factory=list)
    results: str = "bench-results"
    timeout: float = DEFAULT_TIMEOUT
    keep: bool = False
    compare_seeding: bool = False
    #: every client starts from a magnet link (x.pe: the seeders) instead of the torrent
    magnet: bool = False
    #: the libtorrent seeders' MSE/PE: "off" (the swarm's rule) or "rc4" (forced RC4)
    seeder_encryption: str = "off"
    warmup: bool = True
    workdir: str | None = None
    #: the results' file name without extension (default: a time stamp and the parameters)
    base: str | None = None
    #: also write one JSON line per run as it ends (header first)
    jsonl: bool = False
    extra_fmt: dict[str, str] = field(default_factory=dict)
    #: BEP 19: nginx on loopback serves the payload and the torrent names it (url-list);
    #: the sets are then web seed alone (0 seeders) and web seed plus libtorrent seeders
    web_seed: bool = False
    #: pin the client's process tree / the seeders to these CPUs (None: any)
    client_cpus: tuple[int, ...] | None = None
    seeder_cpus: tuple[int, ...] | None = None
    #: the torrent's kind: "v1", "v2" (v2-only, BEP 52) or "hybrid"
    version: str = "v1"
    #: keep each run's output until the bench ends (see ``--keep-outputs``)
    keep_outputs: bool = False


#: With --web-seed: the seeder sets (libtorrent seeders besides the web seed).
WEB_SEED_SETS = (0, 2)


def _size_label(n: int) -> str:
    for unit, mult in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n % mult == 0:
            return f"{n // mult}{unit}"
    return str(n)


def _seeder_sets(cfg: BenchConfig) -> list[tuple[str, int]]:
    if cfg.web_seed:
        return [("libtorrent", n) for n in WEB_SEED_SETS]
    kinds = list(SEEDER_KINDS) if cfg.compare_seeding else [cfg.seeder_kind]
    return [(k, n) for n in cfg.num_seeders for k in kinds]


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (and SIGHUP) raise :class:`Interrupted` like Ctrl-C does, so cleanup runs;
    SIGINT raises KeyboardInterrupt even where it was inherited ignored (a shell
    without job control starts background commands so), as ``download`` and
    ``seed`` stop on it whatever they inherited."""

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(f"bench: stopped by {signal.Signals(signum).name}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _compile_package(tree: str | None) -> None:
    """Write the bytecode caches of the ``torrent`` package a client runs (this one, or
    ``tree``'s), as an installed package has them: a run then never compiles its
    modules, even under ``PYTHONDONTWRITEBYTECODE`` (which stops a child writing
    them, not reading them). Untimed; a tree that cannot be written is left as is."""
    import compileall

    root = os.path.join(tree, "torrent") if tree else os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))
    with contextlib.redirect_stdout(io.StringIO()):
        compileall.compile_dir(root, quiet=2)


def run_bench(cfg: BenchConfig, out: TextIO | None = None) -> dict[str, Any]:
    """Run the whole bench; write the reports; return the JSON document written.

    Raises:
        Interrupted: SIGINT / SIGTERM (everything started is stopped and removed first).
        StorageError: a seeder did not start, or the results cannot be written.
    """
    from .. import metainfo
    from ..creator import create_torrent
    from ..magnet import magnet_uri
    from ..sysinfo import available_cpus

    out = out or sys.stdout
    if cfg.files > cfg.size:
        raise UsageError(f"--files {cfg.files}: more files than bytes in --size")
    cpus = available_cpus()
    clients = cfg.clients or default_clients(cpus)
    sets = _seeder_sets(cfg)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    mode = "compare-seeding" if cfg.compare_seeding else cfg.seeder_kind
    base = cfg.base or os.path.join(
        cfg.results, f"bench-{stamp}-{_size_label(cfg.size)}-{cfg.files}f-"
        f"{_size_label(cfg.piece)}-{mode}-s{'_'.join(map(str, cfg.num_seeders))}"
        + ("-magnet" if cfg.magnet else "") + ("-webseed" if cfg.web_seed else "")
        + ("-" + cfg.version if cfg.version != "v1" else "")
        + ("-" + cfg.seeder_encryption if cfg.seeder_encryption != "off" else ""))
    try:
        os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
    except OSError as e:
        raise StorageError(f"bench: cannot create {os.path.dirname(base)}: {e.strerror}") from None
    params = {"size": cfg.size, "files": cfg.files, "piece": cfg.piece, "seeders": mode,
              "num_seeders": cfg.num_seeders, "runs": cfg.runs, "timeout": cfg.timeout,
              "magnet": cfg.magnet, "seeder_encryption": cfg.seeder_encryption,
              "version": cfg.version, "keep_outputs": cfg.keep_outputs,
              "web_seed": cfg.web_seed, "client_cpus": cfg.client_cpus,
              "seeder_cpus": cfg.seeder_cpus,
              "clients": [c.label for c in clients], "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    doc: dict[str, Any] = {"params": params, "versions": versions(), "runs": [], "summary": []}
    procs = Processes()
    tracker: LoopbackTracker | None = None
    nginx: Any = None
    work = cfg.workdir or tempfile.mkdtemp(prefix="fasttorrent-bench-")
    os.makedirs(work, exist_ok=True)
    _log(f"work dir {work}; results {base}.*")
    for tree in {c.tree for c in clients if c.kind == "ft"}:
        _compile_package(tree or None)
    jsonl = open(base + ".jsonl", "w") if cfg.jsonl else None
    try:
        with _terminate_as_interrupt():
            if jsonl:
                jsonl.write(json.dumps({"kind": "header", **params,
                                        "versions": doc["versions"]}) + "\n")
            src = os.path.join(work, "src")
            os.makedirs(src, exist_ok=True)
            t = time.perf_counter()
            target, rels = make_payload(src, cfg.size, cfg.files)
            tdata = create_torrent(target, piece_length=cfg.piece, workers=cpus,
                                   version=cfg.version)
            torrent = os.path.join(work, "bench.torrent")
            with open(torrent, "wb") as f:
                f.write(tdata)
            if cfg.web_seed:
                nginx = _start_web_seed(cfg, procs, src, work, torrent, rels)
                clients = [*clients, ClientSpec("curl", "curl")]
            os.sync()  # a payload still being written back would slow the first runs down
            _log(f"payload {_size_label(cfg.size)} in {cfg.files} file(s), torrent made in "
                 f"{time.perf_counter() - t:.1f} s")
            if any(c.kind == "aria2" for c in clients):
                tracker = LoopbackTracker()
            total = cfg.runs * len(clients) * len(sets) \
                - cfg.runs * sum(1 for c in clients if c.kind == "curl") * (len(sets) - 1)
            lifetime = total * cfg.timeout + SEEDER_LIFETIME_MARGIN
            seeders: dict[tuple[str, int], list[Seeder]] = {}
            magnets: dict[tuple[str, int], str | None] = {}
            meta = metainfo.load(torrent) if cfg.magnet else None
            done = 0
            for n in cfg.num_seeders:
                group = [(k, m) for k, m in sets if m == n]
                for key in group:
                    seeders[key] = start_seeders(procs, key[0], n, torrent, src, work,
                                                 lifetime=lifetime, timeout=SEEDER_START_TIMEOUT,
                                                 who="bench", encryption=cfg.seeder_encryption,
                                                 cpus=cfg.seeder_cpus)
                    _log(f"{n} {key[0]} seeder(s) on "
                         + ", ".join(s.addr for s in seeders[key]))
                    # trackerless: the seeders are named by x.pe only
                    magnets[key] = None if meta is None else magnet_uri(
                        meta, trackers=[], peers=[("127.0.0.1", s.port) for s in seeders[key]])
                # curl: the web seed's path alone (no peers), measured once per run
                jobs = [(c, key) for c in clients for key in group
                        if c.kind != "curl" or key[1] == 0]
                if cfg.warmup:
                    # Seeders just started are slower for a run or so (their caches
                    # fill): one untimed download per seeder set, not recorded.
                    warm = next((c for c in clients if c.kind == "ft"), clients[0])
                    for key in group:
                        _one_run(cfg, procs, tracker, torrent, src, work, rels, warm, key,
                                 seeders[key], magnets[key], run=-1)
                        _log(f"warm-up ({warm.label} from {key[0]} seeders) done")
                for run in range(cfg.runs):
                    # rotate the order, so no client always follows the same other one
                    r = run % len(jobs)
                    for spec, key in jobs[r:] + jobs[:r]:
                        row = _one_run(cfg, procs, tracker, torrent, src, work, rels, spec,
                                       key, seeders[key], magnets[key], run=run)
                        done += 1
                        doc["runs"].append(row)
                        if jsonl:
                            jsonl.write(json.dumps({"kind": "run", **row}) + "\n")
                            jsonl.flush()
                        _log(f"run {done}/{total} {row['client']}: "
                             f"{'OK ' if row['ok'] else 'BAD'} {row['wall']:6.2f} s "
                             f"{row['rate'] / 1e6:8.1f} MB/s  cpu {row['cpu']:5.2f} s  "
                             f"pss {row['peak_pss'] / 2**20:5.0f} MiB"
                             + _times_text(row)
                             + ("" if row["ok"] else f"  exit {row['exit']}"))
                procs.stop([s.proc for key in group for s in seeders.pop(key)])
    except KeyboardInterrupt:
        raise Interrupted("bench: interrupted") from None
    finally:
        with _terminate_as_interrupt():  # a second signal must not skip the cleanup
            procs.stop_all()
            if nginx is not None:
                nginx.stop()
            if tracker is not None:
                tracker.close()
            if jsonl:
                jsonl.close()
            if cfg.keep or cfg.workdir:
                _log(f"kept {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
    doc["summary"] = summarize(doc["runs"], compare_seeding=cfg.compare_seeding)
    md = markdown(doc)
    save_results(base, doc, md)
    chart = write_chart(doc, base + ".png")
    print(md, file=out)
    print(f"results: {base}.json, {base}.md" + (f", {base}.png" if chart else ""), file=out)
    if not chart:
        print("chart skipped: matplotlib is not installed (pip install 'fasttorrent[bench]')",
              file=out)
    return doc


def _start_web_seed(cfg: BenchConfig, procs: Processes, src: str, work: str, torrent: str,
                    rels: Sequence[str]) -> Any:
    """nginx serving ``src`` on loopback, named by the torrent's url-list (its info-hash
    unchanged); ``cfg.extra_fmt['web_file']``: the URL of the first file (for curl)."""
    from urllib.parse import quote

    from .. import bencoding
    from .nginx import Nginx

    ng = Nginx(src, os.path.join(work, "nginx")).start()
    with open(torrent, "rb") as f:
        top = bencoding.decode(f.read())
    top[b"url-list"] = [ng.url.encode()]
    with open(torrent, "wb") as f:
        f.write(bencoding.encode(top))
    cfg.extra_fmt["web_file"] = ng.url + quote(rels[0])
    _log(f"nginx web seed on {ng.url}")
    return ng


#: --keep-outputs: free disk left besides the next run's output before the kept
#: outputs are deleted.
KEEP_OUTPUTS_MARGIN = 1 << 30


def _make_room_for_run(cfg: BenchConfig, work: str) -> bool:
    """``--keep-outputs``: delete the kept outputs (``run-*`` under ``work``) when the
    next run's output would leave less than :data:`KEEP_OUTPUTS_MARGIN` of the disk
    free; whether they were deleted (the run is then marked, and its figure may
    carry the deletions' cost)."""
    if shutil.disk_usage(work).free >= cfg.size + KEEP_OUTPUTS_MARGIN:
        return False
    kept = [os.path.join(work, n) for n in os.listdir(work) if n.startswith("run-")]
    for d in kept:
        shutil.rmtree(d, ignore_errors=True)
    os.sync()
    if kept:
        _log(f"--keep-outputs: the disk ran short; deleted {len(kept)} kept output(s)")
    return bool(kept)


def _one_run(cfg: BenchConfig, procs: Processes, tracker: LoopbackTracker | None, torrent: str,
             src: str, work: str, rels: Sequence[str], spec: ClientSpec, key: tuple[str, int],
             peers: list[Seeder], magnet: str | None, run: int) -> dict[str, Any]:
    deleted = _make_room_for_run(cfg, work) if cfg.keep_outputs else False
    rundir = tempfile.mkdtemp(prefix=f"run-{spec.label}-", dir=work)
    try:
        outdir = os.path.join(rundir, "out")
        scratch = os.path.join(rundir, "scratch")
        os.makedirs(outdir)
        os.makedirs(scratch)
        ctx = RunContext(procs, torrent, peers, key[0], key[1], src, work, cfg.timeout, tracker,
                         cfg.extra_fmt, magnet, cfg.seeder_encryption, cfg.client_cpus,
                         cfg.seeder_cpus)
        r = run_client(spec, ctx, outdir, scratch)
        if spec.kind == "curl":
            ok = r["exit"] == 0 and r["stderr"].strip() == str(cfg.size)
        else:
            ok = r["exit"] == 0 and same_files(src, outdir, rels)
    finally:
        if not cfg.keep_outputs:
            shutil.rmtree(rundir, ignore_errors=True)
        # flush what this run left dirty (untimed), so its writeback does not
        # land in the next client's run
        os.sync()
    label = f"{spec.label}@{key[0]}" if cfg.compare_seeding else spec.label
    row: dict[str, Any] = {"client": label, "kind": spec.kind, "seeders": key[1],
                           "seeder_kind": key[0], "run": run, "ok": ok,
                           "rate": cfg.size / r["wall"] if r["wall"] > 0 else 0.0,
                           "cpu_per_gib": r["cpu"] / (cfg.size / 2**30),
                           **{k: v for k, v in r.items() if k != "stderr"}}
    if spec.kind == "ft":
        row["workers"] = spec.workers
    if deleted:
        row["outputs_deleted_before"] = True  # (--keep-outputs: the disk ran short)
    if not ok:
        row["stderr"] = r["stderr"]
    return row


def _times_text(row: dict[str, Any]) -> str:
    """The client's own times for the progress line ("" when it reported none)."""
    parts = [f"{name} {row[key]:.2f} s" for name, key in (("metadata", "metadata_seconds"),
                                                          ("first piece", "first_piece_seconds"))
             if row.get(key) is not None]
    return "  " + ", ".join(parts) if parts else ""


def _median_of(rows: Sequence[dict[str, Any]], key: str) -> float | None:
    """The median of ``key`` over the rows that have it; None when none has."""
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


# -- reports ----------------------------------------------------------------------------
def summarize(rows: Sequence[dict[str, Any]], *, compare_seeding: bool) -> list[dict[str, Any]]:
    """One entry per (seeders, client): medians over the verified runs, and the ratio to
    the reference (the fastest fasttorrent configuration in the same seeder set; with
    compare_seeding, the same client served by fasttorrent seeders)."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["seeders"], r["client"]), []).append(r)
    out = []
    for (ns, client), rs in groups.items():
        ok = [r for r in rs if r["ok"]]
        e: dict[str, Any] = {"client": client, "kind": rs[0]["kind"], "seeders": ns,
                             "seeder_kind": rs[0]["seeder_kind"], "runs": len(rs),
                             "valid": len(ok), "workers": rs[0].get("workers")}
        if ok:
            rates = [r["rate"] / 1e6 for r in ok]
            e.update(mbps_median=statistics.median(rates), mbps_min=min(rates),
                     mbps_max=max(rates),
                     wall_median=statistics.median(r["wall"] for r in ok),
                     cpu_per_gib_median=statistics.median(r["cpu_per_gib"] for r in ok),
                     metadata_seconds_median=_median_of(ok, "metadata_seconds"),
                     first_piece_seconds_median=_median_of(ok, "first_piece_seconds"),
                     peak_pss_max=max(r["peak_pss"] for r in ok),
                     seeders_cpu_per_gib_median=statistics.median(
                         r["seeders_cpu"] / (r["rate"] * r["wall"] / 2**30) for r in ok))
        out.append(e)
    for e in out:
        if compare_seeding:
            base = e["client"].rsplit("@", 1)[0]
            refs = [x for x in out if x["seeders"] == e["seeders"]
                    and x["client"] == f"{base}@fasttorrent"]
        else:
            # this build only: ftN@TREE entries are other builds, compared against it
            refs = [x for x in out if x["seeders"] == e["seeders"] and x["kind"] == "ft"
                    and "@" not in x["client"]]
        best = max((x for x in refs if "mbps_median" in x), key=lambda x: x["mbps_median"],
                   default=None)
        e["reference"] = best["client"] if best else None
        e["ratio"] = (e["mbps_median"] / best["mbps_median"]
                      if best and "mbps_median" in e and best["mbps_median"] > 0 else None)
    return out


def _secs(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def markdown(doc: dict[str, Any]) -> str:
    """The Markdown report: parameters, versions, one table row per client, and with
    ``--magnet`` one row per run too."""
    p, v = doc["params"], doc["versions"]
    magnet = bool(p.get("magnet"))
    kinds = " and ".join(SEEDER_KINDS) if p["seeders"] == "compare-seeding" else p["seeders"]
    rate = "MB/s whole run" if magnet else "MB/s"
    cols = ["client", "seeders", "valid/runs", f"{rate} median (min-max)"]
    cols += ["metadata s", "first piece s"] if magnet else ["first piece s"]
    cols += ["CPU s/GiB", "peak PSS MiB", "seeders' CPU s/GiB", "vs reference"]
    lines = [f"# fasttorrent bench, {p['time']}", "",
             (f"{_size_label(p['size'])} in {p['files']} file(s), {_size_label(p['piece'])} "
             f"pieces, {'/'.join(map(str, p['num_seeders']))} {kinds} seeder(s), "
             f"{p['runs']} run(s) per client, on 127.0.0.1"
             + (", every client starting from a magnet link (x.pe: the seeders; no tracker, "
                "no torrent)." if magnet else ".")), "",
             *([("Each run's files were kept until the bench ended (`--keep-outputs`)"
                 + (", but the disk ran short: the kept ones were deleted then, and the "
                    "run right after each deletion is marked in the JSON "
                    "(`outputs_deleted_before`)."
                    if any(r.get("outputs_deleted_before") for r in doc["runs"]) else
                    ": no run created its files just after another run's were deleted.")),
                ""] if p.get("keep_outputs") else []),
             ("Times (medians) are the clients' own, from the start of their download: "
              "to the metadata, to the first verified piece. MB/s is the payload over the "
              "whole wall time (spawn to exit" + (", the metadata phase included)."
                                                  if magnet else ").")), "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for e in doc["summary"]:
        seeders = f"{e['seeders']} {e['seeder_kind']}"
        if not e["valid"]:
            lines.append(f"| {e['client']} | {seeders} | 0/{e['runs']} |"
                         + " - |" * (len(cols) - 3))
            continue
        ratio = f"{e['ratio']:.2f}x {e['reference']}" if e["ratio"] is not None else "-"
        times = [_secs(e.get("metadata_seconds_median"))] if magnet else []
        times.append(_secs(e.get("first_piece_seconds_median")))
        lines.append(
            f"| {e['client']} | {seeders} | {e['valid']}/{e['runs']} | "
            f"{e['mbps_median']:.1f} ({e['mbps_min']:.1f}-{e['mbps_max']:.1f}) | "
            + " | ".join(times) + " | "
            f"{e['cpu_per_gib_median']:.2f} | {e['peak_pss_max'] / 2**20:.0f} | "
            f"{e['seeders_cpu_per_gib_median']:.2f} | {ratio} |")
    if magnet:
        lines += ["", "Per run, in the order they ran:", "",
                  "| run | client | valid | metadata s | first piece s | wall s | "
                  "MB/s whole run |", "|---|---|---|---|---|---|---|"]
        for r in doc["runs"]:
            lines.append(f"| {r['run'] + 1} | {r['client']} | {'yes' if r['ok'] else 'no'} | "
                         f"{_secs(r.get('metadata_seconds'))} | "
                         f"{_secs(r.get('first_piece_seconds'))} | {r['wall']:.2f} | "
                         f"{r['rate'] / 1e6:.1f} |")
    lines += ["", "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()
                                            if val is not None), ""]
    return "\n".join(lines)


def save_results(base: str, doc: dict[str, Any], md: str) -> None:
    """Write a sitting's raw results to ``base.json`` and its tables to ``base.md``
    (the directory made if need be). Raises StorageError."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(base)), exist_ok=True)
        with open(base + ".json", "w") as f:
            json.dump(doc, f, indent=1)
        with open(base + ".md", "w") as f:
            f.write(md)
    except OSError as e:
        raise StorageError(f"bench: cannot write {base}: {e.strerror}") from None


def write_chart(doc: dict[str, Any], path: str) -> bool:
    """A PNG: rate per client (median, min-max whiskers) and rate vs fasttorrent workers.

    Returns False, writing nothing, when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [e for e in doc["summary"] if e["valid"]]
    ft = sorted((e for e in rows if e["kind"] == "ft" and e["workers"]),
                key=lambda e: (e["seeders"], e["workers"]))
    fig, axes = plt.subplots(1, 2 if ft else 1, figsize=(12 if ft else 7, 4.5), squeeze=False)
    ax = axes[0][0]
    labels = [f"{e['client']}\n({e['seeders']} seeders)" if len(doc["params"]["num_seeders"]) > 1
              else e["client"] for e in rows]
    med = [e["mbps_median"] for e in rows]
    lo = [e["mbps_median"] - e["mbps_min"] for e in rows]
    hi = [e["mbps_max"] - e["mbps_median"] for e in rows]
    colors = ["tab:blue" if e["kind"] == "ft" else "tab:gray" for e in rows]
    ax.bar(range(len(rows)), med, yerr=[lo, hi], capsize=4, color=colors)
    ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("MB/s (median, min-max)")
    ax.set_title("Download rate per client")
    if ft:
        ax2 = axes[0][1]
        for ns in sorted({e["seeders"] for e in ft}):
            es = [e for e in ft if e["seeders"] == ns]
            ws = [e["workers"] for e in es]
            ax2.errorbar(ws, [e["mbps_median"] for e in es],
                         yerr=[[e["mbps_median"] - e["mbps_min"] for e in es],
                               [e["mbps_max"] - e["mbps_median"] for e in es]],
                         marker="o", capsize=4, label=f"{ns} seeders")
        ax2.set_xticks(sorted({e["workers"] for e in ft}))
        ax2.set_xlabel("fasttorrent --workers")
        ax2.set_ylabel("MB/s")
        ax2.set_ylim(bottom=0)
        ax2.set_title("fasttorrent rate vs workers")
        ax2.legend(fontsize=8)
    p = doc["params"]
    fig.suptitle(f"{_size_label(p['size'])}, {p['files']} file(s), {p['seeders']} seeders, "
                 f"{p['runs']} run(s)", fontsize=10)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise StorageError(f"bench: cannot write {path}: {e.strerror}") from None
    finally:
        plt.close(fig)
    return True


# -- command line -----------------------------------------------------------------------
def add_arguments(s: argparse.ArgumentParser) -> None:
    """The ``fasttorrent bench`` flags."""
    s.add_argument("--size", type=size_arg, default=1 << 30, help="payload size (default 1G)")
    s.add_argument("--files", type=_positive_int, default=1,
                   help="payload files (default 1; more: uneven sizes under payload/)")
    s.add_argument("--piece", type=size_arg, default=1 << 20, help="piece length (default 1M)")
    s.add_argument("--seeders", choices=SEEDER_KINDS, default="fasttorrent",
                   help="the seeders' kind (default fasttorrent: `fasttorrent seed` processes)")
    s.add_argument("--num-seeders", type=_positive_int, default=4, metavar="N",
                   help="seeder processes (default 4)")
    s.add_argument("--runs", type=_positive_int, default=5, help="runs per client (default 5)")
    s.add_argument("--clients", default=None, metavar="LIST",
                   help="comma list of ftN (N workers), ftN@TREE (the build of another "
                        "source checkout, core built in place: before/after comparisons), "
                        "lt-default, lt-fast, lt-enc (libtorrent's default with its own "
                        "encryption policy), aria2, transmission (default: ft1..ftN for N = "
                        "the CPUs this process may use, then the others where installed)")
    s.add_argument("--results", default="bench-results", metavar="DIR",
                   help="where the JSON, Markdown and PNG go (default ./bench-results)")
    s.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                   help=f"bound of one download (default {DEFAULT_TIMEOUT:.0f})")
    s.add_argument("--keep", action="store_true", help="keep the temporary directory")
    s.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="skip the untimed warm-up download")
    s.add_argument("--keep-outputs", action="store_true",
                   help="keep each run's files until the bench ends, so that no run creates "
                        "its files just after another run's were deleted (ext4 without a "
                        "journal walks past recently deleted inodes for minutes: with many "
                        "files that is measured instead of the client); needs the payload's "
                        "size of free disk per run, else the kept outputs are deleted early "
                        "and the run right after says so")
    s.add_argument("--compare-seeding", action="store_true",
                   help="each client fetches from fasttorrent and from libtorrent seeders, "
                        "interleaved (default client: lt-default)")
    s.add_argument("--web-seed", action="store_true",
                   help="BEP 19: nginx on loopback serves the payload and the torrent names "
                        "it (url-list); every client downloads from the web seed alone, then "
                        "from it and two libtorrent seeders; curl to /dev/null gives the "
                        "loopback HTTP path's limit (--seeders and --num-seeders are ignored)")
    s.add_argument("--magnet", action="store_true",
                   help="every client starts from a magnet link naming the seeders (x.pe; "
                        "no tracker, no torrent): the metadata fetch is timed too "
                        "(fasttorrent, libtorrent and aria2; not transmission)")
    s.add_argument("--torrent-version", choices=("v1", "v2", "hybrid"), default="v1",
                   help="the payload's torrent: v1, v2-only or hybrid (BEP 52; v2-only: "
                        "ftN and lt-* clients, not with --magnet)")
    s.add_argument("--seeder-encryption", choices=SEEDER_ENCRYPTION, default="off",
                   help="rc4: the libtorrent seeders force MSE/PE with RC4 both ways (an "
                        "encrypted download; needs --seeders libtorrent; clients ftK and "
                        "lt-enc, the default then)")
    s.add_argument("--client-cpus", type=cpu_list_arg, default=None, metavar="LIST",
                   help="run each client's processes on these CPUs only (taskset; e.g. 0 "
                        "or 0-3,8): with --seeder-cpus on others, ft1 measures one worker")
    s.add_argument("--seeder-cpus", type=cpu_list_arg, default=None, metavar="LIST",
                   help="run the seeders on these CPUs only (taskset)")


def run_from_args(a: argparse.Namespace) -> int:
    """``fasttorrent bench``: check the flags, run, report; the exit code."""
    from ..sysinfo import available_cpus

    if a.timeout <= 0:
        raise UsageError("--timeout must be positive")
    if a.piece < MIN_PIECE or a.piece & (a.piece - 1):
        raise UsageError(f"--piece must be a power of two of at least {MIN_PIECE}, got {a.piece}")
    clients_text = a.clients
    if a.compare_seeding and clients_text is None:
        clients_text = "lt-default"
    clients = parse_clients(clients_text, available_cpus(), allow_custom=False)
    if a.seeder_encryption != "off":
        if a.seeders != "libtorrent" or a.compare_seeding:
            raise UsageError("--seeder-encryption needs --seeders libtorrent "
                             "(and no --compare-seeding)")
        if clients_text is None:  # the defaults: those that speak MSE/PE
            clients = [c for c in clients if c.kind == "ft"] + [ClientSpec("lt-enc", "lt",
                                                                           profile="enc")]
        bad = [c.label for c in clients if not (c.kind == "ft" or c.label == "lt-enc")]
        if bad:
            raise UsageError(f"--seeder-encryption {a.seeder_encryption}: {', '.join(bad)} "
                             "would not connect (only ftN and lt-enc speak MSE/PE here)")
    if a.magnet:
        if clients_text is None:  # the defaults: those that can start from a magnet
            clients = [c for c in clients if c.kind in MAGNET_KINDS]
        bad = [c.label for c in clients if c.kind not in MAGNET_KINDS]
        if bad:
            raise UsageError(f"--magnet: {', '.join(bad)} cannot start from a magnet link "
                             "in this bench (only ftN, lt-default, lt-fast and aria2 can)")
    if a.torrent_version != "v1":
        if a.magnet:
            raise UsageError("--torrent-version: v1 only with --magnet")
        if a.torrent_version == "v2":
            if clients_text is None:
                clients = [c for c in clients if c.kind in V2_KINDS]
            bad = [c.label for c in clients if c.kind not in V2_KINDS]
            if bad:
                raise UsageError(f"--torrent-version v2: {', '.join(bad)} cannot download "
                                 "a v2-only torrent (only ftN and lt-*)")
    if a.web_seed:
        if a.magnet or a.compare_seeding:
            raise UsageError("--web-seed: not with --magnet or --compare-seeding")
        if shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"):
            raise UsageError("--web-seed needs nginx (apt-get install nginx)")
        if shutil.which("curl") is None:
            raise UsageError("--web-seed needs curl (apt-get install curl)")
        if a.files != 1:
            raise UsageError("--web-seed: one file (curl measures it)")
        clients = [c for c in clients if c.kind != "transmission"]  # it must be dialled
    allowed = os.sched_getaffinity(0)
    for flag, cpus in (("--client-cpus", a.client_cpus), ("--seeder-cpus", a.seeder_cpus)):
        if cpus is not None and not set(cpus) <= allowed:
            raise UsageError(f"{flag}: CPU {min(set(cpus) - allowed)} is not one this process "
                             f"may use ({_cpu_list_text(allowed)})")
    if (a.client_cpus is not None or a.seeder_cpus is not None) \
            and shutil.which("taskset") is None:
        raise UsageError("--client-cpus / --seeder-cpus need taskset (util-linux)")
    if (a.compare_seeding or a.seeders == "libtorrent" or a.web_seed) \
            and not _have_libtorrent():
        raise UsageError("libtorrent seeders need the libtorrent Python module "
                         "(pip install libtorrent), which is not installed")
    cfg = BenchConfig(size=a.size, files=a.files, piece=a.piece,
                      seeder_kind="libtorrent" if a.web_seed else a.seeders,
                      num_seeders=list(WEB_SEED_SETS) if a.web_seed else [a.num_seeders],
                      runs=a.runs, clients=clients,
                      results=a.results, timeout=a.timeout, keep=a.keep,
                      compare_seeding=a.compare_seeding, magnet=a.magnet, warmup=a.warmup,
                      seeder_encryption=a.seeder_encryption, web_seed=a.web_seed,
                      client_cpus=a.client_cpus, seeder_cpus=a.seeder_cpus,
                      version=a.torrent_version, keep_outputs=a.keep_outputs)
    doc = run_bench(cfg)
    return 0 if all(e["valid"] for e in doc["summary"]) else 6
