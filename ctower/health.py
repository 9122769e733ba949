"""``ctower health ROLE``: is this process doing its job? For compose healthchecks.

Exit 0 and one ``healthy: ...`` line, or exit 1 and one ``unhealthy: ...``
line saying why. Run inside the process's container (or beside the process,
with its settings): it reads the same ``CTOWER_*`` environment.

- ``worker``: its web server answers ``/stats/`` with JSON (the coupon API and
  the forwarding between workers are served by the same server).
- ``dashboard``: Streamlit's ``/_stcore/health`` answers.
- ``sink``, ``alerts``, ``simulator``, ``warehouse`` (the simulated warehouse
  answering action orders): they serve nothing over HTTP (bar the
  sink's front of an embedded store), so each writes a heartbeat,
  ``<data_dir>/health/<role>.json``, from its main loop, at most once a
  second. Healthy means the file was written in the last ``--max-age``
  seconds (default 60) by a process that is still running: the loop turns,
  it is neither hung nor stuck (a sink whose inserts a lost store keeps
  refusing stops beating after its first retry, so it turns unhealthy once
  the outage outlasts ``--max-age``). The sink of an embedded store must
  also answer ``/ping`` on ``CTOWER_STORE_HTTP_PORT``, which the dashboard
  and ``ctower sql`` read through.

What a heartbeat holds besides its time (rows, lag, alerts read...) is
printed with the verdict, for whoever runs the command by hand.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import click

from ctower.settings import Settings

log = logging.getLogger(__name__)

HEARTBEAT_ROLES = ("sink", "alerts", "simulator", "warehouse")
"""Processes without an HTTP server of their own: they write a heartbeat file."""
ROLES = ("worker", "dashboard", *HEARTBEAT_ROLES)
DEFAULT_MAX_AGE = 60.0
HTTP_TIMEOUT = 3.0
"""Below compose's healthcheck timeout (5 s), so the command answers itself."""


def heartbeat_path(settings: Settings, role: str) -> Path:
    return settings.data_dir / "health" / f"{role}.json"


class Heartbeat:
    """The file a process without an HTTP server proves it is alive with.

    :meth:`beat` is cheap to call on every turn of a loop: it writes at most
    once per ``every`` seconds (atomically: a reader never sees half a file),
    and a failure to write is logged once, never raised - health reporting
    must not stop the work it reports on.
    """

    def __init__(self, settings: Settings, role: str, every: float = 1.0) -> None:
        self.path = heartbeat_path(settings, role)
        self.role = role
        self.every = every
        self.started = time.time()
        self._next = 0.0
        self._warned = False

    def beat(self, **info: Any) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.every
        record = {"role": self.role, "pid": os.getpid(), "at": time.time(),
                  "started": self.started, **info}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            temporary.write_text(json.dumps(record, default=str), encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot write the heartbeat %s (%s): `ctower health %s` will "
                            "say unhealthy", self.path, exc, self.role)

    def clear(self) -> None:
        """On a clean exit: a stopped process is not healthy, whatever the clock says."""
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _get(url: str) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as answer:
            body = answer.read(1 << 20)
            return answer.status == 200, body.decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return False, f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc}"


def _local(host: str) -> str:
    """The address to reach a server bound to ``host`` from beside it."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host


def check_worker(settings: Settings) -> tuple[bool, str]:
    url = f"http://{_local(settings.worker_bind)}:{settings.worker_web_port}/stats/"
    ok, body = _get(url)
    if not ok:
        return False, f"{url}: {body}"
    try:
        stats = json.loads(body)
    except ValueError:
        return False, f"{url}: not JSON"
    if not isinstance(stats, dict):
        return False, f"{url}: not a JSON object"
    return True, f"{url} answers (advertised as {settings.worker_url})"


def check_dashboard(settings: Settings) -> tuple[bool, str]:
    url = f"http://{_local(settings.dashboard_host)}:{settings.dashboard_port}/_stcore/health"
    ok, body = _get(url)
    return ok, f"{url}: {body.strip()[:80]}"


def check_heartbeat(settings: Settings, role: str, max_age: float) -> tuple[bool, str]:
    path = heartbeat_path(settings, role)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        at = float(record["at"])
        pid = int(record["pid"])
    except FileNotFoundError:
        return False, f"no heartbeat yet ({path}): starting, or not running"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return False, f"unreadable heartbeat {path}: {exc}"
    age = time.time() - at
    if not _pid_alive(pid):
        return False, f"the {role} (pid {pid}) is not running; last heartbeat {age:.0f} s ago"
    if age > max_age:
        return False, (f"last heartbeat {age:.0f} s ago (more than {max_age:.0f} s): "
                       f"its loop is stuck")
    details = ", ".join(f"{k} {v}" for k, v in record.items()
                        if k not in ("role", "pid", "at", "started"))
    message = f"heartbeat {age:.1f} s ago (pid {pid}{', ' + details if details else ''})"
    if role == "sink" and settings.store_is_embedded:
        url = f"http://127.0.0.1:{settings.store_http_port}/ping"
        ok, body = _get(url)
        if not ok:
            return False, f"{message}; but the embedded store's front {url}: {body}"
        message += f"; store front {url} answers"
    return True, message


def check(settings: Settings, role: str, max_age: float = DEFAULT_MAX_AGE) -> tuple[bool, str]:
    """(healthy, why) of the process of ``role`` that runs with ``settings``."""
    if role == "worker":
        return check_worker(settings)
    if role == "dashboard":
        return check_dashboard(settings)
    if role in HEARTBEAT_ROLES:
        return check_heartbeat(settings, role, max_age)
    raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")


@click.command("health")
@click.argument("role", type=click.Choice(ROLES))
@click.option("--max-age", type=float, default=DEFAULT_MAX_AGE, show_default=True,
              help="Oldest heartbeat (seconds) still healthy (sink, alerts, simulator, "
                   "warehouse).")
def health(role: str, max_age: float) -> None:
    """Exit 0 if the ROLE process beside this command is healthy, else 1 (compose
    healthchecks): worker and dashboard over HTTP, the others by their heartbeat."""
    from ctower.cli import settings_or_exit

    ok, message = check(settings_or_exit(), role, max_age)
    if ok:
        click.echo(f"healthy: {role}: {message}")
        return
    click.echo(f"unhealthy: {role}: {message}", err=True)
    raise SystemExit(1)
