"""Shadow rules in a real worker: a candidate beside the rules in force, never delivered.

One worker with CTOWER_SHADOW_RULES_FILE (a p90 wait threshold of 5 minutes
instead of 10), the alert service with a robot for every alert, and the sink.
Two stores: S1's counter is slow (6-minute waits: only the candidate calls
it congested), S2 is over capacity (both do). The robot gets S2's live alert
and nothing of the shadow; the shadow tables get both shadow alerts and the
candidate's throttle. Five complaints about one SKU on ct.service go through
the same worker: the live complaint burst names the SKU and its top topic, and
the sink stores the tickets.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from kafka import KafkaProducer

from ctower.rules.config import DEFAULTS_FILE
from ctower.schemas.events import Pickup, Service
from ctower.schemas.master_data import CampaignInfo, MasterData, RegionInfo, StoreInfo
from ctower.settings import Settings
from ctower.store import open_store
from ctower.topics import ensure_topics

pytestmark = pytest.mark.kafka

MINUTE = 60_000
MASTER = MasterData(
    regions=[RegionInfo(region_id="EAST", warehouse_id="WH-EAST")],
    stores=[StoreInfo(store_id=s, region_id="EAST", pickup_capacity=10) for s in ("S1", "S2")],
    campaigns=[CampaignInfo(campaign_id="PICK", kind="store_pickup", skus=["K1"])],
)


def pickups(t0: int) -> list[Pickup]:
    events = []
    for i in range(60):  # S1: one customer a minute, 6-minute waits for half an hour
        arrived = t0 + i * MINUTE
        wait = 6 * MINUTE if i < 30 else MINUTE
        events.append(Pickup(ts=arrived, order_id=f"a{i}", store_id="S1", state="arrived"))
        events.append(Pickup(ts=arrived + wait, order_id=f"a{i}", store_id="S1",
                             state="picked_up"))
    for i in range(12):  # S2: 12 waiting at a counter for 10
        events.append(Pickup(ts=t0 + 5 * MINUTE + i * 1000, order_id=f"b{i}", store_id="S2",
                             state="arrived"))
    events.sort(key=lambda e: e.ts)  # type: ignore[arg-type, return-value]
    return events


def complaints(t0: int) -> list[Service]:
    """Five complaints about K9 from three stores in five minutes: a burst for both."""
    return [Service(ts=t0 + (20 + n) * MINUTE, ticket_id=f"tk{n}", channel="mini_program",
                    kind="complaint", topic="quality" if n % 2 == 0 else "wrong_item",
                    state="opened", store_id=f"S{n % 3 + 1}", sku="K9") for n in range(5)]


def test_shadow_alerts_go_to_the_shadow_tables_and_never_reach_the_webhook(
    settings_factory: Callable[..., Settings], ctower_process: Callable[..., Any],
    read_topic: Callable[..., list[dict[str, Any]]],
    webhook_server: Any, poll: Callable[..., Any], tmp_path: Path,
) -> None:
    master = tmp_path / "master.json"
    master.write_bytes(msgspec.json.encode(MASTER))
    candidate = tmp_path / "candidate.toml"
    candidate.write_text(DEFAULTS_FILE.read_text().replace(
        "wait_p90_minutes = 10.0", "wait_p90_minutes = 5.0"))
    routes = tmp_path / "routes.toml"
    routes.write_text('[fallback]\nrobots = ["ops"]\n')
    secrets = tmp_path / "webhooks.toml"
    secrets.write_text(f'ops = "{webhook_server.add_key("k-shadow-ops")}"\n')
    secrets.chmod(0o600)
    settings = settings_factory(
        master_data_file=master, shadow_rules_file=candidate, alert_routes_file=routes,
        webhook_secrets_file=secrets, language="en",
    )
    ensure_topics(settings)
    worker = ctower_process(settings, "worker", "worker")
    deliver = ctower_process(settings, "deliver", "alerts", "deliver")
    sink = ctower_process(settings, "sink", "sink")
    worker.wait_http(f"http://127.0.0.1:{settings.worker_web_port}/stats/")

    start = int(time.time() * 1000) - 2 * 3_600_000
    t0 = start - start % MINUTE
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap, acks="all")
    try:
        for event in pickups(t0):
            producer.send(settings.topic("pickup"), key=event.store_id.encode(),
                          value=msgspec.json.encode(event))
        for ticket in complaints(t0):
            producer.send(settings.topic("service"), key=ticket.partition_key.encode(),
                          value=msgspec.json.encode(ticket))
        producer.flush()
    finally:
        producer.close()

    def shadow_raised() -> list[dict[str, Any]] | None:
        assert worker.alive(), worker.log_tail()
        opened = [a for a in read_topic(settings, "shadow-alerts") if a["status"] == "open"]
        stores = {a.get("store_id") for a in opened if a["kind"] == "pickup_congestion"}
        bursts = [a for a in opened if a["kind"] == "complaint_burst"]
        return opened if stores == {"S1", "S2"} and bursts else None

    try:
        shadow = poll(shadow_raised, 90, "the shadow rules raised no alert for S1 and S2", every=1)
    except AssertionError:
        raise AssertionError(
            f"shadow alerts {read_topic(settings, 'shadow-alerts')}; live alerts "
            f"{read_topic(settings, 'alerts')}; worker log: {worker.log_tail(3000)}") from None
    assert all(a["alert_id"].startswith("shadow-") for a in shadow)
    s1 = next(a for a in shadow if a.get("store_id") == "S1")
    assert s1["opened_at"] == t0 + 10 * MINUTE  # the fifth 6-minute wait, in event time
    assert s1["evidence"]["threshold_min"] == 5.0

    live = [a for a in read_topic(settings, "alerts") if a["status"] == "open"
            and a["kind"] == "pickup_congestion"]
    assert [a["store_id"] for a in live] == ["S2"]
    # the service stream through the real worker: the burst names the SKU and its topics
    (burst,) = [a for a in read_topic(settings, "alerts") if a["kind"] == "complaint_burst"]
    assert burst["sku"] == "K9" and burst["opened_at"] == t0 + 24 * MINUTE
    assert burst["evidence"]["top_topics"][0] == ["quality", 3]

    def delivered() -> list[dict[str, Any]] | None:
        assert deliver.alive(), deliver.log_tail()
        got = webhook_server.delivered("k-shadow-ops")
        return got if any(live[0]["alert_id"] in json.dumps(r["body"]) for r in got) else None

    requests = poll(delivered, 60, "the live alert never reached the robot", every=0.5)

    client = open_store(settings)

    def stored() -> tuple[list[Any], list[Any]] | None:
        assert sink.alive(), sink.log_tail()
        alerts = client.query(
            "SELECT alert_id, ifNull(store_id, sku) AS scope FROM shadow_alerts FINAL "
            "ORDER BY scope").result_rows
        signals = client.query(
            "SELECT campaign_id, store_id, cause, active FROM shadow_coupon_signals").result_rows
        tickets = client.query("SELECT count() FROM service_events FINAL").result_rows[0][0]
        return (alerts, signals) if len(alerts) == 3 and signals and tickets == 5 else None

    try:
        alerts, signals = poll(stored, 60, "the sink did not write the shadow tables", every=1)
    except AssertionError:
        raise AssertionError(
            f"shadow signals {read_topic(settings, 'shadow-signals')}; "
            f"sink log: {sink.log_tail(3000)}") from None
    assert [row[1] for row in alerts] == ["K9", "S1", "S2"]
    assert ("PICK", "S2", "pickup_pressure", True) in signals
    live_rows = client.query("SELECT alert_id FROM alerts FINAL").result_rows
    assert all(not row[0].startswith("shadow-") for row in live_rows)

    # by now the shadow alerts, raised with the live one, would have been delivered
    # too if anything delivered them
    requests = webhook_server.delivered()
    text = json.dumps([r["body"] for r in requests], ensure_ascii=False)
    assert "shadow-" not in text
    assert not any(a["alert_id"] in text for a in shadow)
    assert all(a.get("store_id") != "S1" for a in read_topic(settings, "alerts"))
