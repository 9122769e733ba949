"""The shadow rules beside the live ones on the alerts page."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from streamlit.testing.v1 import AppTest


def alert(alert_id: str, store: str, opened: datetime, p90: float) -> dict[str, Any]:
    return {
        "alert_id": alert_id, "key": f"pickup_congestion:{store}", "kind": "pickup_congestion",
        "severity": "warning", "status": "open", "message": f"message {alert_id}",
        "evidence": json.dumps({"waiting": 3, "capacity": 10, "pressure": 0.3,
                                "p90_wait_min": p90, "threshold_min": 5.0}),
        "opened_at": opened, "raised_at": opened, "region": "east", "store_id": store,
        "version": 1,
    }


def frames_with(app: AppTest, column: str) -> list[Any]:
    return [frame.value for frame in app.dataframe if column in frame.value.columns]


def test_no_shadow_no_section(dash_store: Any, run_page: Callable[..., AppTest],
                              minute0: datetime) -> None:
    dash_store.insert("alerts", [alert("A1", "S2", minute0, 12.0)])
    app = run_page("alerts")
    assert not any("Shadow" in h.value for h in app.subheader)


def test_the_candidate_s_alerts_and_decisions_beside_the_live_ones(
    dash_store: Any, run_page: Callable[..., AppTest], minute0: datetime
) -> None:
    dash_store.insert("alerts", [alert("A1", "S2", minute0, 12.0)])
    dash_store.insert("shadow_alerts", [
        alert("shadow-A1", "S2", minute0, 12.0),
        alert("shadow-A2", "S1", minute0 + timedelta(minutes=1), 6.0),
    ])
    dash_store.insert("shadow_coupon_signals", [{
        "campaign_id": "PICK", "store_id": "S2", "cause": "pickup_pressure", "sku": "",
        "active": True, "evidence": json.dumps({"pressure": 0.9, "threshold": 0.8}),
        "ts": minute0,
    }])
    app = run_page("alerts")
    assert any(h.value == "Shadow rules (candidate) beside the live ones" for h in app.subheader)
    (compare,) = frames_with(app, "Candidate")
    assert list(compare["Rules in force"]) == [1]
    assert list(compare["Candidate"]) == [2]
    assert list(compare["Keys only the candidate alerts on"]) == [1]
    (feed,) = frames_with(app, "Live alerted too")
    assert list(feed["Alert id"]) == ["shadow-A2", "shadow-A1"]  # newest first
    assert list(feed["Live alerted too"]) == ["", "yes"]
    (signals,) = frames_with(app, "In force")
    assert list(signals["Store"]) == ["S2"] and list(signals["In force"]) == ["In force"]
    # the live feed is the live table's only
    live = app.dataframe[0].value
    assert list(live["Alert id"]) == ["A1"]
