"""The daily curve and span planning."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from ctower.simulator.clock import (
    CHINA_TZ,
    CURVE,
    Pacer,
    curve_at,
    expected_events,
    iso,
    parse_start,
    pinned_start,
    plan_end,
    plan_span,
)


def test_curve_has_daily_mean_one_and_a_quiet_night():
    assert sum(CURVE) / len(CURVE) == pytest.approx(1.0)

    def at(hour: int) -> float:
        return curve_at(int(datetime(2026, 1, 5, hour, 0, tzinfo=CHINA_TZ).timestamp() * 1000))

    assert at(3) < 0.1 < 1.5 < at(12) and at(20) > at(12) > at(15)


def test_plan_span_and_plan_end_invert_expected_events():
    end = int(datetime(2026, 3, 1, 21, 0, tzinfo=CHINA_TZ).timestamp() * 1000)
    start = plan_span(100_000, 50, end)
    assert expected_events(start, end, 50) == pytest.approx(100_000, rel=1e-3)
    assert plan_end(start, 100_000, 50) == pytest.approx(end, abs=2_000)
    # A day's worth at 1 event/s is 86,400 events, whatever the hour.
    assert expected_events(end, end + 86_400_000, 1.0) == pytest.approx(86_400)


@pytest.mark.parametrize("hour, minute", [(0, 5), (11, 59), (12, 0), (17, 50), (21, 10)])
def test_a_bench_workload_starts_at_noon_whatever_the_hour_it_runs(hour: int, minute: int):
    now = datetime(2026, 3, 2, hour, minute, tzinfo=CHINA_TZ)
    before = int(now.timestamp() * 1000)
    start = pinned_start(1_000_000, 50, before)
    at = datetime.fromtimestamp(start / 1000, CHINA_TZ)
    assert (at.hour, at.minute, at.second) == (12, 0, 0)
    assert plan_end(start, 1_000_000, 50) <= before - 60_000  # all of it in the past
    assert plan_end(start + 86_400_000, 1_000_000, 50) > before - 60_000  # the latest such day


def test_iso_round_trip_and_naive_start_is_china_time():
    ts = 1_780_000_000_000
    assert iso(ts).endswith("+08:00")
    assert parse_start(iso(ts)) == ts
    assert parse_start("2026-01-05T08:00:00") == parse_start("2026-01-05T00:00:00+00:00")


def test_pacer_holds_until_the_scaled_time():
    pacer = Pacer(speed=10.0)
    started = time.monotonic()
    pacer.wait_for(1_000_000)
    pacer.wait_for(1_003_000)  # 3 s of event time at 10x: 0.3 s
    assert 0.25 < time.monotonic() - started < 1.0
