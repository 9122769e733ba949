"""Why a row is quarantined instead of stored, and how an insert failed.

Bad input never stops the sink: whatever the bytes, a message ends in its
table, in ``quarantine`` (migration 0011), or both. The reasons are the
worker's dead-letter reasons (so a dead letter and a quarantine row of the
same bytes say the same) and a few of the store's own. A store that cannot
be reached is not the data's fault: :func:`failure_kind` tells an outage
(waited for, retried) from a refusal of the rows (bisected, quarantined).
"""


from __future__ import annotations

import re
import struct
from typing import Any, Literal

import msgspec
from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError, DataError

from ctower.schemas.wire import REASONS, reject, split_array

_json = msgspec.json.Encoder()


QUARANTINE_TABLE = "quarantine"
QUARANTINE_RAW_BYTES = 8192
"""How much of a quarantined message is kept (its length and SHA-256 are
kept whole; Kafka still holds the rest until retention)."""
QUARANTINE_DETAIL_CHARS = 2000
QUARANTINE_LOG_LINES = 20
"""Quarantined rows logged one by one per progress period; the rest only
counted (a flood of bad input must not flood the log)."""

QUARANTINE_REASONS: tuple[str, ...] = tuple(dict.fromkeys((
    *REASONS,            # decoding: the dead-letter reasons of schemas/wire.py
    "too_deep",          # nested deeper than the decoder recurses (RecursionError)
    "wrong_shape",       # a closed window whose dims/values do not match its aggregate
    "refused_by_store",  # decoded and converted, but the store refused the row
)))
"""Every reason a quarantined row can carry. ``out_of_range`` and
``wrong_type`` also name rows whose values do not fit their columns (an
Int64 overflow, a date outside DateTime64's range, a non-finite number)."""

_OUTAGE_CODES = frozenset({
    16, 60, 81, 218,            # no such column, table, database; table dropped
    62,                         # SYNTAX_ERROR: our statement, never the data
    159, 209, 210, 279, 285,    # timeouts, network, no replicas
    164, 242, 243,              # READONLY, TABLE_IS_READ_ONLY, NOT_ENOUGH_SPACE
    173, 241,                   # CANNOT_ALLOCATE_MEMORY, MEMORY_LIMIT_EXCEEDED
    202, 203, 236, 252, 319, 394, 425, 439, 473,  # too many queries/parts, aborted, cancelled...
    192, 194, 497, 516,         # users, passwords, access
    999, 1000,                  # Keeper, Poco (network) exceptions
})
"""ClickHouse error codes that say the store cannot take an insert now,
whatever its rows: waited for and retried, never blamed on the data. Any
other code is a refusal of this insert; the rows are blamed (and bisected)
only if the store then still answers a query."""


_OUT_OF_RANGE_WORDS = re.compile(
    r"overflow|too large|out of (range|bounds)|infinity|\bnan\b|requires .*<=", re.I
)


def conversion_reason(exc: BaseException) -> str:
    """``out_of_range``, ``not_utf8`` or ``wrong_type`` for an exception raised
    while putting a value into a column (Arrow, clickhouse-connect's Native
    writer, or a getter such as ``round(inf)``)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, UnicodeError):
            return "not_utf8"
        if isinstance(seen, (OverflowError, struct.error)) or _OUT_OF_RANGE_WORDS.search(
            str(seen)
        ):
            return "out_of_range"
        seen = seen.__cause__ or seen.__context__
    return "wrong_type"


def clip(text: str, limit: int = QUARANTINE_DETAIL_CHARS) -> str:
    """At most ``limit`` characters, encodable as UTF-8 whatever they were."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def failure_kind(exc: BaseException) -> Literal["data", "refused", "outage"]:
    """What a failed insert says.

    ``data``: a value could not be serialised (nothing reached the store);
    ``refused``: the store answered with an error about this insert (confirm
    the store still answers before blaming the rows); ``outage``: the store
    cannot be reached or cannot take any insert now (transport errors, no
    error code, or a code of :data:`_OUTAGE_CODES`).
    """
    if isinstance(exc, DataError):
        return "data"
    if type(exc) is DatabaseError:  # the store's own error (subclasses: the driver's)
        code = exc.code
        return "refused" if code is not None and code not in _OUTAGE_CODES else "outage"
    if isinstance(exc, (ClickHouseError, OSError)):
        return "outage"  # OperationalError, ProgrammingError (closed client)... timeouts
    return "data"  # Arrow, struct, Unicode, overflow... raised while serialising


class QuarantineRow(msgspec.Struct, kw_only=True):
    """A row of ``quarantine``: a message, an element of its batch envelope,
    or a decoded record that could not be stored, and why."""

    source_topic: str
    partition: int
    offset: int
    index: int
    """Position in the batch envelope, -1 when the message itself."""
    target_table: str
    """The table the row was for ('' when it was not decoded that far)."""
    reason: str
    detail: str
    raw: bytes
    """The first QUARANTINE_RAW_BYTES of the bytes quarantined: the message,
    the envelope element, or (for a decoded record that did not fit its
    columns) the record re-encoded as JSON."""
    raw_length: int
    raw_sha256: str
    received_at: int


def split_json_array(raw: bytes) -> list[bytes] | None:
    """The top-level elements of a JSON array, found without recursion (the
    worker's :func:`ctower.schemas.wire.split_array`): an element nested
    thousands deep does not stop the others. None when ``raw`` is not one
    array. The elements are not checked: each is decoded on its own afterwards."""
    try:
        return split_array(raw)
    except ValueError:
        return None


def decode_reason(exc: BaseException, raw: bytes = b"") -> str:
    """The reason code of an exception raised while decoding ``raw``: the
    worker's (:func:`ctower.schemas.wire.reject`), so a dead letter and a
    quarantine row of the same bytes say the same."""
    return reject(-1, raw, exc).reason


def refine(reason: str, detail: str) -> str:
    """msgspec's 'Number out of range' (1e400, integers past 64 bits) is
    out_of_range, not the catch-all the wire classifier gives it."""
    if reason == "invalid" and "out of range" in detail.lower():
        return "out_of_range"
    return reason


def describe(exc: BaseException) -> str:
    return clip(f"{type(exc).__name__}: {exc}")


def record_bytes(record: Any) -> bytes:
    """A decoded record as JSON, for the quarantine (repr if even that fails)."""
    try:
        return _json.encode(record)
    except Exception:
        return repr(record).encode("utf-8", "backslashreplace")
