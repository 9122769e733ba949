"""Alerts: the live feed with evidence and WeChat Work delivery, and acknowledgement."""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from ctower.dashboard.context import PageContext, current, live, store_guard
from ctower.dashboard.queries.alerts import alert_feed, deliveries, route_health

ctx = current()
t = ctx.t
st.header(t["page_alerts"])
only_open = st.toggle(t["only_open"], value=True, key="alerts_only_open")


def feed_with_delivery(context: PageContext, open_only: bool) -> pd.DataFrame:
    client = context.client()
    feed = alert_feed(client, status="open" if open_only else None)
    sent = deliveries(client, [str(a) for a in feed["alert_id"]])
    merged = feed.merge(sent[["alert_id", "result", "route", "attempts"]], on="alert_id",
                        how="left")
    merged["delivery"] = [
        f"{r} ({route}, ×{int(n)})" if isinstance(r, str) else t["not_sent"]
        for r, route, n in zip(merged["result"], merged["route"], merged["attempts"], strict=True)
    ]
    return merged


@live(ctx)
def figures() -> None:
    with store_guard(ctx):
        feed = feed_with_delivery(ctx, only_open)
        routes = route_health(ctx.client())
        broken = routes[routes["broken"].astype(bool)] if not routes.empty else routes
        cols = st.columns(4)
        open_feed = feed[feed["status"] == "open"]
        cols[0].metric(t["open_alerts"], f"{len(open_feed):,}")
        cols[1].metric(t["critical"], f"{int((open_feed['severity'] == 'critical').sum()):,}")
        cols[2].metric(t["unacked"], f"{int(open_feed['acked_by'].isna().sum()):,}")
        cols[3].metric(t["broken_routes"], f"{len(broken):,}")
        if len(broken):
            st.error(f"{t['broken_routes']}: {', '.join(str(r) for r in broken['route'])}")
        if feed.empty:
            st.info(t["empty_alerts"])
        else:
            scope = [
                " ".join(str(v) for v in parts if isinstance(v, str) and v)
                for parts in zip(feed["region"], feed["store_id"], feed["sku"], feed["carrier"],
                                 strict=True)
            ]
            shown = feed.assign(scope=scope)[[
                "raised_at", "severity", "kind", "status", "message", "scope", "action",
                "evidence", "delivery", "acked_by", "acked_at", "alert_id"]]
            st.dataframe(shown.rename(columns={
                "raised_at": t["raised_at"], "severity": t["severity"], "kind": t["kind"],
                "status": t["status"], "message": t["message"], "scope": t["scope"],
                "action": t["action"], "evidence": t["evidence"], "delivery": t["delivery"],
                "acked_by": t["acked_by"], "acked_at": t["acked_at"]}),
                hide_index=True, width="stretch")
        if not routes.empty:
            st.subheader(t["routes"])
            st.dataframe(routes, hide_index=True, width="stretch")


def acknowledge(context: PageContext) -> None:
    from ctower.schemas.control import AlertAck
    from ctower.streams.alert_acks import publish_ack

    st.subheader(t["acknowledge"])
    if not context.controls_configured:
        st.info(t["controls_not_configured"])
        return
    if context.operator is None:
        st.info(t["controls_locked"])
        return
    feed = pd.DataFrame()
    with store_guard(context):
        feed = alert_feed(context.client(), status="open")
    if feed.empty:
        st.caption(t["none"])
        return
    labels = {str(a): f"{s} · {m} · {a}" for a, s, m in
              zip(feed["alert_id"], feed["severity"], feed["message"], strict=True)}
    alert_id = st.selectbox(t["alert"], list(labels), format_func=labels.__getitem__,
                            key="ack_alert")
    note = st.text_input(t["note"], key="ack_note")
    if not st.button(t["acknowledge"], key="ack_button") or not alert_id:
        return
    try:
        publish_ack(context.settings, AlertAck(
            alert_id=alert_id, acked_by=context.operator or "", note=note,
            ts=int(time.time() * 1000)))
    except Exception as exc:  # Kafka down or refused: say so, keep the page
        st.error(f"{t['ack_failed']}: {exc}")
        return
    st.success(f"{t['acked']}: {alert_id}")


figures()
acknowledge(ctx)
