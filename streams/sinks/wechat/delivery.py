"""``ctower alerts deliver``: alerts from ``ct.alerts`` to WeChat Work robots.

Three loops share one process:

- **intake** reads ``ct.alerts`` (consumer group ``<app_id>-alerts``),
  routes each alert and writes one outbox item per (route, robot); only
  then is the Kafka offset committed. A crash before the commit reads the
  alerts again, and the outbox ignores the items it already has.
- **dispatch** serves each robot that has due items, one request at a time
  per robot, within its rate budget. When more is due than the budget
  allows, the due items of a route are rolled up into one digest (counts by
  kind, the worst first), so a storm costs a few messages and loses
  nothing. Failures are retried with back-off and jitter; 45009 waits for
  the next window; a broken robot (93000 and the like) marks its route
  broken, tells the fallback route, and moves the route's items there.
- **publish** drains the outbox's delivery records to
  ``ct.alert-deliveries``, from which the ClickHouse sink fills
  ``alert_deliveries`` and the dashboard shows route health.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import signal
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from ctower.schemas.control import Alert, AlertDelivery
from ctower.settings import Settings, SettingsError
from ctower.streams.sinks.wechat.client import SendResult, WebhookClient, backoff
from ctower.streams.sinks.wechat.messages import (
    Mentions,
    Message,
    render_alert,
    render_broken_notice,
    render_digest,
    worst_first,
)
from ctower.streams.sinks.wechat.outbox import (
    DELIVERED,
    PENDING,
    REJECTED,
    REROUTED,
    Item,
    Outbox,
    delivery_id,
    now_ms,
)
from ctower.streams.sinks.wechat.rate import RateBudget
from ctower.streams.sinks.wechat.routes import FALLBACK, Route, RoutingTable, load_routes
from ctower.streams.sinks.wechat.webhooks import fingerprint, resolve_webhooks, robot_label

log = logging.getLogger(__name__)

OUTBOX_FILE = Path("alerts") / "outbox.sqlite3"
"""Under ``data_dir``."""
KEEP_DONE_SECONDS = 7 * 86_400
"""Finished items are kept this long: a replay of ct.alerts within it sends nothing twice."""
PUBLISH_EVERY = 0.2
STATS_EVERY = 30.0


def outbox_path(settings: Settings) -> Path:
    return settings.data_dir / OUTBOX_FILE


@dataclass(slots=True)
class DeliveryStats:
    """What the service did, for logs and tests."""

    alerts: int = 0
    skipped: int = 0
    """Messages on ct.alerts that were not an Alert (logged with their offset)."""
    items: int = 0
    messages: Counter[str] = field(default_factory=Counter)
    """Requests sent, by message kind."""
    outcomes: Counter[str] = field(default_factory=Counter)


def _digest_id(items: Sequence[Item]) -> str:
    raw = "\x1f".join(sorted(i.delivery_id for i in items)).encode()
    return "g" + hashlib.sha256(raw).hexdigest()[:11]


class DeliveryService:
    """Routes, queues and sends alerts; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        table: RoutingTable,
        urls: dict[str, str],
        outbox: Outbox | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.table = table
        self.urls = urls
        self.outbox = outbox or Outbox(outbox_path(settings))
        self.rng = rng or random.Random()
        self.labels = {robot: robot_label(robot, url) for robot, url in urls.items()}
        self.stats = DeliveryStats()
        self.group_id = f"{settings.app_id}-alerts"
        self._wake = asyncio.Event()
        self._serving: dict[str, asyncio.Task[None]] = {}
        self._notices: dict[str, list[Message]] = {}
        self._broken: set[str] = set()
        self._client: WebhookClient | None = None
        self.budgets = {
            robot: RateBudget(settings.alert_rate_per_minute, settings.alert_rate_window_seconds)
            for robot in urls
        }

    # ------------------------------------------------------------ start
    def prepare(self) -> None:
        """Recover from a crash, remember the rate spent before it, and
        load route health (a broken route whose robot URL changed since is
        given another chance)."""
        crashed = self.outbox.recover(self.labels)
        if crashed:
            log.warning("%d deliveries were in flight when the service stopped; sending again",
                        len(crashed))
        since = time.time() - self.settings.alert_rate_window_seconds
        for robot, ends in self.outbox.recent_sends(since).items():
            if robot in self.budgets:
                for ended in ends:
                    self.budgets[robot].spent(at=ended)
        for name, state in self.outbox.route_states().items():
            if not state.broken or name not in self.table.by_name:
                continue
            robot, _, old = state.fingerprint.partition(":")
            if robot in self.urls and old and fingerprint(self.urls[robot]) != old:
                log.info("route %s: robot %s has a new URL; trying it again", name, robot)
                self.outbox.set_route(name, broken=False)
            else:
                self._broken.add(name)
        self.outbox.prune(KEEP_DONE_SECONDS)

    def reload_route_health(self) -> None:
        """Pick up routes cleared by ``ctower alerts test`` meanwhile."""
        self._broken = {
            name for name, s in self.outbox.route_states().items()
            if s.broken and name in self.table.by_name
        }

    # ------------------------------------------------------------ routing
    def plan(self, alert: Alert, now: float) -> list[tuple[Alert, str, str, float, str]]:
        """(alert, route, robot, not_before, origin route) for every robot
        that should hear of ``alert``; a broken route's share goes to the
        fallback."""
        planned = []
        for route in self.table.routes_for(alert):
            target = route
            if route.name in self._broken and route.name != FALLBACK:
                target = self.table.fallback
            held = target.held_until(alert, now)
            for robot in target.robots:
                planned.append((alert, target.name, robot, held or now, route.name))
        return planned

    def accept(self, alerts: Sequence[Alert]) -> int:
        """Route ``alerts`` into the outbox (durably); returns new items."""
        now = time.time()
        added = 0
        by_origin: dict[str, list[tuple[Alert, str, str, float]]] = {}
        for alert in alerts:
            for a, route, robot, not_before, origin in self.plan(alert, now):
                by_origin.setdefault(origin, []).append((a, route, robot, not_before))
        for origin, entries in by_origin.items():
            added += self.outbox.add(entries, origin=origin)
        self.stats.alerts += len(alerts)
        self.stats.items += added
        if added:
            self._wake.set()
        return added

    # ------------------------------------------------------------ dispatch
    async def serve(self, stop: asyncio.Event) -> None:
        """Deliver what the outbox holds (and what arrives) until ``stop``;
        sends in flight finish first."""
        async with WebhookClient(self.settings.alert_send_timeout_seconds) as client:
            self._client = client
            try:
                await self.dispatch(stop)
            finally:
                self._client = None

    async def dispatch(self, stop: asyncio.Event) -> None:
        """Start a server task for every robot with due work, until ``stop``."""
        while not stop.is_set():
            now = time.time()
            for robot in self.outbox.robots_with_work(now):
                task = self._serving.get(robot)
                if (task is None or task.done()) and robot in self.urls:
                    self._serving[robot] = asyncio.create_task(self._serve(robot, stop))
            for robot, notices in self._notices.items():
                task = self._serving.get(robot)
                if notices and (task is None or task.done()):
                    self._serving[robot] = asyncio.create_task(self._serve(robot, stop))
            wait = self.outbox.next_due_in(now)
            # due now but its robot busy (0): its task wakes us when it ends
            timeout = 1.0 if not wait else min(wait, 1.0)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)
        if self._serving:
            await asyncio.gather(*self._serving.values(), return_exceptions=True)

    async def _serve(self, robot: str, stop: asyncio.Event) -> None:
        """Send what is due for one robot, one request at a time, as long as
        there is work and budget."""
        try:
            await self._serve_robot(robot, stop)
        finally:
            self._wake.set()  # the dispatcher looks again: more may be due by now

    async def _serve_robot(self, robot: str, stop: asyncio.Event) -> None:
        budget = self.budgets[robot]
        while not stop.is_set():
            notices = self._notices.get(robot)
            items = [] if notices else self.outbox.due(robot, time.time())
            if not notices and not items:
                return
            wait = budget.next_free_in()
            if wait > 0:
                await _sleep_or_stop(wait, stop)
                continue
            if notices:
                await self._send_notice(robot, notices[0])
                notices.pop(0)
                continue
            free = budget.free()
            if len(items) <= free:
                worst = worst_first([i.alert for i in items])[0]
                await self._send_one(robot, next(i for i in items if i.alert is worst))
                continue
            by_route: dict[str, list[Item]] = {}
            for item in items:
                by_route.setdefault(item.route, []).append(item)
            # the biggest backlog first; every group gets its digest as budget allows
            group = max(by_route.values(), key=len)
            if len(group) == 1:
                await self._send_one(robot, group[0])
            else:
                await self._send_digest(robot, group)

    async def _send_one(self, robot: str, item: Item) -> None:
        route = self.table.get(item.route)
        message = render_alert(
            item.alert, lang=self.settings.language, dashboard=self.settings.dashboard_link,
            delivery_id=item.delivery_id, mentions=_mentions(route),
        )
        await self._attempt(robot, route, [item], message)

    async def _send_digest(self, robot: str, items: list[Item]) -> None:
        route = self.table.get(items[0].route)
        message = render_digest(
            [i.alert for i in items], lang=self.settings.language,
            dashboard=self.settings.dashboard_link, digest_id=_digest_id(items),
            route=route.name, mentions=_mentions(route),
        )
        await self._attempt(robot, route, items, message)

    async def _post(self, robot: str, message: Message) -> SendResult:
        assert self._client is not None
        result = await self._client.send(self.urls[robot], message.body)
        self.budgets[robot].spent()
        self.stats.messages[message.kind] += 1
        self.stats.outcomes[result.outcome] += 1
        return result

    async def _attempt(self, robot: str, route: Route, items: list[Item], message: Message
                       ) -> None:
        """One request for ``items`` and everything its answer implies."""
        items = self.outbox.start_sending(items, message.kind)
        result = await self._post(robot, message)
        ended = time.time()
        outcome = result.outcome
        digest = message.kind == "digest"

        def records(result_name: str) -> list[AlertDelivery]:
            return [self._record(i, robot, result_name, result, message) for i in items]

        sent = (robot, ended)
        if outcome == "delivered":
            self.outbox.finish(items, DELIVERED, records("digest" if digest else "delivered"),
                               sent=sent)
            self._route_ok(route)
            return
        if outcome == "rejected":
            log.error("robot %s refused %s for %d alert(s) (%s); recorded as rejected",
                      self.labels[robot], message.kind, len(items), result.detail)
            self.outbox.finish(items, REJECTED, records("rejected"), sent=sent)
            return
        if outcome == "rate_limited":
            self.budgets[robot].exhausted()
            self.outbox.finish(items, PENDING, records("rate_limited"),
                               not_before=ended + self.settings.alert_rate_window_seconds,
                               sent=sent)
            log.warning("robot %s: frequency limit (45009); waiting for the next window",
                        self.labels[robot])
            return
        s = self.settings
        pause = backoff(max(i.attempts for i in items), s.alert_retry_base_seconds,
                        s.alert_retry_max_seconds, self.rng)
        if outcome == "retry":
            log.warning("robot %s: %s; retrying %d alert(s) in %.1fs", self.labels[robot],
                        result.detail or f"errcode {result.errcode}", len(items), pause)
            self.outbox.finish(items, PENDING, records("retry"), not_before=ended + pause,
                               sent=sent)
            return
        # broken
        self.outbox.finish(items, PENDING, records("broken"),
                           not_before=ended + (s.alert_retry_max_seconds
                                               if route.name == FALLBACK else 0.0), sent=sent)
        self._route_broken(route, robot, result)

    def _route_ok(self, route: Route) -> None:
        if route.name in self._broken:
            self._broken.discard(route.name)
            self.outbox.set_route(route.name, broken=False)
            log.info("route %s delivers again", route.name)

    def _route_broken(self, route: Route, robot: str, result: SendResult) -> None:
        """Mark the route broken, tell the fallback, and move the route's
        pending items there. The fallback itself cannot hand over: its
        items wait and are retried slowly (logged as errors meanwhile)."""
        label = self.labels[robot]
        self.outbox.set_route(
            route.name, broken=True, errcode=result.errcode, detail=result.detail,
            fingerprint=f"{robot}:{fingerprint(self.urls[robot])}",
        )
        if route.name == FALLBACK:
            log.error("the fallback route is broken (robot %s: %s); its alerts wait in the "
                      "outbox and are retried every %.0fs", label, result.detail,
                      self.settings.alert_retry_max_seconds)
            self._broken.add(route.name)
            return
        first_time = route.name not in self._broken
        self._broken.add(route.name)
        log.error("route %s is broken (robot %s: %s); the fallback route takes its alerts",
                  route.name, label, result.detail)
        moved = self.reroute(route.name)
        if first_time:
            notice = render_broken_notice(
                route.name, label, result.errcode, result.detail,
                lang=self.settings.language, dashboard=self.settings.dashboard_link,
            )
            for fallback_robot in self.table.fallback.robots:
                self._notices.setdefault(fallback_robot, []).append(notice)
        if moved or first_time:
            self._wake.set()

    def reroute(self, route_name: str) -> int:
        """Move the pending items of a broken route to the fallback route."""
        pending = [i for i in self.outbox.pending(route_name) if i.state == PENDING]
        if not pending:
            return 0
        fallback = self.table.fallback
        now = time.time()
        entries = []
        for item in pending:
            held = fallback.held_until(item.alert, now)
            for robot in fallback.robots:
                entries.append((item.alert, FALLBACK, robot, held or now))
        self.outbox.add(entries, origin=route_name)
        records = [
            AlertDelivery(
                delivery_id=i.delivery_id, alert_id=i.alert_id, alert_key=i.alert.key,
                kind=i.alert.kind, severity=i.alert.severity, route=i.route,
                robot=self.labels.get(i.robot, i.robot), attempt=i.attempts,
                result="rerouted", message_kind="markdown", ts=now_ms(),
                detail=f"route broken; sent by the fallback as "
                       f"{', '.join(delivery_id(i.alert, FALLBACK, r) for r in fallback.robots)}",
            )
            for i in pending
        ]
        self.outbox.finish(pending, REROUTED, records)
        return len(pending)

    async def _send_notice(self, robot: str, message: Message) -> None:
        result = await self._post(robot, message)
        record = AlertDelivery(
            delivery_id="n" + hashlib.sha256(message.content.encode()).hexdigest()[:15],
            alert_id="", alert_key="", kind="notice", severity="warning", route=FALLBACK,
            robot=self.labels[robot], attempt=1,
            result="delivered" if result.outcome == "delivered" else result.outcome,
            errcode=result.errcode, http_status=result.http_status,
            latency_ms=result.latency_ms, message_kind="markdown", ts=now_ms(),
            detail=result.detail,
        )
        self.outbox.record([record], sent=(robot, time.time()))

    def _record(self, item: Item, robot: str, result_name: str, result: SendResult,
                message: Message) -> AlertDelivery:
        return AlertDelivery(
            delivery_id=item.delivery_id, alert_id=item.alert_id, alert_key=item.alert.key,
            kind=item.alert.kind, severity=item.alert.severity, route=item.route,
            robot=self.labels[robot], attempt=item.attempts,
            result=result_name,  # type: ignore[arg-type]
            errcode=result.errcode, http_status=result.http_status,
            latency_ms=result.latency_ms, message_kind=message.kind, ts=now_ms(),
            detail=result.detail,
        )

    # ------------------------------------------------------------ Kafka
    async def intake(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        """ct.alerts -> outbox -> commit, until ``stop``."""
        decoder = msgspec.json.Decoder(Alert)
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=300, max_records=1000)
            if not batches:
                continue
            alerts: list[Alert] = []
            offsets: dict[TopicPartition, int] = {}
            for tp, messages in batches.items():
                for msg in messages:
                    try:
                        alerts.append(decoder.decode(msg.value or b""))
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        self.stats.skipped += 1
                        log.error("%s[%d]@%d is not an Alert (%s); skipped", tp.topic,
                                  tp.partition, msg.offset, exc)
                offsets[tp] = messages[-1].offset + 1
            self.reload_route_health()
            self.accept(alerts)  # durable before the commit below
            try:
                await consumer.commit(offsets)
            except KafkaError as exc:
                log.warning("offset commit failed (%s); the outbox absorbs the replay", exc)

    async def publish(self, producer: AIOKafkaProducer, stop: asyncio.Event) -> None:
        """Outbox records -> ct.alert-deliveries, until ``stop`` and drained."""
        topic = self.settings.topic("alert-deliveries")
        key = msgspec.json.Decoder(AlertDelivery)
        while True:
            rows = self.outbox.unpublished()
            if rows:
                try:
                    futures = [
                        await producer.send(topic, value=raw,
                                            key=key.decode(raw).delivery_id.encode())
                        for _, raw in rows
                    ]
                    await asyncio.gather(*futures)
                except KafkaError as exc:
                    log.warning("could not publish delivery records (%s); retrying", exc)
                    await _sleep_or_stop(1.0, stop)
                    continue
                self.outbox.published(rows[-1][0])
                continue
            if stop.is_set():
                return
            await _sleep_or_stop(PUBLISH_EVERY, stop)

    async def run(self, stop: asyncio.Event) -> DeliveryStats:
        """The service until ``stop``: in-flight sends finish, records drain."""
        s = self.settings
        self.prepare()
        consumer = AIOKafkaConsumer(
            s.topic("alerts"), bootstrap_servers=s.bootstrap, group_id=self.group_id,
            client_id=f"{s.app_id}-alerts", enable_auto_commit=False,
            auto_offset_reset="earliest", metadata_max_age_ms=10_000,
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap, client_id=f"{s.app_id}-alerts", acks="all",
            linger_ms=20,
        )
        await producer.start()
        try:
            await consumer.start()
            try:
                dispatch_stop = asyncio.Event()
                tasks = [
                    asyncio.create_task(self.intake(consumer, stop)),
                    asyncio.create_task(self.serve(dispatch_stop)),
                    asyncio.create_task(self._log_stats(stop)),
                ]
                publisher = asyncio.create_task(self.publish(producer, dispatch_stop))
                await stop.wait()
                dispatch_stop.set()
                await asyncio.gather(*tasks)
                await asyncio.wait_for(publisher, timeout=30)
            finally:
                await consumer.stop()
        finally:
            await producer.stop()
            self.outbox.close()
        return self.stats

    async def _log_stats(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _sleep_or_stop(STATS_EVERY, stop)
            log.info("alerts: %d read, %d items, sent %s, outcomes %s, outbox %s",
                     self.stats.alerts, self.stats.items, dict(self.stats.messages),
                     dict(self.stats.outcomes), self.outbox.counts())


def _mentions(route: Route) -> Mentions:
    return Mentions(route.mention_users, route.mention_mobiles)


async def _sleep_or_stop(seconds: float, stop: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(seconds, 0.001))


def build_service(settings: Settings) -> DeliveryService:
    """The service from the settings; a :class:`SettingsError` when routes
    or webhook URLs are missing or wrong, before anything starts."""
    if settings.alert_routes_file is None:
        raise SettingsError(
            "CTOWER_ALERT_ROUTES_FILE: not set; alerts need a routing file (see README, "
            "'Alerts in WeChat Work')"
        )
    table = load_routes(settings.alert_routes_file)
    urls = resolve_webhooks(settings, table.robots)
    return DeliveryService(settings, table, urls)


async def _main(settings: Settings) -> DeliveryStats:
    from ctower.streams.sinks.clickhouse import ensure_topics

    service = build_service(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await ensure_topics(settings, [settings.topic("alerts"), settings.topic("alert-deliveries")])
    log.info("delivering alerts to %d robot(s) on %d route(s): %s",
             len(service.urls), len(service.table.by_name),
             ", ".join(sorted(service.labels.values())))
    return await service.run(stop)


def run_delivery(settings: Settings) -> DeliveryStats:
    """Run ``ctower alerts deliver`` until SIGTERM or SIGINT."""
    return asyncio.run(_main(settings))
