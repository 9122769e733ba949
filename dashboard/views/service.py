"""Customer service: open complaints against their SLA, and complaints per SKU and
per store per hour (the hours the worker's closed minutes add up to).

The SLA is the rules' (``[service]`` of the rules file in force, or its
defaults), so the page and the SLA alert never disagree. The page's own words
are here (``WORDS``); only its title is in the shared dictionary.
"""

from __future__ import annotations

import streamlit as st

from ctower.dashboard.context import current, live, show, store_guard
from ctower.dashboard.queries.service import (
    complaints_by_sku,
    complaints_by_store,
    open_complaints,
    sla_summary,
)
from ctower.dashboard.readable import table
from ctower.rules.config import Rules, RulesError, load_rules

WORDS: dict[str, dict[str, str]] = {
    "zh": {
        "empty": "暂无客服数据：尚未收到客服工单。",
        "open": "未处理投诉", "warning": "即将超时", "breached": "已超时",
        "within": "按时处理率",
        "sla_help": "时限 {sla} 小时，提前 {warn} 小时预警（规则 [service]）",
        "open_list": "未处理投诉（按剩余时间）", "by_sku": "投诉最多的商品（近 {h} 小时）",
        "by_store": "投诉最多的门店（近 {h} 小时）", "ticket": "工单", "channel": "渠道",
        "topic": "问题", "deadline": "时限", "hours_left": "剩余小时", "sla_state": "状态",
        "complaints": "投诉", "last_hour": "近1小时", "stores": "门店数", "closed": "已处理",
        "inquiries": "咨询", "ok": "正常",
    },
    "en": {
        "empty": "No customer service yet: no tickets have come in.",
        "open": "Open complaints", "warning": "SLA running out", "breached": "SLA breached",
        "within": "Answered within SLA", "sla_help": "SLA {sla} h, warned {warn} h before "
        "(rules [service])", "open_list": "Open complaints (least time left first)",
        "by_sku": "SKUs with the most complaints (last {h} h)",
        "by_store": "Stores with the most complaints (last {h} h)", "ticket": "Ticket",
        "channel": "Channel", "topic": "Topic", "deadline": "Deadline",
        "hours_left": "Hours left", "sla_state": "SLA", "complaints": "Complaints",
        "last_hour": "Last hour", "stores": "Stores", "closed": "Answered",
        "inquiries": "Inquiries", "ok": "OK",
    },
}

ctx = current()
t = ctx.t
w = WORDS.get(ctx.lang, WORDS["en"])
st.header(t["page_service"])


def service_rules() -> tuple[float, float]:
    try:
        rules = load_rules(ctx.settings.rules_file).service
    except RulesError:  # the worker keeps the last good rules; so does the page
        rules = Rules().service
    return rules.sla_hours, rules.sla_warn_hours


@live(ctx)
def figures() -> None:
    sla, warn = service_rules()
    hours = max(1, ctx.minutes // 60)
    with store_guard(ctx):
        complaints = ctx.q(open_complaints, sla, warn)
        answered = ctx.q(sla_summary, sla)
        by_sku = ctx.q(complaints_by_sku, hours)
        by_store = ctx.q(complaints_by_store, hours)
    if complaints.empty and by_sku.empty and by_store.empty and (
            answered.empty or not int(answered["answered"].iloc[0])):
        st.info(w["empty"])
        return
    cols = st.columns(4)
    states = complaints["sla_state"].value_counts() if not complaints.empty else {}
    cols[0].metric(w["open"], f"{len(complaints):,}")
    cols[1].metric(w["warning"], f"{int(states.get('warning', 0)):,}")
    cols[2].metric(w["breached"], f"{int(states.get('breached', 0)):,}")
    done = int(answered["answered"].iloc[0]) if not answered.empty else 0
    within = int(answered["within_sla"].iloc[0]) if not answered.empty else 0
    cols[3].metric(w["within"], f"{within / done:.0%}" if done else "–")
    st.caption(w["sla_help"].format(sla=f"{sla:g}", warn=f"{warn:g}"))
    if not complaints.empty:
        st.subheader(w["open_list"])
        shown = complaints.assign(sla_state=[w.get(s, s) for s in complaints["sla_state"]])
        show(table(shown, {
            "ticket_id": w["ticket"], "sla_state": w["sla_state"],
            "hours_left": w["hours_left"], "topic": w["topic"], "store_id": t["store"],
            "sku": "SKU", "channel": w["channel"], "opened_at": t["opened_at"],
            "deadline": w["deadline"]},
            lang=ctx.lang, tz=ctx.tz, times=["opened_at", "deadline"]))
    left, right = st.columns(2)
    with left:
        st.subheader(w["by_sku"].format(h=hours))
        show(table(by_sku, {"sku": "SKU", "complaints": w["complaints"],
                            "complaints_last_hour": w["last_hour"], "stores": w["stores"]},
                   lang=ctx.lang, tz=ctx.tz))
    with right:
        st.subheader(w["by_store"].format(h=hours))
        show(table(by_store, {"store_id": t["store"], "complaints": w["complaints"],
                              "complaints_last_hour": w["last_hour"],
                              "complaints_closed": w["closed"], "inquiries": w["inquiries"]},
                   lang=ctx.lang, tz=ctx.tz))


figures()
