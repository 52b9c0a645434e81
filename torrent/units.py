"""Sizes as people write them: ``1G``, ``512M``, ``64KiB``, ``1.5M``, ``1000``.

One parser for every size the command line and the tools take (payload
sizes, piece lengths, rates).  Suffixes are powers of 1024: K, M, G, T,
each optionally followed by ``i`` and/or ``B`` (``64K``, ``64KB``,
``64KiB``), case-insensitive.
"""

from __future__ import annotations

__all__ = ["MAX_SIZE", "SIZE_UNITS", "parse_size", "size_arg"]

#: Multiplier of each suffix (powers of 1024, as ``64KiB`` says).
SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
#: The largest size taken: the largest file offset (a signed 64-bit ``off_t``).
#: No payload, piece or rate can meaningfully be larger.
MAX_SIZE = (1 << 63) - 1


def parse_size(text: str) -> int:
    """The number of bytes ``text`` names.

    Args:
        text: a number (fractions allowed) with an optional K/M/G/T suffix.

    Returns:
        A whole number of bytes (a fraction of a byte is dropped) from 1 to
        :data:`MAX_SIZE`.

    Raises:
        ValueError: not a size (also ``inf`` and ``nan``), not positive, or
            larger than :data:`MAX_SIZE`; the message quotes ``text``.
    """
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in SIZE_UNITS else ""
    number = t[: len(t) - len(unit)]
    try:
        n = int(number) * SIZE_UNITS[unit]  # exact, however large
    except ValueError:
        try:
            n = int(float(number) * SIZE_UNITS[unit])  # "1.5", "1e3"
        except (ValueError, OverflowError):  # OverflowError: "inf"; ValueError: "nan", words
            raise ValueError(f"not a size: {text!r}") from None
    if n <= 0:
        raise ValueError(f"must be positive: {text!r}")
    if n > MAX_SIZE:
        raise ValueError(f"too large: {text!r} (at most {MAX_SIZE} bytes)")
    return n


def size_arg(text: str) -> int:
    """:func:`parse_size` as an argparse ``type``: a bad size is a one-line usage error."""
    import argparse  # only the command lines need it

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
