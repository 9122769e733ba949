"""ctower.producer: events keyed, partitioned and batched as the worker expects."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from kafka import KafkaConsumer

from ctower.producer import EventProducer
from ctower.schemas.events import Coupon, Scan
from ctower.settings import Settings
from ctower.topics import partition_for

pytestmark = pytest.mark.kafka


def read(settings: Settings, stream: str, expected: int) -> list[Any]:
    consumer = KafkaConsumer(
        settings.topic(stream), bootstrap_servers=settings.bootstrap,
        auto_offset_reset="earliest", consumer_timeout_ms=3000,
    )
    records = [r for r in consumer]
    consumer.close()
    return records


def test_events_go_in_per_partition_envelopes_in_order(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory()
    now = int(time.time() * 1000)
    scans = [
        Scan(ts=now + i, scan_id=f"sc{i}", store_id=f"S{i % 7}", sku="K1", action="view")
        for i in range(450)
    ]
    coupons = [
        Coupon(ts=now, coupon_id=f"c{i}", campaign_id="CMP1", store_id="S1", member_id="m",
               action="issued")
        for i in range(30)
    ]
    with EventProducer(settings, batch=100) as producer:
        for scan in scans:
            producer.send(scan)
        for coupon in coupons:
            producer.send(coupon)
    assert producer.errors == 0
    parts = settings.topic_partitions
    records = read(settings, "scan", 450)
    got: dict[int, list[str]] = {}
    for record in records:
        batch = msgspec.json.decode(record.value, type=list[Scan])
        assert 1 <= len(batch) <= 100  # an envelope, never over the batch size
        for scan in batch:
            assert partition_for(scan.store_id.encode(), parts) == record.partition
            got.setdefault(record.partition, []).append(scan.scan_id)
    want: dict[int, list[str]] = {}
    for scan in scans:
        want.setdefault(partition_for(scan.store_id.encode(), parts), []).append(scan.scan_id)
    assert got == want  # every event once, in the order sent, per partition
    assert len(records) < 450 / 10  # batched, not one message each
    coupon_records = read(settings, "coupon", 30)
    assert {r.partition for r in coupon_records} == {partition_for(b"CMP1", parts)}


def test_batch_of_one_sends_keyed_single_events(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory()
    now = int(time.time() * 1000)
    with EventProducer(settings, batch=1) as producer:
        for i in range(20):
            producer.send(Scan(ts=now, scan_id=f"s{i}", store_id=f"S{i}", sku="K", action="view"))
    records = read(settings, "scan", 20)
    assert len(records) == 20
    for record in records:
        scan = msgspec.json.decode(record.value, type=Scan)
        assert record.key == scan.store_id.encode()
        assert record.partition == partition_for(record.key, settings.topic_partitions)
