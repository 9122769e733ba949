"""Event-to-alert latency of a running worker, under steady background traffic.

What is timed: from the moment the event that crosses a threshold is handed
to the Kafka producer to the moment the alert it causes arrives on
``ct.alerts`` (read by a plain consumer in this process). That is what an
on-call engineer waits for, producer and both Kafka hops included.

The threshold is the pickup rule's over-capacity one (``waiting >
capacity``, capacity from the master data): it depends on nothing but a
count, not on a window or a p90, so the crossing event is known exactly.
Each probe takes a store, sends ``capacity`` arrivals at once (the queue is
full but not over), waits a second, then sends one more arrival - the
crossing - and waits for the store's ``pickup_congestion`` alert. It then
cancels its orders, waits for the alert to resolve and gives the store back,
so a store is probed again only once its queue is empty (reusing a store
needs the worker's alert cooldown at 0, which ``ctower bench decisions``
sets; with a cooldown, probe at most once per probed store).

The background is the simulator's seven streams sent at exactly ``rate``
events/s by a process of its own (as a real producer would be), each event
re-timed to the wall clock as it leaves (``eta`` and ``slot_start`` moved by
the same amount). Why not ``ctower simulate --rate N``: its live mode starts
at most 1,000 sessions a second (gaps are whole milliseconds), which here
gave 1.6-1.8k events/s in the first 20 s and about 4.6k after four minutes
when asked for 10k. So the events come from the simulated clock (``--rate
max``, the usual chain and day), as fast as needed, and the pace is ours.
The probed stores get no background pickups (the probes own their queues;
half of the chain's stores are probed, the other half keep their pickup
traffic), so a crossing is exactly the event the probe sent; a probe whose
alert comes before its crossing was sent is counted as ``early`` anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import multiprocessing
import random
import time
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path

import aiohttp
import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from tqdm import tqdm

from ctower.bench.client_gc import collector_paused
from ctower.bench.coupons import BenchError
from ctower.schemas.control import Alert
from ctower.schemas.events import Pickup, encoder
from ctower.schemas.master_data import load_master_data
from ctower.settings import STREAMS, Settings
from ctower.topics import partition_for

ALERT_KIND = "pickup_congestion"
PREFILL_GAP = 1.0
"""Seconds between filling a queue to capacity and the crossing arrival: the
fill is processed on its own, so the crossing is one event, as in a store."""
WARMUP_TIMEOUT = 90.0
"""The first (untimed) probe may wait for the worker's partitions and recovery."""
LATE_WAIT = 60.0
"""How much longer a missed probe keeps waiting, to say how late its alert was."""

_alert = msgspec.json.Decoder(Alert).decode


def percentile(values: list[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default).

    ``inf`` entries (probes that never alerted) sort last, so a p99 is
    infinite as soon as more than 1% of the probes missed.
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    below, above = ordered[low], ordered[min(low + 1, len(ordered) - 1)]
    fraction = rank - low
    if fraction == 0 or above == below:
        return below
    if above == math.inf:
        return math.inf
    return below + (above - below) * fraction


@dataclass
class AlertRun:
    """One run's probes; latencies in ms, one entry per alerted probe."""

    probes: int
    alert_timeout: float
    latencies_ms: list[float] = field(default_factory=list)
    """Crossing event handed to the producer -> alert read from ``ct.alerts``."""
    raised_ms: list[float] = field(default_factory=list)
    """Crossing event handed to the producer -> the alert's ``raised_at`` (the
    worker's wall clock when its rule fired; same machine, same clock)."""
    acked_ms: list[float] = field(default_factory=list)
    """Crossing event handed to the producer -> Kafka acknowledged it."""
    missed: list[str] = field(default_factory=list)
    """Probes (``store#n``) with no alert within the timeout."""
    late_ms: list[float] = field(default_factory=list)
    """Latencies of the missed probes whose alert came later after all."""
    skipped: int = 0
    """Probes never started: no probed store was free (their queues were
    still waiting for an alert or its resolution: the worker is behind)."""
    early: list[str] = field(default_factory=list)
    """Probes whose alert came before the crossing event was sent."""
    stray_alerts: int = 0
    """Pickup congestion alerts nobody waited for: a resolution that came after
    its probe gave up on it, or an alert at a store the probes do not use."""
    late_starts: int = 0
    """Probes that started over a second behind schedule (no store was free)."""
    sent_events_per_s: float = 0.0
    """Background events sent per second while the probes ran."""
    consumed_events_per_s: float = 0.0
    """Events the workers processed per second while the probes ran (the
    aggregation's and, in the production split, the coupon server's: the
    coupon stream is the coupon server's alone)."""
    seconds: float = 0.0

    def with_misses(self) -> list[float]:
        """Latencies with every missed or skipped probe as ``inf``: what percentiles
        are taken of (a skipped probe is one the worker was too far behind to take)."""
        return self.latencies_ms + [math.inf] * (len(self.missed) + self.skipped)


class _Alerts:
    """Reads ``ct.alerts`` and hands each pickup congestion alert to whoever waits for it."""

    def __init__(self) -> None:
        self.waiting: dict[tuple[str, str], asyncio.Future[tuple[float, Alert]]] = {}
        self.stray = 0

    def expect(self, store_id: str, status: str) -> asyncio.Future[tuple[float, Alert]]:
        future: asyncio.Future[tuple[float, Alert]] = asyncio.get_running_loop().create_future()
        self.waiting[(store_id, status)] = future
        return future

    def forget(self, store_id: str, status: str) -> None:
        self.waiting.pop((store_id, status), None)

    async def read(self, settings: Settings, ready: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            settings.topic("alerts"), bootstrap_servers=settings.bootstrap,
            group_id=None, auto_offset_reset="earliest", enable_auto_commit=False,
            fetch_max_wait_ms=100,
        )
        await consumer.start()
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=200)
                ready.set()
                arrived = time.time()
                for messages in batches.values():
                    for message in messages:
                        self._one(arrived, message.value or b"")
        finally:
            await consumer.stop()

    def _one(self, arrived: float, value: bytes) -> None:
        try:
            alert = _alert(value)
        except msgspec.DecodeError:
            return
        if alert.kind != ALERT_KIND or alert.store_id is None:
            return
        future = self.waiting.pop((alert.store_id, alert.status), None)
        if future is None:
            self.stray += 1
        elif not future.done():
            future.set_result((arrived, alert))


class _Prober:
    def __init__(self, settings: Settings, producer: AIOKafkaProducer, run_tag: str) -> None:
        self.topic = settings.topic("pickup")
        self.producer = producer
        self.run_tag = run_tag
        self.alerts = _Alerts()
        self.partitions = settings.topic_partitions

    def _message(self, store_id: str, orders: list[str], state: str) -> bytes:
        ts = int(time.time() * 1000)
        return b"[" + b",".join(
            encoder.encode(Pickup(ts=ts, order_id=order, store_id=store_id, state=state))  # type: ignore[arg-type]
            for order in orders
        ) + b"]"

    async def _send(self, store_id: str, orders: list[str], state: str) -> float:
        """Send and wait for Kafka's ack; returns the wall time it was handed over."""
        value = self._message(store_id, orders, state)
        handed = time.time()
        ack = await self.producer.send(
            self.topic, value=value, key=store_id.encode(),
            partition=partition_for(store_id.encode(), self.partitions),
        )
        await ack
        return handed

    async def probe(
        self, store_id: str, capacity: int, n: int, run: AlertRun | None, timeout: float,
        late_wait: float = LATE_WAIT,
    ) -> bool:
        """One threshold crossing at ``store_id``; True once its alert resolved
        (the store can be probed again)."""
        label = f"{store_id}#{n}"
        orders = [f"{self.run_tag}-{n}-{k}" for k in range(capacity + 1)]
        opened = self.alerts.expect(store_id, "open")
        await self._send(store_id, orders[:capacity], "arrived")
        await asyncio.sleep(PREFILL_GAP)
        if opened.done():
            if run is not None:
                run.early.append(label)
        else:
            handed = await self._send(store_id, orders[capacity:], "arrived")
            acked = time.time()
            try:
                arrived, alert = await asyncio.wait_for(asyncio.shield(opened), timeout)
            except TimeoutError:
                if run is None:
                    self.alerts.forget(store_id, "open")
                    raise BenchError(
                        f"the warm-up probe at {store_id} got no alert within {timeout:.0f} s: "
                        "is the worker consuming the pickup topic?"
                    ) from None
                run.missed.append(label)
                try:
                    arrived, _ = await asyncio.wait_for(opened, late_wait)
                except TimeoutError:
                    self.alerts.forget(store_id, "open")
                    return False  # its alert may still come: do not reuse the store
                run.late_ms.append((arrived - handed) * 1000)
            else:
                if run is not None:
                    run.latencies_ms.append((arrived - handed) * 1000)
                    run.raised_ms.append(alert.raised_at - handed * 1000)
                    run.acked_ms.append((acked - handed) * 1000)
        resolved = self.alerts.expect(store_id, "resolved")
        await self._send(store_id, orders, "cancelled")
        try:
            await asyncio.wait_for(resolved, max(timeout, 10.0))
        except TimeoutError:
            self.alerts.forget(store_id, "resolved")
            return False
        return True


async def _worker_events(session: aiohttp.ClientSession, urls: list[str]) -> int | None:
    """Events folded by the workers at ``urls``, summed (None: one did not answer)."""
    total = 0
    for url in urls:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as answer:
                stats = await answer.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        total += sum(int(stats.get(stream, {}).get("events", 0)) for stream in STREAMS)
    return total


def run_background(
    settings: Settings, rate: int, seconds: float, seed: int, batch: int,
    quiet_stores: frozenset[str], sent: Synchronized[int], stop: ProcessEvent,
) -> None:
    """Send the simulator's events at ``rate`` per second for at most ``seconds``,
    re-timed to now; none of ``quiet_stores``' pickups. Runs in its own process;
    ``sent`` counts what was handed to the producer."""
    from ctower.simulator.generator import Simulator, pinned_config
    from ctower.simulator.items import encode_event
    from ctower.simulator.producer import KafkaSink

    sink = KafkaSink(settings, batch=batch, acks="1", create_topics=False,
                     client_id="ctower-bench-background")
    started = time.monotonic()
    n = 0
    try:
        while not stop.is_set():
            pool = Simulator(pinned_config(seed, int(rate * seconds) + 10_000))
            for item in pool.items():
                event = item.event
                if event is None or item.late_ms:
                    continue  # malformed or late on purpose: not what this traffic is for
                if item.stream == "pickup" and getattr(event, "store_id", "") in quiet_stores:
                    continue
                now = int(time.time() * 1000)
                shift = now - item.ts
                changes: dict[str, int] = {"ts": now}
                for name in ("eta", "slot_start"):
                    value = getattr(event, name, None)
                    if isinstance(value, int):
                        changes[name] = value + shift
                sink.put(item, encode_event(msgspec.structs.replace(event, **changes), item.iso))
                n += 1
                if n % 50 == 0:
                    sent.value = n
                    sink.tick()
                    ahead = started + n / rate - time.monotonic()
                    if ahead > 0.005:
                        time.sleep(ahead)
                    if stop.is_set() or time.monotonic() - started > seconds:
                        return
            seed += 1  # the pool ran out: another day of the chain
    finally:
        sent.value = n
        sink.close(timeout=10)


async def _run(
    settings: Settings, rate: int, seconds: float, probes: int, seed: int, batch: int,
    warmup: float, alert_timeout: float, also_counted: list[Settings],
) -> AlertRun:
    assert settings.master_data_file is not None
    master = load_master_data(settings.master_data_file)
    capacities = {
        s.store_id: s.pickup_capacity for s in master.stores if s.pickup_capacity > 0
    }
    if len(capacities) < 2:
        raise BenchError(f"fewer than 2 stores with a pickup capacity in "
                         f"{settings.master_data_file}")
    stores = sorted(capacities)[::2]  # probed; the others keep their background pickups
    random.Random(seed).shuffle(stores)
    free: asyncio.Queue[str] = asyncio.Queue()
    for store_id in stores:
        free.put_nowait(store_id)

    spawn = multiprocessing.get_context("spawn")
    sent = spawn.Value("q", 0)
    stop = spawn.Event()
    background = spawn.Process(
        target=run_background, name="bench-background",
        args=(settings, rate, warmup + seconds + WARMUP_TIMEOUT + 60, seed, batch,
              frozenset(stores), sent, stop),
    )
    background.start()
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, acks=1, linger_ms=0)
    await producer.start()
    prober = _Prober(settings, producer, f"probe{int(time.time())}")
    reader_ready = asyncio.Event()
    reader = asyncio.create_task(prober.alerts.read(settings, reader_ready))
    stats_urls = [f"http://{one.worker_web_host}:{one.worker_web_port}/stats/"
                  for one in [settings, *also_counted]]
    run = AlertRun(probes=probes, alert_timeout=alert_timeout)
    tasks: list[asyncio.Task[None]] = []
    try:
        async with aiohttp.ClientSession() as session:
            await asyncio.wait_for(reader_ready.wait(), 30)
            deadline = time.monotonic() + 60
            while not sent.value:
                if not background.is_alive() or time.monotonic() > deadline:
                    raise BenchError("the background producer did not start (exit code "
                                     f"{background.exitcode})")
                await asyncio.sleep(0.1)
            warm_store = await free.get()
            if await prober.probe(warm_store, capacities[warm_store], 0, None, WARMUP_TIMEOUT):
                free.put_nowait(warm_store)
            await asyncio.sleep(max(0.0, warmup - PREFILL_GAP))
            if not background.is_alive():
                raise BenchError(f"the background producer exited ({background.exitcode})")
            consumed_from = await _worker_events(session, stats_urls)
            sent_from = sent.value
            loop = asyncio.get_running_loop()
            started = loop.time()
            every = seconds / probes

            async def one(store_id: str, n: int, progress: tqdm) -> None:
                try:
                    if await prober.probe(store_id, capacities[store_id], n, run, alert_timeout):
                        free.put_nowait(store_id)
                finally:
                    progress.update()

            with tqdm(total=probes, desc=f"probes @ {rate:,} ev/s", unit="probe",
                      leave=False) as progress:
                last_start = started + seconds + alert_timeout
                for n in range(1, probes + 1):
                    due = started + (n - 1) * every
                    await asyncio.sleep(max(0.0, due - loop.time()))
                    try:
                        store_id = await asyncio.wait_for(
                            free.get(), max(0.0, last_start - loop.time())
                        )
                    except TimeoutError:
                        run.skipped = probes - n + 1
                        progress.update(run.skipped)
                        break
                    if loop.time() - due > 1.0:
                        run.late_starts += 1
                    tasks.append(asyncio.create_task(one(store_id, n, progress)))
                await asyncio.sleep(max(0.0, started + seconds - loop.time()))
                run.seconds = loop.time() - started
                sent_to = sent.value
                consumed_to = await _worker_events(session, stats_urls)
                await asyncio.gather(*tasks)
            run.sent_events_per_s = (sent_to - sent_from) / run.seconds
            if consumed_from is not None and consumed_to is not None:
                run.consumed_events_per_s = (consumed_to - consumed_from) / run.seconds
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await producer.stop()
        background.join(30)
        if background.is_alive():
            background.kill()
            background.join(10)
        run.stray_alerts = prober.alerts.stray
    return run


def bench_alert_latency(
    settings: Settings,
    rate: int = 10_000,
    seconds: float = 60.0,
    probes: int = 150,
    seed: int = 1,
    batch: int = 100,
    warmup: float = 10.0,
    alert_timeout: float = 10.0,
    also_counted: list[Settings] | None = None,
) -> AlertRun:
    """Probe the running worker of ``settings`` ``probes`` times over ``seconds``
    while a background producer sends ``rate`` events/s (``batch`` per message).
    The events processed are counted over that worker and ``also_counted``
    (the coupon server of the production split, which alone takes the coupon
    stream: counted without it, a worker keeping up looked 5% behind).

    ``settings.master_data_file`` must be the worker's, from the simulator's
    chain of ``seed`` (the probes use its stores and capacities). Raises
    :class:`BenchError` when the pipeline does not alert at all (the warm-up
    probe); probes that miss are reported in the result, not raised.
    """
    if rate < 1 or seconds <= 0 or probes < 1:
        raise BenchError("rate, seconds and probes must be positive")
    if settings.master_data_file is None:
        raise BenchError("the probes need the worker's CTOWER_MASTER_DATA_FILE (store capacities)")
    with collector_paused():  # the reader's own pauses are not the pipeline's latency
        return asyncio.run(_run(settings, rate, seconds, probes, seed, batch, warmup,
                                alert_timeout, also_counted or []))


def summary(run: AlertRun) -> str:
    """What a run says beyond its percentiles, for people reading the output."""
    alerted = len(run.latencies_ms)
    lines = [
        f"  probes: {run.probes - run.skipped} run, {alerted} alerted within "
        f"{run.alert_timeout:g} s, {len(run.missed)} missed"
        + (f" ({', '.join(run.missed[:5])}{', ...' if len(run.missed) > 5 else ''})"
           if run.missed else "")
        + f", {len(run.early)} early, {run.skipped} skipped (no store free), "
          f"{run.late_starts} started late, {run.stray_alerts} stray alerts",
        f"  background while probing: {run.sent_events_per_s:,.0f} events/s sent, "
        f"{run.consumed_events_per_s:,.0f} events/s processed by the workers",
    ]
    if run.missed:
        lines.append(
            f"  missed probes whose alert came later: {len(run.late_ms)} of {len(run.missed)}"
            + (f", after {min(run.late_ms) / 1000:.1f}-{max(run.late_ms) / 1000:.1f} s"
               if run.late_ms else "")
        )
    if alerted:
        def both(values: list[float]) -> str:
            return f"{percentile(values, 50):.1f} / {percentile(values, 99):.1f}"

        lines.append(
            f"  from the crossing event's send, p50 / p99 ms: Kafka ack {both(run.acked_ms)}, "
            f"rule fired (alert raised_at) {both(run.raised_ms)}, "
            f"alert read from ct.alerts {both(run.latencies_ms)}"
        )
    return "\n".join(lines)


def dump(run: AlertRun, path: Path) -> None:
    """Every probe's figures, for a closer look than percentiles give."""
    path.write_text(json.dumps({
        "latencies_ms": run.latencies_ms, "raised_ms": run.raised_ms, "acked_ms": run.acked_ms,
        "missed": run.missed, "late_ms": run.late_ms, "early": run.early,
        "skipped": run.skipped,
    }))
