"""MSE/PE on the connections fasttorrent dials, and ``--encryption``, against real clients.

- libtorrent forced to encrypt with RC4 only (``pe_forced`` both ways,
  ``allowed_enc_level`` ``pe_rc4``) seeds: ``fasttorrent download`` gets the
  payload bit-exact with ``--encryption required`` and with the default
  ``enabled`` (MSE first). From a plaintext-only libtorrent, ``enabled``
  falls back to plaintext once, on a new connection. The other direction (libtorrent forced
  downloading from ``fasttorrent seed``) is in tests/test_interop_extensions.py;
  here ``fasttorrent seed --encryption required`` serves a forced libtorrent
  and refuses a plaintext-only one.
- A magnet's metadata comes over MSE from the forced libtorrent.
- transmission-cli at its default encryption (``preferred``) seeds to
  ``fasttorrent download --encryption required``.
- ``--encryption required`` against a plaintext-only peer ends cleanly: exit
  6 (no progress within the stall time-out), one line naming the MSE handshake.
- Hostile MSE peers (tests/helpers/msepeer.py), each next to an honest seeder
  the download only reaches once the hostile one was dropped: one that never
  finishes its handshake, one whose PadB runs past the bound, one with a bad
  verification constant, one that sends garbage for its DH key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import require_binary, require_module
from helpers.clients import (
    TRANSMISSION_SEEDING,
    FasttorrentSeed,
    assert_same_payload,
    transmission,
)
from helpers.ltpeer import LtPeer
from helpers.msepeer import MODES, HostileMSEPeer
from helpers.payload import RunResult, ft_create, run_cli, write_tree
from helpers.testpeer import GatedRelay

from torrent import metainfo
from torrent.magnet import magnet_uri
from torrent.ports import free_port

SMALL = {"small.bin": (2 << 20) + 3_000}
SMALL_PIECE = "32K"
#: Bound on one whole download or metadata fetch on 127.0.0.1 (seconds).
DOWNLOAD_TIMEOUT = 90.0
#: The stall time-out given to runs that must give up (seconds).
SHORT_STALL = "6"
#: The handshake time-out given to the hostile runs (seconds): the stalling peer
#: is dropped by it.
SHORT_HANDSHAKE = "2"


@dataclass
class Payload:
    torrent: Path
    src: Path
    meta: Any


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Payload:
    require_module("libtorrent")
    root = tmp_path_factory.mktemp("mse")
    src = root / "src"
    write_tree(src, SMALL)
    torrent = ft_create(src / "small.bin", root / "t.torrent", piece_length=SMALL_PIECE)
    return Payload(torrent, src, metainfo.load(torrent))


@pytest.fixture(scope="module")
def rc4_seed(small: Payload) -> Any:
    """libtorrent seeding ``small``, MSE forced both ways with RC4 only."""
    with LtPeer("libtorrent (forced RC4)", encryption="rc4") as lt_:
        lt_.seed(small.torrent, small.src, pex=False)
        yield lt_


def ft_download(torrent: Path | str, out: Path, peers: list[str], *extra: str) -> RunResult:
    args = ["download", str(torrent), "-o", str(out), "--workers", "1", "--no-trackers",
            "--json", "--bind", "127.0.0.1", "--port", str(free_port()), *extra]
    for p in peers:
        args += ["--peer", p]
    res = run_cli(args, timeout=DOWNLOAD_TIMEOUT)
    assert "Traceback" not in res.stderr, res.describe()
    return res


def worker_sum(j: dict[str, Any], key: str) -> int:
    return sum(int(w[key]) for w in j["workers"])


# ----------------------------------------------------------------------------- libtorrent

@pytest.mark.parametrize("mode", ["required", "enabled"])
def test_fasttorrent_downloads_from_rc4_forced_libtorrent(
        small: Payload, rc4_seed: LtPeer, tmp_path: Path, mode: str) -> None:
    out = tmp_path / "out"
    res = ft_download(small.torrent, out, [rc4_seed.addr], "--encryption", mode)
    assert res.returncode == 0, res.describe() + rc4_seed.describe()
    j = res.json
    assert j["complete"] is True and j["hash_failures"] == 0, j
    assert_same_payload(small.torrent, small.src, out)
    assert worker_sum(j, "mse_rc4") >= 1, j["workers"]  # it insists on RC4: RC4 it got
    assert worker_sum(j, "dial_fallbacks") == 0, j["workers"]  # both dial MSE first


@pytest.fixture(scope="module")
def plain_seed(small: Payload) -> Any:
    """libtorrent seeding ``small`` with encryption disabled (plaintext only)."""
    with LtPeer("libtorrent (plaintext only)") as lt_:
        lt_.seed(small.torrent, small.src, pex=False)
        yield lt_


def test_enabled_falls_back_to_plaintext_for_a_plaintext_only_peer(
        small: Payload, plain_seed: LtPeer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = ft_download(small.torrent, out, [plain_seed.addr])
    assert res.returncode == 0, res.describe() + plain_seed.describe()
    j = res.json
    assert j["complete"] is True
    assert_same_payload(small.torrent, small.src, out)
    assert worker_sum(j, "dial_fallbacks") >= 1 and worker_sum(j, "mse") == 0, j["workers"]


@pytest.mark.parametrize(("mode", "seeder"), [("required", "rc4_seed"), ("enabled", "rc4_seed"),
                                              ("enabled", "plain_seed")])
def test_a_magnets_metadata_over_mse_and_the_fallback(
        small: Payload, request: pytest.FixtureRequest, tmp_path: Path, mode: str,
        seeder: str) -> None:
    """The metadata connections dial MSE too; to a plaintext-only peer, plaintext after."""
    lt_: LtPeer = request.getfixturevalue(seeder)
    out = tmp_path / "out"
    uri = magnet_uri(small.meta.info_hash, name=small.meta.name)
    res = ft_download(uri, out, [lt_.addr], "--encryption", mode)
    assert res.returncode == 0, res.describe() + lt_.describe()
    assert res.json["complete"] is True
    assert_same_payload(small.torrent, small.src, out)


def test_seed_with_encryption_required_serves_forced_and_refuses_plaintext(
        small: Payload, tmp_path: Path) -> None:
    with FasttorrentSeed(small.torrent, small.src, extra=("--encryption", "required")) as seed, \
            LtPeer("libtorrent (forced RC4)", encryption="rc4") as forced, \
            LtPeer("libtorrent (plaintext only)") as plain:
        hf = forced.add_torrent(small.torrent, tmp_path / "forced")
        hp = plain.add_torrent(small.torrent, tmp_path / "plain")
        hp.connect_peer(("127.0.0.1", seed.port))
        plain.wait_until(lambda: any("peer_disconnected_alert" in a for a in plain.alerts),
                         DOWNLOAD_TIMEOUT, "dropped by the seed")
        hf.connect_peer(("127.0.0.1", seed.port))
        forced.wait_until(lambda: bool(hf.status().is_seeding), DOWNLOAD_TIMEOUT,
                          "complete from fasttorrent seed --encryption required")
        assert hp.status().num_pieces == 0, plain.describe()
        summary = seed.stop_summary()
    assert_same_payload(small.torrent, small.src, tmp_path / "forced")
    assert worker_sum(summary, "mse_rc4") >= 1, summary["workers"]


def test_required_against_a_plaintext_only_peer_fails_cleanly(
        small: Payload, plain_seed: LtPeer, tmp_path: Path) -> None:
    res = ft_download(small.torrent, tmp_path / "out", [plain_seed.addr], "--encryption",
                      "required", "--stall-timeout", SHORT_STALL)
    assert res.returncode == 6, res.describe()
    err = res.stderr.strip().splitlines()
    assert len(err) == 1, res.describe()
    assert "incomplete: 0/" in err[0] and "during the MSE/PE handshake" in err[0], err[0]


# ----------------------------------------------------------------------------- transmission

def test_transmission_default_encryption_seeds_to_mse(small: Payload, tmp_path: Path) -> None:
    require_binary("transmission-cli")
    port = free_port()
    proc = transmission(small.torrent, small.src, port, tmp_path / "tr-config",
                        encryption="preferred")
    with proc:
        proc.wait_for(TRANSMISSION_SEEDING, DOWNLOAD_TIMEOUT)
        res = ft_download(small.torrent, tmp_path / "out", [f"127.0.0.1:{port}"],
                          "--encryption", "required")
    assert res.returncode == 0, res.describe() + proc.describe()
    j = res.json
    assert j["complete"] is True
    assert worker_sum(j, "mse") >= 1, j["workers"]
    assert_same_payload(small.torrent, small.src, tmp_path / "out")


# ----------------------------------------------------------------------------- hostile peers

@pytest.fixture(scope="module")
def honest(small: Payload) -> Any:
    """libtorrent seeding ``small`` with its own encryption policy (MSE accepted)."""
    with LtPeer("honest libtorrent", encryption="default") as lt_:
        lt_.seed(small.torrent, small.src, pex=False)
        yield lt_


@pytest.mark.parametrize("mode", MODES)
def test_hostile_mse_peer_is_dropped_and_the_download_goes_on(
        small: Payload, honest: LtPeer, tmp_path: Path, mode: str) -> None:
    """The honest seeder is reachable only once the hostile peer was dropped."""
    hostile = HostileMSEPeer(small.meta.info_hash, mode)
    gate = hostile.remote_closed
    out = tmp_path / "out"
    with hostile, GatedRelay(("127.0.0.1", honest.port), gate) as relay:
        res = ft_download(small.torrent, out, [hostile.addr, relay.addr], "--encryption",
                          "required", "--handshake-timeout", SHORT_HANDSHAKE,
                          "--stall-timeout", "30")
        assert res.returncode == 0, res.describe()
        assert gate.is_set()
    j = res.json
    assert j["complete"] is True and j["hash_failures"] == 0, j
    assert_same_payload(small.torrent, small.src, out)
    if mode == "stall":  # dropped by the handshake time-out (and dialled again meanwhile)
        assert worker_sum(j, "handshake_timeouts") >= 1, j["workers"]
    else:
        (entry,) = [p for p in j["peers"] if p["port"] == hostile.port]
        expected = {"long_pad": "verification constant not found",
                    "bad_vc": "verification constant not found",
                    "garbage_key": "unusable MSE public key"}[mode]
        assert expected in entry["last_reason"], entry


def test_enabled_falls_back_once_per_dial(small: Payload, tmp_path: Path) -> None:
    """A peer that fails both kinds costs at most two connections per dial: MSE (garbage
    for a key), then plaintext once (it never answers: the handshake time-out ends it)."""
    hostile = HostileMSEPeer(small.meta.info_hash, "garbage_key")
    with hostile:
        res = ft_download(small.torrent, tmp_path / "out", [hostile.addr],
                          "--handshake-timeout", SHORT_HANDSHAKE, "--stall-timeout", SHORT_STALL)
    assert res.returncode == 6, res.describe()
    j = res.json
    fallbacks, connections = worker_sum(j, "dial_fallbacks"), worker_sum(j, "peers")
    # each dial that failed is two connections at most; one more may be under way
    assert fallbacks >= 1 and connections <= 2 * fallbacks + 1, j["workers"]
    assert hostile.connections <= 2 * fallbacks + 1
