"""The archive format (agents/archive.py): what goes in comes back, once, in offset order."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.archive import Archive, RawRecord, file_name

TOPIC = "events.raw"


def rec(offset: int, partition: int = 0, ts: int | None = None, value: bytes | None = None) -> RawRecord:
    return RawRecord(
        partition=partition,
        offset=offset,
        timestamp_ms=1_796_000_000_000 + offset if ts is None else ts,
        key=None if offset % 3 else f"k{offset}".encode(),
        value=value if value is not None else b"\x00\x00\x00\x00\x01" + offset.to_bytes(8, "big"),
        headers=(("rv.n", str(offset).encode()), ("empty", b"")) if offset % 2 else (),
    )


def read_all(archive: Archive, partition: int, start: int = 0, stop: int | None = None,
             batch_records: int = 10_000) -> list[RawRecord]:
    return [r for batch in archive.read(TOPIC, partition, start, stop, batch_records) for r in batch]


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    archive = Archive(str(tmp_path))
    records = [rec(o, partition=3) for o in range(100, 200)]
    records.append(RawRecord(3, 200, 5, None, None, (("h", b"\xff\x00"),)))
    f = archive.write(TOPIC, 3, list(reversed(records)))

    assert read_all(archive, 3) == records
    assert (f.first_offset, f.last_offset, f.records) == (100, 200, 101)
    assert (f.min_timestamp_ms, f.max_timestamp_ms) == (5, 1_796_000_000_199)
    assert f.path.endswith(f"{TOPIC}/partition=0003/{file_name(100, 200)}")
    assert f.bytes == Path(f.path).stat().st_size > 0
    assert archive.files(TOPIC) == {3: [f]}
    assert archive.next_offset(TOPIC, 3) == 201
    assert archive.next_offset(TOPIC, 0) == 0, "a partition never archived starts at 0"


def test_the_parquet_columns_have_the_documented_types(tmp_path: Path) -> None:
    archive = Archive(str(tmp_path))
    f = archive.write(TOPIC, 0, [rec(0), rec(1)])
    schema = pq.read_schema(f.path)
    assert [(n, str(schema.field(n).type)) for n in schema.names] == [
        ("partition", "int32"), ("offset", "int64"), ("timestamp_ms", "int64"), ("key", "binary"),
        ("value", "binary"), ("headers", "list<element: struct<key: string, value: binary>>"),
    ]
    assert pq.ParquetFile(f.path).metadata.row_group(0).column(0).compression == "ZSTD"


def test_a_file_url_and_a_plain_folder_are_the_same_archive(tmp_path: Path) -> None:
    Archive(str(tmp_path)).write(TOPIC, 1, [rec(0, 1), rec(1, 1)])
    assert read_all(Archive(tmp_path.as_uri()), 1) == [rec(0, 1), rec(1, 1)]


def test_rewriting_the_same_range_is_idempotent(tmp_path: Path) -> None:
    archive = Archive(str(tmp_path))
    records = [rec(o) for o in range(10)]
    first = archive.write(TOPIC, 0, records)
    second = archive.write(TOPIC, 0, records)
    assert first.path == second.path
    assert archive.files(TOPIC) == {0: [second]}
    assert read_all(archive, 0) == records


def test_overlapping_files_are_read_once_in_offset_order(tmp_path: Path) -> None:
    archive = Archive(str(tmp_path))
    archive.write(TOPIC, 0, [rec(o) for o in range(50)])
    archive.write(TOPIC, 0, [rec(o) for o in range(30, 80)])
    archive.write(TOPIC, 0, [rec(o) for o in range(40, 45)])  # inside another file
    archive.write(TOPIC, 0, [rec(o) for o in range(80, 100)])
    got = read_all(archive, 0, batch_records=7)
    assert [r.offset for r in got] == list(range(100))
    assert [r.offset for r in read_all(archive, 0, start=35, stop=85)] == list(range(35, 85))
    assert archive.next_offset(TOPIC, 0) == 100


def test_read_yields_batches_of_the_requested_size(tmp_path: Path) -> None:
    archive = Archive(str(tmp_path))
    archive.write(TOPIC, 0, [rec(o) for o in range(25)])
    archive.write(TOPIC, 0, [rec(o) for o in range(25, 31)])
    sizes = [len(b) for b in archive.read(TOPIC, 0, 0, batch_records=10)]
    assert sizes == [10, 10, 10, 1]


def test_read_skips_row_groups_and_files_outside_the_range(tmp_path: Path) -> None:
    archive = Archive(str(tmp_path))
    archive.write(TOPIC, 0, [rec(o) for o in range(25_000)])  # three row groups
    got = read_all(archive, 0, start=24_990, stop=25_005)
    assert [r.offset for r in got] == list(range(24_990, 25_000))
    assert read_all(archive, 0, start=30_000) == []


def test_time_lookup_names_the_first_file_that_may_hold_the_time(tmp_path: Path) -> None:
    archive = Archive(str(tmp_path))
    # Timestamps are producer data: the middle file holds a record older than its neighbour's.
    archive.write(TOPIC, 0, [rec(0, ts=1000), rec(1, ts=2000)])
    archive.write(TOPIC, 0, [rec(2, ts=1500), rec(3, ts=3000)])
    archive.write(TOPIC, 0, [rec(4, ts=4000), rec(5, ts=5000)])
    assert archive.first_offset_at(TOPIC, 0, 0) == 0
    assert archive.first_offset_at(TOPIC, 0, 2000) == 0
    assert archive.first_offset_at(TOPIC, 0, 2001) == 2
    assert archive.first_offset_at(TOPIC, 0, 4500) == 4
    assert archive.first_offset_at(TOPIC, 0, 5001) is None, "nothing archived reaches the time"
    assert archive.first_offset_at(TOPIC, 1, 0) is None


def test_a_partially_written_temporary_file_is_ignored(tmp_path: Path) -> None:
    archive = Archive(str(tmp_path))
    good = archive.write(TOPIC, 0, [rec(o) for o in range(10)])
    folder = Path(good.path).parent
    # A writer killed mid-file leaves its temporary name behind, truncated.
    data = Path(good.path).read_bytes()
    (folder / f".{file_name(10, 19)}.deadbeef.tmp").write_bytes(data[: len(data) // 2])
    (folder / "notes.txt").write_text("not an archive file")
    assert archive.files(TOPIC) == {0: [good]}
    assert archive.next_offset(TOPIC, 0) == 10
    assert [r.offset for r in read_all(archive, 0)] == list(range(10))


def test_a_failed_write_leaves_nothing_visible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = Archive(str(tmp_path))

    def disk_full(*_a: object, **_k: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("agents.archive.os.replace", disk_full)
    with pytest.raises(OSError):
        archive.write(TOPIC, 0, [rec(0)])
    folder = tmp_path / TOPIC / "partition=0000"
    assert list(folder.iterdir()) == [], "the temporary file is removed"
    assert archive.files(TOPIC) == {0: []}


def test_bad_input_is_refused(tmp_path: Path) -> None:
    archive = Archive(str(tmp_path))
    with pytest.raises(ValueError):
        archive.write(TOPIC, 0, [])
    with pytest.raises(ValueError):
        archive.write(TOPIC, 0, [rec(1), rec(1)])
    with pytest.raises(ValueError):
        archive.write(TOPIC, 0, [rec(1, partition=2)])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ranges=st.lists(st.tuples(st.integers(0, 60), st.integers(1, 20)), min_size=1, max_size=6),
       start=st.integers(0, 80), length=st.one_of(st.none(), st.integers(0, 80)))
def test_any_set_of_files_reads_as_their_union_once(tmp_path_factory: pytest.TempPathFactory,
                                                    ranges: list[tuple[int, int]], start: int,
                                                    length: int | None) -> None:
    archive = Archive(str(tmp_path_factory.mktemp("archive")))
    union: set[int] = set()
    for first, n in ranges:
        archive.write(TOPIC, 0, [rec(o) for o in range(first, first + n)])
        union.update(range(first, first + n))
    stop = None if length is None else start + length
    want = sorted(o for o in union if o >= start and (stop is None or o < stop))
    got = read_all(archive, 0, start, stop, batch_records=4)
    assert [r.offset for r in got] == want
    assert got == [rec(o) for o in want]
    assert archive.next_offset(TOPIC, 0) == max(union) + 1
    if stop is not None:
        uncovered = [o for lo, hi in archive.holes(TOPIC, 0, start, stop) for o in range(lo, hi)]
        assert uncovered == sorted(set(range(start, stop)) - union)


def test_listing_a_folder_that_is_being_created_and_removed_never_fails(tmp_path: Path) -> None:
    """pyarrow's local listing fails with "not found" on a folder that changes under it (the
    archiver creating a topic's folder while `archive status` or a replay lists the archive)."""
    import shutil
    import threading

    archive = Archive(str(tmp_path))
    folder = tmp_path / TOPIC / "partition=0000"
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp_path / TOPIC, ignore_errors=True)

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        seen = {tuple(archive.partitions(TOPIC)) for _ in range(5000)}
    finally:
        stop.set()
        worker.join()
    assert seen <= {(), (0,)}
