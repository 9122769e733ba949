"""The truth file against an independent recount of what was written."""

from __future__ import annotations

from collections import Counter, defaultdict

from ctower.schemas.wire import REASONS
from ctower.settings import load_settings
from ctower.simulator.truth import FIELDS, load_truth, store_minute_truth


def _recount(incident_run, late_keys):
    """STORE_MINUTE by the brief's rules, written out again on purpose."""
    rows: dict[tuple[str, int], dict[str, int]] = defaultdict(lambda: dict.fromkeys(FIELDS, 0))
    for line, ev in incident_run.valid():
        if (line.stream, ev.dedup_key()) in late_keys:
            continue
        window = ev.ts - ev.ts % 60_000
        if line.stream == "scan":
            row = rows[(ev.store_id, window)]
            row["scans"] += 1
            row["add_to_cart"] += ev.action == "add_to_cart"
        elif line.stream == "order":
            if ev.status in ("created", "paid", "refunded"):
                row = rows[(ev.store_id, window)]
                if ev.status == "created":
                    row["orders"] += 1
                elif ev.status == "paid":
                    row["paid_orders"] += 1
                    row["gmv_fen"] += round(ev.amount * 100)
                else:
                    row["refunded_orders"] += 1
        elif line.stream == "pickup":
            field = {
                "arrived": "pickup_arrivals",
                "picked_up": "pickups_served",
                "no_show": "pickup_no_shows",
            }
            if ev.state in field:
                rows[(ev.store_id, window)][field[ev.state]] += 1
        elif line.stream == "coupon":
            field = {"issued": "coupons_issued", "redeemed": "coupons_redeemed"}
            if ev.action in field:
                rows[(ev.store_id, window)][field[ev.action]] += 1
    return dict(rows)


def test_store_minute_truth_equals_a_recount_of_the_out_file(incident_run):
    truth = incident_run.truth
    late_keys = {(late["stream"], late["dedup_key"]) for late in truth["late"]}
    expected = store_minute_truth(truth)
    recount = _recount(incident_run, late_keys)
    assert len(expected) > 1000
    assert recount == expected
    assert sum(row["gmv_fen"] for row in expected.values()) > 0
    assert all(set(row) == set(FIELDS) for row in expected.values())
    # Late events are left out of their windows: counting them changes the answer.
    assert _recount(incident_run, set()) != expected


def test_events_sent_and_late_list_match_the_file(incident_run):
    truth = incident_run.truth
    sent = Counter(line.stream for line, _ in incident_run.valid())
    assert dict(sent) == truth["events_sent"]
    late_in_file = {line.seq for line in incident_run.lines if line.late_ms}
    assert late_in_file == {late["seq"] for late in truth["late"]}
    assert len(late_in_file) >= 3
    for late in truth["late"]:
        assert late["window_start"] == late["ts"] - late["ts"] % 60_000
        assert late["behind_ms"] > 60_000
        assert late["fields"] == {"scans": 1}


def test_malformed_messages_fail_the_decoder_with_the_named_reason(incident_run):
    truth = incident_run.truth
    settings = load_settings()
    listed = truth["malformed"]
    assert {entry["kind"] for entry in listed} >= {
        "truncated_json",
        "missing_field",
        "wrong_type",
        "unknown_enum",
        "negative_quantity",
        "ts_years_away",
        "bad_element_in_batch",
    }
    for entry in listed:
        assert entry["reason"] in REASONS
        line = incident_run.lines[entry["seq"]]
        assert line.is_raw and line.stream == entry["stream"]
        assert entry["topic"] == settings.topic(entry["stream"])
        rejected = [(r.index, r.reason) for r in line.decoded.rejected]
        assert (entry["index"], entry["reason"]) in rejected, (entry["kind"], rejected)
        if entry["index"] >= 0:  # the valid neighbour inside the envelope survives
            assert len(line.decoded.events) == 1
        else:
            assert not line.decoded.events
    raw_lines = {line.seq for line in incident_run.lines if line.is_raw}
    assert raw_lines == {entry["seq"] for entry in listed}


def test_load_truth_and_keyed_rows(incident_run, tmp_path):
    truth = load_truth(incident_run.truth_path)
    rows = store_minute_truth(truth)
    first = truth["aggregates"]["store_minute"][0]
    key = (first["store_id"], first["window_start"])
    assert rows[key] == {name: first[name] for name in FIELDS}
    bogus = tmp_path / "x.json"
    bogus.write_text('{"events_sent": {}}')
    try:
        load_truth(bogus)
    except ValueError as exc:
        assert "not a simulator truth file" in str(exc)
    else:
        raise AssertionError("load_truth accepted a file without aggregates")
