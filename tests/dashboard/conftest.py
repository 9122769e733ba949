"""Fixtures for the dashboard: a real embedded store (migrated, with the
agreed tables of the other parts), served by the store's HTTP front exactly as
the sink serves it, and the dashboard run in Streamlit's AppTest.

No Kafka here unless a test asks for ``settings_factory``: the store fixture
builds its settings from the environment it sets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from streamlit.testing.v1 import AppTest

from ctower.dashboard.command import PAGE
from ctower.devstack.store_front.server import StoreHttpServer
from ctower.schemas.migrations import apply_migrations
from ctower.settings import Settings, load_settings
from ctower.store import open_store


@dataclass
class DashStore:
    settings: Settings
    client: Client

    def insert(self, table: str, rows: list[dict[str, Any]]) -> None:
        columns = list(rows[0])
        self.client.insert(table, [[r[c] for c in columns] for r in rows], column_names=columns)


@pytest.fixture
def dash_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free_port: Callable[[], int],
) -> Iterator[DashStore]:
    for name in ("CTOWER_STORE_DSN", "CTOWER_CONFIG", "CTOWER_OPERATOR_TOKEN",
                 "CTOWER_MASTER_DATA_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CTOWER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CTOWER_STORE_HTTP_PORT", str(free_port()))
    monkeypatch.setenv("CTOWER_LANGUAGE", "en")
    # nobody's worker or broker: a test that wants one says so
    monkeypatch.setenv("CTOWER_WORKER_WEB_PORT", str(free_port()))
    monkeypatch.setenv("CTOWER_KAFKA_BOOTSTRAP", "127.0.0.1:9")
    settings = load_settings()
    client = open_store(settings, owner=True)
    apply_migrations(client)
    server = StoreHttpServer(settings, engine_client=client).start()
    try:
        yield DashStore(settings, client)
    finally:
        server.stop()
        client.close()


@pytest.fixture
def run_page() -> Callable[..., AppTest]:
    """Run the dashboard and open one page.

    ``state`` sets sidebar widgets by key before the first run. (AppTest runs
    the entry script on the first run; later runs of a multipage app with
    live fragments did not always run it again, so the sidebar is set up
    front, as a user's session would already hold it.)
    """

    def run(page: str | None = None, state: dict[str, Any] | None = None,
            query: dict[str, str] | None = None) -> AppTest:
        import streamlit as st

        st.cache_resource.clear()  # the page caches its client per process, tests share one
        st.cache_data.clear()  # and its answers for about one refresh
        app = AppTest.from_file(str(PAGE), default_timeout=30)
        for key, value in (state or {}).items():
            app.session_state[key] = value
        if page is not None and query:
            app.switch_page(f"views/{page}.py")  # opened by its URL, as a link would
            app.query_params.update(query)
            app.run()
            assert not app.exception, app.exception
            return app
        app.run()
        assert not app.exception, app.exception
        if page is not None:
            app.switch_page(f"views/{page}.py").run()
        assert not app.exception, app.exception
        return app

    return run


@pytest.fixture
def minute0() -> datetime:
    """A whole minute a little in the past: where the test's closed windows start."""
    return datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=10)
