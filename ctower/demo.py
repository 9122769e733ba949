"""``ctower demo``: the whole control tower on one machine, in one command.

Starts, in order: the local Kafka broker (unless KAFKA_BOOTSTRAP points at a
cluster), the topics, the sink (which owns the embedded store and serves it
to the others), a worker, the simulator at a live rate, and the dashboard.
Ctrl-C stops what this command started, in reverse order, and nothing else.

The simulated chain's master data (stores with their regions and pickup
capacity, SKUs with lead times, campaigns) is written next to the data and
given to every child, unless ``CTOWER_MASTER_DATA_FILE`` names a chain
already: without it the rules have no capacities and the dashboard no regions.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

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

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "ctower", *args], stdout=log, stderr=subprocess.STDOUT,
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


@click.command()
@click.option("--rate", default=40, show_default=True, help="Simulated events per second.")
@click.option("--batch", default=20, show_default=True, help="Events per Kafka message.")
@click.option("--backfill", default=120_000, show_default=True,
              help="Events of recent history sent first (0 for none).")
@click.option("--no-dashboard", is_flag=True, help="Do not start the dashboard.")
def demo(rate: int, batch: int, backfill: int, no_dashboard: bool) -> None:
    """Run broker, sink, worker, simulator and dashboard until Ctrl-C."""
    from ctower.broker.local import BrokerError, LocalKafka
    from ctower.broker.topics import ensure_topics
    from ctower.cli import settings_or_exit

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
        if backfill:
            # recent history at the live rate first, so the dashboard has figures at once
            click.echo(f"  backfilling {backfill:,} events of recent history...")
            backfilling = children.start(
                "backfill", "simulate", "--quiet", "--rate", "max", "--events", str(backfill),
                "--batch", "100", "--sim-rate", str(rate), "--seed", str(SIM_SEED),
            )
            backfilling.wait(timeout=600)
            children.started.remove(("backfill", backfilling))
            if backfilling.returncode:
                children.check()
                raise click.ClickException(f"backfill failed: see {log_dir / 'backfill.log'}")
        children.start("simulator", "simulate", "--rate", str(rate), "--batch", str(batch),
                       "--seed", str(SIM_SEED))
        if not no_dashboard:
            children.start("dashboard", "dashboard")
            wait_for_http(f"http://127.0.0.1:{settings.dashboard_port}", children, 120)
            click.echo(f"\nDashboard: http://127.0.0.1:{settings.dashboard_port}")
        click.echo(f"Worker stats: http://127.0.0.1:{settings.worker_web_port}/stats/")
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
