"""Where to send the customers of a store that cannot serve them.

A throttle only stops coupons at a congested store; the customers still want
the campaign. The ledger of a campaign (on the campaign's partition) already
receives every store's conditions as signals: throttled (pickup pressure),
stock short (stock cover), and whether a store has room at its pickup counter
(``pickup_room``, with its pressure). So the alternatives to a store are the
nearest stores of its region that have room, are neither throttled nor short
of the campaign's SKUs, and are not paused by marketing; nothing is asked of
another partition.

A campaign may also shift part of a throttled store's cap to those stores
while the throttle lasts (``shift_share`` of a policy): the share of the
store's own cap, split evenly over its alternatives. Only store caps shift: a
campaign-wide cap already lets other stores use what a throttled one does not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ctower.schemas.control import CouponPolicy, CouponSignal

MAX_ALTERNATIVES = 3
"""Stores named to a customer: a short list is read, a long one is not."""

SignalMap = Mapping[tuple[str, str, str], tuple[int, CouponSignal]]
"""(store, cause, sku) -> (offset, latest signal): the ledger's own map."""


def conditions(signals: SignalMap) -> tuple[set[str], dict[str, float]]:
    """(stores throttled or short, store -> pressure of those with room)."""
    blocked: set[str] = set()
    room: dict[str, float] = {}
    for (store, cause, _sku), (_offset, signal) in signals.items():
        if not signal.active:
            continue
        if cause == "pickup_room":
            room[store] = float(signal.evidence.get("pressure", 0.0))
        else:
            blocked.add(store)
    return blocked, room


def alternatives(
    store_id: str,
    signals: SignalMap,
    neighbours: Callable[[str], Iterable[tuple[str, float]]],
    paused: Callable[[str], bool],
    limit: int = MAX_ALTERNATIVES,
) -> list[dict[str, Any]]:
    """The nearest stores with room for the campaign, nearest first."""
    blocked, room = conditions(signals)
    if not room:
        return []
    found: list[dict[str, Any]] = []
    for other, km in neighbours(store_id):
        if other in room and other not in blocked and not paused(other):
            found.append({"store_id": other, "km": km, "pressure": round(room[other], 2)})
            if len(found) >= limit:
                break
    return found


def hint(found: list[dict[str, Any]]) -> str | None:
    """The sentence a reservation answer carries, e.g. ``not here: try S012, 1.2 km,
    pressure 0.3``."""
    if not found:
        return None
    return "not here: try " + "; ".join(
        f"{alt['store_id']}, {alt['km']:g} km, pressure {alt['pressure']:g}" for alt in found
    )


def shift_plan(
    signals: SignalMap,
    policy: Callable[[str], CouponPolicy | None],
    campaign_policy: CouponPolicy | None,
    alternatives_of: Callable[[str], list[dict[str, Any]]],
) -> dict[str, dict[str, int]]:
    """Receiving store -> {throttled store: coupons of its cap shifted there}.

    A throttled store shifts ``shift_share`` (its own policy's, else the
    campaign's) of its store cap, split evenly over its alternatives, the
    nearest getting the remainder.
    """
    plan: dict[str, dict[str, int]] = {}
    throttled = sorted({
        store for (store, cause, _sku), (_o, signal) in signals.items()
        if cause == "pickup_pressure" and signal.active
    })
    for store in throttled:
        own = policy(store)
        if own is None or own.cap_per_window is None:
            continue
        share = own.shift_share if own.shift_share is not None else (
            campaign_policy.shift_share if campaign_policy is not None else None
        )
        if not share:
            continue
        found = alternatives_of(store)
        total = int(own.cap_per_window * share)
        if not found or total <= 0:
            continue
        each, extra = divmod(total, len(found))
        for i, alt in enumerate(found):
            n = each + (1 if i < extra else 0)
            if n:
                plan.setdefault(alt["store_id"], {})[store] = n
    return plan
