"""The Mainline DHT against libtorrent's, on a loopback DHT (BEP 5), both directions.

A libtorrent session with its DHT on is the bootstrap node (the "router")
every other node starts from; every node is on 127.0.0.1 (libtorrent's
one-node-per-IP rules off, LSD, UPnP and NAT-PMP off). Nothing names the
peers: the magnets carry no ``tr`` and no ``x.pe``, the runs pass no
``--peer`` and ``--no-trackers``, so the DHT is the only way the two sides
can find each other.

- fasttorrent downloads a bare magnet from libtorrent seeders it finds
  through the DHT (metadata, then the data), bit-exact; the libtorrent peers
  also learn our DHT node from our BEP 5 ``port`` message.
- libtorrent downloads a bare magnet from a ``fasttorrent seed`` that
  announced itself to the DHT, bit-exact, and its peer came from the DHT.

Every wait is bounded; the tests assert outcomes only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_module
from helpers.clients import ClientProcess, assert_same_payload
from helpers.ltpeer import LtPeer
from helpers.payload import assert_clean_after, ft_create, run_cli, write_tree

from torrent import metainfo
from torrent.dht.routing import load as load_state
from torrent.dht.service import STATE_FILE
from torrent.magnet import magnet_uri
from torrent.tools.seeders import SEEDING_LINE, ft_seed_command

pytestmark = pytest.mark.timeout(180)

#: How long a libtorrent node may take to join the loopback DHT, seed, or download.
LT_TIMEOUT = 60.0
#: How long fasttorrent's download may take (the metadata, then 2 MiB).
RUN_TIMEOUT = 90.0


@pytest.fixture(autouse=True)
def _libtorrent() -> None:
    require_module("libtorrent")


@pytest.fixture
def router() -> Iterator[LtPeer]:
    """A libtorrent DHT node with no bootstrap of its own: the one the others start from."""
    with LtPeer("router", dht="") as r:
        yield r


@pytest.fixture
def payload(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "src"
    write_tree(src, {"data.bin": 2 * 1024 * 1024 + 333}, seed=51)
    return ft_create(src / "data.bin", tmp_path / "t.torrent", "64K"), src


def bare_magnet(torrent: Path) -> str:
    """The magnet of ``torrent`` with no trackers and no peers: only the info-hash."""
    uri = magnet_uri(metainfo.load(torrent), trackers=[], peers=[])
    assert "tr=" not in uri and "x.pe=" not in uri, uri
    return uri


def announced(router: LtPeer, info_hash: str, port: int | None = None) -> bool:
    """Whether ``router`` stored an announce of ``info_hash`` (from ``port``, if given)."""
    return any(ih == info_hash and (port is None or p == port)
               for _, p, ih in router.dht_announces)


def test_fasttorrent_finds_libtorrent_seeders_through_the_dht(
        tmp_path: Path, router: LtPeer, payload: tuple[Path, Path]) -> None:
    torrent, src = payload
    ih = metainfo.load(torrent).info_hash_hex
    router_port = router.port
    boot = f"127.0.0.1:{router_port}"
    with LtPeer("seeder 1", dht=boot) as s1, LtPeer("seeder 2", dht=boot) as s2:
        for s in (s1, s2):
            h = s.seed(torrent, src, timeout=LT_TIMEOUT)
            h.force_dht_announce()
            router.wait_until(lambda s=s: announced(router, ih, s.port), LT_TIMEOUT,
                              f"told by {s.name} that it seeds")
        ports = {s1.port, s2.port}
        state = tmp_path / "state"
        out = tmp_path / "out"
        res = run_cli(["download", bare_magnet(torrent), "-o", str(out), "--workers", "1",
                       "--no-trackers", "--bind", "127.0.0.1", "--dht-bootstrap", boot,
                       "--state-dir", str(state), "--json"], timeout=RUN_TIMEOUT)
        assert res.returncode == 0, res.describe()
        assert "Traceback" not in res.stderr
        assert_clean_after(res)
    assert_same_payload(torrent, src, out)
    summary = res.json
    dht = summary["dht"]
    assert dht is not None and dht["peers_found"] >= 1, dht
    assert summary["metadata_seconds"] > 0
    sources = {p["source"] for p in summary["peers"] if p["port"] in ports}
    assert sources == {"dht"}, summary["peers"]
    # the seeders set the DHT bit, so they sent us their node's port (BEP 5) and we pinged it
    assert dht["port_nodes"] >= 1, (dht, summary["workers"], summary["peers"], res.stderr[-3000:])
    # the routing table was saved with our id, and names the nodes we met
    saved = load_state((state / STATE_FILE).read_bytes())
    assert saved.own_id is not None
    assert {n.port for n in saved.nodes} & (ports | {router_port})


def test_libtorrent_finds_a_fasttorrent_seed_through_the_dht(
        tmp_path: Path, router: LtPeer, payload: tuple[Path, Path]) -> None:
    torrent, src = payload
    ih = metainfo.load(torrent).info_hash_hex
    boot = f"127.0.0.1:{router.port}"
    argv = ft_seed_command(str(torrent), str(src), workers=1, skip_check=False, as_json=True,
                           extra=["--state-dir", str(tmp_path / "state")],
                           dht_bootstrap=[boot])
    with ClientProcess("fasttorrent seed", argv) as seed:
        port = int(seed.wait_for(SEEDING_LINE.pattern, LT_TIMEOUT).group(1))
        # our announce_peer reached the router (implied_port: our UDP port is our TCP port)
        router.wait_until(lambda: announced(router, ih, port), LT_TIMEOUT,
                          "told by fasttorrent that it seeds")
        out = tmp_path / "lt-out"
        with LtPeer("downloader", dht=boot) as d:
            h = d.add_magnet(bare_magnet(torrent), out)
            d.wait_until(lambda: h.status().is_seeding, LT_TIMEOUT, "complete")
        rc = seed.stop()
        assert rc == 7, seed.describe()
        assert "Traceback" not in seed.text("stderr")
        summary = json.loads(seed.lines("stdout")[-1])
    assert_same_payload(torrent, src, out)
    # the only seeder was ours, found through the DHT (no tracker, no x.pe, no LSD)
    assert summary["uploaded_bytes"] >= metainfo.load(torrent).total_size, summary
    assert summary["dht"]["announces_acked"] >= 1, summary["dht"]
