"""The whole pipeline on real components: the project's Kafka broker, worker
and sink processes, the embedded ClickHouse store, and the simulator's
ground truth. The aggregates in the store must equal the truth exactly,
even when a worker is killed with SIGKILL halfway through.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ctower.broker.topics import ensure_topics
from ctower.settings import Settings
from ctower.simulator.truth import load_truth, store_minute_truth
from ctower.store import open_store
from ctower.tables.aggregates import STORE_MINUTE

pytestmark = pytest.mark.kafka

FIELDS = STORE_MINUTE.fields


def run_simulator(env: dict[str, str], *args: str, timeout: float = 300) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ctower", "simulate", "--quiet", *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


def start_simulator(
    env: dict[str, str], seed: int, truth_path: Path, rate: str = "max"
) -> subprocess.Popen[bytes]:
    """60k events of simulated history (all six streams), as fast as possible by default."""
    return subprocess.Popen(
        [sys.executable, "-m", "ctower", "simulate", "--quiet", "--seed", str(seed),
         "--events", "60000", "--rate", rate, "--sim-rate", "10", "--batch", "10",
         "--truth", str(truth_path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def events_seen(port: int) -> int:
    """Events a worker has folded so far (0 while it cannot answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats/", timeout=2) as answer:
            return sum(s.get("events", 0) for s in json.load(answer).values())
    except OSError:
        return 0


def store_rows(settings: Settings) -> dict[tuple[str, int], dict[str, int]]:
    client = open_store(settings, path_fallback=False)
    columns = ", ".join(FIELDS)
    result = client.query(
        f"SELECT store_id, toUnixTimestamp64Milli(window_start), {columns} FROM store_minute_v"
    )
    return {
        (row[0], int(row[1])): dict(zip(FIELDS, (int(v) for v in row[2:]), strict=True))
        for row in result.result_rows
    }


def totals(rows: dict[Any, dict[str, int]]) -> dict[str, int]:
    return {name: sum(row[name] for row in rows.values()) for name in FIELDS}


def start_pipeline(
    settings: Settings, ctower_process: Callable[..., Any]
) -> tuple[Any, Any]:
    ensure_topics(settings)
    sink = ctower_process(settings, "sink", "sink")
    sink.wait_http(f"http://127.0.0.1:{settings.store_http_port}/ping")
    worker = ctower_process(settings, "worker", "worker")
    worker.wait_http(f"http://127.0.0.1:{settings.worker_web_port}/stats/")
    return sink, worker


# A replay of past events sent at full speed: a partition idle this long
# while caught up closes its windows by the wall clock, and everything sent
# after that is late. A loaded machine can stall the simulator for 2 s; 10 s
# (the default) is what a replay can rely on. The paced test sends events
# stamped with the present, so a stall there is harmless and 2 s keeps it short.
REPLAY_IDLE_CLOSE = 10.0


def wait_for_truth(
    settings: Settings, truth_rows: dict[Any, dict[str, int]], poll: Callable[..., Any],
    processes: list[Any], timeout: float = 180,
) -> dict[Any, dict[str, int]]:
    expected = totals(truth_rows)
    last: dict[str, int] = {}

    def matched() -> Any:
        for process in processes:
            assert process.alive(), f"{process.name} died:\n{process.log_tail()}"
        rows = store_rows(settings)
        last.update(totals(rows))
        return rows if last == expected else False

    try:
        return poll(matched, timeout, "store totals never reached the truth", every=1.0)
    except AssertionError as failure:
        # say which totals are off and by how much, and what the processes said:
        # a loss and a double count need different hunts
        off = {name: (last.get(name), want) for name, want in expected.items()
               if last.get(name) != want}
        logs = "\n".join(f"--- {p.name}\n{p.log_tail(4000)}" for p in processes)
        raise AssertionError(f"{failure}; (got, want) {off}\n{logs}") from None


def test_aggregates_equal_the_simulator_truth(
    settings_factory: Callable[..., Settings],
    ctower_process: Callable[..., Any],
    poll: Callable[..., Any],
    tmp_path: Path,
    env_for: Callable[[Settings], dict[str, str]],
) -> None:
    settings = settings_factory(idle_close_seconds=REPLAY_IDLE_CLOSE)
    sink, worker = start_pipeline(settings, ctower_process)
    truth_path = tmp_path / "truth.json"
    run_simulator(
        env_for(settings), "--seed", "11", "--events", "20000", "--rate", "max", "--sim-rate", "4",
        "--batch", "50", "--incidents", "malformed", "--truth", str(truth_path),
    )
    truth = load_truth(truth_path)
    expected = store_minute_truth(truth)
    assert sum(row["scans"] for row in expected.values()) > 1000
    rows = wait_for_truth(settings, expected, poll, [sink, worker])
    assert rows == expected

    # every malformed event is in the dead letters, with the reason the truth names
    malformed = truth["malformed"]
    assert malformed
    client = open_store(settings, path_fallback=False)

    def dead_letters() -> Any:
        found = client.query("SELECT reason, count() FROM dead_letters FINAL GROUP BY reason")
        got = {reason: int(count) for reason, count in found.result_rows}
        want: dict[str, int] = {}
        for item in malformed:
            want[item["reason"]] = want.get(item["reason"], 0) + 1
        return got if got == want else False

    poll(dead_letters, 60, "dead letters never matched the injected malformed events")


def test_worker_killed_mid_stream_loses_and_doubles_nothing(
    settings_factory: Callable[..., Settings],
    ctower_process: Callable[..., Any],
    poll: Callable[..., Any],
    tmp_path: Path,
    env_for: Callable[[Settings], dict[str, str]],
) -> None:
    settings = settings_factory(idle_close_seconds=REPLAY_IDLE_CLOSE)
    sink, worker = start_pipeline(settings, ctower_process)
    truth_path = tmp_path / "truth.json"
    simulator = start_simulator(env_for(settings), 5, truth_path)
    stats_url = f"http://127.0.0.1:{settings.worker_web_port}/stats/"
    poll(lambda: events_seen(settings.worker_web_port) > 10_000, 60, "the worker never got going")
    worker.kill()
    time.sleep(1)
    restarted = ctower_process(settings, "worker-restarted", "worker")
    restarted.wait_http(stats_url)
    output, _ = simulator.communicate(timeout=300)
    assert simulator.returncode == 0, output[-3000:]
    expected = store_minute_truth(load_truth(truth_path))
    rows = wait_for_truth(settings, expected, poll, [sink, restarted])
    assert rows == expected
    # and the raw events are there once each
    client = open_store(settings, path_fallback=False)
    sent = load_truth(truth_path)["events_sent"]
    raw = int(client.query("SELECT count() FROM scan_events FINAL").first_row[0])
    assert raw == sent["scan"]


def test_a_second_worker_joining_mid_stream_shares_the_partitions_exactly(
    settings_factory: Callable[..., Settings],
    ctower_process: Callable[..., Any],
    poll: Callable[..., Any],
    tmp_path: Path,
    env_for: Callable[[Settings], dict[str, str]],
) -> None:
    settings = settings_factory(idle_close_seconds=2)
    sink, first = start_pipeline(settings, ctower_process)
    truth_path = tmp_path / "truth.json"
    # paced (about 20 s), so events are still coming when the second worker has
    # joined: a worker draining faster than a rebalance must not make this vacuous
    simulator = start_simulator(env_for(settings), 8, truth_path, rate="3000")
    poll(lambda: events_seen(settings.worker_web_port) > 10_000, 60, "no progress")
    free = settings_factory()  # same topics and group, fresh free ports
    second_settings = settings.model_copy(
        update={"worker_web_port": free.worker_web_port, "data_dir": tmp_path / "second"}
    )
    second = ctower_process(second_settings, "second-worker", "worker")
    output, _ = simulator.communicate(timeout=300)
    assert simulator.returncode == 0, output[-3000:]
    expected = store_minute_truth(load_truth(truth_path))
    rows = wait_for_truth(settings, expected, poll, [sink, first, second])
    assert rows == expected
    assert events_seen(second_settings.worker_web_port) > 0  # it did take partitions
