"""The sink's system alerts (sinks/clickhouse/watch.py) on a fake clock: behind
Kafka and the store unreachable each fire once and resolve once they clear. The
live sink's side is in test_quarantine.py."""

from __future__ import annotations

from ctower.schemas.control import Alert
from ctower.sinks.clickhouse.watch import SinkWatch
from ctower.system_alerts import SystemAlerts


def _kinds(sent: list[Alert]) -> list[tuple[str, str]]:
    return [(a.kind, a.status) for a in sent]


def test_the_sink_behind_and_its_store_unreachable_alert_and_resolve(
    offline_settings, clock
) -> None:
    settings = offline_settings(system_sink_behind_seconds=5,
                                system_store_unreachable_seconds=2)
    sent: list[Alert] = []

    class FakeSink:
        behind_s: float | None = 1.0
        failing: float | None = None
        ok = True

        def behind(self) -> tuple[float | None, int | None]:
            return self.behind_s, 50

        def store_failing(self) -> tuple[float | None, str, str]:
            return self.failing, "scan_events", "connection refused"

        def store_ok(self) -> bool:
            return self.ok

    sink = FakeSink()
    watch = SinkWatch(settings, SystemAlerts(settings, "sink", "sink-a", sent.append, clock),
                      sink)
    watch.check()
    sink.failing, sink.behind_s = 3.0, 6.0
    watch.check()
    assert sorted(_kinds(sent)) == [("system_sink_behind", "open"),
                                    ("system_store_unreachable", "open")]
    down = next(a for a in sent if a.kind == "system_store_unreachable")
    assert down.severity == "critical" and "scan_events" in down.message
    sink.failing, sink.behind_s = None, 0.1
    watch.check()
    assert sorted(_kinds(sent)[2:]) == [("system_sink_behind", "resolved"),
                                        ("system_store_unreachable", "resolved")]
