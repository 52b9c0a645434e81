"""Fuzz the UDP tracker codec and announce state machine (torrent/tracker/udp.py).

Input: ``flags | bytes``.  Flag 0x01: the peers are IPv6 (18 bytes each).
Without flag 0x02 the bytes are one datagram, decoded as a tracker's answer
(``decode_response``) and as a client's request (``decode_request``, the
test tracker's side).  With flag 0x02 they are a conversation with
``UDPAnnounce``: each datagram is ``head | body``, where ``head & 0x7f`` is
the body's length (0: no datagram, the retry timer fires instead) and
``head & 0x80`` stamps the transaction id we sent into the body, so the
machine does not ignore it.

Holds for every input:
- nothing but ``TrackerError`` escapes;
- announce answers keep at most ``MAX_PEERS_PER_RESPONSE`` peers, unique,
  canonical, ports 1..65535; error text is cut to ``MAX_MESSAGE_LENGTH``;
- a decoded request encodes and decodes back to itself, with its BEP 41
  URL data within ``MAX_URL_DATA``;
- the state machine only ever hands back bytes, an ``AnnounceResult`` or
  None, gives up within its retry schedule, and ignores datagrams that are
  not for its transaction.

Run: ``python tests/fuzz/fuzz_tracker_udp.py [libFuzzer flags] [corpus dirs]``.
"""

from __future__ import annotations

import itertools
import sys

from fuzzlib import check, fuzz, instrumented

with instrumented(__name__):
    from torrent.errors import TrackerError
    from torrent.tracker.common import (
        MAX_MESSAGE_LENGTH,
        MAX_PEERS_PER_RESPONSE,
        AnnounceParams,
        AnnounceResult,
        Peer,
        normalize_peer,
    )
    from torrent.tracker.udp import (
        MAX_URL_DATA,
        AnnounceRequest,
        AnnounceResponse,
        ErrorResponse,
        UDPAnnounce,
        decode_request,
        decode_response,
        encode,
    )

PARAMS = AnnounceParams(info_hash=b"\x11" * 20, peer_id=b"-FT0100-fuzzudpfuzz0", port=6881,
                        left=1000, event="started", key=0x1234)
#: A short retry schedule: the machine must give up after three timeouts.
SCHEDULE = (1.0, 2.0, 4.0)


def check_peers(peers: tuple[Peer, ...]) -> None:
    check(len(peers) <= MAX_PEERS_PER_RESPONSE, f"{len(peers)} peers kept")
    check(len(set(peers)) == len(peers), "duplicate peers")
    for host, port in peers:
        check(normalize_peer(host, port) == (host, port), f"peer {host!r}:{port} not canonical")


def codec(datagram: bytes, ipv6: bool) -> None:
    try:
        msg = decode_response(datagram, ipv6=ipv6)
    except TrackerError:
        pass
    else:
        if isinstance(msg, AnnounceResponse):
            check_peers(msg.peers)
        elif isinstance(msg, ErrorResponse):
            check(len(msg.message) <= MAX_MESSAGE_LENGTH, "error text not cut")
    try:
        req = decode_request(datagram)
    except TrackerError:
        return
    if isinstance(req, AnnounceRequest):
        check(len(req.url_data) <= MAX_URL_DATA, "URL data over its bound")
    check(decode_request(encode(req)) == req, f"{req!r:.200} does not round-trip")


def conversation(data: bytes, ipv6: bool) -> None:
    tids = itertools.count(0x01020304)
    sent: list[int] = []

    def rng(bits: int) -> int:
        sent.append(next(tids) & ((1 << bits) - 1))
        return sent[-1]

    ua = UDPAnnounce(PARAMS, schedule=SCHEDULE, rng=rng, ipv6=ipv6)
    now = 0.0
    out: object = ua.start(now)
    timeouts = 0
    pos = 0
    while pos < len(data):
        head = data[pos]
        body = bytearray(data[pos + 1 : pos + 1 + (head & 0x7F)])
        pos += 1 + (head & 0x7F)
        now += 0.5
        try:
            if not head & 0x7F:
                if ua.deadline is None:
                    break
                now = max(now, ua.deadline)
                timeouts += 1
                out = ua.on_timeout(now)
                check(timeouts < len(SCHEDULE), "the machine retried beyond its schedule")
                continue
            tid = sent[-1]  # the transaction in progress (an answer may start the next)
            if head & 0x80 and len(body) >= 8:
                body[4:8] = tid.to_bytes(4, "big")
            ignored = ua.ignored
            out = ua.receive(bytes(body), now)
        except TrackerError:
            return
        check(out is None or isinstance(out, (bytes, AnnounceResult)), f"receive gave {out!r:.80}")
        if len(body) < 8 or int.from_bytes(body[4:8], "big") != tid:
            check(out is None, "a datagram for another transaction was not ignored")
            check(ua.ignored == ignored + 1 or ua.deadline is None, "ignored count not raised")
        if isinstance(out, AnnounceResult):
            check_peers(out.peers)
            check(ua.result is out and ua.deadline is None, "a finished announce is still timed")
            return


def TestOneInput(data: bytes) -> None:
    """Decode ``data`` as datagrams or a conversation (see the module docstring)."""
    if not data:
        return
    flags, rest = data[0], data[1:]
    if flags & 0x02:
        conversation(rest, bool(flags & 0x01))
    else:
        codec(rest, bool(flags & 0x01))


if __name__ == "__main__":
    fuzz(TestOneInput)
    sys.exit(0)
