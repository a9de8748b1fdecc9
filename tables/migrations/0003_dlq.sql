-- Dead letters, queryable: one row per letter in events.dlq, identified by its position there.
-- The original bytes stay in Kafka only (they may hold personal data); `preview` is the
-- letter's event, redacted, or the first bytes in hex when nothing could be decoded.
CREATE TABLE IF NOT EXISTS dlq
(
    dlq_partition    UInt32,
    dlq_offset       UInt64,
    source_topic     LowCardinality(String),
    source_partition UInt32,
    source_offset    UInt64,
    event_index      Int32,          -- -1: the whole message
    stage            LowCardinality(String),
    error_class      LowCardinality(String),
    reason           String,
    schema_id        Nullable(UInt32),
    first_failed_at  DateTime64(3, 'UTC'),
    failed_at        DateTime64(3, 'UTC'),
    attempt          UInt32,
    size             UInt32,
    preview          String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(failed_at)
ORDER BY (dlq_partition, dlq_offset);

-- Letters sent back through validation by `rearview dlq redrive` (never redriven twice).
CREATE TABLE IF NOT EXISTS dlq_redrives
(
    dlq_partition UInt32,
    dlq_offset    UInt64,
    redriven_at   DateTime64(3, 'UTC') DEFAULT now64(3),
    run_id        String
)
ENGINE = ReplacingMergeTree
ORDER BY (dlq_partition, dlq_offset);
