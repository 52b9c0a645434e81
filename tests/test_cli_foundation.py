"""The foundation commands (create, info, verify, demo, --version) run as real subprocesses.

Every command runs through ``python -m torrent`` (or the installed ``fasttorrent``
entry point) with a timeout, on real files in tmp_path.  Unhappy paths check the
exit code, that stderr is exactly one line naming the problem (no traceback),
and that nothing was created on disk (a listing of the whole test directory,
TMPDIR included so that an internal-error report would show up, is compared
before and after).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torrentgen as tg
from conftest import require_binary, require_module

import torrent
from torrent import bencoding

#: Bound on any one command; the slowest (create/verify of 64 MiB on 2 workers) takes ~1 s.
CMD_TIMEOUT_S = 120
PIECE = 16 * 1024
MiB = 1 << 20


def run(*args: str, cwd: Path, env: dict[str, str] | None = None,
        exe: Sequence[str] = (sys.executable, "-m", "torrent")) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([*exe, *args], check=False, cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=CMD_TIMEOUT_S)


def payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and mtime."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


def assert_one_line_error(r: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("fasttorrent: ")
    assert "internal error" not in lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])


def info_json(t: Path, cwd: Path) -> dict:
    r = run("info", str(t), "--json", cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    return json.loads(r.stdout)


@pytest.fixture
def multi(tmp_path: Path) -> tuple[Path, Path]:
    """A directory of nested files, its torrent (16 KiB pieces), and the folder holding both."""
    d = tmp_path / "data" / "set"
    (d / "sub" / "deeper").mkdir(parents=True)
    (d / "a.bin").write_bytes(payload(100_000, 1))
    (d / "sub" / "b.txt").write_bytes(payload(5_000, 2))
    (d / "sub" / "deeper" / "c.dat").write_bytes(payload(70_001, 3))
    (d / "sub" / "empty").write_bytes(b"")
    t = tmp_path / "set.torrent"
    r = run("create", str(d), "-o", str(t), "--piece-length", "16K", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""
    return t, tmp_path / "data"


# -- create + info --------------------------------------------------------------------------


def test_create_single_file_and_info(tmp_path: Path) -> None:
    f = tmp_path / "one.bin"
    data = payload(100_000, 7)
    f.write_bytes(data)
    t = tmp_path / "one.torrent"
    r = run("create", str(f), "-o", str(t), "--piece-length", "32K", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    d = info_json(t, tmp_path)
    assert re.fullmatch(r"[0-9a-f]{40}", d["info_hash"])
    assert d["info_hash"] in r.stdout  # create prints the info-hash
    assert d["name"] == "one.bin"
    assert d["total_size"] == 100_000
    assert d["piece_length"] == 32768
    assert d["num_pieces"] == 4
    assert d["private"] is False
    assert d["trackers"] == []
    assert d["files"] == [{"path": "one.bin", "length": 100_000, "index": 0}]
    assert d["multi_file"] is False
    # the info-hash is SHA-1 over the info dict; the digests are those of the data
    top = bencoding.decode(t.read_bytes())
    assert hashlib.sha1(bencoding.encode(top[b"info"])).hexdigest() == d["info_hash"]
    want = b"".join(hashlib.sha1(data[i : i + 32768]).digest() for i in range(0, 100_000, 32768))
    assert top[b"info"][b"pieces"] == want
    assert not (tmp_path / "one.torrent.part").exists()


def test_create_directory_with_trackers_and_private(tmp_path: Path,
                                                    multi: tuple[Path, Path]) -> None:
    _, data = multi
    t = tmp_path / "p.torrent"
    r = run("create", str(data / "set"), "-o", str(t), "--piece-length", "64K",
            "--tracker", "http://127.0.0.1:6969/announce", "--tracker", "udp://127.0.0.1:6969",
            "--private", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    d = info_json(t, tmp_path)
    assert d["name"] == "set"
    assert d["multi_file"] is True
    assert d["private"] is True
    assert d["piece_length"] == 65536
    assert d["total_size"] == 175_001
    assert d["num_pieces"] == 3
    assert d["trackers"] == [["http://127.0.0.1:6969/announce"], ["udp://127.0.0.1:6969"]]
    paths = [f["path"] for f in d["files"]]
    assert sorted(paths) == ["set/a.bin", "set/sub/b.txt", "set/sub/deeper/c.dat",
                             "set/sub/empty"]
    assert all(p.startswith("set/") and "\\" not in p for p in paths)
    assert {f["path"]: f["length"] for f in d["files"]}["set/sub/deeper/c.dat"] == 70_001
    # text mode shows the same facts
    r = run("info", str(t), cwd=tmp_path)
    assert r.returncode == 0
    assert d["info_hash"] in r.stdout and "private:      yes" in r.stdout
    assert "tracker tier 1: udp://127.0.0.1:6969" in r.stdout
    assert "set/sub/deeper/c.dat" in r.stdout


def test_created_torrent_loads_in_libtorrent(multi: tuple[Path, Path], tmp_path: Path) -> None:
    lt = require_module("libtorrent")
    t = tmp_path / "lt.torrent"
    r = run("create", str(multi[1] / "set"), "-o", str(t), "--piece-length", "16K",
            "--tracker", "http://127.0.0.1:1/announce", "--private", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    d = info_json(t, tmp_path)
    ti = lt.torrent_info(str(t))
    assert str(ti.info_hashes().v1) == d["info_hash"]
    assert ti.num_pieces() == d["num_pieces"]
    assert ti.piece_length() == d["piece_length"]
    assert ti.total_size() == d["total_size"]
    assert ti.priv() is True
    fs = ti.layout()  # create makes no pad files: every entry is a real file
    lt_files = {fs.file_path(i).replace(os.sep, "/"): fs.file_size(i)
                for i in range(fs.num_files())}
    assert lt_files == {f["path"]: f["length"] for f in d["files"]}


@pytest.mark.parametrize("value", ["1000", "24K", "8K", "16385"])
def test_create_refuses_a_bad_piece_length(tmp_path: Path, multi: tuple[Path, Path],
                                           value: str) -> None:
    before = listing(tmp_path)
    r = run("create", str(multi[1] / "set"), "-o", str(tmp_path / "x.torrent"),
            "--piece-length", value, cwd=tmp_path)
    assert_one_line_error(r, 2, "--piece-length", "power of two")
    assert listing(tmp_path) == before


@pytest.mark.parametrize("value", ["0", "-16K", "abc"])
def test_create_piece_length_flag_syntax(tmp_path: Path, multi: tuple[Path, Path],
                                         value: str) -> None:
    before = listing(tmp_path)
    r = run("create", str(multi[1] / "set"), "-o", str(tmp_path / "x.torrent"),
            f"--piece-length={value}", cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "--piece-length" in r.stderr.splitlines()[-1]
    assert listing(tmp_path) == before


def test_create_accepts_power_of_two_sizes(tmp_path: Path, multi: tuple[Path, Path]) -> None:
    t = tmp_path / "x.torrent"
    r = run("create", str(multi[1] / "set"), "-o", str(t), "--piece-length", "1M", "-q",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert info_json(t, tmp_path)["piece_length"] == MiB


@pytest.mark.parametrize("contents", ["nothing", "empty-files"])
def test_create_with_no_data_is_a_usage_error(tmp_path: Path, contents: str) -> None:
    d = tmp_path / "empty"
    (d / "sub").mkdir(parents=True)
    if contents == "empty-files":
        (d / "sub" / "zero").write_bytes(b"")
    (tmp_path / "tmp").mkdir()
    before = listing(tmp_path)
    r = run("create", str(d), "-o", str(tmp_path / "e.torrent"), cwd=tmp_path,
            env={"TMPDIR": str(tmp_path / "tmp")})
    assert_one_line_error(r, 2, "nothing to share")
    assert listing(tmp_path) == before


def test_create_bad_arguments(tmp_path: Path, multi: tuple[Path, Path]) -> None:
    (tmp_path / "tmp").mkdir()
    env = {"TMPDIR": str(tmp_path / "tmp")}
    before = listing(tmp_path)
    src = str(multi[1] / "set")
    r = run("create", str(tmp_path / "no-such-thing"), "-o", str(tmp_path / "x.torrent"),
            cwd=tmp_path, env=env)
    assert_one_line_error(r, 2, "no-such-thing")
    r = run("create", src, "-o", str(tmp_path), cwd=tmp_path, env=env)
    assert_one_line_error(r, 2, "is a directory")
    r = run("create", src, "-o", str(tmp_path / "missing-folder" / "x.torrent"), cwd=tmp_path,
            env=env)
    assert_one_line_error(r, 5, "x.torrent")
    assert listing(tmp_path) == before


# -- verify ---------------------------------------------------------------------------------


def test_verify_good_data(multi: tuple[Path, Path], tmp_path: Path) -> None:
    t, data = multi
    r = run("verify", str(t), str(data), "--json", "--workers", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    total = 175_001
    assert d["complete"] is True
    assert d["pieces_total"] == d["pieces_ok"] == -(-total // PIECE)
    assert d["pieces_bad"] == 0 and d["pieces_missing"] == 0
    assert d["bytes_checked"] == total
    assert isinstance(d["seconds"], float) and d["seconds"] >= 0
    assert d["info_hash"] == info_json(t, tmp_path)["info_hash"]
    assert [(w["worker"], w["pieces"], w["bytes"]) for w in d["workers"]] == \
        [(0, d["pieces_total"], total)]
    # text mode
    r = run("verify", str(t), str(data), cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == ""
    assert f"{d['pieces_total']}/{d['pieces_total']} pieces good, 0 bad, 0 missing" in r.stdout


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """64 MiB in one file, 1 MiB pieces: four 16 MiB hashing chunks."""
    root = tmp_path_factory.mktemp("big")
    (root / "data").mkdir()
    f = root / "data" / "big.bin"
    with open(f, "wb") as out:
        out.writelines(payload(16 * MiB, 100 + k) for k in range(4))
    t = root / "big.torrent"
    r = run("create", str(f), "-o", str(t), "--piece-length", "1M", "-q", cwd=root)
    assert r.returncode == 0, r.stderr
    return t, root / "data"


def test_verify_two_workers_share_the_work(big: tuple[Path, Path]) -> None:
    t, data = big
    r = run("verify", str(t), str(data), "--json", "--workers", "2", cwd=data)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["pieces_ok"] == d["pieces_total"] == 64
    assert d["bytes_checked"] == 64 * MiB
    assert sorted(w["worker"] for w in d["workers"]) == [0, 1]
    assert sum(w["pieces"] for w in d["workers"]) == 64
    assert sum(w["bytes"] for w in d["workers"]) == 64 * MiB
    assert all(w["bytes"] == w["pieces"] * MiB for w in d["workers"])


def test_verify_two_workers_both_hash(big: tuple[Path, Path]) -> None:
    t, data = big
    r = run("verify", str(t), str(data), "--json", "--workers", "2", cwd=data)
    assert r.returncode == 0, r.stderr
    workers = json.loads(r.stdout)["workers"]
    assert all(w["pieces"] > 0 and w["bytes"] > 0 for w in workers), workers


def test_verify_names_the_bad_piece_and_its_file(multi: tuple[Path, Path],
                                                 tmp_path: Path) -> None:
    t, data = multi
    c = data / "set" / "sub" / "deeper" / "c.dat"
    raw = bytearray(c.read_bytes())
    raw[40_000] ^= 0xFF
    c.write_bytes(raw)
    # torrent order: a.bin (100000), sub/b.txt (5000), sub/deeper/c.dat, sub/empty
    bad = (100_000 + 5_000 + 40_000) // PIECE
    r = run("verify", str(t), str(data), cwd=tmp_path)
    assert r.returncode == 6, r.stderr
    assert_one_line_error(r, 6, "incomplete", "1 bad")
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("incomplete:")]
    assert line == [f"incomplete: set/sub/deeper/c.dat: bad pieces {bad}"]
    r = run("verify", str(t), str(data), "--json", cwd=tmp_path)
    assert r.returncode == 6
    d = json.loads(r.stdout)
    assert d["complete"] is False
    assert d["pieces_bad"] == 1 and d["bad_pieces"] == [bad] and d["pieces_missing"] == 0
    files = {f["path"]: f for f in d["files"]}
    assert files["set/sub/deeper/c.dat"]["complete"] is False
    assert files["set/sub/deeper/c.dat"]["bad_pieces"] == [bad]
    assert files["set/a.bin"]["complete"] is True


def test_verify_flipped_byte_in_a_piece_spanning_two_files(multi: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    t, data = multi
    b = data / "set" / "sub" / "b.txt"  # bytes 100000..104999, all in piece 6
    raw = bytearray(b.read_bytes())
    raw[0] ^= 1
    b.write_bytes(raw)
    r = run("verify", str(t), str(data), cwd=tmp_path)
    assert r.returncode == 6
    assert "incomplete: set/sub/b.txt: bad pieces 6" in r.stdout
    assert "incomplete: set/a.bin: bad pieces 6" in r.stdout  # the piece is shared
    assert "incomplete: set/sub/deeper/c.dat: bad pieces 6" in r.stdout


def test_verify_missing_file(multi: tuple[Path, Path], tmp_path: Path) -> None:
    t, data = multi
    os.unlink(data / "set" / "a.bin")
    before = listing(tmp_path)
    r = run("verify", str(t), str(data), "--json", cwd=tmp_path)
    assert r.returncode == 6, r.stderr
    assert_one_line_error(r, 6, "missing")
    d = json.loads(r.stdout)
    assert d["pieces_missing"] > 0
    assert d["missing_pieces"] == list(range(100_000 // PIECE + 1))
    files = {f["path"]: f for f in d["files"]}
    assert files["set/a.bin"]["exists"] is False
    # piece 6 (bytes 98304..114687) holds the end of a.bin, all of b.txt, the start of c.dat
    assert files["set/sub/b.txt"]["missing_pieces"] == [6]
    assert files["set/sub/deeper/c.dat"]["missing_pieces"] == [6]
    assert files["set/sub/deeper/c.dat"]["exists"] is True
    r = run("verify", str(t), str(data), cwd=tmp_path)
    assert r.returncode == 6
    assert "incomplete: set/a.bin: missing file" in r.stdout
    assert listing(tmp_path) == before  # verify never creates the missing file


def test_verify_short_file_is_missing_pieces(multi: tuple[Path, Path], tmp_path: Path) -> None:
    t, data = multi
    c = data / "set" / "sub" / "deeper" / "c.dat"
    os.truncate(c, 1000)
    r = run("verify", str(t), str(data), "--json", cwd=tmp_path)
    assert r.returncode == 6
    d = json.loads(r.stdout)
    assert d["pieces_missing"] > 0
    assert {f["path"]: f["complete"] for f in d["files"]}["set/sub/deeper/c.dat"] is False


def test_verify_dir_must_exist(multi: tuple[Path, Path], tmp_path: Path) -> None:
    t, _ = multi
    before = listing(tmp_path)
    r = run("verify", str(t), str(tmp_path / "nowhere"), cwd=tmp_path)
    assert_one_line_error(r, 2, "nowhere", "not a directory")
    assert listing(tmp_path) == before


# -- bad torrents ---------------------------------------------------------------------------

_FIELD_CASES = {c.id: c for c in tg.bad_cases()}


def _bad_inputs() -> list:
    good = tg.bencoding.encode(tg.base_multi())
    cases = [
        pytest.param(None, "no-such.torrent", id="missing-file"),
        pytest.param(b"", "empty input", id="empty"),
        pytest.param(b"this is not a torrent\n", "not valid bencode", id="not-bencode"),
        pytest.param(good[: len(good) // 2], "not valid bencode", id="truncated"),
        pytest.param(b"l" * 10_000_000, "nesting", id="nesting-bomb-10MB"),
        pytest.param(b"d1:a" * 2_500_000, "nesting", id="dict-nesting-bomb-10MB"),
        pytest.param(b"i" + b"9" * 10_000_000 + b"e", "digits", id="integer-bomb-10MB"),
    ]
    for cid in ("piece-length-1000", "pieces-too-few", "file-length-negative",
                "file-path-duplicate", "name-not-utf8", "string-length-lie"):
        c = _FIELD_CASES[cid]
        cases.append(pytest.param(c.data, c.field, id=cid))
    for cid in ("file-path-dotdot", "file-path-absolute", "name-dotdot", "name-slash",
                "file-path-backslash"):
        c = _FIELD_CASES[cid]
        cases.append(pytest.param(c.data, c.field, id="traversal-" + cid))
    return cases


@pytest.mark.parametrize("command", ["info", "verify"])
@pytest.mark.parametrize(("data", "names"), _bad_inputs())
def test_bad_torrent_is_exit_3_one_line_nothing_created(tmp_path: Path, command: str,
                                                        data: bytes | None, names: str) -> None:
    t = tmp_path / "bad.torrent"
    if data is None:
        t = tmp_path / names
    else:
        t.write_bytes(data)
    (tmp_path / "out").mkdir()
    (tmp_path / "tmp").mkdir()
    before = listing(tmp_path)
    args = ["info", str(t)] if command == "info" else ["verify", str(t), str(tmp_path / "out")]
    r = run(*args, "--json", cwd=tmp_path, env={"TMPDIR": str(tmp_path / "tmp")})
    assert_one_line_error(r, 3, "invalid torrent", names)
    assert r.stdout == ""
    assert listing(tmp_path) == before


def test_create_does_not_read_torrents_but_info_of_its_output_works(tmp_path: Path) -> None:
    """A torrent file given to `create` is shared as data, like any file."""
    f = tmp_path / "x.torrent"
    f.write_bytes(b"d" * 20000)
    t = tmp_path / "of-x.torrent"
    r = run("create", str(f), "-o", str(t), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert info_json(t, tmp_path)["name"] == "x.torrent"


# -- misc -----------------------------------------------------------------------------------


def test_version(tmp_path: Path) -> None:
    r = run("--version", cwd=tmp_path)
    assert r.returncode == 0
    assert r.stdout.strip() == f"fasttorrent {torrent.__version__}"


def test_the_console_script_flushes_what_a_command_printed_before_it_ends(tmp_path: Path) -> None:
    """``cli.run`` ends the process without the interpreter's teardown: a command's
    buffered output (more than a pipe's buffer) still arrives whole, and its code is
    the exit status."""
    code = ("import sys; from torrent import cli; "
            "cli.main = lambda: (sys.stdout.write('x' * 300000), "
            "sys.stderr.write('done'), 5)[2]; cli.run()")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=CMD_TIMEOUT_S)
    assert r.returncode == 5
    assert r.stdout == "x" * 300000 and r.stderr == "done"


def test_no_command_is_a_usage_error(tmp_path: Path) -> None:
    r = run(cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "required" in r.stderr


@pytest.mark.parametrize("args", [("download", "t.torrent", "-o", "out", "--download-limit", "inf"),
                                  ("download", "t.torrent", "-o", "out", "--workers", "0"),
                                  ("demo", "--size", "lots"),
                                  ("bogus",)])
def test_bad_arguments_are_one_line_usage_errors(tmp_path: Path, args: tuple[str, ...]) -> None:
    r = run(*args, cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0], r.stderr


def test_demo(tmp_path: Path) -> None:
    exe = require_binary("fasttorrent")
    (tmp_path / "tmp").mkdir()
    r = run("demo", "--size", "8M", cwd=tmp_path, exe=[exe], env={"TMPDIR": str(tmp_path / "tmp")})
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "verify: 8/8 pieces good" in r.stdout
    assert list((tmp_path / "tmp").iterdir()) == []  # the demo cleans up after itself
    shutil.rmtree(tmp_path / "tmp")


def test_only_bench_pays_for_the_bench_parser() -> None:
    code = ("import sys; from torrent import cli; "
            "d = cli.build_parser('download').parse_args(['download', 'x', '-o', 'd']); "
            "print(d.command, 'torrent.tools.bench' in sys.modules); "
            "b = cli.build_parser('bench').parse_args(['bench', '--size', '1M']); "
            "print(b.command, b.size, 'torrent.tools.bench' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    assert out == ["download", "False", "bench", str(1 << 20), "True"]
