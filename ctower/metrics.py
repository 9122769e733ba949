"""Prometheus ``/metrics`` for the worker, the sink and the alert service.

Everything is read at scrape time from the counters each process already
keeps for its logs and ``/stats/`` (custom collectors): a scrape costs a walk
over a few dicts, and no message pays anything for being counted twice. The
only things observed as they happen are the latency histograms, once per
alert, reservation, insert or webhook request, never per event.

The worker serves ``/metrics`` on its web port (next to ``/stats/`` and the
coupon API, whose reservation latency is here too); the sink and the alert
service have no web server, so each starts prometheus_client's own on
``CTOWER_SINK_METRICS_PORT`` / ``CTOWER_ALERTS_METRICS_PORT`` (0 = none).
Each process has its own registry: tests build several workers in one
interpreter, and the default registry would mix them.

Labels never carry secrets: streams, topics, partitions, reasons, tables,
robots' names and errcodes only (a robot's URL is its credential).
"""

from __future__ import annotations

import gc
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
                   300.0)
"""Seconds: a reservation is a few ms, an alert well under 2 s, an insert
under a second; the top buckets catch a replay's or an outage's tail."""

CONTENT_TYPE = CONTENT_TYPE_LATEST


def new_registry() -> CollectorRegistry:
    """A process's registry, with the collector's pauses in it."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(GcCollector())
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def latency_histogram(registry: CollectorRegistry, name: str, doc: str) -> Histogram:
    return Histogram(name, doc, buckets=LATENCY_BUCKETS, registry=registry)


def serve(registry: CollectorRegistry, port: int, bind: str) -> Any:
    """prometheus_client's HTTP server on ``bind:port`` (in a thread); the
    server, whose ``shutdown()`` stops it and frees the port. A port that cannot be bound stops
    start-up: a process asked for metrics that cannot give them should say so."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=bind, registry=registry)
    log.info("metrics on http://%s:%d/metrics", bind, port)
    return _Stoppable(server)


class _Stoppable:
    def __init__(self, server: Any) -> None:
        self.server = server

    def shutdown(self) -> None:
        """Stop serving and free the port (a restart in the same process can bind it)."""
        self.server.shutdown()
        self.server.server_close()


class GcCollector(Collector):
    """CPython's collections per generation, and the time spent in them
    (``ctower/gc_tuning.py`` keeps the pauses): a full collection stops the
    whole process, its HTTP answers included."""

    def collect(self) -> Iterator[Metric]:
        from ctower.gc_tuning import pauses, watch_pauses

        watch_pauses()
        collections = CounterMetricFamily(
            "ctower_gc_collections", "Garbage collections, per generation.",
            labels=["generation"])
        seconds = CounterMetricFamily(
            "ctower_gc_pause_seconds", "Time spent in garbage collections, per generation.",
            labels=["generation"])
        longest = GaugeMetricFamily(
            "ctower_gc_longest_pause_seconds",
            "Longest single garbage-collection pause since start, per generation.",
            labels=["generation"])
        for generation, stats in enumerate(gc.get_stats()):
            label = [str(generation)]
            collections.add_metric(label, stats["collections"])
            seconds.add_metric(label, pauses.seconds[generation])
            longest.add_metric(label, pauses.longest_ms[generation] / 1000)
        yield from (collections, seconds, longest)


def _counter(name: str, doc: str, labels: Iterable[str],
             values: Iterable[tuple[list[str], float]]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=list(labels))
    for label, value in values:
        family.add_metric(label, value)
    return family


def _gauge(name: str, doc: str, labels: Iterable[str],
           values: Iterable[tuple[list[str], float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    for label, value in values:
        family.add_metric(label, value)
    return family


# --------------------------------------------------------------------------
# The worker
# --------------------------------------------------------------------------


class WorkerCollector(Collector):
    """The worker's streams, rules, coupon ledger, lag and system alerts."""

    def __init__(self, tower: Any) -> None:
        from ctower.streams.watch import TowerSignals

        self.tower = tower
        self.signals = TowerSignals(tower)

    def collect(self) -> Iterator[Metric]:
        tower = self.tower
        procs = tower.processors
        yield _counter(
            "ctower_stream_messages", "Kafka messages read, per stream.", ["stream"],
            (([s], p.messages) for s, p in procs.items()))
        yield _counter(
            "ctower_events_in", "Events read per stream: counted, re-sent copies dropped and "
            "malformed ones dead-lettered.", ["stream"],
            (([s], p.events + p.duplicates + sum(p.dead_letters.values()))
             for s, p in procs.items()))
        yield _counter(
            "ctower_events_out", "Events counted into the windows and the rules, per stream.",
            ["stream"], (([s], p.events) for s, p in procs.items()))
        yield _counter(
            "ctower_dead_letters", "Malformed events dead-lettered, per stream and reason.",
            ["stream", "reason"],
            (([s, reason], n) for s, p in procs.items() for reason, n in p.dead_letters.items()))
        yield _counter(
            "ctower_late_events", "Events that arrived after their window closed, per stream.",
            ["stream"], (([s], p.state.late_events) for s, p in procs.items()))
        yield _counter(
            "ctower_duplicate_events", "Re-sent events dropped (counted once), per stream.",
            ["stream"], (([s], p.duplicates) for s, p in procs.items()))
        yield _counter(
            "ctower_windows_closed", "Windows closed and sent to the sink, per stream.",
            ["stream"], (([s], p.state.windows_closed) for s, p in procs.items()))
        delay = SummaryMetricFamily(
            "ctower_window_close_delay_seconds",
            "Wall clock at a window's close minus the window's end (grace included), "
            "per stream.", labels=["stream"])
        for stream, proc in procs.items():
            state = proc.state
            delay.add_metric([stream], getattr(state, "close_delays", 0),
                             getattr(state, "close_delay_ms_sum", 0) / 1000)
        yield delay
        yield _gauge(
            "ctower_window_close_delay_last_seconds",
            "Delay of the latest window closed, per stream.", ["stream"],
            (([s], getattr(p.state, "close_delay_ms_last", 0) / 1000) for s, p in procs.items()))
        partitions = self.signals.partitions()
        yield _gauge(
            "ctower_consumer_lag", "Messages in Kafka past the group's commit, per partition "
            "this worker holds.", ["topic", "partition"],
            (([topic, str(p)], waiting) for (topic, p), (_, waiting) in sorted(partitions.items())))
        outboxes = tower.outboxes
        yield _gauge(
            "ctower_dead_letter_outstanding",
            "Dead letters not yet acknowledged by Kafka, per agent.", ["agent"],
            (([name], sum(len(letters) for letters in o.outstanding.values()))
             for name, o in outboxes.items()))
        yield _gauge(
            "ctower_dead_letter_blocked_partitions",
            "Partitions waiting because their dead letters cannot be written, per agent.",
            ["agent"], (([name], len(o.blocked)) for name, o in outboxes.items()))
        decisions = tower.decisions
        if decisions is not None:
            yield _counter("ctower_alerts_published", "Alerts sent to ct.alerts (openings and "
                           "resolutions, system alerts too).", [], [([], decisions.alerts_sent)])
            yield _counter("ctower_coupon_signals_published", "Coupon signals sent.", [],
                           [([], decisions.signals_sent)])
            yield _counter(
                "ctower_rule_items", "Items the rule agents read, per internal topic.",
                ["topic"], (([name], p.items) for name, p in decisions.processors.items()))
            yield _counter(
                "ctower_stock_judgements", "Stock judgements made by the rules.", [],
                [([], decisions.stock.judgements)])
        coupons = getattr(tower, "coupons", None)
        if coupons is not None:
            yield _counter(
                "ctower_coupon_ledger", "The coupon ledger's counters, by name.", ["counter"],
                (([name], n) for name, n in sorted(coupons.ledger.stats.items())))
        watch = getattr(tower, "watch", None)
        if watch is not None:
            yield from system_alert_metrics(watch.alerts)


def system_alert_metrics(alerts: Any) -> Iterator[Metric]:
    from ctower.schemas.control import SYSTEM_ALERT_KINDS

    open_now = alerts.open_by_kind()
    yield _gauge("ctower_system_alerts_open", "System alerts open now, per kind.", ["kind"],
                 (([k], open_now.get(k, 0)) for k in SYSTEM_ALERT_KINDS))
    yield _counter("ctower_system_alerts_opened", "System alerts opened since start.", [],
                   [([], alerts.opened)])
    yield _counter("ctower_system_alerts_resolved", "System alerts resolved since start.", [],
                   [([], alerts.resolved)])


class WorkerMetrics:
    """The worker's registry and the histograms observed as things happen."""

    def __init__(self, tower: Any) -> None:
        self.registry = new_registry()
        self.registry.register(WorkerCollector(tower))
        self.alert_latency = latency_histogram(
            self.registry, "ctower_event_to_alert_seconds",
            "Wall clock when a rule's alert was sent minus the event time it opened at.")
        self.reservation_latency = latency_histogram(
            self.registry, "ctower_reservation_seconds",
            "Time to answer a coupon reservation (forwarding included).")

    def observe_alert(self, alert: Any) -> None:
        if alert.status == "open" and not alert.kind.startswith("system_"):
            self.alert_latency.observe(max(0.0, (alert.raised_at - alert.opened_at) / 1000))

    def observe_reservation(self, seconds: float) -> None:
        self.reservation_latency.observe(seconds)


def install_worker_metrics(tower: Any) -> WorkerMetrics:
    """``/metrics`` on the worker's web server; alert and reservation latency hooked up."""
    metrics = WorkerMetrics(tower)
    tower.metrics = metrics
    if tower.decisions is not None:
        tower.decisions.on_alert = metrics.observe_alert
    coupons = getattr(tower, "coupons", None)
    if coupons is not None:
        coupons.on_reserved = metrics.observe_reservation

    @tower.app.page("/metrics")
    async def prometheus(web: Any, request: Any) -> Any:
        return web.bytes(exposition(metrics.registry), content_type=CONTENT_TYPE.split(";")[0])

    return metrics


# --------------------------------------------------------------------------
# The sink
# --------------------------------------------------------------------------


class SinkCollector(Collector):
    def __init__(self, sink: Any) -> None:
        self.sink = sink

    def collect(self) -> Iterator[Metric]:
        sink = self.sink
        stats = sink.stats
        yield _counter("ctower_sink_rows", "Rows inserted, per table (rate() gives rows/s).",
                       ["table"], (([t], n) for t, n in sorted(stats.rows.items())))
        yield _counter("ctower_sink_messages", "Kafka messages read.", [],
                       [([], stats.messages)])
        yield _counter("ctower_sink_inserts", "Inserts done.", [], [([], stats.batches)])
        yield _counter("ctower_sink_commits", "Offset commits done.", [], [([], stats.commits)])
        yield _counter("ctower_sink_quarantined", "Rows quarantined, per reason.", ["reason"],
                       (([r], n) for r, n in sorted(stats.quarantined.items())))
        yield _counter("ctower_sink_refused_inserts",
                       "Inserts the store refused for their data (then bisected).", [],
                       [([], stats.refused_inserts)])
        yield _gauge("ctower_sink_lag", "Messages behind the end of the sink's partitions.", [],
                     [([], stats.lag)] if stats.lag is not None else [])
        behind, _ = sink.behind()
        yield _gauge("ctower_sink_behind_seconds",
                     "Seconds since the sink last read everything Kafka held.", [],
                     [([], behind)] if behind is not None else [])
        yield _gauge("ctower_sink_pending_rows", "Rows read, not yet inserted.", [],
                     [([], sink.pending_rows)])
        failing, _, _ = sink.store_failing()
        yield _gauge("ctower_sink_store_up",
                     "1 while the store takes inserts, 0 while they fail as an outage.", [],
                     [([], 0 if failing is not None else 1)])
        alerts = getattr(sink, "system_alerts", None)
        if alerts is not None:
            yield from system_alert_metrics(alerts)


def sink_registry(sink: Any) -> CollectorRegistry:
    registry = new_registry()
    registry.register(SinkCollector(sink))
    histogram = latency_histogram(registry, "ctower_sink_insert_seconds",
                                  "Time of one insert into the store.")
    sink.on_insert = histogram.observe
    return registry


# --------------------------------------------------------------------------
# The alert service
# --------------------------------------------------------------------------


class AlertsCollector(Collector):
    def __init__(self, service: Any, outbox_path: Path) -> None:
        self.service = service
        self.outbox_path = outbox_path

    def _outbox(self) -> dict[str, int]:
        """Items per state, read on a connection of the scrape's own thread
        (the service's is not for other threads; SQLite's WAL lets both read)."""
        try:
            db = sqlite3.connect(f"file:{self.outbox_path}?mode=ro", uri=True, timeout=2)
            try:
                return dict(db.execute("SELECT state, count(*) FROM items GROUP BY state"))
            finally:
                db.close()
        except sqlite3.Error:
            return {}

    def collect(self) -> Iterator[Metric]:
        stats = self.service.stats
        yield _counter("ctower_alerts_read", "Alerts read from ct.alerts.", [],
                       [([], stats.alerts)])
        yield _counter("ctower_alerts_dead_letters",
                       "Records on ct.alerts that were not alerts, per reason.", ["reason"],
                       (([r], n) for r, n in sorted(stats.dead_letters.items())))
        yield _counter("ctower_alerts_escalated", "Alerts sent to an escalation route.", [],
                       [([], stats.escalated)])
        yield _counter("ctower_webhook_requests", "Webhook requests, per message kind.",
                       ["kind"], (([k], n) for k, n in sorted(stats.messages.items())))
        yield _counter(
            "ctower_webhook_results", "Webhook answers, per robot, outcome and errcode "
            "(http_<status> or none when no JSON came back).", ["robot", "outcome", "errcode"],
            (([robot, outcome, code], n)
             for (robot, outcome, code), n in sorted(getattr(stats, "results", {}).items())))
        outbox = self._outbox()
        yield _gauge("ctower_outbox_items", "Items in the outbox, per state.", ["state"],
                     (([state], n) for state, n in sorted(outbox.items())))
        yield _gauge("ctower_outbox_depth", "Items waiting to be sent (pending or sending).", [],
                     [([], outbox.get("pending", 0) + outbox.get("sending", 0))])


def alerts_registry(service: Any) -> CollectorRegistry:
    registry = new_registry()
    registry.register(AlertsCollector(service, service.outbox.path))
    histogram = latency_histogram(registry, "ctower_webhook_seconds",
                                  "Time of one webhook request.")
    service.on_webhook = histogram.observe
    return registry


def scrape(url: str, timeout: float = 5.0) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A /metrics page as {(sample name, sorted labels): value} (tests and ``ctower``
    commands read it)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return samples(answer.read().decode())


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A Prometheus exposition as {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          where: Callable[[dict[str, str]], bool] = lambda labels: True) -> float:
    """The sum of a sample's values over the label sets ``where`` accepts."""
    return sum(v for (n, labels), v in samples.items() if n == name and where(dict(labels)))

