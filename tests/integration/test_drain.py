"""The end of the embedded broker's log, read from the log (app/embedded/drain.py): its high
watermark stops at the last batch's base offset + 1, so a roll that trusted it would drop the
rest of that batch."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from app.embedded.broker import TopicSpec, ensure_topics
from app.embedded.drain import group_commits, holds_records, log_ends
from tests.integration.conftest import Services

pytestmark = pytest.mark.integration


def test_the_end_is_read_from_the_log_not_the_high_watermark(services: Services) -> None:
    bootstrap = services.settings.kafka.bootstrap_servers
    topic = f"drain-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, [TopicSpec(topic, 2)])
    assert not holds_records(bootstrap, {topic: 2})
    assert log_ends(bootstrap, {topic: 2}) == {(topic, 0): 0, (topic, 1): 0}

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 200, "batch.num.messages": 1000})
    for i in range(100):  # one batch
        producer.produce(topic, value=b"%d" % i, partition=0)
    assert producer.flush(30) == 0

    assert holds_records(bootstrap, {topic: 2})
    assert log_ends(bootstrap, {topic: 2}) == {(topic, 0): 100, (topic, 1): 0}

    group = f"drain-{uuid.uuid4().hex[:8]}"
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, 60)], asynchronous=False)
    finally:
        consumer.close()
    assert group_commits(bootstrap, {topic: 2})[group] == {(topic, 0): 60}
