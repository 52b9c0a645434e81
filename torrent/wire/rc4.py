"""RC4 for MSE/PE (message stream encryption), decrypting in place.

MSE/PE's stream cipher is RC4 keyed with a 20-byte SHA-1 digest, with the
first 1024 bytes of keystream thrown away (the spec's answer to RC4's biased
early output). The cipher itself comes from the ``cryptography`` package
(OpenSSL's RC4); newer releases keep it in ``hazmat.decrepit``, older ones in
``hazmat.primitives``, and both are accepted.

:class:`RC4` is a :data:`~torrent.wire.framing.Transform`: called with a
writable memoryview it rewrites the bytes in place (``update_into`` with the
same buffer as input and output; RC4 is a stream cipher, OpenSSL allows the
overlap), so the receive path costs no allocation and no copy per read.
Measured in ``bench/test_bench_rc4.py`` on 1 MiB reads (2-core dev VM):
about 930 MB/s in place against 885 MB/s for ``update`` plus a copy back,
and against about 600 MB/s for a minimal byte-at-a-time RC4 in Cython
(``bench/_rc4_native.pyx``, -O3): OpenSSL's stays, no kernel in ``_fast.pyx``.

``cryptography`` is imported on the first :class:`RC4` (or :func:`preload`):
about 6 ms that a run which never speaks MSE (``--encryption disabled``)
does not pay.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["RC4", "RC4_DISCARD", "preload"]

#: Keystream bytes dropped before use, as MSE/PE requires ("RC4-drop1024").
RC4_DISCARD: Final = 1024

#: ``cryptography``'s ``Cipher`` and ``ARC4``, once imported (:func:`preload`).
_classes: tuple[Any, Any] | None = None


def preload() -> tuple[Any, Any]:
    """Import the cipher (once): ``cryptography``'s ``Cipher`` and ``ARC4`` classes.

    A process that forks workers which will speak MSE calls it first, so that
    they share this import instead of each doing its own.
    """
    global _classes
    if _classes is None:
        from cryptography.hazmat.primitives.ciphers import Cipher

        try:  # cryptography >= 43 moved the broken ciphers to "decrepit"
            from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4
        except ImportError:  # pragma: no cover - older cryptography
            from cryptography.hazmat.primitives.ciphers.algorithms import (  # type: ignore[attr-defined,no-redef,unused-ignore]
                ARC4,
            )
        _classes = (Cipher, ARC4)
    return _classes


class RC4:
    """One direction of an RC4 stream: each byte passed through advances the keystream.

    Args:
        key: the RC4 key (MSE/PE: a 20-byte SHA-1 digest).
        discard: keystream bytes to drop first (:data:`RC4_DISCARD` for MSE/PE;
            0 for the published known-answer vectors).
    """

    __slots__ = ("_ctx",)

    def __init__(self, key: bytes, *, discard: int = RC4_DISCARD) -> None:
        cipher, arc4 = _classes or preload()
        ctx: Any = cipher(arc4(bytes(key)), mode=None).encryptor()
        self._ctx = ctx
        if discard:
            ctx.update(bytes(discard))

    def __call__(self, view: memoryview) -> None:
        """Encrypt or decrypt ``view`` in place (the receive path's transform).

        Args:
            view: a writable, contiguous byte view.
        """
        if len(view):
            self._ctx.update_into(view, view)

    def crypt(self, data: bytes | bytearray | memoryview) -> bytes:
        """Encrypt or decrypt ``data`` into a new ``bytes`` (the send path)."""
        out: bytes = self._ctx.update(data)
        return out
