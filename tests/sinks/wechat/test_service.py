"""``ctower alerts deliver`` as a real process, with the project's Kafka
broker, the fake webhook, and (for the crash test) the real sink and
embedded ClickHouse. Alerts are produced to ct.alerts by the test itself.

- A storm of 500 alerts within one rate window: no robot ever gets more
  than 20 messages in any window (the fake webhook enforces the same window
  and would answer 45009), and every alert is accounted for exactly once,
  in its own message or in a digest's count.
- SIGKILL during delivery, then a restart: every alert is delivered at least
  once, and ClickHouse shows every attempt of every delivery.
- SIGKILL while a request is in the air, after 18 answered ones, then a
  restart within the minute: the request in the air counts against the
  robot's 20 (the robot may have counted it), so the restart sends one more
  message, not two, and never gets 45009.
- Bad bytes between valid alerts on ct.alerts (not JSON, invalid UTF-8, JSON
  nested 5,000 deep, JSON that is no alert, a tombstone, a value of 900 KB):
  every valid alert is delivered, each bad record is logged once, counted
  and dead-lettered, and the service stays up.

The rate window is shortened to a few seconds (``alert_rate_window_seconds``)
on both sides, the service and the fake webhook, so the limit tested is the
real one - 20 per window - without waiting minutes.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from kafka import KafkaConsumer, KafkaProducer

from ctower.schemas.control import Alert, DeadLetter
from ctower.settings import Settings
from ctower.sinks.wechat.outbox import DELIVERED, Outbox
from ctower.store import open_store
from ctower.topics import ensure_topics

pytestmark = pytest.mark.kafka

ROUTES = """
[[routes]]
name = "stock"
kinds = ["stock_out"]

[fallback]
robots = ["ops"]
"""

KIND_LABELS = {"缺货": "stock_out", "需求激增": "demand_spike"}
SINGLE = re.compile(r"告警 (a\d+) · 投递 (d[0-9a-f]+)")
DIGEST = re.compile(r"告警汇总 (g[0-9a-f]+) · (\d+)")
BY_KIND = re.compile(r"按类型：(.*)")

encode = msgspec.json.Encoder().encode


def produce(settings: Settings, alerts: list[Alert], per_second: float | None = None) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap, acks="all", linger_ms=5)
    try:
        started = time.monotonic()
        for n, alert in enumerate(alerts):
            producer.send(settings.topic("alerts"), key=alert.alert_id.encode(),
                          value=encode(alert))
            if per_second:
                ahead = n / per_second - (time.monotonic() - started)
                if ahead > 0:
                    producer.flush()
                    time.sleep(ahead)
        producer.flush()
    finally:
        producer.close()


def content(request: dict[str, Any]) -> str:
    body = request["body"]
    return str(body[body["msgtype"]]["content"])


def accounted(requests: list[dict[str, Any]]) -> tuple[Counter[str], Counter[str]]:
    """(alert id -> times sent singly, kind -> alerts in digests) from what
    the robots received with errcode 0."""
    singles: Counter[str] = Counter()
    digested: Counter[str] = Counter()
    for request in requests:
        text = content(request)
        digest = DIGEST.search(text)
        if digest:
            counts = dict(part.rsplit(" ", 1) for part in BY_KIND.search(text).group(1).split("，"))
            assert sum(int(n) for n in counts.values()) == int(digest.group(2))
            for label, n in counts.items():
                digested[KIND_LABELS[label]] += int(n)
            continue
        single = SINGLE.search(text)
        assert single, text
        singles[single.group(1)] += 1
    return singles, digested


def test_a_storm_of_500_alerts_keeps_20_per_window_and_accounts_for_every_alert(
    settings_factory: Callable[..., Settings], ctower_process: Callable[..., Any],
    webhook_server: Any, make_alert: Callable[..., Alert], poll: Callable[..., Any],
    write_routes: Callable[[str], Path], write_secrets: Callable[[dict[str, str]], Path],
) -> None:
    window = 6.0
    webhook_server.per_window, webhook_server.window = 20, window
    urls = {"stock": webhook_server.add_key("k-storm-stock"),
            "ops": webhook_server.add_key("k-storm-ops")}
    settings = settings_factory(
        alert_routes_file=write_routes(ROUTES), webhook_secrets_file=write_secrets(urls),
        alert_rate_per_minute=20, alert_rate_window_seconds=window,
        alert_retry_base_seconds=0.2, alert_retry_max_seconds=1.0,
    )
    ensure_topics(settings)
    deliver = ctower_process(settings, "deliver", "alerts", "deliver")
    kinds = ["stock_out"] * 300 + ["demand_spike"] * 200
    severities = ["info", "warning", "critical"]
    alerts = [make_alert(kind=kind, severity=severities[n % 3]) for n, kind in enumerate(kinds)]
    alerts = alerts[::2] + alerts[1::2]  # the two robots' alerts interleaved
    produce(settings, alerts, per_second=500 / (window * 0.8))  # all within one window

    want = Counter(kinds)

    def all_accounted() -> Any:
        assert deliver.alive(), deliver.log_tail()
        singles, digested = accounted(webhook_server.delivered())
        got = Counter({kind: digested[kind] for kind in want})
        by_id = {a.alert_id: a.kind for a in alerts}
        for alert_id in singles:
            got[by_id[alert_id]] += 1
        return (singles, digested) if got == want else False

    singles, digested = poll(all_accounted, 90, "not every alert reached a robot", every=0.5)
    assert max(singles.values()) == 1  # nothing sent twice
    assert digested, "a storm this size must be rolled up"
    for key in ("k-storm-stock", "k-storm-ops"):
        assert 0 < webhook_server.max_in_window(key) <= 20
    assert 45009 not in webhook_server.answers()
    assert len(webhook_server.received) < 2 * 20 * 3  # a few windows' worth, not 500
    # the outbox agrees: every (alert, robot) item delivered
    outbox = Outbox(settings.data_dir / "alerts" / "outbox.sqlite3")
    try:
        poll(lambda: outbox.counts() == {DELIVERED: 500}, 30, "outbox not all delivered")
    finally:
        outbox.close()
    deliver.stop()
    assert deliver.proc is not None and deliver.proc.returncode == 0, deliver.log_tail()
    assert "k-storm-stock" not in deliver.log_path.read_text()  # keys never logged


def test_sigkill_during_delivery_then_restart_delivers_everything_and_records_each_attempt(
    settings_factory: Callable[..., Settings], ctower_process: Callable[..., Any],
    webhook_server: Any, make_alert: Callable[..., Alert], poll: Callable[..., Any],
    write_routes: Callable[[str], Path], write_secrets: Callable[[dict[str, str]], Path],
) -> None:
    webhook_server.delay = 0.15  # slow answers: the kill lands while sends are in flight
    webhook_server.per_window = 1000  # rates are the storm test's business
    urls = {"stock": webhook_server.add_key("k-crash-stock"),
            "ops": webhook_server.add_key("k-crash-ops")}
    settings = settings_factory(
        alert_routes_file=write_routes(ROUTES), webhook_secrets_file=write_secrets(urls),
        alert_rate_per_minute=1000, sink_batch_seconds=0.3,
        alert_retry_base_seconds=0.2, alert_retry_max_seconds=1.0,
    )
    ensure_topics(settings)
    sink = ctower_process(settings, "sink", "sink")
    sink.wait_http(f"http://127.0.0.1:{settings.store_http_port}/ping")
    deliver = ctower_process(settings, "deliver", "alerts", "deliver")
    webhook_server.fail("k-crash-stock", (200, -1), (500, None))  # some retries to record
    alerts = [make_alert(kind="stock_out" if n % 2 else "demand_spike") for n in range(60)]
    produce(settings, alerts)
    poll(lambda: len(webhook_server.delivered()) >= 15, 60,
         "delivery never got going:\n" + deliver.log_tail())
    deliver.kill()
    killed_at = len(webhook_server.received)
    assert killed_at < 62, "everything was sent before the kill: nothing tested"
    restarted = ctower_process(settings, "deliver-again", "alerts", "deliver")
    ids = {a.alert_id for a in alerts}

    def all_delivered() -> Any:
        assert restarted.alive(), restarted.log_tail()
        sent = {m.group(1) for r in webhook_server.delivered()
                if (m := SINGLE.search(content(r)))}
        return sent >= ids

    poll(all_delivered, 90, "not every alert was delivered after the restart")
    # what the robots got, per delivery id (every request carries it)
    received: Counter[str] = Counter()
    for request in webhook_server.received:
        match = SINGLE.search(content(request))
        assert match, content(request)
        received[match.group(2)] += 1
    client = open_store(settings, path_fallback=False)

    def attempts() -> Any:
        rows = client.query(
            "SELECT delivery_id, alert_id, groupArray((attempt, result)) FROM "
            "(SELECT * FROM alert_deliveries FINAL ORDER BY attempt) GROUP BY delivery_id, "
            "alert_id"
        ).result_rows
        found = {d: (a, sorted(tuple(x) for x in tries)) for d, a, tries in rows}
        done = {a for a, tries in found.values() if tries and tries[-1][1] == "delivered"}
        return found if done >= ids else False

    found = poll(attempts, 90, "ClickHouse never showed every delivery")
    assert {a for a, _ in found.values()} == ids
    for delivery, (_, tries) in found.items():
        numbers = [n for n, _ in tries]
        assert numbers == list(range(1, len(numbers) + 1)), tries  # no attempt missing
        assert tries[-1][1] == "delivered"
        # each request the robot got is an attempt on record (a crashed attempt
        # may not have reached it)
        assert received[delivery] <= len(tries), (delivery, tries, received[delivery])
        assert {r for _, r in tries} <= {"delivered", "retry", "crashed"}
    results = Counter(r for _, tries in found.values() for _, r in tries)
    assert results["retry"] >= 2
    assert results["crashed"] >= 1, "the kill should have caught a send in flight"
    health = client.query(
        "SELECT route, last_result, broken, delivered_1h FROM route_health_v ORDER BY route"
    ).result_rows
    assert [(r[0], r[1], bool(r[2])) for r in health] == [
        ("fallback", "delivered", False), ("stock", "delivered", False)]
    assert sum(int(r[3]) for r in health) == len(found)


def test_a_request_in_the_air_at_a_sigkill_still_counts_against_the_robots_budget(
    settings_factory: Callable[..., Settings], ctower_process: Callable[..., Any],
    webhook_server: Any, make_alert: Callable[..., Alert], poll: Callable[..., Any],
    write_routes: Callable[[str], Path], write_secrets: Callable[[dict[str, str]], Path],
) -> None:
    # the documented limits, on both sides: 20 a minute per robot, failed ones counted
    webhook_server.per_window, webhook_server.window = 20, 60.0
    urls = {"stock": webhook_server.add_key("k-inair-stock"),
            "ops": webhook_server.add_key("k-inair-ops")}
    settings = settings_factory(
        alert_routes_file=write_routes(ROUTES), webhook_secrets_file=write_secrets(urls),
        alert_rate_per_minute=20, alert_rate_window_seconds=60.0,
    )
    ensure_topics(settings)
    # the robot takes the 19th request but holds its answer until the sender is dead
    held, release = threading.Event(), threading.Event()
    answer = webhook_server._answer

    def hold_the_19th(path: str, raw: bytes) -> Any:
        got = answer(path, raw)
        if len(webhook_server.received) == 19 and not held.is_set():
            held.set()
            release.wait(60)
        return got

    webhook_server._answer = hold_the_19th
    deliver = ctower_process(settings, "deliver", "alerts", "deliver")
    alerts = [make_alert() for _ in range(20)]  # 20 fit the budget: each goes alone
    produce(settings, alerts)
    outbox = Outbox(settings.data_dir / "alerts" / "outbox.sqlite3")
    try:
        poll(lambda: held.is_set() and sum(outbox.counts().values()) == 20, 60,
             "the 19th request never came:\n" + deliver.log_tail())
        deliver.kill()  # the 19th is in the air: the robot counted it, nobody recorded it
        release.set()
        assert outbox.counts() == {DELIVERED: 18, "sending": 1, "pending": 1}
        first = webhook_server.received[0]["t"]
        restarted = ctower_process(settings, "deliver-again", "alerts", "deliver")

        def settled() -> Any:
            assert restarted.alive(), restarted.log_tail()
            assert 45009 not in webhook_server.answers("k-inair-stock"), (
                "the restart spent the slot of the request in the air:\n"
                + restarted.log_tail())
            return outbox.counts() == {DELIVERED: 20}

        poll(settled, 40, "the restart did not deliver the last two alerts")
    finally:
        outbox.close()
    received = webhook_server.received
    # one message (a digest of both) was all the minute had left; it went at once
    assert len(received) == 20 and received[-1]["t"] - first < 60
    assert webhook_server.answers("k-inair-stock") == [0] * 20
    assert webhook_server.max_in_window("k-inair-stock") == 20
    assert "frequency limit" not in restarted.log_tail()


def test_bad_bytes_on_ct_alerts_are_dead_lettered_and_every_alert_around_them_delivered(
    settings_factory: Callable[..., Settings], ctower_process: Callable[..., Any],
    webhook_server: Any, make_alert: Callable[..., Alert], poll: Callable[..., Any],
    write_routes: Callable[[str], Path], write_secrets: Callable[[dict[str, str]], Path],
    free_port: Callable[[], int],
) -> None:
    webhook_server.per_window = 1000  # rates are other tests' business
    urls = {"stock": webhook_server.add_key("k-bad-stock"),
            "ops": webhook_server.add_key("k-bad-ops")}
    settings = settings_factory(
        alert_routes_file=write_routes(ROUTES), webhook_secrets_file=write_secrets(urls),
        alert_rate_per_minute=1000, alerts_metrics_port=free_port(),
    )
    ensure_topics(settings)
    deliver = ctower_process(settings, "deliver", "alerts", "deliver")
    deep = b"[" * 5000 + b"]" * 5000
    bad: list[bytes | None] = [
        b"this is not JSON {",
        b'{"alert_id": "\xff\xfe", "key": "k"}',  # invalid UTF-8
        encode(make_alert(evidence={"x": "D"})).replace(b'"D"', deep),  # RecursionError
        deep,
        b'{"hello": "world"}',
        b"null",
        None,  # a tombstone
        encode(make_alert()).replace(b'"warning"', b'"apocalyptic"'),
        b'{"alert_id": "' + b"x" * 900_000 + b'"}',
    ]
    # valid, if odd: a time no calendar shows, 3,000 characters of text, a deep evidence
    alerts = [make_alert() for _ in range(6)] + [
        make_alert(opened_at=2**62), make_alert(message="库存为零" * 750),
        make_alert(evidence={"nested": [[[[[[1]]]]]], "n": 10**18}),
    ]
    records: list[tuple[bytes, bytes | None]] = []
    for n, alert in enumerate(alerts):
        records.append((alert.alert_id.encode(), encode(alert)))
        if n < len(bad):
            records.append((alert.alert_id.encode(), bad[n]))  # same key: same partition
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap, acks="all",
                             max_request_size=2_000_000)
    try:
        for key, value in records:
            producer.send(settings.topic("alerts"), key=key, value=value)
        producer.flush()
    finally:
        producer.close()
    ids = {a.alert_id for a in alerts}

    def all_delivered() -> Any:
        assert deliver.alive(), deliver.log_tail()
        return {m.group(1) for r in webhook_server.delivered("k-bad-stock")
                if (m := SINGLE.search(content(r)))} >= ids

    poll(all_delivered, 60, "not every valid alert was delivered:\n" + deliver.log_tail())
    assert len(webhook_server.delivered("k-bad-stock")) == len(alerts)
    assert 45002 not in webhook_server.answers()  # the long text was cut, not refused

    consumer = KafkaConsumer(
        settings.topic("dead-letter"), bootstrap_servers=settings.bootstrap,
        auto_offset_reset="earliest", consumer_timeout_ms=2000, fetch_max_bytes=5_000_000,
    )
    letters: list[DeadLetter] = []
    decode = msgspec.json.Decoder(DeadLetter).decode
    try:
        deadline = time.monotonic() + 60
        while len(letters) < len(bad) and time.monotonic() < deadline:
            letters += [decode(m.value) for m in consumer]
    finally:
        consumer.close()
    assert len(letters) == len(bad), letters
    assert {letter.source_topic for letter in letters} == {settings.topic("alerts")}
    by_raw = {bytes(letter.raw[:64]): letter for letter in letters}
    for value in bad:
        letter = by_raw[(value or b"")[:64]]
        if value is not None and len(value) < 64 * 1024:
            assert letter.raw == value  # kept whole
        assert letter.raw_length == len(value or b"")
    reasons = {(value or b"")[:20]: by_raw[(value or b"")[:64]].reason for value in bad}
    assert reasons[b"this is not JSON {"] == "not_json"
    assert reasons[b'{"alert_id": "\xff\xfe", "k'[:20]] == "not_utf8"
    assert reasons[b"[" * 20] == "not_an_object"
    assert reasons[b'{"hello": "world"}'] == "missing_field"
    assert reasons[b""] == "not_json"
    too_deep = by_raw[bad[2][:64]]  # type: ignore[index]
    assert too_deep.reason == "too_deep"
    assert by_raw[bad[7][:64]].reason == "unknown_value"  # type: ignore[index]
    huge = by_raw[bad[-1][:64]]  # type: ignore[index]
    assert len(huge.raw) == 64 * 1024 and huge.raw_length == 900_016
    assert huge.raw_sha256 == hashlib.sha256(bad[-1]).hexdigest()  # type: ignore[arg-type]

    # /metrics counts the same: dead letters by reason, webhook answers by errcode
    from ctower.metrics import scrape, total

    url = f"http://127.0.0.1:{settings.alerts_metrics_port}/metrics"
    metrics = poll(lambda: (lambda m: m if total(m, "ctower_outbox_depth") == 0 else None)(
        scrape(url)), 30, "the outbox never emptied")
    assert total(metrics, "ctower_alerts_dead_letters_total") == len(bad)
    assert total(metrics, "ctower_alerts_dead_letters_total",
                 lambda x: x["reason"] == "not_json") == 2
    assert total(metrics, "ctower_webhook_results_total", lambda x: x == {
        "robot": "stock", "outcome": "delivered", "errcode": "0"}) == len(alerts)
    assert total(metrics, "ctower_webhook_seconds_count") >= len(alerts)
    assert total(metrics, "ctower_alerts_read_total") == len(alerts)
    with urllib.request.urlopen(url, timeout=5) as answer:
        assert b"k-bad-" not in answer.read()  # a robot's key is its credential

    assert deliver.alive()
    deliver.stop()
    assert deliver.proc is not None and deliver.proc.returncode == 0, deliver.log_tail()
    log = deliver.log_path.read_text(errors="replace")
    assert log.count("is not an alert") == len(bad)  # one line each
    assert "Traceback" not in log
    assert f"{len(bad)} records not alerts" in log
