"""The worker's side of the extension protocol, without a process: its BEP 10 handshake,
its ut_metadata answers (BEP 9) and what it takes from a peer's ut_pex (BEP 11).

The :class:`~torrent.worker.Worker` methods run on small stand-ins for the
worker and the peer (as tests/test_load.py does for dialling), with the
loop's clock injected; the real thing against real clients is in
tests/test_interop_extensions.py.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from torrent import bencoding, ipc
from torrent.peeraddr import pack_compact
from torrent.wire.extension import (
    MAX_METADATA_SIZE,
    METADATA_PIECE,
    UT_METADATA,
    UT_PEX,
    ExtensionHandshake,
    MetadataData,
    MetadataReject,
    MetadataRequest,
    Pex,
    PexPeer,
    decode_metadata_message,
)
from torrent.worker import MAX_METADATA_ANSWERS, PEX_INTERVAL, PEX_SLACK, Worker

PORT = 6881


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def fake_worker(info: bytes = b"d4:name1:xe", *, private: bool = False,
                bind: str = "0.0.0.0", workers: int = 1) -> SimpleNamespace:
    sent: list[Any] = []
    w = SimpleNamespace(meta=SimpleNamespace(info_bytes=info, private=private),
                        cfg=SimpleNamespace(port=PORT, workers=workers,
                                            options=SimpleNamespace(bind=bind)),
                        loop=Clock(), sent=sent, send=sent.append, peers=[],
                        other_peers=frozenset(), _live_shared=frozenset())
    w.live_peers = lambda: Worker.live_peers(w)  # type: ignore[arg-type]
    return w


def fake_peer() -> SimpleNamespace:
    written: list[tuple[str, bytes]] = []
    proto = SimpleNamespace(peer_extensions={UT_METADATA: 3, UT_PEX: 4},
                            send_extended=lambda name, body: (name, body))
    return SimpleNamespace(addr=("10.1.2.3", 51413), proto=proto, metadata_served=0,
                           pex_heard=-PEX_INTERVAL, written=written, write=written.append,
                           listen_port=51413, active=True, closed=False, pex_sent=set())


def other(host: str, port: int) -> SimpleNamespace:
    """Another live peer of the worker's, listening on ``port``."""
    return SimpleNamespace(addr=(host, 40000), listen_port=port, active=True, closed=False)


# -- the extension handshake -------------------------------------------------------------------
def test_our_handshake_offers_metadata_and_pex() -> None:
    w = fake_worker()
    hs = Worker._extension_handshake(w, fake_peer())  # type: ignore[arg-type]
    assert set(hs.m) == {UT_METADATA, UT_PEX}
    assert hs.metadata_size == len(w.meta.info_bytes) and hs.p == PORT
    assert hs.yourip == "10.1.2.3"
    assert ExtensionHandshake.decode(hs.encode()) == hs


def test_a_private_torrent_offers_no_pex() -> None:
    hs = Worker._extension_handshake(fake_worker(private=True), fake_peer())  # type: ignore[arg-type]
    assert set(hs.m) == {UT_METADATA}


def test_an_info_dict_over_the_metadata_bound_is_not_offered() -> None:
    # A .torrent may hold up to 64 MiB of info dict; peers take 30 MiB at most
    # over ut_metadata, and the handshake cannot announce more.  Offering it
    # anyway made the handshake fail to encode: every BEP 10 peer was dropped.
    w = fake_worker(b"x" * (MAX_METADATA_SIZE + 1))
    peer = fake_peer()
    hs = Worker._extension_handshake(w, peer)  # type: ignore[arg-type]
    assert set(hs.m) == {UT_PEX} and hs.metadata_size is None
    hs.encode()
    Worker._metadata(w, peer, MetadataRequest(0))  # type: ignore[arg-type]
    (name, body), = peer.written
    assert name == UT_METADATA and decode_metadata_message(body) == MetadataReject(0)


# -- ut_metadata answers -------------------------------------------------------------------------
def test_metadata_answers_are_bounded_per_tick_and_checked() -> None:
    info = bytes(range(256)) * 100  # 25,600 bytes: two metadata pieces
    w, peer = fake_worker(info), fake_peer()
    for _ in range(MAX_METADATA_ANSWERS + 5):
        Worker._metadata(w, peer, MetadataRequest(1))  # type: ignore[arg-type]
    Worker._metadata(w, peer, MetadataRequest(2))  # type: ignore[arg-type]
    answers = [decode_metadata_message(body) for _name, body in peer.written]
    data = [a for a in answers if isinstance(a, MetadataData)]
    assert len(data) == MAX_METADATA_ANSWERS
    assert all(d.piece == 1 and d.data == info[METADATA_PIECE:] for d in data)
    assert answers[MAX_METADATA_ANSWERS:] == [MetadataReject(1)] * 5 + [MetadataReject(2)]


# -- ut_pex taken ----------------------------------------------------------------------------------
def test_pex_is_taken_once_a_minute_without_our_own_address() -> None:
    w, peer = fake_worker(bind="127.0.0.1"), fake_peer()
    first = Pex(added=(PexPeer("127.0.0.1", PORT), PexPeer("10.0.0.1", 1)))
    Worker._pex_received(w, peer, first)  # type: ignore[arg-type]
    assert w.sent == [ipc.PeersFound((("10.0.0.1", 1),), "pex")]
    w.loop.now += PEX_INTERVAL - PEX_SLACK - 1
    Worker._pex_received(w, peer, Pex(added=(PexPeer("10.0.0.2", 2),)))  # type: ignore[arg-type]
    assert len(w.sent) == 1  # within the minute (less the slack for jitter): ignored
    w.loop.now += 1
    Worker._pex_received(w, peer, Pex(added=(PexPeer("10.0.0.3", 3),)))  # type: ignore[arg-type]
    assert w.sent[1:] == [ipc.PeersFound((("10.0.0.3", 3),), "pex")]


def test_pex_of_a_private_torrent_is_never_taken() -> None:
    w, peer = fake_worker(private=True), fake_peer()
    Worker._pex_received(w, peer, Pex(added=(PexPeer("10.0.0.1", 1),)))  # type: ignore[arg-type]
    assert w.sent == []


# -- IPv6 ------------------------------------------------------------------------------------------
def test_an_ipv6_peer_is_told_its_ipv6_address() -> None:
    peer = fake_peer()
    peer.addr = ("2001:db8::7", 51413)
    hs = Worker._extension_handshake(fake_worker(), peer)  # type: ignore[arg-type]
    assert hs.yourip == "2001:db8::7"
    assert ExtensionHandshake.decode(hs.encode()).yourip == "2001:db8::7"


def test_pex_ipv6_peers_are_taken_without_our_own_address() -> None:
    w, peer = fake_worker(bind="::1"), fake_peer()
    pex = Pex.decode(Pex(added=(PexPeer("::1", PORT), PexPeer("2001:db8::2", 2),
                                PexPeer("10.0.0.1", 1))).encode())  # through added / added6
    Worker._pex_received(w, peer, pex)  # type: ignore[arg-type]
    assert w.sent == [ipc.PeersFound((("10.0.0.1", 1), ("2001:db8::2", 2)), "pex")]


def test_pex_sent_lists_ipv6_peers_in_added6_and_dropped6() -> None:
    v6, v4 = other("2001:db8::5", 5), other("10.0.0.4", 4)
    peer = fake_peer()
    peer.pex_sent = set()
    w = fake_worker()
    w.peers = [peer, v6, v4]
    Worker._send_pex(w, peer, 1000.0)  # type: ignore[arg-type]
    (name, body), = peer.written
    assert name == UT_PEX
    raw = bencoding.decode(body)
    assert raw[b"added6"] == pack_compact("2001:db8::5", 5) and raw[b"added6.f"] == b"\0"
    assert raw[b"added"] == pack_compact("10.0.0.4", 4)
    w.peers = [peer, v4]  # the IPv6 peer left: dropped6 says so
    Worker._send_pex(w, peer, 1100.0)  # type: ignore[arg-type]
    raw = bencoding.decode(peer.written[1][1])
    assert raw[b"dropped6"] == pack_compact("2001:db8::5", 5) and raw[b"added"] == b""


# -- PEX across workers ------------------------------------------------------------------------
def test_pex_lists_the_other_workers_peers_but_never_the_peer_itself() -> None:
    peer = fake_peer()
    w = fake_worker(workers=2)
    w.peers = [peer, other("10.0.0.4", 4)]
    # the coordinator's OtherPeers: a peer of another worker, and this very peer
    # (it reached both workers)
    w.other_peers = frozenset({("10.0.0.9", 9), (peer.addr[0], peer.listen_port)})
    Worker._send_pex(w, peer, 1000.0)  # type: ignore[arg-type]
    (_name, body), = peer.written
    raw = bencoding.decode(body)
    told = {raw[b"added"][i:i + 6] for i in range(0, len(raw[b"added"]), 6)}
    assert told == {pack_compact("10.0.0.4", 4), pack_compact("10.0.0.9", 9)}
    w.other_peers = frozenset()  # that worker's peer left
    Worker._send_pex(w, peer, 1100.0)  # type: ignore[arg-type]
    raw = bencoding.decode(peer.written[1][1])
    assert raw[b"dropped"] == pack_compact("10.0.0.9", 9) and raw[b"added"] == b""


def test_live_peers_go_to_the_coordinator_when_they_change_bounded() -> None:
    w = fake_worker(workers=2)
    w.peers = [other("10.0.0.4", 4), other("10.0.0.5", 0)]  # no listen port: not told
    Worker._share_live_peers(w)  # type: ignore[arg-type]
    Worker._share_live_peers(w)  # type: ignore[arg-type]  # unchanged: nothing more
    assert w.sent == [ipc.LivePeers(frozenset({("10.0.0.4", 4)}))]
    w.peers = [other(f"10.1.{i >> 8}.{i & 255}", 1000 + i)
               for i in range(ipc.MAX_SHARED_PEERS + 50)]
    Worker._share_live_peers(w)  # type: ignore[arg-type]
    assert len(w.sent[1].peers) == ipc.MAX_SHARED_PEERS


@pytest.mark.parametrize(("private", "workers"), [(True, 2), (False, 1)])
def test_live_peers_are_never_shared_private_or_alone(private: bool, workers: int) -> None:
    w = fake_worker(private=private, workers=workers)
    w.peers = [other("10.0.0.4", 4)]
    Worker._share_live_peers(w)  # type: ignore[arg-type]
    assert w.sent == []
