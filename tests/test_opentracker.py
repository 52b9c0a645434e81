"""Our HTTP and UDP tracker clients against a real tracker: Debian's opentracker.

opentracker runs on 127.0.0.1 from a temp dir (Debian's build is whitelist
only and drops root to ``tracker.user``), wrapped in ``timeout`` so it can
never outlive the test run. Skipped when the binary is missing, except with
CI=true, where it fails (see conftest.require_binary).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_binary

from torrent.errors import TrackerError
from torrent.tracker.client import announce_http, announce_udp
from torrent.tracker.common import AnnounceParams, AnnounceResult

IH = bytes.fromhex("0123456789abcdef0123456789abcdef01234567")
NOT_LISTED = bytes.fromhex("ffffffffffffffffffffffffffffffffffffffff")
PID1 = b"-FT0001-opentracker1"
PID2 = b"-FT0001-opentracker2"

#: Upper bound on opentracker's start-up (it binds at once; this is slack for
#: a loaded CI machine).
START_TIMEOUT = 10.0


def _free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (opentracker uses both)."""
    for _ in range(50):
        with socket.socket() as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(port)
    raise RuntimeError("no port free for both TCP and UDP")


def _wait_accepting(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"opentracker exited with {proc.returncode}: {out}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)  # polling a port for readiness, bounded by START_TIMEOUT
    raise RuntimeError(f"opentracker did not accept connections within {START_TIMEOUT}s")


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
    port = _free_port()
    cmd = ["timeout", "120", binary, "-f", str(tdir / "ot.conf")]
    cmd += ["-i", "127.0.0.1", "-p", str(port), "-P", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tdir)
    try:
        _wait_accepting(port, proc)
        yield port
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


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
    with pytest.raises(TrackerError, match="tracker failure: .*not authorized"):
        asyncio.run(announce_http(http_url, params(PID1, 7001, NOT_LISTED), timeout=5))
    # Over UDP opentracker answers a non-whitelisted torrent with a bare 8-byte
    # announce header: malformed per BEP 15, so an error at once, not a timeout.
    udp_url = f"udp://127.0.0.1:{opentracker}/announce"
    coro = announce_udp(udp_url, params(PID1, 7001, NOT_LISTED), timeout_schedule=(30.0,))
    with pytest.raises(TrackerError, match="too short"):
        asyncio.run(asyncio.wait_for(coro, 10))
