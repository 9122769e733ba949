"""Every page in Streamlit's AppTest against a real store: it renders empty
and with data, and the figures it shows are the ones in the store."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

PAGES = ["overview", "stores", "inventory", "pickup", "logistics", "coupons", "alerts"]
EMPTY = {
    "overview": "No data yet: waiting for the first closed minute.",
    "stores": "No data yet: waiting for the first closed minute.",
    "inventory": "No stock levels yet: the rules have not published any.",
    "pickup": "No pickup queues yet: the rules have not published any levels.",
    "logistics": "No logistics data yet.",
    "coupons": "No coupon data yet.",
    "alerts": "No alerts.",
}
STORE_MINUTE_COLUMNS = [
    "store_id", "window_start", "window_end", "scans", "add_to_cart", "orders", "paid_orders",
    "gmv_fen", "refunded_orders", "pickup_arrivals", "pickups_served", "pickup_no_shows",
    "coupons_issued", "coupons_redeemed", "source_topic", "partition", "through_offset",
    "closed_at",
]


def metrics(app: AppTest) -> dict[str, str]:
    return {metric.label: metric.value for metric in app.metric}


def store_minutes(store: Any, minute0: datetime, sales: dict[str, tuple[int, int, int]],
                  minutes: int = 3) -> None:
    """``sales``: store -> (gmv_fen, paid_orders, scans) per minute."""
    rows = []
    for m in range(minutes):
        window = minute0 + timedelta(minutes=m)
        for store_id, (gmv, paid, scans) in sales.items():
            rows.append([store_id, window, window + timedelta(minutes=1), scans, 0, paid + 1,
                         paid, gmv, 0, 1, paid, 0, 0, 0, "ct.scan", 0, m, window])
    store.client.insert("store_minute", rows, column_names=STORE_MINUTE_COLUMNS)


def alert(alert_id: str, status: str, severity: str, raised: datetime, **extra: Any) -> dict:
    row = {
        "alert_id": alert_id, "key": f"k-{alert_id}", "kind": "pickup_congestion",
        "severity": severity, "status": status, "message": f"message {alert_id}",
        "evidence": json.dumps({"waiting": 14, "threshold": 10}), "action": None,
        "opened_at": raised, "resolved_at": raised if status == "resolved" else None,
        "raised_at": raised, "region": "east", "store_id": "S001", "sku": None,
        "carrier": None, "version": 1,
    }
    row.update(extra)
    return row


def write_master_data(path: Path) -> Path:
    path.write_text(json.dumps({
        "regions": [{"region_id": "east", "warehouse_id": "WH-east"},
                    {"region_id": "west", "warehouse_id": "WH-west"}],
        "stores": [{"store_id": "S001", "region_id": "east"},
                   {"store_id": "S002", "region_id": "east"},
                   {"store_id": "S003", "region_id": "west"}],
    }))
    return path


@pytest.mark.parametrize("page", PAGES)
def test_every_page_shows_an_empty_state_on_an_empty_store(
    dash_store: Any, run_page: Callable[..., AppTest], page: str
) -> None:
    app = run_page(page)
    assert EMPTY[page] in [info.value for info in app.info]
    assert not app.warning and not app.error
    assert not [m.value for m in app.markdown if "pages/" in m.value]  # no stray docstrings
    assert len(app.metric) == (4 if page == "alerts" else 0)  # alerts: zero counts


def test_overview_figures_are_the_store_s(
    dash_store: Any, run_page: Callable[..., AppTest], minute0: datetime, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CTOWER_MASTER_DATA_FILE", str(write_master_data(tmp_path / "md.json")))
    store_minutes(dash_store, minute0, {"S001": (12345, 3, 40), "S002": (500, 1, 10),
                                        "S003": (1000, 2, 30)})
    dash_store.insert("carrier_region_15min", [{
        "carrier": "SF", "region": "east", "window_start": minute0,
        "window_end": minute0 + timedelta(minutes=15), "created": 5, "picked_up": 4,
        "in_transit": 4, "out_for_delivery": 4, "delivered": 4, "failed": 0, "returned": 0,
        "delivered_on_time": 3, "delivered_late": 1, "source_topic": "ct.logistics",
        "partition": 0, "through_offset": 1, "closed_at": minute0,
    }])
    dash_store.insert("pickup_levels", [
        {"store_id": "S001", "region": "east", "waiting": 9, "capacity": 10, "pressure": 0.9,
         "p90_wait_s": 300.0, "arrivals_15m": 20, "served_15m": 11, "ts": minute0},
        {"store_id": "S001", "region": "east", "waiting": 7, "capacity": 10, "pressure": 0.7,
         "p90_wait_s": 200.0, "arrivals_15m": 20, "served_15m": 13,
         "ts": minute0 + timedelta(minutes=1)},
        {"store_id": "S002", "region": "east", "waiting": 2, "capacity": 10, "pressure": 0.2,
         "p90_wait_s": None, "arrivals_15m": 3, "served_15m": 1, "ts": minute0},
    ])
    dash_store.insert("alerts", [alert("A1", "open", "critical", minute0),
                                 alert("A2", "open", "warning", minute0),
                                 alert("A3", "resolved", "warning", minute0)])
    app = run_page()
    shown = metrics(app)
    assert shown["GMV"] == f"¥{3 * (12345 + 500 + 1000) / 100:,.0f}"
    assert shown["Paid orders"] == "18"
    assert shown["Scans"] == "240"
    assert shown["Scan-to-order conversion"] == f"{18 / 240:.1%}"
    assert shown["Waiting for pickup"] == "9"  # S001's latest (7) + S002 (2)
    assert shown["On-time delivery"] == "75.0%"
    assert shown["Open alerts"] == "2"
    assert shown["Pickups served"] == "18"
    regions = app.dataframe[0].value
    assert list(regions["Region"]) == ["east", "west"]
    assert list(regions["GMV"]) == pytest.approx([3 * 128.45, 30.0])


def test_chinese_by_default_english_by_the_switch(
    dash_store: Any, run_page: Callable[..., AppTest], minute0: datetime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CTOWER_LANGUAGE", "zh")
    store_minutes(dash_store, minute0, {"S001": (100, 1, 4)})
    app = run_page()
    assert metrics(app)["扫码次数"] == "12"
    assert app.sidebar.radio(key="lang").value == "zh"
    app = run_page(state={"lang": "en"})  # the sidebar switch
    assert metrics(app)["Scans"] == "12"
    assert "扫码次数" not in metrics(app)


def test_stores_drill_down_from_region_to_store(
    dash_store: Any, run_page: Callable[..., AppTest], minute0: datetime, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CTOWER_MASTER_DATA_FILE", str(write_master_data(tmp_path / "md.json")))
    store_minutes(dash_store, minute0, {"S001": (10000, 2, 20), "S002": (500, 1, 10),
                                        "S003": (1000, 1, 50)})
    dash_store.insert("pickup_levels", [
        {"store_id": "S003", "region": "west", "waiting": 12, "capacity": 10, "pressure": 1.2,
         "p90_wait_s": 700.0, "arrivals_15m": 30, "served_15m": 10, "ts": minute0}])
    app = run_page("stores")
    regions = app.dataframe[0].value
    assert list(regions["Region"]) == ["east", "west"]
    assert list(regions["Stores"]) == [2, 1]
    stores = app.dataframe[1].value
    assert list(stores["Store"]) == ["S001", "S002"]  # east first: the larger GMV
    app.selectbox(key="stores_region").select("west").run()
    assert not app.exception
    stores = app.dataframe[1].value
    assert list(stores["Store"]) == ["S003"]
    assert list(stores["Pickup pressure"]) == [1.2]
    assert list(stores["Waiting for pickup"]) == [12]
    assert list(stores["Scan-to-order conversion"]) == pytest.approx([3 / 150])


def test_inventory_lists_stock_risk_with_transfer_source(
    dash_store: Any, run_page: Callable[..., AppTest], minute0: datetime
) -> None:
    def level(loc: str, sku: str, on_hand: int, velocity: float, cover: float | None,
              source: str | None, ts: datetime) -> dict:
        return {"location_id": loc, "sku": sku, "region": "east", "on_hand": on_hand,
                "velocity_per_h": velocity, "cover_h": cover, "transfer_from": source, "ts": ts}

    later = minute0 + timedelta(minutes=5)
    dash_store.insert("stock_levels", [
        level("S002", "SKU2", 50, 5.0, 10.0, None, minute0),  # replaced by the later row
        level("S001", "SKU1", 0, 3.0, 0.0, "WH-east", later),
        level("S002", "SKU2", 5, 5.0, 1.0, "S003", later),
        level("S003", "SKU3", 100, 1.0, 100.0, None, later),
    ])
    app = run_page("inventory")
    shown = metrics(app)
    assert shown == {"Tracked stock units": "3", "Out of stock": "1", "Short of cover": "1"}
    risk = app.dataframe[0].value
    assert list(risk["Location"]) == ["S001", "S002"]
    assert list(risk["Transfer from"]) == ["WH-east", "S003"]
    assert list(risk["Cover (h)"]) == [0.0, 1.0]
    app.number_input(key="cover_hours").set_value(150.0).run()
    assert metrics(app)["Short of cover"] == "2"


def test_pickup_shows_each_store_s_latest_queue(
    dash_store: Any, run_page: Callable[..., AppTest], minute0: datetime
) -> None:
    dash_store.insert("pickup_levels", [
        {"store_id": "S001", "region": "east", "waiting": 9, "capacity": 10, "pressure": 0.9,
         "p90_wait_s": 900.0, "arrivals_15m": 20, "served_15m": 11, "ts": minute0},
        {"store_id": "S001", "region": "east", "waiting": 3, "capacity": 10, "pressure": 0.3,
         "p90_wait_s": 120.0, "arrivals_15m": 20, "served_15m": 17,
         "ts": minute0 + timedelta(minutes=2)},
        {"store_id": "S002", "region": "east", "waiting": 12, "capacity": 10, "pressure": 1.2,
         "p90_wait_s": 660.0, "arrivals_15m": 25, "served_15m": 13,
         "ts": minute0 + timedelta(minutes=1)},
    ])
    app = run_page("pickup")
    shown = metrics(app)
    assert shown["Waiting for pickup"] == "15"
    assert shown["Stores over capacity"] == "1"
    assert shown["Worst p90 wait"] == "11.0 min"
    levels = app.dataframe[0].value
    assert list(levels["Store"]) == ["S002", "S001"]
    assert list(levels["Waiting for pickup"]) == [12, 3]
    assert len(app.get("plotly_chart")) == 1


def test_logistics_status_late_and_on_time(
    dash_store: Any, run_page: Callable[..., AppTest], minute0: datetime
) -> None:
    rows = []

    def event(shipment: str, status: str, ts: datetime, eta: datetime | None) -> None:
        rows.append({
            "event_key": f"{shipment}:{status}", "event_id": None, "shipment_id": shipment,
            "order_id": f"O-{shipment}", "origin_type": "central_warehouse",
            "origin_id": "WH-east", "carrier": "SF", "region": "east", "status": status,
            "eta": eta, "ts": ts, "source_topic": "ct.logistics", "partition": 0,
            "offset": len(rows)})

    t0 = minute0 - timedelta(hours=5)
    event("SH1", "created", t0, t0 + timedelta(hours=2))
    event("SH1", "in_transit", t0 + timedelta(hours=1), t0 + timedelta(hours=2))  # late now
    event("SH2", "created", t0, minute0 + timedelta(hours=3))
    event("SH2", "delivered", minute0, minute0 + timedelta(hours=3))
    event("SH3", "created", t0, minute0)
    event("SH3", "failed", minute0 - timedelta(minutes=5), minute0)
    dash_store.insert("logistics_events", rows)
    dash_store.insert("carrier_region_15min", [{
        "carrier": "SF", "region": "east", "window_start": minute0,
        "window_end": minute0 + timedelta(minutes=15), "created": 3, "picked_up": 0,
        "in_transit": 1, "out_for_delivery": 0, "delivered": 5, "failed": 1, "returned": 0,
        "delivered_on_time": 4, "delivered_late": 1, "source_topic": "ct.logistics",
        "partition": 0, "through_offset": 6, "closed_at": minute0}])
    dash_store.insert("alerts", [alert("ST1", "open", "warning", minute0,
                                       kind="shipment_stale", carrier="SF")])
    app = run_page("logistics")
    shown = metrics(app)
    assert shown == {"On-time delivery": "80.0%", "Past their ETA": "1",
                     "Stale shipments": "1", "Failed or returned": "1"}
    tables = [frame.value for frame in app.dataframe]
    late = next(t for t in tables if "hours_late" in t.columns)
    assert list(late["shipment_id"]) == ["SH1"]
    assert list(late["hours_late"]) == [3.0]  # ETA t0+2h, newest event at minute0 = t0+5h
    failed = next(t for t in tables if "last_update" in t.columns and "eta" not in t.columns)
    assert list(failed["shipment_id"]) == ["SH3"]


def test_coupons_issued_against_cap_and_held_back(
    dash_store: Any, run_page: Callable[..., AppTest], minute0: datetime
) -> None:
    rows = []
    for m in range(3):
        window = minute0 + timedelta(minutes=m)
        for store_id, issued in (("S001", 5), ("S002", 2)):
            rows.append({"campaign_id": "C1", "store_id": store_id, "window_start": window,
                         "window_end": window + timedelta(minutes=1), "issued": issued,
                         "claimed": 1, "redeemed": 0, "expired": 0, "source_topic": "ct.coupon",
                         "partition": 0, "through_offset": m, "closed_at": window})
    dash_store.insert("campaign_store_minute", rows)
    dash_store.insert("coupon_policies", [
        {"campaign_id": "C1", "store_id": "", "cap_per_window": 100, "window_seconds": 3600,
         "per_member_limit": None, "paused": False, "set_by": "mkt", "set_at": minute0},
        {"campaign_id": "C1", "store_id": "S001", "cap_per_window": 10, "window_seconds": 120,
         "per_member_limit": 1, "paused": False, "set_by": "mkt", "set_at": minute0},
    ])
    dash_store.insert("coupon_decisions", [
        {"campaign_id": "C1", "store_id": "S002", "state": "throttled",
         "reason": "pickup_pressure", "evidence": '{"pressure": 0.9, "threshold": 0.8}',
         "ts": minute0},
        {"campaign_id": "C1", "store_id": "S001", "state": "paused", "reason": "stock_cover",
         "evidence": "{}", "ts": minute0},
        {"campaign_id": "C1", "store_id": "S001", "state": "open", "reason": "cleared",
         "evidence": "{}", "ts": minute0 + timedelta(minutes=1)},
    ])
    app = run_page("coupons")
    assert metrics(app) == {"Coupons issued": "21", "Throttled": "1", "Paused": "0"}
    caps = app.dataframe[0].value
    assert list(caps["Store"]) == ["all stores", "S001"]
    assert list(caps["Issued in window"]) == [21, 10]  # S001's cap: the last 2 minutes only
    assert list(caps["Usage"]) == pytest.approx([0.21, 1.0])
    held = app.dataframe[1].value
    assert list(zip(held["Store"], held["State"], held["Reason"], strict=True)) == [
        ("S002", "throttled", "pickup_pressure")]
    per_store = app.dataframe[2].value
    assert dict(zip(per_store["Store"], per_store["State"], strict=True)) == {
        "S001": "open", "S002": "throttled"}


def test_alert_feed_with_acknowledgement_and_delivery_status(
    dash_store: Any, run_page: Callable[..., AppTest], minute0: datetime
) -> None:
    dash_store.insert("alerts", [
        alert("A1", "open", "critical", minute0 + timedelta(minutes=2)),
        alert("A2", "open", "warning", minute0 + timedelta(minutes=1)),
        alert("A3", "resolved", "warning", minute0),
    ])
    dash_store.insert("alert_acks", [{"alert_id": "A1", "acked_by": "li", "note": "on it",
                                      "ts": minute0 + timedelta(minutes=3)}])

    def delivery(n: int, alert_id: str, route: str, result: str, at: datetime) -> dict:
        return {"delivery_id": f"d{n}", "alert_id": alert_id, "alert_key": f"k-{alert_id}",
                "kind": "pickup_congestion", "severity": "critical", "route": route,
                "robot": "rob***", "attempt": n, "result": result, "errcode": 0,
                "http_status": 200, "latency_ms": 12.0, "message_kind": "markdown", "ts": at}

    dash_store.insert("alert_deliveries", [
        delivery(1, "A1", "east", "retry", minute0 + timedelta(minutes=2)),
        delivery(2, "A1", "east", "delivered", minute0 + timedelta(minutes=2, seconds=5)),
        delivery(3, "A3", "west", "broken", minute0),
    ])
    app = run_page("alerts")
    assert metrics(app) == {"Open alerts": "2", "Critical": "1", "Not acknowledged": "1",
                            "Broken WeChat Work routes": "1"}
    assert any("west" in error.value for error in app.error)
    feed = app.dataframe[0].value
    assert list(feed["alert_id"]) == ["A1", "A2"]
    assert list(feed["WeChat Work delivery"]) == ["delivered (east, ×2)", "not sent"]
    assert feed["Acknowledged by"].iloc[0] == "li"
    assert "threshold" in feed["Evidence"].iloc[0]
    app.toggle(key="alerts_only_open").set_value(False).run()
    assert list(app.dataframe[0].value["alert_id"]) == ["A1", "A2", "A3"]


def test_unreachable_store_is_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_page: Callable[..., AppTest]
) -> None:
    monkeypatch.setenv("CTOWER_STORE_DSN", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("CTOWER_LANGUAGE", "en")
    for page in (None, "coupons", "alerts"):
        app = run_page(page)
        assert any("Cannot reach the store" in w.value for w in app.warning), page


def test_embedded_store_without_a_sink_is_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_page: Callable[..., AppTest],
    free_port: Callable[[], int],
) -> None:
    monkeypatch.delenv("CTOWER_STORE_DSN", raising=False)
    monkeypatch.setenv("CTOWER_DATA_DIR", str(tmp_path / "nobody"))
    monkeypatch.setenv("CTOWER_STORE_HTTP_PORT", str(free_port()))
    monkeypatch.setenv("CTOWER_LANGUAGE", "en")
    app = run_page("pickup")
    assert any("Cannot reach the store" in w.value and "is the sink running?" in w.value
               for w in app.warning), [w.value for w in app.warning]
