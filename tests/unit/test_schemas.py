import json

import fastavro

import schemas
from app.collector.normalize import to_event, to_events


def test_batch_items_are_exactly_the_event_schema() -> None:
    event = schemas.load(schemas.EVENT)
    items = schemas.load(schemas.EVENT_BATCH)["fields"][0]["type"]["items"]
    event.pop("namespace")
    assert items == event


def test_every_schema_parses() -> None:
    for name in (schemas.EVENT, schemas.EVENT_BATCH):
        fastavro.parse_schema(schemas.load(name))


def test_examples_are_accepted_by_the_collector_and_encode_as_avro() -> None:
    examples = schemas.examples()
    assert {"button_click", "page_view", "purchase", "batch"} <= set(examples)
    parsed = fastavro.parse_schema(schemas.load(schemas.EVENT))
    for name, payload in examples.items():
        events = (
            to_events(payload, received_at_ms=1_796_116_500_000)
            if name == "batch"
            else [to_event(payload, received_at_ms=1_796_116_500_000)]
        )
        for event in events:
            assert fastavro.validation.validate(event, parsed, raise_errors=True)


def test_subject_uses_topic_record_name_strategy() -> None:
    assert schemas.subject("events.raw", schemas.EVENT_BATCH) == "events.raw-io.rearview.EventBatch"
    assert json.loads(schemas.schema_str(schemas.EVENT))["name"] == "Event"
