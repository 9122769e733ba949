"""One logging configuration for every ctower process.

:func:`configure_logging` sets up the root logger from the settings: plain
text lines (``CTOWER_LOG_FORMAT=plain``, the default) or one JSON object a
line (``json``), at ``CTOWER_LOG_LEVEL``, with the Kafka clients at WARNING.
Two filters sit on the handler, so they see every record of the process,
whoever logs it:

- :class:`OutageFilter` collapses the records a broker or store outage
  makes (aiokafka alone wrote thousands of ERROR lines a minute, one per
  retry): one line when the outage starts, a summary each minute while it
  lasts (how many records of which kinds were held back), one line when it
  ends. What counts as an outage record is one table, :data:`FAULTS`;
  :data:`RECOVERIES` lists records that show the connection is back.
- :class:`MaskingFilter` masks secrets in every line and traceback: webhook
  keys (``key=...``), passwords in URLs and the values of the secret
  settings.
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from ctower.settings import Settings
from ctower.sinks.wechat.webhooks import mask_secrets

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

LOGGER = "ctower.logs"
"""The logger of the outage lines (started, summaries, ended)."""


# --------------------------------------------------------------------------
# What an outage looks like in the logs
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """Records of ``logger`` (or a logger below it) whose message template
    matches ``pattern`` belong to an outage of ``outage``."""

    outage: str
    logger: str
    pattern: str


OUTAGES = {"broker": "Kafka broker", "store": "ClickHouse store"}
"""The outages told apart, and how the lines name them."""

FAULTS: tuple[Rule, ...] = (
    # aiokafka (worker, sink, alert delivery): connections, metadata, fetches,
    # the group coordinator, produce retries. Patterns match the message
    # template, so an argument is "%s".
    Rule("broker", "aiokafka", r"^Unable connect to"),
    Rule("broker", "aiokafka", r"^Unable to (update|request) metadata"),
    Rule("broker", "aiokafka", r"^Failed fetch (messages|offsets) from"),
    Rule("broker", "aiokafka", r"^Group Coordinator Request failed"),
    Rule("broker", "aiokafka", r"^Error sending \S+ to node"),
    Rule("broker", "aiokafka", r"^Marking the coordinator dead"),
    Rule("broker", "aiokafka", r"^Heartbeat (send request failed|session expired)"),
    Rule("broker", "aiokafka", r"^Heartbeat failed for group \S+: coordinator"),
    Rule("broker", "aiokafka", r"^FindCoordinator Request failed"),
    Rule("broker", "aiokafka", r"^(Cannot|Could not) send"),
    Rule("broker", "aiokafka", r"^Got error produce response"),
    Rule("broker", "aiokafka", r"^(Auto offset commit|OffsetCommit) failed"),
    # kafka-python (simulator, topic administration)
    Rule("broker", "kafka", r"Connection (failed|lost)|socket disconnected|: Abort \("),
    Rule("broker", "kafka", r"^Metadata refresh: failed|^No node available"),
    Rule("broker", "kafka", r"^Bootstrap (attempt|connection) .*failed|^Bootstrap \S+ not ready"),
    Rule("broker", "kafka", r"Error sending produce request|Got error produce response"),
    Rule("broker", "kafka", r"Request timed out after"),
    # the sink's own retries
    Rule("broker", "ctower.sinks.clickhouse.sink", r"^offset commit failed"),
    Rule("store", "ctower.sinks.clickhouse.sink", r"^insert into \S+ failed"),
)
"""Records that say the broker or the store cannot be reached: what the
clients log while they retry, as seen with the broker stopped under a
worker, a sink and the simulator."""

RECOVERIES: tuple[Rule, ...] = (
    Rule("broker", "aiokafka.consumer.group_coordinator", r"^Discovered coordinator"),
    Rule("broker", "kafka.net.connection", r"^%s: Connected$"),
)
"""Records that show a connection is back. Logged at INFO: their loggers are
let through at INFO, and the filter drops their other INFO records."""

FLOORS = {"kafka": logging.WARNING, "aiokafka": logging.WARNING}
"""The Kafka clients narrate every connection at INFO: below these levels
their records are not shown (their warnings and errors still are)."""


# --------------------------------------------------------------------------
# The outage filter
# --------------------------------------------------------------------------


@dataclass
class _Outage:
    started: float
    last_fault: float
    last_summary: float
    recovered_by: str | None = None
    total: Counter[str] = field(default_factory=Counter)
    recent: Counter[str] = field(default_factory=Counter)


def _below(name: str, logger: str) -> bool:
    return name == logger or name.startswith(logger + ".")


def _message(record: logging.LogRecord) -> str:
    """The record's message; its template if the arguments do not fit (the
    handler reports that when it formats the record: a filter must not raise)."""
    try:
        return record.getMessage()
    except Exception:
        return str(record.msg)


def _n(count: int) -> str:
    return f"{count:,} record{'' if count == 1 else 's'}"


def _kinds(counts: Counter[str], most: int = 5) -> str:
    shown = [f"{label} x{count:,}" for label, count in counts.most_common(most)]
    rest = sum(counts.values()) - sum(count for _, count in counts.most_common(most))
    if rest:
        shown.append(f"others x{rest:,}")
    return "; ".join(shown)


Emit = Callable[[int, str, dict[str, Any]], None]


def _log_emit(level: int, message: str, fields: dict[str, Any]) -> None:
    logging.getLogger(LOGGER).log(level, message, extra={"ctower_outage": fields})


class OutageFilter(logging.Filter):
    """Collapses the records of a broker or store outage (see the module doc).

    An outage starts with the first record matching :data:`FAULTS`; later
    ones are counted, not shown. It ends once no such record came for
    ``settle`` seconds after a record of :data:`RECOVERIES` (the connection
    is back), or for ``quiet`` seconds without one (a producer that simply
    succeeds again logs nothing). Summaries and the end are checked on every
    record and, while an outage lasts, by a timer thread each ``tick``
    seconds (``timer=False`` for tests that call :meth:`check` themselves).
    """

    def __init__(
        self,
        faults: Iterable[Rule] = FAULTS,
        recoveries: Iterable[Rule] = RECOVERIES,
        floors: dict[str, int] | None = None,
        *,
        summary_seconds: float = 60.0,
        quiet_seconds: float = 60.0,
        settle_seconds: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        emit: Emit = _log_emit,
        timer: bool = True,
        tick: float = 1.0,
    ) -> None:
        super().__init__()
        self._rules = [("fault", r, re.compile(r.pattern)) for r in faults] + [
            ("recovery", r, re.compile(r.pattern)) for r in recoveries
        ]
        self._floors = dict(FLOORS if floors is None else floors)
        self.summary_seconds = summary_seconds
        self.quiet_seconds = quiet_seconds
        self.settle_seconds = settle_seconds
        self._clock = clock
        self._emit = emit
        self._timer = timer
        self._tick = tick
        self._lock = threading.Lock()
        self._outages: dict[str, _Outage] = {}
        self._cache: dict[tuple[str, str], tuple[str, str] | None] = {}
        self._thread: threading.Thread | None = None
        self._last_check = float("-inf")

    # -- classification ----------------------------------------------------
    def _classify(self, record: logging.LogRecord) -> tuple[str, str] | None:
        template = record.msg if isinstance(record.msg, str) else str(record.msg)
        key = (record.name, template)
        try:
            return self._cache[key]
        except KeyError:
            pass
        found = None
        for what, rule, pattern in self._rules:
            if _below(record.name, rule.logger) and pattern.search(template):
                found = (what, rule.outage)
                break
        if len(self._cache) > 4096:  # messages built with f-strings never repeat
            self._cache.clear()
        self._cache[key] = found
        return found

    def _floor(self, name: str) -> int:
        level = 0
        for logger, floor in self._floors.items():
            if _below(name, logger):
                level = max(level, floor)
        return level

    # -- the filter ----------------------------------------------------------
    def filter(self, record: logging.LogRecord) -> bool:
        if hasattr(record, "ctower_outage"):
            return True  # our own lines
        found = self._classify(record)
        keep = True
        lines: list[tuple[int, str, dict[str, Any]]] = []
        now = self._clock()
        with self._lock:
            if found is not None or now - self._last_check >= self._tick:
                lines.extend(self._due(now))  # first: an overdue end comes before a new start
            if found is not None:
                what, name = found
                outage = self._outages.get(name)
                if what == "fault":
                    keep = False
                    label = f"{record.name}: {record.msg}"[:120]
                    if outage is None:
                        outage = self._outages[name] = _Outage(now, now, now)
                        lines.append(self._started(name, record))
                        self._start_timer()
                    outage.last_fault = now
                    outage.total[label] += 1
                    outage.recent[label] += 1
                elif outage is not None:
                    keep = False
                    outage.recovered_by = f"{record.name}: {_message(record)}"[:200]
                    lines.extend(self._due(now))  # back, and quiet long enough already?
        for line in lines:
            self._emit(*line)
        if keep and record.levelno < self._floor(record.name):
            keep = False
        return keep

    def check(self) -> None:
        """Emit the summaries and ends that are due (the timer calls this)."""
        with self._lock:
            lines = self._due(self._clock())
        for line in lines:
            self._emit(*line)

    @property
    def active(self) -> list[str]:
        """The outages going on."""
        with self._lock:
            return sorted(self._outages)

    # -- the lines -------------------------------------------------------------
    def _started(self, name: str, record: logging.LogRecord) -> tuple[int, str, dict[str, Any]]:
        first = f"{record.name}: {_message(record)}"
        message = (
            f"{OUTAGES.get(name, name)} unavailable: outage started ({first}); "
            f"such records are counted, not shown, until it ends "
            f"(a summary every {self.summary_seconds:.0f} s)"
        )
        return max(record.levelno, logging.WARNING), message, {
            "outage": name, "event": "started", "first": first,
        }

    def _due(self, now: float) -> list[tuple[int, str, dict[str, Any]]]:
        self._last_check = now
        lines = []
        for name, outage in list(self._outages.items()):
            quiet_for = now - outage.last_fault
            what = OUTAGES.get(name, name)
            lasted = outage.last_fault - outage.started
            ended = (outage.recovered_by is not None and quiet_for >= self.settle_seconds) or (
                quiet_for >= self.quiet_seconds
            )
            if ended:
                del self._outages[name]
                why = (
                    f"the connection is back ({outage.recovered_by})"
                    if outage.recovered_by is not None
                    else f"no such record for {self.quiet_seconds:.0f} s"
                )
                total = sum(outage.total.values())
                lines.append((logging.WARNING, (
                    f"{what} outage ended after {lasted:.0f} s: {why}; {_n(total)} "
                    f"in all ({_kinds(outage.total)})"
                ), {
                    "outage": name, "event": "ended", "seconds": round(lasted, 1),
                    "records": total, "kinds": dict(outage.total), "why": why,
                }))
            elif now - outage.last_summary >= self.summary_seconds:
                recent = sum(outage.recent.values())
                lines.append((logging.WARNING, (
                    f"{what} outage goes on ({now - outage.started:.0f} s so far): {_n(recent)} "
                    f"held back in the last {now - outage.last_summary:.0f} s "
                    f"({_kinds(outage.recent)})"
                ), {
                    "outage": name, "event": "continues",
                    "seconds": round(now - outage.started, 1), "records": recent,
                    "kinds": dict(outage.recent),
                }))
                outage.last_summary = now
                outage.recent.clear()
        return lines

    # -- the timer ---------------------------------------------------------------
    def _start_timer(self) -> None:
        """Called with the lock held, when an outage starts."""
        if not self._timer or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="ctower-log-outages", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self._tick)
            self.check()
            with self._lock:
                if not self._outages:
                    self._thread = None
                    return


# --------------------------------------------------------------------------
# Masking
# --------------------------------------------------------------------------

_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^/@\s:]*:)[^/@\s]+@", re.IGNORECASE)


class MaskingFilter(logging.Filter):
    """Masks secrets in every log line, whoever logs it (aiohttp, a traceback
    quoting a URL): the last line of defence for them.

    Webhook keys (``key=...``, shown as ``key=***a1b2`` as everywhere else),
    passwords in URLs and the given secret values. A value of 8 characters
    or more is masked wherever it appears; a shorter one only as a whole
    word (masking every ``abc`` would garble the logs).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        values = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._long = [s for s in values if len(s) >= 8]
        short = [re.escape(s) for s in values if len(s) < 8]
        self._short = (
            re.compile(r"(?<![\w])(?:" + "|".join(short) + r")(?![\w])") if short else None
        )

    def mask(self, text: str) -> str:
        if "=" in text:
            text = mask_secrets(text)
        if "@" in text:
            text = _URL_PASSWORD.sub(r"\1***@", text)
        for secret in self._long:
            if secret in text:
                text = text.replace(secret, "***")
        if self._short is not None:
            text = self._short.sub("***", text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit: the handler reports it
            return True
        masked = self.mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.mask(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
        return True


# --------------------------------------------------------------------------
# Formats and the configuration
# --------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts (UTC), level, logger, message, pid; exc and
    stack when there are; outage (event, counts) on the outage lines."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        outage = getattr(record, "ctower_outage", None)
        if outage is not None:
            entry["outage"] = outage
        return json.dumps(entry, ensure_ascii=False, default=str)


class StderrHandler(logging.StreamHandler[IO[str]]):
    """Writes to whatever ``sys.stderr`` is when a record comes (click's test
    runner and pytest swap it; a handler holding the old one would write to
    a closed file)."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        logging.Handler.__init__(self, level)

    @property
    def stream(self) -> IO[str]:  # type: ignore[override]
        return sys.stderr


def logging_config(
    settings: Settings | None = None, stream: IO[str] | None = None
) -> dict[str, Any]:
    """The :func:`logging.config.dictConfig` of a process with ``settings``
    (``None``: the defaults, when the settings themselves are bad)."""
    level = settings.log_level if settings is not None else "INFO"
    fmt = settings.log_format if settings is not None else "plain"
    secrets = settings.secret_values() if settings is not None else []
    outages = OutageFilter()
    masking = MaskingFilter(secrets)
    loggers: dict[str, Any] = {
        name: {"level": logging.getLevelName(floor)} for name, floor in FLOORS.items()
    }
    for rule in RECOVERIES:  # the filter sees their INFO records and drops the rest
        if any(_below(rule.logger, name) for name in FLOORS):
            loggers[rule.logger] = {"level": "INFO"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "outages": {"()": lambda: outages},
            "masking": {"()": lambda: masking},
        },
        "formatters": {
            "plain": {"format": PLAIN_FORMAT},
            "json": {"()": JsonFormatter},
        },
        "handlers": {
            "console": {
                **({"class": "logging.StreamHandler", "stream": stream} if stream is not None
                   else {"()": StderrHandler}),
                "formatter": fmt,
                "filters": ["outages", "masking"],  # masking last: it sees what is shown
            },
        },
        "loggers": loggers,
        "root": {"level": level, "handlers": ["console"]},
    }


def configure_logging(settings: Settings | None = None, stream: IO[str] | None = None) -> None:
    """Configure this process's logging from ``settings`` (see the module doc).

    Called again (a command that loads its settings with overrides), it
    replaces the previous configuration.
    """
    logging.config.dictConfig(logging_config(settings, stream))
