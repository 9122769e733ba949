"""``ctower sink``: the process that writes every topic to ClickHouse.

Options override the settings for this run only; everything else comes from
the environment or ``CTOWER_CONFIG`` as for every ctower process.
"""

from __future__ import annotations

from typing import Any

import click

from ctower.cli import settings_or_exit
from ctower.logs import configure_logging


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
    settings = settings_or_exit(**overrides)
    configure_logging(settings)
    # Imported here: `ctower --help` should not pay for aiokafka and pyarrow.
    # Its refusals (SinkError, MigrationError, StoreUnavailable) are CtowerErrors:
    # `ctower`'s main prints them as one clean line.
    from ctower.sinks.clickhouse.sink import run_sink

    run_sink(settings)
