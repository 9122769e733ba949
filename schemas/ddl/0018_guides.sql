-- Issue 16: shopping guides (导购) as last-mile delivery nodes. A guide
-- delivery is a logistics event with origin_type 'guide', origin_id the store
-- the guide serves and guide_id the guide (schemas.events.Logistics).

ALTER TABLE logistics_events ADD COLUMN IF NOT EXISTS guide_id Nullable(String);

-- One row per guide delivery, from its raw events: who delivers it for which
-- store, when it was created (first seen: the order starts waiting for a guide), picked up
-- (a guide took it), finished, and how. Read with the guide's daily cap from
-- the master data and the rules' grace: both can change at run time.
CREATE VIEW IF NOT EXISTS guide_deliveries_v AS
SELECT
    shipment_id,
    any(order_id)                                          AS order_id,
    any(origin_id)                                         AS store_id,
    anyIf(guide_id, guide_id IS NOT NULL)                  AS guide_id,
    any(region)                                            AS region,
    max(eta)                                               AS eta,
    min(ts)                                                AS created_at,
    minIfOrNull(ts, status = 'picked_up')                  AS picked_up_at,
    minIfOrNull(ts, status IN ('delivered', 'failed'))     AS finished_at,
    argMaxIf(toString(status), ts, status IN ('delivered', 'failed')) AS outcome,
    max(ts)                                                AS last_ts
FROM logistics_events FINAL
WHERE origin_type = 'guide'
GROUP BY shipment_id;

-- Per guide and local day (Asia/Shanghai: a guide's day is the store's day):
-- deliveries made, on time or late against the ETA, failed.
CREATE VIEW IF NOT EXISTS guide_day_v AS
SELECT
    guide_id,
    any(store_id)                                            AS store_id,
    toDate(finished_at, 'Asia/Shanghai')                     AS day,
    countIf(outcome = 'delivered')                           AS delivered,
    countIf(outcome = 'delivered' AND (eta IS NULL OR finished_at <= eta)) AS on_time,
    countIf(outcome = 'delivered' AND eta IS NOT NULL AND finished_at > eta) AS late,
    countIf(outcome = 'failed')                              AS failed
FROM guide_deliveries_v
WHERE finished_at IS NOT NULL AND guide_id IS NOT NULL
GROUP BY guide_id, day;
