"""The dashboard's controls write the right records to Kafka (the real session
broker), and stay locked without the operator token."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import msgspec
import pytest
from kafka import KafkaConsumer
from streamlit.testing.v1 import AppTest

from ctower.dashboard.coupon_controls import build_policy
from ctower.schemas.control import AlertAck, CouponPolicy
from ctower.settings import Settings
from ctower.topics import ensure_topics

TOKEN = "s3cret-Token"


def read_topic(settings: Settings, name: str, count: int) -> list[tuple[bytes, bytes]]:
    consumer = KafkaConsumer(
        settings.topic(name), bootstrap_servers=settings.bootstrap,
        auto_offset_reset="earliest", consumer_timeout_ms=10_000,
    )
    try:
        found = []
        for message in consumer:
            found.append((message.key, message.value))
            if len(found) >= count:
                break
        return found
    finally:
        consumer.close()


@pytest.fixture
def kafka_env(dash_store: Any, settings_factory: Callable[..., Settings],
              monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The dashboard's environment pointed at the session broker, with a token."""
    settings = settings_factory()
    monkeypatch.setenv("CTOWER_KAFKA_BOOTSTRAP", settings.bootstrap)
    monkeypatch.setenv("CTOWER_TOPIC_PREFIX", settings.topic_prefix)
    monkeypatch.setenv("CTOWER_OPERATOR_TOKEN", TOKEN)
    ensure_topics(settings)
    return settings


def unlocked(token: str = TOKEN) -> dict[str, str]:
    return {"operator_token": token, "operator_name": "wang"}


@pytest.mark.kafka
def test_set_cap_and_pause_write_whole_policy_records(
    dash_store: Any, kafka_env: Settings, run_page: Callable[..., AppTest], minute0: datetime
) -> None:
    dash_store.insert("campaign_store_minute", [{
        "campaign_id": "C7", "store_id": "S001", "window_start": minute0,
        "window_end": minute0 + timedelta(minutes=1), "issued": 3, "claimed": 0,
        "redeemed": 0, "expired": 0, "source_topic": "ct.coupon", "partition": 0,
        "through_offset": 1, "closed_at": minute0}])
    dash_store.insert("coupon_policies", [{
        "campaign_id": "C7", "store_id": "S001", "cap_per_window": 50, "window_seconds": 600,
        "per_member_limit": 2, "paused": False, "set_by": "mkt", "set_at": minute0}])
    app = run_page("coupons", state=unlocked())
    app.selectbox(key="coupon_campaign").select("C7")
    app.text_input(key="coupon_store").input("S001")
    app.number_input(key="coupon_cap").set_value(80)
    app.number_input(key="coupon_window").set_value(900)
    app.button(key="coupon_set_cap").click().run()
    assert not app.exception, app.exception
    assert [s.value for s in app.success] == ["Coupon policy sent: C7 / S001 (Set cap)"]
    app.button(key="coupon_pause").click().run()  # the store still holds cap 50 in force
    records = read_topic(kafka_env, "coupon-policy", 2)
    assert [key for key, _ in records] == [b"C7|S001", b"C7|S001"]
    set_cap, pause = (msgspec.json.decode(value, type=CouponPolicy) for _, value in records)
    assert (set_cap.campaign_id, set_cap.store_id, set_cap.cap_per_window,
            set_cap.window_seconds, set_cap.per_member_limit, set_cap.paused,
            set_cap.set_by) == ("C7", "S001", 80, 900, None, False, "dashboard:wang")
    assert (pause.cap_per_window, pause.window_seconds, pause.per_member_limit,
            pause.paused) == (50, 600, 2, True)  # pausing keeps the policy in force
    assert pause.set_at >= set_cap.set_at > 0


@pytest.mark.kafka
def test_acknowledging_an_alert_writes_an_ack_record(
    dash_store: Any, kafka_env: Settings, run_page: Callable[..., AppTest], minute0: datetime
) -> None:
    dash_store.insert("alerts", [{
        "alert_id": "A9", "key": "pickup:S001", "kind": "pickup_congestion",
        "severity": "critical", "status": "open", "message": "S001 queue 14 > 10",
        "evidence": "{}", "action": None, "opened_at": minute0, "resolved_at": None,
        "raised_at": minute0, "region": "east", "store_id": "S001", "sku": None,
        "carrier": None, "version": 1}])
    app = run_page("alerts", state=unlocked())
    assert app.selectbox(key="ack_alert").value == "A9"
    app.text_input(key="ack_note").input("calling the store")
    app.button(key="ack_button").click().run()
    assert not app.exception, app.exception
    assert [s.value for s in app.success] == ["Acknowledged: A9"]
    [(key, value)] = read_topic(kafka_env, "alert-acks", 1)
    ack = msgspec.json.decode(value, type=AlertAck)
    assert key == b"A9"
    assert (ack.alert_id, ack.acked_by, ack.note) == ("A9", "wang", "calling the store")


@pytest.mark.kafka
def test_assign_and_resolve_write_who_did_what(
    dash_store: Any, kafka_env: Settings, run_page: Callable[..., AppTest], minute0: datetime
) -> None:
    dash_store.insert("alerts", [{
        "alert_id": "A9", "key": "pickup:S001", "kind": "pickup_congestion",
        "severity": "critical", "status": "open", "message": "S001 queue 14 > 10",
        "evidence": "{}", "action": None, "opened_at": minute0, "resolved_at": None,
        "raised_at": minute0, "region": "east", "store_id": "S001", "sku": None,
        "carrier": None, "version": 1}])
    app = run_page("alerts", state=unlocked())
    app.radio(key="ack_action").set_value("assign").run()
    app.text_input(key="ack_owner").input("zhao")
    app.button(key="ack_button").click().run()
    assert [s.value for s in app.success] == ["Assigned: A9"]
    app.radio(key="ack_action").set_value("resolve").run()
    app.button(key="ack_button").click().run()  # no note: refused on the page
    assert [e.value for e in app.error] == ["Say how it was resolved (note)."]
    app.text_input(key="ack_note").input("two more staff at the counter")
    app.button(key="ack_button").click().run()
    assert [s.value for s in app.success] == ["Resolved: A9"]
    records = [msgspec.json.decode(v, type=AlertAck)
               for _, v in read_topic(kafka_env, "alert-acks", 2)]
    assert [(r.action, r.acked_by, r.owner, r.note) for r in records] == [
        ("assign", "wang", "zhao", ""),
        ("resolve", "wang", "", "two more staff at the counter")]


@pytest.mark.parametrize("token", ["", "wrong"])
def test_controls_stay_locked_without_the_right_token(
    dash_store: Any, run_page: Callable[..., AppTest], monkeypatch: pytest.MonkeyPatch,
    token: str,
) -> None:
    monkeypatch.setenv("CTOWER_OPERATOR_TOKEN", TOKEN)
    for page in ("coupons", "alerts"):
        app = run_page(page, state=unlocked(token))
        assert not [b for b in app.button if b.key in ("coupon_set_cap", "ack_button")]
        assert not [r for r in app.radio if r.key == "ack_action"]
        assert any("Enter the operator token" in info.value for info in app.info)


def test_controls_are_off_when_no_token_is_configured(
    dash_store: Any, run_page: Callable[..., AppTest]
) -> None:
    app = run_page("coupons", state=unlocked(""))  # an empty offer never matches
    assert any("CTOWER_OPERATOR_TOKEN" in info.value for info in app.info)
    assert not [b for b in app.button if b.key == "coupon_set_cap"]


def test_operator_token_is_masked_in_public_settings(
    monkeypatch: pytest.MonkeyPatch, dash_store: Any
) -> None:
    from ctower.settings import load_settings

    monkeypatch.setenv("CTOWER_OPERATOR_TOKEN", TOKEN)
    shown = load_settings().public_dict()
    assert shown["operator_token"] == "***"
    assert TOKEN not in str(shown)


@pytest.mark.parametrize(
    ("action", "in_force", "expected"),
    [
        ("set_cap", None, (40, 300, None, False)),
        ("set_cap", {"paused": True, "cap_per_window": 9}, (40, 300, None, True)),
        ("pause", {"cap_per_window": 9, "window_seconds": 60, "per_member_limit": 1,
                   "paused": False}, (9, 60, 1, True)),
        ("resume", {"cap_per_window": None, "window_seconds": 60, "per_member_limit": None,
                    "paused": True}, (None, 60, None, False)),
        ("pause", None, (None, 300, None, True)),
    ],
)
def test_each_button_writes_the_whole_policy(
    action: Any, in_force: dict | None, expected: tuple
) -> None:
    policy = build_policy(
        action, campaign_id="C1", store_id=" ", cap=40, window_seconds=300,
        per_member_limit=None, in_force=in_force, operator="li", now_ms=123,
    )
    assert policy.store_id is None  # blank scope = every store
    assert (policy.cap_per_window, policy.window_seconds, policy.per_member_limit,
            policy.paused) == expected
    assert (policy.set_by, policy.set_at) == ("dashboard:li", 123)
