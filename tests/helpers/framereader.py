"""Bytes in, messages out, through the production framer (``framing.next_frame``).

For test peers and framing tests: the same framer ``PeerProtocol.next_event``
runs, over a ``ReceiveBuffer``, decoded through the message table.
"""

from __future__ import annotations

import socket

from torrent.wire.framing import Framer, ReceiveBuffer, next_frame
from torrent.wire.messages import KeepAlive, Message, decode


class FrameReader:
    """Split a peer wire stream into messages (every bound checked as in production)."""

    def __init__(self, num_pieces: int) -> None:
        self.framer = Framer(num_pieces)
        self.rb = ReceiveBuffer(self.framer.max_len + 4)

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held over to the next :meth:`feed`."""
        return self.rb.pending

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """The messages ``data`` completes (piece data: views valid until the next call)."""
        self.rb.feed(data)
        out: list[Message] = []
        rb = self.rb
        while (n := next_frame(rb, self.framer)) >= 0:
            start = rb.start
            rb.start += 4 + n
            out.append(KeepAlive() if n == 0 else
                       decode(rb.buf[start + 4], rb.view[start + 5 : start + 4 + n]))
        return out


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes from a blocking socket (its time-out bounds each read).

    Raises:
        EOFError: the peer closed the connection first.
    """
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return buf
