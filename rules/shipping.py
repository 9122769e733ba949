"""Paid orders that were never shipped: the join of the order and logistics streams.

A warehouse-direct or guide-delivery order is paid on the order stream (keyed
by store) and its parcel appears on the logistics stream (keyed by shipment);
neither partition sees the other. Both are re-keyed by order id onto the
internal ``shipping`` topic (:class:`ShippingEvent`), where one partition sees
an order and its shipments together: a paid order with no shipment created
within ``not_shipped_minutes`` becomes a customer-service task (kind
``not_shipped``) and an alert (``order_not_shipped``), both closed when a
shipment for the order appears (or the order is cancelled or refunded).

Memory stays bounded: an order is forgotten as soon as its shipment appears
(or it is cancelled), and an order whose task nobody closed is forgotten after
:data:`FORGET_MS`. Only the shipments seen before their order (the logistics
stream ahead of the order stream) leave a marker, forgotten when the order
comes or after :data:`MARKER_MS`. Due times wait in a heap per partition, so
time passing costs nothing until something is due. Replayed messages are
recognised by (source, offset) like every family's.

Because this is the one place that knows an order's member and its shipment
together, it also tells the lane rules which member a shipment is for (a
:class:`LaneEvent` of status ``member`` on the ``lanes`` topic), so their
customer-service tasks carry the member too.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Iterable
from functools import partial

import msgspec
from msgspec import Struct

from ctower.rules.alert_book import AlertBook, Finding
from ctower.rules.config import Rules
from ctower.rules.family import RuleFamily
from ctower.rules.lanes import MEMBER_HINT, LaneEvent
from ctower.rules.rule_state import RuleState
from ctower.schemas.events import MINUTE
from ctower.schemas.master_data import MasterData
from ctower.schemas.tasks import ShipmentTask

SHIPPED_FULFILMENTS = ("warehouse_direct", "guide_delivery")
"""Fulfilments that owe a shipment (store pickup and in-store sales never do)."""
FORGET_MS = 3 * 86_400_000
"""An order whose not-shipped task stayed open this long is forgotten (closed as
``forgotten``), like a shipment the lane rules hear nothing of."""
MARKER_MS = 6 * 3_600_000
"""A shipment seen before its order is remembered this long for it: the order
stream may lag the logistics stream, but not by hours of event time."""
IDLE_S = 5.0
"""Wall seconds without a shipment event after which the shipment side no longer
holds the judging clock back (as the rules' event clock treats a quiet source)."""

MESSAGES: dict[str, str] = {
    "zh": "您好，您的订单 {order_id} 已付款，我们正在催促仓库尽快发货，发货后会第一时间通知您。",
    "en": "Hello, your order {order_id} is paid and we are chasing the warehouse to ship it; "
          "we will tell you as soon as it leaves.",
}


class ShippingEvent(Struct, array_like=True):
    """An order's payment, cancellation or refund, or a shipment event, keyed by order."""

    order_id: str
    what: str
    """``paid``, ``cancelled``, ``refunded`` (order stream) or ``shipment``."""
    ts: int
    source: str
    offset: int
    member_id: str = ""
    store_id: str = ""
    fulfillment: str = ""
    shipment_id: str = ""
    status: str = ""
    carrier: str = ""
    region: str = ""


class AwaitedOrder(Struct, kw_only=True, array_like=True):
    """A paid order waiting for its shipment, or a shipment waiting for its order."""

    paid_at: int = 0
    """0: only a shipment was seen so far (a marker)."""
    member_id: str = ""
    store_id: str = ""
    fulfillment: str = ""
    shipped_at: int = 0
    shipment_id: str = ""
    carrier: str = ""
    region: str = ""
    task: ShipmentTask | None = None
    """The open not-shipped task, once due."""


class ShippingRules(RuleFamily):
    def __init__(
        self,
        state: RuleState[AwaitedOrder],
        book: AlertBook,
        rules: Callable[[], Rules],
        master: MasterData | None,
        publish_task: Callable[[ShipmentTask], None],
        hint: Callable[[str, list[LaneEvent]], None] | None,
        language: str,
    ) -> None:
        """``hint(lane, events)``: where a shipment's member goes for the lane rules
        (None: nowhere); ``publish_task``: the not-shipped tasks."""
        super().__init__()
        self.state = state
        self.book = book
        self.rules = rules
        self.master = master
        self.publish_task = publish_task
        self.hint = hint
        self.language = language if language in MESSAGES else "zh"
        self._due: dict[int, list[tuple[int, str]]] = {}
        """Partition -> heap of (when something is due, order id); rebuilt on load."""
        self._window = 0
        self.stats: dict[str, int] = {"opened": 0, "shipped": 0, "cancelled": 0, "forgotten": 0,
                                      "hints": 0}
        self._shipments: dict[int, tuple[int, float]] = {}
        """Partition -> (newest shipment event time, wall time it came); not persisted."""
        self._since: dict[int, float] = {}
        """Partition -> wall time this worker first applied something to it."""

    def window_ms(self) -> int:
        return int(self.rules().logistics.not_shipped_minutes * MINUTE)

    # ----------------------------------------------------------- due times
    @staticmethod
    def _when(entry: AwaitedOrder, window: int) -> int:
        if not entry.paid_at:
            return entry.shipped_at + MARKER_MS
        if entry.task is None:
            return entry.paid_at + window
        return entry.task.opened_at + FORGET_MS

    def _heap(self, partition: int) -> list[tuple[int, str]]:
        window = self.window_ms()
        if window != self._window:  # the rules changed: every due time moves
            self._window = window
            self._due.clear()
        heap = self._due.get(partition)
        if heap is None:
            heap = self._due[partition] = [
                (self._when(entry, window), key) for key, entry in self.state.items(partition)
            ]
            heapq.heapify(heap)
        return heap

    def judged_until(self, partition: int, now: int) -> int:
        """How far a missing shipment means something: ``now``, but no further
        than the newest shipment event while the shipments flow.

        The order side and the shipment side reach this partition as two
        streams. Fed a backlog, the orders' array can come before the
        shipments' one, and the rules' clock (the sources heard from) would
        then pass every order's deadline before its shipment was read: a task
        and an alert for orders shipped within minutes (the killed-worker
        test opened four so). A side that sent nothing for ``IDLE_S`` of wall
        time, or never did since this worker took the partition, stops holding
        the clock: orders go on being judged when the shipments stop.
        """
        wall = self.state.wall()
        seen = self._shipments.get(partition)
        if seen is None:
            since = self._since.setdefault(partition, wall)
            return now if wall - since >= IDLE_S else 0
        ts, at = seen
        return now if wall - at >= IDLE_S else min(now, ts)

    def due(self, partition: int, now: int) -> set[str]:
        keys = super().due(partition, now)
        heap = self._heap(partition)
        until = self.judged_until(partition, now)
        while heap and heap[0][0] <= until:
            keys.add(heapq.heappop(heap)[1])
        return keys

    def pending(self) -> Iterable[int]:
        return set(super().pending()) | set(self._due)

    def forget(self, partition: int) -> None:
        super().forget(partition)
        self._due.pop(partition, None)
        self._shipments.pop(partition, None)
        self._since.pop(partition, None)

    # --------------------------------------------------------------- input
    def apply(self, partition: int, events: Iterable[ShippingEvent]) -> None:
        """Apply one array of events (whole source messages, in source order)."""
        state = self.state
        evaluate = partial(self.evaluate_if_time_passed, partition)
        # the message of our own topic being applied: the hints' source offset
        here = state.position(partition)
        self._since.setdefault(partition, state.wall())
        for ev in state.fresh_items(partition, events, evaluate):
            if ev.what == "shipment":
                seen = self._shipments.get(partition)
                self._shipments[partition] = (max(ev.ts, seen[0] if seen else 0), state.wall())
            entry = state.get(partition, ev.order_id)
            if ev.what == "paid":
                self._paid(partition, ev, entry, here)
            elif ev.what == "shipment":
                self._shipment(partition, ev, entry, here)
            elif entry is not None and entry.paid_at:  # cancelled or refunded before shipping
                self.stats["cancelled"] += 1
                self._catch_up(partition, ev.order_id, entry, ev.ts)
                self._done(partition, ev.order_id,
                           self.state.get(partition, ev.order_id) or entry, ev.ts, ev.what)
        evaluate()

    def _paid(self, partition: int, ev: ShippingEvent, entry: AwaitedOrder | None,
              here: int) -> None:
        if entry is not None and entry.paid_at:
            return  # paid twice (a re-send beyond the de-duplication horizon)
        if entry is None and ev.fulfillment not in SHIPPED_FULFILMENTS:
            return
        awaited = AwaitedOrder(paid_at=ev.ts, member_id=ev.member_id, store_id=ev.store_id,
                               fulfillment=ev.fulfillment)
        if entry is not None:  # its shipment came first (the logistics stream ahead)
            self._shipped(partition, ev.order_id, awaited, entry.shipment_id, entry.carrier,
                          entry.region, max(ev.ts, entry.shipped_at), here)
            return
        self.state.put(partition, ev.order_id, awaited)
        heapq.heappush(self._heap(partition), (self._when(awaited, self._window), ev.order_id))

    def _shipment(self, partition: int, ev: ShippingEvent, entry: AwaitedOrder | None,
                  here: int) -> None:
        if entry is None:
            if ev.status == "created":  # ahead of its order: remember it for the order
                marker = AwaitedOrder(shipped_at=ev.ts, shipment_id=ev.shipment_id,
                                      carrier=ev.carrier, region=ev.region)
                self.state.put(partition, ev.order_id, marker)
                heapq.heappush(self._heap(partition),
                               (self._when(marker, self._window), ev.order_id))
            return  # else: a later event of a shipment already matched (the usual case)
        if not entry.paid_at:
            return  # another event of the shipment the marker holds
        self._shipped(partition, ev.order_id, entry, ev.shipment_id, ev.carrier, ev.region,
                      ev.ts, here)

    def _shipped(self, partition: int, order_id: str, entry: AwaitedOrder, shipment_id: str,
                 carrier: str, region: str, ts: int, here: int) -> None:
        """A shipment for a paid order: it needs nothing more, its member goes to the lane."""
        self._hint(partition, shipment_id, carrier, region, entry.member_id, order_id, here)
        self.stats["shipped"] += 1
        self._catch_up(partition, order_id, entry, ts)
        self._done(partition, order_id, self.state.get(partition, order_id) or entry, ts,
                   "recovered", {"shipment_id": shipment_id, "shipped_at": ts})

    def _catch_up(self, partition: int, order_id: str, entry: AwaitedOrder, ts: int) -> None:
        """Open what was due before ``ts`` and not judged yet: the stream that closes an
        order may run ahead of the clock, and what the rules say must not depend on it."""
        window = self._window or self.window_ms()
        if entry.task is None and ts >= entry.paid_at + window:
            self._open(partition, order_id, entry, entry.paid_at + window, window)

    def _hint(self, partition: int, shipment_id: str, carrier: str, region: str, member: str,
              order_id: str, here: int) -> None:
        if self.hint is None or not member:
            return
        self.stats["hints"] += 1
        # no event time (0): the lane's clock follows its carriers, not this join's pace
        self.hint(f"{carrier}|{region}", [LaneEvent(
            shipment_id, MEMBER_HINT, 0, None, carrier, region, f"shipping:{partition}", here,
            order_id, "", member)])

    def _done(self, partition: int, order_id: str, entry: AwaitedOrder, now: int, by: str,
              evidence: dict[str, object] | None = None) -> None:
        """The order needs nothing more: close its task and alert, forget it."""
        task = entry.task
        if task is not None and task.status == "open":
            self.publish_task(msgspec.structs.replace(
                task, status="closed", closed_at=max(now, task.opened_at), closed_by=by,
                ts=max(now, task.ts)))
        self.book.clear(partition, f"order_not_shipped:{order_id}", now, evidence or {"by": by})
        self.state.delete(partition, order_id)

    # ------------------------------------------------------------ judging
    def evaluate(self, partition: int, key: str, now: int) -> None:
        entry = self.state.get(partition, key)
        if entry is None:
            return
        window = self._window or self.window_ms()
        when = self._when(entry, window)
        if self.judged_until(partition, now) < when:  # not yet (also: a stale heap entry)
            heapq.heappush(self._heap(partition), (when, key))
            return
        if not entry.paid_at:
            self.state.delete(partition, key)  # a marker whose order never came
        elif entry.task is None:
            self._open(partition, key, entry, when, window)
        else:
            self.stats["forgotten"] += 1
            self._done(partition, key, entry, now, "forgotten")

    def _open(self, partition: int, order_id: str, entry: AwaitedOrder, at: int,
              window: int) -> None:
        """Open the task and the alert at the time the window closed (a replay judges
        an hour in seconds; the alert says when the order crossed the line)."""
        region = (self.master.region_of(entry.store_id) if self.master is not None else None) or ""
        detail: dict[str, object] = {"store_id": entry.store_id, "paid_at": entry.paid_at,
                                     "fulfillment": entry.fulfillment,
                                     "window_minutes": window / MINUTE}
        digest = hashlib.blake2s(f"{order_id}:not_shipped@{at}".encode(),
                                 digest_size=5).hexdigest()
        task = ShipmentTask(
            task_id=f"T-{digest}", shipment_id="", order_id=order_id, member_id=entry.member_id,
            carrier="", region=region, kind="not_shipped", status="open", detail=detail,
            message=MESSAGES[self.language].format(order_id=order_id), opened_at=at, ts=at,
        )
        self.state.put(partition, order_id,
                       msgspec.structs.replace(entry, task=task))
        heapq.heappush(self._heap(partition), (at + FORGET_MS, order_id))
        self.stats["opened"] += 1
        self.publish_task(task)
        self.book.hold(partition, f"order_not_shipped:{order_id}", Finding(
            kind="order_not_shipped", severity="warning",
            evidence={"order_id": order_id, "store_id": entry.store_id,
                      "fulfillment": entry.fulfillment, "paid_at": entry.paid_at,
                      "minutes": round((at - entry.paid_at) / MINUTE, 1),
                      "threshold_minutes": window / MINUTE, "task_id": task.task_id,
                      "window_start": entry.paid_at, "window_end": at},
            action={"kind": "ship"}, store_id=entry.store_id, region=region or None), at)

    def tick(self) -> None:
        """Time alone makes orders due: judge what is due on every partition."""
        for partition in self.state.partitions():
            now = self.state.now(partition)
            if not now:
                continue
            for key in self.due(partition, now):
                self.evaluate(partition, key, now)
            self.book.expire(partition, now)
