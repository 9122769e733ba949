"""Pipeline: the stream processing itself, per stream - events per second,
consumer lag, freshness, event-to-alert latency, dead letters by reason with a
sample of each, late and duplicate events. The first page to open when a
figure looks wrong."""

from __future__ import annotations

import time

import pandas as pd
import plotly.express as px
import streamlit as st

from ctower.dashboard.context import current, live, show, store_guard
from ctower.dashboard.labels import code_label
from ctower.dashboard.live_sources import consumer_lag, worker_rate_history, worker_view
from ctower.dashboard.queries.pipeline import (
    FAMILY_STREAMS,
    alert_latency,
    bad_input,
    duplicate_events,
    freshness,
    late_events,
)
from ctower.dashboard.readable import duration_text, local_axis, table
from ctower.settings import STREAMS

ctx = current()
t = ctx.t
st.header(t["page_pipeline"])


def by_stream(frame: pd.DataFrame, column: str) -> dict[str, int]:
    """topic-keyed counts as stream -> count."""
    prefix = ctx.settings.topic_prefix
    return {str(topic).removeprefix(prefix): int(n)
            for topic, n in zip(frame["source_topic"], frame[column], strict=True)}


def latency_by_stream(latency: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """stream -> (p50, p95 seconds) of the alerts of the rules it feeds (the worst kind)."""
    found: dict[str, tuple[float, float]] = {}
    for _, row in latency.iterrows():
        for stream in FAMILY_STREAMS.get(str(row["kind"]), ()):
            p50, p95 = float(row["p50_s"]), float(row["p95_s"])
            old = found.get(stream)
            found[stream] = (max(p50, old[0]), max(p95, old[1])) if old else (p50, p95)
    return found


@live(ctx)
def figures() -> None:
    worker = worker_view(ctx.settings)
    lag, lag_error = consumer_lag(ctx.settings)
    with store_guard(ctx):
        fresh = ctx.q(freshness)
        late = by_stream(ctx.q(late_events), "events")
        duplicates = by_stream(ctx.q(duplicate_events), "events")
        bad = ctx.q(bad_input)
        latency = ctx.q(alert_latency, 60)
        now = time.time()
        newest = {str(s): ts for s, ts in zip(fresh["stream"], fresh["newest_ts"], strict=True)}
        letters = bad[bad["source"] == "worker"] if not bad.empty else bad
        dead = by_stream(letters.groupby("source_topic", as_index=False)["events"].sum(),
                         "events") if not letters.empty else {}
        per_alert = latency_by_stream(latency)
        rows = []
        for stream in STREAMS:
            rate = worker.table[worker.table["stream"] == stream]["events_per_s"]
            lag_of = {row["group"]: int(row["lag"]) for _, row in
                      lag[lag["stream"] == stream].iterrows() if pd.notna(row["lag"])}
            ts = newest.get(stream)
            age = None
            if ts is not None and pd.notna(ts) and pd.Timestamp(ts).year > 1970:
                age = now - pd.Timestamp(ts).tz_localize("UTC").timestamp()
            rows.append({
                "stream": code_label("stream", stream, ctx.lang),
                "events_per_s": float(rate.iloc[0]) if len(rate) and pd.notna(rate.iloc[0])
                else None,
                "lag_worker": lag_of.get(ctx.settings.app_id),
                "lag_sink": lag_of.get(f"{ctx.settings.app_id}-sink"),
                "freshness": duration_text(age, ctx.lang) if age is not None else "",
                "alert_p50": duration_text(per_alert[stream][0], ctx.lang)
                if stream in per_alert else "",
                "alert_p95": duration_text(per_alert[stream][1], ctx.lang)
                if stream in per_alert else "",
                "dead_letters": dead.get(stream, 0),
                "late": late.get(stream, 0),
                "duplicates": duplicates.get(stream, 0),
            })
        overview = pd.DataFrame(rows)
        cols = st.columns(4)
        total_rate = overview["events_per_s"].dropna()
        cols[0].metric(t["events_per_s"], f"{total_rate.sum():,.0f}" if len(total_rate) else "–")
        lags = overview["lag_worker"].dropna()
        cols[1].metric(t["lag_worker"], f"{int(lags.sum()):,}" if len(lags) else "–")
        cols[2].metric(t["dead_letters"], f"{int(overview['dead_letters'].sum()):,}")
        cols[3].metric(t["late_and_duplicate"],
                       f"{int(overview['late'].sum()):,} / {int(overview['duplicates'].sum()):,}")
        show(overview.rename(columns={
            "stream": t["stream"], "events_per_s": t["events_per_s"],
            "lag_worker": t["lag_worker"], "lag_sink": t["lag_sink"],
            "freshness": t["freshness"], "alert_p50": t["alert_p50"],
            "alert_p95": t["alert_p95"], "dead_letters": t["dead_letters"],
            "late": t["late_events"], "duplicates": t["duplicates"]}),
            column_config={t["events_per_s"]: st.column_config.NumberColumn(format="%.1f")})
        notes = []
        if worker.error is not None:
            notes.append(f"{t['worker_unreachable']} ({worker.url}): {worker.error}")
        if lag_error is not None:
            notes.append(f"{t['kafka_unreachable']}: {lag_error}")  # (or not asked yet)
        for note in notes:
            st.caption(note)
        st.caption(t["pipeline_help"])
        history = worker_rate_history(ctx.settings)
        if not history.empty:
            history = history.assign(
                at=local_axis(history["at"], ctx.tz),
                stream=[code_label("stream", s, ctx.lang) for s in history["stream"]])
            st.plotly_chart(
                px.line(history, x="at", y="events_per_s", color="stream", height=280,
                        labels={"at": f"{t['time']} ({ctx.tz})",
                                "events_per_s": t["events_per_s"], "stream": t["stream"]}),
                width="stretch")
        st.subheader(t["bad_input"])
        if bad.empty:
            st.caption(t["no_bad_input"])
        else:
            prefix = ctx.settings.topic_prefix
            bad = bad.assign(
                stream=[code_label("stream", str(s).removeprefix(prefix), ctx.lang)
                        for s in bad["source_topic"]],
                source=[t[f"source_{s}"] for s in bad["source"]])
            show(table(bad, {
                "stream": t["stream"], "source": t["where"], "reason": t["reason"],
                "events": t["count"], "last_at": t["last_seen"],
                "sample_detail": t["sample_detail"], "sample_raw": t["sample_raw"],
                "sample_position": t["sample_position"]},
                lang=ctx.lang, tz=ctx.tz, times=["last_at"], codes={"reason": "bad_input"}))
        st.subheader(t["alert_latency"])
        if latency.empty:
            st.caption(t["none"])
        else:
            shown = latency.assign(**{c: [duration_text(v, ctx.lang) for v in latency[c]]
                                      for c in ("p50_s", "p95_s", "max_s")})
            show(table(shown, {"kind": t["kind"], "alerts": t["alerts_count"],
                               "p50_s": "p50", "p95_s": "p95", "max_s": t["max"]},
                       lang=ctx.lang, tz=ctx.tz, codes={"kind": "alert_kind"}))
            st.caption(t["alert_latency_help"])


figures()
