"""A download's first piece: what makes it come soon, checked on the wire.

- Short request pipelines until a piece is complete (``worker.COLD_DEPTH``):
  a seeder serves a new connection slowly and unevenly, and with deep
  pipelines the run's first piece waited on the slowest peer's share. Our
  test peer delays its first block and records what it was asked before
  sending it: the worker cannot ask more without a block arriving, so the
  count is exact, not a race.
- A magnet's kept connections: the fetch sends INTERESTED as soon as the
  peer announces a piece, and the coordinator requests the first piece on
  each connection whose peer unchoked (``Coordinator.request_early``) before
  the worker takes it over. The test peer answers in stream order (its
  UNCHOKE goes out before the metadata it is asked for), so the order it
  records is fixed.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.testpeer import TestPeer

from torrent import metainfo
from torrent.coordinator import EARLY_REQUESTS
from torrent.creator import create_torrent
from torrent.magnetfetch import Handover, caught_up, last_choke
from torrent.wire.handshake import encode_handshake, make_peer_id
from torrent.wire.messages import Bitfield, Choke, Have, Unchoke, encode
from torrent.wire.metadata_conn import MAX_HANDOVER_BYTES
from torrent.worker import COLD_BLOCKS, COLD_DEPTH, INITIAL_DEPTH

pytestmark = pytest.mark.timeout(120)

PIECE_LEN = 256 * 1024  # 16 blocks a piece
PAYLOAD_SIZE = 8 * PIECE_LEN + 1234
#: The test peer holds its first block this long: every request the worker will
#: send before a block arrives is in by then (loopback).
FIRST_BLOCK_DELAY = 0.3
DOWNLOAD_TIMEOUT = 60


def make_payload(tmp_path: Path, size: int = PAYLOAD_SIZE, piece: int = PIECE_LEN,
                 name: str = "f.bin") -> tuple[Path, Path, bytes]:
    """One file of ``size`` random bytes under ``tmp_path/src`` and its torrent."""
    src = tmp_path / "src"
    src.mkdir()
    data = random.Random(size).randbytes(size)
    (src / name).write_bytes(data)
    torrent = tmp_path / "f.torrent"
    torrent.write_bytes(create_torrent(str(src / name), piece_length=piece))
    return src, torrent, data


def download(what: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "torrent", "download", what, "-o", str(out), "--workers", "1",
         "--no-trackers", "--no-dht", "--json", "--bind", "127.0.0.1", "--stall-timeout", "30",
         *extra],
        capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT, check=False)


def test_pipeline_is_short_until_the_first_piece(tmp_path: Path) -> None:
    assert COLD_DEPTH < INITIAL_DEPTH
    src, torrent, data = make_payload(tmp_path)
    with TestPeer(torrent, src, block_delay=FIRST_BLOCK_DELAY / 16) as peer:
        proc = download(str(torrent), tmp_path / "out", "--peer", peer.addr)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["complete"] is True
        # the first block answers a request: at least one; at most the cold pipeline
        assert peer.requests_at_first_block is not None
        assert 1 <= peer.requests_at_first_block <= COLD_DEPTH
        # one peer: every block asked for once
        assert len(peer.requests) == -(-PAYLOAD_SIZE // 16384)
    assert (tmp_path / "out" / "f.bin").read_bytes() == data


def test_the_short_pipeline_ends_after_cold_blocks_without_a_complete_piece(
        tmp_path: Path) -> None:
    """One 8 MiB piece (512 blocks): no piece completes before COLD_BLOCKS blocks, yet
    the pipeline deepens after them (a slow path must not stay at 8 blocks a trip)."""
    piece = 8 << 20
    assert piece // 16384 > COLD_BLOCKS
    src, torrent, data = make_payload(tmp_path, piece, piece, "big.bin")
    with TestPeer(torrent, src, block_delay=0.001) as peer:
        proc = download(str(torrent), tmp_path / "out", "--peer", peer.addr)
        assert proc.returncode == 0, proc.stderr
        assert peer.requests_at_first_block is not None
        assert peer.requests_at_first_block <= COLD_DEPTH
        assert peer.max_queued > COLD_DEPTH  # deeper once past COLD_BLOCKS
    assert (tmp_path / "out" / "big.bin").read_bytes() == data


def test_a_magnets_first_piece_is_requested_before_the_worker_takes_over(
        tmp_path: Path) -> None:
    src, torrent, data = make_payload(tmp_path)
    meta = metainfo.load(torrent)
    with TestPeer(torrent, src, serve_metadata=True) as peer:
        magnet = f"magnet:?xt=urn:btih:{meta.info_hash.hex()}&x.pe={peer.addr}"
        proc = download(magnet, tmp_path / "out")
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["complete"] is True
        assert result["bytes_downloaded"] == PAYLOAD_SIZE  # the first piece counted too
        assert result["workers"][0]["adopted"] == 1  # the fetch's connection, kept
        got = list(peer.arrivals)
        requests = peer.requests
    # the fetch: its extension handshake, INTERESTED (its bitfield came first), then the
    # coordinator's requests for the first piece; the worker's extension handshake after
    assert got[:2] == ["ext", "interested"], got[:5]
    second_ext = got.index("ext", 1)
    early = got[2:second_ext]
    assert early and set(early) == {"request"}, got[:second_ext + 1]
    assert len(early) == min(EARLY_REQUESTS, -(-PIECE_LEN // 16384))
    first = sorted(requests[: len(early)])
    assert first == [(0, b, 16384) for b in range(0, len(early) * 16384, 16384)]
    assert got.count("interested") == 1  # the worker counted the fetch's as sent
    # every block asked for once: the early requests were answered to the coordinator
    # (torrent/earlypiece.py), or to the worker; a piece handed back (past its
    # time bound on a loaded machine) has the blocks read before asked again
    assert len(set(requests)) == -(-PAYLOAD_SIZE // 16384)
    again = {r for r in requests if requests.count(r) > 1}
    if result["early_pieces"] == ["piece 0: verified"]:
        assert not again
    else:
        assert all(i == 0 for i, _b, _n in again), result["early_pieces"]
    assert (tmp_path / "out" / "f.bin").read_bytes() == data


HANDSHAKE = encode_handshake(b"\x01" * 20, make_peer_id())


def test_last_choke_walks_the_frames_after_the_handshake() -> None:
    assert last_choke(HANDSHAKE) is None
    assert last_choke(HANDSHAKE + encode(Bitfield(b"\xff")) + encode(Unchoke())) is True
    assert last_choke(HANDSHAKE + encode(Unchoke()) + encode(Have(3)) + encode(Choke())) is False
    # a have whose index bytes spell UNCHOKE is not one: frames, not bytes, are read
    assert last_choke(HANDSHAKE + encode(Have(0x01010101))) is None
    # the frame cut short at the end: what is there so far counts, nothing after it
    assert last_choke(HANDSHAKE + encode(Unchoke()) + encode(Bitfield(b"\xff" * 8))[:6]) is True


def test_a_kept_connection_catches_up_on_what_came_after_the_fetch() -> None:
    """Its peer's UNCHOKE arrived after the fetch ended: read without waiting, it joins
    the stream the worker replays, and the connection counts as unchoked."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        h = Handover("127.0.0.1", 1, ours.fileno(), HANDSHAKE + encode(Bitfield(b"\xff")),
                     "magnet", interested=True)
        assert caught_up(h) == h  # nothing came (and nothing waited for)
        theirs.sendall(encode(Unchoke()))
        got = caught_up(h)
        assert got.unchoked and got.data == h.data + encode(Unchoke())
        assert os.get_blocking(ours.fileno())  # our descriptor was left as it was
        theirs.sendall(encode(Choke()))
        assert not caught_up(got).unchoked
        theirs.close()
        assert caught_up(got) == got  # the peer closed it: the worker sees the end


def test_catching_up_reads_no_more_than_the_handover_bound() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.setblocking(False)
        try:
            while True:
                theirs.send(encode(Have(1)) * 4096)
        except BlockingIOError:
            pass  # a peer that floods: both socket buffers full
        h = Handover("127.0.0.1", 1, ours.fileno(), HANDSHAKE, "magnet")
        got = caught_up(h)
        assert len(HANDSHAKE) < len(got.data) <= MAX_HANDOVER_BYTES
        full = got._replace(data=b"x" * MAX_HANDOVER_BYTES)
        assert caught_up(full) == full


def test_a_lying_peers_early_piece_is_handed_back_and_fetched_again(tmp_path: Path) -> None:
    """The coordinator reads a magnet's first piece while the worker starts
    (torrent/earlypiece.py); the peer damages the first block of piece 0 it sends
    on a connection, so that piece never checks there: it goes to the worker, which
    fetches it again (whole, this time) and the download is bit-exact."""
    src, torrent, data = make_payload(tmp_path)
    meta = metainfo.load(torrent)
    with TestPeer(torrent, src, serve_metadata=True, corrupt_pieces=[0]) as peer:
        magnet = f"magnet:?xt=urn:btih:{meta.info_hash.hex()}&x.pe={peer.addr}"
        proc = download(magnet, tmp_path / "out")
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["complete"] is True
        assert result["bytes_downloaded"] == PAYLOAD_SIZE
        assert peer.corrupted and peer.corrupted[0][0] == 0
    assert len(result["early_pieces"]) == 1
    assert result["early_pieces"][0].startswith("piece 0: handed back ("), result
    assert (tmp_path / "out" / "f.bin").read_bytes() == data
