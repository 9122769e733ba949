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


def stable_id(value: object) -> str | None:
    """Test ids without the events' times in them: pytest-xdist's workers must
    collect the same names (the default id of bytes is the bytes)."""
    return f"{len(value)}bytes" if isinstance(value, bytes) else None


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
    ids=stable_id,
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


# --- hostile input (issue 11): every failure is a rejection with a reason ---------


def order(**overrides: object) -> dict[str, object]:
    event: dict[str, object] = {
        "order_id": "o-1", "member_id": "m-1", "store_id": "S001", "channel": "guide",
        "fulfillment": "in_store", "lines": [{"sku": "K1", "qty": 1, "unit_price": 2.5}],
        "amount": 2.5, "status": "paid", "ts": NOW_MS,
    }
    event.update(overrides)
    return event


def decode_order(value: bytes) -> tuple[list[Order], list[tuple[int, str]]]:
    decoded = EventDecoder(Order, 400 * 86400, 3600).decode(value, NOW_MS)
    return decoded.events, [(r.index, r.reason) for r in decoded.rejected]


GOOD = msgspec.json.encode(scan())
DEEP = b"[" * 5000 + b"]" * 5000


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (GOOD[:-7], "not_json"),  # truncated
        (GOOD.replace(b'"S001"', b'"S\xff01"'), "not_utf8"),  # inside a string
        (b"\xff\xfe" + GOOD, "not_utf8"),  # outside any string
        (msgspec.json.encode(scan(note="x" * 900_000)), "too_large"),
        (msgspec.json.encode(scan(sku="x" * 900_000)), "too_large"),
        (GOOD[:-1] + b',"extra":' + DEEP + b"}", "too_deep"),
        (GOOD.replace(str(NOW_MS).encode(), b"NaN"), "not_json"),
        (GOOD.replace(str(NOW_MS).encode(), b"Infinity"), "not_json"),
        (GOOD.replace(str(NOW_MS).encode(), b"1" + b"0" * 30), "out_of_range"),
        (msgspec.json.encode(scan(ts=0)), "ts_out_of_window"),  # 1970
        (msgspec.json.encode(scan(ts="2100-01-01T00:00:00+00:00")), "ts_out_of_window"),
        (msgspec.json.encode(scan(ts="9999-12-31T00:00:00+00:00")), "out_of_range"),
        (msgspec.json.encode(scan(store_id="")), "out_of_range"),
        (msgspec.json.encode(scan(store_id=None)), "wrong_type"),
        (b"null", "not_an_object"),
        (b'""', "not_an_object"),
        (b"{}", "missing_field"),
        (GOOD[:-1] + b',"scan_id":"sc-2"}', "duplicate_key"),
        (GOOD[:-1] + b',"\\u0073can_id":"sc-2"}', "duplicate_key"),  # an escaped twin
        (GOOD[:-1] + b',"member_id":"a","member_id":"b"}', "duplicate_key"),  # optional field
    ],
    ids=stable_id,
)
def test_hostile_events_are_rejected_with_their_reason(value: bytes, reason: str) -> None:
    events, rejected = decode_scan(value)
    assert events == []
    assert rejected == [(-1, reason)]
    assert reason in REASONS


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"amount": 1e30}, "out_of_range"),  # overflowed the state encoder before
        ({"amount": 1e17}, "out_of_range"),  # 1e19 fen: beyond the store's Int64
        ({"amount": -1}, "out_of_range"),
        ({"lines": [{"sku": "K1", "qty": -1, "unit_price": 1}]}, "out_of_range"),
        ({"lines": [{"sku": "K1", "qty": 10**12, "unit_price": 1}]}, "out_of_range"),
        ({"lines": [{"sku": "K1", "qty": 1, "unit_price": 1e7}]}, "out_of_range"),
        ({"lines": []}, "out_of_range"),
    ],
)
def test_amounts_and_quantities_have_bounds(overrides: dict[str, object], reason: str) -> None:
    events, rejected = decode_order(msgspec.json.encode(order(**overrides)))
    assert (events, rejected) == ([], [(-1, reason)])


def test_the_largest_allowed_order_adds_up_inside_int64() -> None:
    from ctower.schemas.events import MAX_AMOUNT_YUAN, MAX_LINE_QTY, MAX_UNIT_PRICE_YUAN

    line = {"sku": "K1", "qty": MAX_LINE_QTY, "unit_price": MAX_UNIT_PRICE_YUAN}
    events, rejected = decode_order(
        msgspec.json.encode(order(amount=MAX_AMOUNT_YUAN, lines=[line] * 500))
    )
    assert rejected == []
    revenue = sum(round(ln.qty * ln.unit_price * 100) for ln in events[0].lines)
    assert revenue * 10_000 < 2**63  # ten thousand such orders in one window still fit


def test_a_duplicate_key_in_one_element_spoils_only_that_element() -> None:
    twice = GOOD[:-1] + b',"member_id":"a","member_id":"b"}'
    nulls = msgspec.json.encode(scan(member_id=None, scan_id="sc-3"))
    body = b"[" + b",".join([GOOD, twice, msgspec.json.encode(scan(scan_id="sc-2")), nulls]) + b"]"
    events, rejected = decode_scan(body)
    assert [ev.scan_id for ev in events] == ["sc-1", "sc-2", "sc-3"]
    assert rejected == [(1, "duplicate_key")]


def test_a_field_name_used_as_a_value_is_not_a_duplicate_key() -> None:
    events, rejected = decode_scan(msgspec.json.encode(scan(sku="sku", member_id="store_id")))
    assert rejected == [] and len(events) == 1


def test_an_envelope_with_a_deep_element_keeps_its_good_elements() -> None:
    body = b"[" + b",".join([GOOD, b'{"x":' + DEEP + b"}", GOOD, DEEP]) + b"]"
    events, rejected = decode_scan(body)
    assert len(events) == 2
    assert [index for index, _ in rejected] == [1, 3]
    assert rejected[0][1] == "too_deep"


def test_a_large_element_of_an_envelope_is_too_large_alone() -> None:
    body = msgspec.json.encode([scan(), scan(note="y" * 100_000), scan()])
    events, rejected = decode_scan(body)
    assert len(events) == 2 and rejected == [(1, "too_large")]


def test_no_bytes_make_the_decoder_raise() -> None:
    """Random mutations of good envelopes: every one ends as events, rejections or both."""
    import random

    rng = random.Random(11)
    decoder = EventDecoder(Order, 400 * 86400, 3600)
    seed = msgspec.json.encode([order(), order(order_id="o-2", coupon_id="c")])
    for _ in range(3000):
        value = bytearray(seed)
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(len(value))
            op = rng.random()
            if op < 0.4:
                value[at] = rng.randrange(256)
            elif op < 0.7:
                del value[at : at + rng.randint(1, 20)]
            else:
                value[at:at] = rng.choice([b"[", b"{", b'"', b"\\", b",", b"null", b"1e999"])
        decoded = decoder.decode(bytes(value), NOW_MS)
        assert decoded.events or decoded.rejected
        assert all(r.reason in REASONS for r in decoded.rejected)


def test_a_dead_letter_of_a_huge_event_fits_in_a_kafka_message() -> None:
    import hashlib

    from ctower.schemas.control import DeadLetter

    raw = msgspec.json.encode(scan(note="z" * 900_000))
    letter = DeadLetter.bounded(
        source_topic="ct.scan", partition=0, offset=1, index=-1, reason="too_large",
        detail="d" * 10_000, raw=raw, received_at=NOW_MS,
    )
    assert len(msgspec.json.encode(letter)) < 100_000
    assert letter.raw == raw[: 64 * 1024]
    assert letter.raw_length == len(raw)
    assert letter.raw_sha256 == hashlib.sha256(raw).hexdigest()
