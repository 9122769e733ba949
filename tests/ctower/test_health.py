"""``ctower health ROLE``: heartbeats and HTTP checks, as compose runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ctower.health import Heartbeat, check, heartbeat_path
from ctower.settings import Settings


@pytest.fixture
def stats_server() -> Iterator[tuple[int, dict[str, Any]]]:
    """A stand-in worker web server: /stats/ answers ``state['body']``."""
    state: dict[str, Any] = {"body": b'{"scan": {}}', "status": 200}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            body = state["body"] if self.path == "/stats/" else b"not found"
            self.send_response(state["status"] if self.path == "/stats/" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], state
    finally:
        server.shutdown()
        server.server_close()


def test_worker_health_is_its_stats_page(
    stats_server: tuple[int, dict[str, Any]], settings_factory: Callable[..., Settings],
) -> None:
    port, state = stats_server
    settings = settings_factory(worker_web_port=port, worker_web_bind="0.0.0.0")
    ok, message = check(settings, "worker")
    assert ok, message
    state["status"] = 503
    ok, message = check(settings, "worker")
    assert not ok and "HTTP 503" in message
    state["status"], state["body"] = 200, b"<html>"
    assert check(settings, "worker") == (False, f"http://127.0.0.1:{port}/stats/: not JSON")


def test_heartbeat_fresh_stale_dead_and_missing(
    settings_factory: Callable[..., Settings], tmp_path: Path,
) -> None:
    settings = settings_factory(store_dsn="http://clickhouse:8123")  # no store front to ask
    ok, message = check(settings, "sink")
    assert not ok and "no heartbeat yet" in message

    beat = Heartbeat(settings, "sink")
    beat.beat(messages=12, lag=0)
    ok, message = check(settings, "sink")
    assert ok and "messages 12" in message, message
    beat.beat(messages=99)  # within a second of the last: not written
    assert json.loads(heartbeat_path(settings, "sink").read_text())["messages"] == 12

    record = json.loads(heartbeat_path(settings, "sink").read_text())
    record["at"] = time.time() - 120
    heartbeat_path(settings, "sink").write_text(json.dumps(record))
    ok, message = check(settings, "sink", max_age=60)
    assert not ok and "stuck" in message
    assert check(settings, "sink", max_age=300)[0]

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    record.update(at=time.time(), pid=gone.pid)
    heartbeat_path(settings, "sink").write_text(json.dumps(record))
    ok, message = check(settings, "sink")
    assert not ok and "not running" in message

    beat.clear()
    assert not heartbeat_path(settings, "sink").exists()


def test_the_command_exits_0_or_1(
    settings_factory: Callable[..., Settings], env_for: Callable[[Settings], dict[str, str]],
) -> None:
    settings = settings_factory(store_dsn="http://clickhouse:8123")
    env = env_for(settings)

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ctower", "health", "alerts"], env=env,
                              capture_output=True, text=True, timeout=60)

    result = run()
    assert result.returncode == 1 and result.stderr.startswith("unhealthy: alerts:"), result
    Heartbeat(settings, "alerts").beat(alerts=3)
    result = run()
    assert result.returncode == 0 and result.stdout.startswith("healthy: alerts:"), result
    assert f"pid {os.getpid()}" in result.stdout
