"""The simulated warehouse: it answers the rules' action orders, late now and then,
and sometimes not at all.

It reads ``ct.actions``, and for every order once it is approved (a proposed
order waits for a person, as in a real chain) it plans, from a generator
seeded by the order id (the same order is answered the same way on every
run): a rejection (``reject_share``), or a dispatch after a few minutes with
the stock leaving the source (``transfer_out``), then the receipt at the
destination (``transfer_in``) and ``received``, before the due time, or after
it for ``late_share`` of the orders. What it planned is its ground truth
(:meth:`Warehouse.truth`), so a test can tell an overdue alert the warehouse
caused from one it did not.

Time is event time: answers are due at event times computed from the order's
own, and the loop's clock is the newest order time seen, moved on by the wall
clock times ``sim_rate`` while nothing comes, as the rules' clock is.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click
import msgspec

from ctower.schemas.actions import ActionOrder, ActionStatus
from ctower.schemas.events import MINUTE, Inventory

log = logging.getLogger(__name__)


Step = tuple[int, int, ActionStatus | Inventory]
"""(event time due, sequence, what to send)."""


@dataclass(frozen=True)
class WarehouseConfig:
    seed: int = 42
    reject_share: float = 0.1
    late_share: float = 0.15
    dispatch_minutes: tuple[float, float] = (5.0, 30.0)
    late_minutes: tuple[float, float] = (10.0, 60.0)
    """How far past its due time a late order arrives."""
    name: str = "warehouse-sim"


@dataclass
class Warehouse:
    """The plan for each approved order; the steps come due as event time passes."""

    config: WarehouseConfig = field(default_factory=WarehouseConfig)
    pending: list[Step] = field(default_factory=list)
    answered: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Order id -> what was planned for it (the ground truth)."""
    _seq: int = 0

    def _rng(self, order_id: str) -> random.Random:
        digest = hashlib.blake2s(f"{self.config.seed}:{order_id}".encode(), digest_size=8)
        return random.Random(int.from_bytes(digest.digest(), "big"))

    def on_order(self, order: ActionOrder) -> list[Step]:
        """Plan the answers to an order the first time it is seen approved."""
        if order.status != "approved" or order.order_id in self.answered:
            return []
        cfg = self.config
        rng = self._rng(order.order_id)
        start = order.created_at  # a person's approval carries a wall clock, not event time
        dispatch = start + int(rng.uniform(*cfg.dispatch_minutes) * MINUTE)

        def status(kind: str, ts: int, note: str = "") -> ActionStatus:
            return ActionStatus(order_id=order.order_id, sku=order.sku, status=kind,  # type: ignore[arg-type]
                                by=cfg.name, ts=ts, note=note)

        steps: list[tuple[int, ActionStatus | Inventory]]
        if rng.random() < cfg.reject_share:
            outcome = "rejected"
            steps = [(dispatch, status("rejected", dispatch, "no stock to spare"))]
            received = None
        else:
            late = rng.random() < cfg.late_share
            outcome = "late" if late else "on_time"
            if late:
                received = order.due_at + int(rng.uniform(*cfg.late_minutes) * MINUTE)
            else:
                room = max(MINUTE, order.due_at - dispatch - MINUTE)
                received = dispatch + int(rng.uniform(0.3, 0.9) * room)
            steps = [
                (dispatch, status("dispatched", dispatch)),
                (dispatch, Inventory(ts=dispatch, location_id=order.source, sku=order.sku,
                                     kind="transfer_out", qty=order.qty)),
                (received, Inventory(ts=received, location_id=order.destination, sku=order.sku,
                                     kind="transfer_in", qty=order.qty)),
                (received, status("received", received)),
            ]
        self.answered[order.order_id] = {
            "order_id": order.order_id, "kind": order.kind, "outcome": outcome,
            "due_at": order.due_at, "dispatched_at": dispatch if outcome != "rejected" else None,
            "received_at": received, "source": order.source, "destination": order.destination,
            "sku": order.sku, "qty": order.qty,
        }
        planned = []
        for ts, record in steps:
            self._seq += 1
            step = (ts, self._seq, record)
            heapq.heappush(self.pending, step)
            planned.append(step)
        return planned

    def due(self, now: int) -> list[ActionStatus | Inventory]:
        """What is due by event time ``now``, in order."""
        out = []
        while self.pending and self.pending[0][0] <= now:
            out.append(heapq.heappop(self.pending)[2])
        return out

    def truth(self) -> list[dict[str, Any]]:
        return sorted(self.answered.values(), key=lambda a: a["order_id"])


@dataclass
class EventClock:
    """The newest order time seen, moved on by the wall clock times ``sim_rate``."""

    sim_rate: float = 1.0
    wall: Callable[[], float] = time.monotonic
    _ts: int = 0
    _seen_at: float = 0.0

    def observe(self, ts: int) -> None:
        if ts > self.now():
            self._ts, self._seen_at = ts, self.wall()

    def now(self) -> int:
        if not self._ts:
            return 0
        return self._ts + int((self.wall() - self._seen_at) * 1000 * self.sim_rate)


_order = msgspec.json.Decoder(ActionOrder)


def run(settings: Any, config: WarehouseConfig, sim_rate: float,
        stop: Callable[[], bool] = lambda: False, truth_path: str | None = None,
        warehouse: Warehouse | None = None) -> Warehouse:
    """Answer the orders of ``ct.actions`` until ``stop()``; returns the warehouse."""
    from kafka import KafkaConsumer

    from ctower.control.actions import publish_status
    from ctower.health import Heartbeat
    from ctower.producer import EventProducer

    warehouse = warehouse or Warehouse(config)
    clock = EventClock(sim_rate)
    heartbeat = Heartbeat(settings, "warehouse")  # `ctower health warehouse` (compose)
    consumer = KafkaConsumer(
        settings.topic("actions"), bootstrap_servers=settings.bootstrap,
        group_id=f"{settings.app_id}-warehouse", auto_offset_reset="earliest",
        enable_auto_commit=True,
    )
    producer = EventProducer(settings, batch=1)
    try:
        changed = False
        while not stop():
            heartbeat.beat(orders=len(warehouse.answered), pending=len(warehouse.pending))
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    try:
                        order = _order.decode(record.value)
                    except msgspec.DecodeError:
                        continue  # not an order: the rules' topic only carries orders
                    clock.observe(order.created_at)
                    changed = bool(warehouse.on_order(order)) or changed
            due = warehouse.due(clock.now())
            for item in due:
                if isinstance(item, ActionStatus):
                    producer.flush()  # the stock moves before the answer that reports them
                    publish_status(settings, item)
                else:
                    producer.send(item)
            if due:
                producer.flush()
            if truth_path and changed:
                with open(truth_path, "wb") as out:
                    out.write(msgspec.json.encode({"orders": warehouse.truth()}))
                changed = False
    finally:
        heartbeat.clear()
        producer.close()
        consumer.close()
    return warehouse


@click.command("warehouse")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--reject-share", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option("--late-share", type=click.FloatRange(0, 1), default=0.15, show_default=True)
@click.option("--sim-rate", type=click.FloatRange(min=0.001), default=1.0, show_default=True,
              help="Event time per wall second while no order comes (as ctower simulate's).")
@click.option("--truth", "truth_path", default=None, help="Write what was planned (JSON).")
def warehouse_command(seed: int, reject_share: float, late_share: float, sim_rate: float,
                      truth_path: str | None) -> None:
    """Play the warehouse: answer the rules' approved orders, with delays and rejections."""
    from ctower.cli import settings_or_exit

    config = WarehouseConfig(seed=seed, reject_share=reject_share, late_share=late_share)
    with contextlib.suppress(KeyboardInterrupt):
        run(settings_or_exit(), config, sim_rate, truth_path=truth_path)
