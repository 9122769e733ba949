"""The guides page: per store the guides who can take a delivery against the guide
deliveries open and waiting; per guide today's deliveries against the cap."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

NOW = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
"""14:00 in Shanghai: the early shift (08-17) and the late one (13-22) both on."""


def event(sid: str, status: str, at: datetime, store: str, guide: str | None,
          eta: datetime | None = None, n: int = 0) -> dict[str, Any]:
    return {"event_key": f"{sid}:{status}", "shipment_id": sid, "order_id": f"O{sid}",
            "origin_type": "guide", "origin_id": store, "carrier": "GUIDE", "region": "east",
            "status": status, "eta": eta or at + timedelta(hours=1), "ts": at,
            "guide_id": guide, "source_topic": "ct.logistics", "partition": 0, "offset": n}


def delivery(sid: str, store: str, guide: str, done: datetime, late_min: int = 0,
             status: str = "delivered") -> list[dict[str, Any]]:
    eta = done - timedelta(minutes=late_min)
    created = eta - timedelta(minutes=50)
    return [event(sid, "created", created, store, None, eta),
            event(sid, "picked_up", created + timedelta(minutes=5), store, guide, eta),
            event(sid, status, done, store, guide, eta)]


def write_master(path: Path) -> Path:
    path.write_text(json.dumps({
        "regions": [{"region_id": "east", "warehouse_id": "WH-east"}],
        "stores": [{"store_id": "S001", "region_id": "east"},
                   {"store_id": "S002", "region_id": "east"}],
        "guides": [
            {"guide_id": "G1", "store_id": "S001", "daily_cap": 2,
             "shift_start_hour": 8, "shift_end_hour": 17},
            {"guide_id": "G2", "store_id": "S001", "shift_start_hour": 13,
             "shift_end_hour": 22},
            {"guide_id": "G3", "store_id": "S002", "shift_start_hour": 8,
             "shift_end_hour": 12},
        ],
    }))
    return path


def test_guides_against_open_deliveries_and_each_guide_s_day(
    dash_store: Any, run_page: Callable[..., AppTest], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CTOWER_MASTER_DATA_FILE", str(write_master(tmp_path / "md.json")))
    rows = [
        *delivery("A", "S001", "G1", NOW - timedelta(hours=2)),                  # on time
        *delivery("B", "S001", "G1", NOW - timedelta(hours=1), late_min=25),     # late: G1 at cap
        *delivery("C", "S001", "G2", NOW - timedelta(minutes=30), status="failed"),
        *delivery("D", "S001", "G2", NOW - timedelta(days=1)),                   # yesterday
        # waiting for a guide: 30 and 5 minutes
        event("W1", "created", NOW - timedelta(minutes=30), "S001", None),
        event("W2", "created", NOW - timedelta(minutes=5), "S001", None),
        # out with G2 now
        event("O1", "created", NOW - timedelta(minutes=40), "S001", None),
        event("O1", "picked_up", NOW - timedelta(minutes=35), "S001", "G2"),
        # S002: its only guide is off shift, one order waits 25 minutes; the newest event
        event("W3", "created", NOW - timedelta(minutes=25), "S002", None),
        event("X", "in_transit", NOW, "S002", "G9"),  # a guide the master data does not name
    ]
    dash_store.insert("logistics_events", [r | {"offset": n} for n, r in enumerate(rows)])
    app = run_page("guides")
    assert not app.exception and not app.error and not app.warning
    metrics = {m.label: m.value for m in app.metric}
    # G1, G2, G3 and G9 (seen out now); on shift at 14:00: G1, G2 and G9
    assert metrics == {"Guides (on shift)": "4 (3)", "Delivered today": "2",
                       "On time today": "50%", "Waiting > 20 min": "2"}
    stores = app.dataframe[0].value
    assert list(stores["Store"]) == ["S001", "S002"]
    s1, s2 = (stores.iloc[i].to_dict() for i in range(2))
    # S001: G1 is at its cap of 2, G2 can take one; W1, W2 waiting, O1 and W's open
    assert (s1["Guides"], s1["On shift"], s1["Can take one"]) == (2, 2, 1)
    assert (s1["Open"], s1["Waiting for a guide"], s1["Waiting > 20 min"]) == (3, 2, 1)
    assert s1["Longest wait (min)"] == 30.0
    assert (s2["Guides"], s2["On shift"], s2["Can take one"], s2["Waiting > 20 min"]) == (
        2, 1, 1, 1)
    guides = app.dataframe[1].value.set_index("Guide")
    assert list(guides.index) == ["G1", "G2", "G3", "G9"]
    g1, g2 = guides.loc["G1"], guides.loc["G2"]
    assert (g1["Delivered today"], g1["Cap"], g1["At cap"], g1["Late"], g1["On time"]) == (
        2, 2, "yes", 1, 50.0)
    assert (g2["Delivered today"], g2["Cap"], g2["Failed"], g2["Out now"]) == (0, 20, 1, 1)
    assert guides.loc["G3", "On shift"] == "no"
    # opened by its URL, as a link or a refresh would, it shows the same
    again = run_page("guides", query={"lang": "en"})
    assert {m.label: m.value for m in again.metric} == metrics


def test_the_guides_page_in_chinese_on_an_empty_store(
    dash_store: Any, run_page: Callable[..., AppTest],
) -> None:
    app = run_page("guides", state={"lang": "zh"})
    assert not app.exception and not app.error
    assert [h.value for h in app.header] == ["导购"]
    assert [i.value for i in app.info] == ["暂无导购配送数据：尚未收到导购配送的物流事件。"]
    assert not app.metric
