"""Local ports and addresses: a free port for a listener, and whether an address is ours.

:func:`free_port`: the port is free when it returns; another process may
still take it before the caller binds (callers that cannot afford that
retry, or pass port 0 to a listener that reports the port it got).

:func:`is_local_address`: whether a peer address names this machine, so
that we never put ourselves in our own peer table.
"""

from __future__ import annotations

import ipaddress
import socket

from .errors import ResourceExhausted

__all__ = ["FREE_PORT_TRIES", "free_port", "is_local_address"]

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


def is_local_address(host: str) -> bool:
    """Whether ``host`` is an IP address a connection to which reaches this machine.

    Loopback addresses, the unspecified address (a connect to ``0.0.0.0``
    reaches the local host) and every address of a local interface count,
    and so does the IPv4-mapped IPv6 form of each of them (``::ffff:127.0.0.1``:
    a dial to it reaches an IPv4 listener).  A peer list may name us in any
    of these forms: libtorrent's PEX lists the receiver itself, at the address
    it sees it from.  Hostnames are not resolved: False.

    The interfaces are asked the simplest way: the kernel lets a socket bind
    an address only if it is one of this machine's.
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback or ip.is_unspecified:
        return True
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((str(ip), 0))
    except OSError:  # EADDRNOTAVAIL: not ours (or no IPv6 here: not ours either)
        return False
    return True
