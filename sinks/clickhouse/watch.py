"""The sink watching itself: behind Kafka for too long, or its store refusing
inserts as unreachable (the store is down, the broker usually is not: the
sink still tells ``ct.alerts``, and stores the alert once the store is back).
"""

from __future__ import annotations

from typing import Protocol

from ctower.settings import Settings
from ctower.system_alerts import SystemAlerts


class SinkSignals(Protocol):
    def behind(self) -> tuple[float | None, int | None]:
        """(seconds since the sink last read everything Kafka held, messages behind)."""
        ...

    def store_failing(self) -> tuple[float | None, str, str]:
        """(seconds the inserts have failed as an outage or None, table, error);
        a None with ``store_ok`` True means the store took the last insert."""
        ...

    def store_ok(self) -> bool:
        ...


class SinkWatch:
    def __init__(self, settings: Settings, alerts: SystemAlerts, signals: SinkSignals) -> None:
        self.settings = settings
        self.alerts = alerts
        self.signals = signals

    def check(self) -> None:
        s = self.settings
        if s.system_sink_behind_seconds > 0:
            behind, lag = self.signals.behind()
            holds: bool | None = None if behind is None else behind > s.system_sink_behind_seconds
            self.alerts.judge("system_sink_behind", "", holds, {
                "behind_s": round(behind or 0.0, 1), "lag": lag if lag is not None else "?",
                "threshold_s": s.system_sink_behind_seconds,
            })
        if s.system_store_unreachable_seconds > 0:
            failing, table, error = self.signals.store_failing()
            if failing is not None:
                holds = failing >= s.system_store_unreachable_seconds
            else:
                holds = False if self.signals.store_ok() else None
            self.alerts.judge("system_store_unreachable", "", holds, {
                "failing_s": round(failing or 0.0, 1), "table": table, "error": error,
            }, severity="critical")


