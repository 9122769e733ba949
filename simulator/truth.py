"""Ground truth: what the worker and the store must end up with.

Counted here by deliberately plain code, from the events as they are sent,
without the worker's folds or the aggregate specs' helpers (only the field
*names* of the specs are shared, so every field appears in every row). A
re-sent copy of an event (``--duplicates``) is not counted: the truth is what
happened, once.
If the pipeline and this file disagree, one of them is wrong, and a test
says which minute of which store.

Format of the file (JSON)::

    {"meta": {...seed, start, rates...},
     "events_sent": {"scan": n, ...},           # valid events, late ones included
     "duplicates_sent": {"scan": n, ...},       # re-sent copies (not counted anywhere)
     "malformed": [{"seq", "stream", "topic", "key", "kind", "reason", "index", "raw"|"raw_b64"}],
     "late": [{"seq", "stream", "topic", "key", "store_id", "ts", "window_start", "behind_ms",
               "dedup_key", "fields": {...}}],
     "incidents": [{"kind", "scope", "start_ts", "end_ts", "expect": {...}}],
     "aggregates": {"store_minute": [{"store_id", "window_start", <every field>: int}, ...],
                    "sku_sales_5min": [{"location_id", "sku", "window_start", ...}, ...],
                    "carrier_region_15min": [...], "campaign_store_minute": [...]}}

``seq`` is the 0-based position of the message among all messages written
(the line number in ``--out``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ctower.schemas.events import Coupon, Event, Logistics, Order, Pickup, Scan, Service
from ctower.simulator.items import Item
from ctower.tables.aggregates import (
    CAMPAIGN_STORE_MINUTE,
    CARRIER_REGION_15MIN,
    SERVICE_MINUTE,
    SKU_SALES_5MIN,
    STORE_MINUTE,
    AggregateSpec,
)

FIELDS = STORE_MINUTE.fields
_I = {name: i for i, name in enumerate(FIELDS)}


def store_minute_contribution(stream: str, event: Event) -> tuple[str, int, dict[str, int]] | None:
    """(store_id, window_start, {field: +n}) of one event, or None if it adds nothing."""
    ts = event.ts
    assert isinstance(ts, int)
    window = ts - ts % 60_000
    add: dict[str, int] = {}
    if stream == "scan":
        assert isinstance(event, Scan)
        add["scans"] = 1
        if event.action == "add_to_cart":
            add["add_to_cart"] = 1
        return event.store_id, window, add
    if stream == "order":
        assert isinstance(event, Order)
        if event.status == "created":
            add["orders"] = 1
        elif event.status == "paid":
            add["paid_orders"] = 1
            add["gmv_fen"] = round(event.amount * 100)
        elif event.status == "refunded":
            add["refunded_orders"] = 1
        return (event.store_id, window, add) if add else None
    if stream == "pickup":
        assert isinstance(event, Pickup)
        name = {
            "arrived": "pickup_arrivals",
            "picked_up": "pickups_served",
            "no_show": "pickup_no_shows",
        }
        if event.state in name:
            return event.store_id, window, {name[event.state]: 1}
        return None
    if stream == "coupon":
        assert isinstance(event, Coupon)
        name = {"issued": "coupons_issued", "redeemed": "coupons_redeemed"}
        if event.action in name:
            return event.store_id, window, {name[event.action]: 1}
        return None
    return None


def other_contributions(
    stream: str, event: Event
) -> list[tuple[str, tuple[str, ...], int, dict[str, int]]]:
    """(aggregate, dims, window_start, {field: +n}) of one event for the three
    families other than store_minute."""
    ts = event.ts
    assert isinstance(ts, int)
    out: list[tuple[str, tuple[str, ...], int, dict[str, int]]] = []
    if stream == "order":
        assert isinstance(event, Order)
        if event.status == "paid":
            five = ts - ts % 300_000
            location = event.ship_from or event.store_id
            for line in event.lines:
                out.append(("sku_sales_5min", (location, line.sku), five, {
                    "units": line.qty, "revenue_fen": round(line.qty * line.unit_price * 100),
                }))
    elif stream == "logistics":
        assert isinstance(event, Logistics)
        add: dict[str, int] = {event.status: 1}
        if event.status == "delivered" and event.eta is not None:
            eta = event.eta
            assert isinstance(eta, int)
            add["delivered_on_time" if ts <= eta else "delivered_late"] = 1
        out.append(("carrier_region_15min", (event.carrier, event.region), ts - ts % 900_000, add))
    elif stream == "coupon":
        assert isinstance(event, Coupon)
        out.append((
            "campaign_store_minute", (event.campaign_id, event.store_id), ts - ts % 60_000,
            {event.action: 1},
        ))
    elif stream == "service":
        assert isinstance(event, Service)
        field = {("inquiry", "opened"): "inquiries", ("complaint", "opened"): "complaints",
                 ("complaint", "closed"): "complaints_closed"}.get((event.kind, event.state))
        if field is not None:
            out.append(("service_minute", (event.store_id, event.sku or ""), ts - ts % 60_000,
                        {field: 1}))
    return out


OTHER_SPECS: dict[str, AggregateSpec] = {
    spec.name: spec
    for spec in (SKU_SALES_5MIN, CARRIER_REGION_15MIN, CAMPAIGN_STORE_MINUTE, SERVICE_MINUTE)
}


def _raw_field(raw: bytes) -> dict[str, str]:
    try:
        return {"raw": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {"raw_b64": base64.b64encode(raw).decode("ascii")}


class TruthRecorder:
    """Watches every item on its way out and keeps the exact expected counts."""

    def __init__(self, topic_of: Callable[[str], str] = lambda stream: stream) -> None:
        self.topic_of = topic_of
        self.rows: dict[tuple[str, int], list[int]] = {}
        self.other: dict[str, dict[tuple[tuple[str, ...], int], dict[str, int]]] = {
            name: {} for name in OTHER_SPECS
        }
        self.events_sent: dict[str, int] = {}
        self.duplicates_sent: dict[str, int] = {}
        self.malformed: list[dict[str, Any]] = []
        self.late: list[dict[str, Any]] = []
        self.seq = 0
        self.first_ts: int | None = None
        self.last_ts: int | None = None

    def observe(self, item: Item) -> None:
        seq = self.seq
        self.seq += 1
        if item.resent:
            self.duplicates_sent[item.stream] = self.duplicates_sent.get(item.stream, 0) + 1
            return
        if item.event is not None:
            self._count(item.stream, item.event, item, seq)
        for event in item.contained:
            self._count(item.stream, event, None, seq)
        for index, reason, kind in item.rejections:
            assert item.raw is not None
            self.malformed.append(
                {
                    "seq": seq,
                    "stream": item.stream,
                    "topic": self.topic_of(item.stream),
                    "key": item.key,
                    "kind": kind,
                    "reason": reason,
                    "index": index,
                    "ts": item.ts,
                    **_raw_field(item.raw),
                }
            )

    def _count(self, stream: str, event: Event, item: Item | None, seq: int) -> None:
        self.events_sent[stream] = self.events_sent.get(stream, 0) + 1
        ts = event.ts
        assert isinstance(ts, int)
        if self.first_ts is None or ts < self.first_ts:
            self.first_ts = ts
        if self.last_ts is None or ts > self.last_ts:
            self.last_ts = ts
        contribution = store_minute_contribution(stream, event)
        if item is not None and item.late_ms:
            store_id, window, add = contribution or ("", ts - ts % 60_000, {})
            self.late.append(
                {
                    "seq": seq,
                    "stream": stream,
                    "topic": self.topic_of(stream),
                    "key": item.key,
                    "store_id": store_id,
                    "ts": ts,
                    "window_start": window,
                    "behind_ms": item.late_ms,
                    "dedup_key": event.dedup_key(),
                    "fields": add,
                }
            )
            return
        for aggregate, dims, start, adds in other_contributions(stream, event):
            counts = self.other[aggregate].setdefault((dims, start), {})
            for name, n in adds.items():
                counts[name] = counts.get(name, 0) + n
        if contribution is None:
            return
        store_id, window, add = contribution
        row = self.rows.get((store_id, window))
        if row is None:
            row = self.rows[(store_id, window)] = [0] * len(FIELDS)
        for name, n in add.items():
            row[_I[name]] += n

    def store_minute_rows(self) -> list[dict[str, Any]]:
        return [
            {"store_id": store_id, "window_start": window, **dict(zip(FIELDS, row, strict=True))}
            for (store_id, window), row in sorted(
                self.rows.items(), key=lambda kv: (kv[0][1], kv[0][0])
            )
        ]

    def other_rows(self, aggregate: str) -> list[dict[str, Any]]:
        spec = OTHER_SPECS[aggregate]
        return [
            {
                **dict(zip(spec.dims, dims, strict=True)),
                "window_start": start,
                **{name: counts.get(name, 0) for name in spec.fields},
            }
            for (dims, start), counts in sorted(
                self.other[aggregate].items(), key=lambda kv: (kv[0][1], kv[0][0])
            )
        ]

    def result(
        self, incidents: list[dict[str, Any]] | None = None, meta: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return {
            "meta": {
                **(meta or {}),
                "first_ts": self.first_ts,
                "last_ts": self.last_ts,
                "messages": self.seq,
            },
            "events_sent": dict(sorted(self.events_sent.items())),
            "duplicates_sent": dict(sorted(self.duplicates_sent.items())),
            "malformed": self.malformed,
            "late": self.late,
            "incidents": incidents or [],
            "aggregates": {
                "store_minute": self.store_minute_rows(),
                **{name: self.other_rows(name) for name in OTHER_SPECS},
            },
        }


def write_truth(path: str | Path, truth: dict[str, Any]) -> None:
    """Write atomically: a reader never sees half a truth file."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(truth, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    tmp.replace(target)


def load_truth(path: str | Path) -> dict[str, Any]:
    truth: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    for key in ("events_sent", "malformed", "late", "incidents", "aggregates"):
        if key not in truth:
            raise ValueError(f"{path}: not a simulator truth file (no {key!r})")
    return truth


def store_minute_truth(truth: dict[str, Any]) -> dict[tuple[str, int], dict[str, int]]:
    """Truth rows keyed by (store_id, window_start), each {field: value} with every field."""
    out: dict[tuple[str, int], dict[str, int]] = {}
    for row in truth["aggregates"]["store_minute"]:
        out[(row["store_id"], row["window_start"])] = {name: row[name] for name in FIELDS}
    return out


def aggregate_truth(
    truth: dict[str, Any], aggregate: str
) -> dict[tuple[Any, ...], dict[str, int]]:
    """Truth rows of any window family keyed by (*dims, window_start), each
    {field: value} with every field."""
    if aggregate == "store_minute":
        return {(k[0], k[1]): v for k, v in store_minute_truth(truth).items()}
    spec = OTHER_SPECS[aggregate]
    return {
        (*(row[dim] for dim in spec.dims), row["window_start"]): {
            name: row[name] for name in spec.fields
        }
        for row in truth["aggregates"].get(aggregate, [])
    }
