"""Fuzz the magnet URI parser (torrent/magnet.py ``parse_magnet``).

Input: the bytes of a command-line argument, decoded as Python decodes
``argv`` on POSIX (UTF-8, undecodable bytes as lone surrogates).

Holds for every input:
- ``parse_magnet`` returns a :class:`Magnet` or raises ``InvalidTorrent``, nothing else;
- a magnet keeps its bounds: a 20-byte info-hash, at most
  ``MAX_MAGNET_TRACKERS`` trackers (http, https or udp, unique),
  ``MAX_MAGNET_PEERS`` peers (ports 1..65535, unique), ``MAX_MAGNET_WEB_SEEDS``
  web seeds, ``MAX_SELECT_ONLY`` file indices (sorted, unique),
  ``MAX_MAGNET_PARAMS`` parameters of at most ``MAX_MAGNET_VALUE``
  characters, and no control character in a value it uses;
- built again with ``magnet_uri``, it parses back to the same magnet (when
  the built link is within ``MAX_MAGNET_LENGTH``: ``magnet_uri`` escapes
  every URL and writes ``so`` index by index, so it can be longer).

Run: ``python tests/fuzz/fuzz_magnet.py [libFuzzer flags] [corpus dirs]``.
"""

from __future__ import annotations

import re
import sys

from fuzzlib import check, fuzz, instrumented

with instrumented(__name__):
    from torrent.errors import InvalidTorrent
    from torrent.magnet import (
        MAX_MAGNET_LENGTH,
        MAX_MAGNET_PARAMS,
        MAX_MAGNET_PEERS,
        MAX_MAGNET_TRACKERS,
        MAX_MAGNET_VALUE,
        MAX_MAGNET_WEB_SEEDS,
        MAX_SELECT_ONLY,
        magnet_uri,
        parse_magnet,
    )
    from torrent.metainfo import TRACKER_SCHEMES

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def TestOneInput(data: bytes) -> None:
    """Parse ``data`` as a magnet URI; check bounds and the round trip."""
    uri = data.decode("utf-8", "surrogateescape")
    try:
        m = parse_magnet(uri)
    except InvalidTorrent:
        return
    check(len(m.info_hash) == 20, "info-hash not 20 bytes")
    check(len(m.params) <= MAX_MAGNET_PARAMS, "too many parameters")
    check(all(len(v) <= MAX_MAGNET_VALUE for _k, v in m.params), "a value over its bound")
    urls = [u for tier in m.trackers for u in tier]
    check(len(urls) <= MAX_MAGNET_TRACKERS and len(set(urls)) == len(urls), "trackers")
    check(all(len(t) == 1 for t in m.trackers), "a tracker tier of more than one URL")
    check(all(u.lower().startswith(TRACKER_SCHEMES) for u in urls), "tracker scheme")
    check(len(m.peers) <= MAX_MAGNET_PEERS and len(set(m.peers)) == len(m.peers), "peers")
    check(all(1 <= port <= 65535 for _h, port in m.peers), "peer port")
    check(len(m.web_seeds) <= MAX_MAGNET_WEB_SEEDS, "too many web seeds")
    check(len(m.select_only) <= MAX_SELECT_ONLY, "too many selected files")
    check(list(m.select_only) == sorted(set(m.select_only)), "select-only not sorted/unique")
    used = [*urls, *m.web_seeds, *(h for h, _p in m.peers), m.display_name or ""]
    check(not any(_CONTROL.search(v) for v in used), "a control character kept")
    if any(_SURROGATE.search(v) for v in used):
        return  # not text magnet_uri can write (UTF-8 cannot carry a lone surrogate)
    built = magnet_uri(m.info_hash, name=m.display_name, trackers=urls, peers=m.peers,
                       web_seeds=m.web_seeds, select_only=m.select_only)
    if len(built) > MAX_MAGNET_LENGTH:
        # magnet_uri percent-encodes every URL and writes 'so' index by index, so
        # a link near the bound (or a wide 'so' range) can come out longer
        return
    again = parse_magnet(built)
    for field in ("info_hash", "display_name", "trackers", "peers", "web_seeds", "select_only"):
        check(getattr(again, field) == getattr(m, field), f"{field} does not round-trip")


if __name__ == "__main__":
    fuzz(TestOneInput)
    sys.exit(0)
