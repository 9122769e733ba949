"""Guide deliveries through a real worker and sink: orders waiting for a guide and a
guide running late become alerts at the event time the rules see them; the sink
keeps each event's guide and the guide views count the guide's day.

Every event goes to one partition of ct.logistics, so the rules' clock is that
partition's event time, and the times the alerts open at are exact.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from kafka import KafkaConsumer, KafkaProducer

from ctower.schemas.events import Logistics
from ctower.schemas.master_data import GuideInfo, MasterData, RegionInfo, StoreInfo
from ctower.settings import Settings
from ctower.simulator.clock import CHINA_TZ
from ctower.store import open_store
from ctower.topics import ensure_topics

pytestmark = pytest.mark.kafka

MINUTE = 60_000
MASTER = MasterData(
    regions=[RegionInfo(region_id="EAST", warehouse_id="WH-EAST")],
    stores=[StoreInfo(store_id=s, region_id="EAST") for s in ("S1", "S2")],
    guides=[GuideInfo(guide_id="G1", store_id="S1"), GuideInfo(guide_id="G2", store_id="S2")],
)


def morning() -> int:
    """10:00 in Shanghai, at least three hours ago: inside the guides' working hours."""
    now = datetime.now(CHINA_TZ) - timedelta(hours=3)
    ten = now.replace(hour=10, minute=0, second=0, microsecond=0)
    return int((ten if ten <= now else ten - timedelta(days=1)).timestamp() * 1000)


def shipment(t: int, sid: str, status: str, store: str, guide: str | None,
             eta: int) -> Logistics:
    return Logistics(ts=t, shipment_id=sid, order_id=f"O-{sid}", origin_type="guide",
                     origin_id=store, carrier="GUIDE", region="EAST", status=status,  # type: ignore[arg-type]
                     eta=eta, guide_id=guide)


def events(t0: int) -> list[Logistics]:
    out = []
    for n in range(3):  # S1: three orders no guide takes
        out.append(shipment(t0 + n * MINUTE, f"W{n}", "created", "S1", None, t0 + 90 * MINUTE))
    for n in range(4):  # G1: four deliveries due at t0+40 that arrive at t0+60
        eta = t0 + 40 * MINUTE
        out.append(shipment(t0, f"L{n}", "created", "S1", None, eta))
        out.append(shipment(t0 + 5 * MINUTE, f"L{n}", "picked_up", "S1", "G1", eta))
        out.append(shipment(t0 + 60 * MINUTE + n, f"L{n}", "delivered", "S1", "G1", eta))
    for m in range(71):  # S2: G2 on the road, an update a minute: the clock of the feed
        out.append(shipment(t0 + m * MINUTE + 500, "C", "in_transit" if m else "picked_up", "S2",
                            "G2", t0 + 100 * MINUTE))
    out.sort(key=lambda e: e.ts)  # type: ignore[arg-type, return-value]
    return out


def read_alerts(settings: Settings) -> list[dict[str, Any]]:
    consumer = KafkaConsumer(settings.topic("alerts"), bootstrap_servers=settings.bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=1_500)
    try:
        return [json.loads(message.value) for message in consumer]
    finally:
        consumer.close()


def test_a_store_short_of_guides_and_a_late_guide_alert_at_their_event_time(
    settings_factory: Callable[..., Settings], ctower_process: Callable[..., Any],
    poll: Callable[..., Any], tmp_path: Path,
) -> None:
    master = tmp_path / "master.json"
    master.write_bytes(msgspec.json.encode(MASTER))
    settings = settings_factory(master_data_file=master, language="zh")
    ensure_topics(settings)
    worker = ctower_process(settings, "worker", "worker")
    sink = ctower_process(settings, "sink", "sink")
    worker.wait_http(f"http://127.0.0.1:{settings.worker_web_port}/stats/")
    t0 = morning()
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap, acks="all")
    try:
        for event in events(t0):
            producer.send(settings.topic("logistics"), key=event.shipment_id.encode(),
                          value=msgspec.json.encode(event), partition=0)
        producer.flush()
    finally:
        producer.close()

    def raised() -> dict[str, dict[str, Any]] | None:
        assert worker.alive(), worker.log_tail()
        found = {a["kind"]: a for a in read_alerts(settings) if a["status"] == "open"
                 and a["kind"] in ("guide_capacity", "guide_late")}
        return found if len(found) == 2 else None

    try:
        alerts = poll(raised, 90, "the worker raised no guide alerts", every=1)
    except AssertionError:
        raise AssertionError(f"alerts {read_alerts(settings)}; worker log: "
                             f"{worker.log_tail(3000)}") from None
    capacity, late = alerts["guide_capacity"], alerts["guide_late"]
    # the third order has waited over 20 minutes at the first update after t0+22 min
    assert (capacity["store_id"], capacity["opened_at"]) == ("S1", t0 + 22 * MINUTE + 500)
    assert capacity["evidence"]["waiting"] == 3 and capacity["region"] == "EAST"
    assert "导购运力不足" in capacity["message"] and "S1" in capacity["message"]
    # G1's four deliveries run 15 minutes past their ETA at t0+55 min, still out
    assert (late["key"], late["opened_at"]) == ("guide_late:G1", t0 + 55 * MINUTE + 500)
    assert late["evidence"]["still_out"] == 4 and "G1" in late["message"]
    assert not [a for a in read_alerts(settings) if a.get("store_id") == "S2"]

    client = open_store(settings)

    def stored() -> list[Any] | None:
        assert sink.alive(), sink.log_tail()
        rows = client.query("SELECT guide_id, delivered, on_time, late FROM guide_day_v "
                            "ORDER BY guide_id").result_rows
        return rows if rows else None

    rows = poll(stored, 60, "the sink did not store the guide deliveries", every=1)
    assert [tuple(r) for r in rows] == [("G1", 4, 0, 4)]
    waiting = client.query("SELECT count() FROM guide_deliveries_v "
                           "WHERE store_id = 'S1' AND picked_up_at IS NULL").result_rows
    assert waiting == [(3,)]
