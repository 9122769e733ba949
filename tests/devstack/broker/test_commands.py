"""``ctower kafka ...`` through click's CliRunner, against real brokers."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from ctower.devstack.broker.commands import NOT_RUNNING_EXIT_CODE, kafka

pytestmark = pytest.mark.kafka


@pytest.fixture
def cli_env(tmp_path: Path, free_port: Callable[[], int]) -> Callable[..., dict[str, str | None]]:
    """An environment for one invocation: nothing inherited that could point elsewhere."""

    def make(**extra: str | None) -> dict[str, str | None]:
        env: dict[str, str | None] = {
            "KAFKA_BOOTSTRAP": None,
            "CTOWER_KAFKA_BOOTSTRAP": None,
            "CTOWER_CONFIG": None,
            "CTOWER_DATA_DIR": str(tmp_path / "data"),
            "CTOWER_KAFKA_PORT": str(free_port()),
        }
        env.update(extra)
        return env

    return make


def test_bad_setting_is_a_clean_error(
    tmp_path: Path, cli_env: Callable[..., dict[str, str | None]]
) -> None:
    result = CliRunner().invoke(kafka, ["status"], env=cli_env(CTOWER_KAFKA_PORT="nope"))
    assert result.exit_code == 1
    assert "Error: bad setting: CTOWER_KAFKA_PORT" in result.output
    assert "Traceback" not in result.output


def test_local_up_status_down(
    tmp_path: Path, cli_env: Callable[..., dict[str, str | None]]
) -> None:
    runner = CliRunner()
    env = cli_env()
    port = env["CTOWER_KAFKA_PORT"]

    stopped = runner.invoke(kafka, ["status"], env=env)
    assert stopped.exit_code == NOT_RUNNING_EXIT_CODE
    assert "running    no" in stopped.output

    try:
        up = runner.invoke(kafka, ["up", "--timeout", "120"], env=env)
        assert up.exit_code == 0, up.output
        assert f"is up at 127.0.0.1:{port}" in up.output
        assert "created topics: ct.scan" in up.output

        running = runner.invoke(kafka, ["status"], env=env)
        assert running.exit_code == 0, running.output
        assert "running    yes" in running.output and "answers    yes" in running.output
        assert str(tmp_path / "data" / "kafka" / "broker.log") in running.output

        # the last line: a loaded machine can log one bootstrap timeout of the
        # admin client before its retry answers (seen in CI at 22:00 UTC)
        again = runner.invoke(kafka, ["topics"], env=env)
        assert again.exit_code == 0, again.output
        assert again.output.strip().splitlines()[-1] == "all topics exist"
    finally:
        down = runner.invoke(kafka, ["down"], env=env)
    assert down.exit_code == 0, down.output
    assert "stopped the local broker" in down.output
    assert runner.invoke(kafka, ["status"], env=env).exit_code == NOT_RUNNING_EXIT_CODE
    again = runner.invoke(kafka, ["down"], env=env)
    assert again.exit_code == 0 and "was not running" in again.output


def test_taken_port_is_a_clean_error(
    tmp_path: Path, cli_env: Callable[..., dict[str, str | None]]
) -> None:
    env = cli_env()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(env["CTOWER_KAFKA_PORT"] or 0)))
        squatter.listen()
        result = CliRunner().invoke(kafka, ["up", "--timeout", "10"], env=env)
    assert result.exit_code == 1
    assert result.output.startswith("Error: port ")
    assert "CTOWER_KAFKA_PORT" in result.output


def test_external_cluster(
    tmp_path: Path, kafka_bootstrap: str, cli_env: Callable[..., dict[str, str | None]]
) -> None:
    prefix = f"c{uuid.uuid4().hex[:8]}."
    env = cli_env(KAFKA_BOOTSTRAP=kafka_bootstrap, CTOWER_TOPIC_PREFIX=prefix)
    runner = CliRunner()

    up = runner.invoke(kafka, ["up", "--timeout", "30"], env=env)
    assert up.exit_code == 0, up.output
    assert f"cluster (KAFKA_BOOTSTRAP) is up at {kafka_bootstrap}" in up.output
    assert f"{prefix}coupon-policy" in up.output

    topics = runner.invoke(kafka, ["topics"], env=env)
    assert topics.exit_code == 0 and "all topics exist" in topics.output

    status = runner.invoke(kafka, ["status"], env=env)
    assert status.exit_code == 0 and "external (KAFKA_BOOTSTRAP)" in status.output

    down = runner.invoke(kafka, ["down"], env=env)
    assert down.exit_code == 0 and "no local broker to stop" in down.output
    assert not (tmp_path / "data" / "kafka").exists()
