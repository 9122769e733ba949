"""Action orders of the stock rules: issued, followed and counted while in flight.

The stock rules live on a SKU's partition, so the orders they issue for it
live there too (a family of the same rule state, keyed by order id), and so
do the answers (``ct.action-status`` is keyed by SKU). That is what lets a
shortage with a transfer on its way not be ordered twice: the rule asks
:meth:`ActionBook.may_order` before issuing, which is a dictionary lookup,
not a scan, because the judgement of a (location, SKU) is the rules' hot path.

Orders are judged against the rules' event clock like the alerts: one still
``proposed`` at its due time expired (nobody approved it in time); one
approved or dispatched and not received by then raises ``action_overdue``,
which resolves when the order is received or rejected. After a rejection or
an expiry the same shortage is not ordered again within the alert cooldown,
so a warehouse that keeps refusing is not asked every second.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from ctower.rules.alert_book import AlertBook, Finding
from ctower.rules.rule_state import RuleState
from ctower.schemas.actions import NEXT, OPEN_STATES, ActionKind, ActionOrder, ActionStatus

KEEP_CLOSED_MS = 24 * 3_600_000
"""A closed order is forgotten this long after its due time (the store keeps it)."""


class ActionBook:
    def __init__(
        self,
        state: RuleState[ActionOrder],
        publish: Callable[[ActionOrder], None],
        auto_approve_qty: Callable[[], int],
        cooldown_ms: Callable[[], int],
        alerts: AlertBook | None = None,
    ) -> None:
        """``auto_approve_qty``: orders of at most this many units are approved by
        the rules themselves (0: every order waits for a person)."""
        self.state = state
        self.publish = publish
        self.auto_approve_qty = auto_approve_qty
        self.cooldown_ms = cooldown_ms
        self.alerts = alerts
        self._open: dict[int, dict[str, str]] = {}
        """Partition -> kind:destination|sku -> id of its open order."""
        self._closed: dict[int, dict[str, int]] = {}
        """Partition -> kind:destination|sku -> when its last order was rejected or expired."""
        self.stats: dict[str, int] = {
            "issued": 0, "auto_approved": 0, "answers": 0, "out_of_turn": 0, "unknown": 0,
            "expired": 0, "overdue": 0,
        }

    # ---------------------------------------------------------------- index
    def _index(self, partition: int) -> dict[str, str]:
        index = self._open.get(partition)
        if index is None:
            index = self._open[partition] = {}
            closed = self._closed.setdefault(partition, {})
            for order_id, order in self.state.items(partition):
                key = f"{order.kind}:{order.destination}|{order.sku}"
                if order.status in OPEN_STATES:
                    index[key] = order_id
                elif order.status in ("rejected", "expired"):
                    closed[key] = max(closed.get(key, 0), order.ts)
        return index

    def forget(self, partition: int) -> None:
        """A partition this worker no longer owns (rebuilt from the state if it returns)."""
        self._open.pop(partition, None)
        self._closed.pop(partition, None)

    def open_for(self, partition: int, key: str) -> ActionOrder | None:
        """The open order for ``kind:destination|sku``, if any."""
        order_id = self._index(partition).get(key)
        return self.state.get(partition, order_id) if order_id else None

    def in_flight(self, partition: int, key: str) -> int:
        """Units on transfer to ``destination|sku`` and not yet received (or refused)."""
        order = self.open_for(partition, f"transfer:{key}")
        return order.qty if order is not None else 0

    def may_order(self, partition: int, key: str, now: int) -> bool:
        """No order open for ``kind:destination|sku``, and none refused or expired
        within the cooldown."""
        if key in self._index(partition):
            return False
        closed = self._closed.get(partition, {}).get(key)
        return closed is None or now >= closed + self.cooldown_ms()

    # ---------------------------------------------------------------- issue
    def propose(
        self,
        partition: int,
        *,
        kind: ActionKind,
        source: str,
        destination: str,
        sku: str,
        qty: int,
        due_at: int,
        now: int,
        region: str | None,
        cause: str,
        evidence: dict[str, Any],
    ) -> ActionOrder:
        """Issue an order (approved at once when small enough) and publish it."""
        digest = hashlib.blake2s(f"{kind}:{destination}|{sku}@{now}".encode(),
                                 digest_size=5).hexdigest()
        order = ActionOrder(
            order_id=f"{'TO' if kind == 'transfer' else 'PP'}-{digest}",
            kind=kind, status="proposed", source=source, destination=destination, sku=sku,
            qty=qty, due_at=due_at, created_at=now, ts=now, region=region, cause=cause,
            evidence=evidence, by="rules",
        )
        self.stats["issued"] += 1
        self._store(partition, order)
        if qty <= self.auto_approve_qty():
            self.stats["auto_approved"] += 1
            self._store(partition, msgspec.structs.replace(order, status="approved", by="auto"))
        return self.state.get(partition, order.order_id) or order

    def _store(self, partition: int, order: ActionOrder) -> None:
        self.state.put(partition, order.order_id, order)
        key = f"{order.kind}:{order.destination}|{order.sku}"
        index = self._index(partition)
        if order.status in OPEN_STATES:
            index[key] = order.order_id
        else:
            if index.get(key) == order.order_id:
                del index[key]
            if order.status in ("rejected", "expired"):
                self._closed.setdefault(partition, {})[key] = order.ts
            if self.alerts is not None:
                self.alerts.clear(partition, f"action_overdue:{order.order_id}", order.ts,
                                  {"status": order.status})
        self.publish(order)

    # -------------------------------------------------------------- answers
    def apply(self, partition: int, answers: Iterable[ActionStatus]) -> None:
        """Answers from ``ct.action-status``. An answer out of turn (received twice, a
        rejection after receipt, a replay) changes nothing, so replays are harmless."""
        for answer in answers:
            self.stats["answers"] += 1
            order = self.state.get(partition, answer.order_id)
            if order is None:
                self.stats["unknown"] += 1
                continue
            if answer.status not in NEXT.get(order.status, ()):
                self.stats["out_of_turn"] += 1
                continue
            self._store(partition, msgspec.structs.replace(
                order, status=answer.status, ts=answer.ts, by=answer.by, note=answer.note,
            ))

    # ----------------------------------------------------------------- time
    def tick(self, partition: int, now: int) -> None:
        """Expire orders nobody approved, raise the overdue ones, forget old ones."""
        index = self._index(partition)
        for order_id in list(index.values()):
            order = self.state.get(partition, order_id)
            if order is None or now <= order.due_at:
                continue
            if order.status == "proposed":
                self.stats["expired"] += 1
                self._store(partition, msgspec.structs.replace(
                    order, status="expired", ts=now, by="rules",
                ))
            elif self.alerts is not None and not self.alerts.is_open(
                partition, f"action_overdue:{order_id}"
            ):
                opened = self.alerts.hold(partition, f"action_overdue:{order_id}", Finding(
                    kind="action_overdue", severity="warning",
                    evidence={
                        "order_id": order_id, "order_kind": order.kind, "status": order.status,
                        "source": order.source, "destination": order.destination,
                        "qty": order.qty, "due_at": order.due_at,
                        "late_min": round((now - order.due_at) / 60_000, 1),
                        "window_start": order.created_at, "window_end": now,
                    },
                    action={"kind": "chase", "source": order.source},
                    region=order.region, store_id=order.destination, sku=order.sku,
                ), now)
                if opened is not None:
                    self.stats["overdue"] += 1
        for order_id, order in self.state.items(partition):
            if order.status not in OPEN_STATES and now - order.due_at > KEEP_CLOSED_MS:
                self.state.delete(partition, order_id)
