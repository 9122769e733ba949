"""Stock per (location, SKU): restock and stock-out alerts, demand spikes, and
pausing campaigns whose SKUs run short at a store.

The inputs come from three streams keyed three ways (inventory by location,
orders and scans by store, and a warehouse-direct order takes stock from the
warehouse, not the store), so the worker re-keys them by SKU onto the
internal ``stock-moves`` topic (:class:`StockMove`). One partition then holds
every location of a SKU: on hand, velocity and scans are exact, and the
transfer suggestion can look at the region's warehouse and the nearest
stores without asking anyone.

On hand follows ``stock_on_hand_v``: the last snapshot (a count) plus the
movements strictly after it. Velocity is units sold in the last hour,
hopping by 5 minutes. Cover is on hand / velocity.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from msgspec import Struct

from ctower.schemas.control import CouponSignal, StockLevel
from ctower.schemas.master_data import MasterData
from ctower.tables.rules.alert_book import AlertBook, Finding
from ctower.tables.rules.config import Rules, StockRules
from ctower.tables.rules.rule_state import RuleState

MINUTE = 60_000
HOP = 5 * MINUTE
_KEEP_MINUTES = 70
"""Minute buckets kept: the velocity hour and the demand baseline, plus a margin."""
_MAX_DELTAS = 500

INBOUND = frozenset({"receipt", "transfer_in", "adjustment"})
OUTBOUND = frozenset({"transfer_out", "sale"})


class StockMove(Struct, array_like=True):
    """One effect on a (location, SKU), re-keyed by SKU; ``qty`` is a count
    for ``scan``. ``source``/``offset`` name the message it came from."""

    location_id: str
    sku: str
    kind: str
    qty: int
    ts: int
    source: str
    offset: int


class StockItem(Struct, kw_only=True, array_like=True):
    known: bool = False
    """A snapshot has been seen: before one, on hand is not judged."""
    base: int = 0
    base_ts: int = 0
    deltas: list[tuple[int, int]] = []
    """(ts, signed qty) strictly after ``base_ts``."""
    sales: dict[int, int] = {}
    """Minute -> units sold."""
    scans: dict[int, int] = {}
    """Minute -> scans."""
    low_cover: bool = False
    last_level: tuple[int, int] = (-1, -1)
    zero_since: int = 0
    """When on hand last reached zero (0 while there is stock): scans before it,
    such as the buyer's of the last unit, do not make a stock-out."""

    def on_hand(self) -> int:
        return self.base + sum(q for _, q in self.deltas)


class StockRulesEngine:
    def __init__(
        self,
        state: RuleState[StockItem],
        book: AlertBook,
        rules: Callable[[], Rules],
        master: MasterData | None,
        signal: Callable[[CouponSignal], None],
        level: Callable[[StockLevel], None],
    ) -> None:
        self.state = state
        self.book = book
        self.rules = rules
        self.master = master
        self.signal = signal
        self.level = level
        self._touched: dict[int, set[str]] = {}
        self._evaluated_at: dict[int, int] = {}
        self._campaigns_by_sku: dict[str, list[str]] = {}
        if master is not None:
            for campaign in master.campaigns:
                for sku in campaign.skus:
                    self._campaigns_by_sku.setdefault(sku, []).append(campaign.campaign_id)

    # ----------------------------------------------------------------- input
    def apply(self, partition: int, moves: Iterable[StockMove]) -> None:
        """Apply one array of moves (whole source messages, in source order).

        Rules are evaluated as event time passes inside the array, not only
        at its end: a replay of an hour of history in one batch must still
        alert at the minute the stock ran out.
        """
        state = self.state
        evaluate = lambda: self._evaluate_if_time_passed(partition)  # noqa: E731
        for move in state.fresh_items(partition, moves, evaluate):
            key = f"{move.location_id}|{move.sku}"
            item = state.get(partition, key) or StockItem(deltas=[], sales={}, scans={})
            self._move(item, move)
            state.put(partition, key, item)
            self._touched.setdefault(partition, set()).add(key)
        evaluate()

    def _evaluate_if_time_passed(self, partition: int) -> None:
        now = self.state.now(partition)
        if now - self._evaluated_at.get(partition, 0) >= 1_000:
            self._evaluated_at[partition] = now
            for key in self._touched.pop(partition, ()):
                self.evaluate(partition, key, now)

    @staticmethod
    def _move(item: StockItem, move: StockMove) -> None:
        kind, ts, qty = move.kind, move.ts, move.qty
        minute = ts - ts % MINUTE
        if kind == "scan":
            item.scans[minute] = item.scans.get(minute, 0) + qty
            return
        if kind == "sale":
            item.sales[minute] = item.sales.get(minute, 0) + qty
        if kind == "snapshot":
            if item.known and ts < item.base_ts:
                return
            item.known, item.base, item.base_ts = True, qty, ts
            item.deltas = [d for d in item.deltas if d[0] > ts]
            StockRulesEngine._mark_zero(item, ts)
            return
        # A movement at the snapshot's own millisecond that arrives after it
        # (a receipt booked right after the count) is not in the count.
        if item.known and ts < item.base_ts:
            return
        item.deltas.append((ts, qty if kind in INBOUND else -qty))
        if len(item.deltas) > _MAX_DELTAS:
            item.deltas.sort()
            oldest = item.deltas.pop(0)
            item.base += oldest[1]
            item.base_ts = max(item.base_ts, oldest[0])
        StockRulesEngine._mark_zero(item, ts)

    @staticmethod
    def _mark_zero(item: StockItem, ts: int) -> None:
        if item.on_hand() > 0:
            item.zero_since = 0
        elif not item.zero_since:
            item.zero_since = ts

    # ------------------------------------------------------------ evaluation
    def evaluate_touched(self) -> None:
        touched, self._touched = self._touched, {}
        for partition, keys in touched.items():
            if self.state.owns(partition):
                now = self.state.now(partition)
                for key in keys:
                    self.evaluate(partition, key, now)

    def tick(self) -> None:
        """Time passes: scans leave their window, sales leave the velocity hour."""
        for partition in self.state.partitions():
            now = self.state.now(partition)
            if not now:
                continue
            for key, item in self.state.items(partition):
                if item.low_cover or self._any_open(partition, key):
                    self.evaluate(partition, key, now)
            self.book.expire(partition, now)

    def _any_open(self, partition: int, key: str) -> bool:
        return any(
            self.book.is_open(partition, f"{kind}:{key}")
            for kind in ("restock", "stock_out", "demand_spike")
        )

    def measures(
        self, item: StockItem, now: int, rules: StockRules
    ) -> tuple[int, float, float | None]:
        """(on hand, velocity per hour, cover hours or None)."""
        hop_end = now - now % HOP
        start = hop_end - rules.velocity_window_minutes * MINUTE
        units = sum(u for m, u in item.sales.items() if start <= m < hop_end)
        velocity = units * 60 / rules.velocity_window_minutes
        on_hand = item.on_hand()
        cover = None
        if units >= rules.min_units_per_window and velocity > 0:
            cover = max(0.0, on_hand) / velocity
        return on_hand, velocity, cover

    def evaluate(self, partition: int, key: str, now: int) -> None:
        item = self.state.get(partition, key)
        if item is None:
            return
        all_rules = self.rules()
        rules = all_rules.stock
        location_id, sku = key.split("|", 1)
        self._trim(item, now)
        on_hand, velocity, cover = self.measures(item, now, rules)
        master = self.master
        is_store = master is None or location_id in master.store_by_id
        region = master.region_of(location_id) if master else None
        scan_window = int(rules.stockout_window_minutes * MINUTE)
        # whole minutes after the stock ran out, within the window
        zero_minute = item.zero_since - item.zero_since % MINUTE + MINUTE
        scans_from = max(now - scan_window, zero_minute)
        recent_scans = sum(c for m, c in item.scans.items() if m >= scans_from)
        hop_end = now - now % HOP
        window = {
            "window_start": hop_end - rules.velocity_window_minutes * MINUTE,
            "window_end": hop_end,
        }
        evidence = {
            **window,
            "location_id": location_id,
            "sku": sku,
            "on_hand": on_hand,
            "velocity_per_h": round(velocity, 2),
            "cover_h": round(cover, 2) if cover is not None else None,
            "lead_time_h": rules.lead_time_hours,
        }
        stock_out = item.known and on_hand <= 0 and recent_scans >= rules.stockout_scans
        restock = (
            item.known and not stock_out and cover is not None and cover < rules.lead_time_hours
        )
        action = None
        if stock_out or restock:
            action = self.transfer_source(partition, location_id, sku, on_hand, velocity, now)
        scope = {"region": region, "store_id": location_id if is_store else None, "sku": sku}
        book = self.book
        if stock_out:
            book.hold(
                partition,
                f"stock_out:{key}",
                Finding(
                    kind="stock_out",
                    severity="critical",
                    evidence={
                        **evidence,
                        "scans": recent_scans,
                        "threshold": rules.stockout_scans,
                        "window_minutes": rules.stockout_window_minutes,
                        "window_start": now - scan_window,
                        "window_end": now,
                    },
                    action=action,
                    **scope,
                ),
                now,
            )
        else:
            book.clear(partition, f"stock_out:{key}", now, {"on_hand": on_hand})
        if restock:
            book.hold(
                partition,
                f"restock:{key}",
                Finding(
                    kind="restock",
                    severity="warning",
                    evidence={**evidence, "threshold": rules.lead_time_hours},
                    action=action,
                    **scope,
                ),
                now,
            )
        else:
            book.clear(partition, f"restock:{key}", now, {"on_hand": on_hand, "cover_h":
                                                          evidence["cover_h"]})
        if is_store:
            self._demand(partition, key, item, now, all_rules, evidence, scope)
            self._coupon_cover(item, location_id, sku, on_hand, cover, rules, now, evidence)
        level = (on_hand, round(cover * 10) if cover is not None else -1)
        if level != item.last_level:
            item.last_level = level
            self.level(
                StockLevel(
                    location_id=location_id,
                    sku=sku,
                    region=region or "",
                    on_hand=on_hand,
                    velocity_per_h=round(velocity, 2),
                    cover_h=round(cover, 2) if cover is not None else None,
                    transfer_from=action.get("source") if action else None,
                    ts=now,
                )
            )
            self.state.touch(partition, key)

    @staticmethod
    def _trim(item: StockItem, now: int) -> None:
        horizon = now - _KEEP_MINUTES * MINUTE
        for buckets in (item.sales, item.scans):
            if buckets and min(buckets) < horizon:
                for minute in [m for m in buckets if m < horizon]:
                    del buckets[minute]

    def _demand(
        self,
        partition: int,
        key: str,
        item: StockItem,
        now: int,
        all_rules: Rules,
        evidence: dict[str, object],
        scope: dict[str, str | None],
    ) -> None:
        rules = all_rules.demand
        recent_from = now - HOP
        scans = sum(c for m, c in item.scans.items() if m > recent_from - MINUTE and m <= now)
        base_from = max(
            self.state.history_from(partition), recent_from - rules.baseline_windows * HOP
        )
        windows = (recent_from - base_from) / HOP
        spike_key = f"demand_spike:{key}"
        if windows < 1:
            self.book.clear(partition, spike_key, now)
            return
        history = sum(c for m, c in item.scans.items() if base_from <= m <= recent_from - MINUTE)
        baseline = max(rules.baseline_floor, history / windows)
        if scans >= rules.min_scans and scans > rules.k * baseline:
            warehouse = self.master.warehouse_for(scope["store_id"] or "") if self.master else None
            self.book.hold(
                partition,
                spike_key,
                Finding(
                    kind="demand_spike",
                    severity="info",
                    evidence={
                        "store_id": scope["store_id"],
                        "sku": scope["sku"],
                        "scans": scans,
                        "baseline": round(baseline, 2),
                        "ratio": round(scans / baseline, 1),
                        "k": rules.k,
                        "window_start": recent_from,
                        "window_end": now,
                        "baseline_from": base_from,
                        "on_hand": evidence["on_hand"],
                    },
                    action={"kind": "prepack", "source": warehouse or "?"},
                    **scope,
                ),
                now,
            )
        else:
            self.book.clear(partition, spike_key, now, {"scans": scans})

    def _coupon_cover(
        self,
        item: StockItem,
        store_id: str,
        sku: str,
        on_hand: int,
        cover: float | None,
        rules: StockRules,
        now: int,
        evidence: dict[str, object],
    ) -> None:
        campaigns = self._campaigns_by_sku.get(sku)
        if not campaigns or self.master is None:
            return
        short = cover is not None and cover < rules.coupon_cover_hours
        low = item.known and (on_hand <= 0 or short)
        if low == item.low_cover:
            return
        item.low_cover = low
        region = self.master.region_of(store_id)
        for campaign_id in campaigns:
            info = self.master.campaign_by_id[campaign_id]
            if info.regions and region not in info.regions:
                continue
            self.signal(
                CouponSignal(
                    campaign_id=campaign_id,
                    store_id=store_id,
                    cause="stock_cover",
                    sku=sku,
                    active=low,
                    evidence={**evidence, "threshold": rules.coupon_cover_hours},
                    ts=now,
                )
            )

    # -------------------------------------------------------------- transfers
    def transfer_source(
        self, partition: int, location_id: str, sku: str, on_hand: int, velocity: float, now: int
    ) -> dict[str, object]:
        """Where to restock from: the region's warehouse, else the nearest store with
        surplus, else the warehouse anyway (flagged short)."""
        rules = self.rules().stock
        need = max(1, math.ceil(velocity * rules.target_cover_hours - max(0, on_hand)))
        master = self.master
        warehouse = master.warehouse_for(location_id) if master else None
        if warehouse is None or warehouse == location_id:
            return {"kind": "short", "source": warehouse or "?", "qty": need}
        wh_item = self.state.get(partition, f"{warehouse}|{sku}")
        if wh_item is None or not wh_item.known or wh_item.on_hand() >= need:
            return {"kind": "warehouse", "source": warehouse, "qty": need}
        assert master is not None
        for store_id, km in master.nearest_stores(location_id, rules.nearest_stores):
            other = self.state.get(partition, f"{store_id}|{sku}")
            if other is None or not other.known:
                continue
            have, other_velocity, other_cover = self.measures(other, now, rules)
            surplus_cover = rules.surplus_factor * rules.lead_time_hours
            spare = have - math.ceil(other_velocity * surplus_cover)
            if (other_cover is None or other_cover > surplus_cover) and spare >= need:
                return {"kind": "store", "source": store_id, "qty": need, "distance_km": km}
        return {"kind": "short", "source": warehouse, "qty": need}
