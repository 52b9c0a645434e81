"""The library works whatever way its caller was started: workers never import ``__main__``.

The README's library example runs as a script without an ``if __name__ ==
"__main__":`` guard, through stdin (``python - < script.py``), with ``python
-c``, and in the interactive interpreter fed from a pipe (``python -i``); each
downloads a small multi-file torrent from a local ``fasttorrent seed`` on
127.0.0.1, and the files must come out identical.  Every snippet also
appends a line to a marker file when it runs: a child process that
re-imported the caller's main module (as multiprocessing's spawn method
does) would run it again, so the marker must hold exactly one line.  The
hash workers (``verify``, ``create``) are checked the same way from a
script without a guard.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.payload import tree_bytes, write_tree

from torrent.creator import create_torrent
from torrent.launch import start_child

pytestmark = pytest.mark.timeout(180)

TREE = {"a.bin": 600_001, "sub/b.bin": 900_000, "sub/c.txt": 17}
PIECE = 32 * 1024
#: Bound on one snippet's run (a download of 1.5 MB takes about a second).
RUN_TIMEOUT = 60
#: The seeder exits by itself after this long, even if the test run dies.
SEED_LIFETIME = 300


class Seeder:
    """``fasttorrent seed`` on 127.0.0.1, stopped with SIGINT."""

    def __init__(self, torrent: Path, data: Path) -> None:
        self.proc = subprocess.Popen(
            ["timeout", str(SEED_LIFETIME), sys.executable, "-m", "torrent", "seed",
             str(torrent), str(data), "--bind", "127.0.0.1", "--workers", "1",
             "--no-trackers", "-q"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        line = self.proc.stdout.readline()  # "seeding on port P", after the data check
        if not line.startswith("seeding on port "):
            self.stop()
            raise AssertionError(line + self.proc.stderr.read())
        self.port = int(line.split()[-1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for s in (self.proc.stdout, self.proc.stderr):
            if s is not None:
                s.close()


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, int]]:
    """(torrent, the payload's directory, the seeder's port)."""
    root = tmp_path_factory.mktemp("mainless")
    src = root / "src" / "tree"
    write_tree(src, TREE, seed=5)
    torrent = root / "t.torrent"
    torrent.write_bytes(create_torrent(str(src), piece_length=PIECE, creation_date=1))
    seeder = Seeder(torrent, src.parent)
    try:
        yield torrent, src, seeder.port
    finally:
        seeder.stop()


def readme_example(torrent: Path, out: Path, port: int, marker: Path) -> str:
    """The README's "As a library" example, plus the marker line (and loopback only)."""
    return textwrap.dedent(f"""\
        open({str(marker)!r}, "a").write("ran\\n")
        from torrent.coordinator import download
        from torrent import metainfo
        meta = metainfo.load({str(torrent)!r})
        result = download({str(torrent)!r}, {str(out)!r}, workers=2,
                          peers=[("127.0.0.1", {port})], bind="127.0.0.1")
        print(result.to_json_dict())
        """)


def run_snippet(mode: str, code: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` the way ``mode`` says, in ``workdir``, bounded by RUN_TIMEOUT."""
    script = workdir / "example.py"
    script.write_text(code)
    common: dict[str, Any] = {"capture_output": True, "text": True, "timeout": RUN_TIMEOUT,
                              "cwd": workdir}
    if mode == "script":
        return subprocess.run([sys.executable, str(script)], check=False, **common)
    if mode == "stdin":
        with open(script) as f:
            return subprocess.run([sys.executable, "-"], stdin=f, check=False, **common)
    if mode == "dash-c":
        return subprocess.run([sys.executable, "-c", code], check=False, **common)
    assert mode == "interactive"
    # the interactive interpreter, reading the lines from a pipe
    return subprocess.run([sys.executable, "-i"], input=code, check=False, **common)


def printed_dict(stdout: str) -> dict[str, Any]:
    """The dict the snippet printed (the REPL may put a prompt in front of it)."""
    for line in stdout.splitlines():
        i = line.find("{'info_hash'")
        if i >= 0:
            return ast.literal_eval(line[i:])  # type: ignore[no-any-return]
    raise AssertionError(f"no result printed: {stdout!r}")


@pytest.mark.parametrize("mode", ["script", "stdin", "dash-c", "interactive"])
def test_readme_example_downloads_without_a_main_guard(
        swarm: tuple[Path, Path, int], tmp_path: Path, mode: str) -> None:
    torrent, src, port = swarm
    out = tmp_path / "out"
    marker = tmp_path / "ran.txt"
    r = run_snippet(mode, readme_example(torrent, out, port, marker), tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    result = printed_dict(r.stdout)
    assert result["complete"] is True, r.stderr
    assert [w["alive"] for w in result["workers"]] == [True, True]
    assert tree_bytes(out / "tree") == tree_bytes(src)
    assert marker.read_text() == "ran\n"  # no child ran the caller's main module


HASH_SCRIPT = """\
open({marker!r}, "a").write("ran\\n")
import json
import torrent.hashing
from torrent import metainfo
from torrent.creator import create_torrent
from torrent.verifier import verify_data

torrent.hashing.CHUNK_BYTES = 4 * {piece}  # several chunks, so both workers get some
meta = metainfo.load({torrent!r})
good = verify_data(meta, {good!r}, workers=2)
bad = verify_data(meta, {bad!r}, workers=2)
made = create_torrent({tree!r}, piece_length={piece}, workers=2, creation_date=1)
same = made == open({torrent!r}, "rb").read()
print(json.dumps({{"good": good.to_json_dict(), "bad": bad.to_json_dict(), "same": same}}))
"""


def test_hash_workers_run_from_a_script_without_a_main_guard(
        swarm: tuple[Path, Path, int], tmp_path: Path) -> None:
    torrent, src, _port = swarm
    bad = tmp_path / "bad"
    write_tree(bad / "tree", TREE, seed=5)
    target = bad / "tree" / "sub" / "b.bin"
    data = bytearray(target.read_bytes())
    data[100_000] ^= 0xFF  # b.bin starts at byte 600_001: piece (600_001 + 100_000) // PIECE
    target.write_bytes(bytes(data))
    marker = tmp_path / "ran.txt"
    code = HASH_SCRIPT.format(marker=str(marker), torrent=str(torrent), good=str(src.parent),
                              bad=str(bad), tree=str(src), piece=PIECE)
    r = run_snippet("script", code, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["good"]["complete"] is True
    assert len(res["good"]["workers"]) == 2
    assert all(w["pieces"] > 0 for w in res["good"]["workers"]), res["good"]["workers"]
    assert res["bad"]["bad_pieces"] == [(600_001 + 100_000) // PIECE]
    assert res["same"] is True  # create with two hash workers: the same torrent
    assert marker.read_text() == "ran\n"


# -- the launch itself (torrent/launch.py) ------------------------------------------------------

#: Modules a child must never load: the multiprocessing bootstrap (it is what
#: re-imports __main__) and the parent's side of fasttorrent.
NEVER_IN_A_CHILD = ("multiprocessing.spawn", "multiprocessing.popen_spawn_posix",
                    "multiprocessing.resource_tracker", "torrent.coordinator", "torrent.cli")


def test_a_child_imports_only_its_target_and_answers(tests_on_path: None) -> None:
    proc, conn = start_child("helpers.childprobe:echo", name="probe")
    try:
        conn.send({"x": 1})
        assert conn.poll(RUN_TIMEOUT)
        arg, modules, main = conn.recv()
        assert arg == {"x": 1}
        assert main == "torrent.launch"  # __main__ is the launcher, never the caller's
        assert [m for m in NEVER_IN_A_CHILD if m in modules] == []
        assert "helpers.childprobe" in modules
    finally:
        conn.close()
        proc.join(RUN_TIMEOUT)
    assert proc.exitcode == 0  # EOF on its control connection: it left by itself


def test_a_child_ignores_sigint_and_sigterm_and_can_be_killed(tests_on_path: None) -> None:
    proc, conn = start_child("helpers.childprobe:echo", name="probe")
    try:
        conn.send(None)
        assert conn.poll(RUN_TIMEOUT)
        conn.recv()  # it runs (and has set its signal dispositions)
        for sig in (signal.SIGINT, signal.SIGTERM):
            os.kill(proc.pid, sig)
            conn.send(sig.name)
            assert conn.poll(RUN_TIMEOUT)
            assert conn.recv() == sig.name  # still answering
        assert proc.is_alive() and proc.exitcode is None
        proc.kill()
        proc.join(RUN_TIMEOUT)
        assert not proc.is_alive()
        assert proc.exitcode == -signal.SIGKILL
        proc.kill()  # once exited: nothing happens
    finally:
        conn.close()


@pytest.mark.parametrize("pidfd", [True, False])
def test_exited_waits_for_the_child_on_the_loop(tests_on_path: None, pidfd: bool,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``Child.exited``: False while the child runs (the bound is over), True once it has
    exited, woken by its pidfd or, on a kernel without one, by polling."""
    import asyncio

    if not pidfd:
        def no_pidfd(pid: int) -> int:
            raise OSError(38, "Function not implemented")

        monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    proc, conn = start_child("helpers.childprobe:echo", name="probe")
    try:
        conn.send(None)
        assert conn.poll(RUN_TIMEOUT)
        conn.recv()  # it runs, and waits for its next message

        async def both() -> tuple[bool, bool]:
            running = await proc.exited(0.05)
            conn.close()  # EOF: it leaves by itself
            return running, await proc.exited(RUN_TIMEOUT)

        assert asyncio.run(both()) == (False, True)
        assert proc.exitcode == 0
    finally:
        conn.close()
        proc.kill()


# -- forked workers, and descriptors sent later (the CLI's way) ----------------------------------


def _drive(mode: str) -> dict[str, Any]:
    """Run helpers/forkdriver.py in a fresh single-threaded interpreter, as the CLI runs."""
    tests = str(Path(__file__).parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([tests, *filter(None, [env.get("PYTHONPATH")])])
    out = subprocess.run([sys.executable, "-m", "helpers.forkdriver", mode], env=env,
                         cwd=tests, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                         check=False)
    assert out.returncode == 0, out.stderr
    res: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return res


@pytest.mark.parametrize("mode", ["fork", "exec"])
def test_a_child_holds_only_stdio_and_its_connection_and_gets_a_later_descriptor(
        mode: str) -> None:
    res = _drive(mode)
    assert res["can_fork"] is True  # the driver runs one thread, as the CLI does
    rep = res["report"]
    fds = {int(k): v for k, v in rep["fds"].items()}
    assert fds[0] == "/dev/null"
    # stdio, its connection, and nothing else: not the parent's file (held_fd), not
    # the memfd it was sent (closed after reading), not its parent's end
    others = {k: v for k, v in fds.items() if k > 2 and not v.endswith("/fd")}
    assert len(others) == 1 and next(iter(others.values())).startswith("socket:"), fds
    assert rep["got"] == "arena bytes"
    assert rep["handlers"] == 0  # the parent's logging handler writes to a file it lacks
    assert res["survived"] == ["SIGINT", "SIGTERM"]
    assert res["exitcode"] == 0  # EOF on its connection: it left by itself
    assert rep["pid"] != os.getpid()


def test_can_fork_is_false_while_another_thread_runs() -> None:
    import threading

    from torrent.launch import can_fork

    stop = threading.Event()
    t = threading.Thread(target=stop.wait, args=(RUN_TIMEOUT,))
    t.start()
    try:
        assert can_fork() is False
    finally:
        stop.set()
        t.join(RUN_TIMEOUT)


def test_prestarted_workers_fall_back_to_fresh_interpreters_when_threads_run() -> None:
    import threading

    from torrent.coordinator import PrestartedWorkers

    stop = threading.Event()
    t = threading.Thread(target=stop.wait, args=(RUN_TIMEOUT,))
    t.start()
    try:
        pool = PrestartedWorkers(2, fork=True)
    finally:
        stop.set()
        t.join(RUN_TIMEOUT)
    procs = [p for p, _c in pool.children]
    assert pool.forked is False and len(procs) == 2
    pool.close()  # EOF: each waiting worker exits by itself, and is reaped
    assert pool.children == []
    assert [p.exitcode for p in procs] == [0, 0]


def test_prestarted_workers_started_later_keep_a_deferred_failure_for_the_caller(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from torrent import pool as workerpool
    from torrent.errors import ResourceExhausted

    def no_process(target: str, *, name: str) -> Any:
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))

    monkeypatch.setattr(workerpool, "start_child", no_process)
    pool = workerpool.PrestartedWorkers(2, start=False)
    assert pool.children == [] and not pool.started  # nothing until asked
    pool.start(defer_error=True)  # as on the fetch's loop: nothing raised there
    assert pool.started and pool.children == []
    with pytest.raises(ResourceExhausted, match="cannot start worker 0"):
        pool.start()  # the caller hears of it
    pool.start()  # once
    assert pool.children == []


def test_recv_fd_at_eof_is_eoferror() -> None:
    import socket
    from multiprocessing.connection import Connection

    from torrent.launch import recv_fd

    a, b = socket.socketpair()
    a.close()
    with pytest.raises(EOFError):
        recv_fd(Connection(b.detach()))
