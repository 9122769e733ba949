"""System alerts: the pipeline's own trouble on the business alerts' path.

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

Here is what every watching process shares: the words of each kind, its
runbook, one open alert per key remembered on disk, and a producer for a
process without Faust. The checks are each process's own: the worker's in
``streams/watch.py``, the sink's in ``sinks/clickhouse/watch.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

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
