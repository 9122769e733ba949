"""``ctower bench``: throughput of one worker, against a bare consumer.

A benchmark, not a test: machines here are shared and noisy, so it prints
figures (and ratios, which carry over between machines) instead of
asserting them. Steps, each on a backlog already in Kafka so that every
figure is a drain rate:

1. the simulator produces N events (batch envelopes, and separately a
   smaller run of one event per message);
2. a bare aiokafka consumer reads and decodes them: the ceiling for Python;
3. one worker process drains them with every table on: events/s, time to
   drain, peak RSS;
4. the sink drains them into the store: rows/s of the whole pipeline.

The last line is ``RESULT events_per_s=<n> raw_events_per_s=<n> ratio=<x> rss_mb=<n>``
for the batched run.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from ctower.settings import STREAMS, Settings


@dataclass
class Drain:
    events: int
    seconds: float
    """From the first event processed to the last."""
    total_seconds: float
    """From process start to the last event: what an operator waits."""
    rss_mb: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a live process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def produce(settings: Settings, events: int, batch: int, seed: int) -> int:
    from ctower.simulator.generator import SimConfig, Simulator
    from ctower.simulator.producer import send

    items = Simulator(SimConfig(seed=seed, events=events)).items()
    with tqdm(total=events, desc=f"produce (batch {batch})", unit="ev", leave=False) as bar:
        stats = send(settings, items, batch=batch, acks="1", progress=bar)
    click.echo(f"  produced {stats.events:,} events in {stats.messages:,} messages "
               f"at {stats.events_per_s:,.0f} events/s")
    return stats.events


async def bare_consume(settings: Settings, expected: int) -> Drain:
    """aiokafka + the same decoder, nothing else: the Python ceiling."""
    from aiokafka import AIOKafkaConsumer

    from ctower.schemas.wire import EventDecoder

    decoders = {
        settings.topic(stream): EventDecoder.for_stream(
            stream, settings.ts_max_past_days * 86400, settings.ts_max_future_seconds
        )
        for stream in STREAMS
    }
    consumer = AIOKafkaConsumer(
        *decoders, bootstrap_servers=settings.bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False, group_id=None, max_partition_fetch_bytes=4 << 20,
    )
    started = time.perf_counter()
    await consumer.start()
    count = 0
    first = 0.0
    try:
        with tqdm(total=expected, desc="bare consumer", unit="ev", leave=False) as bar:
            while count < expected:
                batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
                if not batches and time.perf_counter() - started > 120:
                    break
                for tp, messages in batches.items():
                    decode = decoders[tp.topic].decode
                    got = 0
                    for message in messages:
                        got += len(decode(message.value).events)
                    if got and not first:
                        first = time.perf_counter()
                    count += got
                    bar.update(got)
    finally:
        await consumer.stop()
    done = time.perf_counter()
    return Drain(count, done - (first or started), done - started, 0.0)


def drain(
    settings: Settings, command: str, count: Callable[[], int | None], expected: int, log: Path
) -> Drain:
    """Start ``ctower <command>`` on the backlog and time it until ``count()`` reaches
    ``expected``. ``count`` returns None while the process cannot answer yet."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ctower", command], env=settings.child_env(),
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )
    first = 0.0
    done_count = 0
    try:
        with tqdm(total=expected, desc=command, unit="ev", leave=False) as bar:
            while done_count < expected:
                if proc.poll() is not None:
                    tail = log.read_text(errors="replace")[-3000:]
                    raise click.ClickException(f"{command} exited:\n{tail}")
                if time.perf_counter() - started > 1800:
                    raise click.ClickException(f"{command} did not drain in 30 minutes")
                time.sleep(0.1)
                now_count = count()
                if now_count is None:
                    continue
                if now_count and not first:
                    first = time.perf_counter()
                bar.update(now_count - done_count)
                done_count = now_count
        done = time.perf_counter()
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return Drain(done_count, done - first, done - started, rss)


def worker_counter(settings: Settings) -> Callable[[], int | None]:
    url = f"http://127.0.0.1:{settings.worker_web_port}/stats/"

    def count() -> int | None:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                stats = json.load(answer)
        except OSError:
            return None
        return sum(s.get("events", 0) for s in stats.values())

    return count


def store_counter(settings: Settings) -> Callable[[], int | None]:
    from ctower.store import open_store

    query = " + ".join(f"(SELECT count() FROM {stream}_events)" for stream in STREAMS)
    clients: list[Any] = []

    def count() -> int | None:
        try:
            if not clients:
                clients.append(open_store(settings, path_fallback=False))
            return int(clients[0].query(f"SELECT {query}").first_row[0])
        except Exception:  # the sink is still starting: its front is not up yet
            clients.clear()
            return None

    return count


def run_case(
    base: Settings, name: str, events: int, batch: int, seed: int, with_sink: bool
) -> tuple[Drain, Drain, Drain | None]:
    from ctower.broker.topics import ensure_topics

    run_id = f"bench{int(time.time())}{name}"
    settings = base.model_copy(update={
        "topic_prefix": f"{run_id}.",
        "app_id": run_id,
        "data_dir": base.data_dir / "bench" / run_id,
        "store_dsn": None,
        "log_level": "WARNING",
    })
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ensure_topics(settings)
    click.echo(f"\n[{name}] {events:,} events, {batch} per message (topics {run_id}.*)")
    sent = produce(settings, events, batch, seed)
    raw = asyncio.run(bare_consume(settings, sent))
    click.echo(f"  bare aiokafka + decode: {raw.events_per_s:,.0f} events/s")
    worker = drain(settings, "worker", worker_counter(settings), sent,
                   settings.data_dir / "worker.log")
    click.echo(f"  one worker: {worker.events_per_s:,.0f} events/s "
               f"(drained {worker.events:,} in {worker.total_seconds:.1f} s from start, "
               f"peak RSS {worker.rss_mb:.0f} MB)")
    sink = None
    if with_sink:
        sink = drain(settings, "sink", store_counter(settings), sent,
                     settings.data_dir / "sink.log")
        click.echo(f"  sink into the store: {sink.events_per_s:,.0f} rows/s "
                   f"(drained in {sink.total_seconds:.1f} s from start, "
                   f"peak RSS {sink.rss_mb:.0f} MB)")
    return raw, worker, sink


@click.command()
@click.option("--events", default=1_000_000, show_default=True, help="Events, batched run.")
@click.option("--batch", default=100, show_default=True, help="Events per message.")
@click.option("--single-events", default=200_000, show_default=True,
              help="Events of the one-event-per-message run (0 to skip).")
@click.option("--seed", default=1, show_default=True)
@click.option("--no-sink", is_flag=True, help="Measure the worker only.")
def bench(events: int, batch: int, single_events: int, seed: int, no_sink: bool) -> None:
    """Throughput of one worker with every table on; prints a RESULT line."""
    from ctower.broker.local import LocalKafka
    from ctower.cli import settings_or_exit

    settings: Settings = settings_or_exit()
    broker = LocalKafka(settings) if settings.uses_local_kafka else None
    started_broker = broker is not None and not broker.status().running
    if broker is not None:
        broker.up()
    click.echo(f"cores: {os.cpu_count()}, Kafka: {settings.bootstrap}")
    try:
        if single_events:
            raw1, worker1, _ = run_case(settings, "single", single_events, 1, seed, False)
            click.echo(f"  single: worker/bare = {worker1.events_per_s / raw1.events_per_s:.3f}")
        raw, worker, _sink = run_case(settings, "batched", events, batch, seed, not no_sink)
    finally:
        if started_broker and broker is not None:
            broker.down()
    ratio = worker.events_per_s / raw.events_per_s if raw.events_per_s else 0.0
    click.echo(
        f"RESULT events_per_s={worker.events_per_s:.0f} raw_events_per_s={raw.events_per_s:.0f} "
        f"ratio={ratio:.3f} rss_mb={worker.rss_mb:.0f}"
    )
