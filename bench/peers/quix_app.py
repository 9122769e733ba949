"""The four window families as a Quix Streams 3 application
(``python -m ctower.bench.peers.quix_app``, configured by ``PEER_*``).

What a Quix user writes: one dataframe per input topic (event time from a
``timestamp_extractor``), envelopes split with ``apply(expand=True)``, one
branch per window family the stream feeds (each record's own time set with
``set_timestamp``), the branches of a family joined with ``concat`` and
re-keyed to the window key with ``group_by`` (a repartition topic, Quix's
way), then ``tumbling_window(..., grace_ms=10 s).reduce(...).final()``.
Library defaults otherwise: at-least-once, changelog topics, RocksDB state.

``concat`` over several topics turns on Quix's time alignment (buffered,
paused and resumed partitions), which costs throughput: on a 20k-event
backlog here the same app with one window per (family, stream) and no
``concat`` drained about five times faster. But that computes partial
aggregates per stream, not the families ctower has, so it is not the peer.

Sink: a counting sink (it counts the closed windows and drops them), the same
as the Bytewax peer's, so neither pays for output.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from quixstreams import Application
from quixstreams.dataframe import StreamingDataFrame
from quixstreams.sinks import BaseSink

from ctower.bench.peers import (
    GRACE_MS,
    MAPPINGS,
    STREAMS,
    WINDOW_MS,
    Deltas,
    PeerConfig,
    Progress,
    Record,
    add_deltas,
    envelope,
    epoch_ms,
)


class CountingSink(BaseSink):
    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def add(self, value: Any, key: Any, timestamp: int, headers: Any, topic: str,
            partition: int, offset: int) -> None:
        self.progress.windows += 1

    def flush(self) -> None:
        pass


def build(app: Application, config: PeerConfig, progress: Progress) -> None:
    def split(value: Any) -> list[dict[str, Any]]:
        events = envelope(value)
        progress.started()
        progress.events += len(events)
        return events

    def records(mapping: Callable[[dict[str, Any]], list[Record]],
                ev: dict[str, Any]) -> list[dict[str, Any]]:
        made = mapping(ev)
        progress.records += len(made)
        return [{"key": key, "ts": ts, "deltas": deltas} for key, ts, deltas in made]

    def folded(record: dict[str, Any]) -> None:
        progress.folded += 1

    def late(*_: Any, **__: Any) -> bool:
        progress.late += 1
        return False  # counted, not logged

    branches: dict[str, list[StreamingDataFrame]] = {family: [] for family in WINDOW_MS}
    for stream in STREAMS:
        topic = app.topic(config.topic(stream), key_deserializer="str",
                          value_deserializer="json", timestamp_extractor=_message_time)
        sdf = app.dataframe(topic).apply(split, expand=True)
        for family, mapping in MAPPINGS.get(stream, {}).items():
            branch = sdf.apply(functools.partial(records, mapping), expand=True)
            branches[family].append(branch.set_timestamp(_event_time))

    sink = CountingSink(progress)
    for family, parts in branches.items():
        sdf = functools.reduce(StreamingDataFrame.concat, parts)
        sdf = sdf.group_by(lambda record: record["key"], name=family)
        sdf = sdf.update(folded)
        window = sdf.tumbling_window(WINDOW_MS[family], grace_ms=GRACE_MS, name=family,
                                     on_late=late)
        sdf = window.reduce(reducer=_reduce, initializer=_initial).final()
        sdf.sink(sink)


def _message_time(value: Any, _headers: Any, _ts: float, _type: Any) -> int:
    """Event time of a message (its first event's): Quix aligns the
    concatenated topics by it, so one topic is not read far ahead of another."""
    first = value[0] if isinstance(value, list) else value
    return epoch_ms(first["ts"])


def _event_time(record: dict[str, Any], _key: Any, _ts: int, _headers: Any) -> int:
    ts: int = record["ts"]
    return ts


def _initial(record: dict[str, Any]) -> Deltas:
    return dict(record["deltas"])


def _reduce(acc: Deltas, record: dict[str, Any]) -> Deltas:
    return add_deltas(acc, record["deltas"])


def main() -> None:
    config = PeerConfig.from_env()
    progress = Progress(config.progress)
    app = Application(
        broker_address=config.bootstrap,
        consumer_group=config.group,
        auto_offset_reset="earliest",
        state_dir=config.state_dir,
        loglevel=logging.WARNING,
    )
    build(app, config, progress)
    app.run()


if __name__ == "__main__":
    main()
