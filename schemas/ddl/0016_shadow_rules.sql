-- Issue 16: shadow rules. What a candidate rules file (CTOWER_SHADOW_RULES_FILE)
-- raises beside the rules in force, from ct.shadow-alerts and ct.shadow-signals.
-- Never delivered, never acted on: kept to be compared with the live tables.

-- Same columns as alerts (the dashboard shows the two side by side); a shadow
-- alert's id starts with 'shadow-'.
CREATE TABLE IF NOT EXISTS shadow_alerts AS alerts;

-- Every coupon signal of the candidate (throttle on pickup pressure, pause on
-- stock cover; active = 1 when it starts, 0 when it ends), as history.
CREATE TABLE IF NOT EXISTS shadow_coupon_signals
(
    campaign_id  LowCardinality(String),
    store_id     LowCardinality(String),
    cause        LowCardinality(String),
    sku          String,
    active       Bool,
    evidence     String,
    ts           DateTime64(3, 'UTC'),
    ingested_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (campaign_id, store_id, cause, sku, ts, active);
