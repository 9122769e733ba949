"""The versioned schema: migrations apply once, refuse edited files, match the
aggregate specs, and the views compute the right numbers on hand-made rows.

Every test runs against a real embedded ClickHouse (chdb) in tmp_path.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from ctower.schemas.events import EVENT_TYPES
from ctower.schemas.migrations import (
    DDL_DIR,
    MigrationError,
    apply_migrations,
    load_migrations,
    split_statements,
)
from ctower.settings import STREAMS
from ctower.tables.aggregates import AGGREGATES, SKU_SALES_5MIN

MINUTE = 60_000
T0 = 1_763_000_000_000 - 1_763_000_000_000 % (5 * MINUTE)
"""A 5-minute boundary (mid-November 2025), epoch ms."""


def ms(value: datetime) -> int:
    return int(value.replace(tzinfo=UTC).timestamp() * 1000)


@pytest.fixture
def migrated(store: Client) -> Client:
    apply_migrations(store)
    return store


def columns(client: Client, table: str) -> list[tuple[str, str]]:
    return [
        (name, type_)
        for name, type_ in client.query(
            "SELECT name, type FROM system.columns WHERE database = currentDatabase() "
            "AND table = {t:String} ORDER BY position",
            parameters={"t": table},
        ).result_rows
    ]


def insert(client: Client, table: str, rows: list[dict[str, Any]]) -> None:
    names = list(rows[0])
    client.insert(table, [[row[n] for n in names] for row in rows], column_names=names)


# ---------------------------------------------------------------- migrations


def test_apply_twice_is_a_no_op(store: Client) -> None:
    names = [m.name for m in load_migrations()]
    assert names == sorted(names) and len(names) >= 4
    assert apply_migrations(store) == names
    tables_after_first = store.query("SHOW TABLES").result_rows
    assert apply_migrations(store) == []
    assert store.query("SHOW TABLES").result_rows == tables_after_first
    recorded = store.query(
        "SELECT name, checksum FROM schema_migrations FINAL ORDER BY version"
    ).result_rows
    assert recorded == [(m.name, m.checksum) for m in load_migrations()]


def test_edited_migration_is_refused_and_new_file_applied(store: Client, tmp_path: Path) -> None:
    ddl = tmp_path / "ddl"
    shutil.copytree(DDL_DIR, ddl)
    apply_migrations(store, ddl)

    (ddl / "9000_extra.sql").write_text(
        "-- a later change goes in a new file; this ';' in a comment does not split\n"
        "CREATE TABLE IF NOT EXISTS extra (a String DEFAULT 'x;y') "
        "ENGINE = MergeTree ORDER BY a;\n"
    )
    assert apply_migrations(store, ddl) == ["9000_extra.sql"]
    assert store.query("EXISTS TABLE extra").result_rows == [(1,)]

    edited = ddl / "0002_aggregates.sql"
    edited.write_text(edited.read_text() + "\n-- an innocent-looking edit\n")
    with pytest.raises(MigrationError, match=r"0002_aggregates\.sql.*must not be edited"):
        apply_migrations(store, ddl)


def test_store_newer_than_files_is_refused(store: Client, tmp_path: Path) -> None:
    ddl = tmp_path / "ddl"
    shutil.copytree(DDL_DIR, ddl)
    apply_migrations(store, ddl)
    (ddl / "0004_views.sql").unlink()
    with pytest.raises(MigrationError, match=r"0004_views\.sql.*older than the store"):
        apply_migrations(store, ddl)


def test_badly_named_file_is_refused(store: Client, tmp_path: Path) -> None:
    ddl = tmp_path / "ddl"
    ddl.mkdir()
    (ddl / "views.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        apply_migrations(store, ddl)


def test_split_statements_respects_strings_and_comments() -> None:
    sql = (
        "-- head; comment\n"
        "CREATE TABLE a (s String DEFAULT 'a;b') ENGINE = Memory;\n"
        "/* block; comment */\n"
        "CREATE VIEW v AS SELECT ';' AS x, `we;ird` FROM a;\n"
        "-- trailing comment only\n"
    )
    statements = split_statements(sql)
    assert len(statements) == 2
    assert statements[0].endswith("DEFAULT 'a;b') ENGINE = Memory")
    assert statements[1].endswith("SELECT ';' AS x, `we;ird` FROM a")


# ------------------------------------------------------- tables vs records


def test_aggregate_tables_match_the_specs(migrated: Client) -> None:
    utc_ms = "DateTime64(3, 'UTC')"
    for spec in AGGREGATES.values():
        cols = columns(migrated, spec.name)
        assert [n for n, _ in cols] == [
            *spec.dims, "window_start", "window_end", *spec.fields,
            "source_topic", "partition", "through_offset", "closed_at",
        ], spec.name
        types = dict(cols)
        assert all(types[f] == "Int64" for f in spec.fields), spec.name
        assert types["window_start"] == types["window_end"] == types["closed_at"] == utc_ms
        view = [n for n, _ in columns(migrated, f"{spec.name}_v")]
        assert view[: len(spec.dims) + 2] == [*spec.dims, "window_start", "window_end"]
        assert view[len(spec.dims) + 2 : len(spec.dims) + 2 + len(spec.fields)] == list(
            spec.fields
        )
    # sku_velocity_1h_v hard-codes 12 buckets of 5 minutes.
    assert SKU_SALES_5MIN.window_seconds == 300


def test_raw_tables_hold_every_event_field(migrated: Client) -> None:
    for stream in STREAMS:
        names = {n for n, _ in columns(migrated, f"{stream}_events")}
        fields = set(EVENT_TYPES[stream].__struct_fields__) - {"lines"}
        assert fields <= names, (stream, fields - names)
        assert {"event_key", "source_topic", "partition", "offset", "ingested_at"} <= names
    order = dict(columns(migrated, "order_events"))
    assert order["lines.sku"] == "Array(String)"
    assert order["lines.qty"] == "Array(UInt32)"
    assert order["amount_fen"] == "Int64"
    assert dict(columns(migrated, "scan_events"))["ts"] == "DateTime64(3, 'UTC')"


def test_replayed_raw_event_collapses(migrated: Client) -> None:
    row = {"event_key": "s1", "scan_id": "s1", "store_id": "S1", "sku": "K", "action": "view",
           "ts": T0, "source_topic": "ct.scan", "partition": 0, "offset": 7}
    insert(migrated, "scan_events", [row])
    insert(migrated, "scan_events", [row | {"offset": 7}])  # the replay after a crash
    insert(migrated, "scan_events", [row | {"event_key": "s2", "scan_id": "s2", "offset": 8}])
    assert migrated.query("SELECT count() FROM scan_events FINAL").result_rows == [(2,)]


# ------------------------------------------------------------------ views


def partial(dims: dict[str, str], start: int, size_ms: int, partition: int, through: int,
            **values: int) -> dict[str, Any]:
    return {**dims, "window_start": start, "window_end": start + size_ms, **values,
            "source_topic": "ct.x", "partition": partition, "through_offset": through,
            "closed_at": start + size_ms + 10_000}


def test_store_minute_v_adds_partials_and_keeps_one_resent(migrated: Client) -> None:
    s1, s2 = {"store_id": "S1"}, {"store_id": "S2"}
    insert(migrated, "store_minute", [
        partial(s1, T0, MINUTE, 0, 10, scans=3, gmv_fen=1_000, paid_orders=1),
        partial(s1, T0, MINUTE, 1, 20, scans=4, gmv_fen=250, paid_orders=2),
        partial(s2, T0, MINUTE, 0, 11, scans=1, gmv_fen=0, paid_orders=0),
        partial(s1, T0 + MINUTE, MINUTE, 0, 30, scans=9, gmv_fen=0, paid_orders=0),
    ])
    # Partition 1's partial is re-sent after a worker crash: the same row again,
    # and a copy that folded in more offsets (it wins).
    insert(migrated, "store_minute", [
        partial(s1, T0, MINUTE, 1, 20, scans=4, gmv_fen=250, paid_orders=2),
        partial(s1, T0, MINUTE, 1, 25, scans=5, gmv_fen=300, paid_orders=2),
    ])
    rows = migrated.query(
        "SELECT store_id, toUnixTimestamp64Milli(window_start), "
        "toUnixTimestamp64Milli(window_end), scans, gmv_fen, paid_orders, partials "
        "FROM store_minute_v ORDER BY store_id, window_start"
    ).result_rows
    assert rows == [
        ("S1", T0, T0 + MINUTE, 8, 1_300, 3, 2),
        ("S1", T0 + MINUTE, T0 + 2 * MINUTE, 9, 0, 0, 1),
        ("S2", T0, T0 + MINUTE, 1, 0, 0, 1),
    ]


def test_sku_velocity_1h_v_sums_the_12_buckets_ending_at_each_step(migrated: Client) -> None:
    step = 5 * MINUTE
    key = {"location_id": "W1", "sku": "K1"}
    buckets = {T0: 1, T0 + step: 2, T0 + 6 * step: 4, T0 + 13 * step: 8}
    rows = [partial(key, start, step, 0, i, units=units, revenue_fen=units * 100)
            for i, (start, units) in enumerate(buckets.items())]
    # The first bucket came from two source partitions: 1 + 10 units.
    rows.append(partial(key, T0, step, 1, 99, units=10, revenue_fen=1_000))
    rows.append(partial({"location_id": "W1", "sku": "K2"}, T0, step, 0, 5, units=100,
                        revenue_fen=0))
    insert(migrated, "sku_sales_5min", rows)
    buckets[T0] += 10

    got = {
        (end, start): units
        for start, end, units in migrated.query(
            "SELECT toUnixTimestamp64Milli(window_start), toUnixTimestamp64Milli(window_end), "
            "units FROM sku_velocity_1h_v WHERE location_id = 'W1' AND sku = 'K1'"
        ).result_rows
    }
    expected_ends = {start + k * step for start in buckets for k in range(1, 13)}
    assert {end for end, _ in got} == expected_ends
    for (end, start), units in got.items():
        assert start == end - 12 * step
        assert units == sum(u for b, u in buckets.items() if end - 12 * step <= b < end), end
    # Spot values, by hand: the hour ending T0+60min holds buckets T0..T0+55min.
    by_end = {end: units for (end, _), units in got.items()}
    assert by_end[T0 + step] == 11
    assert by_end[T0 + 2 * step] == 13
    assert by_end[T0 + 12 * step] == 17
    assert by_end[T0 + 13 * step] == 6
    assert by_end[T0 + 14 * step] == 12
    assert by_end[T0 + 25 * step] == 8


def test_stock_on_hand_v_counts_from_the_last_snapshot(migrated: Client) -> None:
    def inv(key: str, location: str, kind: str, qty: int, at: int) -> dict[str, Any]:
        return {"event_key": key, "location_id": location, "sku": "K1", "kind": kind,
                "qty": qty, "ts": T0 + at * MINUTE}

    insert(migrated, "inventory_events", [
        inv("i1", "W1", "snapshot", 50, 0),        # superseded by the later count
        inv("i2", "W1", "receipt", 5, 1),          # before the last count: ignored
        inv("i3", "W1", "snapshot", 100, 2),
        inv("i4", "W1", "receipt", 20, 3),
        inv("i5", "W1", "transfer_out", 7, 4),
        inv("i6", "W1", "adjustment", -3, 5),
        inv("i7", "W1", "transfer_in", 4, 6),
        inv("i8", "S1", "receipt", 10, 1),         # S1 was never counted
    ])
    insert(migrated, "inventory_events", [inv("i4", "W1", "receipt", 20, 3)])  # re-sent

    def order(key: str, status: str, qty: int, at: int, ship_from: str | None,
              sku: str = "K1") -> dict[str, Any]:
        return {"event_key": key, "order_id": key, "member_id": "M", "store_id": "S1",
                "channel": "mini_program", "fulfillment": "warehouse_direct",
                "lines.sku": [sku, "OTHER"], "lines.qty": [qty, 1],
                "lines.unit_price": [1.0, 1.0], "amount": qty + 1.0,
                "amount_fen": (qty + 1) * 100, "status": status, "ship_from": ship_from,
                "ts": T0 + at * MINUTE}

    insert(migrated, "order_events", [
        order("o1:paid", "paid", 6, 7, "W1"),      # ships from the warehouse
        order("o0:paid", "paid", 9, 1, "W1"),      # sold before the count: ignored
        order("o2:created", "created", 50, 8, "W1"),  # not paid: no stock moves
        order("o3:paid", "paid", 2, 8, None),      # no ship_from: the store's stock
    ])
    insert(migrated, "order_events", [order("o1:paid", "paid", 6, 7, "W1")])  # replayed

    rows = migrated.query(
        "SELECT location_id, snapshot_qty, snapshot_at IS NULL, inbound, adjusted, outbound, "
        "sold, on_hand FROM stock_on_hand_v WHERE sku = 'K1' ORDER BY location_id"
    ).result_rows
    assert rows == [
        ("S1", 0, True, 10, 0, 0, 2, 8),
        ("W1", 100, False, 24, -3, 7, 6, 108),
    ]
    snapshot_at = migrated.query(
        "SELECT toUnixTimestamp64Milli(snapshot_at) FROM stock_on_hand_v "
        "WHERE location_id = 'W1' AND sku = 'K1'"
    ).result_rows
    assert snapshot_at == [(T0 + 2 * MINUTE,)]
    other = migrated.query(
        "SELECT location_id, on_hand FROM stock_on_hand_v WHERE sku = 'OTHER' "
        "ORDER BY location_id"
    ).result_rows
    assert other == [("S1", -1), ("W1", -2)]  # sold without any stock record


def test_coupon_policy_current_v_takes_the_latest_even_when_null(migrated: Client) -> None:
    base = {"campaign_id": "C1", "store_id": "", "window_seconds": 3600,
            "per_member_limit": None, "paused": False, "set_by": "ops"}
    insert(migrated, "coupon_policies", [
        base | {"cap_per_window": 100, "set_at": T0},
        base | {"cap_per_window": None, "set_at": T0 + MINUTE, "paused": True},
        base | {"store_id": "S1", "cap_per_window": 5, "set_at": T0},
    ])
    rows = migrated.query(
        "SELECT store_id, cap_per_window, paused FROM coupon_policy_current_v "
        "ORDER BY store_id"
    ).result_rows
    assert rows == [("", None, True), ("S1", 5, False)]


def test_guide_views_count_each_delivery_once_per_guide_and_local_day(migrated: Client) -> None:
    base = {"order_id": "O", "origin_type": "guide", "origin_id": "S1", "carrier": "GUIDE",
            "region": "EAST", "source_topic": "ct.logistics", "partition": 0, "offset": 0}
    # 15:50 UTC is 23:50 in Shanghai: the late delivery at 16:10 UTC is the next local day
    day = ms(datetime(2025, 11, 20, 15, 0))
    eta = day + 60 * MINUTE
    rows = []
    for sid, guide, finished, status in (
        ("A", "G1", day + 50 * MINUTE, "delivered"),   # on time
        ("B", "G1", day + 70 * MINUTE, "delivered"),   # late, next local day
        ("C", "G1", day + 55 * MINUTE, "failed"),
        ("D", "G2", day + 40 * MINUTE, "delivered"),
        ("E", "G2", 0, ""),                             # still waiting for its guide
    ):
        rows.append(base | {"event_key": f"{sid}c", "shipment_id": sid, "guide_id": guide,
                            "status": "created", "ts": day, "eta": eta})
        if status:
            rows.append(base | {"event_key": f"{sid}p", "shipment_id": sid, "guide_id": guide,
                                "status": "picked_up", "ts": day + 5 * MINUTE, "eta": eta})
            rows.append(base | {"event_key": f"{sid}f", "shipment_id": sid, "guide_id": guide,
                                "status": status, "ts": finished, "eta": eta})
    rows.append(rows[0] | {"offset": 9})  # a replayed event collapses
    rows.append(base | {"event_key": "W", "shipment_id": "W", "guide_id": None,
                        "origin_type": "central_warehouse", "status": "delivered",
                        "ts": day, "eta": eta})
    insert(migrated, "logistics_events", rows)
    waiting = migrated.query(
        "SELECT shipment_id, guide_id, store_id FROM guide_deliveries_v "
        "WHERE picked_up_at IS NULL").result_rows
    assert waiting == [("E", "G2", "S1")]
    days = migrated.query(
        "SELECT guide_id, toString(day), delivered, on_time, late, failed FROM guide_day_v "
        "ORDER BY guide_id, day").result_rows
    assert days == [("G1", "2025-11-20", 1, 1, 0, 1), ("G1", "2025-11-21", 1, 0, 1, 0),
                    ("G2", "2025-11-20", 1, 1, 0, 0)]
