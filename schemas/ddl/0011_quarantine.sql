-- Issue 11: what the sink could not store. Every message of every topic the
-- sink reads ends in its table, here, or both (a batch envelope with one bad
-- element), and its offset is committed only after that; nothing stops the
-- sink. A row is a whole message (index -1), one element of a batch envelope
-- (index = its position), or a decoded record its table could not take
-- (target_table names the table): undecodable bytes, JSON nested too deep,
-- values outside their column's range, rows the store itself refused. reason
-- is a code (streams/sinks/clickhouse.py: QUARANTINE_REASONS), detail says
-- what was wrong. raw holds at most the first 8 KiB of the bytes (for a record
-- that did not fit its table, the record re-encoded as JSON); raw_length and
-- raw_sha256 describe the whole. The key is the Kafka position, so rows a
-- restarted sink quarantines again replace themselves (read with FINAL).
CREATE TABLE IF NOT EXISTS quarantine
(
    source_topic LowCardinality(String),
    partition    Int32,
    offset       Int64,
    `index`      Int32,
    target_table LowCardinality(String),
    reason       LowCardinality(String),
    detail       String,
    raw          String,
    raw_length   UInt64,
    raw_sha256   String,
    received_at  DateTime64(3, 'UTC'),
    ingested_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (source_topic, partition, offset, index);
