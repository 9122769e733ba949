-- Views that answer the dashboard's questions. They read the tables with
-- FINAL, so duplicates (re-sent partials, replayed events) never count twice.

-- Closed-window aggregates with their per-partition partials added up: one
-- row per (dims, window). partials says how many partials were summed;
-- closed_at is when the last one closed.
CREATE VIEW IF NOT EXISTS store_minute_v AS
SELECT
    store_id,
    window_start,
    max(window_end)       AS window_end,
    sum(scans)            AS scans,
    sum(add_to_cart)      AS add_to_cart,
    sum(orders)           AS orders,
    sum(paid_orders)      AS paid_orders,
    sum(gmv_fen)          AS gmv_fen,
    sum(refunded_orders)  AS refunded_orders,
    sum(pickup_arrivals)  AS pickup_arrivals,
    sum(pickups_served)   AS pickups_served,
    sum(pickup_no_shows)  AS pickup_no_shows,
    sum(coupons_issued)   AS coupons_issued,
    sum(coupons_redeemed) AS coupons_redeemed,
    count()               AS partials,
    max(closed_at)        AS closed_at
FROM store_minute FINAL
GROUP BY store_id, window_start;

CREATE VIEW IF NOT EXISTS sku_sales_5min_v AS
SELECT
    location_id,
    sku,
    window_start,
    max(window_end)  AS window_end,
    sum(units)       AS units,
    sum(revenue_fen) AS revenue_fen,
    count()          AS partials,
    max(closed_at)   AS closed_at
FROM sku_sales_5min FINAL
GROUP BY location_id, sku, window_start;

CREATE VIEW IF NOT EXISTS carrier_region_15min_v AS
SELECT
    carrier,
    region,
    window_start,
    max(window_end)        AS window_end,
    sum(created)           AS created,
    sum(picked_up)         AS picked_up,
    sum(in_transit)        AS in_transit,
    sum(out_for_delivery)  AS out_for_delivery,
    sum(delivered)         AS delivered,
    sum(failed)            AS failed,
    sum(returned)          AS returned,
    sum(delivered_on_time) AS delivered_on_time,
    sum(delivered_late)    AS delivered_late,
    count()                AS partials,
    max(closed_at)         AS closed_at
FROM carrier_region_15min FINAL
GROUP BY carrier, region, window_start;

CREATE VIEW IF NOT EXISTS campaign_store_minute_v AS
SELECT
    campaign_id,
    store_id,
    window_start,
    max(window_end) AS window_end,
    sum(issued)     AS issued,
    sum(claimed)    AS claimed,
    sum(redeemed)   AS redeemed,
    sum(expired)    AS expired,
    count()         AS partials,
    max(closed_at)  AS closed_at
FROM campaign_store_minute FINAL
GROUP BY campaign_id, store_id, window_start;

-- Sales velocity: a hopping window of 1 hour every 5 minutes, built from the
-- 5-minute buckets. Each bucket belongs to the 12 windows that end 5, 10,
-- ..., 60 minutes after its start, so units is the sum of the 12 buckets
-- ending at window_end. Every window holding at least one sale gets a row;
-- windows ending after now() are still filling (filter window_end <= now()
-- for complete ones). Assumes 5-minute buckets (a test checks the spec).
CREATE VIEW IF NOT EXISTS sku_velocity_1h_v AS
SELECT
    location_id,
    sku,
    window_end - toIntervalHour(1) AS window_start,
    window_end,
    sum(units)       AS units,
    sum(revenue_fen) AS revenue_fen,
    count()          AS buckets
FROM
(
    SELECT
        location_id,
        sku,
        units,
        revenue_fen,
        addMinutes(window_start, 5 * (step + 1)) AS window_end
    FROM sku_sales_5min_v
    ARRAY JOIN range(12) AS step
)
GROUP BY location_id, sku, window_end;

-- On-hand stock per (location, sku), from the raw events: the last snapshot
-- (a count), plus receipts, transfers in and adjustments after it, minus
-- transfers out and units sold in paid orders after it ("after" is strictly
-- later ts; without a snapshot every movement counts from zero). A sale
-- takes stock from the order's ship_from, or else from its store.
CREATE VIEW IF NOT EXISTS stock_on_hand_v AS
SELECT
    location_id,
    sku,
    any(snap_qty) AS snapshot_qty,
    nullIf(any(snap_ts), toDateTime64(0, 3, 'UTC')) AS snapshot_at,
    sumIf(qty, kind IN ('receipt', 'transfer_in') AND ts > snap_ts) AS inbound,
    sumIf(qty, kind = 'adjustment' AND ts > snap_ts)                AS adjusted,
    sumIf(qty, kind = 'transfer_out' AND ts > snap_ts)              AS outbound,
    sumIf(qty, kind = 'sale' AND ts > snap_ts)                      AS sold,
    snapshot_qty + inbound + adjusted - outbound - sold             AS on_hand,
    max(ts) AS last_movement_at
FROM
(
    SELECT
        location_id,
        sku,
        kind,
        qty,
        ts,
        maxIf(ts, kind = 'snapshot') OVER w           AS snap_ts,
        argMaxIf(qty, ts, kind = 'snapshot') OVER w   AS snap_qty
    FROM
    (
        SELECT toString(location_id) AS location_id, sku, toString(kind) AS kind, qty, ts
        FROM inventory_events FINAL
        UNION ALL
        SELECT
            toString(ifNull(ship_from, store_id)) AS location_id,
            line.sku AS sku,
            'sale' AS kind,
            toInt64(line.qty) AS qty,
            ts
        FROM order_events FINAL
        ARRAY JOIN lines AS line
        WHERE status = 'paid'
    )
    WINDOW w AS (PARTITION BY location_id, sku)
)
GROUP BY location_id, sku;

-- The coupon state in force per (campaign, store): the latest decision.
CREATE VIEW IF NOT EXISTS coupon_state_v AS
SELECT
    campaign_id,
    store_id,
    argMax(state, ts)    AS state,
    argMax(reason, ts)   AS reason,
    argMax(evidence, ts) AS evidence,
    max(ts)              AS decided_at
FROM coupon_decisions FINAL
GROUP BY campaign_id, store_id;

-- The policy in force per (campaign, store): the latest one set. The fields
-- travel together in one tuple so that a NULL cap set later (no cap) wins
-- over an earlier number (argMax alone would skip the NULL).
CREATE VIEW IF NOT EXISTS coupon_policy_current_v AS
SELECT
    campaign_id,
    store_id,
    latest.1 AS cap_per_window,
    latest.2 AS window_seconds,
    latest.3 AS per_member_limit,
    latest.4 AS paused,
    latest.5 AS set_by,
    latest.6 AS set_at
FROM
(
    SELECT
        campaign_id,
        store_id,
        argMax((cap_per_window, window_seconds, per_member_limit, paused, set_by, set_at), set_at)
            AS latest
    FROM coupon_policies FINAL
    GROUP BY campaign_id, store_id
);
