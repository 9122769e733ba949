"""Records the system itself writes: dead letters, closed windows, coupon
policy and decisions, alerts. JSON on the wire, like the events."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import Struct


class DeadLetter(Struct, kw_only=True):
    """A malformed event, kept whole so nothing is lost and it can be replayed.

    ``raw`` is the exact bytes (base64 in JSON); ``index`` is the position in
    a batch envelope, or -1 when the message itself was the event.
    """

    source_topic: str
    partition: int
    offset: int
    index: int
    reason: str
    detail: str
    raw: bytes
    received_at: int

    def dedup_key(self) -> str:
        return f"{self.source_topic}:{self.partition}:{self.offset}:{self.index}"


class ClosedWindow(Struct, kw_only=True, array_like=False):
    """One closed (key, window) partial of an aggregate, sent to the sink.

    Partials are per source partition: a key fed from several partitions has
    one partial each, and the store adds them up. ``through_offset`` is the
    last source offset folded in; a re-sent partial after a crash is the same
    row, so the store keeps one.
    """

    aggregate: str
    dims: list[str]
    window_start: int
    window_end: int
    values: list[int]
    source_topic: str
    partition: int
    through_offset: int
    closed_at: int

    def dedup_key(self) -> str:
        dims = "|".join(self.dims)
        return f"{self.aggregate}:{dims}:{self.window_start}:{self.source_topic}:{self.partition}"


class LateEvent(Struct, kw_only=True):
    """An event that arrived after its window closed (beyond the grace period).

    It is still stored raw; this record counts it where operators can see it.
    """

    aggregate: str
    dims: list[str]
    window_start: int
    source_topic: str
    partition: int
    offset: int
    index: int
    """Position in a batch envelope (0 for a single event)."""
    event_ts: int
    watermark: int

    def dedup_key(self) -> str:
        dims = "|".join(self.dims)  # a late order feeds one sku_sales window per line
        where = f"{self.source_topic}:{self.partition}:{self.offset}:{self.index}"
        return f"{where}:{self.aggregate}:{dims}"


class CouponPolicy(Struct, kw_only=True, omit_defaults=True):
    """Marketing's cap on one campaign (all stores when ``store_id`` is unset)."""

    campaign_id: str
    store_id: str | None = None
    cap_per_window: int | None = None
    window_seconds: int = 3600
    per_member_limit: int | None = None
    paused: bool = False
    set_by: str
    set_at: int


class CouponDecision(Struct, kw_only=True):
    campaign_id: str
    store_id: str
    state: Literal["open", "throttled", "paused"]
    reason: str
    evidence: dict[str, Any]
    ts: int


class Alert(Struct, kw_only=True, omit_defaults=True):
    alert_id: str
    kind: str
    severity: Literal["info", "warning", "critical"]
    status: Literal["open", "resolved"]
    message: str
    evidence: dict[str, Any]
    opened_at: int
    resolved_at: int | None = None
    region: str | None = None
    store_id: str | None = None
    sku: str | None = None
    carrier: str | None = None


encoder = msgspec.json.Encoder()
