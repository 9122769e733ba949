"""What a group robot posts: alerts, digests, test messages, route notices.

WeChat Work renders ``markdown`` (at most 4096 bytes of UTF-8) with colours,
which carry the severity at a glance, but it cannot @mention mobiles, and
``markdown_v2`` cannot mention at all. So a message that must reach the
people on duty is a ``text`` message (at most 2048 bytes) with the mention
lists; everything else is markdown.

Limits are bytes, not characters: a Chinese character is three bytes. A
message that does not fit is cut on a character boundary (and at a line end
when one is near), and says so; the title, the link to the dashboard and the
ids in the footer always survive, because they are what lets an operator
find the whole alert. What gives way first is the alert's free text (its
message), shortened with an ellipsis: the scope, the evidence and the
suggested action are what an operator acts on, so a long text never crowds
them out. Only when those facts alone overflow are the longest of them cut
too, each keeping a fair share (and the free text its first
``FREE_TEXT_MIN_BYTES``).

Rendering never raises for an alert that decoded: a time no calendar can
show, or a value no JSON encoder takes, is shown raw or as its type.

Labels are Chinese by default; ``Settings.language = 'en'`` switches them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from ctower.schemas.control import SEVERITIES, Alert

MARKDOWN_LIMIT = 4096
TEXT_LIMIT = 2048
DIGEST_LINE_CHARS = 60
"""A digest lists each alert on one line, its text cut to this many characters."""
EVIDENCE_VALUE_CHARS = 120
FREE_TEXT_MIN_BYTES = 240
"""What the free text keeps (about 80 Chinese characters) when the alert's
facts alone fill the message."""
HEADLINE_PLACE_CHARS = 40
"""The store, region or carrier in a title is cut to this many characters."""
ELLIPSIS = "…"

Language = Literal["zh", "en"]
MessageKind = Literal["markdown", "text", "digest", "test"]

LABELS: dict[str, dict[str, str]] = {
    "zh": {
        "info": "提示", "warning": "警告", "critical": "严重", "resolved": "已恢复",
        "restock": "补货", "stock_out": "缺货", "pickup_congestion": "自提拥堵",
        "shipment_stale": "运单停滞", "shipment_failed": "运单失败", "eta_passed": "超过预计送达",
        "carrier_on_time": "承运商准时率", "demand_spike": "需求激增",
        "district_failed": "片区派送失败", "order_not_shipped": "付款未发货",
        "scope": "范围", "region": "区域", "store": "门店", "sku": "商品", "carrier": "承运商",
        "evidence": "依据", "action": "建议", "opened": "开始", "resolved_at": "恢复",
        "view": "在看板中查看", "alert": "告警", "delivery": "投递",
        "digest": "告警汇总", "items": "条", "by_kind": "按类型", "more": "另有 {n} 条，见看板",
        "total": "共", "truncated": "…（内容过长，已截断）", "sep": "，", "colon": "：",
        "test_title": "ctower 告警机器人测试",
        "test_body": "路由 {route} 的机器人 {robot} 可以收到告警。",
        "broken_title": "告警路由故障", "broken_body":
            "路由 {route} 的机器人 {robot} 拒绝消息（errcode {errcode}：{reason}），"
            "该路由的告警改由本群接收，直到修复。",
        "on_duty": "值班提醒",
    },
    "en": {
        "info": "Info", "warning": "Warning", "critical": "Critical", "resolved": "Resolved",
        "restock": "Restock", "stock_out": "Stock-out", "pickup_congestion": "Pickup congestion",
        "shipment_stale": "Stale shipment", "shipment_failed": "Failed shipment",
        "eta_passed": "ETA passed", "carrier_on_time": "Carrier on-time rate",
        "demand_spike": "Demand spike", "district_failed": "Failing district",
        "order_not_shipped": "Paid, not shipped",
        "scope": "Scope", "region": "region", "store": "store", "sku": "SKU",
        "carrier": "carrier", "evidence": "Evidence", "action": "Suggested action",
        "opened": "Opened", "resolved_at": "Resolved", "view": "Open in the dashboard",
        "alert": "alert", "delivery": "delivery", "digest": "Alert digest", "items": "alerts",
        "by_kind": "By kind", "more": "{n} more in the dashboard", "total": "Total",
        "truncated": "… (too long, cut)", "sep": ", ", "colon": ": ",
        "test_title": "ctower alert robot test",
        "test_body": "The robot {robot} of route {route} receives alerts.",
        "broken_title": "Alert route broken", "broken_body":
            "The robot {robot} of route {route} refuses messages (errcode {errcode}: "
            "{reason}); its alerts come to this group until it is fixed.",
        "on_duty": "On duty",
    },
}

COLOURS = {"info": "info", "warning": "warning", "critical": "warning", "resolved": "info"}
"""WeChat Work markdown has three colours: info (green), comment (grey),
warning (orange-red)."""

SEVERITY_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}


@dataclass(frozen=True, slots=True)
class Message:
    """A request body for the webhook and what kind of message it is."""

    kind: MessageKind
    body: dict[str, Any]

    @property
    def content(self) -> str:
        return str(self.body[self.body["msgtype"]]["content"])


@dataclass(frozen=True, slots=True)
class Mentions:
    users: tuple[str, ...] = ()
    mobiles: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.users or self.mobiles)


# --------------------------------------------------------------------------
# Bytes
# --------------------------------------------------------------------------


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def cut_utf8(text: str, limit: int, marker: str = "") -> str:
    """``text`` in at most ``limit`` bytes of UTF-8.

    When it must be cut, the cut falls on a character boundary (never half
    a Chinese character), at the last line end if one lies in the last
    quarter of what fits (so a line is not left half-written), and
    ``marker`` follows to say something is missing.
    """
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    room = limit - utf8_len(marker)
    if room <= 0:
        return marker.encode("utf-8")[:limit].decode("utf-8", errors="ignore")
    kept = data[:room].decode("utf-8", errors="ignore")  # drops a split character
    newline = kept.rfind("\n")
    if newline >= len(kept) * 3 // 4:
        kept = kept[:newline]
    return kept + marker


# --------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------


def _label(lang: Language, name: str) -> str:
    return LABELS[lang].get(name, name)


def _when(ms: int | None, zone: ZoneInfo) -> str:
    if not ms:
        return "-"
    try:
        return datetime.fromtimestamp(ms / 1000, zone).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, ValueError, OSError):  # beyond any calendar: say what it was
        return f"{ms} ms"


def _value(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        except (ValueError, TypeError, RecursionError):  # an int of 5,000 digits, deep nesting
            text = f"<{type(value).__name__}>"
    return text if len(text) <= EVIDENCE_VALUE_CHARS else text[: EVIDENCE_VALUE_CHARS - 1] + "…"


def scope_text(alert: Alert, lang: Language) -> str:
    """``区域 east，门店 S001，商品 K1`` - only the dimensions the alert has."""
    parts = [
        f"{_label(lang, name)} {value}"
        for name, value in (
            ("region", alert.region), ("store", alert.store_id),
            ("sku", alert.sku), ("carrier", alert.carrier),
        )
        if value
    ]
    return _label(lang, "sep").join(parts) or "-"


def evidence_text(alert: Alert, lang: Language) -> str:
    return _label(lang, "sep").join(f"{k}={_value(v)}" for k, v in alert.evidence.items()) or "-"


def dashboard_link(base: str, **params: str | None) -> str:
    """The dashboard view of an alert (or a route): the base URL with query
    parameters the dashboard can read; absent ones are left out."""
    query = urlencode({k: v for k, v in params.items() if v})
    return f"{base}/?{query}" if query else f"{base}/"


def _status_key(alert: Alert) -> str:
    return "resolved" if alert.status == "resolved" else alert.severity


def _headline(alert: Alert, lang: Language) -> str:
    where = alert.store_id or alert.region or alert.carrier or ""
    if len(where) > HEADLINE_PLACE_CHARS:
        where = where[: HEADLINE_PLACE_CHARS - 1] + ELLIPSIS
    what = _label(lang, alert.kind)
    return f"{what} {where}".strip()


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------


def _markdown(content: str, kind: MessageKind) -> Message:
    return Message(kind, {"msgtype": "markdown", "markdown": {"content": content}})


def _text(content: str, mentions: Mentions, kind: MessageKind) -> Message:
    body: dict[str, Any] = {"content": content}
    if mentions.users:
        body["mentioned_list"] = list(mentions.users)
    if mentions.mobiles:
        body["mentioned_mobile_list"] = list(mentions.mobiles)
    return Message(kind, {"msgtype": "text", "text": body})


def _assemble(head: str, body: str, tail: str, limit: int, lang: Language) -> str:
    """head + body + tail in ``limit`` bytes; only the body is cut - unless
    head and tail alone overflow (ids or a store name of absurd length),
    when the whole is cut, so no message is ever over its limit."""
    marker = _label(lang, "truncated")
    room = limit - utf8_len(head) - utf8_len(tail)
    if room < 0:
        return cut_utf8(head + body + tail, limit, marker)
    return head + cut_utf8(body, room, marker) + tail


def _fit_body(free: str, facts: list[str], room: int, lang: Language) -> str:
    """The free text then the facts, one a line, in ``room`` bytes.

    The free text gives way first, down to an ellipsis. When the facts
    alone leave it less than ``FREE_TEXT_MIN_BYTES``, the free text keeps
    that much and the facts share the rest: the short ones whole, the long
    ones (a huge evidence) cut to equal shares, so each still has its line.
    """
    lines_bytes = sum(utf8_len(f) + 1 for f in facts)  # each after a line end
    if utf8_len(free) + lines_bytes <= room:
        return "\n".join([free, *facts])
    if room - lines_bytes >= min(utf8_len(free), FREE_TEXT_MIN_BYTES):
        return "\n".join([cut_utf8(free, room - lines_bytes, ELLIPSIS), *facts])
    free = cut_utf8(free, min(FREE_TEXT_MIN_BYTES, max(room, 0)), ELLIPSIS)
    left = room - utf8_len(free) - len(facts)  # the line ends
    shares = {}
    marker = _label(lang, "truncated")
    for n, index in enumerate(sorted(range(len(facts)), key=lambda i: utf8_len(facts[i]))):
        share = max(left, 0) // (len(facts) - n)
        shares[index] = cut_utf8(facts[index], share, marker)
        left -= utf8_len(shares[index])
    return "\n".join([free, *(shares[i] for i in range(len(facts)))])


def render_alert(
    alert: Alert,
    *,
    lang: Language,
    dashboard: str,
    delivery_id: str,
    mentions: Mentions = Mentions(),
    zone: ZoneInfo | None = None,
) -> Message:
    """One alert as one message: markdown, or text when people are mentioned."""
    zone = zone or ZoneInfo("Asia/Shanghai")
    L = LABELS[lang]
    status = _status_key(alert)
    link = dashboard_link(
        dashboard, alert_id=alert.alert_id, kind=alert.kind, store_id=alert.store_id
    )
    times = f"{L['opened']}{L['colon']}{_when(alert.opened_at, zone)}"
    if alert.status == "resolved":
        times += f"{L['sep']}{L['resolved_at']}{L['colon']}{_when(alert.resolved_at, zone)}"
    facts = [
        f"{L['scope']}{L['colon']}{scope_text(alert, lang)}",
        f"{L['evidence']}{L['colon']}{evidence_text(alert, lang)}",
    ]
    if alert.action:
        facts.append(f"{L['action']}{L['colon']}{alert.action}")
    facts.append(times)
    footer = f"{L['alert']} {alert.alert_id} · {L['delivery']} {delivery_id}"
    if mentions and alert.status == "open":
        head = f"【{L[status]}】{_headline(alert, lang)}\n"
        tail = f"\n{L['view']}{L['colon']}{link}\n{footer}"
        limit = TEXT_LIMIT
    else:
        head = (f'### <font color="{COLOURS[status]}">{L[status]}</font> '
                f"{_headline(alert, lang)}\n")
        tail = f'\n[{L["view"]}]({link})\n<font color="comment">{footer}</font>'
        facts = [f"> {line}" for line in facts]
        limit = MARKDOWN_LIMIT
    body = _fit_body(alert.message, facts, limit - utf8_len(head) - utf8_len(tail), lang)
    content = _assemble(head, body, tail, limit, lang)
    if limit == TEXT_LIMIT:
        return _text(content, mentions, "text")
    return _markdown(content, "markdown")


def worst_first(alerts: Sequence[Alert]) -> list[Alert]:
    """Open before resolved, critical before warning before info, newest first."""
    return sorted(
        alerts,
        key=lambda a: (
            a.status != "open", -SEVERITY_RANK[a.severity], -(a.raised_at or a.opened_at),
        ),
    )


def render_digest(
    alerts: Sequence[Alert],
    *,
    lang: Language,
    dashboard: str,
    digest_id: str,
    route: str,
    mentions: Mentions = Mentions(),
) -> Message:
    """Many alerts in one message: the counts (by severity and kind, so
    every alert is accounted for), then the worst ones, as many as fit."""
    L = LABELS[lang]
    ordered = worst_first(alerts)
    statuses = Counter(_status_key(a) for a in ordered)
    kinds = Counter(a.kind for a in ordered)
    status_counts = L["sep"].join(
        f"{L[s]} {statuses[s]}" for s in ("critical", "warning", "info", "resolved") if statuses[s]
    )
    kind_counts = L["sep"].join(f"{_label(lang, k)} {n}" for k, n in kinds.most_common())
    link = dashboard_link(dashboard, route=route)
    footer = f"{L['digest']} {digest_id} · {len(ordered)}"
    mention = bool(mentions) and any(a.status == "open" for a in ordered)
    limit = TEXT_LIMIT if mention else MARKDOWN_LIMIT
    if mention:
        head = (f"【{L['digest']}】{L['total']} {len(ordered)} {L['items']}"
                f"（{status_counts}）\n{L['by_kind']}{L['colon']}{kind_counts}\n")
        tail = f"\n{L['view']}{L['colon']}{link}\n{footer}"
    else:
        head = (f"### {L['digest']} · {L['total']} {len(ordered)} {L['items']}\n"
                f"> {status_counts}\n> {L['by_kind']}{L['colon']}{kind_counts}\n")
        tail = f'\n[{L["view"]}]({link})\n<font color="comment">{footer}</font>'
    room = limit - utf8_len(head) - utf8_len(tail)
    lines: list[str] = []
    used = 0
    for shown, alert in enumerate(ordered):
        status = _status_key(alert)
        free = _one_line(alert.message)  # one line per alert, whatever the text holds
        text = free if len(free) <= DIGEST_LINE_CHARS else (
            free[: DIGEST_LINE_CHARS - 1] + ELLIPSIS
        )
        label = L[status] if mention else f'<font color="{COLOURS[status]}">{L[status]}</font>'
        line = f"{shown + 1}. {label} {_headline(alert, lang)}{L['colon']}{text}"
        rest = len(ordered) - shown - 1
        more = "\n" + L["more"].format(n=rest) if rest else ""
        if used + utf8_len(line) + 1 + utf8_len(more) > room:
            more = L["more"].format(n=len(ordered) - shown)
            lines.append(more)
            break
        lines.append(line)
        used += utf8_len(line) + 1
    content = _assemble(head, "\n".join(lines), tail, limit, lang)
    if mention:
        return _text(content, mentions, "digest")
    return Message("digest", {"msgtype": "markdown", "markdown": {"content": content}})


def render_test(route: str, robot: str, *, lang: Language, dashboard: str) -> Message:
    """What ``ctower alerts test`` posts: proof that the robot is reachable."""
    L = LABELS[lang]
    content = (f"### {L['test_title']}\n{L['test_body'].format(route=route, robot=robot)}\n"
               f"[{L['view']}]({dashboard_link(dashboard, route=route)})")
    return Message("test", {"msgtype": "markdown", "markdown": {"content": content}})


def render_broken_notice(
    route: str, robot: str, errcode: int | None, reason: str, *, lang: Language, dashboard: str
) -> Message:
    """Tells the fallback route's group that a route is broken and that its
    alerts come there now."""
    L = LABELS[lang]
    body = L["broken_body"].format(route=route, robot=robot, errcode=errcode, reason=reason)
    content = (f'### <font color="warning">{L["broken_title"]}</font> {route}\n{body}\n'
               f"[{L['view']}]({dashboard_link(dashboard, route=route)})")
    return _markdown(cut_utf8(content, MARKDOWN_LIMIT, L["truncated"]), "markdown")
