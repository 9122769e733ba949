"""``ctower sql``: run one SQL statement against the store and print the result.

It goes through :func:`ctower.store.open_store`, so the same command works on a
ClickHouse server, on the embedded store while the sink owns it (through the
sink's store front) and on the embedded store with no sink running.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import ipaddress
import json
import sys
import unicodedata
import uuid
from collections.abc import Sequence
from typing import Any

import click
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError
from clickhouse_connect.driver.summary import QuerySummary

from ctower.cli import settings_or_exit, store_or_exit

MAX_CELL = 60
"""Table cells longer than this are cut (csv and json print everything)."""


@click.command("sql")
@click.argument("statement")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
    show_default=True, help="table: aligned columns; csv: RFC 4180 with a header; json: one array.",
)
@click.option("--dsn", default=None, help="Store to use instead of the configured one "
              "(chdb:///abs/path or http(s)://host:port).")
def sql(statement: str, fmt: str, dsn: str | None) -> None:
    """Run STATEMENT on the store and print the result ('-' reads it from stdin)."""
    if statement == "-":
        statement = sys.stdin.read()
    settings = settings_or_exit(**({"store_dsn": dsn} if dsn else {}))
    with store_or_exit(settings) as client:
        try:
            click.echo(run(client, statement, fmt), nl=False)
        except ClickHouseError as exc:
            raise click.ClickException(str(exc)) from None


def run(client: Client, statement: str, fmt: str) -> str:
    """The printed result of one statement: rows for a query, ``Ok.`` for the rest."""
    context = client.create_query_context(query=statement)
    if context.is_command or context.is_insert:
        # Without this, DDL would print clickhouse-connect's summary as if it were rows.
        answer = client.command(statement)
        if isinstance(answer, QuerySummary):
            written = answer.written_rows
            if not written:
                return "Ok.\n"
            return f"Ok. {written} row{'s' if written != 1 else ''} written.\n"
        if isinstance(answer, list | tuple):
            return "\t".join(str(v) for v in answer) + "\n"
        return f"{answer}\n" if answer != "" else ""
    result = client.query(statement)
    return render(list(result.column_names), [list(r) for r in result.result_rows], fmt)


def render(names: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> str:
    """The rows as text. An empty result may come without column names (chdb sends
    no header block for zero rows)."""
    if not names:
        return "[]\n" if fmt == "json" else ("" if fmt == "csv" else "(0 rows)\n")
    if fmt == "json":
        records = [dict(zip(names, (_plain(v) for v in row), strict=True)) for row in rows]
        return json.dumps(records, ensure_ascii=False, indent=2) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(names)
        writer.writerows([["" if v is None else _text(v) for v in row] for row in rows])
        return out.getvalue()
    return _table(names, rows)


def _table(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Aligned columns, numbers to the right, and a row count (as clickhouse-client).
    A single value (``SHOW CREATE TABLE``) prints whole, newlines and all."""
    if len(names) == 1 and len(rows) == 1 and isinstance(rows[0][0], str) and "\n" in rows[0][0]:
        return rows[0][0].rstrip("\n") + "\n"
    cells = [[_cut(_text(v)) for v in row] for row in rows]
    numeric = [
        bool(rows) and all(isinstance(row[i], int | float | decimal.Decimal) or row[i] is None
                           for row in rows)
        for i in range(len(names))
    ]
    widths = [max([_width(n), *(_width(r[i]) for r in cells)]) for i, n in enumerate(names)]

    def line(values: Sequence[str]) -> str:
        parts = [
            " " * (w - _width(v)) + v if num else v + " " * (w - _width(v))
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(list(names)), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out) + "\n"


def _width(text: str) -> int:
    """Terminal columns: CJK characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _cut(text: str) -> str:
    text = text.replace("\n", "\\n").replace("\t", "\\t")
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _text(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat(sep=" ") if isinstance(value, dt.datetime) else value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, list | tuple | dict):
        return json.dumps(_plain(value), ensure_ascii=False)
    return str(value)


def _plain(value: Any) -> Any:
    """A JSON-able twin: dates as ISO text, decimals and UUIDs as strings."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, decimal.Decimal | uuid.UUID | ipaddress.IPv4Address
                  | ipaddress.IPv6Address):
        return str(value)
    return _text(value)
