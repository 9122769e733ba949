"""The store front's protocol without the sockets: one ClickHouse HTTP request in,
one reply out, answered by the embedded (chdb) engine.

What is served is what our own clients send: clickhouse-connect's HTTP client
as :func:`ctower.store.open_store` makes it (no compression, no session) for
the dashboard, ``ctower sql``, the benchmarks, and the sink when it writes
through a front:

- the SQL of the ``query`` URL parameter followed by the body, or a
  multipart form (clickhouse-connect moves long bind parameters there);
  ``param_<name>`` values are bound server-side;
- other URL parameters are ClickHouse settings for that query, except the
  transport ones (``database``, ``query_id``, ``wait_end_of_query``,
  ``http_*``...), which steer an HTTP layer chdb does not have;
- ``INSERT ... FORMAT <fmt>`` followed by data (in the URL's statement or at
  the head of the body) goes to chdb's insert API, so binary formats
  (Native, Arrow) arrive intact;
- results in the format the SQL (or ``default_format``) asks for, with the
  ``X-ClickHouse-*`` headers the client reads; errors as ClickHouse's
  ``Code: N. DB::Exception: ...`` bodies with its HTTP status and
  ``X-ClickHouse-Exception-Code``, so the client raises its usual
  ``DatabaseError``.

What our clients never send is refused with a clear ``NOT_IMPLEMENTED``
rather than half served: sessions (``session_id``), compressed request
bodies (``Content-Encoding``), ClickHouse block compression
(``compress``/``decompress``). A client asking for a compressed response
(``enable_http_compression=1``) gets a plain one, which HTTP allows and
clickhouse-connect reads.

Each request runs on its own chdb connection to the one in-process engine:
chdb runs queries of different connections in parallel and releases the GIL
while doing so, so requests need no global lock. Connections are pooled by
(database, settings), which clickhouse-connect keeps constant per client, so a
typical request pays neither a connect nor a ``SET``. Results are
materialised before the reply (ClickHouse's ``wait_end_of_query=1``): an
error always arrives as an HTTP error, never in the middle of a body.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import chdb

from ctower.devstack.store_front.protocol import (
    ABORTED,
    BAD_ARGUMENTS,
    NOT_IMPLEMENTED,
    QUERY_IS_TOO_LARGE,
    SYNTAX_ERROR,
    UNKNOWN_FORMAT,
    InsertHead,
    StoreQueryError,
    output_format,
    split_insert,
    statement_kind,
)
from ctower.store import STORE_PATH_HEADER

logger = logging.getLogger(__name__)

MAX_QUERY_BYTES = 64 * 1024 * 1024
"""Largest non-INSERT statement accepted (data after ``INSERT ... FORMAT`` is not counted)."""
MAX_BODY_BYTES = 512 * 1024 * 1024
"""Largest request body: an insert is held whole before chdb takes it (a sink batch
is a few MB)."""
HEAD_BYTES = 256 * 1024
"""How far into a request the ``INSERT ... FORMAT x`` head is looked for (max_query_size)."""
POOL_IDLE_MAX = 32
"""Idle pooled chdb connections kept; more are closed when released."""
INSERT_PIECE = 1024 * 1024
"""Insert data goes to chdb this much at a time."""

# URL parameters that steer the HTTP layer rather than the query. ClickHouse
# reserves the first group; the second are real settings whose only effect is on
# HTTP, which chdb has none of.
_TRANSPORT_PARAMS = frozenset({
    "query", "database", "default_format", "user", "password", "quota_key", "query_id",
    "stacktrace", "role", "buffer_size", "wait_end_of_query", "client_protocol_version",
    "session_timeout", "session_check", "close_session", "compress", "decompress",
    "enable_http_compression", "send_progress_in_http_headers",
    "cancel_http_readonly_queries_on_client_close", "add_http_cors_header",
})
_TRANSPORT_PREFIXES = ("http_", "param_")
# chdb's Python API maps these pseudo-format names to DataFrames; they are not wire formats.
_PSEUDO_FORMATS = frozenset({"dataframe", "datastore", "arrowtable"})
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_CONTENT_TYPES = {
    "native": "application/octet-stream",
    "rowbinary": "application/octet-stream",
    "arrow": "application/octet-stream",
    "arrowstream": "application/octet-stream",
    "parquet": "application/octet-stream",
    "tabseparated": "text/tab-separated-values; charset=UTF-8",
    "tsv": "text/tab-separated-values; charset=UTF-8",
    "csv": "text/csv; charset=UTF-8; header=absent",
    "csvwithnames": "text/csv; charset=UTF-8; header=present",
}
# Statements that produce a result set even when it is empty; the client turns an
# X-ClickHouse-Format header into "" and its absence into a summary.
_RESULT_KINDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN",
                           "CHECK", "KILL", "WATCH"})
# Statements after which a pooled connection is still clean.
_CLEAN_KINDS = _RESULT_KINDS | {"INSERT"}


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _check_setting_name(name: str) -> None:
    if not _SETTING_NAME.fullmatch(name):
        raise StoreQueryError(BAD_ARGUMENTS, f"Invalid setting name {name!r}")


def refuse_unsupported(params: Mapping[str, str], headers: Mapping[str, str]) -> None:
    """Fail a request that relies on what the front does not serve, before it runs.

    Served half-way, each would answer wrongly rather than fail: a session's
    ``SET`` forgotten by the next request, a compressed body parsed as SQL.
    """
    if params.get("session_id"):
        raise StoreQueryError(
            NOT_IMPLEMENTED,
            "Sessions (session_id) are not supported by the store front; create the "
            "clickhouse-connect client with autogenerate_session_id=False "
            "(ctower.store.open_store does)",
        )
    encoding = headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise StoreQueryError(
            NOT_IMPLEMENTED,
            f"Compressed request bodies (Content-Encoding: {encoding}) are not supported by "
            "the store front; create the clickhouse-connect client with compress=False "
            "(ctower.store.open_store does)",
        )
    if _truthy(params.get("decompress")) or _truthy(params.get("compress")):
        raise StoreQueryError(
            NOT_IMPLEMENTED,
            "ClickHouse block compression (compress/decompress=1) is not supported by "
            "the store front",
        )


@dataclass
class Lease:
    """A pooled connection lent to one request; ``dirty`` = do not pool it again."""

    conn: Any
    dirty: bool = False


class ConnectionPool:
    """chdb connections to the one in-process engine, pooled by (database, settings)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.closed = False
        self._connect_lock = threading.Lock()
        self._anchor = self._connect()
        # The anchor keeps the engine up for the server's lifetime, whatever the owner
        # does with its own client.
        version_tz = self._anchor.query("SELECT version(), timezone()", "TabSeparated").bytes()
        self.version, self.timezone = version_tz.decode().strip().split("\t")
        self._pool: dict[tuple[Any, ...], list[Any]] = {}
        self._idle = 0
        self._pool_lock = threading.Lock()

    def _connect(self) -> Any:
        with self._connect_lock:
            if self.closed:
                # A late request must not bring the engine back up in a stopped front.
                raise StoreQueryError(ABORTED, "The store front is shutting down")
            return chdb.connect(self.path)

    @staticmethod
    def run(conn: Any, sql: str | bytes, fmt: str = "TabSeparated",
            params: Mapping[str, str] | None = None) -> Any:
        try:
            return conn.query(sql, fmt, params=dict(params or {}))
        except Exception as exc:
            raise StoreQueryError.from_engine(exc) from exc

    def _prepare(self, database: str | None, settings: Mapping[str, str]) -> Any:
        conn = self._connect()
        try:
            if database:
                self.run(conn, f"USE `{database.replace('`', '``')}`")
            for name, value in settings.items():
                _check_setting_name(name)
                self.run(conn, f"SET {name} = {_quote(value)}")
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def lease(self, database: str | None, settings: Mapping[str, str]) -> Iterator[Lease]:
        """A connection with these settings, alone for this request.

        A request that changed the connection's own state (``SET``, ``USE``,
        temporary tables) flags the lease dirty and the connection is closed
        rather than pooled: without a session that state must not outlive it.
        """
        key = (database, tuple(sorted(settings.items())))
        with self._pool_lock:
            idle = self._pool.get(key)
            conn = idle.pop() if idle else None
            if conn is not None:
                self._idle -= 1
        if conn is None:
            conn = self._prepare(database, settings)
        lease = Lease(conn)
        try:
            yield lease
        except BaseException:
            lease.dirty = True
            raise
        finally:
            self._give_back(key, conn, lease.dirty)

    def _give_back(self, key: tuple[Any, ...], conn: Any, dirty: bool) -> None:
        with self._pool_lock:
            if not dirty and not self.closed and self._idle < POOL_IDLE_MAX:
                self._pool.setdefault(key, []).append(conn)
                self._idle += 1
                return
        conn.close()

    def close(self) -> None:
        with self._connect_lock, self._pool_lock:
            self.closed = True
            conns = [c for idle in self._pool.values() for c in idle]
            self._pool.clear()
            self._idle = 0
        for conn in [*conns, self._anchor]:
            with suppress(Exception):
                conn.close()


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]


class StoreFront:
    """The protocol: a request's method, URL parameters, headers and body in, a reply out."""

    def __init__(self, pool: ConnectionPool, store_path: str) -> None:
        self.pool = pool
        self.store_path = store_path
        self.display_name = socket.gethostname()

    def base_headers(self, query_id: str) -> dict[str, str]:
        return {
            "X-ClickHouse-Server-Display-Name": self.display_name,
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": self.pool.timezone,
            STORE_PATH_HEADER: self.store_path,
        }

    def error(self, exc: StoreQueryError, query_id: str | None = None) -> Reply:
        text = exc.message
        if "(version " not in text:
            text = f"{text} (version {self.pool.version})"
        headers = self.base_headers(query_id or str(uuid.uuid4()))
        headers["Content-Type"] = "text/plain; charset=UTF-8"
        headers["X-ClickHouse-Exception-Code"] = str(exc.code)
        return Reply(exc.http_status, (text.rstrip() + "\n").encode(), headers)

    def execute(self, method: str, params: Mapping[str, str], headers: Mapping[str, str],
                body: bytes) -> Reply:
        query_id = params.get("query_id") or str(uuid.uuid4())
        try:
            return self._execute(method, params, headers, body, query_id)
        except StoreQueryError as exc:
            return self.error(exc, query_id)
        except Exception as exc:  # a bug of ours still answers as ClickHouse would
            logger.exception("store front: unexpected failure")
            return self.error(StoreQueryError.from_engine(exc), query_id)

    def _execute(self, method: str, params: Mapping[str, str], headers: Mapping[str, str],
                 body: bytes, query_id: str) -> Reply:
        refuse_unsupported(params, headers)
        binds = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
        settings = {
            k: v for k, v in params.items()
            if k not in _TRANSPORT_PARAMS and not k.startswith(_TRANSPORT_PREFIXES)
        }
        if method == "GET":
            settings.setdefault("readonly", "2")  # as ClickHouse: GET never writes
        default_format = params.get("default_format") or "TabSeparated"
        if default_format.lower() in _PSEUDO_FORMATS:
            raise StoreQueryError(UNKNOWN_FORMAT, f"Unknown format {default_format}")
        query_param = params.get("query", "")
        text = (query_param + "\n").encode() + body if query_param else body
        if not text.strip():
            raise StoreQueryError(SYNTAX_ERROR, "Empty query")
        with self.pool.lease(params.get("database") or None, settings) as lease:
            insert = split_insert(text[:HEAD_BYTES].decode("latin-1"))
            if insert is not None:
                return self._insert(lease, insert, memoryview(text)[insert.data_start:], query_id)
            if len(text) > MAX_QUERY_BYTES:
                raise StoreQueryError(
                    QUERY_IS_TOO_LARGE, f"Query is too large ({len(text)} bytes), max "
                    f"{MAX_QUERY_BYTES}")
            return self._query(lease, text, binds, default_format, settings, query_id)

    def _insert(self, lease: Lease, insert: InsertHead, data: memoryview,
                query_id: str) -> Reply:
        try:
            with lease.conn.send_insert(insert.sql, insert.fmt) as inserter:
                for start in range(0, len(data), INSERT_PIECE):
                    inserter.append(bytes(data[start : start + INSERT_PIECE]))
                result = inserter.finish()
        except Exception as exc:
            raise StoreQueryError.from_engine(exc) from exc
        summary = {
            "read_rows": str(result.rows_written),
            "read_bytes": str(result.bytes_written),
            "written_rows": str(result.rows_written),
            "written_bytes": str(result.bytes_written),
            "total_rows_to_read": "0",
            "result_rows": str(result.rows_written),
            "result_bytes": str(result.bytes_written),
            "elapsed_ns": str(int(result.elapsed * 1e9)),
        }
        headers = self.base_headers(query_id)
        headers["X-ClickHouse-Summary"] = json.dumps(summary, separators=(",", ":"))
        headers["Content-Type"] = "text/plain; charset=UTF-8"
        return Reply(200, b"", headers)

    def _query(self, lease: Lease, raw: bytes, binds: Mapping[str, str], default_format: str,
               settings: Mapping[str, str], query_id: str) -> Reply:
        try:
            sql: str | bytes = raw.decode("utf-8")
        except UnicodeDecodeError:
            sql = raw  # binary binds embed bytes; chdb takes bytes as they are
        text = sql if isinstance(sql, str) else raw.decode("latin-1")
        kind = statement_kind(text)
        lease.dirty = kind not in _CLEAN_KINDS
        result = self.pool.run(lease.conn, sql, default_format, binds)
        body = result.bytes() or b""
        fmt = output_format(text)
        headers = self.base_headers(query_id)
        if body or fmt or kind in _RESULT_KINDS:
            fmt = fmt or default_format
            headers["X-ClickHouse-Format"] = fmt
            content_type = _CONTENT_TYPES.get(fmt.lower(), "text/plain; charset=UTF-8")
            if fmt.lower().startswith("json"):
                content_type = "application/json; charset=UTF-8"
            headers["Content-Type"] = content_type
        else:
            headers["Content-Type"] = "text/plain; charset=UTF-8"
        tz = settings.get("session_timezone")
        if tz:
            headers["X-ClickHouse-Timezone"] = tz
        summary = {
            "read_rows": str(result.rows_read()),
            "read_bytes": str(result.bytes_read()),
            "written_rows": str(result.rows_written()),
            "written_bytes": str(result.bytes_written()),
            "total_rows_to_read": str(result.rows_read()),
            "result_bytes": str(len(body)),
            "elapsed_ns": str(int(result.elapsed() * 1e9)),
        }
        headers["X-ClickHouse-Summary"] = json.dumps(summary, separators=(",", ":"))
        return Reply(200, body, headers)
