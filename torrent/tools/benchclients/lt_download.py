"""Download one torrent with libtorrent (PyPI bindings) from given peers; exit 0 when done.

    python -m torrent.tools.benchclients.lt_download [--profile default|fast] [--port N]
        --peers ip:port,... [--timeout S] TORRENT OUTDIR
    python -m torrent.tools.benchclients.lt_download [--profile ...] [--port N]
        [--peers ip:port,...] [--timeout S] --magnet URI OUTDIR

Loopback-only settings (DHT, LSD, UPnP, NAT-PMP, uTP and encryption off; bound to
127.0.0.1; several connections per IP allowed, since every seeder is on
127.0.0.1).  "fast" is libtorrent's own high_performance_seed() pack.  Exits
once every piece passed libtorrent's hash check and the torrent was removed
(files closed).

With ``--magnet`` the torrent is added from the magnet alone
(``lt.parse_magnet_uri``, no torrent_info): its ``x.pe`` peers (or
``--peers``) are dialled with ``connect_peer``, libtorrent fetches the
metadata from them (ut_metadata) and then downloads.

On success one JSON object goes to stdout, the times counted from just before
the session is created: ``metadata_seconds`` (the metadata_received_alert; 0
for a TORRENT), ``first_piece_seconds`` (the first piece_finished_alert) and
``seconds`` (the torrent finished).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import libtorrent as lt

from torrent.tools.benchclients._lt import add_torrent, loopback_settings


def settings(port: int, profile: str) -> lt.settings_pack:
    """``default``, ``fast`` (high_performance_seed) or ``enc``: the default settings with
    libtorrent's own encryption policy (MSE/PE tried first on every connection, as
    libtorrent, qBittorrent and Deluge do out of the box), which the others turn off."""
    s: lt.settings_pack = lt.high_performance_seed() if profile == "fast" else {}
    s.update(loopback_settings(port))
    if profile == "enc":
        del s["out_enc_policy"]
        del s["in_enc_policy"]
    return s


def _peers(text: str) -> list[tuple[str, int]]:
    out = []
    for p in filter(None, text.split(",")):
        host, port = p.rsplit(":", 1)
        out.append((host.strip("[]"), int(port)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("torrent", nargs="?", help="the .torrent (not with --magnet)")
    ap.add_argument("outdir")
    ap.add_argument("--magnet", metavar="URI", help="start from this magnet instead")
    ap.add_argument("--profile", choices=("default", "fast", "enc"), default="default")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--peers", default=None,
                    help="ip:port,... to dial (default with --magnet: its x.pe peers)")
    ap.add_argument("--timeout", type=float, default=600)
    a = ap.parse_args()
    if (a.magnet is None) == (a.torrent is None):
        ap.error("give either TORRENT or --magnet URI")
    if a.magnet is None and a.peers is None:
        ap.error("--peers is required with a TORRENT")
    t0 = time.monotonic()
    end = t0 + a.timeout
    s = settings(a.port, a.profile)
    base_mask = s["alert_mask"]
    # piece_finished_alert is a piece-progress alert: asked for until the first one
    s["alert_mask"] = base_mask | lt.alert.category_t.piece_progress_notification
    ses = lt.session(s)
    if a.magnet is not None:
        atp = lt.parse_magnet_uri(a.magnet)
        atp.save_path = a.outdir
        atp.flags &= ~lt.torrent_flags.auto_managed
        atp.flags &= ~lt.torrent_flags.paused
        peers = _peers(a.peers) if a.peers is not None else list(atp.peers)
        h = ses.add_torrent(atp)
        t_meta: float | None = None
    else:
        h = add_torrent(ses, a.torrent, a.outdir)
        peers = _peers(a.peers)
        t_meta = t0
    for addr in peers:
        h.connect_peer(addr)
    t_first: float | None = None
    done = False
    while time.monotonic() < end and not done:
        ses.wait_for_alert(100)
        for al in ses.pop_alerts():
            if isinstance(al, lt.metadata_received_alert) and t_meta is None:
                t_meta = time.monotonic()
            elif isinstance(al, lt.piece_finished_alert) and t_first is None:
                t_first = time.monotonic()
                ses.apply_settings({"alert_mask": base_mask})  # no alert per piece from now
            elif isinstance(al, lt.torrent_finished_alert):
                done = True
        done = done or h.status().is_seeding
    t_done = time.monotonic()
    if not done:
        print("timeout" if t_meta is not None else "timeout: no metadata", file=sys.stderr)
        return 3
    ses.remove_torrent(h)
    t = time.monotonic() + 30
    while time.monotonic() < t:
        ses.wait_for_alert(100)
        if any(isinstance(al, lt.torrent_removed_alert) for al in ses.pop_alerts()):
            break
    del ses
    print(json.dumps({
        "metadata_seconds": None if t_meta is None else round(t_meta - t0, 6),
        "first_piece_seconds": None if t_first is None else round(t_first - t0, 6),
        "seconds": round(t_done - t0, 6)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
