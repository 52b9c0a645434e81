"""Fuzz the HTTP tracker response codec (torrent/tracker/http.py).

Input: ``flags | split seed | bytes``.  Flag 0x01: the bytes are an announce
body for ``parse_announce_response``; otherwise they are a whole HTTP
response fed to ``HTTPResponseReader`` in chunks cut from the seed, then EOF
(flag 0x02: no EOF), and a complete response's body is parsed as an
announce body.

Holds for every input:
- nothing but ``TrackerError`` escapes;
- a complete response has a status from 200 to 599 (interim 1xx answers are
  skipped, anything outside 100..599 is refused: RFC 9110 §15) and a body
  within ``MAX_RESPONSE_SIZE``;
- an announce result keeps at most ``MAX_PEERS_PER_RESPONSE`` peers, unique,
  each a canonical address or host name with a port 1..65535; interval,
  min interval and tracker id within their bounds; tracker text cut to
  ``MAX_MESSAGE_LENGTH``.

Run: ``python tests/fuzz/fuzz_tracker_http.py [libFuzzer flags] [corpus dirs]``.
"""

from __future__ import annotations

import sys

from fuzzlib import check, fuzz, instrumented, split

with instrumented(__name__):
    from torrent.errors import TrackerError
    from torrent.tracker.common import MAX_MESSAGE_LENGTH, MAX_PEERS_PER_RESPONSE, normalize_peer
    from torrent.tracker.http import (
        MAX_RESPONSE_SIZE,
        MAX_TRACKER_ID_LENGTH,
        HTTPResponseReader,
        parse_announce_response,
    )


def check_body(body: bytes) -> None:
    """Parse an announce body; check the result's bounds."""
    try:
        r = parse_announce_response(body)
    except TrackerError:
        return
    check(len(r.peers) <= MAX_PEERS_PER_RESPONSE, f"{len(r.peers)} peers kept")
    check(len(set(r.peers)) == len(r.peers), "duplicate peers")
    for host, port in r.peers:
        check(0 < port <= 0xFFFF, f"peer port {port}")
        check(normalize_peer(host, port) == (host, port), f"peer host {host[:80]!r} not canonical")
    check(0 <= r.interval < 2**31, f"interval {r.interval}")
    check(r.min_interval is None or 0 <= r.min_interval < 2**31, "min interval out of range")
    check(r.tracker_id is None or 0 < len(r.tracker_id) <= MAX_TRACKER_ID_LENGTH,
          "tracker id out of bounds")
    check(r.warning is None or len(r.warning) <= MAX_MESSAGE_LENGTH, "warning not cut")
    for count in (r.complete, r.incomplete):
        check(count is None or 0 <= count < 2**63, f"peer count {count}")


def TestOneInput(data: bytes) -> None:
    """Parse ``data`` as an announce body or an HTTP response (see the module docstring)."""
    if len(data) < 2:
        return
    flags, seed, rest = data[0], data[1], data[2:]
    if flags & 0x01:
        check_body(rest)
        return
    reader = HTTPResponseReader()
    try:
        for chunk in split(rest, seed):
            reader.feed(chunk)
        if not flags & 0x02:
            reader.feed_eof()
    except TrackerError:
        return
    if not reader.complete:
        return
    check(reader.status is not None and 200 <= reader.status <= 599, f"status {reader.status}")
    check(len(reader.body) <= MAX_RESPONSE_SIZE, "body over its bound")
    check(len(reader.reason) <= MAX_MESSAGE_LENGTH, "reason not cut")
    check_body(reader.body)


if __name__ == "__main__":
    fuzz(TestOneInput)
    sys.exit(0)
