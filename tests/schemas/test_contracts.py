"""The published contracts (schemas/json/, schemas/openapi/) match the code.

They are generated from the msgspec types (``ctower schemas --write``, or
``make schemas``); this fails when a type changed and the files were not
regenerated, when a record type has no schema, or when what the code
produces does not validate against what is published.
"""

from __future__ import annotations

import inspect
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec
import pytest
from jsonschema import Draft202012Validator

from ctower.schemas import actions, contracts, control, tasks
from ctower.schemas.control import encoder as control_encoder
from ctower.schemas.events import EVENT_TYPES, encoder
from ctower.simulator.generator import SimConfig, Simulator

ROOT = Path(__file__).resolve().parents[2]


def published(path: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((ROOT / "schemas" / path).read_text(encoding="utf-8"))
    return document


def test_the_published_files_are_what_the_code_generates() -> None:
    assert contracts.ROOT == ROOT / "schemas"
    stale = contracts.stale()
    assert stale == [], (
        f"stale contracts: {stale}; regenerate them with `make schemas` "
        "(ctower schemas --write) and commit the result")


def test_every_event_and_control_record_has_a_schema() -> None:
    records = {
        cls for module in (control, actions, tasks)
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, msgspec.Struct) and cls.__module__ == module.__name__
    }
    covered = {record_type for record_type, _, _ in contracts.CONTROL_RECORDS.values()}
    assert records == covered, f"without a schema: {records - covered}"
    files = set(contracts.json_schemas())
    assert {f"json/events/{stream}.json" for stream in EVENT_TYPES} <= files
    for path in files:
        Draft202012Validator.check_schema(published(path))


def test_the_simulators_events_validate_and_broken_ones_do_not() -> None:
    per_stream: dict[str, list[Any]] = defaultdict(list)
    for stream, event in Simulator(SimConfig(seed=7, events=100_000)).events():
        if len(per_stream[stream]) < 200:
            per_stream[stream].append(json.loads(encoder.encode(event)))
        if len(per_stream) == len(EVENT_TYPES) and all(
                len(found) >= 200 for found in per_stream.values()):
            break
    assert set(per_stream) == set(EVENT_TYPES)
    for stream, events in per_stream.items():
        validator = Draft202012Validator(published(f"json/events/{stream}.json"))
        for event in events:
            validator.validate(event)  # one event a message
        validator.validate(events)  # a batch envelope
        assert not validator.is_valid([]), "an empty batch is refused"
        broken = dict(events[0])
        del broken[EVENT_TYPES[stream].key_field]
        assert not validator.is_valid(broken), f"{stream}: a missing key field passes"
    iso = dict(per_stream["scan"][0], ts="2026-11-20T14:00:00+08:00")
    Draft202012Validator(published("json/events/scan.json")).validate(iso)


def test_control_records_validate() -> None:
    now = 1_790_000_000_000
    samples: dict[str, Any] = {
        "alert": control.Alert(
            alert_id="a1", key="pickup_congestion:S001", kind="pickup_congestion",
            severity="warning", status="open", message="自提排队", evidence={"waiting": 9},
            opened_at=now, store_id="S001"),
        "coupon_policy": control.CouponPolicy(campaign_id="CMP01", cap_per_window=10,
                                              set_by="ops", set_at=now),
        "coupon_decision": control.CouponDecision(
            campaign_id="CMP01", store_id="S001", state="throttled", reason="pickup_pressure",
            evidence={"pressure": 0.9}, ts=now),
        "dead_letter": control.DeadLetter.bounded(
            source_topic="ct.scan", partition=0, offset=5, index=-1, reason="not_json",
            detail="not JSON", raw=b"\xff{", received_at=now),
        "alert_ack": control.AlertAck(alert_id="a1", acked_by="ops", action="assign",
                                      owner="li", ts=now),
    }
    for name, record in samples.items():
        schema = published(f"json/control/{name}.json")
        assert schema["x-kafka"]["topic"] == contracts.CONTROL_RECORDS[name][1]
        Draft202012Validator(schema).validate(json.loads(control_encoder.encode(record)))
    policy = Draft202012Validator(published("json/control/coupon_policy.json"))
    assert not policy.is_valid({"campaign_id": "CMP01"}), "set_by and set_at are required"


def test_the_openapi_document_covers_every_route_of_the_coupon_service() -> None:
    document = published(contracts.OPENAPI_FILE)
    assert document["openapi"].startswith("3.1")
    source = (ROOT / "coupons" / "service.py").read_text(encoding="utf-8")
    routes = set(re.findall(r'@app\.page\("([^"]+)"', source))
    assert routes == set(document["paths"]), "a route of the service is not documented"
    reserve = document["paths"]["/coupons/{campaign}/reserve"]["post"]
    assert reserve["security"] == [{"bearer": []}]
    assert set(reserve["responses"]) == {"200", "400", "401", "404", "503"}
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("body", [{"store_id": "S001", "member_id": "M1"}])
def test_a_reservation_body_is_valid_by_the_document(body: dict[str, Any]) -> None:
    document = published(contracts.OPENAPI_FILE)
    schema = {**document["components"]["schemas"]["ReserveBody"],
              "components": document["components"]}
    validator = Draft202012Validator(schema)
    validator.validate(body)
    assert not validator.is_valid({"store_id": "S001"})
    assert not validator.is_valid({**body, "extra": 1}), "unknown fields are refused"
