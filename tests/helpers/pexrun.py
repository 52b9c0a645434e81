"""Run the ``fasttorrent`` CLI with a shorter PEX interval (BEP 11 says a minute).

    python tests/helpers/pexrun.py SECONDS seed TORRENT DIR ...

A test cannot wait a minute for fasttorrent's first PEX message to a peer,
so this wrapper sets :data:`torrent.worker.PEX_INTERVAL` to SECONDS where it
is read: in the worker processes.  The CLI forks them from this process
(:func:`torrent.launch.fork_child`), and they inherit the patched constant;
where it cannot fork they are fresh interpreters, so for those the
coordinator's :func:`~torrent.launch.start_child` is replaced
by one that starts :func:`worker_main` of this module instead of
:func:`torrent.workerhost.host_main`; it patches the constant in the child and
runs the real worker.  The interval reaches the children in the environment
(:data:`INTERVAL_ENV`), this module through ``PYTHONPATH``.  The package
itself carries no hook for any of it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

#: The environment variable that carries SECONDS to the worker processes.
INTERVAL_ENV = "PEXRUN_INTERVAL"
#: The worker entry point the coordinator starts, and this module's stand-in.
REAL_TARGET = "torrent.workerhost:host_main"
OUR_TARGET = "pexrun:worker_main"


def worker_main(cfg: Any, conn: Any) -> None:
    """A worker process: the real one, with PEX_INTERVAL from the environment."""
    from torrent import worker, workerhost

    worker.PEX_INTERVAL = float(os.environ[INTERVAL_ENV])
    workerhost.host_main(cfg, conn)


def install(seconds: float) -> None:
    """Make this process's coordinator start workers whose PEX interval is ``seconds``."""
    from torrent import launch, pool, worker

    os.environ[INTERVAL_ENV] = repr(seconds)
    here = os.path.dirname(os.path.abspath(__file__))
    old = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = here + (os.pathsep + old if old else "")
    worker.PEX_INTERVAL = seconds  # and here, should anything read it in this process
    real = launch.start_child

    def start_child(target: str, **kwargs: Any) -> Any:
        return real(OUR_TARGET if target == REAL_TARGET else target, **kwargs)

    pool.start_child = start_child  # type: ignore[assignment]


def main() -> int:
    try:
        seconds = float(sys.argv[1])
    except (IndexError, ValueError):
        print("usage: pexrun.py SECONDS fasttorrent-arguments...", file=sys.stderr)
        return 2
    install(seconds)
    from torrent import cli

    return cli.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
