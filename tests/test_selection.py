"""The sans-IO selection (torrent/selection.py), the parts-file layout (torrent/storage.py),
the saved selection (torrent/journal.py) and bad --select / --shard flags on the CLI.

Torrents are described by their files' sizes; ``pad`` marks a BEP 47 pad
file. Downloads from real clients are in tests/test_select_download.py.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from torrent import selection
from torrent.errors import UsageError
from torrent.journal import (
    MAX_SELECTION_BYTES,
    Journal,
    journal_path,
    load_selection,
    save_selection,
    selection_path,
)
from torrent.options import Options
from torrent.selection import (
    MAX_SHARDS,
    Selection,
    changed_files,
    parse_select,
    parse_shard,
    resolve,
    select_files,
    shard_pieces,
    wanted_pieces,
)
from torrent.storage import Storage, layout_for, parts_path

CMD_TIMEOUT = 60


@dataclass(frozen=True)
class F:
    path: str
    length: int
    offset: int
    pad: bool = False
    attr: str = ""


@dataclass(frozen=True)
class Meta:
    files: tuple[F, ...]
    piece_length: int
    info_hash: bytes = b"\x11" * 20

    @property
    def total_size(self) -> int:
        return sum(f.length for f in self.files)

    @property
    def num_pieces(self) -> int:
        return -(-self.total_size // self.piece_length)


def files_of(*spec: tuple[str, int] | tuple[str, int, bool]) -> tuple[F, ...]:
    out, off = [], 0
    for s in spec:
        out.append(F(s[0], s[1], off, bool(s[2]) if len(s) > 2 else False))
        off += s[1]
    return tuple(out)


#: Five files over 10-byte pieces: a 0-14, b 15-24 (pieces 1-2), pad 25-29,
#: c 30-49 (pieces 3-4), d/e.txt 50-52 (piece 5).
FILES = files_of(("t/a.bin", 15), ("t/b.bin", 10), ("t/.pad/5", 5, True), ("t/c.bin", 20),
                 ("t/d/e.txt", 3))


def wanted(sel: frozenset[int] | None, shard: tuple[int, int] | None = None,
           files: tuple[F, ...] = FILES, pl: int = 10) -> str:
    n = -(-sum(f.length for f in files) // pl)
    w = wanted_pieces(files, pl, n, sel, shard)
    return "*" * n if w is None else "".join("*" if b else "." for b in w)


# -- --select ---------------------------------------------------------------------
def test_select_takes_indices_and_inclusive_ranges() -> None:
    assert parse_select("1,3-5") == (1, 3, 4, 5)
    assert parse_select(" 4 , 2,2-3") == (2, 3, 4)
    assert parse_select("0") == (0,)


@pytest.mark.parametrize(("spec", "why"), [
    ("3-1", "runs backwards"), ("x", "expected file indices"), ("", "expected file indices"),
    ("1,,2", "expected file indices"), ("-1", "expected file indices"),
    ("1-2-3", "expected file indices"), ("0-999999999", "more than"),
])
def test_a_bad_select_is_a_one_line_usage_error(spec: str, why: str) -> None:
    with pytest.raises(UsageError, match=why) as e:
        parse_select(spec)
    assert "\n" not in str(e.value) and str(e.value).startswith("--select: ")


def test_select_files_numbers_pads_as_libtorrent_does_and_never_selects_one() -> None:
    assert select_files(FILES, indices=[1, 2, 3]) == {1, 3}


def test_an_index_past_the_last_file_is_refused() -> None:
    with pytest.raises(UsageError, match=r"file 5 does not exist .*0-4"):
        select_files(FILES, indices=[1, 5])


def test_selecting_every_file_is_no_selection() -> None:
    assert select_files(FILES, indices=[0, 1, 2, 3, 4]) is None
    assert select_files(FILES) is None


# -- --include / --exclude ------------------------------------------------------
@pytest.mark.parametrize(("include", "exclude", "chosen"), [
    (["*.bin"], [], {0, 1, 3}),
    ([], ["*.bin"], {4}),
    (["*.bin"], ["*/b.bin"], {0, 3}),
    (["t/d/*", "t/a.*"], [], {0, 4}),
    (["*"], ["t/d/*"], {0, 1, 3}),  # '*' crosses '/'
    (["T/A.BIN"], [], "error"),  # case-sensitive, as paths are
    (["*.iso"], [], "error"),
])
def test_include_and_exclude_match_the_path_inside_the_torrent(
        include: list[str], exclude: list[str], chosen: set[int] | str) -> None:
    if chosen == "error":
        with pytest.raises(UsageError, match="leaves no file"):
            select_files(FILES, include=include, exclude=exclude)
    else:
        assert select_files(FILES, include=include, exclude=exclude) == chosen


def test_include_filters_a_select() -> None:
    assert select_files(FILES, indices=[0, 4], include=["*.bin"]) == {0}


def test_too_many_globs_are_refused() -> None:
    with pytest.raises(UsageError, match="--exclude: at most"):
        select_files(FILES, exclude=["x"] * (selection.MAX_PATTERNS + 1))


# -- wanted pieces --------------------------------------------------------------
def test_wanted_pieces_are_those_holding_a_byte_of_a_selected_file() -> None:
    assert wanted(frozenset({1})) == ".**..."  # b: 15-24, pieces 1 and 2
    assert wanted(frozenset({3})) == "...**."  # c after the pad: pieces 3-4 only
    assert wanted(frozenset({0, 4})) == "**...*"
    assert wanted(None) == "******"


def test_a_zero_length_file_wants_no_piece() -> None:
    files = files_of(("a", 10), ("empty", 0), ("b", 10))
    assert wanted(frozenset({1, 2}), files=files) == ".*"


# -- shards -----------------------------------------------------------------------
def test_shard_takes_index_over_count_zero_based() -> None:
    assert parse_shard("0/3") == (0, 3)
    assert parse_shard("2/3") == (2, 3)


@pytest.mark.parametrize(("spec", "why"), [
    ("3/3", "below 3"), ("1/0", "between 1 and"), (f"0/{MAX_SHARDS + 1}", "between 1 and"),
    ("1", "INDEX/COUNT"), ("a/b", "INDEX/COUNT"), ("-1/3", "INDEX/COUNT"), ("", "INDEX/COUNT"),
])
def test_a_bad_shard_is_a_one_line_usage_error(spec: str, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        parse_shard(spec)


def test_options_check_the_shard_too() -> None:
    with pytest.raises(UsageError, match="below 2"):
        Options(shard=(2, 2))
    assert Options(shard=(1, 2)).shard == (1, 2)


@given(st.integers(1, 300), st.integers(1, 400))
def test_every_piece_is_in_exactly_one_shard_and_the_shards_are_contiguous(
        num_pieces: int, count: int) -> None:
    ranges = [shard_pieces(i, count, num_pieces) for i in range(count)]
    assert ranges[0].start == 0 and ranges[-1].stop == num_pieces
    for a, b in itertools.pairwise(ranges):
        assert a.stop == b.start
    sizes = [len(r) for r in ranges]
    assert max(sizes) - min(sizes) <= 1  # as even as can be


def test_shard_edges() -> None:
    assert shard_pieces(0, 1, 7) == range(0, 7)  # N = 1: everything
    # N > pieces: some shards are empty (complete at once), each piece still in one
    assert [list(shard_pieces(i, 5, 2)) for i in range(5)] == [[], [], [0], [], [1]]
    assert wanted(None, (0, 1)) == "******"
    assert wanted(None, (1, 3)) == "..**.."
    assert wanted(frozenset({0}), (1, 3)) == "......"  # a's pieces lie in shard 0
    assert wanted(None, (0, 7)) == "......"


# -- which selection a run uses -------------------------------------------------
def test_flags_win_over_so_and_the_saved_selection() -> None:
    saved = Selection(frozenset({4}))
    sel, notes = resolve(FILES, select=[0], select_only=(1,), saved=saved)
    assert sel.files == {0} and notes == []


def test_so_is_used_without_flags_and_indices_past_the_end_are_dropped() -> None:
    sel, notes = resolve(FILES, select_only=(1, 9, 10))
    assert sel.files == {1}
    assert notes == ["magnet so=: ignoring 2 file index(es) past the torrent's last file (4)"]
    with pytest.raises(UsageError, match="selects none"):
        resolve(FILES, select_only=(7,))


def test_a_resumed_run_without_flags_keeps_the_saved_selection() -> None:
    sel, notes = resolve(FILES, shard=(0, 2), saved=Selection(frozenset({3})))
    assert sel == Selection(frozenset({3}), (0, 2))
    assert "selected by the last run" in notes[0]
    assert resolve(FILES)[0] == Selection()


def test_changed_files_are_the_ones_selected_in_only_one_selection() -> None:
    assert changed_files(frozenset({0, 1}), frozenset({1, 3}), FILES) == [0, 3]
    assert changed_files(None, frozenset({0, 1, 3}), FILES) == [4]  # the pad never counts
    assert changed_files(frozenset({4}), None, FILES) == [0, 1, 3]
    assert changed_files(None, None, FILES) == []


@pytest.mark.parametrize("saved", [
    {"files": [1, 3], "shard": None}, {"files": None, "shard": [2, 5]},
])
def test_the_saved_selection_round_trips(saved: dict[str, object]) -> None:
    sel = Selection.from_json(saved, len(FILES))
    assert sel is not None and sel.to_json() == saved


@pytest.mark.parametrize("bad", [
    [1], "x", {"files": [5]}, {"files": [-1]}, {"files": [True]}, {"files": "1"},
    {"files": [1.0]}, {"shard": [3, 3]}, {"shard": [0]}, {"shard": ["0", "1"]},
    {"files": list(range(selection.MAX_SELECT_FILES + 1))},
])
def test_a_damaged_saved_selection_is_ignored(bad: object) -> None:
    assert Selection.from_json(bad, len(FILES)) is None


def test_the_selection_is_kept_beside_the_journal_and_goes_with_it(tmp_path: Path) -> None:
    jp = journal_path(str(tmp_path), b"\x22" * 20)
    assert load_selection(jp) is None
    save_selection(jp, {"files": [1], "shard": None})
    assert load_selection(jp) == {"files": [1], "shard": None}
    j = Journal(jp, b"\x22" * 20, 4, 16384)
    j.open(set())
    j.remove()
    assert not os.path.exists(selection_path(jp)) and not os.path.exists(jp)


def test_an_oversized_or_garbled_saved_selection_reads_as_none(tmp_path: Path) -> None:
    jp = journal_path(str(tmp_path), b"\x22" * 20)
    os.makedirs(os.path.dirname(jp))
    Path(selection_path(jp)).write_bytes(b"{" * 10)
    assert load_selection(jp) is None
    Path(selection_path(jp)).write_bytes(b" " * (MAX_SELECTION_BYTES + 1) + b"{}")
    assert load_selection(jp) is None


def test_each_shard_has_its_own_journal(tmp_path: Path) -> None:
    h = b"\x33" * 20
    paths = {journal_path(str(tmp_path), h), journal_path(str(tmp_path), h, (0, 3)),
             journal_path(str(tmp_path), h, (1, 3))}
    assert len(paths) == 3
    assert journal_path(str(tmp_path), h, (1, 3)).endswith(".shard-1-of-3.resume")


# -- the parts file -------------------------------------------------------------
def test_unselected_files_map_onto_the_parts_file_at_their_torrent_offsets(
        tmp_path: Path) -> None:
    meta = Meta(FILES, 10)
    lay = layout_for(meta, str(tmp_path), frozenset({1}))
    parts = parts_path(str(tmp_path), meta.info_hash)
    # piece 1 (bytes 10-19): the tail of a (unselected) then the head of b
    segs = [(lay.spans[i].path, foff, roff, n) for i, foff, roff, n in lay.segments(10, 10)]
    assert segs == [(parts, 10, 0, 5), (str(tmp_path / "t" / "b.bin"), 0, 5, 5)]
    assert [s.part for s in lay.spans] == [True, False, False, True, True]


def test_a_boundary_piece_round_trips_through_the_parts_file(tmp_path: Path) -> None:
    meta = Meta(FILES, 10)
    lay = layout_for(meta, str(tmp_path), frozenset({1}))
    data = bytes(range(53))
    with Storage(lay, writable=True) as st:
        st.create_files()
        for piece in (1, 2):
            segs, pinned = st.write_segments(piece * 10, 10)
            for fd, foff, roff, n in segs:
                os.pwrite(fd, data[piece * 10 + roff : piece * 10 + roff + n], foff)
            st.unpin(pinned)
    # only b was created; the parts file holds a's bytes 10-14, nothing else of a, c, e
    created = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")
                     if p.is_file())
    assert created == [".fasttorrent/" + meta.info_hash.hex() + ".parts", "t/b.bin"]
    assert (tmp_path / "t" / "b.bin").read_bytes() == data[15:25]
    with Storage(lay) as st:
        buf = bytearray(10)
        assert st.read_into(10, memoryview(buf)) and bytes(buf) == data[10:20]
        # piece 2: the rest of b, then the pad, which reads as zeros (BEP 47)
        assert st.read_into(20, memoryview(buf)) and bytes(buf) == data[20:25] + bytes(5)
        # a's head was never written: a hole of the sparse parts file, zeros (which the
        # piece's hash check refuses)
        st.read_into(0, memoryview(buf))
        assert bytes(buf) == bytes(10)
    # the whole torrent's layout reads b where it is, and misses a's bytes
    with Storage(layout_for(meta, str(tmp_path))) as st:
        assert not st.read_into(10, memoryview(buf))


def test_create_files_never_shrinks_data_another_shard_wrote(tmp_path: Path) -> None:
    meta = Meta(files_of(("t/a.bin", 40),), 10)
    lay = layout_for(meta, str(tmp_path))
    with Storage(lay, writable=True) as st:
        st.create_files()
    path = tmp_path / "t" / "a.bin"
    with open(path, "r+b") as f:
        f.seek(30)
        f.write(b"z" * 10)  # shard 3 of 4 wrote its piece
    with Storage(lay, writable=True) as st:  # shard 0 starts after it
        st.create_files()
    assert path.read_bytes() == bytes(30) + b"z" * 10


# -- the CLI ----------------------------------------------------------------------
def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "torrent", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=CMD_TIMEOUT, check=False)


@pytest.fixture(scope="module")
def small_torrent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from torrent.creator import create_torrent

    root = tmp_path_factory.mktemp("sel")
    for name, size in (("a.bin", 40_000), ("b.bin", 20_000)):
        (root / "p" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "p" / name).write_bytes(os.urandom(size))
    t = root / "p.torrent"
    t.write_bytes(create_torrent(str(root / "p"), piece_length=16384))
    return t


def test_info_json_numbers_the_files(small_torrent: Path) -> None:
    r = _cli("info", str(small_torrent), "--json", cwd=small_torrent.parent)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert [(f["index"], f["path"]) for f in d["files"]] == [(0, "p/a.bin"), (1, "p/b.bin")]


@pytest.mark.parametrize(("flags", "code", "why"), [
    (["--select", "3-1"], 2, "--select: range 3-1 runs backwards"),
    (["--select", "x"], 2, "--select: expected file indices"),
    (["--select", "2"], 2, "--select: file 2 does not exist"),
    (["--include", "*.iso"], 2, "leaves no file"),
    (["--shard", "3/3"], 2, "--shard: the index is 0-based"),
    (["--shard", "1/x"], 2, "--shard: expected INDEX/COUNT"),
])
def test_bad_selection_flags_exit_with_one_line(small_torrent: Path, tmp_path: Path,
                                                flags: list[str], code: int, why: str) -> None:
    out = tmp_path / "out"
    r = _cli("download", str(small_torrent), "-o", str(out), "--stall-timeout", "5",
             "--no-dht", *flags, cwd=tmp_path)
    assert r.returncode == code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and why in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert not out.exists()  # refused before anything was created
