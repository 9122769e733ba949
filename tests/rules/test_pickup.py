"""Pickup congestion and store-pickup throttling, with hysteresis."""

from __future__ import annotations

import random
from typing import Any

from ctower.rules.config import Rules
from ctower.rules.pickup import PickupQueue, PickupRules
from ctower.schemas.events import Pickup
from ctower.schemas.master_data import CampaignInfo, MasterData, RegionInfo, StoreInfo

T0 = 1_790_000_000_000
MASTER = MasterData(
    regions=[RegionInfo(region_id="EAST", warehouse_id="WH-EAST")],
    stores=[StoreInfo(store_id="S1", region_id="EAST", pickup_capacity=10)],
    campaigns=[
        CampaignInfo(campaign_id="PICK", kind="store_pickup", skus=["K1"]),
        CampaignInfo(campaign_id="DISC", kind="discount", skus=["K1"]),
    ],
)


def make(harness: Any, rules: Rules | None = None) -> PickupRules:
    return PickupRules(
        harness.state("pickup", PickupQueue), harness.book("pickup"),
        lambda: rules or Rules(), MASTER, harness.signals.append, harness.levels.append,
    )


class Feed:
    """Pickup events for store S1, one message each, with a moving clock."""

    def __init__(self, rules: PickupRules) -> None:
        self.rules = rules
        self.offset = 0
        self.ts = T0

    def send(self, order: str, state: str, advance_ms: int = 1_000) -> None:
        self.ts += advance_ms
        self.offset += 1
        event = Pickup(ts=self.ts, order_id=order, store_id="S1", state=state)  # type: ignore[call-arg]
        self.rules.apply(0, "pickup:0", self.offset, [event])
        self.rules.evaluate_touched()


def test_noisy_pressure_around_a_threshold_does_not_flap(harness: Any) -> None:
    rules = make(harness)
    feed = Feed(rules)
    waiting: list[str] = []
    rng = random.Random(7)
    for n in range(9):  # 9 waiting of capacity 10: pressure 0.9 > 0.8, throttled
        waiting.append(f"o{n}")
        feed.send(f"o{n}", "arrived")
    assert [s.active for s in harness.signals] == [True]
    assert harness.signals[0].campaign_id == "PICK"  # discount campaigns are not throttled
    assert harness.signals[0].evidence["threshold"] == 0.8
    # noise: the queue wanders between 7 and 9 (pressure 0.7-0.9) for a long while
    for n in range(9, 400):
        if len(waiting) > 7 and (len(waiting) >= 9 or rng.random() < 0.5):
            feed.send(waiting.pop(0), "picked_up")
        else:
            waiting.append(f"o{n}")
            feed.send(f"o{n}", "arrived")
    assert [s.active for s in harness.signals] == [True], "the throttle flapped"
    while len(waiting) > 5:  # 5 of 10: under 0.6, reopens once
        feed.send(waiting.pop(0), "picked_up")
    assert [s.active for s in harness.signals] == [True, False]
    assert harness.signals[1].evidence["threshold"] == 0.6


def test_congestion_opens_once_resolves_and_respects_the_cooldown(harness: Any) -> None:
    rules = make(harness)
    feed = Feed(rules)
    for n in range(12):
        feed.send(f"o{n}", "arrived")
    opened = [a for a in harness.alerts if a.status == "open"]
    assert len(opened) == 1
    alert = opened[0]
    assert alert.kind == "pickup_congestion" and alert.store_id == "S1" and alert.region == "EAST"
    assert alert.evidence["waiting"] == 11 and alert.evidence["capacity"] == 10
    assert alert.action and "pickup" in alert.action.lower()
    for n in range(12, 20):  # more arrivals: still one open alert
        feed.send(f"o{n}", "arrived")
    assert len([a for a in harness.alerts if a.status == "open"]) == 1
    for n in range(20):
        feed.send(f"o{n}", "no_show" if n % 2 else "picked_up")
    resolved = [a for a in harness.alerts if a.status == "resolved"]
    assert len(resolved) == 1 and resolved[0].alert_id == alert.alert_id
    for n in range(20, 32):  # congested again within the cooldown: no new alert
        feed.send(f"o{n}", "arrived")
    assert len([a for a in harness.alerts if a.status == "open"]) == 1
    for n in range(32, 34):  # ...but after the cooldown it opens again, with a new id
        feed.send(f"o{n}", "arrived", advance_ms=11 * 60_000)
    opened = [a for a in harness.alerts if a.status == "open"]
    assert len(opened) == 2 and opened[1].alert_id != alert.alert_id


def test_slow_service_is_congestion_even_under_capacity(harness: Any) -> None:
    rules = make(harness)
    feed = Feed(rules)
    for n in range(6):  # six customers, each served after 12 minutes
        feed.send(f"o{n}", "arrived", advance_ms=100)
    for n in range(6):
        feed.send(f"o{n}", "picked_up", advance_ms=12 * 60_000 if n == 0 else 100)
    opened = [a for a in harness.alerts if a.status == "open"]
    assert len(opened) == 1
    assert opened[0].evidence["reason"] == "slow"
    assert opened[0].evidence["p90_wait_min"] > 10


def test_state_survives_a_restart_and_replays_are_skipped(harness: Any) -> None:
    rules = make(harness)
    feed = Feed(rules)
    for n in range(4):
        feed.send(f"o{n}", "arrived")
    rules.state.flush(0)
    restarted = make(harness)  # same table: what Faust's recovery gives back
    event = Pickup(ts=feed.ts, order_id="o3", store_id="S1", state="arrived")  # type: ignore[call-arg]
    restarted.apply(0, "pickup:0", feed.offset, [event])  # a replay of the last message
    queue = restarted.state.get(0, "S1")
    assert queue is not None and sorted(queue.waiting) == ["o0", "o1", "o2", "o3"]
    assert restarted.state.replayed_skips == 1


def test_room_is_told_to_the_campaigns_with_a_band_between_its_thresholds(harness: Any) -> None:
    rooms: list[Any] = []
    rules = PickupRules(
        harness.state("pickup", PickupQueue), harness.book("pickup"), lambda: Rules(), MASTER,
        harness.signals.append, harness.levels.append, room=rooms.append,
    )
    feed = Feed(rules)
    feed.send("o0", "arrived")  # 1 of 10: room
    assert [(s.campaign_id, s.cause, s.active) for s in rooms] == [("PICK", "pickup_room", True)]
    assert rooms[0].evidence["pressure"] == 0.1
    for n in range(1, 6):  # 0.6: no more room
        feed.send(f"o{n}", "arrived")
    assert [s.active for s in rooms] == [True, False]
    assert rooms[1].evidence == {**rooms[1].evidence, "pressure": 0.6, "threshold": 0.6}
    feed.send("o0", "picked_up")  # 0.5: not under room_below yet
    assert [s.active for s in rooms] == [True, False]
    feed.send("o1", "picked_up")  # 0.4
    assert [s.active for s in rooms] == [True, False, True]
    assert harness.signals == []  # never throttled
