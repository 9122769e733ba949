"""Customer service (客服): complaint bursts per SKU and the complaint SLA.

Customer service hears of a bad batch, a wrong label or a late carrier
before any figure moves: five customers complaining about one SKU within an
hour, across stores, is a product problem to pull from the shelves, not five
separate tickets. And each complaint is promised an answer within
``sla_hours`` (24 h): the rule warns ``sla_warn_hours`` before a complaint's
time runs out, while someone can still answer it.

Both live on the service stream's own partitions: the stream is keyed by
SKU (by ticket when a ticket names no SKU), so every complaint about a SKU,
and both events of a ticket, meet on one partition. Entities: ``sku:<sku>``
holds the recent complaints about the SKU (time, topic, store);
``ticket:<id>`` an open complaint until it closes and its alert resolves.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable

from msgspec import Struct

from ctower.rules.alert_book import AlertBook, Finding
from ctower.rules.config import Rules
from ctower.rules.family import RuleFamily
from ctower.rules.rule_state import RuleState
from ctower.schemas.events import Service
from ctower.schemas.master_data import MasterData

HOUR = 3_600_000


class ServiceItem(Struct, kw_only=True, array_like=True):
    """A SKU's recent complaints, or one open complaint. New fields go at the end."""

    complaints: list[tuple[int, str, str]] = []
    """SKU: (ts, topic, store) of each complaint opened within the burst window."""
    opened_at: int = 0
    """Ticket: when the complaint was opened (0: its opening not seen yet)."""
    closed_at: int = 0
    """Ticket: when it was closed (0: still open)."""
    store_id: str = ""
    sku: str = ""
    topic: str = ""
    order_id: str = ""
    channel: str = ""


class ServiceRulesFamily(RuleFamily):
    def __init__(
        self,
        state: RuleState[ServiceItem],
        book: AlertBook,
        rules: Callable[[], Rules],
        master: MasterData | None,
    ) -> None:
        super().__init__()
        self.state = state
        self.book = book
        self.rules = rules
        self.master = master
        self._sla_due: dict[int, list[tuple[int, str]]] = {}
        """Partition -> (when the SLA warning is due, ticket key), soonest first: a
        warning is judged at the second it falls due, not at the next tick (a
        backtest or a replay moves event time by minutes between two ticks).
        Not persisted: after a restart :meth:`tick` finds the tickets."""

    def apply(self, partition: int, source: str, offset: int, events: Iterable[Service]) -> None:
        state = self.state
        if not state.fresh(partition, source, offset):
            return
        rules = self.rules().service
        warn_ms = int((rules.sla_hours - rules.sla_warn_hours) * HOUR)
        max_ts = 0
        for ev in events:
            ts: int = ev.ts  # type: ignore[assignment]
            max_ts = max(max_ts, ts)
            if ev.kind != "complaint":
                continue
            key = f"ticket:{ev.ticket_id}"
            ticket = state.get(partition, key) or ServiceItem()
            if ev.state == "opened":
                ticket.opened_at = ts
                heapq.heappush(self._sla_due.setdefault(partition, []), (ts + warn_ms, key))
                ticket.store_id, ticket.sku = ev.store_id, ev.sku or ""
                ticket.topic, ticket.order_id = ev.topic, ev.order_id or ""
                ticket.channel = ev.channel
                if ev.sku:
                    sku_key = f"sku:{ev.sku}"
                    item = state.get(partition, sku_key) or ServiceItem()
                    item.complaints.append((ts, ev.topic, ev.store_id))
                    state.put(partition, sku_key, item)
                    self.touch(partition, sku_key)
            else:
                ticket.closed_at = ts
            state.put(partition, key, ticket)
            self.touch(partition, key)
        state.applied(partition, source, offset, max_ts)
        self.evaluate_if_time_passed(partition)

    def pending(self) -> Iterable[int]:
        return sorted(set(super().pending()) | set(self._sla_due))

    def due(self, partition: int, now: int) -> set[str]:
        """The keys touched, and the open complaints whose SLA warning fell due."""
        keys = super().due(partition, now)
        heap = self._sla_due.get(partition)
        while heap and heap[0][0] <= now:
            keys.add(heapq.heappop(heap)[1])
        if heap is not None and not heap:
            del self._sla_due[partition]
        return keys

    def forget(self, partition: int) -> None:
        super().forget(partition)
        self._sla_due.pop(partition, None)

    def tick(self) -> None:
        """Time passes: complaints leave the burst window, SLAs come close."""
        rules = self.rules().service
        warn_ms = int((rules.sla_hours - rules.sla_warn_hours) * HOUR)
        for partition in self.state.partitions():
            now = self.state.now(partition)
            if not now:
                continue
            for key, item in self.state.items(partition):
                if key.startswith("sku:"):
                    if item.complaints:
                        self.evaluate(partition, key, now)
                elif (item.opened_at and not item.closed_at
                      and now >= item.opened_at + warn_ms
                      and not self.book.is_open(partition, f"complaint_sla:{key[7:]}")):
                    self.evaluate(partition, key, now)
            self.book.expire(partition, now)

    def evaluate(self, partition: int, key: str, now: int) -> None:
        item = self.state.get(partition, key)
        if item is None:
            return
        if key.startswith("sku:"):
            self._burst(partition, key[4:], item, now)
        else:
            self._sla(partition, key[7:], item, now)

    def _burst(self, partition: int, sku: str, item: ServiceItem, now: int) -> None:
        rules = self.rules().service
        horizon = now - int(rules.burst_window_minutes * 60_000)
        recent = [c for c in item.complaints if c[0] > horizon]
        key = f"complaint_burst:{sku}"
        if len(recent) != len(item.complaints):
            item.complaints = recent
            if recent:
                self.state.put(partition, f"sku:{sku}", item)
            else:
                self.state.delete(partition, f"sku:{sku}")
        count = sum(1 for c in recent if c[0] <= now)
        if count >= rules.burst_complaints:
            topics = Counter(c[1] for c in recent).most_common(rules.top_topics)
            stores = Counter(c[2] for c in recent)
            region = self.master.region_of(stores.most_common(1)[0][0]) if self.master else None
            self.book.hold(partition, key, Finding(
                kind="complaint_burst",
                severity="warning",
                evidence={
                    "window_start": horizon, "window_end": now, "sku": sku,
                    "complaints": count, "threshold": rules.burst_complaints,
                    "window_minutes": rules.burst_window_minutes,
                    "top_topics": [[t, n] for t, n in topics],
                    "topics_text": ", ".join(f"{t} ({n})" for t, n in topics),
                    "stores": len(stores),
                    "top_stores": [[s, n] for s, n in stores.most_common(3)],
                },
                region=region,
                sku=sku,
            ), now)
        elif count < rules.burst_clear_below:
            self.book.clear(partition, key, now, {"complaints": count})

    def _sla(self, partition: int, ticket_id: str, item: ServiceItem, now: int) -> None:
        rules = self.rules().service
        key = f"complaint_sla:{ticket_id}"
        if item.closed_at:
            self.book.clear(partition, key, now, {"closed_at": item.closed_at})
            self.state.delete(partition, f"ticket:{ticket_id}")
            return
        if not item.opened_at:
            return
        deadline = item.opened_at + int(rules.sla_hours * HOUR)
        if now < deadline - int(rules.sla_warn_hours * HOUR):
            return
        region = self.master.region_of(item.store_id) if self.master else None
        self.book.hold(partition, key, Finding(
            kind="complaint_sla",
            severity="critical" if now >= deadline else "warning",
            evidence={
                "ticket_id": ticket_id, "opened_at": item.opened_at, "deadline": deadline,
                "age_h": round((now - item.opened_at) / HOUR, 1),
                "hours_left": round(max(0, deadline - now) / HOUR, 1),
                "sla_hours": rules.sla_hours, "warn_hours": rules.sla_warn_hours,
                "topic": item.topic, "channel": item.channel, "order_id": item.order_id or None,
            },
            region=region,
            store_id=item.store_id,
            sku=item.sku or None,
        ), now)
