"""``fasttorrent daemon``: its HTTP/JSON control API, its state directory, its token, its CLI.

The API is driven over a real loopback socket by aiohttp's client, against
:class:`~torrent.daemon.Daemon` on port 0; the engine behind it is the test
double of tests/helpers/fakeengine.py (it reads magnets and .torrents with
the real parsers and fetches nothing), so every byte of HTTP, every status
code, the token check, the body limits and the state records are the real
ones.  The CLI runs as a process with the same double as its engine
(tests/helpers/daemonrun.py): start, add, SIGTERM, restart with the torrent
restored.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from conftest import require_module
from helpers.fakeengine import FakeEngine
from torrentgen import base_single

from torrent import bencoding, metainfo
from torrent.daemon import (
    MAX_BODY,
    MAX_TORRENTS,
    AlreadyAdded,
    Daemon,
    TorrentSpec,
    _make_engine,
    bind_listen,
    load_state,
    make_app,
    read_token,
    resolve_save_path,
    restore,
)
from torrent.daemonstate import MAX_RECORD_SIZE, RECORD_VERSION, StateDir
from torrent.errors import DiskFull, UsageError
from torrent.magnet import MAX_MAGNET_LENGTH, magnet_uri
from torrent.options import Options

pytestmark = pytest.mark.timeout(120)

TOKEN = "0123456789abcdef-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: Bound on each test's loop (seconds); a request on loopback takes milliseconds.
STEP = 30.0
#: Bound on one CLI process's start and stop.
CLI_TIMEOUT = 30.0
IH1 = "11" * 20
MAGNET1 = magnet_uri(bytes.fromhex(IH1), name="first")
MAGNET2 = magnet_uri(bytes.fromhex("22" * 20), name="second")
HERE = Path(__file__).resolve().parent

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, STEP))


def torrent_bytes() -> bytes:
    return bencoding.encode(base_single())


@contextlib.asynccontextmanager
async def served(engine: FakeEngine, root: Path, state: StateDir | None = None,
                 log: list[str] | None = None) -> AsyncIterator[aiohttp.ClientSession]:
    """The daemon over ``engine`` on a free loopback port, and a client session carrying
    the token (a request may override its headers)."""
    sock = bind_listen("127.0.0.1:0")
    d = Daemon(engine, TOKEN, sock, download_dir=str(root), state=state,
               log=(log if log is not None else []).append)
    await d.start()
    try:
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{d.port}", headers=AUTH,
                                         timeout=aiohttp.ClientTimeout(total=STEP)) as s:
            yield s
    finally:
        await d.close()


async def call(s: aiohttp.ClientSession, method: str, path: str,
               **kw: Any) -> tuple[int, Any]:
    async with s.request(method, path, **kw) as r:
        body = await r.read()
        if r.content_type == "application/json":
            return r.status, json.loads(body)
        return r.status, body.decode()


# -- the endpoints ---------------------------------------------------------------------------
def test_add_by_magnet_then_list_get_pause_resume_delete(tmp_path: Path) -> None:
    eng = FakeEngine(download_dir=str(tmp_path))

    async def go() -> None:
        async with served(eng, tmp_path) as s:
            assert await call(s, "POST", "/api/v1/torrents", json={"magnet": MAGNET1}) \
                == (200, {"info_hash": IH1})
            assert eng.calls == [("add", TorrentSpec(magnet=MAGNET1))]
            st, listed = await call(s, "GET", "/api/v1/torrents")
            assert st == 200 and [t["info_hash"] for t in listed] == [IH1]
            assert listed[0] == {"info_hash": IH1, "name": "first", "state": "downloading",
                                 "progress": 0.25, "size": 4096, "bytes_done": 1024,
                                 "download_rate": 100.0, "upload_rate": 5.0, "peers": 3,
                                 "save_path": str(tmp_path), "error": None}
            st, one = await call(s, "GET", f"/api/v1/torrents/{IH1.upper()}")
            assert (st, one) == (200, listed[0])
            st, paused = await call(s, "POST", f"/api/v1/torrents/{IH1}/pause")
            assert (st, paused["state"]) == (200, "paused")
            st, resumed = await call(s, "POST", f"/api/v1/torrents/{IH1}/resume")
            assert (st, resumed["state"]) == (200, "downloading")
            assert await call(s, "DELETE", f"/api/v1/torrents/{IH1}?delete_data=true") \
                == (200, {"info_hash": IH1})
            assert eng.calls[1:] == [("pause", IH1), ("resume", IH1), ("remove", IH1, True)]
            st, err = await call(s, "GET", f"/api/v1/torrents/{IH1}")
            assert st == 404 and IH1 in err["error"]
            assert await call(s, "GET", "/api/v1/torrents") == (200, [])

    run(go())


def test_add_by_base64_torrent_with_save_path_select_and_paused(tmp_path: Path) -> None:
    data = torrent_bytes()
    ih = metainfo.parse(data).info_hash_hex
    # wrapped as base64(1) wraps it: the line breaks are taken
    b64 = "\n".join(textwrap.wrap(base64.b64encode(data).decode(), 76)) + "\n"
    eng = FakeEngine(download_dir=str(tmp_path))

    async def go() -> None:
        async with served(eng, tmp_path) as s:
            body = {"torrent": b64, "save_path": "sub/dir", "select": "0", "paused": True}
            assert await call(s, "POST", "/api/v1/torrents", json=body) \
                == (200, {"info_hash": ih})
            st, got = await call(s, "GET", f"/api/v1/torrents/{ih}")
            assert (st, got["state"]) == (200, "paused")
            # the default added with delete_data left out: the data stays
            assert await call(s, "DELETE", f"/api/v1/torrents/{ih}") == (200, {"info_hash": ih})

    run(go())
    spec = eng.calls[0][1]
    assert spec == TorrentSpec(torrent=data, save_path=str(tmp_path / "sub" / "dir"),
                               select="0", paused=True)
    assert eng.calls[1] == ("remove", ih, False)


def test_add_by_url_and_the_engine_s_refusals(tmp_path: Path) -> None:
    eng = FakeEngine()

    async def go() -> None:
        async with served(eng, tmp_path) as s:
            st, got = await call(s, "POST", "/api/v1/torrents",
                                 json={"url": "https://example.org/a.torrent"})
            assert st == 200 and len(got["info_hash"]) == 40
            # the engine's AlreadyAdded: 409
            assert (await call(s, "POST", "/api/v1/torrents", json={"magnet": MAGNET1}))[0] \
                == 200
            st, err = await call(s, "POST", "/api/v1/torrents", json={"magnet": MAGNET1})
            assert st == 409 and "already added" in err["error"]
            # the engine's InvalidTorrent (base64 of a file that is no torrent): 400
            st, err = await call(s, "POST", "/api/v1/torrents",
                                 json={"torrent": base64.b64encode(b"d4:infoi1ee").decode()})
            assert st == 400 and "info" in err["error"]
            # a magnet the engine's parser refuses (no xt): 400 naming the parameter
            st, err = await call(s, "POST", "/api/v1/torrents", json={"magnet": "magnet:?dn=x"})
            assert st == 400 and "xt" in err["error"]
            # an engine bug: 500 in JSON, and the daemon goes on serving
            eng.fail_next = RuntimeError("boom")
            st, err = await call(s, "POST", "/api/v1/torrents", json={"magnet": MAGNET2})
            assert st == 500 and "RuntimeError" in err["error"]
            assert len((await call(s, "GET", "/api/v1/torrents"))[1]) == 2

    run(go())


def test_the_token_is_required_everywhere(tmp_path: Path) -> None:
    eng = FakeEngine()

    async def go() -> None:
        async with served(eng, tmp_path) as s:
            for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong-token"},
                            {"Authorization": f"Bearer {TOKEN}x"},
                            {"Authorization": f"Basic {TOKEN}"},
                            {"Authorization": f"Bearer {TOKEN[:-1]}"}):
                for method, path, kw in (
                        ("POST", "/api/v1/torrents", {"json": {"magnet": MAGNET1}}),
                        ("GET", "/api/v1/torrents", {}),
                        ("GET", f"/api/v1/torrents/{IH1}", {}),
                        ("DELETE", f"/api/v1/torrents/{IH1}", {}),
                        ("GET", "/metrics", {}),
                        ("GET", "/no/such/endpoint", {})):
                    async with s.request(method, path, headers=headers, **kw) as r:
                        assert r.status == 401, (headers, method, path)
                        assert "token" in (await r.json())["error"]
                        assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert eng.calls == []
            # the scheme's name is case-insensitive (RFC 7235)
            async with s.get("/api/v1/torrents",
                             headers={"Authorization": f"bearer {TOKEN}"}) as r:
                assert r.status == 200

    run(go())


BAD_BODIES: list[tuple[str, bytes | dict[str, Any] | list[Any], str]] = [
    ("bad JSON", b'{"magnet": ', "JSON"),
    ("not UTF-8", b'{"magnet": "\xff"}', "JSON"),
    ("nested past the parser", b"[" * 100_000, "JSON"),
    ("not an object", ["magnet"], "object"),
    ("no source", {"save_path": "x"}, "exactly one"),
    ("two sources", {"magnet": MAGNET1, "url": "http://example.org/a.torrent"},
     "exactly one"),
    ("bad base64", {"torrent": "not*base64"}, "torrent"),
    ("non-ASCII base64", {"torrent": "ZGF0YQ\u00e9=="}, "torrent"),
    ("empty torrent", {"torrent": ""}, "torrent"),
    ("magnet not text", {"magnet": 5}, "magnet"),
    ("not a magnet", {"magnet": "http://example.org/"}, "magnet"),
    ("magnet too long", {"magnet": "magnet:?" + "x" * MAX_MAGNET_LENGTH}, "magnet"),
    ("url not http", {"url": "ftp://example.org/a.torrent"}, "url"),
    ("url with a space", {"url": "http://example.org/a b.torrent"}, "url"),
    ("save_path not text", {"magnet": MAGNET1, "save_path": ["a"]}, "save_path"),
    ("save_path with NUL", {"magnet": MAGNET1, "save_path": "a\u0000b"}, "save_path"),
    ("save_path too long", {"magnet": MAGNET1, "save_path": "a/" * 3000}, "save_path"),
    ("select malformed", {"magnet": MAGNET1, "select": "1,x"}, "select"),
    ("select backwards", {"magnet": MAGNET1, "select": "5-1"}, "select"),
    ("select not text", {"magnet": MAGNET1, "select": [1]}, "select"),
    ("paused not a boolean", {"magnet": MAGNET1, "paused": "yes"}, "paused"),
    ("unknown field", {"magnet": MAGNET1, "savepath": "x"}, "savepath"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_a_bad_body_is_400_naming_the_field(tmp_path: Path, case: str,
                                             body: bytes | dict[str, Any] | list[Any],
                                             field: str) -> None:
    eng = FakeEngine()

    async def go() -> None:
        async with served(eng, tmp_path) as s:
            kw: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
            st, err = await call(s, "POST", "/api/v1/torrents", **kw)
            assert st == 400, err
            assert field in err["error"] and "\n" not in err["error"]

    run(go())
    assert eng.calls == []


def test_an_oversized_body_is_413_before_it_is_read_or_once_past_the_limit(
        tmp_path: Path) -> None:
    eng = FakeEngine()
    big = b" " * (MAX_BODY + 1)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the read limit
        piece = b" " * (1 << 20)
        for _ in range(MAX_BODY // len(piece) + 2):
            yield piece

    async def go() -> None:
        async with served(eng, tmp_path) as s:
            st, err = await call(s, "POST", "/api/v1/torrents", data=big)
            assert st == 413 and "body" in err["error"]
            st, err = await call(s, "POST", "/api/v1/torrents", data=chunks())
            assert st == 413 and "body" in err["error"]
            # the daemon serves on
            assert (await call(s, "GET", "/api/v1/torrents"))[0] == 200

    run(go())
    assert eng.calls == []


def test_a_torrent_of_the_largest_size_fits_the_body(tmp_path: Path) -> None:
    """The bound lets through what it is for: a 64 MiB .torrent (base64, wrapped)."""
    from torrent.metainfo import MAX_TORRENT_SIZE

    raw = base64.encodebytes(b"\0" * MAX_TORRENT_SIZE).decode()  # 76-column lines
    body = json.dumps({"torrent": raw, "save_path": "x" * 4000, "select": "0"}).encode()
    assert len(body) <= MAX_BODY
    eng = FakeEngine()

    async def go() -> tuple[int, Any]:
        async with served(eng, tmp_path) as s:
            return await call(s, "POST", "/api/v1/torrents", data=body,
                              headers={**AUTH, "Content-Type": "application/json"})

    st, err = run(go())
    # past the body limit and the field checks, the engine read it and refused it
    assert st == 400 and "invalid torrent" in err["error"]
    assert len(eng.calls) == 1 and len(eng.calls[0][1].torrent) == MAX_TORRENT_SIZE


def test_hashes_unknown_torrents_and_delete_data(tmp_path: Path) -> None:
    eng = FakeEngine()

    async def go() -> None:
        async with served(eng, tmp_path) as s:
            await call(s, "POST", "/api/v1/torrents", json={"magnet": MAGNET1})
            for bad in ("xyz", "1" * 39, "1" * 41, "g" * 40):
                for method, path in (("GET", f"/api/v1/torrents/{bad}"),
                                     ("POST", f"/api/v1/torrents/{bad}/pause"),
                                     ("POST", f"/api/v1/torrents/{bad}/resume"),
                                     ("DELETE", f"/api/v1/torrents/{bad}")):
                    st, err = await call(s, method, path)
                    assert st == 400 and "info_hash" in err["error"], (method, path)
            unknown = "33" * 20
            for method, path in (("GET", f"/api/v1/torrents/{unknown}"),
                                 ("POST", f"/api/v1/torrents/{unknown}/pause"),
                                 ("POST", f"/api/v1/torrents/{unknown}/resume"),
                                 ("DELETE", f"/api/v1/torrents/{unknown}?delete_data=false")):
                st, err = await call(s, method, path)
                assert st == 404 and unknown in err["error"], (method, path)
            for query in ("delete_data=yes", "delete_data=1", "delete_data=",
                          "delete_data=True", "delete_data=true&delete_data=false"):
                st, err = await call(s, "DELETE", f"/api/v1/torrents/{IH1}?{query}")
                assert st == 400 and "delete_data" in err["error"], query
            # the refusals never reached the engine; the unknown hash did (and was not held)
            assert [c[0] for c in eng.calls] == ["add", "pause", "resume", "remove"]
            assert all(c[1] == unknown for c in eng.calls[1:]) and IH1 in eng.held
            # an endpoint or a method that does not exist: JSON too
            st, err = await call(s, "GET", "/api/v2/torrents")
            assert st == 404 and "error" in err
            async with s.put("/api/v1/torrents") as r:
                assert r.status == 405 and "error" in await r.json()
                assert "POST" in r.headers["Allow"]

    run(go())


def test_metrics_are_prometheus_text_behind_the_token(tmp_path: Path) -> None:
    require_module("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    eng = FakeEngine()

    async def go() -> tuple[int, str, str]:
        async with served(eng, tmp_path) as s:
            await call(s, "POST", "/api/v1/torrents", json={"magnet": MAGNET1})
            await call(s, "POST", "/api/v1/torrents", json={"magnet": MAGNET2})
            async with s.get("/metrics") as r:
                return r.status, r.headers["Content-Type"], await r.text()

    st, ctype, text = run(go())
    assert st == 200 and ctype.startswith("text/plain; version=0.0.4")
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    done = {s.labels["info_hash"]: s.value for s in fams["fasttorrent_done_bytes"].samples}
    assert done == {IH1: 1024.0, "22" * 20: 1024.0}
    assert fams["fasttorrent_downloaded_bytes"].type == "counter"


def test_more_than_max_torrents_is_507(tmp_path: Path) -> None:
    eng = FakeEngine(preload=MAX_TORRENTS)

    async def go() -> None:
        async with served(eng, tmp_path) as s:
            st, err = await call(s, "POST", "/api/v1/torrents", json={"magnet": MAGNET1})
            assert st == 507 and str(MAX_TORRENTS) in err["error"]

    run(go())
    assert eng.calls == []


def test_a_spec_s_json_form_round_trips() -> None:
    data = torrent_bytes()
    for spec in (TorrentSpec(magnet=MAGNET1), TorrentSpec(torrent=data, save_path="/a/b",
                                                          select="0,2-3", paused=True),
                 TorrentSpec(url="https://example.org/x.torrent", paused=True)):
        assert TorrentSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    # a null is the field left out
    assert TorrentSpec.from_json({"magnet": MAGNET1, "torrent": None, "save_path": None,
                                  "select": None, "paused": None}) == TorrentSpec(magnet=MAGNET1)


# -- save paths ------------------------------------------------------------------------------
def test_save_path_stays_under_the_download_dir(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    real = os.path.realpath(root)
    assert resolve_save_path("", str(root)) == ""
    assert resolve_save_path("a/b", str(root)) == os.path.join(real, "a", "b")
    assert resolve_save_path("a/../b", str(root)) == os.path.join(real, "b")
    assert resolve_save_path(str(root / "c"), str(root)) == os.path.join(real, "c")
    assert resolve_save_path(".", str(root)) == real
    for bad in ("..", "../outside", "a/../../x", "/etc", str(outside), "link", "link/x",
                str(root) + "x"):
        with pytest.raises(UsageError, match=r"save_path: .* outside the download directory"):
            resolve_save_path(bad, str(root))

    eng = FakeEngine()

    async def go() -> None:
        async with served(eng, root) as s:
            for bad in ("../outside", "/etc", "link/x"):
                st, err = await call(s, "POST", "/api/v1/torrents",
                                     json={"magnet": MAGNET1, "save_path": bad})
                assert st == 400 and "save_path" in err["error"], bad

    run(go())
    assert eng.calls == []


# -- the state directory ---------------------------------------------------------------------
def _record(state: Path, ih: str) -> dict[str, Any]:
    return json.loads((state / "torrents" / f"{ih}.json").read_text())  # type: ignore[no-any-return]


def test_records_follow_add_pause_resume_delete(tmp_path: Path) -> None:
    sdir = tmp_path / "state"
    state = StateDir(str(sdir))
    data = torrent_bytes()
    ih2 = metainfo.parse(data).info_hash_hex
    eng = FakeEngine()

    async def go() -> None:
        async with served(eng, tmp_path, state) as s:
            await call(s, "POST", "/api/v1/torrents", json={"magnet": MAGNET1, "select": "1-2"})
            rec = _record(sdir, IH1)
            assert rec == {"version": RECORD_VERSION, "info_hash": IH1, "magnet": MAGNET1,
                           "save_path": "", "select": "1-2", "paused": False}
            assert (sdir / "torrents" / f"{IH1}.json").stat().st_mode & 0o077 == 0
            await call(s, "POST", f"/api/v1/torrents/{IH1}/pause")
            assert _record(sdir, IH1)["paused"] is True
            await call(s, "POST", f"/api/v1/torrents/{IH1}/resume")
            assert _record(sdir, IH1)["paused"] is False
            await call(s, "POST", "/api/v1/torrents",
                       json={"torrent": base64.b64encode(data).decode(), "save_path": "t"})
            assert base64.b64decode(_record(sdir, ih2)["torrent"]) == data
            await call(s, "DELETE", f"/api/v1/torrents/{IH1}")
            assert not (sdir / "torrents" / f"{IH1}.json").exists()

    run(go())
    assert sorted(os.listdir(sdir / "torrents")) == [f"{ih2}.json"]  # no temporary left
    assert (sdir / "torrents").stat().st_mode & 0o077 == 0
    assert load_state(str(sdir)) == [
        TorrentSpec(torrent=data, save_path=os.path.join(os.path.realpath(tmp_path), "t"))]


def test_restart_restores_every_record_and_skips_corrupt_ones(tmp_path: Path) -> None:
    sdir = tmp_path / "state"
    root = tmp_path / "dl"
    root.mkdir()
    first = StateDir(str(sdir))
    first.save(IH1, TorrentSpec(magnet=MAGNET1, paused=True))
    ih2 = "22" * 20
    first.save(ih2, TorrentSpec(magnet=MAGNET2, save_path=str(root / "x"), select="0"))
    d = sdir / "torrents"
    corrupt = {
        "aa" * 20: b"{not json",
        "bb" * 20: json.dumps({"version": 99, "info_hash": "bb" * 20,
                               "magnet": MAGNET1}).encode(),
        "cc" * 20: json.dumps({"version": 1, "info_hash": "dd" * 20,
                               "magnet": MAGNET1}).encode(),
        "ee" * 20: json.dumps({"version": 1, "info_hash": "ee" * 20,
                               "magnet": MAGNET1, "paused": "no"}).encode(),
        "ff" * 20: b"[" * 100_000,
    }
    for ih, raw in corrupt.items():
        (d / f"{ih}.json").write_bytes(raw)
    (d / "notes.txt").write_text("mine")  # not a record's name: left alone
    (d / ".tmp-leftover").write_bytes(b"half a record")  # a crash's: removed
    lines: list[str] = []
    eng = FakeEngine()
    n = run(restore(eng, StateDir(str(sdir), lines.append), str(root), lines.append))
    assert n == 2
    assert eng.specs == {IH1: TorrentSpec(magnet=MAGNET1, paused=True),
                         ih2: TorrentSpec(magnet=MAGNET2,
                                          save_path=os.path.realpath(root / "x"), select="0")}
    assert eng.held[IH1].state == "paused"
    assert len(lines) == len(corrupt), lines
    for ih in corrupt:
        [line] = [ln for ln in lines if ih in ln]
        assert line.startswith("warning: state record ") and line.endswith("; skipped")
        assert "Traceback" not in line and "\n" not in line
    assert not (d / ".tmp-leftover").exists() and (d / "notes.txt").exists()
    assert len(list(d.glob("*.json"))) == 2 + len(corrupt)  # skipped records are kept


def test_a_record_outside_the_new_download_dir_is_not_restored(tmp_path: Path) -> None:
    sdir = tmp_path / "state"
    StateDir(str(sdir)).save(IH1, TorrentSpec(magnet=MAGNET1, save_path=str(tmp_path / "old")))
    (tmp_path / "new").mkdir()
    lines: list[str] = []
    eng = FakeEngine()
    assert run(restore(eng, StateDir(str(sdir)), str(tmp_path / "new"), lines.append)) == 0
    assert eng.calls == []
    assert len(lines) == 1 and IH1 in lines[0] and "outside the download directory" in lines[0]
    assert (sdir / "torrents" / f"{IH1}.json").exists()


def test_a_record_past_its_bound_is_skipped(tmp_path: Path) -> None:
    sdir = tmp_path / "state"
    d = sdir / "torrents"
    d.mkdir(parents=True)
    with open(d / f"{IH1}.json", "wb") as f:
        f.truncate(MAX_RECORD_SIZE + 1)  # sparse: no disk used
    lines: list[str] = []
    assert load_state(str(sdir), lines.append) == []
    assert len(lines) == 1 and f"more than {MAX_RECORD_SIZE} bytes" in lines[0]


def test_an_add_the_state_cannot_record_is_undone(tmp_path: Path) -> None:
    class FullState(StateDir):
        def save(self, info_hash: str, spec: TorrentSpec) -> None:
            raise DiskFull("disk full while writing the record: No space left on device")

    eng = FakeEngine()
    lines: list[str] = []

    async def go() -> None:
        async with served(eng, tmp_path, FullState(str(tmp_path / "state")), lines) as s:
            st, err = await call(s, "POST", "/api/v1/torrents", json={"magnet": MAGNET1})
            assert st == 507 and "cannot record" in err["error"]
            assert await call(s, "GET", "/api/v1/torrents") == (200, [])

    run(go())
    assert [c[0] for c in eng.calls] == ["add", "remove"]
    assert any("disk full" in ln for ln in lines)


# -- the token file, the listen address, the engine --------------------------------------------
def test_the_token_file(tmp_path: Path) -> None:
    f = tmp_path / "token"
    lines: list[str] = []
    f.write_text(f"  {TOKEN}\n")
    f.chmod(0o600)
    assert read_token(str(f), lines.append) == TOKEN and lines == []
    f.chmod(0o644)
    assert read_token(str(f), lines.append) == TOKEN
    assert len(lines) == 1 and "chmod 600" in lines[0] and "0644" in lines[0]
    for content, why in ((b"", "empty"), (b" \n\t\n", "empty"), (b"short\n", "shorter"),
                         (b"two words here, long enough\n", "one word"),
                         ("t\u00f6ken-long-enough-1234".encode(), "one word"),
                         (b"x" * 5000, "more than")):
        f.write_bytes(content)
        with pytest.raises(UsageError, match=why):
            read_token(str(f))
    with pytest.raises(UsageError, match="no such file"):
        read_token(str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="cannot read it"):
        read_token(str(tmp_path))  # a directory
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UsageError, match="not a regular file"):
        read_token(str(tmp_path / "fifo"))  # refused, not waited on


def test_listen_addresses() -> None:
    s = bind_listen("127.0.0.1:0")
    try:
        port = s.getsockname()[1]
        assert port > 0
        with pytest.raises(UsageError, match=r"--listen .*in use"):
            bind_listen(f"127.0.0.1:{port}")
    finally:
        s.close()
    for bad in ("host:1", "127.0.0.1", "127.0.0.1:65536", "::1:80"):
        with pytest.raises(UsageError, match="--listen"):
            bind_listen(bad)


def test_no_engine_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torrent.service", None)
    with pytest.raises(UsageError, match="engine is not available"):
        _make_engine(Options(), "/tmp", "/tmp")


def test_make_app_refuses_without_its_token_and_already_added_is_a_usage_error() -> None:
    """The application alone (no socket): built once, its routes named; AlreadyAdded is
    the UsageError the CLI maps to exit 2."""
    app = make_app(FakeEngine(), TOKEN, download_dir="/tmp")
    routes = {(r.method, r.resource.canonical) for r in app.router.routes()
              if r.resource is not None}
    assert ("POST", "/api/v1/torrents") in routes and ("GET", "/metrics") in routes
    assert ("DELETE", "/api/v1/torrents/{info_hash}") in routes
    assert issubclass(AlreadyAdded, UsageError) and AlreadyAdded("x").exit_code == 2


# -- the command -----------------------------------------------------------------------------
def _daemon_cmd(tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, str(HERE / "helpers" / "daemonrun.py"), "daemon",
            "--listen", "127.0.0.1:0", "--token-file", str(tmp_path / "token"),
            "--download-dir", str(tmp_path / "dl"), "--state-dir", str(tmp_path / "state"),
            "--no-dht", *extra]


def _request(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method, headers=AUTH,
        data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(req, timeout=STEP) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _start(cmd: list[str]) -> tuple[subprocess.Popen[str], int, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = ""
    try:
        sel = __import__("selectors").DefaultSelector()
        sel.register(proc.stdout, 1)
        if sel.select(CLI_TIMEOUT):
            line = proc.stdout.readline()
    finally:
        if not line:
            proc.kill()
            _out, err = proc.communicate(timeout=CLI_TIMEOUT)
            pytest.fail(f"the daemon did not start: {err}")
    words = line.split()
    return proc, int(words[words.index("port") + 1].rstrip(",")), line


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=CLI_TIMEOUT)
    return proc.returncode, err


def test_the_daemon_command_serves_stops_and_restores(tmp_path: Path,
                                                      tests_on_path: None) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "token").chmod(0o600)
    proc, port, line = _start(_daemon_cmd(tmp_path))
    try:
        assert "0 torrent(s) restored" in line
        assert _request(port, "POST", "/api/v1/torrents",
                        {"magnet": MAGNET1, "save_path": "m"}) == (200, {"info_hash": IH1})
        assert _request(port, "POST", f"/api/v1/torrents/{IH1}/pause")[0] == 200
    finally:
        code, err = _stop(proc)
    assert code == 0, err
    assert (tmp_path / "dl").is_dir()

    proc, port, line = _start(_daemon_cmd(tmp_path))
    try:
        assert "1 torrent(s) restored" in line
        st, got = _request(port, "GET", f"/api/v1/torrents/{IH1}")
        assert st == 200 and got["state"] == "paused"
        assert got["save_path"] == os.path.join(os.path.realpath(tmp_path / "dl"), "m")
    finally:
        code, err = _stop(proc)
    assert code == 0 and err == "", err


def test_the_daemon_command_s_usage_errors(tmp_path: Path, tests_on_path: None) -> None:
    def once(cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=CLI_TIMEOUT,
                           env=env, check=False)
        return r.returncode, r.stderr

    code, err = once(_daemon_cmd(tmp_path))
    assert code == 2 and err.count("\n") == 1 and "--token-file" in err and "no such" in err
    (tmp_path / "token").write_text("\n")
    code, err = once(_daemon_cmd(tmp_path))
    assert code == 2 and err.count("\n") == 1 and "empty" in err
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "token").chmod(0o600)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        cmd = _daemon_cmd(tmp_path)
        cmd[cmd.index("127.0.0.1:0")] = f"127.0.0.1:{busy.getsockname()[1]}"
        code, err = once(cmd)
    assert code == 2 and err.count("\n") == 1 and "--listen" in err and "in use" in err
    code, err = once(_daemon_cmd(tmp_path),
                     env={**os.environ, "FASTTORRENT_TEST_NO_ENGINE": "1"})
    assert code == 2 and err == "fasttorrent: the engine is not available in this installation\n"
