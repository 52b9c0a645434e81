"""The ``fasttorrent`` command line: parses flags, calls the Python API, maps errors to exit codes.

Exit codes (also in the README):

    0 done / success           1 internal error (a bug of ours)
    2 usage error              3 invalid torrent
    4 disk full                5 other I/O or permission error
    6 incomplete               7 interrupted (SIGINT / SIGTERM)
    8 local resource exhausted
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import __version__
from .console import Status
from .errors import FastTorrentError, Incomplete, Interrupted, UsageError
from .options import (
    DEFAULT_MAX_ACTIVE,
    DEFAULT_MAX_HALF_OPEN,
    DEFAULT_MAX_PEERS,
    DEFAULT_STALL_TIMEOUT,
    ENCRYPTION_MODES,
    HANDSHAKE_TIMEOUT,
    MAX_ACTIVE,
    MAX_CONNECTIONS_CAP,
    Options,
)
from .peeraddr import format_peer
from .units import parse_size, size_arg

__all__ = ["build_parser", "main"]

EXIT_INTERRUPTED = Interrupted.exit_code
EXIT_INTERNAL = 1


def _human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def _rate(n: float, seconds: float) -> str:
    return f"{n / seconds / 1e6:.1f} MB/s" if seconds > 0 else "-"


def _int_arg(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi]."""

    def parse(s: str) -> int:
        try:
            n = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
        if not lo <= n <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, got {n}")
        return n

    return parse


#: Worker processes, peers and seeders: at least one, and a sane bound.
_workers_arg = _int_arg(1, 1024)
_port_arg = _int_arg(0, 65535)
#: Connections: at least one, at most what a kernel lets a process open
#: (fs.nr_open's default is 1,048,576 descriptors).
_connections_arg = _int_arg(1, 1 << 20)


def _timeout_arg(s: str) -> float:
    """An argparse type: a finite number of seconds > 0."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {s!r}")
    return v


def _connection_options(a: argparse.Namespace) -> dict[str, Any]:
    """The connection limits of ``download`` and ``seed`` as Options fields.

    The soft fd limit is raised to the hard one first (see
    :func:`~torrent.sysinfo.raise_fd_limit`): the default ``max_connections``
    is computed from it once the worker count is known (``download`` / ``seed``).
    """
    from .sysinfo import raise_fd_limit

    raise_fd_limit()
    return {"max_connections": a.max_connections, "max_half_open": a.max_half_open,
            "handshake_timeout": a.handshake_timeout, "encryption": a.encryption}


def _add_connection_flags(s: argparse.ArgumentParser) -> None:
    s.add_argument("--max-connections", type=_connections_arg, default=None, metavar="N",
                   help="open connections at most, incoming and outgoing, over all workers "
                        f"(default: from the fd limit, at most {MAX_CONNECTIONS_CAP})")
    s.add_argument("--max-half-open", type=_connections_arg, default=DEFAULT_MAX_HALF_OPEN,
                   metavar="N", help="connections still in their handshake at most; past it "
                                     f"incoming ones are refused (default {DEFAULT_MAX_HALF_OPEN})")
    s.add_argument("--handshake-timeout", type=_timeout_arg, default=HANDSHAKE_TIMEOUT,
                   metavar="S", help="drop a connection without a handshake after S seconds "
                                     f"(default {HANDSHAKE_TIMEOUT:g})")
    s.add_argument("--encryption", choices=ENCRYPTION_MODES, default="enabled",
                   help="MSE/PE: enabled (default) accepts both kinds and dials MSE, then "
                        "plaintext once if the peer drops it; required: MSE handshakes only, "
                        "both ways; disabled: plaintext only")


def _report_options(a: argparse.Namespace) -> dict[str, Any]:
    """The event stream and metrics flags of ``download`` and ``seed`` as Options fields.

    ``--events -`` writes the events to stdout: the final ``--json`` object would
    go there too, so the two are refused together; the human output (log lines,
    and the summary ``download`` prints at the end) goes to stderr, and the live
    status line is off (a terminal shows stdout and stderr together).
    """
    if a.events == "-" and getattr(a, "json", False):
        raise UsageError("--events - and --json both write to stdout: give --events a FILE")
    return {"events": a.events, "events_interval": a.events_interval,
            "metrics_listen": a.metrics_listen}


def _add_report_flags(s: argparse.ArgumentParser, *, metrics: bool = True) -> None:
    from .events import PROGRESS_INTERVAL

    s.add_argument("--events", default=None, metavar="FILE",
                   help="append the events of every torrent run to FILE as JSON lines "
                        "(- for stdout" + ("" if metrics else ", not for the daemon")
                        + "; see docs/ARCHITECTURE.md, 'Event stream and metrics')")
    s.add_argument("--events-interval", type=_timeout_arg, default=PROGRESS_INTERVAL,
                   metavar="S", help="seconds between two progress events "
                                     f"(default {PROGRESS_INTERVAL:g})")
    if not metrics:
        return
    s.add_argument("--metrics-listen", default=None, metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics while the run "
                        "goes on (PORT alone: on 127.0.0.1)")


def _dht_options(a: argparse.Namespace) -> dict[str, Any]:
    """The DHT flags of ``download`` and ``seed`` as Options fields."""
    boot = a.dht_bootstrap
    return {"dht": not a.no_dht, "state_dir": a.state_dir,
            "dht_bootstrap": None if not boot else tuple(_peers_arg(boot, "--dht-bootstrap"))}


def _add_dht_flags(s: argparse.ArgumentParser) -> None:
    s.add_argument("--dht-bootstrap", action="append", default=[], metavar="HOST:PORT",
                   help="DHT node to start from (repeatable; default: the well-known routers "
                        "router.bittorrent.com:6881, dht.transmissionbt.com:6881, "
                        "router.utorrent.com:6881, dht.libtorrent.org:25401)")
    s.add_argument("--no-dht", action="store_true",
                   help="no DHT node (it is always off for private torrents)")
    s.add_argument("--state-dir", default=None, metavar="DIR",
                   help="where the DHT's nodes and id are kept between runs (default: "
                        "$XDG_CACHE_HOME/fasttorrent or ~/.cache/fasttorrent)")


def _flag_size(flag: str, s: str | None) -> int:
    """``s`` as a size (:func:`~torrent.units.parse_size`), 0 for None; a one-line UsageError
    naming ``flag``."""
    if s is None:
        return 0
    try:
        return parse_size(s)
    except ValueError as e:
        raise UsageError(f"{flag}: {e}") from None


def _flag_limit(flag: str, s: str | None) -> float | None:
    """A seeding limit: None when not given, else a finite number >= 0 (UsageError)."""
    if s is None:
        return None
    try:
        v = float(s)
    except ValueError:
        raise UsageError(f"{flag}: not a number: {s!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise UsageError(f"{flag}: must be a finite number >= 0, got {s!r}")
    return v


def _default_workers() -> int:
    from .sysinfo import available_cpus

    return available_cpus()


def _not_magnet(path: str) -> None:
    """A usage error for commands that need the torrent's metadata at hand."""
    from .magnet import is_magnet

    if is_magnet(path):
        raise UsageError("this command needs a .torrent file, not a magnet link: download "
                         "the magnet first (--save-torrent FILE writes its .torrent)")


def _load(path: str) -> Any:
    from . import metainfo

    _not_magnet(path)
    return metainfo.load(path)


# -- info -------------------------------------------------------------------
def _magnet_info(a: argparse.Namespace) -> int:
    """``info`` of a magnet link: what the link itself says (the rest is in its metadata)."""
    from .magnet import parse_magnet

    m = parse_magnet(a.torrent)
    peers = [format_peer(h, p) for h, p in m.peers]
    v2 = m.info_hash_v2.hex() if m.info_hash_v2 is not None else None
    d = {"magnet": True, "info_hash": m.info_hash_hex, "info_hash_v2": v2,
         "name": m.display_name,
         "trackers": [list(t) for t in m.trackers], "peers": peers,
         "web_seeds": list(m.web_seeds), "select_only": list(m.select_only)}
    if a.json:
        print(json.dumps(d, ensure_ascii=False))
        return 0
    out = ["magnet:      the files, sizes and pieces come with its metadata (download it)",
           f"name:        {m.display_name if m.display_name is not None else '(none given)'}",
           f"info hash:   {m.info_hash_hex}"
           + (" (the v2 hash, truncated)" if m.v2_only else "")]
    if v2 is not None:
        out.append(f"v2 hash:     {v2}")
    out += [f"tracker tier {t}: " + " ".join(tier) for t, tier in enumerate(m.trackers)]
    out += [f"peer:        {p}" for p in peers]
    out += [f"web seed:    {u}" for u in m.web_seeds]
    print("\n".join(out))
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from .magnet import is_magnet

    if is_magnet(a.torrent):
        return _magnet_info(a)
    meta = _load(a.torrent)
    d = meta.to_json_dict()
    for k, f in enumerate(d["files"]):
        # the index --select and a magnet's so= use: pads included, as libtorrent counts
        f["index"] = k
    if a.json:
        print(json.dumps(d, ensure_ascii=False))
        return 0
    out = [f"name:         {d['name']}"]
    if d["info_hash"] is not None:
        out.append(f"info hash:    {d['info_hash']}"
                   + ("  (hybrid v1+v2, downloaded as v1)" if d["hybrid"] else ""))
    if d["info_hash_v2"] is not None:
        out.append(f"info hash v2: {d['info_hash_v2']}"
                   + ("  (v2-only)" if d["v2_only"] else ""))
    out += [
        f"size:         {_human_size(d['total_size'])} ({d['total_size']} bytes)",
        f"pieces:       {d['num_pieces']} x {_human_size(d['piece_length'])}",
        f"private:      {'yes' if d['private'] else 'no'}",
    ]
    for t, tier in enumerate(d["trackers"]):
        out.append(f"tracker tier {t}: " + " ".join(tier))
    out += [f"web seed:     {u}" for u in d["web_seeds"]]
    files = d["files"]
    out.append(f"files:        {sum(1 for f in files if not f.get('pad'))}")
    for f in files:
        if not f.get("pad"):
            marks = (f" -> {f['symlink']}" if "symlink" in f else "") \
                + ("  (executable)" if f.get("executable") else "") \
                + ("  (hidden)" if f.get("hidden") else "")
            out.append(f"  {f['index']:>6}  {f['length']:>15}  {f['path']}{marks}")
            if "pieces_root" in f:
                out.append(f"          pieces root {f['pieces_root']}")
    print("\n".join(out))
    return 0


# -- create -----------------------------------------------------------------
def cmd_create(a: argparse.Namespace) -> int:
    from .creator import create_torrent

    if os.path.isdir(a.output):
        raise UsageError(f"-o {a.output}: is a directory")
    data = create_torrent(
        a.path,
        piece_length=a.piece_length,
        trackers=[[u] for u in a.tracker],
        private=a.private,
        workers=a.workers or _default_workers(),
        comment=a.comment,
        fork=True,
        version="v2" if a.v2 else "hybrid" if a.hybrid else "v1",
    )
    tmp = a.output + ".part"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, a.output)
    except OSError as e:
        from .storage import os_error

        raise os_error(e, f"writing {a.output}") from None
    if not a.quiet:
        from . import metainfo

        meta = metainfo.parse(data)
        hashes = " ".join(h for h in ((None if meta.v2_only else meta.info_hash_hex),
                                      meta.info_hash_v2_hex) if h)
        print(f"{a.output}: {hashes}  {meta.num_pieces} pieces x "
              f"{_human_size(meta.piece_length)}, {_human_size(meta.total_size)}")
    return 0


# -- verify -----------------------------------------------------------------
def cmd_verify(a: argparse.Namespace) -> int:
    from .verifier import verify_data

    meta = _load(a.torrent)
    if not os.path.isdir(a.dir):
        raise UsageError(f"{a.dir}: not a directory")
    rep = verify_data(meta, a.dir, workers=a.workers or _default_workers(), fork=True)
    if a.json:
        d = rep.to_json_dict()
        # as `info --json`: a v2-only torrent has no v1 info-hash
        d["info_hash"] = None if meta.v2_only else meta.info_hash_hex
        d["info_hash_v2"] = meta.info_hash_v2_hex
        print(json.dumps(d))
    else:
        print(f"{rep.pieces_ok}/{rep.pieces_total} pieces good, {rep.pieces_bad} bad, "
              f"{rep.pieces_missing} missing; {_human_size(rep.bytes_checked)} checked in "
              f"{rep.seconds:.2f} s ({_rate(rep.bytes_checked, rep.seconds)}, "
              f"{len(rep.workers)} worker(s))")
        for f in rep.files:
            if f["complete"]:
                continue
            why = []
            if not f["exists"]:
                why.append("missing file")
            if f["bad_pieces"]:
                why.append("bad pieces " + ", ".join(map(str, f["bad_pieces"])))
            if f["missing_pieces"] and f["exists"]:
                why.append("missing pieces " + ", ".join(map(str, f["missing_pieces"])))
            print(f"incomplete: {f['path']}: {'; '.join(why) or 'short file'}")
    if not rep.complete:
        raise Incomplete(f"incomplete: {rep.pieces_bad} bad and {rep.pieces_missing} missing "
                         f"of {rep.pieces_total} pieces")
    return 0


# -- download ---------------------------------------------------------------
def _peers_arg(values: list[str], flag: str = "--peer") -> list[tuple[str, int]]:
    from .coordinator import parse_peer

    out = []
    for v in values:
        for item in v.split(","):
            if item.strip():
                try:
                    out.append(parse_peer(item))
                except UsageError as e:
                    raise UsageError(str(e).replace("--peer", flag, 1)) from None
    return out


def _selection_options(a: argparse.Namespace) -> dict[str, Any]:
    """``--select``, ``--include``, ``--exclude`` and ``--shard`` as Options fields
    (a one-line UsageError, exit 2, for a malformed value)."""
    from .selection import parse_select, parse_shard

    return {"select": None if a.select is None else parse_select(a.select),
            "include": tuple(a.include), "exclude": tuple(a.exclude),
            "shard": None if a.shard is None else parse_shard(a.shard)}


def _failed(st: Status, as_json: bool, e: FastTorrentError) -> None:
    """End the status line; with --json, print the partial result a failure carries."""
    st.end()
    r = getattr(e, "result", None)
    if as_json and r is not None:
        print(json.dumps(r.to_json_dict()))


def _download_options(a: argparse.Namespace) -> Options:
    return Options(
        workers=a.workers, peers=tuple(_peers_arg(a.peer)), port=a.port, bind=a.bind,
        max_peers=a.max_peers, stall_timeout=a.stall_timeout, recheck=a.recheck,
        use_trackers=not a.no_trackers, download_limit=a.download_limit or 0,
        upload_limit=_flag_size("--upload-limit", a.upload_limit),
        seed_time=_flag_limit("--seed-time", a.seed_time),
        seed_ratio=_flag_limit("--seed-ratio", a.seed_ratio), direct_io=not a.no_direct_io,
        save_torrent=a.save_torrent, fork_workers=True, web_seeds=tuple(a.web_seed),
        **_selection_options(a), **_connection_options(a), **_dht_options(a),
        **_report_options(a))


def cmd_download(a: argparse.Namespace) -> int:
    from .coordinator import download

    if a.input is not None or len(a.torrents) != 1:
        return _download_batch(a)
    if a.max_active is not None:
        raise UsageError("--max-active needs several torrents (or --input)")
    opts = _download_options(a)
    events_out = a.events == "-"
    st = Status(a.quiet or a.json, live=not events_out)
    try:
        res = download(a.torrents[0], a.output, opts, log=st.log, status_line=st.line)
    except FastTorrentError as e:
        _failed(st, a.json, e)
        raise
    st.end()
    if a.json:
        print(json.dumps(res.to_json_dict()))
    elif not a.quiet:
        print(f"done: {_human_size(res.bytes_downloaded)} in {res.seconds:.2f} s "
              f"({_rate(res.bytes_downloaded, res.seconds)}), {len(res.workers)} worker(s), "
              f"{res.pieces_resumed} pieces resumed, {res.hash_failures} hash failures"
              + (f"; seeded {res.seed_seconds:.0f} s, uploaded "
                 f"{_human_size(res.bytes_uploaded)} (stopped by {res.seed_stop})"
                 if res.seed_stop else ""), file=sys.stderr if events_out else sys.stdout)
    return 0


def _download_batch(a: argparse.Namespace) -> int:
    """Several torrents (or ``--input``) in one engine; the batch's exit code."""
    from .sources import classify, read_input

    sources = [classify(t) for t in a.torrents]
    if a.input is not None:
        sources += read_input(a.input)
    if not sources:
        raise UsageError("no torrent given (name one, or --input FILE)")
    if a.save_torrent:
        raise UsageError("--save-torrent names one .torrent: give it one torrent")
    if a.select is not None:
        raise UsageError("--select names one torrent's files by index: give it one torrent "
                         "(--include / --exclude apply to every torrent)")
    from .engine import download_batch
    from .reporting import batch_reports

    opts = _download_options(a)
    events_out = a.events == "-"
    st = Status(a.quiet or a.json, live=False)
    out = sys.stderr if events_out or a.json else sys.stdout
    with batch_reports(opts, st.log) as (report, metrics):
        code, outcomes = download_batch(
            sources, a.output, opts, max_active=a.max_active or DEFAULT_MAX_ACTIVE,
            log=st.log, report=report, metrics=metrics)
    st.end()
    if a.json:
        print(json.dumps({"exit_code": code,
                          "torrents": [o.to_json_dict() for o in outcomes]}))
    elif not a.quiet:
        done = sum(o.status == "completed" for o in outcomes)
        for o in outcomes:
            what = o.name or o.source
            if o.status == "completed" and o.result is not None:
                r = o.result
                print(f"done: {what}: {_human_size(r.bytes_downloaded)} in {r.seconds:.2f} s",
                      file=out)
            else:
                print(f"{o.status}: {what}: {o.error or ''} (exit {o.exit_code})", file=out)
        print(f"{done}/{len(outcomes)} torrents completed", file=out)
    return code


# -- seed -------------------------------------------------------------------
def cmd_seed(a: argparse.Namespace) -> int:
    from .coordinator import seed

    _not_magnet(a.torrent)
    opts = Options(workers=a.workers, peers=tuple(_peers_arg(a.peer)), port=a.port,
                   bind=a.bind, check=not a.skip_check, use_trackers=not a.no_trackers,
                   upload_limit=_flag_size("--upload-limit", a.upload_limit),
                   fork_workers=True, **_connection_options(a), **_dht_options(a),
                   **_report_options(a))
    events_out = a.events == "-"
    st = Status(a.quiet, live=not events_out)

    def ready(port: int) -> None:
        # one machine-readable line, so scripts can find a port chosen by us (with
        # --events -, the 'started' event says it, and this line goes to stderr)
        print(f"seeding on port {port}", flush=True,
              file=sys.stderr if events_out else sys.stdout)

    try:
        seed(a.torrent, a.dir, opts, log=st.log, ready=ready)
    except FastTorrentError as e:
        _failed(st, a.json, e)
        raise
    return 0


# -- daemon -----------------------------------------------------------------
def cmd_daemon(a: argparse.Namespace) -> int:
    from .daemon import run_daemon

    opts = Options(workers=a.workers, port=a.port, bind=a.bind, max_peers=a.max_peers,
                   peers=tuple(_peers_arg(a.peer)), stall_timeout=a.stall_timeout,
                   events=_daemon_events(a.events), events_interval=a.events_interval,
                   use_trackers=not a.no_trackers, download_limit=a.download_limit or 0,
                   upload_limit=_flag_size("--upload-limit", a.upload_limit),
                   fork_workers=True, **_connection_options(a), **_dht_options(a))
    st = Status(a.quiet, live=False)

    def ready(port: int, restored: int) -> None:
        # one machine-readable line, so scripts can find a port chosen by us
        print(f"daemon: API on port {port}, {restored} torrent(s) restored", flush=True)

    return run_daemon(opts, listen=a.listen, token_file=a.token_file,
                      download_dir=a.download_dir, state_dir=a.state_dir, log=st.log,
                      ready=ready, max_active=a.max_active)


def _daemon_events(path: str | None) -> str | None:
    if path == "-":
        raise UsageError("--events -: the daemon's stdout carries its ready line; give "
                         "--events a FILE")
    return path


def _add_daemon_flags(s: argparse.ArgumentParser) -> None:
    from .daemon import DEFAULT_LISTEN

    s.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"where the API listens (default {DEFAULT_LISTEN}; PORT alone: on "
                        "127.0.0.1; 0: a free port, printed at start)")
    s.add_argument("--token-file", required=True, metavar="FILE",
                   help="the API's bearer token: the file's one line (chmod 600 it)")
    s.add_argument("--download-dir", required=True, metavar="DIR",
                   help="the default save path; every save_path must lie under it")
    s.add_argument("--state-dir", required=True, metavar="DIR",
                   help="the torrents held (restored at start) and the DHT's nodes")
    s.add_argument("--workers", type=_workers_arg, default=None,
                   help="worker processes (default: the CPUs this process may use)")
    s.add_argument("--port", type=_port_arg, default=0, help="TCP port for incoming peers")
    s.add_argument("--bind", default="", metavar="ADDRESS",
                   help="IPv4 or IPv6 address peers are accepted on (default: every address "
                        "of both)")
    s.add_argument("--max-peers", type=_workers_arg, default=DEFAULT_MAX_PEERS,
                   help=f"peers to connect to at a time (default {DEFAULT_MAX_PEERS})")
    s.add_argument("--max-active", type=_int_arg(1, MAX_ACTIVE), default=DEFAULT_MAX_ACTIVE,
                   metavar="N", help=f"torrents downloading at once (1..{MAX_ACTIVE}; default "
                                     f"{DEFAULT_MAX_ACTIVE}); the others wait their turn")
    s.add_argument("--peer", action="append", default=[], metavar="HOST:PORT[,...]",
                   help="a peer every torrent dials (repeatable; comma lists accepted)")
    _add_report_flags(s, metrics=False)  # (its /metrics is the API's)
    s.add_argument("--stall-timeout", type=float, default=0.0, metavar="S",
                   help="a torrent without data for S seconds ends in error (default 0: "
                        "it waits for peers as long as it is held)")
    _add_connection_flags(s)
    s.add_argument("--download-limit", type=size_arg, default=None, metavar="RATE",
                   help="bytes per second, e.g. 50M (default: unlimited)")
    s.add_argument("--upload-limit", default=None, metavar="RATE",
                   help="bytes per second uploaded, e.g. 10M (default: unlimited)")
    s.add_argument("--no-trackers", action="store_true", help="do not announce to the trackers")
    s.add_argument("--dht-bootstrap", action="append", default=[], metavar="HOST:PORT",
                   help="DHT node to start from (repeatable; default: the well-known routers)")
    s.add_argument("--no-dht", action="store_true", help="no DHT node")
    s.add_argument("-q", "--quiet", action="store_true")


# -- demo -------------------------------------------------------------------
def cmd_demo(a: argparse.Namespace) -> int:
    from .tools.demo import run_demo

    return run_demo(size=a.size, workers=a.workers, seeders=a.seeders, keep=a.keep)


# -- bench ------------------------------------------------------------------
def cmd_bench(a: argparse.Namespace) -> int:
    from .tools.bench import run_from_args

    return run_from_args(a)


# -- parser -----------------------------------------------------------------
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "info": cmd_info,
    "create": cmd_create,
    "verify": cmd_verify,
    "demo": cmd_demo,
    "download": cmd_download,
    "seed": cmd_seed,
    "daemon": cmd_daemon,
    "bench": cmd_bench,
}


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``fasttorrent download: error: ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser. ``command``: the subcommand the arguments name, if known (``""``:
    they name none, as ``--version`` and ``--help`` do); the options of ``daemon`` and
    ``bench`` (and the imports they need: the daemon's API, aiohttp, ~150 ms;
    ``tools.bench``, ~20 ms) are then added only for that command itself, so that
    nothing else waits for them. None: every command's options."""
    p = _Parser(prog="fasttorrent",
                                description="A multi-core BitTorrent downloader for servers.")
    p.add_argument("--version", action="version", version=f"fasttorrent {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("info", help="show what a .torrent (or a magnet link) holds")
    s.add_argument("torrent", metavar="TORRENT|MAGNET")
    s.add_argument("--json", action="store_true", help="one JSON object on stdout")

    s = sub.add_parser("create", help="make a .torrent from a file or directory")
    s.add_argument("path")
    s.add_argument("-o", "--output", required=True, help="the .torrent to write")
    s.add_argument("--piece-length", type=size_arg, default=None,
                   help="bytes per piece (power of two >= 16K; default: automatic)")
    s.add_argument("--tracker", action="append", default=[], metavar="URL",
                   help="announce URL (repeatable: one tier each)")
    s.add_argument("--private", action="store_true", help="set the private flag (BEP 27)")
    s.add_argument("--comment", default=None)
    kind = s.add_mutually_exclusive_group()
    kind.add_argument("--v2", action="store_true",
                      help="a v2-only torrent (BEP 52)")
    kind.add_argument("--hybrid", action="store_true",
                      help="a v1+v2 hybrid (BEP 52, with BEP 47 pad files between files)")
    s.add_argument("--workers", type=_workers_arg, default=None,
                   help="hashing processes (default: the CPUs this process may use)")
    s.add_argument("-q", "--quiet", action="store_true")

    s = sub.add_parser("verify", help="check data on disk against a .torrent")
    s.add_argument("torrent")
    s.add_argument("dir", help="the directory the download was written into")
    s.add_argument("--workers", type=_workers_arg, default=None,
                   help="hashing processes (default: the CPUs this process may use)")
    s.add_argument("--json", action="store_true", help="one JSON object on stdout")

    s = sub.add_parser("download", help="download torrents (.torrent files, magnet links, "
                                        "URLs of .torrent files)")
    s.add_argument("torrents", nargs="*", metavar="TORRENT|MAGNET|URL",
                   help="one or more; several (or --input) run in one engine: one set of "
                        "workers, one port")
    s.add_argument("--input", "-i", default=None, metavar="FILE",
                   help="more torrents, one path, magnet or http(s) URL per line (# starts "
                        "a comment; - reads stdin)")
    s.add_argument("--max-active", type=_int_arg(1, MAX_ACTIVE), default=None, metavar="N",
                   help=f"torrents downloading at once (1..{MAX_ACTIVE}; default "
                        f"{DEFAULT_MAX_ACTIVE})")
    s.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="directory the torrent's files are written under")
    s.add_argument("--workers", type=_workers_arg, default=None,
                   help="worker processes (default: the CPUs this process may use)")
    s.add_argument("--peer", action="append", default=[], metavar="HOST:PORT[,...]",
                   help="connect to this peer (repeatable; comma lists accepted)")
    s.add_argument("--web-seed", action="append", default=[], metavar="URL",
                   help="an HTTP(S) server with the files (BEP 19; repeatable), besides the "
                        "torrent's url-list and a magnet's ws=")
    s.add_argument("--port", type=_port_arg, default=0, help="TCP port for incoming peers")
    s.add_argument("--bind", default="", metavar="ADDRESS",
                   help="IPv4 or IPv6 address to listen on (default: every address of both)")
    s.add_argument("--max-peers", type=_workers_arg, default=DEFAULT_MAX_PEERS,
                   help="peers to connect to at a time, over all workers "
                        f"(default {DEFAULT_MAX_PEERS})")
    _add_connection_flags(s)
    s.add_argument("--download-limit", type=size_arg, default=None, metavar="RATE",
                   help="bytes per second, e.g. 50M (default: unlimited)")
    s.add_argument("--upload-limit", default=None, metavar="RATE",
                   help="bytes per second uploaded, e.g. 10M (default: unlimited)")
    s.add_argument("--seed-time", default=None, metavar="S",
                   help="once complete, keep serving peers for S seconds (default: no "
                        "seeding after completion)")
    s.add_argument("--seed-ratio", default=None, metavar="R",
                   help="once complete, keep serving peers until R x the torrent's size is "
                        "uploaded; with --seed-time, the first limit reached ends the run "
                        "(exit 0; Ctrl-C/SIGTERM while seeding also exits 0)")
    s.add_argument("--stall-timeout", type=float, default=DEFAULT_STALL_TIMEOUT, metavar="S",
                   help="give up after S seconds without data (exit 6)")
    s.add_argument("--recheck", action="store_true", help="ignore the resume journal")
    s.add_argument("--select", default=None, metavar="1,3-5",
                   help="download only these files, by the index `info` shows (0-based, "
                        "pad files counted; default: a magnet's so=, else the selection a "
                        "resumed run saved, else all)")
    s.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="download only files whose path in the torrent matches (repeatable)")
    s.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="skip files whose path in the torrent matches (repeatable)")
    s.add_argument("--shard", default=None, metavar="I/N",
                   help="fetch only share I (0-based) of N contiguous ranges of pieces, "
                        "e.g. $JOB_COMPLETION_INDEX/3; see docs/cluster.md")
    s.add_argument("--save-torrent", default=None, metavar="FILE",
                   help="write the .torrent here once known (a magnet's: with its trackers)")
    s.add_argument("--no-trackers", action="store_true",
                   help="do not announce to the trackers (--peer and DHT peers only)")
    _add_dht_flags(s)
    s.add_argument("--no-direct-io", action="store_true",
                   help="write through the page cache instead of O_DIRECT")
    _add_report_flags(s)
    s.add_argument("--json", action="store_true", help="one JSON object on stdout at the end")
    s.add_argument("-q", "--quiet", action="store_true")

    s = sub.add_parser("seed", help="serve a torrent's data until stopped (SIGINT/SIGTERM)")
    s.add_argument("torrent")
    s.add_argument("dir", help="the directory holding the data (as a download writes it)")
    s.add_argument("--port", type=_port_arg, default=0, help="TCP port (default: a free one)")
    s.add_argument("--bind", default="", metavar="ADDRESS",
                   help="IPv4 or IPv6 address to listen on (default: every address of both)")
    s.add_argument("--workers", type=_workers_arg, default=None,
                   help="worker processes (default: the CPUs this process may use)")
    s.add_argument("--peer", action="append", default=[], metavar="HOST:PORT[,...]",
                   help="connect out to this peer (repeatable; comma lists accepted)")
    s.add_argument("--skip-check", action="store_true",
                   help="trust the data instead of hashing it first")
    s.add_argument("--upload-limit", default=None, metavar="RATE",
                   help="bytes per second uploaded, e.g. 10M (default: unlimited)")
    s.add_argument("--no-trackers", action="store_true", help="do not announce to the trackers")
    _add_dht_flags(s)
    _add_connection_flags(s)
    _add_report_flags(s)
    s.add_argument("--json", action="store_true", help="one JSON object on stdout at the end")
    s.add_argument("-q", "--quiet", action="store_true")

    s = sub.add_parser("daemon", help="hold many torrents, driven over an HTTP/JSON API "
                                      "(see docs/ARCHITECTURE.md, 'The daemon')")
    if command in (None, "daemon"):  # its flags import the API (aiohttp): only for it
        _add_daemon_flags(s)

    s = sub.add_parser("demo", help="the main job on a generated payload, nothing to set up")
    s.add_argument("--size", type=size_arg, default=256 << 20, help="payload size (default 256M)")
    s.add_argument("--workers", type=_workers_arg, default=None)
    s.add_argument("--seeders", type=_workers_arg, default=2, help="local seeders (default 2)")
    s.add_argument("--keep", action="store_true", help="keep the temporary directory")

    bench = sub.add_parser("bench", help="compare downloaders on a local swarm")
    if command in (None, "bench"):
        from .tools.bench import add_arguments as add_bench_arguments

        add_bench_arguments(bench)
    return p


def _internal_error(exc: BaseException) -> int:
    fd, path = tempfile.mkstemp(prefix="fasttorrent-crash-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        traceback.print_exception(exc, file=f)
    print(f"fasttorrent: internal error (a bug in fasttorrent): {exc.__class__.__name__}: "
          f"{exc}; details in {path}", file=sys.stderr)
    return EXIT_INTERNAL


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    # the first word not an option names the command (no top-level option takes a value)
    parser = build_parser(next((x for x in args if not x.startswith("-")), ""))
    a = parser.parse_args(args)
    try:
        return COMMANDS[a.command](a)
    except FastTorrentError as e:
        msg = str(e).replace("\n", " ")
        print(f"fasttorrent: {msg}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("fasttorrent: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
    except Exception as e:
        return _internal_error(e)


def run() -> NoReturn:
    """The console script: :func:`main`, its output flushed, then the process ends at once.

    Everything a command owes is done when :func:`main` returns (files synced
    and closed, child processes reaped, the journal's writes unbuffered), so
    the interpreter's own teardown (a last garbage collection over every
    object, module by module) is skipped: 25-45 ms of every download's wall
    time on the project's machine. An uncaught ``SystemExit`` (a usage error)
    still ends it the normal way.
    """
    code = main()
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (OSError, ValueError):  # a closed pipe: what it could not take is lost anyway
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
