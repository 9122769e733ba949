"""Posting to a robot's webhook, and what its answer means.

Success is HTTP 200 *and* ``errcode`` 0: the service answers errors with
HTTP 200 too. :func:`classify` turns an answer into what to do next:

- ``delivered``: errcode 0.
- ``retry``: errcode -1 (system busy), 45033 (concurrency), HTTP 5xx or 429,
  a timeout or a connection error - try again after a back-off with jitter.
- ``rate_limited``: errcode 45009 - wait for the next minute.
- ``rejected``: the message itself was refused (40008 bad msgtype, 44004
  empty, 45002 too large) - the robot is fine, this message is not.
- ``broken``: 93000 (invalid key) or any other error, including HTTP 4xx:
  the route cannot deliver until someone fixes it.

Error details are masked (:func:`webhooks.mask_secrets`): an exception of
the HTTP client may quote the URL, and with it the key.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import msgspec

from ctower.sinks.wechat.webhooks import mask_secrets

Outcome = Literal["delivered", "retry", "rate_limited", "rejected", "broken"]

RETRY_ERRCODES = frozenset({-1, 45033})
RATE_ERRCODE = 45009
INVALID_KEY_ERRCODE = 93000
MESSAGE_ERRCODES = frozenset({40008, 44004, 45002, 40058})


@dataclass(frozen=True, slots=True)
class SendResult:
    """What one POST came back with (errcode None: no JSON answer at all)."""

    errcode: int | None
    http_status: int | None
    latency_ms: float
    detail: str = ""

    @property
    def outcome(self) -> Outcome:
        return classify(self.errcode, self.http_status)


def classify(errcode: int | None, http_status: int | None) -> Outcome:
    """What an answer means for the message and the route (see module doc)."""
    if http_status is None:
        return "retry"  # timeout or connection error: the service may be fine
    if http_status >= 500 or http_status == 429:
        return "retry"
    if http_status != 200:
        return "broken"
    if errcode == 0:
        return "delivered"
    if errcode is None or errcode in RETRY_ERRCODES:
        return "retry"  # 200 without errcode: a proxy's page, say
    if errcode == RATE_ERRCODE:
        return "rate_limited"
    if errcode in MESSAGE_ERRCODES:
        return "rejected"
    return "broken"


def backoff(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before try ``attempt + 1`` after ``attempt`` failed:
    full jitter over an exponential ceiling, so robots that failed together
    do not retry together."""
    ceiling = min(cap, base * 2 ** max(0, attempt - 1))
    return (rng or random).uniform(ceiling / 2, ceiling)


class WebhookClient:
    """One aiohttp session for every robot; ``send`` never raises for what
    the network or the service can do."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._encode = msgspec.json.Encoder().encode

    async def __aenter__(self) -> WebhookClient:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, url: str, body: dict[str, Any]) -> SendResult:
        assert self._session is not None, "use WebhookClient as an async context manager"
        started = time.perf_counter()
        status: int | None = None
        try:
            async with self._session.post(url, data=self._encode(body)) as response:
                status = response.status
                raw = await response.read()
        except TimeoutError:
            return SendResult(None, None, _ms(started), f"no answer in {self.timeout:g} s")
        except (aiohttp.ClientError, OSError) as exc:
            detail = mask_secrets(f"{type(exc).__name__}: {exc}")
            return SendResult(None, status, _ms(started), detail)
        latency = _ms(started)
        try:
            answer = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            return SendResult(None, status, latency, f"HTTP {status}, not JSON")
        errcode = answer.get("errcode") if isinstance(answer, dict) else None
        errmsg = answer.get("errmsg", "") if isinstance(answer, dict) else ""
        code = errcode if isinstance(errcode, int) else None
        detail = "" if code == 0 and status == 200 else mask_secrets(f"HTTP {status}: {errmsg}")
        return SendResult(code, status, latency, detail)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
