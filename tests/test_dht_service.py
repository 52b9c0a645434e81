"""The DHT's UDP adapter (torrent/dht/service.py) on loopback: honest use and hostile nodes.

Two of our own nodes talk to each other for the honest cases; the hostile
cases use :class:`helpers.dhtnode.HostileNode`, a small UDP node of the
test's that sends garbage, floods, lies and spoofed answers. Each case
checks that what the adapter keeps stays bounded and that it goes on
working (the download-level check, a real download next to a hostile node,
is the last test). Time-outs are driven with an injected clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from helpers.dhtnode import HostileNode, krpc_response
from helpers.noipv6 import refuse_ipv6
from helpers.payload import assert_clean_after, ft_create, run_cli, write_tree

from torrent import bencoding
from torrent.dht import krpc
from torrent.dht.lookup import MAX_PEERS
from torrent.dht.routing import BAD_AFTER_FAILURES
from torrent.dht.service import (
    MAX_PENDING,
    QUERY_TIMEOUT,
    STATE_FILE,
    Dht,
    default_state_dir,
)
from torrent.errors import RemoteProtocolError
from torrent.options import NO_DHT_ENV, Options, dht_wanted
from torrent.wire import peer as wp
from torrent.wire.handshake import (
    DHT_BIT,
    EXTENSION_BIT,
    FAST_BIT,
    encode_handshake,
    reserved_bits,
)
from torrent.wire.messages import Port, encode

pytestmark = pytest.mark.timeout(120)

#: Every in-process scenario ends within this (asyncio.wait_for).
SCENARIO_TIMEOUT = 30.0
INFO_HASH = bytes(range(20))


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, SCENARIO_TIMEOUT))


async def started(tmp: Path, boot: list[tuple[str, int]], name: str = "a",
                  clock: Any = None) -> tuple[Dht, list[str]]:
    logs: list[str] = []
    kw = {"clock": clock} if clock is not None else {}
    d = Dht(bind="127.0.0.1", bootstrap=boot, state_dir=str(tmp / name), log=logs.append, **kw)
    d.open()
    await d.attach()
    return d, logs


async def stopped(*nodes: Dht) -> None:
    for d in nodes:
        await d.detach()
        d.close()


async def until(cond: Any, what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, f"not {what} after {timeout:g} s"
        await asyncio.sleep(0.01)


def lookup_peers(lookups: list[Any]) -> list[tuple[str, int]]:
    return [p for lk in lookups for p in lk.peers]


# -- honest -------------------------------------------------------------------------------------
def test_get_peers_and_announce_between_two_of_our_nodes(tmp_path: Path) -> None:
    async def scenario() -> None:
        b, _ = await started(tmp_path, [], "b")
        b.servers[4].store.add(INFO_HASH, ("127.0.0.1", 7777), b.clock())
        a, _ = await started(tmp_path, [("127.0.0.1", b.port)], "a")
        found: list[tuple[str, int]] = []
        lookups = await a.get_peers(INFO_HASH, found.extend)
        assert found == [("127.0.0.1", 7777)]
        assert a.first_peer_at is not None
        assert b.tables[4].get(a.own_id) is not None  # it queried b: b knows it
        assert a.tables[4].get(b.own_id) is not None  # b answered: a knows it
        # announce: a's UDP port is not a TCP port it was given, so no implied_port
        assert await a.announce(lookups, 6000) == 1
        assert ("127.0.0.1", 6000) in b.servers[4].store.get(INFO_HASH, b.clock(), 4, 10)
        await stopped(a, b)

    run(scenario())


def test_implied_port_when_udp_and_tcp_ports_match(tmp_path: Path) -> None:
    async def scenario() -> None:
        b, _ = await started(tmp_path, [], "b")
        a = Dht(bind="127.0.0.1", port=0, bootstrap=[("127.0.0.1", b.port)])
        a.open()
        a.want_port = a.port  # as when the run's TCP port was free for UDP too
        await a.attach()
        assert a.implied_port
        lookups = await a.get_peers(INFO_HASH)
        assert await a.announce(lookups, a.port) == 1
        # stored under the query's source port (BEP 5 implied_port)
        assert b.servers[4].store.get(INFO_HASH, b.clock(), 4, 10) == [("127.0.0.1", a.port)]
        await stopped(a, b)

    run(scenario())


def test_one_node_across_two_loops(tmp_path: Path) -> None:
    """The metadata fetch and the download run on two loops: one node, one table, one port."""
    b_loop = asyncio.new_event_loop()
    try:
        async def serve_b() -> Dht:
            d, _ = await started(tmp_path, [], "b")
            return d

        b = b_loop.run_until_complete(serve_b())
        a = Dht(bind="127.0.0.1", bootstrap=[("127.0.0.1", b.port)], state_dir=None)
        a.open()
        port = a.port

        async def first() -> None:
            await a.attach()
            a.tables[4].heard_from(b"\x01" * 20, "127.0.0.1", 9, a.clock(), response=True)
            await a.detach()

        asyncio.run(first())

        async def second() -> int:
            await a.attach()
            n = len(a.tables[4])
            await a.detach()
            return n

        assert asyncio.run(second()) == 1
        assert a.port == port
        a.close()
        b_loop.run_until_complete(stopped(b))
    finally:
        b_loop.close()


# -- state ----------------------------------------------------------------------------------------
def test_state_is_saved_and_loaded(tmp_path: Path) -> None:
    async def scenario() -> tuple[bytes, int]:
        b, _ = await started(tmp_path, [], "b")
        a, _ = await started(tmp_path, [("127.0.0.1", b.port)], "a")
        await a.get_peers(INFO_HASH)
        await stopped(a, b)
        return a.own_id, b.port

    own, b_port = run(scenario())
    assert (tmp_path / "a" / STATE_FILE).exists()
    again = Dht(bind="127.0.0.1", bootstrap=[], state_dir=str(tmp_path / "a"))
    again.open()
    try:
        assert again.own_id == own  # the node id is kept
        assert [(n.ip, n.port) for n in again.tables[4].nodes()] == [("127.0.0.1", b_port)]
    finally:
        again.close()


@pytest.mark.parametrize("content", [b"garbage", b"d2:id3:abce", b"", os.urandom(3000),
                                     b"d2:id20:" + bytes(20) + b"5:nodes5:12345e"])
def test_a_corrupt_state_file_is_one_warning(tmp_path: Path, content: bytes) -> None:
    (tmp_path / STATE_FILE).write_bytes(content)
    logs: list[str] = []
    d = Dht(bind="127.0.0.1", state_dir=str(tmp_path), log=logs.append)
    d.open()
    try:
        assert len(d.tables[4]) == 0
        assert len(logs) == 1 and "corrupt" in logs[0] and "\n" not in logs[0], logs
    finally:
        d.close()
    # the next save replaces it with a readable one
    again = Dht(bind="127.0.0.1", state_dir=str(tmp_path), log=logs.append)
    again.open()
    again.close()
    assert len(logs) == 1


def test_default_state_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_state_dir() == str(tmp_path / "fasttorrent")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_dir() == str(tmp_path / "home" / ".cache" / "fasttorrent")


def test_when_the_dht_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NO_DHT_ENV, raising=False)
    assert dht_wanted(Options())
    assert not dht_wanted(Options(), private=True)  # BEP 27
    assert not dht_wanted(Options(dht=False))
    monkeypatch.setenv(NO_DHT_ENV, "1")  # the test suite's guard
    assert not dht_wanted(Options())
    assert dht_wanted(Options(dht_bootstrap=(("127.0.0.1", 1),)))
    assert not dht_wanted(Options(dht_bootstrap=(("127.0.0.1", 1),)), private=True)


# -- hostile --------------------------------------------------------------------------------------
def test_malformed_and_oversized_datagrams_are_dropped(tmp_path: Path) -> None:
    with HostileNode() as h:
        async def scenario() -> None:
            a, _ = await started(tmp_path, [])
            target = ("127.0.0.1", a.port)
            bad = [b"x", b"l1:ae", b"d1:t2:aa1:y1:qe",  # a query without q/a: answered 203
                   b"d1:t2:aa1:y1:r1:rd2:id3:abcee",  # a response with a short id
                   b"d1:y1:qe" + b"x" * 60_000]  # over MAX_DATAGRAM
            for data in bad:
                h.send(data, target)
            await until(lambda: a.stats["malformed"] == len(bad), "all counted")
            # it still answers a valid query
            h.send(krpc.encode(krpc.Ping(b"pp", b"\x07" * 20)), target)
            await until(lambda: len(h.received) == 2, "a ping answer and an error 203")
            kinds = sorted(m[b"y"] for m, _ in h.received)
            assert kinds == [b"e", b"r"], h.received
            await stopped(a)

        run(scenario())


#: Pings sent after a flood until one is answered (the kernel may drop any datagram
#: of a burst that overflows the socket's buffer, the ping included).
PING_TRIES = 10


def test_a_flood_of_answers_with_unknown_ids_is_ignored(tmp_path: Path) -> None:
    with HostileNode() as h:
        async def scenario() -> None:
            b, _ = await started(tmp_path, [], "b")
            b.servers[4].store.add(INFO_HASH, ("127.0.0.1", 7777), b.clock())
            a, _ = await started(tmp_path, [("127.0.0.1", b.port)], "a")
            flood = 3000
            for i in range(flood):
                h.send(krpc_response(i.to_bytes(4, "big"), os.urandom(20),
                                     values=[b"\x7f\x00\x00\x01\x1f\x90"]), ("127.0.0.1", a.port))
                if i % 50 == 49:
                    await asyncio.sleep(0.001)  # let the loop read: a burst would only be dropped
            # then a ping: once one is answered, every flood datagram that arrived was
            # read before it. The kernel may drop some of a burst, the ping too: it is
            # sent again until answered (bounded by PING_TRIES)
            for _ in range(PING_TRIES):
                h.send(krpc.encode(krpc.Ping(b"end", b"\x07" * 20)), ("127.0.0.1", a.port))
                with contextlib.suppress(AssertionError):
                    await until(lambda: h.received, "the ping answered", timeout=1.0)
                if h.received:
                    break
            assert h.received, f"no ping answered in {PING_TRIES} tries"
            pings = a.stats["queries_answered"] + a.servers[4].dropped
            assert 1 <= pings <= PING_TRIES and a.stats["malformed"] == 0, a.stats
            # everything else it read was a flood answer, and each was refused
            assert a.stats["unexpected"] == a.stats["received"] - pings > flood // 10, a.stats
            assert not a._pending
            # only the pinger (a query) entered the table; none of the flood's ids did
            assert [n.id for n in a.tables[4].nodes()] == [b"\x07" * 20]
            assert a.stats["peers_found"] == 0
            # and it still works
            found: list[tuple[str, int]] = []
            await a.get_peers(INFO_HASH, found.extend)
            assert found == [("127.0.0.1", 7777)]
            await stopped(a, b)

        run(scenario())


def test_a_spoofed_answer_from_another_address_is_ignored(tmp_path: Path) -> None:
    real_id = b"\x42" * 20
    with HostileNode() as target, HostileNode() as spoofer:
        async def scenario() -> None:
            a, _ = await started(tmp_path, [])
            assert a.ping(target.addr)
            await asyncio.to_thread(target.wait_for, lambda: len(target.queries(b"ping")) == 1,
                                    5, "pinged")
            (query, src), = target.queries(b"ping")
            tid = query[b"t"]
            # the spoofer knows the transaction id but answers from its own address
            spoofer.send(krpc_response(tid, b"\x66" * 20), src)
            await until(lambda: a.stats["unexpected"] == 1, "the spoof counted")
            assert tid in a._pending and a.tables[4].get(b"\x66" * 20) is None
            target.send(krpc_response(tid, real_id), src)
            await until(lambda: tid not in a._pending, "the real answer taken")
            assert a.tables[4].get(real_id) is not None
            # a repeat of an answered id is unknown now
            target.send(krpc_response(tid, real_id), src)
            await until(lambda: a.stats["unexpected"] == 2, "the repeat counted")
            await stopped(a)

        run(scenario())


def test_get_peers_answers_with_too_many_values_are_cut(tmp_path: Path) -> None:
    peer = bytes([127, 0, 0, 2])
    many = [peer + (1000 + i).to_bytes(2, "big") for i in range(150)]  # fits a datagram
    huge = [peer + (i + 1).to_bytes(2, "big") for i in range(5000)]  # 40 KB: over MAX_DATAGRAM
    with HostileNode() as far:
        far_id = b"\x80" + b"\x00" * 19

        def answer_far(msg: Any, raw: bytes, addr: tuple[str, int]) -> list[bytes]:
            if isinstance(msg, dict) and msg.get(b"y") == b"q":
                return [krpc_response(msg[b"t"], far_id, values=huge, token=b"tk")]
            return []

        far.answer = answer_far
        near_id = b"\x01" * 20

        def answer_near(msg: Any, raw: bytes, addr: tuple[str, int]) -> list[bytes]:
            if isinstance(msg, dict) and msg.get(b"y") == b"q":
                node = far_id + bytes([127, 0, 0, 1]) + far.port.to_bytes(2, "big")
                return [krpc_response(msg[b"t"], near_id, values=many, nodes=node, token=b"t")]
            return []

        with HostileNode(answer_near) as near:
            async def scenario() -> None:
                a, _ = await started(tmp_path, [near.addr])
                found: list[tuple[str, int]] = []
                lookups = await a.get_peers(INFO_HASH, found.extend)
                assert len(found) == krpc.MAX_VALUES  # the first 100 of the 150
                assert len(lookup_peers(lookups)) <= MAX_PEERS
                assert a.stats["malformed"] >= 1  # the 40 KB answer, refused unread
                assert all(p[1] >= 1000 for p in found)
                await stopped(a)

            run(scenario())


def test_nodes_claiming_our_own_id_are_never_kept_or_followed(tmp_path: Path) -> None:
    with HostileNode() as decoy:
        async def scenario() -> None:
            a, _ = await started(tmp_path, [])
            own = a.own_id

            def liar(msg: Any, raw: bytes, addr: tuple[str, int]) -> list[bytes]:
                if not isinstance(msg, dict) or msg.get(b"y") != b"q":
                    return []
                # it claims our id, and lists a node with our id at the decoy's address
                node = own + bytes([127, 0, 0, 1]) + decoy.port.to_bytes(2, "big")
                return [krpc_response(msg[b"t"], own, nodes=node, token=b"t",
                                      values=[bytes([127, 0, 0, 3, 0, 80])])]

            with HostileNode(liar) as h:
                a.bootstrap = (h.addr,)
                found: list[tuple[str, int]] = []
                await a.get_peers(INFO_HASH, found.extend)
                assert found == []  # an answer from "us" is a failed query: nothing taken
                assert a.tables[4].get(own) is None and len(a.tables[4]) == 0
                assert decoy.queries() == []  # the node listed under our id is never asked
                # a query claiming our id is answered but does not enter the table
                h.send(krpc.encode(krpc.Ping(b"q1", own)), ("127.0.0.1", a.port))
                await until(lambda: a.stats["queries_answered"] == 1, "answered")
                assert len(a.tables[4]) == 0
            await stopped(a)

        run(scenario())


def test_unanswered_queries_time_out_and_count_as_failures(tmp_path: Path) -> None:
    now = [1000.0]
    with HostileNode() as silent:
        async def scenario() -> None:
            a, _ = await started(tmp_path, [], clock=lambda: now[0])
            node_id = b"\x33" * 20
            a.tables[4].heard_from(node_id, *silent.addr, now[0], response=True)
            for _ in range(BAD_AFTER_FAILURES):
                assert a.ping(silent.addr, node_id)
                now[0] += QUERY_TIMEOUT
                a.expire(now[0])
            assert not a._pending
            assert a.tables[4].get(node_id) is not None
            assert a.tables[4].closest(node_id) == []  # bad now: never handed out
            await stopped(a)

        run(scenario())


def test_queries_in_flight_are_bounded(tmp_path: Path) -> None:
    with HostileNode() as silent:
        async def scenario() -> None:
            a, _ = await started(tmp_path, [])
            sent = sum(a.ping(("127.0.0.1", silent.port)) for _ in range(MAX_PENDING + 50))
            assert sent == MAX_PENDING and len(a._pending) == MAX_PENDING
            await stopped(a)

        run(scenario())


def test_a_download_goes_on_next_to_a_hostile_dht_node(tmp_path: Path) -> None:
    """A real download whose only DHT node floods, lies and sends garbage: it completes."""
    own_ids: list[bytes] = []

    def everything(msg: Any, raw: bytes, addr: tuple[str, int]) -> list[bytes]:
        if not isinstance(msg, dict) or msg.get(b"y") != b"q":
            return []
        tid, sender = msg[b"t"], msg[b"a"][b"id"]
        own_ids.append(sender)
        junk = [os.urandom(n) for n in (1, 40, 1400)]
        flood = [krpc_response(os.urandom(4), os.urandom(20)) for _ in range(200)]
        lie = krpc_response(tid, sender,  # our own id back, nodes with our id, fake peers
                            nodes=sender + bytes([127, 0, 0, 1, 0, 9]),
                            values=[bytes([127, 0, 0, 9]) + i.to_bytes(2, "big")
                                    for i in range(1, 151)], token=b"t")
        return [*junk, *flood, lie, b"d1:y1:re" + b"z" * 5000]

    src = tmp_path / "src"
    write_tree(src, {"d.bin": 1024 * 1024 + 7}, seed=9)
    torrent = ft_create(src / "d.bin", tmp_path / "t.torrent", "64K")
    from helpers.clients import assert_same_payload, fasttorrent_seed

    with HostileNode(everything) as h, fasttorrent_seed(torrent, src) as seed:
        out = tmp_path / "out"
        res = run_cli(["download", str(torrent), "-o", str(out), "--workers", "1",
                       "--no-trackers", "--bind", "127.0.0.1", "--peer", seed.addr,
                       "--dht-bootstrap", f"127.0.0.1:{h.port}",
                       "--state-dir", str(tmp_path / "state"), "--json"], timeout=60)
        assert res.returncode == 0, res.describe()
        assert "Traceback" not in res.stderr
        assert_clean_after(res)
    assert_same_payload(torrent, src, out)
    dht = json.loads(res.stdout.splitlines()[-1])["dht"]
    assert h.queries(b"get_peers"), "the download asked the hostile node"
    assert dht["malformed"] >= 1 and dht["unexpected"] >= 1, dht
    assert dht["nodes"] == {"4": 0}, dht  # nothing it said got into the table


# -- BEP 5 port message ------------------------------------------------------------------------
def _protocol(reserved: bytes) -> wp.PeerProtocol:
    return wp.PeerProtocol(b"\x11" * 20, b"-FT0000-" + b"0" * 12, 8, 16384, 8 * 16384,
                           we_initiated=True, now=0.0, reserved=reserved)


def _events(p: wp.PeerProtocol, data: bytes) -> list[wp.Event]:
    return p.receive_data(data)


DHT_OURS = reserved_bits(EXTENSION_BIT, FAST_BIT, DHT_BIT)
NO_DHT = reserved_bits(EXTENSION_BIT, FAST_BIT)


@pytest.mark.parametrize(("ours", "theirs", "expected"), [
    (DHT_OURS, reserved_bits(DHT_BIT), [wp.PortReceived(6881)]),
    (NO_DHT, reserved_bits(DHT_BIT), []),  # we run no DHT: ignored
    (DHT_OURS, bytes(8), []),  # it never said it runs one: ignored
])
def test_port_message_is_an_event_only_when_both_set_the_dht_bit(
        ours: bytes, theirs: bytes, expected: list[wp.Event]) -> None:
    p = _protocol(ours)
    p.handshake()
    evs = _events(p, encode_handshake(b"\x11" * 20, b"-LT0000-" + b"1" * 12, theirs)
                  + encode(Port(6881)))
    assert [e for e in evs if isinstance(e, wp.PortReceived)] == expected


def test_port_zero_is_ignored_and_a_bad_length_drops_the_peer() -> None:
    p = _protocol(DHT_OURS)
    p.handshake()
    evs = _events(p, encode_handshake(b"\x11" * 20, b"-LT0000-" + b"1" * 12,
                                      reserved_bits(DHT_BIT)) + encode(Port(0)))
    assert not [e for e in evs if isinstance(e, wp.PortReceived)]
    with pytest.raises(RemoteProtocolError):
        _events(p, b"\x00\x00\x00\x05\x09\x00\x01\x02\x03")  # a 4-byte port


def test_send_port() -> None:
    p = _protocol(DHT_OURS)
    p.handshake()
    _events(p, encode_handshake(b"\x11" * 20, b"-LT0000-" + b"1" * 12, reserved_bits(DHT_BIT)))
    assert p.send_port(6881) == encode(Port(6881)) == b"\x00\x00\x00\x03\x09\x1a\xe1"
    with pytest.raises(Exception, match="out of range"):
        p.send_port(0)


def test_state_bytes_round_trip(tmp_path: Path) -> None:
    d = Dht(bind="127.0.0.1", state_dir=str(tmp_path))
    d.open()
    try:
        d.tables[4].heard_from(b"\x05" * 20, "127.0.0.1", 4000, d.clock(), response=True)
        saved = bencoding.decode(d.state_bytes())
        assert saved[b"id"] == d.own_id
        assert saved[b"nodes"] == b"\x05" * 20 + bytes([127, 0, 0, 1]) + (4000).to_bytes(2, "big")
    finally:
        d.close()


# -- options and flags ---------------------------------------------------------------------------
def test_cli_dht_flags_become_options() -> None:
    from torrent.cli import _dht_options, build_parser

    for cmd in (["download", "x.torrent", "-o", "d"], ["seed", "x.torrent", "d"]):
        a = build_parser().parse_args([*cmd, "--dht-bootstrap", "127.0.0.1:7",
                                       "--dht-bootstrap", "[::1]:8,h:9", "--state-dir", "s"])
        o = Options(**_dht_options(a))
        assert o.dht and o.state_dir == "s"
        assert o.dht_bootstrap == (("127.0.0.1", 7), ("::1", 8), ("h", 9))
        a = build_parser().parse_args([*cmd, "--no-dht"])
        o = Options(**_dht_options(a))
        assert not o.dht and o.dht_bootstrap is None and o.state_dir is None


@pytest.mark.parametrize("bad", ["nohost", "h:0", "h:x", "h:70000"])
def test_a_bad_bootstrap_node_is_a_usage_error(tmp_path: Path, bad: str) -> None:
    res = run_cli(["download", str(tmp_path / "x.torrent"), "-o", str(tmp_path / "o"),
                   "--dht-bootstrap", bad], timeout=30)
    assert res.returncode == 2, res.describe()
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--dht-bootstrap" in lines[0], lines


def test_options_check_bootstrap_ports() -> None:
    from torrent.errors import UsageError

    with pytest.raises(UsageError, match="bootstrap"):
        Options(dht_bootstrap=(("h", 0),))


def test_routing_table_id_at() -> None:
    from torrent.dht.routing import RoutingTable

    t = RoutingTable(b"\x00" * 20, 0.0, enforce_bep42=False)
    t.heard_from(b"\x09" * 20, "127.0.0.1", 5, 0.0, response=True)
    assert t.id_at("127.0.0.1", 5) == b"\x09" * 20
    assert t.id_at("127.0.0.1", 6) is None


# -- IPv6 (BEP 32) -------------------------------------------------------------------------------
def _has_ipv6_loopback() -> bool:

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_ipv6_nodes_talk_over_loopback(tmp_path: Path) -> None:
    if not _has_ipv6_loopback():
        pytest.skip("no ::1 on this machine")

    async def scenario() -> None:
        b = Dht(bind="::1", bootstrap=[], state_dir=str(tmp_path / "b"))
        b.open()
        await b.attach()
        assert list(b.tables) == [6]
        b.servers[6].store.add(INFO_HASH, ("::1", 7777), b.clock())
        b.tables[6].heard_from(b"\x0a" * 20, "::1", 9, b.clock(), response=True)
        a = Dht(bind="::1", bootstrap=[("::1", b.port)], state_dir=str(tmp_path / "a"))
        a.open()
        await a.attach()
        found: list[tuple[str, int]] = []
        await a.get_peers(INFO_HASH, found.extend)
        assert found == [("::1", 7777)]
        assert a.tables[6].get(b.own_id) is not None
        await stopped(a, b)
        # saved as nodes6
        saved = bencoding.decode((tmp_path / "a" / STATE_FILE).read_bytes())
        assert b"nodes6" in saved and len(saved[b"nodes6"]) % 38 == 0 and saved[b"nodes6"]

    run(scenario())


def test_dual_stack_sends_want_and_serves_both_families(tmp_path: Path) -> None:
    if not _has_ipv6_loopback():
        pytest.skip("no ::1 on this machine")

    def answer(msg: Any, raw: bytes, addr: tuple[str, int]) -> list[bytes]:
        if isinstance(msg, dict) and msg.get(b"y") == b"q":
            return [krpc_response(msg[b"t"], b"\x0b" * 20, token=b"t")]
        return []

    with HostileNode(answer) as h:
        async def scenario() -> None:
            a = Dht(bind="::", bootstrap=[h.addr], state_dir=None)
            a.open()
            await a.attach()
            assert sorted(a.tables) == [4, 6] and a.port
            await a.get_peers(INFO_HASH)
            (q, _), = h.queries(b"get_peers")
            assert q[b"a"][b"want"] == [b"n4", b"n6"]  # BEP 32
            await stopped(a)

        run(scenario())


def test_the_default_bind_runs_both_families_and_ipv4_alone_without_ipv6(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not _has_ipv6_loopback():
        pytest.skip("no ::1 on this machine")
    both = Dht(bind="", bootstrap=[], state_dir=None)  # --bind's default: every address
    both.open()
    try:
        assert both.families == (4, 6) and sorted(both.tables) == [4, 6]
        assert {s.getsockname()[0] for s in both._socks.values()} == {"0.0.0.0", "::"}
        assert {s.getsockname()[1] for s in both._socks.values()} == {both.port}
    finally:
        both.close()

    refuse_ipv6(monkeypatch)
    v4 = Dht(bind="", bootstrap=[], state_dir=None)
    v4.open()
    try:
        assert v4.families == (4,) and sorted(v4.tables) == [4] and v4.port
    finally:
        v4.close()
    # an IPv6 address asked for explicitly must be had
    with pytest.raises(OSError):
        Dht(bind="::1", bootstrap=[], state_dir=None).open()
