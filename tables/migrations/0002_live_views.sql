-- "Online now" for Grafana and any SQL client: the live figures the API serves from the rollup
-- sketches, computed here over the recent raw events (sliding windows rather than the API's
-- clock-aligned minute windows, so figures agree within a minute's edge and the HLL error).
-- Redelivered copies not yet merged are counted once (uniqExact over event_id).
CREATE VIEW IF NOT EXISTS live_now AS
SELECT
    uniqCombinedIf(user_id, ts >= now64(3) - INTERVAL 1 MINUTE)  AS active_users_1m,
    uniqCombinedIf(user_id, ts >= now64(3) - INTERVAL 5 MINUTE)  AS active_users_5m,
    uniqCombined(user_id)                                         AS active_users_15m,
    uniqExactIf(event_id, ts >= toStartOfMinute(now()))           AS events_this_minute,
    now64(3)                                                      AS as_of
FROM events
WHERE ts >= now64(3) - INTERVAL 15 MINUTE;

CREATE VIEW IF NOT EXISTS top_events_now AS
SELECT event_name, uniqExact(event_id) AS events
FROM events
WHERE ts >= now64(3) - INTERVAL 5 MINUTE
GROUP BY event_name
ORDER BY events DESC
LIMIT 10;
