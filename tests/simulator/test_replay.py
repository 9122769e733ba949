"""Replaying an --out file: the same messages again, at the asked pace."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from click.testing import CliRunner

from ctower.simulator.command import simulate
from ctower.simulator.generator import SimConfig, Simulator
from ctower.simulator.items import wire_value
from ctower.simulator.jsonl import JsonlWriter, read_jsonl
from ctower.simulator.replay import replay
from ctower.simulator.truth import TruthRecorder, load_truth

from .test_producer import _cli_env, consume_all


def test_replay_to_a_file_is_byte_identical_and_recounts_the_same_truth(incident_run, tmp_path):
    copy, truth_path = tmp_path / "copy.jsonl", tmp_path / "truth.json"
    result = CliRunner().invoke(
        simulate,
        [
            "--replay",
            str(incident_run.out),
            "--speed",
            "max",
            "--no-kafka",
            "--out",
            str(copy),
            "--truth",
            str(truth_path),
            "--quiet",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert copy.read_bytes() == incident_run.out.read_bytes()
    again = load_truth(truth_path)
    for key in ("events_sent", "aggregates"):
        assert again[key] == incident_run.truth[key]
    assert [m["reason"] for m in again["malformed"]] == [
        m["reason"] for m in incident_run.truth["malformed"]
    ]
    assert [m["seq"] for m in again["late"]] == [m["seq"] for m in incident_run.truth["late"]]


def test_replay_follows_the_recorded_pace(tmp_path):
    start = int(time.time() * 1000) - 86_400_000
    sim = Simulator(SimConfig(seed=2, events=400, sim_rate=2, start_ms=start - start % 86_400_000))
    path = tmp_path / "small.jsonl"
    writer = JsonlWriter(path)
    for item in sim.items():
        writer.write(item, wire_value(item))
    writer.close()
    items = list(read_jsonl(path))
    span_s = (items[-1].ts - items[0].ts) / 1000
    assert span_s > 60
    speed = span_s / 1.5  # the whole file in about 1.5 s
    started = time.monotonic()
    stats = replay(None, path, speed=speed, out=tmp_path / "copy.jsonl", truth=TruthRecorder())
    elapsed = time.monotonic() - started
    assert stats.events == 400
    assert 1.3 < elapsed < 4.0
    with pytest.raises(ValueError):
        replay(None, path, speed=0)


@pytest.mark.kafka
def test_replay_resends_the_same_messages(settings_factory, tmp_path):
    settings = settings_factory()
    out = tmp_path / "run.jsonl"
    result = CliRunner().invoke(
        simulate,
        ["--seed", "9", "--events", "3000", "--no-kafka", "--out", str(out), "--quiet"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        simulate,
        ["--replay", str(out), "--speed", "max", "--quiet"],
        env=_cli_env(settings),
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    expected = Counter((settings.topic(i.stream), wire_value(i)) for i in read_jsonl(out))
    got = Counter((r.topic, r.value) for r in consume_all(settings))
    assert sum(expected.values()) == 3000
    assert got == expected
