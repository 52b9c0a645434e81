"""The fuzz targets (tests/fuzz/) as tests: the regression corpus, and a short fuzzing run each.

- Every input of every target's corpus (``tests/fuzz/corpus/<target>/``: the
  seeds of ``make_corpus.py`` and the crashers found and fixed since) goes
  through the target's ``TestOneInput`` in this process: fast, deterministic,
  no atheris needed.  The wire corpus runs on the compiled kernels and on
  their pure twins.
- The seeds on disk are exactly what ``make_corpus.py`` writes.
- Each target fuzzes for a moment under atheris in a subprocess, bounded in
  runs, in fuzzing time and in wall-clock time, on the pure twins (what
  atheris can see): it must exit 0 having executed its runs, leaving no
  crash artifact.  A missing atheris skips on a developer machine and fails
  under ``CI=true`` (it is in the ``test`` extra).
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import require_module

FUZZ = Path(__file__).resolve().parent / "fuzz"
CORPUS = FUZZ / "corpus"
ROOT = FUZZ.parent.parent
if str(FUZZ) not in sys.path:
    sys.path.insert(0, str(FUZZ))

TARGETS = sorted(p.stem.removeprefix("fuzz_") for p in FUZZ.glob("fuzz_*.py"))
#: Bound on the whole committed corpus (it is test data in the repository).
MAX_CORPUS_BYTES = 1 << 20
#: A smoke run: at most this many executions ...
SMOKE_RUNS = 2000
#: ... and this many seconds of fuzzing (libFuzzer's own limit) ...
SMOKE_SECONDS = 4
#: ... and the subprocess is killed after this many (start-up and instrumentation included).
SMOKE_TIMEOUT = 90
#: libFuzzer's per-input time limit in the smoke run (seconds): a slow input is a hang.
INPUT_TIMEOUT = 10
#: libFuzzer's memory limit in the smoke run (MB): an unbounded allocation is a crash.
RSS_LIMIT_MB = 1024


def target(name: str) -> ModuleType:
    return importlib.import_module(f"fuzz_{name}")


def corpus(name: str) -> list[Path]:
    return sorted(p for p in (CORPUS / name).iterdir() if p.is_file())


def replay(name: str) -> int:
    """Run every corpus input of ``name`` through its target; the number run."""
    mod = target(name)
    files = corpus(name)
    for path in files:
        try:
            mod.TestOneInput(path.read_bytes())
        except Exception as exc:
            raise AssertionError(f"{name}: {path.name} fails: {exc!r}") from exc
    return len(files)


def test_every_target_has_a_small_corpus() -> None:
    assert TARGETS == ["bencode", "extension", "journal", "magnet", "metainfo", "tracker_http",
                       "tracker_udp", "wire"]
    assert sorted(p.name for p in CORPUS.iterdir() if p.is_dir()) == TARGETS
    for name in TARGETS:
        assert len(corpus(name)) >= 15, name
    total = sum(p.stat().st_size for name in TARGETS for p in corpus(name))
    assert total < MAX_CORPUS_BYTES


@pytest.mark.parametrize("name", TARGETS)
def test_corpus_replays(name: str) -> None:
    assert replay(name) == len(corpus(name))


@pytest.fixture(params=["native", "pure"])
def kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """One kernel module for the framer, the fast path, the picker and the harness."""
    module = require_module("torrent._fast" if request.param == "native" else "torrent._pure")
    from torrent import picker
    from torrent.wire import framing, peer

    for mod in (framing, peer, picker, target("wire")):
        monkeypatch.setattr(mod, "_k", module)
    return str(request.param)


def test_wire_corpus_replays_on_both_kernels(kernels: str) -> None:
    wire = target("wire")
    taken = 0
    for path in corpus("wire"):
        wire.TestOneInput(path.read_bytes())
        taken += wire.run(path.read_bytes(), fast=True)[2]
    assert taken > 100, "the corpus no longer drives the block fast path"


def test_seeds_are_what_make_corpus_writes() -> None:
    make_corpus = importlib.import_module("make_corpus")
    for name in TARGETS:
        seeds = make_corpus.TARGETS[name]()
        on_disk = {p.name.removeprefix("seed-"): p.read_bytes()
                   for p in corpus(name) if p.name.startswith("seed-")}
        assert on_disk == seeds, f"{name}: run python tests/fuzz/make_corpus.py"


@pytest.mark.parametrize("name", TARGETS)
def test_smoke_run_under_atheris(name: str, tmp_path: Path) -> None:
    require_module("atheris")
    new = tmp_path / "new"  # inputs the run finds go here, never into the committed corpus
    new.mkdir()
    env = dict(os.environ, FASTTORRENT_PURE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, str(FUZZ / f"fuzz_{name}.py"), "-seed=1",
           f"-runs={SMOKE_RUNS}", f"-max_total_time={SMOKE_SECONDS}",
           f"-timeout={INPUT_TIMEOUT}", f"-rss_limit_mb={RSS_LIMIT_MB}",
           f"-artifact_prefix={tmp_path}/", str(new), str(CORPUS / name)]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=SMOKE_TIMEOUT, check=False)
    log = r.stderr[-6000:]
    assert r.returncode == 0, log
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("timeout-*")), log
    done = re.search(r"^Done (\d+) runs in ", r.stderr, re.M)
    assert done is not None, log
    assert int(done.group(1)) >= len(corpus(name)), log
    assert "Instrumenting torrent." in r.stderr, "atheris saw no package code"
