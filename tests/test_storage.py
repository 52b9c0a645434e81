"""Tests of file layout and piece I/O (torrent/storage.py) on real files in tmp_path."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers.storagewrite import write
from hypothesis import given, settings
from hypothesis import strategies as st

from torrent import storage
from torrent.errors import DiskFull, InvalidTorrent, StorageError
from torrent.storage import FileSpan, Layout, Storage, check_free_space, check_output_paths


def make_layout(root: Path | str, files: Sequence[tuple[Any, ...]],
                piece_length: int = 16) -> Layout:
    """Spans from ``(rel, length[, pad])`` in torrent order, under ``root``."""
    spans = []
    off = 0
    for f in files:
        rel, length = f[0], f[1]
        pad = len(f) > 2 and bool(f[2])
        spans.append(FileSpan(path=os.path.join(str(root), *rel.split("/")), rel=rel,
                              length=length, offset=off, pad=pad))
        off += length
    return Layout(spans, piece_length, off)


# a(10) | empty(0) | pad(6) | b(20): 36 bytes, pieces of 16
MIXED: list[tuple[Any, ...]] = [("t/a", 10), ("t/empty", 0), ("t/.pad/6", 6, True), ("t/b", 20)]


# -- Layout --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "length", "expected"),
    [
        (0, 36, [(0, 0, 0, 10), (2, 0, 10, 6), (3, 0, 16, 20)]),
        (8, 10, [(0, 8, 0, 2), (2, 0, 2, 6), (3, 0, 8, 2)]),
        (10, 6, [(2, 0, 0, 6)]),  # starts where the empty file sits
        (16, 16, [(3, 0, 0, 16)]),  # piece 1, inside one file
        (32, 4, [(3, 16, 0, 4)]),  # the short last piece
        (3, 0, []),
    ],
)
def test_segments_cross_file_boundaries(tmp_path: Path, start: int, length: int,
                                        expected: list[tuple[int, int, int, int]]) -> None:
    lay = make_layout(tmp_path, MIXED)
    assert list(lay.segments(start, length)) == expected


def test_segments_skip_zero_length_files_at_the_edges(tmp_path: Path) -> None:
    lay = make_layout(tmp_path, [("z0", 0), ("z1", 0), ("a", 5), ("z2", 0), ("b", 3), ("z3", 0)])
    assert list(lay.segments(0, 8)) == [(2, 0, 0, 5), (4, 0, 5, 3)]
    assert list(lay.segments(5, 3)) == [(4, 0, 0, 3)]


def test_layout_sizes(tmp_path: Path) -> None:
    lay = make_layout(tmp_path, MIXED)
    assert lay.total_size == 36 and lay.num_pieces == 3
    assert [lay.piece_size(i) for i in range(3)] == [16, 16, 4]
    assert [list(lay.pieces_of_span(i)) for i in range(4)] == [[0], [], [0], [1, 2]]


@settings(max_examples=300, deadline=None)
@given(lengths=st.lists(st.integers(0, 50), min_size=1, max_size=8), data=st.data())
def test_segments_cover_the_range_exactly(lengths: list[int], data: st.DataObject) -> None:
    """Segments are contiguous, inside their file, skip empty files, and add up to the range."""
    lay = make_layout("/x", [(f"f{i}", n) for i, n in enumerate(lengths)])
    total = lay.total_size
    start = data.draw(st.integers(0, total), label="start")
    length = data.draw(st.integers(0, total - start), label="length")
    pos = start
    for i, foff, roff, n in lay.segments(start, length):
        s = lay.spans[i]
        assert n > 0 and s.length > 0
        assert roff == pos - start
        assert s.offset + foff == pos
        assert foff + n <= s.length
        pos += n
    assert pos == start + length


# -- reading ---------------------------------------------------------------------------------


def test_read_into_zero_fills_missing_and_short_files(tmp_path: Path) -> None:
    lay = make_layout(tmp_path, MIXED)
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a").write_bytes(b"A" * 10)
    (tmp_path / "t" / "b").write_bytes(b"B" * 12)  # 8 bytes short
    with Storage(lay) as s:
        buf = bytearray(b"\xff" * 36)
        assert s.read_into(0, memoryview(buf)) is False
        assert bytes(buf) == b"A" * 10 + bytes(6) + b"B" * 12 + bytes(8)
        # a range inside the present bytes is complete
        buf = bytearray(b"\xff" * 20)
        assert s.read_into(0, memoryview(buf)) is True
        assert bytes(buf) == b"A" * 10 + bytes(6) + b"B" * 4
        # a range in the missing tail
        buf = bytearray(b"\xff" * 4)
        assert s.read_into(32, memoryview(buf)) is False
        assert bytes(buf) == bytes(4)
    os.unlink(tmp_path / "t" / "a")
    with Storage(lay) as s:
        buf = bytearray(b"\xff" * 16)
        assert s.read_into(0, memoryview(buf)) is False
        assert bytes(buf) == bytes(16)


def test_read_only_storage_creates_nothing(tmp_path: Path) -> None:
    lay = make_layout(tmp_path / "out", MIXED)
    with Storage(lay) as s:
        assert s.read_into(0, memoryview(bytearray(36))) is False
    assert not (tmp_path / "out").exists()


def test_a_directory_where_a_file_should_be_reads_as_missing(tmp_path: Path) -> None:
    lay = make_layout(tmp_path, [("a", 8)])
    (tmp_path / "a").mkdir()
    with Storage(lay) as s:
        buf = bytearray(b"\xff" * 8)
        assert s.read_into(0, memoryview(buf)) is False
        assert bytes(buf) == bytes(8)


# -- writing ---------------------------------------------------------------------------------


def test_write_across_files_skips_pad_files(tmp_path: Path) -> None:
    lay = make_layout(tmp_path, MIXED)
    payload = bytes(range(1, 37))
    with Storage(lay, writable=True) as s:
        write(s, 0, memoryview(payload))
        s.sync()
    assert (tmp_path / "t" / "a").read_bytes() == payload[:10]
    assert (tmp_path / "t" / "b").read_bytes() == payload[16:]
    assert not (tmp_path / "t" / ".pad").exists()
    # the pad range reads back as zeros, whatever was written over it
    with Storage(lay) as s:
        buf = bytearray(36)
        assert s.read_into(0, memoryview(buf)) is True
    assert bytes(buf) == payload[:10] + bytes(6) + payload[16:]


def test_write_at_an_offset_inside_a_file(tmp_path: Path) -> None:
    lay = make_layout(tmp_path, [("a", 10), ("b", 10)])
    with Storage(lay, writable=True) as s:
        s.create_files(preallocate=False)
        write(s, 7, memoryview(b"xyzuv"))
    assert (tmp_path / "a").read_bytes() == bytes(7) + b"xyz"
    assert (tmp_path / "b").read_bytes() == b"uv" + bytes(8)


def test_write_error_names_the_file(tmp_path: Path) -> None:
    lay = make_layout(tmp_path, [("sub/a", 4)])
    (tmp_path / "sub").write_bytes(b"a file where a folder is needed")
    with Storage(lay, writable=True) as s, pytest.raises(StorageError, match="sub/a"):
        write(s, 0, memoryview(b"data"))


def test_create_files_preallocates_to_full_length(tmp_path: Path) -> None:
    big = 3 << 20
    lay = make_layout(tmp_path, [("d/big", big), ("d/empty", 0), ("d/.pad/1", 1000, True),
                                 ("d/small", 5000)])
    with Storage(lay, writable=True) as s:
        s.create_files()
    assert os.path.getsize(tmp_path / "d" / "big") == big
    assert os.path.getsize(tmp_path / "d" / "small") == 5000
    assert os.path.getsize(tmp_path / "d" / "empty") == 0
    assert not (tmp_path / "d" / ".pad").exists()
    assert os.stat(tmp_path / "d" / "big").st_blocks * 512 >= big  # blocks reserved


def test_create_files_without_preallocation_is_sparse(tmp_path: Path) -> None:
    big = 3 << 20
    lay = make_layout(tmp_path, [("big", big)])
    with Storage(lay, writable=True) as s:
        s.create_files(preallocate=False)
    st = os.stat(tmp_path / "big")
    assert st.st_size == big and st.st_blocks * 512 < big


def test_create_files_keeps_existing_data(tmp_path: Path) -> None:
    lay = make_layout(tmp_path, [("a", 100)])
    (tmp_path / "a").write_bytes(b"keep" * 5)
    with Storage(lay, writable=True) as s:
        s.create_files()
    data = (tmp_path / "a").read_bytes()
    assert data == b"keep" * 5 + bytes(80)


# -- output paths ------------------------------------------------------------------------------


def test_check_output_paths_accepts_a_normal_layout(tmp_path: Path) -> None:
    check_output_paths(make_layout(tmp_path, MIXED), str(tmp_path))


def test_check_output_paths_refuses_a_symlink_leading_outside(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, out / "t")
    with pytest.raises(StorageError, match="symlink") as ei:
        check_output_paths(make_layout(out, MIXED), str(out))
    assert "t/a" in str(ei.value)
    assert list(elsewhere.iterdir()) == []


def test_check_output_paths_refuses_a_symlinked_file_leading_outside(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(tmp_path / "victim", out / "a")
    with pytest.raises(StorageError, match="symlink"):
        check_output_paths(make_layout(out, [("a", 5)]), str(out))


def test_check_output_paths_symlink_staying_inside_reads_but_never_writes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "real").mkdir(parents=True)
    os.symlink(out / "real", out / "t")
    check_output_paths(make_layout(out, MIXED), str(out), writing=False)  # seeding reads it
    with pytest.raises(StorageError, match="'t' is a symlink"):
        check_output_paths(make_layout(out, MIXED), str(out))


@pytest.mark.parametrize("pair", [("d/a.bin", "d/a.bin"), ("d/Readme", "d/README"),
                                  ("d/\u00c9t\u00e9", "d/\u00e9T\u00c9")])
def test_check_output_paths_refuses_two_files_on_one_path(tmp_path: Path,
                                                         pair: tuple[str, str]) -> None:
    lay = make_layout(tmp_path, [(pair[0], 5), ("d/other", 1), (pair[1], 7)])
    with pytest.raises(InvalidTorrent, match="two files on one path"):
        check_output_paths(lay, str(tmp_path))


def test_check_output_paths_ignores_repeated_pad_paths(tmp_path: Path) -> None:
    lay = make_layout(tmp_path, [("d/a", 5, False), ("d/.pad/11", 11, True), ("d/b", 16),
                                 ("d/.pad/11", 11, True), ("d/c", 1)])
    check_output_paths(lay, str(tmp_path))


# -- free space --------------------------------------------------------------------------------


def fake_statvfs(monkeypatch: pytest.MonkeyPatch, free: int, seen: list[str]) -> None:
    def statvfs(path: str) -> SimpleNamespace:
        seen.append(str(path))
        return SimpleNamespace(f_bavail=free // 4096, f_frsize=4096)

    monkeypatch.setattr(storage.os, "statvfs", statvfs)


def test_check_free_space_raises_disk_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lay = make_layout(tmp_path, [("a", 1 << 20), ("b", 1 << 20)])
    seen: list[str] = []
    fake_statvfs(monkeypatch, 1 << 20, seen)
    with pytest.raises(DiskFull) as ei:
        check_free_space(lay, str(tmp_path))
    assert ei.value.exit_code == 4
    assert str(1 << 20) in str(ei.value) and str(2 << 20) in str(ei.value)
    assert str(tmp_path) in str(ei.value)
    assert seen == [str(tmp_path)]


def test_check_free_space_passes_when_it_fits(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    lay = make_layout(tmp_path, [("a", 1 << 20), ("pad", 1 << 30, True)])  # pads need nothing
    fake_statvfs(monkeypatch, 1 << 20, [])
    check_free_space(lay, str(tmp_path))


def test_check_free_space_counts_only_what_is_missing(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    lay = make_layout(tmp_path, [("a", 1 << 20), ("b", 64 << 10)])
    with Storage(lay, writable=True) as s:
        s.create_files()  # a and b fully allocated: nothing more needed
    fake_statvfs(monkeypatch, 0, [])
    check_free_space(lay, str(tmp_path))


def test_check_free_space_probes_the_nearest_existing_parent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "not" / "yet"
    lay = make_layout(out, [("a", 100)])
    seen: list[str] = []
    fake_statvfs(monkeypatch, 1 << 30, seen)
    check_free_space(lay, str(out))
    assert seen == [str(tmp_path)]
    assert not (tmp_path / "not").exists()


# -- descriptors: LRU and pins -----------------------------------------------------------------


def many_files(root: Path, n: int, size: int = 8) -> Layout:
    return make_layout(root, [(f"f{i}", size) for i in range(n)], piece_length=16)


def test_open_files_stay_bounded(tmp_path: Path) -> None:
    lay = many_files(tmp_path, 10)
    payload = bytes(range(80))
    with Storage(lay, writable=True, max_fds=3) as s:
        for i in range(10):
            while not s.room_for(i * 8, 8):  # written files wait for a flush
                flush = s.pin_dirty()
                for fd in flush.fds:
                    os.fdatasync(fd)
                s.flushed(flush)
            write(s, i * 8, memoryview(payload)[i * 8 : i * 8 + 8])
            assert s.open_fds <= 3
        s.sync()
        assert s.retired == 0
    with Storage(lay, max_fds=3) as s:
        buf = bytearray(80)
        assert s.read_into(0, memoryview(buf))
        assert s.open_fds <= 3
    assert bytes(buf) == payload


@pytest.mark.parametrize(("limit", "budget"), [(20_000, storage.MAX_OPEN_FDS), (1024, 256),
                                               (256, 64), (12, storage.MIN_OPEN_FDS)])
def test_descriptor_budget_follows_a_low_fd_limit(limit: int, budget: int) -> None:
    assert storage.open_fd_budget(limit) == budget


def test_evicting_a_written_file_does_not_sync_it_there(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A file written since the last flush and closed from the cache is not synced on
    the caller's thread: its descriptor stays open, counted, until a flush syncs it
    (pin_dirty hands it out) and flushed() closes it."""
    synced: list[int] = []
    monkeypatch.setattr(storage.os, "fdatasync", synced.append)
    lay = many_files(tmp_path, 6)
    with Storage(lay, writable=True, max_fds=4) as s:
        write(s, 0, b"a" * 8)  # file 0, dirty
        first = s._fds[0]
        for i in range(1, 4):
            write(s, i * 8, b"b" * 8)  # files 1-3: the budget is full of written files
        # file 4 does not fit until a flush: the written files are retired, not synced
        assert not s.room_for(32, 8)
        assert not s._fds and s.retired == 4 and s.open_fds == 4
        assert synced == []
        os.fstat(first)  # still open: the flush will sync it
        flush = s.pin_dirty()
        assert sorted(flush.fds) == sorted(flush.retired) and first in flush.retired
        assert len(flush.retired) == 4 and flush.spans == []
        assert s.retired == 0
        s.flushed(flush)
        with pytest.raises(OSError):
            os.fstat(first)  # closed once synced
        assert s.open_fds == 0 and s.room_for(32, 8)
        write(s, 32, b"c" * 8)
        assert s.open_fds == 1
    assert (tmp_path / "f0").read_bytes() == b"a" * 8
    assert (tmp_path / "f4").read_bytes() == b"c" * 8


def rooted(root: Path, n: int, size: int = 8) -> Layout:
    """``many_files`` with the output directory known (files opened beneath it)."""
    lay = many_files(root, n, size)
    return Layout(lay.spans, lay.piece_length, lay.total_size, str(root))


def test_a_written_file_closed_on_the_output_filesystem_is_synced_with_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the output directory's filesystem a written file is closed at once (nothing
    retired, no fdatasync on the caller's thread); the next flush syncs the filesystem
    through the output directory's descriptor (syncfs)."""
    synced: list[int] = []
    monkeypatch.setattr(storage.os, "fdatasync", synced.append)
    lay = rooted(tmp_path, 6)
    with Storage(lay, writable=True, max_fds=4) as s:
        for i in range(4):
            assert s.room_for(i * 8, 8)
            write(s, i * 8, b"w" * 8)
        assert s.retired == 0 and s.open_fds <= 4 and synced == []
        flush = s.pin_dirty()
        assert flush.whole_fs == [s._root_fd] and flush.retired == []
        assert flush.fds == [] and flush.spans == []  # the open ones too: one filesystem
        s.flushed(flush)
        assert s.pin_dirty() == ([], [], [], [])  # the filesystem was synced
        s.sync()
        assert synced == []
    assert [(tmp_path / f"f{i}").read_bytes() for i in range(4)] == [b"w" * 8] * 4


def test_a_flush_of_many_files_syncs_their_filesystem_once(tmp_path: Path) -> None:
    n = storage.SYNCFS_FILES + 1
    with Storage(rooted(tmp_path, n), writable=True, max_fds=4 * n) as s:
        write(s, 0, bytes(8 * n))
        flush = s.pin_dirty()
        assert flush.whole_fs == [s._root_fd]
        assert flush.fds == [] and flush.spans == []  # no fdatasync of each
        s.flushed(flush)
        write(s, 0, bytes(16))  # two files: an fdatasync each
        flush = s.pin_dirty()
        assert flush.whole_fs == [] and len(flush.fds) == 2
        s.flushed(flush)


def test_room_for_waits_on_pins_and_admits_a_piece_larger_than_the_budget(
        tmp_path: Path) -> None:
    lay = many_files(tmp_path, 8)  # 8-byte files, 16-byte pieces
    with Storage(lay, writable=True, max_fds=2) as s:
        assert s.room_for(0, 16)
        _, pinned = s.write_segments(0, 16)  # files 0 and 1: the whole budget, pinned
        assert s.open_fds == 2
        assert not s.room_for(16, 16)  # files 2 and 3 must wait for the write
        s.mark_dirty(pinned)
        s.unpin(pinned)
        assert not s.room_for(16, 16)  # written, unsynced: retired, still counted
        s.flushed(s.pin_dirty())
        assert s.room_for(16, 16) and s.open_fds == 0
        # a range over more files than the whole budget: nothing to wait for, admitted
        assert s.room_for(0, 64)
        _, pinned = s.write_segments(0, 64)
        assert s.open_fds == 8
        s.unpin(pinned)
        s.flushed(s.pin_dirty())
        assert s.open_fds <= 2  # back under the budget once it is unpinned


def test_reads_beside_pinned_files_stay_in_the_budget(tmp_path: Path) -> None:
    lay = many_files(tmp_path, 4)
    with Storage(lay, writable=True, max_fds=2) as s:
        write(s, 0, bytes(range(32)))
        s.sync()
        _, pinned = s.write_segments(0, 16)  # files 0 and 1 pinned
        buf = bytearray(8)
        assert s.read_into(24, memoryview(buf)) and bytes(buf) == bytes(range(24, 32))
        assert s.open_fds == 2  # the read's descriptor was closed again
        assert s.read_run_into(16, [memoryview(buf)]) and bytes(buf) == bytes(range(16, 24))
        assert s.open_fds == 2
        s.unpin(pinned)


def test_pinned_descriptors_survive_lru_pressure(tmp_path: Path) -> None:
    lay = many_files(tmp_path, 6)
    with Storage(lay, writable=True, max_fds=2) as s:
        segs, pinned = s.write_segments(0, 12)  # file 0 whole, file 1's first 4 bytes
        assert [(foff, roff, n) for _, foff, roff, n in segs] == [(0, 0, 8), (0, 8, 4)]
        assert sorted(pinned) == [0, 1]
        fds = [fd for fd, *_ in segs]
        for i in range(2, 6):  # pressure: open four more files
            write(s, i * 8, memoryview(b"x" * 8))
        # the native writer may still use the pinned descriptors
        for fd, foff, _roff, n in segs:
            os.fstat(fd)
            os.pwrite(fd, b"P" * n, foff)
        assert s._fds[0] == fds[0] and s._fds[1] == fds[1]
        s.unpin(pinned)
        s.sync()
        for i in range(2, 6):
            write(s, i * 8, memoryview(b"y" * 8))
        assert 0 not in s._fds and 1 not in s._fds  # unpinned: evicted now
        assert len(s._fds) <= 2
    assert (tmp_path / "f0").read_bytes() == b"P" * 8
    assert (tmp_path / "f1").read_bytes()[:4] == b"PPPP"


def test_write_segments_skip_pad_files(tmp_path: Path) -> None:
    lay = make_layout(tmp_path, MIXED)
    with Storage(lay, writable=True) as s:
        segs, pinned = s.write_segments(0, 36)
        assert sorted(pinned) == [0, 3]
        assert [(foff, roff, n) for _, foff, roff, n in segs] == [(0, 0, 10), (0, 16, 20)]
        s.unpin(pinned)
    assert not (tmp_path / "t" / ".pad").exists()


def test_pins_are_counted(tmp_path: Path) -> None:
    lay = many_files(tmp_path, 3)
    with Storage(lay, writable=True, max_fds=1) as s:
        _, p1 = s.write_segments(0, 8)
        _, p2 = s.write_segments(0, 8)
        s.unpin(p1)  # one pin left
        write(s, 8, memoryview(b"a" * 8))
        write(s, 16, memoryview(b"b" * 8))
        assert 0 in s._fds
        s.unpin(p2)
        write(s, 8, memoryview(b"c" * 8))
        assert 0 not in s._fds


def test_pin_dirty_returns_written_descriptors(tmp_path: Path) -> None:
    lay = many_files(tmp_path, 3)
    with Storage(lay, writable=True) as s:
        write(s, 0, memoryview(b"z" * 12))  # files 0 and 1
        flush = s.pin_dirty()
        assert sorted(flush.spans) == [0, 1] and flush.retired == []
        assert sorted(flush.fds) == sorted([s._fds[0], s._fds[1]])
        for fd in flush.fds:
            os.fdatasync(fd)
        assert s.pin_dirty() == ([], [], [], [])  # nothing written since
        s.flushed(flush)


# -- direct I/O ---------------------------------------------------------------------------


def test_direct_storage_writes_pieces_bit_exact_through_the_native_writer(tmp_path: Path) -> None:
    """write_segments hands out an O_DIRECT descriptor per file; the native writer's
    result is bit-exact across a file boundary that is not page-aligned."""
    import hashlib
    import mmap
    import select

    from torrent import _io

    piece = 64 * 1024
    lay = make_layout(tmp_path, [("d/a", 3 * piece + 1234), ("d/b", piece - 1234)], piece)
    data = os.urandom(lay.total_size)
    slot = mmap.mmap(-1, piece)
    efd = os.eventfd(0, os.EFD_CLOEXEC)
    t = _io.IOThread(efd)
    with Storage(lay, writable=True, direct=True) as s:
        s.create_files(preallocate=True)
        for i in range(4):
            chunk = data[i * piece : (i + 1) * piece]
            slot[: len(chunk)] = chunk
            segs, pinned = s.write_segments(i * piece, len(chunk))
            # an O_DIRECT descriptor where the segment holds a whole aligned page
            assert [seg[4] >= 0 for seg in segs] == [
                n - (-foff % _io.DIRECT_ALIGN) >= _io.DIRECT_ALIGN for _, foff, _, n, _ in segs]
            t.submit_piece(i, slot, len(chunk), hashlib.sha1(chunk).digest(), segs)
            assert select.select([efd], [], [], 10)[0]
            os.eventfd_read(efd)
            assert t.completed() == [(i, _io.JOB_OK, 0)]
            s.unpin(pinned)
    t.close()
    os.close(efd)
    assert (tmp_path / "d" / "a").read_bytes() + (tmp_path / "d" / "b").read_bytes() == data


def test_direct_storage_falls_back_where_the_filesystem_refuses_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno as errno_mod

    real_open = os.open

    def no_direct(path: Any, flags: int, *args: Any) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno_mod.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)
    lay = make_layout(tmp_path, [("a", 8192)])
    with Storage(lay, writable=True, direct=True) as s:
        segs, _ = s.write_segments(0, 8192)
        assert not s.direct
        assert segs == [(segs[0][0], 0, 0, 8192, -1)]  # no direct descriptor
        segs, _ = s.write_segments(0, 8192)
        assert segs == [(segs[0][0], 0, 0, 8192)]  # plain segments from then on


@pytest.mark.parametrize(("start", "sizes"), [(0, [4, 6]), (2, [3, 3, 2]), (8, [10, 8, 10]),
                                              (30, [6])])
def test_read_run_into_matches_read_into(tmp_path: Path, start: int, sizes: list[int]) -> None:
    """One preadv where the run lies in one file; across files, pads and a missing
    file, the same bytes and the same completeness as read_into."""
    lay = make_layout(tmp_path, MIXED)
    payload = bytes(range(1, 37))
    with Storage(lay, writable=True) as s:
        write(s, 0, memoryview(payload))
    (tmp_path / "t" / "b").write_bytes(payload[16:30])  # b is short: its tail is missing
    with Storage(lay) as s:
        bufs = [memoryview(bytearray(n)) for n in sizes]
        ok = s.read_run_into(start, bufs)
        whole = bytearray(sum(sizes))
        ok_whole = s.read_into(start, memoryview(whole))
    assert b"".join(bytes(b) for b in bufs) == bytes(whole)
    assert ok == ok_whole


def test_alignment_places_a_range_as_its_first_real_file_lies_on_disk(tmp_path: Path) -> None:
    # a(10) | empty(0) | pad(6) | b(20): piece 0 starts in a at file offset 0; a range
    # starting at 12 starts in the pad, so b (file offset 0, range offset 4) decides
    lay = make_layout(tmp_path, MIXED)
    with Storage(lay, writable=True) as s:
        assert s.alignment(0, 16, 8) == 0
        assert s.alignment(3, 10, 8) == 3  # a's byte 3 must sit at buffer offset = 3 (mod 8)
        assert s.alignment(12, 10, 8) == (0 - 4) % 8
        assert s.alignment(10, 6, 8) == 0  # only pad: nothing to align


def test_whole_page_rule_is_the_native_writers() -> None:
    from torrent import _io

    assert storage._PAGE == _io.DIRECT_ALIGN
    assert storage._has_whole_page(0, _io.DIRECT_ALIGN)
    assert not storage._has_whole_page(1, _io.DIRECT_ALIGN)
    assert storage._has_whole_page(1, 2 * _io.DIRECT_ALIGN - 1)
    assert not storage._has_whole_page(1, 2 * _io.DIRECT_ALIGN - 2)


def test_existing_files_asks_nothing_of_a_missing_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lay = make_layout(tmp_path, [("a/x", 4), ("a/y", 4), ("b/z", 4), ("b/w", 4),
                                 ("p/.pad", 4, True)])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z").write_bytes(b"zzzz")
    (tmp_path / "b" / "w").mkdir()  # a directory where a file goes: it exists (rechecked)
    asked: list[str] = []
    real_stat = os.stat

    def stat(path: Any, *args: Any, **kw: Any) -> os.stat_result:
        asked.append(str(path))
        return real_stat(path, *args, **kw)

    monkeypatch.setattr(storage.os, "stat", stat)
    got = [(s.rel, st.st_size) for s, st in storage.existing_files(lay)]
    assert [rel for rel, _ in got] == ["b/z", "b/w"] and got[0][1] == 4
    # 'a' is missing: neither of its files was asked for (one isdir of 'a' instead)
    assert not any(p.endswith(("/a/x", "/a/y")) for p in asked)
