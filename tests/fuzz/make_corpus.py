"""Write the seed inputs of every fuzz target into ``tests/fuzz/corpus/<target>/``.

Seeds are named ``seed-<what>``; running this again replaces them (and only
them).  Inputs a fuzzer found and a fix made harmless are kept beside them
as ``crash-<what>`` and never touched here.  Seeds are valid inputs and
interesting invalid ones, small, so the fuzzer mutates from deep states
and the corpus stays far below 1 MB.

Run: ``python tests/fuzz/make_corpus.py`` (from anywhere).
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable

import fuzz_journal
import fuzz_wire
from fuzzlib import ROOT

from torrent import bencoding
from torrent.journal import SEAL, Journal
from torrent.metainfo import build
from torrent.tracker.udp import (
    AnnounceRequest,
    AnnounceResponse,
    ConnectRequest,
    ConnectResponse,
    ErrorResponse,
    UDPEvent,
    encode,
)
from torrent.wire import extension as ext
from torrent.wire import messages as m

CORPUS = ROOT / "tests" / "fuzz" / "corpus"
Seeds = dict[str, bytes]


# --------------------------------------------------------------------------- bencode
def bencode_seeds() -> Seeds:
    deep = b"l" * bencoding.MAX_DEPTH + b"e" * bencoding.MAX_DEPTH
    return {
        "int": b"i42e",
        "int-negative": b"i-17e",
        "int-zero": b"i0e",
        "int-widest": b"i" + b"9" * bencoding.MAX_INT_DIGITS + b"e",
        "int-too-wide": b"i" + b"9" * (bencoding.MAX_INT_DIGITS + 1) + b"e",
        "int-leading-zero": b"i042e",
        "int-negative-zero": b"i-0e",
        "int-plus": b"i+5e",
        "int-empty": b"ie",
        "string": b"4:spam",
        "string-empty": b"0:",
        "string-binary": b"5:\x00\xff\x80\x7f\x01",
        "string-short": b"10:abc",
        "string-huge-length": b"9999999999999999999:x",
        "string-length-leading-zero": b"04:spam",
        "list": b"l4:spami42ee",
        "list-empty": b"le",
        "list-nested": b"lli1eeli2eelee",
        "dict": b"d3:cow3:moo4:spam4:eggse",
        "dict-empty": b"de",
        "dict-unsorted": b"d4:spam4:eggs3:cow3:mooe",
        "dict-duplicate-key": b"d3:cow3:moo3:cow3:bahe",
        "dict-int-key": b"di1e3:mooe",
        "dict-key-without-value": b"d3:cowe",
        "dict-nested": b"d4:infod6:lengthi5e4:name1:aee",
        "depth-limit": deep,
        "depth-over-limit": b"l" + deep + b"e",
        "truncated": b"d4:infod6:lengthi5e",
        "trailing-data": b"i1ei2e",
        "stray-end": b"e",
        "empty": b"",
        "torrent-like": bencoding.encode({
            b"announce": b"http://t.example/announce", b"info": {
                b"name": b"a", b"length": 5, b"piece length": 16384, b"pieces": b"\x00" * 20}}),
    }


# --------------------------------------------------------------------------- metainfo
PIECE = 16 * 1024
TRACKER = "http://tracker.example/announce"


def _hashes(total: int, pl: int = PIECE) -> bytes:
    return b"".join(hashlib.sha1(b"%d" % i).digest() for i in range(-(-total // pl)))


def _torrent(info: dict[bytes, object], top: dict[bytes, object] | None = None) -> bytes:
    return bencoding.encode({**(top or {}), b"info": info})


def _multi(files: list[tuple[list[bytes], int]], **extra: object) -> dict[bytes, object]:
    total = sum(n for _p, n in files)
    info: dict[bytes, object] = {
        b"name": b"dir", b"piece length": PIECE, b"pieces": _hashes(total),
        b"files": [{b"path": p, b"length": n} for p, n in files]}
    info.update({k.encode(): v for k, v in extra.items()})
    return info


def metainfo_seeds() -> Seeds:
    single = {b"name": b"file.bin", b"length": 40_000, b"piece length": PIECE,
              b"pieces": _hashes(40_000)}
    unsorted = (b"d4:infod6:lengthi40000e4:name8:file.bin12:piece lengthi16384e6:pieces60:"
                + _hashes(40_000) + b"e8:announce" + b"%d:" % len(TRACKER) + TRACKER.encode()
                + b"e")
    return {
        "single-file": build(name="file.bin", files=None, length=40_000, piece_length=PIECE,
                             piece_hashes=_hashes(40_000), trackers=[[TRACKER]]),
        "multi-file": build(name="dir", files=[("a/b.txt", 10_000), ("c.txt", 30_000)],
                            length=None, piece_length=PIECE, piece_hashes=_hashes(40_000),
                            trackers=[[TRACKER, "udp://t.example:6969"], ["https://x.example/a"]],
                            private=True, comment="fuzz", creation_date=1_700_000_000),
        "unsorted-keys": unsorted,
        "pad-files": _torrent(_multi([([b"a"], 1000), ([b".pad", b"15384"], 15384),
                                      ([b"b"], 20_000)])),
        "pad-attr": _torrent({**_multi([([b"a"], 1000), ([b"p"], 15384)]), b"files": [
            {b"path": [b"a"], b"length": 1000},
            {b"path": [b"p"], b"length": 15384, b"attr": b"p"}]}),
        "utf8-alternates": _torrent({**single, b"name.utf-8": "fichier-é".encode(),
                                     b"name": b"\xff\xfe"}),
        "path-utf8": _torrent({**_multi([([b"x"], 100)]), b"files": [
            {b"path": [b"\xff"], b"path.utf-8": ["é".encode()], b"length": 100}]}),
        "hybrid": _torrent({**single, b"meta version": 2, b"file tree": {}},
                           {b"piece layers": {}}),
        "v2-only": _torrent({b"name": b"a", b"meta version": 2, b"piece length": PIECE,
                             b"file tree": {}}),
        "announce-list": _torrent(single, {b"announce": TRACKER.encode(), b"announce-list": [
            [b"udp://u.example:1337/announce", b"wss://no.example"], [], [TRACKER.encode()]]}),
        "announce-not-string": _torrent(single, {b"announce": 5}),
        "path-dotdot": _torrent(_multi([([b"..", b"etc", b"passwd"], 100)])),
        "path-dot": _torrent(_multi([([b".", b"x"], 100)])),
        "path-absolute": _torrent(_multi([([b"/etc", b"passwd"], 100)])),
        "path-backslash": _torrent(_multi([([b"..\\..\\x"], 100)])),
        "path-drive": _torrent(_multi([([b"C:", b"x"], 100)])),
        "path-nul": _torrent(_multi([([b"a\x00b"], 100)])),
        "path-empty-component": _torrent(_multi([([b"a", b"", b"b"], 100)])),
        "path-empty-list": _torrent(_multi([([], 100)])),
        "path-duplicate": _torrent(_multi([([b"a"], 100), ([b"a"], 100)])),
        "path-file-and-dir": _torrent(_multi([([b"a"], 100), ([b"a", b"b"], 100)])),
        "name-dotdot": _torrent({**single, b"name": b".."}),
        "name-slash": _torrent({**single, b"name": b"a/b"}),
        "piece-count-wrong": _torrent({**single, b"pieces": b"\x00" * 20}),
        "piece-length-small": _torrent({**single, b"piece length": 1024}),
        "pieces-not-multiple": _torrent({**single, b"pieces": b"\x00" * 59}),
        "length-negative": _torrent({**single, b"length": -1}),
        "empty-torrent": _torrent({**single, b"length": 0, b"pieces": b""}),
        "length-and-files": _torrent({**_multi([([b"a"], 100)]), b"length": 100}),
        "info-not-dict": bencoding.encode({b"info": [1, 2]}),
        "top-not-dict": b"li1ee",
        "private-not-int": _torrent({**single, b"private": b"yes"}),
        "not-bencode": b"d4:info",
    }


# --------------------------------------------------------------------------- wire
def _block(index: int, begin: int, length: int) -> bytes:
    seed = hashlib.sha1(b"%d/%d" % (index, begin)).digest()
    return (seed * (length // 20 + 1))[:length]


Between = Callable[[int, fuzz_wire.Owner], tuple[bytes, ...]]


def wire_stream(flags: int, prefix: tuple[bytes, ...] = (), *, newest_first: bool = False,
                limit: int = 64, between: Between | None = None,
                suffix: tuple[bytes, ...] = ()) -> bytes:
    """An honest peer's stream, frame by frame (split seed 255), answering our requests.

    Simulates the target's owner so each block answers a request outstanding
    at that point of the replay.
    """
    o = fuzz_wire.Owner(flags, fast=True)
    o.start(b"")
    frames: list[bytes] = []

    def send(frame: bytes) -> None:
        frames.append(frame)
        o.receive(frame)
        o.after_chunk()

    for f in prefix:
        send(f)
    for n in range(limit):
        reqs = o.proto.outstanding_requests
        if not reqs or o.proto.state is not fuzz_wire.wp.PeerState.ACTIVE:
            break
        i, begin, ln = reqs[-1] if newest_first else reqs[0]
        send(m.encode(m.Piece(i, begin, _block(i, begin, ln))))
        for f in between(n, o) if between else ():
            send(f)
    frames.extend(suffix)
    return bytes([flags, fuzz_wire.FRAME_SEED]) + b"".join(frames)


def wire_seeds() -> Seeds:
    unchoke, choke = m.encode(m.Unchoke()), m.encode(m.Choke())
    keepalive = m.encode(m.KeepAlive())
    bitfield = m.encode(m.Bitfield(b"\xff\xc0"))
    have = m.encode(m.Have(3))
    go = 0x04  # the peer unchoked us before the stream: requests are out
    fast = 0x80  # the peer offers BEP 6 and BEP 10
    ext_hs = m.encode(m.Extended(0, ext.ExtensionHandshake(
        m={"ut_metadata": 3, "ut_pex": 4}, v="fuzz 1.0", reqq=250, metadata_size=1000).encode()))
    ext_meta = m.encode(m.Extended(ext.OUR_EXTENSION_IDS["ut_metadata"],
                                   ext.MetadataRequest(0).encode()))
    ext_pex = m.encode(m.Extended(ext.OUR_EXTENSION_IDS["ut_pex"], ext.Pex(
        added=(ext.PexPeer("10.0.0.1", 6881, 2),), dropped=(("10.0.0.2", 80),)).encode()))

    def choke_once(n: int, o: fuzz_wire.Owner) -> tuple[bytes, ...]:
        return (choke, keepalive, unchoke) if n == 1 else ()

    def reject_newest(n: int, o: fuzz_wire.Owner) -> tuple[bytes, ...]:
        reqs = o.proto.outstanding_requests
        return (m.encode(m.Reject(*reqs[-1])),) if n % 3 == 1 and reqs else ()

    def chatter(n: int, o: fuzz_wire.Owner) -> tuple[bytes, ...]:
        return {0: (have, keepalive), 1: (m.encode(m.Interested()),),
                2: (m.frame(20, b"\x00d1:md6:ut_pexi1eee"), m.encode(m.Port(6881))),
                3: (m.encode(m.NotInterested()), m.encode(m.Bitfield(b"\xff\xc0")))}.get(n, ())

    def their_requests(n: int, o: fuzz_wire.Owner) -> tuple[bytes, ...]:
        return (m.encode(m.Request(n % 10, 0, 32)), m.encode(m.Cancel(n % 10, 0, 32))
                if n % 3 == 0 else keepalive)

    honest = wire_stream(go)
    head = honest[: 2 + 3 * 45]  # flags, seed and three 32-byte blocks of G0
    bad_frame = {
        "too-long": b"\xff\xff\xff\xff\x07",
        "piece-too-long": struct.pack(">IB", 9 + m.MAX_REQUEST_LENGTH + 1, 7),
        "piece-short-payload": m.frame(7, b"\x00\x00\x00\x01"),
        "piece-unrequested": m.encode(m.Piece(9, 0, b"x" * 5)),
        "piece-wrong-length": m.encode(m.Piece(3, 0, b"x" * 31)),
        "piece-out-of-range": m.encode(m.Piece(10, 0, b"x" * 32)),
        "piece-past-end": m.encode(m.Piece(9, 4, b"x" * 5)),
        "piece-duplicate": m.encode(m.Piece(0, 0, _block(0, 0, 32))),
        "have-out-of-range": m.encode(m.Have(10)),
        "have-bad-length": m.frame(4, b"\x00\x00\x01"),
        "bitfield-spare-bits": m.encode(m.Bitfield(b"\xff\xff")),
        "bitfield-wrong-length": m.encode(m.Bitfield(b"\xff")),
        "request-zero-length": m.encode(m.Request(0, 0, 0)),
        "request-too-long": m.encode(m.Request(0, 0, m.MAX_REQUEST_LENGTH + 1)),
        "choke-with-payload": m.frame(0, b"x"),
        "unknown-huge": struct.pack(">IB", m.MAX_UNKNOWN_MESSAGE_LENGTH + 2, 99),
    }
    seeds = {
        "honest-g0": honest,
        "honest-g0-newest-first": wire_stream(go, newest_first=True),
        "honest-g0-socket-reads": wire_stream(go | 0x02),
        "honest-g1-first-piece": wire_stream(go | 0x01, limit=2),
        "honest-g1-whole": wire_stream(go | 0x01 | 0x02, newest_first=True),
        "bitfield-then-unchoke": wire_stream(0, (bitfield, unchoke)),
        "haves-then-unchoke": wire_stream(0, (have, m.encode(m.Have(9)), unchoke), limit=5),
        "fast-have-all": wire_stream(fast, (m.encode(m.HaveAll()), unchoke)),
        "fast-have-none": wire_stream(fast, (m.encode(m.HaveNone()), m.encode(m.AllowedFast(3)),
                                             m.encode(m.Suggest(4)), unchoke), limit=4),
        "fast-choke-keeps-requests": wire_stream(go | fast, between=choke_once, limit=8),
        "fast-rejects": wire_stream(go | fast, between=reject_newest, limit=8),
        "fast-their-requests": wire_stream(go | fast | 0x08, between=their_requests, limit=8),
        "fast-extended": wire_stream(go | fast, (ext_hs, ext_meta, ext_pex, m.encode(
            m.Extended(9, b"whatever"))), limit=4),
        "choke-mid-stream": wire_stream(go, between=choke_once),
        "chatter": wire_stream(go, between=chatter),
        "their-requests": wire_stream(go | 0x08, between=their_requests, limit=8),
        "cancelled-late-block": wire_stream(go | 0x20, limit=6, suffix=(
            m.encode(m.Piece(1, 0, _block(1, 0, 32))),)),
        "endgame-duplicate": wire_stream(go | 0x40, limit=6),
        "timeouts": wire_stream(go | 0x10, between=lambda n, o: (keepalive,) * 3, limit=6),
        "everything": wire_stream(0xFF & ~0x01, (bitfield, unchoke), between=chatter, limit=8),
        "whole-chunk": bytes([go, 0]) + honest[2:],
        "bytewise": bytes([go, 1]) + head[2:],
        "small-chunks": bytes([go, 4]) + honest[2:],
        "keepalives-only": bytes([go, 0]) + keepalive * 8,
        "empty-stream": bytes([go, 0]),
    }
    for what, frame in bad_frame.items():
        seeds[f"bad-{what}"] = head + frame
    fast_head = bytes([go | fast]) + head[1:]
    bad_fast = {
        "have-all-late": m.encode(m.HaveAll()),
        "reject-never-sent": m.encode(m.Reject(9, 0, 5)),
        "allowed-fast-out-of-range": m.encode(m.AllowedFast(10)),
        "suggest-out-of-range": m.encode(m.Suggest(99)),
        "extension-handshake-not-dict": m.encode(m.Extended(0, b"li1ee")),
        "metadata-garbage": m.encode(m.Extended(1, b"d8:msg_typei0e5:piecei-1ee")),
        "pex-bad-length": m.encode(m.Extended(2, b"d5:added5:12345e")),
    }
    for what, frame in bad_fast.items():
        seeds[f"bad-fast-{what}"] = fast_head + frame
    seeds["bad-fast-not-negotiated"] = head + m.encode(m.HaveAll())
    return seeds


# --------------------------------------------------------------------------- tracker_http
def _http(head: bytes, body: bytes = b"") -> bytes:
    return head.replace(b"\n", b"\r\n") + b"\r\n" + body


def _chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n%x;ext=1\r\n%s\r\n0\r\nX-Trailer: 1\r\n\r\n" % (
        len(body[:7]), body[:7], len(body[7:]), body[7:])


def tracker_http_seeds() -> Seeds:
    compact = bytes([10, 0, 0, 1, 0x1A, 0xE1, 192, 168, 1, 2, 0, 80, 0, 0, 0, 0, 0, 1])
    v6 = bytes(15) + b"\x01" + b"\x1a\xe1" + b"\x20\x01\x0d\xb8" + bytes(11) + b"\x02\x00\x50"
    bodies = {
        "compact": bencoding.encode({b"interval": 1800, b"peers": compact}),
        "dict-peers": bencoding.encode({b"interval": 900, b"min interval": 60, b"peers": [
            {b"ip": b"10.0.0.2", b"port": 6881, b"peer id": b"x" * 20},
            {b"ip": b"tracker.example", b"port": 80}, {b"ip": b"::ffff:1.2.3.4", b"port": 1},
            {b"ip": b"bad host!", b"port": 5}, {b"ip": b"10.0.0.3", b"port": 0}, 7]}),
        "peers6": bencoding.encode({b"interval": 60, b"peers": b"", b"peers6": v6,
                                    b"complete": 5, b"incomplete": 7, b"tracker id": b"abc"}),
        "failure": bencoding.encode({b"failure reason": b"unregistered torrent\x00\x1b[31m"}),
        "warning": bencoding.encode({b"warning message": b"w" * 600, b"peers": b""}),
        "no-interval": bencoding.encode({b"peers": compact[:6]}),
        "bad-interval": bencoding.encode({b"interval": -1, b"peers": b""}),
        "bad-peers-length": bencoding.encode({b"interval": 1, b"peers": b"12345"}),
        "peers-int": bencoding.encode({b"interval": 1, b"peers": 5}),
        "not-a-dict": b"li1ee",
        "not-bencode": b"<html>502 Bad Gateway</html>",
    }
    seeds = {f"body-{k}": b"\x01\x00" + v for k, v in bodies.items()}
    body = bodies["compact"]
    responses = {
        "content-length": _http(b"HTTP/1.1 200 OK\nContent-Length: %d\n" % len(body), body),
        "chunked": _http(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n", _chunked(body)),
        "close-delimited": _http(b"HTTP/1.0 200 OK\nServer: x\n", body),
        "interim-100": _http(b"HTTP/1.1 100 Continue\n") + _http(
            b"HTTP/1.1 200 OK\nContent-Length: %d\n" % len(body), body),
        "no-content": _http(b"HTTP/1.1 204 No Content\n"),
        "repeated-headers": _http(b"HTTP/1.1 200 OK\nX-A: 1\nX-A: 2\nContent-Length: %d\n"
                                  b"Content-Length: %d\n" % (len(body), len(body)), body),
        "failure-body": _http(b"HTTP/1.1 200 OK\nContent-Length: %d\n"
                              % len(bodies["failure"]), bodies["failure"]),
        "bad-status-line": _http(b"HTTP/2 200 OK\n", body),
        "bad-header": _http(b"HTTP/1.1 200 OK\nNoColon\n", body),
        "conflicting-length": _http(b"HTTP/1.1 200 OK\nContent-Length: 1\nContent-Length: 2\n"),
        "huge-length": _http(b"HTTP/1.1 200 OK\nContent-Length: 999999999999\n"),
        "bad-chunk-size": _http(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n", b"zz\r\n"),
        "gzip": _http(b"HTTP/1.1 200 OK\nTransfer-Encoding: gzip\n", body),
        "truncated-body": _http(b"HTTP/1.1 200 OK\nContent-Length: 100\n", body[:10]),
    }
    for what, raw in responses.items():
        seeds[f"http-{what}"] = b"\x00\x00" + raw
    seeds["http-chunked-bytewise"] = b"\x00\x01" + responses["chunked"]
    seeds["http-no-eof"] = b"\x02\x05" + responses["close-delimited"]
    return seeds


# --------------------------------------------------------------------------- tracker_udp
def _datagram(body: bytes, stamp: bool = True) -> bytes:
    assert len(body) < 0x80
    return bytes([len(body) | (0x80 if stamp else 0)]) + body


def tracker_udp_seeds() -> Seeds:
    peers = (("10.0.0.1", 6881), ("192.168.1.2", 80), ("0.0.0.0", 1), ("10.0.0.1", 6881))
    connect = encode(ConnectResponse(0, 0x1122334455667788))
    announce = encode(AnnounceResponse(0, 1800, 3, 4, peers))
    error = encode(ErrorResponse(0, "not registered\x00\x07"))
    v6 = struct.pack(">IIIII", 1, 0, 60, 1, 1) + bytes(15) + b"\x01\x1a\xe1"
    request = encode(AnnounceRequest(
        connection_id=5, transaction_id=6, info_hash=b"i" * 20, peer_id=b"p" * 20,
        downloaded=1, left=2, uploaded=3, event=UDPEvent.STARTED, ip=0, key=7, num_want=50,
        port=6881, url_data=b"/announce?passkey=" + b"k" * 300))
    return {
        "connect-response": b"\x00" + connect,
        "announce-response": b"\x00" + announce,
        "announce-response-v6": b"\x01" + v6,
        "error-response": b"\x00" + error,
        "bad-peer-list": b"\x00" + announce[:-1],
        "unknown-action": b"\x00" + struct.pack(">II", 9, 0),
        "short": b"\x00\x00\x00\x00",
        "connect-request": b"\x00" + encode(ConnectRequest(42)),
        "announce-request": b"\x00" + request,
        "announce-request-options": b"\x00" + request[:98] + b"\x01\x01\x02\x03abc\x00junk",
        "announce-request-bad-event": b"\x00" + request[:80] + b"\x00\x00\x00\x09" + request[84:],
        "conversation": b"\x02" + _datagram(connect) + _datagram(announce[:60]),
        "conversation-v6": b"\x03" + _datagram(connect) + _datagram(v6),
        "conversation-error": b"\x02" + _datagram(connect) + _datagram(error),
        "conversation-wrong-tid": b"\x02" + _datagram(connect, stamp=False) + _datagram(connect),
        "conversation-timeouts": b"\x02\x00\x00" + _datagram(connect) + b"\x00" + _datagram(
            announce[:40]),
        "conversation-give-up": b"\x02\x00\x00\x00\x00",
        "conversation-connect-twice": b"\x02" + _datagram(connect) + _datagram(connect),
        "conversation-announce-first": b"\x02" + _datagram(announce[:40]),
        "conversation-short": b"\x02" + _datagram(b"\x00\x00\x00\x01"),
    }


# --------------------------------------------------------------------------- magnet
def magnet_seeds() -> Seeds:
    ih = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a"
    b32 = "YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK"
    base = f"magnet:?xt=urn:btih:{ih}"
    seeds = {
        "hex": base,
        "base32": f"magnet:?xt=urn:btih:{b32}",
        "full": base + "&dn=Some+File%20%C3%A9.iso&tr=http%3A%2F%2Ft.example%2Fannounce"
        "&tr=udp://u.example:6969&tr=wss://w.example&tr=http%3A%2F%2Ft.example%2Fannounce"
        "&x.pe=10.0.0.1:6881&x.pe=[2001:db8::1]:51413&x.pe=peer.example:80"
        "&ws=https://mirror.example/f.iso&so=0,2,4-6&x.foo=bar&xl=1000",
        "hybrid": base + "&xt=urn:btmh:1220" + "ab" * 32,
        "xt-numbered": f"magnet:?xt.1=urn:btih:{ih}&xt.2=urn:btih:{ih.upper()}",
        "spaces-and-fragment": f"  MAGNET:?xt=urn:btih:{ih}&&dn=x#frag  ",
        "v2-only": "magnet:?xt=urn:btmh:1220" + "ab" * 32,
        "no-xt": "magnet:?dn=nothing",
        "two-hashes": base + "&xt=urn:btih:" + "0" * 40,
        "hash-39": "magnet:?xt=urn:btih:" + ih[:39],
        "hash-not-hex": "magnet:?xt=urn:btih:" + "g" * 40,
        "bad-escape": base + "&dn=%zz",
        "escape-not-utf8": base + "&dn=%ff%fe",
        "control-in-name": base + "&dn=a%07b",
        "control-in-tracker": base + "&tr=http://t.example/%0a",
        "peer-no-port": base + "&x.pe=10.0.0.1",
        "peer-ipv6-unbracketed": base + "&x.pe=::1:80",
        "peer-port-zero": base + "&x.pe=10.0.0.1:0",
        "peer-bad-ipv4": base + "&x.pe=300.1.1.1:80",
        "so-backwards": base + "&so=5-2",
        "so-huge": base + "&so=0-999999999",
        "too-many-trackers": base + "&tr=http://t.example/a" * 201,
        "value-too-long": base + "&dn=" + "x" * 5000,
        "not-a-magnet": "http://example.com/file.torrent",
        "empty": "",
    }
    out = {k: v.encode() for k, v in seeds.items()}
    out["raw-non-utf8"] = base.encode() + b"&dn=\xff\xfe"
    return out


# --------------------------------------------------------------------------- extension
def extension_seeds() -> Seeds:
    hs = ext.ExtensionHandshake(m={"ut_metadata": 3, "ut_pex": 1, "lt_donthave": 7},
                                v="μTorrent 3.5", p=6881, reqq=500, yourip="10.0.0.7",
                                metadata_size=40_000).encode()
    info = bytes(range(256)) * 157  # 40,192 bytes: more than 40,000, cut below
    pex = ext.Pex(added=(ext.PexPeer("10.0.0.1", 6881, 0x12), ext.PexPeer("2001:db8::2", 80, 1)),
                  dropped=(("10.0.0.9", 1), ("2001:db8::3", 2))).encode()
    many = bencoding.encode({b"added": b"".join(
        bytes([10, 0, i // 256, i % 256, 0x1A, 0xE1]) for i in range(60))})

    def meta(header: dict[bytes, object], tail: bytes = b"") -> bytes:
        return bencoding.encode(header) + tail

    return {
        "handshake": b"\x00" + hs,
        "handshake-empty": b"\x00de",
        "handshake-ipv6": b"\x00" + ext.ExtensionHandshake(yourip="2001:db8::1").encode(),
        "handshake-m-not-dict": b"\x00" + meta({b"m": 5}),
        "handshake-id-300": b"\x00" + meta({b"m": {b"ut_pex": 300}}),
        "handshake-name-not-utf8": b"\x00" + meta({b"m": {b"\xff": 1}}),
        "handshake-port-70000": b"\x00" + meta({b"p": 70000}),
        "handshake-yourip-5": b"\x00" + meta({b"yourip": b"12345"}),
        "handshake-size-huge": b"\x00" + meta({b"metadata_size": 1 << 40}),
        "handshake-v-bytes": b"\x00" + meta({b"v": b"\xff" * 500, b"reqq": -1}),
        "metadata-request": b"\x01" + ext.MetadataRequest(2).encode(),
        "metadata-reject": b"\x01" + ext.MetadataReject(0).encode(),
        "metadata-data": b"\x02" + ext.metadata_data(info[:40_000], 0).encode(),
        "metadata-data-last": b"\x02" + ext.metadata_data(info[:40_000], 2).encode(),
        "metadata-data-unknown-size": b"\x01" + ext.metadata_data(info[:100], 0).encode(),
        "metadata-data-wrong-length": b"\x02" + meta(
            {b"msg_type": 1, b"piece": 2, b"total_size": 40_000}, b"x" * 10),
        "metadata-data-other-size": b"\x02" + ext.metadata_data(info[:100], 0).encode(),
        "metadata-unknown-type": b"\x01" + meta({b"msg_type": 7, b"piece": 0}),
        "metadata-request-trailing": b"\x01" + ext.MetadataRequest(0).encode() + b"xx",
        "metadata-piece-negative": b"\x01" + meta({b"msg_type": 0, b"piece": -1}),
        "metadata-no-type": b"\x01" + meta({b"piece": 0}),
        "pex": b"\x03" + pex,
        "pex-empty": b"\x03de",
        "pex-many": b"\x03" + many,
        "pex-duplicates-and-port-0": b"\x03" + meta(
            {b"added": b"\x0a\x00\x00\x01\x1a\xe1" * 2 + b"\x0a\x00\x00\x02\x00\x00",
             b"dropped": b"\x0a\x00\x00\x01\x1a\xe1" * 2}),
        "pex-bad-length": b"\x03" + meta({b"added": b"12345"}),
        "pex-flags-mismatch": b"\x03" + meta({b"added": b"\x0a\x00\x00\x01\x1a\xe1",
                                             b"added.f": b"\x01\x02"}),
        "pex-added-not-string": b"\x03" + meta({b"added": 5}),
        "not-bencode": b"\x00d1:m",
    }


# --------------------------------------------------------------------------- journal
def _record(index: int) -> bytes:
    crc = zlib.crc32(fuzz_journal.INFO_HASH + index.to_bytes(4, "little"))
    return struct.pack("<II", index, crc)


def _seal(stats: list[tuple[int, int]]) -> bytes:
    return _record(SEAL) + struct.pack("<I", len(stats)) + b"".join(
        struct.pack("<QQ", s, t) for s, t in stats)


def journal_seeds() -> Seeds:
    num = 16
    header = Journal("", fuzz_journal.INFO_HASH, num, fuzz_journal.PIECE_LENGTH).header()
    records = b"".join(_record(i) for i in (0, 3, 7, 15))
    seal = _seal([(1000, 1_700_000_000_000_000_000), (0, 0)])
    n = bytes([num - 1])
    return {
        # flags 0x01: the harness writes the header; 0x02: it fixes the checksums
        "records": b"\x01" + n + records,
        "records-and-seal": b"\x01" + n + records + seal,
        "seal-then-records": b"\x01" + n + seal + records,
        "two-seals": b"\x01" + n + seal + _record(1) + seal,
        "torn-record": b"\x01" + n + records + _record(5)[:5],
        "torn-seal": b"\x01" + n + records + seal[:-3],
        "seal-count-huge": b"\x01" + n + _record(SEAL) + struct.pack("<I", 0xFFFFFFFF),
        "bad-crc": b"\x01" + n + _record(1) + struct.pack("<II", 2, 0) + _record(3),
        "index-out-of-range": b"\x01" + n + _record(1) + _record(num),
        "header-only": b"\x01" + n,
        "own-header": b"\x00" + n + header + records,
        "wrong-piece-count": b"\x00\x07" + header + records,
        "wrong-magic": b"\x00" + n + b"FTJ0" + header[4:] + records,
        "short-header": b"\x00" + n + header[:20],
        "empty": b"\x00" + n,
        "fixed-crcs": b"\x03" + n + struct.pack("<II", 2, 0) * 3 + struct.pack("<II", SEAL, 0)
        + struct.pack("<I", 1) + bytes(16) + struct.pack("<II", 9, 0),
        "fixed-crcs-seal-table": b"\x03" + n + struct.pack("<II", SEAL, 0)
        + struct.pack("<I", 3) + bytes(40),
    }


TARGETS: dict[str, Callable[[], Seeds]] = {
    "bencode": bencode_seeds,
    "metainfo": metainfo_seeds,
    "wire": wire_seeds,
    "tracker_http": tracker_http_seeds,
    "tracker_udp": tracker_udp_seeds,
    "journal": journal_seeds,
    "magnet": magnet_seeds,
    "extension": extension_seeds,
}


def main() -> None:
    """Rewrite every target's ``seed-*`` files."""
    total = 0
    for target, make in TARGETS.items():
        out = CORPUS / target
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("seed-*"):
            old.unlink()
        seeds = make()
        for name, data in seeds.items():
            (out / f"seed-{name}").write_bytes(data)
        size = sum(len(d) for d in seeds.values())
        total += size
        print(f"{target}: {len(seeds)} seeds, {size} bytes")
    print(f"total: {total} bytes")


if __name__ == "__main__":
    main()
