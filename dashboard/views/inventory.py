"""Inventory: the stock-risk list (cover, velocity, where to transfer from)."""

from __future__ import annotations

import streamlit as st

from ctower.dashboard.context import current, live, show, store_guard
from ctower.dashboard.orders_section import orders_section
from ctower.dashboard.queries.inventory import stock_risk, stock_summary
from ctower.dashboard.readable import table
from ctower.dashboard.regions import region_label

ctx = current()
t = ctx.t
st.header(t["page_inventory"])
cover_hours = st.number_input(
    t["cover_below"], min_value=0.5, max_value=168.0, value=4.0, step=0.5, key="cover_hours"
)


@live(ctx)
def figures() -> None:
    with store_guard(ctx):
        summary = ctx.q(stock_summary, float(cover_hours))
        if summary is None:
            st.info(t["empty_stock"])
            return
        cols = st.columns(3)
        cols[0].metric(t["tracked"], f"{summary.tracked:,}")
        cols[1].metric(t["out_of_stock"], f"{summary.out_of_stock:,}")
        cols[2].metric(t["short_of_cover"], f"{summary.short:,}")
        risk = ctx.q(stock_risk, float(cover_hours))
        if risk.empty:
            st.success(t["no_stock_risk"])
            return
        risk["region"] = [region_label(str(r), ctx.settings, ctx.lang) if r else ""
                          for r in risk["region"]]
        st.caption(t["cover_help"])
        show(table(risk, {
            "location_id": t["location"], "sku": "SKU", "region": t["region"],
            "on_hand": t["on_hand"], "velocity_per_h": t["velocity"], "cover_h": t["cover_h"],
            "transfer_from": t["transfer_from"], "ts": t["updated"]},
            lang=ctx.lang, tz=ctx.tz, times=["ts"]),
            column_config={t["velocity"]: st.column_config.NumberColumn(format="%.1f"),
                           t["cover_h"]: st.column_config.NumberColumn(format="%.1f")})


figures()
orders_section(ctx)
