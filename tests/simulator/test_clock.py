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
