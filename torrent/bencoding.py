"""Strict bencode (BEP 3): a validating scanner in front of bencode.py.

Theory of operation
-------------------
bencode.py (``bencodepy``) is the decoder the product brief fixes, but on its
own it is too trusting for input from strangers: it keeps the *last* of two
duplicate dict keys, calls ``int()`` on digit runs of any length (quadratic in
CPython for a 10 MB run), accepts ``+5``/``1_0``/`` 5`` as integers, recurses
once per nesting level, and cannot tell us *where* a value sat in the input.

So every input goes through :func:`scan` first: one iterative (never
recursive) pass over the whole buffer that checks the syntax, every length
against the bytes actually left (a string claiming 10**12 bytes fails before
anything is allocated), integer syntax and width, nesting depth, duplicate and
non-string dict keys, and trailing data. It also records the byte span of each
top-level dict value, because a torrent's info-hash is SHA-1 over the *exact*
bytes of ``info`` as they appear in the file -- real torrents have unsorted and
unknown keys, so a re-encoding would hash to a different torrent.

Only input the scanner accepted reaches bencode.py, and any exception it still
raises is translated into :class:`BencodeError`, the one error type of this
module. Encoding goes through bencode.py too (sorted keys: canonical form), and
its output is scanned, so :func:`encode` never produces bytes :func:`decode`
would refuse.

This module is sans-IO: bytes in, values out.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import bencodepy

__all__ = [
    "MAX_DEPTH",
    "MAX_INPUT",
    "MAX_INT_DIGITS",
    "MAX_LENGTH_DIGITS",
    "BencodeError",
    "Spans",
    "decode",
    "decode_prefix",
    "decode_with_spans",
    "encode",
    "scan",
]

# Deepest nesting of lists/dicts accepted. A v1 torrent nests 5 deep
# (top > info > files > file > path); a BEP 52 file tree adds one dict per
# directory level, so leave generous room. libtorrent's bdecode() defaults to
# a depth limit of 100; we use the same so we refuse no torrent it reads. The
# bound keeps bencode.py's recursive decoder far from Python's recursion limit.
MAX_DEPTH = 100

# Widest integer accepted, in digits (sign not counted). 32 digits is wider
# than any int64 (19 digits) a torrent field can hold, and bounded so that
# int() never runs on a 10 MB digit string (CPython's str->int is quadratic).
MAX_INT_DIGITS = 32

# Widest string-length prefix accepted, in digits. 19 digits cover any int64;
# the length is in any case checked against the bytes left in the input.
MAX_LENGTH_DIGITS = 19

# Default bound on the whole input. The largest real .torrent files (v2 with
# big piece layers, or 10**5 files) are a few tens of MB; 64 MiB leaves room
# while keeping a hostile file from costing more than one bounded read.
MAX_INPUT = 64 * 1024 * 1024

_INT_RE = re.compile(rb"i(0|-?[1-9][0-9]{0,%d})e" % (MAX_INT_DIGITS - 1))
_LEN_RE = re.compile(rb"(0|[1-9][0-9]{0,%d}):" % (MAX_LENGTH_DIGITS - 1))

_E = 0x65  # 'e'
_I = 0x69  # 'i'
_L = 0x6C  # 'l'
_D = 0x64  # 'd'
_ZERO = 0x30
_NINE = 0x39


class BencodeError(ValueError):
    """Input is not strict bencode; the message says what is wrong and at which byte offset."""


@dataclass(frozen=True, slots=True)
class Spans:
    """What :func:`scan` learnt about a valid input besides its validity.

    Attributes:
        top: for a top-level dict, each key mapped to the ``(start, end)`` byte
            span of its value in the input (``data[start:end]`` is the exact
            encoding of that value); empty when the top value is not a dict.
        canonical: True when every dict in the input has its keys in sorted
            order, i.e. ``encode(decode(data)) == data``. Unsorted keys are
            accepted (real torrents have them); this only notes it.
        end: where the top value ends: the length of the input, unless the
            scan allowed trailing data (:func:`decode_prefix`).
    """

    top: Mapping[bytes, tuple[int, int]]
    canonical: bool
    end: int

    @property
    def info(self) -> tuple[int, int] | None:
        """Span of the top-level ``info`` value, or None if there is none."""
        return self.top.get(b"info")


def _show(data: bytes, pos: int) -> str:
    """A short printable excerpt of the input at ``pos`` for error messages."""
    return repr(bytes(data[pos : pos + 12]))


def _int_error(data: bytes, pos: int) -> BencodeError:
    """Say why the integer starting at ``pos`` (an 'i') is not valid."""
    body_start = pos + 1
    # Look at no more than the widest valid integer plus sign and terminator.
    window = bytes(data[body_start : body_start + MAX_INT_DIGITS + 2])
    digits = window[1:] if window[:1] == b"-" else window
    run = len(digits) - len(digits.lstrip(b"0123456789"))
    if run > MAX_INT_DIGITS:
        why = f"integer has more than {MAX_INT_DIGITS} digits"
    elif run == 0:
        if not digits:
            why = "truncated integer"
        elif digits[:1] == b"e":
            why = f"integer has no digits ({_show(data, pos)})"
        else:
            why = f"integer contains a non-digit ({_show(data, pos)})"
    elif digits[run : run + 1] != b"e":
        if body_start + (len(window) - len(digits)) + run >= len(data):
            why = "truncated integer"
        else:
            why = f"integer contains a non-digit ({_show(data, pos)})"
    elif window[:2] == b"-0":
        why = "negative zero integer"
    else:
        why = f"integer with a leading zero ({_show(data, pos)})"
    return BencodeError(f"{why} at offset {pos}")


def _length_error(data: bytes, pos: int, what: str) -> BencodeError:
    """Say why the string length prefix at ``pos`` is not valid."""
    window = bytes(data[pos : pos + MAX_LENGTH_DIGITS + 1])
    run = len(window) - len(window.lstrip(b"0123456789"))
    if run > MAX_LENGTH_DIGITS:
        why = f"{what} length has more than {MAX_LENGTH_DIGITS} digits"
    elif pos + run >= len(data):
        why = f"truncated {what} length"
    elif window[:1] == b"0" and run > 1:
        why = f"{what} length with a leading zero"
    else:
        why = f"{what} length not followed by ':' ({_show(data, pos)})"
    return BencodeError(f"{why} at offset {pos}")


def scan(data: bytes, *, max_depth: int = MAX_DEPTH, allow_trailing: bool = False) -> Spans:
    """Validate a whole bencoded input in one iterative pass.

    Args:
        data: the complete input; exactly one bencoded value, nothing after it
            (unless ``allow_trailing``).
        max_depth: deepest list/dict nesting accepted.
        allow_trailing: stop at the end of the first value and report where
            it ends (``Spans.end``) instead of refusing the bytes after it;
            they are not looked at. BEP 9 ut_metadata data messages carry raw
            metadata right behind a bencoded dict.

    Returns:
        The top-level key spans and whether the input is canonical.

    Raises:
        BencodeError: on any syntax error, a length past the end of the input,
            a non-canonical integer (leading zero, ``-0``) or one wider than
            MAX_INT_DIGITS, nesting deeper than ``max_depth``, a duplicate or
            non-string dict key, truncation, or trailing data (unless allowed).
    """
    n = len(data)
    if n == 0:
        raise BencodeError("empty input")
    int_match = _INT_RE.match
    len_match = _LEN_RE.match
    # One frame per open container. A list frame is [False, start]; a dict
    # frame is [True, start, keys seen, last key, expecting a key?, current key].
    stack: list[list[Any]] = []
    top: dict[bytes, tuple[int, int]] = {}
    canonical = True
    pos = 0
    while True:
        if pos >= n:
            raise BencodeError(f"truncated input: value or 'e' expected at offset {pos}")
        c = data[pos]
        frame = stack[-1] if stack else None
        vstart = pos
        if frame is not None and frame[0] and frame[4]:
            # A dict wants its next key or its end.
            if c == _E:
                stack.pop()
                vstart = frame[1]
                pos += 1
            else:
                if not _ZERO <= c <= _NINE:
                    raise BencodeError(
                        f"dict key must be a byte string, got {_show(data, pos)} at offset {pos}"
                    )
                m = len_match(data, pos)
                if m is None:
                    raise _length_error(data, pos, "dict key")
                start = m.end()
                end = start + int(m.group(1))
                if end > n:
                    raise BencodeError(
                        f"dict key at offset {pos} claims {end - start} bytes,"
                        f" only {n - start} left"
                    )
                key = bytes(data[start:end])
                if key in frame[2]:
                    raise BencodeError(f"duplicate dict key {key[:40]!r} at offset {pos}")
                last = frame[3]
                if last is not None and key < last:
                    canonical = False
                frame[2].add(key)
                frame[3] = key
                frame[5] = key
                frame[4] = False
                pos = end
                continue
        elif c == _I:
            m = int_match(data, pos)
            if m is None:
                raise _int_error(data, pos)
            pos = m.end()
        elif _ZERO <= c <= _NINE:
            m = len_match(data, pos)
            if m is None:
                raise _length_error(data, pos, "string")
            start = m.end()
            end = start + int(m.group(1))
            if end > n:
                raise BencodeError(
                    f"string at offset {pos} claims {end - start} bytes, only {n - start} left"
                )
            pos = end
        elif c == _L or c == _D:
            if len(stack) >= max_depth:
                raise BencodeError(f"nesting deeper than {max_depth} at offset {pos}")
            stack.append([True, pos, set(), None, True, None] if c == _D else [False, pos])
            pos += 1
            continue
        elif c == _E and frame is not None:
            if frame[0]:
                raise BencodeError(f"dict key {frame[5][:40]!r} has no value at offset {pos}")
            stack.pop()
            vstart = frame[1]
            pos += 1
        else:
            raise BencodeError(f"unexpected byte {_show(data, pos)} at offset {pos}")

        # A value spanning [vstart, pos) is complete.
        if not stack:
            if pos != n and not allow_trailing:
                raise BencodeError(f"trailing data after the top value at offset {pos}")
            return Spans(top=top, canonical=canonical, end=pos)
        parent = stack[-1]
        if parent[0]:
            if len(stack) == 1:
                top[parent[5]] = (vstart, pos)
            parent[4] = True


@functools.lru_cache(maxsize=8)
def _decoder(max_depth: int) -> bencodepy.Bencode:
    # encoding=None: strings come back as bytes (torrent strings are often not
    # UTF-8, and pieces never are). dict_ordered=False gives plain dicts, which
    # keep insertion (= file) order on Python 3.7+. bencode.py counts depth
    # from 0 at the top container, so the same max_depth is a looser bound
    # than the scanner's and never fires first.
    return bencodepy.Bencode(encoding=None, dict_ordered=False, max_depth=max_depth)


_ENCODER = bencodepy.Bencode()


def decode_with_spans(
    data: bytes, *, max_size: int = MAX_INPUT, max_depth: int = MAX_DEPTH
) -> tuple[Any, Spans]:
    """Decode strict bencode and return the value and its :class:`Spans`.

    Args:
        data: the complete input.
        max_size: largest input accepted, in bytes.
        max_depth: deepest nesting accepted.

    Returns:
        ``(value, spans)``: value made of int, bytes, list and dict (keys are
        bytes, in file order).

    Raises:
        BencodeError: the input is too big or not strict bencode.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    if len(data) > max_size:
        raise BencodeError(f"input is {len(data)} bytes, more than the bound of {max_size}")
    spans = scan(data, max_depth=max_depth)
    try:
        value = _decoder(max_depth).decode(data)
    except (
        bencodepy.BencodeDecodeError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        RecursionError,
    ) as exc:  # the scanner should have caught it first; still never leak a library error
        raise BencodeError(f"bencode.py refused the input: {exc}") from exc
    return value, spans


def decode(data: bytes, *, max_size: int = MAX_INPUT, max_depth: int = MAX_DEPTH) -> Any:
    """Decode strict bencode.

    Args:
        data: the complete input.
        max_size: largest input accepted, in bytes.
        max_depth: deepest nesting accepted.

    Returns:
        The value: int, bytes, list, or dict with bytes keys in file order.

    Raises:
        BencodeError: the input is too big or not strict bencode.
    """
    return decode_with_spans(data, max_size=max_size, max_depth=max_depth)[0]


def decode_prefix(
    data: bytes, *, max_size: int = MAX_INPUT, max_depth: int = MAX_DEPTH
) -> tuple[Any, int]:
    """Decode the strict bencoded value at the start of ``data``; bytes may follow it.

    Args:
        data: the input: one bencoded value, then anything.
        max_size: largest encoding of the value accepted, in bytes (what
            follows it is not counted).
        max_depth: deepest nesting accepted.

    Returns:
        ``(value, end)``: the value, and the offset where the bytes after it begin.

    Raises:
        BencodeError: the value is not strict bencode, is truncated, or its
            encoding is longer than ``max_size``.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    end = scan(data, max_depth=max_depth, allow_trailing=True).end
    if end > max_size:
        raise BencodeError(f"value is {end} bytes, more than the bound of {max_size}")
    return decode(data[:end], max_size=max_size, max_depth=max_depth), end


def encode(obj: Any) -> bytes:
    """Encode a value canonically (dict keys sorted); str is encoded as UTF-8.

    Args:
        obj: int (bool counts as 0/1), bytes, str, list, tuple, or dict with
            bytes/str keys, nested.

    Returns:
        The bencoding.

    Raises:
        TypeError: a value (or dict key) of a type bencode cannot hold.
        BencodeError: the result would not decode: duplicate keys once str keys
            are UTF-8-encoded (``{"a": 1, b"a": 2}``), an integer wider than
            MAX_INT_DIGITS, or nesting deeper than MAX_DEPTH.
    """
    try:
        out: bytes = _ENCODER.encode(obj)
    except KeyError as exc:  # bencode.py looks encoders up by exact type
        raise TypeError(f"cannot bencode a value of type {exc.args[0]!r}") from exc
    except RecursionError as exc:
        raise BencodeError("cannot encode: nesting too deep") from exc
    try:
        scan(out)
    except BencodeError as exc:
        raise BencodeError(f"cannot encode this value: {exc}") from exc
    return out
