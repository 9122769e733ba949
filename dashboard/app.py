"""The control-tower dashboard (Streamlit). Run with ``ctower dashboard``.

This entry script draws what every page shares (language, time range,
operator unlock) and then runs the page picked in the navigation, one module
per page under ``views/``. (Not ``pages/``: Streamlit serves a folder of
that name beside the entry script as a multipage app of its own, which
answers a page's URL, a bookmark or a refresh by running the page without
this script.) ``st.navigation`` is the only page registry, so every page
works by its URL (``/stores``, ``/alerts?alert_id=...``) and after a
refresh. The language travels in the URL too (``?lang=en``), so a link or a
refresh keeps it.

Figures refresh inside fragments every ``dashboard_refresh_seconds``, so the
page itself never reloads. The store is reached through ``open_store``: in
embedded mode that is the sink's HTTP front, the same client code as against
a ClickHouse server.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from ctower.dashboard.context import (
    PAGES,
    RANGES_MINUTES,
    SESSION_KEY,
    PageContext,
    token_matches,
)
from ctower.dashboard.i18n import text
from ctower.settings import SettingsError, load_settings

VIEWS_DIR = Path(__file__).resolve().with_name("views")
# (Comments, not docstrings: Streamlit's "magic" would draw a bare string on the page.)
LANGUAGES = ("zh", "en")

st.set_page_config(page_title="Control tower / 控制塔", layout="wide")
try:
    settings = load_settings()
except SettingsError as exc:
    st.error(str(exc))
    st.stop()

# The language: the sidebar switch, first set from the URL (?lang=en) or the settings.
if "lang" not in st.session_state:
    wanted = st.query_params.get("lang")
    st.session_state["lang"] = wanted if wanted in LANGUAGES else settings.language
lang = st.sidebar.radio("Language / 语言", LANGUAGES, horizontal=True, key="lang")
if st.query_params.get("lang") != lang:
    st.query_params["lang"] = lang  # a refresh or a copied link keeps the language
t = text(lang)
st.sidebar.title(t["title"])
minutes = st.sidebar.select_slider(t["range"], options=RANGES_MINUTES, value=60,
                                   key="range_minutes")
with st.sidebar.expander(t["operator"], expanded=bool(settings.operator_token.get_secret_value())
                         and not st.session_state.get("operator_token")):
    name = st.text_input(t["operator_name"], key="operator_name")
    token = st.text_input(t["operator_token"], type="password", key="operator_token")
operator = (name.strip() or "operator") if token_matches(settings, token) else None
if operator is not None:
    st.sidebar.caption(f"{t['unlocked_as']} {operator}")

st.session_state[SESSION_KEY] = PageContext(settings, lang, int(minutes), operator)
pages = {
    page: st.Page(VIEWS_DIR / f"{page}.py", title=t[f"page_{page}"], url_path=page)
    for page in PAGES
}


def home() -> None:
    """The root URL: the overview at its own address (/overview), or, for the link
    of a WeChat Work alert message (<dashboard>/?alert_id=...), that alert."""
    params = {k: v for k, v in st.query_params.to_dict().items() if k != "lang"}
    target = pages["alerts"] if params.get("alert_id") else pages["overview"]
    st.switch_page(target, query_params={**params, "lang": lang})


# The default page is served at "/" only, so it is a hidden step to /overview: every
# visible page then has its own URL, the overview included.
navigation = st.navigation([st.Page(home, title=t["page_overview"], url_path="home",
                                    default=True, visibility="hidden"), *pages.values()])
navigation.run()
