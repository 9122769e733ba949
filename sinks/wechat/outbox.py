"""The durable outbox: what must still reach a robot survives any crash.

An alert read from ``ct.alerts`` becomes one *item* per (route, robot),
written to SQLite (WAL, fsync on commit) *before* its Kafka offset is
committed. From then on the outbox, not Kafka, is the truth: an item is
done only after the robot answered errcode 0. Its ``delivery_id`` is a hash
of (alert, status, route, robot), so an alert that Kafka delivers again
after a crash is the same item (``INSERT OR IGNORE``) and is not sent twice.

Every attempt writes its :class:`AlertDelivery` record in the same
transaction as the item's new state, to a table the publisher drains to
``ct.alert-deliveries``. Before a send the item is marked ``sending`` and
its attempt counted; an item found ``sending`` at start-up was being sent
when the process died: its attempt is recorded as ``crashed`` (the robot
may or may not have posted it) and it is sent again. That is the one place
a duplicate can come from, and the record says so.

Every request also spends the robot's rate budget (20 a minute, failed ones
included), and the budget must survive a restart: the ``sends`` table keeps
when each request ended, and ``in_flight`` notes each request from just
before it goes out until its answer is recorded. A request still in flight
at start-up may have reached the robot, so it counts as a send made when it
started (:meth:`Outbox.recover`).

Route health (broken or not) lives here too, so a restart does not forget
that a robot's key was refused.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgspec

from ctower.schemas.control import Alert, AlertDelivery

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    delivery_id  TEXT PRIMARY KEY,
    alert_id     TEXT NOT NULL,
    alert_key    TEXT NOT NULL,
    status       TEXT NOT NULL,
    kind         TEXT NOT NULL,
    severity     TEXT NOT NULL,
    route        TEXT NOT NULL,
    origin_route TEXT NOT NULL,
    robot        TEXT NOT NULL,
    alert        BLOB NOT NULL,
    state        TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    not_before   REAL NOT NULL,
    created_at   REAL NOT NULL,
    done_at      REAL,
    message_kind TEXT
);
CREATE INDEX IF NOT EXISTS items_due ON items (state, robot, not_before);
CREATE TABLE IF NOT EXISTS records (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    record BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS sends (
    robot    TEXT NOT NULL,
    ended_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS in_flight (
    send_id    INTEGER PRIMARY KEY AUTOINCREMENT,
    robot      TEXT NOT NULL,
    started_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS routes (
    route       TEXT PRIMARY KEY,
    broken      INTEGER NOT NULL,
    errcode     INTEGER,
    detail      TEXT NOT NULL DEFAULT '',
    since       REAL NOT NULL,
    fingerprint TEXT NOT NULL DEFAULT ''
);
"""

PENDING = "pending"
SENDING = "sending"
DELIVERED = "delivered"
REJECTED = "rejected"
REROUTED = "rerouted"

_alert_json = msgspec.json.Encoder()
_alert_decoder = msgspec.json.Decoder(Alert)
_record_json = msgspec.json.Encoder()
_record_decoder = msgspec.json.Decoder(AlertDelivery)


def delivery_id(alert: Alert, route: str, robot: str, escalation: bool = False) -> str:
    """Names one message's journey: the same alert, status, route and robot
    always give the same id (an escalation's journey is another)."""
    raw = f"{alert.alert_id}\x1f{alert.status}\x1f{route}\x1f{robot}"
    if escalation:
        raw += "\x1fescalation"
    return "d" + hashlib.sha256(raw.encode()).hexdigest()[:15]


def encode_alert(alert: Alert) -> bytes:
    """An alert as the outbox stores it."""
    return _alert_json.encode(alert)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Item:
    """One alert on its way to one robot of one route."""

    delivery_id: str
    alert: Alert
    route: str
    origin_route: str
    robot: str
    state: str
    attempts: int
    not_before: float

    @property
    def alert_id(self) -> str:
        return self.alert.alert_id


@dataclass(frozen=True, slots=True)
class RouteState:
    route: str
    broken: bool
    errcode: int | None
    detail: str
    since: float
    fingerprint: str


_ITEM_COLUMNS = (
    "delivery_id, alert, route, origin_route, robot, state, attempts, not_before"
)


def _item(row: tuple[Any, ...]) -> Item:
    return Item(
        delivery_id=row[0], alert=_alert_decoder.decode(row[1]), route=row[2],
        origin_route=row[3], robot=row[4], state=row[5], attempts=row[6], not_before=row[7],
    )


class Outbox:
    """The SQLite file; one writer (the delivery service), any readers."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ------------------------------------------------------------ intake
    def add(self, entries: Iterable[tuple[Alert, str, str, float]], origin: str | None = None,
            escalation: bool = False) -> int:
        """Store (alert, route, robot, not_before) items; known ones are
        left alone. Returns how many were new. Durable when it returns.
        ``escalation``: the items escalate their alert (ids of their own)."""
        now = time.time()
        added = 0
        with self.transaction() as db:
            for alert, route, robot, not_before in entries:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO items (delivery_id, alert_id, alert_key, status, kind, "
                    "severity, route, origin_route, robot, alert, state, attempts, not_before, "
                    "created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,0,?,?)",
                    (delivery_id(alert, route, robot, escalation), alert.alert_id, alert.key,
                     alert.status,
                     alert.kind, alert.severity, route, origin or route, robot,
                     encode_alert(alert), PENDING, not_before, now),
                )
                added += cursor.rowcount
        return added

    # ------------------------------------------------------------ dispatch
    def robots_with_work(self, now: float) -> list[str]:
        rows = self.db.execute(
            "SELECT DISTINCT robot FROM items WHERE state = ? AND not_before <= ?",
            (PENDING, now),
        ).fetchall()
        return [r[0] for r in rows]

    def next_due_in(self, now: float) -> float | None:
        """Seconds until the next pending item is due (None: nothing pending)."""
        row = self.db.execute(
            "SELECT min(not_before) FROM items WHERE state = ?", (PENDING,)
        ).fetchone()
        return None if row[0] is None else max(0.0, row[0] - now)

    def due(self, robot: str, now: float) -> list[Item]:
        rows = self.db.execute(
            f"SELECT {_ITEM_COLUMNS} FROM items WHERE state = ? AND robot = ? "
            "AND not_before <= ? ORDER BY created_at, delivery_id",
            (PENDING, robot, now),
        ).fetchall()
        return [_item(r) for r in rows]

    def pending(self, route: str | None = None) -> list[Item]:
        query = f"SELECT {_ITEM_COLUMNS} FROM items WHERE state IN (?, ?)"
        args: list[object] = [PENDING, SENDING]
        if route is not None:
            query += " AND route = ?"
            args.append(route)
        return [_item(r) for r in self.db.execute(query + " ORDER BY created_at", args)]

    def start_sending(self, items: Iterable[Item], message_kind: str) -> list[Item]:
        """Count the attempt and mark the items as being sent, durably, before
        the request goes out (so a crash mid-send is known afterwards)."""
        started: list[Item] = []
        with self.transaction() as db:
            for item in items:
                db.execute(
                    "UPDATE items SET state = ?, attempts = attempts + 1, message_kind = ? "
                    "WHERE delivery_id = ?",
                    (SENDING, message_kind, item.delivery_id),
                )
                started.append(replace(item, state=SENDING, attempts=item.attempts + 1))
        return started

    def send_started(self, robot: str, at: float | None = None) -> int:
        """A request to ``robot`` is about to go out: noted durably, so that
        a crash before its answer is recorded still counts it against the
        robot's budget after the restart. Returns the id :meth:`finish` or
        :meth:`record` take as ``send_id`` when the answer is in."""
        started = time.time() if at is None else at
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO in_flight (robot, started_at) VALUES (?, ?)", (robot, started)
            )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    @staticmethod
    def _sent(db: sqlite3.Connection, sent: tuple[str, float] | None,
              send_id: int | None) -> None:
        if sent is not None:
            db.execute("INSERT INTO sends (robot, ended_at) VALUES (?, ?)", sent)
        if send_id is not None:
            db.execute("DELETE FROM in_flight WHERE send_id = ?", (send_id,))

    def finish(self, items: Iterable[Item], state: str, records: Iterable[AlertDelivery],
               not_before: float | None = None, sent: tuple[str, float] | None = None,
               send_id: int | None = None) -> None:
        """The outcome of an attempt and its records, in one transaction.
        ``sent`` (robot, when the send ended) feeds the robot's rate budget
        after a restart; ``send_id`` (from :meth:`send_started`) is no longer
        in flight."""
        now = time.time()
        with self.transaction() as db:
            self._sent(db, sent, send_id)
            for item in items:
                if state == PENDING:
                    db.execute(
                        "UPDATE items SET state = ?, not_before = ? WHERE delivery_id = ?",
                        (PENDING, not_before if not_before is not None else now,
                         item.delivery_id),
                    )
                else:
                    db.execute(
                        "UPDATE items SET state = ?, done_at = ? WHERE delivery_id = ?",
                        (state, now, item.delivery_id),
                    )
            self._add_records(db, records)

    def record(self, records: Iterable[AlertDelivery],
               sent: tuple[str, float] | None = None, send_id: int | None = None) -> None:
        """Records not tied to an item's state (test messages, notices)."""
        with self.transaction() as db:
            self._sent(db, sent, send_id)
            self._add_records(db, records)

    def recent_sends(self, since: float) -> dict[str, list[float]]:
        """Robot -> when its sends ended, since ``since`` (epoch seconds); the
        older ones are forgotten. Seeds the rate budgets after a restart: the
        service still counts sends made before it, including those a crash
        caught in flight once :meth:`recover` has settled them."""
        self.db.execute("DELETE FROM sends WHERE ended_at < ?", (since,))
        found: dict[str, list[float]] = {}
        for robot, ended in self.db.execute(
            "SELECT robot, ended_at FROM sends ORDER BY ended_at"
        ):
            found.setdefault(robot, []).append(ended)
        return found

    @staticmethod
    def _add_records(db: sqlite3.Connection, records: Iterable[AlertDelivery]) -> None:
        db.executemany(
            "INSERT INTO records (record) VALUES (?)",
            [(_record_json.encode(r),) for r in records],
        )

    def recover(self, robot_label: dict[str, str]) -> list[AlertDelivery]:
        """After a crash: items caught ``sending`` get a ``crashed`` record for
        their attempt and go back to pending, and every request caught in
        flight (items, digests, notices) becomes a send of its robot made
        when it started - the robot may have counted it. Returns the records
        written."""
        rows = self.db.execute(
            f"SELECT {_ITEM_COLUMNS}, message_kind FROM items WHERE state = ?", (SENDING,)
        ).fetchall()
        in_flight = self.db.execute("SELECT count(*) FROM in_flight").fetchone()[0]
        records = []
        for row in rows:
            item = _item(row[:-1])
            records.append(AlertDelivery(
                delivery_id=item.delivery_id, alert_id=item.alert_id, alert_key=item.alert.key,
                kind=item.alert.kind, severity=item.alert.severity, route=item.route,
                robot=robot_label.get(item.robot, item.robot), attempt=item.attempts,
                result="crashed", message_kind=row[-1] or "markdown", ts=now_ms(),
                detail="the delivery process stopped before the answer was recorded",
            ))
        if rows or in_flight:
            with self.transaction() as db:
                db.execute("UPDATE items SET state = ? WHERE state = ?", (PENDING, SENDING))
                self._add_records(db, records)
                db.execute("INSERT INTO sends (robot, ended_at) "
                           "SELECT robot, started_at FROM in_flight")
                db.execute("DELETE FROM in_flight")
        return records

    def in_flight(self) -> list[tuple[str, float]]:
        """(robot, started at) of the requests noted as on their way."""
        return self.db.execute(
            "SELECT robot, started_at FROM in_flight ORDER BY send_id"
        ).fetchall()

    # ------------------------------------------------------------ records
    def unpublished(self, limit: int = 500) -> list[tuple[int, bytes]]:
        return self.db.execute(
            "SELECT seq, record FROM records ORDER BY seq LIMIT ?", (limit,)
        ).fetchall()

    def published(self, through_seq: int) -> None:
        self.db.execute("DELETE FROM records WHERE seq <= ?", (through_seq,))

    # ------------------------------------------------------------ routes
    def route_states(self) -> dict[str, RouteState]:
        rows = self.db.execute(
            "SELECT route, broken, errcode, detail, since, fingerprint FROM routes"
        ).fetchall()
        return {r[0]: RouteState(r[0], bool(r[1]), r[2], r[3], r[4], r[5]) for r in rows}

    def set_route(self, route: str, broken: bool, errcode: int | None = None,
                  detail: str = "", fingerprint: str = "") -> None:
        self.db.execute(
            "INSERT INTO routes (route, broken, errcode, detail, since, fingerprint) "
            "VALUES (?,?,?,?,?,?) ON CONFLICT(route) DO UPDATE SET broken = excluded.broken, "
            "errcode = excluded.errcode, detail = excluded.detail, since = excluded.since, "
            "fingerprint = excluded.fingerprint",
            (route, int(broken), errcode, detail, time.time(), fingerprint),
        )

    # ------------------------------------------------------------ reading
    def counts(self) -> dict[str, int]:
        """Items per state (what ``ctower alerts routes`` and tests read)."""
        return dict(self.db.execute("SELECT state, count(*) FROM items GROUP BY state").fetchall())

    def items(self) -> list[Item]:
        return [_item(r) for r in self.db.execute(
            f"SELECT {_ITEM_COLUMNS} FROM items ORDER BY created_at"
        )]

    def prune(self, older_than_s: float) -> int:
        """Forget finished items older than this (they only guard against
        a replay of ct.alerts sending them again)."""
        cursor = self.db.execute(
            "DELETE FROM items WHERE state NOT IN (?, ?) AND done_at < ?",
            (PENDING, SENDING, time.time() - older_than_s),
        )
        return cursor.rowcount
