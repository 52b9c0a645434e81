"""A small hostile DHT node on 127.0.0.1 for the DHT's hostile-input tests.

:class:`HostileNode` is one UDP socket served by a thread. Every datagram
it receives is recorded (decoded when it is bencode) and handed to the
test's ``answer`` function, which returns the datagrams to send back: a
valid answer, garbage, a flood, a lie. :meth:`HostileNode.send` sends
anything unprompted. The thread stops when the node is closed (a context
manager); every wait is bounded.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from torrent import bencoding

__all__ = ["Answer", "HostileNode", "krpc_response"]

#: (the decoded datagram or None, the raw bytes, the sender) -> datagrams to send back.
Answer = Callable[[Any, bytes, tuple[str, int]], list[bytes]]
#: How often the thread looks at its stop flag.
POLL = 0.05


def krpc_response(tid: bytes, sender: bytes, **r: Any) -> bytes:
    """A KRPC response (``r`` holds the given keys as bytes keys)."""
    body = {b"id": sender, **{k.encode(): v for k, v in r.items()}}
    return bencoding.encode({b"t": tid, b"y": b"r", b"r": body})


class HostileNode:
    """A UDP socket on 127.0.0.1 that answers as ``answer`` says (nothing by default)."""

    def __init__(self, answer: Answer | None = None) -> None:
        self.answer: Answer = answer or (lambda msg, raw, addr: [])
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(POLL)
        self.port = int(self.sock.getsockname()[1])
        self.addr = ("127.0.0.1", self.port)
        self.received: list[tuple[Any, tuple[str, int]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                msg = bencoding.decode(raw)
            except bencoding.BencodeError:
                msg = None
            with self._lock:
                self.received.append((msg, addr))
            for data in self.answer(msg, raw, addr):
                self.send(data, addr)

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.sock.sendto(data, addr)
        except OSError:
            pass  # a datagram too large for UDP: it never leaves, as on a real network

    def queries(self, method: bytes | None = None,
                ) -> list[tuple[dict[bytes, Any], tuple[str, int]]]:
        """The queries received (of ``method``, if given)."""
        with self._lock:
            return [(m, a) for m, a in self.received
                    if isinstance(m, dict) and m.get(b"y") == b"q"
                    and (method is None or m.get(b"q") == method)]

    def wait_for(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"hostile node: not {what} after {timeout:g} s")
            time.sleep(POLL)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
