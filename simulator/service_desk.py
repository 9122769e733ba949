"""Customer service (客服) in the simulation: tickets that follow what went wrong.

Customers write to customer service because something happened to them: a
parcel came late or not at all, the SKU they came for was gone. So tickets
are opened by the generator's own events (a late or failed delivery, a sale
lost to an empty shelf), plus a trickle of unrelated inquiries and scattered
complaints about random SKUs: background that must never look like a burst.

The desk has its own RNG and its own ticket numbers: switching customer
service on does not change a single byte of the other streams' events for a
seed (only how many events a ``--events`` budget leaves for them).

:class:`ComplaintBurst` is an incident: a bad batch of one SKU, about which
complaints come in from several stores within the hour. :class:`ComplaintSla`
another: a complaint nobody answers for more than a day.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from ctower.schemas.events import Service
from ctower.simulator.incidents import Incident
from ctower.simulator.items import Item

if TYPE_CHECKING:
    from ctower.simulator.chain import Store
    from ctower.simulator.generator import Generator

HOUR_MS = 3_600_000
CHANNELS = ("mini_program", "wechat_chat", "phone", "in_store", "live_stream")
_CHANNEL_WEIGHTS = (0.45, 0.30, 0.12, 0.10, 0.03)
BACKGROUND_TOPICS = ("quality", "wrong_item", "refund", "coupon", "pickup", "other")
P_LATE_COMPLAINT = 0.35
"""A late parcel's customer complains this often (a failed one: twice as often)."""
P_STOCKOUT_TICKET = 0.08
"""A sale lost to an empty shelf becomes an out-of-stock ticket this often."""
P_SESSION_INQUIRY = 0.004
P_SESSION_COMPLAINT = 0.0008
P_SLOW_ANSWER = 0.02
"""Complaints left open past the SLA warning (closed after 23-30 h)."""


class ServiceDesk:
    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.rng = random.Random(f"service:{gen.config.seed}")
        self.tickets = 0

    def _channel(self) -> str:
        return self.rng.choices(CHANNELS, _CHANNEL_WEIGHTS)[0]

    def open(
        self, ts: int, store: Store, kind: str, topic: str, *, order_id: str | None = None,
        sku: int | None = None, channel: str | None = None,
    ) -> str:
        """Open a ticket now and schedule its closing; returns its id."""
        rng = self.rng
        self.tickets += 1
        ticket = {
            "ticket_id": f"TK-{self.gen.tag}-{self.tickets}",
            "channel": channel or self._channel(),
            "kind": kind,
            "topic": topic,
            "store_id": store.store_id,
            "order_id": order_id,
            "sku": self.gen.world.sku_ids[sku] if sku is not None else None,
        }
        self._emit(ts, ticket, "opened")
        if kind == "inquiry":
            answer = rng.randint(60_000, 30 * 60_000)
        elif rng.random() < P_SLOW_ANSWER:
            answer = rng.randint(23 * HOUR_MS, 30 * HOUR_MS)
        else:
            answer = int(rng.lognormvariate(0, 1) * 2 * HOUR_MS) + 5 * 60_000
            answer = min(answer, 20 * HOUR_MS)
        self.gen.push(ts + answer, self._close, ticket)
        return str(ticket["ticket_id"])

    def open_unanswered(self, ts: int, store: Store, kind: str, topic: str,
                        answer_ms: int) -> str:
        """Open a ticket now that is answered ``answer_ms`` later, whatever the desk's pace."""
        self.tickets += 1
        ticket = {
            "ticket_id": f"TK-{self.gen.tag}-{self.tickets}", "channel": self._channel(),
            "kind": kind, "topic": topic, "store_id": store.store_id,
        }
        self._emit(ts, ticket, "opened")
        self.gen.push(ts + answer_ms, self._close, ticket)
        return str(ticket["ticket_id"])

    def _close(self, ts: int, ticket: dict[str, Any]) -> None:
        self._emit(ts, ticket, "closed")

    def _emit(self, ts: int, ticket: dict[str, Any], state: str) -> None:
        event = Service(ts=ts, state=state, **{k: v for k, v in ticket.items() if v is not None})  # type: ignore[arg-type]
        self.gen.out.append(Item("service", event.partition_key, ts, event))

    # --- what makes customers write ---------------------------------------------------
    def later(self, ts: int, store: Store, kind: str, topic: str, **fields: Any) -> None:
        """Open a ticket at ``ts`` (the generator sends in time order: scheduled)."""
        self.gen.push(ts, lambda at, _: self.open(at, store, kind, topic, **fields))

    def late_parcel(self, ts: int, store: Store, order_id: str, failed: bool) -> None:
        if self.rng.random() < P_LATE_COMPLAINT * (2 if failed else 1):
            self.later(ts + self.rng.randint(60_000, 3 * HOUR_MS), store, "complaint",
                       "late_delivery", order_id=order_id)

    def out_of_stock(self, ts: int, store: Store, sku: int) -> None:
        if self.rng.random() < P_STOCKOUT_TICKET:
            kind = "complaint" if self.rng.random() < 0.3 else "inquiry"
            self.later(ts + self.rng.randint(30_000, 20 * 60_000), store, kind, "out_of_stock",
                       sku=sku)

    def session(self, ts: int, store: Store) -> None:
        """Background: questions, and complaints scattered over the whole range."""
        x = self.rng.random()
        if x < P_SESSION_INQUIRY:
            self.open(ts, store, "inquiry", self.rng.choice(BACKGROUND_TOPICS))
        elif x < P_SESSION_INQUIRY + P_SESSION_COMPLAINT:
            sku = self.rng.randrange(len(self.gen.world.sku_ids))
            self.open(ts, store, "complaint", self.rng.choice(BACKGROUND_TOPICS), sku=sku)


class ComplaintBurst(Incident):
    """A bad batch: complaints about one SKU from several stores within 40 minutes,
    mostly about its quality."""

    kind = "complaint_burst"
    COMPLAINTS = 8
    TOPICS = ("quality", "quality", "quality", "wrong_item")

    def install(self) -> None:
        gen = self.gen
        # a SKU in the middle of the range: sold everywhere, not a top seller
        self.sku = len(gen.world.sku_ids) // 2 + self.rng.randrange(20)
        self.t0 = self.at(0.45)
        times = sorted(self.t0 + self.rng.randint(0, 40 * 60_000)
                       for _ in range(self.COMPLAINTS))
        self.sent: list[tuple[int, str, str]] = []
        for t in times:
            gen.push(t, self._complain)

    def _complain(self, ts: int, _: Any) -> None:
        gen = self.gen
        store = gen.chain.pick_store(self.rng)
        topic = self.TOPICS[self.rng.randrange(len(self.TOPICS))]
        gen.service_desk.open(ts, store, "complaint", topic, sku=self.sku)
        self.sent.append((ts, topic, store.store_id))

    def truth(self) -> dict[str, Any]:
        threshold = 5  # rules.toml [service] burst_complaints
        times = [t for t, _, _ in self.sent]
        return {
            "kind": self.kind,
            "scope": {"sku": self.gen.world.sku_ids[self.sku], "region": None},
            "start_ts": times[0] if times else self.t0,
            "end_ts": times[-1] if times else self.t0,
            "expect": {
                "rule": "complaint burst: burst_complaints complaints about one SKU within "
                "burst_window_minutes",
                "complaints": len(self.sent),
                "detectable_ts": times[threshold - 1] if len(times) >= threshold else None,
                "top_topic": "quality",
                "stores": sorted({s for _, _, s in self.sent}),
            },
        }


SLA_HOURS = 24
SLA_WARN_HOURS = 2
"""rules.toml [service] sla_hours and sla_warn_hours: the truth says when the rule warns."""


class ComplaintSla(Incident):
    """A complaint left unanswered past its 24 h SLA: answered after 25 hours.

    Only a run of more than a simulated day shows the warning: with ``--rate
    max`` a low ``--sim-rate`` stretches the run (about 90k events make a day
    at ``--sim-rate 1``). In a shorter run the complaint is still sent, and the
    truth says the warning falls after the run's end (``detectable_ts`` null).
    """

    kind = "complaint_sla"
    ANSWER_MS = 25 * HOUR_MS

    def install(self) -> None:
        self.t0 = self.at(0.04)
        self.ticket = ""
        self.store_id = ""
        self.gen.push(self.t0, self._complain)

    def _complain(self, ts: int, _: Any) -> None:
        gen = self.gen
        store = gen.chain.stores[self.rng.randrange(len(gen.chain.stores))]
        self.store_id = store.store_id
        # no SKU: a refund complaint, keyed (and judged) by its ticket
        self.ticket = gen.service_desk.open_unanswered(ts, store, "complaint", "refund",
                                                       self.ANSWER_MS)

    def truth(self) -> dict[str, Any]:
        end = self.gen.now
        warn = self.t0 + (SLA_HOURS - SLA_WARN_HOURS) * HOUR_MS
        return {
            "kind": self.kind,
            "scope": {"store_id": self.store_id, "ticket_id": self.ticket, "region": None},
            "start_ts": self.t0,
            "end_ts": self.t0 + self.ANSWER_MS,
            "expect": {
                "rule": "complaint SLA: warned sla_warn_hours before sla_hours run out",
                "opened_at": self.t0,
                "warn_ts": warn,
                "deadline_ts": self.t0 + SLA_HOURS * HOUR_MS,
                "answered_ts": self.t0 + self.ANSWER_MS,
                "detectable_ts": warn if warn <= end else None,
            },
        }
