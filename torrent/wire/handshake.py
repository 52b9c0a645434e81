"""The BEP 3 handshake, and peer ids.

The handshake is the first thing each side sends, 68 bytes::

    <pstrlen = 19> <pstr = "BitTorrent protocol"> <reserved: 8> <info_hash: 20> <peer_id: 20>

The reserved bytes announce extensions; both sides must set a bit before either
may use the extension. :func:`encode_handshake` sends :data:`RESERVED_NONE`
unless told otherwise, so by default a peer must not send us BEP 6 Fast or
BEP 10 extension messages. :data:`RESERVED_OURS` (BEP 10 + BEP 6) is what we
announce once a connection handles those messages; :func:`reserved_bits`
builds any other combination, and :meth:`Handshake.has_bit` reads the peer's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

from ..errors import RemoteProtocolError
from .messages import LocalProtocolError
from .record import Record, setfield

__all__ = [
    "DHT_BIT",
    "EXTENSION_BIT",
    "FAST_BIT",
    "HANDSHAKE_LENGTH",
    "PEER_ID_PREFIX",
    "PSTR",
    "RESERVED_DHT",
    "RESERVED_NONE",
    "RESERVED_OURS",
    "Handshake",
    "check_handshake_prefix",
    "encode_handshake",
    "make_peer_id",
    "parse_handshake",
    "reserved_bits",
]

PSTR: Final = b"BitTorrent protocol"  # BEP 3 protocol string, preceded by its length (19)
_HEADER: Final = bytes([len(PSTR)]) + PSTR  # the first 20 bytes of every handshake
HANDSHAKE_LENGTH: Final = 1 + len(PSTR) + 8 + 20 + 20  # 68: pstrlen pstr reserved hash id
RESERVED_NONE: Final = bytes(8)

# Reserved bits as (byte index, mask); byte 0 is the first reserved byte.
FAST_BIT: Final = (7, 0x04)  # BEP 6 Fast extension: reserved[7] & 0x04
EXTENSION_BIT: Final = (5, 0x10)  # BEP 10 extension protocol: reserved[5] & 0x10
DHT_BIT: Final = (7, 0x01)  # BEP 5 DHT: reserved[7] & 0x01, the peer may send PORT


def reserved_bits(*bits: tuple[int, int]) -> bytes:
    """The 8 reserved bytes with exactly ``bits`` set, e.g. ``reserved_bits(FAST_BIT)``.

    Raises:
        LocalProtocolError: a bit names a byte outside 0..7 or a mask outside 1..255.
    """
    out = bytearray(8)
    for byte, mask in bits:
        if not (0 <= byte < 8 and 0 < mask <= 0xFF):
            raise LocalProtocolError(f"reserved bit ({byte}, {mask:#x}) is not in 8 bytes")
        out[byte] |= mask
    return bytes(out)


# What we announce once the connection speaks the extension protocol (BEP 10)
# and the Fast extension (BEP 6): libtorrent, qBittorrent and Transmission set
# both, and BEP 9 metadata exchange (magnet links) and BEP 11 PEX ride on BEP
# 10. No DHT bit until we run a DHT node (BEP 5 would oblige us to answer PORT).
RESERVED_OURS: Final = reserved_bits(EXTENSION_BIT, FAST_BIT)
#: ... and with the DHT bit, while our DHT node runs (a magnet's fetch and the
#: workers alike: a peer sends its PORT on the connection it was handed as).
RESERVED_DHT: Final = reserved_bits(EXTENSION_BIT, FAST_BIT, DHT_BIT)

# Azureus-style client prefix: '-', two letters naming the client, four version
# digits, '-' (BEP 20).
PEER_ID_PREFIX: Final = b"-FT0100-"

# URL-unreserved characters (RFC 3986) for the random part of a peer id: trackers
# receive the peer id percent-encoded in the announce URL, and a raw random byte
# would mostly be encoded as %XX (three times the length). libtorrent likewise
# fills its peer ids with URL-safe random characters. 64 symbols: a byte maps to
# one uniformly (256 % 64 == 0), 6 bits of entropy each, 72 bits per id.
_PEER_ID_ALPHABET: Final = (
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
)


class Handshake(Record):
    """A parsed handshake."""

    reserved: bytes
    info_hash: bytes
    peer_id: bytes

    __slots__ = ("info_hash", "peer_id", "reserved")

    def __init__(self, reserved: bytes, info_hash: bytes, peer_id: bytes) -> None:
        setfield(self, "reserved", reserved)
        setfield(self, "info_hash", info_hash)
        setfield(self, "peer_id", peer_id)

    def has_bit(self, bit: tuple[int, int]) -> bool:
        """Whether the peer set a reserved bit, e.g. :data:`FAST_BIT`."""
        byte, mask = bit
        return bool(self.reserved[byte] & mask)

    @property
    def supports_fast(self) -> bool:
        """BEP 6 Fast extension announced."""
        return self.has_bit(FAST_BIT)

    @property
    def supports_extensions(self) -> bool:
        """BEP 10 extension protocol announced."""
        return self.has_bit(EXTENSION_BIT)

    @property
    def supports_dht(self) -> bool:
        """BEP 5 DHT announced."""
        return self.has_bit(DHT_BIT)


def encode_handshake(info_hash: bytes, peer_id: bytes, reserved: bytes = RESERVED_NONE) -> bytes:
    """Build our 68-byte handshake.

    Args:
        info_hash: the torrent's 20-byte SHA-1 info-hash.
        peer_id: our 20-byte peer id.
        reserved: the 8 reserved bytes (extension bits).

    Returns:
        The handshake bytes.

    Raises:
        LocalProtocolError: a field has the wrong length (a bug of ours).
    """
    if len(info_hash) != 20 or len(peer_id) != 20 or len(reserved) != 8:
        raise LocalProtocolError(
            f"handshake fields must be 20/20/8 bytes, got info_hash {len(info_hash)}, "
            f"peer_id {len(peer_id)}, reserved {len(reserved)}")
    return _HEADER + bytes(reserved) + bytes(info_hash) + bytes(peer_id)


def check_handshake_prefix(data: bytes | bytearray | memoryview) -> None:
    """Reject a stream that cannot be a BitTorrent handshake as early as possible.

    Args:
        data: the first bytes received (any length up to 68).

    Raises:
        RemoteProtocolError: the bytes so far differ from ``\\x13BitTorrent protocol``.
    """
    n = min(len(data), len(_HEADER))
    if bytes(data[:n]) != _HEADER[:n]:
        raise RemoteProtocolError(
            f"peer did not send a BitTorrent handshake: expected pstr {_HEADER!r}, "
            f"got {bytes(data[:len(_HEADER)])!r} (encrypted or not a BitTorrent peer)")


def parse_handshake(data: bytes | bytearray | memoryview) -> Handshake:
    """Parse the 68-byte handshake a peer sent.

    Args:
        data: exactly :data:`HANDSHAKE_LENGTH` bytes.

    Returns:
        The handshake; the caller checks info_hash and peer_id.

    Raises:
        RemoteProtocolError: wrong pstrlen or pstr.
        LocalProtocolError: ``data`` is not 68 bytes (the caller must frame it).
    """
    if len(data) != HANDSHAKE_LENGTH:
        raise LocalProtocolError(
            f"parse_handshake needs exactly {HANDSHAKE_LENGTH} bytes, got {len(data)}")
    check_handshake_prefix(data)
    raw = bytes(data)
    return Handshake(reserved=raw[20:28], info_hash=raw[28:48], peer_id=raw[48:68])


def make_peer_id(
    prefix: bytes = PEER_ID_PREFIX, randbytes: Callable[[int], bytes] = os.urandom
) -> bytes:
    """Make a 20-byte Azureus-style peer id: ``prefix`` + 12 random URL-safe characters.

    Args:
        prefix: the 8-byte client/version prefix.
        randbytes: a source of random bytes, ``n -> bytes`` (``os.urandom`` by
            default; inject ``random.Random(seed).randbytes`` in tests).

    Returns:
        The peer id.

    Raises:
        LocalProtocolError: ``prefix`` is not 8 bytes.
    """
    if len(prefix) != 8:
        raise LocalProtocolError(f"peer id prefix must be 8 bytes, got {len(prefix)}")
    raw = randbytes(12)
    return bytes(prefix) + bytes(_PEER_ID_ALPHABET[b & 63] for b in raw[:12])
