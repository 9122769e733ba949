"""Turning what the store holds into what an operator reads.

- **Times** are stored in UTC (the store's ``DateTime64(3, 'UTC')`` columns
  come back as naive UTC) or as epoch milliseconds (inside evidence); they
  are shown on the operators' wall clock, ``operator_timezone`` (default
  Asia/Shanghai).
- **Evidence** (the JSON an alert or a coupon decision carries: the window,
  the values and the threshold that made the rule fire) is shown as one
  sentence, e.g. ``自提压力 0.93 > 0.8（12:00–12:15）``, in the page's
  language whatever language the rule wrote its message in. Shapes this
  module does not know still read as "label value" pairs, never as JSON.
- **Tables**: :func:`table` renames columns, puts words on codes and local
  times on time columns; empty values stay empty cells (the pages pass
  ``placeholder=""`` to ``st.dataframe``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd

from ctower.dashboard.labels import code_label, is_missing
from ctower.schemas.control import ALL_STORES

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
SHORT_TIME = "%H:%M"


@lru_cache(maxsize=8)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


# --------------------------------------------------------------------------
# Times
# --------------------------------------------------------------------------


def to_local(value: Any, tz: str) -> datetime | None:
    """A stored time (naive UTC datetime/Timestamp, aware datetime, or epoch
    ms) as an aware datetime on the operators' clock; None when empty."""
    if is_missing(value):
        return None
    try:
        if isinstance(value, bool):
            return None
        if isinstance(value, (int, float)):
            moment = datetime.fromtimestamp(float(value) / 1000, UTC)
        elif isinstance(value, str):
            moment = pd.Timestamp(value).to_pydatetime()
        else:
            moment = pd.Timestamp(value).to_pydatetime()
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(zone(tz))
    except (OverflowError, ValueError, OSError, TypeError):
        return None


def local_time(value: Any, tz: str, fmt: str = TIME_FORMAT) -> str:
    """A stored time as text on the operators' clock ('' when empty)."""
    moment = to_local(value, tz)
    return moment.strftime(fmt) if moment is not None else ""


def local_times(series: pd.Series, tz: str, fmt: str = TIME_FORMAT) -> pd.Series:
    """A column of stored times as text on the operators' clock."""
    return pd.Series([local_time(v, tz, fmt) for v in series], index=series.index, dtype=object)


def local_axis(series: pd.Series, tz: str) -> pd.Series:
    """A column of naive UTC times as naive wall-clock times (for chart axes)."""
    stamps = pd.to_datetime(series)
    if stamps.dt.tz is None:
        stamps = stamps.dt.tz_localize("UTC")
    return stamps.dt.tz_convert(zone(tz)).dt.tz_localize(None)


def duration_text(seconds: Any, lang: str) -> str:
    """``3 分 20 秒`` / ``3 min 20 s``; '' when empty."""
    if is_missing(seconds):
        return ""
    total = round(float(seconds))
    sign = "-" if total < 0 else ""
    total = abs(total)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if lang == "zh":
        parts = ([f"{hours} 小时"] if hours else []) + ([f"{minutes} 分"] if minutes else [])
        if not hours and (secs or not minutes):
            parts.append(f"{secs} 秒")
    else:
        parts = ([f"{hours} h"] if hours else []) + ([f"{minutes} min"] if minutes else [])
        if not hours and (secs or not minutes):
            parts.append(f"{secs} s")
    return sign + " ".join(parts)


# --------------------------------------------------------------------------
# Evidence
# --------------------------------------------------------------------------

FIELD_LABELS: dict[str, dict[str, str]] = {
    "zh": {
        "waiting": "等待",
        "capacity": "容量",
        "pressure": "自提压力",
        "p90_wait_min": "P90 等待（分钟）",
        "threshold": "阈值",
        "threshold_min": "阈值（分钟）",
        "on_hand": "库存",
        "velocity_per_h": "销速（件/小时）",
        "cover_h": "可售（小时）",
        "lead_time_h": "提前期（小时）",
        "scans": "扫码",
        "baseline": "基线",
        "ratio": "倍数", "k": "倍数阈值", "store_id": "门店", "sku": "商品", "location_id": "位置",
        "carrier": "承运商", "region": "区域", "silence_min": "无更新（分钟）",
        "expected_updates": "应有更新", "stale": "超时运单", "open": "在途运单", "failed": "失败",
        "finished": "完结",
        "share_pct": "占比 %",
        "past_eta": "逾期运单",
        "on_time_pct": "准时率 %",
        "deliveries": "送达单数", "threshold_pct": "阈值 %", "scope": "范围", "paused": "暂停",
        "set_by": "设置人", "set_at": "设置时间", "cause": "原因", "window_minutes": "窗口（分钟）",
        "pickups_in_window": "窗口内自提", "zero_since": "断货起始", "transfer": "调拨",
        "examples": "示例", "oldest": "最久运单", "rule": "规则", "reason": "原因",
        "at_resolution": "恢复时", "updates_hour_before": "前一小时更新",
        "threshold_expected": "更新数阈值",
        "threshold_stale": "超时阈值",
        "grace_minutes": "宽限（分钟）",
        "confidence": "置信度", "share_low_pct": "置信下限 %", "on_time_high_pct": "置信上限 %",
        "baseline_from": "基线起始", "window_start": "窗口开始", "window_end": "窗口结束",
        "source": "来源", "qty": "数量", "distance_km": "距离（公里）", "kind": "方式",
    },
    "en": {
        "waiting": "waiting", "capacity": "capacity", "pressure": "pickup pressure",
        "p90_wait_min": "p90 wait (min)",
        "threshold": "threshold",
        "threshold_min": "threshold (min)",
        "on_hand": "on hand", "velocity_per_h": "velocity (/h)", "cover_h": "cover (h)",
        "lead_time_h": "lead time (h)", "scans": "scans", "baseline": "baseline", "ratio": "ratio",
        "k": "ratio threshold", "store_id": "store", "sku": "SKU", "location_id": "location",
        "carrier": "carrier", "region": "region", "silence_min": "silent (min)",
        "expected_updates": "updates expected",
        "stale": "stale shipments",
        "open": "open shipments",
        "failed": "failed", "finished": "finished", "share_pct": "share %", "past_eta": "past ETA",
        "on_time_pct": "on time %", "deliveries": "deliveries", "threshold_pct": "threshold %",
        "scope": "scope", "paused": "paused", "set_by": "set by", "set_at": "set at",
        "cause": "cause",
        "window_minutes": "window (min)",
        "pickups_in_window": "pickups in window",
        "zero_since": "empty since", "transfer": "transfer", "examples": "examples",
        "oldest": "oldest", "rule": "rule", "reason": "reason", "at_resolution": "at resolution",
        "updates_hour_before": "updates the hour before", "threshold_expected": "threshold",
        "threshold_stale": "threshold", "grace_minutes": "grace (min)", "confidence": "confidence",
        "share_low_pct": "lower bound %", "on_time_high_pct": "upper bound %",
        "baseline_from": "baseline from", "window_start": "window start",
        "window_end": "window end", "source": "source", "qty": "quantity",
        "distance_km": "distance (km)", "kind": "kind",
    },
}

TIME_FIELDS = frozenset({"window_start", "window_end", "zero_since", "set_at", "baseline_from",
                         "decided_at", "ts"})
SKIP_FIELDS = frozenset({"window_start", "window_end", "store_id", "sku", "location_id",
                         "carrier", "region"})
"""Shown as the window in brackets, or already in the row's scope columns."""

_SENTENCES: dict[str, dict[str, str]] = {
    "zh": {
        "over_capacity": "等待 {waiting} 人 > 容量 {capacity}（自提压力 {pressure}）",
        "slow": "P90 等待 {p90_wait_min} 分钟 > {threshold_min} 分钟",
        "pressure_high": "自提压力 {pressure} > {threshold}",
        "pressure_low": "自提压力 {pressure} < {threshold}",
        "queue": "（等待 {waiting} / 容量 {capacity}）",
        "stock_out": "库存 {on_hand}，断货期间扫码 {scans} 次 ≥ {threshold}",
        "restock": "可售 {cover_h} 小时 < 提前期 {threshold} 小时（库存 {on_hand}，销速 "
            "{velocity_per_h}/小时）",
        "cover_short": "{sku} 可售 {cover_h} 小时 < {threshold} 小时（库存 {on_hand}）",
        "cover_empty": "{sku} 库存 {on_hand}，断货",
        "transfer": "建议{how} {source} 调拨 {qty} 件",
        "transfer_short": "需采购补货 {qty} 件",
        "spike": "5 分钟扫码 {scans} 次，为基线 {baseline} 的 {ratio} 倍 > {k} 倍",
        "silent": "{silence_min} 分钟无运单更新，按以往节奏应有 {expected_updates} 次 ≥ "
            "{threshold_expected}",
        "stage": "{stale} 单超时未更新 ≥ {threshold_stale}（在途 {open}）",
        "failed": "失败或退回 {failed}/{finished} 单（{share_pct}%，置信下限 {share_low_pct}% ≥ "
            "{threshold_pct}%）",
        "eta": "{past_eta} 单超过预计送达 ≥ {threshold}（占在途 {share_pct}%）",
        "on_time": "准时率 {on_time_pct}%（置信上限 {on_time_high_pct}%）< {threshold_pct}%，"
            "{deliveries} 单",
        "guides_short": "{waiting} 单等待导购超过 {wait_minutes} 分钟 ≥ {threshold}（最久 "
            "{oldest_wait_min} 分钟；可接单导购 {available}/{guides}，待配送 {open} 单）",
        "guide_late": "导购 {guide_id} 超时 {late} 单 ≥ {threshold}（已送达 {arrived_late}，"
            "配送中 {still_out}；超过预计送达 {grace_minutes} 分钟）",
        "policy_paused": "{set_by} 于 {set_at} 暂停（{scope}）",
        "policy_set": "{set_by} 于 {set_at} 设置（{scope}）",
        "policy_removed": "策略已撤销（{scope}）",
        "all_stores": "全部门店",
        "how_warehouse": "从中心仓", "how_store": "从门店",
        "resolution": "恢复时：{what}",
        "sep": "；", "pair_sep": "，",
    },
    "en": {
        "over_capacity": "{waiting} waiting > capacity {capacity} (pickup pressure {pressure})",
        "slow": "p90 wait {p90_wait_min} min > {threshold_min} min",
        "pressure_high": "pickup pressure {pressure} > {threshold}",
        "pressure_low": "pickup pressure {pressure} < {threshold}",
        "queue": " ({waiting} waiting / capacity {capacity})",
        "stock_out": "{on_hand} on hand, {scans} scans while empty ≥ {threshold}",
        "restock": "cover {cover_h} h < lead time {threshold} h ({on_hand} on hand, "
            "{velocity_per_h}/h)",
        "cover_short": "{sku}: cover {cover_h} h < {threshold} h ({on_hand} on hand)",
        "cover_empty": "{sku}: {on_hand} on hand, out of stock",
        "transfer": "transfer {qty} {how} {source}",
        "transfer_short": "order {qty} from supply",
        "spike": "{scans} scans in 5 min, {ratio}x the baseline {baseline} > {k}x",
        "silent": "no update for {silence_min} min, {expected_updates} expected ≥ "
            "{threshold_expected}",
        "stage": "{stale} shipments overdue for an update ≥ {threshold_stale} (of {open} open)",
        "failed": "{failed} of {finished} failed or returned ({share_pct}%, lower bound "
            "{share_low_pct}% ≥ {threshold_pct}%)",
        "eta": "{past_eta} shipments past their ETA ≥ {threshold} ({share_pct}% of open)",
        "on_time": "on time {on_time_pct}% (upper bound {on_time_high_pct}%) < {threshold_pct}%, "
            "{deliveries} deliveries",
        "guides_short": "{waiting} orders waited for a guide over {wait_minutes} min ≥ "
            "{threshold} (longest {oldest_wait_min} min; {available} of {guides} guides can "
            "take one, {open} open)",
        "guide_late": "guide {guide_id}: {late} deliveries late ≥ {threshold} ({arrived_late} "
            "arrived, {still_out} still out; over {grace_minutes} min past the ETA)",
        "policy_paused": "paused by {set_by} at {set_at} ({scope})",
        "policy_set": "set by {set_by} at {set_at} ({scope})",
        "policy_removed": "policy removed ({scope})",
        "all_stores": "all stores",
        "how_warehouse": "from the warehouse", "how_store": "from store",
        "resolution": "at resolution: {what}",
        "sep": "; ", "pair_sep": ", ",
    },
}


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".") if abs(value) < 1e15 else f"{value:.3g}"
    return str(value)


MISSING = "\u2047"
"""What a sentence gets for a value the evidence lacks; such a sentence is not used."""


class _Fields(dict[str, str]):
    """format_map values: numbers formatted, missing ones :data:`MISSING`."""

    def __missing__(self, key: str) -> str:
        return MISSING


def _fields(evidence: Mapping[str, Any], tz: str) -> _Fields:
    out = _Fields()
    for key, value in evidence.items():
        if is_missing(value):
            out[key] = "–"
        elif key in TIME_FIELDS and isinstance(value, (int, float)):
            out[key] = local_time(value, tz, SHORT_TIME)
        elif key == "scope" and value in (ALL_STORES, ""):
            continue
        else:
            out[key] = _pairs_value(value) if isinstance(value, (dict, list)) else _number(value)
    return out


def _pairs_value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value[:5]) + (" …" if len(value) > 5 else "")
    return json.dumps(value, ensure_ascii=False)


def _window(evidence: Mapping[str, Any], tz: str, lang: str) -> str:
    start, end = evidence.get("window_start"), evidence.get("window_end")
    left, right = ("（", "）") if lang == "zh" else (" (", ")")
    if isinstance(start, (int, float)) and isinstance(end, (int, float)) and start and end:
        return f"{left}{local_time(start, tz, SHORT_TIME)}–{local_time(end, tz, SHORT_TIME)}{right}"
    if isinstance(end, (int, float)) and end:
        return f"{left}{local_time(end, tz, SHORT_TIME)}{right}"
    return ""


def _generic(evidence: Mapping[str, Any], lang: str, tz: str) -> str:
    """'label value' pairs for a shape no sentence is written for."""
    names = FIELD_LABELS[lang]
    parts = []
    for key, value in evidence.items():
        if key in SKIP_FIELDS or key == "at_resolution" or is_missing(value):
            continue
        if key in TIME_FIELDS and isinstance(value, (int, float)):
            shown = local_time(value, tz)
        elif isinstance(value, dict):
            inner = _generic(value, lang, tz)
            if not inner:
                continue
            shown = inner
        elif isinstance(value, list):
            shown = _pairs_value(value)
        elif key in ("cause", "reason") and isinstance(value, str):
            shown = code_label("coupon_reason", value, lang)
        else:
            shown = _number(value)
        parts.append(f"{names.get(key, key)} {shown}")
    return _SENTENCES[lang]["pair_sep"].join(parts)


def _transfer(evidence: Mapping[str, Any], lang: str) -> str:
    transfer = evidence.get("transfer")
    if not isinstance(transfer, dict) or not transfer.get("qty"):
        return ""
    words = _SENTENCES[lang]
    kind = transfer.get("kind")
    if kind == "short":
        return words["transfer_short"].format_map(_Fields(qty=_number(transfer.get("qty"))))
    how = words["how_store"] if kind == "store" else words["how_warehouse"]
    return words["transfer"].format_map(_Fields(
        how=how, source=str(transfer.get("source", "?")), qty=_number(transfer.get("qty"))))


def _sentence(kind: str, evidence: Mapping[str, Any], lang: str, tz: str) -> str | None:
    """The sentence of a known shape, or None."""
    words = _SENTENCES[lang]
    f = _fields(evidence, tz)
    window = _window(evidence, tz, lang)
    if kind == "pickup_congestion":
        parts = []
        waiting, capacity = evidence.get("waiting"), evidence.get("capacity")
        if isinstance(waiting, (int, float)) and isinstance(capacity, (int, float)) \
                and waiting > capacity:
            parts.append(words["over_capacity"].format_map(f))
        p90, limit = evidence.get("p90_wait_min"), evidence.get("threshold_min")
        if isinstance(p90, (int, float)) and isinstance(limit, (int, float)) and p90 > limit:
            parts.append(words["slow"].format_map(f))
        if not parts:
            parts.append(words["over_capacity"].format_map(f))
        return words["sep"].join(parts) + window
    if kind == "pickup_pressure":
        active = evidence.get("pressure", 0) > evidence.get("threshold", 0) if isinstance(
            evidence.get("pressure"), (int, float)) and isinstance(
            evidence.get("threshold"), (int, float)) else True
        text = words["pressure_high" if active else "pressure_low"].format_map(f)
        if "waiting" in evidence and "capacity" in evidence:
            text += words["queue"].format_map(f)
        return text + window
    if kind == "stock_cover":
        on_hand = evidence.get("on_hand")
        key = "cover_empty" if isinstance(on_hand, (int, float)) and on_hand <= 0 \
            else "cover_short"
        return words[key].format_map(f)
    if kind == "stock_out":
        text = words["stock_out"].format_map(f) + window
        transfer = _transfer(evidence, lang)
        return text + (words["sep"] + transfer if transfer else "")
    if kind == "restock":
        text = words["restock"].format_map(f)
        transfer = _transfer(evidence, lang)
        return text + (words["sep"] + transfer if transfer else "")
    if kind == "demand_spike":
        return words["spike"].format_map(f) + window
    if kind == "shipment_stale":
        rule = evidence.get("rule")
        return words["silent" if rule == "lane_silent" else "stage"].format_map(f) + window
    if kind == "shipment_failed":
        return words["failed"].format_map(f) + window
    if kind == "eta_passed":
        return words["eta"].format_map(f)
    if kind == "carrier_on_time":
        return words["on_time"].format_map(f) + window
    if kind == "guide_capacity":
        return words["guides_short"].format_map(f) + window
    if kind == "guide_late":
        return words["guide_late"].format_map(f) + window
    if kind in ("policy_paused", "policy_resumed", "policy_removed"):
        scope = evidence.get("scope")
        f["scope"] = words["all_stores"] if scope in (None, "", ALL_STORES) else str(scope)
        if kind == "policy_removed":
            return words["policy_removed"].format_map(f)
        return words["policy_paused" if evidence.get("paused") else "policy_set"].format_map(f)
    return None


def parse_evidence(raw: Any) -> dict[str, Any] | None:
    """The evidence as a dict (stored as JSON text), None when empty or not an object."""
    if isinstance(raw, Mapping):
        return dict(raw)
    if is_missing(raw) or not isinstance(raw, (str, bytes)) or not raw:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, TypeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def evidence_text(raw: Any, lang: str, tz: str, kind: str | None = None) -> str:
    """One sentence saying why (see the module docstring); '' for no evidence.

    ``kind`` is the alert kind, or the coupon decision's reason; a coupon
    decision's evidence names its cause itself.
    """
    evidence = parse_evidence(raw)
    if evidence is None:
        return "" if is_missing(raw) or raw in ("", "{}") else str(raw)[:300]
    if not evidence:
        return ""
    cause = evidence.get("cause") if isinstance(evidence.get("cause"), str) else None
    shape = cause or (kind or "").removesuffix("_cleared")
    try:
        text = _sentence(shape, evidence, lang, tz)
    except (KeyError, ValueError, TypeError, IndexError):
        text = None
    if text is not None and MISSING in text:
        text = None  # a shape of its own: say what it has
    if text is None:
        text = _generic(evidence, lang, tz)
    resolution = evidence.get("at_resolution")
    if isinstance(resolution, dict) and resolution:
        what = _generic(resolution, lang, tz)
        if what:
            text += _SENTENCES[lang]["sep"] + _SENTENCES[lang]["resolution"].format(what=what)
    return text


# --------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------


def table(
    frame: pd.DataFrame,
    columns: Mapping[str, str],
    *,
    lang: str,
    tz: str,
    codes: Mapping[str, str] | None = None,
    times: Sequence[str] = (),
) -> pd.DataFrame:
    """``frame``'s ``columns`` (in that order, renamed to their labels), with
    words for the code columns (column -> label group) and local times."""
    out = pd.DataFrame(index=frame.index)
    for source, label in columns.items():
        if source not in frame.columns:
            continue
        series = frame[source]
        if codes and source in codes:
            series = pd.Series([code_label(codes[source], v, lang) for v in series],
                               index=frame.index, dtype=object)
        elif source in times:
            series = local_times(series, tz)
        elif series.dtype == object or pd.api.types.is_string_dtype(series.dtype):
            series = pd.Series(["" if is_missing(v) else v for v in series],
                               index=frame.index, dtype=object)
        out[label] = series
    return out.reset_index(drop=True)
