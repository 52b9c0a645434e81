"""A hostile MSE/PE receiver for tests: it answers an MSE handshake wrongly on purpose.

Theory of operation
-------------------
:class:`HostileMSEPeer` listens on 127.0.0.1 (a :class:`~helpers.testpeer._LoopServer`).
Every connection it accepts gets one of these, whatever the remote sent
(it reads the remote's 96-byte ``Ya`` first, so a remote that dials it with
MSE sees a peer that looks like an MSE receiver):

- ``"stall"``: a valid ``Yb`` and a short PadB, then nothing, ever: the
  handshake never finishes (the remote's handshake time-out must end it).
- ``"long_pad"``: a valid ``Yb``, then random bytes past the spec's 512-byte
  PadB bound and no verification constant in them: the remote must give up
  at its synchronisation window, not read on.
- ``"bad_vc"``: the spec's step 4 from the right keys, but with a
  verification constant that is not 8 zero bytes, then a plaintext
  handshake and more bytes: the remote never finds ``ENCRYPT(VC)``.
- ``"garbage_key"``: 96 bytes of 0xff instead of a public key (a value
  over the prime, refused as a DH key), then more garbage.

It records the connections and sets :attr:`HostileMSEPeer.remote_closed`
once a remote closed one (EOF or reset): that is when the remote gave up.
Nothing here is bounded by the remote: every connection ends after
:data:`HOLD_TIMEOUT` at the latest.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
from typing import Final

from torrent.wire.handshake import RESERVED_OURS, encode_handshake
from torrent.wire.mse import (
    CRYPTO_PLAINTEXT,
    DH_KEY_LENGTH,
    MAX_PAD,
    VC_SYNC_WINDOW,
    derive_keys,
    public_key,
    shared_secret,
)
from torrent.wire.rc4 import RC4

from .testpeer import _LoopServer

__all__ = ["HOLD_TIMEOUT", "MODES", "HostileMSEPeer"]

MODES: Final = ("stall", "long_pad", "bad_vc", "garbage_key")
#: The longest a connection is held open from this side (the remote's own
#: time-outs are what a test exercises; this only bounds the helper).
HOLD_TIMEOUT: Final = 60.0
#: Our private key (the secret is no secret here).
_XB: Final = 0x0FEDCBA9876543210FEDCBA9876543210FEDCBA9


class HostileMSEPeer(_LoopServer):
    """See the module docstring.

    Args:
        info_hash: the torrent the remote dials for (``bad_vc`` keys RC4 with it).
        mode: one of :data:`MODES`.
    """

    name = "hostile-mse-peer"

    def __init__(self, info_hash: bytes, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        super().__init__()
        self.info_hash = bytes(info_hash)
        self.mode = mode
        self.remote_closed = threading.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            ya = await asyncio.wait_for(reader.readexactly(DH_KEY_LENGTH), HOLD_TIMEOUT)
        except (asyncio.IncompleteReadError, TimeoutError):
            self.remote_closed.set()
            return
        writer.write(self._answer(ya))
        await writer.drain()
        try:  # read (and drop) until the remote gives up
            async with asyncio.timeout(HOLD_TIMEOUT):
                while await reader.read(65536):
                    pass
        except TimeoutError:
            return
        self.remote_closed.set()

    def _answer(self, ya: bytes) -> bytes:
        yb = public_key(_XB)
        if self.mode == "stall":
            return yb + os.urandom(16)
        if self.mode == "long_pad":
            # PadB past its bound: the whole window after Yb, and more, without the VC
            return yb + secrets.token_bytes(VC_SYNC_WINDOW + MAX_PAD)
        if self.mode == "bad_vc":
            _key_a, key_b = derive_keys(shared_secret(_XB, ya), self.info_hash)
            step4 = RC4(key_b).crypt(b"\x01" * 8 + CRYPTO_PLAINTEXT.to_bytes(4, "big")
                                     + bytes(2))
            hs = encode_handshake(self.info_hash, b"-XX0000-hostile-mse.", RESERVED_OURS)
            return yb + step4 + hs + secrets.token_bytes(VC_SYNC_WINDOW)
        return b"\xff" * DH_KEY_LENGTH + secrets.token_bytes(VC_SYNC_WINDOW)  # garbage_key
