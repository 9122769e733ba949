"""Records the system itself writes: dead letters, closed windows, coupon
policy and decisions, alerts. JSON on the wire, like the events."""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import msgspec
from msgspec import Struct

DEAD_LETTER_RAW_BYTES = 64 * 1024
"""Default of how much of a malformed event a dead letter carries."""

KIND_HEADER = "kind"
"""Header of a message on ``aggregates``: what its records are (``closed_window``,
``late_event``, ``duplicate_event``). The worker sets it, the sink decodes by it."""

ALL_STORES = "*"
"""The store of a campaign-wide scope: in coupon-policy keys (``campaign|*``),
in the ledger's counters and in its decisions."""


class DeadLetter(Struct, kw_only=True):
    """A malformed event, kept so nothing is lost and it can be replayed.

    ``raw`` is the event's bytes (base64 in JSON), cut to a bound so that the
    dead letter always fits in a Kafka message (a 900 kB event in base64 did
    not, and its send failed); ``raw_length`` and ``raw_sha256`` describe the
    whole, so a cut event can still be matched with its producer's copy.
    ``index`` is the position in a batch envelope, or -1 when the message
    itself was the event.
    """

    source_topic: str
    partition: int
    offset: int
    index: int
    reason: str
    detail: str
    raw: bytes
    received_at: int
    raw_length: int = -1
    """Length of the whole event; -1 in records written before raw was cut."""
    raw_sha256: str = ""

    @classmethod
    def bounded(
        cls,
        *,
        source_topic: str,
        partition: int,
        offset: int,
        index: int,
        reason: str,
        detail: str,
        raw: bytes,
        received_at: int,
        raw_limit: int = DEAD_LETTER_RAW_BYTES,
    ) -> DeadLetter:
        """A dead letter that carries at most ``raw_limit`` bytes of the event."""
        return cls(
            source_topic=source_topic,
            partition=partition,
            offset=offset,
            index=index,
            reason=reason,
            detail=detail[:1000],
            raw=raw[:raw_limit],
            received_at=received_at,
            raw_length=len(raw),
            raw_sha256=hashlib.sha256(raw).hexdigest(),
        )

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


class DuplicateEvent(Struct, kw_only=True):
    """An event dropped because the same event (same identity) was already
    counted: an at-least-once producer sent it again. The store counts these
    per stream; the first copy says where the counted one was."""

    source_topic: str
    partition: int
    offset: int
    index: int
    identity: str
    first_offset: int
    first_index: int
    event_ts: int

    def dedup_key(self) -> str:
        return f"{self.source_topic}:{self.partition}:{self.offset}:{self.index}"


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
    shift_share: float | None = None
    """While a store is throttled, this share of its store cap goes to the nearest
    stores of its region with room (see ``tables/steering.py``); a store's own
    policy's share wins over the campaign-wide one. None or 0: nothing shifts."""


class CouponDecision(Struct, kw_only=True):
    """The state of one campaign at one store, written on every change.

    ``evidence`` says why: the window, the values and the threshold that
    made the rule fire (for example ``{"pressure": 0.9, "threshold": 0.8}``).
    """

    campaign_id: str
    store_id: str
    state: Literal["open", "throttled", "paused"]
    reason: str
    evidence: dict[str, Any]
    ts: int


class CouponSignal(Struct, kw_only=True):
    """A live condition at a store that bears on a campaign there.

    The rules that watch stores (pickup pressure, stock cover) live on the
    partitions of the store; the campaign's ledger lives on the campaign's
    partition. Signals carry the conditions across: keyed
    ``campaign|store|cause|sku`` on ``ct.coupon-signals``, sent to the
    campaign's partition. The ledger combines the active ones into the
    campaign's state at the store (paused beats throttled beats open) and
    writes a :class:`CouponDecision` when it changes.
    """

    campaign_id: str
    store_id: str
    cause: Literal["pickup_pressure", "stock_cover", "pickup_room"]
    """``pickup_room`` is no condition against the campaign: it says whether the
    store has room at its pickup counter, so the ledger can send customers of a
    throttled store there."""
    sku: str | None = None
    """The SKU short of cover (``stock_cover`` only)."""
    active: bool
    """True while the condition holds; False when it cleared."""
    evidence: dict[str, Any]
    ts: int
    """Event time of the evaluation that changed the condition."""

    def key(self) -> str:
        return f"{self.campaign_id}|{self.store_id}|{self.cause}|{self.sku or ''}"


class StockLevel(Struct, kw_only=True):
    """The live stock of a (location, SKU) as the rules see it, for the dashboard."""

    location_id: str
    sku: str
    region: str
    on_hand: int
    velocity_per_h: float
    cover_h: float | None
    """On hand / velocity; None while too few sales to judge."""
    transfer_from: str | None = None
    ts: int


class PickupLevel(Struct, kw_only=True):
    """A store's pickup queue as the rules see it, for the dashboard."""

    store_id: str
    region: str
    waiting: int
    capacity: int
    pressure: float
    p90_wait_s: float | None
    arrivals_15m: int
    served_15m: int
    throttled: bool = False
    ts: int


AlertKind = Literal[
    "restock",
    "stock_out",
    "pickup_congestion",
    "shipment_stale",
    "shipment_failed",
    "eta_passed",
    "carrier_on_time",
    "demand_spike",
    "action_overdue",
    "district_failed",
    "order_not_shipped",
    "complaint_burst",
    "complaint_sla",
    "guide_capacity",
    "guide_late",
    # the pipeline about itself (ctower/system_alerts.py): same record, same routes
    "system_stream_silent",
    "system_lag_growing",
    "system_dead_letter_rate",
    "system_partition_stuck",
    "system_sink_behind",
    "system_store_unreachable",
]
SYSTEM_ALERT_KINDS: tuple[str, ...] = (
    "system_stream_silent", "system_lag_growing", "system_dead_letter_rate",
    "system_partition_stuck", "system_sink_behind", "system_store_unreachable",
)
"""Alerts the pipeline raises about itself; each resolves when its condition clears."""
ALERT_KINDS: tuple[str, ...] = AlertKind.__args__  # type: ignore[attr-defined]
Severity = Literal["info", "warning", "critical"]
SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")
"""Mildest first: routes and digests order by this."""


class Alert(Struct, kw_only=True, omit_defaults=True):
    """One alert, sent to ct.alerts when it opens and again when it resolves.

    ``key`` names the condition (kind and scope): at most one alert per key
    is open. ``alert_id`` names this opening of it, so a condition that
    clears and comes back is a new alert. Times are epoch ms of event time
    (``opened_at``/``resolved_at``) and wall clock (``raised_at``), so a
    replay of history alerts at the times things happened.
    """

    alert_id: str
    key: str
    kind: AlertKind
    severity: Severity
    status: Literal["open", "resolved"]
    message: str
    """Human text in the configured language (Chinese by default)."""
    evidence: dict[str, Any]
    """The window, the values and the threshold that made it fire."""
    action: str | None = None
    """What to do, for example where to transfer stock from."""
    opened_at: int
    resolved_at: int | None = None
    raised_at: int = 0
    region: str | None = None
    store_id: str | None = None
    sku: str | None = None
    carrier: str | None = None


encoder = msgspec.json.Encoder()


DeliveryResult = Literal[
    "delivered", "digest", "retry", "rate_limited", "broken", "rejected", "crashed", "rerouted",
]
DELIVERY_RESULTS: tuple[str, ...] = DeliveryResult.__args__  # type: ignore[attr-defined]


class AlertDelivery(Struct, kw_only=True):
    """One attempt to deliver an alert to a WeChat Work group robot.

    Sent to ``ct.alert-deliveries`` by ``ctower alerts deliver`` for every
    try, so the store shows each attempt, not only the outcome. ``delivery_id``
    names (alert, status, route, robot); with ``attempt`` it is the record's
    natural key, so a record re-sent after a crash collapses into one row.

    ``result``: ``delivered`` (errcode 0), ``digest`` (errcode 0, rolled up in
    a digest), ``retry`` (-1, HTTP 5xx, timeout), ``rate_limited`` (45009),
    ``broken`` (93000 or another error of the route itself), ``rejected``
    (the message was refused), ``crashed`` (the process died before the
    answer was recorded), ``rerouted`` (no send: the route is broken and the
    fallback takes it). ``robot`` is the robot's name and masked key, never
    the webhook URL. A test message has ``alert_id`` '' and kind ``test``.
    """

    delivery_id: str
    alert_id: str
    alert_key: str
    kind: str
    severity: str
    route: str
    robot: str
    attempt: int
    result: DeliveryResult
    errcode: int | None = None
    http_status: int | None = None
    latency_ms: float = 0.0
    message_kind: Literal["markdown", "text", "digest", "test"]
    ts: int
    """Wall clock (epoch ms) when the attempt ended."""
    detail: str = ""
    """What went wrong, in words, secrets masked ('' when delivered)."""


AlertAction = Literal["ack", "assign", "resolve"]
ALERT_ACTIONS: tuple[str, ...] = AlertAction.__args__  # type: ignore[attr-defined]


class AlertAck(Struct, kw_only=True):
    """What an operator did about an alert, sent from the dashboard.

    ``action``: ``ack`` (acknowledged: someone is on it; it also stops the
    alert's escalation), ``assign`` (``owner`` now owns it), ``resolve``
    (the operator closed it, ``note`` says how). Only the rule that raised
    an alert can resolve its condition; an operator's resolution closes the
    alert on the dashboard and for escalation. ``acked_by`` is who did it.
    It travels through Kafka (``alert-acks``) because in embedded mode the
    sink is the only process that may write the store (``alert_acks``: who
    did what, when).
    """

    alert_id: str
    acked_by: str
    note: str = ""
    ts: int
    """Wall clock, epoch ms."""
    action: AlertAction = "ack"
    owner: str = ""
    """``assign``: who owns the alert from now on."""
