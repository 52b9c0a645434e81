"""Our HTTP and UDP tracker clients against a real tracker: Debian's opentracker.

opentracker runs on 127.0.0.1 from a temp dir (Debian's build is whitelist
only and drops root to ``tracker.user``), wrapped in ``timeout`` so it can
never outlive the test run. Skipped when the binary is missing, except with
CI=true, where it fails (see conftest.require_binary).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import require_binary

from torrent.errors import TrackerError
from torrent.ports import free_port
from torrent.tracker.client import announce_http, announce_udp
from torrent.tracker.common import AnnounceParams, AnnounceResult

IH = bytes.fromhex("0123456789abcdef0123456789abcdef01234567")
NOT_LISTED = bytes.fromhex("ffffffffffffffffffffffffffffffffffffffff")
PID1 = b"-FT0001-opentracker1"
PID2 = b"-FT0001-opentracker2"

#: Upper bound on opentracker's start-up (it binds at once; this is slack for
#: a loaded CI machine).
START_TIMEOUT = 10.0


def _listening(proc: subprocess.Popen[bytes], port: int) -> bool:
    """True once *our* opentracker (the child of ``timeout``) listens on ``port``.

    Checking the owner, not just that the port accepts, matters: the port was
    free a moment ago, but another test running at the same time may take it,
    and then a plain connect would succeed against the wrong server.
    """
    try:
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children()]
        return any(
            c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
            for p in procs
            for c in p.net_connections(kind="tcp")
        )
    except psutil.Error:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop ``timeout`` and opentracker, its child.

    SIGTERM to ``timeout`` is forwarded to opentracker, which ``timeout`` then
    reaps. SIGKILL would leave opentracker running (``timeout`` cannot forward
    it), so the fallback kills the whole process group, which
    ``start_new_session`` made ours alone.
    """
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
            return
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def _start(binary: str, tdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start opentracker on a free port; retry on another port if it cannot bind."""
    last = "not started"
    for _ in range(3):
        port = free_port(udp=True)  # opentracker serves both on one port
        cmd = ["timeout", "120", binary, "-f", str(tdir / "ot.conf")]
        cmd += ["-i", "127.0.0.1", "-p", str(port), "-P", str(port)]
        with open(tdir / "ot.log", "wb") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tdir, start_new_session=True
            )
        deadline = time.monotonic() + START_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            if _listening(proc, port):
                return proc, port
            time.sleep(0.05)  # polling for readiness, bounded by START_TIMEOUT
        _stop(proc)
        out = (tdir / "ot.log").read_text(errors="replace")
        last = f"opentracker exited with {proc.returncode}: {out[-500:]}"
    raise RuntimeError(last)


@pytest.fixture
def opentracker(tmp_path: Path) -> Iterator[int]:
    binary = require_binary("opentracker")
    tdir = tmp_path / "ot"
    tdir.mkdir()
    (tdir / "wl.txt").write_text(IH.hex() + "\n")
    (tdir / "ot.conf").write_text(
        f"access.whitelist wl.txt\ntracker.rootdir {tdir}\ntracker.user nobody\n"
    )
    os.chmod(tdir, 0o755)
    os.chmod(tdir / "wl.txt", 0o644)
    os.chmod(tdir / "ot.conf", 0o644)
    proc, port = _start(binary, tdir)
    try:
        yield port
    finally:
        _stop(proc)


def params(peer_id: bytes, port: int, info_hash: bytes = IH) -> AnnounceParams:
    return AnnounceParams(
        info_hash=info_hash, peer_id=peer_id, port=port, left=100, event="started", numwant=50
    )


def test_http_second_peer_gets_the_first(opentracker: int) -> None:
    url = f"http://127.0.0.1:{opentracker}/announce"

    async def main() -> tuple[AnnounceResult, AnnounceResult]:
        first = await announce_http(url, params(PID1, 7001), timeout=5)
        second = await announce_http(url, params(PID2, 7002), timeout=5)
        return first, second

    first, second = asyncio.run(main())
    assert ("127.0.0.1", 7002) not in first.peers
    assert ("127.0.0.1", 7001) in second.peers
    assert first.interval > 0 and second.incomplete is not None and second.incomplete >= 2


def test_udp_second_peer_gets_the_first(opentracker: int) -> None:
    url = f"udp://127.0.0.1:{opentracker}/announce"
    schedule = (2.0, 2.0)

    async def main() -> tuple[AnnounceResult, AnnounceResult]:
        first = await announce_udp(url, params(PID1, 7101), timeout_schedule=schedule)
        second = await announce_udp(url, params(PID2, 7102), timeout_schedule=schedule)
        return first, second

    first, second = asyncio.run(main())
    assert ("127.0.0.1", 7102) not in first.peers
    assert ("127.0.0.1", 7101) in second.peers
    assert second.interval > 0 and (second.incomplete or 0) >= 2


def test_unlisted_torrent_is_a_tracker_error(opentracker: int) -> None:
    http_url = f"http://127.0.0.1:{opentracker}/announce"
    with pytest.raises(TrackerError, match=r"tracker failure: .*not authorized"):
        asyncio.run(announce_http(http_url, params(PID1, 7001, NOT_LISTED), timeout=5))
    # Over UDP opentracker answers a non-whitelisted torrent with a bare 8-byte
    # announce header: malformed per BEP 15, so an error at once, not a timeout.
    udp_url = f"udp://127.0.0.1:{opentracker}/announce"
    coro = announce_udp(udp_url, params(PID1, 7001, NOT_LISTED), timeout_schedule=(30.0,))
    with pytest.raises(TrackerError, match="too short"):
        asyncio.run(asyncio.wait_for(coro, 10))
