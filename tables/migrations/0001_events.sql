-- The events table: every clean event once, deduplicated by event_id.
-- ReplacingMergeTree collapses redelivered copies (same sorting key) on merge; queries that
-- must see each event exactly once read it with FINAL.
CREATE TABLE IF NOT EXISTS events
(
    event_id     UUID,
    project_id   LowCardinality(String),
    event_name   LowCardinality(String),
    user_id      String,
    ts           DateTime64(3, 'UTC'),
    received_at  DateTime64(3, 'UTC'),
    properties   Map(String, String),
    -- Hot dimensions copied out of properties: a LowCardinality column is ~10x faster to
    -- filter and group on than a Map lookup.
    country      LowCardinality(String) DEFAULT properties['country'],
    device_type  LowCardinality(String) DEFAULT properties['device_type'],
    browser      LowCardinality(String) DEFAULT properties['browser'],
    ip           Nullable(String),
    user_agent   Nullable(String),
    library      LowCardinality(Nullable(String)),
    schema_id    UInt32,
    -- Provenance: the raw message this event came from, and its index inside it.
    _partition   UInt32,
    _offset      UInt64,
    _index       UInt32,
    _inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(ts)
ORDER BY (project_id, event_name, ts, event_id);
