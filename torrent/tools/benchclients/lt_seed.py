"""A libtorrent seeder process for ``fasttorrent bench`` and the integration tests.

    python -m torrent.tools.benchclients.lt_seed --torrent T --save-path DIR --ready FILE
        [--port P] [--lifetime S] [--upload-limit BPS] [--stop-file F] [--peer HOST:PORT]...
        [--encryption off|default|rc4]

Adds the torrent over the data in --save-path, lets libtorrent check it (a
seeder with partial data serves just the pieces it has), writes --ready
(JSON: pid, port it listens on, pieces it has), dials every --peer (for
clients that drop loopback peers handed out by a tracker and must be dialled),
and serves until --lifetime passes, its parent exits, or --stop-file appears.
DHT, LSD, UPnP, NAT-PMP and uTP are off; it listens on 127.0.0.1 only (port 0:
a free one, reported in --ready).  Encryption (MSE/PE) is off by default;
``--encryption default`` keeps libtorrent's own policy (MSE tried first,
plaintext accepted), ``rc4`` forces MSE both ways with RC4 only (``pe_forced``,
``allowed_enc_level`` ``pe_rc4``).  Needs libtorrent (PyPI bindings).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import libtorrent as lt

from torrent.tools.benchclients._lt import add_torrent, loopback_settings

#: ``--encryption`` choices.
ENCRYPTION = ("off", "default", "rc4")


def settings(port: int, upload_limit: int, encryption: str = "off") -> lt.settings_pack:
    s = loopback_settings(port)
    if encryption == "default":  # libtorrent's own: pe_enabled both ways, either method
        del s["out_enc_policy"]
        del s["in_enc_policy"]
    elif encryption == "rc4":
        s["out_enc_policy"] = int(lt.enc_policy.pe_forced)
        s["in_enc_policy"] = int(lt.enc_policy.pe_forced)
        s["allowed_enc_level"] = int(lt.enc_level.pe_rc4)
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
    ap.add_argument("--encryption", choices=ENCRYPTION, default="off",
                    help="MSE/PE: off (default), libtorrent's default, or forced RC4")
    a = ap.parse_args()
    end = time.monotonic() + a.lifetime
    parent = os.getppid()
    ses = lt.session(settings(a.port, a.upload_limit, a.encryption))
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
