"""Coupons: issued against cap, throttled and paused campaigns, and the controls.

The controls write :class:`CouponPolicy` records to Kafka (the workers act on
them within a second; the sink stores them). They are drawn outside the
live fragment so a refresh never resets what an operator is typing, and
only once the operator token from the sidebar matches the configured one.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from ctower.dashboard.context import PageContext, current, live, show, store_guard
from ctower.dashboard.coupon_controls import Action, build_policy
from ctower.dashboard.labels import code_label
from ctower.dashboard.live_sources import coupon_answers, ledger_window
from ctower.dashboard.queries.coupons import (
    campaign_ids,
    campaign_minutes,
    caps_in_force,
    held_back,
    issued_by_store,
    policy_history,
)
from ctower.dashboard.readable import evidence_text, local_axis, local_time, table
from ctower.schemas.master_data import MasterDataError, load_master_data

ctx = current()
t = ctx.t
st.header(t["page_coupons"])


@live(ctx)
def figures() -> None:
    with store_guard(ctx):
        caps = ctx.q(caps_in_force)
        usage = ctx.q(issued_by_store, ctx.minutes)
        held = ctx.q(held_back)
        if caps.empty and usage.empty and held.empty:
            st.info(t["empty_coupons"])
            return
        cols = st.columns(3)
        cols[0].metric(t["coupons_issued"], f"{int(usage['issued'].sum()):,}")
        cols[1].metric(t["throttled"], f"{int((held['state'] == 'throttled').sum()):,}")
        cols[2].metric(t["paused"], f"{int((held['state'] == 'paused').sum()):,}")
        st.subheader(t["caps_in_force"])
        if caps.empty:
            st.caption(t["no_caps"])
        else:
            shown = caps.copy()
            shown["store_id"] = shown["store_id"].replace("", t["all_stores"])
            shown["usage"] = shown["issued"] / shown["cap_per_window"].where(
                shown["cap_per_window"] > 0)
            shown["paused"] = [t["yes"] if bool(p) else "" for p in shown["paused"]]
            show(table(shown, {
                "campaign_id": t["campaign"], "store_id": t["store"], "cap_per_window": t["cap"],
                "window_seconds": t["window_seconds"], "issued": t["issued_in_window"],
                "usage": t["usage"], "per_member_limit": t["per_member_limit"],
                "paused": t["paused"], "set_by": t["set_by"], "set_at": t["set_at"]},
                lang=ctx.lang, tz=ctx.tz, times=["set_at"]),
                column_config={t["usage"]: st.column_config.ProgressColumn(
                    format="percent", min_value=0.0, max_value=1.0)})
        st.subheader(t["held_back"])
        if held.empty:
            st.caption(t["none"])
        else:
            held = held.assign(why=[evidence_text(e, ctx.lang, ctx.tz, r) for e, r in
                                    zip(held["evidence"], held["reason"], strict=True)])
            show(table(held, {
                "campaign_id": t["campaign"], "store_id": t["store"], "state": t["state"],
                "reason": t["reason"], "why": t["evidence"], "decided_at": t["decided_at"]},
                lang=ctx.lang, tz=ctx.tz, times=["decided_at"],
                codes={"state": "coupon_state", "reason": "coupon_reason"}))
        st.subheader(t["issued_by_store"])
        show(table(usage, {
            "campaign_id": t["campaign"], "store_id": t["store"], "issued": t["coupons_issued"],
            "claimed": t["claimed"], "redeemed": t["redeemed"], "state": t["state"],
            "reason": t["reason"]}, lang=ctx.lang, tz=ctx.tz,
            codes={"state": "coupon_state", "reason": "coupon_reason"}))


def known_campaigns(context: PageContext) -> list[str]:
    found: set[str] = set()
    path = context.settings.master_data_file
    if path is not None:
        with contextlib.suppress(MasterDataError):  # the controls work without it
            found.update(c.campaign_id for c in load_master_data(path).campaigns)
    with store_guard(context):
        found.update(campaign_ids(context.client()))
    return sorted(found)


def policy_in_force(context: PageContext, campaign: str, store: str) -> dict[str, Any] | None:
    caps = caps_in_force(context.client())
    match = caps[(caps["campaign_id"] == campaign) & (caps["store_id"] == store)]
    if match.empty:
        return None
    record = match.iloc[0].to_dict()
    return {k: (None if pd.isna(v) else v) for k, v in record.items()}


def controls(context: PageContext) -> None:
    from ctower.coupons.policy import publish_policy

    st.subheader(t["controls"])
    if not context.controls_configured:
        st.info(t["controls_not_configured"])
        return
    if context.operator is None:
        st.info(t["controls_locked"])
        return
    campaigns = known_campaigns(context)
    if campaigns:
        campaign = st.selectbox(t["campaign"], campaigns, key="coupon_campaign")
    else:
        campaign = st.text_input(t["campaign"], key="coupon_campaign_id")
    store = st.text_input(t["store_scope"], key="coupon_store", help=t["store_scope_help"])
    cols = st.columns(3)
    cap = cols[0].number_input(t["cap"], min_value=0, value=100, step=10, key="coupon_cap")
    window = cols[1].number_input(t["window_seconds"], min_value=1, value=3600, step=60,
                                  key="coupon_window")
    per_member = cols[2].number_input(t["per_member_limit"], min_value=0, value=0,
                                      key="coupon_per_member", help=t["zero_is_none"])
    no_cap = st.checkbox(t["no_cap"], key="coupon_no_cap")
    buttons = st.columns(3)
    action: Action | None = None
    if buttons[0].button(t["set_cap"], key="coupon_set_cap"):
        action = "set_cap"
    if buttons[1].button(t["pause"], key="coupon_pause"):
        action = "pause"
    if buttons[2].button(t["resume"], key="coupon_resume"):
        action = "resume"
    if action is None or not campaign:
        return
    scope = (store or "").strip()
    try:
        policy = build_policy(
            action, campaign_id=str(campaign), store_id=scope, cap=None if no_cap else int(cap),
            window_seconds=int(window), per_member_limit=int(per_member) or None,
            in_force=policy_in_force(context, str(campaign), scope),
            operator=context.operator or "",
            now_ms=int(time.time() * 1000),
        )
        publish_policy(context.settings, policy)
    except Exception as exc:  # a refused policy or Kafka down: say so, keep the page
        st.error(f"{t['policy_failed']}: {exc}")
        return
    st.success(
        f"{t['policy_written']}: {policy.campaign_id} / {policy.store_id or t['all_stores']} "
        f"({t[action]})"
    )
    st.session_state[EFFECT_KEY] = f"{policy.campaign_id}|{policy.store_id or ''}"
    st.session_state[EFFECT_PENDING] = True  # show its effect as soon as the store has it


EFFECT_KEY = "coupon_effect"
EFFECT_PENDING = "coupon_effect_pending"
PICK_KEY = "coupon_effect_pick"


def effect_choices(context: PageContext) -> list[str]:
    """'campaign|store' of every policy in force, the newest first."""
    caps = pd.DataFrame()
    with store_guard(context):
        caps = context.q(caps_in_force)
    if caps.empty:
        return []
    caps = caps.sort_values("set_at", ascending=False)
    return [f"{c}|{s}" for c, s in zip(caps["campaign_id"], caps["store_id"], strict=True)]


def effect_label(choice: str) -> str:
    campaign, _, store = choice.partition("|")
    return f"{campaign} / {store or t['all_stores']}"


@live(ctx)
def effect(choice: str) -> None:
    """Coupons per minute against the cap, and the ledger's answers per minute."""
    campaign, _, store = choice.partition("|")
    with store_guard(ctx):
        minutes = ctx.q(campaign_minutes, campaign, store, max(ctx.minutes, 60))
        history = ctx.q(policy_history, campaign, store)
        caps = ctx.q(caps_in_force)
    now = caps[(caps["campaign_id"] == campaign) & (caps["store_id"] == store)]
    ledger = ledger_window(ctx.settings, campaign, store)
    cols = st.columns(5)
    if not now.empty:
        row = now.iloc[0]
        cap, window = row["cap_per_window"], int(row["window_seconds"])
        cols[0].metric(t["cap"], f"{int(cap):,}" if pd.notna(cap) else t["no_cap"],
                       help=f"{t['window_seconds']}: {window:,}")
        cols[1].metric(t["issued_in_window"], f"{int(row['issued']):,}",
                       help=t["issued_in_window_help"])
    if ledger is not None:
        cols[2].metric(t["ledger_count"], f"{ledger.count:,}", help=t["ledger_count_help"])
        cols[3].metric(t["remaining"], f"{ledger.remaining:,}"
                       if ledger.remaining is not None else t["no_cap"],
                       help=f"{t['window_ends']}: {local_time(ledger.window_end_ms, ctx.tz)}")
        cols[4].metric(t["state"], code_label("coupon_state", ledger.state, ctx.lang))
    elif not now.empty:
        cols[4].metric(t["state"], t["paused"] if bool(now.iloc[0]["paused"]) else t["running"])
    figure = go.Figure()
    if not minutes.empty:
        x = local_axis(minutes["minute"], ctx.tz)
        figure.add_bar(x=x, y=minutes["issued"], name=t["issued_per_minute"])
    if not history.empty:
        steps_x, steps_y = [], []
        for _, policy in history.iterrows():
            cap = policy["cap_per_window"]
            pace = float(cap) / max(float(policy["window_seconds"]) / 60, 1.0) \
                if pd.notna(cap) and not bool(policy["paused"]) else (0.0 if bool(
                    policy["paused"]) else None)
            steps_x.append(local_axis(pd.Series([policy["set_at"]]), ctx.tz).iloc[0])
            steps_y.append(pace)
        if not minutes.empty:
            steps_x.append(local_axis(minutes["minute"], ctx.tz).iloc[-1])
            steps_y.append(steps_y[-1])
        figure.add_scatter(x=steps_x, y=steps_y, mode="lines", line_shape="hv",
                           name=t["cap_pace"], line={"dash": "dash", "color": "#c9302c"})
    figure.update_layout(title=t["effect_issued"], xaxis_title=f"{t['minute']} ({ctx.tz})",
                         yaxis_title=t["per_minute"], height=320, legend={"orientation": "h"})
    st.plotly_chart(figure, width="stretch")
    if not history.empty:
        changes = history.assign(set_at=[local_time(v, ctx.tz) for v in history["set_at"]])
        changes["paused"] = [t["yes"] if bool(p) else "" for p in changes["paused"]]
        with st.expander(t["policy_changes"]):
            show(changes.rename(columns={
                "cap_per_window": t["cap"], "window_seconds": t["window_seconds"],
                "per_member_limit": t["per_member_limit"], "paused": t["paused"],
                "set_by": t["set_by"], "set_at": t["set_at"]}))
    answers = coupon_answers(ctx.settings)
    st.markdown(f"**{t['effect_answers']}**")
    if answers.error is not None:
        st.caption(f"{t['worker_unreachable']}: {answers.error}")
    elif answers.per_minute.empty:
        st.caption(t["no_answers_yet"])
    else:
        per_minute = answers.per_minute.assign(  # minutes as words: a category axis
            minute=local_axis(answers.per_minute["minute"], ctx.tz).dt.strftime("%H:%M"),
            answer=[code_label("reservation", a, ctx.lang) for a in answers.per_minute["answer"]])
        granted = code_label("reservation", "granted", ctx.lang)
        refusals = ["#c9302c", "#ec971f", "#d4b106", "#8e44ad", "#7f8c8d", "#e67e22", "#34495e"]
        bars = []
        for n, (name, g) in enumerate(sorted(per_minute.groupby("answer"),
                                             key=lambda item: item[0] != granted)):
            colour = "#5cb85c" if name == granted else refusals[(n - 1) % len(refusals)]
            bars.append(go.Bar(x=g["minute"], y=g["count"], name=name,
                               marker_color=colour))
        st.plotly_chart(
            go.Figure(bars).update_layout(
                barmode="stack", height=280, yaxis_title=t["per_minute"], xaxis_type="category",
                xaxis_title=f"{t['minute']} ({ctx.tz})", legend={"orientation": "h"}),
            width="stretch")
    st.caption(t["effect_help"])


figures()
controls(ctx)
st.subheader(t["effect"])
choices = effect_choices(ctx)
wanted = st.session_state.get(EFFECT_KEY)
if st.session_state.get(EFFECT_PENDING) and wanted in choices:
    st.session_state[PICK_KEY] = wanted  # the policy just written, now in the store
    st.session_state[EFFECT_PENDING] = False
if st.session_state.get(PICK_KEY) not in choices:
    st.session_state.pop(PICK_KEY, None)
picked = st.selectbox(t["effect_of"], choices, format_func=effect_label, key=PICK_KEY) \
    if choices else None
if st.session_state.get(EFFECT_PENDING) and wanted:
    effect(str(wanted))  # written a moment ago: the store may not have it yet
elif picked:
    effect(str(picked))
else:
    st.caption(t["no_caps"])
