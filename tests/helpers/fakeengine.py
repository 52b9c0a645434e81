"""A test double of the engine behind ``fasttorrent daemon`` (torrent/engineapi.py's EngineAPI).

It holds torrents as records only (nothing is fetched) and tells them apart
by their real info-hashes: a magnet is read by torrent/magnet.py, a .torrent
by torrent/metainfo.py (so their refusals are the real ones), a URL hashes
to an info-hash of its own.  Every call is logged in :attr:`FakeEngine.calls`
so a test can see what the API asked.  It is an async context manager, as
``daemon._make_engine``'s engine is, and is built the same way
(``Engine(opts, download_dir=..., state_dir=...)``), so the CLI can run it
(tests/test_daemon_api.py puts it in place of ``torrent.engine``).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

from torrent import metainfo
from torrent.engineapi import AlreadyAdded, TorrentSpec, TorrentStatus
from torrent.magnet import parse_magnet
from torrent.metrics import TorrentCollector
from torrent.snapshot import TorrentSnapshot, take


class FakeEngine:
    def __init__(self, opts: Any = None, *, download_dir: str = "", state_dir: str = "",
                 preload: int = 0, max_active: int = 1) -> None:
        self.opts = opts
        self.download_dir = download_dir
        self.state_dir = state_dir
        self.held: dict[str, TorrentStatus] = {}
        self.specs: dict[str, TorrentSpec] = {}
        self.calls: list[tuple[Any, ...]] = []
        #: raised by the next add (a bug of the engine, for the API's 500)
        self.fail_next: BaseException | None = None
        self.collector = TorrentCollector()
        self.entered = self.exited = False
        for i in range(preload):
            ih = hashlib.sha1(b"preload %d" % i).hexdigest()
            self.held[ih] = self._status(ih, TorrentSpec(magnet="x"), None)

    async def __aenter__(self) -> FakeEngine:
        self.entered = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.exited = True

    def _status(self, ih: str, spec: TorrentSpec, name: str | None) -> TorrentStatus:
        return TorrentStatus(info_hash=ih, name=name,
                             state="paused" if spec.paused else "downloading", progress=0.25,
                             size=4096, bytes_done=1024, download_rate=100.0, upload_rate=5.0,
                             peers=3, save_path=spec.save_path or self.download_dir, error=None)

    def _snapshot(self, ih: str) -> TorrentSnapshot:
        return take(info_hash=ih, total_size=4096, piece_length=1024, pieces_total=4,
                    pieces_verified=1, last_verified=False, seeding=False,
                    workers=[(0, True, {"bytes": 1024, "uploaded": 7})])

    async def add(self, spec: TorrentSpec) -> str:
        self.calls.append(("add", spec))
        if self.fail_next is not None:
            e, self.fail_next = self.fail_next, None
            raise e
        name = None
        if spec.magnet is not None:
            m = parse_magnet(spec.magnet)
            ih, name = m.info_hash_hex, m.display_name
        elif spec.torrent is not None:
            meta = metainfo.parse(spec.torrent)
            ih, name = meta.info_hash_hex, meta.name
        else:
            ih = hashlib.sha1((spec.url or "").encode()).hexdigest()
        if ih in self.held:
            raise AlreadyAdded(f"{ih} is already added")
        self.held[ih] = self._status(ih, spec, name)
        self.specs[ih] = spec
        self.collector.add(ih, lambda: self._snapshot(ih))
        return ih

    def torrents(self) -> list[TorrentStatus]:
        return list(self.held.values())

    def status(self, info_hash: str) -> TorrentStatus:
        return self.held[info_hash]

    async def pause(self, info_hash: str) -> None:
        self.calls.append(("pause", info_hash))
        self.held[info_hash] = replace(self.held[info_hash], state="paused")

    async def resume(self, info_hash: str) -> None:
        self.calls.append(("resume", info_hash))
        self.held[info_hash] = replace(self.held[info_hash], state="downloading")

    async def remove(self, info_hash: str, delete_data: bool) -> None:
        self.calls.append(("remove", info_hash, delete_data))
        del self.held[info_hash]
        self.specs.pop(info_hash, None)
        self.collector.remove(info_hash)

    def metrics_collector(self) -> TorrentCollector:
        return self.collector


#: What ``from torrent.service import Service`` finds when the CLI test runs the daemon.
Service = FakeEngine
