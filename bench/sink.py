"""Rows per second of the ClickHouse sink for raw scan events (prints figures).

Not a test. Run with a broker, for example::

    KAFKA_BOOTSTRAP=127.0.0.1:9092 .venv/bin/python bench/sink.py

Part 1 times the sink's stages without Kafka (decode, build columns, insert
as Arrow or as Native columns), to choose the insert format. Part 2 times the
whole sink: produce N events, then consume, insert and commit them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import msgspec
import numpy as np

from ctower.schemas.migrations import apply_migrations
from ctower.schemas.wire import EventDecoder
from ctower.settings import load_settings
from ctower.sinks.clickhouse.columns import Chunk, raw_writers
from ctower.sinks.clickhouse.sink import ClickHouseSink
from ctower.store import open_store

encoder = msgspec.json.Encoder()


def scan_events(n: int, now_ms: int, tag: str) -> list[dict[str, object]]:
    rng = random.Random(7)
    return [
        {
            "scan_id": f"{tag}-{i}",
            "ts": now_ms - rng.randrange(3_600_000),
            "store_id": f"S{rng.randrange(200):03d}",
            "sku": f"SKU{rng.randrange(5000):05d}",
            "action": "view" if rng.random() < 0.8 else "add_to_cart",
            **({"member_id": f"M{rng.randrange(10**6)}"} if rng.random() < 0.5 else {}),
        }
        for i in range(n)
    ]


def messages(events: list[dict[str, object]], per_message: int) -> list[bytes]:
    if per_message == 1:
        return [encoder.encode(ev) for ev in events]
    return [
        encoder.encode(events[i : i + per_message]) for i in range(0, len(events), per_message)
    ]


def stages(n: int, batch: int, reps: int) -> None:
    """Decode, columns, and each insert format, per row."""
    now_ms = int(time.time() * 1000)
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(data_dir=Path(tmp))
        client = open_store(settings, owner=True)
        try:
            apply_migrations(client)
            writer = raw_writers()["scan"].bind(client)
            decoder = EventDecoder.for_stream("scan", 400 * 86400, 3600)
            for per_message in (1, 100):
                raws = messages(scan_events(n, now_ms, f"{per_message}-{uuid.uuid4().hex}"),
                                per_message)
                t0 = time.perf_counter()
                events = []
                for raw in raws:
                    events += decoder.decode(raw, now_ms).events
                decode_s = time.perf_counter() - t0
                print(f"decode, {per_message} event(s)/message: {n / decode_s:,.0f} events/s")
            rates: dict[str, list[float]] = {"arrow": [], "native": []}
            for _ in range(reps):
                for fmt in ("arrow", "native"):
                    rows = 0
                    spent = 0.0
                    for start in range(0, len(events), batch):
                        part = events[start : start + batch]
                        chunk = Chunk(part, np.zeros(len(part), np.int32),
                                       np.arange(len(part), dtype=np.int64), "ct.scan")
                        t0 = time.perf_counter()
                        writer.insert(client, chunk, fmt)
                        spent += time.perf_counter() - t0
                        rows += len(part)
                    rates[fmt].append(rows / spent)
            for fmt, values in rates.items():
                print(f"{fmt:6s} columns + insert, batches of {batch}: median "
                      f"{statistics.median(values):,.0f} rows/s "
                      f"(runs: {', '.join(f'{v:,.0f}' for v in values)})")
        finally:
            client.close()


async def end_to_end(bootstrap: str, n: int, per_message: int, fmt: str, batch: int) -> None:
    from aiokafka import AIOKafkaProducer

    prefix = f"bench{uuid.uuid4().hex[:6]}."
    now_ms = int(time.time() * 1000)
    raws = messages(scan_events(n, now_ms, prefix), per_message)
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(kafka_bootstrap=bootstrap, topic_prefix=prefix,
                                 app_id=f"bench-{prefix}", data_dir=Path(tmp),
                                 sink_batch_rows=batch)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5,
                                    max_batch_size=1 << 20)
        await producer.start()
        try:
            topic = settings.topic("scan")
            for i, raw in enumerate(raws):
                await producer.send(topic, raw, key=str(i % 64).encode())
            await producer.flush()
        finally:
            await producer.stop()
        client = open_store(settings, owner=True)
        try:
            apply_migrations(client)
            sink = ClickHouseSink(settings, client, insert_format=fmt)  # type: ignore[arg-type]
            stop = asyncio.Event()
            task = asyncio.create_task(sink.run(stop))
            while sink.stats.messages == 0:
                await asyncio.sleep(0.01)
            t0 = time.perf_counter()
            while sink.stats.rows["scan_events"] < n:
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - t0
            stop.set()
            await task
            stored = client.query("SELECT count() FROM scan_events FINAL").result_rows[0][0]
            print(f"end to end, {fmt}, {per_message} event(s)/message, batch {batch}: "
                  f"{n / elapsed:,.0f} rows/s ({n} rows in {elapsed:.2f}s, "
                  f"insert time {sink.stats.insert_seconds:.2f}s, stored {stored})")
        finally:
            client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    stages(args.rows, args.batch, args.reps)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
    if not bootstrap:
        print("KAFKA_BOOTSTRAP unset: end-to-end part skipped")
        return
    for per_message in (100, 1):
        for fmt in ("arrow", "native"):
            asyncio.run(end_to_end(bootstrap, args.rows, per_message, fmt, args.batch))


if __name__ == "__main__":
    main()
