"""Fuzz the extension protocol codecs (torrent/wire/extension.py): BEP 10, 9 and 11 bodies.

Input: ``kind | bytes``: ``kind % 4`` picks the decoder of the body that
follows: 0 the extension handshake, 1 a ut_metadata message with no known
metadata size, 2 one whose metadata is 40,000 bytes, 3 a ut_pex message.

Holds for every input:
- nothing but ``RemoteProtocolError`` escapes;
- what decodes keeps its bounds (extension names and ids, client name,
  ports, ``reqq``, ``metadata_size``; metadata pieces of exactly the length
  BEP 9 gives them; PEX added and dropped lists, unique, ports 1..65535,
  flags one byte);
- what decodes encodes again (no ``LocalProtocolError``), and that decodes
  to the same value.

Run: ``python tests/fuzz/fuzz_extension.py [libFuzzer flags] [corpus dirs]``.
"""

from __future__ import annotations

import sys

from fuzzlib import check, fuzz, instrumented

with instrumented(__name__):
    from torrent.errors import RemoteProtocolError
    from torrent.wire import extension as ext

#: The metadata size kind 2 holds data messages to: three pieces, the last short.
METADATA_SIZE = 40_000


def handshake(body: bytes) -> None:
    try:
        hs = ext.ExtensionHandshake.decode(body)
    except RemoteProtocolError:
        return
    check(len(hs.m) <= ext.MAX_EXTENSION_NAMES, "too many extension names")
    check(all(0 <= i <= 255 for i in hs.m.values()), "extension id out of range")
    check(hs.v is None or len(hs.v) <= ext.MAX_CLIENT_NAME_LENGTH, "client name not cut")
    check(hs.p is None or 1 <= hs.p <= 65535, "listen port out of range")
    check(hs.reqq is None or 1 <= hs.reqq <= ext.MAX_REQQ, "reqq out of range")
    check(hs.metadata_size is None or 1 <= hs.metadata_size <= ext.MAX_METADATA_SIZE,
          "metadata_size out of range")
    check(ext.ExtensionHandshake.decode(hs.encode()) == hs, f"{hs!r:.200} does not round-trip")


def metadata(body: bytes, size: int | None) -> None:
    try:
        msg = ext.decode_metadata_message(body, size)
    except RemoteProtocolError:
        return
    if msg is None:
        return
    check(0 <= msg.piece < ext.MAX_METADATA_PIECES, "piece out of range")
    if isinstance(msg, ext.MetadataData):
        check(size is None or msg.total_size == size, "total_size differs from the known size")
        check(len(msg.data) == ext.metadata_piece_length(msg.total_size, msg.piece),
              "data not as long as its piece")
    check(ext.decode_metadata_message(msg.encode(), size) == msg, f"{msg!r:.200} round trip")


def pex(body: bytes) -> None:
    try:
        p = ext.Pex.decode(body)
    except RemoteProtocolError:
        return
    check(len(p.added) <= ext.MAX_PEX_ADDED and len(p.dropped) <= ext.MAX_PEX_DROPPED,
          "PEX lists over their bounds")
    added = [(a.ip, a.port) for a in p.added]
    check(len(set(added)) == len(added) and len(set(p.dropped)) == len(p.dropped), "duplicates")
    check(all(0 < port <= 65535 for _ip, port in [*added, *p.dropped]), "port 0 kept")
    check(all(0 <= a.flags <= 255 for a in p.added), "flags not a byte")
    again = ext.Pex.decode(ext.Pex(p.added, p.dropped).encode())
    # encoding groups IPv4 before IPv6, as the decoder reads them: the same order
    check(again == ext.Pex(p.added, p.dropped), f"{p!r:.200} does not round-trip")


def TestOneInput(data: bytes) -> None:
    """Decode the body with the decoder ``data[0]`` picks (see the module docstring)."""
    if not data:
        return
    kind, body = data[0] % 4, data[1:]
    if kind == 0:
        handshake(body)
    elif kind == 3:
        pex(body)
    else:
        metadata(body, METADATA_SIZE if kind == 2 else None)


if __name__ == "__main__":
    fuzz(TestOneInput)
    sys.exit(0)
