"""Readable everywhere: a word for every code in both languages, times on the
operators' clock, evidence as a sentence, empty cells empty; and the store
board's judgement."""

from __future__ import annotations

import json
import typing
from datetime import UTC, datetime

import pandas as pd
import pytest

from ctower.dashboard.board import board, judge
from ctower.dashboard.i18n import LABELS
from ctower.dashboard.labels import CODES, code_label
from ctower.dashboard.readable import (
    duration_text,
    evidence_text,
    local_time,
    local_times,
    table,
)
from ctower.schemas.control import ALERT_ACTIONS, ALERT_KINDS, DELIVERY_RESULTS, SEVERITIES
from ctower.schemas.events import OriginType, ShipmentStatus
from ctower.schemas.wire import REASONS
from ctower.settings import STREAMS
from ctower.sinks.clickhouse.quarantine import QUARANTINE_REASONS
from ctower.tables.coupon_ledger import Reason, State

SHANGHAI = "Asia/Shanghai"
NOON_UTC_MS = int(datetime(2025, 3, 1, 4, 0, tzinfo=UTC).timestamp() * 1000)  # 12:00 in Shanghai


@pytest.mark.parametrize(("group", "codes"), [
    ("severity", SEVERITIES),
    ("alert_kind", ALERT_KINDS),
    ("alert_action", ALERT_ACTIONS),
    ("coupon_state", typing.get_args(State)),
    ("reservation", typing.get_args(Reason)),
    ("shipment_status", typing.get_args(ShipmentStatus)),
    ("origin_type", typing.get_args(OriginType)),
    ("bad_input", (*REASONS, *QUARANTINE_REASONS)),
    ("delivery_result", (*DELIVERY_RESULTS, "not_sent")),
    ("stream", STREAMS),
    ("coupon_reason", ("open", "pickup_pressure", "stock_cover", "policy_paused",
                       "policy_resumed", "policy_removed", "pickup_pressure_cleared",
                       "stock_cover_cleared", "cap_shifted", "cap_shift_ended")),
])
def test_every_code_has_a_label_in_both_languages(group: str, codes: tuple[str, ...]) -> None:
    for lang in ("zh", "en"):
        missing = [c for c in codes if c not in CODES[group][lang]]
        assert not missing, (group, lang, missing)
    assert set(CODES[group]["zh"]) == set(CODES[group]["en"])


def test_both_languages_have_the_same_words() -> None:
    assert set(LABELS["zh"]) == set(LABELS["en"])
    for group, by_lang in CODES.items():
        if group != "city":  # names: Chinese as they are, English where known
            assert set(by_lang["zh"]) == set(by_lang["en"]), group


def test_the_simulated_chain_s_cities_and_categories_have_english_names() -> None:
    from ctower.simulator.chain import CATEGORIES, REGIONS

    cities = {city for _, _, found in REGIONS for city, _, _ in found}
    assert cities <= set(CODES["city"]["en"])
    assert {c for c, _, _ in CATEGORIES} <= set(CODES["category"]["en"])


def test_a_code_nobody_knows_is_shown_as_it_is_and_none_is_empty() -> None:
    assert code_label("alert_kind", "stock_out", "zh") == "缺货"
    assert code_label("alert_kind", "brand_new_kind", "en") == "brand_new_kind"
    assert code_label("alert_kind", None, "en") == ""
    assert code_label("alert_kind", float("nan"), "en") == ""


def test_times_are_shown_on_the_operators_clock() -> None:
    assert local_time(NOON_UTC_MS, SHANGHAI) == "2025-03-01 12:00:00"
    assert local_time(pd.Timestamp("2025-03-01 04:00:00"), SHANGHAI) == "2025-03-01 12:00:00"
    assert local_time(datetime(2025, 3, 1, 4, 0), "Europe/Paris") == "2025-03-01 05:00:00"
    assert local_time(None, SHANGHAI) == "" and local_time(pd.NaT, SHANGHAI) == ""
    shown = local_times(pd.Series([pd.Timestamp("2025-03-01 04:00"), pd.NaT]), SHANGHAI)
    assert list(shown) == ["2025-03-01 12:00:00", ""]


def test_durations_read_as_words() -> None:
    assert duration_text(200, "zh") == "3 分 20 秒"
    assert duration_text(200, "en") == "3 min 20 s"
    assert duration_text(7260, "en") == "2 h 1 min"
    assert duration_text(0, "en") == "0 s"
    assert duration_text(None, "en") == ""


WINDOW = {"window_start": NOON_UTC_MS, "window_end": NOON_UTC_MS + 15 * 60_000}


@pytest.mark.parametrize(("kind", "evidence", "zh", "en"), [
    ("pickup_congestion",
     {**WINDOW, "waiting": 14, "capacity": 10, "pressure": 1.4, "p90_wait_min": 12.5,
      "threshold_min": 10},
     "等待 14 人 > 容量 10（自提压力 1.4）；P90 等待 12.5 分钟 > 10 分钟（12:00–12:15）",
     "14 waiting > capacity 10 (pickup pressure 1.4); p90 wait 12.5 min > 10 min (12:00–12:15)"),
    ("pickup_pressure",  # a coupon decision: the evidence names its cause
     {"cause": "pickup_pressure", "pressure": 0.93, "waiting": 14, "capacity": 15,
      "threshold": 0.8, "window_end": NOON_UTC_MS},
     "自提压力 0.93 > 0.8（等待 14 / 容量 15）（12:00）",
     "pickup pressure 0.93 > 0.8 (14 waiting / capacity 15) (12:00)"),
    ("stock_out",
     {**WINDOW, "on_hand": 0, "scans": 4, "threshold": 3,
      "transfer": {"kind": "warehouse", "source": "WH-EAST", "qty": 20}},
     "库存 0，断货期间扫码 4 次 ≥ 3（12:00–12:15）；建议从中心仓 WH-EAST 调拨 20 件",
     "0 on hand, 4 scans while empty ≥ 3 (12:00–12:15); transfer 20 from the warehouse WH-EAST"),
    ("restock",
     {"on_hand": 5, "velocity_per_h": 2.5, "cover_h": 2.0, "threshold": 4,
      "transfer": {"kind": "store", "source": "S002", "qty": 6}},
     "可售 2 小时 < 提前期 4 小时（库存 5，销速 2.5/小时）；建议从门店 S002 调拨 6 件",
     "cover 2 h < lead time 4 h (5 on hand, 2.5/h); transfer 6 from store S002"),
    ("policy_paused",
     {"scope": "*", "paused": True, "set_by": "dashboard:wang", "set_at": NOON_UTC_MS},
     "dashboard:wang 于 12:00 暂停（全部门店）", "paused by dashboard:wang at 12:00 (all stores)"),
    ("carrier_on_time",
     {**WINDOW, "on_time_pct": 71.0, "on_time_high_pct": 80.1, "deliveries": 40,
      "threshold_pct": 85.0},
     "准时率 71%（置信上限 80.1%）< 85%，40 单（12:00–12:15）",
     "on time 71% (upper bound 80.1%) < 85%, 40 deliveries (12:00–12:15)"),
    ("guide_capacity",
     {"store_id": "S001", "waiting": 4, "waiting_all": 6, "oldest_wait_min": 31.5,
      "wait_minutes": 20.0, "threshold": 3, "open": 9, "guides": 3, "on_shift": 2, "at_cap": 1,
      "available": 1, "window_end": NOON_UTC_MS},
     "4 单等待导购超过 20 分钟 ≥ 3（最久 31.5 分钟；可接单导购 1/3，待配送 9 单）（12:00）",
     "4 orders waited for a guide over 20 min ≥ 3 (longest 31.5 min; 1 of 3 guides can take "
     "one, 9 open) (12:00)"),
    ("guide_late",
     {**WINDOW, "guide_id": "G-S001-2", "late": 4, "arrived_late": 3, "still_out": 1,
      "threshold": 4, "grace_minutes": 15.0, "window_minutes": 120.0},
     "导购 G-S001-2 超时 4 单 ≥ 4（已送达 3，配送中 1；超过预计送达 15 分钟）（12:00–12:15）",
     "guide G-S001-2: 4 deliveries late ≥ 4 (3 arrived, 1 still out; over 15 min past the "
     "ETA) (12:00–12:15)"),
])
def test_evidence_reads_as_a_sentence(kind: str, evidence: dict, zh: str, en: str) -> None:
    raw = json.dumps(evidence)
    assert evidence_text(raw, "zh", SHANGHAI, kind) == zh
    assert evidence_text(raw, "en", SHANGHAI, kind) == en


def test_evidence_of_an_unknown_shape_is_still_words_not_json() -> None:
    text = evidence_text(json.dumps({"waiting": 3, "set_at": NOON_UTC_MS, "odd": [1, 2]}),
                         "en", SHANGHAI, "something_new")
    assert text == "waiting 3, set at 2025-03-01 12:00:00, odd 1, 2"
    assert "{" not in text
    assert evidence_text("{}", "en", SHANGHAI) == ""
    assert evidence_text(None, "en", SHANGHAI) == ""
    # a resolution carries what it saw then
    text = evidence_text(json.dumps({"waiting": 14, "capacity": 10, "pressure": 1.4,
                                     "at_resolution": {"waiting": 2}}), "en", SHANGHAI,
                         "pickup_congestion")
    assert text.endswith("; at resolution: waiting 2")


def test_tables_put_words_on_codes_local_times_and_leave_empty_cells_empty() -> None:
    frame = pd.DataFrame({
        "status": ["in_transit", None], "eta": [pd.Timestamp("2025-03-01 04:00"), pd.NaT],
        "source": ["WH-1", None], "cover": [1.5, float("nan")], "other": [1, 2],
    })
    shown = table(frame, {"status": "Status", "eta": "ETA", "source": "From", "cover": "Cover"},
                  lang="en", tz=SHANGHAI, codes={"status": "shipment_status"}, times=["eta"])
    assert list(shown.columns) == ["Status", "ETA", "From", "Cover"]
    assert list(shown["Status"]) == ["In transit", ""]
    assert list(shown["ETA"]) == ["2025-03-01 12:00:00", ""]
    assert list(shown["From"]) == ["WH-1", ""]
    assert shown["Cover"].iloc[0] == 1.5 and pd.isna(shown["Cover"].iloc[1])  # numbers stay


def test_the_board_names_each_store_s_worst_open_condition() -> None:
    pickup = pd.DataFrame({"store_id": ["S1", "S2", "S3"], "waiting": [12, 8, 1],
                           "capacity": [10, 10, 10], "pressure": [1.2, 0.85, 0.1]})
    facts = pd.DataFrame({"store_id": ["S3", "S4"], "stock_out": [2, 0], "short_cover": [0, 0],
                          "late_shipments": [0, 0], "coupon_paused": [0, 0],
                          "coupon_throttled": [0, 1], "alerts_critical": [0, 0],
                          "alerts_warning": [0, 0], "alerts_info": [0, 0]})
    tiles = board(["S1", "S2", "S3", "S4", "S5"], {"S1": "east"}, pickup, facts, "?")
    got = {r.store_id: (r.region, r.level, r.condition, r.value) for r in tiles.itertuples()}
    assert got == {
        "S1": ("east", 3, "over_capacity", "12/10"),
        "S2": ("?", 2, "pressure", "0.85"),
        "S3": ("?", 3, "stock_out", "2"),
        "S4": ("?", 1, "coupon_throttled", "1"),
        "S5": ("?", 0, "ok", ""),
    }
    # a critical alert outranks a pressure warning
    assert judge(pickup.iloc[1], pd.Series({"alerts_critical": 1}))[:2] == (3, "alert_critical")
