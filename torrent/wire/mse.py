"""MSE/PE, message stream encryption (the Vuze/Azureus spec libtorrent documents), sans-IO.

Theory of operation
-------------------
An obfuscated connection opens with a Diffie-Hellman exchange instead of the
BitTorrent handshake. A dials B; ``S`` is the shared secret, ``SKEY`` the
torrent's info-hash, ``HASH`` SHA-1, ``ENCRYPT`` RC4 keyed with
``HASH('keyA', S, SKEY)`` from A to B and ``HASH('keyB', S, SKEY)`` from B to
A (first 1024 bytes of keystream dropped)::

    1 A->B: Ya, PadA
    2 B->A: Yb, PadB
    3 A->B: HASH('req1', S), HASH('req2', SKEY) xor HASH('req3', S),
            ENCRYPT(VC, crypto_provide, len(PadC), PadC, len(IA)), ENCRYPT(IA)
    4 B->A: ENCRYPT(VC, crypto_select, len(PadD), PadD), ENCRYPT2(payload)
    5 A->B: ENCRYPT2(payload)

``Y`` are 96-byte big-endian public keys (768-bit prime :data:`DH_PRIME`,
generator 2), pads are 0..512 random bytes, ``VC`` is 8 zero bytes,
``crypto_provide``/``crypto_select`` are 32-bit masks (1 plaintext, 2 RC4),
lengths are 16-bit big-endian. ``IA`` (A's initial payload: the BitTorrent
handshake) is always RC4-encrypted; ``ENCRYPT2`` is RC4 continuing the same
keystreams if RC4 was selected, else nothing.

Neither side knows the other's pad length, so each finds where the pad ends
by searching for a marker, and only within the spec's bound:

- B looks for ``HASH('req1', S)`` in the :data:`REQ1_SYNC_WINDOW` (532)
  bytes after ``Ya`` (PadA, at most 512, then the 20-byte hash: 628 bytes
  of the stream counting ``Ya``);
- A looks for ``ENCRYPT(VC)`` in the :data:`VC_SYNC_WINDOW` (520) bytes
  after ``Yb`` (PadB then the 8-byte VC: 616 counting ``Yb``).

B identifies the torrent from ``HASH('req2', SKEY)`` (it undoes the xor with
``HASH('req3', S)``) in a table of the torrents it serves
(:func:`skey_table`).

One class per side, :class:`MSEInitiator` (A) and :class:`MSEReceiver` (B),
on one state machine (:class:`MSEState`, changed only by ``_transition``)::

    initiator: AWAIT_YB -> AWAIT_VC -> AWAIT_SELECT -> AWAIT_PAD_D -> DONE
    receiver:  AWAIT_YA -> AWAIT_REQ1 -> AWAIT_PROVIDE -> AWAIT_PAD_C -> AWAIT_IA -> DONE
    any state --(peer protocol error, EOF)--> CLOSED

The caller writes :meth:`data_to_send` after creating a side and after
every :meth:`receive_data`, which returns :class:`Established` once the
handshake is complete. From then on the connection is the BitTorrent stream:
``Established.payload`` holds its first bytes, already decrypted (for B, the
IA followed by anything after it), and for RC4 ``Established.decrypt`` is the
receive buffer's transform and ``Established.encrypt`` encrypts what we send.
Time-outs are the caller's: it knows when the connection was made.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from collections.abc import Callable, Iterable, Mapping
from enum import IntEnum
from typing import Final

from ..errors import RemoteProtocolError
from .messages import LocalProtocolError
from .rc4 import RC4
from .record import Record, setfield

__all__ = [
    "CRYPTO_PLAINTEXT",
    "CRYPTO_RC4",
    "DH_GENERATOR",
    "DH_KEY_LENGTH",
    "DH_PRIME",
    "MAX_IA_LENGTH",
    "MAX_PAD",
    "PRIVATE_KEY_BITS",
    "REQ1_SYNC_WINDOW",
    "VC",
    "VC_SYNC_WINDOW",
    "Established",
    "MSEInitiator",
    "MSEReceiver",
    "MSEState",
    "SkeyLookup",
    "derive_keys",
    "public_key",
    "req2_hash",
    "shared_secret",
    "skey_table",
]

#: The spec's 768-bit safe prime (the Oakley group 1 prime of RFC 2409).
DH_PRIME: Final = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A63A36210000000000090563", 16)
DH_GENERATOR: Final = 2
#: Public keys and the shared secret travel as 96-byte (768-bit) big-endian numbers.
DH_KEY_LENGTH: Final = 96
#: The spec's private key size ("Xa and Xb are a variable size random integers.
#: They are the private key for each side and have to be discarded after the DH
#: handshake is done. Minimum length is 128 bit. Anything beyond 180 bit is not
#: believed to add any further security"): 160 bits, as libtorrent uses.
PRIVATE_KEY_BITS: Final = 160
#: The verification constant: 8 zero bytes, sent encrypted.
VC: Final = bytes(8)
#: crypto_provide / crypto_select bits.
CRYPTO_PLAINTEXT: Final = 0x01
CRYPTO_RC4: Final = 0x02
#: The largest PadA, PadB, PadC and PadD the spec allows.
MAX_PAD: Final = 512
#: B finds HASH('req1', S) within this many bytes after Ya: PadA then the 20-byte hash.
REQ1_SYNC_WINDOW: Final = MAX_PAD + 20
#: A finds ENCRYPT(VC) within this many bytes after Yb: PadB then the 8-byte VC.
VC_SYNC_WINDOW: Final = MAX_PAD + len(VC)
#: len(IA) is a 16-bit field. We buffer the IA only once the peer has proved it
#: knows S and the info-hash (req1, req2 and the VC checked out), and 64 KiB is
#: no more than one socket read holds; libtorrent accepts any length too.
MAX_IA_LENGTH: Final = 0xFFFF

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_METHODS: Final = CRYPTO_PLAINTEXT | CRYPTO_RC4

#: Maps HASH('req2', info_hash) to the info-hash (a dict from :func:`skey_table`,
#: or any callable returning None for a torrent we do not serve).
SkeyLookup = Mapping[bytes, bytes] | Callable[[bytes], bytes | None]


def _sha1(*parts: bytes) -> bytes:
    h = hashlib.sha1()
    for p in parts:
        h.update(p)
    return h.digest()


def public_key(private_key: int) -> bytes:
    """``2 ** private_key mod P`` as 96 big-endian bytes (``Ya`` or ``Yb``)."""
    return pow(DH_GENERATOR, private_key, DH_PRIME).to_bytes(DH_KEY_LENGTH, "big")


def shared_secret(private_key: int, peer_public: bytes) -> bytes:
    """``S``: the peer's public key to the power of ours, mod P, as 96 big-endian bytes.

    Raises:
        RemoteProtocolError: the peer's key is not in 2..P-2 (0, 1 and P-1 would
            make S guessable; an honest peer never sends them).
    """
    y = int.from_bytes(peer_public, "big")
    if not 1 < y < DH_PRIME - 1:
        raise RemoteProtocolError(
            f"peer sent an unusable MSE public key (it must lie in 2..P-2): {peer_public.hex()}")
    return pow(y, private_key, DH_PRIME).to_bytes(DH_KEY_LENGTH, "big")


def req2_hash(info_hash: bytes) -> bytes:
    """``HASH('req2', SKEY)``: how an incoming connection names the torrent it wants."""
    return _sha1(b"req2", info_hash)


def skey_table(info_hashes: Iterable[bytes]) -> dict[bytes, bytes]:
    """The receiver's lookup table: ``HASH('req2', info_hash) -> info_hash``."""
    return {req2_hash(h): bytes(h) for h in info_hashes}


def derive_keys(secret: bytes, info_hash: bytes) -> tuple[bytes, bytes]:
    """The RC4 keys ``(keyA, keyB)``: ``HASH('keyA', S, SKEY)`` (A->B) and ``HASH('keyB', ...)``."""
    return _sha1(b"keyA", secret, info_hash), _sha1(b"keyB", secret, info_hash)


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _new_private_key() -> int:
    # never 0 or 1 (a public key of 1 or 2 would give the secret away)
    return secrets.randbits(PRIVATE_KEY_BITS) | 2


def _pad(randbytes: Callable[[int], bytes], max_pad: int) -> bytes:
    n = int.from_bytes(randbytes(2), "big") % (max_pad + 1)
    return randbytes(n) if n else b""


class MSEState(IntEnum):
    """Where a handshake is (see the module docstring for the order)."""

    AWAIT_YB = 0  # initiator: sent Ya + PadA, waits for Yb
    AWAIT_VC = 1  # initiator: sent step 3, looks for ENCRYPT(VC) after PadB
    AWAIT_SELECT = 2  # initiator: crypto_select + len(PadD)
    AWAIT_PAD_D = 3  # initiator: PadD
    AWAIT_YA = 4  # receiver: waits for Ya
    AWAIT_REQ1 = 5  # receiver: sent Yb + PadB, looks for HASH('req1', S) after PadA
    AWAIT_PROVIDE = 6  # receiver: the torrent's hash, VC, crypto_provide, len(PadC)
    AWAIT_PAD_C = 7  # receiver: PadC + len(IA)
    AWAIT_IA = 8  # receiver: IA
    DONE = 9
    CLOSED = 10


_TRANSITIONS: Final[dict[MSEState, frozenset[MSEState]]] = {
    MSEState.AWAIT_YB: frozenset({MSEState.AWAIT_VC}),
    MSEState.AWAIT_VC: frozenset({MSEState.AWAIT_SELECT}),
    MSEState.AWAIT_SELECT: frozenset({MSEState.AWAIT_PAD_D}),
    MSEState.AWAIT_PAD_D: frozenset({MSEState.DONE}),
    MSEState.AWAIT_YA: frozenset({MSEState.AWAIT_REQ1}),
    MSEState.AWAIT_REQ1: frozenset({MSEState.AWAIT_PROVIDE}),
    MSEState.AWAIT_PROVIDE: frozenset({MSEState.AWAIT_PAD_C}),
    MSEState.AWAIT_PAD_C: frozenset({MSEState.AWAIT_IA}),
    MSEState.AWAIT_IA: frozenset({MSEState.DONE}),
    MSEState.DONE: frozenset(),
    MSEState.CLOSED: frozenset(),
}


class Established(Record):
    """The handshake is complete; the BitTorrent stream follows.

    Attributes:
        method: :data:`CRYPTO_RC4` or :data:`CRYPTO_PLAINTEXT`, the one selected.
        info_hash: the torrent (the receiver learnt it from the SKEY hash).
        encrypt: for RC4, the cipher for everything we send from now on
            (``encrypt.crypt(data)``); None for plaintext.
        decrypt: for RC4, the transform for everything received from now on
            (``ReceiveBuffer.transform``), already past ``payload``; None for
            plaintext.
        payload: the first bytes of the BitTorrent stream, already received
            and decrypted: the receiver's IA, then whatever followed it.
    """

    method: int
    info_hash: bytes
    encrypt: RC4 | None
    decrypt: RC4 | None
    payload: bytes

    __slots__ = ("decrypt", "encrypt", "info_hash", "method", "payload")

    def __init__(self, method: int, info_hash: bytes, encrypt: RC4 | None, decrypt: RC4 | None,
                 payload: bytes) -> None:
        setfield(self, "method", method)
        setfield(self, "info_hash", info_hash)
        setfield(self, "encrypt", encrypt)
        setfield(self, "decrypt", decrypt)
        setfield(self, "payload", payload)


class _MSEBase:
    """What both sides share: the state, the buffers, the DH key and the ciphers."""

    __slots__ = ("_buf", "_dec", "_enc", "_out", "_private", "_randbytes", "_secret",
                 "_state", "info_hash", "method")

    def __init__(self, state: MSEState, private_key: int | None,
                 randbytes: Callable[[int], bytes]) -> None:
        self._state = state
        self._private = _new_private_key() if private_key is None else private_key
        self._randbytes = randbytes
        self._buf = bytearray()  # received, not yet consumed (bounded per state)
        self._out = bytearray()  # to send
        self._secret = b""
        self._enc: RC4 | None = None
        self._dec: RC4 | None = None
        self.info_hash = b""
        self.method = 0

    @property
    def state(self) -> MSEState:
        """The current state."""
        return self._state

    def _transition(self, new: MSEState) -> None:
        if new is MSEState.CLOSED or new in _TRANSITIONS[self._state]:
            self._state = new
            return
        raise LocalProtocolError(f"MSE handshake cannot go from {self._state.name} to {new.name}")

    def data_to_send(self) -> bytes:
        """The bytes to write to the peer now (empty if none)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes | bytearray | memoryview) -> Established | None:
        """Take bytes received from the peer.

        Returns:
            :class:`Established` once the handshake is complete, else None.

        Raises:
            RemoteProtocolError: the peer broke the handshake (the machine is CLOSED).
            LocalProtocolError: called after the handshake ended.
        """
        if self._state in (MSEState.DONE, MSEState.CLOSED):
            raise LocalProtocolError(
                f"MSE handshake is {self._state.name}: the stream belongs to the caller now")
        self._buf += data
        try:
            return self._run()
        except RemoteProtocolError:
            self._transition(MSEState.CLOSED)
            raise

    def receive_eof(self) -> None:
        """The peer closed the connection.

        Raises:
            RemoteProtocolError: it did so before the handshake was complete.
        """
        if self._state is MSEState.DONE:
            return
        state = self._state
        self._transition(MSEState.CLOSED)
        raise RemoteProtocolError(
            f"peer closed the connection during the MSE handshake (in {state.name}, "
            f"{len(self._buf)} bytes unread)")

    def _run(self) -> Established | None:
        raise NotImplementedError

    def _take(self, n: int) -> bytes:
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _decrypt(self, n: int) -> bytes:
        """Consume ``n`` handshake bytes, RC4-decrypted (handshake fields are always RC4)."""
        assert self._dec is not None
        return self._dec.crypt(self._take(n))

    def _keys(self, peer_public: bytes) -> None:
        self._secret = shared_secret(self._private, peer_public)

    def _finish(self) -> Established:
        """DONE: hand over the rest of the buffer, decrypted when RC4 continues."""
        rest = self._take(len(self._buf))
        enc, dec = self._enc, self._dec
        if self.method == CRYPTO_PLAINTEXT:
            enc = dec = None
        elif rest:
            assert dec is not None
            rest = dec.crypt(rest)
        self._transition(MSEState.DONE)
        self._enc = self._dec = None
        return Established(self.method, self.info_hash, enc, dec, rest)


class MSEInitiator(_MSEBase):
    """Our side of an outgoing MSE/PE handshake (A, who knows the info-hash).

    Args:
        info_hash: the torrent's 20-byte info-hash (SKEY).
        initial_payload: IA, sent RC4-encrypted in step 3: normally our
            BitTorrent handshake (empty: send it after :class:`Established`).
        provide: the methods we offer (:data:`CRYPTO_RC4`, :data:`CRYPTO_PLAINTEXT`
            or both).
        private_key: our DH private key (None: 160 random bits; tests fix it).
        randbytes: the source of padding (``secrets.token_bytes``; tests fix it).
        max_pad: the most PadA bytes we send (0..512).

    Raises:
        LocalProtocolError: a bad argument (a bug of ours).
    """

    __slots__ = ("_ia", "_pad_d", "_provide", "_vc")

    def __init__(self, info_hash: bytes, initial_payload: bytes = b"", *,
                 provide: int = CRYPTO_RC4 | CRYPTO_PLAINTEXT, private_key: int | None = None,
                 randbytes: Callable[[int], bytes] = secrets.token_bytes,
                 max_pad: int = MAX_PAD) -> None:
        if len(info_hash) != 20:
            raise LocalProtocolError(f"info-hash must be 20 bytes, got {len(info_hash)}")
        if len(initial_payload) > MAX_IA_LENGTH:
            raise LocalProtocolError(f"IA of {len(initial_payload)} bytes exceeds {MAX_IA_LENGTH}")
        if not provide or provide & ~_METHODS:
            raise LocalProtocolError(f"crypto_provide {provide:#x} is not a mask of 0x1 and 0x2")
        if not 0 <= max_pad <= MAX_PAD:
            raise LocalProtocolError(f"max_pad {max_pad} is outside 0..{MAX_PAD}")
        super().__init__(MSEState.AWAIT_YB, private_key, randbytes)
        self.info_hash = bytes(info_hash)
        self._ia = bytes(initial_payload)
        self._provide = provide
        self._pad_d = 0  # len(PadD), once read
        self._vc = b""  # ENCRYPT(VC), the marker A looks for
        self._out += public_key(self._private) + _pad(randbytes, max_pad)

    def _run(self) -> Established | None:
        S = MSEState
        buf = self._buf
        if self._state is S.AWAIT_YB:
            if len(buf) < DH_KEY_LENGTH:
                return None
            self._keys(self._take(DH_KEY_LENGTH))
            key_a, key_b = derive_keys(self._secret, self.info_hash)
            self._enc, self._dec = RC4(key_a), RC4(key_b)
            # ENCRYPT(VC) is the first 8 bytes of B's keystream; computing it now moves
            # our decryptor past the VC, where the stream is once the marker is found
            self._vc = self._dec.crypt(VC)
            s = self._secret
            self._out += _sha1(b"req1", s) + _xor(req2_hash(self.info_hash), _sha1(b"req3", s))
            self._out += self._enc.crypt(
                VC + _U32.pack(self._provide) + _U16.pack(0) + _U16.pack(len(self._ia)) + self._ia)
            self._transition(S.AWAIT_VC)
        if self._state is S.AWAIT_VC:
            at = buf.find(self._vc, 0, VC_SYNC_WINDOW)
            if at < 0:
                if len(buf) >= VC_SYNC_WINDOW:
                    raise RemoteProtocolError(
                        f"peer's MSE verification constant not found within {VC_SYNC_WINDOW} "
                        f"bytes after its public key (PadB is at most {MAX_PAD}): wrong key "
                        "or not an MSE peer")
                return None
            del buf[: at + len(VC)]
            self._transition(S.AWAIT_SELECT)
        if self._state is S.AWAIT_SELECT:
            if len(buf) < 6:
                return None
            field = self._decrypt(6)
            select, pad_d = _U32.unpack_from(field)[0], _U16.unpack_from(field, 4)[0]
            if select not in (CRYPTO_PLAINTEXT, CRYPTO_RC4) or not select & self._provide:
                raise RemoteProtocolError(
                    f"peer's crypto_select {select:#x} is not one of the methods we offered "
                    f"({self._provide:#x})")
            if pad_d > MAX_PAD:
                raise RemoteProtocolError(f"peer's PadD is {pad_d} bytes, over {MAX_PAD}")
            self.method = select
            self._pad_d = pad_d
            self._transition(S.AWAIT_PAD_D)
        if self._state is S.AWAIT_PAD_D:
            if len(buf) < self._pad_d:
                return None
            self._decrypt(self._pad_d)
            return self._finish()
        return None


class MSEReceiver(_MSEBase):
    """Our side of an incoming MSE/PE handshake (B, who learns the torrent from SKEY).

    The caller has already seen that the stream does not open with a plaintext
    BitTorrent handshake (``\\x13BitTorrent protocol``) and feeds it all here.

    Args:
        skeys: the torrents we serve, ``HASH('req2', info_hash) -> info_hash``
            (:func:`skey_table`), or a callable answering None for unknown ones.
        allowed: the methods we accept (:data:`CRYPTO_RC4`, :data:`CRYPTO_PLAINTEXT`
            or both).
        prefer_rc4: when the peer offers both and we allow both, select RC4
            (default: plaintext, as libtorrent does: the handshake is already
            obfuscated and the payload then costs nothing).
        private_key: our DH private key (None: 160 random bits; tests fix it).
        randbytes: the source of padding (``secrets.token_bytes``; tests fix it).
        max_pad: the most PadB bytes we send (0..512).

    Raises:
        LocalProtocolError: a bad argument (a bug of ours).
    """

    __slots__ = ("_allowed", "_ia_len", "_max_pad", "_pad_c", "_prefer_rc4", "_skeys")

    def __init__(self, skeys: SkeyLookup, *, allowed: int = CRYPTO_RC4 | CRYPTO_PLAINTEXT,
                 prefer_rc4: bool = False, private_key: int | None = None,
                 randbytes: Callable[[int], bytes] = secrets.token_bytes,
                 max_pad: int = MAX_PAD) -> None:
        if not allowed or allowed & ~_METHODS:
            raise LocalProtocolError(f"allowed methods {allowed:#x} is not a mask of 0x1 and 0x2")
        if not 0 <= max_pad <= MAX_PAD:
            raise LocalProtocolError(f"max_pad {max_pad} is outside 0..{MAX_PAD}")
        super().__init__(MSEState.AWAIT_YA, private_key, randbytes)
        self._skeys = skeys
        self._allowed = allowed
        self._prefer_rc4 = prefer_rc4
        self._max_pad = max_pad
        self._pad_c = 0  # len(PadC), once read
        self._ia_len = 0  # len(IA), once read

    def _lookup(self, hashed: bytes) -> bytes | None:
        skeys = self._skeys
        if isinstance(skeys, Mapping):
            return skeys.get(hashed)
        return skeys(hashed)

    def _select(self, provide: int) -> int:
        both = provide & self._allowed
        if both & CRYPTO_PLAINTEXT and not (self._prefer_rc4 and both & CRYPTO_RC4):
            return CRYPTO_PLAINTEXT
        if both & CRYPTO_RC4:
            return CRYPTO_RC4
        raise RemoteProtocolError(
            f"peer's crypto_provide {provide:#x} offers no method we allow ({self._allowed:#x})")

    def _run(self) -> Established | None:
        S = MSEState
        buf = self._buf
        if self._state is S.AWAIT_YA:
            if len(buf) < DH_KEY_LENGTH:
                return None
            self._keys(self._take(DH_KEY_LENGTH))
            self._out += public_key(self._private) + _pad(self._randbytes, self._max_pad)
            self._transition(S.AWAIT_REQ1)
        if self._state is S.AWAIT_REQ1:
            at = buf.find(_sha1(b"req1", self._secret), 0, REQ1_SYNC_WINDOW)
            if at < 0:
                if len(buf) >= REQ1_SYNC_WINDOW:
                    raise RemoteProtocolError(
                        f"peer's MSE HASH('req1', S) not found within {REQ1_SYNC_WINDOW} bytes "
                        f"after its public key (PadA is at most {MAX_PAD}): wrong key or not "
                        "an MSE peer")
                return None
            del buf[: at + 20]
            self._transition(S.AWAIT_PROVIDE)
        if self._state is S.AWAIT_PROVIDE:
            # HASH('req2', SKEY) xor HASH('req3', S), then ENCRYPT(VC, crypto_provide, len(PadC))
            if len(buf) < 20 + len(VC) + 4 + 2:
                return None
            hashed = _xor(self._take(20), _sha1(b"req3", self._secret))
            info_hash = self._lookup(hashed)
            if info_hash is None:
                raise RemoteProtocolError(
                    "peer asked, over MSE, for a torrent we do not serve "
                    f"(HASH('req2', SKEY) {hashed.hex()})")
            self.info_hash = bytes(info_hash)
            key_a, key_b = derive_keys(self._secret, self.info_hash)
            self._dec, self._enc = RC4(key_a), RC4(key_b)
            field = self._decrypt(len(VC) + 4 + 2)
            if field[:8] != VC:
                raise RemoteProtocolError(
                    f"peer's MSE verification constant decrypts to {field[:8].hex()}, not zeros")
            provide, pad_c = _U32.unpack_from(field, 8)[0], _U16.unpack_from(field, 12)[0]
            if pad_c > MAX_PAD:
                raise RemoteProtocolError(f"peer's PadC is {pad_c} bytes, over {MAX_PAD}")
            self.method = self._select(provide)
            # step 4 goes out now (as libtorrent does): nothing in it waits for the IA
            self._out += self._enc.crypt(VC + _U32.pack(self.method) + _U16.pack(0))
            self._pad_c = pad_c
            self._transition(S.AWAIT_PAD_C)
        if self._state is S.AWAIT_PAD_C:
            if len(buf) < self._pad_c + 2:
                return None
            self._ia_len = _U16.unpack(self._decrypt(self._pad_c + 2)[-2:])[0]
            self._transition(S.AWAIT_IA)
        if self._state is S.AWAIT_IA:
            if len(buf) < self._ia_len:  # at most MAX_IA_LENGTH: a 16-bit field
                return None
            ia = self._decrypt(self._ia_len)
            done = self._finish()
            return Established(done.method, done.info_hash, done.encrypt, done.decrypt,
                               ia + done.payload)
        return None
