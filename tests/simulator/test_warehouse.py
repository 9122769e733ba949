"""The simulated warehouse: answers approved orders only, the same way every run, with
rejections and late receipts in about their shares, and the stock moving with them."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from ctower.health import check
from ctower.schemas.actions import ActionOrder, ActionStatus
from ctower.schemas.control import encoder
from ctower.schemas.events import Inventory
from ctower.settings import Settings
from ctower.simulator.warehouse import EventClock, Warehouse, WarehouseConfig, run
from ctower.topics import ensure_topics

T0 = 1_790_000_000_000
MIN = 60_000


def order(n: int, status: str = "approved") -> ActionOrder:
    return ActionOrder(order_id=f"TO-{n}", kind="transfer", status=status,  # type: ignore[arg-type]
                       source="WH-EAST", destination="S1", sku="K1", qty=30,
                       due_at=T0 + 240 * MIN, created_at=T0, ts=T0)


def test_only_approved_orders_are_answered_and_each_once() -> None:
    house = Warehouse()
    assert house.on_order(order(1, "proposed")) == []
    assert len(house.on_order(order(1))) in (1, 4)
    assert house.on_order(order(1)) == []  # a re-sent approval is not answered twice
    assert house.on_order(order(1, "dispatched")) == []


def test_answers_are_seeded_by_the_order_and_come_due_in_event_time() -> None:
    config = WarehouseConfig(seed=3, reject_share=0.2, late_share=0.2)
    first, second = Warehouse(config), Warehouse(config)
    for n in range(400):
        first.on_order(order(n))
        second.on_order(order(399 - n))
    assert first.truth() == second.truth()  # the same order, the same answer
    outcomes = [t["outcome"] for t in first.truth()]
    assert 50 <= outcomes.count("rejected") <= 110
    assert 45 <= outcomes.count("late") <= 100
    for planned in first.truth():
        if planned["outcome"] == "late":
            assert planned["received_at"] > planned["due_at"]
        elif planned["outcome"] == "on_time":
            assert planned["dispatched_at"] < planned["received_at"] < planned["due_at"]
    assert first.due(T0) == []
    sent = first.due(T0 + 400 * MIN)
    assert not first.pending
    moves = [s for s in sent if isinstance(s, Inventory)]
    answers = [s for s in sent if isinstance(s, ActionStatus)]
    delivered = [t for t in first.truth() if t["outcome"] != "rejected"]
    assert sorted(m.kind for m in moves) == sorted(
        ["transfer_out"] * len(delivered) + ["transfer_in"] * len(delivered))
    assert {a.status for a in answers} == {"dispatched", "received", "rejected"}
    assert [s.ts for s in sent] == sorted(s.ts for s in sent)


def test_the_clock_follows_orders_then_the_wall_at_the_sim_rate() -> None:
    wall = [100.0]
    clock = EventClock(sim_rate=8, wall=lambda: wall[0])
    assert clock.now() == 0
    clock.observe(T0)
    wall[0] += 10
    assert clock.now() == T0 + 80_000
    clock.observe(T0 + 1000)  # behind the clock: no step back
    assert clock.now() == T0 + 80_000


@pytest.mark.kafka
def test_the_loop_answers_an_order_from_the_topic(settings: Settings) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    ensure_topics(settings)
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap, acks="all")
    producer.send(settings.topic("actions"), key=b"TO-1", value=encoder.encode(order(1)))
    producer.close()
    house = Warehouse(WarehouseConfig(reject_share=0.0, late_share=0.0))
    deadline = time.monotonic() + 30
    verdicts: list[tuple[bool, str]] = []

    def stop() -> bool:
        verdicts.append(check(settings, "warehouse"))  # compose's healthcheck, while it runs
        return time.monotonic() > deadline or bool(house.answered and not house.pending)

    run(settings, house.config, sim_rate=1e6, warehouse=house, stop=stop)
    assert verdicts[-1][0] and "orders" in verdicts[-1][1], verdicts[-1]
    assert not check(settings, "warehouse")[0]  # a stopped warehouse is not healthy

    def read(topic: str) -> list[Any]:
        consumer = KafkaConsumer(settings.topic(topic), bootstrap_servers=settings.bootstrap,
                                 auto_offset_reset="earliest", consumer_timeout_ms=1_000)
        try:
            return [json.loads(m.value) for m in consumer]
        finally:
            consumer.close()

    assert house.truth()[0]["outcome"] == "on_time"
    assert [a["status"] for a in read("action-status")] == ["dispatched", "received"]
    # keyed by location: two partitions, so in no order between them
    moves = sorted((m["ts"], m["location_id"], m["kind"], m["qty"]) for m in read("inventory"))
    assert [m[1:] for m in moves] == [("WH-EAST", "transfer_out", 30), ("S1", "transfer_in", 30)]
    assert moves[0][0] < moves[1][0] < order(1).due_at
