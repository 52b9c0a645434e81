"""Run in a fresh, single-threaded interpreter by tests/test_spawn_main.py: fork or
start one child (torrent/launch.py) the way the CLI's coordinator does, and print
what it reports as one JSON line.

    python -m helpers.forkdriver fork|exec
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile

from torrent.launch import can_fork, fork_child, send_fd, start_child

TIMEOUT = 30


def main(mode: str) -> dict[str, object]:
    # What a CLI process may hold when it starts its workers: a file of its own,
    # and a logging handler writing to it. Neither may reach the child.
    held = tempfile.TemporaryFile()
    logging.getLogger("fasttorrent-test").addHandler(logging.StreamHandler(held))
    single = can_fork()
    if mode == "fork":
        proc, conn = fork_child("helpers.childprobe:describe", name="probe")
    else:
        proc, conn = start_child("helpers.childprobe:describe", name="probe")
    memfd = os.memfd_create("probe")
    os.write(memfd, b"arena bytes")
    conn.send("fd")
    send_fd(conn, memfd)
    os.close(memfd)
    if not conn.poll(TIMEOUT):
        raise SystemExit("no answer from the child")
    report = conn.recv()
    survived = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        os.kill(proc.pid, sig)
        conn.send(sig.name)
        if conn.poll(TIMEOUT) and conn.recv() == sig.name:
            survived.append(sig.name)
    conn.close()  # EOF: it leaves by itself
    proc.join(TIMEOUT)
    return {"can_fork": single, "report": report, "survived": survived,
            "exitcode": proc.exitcode, "held_fd": held.fileno()}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])), flush=True)
