"""MSE/PE inside the connection machines: PeerProtocol and MetadataConnection, both ways.

The outgoing side (``initiate_mse``: our handshake as the MSE initial payload)
against our own receiver and against a scripted receiver that insists on RC4,
fed whole and one byte at a time; the policy switches of ``--encryption``
(``require_mse`` refuses a plaintext handshake, ``accept_mse=False`` refuses
MSE); and the metadata connection of a magnet fetch opening with MSE. With
RC4 the stream after the handshake goes through the receive buffer's
transform, in place, as on incoming connections.
"""

from __future__ import annotations

import hashlib

import pytest

from torrent.errors import RemoteProtocolError, UsageError
from torrent.options import ENCRYPTION_MODES, Options, dial_order
from torrent.wire.extension import (
    EXTENSION_HANDSHAKE_ID,
    OUR_EXTENSION_IDS,
    UT_METADATA,
    ExtensionHandshake,
)
from torrent.wire.handshake import RESERVED_OURS, encode_handshake
from torrent.wire.messages import Extended, Have, encode
from torrent.wire.metadata_conn import ConnectionReady, MetadataConnection, MetadataOffer
from torrent.wire.mse import CRYPTO_PLAINTEXT, CRYPTO_RC4, Established, MSEReceiver, skey_table
from torrent.wire.peer import (
    BitfieldReceived,
    HandshakeReceived,
    HaveReceived,
    PeerProtocol,
    PeerState,
)

HASH = hashlib.sha1(b"mse peer").digest()
OURS = b"-FT0100-oooooooooooo"
THEIRS = b"-LT2000-tttttttttttt"
PIECES, PIECE_LEN = 10, 16384


def proto(*, initiator: bool, **kw: object) -> PeerProtocol:
    return PeerProtocol(HASH, OURS if initiator else THEIRS, PIECES, PIECE_LEN,
                        PIECES * PIECE_LEN, we_initiated=initiator, now=0.0, **kw)  # type: ignore[arg-type]


def feed(p: PeerProtocol, data: bytes, chunk: int | None) -> list[object]:
    events: list[object] = []
    step = (len(data) or 1) if chunk is None else chunk
    for k in range(0, len(data), step):
        events += p.receive_data(data[k : k + step])
    return events


@pytest.mark.parametrize("chunk", [None, 1, 61])
def test_outgoing_mse_against_our_receiver_selects_plaintext(chunk: int | None) -> None:
    a = proto(initiator=True, initiate_mse=True)
    b = proto(initiator=False)
    ya = a.take_output()
    assert not ya.startswith(b"\x13BitTorrent protocol") and len(ya) >= 96
    assert feed(b, ya, chunk) == [] and b.mse_pending
    assert feed(a, b.take_output(), chunk) == []  # Yb: A answers with step 3 (its IA in it)
    ev = feed(b, a.take_output(), chunk)
    assert ev == [HandshakeReceived(OURS, RESERVED_OURS)]
    assert b.mse_method == CRYPTO_PLAINTEXT and not b.mse_pending
    # B's step 4, then its plaintext handshake and a bitfield right behind it
    ev = feed(a, b.take_output() + b.handshake() + b.send_bitfield(b"\xff\xc0"), chunk)
    assert ev[0] == HandshakeReceived(THEIRS, RESERVED_OURS)
    assert isinstance(ev[1], BitfieldReceived)
    assert a.mse_method == CRYPTO_PLAINTEXT and a.encrypt is None and a.rb.transform is None
    assert a.state is b.state is PeerState.ACTIVE


@pytest.mark.parametrize("chunk", [None, 1, 61])
def test_outgoing_mse_with_rc4_decrypts_in_the_receive_buffer(chunk: int | None) -> None:
    """A peer that allows only RC4: everything after the handshake is RC4 both ways, the
    reads decrypted in place by the receive buffer's transform (the incoming path's)."""
    a = proto(initiator=True, initiate_mse=True)
    peer = MSEReceiver(skey_table([HASH]), allowed=CRYPTO_RC4)
    est = peer.receive_data(a.take_output())
    assert est is None
    assert feed(a, peer.data_to_send(), chunk) == []
    est = peer.receive_data(a.take_output())
    assert isinstance(est, Established) and est.method == CRYPTO_RC4
    assert est.payload[:20] == b"\x13BitTorrent protocol" and est.payload[48:68] == OURS
    assert est.encrypt is not None and est.decrypt is not None
    stream = (encode_handshake(HASH, THEIRS, RESERVED_OURS) + encode(Have(3)) + encode(Have(7)))
    ev = feed(a, peer.data_to_send() + est.encrypt.crypt(stream), chunk)
    assert ev == [HandshakeReceived(THEIRS, RESERVED_OURS), HaveReceived(3), HaveReceived(7)]
    assert a.mse_method == CRYPTO_RC4 and a.rb.transform is not None
    # what we send from now on is RC4 (the worker's Peer.write runs it through a.encrypt)
    assert a.encrypt is not None
    wire = bytearray(a.encrypt.crypt(a.send_interested()))
    est.decrypt(memoryview(wire))
    assert bytes(wire) == b"\x00\x00\x00\x01\x02"


def test_required_refuses_a_plaintext_handshake_and_takes_mse() -> None:
    b = proto(initiator=False, require_mse=True)
    with pytest.raises(RemoteProtocolError, match=r"encryption \(MSE/PE\) is required"):
        b.receive_data(encode_handshake(HASH, OURS, RESERVED_OURS))
    assert b.state is PeerState.CLOSED
    a = proto(initiator=True, initiate_mse=True)
    b = proto(initiator=False, require_mse=True)
    b.receive_data(a.take_output())
    a.receive_data(b.take_output())
    assert b.receive_data(a.take_output()) == [HandshakeReceived(OURS, RESERVED_OURS)]


def test_disabled_refuses_mse() -> None:
    a = proto(initiator=True, initiate_mse=True)
    b = proto(initiator=False, accept_mse=False)
    with pytest.raises(RemoteProtocolError):
        b.receive_data(a.take_output())
    assert b.state is PeerState.CLOSED and b.take_output() == b""


def test_misuse_of_the_switches_is_our_bug() -> None:
    with pytest.raises(ValueError, match="dial"):
        proto(initiator=False, initiate_mse=True)
    with pytest.raises(ValueError, match="accept_mse"):
        proto(initiator=False, require_mse=True, accept_mse=False)


def test_the_encryption_option() -> None:
    assert Options().encryption == "enabled"
    assert ENCRYPTION_MODES == ("enabled", "required", "disabled")
    assert dial_order("required") == (True,)
    assert dial_order("disabled") == (False,)
    assert len(dial_order("enabled")) == 2 and set(dial_order("enabled")) == {True, False}
    with pytest.raises(UsageError, match="encryption"):
        Options(encryption="forced")


# ---------------------------------------------------------------- the metadata connection

@pytest.mark.parametrize("method", [CRYPTO_PLAINTEXT, CRYPTO_RC4])
@pytest.mark.parametrize("chunk", [None, 1])
def test_metadata_connection_over_mse(method: int, chunk: int | None) -> None:
    mc = MetadataConnection(HASH, OURS, client="ft", mse=True)
    assert mc.handover() is None  # its MSE handshake is under way
    peer = MSEReceiver(skey_table([HASH]), allowed=method)
    assert peer.receive_data(mc.data_to_send()) is None
    step = None if chunk is None else chunk

    def give(data: bytes) -> list[object]:
        out: list[object] = []
        n = len(data) if step is None else step
        for k in range(0, len(data), n or 1):
            out += mc.receive_data(data[k : k + n])
        return out

    assert give(peer.data_to_send()) == []
    est = peer.receive_data(mc.data_to_send())
    assert isinstance(est, Established) and est.method == method
    assert est.payload[48:68] == OURS  # our handshake was the IA
    theirs = ExtensionHandshake(m={UT_METADATA: 3}, metadata_size=1000, v="lt")
    stream = (encode_handshake(HASH, THEIRS, RESERVED_OURS)
              + encode(Extended(EXTENSION_HANDSHAKE_ID, theirs.encode())))
    wire = est.encrypt.crypt(stream) if est.encrypt else stream
    ev = give(peer.data_to_send() + wire)
    assert ev == [ConnectionReady(THEIRS), MetadataOffer(1000, "lt")]
    assert mc.mse_method == method
    # our extension handshake went out after ConnectionReady, encrypted when RC4
    out = bytearray(mc.data_to_send())
    if est.decrypt:
        est.decrypt(memoryview(out))
    assert out[4] == 20 and out[5] == EXTENSION_HANDSHAKE_ID
    hs = ExtensionHandshake.decode(bytes(out[6:]))
    assert hs.m == {UT_METADATA: OUR_EXTENSION_IDS[UT_METADATA]}
    # handed over to the download only in plaintext: RC4's state stays in this process
    assert mc.handover() == (None if method == CRYPTO_RC4 else stream)


def test_metadata_connection_refuses_a_garbage_dh_key() -> None:
    mc = MetadataConnection(HASH, OURS, mse=True)
    mc.data_to_send()
    with pytest.raises(RemoteProtocolError, match="unusable MSE public key"):
        mc.receive_data(b"\xff" * 96)
