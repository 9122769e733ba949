"""``ctower record``: what the raw topics hold, as a JSONL file replay accepts.

Why a recorder when the simulator can already write ``--out``: a real day
did not come from the simulator. Recording it lets a bug report carry the
day's exact messages, lets ``ctower simulate --replay`` send them again, and
lets ``ctower backtest`` try candidate rules on it.

What a line holds is what :mod:`ctower.simulator.jsonl` writes: a message
that is one valid event becomes an ``event`` line with its bytes unchanged;
anything else (a batch envelope, a malformed value) becomes a ``raw`` line
with the rejections the worker's decoder finds, so a replay sends the same
bytes and a reader knows what should be refused.

Order: the partitions of all six topics are merged by the time Kafka holds
for each record (the producer's create time, else the broker's append time),
ties by topic, partition and offset, so the file is in the order the
messages were written and the same topics always give the same file. Only a
bounded number of records per partition is held at once: a partition with a
full buffer is paused while the others catch up.

``--since``/``--until`` select by that Kafka time, not by the events' own
``ts`` (which may be late or wrong: the point of recording is to keep the
messages as they were).
"""

from __future__ import annotations

import heapq
import re
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import click
import msgspec

from ctower.schemas.events import EVENT_TYPES
from ctower.schemas.wire import EventDecoder
from ctower.settings import STREAMS, Settings
from ctower.simulator.clock import CHINA_TZ
from ctower.simulator.items import Item
from ctower.simulator.jsonl import line_bytes

BUFFER_PER_PARTITION = 5_000
"""Records held per partition before it is paused (memory stays bounded)."""

_AGO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_when(text: str, now_ms: int | None = None) -> int | None:
    """A ``--since``/``--until`` value as epoch ms; None for ``beginning``.

    Accepts ISO 8601 (a naive time is China time, as ``simulate --start``),
    a duration ago (``90m``, ``2h``, ``1d``), epoch milliseconds, or
    ``beginning``.
    """
    value = text.strip()
    if value.lower() in ("beginning", "earliest"):
        return None
    now = int(time.time() * 1000) if now_ms is None else now_ms
    ago = _AGO.match(value)
    if ago:
        return now - int(float(ago.group(1)) * _UNIT_MS[ago.group(2)])
    if value.isdigit():
        return int(value)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r}: expected ISO 8601, a duration ago (90m, 2h, 1d), epoch ms or 'beginning'"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=CHINA_TZ)
    return int(parsed.astimezone(UTC).timestamp() * 1000)


@dataclass(slots=True)
class RecordStats:
    """What a recording wrote."""

    messages: int = 0
    event_lines: int = 0
    raw_lines: int = 0
    per_stream: dict[str, int] = field(default_factory=dict)
    first_ms: int | None = None
    last_ms: int | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        span = ""
        if self.first_ms is not None and self.last_ms is not None:
            first = datetime.fromtimestamp(self.first_ms / 1000, UTC).isoformat(timespec="seconds")
            last = datetime.fromtimestamp(self.last_ms / 1000, UTC).isoformat(timespec="seconds")
            span = f", Kafka times {first} .. {last}"
        streams = ", ".join(f"{k} {v:,}" for k, v in sorted(self.per_stream.items()))
        return (
            f"recorded {self.messages:,} messages ({self.event_lines:,} events, "
            f"{self.raw_lines:,} raw) in {self.seconds:.1f} s{span}"
            + (f" [{streams}]" if streams else "")
        )


class LineMaker:
    """Turns one message value into its JSONL line, as the simulator would write it."""

    def __init__(self, settings: Settings) -> None:
        self._typed = {s: msgspec.json.Decoder(EVENT_TYPES[s]) for s in STREAMS}
        # the wire decoder only names what is wrong; any time is kept, however old
        self._wire = {
            s: EventDecoder.for_stream(s, 10 * 365 * 86_400, 10 * 365 * 86_400,
                                       settings.max_event_kb * 1024)
            for s in STREAMS
        }

    def line(self, stream: str, key: bytes | None, value: bytes | None) -> tuple[bytes, bool]:
        """The line, and whether it is an ``event`` line."""
        raw = value or b""
        head = raw.lstrip()[:1]
        if head == b"{" and b"\n" not in raw and b"\r" not in raw:
            try:
                event = self._typed[stream].decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
                event = None
            if event is not None and not self._wire[stream].decode(raw).rejected:
                ts = event.ts
                assert isinstance(ts, int)
                item = Item(stream, event.partition_key, ts, event, raw=raw)
                return line_bytes(item, raw), True
        decoded = self._wire[stream].decode(raw)
        rejections = tuple((r.index, r.reason, "recorded") for r in decoded.rejected)
        item = Item(
            stream, (key or b"").decode("utf-8", "replace"), 0, None, raw=raw,
            rejections=rejections,
        )
        return line_bytes(item, raw), False


def record(
    settings: Settings,
    out: IO[bytes],
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    streams: tuple[str, ...] = STREAMS,
    progress: Callable[[int], None] | None = None,
    consumer_factory: Callable[..., Any] | None = None,
) -> RecordStats:
    """Write the records of ``streams`` between the two Kafka times to ``out``.

    The end is fixed when the recording starts (``until_ms``, or each
    partition's end offset then): a recorder of a live topic finishes.
    """
    from kafka import KafkaConsumer, TopicPartition

    started = time.monotonic()
    make = consumer_factory or KafkaConsumer
    consumer = make(
        bootstrap_servers=settings.bootstrap,
        enable_auto_commit=False,
        group_id=None,
        client_id="ctower-record",
        max_poll_records=10_000,
    )
    stats = RecordStats()
    lines = LineMaker(settings)
    order = {settings.topic(s): n for n, s in enumerate(streams)}
    stream_of = {settings.topic(s): s for s in streams}
    try:
        tps = [
            TopicPartition(topic, p)
            for topic in order
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not tps:
            return stats
        consumer.assign(tps)
        ends: dict[Any, int] = consumer.end_offsets(tps)
        if until_ms is not None:
            found = consumer.offsets_for_times({tp: until_ms for tp in tps})
            ends = {tp: (found[tp].offset if found.get(tp) else ends[tp]) for tp in tps}
        starts: dict[Any, int] = consumer.beginning_offsets(tps)
        if since_ms is not None:
            found = consumer.offsets_for_times({tp: since_ms for tp in tps})
            starts = {tp: (found[tp].offset if found.get(tp) else ends[tp]) for tp in tps}
        active = [tp for tp in tps if starts[tp] < ends[tp]]
        for tp in tps:
            consumer.seek(tp, min(starts[tp], ends[tp]))
        buffers: dict[Any, deque[Any]] = {tp: deque() for tp in active}
        heap: list[tuple[int, int, int, int, Any]] = []
        """(Kafka time, topic order, partition, offset, tp) of each buffer's head."""
        paused: set[Any] = set()

        def push_head(tp: Any) -> None:
            rec = buffers[tp][0]
            heapq.heappush(heap, (rec.timestamp, order[tp.topic], tp.partition, rec.offset, tp))

        def done(tp: Any) -> bool:
            return not buffers[tp] and consumer.position(tp) >= ends[tp]

        waiting = {tp for tp in active}
        """Partitions with an empty buffer that still have records to come."""
        while waiting or heap:
            while waiting:
                want = [tp for tp in active if len(buffers[tp]) < BUFFER_PER_PARTITION]
                stop = [tp for tp in active if tp not in want and tp not in paused]
                if stop:
                    consumer.pause(*stop)
                    paused.update(stop)
                back = [tp for tp in paused if tp in want]
                if back:
                    consumer.resume(*back)
                    paused.difference_update(back)
                for tp, records in consumer.poll(timeout_ms=500).items():
                    if tp not in buffers:
                        continue
                    buffer = buffers[tp]
                    had = bool(buffer)
                    buffer.extend(r for r in records if r.offset < ends[tp])
                    if not had and buffer:
                        push_head(tp)
                waiting = {tp for tp in waiting if not buffers[tp] and not done(tp)}
            if not heap:
                break
            _, _, _, _, tp = heapq.heappop(heap)
            rec = buffers[tp].popleft()
            stream = stream_of[tp.topic]
            text, is_event = lines.line(stream, rec.key, rec.value)
            out.write(text)
            stats.messages += 1
            stats.per_stream[stream] = stats.per_stream.get(stream, 0) + 1
            if is_event:
                stats.event_lines += 1
            else:
                stats.raw_lines += 1
            if stats.first_ms is None:
                stats.first_ms = rec.timestamp
            stats.last_ms = rec.timestamp
            if progress is not None:
                progress(1)
            if buffers[tp]:
                push_head(tp)
            elif not done(tp):
                waiting.add(tp)
    finally:
        consumer.close()
        stats.seconds = time.monotonic() - started
    return stats


@click.command("record")
@click.option(
    "--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
    help="The JSONL file to write ('-' for stdout).",
)
@click.option(
    "--since", "since_text", default="beginning", show_default=True,
    help="Kafka time to start at: ISO 8601 (naive = UTC+8), a duration ago (2h, 1d), "
    "epoch ms, or 'beginning'.",
)
@click.option("--until", "until_text", help="Kafka time to stop at (same forms); default: now.")
@click.option(
    "--streams", "streams_text", default=",".join(STREAMS), show_default=True,
    help="Comma list of the raw streams to record.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def record_command(
    out_path: Path, since_text: str, until_text: str | None, streams_text: str, quiet: bool
) -> None:
    """Record what the raw topics hold to a JSONL file (for --replay and backtest)."""
    from tqdm import tqdm

    from ctower.cli import settings_or_exit

    settings = settings_or_exit()
    names = tuple(dict.fromkeys(s.strip() for s in streams_text.split(",") if s.strip()))
    unknown = [s for s in names if s not in STREAMS]
    if unknown or not names:
        raise click.BadParameter(
            f"unknown {', '.join(unknown) or '(none)'}; choose from {', '.join(STREAMS)}",
            param_hint="--streams",
        )
    try:
        since_ms = parse_when(since_text)
        until_ms = parse_when(until_text) if until_text else None
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    bar = tqdm(unit="msg", unit_scale=True, mininterval=0.5, disable=quiet, file=sys.stderr,
               desc="recording")
    to_stdout = str(out_path) == "-"
    handle: IO[bytes] = (
        sys.stdout.buffer if to_stdout else open(out_path, "wb", buffering=1 << 20)  # noqa: SIM115
    )
    try:
        stats = record(settings, handle, since_ms=since_ms, until_ms=until_ms, streams=names,
                       progress=bar.update)
    finally:
        bar.close()
        if not to_stdout:
            handle.close()
        else:
            handle.flush()
    click.echo(stats.summary(), err=to_stdout)
