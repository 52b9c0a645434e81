"""Peer addresses, IPv4 and IPv6: the canonical form, the compact form, ``HOST:PORT`` text.

Sans-IO: nothing here touches a socket.

Theory of operation
-------------------
A peer is ``(host, port)`` everywhere in fasttorrent.  Peers arrive from
trackers (BEP 3, 7, 15, 23), PEX (BEP 11), magnets (``x.pe``), ``--peer``,
accepted sockets and the DHT, each in its own spelling; one peer must be
one record in the coordinator's table and one ban, whatever spelling a
source used.  So every address is made *canonical* once, where it enters:

- an IP literal in Python's compressed form (``2001:db8::1``, lower case);
- an IPv4-mapped IPv6 address (``::ffff:10.0.0.1``: how a dual-stack
  socket, or a v6 peer list, names an IPv4 peer) becomes the IPv4 address:
  a dial to it reaches the same listener;
- a DNS name (BEP 3 dictionary peer lists, ``--peer``, ``x.pe``) is kept,
  in lower case, if it is a valid name.

The *compact* form (BEP 23 for IPv4, BEP 7 / BEP 11 / BEP 15 for IPv6) is
the address's 4 or 16 bytes followed by the port, big-endian: 6 or 18 bytes
a peer.  :func:`pack_compact` and :func:`unpack_compact` are the only
implementation of it; every codec (tracker answers, ut_pex) calls them and
translates their ``ValueError`` into its own error, naming the field.
:func:`unpack_compact` decodes at most ``limit`` entries, so a hostile list
of any length costs no more than the bound its caller set.

``HOST:PORT`` text (``--peer``, ``x.pe``) writes an IPv6 address in
brackets, ``[2001:db8::1]:6881`` (RFC 3986 §3.2.2): :func:`parse_hostport`
and :func:`format_peer`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Final

__all__ = [
    "COMPACT_V4",
    "COMPACT_V6",
    "Address",
    "ban_key",
    "canonical_ip",
    "compact_count",
    "family",
    "format_peer",
    "is_loopback",
    "normalize_peer",
    "pack_compact",
    "pack_compact_list",
    "parse_hostport",
    "unpack_compact",
]

#: A compact IPv4 peer: 4 address bytes, 2 port bytes, big-endian (BEP 23).
COMPACT_V4: Final = 6
#: A compact IPv6 peer: 16 address bytes, 2 port bytes, big-endian (BEP 7).
COMPACT_V6: Final = 18

#: (host, port): the host an IP literal in canonical form, or a DNS name.
Address = tuple[str, int]

# RFC 1123 host names: labels of letters, digits and hyphens, not starting or
# ending with a hyphen, at most 63 characters; at most 253 in all.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")
_PORT = re.compile(r"[0-9]{1,5}\Z")
#: Longest ``HOST:PORT`` text we read: a DNS name (253) with a port, or a
#: bracketed IPv6 address with a zone; anything longer is refused unread.
MAX_HOSTPORT_LENGTH: Final = 300


def _valid_hostname(host: str) -> bool:
    if not host or len(host) > 253:
        return False
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if not all(_LABEL.match(label) for label in labels):
        return False
    # An all-numeric last label is a mangled IP address, not a name (RFC 3696 §2).
    return not labels[-1].isdigit()


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` as an address (an IPv4-mapped IPv6 one as IPv4), None if not an IP literal."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def canonical_ip(host: str) -> str | None:
    """The canonical text of an IP literal (IPv4-mapped IPv6 as IPv4); None if not one."""
    addr = _ip(host)
    return None if addr is None else str(addr)


def family(host: str) -> int | None:
    """4 or 6 for an IP literal (an IPv4-mapped one is 4), None for anything else."""
    addr = _ip(host)
    return None if addr is None else addr.version


def is_loopback(host: str) -> bool:
    """``host`` is a loopback address (127.0.0.0/8, ``::1``, or 127/8 mapped into IPv6)."""
    addr = _ip(host)
    return addr is not None and addr.is_loopback


def normalize_peer(host: str, port: int) -> Address | None:
    """A canonical ``(host, port)``, or None if the peer is unusable.

    Dropped: a port outside 1..65535, an unspecified or multicast address
    (nobody listens there), anything that is neither an IP literal nor a
    valid host name.  An IPv4-mapped IPv6 address becomes the IPv4 one; a
    host name is kept in lower case.
    """
    if not 0 < port <= 0xFFFF:
        return None
    addr = _ip(host)
    if addr is None:
        return (host.lower(), port) if _valid_hostname(host) else None
    if addr.is_unspecified or addr.is_multicast:
        return None
    return (str(addr), port)


def pack_compact(host: str, port: int) -> bytes:
    """``host:port`` in compact form: 6 bytes for IPv4, 18 for IPv6.

    An IPv4-mapped IPv6 address packs as IPv4 (6 bytes): it is that peer.

    Raises:
        ValueError: ``host`` is not an IP literal, or ``port`` is not 0..65535.
    """
    addr = _ip(host)
    if addr is None:
        raise ValueError(f"not an IP address: {host!r:.60}")
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} is not 0..65535")
    return addr.packed + port.to_bytes(2, "big")


def pack_compact_list(peers: Iterable[Address], width: int) -> bytes:
    """The peers of one family, ``width`` bytes each, concatenated (a ``peers`` /
    ``peers6`` / ``added`` / ``added6`` string).

    Raises:
        ValueError: a peer that is not an IP literal of that family, or a bad port.
    """
    if width not in (COMPACT_V4, COMPACT_V6):
        raise ValueError(f"compact peers are {COMPACT_V4} or {COMPACT_V6} bytes, not {width}")
    out = bytearray()
    for host, port in peers:
        entry = pack_compact(host, port)
        if len(entry) != width:
            raise ValueError(f"{host} is not an IPv{4 if width == COMPACT_V4 else 6} address")
        out += entry
    return bytes(out)


def compact_count(raw: bytes, width: int) -> int:
    """How many ``width``-byte compact peers ``raw`` holds.

    Raises:
        ValueError: its length is not a multiple of ``width`` (a truncated or
            padded list: the message says which family and by how much).
    """
    if width not in (COMPACT_V4, COMPACT_V6):
        raise ValueError(f"compact peers are {COMPACT_V4} or {COMPACT_V6} bytes, not {width}")
    if len(raw) % width:
        fam = "IPv4" if width == COMPACT_V4 else "IPv6"
        raise ValueError(f"a compact {fam} peer list of {len(raw)} bytes is not a multiple of "
                         f"{width}")
    return len(raw) // width


def unpack_compact(raw: bytes, width: int, limit: int) -> list[Address]:
    """The first ``limit`` peers of a compact list (at most ``limit`` are decoded).

    Addresses come out canonical (an IPv4-mapped one as IPv4); nothing is
    dropped or deduplicated here (port 0, repeats: the caller's rules).

    Args:
        raw: the list, ``width`` bytes a peer.
        width: :data:`COMPACT_V4` or :data:`COMPACT_V6`.
        limit: the most entries to decode (the caller's named bound).

    Raises:
        ValueError: ``raw``'s length is not a multiple of ``width``.
    """
    count = min(compact_count(raw, width), max(0, limit))
    alen = width - 2
    make = ipaddress.IPv4Address if width == COMPACT_V4 else ipaddress.IPv6Address
    mv = memoryview(raw)
    out: list[Address] = []
    for off in range(0, count * width, width):
        addr = make(bytes(mv[off : off + alen]))
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        out.append((str(addr), int.from_bytes(mv[off + alen : off + width], "big")))
    return out


def format_peer(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets (``[::1]:6881``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_hostport(text: str) -> Address:
    """Read ``HOST:PORT``, ``IPV4:PORT`` or ``[IPV6]:PORT`` into a canonical address.

    Raises:
        ValueError: a one-line reason (no port, a port outside 1..65535, an
            IPv6 address without brackets, an unclosed bracket, an invalid
            address or host name).
    """
    if len(text) > MAX_HOSTPORT_LENGTH:
        raise ValueError(f"longer than {MAX_HOSTPORT_LENGTH} characters")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in {text!r:.70}")
        host, rest = text[1:end], text[end + 1 :]
        if not rest.startswith(":"):
            raise ValueError(f"expected [IPV6]:PORT, got {text!r:.70}")
        port_text = rest[1:]
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(f"not an IPv6 address: {host!r:.60}") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"expected HOST:PORT, got {text!r:.70}")
        if ":" in host:
            raise ValueError(f"an IPv6 address must be in brackets, as in [{host:.60}]:PORT")
        if all(label.isdigit() for label in host.rstrip(".").split(".")):
            try:
                host = str(ipaddress.IPv4Address(host))
            except ValueError:
                raise ValueError(f"not an IPv4 address: {host!r:.60}") from None
        elif not _valid_hostname(host):
            raise ValueError(f"not a host name or address: {host!r:.60}")
    if not _PORT.match(port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port must be 1-65535, got {port_text!r:.20}")
    peer = normalize_peer(host, int(port_text))
    if peer is None:  # the unspecified or a multicast address
        raise ValueError(f"nobody listens at {host!r:.60}")
    return peer


def ban_key(host: str, port: int) -> str:
    """What a ban covers: the host, but host:port on loopback, where every peer is 127.x
    (a test swarm or several clients on one machine) and only the port tells them apart."""
    host = canonical_ip(host) or host  # ::ffff:10.0.0.1 is 10.0.0.1: one peer, one ban
    return format_peer(host, port) if is_loopback(host) else host
