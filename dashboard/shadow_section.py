"""The shadow rules' section of the alerts page: the candidate beside the live rules.

On the alerts page rather than a page of its own because the question it
answers is about the live alerts: what would change if the candidate went
live. Shown when a shadow runs (``shadow_rules_file``) or the store holds
what one raised; otherwise the page stays as it was.

Its words live here, not in ``i18n.py``: eight phrases only this section uses.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ctower.dashboard.context import PageContext, live, show, store_guard
from ctower.dashboard.queries.shadow import shadow_compare, shadow_feed, shadow_signals
from ctower.dashboard.readable import evidence_text, table

WORDS: dict[str, dict[str, str]] = {
    "zh": {
        "title": "影子规则（候选）对比",
        "help": "候选规则文件 {file} 与现行规则并行运行：其告警和优惠券决定只写入影子表，"
                "从不推送到企业微信，也不影响发券。",
        "help_no_file": "存储中有影子规则的结果（当前未配置影子规则文件）。",
        "live": "现行规则", "shadow": "候选规则", "shadow_only": "仅候选告警的对象",
        "live_only": "仅现行告警的对象", "also_live": "现行也告警", "alerts": "候选规则的告警",
        "signals": "候选规则的优惠券决定（最新）", "active": "生效中", "none": "无",
    },
    "en": {
        "title": "Shadow rules (candidate) beside the live ones",
        "help": "The candidate rules file {file} runs beside the rules in force: its alerts and "
                "coupon decisions go to the shadow tables only, never to WeChat Work, never to "
                "the coupons.",
        "help_no_file": "The store holds what shadow rules raised (no shadow rules file is set "
                        "now).",
        "live": "Rules in force", "shadow": "Candidate", "shadow_only": "Keys only the candidate "
        "alerts on", "live_only": "Keys only the rules in force alert on",
        "also_live": "Live alerted too", "alerts": "The candidate's alerts",
        "signals": "The candidate's coupon decisions (latest)", "active": "In force",
        "none": "none",
    },
}


def shadow_section(ctx: PageContext) -> None:
    """Draw the section (a live fragment) if there is a shadow to show."""
    words = WORDS.get(ctx.lang, WORDS["en"])
    t = ctx.t
    minutes = max(ctx.minutes, 1440)

    @live(ctx)
    def section() -> None:
        compare = feed = signals = None
        with store_guard(ctx):
            compare = ctx.q(shadow_compare, minutes)
            feed = ctx.q(shadow_feed, minutes)
            signals = ctx.q(shadow_signals)
        if compare is None or feed is None or signals is None:
            return  # the store did not answer: the page's guard has said so
        configured = ctx.settings.shadow_rules_file
        if configured is None and feed.empty and signals.empty:
            return  # no shadow runs and none ran in the window: the page as it was
        st.subheader(words["title"])
        st.caption(words["help"].format(file=configured.name) if configured is not None
                   else words["help_no_file"])
        if compare.empty:
            st.caption(words["none"])
        else:
            show(table(compare, {
                "kind": t["kind"], "live": words["live"], "shadow": words["shadow"],
                "shadow_only": words["shadow_only"], "live_only": words["live_only"]},
                lang=ctx.lang, tz=ctx.tz, codes={"kind": "alert_kind"}))
        if not feed.empty:
            st.markdown(f"**{words['alerts']}**")
            shown = feed.assign(
                why=[evidence_text(e, ctx.lang, ctx.tz, k)
                     for e, k in zip(feed["evidence"], feed["kind"], strict=True)],
                also_live=[t["yes"] if bool(v) else "" for v in feed["also_live"]],
            )
            show(table(shown, {
                "opened_at": t["opened_at"], "kind": t["kind"], "severity": t["severity"],
                "status": t["state"], "store_id": t["store"], "sku": "SKU", "why": t["evidence"],
                "also_live": words["also_live"], "alert_id": t["alert_id"]},
                lang=ctx.lang, tz=ctx.tz, times=["opened_at"],
                codes={"kind": "alert_kind", "severity": "severity"}))
        if not signals.empty:
            st.markdown(f"**{words['signals']}**")
            shown = signals.assign(
                active_now=[words["active"] if bool(v) else "" for v in signals["active_now"]],
                sku=["" if pd.isna(v) else v for v in signals["sku"]],
            )
            show(table(shown, {
                "campaign_id": t["campaign"], "store_id": t["store"], "cause": t["evidence"],
                "sku": "SKU", "active_now": words["active"], "latest": t["when"]},
                lang=ctx.lang, tz=ctx.tz, times=["latest"], codes={"cause": "coupon_reason"}))

    section()
