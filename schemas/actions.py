"""Action orders: what the stock rules ask a warehouse or a store to do, and its answers.

An alert tells people; an order asks a system to act. The stock rules issue
a transfer order (调拨单) for a restock or a stock-out and a pre-pack order
(预包) for a demand spike, on ``ct.actions`` (keyed by ``order_id``; every
change of state is the whole order again, so a consumer keeps the latest).
Whoever acts (the warehouse system, a store, a person on the dashboard or the
CLI) answers on ``ct.action-status`` with an :class:`ActionStatus`, keyed by
the order's SKU: the SKU's partition is where the stock rules that issued
the order live, so they learn of it and count a transfer in flight.

Lifecycle: ``proposed`` -> ``approved`` -> ``dispatched`` -> ``received``;
``rejected`` from proposed, approved or dispatched; ``expired`` when nobody
approved it by its due time. An order under the auto-approval quantity is
approved by the rules themselves (``approved_by`` = ``auto``).
"""

from __future__ import annotations

from typing import Any, Literal

from msgspec import Struct

ActionKind = Literal["transfer", "prepack"]
ActionState = Literal["proposed", "approved", "dispatched", "received", "rejected", "expired"]
ACTION_STATES: tuple[str, ...] = ActionState.__args__  # type: ignore[attr-defined]
OPEN_STATES = frozenset({"proposed", "approved", "dispatched"})
"""An order in one of these is in flight: its quantity counts as on its way."""
NEXT: dict[str, frozenset[str]] = {
    "proposed": frozenset({"approved", "rejected", "expired"}),
    "approved": frozenset({"dispatched", "received", "rejected"}),
    "dispatched": frozenset({"received", "rejected"}),
}
"""The moves an order may make; anything else is an answer out of turn and is ignored."""
ACTION_RANK = {"proposed": 0, "approved": 1, "dispatched": 2, "received": 3, "rejected": 3,
               "expired": 3}
"""How far along a state is: the store keeps an order's furthest state."""


class ActionOrder(Struct, kw_only=True, omit_defaults=True):
    """One order, as it stands (sent again on every change of state).

    ``source`` gives the stock (the region's warehouse, or a store with
    surplus) and ``destination`` receives it; a pre-pack order is prepared
    at ``source`` (the warehouse) for ``destination`` (the spiking store).
    Times are epoch ms of event time, like the alerts': ``created_at`` and
    ``due_at`` on the rules' clock, ``ts`` when this state was reached.
    """

    order_id: str
    kind: ActionKind
    status: ActionState
    source: str
    destination: str
    sku: str
    qty: int
    due_at: int
    created_at: int
    ts: int
    region: str | None = None
    cause: str = ""
    """The alert key that made it (``restock:S001|K1``)."""
    evidence: dict[str, Any] = {}
    """The figures the quantity came from."""
    by: str = ""
    """Who made the last change: ``auto``, ``rules``, a person, the warehouse."""
    note: str = ""


class ActionStatus(Struct, kw_only=True):
    """An answer to an order: it was approved, dispatched, received or rejected."""

    order_id: str
    sku: str
    """The order's SKU: the message's key, so it reaches the rules that issued it."""
    status: Literal["approved", "dispatched", "received", "rejected"]
    by: str
    ts: int
    """Epoch ms (wall clock of whoever answered)."""
    note: str = ""
