"""Rule families driven directly, on an in-memory stand-in for the Faust table."""

from __future__ import annotations

from typing import Any

import pytest

from ctower.schemas.control import Alert
from ctower.tables.rules.alert_book import AlertBook, AlertEntry
from ctower.tables.rules.rule_state import RuleState


class MemoryTable:
    """What RuleState uses of a Faust table: ``data`` and ``send_changelog``."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.changelog: list[tuple[int | None, bytes, bytes | None]] = []

    def send_changelog(self, partition: int | None, key: Any, value: Any) -> None:
        self.changelog.append((partition, key, value))


class Harness:
    def __init__(self) -> None:
        self.table = MemoryTable()
        self.wall = 1_000.0
        self.alerts: list[Alert] = []
        self.signals: list[Any] = []
        self.levels: list[Any] = []

    def clock(self) -> float:
        return self.wall

    def state(self, family: str, entity: type) -> RuleState[Any]:
        return RuleState(self.table, family, entity, clock=self.clock)

    def book(self, family: str, cooldown_ms: int = 600_000) -> AlertBook:
        return AlertBook(
            self.state(f"alerts.{family}", AlertEntry), self.alerts.append, "en",
            lambda: cooldown_ms, wall=self.clock,
        )


@pytest.fixture
def harness() -> Harness:
    return Harness()
