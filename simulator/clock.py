"""Time for the simulator: the daily curve, span planning and live pacing.

Shoppers follow the clock on the wall in China (UTC+8): quiet at night,
a lunch peak and a higher evening peak. The curve is normalised to a daily
mean of 1, so ``sim_rate`` (events per simulated second) is the day's
average and the shape is visible in every per-minute aggregate.

With ``--rate max`` nothing waits: a simulated clock runs, and
:func:`plan_span` chooses its start so the last event lands just before now
(the worker refuses events more than ``ts_max_future_seconds`` ahead). With
``--rate N`` the :class:`Pacer` holds each event until the wall clock reaches
its ``ts``, so event time *is* wall time.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

from ctower.schemas.events import MINUTE

CHINA_TZ = timezone(timedelta(hours=8), "UTC+08:00")
DAY_MS = 86_400_000
_LOCAL_OFFSET_MS = 8 * 3_600_000

_HOURLY = (
    0.15, 0.08, 0.05, 0.04, 0.04, 0.06, 0.15, 0.40, 0.65, 0.80, 0.95, 1.35,
    1.80, 1.50, 1.00, 0.95, 1.05, 1.35, 1.75, 2.10, 2.20, 1.70, 0.95, 0.45,
)  # fmt: skip
"""Relative activity at each local hour (before normalisation)."""


def _minute_table() -> list[float]:
    """Activity per minute of the local day, linearly interpolated, mean 1."""
    raw = []
    for minute in range(1440):
        h, frac = divmod(minute / 60.0, 1.0)
        a, b = _HOURLY[int(h)], _HOURLY[(int(h) + 1) % 24]
        raw.append(a + (b - a) * frac)
    mean = sum(raw) / len(raw)
    return [v / mean for v in raw]


CURVE = _minute_table()
_PREFIX = [0.0]
for _v in CURVE:
    _PREFIX.append(_PREFIX[-1] + _v)
_DAY_SUM = _PREFIX[-1]


def curve_at(ts_ms: int) -> float:
    """Relative activity (daily mean 1) at an epoch-ms instant."""
    return CURVE[((ts_ms + _LOCAL_OFFSET_MS) % DAY_MS) // MINUTE]


def local_hour(ts_ms: int) -> int:
    return ((ts_ms + _LOCAL_OFFSET_MS) % DAY_MS) // 3_600_000


def cumulative_minutes(ts_ms: int) -> float:
    """Integral of the curve from the epoch to ts, in curve-minutes."""
    local = ts_ms + _LOCAL_OFFSET_MS
    days, rest = divmod(local, DAY_MS)
    minute, frac_ms = divmod(rest, MINUTE)
    return days * _DAY_SUM + _PREFIX[minute] + CURVE[minute] * frac_ms / MINUTE


def expected_events(start_ms: int, end_ms: int, sim_rate: float) -> float:
    """Events the curve asks for between two instants at ``sim_rate`` events/s."""
    return (cumulative_minutes(end_ms) - cumulative_minutes(start_ms)) * 60.0 * sim_rate


def plan_span(events: int, sim_rate: float, end_ms: int) -> int:
    """Start instant such that ``events`` events at ``sim_rate`` end at ``end_ms``.

    The generator tracks the curve's cumulative target (see
    ``Generator._session_gap``), so this is accurate to a few seconds of
    simulated time; the caller leaves a margin so the last event is not
    in the future.
    """
    lo, hi = 0, 3_600_000
    while expected_events(end_ms - hi, end_ms, sim_rate) < events:
        hi *= 2
        if hi > 400 * DAY_MS:
            raise ValueError(f"{events} events at {sim_rate}/s need more than 400 days")
    while hi - lo > 1000:
        mid = (lo + hi) // 2
        if expected_events(end_ms - mid, end_ms, sim_rate) < events:
            lo = mid
        else:
            hi = mid
    return end_ms - hi


def plan_end(start_ms: int, events: int, sim_rate: float) -> int:
    """End instant such that ``events`` events at ``sim_rate`` start at ``start_ms``."""
    lo, hi = 0, 3_600_000
    while expected_events(start_ms, start_ms + hi, sim_rate) < events:
        hi *= 2
        if hi > 400 * DAY_MS:
            raise ValueError(f"{events} events at {sim_rate}/s need more than 400 days")
    while hi - lo > 1000:
        mid = (lo + hi) // 2
        if expected_events(start_ms, start_ms + mid, sim_rate) < events:
            lo = mid
        else:
            hi = mid
    return start_ms + hi


def pinned_start(events: int, sim_rate: float, before_ms: int, local_hour: int = 12) -> int:
    """The latest start at ``local_hour`` China time from which ``events`` events
    end a minute before ``before_ms``.

    A bench's workload must not follow the clock on the wall: the mix of
    streams and the pressure on the rules change with the hour of the day,
    so a run at 21:00 would measure another workload than one at 17:00.
    Noon covers the lunch peak and, for a million events, the evening one.
    """
    local = before_ms + _LOCAL_OFFSET_MS
    start = local - local % DAY_MS - _LOCAL_OFFSET_MS + local_hour * 3_600_000
    while plan_end(start, events, sim_rate) > before_ms - 60_000:
        start -= DAY_MS
    return start


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso(ts_ms: int) -> str:
    """ISO 8601 in China time, the way a local system would print it."""
    return datetime.fromtimestamp(ts_ms / 1000, tz=CHINA_TZ).isoformat()


def parse_start(text: str) -> int:
    """``--start``: ISO 8601; a naive time is taken as China time (UTC+8)."""
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=CHINA_TZ)
    return int(parsed.astimezone(UTC).timestamp() * 1000)


class Pacer:
    """Holds events until the wall clock reaches a time (live mode and replay).

    Sleeps only when more than ``slack_ms`` ahead: at thousands of events a
    second a sleep per event would cost more than the events themselves, and
    a few milliseconds early is invisible at the worker.
    """

    def __init__(self, speed: float = 1.0, slack_ms: int = 5) -> None:
        self.speed = speed
        self.slack_ms = slack_ms
        self._origin_ts: int | None = None
        self._origin_wall = 0.0

    def wait_for(self, ts_ms: int) -> None:
        if self._origin_ts is None:
            self._origin_ts = ts_ms
            self._origin_wall = time.monotonic()
            return
        due = self._origin_wall + (ts_ms - self._origin_ts) / 1000.0 / self.speed
        ahead = due - time.monotonic()
        if ahead * 1000 > self.slack_ms:
            time.sleep(ahead)
