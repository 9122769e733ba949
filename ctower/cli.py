"""The ``ctower`` command.

Subcommands live beside the code they drive and are imported only when
called: ``ctower sql`` should not pay for importing Faust and Streamlit.
"""

from __future__ import annotations

import contextlib
import getpass
import importlib
import json
import sys
from collections.abc import Iterator
from typing import Any

import click

from ctower.errors import CtowerError
from ctower.settings import Settings, SettingsError, load_settings

COMMANDS: dict[str, tuple[str, str]] = {
    "kafka": ("ctower.devstack.broker.commands", "kafka"),
    "worker": ("ctower.cli", "worker"),
    "sink": ("ctower.sinks.clickhouse.command", "sink"),
    "simulate": ("ctower.simulator.command", "simulate"),
    "sql": ("ctower.sql_command", "sql"),
    "dashboard": ("ctower.dashboard.command", "dashboard"),
    "demo": ("ctower.devstack.demo", "demo"),
    "bench": ("ctower.bench.engine", "bench"),
    "settings": ("ctower.cli", "show_settings"),
    "coupons": ("ctower.coupons.command", "coupons"),
    "actions": ("ctower.control.actions", "actions"),
    "warehouse": ("ctower.simulator.warehouse", "warehouse_command"),
    "tasks": ("ctower.control.tasks", "tasks_group"),
    "alerts": ("ctower.sinks.wechat.command", "alerts"),
    "health": ("ctower.health", "health"),
    "schemas": ("ctower.schemas.contracts", "schemas_command"),
    "record": ("ctower.simulator.recorder", "record_command"),
    "backtest": ("ctower.rules.backtest_command", "backtest"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module = importlib.import_module(target[0])
        command: click.Command = getattr(module, target[1])
        return command


@click.group(cls=LazyGroup)
def cli() -> None:
    """Retail control tower: Kafka, Faust workers, ClickHouse, dashboard."""
    from ctower.logs import configure_logging

    try:
        settings = load_settings()
    except SettingsError:
        settings = None  # the command says what is wrong when it loads them
    configure_logging(settings)


def settings_or_exit(**overrides: Any) -> Settings:
    """The settings, or a clean exit naming the bad setting."""
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


@contextlib.contextmanager
def store_or_exit(settings: Any, hint: str = "") -> Iterator[Any]:
    """A client of the store, closed after; or a clean exit saying why the store
    cannot be opened (which folder and port, and what to start), plus ``hint``."""
    from ctower.store import StoreUnavailable, open_store

    try:
        client = open_store(settings)
    except StoreUnavailable as exc:
        raise click.ClickException(f"{exc}{hint}") from None
    try:
        yield client
    finally:
        client.close()


def operator_name() -> str:
    """Who runs a command, for the records it writes (``set_by``, ``by``): the
    OS user, or "cli" where there is none (a container without a passwd entry)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


@click.command()
def worker() -> None:
    """Run a stream-processing worker (several share the partitions)."""
    from ctower.streams.worker import run_worker

    run_worker(settings_or_exit())


@click.command("settings")
def show_settings() -> None:
    """Print the settings in force (secrets masked)."""
    click.echo(json.dumps(settings_or_exit().public_dict(), indent=2, ensure_ascii=False))


SETTINGS_EXIT_CODE = 2
"""Exit code of a bad setting found past the command's own check (as click's usage errors)."""
ERROR_EXIT_CODE = 1
"""Exit code of any other :class:`CtowerError` (as click's own ``ClickException``)."""


def main() -> None:
    """Run the command; an error ctower raised on purpose ends in its message, not
    a traceback. Anything else is a bug and keeps its traceback."""
    try:
        cli(standalone_mode=True)
    except CtowerError as exc:
        click.echo(f"Error: {str(exc) or type(exc).__name__}", err=True)
        sys.exit(SETTINGS_EXIT_CODE if isinstance(exc, SettingsError) else ERROR_EXIT_CODE)
