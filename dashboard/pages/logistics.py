"""Logistics: shipments by status, late and stale ones, on-time per carrier and region."""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from ctower.dashboard.context import current, live, store_guard
from ctower.dashboard.queries.alerts import alert_feed
from ctower.dashboard.queries.logistics import (
    failed_shipments,
    late_shipments,
    on_time_by_carrier_region,
    on_time_rate,
    shipments_by_status,
)

ctx = current()
t = ctx.t
st.header(t["page_logistics"])


@live(ctx)
def figures() -> None:
    with store_guard(ctx):
        client = ctx.client()
        status = shipments_by_status(client)
        carriers = on_time_by_carrier_region(client, ctx.minutes)
        if status.empty and carriers.empty:
            st.info(t["empty_logistics"])
            return
        late = late_shipments(client)
        failed = failed_shipments(client)
        stale = alert_feed(client, status="open")
        stale = stale[stale["kind"] == "shipment_stale"]
        rate = on_time_rate(client, ctx.minutes)
        cols = st.columns(4)
        cols[0].metric(t["on_time_rate"], f"{rate:.1%}" if rate is not None else "–")
        cols[1].metric(t["late_shipments"], f"{len(late):,}")
        cols[2].metric(t["stale_shipments"], f"{len(stale):,}")
        cols[3].metric(t["failed_shipments"], f"{len(failed):,}")
        left, right = st.columns(2)
        if not status.empty:
            left.plotly_chart(
                px.bar(status, x="status", y="shipments",
                       labels={"status": t["status"], "shipments": t["shipments"]},
                       title=t["by_status"]),
                width="stretch",
            )
        if not carriers.empty:
            right.plotly_chart(
                px.bar(carriers, x="carrier", y="on_time_rate", color="region", barmode="group",
                       labels={"carrier": t["carrier"], "on_time_rate": t["on_time_rate"],
                               "region": t["region"]},
                       title=t["on_time_by_carrier"]),
                width="stretch",
            )
            st.dataframe(carriers.rename(columns={
                "carrier": t["carrier"], "region": t["region"], "delivered": t["delivered"],
                "on_time": t["on_time"], "late": t["late"],
                "failed_or_returned": t["failed_shipments"], "on_time_rate": t["on_time_rate"]}),
                hide_index=True, width="stretch")
        st.subheader(t["late_shipments"])
        if late.empty:
            st.caption(t["none"])
        else:
            st.dataframe(late, hide_index=True, width="stretch")
        st.subheader(t["stale_shipments"])
        if stale.empty:
            st.caption(t["none"])
        else:
            st.dataframe(stale[["raised_at", "severity", "message", "carrier", "region",
                                "evidence"]], hide_index=True, width="stretch")
        st.subheader(t["failed_shipments"])
        if failed.empty:
            st.caption(t["none"])
        else:
            st.dataframe(failed, hide_index=True, width="stretch")


figures()
