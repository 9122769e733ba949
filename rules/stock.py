"""Stock per (location, SKU): restock and stock-out alerts, demand spikes, and
pausing campaigns whose SKUs run short at a store.

The inputs come from three streams keyed three ways (inventory by location,
orders and scans by store, and a warehouse-direct order takes stock from the
warehouse, not the store), so the worker re-keys them by SKU onto the
internal ``stock-moves`` topic (:class:`StockMove`). One partition then holds
every location of a SKU: on hand, velocity and scans are exact, and the
transfer suggestion can look at the region's warehouse and the nearest
stores without asking anyone.

On hand follows ``stock_on_hand_v``: the last snapshot (a count) plus the
movements at or after its millisecond (a count is taken before anything
booked at the same time). Velocity is units sold in the last hour, hopping
by 5 minutes. Cover is on hand / velocity.

Everything is judged *as of the rules' event clock*, not as of what has
arrived. The three sources are drained at different speeds (a batch of
inventory events can be half an hour of event time ahead of the scans), so a
(location, SKU) often holds movements from after "now": counting them would
raise a stock-out minutes before the stock ran out, or clear it when a
restock that has not happened yet arrives early. Moves ahead of the clock
are kept, and the key is looked at again when the clock reaches them.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_right, insort
from collections.abc import Callable, Iterable
from itertools import groupby, islice, repeat
from operator import attrgetter, itemgetter

from msgspec import Struct

from ctower.rules.actions import ActionBook
from ctower.rules.alert_book import AlertBook, Finding
from ctower.rules.config import Rules, StockRules
from ctower.rules.family import RuleFamily
from ctower.rules.rule_state import RuleState
from ctower.schemas.actions import ActionOrder
from ctower.schemas.control import CouponSignal, StockLevel
from ctower.schemas.events import MINUTE
from ctower.schemas.master_data import MasterData

HOP = 5 * MINUTE
_KEEP_MINUTES = 70
"""Minute buckets kept: the velocity hour and the demand baseline, plus a margin."""
_MAX_DELTAS = 64
"""Movements kept one by one; beyond, those older than _FOLD_AGE_MS go into the base.
Small: on hand is summed over them at every judgement, and the item is rewritten
to the changelog with all of them (500 made both the rules' largest costs)."""
_FOLD_AGE_MS = _KEEP_MINUTES * MINUTE
"""Only movements this far behind the clock are folded: the clock never goes back that far."""
_MAX_SCAN_MARKS = 2_000

_MINUTES: dict[int, int] = {}
"""One int object per minute of event time, shared by every key's buckets. Each
move computed its own, and the scans and sales dicts of a 1M-event drain held
about 210,000 equal ints (6.7 MB, by tracemalloc in an in-process replay)."""
_MINUTES_KEPT = 100_000
"""Past this many minutes (about 70 days) the table starts again."""


def _minute_of(ts: int) -> int:
    minute = ts - ts % MINUTE
    shared = _MINUTES.get(minute)
    if shared is None:
        if len(_MINUTES) >= _MINUTES_KEPT:
            _MINUTES.clear()
        shared = _MINUTES[minute] = minute
    return shared


_qty = itemgetter(1)
_message_of = attrgetter("source", "offset")
_ZEROS = repeat(0)
"""The default of every ``dict.get`` in ``map(scans.get, minutes, _ZEROS)``."""

INBOUND = frozenset({"receipt", "transfer_in", "adjustment"})
OUTBOUND = frozenset({"transfer_out", "sale"})


class StockMove(Struct, array_like=True):
    """One effect on a (location, SKU), re-keyed by SKU; ``qty`` is a count
    for ``scan``. ``source``/``offset`` name the message it came from."""

    location_id: str
    sku: str
    kind: str
    qty: int
    ts: int
    source: str
    offset: int


class StockItem(Struct, kw_only=True, array_like=True):
    """One (location, SKU). Persisted as an array: new fields go at the end."""

    known: bool = False
    """A snapshot has been seen: before one, on hand is not judged."""
    base: int = 0
    base_ts: int = 0
    """The snapshot's time; ``base`` also holds movements folded in since."""
    deltas: list[tuple[int, int]] = []
    """(ts, signed qty) at or after ``base_ts``, sorted by ts; some may be ahead of
    the clock."""
    sales: dict[int, int] = {}
    """Minute -> units sold."""
    scans: dict[int, int] = {}
    """Minute -> scans."""
    low_cover: bool = False
    last_level: tuple[int, int] = (-1, -1)
    zero_since: int = 0
    """When ``base`` (the count and what was folded into it) last reached zero, or 0
    while it is positive: the start of the zero spell :meth:`level_at` continues."""
    scan_marks: list[tuple[int, int]] = []
    """(ts, n) of each scan move of the stock-out window, as forwarded: n scans of
    one minute, the newest at ts. Minute buckets alone could not tell which scans
    of the minute the stock ran out in came after it."""

    def on_hand(self, at: int | None = None) -> int:
        """On hand as of event time ``at`` (None: with every movement received)."""
        deltas = self.deltas
        if not deltas:
            return self.base
        if at is None or deltas[-1][0] <= at:  # sorted: none ahead of ``at`` (the usual case)
            return self.base + sum(map(_qty, deltas))
        # draining a backlog, most keys hold movements from ahead of the clock
        return self.base + sum(map(_qty, islice(deltas, bisect_right(deltas, (at, math.inf)))))

    def known_at(self, at: int) -> bool:
        return self.known and self.base_ts <= at

    def level_at(self, at: int) -> tuple[int, int]:
        """(on hand, when it last reached zero or 0 if positive), as of ``at``.

        Movements of one millisecond count together: a sale and the receipt
        booked with it must not make a zero that never was.
        """
        level = self.base
        since = (self.zero_since or self.base_ts) if level <= 0 else 0
        deltas = self.deltas
        n = len(deltas)
        i = 0
        while i < n and deltas[i][0] <= at:
            ts = deltas[i][0]
            while i < n and deltas[i][0] == ts:
                level += deltas[i][1]
                i += 1
            if level > 0:
                since = 0
            elif not since:
                since = ts
        return level, since

    def fold(self, before: int) -> None:
        """Move the oldest movements (up to ``before``) into ``base``, keeping the
        zero spell they end in."""
        if len(self.deltas) <= _MAX_DELTAS:
            return
        cut = 0
        while cut < len(self.deltas) - _MAX_DELTAS // 2 and self.deltas[cut][0] <= before:
            cut += 1
        if not cut:
            return
        while cut < len(self.deltas) and self.deltas[cut][0] == self.deltas[cut - 1][0]:
            cut += 1  # never split one millisecond's movements
        last = self.deltas[cut - 1][0]
        level, since = self.level_at(last)
        self.base, self.zero_since = level, since
        del self.deltas[:cut]


class AheadOfClock:
    """Moves that reached the rules ahead of their event clock, filed by the
    second of event time they come due in.

    Draining a backlog, nearly every move arrives ahead of the clock (the
    slowest of a dozen sources). Kept on one heap of (ts, key, is a scan),
    each move cost a push and a pop of about twenty tuple comparisons each;
    here a move is an append to its second's list, and the heap holds one
    entry per second.
    """

    __slots__ = ("_buckets", "_seconds")

    def __init__(self) -> None:
        self._buckets: dict[int, list[tuple[int, str, bool]]] = {}
        self._seconds: list[int] = []

    def add(self, ts: int, key: str, scan: bool) -> None:
        second = ts // 1000
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = []
            heapq.heappush(self._seconds, second)
        bucket.append((ts, key, scan))

    def take(self, now: int) -> list[tuple[int, str, bool]]:
        """The moves at or before ``now``, taken away, in no particular order."""
        seconds, buckets = self._seconds, self._buckets
        last = now // 1000
        taken: list[tuple[int, str, bool]] = []
        while seconds and seconds[0] <= last:
            second = seconds[0]
            bucket = buckets[second]
            if second == last:  # the clock's own second: only what is not after it
                later = [entry for entry in bucket if entry[0] > now]
                if later:
                    taken.extend(entry for entry in bucket if entry[0] <= now)
                    buckets[second] = later
                    break
            heapq.heappop(seconds)
            del buckets[second]
            taken.extend(bucket)
        return taken


def location_of(key: str) -> str:
    return key.split("|", 1)[0]


class StockRulesEngine(RuleFamily):
    def __init__(
        self,
        state: RuleState[StockItem],
        book: AlertBook,
        rules: Callable[[], Rules],
        master: MasterData | None,
        signal: Callable[[CouponSignal], None],
        level: Callable[[StockLevel], None],
        actions: ActionBook | None = None,
    ) -> None:
        """``actions``: where transfer and pre-pack orders go (none issued when None)."""
        super().__init__()
        self.state = state
        self.book = book
        self.rules = rules
        self.master = master
        self.signal = signal
        self.level = level
        self.actions = actions
        self._ahead: dict[int, AheadOfClock] = {}
        """Per partition, (ts, key, is a scan) of moves that arrived ahead of the clock:
        the key is judged again when the clock reaches ts (a scan's only if it matters
        then, as for a scan that arrives on time). Not persisted: the moves are in the
        key's state, so after a restart they count from the key's next evaluation."""
        self._trimmed: dict[str, int] = {}
        """Key -> the event minute it was last trimmed at (see :meth:`_trim`)."""
        self._units: dict[str, tuple[int, int, int]] = {}
        """Key -> (hop end, velocity window, units sold in it): the velocity changes
        only when the hop does (about every 5 minutes of event time) or a sale
        from before the hop's end comes late, not with each judgement."""
        self.judgements = 0
        self._campaigns_by_sku: dict[str, list[str]] = {}
        if master is not None:
            for campaign in master.campaigns:
                for sku in campaign.skus:
                    self._campaigns_by_sku.setdefault(sku, []).append(campaign.campaign_id)

    # ----------------------------------------------------------------- input
    def apply(self, partition: int, moves: Iterable[StockMove]) -> None:
        """Apply one array of moves (whole source messages, in source order).

        Rules are evaluated as event time passes inside the array, not only
        at its end: a replay of an hour of history in one batch must still
        alert at the minute the stock ran out.
        """
        state = self.state
        now = state.now(partition)
        part = state.part(partition)
        entities, dirty = part.entities, part.dirty
        min_scans = self.rules().demand.min_scans
        units = self._units
        move_into = self._move
        # whole source messages at a time (what RuleState.fresh_items does for
        # the other families), inlined: every move of the worker comes here
        for (source, offset), group in groupby(moves, _message_of):
            if not state.fresh(partition, source, offset):
                continue
            newest = 0
            ahead = self._ahead.get(partition)
            if ahead is None:
                ahead = self._ahead[partition] = AheadOfClock()
            file_ahead = ahead.add
            for move in group:
                ts, kind = move.ts, move.kind
                if ts > newest:
                    newest = ts
                key = f"{move.location_id}|{move.sku}"
                item = entities.get(key)
                if item is None:
                    item = StockItem(deltas=[], sales={}, scans={}, scan_marks=[])
                    entities[key] = item
                move_into(item, move)
                if kind == "sale":
                    cached = units.get(key)
                    if cached is not None and ts - ts % MINUTE < cached[0]:
                        del units[key]  # a late sale inside the velocity window
                dirty.add(key)
                if ts > now:
                    file_ahead(ts, key, kind == "scan")
                elif kind != "scan" or self._scan_matters(partition, key, item, now, min_scans):
                    self.touch(partition, key)
            state.applied(partition, source, offset, newest)
            now = self.evaluate_if_time_passed(partition)

    def _scan_matters(
        self, partition: int, key: str, item: StockItem, now: int, min_scans: int
    ) -> bool:
        """Whether a scan can change what the rules say of a key.

        Scans are half the moves, and most change nothing: on hand and cover do
        not move with them. They count towards a stock-out only while the shelf
        is empty (on hand at the last judgement; a sale or a receipt since is a
        move that touches the key itself) and towards a demand spike only past
        ``min_scans`` in five minutes, or while one is open.
        """
        level = item.last_level
        if level == (-1, -1) or (item.known and level[0] <= 0):
            return True  # never judged yet, or the shelf was empty
        after = now - HOP - MINUTE
        recent = sum(map(item.scans.get, range(after - after % MINUTE + MINUTE, now + 1, MINUTE),
                         _ZEROS))
        return recent >= min_scans or self.book.is_open(partition, f"demand_spike:{key}")

    def due(self, partition: int, now: int) -> set[str]:
        """The keys touched, and those whose moves from ahead the clock has reached.

        A scan from ahead is asked :meth:`_scan_matters` once the clock reaches it,
        as one that arrived on time is on arrival. Draining a backlog, nearly every
        move arrives ahead of the clock (the slowest of a dozen sources), and judging
        a key for each scan so was most of the rules' work: 163k judgements for 238k
        moves of 300k events, against 300 for the keys touched on time."""
        keys = super().due(partition, now)
        ahead = self._ahead.get(partition)
        came = ahead.take(now) if ahead is not None else None
        if not came:
            return keys
        unmoved: set[str] = set()  # keys whose scans do not matter now: asked once
        entities = self.state.part(partition).entities
        min_scans = self.rules().demand.min_scans
        for _, key, scan in came:
            if scan and key not in keys:
                if key in unmoved:
                    continue
                item = entities.get(key)
                if item is None or not self._scan_matters(partition, key, item, now, min_scans):
                    unmoved.add(key)
                    continue
            keys.add(key)
        return keys

    def pending(self) -> list[int]:
        return list(dict.fromkeys([*super().pending(), *self._ahead]))

    def forget(self, partition: int) -> None:
        super().forget(partition)
        self._ahead.pop(partition, None)
        self._trimmed.clear()  # only saves work: rebuilt as keys are judged
        self._units.clear()
        if self.actions is not None:
            self.actions.forget(partition)

    @staticmethod
    def _move(item: StockItem, move: StockMove) -> None:
        kind, ts, qty = move.kind, move.ts, move.qty
        minute = _minute_of(ts)
        if kind == "scan":
            item.scans[minute] = item.scans.get(minute, 0) + qty
            item.scan_marks.append((ts, qty))
            if len(item.scan_marks) > _MAX_SCAN_MARKS:
                item.scan_marks.sort()
                del item.scan_marks[: len(item.scan_marks) - _MAX_SCAN_MARKS]
            return
        if kind == "sale":
            item.sales[minute] = item.sales.get(minute, 0) + qty
        if kind == "snapshot":
            if item.known and ts < item.base_ts:
                return  # an older count arriving late: the newer one stands
            item.known, item.base, item.base_ts = True, qty, ts
            item.zero_since = ts if qty <= 0 else 0
            # Movements at the count's own millisecond were booked after it, as
            # stock_on_hand_v has it (ts >= the snapshot's), whichever arrived first.
            item.deltas = [d for d in item.deltas if d[0] >= ts]
            return
        if item.known and ts < item.base_ts:
            return  # inside the count
        insort(item.deltas, (ts, qty if kind in INBOUND else -qty))

    # ------------------------------------------------------------ evaluation
    def tick(self) -> None:
        """Time passes: scans leave their window, sales leave the velocity hour, and
        moves that arrived ahead of the clock come due."""
        for partition in self.state.partitions():
            now = self.state.now(partition)
            if not now:
                continue
            due = self.due(partition, now)
            watch: set[str] = set()
            for alert_key, entry in self.book.state.items(partition):
                if entry.open is not None:  # "restock:loc|sku" and the like
                    watch.add(alert_key.split(":", 1)[1])
            # What time alone changes in a judgement moves by the minute (the scan
            # and sales buckets, the velocity's 5-minute hop): a key with an open
            # alert or a paused campaign is judged again once per minute of event
            # time, not at every tick (what moves touched is in ``due``).
            minute = now - now % MINUTE
            judged = self._trimmed
            for key, item in self.state.items(partition):
                if key in due or (
                    (item.low_cover or key in watch) and judged.get(key) != minute
                ):
                    self.evaluate(partition, key, now)
            if self.actions is not None:
                self.actions.tick(partition, now)
            self.book.expire(partition, now)

    def measures(
        self, key: str, item: StockItem, now: int, rules: StockRules
    ) -> tuple[int, float, float | None]:
        """(on hand, velocity per hour, cover hours or None), as of ``now``."""
        hop_end = now - now % HOP
        window = rules.velocity_window_minutes
        cached = self._units.get(key)
        if cached is not None and cached[0] == hop_end and cached[1] == window:
            units = cached[2]
        else:
            start = hop_end - window * MINUTE
            units = sum(u for m, u in item.sales.items() if start <= m < hop_end)
            self._units[key] = (hop_end, window, units)
        velocity = units * 60 / rules.velocity_window_minutes
        on_hand = item.on_hand(now)
        cover = None
        if units >= rules.min_units_per_window and velocity > 0:
            cover = max(0.0, on_hand) / velocity
        return on_hand, velocity, cover

    def evaluate(self, partition: int, key: str, now: int) -> None:
        """Judge one (location, SKU) as of event time ``now``.

        The hot path of the rules (a key is judged about once per move it gets),
        so the usual case - stock on hand, no alert open - computes only what
        decides it: the zero spell and the scans since run when the shelf is
        empty, the evidence is built only for an alert that opens, and an alert
        is resolved only if one is open.
        """
        item = self.state.get(partition, key)
        if item is None:
            return
        self.judgements += 1
        all_rules = self.rules()
        rules = all_rules.stock
        location_id, sku = key.split("|", 1)
        scan_window = int(rules.stockout_window_minutes * MINUTE)
        self._trim(key, item, now, scan_window)
        item.fold(now - _FOLD_AGE_MS)
        known = item.known_at(now)
        on_hand, velocity, cover = self.measures(key, item, now, rules)
        master = self.master
        is_store = master is None or location_id in master.store_by_id
        region = master.region_of(location_id) if master else None
        book = self.book
        stock_out_key = f"stock_out:{key}"
        zero_since = recent_scans = 0
        stock_out = False
        if known and on_hand <= 0:
            _, zero_since = item.level_at(now)
            recent_scans = self.scans_while_zero(item, zero_since, now, scan_window)
            # Once raised, a stock-out lasts until stock is back: shoppers giving up on
            # the empty shelf for a quarter of an hour does not refill it, and resolving
            # then would only page the same shelf again at the next scans.
            stock_out = recent_scans >= rules.stockout_scans or book.is_open(
                partition, stock_out_key
            )
        restock = known and not stock_out and cover is not None and cover < rules.lead_time_hours
        cover_h = round(cover, 2) if cover is not None else None

        def evidence() -> dict[str, object]:
            hop_end = now - now % HOP
            return {
                "window_start": hop_end - rules.velocity_window_minutes * MINUTE,
                "window_end": hop_end,
                "location_id": location_id,
                "sku": sku,
                "on_hand": on_hand,
                "velocity_per_h": round(velocity, 2),
                "cover_h": cover_h,
                "lead_time_h": rules.lead_time_hours,
            }

        action = None
        transfer: dict[str, dict[str, object]] = {}
        if stock_out or restock:
            actions = self.actions
            in_flight = actions.in_flight(partition, key) if actions is not None else 0
            action = self.transfer_source(
                partition, location_id, sku, on_hand, velocity, now, in_flight
            )
            # the suggestion as data too: the action text is for people
            transfer = {"transfer": {k: action[k] for k in ("kind", "source", "qty")}}
            if actions is not None:
                order = self._order(partition, key, stock_out, action, now, rules, {
                    "on_hand": on_hand, "velocity_per_h": round(velocity, 2),
                    "cover_h": round(cover, 2) if cover is not None else None,
                    "target_cover_h": rules.target_cover_hours, "in_flight": in_flight,
                }, region)
                if order is not None:
                    transfer["transfer"]["order_id"] = order.order_id
                    transfer["transfer"]["in_flight"] = in_flight
        scope = {"region": region, "store_id": location_id if is_store else None, "sku": sku}
        if stock_out:
            book.hold(
                partition,
                stock_out_key,
                Finding(
                    kind="stock_out",
                    severity="critical",
                    evidence={
                        **evidence(),
                        **transfer,
                        "scans": recent_scans,
                        "threshold": rules.stockout_scans,
                        "window_minutes": rules.stockout_window_minutes,
                        "window_start": max(now - scan_window, zero_since),
                        "window_end": now,
                        "zero_since": zero_since,
                    },
                    action=action,
                    **scope,
                ),
                now,
            )
        elif book.is_open(partition, stock_out_key):
            book.clear(partition, stock_out_key, now, {"on_hand": on_hand})
        restock_key = f"restock:{key}"
        if restock:
            book.hold(
                partition,
                restock_key,
                Finding(
                    kind="restock",
                    severity="warning",
                    evidence={**evidence(), **transfer, "threshold": rules.lead_time_hours},
                    action=action,
                    **scope,
                ),
                now,
            )
        elif book.is_open(partition, restock_key):
            book.clear(partition, restock_key, now, {"on_hand": on_hand, "cover_h": cover_h})
        if is_store:
            self._demand(partition, key, item, now, all_rules, on_hand, scope)
            self._coupon_cover(item, location_id, sku, on_hand, cover, rules, now, evidence)
        level = (on_hand, round(cover * 10) if cover is not None else -1)
        if level != item.last_level:
            item.last_level = level
            self.level(
                StockLevel(
                    location_id=location_id,
                    sku=sku,
                    region=region or "",
                    on_hand=on_hand,
                    velocity_per_h=round(velocity, 2),
                    cover_h=cover_h,
                    transfer_from=action.get("source") if action else None,  # type: ignore[arg-type]
                    ts=now,
                )
            )
            self.state.touch(partition, key)

    @staticmethod
    def scans_while_zero(item: StockItem, zero_since: int, now: int, window: int) -> int:
        """Scans after the stock ran out (strictly: the buyer of the last unit scanned it
        before paying) and within the window before ``now``.

        A mark is n scans of one minute, the newest at its ts: all n count when
        the whole minute is inside, else only the newest (the others may be
        from before).
        """
        after = max(zero_since + 1, now - window)
        count = 0
        for ts, n in item.scan_marks:
            if after <= ts <= now:
                count += n if ts - ts % MINUTE >= after else 1
        return count

    def _trim(self, key: str, item: StockItem, now: int, scan_window: int) -> None:
        """Drop minutes and scan marks that no rule looks at any more: at most once
        per minute of event time per key (every reader filters by its window, so
        trimming later changes no figure, only the work). What it records, the
        minute each key was last judged in, also spares :meth:`tick` judging a
        key again within the minute."""
        minute = _minute_of(now)
        if self._trimmed.get(key) == minute:
            return
        self._trimmed[key] = minute
        horizon = now - _KEEP_MINUTES * MINUTE
        for buckets in (item.sales, item.scans):
            # minutes come in nearly in order: the first one says whether any is old
            # (a late one behind it waits until the first is old too)
            if buckets and next(iter(buckets)) < horizon:
                for old in [m for m in buckets if m < horizon]:
                    del buckets[old]
        marks_from = now - scan_window
        marks = item.scan_marks
        if marks and marks[0][0] < marks_from:
            # the old ones at the front (marks come nearly in order): a late one
            # behind a newer mark goes when the front reaches it
            cut, n = 1, len(marks)
            while cut < n and marks[cut][0] < marks_from:
                cut += 1
            del marks[:cut]

    def _demand(
        self,
        partition: int,
        key: str,
        item: StockItem,
        now: int,
        all_rules: Rules,
        on_hand: int,
        scope: dict[str, str | None],
    ) -> None:
        rules = all_rules.demand
        recent_from = now - HOP
        spike_key = f"demand_spike:{key}"
        base_from = max(
            self.state.history_from(partition), recent_from - rules.baseline_windows * HOP
        )
        windows = (recent_from - base_from) / HOP
        if windows < 1:
            if self.book.is_open(partition, spike_key):
                self.book.clear(partition, spike_key, now)
            return
        # the minutes in (recent_from - 1 min, now]: five or six lookups
        after = recent_from - MINUTE
        scans_of = item.scans.get
        scans = sum(
            scans_of(m, 0) for m in range(after - after % MINUTE + MINUTE, now + 1, MINUTE)
        )
        if scans < rules.min_scans:  # no spike, whatever the baseline
            if self.book.is_open(partition, spike_key):
                self.book.clear(partition, spike_key, now, {"scans": scans})
            return
        history = sum(c for m, c in item.scans.items() if base_from <= m <= recent_from - MINUTE)
        baseline = max(rules.baseline_floor, history / windows)
        if scans > rules.k * baseline:
            warehouse = self.master.warehouse_for(scope["store_id"] or "") if self.master else None
            # the spike's excess over the baseline, for prepack_windows more windows
            qty = max(1, math.ceil((scans - baseline) * rules.prepack_windows))
            opened = self.book.hold(
                partition,
                spike_key,
                Finding(
                    kind="demand_spike",
                    severity="info",
                    evidence={
                        "store_id": scope["store_id"],
                        "sku": scope["sku"],
                        "scans": scans,
                        "baseline": round(baseline, 2),
                        "ratio": round(scans / baseline, 1),
                        "k": rules.k,
                        "window_start": recent_from,
                        "window_end": now,
                        "baseline_from": base_from,
                        "on_hand": on_hand,
                    },
                    action={"kind": "prepack", "source": warehouse or "?", "qty": qty},
                    **scope,
                ),
                now,
            )
            actions = self.actions
            if (
                opened is not None and actions is not None and warehouse
                and actions.may_order(partition, f"prepack:{key}", now)
            ):
                actions.propose(
                    partition, kind="prepack", source=warehouse, destination=location_of(key),
                    sku=scope["sku"] or "", qty=qty,
                    due_at=now + int(rules.prepack_due_minutes * MINUTE), now=now,
                    region=scope["region"], cause=spike_key,
                    evidence={"scans": scans, "baseline": round(baseline, 2),
                              "windows": rules.prepack_windows, "alert_id": opened.alert_id},
                )
        elif self.book.is_open(partition, spike_key):
            self.book.clear(partition, spike_key, now, {"scans": scans})

    def _coupon_cover(
        self,
        item: StockItem,
        store_id: str,
        sku: str,
        on_hand: int,
        cover: float | None,
        rules: StockRules,
        now: int,
        evidence: Callable[[], dict[str, object]],
    ) -> None:
        campaigns = self._campaigns_by_sku.get(sku)
        if not campaigns or self.master is None:
            return
        # Hysteresis: paused under coupon_cover_hours, reopened only over
        # coupon_reopen_cover_hours, so a cover hovering around one threshold
        # does not pause and reopen the campaign at every sale.
        limit = rules.coupon_reopen_cover_hours if item.low_cover else rules.coupon_cover_hours
        short = cover is not None and (cover <= limit if item.low_cover else cover < limit)
        low = item.known_at(now) and (on_hand <= 0 or short)
        if low == item.low_cover:
            return
        item.low_cover = low
        region = self.master.region_of(store_id)
        for campaign_id in campaigns:
            info = self.master.campaign_by_id[campaign_id]
            if info.regions and region not in info.regions:
                continue
            self.signal(
                CouponSignal(
                    campaign_id=campaign_id,
                    store_id=store_id,
                    cause="stock_cover",
                    sku=sku,
                    active=low,
                    evidence={**evidence(), "threshold": rules.coupon_cover_hours if low
                              else rules.coupon_reopen_cover_hours},
                    ts=now,
                )
            )

    # -------------------------------------------------------------- transfers
    def _order(
        self,
        partition: int,
        key: str,
        stock_out: bool,
        action: dict[str, object],
        now: int,
        rules: StockRules,
        evidence: dict[str, object],
        region: str | None,
    ) -> ActionOrder | None:
        """The transfer order for a shortage: a new one unless one is on its way (or
        was refused within the cooldown); the open one otherwise, if any."""
        assert self.actions is not None
        open_order = self.actions.open_for(partition, f"transfer:{key}")
        if open_order is not None or action["kind"] not in ("warehouse", "store"):
            return open_order
        if not self.actions.may_order(partition, f"transfer:{key}", now):
            return None
        location_id, sku = key.split("|", 1)
        return self.actions.propose(
            partition, kind="transfer", source=str(action["source"]), destination=location_id,
            sku=sku, qty=int(action["qty"]),  # type: ignore[call-overload]
            due_at=now + int(rules.lead_time_hours * 3_600_000), now=now, region=region,
            cause=f"{'stock_out' if stock_out else 'restock'}:{key}", evidence=evidence,
        )

    def transfer_source(
        self, partition: int, location_id: str, sku: str, on_hand: int, velocity: float, now: int,
        in_flight: int = 0,
    ) -> dict[str, object]:
        """Where to restock from: the region's warehouse, else the nearest store with
        surplus, else the warehouse anyway (flagged short). What is already on its way
        (``in_flight``) is not asked for again."""
        rules = self.rules().stock
        need = max(1, math.ceil(
            velocity * rules.target_cover_hours - max(0, on_hand) - in_flight
        ))
        master = self.master
        warehouse = master.warehouse_for(location_id) if master else None
        if warehouse is None or warehouse == location_id:
            return {"kind": "short", "source": warehouse or "?", "qty": need}
        wh_item = self.state.get(partition, f"{warehouse}|{sku}")
        if wh_item is None or not wh_item.known_at(now) or wh_item.on_hand(now) >= need:
            return {"kind": "warehouse", "source": warehouse, "qty": need}
        assert master is not None
        for store_id, km in master.nearest_stores(location_id, rules.nearest_stores):
            other = self.state.get(partition, f"{store_id}|{sku}")
            if other is None or not other.known_at(now):
                continue
            have, other_velocity, other_cover = self.measures(
                f"{store_id}|{sku}", other, now, rules
            )
            surplus_cover = rules.surplus_factor * rules.lead_time_hours
            spare = have - math.ceil(other_velocity * surplus_cover)
            if (other_cover is None or other_cover > surplus_cover) and spare >= need:
                return {"kind": "store", "source": store_id, "qty": need, "distance_km": km}
        return {"kind": "short", "source": warehouse, "qty": need}
