"""Shadow rules: a candidate rules file judging the live events beside the rules in force.

A backtest says what a candidate would have done on a recorded day; a shadow
says what it does today, on the same events as the live rules, before anyone
switches to it. The shadow's families are built like the live ones
(:class:`RuleEngine`) and fed the very arrays the live families get (the
stock moves and lane events of the internal topics, the pickup events), on
the same partitions, by the same worker. Nothing of it is persisted: its
state is in memory and starts again empty after a restart or a rebalance,
like a candidate just switched on (what the worker recovers is the live
state only). Action orders stay with the live rules.

What it raises goes to topics of its own, ``shadow-alerts`` and
``shadow-signals``, which the sink writes to ``shadow_alerts`` and
``shadow_coupon_signals``. Nothing reads them to act: the alert service
reads ``alerts`` only, the coupon ledger ``coupon-signals`` only. A shadow
alert's id starts with ``shadow-`` so that, wherever it is shown, it cannot
be taken for (or acknowledged as) the live alert of the same key and time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import faust
import msgspec

from ctower.coupons.policy import campaign_partition
from ctower.rules.config import RulesError, RulesWatcher
from ctower.rules.engine import MemoryTable, RuleEngine
from ctower.schemas.control import Alert, CouponSignal
from ctower.schemas.control import encoder as control_encoder
from ctower.schemas.events import Pickup, Service
from ctower.schemas.master_data import MasterData
from ctower.settings import Settings, SettingsError
from ctower.streams.faust_parts import raw_topic

log = logging.getLogger(__name__)

SHADOW_PREFIX = "shadow-"
"""Starts every shadow alert id."""


class ShadowRules:
    """The candidate's rule families in one worker, and where their outputs go."""

    def __init__(
        self,
        settings: Settings,
        path: Path,
        master: MasterData | None,
        send_alert: Callable[[bytes, bytes], object],
        send_signal: Callable[[bytes, bytes, int], object],
    ) -> None:
        try:
            self.watcher = RulesWatcher(path)
        except RulesError as exc:
            raise SettingsError(f"CTOWER_SHADOW_RULES_FILE: {exc}") from None
        self.settings = settings
        self._send_alert = send_alert
        self._send_signal = send_signal
        self.engine = RuleEngine(
            MemoryTable(), lambda: self.watcher.rules, master, settings.language,
            alert=self.publish_alert, signal=self.publish_signal, prefix="shadow.",
        )
        self.alerts_sent = 0
        self.signals_sent = 0

    @classmethod
    def for_app(
        cls, app: faust.App, settings: Settings, master: MasterData | None
    ) -> ShadowRules | None:
        """The shadow of ``settings.shadow_rules_file`` on ``app``'s topics; None when unset."""
        if settings.shadow_rules_file is None:
            return None

        alerts = raw_topic(app, settings.topic("shadow-alerts"))
        signals = raw_topic(app, settings.topic("shadow-signals"))
        shadow = cls(
            settings, settings.shadow_rules_file, master,
            lambda key, value: alerts.send_soon(key=key, value=value),
            lambda key, value, partition: signals.send_soon(
                key=key, value=value, partition=partition),
        )
        log.info("shadow rules from %s run beside the rules in force (never delivered)",
                 settings.shadow_rules_file)
        return shadow

    # -------------------------------------------------------------- outputs
    def publish_alert(self, alert: Alert) -> None:
        shadow = msgspec.structs.replace(alert, alert_id=SHADOW_PREFIX + alert.alert_id)
        self.alerts_sent += 1
        self._send_alert(shadow.alert_id.encode(), control_encoder.encode(shadow))

    def publish_signal(self, signal: CouponSignal) -> None:
        self.signals_sent += 1
        self._send_signal(
            signal.key().encode(), control_encoder.encode(signal),
            campaign_partition(signal.campaign_id, self.settings.topic_partitions),
        )

    # ---------------------------------------------------------------- input
    def follow(self, processors: dict[str, Any]) -> None:
        """Take every array the live stock and lane rules take, right after them."""
        for name, family_apply in (
            ("stock-moves", self.engine.apply_moves),
            ("lanes", self.engine.apply_lane_events),
            ("shipping", self.engine.apply_shipping),
        ):
            processor = processors.get(name)
            if processor is None:
                continue
            processor.apply = _both(processor.apply, family_apply)
            processor.evaluate = _both(processor.evaluate, self.engine.evaluate_touched)

    def pickups(self, partition: int, source: str, offset: int, events: Iterable[Pickup]) -> None:
        _guarded(self.engine.pickup.apply, partition, source, offset, events)

    def evaluate_pickups(self) -> None:
        _guarded(self.engine.pickup.evaluate_touched)

    def service(self, partition: int, source: str, offset: int, events: Iterable[Service]) -> None:
        _guarded(self.engine.service.apply, partition, source, offset, events)

    def evaluate_service(self) -> None:
        _guarded(self.engine.service.evaluate_touched)

    def tick(self) -> None:
        """Every second: re-read the candidate if changed, let time pass."""
        self.watcher.check()
        _guarded(self.engine.tick)

    def drop(self, partition: int) -> None:
        self.engine.drop(partition)

    def stats(self) -> dict[str, object]:
        return {
            "rules_file": str(self.watcher.path),
            "rules_version": self.watcher.version,
            "rules_error": self.watcher.last_error,
            "alerts_sent": self.alerts_sent,
            "signals_sent": self.signals_sent,
            "failures": _failures,
        }


def _both(first: Callable[..., Any], then: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        result = first(*args)
        _guarded(then, *args)
        return result

    return call


_failures = 0


def _guarded(call: Callable[..., Any], *args: Any) -> None:
    """A candidate's bug must never stop the live rules: logged (the first and
    every thousandth time), counted, and the live processing goes on."""
    global _failures
    try:
        call(*args)
    except Exception:
        _failures += 1
        if _failures == 1 or _failures % 1000 == 0:
            log.exception("shadow rules failed (%d times so far); the live rules go on",
                          _failures)
