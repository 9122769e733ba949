"""The reservation bench's client: open loop, and the server's own share of the
latency read from its /metrics around the timed requests."""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from ctower.bench.coupons import ReservationRun, _fire, reservation_buckets
from ctower.metrics import exposition, latency_histogram
from ctower.settings import Settings

WARM_UP = 200
"""What ``_fire`` sends before its clock starts (not timed)."""
RESERVE = "/coupons/{campaign}/reserve"


Handler = Callable[[web.Request], Awaitable[web.Response]]


async def fire_at_stub(
    tmp_path: Path, routes: dict[tuple[str, str], Handler], campaigns: list[str],
    seconds: float,
) -> ReservationRun:
    """The bench's client at 500 requests/s against a stub coupon server."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    app = web.Application()
    for (method, path), handler in routes.items():
        app.router.add_route(method, path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        settings = Settings(data_dir=tmp_path, worker_web_host="127.0.0.1",
                            worker_web_port=port, coupon_api_token="sesame")
        return await _fire(settings, campaigns, rate=500, seconds=seconds)
    finally:
        await runner.cleanup()


def test_the_handler_share_counts_the_timed_requests_only(tmp_path: Path) -> None:
    """A stub coupon server observes 0.5 s for each warm-up request and 3 ms for
    the timed ones, as the worker's histogram would: read before and after the
    timed requests, all of them are within 20 ms; read from zero, 200 of 400
    were not."""
    registry = CollectorRegistry()
    histogram = latency_histogram(registry, "ctower_reservation_seconds", "reservations")
    seen: list[str] = []

    async def reserve(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        histogram.observe(0.5 if len(seen) <= WARM_UP else 0.003)
        return web.json_response({"granted": True})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=exposition(registry), content_type="text/plain")

    run = asyncio.run(fire_at_stub(
        tmp_path, {("POST", RESERVE): reserve, ("GET", "/metrics"): metrics},
        ["c1", "c2"], seconds=0.4,
    ))
    assert len(run.latencies_ms) == 200 and not run.failures
    assert run.handler_buckets is not None
    assert run.handler_buckets[math.inf] == 200  # the warm-up's 200 left out
    assert run.handler_within(0.02) == 1.0
    assert run.handler_p99_bound() == 0.005
    whole = reservation_buckets(exposition(registry).decode())
    assert whole[math.inf] == 400 and whole[0.02] == 200
    assert seen and set(seen) == {"Bearer sesame"}


def test_no_metrics_means_no_share(tmp_path: Path) -> None:
    """A server without /metrics (or another histogram only) gives no share,
    not a share of zero."""
    assert reservation_buckets("# nothing here\n") == {}

    async def reserve(request: web.Request) -> web.Response:
        return web.json_response({"granted": True})

    run = asyncio.run(fire_at_stub(tmp_path, {("POST", RESERVE): reserve}, ["c1"], seconds=0.1))
    assert len(run.latencies_ms) == 50
    assert run.handler_buckets is None
    assert run.handler_within(0.02) is None and run.handler_p99_bound() is None
