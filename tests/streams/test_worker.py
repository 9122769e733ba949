"""A worker process's life: stopping it while events are still flowing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from ctower.settings import Settings
from ctower.topics import ensure_topics


def test_sigterm_mid_stream_stops_the_worker_promptly_and_cleanly(
    settings_factory: Callable[..., Settings], ctower_process: Callable[..., Any],
    poll: Callable[..., Any],
) -> None:
    """Faust's shutdown waits until every message read is acked; the messages
    the rules hold for their next write were only released by a timer that
    had already stopped, so the stop hung until the worker was killed."""
    settings = settings_factory(log_level="INFO")
    ensure_topics(settings)
    worker = ctower_process(settings, "worker", "worker")
    stats_url = f"http://127.0.0.1:{settings.worker_web_port}/stats/"
    worker.wait_http(stats_url)
    simulator = subprocess.Popen(
        [sys.executable, "-m", "ctower", "simulate", "--quiet", "--rate", "3000",
         "--duration", "60", "--batch", "10"],
        env=settings.child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        poll(lambda: _events(stats_url) > 5_000, 60, "the worker never got going")
        time.sleep(2)  # batches in flight, some held for the rules' next write
        assert simulator.poll() is None, "the events stopped before the worker was stopped"
        started = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        returncode = worker.proc.wait(timeout=60)
        took = time.monotonic() - started
    finally:
        simulator.kill()
        simulator.wait(timeout=30)
    assert returncode == 0, worker.log_tail()
    assert took < 15, f"stopping took {took:.1f} s"
    assert "wait_empty: Waiting for tasks" not in worker.log_tail(10**6)


def _events(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return sum(s.get("events", 0) for s in json.load(answer).values())
    except OSError:
        return 0
