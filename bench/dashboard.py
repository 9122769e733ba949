"""``dashboard_bench``: how long each refresh query of the dashboard takes on a
store the size of ~10M raw events.

The store is filled the way production fills it, only faster: the simulator's
events go into the raw tables through the sink's own table writers (Arrow
inserts), the closed-window aggregates are computed from those raw tables in
SQL (one partial per window, as a single-partition worker would close them),
and the rules' live levels, alerts, decisions and deliveries get a volume to
match (a level per store every 30 s over the whole span, and so on). The
queries then run through the store's HTTP front with the HTTP client, exactly
as the dashboard runs them, ``--runs`` times each; medians and p99 are printed,
then one ``RESULT`` line. Figures, not a pass/fail: the target is 200 ms.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

from ctower.settings import Settings, load_settings

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from ctower.schemas.events import Event

FLUSH_ROWS = 200_000

AGGREGATE_SQL = (
    """
    INSERT INTO store_minute
    SELECT store_id, w, w + toIntervalMinute(1),
           sum(scans), sum(add_to_cart), sum(orders), sum(paid_orders), sum(gmv_fen),
           sum(refunded), sum(arrivals), sum(served), sum(no_shows), sum(issued), sum(redeemed),
           'bench', 0, count(), max(w)
    FROM
    (
        SELECT toString(store_id) AS store_id, toStartOfMinute(ts) AS w, 1 AS scans,
               action = 'add_to_cart' AS add_to_cart, 0 AS orders, 0 AS paid_orders,
               0 AS gmv_fen, 0 AS refunded, 0 AS arrivals, 0 AS served, 0 AS no_shows,
               0 AS issued, 0 AS redeemed
        FROM scan_events
        UNION ALL
        SELECT toString(store_id), toStartOfMinute(ts), 0, 0, status = 'created',
               status = 'paid', if(status = 'paid', amount_fen, 0), status = 'refunded',
               0, 0, 0, 0, 0
        FROM order_events
        UNION ALL
        SELECT toString(store_id), toStartOfMinute(ts), 0, 0, 0, 0, 0, 0,
               state = 'arrived', state = 'picked_up', state = 'no_show', 0, 0
        FROM pickup_events
        UNION ALL
        SELECT toString(store_id), toStartOfMinute(ts), 0, 0, 0, 0, 0, 0, 0, 0, 0,
               action = 'issued', action = 'redeemed'
        FROM coupon_events
    )
    GROUP BY store_id, w
    """,
    """
    INSERT INTO sku_sales_5min
    SELECT toString(ifNull(ship_from, store_id)) AS loc, line.sku AS sku,
           toStartOfFiveMinutes(ts) AS w, w + toIntervalMinute(5), sum(line.qty),
           sum(toInt64(round(line.qty * line.unit_price * 100))), 'bench', 0, count(), max(w)
    FROM order_events ARRAY JOIN lines AS line
    WHERE status = 'paid'
    GROUP BY loc, sku, w
    """,
    """
    INSERT INTO carrier_region_15min
    SELECT toString(carrier) AS c, toString(region) AS r, toStartOfFifteenMinutes(ts) AS w,
           w + toIntervalMinute(15),
           countIf(status = 'created'), countIf(status = 'picked_up'),
           countIf(status = 'in_transit'), countIf(status = 'out_for_delivery'),
           countIf(status = 'delivered'), countIf(status = 'failed'), countIf(status = 'returned'),
           countIf(status = 'delivered' AND (eta IS NULL OR ts <= eta)),
           countIf(status = 'delivered' AND eta IS NOT NULL AND ts > eta),
           'bench', 0, count(), max(w)
    FROM logistics_events
    GROUP BY c, r, w
    """,
    """
    INSERT INTO campaign_store_minute
    SELECT toString(campaign_id) AS c, toString(store_id) AS s, toStartOfMinute(ts) AS w,
           w + toIntervalMinute(1), countIf(action = 'issued'), countIf(action = 'claimed'),
           countIf(action = 'redeemed'), countIf(action = 'expired'), 'bench', 0, count(), max(w)
    FROM coupon_events
    GROUP BY c, s, w
    """,
)

LEVELS_SQL = (
    # a pickup level per store every 30 s over the whole span
    """
    INSERT INTO pickup_levels (store_id, region, waiting, capacity, pressure, p90_wait_s,
                               arrivals_15m, served_15m, ts)
    SELECT s, 'R' || toString(cityHash64(s) % 6), toInt64(n % 13), 10, (n % 13) / 10,
           if(n % 7 = 0, NULL, toFloat64(60 + n % 900)), toInt64(n % 40), toInt64(n % 30), t
    FROM
    (
        SELECT toString(store_id) AS s FROM scan_events GROUP BY store_id
    ) AS stores
    CROSS JOIN
    (
        SELECT number AS n, lo + toIntervalSecond(30 * number) AS t
        FROM (SELECT min(ts) AS lo, max(ts) AS hi FROM scan_events)
        ARRAY JOIN range(toUInt64(dateDiff('second', lo, hi) / 30)) AS number
    ) AS steps
    """,
    # the restock rule's levels: five versions of every (location, sku) seen
    """
    INSERT INTO stock_levels (location_id, sku, region, on_hand, velocity_per_h, cover_h,
                              transfer_from, ts)
    SELECT l, s, 'R1', toInt64(cityHash64(l, s, v) % 80) - 5,
           (cityHash64(s, v) % 100) / 10, if(cityHash64(l, s) % 9 = 0, NULL,
           (cityHash64(l, s, v) % 500) / 10), if(cityHash64(l, s) % 3 = 0, 'WH-R1', NULL),
           now64(3) - toIntervalMinute(5 - v)
    FROM (SELECT toString(location_id) AS l, sku AS s FROM inventory_events
          GROUP BY location_id, sku)
    ARRAY JOIN range(5) AS v
    """,
    """
    INSERT INTO alerts (alert_id, key, kind, severity, status, message, evidence, action,
                        opened_at, resolved_at, raised_at, region, store_id, sku, carrier,
                        version)
    SELECT 'A' || toString(number), 'k' || toString(number % 500),
           ['restock', 'pickup_congestion', 'shipment_stale', 'demand_spike'][number % 4 + 1],
           ['info', 'warning', 'critical'][number % 3 + 1],
           if(number % 10 = 0, 'open', 'resolved'), 'bench alert', '{"threshold": 1}', NULL,
           now64(3) - toIntervalSecond(number * 10), NULL, now64(3) - toIntervalSecond(number * 10),
           'R1', 'S001', NULL, NULL, number
    FROM numbers(20000)
    """,
    """
    INSERT INTO alert_deliveries (delivery_id, alert_id, alert_key, kind, severity, route,
                                  robot, attempt, result, errcode, http_status, latency_ms,
                                  message_kind, ts)
    SELECT 'd' || toString(number), 'A' || toString(number % 20000), 'k', 'restock', 'warning',
           'route' || toString(number % 12), 'robot***', toInt32(number % 3),
           ['delivered', 'retry', 'rate_limited', 'broken'][number % 4 + 1], 0, 200, 15.0,
           'markdown', now64(3) - toIntervalSecond(number * 3)
    FROM numbers(60000)
    """,
    """
    INSERT INTO alert_acks (alert_id, acked_by, note, ts)
    SELECT 'A' || toString(number * 7), 'op', '', now64(3) FROM numbers(2000)
    """,
    """
    INSERT INTO coupon_decisions (campaign_id, store_id, state, reason, evidence, ts)
    SELECT c, s, ['open', 'throttled', 'paused'][n % 3 + 1], 'bench', '{}',
           now64(3) - toIntervalSecond(n)
    FROM (SELECT toString(campaign_id) AS c, toString(store_id) AS s FROM coupon_events
          GROUP BY campaign_id, store_id)
    ARRAY JOIN range(20) AS n
    """,
    """
    INSERT INTO coupon_policies (campaign_id, store_id, cap_per_window, window_seconds,
                                 per_member_limit, paused, set_by, set_at)
    SELECT toString(campaign_id), if(number = 0, '', 'S00' || toString(number)), 500,
           3600 * (number + 1), NULL, false, 'bench', now64(3)
    FROM (SELECT campaign_id FROM coupon_events GROUP BY campaign_id) AS campaigns
    CROSS JOIN numbers(3) AS scopes
    """,
    # the alert workflow: owners and operators' resolutions beside the acknowledgements
    """
    INSERT INTO alert_acks (alert_id, acked_by, note, ts, action, owner)
    SELECT 'A' || toString(number * 7), 'op', if(number % 2 = 0, '', 'fixed'),
           now64(3) + toIntervalSecond(1 + number % 60),
           if(number % 2 = 0, 'assign', 'resolve'), if(number % 2 = 0, 'wang', '')
    FROM numbers(2000)
    """,
    # the pipeline page's bad input: dead letters, quarantined rows, late and re-sent events
    """
    INSERT INTO dead_letters (source_topic, partition, offset, index, reason, detail, raw,
                              received_at, raw_length, raw_sha256)
    SELECT 'ct.' || ['scan', 'order', 'pickup', 'logistics', 'inventory', 'coupon'][number % 6 + 1],
           toInt32(number % 4), toInt64(number), -1,
           ['not_json', 'wrong_type', 'missing_field', 'ts_out_of_window'][number % 4 + 1],
           'bench detail', repeat('x', 200), now64(3) - toIntervalSecond(number), 200, ''
    FROM numbers(5000)
    """,
    """
    INSERT INTO quarantine (source_topic, partition, offset, index, target_table, reason,
                            detail, raw, raw_length, raw_sha256, received_at)
    SELECT 'ct.order', toInt32(number % 4), toInt64(number), -1, 'order_events',
           'out_of_range', 'bench', repeat('y', 100), 100, '', now64(3) - toIntervalSecond(number)
    FROM numbers(500)
    """,
    """
    INSERT INTO late_events (aggregate, dims, window_start, source_topic, partition, offset,
                             index, event_ts, watermark)
    SELECT 'store_minute', ['S' || toString(number % 60)], now64(3) - toIntervalMinute(10),
           'ct.' || ['scan', 'order', 'pickup', 'coupon'][number % 4 + 1], toInt32(number % 4),
           toInt64(number), 0, now64(3) - toIntervalMinute(11), now64(3)
    FROM numbers(200000)
    """,
    """
    INSERT INTO duplicate_events (source_topic, partition, offset, index, identity,
                                  first_offset, first_index, event_ts)
    SELECT 'ct.' || ['scan', 'order', 'pickup', 'logistics', 'inventory', 'coupon'][number % 6 + 1],
           toInt32(number % 4), toInt64(number), 0, 'id' || toString(number), 0, 0,
           now64(3) - toIntervalSecond(number % 3600)
    FROM numbers(200000)
    """,
)


def _fill_raw(client: Client, events: int, seed: int) -> int:
    from tqdm import tqdm

    from ctower.simulator import SimConfig, Simulator
    from ctower.sinks.clickhouse.columns import Chunk, raw_writers

    writers = {name: w.bind(client) for name, w in raw_writers().items()}
    buffers: dict[str, list[Event]] = {name: [] for name in writers}

    def flush(stream: str) -> None:
        records = buffers[stream]
        if not records:
            return
        n = len(records)
        chunk = Chunk(records, np.zeros(n, dtype=np.int32),
                       np.arange(n, dtype=np.int64), f"bench.{stream}")
        client.insert_arrow(writers[stream].table, writers[stream].arrow_table(chunk))
        buffers[stream] = []

    sent = 0
    events_iter = Simulator(SimConfig(seed=seed, events=events)).events()
    with tqdm(total=events, unit="ev", unit_scale=True, desc="fill raw events") as bar:
        for stream, event in events_iter:
            buffers[stream].append(event)
            sent += 1
            if len(buffers[stream]) >= FLUSH_ROWS:
                flush(stream)
            if sent % 50_000 == 0:
                bar.update(50_000)
        bar.update(sent % 50_000)
    for stream in writers:
        flush(stream)
    return sent


def fill_store(client: Client, events: int, seed: int = 7) -> None:
    """Raw events, then everything derived from them (see the module docstring)."""
    started = time.perf_counter()
    sent = _fill_raw(client, events, seed)
    click.echo(f"  {sent:,} raw events in {time.perf_counter() - started:.0f} s", err=True)
    for statement in (*AGGREGATE_SQL, *LEVELS_SQL):
        step = time.perf_counter()
        client.command(statement)
        table = statement.split("INTO", 1)[1].split()[0]
        click.echo(f"  filled {table} in {time.perf_counter() - step:.1f} s", err=True)


def measure(client: Client, runs: int, minutes: int) -> dict[str, list[float]]:
    from ctower.dashboard.queries import refresh_queries

    queries = refresh_queries(minutes)
    timings: dict[str, list[float]] = {name: [] for name in queries}
    for run in queries.values():
        run(client)  # warm: the first call of a query pays for its plan and caches
    for _ in range(runs):
        for name, run in queries.items():
            started = time.perf_counter()
            run(client)
            timings[name].append((time.perf_counter() - started) * 1000)
    return timings


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99))


@click.command("dashboard_bench")
@click.option("--events", default=10_000_000, show_default=True,
              help="Simulated raw events to fill the store with.")
@click.option("--runs", default=30, show_default=True, help="Runs of every refresh query.")
@click.option("--minutes", default=60, show_default=True, help="The pages' time range.")
@click.option("--store-dir", type=click.Path(path_type=Path), default=None,
              help="Keep (or reuse) the filled store here instead of a temporary folder.")
def dashboard_bench(events: int, runs: int, minutes: int, store_dir: Path | None) -> None:
    """Time every refresh query of the dashboard on a store of ~10M events."""
    from ctower.bench.engine import free_port
    from ctower.devstack.store_front.server import StoreHttpServer
    from ctower.schemas.migrations import apply_migrations
    from ctower.store import open_store

    with tempfile.TemporaryDirectory(prefix="ctower-dash-bench-") as tmp:
        data_dir = store_dir or Path(tmp)
        settings: Settings = load_settings(data_dir=data_dir, store_dsn=None,
                                           store_http_port=free_port())
        owner = open_store(settings, owner=True)
        apply_migrations(owner)
        have = int(owner.query("SELECT count() FROM duplicate_events").result_rows[0][0])  # last
        if have == 0:
            for table in ("scan_events", "order_events", "pickup_events", "logistics_events",
                          "inventory_events", "coupon_events"):
                owner.command(f"TRUNCATE TABLE {table}")  # a fill cut short starts over
            click.echo(f"filling {data_dir} with {events:,} simulated events...", err=True)
            fill_store(owner, events)
        else:
            click.echo(f"reusing the filled store in {data_dir}", err=True)
        raw = int(owner.query(
            "SELECT sum(rows) FROM system.parts WHERE active AND database = currentDatabase() "
            "AND table LIKE '%\\_events'").result_rows[0][0])
        front = StoreHttpServer(settings, engine_client=owner).start()
        try:
            client = open_store(settings, path_fallback=False)  # HTTP, as the dashboard
            timings = measure(client, runs, minutes)
        finally:
            front.stop()
            owner.close()
    click.echo(f"\n{raw:,} raw event rows; {runs} runs per query; range {minutes} min")
    click.echo(f"{'query':<28} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, values in sorted(timings.items(), key=lambda kv: -statistics.median(kv[1])):
        click.echo(f"{name:<28} {statistics.median(values):>8.1f} {p99(values):>8.1f} "
                   f"{max(values):>8.1f}")
    every = [v for values in timings.values() for v in values]
    slowest = max(timings, key=lambda name: statistics.median(timings[name]))
    click.echo(
        f"RESULT dashboard_query_p50_ms={statistics.median(every):.1f} "
        f"dashboard_query_p99_ms={p99(every):.1f} slowest={slowest}"
    )




if __name__ == "__main__":
    dashboard_bench()
