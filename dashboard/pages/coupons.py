"""Coupons: issued against cap, throttled and paused campaigns, and the controls.

The controls write :class:`CouponPolicy` records to Kafka (the workers act on
them within a second; the sink stores them). They are drawn outside the
live fragment so a refresh never resets what an operator is typing, and
only once the operator token from the sidebar matches the configured one.
"""

from __future__ import annotations

import contextlib
import time

import pandas as pd
import streamlit as st

from ctower.dashboard.context import PageContext, current, live, store_guard
from ctower.dashboard.coupon_controls import Action, build_policy
from ctower.dashboard.queries.coupons import (
    campaign_ids,
    caps_in_force,
    held_back,
    issued_by_store,
)
from ctower.schemas.master_data import MasterDataError, load_master_data

ctx = current()
t = ctx.t
st.header(t["page_coupons"])


@live(ctx)
def figures() -> None:
    with store_guard(ctx):
        client = ctx.client()
        caps = caps_in_force(client)
        usage = issued_by_store(client, ctx.minutes)
        held = held_back(client)
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
            st.dataframe(shown.rename(columns={
                "campaign_id": t["campaign"], "store_id": t["store"], "cap_per_window": t["cap"],
                "window_seconds": t["window_seconds"], "per_member_limit": t["per_member_limit"],
                "paused": t["paused"], "set_by": t["set_by"], "set_at": t["set_at"],
                "issued": t["issued_in_window"], "usage": t["usage"]}),
                hide_index=True, width="stretch")
        st.subheader(t["held_back"])
        if held.empty:
            st.caption(t["none"])
        else:
            st.dataframe(held.rename(columns={
                "campaign_id": t["campaign"], "store_id": t["store"], "state": t["state"],
                "reason": t["reason"], "evidence": t["evidence"],
                "decided_at": t["decided_at"]}), hide_index=True, width="stretch")
        st.subheader(t["issued_by_store"])
        st.dataframe(usage.rename(columns={
            "campaign_id": t["campaign"], "store_id": t["store"], "issued": t["coupons_issued"],
            "claimed": t["claimed"], "redeemed": t["redeemed"], "state": t["state"],
            "reason": t["reason"]}), hide_index=True, width="stretch")


def known_campaigns(context: PageContext) -> list[str]:
    found: set[str] = set()
    path = context.settings.master_data_file
    if path is not None:
        with contextlib.suppress(MasterDataError):  # the controls work without it
            found.update(c.campaign_id for c in load_master_data(path).campaigns)
    with store_guard(context):
        found.update(campaign_ids(context.client()))
    return sorted(found)


def policy_in_force(context: PageContext, campaign: str, store: str) -> dict | None:
    caps = caps_in_force(context.client())
    match = caps[(caps["campaign_id"] == campaign) & (caps["store_id"] == store)]
    if match.empty:
        return None
    record = match.iloc[0].to_dict()
    return {k: (None if pd.isna(v) else v) for k, v in record.items()}


def controls(context: PageContext) -> None:
    from ctower.streams.coupon_policy import publish_policy

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


figures()
controls(ctx)
