"""Both address families in the runtime: the listening sockets, free ports, ``--bind``,
the coordinator's peer table and ``_is_us``, bans, and accepted peers' addresses.

Sockets are bound to loopback only: the any-addresses of the default
``--bind`` are replaced by 127.0.0.1 and ::1 (``ports.ANY_HOSTS``), the
code path being the same.  The IPv6 tests need ::1 (failed, not skipped,
under CI=true).
"""

from __future__ import annotations

import socket
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import IN_CI
from helpers.noipv6 import refuse_ipv6

from torrent import ports
from torrent.coordinator import Coordinator, parse_peer
from torrent.errors import UsageError
from torrent.net.peer import PeerConn
from torrent.options import Options
from torrent.peeraddr import ban_key

LOOPBACKS = ("127.0.0.1", "::1")


@pytest.fixture(autouse=True)
def _ipv6_loopback() -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        if IN_CI:
            pytest.fail("the CI machine must have ::1")
        pytest.skip("no ::1 here")


def _close(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def test_the_default_listens_on_both_families_at_one_port(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "ANY_HOSTS", LOOPBACKS)
    port = ports.free_port("::1")
    a = ports.listen_sockets("", port, 16)
    b = ports.listen_sockets("", port, 16)  # a second worker: SO_REUSEPORT
    try:
        assert [s.family for s in a] == [socket.AF_INET, socket.AF_INET6]
        assert [s.getsockname()[:2] for s in a] == [("127.0.0.1", port), ("::1", port)]
        assert a[1].getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        for host in LOOPBACKS:  # both answer
            with socket.create_connection((host, port), timeout=5):
                pass
    finally:
        _close(a + b)


def test_one_address_one_socket() -> None:
    port = ports.free_port("::1")
    socks = ports.listen_sockets("::1", port, 16)
    try:
        assert [s.getsockname()[:2] for s in socks] == [("::1", port)]
        with pytest.raises(ConnectionRefusedError), \
                socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        _close(socks)


def test_an_address_not_ours_is_a_one_line_usage_error() -> None:
    with pytest.raises(UsageError, match=r"^cannot listen on \[2001:db8::77\]:\d+: "):
        ports.listen_sockets("2001:db8::77", ports.free_port("::1"), 16)
    with pytest.raises(UsageError, match=r"^cannot listen on 192\.0\.2\.77:\d+: "):
        ports.listen_sockets("192.0.2.77", ports.free_port(), 16)


def test_a_port_taken_by_another_program(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "ANY_HOSTS", LOOPBACKS)
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as other:  # no SO_REUSEPORT
        other.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        other.bind(("::1", 0))
        other.listen(1)
        port = other.getsockname()[1]
        with pytest.raises(UsageError, match=rf"cannot listen on \[::1\]:{port}"):
            ports.listen_sockets("", port, 16)


def test_without_ipv6_the_default_listens_on_ipv4_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel without IPv6 (``ipv6.disable=1``) refuses AF_INET6 sockets outright."""
    monkeypatch.setattr(ports, "ANY_HOSTS", LOOPBACKS)
    refuse_ipv6(monkeypatch)  # ports.socket is the socket module: the same patch
    port = ports.free_port("")  # the dual-stack probe falls back to IPv4
    socks = ports.listen_sockets("", port, 16)
    try:
        assert [s.getsockname() for s in socks] == [("127.0.0.1", port)]
    finally:
        _close(socks)
    with pytest.raises(UsageError, match=r"cannot listen on ::1: "):  # asked for: an error
        ports.listen_sockets("::1", port, 16)


def test_free_port_of_both_families_is_free_on_both() -> None:
    port = ports.free_port("", udp=True)
    for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(fam, kind) as s:
                s.bind((host, port))


def test_bind_option() -> None:
    assert Options().bind == ""
    assert Options(bind="::FFFF:127.0.0.1").bind == "127.0.0.1"
    assert Options(bind="[::1]").bind == "::1"
    assert Options(bind="2001:DB8::1").bind == "2001:db8::1"
    for bad in ("localhost", "::1::", "1.2.3.4.5", "[::1"):
        with pytest.raises(UsageError, match="bind must be an IPv4 or IPv6 address"):
            Options(bind=bad)


def test_parse_peer() -> None:
    assert parse_peer(" [::1]:6881 ") == ("::1", 6881)
    assert parse_peer("[::ffff:10.0.0.1]:1") == ("10.0.0.1", 1)
    with pytest.raises(UsageError, match=r"^--peer '::1:6881': an IPv6 address must be in "
                                         r"brackets, as in \[::1\]:PORT"):
        parse_peer("::1:6881")


def _coordinator(bind: str = "::1") -> Coordinator:
    meta = SimpleNamespace(num_pieces=8, piece_length=16384, total_size=8 * 16384,
                           info_hash=b"\1" * 20, info_hash_hex="01" * 20, trackers=(),
                           private=False)
    c = Coordinator(meta, "/nonexistent", Options(workers=1, bind=bind, use_trackers=False))
    c.port = 6881
    return c


def test_one_peer_one_record_whatever_the_spelling() -> None:
    c = _coordinator()
    c.add_peers([("::ffff:10.0.0.1", 5), ("10.0.0.1", 5), ("2001:DB8:0::1", 5),
                 ("2001:db8::1", 5), ("2001:db8::1", 6), ("::", 5), ("ff02::1", 5),
                 ("2001:db8::2", 0), ("not a host", 5)], "tracker")
    assert list(c.peers) == [("10.0.0.1", 5), ("2001:db8::1", 5), ("2001:db8::1", 6)]
    assert all((r.host, r.port) == k for k, r in c.peers.items())


def test_we_are_not_our_own_peer_in_either_family() -> None:
    c = _coordinator()
    us = [("::1", 6881), ("::ffff:127.0.0.1", 6881), ("127.0.0.1", 6881), ("0:0::1", 6881)]
    c.add_peers(us, "pex")
    assert c.peers == {}
    c.add_peers([("::1", 6882), ("2001:db8::1", 6881)], "pex")  # another port; not ours
    assert set(c.peers) == {("::1", 6882), ("2001:db8::1", 6881)}


def test_bans_cover_the_host_in_its_canonical_form() -> None:
    assert ban_key("::1", 5) == "[::1]:5"  # loopback: the port tells peers apart
    assert ban_key("::ffff:127.0.0.1", 5) == ban_key("127.0.0.1", 5) == "127.0.0.1:5"
    assert ban_key("2001:db8::1", 5) == ban_key("2001:DB8::1", 6) == "2001:db8::1"
    assert ban_key("::ffff:10.0.0.1", 5) == ban_key("10.0.0.1", 6) == "10.0.0.1"


def test_an_accepted_peer_address_is_canonical() -> None:
    """An IPv4 peer on a dual-stack socket (another program's, or a kernel that maps
    IPv4 into an IPv6 listener) reads as the IPv4 address."""
    seen: list[tuple[str, int]] = []
    conn = PeerConn(lambda c: seen.append(c.addr))  # type: ignore[arg-type,func-returns-value]

    class Transport:
        def get_extra_info(self, name: str) -> Any:
            return ("::ffff:10.0.0.9", 4321, 0, 0) if name == "peername" else None

        def set_write_buffer_limits(self, **kw: int) -> None:
            pass

        def abort(self) -> None:
            pass

    conn.connection_made(Transport())
    assert seen == [("10.0.0.9", 4321)] and conn.refused
