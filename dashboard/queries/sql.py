"""How the dashboard runs a query: bound parameters, and tables that may not exist.

Some tables the dashboard reads belong to other parts of the system and may
be missing from a store (an older schema, a part not deployed yet): the
rules' live levels, the WeChat Work deliveries. A page must then show an
empty state, not an error, so :func:`frame` turns "unknown table" into an
empty result when asked to. Every other failure propagates: a query that is
wrong should be seen, and a store that cannot be reached is the page's to
report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

MISSING_OBJECT_CODES = (60, 47, 81)
"""UNKNOWN_TABLE, UNKNOWN_IDENTIFIER (a column added by a later migration),
UNKNOWN_DATABASE."""


def is_missing_object(exc: Exception) -> bool:
    """Whether a query failed because a table or column does not exist (yet)."""
    if isinstance(exc, OperationalError) or not isinstance(exc, DatabaseError):
        return False
    text = str(exc)
    return any(f"Code: {code}." in text for code in MISSING_OBJECT_CODES) or (
        "UNKNOWN_TABLE" in text
    )


def frame(
    client: Client,
    sql: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    optional: bool = False,
    columns: Sequence[str] = (),
) -> pd.DataFrame:
    """The result as a DataFrame; with ``optional``, a missing table gives an
    empty frame with ``columns`` instead of an error."""
    try:
        result = client.query_df(sql, parameters=dict(parameters or {}))
    except DatabaseError as exc:
        if optional and is_missing_object(exc):
            return pd.DataFrame(columns=list(columns))
        raise
    if result.empty and columns and list(result.columns) != list(columns):
        return pd.DataFrame(columns=list(columns))  # no rows may come back without columns
    return result


def row(
    client: Client, sql: str, parameters: Mapping[str, Any] | None = None,
    *, optional: bool = False,
) -> Sequence[Any] | None:
    """The first row, or None (no row, or a missing table with ``optional``)."""
    try:
        result = client.query(sql, parameters=dict(parameters or {}))
    except DatabaseError as exc:
        if optional and is_missing_object(exc):
            return None
        raise
    return result.first_row if result.row_count else None
