"""Hot SKUs: per region, the most scanned SKUs, the best converting, and those
scanned often but rarely bought (worth a look at price, shelf or stock)."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from ctower.dashboard.context import current, live, show, store_guard
from ctower.dashboard.labels import code_label
from ctower.dashboard.queries.pickup import pickup_now
from ctower.dashboard.queries.skus import sku_by_region
from ctower.dashboard.regions import region_label, sku_category, store_regions

ctx = current()
t = ctx.t
st.header(t["page_skus"])
TOP = 10
controls = st.columns(2)
min_scans = controls[0].number_input(t["min_scans"], min_value=1, max_value=10_000, value=20,
                                     step=5, key="skus_min_scans", help=t["min_scans_help"])


def ranked(frame: pd.DataFrame, min_scans: int) -> dict[str, pd.DataFrame]:
    """Per view, the top SKUs of every region (conversion needs ``min_scans``)."""
    frame = frame.copy()
    frame["conversion"] = frame["paid_orders"] / frame["scans"].where(frame["scans"] > 0)
    enough = frame[frame["scans"] >= min_scans]
    return {
        "by_scans": frame.sort_values(["region", "scans", "sku"], ascending=[True, False, True])
        .groupby("region", sort=True).head(TOP),
        "by_conversion": enough.sort_values(["region", "conversion", "scans"],
                                            ascending=[True, False, False])
        .groupby("region", sort=True).head(TOP),
        "scanned_not_bought": enough.sort_values(["region", "conversion", "scans"],
                                                 ascending=[True, True, False])
        .groupby("region", sort=True).head(TOP),
    }


@live(ctx)
def figures() -> None:
    with store_guard(ctx):
        regions = store_regions(ctx.settings, ctx.q(pickup_now))
        stores = sorted(regions)
        found = ctx.q(sku_by_region, ctx.minutes, stores, [regions[s] for s in stores],
                      t["unknown_region"])
        if found.empty:
            st.info(t["empty_skus"])
            return
        categories = sku_category(ctx.settings)
        found["category"] = [code_label("category", categories.get(str(s), ""), ctx.lang)
                             for s in found["sku"]]
        found["region_name"] = [region_label(str(r), ctx.settings, ctx.lang)
                                for r in found["region"]]
        views = ranked(found, int(min_scans))
        heat = views["by_scans"]
        if not heat.empty:
            st.subheader(t["hot_map"])
            st.plotly_chart(
                px.treemap(heat, path=["region_name", "sku"], values="scans",
                           color="conversion", color_continuous_scale="RdYlGn",
                           hover_data={"paid_orders": True, "category": True},
                           labels={"scans": t["scans"], "conversion": t["conversion"],
                                   "paid_orders": t["paid_orders"],
                                   "category": t["category"]}),
                width="stretch",
            )
        columns = {"region_name": t["region"], "sku": "SKU", "category": t["category"],
                   "scans": t["scans"], "paid_orders": t["paid_orders"],
                   "conversion": t["conversion"], "stores": t["stores"]}
        config = {t["conversion"]: st.column_config.NumberColumn(format="percent")}
        for name in ("by_scans", "by_conversion", "scanned_not_bought"):
            st.subheader(t[f"skus_{name}"])
            view = views[name]
            if view.empty:
                st.caption(t["none"])
                continue
            show(view[list(columns)].rename(columns=columns), column_config=config)


figures()
