-- Control tables of `rearview replay` (tables/generations.py, tables/fence.py).
--
-- generations: one row per revision of a table generation (building, verified, live, retired,
-- failed, dropped); the newest revision of a number wins (ReplacingMergeTree by revision).
CREATE TABLE IF NOT EXISTS generations
(
    number     UInt32,
    revision   UInt64,
    targets    Array(String),
    tables     Map(String, String),
    state      LowCardinality(String),
    note       String,
    created_at DateTime64(3, 'UTC'),
    swapped_at Nullable(DateTime64(3, 'UTC')),
    updated_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(revision)
ORDER BY number;

-- replay_fences: a replay asking every live store to pause (the hand-over before a swap).
-- One row per revision of a fence: requested, renewed (a later expiry), released.
CREATE TABLE IF NOT EXISTS replay_fences
(
    fence_id     String,
    revision     UInt64,
    owner        String,
    reason       String,
    state        LowCardinality(String),
    rebegin      UInt8,
    requested_at DateTime64(3, 'UTC'),
    expires_at   DateTime64(3, 'UTC'),
    updated_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(revision)
ORDER BY fence_id
TTL toDateTime(requested_at) + INTERVAL 7 DAY;

-- replay_fence_acks: an events.clean partition paused, flushed and committed for a fence.
CREATE TABLE IF NOT EXISTS replay_fence_acks
(
    fence_id  String,
    partition UInt32,
    worker    String,
    acked_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY (fence_id, partition)
TTL toDateTime(acked_at) + INTERVAL 7 DAY;

-- store_heartbeats: the events.clean partitions each live store owns, every few seconds.
CREATE TABLE IF NOT EXISTS store_heartbeats
(
    worker     String,
    partitions Array(UInt32),
    at         DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(at)
ORDER BY worker
TTL toDateTime(at) + INTERVAL 1 DAY;
