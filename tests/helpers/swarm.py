"""Start real libtorrent seeders on 127.0.0.1 for integration tests (bounded lifetimes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

from torrent.ports import free_port

#: The seeder module, shared with ``fasttorrent bench``.
LT_SEED = "torrent.tools.benchclients.lt_seed"
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
    procs = []
    for k, sp in enumerate(save_paths):
        port = free_port()
        ready = os.path.join(workdir, f"seed{k}-{port}.ready")
        lim = (upload_limits or [0] * len(save_paths))[k]
        p = subprocess.Popen(
            ["timeout", str(int(SEED_LIFETIME) + 5), sys.executable,
             "-m", LT_SEED, "--torrent", torrent, "--save-path", sp,
             "--port", str(port), "--ready", ready, "--lifetime", str(SEED_LIFETIME),
             "--upload-limit", str(lim)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append((p, port, ready))
    seeders = []
    deadline = time.monotonic() + READY_TIMEOUT
    for p, port, ready in procs:
        while not os.path.exists(ready):
            if p.poll() is not None:
                raise RuntimeError(f"seeder exited: {p.stderr.read().decode()}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                p.kill()
                raise RuntimeError("seeder did not become ready")
            time.sleep(0.05)
        with open(ready) as f:
            info = json.load(f)
        seeders.append(Seeder(p, port, info["pieces"]))
    return seeders
