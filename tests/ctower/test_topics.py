"""ensure_topics against a real broker: every topic, idempotent, coupon-policy compacted."""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from ctower.settings import CONTROL_TOPICS, STREAMS, Settings
from ctower.topics import ensure_topics

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


def test_a_bare_sink_start_creates_coupon_policy_compacted(
    settings: Settings, ctower_process, poll
) -> None:
    """``ctower sink`` alone on a new topic prefix (no worker, no ``ctower kafka
    topics``) creates every topic as ``ctower kafka topics`` does: coupon-policy
    compacted, not left to the broker's auto-creation."""
    sink = ctower_process(settings, "sink", "sink")
    expected = {settings.topic(name) for name in (*STREAMS, *CONTROL_TOPICS)}
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap)
    try:
        def all_created() -> bool:
            assert sink.alive(), sink.log_tail()
            return expected <= set(admin.list_topics())

        poll(all_created, 120, "the sink created its topics")
        policy = settings.topic("coupon-policy")
        configs = admin.describe_configs([
            ConfigResource(ConfigResourceType.TOPIC, policy),
        ])["topic"]
        assert configs[policy]["cleanup.policy"]["value"] == "compact"
        (topic,) = admin.describe_topics([policy])
        assert len(topic["partitions"]) == settings.topic_partitions
    finally:
        admin.close()
        sink.stop()


def test_one_ensure_topics_creates_topics() -> None:
    """Only ``ctower/topics.py`` defines ``ensure_topics`` and creates
    topics; every process (the async sink and alert service in a thread) calls it."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    sources = {
        str(path.relative_to(root)): path.read_text(encoding="utf-8")
        for folder in ("ctower", "schemas", "tables", "rules", "streams", "coupons", "sinks",
                       "dashboard", "simulator", "bench", "devstack")
        for path in (root / folder).rglob("*.py")
    }
    creators = sorted(name for name, text in sources.items() if "create_topics(" in text)
    assert creators == ["ctower/topics.py"]
    definers = sorted(name for name, text in sources.items()
                      if re.search(r"^(async )?def ensure_topics\b", text, re.MULTILINE))
    assert definers == ["ctower/topics.py"]
    for async_caller in ("sinks/clickhouse/sink.py", "sinks/wechat/delivery.py"):
        assert "asyncio.to_thread(ensure_topics, " in sources[async_caller], async_caller


def test_a_broker_that_does_not_answer_is_a_clear_broker_error(tmp_path: Path) -> None:
    """A worker, sink or alert service started with no Kafka ends on one line
    naming the address and what to do, not a kafka-python traceback."""
    import socket

    from ctower.devstack.broker.local import BrokerError
    from ctower.errors import CtowerError
    from ctower.settings import load_settings

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = load_settings(data_dir=tmp_path, kafka_bootstrap=f"127.0.0.1:{port}")
    with pytest.raises(BrokerError) as raised:
        ensure_topics(settings, timeout=2)
    assert isinstance(raised.value, CtowerError)
    assert f"127.0.0.1:{port}" in str(raised.value) and "ctower kafka up" in str(raised.value)


def test_the_changelogs_get_the_replication_the_cluster_gave_our_topics(
    settings: Settings,
) -> None:
    """Faust needs a number for the changelogs it creates: the one our topics got
    from the cluster (here one broker, so 1; a fixed 1 left a production
    cluster's worker state unreplicated)."""
    from ctower.topics import replication_of

    ensure_topics(settings)
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap)
    try:
        scan = admin.describe_topics([settings.topic("scan")])[0]
        replicas = len(scan["partitions"][0]["replica_nodes"])
    finally:
        admin.close()
    assert not settings.uses_local_kafka  # the path that asks the cluster
    assert replication_of(settings) == replicas == 1
