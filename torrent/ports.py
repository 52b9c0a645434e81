"""Local ports and addresses: a free port, the listening sockets, whether an address is ours.

:func:`free_port`: the port is free when it returns; another process may
still take it before the caller binds (callers that cannot afford that
retry, or pass port 0 to a listener that reports the port it got).  For
``host`` ``""`` (every address of both families) it is free on IPv4 and
IPv6 alike: the kernel picks it for a dual-stack socket.

:func:`listen_sockets`: a worker's listening sockets, one per family it
listens on (:func:`listen_hosts`), each with ``SO_REUSEPORT`` so that every
worker listens on the same port.  Two sockets, an IPv4 one and an IPv6 one
with ``IPV6_V6ONLY`` set, rather than one dual-stack socket: a peer's
address then reads the same whichever way it came (``10.0.0.1``, not
``::ffff:10.0.0.1``), a machine without IPv6 (``ipv6.disable=1``, common in
containers) still listens on IPv4, and the ``net.ipv6.bindv6only`` sysctl
changes nothing.

:func:`is_local_address`: whether a peer address names this machine, so
that we never put ourselves in our own peer table.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from .errors import ResourceExhausted, UsageError
from .peeraddr import format_peer

__all__ = ["ANY_HOSTS", "FREE_PORT_TRIES", "NO_IPV6_ERRNOS", "free_port", "is_local_address",
           "listen_hosts", "listen_sockets"]

#: What ``--bind ""`` (the default) listens on: every IPv4 and every IPv6 address.
ANY_HOSTS = ("0.0.0.0", "::")

#: Why an IPv6 socket cannot be had on a machine without IPv6: the default
#: ``--bind`` then listens on IPv4 alone.
NO_IPV6_ERRNOS = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT)

#: How many ports the kernel is asked for before giving up on one that is
#: also free for UDP (a port free for TCP is almost always free for UDP).
FREE_PORT_TRIES = 50


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _probe(host: str, kind: socket.SocketKind, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (``""``: dual-stack ``::``, else IPv4 any if no IPv6)."""
    if host == "":
        try:
            s = socket.socket(socket.AF_INET6, kind)
        except OSError as e:
            if e.errno not in NO_IPV6_ERRNOS:
                raise
        else:
            try:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                s.bind(("::", port))  # the port is then taken on IPv4 too
                return s
            except OSError as e:
                s.close()
                if e.errno not in NO_IPV6_ERRNOS:
                    raise
        host = "0.0.0.0"
    s = socket.socket(_family(host), kind)
    try:
        s.bind((host, port))
    except OSError:
        s.close()
        raise
    return s


def free_port(host: str = "127.0.0.1", *, udp: bool = False) -> int:
    """A TCP port nobody listens on at ``host`` now, chosen by the kernel.

    Args:
        host: the local address the port will be bound on (IPv4 or IPv6);
            ``""``: every address of both families (a port free on both).
        udp: the port must also be free for UDP on ``host`` (a server on both).

    Raises:
        OSError: ``host`` cannot be bound (not a local address).
        ResourceExhausted: no port free for both TCP and UDP after
            :data:`FREE_PORT_TRIES` tries.
    """
    for _ in range(FREE_PORT_TRIES):
        with _probe(host, socket.SOCK_STREAM, 0) as t:
            port = int(t.getsockname()[1])
            if not udp:
                return port
            try:
                _probe(host, socket.SOCK_DGRAM, port).close()
            except OSError:
                continue
            return port
    raise ResourceExhausted(f"no port free for both TCP and UDP on {host or '*'}")


def listen_hosts(bind: str) -> tuple[str, ...]:
    """The addresses ``--bind`` listens on: both any-addresses for ``""``, else ``bind``."""
    return ANY_HOSTS if bind == "" else (bind,)


def listen_sockets(bind: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening TCP sockets on ``port`` for ``bind`` (see :func:`listen_hosts`), each
    with ``SO_REUSEPORT`` (every worker of a run listens on the same port).

    With the default ``bind`` (``""``), a machine without IPv6 listens on
    IPv4 alone; an address given explicitly must be bound.

    Raises:
        UsageError: an address cannot be bound (not one of this machine's, the
            port taken by another program): one line naming it and why.
    """
    out: list[socket.socket] = []
    for host in listen_hosts(bind):
        fam = _family(host)
        try:
            sock = socket.socket(fam, socket.SOCK_STREAM)
        except OSError as e:
            if bind == "" and e.errno in NO_IPV6_ERRNOS:
                continue
            raise UsageError(f"cannot listen on {host}: {e.strerror or e}") from None
        try:
            if fam == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(backlog)
        except OSError as e:
            sock.close()
            if bind == "" and fam == socket.AF_INET6 and e.errno in NO_IPV6_ERRNOS:
                continue
            for s in out:
                s.close()
            raise UsageError(f"cannot listen on {format_peer(host, port)}: "
                             f"{e.strerror or e}") from None
        out.append(sock)
    return out


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
