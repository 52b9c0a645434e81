"""Parity of a compiled kernel (torrent._fast) and its pure twin (torrent._pure).

What parity compares: the result of a call, or the type of what it raised.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torrent import _fast, _pure

__all__ = ["both", "outcome"]


def outcome(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """The result of a call, or the type of what it raised: what parity compares."""
    try:
        return ("ok", fn(*args))
    except Exception as exc:
        return ("raised", type(exc))


def both(name: str, *args: Any) -> tuple[str, Any]:
    """Call kernel ``name`` in both modules, assert they agree, return the outcome."""
    fast = outcome(getattr(_fast, name), *args)
    pure = outcome(getattr(_pure, name), *args)
    assert fast == pure, f"{name}{args!r:.200}: fast {fast!r:.200} != pure {pure!r:.200}"
    return fast
