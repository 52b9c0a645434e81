"""Targets for children started by torrent/launch.py in tests: they import nothing else."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["echo"]


def echo(arg: Any, conn: Any) -> None:
    """Answer ``(arg, modules, main)`` once, then echo every message until EOF."""
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    conn.send((arg, sorted(sys.modules), spec.name if spec is not None else None))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        conn.send(msg)
