"""``ctower bench``: the group keeps the throughput bench as its default, and the
decisions bench's figures are computed and printed as documented. Nothing here
runs a benchmark: their figures are for people, not assertions."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ctower.bench import engine as bench_module
from ctower.bench.decisions import AlertRun, percentile
from ctower.bench.engine import (
    WorkerCounter,
    decisions_result,
    decisions_result_line,
    live_cost,
    run_p99s,
)
from ctower.cli import cli
from ctower.settings import Settings


def test_bench_lists_its_subcommands_and_each_has_help() -> None:
    runner = CliRunner()
    listing = runner.invoke(cli, ["bench", "--help"])
    assert listing.exit_code == 0, listing.output
    assert "--events" in listing.output  # the throughput bench's own options stay
    for name in ("decisions", "dashboard"):
        assert name in listing.output
        answer = runner.invoke(cli, ["bench", name, "--help"])
        assert answer.exit_code == 0, answer.output
    assert "--event-rate" in runner.invoke(cli, ["bench", "decisions", "--help"]).output


def test_bench_alone_runs_the_throughput_bench_and_a_subcommand_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(bench_module, "throughput", lambda *args: calls.append(args))
    runner = CliRunner()
    assert runner.invoke(cli, ["bench", "--events", "5000", "--no-sink"]).exit_code == 0
    assert calls == [(5000, 100, 200_000, 1, True, min(2, os.cpu_count() or 1))]
    assert runner.invoke(cli, ["bench", "decisions", "--help"]).exit_code == 0
    assert len(calls) == 1


def test_percentile_interpolates_like_numpy_and_misses_make_the_tail_infinite() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    one_miss = [float(v) for v in range(1, 200)] + [math.inf]  # 0.5% missed
    assert percentile(one_miss, 99) == pytest.approx(198.01)
    two_misses = [float(v) for v in range(1, 99)] + [math.inf, math.inf]  # 2% missed
    assert percentile(two_misses, 99) == math.inf
    assert percentile(two_misses, 50) == pytest.approx(50.5)


def test_missed_and_skipped_probes_count_in_the_alert_percentiles() -> None:
    run = AlertRun(probes=4, alert_timeout=10.0, latencies_ms=[100.0, 200.0],
                   missed=["S001#3"], skipped=1)
    assert sorted(run.with_misses()) == [100.0, 200.0, math.inf, math.inf]


def test_result_takes_medians_over_reservation_runs_and_prints_the_documented_line() -> None:
    runs = [[1.0, 2.0, 3.0], [10.0, 20.0, 30.0], [4.0, 5.0, 6.0]]
    alerts = [float(v) for v in range(1, 101)]
    figures = decisions_result(runs, alerts)
    assert figures[0] == pytest.approx(5.0)  # the runs' p50s are 2, 20 and 5
    assert figures[1] == pytest.approx(5.98)  # their p99s are 2.98, 29.8 and 5.98
    assert figures[2:] == (pytest.approx(50.5), pytest.approx(99.01))
    assert decisions_result_line(figures) == (
        "RESULT reserve_p50_ms=5.0 reserve_p99_ms=6.0 alert_p50_ms=50.5 alert_p99_ms=99.0"
    )
    assert decisions_result_line((1.0, 2.0, 3.0, math.inf)).endswith("alert_p99_ms=inf")
    # the median hides the drain's run: each run's p99 is printed too, in run order
    assert run_p99s(runs) == "3.0 / 29.8 / 6.0"
    assert run_p99s([]) == "none"


class _Answer(io.BytesIO):
    def __enter__(self) -> _Answer:
        return self

    def __exit__(self, *_: object) -> None:
        return None


def _serve_stats(monkeypatch: pytest.MonkeyPatch, answers: list[dict[str, Any]]) -> None:
    """The workers' /stats/ answers, in the order the bench asks."""
    monkeypatch.setattr(bench_module.urllib.request, "urlopen",
                        lambda *_a, **_k: _Answer(json.dumps(answers.pop(0)).encode()))


def test_the_worker_is_not_drained_while_its_rules_have_items_left(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
) -> None:
    answers = [
        {"scan": {"events": 100}, "decisions": {
            "moves_forwarded": 40, "lane_events_forwarded": 5,
            "stock-moves": {"items": 30}, "lanes": {"items": 5}}},
        {"scan": {"events": 100}, "decisions": {
            "moves_forwarded": 40, "lane_events_forwarded": 5,
            "stock-moves": {"items": 40}, "lanes": {"items": 5}}},
    ]

    _serve_stats(monkeypatch, answers)
    counter = WorkerCounter(Settings(data_dir=tmp_path))
    assert counter() == 99  # every event folded, but 10 stock moves not yet applied
    assert counter() == 100
    assert counter.written(100).startswith("rule state 0.000")


def test_the_counter_of_two_workers_sums_them_and_waits_for_the_rules_of_both(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With two workers, a worker's stock moves are applied by whichever owns
    their key: only the sums say whether the rules have caught up."""
    one = {"scan": {"events": 60}, "decisions": {
        "moves_forwarded": 30, "lane_events_forwarded": 0,
        "stock-moves": {"items": 10}, "lanes": {"items": 0}}}
    other = {"scan": {"events": 40}, "decisions": {
        "moves_forwarded": 10, "lane_events_forwarded": 0,
        "stock-moves": {"items": 25}, "lanes": {"items": 0}}}
    answers = [one, other, one, {**other, "decisions": {
        **other["decisions"], "stock-moves": {"items": 30}}}]

    _serve_stats(monkeypatch, answers)
    workers = [Settings(data_dir=tmp_path, worker_web_port=port) for port in (7001, 7002)]
    counter = WorkerCounter(workers)
    assert counter() == 99  # 35 of the 40 moves applied, though one worker applied more
    assert counter() == 100
    assert counter.last["decisions"]["moves_forwarded"] == 40


def test_a_drain_ends_only_once_every_partition_is_folded_to_its_end(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A partition that changed hands is folded again from its last commit, and
    the sums count those events twice: here they reach 110 of 100 while scan[1]
    is folded to offset 7 of 9."""
    def answer(events: int, positions: dict[str, int]) -> dict[str, Any]:
        return {"scan": {"events": events, "positions": positions}}

    answers = [answer(70, {"0": 4}), answer(40, {"1": 7}),
               answer(70, {"0": 4}), answer(42, {"1": 9})]
    _serve_stats(monkeypatch, answers)
    workers = [Settings(data_dir=tmp_path, worker_web_port=port) for port in (7001, 7002)]
    ends = {("scan", 0): 5, ("scan", 1): 10, ("order", 0): 0}  # order[0] has no message
    counter = WorkerCounter(workers, ends, expected=100)
    assert counter() == 99
    assert counter() == 112


def test_the_group_s_rate_is_measured_while_every_worker_folds_from_the_furthest_offsets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Worker 0 folds alone, then hands scan[1] to worker 1, which folds it
    again from its last commit, then runs out of work while worker 1 goes on.
    The rate counts the backlog behind the furthest offsets (scan[1] stays
    counted where worker 0 had got to) from the moment both fold to the
    moment the first one stops."""
    def answer(events: int, positions: dict[str, int]) -> dict[str, Any]:
        return {"scan": {"events": events, "positions": positions}}

    answers = [answer(60, {"0": 3, "1": 5}), answer(0, {}),  # worker 1 not in yet
               answer(60, {"0": 3}), answer(10, {"1": 1}),  # both fold: scan[1] again
               answer(100, {"0": 9}), answer(40, {"1": 6}),  # worker 0 at its end
               answer(100, {"0": 9}), answer(110, {"1": 9})]  # worker 1 at its end
    _serve_stats(monkeypatch, answers)
    times = iter([0.0, 10.0, 14.0, 20.0])
    workers = [Settings(data_dir=tmp_path, worker_web_port=port) for port in (7001, 7002)]
    counter = WorkerCounter(workers, {("scan", 0): 10, ("scan", 1): 10}, expected=200,
                            clock=lambda: next(times))
    assert [counter(), counter(), counter(), counter()] == [60, 70, 140, 210]
    # offsets 0-3 and 0-5 of 10 each when both fold (10 of 20 messages: 100
    # events), 0-9 and 0-6 when worker 0 stops (17 of 20: 170 events), 4 s apart
    assert counter.all_working_rate() == pytest.approx((170 - 100) / 4)
    assert counter.heaviest_share() == pytest.approx(0.5)  # 10 messages each
    assert counter.join_seconds() == pytest.approx(10.0)  # worker 1 in at the second count


def test_the_heaviest_share_is_the_backlog_in_the_partitions_one_worker_holds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Worker 0 still reports scan[1] at offset 4, from before it handed it to
    worker 1, which folded it to its end: scan[1] is worker 1's."""
    _serve_stats(monkeypatch, [{"scan": {"events": 9, "positions": {"0": 9, "1": 4}}},
                               {"scan": {"events": 9, "positions": {"1": 29, "2": 19}}}])
    workers = [Settings(data_dir=tmp_path, worker_web_port=port) for port in (7001, 7002)]
    ends = {("scan", 0): 10, ("scan", 1): 30, ("scan", 2): 20}
    counter = WorkerCounter(workers, ends, expected=60)
    counter()
    assert counter.heaviest_share() == pytest.approx(50 / 60)


def test_no_rate_while_every_worker_folds_when_one_never_folded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _serve_stats(monkeypatch, [{"scan": {"events": 50, "positions": {"0": 9}}}, {}])
    workers = [Settings(data_dir=tmp_path, worker_web_port=port) for port in (7001, 7002)]
    counter = WorkerCounter(workers, {("scan", 0): 10}, expected=50)
    assert counter() == 50
    assert counter.all_working_rate() is None


def test_a_stalled_drain_says_which_partitions_wait_and_keeps_every_worker_s_stats(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    waiting = {"offset_order": {"scan": {"let_go": 5, "seeks": 3, "holes": 0, "waiting": {
        "2": {"expected": 4100, "seeks": 3, "since_seek_s": 0.4}}}}}
    idle = {"offset_order": {"scan": {"let_go": 0, "seeks": 0, "holes": 0, "waiting": {}}}}
    _serve_stats(monkeypatch, [idle, waiting])
    workers = [Settings(data_dir=tmp_path, worker_web_port=port) for port in (7001, 7002)]
    report = WorkerCounter(workers).stall_report(tmp_path)
    assert report.endswith("worker 1: scan[2] waits for offset 4100 after 3 seeks")
    assert json.loads((tmp_path / "stall.1.json").read_text()) == waiting
    assert json.loads((tmp_path / "stall.0.json").read_text()) == idle


def test_the_counter_adds_up_the_partitions_each_worker_sought_back_after_standing_still(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What the two-worker bench prints when messages went missing on the way."""
    def order(unstuck: int) -> dict[str, Any]:
        return {"let_go": 0, "seeks": unstuck, "holes": 0, "unstuck": unstuck, "waiting": {}}

    one = {"scan": {"events": 60}, "offset_order": {"scan": order(1), "coupon": order(2)}}
    other = {"scan": {"events": 40}, "offset_order": {"scan": order(0), "coupon": order(4)}}
    _serve_stats(monkeypatch, [one, other])
    workers = [Settings(data_dir=tmp_path, worker_web_port=port) for port in (7001, 7002)]
    counter = WorkerCounter(workers)
    assert counter() == 100
    assert counter.unstuck() == 7


def test_the_drain_reports_the_cpu_a_process_spent_and_the_cores_it_kept_busy() -> None:
    import subprocess
    import sys
    import time

    spin = "import sys, time\nt = time.process_time()\nwhile time.process_time() - t < 0.5:\n" \
           "    pass\nprint('done', flush=True)\nsys.stdin.read()\n"
    proc = subprocess.Popen([sys.executable, "-c", spin], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "done\n"
        spent = bench_module.cpu_seconds(proc.pid)
        time.sleep(0.3)  # waiting on stdin: no more CPU
        assert 0.5 <= spent <= bench_module.cpu_seconds(proc.pid) < spent + 0.1
    finally:
        proc.communicate("", timeout=10)
    drained = bench_module.Drain(2_000_000, 10.0, 12.0, 300.0, [], 8.0)
    assert bench_module.cpu_line(drained) == "4.0 CPU s per million events, 0.80 cores busy"
    with_broker = bench_module.Drain(2_000_000, 10.0, 12.0, 300.0, [], 8.0, 3.0)
    assert bench_module.cpu_line(with_broker) == (
        "4.0 CPU s per million events, 0.80 cores busy; the broker 1.5 CPU s per million"
    )


def test_the_bench_never_gives_two_servers_the_same_port() -> None:
    """The kernel hands a just-closed port out again (here 124 repeats in 2,000
    binds to port 0): two workers of a drain once needed distinct ones."""
    ports = [bench_module.free_port() for _ in range(2_000)]
    assert len(set(ports)) == len(ports)


def test_the_live_cost_is_cpu_per_event_folded_and_says_when_it_has_no_count() -> None:
    assert "12.5 CPU s per million events (400,000 events" in live_cost(5.0, 100_000, 500_000)
    for before, after in ((None, 10), (10, None), (10, 10)):
        assert live_cost(1.0, before, after).endswith("no count")


def test_a_reservation_run_says_what_the_aggregation_folded_and_whether_backlog_was_left() -> None:
    started = time.monotonic() - 2.0
    busy = bench_module.aggregation_meanwhile(1_000, 61_000, started, lambda: 700_000, 1_000_000)
    assert "60,000 events meanwhile" in busy
    assert int(busy.split("(")[1].split("/s")[0].replace(",", "")) in range(20_000, 30_001)
    assert "not saturated" not in busy
    drained = bench_module.aggregation_meanwhile(0, 5, started, lambda: 1_000_000, 1_000_000)
    assert "the backlog was gone by the run's end: not saturated throughout" in drained
    assert "not saturated" not in bench_module.aggregation_meanwhile(0, 0, started, lambda: 0, 0)


def test_a_run_header_gives_the_niceness_the_process_runs_at() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import os, time; os.nice(3); print('niced', flush=True); "
         "time.sleep(30)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "niced"
        base = os.getpriority(os.PRIO_PROCESS, 0)
        assert bench_module.niceness(child.pid) == f"niceness {min(base + 3, 19)}"
    finally:
        child.kill()
        child.wait()
    assert bench_module.niceness(child.pid) == "niceness unknown"  # reaped: no such process
