"""Peer applications for ``ctower bench peer``: the four window families of
``tables/folds.py`` written the way a user of Quix Streams or Bytewax would.

Both peers share this module's per-event mapping (plain functions over the
decoded JSON), so that the comparison is of the libraries and not of two
translations of the folds. Neither peer runs rules, de-duplication or
validation: they are a ceiling for "windows only", not an equivalent of the
worker.

The apps run as separate processes, configured by ``PEER_*`` environment
variables (:class:`PeerConfig`), and report their progress in a small JSON
file (:class:`Progress`) that the bench polls, the way it polls a worker's
``/stats/``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

STREAMS = ("scan", "order", "pickup", "logistics", "inventory", "coupon", "service")
"""Every stream topic is consumed (and its events counted), windowed or not:
the worker reads them all too. Kept in step with ``ctower.settings.STREAMS``
(a test checks), without importing the settings into the peers' processes."""

GRACE_MS = 10_000
"""ctower's grace: how long a window stays open after its end in event time."""

Deltas = dict[str, int]
Record = tuple[str, int, Deltas]
"""(window key, event time in ms, amounts to add) for one window family."""


def epoch_ms(value: int | str) -> int:
    """Some source systems send ISO 8601 times with an offset (the simulator
    does for some): every peer must read both, as the worker does."""
    if isinstance(value, int):
        return value
    return int(datetime.fromisoformat(value).timestamp() * 1000)


def store_minute_scan(ev: dict[str, Any]) -> list[Record]:
    deltas = {"scans": 1, "add_to_cart": 1} if ev["action"] == "add_to_cart" else {"scans": 1}
    return [(ev["store_id"], epoch_ms(ev["ts"]), deltas)]


def store_minute_order(ev: dict[str, Any]) -> list[Record]:
    status = ev["status"]
    if status == "created":
        return [(ev["store_id"], epoch_ms(ev["ts"]), {"orders": 1})]
    if status == "paid":
        return [(ev["store_id"], epoch_ms(ev["ts"]),
                 {"paid_orders": 1, "gmv_fen": round(ev["amount"] * 100)})]
    if status == "refunded":
        return [(ev["store_id"], epoch_ms(ev["ts"]), {"refunded_orders": 1})]
    return []


def sku_sales_order(ev: dict[str, Any]) -> list[Record]:
    if ev["status"] != "paid":
        return []
    location = ev.get("ship_from") or ev["store_id"]
    ts = epoch_ms(ev["ts"])
    return [
        (f"{location}|{line['sku']}", ts,
         {"units": line["qty"], "revenue_fen": round(line["qty"] * line["unit_price"] * 100)})
        for line in ev["lines"]
    ]


PICKUP_FIELDS = {"arrived": "pickup_arrivals", "picked_up": "pickups_served",
                 "no_show": "pickup_no_shows"}
COUPON_FIELDS = {"issued": "coupons_issued", "redeemed": "coupons_redeemed"}


def store_minute_pickup(ev: dict[str, Any]) -> list[Record]:
    field = PICKUP_FIELDS.get(ev["state"])
    return [(ev["store_id"], epoch_ms(ev["ts"]), {field: 1})] if field else []


def store_minute_coupon(ev: dict[str, Any]) -> list[Record]:
    field = COUPON_FIELDS.get(ev["action"])
    return [(ev["store_id"], epoch_ms(ev["ts"]), {field: 1})] if field else []


def campaign_store_coupon(ev: dict[str, Any]) -> list[Record]:
    return [(f"{ev['campaign_id']}|{ev['store_id']}", epoch_ms(ev["ts"]), {ev["action"]: 1})]


def carrier_region_logistics(ev: dict[str, Any]) -> list[Record]:
    ts = epoch_ms(ev["ts"])
    deltas = {ev["status"]: 1}
    if ev["status"] == "delivered" and ev.get("eta") is not None:
        deltas["delivered_on_time" if ts <= epoch_ms(ev["eta"]) else "delivered_late"] = 1
    return [(f"{ev['carrier']}|{ev['region']}", ts, deltas)]


WINDOW_MS = {
    "store_minute": 60_000,
    "sku_sales_5min": 300_000,
    "campaign_store_minute": 60_000,
    "carrier_region_15min": 900_000,
}
"""The four window families (tables/aggregates.py) and their lengths."""

MAPPINGS: dict[str, dict[str, Callable[[dict[str, Any]], list[Record]]]] = {
    "scan": {"store_minute": store_minute_scan},
    "order": {"store_minute": store_minute_order, "sku_sales_5min": sku_sales_order},
    "pickup": {"store_minute": store_minute_pickup},
    "coupon": {"store_minute": store_minute_coupon,
               "campaign_store_minute": campaign_store_coupon},
    "logistics": {"carrier_region_15min": carrier_region_logistics},
}
"""stream -> window family -> its records of one event."""


def add_deltas(acc: Deltas, deltas: Deltas) -> Deltas:
    for name, amount in deltas.items():
        acc[name] = acc.get(name, 0) + amount
    return acc


def envelope(value: Any) -> list[dict[str, Any]]:
    """The events of one message: an envelope is a JSON array, a single event an object."""
    return value if isinstance(value, list) else [value]


@dataclass(frozen=True)
class PeerConfig:
    bootstrap: str
    topic_prefix: str
    group: str
    """Consumer group (and, for Quix, the prefix of its own topics' names)."""
    progress: Path
    state_dir: Path

    @classmethod
    def from_env(cls) -> PeerConfig:
        env = os.environ
        return cls(env["PEER_BOOTSTRAP"], env["PEER_TOPIC_PREFIX"], env["PEER_GROUP"],
                   Path(env["PEER_PROGRESS"]), Path(env["PEER_STATE_DIR"]))

    def env(self) -> dict[str, str]:
        return {"PEER_BOOTSTRAP": self.bootstrap, "PEER_TOPIC_PREFIX": self.topic_prefix,
                "PEER_GROUP": self.group, "PEER_PROGRESS": str(self.progress),
                "PEER_STATE_DIR": str(self.state_dir)}

    def topic(self, stream: str) -> str:
        return f"{self.topic_prefix}{stream}"

    def stream_of(self, topic: str) -> str:
        return topic[len(self.topic_prefix):]


class Progress:
    """Counters of one peer process, written to a file five times a second by
    a thread, so the hot path only adds to integers.

    ``events``: events taken out of the messages; ``records``: window records
    made of them; ``folded``: records that reached their window (late ones
    included, also counted in ``late``); ``windows``: results the sink got.
    The app has drained its backlog when ``events`` is every event sent and
    ``folded`` has caught up with ``records`` (Quix re-keys records through a
    repartition topic in between).

    Times are the app's own (wall clock), so that a backlog drained between
    two polls of the bench is still timed: ``first`` is set by the app at its
    first message, ``changed`` by the writer at the last change it saw of
    anything but ``windows`` (which keep closing after the drain).
    """

    def __init__(self, path: Path, every_s: float = 0.05) -> None:
        self.path = path
        self.events = self.records = self.folded = self.late = self.windows = 0
        self.first = 0.0
        self.every_s = every_s
        threading.Thread(target=self._write_forever, name="peer-progress", daemon=True).start()

    def started(self) -> None:
        if not self.first:
            self.first = time.time()

    def _write_forever(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        seen: tuple[int, ...] = ()
        changed = 0.0
        while True:
            now = (self.events, self.records, self.folded, self.late)
            if now != seen:
                seen, changed = now, time.time()
            events, records, folded, late = now
            tmp.write_text(json.dumps({
                "events": events, "records": records, "folded": folded, "late": late,
                "windows": self.windows, "first": self.first, "changed": changed,
            }))
            tmp.replace(self.path)
            time.sleep(self.every_s)


def read_progress(path: Path) -> dict[str, Any] | None:
    """A peer's last counters, or None before it wrote any."""
    try:
        progress: dict[str, Any] = json.loads(path.read_text())
        return progress
    except (OSError, ValueError):
        return None
