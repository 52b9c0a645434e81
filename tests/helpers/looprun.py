"""Run the ``fasttorrent`` CLI with its any-addresses replaced by the loopback ones.

    python tests/helpers/looprun.py seed TORRENT DIR --bind "" ...

The default ``--bind`` listens on every address of both families
(:data:`torrent.ports.ANY_HOSTS`: ``0.0.0.0`` and ``::``).  A test must
not listen beyond loopback, so this wrapper makes the same code path
listen on ``127.0.0.1`` and ``::1``: two sockets per worker, one of each
family, exactly as the default does.  The sockets are made in the worker
processes. The CLI forks them from this process
(:func:`torrent.launch.fork_child`), and they inherit the patched constant;
where it cannot fork they are fresh interpreters, so for those the
coordinator's :func:`~torrent.launch.start_child` is replaced by one that
starts :func:`worker_main` of this module, which patches the constant in the
child and runs the real worker (as tests/helpers/pexrun.py does).  The
package itself carries no hook for any of it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

#: The loopback stand-ins of ("0.0.0.0", "::").
LOOPBACK_HOSTS = ("127.0.0.1", "::1")
#: The worker entry point the coordinator starts, and this module's stand-in.
REAL_TARGET = "torrent.workerhost:host_main"
OUR_TARGET = "looprun:worker_main"


def worker_main(cfg: Any, conn: Any) -> None:
    """A worker process: the real one, listening on the loopback addresses."""
    from torrent import ports, workerhost

    ports.ANY_HOSTS = LOOPBACK_HOSTS
    workerhost.host_main(cfg, conn)


def install() -> None:
    """Make this process's coordinator start workers that listen on loopback only."""
    from torrent import launch, pool, ports

    here = os.path.dirname(os.path.abspath(__file__))
    old = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = here + (os.pathsep + old if old else "")
    ports.ANY_HOSTS = LOOPBACK_HOSTS
    real = launch.start_child

    def start_child(target: str, **kwargs: Any) -> Any:
        return real(OUR_TARGET if target == REAL_TARGET else target, **kwargs)

    pool.start_child = start_child  # type: ignore[assignment]


def main() -> int:
    install()
    from torrent import cli

    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
