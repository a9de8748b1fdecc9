-- "Online now" per project. GET /v1/live gives one project's figures (the rollups are kept per
-- project); these views give the same figures in SQL, over the same clock-aligned minute
-- windows as live_now and top_events_now (0004), which stay every project together.
-- A project without events in the last 15 minutes has no row.
CREATE OR REPLACE VIEW live_now_by_project AS
SELECT
    project_id,
    uniqCombinedIf(user_id, ts >= toStartOfMinute(now()) - INTERVAL 1 MINUTE) AS active_users_1m,
    uniqCombinedIf(user_id, ts >= toStartOfMinute(now()) - INTERVAL 5 MINUTE) AS active_users_5m,
    uniqCombined(user_id)                                                      AS active_users_15m,
    countIf(ts >= toStartOfMinute(now()))                                      AS events_this_minute,
    now64(3)                                                                   AS as_of
FROM events
WHERE ts >= toStartOfMinute(now()) - INTERVAL 15 MINUTE AND ts < toStartOfMinute(now()) + INTERVAL 1 MINUTE
GROUP BY project_id;

CREATE OR REPLACE VIEW top_events_now_by_project AS
SELECT project_id, event_name, count() AS events
FROM events
WHERE ts >= toStartOfMinute(now()) - INTERVAL 5 MINUTE AND ts < toStartOfMinute(now()) + INTERVAL 1 MINUTE
GROUP BY project_id, event_name
ORDER BY project_id, events DESC, event_name
LIMIT 10 BY project_id;
