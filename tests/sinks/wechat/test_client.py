"""What the webhook's answers mean, and the real HTTP client against the
fake webhook: errcode 0 only counts as delivered, timeouts are retried."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from ctower.sinks.wechat.client import WebhookClient, backoff, classify

MESSAGE = {"msgtype": "markdown", "markdown": {"content": "# hi"}}


@pytest.mark.parametrize(
    ("errcode", "status", "outcome"),
    [
        (0, 200, "delivered"),
        (-1, 200, "retry"),
        (45033, 200, "retry"),
        (None, 500, "retry"),
        (None, 502, "retry"),
        (None, 429, "retry"),
        (None, None, "retry"),  # timeout or no connection
        (None, 200, "retry"),  # 200 but no errcode: not the service answering
        (0, 500, "retry"),  # errcode 0 on an error page is not a delivery
        (45009, 200, "rate_limited"),
        (93000, 200, "broken"),
        (None, 404, "broken"),
        (40001, 200, "broken"),  # an unknown error: stop rather than spam
        (40008, 200, "rejected"),
        (44004, 200, "rejected"),
        (45002, 200, "rejected"),
    ],
)
def test_classification(errcode: int | None, status: int | None, outcome: str) -> None:
    assert classify(errcode, status) == outcome


def test_backoff_grows_with_jitter_up_to_the_cap() -> None:
    rng = random.Random(7)
    waits = [backoff(n, 1.0, 30.0, rng) for n in range(1, 9)]
    for n, wait in enumerate(waits, start=1):
        ceiling = min(30.0, 2 ** (n - 1))
        assert ceiling / 2 <= wait <= ceiling
    assert len({round(backoff(3, 1.0, 30.0, rng), 6) for _ in range(20)}) > 10  # jitter


def send(url: str, body: dict[str, Any], timeout: float = 2.0) -> Any:
    async def go() -> Any:
        async with WebhookClient(timeout) as client:
            return await client.send(url, body)

    return asyncio.run(go())


def test_the_client_against_the_fake_webhook(webhook_server: Any) -> None:
    url = webhook_server.add_key("k-good-1234")
    ok = send(url, MESSAGE)
    assert (ok.errcode, ok.http_status, ok.outcome, ok.detail) == (0, 200, "delivered", "")
    assert ok.latency_ms > 0
    assert webhook_server.delivered("k-good-1234")[0]["body"] == MESSAGE

    webhook_server.fail("k-good-1234", (200, -1), (500, None))
    busy = send(url, MESSAGE)
    assert (busy.errcode, busy.outcome) == (-1, "retry")
    error = send(url, MESSAGE)
    assert (error.http_status, error.errcode, error.outcome) == (500, None, "retry")

    unknown = send(webhook_server.url("k-unknown-5678"), MESSAGE)
    assert (unknown.errcode, unknown.outcome) == (93000, "broken")
    assert "k-unknown-5678" not in unknown.detail

    too_big = send(url, {"msgtype": "text", "text": {"content": "字" * 700}})
    assert (too_big.errcode, too_big.outcome) == (45002, "rejected")


def test_a_slow_answer_is_a_timeout_to_retry(webhook_server: Any) -> None:
    url = webhook_server.add_key("k-slow-0001")
    webhook_server.delay = 1.0
    slow = send(url, MESSAGE, timeout=0.3)
    assert (slow.errcode, slow.http_status, slow.outcome) == (None, None, "retry")
    assert "no answer" in slow.detail
    assert 250 < slow.latency_ms < 900


def test_the_fake_webhook_limits_20_a_minute_counting_failures(webhook_server: Any) -> None:
    url = webhook_server.add_key("k-rate-0001")
    webhook_server.fail("k-rate-0001", *[(200, -1)] * 5)
    codes = [send(url, MESSAGE).errcode for _ in range(22)]
    assert codes == [-1] * 5 + [0] * 15 + [45009, 45009]
