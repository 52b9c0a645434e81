"""The BitTorrent peer wire protocol (BEP 3), sans-IO: bytes and ``now`` in, events out.

- :mod:`.messages`: one class per message, the table of ids with their
  bounds, ``frame``/``encode``/``decode``.
- :mod:`.framing`: the receive buffer a connection reads into, and the
  framer that checks every length against its bound before buffering.
- :mod:`.handshake`: the 68-byte handshake, its reserved bits, and peer ids.
- :mod:`.extension`: BEP 10 extension handshake and the bodies of BEP 9
  ``ut_metadata`` and BEP 11 ``ut_pex`` messages.
- :mod:`.fastext`: BEP 6's allowed-fast set and the Fast extension's bounds.
- :mod:`.mse`: the MSE/PE (message stream encryption) handshake, both sides,
  before the BitTorrent handshake; :mod:`.rc4` its cipher, decrypting in place.
- :mod:`.peer`: :class:`PeerProtocol`, the per-connection state machine and
  the one receive path (``next_event``), block fast path included.
"""

from __future__ import annotations

from .framing import ReceiveBuffer
from .handshake import (
    DHT_BIT,
    EXTENSION_BIT,
    FAST_BIT,
    HANDSHAKE_LENGTH,
    Handshake,
    encode_handshake,
    make_peer_id,
    parse_handshake,
)
from .messages import (
    BLOCK_SIZE,
    MAX_REQUEST_LENGTH,
    MESSAGE_TYPES,
    LocalProtocolError,
    Message,
    decode,
    encode,
    frame,
    max_message_length,
)
from .peer import (
    IDLE_TIMEOUT,
    KEEPALIVE_INTERVAL,
    MAX_OUTSTANDING_REQUESTS,
    MAX_PEER_REQUESTS,
    BitfieldReceived,
    BlockReceived,
    BlocksTaken,
    CancelReceived,
    Choked,
    ConnectionClosed,
    Event,
    HandshakeReceived,
    HaveReceived,
    PeerInterested,
    PeerNotInterested,
    PeerProtocol,
    PeerState,
    RequestReceived,
    RequestsCancelled,
    Unchoked,
)

__all__ = [
    "BLOCK_SIZE",
    "DHT_BIT",
    "EXTENSION_BIT",
    "FAST_BIT",
    "HANDSHAKE_LENGTH",
    "IDLE_TIMEOUT",
    "KEEPALIVE_INTERVAL",
    "MAX_OUTSTANDING_REQUESTS",
    "MAX_PEER_REQUESTS",
    "MAX_REQUEST_LENGTH",
    "MESSAGE_TYPES",
    "BitfieldReceived",
    "BlockReceived",
    "BlocksTaken",
    "CancelReceived",
    "Choked",
    "ConnectionClosed",
    "Event",
    "Handshake",
    "HandshakeReceived",
    "HaveReceived",
    "LocalProtocolError",
    "Message",
    "PeerInterested",
    "PeerNotInterested",
    "PeerProtocol",
    "PeerState",
    "ReceiveBuffer",
    "RequestReceived",
    "RequestsCancelled",
    "Unchoked",
    "decode",
    "encode",
    "encode_handshake",
    "frame",
    "make_peer_id",
    "max_message_length",
    "parse_handshake",
]
