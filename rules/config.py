"""Every threshold of the decision layer, in one typed object.

The defaults are the rules of ``docs/domain.md`` ("The rules"); ``rules/rules.toml``
documents each one and is what an operator copies and edits. The file named
by ``CTOWER_RULES_FILE`` is read at start-up and re-read whenever it changes,
so a threshold can be changed while the workers run; environment variables
``CTOWER_RULE_<SECTION>__<FIELD>`` (for example
``CTOWER_RULE_PICKUP__THROTTLE_ABOVE=0.85``) override the file. A file that
does not parse, or names an unknown field, or a value out of range, is
refused with a message naming the field, and the rules in force stay.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ctower.errors import CtowerError

log = logging.getLogger(__name__)

ENV_PREFIX = "CTOWER_RULE_"


class _Section(BaseModel):
    """Fields are documented in ``rules.toml``, next to their defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PickupRules(_Section):
    throttle_above: float = Field(0.8, gt=0)
    reopen_below: float = Field(0.6, ge=0)
    wait_p90_minutes: float = Field(10.0, gt=0)
    wait_window_minutes: float = Field(15.0, gt=0)
    min_waits: int = Field(5, ge=1)
    default_capacity: int = Field(10, ge=1)
    room_below: float = Field(0.5, ge=0)

    @model_validator(mode="after")
    def _hysteresis(self) -> PickupRules:
        if self.reopen_below >= self.throttle_above:
            raise ValueError("reopen_below must be under throttle_above (hysteresis)")
        if self.room_below > self.reopen_below:
            raise ValueError("room_below must be at most reopen_below (hysteresis)")
        return self


class StockRules(_Section):
    lead_time_hours: float = Field(4.0, gt=0)
    coupon_cover_hours: float = Field(2.0, gt=0)
    coupon_reopen_cover_hours: float = Field(3.0, gt=0)
    velocity_window_minutes: int = Field(60, ge=5)
    min_units_per_window: int = Field(10, ge=1)
    stockout_scans: int = Field(3, ge=1)
    stockout_window_minutes: float = Field(15.0, gt=0)
    surplus_factor: float = Field(2.0, ge=1)
    target_cover_hours: float = Field(8.0, gt=0)
    nearest_stores: int = Field(5, ge=1)

    @model_validator(mode="after")
    def _hysteresis(self) -> StockRules:
        if self.coupon_reopen_cover_hours < self.coupon_cover_hours:
            raise ValueError(
                "coupon_reopen_cover_hours must be at least coupon_cover_hours (hysteresis)"
            )
        return self


class DemandRules(_Section):
    k: float = Field(6.0, gt=1)
    min_scans: int = Field(15, ge=1)
    baseline_windows: int = Field(12, ge=1)
    baseline_floor: float = Field(1.0, gt=0)
    prepack_windows: float = Field(6.0, gt=0)
    prepack_due_minutes: float = Field(60.0, gt=0)


class LogisticsRules(_Section):
    stale_minutes: dict[str, float] = Field(
        default_factory=lambda: {
            "created": 60.0,
            "picked_up": 60.0,
            "in_transit": 120.0,
            "out_for_delivery": 120.0,
        },
    )
    min_stale: int = Field(3, ge=1)
    silence_minutes: float = Field(15.0, gt=0)
    silence_min_expected: float = Field(8.0, gt=0)
    silence_min_samples: int = Field(8, ge=1)
    failed_window_minutes: float = Field(60.0, gt=0)
    failed_min: int = Field(3, ge=1)
    failed_share: float = Field(0.15, gt=0, le=1)
    eta_min: int = Field(5, ge=1)
    eta_grace_minutes: float = Field(30.0, ge=0)
    eta_share: float = Field(0.3, gt=0, le=1)
    on_time_window_minutes: float = Field(120.0, gt=0)
    on_time_below: float = Field(0.8, gt=0, le=1)
    on_time_min_deliveries: int = Field(20, ge=1)
    confidence: float = Field(0.99, ge=0.5, lt=1)
    district_failed_min: int = Field(3, ge=1)
    not_shipped_minutes: float = Field(30.0, gt=0)


class ServiceRules(_Section):
    burst_window_minutes: float = Field(60.0, gt=0)
    burst_complaints: int = Field(5, ge=2)
    burst_clear_below: int = Field(2, ge=1)
    top_topics: int = Field(3, ge=1)
    sla_hours: float = Field(24.0, gt=0)
    sla_warn_hours: float = Field(2.0, ge=0)

    @model_validator(mode="after")
    def _bands(self) -> ServiceRules:
        if self.burst_clear_below > self.burst_complaints:
            raise ValueError("burst_clear_below must be at most burst_complaints (hysteresis)")
        if self.sla_warn_hours >= self.sla_hours:
            raise ValueError("sla_warn_hours must be under sla_hours")
        return self


class GuideRules(_Section):
    wait_minutes: float = Field(20.0, gt=0)
    waiting_min: int = Field(3, ge=1)
    hours_start: int = Field(8, ge=0, le=23)
    hours_end: int = Field(22, ge=1, le=24)
    late_grace_minutes: float = Field(15.0, ge=0)
    late_window_minutes: float = Field(120.0, gt=0)
    late_min: int = Field(4, ge=1)
    default_daily_cap: int = Field(20, ge=1)

    @model_validator(mode="after")
    def _hours(self) -> GuideRules:
        if self.hours_end <= self.hours_start:
            raise ValueError("hours_end must be after hours_start")
        return self


class AlertRules(_Section):
    cooldown_minutes: float = Field(10.0, ge=0)


class Rules(_Section):
    pickup: PickupRules = PickupRules()
    stock: StockRules = StockRules()
    demand: DemandRules = DemandRules()
    logistics: LogisticsRules = LogisticsRules()
    service: ServiceRules = ServiceRules()
    guides: GuideRules = GuideRules()
    alerts: AlertRules = AlertRules()


class RulesError(CtowerError, ValueError):
    """A rules file or override is refused; the message names the field."""


DEFAULTS_FILE = Path(__file__).with_name("rules.toml")


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        section, _, field = name[len(ENV_PREFIX):].lower().partition("__")
        if not field:
            raise RulesError(f"{name}: expected {ENV_PREFIX}<SECTION>__<FIELD>")
        found.setdefault(section, {})[field] = value
    return found


def _merge(base: dict[str, Any], extra: dict[str, dict[str, Any]]) -> dict[str, Any]:
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, fields in extra.items():
        target = merged.setdefault(section, {})
        if not isinstance(target, dict):
            raise RulesError(f"{section}: is not a section")
        target.update(fields)
    return merged


def load_rules(path: Path | None, environ: Mapping[str, str] | None = None) -> Rules:
    """The rules of ``path`` (built-in defaults when None) plus environment overrides."""
    data: dict[str, Any] = {}
    source = str(path) if path else "defaults"
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise RulesError(f"{path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise RulesError(f"{path}: not TOML: {exc}") from None
    data = _merge(data, _env_overrides(os.environ if environ is None else environ))
    try:
        return Rules.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "rules"
            problems.append(f"{field}: {error['msg']}")
        raise RulesError(f"{source}: " + "; ".join(problems)) from None


class RulesWatcher:
    """The rules in force, re-read when their file changes.

    :meth:`check` is cheap (one ``stat``) and meant for a 1 s timer. A bad
    new version is logged with the field it gets wrong and ignored: the
    rules in force stay until the file is fixed.
    """

    def __init__(self, path: Path | None, environ: Mapping[str, str] | None = None) -> None:
        self.path = path
        self.environ = environ
        self.rules = load_rules(path, environ)
        self.version = 1
        self.last_error: str | None = None
        self._stamp = self._stat()

    def _stat(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def check(self) -> bool:
        """Reload if the file changed; True when new rules are in force."""
        stamp = self._stat()
        if stamp == self._stamp or stamp is None:
            return False
        self._stamp = stamp
        try:
            rules = load_rules(self.path, self.environ)
        except RulesError as exc:
            self.last_error = str(exc)
            log.error("rules not reloaded, the previous ones stay in force: %s", exc)
            return False
        self.last_error = None
        if rules == self.rules:
            return False
        self.rules = rules
        self.version += 1
        log.info("rules reloaded from %s (version %d)", self.path, self.version)
        return True
