"""Customer-service tasks per shipment, kept beside the lane rules.

The lane rules see every shipment of a lane on one partition, so they already
know which are stale, past their ETA or failed; this book turns each into a
task (:class:`ShipmentTask` on ``ct.tasks``) and closes it when the shipment
recovers. It is told of each shipment event (a dictionary lookup: a progress
update closes a stale task, a delivery every task of the parcel) and, at each
judgement of a lane, of the lane's stale and overdue shipments (already
computed by the lane rules), so it adds no scan of its own.

One open task per (shipment, kind); a task is closed for good (never
reopened for the same shipment and kind), so a parcel that wavers around its
ETA does not land on a person's list twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

import msgspec

from ctower.rules.rule_state import RuleState
from ctower.schemas.tasks import ShipmentTask, TaskKind

FORGET_MS = 3 * 86_400_000
"""A task open this long with no news of its shipment is closed as forgotten (the
lane rules drop such a shipment too)."""
LANE_KINDS: tuple[TaskKind, ...] = ("past_eta", "stale", "failed")
"""The kinds this book opens (``not_shipped`` is the shipping rules')."""
KEEP_CLOSED_MS = 86_400_000
"""A closed task is kept this long (so it is not opened again), then forgotten."""

MESSAGES: dict[str, dict[str, str]] = {
    "zh": {
        "past_eta": "您好，您的订单 {order_id} 的包裹（{carrier}）比预计送达时间晚了，"
                    "我们正在催促承运商，一有进展马上告诉您。",
        "stale": "您好，您的订单 {order_id} 的包裹在“{stage}”环节停留较久，"
                 "我们已联系 {carrier} 核实，稍后给您答复。",
        "failed": "您好，您的订单 {order_id} 的包裹派送未成功。请问您方便的重新派送时间，"
                  "或者改为到店自提？",
    },
    "en": {
        "past_eta": "Hello, the parcel of your order {order_id} ({carrier}) is running late; "
                    "we are chasing the carrier and will tell you as soon as it moves.",
        "stale": "Hello, the parcel of your order {order_id} has not moved from '{stage}' for a "
                 "while; we have asked {carrier} and will come back to you shortly.",
        "failed": "Hello, the delivery of your order {order_id} did not succeed. When would a "
                  "new attempt suit you, or would you rather pick it up in store?",
    },
}


class TaskBook:
    def __init__(
        self, state: RuleState[ShipmentTask], publish: Callable[[ShipmentTask], None],
        language: str,
    ) -> None:
        self.state = state
        self.publish = publish
        self.language = language if language in MESSAGES else "zh"
        self._open: dict[int, dict[str, set[str]]] = {}
        """Partition -> lane -> keys (``shipment:kind``) of its open tasks."""
        self.stats: dict[str, int] = {"opened": 0, "recovered": 0, "forgotten": 0}

    def _index(self, partition: int) -> dict[str, set[str]]:
        index = self._open.get(partition)
        if index is None:
            index = self._open[partition] = {}
            for key, task in self.state.items(partition):
                if task.status == "open":
                    index.setdefault(f"{task.carrier}|{task.region}", set()).add(key)
        return index

    def forget(self, partition: int) -> None:
        self._open.pop(partition, None)

    def open_count(self, partition: int, lane: str) -> int:
        return len(self._index(partition).get(lane, ()))

    def open(
        self, partition: int, lane: str, shipment_id: str, kind: TaskKind, now: int,
        detail: dict[str, object], order_id: str = "", district: str = "", member_id: str = "",
    ) -> ShipmentTask | None:
        """Open the task unless one of this kind was opened for the shipment before."""
        key = f"{shipment_id}:{kind}"
        if self.state.get(partition, key) is not None:
            return None
        carrier, region = lane.split("|", 1)
        digest = hashlib.blake2s(f"{key}@{now}".encode(), digest_size=5).hexdigest()
        values = {"order_id": order_id or shipment_id, "carrier": carrier,
                  "stage": detail.get("stage", "")}
        task = ShipmentTask(
            task_id=f"T-{digest}", shipment_id=shipment_id, order_id=order_id,
            member_id=member_id, carrier=carrier,
            region=region, district=district, kind=kind, status="open", detail=detail,
            message=MESSAGES[self.language][kind].format_map(values), opened_at=now, ts=now,
        )
        self.state.put(partition, key, task)
        self._index(partition).setdefault(lane, set()).add(key)
        self.stats["opened"] += 1
        self.publish(task)
        return task

    def close(self, partition: int, key: str, now: int, by: str) -> None:
        task = self.state.get(partition, key)
        if task is None or task.status != "open":
            return
        closed = msgspec.structs.replace(task, status="closed", closed_at=now, closed_by=by,
                                         ts=now)
        self.state.put(partition, key, closed)
        if by == "recovered":
            self.stats["recovered"] += 1
        lane = self._index(partition).get(f"{task.carrier}|{task.region}")
        if lane is not None:
            lane.discard(key)
        self.publish(closed)

    def add_member(self, partition: int, shipment_id: str, member_id: str, ts: int) -> None:
        """The shipment's member became known: its open tasks are sent again with it."""
        for kind in LANE_KINDS:
            key = f"{shipment_id}:{kind}"
            task = self.state.get(partition, key)
            if task is None or task.status != "open" or task.member_id:
                continue
            # a later ts: the store keeps the latest version of an open task
            task = msgspec.structs.replace(task, member_id=member_id, ts=max(ts, task.ts + 1))
            self.state.put(partition, key, task)
            self.publish(task)

    def on_event(self, partition: int, lane: str, shipment_id: str, status: str, ts: int,
                 order_id: str, district: str, member_id: str = "") -> None:
        """A shipment event: a failure opens a task, progress closes what it answers."""
        if status in ("failed", "returned"):
            for kind in ("stale", "past_eta"):
                self.close(partition, f"{shipment_id}:{kind}", ts, "failed")
            self.open(partition, lane, shipment_id, "failed", ts, {"status": status},
                      order_id, district, member_id)
            return
        if status == "created":
            return
        if not self._index(partition).get(lane):
            return  # no task open in the lane: nothing to close (the usual case)
        self.close(partition, f"{shipment_id}:stale", ts, "recovered")
        if status == "delivered":
            self.close(partition, f"{shipment_id}:past_eta", ts, "recovered")
            self.close(partition, f"{shipment_id}:failed", ts, "recovered")

    def sync(
        self, partition: int, lane: str, now: int,
        stale: Iterable[tuple[str, str, int]], past_eta: Iterable[tuple[str, int]],
        orders: dict[str, tuple[str, str]], members: dict[str, tuple[str, int]] | None = None,
    ) -> None:
        """Open tasks for the lane's stale (shipment, stage, since) and overdue
        (shipment, eta) shipments; ``orders`` maps a shipment to (order, district),
        ``members`` to (member, when told)."""
        members = members or {}
        for sid, stage, since in stale:
            order_id, district = orders.get(sid, ("", ""))
            self.open(partition, lane, sid, "stale", now, {"stage": stage, "since": since},
                      order_id, district, members.get(sid, ("", 0))[0])
        for sid, eta in past_eta:
            order_id, district = orders.get(sid, ("", ""))
            self.open(partition, lane, sid, "past_eta", now, {"eta": eta}, order_id, district,
                      members.get(sid, ("", 0))[0])

    def tick(self, partition: int, now: int) -> None:
        """Close tasks of shipments nobody heard of for days; forget old closed ones."""
        for key, task in self.state.items(partition):
            if task.status == "open" and now - task.ts > FORGET_MS:
                self.stats["forgotten"] += 1
                self.close(partition, key, now, "forgotten")
            elif task.status == "closed" and now - task.ts > KEEP_CLOSED_MS:
                self.state.delete(partition, key)
