"""How many pieces per second one coordinator sustains, and at how many cores it limits.

Run (quiet machine; one line per piece size, about 2 x 6 x 6 x 4 s):

    python bench/coord_capacity.py --out bench/results/scale/coord-capacity

Smoke (seconds):

    python bench/coord_capacity.py --workers 2,8 --rates 500,2000 --step 1 \
        --out /tmp/coord-smoke

What runs: a **real** :class:`torrent.coordinator.Coordinator` (its
``on_worker_message`` / ``handle`` dispatch, its :class:`~torrent.leases.LeaseTable`,
its resume :class:`~torrent.journal.Journal` with one fsync per ``Durable``,
its 0.5 s upkeep) on uvloop, as ``fasttorrent download`` runs it, reading
real :mod:`torrent.ipc` messages pickled over ``socketpair`` connections
(``multiprocessing.connection.Connection``, as :mod:`torrent.launch` makes
them) from K forked *simulated workers*.  Only the torrent download itself is
left out: no arena, no peers, no files are written.  A simulated worker
sends what ``torrent/worker.py`` sends, at the same moments:

- ``Ready``, then ``Availability`` (a full bitfield: its peers are seeders);
- ``NeedPieces(worker.lease_request(nslots, piece))`` when fewer than
  ``max(LOW_WATER, nslots)`` unstarted pieces remain (``nslots`` from the real
  ``shm.plan_slots`` for the piece size, K workers and the default arena);
- one piece "verified" every ``K / rate`` seconds, reported in ``Verified``
  batches (the first at once, then at most ``VERIFIED_DELAY`` late);
- ``Durable`` every ``FLUSH_INTERVAL``; ``Stats`` every ``TICK``;
- optionally (``--avail-per-tick``) a full ``Availability`` every tick, the
  worst case of a swarm of downloaders whose ``have`` messages keep adding
  pieces;
- ``Released`` for a ``Steal``; endgame leases asked at most once a tick.

Measured on the coordinator, with its thread's CPU clock (so a busy machine
delays it but does not inflate the costs much): CPU time per received
message type (its ``handle``, including the messages it sends back), the
receive and unpickling around it, and the upkeep; its busy fraction
(process CPU / wall) at each offered rate; the pieces per second verified.
From these: CPU per piece, the capacity (pieces/s at one full core) and the
knee (the highest offered rate still served within 5 %).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import multiprocessing
import os
import platform
import socket
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from torrent import ipc, metainfo
from torrent.coordinator import Coordinator, WorkerHandle
from torrent.journal import Journal, journal_path
from torrent.options import Options
from torrent.shm import plan_slots
from torrent.tools.bench import save_results
from torrent.worker import FLUSH_INTERVAL, LOW_WATER, TICK, VERIFIED_DELAY

try:
    from torrent.channel import Channel
except ImportError:  # a tree from before the Channel: the Connection, watched as is
    Channel = None  # type: ignore[assignment,misc]


def watch_connection(loop: Any, h: Any, callback: Any) -> None:
    """Watch worker ``h``'s control connection as Coordinator.run does."""
    if Channel is not None:
        h.channel = Channel(h.conn.fileno(), loop)
    loop.add_reader(h.conn.fileno(), callback, h)


try:
    from torrent.worker import lease_request
except ImportError:  # a tree from before lease_request: two slots' worth

    def lease_request(nslots: int, piece_length: int) -> int:
        return max(LOW_WATER, 2 * nslots)

KiB = 1 << 10
#: A coordinator busy this much of the time is saturated (the rest is the loop's
#: own waiting and the machine's noise).
SATURATED = 0.8
MiB = 1 << 20
GiB = 1 << 30
#: A simulated worker's "download": how the coordinator sees a worker, no more.
SIM_STATS_KEYS = ("worker", "peers", "pieces", "bytes", "blocks", "steals", "released",
                  "hash_failures", "banned", "endgame", "mse", "mse_rc4", "dial_fallbacks",
                  "refused", "handshake_timeouts", "peak_connections", "peak_half_open",
                  "peak_dialing", "peak_dial_queue", "uploaded", "connected", "rate",
                  "slots_free", "half_open", "dialing", "dial_queue")


def _bits_all(n: int) -> bytes:
    b = bytearray(b"\xff" * (-(-n // 8)))
    if n % 8:
        b[-1] = (0xFF << (8 - n % 8)) & 0xFF
    return bytes(b)


def sim_worker(wid: int, conn: Connection, *, num_pieces: int, rate: float, nslots: int,
               piece: int, avail_per_tick: bool, t0: float, duration: float) -> None:
    """One simulated worker: the messages torrent/worker.py sends, paced at ``rate`` pieces/s."""
    bits = _bits_all(num_pieces)
    low_water = max(LOW_WATER, nslots)
    want = lease_request(nslots, piece)
    unstarted: dict[int, None] = {}
    batch: list[int] = []
    durable: list[int] = []
    need_pending = False
    endgame = False
    last_need = -1.0
    done = 0
    interval = 1.0 / rate
    while time.monotonic() < t0:
        time.sleep(0.001)
    end = t0 + duration
    next_piece = t0 + interval
    next_tick = t0 + TICK
    next_flush = t0 + FLUSH_INTERVAL
    verified_sent = t0 - VERIFIED_DELAY

    def send(msg: Any) -> bool:
        try:
            conn.send(msg)
        except OSError:
            return False
        return True

    def ask(now: float) -> None:
        nonlocal need_pending, last_need
        if need_pending or (endgame and now - last_need < TICK):
            return
        need_pending = True
        last_need = now
        send(ipc.NeedPieces(want))

    send(ipc.Ready(wid))
    send(ipc.Availability(bits))
    ask(time.monotonic())
    while True:
        now = time.monotonic()
        if now >= end:
            break
        wake = min(next_piece, next_tick, next_flush,
                   verified_sent + VERIFIED_DELAY if batch else end, end)
        try:
            ready = conn.poll(max(0.0, wake - now))
            while ready:
                msg = conn.recv()
                t = type(msg)
                if t is ipc.Lease:
                    need_pending = False
                    for p in msg.pieces:
                        unstarted[p] = None
                    if msg.endgame or not msg.pieces:
                        endgame = True
                elif t is ipc.PiecesDone:
                    for p in msg.pieces:
                        unstarted.pop(p, None)
                elif t is ipc.Steal:
                    give = list(unstarted)[-msg.wanted:] if msg.wanted else []
                    for p in give:
                        del unstarted[p]
                    send(ipc.Released(tuple(give)))
                elif t is ipc.Stop:
                    return
                ready = conn.poll(0)
        except (EOFError, OSError):
            return
        now = time.monotonic()
        while next_piece <= now:
            next_piece += interval
            if unstarted:
                p = next(iter(unstarted))
                del unstarted[p]
                batch.append(p)
                durable.append(p)
                done += 1
            else:
                next_piece = now + interval  # idle: nothing leased (the coordinator lags)
                break
        if len(unstarted) < low_water:
            ask(now)
        if batch and now - verified_sent >= VERIFIED_DELAY:
            send(ipc.Verified(tuple(batch)))
            batch = []
            verified_sent = now
        if now >= next_tick:
            next_tick += TICK
            if avail_per_tick:
                send(ipc.Availability(bits))
            st = dict.fromkeys(SIM_STATS_KEYS, 0)
            st.update(worker=wid, banned=[], endgame=endgame, blocks=done * (piece // (16 * KiB)),
                      rate=rate * piece, pieces=done, bytes=done * piece)
            send(ipc.Stats(wid, st))
        if now >= next_flush:
            next_flush += FLUSH_INTERVAL
            if durable:
                send(ipc.Durable(tuple(durable)))
                durable = []
    if batch:
        send(ipc.Verified(tuple(batch)))
    # Wait for the coordinator's Stop (or its EOF).
    try:
        while type(conn.recv()) is not ipc.Stop:
            pass
    except (EOFError, OSError):
        return


def _sim_entry(wid: int, fd: int, others: list[int], kw: dict[str, Any]) -> None:
    # Hold no other worker's connection (forked after them): else a killed run
    # would leave the simulated workers waiting for an EOF that cannot come.
    for o in others:
        os.close(o)
    sim_worker(wid, Connection(fd), **kw)


class _Proc:
    """What the coordinator asks of a worker's process (``is_alive``, ``exitcode``)."""

    def __init__(self, p: multiprocessing.process.BaseProcess) -> None:
        self.p = p

    def is_alive(self) -> bool:
        return self.p.is_alive()

    @property
    def exitcode(self) -> int | None:
        return self.p.exitcode


class TimedCoordinator(Coordinator):
    """The real coordinator, with its thread's CPU time counted per message type."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.cpu_ns: dict[str, int] = collections.Counter()
        self.count: dict[str, int] = collections.Counter()
        self.sent: dict[str, int] = collections.Counter()
        self.recv_ns = 0  # on_worker_message less the handle() calls inside it

    def handle(self, h: WorkerHandle, msg: Any) -> None:
        t0 = time.thread_time_ns()
        super().handle(h, msg)
        name = type(msg).__name__
        self.cpu_ns[name] += time.thread_time_ns() - t0
        self.count[name] += 1

    def send(self, h: WorkerHandle, msg: Any) -> None:
        self.sent[type(msg).__name__] += 1
        super().send(h, msg)

    def on_worker_message(self, h: WorkerHandle) -> None:
        before = sum(self.cpu_ns.values())
        t0 = time.thread_time_ns()
        super().on_worker_message(h)
        self.recv_ns += time.thread_time_ns() - t0 - (sum(self.cpu_ns.values()) - before)


def _metainfo(num_pieces: int, piece: int) -> Any:
    return metainfo.parse(metainfo.build(name="capacity.bin", files=None,
                                         length=num_pieces * piece, piece_length=piece,
                                         piece_hashes=bytes(20 * num_pieces)))


def run_step(*, piece: int, workers: int, rate: float, duration: float, num_pieces: int,
             avail_per_tick: bool, journal_dir: str, arena: int | None) -> dict[str, Any]:
    """One offered rate: K simulated workers against one real coordinator."""
    meta = _metainfo(num_pieces, piece)
    nslots = plan_slots(piece, workers, arena)
    opts = Options(workers=workers, use_trackers=False, dht=False, stall_timeout=0)
    outdir = tempfile.mkdtemp(prefix="coordcap-", dir=journal_dir)
    coord = TimedCoordinator(meta, outdir, opts)
    journal = Journal(journal_path(outdir, meta.info_hash), meta.info_hash, meta.num_pieces,
                      meta.piece_length)
    journal.open(set())
    coord.journal = journal
    ctx = multiprocessing.get_context("fork")
    t0 = time.monotonic() + 0.3 + 0.01 * workers  # every worker forked before the start
    kw = {"num_pieces": num_pieces, "rate": rate / workers, "nslots": nslots, "piece": piece,
          "avail_per_tick": avail_per_tick, "t0": t0, "duration": duration}
    procs = []
    for w in range(workers):
        a, b = socket.socketpair()
        others = [h.conn.fileno() for h in coord.workers] + [a.fileno()]
        p = ctx.Process(target=_sim_entry, args=(w, b.fileno(), others, kw), daemon=True)
        p.start()
        b.close()
        procs.append(p)
        coord.workers.append(WorkerHandle(w, _Proc(p), Connection(a.detach())))

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        coord.done_event = asyncio.Event()
        for h in coord.workers:
            watch_connection(loop, h, coord.on_worker_message)  # as Coordinator.run
        while time.monotonic() < t0:
            await asyncio.sleep(0.005)
        coord.leases.start(time.monotonic())
        v0, c0, w0 = coord.verified, time.process_time(), time.monotonic()
        upkeep_ns = 0
        end = t0 + duration
        while time.monotonic() < end and not coord.done_event.is_set():
            try:
                await asyncio.wait_for(coord.done_event.wait(), min(0.5, end - time.monotonic()))
            except TimeoutError:
                pass
            u0 = time.thread_time_ns()
            coord.assign_peers()  # what run() does every 0.5 s
            coord.serve_waiting()
            coord.share_live_peers()
            upkeep_ns += time.thread_time_ns() - u0
        wall = time.monotonic() - w0
        cpu = time.process_time() - c0
        for h in coord.workers:
            loop.remove_reader(h.conn.fileno())
        return {"wall_s": wall, "cpu_s": cpu, "verified": coord.verified - v0,
                "upkeep_ns": upkeep_ns}

    try:
        import uvloop

        r = uvloop.run(main())
    except ImportError:
        r = asyncio.run(main())
    for h in coord.workers:
        h.conn.send(ipc.Stop())
        h.conn.close()
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join()
    journal.close()
    journal.remove()
    os.rmdir(outdir)
    msgs = sum(coord.count.values())
    handled_ns = sum(coord.cpu_ns.values()) + coord.recv_ns + r["upkeep_ns"]
    pieces = max(1, r["verified"])
    return {
        "piece": piece, "workers": workers, "nslots": nslots,
        "lease_pieces": lease_request(nslots, piece), "offered_pps": rate,
        "achieved_pps": round(r["verified"] / r["wall_s"], 1),
        "busy": round(r["cpu_s"] / r["wall_s"], 4),
        "wall_s": round(r["wall_s"], 3), "cpu_s": round(r["cpu_s"], 4),
        "messages_in": dict(coord.count), "messages_out": dict(coord.sent),
        "us_per_message": {k: round(coord.cpu_ns[k] / coord.count[k] / 1e3, 2)
                           for k in coord.count},
        "recv_us_per_message": round(coord.recv_ns / max(1, msgs) / 1e3, 2),
        "upkeep_ms": round(r["upkeep_ns"] / 1e6, 2),
        "cpu_us_per_piece": round(handled_ns / pieces / 1e3, 2),
        "process_cpu_us_per_piece": round(r["cpu_s"] * 1e6 / pieces, 2),
        "messages_per_piece": round(msgs / pieces, 3),
    }


def _fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares ``busy = fixed + per_piece x rate`` (both >= 0)."""
    if len(points) < 2:
        x, y = points[0]
        return 0.0, y / x if x else 0.0
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    if slope <= 0:  # noise: charge everything to the pieces of the fastest step
        x, y = max(points)
        return 0.0, y / x if x else 0.0
    return max(0.0, my - slope * mx), slope


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (piece, K): the knee, and the model ``busy = fixed + per_piece x pieces/s``.

    ``fixed`` is what K workers cost the coordinator whatever the rate (Stats,
    Durable with its fsync, Verified at most every VERIFIED_DELAY, the upkeep);
    ``per_piece`` is the CPU each piece adds.  Capacity at one core:
    ``(1 - fixed) / per_piece`` pieces/s.  Fitted on every step, against the
    rate achieved (process CPU, so the receive path and pickling are in): a
    step that fell short still says what that rate cost.  ``limited_by`` names
    what held the highest step back: the coordinator (busy above
    :data:`SATURATED`), else the simulated workers (a machine too busy to run
    them at that rate).
    """
    out = []
    for key in sorted({(r["piece"], r["workers"]) for r in rows}):
        rs = sorted((r for r in rows if (r["piece"], r["workers"]) == key),
                    key=lambda r: r["offered_pps"])
        served = [r for r in rs if r["achieved_pps"] >= 0.95 * r["offered_pps"]]
        knee = served[-1]["offered_pps"] if served else None
        fixed, per = _fit([(r["achieved_pps"], r["busy"]) for r in rs])
        cap = (1 - fixed) / per if per else None
        ref = served[-1] if served else rs[-1]
        top = rs[-1]
        limited = None if top in served else (
            "coordinator" if top["busy"] >= SATURATED else "simulated workers")
        out.append({"piece": key[0], "workers": key[1], "lease_pieces": ref["lease_pieces"],
                    "knee_offered_pps": knee, "steps_fitted": len(rs), "limited_by": limited,
                    "fixed_busy": round(fixed, 4), "us_per_piece": round(per * 1e6, 2),
                    "messages_per_piece_at_knee": ref["messages_per_piece"],
                    "capacity_pps_one_core": round(cap) if cap else None,
                    "capacity_MBps_one_core": round(cap * key[0] / 1e6) if cap else None})
    return out


def markdown(doc: dict[str, Any]) -> str:
    lines = [f"# Coordinator capacity ({doc['when']})", "",
             f"`{doc['command']}`", "",
             f"Machine: {doc['machine']['cpus']} CPUs, {doc['machine']['platform']}; "
             f"load average at start {doc['machine']['loadavg']}. "
             "Busy machine numbers are pessimistic for the knee, far less for the CPU "
             "per piece (thread CPU clock).", "",
             "## Capacity per (piece size, workers)", "",
             "Model fitted per row over every step: coordinator busy = fixed + us/piece x "
             "pieces/s achieved; capacity = (1 - fixed) / (us/piece) at one full core. "
             "Knee: the highest offered rate served within 5 %; past it, what fell short.",
             "",
             "| piece | K | lease (pieces) | knee (offered pieces/s served) | then limited by | "
             "fixed busy | us/piece | msgs in/piece at knee | capacity pieces/s | = MB/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in doc["summary"]:
        lines.append(f"| {s['piece'] >> 10} KiB | {s['workers']} | {s['lease_pieces']} | "
                     f"{s['knee_offered_pps']} | {s['limited_by'] or '-'} | "
                     f"{s['fixed_busy']:.3f} | {s['us_per_piece']} | "
                     f"{s['messages_per_piece_at_knee']} | {s['capacity_pps_one_core']} | "
                     f"{s['capacity_MBps_one_core']} |")
    lines += ["", "## Every step", "",
              "| piece | K | offered | achieved | busy | us per message (by type) | sent |",
              "|---|---|---|---|---|---|---|"]
    for r in doc["steps"]:
        per = ", ".join(f"{k} {v} x{r['messages_in'][k]}"
                        for k, v in sorted(r["us_per_message"].items()))
        lines.append(f"| {r['piece'] >> 10} KiB | {r['workers']} | {r['offered_pps']} | "
                     f"{r['achieved_pps']} | {r['busy']:.2f} | {per}; recv "
                     f"{r['recv_us_per_message']} | "
                     + ", ".join(f"{k} x{v}" for k, v in sorted(r["messages_out"].items()))
                     + " |")
    return "\n".join(lines) + "\n"


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="path prefix of the .json and .md written")
    ap.add_argument("--pieces", default="256,1024", help="piece sizes in KiB (default 256,1024)")
    ap.add_argument("--workers", default="2,4,8,16,32,64", help="simulated workers K")
    ap.add_argument("--rates", default="1000,2000,4000,8000,16000,32000",
                    help="offered pieces/s over all workers")
    ap.add_argument("--step", type=float, default=4.0, help="seconds per offered rate")
    ap.add_argument("--torrent", type=int, default=64, help="torrent size in GiB (default 64)")
    ap.add_argument("--avail-per-tick", action="store_true",
                    help="each worker sends a full Availability every tick (leecher swarm)")
    ap.add_argument("--arena", type=int, default=None,
                    help="arena MiB (default: the download's default for K workers)")
    ap.add_argument("--journal-dir", default=".",
                    help="where the resume journal is fsynced (default: the current dir)")
    a = ap.parse_args(argv)
    rows = []
    for pk in _ints(a.pieces):
        piece = pk * KiB
        n = (a.torrent * GiB) // piece
        for k in _ints(a.workers):
            for rate in _ints(a.rates):
                dur = min(a.step, 0.8 * n / rate)
                r = run_step(piece=piece, workers=k, rate=rate, duration=dur, num_pieces=n,
                             avail_per_tick=a.avail_per_tick, journal_dir=a.journal_dir,
                             arena=None if a.arena is None else a.arena << 20)
                print(f"piece {pk} KiB K={k:3d} offered {rate:6d}/s achieved "
                      f"{r['achieved_pps']:8.1f}/s busy {r['busy']:.2f} "
                      f"{r['process_cpu_us_per_piece']:.1f} us/piece "
                      f"{r['messages_per_piece']:.2f} msg/piece", flush=True)
                rows.append(r)
    doc = {"when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
           "command": " ".join(["python", "bench/coord_capacity.py", *(argv or sys.argv[1:])]),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "python": sys.version.split()[0], "loadavg": os.getloadavg()},
           "torrent_gib": a.torrent, "avail_per_tick": a.avail_per_tick,
           "steps": rows, "summary": summarize(rows)}
    save_results(a.out, doc, markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
