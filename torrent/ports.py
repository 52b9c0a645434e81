"""A free port on a local address, for a listener that must know its port before it binds.

The port is free when this returns; another process may still take it
before the caller binds (callers that cannot afford that retry, or pass
port 0 to a listener that reports the port it got).
"""

from __future__ import annotations

import socket

from .errors import ResourceExhausted

__all__ = ["FREE_PORT_TRIES", "free_port"]

#: How many ports the kernel is asked for before giving up on one that is
#: also free for UDP (a port free for TCP is almost always free for UDP).
FREE_PORT_TRIES = 50


def free_port(host: str = "127.0.0.1", *, udp: bool = False) -> int:
    """A TCP port nobody listens on at ``host`` now, chosen by the kernel.

    Args:
        host: the local address the port will be bound on.
        udp: the port must also be free for UDP on ``host`` (a server on both).

    Raises:
        OSError: ``host`` cannot be bound (not a local address).
        ResourceExhausted: no port free for both TCP and UDP after
            :data:`FREE_PORT_TRIES` tries.
    """
    for _ in range(FREE_PORT_TRIES):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((host, 0))
            port = int(t.getsockname()[1])
            if not udp:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((host, port))
                except OSError:
                    continue
                return port
    raise ResourceExhausted(f"no port free for both TCP and UDP on {host}")
