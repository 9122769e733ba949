"""Customer-service tasks: one parcel that needs a person, not a lane that needs a carrier.

The lane rules alert per (carrier, region): a group chat cannot read one
message per late parcel. But each such parcel has a customer waiting, and
customer service (客服) can step in before the customer complains. So each
shipment past its ETA, stale in its stage, or failed becomes a task on
``ct.tasks`` (keyed by ``task_id``; the whole task again when it closes),
with the shipment, its order, what happened and when, and a message to send
the customer. In WeChat Work they are only counted, in the lane's alerts.
A task closes when the shipment recovers (moves again, is delivered) or a
person handles it (``ctower tasks handle``).

A paid warehouse-direct or guide-delivery order with no shipment at all is
a task too (``not_shipped``, no shipment id or carrier yet), closed when its
shipment appears; that one customer is also worth an alert.
"""

from __future__ import annotations

from typing import Any, Literal

from msgspec import Struct

TaskKind = Literal["past_eta", "stale", "failed", "not_shipped"]
TASK_KINDS: tuple[str, ...] = TaskKind.__args__  # type: ignore[attr-defined]


class ShipmentTask(Struct, kw_only=True, omit_defaults=True):
    """One parcel customer service should look at. Times are epoch ms (event time,
    except ``closed_at`` of a person's handling: the wall clock)."""

    task_id: str
    shipment_id: str
    """Empty for ``not_shipped``: no shipment exists yet."""
    order_id: str = ""
    member_id: str = ""
    """The order's member, where the rules have seen the order (the shipping rules
    join orders and shipments); empty when they have not."""
    carrier: str
    region: str
    district: str = ""
    kind: TaskKind
    status: Literal["open", "closed"]
    detail: dict[str, Any] = {}
    """What happened: the stage and since when, the ETA, the failure."""
    message: str = ""
    """A suggested message to the customer, in the operators' language."""
    opened_at: int
    closed_at: int | None = None
    closed_by: str = ""
    """``recovered`` (the shipment moved or arrived, or appeared for ``not_shipped``),
    ``cancelled`` / ``refunded`` (the order, before it shipped), ``forgotten`` (no news
    for days) or who handled it."""
    ts: int
