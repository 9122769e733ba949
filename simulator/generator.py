"""The seven event streams, generated together as one discrete-event simulation.

Why one simulation and not independent generators: the rules join the
streams (a pickup belongs to a store_pickup order, stock falls with paid
orders, a coupon is redeemed on an order), so the streams must tell one
story. Every future step (pay, ready, arrive, deliver, restock, expire) is a
heap entry ``(ts, seq, handler, arg)``; the loop pops them in time order and
interleaves new shopper sessions, so events leave in non-decreasing ``ts``
order overall, hence per Kafka partition. The exceptions are deliberate:
ISO 8601 sources round ``ts`` up to the second (at most 1 s ahead), and
the ``late`` incident.

This module is the loop and the clock; each event family is its own module
holding its handlers and its state, reached from the generator:
``gen.sessions`` (:mod:`~ctower.simulator.sessions`, the scan stream),
``gen.orders``, ``gen.coupons``, ``gen.pickups``, ``gen.shipments``,
``gen.stock``, plus ``gen.service_desk`` and ``gen.guides``; ``gen.world``
(:mod:`~ctower.simulator.world`) indexes the chain, and ``gen.hooks``
(:mod:`~ctower.simulator.hooks`) is where incidents watch or hold what the
families do. Incidents use those public methods and nothing private.

Volume follows a target, not chance: the session rate is steered so the
cumulative count tracks ``sim_rate`` x the daily curve (see
:meth:`Generator._session_gap`). That is what lets ``--events N`` with
``--rate max`` end "about now": the span of N events is known in advance.

Determinism: one ``random.Random(seed)``, no set or hash-order iteration,
heap ties broken by a sequence number, ids derived from a run tag of
(seed, start). Same seed and start => byte-identical messages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ctower.schemas.events import Event
from ctower.simulator import incidents as incident_kinds
from ctower.simulator.chain import Chain, Store, build_chain
from ctower.simulator.clock import (
    cumulative_minutes,
    curve_at,
    now_ms,
    pinned_start,
    plan_end,
    plan_span,
)
from ctower.simulator.coupons import Coupons
from ctower.simulator.hooks import IncidentHooks
from ctower.simulator.items import Item
from ctower.simulator.orders import Orders
from ctower.simulator.pickups import Pickups
from ctower.simulator.sessions import Sessions
from ctower.simulator.shipments import Shipments
from ctower.simulator.stock import Stock
from ctower.simulator.world import World

_BUCKET_MS = 60_000
"""Width of the far-future buckets of the event queue (see ``Generator.push``)."""

EVENTS_PER_SESSION = 6.0
"""Prior of events per session (scans, then order, fulfilment, stock, coupons)."""
LOOKAHEAD_MS = 35_000
"""A session's scans are known when it starts and land over the next minute or
so: the controller counts them as already sent and compares with the target
this far ahead (35 s came out best: live --rate within about 5 % from the
first minute on, no overshoot later)."""

Handler = Callable[[int, Any], object]
"""A scheduled step: called with its time and the argument it was pushed with."""


@dataclass(frozen=True, slots=True)
class SimConfig:
    """What to simulate. ``start_ms`` None: derived from now (see :class:`Simulator`)."""

    seed: int = 42
    events: int | None = None
    duration_s: float | None = None
    rate: float | None = None
    """Live events per second (ts = wall clock); None = as fast as possible."""
    sim_rate: float = 50.0
    """Events per simulated second at the daily mean (``--rate max`` only)."""
    start_ms: int | None = None
    incidents: tuple[str, ...] = ()
    stores_per_region: int = 10
    n_skus: int = 600


def pinned_config(seed: int, events: int) -> SimConfig:
    """``events`` events of ``seed`` from noon China time on the latest past day
    that fits (:func:`~ctower.simulator.clock.pinned_start`): what the benches
    replay, the same hours whenever they run."""
    config = SimConfig(seed=seed, events=events)
    return dataclasses.replace(
        config, start_ms=pinned_start(events, config.sim_rate, now_ms()))


@dataclass(slots=True)
class Plan:
    """Resolved timeline of a run."""

    start_ms: int
    horizon_ms: int
    """Where incidents are placed: the expected end of the run."""
    end_ms: int | None
    """Hard stop on simulated time (``--duration``), None = none."""
    max_events: int | None
    sim_rate: float


@dataclass(slots=True)
class Counters:
    sessions: int = 0
    emitted: int = 0
    committed_scans: int = 0
    """Scans of every session started so far (known up front)."""
    session_scans: int = 0
    """Of those, the ones already emitted."""
    lost_sales: int = 0
    """Order lines dropped because the shelf (or warehouse) was empty."""


class Generator:
    """The event queue, the RNG and the event families; :meth:`run` yields :class:`Item`s."""

    def __init__(self, config: SimConfig, chain: Chain, plan: Plan) -> None:
        self.config = config
        self.chain = chain
        self.plan = plan
        self.rng = random.Random(config.seed)
        self.random = self.rng.random
        digest = hashlib.blake2b(f"{config.seed}:{plan.start_ms}".encode(), digest_size=3)
        self.tag = digest.hexdigest()
        """Run tag in every id: runs of other seeds or starts never share an id."""
        self.heap: list[tuple[int, int, Handler, Any]] = []
        self.far: dict[int, list[tuple[int, int, Handler, Any]]] = {}
        self.near_end = plan.start_ms - plan.start_ms % _BUCKET_MS + _BUCKET_MS
        self.seq = 0
        self.out: list[Item] = []
        """What the handlers emitted since the loop last yielded (appended in send order)."""
        self.now = plan.start_ms
        """Time of the handler running now."""
        self.counters = Counters()
        self._cum_start = cumulative_minutes(plan.start_ms)
        self._ids = 0
        self.world = World(chain)
        self.hooks = IncidentHooks()
        self.stock = Stock(self)
        self.coupons = Coupons(self)
        self.orders = Orders(self)
        self.pickups = Pickups(self)
        self.shipments = Shipments(self)
        self.sessions = Sessions(self)
        from ctower.simulator.guides import GuideDesk
        from ctower.simulator.service_desk import ServiceDesk

        self.service_desk = ServiceDesk(self)
        self.guides = GuideDesk(self)
        self.incidents: list[incident_kinds.Incident] = []
        for kind in config.incidents:
            self.incidents.append(incident_kinds.create(kind, self))

    # --- plumbing ------------------------------------------------------------
    def push(self, ts: int, handler: Handler, arg: Any = None) -> None:
        """Schedule ``handler(ts, arg)``.

        Only the next minute or so lives in the heap; later entries (coupon
        expiries, shipment steps hours ahead) wait in per-minute buckets. A
        heap of thousands instead of tens of thousands makes every pop cheaper,
        and the order, hence the output, is the same: (ts, seq).
        """
        self.seq += 1
        if ts < self.near_end:
            heapq.heappush(self.heap, (ts, self.seq, handler, arg))
        else:
            bucket = self.far.get(ts // _BUCKET_MS)
            if bucket is None:
                self.far[ts // _BUCKET_MS] = [(ts, self.seq, handler, arg)]
            else:
                bucket.append((ts, self.seq, handler, arg))

    def _advance(self) -> None:
        """Move the next minute's bucket into the heap."""
        entries = self.far.pop(self.near_end // _BUCKET_MS, None)
        self.near_end += _BUCKET_MS
        if not entries:
            return
        heap = self.heap
        if len(entries) > len(heap) // 4:
            heap.extend(entries)
            heapq.heapify(heap)
        else:
            for entry in entries:
                heapq.heappush(heap, entry)

    def ri(self, lo: int, hi: int) -> int:
        """``randint`` at a tenth of its cost (its rejection sampling is not needed here)."""
        return lo + int(self.random() * (hi - lo + 1))

    def rr(self, n: int) -> int:
        """``randrange(n)``, cheaply."""
        return int(self.random() * n)

    def next_serial(self) -> int:
        """The next number of the run's one id sequence (shared by every kind of id)."""
        self._ids += 1
        return self._ids

    def next_id(self, prefix: str) -> str:
        """``PREFIX-tag-n``: unique in the run, and across runs of other seeds or starts."""
        self._ids += 1
        return f"{prefix}-{self.tag}-{self._ids}"

    def member_of(self, store: Store) -> str:
        """A member of the store's pool, drawn from the run's RNG."""
        return f"M{store.idx + 1:03d}{self.rr(store.member_pool):05d}"

    # --- the loop --------------------------------------------------------------
    def run(self) -> Iterator[Item]:
        """Items in send order until the event budget or the end time is reached."""
        for incident in self.incidents:
            incident.install()
        plan = self.plan
        heap, out, counters = self.heap, self.out, self.counters
        start_session = self.sessions.start
        max_events = plan.max_events if plan.max_events is not None else math.inf
        end = plan.end_ms if plan.end_ms is not None else math.inf
        next_session = plan.start_ms
        heappop = heapq.heappop
        emitted = 0
        while True:
            while not heap and next_session >= self.near_end:
                self._advance()
            if heap and heap[0][0] <= next_session:
                ts, _, handler, arg = heappop(heap)
                if ts >= end:
                    return
                self.now = ts
                handler(ts, arg)
            else:
                ts = next_session
                if ts >= end:
                    return
                self.now = ts
                start_session(ts)
                next_session = ts + self._session_gap(ts)
            if out:
                for item in out:
                    yield item
                    emitted += 1 if item[4] is None else item.units  # [4]: raw
                    if emitted >= max_events:
                        counters.emitted = emitted
                        return
                counters.emitted = emitted
                out.clear()

    def _session_gap(self, ts: int) -> int:
        """Milliseconds to the next session: the rate that keeps the count on target.

        Base rate: the curve's events/s over the events per session seen so
        far (a session's scans count from the moment it starts, since they are
        already decided). A correction closes the gap between the cumulative
        target, slightly ahead, and what is sent or decided, within about 30 s
        of simulated time. So ``--rate N`` is about N from the start, and the
        span of ``--events N`` is known in advance to within seconds.
        """
        c = self.counters
        c.sessions += 1
        rate = self.plan.sim_rate
        pending = c.committed_scans - c.session_scans
        eps = (c.emitted + pending + EVENTS_PER_SESSION * 20) / (c.sessions + 20)
        ahead = ts + LOOKAHEAD_MS
        target = (cumulative_minutes(ahead) - self._cum_start) * 60.0 * rate
        base = rate * curve_at(ts) / eps
        corrected = base + (target - c.emitted - pending) / (30.0 * eps)
        per_s = min(max(corrected, 0.05 * base), 5.0 * base)
        return max(1, int(self.rng.expovariate(per_s) * 1000))


class Simulator:
    """The public face: ``Simulator(config).items()`` / ``.events()``.

    ``plan`` is resolved at construction: the start is ``start_ms`` if given;
    with a live ``rate``, now; with ``--rate max`` and ``duration_s``, now
    minus the duration; with ``--rate max`` and ``events`` (default 100k),
    early enough that the planned events end 30 s plus 1 % of the span before
    now, so the last event is about now and never after it (the run stops at
    now, a few events short of the budget, where the plan is out: at night).
    """

    def __init__(self, config: SimConfig, now: int | None = None) -> None:
        self.config = config
        self.chain = build_chain(
            config.seed, stores_per_region=config.stores_per_region, n_skus=config.n_skus
        )
        self.plan = self._plan(now if now is not None else now_ms())
        self.generator: Generator | None = None

    def _plan(self, now: int) -> Plan:
        c = self.config
        if c.rate is not None:
            start = c.start_ms if c.start_ms is not None else now
            sim_rate = c.rate / curve_at(start)
            if c.duration_s is not None:
                horizon = start + int(c.duration_s * 1000)
            elif c.events is not None:
                horizon = start + int(c.events / c.rate * 1000)
            else:
                horizon = start + 3_600_000
            end = start + int(c.duration_s * 1000) if c.duration_s is not None else None
            return Plan(start, horizon, end, c.events, sim_rate)
        sim_rate = c.sim_rate
        if c.duration_s is not None:
            duration = int(c.duration_s * 1000)
            start = c.start_ms if c.start_ms is not None else now - duration
            return Plan(start, start + duration, start + duration, c.events, sim_rate)
        events = c.events if c.events is not None else 100_000
        if c.start_ms is not None:
            return Plan(c.start_ms, plan_end(c.start_ms, events, sim_rate), None, events, sim_rate)
        span = now - plan_span(events, sim_rate, now)
        end = now - 30_000 - span // 100
        # stopped at now whatever the budget: at night, where the curve is low,
        # the plan can be minutes out (seed 11, 20k events at 4/s ran 45 min
        # past now at some hours), and a window of the future stays open
        return Plan(plan_span(events, sim_rate, end), end, now, events, sim_rate)

    def items(self) -> Iterator[Item]:
        """Every message in send order: valid events, late ones, malformed ones."""
        self.generator = Generator(self.config, self.chain, self.plan)
        return self.generator.run()

    def events(self) -> Iterator[tuple[str, Event]]:
        """The valid events only (including late ones and those inside envelopes)."""
        for item in self.items():
            if item.event is not None:
                yield item.stream, item.event
            for event in item.contained:
                yield item.stream, event

    def incident_truth(self) -> list[dict[str, Any]]:
        """Ground truth of each incident, complete once the items are consumed."""
        if self.generator is None:
            return []
        return [incident.truth() for incident in self.generator.incidents]
