import pytest

from tables import hll

N = 1_000_000


@pytest.fixture(scope="module")
def users() -> list[str]:
    return [f"user-{i}" for i in range(N)]


def test_a_million_distinct_users_estimate_within_two_percent_at_lg_k_12(users: list[str]) -> None:
    sketch = hll.new(12)
    hll.update_many(sketch, users)
    hll.update_many(sketch, users[:100_000])  # repeats change nothing
    assert abs(hll.estimate(sketch) / N - 1) < 0.02
    assert len(hll.to_bytes(sketch)) < 2_200  # HLL_4: 2**12 registers in ~2 KB


def test_per_partition_sketches_merged_from_bytes_estimate_the_union(users: list[str]) -> None:
    # Four partitions see overlapping subsets: each user on one or two partitions.
    parts = [hll.new(12) for _ in range(4)]
    for i, user in enumerate(users):
        parts[i % 4].update(user)
        if i % 3 == 0:
            parts[(i + 1) % 4].update(user)
    blobs = [hll.to_bytes(p) for p in parts]
    merged = hll.merge(blobs, 12)
    assert abs(merged / N - 1) < 0.02
    # The union of the live sketches and the merge of their bytes agree.
    assert hll.estimate(hll.union(parts, 12)) == merged
    # Merging one partition's bytes is that partition's estimate.
    assert hll.merge(blobs[:1], 12) == pytest.approx(hll.estimate(parts[0]), rel=1e-9)


def test_a_restored_sketch_continues_exactly_where_it_stopped() -> None:
    for first, second in [(5, 3), (300, 700), (20_000, 30_000)]:
        direct, saved = hll.new(12), hll.new(12)
        hll.update_many(direct, (f"u{i}" for i in range(first + second)))
        hll.update_many(saved, (f"u{i}" for i in range(first)))
        restored = hll.from_bytes(hll.to_bytes(saved))
        hll.update_many(restored, (f"u{i}" for i in range(first, first + second)))
        assert hll.estimate(restored) == hll.estimate(direct)


def test_small_sketches_are_small_and_empty_ones_merge_to_zero() -> None:
    sketch = hll.new(12)
    hll.update_many(sketch, ["a", "b", "c"])
    assert len(hll.to_bytes(sketch)) < 40
    assert hll.estimate(sketch) == pytest.approx(3, abs=0.01)
    assert hll.merge([], 12) == 0.0
    assert hll.merge([hll.to_bytes(hll.new(12))], 12) == 0.0


def test_bad_bytes_and_bad_precision_are_refused() -> None:
    with pytest.raises(ValueError, match="not a serialized HLL sketch"):
        hll.from_bytes(b"\x00garbage")
    for lg_k in (6, 22, 12.0, True):
        with pytest.raises(ValueError, match="lg_k must be an integer from 7 to 21"):
            hll.new(lg_k)  # type: ignore[arg-type]
