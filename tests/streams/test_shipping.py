"""Paid but not shipped, through a real worker on the project's broker: orders on
``ct.order`` and parcels on ``ct.logistics`` meet on the internal ``shipping`` topic. The
one paid warehouse order without a shipment becomes a task (with its member) and an
alert at the end of its window, both closed when its shipment comes; a failed parcel's
task carries its order's member; shipped, store-pickup and in-store orders raise
nothing."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import msgspec
import pytest
from kafka import KafkaProducer

from ctower.schemas.events import Event, Logistics, Order, OrderLine
from ctower.settings import Settings
from ctower.topics import ensure_topics

pytestmark = pytest.mark.kafka

MIN = 60_000


def order(ts: int, order_id: str, fulfillment: str, status: str = "paid") -> Order:
    return Order(ts=ts, order_id=order_id, member_id=f"M-{order_id}", store_id="S1",
                 channel="mini_program", fulfillment=fulfillment,  # type: ignore[arg-type]
                 lines=[OrderLine(sku="K1", qty=1, unit_price=10.0)], amount=10.0,
                 status=status)  # type: ignore[arg-type]


def parcel(ts: int, order_id: str, status: str, district: str | None = None) -> Logistics:
    return Logistics(ts=ts, shipment_id=f"SH-{order_id}", order_id=order_id,
                     origin_type="central_warehouse", origin_id="WH-EAST", carrier="SF",
                     region="EAST", status=status, district=district)  # type: ignore[arg-type]


def story(t0: int) -> list[Event]:
    events: list[Event] = [
        order(t0, "A", "warehouse_direct"),  # never shipped until t0 + 60 min
        order(t0, "B", "guide_delivery"), parcel(t0 + 5 * MIN, "B", "created"),
        order(t0, "C", "store_pickup"), order(t0, "I", "in_store"),
        order(t0 + MIN, "D", "warehouse_direct"), parcel(t0 + 3 * MIN, "D", "created", "Pudong"),
        parcel(t0 + 40 * MIN, "D", "failed", "Pudong"),
        parcel(t0 + 60 * MIN, "A", "created"),
    ]
    for i in range(16):  # time passes on both streams: orders shipped within minutes
        events.append(order(t0 + i * 5 * MIN, f"F{i}", "guide_delivery"))
        events.append(parcel(t0 + i * 5 * MIN + 2 * MIN, f"F{i}", "created"))
    events.sort(key=lambda e: e.ts)  # type: ignore[arg-type, return-value]
    return events


def send(settings: Settings, events: list[Event]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap, acks="all")
    try:
        for event in events:
            producer.send(settings.topic(event.stream), key=event.partition_key.encode(),
                          value=msgspec.json.encode(event))
        producer.flush()
    finally:
        producer.close()


def test_a_paid_order_never_shipped_is_a_task_and_an_alert_until_its_shipment_comes(
    settings_factory: Callable[..., Settings], ctower_process: Callable[..., Any],
    read_topic: Callable[..., list[dict[str, Any]]],
    poll: Callable[..., Any],
) -> None:
    settings = settings_factory(topic_partitions=1, language="en")
    ensure_topics(settings)
    worker = ctower_process(settings, "worker", "worker")
    worker.wait_http(f"http://127.0.0.1:{settings.worker_web_port}/stats/")
    start = int(time.time() * 1000) - 3 * 3_600_000
    t0 = start - start % MIN
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap, acks="all")
    try:
        # garbage on the internal topic (only a bug writes there): dead-lettered, never fatal
        producer.send(settings.topic("shipping"), key=b"x", value=b"\xc1 not msgpack")
        for event in story(t0):
            producer.send(settings.topic(event.stream), key=event.partition_key.encode(),
                          value=msgspec.json.encode(event))
        producer.flush()
    finally:
        producer.close()

    def tasks_done() -> list[dict[str, Any]] | None:
        assert worker.alive(), worker.log_tail()
        tasks = read_topic(settings, "tasks")
        closed = [t for t in tasks if t["kind"] == "not_shipped" and t["status"] == "closed"]
        failed = [t for t in tasks if t["kind"] == "failed"]
        return tasks if closed and failed else None

    try:
        tasks = poll(tasks_done, 90, "no closed not-shipped task and failed task", every=1)
    except AssertionError:
        raise AssertionError(f"tasks {read_topic(settings, 'tasks')}; worker log: "
                             f"{worker.log_tail(3000)}") from None
    not_shipped = [t for t in tasks if t["kind"] == "not_shipped"]
    assert [(t["order_id"], t["status"]) for t in not_shipped] == [
        ("A", "open"), ("A", "closed")]
    opened, closed = not_shipped
    assert (opened["member_id"], opened["opened_at"], opened["shipment_id"]) == (
        "M-A", t0 + 30 * MIN, "")
    assert (closed["closed_by"], closed["closed_at"]) == ("recovered", t0 + 60 * MIN)
    # the failed parcel's task: opened before or after the member's hint reached the lane
    # (a replay at full speed races the two hops), its latest version carries the member
    failed = [t for t in tasks if t["kind"] == "failed"]
    assert {t["task_id"] for t in failed} == {failed[-1]["task_id"]}
    assert (failed[-1]["order_id"], failed[-1]["member_id"], failed[-1]["district"]) == (
        "D", "M-D", "Pudong")
    assert all(later["ts"] > earlier["ts"] for earlier, later in pairwise(failed))
    alerts = [a for a in read_topic(settings, "alerts") if a["kind"] == "order_not_shipped"]
    assert [(a["key"], a["status"], a["opened_at"]) for a in alerts] == [
        ("order_not_shipped:A", "open", t0 + 30 * MIN),
        ("order_not_shipped:A", "resolved", t0 + 30 * MIN)]
    assert alerts[1]["resolved_at"] == t0 + 60 * MIN and "A" in alerts[0]["message"]
    with urllib.request.urlopen(
            f"http://127.0.0.1:{settings.worker_web_port}/stats/", timeout=5) as answer:
        stats = json.loads(answer.read())
    shipping = stats["decisions"]["not_shipped"]
    assert (shipping["opened"], shipping["shipped"]) == (1, 19)  # A, B, D and the 16 F
    assert stats["decisions"]["shipping"]["bad_messages"] == 1
    letters = [d for d in read_topic(settings, "dead-letter")
               if d.get("source_topic") == settings.topic("shipping")]
    assert len(letters) == 1, letters


def test_a_worker_killed_after_the_task_opened_neither_loses_nor_doubles_it(
    settings_factory: Callable[..., Settings], ctower_process: Callable[..., Any],
    read_topic: Callable[..., list[dict[str, Any]]],
    poll: Callable[..., Any],
) -> None:
    """SIGKILL right after the task opened (its state not yet in the changelog), then a
    new worker: what it replays is recognised, the order is still awaited, and its task
    and alert keep their ids (a re-sent record is the same record) and close once."""
    settings = settings_factory(topic_partitions=1, language="en")
    ensure_topics(settings)
    stats_url = f"http://127.0.0.1:{settings.worker_web_port}/stats/"
    worker = ctower_process(settings, "worker", "worker")
    worker.wait_http(stats_url)
    start = int(time.time() * 1000) - 3 * 3_600_000
    t0 = start - start % MIN
    events = story(t0)
    send(settings, [e for e in events if e.ts <= t0 + 35 * MIN])  # type: ignore[operator]

    def opened() -> bool:
        assert worker.alive(), worker.log_tail()
        return any(t["kind"] == "not_shipped" for t in read_topic(settings, "tasks"))

    poll(opened, 90, "the not-shipped task never opened", every=0.2)
    worker.kill()
    restarted = ctower_process(settings, "worker-restarted", "worker")
    restarted.wait_http(stats_url)
    send(settings, [e for e in events if e.ts > t0 + 35 * MIN])  # type: ignore[operator]

    def closed() -> list[dict[str, Any]] | None:
        assert restarted.alive(), restarted.log_tail()
        tasks = [t for t in read_topic(settings, "tasks") if t["kind"] == "not_shipped"]
        return tasks if any(t["status"] == "closed" for t in tasks) else None

    try:
        tasks = poll(closed, 180, "the not-shipped task never closed", every=1)
    except AssertionError:
        raise AssertionError(f"tasks {read_topic(settings, 'tasks')}; worker log: "
                             f"{restarted.log_tail(3000)}") from None
    assert {(t["task_id"], t["order_id"], t["opened_at"]) for t in tasks} == {
        (tasks[0]["task_id"], "A", t0 + 30 * MIN)}
    assert [t["closed_at"] for t in tasks if t["status"] == "closed"] == [t0 + 60 * MIN]
    alerts = [a for a in read_topic(settings, "alerts") if a["kind"] == "order_not_shipped"]
    assert {a["alert_id"] for a in alerts} == {alerts[0]["alert_id"]}
    assert [a["resolved_at"] for a in alerts if a["status"] == "resolved"] == [t0 + 60 * MIN]
