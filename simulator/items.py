"""What the generator hands to the outputs: one Kafka message's worth.

Kept apart from the generator so the producer, the JSONL writer, replay and
the truth recorder share one small type without importing the simulation.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from ctower.schemas.events import Event, encoder
from ctower.simulator.clock import iso


class Item(NamedTuple):
    """One message to send: a valid event, or raw bytes that are deliberately wrong.

    ``raw`` holds the exact message value when it is given rather than
    encoded from ``event``: a malformed incident or a batch envelope with a
    bad element (``event`` None; ``contained`` lists the valid events inside,
    which the worker must still count), or a replayed event whose bytes must
    not change (``event`` set). ``rejections`` is what the decoder must say:
    (index in the envelope or -1, reason code, what was broken).
    """

    stream: str
    key: str
    ts: int
    event: Event | None
    raw: bytes | None = None
    contained: tuple[Event, ...] = ()
    rejections: tuple[tuple[int, str, str], ...] = ()
    late_ms: int = 0
    """> 0: a ``late`` incident event, this far behind its partition's max ts."""
    iso: bool = False
    """Encode ``ts`` (and ``eta``/``slot_start``) as ISO 8601 text, UTC+8."""
    resent: bool = False
    """A copy of an event already sent, as an at-least-once producer re-sends it
    (``--duplicates``): the worker must count it once, so the truth does not."""

    @property
    def standalone(self) -> bool:
        """Must go out as its own message (never merged into a batch envelope)."""
        return self.event is None

    @property
    def units(self) -> int:
        """Events this message counts as (an envelope counts each element)."""
        if self.raw is None or self.event is not None:
            return 1
        return max(1, len(self.contained) + sum(1 for r in self.rejections if r[0] >= 0))


_TIME_FIELDS = ("ts", "eta", "slot_start")


def encode_event(event: Event, as_iso: bool = False) -> bytes:
    """Wire bytes of one event; ISO 8601 times when the source system sends them."""
    if not as_iso:
        return encoder.encode(event)
    fields = {k: v for k, v in msgspec.structs.asdict(event).items() if v is not None}
    for name in _TIME_FIELDS:
        value = fields.get(name)
        if isinstance(value, int):
            fields[name] = iso(value)
    return encoder.encode(fields)


def wire_value(item: Item) -> bytes:
    """The Kafka message value of an item when sent alone."""
    if item.raw is not None:
        return item.raw
    assert item.event is not None
    return encode_event(item.event, item.iso)
