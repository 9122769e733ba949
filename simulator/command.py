"""``ctower simulate``: generate (or replay) the seven streams into Kafka and files.

Examples::

    ctower simulate --rate 200                         # live demo, until Ctrl-C
    ctower simulate --rate max --events 1000000 --batch 100
    ctower simulate --events 200000 --incidents all --truth truth.json --out run.jsonl
    ctower simulate --replay run.jsonl --speed 10
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from ctower.cli import settings_or_exit
from ctower.simulator.clock import DAY_MS, Pacer, iso, now_ms, parse_start
from ctower.simulator.generator import SimConfig, Simulator
from ctower.simulator.incidents import KINDS
from ctower.simulator.jsonl import JsonlWriter
from ctower.simulator.producer import KafkaSink, SendStats, pump
from ctower.simulator.replay import count_lines, replay
from ctower.simulator.resend import resend
from ctower.simulator.truth import TruthRecorder, write_truth


def _positive_or_max(value: str, name: str) -> float | None:
    if value == "max":
        return None
    try:
        number = float(value)
    except ValueError:
        raise click.BadParameter(
            f"expected a number or 'max', got {value!r}", param_hint=name
        ) from None
    if number <= 0:
        raise click.BadParameter("must be > 0", param_hint=name)
    return number


def _incidents(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    names = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    if names == ("all",):
        return KINDS
    unknown = [n for n in names if n not in KINDS]
    if unknown:
        raise click.BadParameter(
            f"unknown {', '.join(unknown)}; choose from {', '.join(KINDS)} or 'all'",
            param_hint="--incidents",
        )
    return names


def _progress(total: int | None, quiet: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="ev",
        unit_scale=True,
        dynamic_ncols=True,
        mininterval=0.5,
        disable=quiet,
        file=sys.stderr,
        desc="events",
    )


@click.command("simulate")
@click.option(
    "--seed", type=int, default=42, show_default=True, help="Same seed (and --start) => same bytes."
)
@click.option(
    "--rate",
    "rate_text",
    default="max",
    show_default=True,
    help="Events/s live (ts = wall clock), or 'max' (simulated clock).",
)
@click.option("--events", type=click.IntRange(min=1), help="Stop after this many events.")
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop after this many seconds (simulated with --rate max, wall with --rate N).",
)
@click.option(
    "--sim-rate",
    type=click.FloatRange(min=0, min_open=True),
    default=50.0,
    show_default=True,
    help="--rate max: simulated events per second at the daily mean.",
)
@click.option(
    "--start",
    "start_text",
    help="--rate max: ISO 8601 start (naive = UTC+8). Default: so the last event is about now.",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Events per Kafka message; >1 sends JSON arrays per partition.",
)
@click.option("--incidents", "incidents_text", help=f"Comma list of {', '.join(KINDS)}, or 'all'.")
@click.option(
    "--truth",
    "truth_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the ground truth (JSON) here.",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write every message as a JSON line here.",
)
@click.option(
    "--replay",
    "replay_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Re-send a file written by --out instead of generating.",
)
@click.option(
    "--speed",
    "speed_text",
    default="1",
    show_default=True,
    help="--replay pace: N times the recorded pace, or 'max'.",
)
@click.option(
    "--no-kafka", is_flag=True, help="Only write files (--out/--truth); no broker needed."
)
@click.option("--acks", type=click.Choice(["all", "1", "0"]), default="all", show_default=True)
@click.option(
    "--compression",
    type=click.Choice(["auto", "none", "gzip"]),
    default="auto",
    show_default=True,
    help="auto: gzip unless kafka-python has the C crc32c extension (faster either way).",
)
@click.option(
    "--chain",
    "chain_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the chain's master data (stores, SKUs, campaigns...) as JSON here.",
)
@click.option(
    "--duplicates",
    type=click.FloatRange(0, 0.5),
    default=0.0,
    show_default=True,
    help="Share of events sent twice, as at-least-once producers do (half at once, half "
    "1-8 minutes later); the truth counts them once.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def simulate(
    seed: int,
    rate_text: str,
    events: int | None,
    duration: float | None,
    sim_rate: float,
    start_text: str | None,
    batch: int,
    incidents_text: str | None,
    truth_path: Path | None,
    out_path: Path | None,
    replay_path: Path | None,
    speed_text: str,
    no_kafka: bool,
    acks: str,
    compression: str,
    chain_path: Path | None,
    duplicates: float,
    quiet: bool,
) -> None:
    """Simulate the chain's event streams (scan, order, pickup, logistics, inventory, coupon)."""
    settings = settings_or_exit()
    recorder = TruthRecorder(settings.topic) if truth_path is not None else None

    if replay_path is not None:
        speed = _positive_or_max(speed_text, "--speed")
        progress = _progress(count_lines(replay_path), quiet)
        try:
            stats = replay(
                None if no_kafka else settings,
                replay_path,
                speed=speed,
                batch=batch,
                acks=acks,
                compression=compression,
                truth=recorder,
                out=out_path,
                progress=progress,
            )
        finally:
            progress.close()
        meta: dict[str, Any] = {"replay_of": str(replay_path), "speed": speed_text, "batch": batch}
        _finish(stats, recorder, truth_path, [], meta, no_kafka)
        return

    rate = _positive_or_max(rate_text, "--rate")
    start_ms = parse_start(start_text) if start_text else None
    config = SimConfig(
        seed=seed,
        events=events,
        duration_s=duration,
        rate=rate,
        sim_rate=sim_rate,
        start_ms=start_ms,
        incidents=_incidents(incidents_text),
    )
    try:
        sim = Simulator(config)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    _check_window(sim, settings.ts_max_past_days, settings.ts_max_future_seconds, no_kafka)
    if chain_path is not None:
        sim.chain.write(chain_path)

    try:
        items = sim.items()
    except ValueError as exc:  # an incident that does not fit the run
        raise click.ClickException(str(exc)) from None
    if duplicates > 0:
        items = resend(items, duplicates, seed)
    try:
        kafka = (
            None
            if no_kafka
            else KafkaSink(settings, batch=batch, acks=acks, compression=compression)
        )
    except Exception as exc:
        raise click.ClickException(
            f"cannot produce to Kafka at {settings.bootstrap}: {exc}"
        ) from None
    writer = JsonlWriter(out_path) if out_path is not None else None
    total = sim.plan.max_events
    progress = _progress(total, quiet)
    deadline = time.monotonic() + duration if (rate is not None and duration) else None
    try:
        stats = pump(
            items,
            kafka=kafka,
            out=writer,
            truth=recorder,
            pacer=Pacer(1.0) if rate is not None else None,
            progress=progress,
            stop=(lambda: time.monotonic() >= deadline) if deadline is not None else None,
        )
    finally:
        progress.close()
    plan = sim.plan
    meta = {
        "seed": seed,
        "rate": rate_text,
        "sim_rate": round(plan.sim_rate, 3),
        "start_ms": plan.start_ms,
        "start": iso(plan.start_ms),
        "planned_end_ms": plan.horizon_ms,
        "batch": batch,
        "duplicates": duplicates,
        "incidents_requested": list(config.incidents),
        "topic_prefix": settings.topic_prefix,
        "partitions": stats.partitions,
    }
    _finish(stats, recorder, truth_path, sim.incident_truth(), meta, no_kafka)


def _check_window(
    sim: Simulator, max_past_days: float, max_future_s: float, no_kafka: bool
) -> None:
    """Refuse runs whose events the worker would dead-letter as out of window."""
    now = now_ms()
    plan = sim.plan
    if plan.start_ms < now - max_past_days * DAY_MS:
        message = (
            f"--start is more than ts_max_past_days ({max_past_days:g}) ago: "
            "the worker would reject every event"
        )
        if not no_kafka:
            raise click.ClickException(message)
        click.echo(f"warning: {message}", err=True)
    if sim.config.rate is None and plan.horizon_ms > now + max_future_s * 1000:
        message = (
            f"the run would end at {iso(plan.horizon_ms)}, more than ts_max_future_seconds "
            f"({max_future_s:g}) ahead of now: the worker would reject those events"
        )
        if not no_kafka:
            raise click.ClickException(message)
        click.echo(f"warning: {message}", err=True)


def _finish(
    stats: SendStats,
    recorder: TruthRecorder | None,
    truth_path: Path | None,
    incidents: list[dict[str, Any]],
    meta: dict[str, Any],
    no_kafka: bool,
) -> None:
    if recorder is not None and truth_path is not None:
        write_truth(truth_path, recorder.result(incidents, meta))
    where = "written" if no_kafka else "sent"
    click.echo(f"simulate: {where} {stats.summary()}")
    per_stream = ", ".join(f"{k} {v:,}" for k, v in sorted(stats.per_stream.items()))
    if per_stream:
        click.echo(f"simulate: per stream: {per_stream}")
    if stats.errors:
        raise click.ClickException(f"{stats.errors} messages were not acknowledged by Kafka")
