"""Shopping guides in the simulation (shifts, daily caps, drop-outs), and the guide and
complaint-SLA incidents found by the rules within their window + 5 s, with nothing
where nothing was injected."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from datetime import time as dt_time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ctower.rules.backtest import run_backtest
from ctower.rules.config import Rules
from ctower.schemas.events import Logistics, Order, Service
from ctower.schemas.master_data import load_master_data
from ctower.simulator.chain import build_chain
from ctower.simulator.clock import CHINA_TZ, local_hour
from ctower.simulator.command import simulate
from ctower.simulator.generator import SimConfig, Simulator
from ctower.simulator.jsonl import read_jsonl
from ctower.simulator.truth import load_truth
from tests.simulator.conftest import RUN_SEED

SLACK_MS = 5_000
HOUR = 3_600_000
GUIDE_KINDS = ("guide_capacity", "guide_late")


def _incident(run: Any, kind: str) -> dict[str, Any]:
    (found,) = [i for i in run.truth["incidents"] if i["kind"] == kind]
    return found


def test_guide_deliveries_name_a_guide_of_their_store_once_one_takes_them(
    incident_run: Any,
) -> None:
    chain = build_chain(RUN_SEED)
    guides = {g.guide_id: g for g in chain.guides}
    orders: dict[str, str] = {}
    taken: dict[str, str] = {}
    per_guide_day: Counter[tuple[str, int]] = Counter()
    checked = 0
    for _, ev in incident_run.valid():
        if ev.stream == "order":
            orders[ev.order_id] = ev.store_id  # type: ignore[attr-defined]
        if not isinstance(ev, Logistics) or ev.origin_type != "guide":
            continue
        checked += 1
        assert ev.carrier == "GUIDE" and ev.origin_id == orders[ev.order_id]
        if ev.status == "created":
            assert ev.shipment_id not in taken
            continue
        assert ev.guide_id is not None, ev  # from the pick-up on, the guide is named
        guide = guides[ev.guide_id]
        assert guide.store_id == ev.origin_id
        if ev.status == "picked_up":
            assert guide.on_shift(local_hour(ev.ts - 600_000)) or guide.on_shift(  # type: ignore[operator]
                local_hour(ev.ts))  # type: ignore[arg-type]
            per_guide_day[(ev.guide_id, (ev.ts + 8 * HOUR) // (24 * HOUR))] += 1  # type: ignore[operator]
        assert taken.setdefault(ev.shipment_id, ev.guide_id) == ev.guide_id
    assert checked > 500 and len(taken) > 100
    assert all(n <= guides[g].daily_cap for (g, _), n in per_guide_day.items())
    assert len({g for g, _ in per_guide_day}) > 30  # the work is spread over the guides


def test_a_day_of_guides_keeps_shifts_caps_and_drop_outs() -> None:
    """A whole simulated day: nobody takes a delivery off shift, after dropping out or
    beyond the cap; at night no guide delivery is offered."""
    start = datetime.combine(datetime.now(CHINA_TZ).date() - timedelta(days=3),
                             dt_time(6, 0), tzinfo=CHINA_TZ)
    sim = Simulator(SimConfig(seed=11, events=60_000, sim_rate=0.7,
                              start_ms=int(start.timestamp() * 1000)))
    created: dict[str, int] = {}
    picked: list[tuple[str, int, int]] = []
    orders: list[Order] = []
    for stream, ev in sim.events():
        if isinstance(ev, Order) and ev.status == "created":
            orders.append(ev)
        if stream == "logistics" and ev.origin_type == "guide":  # type: ignore[attr-defined]
            if ev.status == "created":  # type: ignore[attr-defined]
                created[ev.shipment_id] = ev.ts  # type: ignore[attr-defined, assignment]
            elif ev.status == "picked_up":  # type: ignore[attr-defined]
                picked.append((ev.guide_id, created[ev.shipment_id], ev.ts))  # type: ignore[attr-defined, arg-type]
    desk = sim.generator.guides  # type: ignore[union-attr]
    guides = {g.guide_id: g for g in sim.chain.guides}
    dropped = {s.guide.guide_id: s.dropped_at for states in desk.by_store for s in states
               if s.dropped_at}
    assert dropped, "some guide drops out in a day"
    taken_at: Counter[str] = Counter()
    for guide_id, _, pick in picked:
        taken = pick - 600_000  # picked up 3 to 10 minutes after a guide takes it
        assert guides[guide_id].on_shift(local_hour(taken)) or guides[guide_id].on_shift(
            local_hour(pick))
        assert not (guide_id in dropped and taken > dropped[guide_id])
        taken_at[guide_id] += 1
    assert all(taken_at[g] <= guides[g].daily_cap for g in taken_at)
    # no guide works at night: the stores offer a carrier then
    night = [ev for ev in orders if not 8 <= local_hour(ev.ts) < 22]  # type: ignore[arg-type]
    assert night and not [ev for ev in night if ev.fulfillment == "guide_delivery"]
    assert any(ev.fulfillment == "guide_delivery" for ev in orders)


def test_guides_at_their_cap_leave_the_orders_to_a_carrier_instead_of_a_queue() -> None:
    """A busy morning at 150 events per simulated second: guides reach their caps within
    the hour; the stores then stop offering guide delivery, so orders do not pile up
    waiting for a guide who will never come today."""
    start = datetime.combine(datetime.now(CHINA_TZ).date() - timedelta(days=3),
                             dt_time(9, 0), tzinfo=CHINA_TZ)
    sim = Simulator(SimConfig(seed=5, events=400_000, sim_rate=150,
                              start_ms=int(start.timestamp() * 1000)))
    created: dict[str, int] = {}
    waits: list[int] = []
    for stream, ev in sim.events():
        if stream == "logistics" and ev.origin_type == "guide":  # type: ignore[attr-defined]
            if ev.status == "created":  # type: ignore[attr-defined]
                created[ev.shipment_id] = ev.ts  # type: ignore[attr-defined, assignment]
            elif ev.status == "picked_up":  # type: ignore[attr-defined]
                waits.append(ev.ts - created[ev.shipment_id])  # type: ignore[attr-defined, operator]
    desk = sim.generator.guides  # type: ignore[union-attr]
    states = [s for store in desk.by_store for s in store]
    full = [s for s in states if s.assigned == s.guide.daily_cap]
    assert len(full) >= len(states) // 3  # the late shift starts at 13:00
    assert all(s.assigned <= s.guide.daily_cap for s in states)
    # picked up 3-10 minutes after a guide took it: a longer gap is a wait for a guide
    waited = [w for w in waits if w > 10 * 60_000]
    assert len(waits) > 1_000 and len(waited) <= len(waits) // 100


@pytest.fixture(scope="module")
def master_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_chain(RUN_SEED).write(tmp_path_factory.mktemp("chain") / "master.json")


def test_guide_incidents_are_found_within_their_window_and_nothing_else(
    incident_run: Any, master_path: Path,
) -> None:
    result = run_backtest(incident_run.out, Rules(), None, load_master_data(master_path),
                          tick_ms=600_000)
    alerts = [a for a in result.live.opened() if a.kind in GUIDE_KINDS]
    capacity, late = _incident(incident_run, "guide_capacity"), _incident(incident_run,
                                                                        "guide_late")
    assert sorted((a.kind, a.store_id) for a in alerts) == [
        ("guide_capacity", capacity["scope"]["store_id"]),
        ("guide_late", late["scope"]["store_id"]),
    ]  # nothing where nothing was injected
    for alert, incident in zip(sorted(alerts, key=lambda a: a.kind), (capacity, late),
                               strict=True):
        detectable = incident["expect"]["detectable_ts"]
        assert detectable is not None
        assert incident["start_ts"] <= detectable <= incident["end_ts"]
        assert detectable <= alert.opened_at <= detectable + SLACK_MS, incident["kind"]
    (late_alert,) = [a for a in alerts if a.kind == "guide_late"]
    assert late_alert.evidence["guide_id"] == late["scope"]["guide_id"]
    (capacity_alert,) = [a for a in alerts if a.kind == "guide_capacity"]
    assert capacity_alert.evidence["waiting"] >= 3
    assert capacity["expect"]["waited"] >= 3 and capacity["expect"]["longest_wait_min"] > 20


@pytest.fixture(scope="module")
def day_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """More than a simulated day from noon (about 100k events at one per simulated
    second): long enough for a complaint's 24 h SLA to run out."""
    folder = tmp_path_factory.mktemp("sla")
    start = datetime.combine(datetime.now(CHINA_TZ).date() - timedelta(days=3),
                             dt_time(12, 0), tzinfo=CHINA_TZ)
    out, truth = folder / "run.jsonl", folder / "truth.json"
    result = CliRunner().invoke(simulate, [
        "--seed", str(RUN_SEED), "--start", start.isoformat(), "--events", "100000",
        "--sim-rate", "1", "--incidents", "complaint_sla", "--no-kafka", "--out", str(out),
        "--truth", str(truth), "--quiet",
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, load_truth(truth)


def test_an_unanswered_complaint_is_warned_before_its_sla_runs_out_and_no_other(
    day_run: tuple[Path, dict[str, Any]],
) -> None:
    out, truth = day_run
    (incident,) = truth["incidents"]
    expect = incident["expect"]
    assert expect["detectable_ts"] == expect["warn_ts"] == expect["opened_at"] + 22 * HOUR
    # every complaint, from the file: when it opened and when (if) it was answered
    opened: dict[str, int] = {}
    closed: dict[str, int] = {}
    last = 0
    for item in read_jsonl(out):
        ev = item.event
        last = max(last, ev.ts if ev is not None else 0)  # type: ignore[type-var]
        if isinstance(ev, Service) and ev.kind == "complaint":
            (opened if ev.state == "opened" else closed)[ev.ticket_id] = ev.ts  # type: ignore[assignment]
    result = run_backtest(out, Rules(), None, None, tick_ms=600_000)
    sla = {a.evidence["ticket_id"]: a for a in result.live.opened() if a.kind == "complaint_sla"}
    alert = sla[incident["scope"]["ticket_id"]]
    assert expect["warn_ts"] <= alert.opened_at <= expect["warn_ts"] + SLACK_MS
    assert alert.store_id == incident["scope"]["store_id"]
    assert expect["warn_ts"] <= expect["answered_ts"] - HOUR
    # nothing where nothing was injected: only complaints still open at their warning
    overdue = {t for t, at in opened.items()
               if at + 22 * HOUR <= last and closed.get(t, last + 1) > at + 22 * HOUR}
    assert set(sla) == overdue


def test_a_run_shorter_than_a_day_sends_the_complaint_and_says_it_cannot_warn(
    incident_run: Any,
) -> None:
    incident = _incident(incident_run, "complaint_sla")
    assert incident["expect"]["detectable_ts"] is None
    ticket = incident["scope"]["ticket_id"]
    sent = [ev for _, ev in incident_run.valid()
            if isinstance(ev, Service) and ev.ticket_id == ticket]
    assert [(ev.state, ev.kind, ev.ts) for ev in sent] == [
        ("opened", "complaint", incident["expect"]["opened_at"])]
