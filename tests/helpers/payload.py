"""Helpers for the end-to-end download tests: payloads, torrents, and bounded CLI runs.

- Payloads: :func:`write_tree` writes deterministic, non-repeating files;
  :func:`partial_copy` copies a payload and zeroes every piece a partial
  seeder must not have (libtorrent then serves only the pieces that check).
- Torrents: :func:`ft_create` (``fasttorrent create``) and :func:`lt_create`
  (libtorrent's ``create_torrent``: v1-only, v2-only, or its default hybrid,
  which has BEP 47 pad files).
- Runs: :func:`run_cli` runs ``fasttorrent`` as a real subprocess, bounded by
  a timeout, and watches it while it runs: every descendant process (the
  workers) and every ``/dev/shm`` segment they map is recorded (the arena is
  an anonymous memfd, so there should be none), so a test can assert that
  none outlives the run.  A
  ``during`` hook sees the live process tree (to kill a worker or send
  SIGTERM at the right moment).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from helpers.arena import SHM_DIR, arena_holders, arena_inodes, is_worker
from torrent import metainfo

__all__ = [
    "CLI",
    "RunResult",
    "assert_clean_after",
    "ft_create",
    "lt_create",
    "partial_copy",
    "pieces_of",
    "run_cli",
    "shm_segments",
    "start_seeders",
    "tree_bytes",
    "write_tree",
]

#: Every fasttorrent run in these tests is bounded by this (seconds): a hung
#: download fails the test instead of hanging the suite.
RUN_TIMEOUT = 60.0
#: How often a running download is sampled for descendants and shm segments.
#: Short enough to see workers that live well under a second.
POLL = 0.02
#: How long processes of a finished run may take to disappear (a worker exits
#: when its control connection reaches EOF).
REAP_TIMEOUT = 5.0
SHM_PREFIX = "psm_"


def _cli() -> list[str]:
    # The console script next to this interpreter: the pyenv shim on PATH
    # would add a bash and a pyenv process between us and the coordinator.
    script = os.path.join(os.path.dirname(sys.executable), "fasttorrent")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-m", "torrent"]


#: argv prefix that runs the fasttorrent CLI.
CLI = _cli()


def torrent_info(torrent: Path) -> dict[str, Any]:
    """``fasttorrent info --json`` of ``torrent``."""
    r = subprocess.run([*CLI, "info", str(torrent), "--json"], capture_output=True, text=True,
                       timeout=30, check=True)
    return json.loads(r.stdout)  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- payloads


def write_tree(root: Path, files: dict[str, int], seed: int = 0) -> None:
    """Write ``{relative path: size}`` under ``root`` with deterministic random bytes."""
    rng = random.Random(seed)
    for rel, size in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(size))


@dataclass
class TorrentPayload:
    """A payload under ``root/payload`` and its torrent (for download tests with seeders)."""

    root: Path  # the save path: the torrent's directory 'payload' is under it
    torrent: str
    meta: Any

    @property
    def n(self) -> int:
        return int(self.meta.num_pieces)


def make_torrent_payload(root: Path, files: dict[str, int], *, seed: int,
                         piece_length: int) -> TorrentPayload:
    """Random files (``random.Random(seed)``) under ``root/src/payload`` and their torrent."""
    from torrent.creator import create_torrent

    rnd = random.Random(seed)
    for rel, size in files.items():
        f = root / "src" / "payload" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(rnd.randbytes(size))
    torrent = root / "payload.torrent"
    torrent.write_bytes(create_torrent(str(root / "src" / "payload"), piece_length=piece_length))
    return TorrentPayload(root / "src", str(torrent), metainfo.load(torrent))


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (relative '/'-path -> content); symlinks refused."""
    out: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in filenames:
            full = Path(dirpath) / fn
            if full.is_symlink():
                raise AssertionError(f"unexpected symlink {full}")
            out[full.relative_to(root).as_posix()] = full.read_bytes()
    return out


def pieces_of(torrent: Path) -> int:
    return int(metainfo.load(torrent).num_pieces)


def partial_copy(torrent: Path, src_root: Path, dst_root: Path, keep: Iterable[int]) -> None:
    """Copy the payload of ``torrent`` from ``src_root`` to ``dst_root``, zeroing every
    piece not in ``keep`` (the payload is random, so a zeroed piece fails its hash)."""
    meta = metainfo.load(torrent)
    shutil.copytree(src_root, dst_root, dirs_exist_ok=True)
    keep = set(keep)
    pl = meta.piece_length
    files = [f for f in meta.files if not f.pad and f.length]
    for i in range(meta.num_pieces):
        if i in keep:
            continue
        start, end = i * pl, min(meta.total_size, (i + 1) * pl)
        for f in files:
            lo, hi = max(start, f.offset), min(end, f.offset + f.length)
            if lo < hi:
                with open(dst_root / f.path, "r+b") as fh:
                    fh.seek(lo - f.offset)
                    fh.write(bytes(hi - lo))


def ft_create(
    path: Path, out: Path, piece_length: str = "64K", trackers: Iterable[str] = ()
) -> Path:
    """``fasttorrent create PATH -o OUT --piece-length PL [--tracker URL]...``."""
    cmd = [
        *CLI,
        "create",
        str(path),
        "-o",
        str(out),
        "--piece-length",
        piece_length,
        "-q",
        "--workers",
        "1",
    ]
    for t in trackers:
        cmd += ["--tracker", t]
    subprocess.run(cmd, check=True, timeout=RUN_TIMEOUT, capture_output=True)
    return out


def lt_create(parent: Path, name: str, out: Path, piece_size: int, *, v1_only: bool,
              v2_only: bool = False) -> Path:
    """A torrent of ``parent/name`` made by libtorrent (v1-only, v2-only, or its default
    hybrid)."""
    import warnings

    import libtorrent as lt

    with warnings.catch_warnings():
        # libtorrent 2.1 deprecates file_storage-based creation; the calls still work.
        warnings.simplefilter("ignore", DeprecationWarning)
        fs = lt.file_storage()
        lt.add_files(fs, str(parent / name))
        flags = (lt.create_torrent.v1_only if v1_only
                 else lt.create_torrent.v2_only if v2_only else 0)
        ct = lt.create_torrent(fs, piece_size, flags)
        lt.set_piece_hashes(ct, str(parent))
        out.write_bytes(bytes(lt.bencode(ct.generate())))
    return out


# ----------------------------------------------------------------------------- seeders

def start_seeders(
    torrent: str, save_paths: list[str], workdir: str, upload_limits: list[int] | None = None
) -> list[Any]:
    """:func:`helpers.swarm.start_seeders` (upload limits hold on loopback too)."""
    from helpers import swarm

    return swarm.start_seeders(torrent, save_paths, workdir, upload_limits)


def shm_segments() -> set[str]:
    """Names of the ``/dev/shm/psm_*`` segments that exist now."""
    try:
        return {n for n in os.listdir(SHM_DIR) if n.startswith(SHM_PREFIX)}
    except FileNotFoundError:
        return set()


def _mapped_segments(p: psutil.Process) -> set[str]:
    """Names of the ``/dev/shm`` files ``p`` maps (any name: the arena should map none)."""
    out = set()
    with contextlib.suppress(psutil.Error, OSError):
        for m in p.memory_maps(grouped=True):
            if m.path.startswith(SHM_DIR + "/"):
                out.add(os.path.basename(m.path.split(" (deleted)")[0]))
    return out


@dataclass
class RunResult:
    """What one fasttorrent run did."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    #: Every descendant process seen while it ran (pid -> psutil.Process).
    descendants: dict[int, psutil.Process] = field(default_factory=dict)
    #: /dev/shm segments mapped by the run's processes.
    segments: set[str] = field(default_factory=set)
    #: psm_* segments that appeared during the run (may include other runs').
    new_segments: set[str] = field(default_factory=set)
    #: Inodes of the arena memfds the run's processes mapped.
    arenas: set[int] = field(default_factory=set)

    @property
    def json(self) -> dict[str, Any]:
        lines = [ln for ln in self.stdout.splitlines() if ln.strip()]
        assert len(lines) == 1, f"expected one JSON line on stdout, got {self.stdout!r}"
        return json.loads(lines[0])  # type: ignore[no-any-return]

    def describe(self) -> str:
        return (
            f"exit {self.returncode} after {self.seconds:.1f} s\n$ {' '.join(self.args)}\n"
            f"--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}"
        )


class Live:
    """The running fasttorrent process, handed to a ``during`` hook on every poll."""

    def __init__(self, popen: subprocess.Popen[str], started: float) -> None:
        self.popen = popen
        self.proc = psutil.Process(popen.pid)
        self.started = started
        self.state: dict[str, Any] = {}  # free for the hook

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def workers(self) -> list[psutil.Process]:
        """The download worker processes (forked or exec'd: :func:`helpers.arena.is_worker`)."""
        out = []
        with contextlib.suppress(psutil.Error):
            for c in self.proc.children():
                if is_worker(c.pid):
                    out.append(c)
        return out


def run_cli(
    args: list[str],
    *,
    timeout: float = RUN_TIMEOUT,
    env: dict[str, str] | None = None,
    during: Callable[[Live], None] | None = None,
    fd_limit: int | None = None,
) -> RunResult:
    """Run ``fasttorrent ARGS``, watching its process tree; killed (and failed) at ``timeout``.

    ``during(live)`` is called on every poll while the process runs.  ``fd_limit``:
    its ``RLIMIT_NOFILE``, soft and hard (so it cannot raise it), set by a shim that
    then execs the CLI in the same process.
    """
    argv = [*CLI, *args]
    if fd_limit is not None:
        argv = [sys.executable, "-c",
                "import os, resource, sys; "
                f"resource.setrlimit(resource.RLIMIT_NOFILE, ({fd_limit}, {fd_limit})); "
                "os.execv(sys.argv[1], sys.argv[1:])",
                *CLI, *args]  # (CLI's first word is an absolute path)
    before = shm_segments()
    full_env = dict(os.environ)
    full_env.pop("FASTTORRENT_FAULT", None)
    full_env.update(env or {})
    t0 = time.monotonic()
    popen = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        start_new_session=True,
    )
    live = Live(popen, t0)
    desc: dict[int, psutil.Process] = {}
    segs: set[str] = set()
    arenas: set[int] = set()
    import threading

    out: dict[str, str] = {}

    def pump(name: str, stream: Any) -> None:
        out[name] = stream.read()

    readers = [
        threading.Thread(target=pump, args=(n, s), daemon=True)
        for n, s in (("stdout", popen.stdout), ("stderr", popen.stderr))
    ]
    for r in readers:
        r.start()
    try:
        while popen.poll() is None:
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"fasttorrent {' '.join(args)} ran over {timeout} s")
            with contextlib.suppress(psutil.Error):
                for c in live.proc.children(recursive=True):
                    desc.setdefault(c.pid, c)
                    segs |= _mapped_segments(c)
                    arenas |= arena_inodes(c.pid)
                segs |= _mapped_segments(live.proc)
                arenas |= arena_inodes(live.proc.pid)
            if during is not None:
                during(live)
            time.sleep(POLL)  # sampling the process tree, bounded by `timeout`
    finally:
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(10)
        for r in readers:
            r.join(10)
    seconds = time.monotonic() - t0
    return RunResult(
        argv,
        popen.returncode,
        out.get("stdout", ""),
        out.get("stderr", ""),
        seconds,
        desc,
        segs,
        shm_segments() - before,
        arenas,
    )


def assert_clean_after(res: RunResult) -> None:
    """No process of the run is left, and no /dev/shm segment it mapped remains."""
    deadline = time.monotonic() + REAP_TIMEOUT
    left: list[psutil.Process] = []
    while True:
        left = [p for p in res.descendants.values() if _still_running(p)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)  # polling for exit, bounded by REAP_TIMEOUT
    for p in left:  # clean up before failing, so one leak does not spoil later tests
        with contextlib.suppress(psutil.Error):
            p.kill()
    assert not left, f"processes of the run outlived it: {[p.pid for p in left]}\n" + res.describe()
    # Every /dev/shm segment the run's processes mapped must be gone (the
    # arena is a memfd: there should have been none).  Other segments that
    # appeared meanwhile are not counted: tests running at the same time
    # (other files, other engineers) create and remove their own.
    leaked: set[str] = set()
    while True:
        leaked = {s for s in res.segments if os.path.exists(os.path.join(SHM_DIR, s))}
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)  # polling for an unlink, bounded by REAP_TIMEOUT
    assert not leaked, f"shared memory left in {SHM_DIR}: {sorted(leaked)}\n" + res.describe()
    holders = arena_holders(res.arenas) if res.arenas else set()
    assert not holders, f"the run's arena is still held by {sorted(holders)}\n" + res.describe()


def _still_running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
