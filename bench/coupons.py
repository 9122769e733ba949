"""Reservation latency against a running worker, open loop.

Open loop means requests leave on a fixed schedule (``rate`` per second)
whatever the answers do, and each latency is measured from the moment the
request was *due*: a server that stalls makes the queue behind it wait, and
that wait is counted (a closed loop that waits for each answer would hide
it). One keep-alive connection pool, as a coupon service would hold.

The client is a Python process too: when it is itself late to send (its
core busy elsewhere), that delay is in the latency as well, and
:attr:`ReservationRun.client_late_ms` says how much of it there was, so a
tail can be told apart from the worker's. Its own garbage collector is
paused while it times (``client_gc.py``): its full collections were most of
a first run's tail.

The server's own share is read from its ``/metrics`` before and after the
timed requests (the ``ctower_reservation_seconds`` histogram: from the
handler's start to its answer, the wait for Kafka's acknowledgement
included). A tail that the handler does not have is outside it: the client,
the loop's queue in front of the handler, the cores.

The campaigns get a policy with a cap far above what the run can reach, so
every request does the full work of a grant: check every cap, count, and
wait until Kafka has acknowledged the count.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import aiohttp
from tqdm import tqdm

from ctower.bench.client_gc import collector_paused
from ctower.coupons.policy import publish_policy
from ctower.errors import CtowerError
from ctower.metrics import samples
from ctower.schemas.control import ALL_STORES, CouponPolicy
from ctower.settings import Settings

BENCH_CAP = 1_000_000_000
STORES = 50
MEMBERS = 100_000


class BenchError(CtowerError, RuntimeError):
    """The benchmark could not run or too many requests failed; the message says which."""


@dataclass
class ReservationRun:
    latencies_ms: list[float] = field(default_factory=list)
    """Due -> answer read, per granted reservation."""
    client_late_ms: list[float] = field(default_factory=list)
    """Due -> the request's task started: the client's own delay, per request."""
    failures: dict[str, int] = field(default_factory=dict)
    handler_buckets: dict[float, float] | None = None
    """The server's reservation histogram over the timed requests: bucket bound
    (s) -> requests handled within it; None when /metrics did not answer."""

    def handler_within(self, bound_s: float) -> float | None:
        """Share of the timed requests the server's handler answered within ``bound_s``
        (a bucket bound of the histogram)."""
        buckets = self.handler_buckets
        if not buckets or not buckets.get(math.inf):
            return None
        return buckets.get(bound_s, math.nan) / buckets[math.inf]

    def handler_p99_bound(self) -> float | None:
        """The smallest bucket bound (s) within which the handler answered 99%."""
        buckets = self.handler_buckets
        if not buckets or not buckets.get(math.inf):
            return None
        total = buckets[math.inf]
        return min(bound for bound, count in buckets.items() if count >= 0.99 * total)


RESERVATION_HISTOGRAM = "ctower_reservation_seconds"


def reservation_buckets(exposition: str) -> dict[float, float]:
    """Bucket bound (s) -> cumulative count of the reservation histogram in a
    Prometheus exposition (empty when it has none)."""
    bucket = f"{RESERVATION_HISTOGRAM}_bucket"
    return {float(dict(labels)["le"]): value
            for (name, labels), value in samples(exposition).items() if name == bucket}


async def _scrape(session: aiohttp.ClientSession, url: str) -> dict[float, float] | None:
    try:
        async with session.get(url) as answer:
            if answer.status != 200:
                return None
            return reservation_buckets(await answer.text())
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


def bench_campaigns(campaigns: int) -> list[str]:
    return [f"bench-c{i:02d}" for i in range(campaigns)]


def prepare_campaigns(settings: Settings, campaigns: list[str], timeout: float = 30.0) -> None:
    """Give each campaign a huge cap and wait until the worker answers for all."""
    now = int(time.time() * 1000)
    for campaign in campaigns:
        publish_policy(
            settings,
            CouponPolicy(campaign_id=campaign, cap_per_window=BENCH_CAP, set_by="bench",
                         set_at=now),
        )
    base = f"http://{settings.worker_web_host}:{settings.worker_web_port}/coupons"
    deadline = time.monotonic() + timeout
    waiting = list(campaigns)
    while waiting:
        campaign = waiting[0]
        try:
            with urllib.request.urlopen(f"{base}/{campaign}/status", timeout=2) as answer:
                cap = json.load(answer)["windows"][ALL_STORES]["cap"]
            if cap == BENCH_CAP:
                waiting.pop(0)
                continue
        except (OSError, KeyError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"the worker at {base} did not take the bench policies "
                             f"within {timeout:.0f} s (still waiting for {campaign})")
        time.sleep(0.1)


async def _fire(
    settings: Settings, campaigns: list[str], rate: int, seconds: float
) -> ReservationRun:
    token = settings.coupon_api_token.get_secret_value() if settings.coupon_api_token else ""
    base = f"http://{settings.worker_web_host}:{settings.worker_web_port}/coupons"
    rng = random.Random(7)
    total = max(1, int(rate * seconds))
    plan = [
        (f"{base}/{rng.choice(campaigns)}/reserve",
         json.dumps({"store_id": f"S{rng.randrange(STORES):03d}",
                     "member_id": f"M{rng.randrange(MEMBERS):06d}"}).encode())
        for _ in range(total + 200)
    ]
    run = ReservationRun()
    latencies, late, failures = run.latencies_ms, run.client_late_ms, run.failures
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, headers=headers,
                                     timeout=timeout) as session:
        loop = asyncio.get_running_loop()

        async def one(url: str, body: bytes, due: float, progress: tqdm | None) -> None:
            if progress is not None:
                late.append((loop.time() - due) * 1000)
            try:
                async with session.post(url, data=body) as answer:
                    await answer.read()
                    ok = answer.status == 200
                    kind = f"http_{answer.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                ok, kind = False, type(exc).__name__
            if ok:
                if progress is not None:
                    latencies.append((loop.time() - due) * 1000)
            else:
                failures[kind] = failures.get(kind, 0) + 1
            if progress is not None:
                progress.update()

        # warm-up: connections opened and code paths hot before the clock starts
        await asyncio.gather(*(one(url, body, loop.time(), None) for url, body in plan[:200]))
        failures.clear()
        metrics_url = f"http://{settings.worker_web_host}:{settings.worker_web_port}/metrics"
        before = await _scrape(session, metrics_url)
        tasks: list[asyncio.Task[None]] = []
        with tqdm(total=total, unit="req", desc=f"reserve @ {rate}/s", leave=False) as progress:
            start = loop.time() + 0.05
            sent = 0
            while sent < total:
                now = loop.time()
                while sent < total and start + sent / rate <= now:
                    url, body = plan[200 + sent]
                    due = start + sent / rate
                    tasks.append(asyncio.create_task(one(url, body, due, progress)))
                    sent += 1
                if sent < total:
                    await asyncio.sleep(max(0.0, start + sent / rate - loop.time()))
            await asyncio.gather(*tasks)
        after = await _scrape(session, metrics_url)
        if before is not None and after:
            run.handler_buckets = {
                bound: count - before.get(bound, 0.0) for bound, count in after.items()
            }
    return run


def bench_reservations(
    settings: Settings, rate: int = 1000, seconds: float = 10.0, campaigns: int = 20
) -> list[float]:
    """Fire reservations at ``rate`` per second for ``seconds`` at the worker
    of ``settings`` and return the latencies (ms) of the answered ones.

    Needs ``CTOWER_COUPON_API_TOKEN`` (the worker's) and a running worker;
    raises :class:`BenchError` when more than 1% of the requests fail.
    """
    return run_reservations(settings, rate, seconds, campaigns).latencies_ms


def run_reservations(
    settings: Settings, rate: int = 1000, seconds: float = 10.0, campaigns: int = 20
) -> ReservationRun:
    """:func:`bench_reservations` with the client's own lateness beside the latencies."""
    if rate < 1 or seconds <= 0 or campaigns < 1:
        raise BenchError("rate, seconds and campaigns must be positive")
    if not settings.coupon_api_token:
        raise BenchError("the coupon API needs CTOWER_COUPON_API_TOKEN (the worker's token)")
    names = bench_campaigns(campaigns)
    prepare_campaigns(settings, names)
    with collector_paused():  # the client's own pauses are not the server's latency
        run = asyncio.run(_fire(settings, names, rate, seconds))
    failed = sum(run.failures.values())
    answered = len(run.latencies_ms)
    if failed > 0.01 * (answered + failed):
        raise BenchError(f"{failed} of {answered + failed} reservations failed: {run.failures}")
    return run
