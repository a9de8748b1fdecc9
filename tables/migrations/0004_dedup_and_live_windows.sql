-- Deduplication by event_id before the events table (tables/dedup.py, agents/store.py).
-- events.clean is partitioned by event_id, and each row records where its first copy was
-- read there: the store agent rebuilds its dedup state from these after a crash or a
-- rebalance (rows inserted within the dedup horizon, found through the _inserted_at index).
ALTER TABLE events
    ADD COLUMN IF NOT EXISTS _clean_offset UInt64 DEFAULT 0 AFTER _index,
    ADD COLUMN IF NOT EXISTS _clean_index UInt32 DEFAULT 0 AFTER _clean_offset;

ALTER TABLE events ADD INDEX IF NOT EXISTS inserted_at_minmax _inserted_at TYPE minmax GRANULARITY 1;

-- Beyond the dedup horizon, a copy of an old event (a backfill of events also tracked live) is
-- looked up by event_id within its time range: a bloom filter lets that read only the granules
-- that may hold the ids.
ALTER TABLE events ADD INDEX IF NOT EXISTS event_id_bloom event_id TYPE bloom_filter(0.01) GRANULARITY 1;

-- "Online now" over the same clock-aligned minute windows as GET /v1/live, so that both give
-- the same figures: the last N minutes are the current minute window and the N before it.
-- Duplicates no longer reach the table within the dedup horizon, so plain counts are right.
CREATE OR REPLACE VIEW live_now AS
SELECT
    uniqCombinedIf(user_id, ts >= toStartOfMinute(now()) - INTERVAL 1 MINUTE) AS active_users_1m,
    uniqCombinedIf(user_id, ts >= toStartOfMinute(now()) - INTERVAL 5 MINUTE) AS active_users_5m,
    uniqCombined(user_id)                                                      AS active_users_15m,
    countIf(ts >= toStartOfMinute(now()))                                      AS events_this_minute,
    now64(3)                                                                   AS as_of
FROM events
WHERE ts >= toStartOfMinute(now()) - INTERVAL 15 MINUTE AND ts < toStartOfMinute(now()) + INTERVAL 1 MINUTE;

CREATE OR REPLACE VIEW top_events_now AS
SELECT event_name, count() AS events
FROM events
WHERE ts >= toStartOfMinute(now()) - INTERVAL 5 MINUTE AND ts < toStartOfMinute(now()) + INTERVAL 1 MINUTE
GROUP BY event_name
ORDER BY events DESC, event_name
LIMIT 10;
