"""What the CLI, the tools and the tests share: sizes, free ports, payloads, seeders' start-up.

The seeders' start-up is driven with stand-in processes (``python -c``) that
print the ready line, write a ready file, exit, or stay silent, so every
outcome of :func:`torrent.tools.seeders.wait_serving` is reached without
a real seeder.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from torrent.errors import StorageError
from torrent.ports import free_port, is_local_address
from torrent.tools.payload import make_payload, same_files, write_file
from torrent.tools.seeders import (
    LT_SEED_MODULE,
    Starting,
    ft_seed_command,
    lt_seed_command,
    parse_seeding_line,
    read_ready_file,
    wait_serving,
)
from torrent.units import MAX_SIZE, parse_size, size_arg

# -- sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "n"), [
    ("1000", 1000), ("1K", 1024), ("64KiB", 64 << 10), ("64kb", 64 << 10), ("512M", 512 << 20),
    ("1G", 1 << 30), ("2T", 2 << 40), ("1.5M", 3 << 19), (" 16k ", 16 << 10), ("1e3", 1000),
    ("1.9", 1), (str(MAX_SIZE), MAX_SIZE),
])
def test_parse_size(text: str, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize(("text", "why"), [
    ("inf", "not a size"), ("-inf", "not a size"), ("nan", "not a size"), ("1e999", "not a size"),
    ("lots", "not a size"), ("", "not a size"), ("KiB", "not a size"), ("1P", "not a size"),
    ("0", "must be positive"), ("-5M", "must be positive"), ("0.5", "must be positive"),
    ("1e300", "too large"), (str(MAX_SIZE + 1), "too large"),
])
def test_parse_size_refuses(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as e:
        parse_size(text)
    assert repr(text) in str(e.value)  # the message quotes what was given


def test_size_arg_is_an_argparse_type() -> None:
    import argparse

    assert size_arg("4M") == 4 << 20
    with pytest.raises(argparse.ArgumentTypeError, match="not a size: 'inf'"):
        size_arg("inf")


# -- free ports -------------------------------------------------------------------------------


def test_free_port_can_be_bound() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_free_port_for_tcp_and_udp() -> None:
    port = free_port("127.0.0.1", udp=True)
    with socket.socket() as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        t.bind(("127.0.0.1", port))
        u.bind(("127.0.0.1", port))


@pytest.mark.parametrize("host", [
    "127.0.0.1", "127.3.2.1", "0.0.0.0", "::1", "::",
    "::ffff:127.0.0.1", "::ffff:7f00:1",  # the same socket address as 127.0.0.1
])
def test_loopback_and_unspecified_addresses_are_local(host: str) -> None:
    assert is_local_address(host)


def test_an_interface_address_is_local() -> None:
    # the address this machine would send from to a TEST-NET address: one of its own
    # (where there is no route at all, the check has nothing to look at)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            pytest.skip("no IPv4 route on this machine")
        ours = s.getsockname()[0]
    assert is_local_address(ours)
    assert is_local_address(f"::ffff:{ours}")


@pytest.mark.parametrize("host", [
    "192.0.2.1", "198.51.100.7", "2001:db8::1", "::ffff:192.0.2.1",  # documentation nets
    "localhost", "example.com", "not an address", "",  # names are not resolved
])
def test_other_addresses_and_names_are_not_local(host: str) -> None:
    assert not is_local_address(host)


# -- payloads ---------------------------------------------------------------------------------


def test_write_file_is_deterministic_and_pieces_differ(tmp_path: Path) -> None:
    size = (9 << 20) + 12_345  # over two generator blocks, and a short tail
    write_file(str(tmp_path / "a"), size)
    write_file(str(tmp_path / "b"), size)
    write_file(str(tmp_path / "c"), size, seed=2)
    a = (tmp_path / "a").read_bytes()
    assert len(a) == size and a == (tmp_path / "b").read_bytes()
    assert a != (tmp_path / "c").read_bytes()
    pieces = [a[i : i + (64 << 10)] for i in range(0, size - (64 << 10), 64 << 10)]
    assert len(set(pieces)) == len(pieces)


@pytest.mark.parametrize("short", [1, 3, 4_097, (64 << 10) + 1, (4 << 20) - 5])
def test_write_file_of_a_short_file_is_the_start_of_a_long_one(tmp_path: Path,
                                                               short: int) -> None:
    # a small file generates only the block it needs: the bytes must not change
    write_file(str(tmp_path / "long"), (4 << 20) + 99, seed=5)
    write_file(str(tmp_path / "short"), short, seed=5)
    assert (tmp_path / "short").read_bytes() == (tmp_path / "long").read_bytes()[:short]


def test_make_payload_many_files_and_same_files(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    target, rels = make_payload(str(src), 100_000, 7)
    assert target == str(src / "payload") and len(rels) == 7
    assert sum((src / r).stat().st_size for r in rels) == 100_000
    assert all((src / r).stat().st_size >= 1 for r in rels)
    assert not same_files(str(src), str(out), rels)  # missing
    for r in rels:
        (out / r).parent.mkdir(parents=True, exist_ok=True)
        (out / r).write_bytes((src / r).read_bytes())
    assert same_files(str(src), str(out), rels)
    data = bytearray((out / rels[3]).read_bytes())
    data[-1] ^= 1
    (out / rels[3]).write_bytes(bytes(data))
    assert not same_files(str(src), str(out), rels)


def test_make_payload_one_file(tmp_path: Path) -> None:
    target, rels = make_payload(str(tmp_path), 1000, 1)
    assert rels == ["payload.bin"] and Path(target).stat().st_size == 1000


# -- seeders' commands and start-up -----------------------------------------------------------


def test_seeding_line() -> None:
    assert parse_seeding_line("seeding on port 6881\n") == 6881
    assert parse_seeding_line("seeding on port 6881") == 6881
    assert parse_seeding_line("seeding on port x") is None
    assert parse_seeding_line("warning: seeding on port 1") is None


def test_seed_commands() -> None:
    argv = ft_seed_command("t.torrent", "d", workers=2, peers=["127.0.0.1:1"], as_json=True,
                           extra=["--upload-limit", "1M"], cli=["fasttorrent"])
    assert argv == ["fasttorrent", "seed", "t.torrent", "d", "--bind", "127.0.0.1", "--workers",
                    "2", "--skip-check", "--no-trackers", "-q", "--no-dht", "--json",
                    "--upload-limit", "1M", "--peer", "127.0.0.1:1"]
    assert "--skip-check" not in ft_seed_command("t", "d", skip_check=False)
    dht = ft_seed_command("t", "d", dht_bootstrap=["127.0.0.1:7", "127.0.0.1:8"])
    assert "--no-dht" not in dht
    assert dht[-2:] == ["--dht-bootstrap=127.0.0.1:7", "--dht-bootstrap=127.0.0.1:8"]
    argv = lt_seed_command("t", "d", "r", lifetime=5, port=7, upload_limit=9, peers=["h:1"])
    assert argv[1:3] == ["-m", LT_SEED_MODULE]
    assert argv[3:] == ["--torrent", "t", "--save-path", "d", "--ready", "r", "--lifetime", "5",
                        "--port", "7", "--upload-limit", "9", "--peer", "h:1"]


def test_read_ready_file(tmp_path: Path) -> None:
    p = tmp_path / "r.json"
    assert read_ready_file(str(p)) is None
    p.write_text("{")
    assert read_ready_file(str(p)) is None
    p.write_text(json.dumps({"port": "x"}))
    assert read_ready_file(str(p)) is None
    p.write_text(json.dumps({"pid": 1, "port": 5, "pieces": [0, 2]}))
    assert read_ready_file(str(p)) == {"pid": 1, "port": 5, "pieces": [0, 2]}


#: Bound on a stand-in process's life: far longer than any test here needs.
STAND_IN_LIFETIME = 60


@pytest.fixture
def stand_ins() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes started by a test; killed when it ends."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
        if p.stdout is not None:
            p.stdout.close()


def _start(procs: list[subprocess.Popen[str]], code: str, log: Path | None = None,
           stdout: bool = True) -> subprocess.Popen[str]:
    err = open(log, "w") if log else subprocess.DEVNULL
    try:
        p = subprocess.Popen(["timeout", str(STAND_IN_LIFETIME), sys.executable, "-c",
                              textwrap.dedent(code)],
                             stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
                             stderr=err, text=True)
    finally:
        if log:
            err.close()  # type: ignore[union-attr]
    procs.append(p)
    return p


def test_wait_serving_both_kinds_and_leaves_later_output(
        stand_ins: list[subprocess.Popen[str]], tmp_path: Path) -> None:
    ready = tmp_path / "lt.ready"
    ft = _start(stand_ins, """
        import sys
        print("starting", flush=True)
        # the rest of its output in the same write: it must stay in the pipe
        sys.stdout.write("seeding on port 4242\\n{\\"summary\\": 1}\\n")
        sys.stdout.flush()
        import time; time.sleep(60)
    """)
    lt = _start(stand_ins, f"""
        import json, os, time
        with open({str(ready) + ".tmp"!r}, "w") as f:
            json.dump({{"pid": os.getpid(), "port": 4343, "pieces": [0, 1, 2]}}, f)
        os.replace({str(ready) + ".tmp"!r}, {str(ready)!r})
        time.sleep(60)
    """, stdout=False)
    seen: list[int] = []
    got = wait_serving([Starting(ft, "fasttorrent"), Starting(lt, "libtorrent", ready=str(ready))],
                       timeout=30, who="test", on_ready=lambda: seen.append(1))
    assert [g.port for g in got] == [4242, 4343]
    assert got[0].pieces is None and got[1].pieces == (0, 1, 2)
    assert len(seen) == 2
    # nothing after the ready line was taken from the pipe, and it reads blocking again
    assert ft.stdout is not None
    assert ft.stdout.readline() == '{"summary": 1}\n'


def test_wait_serving_a_seeder_that_exits(stand_ins: list[subprocess.Popen[str]],
                                          tmp_path: Path) -> None:
    log = tmp_path / "seed.log"
    ok = _start(stand_ins, "print('seeding on port 1', flush=True); import time; time.sleep(60)")
    bad = _start(stand_ins, "import sys; print('nothing to seed here', file=sys.stderr); "
                            "sys.exit(6)", log=log)
    with pytest.raises(StorageError, match=r"test: a fasttorrent seeder did not start "
                                           r"\(.*\): nothing to seed here"):
        wait_serving([Starting(ok, "fasttorrent"), Starting(bad, "fasttorrent", str(log))],
                     timeout=30, who="test")


def test_wait_serving_a_libtorrent_seeder_that_exits(stand_ins: list[subprocess.Popen[str]],
                                                     tmp_path: Path) -> None:
    bad = _start(stand_ins, "raise SystemExit(3)", stdout=False)
    with pytest.raises(StorageError, match=r"a libtorrent seeder did not start \(exit 3\)"):
        wait_serving([Starting(bad, "libtorrent", ready=str(tmp_path / "never"))],
                     timeout=30, who="test")


def test_wait_serving_is_bounded(stand_ins: list[subprocess.Popen[str]]) -> None:
    silent = _start(stand_ins, "import time; time.sleep(60)")
    with pytest.raises(StorageError, match=r"not serving after 0.2 s\): no output"):
        wait_serving([Starting(silent, "fasttorrent")], timeout=0.2, who="test")
    assert silent.poll() is None  # left to the caller to stop
