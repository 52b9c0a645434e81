"""What every fuzz target shares: the tree on the path, instrumentation, splits, the entry point.

A target is a module ``fuzz_<name>.py`` beside this one with
``TestOneInput(data: bytes) -> None``: it returns for any input the code
under test handles as documented (a value, or the one error type the
module declares) and raises for anything else -- another exception, a
broken invariant (``Finding``), a bound exceeded.  Run as a script it is an
atheris (libFuzzer) fuzzer; imported, ``TestOneInput`` is a plain function
(``tests/test_fuzz.py`` replays the corpus through it without atheris).

This module imports nothing from the package: the package must be imported
for the first time inside :func:`instrumented`, or atheris sees no coverage.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["ROOT", "Finding", "check", "fuzz", "instrumented", "split"]

#: The checkout holding this file: its package is the one fuzzed, whatever is installed.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: Modules atheris instruments: the package, and bencode.py under its strict scanner.
INSTRUMENTED = ("torrent", "bencodepy")


class Finding(AssertionError):
    """An input broke an invariant of the code under test (not an expected error)."""


def check(cond: object, what: str) -> None:
    """Raise :class:`Finding` with ``what`` unless ``cond`` holds (kept under ``python -O``)."""
    if not cond:
        raise Finding(what)


def instrumented(module_name: str) -> contextlib.AbstractContextManager[Any]:
    """Wrap the target's package imports: atheris instruments them when run as a script.

    As a script the pure twins of the Cython kernels are chosen too
    (``FASTTORRENT_PURE=1`` unless set otherwise), since atheris sees only
    Python code; imported by a test nothing changes.
    """
    if module_name != "__main__":
        return contextlib.nullcontext()
    os.environ.setdefault("FASTTORRENT_PURE", "1")
    import atheris

    return atheris.instrument_imports(include=list(INSTRUMENTED))


def fuzz(test_one_input: Callable[[bytes], None]) -> None:
    """Run libFuzzer over ``test_one_input`` with the command line's arguments."""
    import atheris

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


def split(data: bytes, seed: int, max_chunk: int = 1 << 16) -> Iterator[bytes]:
    """``data`` in chunks: whole when ``seed`` is 0, else sizes drawn from ``Random(seed)``.

    The seed also sets the largest chunk, ``2 ** ((seed - 1) % 17)``: seed 1
    feeds one byte at a time, seed 2 one or two, ... up to 64 KiB, so frame
    boundaries get cut anywhere.  The split is a function of the input, so a
    crasher replays exactly.
    """
    if not data:
        return
    if seed == 0:
        for i in range(0, len(data), max_chunk):
            yield data[i : i + max_chunk]
        return
    rng = random.Random(seed)
    top = min(max_chunk, 1 << ((seed - 1) % 17))
    pos = 0
    while pos < len(data):
        n = rng.randint(1, top)
        yield data[pos : pos + n]
        pos += n
