"""Backtest: a candidate rules file against the rules in force, on recorded events."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from kafka import KafkaConsumer

from ctower.rules.backtest import run_backtest
from ctower.rules.backtest_command import backtest
from ctower.rules.config import DEFAULTS_FILE, Rules
from ctower.schemas.events import Pickup
from ctower.schemas.master_data import MasterData, RegionInfo, StoreInfo
from ctower.settings import Settings
from ctower.simulator.command import simulate
from ctower.simulator.items import Item, wire_value
from ctower.simulator.jsonl import JsonlWriter
from ctower.simulator.recorder import record_command
from ctower.topics import end_offsets

MINUTE = 60_000
MASTER = MasterData(
    regions=[RegionInfo(region_id="EAST", warehouse_id="WH-EAST")],
    stores=[StoreInfo(store_id="S1", region_id="EAST", pickup_capacity=10)],
)


def _t0() -> int:
    start = int(time.time() * 1000) - 86_400_000
    return start - start % MINUTE


def write_slow_counter(path: Path, t0: int) -> None:
    """Store S1 for an hour: a customer arrives each minute and waits 6 minutes for
    the first half hour (p90 wait 6 min), then 1 minute. Never more than 7 waiting of
    a capacity of 10, so only a p90 threshold under 6 minutes calls it congested."""
    events: list[Pickup] = []
    for i in range(60):
        arrived = t0 + i * MINUTE
        wait = 6 * MINUTE if i < 30 else MINUTE
        events.append(Pickup(ts=arrived, order_id=f"o{i}", store_id="S1", state="arrived"))
        events.append(Pickup(ts=arrived + wait, order_id=f"o{i}", store_id="S1",
                             state="picked_up"))
    events.sort(key=lambda e: e.ts)  # type: ignore[arg-type, return-value]
    writer = JsonlWriter(path)
    for event in events:
        item = Item("pickup", "S1", event.ts, event)  # type: ignore[arg-type]
        writer.write(item, wire_value(item))
    writer.close()


def candidate_file(path: Path, **pickup: float) -> Path:
    text = DEFAULTS_FILE.read_text()
    for name, value in pickup.items():
        lines = [f"{name} = {value}" if line.startswith(f"{name} =") else line
                 for line in text.splitlines()]
        text = "\n".join(lines) + "\n"
    path.write_text(text)
    return path


def test_a_lower_wait_threshold_adds_the_congestion_alert_at_the_minute_it_holds(tmp_path):
    t0 = _t0()
    path = tmp_path / "day.jsonl"
    write_slow_counter(path, t0)
    candidate = Rules.model_validate({"pickup": {"wait_p90_minutes": 5.0}})
    result = run_backtest(path, Rules(), candidate, MASTER)
    assert result.events == 120
    assert result.live.opened() == []
    added = result.added
    assert [(a.kind, a.store_id) for a in added] == [("pickup_congestion", "S1")]
    # the fifth pick-up (min_waits) of a 6-minute wait: customer 4 at minute 4 + 6
    assert added[0].opened_at == t0 + 10 * MINUTE
    assert added[0].evidence["p90_wait_min"] == 6.0
    assert added[0].evidence["threshold_min"] == 5.0
    # resolved once the 6-minute waits leave the 15-minute window (in event time)
    resolved = [a for a in result.candidate.alerts if a.status == "resolved"]
    assert len(resolved) == 1
    assert t0 + 40 * MINUTE <= resolved[0].resolved_at <= t0 + 50 * MINUTE
    assert result.removed == []
    assert result.per_kind() == {"pickup_congestion": (1, 0)}


def test_identical_rules_show_an_empty_diff_and_a_throttle_change_shows_decisions(tmp_path):
    run, chain = tmp_path / "run.jsonl", tmp_path / "chain.json"
    result = CliRunner().invoke(
        simulate,
        ["--seed", "7", "--events", "20000", "--sim-rate", "2", "--incidents",
         "pickup_rush,stock_out", "--duplicates", "0.02", "--no-kafka", "--out", str(run),
         "--chain", str(chain), "--quiet"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    same = candidate_file(tmp_path / "same.toml")
    out = CliRunner().invoke(
        backtest,
        ["--rules", str(same), "--replay", str(run), "--master-data", str(chain), "--quiet",
         "--json", str(tmp_path / "same.json")],
        env={"CTOWER_DATA_DIR": str(tmp_path / "data")},
        catch_exceptions=False,
    )
    assert out.exit_code == 0, out.output
    assert "no difference" in out.output
    last = out.output.strip().splitlines()[-1]
    assert last.startswith("backtest: ") and "alerts +0 -0" in last
    assert "coupon decisions changed 0" in last
    diff = json.loads((tmp_path / "same.json").read_text())
    assert diff["in_force"]["alerts"] > 0  # the incidents raised something to compare
    assert diff["alerts_added"] == diff["alerts_removed"] == []

    lower = candidate_file(tmp_path / "lower.toml", throttle_above=0.5, reopen_below=0.3,
                           room_below=0.2)
    out = CliRunner().invoke(
        backtest,
        ["--rules", str(lower), "--replay", str(run), "--master-data", str(chain), "--quiet",
         "--json", str(tmp_path / "lower.json")],
        env={"CTOWER_DATA_DIR": str(tmp_path / "data")},
        catch_exceptions=False,
    )
    assert out.exit_code == 0, out.output
    diff = json.loads((tmp_path / "lower.json").read_text())
    throttles = [d for d in diff["decisions_added"] if d["active"]]
    assert throttles, out.output
    # the candidate throttles earlier: at a pressure between the two thresholds
    assert all(0.5 < d["evidence"]["pressure"] <= 0.8 for d in throttles)
    assert "throttle" in out.output and "coupon decisions changed" in out.output
    assert not (tmp_path / "data").exists()  # no store, no state: no side effects


def _topic_offsets(settings: Settings) -> dict[tuple[str, int], int]:
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap)
    try:
        topics = sorted(t for t in consumer.topics() if t.startswith(settings.topic_prefix))
    finally:
        consumer.close()
    return end_offsets(settings.bootstrap, topics)


@pytest.mark.kafka
def test_backtest_of_a_recording_publishes_nothing(settings_factory, tmp_path):
    from ctower.topics import ensure_topics

    settings = settings_factory()
    ensure_topics(settings)
    env = {"CTOWER_KAFKA_BOOTSTRAP": settings.bootstrap,
           "CTOWER_TOPIC_PREFIX": settings.topic_prefix,
           "CTOWER_DATA_DIR": str(tmp_path / "data")}
    t0 = _t0()
    sent = tmp_path / "sent.jsonl"
    write_slow_counter(sent, t0)
    result = CliRunner().invoke(simulate, ["--replay", str(sent), "--speed", "max", "--quiet"],
                                env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    day = tmp_path / "day.jsonl"
    result = CliRunner().invoke(record_command, ["--out", str(day), "--quiet"], env=env,
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    before = _topic_offsets(settings)
    assert sum(before.values()) == 120

    master = tmp_path / "master.json"
    master.write_bytes(__import__("msgspec").json.encode(MASTER))
    candidate = candidate_file(tmp_path / "candidate.toml", wait_p90_minutes=5.0)
    out = CliRunner().invoke(
        backtest,
        ["--rules", str(candidate), "--replay", str(day), "--master-data", str(master), "--quiet"],
        env=env, catch_exceptions=False,
    )
    assert out.exit_code == 0, out.output
    assert "pickup_congestion  +1 -0" in out.output
    added = [line for line in out.output.splitlines() if line.startswith("  + ")]
    assert len(added) == 1 and "S1" in added[0]
    assert "alerts +1 -0" in out.output.strip().splitlines()[-1]
    assert _topic_offsets(settings) == before  # no topic created, nothing appended
    assert not (tmp_path / "data").exists()
