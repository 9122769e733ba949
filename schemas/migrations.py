"""Versioned ClickHouse schema: numbered SQL files applied once, in order.

The files in ``schemas/ddl`` are named ``NNNN_what.sql``. ``apply_migrations``
runs every file whose version is not yet recorded in ``schema_migrations``
and records it with the SHA-256 of its text. A file that was applied and has
changed since is refused: the store would silently differ from what the
file says, so a change must be a new file (``0005_...``), never an edit.

Every statement is idempotent (``IF NOT EXISTS``), so a start-up that died
half-way through a file simply runs the file again. The same code works on
the embedded store (chdb) and on a ClickHouse server, through the
clickhouse-connect client API.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from clickhouse_connect.driver.client import Client

from ctower.errors import CtowerError

log = logging.getLogger(__name__)

DDL_DIR = Path(__file__).resolve().parent / "ddl"
"""Where the numbered SQL files live (shipped as package data)."""

MIGRATIONS_TABLE = "schema_migrations"

_FILE_NAME = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")

_CREATE_MIGRATIONS_TABLE = f"""
CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE}
(
    version    UInt32,
    name       String,
    checksum   String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY version
"""


class MigrationError(CtowerError, RuntimeError):
    """The store's schema and the DDL files disagree; the message says how."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered DDL file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        return split_statements(self.sql)


def load_migrations(ddl_dir: Path = DDL_DIR) -> list[Migration]:
    """The DDL files, ordered by version.

    Line endings are normalised before the checksum, so a checkout that turns
    LF into CRLF does not look like an edited migration.
    """
    found: list[Migration] = []
    for path in sorted(ddl_dir.glob("*.sql")):
        match = _FILE_NAME.fullmatch(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: DDL files must be named NNNN_name.sql")
        sql = path.read_text(encoding="utf-8").replace("\r\n", "\n")
        found.append(Migration(int(match.group(1)), path.name, sql))
    versions = [m.version for m in found]
    duplicates = sorted({v for v in versions if versions.count(v) > 1})
    if duplicates:
        raise MigrationError(f"two DDL files share version(s) {duplicates} in {ddl_dir}")
    return found


def split_statements(sql: str) -> list[str]:
    """Split a file into statements at top-level semicolons.

    ClickHouse runs one statement per request. Semicolons inside quoted
    strings, quoted identifiers and comments do not split; comments are kept
    (ClickHouse ignores them).
    """
    statements: list[str] = []
    start = 0
    i = 0
    n = len(sql)
    while i < n:
        ch = sql[i]
        if ch == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        if ch == "/" and sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        if ch in "'\"`":
            i += 1
            while i < n and sql[i] != ch:
                i += 2 if sql[i] == "\\" else 1
            i += 1
            continue
        if ch == ";":
            statements.append(sql[start:i])
            start = i + 1
        i += 1
    statements.append(sql[start:])
    return [s.strip() for s in statements if _has_code(s)]


def _has_code(statement: str) -> bool:
    """Whether a chunk holds more than comments and blanks."""
    without_line_comments = re.sub(r"--[^\n]*", "", statement)
    without_comments = re.sub(r"/\*.*?\*/", "", without_line_comments, flags=re.S)
    return bool(without_comments.strip())


def applied_migrations(client: Client) -> dict[int, tuple[str, str]]:
    """Version -> (file name, checksum) of what the store has applied."""
    client.command(_CREATE_MIGRATIONS_TABLE)
    rows = client.query(
        f"SELECT version, argMax(name, applied_at), argMax(checksum, applied_at) "
        f"FROM {MIGRATIONS_TABLE} GROUP BY version"
    ).result_rows
    return {int(version): (name, checksum) for version, name, checksum in rows}


def apply_migrations(client: Client, ddl_dir: Path = DDL_DIR) -> list[str]:
    """Bring the store's schema up to the DDL files; return the files applied now.

    Applying twice is a no-op (the second call returns ``[]``). Raises
    :class:`MigrationError`, before running anything, when an applied file's
    text changed or an applied version has no file any more (the store is
    newer than this code).
    """
    migrations = load_migrations(ddl_dir)
    applied = applied_migrations(client)
    by_version = {m.version: m for m in migrations}
    for version, (name, checksum) in sorted(applied.items()):
        current = by_version.get(version)
        if current is None:
            raise MigrationError(
                f"the store has migration {name} (version {version}), which is not in "
                f"{ddl_dir}: this code is older than the store's schema"
            )
        if current.checksum != checksum:
            raise MigrationError(
                f"{current.name} was applied with checksum {checksum[:12]} but the file now "
                f"has {current.checksum[:12]}: applied migrations must not be edited; "
                f"put the change in a new file numbered after the last one"
            )
    done: list[str] = []
    for migration in migrations:
        if migration.version in applied:
            continue
        for statement in migration.statements():
            try:
                client.command(statement)
            except Exception as exc:
                first_line = next(
                    (ln for ln in statement.splitlines() if ln.strip() and not ln.startswith("--")),
                    "",
                )
                raise MigrationError(
                    f"{migration.name}: statement failed ({first_line!r}...): {exc}"
                ) from exc
        client.insert(
            MIGRATIONS_TABLE,
            [[migration.version, migration.name, migration.checksum]],
            column_names=["version", "name", "checksum"],
        )
        log.info("applied schema migration %s", migration.name)
        done.append(migration.name)
    return done
