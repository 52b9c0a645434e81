"""An in-process libtorrent session on 127.0.0.1 (or ``::1``) for the protocol tests.

Theory of operation
-------------------
:class:`LtPeer` is one libtorrent session (the PyPI bindings) with the
loopback-only settings of the benchmark clients
(:func:`torrent.tools.benchclients._lt.loopback_settings`: bound to
127.0.0.1, or to ``::1`` when asked, DHT, local peer discovery, UPnP,
NAT-PMP and uTP off, no
encryption, several connections per IP) and libtorrent's default plugins,
``ut_metadata`` and ``ut_pex`` among them.  It runs in the test's own
process: a test can add a torrent from a magnet link (no ``ti``), dial a
peer, rate-limit a torrent so that it stays a leecher, and read what it is
connected to and where it learned each peer from (``peer_info.source``).

libtorrent works on its own threads; the test waits for a condition with
:meth:`LtPeer.wait_until`, which blocks on libtorrent's alert queue (never a
bare sleep) and always has a deadline.  The alerts it pops are kept, the
last :data:`MAX_ALERTS` of them, so a failure can say what libtorrent saw.
Use it as a context manager: leaving the block aborts the session.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self

from torrent.peeraddr import format_peer

try:
    import libtorrent as lt

    from torrent.tools.benchclients._lt import loopback_settings
except ImportError:  # importable without it: the tests that need it skip first
    lt = None

__all__ = ["LEECHER_RATE", "PEX", "LtPeer", "PexSwarm", "peer_ports", "pex_swarm"]

#: libtorrent's ``peer_info.source`` bit of a peer learned through ut_pex (BEP 11).
PEX = 0x04
#: Alerts kept for a failure message (the newest ones).
MAX_ALERTS = 200
#: Longest wait for one alert; a wait_until checks its condition at least this often.
ALERT_WAIT_MS = 100
#: How long the session may take to report its listening port.
LISTEN_TIMEOUT = 10.0
#: A leecher that must stay one for a whole PEX test: 16 KiB/s of a few MiB
#: is minutes, beyond every bound of those tests.
LEECHER_RATE = 16 * 1024
#: libtorrent checking its half of the data, or connecting (seconds).
SWARM_TIMEOUT = 30.0


class LtPeer:
    """A libtorrent session on 127.0.0.1 (port chosen by the system), bounded waits.

    Args:
        name: for messages.
        encryption: "off", "default", "forced" or "rc4" (see below).
        host: the loopback address it listens on and dials from: "127.0.0.1"
            or "::1" (IPv6 only, then).
        settings: libtorrent settings on top of the loopback ones.
        dht: None: DHT off; else run libtorrent's DHT node on loopback only,
            bootstrapped from these nodes (``"127.0.0.1:PORT"``; ``""``: none,
            the node other sessions bootstrap from).
    """

    def __init__(self, name: str = "libtorrent", *, encryption: str = "off",
                 host: str = "127.0.0.1",
                 settings: dict[str, Any] | None = None, dht: str | None = None) -> None:
        if lt is None:
            raise RuntimeError("the libtorrent module is not installed")
        assert int(lt.peer_info.pex) == PEX
        assert host in ("127.0.0.1", "::1"), "loopback only"
        self.name = name
        extra = settings or {}
        self.host = host
        settings = loopback_settings(0)
        settings["listen_interfaces"] = f"{format_peer(host, 0)}"
        settings["outgoing_interfaces"] = host
        if encryption != "off":
            # "default": libtorrent's own policy (MSE tried first, plaintext allowed);
            # "forced": MSE only, either method; "rc4": MSE with RC4 only
            enabled, forced = int(lt.enc_policy.pe_enabled), int(lt.enc_policy.pe_forced)
            policy = enabled if encryption == "default" else forced
            settings["out_enc_policy"] = policy
            settings["in_enc_policy"] = policy
            settings["allowed_enc_level"] = int(lt.enc_level.pe_rc4 if encryption == "rc4"
                                                else lt.enc_level.pe_both)
        if dht is not None:
            # loopback only: every node is 127.0.0.1, so libtorrent's one-node-per-IP
            # rules are off; the UDP port is the listen port
            settings.update(enable_dht=True, dht_bootstrap_nodes=dht,
                            dht_restrict_routing_ips=False, dht_restrict_search_ips=False)
        # peer events too: a failure then shows who connected and who was dropped
        settings["alert_mask"] = (lt.alert.category_t.error_notification
                                  | lt.alert.category_t.status_notification
                                  | lt.alert.category_t.peer_notification
                                  | lt.alert.category_t.connect_notification
                                  | lt.alert.category_t.dht_notification)
        self.dht_announces: list[tuple[str, int, str]] = []  # (ip, port, info-hash hex)
        settings.update(extra)
        self.ses = lt.session(settings)
        self.alerts: deque[str] = deque(maxlen=MAX_ALERTS)
        self.wait_until(lambda: self.ses.listen_port() != 0, LISTEN_TIMEOUT, "listening")

    @property
    def port(self) -> int:
        return int(self.ses.listen_port())

    @property
    def addr(self) -> str:
        """``"127.0.0.1:PORT"`` or ``"[::1]:PORT"``, as ``--peer`` takes it."""
        return format_peer(self.host, self.port)

    # -- torrents -------------------------------------------------------------------
    def add_torrent(self, torrent: Path, save_path: Path, *, pex: bool = True) -> Any:
        """Add ``torrent`` (a .torrent file) over ``save_path``, started at once.

        Without ``pex`` the torrent neither sends nor takes ut_pex messages
        (``torrent_flags.disable_pex``): a peer that must not spread addresses.
        """
        atp = lt.add_torrent_params()
        atp.ti = lt.torrent_info(str(torrent))
        atp.save_path = str(save_path)
        atp.flags &= ~lt.torrent_flags.auto_managed
        atp.flags &= ~lt.torrent_flags.paused
        if not pex:
            atp.flags |= lt.torrent_flags.disable_pex
        return self.ses.add_torrent(atp)

    def seed(self, torrent: Path, save_path: Path, *, pex: bool = True,
             timeout: float = 60.0) -> Any:
        """Add ``torrent`` over its complete data and wait until it is checked and seeding."""
        h = self.add_torrent(torrent, save_path, pex=pex)
        self.wait_until(lambda: h.status().is_seeding, timeout, "seeding")
        return h

    def add_magnet(self, uri: str, save_path: Path) -> Any:
        """Add a torrent from a magnet link only: no info dict, it must fetch the metadata."""
        atp = lt.parse_magnet_uri(uri)
        assert atp.ti is None or not atp.ti.is_valid(), "a magnet carries no metadata"
        atp.save_path = str(save_path)
        atp.flags &= ~lt.torrent_flags.auto_managed
        atp.flags &= ~lt.torrent_flags.paused
        return self.ses.add_torrent(atp)

    # -- waiting ----------------------------------------------------------------------
    def pump(self, wait_ms: int = ALERT_WAIT_MS) -> None:
        """Wait up to ``wait_ms`` for alerts and keep what they say."""
        self.ses.wait_for_alert(wait_ms)
        for a in self.ses.pop_alerts():
            self.alerts.append(f"{type(a).__name__}: {a.message()}")
            if isinstance(a, lt.dht_announce_alert):
                self.dht_announces.append((str(a.ip), int(a.port), str(a.info_hash)))

    def wait_until(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        """Return once ``cond()`` holds; fail after ``timeout`` seconds naming ``what``.

        Raises:
            AssertionError: the deadline passed first (with the latest alerts).
        """
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: not {what} after {timeout:.0f} s\n"
                                     + self.describe())
            self.pump()

    def describe(self, tail: int = 40) -> str:
        return "\n".join([f"--- {self.name} alerts (last {tail})", *list(self.alerts)[-tail:]])

    # -- lifetime ---------------------------------------------------------------------
    def close(self) -> None:
        """Abort the session (no announces: there are no trackers)."""
        ses = getattr(self, "ses", None)
        if ses is not None:
            ses.pause()
            del self.ses

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def peer_ports(handle: Any, *, source: int = 0) -> set[int]:
    """Ports of the peers ``handle`` is connected to (handshake done), optionally only
    those whose ``peer_info.source`` has a bit of ``source``."""
    out = set()
    for p in handle.get_peer_info():
        if p.flags & lt.peer_info.connecting or p.flags & lt.peer_info.handshake:
            continue
        if source and not p.source & source:
            continue
        out.add(int(p.ip[1]))
    return out


class PexSwarm(NamedTuple):
    """The sessions of :func:`pex_swarm` and the leecher's torrent handle."""

    a: LtPeer
    b: LtPeer
    c: LtPeer
    ha: Any


@contextlib.contextmanager
def pex_swarm(torrent: Path, src: Path, num_pieces: int, tmp: Path, *,
              host: str = "127.0.0.1") -> Iterator[PexSwarm]:
    """Three libtorrent sessions on ``host`` for a test of the PEX we receive: B and C
    each hold half of the pieces (none of them sends PEX), A is a leecher held at
    :data:`LEECHER_RATE` and connected to both; the test gives fasttorrent A alone.

    A stays a leecher: two seeds do not keep a connection, and a seed A would
    have no peer to tell us about. B and C are not rate-limited: a libtorrent
    peer over its download limit stops reading its sockets, our requests
    included, and would serve us in bursts seconds apart.
    """
    from helpers.payload import partial_copy

    halves = {"B": range(num_pieces // 2), "C": range(num_pieces // 2, num_pieces)}
    with LtPeer("A", host=host) as a, LtPeer("B", host=host) as b, \
            LtPeer("C", host=host) as c:
        for name, peer in (("B", b), ("C", c)):
            partial_copy(torrent, src, tmp / name, halves[name])
            h = peer.add_torrent(torrent, tmp / name, pex=False)
            peer.wait_until(lambda h=h: h.status().num_pieces >= num_pieces // 2,
                            SWARM_TIMEOUT, "done checking its half")
        ha = a.add_torrent(torrent, tmp / "a")
        ha.set_download_limit(LEECHER_RATE)
        for s in (b, c):
            ha.connect_peer((host, s.port))
        a.wait_until(lambda: peer_ports(ha) >= {b.port, c.port}, SWARM_TIMEOUT,
                     "connected to B and C")
        yield PexSwarm(a, b, c, ha)
