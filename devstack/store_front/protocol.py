"""What the store front knows of ClickHouse itself: error codes and statuses, and
just enough SQL lexing to route a statement.

No I/O here: :mod:`ctower.devstack.store_front.handler` answers requests with it, and the
tests pin it without a server.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from ctower.errors import CtowerError

# --- ClickHouse error codes used here (names as ClickHouse spells them) ----------
BAD_ARGUMENTS = 36
NOT_IMPLEMENTED = 48
SYNTAX_ERROR = 62
UNKNOWN_FORMAT = 73
ABORTED = 236
QUERY_IS_TOO_LARGE = 229
UNKNOWN_EXCEPTION = 1002

_ERROR_NAMES = {
    BAD_ARGUMENTS: "BAD_ARGUMENTS",
    NOT_IMPLEMENTED: "NOT_IMPLEMENTED",
    SYNTAX_ERROR: "SYNTAX_ERROR",
    UNKNOWN_FORMAT: "UNKNOWN_FORMAT",
    ABORTED: "ABORTED",
    QUERY_IS_TOO_LARGE: "QUERY_IS_TOO_LARGE",
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

_CODE_RE = re.compile(r"Code: (\d+)\.")
_NAME_RE = re.compile(r"\(([A-Z][A-Z0-9_]+)\)(?: \(version [^)]*\))?\s*$")


class StoreQueryError(CtowerError):
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
