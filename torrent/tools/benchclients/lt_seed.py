"""A libtorrent seeder process for ``fasttorrent bench`` and the integration tests.

    python -m torrent.tools.benchclients.lt_seed --torrent T --save-path DIR --ready FILE
        [--port P] [--lifetime S] [--upload-limit BPS] [--stop-file F] [--peer HOST:PORT]...

Adds the torrent over the data in --save-path, lets libtorrent check it (a
seeder with partial data serves just the pieces it has), writes --ready
(JSON: pid, port it listens on, pieces it has), dials every --peer (for
clients that drop loopback peers handed out by a tracker and must be dialled),
and serves until --lifetime passes, its parent exits, or --stop-file appears.
DHT, LSD, UPnP, NAT-PMP, uTP and encryption are off; it listens on 127.0.0.1 only (port 0:
a free one, reported in --ready).  Needs libtorrent (PyPI bindings).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import libtorrent as lt

from torrent.tools.benchclients._lt import add_torrent, loopback_settings


def settings(port: int, upload_limit: int) -> lt.settings_pack:
    s = loopback_settings(port)
    s.update({
        "upload_rate_limit": upload_limit,
        # libtorrent exempts local peers from rate limits unless told otherwise
        "ignore_limits_on_local_network": False,
        "user_agent": "fasttorrent-test-seed",
    })
    return s


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--torrent", required=True)
    ap.add_argument("--save-path", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ready", required=True)
    ap.add_argument("--lifetime", type=float, default=120)
    ap.add_argument("--upload-limit", type=int, default=0)
    ap.add_argument("--stop-file")
    ap.add_argument("--peer", action="append", default=[], metavar="HOST:PORT",
                    help="dial this peer once the data is checked (repeatable)")
    a = ap.parse_args()
    end = time.monotonic() + a.lifetime
    parent = os.getppid()
    ses = lt.session(settings(a.port, a.upload_limit))
    h = add_torrent(ses, a.torrent, a.save_path)
    ready = False
    while time.monotonic() < end:
        if os.getppid() != parent or (a.stop_file and os.path.exists(a.stop_file)):
            break
        ses.wait_for_alert(100)
        ses.pop_alerts()
        st = h.status()
        # ready once its data is checked (seeding, or downloading: it has some pieces)
        if not ready and st.has_metadata and st.state in (
                lt.torrent_status.seeding, lt.torrent_status.finished,
                lt.torrent_status.downloading):
            pieces = [i for i, v in enumerate(st.pieces) if v]
            tmp = a.ready + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"pid": os.getpid(), "port": ses.listen_port(),
                           "pieces": pieces}, f)
            os.replace(tmp, a.ready)
            ready = True
            for peer in a.peer:
                host, port = peer.rsplit(":", 1)
                h.connect_peer((host, int(port)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
