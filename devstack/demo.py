"""``ctower demo``: the whole control tower on one machine, in one command.

Starts, in order: the local Kafka broker (unless KAFKA_BOOTSTRAP points at a
cluster), the topics, the sink (which owns the embedded store and serves it
to the others), a worker, the simulator at a live rate, and the dashboard.
Ctrl-C stops what this command started, in reverse order, and nothing else.

The simulated chain's master data (stores with their regions and pickup
capacity, SKUs with lead times, campaigns) is written next to the data and
given to every child, unless ``CTOWER_MASTER_DATA_FILE`` names a chain
already: without it the rules have no capacities and the dashboard no regions.

Without ``CTOWER_OPERATOR_TOKEN`` the demo makes one up and prints it, so the
dashboard's controls (coupon caps, alert workflow) can be unlocked at once.
Without ``CTOWER_COUPON_API_TOKEN`` it makes one up for the workers' coupon
API, and the simulator plays shoppers reserving coupons there
(``--reserve-rate`` a second), so a cap set on the dashboard shows its effect:
grants and refusals per minute.

History and live events come from one simulation (:func:`feed`): it starts
``--backfill`` events before now, sends them as fast as Kafka takes them and
then holds each event until the wall clock reaches its time, so the minute
trend runs on without a seam where the history ends (two simulations, one for
the history and one live, left a gap of a minute or two between them and
restarted every queue and session: a deep dip in the trend).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from ctower.settings import Settings

SIM_SEED = 42
"""The simulator's seed: its chain (and so the master data) follows from it."""


@dataclass
class Children:
    log_dir: Path
    env: dict[str, str] | None = None
    """The children's environment; None inherits this process's."""
    started: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, *args: str, module: str = "ctower") -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args], stdout=log, stderr=subprocess.STDOUT,
            env=self.env,
        )
        self.started.append((name, proc))
        click.echo(f"  started {name:<10} pid {proc.pid:<7} log {self.log_dir / f'{name}.log'}")
        return proc

    def check(self) -> None:
        for name, proc in self.started:
            if proc.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise click.ClickException(f"{name} exited with {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        for name, proc in reversed(self.started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                click.echo(f"  stopped {name}")


def wait_for_http(url: str, children: Children, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children.check()
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise click.ClickException(f"{url} did not answer within {timeout:.0f} s")


CAUGHT_UP = "caught up with the wall clock"
"""What the feed prints once the history is sent and it runs live."""


def wait_for_line(path: Path, text: str, children: Children, timeout: float) -> None:
    """Until ``text`` appears in a child's log (or the child dies, or time runs out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children.check()
        with contextlib.suppress(OSError):
            if text in path.read_text(errors="replace"):
                return
        time.sleep(0.5)
    raise click.ClickException(f"{path.name}: no '{text}' within {timeout:.0f} s")


class _WallClock:
    """Holds each event until the wall clock reaches its time; events already
    due go at once. Says once when the first event has to wait."""

    def __init__(self, on_caught_up: Callable[[], None]) -> None:
        self.on_caught_up = on_caught_up
        self.live = False

    def wait_for(self, ts_ms: int) -> None:
        ahead = ts_ms / 1000 - time.time()
        if ahead > 0.005:
            if not self.live:
                self.live = True
                self.on_caught_up()
            time.sleep(ahead)


def shoppers(settings: Settings, simulator: Any, rate: float) -> None:
    """Reserve coupons through the workers' API, ``rate`` a second, for random
    members at random stores of each campaign's regions; forever (a daemon
    thread). What the API answers is the ledger's to count (grants and
    refusals by reason, on the dashboard's coupon page)."""
    token = settings.coupon_api_token
    if token is None or rate <= 0:
        return
    chain = simulator.chain
    campaigns = [
        (c.campaign_id, [s.store_id for s in chain.stores
                         if not c.regions or s.region_id in c.regions])
        for c in chain.campaigns
    ]
    campaigns = [(c, stores) for c, stores in campaigns if stores]
    if not campaigns:
        return
    rng = random.Random(SIM_SEED)
    headers = {"Authorization": f"Bearer {token.get_secret_value()}",
               "Content-Type": "application/json"}
    failing = False
    while True:
        campaign, stores = rng.choice(campaigns)
        body = json.dumps({"store_id": rng.choice(stores),
                           "member_id": f"M{rng.randrange(20_000):06d}"}).encode()
        request = urllib.request.Request(
            f"{settings.worker_url}/coupons/{campaign}/reserve", data=body, headers=headers,
            method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5):
                failing = False
        except urllib.error.HTTPError:
            failing = False  # an answer (a refusal is a 200; 503 while recovering)
        except OSError as exc:
            if not failing:
                click.echo(f"shoppers: the coupon API does not answer ({exc}); "
                           "trying on", err=True)
            failing = True
        time.sleep(rng.expovariate(rate))


def feed(rate: float, batch: int, backfill: int, seed: int, reserve_rate: float = 0.0) -> None:
    """The demo's simulator: ``backfill`` events of history, then live at about
    ``rate`` events/s (the daily curve's value now), one simulation throughout;
    once live, shoppers reserving coupons (:func:`shoppers`)."""
    from ctower.cli import settings_or_exit
    from ctower.simulator.clock import curve_at, now_ms, plan_span
    from ctower.simulator.generator import SimConfig, Simulator
    from ctower.simulator.producer import KafkaSink, pump

    settings = settings_or_exit()
    now = now_ms()
    sim_rate = rate / curve_at(now)  # events/s at the daily mean, so that now it is `rate`
    start = plan_span(backfill, sim_rate, now) if backfill > 0 else now
    # a live run scales its rate at its start: ask for the curve's value there
    config = SimConfig(seed=seed, rate=sim_rate * curve_at(start), start_ms=start)
    simulator = Simulator(config)

    def caught_up() -> None:
        at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        click.echo(f"{CAUGHT_UP} at {at}: live at about {rate:g} events/s", err=True)
        sys.stderr.flush()
        if reserve_rate > 0:
            threading.Thread(target=shoppers, args=(settings, simulator, reserve_rate),
                             name="shoppers", daemon=True).start()

    if backfill <= 0:
        caught_up()
    kafka = KafkaSink(settings, batch=batch)
    stats = pump(simulator.items(), kafka=kafka, pacer=_WallClock(caught_up))  # type: ignore[arg-type]
    click.echo(f"feed stopped after {stats.events:,} events", err=True)


@click.command()
@click.option("--rate", default=40, show_default=True, help="Simulated events per second.")
@click.option("--batch", default=20, show_default=True, help="Events per Kafka message.")
@click.option("--backfill", default=120_000, show_default=True,
              help="Events of recent history sent first (0 for none).")
@click.option("--reserve-rate", default=2.0, show_default=True,
              help="Coupon reservations a second by simulated shoppers (0 for none).")
@click.option("--no-dashboard", is_flag=True, help="Do not start the dashboard.")
def demo(rate: int, batch: int, backfill: int, reserve_rate: float, no_dashboard: bool) -> None:
    """Run broker, sink, worker, simulator and dashboard until Ctrl-C."""
    from ctower.cli import settings_or_exit
    from ctower.devstack.broker.local import BrokerError, LocalKafka
    from ctower.topics import ensure_topics

    settings: Settings = settings_or_exit()
    log_dir = settings.data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    broker = LocalKafka(settings) if settings.uses_local_kafka else None
    broker_started_here = False
    env = dict(os.environ)
    if settings.master_data_file is None:  # the chain the simulator will play
        from ctower.simulator.generator import SimConfig, Simulator

        chain = Simulator(SimConfig(seed=SIM_SEED, events=1)).chain
        master = chain.write(settings.data_dir / "master_data.json")
        env["CTOWER_MASTER_DATA_FILE"] = str(master)
        click.echo(f"Master data: {master} (the simulated chain, seed {SIM_SEED})")
    if not settings.operator_token.get_secret_value():
        token = secrets.token_urlsafe(9)
        env["CTOWER_OPERATOR_TOKEN"] = token
        click.echo(f"Operator token (unlocks the dashboard's controls): {token}")
    if settings.coupon_api_token is None and "CTOWER_COUPON_API_TOKEN_FILE" not in env:
        env["CTOWER_COUPON_API_TOKEN"] = secrets.token_urlsafe(16)  # the shoppers' reservations
    children = Children(log_dir, env)

    def request_stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # both, explicitly: a shell's background job inherits SIGINT ignored
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        click.echo(f"Kafka: {settings.bootstrap}")
        if broker is not None:
            broker_started_here = not broker.status().running
            try:
                broker.up()
            except BrokerError as exc:
                raise click.ClickException(str(exc)) from None
        ensure_topics(settings)
        children.start("sink", "sink")
        if settings.store_is_embedded:
            wait_for_http(f"http://127.0.0.1:{settings.store_http_port}/ping", children, 120)
        children.start("worker", "worker")
        wait_for_http(f"http://127.0.0.1:{settings.worker_web_port}/stats/", children, 120)
        if settings.alert_routes_file is not None:  # alerts to WeChat Work, when routed
            children.start("alerts", "alerts", "deliver")
        children.start("warehouse", "warehouse")  # answers the rules' transfer orders
        # one simulation for history and live (see the module docstring)
        feeding = children.start(
            "simulator", "feed", "--rate", str(rate), "--batch", str(batch),
            "--backfill", str(backfill), "--seed", str(SIM_SEED),
            "--reserve-rate", str(reserve_rate), module="ctower.devstack.demo",
        )
        if backfill:
            click.echo(f"  backfilling {backfill:,} events of recent history...")
            wait_for_line(log_dir / "simulator.log", CAUGHT_UP, children, 600)
            if feeding.poll() is not None:
                children.check()
        if not no_dashboard:
            children.start("dashboard", "dashboard")
            wait_for_http(f"http://127.0.0.1:{settings.dashboard_port}", children, 120)
            click.echo(f"\nDashboard: http://127.0.0.1:{settings.dashboard_port}")
        click.echo(f"Worker stats: http://127.0.0.1:{settings.worker_web_port}/stats/")
        if "CTOWER_OPERATOR_TOKEN" in env and not settings.operator_token.get_secret_value():
            click.echo(f"Operator token: {env['CTOWER_OPERATOR_TOKEN']} (dashboard sidebar, "
                       "Operator)")
        click.echo('Query: ctower sql "SELECT * FROM store_minute_v ORDER BY window_start DESC '
                   'LIMIT 10"')
        click.echo("Ctrl-C stops everything this command started.")
        while True:
            children.check()
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        click.echo("\nstopping...")
        children.stop()
        if broker is not None and broker_started_here:
            broker.down()
            click.echo("  stopped kafka")


@click.group()
def _demo_parts() -> None:
    """What ``ctower demo`` runs besides the ctower commands
    (``python -m ctower.devstack.demo``)."""


@_demo_parts.command("feed")
@click.option("--rate", default=40.0)
@click.option("--batch", default=20)
@click.option("--backfill", default=120_000)
@click.option("--seed", default=SIM_SEED)
@click.option("--reserve-rate", default=0.0)
def _feed_command(rate: float, batch: int, backfill: int, seed: int, reserve_rate: float
                  ) -> None:
    """The demo's simulator: history, then live (see :func:`feed`)."""
    from ctower.cli import settings_or_exit
    from ctower.logs import configure_logging

    configure_logging(settings_or_exit())
    feed(rate, batch, backfill, seed, reserve_rate)


if __name__ == "__main__":
    _demo_parts()
