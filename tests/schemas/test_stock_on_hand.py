"""stock_on_hand_v and the stock rules count the same stock (migration 0009).

A count (snapshot) is taken before anything booked at its own millisecond, so
a receipt, sale or transfer at that millisecond is on top of it, in the store
as in the rules, whichever of the two arrives first at the rules. Every test
runs against a real embedded ClickHouse (chdb) in tmp_path.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from ctower.rules.alert_book import AlertBook, AlertEntry
from ctower.rules.config import Rules
from ctower.rules.rule_state import RuleState
from ctower.rules.stock import StockItem, StockMove, StockRulesEngine
from ctower.schemas.migrations import DDL_DIR, apply_migrations

MINUTE = 60_000
T0 = 1_763_000_000_000 - 1_763_000_000_000 % (5 * MINUTE)
"""A 5-minute boundary (mid-November 2025), epoch ms."""

Move = tuple[str, str, int, int]
"""(location, kind, qty, ts) of SKU K1; kind is an inventory kind or "sale"."""

SAME_MS: list[Move] = [
    ("S1", "receipt", 5, T0 - 1),         # before the count: inside it
    ("S1", "snapshot", 10, T0),
    ("S1", "receipt", 7, T0),             # booked with the count: on top of it
    ("S1", "sale", 2, T0),                # sold in that millisecond: out of it
    ("S1", "transfer_out", 1, T0 + MINUTE),
    ("W1", "snapshot", 100, T0),          # a warehouse counted on first touch...
    ("W1", "transfer_out", 30, T0),       # ...ships in the same millisecond
]
EXPECTED = {"S1": 10 + 7 - 2 - 1, "W1": 100 - 30}


def insert_moves(client: Client, moves: list[Move]) -> None:
    inventory = [m for m in moves if m[1] != "sale"]
    client.insert(
        "inventory_events",
        [[f"i{n}", loc, "K1", kind, qty, ts] for n, (loc, kind, qty, ts) in enumerate(inventory)],
        column_names=["event_key", "location_id", "sku", "kind", "qty", "ts"],
    )
    sales = [m for m in moves if m[1] == "sale"]
    rows: list[list[Any]] = [
        [f"o{n}:paid", f"o{n}", "M", loc, "scan_and_go", "in_store", ["K1"], [qty], [1.0],
         float(qty), qty * 100, "paid", None, ts]
        for n, (loc, _, qty, ts) in enumerate(sales)
    ]
    client.insert(
        "order_events", rows,
        column_names=["event_key", "order_id", "member_id", "store_id", "channel",
                      "fulfillment", "lines.sku", "lines.qty", "lines.unit_price", "amount",
                      "amount_fen", "status", "ship_from", "ts"],
    )


def view_on_hand(client: Client) -> dict[str, int]:
    rows = client.query(
        "SELECT location_id, on_hand FROM stock_on_hand_v WHERE sku = 'K1'"
    ).result_rows
    return {location: int(on_hand) for location, on_hand in rows}


class _Table:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def send_changelog(self, partition: int | None, key: Any, value: Any) -> None:
        pass


def rules_on_hand(moves: list[Move]) -> dict[str, int]:
    """On hand as the stock rules have it after ``moves``, one source message each."""
    table = _Table()
    engine = StockRulesEngine(
        RuleState(table, "stock", StockItem),
        AlertBook(RuleState(table, "alerts.stock", AlertEntry), lambda _: None, "en", lambda: 0),
        Rules, None, lambda _: None, lambda _: None,
    )
    for offset, (loc, kind, qty, ts) in enumerate(moves):
        source = "order:0" if kind == "sale" else "inventory:0"
        engine.apply(0, [StockMove(loc, "K1", kind, qty, ts, source, offset)])
    found: dict[str, int] = {}
    for loc in {m[0] for m in moves}:
        item = engine.state.get(0, f"{loc}|K1")
        assert item is not None
        found[loc] = item.on_hand()
    return found


def test_a_movement_at_the_snapshots_millisecond_counts(store: Client) -> None:
    apply_migrations(store)
    insert_moves(store, SAME_MS)
    assert view_on_hand(store) == EXPECTED


@pytest.mark.parametrize("order", ["as booked", "movements first", "reversed"])
def test_the_view_and_the_rules_agree_in_any_arrival_order(store: Client, order: str) -> None:
    apply_migrations(store)
    insert_moves(store, SAME_MS)
    moves = {
        "as booked": SAME_MS,
        "movements first": sorted(SAME_MS, key=lambda m: m[1] == "snapshot"),
        "reversed": SAME_MS[::-1],
    }[order]
    assert rules_on_hand(moves) == view_on_hand(store) == EXPECTED


def test_0009_redefines_the_view_of_a_store_at_0008(store: Client, tmp_path: Path) -> None:
    old = tmp_path / "ddl"
    old.mkdir()
    for path in sorted(DDL_DIR.glob("*.sql")):
        if int(path.name[:4]) <= 8:
            shutil.copy(path, old / path.name)
    apply_migrations(store, old)
    insert_moves(store, SAME_MS)
    before = view_on_hand(store)
    assert before == {"S1": 10 - 1, "W1": 100}  # 0004: the same millisecond was ignored
    assert apply_migrations(store)[0] == "0009_stock_on_hand_same_ms.sql"  # and any later
    assert view_on_hand(store) == EXPECTED
    assert apply_migrations(store) == []
