"""The ``--out`` file: one JSON line per message, replayable byte for byte.

A line is ``{"stream": ..., "event": {...}}`` for a valid event, the event
exactly as it goes on the wire (ISO 8601 times stay text), plus
``"late_ms"`` for a late incident event and ``"resent": true`` for a copy of
an event sent before (``--duplicates``). A message that is not one valid
event (malformed, or a batch envelope with a bad element) is kept as
``{"stream", "key", "raw" | "raw_b64", "rejections": [[index, reason, kind]]}``
so a replay sends the same bytes and a reader knows what the worker should
reject.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import msgspec

from ctower.schemas.events import EVENT_TYPES, Event
from ctower.simulator.items import Item

_enc = msgspec.json.Encoder()


class _Line(msgspec.Struct, omit_defaults=True):
    stream: str
    event: msgspec.Raw = msgspec.Raw()  # empty: not an event line
    key: str | None = None
    raw: str | None = None
    raw_b64: str | None = None
    rejections: list[tuple[int, str, str]] = []
    late_ms: int = 0
    resent: bool = False


def line_bytes(item: Item, value: bytes) -> bytes:
    """One line for an item whose message value is ``value``."""
    stream = item.stream.encode()
    if not item.standalone:
        late = b',"late_ms":%d' % item.late_ms if item.late_ms else b""
        if item.resent:
            late += b',"resent":true'
        return b'{"stream":"' + stream + b'","event":' + value + late + b"}\n"
    try:
        body: dict[str, object] = {"raw": value.decode("utf-8")}
    except UnicodeDecodeError:
        body = {"raw_b64": base64.b64encode(value).decode("ascii")}
    line = {"stream": item.stream, "key": item.key, **body, "rejections": list(item.rejections)}
    return _enc.encode(line) + b"\n"


class JsonlWriter:
    """Appends lines; buffered, because a run writes millions of them."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: IO[bytes] = open(self.path, "wb", buffering=1 << 20)  # noqa: SIM115
        self.lines = 0

    def write(self, item: Item, value: bytes) -> None:
        self._file.write(line_bytes(item, value))
        self.lines += 1

    def close(self) -> None:
        self._file.close()


def read_jsonl(path: str | Path) -> Iterator[Item]:
    """Items of a file written by :class:`JsonlWriter`, carrying their exact bytes."""
    decoder = msgspec.json.Decoder(_Line)
    typed = {stream: msgspec.json.Decoder(cls) for stream, cls in EVENT_TYPES.items()}
    with open(path, "rb") as handle:
        for number, text in enumerate(handle, 1):
            if not text.strip():
                continue
            try:
                line = decoder.decode(text)
            except msgspec.DecodeError as exc:
                raise ValueError(f"{path}:{number}: not a simulator line: {exc}") from None
            if len(line.event):
                value = bytes(line.event)
                event: Event = typed[line.stream].decode(value)
                ts = event.ts
                assert isinstance(ts, int)
                yield Item(
                    line.stream, event.partition_key, ts, event, raw=value, late_ms=line.late_ms,
                    resent=line.resent,
                )
                continue
            if line.raw is not None:
                value = line.raw.encode("utf-8")
            elif line.raw_b64 is not None:
                value = base64.b64decode(line.raw_b64)
            else:
                raise ValueError(f"{path}:{number}: a line needs `event`, `raw` or `raw_b64`")
            yield Item(
                line.stream,
                line.key or "",
                0,
                None,
                raw=value,
                contained=tuple(_valid_elements(line.stream, value)),
                rejections=tuple(tuple(r) for r in line.rejections),  # type: ignore[misc]
            )


def _valid_elements(stream: str, value: bytes) -> Iterator[Event]:
    """The valid events inside a batch envelope (what the worker would still count)."""
    if value.lstrip()[:1] != b"[":
        return
    try:
        parts = msgspec.json.decode(value, type=list[msgspec.Raw])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return
    decoder = msgspec.json.Decoder(EVENT_TYPES[stream])
    for part in parts:
        try:
            yield decoder.decode(part)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
            continue
