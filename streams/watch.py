"""The pipeline watching itself: system alerts on the business alerts' path.

Operators already read ``ct.alerts`` (the store, the dashboard's alerts page,
the WeChat Work routes), so the pipeline's own trouble goes there as well:
an :class:`~ctower.schemas.control.Alert` whose kind starts with ``system_``,
sent when a condition starts and again, resolved, when it clears. Each
process watches what only it can see:

- a worker: its streams falling silent for longer than their usual gap, its
  consumer lag growing, its dead-letter rate, a partition of its that does
  not move while messages wait;
- the sink: being behind Kafka, and its store refusing inserts as
  unreachable (the store is down, the broker usually is not: the sink
  still tells ``ct.alerts``, and stores the alert once the store is back).

Conditions are judged once a second from counters the processes already
keep, never on a message's path. A check answers True (holds), False
(clear) or None (cannot tell yet, e.g. right after a start): only a clear
answer resolves, so a restart neither resolves nor reopens on guesswork.
What is open is remembered in ``<data_dir>/system-alerts/<name>.json``, so a
restarted process resolves the alert its predecessor opened (same
``alert_id``) instead of leaving it open forever.

Every threshold is a setting (``CTOWER_SYSTEM_*``); 0 turns a check off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from ctower.schemas.control import Alert, AlertKind, Severity
from ctower.settings import Settings

log = logging.getLogger(__name__)

MESSAGES: dict[str, dict[str, str]] = {
    "zh": {
        "system_stream_silent": "数据流静默：{instance} 已 {silent_s} 秒未收到 {stream} 消息"
        "（通常间隔 {usual_gap_s} 秒，阈值 {threshold_s} 秒）",
        "system_lag_growing": "消费积压增长：{instance} 积压 {lag} 条，"
        "{window_s} 秒内增加 {growth} 条",
        "system_dead_letter_rate": "死信率过高：{instance} 近 {window_s} 秒 {dead_letters} 条死信"
        "（{per_minute}/分钟，阈值 {threshold}/分钟；最多：{top_reason}）",
        "system_partition_stuck": "分区停滞：{instance} 上 {topic}[{partition}] 已 {stuck_s} 秒"
        "未前进，积压 {lag} 条",
        "system_sink_behind": "入库落后：{instance} 已 {behind_s} 秒未追上 Kafka"
        "（积压 {lag} 条，阈值 {threshold_s} 秒）",
        "system_store_unreachable": "存储不可达：{instance} 写入 {table} 已失败 {failing_s} 秒"
        "（{error}）",
    },
    "en": {
        "system_stream_silent": "Stream silent: no {stream} message on {instance} for "
        "{silent_s} s (usual gap {usual_gap_s} s, threshold {threshold_s} s)",
        "system_lag_growing": "Consumer lag growing: {instance} is {lag} messages behind, "
        "up {growth} in {window_s} s",
        "system_dead_letter_rate": "Dead-letter rate high: {dead_letters} dead letters on "
        "{instance} in {window_s} s ({per_minute}/min, threshold {threshold}/min; most: "
        "{top_reason})",
        "system_partition_stuck": "Partition stuck: {topic}[{partition}] on {instance} has not "
        "moved for {stuck_s} s with {lag} messages waiting",
        "system_sink_behind": "Sink behind: {instance} has not caught up with Kafka for "
        "{behind_s} s ({lag} messages behind, threshold {threshold_s} s)",
        "system_store_unreachable": "Store unreachable: {instance} has failed to insert into "
        "{table} for {failing_s} s ({error})",
    },
}

RUNBOOKS = "docs/operations.md"
"""Where each kind's runbook is: a section named after the kind (the action says so)."""

ACTIONS: dict[str, dict[str, str]] = {
    "zh": {
        "system_stream_silent": "检查该数据流的生产方与网络"
        f"（运维手册 {RUNBOOKS}：system_stream_silent）",
        "system_lag_growing": "增加 worker 副本或查找慢处理"
        f"（运维手册 {RUNBOOKS}：system_lag_growing）",
        "system_dead_letter_rate": "按原因查看 dead_letters 表并联系生产方"
        f"（运维手册 {RUNBOOKS}：system_dead_letter_rate）",
        "system_partition_stuck": "查看该 worker 日志中的死信与偏移等待"
        f"（运维手册 {RUNBOOKS}：system_partition_stuck）",
        "system_sink_behind": "检查 sink 日志与存储写入速度"
        f"（运维手册 {RUNBOOKS}：system_sink_behind）",
        "system_store_unreachable": "检查 ClickHouse 是否运行、磁盘与密码"
        f"（运维手册 {RUNBOOKS}：system_store_unreachable）",
    },
    "en": {
        "system_stream_silent": "Check the stream's producers and their network "
        f"(runbook: {RUNBOOKS}, system_stream_silent)",
        "system_lag_growing": "Add a worker replica or find what is slow "
        f"(runbook: {RUNBOOKS}, system_lag_growing)",
        "system_dead_letter_rate": "Read dead_letters by reason and tell the producer "
        f"(runbook: {RUNBOOKS}, system_dead_letter_rate)",
        "system_partition_stuck": "Read the worker's log for dead letters or offsets it waits "
        f"for (runbook: {RUNBOOKS}, system_partition_stuck)",
        "system_sink_behind": "Read the sink's log and the store's insert times "
        f"(runbook: {RUNBOOKS}, system_sink_behind)",
        "system_store_unreachable": "Check that ClickHouse runs, its disk and its password "
        f"(runbook: {RUNBOOKS}, system_store_unreachable)",
    },
}


class _Values(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


class _Remembered(msgspec.Struct):
    open: dict[str, Alert] = {}


_remembered = msgspec.json.Decoder(_Remembered)


class SystemAlerts:
    """One process's system alerts: at most one open per key, remembered on disk.

    ``publish`` hands an alert to the process's way to ``ct.alerts`` (the
    worker's Faust producer, the sink's own producer); it must not block.
    """

    def __init__(
        self,
        settings: Settings,
        name: str,
        instance: str,
        publish: Callable[[Alert], None],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.language = settings.language
        self.instance = instance
        self.publish = publish
        self.wall = wall
        self.path = settings.data_dir / "system-alerts" / f"{name}.json"
        self.open: dict[str, Alert] = self._load()
        self.opened = 0
        self.resolved = 0

    def _load(self) -> dict[str, Alert]:
        try:
            return dict(_remembered.decode(self.path.read_bytes()).open)
        except FileNotFoundError:
            return {}
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("system alerts: cannot read %s (%s); starting with none open",
                        self.path, exc)
            return {}

    def _save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(".tmp")
            temporary.write_bytes(msgspec.json.encode(_Remembered(open=self.open)))
            os.replace(temporary, self.path)
        except OSError as exc:  # remembering is a courtesy: never stop the watch for it
            log.warning("system alerts: cannot write %s (%s)", self.path, exc)

    def key(self, kind: str, scope: str = "") -> str:
        return f"{kind}|{scope}|{self.instance}" if scope else f"{kind}|{self.instance}"

    def judge(
        self, kind: AlertKind, scope: str, holds: bool | None, evidence: dict[str, Any],
        severity: Severity = "warning",
    ) -> Alert | None:
        """Open, resolve or leave the alert of (kind, scope) as ``holds`` says."""
        key = self.key(kind, scope)
        if holds is None:
            return None
        if holds:
            return self._open(key, kind, severity, evidence)
        return self._resolve(key, evidence)

    def _open(self, key: str, kind: AlertKind, severity: Severity,
              evidence: dict[str, Any]) -> Alert | None:
        if key in self.open:
            return None
        lang = self.language if self.language in MESSAGES else "zh"
        values = _Values({"instance": self.instance, **evidence})
        now = int(self.wall() * 1000)
        digest = hashlib.blake2s(f"{key}@{now}".encode(), digest_size=6).hexdigest()
        alert = Alert(
            alert_id=f"{kind}-{digest}", key=key, kind=kind, severity=severity, status="open",
            message=MESSAGES[lang][kind].format_map(values),
            evidence={"instance": self.instance, **evidence},
            action=ACTIONS[lang][kind], opened_at=now, raised_at=now,
        )
        self.open[key] = alert
        self.opened += 1
        self._save()
        self.publish(alert)
        return alert

    def _resolve(self, key: str, evidence: dict[str, Any]) -> Alert | None:
        opened = self.open.pop(key, None)
        if opened is None:
            return None
        now = int(self.wall() * 1000)
        resolved = msgspec.structs.replace(
            opened, status="resolved", resolved_at=max(now, opened.opened_at), raised_at=now,
            evidence={**opened.evidence, "at_resolution": evidence},
        )
        self.resolved += 1
        self._save()
        self.publish(resolved)
        return resolved

    def open_by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for alert in self.open.values():
            counts[alert.kind] = counts.get(alert.kind, 0) + 1
        return counts


# --------------------------------------------------------------------------
# The worker
# --------------------------------------------------------------------------


class WorkerSignals(Protocol):
    """What the worker's watch reads; the live worker's is :class:`TowerSignals`."""

    def messages(self) -> dict[str, int]:
        """Messages read so far per stream (this worker's partitions)."""
        ...

    def owned_streams(self) -> set[str]:
        """Streams of which this worker holds at least one partition."""
        ...

    def dead_letters(self) -> dict[str, int]:
        """Dead letters so far, by reason."""
        ...

    def partitions(self) -> dict[tuple[str, int], tuple[int, int]]:
        """(topic, partition) -> (how far it got, messages waiting) for the
        partitions this worker holds whose end Kafka has told it."""
        ...


@dataclass
class _Stream:
    count: int = 0
    changed_at: float = 0.0
    seen: int = 0
    """Seconds in which messages came: the usual gap is known after a few."""
    gaps: deque[float] = field(default_factory=lambda: deque(maxlen=200))


GAP_PERCENTILE = 0.95
MIN_CHANGES = 3
"""A stream is judged silent only once messages came in this many seconds."""


class WorkerWatch:
    """A worker's checks, run once a second (``check``)."""

    def __init__(
        self, settings: Settings, alerts: SystemAlerts, signals: WorkerSignals,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.alerts = alerts
        self.signals = signals
        self.clock = clock
        self.started = clock()
        self.streams: dict[str, _Stream] = {}
        self.lag_samples: deque[tuple[float, int]] = deque()
        self.dead_samples: deque[tuple[float, int, dict[str, int]]] = deque(
            [(self.started, 0, {})])  # dead letters count from the start
        self.positions: dict[tuple[str, int], tuple[int, float]] = {}
        """(topic, partition) -> (position, when it last moved or had nothing waiting)."""

    def check(self) -> None:
        now = self.clock()
        s = self.settings
        if s.system_stream_silent_min_seconds > 0:
            self._silent(now)
        partitions = self.signals.partitions()
        if s.system_lag_growing_seconds > 0:
            self._lag(now, partitions)
        if s.system_dead_letters_per_minute > 0:
            self._dead_letters(now)
        if s.system_partition_stuck_seconds > 0:
            self._stuck(now, partitions)

    def usual_gap(self, stream: str) -> float | None:
        state = self.streams.get(stream)
        if state is None or state.seen < MIN_CHANGES:
            return None
        gaps = sorted(state.gaps) or [1.0]
        return gaps[min(len(gaps) - 1, int(len(gaps) * GAP_PERCENTILE))]

    def _silent(self, now: float) -> None:
        s = self.settings
        owned = self.signals.owned_streams()
        for stream, count in self.signals.messages().items():
            state = self.streams.setdefault(stream, _Stream(count=count, changed_at=now))
            if count != state.count:
                if state.seen:
                    state.gaps.append(now - state.changed_at)
                state.count, state.changed_at = count, now
                state.seen += 1
            usual = self.usual_gap(stream)
            threshold = max(s.system_stream_silent_min_seconds,
                            s.system_stream_silent_factor * (usual or 0.0))
            silent = now - state.changed_at
            holds: bool | None
            if usual is None or stream not in owned:
                holds = None if stream in owned else False  # not ours now: not silent here
            else:
                holds = silent > threshold
            self.alerts.judge("system_stream_silent", stream, holds, {
                "stream": stream, "silent_s": round(silent, 1),
                "usual_gap_s": round(usual or 0.0, 1), "threshold_s": round(threshold, 1),
            })

    def _lag(self, now: float, partitions: Mapping[tuple[str, int], tuple[int, int]]) -> None:
        s = self.settings
        window = s.system_lag_growing_seconds
        lag = sum(waiting for _, waiting in partitions.values())
        samples = self.lag_samples
        samples.append((now, lag))
        while len(samples) > 1 and samples[1][0] <= now - window:
            samples.popleft()
        start_t, start_lag = samples[0]
        if now - start_t < window:
            return  # not a whole window yet
        lowest = min(value for _, value in samples)
        growth = lag - start_lag
        holds = growth >= s.system_lag_min_growth and lowest >= start_lag
        clear = lag <= start_lag or lag < s.system_lag_min_growth
        self.alerts.judge("system_lag_growing", "", True if holds else (False if clear else None),
                          {"lag": lag, "growth": growth, "window_s": round(now - start_t)})

    def _dead_letters(self, now: float) -> None:
        s = self.settings
        window = s.system_dead_letter_window_seconds
        by_reason = self.signals.dead_letters()
        total = sum(by_reason.values())
        samples = self.dead_samples
        samples.append((now, total, by_reason))
        while len(samples) > 1 and samples[1][0] <= now - window:
            samples.popleft()
        _, start_total, start_reasons = samples[0]
        count = total - start_total
        per_minute = count * 60.0 / window
        reasons = {r: n - start_reasons.get(r, 0) for r, n in by_reason.items()}
        top = max(reasons.items(), key=lambda item: item[1], default=("", 0))
        holds = per_minute > s.system_dead_letters_per_minute
        self.alerts.judge("system_dead_letter_rate", "", holds, {
            "dead_letters": count, "per_minute": round(per_minute, 1), "window_s": round(window),
            "threshold": s.system_dead_letters_per_minute,
            "top_reason": f"{top[0]} {top[1]}" if top[1] else "-",
        })

    def _stuck(self, now: float, partitions: Mapping[tuple[str, int], tuple[int, int]]) -> None:
        limit = self.settings.system_partition_stuck_seconds
        seen = set()
        for tp, (position, waiting) in partitions.items():
            seen.add(tp)
            before = self.positions.get(tp)
            if before is None or before[0] != position or waiting == 0:
                self.positions[tp] = (position, now)
                since = now
            else:
                since = before[1]
            stuck = now - since
            topic, partition = tp
            self.alerts.judge("system_partition_stuck", f"{topic}:{partition}", stuck > limit, {
                "topic": topic, "partition": partition, "stuck_s": round(stuck, 1),
                "lag": waiting, "position": position,
            }, severity="critical")
        for tp in list(self.positions):
            if tp not in seen:  # given to another worker: not stuck here any more
                del self.positions[tp]
                self.alerts.judge("system_partition_stuck", f"{tp[0]}:{tp[1]}", False,
                                  {"topic": tp[0], "partition": tp[1], "reassigned": True})


class TowerSignals:
    """The live worker's counters, read for the watch and for ``/metrics``."""

    def __init__(self, tower: Any) -> None:
        self.tower = tower

    def messages(self) -> dict[str, int]:
        return {stream: proc.messages for stream, proc in self.tower.processors.items()}

    def owned_streams(self) -> set[str]:
        assigned = {tp.topic for tp in self._assignment()}
        return {stream for stream, proc in self.tower.processors.items() if proc.topic in assigned}

    def dead_letters(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for proc in self.tower.processors.values():
            for reason, n in proc.dead_letters.items():
                total[reason] = total.get(reason, 0) + n
        if self.tower.decisions is not None:
            bad = sum(p.bad for p in self.tower.decisions.processors.values())
            if bad:
                total["internal_undecodable"] = total.get("internal_undecodable", 0) + bad
        return total

    def _assignment(self) -> set[Any]:
        try:
            return set(self.tower.app.consumer.assignment())
        except Exception:  # no consumer yet (starting, stopping)
            return set()

    def partitions(self) -> dict[tuple[str, int], tuple[int, int]]:
        """(committed, lag) of the agents' partitions: Kafka's end minus the
        group's commit (the start, while nothing is committed). The commit,
        not what was folded, says a partition moves: messages folded whose acks
        wait (a dead letter Kafka refuses) are still stuck."""
        tower = self.tower
        procs: dict[str, Any] = {proc.topic: proc for proc in tower.processors.values()}
        if tower.decisions is not None:
            procs.update({p.topic: p for p in tower.decisions.processors.values()})
        consumer = tower.app.consumer
        committed = getattr(consumer, "_committed_offset", {})
        found: dict[tuple[str, int], tuple[int, int]] = {}
        for tp in self._assignment():
            proc = procs.get(tp.topic)
            if proc is None:
                continue
            try:
                high = consumer.highwater(tp)
            except Exception:
                high = None
            if high is None:
                continue
            nxt = committed.get(tp)
            if nxt is None:  # nothing committed yet (Faust keeps no 0 either)
                # Only a partition the agent holds: asking a state for one it has
                # not loaded loads it, and during the recovery after a restart that
                # loaded a half-restored table. Its position was then behind the
                # commit and its windows short, and the agent folded on that: the
                # killed-worker tests lost orders (1 to 16%) in CI.
                if not proc.state.owns(tp.partition) or proc.position(tp.partition) < 0:
                    continue  # nothing read either: cannot tell
                nxt = 0  # read, never committed: from the group's start (earliest)
            found[(tp.topic, tp.partition)] = (nxt, max(0, high - nxt))
        return found


def install_worker_watch(tower: Any) -> WorkerWatch:
    """Watch the worker once a second; its system alerts go out as the rules' do."""
    settings: Settings = tower.settings
    app = tower.app
    decisions = tower.decisions
    assert decisions is not None

    alerts = SystemAlerts(settings, f"worker-{settings.worker_web_port}", settings.worker_url,
                          decisions.publish_alert)
    watch = WorkerWatch(settings, alerts, TowerSignals(tower))
    tower.watch = watch

    @app.timer(interval=1.0)
    async def system_watch() -> None:
        if app.rebalancing:
            return  # positions and ends are in flux; judged again a second later
        try:
            watch.check()
        except Exception:  # the watch must never take the worker down
            log.exception("system watch failed this second")

    return watch


# --------------------------------------------------------------------------
# The sink
# --------------------------------------------------------------------------


class SinkSignals(Protocol):
    def behind(self) -> tuple[float | None, int | None]:
        """(seconds since the sink last read everything Kafka held, messages behind)."""
        ...

    def store_failing(self) -> tuple[float | None, str, str]:
        """(seconds the inserts have failed as an outage or None, table, error);
        a None with ``store_ok`` True means the store took the last insert."""
        ...

    def store_ok(self) -> bool:
        ...


class SinkWatch:
    def __init__(self, settings: Settings, alerts: SystemAlerts, signals: SinkSignals) -> None:
        self.settings = settings
        self.alerts = alerts
        self.signals = signals

    def check(self) -> None:
        s = self.settings
        if s.system_sink_behind_seconds > 0:
            behind, lag = self.signals.behind()
            holds: bool | None = None if behind is None else behind > s.system_sink_behind_seconds
            self.alerts.judge("system_sink_behind", "", holds, {
                "behind_s": round(behind or 0.0, 1), "lag": lag if lag is not None else "?",
                "threshold_s": s.system_sink_behind_seconds,
            })
        if s.system_store_unreachable_seconds > 0:
            failing, table, error = self.signals.store_failing()
            if failing is not None:
                holds = failing >= s.system_store_unreachable_seconds
            else:
                holds = False if self.signals.store_ok() else None
            self.alerts.judge("system_store_unreachable", "", holds, {
                "failing_s": round(failing or 0.0, 1), "table": table, "error": error,
            }, severity="critical")


class KafkaAlertPublisher:
    """``ct.alerts`` from a process without Faust: queued, sent by :meth:`drain`
    (an alert the broker does not take now is tried again next time)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.topic("alerts")
        self.queue: deque[Alert] = deque()
        self.producer: Any = None
        self.sent = 0

    def __call__(self, alert: Alert) -> None:
        self.queue.append(alert)
        log.info("alert %s %s: %s", alert.status, alert.key, alert.message)

    async def drain(self) -> None:
        if not self.queue:
            return
        from aiokafka import AIOKafkaProducer

        if self.producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.settings.bootstrap, acks="all",
                client_id=f"{self.settings.app_id}-system-alerts", request_timeout_ms=10_000,
            )
            try:
                await producer.start()
            except Exception as exc:
                log.warning("system alerts: broker not reachable (%s); will retry", exc)
                await producer.stop()
                return
            self.producer = producer
        while self.queue:
            alert = self.queue[0]
            try:
                await self.producer.send_and_wait(
                    self.topic, msgspec.json.encode(alert), key=alert.alert_id.encode())
            except Exception as exc:
                log.warning("system alerts: %s not sent yet (%s)", alert.alert_id, exc)
                return
            self.queue.popleft()
            self.sent += 1

    async def close(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None


def remembered_open(settings: Settings, name: str) -> dict[str, Any]:
    """What a process left open, by key (tests read it)."""
    path = settings.data_dir / "system-alerts" / f"{name}.json"
    try:
        return dict(json.loads(path.read_text()).get("open", {}))
    except (OSError, ValueError):
        return {}
