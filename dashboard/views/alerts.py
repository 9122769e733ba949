"""Alerts: the live feed with evidence, WeChat Work delivery and the operators'
workflow (owner, acknowledge, resolve with a note), times to acknowledge and
to resolve per kind, and routes. ``/alerts?alert_id=...`` (the link in a
WeChat Work message) opens one alert with its history."""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from ctower.dashboard.context import PageContext, current, live, show, store_guard
from ctower.dashboard.labels import code_label
from ctower.dashboard.queries.alerts import (
    alert_feed,
    alert_history,
    alert_sla,
    deliveries,
    route_health,
)
from ctower.dashboard.readable import duration_text, evidence_text, local_time, table
from ctower.dashboard.regions import region_label
from ctower.dashboard.shadow_section import shadow_section

ctx = current()
t = ctx.t
focus = st.query_params.get("alert_id")
st.header(t["page_alerts"])
only_open = st.toggle(t["only_open"], value=True, key="alerts_only_open")


def state_of(row: pd.Series) -> str:
    """The alert's state in the workflow, as a word."""
    if pd.notna(row["closed_by"]):
        code = "closed_by_operator"
    elif row["status"] == "resolved":
        code = "resolved"
    elif pd.notna(row["acked_by"]):
        code = "acked"
    else:
        code = "unacked"
    return code_label("alert_state", code, ctx.lang)


def scope_of(row: pd.Series) -> str:
    parts = []
    if isinstance(row["region"], str) and row["region"]:
        parts.append(region_label(row["region"], ctx.settings, ctx.lang))
    parts += [str(row[c]) for c in ("store_id", "sku", "carrier")
              if isinstance(row[c], str) and row[c]]
    return " · ".join(parts)


def feed_with_delivery(context: PageContext, open_only: bool) -> pd.DataFrame:
    feed = context.q(alert_feed, "open" if open_only else None)
    sent = context.q(deliveries, [str(a) for a in feed["alert_id"]])
    merged = feed.merge(sent[["alert_id", "result", "route", "attempts"]], on="alert_id",
                        how="left")
    merged["delivery"] = [
        f"{code_label('delivery_result', r, ctx.lang)} ({route}, ×{int(n)})"
        if isinstance(r, str) else code_label("delivery_result", "not_sent", ctx.lang)
        for r, route, n in zip(merged["result"], merged["route"], merged["attempts"], strict=True)
    ]
    return merged


def readable_feed(feed: pd.DataFrame) -> pd.DataFrame:
    feed = feed.assign(
        state=[state_of(r) for _, r in feed.iterrows()],
        scope=[scope_of(r) for _, r in feed.iterrows()],
        why=[evidence_text(e, ctx.lang, ctx.tz, k)
             for e, k in zip(feed["evidence"], feed["kind"], strict=True)],
    )
    return table(feed, {
        "opened_at": t["opened_at"], "severity": t["severity"], "kind": t["kind"],
        "state": t["state"], "scope": t["scope"], "why": t["evidence"], "message": t["message"],
        "action": t["action"], "owner": t["owner"], "acked_by": t["acked_by"],
        "acked_at": t["acked_at"], "close_note": t["close_note"], "delivery": t["delivery"],
        "alert_id": t["alert_id"]},
        lang=ctx.lang, tz=ctx.tz, times=["opened_at", "acked_at"],
        codes={"severity": "severity", "kind": "alert_kind"})


@live(ctx)
def focused(alert_id: str) -> None:
    """One alert (the link of a WeChat Work message): what, why, who did what."""
    with store_guard(ctx):
        found = ctx.q(alert_feed, None, 1, None, alert_id)
        if found.empty:
            st.warning(f"{t['alert_not_found']}: {alert_id}")
            return
        row = found.iloc[0]
        with st.container(border=True):
            st.markdown(
                f"**{code_label('severity', row['severity'], ctx.lang)} · "
                f"{code_label('alert_kind', row['kind'], ctx.lang)}** · {scope_of(row)} · "
                f"{state_of(row)}")
            st.write(evidence_text(row["evidence"], ctx.lang, ctx.tz, row["kind"]))
            if isinstance(row["action"], str) and row["action"]:
                st.caption(f"{t['action']}: {row['action']}")
            st.caption(f"{t['opened_at']}: {local_time(row['opened_at'], ctx.tz)} · "
                       f"{t['message']}: {row['message']}")
            history = ctx.q(alert_history, alert_id)
            if not history.empty:
                show(table(history, {"ts": t["when"], "acked_by": t["who"],
                                     "action": t["what"], "owner": t["owner"],
                                     "note": t["note"]},
                           lang=ctx.lang, tz=ctx.tz, times=["ts"],
                           codes={"action": "alert_action"}))


@live(ctx)
def figures() -> None:
    with store_guard(ctx):
        feed = feed_with_delivery(ctx, only_open)
        routes = ctx.q(route_health)
        escalate = ctx.settings.alert_escalate_after_seconds
        sla = ctx.q(alert_sla, max(ctx.minutes, 1440), escalate or 900.0)
        broken = routes[routes["broken"].astype(bool)] if not routes.empty else routes
        cols = st.columns(5)
        open_feed = feed[(feed["status"] == "open") & feed["closed_by"].isna()]
        cols[0].metric(t["open_alerts"], f"{len(open_feed):,}")
        cols[1].metric(t["critical"], f"{int((open_feed['severity'] == 'critical').sum()):,}")
        cols[2].metric(t["unacked"], f"{int(open_feed['acked_by'].isna().sum()):,}")
        cols[3].metric(t["overdue"], f"{int(sla['unacked_open'].sum()) if len(sla) else 0:,}",
                       help=t["overdue_help"].format(after=duration_text(escalate, ctx.lang)))
        cols[4].metric(t["broken_routes"], f"{len(broken):,}")
        if len(broken):
            st.error(f"{t['broken_routes']}: {', '.join(str(r) for r in broken['route'])}")
        if feed.empty:
            st.info(t["empty_alerts"])
        else:
            show(readable_feed(feed))
        st.subheader(t["sla"])
        if sla.empty:
            st.caption(t["none"])
        else:
            shown = sla.assign(**{
                c: [duration_text(v, ctx.lang) for v in sla[c]]
                for c in ("tta_p50_s", "tta_p90_s", "ttr_p50_s", "ttr_p90_s")})
            show(table(shown, {
                "kind": t["kind"], "alerts": t["alerts_count"], "acked": t["acked"],
                "tta_p50_s": t["tta_p50"], "tta_p90_s": t["tta_p90"], "resolved": t["resolved"],
                "ttr_p50_s": t["ttr_p50"], "ttr_p90_s": t["ttr_p90"],
                "unacked_open": t["overdue"]},
                lang=ctx.lang, tz=ctx.tz, codes={"kind": "alert_kind"}))
            st.caption(t["sla_help"])
        if not routes.empty:
            st.subheader(t["routes"])
            shown = routes.assign(broken=[t["yes"] if b else "" for b in routes["broken"]])
            show(table(shown, {
                "route": t["route"], "last_result": t["last_result"], "broken": t["broken"],
                "last_errcode": t["errcode"], "last_attempt_at": t["last_attempt_at"],
                "delivered_1h": t["delivered_1h"], "failed_1h": t["failed_1h"]},
                lang=ctx.lang, tz=ctx.tz, times=["last_attempt_at"],
                codes={"last_result": "delivery_result"}))


def workflow(context: PageContext) -> None:
    """Owner, acknowledge, resolve with a note: an AlertAck record on ct.alert-acks."""
    from ctower.control.alert_acks import publish_ack
    from ctower.schemas.control import AlertAck, AlertAction

    st.subheader(t["workflow"])
    if not context.controls_configured:
        st.info(t["controls_not_configured"])
        return
    if context.operator is None:
        st.info(t["controls_locked"])
        return
    feed = pd.DataFrame()
    with store_guard(context):
        feed = context.q(alert_feed, "open")
    if feed.empty:
        st.caption(t["none"])
        return
    labels = {
        str(a): f"{code_label('severity', s, context.lang)} · "
                f"{code_label('alert_kind', k, context.lang)} · {m} · {a}"
        for a, s, k, m in zip(feed["alert_id"], feed["severity"], feed["kind"], feed["message"],
                              strict=True)
    }
    ids = list(labels)
    if focus in labels and "ack_alert" not in st.session_state:
        st.session_state["ack_alert"] = focus
    alert_id = st.selectbox(t["alert"], ids, format_func=labels.__getitem__, key="ack_alert")
    actions: dict[AlertAction, str] = {
        "ack": t["acknowledge"], "assign": t["assign"], "resolve": t["resolve"],
    }
    action = st.radio(t["what"], list(actions), format_func=actions.__getitem__,
                      horizontal=True, key="ack_action")
    owner = ""
    if action == "assign":
        owner = st.text_input(t["owner"], key="ack_owner", value=context.operator or "")
    note = st.text_input(t["note"] + (f" ({t['required']})" if action == "resolve" else ""),
                         key="ack_note")
    if not st.button(actions[action], key="ack_button", type="primary") or not alert_id:
        return
    if action == "assign" and not owner.strip():
        st.error(t["owner_required"])
        return
    if action == "resolve" and not note.strip():
        st.error(t["note_required"])
        return
    try:
        publish_ack(context.settings, AlertAck(
            alert_id=alert_id, acked_by=context.operator or "", note=note.strip(),
            ts=int(time.time() * 1000), action=action, owner=owner.strip()))
    except Exception as exc:  # Kafka down or refused: say so, keep the page
        st.error(f"{t['ack_failed']}: {exc}")
        return
    st.success(f"{t['done_' + action]}: {alert_id}")


if focus:
    focused(focus)
figures()
shadow_section(ctx)
workflow(ctx)
