"""A record too large for its topic is split or dead-lettered, never retried as an outage.

`produce_all` against a fake Faust producer with the two limits a real one has: its own
`max_request_size` (refused when sending, as aiokafka does, wrapped by Faust) and the broker's
per-topic limit (the delivery fails with MessageSizeTooLargeError).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError
from faust.exceptions import ProducerSendError

from agents import dlq, oversize
from agents.produce import produce_all as _produce_all
from agents.records import CleanEvent, Invalid, SourceMeta
from agents.sink import decode_block, encode_blocks
from app.dlq import Letter
from core.exceptions import ServiceUnavailable

CLEAN, DLQ = "events.clean", "events.dlq"


@dataclass
class Stored:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, str]


@dataclass
class FakeProducer:
    client_limit: int
    topic_limits: dict[str, int]
    down: bool = False
    log: list[Stored] = field(default_factory=list)
    offsets: dict[tuple[str, int], itertools.count[int]] = field(
        default_factory=lambda: defaultdict(itertools.count))
    refused: int = 0

    async def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None,
                   headers: list[tuple[str, bytes]] | None, timestamp: float | None) -> asyncio.Future[Any]:
        size = oversize.record_size(key, value, headers) - oversize.RECORD_OVERHEAD + 61
        if size > self.client_limit:
            try:
                raise MessageSizeTooLargeError("larger than max_request_size")
            except MessageSizeTooLargeError as exc:
                raise ProducerSendError(f"Error while sending: {exc!r}") from exc
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.down:
            fut.set_exception(KafkaConnectionError("broker down"))
        elif size > self.topic_limits.get(topic, 10**9):
            self.refused += 1
            fut.set_exception(MessageSizeTooLargeError())
        else:
            p = 3 if partition is None else partition
            offset = next(self.offsets[(topic, p)])
            self.log.append(Stored(topic, p, offset, key, value or b"", dlq.parse_headers(headers)))
            fut.set_result(SimpleNamespace(topic=topic, partition=p, offset=offset))
        return fut


def fake_app(producer: FakeProducer) -> Any:
    return SimpleNamespace(producer=producer, conf=SimpleNamespace(producer_max_request_size=producer.client_limit))


def letter_record(value: bytes, index: int = 2) -> dict[str, Any]:
    inv = Invalid("validate", "InvalidField", "property 'pad' value is too long",
                  SourceMeta("events.raw", 1, 77, 0), value, b"k", index, 5)
    return {"topic": DLQ, "key": b"k", "value": value, "partition": None, "headers": dlq.headers(inv, 1_000)}


def event(i: int, pad: int) -> CleanEvent:
    return CleanEvent(event_id=f"00000000-0000-0000-0000-{i:012d}", project_id="default", event_name="e",
                      user_id=f"u{i}", timestamp=0, properties={"pad": "p" * pad}, ip=None, user_agent=None,
                      library=None, received_at=0, schema_id=5, source_partition=1, source_offset=100 + i,
                      source_index=i)


def rejoin(stored: list[Stored]) -> list[bytes]:
    """Every letter on the DLQ topic, parted ones joined as redrive joins them."""
    by_position = {(s.partition, s.offset): s for s in stored if s.topic == DLQ}
    out = []
    for s in by_position.values():
        if s.headers.get("rv.stage") == oversize.PART_STAGE:
            continue
        offsets = oversize.fragment_offsets(s.headers)
        frags = [(by_position[(s.partition, o)].value, by_position[(s.partition, o)].headers) for o in offsets]
        out.append(oversize.join_parts(s.value, s.headers, frags) if offsets else s.value)
    return out


@pytest.mark.parametrize("limits", [
    {"client_limit": 4_000_000, "topic_limits": {DLQ: 100_000}},  # the broker refuses it
    {"client_limit": 100_000, "topic_limits": {}},  # the producer refuses to send it
])
async def test_a_dead_letter_too_large_for_the_topic_is_sent_in_parts_and_loses_nothing(
    limits: dict[str, Any],
) -> None:
    producer = FakeProducer(**limits)
    original = bytes(range(256)) * 1_500  # 384,000 bytes
    small = letter_record(b"small letter", index=0)
    await asyncio.wait_for(_produce_all(fake_app(producer), [letter_record(original), small]), 5)

    assert sorted(rejoin(producer.log)) == sorted([original, b"small letter"])
    head = next(s for s in producer.log if oversize.H_PARTS in s.headers)
    fragments = [s for s in producer.log if s.headers.get("rv.stage") == oversize.PART_STAGE]
    assert len(fragments) == len(oversize.fragment_offsets(head.headers)) >= 1
    assert {s.partition for s in fragments} == {head.partition}, "parts are read back from one partition"
    assert max(s.offset for s in fragments) < head.offset, "the head is written last"
    # The head keeps every header of the letter: it is what `rearview dlq` lists and redrives.
    for k, v in dlq.parse_headers(letter_record(original)["headers"]).items():
        assert head.headers[k] == v
    assert all(s.key == b"k" for s in producer.log)


async def test_parts_are_halved_until_the_broker_takes_them() -> None:
    producer = FakeProducer(client_limit=4_000_000, topic_limits={DLQ: 30_000})
    original = b"x" * 200_000
    await asyncio.wait_for(_produce_all(fake_app(producer), [letter_record(original)]), 5)
    assert rejoin(producer.log) == [original]


async def test_a_clean_block_too_large_is_split_by_rows_and_keeps_every_row() -> None:
    producer = FakeProducer(client_limit=4_000_000, topic_limits={CLEAN: 60_000})
    events = [event(i, 5_000) for i in range(40)]
    (block,) = encode_blocks(events, 10**9)
    await asyncio.wait_for(_produce_all(fake_app(producer), [
        {"topic": CLEAN, "key": None, "value": block, "partition": 1, "headers": None}]), 5)
    stored = [s for s in producer.log if s.topic == CLEAN]
    assert len(stored) > 1 and all(s.partition == 1 for s in stored)
    rows = [r["event_id"] for s in stored for r in decode_block(s.value).to_pylist()]
    assert rows == [e["event_id"] for e in events]


async def test_a_single_clean_row_too_large_becomes_a_dead_letter_with_its_provenance() -> None:
    producer = FakeProducer(client_limit=4_000_000, topic_limits={CLEAN: 20_000, DLQ: 20_000})
    (block,) = encode_blocks([event(7, 50_000)], 10**9)
    records = [{"topic": CLEAN, "key": None, "value": block, "partition": 1, "headers": None},
               letter_record(b"another bad event", index=0)]
    await asyncio.wait_for(_produce_all(fake_app(producer), records), 5)
    assert [s for s in producer.log if s.topic == CLEAN] == []
    head = next(s for s in producer.log if s.headers.get("rv.error_class") == oversize.TOO_LARGE)
    assert (head.headers["rv.source_partition"], head.headers["rv.source_offset"],
            head.headers["rv.event_index"]) == ("1", "107", "7")
    assert sorted(rejoin(producer.log)) == sorted([block, b"another bad event"])


async def test_an_outage_is_still_an_outage() -> None:
    producer = FakeProducer(client_limit=4_000_000, topic_limits={}, down=True)
    with pytest.raises(ServiceUnavailable):
        await _produce_all(fake_app(producer), [letter_record(b"x")])


def test_a_head_whose_fragments_do_not_match_is_not_joined() -> None:
    head = Letter((0, 9), None, b"ab", {oversize.H_LETTER_ID: "L1", oversize.H_SIZE: "4", oversize.H_PARTS: "7"})
    with pytest.raises(oversize.PartsMismatch):
        oversize.join_parts(head.value or b"", head.headers,
                            [(b"cd", {oversize.H_LETTER_ID: "L2", oversize.H_PART: "2/2"})])
    assert oversize.join_parts(head.value or b"", head.headers,
                               [(b"cd", {oversize.H_LETTER_ID: "L1", oversize.H_PART: "2/2"})]) == b"abcd"
