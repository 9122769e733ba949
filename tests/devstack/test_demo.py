"""``ctower demo`` starts the pipeline and stops exactly what it started."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from ctower.gc_tuning import THRESHOLDS
from ctower.settings import Settings
from ctower.store import open_store

pytestmark = pytest.mark.kafka


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(entry))
    return found


def test_demo_runs_the_pipeline_and_ctrl_c_stops_it(
    settings_factory: Callable[..., Settings], poll: Callable[..., Any]
) -> None:
    settings = settings_factory(idle_close_seconds=2)
    demo = subprocess.Popen(
        [sys.executable, "-m", "ctower", "demo", "--no-dashboard", "--backfill", "3000",
         "--rate", "50"],
        env=settings.child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        lines: list[str] = []
        assert demo.stdout is not None
        for line in demo.stdout:
            lines.append(line)
            if "Ctrl-C stops" in line:
                break
        assert any("Ctrl-C stops" in line for line in lines), "".join(lines)
        started = children_of(demo.pid)
        assert len(started) == 4  # sink, worker, warehouse, simulator (the broker is the session's)

        client = open_store(settings, path_fallback=False)

        def scans() -> int:
            return int(client.query("SELECT sum(scans) FROM store_minute_v").first_row[0] or 0)

        poll(scans, 90, "the demo never put a closed minute in the store")
        # the simulated chain is the master data of the rules (and the dashboard)
        master = json.loads((settings.data_dir / "master_data.json").read_text())
        stats_url = f"http://127.0.0.1:{settings.worker_web_port}/stats/"
        with urllib.request.urlopen(stats_url, timeout=5) as answer:
            stats = json.load(answer)
        assert stats["decisions"]["master_data_stores"] == len(master["stores"]) > 0
        # the worker runs with the collector tuned for streaming (ctower/gc_tuning.py)
        assert stats["gc"]["thresholds"] == list(THRESHOLDS)
        assert stats["gc"]["frozen_objects"] > 0
        demo.send_signal(signal.SIGINT)
        output, _ = demo.communicate(timeout=90)
    finally:
        if demo.poll() is None:  # a failed test must not leave the demo's children running
            for child in children_of(demo.pid):
                with contextlib.suppress(OSError):
                    os.kill(child, signal.SIGKILL)
            demo.kill()
    assert demo.returncode == 0, output
    assert "stopped worker" in output and "stopped sink" in output
    assert "stopped kafka" not in output  # it did not start the session's broker
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in started):
        time.sleep(0.2)
    assert not [p for p in started if os.path.exists(f"/proc/{p}")]
