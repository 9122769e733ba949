"""The four window families as a Bytewax 0.21 dataflow
(``python -m bytewax.run "ctower.bench.peers.bytewax_flow:flow()"``, configured by
``PEER_*``; one worker, as the worker it is compared with).

What a Bytewax user writes: one Kafka input over the stream topics,
``flat_map`` to split envelopes into events and events into window records,
``branch`` per window family, and per family ``fold_window`` with an
``EventClock`` (10 s wait, ctower's grace) and a ``TumblingWindower``,
unordered (sums do not need timestamp order, which Bytewax documents as a
cost in throughput and latency: the folder would wait for the watermark).
Bytewax re-keys in memory (its own exchange between workers), not through
Kafka. No recovery configured (the library's default).

Sink: a counting sink (it counts the closed windows and drops them), the same
as the Quix peer's, so neither pays for output.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
import orjson
from bytewax.connectors.kafka import KafkaSourceMessage
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import EventClock, TumblingWindower, fold_window
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import OFFSET_BEGINNING

from ctower.bench.peers import (
    GRACE_MS,
    MAPPINGS,
    STREAMS,
    WINDOW_MS,
    Deltas,
    PeerConfig,
    Progress,
    add_deltas,
    envelope,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Keyed = tuple[str, tuple[int, Deltas]]


class _Counting(StatelessSinkPartition[Any]):
    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def write_batch(self, items: list[Any]) -> None:
        self.progress.windows += len(items)


class CountingSink(DynamicSink[Any]):
    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Counting:
        return _Counting(self.progress)


def flow() -> Dataflow:
    config = PeerConfig.from_env()
    progress = Progress(config.progress)

    def split(message: KafkaSourceMessage[Any, Any]) -> list[tuple[str, dict[str, Any]]]:
        stream = config.stream_of(message.topic or "")
        events = envelope(orjson.loads(message.value))
        progress.started()
        progress.events += len(events)
        return [(stream, ev) for ev in events]

    def records(item: tuple[str, dict[str, Any]]) -> list[tuple[str, Keyed]]:
        stream, ev = item
        made = [
            (family, (key, (ts, deltas)))
            for family, mapping in MAPPINGS.get(stream, {}).items()
            for key, ts, deltas in mapping(ev)
        ]
        progress.records += len(made)
        return made

    def fold(acc: Deltas, value: tuple[int, Deltas]) -> Deltas:
        progress.folded += 1
        return add_deltas(acc, value[1])

    def late(_item: Any) -> None:
        progress.folded += 1
        progress.late += 1

    dataflow = Dataflow("ctower_peer")
    messages = kop.input("kafka", dataflow, brokers=[config.bootstrap],
                         topics=[config.topic(stream) for stream in STREAMS],
                         starting_offset=OFFSET_BEGINNING)
    events = op.flat_map("split", messages.oks, split)
    tagged = op.flat_map("records", events, records)
    clock = EventClock(lambda value: EPOCH + timedelta(milliseconds=value[0]),
                       wait_for_system_duration=timedelta(milliseconds=GRACE_MS))
    results = []
    rest = tagged
    families = list(WINDOW_MS)
    for i, family in enumerate(families):
        if i < len(families) - 1:
            branch = op.branch(f"{family}?", rest, lambda rec, f=family: rec[0] == f)
            mine, rest = branch.trues, branch.falses
        else:
            mine = rest
        keyed = op.map(f"{family}_value", mine, lambda rec: rec[1])
        windows = fold_window(
            family, keyed, clock,
            TumblingWindower(length=timedelta(milliseconds=WINDOW_MS[family]), align_to=EPOCH),
            builder=dict, folder=fold, merger=add_deltas, ordered=False,
        )
        op.inspect(f"{family}_late", windows.late, lambda _step, item: late(item))
        results.append(windows.down)
    op.output("count", op.merge("results", *results), CountingSink(progress))
    return dataflow
