"""BEP 52 piece layers between peers: fetching a v2 magnet's layers with hash
requests, and answering other peers' hash requests from the layers we hold (sans-IO).

Theory of operation
-------------------
A v2 file larger than one piece is checked piece by piece against its *piece
layer*: the roots of its pieces' subtrees, the layer of its merkle tree
``log2(piece_length / 16 KiB)`` levels above the 16 KiB leaves. A .torrent
carries the layers at its top level (``piece layers``), outside the info
dict; a magnet's info dict, fetched over ``ut_metadata``, has only each
file's ``pieces root``. The layers then come from peers, as BEP 52 has it,
with the hash messages (:mod:`torrent.wire.messages`: ``hash request`` 21,
``hashes`` 22, ``hash reject`` 23).

A request names a file by its ``pieces root``, a *base layer* (here always
the piece layer), the first hash's ``index`` in it, a ``length`` (a power of
two; the layer is padded to a power of two with the roots of all-zero
subtrees) and ``proof layers``: how far above the base layer the reply
proves the hashes. A reply carries the ``length`` hashes, then one *uncle*
per layer from the top of their subtree up (the sibling of the subtree's
root, then of its parent, ...; :func:`~torrent.wire.messages.uncle_count`).
Folding the subtree and the uncles gives the file's root, which we know.

- :class:`LayerFetch` plans the requests: for each file, runs of
  :data:`LAYER_REQUEST_HASHES` hashes (libtorrent's own size; a smaller file
  in one request of its whole padded layer), each proved up to the root.
  Each request goes to one peer at a time, at most
  :data:`MAX_LAYER_REQUESTS_PER_PEER` outstanding per peer; a reject or a
  time-out (:data:`LAYER_REQUEST_TIMEOUT`) gives it to another peer (a
  strike; a peer with :data:`MAX_LAYER_STRIKES` is asked no more). A reply
  whose hashes do not fold up to the root, or that answers nothing we asked
  (another root, another range), bans its sender: the fetch goes on with the
  others. When every file's layer is in, :attr:`LayerFetch.layers` is the
  ``piece layers`` dict for the .torrent (checked again by
  :mod:`torrent.metainfo` when it is read).
- :class:`LayerServer` answers requests from the layers a torrent holds
  (``seed``, and a download of a .torrent or of a magnet whose layers are
  in): piece-layer requests of any aligned power-of-two run within a
  file's padded layer, with proofs up to the root. The tree above the layer
  is built once per file from the roots of its 512-piece subtrees (the
  native core's ``merkle_root``) and kept for :data:`MAX_CACHED_TREES`
  files; uncles below that level are hashed per request (at most 511
  hashes each). Leaf-layer requests (base 0: libtorrent asks for them to
  find a bad block) are rejected: answering them means hashing the file's
  blocks from disk. So is anything out of range, for a root we do not know,
  over :data:`~torrent.wire.messages.MAX_HASHES_PER_REQUEST`, or not
  aligned: nothing is computed or allocated for a request before its
  values are checked.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from . import merkle
from ._speedups import merkle_root
from .bencoding import decode, encode
from .metainfo import Metainfo
from .wire.messages import (
    MAX_HASHES_PER_REQUEST,
    MAX_PROOF_LAYERS,
    Hashes,
    HashReject,
    HashRequest,
    uncle_count,
)

__all__ = [
    "LAYER_REQUEST_HASHES",
    "LAYER_REQUEST_TIMEOUT",
    "MAX_CACHED_TREES",
    "MAX_LAYER_REQUESTS_PER_PEER",
    "MAX_LAYER_STRIKES",
    "LayerFetch",
    "LayerFile",
    "LayerResult",
    "LayerServer",
    "layer_files",
    "piece_level",
]

#: Hashes per request when fetching: libtorrent asks for 512 piece hashes at a
#: time and accepts replies only in such runs (hash_picker.cpp), so it is the
#: run every v2 peer serves; 16 KiB of hashes per reply.
LAYER_REQUEST_HASHES: Final = 512

#: Hash requests outstanding per peer. libtorrent keeps at most 2 of its own
#: out (maybe_send_hash_request); 4 replies of 16 KiB fill a round trip on a
#: fast link without making one peer hold every request.
MAX_LAYER_REQUESTS_PER_PEER: Final = 4

#: A hash request unanswered this long goes to another peer (seconds): a reply
#: is computed from memory, one round trip, as a metadata piece is
#: (metadata.METADATA_REQUEST_TIMEOUT).
LAYER_REQUEST_TIMEOUT: Final = 5.0

#: Rejects and time-outs before a peer is asked for no more hashes.
MAX_LAYER_STRIKES: Final = 3

#: Files whose tree above the 512-piece level a :class:`LayerServer` keeps:
#: 64 bytes per 512 pieces each (a 1 TiB file in 256 KiB pieces: 32 KiB), so
#: the bound is on the count; a torrent of more large files rebuilds the
#: least recently asked one (its 512-wide roots, natively, O(pieces)).
MAX_CACHED_TREES: Final = 64

# log2(LAYER_REQUEST_HASHES): the level above the piece layer from which a
# server keeps its trees (below it, uncles are hashed per request).
_UPPER: Final = LAYER_REQUEST_HASHES.bit_length() - 1
_H: Final = merkle.HASH_SIZE

# The root of an all-zero subtree of each height above the leaves (BEP 52
# pads with zero leaf hashes; the nodes above them are hashed as any other).
_PAD: list[bytes] = [bytes(_H)]
for _ in range(merkle.MAX_TREE_DEPTH + MAX_PROOF_LAYERS + 1):
    _PAD.append(hashlib.sha256(_PAD[-1] * 2).digest())


def piece_level(piece_length: int) -> int:
    """The piece layer's level above the 16 KiB leaves: ``log2(piece_length / 16 KiB)``."""
    return (piece_length // merkle.BLOCK_SIZE).bit_length() - 1


def _log2(n: int) -> int:
    return n.bit_length() - 1


def _fold(node: bytes, pos: int, uncles: bytes) -> bytes:
    """Hash ``node`` (at position ``pos`` of its level) up with one uncle per level."""
    for k in range(0, len(uncles), _H):
        u = uncles[k : k + _H]
        node = hashlib.sha256(node + u if pos % 2 == 0 else u + node).digest()
        pos //= 2
    return node


# --- serving --------------------------------------------------------------------------


class LayerServer:
    """Answers BEP 52 hash requests from known piece layers (see the module docstring).

    Args:
        piece_length: the torrent's piece length (a power of two).
        layers: ``pieces root -> piece layer`` (32 bytes per piece) of the files
            larger than one piece, each already checked against its root.
    """

    def __init__(self, piece_length: int, layers: Mapping[bytes, bytes]) -> None:
        self.piece_length = piece_length
        self.level = piece_level(piece_length)
        self._layers = {bytes(k): bytes(v) for k, v in layers.items()
                        if len(k) == _H and v and len(v) % _H == 0 and len(v) > _H}
        self._trees: OrderedDict[bytes, list[bytes]] = OrderedDict()

    @classmethod
    def from_metainfo(cls, meta: Metainfo) -> LayerServer | None:
        """The server of a v2-only or hybrid torrent's layers (None: it has none)."""
        if not meta.piece_layers:
            return None
        raw = decode(meta.piece_layers)
        if not isinstance(raw, dict):
            return None
        roots = {f.pieces_root for f in meta.files if f.pieces_root}
        layers = {k: v for k, v in raw.items()
                  if k in roots and isinstance(v, bytes)}
        return cls(meta.piece_length, layers) if layers else None

    @property
    def roots(self) -> frozenset[bytes]:
        """The roots whose layers we serve."""
        return frozenset(self._layers)

    def answer(self, req: HashRequest) -> Hashes | HashReject:
        """The reply to ``req``: its hashes and proof, or a reject (see the module docstring)."""
        reject = HashReject(req.pieces_root, req.base_layer, req.index, req.length,
                            req.proof_layers)
        layer = self._layers.get(req.pieces_root)
        if layer is None or req.base_layer != self.level:
            return reject
        n = len(layer) // _H
        width = merkle.tree_width(n)
        height = _log2(width)  # levels from the piece layer to the root
        length, index, proof = req.length, req.index, req.proof_layers
        if (not 2 <= length <= min(MAX_HASHES_PER_REQUEST, width) or length & (length - 1)
                or index % length or index + length > width or proof >= height):
            return reject
        base = layer[index * _H : (index + length) * _H]
        if len(base) < length * _H:
            base += _PAD[self.level] * (length - len(base) // _H)
        uncles = [self._node(req.pieces_root, layer, width, h, ((index >> h) ^ 1))
                  for h in range(_log2(length), proof + 1)]
        assert len(uncles) == uncle_count(length, proof)
        return Hashes(req.pieces_root, req.base_layer, index, length, proof,
                      base + b"".join(uncles))

    def _node(self, root: bytes, layer: bytes, width: int, h: int, pos: int) -> bytes:
        """The node ``h`` levels above the piece layer at position ``pos``."""
        n = len(layer) // _H
        first = pos << h
        if first >= n:
            return _PAD[self.level + h]
        if h < _UPPER:
            return merkle_root(layer[first * _H : min(n, first + (1 << h)) * _H], 1 << h,
                               self.level)
        return self._upper(root, layer, width)[h - _UPPER][pos * _H : (pos + 1) * _H]

    def _upper(self, root: bytes, layer: bytes, width: int) -> list[bytes]:
        """The levels of ``root``'s tree from ``_UPPER`` above the piece layer to the top."""
        tree = self._trees.get(root)
        if tree is not None:
            self._trees.move_to_end(root)
            return tree
        n = len(layer) // _H
        step = 1 << _UPPER
        level = b"".join(merkle_root(layer[k * _H : min(n, k + step) * _H], step, self.level)
                         for k in range(0, n, step))
        count = max(1, width >> _UPPER)
        level += _PAD[self.level + _UPPER] * (count - len(level) // _H)
        tree = [level]
        while len(level) > _H:
            level = b"".join(hashlib.sha256(level[k : k + 2 * _H]).digest()
                             for k in range(0, len(level), 2 * _H))
            tree.append(level)
        self._trees[root] = tree
        if len(self._trees) > MAX_CACHED_TREES:
            self._trees.popitem(last=False)
        return tree


# --- fetching -------------------------------------------------------------------------

P = TypeVar("P", bound=Hashable)


@dataclass(frozen=True, slots=True)
class LayerFile:
    """A file whose piece layer is to be fetched: its ``pieces root`` and length."""

    pieces_root: bytes
    length: int


def layer_files(meta: Metainfo) -> tuple[LayerFile, ...]:
    """The files of a v2 torrent that need a piece layer (larger than one piece),
    one per distinct root."""
    seen: dict[bytes, LayerFile] = {}
    for f in meta.files:
        if f.pieces_root and not f.pad and f.length > meta.piece_length:
            seen.setdefault(f.pieces_root, LayerFile(f.pieces_root, f.length))
    return tuple(seen.values())


@dataclass(frozen=True, slots=True)
class LayerResult(Generic[P]):
    """What a reply did: ``accepted`` it (new hashes), or ``banned`` its sender."""

    accepted: bool = False
    banned: P | None = None


@dataclass(slots=True)
class _Want:
    """One hash request of the plan and who has it."""

    request: HashRequest
    pieces: int  # the real (unpadded) hashes of the layer it covers
    peer: Any = None  # the peer it is asked of (a LayerFetch's P), or None
    sent_at: float = 0.0
    done: bool = False


@dataclass(slots=True)
class _LayerPeer:
    outstanding: set[HashRequest] = field(default_factory=set)
    refused: set[HashRequest] = field(default_factory=set)  # rejected or timed out by it
    strikes: int = 0
    banned: bool = False
    received: int = 0


class LayerFetch(Generic[P]):
    """Fetch the piece layers of ``files`` from peers (see the module docstring), sans-IO.

    Args:
        files: the files needing a layer (:func:`layer_files`).
        piece_length: the torrent's piece length.
        run: hashes per request (a power of two, at most MAX_HASHES_PER_REQUEST).
        request_timeout: seconds before an unanswered request goes to another peer.
        max_outstanding: requests outstanding per peer.

    Raises:
        ValueError: ``run`` is not a power of two within the bound.
    """

    def __init__(self, files: Iterable[LayerFile], piece_length: int, *,
                 run: int = LAYER_REQUEST_HASHES,
                 request_timeout: float = LAYER_REQUEST_TIMEOUT,
                 max_outstanding: int = MAX_LAYER_REQUESTS_PER_PEER) -> None:
        if not 2 <= run <= MAX_HASHES_PER_REQUEST or run & (run - 1):
            raise ValueError(f"run must be a power of two from 2 to {MAX_HASHES_PER_REQUEST}")
        self.piece_length = piece_length
        self.level = piece_level(piece_length)
        self.request_timeout = request_timeout
        self.max_outstanding = max_outstanding
        self._files = {f.pieces_root: f for f in files}
        self._pieces = {r: merkle.piece_count(f.length, piece_length)
                        for r, f in self._files.items()}
        self._got: dict[bytes, dict[int, bytes]] = {r: {} for r in self._files}
        self._wants: dict[HashRequest, _Want] = {}
        for root, n in self._pieces.items():
            width = merkle.tree_width(n)
            height = _log2(width)
            length = min(run, width)
            for index in range(0, n, length):
                req = HashRequest(root, self.level, index, length, height - 1)
                self._wants[req] = _Want(req, min(length, n - index))
        self._peers: dict[P, _LayerPeer] = {}
        self._left = len(self._wants)

    # -- state -------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        """Every file's layer is in."""
        return self._left == 0

    @property
    def requests_left(self) -> int:
        """Requests of the plan not answered yet."""
        return self._left

    @property
    def banned(self) -> frozenset[P]:
        """Peers banned for hashes that do not hash to their file's root."""
        return frozenset(p for p, st in self._peers.items() if st.banned)

    def layers(self) -> dict[bytes, bytes]:
        """``pieces root -> piece layer`` of every file (call once :attr:`done`)."""
        out: dict[bytes, bytes] = {}
        for root, got in self._got.items():
            out[root] = b"".join(got[i] for i in sorted(got))
        return out

    def encoded(self) -> bytes:
        """:meth:`layers` as a .torrent's bencoded ``piece layers`` value."""
        return encode(self.layers())

    def usable(self, peer: P) -> bool:
        """The peer may still be asked (known, not banned, not struck out)."""
        st = self._peers.get(peer)
        return st is not None and not st.banned and st.strikes < MAX_LAYER_STRIKES

    # -- peers -------------------------------------------------------------------------
    def add_peer(self, peer: P) -> None:
        """A peer that has the metadata (and so, for a v2 torrent, its layers)."""
        self._peers.setdefault(peer, _LayerPeer())

    def peer_gone(self, peer: P) -> None:
        """The peer's connection closed: its requests go to the others."""
        st = self._peers.get(peer)
        if st is None:
            return
        for req in st.outstanding:
            self._release(req)
        st.outstanding.clear()

    def _release(self, req: HashRequest) -> None:
        w = self._wants.get(req)
        if w is not None and not w.done:
            w.peer = None

    def _strike(self, peer: P, st: _LayerPeer, req: HashRequest) -> None:
        st.outstanding.discard(req)
        st.refused.add(req)
        st.strikes += 1
        w = self._wants.get(req)
        if w is not None and w.peer == peer:
            w.peer = None

    # -- requests ----------------------------------------------------------------------
    def next_request(self, peer: P, now: float) -> HashRequest | None:
        """A request for ``peer`` to send now, or None."""
        st = self._peers.get(peer)
        if st is None or not self.usable(peer) or len(st.outstanding) >= self.max_outstanding:
            return None
        for req, w in self._wants.items():
            if w.done or w.peer is not None or req in st.refused:
                continue
            w.peer, w.sent_at = peer, now
            st.outstanding.add(req)
            return req
        if not any(w.peer is None and not w.done for w in self._wants.values()):
            return None
        # every free request was refused by this peer: if no other usable peer could
        # take one, forgive it (a reject may be a full queue)
        others = [p for p in self._peers if p != peer and self.usable(p)]
        if not others:
            st.refused.clear()
        return None

    def timed_out(self, now: float) -> list[tuple[P, HashRequest]]:
        """Requests unanswered for ``request_timeout``: released (a strike each)."""
        out: list[tuple[P, HashRequest]] = []
        for w in self._wants.values():
            if w.done or w.peer is None or now - w.sent_at < self.request_timeout:
                continue
            peer: P = w.peer
            st = self._peers.get(peer)
            if st is not None:
                self._strike(peer, st, w.request)
            w.peer = None
            out.append((peer, w.request))
        return out

    def reject(self, peer: P, msg: HashReject) -> None:
        """The peer rejected a request: another peer gets it."""
        st = self._peers.get(peer)
        req = HashRequest(msg.pieces_root, msg.base_layer, msg.index, msg.length,
                          msg.proof_layers)
        if st is not None and req in st.outstanding:
            self._strike(peer, st, req)

    def hashes(self, peer: P, msg: Hashes) -> LayerResult[P]:
        """A reply: taken when it answers a request of the plan (from this peer or,
        late, another) and folds up to the file's root; its sender banned when it
        answers nothing we would ask or does not fold up."""
        st = self._peers.setdefault(peer, _LayerPeer())
        req = HashRequest(msg.pieces_root, msg.base_layer, msg.index, msg.length,
                          msg.proof_layers)
        w = self._wants.get(req)
        if w is None:
            return self._ban(peer, st)
        st.outstanding.discard(req)
        if w.done:
            return LayerResult()  # a duplicate of what another peer already proved
        root = req.pieces_root
        sub = merkle_root(msg.base, req.length, self.level)
        if _fold(sub, req.index // req.length, msg.uncles) != root:
            if w.peer == peer:
                w.peer = None
            return self._ban(peer, st)
        if w.peer is not None and w.peer != peer:  # late: the one asked now need not answer
            other = self._peers.get(w.peer)
            if other is not None:
                other.outstanding.discard(req)
        got = self._got[root]
        base = msg.base
        for k in range(w.pieces):
            got[req.index + k] = base[k * _H : (k + 1) * _H]
        w.done = True
        w.peer = None
        st.received += 1
        self._left -= 1
        return LayerResult(accepted=True)

    def _ban(self, peer: P, st: _LayerPeer) -> LayerResult[P]:
        st.banned = True
        for req in st.outstanding:
            self._release(req)
        st.outstanding.clear()
        return LayerResult(banned=peer)
