"""IPv6 end to end, on ``::1``, against libtorrent (PyPI), both directions.

Every libtorrent session listens on ``[::1]`` only (helpers/ltpeer.py; DHT,
local discovery, UPnP, NAT-PMP and uTP off); fasttorrent runs with
``--bind ::1``.  The peers reach each other through every IPv6 source:

- ``--peer [::1]:P``: fasttorrent downloads from a libtorrent seed, and
  libtorrent downloads from ``fasttorrent seed --bind ::1``;
- a magnet's ``x.pe=[::1]:P`` (the metadata fetch and the download);
- trackers on ``::1``, the loopback test trackers of tests/trackers.py
  (Debian's opentracker is built IPv4-only: given ``-i ::1`` it exits with
  "Tracker is V4 only!"): HTTP answering with compact ``peers6`` (BEP 7) or
  with the dictionary form, and UDP answering an IPv6 announce with 18-byte
  peers (BEP 15); libtorrent announces to them too, so the tracker lists it
  and fasttorrent finds it there;
- PEX (BEP 11), both ways: fasttorrent, given one libtorrent peer, learns
  the two others from its ``added6`` and completes from them; a libtorrent
  peer learns fasttorrent's other IPv6 peers from our ``added6``;
- the default ``--bind``: one seed serves a libtorrent leecher over IPv4 and
  one over IPv6 (helpers/looprun.py keeps it on the loopback addresses).

Plus the one-line usage errors of malformed IPv6 ``--peer`` and ``--bind``
values.  Every payload is compared bit for bit; every wait is bounded.
"""

from __future__ import annotations

import errno
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import IN_CI, require_module
from helpers.clients import FasttorrentSeed, assert_same_payload
from helpers.ltpeer import LEECHER_RATE, PEX, LtPeer, peer_ports, pex_swarm
from helpers.payload import RunResult, ft_create, run_cli, write_tree
from trackers import HTTPTestTracker, UDPTestTracker

from torrent import metainfo
from torrent.magnet import magnet_uri
from torrent.ports import free_port

pytestmark = pytest.mark.timeout(240)

#: Runs the CLI with fasttorrent's PEX interval shortened (BEP 11's minute is too long).
PEXRUN = [sys.executable, str(Path(__file__).resolve().parent / "helpers" / "pexrun.py")]
#: fasttorrent's PEX interval in the PEX-out test (seconds).
TEST_PEX_INTERVAL = 1.0
#: Runs the CLI with the any-addresses replaced by 127.0.0.1 and ::1.
LOOPRUN = [sys.executable, str(Path(__file__).resolve().parent / "helpers" / "looprun.py")]
#: The payload: 129 pieces of 32 KiB, a short last one.
FILES = {"six.bin": (4 << 20) + 5_000}
PIECE = "32K"
#: Bound on one download of these 4 MiB on loopback (seconds; usually 1-3).
DOWNLOAD_TIMEOUT = 90.0
#: libtorrent checking its data, or reaching a state (seconds).
EVENT_TIMEOUT = 30.0
#: fasttorrent's wait for libtorrent's first PEX message and the download from
#: the peers it names (libtorrent sends the first PEX within seconds).
PEX_WAIT = 45.0


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError as e:
        if e.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
            return False
        raise
    return True


@pytest.fixture(scope="module", autouse=True)
def _ipv6_and_libtorrent() -> None:
    """Every test here needs ::1 and libtorrent (skipped without, failed without in CI)."""
    if not _has_ipv6_loopback():
        if IN_CI:
            pytest.fail("the CI machine must have ::1 (ip -6 addr)")
        pytest.skip("this machine has no ::1")
    require_module("libtorrent")


@dataclass
class Payload:
    torrent: Path
    src: Path
    meta: Any


def make_payload(root: Path, trackers: tuple[str, ...] = ()) -> Payload:
    src = root / "src"
    write_tree(src, FILES)
    torrent = ft_create(src / "six.bin", root / "t.torrent", piece_length=PIECE,
                        trackers=trackers)
    return Payload(torrent, src, metainfo.load(torrent))


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Payload:
    return make_payload(tmp_path_factory.mktemp("v6"))


def ft_download(source: str, out: Path, *args: str, timeout: float = DOWNLOAD_TIMEOUT,
                ) -> RunResult:
    """``fasttorrent download SOURCE`` bound to ``::1`` (one worker, --json), bounded."""
    res = run_cli(["download", source, "-o", str(out), "--workers", "1", "--json",
                   "--bind", "::1", "--port", str(free_port("::1")), *args], timeout=timeout)
    assert "Traceback" not in res.stderr, res.describe()
    return res


def assert_complete_from(res: RunResult, port: int) -> dict[str, Any]:
    """The download completed, and the peer ``[::1]:port`` it came from is in its table."""
    assert res.returncode == 0, res.describe()
    j: dict[str, Any] = res.json
    assert j["complete"] and j["hash_failures"] == 0, j
    peers = {(p["host"], p["port"]): p for p in j["peers"]}
    assert ("::1", port) in peers and peers[("::1", port)]["connected"], j["peers"]
    assert all(":" in host for host, _ in peers), j["peers"]  # IPv6 peers only
    return j


# ----------------------------------------------------------------------------- --peer
def test_fasttorrent_downloads_from_libtorrent_on_ipv6(payload: Payload, tmp_path: Path) -> None:
    with LtPeer("libtorrent seed on [::1]", host="::1") as seed:
        seed.seed(payload.torrent, payload.src)
        port = seed.port
        assert seed.addr == f"[::1]:{port}"
        res = ft_download(str(payload.torrent), tmp_path / "ft", "--no-trackers",
                          "--peer", seed.addr)
    assert_complete_from(res, port)
    assert_same_payload(payload.torrent, payload.src, tmp_path / "ft")


def test_libtorrent_downloads_from_fasttorrent_seed_bound_to_ipv6(
        payload: Payload, tmp_path: Path) -> None:
    with FasttorrentSeed(payload.torrent, payload.src, extra=("--bind", "::1")) as seed, \
            LtPeer("libtorrent leecher on [::1]", host="::1") as leech:
        h = leech.add_torrent(payload.torrent, tmp_path / "lt")
        h.connect_peer(("::1", seed.port))
        leech.wait_until(lambda: h.status().is_seeding, DOWNLOAD_TIMEOUT, "complete")
        # fasttorrent was its only peer, and it was reached over IPv6
        assert {(pi.ip[0], int(pi.ip[1])) for pi in h.get_peer_info()} <= {("::1", seed.port)}
        summary = seed.stop_summary()
    assert summary["bytes_uploaded"] >= payload.meta.total_size
    assert_same_payload(payload.torrent, payload.src, tmp_path / "lt")


def test_seed_bound_to_ipv6_refuses_ipv4(payload: Payload) -> None:
    """``--bind ::1`` listens on ::1 alone: 127.0.0.1 at its port is not it."""
    with FasttorrentSeed(payload.torrent, payload.src, extra=("--bind", "::1")) as seed:
        with socket.create_connection(("::1", seed.port), timeout=10):
            pass
        with pytest.raises(ConnectionRefusedError), \
                socket.create_connection(("127.0.0.1", seed.port), timeout=10):
            pass
        seed.stop_summary()


def test_default_bind_serves_both_families(payload: Payload, tmp_path: Path) -> None:
    """The default ``--bind`` listens on IPv4 and IPv6 at one port, in every worker
    (helpers/looprun.py puts 127.0.0.1 and ::1 in place of 0.0.0.0 and ::): a
    libtorrent leecher on 127.0.0.1 and one on ::1 both complete from one seed."""
    with FasttorrentSeed(payload.torrent, payload.src, workers=2, extra=("--bind", ""),
                         cli=LOOPRUN) as seed, \
            LtPeer("leecher on 127.0.0.1") as l4, LtPeer("leecher on [::1]", host="::1") as l6:
        handles = []
        for lt_, host in ((l4, "127.0.0.1"), (l6, "::1")):
            h = lt_.add_torrent(payload.torrent, tmp_path / host.replace(":", "_"), pex=False)
            h.connect_peer((host, seed.port))
            handles.append(h)
        for lt_, h in zip((l4, l6), handles, strict=True):
            lt_.wait_until(lambda h=h: h.status().is_seeding, DOWNLOAD_TIMEOUT, "complete")
        assert {(pi.ip[0], int(pi.ip[1])) for pi in handles[0].get_peer_info()} <= {
            ("127.0.0.1", seed.port)}
        assert {(pi.ip[0], int(pi.ip[1])) for pi in handles[1].get_peer_info()} <= {
            ("::1", seed.port)}
        summary = seed.stop_summary()
    assert summary["bytes_uploaded"] >= 2 * payload.meta.total_size
    for host in ("127.0.0.1", "::1"):
        assert_same_payload(payload.torrent, payload.src, tmp_path / host.replace(":", "_"))


# ----------------------------------------------------------------------------- x.pe
def test_magnet_with_an_ipv6_x_pe(payload: Payload, tmp_path: Path) -> None:
    """The magnet's only peer is ``x.pe=[::1]:P``: metadata and data both come over IPv6."""
    with LtPeer("libtorrent seed on [::1]", host="::1") as seed:
        seed.seed(payload.torrent, payload.src)
        port = seed.port
        uri = magnet_uri(payload.meta, trackers=[], peers=[("::1", port)])
        assert f"x.pe=[::1]:{port}" in uri
        res = ft_download(uri, tmp_path / "ft", "--no-trackers")
    assert_complete_from(res, port)
    assert_same_payload(payload.torrent, payload.src, tmp_path / "ft")


# ----------------------------------------------------------------------------- trackers
@pytest.mark.parametrize("kind", ["http-compact", "http-dict", "udp"])
def test_trackers_over_ipv6_list_libtorrent(kind: str, tmp_path: Path) -> None:
    """A tracker on ::1 lists the libtorrent seed (it announced there over IPv6) to
    fasttorrent, given no --peer: in ``peers6`` (compact, BEP 7), in the dictionary
    list, or as 18-byte peers of a UDP answer to an IPv6 announce (BEP 15)."""
    cls = UDPTestTracker if kind == "udp" else HTTPTestTracker
    extra = {"compact": False} if kind == "http-dict" else {}
    with cls(host="::1", **extra) as tracker:
        assert tracker.announce_url.startswith(f"{cls.scheme}://[::1]:")
        p = make_payload(tmp_path / "payload", trackers=(tracker.announce_url,))
        with LtPeer("libtorrent seed on [::1]", host="::1") as seed:
            seed.seed(p.torrent, p.src)
            port = seed.port
            tracker.wait_until(lambda: any(r.port == port for r in tracker.requests),
                               EVENT_TIMEOUT)
            res = ft_download(str(p.torrent), tmp_path / "ft")
        ours = [r for r in tracker.requests if r.port != port]
    j = assert_complete_from(res, port)
    assert {p["source"] for p in j["peers"]} == {"tracker"}, j["peers"]
    assert ours and all(r.client[0] == "::1" for r in ours)  # we announced over IPv6
    if kind == "http-compact":
        assert all(r.compact == 1 for r in ours)
    assert_same_payload(p.torrent, p.src, tmp_path / "ft")


# ----------------------------------------------------------------------------- PEX
def test_fasttorrent_learns_ipv6_peers_from_libtorrent_pex(
        payload: Payload, tmp_path: Path) -> None:
    """Given only A, a libtorrent leecher on ::1 connected to B and C, fasttorrent learns
    B and C from A's ut_pex ``added6`` and completes from them (each has half)."""
    with pex_swarm(payload.torrent, payload.src, payload.meta.num_pieces, tmp_path,
                   host="::1") as (a, b, c, ha):
        ports = b.port, c.port
        res = ft_download(str(payload.torrent), tmp_path / "ft", "--no-trackers",
                          "--peer", a.addr, timeout=PEX_WAIT + DOWNLOAD_TIMEOUT)
        assert ha.status().total_done < payload.meta.total_size // 4  # not from A
    j = assert_complete_from(res, ports[0])
    learned = {(p["host"], p["port"]) for p in j["peers"] if p["source"] == "pex"}
    assert learned == {("::1", ports[0]), ("::1", ports[1])}, j["peers"]
    assert_same_payload(payload.torrent, payload.src, tmp_path / "ft")


def test_libtorrent_learns_ipv6_peers_from_fasttorrent_pex(
        payload: Payload, tmp_path: Path) -> None:
    """``fasttorrent seed --bind ::1`` dials three libtorrent leechers on ::1, X, Y and L;
    L learns X and Y only from our ut_pex ``added6`` (X and Y send no PEX) and connects
    to them (fasttorrent's PEX interval shortened by helpers/pexrun.py)."""
    handles: dict[str, Any] = {}
    with LtPeer("X", host="::1") as x, LtPeer("Y", host="::1") as y, \
            LtPeer("L", host="::1") as lpeer:
        for name, peer, pex in (("X", x, False), ("Y", y, False), ("L", lpeer, True)):
            h = peer.add_torrent(payload.torrent, tmp_path / name, pex=pex)
            h.set_download_limit(LEECHER_RATE)
            handles[name] = h
        with FasttorrentSeed(payload.torrent, payload.src, [x.addr, y.addr, lpeer.addr],
                             extra=("--bind", "::1"),
                             cli=[*PEXRUN, str(TEST_PEX_INTERVAL)]) as seed:
            hl = handles["L"]
            lpeer.wait_until(lambda: peer_ports(hl, source=PEX) >= {x.port, y.port}, PEX_WAIT,
                             f"connected to X ({x.port}) and Y ({y.port}) through "
                             "fasttorrent's PEX")
            assert all(pi.ip[0] == "::1" for pi in hl.get_peer_info())
            summary = seed.stop_summary()
        assert sorted(p["port"] for p in summary["peers"] if p["connected"]) == \
            sorted((x.port, y.port, lpeer.port)), summary["peers"]


# ----------------------------------------------------------------------------- usage
@pytest.mark.parametrize(("args", "match"), [
    (["--peer", "::1:6881"], "--peer '::1:6881': an IPv6 address must be in brackets"),
    (["--peer", "[::1:6881"], "unclosed"),
    (["--peer", "[::1]"], r"expected \[IPV6\]:PORT"),
    (["--peer", "[::1]:0"], "port must be 1-65535"),
    (["--peer", "[fe80::zz]:1"], "not an IPv6 address"),
    (["--bind", "::1::2"], "bind must be an IPv4 or IPv6 address"),
])
def test_malformed_ipv6_arguments_are_one_line_usage_errors(
        payload: Payload, tmp_path: Path, args: list[str], match: str) -> None:
    res = run_cli(["download", str(payload.torrent), "-o", str(tmp_path / "o"), "--no-trackers",
                   *args], timeout=30)
    assert res.returncode == 2, res.describe()
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(match, lines[0]), res.stderr
    assert not (tmp_path / "o").exists()
