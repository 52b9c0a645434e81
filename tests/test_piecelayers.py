"""BEP 52 piece layers between peers (torrent/piecelayers.py), sans-IO: a
LayerFetch against LayerServers (honest, lying, rejecting, silent), every
refusal of the server, proofs checked by folding them up to the root.

The same code against libtorrent is in tests/test_v2_magnet.py.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from helpers.merkleproof import fold_to_root
from helpers.payload import write_tree

from torrent import creator, merkle, metainfo
from torrent.metadata import torrent_bytes
from torrent.piecelayers import (
    LAYER_REQUEST_HASHES,
    MAX_LAYER_STRIKES,
    LayerFetch,
    LayerFile,
    LayerServer,
    layer_files,
    piece_level,
)
from torrent.wire.messages import (
    MAX_HASHES_PER_REQUEST,
    Hashes,
    HashReject,
    HashRequest,
    uncle_count,
)

PL = 16384  # 16 KiB pieces: the piece layer is the leaf layer (level 0)
PL64 = 65536  # 64 KiB pieces: the piece layer is level 2


def make_file(pieces: int, piece_length: int = PL, seed: int = 0) -> tuple[LayerFile, bytes]:
    """A file of ``pieces`` pieces (last one short) with a random piece layer and its root."""
    rnd = hashlib.sha256(bytes([seed]) * 8).digest()
    layer = b"".join(hashlib.sha256(rnd + i.to_bytes(4, "big")).digest() for i in range(pieces))
    root = merkle.layer_root(layer, piece_length)
    return LayerFile(root, (pieces - 1) * piece_length + 100), layer


def run_fetch(fetch: LayerFetch[str], servers: dict[str, LayerServer | None], *,
              tamper: set[str] = frozenset(), now: float = 0.0, rounds: int = 200) -> None:
    """Drive the fetch: each peer answers what it is asked (None: never answers)."""
    for p in servers:
        fetch.add_peer(p)
    for _ in range(rounds):
        if fetch.done:
            return
        progressed = False
        for p, srv in servers.items():
            while (req := fetch.next_request(p, now)) is not None:
                progressed = True
                if srv is None:
                    continue
                ans = srv.answer(req)
                if isinstance(ans, HashReject):
                    fetch.reject(p, ans)
                    continue
                if p in tamper:
                    h = bytearray(ans.hashes)
                    h[0] ^= 1
                    ans = Hashes(ans.pieces_root, ans.base_layer, ans.index, ans.length,
                                 ans.proof_layers, bytes(h))
                fetch.hashes(p, ans)
        if not progressed:
            now += 10.0
            fetch.timed_out(now)


@pytest.mark.parametrize("pieces", [2, 3, 5, 512, 513, 1300])
@pytest.mark.parametrize("piece_length", [PL, PL64])
def test_fetch_from_an_honest_server_gives_every_layer(pieces: int, piece_length: int) -> None:
    f, layer = make_file(pieces, piece_length)
    g, layer2 = make_file(7, piece_length, seed=1)
    server = LayerServer(piece_length, {f.pieces_root: layer, g.pieces_root: layer2})
    fetch: LayerFetch[str] = LayerFetch([f, g], piece_length)
    run_fetch(fetch, {"a": server})
    assert fetch.done
    got = fetch.layers()
    assert got == {f.pieces_root: layer, g.pieces_root: layer2}
    for root, lay in got.items():
        length = f.length if root == f.pieces_root else g.length
        assert merkle.check_piece_layer(lay, root, length, piece_length)


@pytest.mark.parametrize("run", [2, 4, 64])
def test_small_runs_prove_many_layers(run: int) -> None:
    f, layer = make_file(300)
    server = LayerServer(PL, {f.pieces_root: layer})
    fetch: LayerFetch[str] = LayerFetch([f], PL, run=run)
    assert fetch.requests_left == -(-300 // run)
    run_fetch(fetch, {"a": server})
    assert fetch.layers() == {f.pieces_root: layer}


def test_every_answer_folds_up_to_the_root_as_libtorrent_asks() -> None:
    """libtorrent's own requests: 512-runs, the last one shorter (count rounded up to a
    power of two), proof layers counted from the base layer (hash_picker::pick_hashes)."""
    f, layer = make_file(600, PL64)
    server = LayerServer(PL64, {f.pieces_root: layer})
    level = piece_level(PL64)
    for index, length, proof in [(0, 512, 9), (512, 128, 9), (512, 128, 7), (0, 1024, 9),
                                 (6, 2, 9), (0, 2, 0)]:
        ans = server.answer(HashRequest(f.pieces_root, level, index, length, proof))
        assert isinstance(ans, Hashes), (index, length, proof)
        assert len(ans.uncles) == 32 * uncle_count(length, proof)
        if proof == 9:  # proved to the top (the padded layer is 1024 wide: 10 levels)
            assert fold_to_root(ans, level) == f.pieces_root
        assert ans.base[:32 * max(0, min(length, 600 - index))] == \
            layer[index * 32:(index + length) * 32]
    # the padding beyond the file (pieces 600-639): roots of subtrees of zero *hashes*
    ans = server.answer(HashRequest(f.pieces_root, level, 512, 128, 9))
    assert isinstance(ans, Hashes)
    zero_subtree = bytes(32)  # a zero leaf hash, hashed up to the piece level
    for _ in range(level):
        zero_subtree = hashlib.sha256(zero_subtree * 2).digest()
    assert ans.base[32 * 88:] == zero_subtree * 40


@pytest.mark.parametrize(("base", "index", "length", "proof", "why"), [
    (2, 0, 1, 0, "one hash: libtorrent's proof count for it differs between its sides"),
    (2, 0, 3, 0, "not a power of two"),
    (2, 1, 2, 0, "not aligned"),
    (2, 0, 2048, 0, "longer than the padded layer"),
    (2, 1024, 2, 0, "beyond the padded layer"),
    (2, 0, 10**6, 0, "a million"),
    (2, 0, MAX_HASHES_PER_REQUEST * 2, 0, "over the bound"),
    (2, 0, 2, 10, "proof above the root"),
    (2, 0, 2, 2**32 - 1, "proof absurd"),
    (0, 0, 2, 0, "leaf layer"),
    (3, 0, 2, 0, "a layer we do not serve"),
])
def test_the_server_rejects(base: int, index: int, length: int, proof: int, why: str) -> None:
    f, layer = make_file(600, PL64)
    server = LayerServer(PL64, {f.pieces_root: layer})
    req = HashRequest(f.pieces_root, base, index, length, proof)
    assert server.answer(req) == HashReject(f.pieces_root, base, index, length, proof), why


def test_the_server_rejects_an_unknown_root() -> None:
    f, layer = make_file(10)
    server = LayerServer(PL, {f.pieces_root: layer})
    other = os.urandom(32)
    assert server.answer(HashRequest(other, 0, 0, 2, 0)) == HashReject(other, 0, 0, 2, 0)


def test_a_liar_is_banned_and_an_honest_peer_completes_the_fetch() -> None:
    f, layer = make_file(1100)
    server = LayerServer(PL, {f.pieces_root: layer})
    fetch: LayerFetch[str] = LayerFetch([f], PL)
    run_fetch(fetch, {"liar": server, "honest": server}, tamper={"liar"})
    assert fetch.done and fetch.banned == {"liar"}
    assert fetch.layers() == {f.pieces_root: layer}


def test_a_reply_for_something_never_asked_bans_its_sender() -> None:
    f, layer = make_file(1100)
    server = LayerServer(PL, {f.pieces_root: layer})
    fetch: LayerFetch[str] = LayerFetch([f], PL)
    fetch.add_peer("x")
    odd = server.answer(HashRequest(f.pieces_root, piece_level(PL), 8, 4, 10))
    assert isinstance(odd, Hashes)  # true hashes, but not a range of the plan
    assert fetch.hashes("x", odd).banned == "x"
    assert not fetch.usable("x") and fetch.next_request("x", 0.0) is None


def test_rejects_and_silence_move_requests_to_another_peer() -> None:
    f, layer = make_file(2000)
    server = LayerServer(PL, {f.pieces_root: layer})
    empty = LayerServer(PL, {})  # rejects everything
    fetch: LayerFetch[str] = LayerFetch([f], PL)
    run_fetch(fetch, {"rejecter": empty, "silent": None, "honest": server})
    assert fetch.done and not fetch.banned
    assert not fetch.usable("rejecter") and not fetch.usable("silent")
    assert fetch.layers() == {f.pieces_root: layer}


def test_a_lone_rejecting_peer_is_struck_out_and_the_fetch_waits() -> None:
    f, _layer = make_file(20)
    fetch: LayerFetch[str] = LayerFetch([f], PL)
    run_fetch(fetch, {"rejecter": LayerServer(PL, {})}, rounds=20)
    assert not fetch.done and not fetch.usable("rejecter")
    assert fetch.requests_left == 1


def test_a_gone_peers_requests_go_to_the_next() -> None:
    f, layer = make_file(2000)
    fetch: LayerFetch[str] = LayerFetch([f], PL)
    fetch.add_peer("a")
    fetch.add_peer("b")
    taken = [fetch.next_request("a", 0.0) for _ in range(4)]
    assert None not in taken and fetch.next_request("a", 0.0) is None  # its bound
    fetch.peer_gone("a")
    server = LayerServer(PL, {f.pieces_root: layer})
    run_fetch(fetch, {"b": server})
    assert fetch.done


def test_layer_files_and_from_metainfo_on_a_created_v2_torrent(tmp_path: Path) -> None:
    d = tmp_path / "d"
    sizes = {"big": 40 * PL + 5, "same": 40 * PL + 5, "one": PL, "small": 10, "e": 0}
    write_tree(d, sizes, seed=3)
    (d / "same").write_bytes((d / "big").read_bytes())  # one root, one layer
    meta = metainfo.parse(creator.create_torrent(str(d), piece_length=PL, version="v2"))
    files = layer_files(meta)
    assert [f.length for f in files] == [40 * PL + 5]
    server = LayerServer.from_metainfo(meta)
    assert server is not None and server.roots == {files[0].pieces_root}
    fetch: LayerFetch[str] = LayerFetch(files, PL)
    run_fetch(fetch, {"s": server})
    assert fetch.done
    again = metainfo.parse(torrent_bytes(meta.info_bytes, piece_layers=fetch.encoded()))
    assert again.piece_layers == meta.piece_layers and again.info_hash == meta.info_hash


def test_libtorrents_run_is_the_default() -> None:
    f, _ = make_file(LAYER_REQUEST_HASHES * 3)
    fetch: LayerFetch[str] = LayerFetch([f], PL)
    assert fetch.requests_left == 3
    assert MAX_LAYER_STRIKES >= 1
