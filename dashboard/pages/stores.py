"""Stores: from a region down to one store, with sales and pickup pressure."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from ctower.dashboard.context import current, live, store_guard
from ctower.dashboard.queries.pickup import pickup_now
from ctower.dashboard.queries.sales import store_minute_trend, store_sales
from ctower.dashboard.regions import store_regions, with_region

ctx = current()
t = ctx.t
st.header(t["page_stores"])


def store_table(sales: pd.DataFrame, pickup: pd.DataFrame) -> pd.DataFrame:
    """Sales per store beside its latest pickup level (stores without one keep NaN)."""
    levels = pickup[["store_id", "waiting", "capacity", "pressure", "p90_wait_s"]]
    table = sales.merge(levels, on="store_id", how="left")
    table["conversion"] = (table["paid_orders"] / table["scans"].where(table["scans"] > 0))
    return table


@live(ctx)
def figures() -> None:
    with store_guard(ctx):
        client = ctx.client()
        pickup = pickup_now(client)
        sales = store_sales(client, ctx.minutes)
        if sales.empty:
            st.info(t["empty"])
            return
        table = with_region(store_table(sales, pickup), store_regions(ctx.settings, pickup),
                            t["unknown_region"])
        regions = table.groupby("region", as_index=False).agg(
            stores=("store_id", "count"), gmv_yuan=("gmv_yuan", "sum"),
            paid_orders=("paid_orders", "sum"), scans=("scans", "sum"),
            waiting=("waiting", "sum"), max_pressure=("pressure", "max"),
        ).sort_values("gmv_yuan", ascending=False)
        st.subheader(t["regions"])
        st.dataframe(
            regions.rename(columns={
                "region": t["region"], "stores": t["stores"], "gmv_yuan": t["gmv"],
                "paid_orders": t["paid_orders"], "scans": t["scans"], "waiting": t["waiting"],
                "max_pressure": t["max_pressure"]}),
            hide_index=True, width="stretch",
        )
        region = st.selectbox(t["pick_region"], list(regions["region"]), key="stores_region")
        in_region = table[table["region"] == region].sort_values("gmv_yuan", ascending=False)
        st.subheader(f"{t['stores_in']} {region}")
        st.dataframe(
            in_region[["store_id", "gmv_yuan", "paid_orders", "scans", "conversion", "waiting",
                       "capacity", "pressure", "p90_wait_s"]].rename(columns={
                "store_id": t["store"], "gmv_yuan": t["gmv"], "paid_orders": t["paid_orders"],
                "scans": t["scans"], "conversion": t["conversion"], "waiting": t["waiting"],
                "capacity": t["capacity"], "pressure": t["pressure"],
                "p90_wait_s": t["p90_wait_s"]}),
            hide_index=True, width="stretch",
        )
        store = st.selectbox(t["pick_store"], list(in_region["store_id"]), key="stores_store")
        if store:
            trend = store_minute_trend(client, ctx.minutes, store).rename(
                columns={"scans": t["scans"], "paid_orders": t["paid_orders"],
                         "pickup_arrivals": t["pickup_arrivals"]})
            st.plotly_chart(
                px.line(trend, x="minute", y=[t["scans"], t["paid_orders"], t["pickup_arrivals"]],
                        labels={"value": "", "minute": t["minute"], "variable": ""},
                        title=f"{t['store']} {store}"),
                width="stretch",
            )


figures()
