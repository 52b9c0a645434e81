"""Tests of the resume journal (torrent/journal.py) on real files in tmp_path."""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torrent.errors import StorageError
from torrent.journal import MAGIC, Journal, journal_path, metadata_path

IH = hashlib.sha1(b"torrent").digest()
OTHER_IH = hashlib.sha1(b"another torrent").digest()
NUM = 100
PL = 1 << 18
HEADER = 4 + 20 + 4 + 8  # magic | info-hash | num_pieces u32 | piece_length u64


def test_the_header_size_is_the_format_s() -> None:
    from torrent.journal import HEADER_SIZE

    assert HEADER_SIZE == HEADER
RECORD = 8


def make(outdir: Path, ih: bytes = IH, num: int = NUM, pl: int = PL) -> Journal:
    return Journal(journal_path(str(outdir), ih), ih, num, pl)


def test_path_is_beside_the_data(tmp_path: Path) -> None:
    expected = tmp_path / ".fasttorrent" / (IH.hex() + ".resume")
    assert journal_path(str(tmp_path), IH) == str(expected)


def test_no_journal_reads_none(tmp_path: Path) -> None:
    assert make(tmp_path).read() is None


def test_round_trip(tmp_path: Path) -> None:
    j = make(tmp_path)
    j.open({7, 3})
    j.append([0, 99])
    j.append([])
    j.append([50])
    j.close()
    assert make(tmp_path).read() == {0, 3, 7, 50, 99}
    assert j.count == 5


def test_file_format(tmp_path: Path) -> None:
    """The layout the docstring promises: header, then index | crc32(info_hash + index)."""
    j = make(tmp_path)
    j.open(None)
    j.append([5])
    j.close()
    data = Path(j.path).read_bytes()
    assert data[:HEADER] == struct.pack("<4s20sIQ", MAGIC, IH, NUM, PL)
    assert data[HEADER:] == struct.pack("<II", 5, zlib.crc32(IH + (5).to_bytes(4, "little")))


def test_header_only_is_an_empty_set(tmp_path: Path) -> None:
    j = make(tmp_path)
    j.open(set())
    j.close()
    assert os.path.getsize(j.path) == HEADER
    assert make(tmp_path).read() == set()


@pytest.mark.parametrize("cut", [1, 4, 7])
def test_torn_tail_is_ignored(tmp_path: Path, cut: int) -> None:
    j = make(tmp_path)
    j.open({1, 2})
    j.append([3])
    j.close()
    with open(j.path, "ab") as f:  # half a record, as a power cut leaves it
        f.write(struct.pack("<II", 4, zlib.crc32(IH + (4).to_bytes(4, "little")))[:cut])
    assert make(tmp_path).read() == {1, 2, 3}


def test_bad_crc_stops_reading(tmp_path: Path) -> None:
    j = make(tmp_path)
    j.open(None)
    j.append([10, 11, 12, 13])
    j.close()
    raw = bytearray(Path(j.path).read_bytes())
    raw[HEADER + 2 * RECORD + 4] ^= 0x01  # the crc of the third record (12)
    Path(j.path).write_bytes(raw)
    # 13 is intact, but nothing after a corrupt record is trusted
    assert make(tmp_path).read() == {10, 11}


def test_index_out_of_range_stops_reading(tmp_path: Path) -> None:
    j = make(tmp_path)
    j.open({1})
    j.close()
    with open(j.path, "ab") as f:
        bad = NUM  # valid crc, but no such piece
        f.write(struct.pack("<II", bad, zlib.crc32(IH + bad.to_bytes(4, "little"))))
        f.write(struct.pack("<II", 2, zlib.crc32(IH + (2).to_bytes(4, "little"))))
    assert make(tmp_path).read() == {1}


def test_record_of_another_torrent_stops_reading(tmp_path: Path) -> None:
    j = make(tmp_path)
    j.open({1})
    j.close()
    with open(j.path, "ab") as f:
        f.write(struct.pack("<II", 2, zlib.crc32(OTHER_IH + (2).to_bytes(4, "little"))))
    assert make(tmp_path).read() == {1}


@pytest.mark.parametrize(
    "other",
    [
        pytest.param({"ih": OTHER_IH}, id="other-info-hash"),
        pytest.param({"num": NUM + 1}, id="other-piece-count"),
        pytest.param({"pl": PL * 2}, id="other-piece-length"),
    ],
)
def test_wrong_header_reads_none(tmp_path: Path, other: dict) -> None:
    j = make(tmp_path)
    j.open({1, 2})
    j.close()
    reader = make(tmp_path, **other)
    # same file, read as another torrent's journal
    reader.path = j.path
    assert reader.read() is None


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"FTJ", id="short-magic"),
        pytest.param(b"XXXX" + b"\0" * 40, id="bad-magic"),
        pytest.param(bytes(range(64)), id="garbage"),
    ],
)
def test_not_a_journal_reads_none(tmp_path: Path, content: bytes) -> None:
    j = make(tmp_path)
    os.makedirs(os.path.dirname(j.path))
    Path(j.path).write_bytes(content)
    assert j.read() is None


def test_unreadable_reads_none(tmp_path: Path) -> None:
    j = make(tmp_path)
    os.makedirs(j.path)  # a directory where the journal should be: EISDIR
    assert j.read() is None


def test_open_rewrites_compactly(tmp_path: Path) -> None:
    j = make(tmp_path)
    j.open({5})
    j.append([6, 6, 5, 7])  # repeats happen (an endgame copy, a retried batch)
    j.close()
    with open(j.path, "ab") as f:
        f.write(b"\x01\x02\x03")  # torn tail
    done = make(tmp_path).read()
    assert done == {5, 6, 7}
    j2 = make(tmp_path)
    j2.open(done)
    assert os.path.getsize(j2.path) == HEADER + 3 * RECORD
    assert j2.count == 3
    # appends go after the rewritten records, not after the old torn tail
    j2.append([8])
    j2.close()
    assert make(tmp_path).read() == {5, 6, 7, 8}
    assert not os.path.exists(j2.path + ".tmp")
    assert sorted(os.listdir(tmp_path / ".fasttorrent")) == [IH.hex() + ".resume"]


def test_open_none_discards_old_records(tmp_path: Path) -> None:
    j = make(tmp_path)
    j.open({1, 2, 3})
    j.close()
    j2 = make(tmp_path)
    j2.open(None)
    j2.close()
    assert make(tmp_path).read() == set()


def test_append_before_open_is_a_no_op(tmp_path: Path) -> None:
    j = make(tmp_path)
    j.append([1])
    assert not os.path.exists(j.path)


def test_remove_deletes_journal_and_empty_folder(tmp_path: Path) -> None:
    j = make(tmp_path)
    j.open({1})
    j.remove()
    assert not os.path.exists(tmp_path / ".fasttorrent")
    assert make(tmp_path).read() is None
    j.remove()  # twice: harmless


def test_remove_takes_the_kept_metadata_of_a_magnet_along(tmp_path: Path) -> None:
    j = make(tmp_path)
    j.open({1})
    kept = Path(metadata_path(str(tmp_path), IH))
    assert kept.parent == Path(j.path).parent and kept.name == IH.hex() + ".torrent"
    kept.write_bytes(b"d4:infod4:name1:xee")
    theirs = Path(metadata_path(str(tmp_path), OTHER_IH))
    theirs.write_bytes(b"d4:infod4:name1:yee")
    j.remove()
    assert not kept.exists() and not os.path.exists(j.path)
    assert theirs.exists()  # another torrent's metadata stays, and so does the folder


def test_remove_keeps_a_folder_shared_with_another_torrent(tmp_path: Path) -> None:
    mine, theirs = make(tmp_path), make(tmp_path, ih=OTHER_IH)
    mine.open({1})
    theirs.open({2})
    theirs.close()
    mine.remove()
    assert not os.path.exists(mine.path)
    assert make(tmp_path, ih=OTHER_IH).read() == {2}


def test_remove_without_journal_is_harmless(tmp_path: Path) -> None:
    make(tmp_path).remove()
    assert list(tmp_path.iterdir()) == []


def test_open_failure_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / ".fasttorrent").mkdir()
    j = make(tmp_path)
    os.makedirs(j.path + ".tmp")  # the temporary file cannot be created
    with pytest.raises(StorageError, match="resume journal"):
        j.open({1})


def test_journal_folder_blocked_by_a_file_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / ".fasttorrent").write_bytes(b"not a folder")
    with pytest.raises(StorageError, match="resume journal"):
        make(tmp_path).open({1})


# -- property: any truncation yields a prefix -------------------------------------------------


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(initial=st.sets(st.integers(0, NUM - 1), max_size=20),
       batches=st.lists(st.lists(st.integers(0, NUM - 1), min_size=1, max_size=5), max_size=6),
       data=st.data())
def test_any_truncation_yields_a_prefix(tmp_path: Path, initial: set[int],
                                        batches: list[list[int]], data: st.DataObject) -> None:
    """Cut a valid journal anywhere: the reader sees exactly the records wholly before the cut
    (None when the header itself is cut)."""
    out = tmp_path / os.urandom(6).hex()
    j = make(out)
    j.open(initial)
    for b in batches:
        j.append(b)
    j.close()
    full = Path(j.path).read_bytes()
    order = sorted(initial) + [i for b in batches for i in b]
    assert len(full) == HEADER + RECORD * len(order)
    cut = data.draw(st.integers(0, len(full)), label="cut")
    Path(j.path).write_bytes(full[:cut])
    got = make(out).read()
    if cut < HEADER:
        assert got is None
    else:
        assert got == set(order[: (cut - HEADER) // RECORD])


def test_oversized_journal_is_not_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More bytes than any run could write: damage (or not ours); read() refuses it (a recheck)."""
    import torrent.journal as jm

    monkeypatch.setattr(jm, "MAX_SEAL_BYTES", 64)
    j = make(tmp_path)
    j.open({0, 1})
    j.close()
    assert make(tmp_path).read() == {0, 1}
    limit = 36 + 8 * NUM * jm.MAX_JOURNAL_RUNS + 64
    with open(j.path, "ab") as f:
        f.write(b"\0" * limit)
    assert make(tmp_path).read() is None
