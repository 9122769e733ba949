"""Create the project's topics, idempotently, before anything produces to them.

Why not rely on the broker's auto-creation: an auto-created topic gets the
broker's defaults, so ``coupon-policy`` would not be compacted (it must be:
it holds the latest policy per key, and a new consumer group reads them all) and
the partition count would be whatever the cluster says rather than
``CTOWER_TOPIC_PARTITIONS``. Running this every start is cheap and safe.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterable
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.partitioner.default import murmur2

from ctower.devstack.broker.local import BrokerError
from ctower.settings import CONTROL_TOPICS, STREAMS, Settings

log = logging.getLogger(__name__)

COMPACTED = frozenset({"coupon-policy"})
"""Topics that keep only the latest record per key (``cleanup.policy=compact``)."""


@functools.lru_cache(maxsize=1 << 16)
def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partition of a keyed record (``Utils.toPositive(murmur2) % n``).

    Cached: kafka-python's murmur2 is pure Python (about 5% of a busy worker,
    re-keying SKUs and levels), and the same keys come again and again.

    Producers that batch per partition, and records that must land beside
    another topic's key (a coupon policy beside its campaign's events), use it
    to pick the partition the Java client would.
    """
    partition: int = (murmur2(key) & 0x7FFFFFFF) % partitions
    return partition


def topic_specs(settings: Settings) -> dict[str, dict[str, str]]:
    """Full topic name -> topic configs, for every stream and control topic."""
    return {
        settings.topic(name): ({"cleanup.policy": "compact"} if name in COMPACTED else {})
        for name in (*STREAMS, *CONTROL_TOPICS)
    }


def _leaders_ready(admin: KafkaAdminClient, names: list[str]) -> bool:
    try:
        described: list[dict[str, Any]] = admin.describe_topics(names)
    except KafkaError:
        return False
    if len(described) < len(names):
        return False
    return all(
        topic.get("error_code", 0) == 0
        and topic.get("partitions")
        and all(p.get("leader_id", -1) >= 0 for p in topic["partitions"])
        for topic in described
    )


def ensure_topics(settings: Settings, timeout: float = 30) -> list[str]:
    """Create the missing topics of ``settings``; return the names created (maybe none).

    Waits until every created partition has a leader, so a producer started
    right after this call does not race the controller. Replication is 1 on
    the local single-node broker; on another cluster the cluster's default
    replication factor applies. The one function that creates topics: every
    process calls it (async ones through ``asyncio.to_thread``, as the admin
    client blocks), so a topic is the same whoever starts first.
    """
    replication = 1 if settings.uses_local_kafka else -1
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=settings.bootstrap,
            client_id="ctower-topics",
            request_timeout_ms=int(timeout * 1000),
        )
    except KafkaError as exc:  # nothing answers: a clear line, not a traceback
        raise BrokerError(
            f"Kafka at {settings.bootstrap} cannot be reached ({exc}): start the local "
            "broker with `ctower kafka up`, or set KAFKA_BOOTSTRAP to a cluster that answers"
        ) from exc
    try:
        specs = topic_specs(settings)
        existing = set(admin.list_topics())
        missing = [name for name in specs if name not in existing]
        created: list[str] = []
        for name in missing:
            new = NewTopic(
                name,
                num_partitions=settings.topic_partitions,
                replication_factor=replication,
                topic_configs=specs[name] or None,
            )
            try:
                admin.create_topics([new], timeout_ms=int(timeout * 1000))
            except TopicAlreadyExistsError:
                continue  # someone else (another worker) created it meanwhile: fine
            created.append(name)
        deadline = time.monotonic() + timeout
        while created and not _leaders_ready(admin, created):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"topics created on {settings.bootstrap} but without partition leaders "
                    f"after {timeout:.0f} s: {', '.join(created)}"
                )
            time.sleep(0.1)
        if created:
            log.info("created topics %s", ", ".join(created))
        return created
    finally:
        with contextlib.suppress(Exception):
            admin.close()


def end_offsets(bootstrap: str, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the offset its next message will get, for every
    partition of ``topics``: where a reader of what is there now stops."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, client_id="ctower-ends")
    try:
        tps = [TopicPartition(topic, p) for topic in topics
               for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends: dict[Any, int] = consumer.end_offsets(tps) if tps else {}
    finally:
        consumer.close()
    return {(tp.topic, tp.partition): end for tp, end in ends.items()}


def replication_of(settings: Settings, timeout: float = 30) -> int:
    """How many replicas the cluster keeps of the project's topics (read from
    ``scan``, which :func:`ensure_topics` created with the cluster's default).

    The worker's changelogs get the same: Faust needs the number, and a fixed
    1 left the state of every worker unreplicated on a production cluster.
    """
    if settings.uses_local_kafka:
        return 1
    admin = KafkaAdminClient(
        bootstrap_servers=settings.bootstrap, client_id="ctower-topics",
        request_timeout_ms=int(timeout * 1000),
    )
    try:
        described: list[dict[str, Any]] = admin.describe_topics([settings.topic("scan")])
        partitions = described[0].get("partitions") if described else None
        if not partitions:
            raise BrokerError(
                f"{settings.topic('scan')} on {settings.bootstrap} has no partitions to read "
                "the replication factor from"
            )
        return max(1, len(partitions[0].get("replica_nodes") or []))
    finally:
        with contextlib.suppress(Exception):
            admin.close()
