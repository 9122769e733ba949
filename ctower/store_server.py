"""ClickHouse's HTTP interface in front of the embedded (chdb) store.

Only one process can open a chdb directory, so the process that owns it (the
sink) also answers ClickHouse's HTTP protocol on 127.0.0.1. The dashboard and
``ctower sql`` then use the ordinary clickhouse-connect HTTP client, the same
code that talks to a real ClickHouse server, and the embedded mode needs no
second client path.

The subset served is what clickhouse-connect's HTTP client sends:

- ``GET /ping`` and ``GET /`` answer ``Ok.``.
- ``POST /`` (or ``GET /?query=``) runs the SQL of the ``query`` URL parameter
  followed by the body (multipart forms too: clickhouse-connect moves long
  bind parameters there). ``param_<name>`` values are bound server-side.
- Other URL parameters are ClickHouse settings for that query, except the
  transport ones (``database``, ``session_id``, ``query_id``, ``http_*``...).
- ``INSERT ... FORMAT <fmt>`` followed by data is streamed into chdb's own
  streaming insert, decompressing ``Content-Encoding`` (lz4, zstd, gzip,
  deflate) on the way, so a large insert is never held whole in memory.
- Results come back in the format the SQL (or ``default_format``) asks for,
  with the ``X-ClickHouse-*`` headers the client reads; the response is
  compressed only when the request sets ``enable_http_compression=1`` and
  accepts an encoding we produce, as ClickHouse does.
- Errors are ``Code: N. DB::Exception: ...`` bodies with ClickHouse's HTTP
  status and the ``X-ClickHouse-Exception-Code`` header, so the client raises
  its usual ``DatabaseError``.
- ``session_id`` gives a session (its own chdb connection) that keeps ``SET``,
  ``USE`` and temporary tables between requests, locked against concurrent use.

Each request runs on its own chdb connection to the one in-process engine:
chdb runs queries of different connections in parallel and releases the GIL
while doing so, so requests need no global lock. Connections are pooled by
(database, settings), which clickhouse-connect keeps constant per client, so a
typical request pays neither a connect nor a ``SET``.

Results are materialised before the response starts (ClickHouse's
``wait_end_of_query=1``): an error always arrives as an HTTP error, never
in the middle of a body, at the cost of holding one result in memory.
"""

from __future__ import annotations

import email.parser
import email.policy
import gzip
import json
import logging
import os
import re
import socket
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import chdb

from ctower.settings import Settings, SettingsError
from ctower.store import (
    STORE_PATH_HEADER,
    STORE_URL_FILE,
    StoreUnavailable,
    describe_process,
    lock_holder,
)

logger = logging.getLogger(__name__)

# --- ClickHouse error codes used here (names as ClickHouse spells them) ----------
BAD_ARGUMENTS = 36
NOT_IMPLEMENTED = 48
SYNTAX_ERROR = 62
UNKNOWN_COMPRESSION_METHOD = 89
UNKNOWN_FORMAT = 73
ABORTED = 236
QUERY_IS_TOO_LARGE = 229
CANNOT_DECOMPRESS = 271
SESSION_NOT_FOUND = 372
SESSION_IS_LOCKED = 373
UNKNOWN_EXCEPTION = 1002

_ERROR_NAMES = {
    BAD_ARGUMENTS: "BAD_ARGUMENTS",
    NOT_IMPLEMENTED: "NOT_IMPLEMENTED",
    SYNTAX_ERROR: "SYNTAX_ERROR",
    UNKNOWN_COMPRESSION_METHOD: "UNKNOWN_COMPRESSION_METHOD",
    UNKNOWN_FORMAT: "UNKNOWN_FORMAT",
    ABORTED: "ABORTED",
    QUERY_IS_TOO_LARGE: "QUERY_IS_TOO_LARGE",
    CANNOT_DECOMPRESS: "CANNOT_DECOMPRESS",
    SESSION_NOT_FOUND: "SESSION_NOT_FOUND",
    SESSION_IS_LOCKED: "SESSION_IS_LOCKED",
    UNKNOWN_EXCEPTION: "UNKNOWN_EXCEPTION",
}

# ClickHouse's exceptionCodeToHTTPStatus (src/Server/HTTP/exceptionCodeToHTTPStatus.cpp),
# keyed by the error name chdb puts at the end of every message. 503 is left out on
# purpose: clickhouse-connect retries 503, and a missing file will not appear on retry.
_STATUS_BY_NAME: dict[str, int] = {
    **dict.fromkeys(("REQUIRED_PASSWORD",), 401),
    **dict.fromkeys(
        ("UNKNOWN_USER", "WRONG_PASSWORD", "AUTHENTICATION_FAILED", "SET_NON_GRANTED_ROLE",
         "ACCESS_DENIED"), 403),
    **dict.fromkeys(
        ("BAD_ARGUMENTS", "CANNOT_COMPILE_REGEXP", "CANNOT_PARSE_TEXT",
         "CANNOT_PARSE_ESCAPE_SEQUENCE", "CANNOT_PARSE_QUOTED_STRING", "CANNOT_PARSE_DATE",
         "CANNOT_PARSE_DATETIME", "CANNOT_PARSE_NUMBER", "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING",
         "CANNOT_PARSE_IPV4", "CANNOT_PARSE_IPV6", "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
         "CANNOT_PARSE_UUID", "DUPLICATE_COLUMN", "ILLEGAL_COLUMN", "UNKNOWN_ELEMENT_IN_AST",
         "UNKNOWN_TYPE_OF_AST_NODE", "THERE_IS_NO_COLUMN", "TOO_DEEP_AST", "TOO_BIG_AST",
         "UNEXPECTED_AST_STRUCTURE", "SYNTAX_ERROR", "INCORRECT_DATA", "TYPE_MISMATCH",
         "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE"), 400),
    **dict.fromkeys(
        ("UNKNOWN_TABLE", "UNKNOWN_FUNCTION", "UNKNOWN_IDENTIFIER", "UNKNOWN_TYPE",
         "UNKNOWN_STORAGE", "UNKNOWN_DATABASE", "UNKNOWN_SETTING", "UNKNOWN_DIRECTION_OF_SORTING",
         "UNKNOWN_AGGREGATE_FUNCTION", "UNKNOWN_FORMAT", "UNKNOWN_DATABASE_ENGINE",
         "UNKNOWN_TYPE_OF_QUERY", "UNKNOWN_ROLE"), 404),
    "QUERY_IS_TOO_LARGE": 413,
    "NOT_IMPLEMENTED": 501,
    "HTTP_LENGTH_REQUIRED": 411,
    "TIMEOUT_EXCEEDED": 408,
    "UNSUPPORTED_MEDIA_TYPE": 415,
}

# URL parameters that steer the HTTP layer rather than the query. ClickHouse
# reserves the first group; the second are real settings whose only effect is on
# HTTP, which chdb has none of.
_TRANSPORT_PARAMS = frozenset({
    "query", "database", "default_format", "user", "password", "quota_key", "query_id",
    "stacktrace", "role", "buffer_size", "wait_end_of_query", "session_id",
    "session_timeout", "session_check", "close_session", "compress", "decompress",
    "client_protocol_version",
    "enable_http_compression", "send_progress_in_http_headers",
    "cancel_http_readonly_queries_on_client_close", "add_http_cors_header",
})
_TRANSPORT_PREFIXES = ("http_", "param_")
# chdb's Python API maps these pseudo-format names to DataFrames; they are not wire formats.
_PSEUDO_FORMATS = frozenset({"dataframe", "datastore", "arrowtable"})

_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CODE_RE = re.compile(r"Code: (\d+)\.")
_NAME_RE = re.compile(r"\(([A-Z][A-Z0-9_]+)\)(?: \(version [^)]*\))?\s*$")

MAX_QUERY_BYTES = 64 * 1024 * 1024
"""Largest non-INSERT statement accepted (data after ``INSERT ... FORMAT`` is not counted)."""
HEAD_BYTES = 256 * 1024
"""How far into a request the ``INSERT ... FORMAT x`` head is looked for (max_query_size)."""
POOL_IDLE_MAX = 32
"""Idle pooled chdb connections kept; more are closed when released."""
SESSION_TIMEOUT_DEFAULT = 60.0
SESSION_TIMEOUT_MAX = 3600.0
READ_PIECE = 1024 * 1024


class StoreQueryError(Exception):
    """A ClickHouse-style failure: code, name and the ``Code: N. DB::Exception`` text."""

    def __init__(self, code: int, message: str, name: str | None = None) -> None:
        self.code = code
        self.name = name or _ERROR_NAMES.get(code, "UNKNOWN_EXCEPTION")
        if not message.startswith("Code: "):
            message = f"Code: {code}. DB::Exception: {message}. ({self.name})"
        self.message = message
        super().__init__(message)

    @classmethod
    def from_engine(cls, exc: BaseException) -> StoreQueryError:
        """Wrap a chdb failure, keeping ClickHouse's own code and text."""
        if isinstance(exc, StoreQueryError):
            return exc
        text = str(exc)
        start = text.find("Code: ")
        if start < 0:
            return cls(UNKNOWN_EXCEPTION, f"{type(exc).__name__}: {text}")
        text = text[start:].strip()
        code_match = _CODE_RE.match(text)
        name_match = _NAME_RE.search(text)
        code = int(code_match.group(1)) if code_match else UNKNOWN_EXCEPTION
        return cls(code, text, name_match.group(1) if name_match else None)

    @property
    def http_status(self) -> int:
        return _STATUS_BY_NAME.get(self.name, 500)


# --- SQL scanning -------------------------------------------------------------------
# Just enough lexing to find keywords outside strings, quoted names, comments and
# parentheses: the statement kind, an INSERT's FORMAT and a query's output FORMAT.
_TOKEN = re.compile(
    r"""(?P<ws>\s+)
      |(?P<comment>--[^\n]*|\#[ !][^\n]*|/\*.*?(?:\*/|\Z))
      |(?P<quoted>'(?:[^'\\]|\\.|'')*(?:'|\Z)|"(?:[^"\\]|\\.|"")*(?:"|\Z)|`(?:[^`\\]|\\.|``)*(?:`|\Z))
      |(?P<word>[A-Za-z_][A-Za-z0-9_]*)
      |(?P<open>\()
      |(?P<close>\))
      |(?P<other>.)""",
    re.S | re.X,
)


@dataclass(frozen=True)
class _Word:
    text: str
    start: int
    end: int
    depth: int


def _words(sql: str) -> Iterator[_Word | None]:
    """Words outside quotes and comments, with their paren depth; None for other tokens."""
    depth = 0
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup
        if kind in ("ws", "comment"):
            continue
        if kind == "word":
            yield _Word(match.group().upper(), match.start(), match.end(), depth)
            continue
        if kind == "open":
            depth += 1
        elif kind == "close":
            depth = max(0, depth - 1)
        yield None


def statement_kind(sql: str) -> str:
    """The first keyword (``SELECT``, ``INSERT``...), skipping leading parentheses."""
    for word in _words(sql[:4096]):
        if word is not None:
            return word.text
    return ""


@dataclass(frozen=True)
class InsertHead:
    sql: str
    """The statement without ``FORMAT`` (``INSERT INTO t (a, b) [SETTINGS ...]``)."""
    fmt: str
    data_start: int
    """Offset of the first data byte in the scanned text."""


def split_insert(text: str) -> InsertHead | None:
    """The head of ``INSERT ... FORMAT fmt <data>``, or None for any other statement.

    The data starts after the first newline following the format name, or after
    the blanks if there is no newline, as in ClickHouse's ParserInsertQuery.
    ``INSERT ... VALUES``/``SELECT``/``FROM INFILE`` return None: chdb runs those
    as ordinary queries.
    """
    words = _words(text)
    first = next((w for w in words if w is not None), None)
    if first is None or first.text != "INSERT":
        return None
    pending_format: _Word | None = None
    for word in words:
        if pending_format is not None:
            if word is None:
                return None
            end = word.end
            while end < len(text) and text[end] in " \t\f":
                end += 1
            if text.startswith("\r\n", end):
                end += 2
            elif text.startswith("\n", end):
                end += 1
            head = text[: pending_format.start].rstrip()
            return InsertHead(head, text[word.start : word.end], end)
        if word is None or word.depth:
            continue
        if word.text in ("VALUES", "SELECT", "WITH", "INFILE"):
            return None
        if word.text == "FORMAT":
            pending_format = word
    return None


def output_format(sql: str) -> str | None:
    """The format named by the statement's own top-level ``FORMAT`` clause, if any."""
    found: str | None = None
    pending = False
    for word in _words(sql):
        if pending:
            found = sql[word.start : word.end] if word is not None else None
            pending = False
        if word is not None and word.depth == 0 and word.text == "FORMAT":
            pending = True
    return found


# --- request bodies --------------------------------------------------------------
class _Decompressor(Protocol):
    eof: bool
    unused_data: bytes

    def decompress(self, data: bytes) -> bytes: ...


def _zstd() -> Any:
    """The zstd module clickhouse-connect itself uses (PEP 784's API): the
    standard library's from Python 3.14, else the ``backports.zstd`` package,
    a declared dependency - never clickhouse-connect's private helpers."""
    if sys.version_info >= (3, 14):
        from compression import zstd  # type: ignore[import-not-found]
    else:
        from backports import zstd
    return zstd


def _decompressor_factory(encoding: str) -> Callable[[], _Decompressor]:
    if encoding == "lz4":
        import lz4.frame

        return lz4.frame.LZ4FrameDecompressor
    if encoding == "zstd":
        return _zstd().ZstdDecompressor
    if encoding in ("gzip", "x-gzip"):
        return lambda: zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return lambda: zlib.decompressobj(wbits=zlib.MAX_WBITS)
    raise StoreQueryError(
        UNKNOWN_COMPRESSION_METHOD, f"Unknown Content-Encoding of the request body: {encoding}"
    )


def decoded(chunks: Iterator[bytes], encoding: str) -> Iterator[bytes]:
    """The request body without its Content-Encoding, frame after frame.

    clickhouse-connect compresses each insert block as its own lz4/zstd frame,
    so a body is a sequence of frames, not one.
    """
    encoding = encoding.strip().lower()
    if encoding in ("", "identity", "none"):
        yield from chunks
        return
    make = _decompressor_factory(encoding)
    decompressor = make()
    started = False
    try:
        for chunk in chunks:
            data = chunk
            while data:
                started = True
                out = decompressor.decompress(data)
                if out:
                    yield out
                if decompressor.eof:
                    data = decompressor.unused_data
                    decompressor = make()
                    started = False
                else:
                    data = b""
    except StoreQueryError:
        raise
    except Exception as exc:
        message = f"Cannot decompress the {encoding} body: {exc}"
        raise StoreQueryError(CANNOT_DECOMPRESS, message) from exc
    if started:
        raise StoreQueryError(CANNOT_DECOMPRESS, f"The {encoding} body ends inside a frame")


class _Input:
    """The statement text as ClickHouse sees it: the ``query`` parameter, a newline,
    then the body; readable a head at a time so INSERT data can stream past."""

    def __init__(self, prefix: bytes, body: Iterator[bytes]) -> None:
        self._buffer = bytearray(prefix)
        self._body = body
        self._done = False

    def _fill(self, size: int) -> None:
        while len(self._buffer) < size and not self._done:
            chunk = next(self._body, None)
            if chunk is None:
                self._done = True
            else:
                self._buffer += chunk

    def head(self, size: int) -> bytes:
        self._fill(size)
        return bytes(self._buffer[:size])

    def skip(self, count: int) -> None:
        del self._buffer[:count]

    def chunks(self) -> Iterator[bytes]:
        if self._buffer:
            yield bytes(self._buffer)
            self._buffer.clear()
        if not self._done:
            yield from self._body
            self._done = True

    def read_all(self, limit: int) -> bytes:
        self._fill(limit + 1)
        if len(self._buffer) > limit:
            raise StoreQueryError(
                QUERY_IS_TOO_LARGE, f"Query is too large ({len(self._buffer)}+ bytes), max {limit}"
            )
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


def _multipart_fields(content_type: str, body: bytes) -> dict[str, str]:
    """Plain fields of a multipart form (clickhouse-connect sends long binds this way)."""
    raw = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_filename():
            raise StoreQueryError(
                NOT_IMPLEMENTED, "External data (file fields) is not supported by the store front"
            )
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            fields[name] = payload.decode("utf-8") if isinstance(payload, bytes) else ""
    return fields


# --- the engine ------------------------------------------------------------------------
def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _check_setting_name(name: str) -> None:
    if not _SETTING_NAME.fullmatch(name):
        raise StoreQueryError(BAD_ARGUMENTS, f"Invalid setting name {name!r}")


@dataclass
class _Session:
    conn: Any
    timeout: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    expires: float = 0.0
    database: str | None = None
    applied: dict[str, str] = field(default_factory=dict)
    """URL settings currently SET on the connection for the running request."""
    baseline: dict[str, tuple[str, bool]] = field(default_factory=dict)
    """Session values (value, changed) of those settings before we applied them."""


class _Engine:
    """chdb connections to the one in-process engine: pooled and per session."""

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
        self._sessions: dict[str, _Session] = {}
        self._sessions_lock = threading.Lock()

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
    def pooled(self, database: str | None, settings: Mapping[str, str]) -> Iterator[_Lease]:
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
        lease = _Lease(conn)
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

    @contextmanager
    def session(self, session_id: str, timeout: float, check: bool, close: bool,
                database: str | None, settings: Mapping[str, str]) -> Iterator[_Lease]:
        """The session's connection, with this request's settings applied for it alone."""
        now = time.monotonic()
        self._expire_sessions(now)
        with self._sessions_lock:
            session = self._sessions.get(session_id)
            if session is None:
                if check:
                    raise StoreQueryError(SESSION_NOT_FOUND, f"Session {session_id} not found")
                session = _Session(self._connect(), timeout)
                self._sessions[session_id] = session
            if not session.lock.acquire(blocking=False):
                raise StoreQueryError(
                    SESSION_IS_LOCKED, f"Session {session_id} is locked by a concurrent client"
                )
        try:
            session.timeout = timeout
            if database and database != session.database:
                self.run(session.conn, f"USE `{database.replace('`', '``')}`")
                session.database = database
            self._apply_session_settings(session, settings)
            lease = _Lease(session.conn)
            yield lease
            if lease.dirty:
                # The statement may have SET some of the settings we track: what is in
                # the session now becomes the baseline those settings return to.
                session.applied.clear()
                session.baseline.clear()
        finally:
            session.expires = time.monotonic() + session.timeout
            session.lock.release()
            if close:
                self._drop_session(session_id)

    def _apply_session_settings(self, session: _Session, wanted: Mapping[str, str]) -> None:
        for name in [n for n in session.applied if n not in wanted]:
            value, changed = session.baseline.pop(name)
            self.run(session.conn, f"SET {name} = {_quote(value) if changed else 'DEFAULT'}")
            del session.applied[name]
        todo = {n: v for n, v in wanted.items() if session.applied.get(n) != v}
        if not todo:
            return
        for name in todo:
            _check_setting_name(name)
        fresh = [n for n in todo if n not in session.baseline]
        if fresh:
            names = ", ".join(_quote(n) for n in fresh)
            rows = self.run(
                session.conn,
                f"SELECT name, value, changed FROM system.settings WHERE name IN ({names})",
                "JSONEachRow",
            ).bytes()
            for line in rows.splitlines():
                row = json.loads(line)
                session.baseline[row["name"]] = (row["value"], bool(row["changed"]))
            for name in fresh:
                session.baseline.setdefault(name, ("", False))
        for name, value in todo.items():
            self.run(session.conn, f"SET {name} = {_quote(value)}")
            session.applied[name] = value

    def _expire_sessions(self, now: float) -> None:
        with self._sessions_lock:
            stale = [
                sid for sid, s in self._sessions.items()
                if s.expires and s.expires < now and not s.lock.locked()
            ]
        for sid in stale:
            self._drop_session(sid)

    def _drop_session(self, session_id: str) -> None:
        with self._sessions_lock:
            session = self._sessions.pop(session_id, None)
        if session is not None:
            with suppress(Exception):
                session.conn.close()

    def close(self) -> None:
        with self._connect_lock, self._pool_lock:
            self.closed = True
            conns = [c for idle in self._pool.values() for c in idle]
            self._pool.clear()
            self._idle = 0
        with self._sessions_lock:
            conns += [s.conn for s in self._sessions.values()]
            self._sessions.clear()
        for conn in [*conns, self._anchor]:
            with suppress(Exception):
                conn.close()


@dataclass
class _Lease:
    conn: Any
    dirty: bool = False


# --- the protocol ---------------------------------------------------------------------------
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


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _compress(body: bytes, accept: str) -> tuple[bytes, str | None]:
    """Compress as ClickHouse would with enable_http_compression=1: the cheapest of
    the accepted encodings, as one frame (the client decodes a single frame)."""
    offered = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    if "lz4" in offered:
        import lz4.frame

        return lz4.frame.compress(body), "lz4"
    if "zstd" in offered:
        return _zstd().compress(body), "zstd"
    if "gzip" in offered:
        return gzip.compress(body, compresslevel=3), "gzip"
    if "deflate" in offered:
        return zlib.compress(body, 3), "deflate"
    return body, None


class StoreFront:
    """The protocol without the sockets: one HTTP request in, one reply out."""

    def __init__(self, engine: _Engine, store_path: str) -> None:
        self.engine = engine
        self.store_path = store_path
        self.display_name = socket.gethostname()

    def base_headers(self, query_id: str) -> dict[str, str]:
        return {
            "X-ClickHouse-Server-Display-Name": self.display_name,
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": self.engine.timezone,
            STORE_PATH_HEADER: self.store_path,
        }

    def error(self, exc: StoreQueryError, query_id: str) -> Reply:
        text = exc.message
        if "(version " not in text:
            text = f"{text} (version {self.engine.version})"
        headers = self.base_headers(query_id)
        headers["Content-Type"] = "text/plain; charset=UTF-8"
        headers["X-ClickHouse-Exception-Code"] = str(exc.code)
        return Reply(exc.http_status, (text.rstrip() + "\n").encode(), headers)

    def execute(self, method: str, params: Mapping[str, str], headers: Mapping[str, str],
                body: Iterator[bytes]) -> Reply:
        query_id = params.get("query_id") or str(uuid.uuid4())
        try:
            return self._execute(method, params, headers, body, query_id)
        except StoreQueryError as exc:
            return self.error(exc, query_id)
        except (ConnectionError, TimeoutError):
            raise  # the client went away mid-body: nobody to answer
        except Exception as exc:  # a bug of ours still answers as ClickHouse would
            logger.exception("store front: unexpected failure")
            return self.error(StoreQueryError.from_engine(exc), query_id)

    def _execute(self, method: str, params: Mapping[str, str], headers: Mapping[str, str],
                 body: Iterator[bytes], query_id: str) -> Reply:
        if _truthy(params.get("decompress")) or _truthy(params.get("compress")):
            raise StoreQueryError(
                NOT_IMPLEMENTED,
                "ClickHouse block compression (compress/decompress=1) is not supported by "
                "the store front; use Content-Encoding or enable_http_compression",
            )
        binds = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
        settings = {
            k: v for k, v in params.items()
            if k not in _TRANSPORT_PARAMS and not k.startswith(_TRANSPORT_PREFIXES)
        }
        session_id = params.get("session_id") or None
        if method == "GET" and session_id is None:
            settings.setdefault("readonly", "2")  # as ClickHouse: GET never writes
        default_format = params.get("default_format") or "TabSeparated"
        if default_format.lower() in _PSEUDO_FORMATS:
            raise StoreQueryError(UNKNOWN_FORMAT, f"Unknown format {default_format}")
        query_param = params.get("query", "")
        prefix = (query_param + "\n").encode() if query_param else b""
        source = _Input(prefix, decoded(body, headers.get("Content-Encoding", "")))
        head_text = source.head(HEAD_BYTES).decode("latin-1")
        if not head_text.strip():
            raise StoreQueryError(SYNTAX_ERROR, "Empty query")
        database = params.get("database") or None
        with self._lease(session_id, params, database, settings) as lease:
            insert = split_insert(head_text)
            if insert is not None:
                source.skip(insert.data_start)
                return self._insert(lease, insert, source, query_id)
            return self._query(lease, source, binds, default_format, settings, params,
                               headers, query_id)

    @contextmanager
    def _lease(self, session_id: str | None, params: Mapping[str, str], database: str | None,
               settings: Mapping[str, str]) -> Iterator[_Lease]:
        if session_id is None:
            with self.engine.pooled(database, settings) as lease:
                yield lease
            return
        try:
            timeout = float(params.get("session_timeout") or SESSION_TIMEOUT_DEFAULT)
        except ValueError:
            raise StoreQueryError(BAD_ARGUMENTS, "session_timeout must be a number") from None
        if not 0 <= timeout <= SESSION_TIMEOUT_MAX:
            raise StoreQueryError(
                BAD_ARGUMENTS, f"session_timeout must be between 0 and {SESSION_TIMEOUT_MAX:.0f}"
            )
        with self.engine.session(session_id, timeout, _truthy(params.get("session_check")),
                                 _truthy(params.get("close_session")), database,
                                 settings) as lease:
            yield lease

    def _insert(self, lease: _Lease, insert: InsertHead, source: _Input, query_id: str) -> Reply:
        try:
            inserter = lease.conn.send_insert(insert.sql, insert.fmt)
        except Exception as exc:
            raise StoreQueryError.from_engine(exc) from exc
        try:
            with inserter:
                for chunk in source.chunks():
                    inserter.append(chunk)
                result = inserter.finish()
        except StoreQueryError:
            raise
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

    def _query(self, lease: _Lease, source: _Input, binds: Mapping[str, str], default_format: str,
               settings: Mapping[str, str], params: Mapping[str, str],
               headers: Mapping[str, str], query_id: str) -> Reply:
        raw = source.read_all(MAX_QUERY_BYTES)
        try:
            sql: str | bytes = raw.decode("utf-8")
        except UnicodeDecodeError:
            sql = raw  # binary binds embed bytes; chdb takes bytes as they are
        text = sql if isinstance(sql, str) else raw.decode("latin-1")
        kind = statement_kind(text)
        lease.dirty = kind not in _CLEAN_KINDS
        result = self.engine.run(lease.conn, sql, default_format, binds)
        body = result.bytes() or b""
        fmt = output_format(text)
        reply_headers = self.base_headers(query_id)
        if body or fmt or kind in _RESULT_KINDS:
            fmt = fmt or default_format
            reply_headers["X-ClickHouse-Format"] = fmt
            content_type = _CONTENT_TYPES.get(fmt.lower(), "text/plain; charset=UTF-8")
            if fmt.lower().startswith("json"):
                content_type = "application/json; charset=UTF-8"
            reply_headers["Content-Type"] = content_type
        else:
            reply_headers["Content-Type"] = "text/plain; charset=UTF-8"
        tz = settings.get("session_timezone")
        if tz:
            reply_headers["X-ClickHouse-Timezone"] = tz
        summary = {
            "read_rows": str(result.rows_read()),
            "read_bytes": str(result.bytes_read()),
            "written_rows": str(result.rows_written()),
            "written_bytes": str(result.bytes_written()),
            "total_rows_to_read": str(result.rows_read()),
            "result_bytes": str(len(body)),
            "elapsed_ns": str(int(result.elapsed() * 1e9)),
        }
        reply_headers["X-ClickHouse-Summary"] = json.dumps(summary, separators=(",", ":"))
        if body and _truthy(params.get("enable_http_compression")):
            body, encoding = _compress(body, headers.get("Accept-Encoding", ""))
            if encoding:
                reply_headers["Content-Encoding"] = encoding
        return Reply(200, body, reply_headers)


# --- HTTP plumbing ---------------------------------------------------------------------------
class _Body:
    """The request body as raw chunks (Content-Length or chunked), drainable."""

    def __init__(self, rfile: IO[bytes], headers: Mapping[str, str]) -> None:
        self._rfile = rfile
        self.done = False
        self._chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        length = headers.get("Content-Length")
        try:
            self._left = int(length) if length else 0
        except ValueError:
            raise StoreQueryError(BAD_ARGUMENTS, "bad Content-Length") from None
        if not self._chunked and self._left <= 0:
            self.done = True

    def __iter__(self) -> Iterator[bytes]:
        if self.done:
            return
        yield from (self._read_chunked() if self._chunked else self._read_sized())
        self.done = True

    def _read_sized(self) -> Iterator[bytes]:
        while self._left > 0:
            piece = self._rfile.read(min(self._left, READ_PIECE))
            if not piece:
                raise ConnectionError("client closed the connection inside the body")
            self._left -= len(piece)
            yield piece

    def _read_chunked(self) -> Iterator[bytes]:
        while True:
            line = self._rfile.readline(65537)
            try:
                size = int(line.split(b";", 1)[0].strip() or b"x", 16)
            except ValueError:
                raise ConnectionError(f"bad chunk size line {line[:40]!r}") from None
            if size == 0:
                while self._rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return
            data = self._rfile.read(size)
            if len(data) < size:
                raise ConnectionError("client closed the connection inside a chunk")
            self._rfile.readline(3)
            yield data

    def drain(self) -> None:
        for _ in self:
            pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ctower-store"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = 120  # idle keep-alive connections end after this
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        with suppress(OSError):
            super().finish()
        self.server.track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("store front %s: " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        with self.server.busy(self.connection):
            url = urlsplit(self.path)
            front = self.server.front
            try:
                body = _Body(self.rfile, self.headers)
            except StoreQueryError as exc:
                self.close_connection = True
                self._reply(front.error(exc, str(uuid.uuid4())))
                return
            if url.path in ("/ping", "/replicas_status"):
                body.drain()
                self._reply(Reply(200, b"Ok.\n", self._plain(front)))
                return
            if url.path not in ("", "/"):
                body.drain()
                message = f"There is no handle {url.path}. Use / or /ping."
                reply = front.error(StoreQueryError(NOT_IMPLEMENTED, message), str(uuid.uuid4()))
                self._reply(Reply(404, reply.body, reply.headers))
                return
            params = dict(parse_qsl(url.query, keep_blank_values=True))
            chunks: Iterator[bytes] = iter(body)
            content_type = self.headers.get("Content-Type", "")
            if method == "POST" and content_type.lower().startswith("multipart/form-data"):
                try:
                    params.update(_multipart_fields(content_type, b"".join(chunks)))
                except StoreQueryError as exc:
                    self._reply(front.error(exc, params.get("query_id") or str(uuid.uuid4())))
                    return
                chunks = iter(())
            if method == "GET" and not params.get("query"):
                self._reply(Reply(200, b"Ok.\n", self._plain(front)))
                return
            try:
                reply = front.execute(method, params, self.headers, chunks)
            except (ConnectionError, TimeoutError):
                self.close_connection = True
                return
            if not body.done:
                try:
                    body.drain()  # the client is still sending: read it, then answer
                except (OSError, ConnectionError):
                    self.close_connection = True
            self._reply(reply)

    @staticmethod
    def _plain(front: StoreFront) -> dict[str, str]:
        return {"Content-Type": "text/plain; charset=UTF-8", STORE_PATH_HEADER: front.store_path}

    def _reply(self, reply: Reply) -> None:
        if self.server.stopping:
            self.close_connection = True
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        else:
            self.send_header("Keep-Alive", f"timeout={self.timeout}")
        self.end_headers()
        if reply.body:
            self.wfile.write(reply.body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], front: StoreFront) -> None:
        self.front = front
        self.stopping = False
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy: set[socket.socket] = set()
        self.requests = 0
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("store front: connection from %s failed", client_address, exc_info=True)

    def track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    @contextmanager
    def busy(self, conn: socket.socket) -> Iterator[None]:
        with self._lock:
            self._busy.add(conn)
            self.requests += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy.discard(conn)
                self._idle.notify_all()

    def close_connections(self, wait: float) -> None:
        """Wake the idle keep-alive readers, let requests in flight finish (an insert
        still reading its body is not cut off), and answer them with Connection: close."""
        self.stopping = True
        deadline = time.monotonic() + wait
        with self._lock:
            for conn in self._connections - self._busy:
                with suppress(OSError):
                    conn.shutdown(socket.SHUT_RD)
            while self._busy and time.monotonic() < deadline:
                self._idle.wait(timeout=max(0.0, deadline - time.monotonic()))


class StoreHttpServer:
    """Serves the embedded store's engine over ClickHouse's HTTP interface.

    Runs in the process that owns the chdb directory (the sink), in a background
    thread, bound to 127.0.0.1 only: there is no authentication. While it runs,
    ``data_dir/store.url`` holds its URL so the other processes find it.
    """

    def __init__(self, settings: Settings, engine_client: Any = None, *,
                 port: int | None = None) -> None:
        if not settings.store_is_embedded:
            raise SettingsError("store_dsn: the store front serves only an embedded (chdb) store")
        self.settings = settings
        self.store_path = os.path.realpath(settings.chdb_path)
        if engine_client is not None:
            client_path = getattr(engine_client, "path", None)
            if client_path is None or os.path.realpath(client_path) != self.store_path:
                raise ValueError(
                    f"engine_client is not a chdb client on {self.store_path} (got {client_path!r})"
                )
        self._engine_client = engine_client
        self._port = settings.store_http_port if port is None else port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._engine: _Engine | None = None
        self.url_file = settings.data_dir / STORE_URL_FILE

    @property
    def requests_served(self) -> int:
        """HTTP requests answered so far (pings included): a cheap liveness gauge."""
        return self._server.requests if self._server is not None else 0

    @property
    def url(self) -> str:
        if self._server is None:
            return f"http://127.0.0.1:{self._port}"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> StoreHttpServer:
        """Open the engine (if not open yet), listen, and publish the URL."""
        if self._server is not None:
            return self
        Path(self.store_path).mkdir(parents=True, exist_ok=True)
        try:
            engine = _Engine(self.store_path)
        except RuntimeError as exc:
            holder = lock_holder(Path(self.store_path))
            if holder is None or holder == os.getpid():
                raise
            raise StoreUnavailable(
                f"store front: {self.store_path} is open in {describe_process(holder)}"
            ) from exc
        try:
            server = _Server(("127.0.0.1", self._port), StoreFront(engine, self.store_path))
        except OSError as exc:
            engine.close()
            raise OSError(
                exc.errno, f"store front: cannot listen on 127.0.0.1:{self._port}: {exc.strerror}"
            ) from exc
        self._engine, self._server = engine, server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2},
            name="ctower-store-front", daemon=True,
        )
        self._thread.start()
        self._publish()
        logger.info("store front for %s at %s", self.store_path, self.url)
        return self

    def _publish(self) -> None:
        self.url_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.url_file.with_name(f".{STORE_URL_FILE}.{os.getpid()}")
        tmp.write_text(self.url + "\n")
        os.replace(tmp, self.url_file)

    def stop(self, wait: float = 10.0) -> None:
        """Stop listening, let requests in flight finish (up to ``wait`` s), close."""
        server, engine = self._server, self._engine
        if server is None or engine is None:
            return
        url = self.url
        with suppress(OSError):
            if self.url_file.read_text().strip() == url:
                self.url_file.unlink()
        server.shutdown()
        server.close_connections(wait)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=wait)
        engine.close()
        self._server = self._engine = self._thread = None

    def __enter__(self) -> StoreHttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
