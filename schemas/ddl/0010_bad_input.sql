-- Dead letters are bounded (issue 11): raw holds at most the first
-- CTOWER_DEAD_LETTER_RAW_KB of the message, raw_length its full length and
-- raw_sha256 the hash of the whole, so a huge message is still identified.
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS raw_length Int64 DEFAULT length(raw);
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS raw_sha256 String DEFAULT '';

-- Events dropped as re-sends of an event already counted (same identity
-- within the de-duplication horizon). One row per dropped copy; the key makes
-- a copy recorded again after a crash the same row.
CREATE TABLE IF NOT EXISTS duplicate_events
(
    source_topic LowCardinality(String),
    partition    Int32,
    offset       Int64,
    `index`      Int32,
    identity     String,
    first_offset Int64,
    first_index  Int32,
    event_ts     DateTime64(3, 'UTC'),
    ingested_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_ts)
ORDER BY (source_topic, partition, offset, index);
