"""torrent.magnetfetch: fetching a magnet's metadata from scripted peers on 127.0.0.1, in-process.

The peers are :class:`helpers.metapeer.MetadataPeer` (honest, lying about the
hash, over the size bound, silent, offering nothing); the trackers
:class:`trackers.HTTPTestTracker`. Each fetch runs on its own loop, bounded
by a time-out; after every run no task of it is left and every connection it
made has been closed (the peers see the remote close).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from helpers.metapeer import MetadataPeer
from trackers import HTTPTestTracker

from torrent import bencoding
from torrent.errors import Incomplete
from torrent.magnet import Magnet
from torrent.magnetfetch import MAGNET_LEFT, Fetched, close_handovers, fetch_metadata
from torrent.metadata import metainfo_from_info
from torrent.options import Options, dial_order
from torrent.ports import free_port
from torrent.wire.extension import MAX_METADATA_SIZE, metadata_piece_count
from torrent.wire.handshake import make_peer_id

pytestmark = pytest.mark.timeout(60)

#: Every fetch in these tests ends well within this (seconds).
FETCH_BOUND = 30.0

INFO = bencoding.encode({b"name": b"x.bin", b"piece length": 16384, b"length": 16384 * 4000,
                         b"pieces": hashlib.sha256(b"x").digest()[:20] * 4000})
HASH = hashlib.sha1(INFO).digest()
# Same length, one byte changed in every 16 KiB piece: whichever of its pieces is
# used, the whole fails its hash.
BAD = bytes(b ^ 1 if i % 16384 == 100 else b for i, b in enumerate(INFO))


@pytest.fixture
def peers() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def start(stack: ExitStack, info: bytes = INFO, **kw: Any) -> MetadataPeer:
    return stack.enter_context(MetadataPeer(HASH, info, **kw))


def addr(p: MetadataPeer) -> tuple[str, int]:
    return ("127.0.0.1", p.port)


def run(magnet: Magnet, opts: Options, logs: list[str] | None = None) -> bytes:
    """fetch_metadata on a fresh loop; asserts it left no task behind; the info dict
    (the connections it handed over are closed)."""
    got = fetch(magnet, opts, logs)
    close_handovers(got.conns)
    return got.info


def fetch(magnet: Magnet, opts: Options, logs: list[str] | None = None,
          on_dialled: Callable[[], None] | None = None) -> Fetched:
    """fetch_metadata on a fresh loop; asserts it left no task behind."""
    async def main() -> Fetched:
        try:
            return await asyncio.wait_for(
                fetch_metadata(magnet, opts, peer_id=make_peer_id(), port=6881,
                               log=(logs if logs is not None else []).append,
                               on_dialled=on_dialled), FETCH_BOUND)
        finally:
            left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            assert not left, f"tasks left: {left}"

    return asyncio.run(main())


def test_two_honest_peers_share_the_fetch(peers: ExitStack) -> None:
    a, b = start(peers), start(peers)
    logs: list[str] = []
    dialled: list[int] = []  # the peers asked at the time: none yet
    got = fetch(Magnet(HASH, peers=(addr(a), addr(b))), Options(), logs,
                on_dialled=lambda: dialled.append(len(a.asked) + len(b.asked)))
    assert dialled == [0]  # once, while the peers answered our handshakes
    assert got.info == INFO
    asked = sorted(a.asked + b.asked)
    assert asked == list(range(metadata_piece_count(len(INFO))))  # each piece asked once
    # The connections are handed over to the download with the peer's stream so far:
    # its handshake first (the metadata messages are not in it). A peer that served
    # a piece had answered, so its connection goes with its handshake; the other may
    # not have answered yet when the fetch ended (its connection then goes with what
    # came of its handshake, or, mid-MSE, not at all).
    handed = {(h.host, h.port): h for h in got.conns}
    served = {addr(p) for p in (a, b) if p.asked}
    assert served and served <= handed.keys() <= {addr(a), addr(b)}, (served, handed)
    for key, h in handed.items():
        assert len(h.data) < 1024 and h.source == "magnet"
        if key in served:
            assert h.data[:20] == b"\x13BitTorrent protocol" and h.data[28:48] == HASH
        else:
            assert b"\x13BitTorrent protocol".startswith(h.data[:20])
    for p in (a, b):
        if addr(p) in handed:
            assert not p.remote_closed.is_set()  # the download's now
    close_handovers(got.conns)  # the last descriptor of each: the peers see the close
    assert a.remote_closed.wait(10) and b.remote_closed.wait(10)
    assert any("metadata: " in line for line in logs)


def test_a_peer_sending_bad_metadata_is_banned_and_the_honest_one_serves(
        peers: ExitStack) -> None:
    bad = start(peers, BAD)
    # the honest peer answers only once the liar was asked: a piece of the liar's is
    # in the first assembly (else the fetch could end on the honest peer's alone,
    # the liar never caught)
    good = start(peers, hold=bad.requested)
    logs: list[str] = []
    got = fetch(Magnet(HASH, peers=(addr(bad), addr(good))), Options(), logs)
    close_handovers(got.conns)
    assert [(h.host, h.port) for h in got.conns] == [addr(good)]  # never the banned one
    assert got.info == INFO
    assert got.banned == {addr(bad)}  # for the download that follows: never dialled
    assert bad.asked and bad.remote_closed.wait(10)
    assert any("does not hash" in line for line in logs), logs


def test_a_lone_liar_is_banned_and_never_dialled_again(peers: ExitStack) -> None:
    bad = start(peers, BAD)
    with pytest.raises(Incomplete) as e:
        # nobody is left who could send the metadata: no need to wait for the stall
        run(Magnet(HASH, peers=(addr(bad),)), Options(stall_timeout=1000))
    msg = str(e.value)
    assert "no peer left" in msg and f"127.0.0.1:{bad.port}" in msg and "banned" in msg, msg
    # its first dial, and the fallback to the other kind it answered (--encryption
    # enabled); then banned: not dialled again
    assert bad.connections == len(dial_order(Options().encryption))


def test_an_oversized_metadata_size_is_ignored(peers: ExitStack) -> None:
    huge = start(peers, metadata_size=MAX_METADATA_SIZE + 1)
    good = start(peers)
    got = run(Magnet(HASH, peers=(addr(huge), addr(good))), Options())
    assert got == INFO
    assert huge.asked == [] and huge.remote_closed.wait(10)


def test_peers_from_a_tracker_and_from_opts(peers: ExitStack) -> None:
    a, b = start(peers), start(peers)
    with HTTPTestTracker(peers=[addr(a)]) as tracker:
        got = run(Magnet(HASH, trackers=((tracker.announce_url,),)),
                  Options(peers=(addr(b),)))
        first = tracker.wait_for_requests(1)[0]
    assert got == INFO
    assert (first.info_hash, first.left, first.event, first.port) == (
        HASH, MAGNET_LEFT, "started", 6881)
    assert a.asked or b.asked


def test_no_metadata_is_incomplete_after_the_stall_timeout_naming_the_peers(
        peers: ExitStack) -> None:
    silent = start(peers, answer=False)
    nothing = start(peers, offer=False)
    old = start(peers, bep10=False)
    closed = ("127.0.0.1", free_port())
    with pytest.raises(Incomplete) as e:
        run(Magnet(HASH, peers=(addr(silent), addr(nothing), addr(old), closed)),
            Options(stall_timeout=2))
    msg = str(e.value)
    assert "\n" not in msg and "no metadata piece for 2 s" in msg, msg
    for p in (silent, nothing, old):
        assert f"127.0.0.1:{p.port}" in msg, msg
    assert f"127.0.0.1:{closed[1]}" in msg and "connect failed" in msg, msg
    assert "offers no metadata" in msg and "BEP 10" in msg, msg
    assert silent.asked  # it was asked, and never answered
    assert silent.remote_closed.wait(10)


def test_no_peer_and_no_tracker_fails_at_once() -> None:
    with pytest.raises(Incomplete, match="no peer to ask"):
        run(Magnet(HASH), Options(stall_timeout=100))
    with pytest.raises(Incomplete, match="--no-trackers"):
        run(Magnet(HASH, trackers=(("http://127.0.0.1:1/announce",),)),
            Options(stall_timeout=100, use_trackers=False))


@pytest.mark.parametrize(("trackers", "dht", "before"), [
    ((), False, False),  # peers only: the fork waits for the first handshake
    (("http://tracker.invalid/announce",), False, True),  # a name to look up
    ((), True, True),  # the DHT's routers too
])
def test_the_workers_start_before_any_name_lookup_of_the_fetch(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any, trackers: tuple[str, ...], dht: bool,
        before: bool) -> None:
    # A name lookup leaves resolver threads behind, and a process with threads
    # cannot fork: with trackers or the DHT the workers start before the fetch.
    from torrent import coordinator, magnetfetch
    from torrent.dht import service
    from torrent.magnet import magnet_uri

    calls: list[str] = []

    async def fake_fetch(magnet: Magnet, opts: Options, **kw: Any) -> Fetched:
        calls.append("fetch")
        if kw["on_dialled"] is not None:
            kw["on_dialled"]()  # as the fetch would, at its first handshake
        return Fetched(INFO, frozenset())

    monkeypatch.setattr(magnetfetch, "fetch_metadata", fake_fetch)
    monkeypatch.setattr(service, "start_dht", lambda *a, **k: None)  # no node, no socket
    uri = magnet_uri(metainfo_from_info(INFO, Magnet(HASH)), trackers=list(trackers),
                     peers=[("127.0.0.1", 1)])
    opts = Options(use_trackers=True, dht=dht, workers=1,
                   dht_bootstrap=(("127.0.0.1", 1),) if dht else None)  # (the suite's env)
    coordinator._load_or_fetch_metainfo(uri, str(tmp_path), opts, lambda s: None,
                                        on_dialled=lambda: calls.append("workers"))
    assert calls == (["workers", "fetch"] if before else ["fetch", "workers"])


def test_an_offer_that_comes_after_the_metadata_keeps_its_connection() -> None:
    """A peer whose extension handshake arrives once another peer's metadata completed
    the fetch is a peer for the download: kept for the hand-over, not closed as one
    whose offer was "not taken"."""
    from torrent.magnetfetch import _Fetcher, _Link
    from torrent.net.peer import PeerConn
    from torrent.wire.metadata_conn import MetadataOffer

    async def main() -> tuple[bool, bool]:
        f = _Fetcher(Magnet(HASH), Options(), make_peer_id(), 6881, log=lambda s: None)
        first, late = ("127.0.0.1", 1), ("127.0.0.1", 2)
        assert f.fetch.add_peer(first, len(INFO))
        while (piece := f.fetch.next_request(first, f.started)) is not None:
            f.fetch.data(first, piece, len(INFO), INFO[piece * 16384 : (piece + 1) * 16384])
        assert f.fetch.done
        link = _Link(f, late, PeerConn(lambda c: None, late, True), f.started)
        f.links[late] = link
        f._handle(link, MetadataOffer(len(INFO), None), f.started)
        # an offer over the bound closes the connection all the same
        huge = ("127.0.0.1", 3)
        bad = f.links[huge] = _Link(f, huge, PeerConn(lambda c: None, huge, True), f.started)
        f._handle(bad, MetadataOffer(MAX_METADATA_SIZE + 1, None), f.started)
        return link.conn.closed, bad.conn.closed

    kept_closed, huge_closed = asyncio.run(main())
    assert not kept_closed
    assert huge_closed
