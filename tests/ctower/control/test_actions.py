"""Action orders in the store and a person's answer on the wire: the sink keeps each
order's furthest state, ``ctower actions list`` reads the open ones, an answer goes
to the partition of the order's SKU."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from clickhouse_connect.driver.client import Client
from kafka import KafkaConsumer

from ctower.control.actions import orders, publish_status
from ctower.schemas.actions import ActionOrder, ActionStatus
from ctower.schemas.migrations import apply_migrations
from ctower.settings import Settings
from ctower.sinks.clickhouse.columns import Chunk, control_writers
from ctower.topics import ensure_topics, partition_for

T0 = 1_790_000_000_000
HOUR = 3_600_000


def order(order_id: str, status: str, ts: int, **fields: Any) -> ActionOrder:
    values: dict[str, Any] = {
        "kind": "transfer", "source": "WH-EAST", "destination": "S1", "sku": "K1", "qty": 40,
        "due_at": T0 + 4 * HOUR, "created_at": T0, "region": "EAST", "cause": "restock:S1|K1",
        "evidence": {"on_hand": 3}, "by": "rules",
    }
    values.update(fields)
    return ActionOrder(order_id=order_id, status=status, ts=ts, **values)  # type: ignore[arg-type]


def test_the_store_keeps_each_orders_furthest_state(store: Client) -> None:
    apply_migrations(store)
    writer = control_writers()["actions"].bind(store)
    records = [
        order("TO-1", "proposed", T0), order("TO-1", "approved", T0, by="auto"),
        # the warehouse's answer carries its own clock, behind the rules' event time
        order("TO-1", "dispatched", T0 - 60_000, by="WH-EAST"),
        order("PP-2", "proposed", T0, kind="prepack", region=None),
        order("TO-3", "proposed", T0), order("TO-3", "expired", T0 + 4 * HOUR + 1),
    ]
    writer.insert(store, Chunk(records, np.zeros(len(records), np.int32),
                                np.arange(len(records), dtype=np.int64), "ct.actions"), "arrow")
    found = {o["order_id"]: o for o in orders(store)}
    assert {k: (o["status"], o["by"]) for k, o in found.items()} == {
        "TO-1": ("dispatched", "WH-EAST"), "PP-2": ("proposed", "rules"),
    }
    assert found["PP-2"]["region"] == "" and found["TO-1"]["qty"] == 40
    assert {o["order_id"] for o in orders(store, open_only=False)} == {"TO-1", "PP-2", "TO-3"}


@pytest.mark.kafka
def test_an_answer_goes_to_the_partition_of_the_orders_sku(settings: Settings) -> None:
    ensure_topics(settings)
    answer = ActionStatus(order_id="TO-1", sku="K-042", status="approved", by="wang", ts=T0)
    publish_status(settings, answer)
    consumer = KafkaConsumer(
        settings.topic("action-status"), bootstrap_servers=settings.bootstrap,
        auto_offset_reset="earliest", consumer_timeout_ms=3_000,
    )
    try:
        [message] = list(consumer)
    finally:
        consumer.close()
    assert message.key == b"K-042"
    assert message.partition == partition_for(b"K-042", settings.topic_partitions)
    assert json.loads(message.value) == {"order_id": "TO-1", "sku": "K-042",
                                         "status": "approved", "by": "wang", "ts": T0, "note": ""}
