"""torrent.metadata: the BEP 9 messages, fetching from hostile and honest peers, serving, and
turning the info dict into a torrent through the same strict checks as a .torrent file.

Every scenario runs on an injected clock (``now``); peers are plain strings.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torrentgen as tg
from hypothesis import given, settings
from hypothesis import strategies as st

from torrent import bencoding, metainfo
from torrent.creator import create_torrent
from torrent.errors import InvalidTorrent, RemoteProtocolError
from torrent.magnet import Magnet, magnet_uri, parse_magnet
from torrent.metadata import (
    MAX_OUTSTANDING_PER_PEER,
    MAX_STRIKES,
    METADATA_REQUEST_TIMEOUT,
    REJECT_BACKOFF,
    MetadataComplete,
    MetadataFetch,
    MetadataHashFailed,
    MetadataServer,
    metainfo_from_info,
    torrent_bytes,
)
from torrent.wire.extension import (
    MAX_METADATA_SIZE,
    METADATA_PIECE,
    MetadataData,
    MetadataReject,
    MetadataRequest,
    decode_metadata_message,
    metadata_piece_count,
)

PS = METADATA_PIECE


def _info(num_pieces: int = 4000, name: bytes = b"big.bin") -> bytes:
    """A valid single-file info dict of ``20 * num_pieces`` bytes and some."""
    info = {
        b"name": name,
        b"piece length": tg.PIECE,
        b"length": num_pieces * tg.PIECE,
        b"pieces": tg.fake_hashes(num_pieces),
    }
    return bencoding.encode(info)


INFO = _info()  # 80 KB: 5 metadata pieces, the last one short
N = metadata_piece_count(len(INFO))
HASH = hashlib.sha1(INFO).digest()
SERVER = MetadataServer(INFO)


def piece(i: int, info: bytes = INFO) -> bytes:
    return info[i * PS : (i + 1) * PS]


def requests(f: MetadataFetch[str], peer: str, now: float) -> list[int]:
    out = []
    while (i := f.next_request(peer, now)) is not None:
        out.append(i)
    return out


def serve(f: MetadataFetch[str], peer: str, pieces: list[int], info: bytes = INFO) -> Any:
    result = None
    for i in pieces:
        result = f.data(peer, i, len(info), piece(i, info))
    return result


# -- serving --------------------------------------------------------------------------------


def test_server_answers_data_and_rejects_out_of_range() -> None:
    assert SERVER.metadata_size == len(INFO) and SERVER.num_pieces == N == 5
    assert SERVER.answer(0) == MetadataData(0, len(INFO), INFO[:PS])
    last = SERVER.answer(N - 1)
    assert isinstance(last, MetadataData) and len(last.data) == len(INFO) - (N - 1) * PS
    assert SERVER.answer(N) == MetadataReject(N)
    assert SERVER.answer(-1) == MetadataReject(-1)


def test_usable_says_who_may_still_be_asked() -> None:
    f: MetadataFetch[str] = MetadataFetch(HASH)
    assert not f.usable("a")  # not in the fetch
    f.add_peer("a", len(INFO))
    f.add_peer("b", len(INFO))
    assert f.usable("a") and f.usable("b")
    f.peer_gone("b")
    assert not f.usable("b")
    assert serve(f, "a", requests(f, "a", 0.0) + requests(f, "a", 0.0)) is None
    assert serve(f, "a", requests(f, "a", 0.0)) == MetadataComplete(INFO, ())
    assert not f.usable("a")  # done: nobody is asked any more


# -- fetching -------------------------------------------------------------------------------


def test_two_peers_fetch_in_parallel() -> None:
    f: MetadataFetch[str] = MetadataFetch(HASH)
    assert f.size is None and f.next_request("a", 0.0) is None  # no handshake yet
    assert f.add_peer("a", len(INFO)) and f.add_peer("b", len(INFO))
    assert f.size is None  # learnt lazily, at the first request
    got_a = requests(f, "a", 0.0)
    got_b = requests(f, "b", 0.0)
    assert f.size == len(INFO)
    assert got_a == list(range(MAX_OUTSTANDING_PER_PEER))  # bounded per peer
    assert got_b == [4]  # each piece to one peer at a time
    assert serve(f, "b", got_b) is None
    assert f.pieces_have == 1
    result = serve(f, "a", got_a)
    assert result == MetadataComplete(INFO, ())
    assert f.done and f.result == INFO
    assert f.next_request("a", 1.0) is None and f.next_wakeup(1.0) is None
    # A late duplicate after completion is ignored, not an error.
    assert f.data("b", 4, len(INFO), piece(4)) is None
    reports = {r.peer: r for r in f.report()}
    assert (reports["a"].received, reports["b"].received) == (4, 1)


def test_single_piece_metadata() -> None:
    info = _info(10)
    f: MetadataFetch[str] = MetadataFetch(hashlib.sha1(info).digest())
    f.add_peer("a", len(info))
    assert requests(f, "a", 0.0) == [0]
    assert serve(f, "a", [0], info) == MetadataComplete(info, ())


def test_reject_gives_the_piece_to_another_peer_and_backs_off() -> None:
    f: MetadataFetch[str] = MetadataFetch(HASH, max_outstanding=1)
    f.add_peer("a", len(INFO))
    f.add_peer("b", len(INFO))
    assert requests(f, "a", 0.0) == [0]
    assert requests(f, "b", 0.0) == [1]
    f.reject("a", 0, now=1.0)
    assert requests(f, "a", 1.0) == []  # backing off
    assert f.next_wakeup(1.0) == pytest.approx(0.0 + METADATA_REQUEST_TIMEOUT)
    assert serve(f, "b", [1]) is None
    assert requests(f, "b", 2.0) == [0]  # the rejected piece went to b
    assert requests(f, "a", 1.0 + REJECT_BACKOFF) == [2]  # a is back after its back-off
    report = {r.peer: r for r in f.report()}
    assert report["a"].rejects == 1
    f.reject("a", 4, now=2.0)  # never requested from a: ignored
    assert {r.peer: r for r in f.report()}["a"].rejects == 1


def test_strikes_end_a_peers_part() -> None:
    f: MetadataFetch[str] = MetadataFetch(HASH, max_outstanding=1)
    f.add_peer("a", len(INFO))
    now = 0.0
    for _ in range(MAX_STRIKES):
        [p] = requests(f, "a", now)
        f.reject("a", p, now)
        now += REJECT_BACKOFF
    assert requests(f, "a", now + 1000) == []
    assert not f.usable("a")  # the caller may close it
    # A reconnect does not wipe the strikes.
    f.peer_gone("a")
    assert not f.add_peer("a", len(INFO))


def test_requests_failing_together_count_one_strike() -> None:
    f: MetadataFetch[str] = MetadataFetch(HASH)
    f.add_peer("a", len(INFO))
    now = 0.0
    for _ in range(MAX_STRIKES - 1):
        got = requests(f, "a", now)
        assert len(got) == MAX_OUTSTANDING_PER_PEER
        for p in got:  # a full queue rejects all of them
            f.reject("a", p, now)
        now += REJECT_BACKOFF
    # Expiring one at a time, over several calls, is still one stall.
    sent = [f.next_request("a", now + k * 0.1) for k in range(MAX_OUTSTANDING_PER_PEER)]
    assert None not in sent
    for k in range(MAX_OUTSTANDING_PER_PEER):
        assert len(f.timed_out(now + METADATA_REQUEST_TIMEOUT + k * 0.1)) == 1
    report = {r.peer: r for r in f.report()}["a"]
    assert report.rejects == (MAX_STRIKES - 1) * MAX_OUTSTANDING_PER_PEER
    assert report.timeouts == MAX_OUTSTANDING_PER_PEER
    assert requests(f, "a", now + 100) == []  # the fifth strike
    g: MetadataFetch[str] = MetadataFetch(HASH, max_outstanding=1)
    g.add_peer("a", len(INFO))
    t = 0.0
    for _ in range(MAX_STRIKES - 1):
        requests(g, "a", t)
        t += METADATA_REQUEST_TIMEOUT
        assert len(g.timed_out(t)) == 1
    assert requests(g, "a", t) != []  # four strikes: still asked


def test_time_out_reissues_and_a_late_answer_still_counts() -> None:
    f: MetadataFetch[str] = MetadataFetch(HASH)
    f.add_peer("a", len(INFO))
    assert requests(f, "a", 0.0) == [0, 1, 2, 3]
    f.add_peer("b", len(INFO))
    assert requests(f, "b", 1.0) == [4]
    assert serve(f, "b", [4]) is None
    assert f.timed_out(METADATA_REQUEST_TIMEOUT - 0.001) == []
    assert f.next_wakeup(2.0) == pytest.approx(METADATA_REQUEST_TIMEOUT)
    expired = f.timed_out(METADATA_REQUEST_TIMEOUT)
    assert expired == [("a", 0), ("a", 1), ("a", 2), ("a", 3)]
    assert requests(f, "b", 6.0) == [0, 1, 2, 3]  # re-issued to b
    # a's late answer for piece 2 is taken, and b's request for it becomes moot.
    assert f.data("a", 2, len(INFO), piece(2)) is None
    assert requests(f, "b", 6.5) == []  # nothing left to ask
    assert f.data("b", 2, len(INFO), piece(2)) is None  # duplicate: ignored
    assert serve(f, "b", [0, 1, 3]) == MetadataComplete(INFO, ())
    report = {r.peer: r for r in f.report()}
    assert report["a"].timeouts == 4 and report["a"].received == 1


def test_peer_gone_releases_its_pieces() -> None:
    f: MetadataFetch[str] = MetadataFetch(HASH)
    f.add_peer("a", len(INFO))
    f.add_peer("b", len(INFO))
    assert requests(f, "a", 0.0) == [0, 1, 2, 3]
    f.peer_gone("a")
    f.peer_gone("a")  # idempotent
    assert requests(f, "b", 0.0) == [0, 1, 2, 3]
    assert f.next_request("a", 0.0) is None
    with pytest.raises(RemoteProtocolError, match="never offered"):
        f.data("a", 0, len(INFO), piece(0))


@pytest.mark.parametrize("size", [0, -1, None, MAX_METADATA_SIZE + 1, True])
def test_unusable_sizes_leave_the_peer_out(size: Any) -> None:
    f: MetadataFetch[str] = MetadataFetch(HASH)
    assert not f.add_peer("a", size)
    assert f.next_request("a", 0.0) is None
    assert f.report() == ()


def test_a_size_over_the_fetchs_own_bound_is_ignored() -> None:
    f: MetadataFetch[str] = MetadataFetch(HASH, max_size=len(INFO) - 1)
    assert not f.add_peer("a", len(INFO))


def test_peer_lying_about_the_size_is_banned_and_the_next_size_is_tried() -> None:
    f: MetadataFetch[str] = MetadataFetch(HASH)
    lie = len(INFO) + PS  # one piece more
    assert f.add_peer("liar", lie)  # first to announce: its size is tried first
    assert f.add_peer("honest", len(INFO))
    assert requests(f, "honest", 0.0) == []  # disagrees with the size being fetched
    asked = requests(f, "liar", 0.0)
    assert asked == [0, 1, 2, 3] and f.size == lie
    junk = bytes(lie)
    assert serve(f, "liar", asked, junk) is None
    assert requests(f, "liar", 0.0) == [4, 5]
    # Its pieces must match the size it announced: the true size is refused.
    with pytest.raises(RemoteProtocolError, match="total_size"):
        f.data("liar", 4, len(INFO), piece(4))
    # (the protocol error forgot the liar; a fresh fetch shows the ban path)
    f = MetadataFetch(HASH)
    f.add_peer("liar", lie)
    f.add_peer("honest", len(INFO))
    assert serve(f, "liar", requests(f, "liar", 0.0), junk) is None
    failed = serve(f, "liar", requests(f, "liar", 0.0), junk)
    assert failed == MetadataHashFailed(banned=("liar",))
    assert f.banned == frozenset({"liar"})
    assert requests(f, "liar", 1.0) == []
    assert not f.add_peer("liar", len(INFO))  # banned peers stay out
    got = requests(f, "honest", 1.0)
    assert f.size == len(INFO) and got == [0, 1, 2, 3]
    assert serve(f, "honest", got) is None
    assert serve(f, "honest", requests(f, "honest", 1.0)) == MetadataComplete(INFO, ())


def test_lone_sender_of_bad_metadata_is_banned() -> None:
    f: MetadataFetch[str] = MetadataFetch(HASH)
    f.add_peer("bad", len(INFO))
    f.add_peer("good", len(INFO))
    wrong = bytearray(INFO)
    wrong[PS + 5] ^= 1  # one flipped bit in piece 1
    # Only "bad" asks, so it sends all of the copy.
    assert serve(f, "bad", requests(f, "bad", 0.0), bytes(wrong)) is None
    result = serve(f, "bad", requests(f, "bad", 0.0), bytes(wrong))
    assert result == MetadataHashFailed(banned=("bad",))
    assert f.pieces_have == 0  # starting over
    got = requests(f, "good", 1.0)
    serve(f, "good", got)
    assert serve(f, "good", requests(f, "good", 1.0)) == MetadataComplete(INFO, ())


@pytest.mark.parametrize("first_solo", ["good", "bad"])
def test_bad_piece_among_several_senders_is_found_by_fetching_from_one_at_a_time(
    first_solo: str,
) -> None:
    f: MetadataFetch[str] = MetadataFetch(HASH)
    f.add_peer("good", len(INFO))
    f.add_peer("bad", len(INFO))
    wrong = bytearray(INFO)
    wrong[4 * PS] ^= 0xFF  # "bad" lies about piece 4 only
    got_good = requests(f, "good", 0.0)
    got_bad = requests(f, "bad", 0.0)
    assert got_bad == [4]
    serve(f, "good", got_good)
    failed = serve(f, "bad", got_bad, bytes(wrong))
    assert failed == MetadataHashFailed(suspects=("good", "bad"))
    assert f.banned == frozenset()  # not known yet who lied
    # One peer at a time: whoever asks first fetches the whole copy alone.
    other = "bad" if first_solo == "good" else "good"
    solo = requests(f, first_solo, 1.0)
    assert solo == [0, 1, 2, 3]
    assert requests(f, other, 1.0) == []
    source = INFO if first_solo == "good" else bytes(wrong)
    serve(f, first_solo, solo, source)
    result = serve(f, first_solo, requests(f, first_solo, 1.0), source)
    if first_solo == "good":
        # The good copy shows whose recorded piece differed.
        assert result == MetadataComplete(INFO, ("bad",))
    else:
        assert result == MetadataHashFailed(banned=("bad",))
        got = requests(f, "good", 2.0)
        serve(f, "good", got)
        assert serve(f, "good", requests(f, "good", 2.0)) == MetadataComplete(INFO, ())
    assert f.banned == frozenset({"bad"})
    assert f.result == INFO


def test_solo_peer_leaving_hands_the_solo_fetch_to_another() -> None:
    f: MetadataFetch[str] = MetadataFetch(HASH)
    for p in ("a", "b", "c"):
        f.add_peer(p, len(INFO))
    wrong = bytearray(INFO)
    wrong[0] ^= 1
    serve(f, "a", requests(f, "a", 0.0), bytes(wrong))
    assert isinstance(serve(f, "b", requests(f, "b", 0.0)), MetadataHashFailed)
    first = requests(f, "b", 1.0)
    serve(f, "b", first[:2])
    f.peer_gone("b")
    assert f.pieces_have == 0  # a new solo copy starts from scratch
    got = requests(f, "c", 2.0)
    assert got == [0, 1, 2, 3]
    serve(f, "c", got)
    assert serve(f, "c", requests(f, "c", 2.0)) == MetadataComplete(INFO, ("a",))


@pytest.mark.parametrize(("index", "total", "size", "why"), [
    (N, len(INFO), 1, "out of range"),
    (-1, len(INFO), 1, "out of range"),
    (0, len(INFO), PS + 1, "expected 16384"),
    (0, len(INFO), PS - 1, "expected 16384"),
    (N - 1, len(INFO), PS, "expected"),
    (0, len(INFO) + 1, PS, "total_size"),
    (2, len(INFO), PS, "never requested"),
], ids=["past-end", "negative", "too-long", "too-short", "last-too-long", "total-size",
        "unrequested"])
def test_hostile_data_is_the_peers_fault(index: int, total: int, size: int, why: str) -> None:
    f: MetadataFetch[str] = MetadataFetch(HASH, max_outstanding=2)
    f.add_peer("a", len(INFO))
    f.add_peer("b", len(INFO))
    assert requests(f, "a", 0.0) == [0, 1]
    assert requests(f, "b", 0.0) == [2, 3]
    with pytest.raises(RemoteProtocolError, match=why):
        f.data("a", index, total, b"x" * size)
    # The offender is forgotten, and its pieces go to others.
    assert not {r.peer: r for r in f.report()}["a"].connected
    assert f.next_request("a", 0.0) is None
    serve(f, "b", [2, 3])
    assert requests(f, "b", 0.0) == [0, 1]


def test_peer_table_is_bounded() -> None:
    f: MetadataFetch[str] = MetadataFetch(HASH, max_peers=2)
    assert f.add_peer("a", len(INFO)) and f.add_peer("b", len(INFO))
    assert not f.add_peer("c", len(INFO))  # full of connected peers
    f.peer_gone("a")
    assert f.add_peer("c", len(INFO))  # the gone one made room
    assert [r.peer for r in f.report()] == ["b", "c"]


def test_describe_peers_names_them() -> None:
    f: MetadataFetch[tuple[str, int]] = MetadataFetch(HASH, max_outstanding=1)
    assert f.describe_peers() == "no peer offered the metadata"
    f.add_peer(("10.0.0.1", 6881), len(INFO))
    f.add_peer(("::1", 6882), len(INFO))
    f.add_peer(("10.0.0.3", 6883), len(INFO))
    [p] = requests(f, ("10.0.0.1", 6881), 0.0)
    f.reject(("10.0.0.1", 6881), p, 0.0)
    [p] = requests(f, ("::1", 6882), 0.0)
    f.data(("::1", 6882), p, len(INFO), piece(p))
    text = f.describe_peers(limit=2)
    assert text == (f"peers tried: 10.0.0.1:6881 (size {len(INFO)}, 0 pieces, 1 rejects);"
                    f" [::1]:6882 (size {len(INFO)}, 1 pieces) and 1 more")


def test_info_hash_must_be_20_bytes() -> None:
    with pytest.raises(ValueError):
        MetadataFetch(b"short")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]),
                          st.sampled_from(["ask", "answer", "reject", "tick", "gone", "back"])),
                max_size=80))
def test_honest_peers_in_any_order_never_get_banned(steps: list[tuple[str, str]]) -> None:
    """Whatever the interleaving of requests, answers, rejects, time-outs and reconnects, honest
    peers give the right metadata and nobody is banned."""
    f: MetadataFetch[str] = MetadataFetch(HASH)
    pending: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    now = 0.0
    for p in pending:
        f.add_peer(p, len(INFO))

    def answer(p: str) -> None:
        if pending[p]:
            i = pending[p].pop(0)
            out = SERVER.answer(i)
            assert isinstance(out, MetadataData)
            f.data(p, out.piece, out.total_size, out.data)

    for p, action in steps:
        if action == "ask":
            pending[p].extend(requests(f, p, now))
        elif action == "answer":
            answer(p)
        elif action == "reject" and pending[p]:
            f.reject(p, pending[p].pop(0), now)
        elif action == "tick":
            now += 2.0
            f.timed_out(now)
        elif action == "gone":
            f.peer_gone(p)
            pending[p] = []
        elif action == "back":
            f.add_peer(p, len(INFO))
    # Then everyone answers everything, with time moving on.
    for _ in range(200):
        if f.done:
            break
        now += REJECT_BACKOFF
        f.timed_out(now)
        for p in pending:
            f.add_peer(p, len(INFO))
            pending[p].extend(requests(f, p, now))
            while pending[p]:
                answer(p)
    if any(r.connected and r.rejects + r.timeouts < MAX_STRIKES for r in f.report()) or f.done:
        assert f.result == INFO
    assert f.banned == frozenset()


# -- from metadata to a torrent -------------------------------------------------------------


def _fetch_all(info: bytes) -> bytes:
    """Fetch ``info`` from two peers served by a MetadataServer, through the wire codec."""
    server = MetadataServer(info)
    f: MetadataFetch[str] = MetadataFetch(hashlib.sha1(info).digest())
    for p in ("a", "b"):
        assert f.add_peer(p, server.metadata_size)
    while not f.done:
        progressed = False
        for p in ("a", "b"):
            for i in requests(f, p, 0.0):
                req = decode_metadata_message(MetadataRequest(i).encode())
                assert isinstance(req, MetadataRequest)
                msg = decode_metadata_message(server.answer(req.piece).encode())
                assert isinstance(msg, MetadataData)
                f.data(p, msg.piece, msg.total_size, msg.data)
                progressed = True
        assert progressed
    assert f.result is not None
    return f.result


def test_round_trip_with_a_real_torrent(tmp_path: Path) -> None:
    src = tmp_path / "payload"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(b"a" * 100_000)
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * 300)
    data = create_torrent(str(src), piece_length=16384,
                          trackers=[["http://127.0.0.1:1/announce"]], creation_date=1)
    meta = metainfo.parse(data)
    uri = magnet_uri(meta, trackers=["udp://t1.example:80", "http://t2.example/a"],
                     peers=[("127.0.0.1", 6881)], web_seeds=["http://w.example/"])
    mag = parse_magnet(uri)
    info = _fetch_all(meta.info_bytes)
    assert info == meta.info_bytes
    got = metainfo_from_info(info, mag)
    assert got.info_hash == meta.info_hash and got.info_bytes == meta.info_bytes
    assert got.files == meta.files and got.piece_hashes == meta.piece_hashes
    assert got.name == "payload" and got.multi_file
    assert got.trackers == (("udp://t1.example:80",), ("http://t2.example/a",))
    saved = torrent_bytes(info, mag)
    again = metainfo.parse(saved)
    assert again.info_hash == meta.info_hash and again.trackers == got.trackers
    top = bencoding.decode(saved)
    assert top[b"announce"] == b"udp://t1.example:80"
    assert top[b"url-list"] == [b"http://w.example/"]
    assert list(top) == sorted(top)  # canonical key order


def test_torrent_without_trackers_and_a_larger_info() -> None:
    info = _info(40_000)  # 800 KB, 49 metadata pieces
    mag = Magnet(info_hash=hashlib.sha1(info).digest())
    assert _fetch_all(info) == info
    meta = metainfo_from_info(info, mag)
    assert meta.trackers == () and meta.num_pieces == 40_000
    assert b"announce" not in bencoding.decode(torrent_bytes(info, mag))


def test_unsafe_path_in_fetched_metadata_is_refused_like_a_torrent_file() -> None:
    top = tg.base_multi()
    top[b"info"][b"files"][1][b"path"] = [b"..", b"etc", b"passwd"]
    info = bencoding.encode(top[b"info"])
    fetched = _fetch_all(info)  # it hashes right: the check comes after assembly
    with pytest.raises(InvalidTorrent) as exc:
        metainfo_from_info(fetched, Magnet(info_hash=hashlib.sha1(info).digest()))
    assert "info.files[1].path[0]" in str(exc.value) and "'..'" in str(exc.value)
    assert exc.value.exit_code == 3


def test_metadata_of_another_torrent_is_refused() -> None:
    with pytest.raises(InvalidTorrent, match="info-hash"):
        metainfo_from_info(INFO, Magnet(info_hash=bytes(20)))


@pytest.mark.parametrize("info", [INFO + b"3:zzzi1e", b"i5e", b"d1:a", b"le"])
def test_info_bytes_that_are_not_one_dict_are_refused(info: bytes) -> None:
    with pytest.raises(InvalidTorrent, match="invalid torrent: info"):
        metainfo_from_info(info, Magnet(info_hash=hashlib.sha1(info).digest()))
    with pytest.raises(InvalidTorrent, match="invalid torrent: info"):
        torrent_bytes(info)


# -- v2 magnets (BEP 52) ------------------------------------------------------------------


def _v2(tmp_path: Path, version: str) -> metainfo.Metainfo:
    d = tmp_path / "d"
    d.mkdir()
    (d / "big").write_bytes(bytes(range(256)) * 300)  # 76,800 bytes: 5 pieces of 16 KiB
    (d / "small").write_bytes(b"x" * 10)
    return metainfo.parse(create_torrent(str(d), piece_length=16384, version=version))


def test_a_v2_fetch_checks_the_sha256_of_the_metadata(tmp_path: Path) -> None:
    meta = _v2(tmp_path, "v2")
    v2 = meta.info_hash_v2
    assert v2 is not None
    f: MetadataFetch[str] = MetadataFetch(v2[:20], info_hash_v2=v2)
    assert f.add_peer("a", len(meta.info_bytes))
    assert requests(f, "a", 0.0) == [0]
    assert isinstance(serve(f, "a", [0], meta.info_bytes), MetadataComplete)
    # the same bytes but one: no hash matches, the lone sender is banned
    bad = meta.info_bytes[:-2] + b"Xe"
    g: MetadataFetch[str] = MetadataFetch(v2[:20], info_hash_v2=v2)
    assert g.add_peer("b", len(bad))
    requests(g, "b", 0.0)
    assert isinstance(serve(g, "b", [0], bad), MetadataHashFailed) and g.banned == {"b"}
    with pytest.raises(ValueError, match="32 bytes"):
        MetadataFetch(v2[:20], info_hash_v2=v2[:20])


def test_metainfo_from_a_v2_magnet_needs_and_checks_its_layers(tmp_path: Path) -> None:
    meta = _v2(tmp_path, "v2")
    m = parse_magnet(magnet_uri(meta))
    assert m.v2_only
    with pytest.raises(InvalidTorrent, match="piece layers"):
        metainfo_from_info(meta.info_bytes, m)  # the 5-piece file cannot be verified
    got = metainfo_from_info(meta.info_bytes, m, piece_layers=meta.piece_layers)
    assert got.info_hash == m.info_hash and got.piece_layers == meta.piece_layers
    layers = bencoding.decode(meta.piece_layers or b"")
    lie = bencoding.encode({k: bytes(32) + v[32:] for k, v in layers.items()})
    with pytest.raises(InvalidTorrent, match="does not hash"):
        metainfo_from_info(meta.info_bytes, m, piece_layers=lie)
    other = Magnet(info_hash=bytes(20), info_hash_v2=bytes(20) + bytes(12))
    with pytest.raises(InvalidTorrent, match="v2 info-hash"):
        metainfo_from_info(meta.info_bytes, other, piece_layers=meta.piece_layers)


def test_a_hybrid_link_must_match_both_hashes(tmp_path: Path) -> None:
    meta = _v2(tmp_path, "hybrid")
    m = parse_magnet(magnet_uri(meta))
    assert not m.v2_only and m.info_hash_v2 == meta.info_hash_v2
    assert metainfo_from_info(meta.info_bytes, m).info_hash == meta.info_hash  # by v1
    wrong_v2 = Magnet(info_hash=meta.info_hash, info_hash_v2=bytes(32))
    with pytest.raises(InvalidTorrent, match="v2 info-hash"):
        metainfo_from_info(meta.info_bytes, wrong_v2)
