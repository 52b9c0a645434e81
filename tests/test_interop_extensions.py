"""The extension protocol against real clients and hostile peers, all on 127.0.0.1.

Real clients (libtorrent in this process, see helpers/ltpeer.py; aria2c and
fasttorrent as processes, see helpers/clients.py), every one bound to
127.0.0.1 with DHT, local peer discovery and UPnP / NAT-PMP off, and
trackerless torrents unless a test runs its own loopback tracker:

- metadata exchange (BEP 9): libtorrent downloads from ``fasttorrent seed``
  given only a magnet link, single- and multi-file (the single-file
  torrent's info dict spans two 16 KiB metadata pieces); aria2c fetches the
  metadata alone (``--bt-metadata-only``) through a loopback tracker (aria2c
  ignores ``x.pe``);
- PEX (BEP 11), both ways: fasttorrent, given one libtorrent peer, learns
  the others from its ut_pex and connects to them; a libtorrent peer learns
  fasttorrent's other peers from fasttorrent's PEX (its interval shortened
  by helpers/pexrun.py, as BEP 11's minute is too long for a test);
- the Fast extension (BEP 6) and BEP 10 with a libtorrent seed, read through
  the production receive path (``PeerProtocol``): both negotiated, have all
  instead of a bitfield, its extension handshake, its ut_metadata.  (Every
  download test of the suite, tests/test_download.py among them, runs with
  both offered: libtorrent seeders there send have all too.)

Then hostile peers (helpers/testpeer.py), each against ``fasttorrent
download`` with an honest libtorrent seeder behind a gated relay that opens
only once the hostile peer has done its damage (no timing): a PEX flood
naming our own address, our address as IPv4-mapped IPv6, an oversized
extension handshake, a ut_metadata request flood, allowed fast out of
range, have all followed by a bitfield.

Every wait is bounded, and says what it waited for when it runs out.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
import struct
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import require_binary, require_module
from helpers.clients import (
    FasttorrentSeed,
    aria2c_metadata,
    assert_same_payload,
    fasttorrent_seed,
)
from helpers.ltpeer import LEECHER_RATE, PEX, LtPeer, peer_ports, pex_swarm
from helpers.payload import Live, RunResult, ft_create, run_cli, write_tree
from helpers.testpeer import (
    METADATA_PIECE_OUT_OF_RANGE,
    GatedRelay,
    TestPeer,
)
from trackers import HTTPTestTracker

from torrent import metainfo
from torrent.magnet import magnet_uri
from torrent.ports import free_port
from torrent.wire.extension import (
    MAX_HANDSHAKE_LENGTH,
    MAX_PEX_ADDED,
    METADATA_PIECE,
    OUR_EXTENSION_IDS,
    UT_METADATA,
    UT_PEX,
    ExtensionHandshake,
    MetadataData,
    MetadataReject,
    MetadataRequest,
)
from torrent.wire.handshake import EXTENSION_BIT, FAST_BIT, make_peer_id
from torrent.wire.messages import BITFIELD, HAVE_ALL
from torrent.wire.peer import (
    BlockReceived,
    ExtensionHandshakeReceived,
    HandshakeReceived,
    MetadataReceived,
    PeerProtocol,
    Unchoked,
)
from torrent.worker import MAX_METADATA_ANSWERS

pytestmark = pytest.mark.timeout(240)

#: A single file whose info dict is over 16 KiB (two ut_metadata pieces):
#: 14 MiB in 16 KiB pieces is 897 piece hashes.
LARGE_INFO = {"one.bin": (14 << 20) + 12_345}
LARGE_INFO_PIECE = "16K"
#: A multi-file torrent whose pieces span files (its info dict: one metadata piece).
TREE = {
    "tree/a.bin": 3_000_001,
    "tree/sub/b.bin": 1 << 20,
    "tree/sub/c/d.bin": 65_537,
    "tree/e.txt": 10,
}
TREE_PIECE = "32K"
#: The payload of the PEX and hostile-peer tests: 129 pieces, a short last one.
SMALL = {"small.bin": (4 << 20) + 5_000}
SMALL_PIECE = "32K"

#: libtorrent has the metadata from fasttorrent within this (it takes ~1 s).
METADATA_TIMEOUT = 30.0
#: Bound on a whole download of these few MiB on loopback (seconds, usually 1-3).
DOWNLOAD_TIMEOUT = 90.0
#: aria2c fetching the metadata (it takes ~3 s: it announces, dials, asks).
ARIA2C_TIMEOUT = 60.0
#: How long fasttorrent may take to learn peers through PEX and finish with
#: them: libtorrent sends its first PEX message within seconds of the
#: extension handshake (then once a minute).
PEX_WAIT = 45.0
#: fasttorrent's PEX interval in the PEX-out test (BEP 11 says 60 s).
TEST_PEX_INTERVAL = 1.0
#: The PEX flood: messages, addresses per message (far past BEP 11's 50; 5000
#: compact addresses are 30 KB, inside the 64 KiB frame bound of extended
#: messages), and the pause between messages (50 a second).
FLOOD_MESSAGES = 20
FLOOD_ADDRESSES = 5000
FLOOD_INTERVAL = 0.02
#: The message naming our address as IPv4-mapped IPv6: few enough IPv4
#: addresses that the IPv6 part is read (50 per message in all).
MAPPED_FLOOD_ADDRESSES = 10
#: ut_metadata requests for piece 0 in one burst: far past the per-tick bound.
METADATA_FLOOD = 200
#: How long to wait for a test peer's records once the download ended.
EVENT_TIMEOUT = 10.0
#: Socket time-out of the wire-level test.
SOCKET_TIMEOUT = 10.0
#: Runs the CLI with PEX_INTERVAL shortened in the workers.
PEXRUN = [sys.executable, str(Path(__file__).resolve().parent / "helpers" / "pexrun.py")]


@pytest.fixture(scope="module", autouse=True)
def _libtorrent() -> None:
    """Every test here runs libtorrent (skipped without it, failed without it in CI)."""
    require_module("libtorrent")


@dataclass
class Payload:
    torrent: Path
    src: Path  # the directory the torrent's files are under
    meta: Any


def make_payload(root: Path, files: dict[str, int], piece: str) -> Payload:
    src = root / "src"
    write_tree(src, files)
    top = src / next(iter(files)).split("/")[0]
    torrent = ft_create(top, root / "t.torrent", piece_length=piece)
    return Payload(torrent, src, metainfo.load(torrent))


@pytest.fixture(scope="module")
def large_info(tmp_path_factory: pytest.TempPathFactory) -> Payload:
    p = make_payload(tmp_path_factory.mktemp("large-info"), LARGE_INFO, LARGE_INFO_PIECE)
    assert len(p.meta.info_bytes) > METADATA_PIECE  # two ut_metadata pieces
    return p


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Payload:
    p = make_payload(tmp_path_factory.mktemp("tree"), TREE, TREE_PIECE)
    assert len(p.meta.files) > 1
    return p


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Payload:
    return make_payload(tmp_path_factory.mktemp("small"), SMALL, SMALL_PIECE)


@pytest.fixture(scope="module")
def honest(small: Payload) -> Iterator[LtPeer]:
    """A libtorrent seeder of ``small`` that sends no PEX (it must add no address of its own)."""
    with LtPeer("honest libtorrent seed") as lt_:
        lt_.seed(small.torrent, small.src, pex=False)
        yield lt_


def ft_download(torrent: Path, out: Path, peers: list[str], *, port: int,
                extra: tuple[str, ...] = (), interrupt_after: float | None = None,
                ) -> RunResult:
    """``fasttorrent download`` on 127.0.0.1:``port`` (one worker, --json), bounded.

    With ``interrupt_after``, a run still going after that many seconds gets a
    SIGINT: it then stops and prints its partial ``--json`` result (exit 7),
    so a test can say what was missing instead of just timing out.
    """
    args = ["download", str(torrent), "-o", str(out), "--workers", "1", "--no-trackers",
            "--json", "--bind", "127.0.0.1", "--port", str(port), *extra]
    for p in peers:
        args += ["--peer", p]

    def during(live: Live) -> None:
        if interrupt_after is not None and live.elapsed > interrupt_after \
                and not live.state.get("interrupted"):
            live.state["interrupted"] = True
            live.popen.send_signal(signal.SIGINT)  # the coordinator; workers ignore it

    bound = DOWNLOAD_TIMEOUT if interrupt_after is None else interrupt_after + DOWNLOAD_TIMEOUT
    res = run_cli(args, timeout=bound, during=during)
    assert "Traceback" not in res.stderr, res.describe()
    return res


def pex_peers(result: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """The peer table entries fasttorrent learned through PEX."""
    return {(p["host"], p["port"]): p for p in result["peers"] if p["source"] == "pex"}


# ----------------------------------------------------------------------------- BEP 9
@pytest.mark.parametrize("which", ["large_info", "tree"])
def test_libtorrent_downloads_from_fasttorrent_seed_given_only_a_magnet(
        which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """No .torrent, no tracker, no x.pe: libtorrent dials the seed and must fetch the
    info dict from it (ut_metadata), then the data."""
    p: Payload = request.getfixturevalue(which)
    uri = magnet_uri(p.meta)
    assert "&tr=" not in uri and "x.pe" not in uri  # the hash and the name only
    out = tmp_path / "lt"
    with fasttorrent_seed(p.torrent, p.src) as seed, LtPeer("libtorrent (magnet)") as lt_:
        h = lt_.add_magnet(uri, out)
        assert not h.status().has_metadata
        h.connect_peer(("127.0.0.1", seed.port))
        lt_.wait_until(lambda: h.status().has_metadata, METADATA_TIMEOUT,
                       "given the metadata by fasttorrent seed")
        ti = h.torrent_file()
        assert ti.info_hashes().v1.to_bytes() == p.meta.info_hash
        assert bytes(ti.info_section()) == p.meta.info_bytes
        lt_.wait_until(lambda: h.status().is_seeding, DOWNLOAD_TIMEOUT, "complete")
        # fasttorrent was its only peer, so the metadata and the data came from us
        assert {int(pi.ip[1]) for pi in h.get_peer_info()} <= {seed.port}
        assert any("metadata_received_alert" in a for a in lt_.alerts), lt_.describe()
        summary = seed.stop_summary()
    assert_same_payload(p.torrent, p.src, out)
    assert summary["bytes_uploaded"] >= p.meta.total_size


def test_aria2c_fetches_the_metadata_from_fasttorrent_seed(
        large_info: Payload, tmp_path: Path) -> None:
    """aria2c reads no x.pe: it reaches the seed through a loopback tracker listing it."""
    require_binary("aria2c")
    p = large_info
    out = tmp_path / "aria2c"
    with fasttorrent_seed(p.torrent, p.src) as seed, \
            HTTPTestTracker(peers=[("127.0.0.1", seed.port)]) as tracker:
        uri = magnet_uri(p.meta, trackers=[tracker.announce_url])
        with aria2c_metadata(uri, out, free_port()) as aria:
            rc = aria.wait(ARIA2C_TIMEOUT)
            assert rc == 0, aria.describe()
            assert "Saved metadata" in aria.text(), aria.describe()
        assert any(r.info_hash == p.meta.info_hash for r in tracker.requests)
        seed.stop_summary()
    saved = out / f"{p.meta.info_hash_hex}.torrent"
    assert saved.exists(), sorted(x.name for x in out.iterdir())
    got = metainfo.load(saved)
    assert got.info_hash == p.meta.info_hash
    assert got.info_bytes == p.meta.info_bytes  # both metadata pieces, in order
    assert not any(out.glob("*.bin"))  # the metadata only


# ----------------------------------------------------------------------------- BEP 11
def test_fasttorrent_learns_peers_from_libtorrent_pex(small: Payload, tmp_path: Path) -> None:
    """Given only A, a libtorrent leecher connected to B and C, fasttorrent learns B and C
    from A's ut_pex, connects to them and completes from them.

    libtorrent lists in its PEX the peers it dialled and those that told it
    their listening port; it sends the first message within seconds of the
    extension handshake, to a peer once it has two or more (ut_pex.cpp).
    The swarm is :func:`helpers.ltpeer.pex_swarm`: B and C each hold half of
    the pieces, so completing needs both. They send no PEX: libtorrent paces
    PEX messages with one clock for its whole process (one every 3 s across
    all its sessions, here all in this process), and theirs would only delay A's.
    """
    ft_port = free_port()
    with pex_swarm(small.torrent, small.src, small.meta.num_pieces, tmp_path) as (a, b, c, ha):
        res = ft_download(small.torrent, tmp_path / "ft", [a.addr], port=ft_port,
                          interrupt_after=PEX_WAIT)
        assert res.returncode in (0, 7), res.describe()
        j = res.json
        learned = pex_peers(j)
        assert res.returncode == 0, (
            f"fasttorrent did not complete within {PEX_WAIT:.0f} s: it learned "
            f"{sorted(learned)} through PEX (expected B {b.port} and C {c.port}); "
            f"its peers: {j['peers']}\n" + a.describe())
        assert set(learned) == {("127.0.0.1", b.port), ("127.0.0.1", c.port)}, j["peers"]
        assert all(e["connected"] for e in learned.values()), j["peers"]
        assert not any(e["port"] == ft_port for e in j["peers"]), j["peers"]  # never us
        # A, at its rate, had far too little to be where the data came from
        assert ha.status().total_done < small.meta.total_size // 4
    assert j["complete"] and j["hash_failures"] == 0, j
    assert_same_payload(small.torrent, small.src, tmp_path / "ft")


@pytest.mark.parametrize("workers", [1, 2])
def test_libtorrent_learns_peers_from_fasttorrent_pex(small: Payload, tmp_path: Path,
                                                      workers: int) -> None:
    """``fasttorrent seed`` dials three libtorrent leechers X, Y and L; L learns X and Y
    only from our ut_pex (X and Y send no PEX of their own) and connects to them.
    With two workers the three are split between them (the least loaded worker takes
    the next peer), so L's worker tells it of a peer of the other worker's."""
    leechers: dict[str, Any] = {}
    with LtPeer("X") as x, LtPeer("Y") as y, LtPeer("L") as lpeer:
        for name, peer, pex in (("X", x, False), ("Y", y, False), ("L", lpeer, True)):
            h = peer.add_torrent(small.torrent, tmp_path / name, pex=pex)
            h.set_download_limit(LEECHER_RATE)
            leechers[name] = h
        with FasttorrentSeed(small.torrent, small.src, [x.addr, y.addr, lpeer.addr],
                             workers=workers,
                             cli=[*PEXRUN, str(TEST_PEX_INTERVAL)]) as seed:
            hl = leechers["L"]
            lpeer.wait_until(lambda: peer_ports(hl, source=PEX) >= {x.port, y.port},
                             PEX_WAIT, f"connected to X ({x.port}) and Y ({y.port}) through "
                                       "fasttorrent's PEX")
            summary = seed.stop_summary()
        connected = {p["port"]: p["worker"] for p in summary["peers"] if p["connected"]}
        assert sorted(connected) == sorted((x.port, y.port, lpeer.port)), summary["peers"]
        assert len(set(connected.values())) == workers, summary["peers"]


# ----------------------------------------------------------------------------- BEP 6
def _frame_ids(stream: bytes) -> list[int]:
    """Message ids of the complete frames in ``stream`` (after the 68-byte handshake)."""
    ids, pos = [], 68
    while pos + 4 <= len(stream):
        (n,) = struct.unpack_from(">I", stream, pos)
        if pos + 4 + n > len(stream):
            break
        if n:
            ids.append(stream[pos + 4])
        pos += 4 + n
    return ids


#: A torrent with fewer pieces than libtorrent may grant (allowed_fast_set_size),
#: and than we keep (MAX_ALLOWED_FAST): every piece can be fetched while choked.
FEW_PIECES = {"few.bin": 7 * 32 * 1024 + 1_000}


def test_fasttorrent_downloads_allowed_fast_pieces_from_a_seed_that_chokes_it(
        tmp_path: Path) -> None:
    """BEP 6 to us: a libtorrent seed that unchokes nobody (unchoke_slots_limit 0) but
    grants every piece as allowed fast; fasttorrent fetches them all while choked."""

    def lt_module() -> Any:
        return require_module("libtorrent")

    p = make_payload(tmp_path / "few", FEW_PIECES, "32K")
    assert p.meta.num_pieces == 8
    with LtPeer("choking libtorrent seed", settings={
            "unchoke_slots_limit": 0, "allowed_fast_set_size": 8}) as lt_:
        # loopback peers are in libtorrent's local class, which ignores the unchoke
        # limit: without the class filter it would unchoke us anyway
        lt_.ses.set_peer_class_filter(lt_module().ip_filter())
        lt_.seed(p.torrent, p.src)
        out = tmp_path / "out"
        res = ft_download(p.torrent, out, [lt_.addr], port=free_port("127.0.0.1"),
                          interrupt_after=DOWNLOAD_TIMEOUT / 2)
    j = res.json
    assert j["complete"] is True and j["hash_failures"] == 0, res.describe()
    assert (out / "few.bin").read_bytes() == (p.src / "few.bin").read_bytes()


def test_fasttorrent_seed_grants_allowed_fast_pieces_and_serves_them_while_choking(
        small: Payload) -> None:
    """BEP 6 from us: a peer that never says it is interested stays choked, is granted
    the canonical allowed-fast set for its address, and is served those pieces (that
    other requests are rejected while it is choked: tests/test_wire_extensions_peer.py)."""
    from torrent.wire.fastext import ALLOWED_FAST_COUNT, allowed_fast_set
    meta = small.meta
    granted = allowed_fast_set("127.0.0.1", meta.info_hash, meta.num_pieces)
    assert len(granted) == ALLOWED_FAST_COUNT
    p = PeerProtocol(meta.info_hash, make_peer_id(), meta.num_pieces, meta.piece_length,
                     meta.total_size, we_initiated=True, now=0.0)
    data = (small.src / "small.bin").read_bytes()
    with fasttorrent_seed(small.torrent, small.src) as seed, \
            socket.create_connection(("127.0.0.1", seed.port), timeout=SOCKET_TIMEOUT) as sock:
        events: list[object] = []

        def pump_until(done: Any) -> None:
            while not done():
                chunk = sock.recv(65536)
                assert chunk, f"the seed closed the connection; events: {events}"
                for e in p.receive_data(chunk):
                    if isinstance(e, BlockReceived):  # the view dies on the next call
                        e = BlockReceived(e.index, e.begin, bytes(e.data))
                    events.append(e)

        sock.sendall(p.handshake())
        pump_until(lambda: p.fast and len(p.allowed_fast) == len(granted))
        assert p.allowed_fast == set(granted)
        assert p.peer_choking  # never interested: never unchoked
        want = [(i, 0, 16384) for i in granted]
        sock.sendall(p.send_requests(want, 0.0))
        pump_until(lambda: sum(isinstance(e, BlockReceived) for e in events) == len(want))
        assert p.peer_choking  # served while choked, and still choked
    got = {(e.index, e.begin): e.data for e in events if isinstance(e, BlockReceived)}
    for i in granted:
        start = i * meta.piece_length
        assert got[(i, 0)] == data[start : start + 16384]


def test_libtorrent_seed_negotiates_fast_and_extensions(small: Payload) -> None:
    """Through the production receive path: libtorrent offers Fast and BEP 10, sends have
    all instead of a bitfield, an extension handshake with ut_metadata, ut_pex,
    metadata_size and reqq, and serves the info dict and blocks over it."""
    meta = small.meta
    with LtPeer("libtorrent seed") as lt_:
        lt_.seed(small.torrent, small.src)
        p = PeerProtocol(meta.info_hash, make_peer_id(), meta.num_pieces, meta.piece_length,
                         meta.total_size, we_initiated=True, now=0.0)
        raw = bytearray()
        events: list[object] = []
        with socket.create_connection(("127.0.0.1", lt_.port), timeout=SOCKET_TIMEOUT) as sock:

            def pump_until(kind: type) -> Any:
                while True:
                    for e in events:
                        if isinstance(e, kind):
                            events.remove(e)
                            return e
                    data = sock.recv(65536)
                    assert data, f"libtorrent closed the connection; events: {events}"
                    raw.extend(data)
                    for e in p.receive_data(data):
                        if isinstance(e, BlockReceived):  # the view dies on the next call
                            e = BlockReceived(e.index, e.begin, bytes(e.data))
                        events.append(e)

            sock.sendall(p.handshake())
            hs = pump_until(HandshakeReceived)
            assert hs.peer_id.startswith(b"-LT")
            assert hs.reserved[FAST_BIT[0]] & FAST_BIT[1]
            assert hs.reserved[EXTENSION_BIT[0]] & EXTENSION_BIT[1]
            assert p.fast and p.extensions
            sock.sendall(p.send_extension_handshake(ExtensionHandshake(
                m=dict(OUR_EXTENSION_IDS), v="fasttorrent test", reqq=250)))
            ext = pump_until(ExtensionHandshakeReceived).handshake
            assert {UT_METADATA, UT_PEX} <= set(ext.m)
            assert ext.metadata_size == len(meta.info_bytes)
            assert ext.reqq and ext.reqq >= 1
            assert p.peer_is_seed  # from its have all
            ids = _frame_ids(bytes(raw))
            assert HAVE_ALL in ids and BITFIELD not in ids, ids

            # ut_metadata served by libtorrent, read by our codec
            sock.sendall(p.send_extended(UT_METADATA, MetadataRequest(0).encode()))
            got = pump_until(MetadataReceived).message
            assert isinstance(got, MetadataData)
            assert got.total_size == len(meta.info_bytes)
            assert got.data == meta.info_bytes[:METADATA_PIECE]

            # and a block of the short last piece, once unchoked
            sock.sendall(p.send_interested())
            pump_until(Unchoked)
            last = meta.num_pieces - 1
            size = p.piece_size(last)
            sock.sendall(p.send_request(last, 0, min(size, 16384), now=1.0))
            blk = pump_until(BlockReceived)
            start = last * meta.piece_length
            assert blk.data == (small.src / "small.bin").read_bytes()[start : start
                                                                     + min(size, 16384)]


# ----------------------------------------------------------------------------- hostile peers
def download_with_hostile(small: Payload, honest: LtPeer, tmp_path: Path, hostile: TestPeer,
                          gate: threading.Event, ft_port: int) -> dict[str, Any]:
    """Download ``small`` from ``hostile`` and from the honest seeder behind a relay that
    opens once ``gate`` is set; the download must complete, bit-exact."""
    out = tmp_path / "out"
    with hostile, GatedRelay(("127.0.0.1", honest.port), gate) as relay:
        res = ft_download(small.torrent, out, [hostile.addr, relay.addr], port=ft_port,
                          extra=("--stall-timeout", "30"))
        assert res.returncode == 0, res.describe()
        assert gate.is_set()
    j = res.json
    assert j["complete"] is True and j["hash_failures"] == 0, j
    assert_same_payload(small.torrent, small.src, out)
    return j


def is_loopback(host: str) -> bool:
    """``host`` names this machine's loopback, IPv4-mapped IPv6 forms included."""
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def peer_entry(result: dict[str, Any], port: int) -> dict[str, Any]:
    (entry,) = [p for p in result["peers"] if p["port"] == port]
    return entry


def test_pex_flood_adds_at_most_one_message_of_fifty_and_never_our_address(
        small: Payload, honest: LtPeer, tmp_path: Path) -> None:
    ft_port = free_port()
    hostile = TestPeer(small.torrent, small.src, has=(), pex_flood=(FLOOD_MESSAGES,
                       FLOOD_ADDRESSES), pex_interval=FLOOD_INTERVAL, pex_port=free_port())
    j = download_with_hostile(small, honest, tmp_path, hostile, hostile.pex_flood_sent,
                              ft_port)
    sent = hostile.pex_addresses
    assert len(sent) >= FLOOD_MESSAGES and all(len(m) == FLOOD_ADDRESSES for m in sent)
    ours = ("127.0.0.1", ft_port)
    assert sent[0][0] == ours  # it told us our own address, first
    learned = pex_peers(j)
    assert len(learned) <= MAX_PEX_ADDED
    # exactly the first message's first 50, less our own address: one message a
    # minute is taken, and only BEP 11's 50 of it
    assert set(learned) == set(sent[0][1:MAX_PEX_ADDED]), sorted(learned)[:5]
    assert not any(p["port"] == ft_port for p in j["peers"]), "our own address in the table"


def test_pex_naming_our_address_as_ipv4_mapped_ipv6_is_not_taken(
        small: Payload, honest: LtPeer, tmp_path: Path) -> None:
    """``::ffff:127.0.0.1`` in ``added6`` is our own listening socket too (a dial to it
    reaches our IPv4 listener): it must not enter the table, nor be dialled."""
    ft_port = free_port()
    hostile = TestPeer(small.torrent, small.src, has=(), pex_flood=(1, MAPPED_FLOOD_ADDRESSES),
                       pex_own_mapped=True, pex_port=free_port())
    j = download_with_hostile(small, honest, tmp_path, hostile, hostile.pex_flood_sent,
                              ft_port)
    (listed,) = hostile.pex_addresses
    mapped = ipaddress.IPv6Address(listed[-1][0])
    assert mapped.ipv4_mapped == ipaddress.IPv4Address("127.0.0.1") and listed[-1][1] == ft_port
    learned = pex_peers(j)
    assert set(learned) == set(listed[:-1]), sorted(learned)  # the message was taken
    ours = [p for p in j["peers"] if p["port"] == ft_port and is_loopback(p["host"])]
    assert not ours, f"our own address in the table: {ours}"


def test_oversized_extension_handshake_drops_the_peer(
        small: Payload, honest: LtPeer, tmp_path: Path) -> None:
    hostile = TestPeer(small.torrent, small.src, has=(), oversized_extension_handshake=True)
    j = download_with_hostile(small, honest, tmp_path, hostile, hostile.remote_closed,
                              free_port())
    reason = peer_entry(j, hostile.port)["last_reason"]
    assert "extension handshake" in reason and str(MAX_HANDSHAKE_LENGTH) in reason, reason


def test_metadata_request_flood_is_rejected_beyond_the_tick_bound(
        small: Payload, honest: LtPeer, tmp_path: Path) -> None:
    hostile = TestPeer(small.torrent, small.src, has=(), metadata_requests=METADATA_FLOOD)
    download_with_hostile(small, honest, tmp_path, hostile, hostile.metadata_answered,
                          free_port())
    answers = hostile.metadata_answers
    assert len(answers) == METADATA_FLOOD + 1  # one answer per request, no more
    data = [a for a in answers if isinstance(a, MetadataData)]
    rejects = [a for a in answers if isinstance(a, MetadataReject)]
    assert len(data) + len(rejects) == len(answers)
    # One burst arrives within one tick, or across one tick boundary at the most
    # (its reads are microseconds apart, the ticks 250 ms): 16 answers per tick.
    assert 1 <= len(data) <= 2 * MAX_METADATA_ANSWERS, len(data)
    info = small.meta.info_bytes
    assert all(d.piece == 0 and d.total_size == len(info) and d.data == info for d in data)
    # a piece the metadata does not have is rejected, whatever the budget
    assert MetadataReject(METADATA_PIECE_OUT_OF_RANGE) in rejects


def test_allowed_fast_out_of_range_drops_the_peer(
        small: Payload, honest: LtPeer, tmp_path: Path) -> None:
    n = small.meta.num_pieces
    hostile = TestPeer(small.torrent, small.src, has=(), allowed_fast=[0, n + 3])
    j = download_with_hostile(small, honest, tmp_path, hostile, hostile.remote_closed,
                              free_port())
    reason = peer_entry(j, hostile.port)["last_reason"]
    assert f"allowed fast for piece {n + 3}" in reason, reason


def test_have_all_then_a_bitfield_drops_the_peer(
        small: Payload, honest: LtPeer, tmp_path: Path) -> None:
    hostile = TestPeer(small.torrent, small.src, have_all_then_bitfield=True)
    j = download_with_hostile(small, honest, tmp_path, hostile, hostile.remote_closed,
                              free_port())
    reason = peer_entry(j, hostile.port)["last_reason"]
    assert "bitfield after have all" in reason, reason


# -- MSE/PE: the libtorrent family dials us encrypted first ------------------------------------


@pytest.mark.parametrize("encryption", ["default", "forced", "rc4"])
def test_libtorrent_dialling_with_mse_downloads_from_fasttorrent_seed(
        small: Payload, encryption: str, tmp_path: Path) -> None:
    """libtorrent's default opens with MSE/PE; "forced" refuses plaintext; "rc4" refuses
    plaintext after the handshake too. Each downloads bit-exact from ``fasttorrent seed``
    over the one connection it opened (no failed attempt, no reconnect)."""
    out = tmp_path / "lt"
    with fasttorrent_seed(small.torrent, small.src) as seed, \
            LtPeer(f"libtorrent ({encryption})", encryption=encryption) as lt_:
        h = lt_.add_torrent(small.torrent, out)
        h.connect_peer(("127.0.0.1", seed.port))
        lt_.wait_until(lambda: bool(h.status().is_seeding), DOWNLOAD_TIMEOUT,
                       f"complete from fasttorrent seed ({encryption})")
        # one connection: nothing dropped before completion (a failed MSE attempt would be)
        early = [a for a in lt_.alerts if "peer_disconnected_alert" in a
                 and "torrent finished" not in a]
        assert not early, lt_.describe()
        summary = seed.stop_summary()
    assert_same_payload(small.torrent, small.src, out)
    assert summary["bytes_uploaded"] >= small.meta.total_size
    mse = sum(w["mse"] for w in summary["workers"])
    rc4 = sum(w["mse_rc4"] for w in summary["workers"])
    assert mse >= 1, summary["workers"]  # it came in through MSE, every time
    assert (rc4 >= 1) == (encryption == "rc4")  # plaintext selected unless RC4 was forced
