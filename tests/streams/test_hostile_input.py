"""No input stops the pipeline (issue 11), on a real broker, worker, sink and store.

Over 5,000 malformed messages over every stream, then 1,000 valid events:
the worker and the sink stay up and are never restarted, every malformed
event is in ``dead_letters`` with the reason expected of it, every valid event
(also those inside envelopes with bad elements) is counted exactly once, and
no partition is left behind (the worker's group commits to the end of each).
"""

from __future__ import annotations

import itertools
import json
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from ctower.settings import STREAMS, Settings
from ctower.store import open_store
from ctower.topics import ensure_topics

pytestmark = pytest.mark.kafka

NOW = int(time.time() * 1000)
DEEP = "[" * 5000 + "]" * 5000


def valid(stream: str, n: int) -> dict[str, Any]:
    """A valid event of ``stream`` whose identity no other event shares."""
    base: dict[str, Any] = {"ts": NOW - n % 50_000}
    if stream == "scan":
        return {**base, "scan_id": f"sc{n}", "store_id": f"S{n % 7}", "sku": "K1",
                "action": "view"}
    if stream == "order":
        return {**base, "order_id": f"o{n}", "member_id": "m1", "store_id": f"S{n % 7}",
                "channel": "mini_program", "fulfillment": "in_store", "status": "paid",
                "lines": [{"sku": "K1", "qty": 2, "unit_price": 3.5}], "amount": 7.0}
    if stream == "pickup":
        return {**base, "order_id": f"p{n}", "store_id": f"S{n % 7}", "state": "arrived"}
    if stream == "logistics":
        return {**base, "shipment_id": f"sh{n}", "order_id": f"o{n}",
                "origin_type": "store", "origin_id": "S1", "carrier": "SF", "region": "east",
                "status": "in_transit"}
    if stream == "inventory":
        return {**base, "location_id": f"S{n % 7}", "sku": f"K{n}", "kind": "receipt",
                "qty": 5}
    if stream == "service":
        return {**base, "ticket_id": f"t{n}", "channel": "phone", "kind": "complaint",
                "topic": "quality", "state": "opened", "store_id": f"S{n % 7}",
                "sku": f"K{n % 5}"}
    assert stream == "coupon"
    return {**base, "coupon_id": f"c{n}", "campaign_id": f"C{n % 3}", "store_id": "S1",
            "member_id": "m1", "action": "issued"}


def key_of(stream: str, event: dict[str, Any]) -> bytes:
    field = {"logistics": "shipment_id", "inventory": "location_id",
             "coupon": "campaign_id", "service": "sku"}.get(stream, "store_id")
    return str(event[field]).encode()


def dumps(event: Any) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


Hostile = tuple[bytes, list[tuple[int, str]], int]
"""(message value, expected (index, reason) rejections, valid events inside)."""


def hostile(stream: str, n: int, huge: bool) -> Hostile:
    """The n-th hostile message of a stream (kinds in turn)."""
    event = valid(stream, n)
    body = dumps(event)
    first_text = next(k for k, v in event.items() if isinstance(v, str))
    kinds: list[Callable[[], Hostile]] = [
        lambda: (body[: len(body) // 2], [(-1, "not_json")], 0),
        lambda: (body.replace(b'"' + event[first_text].encode(), b'"\xff\xfe', 1),
                 [(-1, "not_utf8")], 0),
        lambda: (body[:-1] + b',"x":' + DEEP.encode() + b"}", [(-1, "too_deep")], 0),
        lambda: (body.replace(str(event["ts"]).encode(), b"NaN", 1), [(-1, "not_json")], 0),
        lambda: (body.replace(str(event["ts"]).encode(), b"Infinity", 1), [(-1, "not_json")], 0),
        lambda: (dumps({**event, "ts": 0}), [(-1, "ts_out_of_window")], 0),  # 1970
        lambda: (dumps({**event, "ts": "2100-01-01T00:00:00+00:00"}),
                 [(-1, "ts_out_of_window")], 0),
        lambda: (dumps({**event, "ts": 10**30}), [(-1, "out_of_range")], 0),
        lambda: (b"", [(-1, "not_json")], 0),
        lambda: (b"null", [(-1, "not_an_object")], 0),
        lambda: (dumps({**event, first_text: ""}), [(-1, "out_of_range")], 0),
        lambda: (dumps({**event, first_text: None}), [(-1, "wrong_type")], 0),
        lambda: (body[:-1] + b',"' + first_text.encode() + b'":"again"}',
                 [(-1, "duplicate_key")], 0),
        lambda: (b"[" + b",".join([
            dumps(valid(stream, n + 1_000_000)), b'{"ts":1}',
            dumps(valid(stream, n + 2_000_000)), DEEP.encode(),
        ]) + b"]", [(1, "missing_field"), (3, "not_an_object")], 2),
        lambda: (b"[]", [(-1, "empty_batch")], 0),
    ]
    if stream == "order":
        kinds += [
            lambda: (dumps({**event, "amount": 1e30}), [(-1, "out_of_range")], 0),
            lambda: (dumps({**event, "lines": [{"sku": "K1", "qty": -3, "unit_price": 1}]}),
                     [(-1, "out_of_range")], 0),
            lambda: (dumps({**event, "lines": [{"sku": "K1", "qty": 10**12, "unit_price": 1}]}),
                     [(-1, "out_of_range")], 0),
        ]
    if stream == "inventory":
        kinds += [
            lambda: (dumps({**event, "qty": -4}), [(-1, "out_of_range")], 0),
            lambda: (dumps({**event, "qty": 10**15}), [(-1, "out_of_range")], 0),
        ]
    if huge:
        return dumps({**event, "note": "x" * 900_000}), [(-1, "too_large")], 0
    return kinds[n % len(kinds)]()


def hostile_messages(per_stream: int) -> Iterator[tuple[str, bytes, Hostile]]:
    for stream in STREAMS:
        for n in range(per_stream):
            message = hostile(stream, n, huge=n < 3)
            yield stream, key_of(stream, valid(stream, n)), message


def committed_to_the_end(settings: Settings) -> dict[str, int]:
    """Partitions of the source topics whose committed offset is behind their end."""
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap)
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap)
    try:
        committed = admin.list_group_offsets(settings.app_id)[settings.app_id]
        parts = [
            TopicPartition(settings.topic(s), p)
            for s in STREAMS for p in range(settings.topic_partitions)
        ]
        ends = consumer.end_offsets(parts)
        return {
            f"{tp.topic}:{tp.partition}": end - (committed[tp].offset if tp in committed else 0)
            for tp, end in ends.items()
            if end > (committed[tp].offset if tp in committed else 0)
        }
    finally:
        admin.close()
        consumer.close()


def worker_stats(settings: Settings) -> dict[str, Any]:
    url = f"http://127.0.0.1:{settings.worker_web_port}/stats/"
    with urllib.request.urlopen(url, timeout=5) as answer:
        result: dict[str, Any] = json.load(answer)
        return result


def worker_metrics(settings: Settings) -> dict[Any, float]:
    from ctower.metrics import scrape

    return scrape(f"http://127.0.0.1:{settings.worker_web_port}/metrics")


def alerts_on_the_topic(settings: Settings) -> list[dict[str, Any]]:
    consumer = KafkaConsumer(
        settings.topic("alerts"), bootstrap_servers=settings.bootstrap,
        auto_offset_reset="earliest", consumer_timeout_ms=1500,
    )
    try:
        return [json.loads(record.value) for record in consumer]
    finally:
        consumer.close()


def test_hostile_input_never_stops_the_pipeline(
    settings_factory: Callable[..., Settings],
    ctower_process: Callable[..., Any],
    poll: Callable[..., Any],
    free_port: Callable[[], int],
) -> None:
    from ctower.metrics import scrape, total

    settings = settings_factory(sink_metrics_port=free_port())
    ensure_topics(settings)
    sink = ctower_process(settings, "sink", "sink")
    sink.wait_http(f"http://127.0.0.1:{settings.store_http_port}/ping")
    sink_metrics = f"http://127.0.0.1:{settings.sink_metrics_port}/metrics"
    sink.wait_http(sink_metrics)
    worker = ctower_process(settings, "worker", "worker")
    worker.wait_http(f"http://127.0.0.1:{settings.worker_web_port}/stats/")
    pids = (sink.proc.pid, worker.proc.pid)

    producer = KafkaProducer(
        bootstrap_servers=settings.bootstrap, acks="all", max_request_size=1_048_576,
        linger_ms=5,
    )
    expected: Counter[str] = Counter()
    malformed = 0
    inside: Counter[str] = Counter()
    for stream, key, (value, rejections, good) in hostile_messages(per_stream=860):
        producer.send(settings.topic(stream), key=key, value=value)
        malformed += 1
        inside[stream] += good
        expected.update(reason for _, reason in rejections)
    assert malformed >= 5000
    counter = itertools.count(5_000_000)
    for stream in STREAMS:
        for _ in range(1000 // len(STREAMS) + 1):
            event = valid(stream, next(counter))
            producer.send(settings.topic(stream), key=key_of(stream, event), value=dumps(event))
            inside[stream] += 1
    producer.flush(timeout=120)
    producer.close()

    def counted() -> Any:
        assert worker.alive(), worker.log_tail()
        assert sink.alive(), sink.log_tail()
        stats = worker_stats(settings)
        got = {stream: stats[stream]["events"] for stream in STREAMS}
        return got if got == dict(inside) else False

    poll(counted, 180, "the valid events were never all counted")
    client = open_store(settings, path_fallback=False)

    def dead_letters() -> Any:
        rows = client.query("SELECT reason, count() FROM dead_letters FINAL GROUP BY reason")
        got = {reason: int(n) for reason, n in rows.result_rows}
        return got if got == dict(expected) else (got, dict(expected))

    found = poll(lambda: (lambda r: r if isinstance(r, dict) else False)(dead_letters()), 120,
                 "dead letters never matched the malformed events")
    assert found == dict(expected)

    # /metrics tells the same: dead letters by reason, events in and out per stream
    metrics = worker_metrics(settings)
    by_reason = {reason: total(metrics, "ctower_dead_letters_total",
                               lambda labels, r=reason: labels["reason"] == r)
                 for reason in expected}
    assert by_reason == dict(expected)
    for stream in STREAMS:
        counted = total(metrics, "ctower_events_out_total", lambda x, s=stream: x["stream"] == s)
        read = total(metrics, "ctower_events_in_total", lambda x, s=stream: x["stream"] == s)
        assert counted == inside[stream] and read > counted, stream
    assert total(metrics, "ctower_gc_collections_total") > 0
    stored = scrape(sink_metrics)
    assert total(stored, "ctower_sink_rows_total",
                 lambda x: x["table"] == "dead_letters") >= sum(expected.values())
    assert total(stored, "ctower_sink_insert_seconds_count") >= 1
    assert total(stored, "ctower_sink_store_up") == 1
    too_large = client.query(
        "SELECT max(length(raw)), min(raw_length), count() FROM dead_letters FINAL "
        "WHERE reason = 'too_large'"
    ).first_row
    assert too_large[0] <= 64 * 1024 and too_large[1] > 900_000 and too_large[2] == 3 * len(STREAMS)

    for stream in STREAMS:  # the valid events are in the raw tables once each
        raw = int(client.query(f"SELECT count() FROM {stream}_events FINAL").first_row[0])
        assert raw == inside[stream], stream

    poll(lambda: committed_to_the_end(settings) == {}, 60, "a partition was left behind")
    assert (sink.proc.pid, worker.proc.pid) == pids and sink.alive() and worker.alive()
    for process in (worker, sink):
        log = process.log_tail(10**7)
        assert "Traceback" not in log, log[-4000:]
        assert "crashed" not in log.lower(), log[-4000:]


def test_a_dead_letter_kafka_refuses_holds_only_its_partition(
    settings_factory: Callable[..., Settings],
    ctower_process: Callable[..., Any],
    poll: Callable[..., Any],
) -> None:
    """The dead-letter topic refuses every record (max.message.bytes 64): the
    partition of the malformed event waits, uncommitted, with one log line; the
    other partitions go on. Once the topic takes records again the letter is
    written and the partition's events are counted, each once."""
    from kafka.admin import ConfigResource, ConfigResourceType

    from ctower.topics import partition_for

    # small thresholds: the held partition is stuck within 5 s (above Faust's commit
    # interval, 2.8 s, which any partition may wait for); one dead letter in 4 s is
    # 15 a minute, over 5
    settings = settings_factory(system_partition_stuck_seconds=5,
                                system_dead_letters_per_minute=5,
                                system_dead_letter_window_seconds=4)
    ensure_topics(settings)
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap)
    dead_topic = settings.topic("dead-letter")

    def dead_letter_limit(value: str) -> None:
        admin.alter_configs([ConfigResource(
            ConfigResourceType.TOPIC, dead_topic, configs={"max.message.bytes": value},
        )])

    dead_letter_limit("64")
    worker = ctower_process(settings, "worker", "worker")
    worker.wait_http(f"http://127.0.0.1:{settings.worker_web_port}/stats/")
    parts = settings.topic_partitions
    keys: dict[int, bytes] = {}
    for n in range(1000):
        keys.setdefault(partition_for(f"S{n}".encode(), parts), f"S{n}".encode())
    blocked, others = 0, [p for p in keys if p != 0]
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap, acks="all")
    topic = settings.topic("scan")

    def scan(n: int, partition: int) -> bytes:
        event = {**valid("scan", n), "store_id": keys[partition].decode()}
        return dumps(event)

    producer.send(topic, key=keys[blocked], value=b'{"not": "an event"}')
    for n in range(10):
        producer.send(topic, key=keys[blocked], value=scan(n, blocked))
        for partition in others:
            producer.send(topic, key=keys[partition], value=scan(1000 * partition + n, partition))
    producer.flush()

    def stats() -> dict[str, Any]:
        assert worker.alive(), worker.log_tail()
        return worker_stats(settings)

    poll(lambda: str(blocked) in stats()["dead_letter_outbox"]["scan-agent"][
        "blocked_partitions"], 60, "the partition never waited")
    poll(lambda: stats()["scan"]["events"] >= 10 * len(others), 60, "the others stopped too")
    time.sleep(3)  # a few seconds of retries: still waiting, still one line
    # the others are committed by Faust's next commit (every 2.8 s, later on a
    # loaded machine: in a full suite run 3 s were not always enough)
    lag: dict[str, int] = {}

    def others_committed() -> bool:
        lag.clear()
        lag.update(committed_to_the_end(settings))
        return not any(f"{topic}:{p}" in lag for p in others)

    poll(others_committed, 30, "the other partitions were never committed")
    assert lag.get(f"{topic}:{blocked}") == 11, lag  # nothing of it committed
    assert worker.log_tail(10**6).count("cannot write dead letters") == 1
    # the pipeline says so itself: a stuck partition, on /metrics and as an alert
    from ctower.metrics import total

    seen: list[Any] = []

    def stuck_alerted() -> bool:
        metrics = worker_metrics(settings)
        seen[:] = [(k, v) for k, v in metrics.items() if k[0] == "ctower_consumer_lag" and v]
        return total(metrics, "ctower_system_alerts_open",
                     lambda x: x["kind"] == "system_partition_stuck") == 1
    try:
        poll(stuck_alerted, 30, "the stuck partition was never alerted")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; lag seen: {seen}\n{worker.log_tail()}") from None
    metrics = worker_metrics(settings)
    assert total(metrics, "ctower_consumer_lag",
                 lambda x: x["topic"] == topic and x["partition"] == str(blocked)) == 11
    assert total(metrics, "ctower_dead_letters_total",
                 lambda x: x["reason"] == "missing_field") >= 1

    dead_letter_limit("1048588")
    poll(lambda: stats()["scan"]["events"] == 10 * (len(others) + 1), 60,
         "the partition never went on")
    poll(lambda: committed_to_the_end(settings) == {}, 60, "its offsets were never committed")
    outbox = stats()["dead_letter_outbox"]["scan-agent"]
    assert outbox["blocked_partitions"] == {} and outbox["written"] == 1
    consumer = KafkaConsumer(
        dead_topic, bootstrap_servers=settings.bootstrap, auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    letters = [json.loads(record.value) for record in consumer]
    consumer.close()
    admin.close()
    assert [(d["partition"], d["offset"], d["reason"]) for d in letters] == [
        (blocked, 0, "missing_field")
    ]
    assert "written after" in worker.log_tail(10**6)

    # each system alert resolved once its condition cleared, on ct.alerts like any other
    found: list[Any] = []

    def resolved() -> Any:
        alerts = [a for a in alerts_on_the_topic(settings) if a["kind"].startswith("system_")]
        found[:] = [(a["kind"], a["status"], a["key"]) for a in alerts]
        states = sorted((a["kind"], a["status"]) for a in alerts)
        wanted = [("system_dead_letter_rate", "open"), ("system_dead_letter_rate", "resolved"),
                  ("system_partition_stuck", "open"), ("system_partition_stuck", "resolved")]
        return alerts if states == wanted else None
    try:
        alerts = poll(resolved, 30, "the system alerts never opened and resolved once each")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {found}") from None
    stuck = [a for a in alerts if a["kind"] == "system_partition_stuck"]
    assert stuck[0]["alert_id"] == stuck[1]["alert_id"]
    assert stuck[0]["evidence"]["topic"] == topic
    assert stuck[0]["evidence"]["partition"] == blocked
