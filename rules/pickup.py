"""Pickup queues per store: congestion alerts and store-pickup coupon throttling.

Fed straight from the pickup stream (keyed by store, so one partition holds
a store's whole queue). Waiting customers are those arrived and not yet
picked up, given up (no-show) or cancelled; the wait of a customer is
arrival to pick-up. Pressure is waiting / capacity: above
``throttle_above`` the store's store-pickup campaigns are throttled, under
``reopen_below`` they reopen, and in between nothing changes, so a queue
hovering around one threshold cannot make the coupons flap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from msgspec import Struct

from ctower.rules.alert_book import AlertBook, Finding
from ctower.rules.config import Rules
from ctower.rules.family import RuleFamily
from ctower.rules.rule_state import RuleState
from ctower.schemas.control import CouponSignal, PickupLevel
from ctower.schemas.events import Pickup
from ctower.schemas.master_data import MasterData

_FORGET_MS = 6 * 3_600_000
"""An arrival with no outcome for this long is dropped (its events were lost)."""


class PickupQueue(Struct, kw_only=True, array_like=True):
    waiting: dict[str, int] = {}
    """order_id -> arrival time."""
    waits: list[tuple[int, int]] = []
    """(picked-up time, wait ms) within the wait window."""
    arrivals: list[int] = []
    """Arrival times within the wait window."""
    throttled: bool = False
    last_level: tuple[int, int, int] = (-1, -1, -1)
    """(waiting, capacity, p90 s) last published, to publish changes only."""
    room: bool | None = None
    """Room for more customers, as last told to the campaigns (None: not yet)."""


def p90(values: list[int]) -> int:
    """The nearest-rank 90th percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]


class PickupRules(RuleFamily):
    def __init__(
        self,
        state: RuleState[PickupQueue],
        book: AlertBook,
        rules: Callable[[], Rules],
        master: MasterData | None,
        signal: Callable[[CouponSignal], None],
        level: Callable[[PickupLevel], None],
        room: Callable[[CouponSignal], None] | None = None,
    ) -> None:
        """``room`` takes the ``pickup_room`` signals (none when None): whether a
        store can take the customers of a throttled store nearby."""
        super().__init__()
        self.state = state
        self.book = book
        self.rules = rules
        self.master = master
        self.signal = signal
        self.level = level
        self.room = room

    def apply(self, partition: int, source: str, offset: int, events: Iterable[Pickup]) -> None:
        state = self.state
        if not state.fresh(partition, source, offset):
            return
        max_ts = 0
        for ev in events:
            ts: int = ev.ts  # type: ignore[assignment]
            max_ts = max(max_ts, ts)
            queue = state.get(partition, ev.store_id)
            if queue is None:
                queue = PickupQueue(waiting={}, waits=[], arrivals=[])
            if ev.state == "arrived":
                queue.waiting[ev.order_id] = ts
                queue.arrivals.append(ts)
            elif ev.state == "picked_up":
                arrived = queue.waiting.pop(ev.order_id, None)
                if arrived is not None:
                    queue.waits.append((ts, max(0, ts - arrived)))
            elif ev.state in ("no_show", "cancelled"):
                queue.waiting.pop(ev.order_id, None)
            else:
                continue
            state.put(partition, ev.store_id, queue)
            self.touch(partition, ev.store_id)
        state.applied(partition, source, offset, max_ts)
        self.evaluate_if_time_passed(partition)

    def tick(self) -> None:
        """Time passes: waits leave the window, forgotten arrivals expire."""
        for partition in self.state.partitions():
            now = self.state.now(partition)
            if not now:
                continue
            for store_id, queue in self.state.items(partition):
                if queue.waiting or queue.waits or queue.throttled or queue.arrivals:
                    self.evaluate(partition, store_id, now)
            self.book.expire(partition, now)

    def capacity(self, store_id: str) -> int:
        store = self.master.store_by_id.get(store_id) if self.master else None
        if store is not None and store.pickup_capacity > 0:
            return store.pickup_capacity
        return self.rules().pickup.default_capacity

    def region(self, store_id: str) -> str | None:
        return self.master.region_of(store_id) if self.master else None

    def evaluate(self, partition: int, store_id: str, now: int) -> None:
        rules = self.rules().pickup
        queue = self.state.get(partition, store_id)
        if queue is None:
            return
        horizon = now - int(rules.wait_window_minutes * 60_000)
        changed = False
        if queue.waits and queue.waits[0][0] < horizon:
            queue.waits = [w for w in queue.waits if w[0] >= horizon]
            changed = True
        if queue.arrivals and queue.arrivals[0] < horizon:
            queue.arrivals = [a for a in queue.arrivals if a >= horizon]
            changed = True
        stale = [o for o, t in queue.waiting.items() if t < now - _FORGET_MS]
        for order_id in stale:
            del queue.waiting[order_id]
            changed = True
        waiting = len(queue.waiting)
        capacity = self.capacity(store_id)
        pressure = waiting / capacity
        p90_ms = p90([w for _, w in queue.waits]) if len(queue.waits) >= rules.min_waits else None
        region = self.region(store_id)
        window = {"window_start": horizon, "window_end": now}

        over_capacity = waiting > capacity
        slow = p90_ms is not None and p90_ms > rules.wait_p90_minutes * 60_000
        evidence = {
            **window,
            "store_id": store_id,
            "waiting": waiting,
            "capacity": capacity,
            "pressure": round(pressure, 3),
            "p90_wait_min": round(p90_ms / 60_000, 1) if p90_ms is not None else None,
            "threshold_min": rules.wait_p90_minutes,
            "window_minutes": rules.wait_window_minutes,
            "pickups_in_window": len(queue.waits),
            "reason": "over_capacity" if over_capacity else "slow" if slow else None,
        }
        key = f"pickup_congestion:{store_id}"
        if over_capacity or slow:
            self.book.hold(
                partition,
                key,
                Finding(
                    kind="pickup_congestion",
                    severity="critical" if over_capacity and slow else "warning",
                    evidence=evidence,
                    action={"kind": "pickup"},
                    region=region,
                    store_id=store_id,
                ),
                now,
            )
        else:
            self.book.clear(partition, key, now, {"waiting": waiting, "p90_wait_min":
                                                 evidence["p90_wait_min"]})

        throttle = queue.throttled
        if not throttle and pressure > rules.throttle_above:
            throttle = True
        elif throttle and pressure < rules.reopen_below:
            throttle = False
        if throttle != queue.throttled:
            queue.throttled = throttle
            changed = True
            self._signal(store_id, throttle, pressure, waiting, capacity, now)

        if self.room is not None:
            # room under room_below, no room again from reopen_below: a hysteresis
            # band, so a queue around one threshold does not flood the campaigns
            room = pressure < (rules.reopen_below if queue.room else rules.room_below)
            if room != queue.room:
                queue.room = room
                changed = True
                self._room(store_id, room, pressure, waiting, capacity, now)

        level = (waiting, capacity, round(p90_ms / 1000) if p90_ms is not None else -1)
        if level != queue.last_level:
            queue.last_level = level
            changed = True
            self.level(
                PickupLevel(
                    store_id=store_id,
                    region=region or "",
                    waiting=waiting,
                    capacity=capacity,
                    pressure=round(pressure, 3),
                    p90_wait_s=round(p90_ms / 1000, 1) if p90_ms is not None else None,
                    arrivals_15m=len(queue.arrivals),
                    served_15m=len(queue.waits),
                    throttled=throttle,
                    ts=now,
                )
            )
        if changed:
            self.state.put(partition, store_id, queue)

    def _signal(
        self,
        store_id: str,
        active: bool,
        pressure: float,
        waiting: int,
        capacity: int,
        now: int,
    ) -> None:
        if self.master is None:
            return
        pickup = self.rules().pickup
        evidence = {
            "pressure": round(pressure, 3),
            "waiting": waiting,
            "capacity": capacity,
            "threshold": pickup.throttle_above if active else pickup.reopen_below,
            "window_end": now,
        }
        for campaign in self.master.campaigns_at(store_id):
            if campaign.kind != "store_pickup":
                continue
            self.signal(
                CouponSignal(
                    campaign_id=campaign.campaign_id,
                    store_id=store_id,
                    cause="pickup_pressure",
                    active=active,
                    evidence=evidence,
                    ts=now,
                )
            )

    def _room(
        self, store_id: str, room: bool, pressure: float, waiting: int, capacity: int, now: int
    ) -> None:
        if self.master is None or self.room is None:
            return
        pickup = self.rules().pickup
        evidence = {
            "pressure": round(pressure, 3),
            "waiting": waiting,
            "capacity": capacity,
            "threshold": pickup.room_below if room else pickup.reopen_below,
            "window_end": now,
        }
        for campaign in self.master.campaigns_at(store_id):
            if campaign.kind == "store_pickup":
                self.room(
                    CouponSignal(
                        campaign_id=campaign.campaign_id,
                        store_id=store_id,
                        cause="pickup_room",
                        active=room,
                        evidence=evidence,
                        ts=now,
                    )
                )
