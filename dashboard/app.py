"""The control-tower dashboard (Streamlit). Run with ``ctower dashboard``.

This entry script draws what every page shares (language, time range,
operator unlock) and then runs the page picked in the navigation, one module
per page under ``pages/``. Figures refresh inside fragments every
``dashboard_refresh_seconds``, so the page itself never reloads. The store
is reached through ``open_store``: in embedded mode that is the sink's HTTP
front, the same client code as against a ClickHouse server.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from ctower.dashboard.context import RANGES_MINUTES, SESSION_KEY, PageContext, token_matches
from ctower.dashboard.i18n import text
from ctower.settings import SettingsError, load_settings

PAGES_DIR = Path(__file__).resolve().with_name("pages")
# Page modules in navigation order; each is pages/<name>.py at /<name>. (A comment, not
# a docstring: Streamlit's "magic" would draw a bare string of this script on the page.)
PAGES = ("overview", "stores", "inventory", "pickup", "logistics", "coupons", "alerts")

st.set_page_config(page_title="Control tower / 控制塔", layout="wide")
try:
    settings = load_settings()
except SettingsError as exc:
    st.error(str(exc))
    st.stop()

languages = ["zh", "en"]
lang = st.sidebar.radio(
    "Language / 语言", languages, index=languages.index(settings.language), horizontal=True,
    key="lang",
)
t = text(lang)
st.sidebar.title(t["title"])
minutes = st.sidebar.select_slider(t["range"], options=RANGES_MINUTES, value=60,
                                   key="range_minutes")
with st.sidebar.expander(t["operator"]):
    name = st.text_input(t["operator_name"], key="operator_name")
    token = st.text_input(t["operator_token"], type="password", key="operator_token")
operator = (name.strip() or "operator") if token_matches(settings, token) else None
if operator is not None:
    st.sidebar.caption(f"{t['unlocked_as']} {operator}")

st.session_state[SESSION_KEY] = PageContext(settings, lang, int(minutes), operator)
navigation = st.navigation([
    st.Page(PAGES_DIR / f"{page}.py", title=t[f"page_{page}"], url_path=page,
            default=page == "overview")
    for page in PAGES
])
navigation.run()
