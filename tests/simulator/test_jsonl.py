"""The --out line format: exact bytes back, for events and for broken messages."""

from __future__ import annotations

from ctower.schemas.events import Logistics, Scan
from ctower.simulator.items import Item, encode_event, wire_value
from ctower.simulator.jsonl import JsonlWriter, read_jsonl


def test_lines_round_trip_byte_for_byte(tmp_path):
    scan = Scan(ts=1_780_000_000_000, scan_id="a", store_id="S001", sku="K", action="view")
    ship = Logistics(
        ts=1_780_000_001_000, shipment_id="SH1", order_id="O1", origin_type="guide",
        origin_id="G", carrier="YTO", region="EAST", status="created", eta=1_780_000_060_000,
    )  # fmt: skip
    good = encode_event(scan)
    items = [
        Item("scan", "S001", scan.ts, scan),
        Item("logistics", "SH1", ship.ts, ship, iso=True),
        Item("scan", "S001", scan.ts, scan, late_ms=90_000),
        Item("scan", "S001", 0, None, raw=b'{"ts": 1', rejections=((-1, "not_json", "t"),)),
        Item("scan", "S002", 0, None, raw=b'{"s":"\xe4\xb8"}', rejections=((-1, "not_utf8", "u"),)),
        Item("scan", "S001", scan.ts, None, raw=b"[" + good + b',{"ts":"x"}]', contained=(scan,),
             rejections=((1, "bad_timestamp", "b"),)),
    ]  # fmt: skip
    path = tmp_path / "x.jsonl"
    writer = JsonlWriter(path)
    for item in items:
        writer.write(item, wire_value(item))
    writer.close()
    back = list(read_jsonl(path))
    assert [wire_value(i) for i in back] == [wire_value(i) for i in items]
    assert b'"ts":"2026-' in wire_value(back[1]) and b"+08:00" in wire_value(back[1])
    assert back[1].event.ts == ship.ts and back[1].event.eta == ship.eta
    assert back[2].late_ms == 90_000
    assert [i.key for i in back] == ["S001", "SH1", "S001", "S001", "S002", "S001"]
    assert back[5].contained == (scan,) and back[5].rejections == ((1, "bad_timestamp", "b"),)
    assert [i.units for i in back] == [1, 1, 1, 1, 1, 2]
