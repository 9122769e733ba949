"""``ctower sink``: the process that writes every topic to ClickHouse.

Options override the settings for this run only; everything else comes from
the environment or ``CTOWER_CONFIG`` as for every ctower process.
"""

from __future__ import annotations

from typing import Any

import click

from ctower.logs import configure_logging
from ctower.settings import SettingsError, load_settings


@click.command("sink")
@click.option("--store-dsn", default=None, help="chdb:///abs/path or http(s)://host:port.")
@click.option("--batch-rows", type=int, default=None, help="Rows per insert, at most.")
@click.option("--batch-seconds", type=float, default=None, help="Longest wait before an insert.")
def sink(store_dsn: str | None, batch_rows: int | None, batch_seconds: float | None) -> None:
    """Write events, closed windows, dead letters, alerts and coupon records
    to ClickHouse, in batches, committing offsets only after the insert."""
    overrides: dict[str, Any] = {}
    if store_dsn is not None:
        overrides["store_dsn"] = store_dsn
    if batch_rows is not None:
        overrides["sink_batch_rows"] = batch_rows
    if batch_seconds is not None:
        overrides["sink_batch_seconds"] = batch_seconds
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(settings)
    # Imported here: `ctower --help` should not pay for aiokafka and pyarrow.
    from ctower import store
    from ctower.schemas.migrations import MigrationError
    from ctower.streams.sinks.clickhouse import SinkError, run_sink

    readable: tuple[type[Exception], ...] = (SinkError, MigrationError)
    unavailable = getattr(store, "StoreUnavailable", None)
    if unavailable is not None:
        readable += (unavailable,)
    try:
        run_sink(settings)
    except readable as exc:
        raise click.ClickException(str(exc)) from None
