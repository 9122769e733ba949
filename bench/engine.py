"""``ctower bench``: throughput of one worker, against a bare consumer.

A benchmark, not a test: machines here are shared and noisy, so it prints
figures (and ratios, which carry over between machines) instead of
asserting them. Steps, each on a backlog already in Kafka so that every
figure is a drain rate:

1. the simulator produces N events (batch envelopes, and separately a
   smaller run of one event per message), from noon China time on a past
   day, so the workload does not follow the clock;
2. a bare aiokafka consumer reads and decodes them: the ceiling for Python;
3. one worker process drains them with every table on: events/s, time to
   drain, peak RSS;
4. the sink drains them into the store: rows/s of the whole pipeline.

The last line is ``RESULT events_per_s=<n> raw_events_per_s=<n> ratio=<x> rss_mb=<n>``
for the batched run.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import math
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import click
from pydantic import SecretStr
from tqdm import tqdm

from ctower.settings import STREAMS, Settings

if TYPE_CHECKING:
    from ctower.bench.coupons import ReservationRun


@dataclass
class Drain:
    events: int
    seconds: float
    """From the first event processed to the last."""
    total_seconds: float
    """From process start to the last event: what an operator waits."""
    rss_mb: float
    profile: list[tuple[str, float]] = field(default_factory=list)
    """Functions by share of own time while draining (py-spy), largest first."""
    cpu_seconds: float = 0.0
    """CPU time the processes used from the first event to the last: steadier than
    the rate on shared cores, where waiting for a core shows as a lower rate."""
    broker_cpu_seconds: float | None = None
    """CPU time the project's own broker used over the same span (None: a cluster
    elsewhere): what the workers' writes and fetches cost on the shared cores."""
    all_working_per_s: float | None = None
    """Several workers: events per second while every one of them folds
    (:meth:`WorkerCounter.all_working_rate`)."""
    heaviest_share: float | None = None
    """Several workers: the largest share of the backlog's messages in the
    partitions one worker held at the end (a half each is balanced)."""
    join_seconds: float | None = None
    """Several workers: from the first folding to all of them folding
    (:meth:`WorkerCounter.join_seconds`)."""

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a live process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a live process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_local_broker: list[int] = []
"""The pid of the project's own broker while :func:`kafka_for` holds it up (a run's
settings cannot find it: their data folder is the run's)."""


def produce(
    settings: Settings, events: int, batch: int, seed: int, without: tuple[str, ...] = (),
) -> int:
    """The simulator's first ``events`` events (less the streams ``without``) on
    the run's topics, ``batch`` per message."""
    from ctower.simulator.generator import Simulator, pinned_config
    from ctower.simulator.producer import send

    items = Simulator(pinned_config(seed, events)).items()
    if without:
        items = (item for item in items if item.stream not in without)
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


STALL_SECONDS = 180.0
"""A drain that counts nothing new for this long has failed (a crashed agent
leaves its worker up, counting nothing), instead of waiting out the timeout."""


def drain(
    settings: Settings | list[Settings], command: str, count: Callable[[], int | None],
    expected: int, log: Path, profile: bool = False,
) -> Drain:
    """Start ``ctower <command>`` on the backlog (one process per settings given)
    and time it until ``count()`` reaches ``expected``. ``count`` returns None
    while the processes cannot answer yet. With ``profile``, py-spy samples the
    first process from its first event to the last."""
    from ctower.bench.profiling import Profile

    every = settings if isinstance(settings, list) else [settings]
    started = progressed = time.perf_counter()
    logs = [log if len(every) == 1 else log.with_suffix(f".{i}.log") for i in range(len(every))]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "ctower", command], env=one.child_env(),
            stdout=path.open("wb"), stderr=subprocess.STDOUT,
        )
        for one, path in zip(every, logs, strict=True)
    ]
    first = cpu_first = broker_first = 0.0
    broker = _local_broker[-1] if _local_broker else None
    done_count = 0
    sampler: Profile | None = None
    top: list[tuple[str, float]] = []
    try:
        with tqdm(total=expected, desc=command, unit="ev", leave=False) as bar:
            while done_count < expected:
                for proc, path in zip(procs, logs, strict=True):
                    if proc.poll() is not None:
                        tail = path.read_text(errors="replace")[-3000:]
                        raise click.ClickException(f"{command} exited:\n{tail}")
                now = time.perf_counter()
                if now - progressed > STALL_SECONDS:
                    tail = logs[0].read_text(errors="replace")[-3000:]
                    where = (count.stall_report(log.parent)
                             if isinstance(count, WorkerCounter) else "")
                    raise click.ClickException(
                        f"{command} counted nothing new in {STALL_SECONDS:.0f} s "
                        f"({done_count:,} of {expected:,}){where}:\n{tail}"
                    )
                time.sleep(0.1)
                now_count = count()
                if now_count is None:
                    continue
                if now_count and not first:
                    first = time.perf_counter()
                    cpu_first = sum(cpu_seconds(proc.pid) for proc in procs)
                    broker_first = cpu_seconds(broker) if broker is not None else 0.0
                    if profile:
                        sampler = Profile(procs[0].pid, logs[0].with_suffix(".pyspy.txt"))
                if now_count > done_count:
                    progressed = time.perf_counter()
                bar.update(now_count - done_count)
                done_count = now_count
        done = time.perf_counter()
        cpu = sum(cpu_seconds(proc.pid) for proc in procs) - cpu_first
        broker_cpu = cpu_seconds(broker) - broker_first if broker is not None else None
        rss = max(peak_rss_mb(proc.pid) for proc in procs)
        if sampler is not None:
            top = sampler.stop()
    finally:
        for proc in procs:
            stop(proc)
    return Drain(done_count, done - first, done - started, rss, top, cpu, broker_cpu)


def end_offsets(settings: Settings) -> dict[tuple[str, int], int]:
    """(stream, partition) -> its end offset: where a drain of the backlog ends."""
    from ctower.topics import end_offsets as topic_ends

    stream_of = {settings.topic(stream): stream for stream in STREAMS}
    return {(stream_of[topic], p): end
            for (topic, p), end in topic_ends(settings.bootstrap, stream_of).items()}


class WorkerCounter:
    """Events the workers have folded, from their /stats/; keeps the last
    answers so the bench can say what the rules wrote besides.

    With ``ends`` (:func:`end_offsets`), the count stays below ``expected``
    until every stream partition is folded to its end by some worker: a
    partition folded again after it changed hands counts its events twice in
    the sums (a three-worker drain once counted 501,398 of 500,000), so the
    sums alone could end a drain early."""

    def __init__(
        self, settings: Settings | list[Settings],
        ends: dict[tuple[str, int], int] | None = None, expected: int = 0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        every = settings if isinstance(settings, list) else [settings]
        self.urls = [f"http://127.0.0.1:{one.worker_web_port}/stats/" for one in every]
        self.last: dict[str, Any] = {}
        self.ends = ends
        self.expected = expected
        self.furthest: dict[tuple[str, int], int] = {}
        """(stream, partition) -> the furthest offset any worker ever folded:
        a worker reports only the partitions it holds, and one taken over is
        folded again from its last commit, behind where the last owner was."""
        self.clock = clock
        self._answers: list[dict[str, Any]] = []
        self.history: list[tuple[float, list[int], int]] = []
        """(time, each worker's events folded, :meth:`backlog_folded`) at each
        count, with ``ends``: when every worker folds, and when the first ran
        out of work."""

    def __call__(self) -> int | None:
        answers = []
        for url in self.urls:
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    answers.append(json.load(answer))
            except OSError:
                return None
        self._answers = answers
        self.last = _summed(answers)
        events = _events(self.last)
        for key, offset in _positions(answers).items():
            self.furthest[key] = max(self.furthest.get(key, -1), offset)
        if self.ends is not None:
            each = [_events(answer) for answer in answers]
            self.history.append((self.clock(), each, self.backlog_folded()))
        if events and not self.rules_caught_up():
            events -= 1  # not drained while the rules have re-keyed items left to apply
        if self.ends is not None and not self.at_the_ends():
            events = min(events, self.expected - 1)
        return events

    def at_the_ends(self) -> bool:
        """Whether every stream partition with messages is folded to its last
        offset by one of the workers (``positions`` in each stream's /stats/)."""
        assert self.ends is not None
        folded = self.furthest
        return all(folded.get(key, -1) >= end - 1 for key, end in self.ends.items() if end)

    def backlog_folded(self) -> int:
        """The backlog's events folded by some worker, from the partitions'
        positions (the share of the backlog's messages behind them): unlike the
        summed ``events``, a partition folded again after it changed hands
        does not count twice."""
        assert self.ends is not None
        folded = self.furthest
        messages = sum(self.ends.values())
        behind = sum(min(folded.get(key, -1) + 1, end) for key, end in self.ends.items())
        return round(self.expected * behind / messages) if messages else 0

    def all_working_rate(self) -> float | None:
        """Events of the backlog per second while every worker folds: from the
        moment the last one folded its first events to the moment the first
        one folded its last (None if that span is under a second).

        The whole drain mixes this with the join (one worker drains alone
        until the other is in, then the group stands still while partitions
        change hands) and with the skew of the keys: once the lighter worker's
        partitions are at their ends it idles while the other finishes."""
        history = self.history
        start = next((i for i, (_, each, _) in enumerate(history) if all(each)), None)
        if start is None:
            return None
        last_growth = [history[start][0]] * len(history[start][1])
        for (_, before, _), (at, each, _) in pairwise(history[start:]):
            for worker, (then, now) in enumerate(zip(before, each, strict=True)):
                if now > then:
                    last_growth[worker] = at
        end = min(last_growth)
        began, _, folded_then = history[start]
        folded_at_end = max(folded for at, _, folded in history if at <= end)
        seconds = end - began
        return (folded_at_end - folded_then) / seconds if seconds >= 1.0 else None

    def join_seconds(self) -> float | None:
        """From the first count at which a worker had folded events to the first
        at which every one had: the workers' start-up skew and the rebalance
        that shares the partitions out, while the first drains alone."""
        history = self.history
        first = next((at for at, each, _ in history if any(each)), None)
        every = next((at for at, each, _ in history if all(each)), None)
        return None if first is None or every is None else every - first

    def heaviest_share(self) -> float | None:
        """The largest share of the backlog's messages in the partitions one
        worker held at the end: how evenly the keys' hashes split the work."""
        if self.ends is None or not self._answers:
            return None
        owner: dict[tuple[str, int], tuple[int, int]] = {}  # partition -> (offset, worker)
        for worker, answer in enumerate(self._answers):
            for key, offset in _positions([answer]).items():
                if offset > owner.get(key, (-1, 0))[0]:
                    owner[key] = (offset, worker)
        held = [0] * len(self._answers)
        for key, (_, worker) in owner.items():
            held[worker] += self.ends.get(key, 0)
        return max(held) / sum(held) if sum(held) else None

    def stall_report(self, into: Path) -> str:
        """Each worker's whole /stats/ in ``into/stall.<i>.json``, and where
        partitions wait for an offset (what a stalled drain looks at first)."""
        waits = []
        for i, url in enumerate(self.urls):
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    stats = json.load(answer)
            except OSError as exc:
                waits.append(f"worker {i}: no /stats/ ({exc})")
                continue
            (into / f"stall.{i}.json").write_text(json.dumps(stats, indent=1))
            for topic, order in stats.get("offset_order", {}).items():
                for partition, wait in order.get("waiting", {}).items():
                    waits.append(f"worker {i}: {topic}[{partition}] waits for offset "
                                 f"{wait['expected']} after {wait['seeks']} seeks")
        return f"; stats in {into}/stall.*.json; " + ("; ".join(waits) or "no partition waits")

    def unstuck(self) -> int:
        """Seeks of partitions whose expected offset stood still after the fetch
        loop had read it (``streams/offset_order.py``), over every worker and topic."""
        orders = self.last.get("offset_order", {})
        return sum(int(order.get("unstuck", 0)) for order in orders.values())

    def rules_caught_up(self) -> bool:
        decisions = self.last.get("decisions", {})
        return all(
            decisions.get(name, {}).get("items", 0) >= decisions.get(forwarded, 0)
            for name, forwarded in (
                ("stock-moves", "moves_forwarded"), ("lanes", "lane_events_forwarded"),
            )
        )

    def written(self, events: int) -> str:
        """The rules' records per input event, by kind (from the last answer)."""
        decisions = self.last.get("decisions", {})
        kinds = {
            "rule state": decisions.get("state_entities_written", 0),
            "levels": decisions.get("levels_sent", 0),
            "stock-move records": decisions.get("move_records", 0),
            "stock judgements": decisions.get("stock_judgements", 0),
            "lane records": decisions.get("lane_records", 0),
        }
        return ", ".join(f"{kind} {n / max(events, 1):.3f}" for kind, n in kinds.items())


def _events(answer: dict[str, Any]) -> int:
    return sum(s.get("events", 0) for s in answer.values() if isinstance(s, dict))


def _positions(answers: list[dict[str, Any]]) -> dict[tuple[str, int], int]:
    """(stream, partition) -> the furthest offset any worker folded."""
    folded: dict[tuple[str, int], int] = {}
    for answer in answers:
        for stream, section in answer.items():
            positions = section.get("positions") if isinstance(section, dict) else None
            for partition, offset in (positions or {}).items():
                key = (stream, int(partition))
                folded[key] = max(folded.get(key, -1), offset)
    return folded


def _summed(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """Several workers' /stats/ as one: numbers added, per section; a worker's
    stock moves go to whichever worker owns their key, so only the sums compare."""
    if len(answers) == 1:
        return answers[0]
    total: dict[str, Any] = {}
    for answer in answers:
        for section, values in answer.items():
            if not isinstance(values, dict):
                continue
            into = total.setdefault(section, {})
            for name, value in values.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    into[name] = into.get(name, 0) + value
                elif isinstance(value, dict) and (
                    name in ("stock-moves", "lanes") or section == "offset_order"
                ):
                    sub = into.setdefault(name, {})
                    for key, number in value.items():
                        if isinstance(number, int | float) and not isinstance(number, bool):
                            sub[key] = sub.get(key, 0) + number
    return total


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


def run_settings(base: Settings, name: str) -> Settings:
    """A fresh world for one bench run: its own topics, app id (the changelogs'
    prefix, so ``drop_run_topics`` finds them), data folder and worker web port
    (a worker already serving the default one, a demo, would be counted
    instead); no store, quiet logs."""
    run_id = f"bench{int(time.time())}{name}"
    settings = base.model_copy(update={
        "topic_prefix": f"{run_id}.",
        "app_id": run_id,
        "data_dir": base.data_dir / "bench" / run_id,
        "store_dsn": None,
        "log_level": "WARNING",
        "worker_web_port": free_port(),
    })
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


def run_case(
    base: Settings, name: str, events: int, batch: int, seed: int, with_sink: bool,
    workers: int = 1,
) -> tuple[Drain, Drain, Drain | None, Drain | None]:
    from ctower.topics import ensure_topics

    settings = run_settings(base, name)
    ensure_topics(settings)
    click.echo(f"\n[{name}] {events:,} events, {batch} per message "
               f"(topics {settings.topic_prefix}*)")
    try:
        return measure_case(settings, events, batch, seed, with_sink, workers)
    finally:
        click.echo(f"  dropped the run's {drop_run_topics(settings)} topics")


def measure_case(
    settings: Settings, events: int, batch: int, seed: int, with_sink: bool, workers: int = 1,
) -> tuple[Drain, Drain, Drain | None, Drain | None]:
    """The bare consumer, one worker, the sink (or None) and ``workers`` workers
    (None for one) on one backlog."""
    sent = produce(settings, events, batch, seed)
    raw = asyncio.run(bare_consume(settings, sent))
    click.echo(f"  bare aiokafka + decode: {raw.events_per_s:,.0f} events/s")
    counter = WorkerCounter(settings, end_offsets(settings), sent)
    worker = drain(settings, "worker", counter, sent, settings.data_dir / "worker.log",
                   profile=True)
    click.echo(f"  one worker: {worker.events_per_s:,.0f} events/s "
               f"(drained {worker.events:,} in {worker.total_seconds:.1f} s from start, "
               f"peak RSS {worker.rss_mb:.0f} MB; {cpu_line(worker)})")
    if worker.profile:
        click.echo("  where the worker's time went (py-spy, own time, top 10):")
        for name, share in worker.profile[:10]:
            click.echo(f"    {share:6.1%}  {name}")
    click.echo(f"  written by the rules per input event: {counter.written(sent)}")
    scaled = None
    if workers > 1:
        scaled = scale_out(settings, workers, sent)
        click.echo(f"  {workers} workers: {scaled.events_per_s:,.0f} events/s "
                   f"(drained in {scaled.total_seconds:.1f} s from start; {cpu_line(scaled)}), "
                   f"{scaled.events_per_s / worker.events_per_s:.2f}x one worker")
        if scaled.all_working_per_s:
            click.echo(f"  {workers} workers while every one folds: "
                       f"{scaled.all_working_per_s:,.0f} events/s, "
                       f"{scaled.all_working_per_s / worker.events_per_s:.2f}x one worker "
                       f"(one worker's partitions held "
                       f"{scaled.heaviest_share or 0:.0%} of the backlog)")
        if scaled.join_seconds is not None:
            click.echo(f"  {workers} workers all folding {scaled.join_seconds:.1f} s after "
                       "the first began (start-up and the rebalance that shares the partitions)")
    sink = None
    if with_sink:
        sink = drain(settings, "sink", store_counter(settings), sent,
                     settings.data_dir / "sink.log")
        click.echo(f"  sink into the store: {sink.events_per_s:,.0f} rows/s "
                   f"(drained in {sink.total_seconds:.1f} s from start, "
                   f"peak RSS {sink.rss_mb:.0f} MB)")
    return raw, worker, sink, scaled


def cpu_line(drained: Drain) -> str:
    """CPU per million events and the cores it kept busy: whether a worker waited
    for a core (less than one) or for Kafka; and the local broker's CPU per
    million, which shares the cores (what bounds the scale-out on two)."""

    def per_million(seconds: float) -> float:
        return seconds * 1_000_000 / drained.events if drained.events else 0.0

    cores = drained.cpu_seconds / drained.seconds if drained.seconds else 0.0
    line = (f"{per_million(drained.cpu_seconds):.1f} CPU s per million events, "
            f"{cores:.2f} cores busy")
    if drained.broker_cpu_seconds is not None:
        line += f"; the broker {per_million(drained.broker_cpu_seconds):.1f} CPU s per million"
    return line


def scale_out(settings: Settings, workers: int, sent: int) -> Drain:
    """The same backlog drained again by ``workers`` workers of a new group (so
    they read from the start), each with its own web port and data folder."""
    group = settings.model_copy(update={"app_id": f"{settings.app_id}x{workers}"})
    every = []
    for i in range(workers):
        one = group.model_copy(update={
            "worker_web_port": free_port(), "data_dir": group.data_dir / f"worker{i}",
        })
        one.data_dir.mkdir(parents=True, exist_ok=True)
        every.append(one)
    counter = WorkerCounter(every, end_offsets(settings), sent)
    drained = drain(every, "worker", counter, sent, settings.data_dir / f"workers{workers}.log")
    unstuck = counter.unstuck()
    if unstuck:
        # a partition's messages went missing between the fetch and its agent
        # around the hand-over, and the offset order sought them back
        click.echo(f"  partitions sought back after standing still: {unstuck}")
    drained.all_working_per_s = counter.all_working_rate()
    drained.heaviest_share = counter.heaviest_share()
    drained.join_seconds = counter.join_seconds()
    return drained


class BenchGroup(click.Group):
    """``ctower bench`` alone runs the throughput bench; the dashboard's bench is
    imported only when asked for (it needs numpy and the dashboard's queries)."""

    LAZY: ClassVar[dict[str, tuple[str, str]]] = {
        "dashboard": ("ctower.bench.dashboard", "dashboard_bench"),
        "peer": ("ctower.bench.peer", "peer_bench"),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self.LAZY.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        command: click.Command = getattr(importlib.import_module(target[0]), target[1])
        return command


@click.group(cls=BenchGroup, invoke_without_command=True)
@click.option("--events", default=1_000_000, show_default=True, help="Events, batched run.")
@click.option("--batch", default=100, show_default=True, help="Events per message.")
@click.option("--single-events", default=200_000, show_default=True,
              help="Events of the one-event-per-message run (0 to skip).")
@click.option("--seed", default=1, show_default=True)
@click.option("--no-sink", is_flag=True, help="Measure the worker only.")
@click.option("--workers", default=min(2, os.cpu_count() or 1), show_default=True,
              help="Also drain the batched backlog with this many workers, to see the "
              "scale-out (1: skip).")
@click.pass_context
def bench(
    ctx: click.Context, events: int, batch: int, single_events: int, seed: int, no_sink: bool,
    workers: int,
) -> None:
    """Throughput of one worker with every table on; prints a RESULT line.

    The subcommands are the other benchmarks; their options are their own.
    """
    if ctx.invoked_subcommand is None:
        throughput(events, batch, single_events, seed, no_sink, workers)


def load_average() -> str:
    """Printed with the figures: on shared cores they mean little without it."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min) {five:.1f} (5 min)"


@contextlib.contextmanager
def kafka_for(settings: Settings) -> Iterator[None]:
    """The project's own broker when no cluster is configured; stopped after
    only if this bench started it."""
    from ctower.devstack.broker.local import LocalKafka

    broker = LocalKafka(settings) if settings.uses_local_kafka else None
    started_broker = broker is not None and not broker.status().running
    if broker is not None:
        broker.up()
        pid = broker.status().pid
        if pid is not None:
            _local_broker.append(pid)
    click.echo(f"cores: {os.cpu_count()}, {load_average()}, Kafka: {settings.bootstrap}")
    try:
        yield
    finally:
        _local_broker.clear()
        if started_broker and broker is not None:
            broker.down()


def dedup_memory_mb(identities: int = 1_000_000) -> float:
    """Resident memory one worker's de-duplication takes per ``identities`` events
    (``tables/dedup.py``), measured in this process: RSS before and after."""
    import gc

    from ctower.schemas.events import Scan
    from ctower.tables.dedup import SeenBudget, SeenEvents

    class Table:
        def __init__(self) -> None:
            self.data: dict[bytes, bytes] = {}

        def send_changelog(self, *args: Any) -> None:
            pass

    def rss_mb() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    now = int(time.time() * 1000)
    gc.collect()
    seen = SeenEvents(Table(), horizon_ms=3_600_000, budget=SeenBudget(identities * 2))
    before = rss_mb()
    for offset in range(identities // 100):
        seen.filter(offset % 4, offset, [
            Scan(ts=now + i, scan_id=f"sc{offset}-{i}", store_id="S1", sku="K1", action="view")
            for i in range(100)
        ])
        if offset % 100 == 0:
            seen.flush(offset % 4)  # the records written go away with the table: not counted
            seen.table.data.clear()
    gc.collect()
    return (rss_mb() - before) * 1_000_000 / identities


def throughput(
    events: int, batch: int, single_events: int, seed: int, no_sink: bool, workers: int = 1,
) -> None:
    from ctower.cli import settings_or_exit

    settings: Settings = settings_or_exit()
    single = 0.0
    with kafka_for(settings):
        if single_events:
            raw1, worker1, _, _ = run_case(settings, "single", single_events, 1, seed, False)
            single = worker1.events_per_s
            click.echo(f"  single: worker/bare = {single / raw1.events_per_s:.3f}")
        raw, worker, _sink, scaled = run_case(
            settings, "batched", events, batch, seed, not no_sink, workers
        )
    ratio = worker.events_per_s / raw.events_per_s if raw.events_per_s else 0.0
    parallel = (scaled.all_working_per_s or 0.0) if scaled else worker.events_per_s
    # in a fresh process: memory freed by the runs above would hide the growth
    measure = "from ctower.bench.engine import dedup_memory_mb; print(dedup_memory_mb())"
    dedup_mb = float(subprocess.run(
        [sys.executable, "-c", measure], capture_output=True, text=True, check=True,
    ).stdout.strip())
    click.echo(f"\nde-duplication: {dedup_mb:.0f} MB of RSS per million identities kept")
    click.echo(
        f"RESULT events_per_s={worker.events_per_s:.0f} raw_events_per_s={raw.events_per_s:.0f} "
        f"ratio={ratio:.3f} rss_mb={worker.rss_mb:.0f} dedup_mb_per_million={dedup_mb:.0f} "
        f"single_events_per_s={single:.0f} "
        f"scale_out={scaled.events_per_s / worker.events_per_s if scaled else 1.0:.2f} "
        f"scale_out_parallel={parallel / worker.events_per_s:.2f}"
    )


# ------------------------------------------------------------------ decisions
RESERVE_TARGET_MS = 20.0
"""Issue 3: a reservation's p99 at 1,000 requests/s."""
ALERT_TARGET_MS = 1_000.0
"""Event-to-alert p99 at 10,000 events/s: issue 12's target (issue 3 asked for 2 s)."""


def drop_run_topics(settings: Settings) -> int:
    """Delete the run's topics (its prefix and its app's changelogs, both named
    after the run id): hundreds of topics left by earlier runs make every
    client's metadata refresh slower, which showed in the next run's figures."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap, client_id="ctower-bench")
    try:
        names = [t for t in admin.list_topics() if t.startswith(settings.app_id)]
        if names:
            admin.delete_topics(names, timeout_ms=30_000)
        return len(names)
    finally:
        admin.close()


def decisions_result(
    reserve_runs: list[list[float]], alert_latencies: list[float]
) -> tuple[float, float, float, float]:
    """(reserve p50, reserve p99, alert p50, alert p99) in ms.

    Reservations: the median over runs of each run's percentile, because one
    run's p99 on shared cores swings with whatever else the machine does.
    Alerts: over every probe of the run (missed probes as ``inf``).
    """
    from statistics import median

    from ctower.bench.decisions import percentile

    return (
        median(percentile(run, 50) for run in reserve_runs) if reserve_runs else math.nan,
        median(percentile(run, 99) for run in reserve_runs) if reserve_runs else math.nan,
        percentile(alert_latencies, 50),
        percentile(alert_latencies, 99),
    )


def run_p99s(reserve_runs: list[list[float]]) -> str:
    """Each run's p99 in order: the first runs while the backlog drains, and a
    median hides how far it is from the others."""
    from ctower.bench.decisions import percentile

    return " / ".join(f"{percentile(run, 99):.1f}" for run in reserve_runs) or "none"


def decisions_result_line(figures: tuple[float, float, float, float]) -> str:
    reserve_p50, reserve_p99, alert_p50, alert_p99 = figures
    return (
        f"RESULT reserve_p50_ms={reserve_p50:.1f} reserve_p99_ms={reserve_p99:.1f} "
        f"alert_p50_ms={alert_p50:.1f} alert_p99_ms={alert_p99:.1f}"
    )


def decisions_settings(base: Settings, seed: int, name: str) -> tuple[Settings, dict[str, str]]:
    """A fresh world for one run: own topics, app id, data folder, web port and
    master data (the simulator's chain of ``seed``), a coupon token; and the
    worker's environment."""
    from ctower.simulator.generator import SimConfig, Simulator

    settings = run_settings(base, name).model_copy(update={
        "coupon_api_token": base.coupon_api_token or SecretStr(secrets.token_urlsafe(24)),
    })
    chain = Simulator(SimConfig(seed=seed, events=1)).chain.write(settings.data_dir / "chain.json")
    settings = settings.model_copy(update={"master_data_file": chain})
    env = settings.child_env()
    # the probes reuse stores: a resolved alert must be able to reopen at once
    env["CTOWER_RULE_ALERTS__COOLDOWN_MINUTES"] = "0"
    return settings, env


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free right now on 127.0.0.1, for a bench's own servers; never
    one given out before (the kernel hands a closed port out again, and two
    workers of one drain must not be given the same)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def start_worker(settings: Settings, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``ctower worker`` on its own, answering on its web port (or an exception
    with the end of its log)."""
    proc = subprocess.Popen([sys.executable, "-m", "ctower", "worker"], env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://{settings.worker_web_host}:{settings.worker_web_port}/stats/"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise click.ClickException(f"the worker exited:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return proc
        except OSError:
            if time.monotonic() > deadline:
                stop(proc)
                raise click.ClickException(f"the worker did not answer on {url} in 120 s") from None
            time.sleep(0.3)


def handler_share(run: ReservationRun) -> str:
    """What of a run's latency the coupon server's handler had (its histogram)."""
    within = run.handler_within(RESERVE_TARGET_MS / 1000)
    bound = run.handler_p99_bound()
    if within is None or bound is None:
        return "the server's handler: no /metrics"
    return (f"the server's handler: {within:.1%} within {RESERVE_TARGET_MS:g} ms, "
            f"99% within {bound * 1000:g} ms")


def live_cost(cpu: float, folded_from: int | None, folded_to: int | None) -> str:
    """The aggregate worker's CPU per event while it keeps up with live traffic:
    steadier than a latency on shared cores, and comparable with the drains'."""
    if folded_from is None or folded_to is None or folded_to <= folded_from:
        return "the aggregate worker's CPU per event: no count"
    events = folded_to - folded_from
    return (f"the aggregate worker: {cpu / events * 1e6:.1f} CPU s per million events "
            f"({events:,} events folded in the alert part)")


def worker_gc(settings: Settings) -> str:
    """The worker's garbage collections so far (a full one pauses every answer)."""
    counter = WorkerCounter(settings)
    if counter() is None:
        return "worker GC: no answer"
    gc = counter.last.get("gc", {})
    collections = gc.get("collections", [0, 0, 0])
    longest = gc.get("longest_pause_ms", [0.0, 0.0, 0.0])
    return (f"worker GC so far: {collections[2]} full collections, longest pause per "
            f"generation {' / '.join(f'{ms:.0f}' for ms in longest)} ms")


def niceness(pid: int) -> str:
    """A process's CPU niceness as a run's header gives it: the aggregation's
    decides how it shares the cores with the coupon server and a neighbour
    (``CTOWER_AGGREGATE_NICE``), so a run's figures say which it had."""
    try:
        return f"niceness {os.getpriority(os.PRIO_PROCESS, pid)}"
    except OSError:  # the process is gone
        return "niceness unknown"


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@bench.command()
@click.option("--reserve-rate", default=1000, show_default=True, help="Reservations per second.")
@click.option("--reserve-seconds", default=10.0, show_default=True, help="Seconds per run.")
@click.option("--reserve-runs", default=3, show_default=True,
              help="Reservation runs; the RESULT takes the median of their percentiles.")
@click.option("--campaigns", default=20, show_default=True, help="Campaigns reserved from.")
@click.option("--event-rate", default=10_000, show_default=True,
              help="Background events per second while the alert probes run.")
@click.option("--seconds", default=60.0, show_default=True,
              help="Seconds of alert probes (after a warm-up).")
@click.option("--probes", default=150, show_default=True,
              help="Threshold crossings, spread evenly.")
@click.option("--batch", default=100, show_default=True,
              help="Events per message of the background traffic.")
@click.option("--alert-timeout", default=10.0, show_default=True,
              help="Seconds after which a probe counts as missed (inf in the percentiles).")
@click.option("--seed", default=1, show_default=True, help="The simulated chain and traffic.")
@click.option("--keep-topics", is_flag=True, help="Leave the run's topics on the broker.")
@click.option("--no-busy", is_flag=True,
              help="Skip the second pass with one core kept busy by another process.")
@click.option("--backlog", default=1_600_000, show_default=True,
              help="Events waiting for the aggregation when the reservation runs start, so "
              "they run while it is saturated (0: an idle aggregation).")
@click.option("--alert-backlog", default=300_000, show_default=True,
              help="Events the aggregation of the alert part drains before the probes "
              "start: the state a live worker has built.")
def decisions(
    reserve_rate: int, reserve_seconds: float, reserve_runs: int, campaigns: int,
    event_rate: int, seconds: float, probes: int, batch: int, alert_timeout: float, seed: int,
    keep_topics: bool, no_busy: bool, backlog: int, alert_backlog: int,
) -> None:
    """Reservation latency at 1,000 req/s and event-to-alert latency at 10,000 events/s.

    Fresh processes per part, as in production: ``ctower worker`` with role
    aggregate and ``ctower coupons serve``. First the reservation runs on the
    coupon server (open loop, every request a durable grant) while the
    aggregation drains a backlog large enough to keep it saturated through
    every run (--backlog; each run's line says what it folded meanwhile),
    then, in a world of its own whose aggregation first drains a smaller
    backlog (--alert-backlog), with a paced producer feeding the simulator's
    streams, pickup queues pushed over capacity and timed until their alert is
    on ct.alerts. --reserve-runs 0 or --probes 0 skips a part.
    The whole is done twice: on a quiet machine, then with one core kept busy
    by a separate process (what a neighbour on a shared host does); the RESULT
    line carries the worse of the two for every figure.
    """
    from ctower.cli import settings_or_exit

    base: Settings = settings_or_exit()
    passes = [("quiet", False)] + ([] if no_busy else [("one core busy", True)])
    results = []
    with kafka_for(base):
        for label, busy in passes:
            click.echo(f"\n===== {label}")
            with busy_core() if busy else contextlib.nullcontext():
                results.append(_decisions_pass(
                    base, reserve_rate, reserve_seconds, reserve_runs, campaigns, event_rate,
                    seconds, probes, batch, alert_timeout, seed, keep_topics, backlog,
                    alert_backlog,
                ))
    worst = tuple(max(figures[i] for figures in results) for i in range(4))
    if len(results) > 1:
        click.echo("\nthe RESULT line carries the worse of the two passes for every figure")
    click.echo(decisions_result_line(worst))  # type: ignore[arg-type]


@contextlib.contextmanager
def busy_core() -> Iterator[None]:
    """A separate process spinning on one core for as long as the block runs."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait(timeout=10)


def aggregation_meanwhile(
    folded_from: int, folded_to: int, started: float, everyone: Callable[[], int | None],
    sent: int,
) -> str:
    """What the aggregation folded while a reservation run lasted (its warm-up
    included): a run is timed against a saturated aggregation only while
    there is backlog left, and this says whether there was."""
    seconds = max(time.monotonic() - started, 1e-9)
    folded = folded_to - folded_from
    line = f"the aggregation folded {folded:,} events meanwhile ({folded / seconds:,.0f}/s)"
    if sent and (everyone() or 0) >= sent:
        line += ", and the backlog was gone by the run's end: not saturated throughout"
    return line


def backlog_drained(settings: Settings, coupon_settings: Settings, sent: int) -> None:
    """Wait until the backlog is folded (the alert probes need a worker that
    keeps up), and say how long it took."""
    counter = WorkerCounter([settings, coupon_settings])
    started = time.monotonic()
    deadline = started + 600
    folded = counter() or 0
    while folded < sent and time.monotonic() < deadline:
        time.sleep(0.5)
        folded = counter() or folded
    click.echo(f"  the backlog before the probes: {folded:,} of {sent:,} events folded, "
               f"{time.monotonic() - started:.0f} s after the workers answered")


@contextlib.contextmanager
def production_split(
    base: Settings, seed: int, backlog: int, batch: int, keep_topics: bool, name: str,
) -> Iterator[SplitWorld]:
    """A fresh world of the production split: its own topics with ``backlog``
    events waiting (no pickups), ``ctower worker`` of role aggregate and
    ``ctower coupons serve`` started on them; stopped and dropped after."""
    from ctower.bench.coupons import BenchError
    from ctower.topics import ensure_topics

    settings, env = decisions_settings(base, seed, name)
    settings = settings.model_copy(update={"worker_role": "aggregate"})
    env["CTOWER_WORKER_ROLE"] = "aggregate"
    coupon_settings = settings.model_copy(update={
        "worker_role": "coupons", "worker_web_port": free_port(),
    })
    coupon_env = {**env, "CTOWER_WORKER_ROLE": "coupons",
                  "CTOWER_WORKER_WEB_PORT": str(coupon_settings.worker_web_port)}
    ensure_topics(settings)
    # no pickups in the backlog: queues it left waiting would alert on the
    # probes' stores before their crossing event (early and stray alerts)
    sent = produce(settings, backlog, batch, seed, without=("pickup",)) if backlog else 0
    log = settings.data_dir / "worker.log"
    coupon_log = settings.data_dir / "coupons.log"
    click.echo(f"topics {settings.topic_prefix}*, logs {log} and {coupon_log}")
    worker = start_worker(settings, env, log)
    try:
        coupon_server = start_worker(coupon_settings, coupon_env, coupon_log)
        try:
            yield SplitWorld(settings, coupon_settings, worker, sent)
        except BenchError as exc:
            raise click.ClickException(f"{exc}\n(worker log: {log})") from None
        finally:
            stop(coupon_server)
    finally:
        stop(worker)
        if not keep_topics:
            drop_run_topics(settings)


@dataclass
class SplitWorld:
    settings: Settings
    """The aggregate worker's."""
    coupon_settings: Settings
    worker: subprocess.Popen[bytes]
    """The aggregate worker."""
    sent: int
    """The backlog's events."""


def _decisions_pass(
    base: Settings, reserve_rate: int, reserve_seconds: float, reserve_runs: int,
    campaigns: int, event_rate: int, seconds: float, probes: int, batch: int,
    alert_timeout: float, seed: int, keep_topics: bool, backlog: int, alert_backlog: int,
) -> tuple[float, float, float, float]:
    """One pass of the decisions bench: the aggregation and the coupon API as
    two processes, as in production; its four figures. The reservations and
    the alert probes each get a world of their own: the first a backlog large
    enough to keep the aggregation saturated through every run, the second the
    state of a smaller one (a worker that drained 1.6M events folds live
    traffic slower than one that drained 300k, and the alert figure would
    measure the backlog's size)."""
    from ctower.bench.coupons import run_reservations
    from ctower.bench.decisions import bench_alert_latency, dump, percentile, summary

    reserve: list[list[float]] = []
    run = None
    folders: list[Path] = []
    if reserve_runs:
        with production_split(base, seed, backlog, batch, keep_topics, "reservations") as world:
            settings, coupon_settings, sent = world.settings, world.coupon_settings, world.sent
            folders.append(settings.data_dir)
            click.echo(f"\n[reservations] {reserve_runs} x {reserve_seconds:g} s at "
                       f"{reserve_rate:,}/s over {campaigns} campaigns, to `ctower coupons "
                       f"serve`, while `ctower worker` (role aggregate, "
                       f"{niceness(world.worker.pid)}) drains a backlog of "
                       f"{sent:,} events")
            aggregation = WorkerCounter(settings)
            everyone = WorkerCounter([settings, coupon_settings])
            for n in range(reserve_runs):
                folded_from, started = aggregation() or 0, time.monotonic()
                answered = run_reservations(coupon_settings, reserve_rate, reserve_seconds,
                                            campaigns)
                latencies, late = answered.latencies_ms, answered.client_late_ms
                reserve.append(latencies)
                meanwhile = aggregation_meanwhile(folded_from, aggregation() or 0, started,
                                                  everyone, sent)
                click.echo(f"  run {n + 1}: {len(latencies):,} granted, p50 "
                           f"{percentile(latencies, 50):.1f} ms, p99 "
                           f"{percentile(latencies, 99):.1f} ms, max {max(latencies):.1f} ms "
                           f"(the client itself late to send: p50 {percentile(late, 50):.1f}, "
                           f"p99 {percentile(late, 99):.1f} ms); {handler_share(answered)}; "
                           f"{worker_gc(coupon_settings)}; {meanwhile}")
    if probes:
        with production_split(base, seed, alert_backlog, batch, keep_topics, "alerts") as world:
            settings, coupon_settings, sent = world.settings, world.coupon_settings, world.sent
            folders.append(settings.data_dir)
            if sent:
                backlog_drained(settings, coupon_settings, sent)
            click.echo(f"\n[event to alert] {probes} probes over {seconds:g} s, background "
                       f"{event_rate:,} events/s ({batch} per message), the aggregation at "
                       f"{niceness(world.worker.pid)}")
            folded = WorkerCounter(settings)
            cpu_from, live_from = cpu_seconds(world.worker.pid), folded()
            run = bench_alert_latency(settings, event_rate, seconds, probes, seed, batch,
                                      alert_timeout=alert_timeout,
                                      also_counted=[coupon_settings])
            cost = live_cost(cpu_seconds(world.worker.pid) - cpu_from, live_from, folded())
            click.echo(f"  {cost}; {worker_gc(settings)}")
    if run is not None:
        dump(run, folders[-1] / "probes.json")
        click.echo(summary(run))
    figures = decisions_result(reserve, run.with_misses() if run is not None else [])
    reserve_p50, reserve_p99, alert_p50, alert_p99 = figures
    click.echo(
        f"\nreservation: p50 {reserve_p50:.1f} ms, p99 {reserve_p99:.1f} ms (medians of "
        f"{len(reserve)} runs; p99 per run {run_p99s(reserve)}); p99 / target "
        f"{RESERVE_TARGET_MS:g} ms = {reserve_p99 / RESERVE_TARGET_MS:.2f}"
    )
    if run is not None:
        click.echo(
            f"event to alert: p50 {alert_p50:.0f} ms, p99 {alert_p99:.0f} ms "
            f"({len(run.latencies_ms)} of {run.probes} probes alerted within "
            f"{alert_timeout:g} s); p99 / target {ALERT_TARGET_MS:g} ms = "
            f"{alert_p99 / ALERT_TARGET_MS:.2f}"
        )
        if run.missed or run.skipped:
            click.echo(f"WARNING: {len(run.missed)} probes got no alert within "
                       f"{alert_timeout:g} s and {run.skipped} could not start (counted as inf)")
    click.echo(f"{load_average()}; worker logs and probes in "
               f"{' and '.join(str(folder) for folder in folders) or 'none'}")
    click.echo(decisions_result_line(figures).replace("RESULT", "this pass:", 1))
    return figures
