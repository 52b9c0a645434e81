"""The sans-IO core of web seeds (torrent/webseed.py), and where web seeds come from.

URL building (BEP 19), range planning per file segment with pad files left
out, response validation, and the back-off / drop bookkeeping with the clock
passed in; then url-list in a .torrent, ws= in a magnet and --web-seed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pytest
import torrentgen as tg

from torrent import bencoding, metainfo
from torrent.errors import UsageError
from torrent.magnet import parse_magnet
from torrent.metadata import metainfo_from_info
from torrent.options import Options
from torrent.webseed import (
    BACKOFF_BASE,
    BACKOFF_MAX,
    MAX_BUSY,
    MAX_FAILURES,
    MAX_REQUEST_BYTES,
    MAX_RETRY_AFTER,
    MAX_WEB_SEEDS,
    MAX_WHOLE_FILE_BODY,
    RangePlanner,
    SeedState,
    Segment,
    VerdictKind,
    check_response,
    checked_url,
    file_url,
    parse_retry_after,
    request_pieces,
    web_seed_urls,
)


@dataclass(frozen=True)
class F:
    path: str
    length: int
    offset: int
    pad: bool = False


def files(*spec: tuple[str, int] | int) -> list[F]:
    """Files from ``(path, length)``; a bare int is a pad file of that length."""
    out, off = [], 0
    for k, s in enumerate(spec):
        if isinstance(s, int):
            out.append(F(f"t/.pad/{k}", s, off, True))
            off += s
        else:
            out.append(F(s[0], s[1], off))
            off += s[1]
    return out


# -- URLs ----------------------------------------------------------------------------


@pytest.mark.parametrize("url,ok", [
    ("http://h/", True), ("https://h/x", True), ("  http://h/f  ", True), ("HTTP://H/", True),
    ("ftp://h/", False), ("udp://h:1", False), ("http://", False), ("http://h/a b", False),
    ("http://h/\x00", False), ("http://h/" + "a" * 5000, False), ("", False),
])
def test_checked_url(url: str, ok: bool) -> None:
    assert (checked_url(url) is not None) is ok
    if ok:
        assert checked_url(url) == url.strip()


@pytest.mark.parametrize("base,multi,path,want", [
    # single file: a URL not ending in / is the file itself
    ("http://h/dir/file.iso", False, "file.iso", "http://h/dir/file.iso"),
    ("http://h/dir/", False, "file.iso", "http://h/dir/file.iso"),
    ("http://h/dir/", False, "a b#c?d%.iso", "http://h/dir/a%20b%23c%3Fd%25.iso"),
    ("http://h/dir/", False, "caf\u00e9.iso", "http://h/dir/caf%C3%A9.iso"),
    # several files: the URL is a directory, the name and path appended
    ("http://h/mirror/", True, "Name/sub/f 1.bin", "http://h/mirror/Name/sub/f%201.bin"),
    ("http://h/mirror", True, "Name/sub/f.bin", "http://h/mirror/Name/sub/f.bin"),
])
def test_file_url_bep19(base: str, multi: bool, path: str, want: str) -> None:
    assert file_url(base, multi, path) == want


# -- range planning ------------------------------------------------------------------


def _tiles(planner: RangePlanner, first: int, count: int) -> None:
    """Segments and pads cover the run exactly, in order, each within its file."""
    p = planner.plan(first, count)
    parts = sorted([(s.offset, s.length, "s") for s in p.segments] +
                   [(o, ln, "p") for o, ln in p.pads])
    pos = p.start
    for off, ln, _kind in parts:
        assert off == pos and ln > 0
        pos += ln
    assert pos == p.end
    for s in p.segments:
        f = planner.files[s.file]
        assert not f.pad
        assert f.offset + s.file_offset == s.offset
        assert s.file_offset + s.length <= f.length


def test_plan_single_file_run_is_one_request_with_a_short_last_piece() -> None:
    pl = 1 << 16
    fs = files(("f", 5 * pl + 123))
    rp = RangePlanner(fs, pl, 5 * pl + 123)
    p = rp.plan(2, 4)  # pieces 2..5, the last one short
    assert p.segments == (Segment(0, 2 * pl, 3 * pl + 123, 2 * pl),)
    assert p.pads == ()
    _tiles(rp, 2, 4)


def test_plan_piece_spanning_files_is_several_requests_and_pads_are_not_requested() -> None:
    pl = 1 << 14
    fs = files(("t/a", 10_000), pl - 10_000, ("t/b", 0), ("t/c", 3 * pl + 5), ("t/d", 7))
    total = sum(f.length for f in fs)
    rp = RangePlanner(fs, pl, total)
    p = rp.plan(0, 1)  # a's bytes, then a's pad: one request
    assert p.segments == (Segment(0, 0, 10_000, 0),)
    assert p.pads == ((10_000, pl - 10_000),)
    last = rp.plan(4, 1)  # c's tail and all of d: two requests
    assert [(s.file, s.file_offset, s.length) for s in last.segments] == \
        [(3, 3 * pl, 5), (4, 0, 7)]
    assert rp.files_of(4, 1) == [3, 4]
    assert list(rp.pieces_of_file(3)) == [1, 2, 3, 4]
    assert list(rp.pieces_of_file(2)) == []  # zero-length: in no piece
    for first in range(5):
        for count in range(1, 6 - first):
            _tiles(rp, first, count)


def test_request_pieces_is_bounded_by_bytes_and_free_slots() -> None:
    assert request_pieces(1 << 20, 100) == MAX_REQUEST_BYTES // (1 << 20)
    assert request_pieces(1 << 20, 3) == 3
    assert request_pieces(64 << 20, 10) == 1  # a piece larger than a request: one at a time
    assert request_pieces(1 << 20, 0) == 0
    assert request_pieces(1 << 20, -4) == 0


# -- responses -----------------------------------------------------------------------

R = {"start": 1000, "length": 500, "file_size": 10_000}


def test_206_with_the_range_asked_for_is_read() -> None:
    v = check_response(206, "bytes 1000-1499/10000", 500, None, **R)
    assert v.kind is VerdictKind.READ and v.skip == 0
    assert check_response(206, "bytes 1000-1499/*", None, None, **R).kind is VerdictKind.READ


@pytest.mark.parametrize("cr,cl,why", [
    ("bytes 1000-1498/10000", 499, "Content-Range"),
    ("bytes 0-499/10000", 500, "Content-Range"),
    ("bytes 1000-1499/9999", 500, "9999"),
    ("bytes 1000-1499/10000", 501, "Content-Length"),
    (None, 500, "Content-Range"),
    ("items 1000-1499/10000", 500, "Content-Range"),
    ("bytes 1000-1499/10000, bytes 5-6/10000", 500, "Content-Range"),
])
def test_206_that_does_not_match_is_an_error(cr: str | None, cl: int, why: str) -> None:
    v = check_response(206, cr, cl, None, **R)
    assert v.kind is VerdictKind.FAIL and why in v.reason


def test_200_instead_of_206() -> None:
    small = check_response(200, None, 10_000, None, **R)
    assert small.kind is VerdictKind.READ and small.skip == 1000  # the whole file, read
    big = MAX_WHOLE_FILE_BODY + 1
    v = check_response(200, None, big, None, start=0, length=100, file_size=big)
    assert v.kind is VerdictKind.FAIL and "no Range support" in v.reason
    assert check_response(200, None, 9_999, None, **R).kind is VerdictKind.FAIL
    assert check_response(200, None, None, None, **R).kind is VerdictKind.FAIL  # chunked


def test_missing_busy_and_other_statuses() -> None:
    assert check_response(404, None, 10, None, **R).kind is VerdictKind.MISSING
    assert check_response(410, None, 10, None, **R).kind is VerdictKind.MISSING
    v = check_response(503, None, 0, "7", **R)
    assert v.kind is VerdictKind.BUSY and v.retry_after == 7.0
    v = check_response(429, None, 0, None, **R)
    assert v.kind is VerdictKind.BUSY and v.retry_after is None
    v = check_response(416, "bytes */10", 0, None, **R)
    assert v.kind is VerdictKind.FAIL and "416" in v.reason
    for status in (301, 403, 500, 502):
        assert check_response(status, None, 0, None, **R).kind is VerdictKind.FAIL


@pytest.mark.parametrize("value,want", [
    (None, None), ("0", 0.0), ("12", 12.0), (" 3 ", 3.0), ("999999999", MAX_RETRY_AFTER),
    ("Wed, 21 Oct 2015 07:28:00 GMT", None), ("-5", None), ("1.5", None), ("9" * 40, None),
])
def test_retry_after(value: str | None, want: float | None) -> None:
    assert parse_retry_after(value) == want


# -- failures and back-off (the clock passed in) -------------------------------------


def test_failures_back_off_exponentially_then_drop() -> None:
    st = SeedState("http://h/")
    assert st.usable(0.0)
    now = 100.0
    for k in range(1, MAX_FAILURES):
        assert st.failed(now, "reset") is False
        wait = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (k - 1))
        assert not st.usable(now + wait - 0.001)
        assert st.usable(now + wait)
        now += wait
    assert st.failed(now, "reset") is True
    assert st.dropped is not None and "reset" in st.dropped
    assert not st.usable(now + 10_000)


def test_a_success_resets_the_count() -> None:
    st = SeedState("http://h/")
    for _ in range(MAX_FAILURES - 1):
        st.failed(0.0, "x")
    st.succeeded()
    for _ in range(MAX_FAILURES - 1):
        assert st.failed(0.0, "x") is False
    assert st.dropped is None


def test_busy_honours_retry_after_and_drops_an_always_busy_seed() -> None:
    st = SeedState("http://h/")
    assert st.busy_answer(10.0, 4.0, "HTTP 503") is False
    assert not st.usable(13.9) and st.usable(14.0)
    assert st.busy_answer(20.0, None, "HTTP 429") is False  # no Retry-After: the back-off
    assert st.usable(20.0 + BACKOFF_BASE * 2)
    dropped = [st.busy_answer(30.0, 0.0, "HTTP 503") for _ in range(MAX_BUSY - 2)]
    assert dropped[-1] is True and dropped.count(True) == 1


def test_missing_files_drop_the_seed_only_when_none_is_left() -> None:
    st = SeedState("http://h/")
    assert st.file_missing(0, 2) is False and st.usable(0.0)
    assert st.file_missing(0, 2) is False  # the same file again
    assert st.file_missing(3, 2) is True and "404" in (st.dropped or "")


def test_ban() -> None:
    st = SeedState("http://h/")
    st.ban("sent piece 3, which failed its hash check")
    assert not st.usable(1e9) and "banned" in (st.dropped or "")


# -- where web seeds come from ------------------------------------------------------


def _with_url_list(value: object) -> metainfo.Metainfo:
    top = tg.base_single()
    top[b"url-list"] = value
    return metainfo.parse(bencoding.encode(top))


def test_url_list_a_string_or_a_list() -> None:
    assert _with_url_list(b"http://a/f.bin").web_seeds == ("http://a/f.bin",)
    m = _with_url_list([b"http://a/", b"ftp://x/", 7, [b"http://nested/"], b"\xff\xfe",
                        b"https://b/", b"http://a/", b""])
    assert m.web_seeds == ("http://a/", "https://b/")  # junk dropped, not refused
    assert _with_url_list(5).web_seeds == ()
    many = _with_url_list([f"http://m{k}/".encode() for k in range(MAX_WEB_SEEDS + 50)])
    assert len(many.web_seeds) == MAX_WEB_SEEDS
    assert metainfo.parse(bencoding.encode(tg.base_single())).web_seeds == ()
    assert m.to_json_dict()["web_seeds"] == ["http://a/", "https://b/"]


def test_build_writes_url_list() -> None:
    data = metainfo.build(name="f", files=None, length=100, piece_length=1 << 14,
                          piece_hashes=tg.fake_hashes(1), web_seeds=["http://w/f"])
    assert metainfo.parse(data).web_seeds == ("http://w/f",)


def test_magnet_ws_reaches_the_torrent() -> None:
    top = tg.base_single()
    info = bencoding.encode(top[b"info"])
    ih = hashlib.sha1(info).hexdigest()
    mag = parse_magnet(f"magnet:?xt=urn:btih:{ih}&ws=http%3A%2F%2Fw%2Ffile.bin")
    assert metainfo_from_info(info, mag).web_seeds == ("http://w/file.bin",)


def test_web_seed_option() -> None:
    assert Options(web_seeds=["http://a/"]).web_seeds == ("http://a/",)
    with pytest.raises(UsageError, match="web seed 'ftp://a/'"):
        Options(web_seeds=("ftp://a/",))
    with pytest.raises(UsageError, match="at most"):
        Options(web_seeds=tuple(f"http://m{k}/" for k in range(MAX_WEB_SEEDS + 1)))
    # the torrent's first, then the option's, without duplicates, bounded
    assert web_seed_urls(("http://a/", "bad"), ("http://b/", "http://a/")) == \
        ("http://a/", "http://b/")
    assert len(web_seed_urls([f"http://m{k}/" for k in range(2 * MAX_WEB_SEEDS)])) == \
        MAX_WEB_SEEDS
