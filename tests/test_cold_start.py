"""A download's first piece: short request pipelines until it is complete (worker.COLD_DEPTH).

A seeder serves a new connection slowly and unevenly; with deep pipelines
the run's first piece waited on the slowest peer's share. Until a piece is
complete each peer holds at most ``COLD_DEPTH`` requests, refilled as its
blocks arrive. Checked against our test peer, which delays its first block
and records what it was asked before sending it: the worker cannot ask more
without a block arriving, so the count is exact, not a race.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.testpeer import TestPeer

from torrent.creator import create_torrent
from torrent.worker import COLD_DEPTH, INITIAL_DEPTH

pytestmark = pytest.mark.timeout(120)

PIECE_LEN = 256 * 1024  # 16 blocks a piece
PAYLOAD_SIZE = 8 * PIECE_LEN + 1234
#: The test peer holds its first block this long: every request the worker will
#: send before a block arrives is in by then (loopback).
FIRST_BLOCK_DELAY = 0.3
DOWNLOAD_TIMEOUT = 60


def test_pipeline_is_short_until_the_first_piece(tmp_path: Path) -> None:
    assert COLD_DEPTH < INITIAL_DEPTH
    src = tmp_path / "src"
    src.mkdir()
    data = random.Random(7).randbytes(PAYLOAD_SIZE)
    (src / "f.bin").write_bytes(data)
    torrent = tmp_path / "f.torrent"
    torrent.write_bytes(create_torrent(str(src / "f.bin"), piece_length=PIECE_LEN))
    with TestPeer(torrent, src, block_delay=FIRST_BLOCK_DELAY / 16) as peer:
        proc = subprocess.run(
            [sys.executable, "-m", "torrent", "download", str(torrent), "-o",
             str(tmp_path / "out"), "--workers", "1", "--no-trackers", "--no-dht", "--json",
             "--bind", "127.0.0.1", "--stall-timeout", "30", "--peer", peer.addr],
            capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT, check=False)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["complete"] is True
        # the first block answers a request: at least one; at most the cold pipeline
        assert peer.requests_at_first_block is not None
        assert 1 <= peer.requests_at_first_block <= COLD_DEPTH
        # one peer: every block asked for once
        assert len(peer.requests) == -(-PAYLOAD_SIZE // 16384)
    assert (tmp_path / "out" / "f.bin").read_bytes() == data
