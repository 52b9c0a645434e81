"""Seeders on 127.0.0.1 for the tools and the tests: their commands, knowing when they serve.

Theory of operation
-------------------
Two kinds of seeder serve a local swarm:

- ``fasttorrent``: a ``fasttorrent seed`` process (:func:`ft_seed_command`).
  Once it serves it prints one line on stdout, ``seeding on port P``
  (:data:`SEEDING_LINE`).
- ``libtorrent``: ``python -m torrent.tools.benchclients.lt_seed``
  (:func:`lt_seed_command`).  Once it serves it writes a JSON ready file
  (``port``, ``pieces``: the pieces its data has), atomically.

:func:`wait_serving` watches any number of starting seeders of both kinds at
once, under one deadline: the stdout of each fasttorrent seeder is read a
byte at a time, without blocking, as ``select`` says it is readable, up to
the ready line and no further (so whoever reads the pipe later, e.g. for a
``--json`` summary, misses nothing), and the ready files are polled.
A seeder that exits, or does not serve by the deadline, is an error quoting
the end of its log.  :func:`start_seeders` starts seeders as process groups
of a :class:`~torrent.tools.procs.Processes` and waits for them; stopping
them is the group's stop (SIGINT, then SIGKILL after a grace period).
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import StorageError
from .procs import STOP_GRACE, Proc, Processes

__all__ = [
    "LT_SEED_MODULE",
    "SEEDER_KINDS",
    "SEEDING_LINE",
    "START_TIMEOUT",
    "Seeder",
    "Serving",
    "Starting",
    "ft_seed_command",
    "lt_seed_command",
    "parse_seeding_line",
    "read_ready_file",
    "start_seeders",
    "wait_serving",
]

SEEDER_KINDS = ("fasttorrent", "libtorrent")
#: What ``fasttorrent seed`` prints on stdout once it serves (the CLI's promise to scripts).
SEEDING_LINE = re.compile(r"^seeding on port (\d+)$")
#: The libtorrent seeder, run as ``python -m``.
LT_SEED_MODULE = "torrent.tools.benchclients.lt_seed"
#: Default bound on a seeder's start-up (a fasttorrent seeder given --skip-check
#: trusts its data; one that checks it hashes it first).
START_TIMEOUT = 120.0
#: Longest line kept from a starting seeder's stdout: the ready line is about
#: 25 bytes; anything longer is not it, and is dropped rather than buffered.
MAX_LINE = 4096
#: Period of the ready-file polling, and the longest single wait in select.
POLL = 0.02
#: Characters of a failed seeder's log quoted in the error.
LOG_TAIL = 300


def parse_seeding_line(line: str) -> int | None:
    """The port in a ``seeding on port P`` line (trailing newline allowed), else None."""
    m = SEEDING_LINE.match(line.rstrip("\r\n"))
    return int(m.group(1)) if m else None


def ft_seed_command(torrent: str, data_dir: str, *, workers: int = 1, peers: Sequence[str] = (),
                    skip_check: bool = True, as_json: bool = False,
                    extra: Sequence[str] = (), cli: Sequence[str] | None = None,
                    dht_bootstrap: Sequence[str] = ()) -> list[str]:
    """The argv of a quiet, trackerless ``fasttorrent seed`` bound to 127.0.0.1, without
    a DHT node unless ``dht_bootstrap`` names loopback nodes for it.

    Args:
        workers: its worker processes.
        peers: HOST:PORT addresses it dials once it serves.
        skip_check: trust the data instead of hashing it first.
        as_json: print the ``--json`` summary on stdout when stopped.
        extra: more flags (e.g. ``--upload-limit``).
        cli: the command that runs fasttorrent (default ``python -m torrent``).
        dht_bootstrap: HOST:PORT of DHT nodes: run a DHT node bootstrapped from them.
    """
    argv = [*(cli or (sys.executable, "-m", "torrent")), "seed", torrent, data_dir, "--bind",
            "127.0.0.1", "--workers", str(workers)]
    if skip_check:
        argv.append("--skip-check")
    argv += ["--no-trackers", "-q"]
    argv += [f"--dht-bootstrap={b}" for b in dht_bootstrap] if dht_bootstrap else ["--no-dht"]
    if as_json:
        argv.append("--json")
    argv += extra
    for p in peers:
        argv += ["--peer", p]
    return argv


def lt_seed_command(torrent: str, save_path: str, ready: str, *, lifetime: float, port: int = 0,
                    upload_limit: int = 0, peers: Sequence[str] = (),
                    encryption: str = "off") -> list[str]:
    """The argv of a libtorrent seeder on 127.0.0.1 (it needs the libtorrent module).

    Args:
        ready: the JSON file it writes once it serves (see :func:`read_ready_file`).
        lifetime: it exits by itself after this many seconds.
        port: its listening port (0: a free one, reported in ``ready``).
        upload_limit: bytes per second (0: none).
        peers: HOST:PORT addresses it dials once it serves.
        encryption: MSE/PE: ``off``, ``default`` (libtorrent's own policy) or
            ``rc4`` (forced both ways, RC4 only).
    """
    argv = [sys.executable, "-m", LT_SEED_MODULE, "--torrent", torrent, "--save-path", save_path,
            "--ready", ready, "--lifetime", str(lifetime)]
    if port:
        argv += ["--port", str(port)]
    if upload_limit:
        argv += ["--upload-limit", str(upload_limit)]
    for p in peers:
        argv += ["--peer", p]
    if encryption != "off":
        argv += ["--encryption", encryption]
    return argv


def read_ready_file(path: str) -> dict[str, Any] | None:
    """A libtorrent seeder's ready file (``pid``, ``port``, ``pieces``), None until written."""
    try:
        with open(path) as f:
            info = json.load(f)
        int(info["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info if isinstance(info, dict) else None


@dataclass(eq=False)
class Starting:
    """A seeder process started and not yet known to serve.

    Attributes:
        popen: the process (a fasttorrent seeder's stdout must be a pipe).
        kind: ``fasttorrent`` or ``libtorrent``.
        log: the file its stderr goes to, quoted if it fails ("" for none).
        ready: a libtorrent seeder's ready file.
    """

    popen: subprocess.Popen[Any]
    kind: str
    log: str = ""
    ready: str = ""


@dataclass(frozen=True, slots=True)
class Serving:
    """A seeder that serves: its port and, for libtorrent, the pieces it has."""

    port: int
    pieces: tuple[int, ...] | None = None


def _log_tail(path: str) -> str:
    if not path:
        return ""
    try:
        with open(path, errors="replace") as f:
            return " ".join(f.read().split())[-LOG_TAIL:]
    except OSError:
        return ""


def _read_ready(fd: int, buf: bytearray) -> tuple[int | None, bool]:
    """Read non-blocking ``fd`` a byte at a time, up to the end of a ``seeding on port P``
    line (so nothing after it is taken from the pipe) or until nothing more is readable now.

    Returns:
        P if that line was read, else None; and whether the pipe reached EOF.
    """
    while True:
        try:
            b = os.read(fd, 1)
        except BlockingIOError:
            return None, False
        if not b:
            return None, True
        if b == b"\n":
            port = parse_seeding_line(buf.decode("utf-8", "replace"))
            buf.clear()
            if port is not None:
                return port, False
        elif len(buf) < MAX_LINE:
            buf += b


def wait_serving(starting: Sequence[Starting], *, timeout: float, who: str,
                 on_ready: Callable[[], None] | None = None) -> list[Serving]:
    """Wait, at most ``timeout`` seconds in all, until every seeder in ``starting`` serves.

    Args:
        who: names the caller in the error (``bench``, ``demo``).
        on_ready: called as each seeder is seen serving.

    Returns:
        What each serves, in the order of ``starting``.

    Raises:
        StorageError: one exited, or did not serve in time (the end of its log says why).
            The processes are left to the caller to stop.
    """
    got: dict[int, Serving] = {}
    bufs = {i: bytearray() for i in range(len(starting))}
    eof: set[int] = set()
    fds: dict[int, int] = {}  # fd -> index, the fasttorrent seeders' stdout
    for i, s in enumerate(starting):
        if not s.ready:
            if s.popen.stdout is None:
                raise ValueError("a fasttorrent seeder's stdout must be a pipe")
            fd = s.popen.stdout.fileno()
            os.set_blocking(fd, False)
            fds[fd] = i

    def serving(i: int, port: int, pieces: tuple[int, ...] | None = None) -> None:
        got[i] = Serving(port, pieces)
        if on_ready:
            on_ready()

    deadline = time.monotonic() + timeout
    try:
        while len(got) < len(starting):
            watch = [fd for fd, i in fds.items() if i not in got and i not in eof]
            pause = max(0.0, min(POLL, deadline - time.monotonic()))
            if watch:
                readable = select.select(watch, [], [], pause)[0]
            else:
                readable = []
                time.sleep(pause)  # polling ready files, bounded by the deadline
            for fd in readable:
                i = fds[fd]
                port, at_eof = _read_ready(fd, bufs[i])
                if port is not None:
                    serving(i, port)
                if at_eof:
                    eof.add(i)
            for i, s in enumerate(starting):
                if s.ready and i not in got:
                    info = read_ready_file(s.ready)
                    if info is not None:
                        serving(i, int(info["port"]), tuple(info.get("pieces", ())))
            failed = [i for i, s in enumerate(starting) if i not in got
                      and (i in eof or s.popen.poll() is not None)]
            late = time.monotonic() > deadline
            if failed or (late and len(got) < len(starting)):
                i = failed[0] if failed else min(set(range(len(starting))) - set(got))
                s = starting[i]
                rc = s.popen.poll()
                why = f"exit {rc}" if rc is not None else (
                    "its output ended" if i in eof else f"not serving after {timeout:g} s")
                raise StorageError(f"{who}: a {s.kind} seeder did not start ({why}): "
                                   f"{_log_tail(s.log) or 'no output'}")
    finally:
        for fd in fds:
            try:
                os.set_blocking(fd, True)
            except OSError:  # closed meanwhile
                pass
    return [got[i] for i in range(len(starting))]


@dataclass(eq=False)
class Seeder:
    """A seeder that serves, as a process group of a :class:`Processes`."""

    proc: Proc
    port: int

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_seeders(procs: Processes, kind: str, n: int, torrent: str, data_dir: str,
                  workdir: str, *, lifetime: float | None, timeout: float = START_TIMEOUT,
                  dial: str | None = None, on_ready: Callable[[], None] | None = None,
                  who: str, encryption: str = "off",
                  cpus: Sequence[int] | None = None) -> list[Seeder]:
    """Start ``n`` seeders of ``kind`` on 127.0.0.1 over ``data_dir`` and wait until each serves.

    A fasttorrent seeder has one worker and trusts its data (``--skip-check``).
    Each seeder's stderr goes to a log file in ``workdir``.

    Args:
        procs: owns the seeders' process groups; stop them with it.
        lifetime: each seeder is stopped after this many seconds even if this
            process dies; None: no bound (fasttorrent seeders only).
        timeout: bound on the start-up of all of them.
        dial: a HOST:PORT every seeder connects out to once it serves.
        on_ready: called as each seeder is seen serving.
        who: names the caller in errors.
        encryption: (libtorrent seeders) MSE/PE, as :func:`lt_seed_command`.
        cpus: pin the seeders to these CPUs (``taskset``; None: any).

    Raises:
        StorageError: a seeder exited or did not start in time (its log names why).
    """
    if kind not in SEEDER_KINDS:
        raise ValueError(f"unknown seeder kind {kind!r}")
    if kind == "libtorrent" and lifetime is None:
        raise ValueError("a libtorrent seeder needs a lifetime")
    peers = [dial] if dial else []
    started: list[tuple[Proc, Starting]] = []
    for _ in range(n):
        fd, logpath = tempfile.mkstemp(prefix=f"seed-{kind}-", suffix=".log", dir=workdir)
        with os.fdopen(fd, "w") as log:
            if kind == "fasttorrent":
                argv = ft_seed_command(torrent, data_dir, peers=peers)
                p = procs.spawn(argv, f"{kind} seeder", timeout=lifetime,
                                stdout=subprocess.PIPE, stderr=log, cpus=cpus)
                started.append((p, Starting(p.popen, kind, logpath)))
            else:
                assert lifetime is not None  # checked above
                ready = logpath.removesuffix(".log") + ".ready"
                argv = lt_seed_command(torrent, data_dir, ready, lifetime=lifetime, peers=peers,
                                       encryption=encryption)
                p = procs.spawn(argv, f"{kind} seeder", timeout=lifetime + STOP_GRACE,
                                stderr=log, cpus=cpus)
                started.append((p, Starting(p.popen, kind, logpath, ready)))
    serving = wait_serving([s for _, s in started], timeout=timeout, who=who, on_ready=on_ready)
    return [Seeder(p, s.port) for (p, _), s in zip(started, serving, strict=True)]
