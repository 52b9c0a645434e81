"""Magnet URIs (BEP 9, with BEP 19 web seeds and BEP 53 file selection).

Theory of operation
-------------------
:func:`parse_magnet` turns ``magnet:?xt=urn:btih:...&dn=...&tr=...`` into a
frozen :class:`Magnet`. Like :func:`torrent.metainfo.parse` it is strict and
explains itself: whatever is wrong raises
:class:`~torrent.errors.InvalidTorrent` (exit 3) with a one-line message
naming the parameter, e.g. ``invalid magnet: xt: info-hash must be 40 hex
digits or 32 base32 characters, got 39 characters``; no other exception
escapes, whatever the string.

Rules, and why:

- The query is split on ``&`` only and each key and value is percent-decoded
  as RFC 3986 says (``%XX`` escapes, UTF-8); a ``%`` not followed by two hex
  digits, or escapes that are not UTF-8, refuse the link. ``+`` stays a
  ``+``, except in ``dn``: web pages build magnets as HTML forms do, with
  ``+`` for a space, and libtorrent reads ``dn`` the same way. A ``+`` in a
  URL is a real ``+``.
- ``xt``: the ``urn:btih:`` one carries the v1 info-hash, as 40 hex digits or
  32 base32 characters (BEP 9); the ``urn:btmh:`` one the v2 info-hash
  (BEP 52) as a multihash in hex: ``1220`` (SHA-256, 32 bytes) and 64 hex
  digits. A link with both is a hybrid's (fetched and downloaded through
  its v1 hash; the metadata must match both); a link with btmh alone is a
  v2 torrent's, known on the wire by the first 20 bytes of its v2 hash.
  Other ``xt`` (``urn:sha1:``, ...) are ignored. Two different hashes of one
  kind refuse the link (which torrent would it be?), and so does a btmh that
  is not a SHA-256 multihash.
- ``tr``: each its own tier, in link order (libtorrent does the same).
  Like the trackers of a .torrent, URLs with a scheme we cannot announce to
  (anything but http, https, udp) are dropped silently, and so are
  duplicates (the first place is kept).
- ``x.pe``: ``host:port`` peers (IPv6 as ``[addr]:port``); a malformed one
  refuses the link rather than being skipped: the user typed it.
- ``ws``: BEP 19 web seeds, http(s) URLs; kept for the web-seed support.
- ``so``: BEP 53 select-only: file indices and inclusive ranges
  (``0,2,4-6``), expanded into a sorted tuple; kept for file selection.
- Every other parameter is kept, decoded, in :attr:`Magnet.params`.
- Control characters in a value we use refuse the link: they have no place
  in a URL, a host or a name printed on a terminal.

Every count and length has a named bound below, so a hostile link costs a
bounded amount of work.

This module is sans-IO: a string in, a value out.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote

from torrent.errors import InvalidTorrent
from torrent.metainfo import TRACKER_SCHEMES, Metainfo
from torrent.peeraddr import format_peer, parse_hostport

__all__ = [
    "MAX_MAGNET_LENGTH",
    "MAX_MAGNET_PARAMS",
    "MAX_MAGNET_PEERS",
    "MAX_MAGNET_TRACKERS",
    "MAX_MAGNET_VALUE",
    "MAX_MAGNET_WEB_SEEDS",
    "MAX_SELECT_ONLY",
    "Magnet",
    "is_magnet",
    "magnet_uri",
    "parse_magnet",
]

# Longest magnet URI accepted, in characters. Real links with a hundred
# trackers are ~20 KB; Linux caps one command-line argument at 128 KiB
# (MAX_ARG_STRLEN). The bound keeps the parse of a hostile string bounded.
MAX_MAGNET_LENGTH = 64 * 1024

# Most parameters of any name. A link within MAX_MAGNET_LENGTH could hold
# ~20,000 empty ones; no real link has more than a few hundred.
MAX_MAGNET_PARAMS = 1024

# Most 'tr' parameters. Published all-in-one tracker lists have ~100 entries;
# each tracker costs an announce, so a link with more is refused, not trimmed.
MAX_MAGNET_TRACKERS = 200

# Most 'x.pe' peers. They feed the coordinator's peer table (200 connected
# peers by default); more in a link is not a peer list a user typed.
MAX_MAGNET_PEERS = 200

# Most 'ws' web seeds. Torrents list a handful of mirrors.
MAX_MAGNET_WEB_SEEDS = 100

# Longest decoded value of any parameter, in characters. URLs in the wild stay
# under 2 KB (tracker passkeys included); a display name is a file name
# (255 bytes on most file systems) or a title.
MAX_MAGNET_VALUE = 4096

# Most file indices a BEP 53 'so' may select once its ranges are expanded:
# the largest real torrents have ~10**5 files, and a range like 0-999999999
# must not turn into a billion integers.
MAX_SELECT_ONLY = 100_000

_PREFIX = "magnet:?"
_BTIH = "urn:btih:"
_BTMH = "urn:btmh:"
_HEX40_RE = re.compile(r"[0-9A-Fa-f]{40}")
_B32_RE = re.compile(r"[A-Za-z2-7]{32}")
_HEX68_RE = re.compile(r"[0-9A-Fa-f]{68}")
_SHA256_MULTIHASH = "1220"  # multihash: code 0x12 (SHA-256), length 0x20 (32 bytes)
_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL, C1
_XT_KEY_RE = re.compile(r"xt(?:\.[0-9]{1,4})?")
_SO_ITEM_RE = re.compile(r"([0-9]{1,9})(?:-([0-9]{1,9}))?")
_WEB_SEED_SCHEMES = ("http://", "https://")


@dataclass(frozen=True, slots=True)
class Magnet:
    """A parsed magnet link. Build it with :func:`parse_magnet`.

    Attributes:
        info_hash: the 20-byte info-hash the swarm knows the torrent by
            (handshakes, trackers, the DHT): the v1 one, or for a v2-only
            link (``urn:btmh:`` alone) the first 20 bytes of its v2 one.
        info_hash_v2: BEP 52: the 32-byte v2 info-hash (SHA-256 of the info
            dict) from ``urn:btmh:``, or None.
        display_name: ``dn``, or None when absent (informational only: the
            torrent's name comes from its metadata).
        trackers: tiers of tracker URLs, one ``tr`` per tier, in link order.
        peers: ``x.pe`` peers as ``(host, port)``; IPv6 hosts without brackets.
        web_seeds: ``ws`` URLs (BEP 19).
        select_only: ``so`` file indices (BEP 53), sorted, without duplicates.
        params: every parameter, percent-decoded, in link order.
    """

    info_hash: bytes
    display_name: str | None = None
    info_hash_v2: bytes | None = None
    trackers: tuple[tuple[str, ...], ...] = ()
    peers: tuple[tuple[str, int], ...] = ()
    web_seeds: tuple[str, ...] = ()
    select_only: tuple[int, ...] = ()
    params: tuple[tuple[str, str], ...] = ()

    @property
    def info_hash_hex(self) -> str:
        """The info-hash as 40 lowercase hex digits."""
        return self.info_hash.hex()

    @property
    def v2_only(self) -> bool:
        """A ``urn:btmh:`` link without ``urn:btih:``: a v2-only torrent's (BEP 52)."""
        return self.info_hash_v2 is not None and self.info_hash == self.info_hash_v2[:20]


def _bad(field: str, why: str) -> InvalidTorrent:
    return InvalidTorrent(f"invalid magnet: {field}: {why}")


def _short(text: str) -> str:
    """A bounded repr for error messages."""
    return repr(text[:60]) + ("..." if len(text) > 60 else "")


def is_magnet(s: str) -> bool:
    """True when ``s`` looks like a magnet URI (``magnet:`` scheme, any case).

    The CLI uses it to tell a magnet from a .torrent path; a string it accepts
    may still be malformed (:func:`parse_magnet` says how).
    """
    return isinstance(s, str) and s.lstrip()[:7].lower() == "magnet:"


def _decode(raw: str, field: str, *, plus_is_space: bool = False) -> str:
    """Percent-decode one key or value (RFC 3986), refusing bad escapes and non-UTF-8."""
    m = _BAD_ESCAPE_RE.search(raw)
    if m:
        raise _bad(field, f"bad percent-escape {_short(raw[m.start() : m.start() + 3])}")
    if plus_is_space:
        raw = raw.replace("+", " ")
    try:
        return unquote(raw, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise _bad(field, "percent-escapes are not valid UTF-8") from None


def _checked(value: str, field: str) -> str:
    if _CONTROL_RE.search(value):
        raise _bad(field, f"contains a control character: {_short(value)}")
    return value


def _btmh(text: str) -> bytes:
    """A ``urn:btmh:`` value: a SHA-256 multihash (``1220`` and 64 hex digits)."""
    if len(text) != 68 or not _HEX68_RE.fullmatch(text):
        raise _bad("xt", "a urn:btmh: info-hash must be 1220 and 64 hex digits (a SHA-256"
                   f" multihash), got {_short(text)}")
    if text[:4] != _SHA256_MULTIHASH:
        raise _bad("xt", f"urn:btmh: multihash {text[:4]!r} is not SHA-256 (1220)")
    return bytes.fromhex(text[4:])


def _info_hash(xts: list[str]) -> tuple[bytes, bytes | None]:
    """The btih info-hash (for a v2-only link: the truncated btmh) and the btmh one."""
    if not xts:
        raise _bad("xt", "missing (a magnet needs xt=urn:btih:<info-hash>)")
    found: bytes | None = None
    v2: bytes | None = None
    for xt in xts:
        low = xt[: len(_BTIH)].lower()
        if low == _BTMH:
            digest = _btmh(xt[len(_BTMH) :])
            if v2 is not None and digest != v2:
                raise _bad("xt", "two different btmh info-hashes")
            v2 = digest
            continue
        if low != _BTIH:
            continue
        text = xt[len(_BTIH) :]
        if len(text) == 40:
            if not _HEX40_RE.fullmatch(text):
                raise _bad("xt", f"info-hash is not 40 hex digits: {_short(text)}")
            digest = bytes.fromhex(text)
        elif len(text) == 32:
            if not _B32_RE.fullmatch(text):
                raise _bad("xt", f"info-hash is not 32 base32 characters: {_short(text)}")
            try:
                digest = base64.b32decode(text.upper())
            except binascii.Error:  # cannot happen after the regex; never leak it
                raise _bad("xt", f"info-hash is not base32: {_short(text)}") from None
        else:
            raise _bad(
                "xt",
                "info-hash must be 40 hex digits or 32 base32 characters,"
                f" got {len(text)} characters",
            )
        if found is not None and digest != found:
            raise _bad("xt", "two different btih info-hashes")
        found = digest
    if found is None:
        if v2 is not None:
            return v2[:20], v2  # BEP 52: a v2 swarm is known by the truncated hash
        raise _bad("xt", f"no urn:btih: or urn:btmh: info-hash in {_short(xts[0])}")
    return found, v2


def _peer(value: str) -> tuple[str, int]:
    """One ``x.pe`` value: ``host:port`` or ``[ipv6]:port`` (``peeraddr.parse_hostport``)."""
    try:
        return parse_hostport(value)
    except ValueError as exc:
        raise _bad("x.pe", str(exc)) from None


def _select_only(values: list[str]) -> tuple[int, ...]:
    """BEP 53 ``so``: comma-separated indices and inclusive ranges, expanded."""
    out: set[int] = set()
    for value in values:
        for item in value.split(","):
            m = _SO_ITEM_RE.fullmatch(item.strip())
            if not m:
                raise _bad("so", f"expected indices and ranges like 0,2,4-6, got {_short(item)}")
            first = int(m.group(1))
            last = int(m.group(2)) if m.group(2) is not None else first
            if last < first:
                raise _bad("so", f"range {first}-{last} runs backwards")
            # Checked before expanding (overlaps count twice: a bound, not a tally).
            if len(out) + (last - first + 1) > MAX_SELECT_ONLY:
                raise _bad("so", f"selects more than {MAX_SELECT_ONLY} files")
            out.update(range(first, last + 1))
    return tuple(sorted(out))


def parse_magnet(uri: str) -> Magnet:
    """Parse and check a magnet URI.

    Args:
        uri: ``magnet:?xt=urn:btih:...`` (surrounding whitespace is ignored).

    Returns:
        The :class:`Magnet`.

    Raises:
        InvalidTorrent: anything malformed, unsupported or over a bound; the
            message names the parameter.
    """
    if not isinstance(uri, str):
        raise _bad("uri", f"must be a string, got {type(uri).__name__}")
    if len(uri) > MAX_MAGNET_LENGTH:
        raise _bad("uri", f"{len(uri)} characters, more than {MAX_MAGNET_LENGTH}")
    uri = uri.strip()
    if uri[: len(_PREFIX)].lower() != _PREFIX:
        raise _bad("uri", f"must start with {_PREFIX!r}, got {_short(uri)}")
    query = uri[len(_PREFIX) :]
    # A fragment is not part of the query (RFC 3986 section 3.5); no magnet has one.
    query = query.partition("#")[0]

    params: list[tuple[str, str]] = []
    for part in query.split("&"):
        if not part:
            continue
        if len(params) >= MAX_MAGNET_PARAMS:
            raise _bad("uri", f"more than {MAX_MAGNET_PARAMS} parameters")
        raw_key, _, raw_value = part.partition("=")
        key = _decode(raw_key, "uri")
        field = _short(key) if len(key) > 60 or not key.isprintable() else key
        value = _decode(raw_value, field, plus_is_space=key == "dn")
        if len(value) > MAX_MAGNET_VALUE:
            raise _bad(field, f"value of {len(value)} characters, more than {MAX_MAGNET_VALUE}")
        params.append((key, value))

    xts = [v for k, v in params if _XT_KEY_RE.fullmatch(k)]
    info_hash, info_hash_v2 = _info_hash([x.strip() for x in xts])

    names = [v for k, v in params if k == "dn"]
    display_name = _checked(names[0], "dn") if names else None

    tr = [v for k, v in params if k == "tr"]
    if len(tr) > MAX_MAGNET_TRACKERS:
        raise _bad("tr", f"{len(tr)} trackers, more than {MAX_MAGNET_TRACKERS}")
    tiers: list[tuple[str, ...]] = []
    seen: set[str] = set()
    for url in tr:
        url = _checked(url, "tr").strip()
        if url.lower().startswith(TRACKER_SCHEMES) and url not in seen:
            seen.add(url)
            tiers.append((url,))

    pe = [v for k, v in params if k == "x.pe"]
    if len(pe) > MAX_MAGNET_PEERS:
        raise _bad("x.pe", f"{len(pe)} peers, more than {MAX_MAGNET_PEERS}")
    peers: list[tuple[str, int]] = []
    for value in pe:
        peer = _peer(_checked(value, "x.pe").strip())
        if peer not in peers:
            peers.append(peer)

    ws = [v for k, v in params if k == "ws"]
    if len(ws) > MAX_MAGNET_WEB_SEEDS:
        raise _bad("ws", f"{len(ws)} web seeds, more than {MAX_MAGNET_WEB_SEEDS}")
    web_seeds: list[str] = []
    for url in ws:
        url = _checked(url, "ws").strip()
        if url.lower().startswith(_WEB_SEED_SCHEMES) and url not in web_seeds:
            web_seeds.append(url)

    so = [_checked(v, "so") for k, v in params if k == "so"]
    return Magnet(
        info_hash=info_hash,
        display_name=display_name,
        info_hash_v2=info_hash_v2,
        trackers=tuple(tiers),
        peers=tuple(peers),
        web_seeds=tuple(web_seeds),
        select_only=_select_only(so),
        params=tuple(params),
    )


def magnet_uri(
    source: Metainfo | bytes,
    *,
    name: str | None = None,
    trackers: Iterable[str] | None = None,
    peers: Iterable[tuple[str, int]] = (),
    web_seeds: Iterable[str] = (),
    select_only: Sequence[int] = (),
) -> str:
    """Build a magnet URI (for tests, tools and ``seed``'s announcement of itself).

    Args:
        source: a torrent's :class:`Metainfo` (a v2-only one gives a
            ``urn:btmh:`` link, a hybrid both ``urn:btih:`` and ``urn:btmh:``),
            or a 20-byte info-hash.
        name: ``dn``; default: the torrent's name (none for a bare info-hash).
        trackers: ``tr`` URLs; default: every tracker of the torrent, tier by tier.
        peers: ``x.pe`` peers as ``(host, port)``; IPv6 hosts get brackets.
        web_seeds: ``ws`` URLs.
        select_only: ``so`` file indices (written as ranges, over several
            ``so`` parameters if one would be too long).

    Returns:
        The URI, which :func:`parse_magnet` reads back.

    Raises:
        ValueError: ``source`` is bytes but not 20 of them.
    """
    v2: bytes | None = None
    if isinstance(source, Metainfo):
        info_hash = source.info_hash
        v2 = source.info_hash_v2
        if name is None:
            name = source.name
        if trackers is None:
            trackers = [url for tier in source.trackers for url in tier]
    else:
        info_hash = bytes(source)
        if len(info_hash) != 20:
            raise ValueError(f"an info-hash is 20 bytes, got {len(info_hash)}")
    parts = [] if v2 is not None and v2[:20] == info_hash else [f"xt=urn:btih:{info_hash.hex()}"]
    if v2 is not None:
        parts.append(f"xt=urn:btmh:{_SHA256_MULTIHASH}{v2.hex()}")
    if name is not None:
        parts.append("dn=" + quote(name, safe=""))
    parts.extend("tr=" + quote(url, safe="") for url in trackers or ())
    for host, port in peers:
        parts.append("x.pe=" + quote(format_peer(host, port), safe=":[]"))
    parts.extend("ws=" + quote(url, safe="") for url in web_seeds)
    parts.extend("so=" + value for value in _select_only_values(select_only))
    return _PREFIX + "&".join(parts)


def _select_only_values(indices: Sequence[int]) -> list[str]:
    """BEP 53 ``so`` values selecting ``indices``: runs written as ranges (``0,2,4-6``).

    Index by index, 2,000 consecutive files would make a value over
    MAX_MAGNET_VALUE that :func:`parse_magnet` refuses; ranges keep it short,
    and a selection that still does not fit is split over several ``so``
    parameters (they add up, BEP 53).
    """
    runs: list[list[int]] = []
    for i in sorted(set(indices)):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    values: list[str] = []
    current = ""
    for first, last in runs:
        item = str(first) if first == last else f"{first}-{last}"
        if current and len(current) + 1 + len(item) > MAX_MAGNET_VALUE:
            values.append(current)
            current = ""
        current = f"{current},{item}" if current else item
    if current:
        values.append(current)
    return values
