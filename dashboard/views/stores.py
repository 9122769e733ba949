"""Stores: the board (every store a tile, grouped by region, coloured by its worst
open condition) and, on a click, one store's drill-down (``/stores?store=S001``,
a link that works on its own)."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from ctower.dashboard.board import LEVEL_BORDERS, LEVEL_COLOURS, LEVEL_ICONS, board
from ctower.dashboard.context import current, live, show, store_guard
from ctower.dashboard.labels import code_label
from ctower.dashboard.queries.board import (
    store_alerts,
    store_conditions,
    store_coupons,
    store_stock_risk,
)
from ctower.dashboard.queries.pickup import pickup_now
from ctower.dashboard.queries.sales import store_minute_trend, store_sales
from ctower.dashboard.readable import evidence_text, local_axis, table
from ctower.dashboard.regions import region_label, store_city, store_regions, with_region

ctx = current()
t = ctx.t
TILES_PER_ROW = 6

# Tile colours: a tile is a button inside a container keyed tile<level>_<store>.
st.html("<style>" + "".join(
    f'[class*="st-key-tile{level}_"] button {{background:{LEVEL_COLOURS[level]};'
    f"border:1px solid {LEVEL_BORDERS[level]};color:#222;justify-content:flex-start;}}"
    for level in LEVEL_COLOURS
) + "</style>")


def store_table(sales: pd.DataFrame, pickup: pd.DataFrame) -> pd.DataFrame:
    """Sales per store beside its latest pickup level (stores without one keep NaN)."""
    levels = pickup[["store_id", "waiting", "capacity", "pressure", "p90_wait_s"]]
    table_ = sales.merge(levels, on="store_id", how="left")
    table_["conversion"] = (table_["paid_orders"] / table_["scans"].where(table_["scans"] > 0))
    return table_


def open_store(store_id: str) -> None:
    st.query_params["store"] = store_id
    st.query_params["lang"] = ctx.lang


def close_store() -> None:
    st.query_params.pop("store", None)


@live(ctx)
def store_board() -> None:
    with store_guard(ctx):
        pickup = ctx.q(pickup_now)
        sales = ctx.q(store_sales, ctx.minutes)
        conditions = ctx.q(store_conditions)
        regions = store_regions(ctx.settings, pickup)
        stores = set(regions) | {str(s) for s in sales["store_id"]} | \
            {str(s) for s in pickup["store_id"]}
        if not stores:
            st.info(t["empty"])
            return
        tiles = board(stores, regions, pickup, conditions, t["unknown_region"])
        cities = store_city(ctx.settings, ctx.lang)
        gmv = dict(zip(sales["store_id"].astype(str), sales["gmv_yuan"], strict=True))
        counts = tiles["level"].value_counts()
        top = st.columns(4)
        for column, level in zip(top, (3, 2, 1, 0), strict=True):
            column.metric(f"{LEVEL_ICONS[level]} {t[f'level_{level}']}",
                          f"{int(counts.get(level, 0)):,}")
        st.caption(t["board_help"])
        worst_of = tiles.groupby("region")["level"].max().to_dict()
        for region in sorted(tiles["region"].unique(),  # the worst first, then by name
                             key=lambda r: (r == t["unknown_region"], -worst_of[r], str(r))):
            in_region = tiles[tiles["region"] == region].sort_values(
                ["level", "store_id"], ascending=[False, True])
            region_gmv = sum(float(gmv.get(s, 0.0)) for s in in_region["store_id"])
            worst = int(in_region["level"].max())
            st.markdown(
                f"**{LEVEL_ICONS[worst]} {region_label(str(region), ctx.settings, ctx.lang)}** · "
                f"{len(in_region)} {t['stores_unit']} · {t['gmv']} ¥{region_gmv:,.0f}")
            rows = [in_region.iloc[i:i + TILES_PER_ROW]
                    for i in range(0, len(in_region), TILES_PER_ROW)]
            for chunk in rows:
                columns = st.columns(TILES_PER_ROW)
                for column, (_, tile) in zip(columns, chunk.iterrows(), strict=False):
                    store = str(tile["store_id"])
                    words = code_label("condition", tile["condition"], ctx.lang)
                    label = f"**{store}** {cities.get(store, '')} · {words} {tile['value']}"
                    with column.container(key=f"tile{int(tile['level'])}_{store}"):
                        if st.button(label.strip(), key=f"open_{store}", width="stretch",
                                     help=t["open_store"]):
                            open_store(store)
                            st.rerun()


@live(ctx)
def drill_down(store: str) -> None:
    with store_guard(ctx):
        pickup = ctx.q(pickup_now)
        sales = ctx.q(store_sales, ctx.minutes)
        regions = store_regions(ctx.settings, pickup)
        mine = with_region(store_table(sales, pickup), regions, t["unknown_region"])
        mine = mine[mine["store_id"].astype(str) == store]
        level = pickup[pickup["store_id"].astype(str) == store]
        cols = st.columns(4)
        if not mine.empty:
            row = mine.iloc[0]
            cols[0].metric(t["gmv"], f"¥{float(row['gmv_yuan']):,.0f}")
            cols[1].metric(t["paid_orders"], f"{int(row['paid_orders']):,}")
            cols[2].metric(t["scans"], f"{int(row['scans']):,}")
            conversion = row["conversion"]
            cols[3].metric(t["conversion"],
                           f"{conversion:.1%}" if pd.notna(conversion) else "–")
        if not level.empty:
            row = level.iloc[0]
            second = st.columns(4)
            second[0].metric(t["waiting"], f"{int(row['waiting']):,}")
            second[1].metric(t["capacity"], f"{int(row['capacity']):,}")
            second[2].metric(t["pressure"], f"{float(row['pressure']):.2f}")
            p90 = row["p90_wait_s"]
            second[3].metric(t["p90_wait_s"], f"{float(p90):.0f}" if pd.notna(p90) else "–")
        trend = ctx.q(store_minute_trend, ctx.minutes, store)
        if not trend.empty:
            trend["minute"] = local_axis(trend["minute"], ctx.tz)
            trend = trend.rename(columns={"scans": t["scans"], "paid_orders": t["paid_orders"],
                                          "pickup_arrivals": t["pickup_arrivals"]})
            st.plotly_chart(
                px.line(trend, x="minute", y=[t["scans"], t["paid_orders"], t["pickup_arrivals"]],
                        labels={"value": "", "minute": f"{t['minute']} ({ctx.tz})",
                                "variable": ""}),
                width="stretch",
            )
        elif mine.empty:
            st.info(t["empty"])
        st.subheader(t["open_alerts"])
        alerts = ctx.q(store_alerts, store)
        if alerts.empty:
            st.caption(t["none"])
        else:
            alerts["why"] = [evidence_text(e, ctx.lang, ctx.tz, k)
                             for e, k in zip(alerts["evidence"], alerts["kind"], strict=True)]
            show(table(alerts, {"opened_at": t["opened_at"], "severity": t["severity"],
                                "kind": t["kind"], "sku": "SKU", "why": t["evidence"],
                                "message": t["message"]},
                       lang=ctx.lang, tz=ctx.tz, times=["opened_at"],
                       codes={"severity": "severity", "kind": "alert_kind"}))
        st.subheader(t["stock_at_store"])
        risk = ctx.q(store_stock_risk, store)
        if risk.empty:
            st.caption(t["no_stock_risk"])
        else:
            show(table(risk, {"sku": "SKU", "on_hand": t["on_hand"],
                              "velocity_per_h": t["velocity"], "cover_h": t["cover_h"],
                              "transfer_from": t["transfer_from"], "ts": t["updated"]},
                       lang=ctx.lang, tz=ctx.tz, times=["ts"]))
        st.subheader(t["held_back"])
        coupons = ctx.q(store_coupons, store)
        if coupons.empty:
            st.caption(t["none"])
        else:
            coupons["why"] = [evidence_text(e, ctx.lang, ctx.tz, r)
                              for e, r in zip(coupons["evidence"], coupons["reason"], strict=True)]
            show(table(coupons, {"campaign_id": t["campaign"], "state": t["state"],
                                 "reason": t["reason"], "why": t["evidence"],
                                 "decided_at": t["decided_at"]},
                       lang=ctx.lang, tz=ctx.tz, times=["decided_at"],
                       codes={"state": "coupon_state", "reason": "coupon_reason"}))


selected = st.query_params.get("store")
if selected:
    cities = store_city(ctx.settings, ctx.lang)
    region = store_regions(ctx.settings).get(selected)
    where = " · ".join(p for p in (cities.get(selected, ""),
                                   region_label(region, ctx.settings, ctx.lang) if region else "")
                       if p)
    st.header(f"{t['store']} {selected}" + (f" · {where}" if where else ""))
    st.button(t["all_stores_back"], key="stores_back", on_click=close_store)
    drill_down(selected)
else:
    st.header(t["page_stores"])
    store_board()
