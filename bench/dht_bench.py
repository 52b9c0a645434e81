"""Bare magnet to first peer and to metadata through a loopback DHT: fasttorrent vs libtorrent.

    python bench/dht_bench.py --runs 5 --size 16M --seeders 2

A libtorrent DHT node on 127.0.0.1 is the router; ``--seeders`` libtorrent
sessions seed a deterministic payload and announce it to the DHT. Then,
interleaved, each client gets only the magnet's info-hash (no ``tr``, no
``x.pe``, no peers) and an empty routing table, bootstrapped from the
router:

- ``fasttorrent``: ``fasttorrent download MAGNET --dht-bootstrap R`` with a
  fresh ``--state-dir``; its ``--json`` result gives the time to the first
  DHT peer (``dht.first_peer_seconds``), to the metadata
  (``metadata_seconds``) and to the whole download (``seconds`` plus the
  metadata);
- ``libtorrent``: a fresh session with its DHT bootstrapped from the router
  (the magnet is added once its DHT holds a node: added earlier, libtorrent
  does not search for it again until its next announce, minutes later);
  the first ``dht_get_peers_reply_alert`` or, as this build may not post
  it, the first ``peer_connect_alert`` (its first dial of a peer), the
  ``metadata_received_alert`` and the torrent finished, all timed from the
  session's creation (so both clients pay for their bootstrap).

Each download is checked bit-exact. Every wait is bounded (``--timeout``).
Prints one JSON line per run and a median table; ``--results DIR`` writes
``dht_bench.json`` there. Everything is on loopback: nothing reaches the
public DHT.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import libtorrent as lt

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from torrent import metainfo  # noqa: E402
from torrent.magnet import magnet_uri  # noqa: E402
from torrent.tools.bench import versions  # noqa: E402
from torrent.tools.benchclients._lt import loopback_settings  # noqa: E402
from torrent.tools.payload import write_file  # noqa: E402
from torrent.units import size_arg  # noqa: E402

#: Longest wait for one libtorrent event (alerts are polled this often, in ms).
ALERT_WAIT_MS = 50
#: Without a peer after this many seconds, libtorrent is told to search again
#: (fasttorrent's own first retry is after 5 s: torrent.dht.service.SEARCH_FIRST_RETRY).
LT_RETRY = 2.0


def dht_session(bootstrap: str) -> Any:
    s = loopback_settings(0)
    # every node is 127.0.0.1 here: libtorrent's per-IP limits (5 packets a second,
    # then the IP blocked for 5 minutes; 8 kB/s of DHT upload) would soon block
    # every client of the bench, so they are lifted
    s.update(enable_dht=True, dht_bootstrap_nodes=bootstrap, dht_restrict_routing_ips=False,
             dht_restrict_search_ips=False, dht_block_ratelimit=1_000_000,
             dht_block_timeout=1, dht_upload_rate_limit=100_000_000,
             alert_mask=lt.alert.category_t.status_notification
             | lt.alert.category_t.dht_notification
             | lt.alert.category_t.dht_operation_notification
             | lt.alert.category_t.connect_notification
             | lt.alert.category_t.error_notification)
    return lt.session(s)


def wait_alert(ses: Any, want: Any, deadline: float, what: str) -> Any:
    while time.monotonic() < deadline:
        ses.wait_for_alert(ALERT_WAIT_MS)
        for a in ses.pop_alerts():
            if want(a):
                return a
    raise SystemExit(f"dht_bench: timed out waiting for {what}")


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and ".fasttorrent" not in p.parts:
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def run_fasttorrent(magnet: str, boot: str, work: Path, timeout: float) -> dict[str, Any]:
    out = work / "ft-out"
    argv = [sys.executable, "-m", "torrent", "download", magnet, "-o", str(out), "--workers",
            "1", "--no-trackers", "--bind", "127.0.0.1",
            *(x for node in boot.split(",") for x in ("--dht-bootstrap", node)),
            "--state-dir", str(work / "ft-state"), "--json", "-q"]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    wall = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"dht_bench: fasttorrent exited {r.returncode}: {r.stderr.strip()}")
    res = json.loads(r.stdout.splitlines()[-1])
    return {"client": "fasttorrent", "first_peer_s": res["dht"]["first_peer_seconds"],
            "metadata_s": res["metadata_seconds"],
            "complete_s": res["metadata_seconds"] + res["seconds"], "wall_s": wall,
            "out": out}


def run_libtorrent(magnet: str, boot: str, work: Path, timeout: float) -> dict[str, Any]:
    out = work / "lt-out"
    t0 = time.monotonic()
    deadline = t0 + timeout
    ses = dht_session(boot)
    try:
        # a magnet added before libtorrent's DHT holds a node is not searched for
        # again until its next announce (minutes): wait for the bootstrap, on the clock
        while ses.status().dht_nodes == 0:
            if time.monotonic() > deadline:
                raise SystemExit("dht_bench: libtorrent's DHT never bootstrapped")
            ses.wait_for_alert(ALERT_WAIT_MS)
            ses.pop_alerts()
        atp = lt.parse_magnet_uri(magnet)
        atp.save_path = str(out)
        atp.flags &= ~lt.torrent_flags.auto_managed
        atp.flags &= ~lt.torrent_flags.paused
        h = ses.add_torrent(atp)
        times: dict[str, float] = {}
        asked = time.monotonic()
        while "complete_s" not in times:
            if "first_peer_s" not in times and time.monotonic() - asked > LT_RETRY:
                # libtorrent searches once at start and then at its next announce
                # (minutes): ask again, as fasttorrent does after SEARCH_FIRST_RETRY
                h.force_dht_announce()
                asked = time.monotonic()
            if time.monotonic() > deadline:
                st = h.status()
                raise SystemExit(f"dht_bench: libtorrent timed out ({st.state}, "
                                 f"{st.num_peers} peers, {st.progress:.0%})")
            ses.wait_for_alert(ALERT_WAIT_MS)
            for a in ses.pop_alerts():
                now = time.monotonic() - t0
                if isinstance(a, lt.dht_get_peers_reply_alert | lt.peer_connect_alert):
                    times.setdefault("first_peer_s", now)
                elif isinstance(a, lt.metadata_received_alert):
                    times.setdefault("metadata_s", now)
                elif isinstance(a, lt.torrent_finished_alert):
                    times["complete_s"] = now
            if h.status().is_seeding:
                times.setdefault("complete_s", time.monotonic() - t0)
        return {"client": "libtorrent", "first_peer_s": times.get("first_peer_s"),
                "metadata_s": times.get("metadata_s"), "complete_s": times["complete_s"],
                "wall_s": times["complete_s"], "out": out}
    finally:
        ses.pause()
        del ses


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=size_arg, default=16 << 20, help="payload (default 16M)")
    ap.add_argument("--seeders", type=int, default=2, help="libtorrent seeders (default 2)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=120.0, help="per download (seconds)")
    ap.add_argument("--results", default=None, metavar="DIR")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="dht-bench-") as tmp:
        root = Path(tmp)
        data = root / "payload"
        data.mkdir()
        write_file(str(data / "data.bin"), a.size)
        fs = lt.file_storage()
        fs.add_file("data.bin", a.size)
        ct = lt.create_torrent(fs, 256 * 1024)
        lt.set_piece_hashes(ct, str(data))
        torrent = root / "t.torrent"
        torrent.write_bytes(lt.bencode(ct.generate()))
        meta = metainfo.load(str(torrent))
        magnet = magnet_uri(meta, trackers=[], peers=[])
        want = tree_digest(data)
        router = dht_session("")
        time.sleep(0.2)
        boot = f"127.0.0.1:{router.listen_port()}"
        seeders = []
        for _ in range(a.seeders):
            s = dht_session(boot)
            atp = lt.add_torrent_params()
            atp.ti = lt.torrent_info(str(torrent))
            atp.save_path = str(data)
            atp.flags &= ~lt.torrent_flags.auto_managed
            atp.flags &= ~lt.torrent_flags.paused
            h = s.add_torrent(atp)
            deadline = time.monotonic() + a.timeout
            while not h.status().is_seeding and time.monotonic() < deadline:
                s.wait_for_alert(ALERT_WAIT_MS)
                s.pop_alerts()
            h.force_dht_announce()
            seeders.append(s)
        wait_alert(router, lambda x: isinstance(x, lt.dht_announce_alert), time.monotonic()
                   + a.timeout, "the seeders' announces")
        # Both clients bootstrap from the router and the seeders' nodes: the
        # router's table fills with the nodes of earlier runs, all gone, and a
        # bootstrap from it alone can end with no live node (libtorrent then
        # never searches within the run)
        boot = ",".join([boot, *(f"127.0.0.1:{s.listen_port()}" for s in seeders)])
        runs: list[dict[str, Any]] = []
        clients = [run_fasttorrent, run_libtorrent]
        for i in range(a.runs):
            order = clients if i % 2 == 0 else clients[::-1]
            for fn in order:
                work = root / f"run{i}-{fn.__name__}"
                work.mkdir()
                r = fn(magnet, boot, work, a.timeout)
                out = r.pop("out") / "data.bin"
                got = hashlib.sha256(out.read_bytes()).hexdigest() if out.exists() else None
                if tree_digest(out.parent) != want or got is None:
                    raise SystemExit(f"dht_bench: {r['client']} run {i + 1}: data differs")
                r["run"] = i + 1
                runs.append(r)
                print(json.dumps(r), flush=True)
        for s in (*seeders, router):
            s.pause()
    summary = {}
    print(f"{'client':<12} {'first peer s':>12} {'metadata s':>11} {'complete s':>11}  (medians)")
    for name in ("fasttorrent", "libtorrent"):
        rs = [r for r in runs if r["client"] == name]
        med = {k: statistics.median(r[k] for r in rs if r[k] is not None)
               if any(r[k] is not None for r in rs) else None
               for k in ("first_peer_s", "metadata_s", "complete_s")}
        summary[name] = med
        print(f"{name:<12} " + " ".join(
            f"{v:>11.3f}" if v is not None else f"{'-':>11}" for v in med.values()))
    if a.results:
        os.makedirs(a.results, exist_ok=True)
        with open(os.path.join(a.results, "dht_bench.json"), "w") as f:
            json.dump({"size": a.size, "seeders": a.seeders, "runs": runs,
                       "medians": summary, "versions": versions()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
