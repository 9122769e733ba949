"""What every watching process shares (ctower/system_alerts.py): an alert a
process opened is resolved by its successor, and every kind has its words."""

from __future__ import annotations

from ctower.schemas.control import SYSTEM_ALERT_KINDS, Alert
from ctower.system_alerts import ACTIONS, MESSAGES, SystemAlerts, remembered_open


def _kinds(sent: list[Alert]) -> list[tuple[str, str]]:
    return [(a.kind, a.status) for a in sent]


def test_a_restarted_process_resolves_what_its_predecessor_opened(
    offline_settings, clock
) -> None:
    settings = offline_settings()
    sent: list[Alert] = []
    first = SystemAlerts(settings, "sink", "sink-a", sent.append, clock)
    first.judge("system_store_unreachable", "", True, {"table": "t"})
    assert list(remembered_open(settings, "sink")) == ["system_store_unreachable|sink-a"]
    again = SystemAlerts(settings, "sink", "sink-a", sent.append, clock)
    again.judge("system_store_unreachable", "", None, {})  # cannot tell: nothing changes
    assert len(sent) == 1
    again.judge("system_store_unreachable", "", False, {})
    assert [a.status for a in sent] == ["open", "resolved"]
    assert sent[0].alert_id == sent[1].alert_id
    assert remembered_open(settings, "sink") == {}


def test_every_system_kind_has_words_in_both_languages() -> None:
    for lang in ("zh", "en"):
        assert set(MESSAGES[lang]) == set(SYSTEM_ALERT_KINDS) == set(ACTIONS[lang])
