"""``ctower alerts deliver``: alerts from ``ct.alerts`` to WeChat Work robots.

Four loops share one process:

- **intake** reads ``ct.alerts`` (consumer group ``<app_id>-alerts``),
  routes each alert and writes one outbox item per (route, robot); only
  then is the Kafka offset committed. A crash before the commit reads the
  alerts again, and the outbox ignores the items it already has. A record
  that is not an alert (not JSON, not UTF-8, nested too deep to decode, the
  wrong shape, an alert no message can be made of) stops nothing: it is
  logged on one line, counted (``DeliveryStats.dead_letters``) and sent to
  ``ct.dead-letter`` as a ``DeadLetter`` - as the workers do with malformed
  events - before its offset is committed; the alerts around it go on.
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
- **escalation** (``escalation.py``): an open alert of a route with
  ``escalate_to`` that nobody acknowledged within
  ``alert_escalate_after_seconds`` also goes to that route. The operators'
  acknowledgements come from ``ct.alert-acks`` (consumer group
  ``<app_id>-alerts-acks``), written by the dashboard.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from ctower.health import Heartbeat
from ctower.schemas.control import Alert, AlertAck, AlertDelivery, DeadLetter
from ctower.schemas.wire import reject
from ctower.settings import Settings, SettingsError
from ctower.sinks.wechat.client import SendResult, WebhookClient, backoff
from ctower.sinks.wechat.escalation import EscalationBook, escalated_copy
from ctower.sinks.wechat.messages import (
    Mentions,
    Message,
    render_alert,
    render_broken_notice,
    render_digest,
    worst_first,
)
from ctower.sinks.wechat.outbox import (
    DELIVERED,
    PENDING,
    REJECTED,
    REROUTED,
    Item,
    Outbox,
    delivery_id,
    encode_alert,
    now_ms,
)
from ctower.sinks.wechat.rate import RateBudget
from ctower.sinks.wechat.routes import FALLBACK, Route, RoutingTable, load_routes
from ctower.sinks.wechat.webhooks import fingerprint, resolve_webhooks, robot_label

log = logging.getLogger(__name__)

OUTBOX_FILE = Path("alerts") / "outbox.sqlite3"
"""Under ``data_dir``."""
KEEP_DONE_SECONDS = 7 * 86_400
"""Finished items are kept this long: a replay of ct.alerts within it sends nothing twice."""
PUBLISH_EVERY = 0.2
STATS_EVERY = 30.0
LOG_DETAIL_CHARS = 300
_encode_control = msgspec.json.Encoder().encode


def outbox_path(settings: Settings) -> Path:
    return settings.data_dir / OUTBOX_FILE


@dataclass(slots=True)
class DeliveryStats:
    """What the service did, for logs and tests."""

    alerts: int = 0
    skipped: int = 0
    """Records on ct.alerts that were not an alert (each logged, dead-lettered)."""
    dead_letters: Counter[str] = field(default_factory=Counter)
    """The same, by dead-letter reason."""
    items: int = 0
    messages: Counter[str] = field(default_factory=Counter)
    """Requests sent, by message kind."""
    outcomes: Counter[str] = field(default_factory=Counter)
    escalated: int = 0
    """Alerts sent to an escalation route because nobody acknowledged them."""
    results: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    """Webhook answers by (robot, outcome, errcode): ``http_<status>`` when no
    errcode came back with an HTTP answer, ``none`` without an answer."""


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
        self._alert_decoder = msgspec.json.Decoder(Alert)
        self._ack_decoder = msgspec.json.Decoder(AlertAck)
        self.escalations = EscalationBook(self.outbox.db)
        self.heartbeat: Heartbeat | None = None
        """Set by the process (``ctower alerts deliver``): ``ctower health alerts`` reads it."""
        self.on_webhook: Callable[[float], None] | None = None
        """Sees each webhook request's seconds (the histogram of /metrics)."""
        self.budgets = {
            robot: RateBudget(settings.alert_rate_per_minute, settings.alert_rate_window_seconds)
            for robot in urls
        }

    # ------------------------------------------------------------ start
    def prepare(self) -> None:
        """Recover from a crash, remember the rate spent before it, and
        load route health (a broken route whose robot URL changed since is
        given another chance)."""
        in_flight = self.outbox.in_flight()
        crashed = self.outbox.recover(self.labels)  # in-flight requests become sends
        if crashed:
            log.warning("%d deliveries were in flight when the service stopped; sending again",
                        len(crashed))
        if in_flight:
            log.warning("%d request(s) were on their way to a robot when the service stopped; "
                        "each counts against its robot's rate budget from when it started",
                        len(in_flight))
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
        self.book_escalations(alerts, now)
        self.stats.alerts += len(alerts)
        self.stats.items += added
        if added:
            self._wake.set()
        return added

    # ------------------------------------------------------------ escalation
    @property
    def escalate_after(self) -> float:
        return self.settings.alert_escalate_after_seconds

    def book_escalations(self, alerts: Sequence[Alert], now: float) -> None:
        """Open alerts of routes with ``escalate_to`` are escalated unless
        acknowledged in time; resolved ones need no escalation any more."""
        resolved = [a.alert_id for a in alerts if a.status == "resolved"]
        if resolved:
            self.escalations.cancel(resolved, now)
        if self.escalate_after <= 0:
            return
        entries = [
            (alert, route.name, route.escalate_to)
            for alert in alerts if alert.status == "open"
            for route in self.table.routes_for(alert) if route.escalate_to
        ]
        if entries and self.escalations.book(entries, self.escalate_after, now):
            self._wake.set()

    def escalate_due(self, now: float | None = None) -> int:
        """Escalations that fell due become outbox items of their target
        route; returns how many items were added."""
        now = time.time() if now is None else now
        due = self.escalations.due(now)
        if not due:
            return 0
        added = 0
        for entry in due:
            target = self.table.get(entry.target)
            if target.name in self._broken and target.name != FALLBACK:
                target = self.table.fallback
            alert = escalated_copy(entry.alert, self.escalate_after, self.settings.language)
            held = target.held_until(alert, now)
            added += self.outbox.add(
                [(alert, target.name, robot, held or now) for robot in target.robots],
                origin=entry.origin, escalation=True,
            )
            log.warning("alert %s (%s) unacknowledged for %.0f s: escalated to route %s",
                        entry.alert.alert_id, entry.alert.kind, self.escalate_after, target.name)
        self.escalations.sent(due, now)
        self.stats.escalated += len(due)
        if added:
            self._wake.set()
        return added

    def admit_ack(self, value: bytes | None) -> AlertAck | None:
        """An operator's record from ct.alert-acks, or None (logged) if it is not one."""
        try:
            return self._ack_decoder.decode(value or b"")
        except Exception as exc:  # not ours to judge further: the sink quarantines it
            log.warning("a record on %s is not an alert acknowledgement (%s); ignored",
                        self.settings.topic("alert-acks"), _one_line(str(exc))[:200])
            return None

    async def ack_intake(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        """ct.alert-acks -> the escalation book -> commit, until ``stop``."""
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=300, max_records=1000)
            if not batches:
                continue
            acks = [ack for messages in batches.values() for msg in messages
                    if (ack := self.admit_ack(msg.value)) is not None]
            cancelled = self.escalations.acknowledged(acks)
            if cancelled:
                log.info("%d escalation(s) cancelled: acknowledged or resolved by an operator",
                         cancelled)
            try:
                await consumer.commit({tp: messages[-1].offset + 1
                                       for tp, messages in batches.items()})
            except KafkaError as exc:
                log.warning("offset commit of %s failed (%s); the book absorbs the replay",
                            self.settings.topic("alert-acks"), exc)

    async def escalate(self, stop: asyncio.Event) -> None:
        """Send escalations as they fall due, until ``stop``."""
        while not stop.is_set():
            self.escalate_due()
            wait = self.escalations.next_due_in()
            await _sleep_or_stop(1.0 if wait is None else min(max(wait, 0.05), 1.0), stop)

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
        except Exception:
            # a bug, not an answer: say so, and let the dispatcher start a new
            # server for the robot a second later rather than at once
            log.exception("robot %s: serving failed; trying again in 1 s", self.labels[robot])
            await _sleep_or_stop(1.0, stop)
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
                await self._send_one(robot, worst_first_item(items))
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
        try:
            message = render_alert(
                item.alert, lang=self.settings.language,
                dashboard=self.settings.dashboard_link, delivery_id=item.delivery_id,
                mentions=_mentions(route),
            )
        except Exception as exc:  # intake checks this; an older outbox may hold one
            self._unrenderable(robot, item, exc)
            return
        await self._attempt(robot, route, [item], message)

    async def _send_digest(self, robot: str, items: list[Item]) -> None:
        route = self.table.get(items[0].route)
        try:
            message = render_digest(
                [i.alert for i in items], lang=self.settings.language,
                dashboard=self.settings.dashboard_link, digest_id=_digest_id(items),
                route=route.name, mentions=_mentions(route),
            )
        except Exception:
            # one of them cannot be put into words: send them one by one, so
            # the one that cannot is found and set aside and the rest go
            log.exception("route %s: a digest of %d alerts failed to render; sending singly",
                          route.name, len(items))
            await self._send_one(robot, worst_first_item(items))
            return
        await self._attempt(robot, route, items, message)

    def _unrenderable(self, robot: str, item: Item, exc: Exception) -> None:
        """An item no message can be made of is recorded as rejected, never
        retried: it would stop its robot's queue."""
        detail = _one_line(f"could not render the message: {type(exc).__name__}: {exc}")
        log.error("alert %s for robot %s: %s; recorded as rejected", item.alert_id,
                  self.labels[robot], detail)
        self.outbox.finish([item], REJECTED, [AlertDelivery(
            delivery_id=item.delivery_id, alert_id=item.alert_id, alert_key=item.alert.key,
            kind=item.alert.kind, severity=item.alert.severity, route=item.route,
            robot=self.labels[robot], attempt=item.attempts, result="rejected",
            message_kind="markdown", ts=now_ms(), detail=detail,
        )])

    async def _post(self, robot: str, message: Message) -> tuple[SendResult, int]:
        """One request; returns its answer and its ``send_id``, which the
        caller hands to the outbox with the answer (until then the request
        is noted as in flight, and a crash counts it after the restart)."""
        assert self._client is not None
        send_id = self.outbox.send_started(robot)
        result = await self._client.send(self.urls[robot], message.body)
        self.budgets[robot].spent()
        self.stats.messages[message.kind] += 1
        self.stats.outcomes[result.outcome] += 1
        code = (str(result.errcode) if result.errcode is not None else
                f"http_{result.http_status}" if result.http_status is not None else "none")
        self.stats.results[(robot, result.outcome, code)] += 1
        if self.on_webhook is not None:
            self.on_webhook(result.latency_ms / 1000)
        return result, send_id

    async def _attempt(self, robot: str, route: Route, items: list[Item], message: Message
                       ) -> None:
        """One request for ``items`` and everything its answer implies."""
        items = self.outbox.start_sending(items, message.kind)
        result, send_id = await self._post(robot, message)
        ended = time.time()
        outcome = result.outcome
        digest = message.kind == "digest"

        def records(result_name: str) -> list[AlertDelivery]:
            return [self._record(i, robot, result_name, result, message) for i in items]

        sent = (robot, ended)
        if outcome == "delivered":
            self.outbox.finish(items, DELIVERED, records("digest" if digest else "delivered"),
                               sent=sent, send_id=send_id)
            self._route_ok(route)
            return
        if outcome == "rejected":
            log.error("robot %s refused %s for %d alert(s) (%s); recorded as rejected",
                      self.labels[robot], message.kind, len(items), result.detail)
            self.outbox.finish(items, REJECTED, records("rejected"), sent=sent, send_id=send_id)
            return
        if outcome == "rate_limited":
            self.budgets[robot].exhausted()
            self.outbox.finish(items, PENDING, records("rate_limited"),
                               not_before=ended + self.settings.alert_rate_window_seconds,
                               sent=sent, send_id=send_id)
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
                               sent=sent, send_id=send_id)
            return
        # broken
        self.outbox.finish(items, PENDING, records("broken"),
                           not_before=ended + (s.alert_retry_max_seconds
                                               if route.name == FALLBACK else 0.0),
                           sent=sent, send_id=send_id)
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
        result, send_id = await self._post(robot, message)
        record = AlertDelivery(
            delivery_id="n" + hashlib.sha256(message.content.encode()).hexdigest()[:15],
            alert_id="", alert_key="", kind="notice", severity="warning", route=FALLBACK,
            robot=self.labels[robot], attempt=1,
            result="delivered" if result.outcome == "delivered" else result.outcome,
            errcode=result.errcode, http_status=result.http_status,
            latency_ms=result.latency_ms, message_kind="markdown", ts=now_ms(),
            detail=result.detail,
        )
        self.outbox.record([record], sent=(robot, time.time()), send_id=send_id)

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
    def admit(self, topic: str, partition: int, offset: int, value: bytes | None
              ) -> Alert | DeadLetter:
        """The alert in a record of ct.alerts, or the dead letter that says why
        there is none (logged on one line and counted here).

        Whatever the bytes, this returns: a decoder's error (malformed JSON,
        invalid UTF-8, the RecursionError of JSON nested thousands deep, a
        value of the wrong type or range) and an alert that the outbox could
        not store or no message could be made of all become dead letters,
        instead of stopping the intake or, later, a robot's queue.
        """
        raw = value or b""
        if not raw:
            reason, detail = "not_json", "empty message value"
        else:
            try:
                alert = self._alert_decoder.decode(raw)
                self._check(alert)
                return alert
            except Exception as exc:  # any record is data, never a reason to stop
                rejected = reject(-1, raw, exc)  # the workers' reason codes (too_deep, ...)
                reason, detail = rejected.reason, _one_line(rejected.detail)
        self.stats.skipped += 1
        self.stats.dead_letters[reason] += 1
        log.error("%s[%d]@%d is not an alert (%s: %s; %d bytes); sent to %s", topic, partition,
                  offset, reason, detail[:LOG_DETAIL_CHARS], len(raw),
                  self.settings.topic("dead-letter"))
        # at most 64 kB of the record, with its length and sha256: it must fit in a message
        return DeadLetter.bounded(
            source_topic=topic, partition=partition, offset=offset, index=-1, reason=reason,
            detail=detail, raw=raw, received_at=now_ms(),
        )

    def _check(self, alert: Alert) -> None:
        """Raises if the outbox could not store ``alert`` or no message could
        be made of it (the renderers are built not to raise: this keeps a
        surprise out of the outbox, where it would come back at every try)."""
        encode_alert(alert)
        for mentions in (Mentions(), Mentions(("-",))):
            render_alert(alert, lang=self.settings.language, dashboard="", delivery_id="d",
                         mentions=mentions)
            render_digest([alert], lang=self.settings.language, dashboard="", digest_id="g",
                          route=FALLBACK, mentions=mentions)

    async def intake(self, consumer: AIOKafkaConsumer, stop: asyncio.Event,
                     producer: AIOKafkaProducer | None = None) -> None:
        """ct.alerts -> outbox (alerts) and ct.dead-letter (the rest) -> commit,
        until ``stop``."""
        while not stop.is_set():
            if self.heartbeat is not None:  # at most once a second
                self.heartbeat.beat(alerts=self.stats.alerts, items=self.stats.items)
            batches = await consumer.getmany(timeout_ms=300, max_records=1000)
            if not batches:
                continue
            alerts: list[Alert] = []
            dead: list[DeadLetter] = []
            offsets: dict[TopicPartition, int] = {}
            for tp, messages in batches.items():
                for msg in messages:
                    admitted = self.admit(tp.topic, tp.partition, msg.offset, msg.value)
                    if isinstance(admitted, Alert):
                        alerts.append(admitted)
                    else:
                        dead.append(admitted)
                offsets[tp] = messages[-1].offset + 1
            self.reload_route_health()
            self.accept(alerts)  # durable before the commit below
            if dead and producer is not None and not await self.dead_letter(
                    producer, dead, stop):
                return  # stopping: uncommitted, so the next start sends them again
            try:
                await consumer.commit(offsets)
            except KafkaError as exc:
                log.warning("offset commit failed (%s); the outbox absorbs the replay", exc)

    async def dead_letter(self, producer: AIOKafkaProducer, letters: Sequence[DeadLetter],
                          stop: asyncio.Event) -> bool:
        """Send ``letters`` to ct.dead-letter and wait for the broker's ack;
        retried until they are in or ``stop`` (False: not sent)."""
        topic = self.settings.topic("dead-letter")
        while True:
            try:
                futures = [
                    await producer.send(topic, key=letter.dedup_key().encode(),
                                        value=_encode_control(letter))
                    for letter in letters
                ]
                await asyncio.gather(*futures)
                return True
            except KafkaError as exc:
                log.warning("could not send %d dead letter(s) to %s (%s); retrying",
                            len(letters), topic, exc)
                if stop.is_set():
                    return False
                await _sleep_or_stop(1.0, stop)

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
        escalating = self.escalate_after > 0 and any(
            r.escalate_to for r in (*self.table.routes, self.table.fallback))
        acks = AIOKafkaConsumer(
            s.topic("alert-acks"), bootstrap_servers=s.bootstrap,
            group_id=f"{self.group_id}-acks", client_id=f"{s.app_id}-alerts",
            enable_auto_commit=False, auto_offset_reset="earliest", metadata_max_age_ms=10_000,
        ) if escalating else None
        await producer.start()
        try:
            await consumer.start()
            if acks is not None:
                await acks.start()
            try:
                dispatch_stop = asyncio.Event()
                tasks = [
                    asyncio.create_task(self.intake(consumer, stop, producer)),
                    asyncio.create_task(self.serve(dispatch_stop)),
                    asyncio.create_task(self._log_stats(stop)),
                ]
                if acks is not None:
                    tasks += [asyncio.create_task(self.ack_intake(acks, stop)),
                              asyncio.create_task(self.escalate(stop))]
                publisher = asyncio.create_task(self.publish(producer, dispatch_stop))
                stopping = asyncio.create_task(stop.wait())
                # a loop that ends before ``stop`` has failed: stop loudly, never
                # run on deaf (an intake that died would leave ct.alerts unread)
                await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
                failed = next((t for t in tasks if t.done() and not t.cancelled()
                               and t.exception() is not None), None)
                if failed is not None:
                    log.critical("a loop of the delivery service failed; stopping",
                                 exc_info=failed.exception())
                stop.set()
                dispatch_stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
                await asyncio.wait_for(publisher, timeout=30)
                if failed is not None:
                    raise RuntimeError("the delivery service stopped on an error (logged above)"
                                       ) from failed.exception()
            finally:
                await consumer.stop()
                if acks is not None:
                    await acks.stop()
        finally:
            await producer.stop()
            self.outbox.close()
        return self.stats

    async def _log_stats(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _sleep_or_stop(STATS_EVERY, stop)
            try:
                counts: object = self.outbox.counts()
            except sqlite3.Error as exc:  # a busy outbox is no reason to stop delivering
                counts = f"unreadable ({exc})"
            log.info("alerts: %d read, %d items, sent %s, outcomes %s, outbox %s, "
                     "dead letters %s, escalated %d", self.stats.alerts, self.stats.items,
                     dict(self.stats.messages), dict(self.stats.outcomes), counts,
                     dict(self.stats.dead_letters), self.stats.escalated)


def _mentions(route: Route) -> Mentions:
    return Mentions(route.mention_users, route.mention_mobiles)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def worst_first_item(items: Sequence[Item]) -> Item:
    worst = worst_first([i.alert for i in items])[0]
    return next(i for i in items if i.alert is worst)


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
    from ctower.topics import ensure_topics

    service = build_service(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await asyncio.to_thread(ensure_topics, settings)  # the admin client blocks
    service.heartbeat = Heartbeat(settings, "alerts")  # `ctower health alerts` reads it
    metrics = None
    if settings.alerts_metrics_port:
        from ctower.metrics import alerts_registry, serve

        metrics = serve(alerts_registry(service), settings.alerts_metrics_port,
                        settings.metrics_bind)
    log.info("delivering alerts to %d robot(s) on %d route(s): %s",
             len(service.urls), len(service.table.by_name),
             ", ".join(sorted(service.labels.values())))
    try:
        return await service.run(stop)
    finally:
        service.heartbeat.clear()
        if metrics is not None:
            metrics.shutdown()


def run_delivery(settings: Settings) -> DeliveryStats:
    """Run ``ctower alerts deliver`` until SIGTERM or SIGINT."""
    return asyncio.run(_main(settings))
