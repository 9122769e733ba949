"""The wire decoder: both timestamp forms, batch envelopes, and a readable
reason for every kind of malformed event."""

from __future__ import annotations

import time

import msgspec
import pytest

from ctower.schemas.events import Inventory, Order, Scan
from ctower.schemas.wire import REASONS, EventDecoder

NOW_MS = int(time.time() * 1000)


def scan(**overrides: object) -> dict[str, object]:
    event: dict[str, object] = {
        "scan_id": "sc-1", "ts": NOW_MS, "store_id": "S001", "sku": "K0001", "action": "view",
    }
    event.update(overrides)
    return event


def decode_scan(value: bytes) -> tuple[list[Scan], list[tuple[int, str]]]:
    decoded = EventDecoder(Scan, 400 * 86400, 3600).decode(value, NOW_MS)
    return decoded.events, [(r.index, r.reason) for r in decoded.rejected]


def test_iso_and_epoch_timestamps_decode_to_the_same_instant() -> None:
    iso = "2026-11-22T13:00:00.250+08:00"
    epoch = 1795323600250
    body = msgspec.json.encode([scan(ts=iso), scan(ts=epoch)])
    decoded = EventDecoder(Scan, 400 * 86400, 3600).decode(body, epoch)  # any year
    events, rejected = decoded.events, decoded.rejected
    assert rejected == []
    assert [ev.ts for ev in events] == [1795323600250, 1795323600250]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "not_json"),
        (b"", "not_json"),
        (msgspec.json.encode({k: v for k, v in scan().items() if k != "sku"}), "missing_field"),
        (msgspec.json.encode(scan(store_id=17)), "wrong_type"),
        (msgspec.json.encode(scan(action="purchase")), "unknown_value"),
        (msgspec.json.encode(scan(ts="2026-11-22T13:00:00")), "bad_timestamp"),
        (msgspec.json.encode(scan(ts="yesterday")), "bad_timestamp"),
        (msgspec.json.encode(scan(ts=NOW_MS - 5 * 365 * 86400 * 1000)), "ts_out_of_window"),
        (msgspec.json.encode(scan(ts=NOW_MS + 3 * 365 * 86400 * 1000)), "ts_out_of_window"),
        (b"[]", "empty_batch"),
        (b"42", "not_an_object"),
    ],
)
def test_malformed_single_events_are_rejected_with_their_reason(value: bytes, reason: str) -> None:
    events, rejected = decode_scan(value)
    assert events == []
    assert rejected == [(-1, reason)]
    assert reason in REASONS


def test_a_bad_element_does_not_spoil_its_batch() -> None:
    batch = b"[" + b",".join([
        msgspec.json.encode(scan(scan_id="a")),
        msgspec.json.encode(scan(scan_id="b", action="dance")),
        b'"just text"',
        msgspec.json.encode(scan(scan_id="c")),
    ]) + b"]"
    decoded = EventDecoder(Scan, 400 * 86400, 3600).decode(batch, NOW_MS)
    assert [ev.scan_id for ev in decoded.events] == ["a", "c"]
    reasons = [(r.index, r.reason) for r in decoded.rejected]
    assert reasons == [(1, "unknown_value"), (2, "not_an_object")]
    # the dead letter keeps the element's own bytes, so it can be fixed and replayed
    assert msgspec.json.decode(decoded.rejected[0].raw)["scan_id"] == "b"


def test_negative_quantities() -> None:
    decoder = EventDecoder(Inventory, 400 * 86400, 3600)
    base = {"location_id": "S001", "sku": "K1", "ts": NOW_MS}
    receipt = decoder.decode(msgspec.json.encode({**base, "kind": "receipt", "qty": -3}), NOW_MS)
    assert [r.reason for r in receipt.rejected] == ["out_of_range"]
    adjustment = msgspec.json.encode({**base, "kind": "adjustment", "qty": -3})
    shrinkage = decoder.decode(adjustment, NOW_MS)
    assert shrinkage.rejected == [] and shrinkage.events[0].signed_qty == -3
    order = {
        "order_id": "O1", "ts": NOW_MS, "member_id": "M1", "store_id": "S001",
        "channel": "mini_program", "fulfillment": "store_pickup", "amount": 10.0, "status": "paid",
        "lines": [{"sku": "K1", "qty": -1, "unit_price": 10.0}],
    }
    rejected = EventDecoder(Order, 400 * 86400, 3600).decode(msgspec.json.encode(order), NOW_MS)
    assert [r.reason for r in rejected.rejected] == ["out_of_range"]


def test_money_is_kept_in_exact_fen() -> None:
    order = {
        "order_id": "O1", "ts": NOW_MS, "member_id": "M1", "store_id": "S001",
        "channel": "scan_and_go", "fulfillment": "in_store", "amount": 0.1 + 0.2, "status": "paid",
        "lines": [{"sku": "K1", "qty": 1, "unit_price": 0.3}],
    }
    decoded = EventDecoder(Order, 400 * 86400, 3600).decode(msgspec.json.encode(order), NOW_MS)
    assert decoded.events[0].amount_fen == 30
