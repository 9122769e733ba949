"""Shopping guides (导购): per store the guides who can take a delivery now against the
guide deliveries open and the orders waiting for a guide; per guide today's
deliveries against the daily cap, the on-time rate and the late ones.

Caps and shifts come from the master data (a guide it does not name has the
rules' default cap and no shift), the waiting threshold from the rules in
force (``[guides]``), so the page and the alerts never disagree. The page's
own words are here (``WORDS``); only its title is in the shared dictionary.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ctower.dashboard.context import current, live, show, store_guard
from ctower.dashboard.queries.guides import anchor, guide_days, open_by_guide, open_by_store
from ctower.dashboard.readable import table
from ctower.dashboard.regions import master_data
from ctower.rules.config import GuideRules, Rules, RulesError, load_rules
from ctower.rules.guides import local_hour

WORDS: dict[str, dict[str, str]] = {
    "zh": {
        "empty": "暂无导购配送数据：尚未收到导购配送的物流事件。",
        "guides": "导购（在班）", "delivered": "今日已送", "on_time": "今日准时率",
        "waiting": "等待导购 > {m} 分钟",
        "help": "每位导购每日上限默认 {cap} 单（主数据可按人设置）；订单等待导购超过 {m} 分钟计入"
        "（规则 [guides]）",
        "stores": "门店：可接单导购与待配送订单", "guide_list": "导购今日配送",
        "guide": "导购", "on_shift": "在班", "available": "可接单", "open": "待配送",
        "waiting_all": "等待导购", "oldest": "最久等待（分钟）", "cap": "上限",
        "late": "超时", "failed": "失败", "out": "配送中", "rate": "准时率",
        "at_cap": "已满", "yes": "是", "no": "否", "count": "导购",
    },
    "en": {
        "empty": "No guide deliveries yet: no logistics events of guides have come in.",
        "guides": "Guides (on shift)", "delivered": "Delivered today",
        "on_time": "On time today", "waiting": "Waiting > {m} min",
        "help": "A guide delivers at most {cap} a day unless the master data says otherwise; "
        "an order waiting for a guide over {m} min counts (rules [guides])",
        "stores": "Stores: guides who can take a delivery, and deliveries open",
        "guide_list": "Guides today", "guide": "Guide", "on_shift": "On shift",
        "available": "Can take one", "open": "Open", "waiting_all": "Waiting for a guide",
        "oldest": "Longest wait (min)", "cap": "Cap", "late": "Late", "failed": "Failed",
        "out": "Out now", "rate": "On time", "at_cap": "At cap", "yes": "yes", "no": "no",
        "count": "Guides",
    },
}

ctx = current()
t = ctx.t
w = WORDS.get(ctx.lang, WORDS["en"])
st.header(t["page_guides"])


def guide_rules() -> GuideRules:
    try:
        return load_rules(ctx.settings.rules_file).guides
    except RulesError:  # the worker keeps the last good rules; so does the page
        return Rules().guides


def roster(days: pd.DataFrame, out: pd.DataFrame, now: int, rules: GuideRules) -> pd.DataFrame:
    """One row per guide: the master data's, and any other seen today or out now."""
    master = master_data(ctx.settings)
    hour = local_hour(now)
    rows: dict[str, dict[str, object]] = {}
    for g in master.guides if master is not None else []:
        rows[g.guide_id] = {"guide_id": g.guide_id, "store_id": g.store_id,
                            "daily_cap": g.daily_cap,
                            "on_shift": g.shift_start_hour <= hour < g.shift_end_hour}
    for frame_ in (days, out):
        for guide_id, store_id in zip(frame_["guide_id"], frame_["store_id"], strict=True):
            rows.setdefault(str(guide_id), {"guide_id": str(guide_id), "store_id": str(store_id),
                                            "daily_cap": rules.default_daily_cap,
                                            "on_shift": True})
    cols = ["guide_id", "store_id", "daily_cap", "on_shift"]
    guides = pd.DataFrame(list(rows.values()), columns=cols)
    guides = guides.merge(days.drop(columns=["store_id"]), on="guide_id", how="left")
    guides = guides.merge(out.drop(columns=["store_id"]), on="guide_id", how="left")
    for name in ("delivered", "on_time", "late", "failed", "open"):
        guides[name] = guides[name].fillna(0).astype(int)
    guides["at_cap"] = guides["delivered"] >= guides["daily_cap"]
    guides["on_time_pct"] = [round(100 * o / d, 1) if d else None
                             for o, d in zip(guides["on_time"], guides["delivered"], strict=True)]
    return guides.sort_values(["store_id", "guide_id"]).reset_index(drop=True)


@live(ctx)
def figures() -> None:
    rules = guide_rules()
    with store_guard(ctx):
        now = ctx.q(anchor)
        days = ctx.q(guide_days)
        stores = ctx.q(open_by_store, rules.wait_minutes)
        out = ctx.q(open_by_guide)
    if now is None:
        st.info(w["empty"])
        return
    guides = roster(days, out, now, rules)
    can_take = guides["on_shift"] & ~guides["at_cap"]
    per_store = guides.assign(available=can_take.astype(int)).groupby("store_id").agg(
        guides=("guide_id", "count"), on_shift=("on_shift", "sum"),
        available=("available", "sum"), delivered=("delivered", "sum"),
    ).reset_index().merge(stores.drop(columns=["guides_out"]), on="store_id", how="outer")
    for name in ("guides", "on_shift", "available", "delivered", "open", "waiting",
                 "waiting_over"):
        per_store[name] = per_store[name].fillna(0).astype(int)
    per_store["oldest_wait_min"] = [v if w else None for v, w in zip(
        per_store["oldest_wait_min"], per_store["waiting"], strict=True)]
    per_store = per_store.sort_values(["waiting_over", "waiting", "open", "store_id"],
                                      ascending=[False, False, False, True])
    limit = rules.wait_minutes
    delivered = int(guides["delivered"].sum())
    on_time = int(guides["on_time"].sum())
    cols = st.columns(4)
    cols[0].metric(w["guides"], f"{len(guides):,} ({int(guides['on_shift'].sum()):,})")
    cols[1].metric(w["delivered"], f"{delivered:,}")
    cols[2].metric(w["on_time"], f"{on_time / delivered:.0%}" if delivered else "–")
    cols[3].metric(w["waiting"].format(m=f"{limit:g}"), f"{int(per_store['waiting_over'].sum()):,}")
    st.caption(w["help"].format(cap=rules.default_daily_cap, m=f"{limit:g}"))
    st.subheader(w["stores"])
    show(table(per_store, {
        "store_id": t["store"], "available": w["available"], "on_shift": w["on_shift"],
        "guides": w["count"], "open": w["open"], "waiting": w["waiting_all"],
        "waiting_over": w["waiting"].format(m=f"{limit:g}"),
        "oldest_wait_min": w["oldest"], "delivered": w["delivered"]},
        lang=ctx.lang, tz=ctx.tz))
    st.subheader(w["guide_list"])
    shown = guides.assign(on_shift=[w["yes"] if s else w["no"] for s in guides["on_shift"]],
                          at_cap=[w["yes"] if s else w["no"] for s in guides["at_cap"]])
    show(table(shown, {
        "guide_id": w["guide"], "store_id": t["store"], "delivered": w["delivered"],
        "daily_cap": w["cap"], "at_cap": w["at_cap"], "on_time_pct": w["rate"],
        "late": w["late"], "failed": w["failed"], "open": w["out"], "on_shift": w["on_shift"]},
        lang=ctx.lang, tz=ctx.tz))


figures()
