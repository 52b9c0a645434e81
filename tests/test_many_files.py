"""A torrent of 10,000 small files, downloaded from libtorrent seeders on 127.0.0.1 by a
``fasttorrent`` whose ``RLIMIT_NOFILE`` is 256 (soft and hard: it cannot raise it).

The workers' storage keeps a budget of descriptors (``storage.open_fd_budget``)
and a piece whose files do not fit waits for writes and flushes in flight;
the coordinator creates the files in a thread while the workers download
(``coordinator.CREATE_LATER_FILES``).  Before, such a download failed with
"Too many open files".  The outcome is checked as a user would: every file
bit-exact (the empty ones too: only the coordinator's creation makes them),
``fasttorrent verify``, no process or segment left behind.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import require_module
from helpers.payload import assert_clean_after, run_cli, tree_bytes, write_tree

from torrent.creator import create_torrent

pytestmark = pytest.mark.timeout(180)

#: Files in the torrent: the workload of issue 14's many-file measurement.
FILES = 10_000
#: Piece length: each piece spans ~20 files, so many pieces pin many descriptors.
PIECE = 64 * 1024
#: The descriptor limit of the download: the storage's budget is then 64 per worker.
FD_LIMIT = 256


def _sizes() -> dict[str, int]:
    """Uneven sizes of a few KiB (every 1,000th file empty), in ten directories."""
    return {f"d{i % 10}/f{i:05d}.bin": 0 if i % 1000 == 7 else 1000 + (i * 7919) % 4000
            for i in range(FILES)}


def test_ten_thousand_files_under_a_256_descriptor_limit(
        seeders: Callable[..., list[Any]], tmp_path: Path) -> None:
    require_module("libtorrent")
    src = tmp_path / "src"
    sizes = _sizes()
    write_tree(src / "many", sizes, seed=14)
    torrent = tmp_path / "many.torrent"
    torrent.write_bytes(create_torrent(str(src / "many"), piece_length=PIECE))
    peers = seeders(torrent, [src, src])
    out = tmp_path / "out"
    res = run_cli(["download", str(torrent), "-o", str(out), "--workers", "2", "--no-trackers",
                   "--no-dht", "--bind", "127.0.0.1", "--json",
                   "--peer", ",".join(p.addr for p in peers)],
                  timeout=120, fd_limit=FD_LIMIT)
    assert_clean_after(res)
    assert res.returncode == 0, res.describe()
    assert "Traceback" not in res.stderr, res.describe()
    j = res.json
    assert j["complete"] is True and j["hash_failures"] == 0
    got = tree_bytes(out)
    want = tree_bytes(src)
    assert len(want) == FILES and sorted(got) == sorted(want)
    assert [p for p in want if got[p] != want[p]] == []
    assert sum(1 for p in got if not got[p]) == FILES // 1000
    r = run_cli(["verify", str(torrent), str(out), "--workers", "1"], timeout=60)
    assert r.returncode == 0, r.describe()


def test_a_file_that_cannot_be_created_ends_the_run_with_one_line(tmp_path: Path) -> None:
    """The files of a fresh download of many files are created while the workers run
    (``coordinator.CREATE_LATER_FILES``): a file that cannot be created there (a
    directory stands at its path) still ends the run at once with exit 5 and one
    line naming it, no traceback, no process left behind."""
    from torrent.coordinator import CREATE_LATER_FILES

    n = 2 * CREATE_LATER_FILES
    src = tmp_path / "src"
    write_tree(src / "many", {f"f{i:03d}.bin": 3000 for i in range(n)}, seed=5)
    torrent = tmp_path / "many.torrent"
    torrent.write_bytes(create_torrent(str(src / "many"), piece_length=16 * 1024))
    out = tmp_path / "out"
    (out / "many" / f"f{n - 1:03d}.bin").mkdir(parents=True)  # the last file created
    res = run_cli(["download", str(torrent), "-o", str(out), "--workers", "1",
                   "--no-trackers", "--no-dht", "--bind", "127.0.0.1",
                   "--stall-timeout", "60", "-q"], timeout=60)
    assert_clean_after(res)
    assert res.returncode == 5, res.describe()
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"f{n - 1:03d}.bin" in lines[0], res.describe()
    assert "Traceback" not in res.stderr
