"""The worker's choices about one peer, without a process: whether a peer that hung up
on us is dialled back (``Worker._redial_after_completion``), and how a connection a
magnet's fetch handed over learns what we have (``Worker._handshaken``).

The :class:`~torrent.worker.Worker` methods run on small stand-ins (as in
tests/test_worker_extensions.py), with the loop's clock injected. End to end,
against a leecher that hangs up as libtorrent 2.1 does, in
tests/test_seed_options.py; with libtorrent seeders kept from a magnet's fetch,
in tests/test_dht_interop.py and tests/test_first_piece.py.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from helpers.framereader import FrameReader

from torrent.wire import peer as wp
from torrent.wire.extension import ExtensionHandshake
from torrent.wire.handshake import RESERVED_OURS, encode_handshake, make_peer_id
from torrent.wire.messages import Bitfield, Extended, Have
from torrent.worker import MAX_REDIALS, REDIAL_WINDOW, Worker

HASH = b"\x07" * 20
PIECES = 12  # two bytes of bitfield


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def bits(pieces: range | list[int]) -> bytes:
    out = bytearray(-(-PIECES // 8))
    for i in pieces:
        out[i >> 3] |= 0x80 >> (i & 7)
    return bytes(out)


# -- dialling back a leecher that hung up on our last HAVE -------------------------------------
def worker(completed_at: float | None = 1000.0) -> SimpleNamespace:
    return SimpleNamespace(completed_at=completed_at, loop=Clock(1000.5), redialled=set(),
                           have=bits(range(PIECES)),
                           stop_event=SimpleNamespace(is_set=lambda: False))


def leecher(theirs: bytes = bits(range(PIECES - 1)), *, remote_closed: bool = True,
            listen_port: int | None = 51413, active: bool = True) -> SimpleNamespace:
    return SimpleNamespace(addr=("10.0.0.2", 40001), listen_port=listen_port, active=active,
                           conn=SimpleNamespace(remote_closed=remote_closed),
                           proto=SimpleNamespace(peer_bitfield=theirs))


def redial(w: SimpleNamespace, p: SimpleNamespace, banned: bool = False) -> Any:
    return Worker._redial_after_completion(w, p, banned)  # type: ignore[arg-type]


def test_a_leecher_that_hangs_up_right_after_we_completed_is_dialled_back_once() -> None:
    w = worker()
    assert redial(w, leecher()) == ("10.0.0.2", 51413)  # its listen port, not the socket's
    assert redial(w, leecher()) is None  # once per peer


def test_no_redial_outside_its_case() -> None:
    assert redial(worker(completed_at=None), leecher()) is None  # not complete (or from start)
    late = worker()
    late.loop.now = 1000.0 + REDIAL_WINDOW + 0.1
    assert redial(late, leecher()) is None  # long after the HAVE: it left for its reasons
    assert redial(worker(), leecher(remote_closed=False)) is None  # we closed it
    assert redial(worker(), leecher(bits(range(PIECES)))) is None  # it has all we have
    assert redial(worker(), leecher(listen_port=None)) is None  # nowhere to dial
    assert redial(worker(), leecher(active=False)) is None  # never got past the handshake
    assert redial(worker(), leecher(), banned=True) is None


def test_redials_are_bounded() -> None:
    w = worker()
    w.redialled = {("10.9.0.1", p) for p in range(MAX_REDIALS)}
    assert redial(w, leecher()) is None


# -- a handed-over connection learns what we have ----------------------------------------------
def adopted(interested: bool) -> wp.PeerProtocol:
    """A connection the fetch made: our handshake (and INTERESTED) went out there."""
    proto = wp.PeerProtocol(HASH, make_peer_id(), PIECES, 16384, PIECES * 16384,
                            we_initiated=True, now=0.0)
    proto.handshake_sent_elsewhere()
    proto.receive_data(encode_handshake(HASH, make_peer_id(), RESERVED_OURS))
    if interested:
        proto.interested_sent_elsewhere()
    return proto


def handshaken(proto: wp.PeerProtocol, have: list[int]) -> list[Any]:
    """What ``Worker._handshaken`` writes to the peer, as messages."""
    written: list[bytes] = []
    w = SimpleNamespace(stats={"mse": 0, "mse_rc4": 0}, half_open=1, have=bits(have),
                        have_count=len(have), complete=len(have) == PIECES,
                        meta=SimpleNamespace(info_hash=HASH, num_pieces=PIECES),
                        cfg=SimpleNamespace(dht_port=0), loop=Clock(),
                        _extension_handshake=lambda peer: ExtensionHandshake(m={}))
    p = SimpleNamespace(proto=proto, active=False, interested_elsewhere=False,
                        requested_elsewhere=(), addr=("host.example", 1),
                        conn=SimpleNamespace(write=written.append), write=written.append)
    Worker._handshaken(w, p)  # type: ignore[arg-type]
    reader = FrameReader(PIECES)
    out = reader.feed(b"".join(written))
    assert not reader.buffered  # whole frames only
    return [m for m in out if not isinstance(m, Extended)]


def test_a_fresh_connection_gets_our_bitfield() -> None:
    proto = wp.PeerProtocol(HASH, make_peer_id(), PIECES, 16384, PIECES * 16384,
                            we_initiated=True, now=0.0)
    proto.handshake()
    proto.receive_data(encode_handshake(HASH, make_peer_id(), RESERVED_OURS))
    assert handshaken(proto, [0, 5]) == [Bitfield(bits([0, 5]))]


def test_a_connection_handed_over_after_our_interested_gets_haves() -> None:
    """Pieces verified after the hand-over was planned, before the worker took the
    connection: BEP 3 allows no bitfield after our INTERESTED, so a HAVE each."""
    assert handshaken(adopted(interested=True), [0, 5]) == [Have(0), Have(5)]
    assert handshaken(adopted(interested=True), []) == []
    assert handshaken(adopted(interested=False), [3]) == [Bitfield(bits([3]))]
