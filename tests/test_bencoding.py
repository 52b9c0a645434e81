"""torrent.bencoding: strict scanner, decode/encode round trips, bounds, errors.

A small recursive reference decoder written from BEP 3 (plus our strictness
rules) lives here; Hypothesis checks the real scanner+bencode.py pipeline
against it on valid, mutated and random inputs.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torrent.bencoding import (
    MAX_DEPTH,
    MAX_INT_DIGITS,
    BencodeError,
    decode,
    decode_prefix,
    decode_with_spans,
    encode,
    scan,
)

# --- reference decoder ---------------------------------------------------------


class _RefError(Exception):
    pass


def _ref_value(b: bytes, i: int, depth: int) -> tuple[Any, int]:
    if i >= len(b):
        raise _RefError("eof")
    c = b[i : i + 1]
    if c == b"i":
        j = b.index(b"e", i) if b"e" in b[i:] else -1
        if j < 0:
            raise _RefError("int eof")
        body = b[i + 1 : j]
        neg = body.startswith(b"-")
        digits = body[1:] if neg else body
        if not digits or not digits.isdigit() or not digits.isascii():
            raise _RefError("int digits")
        if len(digits) > MAX_INT_DIGITS or (digits[0:1] == b"0" and (len(digits) > 1 or neg)):
            raise _RefError("int form")
        return int(body), j + 1
    if c.isdigit():
        j = b.find(b":", i)
        if j < 0:
            raise _RefError("len eof")
        digits = b[i:j]
        if not digits.isdigit() or (digits[0:1] == b"0" and len(digits) > 1) or len(digits) > 19:
            raise _RefError("len form")
        end = j + 1 + int(digits)
        if end > len(b):
            raise _RefError("string eof")
        return b[j + 1 : end], end
    if c in (b"l", b"d"):
        if depth + 1 > MAX_DEPTH:
            raise _RefError("depth")
        i += 1
        if c == b"l":
            out: list[Any] = []
            while b[i : i + 1] != b"e":
                v, i = _ref_value(b, i, depth + 1)
                out.append(v)
            return out, i + 1
        d: dict[bytes, Any] = {}
        while b[i : i + 1] != b"e":
            if not b[i : i + 1].isdigit():
                raise _RefError("key type")
            k, i = _ref_value(b, i, depth + 1)
            if k in d:
                raise _RefError("dup")
            d[k], i = _ref_value(b, i, depth + 1)
        return d, i + 1
    raise _RefError("byte")


def ref_decode(b: bytes) -> Any:
    v, end = _ref_value(b, 0, 0)
    if end != len(b):
        raise _RefError("trailing")
    return v


# --- strategies ------------------------------------------------------------------

INTS = st.integers(min_value=-(10**MAX_INT_DIGITS - 1), max_value=10**MAX_INT_DIGITS - 1)
VALUES = st.recursive(
    INTS | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.binary(max_size=6), inner, max_size=5)
    ),
    max_leaves=30,
)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def unsorted_encode(v: Any, reverse: bool) -> bytes:
    """Encode with dict keys in insertion order, or reversed: non-canonical input."""
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, bytes):
        return b"%d:%s" % (len(v), v)
    if isinstance(v, list):
        return b"l" + b"".join(unsorted_encode(x, reverse) for x in v) + b"e"
    items = list(v.items())
    if reverse:
        items.reverse()
    return (
        b"d"
        + b"".join(unsorted_encode(k, reverse) + unsorted_encode(x, reverse) for k, x in items)
        + b"e"
    )


def decode_or_error(b: bytes) -> tuple[str, Any]:
    try:
        return "ok", decode(b)
    except BencodeError as e:
        return "err", str(e)


# --- properties ------------------------------------------------------------------


@FAST
@given(VALUES)
def test_decode_encode_round_trip(v: Any) -> None:
    b = encode(v)
    assert decode(b) == v
    assert encode(decode(b)) == b
    assert scan(b).canonical
    assert ref_decode(b) == v


@FAST
@given(VALUES)
def test_unsorted_keys_are_accepted_and_noted(v: Any) -> None:
    b = unsorted_encode(v, reverse=True)
    assert decode(b) == v
    assert encode(decode(b)) == encode(v)
    assert scan(b).canonical == (b == encode(v))


@FAST
@given(VALUES)
def test_truncation_at_every_offset_fails(v: Any) -> None:
    b = encode(v)
    for cut in range(len(b)):
        with pytest.raises(BencodeError):
            decode(b[:cut])


@FAST
@given(VALUES, st.binary(min_size=1, max_size=8))
def test_trailing_data_fails_and_bytes_like_inputs_agree(v: Any, extra: bytes) -> None:
    b = encode(v)
    with pytest.raises(BencodeError, match=r"trailing data|truncated|unexpected|length|integer"):
        decode(b + extra)
    assert decode(bytearray(b)) == v
    assert decode(memoryview(b)) == v


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_only_ever_raise_bencode_error_and_match_reference(b: bytes) -> None:
    status, value = decode_or_error(b)
    try:
        expected: Any = ref_decode(b)
    except (_RefError, RecursionError):
        assert status == "err"
    else:
        assert (status, value) == ("ok", expected)


@settings(max_examples=1000, deadline=None)
@given(
    VALUES,
    st.lists(
        st.tuples(st.integers(0, 10**6), st.integers(0, 255), st.sampled_from("fid")),
        min_size=1,
        max_size=3,
    ),
)
def test_mutated_valid_input_matches_reference(v: Any, edits: list[tuple[int, int, str]]) -> None:
    b = bytearray(encode(v))
    for where, byte, kind in edits:
        pos = where % (len(b) + 1)
        if kind == "f" and pos < len(b):
            b[pos] = byte
        elif kind == "i":
            b[pos:pos] = bytes([byte])
        elif kind == "d" and pos < len(b):
            del b[pos]
    data = bytes(b)
    status, value = decode_or_error(data)
    try:
        expected: Any = ref_decode(data)
    except _RefError:
        assert status == "err"
    else:
        assert (status, value) == ("ok", expected)


@FAST
@given(st.dictionaries(st.binary(max_size=6), VALUES, min_size=1, max_size=5))
def test_top_level_spans_are_exact_encodings(d: dict[bytes, Any]) -> None:
    b = unsorted_encode(d, reverse=False)
    spans = scan(b)
    assert set(spans.top) == set(d)
    for key, (start, end) in spans.top.items():
        assert decode(b[start:end]) == d[key]
    assert spans.end == len(b)


# --- examples: each error names what and where ---------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty input"),
        (b"i-0e", "negative zero integer at offset 0"),
        (b"i03e", "leading zero"),
        (b"li1ei-01ee", "offset 4"),
        (b"ie", "no digits"),
        (b"i+5e", "non-digit"),
        (b"i1_0e", "non-digit"),
        (b"i 5e", "non-digit"),
        (b"i12", "truncated integer"),
        (b"i" + b"1" * (MAX_INT_DIGITS + 1) + b"e", f"more than {MAX_INT_DIGITS} digits"),
        (b"i-" + b"1" * (MAX_INT_DIGITS + 1) + b"e", f"more than {MAX_INT_DIGITS} digits"),
        (b"01:a", "leading zero"),
        (b"-1:a", "unexpected byte"),
        (b"1", "truncated string length"),
        (b"5:ab", "claims 5 bytes, only 2 left"),
        (b"999999999999:x", "claims 999999999999 bytes"),
        (b"1" * 25 + b":", "more than 19 digits"),
        (b"3 :abc", "not followed by ':'"),
        (b"d1:ai1e1:ai2ee", "duplicate dict key b'a' at offset 7"),
        (b"d1:xd1:ai1e1:ai2eee", "duplicate dict key b'a' at offset 11"),
        (b"ld1:xi1e1:xi1eee", "duplicate dict key"),
        (b"di1ei2ee", "dict key must be a byte string"),
        (b"dli1eei2ee", "dict key must be a byte string"),
        (b"d1:ae", "has no value at offset 4"),
        (b"d1:a", "truncated input"),
        (b"l", "truncated input"),
        (b"i1ei2e", "trailing data after the top value at offset 3"),
        (b"le ", "trailing data"),
        (b"e", "unexpected byte"),
        (b"x", "unexpected byte"),
        (b"lxe", "unexpected byte b'xe' at offset 1"),
    ],
)
def test_error_messages(data: bytes, message: str) -> None:
    with pytest.raises(BencodeError, match=_escape(message)):
        decode(data)


def _escape(s: str) -> str:
    import re

    return re.escape(s)


def test_bounds_are_exact() -> None:
    assert decode(b"l" * MAX_DEPTH + b"e" * MAX_DEPTH) is not None
    with pytest.raises(BencodeError, match=f"nesting deeper than {MAX_DEPTH}"):
        decode(b"l" * (MAX_DEPTH + 1) + b"e" * (MAX_DEPTH + 1))
    with pytest.raises(BencodeError, match="nesting deeper than 3"):
        decode(b"lllleeee", max_depth=3)
    big = 10**MAX_INT_DIGITS - 1
    assert decode(b"i%de" % big) == big
    assert decode(b"i%de" % -big) == -big
    with pytest.raises(BencodeError, match="51 bytes, more than the bound of 50"):
        decode(b"0:" + b"x" * 49, max_size=50)
    assert decode(b"47:" + b"x" * 47, max_size=50) == b"x" * 47


def test_scan_is_iterative_and_bounded_on_deep_input() -> None:
    # Far past Python's recursion limit: must fail on the depth bound, not crash.
    with pytest.raises(BencodeError, match="nesting deeper"):
        scan(b"l" * 100_000, max_depth=50_000)
    spans = scan(b"l" * 5000 + b"e" * 5000, max_depth=5000)
    assert spans.top == {} and spans.canonical


def test_library_failure_is_translated() -> None:
    # With a depth bound the scanner allows but Python's stack does not,
    # bencode.py hits RecursionError: it must come out as BencodeError.
    deep = b"l" * 20_000 + b"e" * 20_000
    with pytest.raises(BencodeError, match=r"bencode\.py refused"):
        decode(deep, max_depth=20_000)


def test_dicts_keep_file_order_and_strings_are_bytes() -> None:
    v = decode(b"d1:bi1e1:a3:xyze")
    assert list(v) == [b"b", b"a"]
    assert v[b"a"] == b"xyz" and isinstance(v[b"a"], bytes)


def test_spans_only_for_top_level_dict_keys() -> None:
    b = b"d4:infod1:ai1ee3:fooli1ei2eee"
    spans = scan(b)
    assert spans.info == (7, 15) and b[7:15] == b"d1:ai1ee"
    assert spans.top[b"foo"] == (20, 28)
    assert scan(b"li1ee").top == {} and scan(b"li1ee").info is None


def test_encode_canonical_and_utf8() -> None:
    assert encode({"b": 1, b"a": [True, False, "é"]}) == b"d1:ali1ei0e2:\xc3\xa9e1:bi1ee"
    assert encode(("x", 1)) == b"l1:xi1ee"
    assert encode(-5) == b"i-5e"


def test_encode_refuses_what_decode_would_refuse() -> None:
    with pytest.raises(BencodeError, match="duplicate dict key"):
        encode({"a": 1, b"a": 2})
    with pytest.raises(BencodeError, match="more than"):
        encode(10**MAX_INT_DIGITS)
    deep: Any = []
    for _ in range(MAX_DEPTH):
        deep = [deep]
    with pytest.raises(BencodeError, match="nesting"):
        encode(deep)


@pytest.mark.parametrize("bad", [1.5, None, {1: 2}, [object()], bytearray(b"x")])
def test_encode_refuses_other_types(bad: Any) -> None:
    with pytest.raises(TypeError):
        encode(bad)


@pytest.mark.parametrize(
    "bomb",
    [
        pytest.param(b"l" * 10_000_000, id="deep-nesting"),
        pytest.param(b"99999999999:" + b"a" * 10_000_000, id="string-length-lie"),
        pytest.param(b"i" + b"9" * 10_000_000 + b"e", id="integer-bomb"),
        pytest.param(b"d" + b"1:a" * 3_000_000 + b"e", id="duplicate-keys"),
    ],
)
def test_ten_megabyte_bombs_are_refused_fast(bomb: bytes) -> None:
    start = time.perf_counter()
    with pytest.raises(BencodeError):
        decode(bomb)
    assert time.perf_counter() - start < 1.0  # generous: the real number is in bench/


def test_decode_with_spans_returns_both() -> None:
    v, spans = decode_with_spans(b"d4:infoi1ee")
    assert v == {b"info": 1} and spans.info == (7, 10)


def test_decode_prefix_stops_at_the_end_of_the_first_value() -> None:
    # BEP 9 data messages: a dict, then raw bytes that may look like anything
    for tail in (b"", b"x", b"e", b"d1:ae", b"\xff" * 100):
        assert decode_prefix(b"d1:ai1ee" + tail) == ({b"a": 1}, 8)
    assert decode_prefix(b"i5e5:hello") == (5, 3)
    assert scan(b"li1eeXYZ", allow_trailing=True).end == 5
    with pytest.raises(BencodeError, match="trailing data"):
        scan(b"li1eeXYZ")


def test_decode_prefix_is_as_strict_as_decode() -> None:
    for bad in (b"", b"d1:ai1e", b"d1:ai01ee", b"d1:ai1e1:ai2ee", b"x"):
        with pytest.raises(BencodeError):
            decode_prefix(bad + b"tail")
    # max_size bounds the value, not what follows it
    assert decode_prefix(b"i1e" + b"z" * 100, max_size=3) == (1, 3)
    with pytest.raises(BencodeError, match="bound of 3"):
        decode_prefix(b"i10e", max_size=3)
