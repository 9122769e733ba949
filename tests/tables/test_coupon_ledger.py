"""The coupon ledger's rules: caps, per-member limits, states from policies and
signals, counting issued coupons exactly under replays.

Kafka and Faust are replaced by one ordered changelog (what the broker would
hold), so a crash can be tried at every position of it. The real-broker
version (a worker process, HTTP, SIGKILL) is tests/coupons/test_service.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest

from ctower.schemas.control import ALL_STORES, CouponPolicy, CouponSignal
from ctower.schemas.events import Coupon
from ctower.tables.coupon_ledger import CouponLedger, is_reservation_id

HOUR = 3_600_000
T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC, on the hour
P = 0


@dataclass
class Table:
    """A table whose changelog is a list, in the order records were sent."""

    data: dict[bytes, bytes] = field(default_factory=dict)
    log: list[tuple[bytes, bytes | None]] = field(default_factory=list)

    def send_changelog(self, partition: int | None, key: Any, value: Any) -> None:
        assert partition == P
        self.log.append((key, value))

    def recovered(self, upto: int) -> Table:
        """A fresh table holding the first ``upto`` changelog records (Faust recovery)."""
        table = Table()
        for key, value in self.log[:upto]:
            if value is None:
                table.data.pop(key, None)
            else:
                table.data[key] = value
            table.log.append((key, value))
        return table


class Clock:
    def __init__(self, ms: int = T0 + 60_000) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


def ledger(table: Table | None = None, clock: Clock | None = None, **kwargs: Any) -> CouponLedger:
    return CouponLedger(
        table=table or Table(), clock=clock or Clock(), default_window_ms=HOUR, **kwargs
    )


def policy(campaign: str = "C1", store: str | None = None, **fields: Any) -> CouponPolicy:
    return CouponPolicy(
        campaign_id=campaign, store_id=store, set_by="ops", set_at=T0, **fields
    )


def signal(cause: str, active: bool, store: str = "S1", sku: str | None = None,
           ts: int = T0 + 1000, **evidence: Any) -> CouponSignal:
    return CouponSignal(
        campaign_id="C1", store_id=store, cause=cause, sku=sku, active=active,  # type: ignore[arg-type]
        evidence=evidence or {"pressure": 0.9, "threshold": 0.8}, ts=ts,
    )


def issued(coupon_id: str, store: str = "S1", member: str = "M1", ts: int = T0 + 1000,
           action: str = "issued", campaign: str = "C1") -> Coupon:
    return Coupon(
        coupon_id=coupon_id, campaign_id=campaign, store_id=store, member_id=member, ts=ts,
        action=action,  # type: ignore[arg-type]
    )


def reserve(led: CouponLedger, store: str = "S1", member: str = "M1", at: int = T0 + 60_000,
            campaign: str = "C1") -> Any:
    return led.reserve(P, campaign, store, member, at)


def test_campaign_cap_is_exact_and_says_what_remains() -> None:
    led = ledger()
    led.apply_policy(P, 0, "C1", None, policy(cap_per_window=3))
    answers = [reserve(led, member=f"M{i}") for i in range(5)]
    assert [a.granted for a in answers] == [True, True, True, False, False]
    assert [a.remaining["campaign"] for a in answers[:3]] == [2, 1, 0]
    assert answers[3].reason == "cap_reached"
    assert answers[3].window_end == T0 + HOUR
    assert answers[0].window_end == T0 + HOUR
    ids = {a.reservation_id for a in answers[:3]}
    assert len(ids) == 3 and all(is_reservation_id(i) for i in ids)  # type: ignore[arg-type]
    assert answers[3].reservation_id is None
    # the next window starts from zero
    assert reserve(led, at=T0 + HOUR + 5).granted


def test_store_cap_and_per_member_limit_count_within_their_windows() -> None:
    led = ledger()
    led.apply_policy(P, 0, "C1", None, policy(cap_per_window=100, per_member_limit=2))
    led.apply_policy(P, 1, "C1", "S1", policy(store="S1", cap_per_window=3, window_seconds=600))
    assert reserve(led, "S1", "M1").granted
    assert reserve(led, "S1", "M1").granted
    refused = reserve(led, "S1", "M1")
    assert (refused.granted, refused.reason, refused.remaining["member"]) == (
        False, "member_limit", 0
    )
    assert reserve(led, "S2", "M1").reason == "member_limit"  # the limit is campaign-wide
    granted = reserve(led, "S1", "M2")
    assert granted.granted and granted.remaining == {"campaign": 97, "store": 0, "member": 1}
    assert granted.window_end == T0 + 600_000  # the store's 10-minute window ends first
    store_full = reserve(led, "S1", "M3")
    assert (store_full.reason, store_full.window_end) == ("store_cap_reached", T0 + 600_000)
    assert reserve(led, "S2", "M3").granted  # other stores are not capped by S1's cap
    assert reserve(led, "S1", "M3", at=T0 + 600_000).granted  # S1's next 10 minutes
    status = led.status(P, "C1", "S1", T0 + 600_000)
    assert status["windows"][ALL_STORES]["count"] == 5
    assert status["windows"]["S1"]["count"] == 1


def test_unknown_campaign_paused_and_master_data() -> None:
    led = ledger(known_campaigns=lambda c: c == "MD1")
    assert reserve(led, campaign="NOPE").reason == "unknown_campaign"
    assert not led.is_known(P, "NOPE")
    assert reserve(led, campaign="MD1").granted  # in master data, no cap: open
    led.apply_policy(P, 0, "C1", None, policy(paused=True))
    paused = reserve(led)
    assert (paused.granted, paused.reason, paused.state) == (False, "paused", "paused")
    assert paused.evidence == {"scope": "*", "paused": True, "set_by": "ops", "set_at": T0}
    decisions = led.apply_policy(P, 1, "C1", None, policy(paused=False))
    assert [(d.store_id, d.state, d.reason) for d in decisions] == [
        (ALL_STORES, "open", "policy_resumed")
    ]
    assert reserve(led).granted


def test_signals_throttle_pause_and_reopen_with_evidence() -> None:
    led = ledger(campaign_stores=lambda c: ["S1", "S2"])
    led.apply_policy(P, 0, "C1", None, policy(cap_per_window=10))
    [throttled] = led.apply_signal(P, 0, signal("pickup_pressure", True))
    assert (throttled.store_id, throttled.state, throttled.reason) == ("S1", "throttled",
                                                                      "pickup_pressure")
    assert throttled.evidence == {"cause": "pickup_pressure", "pressure": 0.9, "threshold": 0.8}
    assert throttled.ts == T0 + 1000
    assert reserve(led).reason == "throttled"
    assert reserve(led, store="S2").granted
    # stock short beats pickup pressure
    [paused] = led.apply_signal(P, 1, signal("stock_cover", True, sku="K9", cover_hours=1.5))
    assert (paused.state, paused.reason, paused.evidence["sku"]) == ("paused", "stock_cover", "K9")
    assert reserve(led).reason == "stock_short"
    [back] = led.apply_signal(P, 2, signal("stock_cover", False, sku="K9", ts=T0 + 5000))
    assert (back.state, back.reason) == ("throttled", "pickup_pressure")
    assert led.apply_signal(P, 3, signal("pickup_pressure", True)) == []  # no change, no record
    [opened] = led.apply_signal(
        P, 4, signal("pickup_pressure", False, ts=T0 + 9000, pressure=0.55, threshold=0.6)
    )
    assert (opened.state, opened.reason, opened.ts) == (
        "open", "pickup_pressure_cleared", T0 + 9000
    )
    assert opened.evidence["pressure"] == 0.55
    # a replay of an older signal does not undo the newer one
    assert led.apply_signal(P, 0, signal("pickup_pressure", True)) == []
    assert reserve(led).granted
    # a campaign-wide pause is announced at every store of the campaign, and lifted
    decisions = led.apply_policy(P, 5, "C1", None, policy(paused=True))
    assert sorted(d.store_id for d in decisions) == ["*", "S1", "S2"]
    assert {d.state for d in decisions} == {"paused"}


def test_issued_events_count_once_and_reservations_are_not_counted_twice() -> None:
    clock = Clock()
    led = ledger(clock=clock)
    led.apply_policy(P, 0, "C1", None, policy(cap_per_window=4, per_member_limit=3))
    granted = reserve(led)
    assert granted.granted
    counted = led.observe(P, 10, [
        issued(granted.reservation_id),  # the reserved coupon itself
        issued("X1"), issued("X1"),  # a producer's duplicate
        issued("X2", action="claimed"),
        issued("OLD", ts=T0 - 10),  # a window that has ended
    ], now_ms=clock.ms)
    assert counted == 1
    assert led.observe(P, 11, [issued("X1")], now_ms=clock.ms) == 0  # duplicate again
    assert led.status(P, "C1", None, clock.ms)["windows"][ALL_STORES]["count"] == 2
    # coupons issued elsewhere fill the cap and the member's limit
    led.observe(P, 12, [issued("X3", member="M2"), issued("X4", member="M1")], now_ms=clock.ms)
    assert reserve(led, member="M9").reason == "cap_reached"
    led.apply_policy(P, 1, "C1", None, policy(cap_per_window=10, per_member_limit=3))
    assert reserve(led, member="M1").reason == "member_limit"


def test_state_survives_a_restart_without_announcing_again() -> None:
    table = Table()
    led = ledger(table)
    led.apply_policy(P, 0, "C1", None, policy(cap_per_window=5, per_member_limit=2))
    led.apply_signal(P, 0, signal("pickup_pressure", True, store="S2"))
    for member in ("M1", "M1", "M2"):
        assert reserve(led, member=member).granted
    led.observe(P, 3, [issued("X1", member="M3")], now_ms=T0 + 60_000)
    led.flush(P)
    again = ledger(table.recovered(len(table.log)))
    before = led.status(P, "C1", "S2", T0 + 60_000)
    assert again.status(P, "C1", "S2", T0 + 60_000) == before
    assert before["windows"][ALL_STORES]["count"] == 4 and before["state"] == "throttled"
    assert reserve(again, member="M1").reason == "member_limit"
    assert again.observe(P, 3, [issued("X1", member="M3")], now_ms=T0 + 60_000) == 0
    assert again.apply_signal(P, 1, signal("pickup_pressure", True, store="S2")) == []


class KafkaTable(Table):
    """A table whose changelog writes are futures Kafka answers later."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[bytes, bytes | None, asyncio.Future[None]]] = []

    def send_changelog(self, partition: int | None, key: Any, value: Any) -> asyncio.Future[None]:
        super().send_changelog(partition, key, value)
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.writes.append((key, value, written))
        return written


def test_unacked_writes_are_known_whoever_flushed_them_and_failed_ones_are_sent_again() -> None:
    async def scenario() -> None:
        table = KafkaTable()
        led = ledger(table)
        led.apply_policy(P, 0, "C1", None, policy(cap_per_window=5))
        led.flush(P)  # e.g. the policy agent
        assert reserve(led).granted
        sent = led.flush(P)  # e.g. the upkeep timer, not the reservation's caller
        assert len(sent) == 2  # the campaign's and the store's counters
        assert set(led.unacked(P)) == {written for _k, _v, written in table.writes}
        policy_write, (counter_key, _value, counter_write) = table.writes[0][2], table.writes[1]
        policy_write.set_result(None)
        counter_write.set_exception(RuntimeError("broker gone"))
        for _k, _v, written in table.writes[2:]:
            written.set_result(None)
        await asyncio.sleep(0)
        assert led.unacked(P) == [] and led.stats["writes_failed"] == 1

        # the failed record goes again with the next flush, and Kafka then has the count
        resent = led.flush(P)
        assert [key for key, _v, _w in table.writes[-len(resent):]] == [counter_key]
        in_kafka = Table()
        for key, value, written in table.writes:
            if (written.done() and written.exception() is None) or written in resent:
                in_kafka.log.append((key, value))
        recovered = ledger(in_kafka.recovered(len(in_kafka.log)))
        assert recovered.status(P, "C1", None, T0 + 60_000)["windows"][ALL_STORES]["count"] == 1

    asyncio.run(scenario())


def test_purge_forgets_ended_windows_in_the_changelog_too() -> None:
    table = Table()
    clock = Clock()
    led = ledger(table, clock)
    led.apply_policy(P, 0, "C1", None, policy(cap_per_window=5))
    reserve(led)
    led.observe(P, 1, [issued("X1")], now_ms=clock.ms)
    led.flush(P)
    assert led.purge(T0 + HOUR - 1) == 0
    assert led.purge(T0 + HOUR) == 3  # campaign and store counters, one remembered id
    led.flush(P)
    recovered = table.recovered(len(table.log))
    assert len(recovered.data) == 1  # the policy
    assert ledger(recovered).policy(P, "C1", None) == policy(cap_per_window=5)


def messages() -> list[list[Coupon]]:
    """Coupon-stream messages: single events and batch envelopes, 3 stores, 4 members."""
    out = []
    n = 0
    for i in range(12):
        batch = []
        for _ in range(1 + i % 3):
            batch.append(issued(f"X{n}", store=f"S{n % 3}", member=f"M{n % 4}",
                                ts=T0 + 1000 + n))
            n += 1
        if i % 4 == 1:
            batch.append(issued(f"X{n - 1}", store=f"S{(n - 1) % 3}", member=f"M{(n - 1) % 4}",
                                ts=T0 + 1000 + n))  # a duplicate inside the envelope
        out.append(batch)
    return out


def counts(led: CouponLedger) -> dict[str, Any]:
    status = led.status(P, "C1", None, T0 + 60_000)
    per_store = {s: led.status(P, "C1", s, T0 + 60_000)["windows"][s]["count"]
                 for s in ("S0", "S1", "S2")}
    return {"total": status["windows"][ALL_STORES]["count"], **per_store,
            "members": status["windows"][ALL_STORES]["members_counted"]}


@pytest.mark.parametrize("flush_every", [1, 3])
def test_a_crash_anywhere_then_a_replay_from_the_last_commit_counts_exactly(
    flush_every: int,
) -> None:
    """The worker folds messages, flushes every ``flush_every`` and commits
    after the flush. A crash may cut the changelog at any record; the next
    worker recovers that prefix and replays from the last commit whose
    flush is wholly in it. The counts must equal a run without a crash."""
    batches = messages()
    now = T0 + 60_000

    def run(table: Table, start: int, commits: list[tuple[int, int]]) -> CouponLedger:
        led = ledger(table)
        if start == 0:
            led.apply_policy(P, 0, "C1", None, policy(cap_per_window=1000, per_member_limit=100))
        for offset in range(start, len(batches)):
            led.observe(P, offset, batches[offset], now_ms=now)
            if (offset + 1) % flush_every == 0 or offset == len(batches) - 1:
                led.flush(P)
                commits.append((offset + 1, len(table.log)))  # (next offset, log length)
        return led

    full_commits: list[tuple[int, int]] = []
    full_table = Table()
    expected = counts(run(full_table, 0, full_commits))
    assert expected["total"] == sum(len({e.coupon_id for e in b}) for b in batches)
    for cut in range(len(full_table.log) + 1):
        durable = [(nxt, length) for nxt, length in full_commits if length <= cut]
        restart_at = durable[-1][0] if durable else 0
        recovered = full_table.recovered(cut)
        if restart_at == 0 and not recovered.data:
            recovered = Table()
        led = run(recovered, restart_at if recovered.data else 0, [])
        assert counts(led) == expected, f"cut at record {cut}, replay from {restart_at}"


NEAR = {"S1": [("S2", 1.2), ("S3", 2.5), ("S4", 4.0)], "S2": [("S1", 1.2)]}


def room(store: str, pressure: float, active: bool = True, ts: int = T0 + 500) -> CouponSignal:
    return signal("pickup_room", active, store=store, ts=ts, pressure=pressure, threshold=0.5)


def test_a_throttled_store_sends_its_customers_to_the_nearest_stores_with_room() -> None:
    led = ledger(campaign_stores=lambda c: ["S1", "S2", "S3", "S4"],
                 neighbours=lambda s: NEAR.get(s, []))
    led.apply_policy(P, 0, "C1", None, policy(cap_per_window=100))
    assert led.apply_signal(P, 1, room("S2", 0.3)) == []  # room changes no state
    led.apply_signal(P, 2, room("S3", 0.1))
    led.apply_signal(P, 3, signal("stock_cover", True, store="S3", sku="K1"))  # S3 is short
    led.apply_signal(P, 4, room("S4", 0.2))
    led.apply_policy(P, 5, "C1", "S4", policy(store="S4", paused=True))  # S4 paused there
    [throttled] = led.apply_signal(P, 6, signal("pickup_pressure", True))
    assert throttled.evidence["alternatives"] == [{"store_id": "S2", "km": 1.2, "pressure": 0.3}]
    refused = reserve(led)
    assert (refused.reason, refused.hint) == ("throttled", "not here: try S2, 1.2 km, pressure 0.3")
    assert refused.alternatives == [{"store_id": "S2", "km": 1.2, "pressure": 0.3}]
    assert led.status(P, "C1", "S1", T0 + 60_000)["hint"] == refused.hint
    assert led.status(P, "C1", None, T0 + 60_000)["signals"] == [
        msgspec.to_builtins(s) for s in (
            signal("pickup_pressure", True), signal("stock_cover", True, store="S3", sku="K1"),
        )
    ]  # room is no condition against the campaign
    led.apply_signal(P, 7, room("S2", 0.7, active=False))  # S2 filled up
    refused = reserve(led)
    assert (refused.reason, refused.alternatives, refused.hint) == ("throttled", None, None)
    assert reserve(led, store="S2").granted  # filling up does not throttle by itself


def test_a_policy_shifts_part_of_a_throttled_stores_cap_while_the_throttle_lasts() -> None:
    table = Table()
    led = ledger(table, campaign_stores=lambda c: ["S1", "S2", "S3"],
                 neighbours=lambda s: NEAR.get(s, []))
    led.apply_policy(P, 0, "C1", None, policy(cap_per_window=1000, shift_share=0.5))
    led.apply_policy(P, 1, "C1", "S1", policy(store="S1", cap_per_window=10))
    led.apply_policy(P, 2, "C1", "S2", policy(store="S2", cap_per_window=2))
    led.apply_policy(P, 3, "C1", "S3", policy(store="S3", cap_per_window=2))
    led.apply_signal(P, 4, room("S2", 0.3))
    led.apply_signal(P, 5, room("S3", 0.1))
    decisions = led.apply_signal(P, 6, signal("pickup_pressure", True))
    assert [(d.store_id, d.state, d.reason) for d in decisions] == [
        ("S1", "throttled", "pickup_pressure"),
        ("S2", "open", "cap_shifted"), ("S3", "open", "cap_shifted"),
    ]
    assert decisions[1].evidence == {"extra": 3, "from": {"S1": 3}, "cap": 2}  # 5 over two
    assert decisions[2].evidence == {"extra": 2, "from": {"S1": 2}, "cap": 2}
    granted = [reserve(led, store="S2", member=f"M{i}").granted for i in range(6)]
    assert granted == [True] * 5 + [False]  # 2 of its own, 3 shifted
    assert led.status(P, "C1", "S2", T0 + 60_000)["windows"]["S2"]["cap"] == 5
    # a restart recomputes what is shifted from the policies and signals
    led.flush(P)
    restarted = ledger(table.recovered(len(table.log)), neighbours=lambda s: NEAR.get(s, []))
    assert reserve(restarted, store="S3", member="X").remaining["store"] == 3
    # the throttle ends: the shift ends with it, announced at the stores that had it
    decisions = led.apply_signal(P, 7, signal("pickup_pressure", False, ts=T0 + 9000))
    assert [(d.store_id, d.reason) for d in decisions] == [
        ("S1", "pickup_pressure_cleared"), ("S2", "cap_shift_ended"), ("S3", "cap_shift_ended"),
    ]
    assert decisions[1].evidence["extra"] == 0 and decisions[1].ts == T0 + 9000
    assert reserve(led, store="S2", member="M9").reason == "store_cap_reached"
    # a store without a store cap shifts nothing (a campaign cap already flows)
    led.apply_policy(P, 8, "C1", "S1", None)
    assert [d.reason for d in led.apply_signal(P, 9, signal("pickup_pressure", True))] == [
        "pickup_pressure"
    ]
