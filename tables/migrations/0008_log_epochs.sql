-- Log epochs (tables/logs.py): when the broker begins a new log (the embedded broker keeps its
-- log in memory, so every `rearview up` starts one), offsets begin at 0 again. Each epoch gives
-- every partition of the pipeline's topics a base, and every position Rearview stores (the
-- events' provenance, dead letters, the archive, replay jobs) is base + the broker's offset,
-- so positions keep increasing across logs. No row: one log, every base 0 (durable Kafka).
CREATE TABLE IF NOT EXISTS log_epochs
(
    epoch     UInt32,
    topic     LowCardinality(String),
    partition UInt32,
    base      UInt64,
    began_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (epoch, topic, partition);
