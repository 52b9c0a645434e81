"""A machine without IPv6, faked in-process: AF_INET6 sockets are refused.

A kernel booted with ``ipv6.disable=1`` refuses ``socket(AF_INET6, ...)``
outright with EAFNOSUPPORT; :func:`refuse_ipv6` makes ``socket.socket`` do
the same for the rest of a test (through pytest's ``monkeypatch``), IPv4
sockets unchanged.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest


def refuse_ipv6(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on in this test, ``socket.socket(AF_INET6, ...)`` fails as without IPv6."""
    real = socket.socket

    def no_ipv6(family: int = socket.AF_INET, *args: Any, **kwargs: Any) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, *args, **kwargs)

    monkeypatch.setattr(socket, "socket", no_ipv6)
