"""Complaint bursts per SKU and the complaint SLA."""

from __future__ import annotations

from typing import Any

from ctower.rules.config import Rules
from ctower.rules.service import ServiceItem, ServiceRulesFamily
from ctower.schemas.events import Service

T0 = 1_790_000_000_000
MIN = 60_000
HOUR = 60 * MIN


def make(harness: Any, rules: Rules | None = None) -> ServiceRulesFamily:
    return ServiceRulesFamily(harness.state("service", ServiceItem), harness.book("service"),
                              lambda: rules or Rules(), None)


class Feed:
    def __init__(self, family: ServiceRulesFamily, harness: Any) -> None:
        self.family = family
        self.harness = harness
        self.offset = 0

    def send(self, ts: int, ticket: str, state: str = "opened", *, kind: str = "complaint",
             sku: str | None = "K1", topic: str = "quality", store: str = "S1") -> None:
        self.offset += 1
        self.harness.wall = ts / 1000
        event = Service(ts=ts, ticket_id=ticket, channel="mini_program", kind=kind,  # type: ignore[arg-type]
                        topic=topic, state=state, store_id=store, sku=sku)  # type: ignore[arg-type]
        self.family.apply(0, "service:0", self.offset, [event])
        self.family.evaluate_touched()

    def tick(self, ts: int) -> None:
        self.offset += 1  # an inquiry moves the clock: time passes on the partition
        self.send(ts, f"tick{self.offset}", kind="inquiry", sku=None)
        self.family.tick()


def test_a_burst_about_one_sku_names_it_and_its_top_topics_then_clears(harness: Any) -> None:
    feed = Feed(make(harness), harness)
    # background: complaints about other SKUs, and inquiries about K1, never alert
    for n in range(12):
        feed.send(T0 + n * MIN, f"other{n}", sku=f"X{n % 6}")
        feed.send(T0 + n * MIN + 1, f"ask{n}", kind="inquiry")
    assert harness.alerts == []
    topics = ["quality", "quality", "wrong_item", "quality", "refund"]
    for n, topic in enumerate(topics):
        feed.send(T0 + 20 * MIN + n * 5 * MIN, f"k{n}", topic=topic, store=f"S{n % 3}")
    (alert,) = harness.alerts
    assert (alert.kind, alert.sku, alert.status) == ("complaint_burst", "K1", "open")
    assert alert.opened_at == T0 + 40 * MIN  # the fifth complaint
    assert alert.evidence["complaints"] == 5
    assert alert.evidence["top_topics"][0] == ["quality", 3]
    assert alert.evidence["stores"] == 3
    assert "K1" in alert.message and "quality (3)" in alert.message
    # an hour after the fourth complaint only the fifth is left: under 2, resolved
    feed.tick(T0 + 95 * MIN)
    assert [a.status for a in harness.alerts] == ["open", "resolved"]


def test_a_complaint_warns_before_its_sla_runs_out_and_resolves_when_answered(
    harness: Any,
) -> None:
    feed = Feed(make(harness), harness)
    feed.send(T0, "late1", sku=None, topic="late_delivery")
    feed.send(T0 + MIN, "fast", sku=None, topic="late_delivery")
    feed.send(T0 + 2 * MIN, "fast", "closed", sku=None, topic="late_delivery")
    feed.tick(T0 + 21 * HOUR)
    assert harness.alerts == []
    feed.tick(T0 + 22 * HOUR)  # 24 h SLA, warned 2 h before
    (alert,) = harness.alerts
    assert (alert.kind, alert.store_id, alert.key) == ("complaint_sla", "S1",
                                                      "complaint_sla:late1")
    assert alert.opened_at == T0 + 22 * HOUR
    assert alert.evidence["deadline"] == T0 + 24 * HOUR
    assert alert.evidence["hours_left"] == 2.0
    feed.tick(T0 + 23 * HOUR)
    assert len(harness.alerts) == 1  # one alert, however often it is looked at
    feed.send(T0 + 23 * HOUR + MIN, "late1", "closed", sku=None, topic="late_delivery")
    assert [a.status for a in harness.alerts] == ["open", "resolved"]
    assert harness.alerts[1].resolved_at == T0 + 23 * HOUR + MIN


def test_a_shorter_sla_from_the_rules_warns_earlier(harness: Any) -> None:
    rules = Rules.model_validate({"service": {"sla_hours": 4, "sla_warn_hours": 1}})
    feed = Feed(make(harness, rules), harness)
    feed.send(T0, "t1", sku=None)
    feed.tick(T0 + 2 * HOUR)
    assert harness.alerts == []
    feed.tick(T0 + 3 * HOUR)
    assert [a.kind for a in harness.alerts] == ["complaint_sla"]


def test_a_warning_falls_due_at_its_second_without_waiting_for_a_tick(harness: Any) -> None:
    """A replay moves event time by minutes between two ticks: the warning is judged
    with the events that carry the clock past it, not at the next pass over every key."""
    family = make(harness)
    feed = Feed(family, harness)
    feed.send(T0, "slow", sku=None, topic="refund")
    feed.send(T0 + 22 * HOUR - 1, "ask1", kind="inquiry", sku=None)
    assert harness.alerts == []
    feed.send(T0 + 22 * HOUR + 500, "ask2", kind="inquiry", sku=None)  # no tick in between
    (alert,) = harness.alerts
    assert (alert.key, alert.opened_at) == ("complaint_sla:slow", T0 + 22 * HOUR + 500)
    assert family._sla_due == {}  # what fell due is taken off the schedule
