"""The delivery service's dispatch against the fake webhook, with its real
SQLite outbox (Kafka is not needed for this part; test_service.py runs the
whole process): retries, budgets that count failures, 45009, a broken route
handing over to the fallback, quiet hours, crash recovery, deduplication."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from ctower.schemas.control import Alert, AlertDelivery
from ctower.settings import Settings, load_settings
from ctower.sinks.wechat.command import _test, route_lines
from ctower.sinks.wechat.delivery import DeliveryService, outbox_path
from ctower.sinks.wechat.outbox import DELIVERED, PENDING, REROUTED, Outbox
from ctower.sinks.wechat.routes import load_routes

ROUTES = """
[[routes]]
name = "stock"
kinds = ["stock_out"]

[fallback]
robots = ["ops"]
"""

decode_record = msgspec.json.Decoder(AlertDelivery).decode


def delivery_settings(tmp_path: Path, routes: Path, secrets: Path, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "alert_routes_file": routes,
        "webhook_secrets_file": secrets,
        "alert_retry_base_seconds": 0.05,
        "alert_retry_max_seconds": 0.2,
        "alert_send_timeout_seconds": 2.0,
        "dashboard_url": "http://dash.test",
    }
    values.update(extra)
    return load_settings(**values)


def service_for(settings: Settings, urls: dict[str, str]) -> DeliveryService:
    assert settings.alert_routes_file is not None
    service = DeliveryService(settings, load_routes(settings.alert_routes_file), urls,
                              rng=random.Random(1))
    service.prepare()
    return service


def run_until(service: DeliveryService, done: Callable[[], bool], timeout: float = 20) -> None:
    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(service.serve(stop))
        deadline = time.monotonic() + timeout
        try:
            while not done():
                assert time.monotonic() < deadline, f"not done: {service.outbox.counts()}"
                assert not task.done(), task.result()
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await task

    asyncio.run(go())


def records(outbox: Outbox) -> list[AlertDelivery]:
    return [decode_record(raw) for _, raw in outbox.unpublished(100_000)]


def all_done(service: DeliveryService) -> Callable[[], bool]:
    return lambda: set(service.outbox.counts()) <= {DELIVERED, REROUTED}


def test_retries_until_errcode_0_and_records_every_attempt(
    tmp_path: Path, webhook_server: Any, make_alert: Callable[..., Alert],
    write_routes: Callable[[str], Path], write_secrets: Callable[[dict[str, str]], Path],
) -> None:
    urls = {"stock": webhook_server.add_key("k-stock-0001"),
            "ops": webhook_server.add_key("k-ops-0002")}
    settings = delivery_settings(tmp_path, write_routes(ROUTES), write_secrets(urls))
    webhook_server.fail("k-stock-0001", (200, -1), (500, None))
    service = service_for(settings, urls)
    alert = make_alert()
    assert service.accept([alert]) == 1
    run_until(service, all_done(service))
    answers = webhook_server.answers("k-stock-0001")
    assert answers == [-1, None, 0]
    got = [(r.attempt, r.result, r.errcode, r.http_status) for r in records(service.outbox)]
    assert got == [(1, "retry", -1, 200), (2, "retry", None, 500), (3, "delivered", 0, 200)]
    assert {r.alert_id for r in records(service.outbox)} == {alert.alert_id}
    assert all(r.robot == "stock (key ***0001)" for r in records(service.outbox))
    # the same alert read again (a Kafka replay) is the same item: not sent twice
    assert service.accept([alert]) == 0
    assert webhook_server.answers("k-ops-0002") == []


def test_failed_sends_count_against_the_budget(
    tmp_path: Path, webhook_server: Any, make_alert: Callable[..., Alert],
    write_routes: Callable[[str], Path], write_secrets: Callable[[dict[str, str]], Path],
) -> None:
    webhook_server.per_window, webhook_server.window = 5, 1.5
    urls = {"stock": webhook_server.add_key("k-stock-0003"),
            "ops": webhook_server.add_key("k-ops-0004")}
    settings = delivery_settings(
        tmp_path, write_routes(ROUTES), write_secrets(urls),
        alert_rate_per_minute=5, alert_rate_window_seconds=1.5,
    )
    webhook_server.fail("k-stock-0003", *[(200, -1)] * 4)
    service = service_for(settings, urls)
    alerts = [make_alert() for _ in range(4)]
    service.accept(alerts)
    run_until(service, all_done(service))
    answers = webhook_server.answers("k-stock-0003")
    assert 45009 not in answers  # 4 failures + deliveries, never over 5 per window
    assert answers[:4] == [-1] * 4
    assert webhook_server.max_in_window("k-stock-0003") <= 5
    delivered_ids = {r.alert_id for r in records(service.outbox)
                     if r.result in ("delivered", "digest")}
    assert delivered_ids == {a.alert_id for a in alerts}


def test_45009_waits_for_the_next_window(
    tmp_path: Path, webhook_server: Any, make_alert: Callable[..., Alert],
    write_routes: Callable[[str], Path], write_secrets: Callable[[dict[str, str]], Path],
) -> None:
    # someone else shares the robot: the server allows 2 per window, we think 10
    webhook_server.per_window, webhook_server.window = 2, 1.0
    urls = {"stock": webhook_server.add_key("k-stock-0005"),
            "ops": webhook_server.add_key("k-ops-0006")}
    settings = delivery_settings(
        tmp_path, write_routes(ROUTES), write_secrets(urls),
        alert_rate_per_minute=10, alert_rate_window_seconds=1.0,
    )
    service = service_for(settings, urls)
    alerts = [make_alert() for _ in range(3)]
    for alert in alerts:  # one at a time, so the budget (10) sends them singly
        service.accept([alert])
    run_until(service, all_done(service))
    received = webhook_server.received
    limited = [r for r in received if r["errcode"] == 45009]
    assert len(limited) == 1
    after = [r for r in received if r["t"] > limited[0]["t"]]
    assert after and after[0]["t"] - limited[0]["t"] >= 1.0  # a whole window later
    results = [r.result for r in records(service.outbox)]
    assert results.count("rate_limited") == 1
    delivered = {r.alert_id for r in records(service.outbox) if r.result == "delivered"}
    assert delivered == {a.alert_id for a in alerts}


def test_a_broken_route_tells_the_fallback_and_hands_its_alerts_over(
    tmp_path: Path, webhook_server: Any, make_alert: Callable[..., Alert],
    write_routes: Callable[[str], Path], write_secrets: Callable[[dict[str, str]], Path],
) -> None:
    urls = {"stock": webhook_server.url("k-revoked-0007"),  # unknown to the server: 93000
            "ops": webhook_server.add_key("k-ops-0008")}
    settings = delivery_settings(tmp_path, write_routes(ROUTES), write_secrets(urls))
    service = service_for(settings, urls)
    alerts = [make_alert() for _ in range(3)]
    service.accept(alerts)
    run_until(service, lambda: all_done(service)() and len(
        webhook_server.delivered("k-ops-0008")) >= 2)
    assert webhook_server.answers("k-revoked-0007") == [93000]  # tried once, then handed over
    fallback = [r["body"] for r in webhook_server.delivered("k-ops-0008")]
    notice = fallback[0]["markdown"]["content"]
    assert "告警路由故障" in notice and "stock" in notice and "93000" in notice
    assert "k-revoked-0007" not in notice and "***0007" in notice
    texts = " ".join(b[b["msgtype"]]["content"] for b in fallback[1:])
    assert all(a.alert_id in texts for a in alerts) or "共 3 条" in texts
    recs = records(service.outbox)
    assert [r.result for r in recs if r.route == "stock"].count("broken") == 1
    assert {r.alert_id for r in recs if r.result == "rerouted"} == {a.alert_id for a in alerts}
    delivered = {r.alert_id for r in recs if r.route == "fallback" and r.kind != "notice"
                 and r.result in ("delivered", "digest")}
    assert [r.result for r in recs if r.kind == "notice"] == ["delivered"]
    assert delivered == {a.alert_id for a in alerts}
    # new alerts of the broken route go straight to the fallback
    assert service.plan(make_alert(), time.time())[0][1:3] == ("fallback", "ops")
    # the route's health, as `ctower alerts routes` shows it
    service.outbox.close()
    lines = route_lines(settings)
    assert lines[0].startswith("stock: BROKEN since") and "errcode 93000" in lines[0]
    assert "k-revoked-0007" not in "\n".join(lines)
    # fixed (the key exists again): `ctower alerts test --route stock` clears it
    webhook_server.add_key("k-revoked-0007")
    assert asyncio.run(_test(settings, "stock")) == 0
    assert route_lines(settings)[0].startswith("stock: ok")
    tests = [r for r in records(Outbox(outbox_path(settings))) if r.message_kind == "test"]
    assert [(t.route, t.result, t.errcode) for t in tests] == [("stock", "delivered", 0)]


def test_quiet_hours_hold_warnings_but_not_critical_alerts(
    tmp_path: Path, webhook_server: Any, make_alert: Callable[..., Alert],
    write_routes: Callable[[str], Path], write_secrets: Callable[[dict[str, str]], Path],
) -> None:
    now = datetime.now(ZoneInfo("Asia/Shanghai"))
    start, end = now - timedelta(minutes=30), now + timedelta(minutes=30)
    quiet = f"{start:%H:%M}-{end:%H:%M}"
    routes = ROUTES.replace('kinds = ["stock_out"]',
                            f'kinds = ["stock_out"]\nquiet_hours = "{quiet}"')
    urls = {"stock": webhook_server.add_key("k-stock-0009"),
            "ops": webhook_server.add_key("k-ops-0010")}
    settings = delivery_settings(tmp_path, write_routes(routes), write_secrets(urls))
    service = service_for(settings, urls)
    warning, critical = make_alert(), make_alert(severity="critical")
    service.accept([warning, critical])
    run_until(service, lambda: len(webhook_server.delivered()) >= 1)
    time.sleep(0.3)
    sent = [r["body"]["markdown"]["content"] for r in webhook_server.delivered()]
    assert len(sent) == 1 and critical.alert_id in sent[0]
    held = service.outbox.pending()
    assert [i.alert_id for i in held] == [warning.alert_id]
    assert held[0].state == PENDING
    assert abs(held[0].not_before - end.replace(second=0, microsecond=0).timestamp()) < 1


def test_an_attempt_cut_short_by_a_crash_is_recorded_and_sent_again(
    tmp_path: Path, webhook_server: Any, make_alert: Callable[..., Alert],
    write_routes: Callable[[str], Path], write_secrets: Callable[[dict[str, str]], Path],
) -> None:
    urls = {"stock": webhook_server.add_key("k-stock-0011"),
            "ops": webhook_server.add_key("k-ops-0012")}
    settings = delivery_settings(tmp_path, write_routes(ROUTES), write_secrets(urls))
    service = service_for(settings, urls)
    alert = make_alert()
    service.accept([alert])
    (item,) = service.outbox.pending()
    service.outbox.start_sending([item], "markdown")  # ... and the process dies here
    service.outbox.close()

    restarted = service_for(settings, urls)
    run_until(restarted, all_done(restarted))
    got = [(r.attempt, r.result) for r in records(restarted.outbox)]
    assert got == [(1, "crashed"), (2, "delivered")]
    assert len(webhook_server.delivered("k-stock-0011")) == 1


def test_a_request_in_flight_at_a_crash_counts_against_the_budget_from_when_it_started(
    tmp_path: Path, webhook_server: Any, make_alert: Callable[..., Alert],
    write_routes: Callable[[str], Path], write_secrets: Callable[[dict[str, str]], Path],
) -> None:
    urls = {"stock": webhook_server.add_key("k-stock-0013"),
            "ops": webhook_server.add_key("k-ops-0014")}
    settings = delivery_settings(tmp_path, write_routes(ROUTES), write_secrets(urls),
                                 alert_rate_per_minute=5, alert_rate_window_seconds=60)
    service = service_for(settings, urls)
    service.accept([make_alert()])
    (item,) = service.outbox.pending()
    started = time.time() - 10
    service.outbox.start_sending([item], "markdown")
    service.outbox.send_started("stock", at=started)  # the request is in the air ...
    service.outbox.send_started("ops", at=started + 1)  # ... and so is a notice
    service.outbox.close()  # ... when the process dies

    restarted = service_for(settings, urls)
    assert restarted.budgets["stock"].free() == 4
    assert restarted.budgets["ops"].free() == 4
    assert restarted.outbox.in_flight() == []
    assert restarted.outbox.recent_sends(0) == {"stock": [started], "ops": [started + 1]}
    # a second restart counts them once, not again
    restarted.outbox.close()
    again = service_for(settings, urls)
    assert again.budgets["stock"].free() == 4
    run_until(again, all_done(again))
    assert again.budgets["stock"].free() == 3
    assert again.outbox.in_flight() == []  # the answer settled the new request


def test_admit_turns_any_record_into_an_alert_or_one_counted_dead_letter(
    tmp_path: Path, webhook_server: Any, make_alert: Callable[..., Alert],
    write_routes: Callable[[str], Path], write_secrets: Callable[[dict[str, str]], Path],
) -> None:
    urls = {"stock": webhook_server.add_key("k-stock-0015"),
            "ops": webhook_server.add_key("k-ops-0016")}
    settings = delivery_settings(tmp_path, write_routes(ROUTES), write_secrets(urls))
    service = service_for(settings, urls)
    encode = msgspec.json.encode
    deep = b"[" * 5000 + b"]" * 5000
    cases: list[tuple[bytes | None, str]] = [
        (b"not json", "not_json"),
        (b'{"alert_id": "\xc3\x28"}', "not_utf8"),
        (encode(make_alert(evidence={"x": "D"})).replace(b'"D"', deep), "too_deep"),
        (deep, "not_an_object"),
        (b'{"a": 1}', "missing_field"),
        (encode(make_alert()).replace(b'"stock_out"', b'"meteor"'), "unknown_value"),
        (b'{"alert_id": "' + b"x" * 600_000 + b'"}', "missing_field"),
        (None, "not_json"),
        (b"", "not_json"),
    ]
    for offset, (raw, reason) in enumerate(cases):
        letter = service.admit("ct.alerts", 2, offset, raw)
        assert not isinstance(letter, Alert)
        assert (letter.reason, letter.offset, letter.partition) == (reason, offset, 2), letter
        assert letter.raw == (raw or b"")[:64 * 1024] and letter.raw_length == len(raw or b"")
        assert "\n" not in letter.detail
    assert service.stats.skipped == len(cases)
    assert sum(service.stats.dead_letters.values()) == len(cases)
    # odd but valid alerts are admitted, and go out
    odd = [make_alert(opened_at=2**62), make_alert(opened_at=-(2**62), status="resolved"),
           make_alert(message="库存" * 5000, store_id="S" * 10_000)]
    admitted = [service.admit("ct.alerts", 0, n, encode(a)) for n, a in enumerate(odd)]
    assert admitted == odd
    service.accept(admitted)
    run_until(service, all_done(service))
    assert {r.alert_id for r in records(service.outbox) if r.result == "delivered"} == {
        a.alert_id for a in odd}


def test_an_item_no_message_can_be_made_of_is_rejected_and_the_queue_goes_on(
    tmp_path: Path, webhook_server: Any, make_alert: Callable[..., Alert],
    write_routes: Callable[[str], Path], write_secrets: Callable[[dict[str, str]], Path],
    monkeypatch: Any,
) -> None:
    from ctower.sinks.wechat import delivery

    urls = {"stock": webhook_server.add_key("k-stock-0017"),
            "ops": webhook_server.add_key("k-ops-0018")}
    settings = delivery_settings(tmp_path, write_routes(ROUTES), write_secrets(urls))
    service = service_for(settings, urls)
    poison, fine = make_alert(severity="critical", message="poison"), make_alert()
    service.accept([poison, fine])  # an outbox written before intake checked alerts
    render = delivery.render_alert

    def fragile(alert: Alert, **kwargs: Any) -> Any:
        if alert.message == "poison":
            raise ValueError("year 146140482 is out of range")
        return render(alert, **kwargs)

    monkeypatch.setattr(delivery, "render_alert", fragile)
    run_until(service, lambda: set(service.outbox.counts()) <= {DELIVERED, "rejected"})
    got = {r.alert_id: (r.result, r.detail) for r in records(service.outbox)}
    assert got[fine.alert_id] == ("delivered", "")
    assert got[poison.alert_id][0] == "rejected"
    assert "could not render" in got[poison.alert_id][1]
    assert len(webhook_server.received) == 1
