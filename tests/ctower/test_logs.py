"""One logging configuration: formats, masking, and outages told in a few lines.

The filter is driven with synthetic records (their templates are the ones
aiokafka, kafka-python and the sink log with the broker down) and a fake
clock; one test stops a real broker under a real worker.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ctower.logs import FAULTS, LOGGER, MaskingFilter, OutageFilter, configure_logging
from ctower.settings import load_settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(name: str, level: int, msg: str, *args: Any) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args or None, None)


def refused() -> logging.LogRecord:
    return record("aiokafka", logging.ERROR, "Unable connect to node with id %s: %s", 1,
                  "[Errno 111] Connect call failed ('127.0.0.1', 9092)")


def not_ready() -> logging.LogRecord:
    return record("aiokafka.consumer.fetcher", logging.ERROR, "Failed fetch messages from %s: %s",
                  1, "NodeNotReadyError: Attempt to send a request to node which is not ready")


def coordinator_back() -> logging.LogRecord:
    return record("aiokafka.consumer.group_coordinator", logging.INFO,
                  "Discovered coordinator %s for group %s", 1, "ctower")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def lines() -> list[tuple[int, str, dict[str, Any]]]:
    return []


@pytest.fixture
def outages(clock: Clock, lines: list[tuple[int, str, dict[str, Any]]]) -> OutageFilter:
    return OutageFilter(clock=clock, emit=lambda *line: lines.append(line), timer=False)


def events(lines: list[tuple[int, str, dict[str, Any]]]) -> list[str]:
    return [fields["event"] for _, _, fields in lines]


# --- the outage filter -------------------------------------------------------


def test_an_outage_is_a_start_a_summary_a_minute_and_an_end(
    outages: OutageFilter, clock: Clock, lines: list[tuple[int, str, dict[str, Any]]]
) -> None:
    shown = []
    for second in range(150):  # 2.5 minutes of retries, eight a second
        for _ in range(8):
            rec = refused() if second % 2 else not_ready()
            if outages.filter(rec):
                shown.append(rec)
            clock.now += 0.125
        if second == 70:  # other records still pass
            assert outages.filter(record("ctower.streams.app", logging.WARNING, "late event"))
    assert shown == []
    assert events(lines) == ["started", "continues", "continues"]
    level, message, fields = lines[0]
    assert level == logging.ERROR and "Kafka broker unavailable" in message
    assert "Failed fetch messages from 1" in message  # the first record is told
    level, message, fields = lines[1]
    assert level == logging.WARNING and fields["records"] == 480  # the last 60 s
    assert fields["kinds"] == {
        "aiokafka: Unable connect to node with id %s: %s": 240,
        "aiokafka.consumer.fetcher: Failed fetch messages from %s: %s": 240,
    }
    assert "480 records held back" in message and "Unable connect to node" in message

    outages.filter(coordinator_back())  # the connection is back...
    clock.now += 1.0
    outages.check()
    assert events(lines)[-1] == "continues"  # ... but not for long enough yet
    clock.now += 3.0
    outages.check()
    level, message, fields = lines[-1]
    assert fields["event"] == "ended" and fields["records"] == 1200
    assert "Discovered coordinator 1" in message and "outage ended after 150 s" in message
    assert outages.active == []
    assert outages.filter(refused()) is False  # a new outage: a new start
    assert events(lines)[-1] == "started"


def test_records_after_a_recovery_record_keep_the_outage_open(
    outages: OutageFilter, clock: Clock, lines: list[tuple[int, str, dict[str, Any]]]
) -> None:
    """A coordinator found on another broker while fetches still fail: no end."""
    outages.filter(refused())
    outages.filter(coordinator_back())
    for _ in range(100):
        clock.now += 0.5
        outages.filter(not_ready())
    assert events(lines) == ["started"]
    clock.now += 3.0
    outages.check()
    assert events(lines) == ["started", "ended"]


def test_without_a_recovery_record_quiet_ends_it(
    clock: Clock, lines: list[tuple[int, str, dict[str, Any]]]
) -> None:
    outages = OutageFilter(clock=clock, emit=lambda *line: lines.append(line), timer=False,
                           quiet_seconds=20)
    producer = record("aiokafka.producer.sender", logging.WARNING,
                      "Got error produce response: %s", "NotLeaderForPartitionError")
    assert outages.filter(producer) is False
    clock.now += 15
    outages.filter(producer)
    clock.now += 19
    outages.check()
    assert events(lines) == ["started"]
    clock.now += 1
    outages.check()
    assert events(lines) == ["started", "ended"]
    assert "no such record for 20 s" in lines[-1][1] and lines[-1][2]["seconds"] == 15


def test_an_overdue_end_comes_before_the_next_start(
    outages: OutageFilter, clock: Clock, lines: list[tuple[int, str, dict[str, Any]]]
) -> None:
    outages.filter(refused())
    clock.now += 300  # no timer ran (timer=False)
    outages.filter(refused())
    assert events(lines) == ["started", "ended", "started"]


def test_broker_and_store_outages_are_told_apart(
    outages: OutageFilter, clock: Clock, lines: list[tuple[int, str, dict[str, Any]]]
) -> None:
    insert = record("ctower.sinks.clickhouse.sink", logging.WARNING,
                    "insert into %s failed (%s); retrying in %.1fs", "scan_events", "refused", 0.5)
    assert outages.filter(insert) is False
    assert outages.filter(refused()) is False
    assert outages.active == ["broker", "store"]
    assert [fields["outage"] for _, _, fields in lines] == ["store", "broker"]
    assert "ClickHouse store unavailable" in lines[0][1]


@pytest.mark.parametrize(
    ("name", "level", "template"),
    [  # as the clients write them with the broker down (templates: arguments are %s)
        ("aiokafka", logging.ERROR, "Unable to update metadata from %s"),
        ("aiokafka", logging.WARNING, "Unable to request metadata from node with id %s: %r"),
        ("aiokafka", logging.ERROR, 'Unable connect to "%s:%s": %s'),
        ("aiokafka.consumer.group_coordinator", logging.ERROR,
         "Group Coordinator Request failed: %s"),
        ("aiokafka.consumer.group_coordinator", logging.ERROR,
         "Error sending %s to node %s [%s] -- marking coordinator dead"),
        ("aiokafka.consumer.group_coordinator", logging.WARNING,
         "Marking the coordinator dead (node %s)for group %s."),
        ("aiokafka.consumer.group_coordinator", logging.ERROR,
         "Heartbeat send request failed: %s. Will retry."),
        ("aiokafka.consumer.group_coordinator", logging.WARNING,
         "Heartbeat failed for group %s: coordinator (node %s) is either not started or not "
         "valid"),
        ("aiokafka.consumer.group_coordinator", logging.WARNING,
         "OffsetCommit failed for group %s due to a coordinator error (%s), will find new "
         "coordinator and retry"),
        ("aiokafka.producer.sender", logging.WARNING,
         "Got error produce response on topic-partition %s, retrying. Error: %s"),
        ("kafka.net.manager", logging.ERROR, "Connection failed: %s"),
        ("kafka.net.connection", logging.ERROR, "%s: Connection lost: %s"),
        ("kafka.net.transport", logging.ERROR, "%s: socket disconnected"),
        ("kafka.net.transport", logging.ERROR, "%s: Abort (%s)"),
        ("kafka.cluster", logging.ERROR, "Metadata refresh: failed %s"),
        ("kafka.cluster", logging.WARNING,
         "No node available for metadata refresh - backoff/retry"),
        ("kafka.producer.sender", logging.ERROR,
         "%s: Error sending produce request to node %d: %s"),
        ("ctower.sinks.clickhouse.sink", logging.WARNING,
         "offset commit failed (%s); rows will be replayed"),
    ],
)
def test_what_the_clients_log_with_the_broker_down_is_an_outage(
    outages: OutageFilter, name: str, level: int, template: str
) -> None:
    rec = record(name, level, template)
    rec.args = None  # the template alone: getMessage() must not need its arguments
    assert outages.filter(rec) is False
    assert outages.active == ["broker"]


@pytest.mark.parametrize(
    ("name", "template"),
    [
        ("aiokafka.consumer.group_coordinator",
         "Heartbeat failed for group %s because it is rebalancing"),
        ("ctower.streams.app", "Unable connect to the dashboard"),  # not a Kafka client
        ("mode.timers", "Timer %s is overlapping (interval=%r runtime=%r)"),
    ],
)
def test_other_warnings_are_not_an_outage(
    outages: OutageFilter, name: str, template: str
) -> None:
    rec = record(name, logging.WARNING, template)
    rec.args = None
    assert outages.filter(rec) is True
    assert outages.active == []


def test_the_kafka_clients_show_warnings_only(outages: OutageFilter) -> None:
    assert not outages.filter(record("aiokafka.consumer.consumer", logging.INFO, "Subscribed"))
    assert not outages.filter(coordinator_back())  # a recovery with no outage: not shown
    assert not outages.filter(record("kafka.net.connection", logging.INFO, "%s: Connected", "x"))
    assert outages.filter(record("aiokafka.consumer.fetcher", logging.WARNING, "odd offset"))
    assert outages.filter(record("faust.transport", logging.INFO, "Starting..."))


def test_every_rule_names_a_known_outage() -> None:
    assert {rule.outage for rule in FAULTS} == {"broker", "store"}


def test_the_timer_ends_an_outage_when_records_stop(
    lines: list[tuple[int, str, dict[str, Any]]],
) -> None:
    outages = OutageFilter(emit=lambda *line: lines.append(line), quiet_seconds=0.3, tick=0.05)
    outages.filter(refused())
    deadline = time.monotonic() + 10
    while outages.active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert events(lines) == ["started", "ended"]


# --- masking -------------------------------------------------------------------


def test_masking_covers_keys_url_passwords_secrets_and_tracebacks() -> None:
    masking = MaskingFilter(["long-secret-value", "t0k"])
    url = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa"
    rec = record("x", logging.ERROR, "posting %s with long-secret-value as t0k (t0ken stays) to %s",
                 url, "http://reader:pw-in-url@db:8123/")
    try:
        raise RuntimeError("boom long-secret-value")
    except RuntimeError:
        rec.exc_info = sys.exc_info()
    assert masking.filter(rec)
    text = logging.Formatter().format(rec)
    assert "long-secret-value" not in text and "pw-in-url" not in text
    assert "0ec2sifa5aaa" not in text and "key=***5aaa" in text
    assert " as *** (t0ken stays)" in text and "reader:***@db" in text
    assert "boom ***" in text


# --- the configuration -----------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    names = ("kafka", "aiokafka", "aiokafka.consumer.group_coordinator", "kafka.net.connection")
    levels = {name: logging.getLogger(name).level for name in names}
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            if handler not in saved[0]:
                root.removeHandler(handler)
        for handler in saved[0]:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(saved[1])
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


SECRETS = {"store_password": "pw-2b8e71d0", "operator_token": "op-44c1aa9e",
           "coupon_api_token": "cp-0d5f6b13"}


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_with_every_secret_masked() -> None:
    out = io.StringIO()
    settings = load_settings(log_format="json", log_level="INFO", **SECRETS)
    configure_logging(settings, stream=out)
    log = logging.getLogger("ctower.test")
    log.info("settings %r", settings)
    log.warning("connecting with %s", SECRETS["store_password"])
    logging.getLogger("aiokafka.conn").info("chatty")  # below the Kafka clients' level
    logging.getLogger("aiokafka").error("Unable connect to node with id %s: %s", 1, "refused")
    logging.getLogger("aiokafka").error("Unable connect to node with id %s: %s", 1, "refused")
    try:
        raise ValueError(f"bad token {SECRETS['operator_token']}")
    except ValueError:
        log.exception("failed")
    entries = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["logger"] for e in entries] == ["ctower.test", "ctower.test", LOGGER, "ctower.test"]
    assert {"ts", "level", "logger", "message", "pid"} <= set(entries[0])
    assert entries[1]["message"] == "connecting with ***"
    assert entries[2]["outage"]["event"] == "started" and entries[2]["level"] == "ERROR"
    assert "bad token ***" in entries[3]["exc"]
    for secret in SECRETS.values():
        assert secret not in out.getvalue()


@pytest.mark.usefixtures("restore_logging")
def test_plain_lines_at_the_configured_level() -> None:
    out = io.StringIO()
    configure_logging(load_settings(log_level="WARNING"), stream=out)
    logging.getLogger("ctower.test").info("not shown")
    logging.getLogger("ctower.test").warning("shown %d", 1)
    assert out.getvalue().splitlines()[-1].endswith(" WARNING ctower.test: shown 1")
    assert "not shown" not in out.getvalue()


@pytest.mark.usefixtures("restore_logging")
def test_a_log_call_with_bad_arguments_does_not_raise() -> None:
    out = io.StringIO()
    configure_logging(load_settings(), stream=out)
    logging.raiseExceptions = False  # the handler's report of the bad call is not the point
    try:
        logging.getLogger("aiokafka").error("Unable connect to node with id %s: %s", 1)
        logging.getLogger("ctower.test").error("%d apples", "no")
    finally:
        logging.raiseExceptions = True
    assert "outage started (aiokafka: Unable connect to node with id %s: %s)" in out.getvalue()


def test_a_bad_log_format_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from ctower.settings import SettingsError

    monkeypatch.setenv("CTOWER_LOG_FORMAT", "xml")
    with pytest.raises(SettingsError, match="CTOWER_LOG_FORMAT"):
        load_settings()


# --- a real broker outage under a real worker ---------------------------------------


@pytest.mark.kafka
@pytest.mark.slow
def test_a_broker_outage_under_a_worker_is_a_few_lines(
    tmp_path: Path,
    free_port: Callable[[], int],
    ctower_process: Callable[..., Any],
    poll: Callable[..., Any],
) -> None:
    from ctower.devstack.broker.local import LocalKafka
    from ctower.topics import ensure_topics

    broker = LocalKafka(load_settings(data_dir=tmp_path / "kafka", kafka_port=free_port()))
    bootstrap = broker.up(timeout=180)
    worker = None
    try:
        settings = load_settings(
            kafka_bootstrap=bootstrap, topic_prefix="o.", app_id="outage",
            data_dir=tmp_path / "data", worker_web_port=free_port(),
            store_http_port=free_port(), dashboard_port=free_port(), **SECRETS,
        )
        ensure_topics(settings)
        worker = ctower_process(settings, "worker", "worker")
        stats = f"http://127.0.0.1:{settings.worker_web_port}/stats/"
        worker.wait_http(stats)
        poll(lambda: "Worker]: Ready" in worker.log_tail(100_000), 120, "worker not ready")
        time.sleep(3)  # the consumer's first fetches

        def outages_open() -> int:
            text = worker.log_path.read_text(errors="replace")
            return text.count("outage started") - text.count("outage ended")

        # The group coordinator is often not ready while the worker starts: a short
        # outage of its own, whose end comes up to 3 s (the settle time) after the
        # coordinator is found, and can come after "Ready". Counted from before that
        # end, the test would take it for the end of the outage below.
        poll(lambda: outages_open() == 0, 60, "the start-up outage never ended")
        before = worker.log_path.stat().st_size

        def since() -> list[str]:
            return worker.log_path.read_bytes()[before:].decode(errors="replace").splitlines()

        broker.down()
        time.sleep(20)
        broker.up(timeout=180)
        poll(lambda: any("outage ended" in line for line in since()), 120,
             "no end of the outage logged")
        time.sleep(2)
        assert worker.alive(), worker.log_tail()
        loud = [line for line in since() if " ERROR " in line or " WARNING " in line]
        started = [line for line in loud if "Kafka broker unavailable: outage started" in line]
        ended = [line for line in loud if "Kafka broker outage ended" in line]
        assert len(started) == 1 and len(ended) == 1, "\n".join(loud)
        assert "the connection is back" in ended[0]
        # the start, the end, and at most a few records that are not connection
        # failures (mode's "Timer commit is overlapping" after the pause)
        assert len(loud) <= 6, "\n".join(loud)
        records = int(ended[0].split(" records in all")[0].rsplit(" ", 1)[1].replace(",", ""))
        assert records > 50  # what was held back
        with urllib.request.urlopen(stats, timeout=5) as answer:
            shown = answer.read().decode() + worker.log_path.read_text(errors="replace")
        for secret in SECRETS.values():
            assert secret not in shown
    finally:
        if worker is not None:
            worker.stop()  # before the broker: its shutdown would be an outage of its own
        broker.down()
