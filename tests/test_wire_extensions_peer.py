"""The Fast extension (BEP 6) and the extension protocol (BEP 10, 9, 11) in the peer protocol.

Driven through the one receive path (``receive_data``): negotiation by the
reserved bits, the rules each message comes with, and the hostile cases
(messages without the negotiated extension, out of place, out of range,
oversized).
"""

from __future__ import annotations

import pytest

from torrent.errors import RemoteProtocolError
from torrent.wire.extension import (
    MAX_HANDSHAKE_LENGTH,
    OUR_EXTENSION_IDS,
    UT_METADATA,
    UT_PEX,
    ExtensionHandshake,
    MetadataRequest,
    Pex,
    PexPeer,
)
from torrent.wire.fastext import MAX_ALLOWED_FAST
from torrent.wire.handshake import (
    EXTENSION_BIT,
    FAST_BIT,
    RESERVED_NONE,
    RESERVED_OURS,
    encode_handshake,
    reserved_bits,
)
from torrent.wire.messages import (
    BLOCK_SIZE,
    AllowedFast,
    Bitfield,
    Cancel,
    Choke,
    Extended,
    HaveAll,
    HaveNone,
    LocalProtocolError,
    Reject,
    Request,
    Suggest,
    Unchoke,
    encode,
)
from torrent.wire.mse import CRYPTO_PLAINTEXT, CRYPTO_RC4, MSEInitiator
from torrent.wire.peer import (
    BitfieldReceived,
    ExtensionHandshakeReceived,
    HandshakeReceived,
    MetadataReceived,
    PeerProtocol,
    PexReceived,
    RequestDropped,
    RequestReceived,
    RequestRejected,
    Unchoked,
)

INFO_HASH = bytes(range(20))
OUR_ID = b"-FT0100-ourpeeridxyz"
THEIR_ID = b"-LT2110-theirpeerid0"
PIECE_LEN = 2 * BLOCK_SIZE
NUM_PIECES = 10
TOTAL = (NUM_PIECES - 1) * PIECE_LEN + 20_000


def peer(their_reserved: bytes = RESERVED_OURS, *, ours: bytes = RESERVED_OURS) -> PeerProtocol:
    """A connection past both handshakes; the peer set ``their_reserved``."""
    p = PeerProtocol(INFO_HASH, OUR_ID, NUM_PIECES, PIECE_LEN, TOTAL, we_initiated=True,
                     now=0.0, reserved=ours)
    hs = p.handshake()
    assert hs[20:28] == ours
    (ev,) = p.receive_data(encode_handshake(INFO_HASH, THEIR_ID, their_reserved))
    assert isinstance(ev, HandshakeReceived)
    return p


def recv(p: PeerProtocol, *msgs: object) -> list[object]:
    return p.receive_data(b"".join(encode(m) for m in msgs))  # type: ignore[arg-type]


# -- negotiation ------------------------------------------------------------------------


def test_both_bits_negotiate_each_extension() -> None:
    p = peer(RESERVED_OURS)
    assert p.fast and p.extensions
    p = peer(reserved_bits(FAST_BIT))
    assert p.fast and not p.extensions
    p = peer(reserved_bits(EXTENSION_BIT))
    assert p.extensions and not p.fast
    p = peer(RESERVED_OURS, ours=RESERVED_NONE)  # we offer nothing: nothing is on
    assert not p.fast and not p.extensions


@pytest.mark.parametrize("msg", [HaveAll(), HaveNone(), Reject(0, 0, BLOCK_SIZE),
                                 AllowedFast(1), Suggest(1)], ids=lambda m: type(m).__name__)
def test_fast_messages_without_the_fast_extension_drop_the_peer(msg: object) -> None:
    p = peer(reserved_bits(EXTENSION_BIT))
    with pytest.raises(RemoteProtocolError, match="without the Fast extension"):
        recv(p, msg)


# -- BEP 6 ------------------------------------------------------------------------------


def test_have_all_is_a_full_bitfield_and_only_first() -> None:
    p = peer()
    (ev,) = recv(p, HaveAll())
    assert isinstance(ev, BitfieldReceived) and p.peer_is_seed
    assert all(p.peer_has(i) for i in range(NUM_PIECES))
    assert ev.bits[-1] & 0x3F == 0  # spare bits clear (10 pieces: 6 spare)
    with pytest.raises(RemoteProtocolError, match="bitfield after have all"):
        recv(p, Bitfield(b"\xff\xc0"))
    late = peer()
    recv(late, Unchoke())
    with pytest.raises(RemoteProtocolError, match="after its first message"):
        recv(late, HaveAll())


def test_have_none_first_then_haves_as_usual() -> None:
    p = peer()
    assert recv(p, HaveNone()) == []
    assert p.peer_piece_count == 0
    with pytest.raises(RemoteProtocolError, match="after its first message"):
        recv(p, HaveNone())


def test_a_reject_gives_the_request_back_and_a_late_block_is_not_unasked() -> None:
    p = peer()
    recv(p, Unchoke())
    p.send_requests([(0, 0, BLOCK_SIZE), (0, BLOCK_SIZE, BLOCK_SIZE)], 1.0)
    assert recv(p, Reject(0, 0, BLOCK_SIZE)) == [RequestRejected(0, 0, BLOCK_SIZE)]
    assert p.outstanding_requests == [(0, BLOCK_SIZE, BLOCK_SIZE)]
    assert recv(p, Reject(0, 0, BLOCK_SIZE)) == []  # twice: given up already
    with pytest.raises(RemoteProtocolError, match="never sent"):
        recv(p, Reject(3, 0, BLOCK_SIZE))


def test_with_fast_a_choke_keeps_our_requests() -> None:
    p = peer()
    recv(p, Unchoke())
    p.send_requests([(0, 0, BLOCK_SIZE)], 1.0)
    recv(p, Choke())
    assert p.num_outstanding == 1  # the peer rejects or serves it (BEP 6)


def test_requests_we_will_not_serve_are_rejected() -> None:
    p = peer()
    # we choke it: its request is dropped, to be answered by a reject
    assert recv(p, Request(0, 0, BLOCK_SIZE)) == [RequestDropped(0, 0, BLOCK_SIZE)]
    assert p.send_reject(0, 0, BLOCK_SIZE) == encode(Reject(0, 0, BLOCK_SIZE))
    p.send_unchoke()
    assert recv(p, Request(1, 0, BLOCK_SIZE)) == [RequestReceived(1, 0, BLOCK_SIZE)]
    # a cancel under BEP 6 is answered too
    assert recv(p, Cancel(1, 0, BLOCK_SIZE)) == [RequestDropped(1, 0, BLOCK_SIZE)]
    # choking it rejects what it still has queued
    recv(p, Request(2, 0, BLOCK_SIZE))
    assert p.send_choke() == encode(Choke()) + encode(Reject(2, 0, BLOCK_SIZE))


def test_granted_pieces_are_served_while_we_choke_and_survive_a_choke() -> None:
    p = peer()
    assert p.send_allowed_fast([3, 5, 3]) == encode(AllowedFast(3)) + encode(AllowedFast(5))
    assert p.granted == {3, 5}
    # we choke it (the start): a granted piece is queued, another one rejected
    assert recv(p, Request(3, 0, BLOCK_SIZE)) == [RequestReceived(3, 0, BLOCK_SIZE)]
    assert recv(p, Request(4, 0, BLOCK_SIZE)) == [RequestDropped(4, 0, BLOCK_SIZE)]
    p.send_unchoke()
    recv(p, Request(4, 0, BLOCK_SIZE), Request(5, BLOCK_SIZE, BLOCK_SIZE))
    # choking it again rejects only what was not granted
    assert p.send_choke() == encode(Choke()) + encode(Reject(4, 0, BLOCK_SIZE))
    served = [p.next_request() for _ in range(3)]
    assert served == [(3, 0, BLOCK_SIZE), (5, BLOCK_SIZE, BLOCK_SIZE), None]


def test_granting_is_bounded_and_checked() -> None:
    p = peer()
    p.send_allowed_fast(range(NUM_PIECES))
    assert len(p.granted) == min(MAX_ALLOWED_FAST, NUM_PIECES)
    with pytest.raises(LocalProtocolError, match="piece 10 of 10"):
        p.send_allowed_fast([NUM_PIECES])
    with pytest.raises(LocalProtocolError, match="Fast extension"):
        peer(reserved_bits(EXTENSION_BIT)).send_allowed_fast([1])


def test_reject_and_have_all_need_the_fast_extension_to_send() -> None:
    p = peer(reserved_bits(EXTENSION_BIT))
    with pytest.raises(LocalProtocolError):
        p.send_reject(0, 0, BLOCK_SIZE)
    with pytest.raises(LocalProtocolError):
        p.send_have_all()


def test_allowed_fast_is_bounded_and_checked() -> None:
    p = peer()
    recv(p, *[AllowedFast(i % NUM_PIECES) for i in range(200)])
    assert len(p.allowed_fast) <= min(MAX_ALLOWED_FAST, NUM_PIECES)
    with pytest.raises(RemoteProtocolError, match="allowed fast for piece 10"):
        recv(peer(), AllowedFast(NUM_PIECES))
    with pytest.raises(RemoteProtocolError, match="suggested piece 99"):
        recv(peer(), Suggest(99))


# -- BEP 10, 9, 11 ------------------------------------------------------------------------


def test_extension_handshake_both_ways() -> None:
    p = peer()
    ours = ExtensionHandshake(m=dict(OUR_EXTENSION_IDS), reqq=500, metadata_size=1234)
    assert p.send_extension_handshake(ours) == encode(Extended(0, ours.encode()))
    theirs = ExtensionHandshake(m={UT_METADATA: 3, UT_PEX: 7, "lt_donthave": 9}, reqq=2000,
                                metadata_size=20_000, v="libtorrent")
    (ev,) = recv(p, Extended(0, theirs.encode()))
    assert isinstance(ev, ExtensionHandshakeReceived) and ev.handshake.reqq == 2000
    assert p.peer_extensions == {UT_METADATA: 3, UT_PEX: 7}
    # our messages go out under its ids
    assert p.send_extended(UT_METADATA, b"x") == encode(Extended(3, b"x"))
    # a later handshake withdraws one
    recv(p, Extended(0, ExtensionHandshake(m={UT_PEX: 0}).encode()))
    with pytest.raises(LocalProtocolError, match="ut_pex"):
        p.send_extended(UT_PEX, b"x")


def test_metadata_and_pex_messages_arrive_under_our_ids() -> None:
    p = peer()
    recv(p, Extended(0, ExtensionHandshake(m={UT_METADATA: 3}, metadata_size=40_000).encode()))
    (ev,) = recv(p, Extended(OUR_EXTENSION_IDS[UT_METADATA], MetadataRequest(2).encode()))
    assert ev == MetadataReceived(MetadataRequest(2))
    pex = Pex(added=(PexPeer("127.0.0.2", 6881),))
    (ev,) = recv(p, Extended(OUR_EXTENSION_IDS[UT_PEX], pex.encode()))
    assert isinstance(ev, PexReceived) and ev.pex.added == pex.added
    assert recv(p, Extended(99, b"whatever")) == []  # an id we never announced: ignored


def test_extended_messages_without_bep10_are_ignored() -> None:
    p = peer(reserved_bits(FAST_BIT))
    assert recv(p, Extended(0, ExtensionHandshake(m={UT_PEX: 1}).encode())) == []
    assert p.peer_extensions == {}


def test_hostile_extension_messages_drop_the_peer() -> None:
    p = peer()
    with pytest.raises(RemoteProtocolError):
        recv(p, Extended(0, b"d1:md" + b"1:x" * 10 + b"ee"))  # malformed bencode
    big = peer()
    body = b"d1:v" + str(MAX_HANDSHAKE_LENGTH).encode() + b":" + b"v" * MAX_HANDSHAKE_LENGTH + b"e"
    with pytest.raises(RemoteProtocolError):
        recv(big, Extended(0, body))
    meta = peer()
    recv(meta, Extended(0, ExtensionHandshake(m={UT_METADATA: 3}, metadata_size=100).encode()))
    too_long = b"d8:msg_typei1e5:piecei0e10:total_sizei99999ee" + b"x" * (16 * 1024 + 1)
    with pytest.raises(RemoteProtocolError):  # a metadata piece longer than 16 KiB
        recv(meta, Extended(OUR_EXTENSION_IDS[UT_METADATA], too_long))
    far = peer()
    with pytest.raises(RemoteProtocolError):  # a piece index beyond any metadata size
        recv(far, Extended(OUR_EXTENSION_IDS[UT_METADATA], b"d8:msg_typei0e5:piecei1000000ee"))


def test_handshake_unchoke_still_work_with_our_bits() -> None:
    p = peer(RESERVED_NONE)
    assert not p.fast
    assert recv(p, Unchoke()) == [Unchoked()]


# -- MSE/PE on incoming connections -----------------------------------------------------------


@pytest.mark.parametrize("provide", [CRYPTO_PLAINTEXT | CRYPTO_RC4, CRYPTO_RC4],
                         ids=["offer-both-plaintext-chosen", "rc4-only"])
@pytest.mark.parametrize("step", [1, 37, 10_000])
def test_an_incoming_mse_handshake_leads_to_the_bittorrent_stream(provide: int,
                                                                  step: int) -> None:
    """The libtorrent family opens with MSE/PE: we answer it, then read the BitTorrent
    handshake it carries (IA) and the stream after it, plaintext or RC4, however split."""
    ini = MSEInitiator(INFO_HASH, encode_handshake(INFO_HASH, THEIR_ID, RESERVED_OURS),
                       provide=provide)
    p = PeerProtocol(INFO_HASH, OUR_ID, NUM_PIECES, PIECE_LEN, TOTAL, we_initiated=False,
                     now=0.0)
    to_us = ini.data_to_send()
    events: list[object] = []
    est = None
    for _ in range(20):  # a handful of round trips at most
        for i in range(0, len(to_us), step):
            events += p.receive_data(to_us[i : i + step])
        back = p.take_output()
        if est is None and back:
            est = ini.receive_data(back)
        to_us = ini.data_to_send()
        if events:
            break
    assert est is not None and events[:1] == [HandshakeReceived(THEIR_ID, RESERVED_OURS)]
    assert (p.encrypt is not None) == (provide == CRYPTO_RC4) == (est.method == CRYPTO_RC4)
    # both directions of the stream after it: our handshake out, an unchoke in
    ours = p.handshake()
    wire = ours if p.encrypt is None else p.encrypt.crypt(ours)
    got = wire if est.decrypt is None else bytes(est.decrypt.crypt(wire))
    assert got == ours
    unchoke = encode(Unchoke())
    assert p.receive_data(unchoke if est.encrypt is None else est.encrypt.crypt(unchoke)) == [
        Unchoked()]


def test_a_plaintext_incoming_handshake_is_not_taken_for_mse() -> None:
    p = PeerProtocol(INFO_HASH, OUR_ID, NUM_PIECES, PIECE_LEN, TOTAL, we_initiated=False,
                     now=0.0)
    hs = encode_handshake(INFO_HASH, THEIR_ID, RESERVED_OURS)
    for b in hs[:-1]:  # one byte at a time: never mistaken for Ya, never an error
        assert p.receive_data(bytes([b])) == []
    assert p.receive_data(hs[-1:]) == [HandshakeReceived(THEIR_ID, RESERVED_OURS)]
    assert p.take_output() == b"" and p.encrypt is None


def test_mse_is_never_tried_on_connections_we_dialled() -> None:
    p = peer()  # we_initiated: the answer must be a plain handshake
    with pytest.raises(RemoteProtocolError):
        PeerProtocol(INFO_HASH, OUR_ID, NUM_PIECES, PIECE_LEN, TOTAL, we_initiated=True,
                     now=0.0).receive_data(b"\x00" * 96)
    assert p.take_output() == b""
