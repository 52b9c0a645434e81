"""Fuzz the strict bencode decoder (torrent/bencoding.py).

Input: any bytes, decoded as a whole bencoded value.

Holds for every input:
- ``decode`` returns a value or raises ``BencodeError``, nothing else;
- the scanner and bencode.py agree: an input :func:`scan` accepts decodes;
- a decoded value re-encodes to bytes that decode to the same value, and to
  the input itself when the scanner called it canonical (sorted keys);
- every top-level span holds exactly the encoding of its value;
- ``decode_prefix`` reads the value at the start of any input and says where
  the rest begins; on a whole value it agrees with ``decode``.

Run: ``python tests/fuzz/fuzz_bencode.py [libFuzzer flags] [corpus dirs]``.
"""

from __future__ import annotations

import sys

from fuzzlib import check, fuzz, instrumented

with instrumented(__name__):
    from torrent import bencoding
    from torrent.bencoding import BencodeError


def check_prefix(data: bytes, whole: object, whole_ok: bool) -> None:
    """``decode_prefix``: the value at the start, and where the rest begins."""
    try:
        value, end = bencoding.decode_prefix(data)
    except BencodeError:
        check(not whole_ok, "decode_prefix refused an input decode accepts")
        return
    check(0 < end <= len(data), f"prefix ends at {end} of {len(data)}")
    check(bencoding.decode(data[:end]) == value, "the prefix does not decode to its value")
    if whole_ok:
        check(end == len(data) and value == whole, "decode_prefix disagrees with decode")


def TestOneInput(data: bytes) -> None:
    """Decode ``data``; check agreement, round trips and spans (see the module docstring)."""
    try:
        spans = bencoding.scan(data)
    except BencodeError:
        scanned = False
    else:
        scanned = True
    try:
        value, spans = bencoding.decode_with_spans(data)
    except BencodeError as exc:
        check(not scanned, f"the scanner accepted the input but decoding failed: {exc}")
        check_prefix(data, None, False)
        return
    check(scanned, "decoding succeeded on an input the scanner refused")
    check_prefix(data, value, True)
    check(spans.end == len(data), f"spans end at {spans.end}, input has {len(data)} bytes")
    again = bencoding.encode(value)
    check(bencoding.decode(again) == value, "decode(encode(v)) != v")
    if spans.canonical:
        check(again == data, "encode(decode(b)) != b for a canonical input")
    if isinstance(value, dict):
        check(set(spans.top) == set(value), "top-level spans do not name the dict's keys")
        for key, (start, end) in spans.top.items():
            check(bencoding.decode(data[start:end]) == value[key],
                  f"the span of top-level key {key[:40]!r} does not hold its value")
    else:
        check(not spans.top, "top-level spans for a value that is not a dict")


if __name__ == "__main__":
    fuzz(TestOneInput)
    sys.exit(0)
