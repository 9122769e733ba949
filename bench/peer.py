"""``ctower bench peer``: the four window families in Quix Streams and Bytewax,
on the same broker and the same simulated backlog as ``ctower bench``.

Issue 12 asks how far the worker is from what a user of those libraries gets.
The peers (``bench/peers/``) compute the windows only (no rules,
de-duplication or validation), so their figure is a ceiling for windowing in
that library, not an equivalent of the worker. Each case (batched envelopes,
then one event per message) is produced once to fresh topics, then drained in
turn by each peer, one process each with its own consumer group, and by one
``ctower worker`` (``--no-worker`` skips it), timed like ``ctower bench``:
from the first event counted to the last (by the peer's own clock, see
``Progress``).

Both libraries re-key records from several topics onto one event-time clock
per key (Bytewax) or per repartition partition (Quix), so a backlog read a
topic at a time makes some records late, and they drop them; the count is
printed with each figure (ctower keeps a watermark per source partition).

The libraries are an optional extra (``pip install -e '.[peer]'``); a peer
whose library is missing is skipped with a word on how to install it. The
last line is ``RESULT quix_batched=<n> quix_single=<n> bytewax_batched=<n>
bytewax_single=<n>`` (events/s; 0 for a peer or case not run).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from ctower.bench.engine import (
    STALL_SECONDS,
    Drain,
    WorkerCounter,
    drain,
    kafka_for,
    load_average,
    peak_rss_mb,
    produce,
    run_settings,
    stop,
)
from ctower.bench.peers import PeerConfig, read_progress
from ctower.settings import Settings


@dataclass(frozen=True)
class Peer:
    name: str
    package: str
    """Import name: the peer is skipped when it is not installed."""
    command: tuple[str, ...]
    """Arguments after ``python``."""


PEERS = {
    "quix": Peer("quix", "quixstreams", ("-m", "ctower.bench.peers.quix_app")),
    "bytewax": Peer("bytewax", "bytewax",
                    ("-m", "bytewax.run", "-w", "1", "ctower.bench.peers.bytewax_flow:flow()")),
}
INSTALL_HINT = "pip install -e '.[peer]'"


@dataclass
class PeerDrain:
    drain: Drain
    windows: int
    late: int


def drain_peer(peer: Peer, config: PeerConfig, expected: int, log: Path,
               timeout_s: float = 1800.0) -> PeerDrain:
    """Run one peer on the backlog until it has taken out every event and
    folded every record it made of them; the same clock as the worker's drain."""
    started = progressed = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *peer.command], env={**os.environ, **config.env()},
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    first = 0.0
    done = 0
    last: dict[str, Any] = {}
    try:
        with tqdm(total=expected, desc=peer.name, unit="ev", leave=False) as bar:
            while done < expected:
                if proc.poll() is not None:
                    tail = log.read_text(errors="replace")[-3000:]
                    raise click.ClickException(f"{peer.name} exited:\n{tail}")
                now = time.perf_counter()
                if now - progressed > STALL_SECONDS or now - started > timeout_s:
                    tail = log.read_text(errors="replace")[-3000:]
                    raise click.ClickException(
                        f"{peer.name} stalled at {done:,} of {expected:,} events ({last}):\n{tail}")
                time.sleep(0.05)
                progress = read_progress(config.progress)
                if progress is None:
                    continue
                last = progress
                count = progress["events"]
                if progress["folded"] < progress["records"]:
                    count = min(count, expected - 1)  # records still on their way to a window
                if count and not first:
                    first = time.perf_counter()
                if count > done:
                    progressed = time.perf_counter()
                    bar.update(count - done)
                    done = count
        finished = time.perf_counter()
        rss = peak_rss_mb(proc.pid)
    finally:
        stop(proc)
    final = read_progress(config.progress) or last
    if final.get("first") and final.get("changed"):  # the app's own clock, finer than polls
        seconds = max(final["changed"] - final["first"], 1e-3)
    else:
        seconds = finished - first
    return PeerDrain(Drain(done, seconds, finished - started, rss),
                     final.get("windows", 0), final.get("late", 0))


def drop_topics_of(settings: Settings) -> int:
    """Delete every topic named after the run: its streams, the worker's
    changelogs and the peers' own (Quix names its repartition and changelog
    topics after the consumer group, which holds the run id)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap, client_id="ctower-bench")
    try:
        names = [t for t in admin.list_topics() if settings.app_id in t]
        if names:
            admin.delete_topics(names, timeout_ms=30_000)
        return len(names)
    finally:
        admin.close()


def run_peer_case(base: Settings, name: str, events: int, batch: int, seed: int,
                  peers: list[Peer], worker: bool, keep_topics: bool = False,
                  ) -> dict[str, float]:
    """One backlog, drained by each peer and the worker in turn: events/s by name."""
    from ctower.topics import ensure_topics

    settings = run_settings(base, f"peer{name}")
    ensure_topics(settings)
    click.echo(f"\n[{name}] {events:,} events, {batch} per message "
               f"(topics {settings.topic_prefix}*)")
    rates: dict[str, float] = {}
    try:
        sent = produce(settings, events, batch, seed)
        for peer in peers:
            config = PeerConfig(
                bootstrap=settings.bootstrap, topic_prefix=settings.topic_prefix,
                group=f"{settings.app_id}-{peer.name}",
                progress=settings.data_dir / f"{peer.name}.progress.json",
                state_dir=settings.data_dir / f"{peer.name}-state",
            )
            got = drain_peer(peer, config, sent, settings.data_dir / f"{peer.name}.log")
            rates[peer.name] = got.drain.events_per_s
            click.echo(f"  {peer.name}: {got.drain.events_per_s:,.0f} events/s (drained "
                       f"{got.drain.events:,} in {got.drain.total_seconds:.1f} s from start, "
                       f"peak RSS {got.drain.rss_mb:.0f} MB; {got.windows:,} windows closed, "
                       f"{got.late:,} records late); {load_average()}")
        if worker:
            ours = drain(settings, "worker", WorkerCounter(settings), sent,
                         settings.data_dir / "worker.log")
            rates["ctower"] = ours.events_per_s
            click.echo(f"  ctower worker (every rule on): {ours.events_per_s:,.0f} events/s "
                       f"(drained {ours.events:,} in {ours.total_seconds:.1f} s from start, "
                       f"peak RSS {ours.rss_mb:.0f} MB); {load_average()}")
    finally:
        if not keep_topics:
            click.echo(f"  dropped the run's {drop_topics_of(settings)} topics")
    return rates


@click.command("peer")
@click.option("--events", default=1_000_000, show_default=True, help="Events, batched run.")
@click.option("--batch", default=100, show_default=True, help="Events per message.")
@click.option("--single-events", default=200_000, show_default=True,
              help="Events of the one-event-per-message run (0 to skip).")
@click.option("--seed", default=1, show_default=True)
@click.option("--only", type=click.Choice(sorted(PEERS)), help="Run this peer only.")
@click.option("--worker/--no-worker", default=True, show_default=True,
              help="Also drain each backlog with one ctower worker, for the figures beside.")
@click.option("--keep-topics", is_flag=True, help="Leave the runs' topics on the broker.")
def peer_bench(events: int, batch: int, single_events: int, seed: int, only: str | None,
               worker: bool, keep_topics: bool) -> None:
    """Quix Streams and Bytewax doing our four window families, beside one worker.

    Needs the optional extra: pip install -e '.[peer]'. Prints a RESULT line.
    """
    from ctower.cli import settings_or_exit

    peers = []
    for peer in PEERS.values():
        if only and peer.name != only:
            continue
        if importlib.util.find_spec(peer.package) is None:
            click.echo(f"{peer.name}: {peer.package} is not installed, skipped "
                       f"(install the peers with: {INSTALL_HINT})")
            continue
        peers.append(peer)
    results: dict[str, dict[str, float]] = {}
    if peers or worker:
        settings: Settings = settings_or_exit()
        cases = [("batched", events, batch), ("single", single_events, 1)]
        with kafka_for(settings):
            for case, count, per_message in cases:
                if count:
                    results[case] = run_peer_case(settings, case, count, per_message, seed,
                                                  peers, worker, keep_topics)
    names = [*(peer.name for peer in peers), *(["ctower"] if worker else [])]
    if results and names:
        click.echo(f"\nevents/s   {''.join(f'{n:>12}' for n in names)}")
        for case, rates in results.items():
            click.echo(f"{case:<10} {''.join(f'{rates.get(n, 0):>12,.0f}' for n in names)}")
        click.echo(load_average())
    click.echo("RESULT " + " ".join(
        f"{peer}_{case}={results.get(case, {}).get(peer, 0):.0f}"
        for peer in PEERS for case in ("batched", "single")
    ))
