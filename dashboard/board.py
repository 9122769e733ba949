"""The store board's judgement: each store's worst open condition and its colour.

Kept out of the page so the ranking is a plain function with a test of its
own. Levels: 3 red (pickup over capacity, a critical alert, a stock-out),
2 orange (pickup pressure at 0.8 or more, shipments from the store past their
ETA, a campaign paused there, a warning alert), 1 yellow (a campaign
throttled, a restock alert, an info alert), 0 green. Within the worst level,
the first condition in that order is the one the tile names.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from ctower.dashboard.labels import is_missing

LEVEL_COLOURS = {3: "#f8d7da", 2: "#ffe5cc", 1: "#fff6bf", 0: "#e3f4e1"}
LEVEL_BORDERS = {3: "#c9302c", 2: "#ec971f", 1: "#d4b106", 0: "#5cb85c"}
LEVEL_ICONS = {3: ":red[●]", 2: ":orange[●]", 1: ":yellow[●]", 0: ":green[●]"}
"""Markdown: coloured dots (emoji need a colour-emoji font the servers may lack)."""
PRESSURE_WARNING = 0.8

BOARD_COLUMNS = ["store_id", "region", "level", "condition", "value"]


def _count(row: pd.Series | None, name: str) -> int:
    if row is None or name not in row.index or is_missing(row[name]):
        return 0
    return int(row[name])


def judge(pickup: pd.Series | None, facts: pd.Series | None) -> tuple[int, str, str]:
    """(level, condition code, value shown) for one store."""
    found: list[tuple[int, str, str]] = []
    if pickup is not None:
        waiting, capacity, pressure = pickup.get("waiting"), pickup.get("capacity"), \
            pickup.get("pressure")
        if not is_missing(waiting) and not is_missing(capacity) and capacity \
                and waiting > capacity:
            found.append((3, "over_capacity", f"{int(waiting)}/{int(capacity)}"))
        elif not is_missing(pressure) and pressure >= PRESSURE_WARNING:
            found.append((2, "pressure", f"{float(pressure):.2f}"))
    critical = _count(facts, "alerts_critical")
    if critical:
        found.append((3, "alert_critical", str(critical)))
    for name, level in (("stock_out", 3), ("late_shipments", 2), ("coupon_paused", 2),
                        ("alerts_warning", 2), ("coupon_throttled", 1), ("short_cover", 1),
                        ("alerts_info", 1)):
        n = _count(facts, name)
        if n:
            found.append((level, name, str(n)))
    if not found:
        return 0, "ok", ""
    worst = max(level for level, _, _ in found)
    return next(entry for entry in found if entry[0] == worst)


def board(stores: Iterable[str], regions: dict[str, str], pickup: pd.DataFrame,
          conditions: pd.DataFrame, unknown_region: str) -> pd.DataFrame:
    """One row per store: region, level, the condition the tile names and its value."""
    by_store_pickup = {str(r["store_id"]): r for _, r in pickup.iterrows()} \
        if not pickup.empty else {}
    by_store_facts = {str(r["store_id"]): r for _, r in conditions.iterrows()} \
        if not conditions.empty else {}
    rows = []
    for store in sorted(set(stores)):
        level, condition, value = judge(by_store_pickup.get(store), by_store_facts.get(store))
        rows.append((store, regions.get(store, unknown_region), level, condition, value))
    return pd.DataFrame(rows, columns=BOARD_COLUMNS)
