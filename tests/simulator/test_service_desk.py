"""Customer-service tickets that follow what went wrong, and the complaint burst incident
found by the rules within its window + 5 s, with nothing where nothing was injected."""

from __future__ import annotations

from collections import Counter
from typing import Any

from ctower.rules.backtest import run_backtest
from ctower.rules.config import Rules
from ctower.schemas.events import Logistics, Service
from ctower.simulator.generator import SimConfig, Simulator
from ctower.simulator.items import wire_value
from ctower.simulator.jsonl import read_jsonl

SLACK_MS = 5_000


def test_tickets_follow_late_parcels_and_lost_sales_and_close_after_opening(incident_run: Any):
    tickets: dict[str, dict[str, Service]] = {}
    late_orders: set[str] = set()
    for item in read_jsonl(incident_run.out):
        ev = item.event
        if isinstance(ev, Service):
            assert item.key == (ev.sku or ev.ticket_id)  # keyed by SKU, else by ticket
            tickets.setdefault(ev.ticket_id, {})[ev.state] = ev
        elif isinstance(ev, Logistics) and (
                ev.status == "failed" or (ev.status == "delivered" and ev.ts > ev.eta)):  # type: ignore[operator]
            late_orders.add(ev.order_id)
    opened = [t["opened"] for t in tickets.values() if "opened" in t]
    topics = Counter((t.kind, t.topic) for t in opened)
    assert topics[("complaint", "late_delivery")] >= 5
    assert topics[("complaint", "out_of_stock")] + topics[("inquiry", "out_of_stock")] >= 1
    assert topics[("inquiry", "other")] + topics[("inquiry", "refund")] >= 1  # background
    # a late-delivery complaint names an order whose parcel was late or failed
    late = [t for t in opened if t.topic == "late_delivery"]
    assert all(t.order_id in late_orders for t in late)
    for states in tickets.values():
        if "opened" in states and "closed" in states:
            assert states["closed"].ts > states["opened"].ts  # type: ignore[operator]


def test_the_service_desk_leaves_the_other_streams_as_they_were() -> None:
    """Own RNG and ticket numbers: the first non-service events of a seed do not move."""
    config = SimConfig(seed=5, events=3_000, sim_rate=5, start_ms=1_790_000_000_000)
    items = [i for i in Simulator(config).items() if i.stream != "service"][:2_000]
    again = [i for i in Simulator(config).items() if i.stream != "service"][:2_000]
    assert [wire_value(i) for i in items] == [wire_value(i) for i in again]
    assert not any(b"TK-" in wire_value(i) for i in items)


def test_a_complaint_burst_is_found_within_its_window_and_nothing_else_bursts(
    incident_run: Any,
) -> None:
    (incident,) = [i for i in incident_run.truth["incidents"] if i["kind"] == "complaint_burst"]
    detectable = incident["expect"]["detectable_ts"]
    assert detectable and incident["expect"]["complaints"] >= 5
    result = run_backtest(incident_run.out, Rules(), None, None, tick_ms=600_000)
    bursts = [a for a in result.live.opened() if a.kind == "complaint_burst"]
    assert [a.sku for a in bursts] == [incident["scope"]["sku"]]  # nothing uninjected
    alert = bursts[0]
    assert detectable <= alert.opened_at <= detectable + SLACK_MS
    # within the incident's window of an hour from its first complaint
    assert alert.opened_at - incident["start_ts"] <= 60 * 60_000 + SLACK_MS
    assert alert.evidence["top_topics"][0][0] == incident["expect"]["top_topic"]
    assert alert.evidence["stores"] >= 2
    assert incident["scope"]["sku"] in alert.message
