"""Real BitTorrent clients (aria2c, transmission-cli) and ``fasttorrent seed`` on 127.0.0.1.

Theory of operation
-------------------
Every process here is a :class:`ClientProcess`: it runs under coreutils
``timeout`` (so it dies by itself even if the test runner is killed), in a
session of its own (so :meth:`ClientProcess.kill` reaches every descendant:
fasttorrent's workers, the ``timeout`` wrapper), and two reader threads split
its stdout and stderr into lines (on ``\\n`` and on the ``\\r`` that progress
readouts use) kept in a bounded buffer.  A test waits for a line matching a
pattern (:meth:`ClientProcess.wait_for`) on a condition variable the readers
notify, never by sleeping, and always with a deadline.  Use it as a context
manager: leaving the block kills whatever is still running, pass or fail.

The clients are started loopback-only: bound to 127.0.0.1, with DHT, local
peer discovery, peer exchange and port mapping (UPnP / NAT-PMP) off, and the
trackerless torrents these tests make.  They find each other through a known
listening port: a downloader is dialled by the seeder (``--peer``), a seeder
is dialled by the downloader.  Transmission 3.00 drops 127.x peers handed out
by a tracker, so dialling it is the only way on loopback anyway.

Readiness is read from each client's own output, so nobody is dialled before
it listens (which would only cost a reconnection backoff):

- ``fasttorrent seed`` prints ``seeding on port P`` once its data is checked;
- aria2c logs ``listening on TCP port P`` once its torrent is set up (after
  ``--check-integrity`` when it seeds);
- transmission-cli prints a status line every second: ``Verifying local
  files`` while it checks, then ``Progress: ...`` (downloading) or
  ``Seeding, ...`` (complete).  transmission-cli never exits by itself; a
  test detects completion from that line and from ``fasttorrent verify``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psutil

from helpers.payload import CLI, run_cli
from torrent import metainfo
from torrent.tools.seeders import SEEDING_LINE, ft_seed_command

__all__ = [
    "ClientProcess",
    "FasttorrentSeed",
    "aria2c_download",
    "aria2c_metadata",
    "aria2c_seed",
    "assert_same_payload",
    "fasttorrent_seed",
    "transmission",
    "transmission_settings",
    "verify",
    "wait_verified",
]

#: Hard bound on every client's life (the ``timeout`` wrapper): a test that
#: forgets a client, or a runner that dies, still leaves nothing behind.
CLIENT_LIFETIME = 300
#: After the wrapper's SIGTERM, how long before it sends SIGKILL.
KILL_AFTER = 5
#: How long a client may take to check its data and start listening.
READY_TIMEOUT = 60.0
#: How long a client has to exit after SIGINT before it is killed.
STOP_GRACE = 15.0
#: Output lines kept per stream: readiness lines come first and a status
#: line comes once a second, so this holds far more than a test's lifetime.
MAX_LINES = 5000
#: Largest read from a client's pipe in one go.
READ_CHUNK = 65536
#: A line longer than this is cut: the clients' lines are a few hundred bytes.
MAX_LINE = 65536
#: Period of the bounded polling of ``fasttorrent verify`` (the data is on
#: disk but the client gives no event we could wait on).
VERIFY_POLL = 0.5

_LINE_SPLIT = re.compile(rb"[\r\n]")


class ClientProcess:
    """A client process bounded in time, with its output split into lines.

    Args:
        name: for messages.
        argv: the command (run under ``timeout``).
        cwd: working directory.
        env: extra environment variables.
    """

    def __init__(self, name: str, argv: Sequence[str], *, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.popen = subprocess.Popen(
            ["timeout", "-k", str(KILL_AFTER), str(CLIENT_LIFETIME), *self.argv],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=cwd, env=full_env, start_new_session=True)
        self._cond = threading.Condition()
        self._lines: dict[str, deque[str]] = {
            "stdout": deque(maxlen=MAX_LINES), "stderr": deque(maxlen=MAX_LINES)}
        self._eof: set[str] = set()
        self._readers = [
            threading.Thread(target=self._pump, args=(n, s), daemon=True)
            for n, s in (("stdout", self.popen.stdout), ("stderr", self.popen.stderr))]
        for r in self._readers:
            r.start()

    # -- output -----------------------------------------------------------------------
    def _pump(self, stream: str, pipe: Any) -> None:
        fd = pipe.fileno()
        pending = b""
        while True:
            try:
                chunk = os.read(fd, READ_CHUNK)
            except OSError:
                chunk = b""
            parts = _LINE_SPLIT.split(pending + chunk)
            pending = parts.pop() if chunk else b""
            if len(pending) > MAX_LINE:
                parts.append(pending)
                pending = b""
            with self._cond:
                self._lines[stream].extend(
                    p.decode("utf-8", "replace") for p in parts if p.strip())
                if not chunk:
                    self._eof.add(stream)
                self._cond.notify_all()
            if not chunk:
                return

    def lines(self, stream: str = "stdout") -> list[str]:
        with self._cond:
            return list(self._lines[stream])

    def text(self, stream: str = "stdout") -> str:
        return "\n".join(self.lines(stream))

    def describe(self, tail: int = 40) -> str:
        out = [f"--- {self.name}: {' '.join(self.argv)} (exit {self.popen.poll()})"]
        for stream in ("stdout", "stderr"):
            out.append(f"--- {self.name} {stream} (last {tail} lines)")
            out.extend(self.lines(stream)[-tail:])
        return "\n".join(out)

    def wait_for(self, pattern: str, timeout: float, stream: str = "stdout") -> re.Match[str]:
        """The first line of ``stream`` matching ``pattern`` (searched), waiting up to ``timeout``.

        Raises:
            AssertionError: the process ended, or the deadline passed, without such a line.
        """
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self._lines[stream]:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if stream in self._eof or left <= 0:
                    break
                self._cond.wait(left)
        why = "ended" if stream in self._eof else f"gave none within {timeout:.0f} s"
        raise AssertionError(f"{self.name}: no line matching {pattern!r}; it {why}\n"
                             + self.describe())

    # -- lifetime ---------------------------------------------------------------------
    def wait(self, timeout: float) -> int:
        """Wait for the process to exit by itself; its exit code.

        Raises:
            AssertionError: still running after ``timeout`` (it is left running:
                the caller's ``with`` block kills it).
        """
        try:
            rc = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout:.0f} s\n"
                                 + self.describe()) from None
        self._join_readers()
        return rc

    def stop(self, sig: int = signal.SIGINT) -> int:
        """Ask the client to stop (``sig`` to it, via the wrapper); kill it after STOP_GRACE.

        Returns:
            Its exit code (negative if it had to be killed).
        """
        if self.popen.poll() is None:
            # The wrapper forwards the signal to the client, once.
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)
            try:
                self.popen.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.kill()
                return -signal.SIGKILL
        self._join_readers()
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL the client's whole session (wrapper, client, its children)."""
        sid = self.popen.pid
        if self.popen.poll() is None:
            # The leader is not reaped, so its pid (the group id) is still ours.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(sid, signal.SIGKILL)
        else:
            # Reaped: its pid may be reused, but not while processes of its
            # session remain; those are the ones left to kill.
            for p in psutil.process_iter():
                with contextlib.suppress(psutil.Error, OSError):
                    if os.getsid(p.pid) == sid:
                        p.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(STOP_GRACE)
        self._join_readers()

    def _join_readers(self) -> None:
        for r in self._readers:
            r.join(STOP_GRACE)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        # Whatever happened, nothing this process started survives the test
        # (a client that exited normally may still have left children).
        self.kill()


# ----------------------------------------------------------------------------- fasttorrent


class FasttorrentSeed(ClientProcess):
    """``fasttorrent seed`` on 127.0.0.1 (checking its data, ``--json``), dialling ``peers``;
    ready once it serves.  ``extra``: more flags (e.g. ``--upload-limit``); ``cli``: the
    command that runs fasttorrent (default :data:`~helpers.payload.CLI`)."""

    def __init__(self, torrent: Path, data_dir: Path, peers: Sequence[str] = (),
                 workers: int = 1, extra: Sequence[str] = (),
                 cli: Sequence[str] = CLI) -> None:
        argv = ft_seed_command(str(torrent), str(data_dir), workers=workers, peers=peers,
                               skip_check=False, as_json=True, extra=extra, cli=cli)
        super().__init__("fasttorrent seed", argv)
        try:
            self.port = int(self.wait_for(SEEDING_LINE.pattern, READY_TIMEOUT).group(1))
            self.addr = f"127.0.0.1:{self.port}"
        except BaseException:
            self.kill()
            raise

    def stop_summary(self) -> dict[str, Any]:
        """SIGINT it; it must exit 7 with its ``--json`` summary and no traceback."""
        rc = self.stop(signal.SIGINT)
        assert rc == 7, f"fasttorrent seed exited {rc}\n" + self.describe()
        err = self.text("stderr")
        assert "Traceback" not in err, err
        summary: dict[str, Any] = json.loads(self.lines("stdout")[-1])
        return summary


def fasttorrent_seed(torrent: Path, data_dir: Path, peers: Sequence[str] = ()) -> FasttorrentSeed:
    """Start ``fasttorrent seed TORRENT DIR --peer ...`` and wait until it serves."""
    return FasttorrentSeed(torrent, data_dir, peers)


def verify(torrent: Path, data_dir: Path) -> dict[str, Any]:
    """``fasttorrent verify TORRENT DIR --json`` (bounded); its JSON report."""
    res = run_cli(["verify", str(torrent), str(data_dir), "--json", "--workers", "1"])
    assert res.returncode in (0, 6), res.describe()  # 6: missing or bad pieces
    return res.json


def wait_verified(torrent: Path, data_dir: Path, timeout: float) -> dict[str, Any]:
    """Poll ``fasttorrent verify`` until every piece checks (bounded); its last report.

    Raises:
        AssertionError: not complete within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        report = verify(torrent, data_dir)
        if report["complete"]:
            return report
        if time.monotonic() > deadline:
            raise AssertionError(f"{data_dir} not complete after {timeout:.0f} s: "
                                 f"{report['pieces_ok']}/{report['pieces_total']} pieces good, "
                                 f"bad {report['bad_pieces'][:10]}")
        time.sleep(VERIFY_POLL)  # polling the files on disk, bounded by the deadline


# ----------------------------------------------------------------------------- aria2c

#: Loopback only: no DHT (v4, v6), no local peer discovery, no peer exchange,
#: sockets bound to 127.0.0.1, no IPv6; aria2 has no UPnP / NAT-PMP.  No
#: configuration file, no saved metadata, no progress readout.
ARIA2C_COMMON = [
    "--no-conf=true", "--enable-dht=false", "--enable-dht6=false",
    "--bt-enable-lpd=false", "--bt-lpd-interface=127.0.0.1", "--enable-peer-exchange=false",
    "--interface=127.0.0.1", "--disable-ipv6=true", "--bt-save-metadata=false",
    "--file-allocation=none", "--summary-interval=0", "--show-console-readout=false",
    "--console-log-level=notice", "--max-overall-upload-limit=0",
    "--max-overall-download-limit=0",
]
ARIA2C_LISTENING = r"listening on TCP port (\d+)"


def _aria2c(name: str, torrent: Path | str, directory: Path, port: int,
            extra: list[str]) -> ClientProcess:
    # aria2c takes the last of an option given twice: ``extra`` overrides ARIA2C_COMMON
    argv = ["aria2c", *ARIA2C_COMMON, f"--listen-port={port}", f"--dir={directory}",
            # Exit if the test runner goes away, on top of the timeout wrapper.
            f"--stop-with-process={os.getpid()}", *extra, str(torrent)]
    proc = ClientProcess(name, argv, cwd=directory)
    try:
        proc.wait_for(ARIA2C_LISTENING, READY_TIMEOUT)
    except BaseException:
        proc.kill()
        raise
    return proc


def aria2c_download(torrent: Path, out_dir: Path, port: int) -> ClientProcess:
    """aria2c downloading ``torrent`` into ``out_dir``, listening on ``port``; it exits
    by itself (status 0) once the download is complete and checked (``--seed-time=0``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return _aria2c("aria2c download", torrent, out_dir, port, ["--seed-time=0"])


def aria2c_metadata(magnet: str, out_dir: Path, port: int) -> ClientProcess:
    """aria2c fetching only the metadata (BEP 9) of ``magnet``, listening on ``port``.

    It saves the torrent as ``out_dir/<info-hash hex>.torrent`` and exits by
    itself (status 0).  aria2c reads ``xt``, ``tr`` and ``dn`` of a magnet and
    ignores ``x.pe``: it finds peers through the trackers (DHT is off here).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    return _aria2c("aria2c metadata", magnet, out_dir, port,
                   ["--bt-metadata-only=true", "--bt-save-metadata=true"])


def aria2c_seed(torrent: Path, data_dir: Path, port: int) -> ClientProcess:
    """aria2c checking the data in ``data_dir`` (``--check-integrity``) and seeding it
    on ``port`` until stopped (``--seed-ratio=0.0``: no ratio limit, no time limit)."""
    return _aria2c("aria2c seed", torrent, data_dir, port,
                   ["--check-integrity=true", "--bt-hash-check-seed=true",
                    "--bt-seed-unverified=false", "--seed-ratio=0.0"])


# ----------------------------------------------------------------------------- transmission

#: transmission-cli's status line while it downloads, and once complete.
TRANSMISSION_DOWNLOADING = r"^Progress: "
TRANSMISSION_SEEDING = r"^Seeding, "


#: transmission-cli's encryption modes: its ``encryption`` setting and flag.
TRANSMISSION_ENCRYPTION = {"tolerated": (0, "-et"), "preferred": (1, "-ep"),
                           "required": (2, "-er")}


def transmission_settings(config_dir: Path, download_dir: Path, port: int,
                          encryption: str = "tolerated") -> None:
    """Write ``settings.json`` for a loopback-only transmission-cli (read via ``-g``).

    ``encryption``: ``tolerated`` (plain connections preferred), ``preferred``
    (transmission's default: MSE tried first) or ``required``."""
    settings = {
        "bind-address-ipv4": "127.0.0.1",
        "bind-address-ipv6": "::1",
        "rpc-enabled": False,
        "dht-enabled": False,
        "lpd-enabled": False,
        "pex-enabled": False,
        "utp-enabled": False,
        "port-forwarding-enabled": False,  # UPnP and NAT-PMP
        "blocklist-enabled": False,
        "peer-port": port,
        "peer-port-random-on-start": False,
        "encryption": TRANSMISSION_ENCRYPTION[encryption][0],
        "speed-limit-down-enabled": False,
        "speed-limit-up-enabled": False,
        "alt-speed-enabled": False,
        "ratio-limit-enabled": False,
        "idle-seeding-limit-enabled": False,
        "download-dir": str(download_dir),
        "incomplete-dir-enabled": False,
        "rename-partial-files": False,
        "watch-dir-enabled": False,
        "message-level": 2,  # info: its log names state changes
    }
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "settings.json").write_text(json.dumps(settings, indent=1))


def transmission(torrent: Path, directory: Path, port: int, config_dir: Path, *,
                 encryption: str = "tolerated") -> ClientProcess:
    """transmission-cli on ``torrent`` with data in ``directory``, listening on ``port``
    (``encryption``: as :func:`transmission_settings`).

    Returns once it has checked the local data (its status line says
    ``Progress`` or ``Seeding``); it then runs until stopped.
    """
    directory.mkdir(parents=True, exist_ok=True)
    transmission_settings(config_dir, directory, port, encryption)
    # -D/-U no speed limits, -M no port mapping, -et/-ep/-er the encryption mode.
    # stdbuf: its status lines end in "\r", and its stdout on a pipe would
    # otherwise only reach us in 4 KiB blocks (about ten seconds late).
    argv = ["stdbuf", "-o0", "transmission-cli", "-g", str(config_dir), "-w", str(directory),
            "-p", str(port), "-D", "-U", "-M", TRANSMISSION_ENCRYPTION[encryption][1],
            str(torrent)]
    proc = ClientProcess("transmission-cli", argv, cwd=config_dir)
    try:
        proc.wait_for(f"{TRANSMISSION_DOWNLOADING}|{TRANSMISSION_SEEDING}", READY_TIMEOUT)
    except BaseException:
        proc.kill()
        raise
    return proc


# ----------------------------------------------------------------------------- payloads


def _digest_mismatch(a: bytes, b: bytes) -> str:
    if len(a) != len(b):
        return f"{len(b)} bytes instead of {len(a)}"
    first = next(i for i in range(len(a)) if a[i] != b[i])
    return f"differs from byte {first}"


def assert_same_payload(torrent: Path, ref_dir: Path, out_dir: Path, *,
                        exact_tree: bool = True) -> None:
    """Every file of ``torrent`` under ``out_dir`` is byte-identical to ``ref_dir``'s.

    With ``exact_tree``, ``out_dir`` also holds no other file (fasttorrent's
    ``.fasttorrent`` state directory aside).
    """
    meta = metainfo.load(torrent)
    expected = {f.path for f in meta.files if not f.pad}
    for rel in sorted(expected):
        want, got = (ref_dir / rel).read_bytes(), (out_dir / rel).read_bytes()
        assert got == want, f"{out_dir / rel}: {_digest_mismatch(want, got)}"
    if exact_tree:
        found = set()
        for dirpath, dirnames, filenames in os.walk(out_dir):
            dirnames[:] = [d for d in dirnames if d != ".fasttorrent"]
            found |= {(Path(dirpath) / f).relative_to(out_dir).as_posix() for f in filenames}
        assert found == expected, f"unexpected files {sorted(found - expected)}"
