-- Projects and their API keys (app/auth.py). A key is stored as the SHA-256 of its secret,
-- never the secret: a key is shown once, when it is created. One row per key; revoking writes
-- the key's row again with `revoked_at` set and a higher `version` (read with FINAL: the
-- tables are small, and every API process reloads them every few seconds).
CREATE TABLE IF NOT EXISTS projects
(
    project_id LowCardinality(String),
    name       String,
    created_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY project_id;

CREATE TABLE IF NOT EXISTS api_keys
(
    key_id     String,                          -- the public part of the key, shown in lists
    project_id LowCardinality(String),
    kind       LowCardinality(String),          -- write | read | admin
    secret_sha256 FixedString(32),
    name       String,
    created_at DateTime64(3, 'UTC'),
    revoked_at Nullable(DateTime64(3, 'UTC')),
    version    UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY key_id;

-- Each dead letter's project, when the letter's event could be read ('' when it could not:
-- such letters are seen by no project's read key, only by operators).
ALTER TABLE dlq ADD COLUMN IF NOT EXISTS project_id LowCardinality(String) DEFAULT '' AFTER dlq_offset;
