"""torrent.workerhost: incoming connections routed to their torrent by their first bytes.

The :class:`~torrent.workerhost.Router` against a stand-in connection and
torrents: a plaintext handshake in parts, an MSE/PE handshake answered to the
end (the other side is the real initiator of torrent/wire/mse.py), and the
hostile cases: an info-hash or SKEY of no torrent here, a torrent stopping,
an encrypted opening with encryption off, and the bound on connections being
routed at once.
"""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace
from typing import Any

import pytest

from torrent.options import Options
from torrent.wire.handshake import encode_handshake
from torrent.wire.mse import MSEInitiator, req2_hash
from torrent.workerhost import MAX_ROUTING, HostConfig, Router, WorkerHost

pytestmark = pytest.mark.timeout(60)

A = b"\xaa" * 20
B = b"\xbb" * 20
PEER_ID = b"-XX0001-" + b"1" * 12


class Conn:
    """What the router uses of a PeerConn."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.aborted: str | None = None
        self.handler: Any = None

    def write(self, data: bytes) -> None:
        self.written += data

    def abort(self, reason: str) -> None:
        self.aborted = reason

    def rehome(self, handler: Any) -> None:
        self.handler = handler


class Torrent:
    """A torrent of the process: records what it was handed."""

    def __init__(self, info_hash: bytes, *, stopping: bool = False,
                 refuse: bool = False) -> None:
        self.info_hash = info_hash
        self.stop_event = asyncio.Event()
        if stopping:
            self.stop_event.set()
        self.refuse = refuse
        self.accepted: list[dict[str, Any]] = []

    def accept(self, conn: Conn, **how: Any) -> Any:
        self.accepted.append(how)
        return None if self.refuse else SimpleNamespace(rb=None, torrent=self)


def host(*torrents: Torrent, mse: bool = True) -> Any:
    return SimpleNamespace(by_hash={t.info_hash: t for t in torrents},
                           skeys={req2_hash(t.info_hash): t.info_hash for t in torrents},
                           accept_mse=mse, routing=set())


def routed(h: Any, data: bytes, *, parts: int = 1) -> tuple[Router, Conn]:
    conn = Conn()
    r = Router(h, conn, 0.0)  # type: ignore[arg-type]
    h.routing.add(r)
    step = -(-len(data) // parts)
    for k in range(0, len(data), step):
        r.rb.feed(data[k : k + step])
        r.data_received()
    return r, conn


def mse_exchange(h: Any, init: MSEInitiator, done: Any) -> Conn:
    """The real initiator against a router, round trip by round trip (it takes two),
    until ``done()``, the router closes the connection, or ten rounds."""
    conn = Conn()
    r = Router(h, conn, 0.0)  # type: ignore[arg-type]
    h.routing.add(r)
    for _round in range(10):
        out = init.data_to_send()
        if out:
            r.rb.feed(out)
            r.data_received()
        if done() or conn.aborted:
            break
        back = bytes(conn.written)
        conn.written.clear()
        if back:
            init.receive_data(back)
    return conn


def test_a_plaintext_handshake_in_parts_goes_to_the_torrent_it_names() -> None:
    a, b = Torrent(A), Torrent(B)
    h = host(a, b)
    hs = encode_handshake(B, PEER_ID) + b"\x00\x00\x00\x00"  # and a keep-alive after it
    r, conn = routed(h, hs[:30])
    assert not b.accepted and conn.aborted is None  # the info-hash is not in yet
    r.rb.feed(hs[30:])
    r.data_received()
    assert not a.accepted and len(b.accepted) == 1
    assert b.accepted[0]["routed"] == hs  # every byte read, in order, for the torrent
    assert conn.handler.torrent is b and conn.aborted is None
    assert r not in h.routing


@pytest.mark.parametrize("case", ["unknown", "stopping", "refused"])
def test_a_handshake_for_no_torrent_of_ours_is_closed(case: str) -> None:
    a = Torrent(A, stopping=case == "stopping", refuse=case == "refused")
    h = host(a, Torrent(B))
    ih = b"\xcc" * 20 if case == "unknown" else A
    r, conn = routed(h, encode_handshake(ih, PEER_ID))
    assert conn.aborted is not None and conn.handler is None
    if case == "refused":
        assert a.accepted  # asked, and said no (its connection caps)
    else:
        assert "no torrent" in conn.aborted and not a.accepted
    assert r not in h.routing


def test_an_mse_handshake_is_answered_and_routed_by_its_skey() -> None:
    a, b = Torrent(A), Torrent(B)
    h = host(a, b)
    ours = encode_handshake(A, PEER_ID)
    conn = mse_exchange(h, MSEInitiator(A, ours), done=lambda: bool(a.accepted))
    assert len(a.accepted) == 1 and not b.accepted, conn.aborted
    est = a.accepted[0]["routed_mse"]
    assert est.info_hash == A
    assert est.payload.startswith(ours[:20])  # the initiator's BitTorrent handshake (IA)


def test_an_mse_handshake_naming_no_torrent_of_ours_is_closed() -> None:
    h = host(Torrent(A))
    h.skeys = {}  # (no torrent's req2 matches)
    conn = mse_exchange(h, MSEInitiator(B, encode_handshake(B, PEER_ID)), done=lambda: False)
    assert conn.aborted is not None and conn.handler is None


def test_an_encrypted_opening_with_encryption_off_is_closed() -> None:
    h = host(Torrent(A), mse=False)
    _r, conn = routed(h, b"\x01" * 96)
    assert conn.aborted is not None and "encryption" in conn.aborted


def test_garbage_after_the_mse_bound_is_closed() -> None:
    h = host(Torrent(A))
    _r, conn = routed(h, b"\x07" * 3000, parts=7)  # a Ya and no valid req1 ever
    assert conn.aborted is not None


def test_connections_being_routed_are_bounded() -> None:
    async def main() -> tuple[list[Any], int, Any]:
        a, b = socket.socketpair()
        try:
            wh = WorkerHost(HostConfig(wid=0, options=Options(workers=1), port=0), a, -1)
            ta, tb = Torrent(A), Torrent(B)
            wh.torrents = {0: ta, 1: tb}  # type: ignore[dict-item]
            got = [wh.accept(Conn()) for _ in range(MAX_ROUTING + 3)]  # type: ignore[arg-type]
            wh.torrents = {0: ta}  # type: ignore[dict-item]
            one = wh.accept(Conn())  # type: ignore[arg-type]
            return got, wh.refused, one
        finally:
            a.close()
            b.close()

    got, refused, one = asyncio.run(main())
    assert all(isinstance(g, Router) for g in got[:MAX_ROUTING])
    assert got[MAX_ROUTING:] == [None] * 3 and refused == 3
    assert one.torrent.info_hash == A  # one torrent: straight to it, no routing


def test_a_stopped_torrents_flush_thread_is_released_once_its_flush_is_over(
        tmp_path: Any) -> None:
    """A torrent stopped without waiting for its fdatasync leaves its flush thread to
    the process; the process releases it (thread joined, eventfd closed) once the
    flush completed, not at its own end: a daemon stops torrents all day."""
    import os
    import select

    from torrent import _io

    async def main() -> tuple[int, int, bool]:
        a, b = socket.socketpair()
        try:
            wh = WorkerHost(HostConfig(wid=0, options=Options(workers=1), port=0), a, -1)
            efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            iot = _io.IOThread(efd, writers=1)
            fd = os.open(tmp_path / "f", os.O_CREAT | os.O_WRONLY)
            os.write(fd, b"x" * 4096)
            iot.submit_sync(-1, [fd])
            wh.linger(iot, efd)
            held = len(wh._lingering)
            assert select.select([efd], [], [], 20)[0], "the flush did not complete"
            wh.reap_lingering()
            os.close(fd)
            try:
                os.fstat(efd)
                closed = False
            except OSError:
                closed = True
            return held, len(wh._lingering), closed
        finally:
            a.close()
            b.close()

    held, left, closed = asyncio.run(main())
    assert held == 1 and left == 0 and closed
