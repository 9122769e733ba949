"""What the dashboard reads live from the running pipeline rather than the store.

- **The worker's counters** (``/stats/`` on ``worker_url``): events,
  messages, dead letters by reason, duplicates and late events per stream,
  offset order and the dead-letter outbox. Rates (events per second) are the
  difference between two samples; a :class:`Sampler` per URL, shared by every
  viewer of the dashboard process, takes at most one sample every
  ``MIN_INTERVAL`` seconds and keeps the last ``KEEP_SECONDS``.
- **The coupon ledger's counters** (``/coupons/`` on the same worker): grants
  and refusals by reason, sampled the same way, give grants and refusals per
  minute.
- **Consumer lag** per stream and consumer group (the workers' group is the
  app id, the sink's ``<app_id>-sink``): the end offset of each partition less
  the group's committed offset, with kafka-python's admin client.

A worker or broker that cannot be reached is reported, never raised: the
page says so and tries again at the next refresh. With several workers,
``worker_url`` is one of them: its counters cover the partitions it holds.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import pandas as pd
import streamlit as st

from ctower.schemas.control import ALL_STORES
from ctower.settings import STREAMS, Settings

MIN_INTERVAL = 1.5
KEEP_SECONDS = 3600.0
RATE_SPAN = 10.0
"""Events per second are averaged over about this many seconds of samples."""
HTTP_TIMEOUT = 1.5


def fetch_json(url: str, timeout: float = HTTP_TIMEOUT) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return json.load(answer)


@dataclass
class Sampler:
    """Samples one JSON endpoint; thread-safe, shared by the sessions."""

    url: str
    fetch: Callable[[str], Any] = fetch_json
    samples: deque[tuple[float, Any]] = field(default_factory=deque)
    error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _tried: float = 0.0

    def sample(self, now: float | None = None) -> Any | None:
        """The newest sample, taking a new one when the last is old enough;
        None (and :attr:`error`) when the endpoint cannot be reached."""
        now = time.time() if now is None else now
        with self._lock:
            if now - self._tried < MIN_INTERVAL:
                return self.samples[-1][1] if self.samples and self.error is None else None
            self._tried = now
            try:
                value = self.fetch(self.url)
            except Exception as exc:  # down, refused, not JSON: say so, try again later
                self.error = f"{type(exc).__name__}: {exc}"[:200]
                return None
            self.error = None
            self.samples.append((now, value))
            while self.samples and self.samples[0][0] < now - KEEP_SECONDS:
                self.samples.popleft()
            return value

    def window(self, span: float) -> tuple[tuple[float, Any], tuple[float, Any]] | None:
        """The oldest sample at least ``span`` seconds before the newest (or the
        oldest there is) and the newest; None with fewer than two samples."""
        with self._lock:
            if len(self.samples) < 2:
                return None
            newest = self.samples[-1]
            older = [s for s in self.samples if s[0] <= newest[0] - span]
            oldest = older[-1] if older else self.samples[0]
            if oldest is newest:
                return None
            return oldest, newest

    def history(self) -> list[tuple[float, Any]]:
        with self._lock:
            return list(self.samples)


@st.cache_resource(show_spinner=False)
def _samplers() -> dict[str, Sampler]:
    return {}


def sampler(url: str) -> Sampler:
    found = _samplers()
    if url not in found:
        found[url] = Sampler(url)
    return found[url]


# --------------------------------------------------------------------------
# The worker's /stats/
# --------------------------------------------------------------------------

WORKER_COLUMNS = ["stream", "events_per_s", "events", "messages", "dead_letters", "duplicates",
                  "late_events", "dead_letter_outbox"]


@dataclass(frozen=True)
class WorkerView:
    """Per stream figures from the worker, or why there are none."""

    table: pd.DataFrame
    dead_letters: dict[str, dict[str, int]]
    """stream -> reason -> dead letters counted by this worker since it started."""
    error: str | None = None
    url: str = ""


def worker_view(settings: Settings) -> WorkerView:
    url = f"{settings.worker_url}/stats/"
    source = sampler(url)
    stats = source.sample()
    if stats is None:
        return WorkerView(pd.DataFrame(columns=WORKER_COLUMNS), {}, source.error or "no answer",
                          url)
    rates: dict[str, float | None] = {stream: None for stream in STREAMS}
    window = source.window(RATE_SPAN)
    if window is not None:
        (t0, old), (t1, new) = window
        for stream in STREAMS:
            before, after = _events(old, stream), _events(new, stream)
            if before is not None and after is not None and t1 > t0:
                rates[stream] = max(0.0, (after - before) / (t1 - t0))
    rows = []
    letters: dict[str, dict[str, int]] = {}
    outboxes = stats.get("dead_letter_outbox") or {}
    for stream in STREAMS:
        counters = stats.get(stream)
        if not isinstance(counters, dict):
            continue
        reasons = {str(k): int(v) for k, v in (counters.get("dead_letters") or {}).items()}
        letters[stream] = reasons
        outbox = _outbox_for(outboxes, stream)
        rows.append({
            "stream": stream,
            "events_per_s": rates[stream],
            "events": int(counters.get("events") or 0),
            "messages": int(counters.get("messages") or 0),
            "dead_letters": sum(reasons.values()),
            "duplicates": int(counters.get("duplicates") or 0),
            "late_events": int(counters.get("late_events") or 0),
            "dead_letter_outbox": outbox,
        })
    return WorkerView(pd.DataFrame(rows, columns=WORKER_COLUMNS), letters, None, url)


def _events(stats: Any, stream: str) -> int | None:
    counters = stats.get(stream) if isinstance(stats, dict) else None
    if not isinstance(counters, dict):
        return None
    return int(counters.get("events") or 0)


def _outbox_for(outboxes: dict[str, Any], stream: str) -> int | None:
    """Dead letters of the stream's agent not yet acknowledged by Kafka."""
    for name, outbox in outboxes.items():
        if stream in str(name) and isinstance(outbox, dict):
            return int(outbox.get("outstanding") or 0)
    return None


# --------------------------------------------------------------------------
# The coupon ledger's /coupons/
# --------------------------------------------------------------------------

ANSWER_COLUMNS = ["minute", "answer", "count"]


@dataclass(frozen=True)
class CouponAnswers:
    per_minute: pd.DataFrame
    """minute (UTC, naive), answer ('granted' or a refusal reason), count."""
    totals: dict[str, int]
    error: str | None = None


def coupon_answers(settings: Settings) -> CouponAnswers:
    """Reservations granted and refused per minute, by reason, as the worker
    answered them (the differences between the ledger's counters)."""
    source = sampler(f"{settings.worker_url}/coupons/")
    newest = source.sample()
    if newest is None:
        return CouponAnswers(pd.DataFrame(columns=ANSWER_COLUMNS), {}, source.error or "no answer")
    history = source.history()
    rows: dict[tuple[pd.Timestamp, str], int] = {}
    for (_, before), (t1, after) in pairwise(history):
        old, new = _answers(before), _answers(after)
        minute = pd.Timestamp(int(t1 // 60 * 60), unit="s")
        for answer, count in new.items():
            delta = count - old.get(answer, 0)
            if delta > 0:  # a counter that went back: the worker restarted
                rows[(minute, answer)] = rows.get((minute, answer), 0) + delta
    frame = pd.DataFrame(
        [(m, a, n) for (m, a), n in sorted(rows.items())], columns=ANSWER_COLUMNS
    )
    return CouponAnswers(frame, _answers(newest), None)


def _answers(overview: Any) -> dict[str, int]:
    stats = overview.get("stats") if isinstance(overview, dict) else None
    if not isinstance(stats, dict):
        return {}
    found = {}
    for name, value in stats.items():
        if name == "granted":
            found["granted"] = int(value)
        elif name.startswith("refused_"):
            found[name.removeprefix("refused_")] = int(value)
    return found


@dataclass(frozen=True)
class LedgerWindow:
    """One campaign's (and scope's) current cap window as the ledger counts it."""

    count: int
    cap: int | None
    remaining: int | None
    window_end_ms: int
    state: str
    error: str | None = None


def ledger_window(settings: Settings, campaign_id: str, store_id: str) -> LedgerWindow | None:
    """What the owning worker's ledger counts now in the cap window of
    (campaign, store or '' for the whole campaign): grants and counted
    issues, the cap, what remains. None when the worker cannot be reached."""
    from urllib.parse import quote

    query = f"?store={quote(store_id)}" if store_id else ""
    status = sampler(f"{settings.worker_url}/coupons/{quote(campaign_id)}/status{query}").sample()
    if not isinstance(status, dict):
        return None
    window = (status.get("windows") or {}).get(store_id or ALL_STORES)
    if not isinstance(window, dict):
        return None
    return LedgerWindow(
        count=int(window.get("count") or 0), cap=window.get("cap"),
        remaining=window.get("remaining"), window_end_ms=int(window.get("window_end") or 0),
        state=str(status.get("state") or ""),
    )


# --------------------------------------------------------------------------
# Consumer lag
# --------------------------------------------------------------------------

LAG_COLUMNS = ["stream", "group", "lag", "partitions"]
LAG_EVERY = 2.0
LAG_IDLE_AFTER = 30.0
"""The poller stops asking Kafka when nobody looked for this long."""


def consumer_groups(settings: Settings) -> dict[str, str]:
    """Consumer group -> what it is (the workers, the sink)."""
    return {settings.app_id: "worker", f"{settings.app_id}-sink": "sink"}


def measure_lag(admin: Any, prefix: str, groups: tuple[str, ...]) -> pd.DataFrame:
    """Per stream and group: messages not yet committed (end offset - committed)."""
    from kafka import TopicPartition
    from kafka.admin import OffsetSpec

    topics = [f"{prefix}{stream}" for stream in STREAMS]
    described = admin.describe_topics(topics)
    partitions = [
        TopicPartition(topic["name"], p["partition_index"])
        for topic in described if not topic.get("error_code")
        for p in topic.get("partitions", [])
    ]
    ends = admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in partitions})
    rows = []
    for group in groups:
        try:
            offsets = admin.list_group_offsets({group: None}).get(group) or {}
        except Exception:  # no such group (yet): nothing to say about its lag
            offsets = None
        for stream in STREAMS:
            if offsets is None:
                rows.append({"stream": stream, "group": group, "lag": None, "partitions": 0})
                continue
            topic = f"{prefix}{stream}"
            lag, counted = 0, 0
            for tp in partitions:
                if tp.topic != topic or tp not in ends:
                    continue
                done = offsets.get(tp)
                position = done.offset if done is not None and done.offset >= 0 else 0
                lag += max(0, ends[tp].offset - position)
                counted += 1
            rows.append({"stream": stream, "group": group, "lag": lag, "partitions": counted})
    return pd.DataFrame(rows, columns=LAG_COLUMNS)


@dataclass
class LagPoller:
    """Asks Kafka for the consumer lag every ``LAG_EVERY`` seconds in a thread of
    its own, so a broker that does not answer never holds up a page: the page
    reads the latest answer (or why there is none) at once."""

    bootstrap: str
    prefix: str
    groups: tuple[str, ...]
    lag: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=LAG_COLUMNS))
    error: str | None = "not asked yet"
    _wanted: float = 0.0
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def latest(self) -> tuple[pd.DataFrame, str | None]:
        with self._lock:
            self._wanted = time.monotonic()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="ctower-lag",
                                                daemon=True)
                self._thread.start()
            return self.lag, self.error

    def _run(self) -> None:
        from kafka.admin import KafkaAdminClient

        admin = None
        while time.monotonic() - self._wanted < LAG_IDLE_AFTER:
            started = time.monotonic()
            try:
                if admin is None:
                    admin = KafkaAdminClient(
                        bootstrap_servers=self.bootstrap, client_id="ctower-dashboard",
                        request_timeout_ms=3000, bootstrap_timeout_ms=3000)
                lag, error = measure_lag(admin, self.prefix, self.groups), None
            except Exception as exc:  # down or busy: say so, and connect afresh next time
                lag, error = pd.DataFrame(columns=LAG_COLUMNS), \
                    f"{type(exc).__name__}: {exc}"[:200]
                if admin is not None:
                    with contextlib.suppress(Exception):
                        admin.close()
                admin = None
            with self._lock:
                self.lag, self.error = lag, error
            time.sleep(max(0.0, LAG_EVERY - (time.monotonic() - started)))
        if admin is not None:
            with contextlib.suppress(Exception):
                admin.close()


@st.cache_resource(show_spinner=False)
def _lag_poller(bootstrap: str, prefix: str, groups: tuple[str, ...]) -> LagPoller:
    return LagPoller(bootstrap, prefix, groups)


def consumer_lag(settings: Settings, wait: float = 0.0) -> tuple[pd.DataFrame, str | None]:
    """The latest consumer lag per stream and group, and why there is none if so.
    ``wait``: seconds to wait for a first answer (tests)."""
    poller = _lag_poller(settings.bootstrap, settings.topic_prefix,
                         tuple(consumer_groups(settings)))
    lag, error = poller.latest()
    deadline = time.monotonic() + wait
    while error == "not asked yet" and time.monotonic() < deadline:
        time.sleep(0.1)
        lag, error = poller.latest()
    return lag, error


def worker_rate_history(settings: Settings, span: float = 600.0) -> pd.DataFrame:
    """Events per second per stream between consecutive samples of the last
    ``span`` seconds: the live curve of the pipeline page."""
    history = sampler(f"{settings.worker_url}/stats/").history()
    rows = []
    if history:
        newest = history[-1][0]
        history = [h for h in history if h[0] >= newest - span]
    for (t0, old), (t1, new) in pairwise(history):
        for stream in STREAMS:
            before, after = _events(old, stream), _events(new, stream)
            if before is None or after is None or t1 <= t0 or after < before:
                continue
            rows.append({"at": pd.Timestamp(t1, unit="s"), "stream": stream,
                         "events_per_s": (after - before) / (t1 - t0)})
    return pd.DataFrame(rows, columns=["at", "stream", "events_per_s"])
