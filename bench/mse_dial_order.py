"""Which handshake should ``--encryption enabled`` dial first: plaintext or MSE/PE?

    python bench/mse_dial_order.py [--trials 30] [--size 4M]

Starts, on 127.0.0.1, one seeder of each common client at its DEFAULT
encryption setting (libtorrent: ``pe_enabled`` both ways; transmission-cli:
``encryption`` 1, "preferred"; aria2c: no crypto flag given), plus libtorrent
forcing RC4 (``pe_forced``, ``pe_rc4``) as the case where the first guess
can be wrong. Everything else is loopback-only (DHT, LPD, PEX, UPnP/NAT-PMP,
uTP off). Then, for each seeder, interleaving the two orders trial by trial,
it dials the way fasttorrent's worker does (the same sans-IO
``PeerProtocol``, ``initiate_mse`` for MSE; a connection closed before the
peer's handshake is retried once with the other kind, on a new connection):

- ``plain-first``: plaintext handshake, MSE on failure;
- ``mse-first``: MSE (offering RC4 and plaintext), plaintext on failure;

and records, from the start of the first connect: the time until the
peer's BitTorrent handshake is in (``handshake``) and until the first 16 KiB
block arrived (``first block``: interested, wait for the unchoke, request
block 0 of piece 0). It prints the medians (and the attempts each needed).
Each trial uses a fresh peer id and connection; every wait is bounded.
Needs libtorrent (PyPI), transmission-cli and aria2c; a missing one is skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from torrent import metainfo
from torrent.creator import create_torrent
from torrent.errors import RemoteProtocolError
from torrent.ports import free_port
from torrent.tools.payload import make_payload
from torrent.tools.seeders import lt_seed_command, read_ready_file
from torrent.units import parse_size
from torrent.wire import peer as wp

#: Bound on one trial (connects, handshakes, unchoke, one block), seconds.
TRIAL_TIMEOUT = 20.0
#: Bound on a seeder's start-up (it checks its data first), seconds.
START_TIMEOUT = 60.0
BLOCK = 16384


async def _attempt(host: str, port: int, meta: Any, mse: bool, t0: float,
                   want_block: bool) -> dict[str, float] | str:
    """One connection: its times, or why the peer ended it before its handshake."""
    reader, writer = await asyncio.open_connection(host, port)
    p = wp.PeerProtocol(meta.info_hash, b"-FT0100-" + secrets.token_hex(6).encode(),
                        meta.num_pieces, meta.piece_length, meta.total_size,
                        we_initiated=True, now=0.0, initiate_mse=mse)
    out: dict[str, float] = {}

    def send(data: bytes) -> None:
        writer.write(data if p.encrypt is None else p.encrypt.crypt(data))

    try:
        writer.write(p.take_output() or p.handshake())
        while True:
            data = await reader.read(65536)
            if not data:
                return f"closed by the peer after {time.perf_counter() - t0:.3f} s"
            try:
                events = p.receive_data(data)
            except RemoteProtocolError as e:
                return f"protocol error: {e}"
            if p.mse_pending:
                extra = p.take_output()
                if extra:
                    writer.write(extra)
            for ev in events:
                if isinstance(ev, wp.HandshakeReceived):
                    out["handshake"] = time.perf_counter() - t0
                    if not want_block:
                        return out
                    send(p.send_interested())
                elif isinstance(ev, wp.Unchoked):
                    send(p.send_request(0, 0, min(BLOCK, meta.piece_length), 0.0))
                elif isinstance(ev, wp.BlockReceived):
                    out["block"] = time.perf_counter() - t0
                    return out
    finally:
        writer.close()


async def trial(host: str, port: int, meta: Any, order: tuple[bool, ...]) -> dict[str, Any]:
    t0 = time.perf_counter()
    why: list[str] = []
    for n, mse in enumerate(order, 1):
        try:
            r = await asyncio.wait_for(_attempt(host, port, meta, mse, t0, True), TRIAL_TIMEOUT)
        except (OSError, TimeoutError) as e:
            r = f"{type(e).__name__}: {e}"
        if not isinstance(r, str):
            return {**r, "attempts": n, "mse": mse, "why": why}
        why.append(r)
    return {"attempts": len(order), "failed": True, "why": why}


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    end = time.monotonic() + START_TIMEOUT
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode})")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port}")


Seeders = dict[str, tuple[subprocess.Popen[bytes], int]]


def start_seeders(work: str, torrent: str, src: str) -> Seeders:
    out: Seeders = {}
    log = open(os.path.join(work, "seeders.log"), "ab")
    for name, enc in (("libtorrent (default)", "default"), ("libtorrent (forced RC4)", "rc4")):
        ready = os.path.join(work, f"lt-{enc}.ready")
        argv = lt_seed_command(torrent, src, ready, lifetime=3600, encryption=enc)
        proc = subprocess.Popen(argv, stdout=log, stderr=log)
        end = time.monotonic() + START_TIMEOUT
        while (r := read_ready_file(ready)) is None:
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"{name} did not start")
            time.sleep(0.1)
        out[name] = (proc, int(r["port"]))
    if shutil.which("transmission-cli"):
        port = free_port()
        cfg = os.path.join(work, "tr-cfg")
        os.makedirs(cfg, exist_ok=True)
        settings = {"bind-address-ipv4": "127.0.0.1", "bind-address-ipv6": "::1",
                    "dht-enabled": False, "lpd-enabled": False, "pex-enabled": False,
                    "utp-enabled": False, "port-forwarding-enabled": False,
                    "blocklist-enabled": False, "peer-port": port,
                    "peer-port-random-on-start": False, "rpc-enabled": False,
                    "encryption": 1,  # transmission's default: preferred
                    "download-dir": src, "incomplete-dir-enabled": False}
        with open(os.path.join(cfg, "settings.json"), "w") as f:
            json.dump(settings, f)
        proc = subprocess.Popen(["transmission-cli", "-g", cfg, "-w", src, "-p", str(port),
                                 "-M", torrent], stdout=log, stderr=log, cwd=cfg)
        _wait_port(port, proc, "transmission-cli")
        out["transmission-cli (default)"] = (proc, port)
    if shutil.which("aria2c"):
        port = free_port()
        proc = subprocess.Popen(
            ["aria2c", "--no-conf=true", f"--dir={src}", "--check-integrity=true",
             "--seed-ratio=0.0", "--enable-dht=false", "--enable-dht6=false",
             "--bt-enable-lpd=false", "--enable-peer-exchange=false",
             f"--listen-port={port}", "--interface=127.0.0.1", "--console-log-level=warn",
             torrent], stdout=log, stderr=log)
        _wait_port(port, proc, "aria2c")
        out["aria2c (default)"] = (proc, port)
    return out


async def _ready(port: int, meta: Any) -> None:
    """Until the seeder has checked its data and serves a block (bounded)."""
    end = time.monotonic() + START_TIMEOUT
    while time.monotonic() < end:
        if "block" in await trial("127.0.0.1", port, meta, (True, False)):
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"the seeder on {port} serves no block")


def _median(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:7.2f} ms" if xs else "   -    "


async def measure(seeders: dict[str, tuple[Any, int]], meta: Any, trials: int) -> list[str]:
    orders = {"plain-first": (False, True), "mse-first": (True, False)}
    lines = ["| seeder (its default) | order | handshake, median | first block, median "
             "| attempts (1/2/failed) |", "|---|---|---|---|---|"]
    for name, (_proc, port) in seeders.items():
        await _ready(port, meta)
        res: dict[str, list[dict[str, Any]]] = {k: [] for k in orders}
        for t in range(trials):
            for k in (list(orders) if t % 2 == 0 else list(reversed(orders))):
                res[k].append(await trial("127.0.0.1", port, meta, orders[k]))
        for k, rs in res.items():
            hs = [r["handshake"] for r in rs if "handshake" in r]
            bl = [r["block"] for r in rs if "block" in r]
            att = (sum(r["attempts"] == 1 and "failed" not in r for r in rs),
                   sum(r["attempts"] == 2 and "failed" not in r for r in rs),
                   sum("failed" in r for r in rs))
            lines.append(f"| {name} | {k} | {_median(hs)} | {_median(bl)} | "
                         f"{att[0]}/{att[1]}/{att[2]} |")
            print(lines[-1], flush=True)
            whys = sorted({w.split(" after ")[0] for r in rs for w in r["why"]})
            if whys:
                print(f"    first attempts failed: {'; '.join(whys)[:300]}", flush=True)
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--size", default="4M")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="mse-dial-order-")
    seeders: Seeders = {}
    try:
        src = os.path.join(work, "src")
        os.makedirs(src)
        target, _ = make_payload(src, parse_size(a.size), 1)
        torrent = os.path.join(work, "t.torrent")
        with open(torrent, "wb") as f:
            f.write(create_torrent(target, piece_length=256 << 10))
        meta = metainfo.load(torrent)
        seeders = start_seeders(work, torrent, src)
        lines = asyncio.run(measure(seeders, meta, a.trials))
        print("\n".join(lines))
    finally:
        for proc, _ in seeders.values():
            proc.terminate()
        for proc, _ in seeders.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
