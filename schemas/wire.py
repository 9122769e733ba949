"""Decoding Kafka message values into events, and naming what is wrong.

A message value is either one JSON event or a JSON array of events of the
same stream (the batch envelope). Batching is what lets one worker go past
Faust's per-message cost (about 85 µs): a hundred events in a message pay it
once. A bad element of a batch does not spoil the others: only that element
goes to the dead-letter topic, with its index.

The fast path decodes a whole message in one typed msgspec call; only when
that fails is the message split into elements to find the bad ones.

No bytes may stop a partition: whatever a decoder raises (a RecursionError
for JSON nested a thousand deep, an overflow, anything) ends as a rejection
with a reason, never as an exception out of :meth:`EventDecoder.decode`.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Generic, TypeVar, cast

import msgspec
from msgspec import Struct

from ctower.errors import CtowerError
from ctower.schemas.events import EVENT_TYPES, Event, Order

E = TypeVar("E", bound=Event)

REASONS = (
    "not_json",
    "not_utf8",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "unknown_value",
    "out_of_range",
    "duplicate_key",
    "too_large",
    "too_deep",
    "bad_timestamp",
    "ts_out_of_window",
    "empty_batch",
    "invalid",
)
"""Every reason code a dead letter can carry."""

MAX_EVENT_BYTES = 64 * 1024
"""Default size limit of one event (a message, or one element of an envelope).
The largest legitimate event, an order of 500 lines, is about 40 kB."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """One malformed event (or a whole malformed message, with index -1)."""

    index: int
    raw: bytes
    reason: str
    detail: str


@dataclass(slots=True)
class Decoded(Generic[E]):
    events: list[E] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"malformed|truncated|trailing characters|invalid character", re.I), "not_json"),
    (re.compile(r"utf-?8", re.I), "not_utf8"),
    (re.compile(r"missing required field", re.I), "missing_field"),
    (re.compile(r"invalid enum value", re.I), "unknown_value"),
    (re.compile(r"out of range|negative quantity|>=|<=|> |< |length", re.I), "out_of_range"),
    (re.compile(r"timestamp|ISO 8601|UTC offset|`ts`|`eta`|`slot_start`", re.I), "bad_timestamp"),
    (re.compile(r"expected `(object|struct)`", re.I), "not_an_object"),
    (re.compile(r"expected `", re.I), "wrong_type"),
)

DETAIL_CHARS = 500
"""Longest detail kept: a decoder's message can quote the whole input."""


def classify(message: str) -> str:
    """The reason code of a msgspec or check error message."""
    for pattern, reason in _PATTERNS:
        if pattern.search(message):
            return reason
    return "invalid"


def reject(index: int, raw: bytes, exc: BaseException) -> Rejected:
    """A rejection for whatever a decoder raised, with a readable reason."""
    if isinstance(exc, RecursionError):
        return Rejected(index, raw, "too_deep", "nested too deeply to decode")
    detail = str(exc) or type(exc).__name__
    reason = classify(detail)
    if reason == "not_json" and not _is_utf8(raw):
        reason = "not_utf8"
    elif reason == "invalid":
        detail = f"{type(exc).__name__}: {detail}"
    return Rejected(index, raw, reason, detail[:DETAIL_CHARS])


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class DuplicateKeyError(CtowerError, ValueError):
    pass


def _unique_pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise DuplicateKeyError(f"key {key!r} appears twice in one object")
        seen[key] = value
    return seen


def duplicate_key(raw: bytes) -> str | None:
    """The detail of the first key repeated within one JSON object, if any.

    msgspec (like most JSON decoders) silently keeps the last of repeated
    keys (msgspec/msgspec#648), so an event saying two things is decided by
    the stdlib's decoder here, on the slow path only.
    """
    try:
        json.loads(raw, object_pairs_hook=_unique_pairs)
    except DuplicateKeyError as exc:
        return str(exc)
    except (ValueError, RecursionError):
        return None  # msgspec already accepted it; nothing more to say
    return None


def _field_names(event_type: type[Struct]) -> tuple[list[bytes], list[tuple[str, bytes]]]:
    """Byte patterns of a record's keys: required ones, and optional ones by name."""
    required, optional = [], []
    info = msgspec.inspect.type_info(event_type)
    assert isinstance(info, msgspec.inspect.StructType)
    for f in info.fields:
        pattern = b'"' + f.encode_name.encode() + b'"'
        if f.required:
            required.append(pattern)
        else:
            optional.append((f.name, pattern))
    return required, optional


def split_array(raw: bytes) -> list[bytes]:
    """The elements of a top-level JSON array, found without recursing.

    Only for messages msgspec could not split (an element nested deeper than
    the recursion limit): a scan of strings and brackets, so the good elements
    of such an envelope are still counted. Raises ValueError when the message
    is not one complete array.
    """
    text = raw.strip()
    if text[:1] != b"[":
        raise ValueError("not a JSON array")
    elements: list[bytes] = []
    depth, start = 0, 1
    for match in _TOKENS.finditer(text):
        token = match.group()
        if len(token) != 1:
            continue  # a whole string: its brackets and commas are text
        at = match.start()
        if token in b"[{":
            depth += 1
        elif token in b"]}":
            depth -= 1
            if depth == 0:
                if at != len(text) - 1:
                    raise ValueError("trailing characters after the array")
                last = text[start:at].strip()
                if last:
                    elements.append(last)
                elif elements:
                    raise ValueError("a comma before the end of the array")
                return elements
        elif depth == 1:  # a comma between elements
            element = text[start:at].strip()
            if not element:
                raise ValueError("an empty element in the array")
            elements.append(element)
            start = at + 1
    raise ValueError("truncated: the array is not closed")


_TOKENS = re.compile(rb'"(?:[^"\\]++|\\.)*+"|[\[\]{},]')


class EventDecoder(Generic[E]):
    """Decodes one stream's message values; refuses timestamps far from now.

    ``max_past_s`` and ``max_future_s`` bound event time around the wall clock:
    a timestamp years away is a producer bug, and counting it would open a
    window nobody will ever close. ``max_event_bytes`` bounds one event: a
    900 kB field is a producer bug too, and must not travel on as a dead
    letter larger than Kafka takes.
    """

    def __init__(
        self,
        event_type: type[E],
        max_past_s: float,
        max_future_s: float,
        max_event_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        self.event_type = event_type
        self.max_past_ms = int(max_past_s * 1000)
        self.max_future_ms = int(max_future_s * 1000)
        self.max_event_bytes = max_event_bytes
        self._single = msgspec.json.Decoder(event_type)
        self._batch = msgspec.json.Decoder(list[event_type])  # type: ignore[valid-type]
        self._split = msgspec.json.Decoder(list[msgspec.Raw])
        self._encode = msgspec.json.Encoder().encode
        self._required, self._optional = _field_names(event_type)
        lines = getattr(event_type, "__struct_fields__", ())
        self._line_keys: list[bytes] = []
        if "lines" in lines:  # an order's lines are objects with keys of their own
            from ctower.schemas.events import OrderLine

            self._line_keys = _field_names(OrderLine)[0]

    @classmethod
    def for_stream(
        cls,
        stream: str,
        max_past_s: float,
        max_future_s: float,
        max_event_bytes: int = MAX_EVENT_BYTES,
    ) -> EventDecoder[Event]:
        return EventDecoder(EVENT_TYPES[stream], max_past_s, max_future_s, max_event_bytes)

    def decode(self, raw: bytes | None, now_ms: int | None = None) -> Decoded[E]:
        """The message's events and rejections; never raises, whatever the bytes."""
        if not raw:
            out: Decoded[E] = Decoded()
            out.rejected.append(Rejected(-1, raw or b"", "not_json", "empty message value"))
            return out
        if now_ms is None:
            now_ms = int(time.time() * 1000)
        try:
            return self._decode(raw, now_ms)
        except Exception as exc:  # the last line: no input may stop a partition
            out = Decoded()
            out.rejected.append(reject(-1, raw, exc))
            return out

    def _decode(self, raw: bytes, now_ms: int) -> Decoded[E]:
        out: Decoded[E] = Decoded()
        is_batch = raw.lstrip()[:1] == b"["
        if not is_batch and len(raw) > self.max_event_bytes:
            out.rejected.append(Rejected(-1, raw, "too_large", self._too_large(raw)))
            return out
        try:
            events = self._batch.decode(raw) if is_batch else [self._single.decode(raw)]
        except Exception:  # any failure: find out element by element
            return self._decode_slowly(raw, is_batch, now_ms)
        if is_batch and not events:
            out.rejected.append(Rejected(-1, raw, "empty_batch", "batch envelope with no events"))
            return out
        low, high = now_ms - self.max_past_ms, now_ms + self.max_future_ms
        if (
            all(low <= ev.ts <= high for ev in events)  # type: ignore[operator]
            and not (is_batch and len(raw) > self.max_event_bytes)
            and (self._keys_as_decoded(raw, events) or not self._keys_repeat(raw, events))
        ):
            out.events = events
            return out
        return self._decode_slowly(raw, is_batch, now_ms)

    def _too_large(self, raw: bytes) -> str:
        return f"{len(raw):,} bytes, over the {self.max_event_bytes:,}-byte limit of one event"

    def _keys_as_decoded(self, raw: bytes, events: list[E]) -> bool:
        """True when the message holds exactly the keys its events were decoded
        from: no key twice, none unknown, no explicit null (the usual case).

        The count of ``:`` says so cheaply. Every key of the bytes has one, and
        every colon inside a string is kept by re-encoding what was decoded,
        so the bytes hold at least as many as the re-encoding; a repeated key
        adds one. Only a ``\\u003a`` escape could hide a colon: then no.
        Otherwise (an ISO timestamp, an unknown field) :meth:`_keys_repeat`
        decides.
        """
        if b"\\u" in raw:
            return False
        return raw.count(b":") == self._encode(events).count(b":")  # brackets: no colons

    def _keys_repeat(self, raw: bytes, events: list[E]) -> bool:
        """Whether a key may be repeated within an event (then the slow path decides).

        Cheap and never wrong in the safe direction: without ``\\u`` escapes a
        key equal to a field name appears as ``"name"`` in the bytes, so a
        repeated key makes that pattern occur more often than the events that
        hold the field (plus explicit nulls). Another string equal to a field
        name only sends the message to the exact check.
        """
        if b"\\u" in raw:
            return True
        count = raw.count
        n = len(events)
        for pattern in self._required:
            if count(pattern) > n:
                return True
        if self._optional:
            nulls = b"null" in raw
            for name, pattern in self._optional:
                occurrences = count(pattern)
                if occurrences == 0:
                    continue
                held = sum(1 for ev in events if getattr(ev, name) is not None)
                if nulls:
                    held += count(pattern + b":null") + count(pattern + b": null")
                if occurrences > held:
                    return True
        if self._line_keys:
            orders = cast("list[Order]", events)  # only an order has lines
            lines = sum(len(ev.lines) for ev in orders)
            for pattern in self._line_keys:
                if count(pattern) > lines:
                    return True
        return False

    def _elements(self, raw: bytes) -> list[bytes]:
        try:
            return [bytes(part) for part in self._split.decode(raw)]
        except RecursionError:
            return split_array(raw)  # an element nested too deep: split without recursing

    def _decode_slowly(self, raw: bytes, is_batch: bool, now_ms: int) -> Decoded[E]:
        out: Decoded[E] = Decoded()
        if is_batch:
            try:
                elements = self._elements(raw)
            except Exception as exc:
                out.rejected.append(reject(-1, raw, exc))
                return out
            if not elements:
                out.rejected.append(Rejected(-1, raw, "empty_batch", "batch with no events"))
                return out
        else:
            elements = [raw]
        low, high = now_ms - self.max_past_ms, now_ms + self.max_future_ms
        for index, element in enumerate(elements):
            position = index if is_batch else -1
            if len(element) > self.max_event_bytes:
                out.rejected.append(
                    Rejected(position, element, "too_large", self._too_large(element))
                )
                continue
            try:
                event = self._single.decode(element)
            except Exception as exc:  # any decoder failure is a reason
                out.rejected.append(reject(position, element, exc))
                continue
            ts = event.ts
            assert isinstance(ts, int)
            if not low <= ts <= high:
                detail = f"ts {ts} is outside [{low}, {high}] (now {now_ms})"
                out.rejected.append(Rejected(position, element, "ts_out_of_window", detail))
                continue
            if self._keys_repeat(element, [event]):
                repeated = duplicate_key(element)
                if repeated is not None:
                    out.rejected.append(Rejected(position, element, "duplicate_key", repeated))
                    continue
            out.events.append(event)
        return out
