"""Overview: the headline figures of the whole chain, per minute and per region."""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from ctower.dashboard.context import current, live, show, store_guard
from ctower.dashboard.queries.alerts import open_alert_count
from ctower.dashboard.queries.logistics import on_time_rate
from ctower.dashboard.queries.pickup import pickup_now
from ctower.dashboard.queries.sales import minute_trend, sales_pulse, store_sales
from ctower.dashboard.readable import local_axis
from ctower.dashboard.regions import region_label, store_regions, with_region

ctx = current()
t = ctx.t
st.header(t["page_overview"])


@live(ctx)
def figures() -> None:
    with store_guard(ctx):
        pulse = ctx.q(sales_pulse, ctx.minutes)
        if pulse.minutes == 0:
            st.info(t["empty"])
            return
        pickup = ctx.q(pickup_now)
        on_time = ctx.q(on_time_rate, ctx.minutes)
        alerts = ctx.q(open_alert_count)
        top = st.columns(4)
        top[0].metric(t["gmv"], f"¥{pulse.gmv_yuan:,.0f}")
        top[1].metric(t["paid_orders"], f"{pulse.paid_orders:,}")
        top[2].metric(t["scans"], f"{pulse.scans:,}")
        conversion = pulse.conversion
        top[3].metric(t["conversion"], f"{conversion:.1%}" if conversion is not None else "–")
        second = st.columns(4)
        second[0].metric(t["waiting"], f"{int(pickup['waiting'].sum()):,}" if len(pickup) else "–")
        second[1].metric(t["on_time_rate"], f"{on_time:.1%}" if on_time is not None else "–")
        second[2].metric(t["open_alerts"], f"{alerts:,}")
        second[3].metric(t["pickups_served"], f"{pulse.pickups_served:,}")

        trend = ctx.q(minute_trend, ctx.minutes).rename(
            columns={"scans": t["scans"], "orders": t["orders"], "paid_orders": t["paid_orders"]}
        )
        if not trend.empty:
            trend["minute"] = local_axis(trend["minute"], ctx.tz)
        figure = px.line(trend, x="minute", y=[t["scans"], t["orders"], t["paid_orders"]],
                         labels={"value": "", "minute": f"{t['minute']} ({ctx.tz})",
                                 "variable": ""})
        st.plotly_chart(figure, width="stretch")

        st.subheader(t["by_region"])
        sales = with_region(ctx.q(store_sales, ctx.minutes),
                            store_regions(ctx.settings, pickup), t["unknown_region"])
        regions = (
            sales.groupby("region", as_index=False)[["gmv_yuan", "paid_orders", "scans"]].sum()
            .sort_values("gmv_yuan", ascending=False)
        )
        regions["region"] = [region_label(r, ctx.settings, ctx.lang) for r in regions["region"]]
        left, right = st.columns(2)
        left.plotly_chart(
            px.bar(regions, x="region", y="gmv_yuan",
                   labels={"region": t["region"], "gmv_yuan": t["gmv"]}),
            width="stretch",
        )
        with right:
            show(regions.rename(columns={"region": t["region"], "gmv_yuan": t["gmv"],
                                         "paid_orders": t["paid_orders"], "scans": t["scans"]}),
                 column_config={t["gmv"]: st.column_config.NumberColumn(format="¥%.2f")})


figures()
