"""Shopping guides (导购): last-mile delivery nodes of a store.

A guide delivers the store's nearby orders (about 3 km around it), at most
a daily cap (20 unless the master data says otherwise). A guide delivery is
a shipment with ``origin_type`` ``guide``: ``origin_id`` is the store, and
``guide_id`` the guide once one took it; until then the order waits for a
guide. Two things go wrong, and neither shows in the ``GUIDE`` lane of the
region: a store runs out of guides at its peak (shifts end, guides reach
their cap or drop out), and one guide's deliveries run late.

- ``guide_capacity``: at least ``waiting_min`` of a store's orders have
  waited for a guide longer than ``wait_minutes``. Waits count within the
  guides' working hours only (``hours_start`` to ``hours_end``, local
  time): an order placed at 23:00 waits for the morning shift by design.
- ``guide_late``: at least ``late_min`` of a guide's deliveries in the last
  ``late_window_minutes`` arrived more than ``late_grace_minutes`` after
  their ETA, or are still out that late.

The family rides on the lane events (``lanes.py``): guide deliveries travel
on their carrier's lane, ``GUIDE|<region>``, so one partition sees all the
guide deliveries of a region's stores, and the same (source, offset) marks
recognise a replayed message. Per guide and local day it keeps deliveries
(against the cap), on time, late and failed; per store the open guide
deliveries. Memory is bounded by the day: finished deliveries are forgotten
after ``_KEEP_DONE_MS``, open ones without news after ``_FORGET_MS``, a
guide's figures when the day after them is over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

from msgspec import Struct

from ctower.rules.alert_book import AlertBook, Finding
from ctower.rules.config import GuideRules, Rules
from ctower.rules.family import RuleFamily
from ctower.rules.lanes import LaneEvent
from ctower.rules.rule_state import RuleState
from ctower.schemas.events import MINUTE
from ctower.schemas.master_data import MasterData

HOUR = 60 * MINUTE
DAY = 24 * HOUR
LOCAL_OFFSET_MS = 8 * HOUR
"""Asia/Shanghai, which keeps no summer time: a guide's day is the store's day."""
_FORGET_MS = DAY
"""An open delivery without an update for a day is dropped (its events were lost)."""
_KEEP_DONE_MS = 26 * HOUR
"""Finished deliveries are remembered this long, so a repeat of one is not counted twice."""
_FINISHED = ("delivered", "failed", "returned")


def local_day(ts: int) -> int:
    """Days since the epoch, in local time."""
    return (ts + LOCAL_OFFSET_MS) // DAY


def local_hour(ts: int) -> int:
    return (ts + LOCAL_OFFSET_MS) % DAY // HOUR


class GuideDay(Struct, array_like=True):
    """One guide's figures of one local day. New fields go at the end."""

    day: int = 0
    deliveries: int = 0
    """Delivered, on time or not: what counts against the daily cap."""
    on_time: int = 0
    late: int = 0
    """Delivered after the ETA (any lateness; the alert asks for more than the grace)."""
    failed: int = 0
    late_times: list[int] = []
    """When deliveries arrived later than the grace, within the late window."""


class GuideStore(Struct, kw_only=True, array_like=True):
    """A store's guide deliveries. New fields go at the end."""

    open: dict[str, tuple[str, str, int, int, int]] = {}
    """shipment_id -> (guide_id or "", status, created at, eta or 0, last update)."""
    guides: dict[str, GuideDay] = {}
    done: dict[str, int] = {}
    """Finished shipment -> when: a repeat of it is not news."""
    region: str = ""


class GuideRulesFamily(RuleFamily):
    def __init__(
        self,
        state: RuleState[GuideStore],
        book: AlertBook,
        rules: Callable[[], Rules],
        master: MasterData | None,
    ) -> None:
        super().__init__()
        self.state = state
        self.book = book
        self.rules = rules
        self.master = master

    def apply(self, partition: int, events: Iterable[LaneEvent]) -> None:
        """Apply one array of lane events; only guide deliveries matter here."""
        state = self.state
        evaluate = partial(self.evaluate_if_time_passed, partition)
        grace = int(self.rules().guides.late_grace_minutes * MINUTE)
        for ev in state.fresh_items(partition, events, evaluate):
            if not ev.store:
                continue
            key = f"store:{ev.store}"
            store = state.get(partition, key) or GuideStore()
            if self._event(store, ev, grace):
                store.region = ev.region
                state.put(partition, key, store)
                self.touch(partition, key)
        evaluate()

    @staticmethod
    def _event(store: GuideStore, ev: LaneEvent, grace: int) -> bool:
        """Apply one update; False when it changes nothing (a repeat, a straggler)."""
        sid, status, ts = ev.shipment_id, ev.status, ev.ts
        if sid in store.done:
            return False
        before = store.open.get(sid)
        guide = ev.guide_id or (before[0] if before else "")
        created = before[2] if before else ts
        eta = ev.eta or (before[3] if before else 0)
        if status == "created":
            if before is not None:
                return False
            store.open[sid] = (guide, status, ts, eta, ts)
            return True
        if before is not None and before[1] == status and before[4] == ts:
            return False  # the same update twice (at-least-once producers)
        if status not in _FINISHED:
            store.open[sid] = (guide, status, created, eta, max(ts, before[4] if before else 0))
            return True
        store.open.pop(sid, None)
        store.done[sid] = ts
        if not guide or status == "returned":
            return True
        day = GuideRulesFamily._day(store, guide, ts)
        if status == "failed":
            day.failed += 1
        else:
            day.deliveries += 1
            if eta and ts > eta:
                day.late += 1
                if ts > eta + grace:
                    day.late_times.append(ts)
            else:
                day.on_time += 1
        return True

    @staticmethod
    def _day(store: GuideStore, guide: str, ts: int) -> GuideDay:
        """The guide's figures of the day of ``ts`` (a new day starts from zero)."""
        today = local_day(ts)
        day = store.guides.get(guide)
        if day is None or day.day < today:
            late_times = day.late_times if day is not None else []
            day = store.guides[guide] = GuideDay(today, late_times=late_times)
        return day

    def pending(self) -> Iterable[int]:
        """Every partition held: a wait crosses its threshold without an event."""
        return sorted(set(super().pending()) | set(self.state.partitions()))

    def due(self, partition: int, now: int) -> set[str]:
        """The stores touched, and those where time alone may have made an order wait
        too long or a delivery run late: judged at the second it happens, not at the
        next tick (a replay moves event time by minutes between two ticks)."""
        keys = super().due(partition, now)
        rules = self.rules().guides
        limit = int(rules.wait_minutes * MINUTE)
        grace = int(rules.late_grace_minutes * MINUTE)
        for key, store in self.state.items(partition):
            if key in keys:
                continue
            for guide, status, created, eta, _ in store.open.values():
                if (status == "created" and now - created > limit) or (
                        guide and eta and now > eta + grace):
                    keys.add(key)
                    break
        return keys

    def tick(self) -> None:
        """Waits grow and deliveries run late with time alone: look at every store."""
        for partition in self.state.partitions():
            now = self.state.now(partition)
            if not now:
                continue
            for key, _ in self.state.items(partition):
                self.evaluate(partition, key, now)
            self.book.expire(partition, now)

    # ---------------------------------------------------------------- judging
    def daily_cap(self, guide_id: str) -> int:
        info = self.master.guide_by_id.get(guide_id) if self.master else None
        return info.daily_cap if info is not None else self.rules().guides.default_daily_cap

    def roster(self, store_id: str, store: GuideStore, now: int) -> dict[str, object]:
        """Guides of the store and how many can still take a delivery now: on shift
        (master data; a guide it does not know, always) and under the daily cap."""
        today = local_day(now)
        hour = local_hour(now)
        known = self.master.guides_at(store_id) if self.master else []
        names = {g.guide_id for g in known} | set(store.guides)
        at_cap = available = on_shift = 0
        for guide_id in sorted(names):
            info = self.master.guide_by_id.get(guide_id) if self.master else None
            if info is not None and not info.shift_start_hour <= hour < info.shift_end_hour:
                continue
            on_shift += 1
            day = store.guides.get(guide_id)
            done = day.deliveries if day is not None and day.day == today else 0
            if done >= self.daily_cap(guide_id):
                at_cap += 1
            else:
                available += 1
        return {"guides": len(names), "on_shift": on_shift, "at_cap": at_cap,
                "available": available}

    def evaluate(self, partition: int, key: str, now: int) -> None:
        store = self.state.get(partition, key)
        if store is None:
            return
        rules = self.rules().guides
        store_id = key[6:]
        if self._trim(store, now, rules):
            if not store.open and not store.guides and not store.done:
                self.state.delete(partition, key)
            else:
                self.state.touch(partition, key)
        region = store.region or (self.master.region_of(store_id) if self.master else None)
        roster = self.roster(store_id, store, now)
        self._capacity(partition, store_id, store, now, rules, region, roster)
        self._late(partition, store_id, store, now, rules, region)

    @staticmethod
    def _trim(store: GuideStore, now: int, rules: GuideRules) -> bool:
        changed = False
        gone = [s for s, o in store.open.items() if o[4] < now - _FORGET_MS]
        for sid in gone:
            del store.open[sid]
        done = {s: t for s, t in store.done.items() if t >= now - _KEEP_DONE_MS}
        if len(done) != len(store.done):
            store.done = done
            changed = True
        window = now - int(rules.late_window_minutes * MINUTE)
        today = local_day(now)
        for guide_id, day in list(store.guides.items()):
            if day.late_times and day.late_times[0] < window:
                day.late_times = [t for t in day.late_times if t >= window]
                changed = True
            if day.day < today - 1 and not day.late_times:
                del store.guides[guide_id]
                changed = True
        return changed or bool(gone)

    def waits(self, store: GuideStore, now: int, rules: GuideRules) -> list[int]:
        """How long each order not taken by a guide has waited, within the working hours."""
        hour = local_hour(now)
        if not rules.hours_start <= hour < rules.hours_end:
            return []
        opened = now - (now + LOCAL_OFFSET_MS) % DAY + rules.hours_start * HOUR
        return sorted((now - max(created, opened) for _, status, created, _, _
                       in store.open.values() if status == "created"), reverse=True)

    def _capacity(self, partition: int, store_id: str, store: GuideStore, now: int,
                  rules: GuideRules, region: str | None, roster: dict[str, object]) -> None:
        waits = self.waits(store, now, rules)
        limit = rules.wait_minutes * MINUTE
        over = [w for w in waits if w > limit]
        key = f"guide_capacity:{store_id}"
        if len(over) >= rules.waiting_min:
            self.book.hold(partition, key, Finding(
                kind="guide_capacity",
                severity="critical" if roster["available"] == 0 else "warning",
                evidence={
                    "store_id": store_id, "waiting": len(over), "waiting_all": len(waits),
                    "oldest_wait_min": round(over[0] / MINUTE, 1),
                    "wait_minutes": rules.wait_minutes, "threshold": rules.waiting_min,
                    "open": len(store.open), **roster, "window_end": now,
                },
                action={"kind": "guides"},
                region=region,
                store_id=store_id,
            ), now)
        elif not over:
            self.book.clear(partition, key, now, {"waiting": 0, "waiting_all": len(waits)})

    def _late(self, partition: int, store_id: str, store: GuideStore, now: int,
              rules: GuideRules, region: str | None) -> None:
        grace = int(rules.late_grace_minutes * MINUTE)
        running: dict[str, list[str]] = {}
        for sid, (guide, status, _, eta, _) in store.open.items():
            if guide and eta and now > eta + grace and status != "created":
                running.setdefault(guide, []).append(sid)
        today = local_day(now)
        for guide_id in sorted(set(store.guides) | set(running)):
            day = store.guides.get(guide_id)
            arrived = len(day.late_times) if day is not None else 0
            out = sorted(running.get(guide_id, []))
            late = arrived + len(out)
            key = f"guide_late:{guide_id}"
            if late >= rules.late_min:
                current = day if day is not None and day.day == today else None
                delivered = current.deliveries if current is not None else 0
                on_time = current.on_time if current is not None else 0
                self.book.hold(partition, key, Finding(
                    kind="guide_late",
                    severity="warning",
                    evidence={
                        "store_id": store_id, "guide_id": guide_id, "late": late,
                        "arrived_late": arrived, "still_out": len(out), "examples": out[:5],
                        "threshold": rules.late_min, "grace_minutes": rules.late_grace_minutes,
                        "window_minutes": rules.late_window_minutes,
                        "window_start": now - int(rules.late_window_minutes * MINUTE),
                        "window_end": now, "deliveries": delivered,
                        "daily_cap": self.daily_cap(guide_id),
                        "on_time_pct": round(100 * on_time / delivered, 1) if delivered else None,
                        "failed": current.failed if current is not None else 0,
                    },
                    action={"kind": "guide", "guide_id": guide_id},
                    region=region,
                    store_id=store_id,
                ), now)
            elif self.book.is_open(partition, key):
                self.book.clear(partition, key, now, {"late": late})
