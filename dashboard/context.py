"""What every page shares: settings, language, time range, operator, the store.

The entry script (``app.py``) draws the sidebar once per run and leaves a
:class:`PageContext` in the session; each page script takes it with
:func:`current`. Pages then draw their live part in :func:`live` (a fragment
that reruns every ``dashboard_refresh_seconds`` without reloading the page)
and reach the store inside :func:`store_guard`, which turns an unreachable
store into a clear message: the next refresh simply tries again with a new
client.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import pandas as pd
import streamlit as st
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import OperationalError

from ctower.dashboard.i18n import text
from ctower.settings import Settings
from ctower.store import StoreUnavailable, open_store

SESSION_KEY = "ctower_page_context"
PAGES = ("overview", "stores", "skus", "inventory", "pickup", "logistics", "guides", "coupons",
         "service", "alerts", "pipeline")
"""The pages in navigation order: each is views/<name>.py at /<name>."""
RANGES_MINUTES = (15, 30, 60, 180, 720, 1440)
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class PageContext:
    settings: Settings
    lang: str
    minutes: int
    """The time range picked in the sidebar, in closed minutes."""
    operator: str | None
    """Who is unlocked for the controls (the token matched), else None."""

    @property
    def t(self) -> dict[str, str]:
        return text(self.lang)

    @property
    def tz(self) -> str:
        """The operators' time zone (``operator_timezone``)."""
        return self.settings.operator_timezone

    def client(self) -> Client:
        return _store_client(self.settings, _client_key(self.settings))

    def q(self, query: Callable[..., T], *args: Any) -> T:
        """``query(client, *args)``, shared by every viewer for about one refresh.

        Every open dashboard refreshes every ``dashboard_refresh_seconds``;
        ten viewers of one page would ask the store the same questions ten
        times every 2 s. The answer is kept (``st.cache_data``, keyed by the
        store, the query and its arguments) for a little less than one
        refresh, so the store answers each question about once per refresh
        however many people watch.
        """
        seconds = self.settings.dashboard_refresh_seconds
        if seconds <= 0:
            return query(self.client(), *args)
        cached = _cached_query(max(0.5, seconds * 0.9))
        name = f"{query.__module__}.{query.__qualname__}"
        result: T = cached(_client_key(self.settings), name, args, query, self)
        return result

    @property
    def controls_configured(self) -> bool:
        return bool(self.settings.operator_token)


def _client_key(settings: Settings) -> str:
    return f"{settings.dsn}|{settings.data_dir}|{settings.store_http_port}|{settings.store_user}"


@st.cache_resource(show_spinner=False)
def _store_client(_settings: Settings, key: str) -> Client:
    """One client per store for the whole server (it is thread-safe without a
    session). Never falls back to opening the embedded path: holding it would
    stop the sink from starting."""
    return open_store(_settings, path_fallback=False)


_CACHED: dict[float, Callable[..., Any]] = {}


def _cached_query(ttl: float) -> Callable[..., Any]:
    """The cached runner for one time-to-live (one per refresh setting)."""
    runner = _CACHED.get(ttl)
    if runner is None:
        @st.cache_data(ttl=ttl, show_spinner=False, max_entries=1024)
        def run(store: str, name: str, args: tuple[Any, ...], _query: Callable[..., Any],
                _context: PageContext) -> Any:
            return _query(_context.client(), *args)

        runner = _CACHED[ttl] = run
    return runner


def show(frame: pd.DataFrame, **kwargs: Any) -> None:
    """A table as every page shows one: no index, full width, empty cells empty."""
    kwargs.setdefault("hide_index", True)
    kwargs.setdefault("width", "stretch")
    kwargs.setdefault("placeholder", "")
    st.dataframe(frame, **kwargs)


def token_matches(settings: Settings, offered: str) -> bool:
    """Constant-time comparison, and never true when no token is configured."""
    expected = settings.operator_token.get_secret_value()
    return bool(expected) and hmac.compare_digest(offered.encode(), expected.encode())


def current() -> PageContext:
    context = st.session_state.get(SESSION_KEY)
    if not isinstance(context, PageContext):
        raise RuntimeError("run the dashboard through its entry script (ctower dashboard)")
    return context


def live(context: PageContext) -> Callable[[F], F]:
    """Decorator: the function becomes a fragment refreshed every few seconds
    (or, with a refresh of 0, redrawn only when the page is)."""
    seconds = context.settings.dashboard_refresh_seconds
    return st.fragment(run_every=seconds if seconds > 0 else None)


@contextmanager
def store_guard(context: PageContext) -> Iterator[None]:
    """Run a block that reads the store; if the store cannot be reached, say so
    and drop the client so the next refresh connects afresh."""
    try:
        yield
    except StoreUnavailable as exc:  # says which folder and port, and what to start
        _store_client.clear()
        st.warning(f"{context.t['store_unreachable']}: {exc}")
    except (OperationalError, OSError) as exc:  # the type only: no URL, nothing secret
        _store_client.clear()
        st.warning(f"{context.t['store_unreachable']}: {type(exc).__name__}")
