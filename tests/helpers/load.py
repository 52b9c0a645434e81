"""Load scenarios: idle connection floods against a seed, a 100,000-peer tracker reply.

Theory of operation
-------------------
Each scenario runs the real ``fasttorrent`` (``python -m torrent``, a process
group of its own) on 127.0.0.1 and returns its figures as one dict (a JSON
line).  ``tests/test_load.py`` asserts on them; ``bench/load_bench.py``
prints them for ``docs/RELIABILITY.md``.

Memory is the private memory (USS: ``Private_Clean + Private_Dirty`` of
``/proc/PID/smaps_rollup``) of every process in the run's session: the
coordinator and its workers.  Growth is measured from a baseline taken once
the run is up and before the load arrives (for the downloader: while the
tracker holds back its answer), so start-up costs are not counted.

Nothing waits on time alone: the scenarios wait for observable states (the
seed holds or has closed every connection the client opened; the tracker
received the announce), each with a deadline, polling at a short period.

- :func:`idle_flood`: a client opens N TCP connections to ``fasttorrent
  seed`` and sends nothing (some trickle a valid handshake, one byte a
  second).  Figures: how many the seed held and refused, its memory growth
  while holding them, and how long until the handshake time-out had closed
  them all.
- :func:`tracker_flood`: an HTTP tracker answers ``fasttorrent download``
  with 100,000 compact peers: dead addresses on 127.64.0.0/16 (nothing
  listens; each dial is refused at once), a few "blackholed" ones (a listener
  whose accept queue is full: the SYN goes unanswered until the connect
  time-out), and the one real seeder, last of the peers the bound keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
from trackers import HTTPTestTracker

from torrent.creator import create_torrent
from torrent.tools.procs import session_pids
from torrent.tools.seeders import ft_seed_command, parse_seeding_line
from torrent.tracker.common import MAX_PEERS_PER_RESPONSE
from torrent.tracker.http import MAX_RESPONSE_SIZE
from torrent.wire.handshake import encode_handshake, make_peer_id

__all__ = ["Blackholes", "FloodClient", "GatedTracker", "held_connections", "idle_flood",
           "make_payload", "raise_own_fd_limit", "running_seed", "tracker_flood", "tree_memory",
           "write_figures"]

MiB = 1 << 20
#: Polling period of the waits on observable states below.
POLL = 0.1
#: Client connects in flight at once: well under the seed's listen backlog
#: (worker.LISTEN_BACKLOG), so the kernel never drops a completed connection
#: before the seed could accept or refuse it (the flood is about the seed's
#: caps, not the kernel's queue).
CONNECT_CONCURRENCY = 32
#: One client connect may take this long (a SYN dropped at a full backlog is
#: retried after 1 s, then 3 s).
CLIENT_CONNECT_TIMEOUT = 15.0
#: How long the seed may take to accept (or refuse) what the client opened.
SETTLE_TIMEOUT = 30.0
#: How long after the handshake time-out every connection must be gone:
#: the worker checks once a tick (0.25 s); the rest is a loaded machine.
GONE_SLACK = 15.0
#: A trickling client sends one byte of a valid handshake this often.
TRICKLE_PERIOD = 1.0
#: How long the seed may take to start serving.
READY_TIMEOUT = 60.0
#: Upper bound of a whole download under the tracker flood.
DOWNLOAD_TIMEOUT = 180.0
#: How long the gated tracker holds its answer at most.
GATE_TIMEOUT = 60.0


# -- measuring -------------------------------------------------------------------------
def _rollup(pid: int) -> tuple[int, int]:
    """(USS, PSS) of ``pid`` in bytes, (0, 0) when it is gone."""
    uss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for ln in f:
                key, _, rest = ln.partition(":")
                if key in ("Private_Clean", "Private_Dirty", "Private_Hugetlb"):
                    uss += int(rest.split()[0]) * 1024
                elif key == "Pss":
                    pss = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return 0, 0
    return uss, pss


def tree_memory(sid: int) -> tuple[int, int]:
    """(USS, PSS) summed over every process of session ``sid``, in bytes."""
    uss = pss = 0
    for pid in session_pids(sid):
        u, p = _rollup(pid)
        uss += u
        pss += p
    return uss, pss


def held_connections(sid: int, port: int) -> int:
    """TCP connections on local ``port`` that a process of session ``sid`` holds open
    (accepted: a connection still in the listen backlog belongs to no process)."""
    n = 0
    for pid in session_pids(sid):
        with contextlib.suppress(psutil.Error):
            for c in psutil.Process(pid).net_connections(kind="tcp"):
                if c.laddr and c.laddr.port == port and c.raddr \
                        and c.status == psutil.CONN_ESTABLISHED:
                    n += 1
    return n


def raise_own_fd_limit(want: int) -> int:
    """Raise this process's soft fd limit towards ``want`` (capped by the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def write_figures(path: Path | None, figures: dict[str, Any]) -> str:
    """``figures`` as one JSON line, appended to ``path`` (if any) and returned."""
    line = json.dumps(figures, sort_keys=True)
    if path is not None:
        with open(path, "a") as f:
            f.write(line + "\n")
    return line


def _wait(predicate: Any, timeout: float, what: str) -> float:
    """Poll ``predicate`` until true; the seconds it took.  AssertionError at the deadline."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(POLL)
    return time.monotonic() - t0


# -- processes ---------------------------------------------------------------------------
class _Run:
    """A fasttorrent command in a session of its own, stdout/stderr to files; killed on exit."""

    def __init__(self, argv: Sequence[str], workdir: Path, name: str) -> None:
        self.out = workdir / f"{name}.stdout"
        self.err = workdir / f"{name}.stderr"
        with open(self.out, "wb") as o, open(self.err, "wb") as e:
            self.popen = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=o,
                                          stderr=e, start_new_session=True)
        self.sid = self.popen.pid

    def text(self, which: str = "out") -> str:
        return (self.out if which == "out" else self.err).read_text(errors="replace")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> int:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.returncode

    def kill(self) -> None:
        for pid in session_pids(self.sid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)


@contextlib.contextmanager
def running_seed(torrent: Path, data: Path, workdir: Path, extra: Sequence[str],
                 workers: int) -> Iterator[tuple[_Run, int]]:
    """``fasttorrent seed`` (``--json``, trackerless, on 127.0.0.1) serving; (run, port)."""
    argv = ft_seed_command(str(torrent), str(data), workers=workers, skip_check=True,
                           as_json=True, extra=extra)
    run = _Run(argv, workdir, "seed")
    try:
        port: list[int] = []

        def ready() -> bool:
            if run.popen.poll() is not None:
                raise AssertionError(f"the seed exited {run.popen.returncode}: {run.text('err')}")
            for ln in run.text().splitlines():
                p = parse_seeding_line(ln)
                if p is not None:
                    port.append(p)
                    return True
            return False

        _wait(ready, READY_TIMEOUT, "the seed serving")
        yield run, port[0]
    finally:
        run.kill()


def make_payload(root: Path, size: int, piece: int, trackers: list[list[str]] | None = None
                 ) -> tuple[Path, Path, bytes]:
    """A pseudo-random file under ``root/src`` and its torrent; (torrent, src, data)."""
    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    data = random.Random(size).randbytes(size)
    (src / "payload.bin").write_bytes(data)
    torrent = root / "payload.torrent"
    torrent.write_bytes(create_torrent(str(src / "payload.bin"), piece_length=piece,
                                       trackers=trackers))
    return torrent, src, data


# -- the idle flood --------------------------------------------------------------------
class FloodClient:
    """Many client sockets to one address, opened concurrently, kept open, watched for closing."""

    def __init__(self, addr: tuple[str, int]) -> None:
        self.addr = addr
        self.open: list[socket.socket] = []
        self.trickle: dict[socket.socket, int] = {}  # socket -> bytes of handshake sent
        self.closed = 0
        self.handshake = b""

    def connect(self, n: int, trickle: int = 0, handshake: bytes = b"") -> int:
        """Open ``n`` connections (the first ``trickle`` will trickle ``handshake``); how many
        the kernel accepted."""
        self.handshake = handshake
        socks = asyncio.run(self._connect(n))
        ok = [s for s in socks if s is not None]
        for s in ok[:trickle]:
            self.trickle[s] = 0
        self.open.extend(ok)
        return len(ok)

    async def _connect(self, n: int) -> list[socket.socket | None]:
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one() -> socket.socket | None:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            async with sem:
                try:
                    await asyncio.wait_for(loop.sock_connect(s, self.addr),
                                           CLIENT_CONNECT_TIMEOUT)
                except (OSError, TimeoutError):
                    s.close()
                    return None
            return s

        return list(await asyncio.gather(*(one() for _ in range(n))))

    def poll(self) -> int:
        """Notice connections the seed closed (EOF or reset) and trickle; how many are open."""
        if not self.open:
            return 0
        sel = selectors.DefaultSelector()
        for s in self.open:
            sel.register(s, selectors.EVENT_READ)
        gone = set()
        for key, _ev in sel.select(0):
            s: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                if s.recv(4096) == b"":
                    gone.add(s)
            except (ConnectionError, OSError):
                gone.add(s)
        sel.close()
        self._forget(gone)
        return len(self.open)

    def trickle_once(self) -> None:
        """Send the next byte of the handshake on every trickling connection still open."""
        gone = set()
        for s, sent in self.trickle.items():
            if sent >= len(self.handshake):
                continue
            try:
                s.send(self.handshake[sent : sent + 1])
                self.trickle[s] = sent + 1
            except (ConnectionError, OSError):
                gone.add(s)
        self._forget(gone)

    def _forget(self, gone: set[socket.socket]) -> None:
        if not gone:
            return
        self.closed += len(gone)
        self.open = [s for s in self.open if s not in gone]
        for s in gone:
            self.trickle.pop(s, None)
            s.close()

    def close_all(self) -> None:
        for s in self.open:
            s.close()
        self.open = []
        self.trickle.clear()


def idle_flood(workdir: Path, *, connections: int = 2000, trickle: int = 0,
               workers: int = 1, handshake_timeout: float = 10.0,
               extra: Sequence[str] = (), case: str = "idle_flood") -> dict[str, Any]:
    """``connections`` idle connections to ``fasttorrent seed`` (``trickle`` of them
    trickling a handshake); its figures.

    Args:
        workdir: a scratch directory.
        workers: the seed's worker processes.
        handshake_timeout: the seed's ``--handshake-timeout``.
        extra: more seed flags (``--max-connections``, ``--max-half-open``).
    """
    raise_own_fd_limit(connections + 1024)
    workdir.mkdir(parents=True, exist_ok=True)
    torrent, src, _data = make_payload(workdir, 1 * MiB, 64 * 1024)
    from torrent import metainfo

    info_hash = metainfo.load(str(torrent)).info_hash
    flags = [*extra, "--handshake-timeout", f"{handshake_timeout:g}"]
    with running_seed(torrent, src, workdir, flags, workers) as (run, port):
        base_uss, base_pss = tree_memory(run.sid)
        client = FloodClient(("127.0.0.1", port))
        t0 = time.monotonic()
        opened = client.connect(connections, trickle,
                                encode_handshake(info_hash, make_peer_id()))
        open_seconds = time.monotonic() - t0
        # settled: every connection the client opened is either held by the seed
        # or was closed by it (refused)
        held = [0]

        def settled() -> bool:
            client.poll()
            held[0] = held_connections(run.sid, port)
            return held[0] >= len(client.open)

        _wait(settled, SETTLE_TIMEOUT, "the seed accepting or refusing every connection")
        uss, pss = tree_memory(run.sid)
        held_at_peak = held[0]
        refused_seen = client.closed  # closed by the seed before any time-out was due
        # now the handshake time-out: every connection is dropped, tricklers too
        last_trickle = time.monotonic()

        def all_gone() -> bool:
            nonlocal last_trickle
            if client.trickle and time.monotonic() - last_trickle >= TRICKLE_PERIOD:
                client.trickle_once()
                last_trickle = time.monotonic()
            return client.poll() == 0 and held_connections(run.sid, port) == 0

        _wait(all_gone, handshake_timeout + GONE_SLACK,
              "every idle connection dropped by the handshake time-out")
        gone_after = time.monotonic() - t0  # from the first connect
        rc = run.stop()
        summary = _last_json(run.text())
        if rc != 7 or summary is None:
            raise AssertionError(f"the seed exited {rc}: {run.text('err')}")
    ws = summary["workers"]
    growth = uss - base_uss
    return {
        "case": case,
        "connections": connections,
        "trickling": trickle,
        "workers": workers,
        "opened": opened,
        "open_seconds": round(open_seconds, 2),
        "held": held_at_peak,
        "refused_by_client_view": refused_seen,
        "refused": sum(w["refused"] for w in ws),
        "handshake_timeouts": sum(w["handshake_timeouts"] for w in ws),
        "peak_connections": sum(w["peak_connections"] for w in ws),
        "peak_half_open": sum(w["peak_half_open"] for w in ws),
        "handshake_timeout_s": handshake_timeout,
        "all_gone_after_s": round(gone_after, 2),
        "baseline_uss_mib": round(base_uss / MiB, 2),
        "uss_growth_mib": round(growth / MiB, 2),
        "pss_growth_mib": round((pss - base_pss) / MiB, 2),
        "uss_per_held_connection_kib": round(growth / max(1, held_at_peak) / 1024, 2),
        "extra_flags": list(extra),
    }


def _last_json(text: str) -> dict[str, Any] | None:
    for ln in reversed(text.splitlines()):
        ln = ln.strip()
        if ln.startswith("{"):
            try:
                out: dict[str, Any] = json.loads(ln)
                return out
            except ValueError:
                return None
    return None


# -- the 100,000-peer tracker reply ------------------------------------------------------
class GatedTracker(HTTPTestTracker):
    """The HTTP test tracker, holding its answers until ``gate`` is set (the announce is
    recorded first, so :meth:`wait_for_requests` sees it)."""

    def __init__(self, gate: threading.Event, **behaviour: Any) -> None:
        self.gate = gate
        super().__init__(**behaviour)

    def _announce(self, q: dict[str, bytes], path: str, client: tuple[str, int]) -> bytes:
        body = super()._announce(q, path, client)
        self.gate.wait(GATE_TIMEOUT)  # blocks only this tracker's own loop thread
        return body


class Blackholes:
    """Listeners whose accept queue is full: a SYN to them goes unanswered (dropped)."""

    def __init__(self, n: int) -> None:
        self.listeners: list[socket.socket] = []
        self.fillers: list[socket.socket] = []
        self.addrs: list[tuple[str, int]] = []
        for k in range(n):
            ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            ls.bind((f"127.65.0.{k + 1}", 0))
            ls.listen(0)  # an accept queue of one, never accepted from
            self.listeners.append(ls)
            addr = ls.getsockname()
            for _ in range(4):  # fill it (and its SYN queue) from here
                c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                c.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    c.connect_ex(addr)
                self.fillers.append(c)
            self.addrs.append((addr[0], addr[1]))

    def close(self) -> None:
        for s in self.fillers + self.listeners:
            s.close()


def dead_peers(n: int) -> list[tuple[str, int]]:
    """``n`` distinct addresses on 127.64.0.0/16, ports 1 and up: nothing listens there."""
    return [(f"127.64.{(i >> 8) & 255}.{i & 255}", 1 + (i >> 16)) for i in range(n)]


def tracker_flood(workdir: Path, *, peers: int = 100_000, blackholed: int = 8,
                  workers: int = 2, case: str = "tracker_100k") -> dict[str, Any]:
    """``fasttorrent download`` from a tracker that answers with ``peers`` peers; its figures.

    The real seeder is the last peer the codec keeps (MAX_PEERS_PER_RESPONSE),
    so the downloader dials through the dead ones before it finds it.
    """
    raise_own_fd_limit(4096)
    workdir.mkdir(parents=True, exist_ok=True)
    gate = threading.Event()
    holes = Blackholes(blackholed)
    with GatedTracker(gate, compact=True, interval=1800) as tracker:
        url = tracker.announce_url
        torrent, src, data = make_payload(workdir, 4 * MiB, 64 * 1024, trackers=[[url]])
        with running_seed(torrent, src, workdir, [], 1) as (_seed_run, seed_port):
            kept = MAX_PEERS_PER_RESPONSE
            plist = dead_peers(peers - 1 - blackholed)
            # blackholes spread over the peers the codec keeps; the seeder last of them
            for k, addr in enumerate(holes.addrs):
                plist.insert((k + 1) * kept // (blackholed + 2), addr)
            plist.insert(kept - 1, ("127.0.0.1", seed_port))
            tracker.peers = plist
            body_bytes = 6 * len(plist)
            out = workdir / "out"
            argv = [sys.executable, "-m", "torrent", "download", str(torrent), "-o", str(out),
                    "--workers", str(workers), "--bind", "127.0.0.1", "--json", "-q",
                    "--stall-timeout", "120"]
            run = _Run(argv, workdir, "download")
            try:
                tracker.wait_for_requests(1, timeout=READY_TIMEOUT)
                base_uss, base_pss = tree_memory(run.sid)
                t0 = time.monotonic()
                gate.set()
                peak_uss, peak_pss = base_uss, base_pss
                deadline = t0 + DOWNLOAD_TIMEOUT
                while run.popen.poll() is None and time.monotonic() < deadline:
                    uss, pss = tree_memory(run.sid)
                    peak_uss, peak_pss = max(peak_uss, uss), max(peak_pss, pss)
                    time.sleep(POLL)
                seconds = time.monotonic() - t0
                if run.popen.poll() is None:
                    raise AssertionError(f"the download still runs after {DOWNLOAD_TIMEOUT} s")
                rc = run.popen.returncode
            finally:
                run.kill()
                holes.close()
            result = _last_json(run.text())
            complete = bool(result and result.get("complete")) and rc == 0 \
                and (out / "payload.bin").read_bytes() == data
            if result is None:
                raise AssertionError(f"download exited {rc}: {run.text('err')[-2000:]}")
    ws = result["workers"]
    rec = result["peers"]
    return {
        "case": case,
        "tracker_peers": len(plist),
        "reply_bytes": body_bytes,
        "reply_bound_bytes": MAX_RESPONSE_SIZE,
        "peers_kept_bound": MAX_PEERS_PER_RESPONSE,
        "peers_known": len(rec),
        "blackholed": blackholed,
        "workers": workers,
        "exit_code": rc,
        "complete": complete,
        "seconds": round(seconds, 2),
        "dial_failures": sum(1 for r in rec if r["last_reason"].startswith("connect failed")),
        "dial_timeouts": sum(1 for r in rec if "timed out" in r["last_reason"]),
        # dials still waiting on the network at the end (the blackholed ones)
        "dials_unanswered": sum(1 for r in rec if not r["connected"] and not r["last_reason"]),
        "peak_dialing_per_worker": max(w["peak_dialing"] for w in ws),
        "peak_dial_queue_per_worker": max(w["peak_dial_queue"] for w in ws),
        "baseline_uss_mib": round(base_uss / MiB, 2),
        "uss_growth_mib": round((peak_uss - base_uss) / MiB, 2),
        "pss_growth_mib": round((peak_pss - base_pss) / MiB, 2),
    }
