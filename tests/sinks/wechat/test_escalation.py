"""Escalation: an open alert nobody acknowledged goes to the route's
``escalate_to`` route as well; an operator's acknowledgement or resolution,
or the alert's own resolution, stops it. The dispatch runs against the fake
webhook with the real SQLite outbox (test_service.py covers Kafka)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ctower.schemas.control import Alert, AlertAck
from ctower.settings import SettingsError
from ctower.sinks.wechat.escalation import CANCELLED, SENT, WAITING
from ctower.sinks.wechat.routes import parse_routes

from .test_delivery import all_done, delivery_settings, records, run_until, service_for

ROUTES = """
[[routes]]
name = "stock"
kinds = ["stock_out"]
escalate_to = "oncall"

[[routes]]
name = "oncall"
robots = ["duty"]
escalations_only = true

[fallback]
robots = ["ops"]
"""


def contents(webhook: Any, key: str) -> list[str]:
    return [r["body"][r["body"]["msgtype"]]["content"] for r in webhook.delivered(key)]


@pytest.fixture
def escalating(tmp_path: Path, webhook_server: Any, write_routes: Callable[[str], Path],
               write_secrets: Callable[[dict[str, str]], Path]) -> Callable[..., Any]:
    def make(after: float = 0.3) -> Any:
        urls = {"stock": webhook_server.add_key("k-stock-0001"),
                "duty": webhook_server.add_key("k-duty-0002"),
                "ops": webhook_server.add_key("k-ops-0003")}
        settings = delivery_settings(tmp_path, write_routes(ROUTES), write_secrets(urls),
                                     alert_escalate_after_seconds=after)
        return service_for(settings, urls)

    return make


def ack(alert: Alert, action: str = "ack") -> AlertAck:
    return AlertAck(alert_id=alert.alert_id, acked_by="li", ts=int(time.time() * 1000),
                    action=action)  # type: ignore[arg-type]


def run_escalating(service: Any, done: Callable[[], bool], timeout: float = 20) -> None:
    """The dispatch and the escalation loop, until ``done``."""

    async def go() -> None:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(service.serve(stop)),
                 asyncio.create_task(service.escalate(stop))]
        deadline = time.monotonic() + timeout
        try:
            while not done():
                assert time.monotonic() < deadline, f"not done: {service.outbox.counts()}"
                for task in tasks:
                    assert not task.done(), task.result()
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.gather(*tasks)

    asyncio.run(go())


def test_an_unacknowledged_alert_goes_to_the_escalation_route_once(
    escalating: Callable[..., Any], webhook_server: Any, make_alert: Callable[..., Alert],
) -> None:
    service = escalating(after=1.0)
    alert = make_alert()
    service.accept([alert])
    assert service.escalate_due() == 0  # not due yet
    sent_first: list[int] = []

    def escalated() -> bool:
        if not sent_first and webhook_server.delivered("k-stock-0001"):
            sent_first.append(len(webhook_server.delivered("k-duty-0002")))
        return bool(webhook_server.delivered("k-duty-0002")) and all_done(service)()

    run_escalating(service, escalated)
    assert sent_first == [0]  # the route's robot first; the escalation a second later
    [escalated_text] = contents(webhook_server, "k-duty-0002")
    assert "无人确认" in escalated_text and alert.message in escalated_text
    assert service.escalations.counts() == {SENT: 1}
    assert {(r.alert_id, r.route, r.result) for r in records(service.outbox)
            if r.route == "oncall"} == {(alert.alert_id, "oncall", "delivered")}
    assert service.stats.escalated == 1
    # a replay of ct.alerts books nothing again, and nothing is sent twice
    service.accept([alert])
    time.sleep(1.05)
    assert service.escalate_due() == 0
    assert len(webhook_server.delivered("k-duty-0002")) == 1


@pytest.mark.parametrize("action", ["ack", "resolve"])
def test_an_operator_s_acknowledgement_or_resolution_stops_it(
    escalating: Callable[..., Any], webhook_server: Any, make_alert: Callable[..., Alert],
    action: str,
) -> None:
    service = escalating(after=0.2)
    alert = make_alert()
    service.accept([alert])
    assert service.escalations.acknowledged([ack(alert, action)]) == 1
    time.sleep(0.25)
    assert service.escalate_due() == 0
    assert service.escalations.counts() == {CANCELLED: 1}
    run_until(service, all_done(service))
    assert webhook_server.delivered("k-duty-0002") == []


def test_assigning_an_owner_does_not_stop_it(
    escalating: Callable[..., Any], make_alert: Callable[..., Alert],
) -> None:
    service = escalating(after=0.2)
    alert = make_alert()
    service.accept([alert])
    assert service.escalations.acknowledged([ack(alert, "assign")]) == 0
    time.sleep(0.25)
    assert service.escalate_due() == 1


def test_an_acknowledgement_before_its_alert_and_a_resolution_stop_it_too(
    escalating: Callable[..., Any], make_alert: Callable[..., Alert],
) -> None:
    service = escalating(after=0.2)
    early, resolved = make_alert(), make_alert()
    service.escalations.acknowledged([ack(early)])  # the ack came first
    service.accept([early, resolved])
    assert service.escalations.counts() == {WAITING: 1}
    service.accept([msgspec.structs.replace(resolved, status="resolved",
                                            resolved_at=resolved.opened_at + 1)])
    time.sleep(0.25)
    assert service.escalate_due() == 0
    assert service.escalations.counts() == {CANCELLED: 1}


def test_a_delay_of_0_turns_escalation_off(
    escalating: Callable[..., Any], make_alert: Callable[..., Alert],
) -> None:
    service = escalating(after=0)
    service.accept([make_alert()])
    assert service.escalations.counts() == {}


def test_escalate_to_must_name_another_route() -> None:
    base = {"routes": [{"name": "stock", "escalate_to": "nowhere"}], "fallback": {"robots": ["o"]}}
    with pytest.raises(SettingsError, match="escalate_to must name another route"):
        parse_routes(base)
    base["routes"][0]["escalate_to"] = "stock"
    with pytest.raises(SettingsError, match="escalate_to"):
        parse_routes(base)
    base["routes"][0]["escalate_to"] = "fallback"
    assert parse_routes(base).get("stock").escalate_to == "fallback"


def test_the_example_in_the_routes_module_parses() -> None:
    import tomllib

    from ctower.sinks.wechat import routes

    example = routes.__doc__.split("::", 1)[1]
    table = parse_routes(tomllib.loads("\n".join(line[4:] for line in example.splitlines())))
    assert table.get("stock-east").escalate_to == "oncall"
    assert table.get("oncall").escalations_only
