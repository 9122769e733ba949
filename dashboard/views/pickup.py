"""Pickup: queues and waits per store, from the rules' live levels."""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from ctower.dashboard.context import current, live, show, store_guard
from ctower.dashboard.queries.pickup import pickup_now, pickup_trend
from ctower.dashboard.readable import local_axis, table
from ctower.dashboard.regions import region_label

ctx = current()
t = ctx.t
st.header(t["page_pickup"])
TREND_STORES = 8


@live(ctx)
def figures() -> None:
    with store_guard(ctx):
        levels = ctx.q(pickup_now)
        if levels.empty:
            st.info(t["empty_pickup"])
            return
        cols = st.columns(4)
        cols[0].metric(t["waiting"], f"{int(levels['waiting'].sum()):,}")
        over = int((levels["waiting"] > levels["capacity"]).sum())
        cols[1].metric(t["over_capacity"], f"{over:,}")
        cols[2].metric(t["max_pressure"], f"{float(levels['pressure'].max()):.2f}")
        worst = levels["p90_wait_s"].dropna()
        cols[3].metric(t["worst_p90"], f"{float(worst.max()) / 60:.1f} {t['min_unit']}"
                       if len(worst) else "–")
        levels = levels.assign(region=[region_label(str(r), ctx.settings, ctx.lang) if r else ""
                                       for r in levels["region"]])
        show(table(levels, {
            "store_id": t["store"], "region": t["region"], "waiting": t["waiting"],
            "capacity": t["capacity"], "pressure": t["pressure"],
            "p90_wait_s": t["p90_wait_s"], "arrivals_15m": t["arrivals_15m"],
            "served_15m": t["served_15m"], "level_at": t["updated"]},
            lang=ctx.lang, tz=ctx.tz, times=["level_at"]),
            column_config={t["pressure"]: st.column_config.NumberColumn(format="%.2f"),
                           t["p90_wait_s"]: st.column_config.NumberColumn(format="%.0f")})
        busiest = [str(s) for s in levels["store_id"].head(TREND_STORES)]
        trend = ctx.q(pickup_trend, ctx.minutes, busiest)
        if not trend.empty:
            trend["minute"] = local_axis(trend["minute"], ctx.tz)
            st.subheader(t["waiting_trend"])
            st.plotly_chart(
                px.line(trend, x="minute", y="waiting", color="store_id",
                        labels={"minute": f"{t['minute']} ({ctx.tz})", "waiting": t["waiting"],
                                "store_id": t["store"]}),
                width="stretch",
            )


figures()
