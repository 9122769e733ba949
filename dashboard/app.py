"""The control-tower page (Streamlit). Run with ``ctower dashboard``.

Figures refresh every 2 s inside a fragment, so the page itself never
reloads. The store is reached through ``open_store``: in embedded mode that
is the sink's HTTP front, the same client code as against a server.
"""

from __future__ import annotations

import plotly.express as px
import streamlit as st
from clickhouse_connect.driver.exceptions import ClickHouseError

from ctower.dashboard.i18n import text
from ctower.dashboard.queries import minute_trend, sales_pulse, top_stores
from ctower.settings import load_settings
from ctower.store import open_store

settings = load_settings()
st.set_page_config(page_title="Control tower", layout="wide")
languages = ["zh", "en"]
lang = st.sidebar.radio("Language / 语言", languages, index=languages.index(settings.language))
t = text(lang)
st.title(t["title"])
minutes = st.sidebar.select_slider(t["range"], options=[15, 30, 60, 180, 720, 1440], value=60)


@st.cache_resource
def client():  # noqa: ANN201 - clickhouse-connect's client type
    # never fall back to opening the embedded path: holding it would stop the sink
    return open_store(settings, path_fallback=False)


@st.fragment(run_every=2)
def live() -> None:
    try:
        pulse = sales_pulse(client(), minutes)
    except (ClickHouseError, OSError) as exc:
        st.cache_resource.clear()
        st.warning(f"{t['store_unreachable']}: {type(exc).__name__}")
        return
    if pulse.minutes == 0:
        st.info(t["empty"])
        return
    cols = st.columns(5)
    cols[0].metric(t["gmv"], f"¥{pulse.gmv_yuan:,.0f}")
    cols[1].metric(t["paid_orders"], f"{pulse.paid_orders:,}")
    cols[2].metric(t["scans"], f"{pulse.scans:,}")
    conversion = pulse.conversion
    cols[3].metric(t["conversion"], f"{conversion:.1%}" if conversion is not None else "–")
    cols[4].metric(t["pickups_served"], f"{pulse.pickups_served:,}")
    trend = minute_trend(client(), minutes).rename(
        columns={"scans": t["scans"], "orders": t["orders"], "paid_orders": t["paid_orders"]}
    )
    figure = px.line(trend, x="minute", y=[t["scans"], t["orders"], t["paid_orders"]],
                     labels={"value": "", "minute": t["minute"], "variable": ""})
    st.plotly_chart(figure, use_container_width=True)
    st.subheader(t["top_stores"])
    st.dataframe(top_stores(client(), minutes), hide_index=True, use_container_width=True)


live()
