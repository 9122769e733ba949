"""The dashboard page in Streamlit's AppTest, against a real embedded store
served by the store's HTTP front (as the sink serves it)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ctower.dashboard.command import PAGE
from ctower.schemas.migrations import apply_migrations
from ctower.settings import Settings, load_settings
from ctower.store import open_store
from ctower.store_server import StoreHttpServer


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Settings, object]]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("CTOWER_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CTOWER_STORE_HTTP_PORT", str(port))
    monkeypatch.setenv("CTOWER_LANGUAGE", "en")
    settings = load_settings()
    client = open_store(settings, owner=True)
    apply_migrations(client)
    server = StoreHttpServer(settings, engine_client=client)
    server.start()
    try:
        yield settings, client
    finally:
        server.stop()


def run_page() -> AppTest:
    import streamlit as st

    st.cache_resource.clear()  # the page caches its client per process, tests share one
    app = AppTest.from_file(str(PAGE), default_timeout=30)
    app.run()
    assert not app.exception, app.exception
    return app


def test_empty_store_shows_an_empty_state(store: tuple[Settings, object]) -> None:
    app = run_page()
    assert [info.value for info in app.info] == [
        "No data yet: waiting for the first closed minute."
    ]
    assert len(app.metric) == 0


def test_figures_come_from_the_closed_windows(store: tuple[Settings, object]) -> None:
    _, client = store
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)
    rows = []
    for minute in range(3):
        for store_id, gmv, paid, scans in (("S001", 12345, 3, 40), ("S002", 500, 1, 10)):
            window = start + timedelta(minutes=minute)
            rows.append([store_id, window, window + timedelta(minutes=1), scans, 0, paid, paid,
                         gmv, 0, 0, 2, 0, 0, 0, "ct.scan", 0, minute, window])
    client.insert("store_minute", rows, column_names=[
        "store_id", "window_start", "window_end", "scans", "add_to_cart", "orders",
        "paid_orders", "gmv_fen", "refunded_orders", "pickup_arrivals", "pickups_served",
        "pickup_no_shows", "coupons_issued", "coupons_redeemed", "source_topic", "partition",
        "through_offset", "closed_at",
    ])
    app = run_page()
    metrics = {metric.label: metric.value for metric in app.metric}
    assert metrics["GMV"] == f"¥{3 * (12345 + 500) / 100:,.0f}"
    assert metrics["Paid orders"] == "12"
    assert metrics["Scans"] == "150"
    assert metrics["Scan-to-order conversion"] == f"{12 / 150:.1%}"
    assert metrics["Pickups served"] == "12"
    top = app.dataframe[0].value
    assert list(top["store_id"]) == ["S001", "S002"]


def test_unreachable_store_is_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CTOWER_STORE_DSN", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("CTOWER_LANGUAGE", "en")
    app = run_page()
    assert any("Cannot reach the store" in warning.value for warning in app.warning)
