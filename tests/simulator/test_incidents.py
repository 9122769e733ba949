"""Each incident, checked from the written events (not from the simulator's word)."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from ctower.simulator.generator import SimConfig, Simulator
from ctower.topics import partition_for


def _incident(run, kind):
    (found,) = [i for i in run.truth["incidents"] if i["kind"] == kind]
    return found


def test_every_requested_incident_has_truth(incident_run):
    kinds = {i["kind"] for i in incident_run.truth["incidents"]}
    assert kinds == {
        "stock_out",
        "pickup_rush",
        "carrier_delay",
        "demand_spike",
        "late",
        "malformed",
        "complaint_burst",
        "district_failed",
        "not_shipped",
        "complaint_sla",
        "guide_capacity",
        "guide_late",
    }
    for incident in incident_run.truth["incidents"]:
        assert incident["start_ts"] < incident["end_ts"]
        assert {"scope", "expect"} <= set(incident)


def test_stock_out_zero_on_hand_while_scans_continue(incident_run):
    inc = _incident(incident_run, "stock_out")
    store, sku = inc["scope"]["store_id"], inc["scope"]["sku"]
    start, end = inc["start_ts"], inc["end_ts"]
    onhand = None
    scans_while_zero = 0
    for line, ev in incident_run.valid():
        if line.stream == "inventory" and (ev.location_id, ev.sku) == (store, sku):
            onhand = ev.qty if ev.kind == "snapshot" else onhand + ev.signed_qty
        elif line.stream == "order" and ev.status == "paid" and ev.stock_location == store:
            sold = sum(x.qty for x in ev.lines if x.sku == sku)
            if sold:
                onhand -= sold
        elif (
            line.stream == "scan" and (ev.store_id, ev.sku) == (store, sku) and start <= ev.ts < end
        ):
            assert onhand == 0
            scans_while_zero += 1
        # judged at the events that can move it: another store's ISO-time scan, rounded
        # up to the second, may be written just before the count that starts the incident
        moves = (ev.location_id if line.stream == "inventory" else
                 ev.stock_location if line.stream == "order" else getattr(ev, "store_id", None))
        if start <= ev.ts < end and onhand is not None and moves == store:
            assert onhand == 0, "on-hand must stay zero through the incident"
    assert onhand > 0, "restocked at the end"
    assert scans_while_zero >= 10
    assert scans_while_zero == inc["expect"]["scans_while_zero"]
    assert inc["expect"]["transfer_source"] == f"WH-{inc['scope']['region']}"


def test_pickup_rush_exceeds_capacity_with_long_waits(incident_run):
    inc = _incident(incident_run, "pickup_rush")
    store, capacity = inc["scope"]["store_id"], inc["expect"]["capacity"]
    arrived: dict[str, int] = {}
    changes, waits = [], []
    in_window = 0
    for line, ev in incident_run.valid():
        if line.stream != "pickup" or ev.store_id != store:
            continue
        if ev.state == "arrived":
            arrived[ev.order_id] = ev.ts
            changes.append((ev.ts, 1))
            in_window += inc["start_ts"] <= ev.ts < inc["end_ts"]
        elif ev.state == "picked_up":
            changes.append((ev.ts, -1))
            if inc["start_ts"] <= arrived[ev.order_id] < inc["end_ts"]:
                waits.append(ev.ts - arrived[ev.order_id])
    waiting = peak = 0
    for _, step in sorted(changes):
        waiting += step
        peak = max(peak, waiting)
    assert peak == inc["expect"]["max_waiting"]
    assert peak > 2 * capacity
    waits.sort()
    p90 = waits[math.ceil(0.9 * len(waits)) - 1]
    assert p90 > 600_000, "p90 wait above the 10-minute rule"
    assert in_window == inc["expect"]["arrivals_in_window"] >= 3 * capacity


def test_carrier_delay_silences_the_carrier_then_fails_and_misses_etas(incident_run):
    inc = _incident(incident_run, "carrier_delay")
    carrier, region = inc["scope"]["carrier"], inc["scope"]["region"]
    start, end = inc["start_ts"], inc["end_ts"]
    held = {s["shipment_id"]: s for s in inc["expect"]["shipments"]}
    assert len(held) >= 10
    last_status: dict[str, str] = {}
    delivered_at: dict[str, int] = {}
    for line, ev in incident_run.valid():
        if line.stream != "logistics" or (ev.carrier, ev.region) != (carrier, region):
            continue
        if start <= ev.ts < end:
            assert ev.status == "created", "the carrier sends nothing while delayed"
        last_status[ev.shipment_id] = ev.status
        if ev.status == "delivered":
            delivered_at[ev.shipment_id] = ev.ts
    failed = [sid for sid in held if last_status.get(sid) in ("failed", "returned")]
    assert len(failed) == inc["expect"]["failed"] >= 1
    missed = [s for s in held.values() if start <= s["eta"] < end]
    assert missed and all(delivered_at.get(s["shipment_id"], math.inf) > s["eta"] for s in missed)
    assert inc["expect"]["max_silence_s"] * 1000 >= (end - start) // 2


def test_demand_spike_is_five_times_baseline_for_five_minutes(incident_run):
    inc = _incident(incident_run, "demand_spike")
    store, sku = inc["scope"]["store_id"], inc["scope"]["sku"]
    start, end = inc["start_ts"], inc["end_ts"]
    assert end - start >= 5 * 60_000
    minutes = Counter()
    for line, ev in incident_run.valid():
        if line.stream == "scan" and (ev.store_id, ev.sku) == (store, sku):
            minutes[ev.ts // 60_000] += 1
    first = start // 60_000
    baseline_minutes = range(first - 60, first)
    baseline_per_5 = sum(minutes[m] for m in baseline_minutes) / (len(baseline_minutes) / 5)
    in_spike = [
        sum(minutes[m] for m in range(k, k + 5)) for k in range(first + 1, end // 60_000 - 4)
    ]
    assert in_spike, "at least one full 5-minute window inside the spike"
    assert min(in_spike) > 5 * max(baseline_per_5, 1.0)


@pytest.mark.parametrize("partitions", [1, 4])
def test_late_events_trail_their_partition_by_more_than_a_minute(incident_run, partitions):
    late_seqs = {late["seq"] for late in incident_run.truth["late"]}
    newest: dict[tuple[str, int], int] = {}
    seen = 0
    for line, ev in incident_run.valid():
        slot = (line.stream, partition_for(ev.partition_key.encode(), partitions))
        if line.seq in late_seqs:
            assert newest[slot] - ev.ts > 60_000
            seen += 1
            continue
        newest[slot] = max(newest.get(slot, 0), ev.ts)
    assert seen == len(late_seqs) > 0


def test_incidents_refuse_a_run_too_short_for_them():
    sim = Simulator(SimConfig(events=2_000, sim_rate=50, incidents=("demand_spike",)))
    with pytest.raises(ValueError, match="30 minutes"):
        next(iter(sim.items()))
