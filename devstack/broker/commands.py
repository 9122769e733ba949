"""``ctower kafka up|down|status|topics``: the local broker from the command line.

Registered in ``ctower.cli`` as the ``kafka`` group. Every failure an operator
can cause or fix (a bad setting, a taken port, no Java, a broker that would
not start) comes out as one clean ``Error: ...`` line plus the quoted broker
log, never as a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
from kafka.errors import KafkaError

from ctower.cli import settings_or_exit
from ctower.devstack.broker.local import LocalKafka
from ctower.errors import CtowerError

F = TypeVar("F", bound=Callable[..., Any])

NOT_RUNNING_EXIT_CODE = 3
"""Exit code of ``status`` when the broker is not running (as ``systemctl status``)."""


def _clean_errors(func: F) -> F:
    """Turn the errors an operator can act on into ``click.ClickException``."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (CtowerError, KafkaError, TimeoutError) as exc:
            raise click.ClickException(str(exc) or type(exc).__name__) from None

    return wrapper  # type: ignore[return-value]


@click.group("kafka")
def kafka() -> None:
    """The Kafka broker: a local single-node broker, or the cluster in KAFKA_BOOTSTRAP."""


@kafka.command("up")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait for it.")
@click.option("--topics/--no-topics", default=True, show_default=True,
              help="Also create the project's topics.")
@_clean_errors
def up(timeout: float, topics: bool) -> None:
    """Start the local broker (fetching Kafka on first use) and wait until it answers."""
    settings = settings_or_exit()
    bootstrap = LocalKafka(settings).up(timeout=timeout)
    where = "local broker" if settings.uses_local_kafka else "cluster (KAFKA_BOOTSTRAP)"
    click.echo(f"Kafka {where} is up at {bootstrap}")
    if topics:
        from ctower.topics import ensure_topics

        created = ensure_topics(settings)
        if created:
            click.echo(f"created topics: {', '.join(created)}")


@kafka.command("down")
@click.option("--timeout", default=30.0, show_default=True,
              help="Seconds of clean shutdown before the broker is killed.")
@_clean_errors
def down(timeout: float) -> None:
    """Stop the local broker (nothing to do when it is not running)."""
    settings = settings_or_exit()
    if not settings.uses_local_kafka:
        click.echo(f"KAFKA_BOOTSTRAP is set ({settings.bootstrap}): no local broker to stop")
        return
    broker = LocalKafka(settings)
    was = broker.status()
    broker.down(timeout=timeout)
    click.echo(f"stopped the local broker (pid {was.pid})" if was.running
               else "the local broker was not running")


@kafka.command("status")
@_clean_errors
def status() -> None:
    """Show whether the broker runs and where its files are; exit code 3 when it does not."""
    settings = settings_or_exit()
    state = LocalKafka(settings).status()
    rows = {
        "running": "yes" if state.running else "no",
        "answers": "yes" if state.reachable else "no",
        "bootstrap": state.bootstrap,
        "mode": "local" if state.local else "external (KAFKA_BOOTSTRAP)",
        "pid": state.pid,
        "version": state.version,
        "data_dir": state.data_dir,
        "log_file": state.log_file,
    }
    for key, value in rows.items():
        if value is not None:
            click.echo(f"{key:<10} {value}")
    if not state.running:
        raise click.exceptions.Exit(NOT_RUNNING_EXIT_CODE)


@kafka.command("topics")
@_clean_errors
def topics() -> None:
    """Create the project's topics that do not exist yet (safe to run again)."""
    from ctower.topics import ensure_topics

    settings = settings_or_exit()
    created = ensure_topics(settings)
    if created:
        click.echo(f"created {len(created)} topics: {', '.join(created)}")
    else:
        click.echo("all topics exist")
