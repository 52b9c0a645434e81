"""What the libtorrent seeder and downloader share: loopback-only settings and adding a torrent."""

from __future__ import annotations

from typing import Any

import libtorrent as lt


def loopback_settings(port: int) -> lt.settings_pack:
    """A session on 127.0.0.1 only, TCP only, without encryption or rate limits.

    DHT, LSD, UPnP, NAT-PMP and uTP are off; several connections per IP are
    allowed (every peer of a loopback swarm is 127.0.0.1 and differs only by
    port).  No encryption, as the benchmark swarm's rules say: libtorrent
    would otherwise first try an encrypted handshake with every peer that is
    not libtorrent and reconnect in plaintext about 1.4 s later.

    ``lt.settings_pack`` is the ``TypedDict`` the bindings' stub gives their
    settings dict; it exists in the stub only (a plain ``dict`` at run time),
    so it appears in annotations only.
    """
    return {
        "listen_interfaces": f"127.0.0.1:{port}",
        "outgoing_interfaces": "127.0.0.1",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "dht_bootstrap_nodes": "",
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "allow_multiple_connections_per_ip": True,
        "out_enc_policy": int(lt.enc_policy.disabled),
        "in_enc_policy": int(lt.enc_policy.disabled),
        "upload_rate_limit": 0,
        "download_rate_limit": 0,
        "alert_mask": lt.alert.category_t.error_notification
        | lt.alert.category_t.status_notification,
    }


def add_torrent(ses: Any, torrent: str, save_path: str) -> Any:
    """Add ``torrent`` over ``save_path``, started at once (not auto-managed, not paused)."""
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(torrent)
    atp.save_path = save_path
    atp.flags &= ~lt.torrent_flags.auto_managed
    atp.flags &= ~lt.torrent_flags.paused
    return ses.add_torrent(atp)
