"""The worker's Faust app as the settings shape it, no broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctower.settings import load_settings
from ctower.streams.app import build_app


@pytest.mark.parametrize("replicas", [0, 1])
def test_standby_replicas_are_the_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, replicas: int
) -> None:
    """Faust keeps one standby by default: with two workers each then applied
    the other's every state write, over twice the CPU per event of one worker
    (docs/operations.md, "Standby replicas"). A worker keeps none unless told."""
    monkeypatch.delenv("CTOWER_STANDBY_REPLICAS", raising=False)
    if replicas:
        monkeypatch.setenv("CTOWER_STANDBY_REPLICAS", str(replicas))
    tower = build_app(load_settings(data_dir=tmp_path))
    assert tower.app.conf.table_standby_replicas == replicas
