"""ensure_topics against a real broker: every topic, idempotent, coupon-policy compacted."""

from __future__ import annotations

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from ctower.broker.topics import ensure_topics
from ctower.settings import CONTROL_TOPICS, STREAMS, Settings

pytestmark = pytest.mark.kafka


def test_ensure_topics_is_idempotent_and_compacts_coupon_policy(settings: Settings) -> None:
    expected = {settings.topic(name) for name in (*STREAMS, *CONTROL_TOPICS)}

    created = ensure_topics(settings)
    assert set(created) == expected and len(created) == len(expected)
    assert ensure_topics(settings) == []  # second run: nothing to do, no error

    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap)
    try:
        described = {t["name"]: t for t in admin.describe_topics(sorted(expected))}
        assert set(described) == expected
        for topic in described.values():
            assert len(topic["partitions"]) == settings.topic_partitions
            assert all(len(p["replica_nodes"]) == 1 for p in topic["partitions"])

        configs = admin.describe_configs([
            ConfigResource(ConfigResourceType.TOPIC, settings.topic("coupon-policy")),
            ConfigResource(ConfigResourceType.TOPIC, settings.topic("scan")),
        ])["topic"]
        assert configs[settings.topic("coupon-policy")]["cleanup.policy"]["value"] == "compact"
        assert "cleanup.policy" not in configs[settings.topic("scan")]  # broker default: delete
    finally:
        admin.close()


def test_partitions_follow_the_setting(settings_factory) -> None:
    settings = settings_factory(topic_partitions=2)
    ensure_topics(settings)
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap)
    try:
        (topic,) = admin.describe_topics([settings.topic("alerts")])
        assert len(topic["partitions"]) == 2
    finally:
        admin.close()


def test_the_sink_and_the_alert_service_create_the_same_topics(settings: Settings) -> None:
    """A bare ``ctower sink`` (or ``ctower alerts deliver``) on a new cluster
    creates every topic as ``ctower kafka topics`` does: coupon-policy compacted."""
    import asyncio

    from ctower.streams.sinks.clickhouse import ensure_topics as sink_ensure_topics

    created = asyncio.run(sink_ensure_topics(settings))
    assert set(created) == {settings.topic(name) for name in (*STREAMS, *CONTROL_TOPICS)}
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap)
    try:
        configs = admin.describe_configs([
            ConfigResource(ConfigResourceType.TOPIC, settings.topic("coupon-policy")),
        ])["topic"]
        assert configs[settings.topic("coupon-policy")]["cleanup.policy"]["value"] == "compact"
    finally:
        admin.close()


def test_one_ensure_topics_creates_topics() -> None:
    """Only ``ctower/broker/topics.py`` creates topics; every process calls it."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    creators = sorted(
        str(path.relative_to(root))
        for folder in ("ctower", "streams", "tables", "schemas", "simulator", "dashboard")
        for path in (root / folder).rglob("*.py")
        if "create_topics(" in path.read_text(encoding="utf-8")
    )
    assert creators == ["ctower/broker/topics.py"]
    delivery = (root / "streams/sinks/wechat/delivery.py").read_text(encoding="utf-8")
    assert "await ensure_topics(settings)" in delivery
