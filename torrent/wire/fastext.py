"""The Fast extension (BEP 6): the allowed-fast set, and how many fast grants and suggestions count.

Theory of operation
-------------------
BEP 6's *allowed fast* message says "ask for this piece and I serve it even
while I choke you", to get a peer with nothing to trade started. The pieces a
peer is granted are chosen by a canonical algorithm (:func:`allowed_fast_set`)
from its address and the info-hash, so that a peer that reconnects, or opens
several connections from the same /24, always gets the same pieces and
cannot collect the whole torrent one grant at a time. The sender computes the
set for the peer on the other end; the receiver never recomputes it.

The messages themselves (:class:`~torrent.wire.messages.AllowedFast`,
:class:`~torrent.wire.messages.Suggest`, ...) are rows of the message table;
what we grant and how many grants and suggestions we keep from one peer are
bounded here (:data:`ALLOWED_FAST_COUNT`, :data:`MAX_ALLOWED_FAST`,
:data:`MAX_SUGGESTED`), for the connection to apply.

Sans-IO: a pure function of its arguments.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Final

from .messages import LocalProtocolError

__all__ = [
    "ALLOWED_FAST_COUNT",
    "MAX_ALLOWED_FAST",
    "MAX_SUGGESTED",
    "allowed_fast_set",
]

# How many pieces we grant a peer (BEP 6's k): "We currently set k to 10".
# libtorrent grants 5 (allowed_fast_set_size) and used 10 before; BEP 6 asks
# for k "small enough to avoid abuse, but large enough to ramp up tit-for-tat".
ALLOWED_FAST_COUNT: Final = 10

# The most allowed-fast pieces we keep from one peer, and the largest k
# :func:`allowed_fast_set` computes. Grants are advisory and a peer may send
# them at any time, so without a bound a peer could make us remember one per
# piece of the torrent; every client we know grants 5 or 10, and 32 leaves
# room for one that refreshes its grants. Further grants are ignored.
MAX_ALLOWED_FAST: Final = 32

# The most suggested pieces we keep from one peer (BEP 6 suggest piece); the
# oldest is forgotten first. libtorrent keeps 16 (max_suggest_pieces).
# Suggestions are only a hint for the picker.
MAX_SUGGESTED: Final = 16

# BEP 6 step (1): only the top three bytes of an IPv4 address count, so one
# user with several addresses in a /24 gets one set. For IPv6, for which BEP 6
# has "no provisions", we keep the top 48 bits, the usual size of one site's
# allocation, for the same reason: the set is the sender's own choice and no
# receiver recomputes it, so any fixed rule is interoperable.
_V4_MASK: Final = 0xFFFFFF00
_V6_PREFIX_BYTES: Final = 6


def allowed_fast_set(
    ip: str, info_hash: bytes, num_pieces: int, k: int = ALLOWED_FAST_COUNT
) -> list[int]:
    """The allowed-fast set BEP 6 gives the peer at ``ip``, in generation order.

    Args:
        ip: the peer's address as we see it (IPv4, IPv4-mapped IPv6 or IPv6).
        info_hash: the torrent's 20-byte info-hash.
        num_pieces: pieces in the torrent.
        k: how many pieces to grant, 0..MAX_ALLOWED_FAST; capped at
            ``num_pieces`` (a set cannot have more distinct pieces).

    Returns:
        ``min(k, num_pieces)`` distinct piece indices. The first ``j`` of a
        set of size ``k`` are the set of size ``j`` (BEP 6: "if one offers
        k+1 it will be the same k plus one more").

    Raises:
        LocalProtocolError: ``ip`` is not an IP address, ``info_hash`` is not
            20 bytes, ``num_pieces`` is negative or ``k`` is out of range.
    """
    if len(info_hash) != 20:
        raise LocalProtocolError(f"info-hash must be 20 bytes, got {len(info_hash)}")
    if num_pieces < 0 or not 0 <= k <= MAX_ALLOWED_FAST:
        raise LocalProtocolError(
            f"allowed-fast set of {k} pieces out of {num_pieces}: k must be "
            f"0..{MAX_ALLOWED_FAST}, num_pieces at least 0")
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError as exc:
        raise LocalProtocolError(f"not an IP address: {ip!r}") from exc
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
    if isinstance(addr, ipaddress.IPv4Address):
        x = (int(addr) & _V4_MASK).to_bytes(4, "big")  # step (1)
    else:
        x = addr.packed[:_V6_PREFIX_BYTES] + bytes(16 - _V6_PREFIX_BYTES)
    x += bytes(info_hash)  # step (2)
    k = min(k, num_pieces)
    out: list[int] = []
    chosen: set[int] = set()
    while len(out) < k:
        x = hashlib.sha1(x).digest()  # step (3)
        for j in range(0, 20, 4):  # steps (4)-(6): five big-endian u32 per hash
            if len(out) >= k:
                break
            index = int.from_bytes(x[j : j + 4], "big") % num_pieces  # step (7)
            if index not in chosen:  # steps (8)-(9)
                chosen.add(index)
                out.append(index)
    return out
