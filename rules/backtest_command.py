"""``ctower backtest``: a candidate rules file against the rules in force, on a recording.

Prints what the candidate would have done differently (alerts added and
removed per kind, coupon decisions changed, each with its event time on the
operators' clock), then one summary line. Exit status 0 whether or not
there is a difference: a difference is the answer, not a failure.

Both files are read as the workers would read them if ``CTOWER_RULES_FILE``
named them, ``CTOWER_RULE_*`` overrides included: the question is what
deploying the candidate here would change.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click

from ctower.rules.backtest import TICK_MS, BacktestResult, run_backtest
from ctower.schemas.control import Alert, CouponSignal


def _when(ms: int, zone: ZoneInfo) -> str:
    return datetime.fromtimestamp(ms / 1000, zone).strftime("%m-%d %H:%M:%S")


def _alert_line(sign: str, alert: Alert, zone: ZoneInfo) -> str:
    scope = alert.key.split(":", 1)[-1]
    return f"  {sign} {_when(alert.opened_at, zone)}  {alert.kind:<18} {scope:<24} {alert.message}"


_DECISION = {"pickup_pressure": "throttle", "stock_cover": "pause"}


def _signal_line(sign: str, signal: CouponSignal, zone: ZoneInfo) -> str:
    what = _DECISION.get(signal.cause, signal.cause)
    verb = what if signal.active else f"end {what}"
    sku = f" {signal.sku}" if signal.sku else ""
    evidence = signal.evidence
    values = ", ".join(
        f"{k} {evidence[k]}" for k in ("pressure", "cover_hours", "threshold") if k in evidence
    )
    return (
        f"  {sign} {_when(signal.ts, zone)}  {verb:<14} {signal.campaign_id} @ "
        f"{signal.store_id}{sku}" + (f"  ({values})" if values else "")
    )


def summary_line(result: BacktestResult, zone: ZoneInfo) -> str:
    span = (
        f" ({_when(result.first_ts, zone)} .. {_when(result.last_ts, zone)})"
        if result.first_ts else ""
    )
    changed = len(result.decisions_added) + len(result.decisions_removed)
    return (
        f"backtest: {result.events:,} events{span}; alerts +{len(result.added)} "
        f"-{len(result.removed)} (in force {len(result.live.opened())}, candidate "
        f"{len(result.candidate.opened())}); coupon decisions changed {changed}; "
        f"{result.seconds:.1f} s"
    )


def diff_json(result: BacktestResult) -> dict[str, Any]:
    """The diff as data (``--json``): what a script or a review tool reads."""
    def alert(a: Alert) -> dict[str, Any]:
        return {"kind": a.kind, "key": a.key, "opened_at": a.opened_at, "message": a.message,
                "evidence": a.evidence}

    def signal(s: CouponSignal) -> dict[str, Any]:
        return {"campaign_id": s.campaign_id, "store_id": s.store_id, "cause": s.cause,
                "sku": s.sku, "active": s.active, "ts": s.ts, "evidence": s.evidence}

    return {
        "events": result.events,
        "first_ts": result.first_ts,
        "last_ts": result.last_ts,
        "per_kind": {k: {"added": a, "removed": r} for k, (a, r) in result.per_kind().items()},
        "alerts_added": [alert(a) for a in result.added],
        "alerts_removed": [alert(a) for a in result.removed],
        "decisions_added": [signal(s) for s in result.decisions_added],
        "decisions_removed": [signal(s) for s in result.decisions_removed],
        "in_force": {"alerts": len(result.live.opened()), "decisions": len(result.live.signals)},
        "candidate": {
            "alerts": len(result.candidate.opened()), "decisions": len(result.candidate.signals)
        },
    }


@click.command("backtest")
@click.option(
    "--rules", "rules_path", required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The candidate rules file (a copy of rules/rules.toml, edited).",
)
@click.option(
    "--replay", "replay_path", required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Recorded events: what `ctower record` or `simulate --out` writes.",
)
@click.option(
    "--master-data", "master_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Stores, SKUs, campaigns (default: CTOWER_MASTER_DATA_FILE).",
)
@click.option(
    "--tick-seconds", type=click.FloatRange(min=1), default=TICK_MS / 1000, show_default=True,
    help="Event time between two passes for what time alone changes.",
)
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True,
              help="Lines shown per list (the counts are always whole).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the whole diff as JSON here.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def backtest(
    rules_path: Path,
    replay_path: Path,
    master_path: Path | None,
    tick_seconds: float,
    limit: int,
    json_path: Path | None,
    quiet: bool,
) -> None:
    """Run a candidate rules file beside the rules in force over recorded events."""
    from tqdm import tqdm

    from ctower.cli import settings_or_exit
    from ctower.rules.config import RulesError, load_rules
    from ctower.schemas.master_data import MasterData, load_master_data
    from ctower.simulator.replay import count_lines

    settings = settings_or_exit()
    try:
        live = load_rules(settings.rules_file)
    except RulesError as exc:
        raise click.ClickException(f"the rules in force (CTOWER_RULES_FILE): {exc}") from None
    try:
        candidate = load_rules(rules_path)
    except RulesError as exc:
        raise click.ClickException(f"--rules: {exc}") from None
    master: MasterData | None = None
    source = master_path or settings.master_data_file
    if source is not None:
        try:
            master = load_master_data(source)
        except ValueError as exc:
            raise click.ClickException(f"master data: {exc}") from None
    zone = ZoneInfo(settings.operator_timezone)
    bar = tqdm(total=count_lines(replay_path), unit="msg", unit_scale=True, mininterval=0.5,
               disable=quiet, file=sys.stderr, desc="backtest")
    try:
        result = run_backtest(
            replay_path, live, candidate, master, language=settings.language,
            dedup_horizon_ms=int(settings.dedup_horizon_seconds * 1000),
            tick_ms=int(tick_seconds * 1000), progress=bar.update,
        )
    except ValueError as exc:
        raise click.ClickException(f"--replay: {exc}") from None
    finally:
        bar.close()

    if result.empty:
        click.echo("no difference: the candidate raises the same alerts and coupon decisions")
    else:
        if result.per_kind():
            click.echo("alerts (+ only the candidate opens it, - only the rules in force):")
        for kind, (added, removed) in result.per_kind().items():
            click.echo(f"  {kind:<18} +{added} -{removed}")
        changes = sorted(
            [("+", a) for a in result.added] + [("-", a) for a in result.removed],
            key=lambda pair: pair[1].opened_at,
        )
        for sign, a in changes[:limit]:
            click.echo(_alert_line(sign, a, zone))
        if len(changes) > limit:
            click.echo(f"  ... {len(changes) - limit} more")
        decisions = sorted(
            [("+", s) for s in result.decisions_added]
            + [("-", s) for s in result.decisions_removed],
            key=lambda pair: pair[1].ts,
        )
        if decisions:
            click.echo("coupon decisions changed (+ only the candidate, - only the rules in force):"
                       )
            for sign, s in decisions[:limit]:
                click.echo(_signal_line(sign, s, zone))
            if len(decisions) > limit:
                click.echo(f"  ... {len(decisions) - limit} more")
    if json_path is not None:
        json_path.write_text(json.dumps(diff_json(result), ensure_ascii=False, indent=1))
    click.echo(summary_line(result, zone))
