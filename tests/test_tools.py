"""What the CLI, the tools and the tests share: sizes and free ports."""

from __future__ import annotations

import socket

import pytest

from torrent.ports import free_port
from torrent.units import MAX_SIZE, parse_size, size_arg

# -- sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "n"), [
    ("1000", 1000), ("1K", 1024), ("64KiB", 64 << 10), ("64kb", 64 << 10), ("512M", 512 << 20),
    ("1G", 1 << 30), ("2T", 2 << 40), ("1.5M", 3 << 19), (" 16k ", 16 << 10), ("1e3", 1000),
    ("1.9", 1), (str(MAX_SIZE), MAX_SIZE),
])
def test_parse_size(text: str, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize(("text", "why"), [
    ("inf", "not a size"), ("-inf", "not a size"), ("nan", "not a size"), ("1e999", "not a size"),
    ("lots", "not a size"), ("", "not a size"), ("KiB", "not a size"), ("1P", "not a size"),
    ("0", "must be positive"), ("-5M", "must be positive"), ("0.5", "must be positive"),
    ("1e300", "too large"), (str(MAX_SIZE + 1), "too large"),
])
def test_parse_size_refuses(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as e:
        parse_size(text)
    assert repr(text) in str(e.value)  # the message quotes what was given


def test_size_arg_is_an_argparse_type() -> None:
    import argparse

    assert size_arg("4M") == 4 << 20
    with pytest.raises(argparse.ArgumentTypeError, match="not a size: 'inf'"):
        size_arg("inf")


# -- free ports -------------------------------------------------------------------------------


def test_free_port_can_be_bound() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_free_port_for_tcp_and_udp() -> None:
    port = free_port("127.0.0.1", udp=True)
    with socket.socket() as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        t.bind(("127.0.0.1", port))
        u.bind(("127.0.0.1", port))
