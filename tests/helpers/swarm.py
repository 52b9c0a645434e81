"""Start real libtorrent seeders on 127.0.0.1 for integration tests (bounded lifetimes).

The seeder command, its ready file and the bounded wait until it serves are
the tools' (:mod:`torrent.tools.seeders`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass

from torrent.ports import free_port
from torrent.tools.seeders import Starting, lt_seed_command, wait_serving

__all__ = ["Seeder", "start_seeders"]

#: Every seeder exits by itself after this long, even if the test runner dies.
SEED_LIFETIME = 180.0
#: How long a seeder may take to check its data and become ready.
READY_TIMEOUT = 60.0


@dataclass
class Seeder:
    proc: subprocess.Popen
    port: int
    pieces: list[int]

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_seeders(torrent: str, save_paths: list[str], workdir: str,
                  upload_limits: list[int] | None = None) -> list[Seeder]:
    """Start one libtorrent seeder per save path; wait until each has checked its data."""
    started: list[tuple[Starting, int]] = []
    try:
        for k, sp in enumerate(save_paths):
            port = free_port()
            ready = os.path.join(workdir, f"seed{k}-{port}.ready")
            log = os.path.join(workdir, f"seed{k}-{port}.log")
            lim = (upload_limits or [0] * len(save_paths))[k]
            argv = lt_seed_command(torrent, sp, ready, lifetime=SEED_LIFETIME, port=port,
                                   upload_limit=lim)
            with open(log, "w") as err:
                p = subprocess.Popen(["timeout", str(int(SEED_LIFETIME) + 5), *argv],
                                     stdout=subprocess.DEVNULL, stderr=err)
            started.append((Starting(p, "libtorrent", log, ready), port))
        serving = wait_serving([s for s, _ in started], timeout=READY_TIMEOUT, who="test")
    except BaseException:
        for s, _ in started:
            with contextlib.suppress(ProcessLookupError):
                s.popen.kill()
            s.popen.wait()
        raise
    return [Seeder(s.popen, port, list(sv.pieces or ()))
            for (s, port), sv in zip(started, serving, strict=True)]
