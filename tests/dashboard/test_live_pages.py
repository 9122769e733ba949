"""The pages that read the running pipeline as well as the store: the pipeline
page (a fake worker answers /stats/), the hot SKUs (raw events through the
materialized views of 0012), consumer lag against the real broker, and the
coupon ledger's answers per minute."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer
from streamlit.testing.v1 import AppTest

from ctower.dashboard.live_sources import MIN_INTERVAL, Sampler, consumer_lag
from ctower.settings import Settings
from ctower.topics import ensure_topics

from .test_pages import alert, metrics


class FakeWorker:
    """Answers /stats/ and /coupons/ like a worker whose counters grow."""

    def __init__(self) -> None:
        self.calls = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake.calls += 1
                n = fake.calls
                if self.path.startswith("/stats/"):
                    body = {stream: {"messages": 10 * n, "events": 100 * n,
                                     "dead_letters": {"not_json": 2}, "duplicates": 3,
                                     "late_events": 1}
                            for stream in ("scan", "order", "pickup", "logistics",
                                           "inventory", "coupon")}
                    body["dead_letter_outbox"] = {"scan": {"outstanding": 0}}
                else:
                    body = {"stats": {"granted": 5 * n, "refused_cap_reached": 2 * n}}
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def fake_worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeWorker]:
    worker = FakeWorker()
    monkeypatch.setenv("CTOWER_WORKER_WEB_PORT", str(worker.port))
    try:
        yield worker
    finally:
        worker.server.shutdown()


def test_pipeline_page_per_stream(
    dash_store: Any, run_page: Callable[..., AppTest], fake_worker: FakeWorker,
    minute0: datetime, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CTOWER_KAFKA_BOOTSTRAP", "127.0.0.1:9")  # no broker: lag is said so
    dash_store.insert("dead_letters", [
        {"source_topic": "ct.scan", "partition": 0, "offset": o, "index": -1,
         "reason": "not_json", "detail": f"bad byte at {o}", "raw": b"{oops" + bytes([o]),
         "received_at": minute0 + timedelta(seconds=o), "raw_length": 6, "raw_sha256": ""}
        for o in range(3)])
    dash_store.insert("quarantine", [
        {"source_topic": "ct.order", "partition": 1, "offset": 7, "index": 2,
         "target_table": "order_events", "reason": "out_of_range", "detail": "amount_fen",
         "raw": b'{"amount": 1e30}', "raw_length": 16, "raw_sha256": "",
         "received_at": minute0}])
    dash_store.insert("late_events", [
        {"aggregate": agg, "dims": ["S001"], "window_start": minute0, "source_topic": "ct.scan",
         "partition": 0, "offset": 5, "index": 0, "event_ts": minute0, "watermark": minute0}
        for agg in ("store_minute", "sku_sales_5min")])  # one event late for two aggregates
    dash_store.insert("duplicate_events", [
        {"source_topic": "ct.pickup", "partition": 0, "offset": o, "index": 0, "identity": "x",
         "first_offset": 0, "first_index": 0, "event_ts": minute0} for o in (1, 2)])
    now = datetime.now(UTC)
    dash_store.insert("alerts", [alert("A1", "open", "critical", now - timedelta(seconds=3),
                                       raised_at=now)])
    columns = ["event_key", "event_id", "scan_id", "store_id", "sku", "action", "member_id",
               "ts", "source_topic", "partition", "offset"]
    newest = now - timedelta(seconds=30)
    dash_store.client.insert("scan_events", [[
        "k1", None, "sc1", "S001", "K1", "view", None, newest, "ct.scan", 0, 1]],
        column_names=columns)
    app = run_page("pipeline")
    time.sleep(MIN_INTERVAL + 0.1)
    app.run()  # a second sample of the worker's counters: rates
    assert not app.exception, app.exception
    shown = metrics(app)
    assert shown["Dead letters"] == "3"
    assert shown["Late / duplicate events"] == "1 / 2"
    overview = app.dataframe[0].value.set_index("Stream")
    assert overview.loc["Scans", "Events/s"] > 0  # 100 more events per sample
    assert overview.loc["Scans", "Dead letters"] == 3
    assert overview.loc["Scans", "Late events"] == 1
    assert overview.loc["Pickup", "Duplicates"] == 2
    assert overview.loc["Scans", "Freshness"].endswith("s")  # about 30 s
    assert overview.loc["Pickup", "Event→alert p50"] == "3 s"
    assert any("Cannot reach Kafka" in c.value for c in app.caption)
    bad = app.dataframe[1].value
    rows = {(r["Stream"], r["Reason"]): r for _, r in bad.iterrows()}
    letters = rows[("Scans", "Not JSON")]
    assert letters["Count"] == 3 and letters["Found by"] == "Worker (dead letter)"
    assert letters["Sample: what was wrong"] == "bad byte at 2"  # the newest
    assert letters["Sample: partition@offset"] == "0@2"
    quarantined = rows[("Orders", "Out of range")]
    assert quarantined["Found by"] == "Sink (quarantine)"
    assert quarantined["Sample: first 160 bytes"] == '{"amount": 1e30}'
    assert quarantined["Sample: partition@offset"] == "1@7[2]"


def test_pipeline_page_in_chinese_when_nothing_answers(
    dash_store: Any, run_page: Callable[..., AppTest], monkeypatch: pytest.MonkeyPatch,
    free_port: Callable[[], int],
) -> None:
    monkeypatch.setenv("CTOWER_WORKER_WEB_PORT", str(free_port()))
    monkeypatch.setenv("CTOWER_KAFKA_BOOTSTRAP", "127.0.0.1:9")
    app = run_page("pipeline", state={"lang": "zh"})
    assert app.header[0].value == "数据管道"
    assert any("无法连接处理节点" in c.value for c in app.caption)
    assert any("没有死信" in c.value for c in app.caption)
    assert list(app.dataframe[0].value["数据流"]) == ["扫码", "订单", "自提", "物流", "库存",
                                                   "优惠券", "客服"]


def test_hot_skus_by_scans_and_conversion_per_region(
    dash_store: Any, run_page: Callable[..., AppTest], minute0: datetime, tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from .test_pages import write_master_data

    monkeypatch.setenv("CTOWER_MASTER_DATA_FILE", str(write_master_data(tmp_path / "md.json")))
    scans, n = [], 0
    for store, sku, count in (("S001", "HOT", 30), ("S002", "HOT", 10), ("S001", "BROWSED", 25),
                              ("S003", "WEST1", 21), ("S001", "RARE", 2)):
        for _ in range(count):
            n += 1
            scans.append([f"sc{n}", None, f"sc{n}", store, sku, "view", None,
                          minute0 + timedelta(seconds=n % 50), "ct.scan", 0, n])
    scans.append(scans[0])  # the same scan stored twice (a sink replay) counts once
    dash_store.client.insert("scan_events", scans, column_names=[
        "event_key", "event_id", "scan_id", "store_id", "sku", "action", "member_id", "ts",
        "source_topic", "partition", "offset"])
    orders = []
    for i, (store, skus) in enumerate([("S001", ["HOT", "RARE"])] * 12 + [("S002", ["HOT"])] * 4
                                      + [("S001", ["BROWSED"])] + [("S003", ["WEST1"])] * 7):
        orders.append([f"o{i}:paid", None, f"o{i}", "m", store, "scan_and_go", "in_store",
                       skus, [1] * len(skus), [1.0] * len(skus), 1.0, 100, "paid", None, None,
                       minute0 + timedelta(seconds=i), "ct.order", 0, i])
    dash_store.client.insert("order_events", orders, column_names=[
        "event_key", "event_id", "order_id", "member_id", "store_id", "channel", "fulfillment",
        "lines.sku", "lines.qty", "lines.unit_price", "amount", "amount_fen", "status",
        "coupon_id", "ship_from", "ts", "source_topic", "partition", "offset"])
    app = run_page("skus")
    assert not app.exception, app.exception
    by_scans, by_conversion, not_bought = (f.value for f in app.dataframe)
    east = by_scans[by_scans["Region"] == "east"]
    assert list(east["SKU"]) == ["HOT", "BROWSED", "RARE"]
    assert list(east["Scans"]) == [40, 25, 2]
    assert list(east["Paid orders"]) == [16, 1, 12]
    assert list(east["Stores"]) == [2, 1, 1]
    # RARE (2 scans) is below the 20 scans a conversion ranking needs
    assert list(by_conversion[by_conversion["Region"] == "east"]["SKU"]) == ["HOT", "BROWSED"]
    assert list(not_bought[not_bought["Region"] == "east"]["SKU"]) == ["BROWSED", "HOT"]
    assert list(by_conversion[by_conversion["Region"] == "west"]["SKU"]) == ["WEST1"]
    assert len(app.get("plotly_chart")) == 1  # the hot-product map
    app.number_input(key="skus_min_scans").set_value(1).run()
    by_conversion = app.dataframe[1].value
    assert by_conversion[by_conversion["Region"] == "east"]["SKU"].iloc[0] == "RARE"


def test_sampler_takes_one_sample_per_interval_and_says_why_when_down() -> None:
    calls = []

    def fetch(url: str) -> Any:
        calls.append(url)
        if len(calls) == 3:
            raise ConnectionRefusedError("refused")
        return {"n": len(calls)}

    sampler = Sampler("http://w/stats/", fetch)
    assert sampler.sample(now=100.0) == {"n": 1}
    assert sampler.sample(now=100.5) == {"n": 1}  # shared: not asked again so soon
    assert sampler.sample(now=102.0) == {"n": 2}
    assert sampler.window(10.0) is not None
    assert sampler.sample(now=104.0) is None
    assert sampler.error is not None and "refused" in sampler.error
    assert len(calls) == 3


@pytest.mark.kafka
def test_consumer_lag_counts_what_a_group_has_not_committed(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory()
    ensure_topics(settings)
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap)
    for i in range(7):
        producer.send(settings.topic("scan"), value=b"{}", partition=i % 2)
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(settings.topic("scan"), bootstrap_servers=settings.bootstrap,
                             group_id=settings.app_id, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=5000)
    for n, _ in enumerate(consumer, 1):  # the group reads 3 and commits them
        if n == 3:
            consumer.commit()
            break
    consumer.close()
    lag, error = consumer_lag(settings, wait=20)
    lag = lag[lag["group"] == settings.app_id]
    assert error is None
    by_stream = dict(zip(lag["stream"], lag["lag"], strict=True))
    assert by_stream["scan"] == 4
    assert by_stream["order"] == 0
    assert set(lag["partitions"]) == {settings.topic_partitions}
