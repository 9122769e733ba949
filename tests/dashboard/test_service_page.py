"""The customer-service page: open complaints against the SLA, complaints per SKU
and per store per hour."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from streamlit.testing.v1 import AppTest


def ticket(n: int, state: str, at: datetime, sku: str | None = "K1", store: str = "S1",
           kind: str = "complaint", topic: str = "quality") -> dict[str, Any]:
    return {"event_key": f"T{n}:{state}", "ticket_id": f"T{n}", "channel": "mini_program",
            "kind": kind, "topic": topic, "state": state, "store_id": store, "sku": sku,
            "ts": at, "source_topic": "ct.service", "partition": 0, "offset": n}


def minute(store: str, sku: str, at: datetime, complaints: int, inquiries: int = 0,
           closed: int = 0) -> dict[str, Any]:
    return {"store_id": store, "sku": sku, "window_start": at,
            "window_end": at + timedelta(minutes=1), "inquiries": inquiries,
            "complaints": complaints, "complaints_closed": closed,
            "source_topic": "ct.service", "partition": 0, "through_offset": 1,
            "closed_at": at + timedelta(minutes=1)}


def test_open_complaints_show_their_sla_state_and_the_hours_add_up_minutes(
    dash_store: Any, run_page: Callable[..., AppTest], minute0: datetime
) -> None:
    now = minute0
    dash_store.insert("service_events", [
        ticket(1, "opened", now - timedelta(hours=25)),             # breached
        ticket(2, "opened", now - timedelta(hours=23), sku=None),   # 1 h left: warning
        ticket(3, "opened", now - timedelta(hours=1)),              # 23 h left
        ticket(4, "opened", now - timedelta(hours=3)),
        ticket(4, "closed", now - timedelta(hours=2)),              # answered in time
        ticket(5, "opened", now, kind="inquiry", topic="other"),    # the newest event
    ])
    hour = now.replace(minute=0)  # K1's stores straddle an hour boundary on purpose
    dash_store.insert("service_minute", [
        minute("S1", "K1", hour - timedelta(minutes=1), 2),
        minute("S2", "K1", hour, 3, inquiries=1),
        minute("S2", "K2", hour, 1, closed=1),
    ])
    app = run_page("service")
    assert not app.exception and not app.error
    metrics = {m.label: m.value for m in app.metric}
    assert metrics == {"Open complaints": "3", "SLA running out": "1", "SLA breached": "1",
                       "Answered within SLA": "100%"}
    open_list = app.dataframe[0].value
    assert list(open_list["Ticket"]) == ["T1", "T2", "T3"]
    assert list(open_list["SLA"]) == ["SLA breached", "SLA running out", "OK"]
    assert list(open_list["Hours left"]) == [-1.0, 1.0, 23.0]
    by_sku = app.dataframe[1].value
    assert list(by_sku["SKU"]) == ["K1", "K2"]
    assert list(by_sku["Complaints"]) == [5, 1]
    assert list(by_sku["Stores"]) == [2, 1]
    by_store = app.dataframe[2].value
    assert list(by_store["Store"]) == ["S2", "S1"]
    assert list(by_store["Complaints"]) == [4, 2]
