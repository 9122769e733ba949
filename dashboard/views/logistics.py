"""Logistics: shipments by status, late and stale ones, on-time per carrier and region."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from ctower.dashboard.context import current, live, show, store_guard
from ctower.dashboard.labels import code_label
from ctower.dashboard.queries.alerts import alert_feed
from ctower.dashboard.queries.logistics import (
    failed_shipments,
    late_shipments,
    on_time_by_carrier_region,
    on_time_rate,
    shipments_by_status,
)
from ctower.dashboard.readable import evidence_text, table
from ctower.dashboard.regions import region_label
from ctower.dashboard.tasks_section import tasks_section

ctx = current()
t = ctx.t
st.header(t["page_logistics"])
SHIPMENT_CODES = {"status": "shipment_status", "origin_type": "origin_type"}


def shipments(frame: pd.DataFrame, extra: dict[str, str]) -> pd.DataFrame:
    frame = frame.assign(region=[region_label(str(r), ctx.settings, ctx.lang) if r else ""
                                 for r in frame["region"]])
    columns = {"shipment_id": t["shipment"], "carrier": t["carrier"], "region": t["region"],
               "origin_type": t["origin_type"], "origin_id": t["origin"],
               "status": t["status"], **extra}
    return table(frame, columns, lang=ctx.lang, tz=ctx.tz, codes=SHIPMENT_CODES,
                 times=["eta", "last_update"])


@live(ctx)
def figures() -> None:
    with store_guard(ctx):
        status = ctx.q(shipments_by_status)
        carriers = ctx.q(on_time_by_carrier_region, ctx.minutes)
        if status.empty and carriers.empty:
            st.info(t["empty_logistics"])
            return
        late = ctx.q(late_shipments)
        failed = ctx.q(failed_shipments)
        stale = ctx.q(alert_feed, "open")
        stale = stale[stale["kind"] == "shipment_stale"]
        rate = ctx.q(on_time_rate, ctx.minutes)
        cols = st.columns(4)
        cols[0].metric(t["on_time_rate"], f"{rate:.1%}" if rate is not None else "–")
        cols[1].metric(t["late_shipments"], f"{len(late):,}")
        cols[2].metric(t["stale_shipments"], f"{len(stale):,}")
        cols[3].metric(t["failed_shipments"], f"{len(failed):,}")
        left, right = st.columns(2)
        if not status.empty:
            status = status.assign(status=[code_label("shipment_status", s, ctx.lang)
                                           for s in status["status"]])
            left.plotly_chart(
                px.bar(status, x="status", y="shipments",
                       labels={"status": t["status"], "shipments": t["shipments"]},
                       title=t["by_status"]),
                width="stretch",
            )
        if not carriers.empty:
            carriers = carriers.assign(region=[region_label(str(r), ctx.settings, ctx.lang)
                                               for r in carriers["region"]])
            right.plotly_chart(
                px.bar(carriers, x="carrier", y="on_time_rate", color="region", barmode="group",
                       labels={"carrier": t["carrier"], "on_time_rate": t["on_time_rate"],
                               "region": t["region"]},
                       title=t["on_time_by_carrier"]),
                width="stretch",
            )
            show(carriers.rename(columns={
                "carrier": t["carrier"], "region": t["region"], "delivered": t["delivered"],
                "on_time": t["on_time"], "late": t["late"],
                "failed_or_returned": t["failed_shipments"], "on_time_rate": t["on_time_rate"]}),
                column_config={t["on_time_rate"]: st.column_config.NumberColumn(
                    format="percent")})
        st.subheader(t["late_shipments"])
        if late.empty:
            st.caption(t["none"])
        else:
            show(shipments(late, {"eta": t["eta"], "last_update": t["last_update"],
                                  "hours_late": t["hours_late"]}))
        st.subheader(t["stale_shipments"])
        if stale.empty:
            st.caption(t["none"])
        else:
            stale = stale.assign(
                why=[evidence_text(e, ctx.lang, ctx.tz, k)
                     for e, k in zip(stale["evidence"], stale["kind"], strict=True)],
                region=[region_label(str(r), ctx.settings, ctx.lang) if r else ""
                        for r in stale["region"]])
            show(table(stale, {"opened_at": t["opened_at"], "severity": t["severity"],
                               "carrier": t["carrier"], "region": t["region"],
                               "why": t["evidence"], "message": t["message"]},
                       lang=ctx.lang, tz=ctx.tz, times=["opened_at"],
                       codes={"severity": "severity"}))
        st.subheader(t["failed_shipments"])
        if failed.empty:
            st.caption(t["none"])
        else:
            show(shipments(failed, {"last_update": t["last_update"]}))


figures()
tasks_section(ctx)
