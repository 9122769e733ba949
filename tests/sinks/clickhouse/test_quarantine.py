"""Bad input never stops the sink (issue 11).

Hostile bytes of every kind (not JSON, invalid UTF-8, JSON nested 5,000
deep, wrong types, values outside their column's range, 900 kB strings, rows
the store itself refuses) are produced to a real broker on the raw event
topics, ``aggregates``, ``dead-letter`` and a control topic, interleaved
with valid records. The sink must keep running in the same process, store
every valid record, quarantine every hostile one with its reason, and commit
past them all, so a restart neither quarantines again nor duplicates. A store
that cannot be reached for a while must quarantine nothing. The sink also
runs as its own process (``ctower sink``) on hostile input, the way it used
to die seconds after each restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import (
    DatabaseError,
    DataError,
    OperationalError,
    ProgrammingError,
)
from kafka import KafkaAdminClient, KafkaProducer

from ctower.devstack.store_front.server import StoreHttpServer
from ctower.schemas.migrations import apply_migrations
from ctower.settings import Settings
from ctower.sinks.clickhouse.columns import Buffer, Chunk, TableWriter
from ctower.sinks.clickhouse.quarantine import (
    QUARANTINE_RAW_BYTES,
    QUARANTINE_REASONS,
    failure_kind,
    split_json_array,
)
from ctower.sinks.clickhouse.sink import ClickHouseSink
from ctower.store import open_store

MINUTE = 60_000
Record = tuple[str, bytes | None, list[tuple[str, bytes]] | None]

DEEP_OBJECT = b'{"a":' * 5000 + b"1" + b"}" * 5000
DEEP_ARRAY = b"[" * 5000 + b"]" * 5000
BIG = "x" * 900_000


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def produce(bootstrap: str, records: list[Record]) -> list[tuple[str, int, int]]:
    """Send, wait for every ack, return (topic, partition, offset) per record."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                             max_request_size=2 << 20)
    try:
        futures = [producer.send(t, value=v, key=None if v is not None else b"tombstone",
                                 headers=h or []) for t, v, h in records]
        producer.flush()
        meta = [f.get(timeout=30) for f in futures]
    finally:
        producer.close()
    return [(m.topic, m.partition, m.offset) for m in meta]


def committed(bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    finally:
        admin.close()
    return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()}


def consume(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes]]:
    """Every (key, value) on ``topic``, from the start."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=1500)
    try:
        return [(record.key, record.value) for record in consumer]
    finally:
        consumer.close()


async def run_until(sink: ClickHouseSink, stop: asyncio.Event, task: asyncio.Task[None],
                    condition: Callable[[], bool], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if task.done():
            task.result()
            raise AssertionError(f"the sink stopped while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {sink.stats}")
        await asyncio.sleep(0.05)


async def drain(sink: ClickHouseSink, messages: int, timeout: float = 90) -> None:
    """Run the sink until it has consumed ``messages`` and written them all;
    it must still be running then (the same task, never restarted)."""
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    try:
        await run_until(sink, stop, task,
                        lambda: sink.stats.messages >= messages and sink.pending_rows == 0,
                        f"{messages} messages", timeout)
        assert not task.done(), "the sink stopped"
    finally:
        stop.set()
        await task


def scan(i: int | str, now: int, **extra: Any) -> dict[str, Any]:
    return {"scan_id": f"sc-{i}", "ts": now, "store_id": "S1", "sku": "K1", "action": "view",
            **extra}


def order(i: int | str, now: int, **extra: Any) -> dict[str, Any]:
    return {"order_id": f"o-{i}", "ts": now, "member_id": "M1", "store_id": "S1",
            "channel": "mini_program", "fulfillment": "in_store",
            "lines": [{"sku": "K1", "qty": 1, "unit_price": 2.5}], "amount": 2.5,
            "status": "paid", **extra}


class Cases:
    """Messages to send, with what each must become: rows of a table, or
    quarantine rows (envelope index -> the reasons accepted for it)."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.expected: list[dict[int, set[str]]] = []

    def valid(self, topic: str, value: bytes, headers: list[tuple[str, bytes]] | None = None,
              **bad: set[str]) -> None:
        self.records.append((topic, value, headers))
        self.expected.append({int(k.removeprefix("i")): v for k, v in bad.items()})

    def hostile(self, topic: str, value: bytes | None, reasons: set[str],
                headers: list[tuple[str, bytes]] | None = None, index: int = -1) -> None:
        assert reasons <= set(QUARANTINE_REASONS), reasons
        self.records.append((topic, value, headers))
        self.expected.append({index: reasons})


def hostile_cases(t: Callable[[str], str], now: int) -> tuple[Cases, dict[str, set[str]]]:
    """Every kind of bad input on every kind of topic, between valid records.
    Returns the cases and the keys each table must hold afterwards."""
    c = Cases()
    stored: dict[str, set[str]] = {"scan_events": set(), "order_events": set(),
                                   "inventory_events": set(), "pickup_events": set(),
                                   "store_minute": set(), "late_events": set(),
                                   "dead_letters": set(), "alert_acks": set()}

    def good_scan(i: int | str) -> None:
        c.valid(t("scan"), dumps(scan(i, now)))
        stored["scan_events"].add(f"sc-{i}")

    # ---- raw events
    good_scan(1)
    c.hostile(t("scan"), b'{"scan_id": "sc-cut", "ts": ', {"not_json"})
    c.hostile(t("scan"), dumps(scan("utf", now)).replace(b'"sc-utf"', b'"\xff\xfe"'),
              {"not_utf8"})
    good_scan(2)
    c.hostile(t("scan"), DEEP_OBJECT, {"too_deep"})
    c.hostile(t("scan"), DEEP_ARRAY, {"not_an_object", "too_deep"}, index=0)
    # An envelope with one element nested 5,000 deep: the other two are stored.
    c.valid(t("scan"), b"[" + dumps(scan("e0", now)) + b"," + DEEP_OBJECT + b","
            + dumps(scan("e2", now)) + b"]", i1={"too_deep"})
    stored["scan_events"] |= {"sc-e0", "sc-e2"}
    c.hostile(t("scan"), dumps(scan("type", now) | {"scan_id": 5}), {"wrong_type"})
    c.hostile(t("scan"), dumps(scan(BIG, now)), {"out_of_range", "too_large"})
    c.hostile(t("scan"), None, {"not_json"})  # a tombstone
    good_scan(3)
    c.valid(t("order"), dumps(order(1, now)))
    stored["order_events"].add("o-1:paid")
    c.hostile(t("order"), dumps(order("fen", now, amount=1e17)), {"out_of_range"})  # > Int64 fen
    c.hostile(t("order"), dumps(order("inf", now, amount=1.7e308)), {"out_of_range"})  # inf fen
    c.hostile(t("inventory"), dumps({"location_id": "W1", "sku": "K1", "ts": now,
                                     "kind": "receipt", "qty": 2**63}), {"out_of_range"})
    c.valid(t("inventory"), dumps({"location_id": "W1", "sku": "K1", "ts": now,
                                   "kind": "receipt", "qty": 3}))
    stored["inventory_events"].add(f"W1:K1:receipt:{now}:3")
    c.hostile(t("pickup"), dumps({"order_id": "o-9", "ts": now, "store_id": "S1",
                                  "state": "booked", "slot_start": "9999-12-31T00:00:00+00:00"}),
              {"out_of_range"})

    # ---- aggregates: closed windows and late events
    w = now - now % MINUTE - 10 * MINUTE
    closed = [("kind", b"closed_window")]

    def window(store: str, **extra: Any) -> dict[str, Any]:
        return {"aggregate": "store_minute", "dims": [store], "window_start": w,
                "window_end": w + MINUTE, "values": [1] * 11, "source_topic": t("scan"),
                "partition": 0, "through_offset": 5, "closed_at": now, **extra}

    c.valid(t("aggregates"), dumps(window("S1")), closed)
    stored["store_minute"].add("S1")
    c.hostile(t("aggregates"), b'{"aggregate": "store_minute", "dims": [', {"not_json"}, closed)
    c.hostile(t("aggregates"), DEEP_OBJECT, {"too_deep"}, closed)
    c.hostile(t("aggregates"), dumps(window("S2")), {"unknown_value"}, [("kind", b"no_such_kind")])
    c.hostile(t("aggregates"), dumps(window("S3", aggregate="no_such")), {"unknown_value"},
              closed)
    c.hostile(t("aggregates"), dumps(window("S4", dims=[])), {"wrong_shape"}, closed)
    c.hostile(t("aggregates"), dumps(window("S5", values=[2**64] + [1] * 10)), {"out_of_range"},
              closed)
    c.hostile(t("aggregates"), dumps(window("S6", window_start=10**15)), {"out_of_range"}, closed)
    c.valid(t("aggregates"), dumps([window("S7"), window("S8", values=[2**63] * 11)]), closed,
            i1={"out_of_range"})
    stored["store_minute"].add("S7")
    late = {"aggregate": "store_minute", "dims": ["S1"], "window_start": w - MINUTE,
            "source_topic": t("scan"), "partition": 0, "offset": 17, "index": 2,
            "event_ts": w - 30_000, "watermark": w + 5_000}
    c.valid(t("aggregates"), dumps(late), [("kind", b"late_event")])
    stored["late_events"].add("17")
    c.hostile(t("aggregates"), dumps(late | {"offset": "x"}), {"wrong_type"},
              [("kind", b"late_event")])

    # ---- dead letters
    dead = {"source_topic": t("scan"), "partition": 0, "offset": 41, "index": -1,
            "reason": "not_json", "detail": "cut", "raw": "", "received_at": now}
    c.valid(t("dead-letter"), dumps(dead))
    stored["dead_letters"].add("41")
    c.valid(t("dead-letter"), dumps(dead | {"offset": 42, "detail": BIG}))  # 900 kB: stored
    stored["dead_letters"].add("42")
    c.hostile(t("dead-letter"), dumps(dead | {"partition": 2**40}), {"out_of_range"})
    c.hostile(t("dead-letter"), b"\xff\xfe\xfd", {"not_utf8"})
    c.hostile(t("dead-letter"), DEEP_ARRAY, {"not_an_object", "too_deep"}, index=0)
    c.hostile(t("dead-letter"), b"[]", {"empty_batch"})

    # ---- a control topic; the store refuses notes over 100 kB (see the test)
    ack = {"alert_id": "a1", "acked_by": "op", "ts": now}
    c.valid(t("alert-acks"), dumps(ack))
    stored["alert_acks"].add("a1")
    c.valid(t("alert-acks"), dumps([ack | {"alert_id": "a2"}, ack | {"alert_id": "a3", "note": BIG},
                                    ack | {"alert_id": "a4"}]), i1={"refused_by_store"})
    stored["alert_acks"] |= {"a2", "a4"}
    c.hostile(t("alert-acks"), dumps(ack | {"alert_id": "a5", "ts": 10**16}), {"out_of_range"})
    c.hostile(t("alert-acks"), dumps(ack | {"acked_by": 5}), {"wrong_type"})
    c.hostile(t("alert-acks"), b'{"alert_id": "a6", "acked_by": "op", "ts": 1e400}',
              {"out_of_range"})
    c.hostile(t("alert-acks"), DEEP_OBJECT, {"too_deep"})
    c.valid(t("alert-acks"), dumps(ack | {"alert_id": "a7"}))
    stored["alert_acks"].add("a7")
    good_scan(4)
    return c, stored


STORED_KEYS = {
    "scan_events": "scan_id", "order_events": "event_key", "inventory_events": "event_key",
    "pickup_events": "event_key", "store_minute": "store_id", "late_events": "toString(offset)",
    "dead_letters": "toString(offset)", "alert_acks": "alert_id",
}


def stored_keys(client: Client, table: str) -> set[str]:
    column = STORED_KEYS[table]
    return {r[0] for r in client.query(f"SELECT {column} FROM {table} FINAL").result_rows}


@pytest.mark.kafka
def test_hostile_bytes_on_every_topic_end_stored_or_quarantined(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(sink_batch_rows=20, sink_batch_seconds=0.2)
    now = int(time.time() * 1000)
    cases, stored = hostile_cases(settings.topic, now)
    sent = produce(settings.bootstrap, cases.records)
    expected = {(*sent[i], index): reasons
                for i, by_index in enumerate(cases.expected) for index, reasons in by_index.items()}

    client = open_store(settings, owner=True)
    try:
        apply_migrations(client)
        client.command("ALTER TABLE alert_acks ADD CONSTRAINT short_note "
                       "CHECK length(note) < 100000")
        sink = ClickHouseSink(settings, client)
        asyncio.run(drain(sink, len(cases.records)))

        for table, keys in stored.items():
            assert stored_keys(client, table) == keys, table
        assert client.query("SELECT max(length(detail)) FROM dead_letters FINAL"
                            ).result_rows == [(len(BIG),)]

        rows = client.query(
            "SELECT source_topic, partition, offset, index, reason, length(raw), raw_length, "
            "raw_sha256 FROM quarantine FINAL").result_rows
        found = {(topic, p, o, i): reason for topic, p, o, i, reason, *_ in rows}
        assert found.keys() == expected.keys()
        wrong = {k: (found[k], expected[k]) for k in found if found[k] not in expected[k]}
        assert not wrong, wrong
        assert sink.stats.quarantined == Counter(found.values())
        for *_, kept, length, digest in rows:
            assert kept == min(length, QUARANTINE_RAW_BYTES) and len(digest) == 64
        # The deep message: a prefix kept, the whole described.
        deep_at = sent[[r[1] for r in cases.records].index(DEEP_OBJECT)]
        assert client.query(
            "SELECT length(raw), raw_length, raw_sha256, raw = {prefix:String} FROM quarantine "
            "FINAL WHERE source_topic = {t:String} AND partition = {p:Int32} "
            "AND offset = {o:Int64}",
            parameters={"t": deep_at[0], "p": deep_at[1], "o": deep_at[2],
                        "prefix": DEEP_OBJECT[:QUARANTINE_RAW_BYTES].decode()},
        ).result_rows == [(QUARANTINE_RAW_BYTES, len(DEEP_OBJECT),
                           hashlib.sha256(DEEP_OBJECT).hexdigest(), True)]
        # The refused record, re-encoded (and cut: its note is 900 kB).
        refused = client.query("SELECT target_table, startsWith(raw, '{\"alert_id\":\"a3\"') "
                               "FROM quarantine FINAL WHERE reason = 'refused_by_store'")
        assert refused.result_rows == [("alert_acks", True)]

        # Everything was committed, the hostile messages too.
        group = committed(settings.bootstrap, sink.group_id)
        for topic, partition, offset in sent:
            assert group[(topic, partition)] > offset, (topic, partition, offset)

        # A restart reads nothing again: no second quarantine, no duplicate.
        before = {table: client.query(f"SELECT count() FROM {table}").result_rows[0][0]
                  for table in [*stored, "quarantine"]}
        produce(settings.bootstrap, [(settings.topic("scan"), dumps(scan("after", now)), None)])
        again = ClickHouseSink(settings, client)
        asyncio.run(drain(again, 1))
        assert again.stats.messages == 1 and again.stats.quarantined == {}
        after = {table: client.query(f"SELECT count() FROM {table}").result_rows[0][0]
                 for table in [*stored, "quarantine"]}
        assert after == before | {"scan_events": before["scan_events"] + 1}
    finally:
        client.close()


@pytest.mark.kafka
def test_unreachable_store_quarantines_nothing(settings_factory: Callable[..., Settings]) -> None:
    """The sink writes through the store's HTTP front, which goes away for a
    few seconds: the inserts wait and retry, and nothing is quarantined. The
    sink says so itself (small thresholds): ``system_store_unreachable`` and
    ``system_sink_behind`` go to ct.alerts, and resolve once the store is back;
    its /metrics show the store down, then the rows."""
    from ctower.metrics import exposition, sink_registry

    settings = settings_factory(sink_batch_rows=50, sink_batch_seconds=0.2,
                                system_store_unreachable_seconds=0.5,
                                system_sink_behind_seconds=1.5)
    t = settings.topic
    now = int(time.time() * 1000)
    engine = open_store(settings, owner=True)
    apply_migrations(engine)
    front = StoreHttpServer(settings, engine_client=engine).start()
    http = open_store(settings)  # finds the front: a ClickHouse HTTP client
    assert type(http).__name__ == "HttpClient"

    async def scenario(sink: ClickHouseSink) -> StoreHttpServer:
        nonlocal front
        stop = asyncio.Event()
        task = asyncio.create_task(sink.run(stop))
        try:
            first = [(t("scan"), dumps(scan(i, now)), None) for i in range(10)]
            await asyncio.to_thread(produce, settings.bootstrap, first)
            await run_until(sink, stop, task, lambda: sink.stats.rows["scan_events"] == 10,
                            "the first scans")
            front.stop()  # the store goes away
            during = [(t("scan"), dumps(scan(i, now)), None) for i in range(10, 30)]
            during += [(t("alert-acks"), dumps({"alert_id": f"a{i}", "acked_by": "op",
                                                "ts": now}), None) for i in range(5)]
            await asyncio.to_thread(produce, settings.bootstrap, during)
            await run_until(sink, stop, task, lambda: sink.stats.messages == 35,
                            "the messages sent during the outage")
            await asyncio.sleep(2.5)  # inserts fail and wait meanwhile
            assert sink.stats.rows["scan_events"] == 10 and sink.pending_rows > 0
            assert b"ctower_sink_store_up 0.0" in exposition(registry)
            await run_until(sink, stop, task, lambda: sink.system_alerts.open_by_kind() == {
                "system_store_unreachable": 1, "system_sink_behind": 1}, "the system alerts")
            front = StoreHttpServer(settings, engine_client=engine).start()  # back
            await run_until(sink, stop, task, lambda: sink.pending_rows == 0, "the retries")
            await run_until(sink, stop, task, lambda: sink.system_alerts.open_by_kind() == {},
                            "the system alerts' resolutions")
            assert not task.done()
        finally:
            stop.set()
            await task
        return front

    try:
        sink = ClickHouseSink(settings, http)
        registry = sink_registry(sink)
        asyncio.run(scenario(sink))
        assert sink.stats.quarantined == {} and sink.stats.refused_inserts == 0
        # both opened during the outage and resolved after it, on ct.alerts
        alerts = [json.loads(value) for _, value in consume(settings.bootstrap, t("alerts"))]
        assert sorted((a["kind"], a["status"]) for a in alerts) == [
            ("system_sink_behind", "open"), ("system_sink_behind", "resolved"),
            ("system_store_unreachable", "open"), ("system_store_unreachable", "resolved")]
        down = [a for a in alerts if a["kind"] == "system_store_unreachable"]
        assert down[0]["alert_id"] == down[1]["alert_id"] and down[0]["severity"] == "critical"
        text = exposition(registry).decode()
        assert 'ctower_sink_rows_total{table="scan_events"} 30.0' in text
        assert "ctower_sink_store_up 1.0" in text and "ctower_sink_insert_seconds_count" in text
        assert sink.stats.rows["scan_events"] == 30 and sink.stats.rows["alert_acks"] == 5
        assert engine.query("SELECT count() FROM scan_events FINAL").result_rows == [(30,)]
        assert engine.query("SELECT count() FROM alert_acks FINAL").result_rows == [(5,)]
        assert engine.query("SELECT count() FROM quarantine").result_rows == [(0,)]
        group = committed(settings.bootstrap, sink.group_id)
        assert sum(v for (topic, _), v in group.items() if topic == t("scan")) == 30
    finally:
        http.close()
        front.stop()
        engine.close()


# ------------------------------------------------------------ the process


def sink_process(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    """``ctower sink`` as its own process (through the click command)."""
    env = dict(os.environ)
    env.update({
        "PYTHONSAFEPATH": "1",
        "CTOWER_KAFKA_BOOTSTRAP": settings.bootstrap,
        "CTOWER_TOPIC_PREFIX": settings.topic_prefix,
        "CTOWER_APP_ID": settings.app_id,
        "CTOWER_DATA_DIR": str(settings.data_dir),
        "CTOWER_STORE_HTTP_PORT": str(settings.store_http_port),
        "CTOWER_SINK_BATCH_SECONDS": "0.2",
    })
    code = "import sys; from ctower.sinks.clickhouse.command import sink; sink(sys.argv[1:])"
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-c", code], stdout=out,
                                stderr=subprocess.STDOUT, env=env)


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the sink exited ({proc.returncode}) waiting for {what}:\n"
                                 f"{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


@pytest.mark.kafka
def test_the_sink_process_lives_through_hostile_input_and_restarts_clean(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory()
    t = settings.topic
    now = int(time.time() * 1000)
    records: list[Record] = [
        (t("scan"), dumps(scan(1, now)), None),
        (t("scan"), DEEP_OBJECT, None),
        (t("aggregates"), b'{"aggregate": "store_minute", "dims": [',
         [("kind", b"closed_window")]),
        (t("dead-letter"), dumps({"source_topic": "x", "partition": 2**40, "offset": 1,
                                  "index": -1, "reason": "not_json", "detail": "",
                                  "raw": "", "received_at": now}), None),
        (t("alert-acks"), dumps({"alert_id": "a", "acked_by": "op", "ts": 10**16}), None),
        (t("scan"), dumps(scan(2, now)), None),
    ]
    sent = produce(settings.bootstrap, records)
    group = f"{settings.app_id}-sink"
    log = tmp_path / "sink.log"

    def all_committed() -> bool:
        done = committed(settings.bootstrap, group)
        return all(done.get((topic, p), -1) > o for topic, p, o in sent)

    first = sink_process(settings, log)
    try:
        started = time.monotonic()
        wait_for(all_committed, 120, "every message to be committed", first, log)
        # It used to die some seconds after each start: give it the time to.
        wait_for(lambda: time.monotonic() - started > 8, 30, "8 s of life", first, log)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    text = log.read_text()
    assert "quarantined 4 (not_json 1, out_of_range 2, too_deep 1)" in text, text[-3000:]

    second = sink_process(settings, log)
    try:
        wait_for(lambda: log.read_text().count("sink assigned") >= 2, 90, "the restart",
                 second, log)
        time.sleep(3)
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    last = log.read_text().rsplit("sink stopped:", 1)[1].splitlines()[0]
    assert last.strip().startswith("0 rows") and "quarantined 0" in last, last

    client = open_store(settings, owner=True)
    try:
        assert client.query("SELECT count(), uniqExact(source_topic, offset) FROM quarantine"
                            ).result_rows == [(4, 4)]
        assert client.query("SELECT count() FROM scan_events").result_rows == [(2,)]
    finally:
        client.close()


# ------------------------------------------------------------ the parts


def test_split_json_array_finds_elements_without_recursion() -> None:
    assert split_json_array(b' [1, {"a": [2, "],"]}, "x\\"]", [[]] ] ') == [
        b"1", b'{"a": [2, "],"]}', b'"x\\"]"', b"[[]]"]
    assert split_json_array(b"[" + DEEP_OBJECT + b", 2]") == [DEEP_OBJECT, b"2"]
    assert split_json_array(b"[]") == []
    for not_an_array in (b'{"a": 1}', b"[1, 2", b"[1] 2", b"", b'"[1]"'):
        assert split_json_array(not_an_array) is None, not_an_array


def test_failure_kind_blames_the_data_only_when_the_store_answered() -> None:
    assert failure_kind(OperationalError("connection refused")) == "outage"
    assert failure_kind(ConnectionRefusedError()) == "outage"
    assert failure_kind(TimeoutError()) == "outage"
    assert failure_kind(ProgrammingError("the client has been closed")) == "outage"
    assert failure_kind(DatabaseError("Code: 241. MEMORY_LIMIT_EXCEEDED", code=241)) == "outage"
    assert failure_kind(DatabaseError("Code: 252. TOO_MANY_PARTS", code=252)) == "outage"
    assert failure_kind(DatabaseError("HTTP 502 from a proxy", code=None)) == "outage"
    assert failure_kind(DatabaseError("Code: 469. VIOLATED_CONSTRAINT", code=469)) == "refused"
    assert failure_kind(DatabaseError("Code: 27. CANNOT_PARSE_INPUT", code=27)) == "refused"
    assert failure_kind(DataError("Unable to create native array")) == "data"
    assert failure_kind(OverflowError("int too large")) == "data"


def test_prepare_finds_the_rows_that_do_not_fit_their_columns(store: Client) -> None:
    apply_migrations(store)
    from ctower.schemas.control import AlertAck, DeadLetter

    acks = TableWriter("alert_acks", AlertAck, {}).bind(store)
    now = int(time.time() * 1000)
    records = [AlertAck(alert_id=f"a{i}", acked_by="op", ts=now) for i in range(6)]
    records[1] = AlertAck(alert_id="a1", acked_by="op", ts=10**16)  # year 318857
    records[3] = AlertAck(alert_id="a3", acked_by=5, ts=now)  # type: ignore[arg-type]
    records[4] = AlertAck(alert_id="a4", acked_by="op", ts=2**70)
    chunk = Chunk(records, np.zeros(6, np.int32), np.arange(6, dtype=np.int64), "t",
                   np.full(6, -1))
    good, table, bad = acks.prepare(chunk)
    assert [r.alert_id for r in good.records] == ["a0", "a2", "a5"]
    assert table.num_rows == 3 and list(good.offsets) == [0, 2, 5]
    assert [(row, reason) for row, reason, _ in bad] == [
        (1, "out_of_range"), (3, "wrong_type"), (4, "out_of_range")]
    assert "ts" in bad[0][2] and "acked_by" in bad[1][2]
    assert acks.prepare_row_by_row(chunk)[2] == bad
    only_bad = chunk.select([1])
    good, table, bad = acks.prepare(only_bad)
    assert good.records == [] and table.num_rows == 0 and bad[0][:2] == (0, "out_of_range")

    letters = TableWriter("dead_letters", DeadLetter, {}).bind(store)
    letter = DeadLetter(source_topic="t", partition=2**31, offset=0, index=-1, reason="x",
                        detail="", raw=b"", received_at=now)
    good, table, bad = letters.prepare(Chunk([letter], np.zeros(1, np.int32),
                                              np.zeros(1, np.int64), "t"))
    assert good.records == [] and table.num_rows == 0
    assert [(row, reason) for row, reason, _ in bad] == [(0, "out_of_range")]


def test_buffer_keeps_each_records_envelope_index() -> None:
    buf = Buffer("t", "topic")
    buf.add(["single"], 0, 10)
    buf.add(["e0", "e1", "e2"], 0, 11, range(3))
    buf.add(["e1", "e3"], 1, 5, [1, 3])  # the envelope's elements 0 and 2 were bad
    buf.add(["late"], 0, 3)  # a quarantined row may come after later offsets
    assert buf.first == {0: 3, 1: 5}
    (chunk,) = buf.take(100)
    assert list(chunk.indexes) == [-1, 0, 1, 2, 1, 3, -1]  # type: ignore[arg-type]
    assert list(chunk.offsets) == [10, 11, 11, 11, 5, 5, 3]
    picked = chunk.select([2, 5])
    assert picked.records == ["e1", "e3"] and picked.index(1) == 3
