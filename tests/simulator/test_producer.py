"""Sending to a real broker: per-partition batch envelopes, nothing lost."""

from __future__ import annotations

import base64
from collections import Counter

import msgspec
import pytest
from click.testing import CliRunner
from kafka import KafkaConsumer, TopicPartition

from ctower.schemas.events import EVENT_TYPES
from ctower.settings import STREAMS, Settings
from ctower.simulator.command import simulate
from ctower.simulator.truth import load_truth
from ctower.topics import partition_for


def test_partition_for_matches_the_java_client():
    """Kafka's own murmur2 test vectors (clients UtilsTest), then toPositive % n."""
    vectors = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for key, java in vectors.items():
        for n in (1, 4, 7):
            assert partition_for(key, n) == (java & 0x7FFFFFFF) % n


def consume_all(settings: Settings, timeout_s: float = 30.0) -> list:
    """Every record of the stream topics, up to the end offsets seen now."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=int(timeout_s * 1000),
    )
    try:
        tps = [
            TopicPartition(settings.topic(s), p)
            for s in STREAMS
            for p in sorted(consumer.partitions_for_topic(settings.topic(s)) or ())
        ]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        records = []
        while any(consumer.position(tp) < end[tp] for tp in tps):
            batch = consumer.poll(timeout_ms=1000, max_records=10_000)
            for part in batch.values():
                records.extend(part)
        return records
    finally:
        consumer.close()


def _cli_env(settings: Settings) -> dict[str, str]:
    return {
        "CTOWER_KAFKA_BOOTSTRAP": settings.bootstrap,
        "CTOWER_TOPIC_PREFIX": settings.topic_prefix,
    }


@pytest.mark.kafka
def test_batch_envelopes_hold_their_own_partition_only_and_nothing_is_lost(
    settings_factory, tmp_path
):
    settings = settings_factory()
    truth_path = tmp_path / "truth.json"
    result = CliRunner().invoke(
        simulate,
        [
            "--seed",
            "5",
            "--events",
            "8000",
            "--sim-rate",
            "1",  # 8000 events span over 30 minutes (for the incident) at any hour
            "--batch",
            "50",
            "--incidents",
            "malformed",
            "--truth",
            str(truth_path),
            "--quiet",
        ],
        env=_cli_env(settings),
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    truth = load_truth(truth_path)
    records = consume_all(settings)
    topic_stream = {settings.topic(s): s for s in STREAMS}
    decoders = {s: msgspec.json.Decoder(EVENT_TYPES[s]) for s in STREAMS}
    raw_values = {
        entry["raw"].encode() if "raw" in entry else base64.b64decode(entry["raw_b64"])
        for entry in truth["malformed"]
    }
    counted: Counter[str] = Counter()
    arrays = sizes = 0
    seen_partitions: set[tuple[str, int]] = set()
    malformed_seen = 0
    for record in records:
        stream = topic_stream[record.topic]
        if record.value in raw_values:
            malformed_seen += 1
            continue
        assert record.value.startswith(b"["), "with --batch 50 every valid event is in an array"
        elements = msgspec.json.decode(record.value, type=list[msgspec.Raw])
        arrays += 1
        sizes = max(sizes, len(elements))
        n = truth["meta"]["partitions"][stream]
        for element in elements:
            event = decoders[stream].decode(element)
            assert partition_for(event.partition_key.encode(), n) == record.partition
            counted[stream] += 1
        seen_partitions.add((stream, record.partition))
    # The envelope with one bad element was skipped above: its good event still counts.
    envelope = [m for m in truth["malformed"] if m["index"] >= 0]
    for entry in envelope:
        counted[entry["stream"]] += 1
    assert dict(counted) == truth["events_sent"]
    assert sizes == 50
    assert arrays < sum(counted.values()) / 10
    assert len(seen_partitions) > len(STREAMS), "arrays went to several partitions per topic"
    assert truth["meta"]["partitions"] == {s: settings.topic_partitions for s in STREAMS}
    assert malformed_seen == len(truth["malformed"])


@pytest.mark.kafka
def test_batch_of_one_sends_keyed_events(settings_factory, tmp_path):
    settings = settings_factory()
    result = CliRunner().invoke(
        simulate,
        ["--seed", "6", "--events", "1500", "--quiet"],
        env=_cli_env(settings),
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    records = consume_all(settings)
    assert len(records) == 1500
    for record in records:
        stream = record.topic[len(settings.topic_prefix) :]
        event = msgspec.json.decode(record.value, type=EVENT_TYPES[stream])
        assert record.key == event.partition_key.encode()
        assert partition_for(record.key, settings.topic_partitions) == record.partition


@pytest.mark.kafka
def test_programmatic_send_of_event_pairs_caps_array_size(settings_factory, monkeypatch):
    from ctower import producer as event_producer
    from ctower.simulator import producer
    from ctower.simulator.generator import SimConfig, Simulator

    monkeypatch.setattr(event_producer, "MAX_ARRAY_BYTES", 5_000)
    settings = settings_factory()
    stats = producer.send(
        settings, Simulator(SimConfig(seed=3, events=2_000)).events(), batch=1_000
    )
    assert stats.events == 2_000 and stats.errors == 0
    records = consume_all(settings)
    assert len(records) == stats.messages
    assert all(len(r.value) <= 5_000 for r in records)
    total = sum(len(msgspec.json.decode(r.value, type=list[msgspec.Raw])) for r in records)
    assert total == 2_000


def test_compression_choice():
    from ctower.producer import crc32c_is_native, resolve_compression

    assert resolve_compression("none") is None
    assert resolve_compression("gzip") == "gzip"
    assert resolve_compression("auto") == (None if crc32c_is_native() else "gzip")
    with pytest.raises(ValueError):
        resolve_compression("lz4")
