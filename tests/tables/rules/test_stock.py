"""Stock per (location, SKU): on hand, stock-outs, restock with a transfer
source, demand spikes and the coupon cover signal."""

from __future__ import annotations

from typing import Any

from ctower.schemas.master_data import CampaignInfo, MasterData, RegionInfo, StoreInfo
from ctower.tables.rules.config import Rules
from ctower.tables.rules.stock import StockItem, StockMove, StockRulesEngine

T0 = 1_790_000_100_000
"""On a 5-minute boundary, so the velocity hour is exactly the hour of sales."""
MIN = 60_000
MASTER = MasterData(
    regions=[RegionInfo(region_id="EAST", warehouse_id="WH-EAST")],
    stores=[
        StoreInfo(store_id="S1", region_id="EAST", lat=31.20, lon=121.40),
        StoreInfo(store_id="S2", region_id="EAST", lat=31.21, lon=121.41),
        StoreInfo(store_id="S3", region_id="EAST", lat=31.60, lon=121.90),
    ],
    campaigns=[CampaignInfo(campaign_id="C1", kind="discount", skus=["K1"], regions=["EAST"])],
)


class Feed:
    def __init__(self, harness: Any) -> None:
        self.engine = StockRulesEngine(
            harness.state("stock", StockItem), harness.book("stock"), lambda: Rules(), MASTER,
            harness.signals.append, harness.levels.append,
        )
        self.offset = 0
        self.harness = harness

    def send(self, *moves: tuple[str, str, int, int], source: str = "inventory:0") -> None:
        """Moves (location, kind, qty, ts) of SKU K1, as one source message."""
        self.offset += 1
        self.harness.wall += 5  # sources seen 5 s apart: an idle one stops holding the clock
        self.engine.apply(0, [
            StockMove(loc, "K1", kind, qty, ts, source, self.offset) for loc, kind, qty, ts in moves
        ])
        self.engine.evaluate_touched()

    def on_hand(self, loc: str) -> int:
        item = self.engine.state.get(0, f"{loc}|K1")
        assert item is not None
        return item.on_hand()


def test_on_hand_follows_the_snapshot_then_later_movements(harness: Any) -> None:
    feed = Feed(harness)
    feed.send(("S1", "sale", 2, T0 - 1))  # before the count: inside it
    feed.send(("S1", "snapshot", 10, T0), ("S1", "receipt", 5, T0))  # same ms, after it: counts
    feed.send(("S1", "sale", 3, T0 + MIN), source="order:0")
    feed.send(("S1", "transfer_out", 1, T0 + 2 * MIN), ("S1", "adjustment", -2, T0 + 3 * MIN))
    assert feed.on_hand("S1") == 10 + 5 - 3 - 1 - 2


def test_stock_out_needs_scans_after_the_last_unit_went(harness: Any) -> None:
    feed = Feed(harness)
    feed.send(("S1", "snapshot", 1, T0), ("WH-EAST", "snapshot", 500, T0))
    feed.send(("S1", "scan", 3, T0 + MIN), source="scan:0")  # the buyer looking at it
    feed.send(("S1", "sale", 1, T0 + MIN + 5_000), source="order:0")
    assert not [a for a in harness.alerts if a.kind == "stock_out"]
    for minute in range(3, 6):  # shoppers keep scanning the empty shelf
        feed.send(("S1", "scan", 1, T0 + minute * MIN), source="scan:0")
    alerts = [a for a in harness.alerts if a.kind == "stock_out"]
    assert len(alerts) == 1
    alert = alerts[0]
    assert (alert.store_id, alert.sku, alert.region) == ("S1", "K1", "EAST")
    assert alert.evidence["on_hand"] == 0 and alert.evidence["scans"] >= 3
    assert alert.action is not None and "WH-EAST" in alert.action
    feed.send(("S1", "transfer_in", 20, T0 + 6 * MIN))
    assert [a.status for a in harness.alerts if a.kind == "stock_out"] == ["open", "resolved"]


def test_restock_names_the_nearest_store_with_surplus_when_the_warehouse_is_short(
    harness: Any,
) -> None:
    feed = Feed(harness)
    feed.send(("S1", "snapshot", 40, T0), ("S2", "snapshot", 400, T0), ("S3", "snapshot", 400, T0),
              ("WH-EAST", "snapshot", 2, T0))
    # S1 sells 36 units in an hour: 36/h, 4 left = 0.1 h of cover
    for minute in range(36):
        feed.send(("S1", "sale", 1, T0 + minute * MIN + 1), source="order:0")
    feed.send(("S2", "scan", 1, T0 + 66 * MIN), source="scan:0")  # time passes to the next hop
    feed.engine.evaluate(0, "S1|K1", T0 + 66 * MIN)
    restock = [a for a in harness.alerts if a.kind == "restock" and a.status == "open"]
    assert len(restock) == 1
    evidence = restock[0].evidence
    # it opened as soon as the velocity hour held enough sales to judge (10 units)
    assert evidence["velocity_per_h"] >= 10
    assert evidence["cover_h"] == round(evidence["on_hand"] / evidence["velocity_per_h"], 2)
    assert evidence["cover_h"] < 4.0 and evidence["threshold"] == 4.0
    # the warehouse has 2 (short); S2 is nearer than S3 and has surplus
    assert restock[0].action is not None and "S2" in restock[0].action
    assert "WH-EAST" not in restock[0].action
    # cover under 2 h at a store: the campaign covering K1 there is paused
    assert [(s.campaign_id, s.store_id, s.active) for s in harness.signals] == [("C1", "S1", True)]


def test_demand_spike_against_the_moving_baseline(harness: Any) -> None:
    feed = Feed(harness)
    feed.send(("S1", "snapshot", 500, T0))
    for minute in range(0, 60, 5):  # an hour of baseline: 2 scans every 5 minutes
        feed.send(("S1", "scan", 2, T0 + minute * MIN), source="scan:0")
    for second in range(0, 240, 10):  # then 24 scans in 4 minutes
        feed.send(("S1", "scan", 1, T0 + 60 * MIN + second * 1000), source="scan:0")
    spikes = [a for a in harness.alerts if a.kind == "demand_spike"]
    assert len(spikes) == 1
    evidence = spikes[0].evidence
    assert evidence["scans"] >= 15 and evidence["scans"] > 4 * evidence["baseline"]
    assert 1.0 <= evidence["baseline"] <= 2.5
    assert spikes[0].action is not None and "WH-EAST" in spikes[0].action
