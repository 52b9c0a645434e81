"""``fasttorrent bench``: real clients on a small loopback swarm, the reports they leave.

Each bench here is small (8 MiB, one run per client) and bounded by
:data:`BENCH_TIMEOUT`; the downloads run against real seeders (``fasttorrent
seed`` or libtorrent), and every run must have been checked bit-exact. The
interrupt test sends SIGINT (and SIGTERM) while a download is in flight and checks that no
process the bench started, no temporary directory and no ``/dev/shm`` segment
outlives it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import require_binary, require_module

#: Bound of one whole bench run (payload, seeders, every client, reports).
BENCH_TIMEOUT = 240
#: Bound of one download inside a bench.
RUN_TIMEOUT = "60"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def bench(tmp_path: Path, *args: str, pre: str = "") -> tuple[subprocess.CompletedProcess[str],
                                                                dict[str, Any], Path]:
    """Run ``fasttorrent bench ARGS`` into tmp_path/results; return it, its JSON, its base."""
    results = tmp_path / "results"
    argv = ["bench", "--size", "8M", "--runs", "1", "--num-seeders", "2", "--timeout",
            RUN_TIMEOUT, "--results", str(results), *args]
    code = f"{pre}import sys\nfrom torrent.cli import main\nsys.exit(main({argv!r}))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=BENCH_TIMEOUT, env=_env(), check=False)
    docs = sorted(results.glob("*.json")) if results.exists() else []
    assert r.returncode == 0 and len(docs) == 1, r.stderr[-3000:]
    return r, json.loads(docs[0].read_text()), docs[0].with_suffix("")


def check_doc(doc: dict[str, Any], clients: list[str], seeder_kind: str | None) -> None:
    """Every client ran once, verified, with sane measures; versions are there."""
    assert sorted(r["client"] for r in doc["runs"]) == sorted(clients)
    for r in doc["runs"]:
        assert r["ok"] is True, r
        assert r["exit"] == 0
        assert r["rate"] > 0 and r["wall"] > 0
        assert r["cpu"] > 0 and r["peak_pss"] > 0
        assert seeder_kind is None or r["seeder_kind"] == seeder_kind
    for e in doc["summary"]:
        assert e["valid"] == e["runs"] == 1
        assert 0 < e["mbps_min"] <= e["mbps_median"] <= e["mbps_max"]
        assert e["cpu_per_gib_median"] > 0
    v = doc["versions"]
    for key in ("fasttorrent", "python", "kernel", "cpu", "libtorrent"):
        assert v[key], key


def test_bench_fasttorrent_seeders_all_reports(tmp_path: Path) -> None:
    require_module("libtorrent")
    require_module("matplotlib")
    require_binary("transmission-cli")
    clients = ["ft1", "ft2", "lt-default", "transmission"]
    r, doc, base = bench(tmp_path, "--clients", ",".join(clients))
    check_doc(doc, clients, "fasttorrent")
    assert doc["params"]["size"] == 8 << 20 and doc["params"]["files"] == 1
    assert doc["versions"]["transmission-cli"].startswith("transmission-cli")
    by = {e["client"]: e for e in doc["summary"]}
    best = max(("ft1", "ft2"), key=lambda c: by[c]["mbps_median"])
    assert by[best]["ratio"] == 1.0 and by["lt-default"]["reference"] == best
    assert by["transmission"]["ratio"] > 0
    # transmission was dialled by per-run seeders; their start-up is not its time
    (tr,) = [x for x in doc["runs"] if x["client"] == "transmission"]
    assert 0 < tr["dial_wait"] < tr["wall_raw"]
    md = base.with_suffix(".md").read_text()
    for c in clients:
        assert f"| {c} | 2 fasttorrent | 1/1 |" in md
    assert doc["versions"]["transmission-cli"] in md
    assert base.with_suffix(".png").read_bytes().startswith(PNG_SIGNATURE)
    assert "run 4/4" in r.stderr and "MB/s" in r.stderr
    assert r.stdout.count("| ft1 |") == 1


def test_bench_libtorrent_seeders_multifile(tmp_path: Path) -> None:
    """Several files; with --keep-outputs (and --keep, to look) every run's files are
    still there when the bench ends, whole."""
    require_module("libtorrent")
    require_binary("aria2c")
    clients = ["ft2", "lt-fast", "aria2"]
    r, doc, base = bench(tmp_path, "--seeders", "libtorrent", "--files", "7", "--no-warmup",
                         "--keep-outputs", "--keep", "--clients", ",".join(clients))
    m = re.search(r"work dir (\S+);", r.stderr)
    assert m, r.stderr[-2000:]
    work = Path(m.group(1))
    try:
        check_doc(doc, clients, "libtorrent")
        assert doc["params"]["files"] == 7 and doc["params"]["seeders"] == "libtorrent"
        assert doc["versions"]["aria2c"].startswith("aria2 version")
        assert doc["params"]["keep_outputs"] is True
        assert "`--keep-outputs`" in base.with_suffix(".md").read_text()
        runs = sorted(work.glob("run-*"))
        assert len(runs) == len(clients), runs
        for run in runs:
            files = [f for f in (run / "out").rglob("*") if f.is_file()]
            assert len(files) == 7 and sum(f.stat().st_size for f in files) == 8 << 20
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_keep_outputs_deletes_the_kept_ones_only_when_the_disk_runs_short(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torrent.tools import bench as b

    for n in ("run-ft1-a", "run-lt-fast-b"):
        (tmp_path / n / "out").mkdir(parents=True)
        (tmp_path / n / "out" / "f").write_bytes(b"x")
    (tmp_path / "src").mkdir()
    cfg = b.BenchConfig(size=1 << 30, keep_outputs=True)
    Usage = shutil._ntuple_diskusage  # type: ignore[attr-defined]

    monkeypatch.setattr(b.shutil, "disk_usage",
                        lambda p: Usage(100 << 30, 0, cfg.size + b.KEEP_OUTPUTS_MARGIN))
    assert b._make_room_for_run(cfg, str(tmp_path)) is False
    assert len(list(tmp_path.glob("run-*"))) == 2  # room enough: kept
    monkeypatch.setattr(b.shutil, "disk_usage",
                        lambda p: Usage(100 << 30, 0, cfg.size + b.KEEP_OUTPUTS_MARGIN - 1))
    assert b._make_room_for_run(cfg, str(tmp_path)) is True
    assert list(tmp_path.glob("run-*")) == [] and (tmp_path / "src").is_dir()
    assert b._make_room_for_run(cfg, str(tmp_path)) is False  # nothing left to delete
    # the report says which: kept throughout, or a run marked after a deletion
    params = {"size": 1 << 20, "files": 1, "piece": 1 << 16, "seeders": "libtorrent",
              "num_seeders": [4], "runs": 1, "time": "t", "keep_outputs": True}
    kept = b.markdown({"params": params, "versions": {}, "runs": [{}], "summary": []})
    assert "`--keep-outputs`): no run created its files just after" in kept
    assert "outputs_deleted_before" not in kept
    short = b.markdown({"params": params, "versions": {},
                        "runs": [{}, {"outputs_deleted_before": True}], "summary": []})
    assert "the disk ran short" in short and "`outputs_deleted_before`" in short


def test_bench_compare_seeding_without_matplotlib(tmp_path: Path) -> None:
    """lt-default from both seeder kinds; with matplotlib hidden the chart is skipped."""
    require_module("libtorrent")
    r, doc, base = bench(tmp_path, "--compare-seeding", "--no-warmup",
                         pre="import sys\nsys.modules['matplotlib'] = None\n")
    check_doc(doc, ["lt-default@fasttorrent", "lt-default@libtorrent"], None)
    kinds = {x["client"]: x["seeder_kind"] for x in doc["runs"]}
    assert kinds == {"lt-default@fasttorrent": "fasttorrent",
                     "lt-default@libtorrent": "libtorrent"}
    by = {e["client"]: e for e in doc["summary"]}
    assert by["lt-default@fasttorrent"]["ratio"] == 1.0
    assert by["lt-default@libtorrent"]["reference"] == "lt-default@fasttorrent"
    assert not base.with_suffix(".png").exists()
    skipped = [ln for ln in r.stdout.splitlines() if "chart skipped" in ln]
    assert len(skipped) == 1 and "matplotlib" in skipped[0]


def test_bench_magnet_times_metadata_and_first_piece(tmp_path: Path) -> None:
    """--magnet: fasttorrent and libtorrent start from a magnet naming the seeders; each
    run reports when the metadata and the first verified piece came, within its wall."""
    require_module("libtorrent")
    clients = ["ft1", "lt-default"]
    r, doc, base = bench(tmp_path, "--magnet", "--seeders", "libtorrent", "--no-warmup",
                         "--clients", ",".join(clients))
    check_doc(doc, clients, "libtorrent")
    assert doc["params"]["magnet"] is True and base.name.endswith("-magnet")
    for x in doc["runs"]:
        assert 0 < x["metadata_seconds"] <= x["first_piece_seconds"] <= x["wall"], x
    for e in doc["summary"]:
        (x,) = [y for y in doc["runs"] if y["client"] == e["client"]]
        assert e["metadata_seconds_median"] == x["metadata_seconds"]
        assert e["first_piece_seconds_median"] == x["first_piece_seconds"]
    md = base.with_suffix(".md").read_text()
    assert "| metadata s | first piece s |" in md and "MB/s whole run" in md
    for x in doc["runs"]:
        assert (f"| 1 | {x['client']} | yes | {x['metadata_seconds']:.2f} | "
                f"{x['first_piece_seconds']:.2f} |") in md
    assert "metadata " in r.stderr and "first piece " in r.stderr


def test_an_older_tree_gets_only_the_download_flags_it_has(tmp_path: Path) -> None:
    """ftN@TREE for a before/after comparison: a tree from before --no-dht and
    --encryption is run without them (it has no DHT and dials in plaintext)."""
    from torrent.tools.bench import OPTIONAL_FT_FLAGS, _tree_flags

    old, newer = tmp_path / "old", tmp_path / "newer"
    for tree, text in ((old, 's.add_argument("--port")\n'),
                       (newer, 's.add_argument("--no-dht")\ns.add_argument("--port")\n')):
        (tree / "torrent").mkdir(parents=True)
        (tree / "torrent" / "cli.py").write_text(text)
    assert _tree_flags(str(old)) == frozenset()
    assert _tree_flags(str(newer)) == {"--no-dht"}
    assert _tree_flags("") == set(OPTIONAL_FT_FLAGS)  # this tree: every flag
    assert _tree_flags(str(tmp_path / "missing")) == frozenset()


def test_bench_client_times_read_robustly() -> None:
    """The times come from the last JSON line a client printed; anything else is None."""
    from torrent.tools.bench import client_times

    assert client_times('noise\n{"metadata_seconds": 0.5, "first_piece_seconds": 1}\n') == {
        "metadata_seconds": 0.5, "first_piece_seconds": 1.0}
    none = {"metadata_seconds": None, "first_piece_seconds": None}
    for text in ("", "done: 8 MiB\n", "{not json\n", "[1, 2]\n",
                 '{"metadata_seconds": -1, "first_piece_seconds": true}\n',
                 '{"metadata_seconds": "1", "first_piece_seconds": null}\n'):
        assert client_times(text) == none, text


def _one_line_error(argv: list[str], env: dict[str, str]) -> str:
    r = subprocess.run([sys.executable, "-m", "torrent", "bench", *argv], capture_output=True,
                       text=True, timeout=60, env=env, check=False)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_bench_unknown_or_missing_client_is_a_usage_error(tmp_path: Path) -> None:
    line = _one_line_error(["--clients", "ft1,nosuchclient", "--results", str(tmp_path)], _env())
    assert "unknown client 'nosuchclient'" in line
    # a client whose program is not on PATH: named, so an error (not silently left out)
    bare = tmp_path / "bin"
    bare.mkdir()
    line = _one_line_error(["--clients", "aria2", "--results", str(tmp_path)],
                           dict(_env(), PATH=str(bare)))
    assert "aria2c" in line and "not installed" in line
    assert not any(tmp_path.glob("*.json"))
    # transmission cannot start from a magnet here: refused before anything runs
    if shutil.which("transmission-cli") is not None:
        line = _one_line_error(["--magnet", "--clients", "ft1,transmission", "--results",
                                str(tmp_path)], _env())
        assert "--magnet" in line and "transmission" in line
        assert list(tmp_path.iterdir()) == [bare]


def test_bench_libtorrent_with_its_own_encryption_policy_fetches_from_both_seeders(
        tmp_path: Path) -> None:
    """lt-enc dials MSE/PE first: it must be served by fasttorrent seeders (which answer
    MSE) as by libtorrent ones, bit-exact, in the seeding comparison."""
    require_module("libtorrent")
    _r, doc, _base = bench(tmp_path, "--compare-seeding", "--clients", "lt-enc")
    check_doc(doc, ["lt-enc@fasttorrent", "lt-enc@libtorrent"], None)


def test_bench_another_build_is_measured_beside_this_one(tmp_path: Path) -> None:
    """ftN@TREE runs the package of another checkout (here: this very one) in the same
    interleaved runs; the reference stays this build's fastest configuration."""
    tree = Path(__file__).resolve().parent.parent  # its core is built in place
    other = f"ft1@{tree.name}"
    _r, doc, _base = bench(tmp_path, "--clients", f"ft1,ft1@{tree}")
    check_doc(doc, ["ft1", other], "fasttorrent")
    by = {e["client"]: e for e in doc["summary"]}
    assert by[other]["kind"] == "ft" and by[other]["reference"] == "ft1"
    line = _one_line_error(["--clients", f"ft1@{tmp_path}", "--results", str(tmp_path)],
                           _env())
    assert "is not a fasttorrent source tree" in line


@pytest.mark.parametrize(("flag", "value", "why"), [
    ("--size", "inf", "not a size: 'inf'"),
    ("--size", "nan", "not a size: 'nan'"),
    ("--size", "lots", "not a size: 'lots'"),
    ("--size", "-1G", "must be positive: '-1G'"),
    ("--size", "0", "must be positive: '0'"),
    ("--size", "1e300", "too large: '1e300'"),
    ("--piece", "inf", "not a size: 'inf'"),
])
def test_bench_bad_size_is_a_usage_error(tmp_path: Path, flag: str, value: str,
                                         why: str) -> None:
    line = _one_line_error([f"{flag}={value}", "--results", str(tmp_path)], _env())
    assert line.startswith("fasttorrent bench: error: ") and flag in line and why in line
    assert list(tmp_path.iterdir()) == []  # refused before anything ran


def _shm_mapped(pid: int) -> set[str]:
    try:
        with open(f"/proc/{pid}/maps") as f:
            return {ln.split("/dev/shm/", 1)[1].split()[0] for ln in f if "/dev/shm/" in ln}
    except OSError:
        return set()


#: How long the bench may take to stop everything after the signal (seconds).
INTERRUPT_EXIT_TIMEOUT = 180


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_bench_interrupt_mid_run_leaves_nothing(tmp_path: Path, sig: signal.Signals) -> None:
    psutil = require_module("psutil")
    require_module("libtorrent")
    results = tmp_path / "results"
    p = subprocess.Popen(
        # far more runs than can finish before the signal: it always lands mid-bench
        [sys.executable, "-m", "torrent", "bench", "--size", "64M", "--runs", "500",
         "--num-seeders", "2", "--clients", "ft1,ft2", "--timeout", RUN_TIMEOUT,
         "--no-warmup", "--results", str(results)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(p.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    seen: dict[int, float] = {}  # pid -> create time, every descendant ever seen
    shm: set[str] = set()
    try:
        top = psutil.Process(p.pid)
        end = time.monotonic() + BENCH_TIMEOUT
        downloading = False
        while time.monotonic() < end and p.poll() is None and not downloading:
            for c in top.children(recursive=True):
                try:
                    seen.setdefault(c.pid, c.create_time())
                    cmd = c.cmdline()
                except psutil.Error:
                    continue
                shm |= _shm_mapped(c.pid)
                # a download in flight after a first run was reported
                downloading = downloading or (
                    "download" in cmd and any("run 1/" in ln for ln in err))
            time.sleep(0.05)
        assert downloading, "".join(err)[-3000:]
        time.sleep(0.3)  # well inside the run: the arena exists, pieces are moving
        for c in top.children(recursive=True):
            try:
                seen.setdefault(c.pid, c.create_time())
            except psutil.Error:
                continue
            shm |= _shm_mapped(c.pid)
        p.send_signal(sig)
        # bounded, and generous: the run in flight may be inside its os.sync(),
        # which waits for every dirty page of the machine (slow under heavy I/O)
        code = p.wait(timeout=INTERRUPT_EXIT_TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    reader.join(10)
    text = "".join(err)
    assert code == 7, text[-3000:]
    assert "Traceback" not in text
    assert text.strip().splitlines()[-1] == (
        "fasttorrent: bench: interrupted" if sig == signal.SIGINT
        else "fasttorrent: bench: stopped by SIGTERM")
    left = []
    for pid, created in seen.items():
        try:
            q = psutil.Process(pid)
            # a zombie is dead already (waiting for whichever reaper adopted it)
            if q.create_time() == created and q.status() != psutil.STATUS_ZOMBIE:
                left.append((pid, q.status(), q.cmdline()[:6]))
        except psutil.NoSuchProcess:
            pass
    assert not left, f"processes left behind: {left}"
    assert len(seen) >= 3  # seeders and a download were running
    work = [ln.split()[3].rstrip(";") for ln in text.splitlines()
            if ln.startswith("bench: work dir")]
    assert len(work) == 1 and not os.path.exists(work[0])
    assert not [n for n in shm if os.path.exists(f"/dev/shm/{n}")]


def test_a_process_spawned_with_cpus_runs_on_them_and_so_do_its_children() -> None:
    """--client-cpus / --seeder-cpus: taskset before the command, inherited by its forks."""
    from torrent.tools.procs import Processes

    want = sorted(os.sched_getaffinity(0))[-1:]
    code = ("import os, sys\nif os.fork() == 0:\n    print(sorted(os.sched_getaffinity(0)))\n"
            "    sys.stdout.flush(); os._exit(0)\nos.wait()")
    procs = Processes()
    try:
        p = procs.spawn([sys.executable, "-c", code], "pinned", timeout=30,
                        stdout=subprocess.PIPE, cpus=want)
        out, _ = p.popen.communicate(timeout=30)
    finally:
        procs.stop_all()
    assert out.strip() == str(want)


def test_bench_cpu_lists_parse_and_bad_ones_are_usage_errors(tmp_path: Path) -> None:
    import argparse

    from torrent.tools.bench import cpu_list_arg

    assert cpu_list_arg("0") == (0,)
    assert cpu_list_arg("3,0-2,2") == (0, 1, 2, 3)
    for bad in ("", "a", "-1", "2-1", "0-99999", "1,,2"):
        with pytest.raises(argparse.ArgumentTypeError):
            cpu_list_arg(bad)
    line = _one_line_error(["--client-cpus", "4095", "--results", str(tmp_path)], _env())
    assert line.startswith("fasttorrent") and "--client-cpus: CPU 4095 is not one" in line
    line = _one_line_error(["--seeder-cpus", "x", "--results", str(tmp_path)], _env())
    assert "--seeder-cpus" in line and "not a CPU list" in line
    assert list(tmp_path.iterdir()) == []  # refused before anything ran


def test_bench_pinned_client_and_seeders(tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    _r, doc, _base = bench(tmp_path, "--clients", "ft1", "--client-cpus", str(cpus[0]),
                           "--seeder-cpus", str(cpus[-1]))
    check_doc(doc, ["ft1"], "fasttorrent")
    assert doc["params"]["client_cpus"] == [cpus[0]]
    assert doc["params"]["seeder_cpus"] == [cpus[-1]]


def test_bench_torrent_version_refuses_clients_and_modes_it_cannot_run(tmp_path: Path) -> None:
    line = _one_line_error(["--torrent-version", "v2", "--clients", "ft1,aria2", "--results",
                            str(tmp_path)], _env())
    assert "aria2" in line and "v2-only" in line
    line = _one_line_error(["--torrent-version", "hybrid", "--magnet", "--clients", "ft1",
                            "--results", str(tmp_path)], _env())
    assert "--torrent-version" in line and "--magnet" in line
    assert not any(tmp_path.glob("*.json"))
