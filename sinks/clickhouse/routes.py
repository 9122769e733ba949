"""What a message on each topic becomes: records appended to table buffers,
or quarantine rows.

A route must not raise for any bytes. A batch envelope that fails whole is
split into its elements without recursion, so one bad element costs only
itself; closed windows are checked against their aggregate's shape.
"""


from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from ctower.schemas.control import (
    KIND_HEADER,
    ClosedWindow,
    LateEvent,
)
from ctower.schemas.events import Event
from ctower.schemas.wire import EventDecoder
from ctower.sinks.clickhouse.columns import Buffer
from ctower.sinks.clickhouse.quarantine import (
    clip,
    decode_reason,
    describe,
    record_bytes,
    refine,
    split_json_array,
)
from ctower.tables.aggregates import AGGREGATES

Reject = Callable[[int, int, int, bytes, str, str], None]
"""(partition, offset, index, raw, reason, detail): quarantine a message
(index -1) or one element of its batch envelope."""


class _FirstOf:
    """Decodes with the first decoder that takes the bytes; raises the first one's error."""

    def __init__(self, *decoders: msgspec.json.Decoder[Any]) -> None:
        self.decoders = decoders

    def decode(self, raw: bytes) -> Any:
        first: Exception | None = None
        for decoder in self.decoders:
            try:
                return decoder.decode(raw)
            except Exception as exc:
                first = first or exc
        assert first is not None
        raise first


class Route:
    """Turns a message of one topic into records appended to buffers, and
    hands what it cannot decode to ``reject`` (the quarantine).

    ``handle`` must not raise for any bytes; the sink still catches anything
    it does raise and quarantines the whole message.
    """

    reject: Reject

    def handle(self, value: bytes | None, headers: Sequence[tuple[str, bytes]],
               partition: int, offset: int, now_ms: int) -> None:
        raise NotImplementedError

    def _decode(
        self, value: bytes | None, whole: Any, one: Any, partition: int, offset: int
    ) -> tuple[list[Any], Sequence[int] | None]:
        """The records of a message and their envelope positions (None: the
        message was one record). ``whole`` decodes a record or a JSON array of
        them; when it fails on an array, each element is decoded with ``one``,
        so a bad element costs only itself."""
        if not value:
            self.reject(partition, offset, -1, b"", "not_json", "empty message value")
            return [], None
        try:
            decoded = whole.decode(value)
        except Exception as exc:
            elements = split_json_array(value)
            if not elements:
                reason = "empty_batch" if elements == [] else decode_reason(exc, value)
                self.reject(partition, offset, -1, value, reason, describe(exc))
                return [], None
            records: list[Any] = []
            indexes: list[int] = []
            for index, element in enumerate(elements):
                try:
                    records.append(one.decode(element))
                except Exception as element_exc:
                    self.reject(partition, offset, index, element,
                                decode_reason(element_exc, element), describe(element_exc))
                    continue
                indexes.append(index)
            return records, indexes
        if isinstance(decoded, list):
            if not decoded:
                self.reject(partition, offset, -1, value, "empty_batch",
                            "batch envelope with no records")
            return decoded, range(len(decoded))
        return [decoded], None


class RawRoute(Route):
    def __init__(self, decoder: EventDecoder[Event], buffer: Buffer) -> None:
        self.decoder = decoder
        self.buffer = buffer

    def handle(self, value: bytes | None, headers: Sequence[tuple[str, bytes]],
               partition: int, offset: int, now_ms: int) -> None:
        raw = value or b""
        try:
            decoded = self.decoder.decode(raw, now_ms)
        except Exception as exc:  # RecursionError and whatever else the decoder lets out
            self._decode_elements(raw, exc, partition, offset, now_ms)
            return
        events = decoded.events
        is_batch = raw.lstrip()[:1] == b"["
        if decoded.rejected:
            bad = set()
            for rejected in decoded.rejected:
                bad.add(rejected.index)
                self.reject(partition, offset, rejected.index, rejected.raw,
                            refine(rejected.reason, rejected.detail), clip(rejected.detail))
            if events:
                # The decoder keeps the good elements in order and drops the bad ones.
                total = len(events) + len(bad)
                self.buffer.add(events, partition, offset,
                                [i for i in range(total) if i not in bad] if is_batch else None)
        elif events:
            self.buffer.add(events, partition, offset, range(len(events)) if is_batch else None)

    def _decode_elements(self, raw: bytes, exc: Exception, partition: int, offset: int,
                         now_ms: int) -> None:
        elements = split_json_array(raw) if raw.lstrip()[:1] == b"[" else None
        if not elements:
            self.reject(partition, offset, -1, raw, decode_reason(exc, raw), describe(exc))
            return
        events: list[Event] = []
        indexes: list[int] = []
        for index, element in enumerate(elements):
            if element[:1] == b"[":
                # An array is no event; the decoder would take it for an envelope.
                try:
                    msgspec.json.decode(element)
                    reason, detail = "not_an_object", "Expected `object`, got `array`"
                except Exception as element_exc:
                    reason, detail = decode_reason(element_exc, element), describe(element_exc)
                self.reject(partition, offset, index, element, reason, detail)
                continue
            try:
                decoded = self.decoder.decode(element, now_ms)
            except Exception as element_exc:
                self.reject(partition, offset, index, element,
                            decode_reason(element_exc, element), describe(element_exc))
                continue
            for rejected in decoded.rejected:
                self.reject(partition, offset, index, element,
                            refine(rejected.reason, rejected.detail), clip(rejected.detail))
            for event in decoded.events:
                events.append(event)
                indexes.append(index)
        if events:
            self.buffer.add(events, partition, offset, indexes)


class RecordRoute(Route):
    """One record, or a JSON array of them, per message."""

    def __init__(self, record_type: type, buffer: Buffer) -> None:
        self.whole = msgspec.json.Decoder(record_type | list[record_type])  # type: ignore[valid-type]
        self.one: msgspec.json.Decoder[Any] = msgspec.json.Decoder(record_type)
        self.buffer = buffer

    def handle(self, value: bytes | None, headers: Sequence[tuple[str, bytes]],
               partition: int, offset: int, now_ms: int) -> None:
        records, indexes = self._decode(value, self.whole, self.one, partition, offset)
        if records:
            self.buffer.add(records, partition, offset, indexes)


class AggregatesRoute(Route):
    """Closed windows to their aggregate's table, late events to ``late_events``."""

    def __init__(self, buffers: dict[str, Buffer], late: Buffer,
                 others: dict[bytes, tuple[type, Buffer]] | None = None) -> None:
        """``others``: further kinds (header value -> record type and buffer)."""
        self.buffers = buffers
        self.late = late
        self.others = {kind: buf for kind, (_, buf) in (others or {}).items()}
        self.shapes = {name: (len(s.dims), len(s.fields)) for name, s in AGGREGATES.items()}
        closed_one = msgspec.json.Decoder(ClosedWindow)
        late_one = msgspec.json.Decoder(LateEvent)
        closed_whole = msgspec.json.Decoder(ClosedWindow | list[ClosedWindow])
        late_whole = msgspec.json.Decoder(LateEvent | list[LateEvent])
        self.decoders: dict[bytes | None, tuple[Any, Any]] = {
            b"closed_window": (closed_whole, closed_one),
            b"late_event": (late_whole, late_one),
            # Without the header: a closed window, else a late event.
            None: (_FirstOf(closed_whole, late_whole), _FirstOf(closed_one, late_one)),
        }
        for kind, (record_type, _) in (others or {}).items():
            self.decoders[kind] = (
                msgspec.json.Decoder(record_type | list[record_type]),  # type: ignore[valid-type]
                msgspec.json.Decoder(record_type),
            )

    def handle(self, value: bytes | None, headers: Sequence[tuple[str, bytes]],
               partition: int, offset: int, now_ms: int) -> None:
        kind = next((v for k, v in headers if k == KIND_HEADER), None)
        decoders = self.decoders.get(kind)
        if decoders is None:
            self.reject(partition, offset, -1, value or b"", "unknown_value",
                        clip(f"unknown {KIND_HEADER} header {kind!r}"))
            return
        records, indexes = self._decode(value, *decoders, partition, offset)
        if not records:
            return
        other = self.others.get(kind) if kind is not None else None
        if other is not None:
            other.add(records, partition, offset, indexes)
            return
        positions = indexes if indexes is not None else [-1] * len(records)
        late: tuple[list[Any], list[int]] = ([], [])
        by_table: dict[str, tuple[list[Any], list[int]]] = {}
        for record, index in zip(records, positions, strict=True):
            if isinstance(record, LateEvent):
                late[0].append(record)
                late[1].append(index)
                continue
            shape = self.shapes.get(record.aggregate)
            if shape is None or shape != (len(record.dims), len(record.values)):
                raw = (value or b"") if index < 0 else record_bytes(record)
                if shape is None:
                    reason, detail = "unknown_value", f"unknown aggregate {record.aggregate!r}"
                else:
                    reason = "wrong_shape"
                    detail = (f"{record.aggregate} has {shape[0]} dims and {shape[1]} values, "
                              f"the record {len(record.dims)} and {len(record.values)}")
                self.reject(partition, offset, index, raw, reason, clip(detail))
                continue
            rows = by_table.setdefault(record.aggregate, ([], []))
            rows[0].append(record)
            rows[1].append(index)
        for table, (chosen, where) in by_table.items():
            self.buffers[table].add(chosen, partition, offset, None if indexes is None else where)
        if late[0]:
            self.late.add(late[0], partition, offset, None if indexes is None else late[1])
