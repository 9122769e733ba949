"""The dashboard in a real browser (Debian's chromium, headless, driven by
playwright) against ``ctower demo`` run as a real process: broker (the
session's), sink, worker, simulator and dashboard.

Every page opens by its own URL, survives a refresh and opens by a click in
the sidebar, in Chinese and in English, without an error or Streamlit's
"page not found"; a screenshot of each is kept in docs/screenshots/ (the
README shows them). A figure on the page equals the same figure asked of the
store; the operator token the demo prints unlocks the controls, and a cap
set in the browser reaches the store; a store tile opens its drill-down; and
the demo's minute trend has no seam where its history meets the live
events."""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ctower.control.alert_acks import publish_ack
from ctower.dashboard.context import PAGES
from ctower.dashboard.i18n import LABELS
from ctower.schemas.control import AlertAck
from ctower.settings import Settings
from ctower.store import open_store

pytestmark = [pytest.mark.kafka, pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
SCANS_LAST_HOUR = """
    SELECT sum(scans) FROM store_minute_v
    WHERE window_start >= (SELECT max(window_start) FROM store_minute) - toIntervalMinute(59)
"""
HEADER = '[data-testid="stMain"] [data-testid="stHeading"] h2'
TOKEN_LINE = re.compile(r"Operator token \(unlocks the dashboard's controls\): (\S+)")


@pytest.fixture
def demo(settings_factory: Callable[..., Settings], tmp_path: Path) -> Iterator[Settings]:
    """``ctower demo`` with no operator token configured: it makes one up."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    settings = settings_factory(idle_close_seconds=2)
    assert not settings.operator_token.get_secret_value()
    log_path = tmp_path / "demo.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "ctower", "demo", "--backfill", "40000", "--rate", "40"],
        env=settings.child_env(), stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180
        while "Ctrl-C stops" not in log_path.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(log_path.read_text()[-3000:])
            time.sleep(0.5)
        yield settings
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def shoot(page: Any, path: Path) -> None:
    """The whole page (Streamlit scrolls inside its main area, so a full-page
    screenshot of the window would stop at the fold)."""
    height = page.evaluate(
        "Math.min(document.querySelector('[data-testid=stMain]').scrollHeight, 6000)")
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], height)})
    page.wait_for_timeout(1200)  # the charts fit themselves to the new size
    page.screenshot(path=str(path))
    page.set_viewport_size(size)


def printed_token(tmp_path: Path) -> str:
    found = TOKEN_LINE.search((tmp_path / "demo.log").read_text())
    assert found, "the demo did not print an operator token"
    return found.group(1)


def open_page(page: Any, url: str, title: str) -> None:
    """Go to ``url`` and wait until the page's own header reads ``title``."""
    page.goto(url, timeout=60_000)
    check_page(page, title)


def check_page(page: Any, title: str) -> None:
    page.wait_for_function(
        "([sel, title]) => [...document.querySelectorAll(sel)]"
        ".some(h => h.innerText.trim().startsWith(title))",
        arg=[HEADER, title], timeout=60_000)
    page.wait_for_timeout(1500)  # the fragments draw their figures
    assert page.locator('[data-testid="stException"]').count() == 0, page.url
    assert page.get_by_text("Page not found").count() == 0, page.url
    assert page.get_by_text("run the dashboard through its entry script").count() == 0


def test_every_page_by_url_refresh_and_click_in_both_languages(
    demo: Settings, poll: Callable[..., Any], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    base = f"http://127.0.0.1:{demo.dashboard_port}"
    store = open_store(demo, path_fallback=False)
    token = printed_token(tmp_path)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            # a KPI on the page is the store's figure
            open_page(page, f"{base}/", LABELS["zh"]["page_overview"])
            assert page.url.startswith(f"{base}/overview")  # the root is the overview
            scans = page.locator('[data-testid="stMetric"]').filter(has_text="扫码次数")

            def page_equals_sql() -> tuple[str, str] | None:
                shown = scans.locator('[data-testid="stMetricValue"]').inner_text().strip()
                expected = f"{int(store.query(SCANS_LAST_HOUR).first_row[0] or 0):,}"
                return (shown, expected) if shown == expected and shown != "0" else None

            poll(page_equals_sql, 90, "the page's scans never equalled the store's", every=0.7)

            for lang in ("zh", "en"):
                words = LABELS[lang]
                open_page(page, f"{base}/?lang={lang}", words["page_overview"])
                for name in PAGES:  # by a click in the sidebar
                    title = words[f"page_{name}"]
                    page.locator('[data-testid="stSidebarNav"] a', has_text=title).click()
                    check_page(page, title)
                    assert re.search(rf"/{name}(\?|$)", page.url), page.url
            # the pictures are better with an alert or two: the rules raise some within minutes
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not store.query(
                    "SELECT count() FROM alerts FINAL WHERE status = 'open'").first_row[0]:
                time.sleep(2)
            for lang in ("zh", "en"):
                words = LABELS[lang]
                for name in PAGES:
                    title = words[f"page_{name}"]
                    open_page(page, f"{base}/{name}?lang={lang}", title)  # by its URL
                    shoot(page, SCREENSHOTS / f"{name}-{lang}.png")
                    page.reload()  # a refresh keeps the page and the language
                    check_page(page, title)
                    assert f"/{name}" in page.url and f"lang={lang}" in page.url

            # a store's tile opens its drill-down, at a URL of its own
            open_page(page, f"{base}/stores?lang=en", "Stores")
            tile = page.locator('[class*="st-key-tile"] button').first
            store_id = tile.inner_text().split()[0]
            tile.click()
            check_page(page, f"Store {store_id}")
            assert f"store={store_id}" in page.url
            shoot(page, SCREENSHOTS / "store-drill-down-en.png")

            # the token the demo printed unlocks the controls; a cap set here reaches the store
            open_page(page, f"{base}/coupons?lang=en", "Coupons")
            sidebar = page.locator('[data-testid="stSidebar"]')
            sidebar.get_by_label("Operator name").fill("wang")
            sidebar.get_by_label("Operator token").fill(token)
            sidebar.get_by_label("Operator token").press("Enter")
            page.get_by_text("Unlocked as wang").wait_for(timeout=30_000)
            page.get_by_role("button", name="Set cap").click()
            page.get_by_text("Coupon policy sent").wait_for(timeout=30_000)
            poll(lambda: store.query("SELECT count() FROM coupon_policies "
                                     "WHERE set_by = 'dashboard:wang'").first_row[0],
                 60, "the cap set in the browser never reached the store")
            page.wait_for_timeout(3000)  # its effect: the minutes against the new cap
            shoot(page, SCREENSHOTS / "coupon-controls-en.png")
            # the unlock holds for the session: the alerts page's workflow is open too
            page.locator('[data-testid="stSidebarNav"] a', has_text="Alerts").click()
            check_page(page, "Alerts")
            assert page.get_by_text("Enter the operator token").count() == 0
            assert page.get_by_text("Handle an alert").count() == 1
        finally:
            browser.close()

    publish_ack(demo, AlertAck(alert_id="A-browser", acked_by="wang", note="seen", ts=1,
                               action="resolve"))
    poll(lambda: store.query("SELECT acked_by FROM alert_acks FINAL "
                             "WHERE alert_id = 'A-browser' AND action = 'resolve'").result_rows,
         30, "the sink never stored the operator's resolution")

    # no seam in the minute trend where the demo's history meets its live events: the
    # minute the feed caught up with the wall clock carries its share like its neighbours
    caught = re.search(r"caught up with the wall clock at (\d{4}-\d\d-\d\dT[\d:]{8}[+-]\d{4})",
                       (demo.data_dir / "logs" / "simulator.log").read_text())
    assert caught, "the demo's simulator never ran live"
    join = datetime.strptime(caught.group(1), "%Y-%m-%dT%H:%M:%S%z").astimezone(UTC)
    join = join.replace(second=0, tzinfo=None)

    def around_join() -> list[int] | None:
        rows = {start.replace(tzinfo=None): n for start, n in store.query(
            "SELECT window_start, sum(scans) FROM store_minute_v GROUP BY window_start"
        ).result_rows}
        found = [rows.get(join + timedelta(minutes=m)) for m in (-1, 0, 1)]
        return None if None in found else [int(n) for n in found]

    before, at_join, after = poll(around_join, 120, "the minutes around the join never closed")
    assert at_join >= 0.6 * statistics.mean([before, after]), (before, at_join, after)
