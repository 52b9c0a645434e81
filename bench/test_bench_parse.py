"""Benchmarks: parsing good torrents, and refusing 10 MB of hostile input.

Run: ``pytest bench/test_bench_parse.py --benchmark-only``. Each benchmark also
asserts its outcome, so a regression into accepting a bomb fails loudly.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from torrent import bencoding, metainfo
from torrent.bencoding import BencodeError
from torrent.errors import InvalidTorrent

TEN_MB = 10 * 1024 * 1024
PIECE = 256 * 1024


def _hashes(count: int) -> bytes:
    seed = hashlib.sha1(b"bench").digest()
    return seed * count  # content does not matter to the parser, only the size


@pytest.fixture(scope="module")
def big_single() -> bytes:
    """A 200,000-piece single-file torrent (a 4 MB 'pieces' string)."""
    top = {
        b"announce": b"http://127.0.0.1:6969/announce",
        b"info": {
            b"name": b"big.iso",
            b"piece length": PIECE,
            b"length": 200_000 * PIECE - 1,
            b"pieces": _hashes(200_000),
        },
    }
    return bencoding.encode(top)


@pytest.fixture(scope="module")
def many_files() -> bytes:
    """A 20,000-file torrent: the token-dense shape (pure-Python scan cost)."""
    files = [
        {b"length": 50_000 + i, b"path": [b"dir%03d" % (i % 100), b"file%05d.bin" % i]}
        for i in range(20_000)
    ]
    total = sum(f[b"length"] for f in files)
    top: dict[bytes, Any] = {
        b"info": {
            b"name": b"many",
            b"piece length": PIECE,
            b"files": files,
            b"pieces": _hashes(-(-total // PIECE)),
        }
    }
    return bencoding.encode(top)


def test_parse_200k_pieces(benchmark: Any, big_single: bytes) -> None:
    m = benchmark(metainfo.parse, big_single)
    assert m.num_pieces == 200_000


def test_parse_20k_files(benchmark: Any, many_files: bytes) -> None:
    m = benchmark(metainfo.parse, many_files)
    assert len(m.files) == 20_000


def _refuse(data: bytes) -> str:
    try:
        metainfo.parse(data)
    except InvalidTorrent as exc:
        return str(exc)
    raise AssertionError("bomb accepted")


BOMBS = {
    # 10 MB of 'l': must stop at MAX_DEPTH, not recurse or allocate per level.
    "deep-nesting": (b"l" * TEN_MB, "nesting deeper"),
    # A string claiming far more bytes than the file has: refused before any slice.
    "string-length-lie": (b"d4:info999999999:" + b"x" * TEN_MB + b"e", "claims"),
    # A 10 MB integer: int() must never see it (quadratic in CPython).
    "integer-bomb": (b"d4:infoi" + b"7" * TEN_MB + b"ee", "digits"),
    # The same key 3.5 million times: refused at the second one.
    "duplicate-keys": (b"d" + b"1:ai0e" * (TEN_MB // 6) + b"e", "duplicate"),
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_refuse_10mb_bomb(benchmark: Any, name: str) -> None:
    data, expected = BOMBS[name]
    msg = benchmark(_refuse, data)
    assert expected in msg


def test_refuse_10mb_late_error(benchmark: Any) -> None:
    """Worst case for a validating scanner: 10 MB of valid tokens, bad last byte.

    The scanner must walk every token before it finds the error; this is the
    cost of refusing the nastiest 10 MB input (pure Python, ~3.5 M tokens).
    """
    data = b"l" + b"i1e" * (TEN_MB // 3) + b"x"

    def run() -> str:
        try:
            bencoding.decode(data)
        except BencodeError as exc:
            return str(exc)
        raise AssertionError("accepted")

    assert "unexpected byte" in benchmark.pedantic(run, rounds=3, iterations=1)
