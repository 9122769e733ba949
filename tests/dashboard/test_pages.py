"""Every page in Streamlit's AppTest against a real store: it renders empty
and with data, and the figures it shows are the ones in the store."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from streamlit.testing.v1 import AppTest

PAGES = ["overview", "stores", "skus", "inventory", "pickup", "logistics", "guides", "coupons",
         "alerts", "pipeline"]
EMPTY = {
    "overview": "No data yet: waiting for the first closed minute.",
    "stores": "No data yet: waiting for the first closed minute.",
    "inventory": "No stock levels yet: the rules have not published any.",
    "pickup": "No pickup queues yet: the rules have not published any levels.",
    "logistics": "No logistics data yet.",
    "guides": "No guide deliveries yet: no logistics events of guides have come in.",
    "coupons": "No coupon data yet.",
    "alerts": "No alerts.",
    "skus": "No SKU scans yet.",
}
METRICS_WHEN_EMPTY = {"alerts": 5, "pipeline": 4}  # zero counts
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
        "evidence": json.dumps({"waiting": 14, "capacity": 10, "pressure": 1.4,
                                "p90_wait_min": 4.0, "threshold_min": 10}), "action": None,
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
    if page in EMPTY:
        assert EMPTY[page] in [info.value for info in app.info]
    assert not app.warning and not app.error
    assert not [m.value for m in app.markdown if "views/" in m.value]  # no stray docstrings
    assert len(app.metric) == METRICS_WHEN_EMPTY.get(page, 0)


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


def tiles(app: AppTest) -> dict[str, str]:
    """Store -> the label of its tile on the board."""
    return {b.key.removeprefix("open_"): b.label for b in app.button
            if b.key and b.key.startswith("open_")}


def test_store_board_groups_by_region_colours_by_worst_condition_and_drills_down(
    dash_store: Any, run_page: Callable[..., AppTest], minute0: datetime, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CTOWER_MASTER_DATA_FILE", str(write_master_data(tmp_path / "md.json")))
    store_minutes(dash_store, minute0, {"S001": (10000, 2, 20), "S002": (500, 1, 10),
                                        "S003": (1000, 1, 50)})
    dash_store.insert("pickup_levels", [
        {"store_id": "S003", "region": "west", "waiting": 12, "capacity": 10, "pressure": 1.2,
         "p90_wait_s": 700.0, "arrivals_15m": 30, "served_15m": 10, "ts": minute0}])
    dash_store.insert("alerts", [
        alert("R1", "open", "warning", minute0, store_id="S002", kind="restock"),
        alert("W1", "open", "warning", minute0, store_id="S001", kind="demand_spike"),
        alert("W2", "open", "warning", minute0, store_id="S001", kind="demand_spike"),
        alert("X1", "open", "critical", minute0, store_id="S001", kind="stock_out"),
    ])
    dash_store.insert("alert_acks", [{"alert_id": "X1", "acked_by": "li", "note": "refilled",
                                      "ts": minute0, "action": "resolve", "owner": ""}])
    app = run_page("stores")
    shown = tiles(app)
    assert set(shown) == {"S001", "S002", "S003"}
    assert shown["S001"].endswith("warnings 2")  # the stock-out was resolved by an operator
    assert shown["S002"].endswith("to restock 1")
    assert shown["S003"].endswith("over capacity 12/10")
    assert metrics(app)[":red[●] Critical"] == "1"
    assert metrics(app)[":orange[●] Attention"] == "1"
    assert metrics(app)[":yellow[●] Notice"] == "1"
    regions = [m.value for m in app.markdown if " stores · GMV" in m.value]
    assert [r.split("**")[1] for r in regions] == [":red[●] west", ":orange[●] east"]
    app.button(key="open_S003").click().run()
    assert not app.exception, app.exception
    assert app.query_params["store"] in ("S003", ["S003"])
    assert app.header[0].value.startswith("Store S003")
    shown = metrics(app)
    assert shown["Waiting for pickup"] == "12"
    assert shown["Pickup pressure"] == "1.20"
    assert shown["Scans"] == "150"
    assert shown["Scan-to-order conversion"] == f"{3 / 150:.1%}"
    app.button(key="stores_back").click().run()
    assert "store" not in app.query_params
    assert set(tiles(app)) == {"S001", "S002", "S003"}


def test_a_store_s_drill_down_opens_by_its_url(
    dash_store: Any, run_page: Callable[..., AppTest], minute0: datetime, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CTOWER_MASTER_DATA_FILE", str(write_master_data(tmp_path / "md.json")))
    store_minutes(dash_store, minute0, {"S002": (500, 1, 10)})
    dash_store.insert("stock_levels", [
        {"location_id": "S002", "sku": "SKU9", "region": "east", "on_hand": 0,
         "velocity_per_h": 2.0, "cover_h": None, "transfer_from": None, "ts": minute0}])
    dash_store.insert("alerts", [alert("A7", "open", "critical", minute0, store_id="S002",
                                       kind="stock_out", evidence=json.dumps(
                                           {"on_hand": 0, "scans": 4, "threshold": 3}))])
    app = run_page("stores", query={"store": "S002"})
    assert app.header[0].value == "Store S002 · east"
    frames = [f.value for f in app.dataframe]
    alerts = next(f for f in frames if "Evidence" in f.columns)
    assert list(alerts["Kind"]) == ["Stock-out"]
    assert list(alerts["Evidence"]) == ["0 on hand, 4 scans while empty ≥ 3"]
    stock = next(f for f in frames if "On hand" in f.columns)
    assert list(stock["SKU"]) == ["SKU9"]
    assert list(stock["Transfer from"]) == [""]  # an empty cell, never "None"


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



def test_inventory_shows_the_open_orders_at_their_furthest_state(
    dash_store: Any, run_page: Callable[..., AppTest], minute0: datetime
) -> None:
    def order(order_id: str, status: str, version: int, kind: str = "transfer") -> dict:
        return {"order_id": order_id, "kind": kind, "status": status, "source": "WH-east",
                "destination": "S001", "sku": "SKU1", "qty": 40,
                "due_at": minute0 + timedelta(hours=4), "created_at": minute0, "ts": minute0,
                "region": "east", "cause": "", "evidence": "{}", "by": "auto", "note": "",
                "version": version}

    dash_store.insert("action_orders", [
        order("TO-1", "proposed", 0), order("TO-1", "dispatched", 2 * 10**13),
        order("PP-2", "proposed", 0, kind="prepack"),
        order("TO-3", "proposed", 0), order("TO-3", "rejected", 3 * 10**13),
    ])
    app = run_page("inventory")
    orders = app.dataframe[-1].value
    assert list(orders["Order"]) == ["PP-2", "TO-1"]
    assert list(orders["Status"]) == ["Proposed", "Dispatched"]
    assert list(orders["Kind"]) == ["Pre-pack", "Transfer"]
    assert "Enter the operator token" in " ".join(c.value for c in app.caption)



def test_logistics_lists_the_open_customer_service_tasks(
    dash_store: Any, run_page: Callable[..., AppTest], minute0: datetime
) -> None:
    def task(task_id: str, kind: str, status: str, version: int, member: str = "") -> dict:
        return {"task_id": task_id, "shipment_id": f"SH-{task_id}", "order_id": f"O-{task_id}",
                "member_id": member, "carrier": "SF", "region": "east", "district": "",
                "kind": kind, "status": status, "detail": "{}", "message": f"msg {task_id}",
                "opened_at": minute0, "closed_at": None, "closed_by": "", "ts": minute0,
                "version": version}

    dash_store.insert("shipment_tasks", [
        task("T-1", "past_eta", "open", 1, "M-1"), task("T-2", "failed", "open", 1),
        task("T-3", "stale", "open", 1), task("T-3", "stale", "closed", 10**13 + 1),
        task("T-4", "not_shipped", "open", 1, "M-4"),
    ])
    app = run_page("logistics")
    shown = metrics(app)
    assert (shown["Past ETA"], shown["Stuck"], shown["Failed"], shown["Not shipped"]) == (
        "1", "0", "1", "1")
    tasks = app.dataframe[-1].value
    assert list(tasks["Task"]) == ["T-1", "T-2", "T-4"]
    assert list(tasks["Member"]) == ["M-1", "", "M-4"]
    assert list(tasks["Message to the customer"]) == ["msg T-1", "msg T-2", "msg T-4"]


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
    late = next(t for t in tables if "Hours late" in t.columns)
    assert list(late["Shipment"]) == ["SH1"]
    assert list(late["Hours late"]) == [3.0]  # ETA t0+2h, newest event at minute0 = t0+5h
    assert list(late["Status"]) == ["In transit"]
    assert list(late["Origin type"]) == ["Central warehouse"]
    eta = (t0 + timedelta(hours=2)).replace(tzinfo=UTC).astimezone(ZoneInfo("Asia/Shanghai"))
    assert list(late["ETA"]) == [eta.strftime("%Y-%m-%d %H:%M:%S")]  # the operators' clock
    failed = next(t for t in tables if "Last update" in t.columns and "ETA" not in t.columns)
    assert list(failed["Shipment"]) == ["SH3"]
    assert list(failed["Status"]) == ["Failed"]


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
    shown = metrics(app)
    assert {k: shown[k] for k in ("Coupons issued", "Throttled", "Paused")} == {
        "Coupons issued": "21", "Throttled": "1", "Paused": "0"}
    caps = app.dataframe[0].value
    assert list(caps["Store"]) == ["all stores", "S001"]
    assert list(caps["Issued in window"]) == [21, 10]  # S001's cap: the last 2 minutes only
    assert list(caps["Usage"]) == pytest.approx([0.21, 1.0])
    held = app.dataframe[1].value
    assert list(zip(held["Store"], held["State"], held["Reason"], strict=True)) == [
        ("S002", "Throttled", "Pickup pressure high")]
    assert list(held["Evidence"]) == ["pickup pressure 0.9 > 0.8"]
    per_store = app.dataframe[2].value
    assert dict(zip(per_store["Store"], per_store["State"], strict=True)) == {
        "S001": "Open", "S002": "Throttled"}
    # the effect of the controls: a policy in force, per minute against its cap
    assert app.selectbox(key="coupon_effect_pick").value == "C1|"
    assert shown["Cap per window"] == "100" and shown["Issued in window"] == "21"
    assert len(app.get("plotly_chart")) >= 1


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
                            "Unacknowledged, overdue": "0", "Broken WeChat Work routes": "1"}
    assert any("west" in error.value for error in app.error)
    feed = app.dataframe[0].value
    assert list(feed["Alert id"]) == ["A1", "A2"]
    assert list(feed["WeChat Work delivery"]) == ["Delivered (east, ×2)", "Not sent"]
    assert list(feed["Acknowledged by"]) == ["li", ""]
    assert list(feed["State"]) == ["Acknowledged", "Not acknowledged"]
    assert list(feed["Kind"]) == ["Pickup congestion"] * 2
    assert list(feed["Severity"]) == ["Critical", "Warning"]
    assert list(feed["Evidence"]) == ["14 waiting > capacity 10 (pickup pressure 1.4)"] * 2
    assert list(feed["Owner"]) == ["", ""]
    app.toggle(key="alerts_only_open").set_value(False).run()
    assert list(app.dataframe[0].value["Alert id"]) == ["A1", "A2", "A3"]
    sla = app.dataframe[1].value
    assert list(sla["Kind"]) == ["Pickup congestion"]
    assert list(sla["Alerts"]) == [3]
    assert list(sla["Acknowledged"]) == [1]
    assert list(sla["To acknowledge p50"]) == ["1 min"]  # opened at +2 min, acked at +3 min
    assert list(sla["Resolved"]) == [1]


def test_alert_workflow_owner_and_operator_resolution_show_on_the_page(
    dash_store: Any, run_page: Callable[..., AppTest], minute0: datetime
) -> None:
    dash_store.insert("alerts", [alert("A1", "open", "critical", minute0),
                                 alert("A2", "open", "warning", minute0)])
    dash_store.insert("alert_acks", [
        {"alert_id": "A1", "acked_by": "li", "note": "", "ts": minute0 + timedelta(seconds=30),
         "action": "ack", "owner": ""},
        {"alert_id": "A1", "acked_by": "li", "note": "", "ts": minute0 + timedelta(minutes=1),
         "action": "assign", "owner": "wang"},
        {"alert_id": "A2", "acked_by": "zhao", "note": "queue cleared by hand",
         "ts": minute0 + timedelta(minutes=4), "action": "resolve", "owner": ""},
    ])
    app = run_page("alerts")
    feed = app.dataframe[0].value
    assert list(feed["Alert id"]) == ["A1"]  # A2 was resolved by an operator
    assert list(feed["Owner"]) == ["wang"]
    app.toggle(key="alerts_only_open").set_value(False).run()
    feed = app.dataframe[0].value.set_index("Alert id")
    assert feed.loc["A2", "State"] == "Resolved by operator"
    assert feed.loc["A2", "Resolution note"] == "queue cleared by hand"
    sla = app.dataframe[1].value
    assert list(sla["To acknowledge p50"]) == ["30 s"]
    assert list(sla["Resolved"]) == [1]
    assert list(sla["To resolve p50"]) == ["4 min"]


def test_an_alert_opens_by_its_link_with_who_did_what(
    dash_store: Any, run_page: Callable[..., AppTest], minute0: datetime
) -> None:
    dash_store.insert("alerts", [alert("A5", "open", "critical", minute0)])
    dash_store.insert("alert_acks", [
        {"alert_id": "A5", "acked_by": "li", "note": "calling", "ts": minute0, "action": "ack",
         "owner": ""}])
    app = run_page("alerts", query={"alert_id": "A5"})
    history = app.dataframe[0].value
    assert list(history["By"]) == ["li"]
    assert list(history["Action"]) == ["Acknowledged"]
    assert list(history["Note"]) == ["calling"]
    assert any("14 waiting > capacity 10" in m.value for m in app.markdown)


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


def test_the_root_url_is_the_overview_and_an_alert_link_opens_the_alert(
    dash_store: Any, minute0: datetime
) -> None:
    import streamlit as st

    from ctower.dashboard.command import PAGE

    dash_store.insert("alerts", [alert("A5", "open", "critical", minute0)])
    st.cache_resource.clear()
    st.cache_data.clear()
    app = AppTest.from_file(str(PAGE), default_timeout=30)
    app.run()
    assert app.header[0].value == "Overview"
    app = AppTest.from_file(str(PAGE), default_timeout=30)
    app.query_params["alert_id"] = "A5"  # <dashboard>/?alert_id=A5, as a WeChat message links
    app.run()
    assert not app.exception, app.exception
    assert app.header[0].value == "Alerts"
    assert any("14 waiting > capacity 10" in m.value for m in app.markdown)


def test_viewers_share_each_refresh_query_for_about_one_refresh(dash_store: Any) -> None:
    from ctower.dashboard.context import PageContext

    calls = []

    def query(client: Any, n: int) -> int:
        calls.append(n)
        return n * 2

    shared = PageContext(dash_store.settings, "en", 60, None)
    other_viewer = PageContext(dash_store.settings, "zh", 60, None)
    assert shared.q(query, 3) == 6
    assert other_viewer.q(query, 3) == 6  # the same question within the refresh: asked once
    assert other_viewer.q(query, 4) == 8
    assert calls == [3, 4]
