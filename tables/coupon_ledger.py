"""Coupon caps and states per campaign: the ledger that answers "may I issue now?".

Everything about one campaign lives on the campaign's partition (the murmur2
partition of its id, the same as its coupon events'): the policies marketing
set, the counts per window, the live conditions the store rules signal, and
the state last announced per store. One worker owns a partition, so one
event loop decides every reservation of a campaign: :meth:`CouponLedger.reserve`
checks every cap that applies and then counts against all of them with no
``await`` in between, which is what makes a cap exact under any number of
concurrent clients.

Persistence follows ``window_state.py``: plain dicts in memory, mirrored as
small msgpack records into a raw-bytes Faust table whose changelog partition
is the campaign's partition. A record per counter, policy, signal and
remembered coupon id (not one per campaign: a campaign's members would make
one record grow without bound). :meth:`flush` writes what changed since the
last flush and returns the producer's futures, so a caller can wait until a
granted reservation is durable before saying so.

Exactness under at-least-once delivery of the coupon stream:

1. Every counter carries ``through``, the last coupon-stream offset folded
   into it. A replayed message at offset ``o`` is skipped for every counter
   whose ``through >= o``. A message's events are summed first and applied
   once per counter, so events sharing a batch envelope's offset all count.
2. ``issued`` events whose ``coupon_id`` is a reservation id were counted
   when the reservation was granted and are never counted again. Other ids
   are remembered until their window ends, so a producer's duplicate is not
   counted twice. An id's record is written after its counters' records, in
   the same changelog partition, so a durable id implies durable counters.
3. Policies and signals carry the offset they came from; a replay of an
   older record never undoes a newer one.

Windows are tumbling and aligned to the epoch (an hour window starts on the
hour; a day window at 00:00 UTC, 08:00 in China). A counter's key holds its
window length, so a policy that changes the length starts counting afresh.
Per-member counts are kept only while a policy sets a per-member limit.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import msgspec
from msgspec import Struct

from ctower.schemas.control import ALL_STORES, CouponDecision, CouponPolicy, CouponSignal
from ctower.schemas.events import Coupon
from ctower.tables import steering

RESERVATION_PREFIX = "rsv-"
"""Reservation ids look like ``rsv-<32 hex>``; an issued coupon carrying one
was counted when it was reserved."""

State = Literal["open", "throttled", "paused"]
Reason = Literal[
    "granted",
    "cap_reached",
    "store_cap_reached",
    "member_limit",
    "paused",
    "throttled",
    "stock_short",
    "unknown_campaign",
]

CounterKey = tuple[str, int, int, str]
"""(scope, window length ms, window start ms, member id or '')."""

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode
_json = msgspec.json.Encoder()
_policy_decoder = msgspec.json.Decoder(CouponPolicy)
_signal_decoder = msgspec.json.Decoder(CouponSignal)

_POLICY, _COUNTER, _SEEN, _SIGNAL, _ANNOUNCED = "P", "C", "I", "S", "A"


def is_reservation_id(coupon_id: str) -> bool:
    return (
        len(coupon_id) == len(RESERVATION_PREFIX) + 32
        and coupon_id.startswith(RESERVATION_PREFIX)
    )


def new_reservation_id() -> str:
    return RESERVATION_PREFIX + os.urandom(16).hex()


class ChangelogTable(Protocol):
    """The part of a Faust table used here (tests may pass a stand-in)."""

    @property
    def data(self) -> Any: ...

    def send_changelog(self, partition: int | None, key: Any, value: Any) -> Any: ...


class Reservation(Struct, kw_only=True):
    """The answer to one reservation request.

    ``remaining`` is what is left after this answer per limit in force
    (``campaign``, ``store``, ``member``; ``None`` = no such limit).
    ``window_end`` (epoch ms) is when the limit that refused resets, or for a
    grant the end of the nearest window that caps it; ``None`` when nothing
    caps the campaign. ``reservation_id`` is the coupon_id to issue with, so
    the issued event is not counted a second time.
    """

    campaign_id: str
    store_id: str
    member_id: str
    granted: bool
    reason: Reason
    state: State
    reservation_id: str | None = None
    remaining: dict[str, int | None]
    window_end: int | None = None
    evidence: dict[str, Any] | None = None
    alternatives: list[dict[str, Any]] | None = None
    """A refusal at a throttled or short store: the nearest stores with room
    (``store_id``, ``km``, ``pressure``), nearest first."""
    hint: str | None = None
    """The same in a sentence: ``not here: try S012, 1.2 km, pressure 0.3``."""


@dataclass(slots=True)
class _Campaign:
    policies: dict[str, tuple[int, CouponPolicy]] = field(default_factory=dict)
    """scope -> (offset it came from, policy)."""
    counters: dict[CounterKey, list[int]] = field(default_factory=dict)
    """-> [through, count]."""
    seen: dict[str, int] = field(default_factory=dict)
    """Issued coupon ids (not reservations) counted -> when to forget them."""
    signals: dict[tuple[str, str, str], tuple[int, CouponSignal]] = field(default_factory=dict)
    """(store, cause, sku) -> (offset, latest signal, active or cleared)."""
    announced: dict[str, State] = field(default_factory=dict)
    """store (or '*') -> state last written to ct.coupon-decisions."""
    shifted: dict[str, dict[str, int]] = field(default_factory=dict)
    """Receiving store -> {throttled store: coupons of its cap shifted there}; derived
    from the policies and signals (recomputed on load), announced when it changes."""

    def policy(self, scope: str) -> CouponPolicy | None:
        entry = self.policies.get(scope)
        return entry[1] if entry else None


@dataclass(slots=True)
class _Partition:
    campaigns: dict[str, _Campaign] = field(default_factory=dict)
    pending: dict[bytes, bytes | None] = field(default_factory=dict)
    """Records changed since the last flush, in the order they first changed."""
    unacked: set[asyncio.Future[Any]] = field(default_factory=set)
    """Writes sent and not yet acknowledged by Kafka, whoever flushed them."""


@dataclass(slots=True)
class _Verdict:
    state: State
    reason: str
    evidence: dict[str, Any]
    ts: int


class CouponLedger:
    """Policies, counts and live conditions of the campaigns on this worker's partitions."""

    def __init__(
        self,
        *,
        table: ChangelogTable,
        default_window_ms: int = 3_600_000,
        known_campaigns: Callable[[str], bool] = lambda campaign_id: False,
        campaign_stores: Callable[[str], Iterable[str]] = lambda campaign_id: (),
        clock: Callable[[], float] = time.time,
        neighbours: Callable[[str], Iterable[tuple[str, float]]] = lambda store_id: (),
    ) -> None:
        """``known_campaigns``, ``campaign_stores`` and ``neighbours`` come from
        master data: a campaign it knows is not unknown even before any policy,
        a campaign-wide pause is announced at every store it runs in, and the
        customers of a throttled store are sent to its nearest stores with room."""
        self.table = table
        self.neighbours = neighbours
        self.default_window_ms = default_window_ms
        self.known_campaigns = known_campaigns
        self.campaign_stores = campaign_stores
        self.clock = clock
        self._parts: dict[int, _Partition] = {}
        self.stats: dict[str, int] = defaultdict(int)

    # ----------------------------------------------------------------- state
    def partition(self, partition: int) -> _Partition:
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = self._load(partition)
        return part

    def adopt(self, partitions: Iterable[int]) -> None:
        """Load partitions this worker owns; call only once the table is recovered."""
        for partition in partitions:
            self.partition(partition)

    def owns(self, partition: int) -> bool:
        return partition in self._parts

    def owned(self) -> list[int]:
        return sorted(self._parts)

    def drop(self, partition: int) -> None:
        """Forget a partition given to another worker (its changelog moves with it)."""
        self._parts.pop(partition, None)

    def _load(self, partition: int) -> _Partition:
        part = _Partition()
        for raw_key, raw_value in list(self.table.data.items()):
            if raw_value is None:
                continue
            key = _decode(raw_key)
            if not isinstance(key, list) or not key or key[0] != partition:
                continue
            kind, campaign_id = key[1], key[2]
            camp = part.campaigns.setdefault(campaign_id, _Campaign())
            value = _decode(raw_value)
            if kind == _POLICY:
                camp.policies[key[3]] = (value[0], _policy_decoder.decode(value[1]))
            elif kind == _COUNTER:
                camp.counters[(key[3], key[4], key[5], key[6])] = list(value)
            elif kind == _SEEN:
                camp.seen[key[3]] = value[0]
            elif kind == _SIGNAL:
                camp.signals[(key[3], key[4], key[5])] = (
                    value[0], _signal_decoder.decode(value[1])
                )
            elif kind == _ANNOUNCED:
                camp.announced[key[3]] = value[0]
        for camp in part.campaigns.values():
            camp.shifted = self._shift_plan(camp)  # announced before the restart
        return part

    def _campaign(self, part: _Partition, campaign_id: str) -> _Campaign:
        camp = part.campaigns.get(campaign_id)
        if camp is None:
            camp = part.campaigns[campaign_id] = _Campaign()
        return camp

    def is_known(self, partition: int, campaign_id: str) -> bool:
        """Known = a policy was set for it, or master data lists it."""
        if self.known_campaigns(campaign_id):
            return True
        camp = self.partition(partition).campaigns.get(campaign_id)
        return camp is not None and bool(camp.policies)

    def policy(self, partition: int, campaign_id: str, store_id: str | None) -> CouponPolicy | None:
        camp = self.partition(partition).campaigns.get(campaign_id)
        return camp.policy(store_id or ALL_STORES) if camp else None

    # --------------------------------------------------------------- records
    def _mark(self, part: _Partition, raw_key: bytes, raw_value: bytes | None) -> None:
        part.pending[raw_key] = raw_value

    def _mark_counter(
        self, part: _Partition, partition: int, campaign_id: str, key: CounterKey, entry: list[int]
    ) -> None:
        self._mark(part, _encode([partition, _COUNTER, campaign_id, *key]), _encode(entry))

    def flush(self, partition: int) -> list[Any]:
        """Write the partition's changed records; return the producer's futures.

        The futures are also kept until Kafka answers (:meth:`unacked`): a
        reservation is durable only once every write of its partition is, and
        the write holding its count may have been sent by another flush (the
        upkeep timer, a policy applied meanwhile). A record whose write fails
        is marked changed again, so the next flush sends its latest value.
        """
        part = self._parts.get(partition)
        if part is None or not part.pending:
            return []
        pending, part.pending = part.pending, {}
        sent = []
        for raw_key, raw_value in pending.items():
            if raw_value is None:
                self.table.data.pop(raw_key, None)
            else:
                self.table.data[raw_key] = raw_value
            written = self.table.send_changelog(partition, raw_key, raw_value)
            sent.append(written)
            if isinstance(written, asyncio.Future) and not written.done():
                part.unacked.add(written)
                written.add_done_callback(functools.partial(self._acked, part, raw_key))
        self.stats["records_written"] += len(sent)
        return sent

    def _acked(self, part: _Partition, raw_key: bytes, written: asyncio.Future[Any]) -> None:
        part.unacked.discard(written)
        if written.cancelled() or written.exception() is not None:
            self.stats["writes_failed"] += 1
            part.pending.setdefault(raw_key, self.table.data.get(raw_key))

    def unacked(self, partition: int) -> list[asyncio.Future[Any]]:
        """The partition's writes not yet acknowledged (sent by any flush)."""
        part = self._parts.get(partition)
        return list(part.unacked) if part else []

    def flush_all(self) -> list[Any]:
        return [fut for partition in list(self._parts) for fut in self.flush(partition)]

    # --------------------------------------------------------------- windows
    def _window_ms(self, camp: _Campaign, scope: str) -> int:
        """A scope counts in its own policy's window, a store without one in
        the campaign's, and a campaign without policy in the default."""
        policy = camp.policy(scope) or camp.policy(ALL_STORES)
        return policy.window_seconds * 1000 if policy else self.default_window_ms

    def _keys(
        self, camp: _Campaign, store_id: str, member_id: str, at_ms: int
    ) -> list[tuple[CounterKey, int, int | None, str]]:
        """The counters one coupon at a store counts in: (key, window end,
        limit or None, which limit: campaign/store/member)."""
        keys: list[tuple[CounterKey, int, int | None, str]] = []
        for scope, label in ((ALL_STORES, "campaign"), (store_id, "store")):
            window = self._window_ms(camp, scope)
            start = at_ms - at_ms % window
            end = start + window
            policy = camp.policy(scope)
            cap = policy.cap_per_window if policy is not None else None
            if cap is not None and label == "store" and camp.shifted:
                cap += sum(camp.shifted.get(scope, {}).values())
            keys.append(((scope, window, start, ""), end, cap, label))
            if policy is not None and policy.per_member_limit is not None:
                keys.append(((scope, window, start, member_id), end, policy.per_member_limit,
                             "member"))
        return keys

    # ------------------------------------------------------------ decisions
    def _verdict(self, camp: _Campaign, store_id: str) -> _Verdict:
        """Paused (policy, or stock short) beats throttled (pickup pressure) beats open."""
        scopes = (ALL_STORES,) if store_id == ALL_STORES else (ALL_STORES, store_id)
        for scope in scopes:
            policy = camp.policy(scope)
            if policy is not None and policy.paused:
                return _Verdict("paused", "policy_paused", _policy_evidence(policy), policy.set_at)
        if store_id != ALL_STORES:
            active = [
                signal for (store, _cause, _sku), (_o, signal) in sorted(camp.signals.items())
                if store == store_id and signal.active
            ]
            causes: tuple[tuple[str, State], ...] = (
                ("stock_cover", "paused"), ("pickup_pressure", "throttled"),
            )
            for cause, state in causes:
                for signal in active:
                    if signal.cause == cause:
                        return _Verdict(state, cause, _signal_evidence(signal), signal.ts)
        return _Verdict("open", "open", {}, 0)

    def _announce(
        self,
        part: _Partition,
        partition: int,
        campaign_id: str,
        camp: _Campaign,
        stores: Iterable[str],
        cause: tuple[str, dict[str, Any], int],
    ) -> list[CouponDecision]:
        """Decisions for the stores whose state changed. ``cause`` (reason,
        evidence, ts) explains a reopening: what cleared or who resumed."""
        decisions = []
        for store_id in sorted(set(stores)):
            verdict = self._verdict(camp, store_id)
            if camp.announced.get(store_id, "open") == verdict.state:
                continue
            if verdict.state == "open":
                verdict = _Verdict("open", cause[0], cause[1], cause[2])
            elif verdict.reason in ("pickup_pressure", "stock_cover"):
                found = self._alternatives(camp, store_id)
                if found:
                    verdict.evidence["alternatives"] = found
            camp.announced[store_id] = verdict.state
            self._mark(
                part, _encode([partition, _ANNOUNCED, campaign_id, store_id]),
                _encode([verdict.state]),
            )
            decisions.append(
                CouponDecision(
                    campaign_id=campaign_id,
                    store_id=store_id,
                    state=verdict.state,
                    reason=verdict.reason,
                    evidence=verdict.evidence,
                    ts=verdict.ts,
                )
            )
        self.stats["decisions"] += len(decisions)
        return decisions

    def _stores_of(self, campaign_id: str, camp: _Campaign) -> set[str]:
        stores = set(self.campaign_stores(campaign_id))
        stores.update(scope for scope in camp.policies)
        stores.update(store for store, _cause, _sku in camp.signals)
        stores.update(camp.announced)
        stores.update(key[0] for key in camp.counters)
        return stores

    def apply_policy(
        self,
        partition: int,
        offset: int,
        campaign_id: str,
        store_id: str | None,
        policy: CouponPolicy | None,
    ) -> list[CouponDecision]:
        """A policy record (None: the key was deleted); returns the decisions it causes."""
        part = self.partition(partition)
        camp = self._campaign(part, campaign_id)
        scope = store_id or ALL_STORES
        current = camp.policies.get(scope)
        if current is not None and current[0] >= offset:
            self.stats["replayed_skips"] += 1
            return []
        raw_key = _encode([partition, _POLICY, campaign_id, scope])
        if policy is None:
            camp.policies.pop(scope, None)
            self._mark(part, raw_key, None)
            why: tuple[str, dict[str, Any], int] = (
                "policy_removed", {"scope": scope}, int(self.clock() * 1000)
            )
        else:
            camp.policies[scope] = (offset, policy)
            self._mark(part, raw_key, _encode([offset, _json.encode(policy)]))
            why = ("policy_resumed", _policy_evidence(policy), policy.set_at)
        self.stats["policies"] += 1
        stores = self._stores_of(campaign_id, camp) if scope == ALL_STORES else {scope}
        decisions = self._announce(part, partition, campaign_id, camp, stores | {ALL_STORES}, why)
        return decisions + self._reshift(campaign_id, camp, why[2])

    def apply_signal(
        self, partition: int, offset: int, signal: CouponSignal
    ) -> list[CouponDecision]:
        """A live condition at a store; returns the decisions it causes."""
        part = self.partition(partition)
        camp = self._campaign(part, signal.campaign_id)
        key = (signal.store_id, signal.cause, signal.sku or "")
        current = camp.signals.get(key)
        if current is not None and current[0] >= offset:
            self.stats["replayed_skips"] += 1
            return []
        camp.signals[key] = (offset, signal)
        self._mark(
            part, _encode([partition, _SIGNAL, signal.campaign_id, *key]),
            _encode([offset, _json.encode(signal)]),
        )
        self.stats["signals"] += 1
        why = (f"{signal.cause}_cleared", _signal_evidence(signal), signal.ts)
        decisions = self._announce(
            part, partition, signal.campaign_id, camp, {signal.store_id}, why
        )
        return decisions + self._reshift(signal.campaign_id, camp, signal.ts)

    # -------------------------------------------------------------- steering
    def _alternatives(self, camp: _Campaign, store_id: str) -> list[dict[str, Any]]:
        """The nearest stores of the region with room for this campaign."""
        if not camp.signals:
            return []
        return steering.alternatives(
            store_id, camp.signals, self.neighbours,
            lambda other: self._verdict(camp, other).reason == "policy_paused",
        )

    def _shift_plan(self, camp: _Campaign) -> dict[str, dict[str, int]]:
        """Worked out at every signal of the campaign: nothing to do (the usual case)
        unless a policy shifts and a signal is in."""
        if not camp.signals or not any(p.shift_share for _o, p in camp.policies.values()):
            return {}
        return steering.shift_plan(
            camp.signals, lambda store: camp.policy(store), camp.policy(ALL_STORES),
            lambda store: self._alternatives(camp, store),
        )

    def _reshift(self, campaign_id: str, camp: _Campaign, ts: int) -> list[CouponDecision]:
        """Decisions for the stores whose shifted cap changed (each with where from)."""
        plan = self._shift_plan(camp)
        if plan == camp.shifted:
            return []
        decisions = []
        for store_id in sorted(set(plan) | set(camp.shifted)):
            now, before = plan.get(store_id, {}), camp.shifted.get(store_id, {})
            if now == before:
                continue
            extra = sum(now.values())
            policy = camp.policy(store_id)
            decisions.append(CouponDecision(
                campaign_id=campaign_id, store_id=store_id,
                state=self._verdict(camp, store_id).state,
                reason="cap_shifted" if extra else "cap_shift_ended",
                evidence={
                    "extra": extra,
                    "from": now or before,
                    "cap": policy.cap_per_window if policy is not None else None,
                },
                ts=ts,
            ))
        camp.shifted = plan
        self.stats["decisions"] += len(decisions)
        self.stats["cap_shifts"] += len(decisions)
        return decisions

    # ---------------------------------------------------------- reservations
    def reserve(
        self, partition: int, campaign_id: str, store_id: str, member_id: str, now_ms: int
    ) -> Reservation:
        """Grant one coupon if the store is open and every cap allows it, and
        count it against all of them; nothing in here awaits, so two
        reservations can never both see the last unit of a cap."""
        part = self.partition(partition)
        camp = part.campaigns.get(campaign_id)

        def refuse(reason: Reason, state: State = "open", **extra: Any) -> Reservation:
            self.stats[f"refused_{reason}"] += 1
            return Reservation(
                campaign_id=campaign_id, store_id=store_id, member_id=member_id,
                granted=False, reason=reason, state=state, remaining=extra.pop("remaining", {}),
                **extra,
            )

        if camp is None or not camp.policies:
            if not self.known_campaigns(campaign_id):
                return refuse("unknown_campaign")
            camp = self._campaign(part, campaign_id)
        verdict = self._verdict(camp, store_id)
        if verdict.state != "open":
            reason: Reason = (
                "throttled" if verdict.state == "throttled"
                else "stock_short" if verdict.reason == "stock_cover" else "paused"
            )
            found = self._alternatives(camp, store_id) if reason != "paused" else []
            return refuse(
                reason, verdict.state, evidence=verdict.evidence,
                alternatives=found or None, hint=steering.hint(found),
            )
        keys = self._keys(camp, store_id, member_id, now_ms)
        remaining: dict[str, int | None] = {"campaign": None, "store": None, "member": None}
        bound_end: int | None = None
        for key, end, limit, label in keys:
            if limit is None:
                continue
            entry = camp.counters.get(key)
            left = limit - (entry[1] if entry else 0)
            if left <= 0:
                caps: dict[str, Reason] = {"campaign": "cap_reached", "store": "store_cap_reached"}
                reason = caps.get(label, "member_limit")
                remaining[label] = 0
                return refuse(reason, remaining=remaining, window_end=end)
            previous = remaining[label]
            remaining[label] = left - 1 if previous is None else min(previous, left - 1)
            bound_end = end if bound_end is None else min(bound_end, end)
        for key, _end, _limit, _label in keys:
            entry = camp.counters.get(key)
            if entry is None:
                entry = camp.counters[key] = [-1, 0]
            entry[1] += 1
            self._mark_counter(part, partition, campaign_id, key, entry)
        self.stats["granted"] += 1
        return Reservation(
            campaign_id=campaign_id, store_id=store_id, member_id=member_id,
            granted=True, reason="granted", state="open",
            reservation_id=new_reservation_id(), remaining=remaining, window_end=bound_end,
        )

    # -------------------------------------------------------- coupon events
    def observe(self, partition: int, offset: int, events: Iterable[Coupon], now_ms: int) -> int:
        """Count the ``issued`` events of one coupon-stream message; returns how many counted.

        Events of windows that have already ended are ignored (a replay of
        history cannot fill a cap that no longer applies).
        """
        part = self.partition(partition)
        deltas: dict[tuple[str, CounterKey], int] = defaultdict(int)
        remembered: list[tuple[str, _Campaign, str, int]] = []
        counted = 0
        for event in events:
            if event.action != "issued":
                continue
            if is_reservation_id(event.coupon_id):
                self.stats["issued_reserved"] += 1
                continue
            camp = self._campaign(part, event.campaign_id)
            if event.coupon_id in camp.seen:
                self.stats["issued_duplicates"] += 1
                continue
            ts = int(event.ts)
            keys = [
                (key, end) for key, end, _limit, _label in
                self._keys(camp, event.store_id, event.member_id, ts) if end > now_ms
            ]
            if not keys:
                self.stats["issued_stale"] += 1
                continue
            expires = max(end for _key, end in keys)
            camp.seen[event.coupon_id] = expires
            remembered.append((event.campaign_id, camp, event.coupon_id, expires))
            for key, _end in keys:
                deltas[(event.campaign_id, key)] += 1
            counted += 1
        for (campaign_id, key), delta in deltas.items():
            camp = part.campaigns[campaign_id]
            entry = camp.counters.get(key)
            if entry is None:
                entry = camp.counters[key] = [-1, 0]
            elif entry[0] >= offset:
                self.stats["replayed_skips"] += 1
                continue
            entry[0] = offset
            entry[1] += delta
            self._mark_counter(part, partition, campaign_id, key, entry)
        for campaign_id, _camp, coupon_id, expires in remembered:
            raw_key = _encode([partition, _SEEN, campaign_id, coupon_id])
            self._mark(part, raw_key, _encode([expires]))
        self.stats["issued_counted"] += counted
        return counted

    # ---------------------------------------------------------------- upkeep
    def purge(self, now_ms: int) -> int:
        """Forget counters of ended windows and remembered ids past their window."""
        purged = 0
        for partition, part in self._parts.items():
            for campaign_id, camp in part.campaigns.items():
                for key in [k for k in camp.counters if k[2] + k[1] <= now_ms]:
                    del camp.counters[key]
                    self._mark(part, _encode([partition, _COUNTER, campaign_id, *key]), None)
                    purged += 1
                for coupon_id in [c for c, expires in camp.seen.items() if expires <= now_ms]:
                    del camp.seen[coupon_id]
                    self._mark(part, _encode([partition, _SEEN, campaign_id, coupon_id]), None)
                    purged += 1
        return purged

    # ---------------------------------------------------------------- status
    def status(
        self, partition: int, campaign_id: str, store_id: str | None, now_ms: int
    ) -> dict[str, Any]:
        """Caps, counts in the current windows and state, as JSON-ready data."""
        part = self.partition(partition)
        camp = part.campaigns.get(campaign_id) or _Campaign()
        scopes = [ALL_STORES] + ([store_id] if store_id else [])
        windows: dict[str, Any] = {}
        for scope in scopes:
            window = self._window_ms(camp, scope)
            start = now_ms - now_ms % window
            policy = camp.policy(scope)
            entry = camp.counters.get((scope, window, start, ""))
            count = entry[1] if entry else 0
            cap = policy.cap_per_window if policy else None
            shifted_in = sum(camp.shifted.get(scope, {}).values())
            if cap is not None and scope != ALL_STORES:
                cap += shifted_in
            windows[scope] = {
                "window_start": start,
                "window_end": start + window,
                "count": count,
                "cap": cap,
                "remaining": None if cap is None else max(0, cap - count),
                "shifted_in": shifted_in,
                "per_member_limit": policy.per_member_limit if policy else None,
                "members_counted": sum(
                    1 for k in camp.counters if k[:3] == (scope, window, start) and k[3]
                ),
            }
        verdict = self._verdict(camp, store_id or ALL_STORES)
        found = (
            self._alternatives(camp, store_id)
            if store_id and verdict.reason in ("pickup_pressure", "stock_cover") else []
        )
        return {
            "alternatives": found,
            "hint": steering.hint(found),
            "campaign_id": campaign_id,
            "store_id": store_id,
            "partition": partition,
            "known": self.is_known(partition, campaign_id),
            "state": verdict.state,
            "reason": verdict.reason,
            "evidence": verdict.evidence,
            "policies": {
                scope: msgspec.to_builtins(policy)
                for scope, (_offset, policy) in sorted(camp.policies.items())
                if scope in scopes
            },
            "windows": windows,
            "signals": [
                msgspec.to_builtins(signal)
                for (store, _c, _s), (_o, signal) in sorted(camp.signals.items())
                if signal.active and (store_id is None or store == store_id)
                and signal.cause != "pickup_room"  # room is no condition against it
            ],
        }


def _policy_evidence(policy: CouponPolicy) -> dict[str, Any]:
    return {
        "scope": policy.store_id or ALL_STORES,
        "paused": policy.paused,
        "set_by": policy.set_by,
        "set_at": policy.set_at,
    }


def _signal_evidence(signal: CouponSignal) -> dict[str, Any]:
    evidence = {"cause": signal.cause, **signal.evidence}
    if signal.sku:
        evidence["sku"] = signal.sku
    return evidence
