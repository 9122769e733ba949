"""Stock per (location, SKU): on hand, stock-outs, restock with a transfer
source, demand spikes and the coupon cover signal."""

from __future__ import annotations

from typing import Any

from ctower.rules.config import Rules
from ctower.rules.stock import AheadOfClock, StockItem, StockMove, StockRulesEngine
from ctower.schemas.master_data import CampaignInfo, MasterData, RegionInfo, StoreInfo

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

    def send(
        self, *moves: tuple[str, str, int, int], source: str = "inventory:0", wall: float = 5
    ) -> None:
        """Moves (location, kind, qty, ts) of SKU K1, as one source message, ``wall``
        seconds after the previous one: 5 s makes the other sources idle (the clock is
        this source's time), 0 keeps them holding the clock back."""
        self.offset += 1
        self.harness.wall += wall
        self.engine.apply(0, [
            StockMove(loc, "K1", kind, qty, ts, source, self.offset) for loc, kind, qty, ts in moves
        ])
        self.engine.evaluate_touched()

    def on_hand(self, loc: str) -> int:
        item = self.engine.state.get(0, f"{loc}|K1")
        assert item is not None
        return item.on_hand()

    def now(self) -> int:
        return self.engine.state.now(0)

    def stock_outs(self) -> list[tuple[str, int]]:
        return [(a.status, a.resolved_at or a.opened_at) for a in self.harness.alerts
                if a.kind == "stock_out"]


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


def test_on_hand_is_judged_as_of_the_clock_not_as_of_what_arrived(harness: Any) -> None:
    """Issue 3's missed and early stock-outs: the worker drains inventory, orders and
    scans at different speeds, so a restock from half an hour later can arrive before
    the scans of the empty shelf. It must neither hide the stock-out nor end it early."""
    feed = Feed(harness)
    feed.send(("S1", "snapshot", 5, T0), ("WH-EAST", "snapshot", 500, T0))
    feed.send(("S1", "sale", 5, T0 + MIN), source="order:0")  # the shelf is empty from here
    feed.send(("S1", "scan", 1, T0 + 2 * MIN), source="scan:0")
    # the inventory source runs ahead; the scan source holds the clock back
    feed.send(("S1", "transfer_in", 20, T0 + 30 * MIN), wall=0)
    assert feed.now() == T0 + 2 * MIN
    feed.send(("S1", "scan", 1, T0 + 3 * MIN), source="scan:0", wall=0)
    feed.send(("S1", "scan", 1, T0 + 4 * MIN), source="scan:0", wall=0)
    assert feed.stock_outs() == [("open", T0 + 4 * MIN)]
    alert = harness.alerts[-1]
    assert alert.evidence["on_hand"] == 0 and alert.evidence["zero_since"] == T0 + MIN
    # the clock reaches the transfer: stock is back, the alert resolves then, not before
    feed.send(("S1", "scan", 1, T0 + 29 * MIN), source="scan:0", wall=0)
    assert feed.stock_outs() == [("open", T0 + 4 * MIN)]
    feed.send(("S1", "scan", 1, T0 + 31 * MIN), source="scan:0", wall=0)
    assert feed.stock_outs() == [("open", T0 + 4 * MIN), ("resolved", T0 + 30 * MIN)]
    assert harness.alerts[-1].evidence["at_resolution"] == {"on_hand": 20}


def test_a_sale_from_ahead_does_not_empty_the_shelf_early(harness: Any) -> None:
    feed = Feed(harness)
    feed.send(("S1", "snapshot", 1, T0), ("WH-EAST", "snapshot", 500, T0))
    feed.send(("S1", "scan", 1, T0 + MIN), source="scan:0")
    feed.send(("S1", "sale", 1, T0 + 10 * MIN), source="order:0", wall=0)  # from ahead
    for minute in (2, 3, 4):
        feed.send(("S1", "scan", 1, T0 + minute * MIN), source="scan:0", wall=0)
    assert feed.now() == T0 + 4 * MIN
    assert feed.stock_outs() == []  # one unit is still on the shelf at minute 4
    # shoppers after the sale, arriving while the order source holds the clock at minute 10
    for minute in (11, 12, 13):
        feed.send(("S1", "scan", 1, T0 + minute * MIN), source="scan:0", wall=0)
    assert feed.stock_outs() == []
    # the sources go quiet: time passes, and the moves that came early come due
    harness.wall += 6
    feed.engine.tick()
    assert feed.stock_outs() == [("open", T0 + 13 * MIN + 1_000)]


def test_scans_in_the_minute_the_stock_ran_out_count_when_after_it(harness: Any) -> None:
    feed = Feed(harness)
    feed.send(("S1", "snapshot", 1, T0), ("WH-EAST", "snapshot", 500, T0))
    feed.send(("S1", "scan", 1, T0 + 5_000), source="scan:0")  # the buyer of the last unit
    feed.send(("S1", "sale", 1, T0 + 10_000), source="order:0")
    # three scans of one minute forwarded as one move, the newest after the sale: as the
    # others may be from before it, only one is sure to be
    feed.send(("S1", "scan", 3, T0 + 20_000), source="scan:0")
    assert feed.stock_outs() == []
    feed.send(("S1", "scan", 1, T0 + 30_000), source="scan:0")
    feed.send(("S1", "scan", 1, T0 + 40_000), source="scan:0")
    assert feed.stock_outs() == [("open", T0 + 40_000)]
    assert harness.alerts[-1].evidence["scans"] == 3


def test_a_stock_out_lasts_until_stock_is_back_not_until_scans_stop(harness: Any) -> None:
    feed = Feed(harness)
    feed.send(("S1", "snapshot", 0, T0), ("WH-EAST", "snapshot", 500, T0))
    for minute in (1, 2, 3):
        feed.send(("S1", "scan", 1, T0 + minute * MIN), source="scan:0")
    assert feed.stock_outs() == [("open", T0 + 3 * MIN)]
    assert harness.alerts[-1].evidence["zero_since"] == T0  # counted empty
    # nobody scans the empty shelf for 40 minutes: it is still empty
    for minute in range(5, 45, 5):
        feed.send(("S2", "scan", 1, T0 + minute * MIN), source="scan:0")
        feed.engine.tick()
    assert feed.stock_outs() == [("open", T0 + 3 * MIN)]
    feed.send(("S1", "receipt", 12, T0 + 45 * MIN))
    assert feed.stock_outs() == [("open", T0 + 3 * MIN), ("resolved", T0 + 45 * MIN)]
    assert harness.alerts[-1].evidence["at_resolution"] == {"on_hand": 12}
    # empty again later: a new stock-out (after the cooldown), with its own start
    feed.send(("S1", "sale", 12, T0 + 60 * MIN), source="order:0")
    for minute in (61, 62, 63):
        feed.send(("S1", "scan", 1, T0 + minute * MIN), source="scan:0")
    assert feed.stock_outs()[2:] == [("open", T0 + 63 * MIN)]
    assert harness.alerts[-1].evidence["zero_since"] == T0 + 60 * MIN


def test_restock_and_stock_out_name_the_regions_warehouse_when_it_has_enough(
    harness: Any,
) -> None:
    feed = Feed(harness)
    feed.send(("S1", "snapshot", 30, T0), ("S2", "snapshot", 400, T0),
              ("WH-EAST", "snapshot", 500, T0))
    for minute in range(30):  # 30/h, nothing left
        feed.send(("S1", "sale", 1, T0 + minute * MIN + 1), source="order:0")
    for minute in (31, 32, 33):
        feed.send(("S1", "scan", 1, T0 + minute * MIN), source="scan:0")
    [alert] = [a for a in harness.alerts if a.kind == "stock_out"]
    need = 30 * 8  # refill to target_cover_hours (8) at 30/h
    assert alert.evidence["transfer"] == {"kind": "warehouse", "source": "WH-EAST", "qty": need}
    assert alert.action is not None and "WH-EAST" in alert.action and str(need) in alert.action
    # before it ran out, cover fell under the lead time: a restock alert, same source
    [restock] = [a for a in harness.alerts if a.kind == "restock" and a.status == "open"]
    assert restock.evidence["transfer"]["source"] == "WH-EAST"
    assert restock.evidence["transfer"]["kind"] == "warehouse"


def test_restock_skips_a_near_store_without_surplus(harness: Any) -> None:
    feed = Feed(harness)
    # S2 (nearest) has 60 but sells 30/h: 2 h of cover, under 2 x 4 h; S3 has plenty
    feed.send(("S1", "snapshot", 40, T0), ("S2", "snapshot", 60, T0), ("S3", "snapshot", 400, T0),
              ("WH-EAST", "snapshot", 0, T0))
    for minute in range(36):
        at = T0 + minute * MIN
        feed.send(("S1", "sale", 1, at + 1), ("S2", "sale", 1, at + 2), source="order:0")
    feed.send(("S1", "scan", 1, T0 + 66 * MIN), source="scan:0")
    [restock] = [a for a in harness.alerts if a.kind == "restock" and a.status == "open"
                 and a.store_id == "S1"]
    assert restock.evidence["transfer"]["kind"] == "store"
    assert restock.evidence["transfer"]["source"] == "S3"


def test_folding_old_movements_keeps_on_hand_and_the_zero_spell() -> None:
    item = StockItem(known=True, base=600, base_ts=T0, deltas=[], sales={}, scans={},
                     scan_marks=[])
    for i in range(600):
        item.deltas.append((T0 + (i + 1) * 1_000, -1))  # empty at T0 + 600 s
    now = T0 + 3 * 3_600_000
    assert item.level_at(now) == (0, T0 + 600_000)
    item.fold(now - 70 * MIN)
    assert len(item.deltas) <= 500
    assert item.level_at(now) == (0, T0 + 600_000)
    assert item.on_hand(now) == item.on_hand() == 0
    # a late movement from before the fold still counts, as in stock_on_hand_v
    StockRulesEngine._move(item, StockMove("S1", "K1", "receipt", 4, T0 + 5_000, "inventory:0", 9))
    assert item.on_hand(now) == 4


def test_every_key_of_a_long_array_is_judged(harness: Any) -> None:
    """An array holds many source messages; the rules evaluate between them as event
    time passes, and a key first touched after such an evaluation is judged too
    (here a late one, older than the clock)."""
    feed = Feed(harness)
    feed.send(("S1", "snapshot", 5, T0))
    feed.send(("S2", "scan", 1, T0 + MIN), source="scan:0", wall=0)  # ahead of inventory
    assert feed.now() == T0
    feed.engine.apply(0, [
        StockMove("S3", "K1", "snapshot", 7, T0 + 2_000, "inventory:0", 90),  # moves the clock
        StockMove("S4", "K1", "snapshot", 9, T0 + 1_000, "inventory:0", 91),  # late
    ])
    harness.wall += 6  # the sources go quiet
    feed.engine.tick()
    assert {level.location_id: level.on_hand for level in harness.levels} == {
        "S1": 5, "S2": 0, "S3": 7, "S4": 9}


def test_the_coupon_cover_pause_reopens_only_over_three_hours(harness: Any) -> None:
    feed = Feed(harness)
    feed.send(("S1", "snapshot", 150, T0), ("WH-EAST", "snapshot", 500, T0))
    for minute in range(0, 60, 5):  # 60 units an hour: 90 left is 1.5 h of cover
        feed.send(("S1", "sale", 5, T0 + minute * MIN), source="order:0")
    assert [(s.store_id, s.active) for s in harness.signals] == [("S1", True)]
    assert harness.signals[0].evidence["threshold"] == 2.0
    feed.send(("S1", "receipt", 45, T0 + 61 * MIN))  # 135: 2.25 h, over 2 but not over 3
    assert [s.active for s in harness.signals] == [True], "reopened inside the band"
    feed.send(("S1", "receipt", 60, T0 + 62 * MIN))  # 195: 3.25 h
    assert [s.active for s in harness.signals] == [True, False]
    assert harness.signals[1].evidence["threshold"] == 3.0
    assert harness.signals[1].evidence["cover_h"] == 3.25


def test_scans_from_ahead_judge_their_key_only_when_they_matter(harness: Any) -> None:
    """Draining a backlog, nearly every move arrives ahead of the rules' clock.
    A scan of a stocked shelf changes nothing the rules say, so the clock
    reaching it judges nothing, as when it arrives on time; judging the key
    at each one was most of the rules' work in the throughput bench."""
    feed = Feed(harness)
    judged: list[str] = []
    evaluate = feed.engine.evaluate

    def recording(partition: int, key: str, now: int) -> None:
        judged.append(key)
        evaluate(partition, key, now)

    feed.engine.evaluate = recording  # type: ignore[method-assign]
    feed.send(("S1", "snapshot", 50, T0), ("S2", "snapshot", 0, T0), ("S3", "snapshot", 50, T0))
    judged.clear()
    # the scan source runs ten minutes ahead of the order source, which moves the clock
    feed.send(*[(loc, "scan", 1, T0 + m * MIN) for m in range(1, 11) for loc in ("S1", "S2")],
              source="scan:0", wall=2.5)
    for minute in range(1, 11):
        feed.send(("S3", "sale", 1, T0 + minute * MIN), source="order:0",
                  wall=2.5 if minute == 1 else 0)
        assert feed.now() == T0 + minute * MIN
    assert judged.count("S3|K1") == 10  # each sale
    assert "S1|K1" not in judged  # a stocked shelf: its scans change nothing
    assert judged.count("S2|K1") == 10  # an empty shelf: each scan counts towards a stock-out
    assert feed.stock_outs() == [("open", T0 + 3 * MIN)]


def test_moves_from_ahead_come_due_exactly_when_the_clock_reaches_them() -> None:
    """Filed by the second they fall in, and taken by the millisecond: a move
    is never taken before the clock reaches it, nor left once it has, wherever
    the clock stops inside a second."""
    ahead = AheadOfClock()
    moves = [(T0 + ms, f"L{ms}|K1", ms % 2 == 0) for ms in (2_500, 0, 999, 1_000, 1_001, 7, 2_000)]
    for ts, key, scan in moves:
        ahead.add(ts, key, scan)
    taken: list[tuple[int, str, bool]] = []
    for now in (T0 - 1, T0 + 6, T0 + 7, T0 + 1_000, T0 + 1_000, T0 + 2_499, T0 + 9_999):
        came = ahead.take(now)
        assert all(ts <= now for ts, _, _ in came)
        taken.extend(came)
        assert sorted(taken) == sorted(move for move in moves if move[0] <= now)
    assert ahead.take(T0 + 99_999) == []


def test_on_hand_as_of_a_time_counts_every_movement_of_that_millisecond_and_none_after() -> None:
    item = StockItem(known=True, base=10, base_ts=T0,
                     deltas=[(T0 + 5, -1), (T0 + 5, -2), (T0 + 9, 4), (T0 + 9, -1), (T0 + 20, 7)])
    expected = {T0: 10, T0 + 4: 10, T0 + 5: 7, T0 + 8: 7, T0 + 9: 10, T0 + 19: 10, T0 + 20: 17}
    for at, on_hand in expected.items():
        assert item.on_hand(at) == on_hand, at
    assert item.on_hand() == 17
