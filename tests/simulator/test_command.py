"""The ``simulate`` command's options and its refusals."""

from __future__ import annotations

import json

from click.testing import CliRunner

from ctower.simulator.command import simulate


def _run(*args: str):
    return CliRunner().invoke(simulate, list(args))


def test_bad_options_are_refused_with_a_readable_message():
    result = _run("--rate", "fast", "--no-kafka")
    assert result.exit_code == 2 and "'max'" in result.output
    result = _run("--rate", "0", "--no-kafka")
    assert result.exit_code == 2 and "> 0" in result.output
    result = _run("--incidents", "stock_out,meteor", "--no-kafka")
    assert result.exit_code == 2 and "meteor" in result.output
    result = _run("--events", "500", "--incidents", "late", "--no-kafka", "--quiet")
    assert result.exit_code == 1 and "30 minutes" in result.output


def test_no_kafka_writes_files_and_reports_throughput(tmp_path):
    out, truth, chain = tmp_path / "o.jsonl", tmp_path / "t.json", tmp_path / "c.json"
    result = _run(
        "--events",
        "2000",
        "--no-kafka",
        "--out",
        str(out),
        "--truth",
        str(truth),
        "--chain",
        str(chain),
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert "2,000 events" in result.output and "events/s" in result.output
    assert sum(1 for _ in out.open()) == 2000
    assert sum(json.loads(truth.read_text())["events_sent"].values()) == 2000
    master = json.loads(chain.read_text())
    assert len(master["stores"]) >= 50 and len(master["skus"]) >= 500


def test_start_far_in_the_past_is_refused_when_sending():
    result = _run("--start", "2001-01-01T00:00:00+08:00", "--events", "10", "--quiet")
    assert result.exit_code == 1 and "ts_max_past_days" in result.output
