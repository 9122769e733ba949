"""The dashboard in a real browser (Debian's chromium, headless, driven by
playwright) against ``ctower demo`` run as a real process: broker (the
session's), sink, worker, simulator and dashboard. A figure on the page must
equal the same figure asked of the store in SQL, and the page is kept as a
screenshot."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ctower.schemas.control import AlertAck
from ctower.settings import Settings
from ctower.store import open_store
from ctower.streams.alert_acks import publish_ack

pytestmark = [pytest.mark.kafka, pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshots" / "overview.png"
SCANS_LAST_HOUR = """
    SELECT sum(scans) FROM store_minute_v
    WHERE window_start >= (SELECT max(window_start) FROM store_minute) - toIntervalMinute(59)
"""


@pytest.fixture
def demo(settings_factory: Callable[..., Settings], tmp_path: Path) -> Iterator[Settings]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    settings = settings_factory(idle_close_seconds=2, operator_token="t0ken")
    log = (tmp_path / "demo.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "ctower", "demo", "--backfill", "4000", "--rate", "40"],
        env=settings.child_env(), stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 150
        while "Ctrl-C stops" not in (tmp_path / "demo.log").read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((tmp_path / "demo.log").read_text()[-3000:])
            time.sleep(0.5)
        yield settings
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_a_kpi_in_the_browser_equals_sql_and_acks_reach_the_store(
    demo: Settings, poll: Callable[..., Any], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    store = open_store(demo, path_fallback=False)

    def sql_scans() -> str:
        return f"{int(store.query(SCANS_LAST_HOUR).first_row[0] or 0):,}"

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1100})
            page.goto(f"http://127.0.0.1:{demo.dashboard_port}/", timeout=60_000)
            page.wait_for_selector('[data-testid="stMetricValue"]', timeout=120_000)
            scans = page.locator('[data-testid="stMetric"]').filter(has_text="扫码次数")

            def page_equals_sql() -> tuple[str, str] | None:
                shown = scans.locator('[data-testid="stMetricValue"]').inner_text().strip()
                expected = sql_scans()
                return (shown, expected) if shown == expected and shown != "0" else None

            # the page refreshes every 2 s while minutes keep closing: wait for both to agree
            poll(page_equals_sql, 60, "the page's scans never equalled the store's", every=0.7)
            page.wait_for_timeout(1500)  # let the charts draw for the picture
            shot = tmp_path / "overview.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 20_000
            shutil.copyfile(shot, DOCS_SCREENSHOT)
        finally:
            browser.close()

    publish_ack(demo, AlertAck(alert_id="A-browser", acked_by="wang", note="seen", ts=1))
    poll(lambda: store.query("SELECT acked_by FROM alert_acks FINAL "
                             "WHERE alert_id = 'A-browser'").result_rows,
         30, "the sink never stored the acknowledgement")
