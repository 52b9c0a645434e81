"""A scriptable peer that serves only metadata (BEP 9 over BEP 10), honest or hostile.

:class:`MetadataPeer` runs on its own loop in a background thread (as
:class:`helpers.testpeer.TestPeer`, whose server it shares). Each accepted
connection:

1. reads the initiator's handshake and checks the info-hash, then answers
   with its own, the BEP 10 bit set (unless ``bep10=False``);
2. sends its extension handshake: ``m`` with ut_metadata (unless
   ``offer=False``) and ``metadata_size`` (``len(info)`` unless told
   otherwise, e.g. one over the bound);
3. answers each ut_metadata request with the piece of ``info`` (unless
   ``answer=False``: it never answers), or a reject when out of range;
4. ignores everything else until the remote closes.

``preamble`` is written after its extension handshake, as is: a hostile
stream for the download that takes the connection over. With ``hold`` it
answers no metadata request until that event is set (at most
:data:`HOLD_TIMEOUT`): a test orders two peers' answers so.

``hashes``, when given, answers each BEP 52 hash request: it gets the
request and returns the bytes to write (a lying ``hashes`` frame, a frame of
the wrong length, or nothing: silence); the requests are recorded
(``hash_requests``, event ``hash_requested``).

``info`` need not hash to ``info_hash``: that is the "bad metadata" peer.
It records the metadata pieces asked of it, the extension handshakes each
connection brought (a second one: a download took the connection over),
and events for the moments a test waits on (``requested``, ``remote_closed``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from helpers.framereader import FrameReader
from helpers.testpeer import READ_CHUNK, _LoopServer
from torrent import bencoding
from torrent.errors import RemoteProtocolError
from torrent.wire.extension import (
    EXTENSION_HANDSHAKE_ID,
    METADATA_PIECE,
    UT_METADATA,
    ExtensionHandshake,
    MetadataData,
    MetadataReject,
    MetadataRequest,
    decode_metadata_message,
    metadata_piece_count,
)
from torrent.wire.handshake import (
    HANDSHAKE_LENGTH,
    RESERVED_NONE,
    RESERVED_OURS,
    encode_handshake,
    make_peer_id,
    parse_handshake,
)
from torrent.wire.messages import Extended, HashRequest, encode

__all__ = ["MetadataPeer"]

#: The id this peer wants ut_metadata messages under (any non-zero byte).
MY_UT_METADATA = 7

#: The longest a held peer waits for its ``hold`` event (seconds).
HOLD_TIMEOUT = 30.0


class MetadataPeer(_LoopServer):
    """A peer offering the metadata ``info`` for ``info_hash`` (see the module docstring)."""

    __test__ = False
    name = "metadata-peer"

    def __init__(self, info_hash: bytes, info: bytes, *, metadata_size: int | None = None,
                 offer: bool = True, answer: bool = True, bep10: bool = True,
                 preamble: bytes = b"", hold: threading.Event | None = None,
                 hashes: Callable[[HashRequest], bytes] | None = None) -> None:
        super().__init__()
        self.info_hash = info_hash
        self.info = info
        self.metadata_size = len(info) if metadata_size is None else metadata_size
        self.offer = offer
        self.answer = answer
        self.bep10 = bep10
        self.preamble = preamble
        self.hold = hold
        self.hashes = hashes
        self._hash_requests: list[HashRequest] = []
        self.hash_requested = threading.Event()  # a BEP 52 hash request came
        self.peer_id = make_peer_id(b"-MP0001-")
        self._asked: list[int] = []
        self._ext_handshakes: list[int] = []  # per connection, in accept order
        self.requested = threading.Event()  # a metadata piece was asked for
        self.remote_closed = threading.Event()  # the remote closed a connection

    @property
    def ext_handshakes(self) -> list[int]:
        """The extension handshakes received on each connection so far, in accept order."""
        with self._lock:
            return list(self._ext_handshakes)

    @property
    def hash_requests(self) -> list[HashRequest]:
        """BEP 52 hash requests received so far, in arrival order."""
        with self._lock:
            return list(self._hash_requests)

    @property
    def asked(self) -> list[int]:
        """Metadata pieces requested so far, in arrival order."""
        with self._lock:
            return list(self._asked)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            theirs = parse_handshake(await reader.readexactly(HANDSHAKE_LENGTH))
        except (asyncio.IncompleteReadError, ConnectionError):
            # closed (or reset) before its handshake was all here (a fetch that ended
            # while this dial was connecting): a remote close too
            if not self.stopping:
                self.remote_closed.set()
            return
        except RemoteProtocolError:
            return
        if theirs.info_hash != self.info_hash:
            return
        writer.write(encode_handshake(self.info_hash, self.peer_id,
                                      RESERVED_OURS if self.bep10 else RESERVED_NONE))
        if self.bep10:
            # built by hand: any metadata_size, over the bound too
            hs: dict[bytes, object] = {b"v": b"metadata-peer"}
            if self.offer:
                hs[b"m"] = {UT_METADATA.encode(): MY_UT_METADATA}
                hs[b"metadata_size"] = self.metadata_size
            else:
                hs[b"m"] = {b"ut_pex": 9}
            body = bencoding.encode(hs)
            writer.write(encode(Extended(EXTENSION_HANDSHAKE_ID, body)))
            writer.write(self.preamble)
        frames = FrameReader(1)
        their_ut: int | None = None
        with self._lock:
            conn = len(self._ext_handshakes)
            self._ext_handshakes.append(0)
        try:
            while data := await reader.read(READ_CHUNK):
                for msg in frames.feed(data):
                    if isinstance(msg, HashRequest):
                        with self._lock:
                            self._hash_requests.append(msg)
                        self.hash_requested.set()
                        if self.hashes is not None:
                            writer.write(self.hashes(msg))
                        continue
                    if not isinstance(msg, Extended):
                        continue
                    if msg.ext_id == EXTENSION_HANDSHAKE_ID:
                        their_ut = ExtensionHandshake.decode(msg.body).m.get(UT_METADATA)
                        with self._lock:
                            self._ext_handshakes[conn] += 1
                        continue
                    if msg.ext_id != MY_UT_METADATA:
                        continue
                    req = decode_metadata_message(msg.body)
                    if not isinstance(req, MetadataRequest):
                        continue
                    with self._lock:
                        self._asked.append(req.piece)
                    self.requested.set()
                    if not self.answer or their_ut is None:
                        continue
                    if self.hold is not None and not self.hold.is_set():
                        await asyncio.get_running_loop().run_in_executor(
                            None, self.hold.wait, HOLD_TIMEOUT)
                    writer.write(encode(Extended(their_ut, self._answer(req.piece))))
                await writer.drain()
        except (ConnectionError, OSError, RemoteProtocolError):
            pass
        except asyncio.CancelledError:
            # stop() with the connection still open: end quietly (a cancelled
            # connection task makes asyncio's stream callback print a traceback)
            return
        if not self.stopping:
            self.remote_closed.set()

    def _answer(self, piece: int) -> bytes:
        if not 0 <= piece < metadata_piece_count(len(self.info)):
            return MetadataReject(piece).encode()
        data = self.info[piece * METADATA_PIECE : (piece + 1) * METADATA_PIECE]
        return MetadataData(piece, len(self.info), data).encode()
