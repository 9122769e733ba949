"""Rule families driven directly, on an in-memory stand-in for the Faust table."""

from __future__ import annotations

from typing import Any

import pytest

from ctower.rules.alert_book import AlertBook, AlertEntry
from ctower.rules.rule_state import RuleState
from ctower.schemas.control import Alert


class Harness:
    def __init__(self, table: Any) -> None:
        self.table = table
        """The shared in-memory stand-in for the Faust table (``memory_table``)."""
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
def harness(memory_table: Any) -> Harness:
    return Harness(memory_table)
