"""Opening and resolving alerts: one open alert per key, with a cooldown.

A rule says, each time it looks at a key, whether its condition holds
(:meth:`AlertBook.hold`) or not (:meth:`AlertBook.clear`). The book turns
that into alert records: one when the condition starts, one when it clears;
nothing in between, however often the rule looks. A key that resolved does
not reopen within the cooldown, so a condition wavering around its
threshold does not page anyone twice in ten minutes.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

from msgspec import Struct

from ctower.rules.rule_state import RuleState
from ctower.rules.texts import render
from ctower.schemas.control import Alert, AlertKind, Severity


class AlertEntry(Struct, kw_only=True, array_like=True):
    open: Alert | None = None
    resolved_at: int = 0


class Finding(Struct, kw_only=True):
    """A condition a rule found, with what an on-call engineer needs to act."""

    kind: AlertKind
    severity: Severity
    evidence: dict[str, Any]
    action: dict[str, Any] | None = None
    """Facts for the suggested action (texts.py words them)."""
    region: str | None = None
    store_id: str | None = None
    sku: str | None = None
    carrier: str | None = None


class AlertBook:
    def __init__(
        self,
        state: RuleState[AlertEntry],
        publish: Callable[[Alert], None],
        language: str,
        cooldown_ms: Callable[[], int],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.publish = publish
        self.language = language
        self.cooldown_ms = cooldown_ms
        self.wall = wall
        self.opened = 0
        self.resolved = 0

    def is_open(self, partition: int, key: str) -> bool:
        entry = self.state.get(partition, key)
        return entry is not None and entry.open is not None

    def hold(self, partition: int, key: str, finding: Finding, now: int) -> Alert | None:
        """The condition of ``key`` holds at event time ``now``; open an alert if none is."""
        entry = self.state.get(partition, key)
        if entry is not None and entry.open is not None:
            return None
        if entry is not None and now < entry.resolved_at + self.cooldown_ms():
            return None
        message, action = render(finding, self.language)
        digest = hashlib.blake2s(f"{key}@{now}".encode(), digest_size=6).hexdigest()
        alert = Alert(
            alert_id=f"{finding.kind}-{digest}",
            key=key,
            kind=finding.kind,
            severity=finding.severity,
            status="open",
            message=message,
            evidence=finding.evidence,
            action=action,
            opened_at=now,
            raised_at=int(self.wall() * 1000),
            region=finding.region,
            store_id=finding.store_id,
            sku=finding.sku,
            carrier=finding.carrier,
        )
        self.state.put(partition, key, AlertEntry(open=alert, resolved_at=0))
        self.opened += 1
        self.publish(alert)
        return alert

    def clear(
        self, partition: int, key: str, now: int, evidence: dict[str, Any] | None = None
    ) -> Alert | None:
        """The condition of ``key`` no longer holds; resolve its open alert."""
        entry = self.state.get(partition, key)
        if entry is None or entry.open is None:
            return None
        opened = entry.open
        resolved_at = max(now, opened.opened_at)
        resolved = Alert(
            **{
                **{f: getattr(opened, f) for f in opened.__struct_fields__},
                "status": "resolved",
                "resolved_at": resolved_at,
                "raised_at": int(self.wall() * 1000),
                "evidence": {**opened.evidence, "at_resolution": evidence or {}},
            }
        )
        self.state.put(partition, key, AlertEntry(open=None, resolved_at=resolved_at))
        self.resolved += 1
        self.publish(resolved)
        return resolved

    def expire(self, partition: int, now: int) -> None:
        """Forget cooldowns that are over, so the book does not grow forever."""
        horizon = now - self.cooldown_ms()
        for key, entry in self.state.items(partition):
            if entry.open is None and entry.resolved_at < horizon:
                self.state.delete(partition, key)
