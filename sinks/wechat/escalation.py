"""Escalation: an open alert nobody acknowledged goes to a second route.

A route may name ``escalate_to = "<another route>"`` in the routing file.
When the service routes an open alert to such a route it also books an
escalation, due ``alert_escalate_after_seconds`` later (0 turns escalation
off). Until then an operator's acknowledgement or resolution (an
``AlertAck`` on ``ct.alert-acks``, sent from the dashboard; an assignment
alone does not count) or the alert's own resolution cancels it. When it
falls due, the alert goes to the robots of the ``escalate_to`` route as a
new outbox item, its text saying that nobody acknowledged it, and from there
on it is delivered like any other message (budgets, retries, digests, quiet
hours of the target route).

The book lives in the outbox's SQLite file, next to the items: an
escalation booked before a crash is still due after it, and one sent is
never sent again (the outbox item's id names the escalation, so a replay of
``ct.alerts`` or of ``ct.alert-acks`` changes nothing). Acknowledgements are
remembered too, so one that arrives before its alert still prevents the
escalation.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from ctower.schemas.control import Alert, AlertAck

_SCHEMA = """
CREATE TABLE IF NOT EXISTS escalations (
    alert_id   TEXT NOT NULL,
    target     TEXT NOT NULL,
    origin     TEXT NOT NULL,
    alert      BLOB NOT NULL,
    due_at     REAL NOT NULL,
    state      TEXT NOT NULL,
    changed_at REAL NOT NULL,
    PRIMARY KEY (alert_id, target)
);
CREATE INDEX IF NOT EXISTS escalations_due ON escalations (state, due_at);
CREATE TABLE IF NOT EXISTS handled (
    alert_id TEXT PRIMARY KEY,
    action   TEXT NOT NULL,
    by       TEXT NOT NULL,
    at       REAL NOT NULL
);
"""

WAITING = "waiting"
SENT = "sent"
CANCELLED = "cancelled"
STOPS_ESCALATION = ("ack", "resolve")
"""What an operator does that stops an escalation (assigning an owner does not)."""
KEEP_SECONDS = 7 * 86_400

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Alert).decode


@dataclass(frozen=True, slots=True)
class Due:
    """An escalation that fell due: send ``alert`` to the ``target`` route."""

    alert: Alert
    target: str
    origin: str


class EscalationBook:
    """The escalations and acknowledgements, in the outbox's database."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.db.executescript(_SCHEMA)

    def _write(self, statements: Iterable[tuple[str, tuple[object, ...]]]) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in statements:
                self.db.execute(sql, args)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def book(self, entries: Iterable[tuple[Alert, str, str]], delay: float,
             now: float | None = None) -> int:
        """Book (alert, origin route, target route) escalations due ``delay``
        seconds from now; known ones and handled alerts are left alone.
        Returns how many were booked."""
        now = time.time() if now is None else now
        handled = self.handled_ids()
        statements = []
        for alert, origin, target in entries:
            if alert.status != "open" or alert.alert_id in handled:
                continue
            statements.append((
                "INSERT OR IGNORE INTO escalations (alert_id, target, origin, alert, due_at, "
                "state, changed_at) VALUES (?,?,?,?,?,?,?)",
                (alert.alert_id, target, origin, _encode(alert), now + delay, WAITING, now),
            ))
        if statements:
            before = self.db.total_changes
            self._write(statements)
            return self.db.total_changes - before
        return 0

    def cancel(self, alert_ids: Iterable[str], now: float | None = None) -> int:
        """The alerts were resolved or acknowledged: no escalation for them."""
        now = time.time() if now is None else now
        ids = list(dict.fromkeys(alert_ids))
        if not ids:
            return 0
        before = self.db.total_changes
        self._write(
            ("UPDATE escalations SET state = ?, changed_at = ? WHERE alert_id = ? AND state = ?",
             (CANCELLED, now, alert_id, WAITING))
            for alert_id in ids
        )
        return self.db.total_changes - before

    def acknowledged(self, acks: Iterable[AlertAck]) -> int:
        """Operators' records from ct.alert-acks: remember those that stop an
        escalation and cancel what is waiting. Returns escalations cancelled."""
        stopping = [a for a in acks if a.action in STOPS_ESCALATION]
        if not stopping:
            return 0
        self._write(
            ("INSERT OR IGNORE INTO handled (alert_id, action, by, at) VALUES (?,?,?,?)",
             (a.alert_id, a.action, a.acked_by, a.ts / 1000))
            for a in stopping
        )
        return self.cancel(a.alert_id for a in stopping)

    def handled_ids(self) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT alert_id FROM handled")}

    def due(self, now: float | None = None) -> list[Due]:
        now = time.time() if now is None else now
        rows = self.db.execute(
            "SELECT alert, target, origin FROM escalations WHERE state = ? AND due_at <= ? "
            "ORDER BY due_at", (WAITING, now),
        ).fetchall()
        return [Due(_decode(alert), target, origin) for alert, target, origin in rows]

    def sent(self, due: Iterable[Due], now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._write(
            ("UPDATE escalations SET state = ?, changed_at = ? WHERE alert_id = ? AND target = ?",
             (SENT, now, d.alert.alert_id, d.target))
            for d in due
        )

    def next_due_in(self, now: float | None = None) -> float | None:
        now = time.time() if now is None else now
        row = self.db.execute(
            "SELECT min(due_at) FROM escalations WHERE state = ?", (WAITING,)
        ).fetchone()
        return None if row[0] is None else max(0.0, row[0] - now)

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute(
            "SELECT state, count(*) FROM escalations GROUP BY state").fetchall())

    def prune(self, older_than_s: float = KEEP_SECONDS) -> None:
        cutoff = time.time() - older_than_s
        self.db.execute("DELETE FROM escalations WHERE state != ? AND changed_at < ?",
                        (WAITING, cutoff))
        self.db.execute("DELETE FROM handled WHERE at < ?", (cutoff,))


def escalated_copy(alert: Alert, after_seconds: float, lang: str) -> Alert:
    """The alert as the escalation route sees it: its text says why it came."""
    minutes = max(1, round(after_seconds / 60))
    prefix = (f"【升级】{minutes} 分钟内无人确认。" if lang == "zh"
              else f"Escalated: nobody acknowledged it within {minutes} min. ")
    return msgspec.structs.replace(alert, message=prefix + alert.message)
