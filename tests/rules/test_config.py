"""The rules file: documented defaults, named errors, reload while running."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ctower.rules.config import DEFAULTS_FILE, Rules, RulesError, RulesWatcher, load_rules


def test_the_documented_file_holds_exactly_the_defaults() -> None:
    assert load_rules(DEFAULTS_FILE, environ={}) == Rules()
    text = DEFAULTS_FILE.read_text()
    for section, model in Rules.model_fields.items():
        assert f"[{section}]" in text
        for name in model.annotation.model_fields:  # type: ignore[union-attr]
            assert name in text, f"{section}.{name} is not documented in rules.toml"


def test_a_bad_value_is_refused_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "rules.toml"
    bad.write_text("[pickup]\nthrottle_above = -1\n")
    with pytest.raises(RulesError, match=r"pickup\.throttle_above"):
        load_rules(bad, environ={})
    bad.write_text("[stock]\nlead_time_hourz = 3\n")
    with pytest.raises(RulesError, match=r"stock\.lead_time_hourz"):
        load_rules(bad, environ={})
    bad.write_text("[pickup]\nthrottle_above = 0.5\nreopen_below = 0.7\n")
    with pytest.raises(RulesError, match="hysteresis"):
        load_rules(bad, environ={})


def test_environment_overrides_the_file() -> None:
    rules = load_rules(
        DEFAULTS_FILE, environ={"CTOWER_RULE_PICKUP__THROTTLE_ABOVE": "0.9"}
    )
    assert rules.pickup.throttle_above == 0.9
    with pytest.raises(RulesError, match=r"pickup\.throttle_above"):
        load_rules(None, environ={"CTOWER_RULE_PICKUP__THROTTLE_ABOVE": "lots"})


def test_watcher_reloads_good_files_and_keeps_the_rules_on_bad_ones(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("[stock]\nlead_time_hours = 4.0\n")
    watcher = RulesWatcher(path, environ={})
    assert watcher.rules.stock.lead_time_hours == 4.0

    def rewrite(text: str) -> None:
        path.write_text(text)
        stamp = time.time() + watcher.version  # a new mtime even within one clock tick
        os.utime(path, (stamp, stamp))

    rewrite("[stock]\nlead_time_hours = 6.0\n")
    assert watcher.check() is True
    assert watcher.rules.stock.lead_time_hours == 6.0

    rewrite("[stock]\nlead_time_hours = 'soon'\n")
    assert watcher.check() is False
    assert watcher.rules.stock.lead_time_hours == 6.0  # the rules in force stay
    assert watcher.last_error is not None and "stock.lead_time_hours" in watcher.last_error


def test_room_and_cover_bands_are_refused_upside_down() -> None:
    with pytest.raises(RulesError, match="room_below must be at most reopen_below"):
        load_rules(None, {"CTOWER_RULE_PICKUP__ROOM_BELOW": "0.7"})
    with pytest.raises(RulesError, match="coupon_reopen_cover_hours must be at least"):
        load_rules(None, {"CTOWER_RULE_STOCK__COUPON_REOPEN_COVER_HOURS": "1.5"})
