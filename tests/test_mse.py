"""torrent.wire.mse and torrent.wire.rc4: the MSE/PE handshake, sans-IO, and its RC4.

Both sides run against each other in memory, the streams fed whole, one byte
at a time and in odd chunks, with the BitTorrent stream following in the same
reads. Known answers: published RC4 vectors, and with fixed private keys the
shared secret and keys recomputed independently (``pow`` and ``hashlib``)
from the spec's formulas. The hostile cases script one side by hand from the
same formulas. Last, libtorrent forced to encrypt, in both directions on
127.0.0.1.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import struct
from collections.abc import Callable

import pytest

from torrent.errors import RemoteProtocolError
from torrent.wire.framing import ReceiveBuffer
from torrent.wire.handshake import HANDSHAKE_LENGTH, RESERVED_OURS, encode_handshake
from torrent.wire.messages import LocalProtocolError
from torrent.wire.mse import (
    CRYPTO_PLAINTEXT,
    CRYPTO_RC4,
    DH_PRIME,
    MAX_PAD,
    REQ1_SYNC_WINDOW,
    VC_SYNC_WINDOW,
    Established,
    MSEInitiator,
    MSEReceiver,
    MSEState,
    derive_keys,
    public_key,
    req2_hash,
    shared_secret,
    skey_table,
)
from torrent.wire.rc4 import RC4, RC4_DISCARD

HASH = hashlib.sha1(b"the torrent").digest()
OTHERS = [hashlib.sha1(b"other %d" % i).digest() for i in range(5)]
IA = encode_handshake(HASH, b"-FT0100-aaaaaaaaaaaa", RESERVED_OURS)
XA = 0x1234567890ABCDEF1234567890ABCDEF12345678  # fixed 160-bit private keys
XB = 0x0FEDCBA9876543210FEDCBA9876543210FEDCBA9
BOTH = CRYPTO_PLAINTEXT | CRYPTO_RC4


def sha1(*parts: bytes) -> bytes:
    return hashlib.sha1(b"".join(parts)).digest()


def rc4_pure(key: bytes, data: bytes, discard: int = 0) -> bytes:
    """A textbook RC4 (KSA, then PRGA), the independent twin of the cipher under test."""
    s = list(range(256))
    j = 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) & 0xFF
        s[i], s[j] = s[j], s[i]
    i = j = 0
    out = bytearray()
    for n in range(discard + len(data)):
        i = (i + 1) & 0xFF
        j = (j + s[i]) & 0xFF
        s[i], s[j] = s[j], s[i]
        k = s[(s[i] + s[j]) & 0xFF]
        if n >= discard:
            out.append(data[n - discard] ^ k)
    return bytes(out)


def fixed_pads(length: int) -> Callable[[int], bytes]:
    """A ``randbytes`` whose pads are always ``length`` bytes (``n % 513 == length``)."""
    def randbytes(n: int) -> bytes:
        return length.to_bytes(2, "big") if n == 2 else bytes([0xA5]) * n
    return randbytes


# ---------------------------------------------------------------- RC4

# Published vectors. RFC 6229's first 16 keystream bytes for a 40-bit and a
# 128-bit key (OpenSSL's RC4 takes 40..256-bit keys; MSE's are 160 bits), and
# the classic short-key vectors, which check the pure twin the others lean on.
RC4_VECTORS = [
    (bytes.fromhex("0102030405"), bytes(16), "b2396305f03dc027ccc3524a0a1118a8"),
    (bytes.fromhex("0102030405060708090a0b0c0d0e0f10"), bytes(16),
     "9ac7cc9a609d1ef7b2932899cde41b97"),
]
CLASSIC = [
    (b"Key", b"Plaintext", "bbf316e8d940af0ad3"),
    (b"Wiki", b"pedia", "1021bf0420"),
    (b"Secret", b"Attack at dawn", "45a01f645fc35b383552544b9bf5"),
]


@pytest.mark.parametrize(("key", "plain", "cipher"), RC4_VECTORS)
def test_rc4_known_answers(key: bytes, plain: bytes, cipher: str) -> None:
    assert RC4(key, discard=0).crypt(plain).hex() == cipher
    assert rc4_pure(key, plain).hex() == cipher
    # in place, inside a larger buffer (as the receive buffer's transform runs)
    buf = bytearray(b"<" + plain + b">")
    RC4(key, discard=0)(memoryview(buf)[1 : 1 + len(plain)])
    assert buf == b"<" + bytes.fromhex(cipher) + b">"


@pytest.mark.parametrize(("key", "plain", "cipher"), CLASSIC)
def test_rc4_twin_known_answers(key: bytes, plain: bytes, cipher: str) -> None:
    assert rc4_pure(key, plain).hex() == cipher


def test_rc4_discards_1024_and_streams_across_calls() -> None:
    key = sha1(b"some key")
    data = random.Random(1).randbytes(3000)
    want = rc4_pure(key, data, discard=RC4_DISCARD)
    c = RC4(key)
    buf = bytearray(data)
    view = memoryview(buf)
    for a, b in [(0, 1), (1, 700), (700, 700), (700, 2999), (2999, 3000)]:
        c(view[a:b])  # any split, empty included, gives the same stream
    assert bytes(buf) == want
    assert RC4(key).crypt(data) == want


# ---------------------------------------------------------------- DH and the hashes


def test_dh_with_fixed_keys_matches_an_independent_computation() -> None:
    ya, yb = public_key(XA), public_key(XB)
    assert ya == pow(2, XA, DH_PRIME).to_bytes(96, "big")
    assert len(ya) == len(yb) == 96
    s = shared_secret(XA, yb)
    assert s == shared_secret(XB, ya) == pow(2, XA * XB, DH_PRIME).to_bytes(96, "big")
    assert derive_keys(s, HASH) == (sha1(b"keyA", s, HASH), sha1(b"keyB", s, HASH))
    assert req2_hash(HASH) == sha1(b"req2", HASH)
    assert skey_table([HASH, *OTHERS])[sha1(b"req2", OTHERS[3])] == OTHERS[3]


@pytest.mark.parametrize("y", [0, 1, DH_PRIME - 1, DH_PRIME, 2**768 - 1])
def test_unusable_public_keys_are_refused(y: int) -> None:
    with pytest.raises(RemoteProtocolError, match="unusable MSE public key"):
        shared_secret(XA, y.to_bytes(96, "big"))


def test_initiator_bytes_on_the_wire_follow_the_spec() -> None:
    """Step 1 and 3 of A, byte for byte, recomputed from the spec's formulas."""
    a = MSEInitiator(HASH, IA, provide=BOTH, private_key=XA, randbytes=fixed_pads(7))
    assert a.data_to_send() == public_key(XA) + bytes([0xA5]) * 7
    assert a.receive_data(public_key(XB)) is None
    s = pow(2, XA * XB, DH_PRIME).to_bytes(96, "big")
    key_a = sha1(b"keyA", s, HASH)
    head = sha1(b"req1", s) + bytes(x ^ y for x, y in zip(
        sha1(b"req2", HASH), sha1(b"req3", s), strict=True))
    body = bytes(8) + struct.pack(">IHH", BOTH, 0, len(IA)) + IA
    assert a.data_to_send() == head + rc4_pure(key_a, body, discard=1024)


# ---------------------------------------------------------------- both sides in memory


def pump(a: MSEInitiator, b: MSEReceiver, chunk: int | None, a_after: bytes = b"",
         b_after: bytes = b"") -> tuple[Established, Established, bytes, bytes]:
    """Run both sides to the end, delivering in ``chunk``-byte reads (None: whole).

    Returns both results and what was still on its way to A and to B when
    each finished (the BT stream's next reads).

    ``b_after`` is what B sends right after its step 4 (so A reads it in the
    same stream); ``a_after`` what A sent right after its IA (it must be
    encrypted by the caller if RC4 will be selected, see the trailing test).
    """
    ra: Established | None = None
    rb: Established | None = None
    to_b = bytearray(a.data_to_send())
    to_a = bytearray()
    a_sent_step3 = False
    for _ in range(10_000):
        if rb is None and to_b:
            n = len(to_b) if chunk is None else chunk
            rb = b.receive_data(bytes(to_b[:n]))
            del to_b[:n]
            to_a += b.data_to_send()
            if rb is not None:
                to_a += rb.encrypt.crypt(b_after) if rb.encrypt else b_after
        elif ra is None and to_a:
            n = len(to_a) if chunk is None else chunk
            ra = a.receive_data(bytes(to_a[:n]))
            del to_a[:n]
            out = a.data_to_send()
            if out and not a_sent_step3:
                a_sent_step3 = True
                out += a_after
            to_b += out
        else:
            break
    assert ra is not None and rb is not None, (a.state, b.state)
    return ra, rb, bytes(to_a), bytes(to_b)


CHUNKS = [None, 1, 7, 97, 600]


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize(("provide", "allowed", "prefer_rc4", "method"), [
    (BOTH, BOTH, False, CRYPTO_PLAINTEXT),  # libtorrent's choice: obfuscated handshake only
    (BOTH, BOTH, True, CRYPTO_RC4),
    (CRYPTO_RC4, BOTH, False, CRYPTO_RC4),
    (BOTH, CRYPTO_RC4, False, CRYPTO_RC4),
    (CRYPTO_PLAINTEXT, BOTH, True, CRYPTO_PLAINTEXT),
])
def test_handshake_both_sides(chunk: int | None, provide: int, allowed: int,
                              prefer_rc4: bool, method: int) -> None:
    a = MSEInitiator(HASH, IA, provide=provide)
    b = MSEReceiver(skey_table([*OTHERS, HASH]), allowed=allowed, prefer_rc4=prefer_rc4)
    ra, rb, to_a, to_b = pump(a, b, chunk)
    assert to_a == to_b == b""
    assert ra.method == rb.method == method
    assert ra.info_hash == rb.info_hash == HASH
    assert rb.payload == IA and ra.payload == b""
    assert a.state is b.state is MSEState.DONE
    if method == CRYPTO_RC4:
        assert ra.encrypt and ra.decrypt and rb.encrypt and rb.decrypt
        # the two directions carry on: A's encryptor with B's decryptor and back
        msg = b"\x00\x00\x00\x01\x02" * 50
        buf = bytearray(ra.encrypt.crypt(msg))
        assert bytes(buf) != msg
        rb.decrypt(memoryview(buf))
        assert buf == msg
        buf = bytearray(rb.encrypt.crypt(msg))
        ra.decrypt(memoryview(buf))
        assert buf == msg
    else:
        assert (ra.encrypt, ra.decrypt, rb.encrypt, rb.decrypt) == (None, None, None, None)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("method", [CRYPTO_RC4, CRYPTO_PLAINTEXT])
def test_trailing_data_after_the_handshake_is_handed_over_decrypted(
        chunk: int | None, method: int) -> None:
    """The BT stream arrives in the reads that end the handshake, both ways."""
    theirs = encode_handshake(HASH, b"-LT2000-bbbbbbbbbbbb", RESERVED_OURS) + b"\0\0\0\x01\x02"
    ours = b"\0\0\0\x05\x04\0\0\0\x07" * 3
    # What A sends after its IA, encrypted as B must see it: with fixed keys the
    # test knows S, so it runs keyA's stream past VC, provide, len(PadC), len(IA), IA.
    s = pow(2, XA * XB, DH_PRIME).to_bytes(96, "big")
    if method == CRYPTO_RC4:
        stream = rc4_pure(sha1(b"keyA", s, HASH), bytes(8 + 4 + 2 + 2 + len(IA)) + ours, 1024)
        a_after = stream[-len(ours):]
    else:
        a_after = ours
    a = MSEInitiator(HASH, IA, provide=method, private_key=XA, randbytes=fixed_pads(30))
    b = MSEReceiver(lambda h: HASH if h == req2_hash(HASH) else None,
                    private_key=XB, randbytes=fixed_pads(MAX_PAD))
    ra, rb, to_a, to_b = pump(a, b, chunk, a_after=a_after, b_after=theirs)
    assert ra.method == rb.method == method
    if chunk is None:
        assert rb.payload == IA + ours and ra.payload == theirs
    # whatever did not come with the handshake's last read goes through the transform
    for est, rest, want in [(ra, to_a, theirs), (rb, to_b, IA + ours)]:
        buf = bytearray(rest)
        if est.decrypt:
            est.decrypt(memoryview(buf))
        assert est.payload + buf == want


def test_the_receive_buffer_decrypts_the_stream_through_the_transform() -> None:
    """As the connection will run it: payload fed as is, later reads decrypted in place."""
    a = MSEInitiator(HASH, IA, provide=CRYPTO_RC4)
    b = MSEReceiver(skey_table([HASH]))
    ra, rb, _, _ = pump(a, b, None)
    assert ra.encrypt is not None and rb.decrypt is not None
    stream = b"\0\0\0\x05\x04\0\0\0\x07" * 1000
    rbuf = ReceiveBuffer(1 << 15)
    rbuf.feed(rb.payload)
    rbuf.transform = rb.decrypt
    wire = ra.encrypt.crypt(stream)
    for k in range(0, len(wire), 777):
        rbuf.feed(wire[k : k + 777])
    assert bytes(rbuf.view[rbuf.start : rbuf.end]) == IA + stream


def test_receiver_finds_the_torrent_among_several_and_refuses_others() -> None:
    for want in OTHERS:
        a = MSEInitiator(want, b"")
        b = MSEReceiver(skey_table([HASH, *OTHERS]))
        _, rb, _, _ = pump(a, b, None)
        assert rb.info_hash == want and rb.payload == b""
    a = MSEInitiator(HASH, IA)
    b = MSEReceiver(skey_table(OTHERS))
    b.receive_data(a.data_to_send())
    a.receive_data(b.data_to_send())
    with pytest.raises(RemoteProtocolError, match="torrent we do not serve"):
        b.receive_data(a.data_to_send())
    assert b.state is MSEState.CLOSED


# ---------------------------------------------------------------- hostile peers


def step3(s: bytes, *, info_hash: bytes = HASH, vc: bytes = bytes(8), provide: int = BOTH,
          pad_c: int = 0, ia: bytes = IA, pad_a: int = 0) -> bytes:
    """A's PadA and step 3, written from the spec (for the receiver under test)."""
    body = vc + struct.pack(">IH", provide, pad_c) + bytes(pad_c) + struct.pack(">H", len(ia)) + ia
    return (bytes(pad_a) + sha1(b"req1", s)
            + bytes(x ^ y for x, y in zip(sha1(b"req2", info_hash), sha1(b"req3", s), strict=True))
            + rc4_pure(sha1(b"keyA", s, info_hash), body, 1024))


def receiver() -> tuple[MSEReceiver, bytes]:
    """A receiver that got our Ya (XA); returns it and S."""
    b = MSEReceiver(skey_table([HASH]), private_key=XB)
    assert b.receive_data(public_key(XA)) is None
    return b, pow(2, XA * XB, DH_PRIME).to_bytes(96, "big")


def test_receiver_accepts_the_largest_pad_a() -> None:
    b, s = receiver()
    done = b.receive_data(step3(s, pad_a=MAX_PAD))
    assert done is not None and done.payload == IA


@pytest.mark.parametrize("chunk", [1, 64, 4096])
def test_receiver_gives_up_on_the_sync_marker_at_the_bound(chunk: int) -> None:
    """A huge PadA (or garbage) is refused once the window is read, not buffered."""
    b, s = receiver()
    stream = step3(s, pad_a=MAX_PAD + 1) + bytes(100_000)
    fed = 0
    with pytest.raises(RemoteProtocolError, match=f"not found within {REQ1_SYNC_WINDOW}"):
        while True:
            b.receive_data(stream[fed : fed + chunk])
            fed += chunk
    assert fed <= max(REQ1_SYNC_WINDOW, chunk)  # the error came with the read that crossed it
    assert b.state is MSEState.CLOSED
    with pytest.raises(LocalProtocolError):
        b.receive_data(b"more")


def test_garbage_is_refused_by_both_sides() -> None:
    junk = random.Random(7).randbytes(2000)
    b = MSEReceiver(skey_table([HASH]))
    with pytest.raises(RemoteProtocolError, match="not found within"):
        b.receive_data(junk)
    a = MSEInitiator(HASH, IA)
    with pytest.raises(RemoteProtocolError, match="verification constant not found within"):
        a.receive_data(junk)


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"pad_c": MAX_PAD + 1}, "PadC is 513 bytes"),
    ({"provide": 0}, "offers no method we allow"),
    ({"provide": 0x04}, "offers no method we allow"),
    ({"vc": b"\0\0\0\0\0\0\0\1"}, "verification constant decrypts to"),
])
def test_receiver_refuses_a_bad_step3(kwargs: dict[str, object], error: str) -> None:
    b, s = receiver()
    with pytest.raises(RemoteProtocolError, match=error):
        b.receive_data(step3(s, **kwargs))  # type: ignore[arg-type]


def test_receiver_refuses_plaintext_when_it_requires_rc4() -> None:
    b = MSEReceiver(skey_table([HASH]), allowed=CRYPTO_RC4, private_key=XB)
    b.receive_data(public_key(XA))
    s = pow(2, XA * XB, DH_PRIME).to_bytes(96, "big")
    with pytest.raises(RemoteProtocolError, match=r"crypto_provide 0x1 offers no method"):
        b.receive_data(step3(s, provide=CRYPTO_PLAINTEXT))


def step4(s: bytes, *, select: int, pad_d: int = 0, pad_b: int = 0) -> bytes:
    """B's Yb, PadB and step 4, written from the spec (for the initiator under test)."""
    body = bytes(8) + struct.pack(">IH", select, pad_d) + bytes(min(pad_d, MAX_PAD))
    return public_key(XB) + bytes(pad_b) + rc4_pure(sha1(b"keyB", s, HASH), body, 1024)


S_AB = pow(2, XA * XB, DH_PRIME).to_bytes(96, "big")


def test_initiator_accepts_the_largest_pad_b_and_pad_d() -> None:
    a = MSEInitiator(HASH, IA, private_key=XA)
    done = a.receive_data(step4(S_AB, select=CRYPTO_RC4, pad_b=MAX_PAD, pad_d=MAX_PAD))
    assert done is not None and done.method == CRYPTO_RC4 and done.payload == b""


@pytest.mark.parametrize(("provide", "select", "pad_b", "pad_d", "error"), [
    (BOTH, CRYPTO_RC4, MAX_PAD + 1, 0, f"not found within {VC_SYNC_WINDOW}"),
    (BOTH, CRYPTO_RC4, 0, MAX_PAD + 1, "PadD is 513 bytes"),
    (BOTH, BOTH, 0, 0, "crypto_select 0x3 is not one of"),
    (BOTH, 0, 0, 0, "crypto_select 0x0 is not one of"),
    (CRYPTO_RC4, CRYPTO_PLAINTEXT, 0, 0, "crypto_select 0x1 is not one of"),
])
def test_initiator_refuses_a_bad_step4(provide: int, select: int, pad_b: int, pad_d: int,
                                       error: str) -> None:
    a = MSEInitiator(HASH, IA, provide=provide, private_key=XA)
    with pytest.raises(RemoteProtocolError, match=error):
        a.receive_data(step4(S_AB, select=select, pad_b=pad_b, pad_d=pad_d))
    assert a.state is MSEState.CLOSED


def test_truncated_streams_fail_at_eof_in_every_state() -> None:
    whole = step4(S_AB, select=CRYPTO_RC4, pad_b=40, pad_d=10)
    seen = set()
    for cut in range(len(whole)):
        a = MSEInitiator(HASH, IA, private_key=XA)
        assert a.receive_data(whole[:cut]) is None
        seen.add(a.state)
        with pytest.raises(RemoteProtocolError, match="closed the connection during the MSE"):
            a.receive_eof()
        assert a.state is MSEState.CLOSED
    assert seen == {MSEState.AWAIT_YB, MSEState.AWAIT_VC, MSEState.AWAIT_SELECT,
                    MSEState.AWAIT_PAD_D}
    whole = public_key(XA) + step3(S_AB, pad_a=5, pad_c=9)
    seen = set()
    for cut in range(len(whole)):
        b = MSEReceiver(skey_table([HASH]), private_key=XB)
        assert b.receive_data(whole[:cut]) is None
        seen.add(b.state)
        with pytest.raises(RemoteProtocolError, match="closed the connection during the MSE"):
            b.receive_eof()
    assert seen == {MSEState.AWAIT_YA, MSEState.AWAIT_REQ1, MSEState.AWAIT_PROVIDE,
                    MSEState.AWAIT_PAD_C, MSEState.AWAIT_IA}
    b = MSEReceiver(skey_table([HASH]), private_key=XB)
    assert b.receive_data(whole) is not None
    b.receive_eof()  # after the handshake EOF is the BT stream's business
    assert b.state is MSEState.DONE


def test_misuse_is_our_bug() -> None:
    with pytest.raises(LocalProtocolError):
        MSEInitiator(HASH[:10])
    with pytest.raises(LocalProtocolError):
        MSEInitiator(HASH, bytes(0x10000))
    with pytest.raises(LocalProtocolError):
        MSEInitiator(HASH, provide=4)
    with pytest.raises(LocalProtocolError):
        MSEReceiver({}, allowed=0)
    with pytest.raises(LocalProtocolError):
        MSEReceiver({}, max_pad=MAX_PAD + 1)


# ---------------------------------------------------------------- libtorrent, forced to encrypt

LT_TIMEOUT = 20.0  # seconds for a whole exchange on 127.0.0.1


def lt_session(level: int) -> object:
    lt = pytest.importorskip("libtorrent")
    return lt.session({
        "listen_interfaces": "127.0.0.1:0",
        "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
        "enable_outgoing_utp": False, "enable_incoming_utp": False,
        "out_enc_policy": int(lt.enc_policy.forced), "in_enc_policy": int(lt.enc_policy.forced),
        "allowed_enc_level": level, "prefer_rc4": False,
        "alert_mask": 0,
    })


def lt_add_magnet(ses: object, tmp: str) -> object:
    import libtorrent as lt
    params = lt.parse_magnet_uri("magnet:?xt=urn:btih:" + HASH.hex())
    params.save_path = tmp
    # started at once: an auto-managed torrent waits for the queue (~0.5 s), and
    # until then libtorrent turns incoming connections away ("no active torrents")
    params.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
    return ses.add_torrent(params)  # type: ignore[attr-defined]


async def _read_bt_handshake(reader: asyncio.StreamReader, first: Established) -> bytes:
    got = bytearray(first.payload)
    while len(got) < HANDSHAKE_LENGTH:
        chunk = bytearray(await reader.read(4096))
        if not chunk:
            raise AssertionError("libtorrent closed before its BT handshake")
        if first.decrypt:
            first.decrypt(memoryview(chunk))
        got += chunk
    return bytes(got[:HANDSHAKE_LENGTH])


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("level", "method"), [(2, CRYPTO_RC4), (3, CRYPTO_PLAINTEXT)])
def test_libtorrent_dials_our_receiver(tmp_path: object, level: int, method: int) -> None:
    """libtorrent (forced MSE) connects to us: we identify the torrent and read its IA."""
    ses = lt_session(level)
    h = lt_add_magnet(ses, str(tmp_path))
    result: dict[str, object] = {}

    async def main() -> None:
        done = asyncio.get_running_loop().create_future()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            b = MSEReceiver(skey_table([*OTHERS, HASH]))
            try:
                est = None
                while est is None:
                    data = await reader.read(4096)
                    if not data:
                        b.receive_eof()
                    est = b.receive_data(data)
                    writer.write(b.data_to_send())
                result["est"] = est
                result["hs"] = await _read_bt_handshake(reader, est)
                if not done.done():
                    done.set_result(None)
            except Exception as e:  # report any failure to the test, not the loop
                if not done.done():
                    done.set_exception(e)
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        h.connect_peer(("127.0.0.1", port))  # type: ignore[attr-defined]
        async with server:
            await asyncio.wait_for(done, LT_TIMEOUT)

    asyncio.run(main())
    est = result["est"]
    assert isinstance(est, Established)
    assert est.info_hash == HASH and est.method == method
    hs = result["hs"]
    assert isinstance(hs, bytes) and hs[:20] == b"\x13BitTorrent protocol"
    assert hs[28:48] == HASH
    del ses


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("level", "method"), [(2, CRYPTO_RC4), (3, CRYPTO_PLAINTEXT)])
def test_our_initiator_dials_libtorrent(tmp_path: object, level: int, method: int) -> None:
    """We connect to libtorrent (forced MSE) with our BT handshake as IA; it answers."""
    ses = lt_session(level)
    lt_add_magnet(ses, str(tmp_path))
    port = ses.listen_port()  # type: ignore[attr-defined]

    async def main() -> tuple[Established, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            a = MSEInitiator(HASH, IA, provide=BOTH)
            writer.write(a.data_to_send())
            est = None
            while est is None:
                data = await reader.read(4096)
                if not data:
                    a.receive_eof()
                est = a.receive_data(data)
                writer.write(a.data_to_send())
            return est, await _read_bt_handshake(reader, est)
        finally:
            writer.close()

    est, hs = asyncio.run(asyncio.wait_for(main(), LT_TIMEOUT))
    assert est.method == method
    assert hs[:20] == b"\x13BitTorrent protocol" and hs[28:48] == HASH
    del ses
