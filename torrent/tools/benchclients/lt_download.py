"""Download one torrent with libtorrent (PyPI bindings) from given peers; exit 0 when done.

    python -m torrent.tools.benchclients.lt_download [--profile default|fast] [--port N]
        --peers ip:port,... [--timeout S] TORRENT OUTDIR

Loopback-only settings (DHT, LSD, UPnP, NAT-PMP, uTP and encryption off; bound to
127.0.0.1; several connections per IP allowed, since every seeder is on
127.0.0.1).  "fast" is libtorrent's own high_performance_seed() pack.  Exits
once every piece passed libtorrent's hash check and the torrent was removed
(files closed).
"""

from __future__ import annotations

import argparse
import sys
import time

import libtorrent as lt

from torrent.tools.benchclients._lt import add_torrent, loopback_settings


def settings(port: int, profile: str) -> lt.settings_pack:
    s: lt.settings_pack = lt.high_performance_seed() if profile == "fast" else {}
    s.update(loopback_settings(port))
    return s


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("torrent")
    ap.add_argument("outdir")
    ap.add_argument("--profile", choices=("default", "fast"), default="default")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--peers", required=True)
    ap.add_argument("--timeout", type=float, default=600)
    a = ap.parse_args()
    end = time.monotonic() + a.timeout
    ses = lt.session(settings(a.port, a.profile))
    h = add_torrent(ses, a.torrent, a.outdir)
    for p in filter(None, a.peers.split(",")):
        host, port = p.rsplit(":", 1)
        h.connect_peer((host, int(port)))
    done = False
    while time.monotonic() < end and not done:
        ses.wait_for_alert(100)
        for al in ses.pop_alerts():
            if isinstance(al, lt.torrent_finished_alert):
                done = True
        done = done or h.status().is_seeding
    if not done:
        print("timeout", file=sys.stderr)
        return 3
    ses.remove_torrent(h)
    t = time.monotonic() + 30
    while time.monotonic() < t:
        ses.wait_for_alert(100)
        if any(isinstance(al, lt.torrent_removed_alert) for al in ses.pop_alerts()):
            break
    del ses
    return 0


if __name__ == "__main__":
    sys.exit(main())
