"""docker-compose.yml, checked by Debian's docker-compose 1.29 without a Docker engine.

``docker-compose config`` validates the file against the compose schema and
prints it resolved (anchors merged, variables interpolated), which is what
these tests read. ``make setup`` installs docker-compose, so its absence is a
failure, not a skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SENTINEL = "sentinel-from-host-env-7f3a"
SERVICES = {"kafka", "clickhouse", "topics", "worker", "sink", "dashboard", "simulator", "alerts"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|WEBHOOK|API_KEY|PRIVATE", re.IGNORECASE)


def _compose() -> str:
    found = shutil.which("docker-compose") or (
        "/usr/bin/docker-compose" if Path("/usr/bin/docker-compose").exists() else None
    )
    if not found:
        pytest.fail("docker-compose is not installed: run `make setup` (Debian: docker-compose)")
    return found


def _run(*args: str, password: str | None = SENTINEL) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CTOWER_", "COMPOSE_"))}
    if password is not None:
        env["CTOWER_STORE_PASSWORD"] = password
    return subprocess.run(
        [_compose(), "-f", str(COMPOSE_FILE), "--project-directory", str(ROOT), "config", *args],
        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
    )


def _yaml_to_python(text: str) -> Any:
    """Parse YAML with the interpreter docker-compose itself runs on (it has PyYAML).

    The project's venv does not depend on PyYAML just for this test.
    """
    shebang = Path(_compose()).read_text(errors="replace").splitlines()[0]
    interpreter = shebang[2:].strip().split()[0] if shebang.startswith("#!") else "python3"
    to_json = "import sys, json, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"
    parsed = subprocess.run(
        [interpreter, "-c", to_json],
        input=text, capture_output=True, text=True, timeout=60, check=True,
    )
    return json.loads(parsed.stdout)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    result = _run()
    assert result.returncode == 0, result.stderr
    return _yaml_to_python(result.stdout)


@pytest.fixture(scope="module")
def raw_config() -> dict[str, Any]:
    result = _run("--no-interpolate")
    assert result.returncode == 0, result.stderr
    return _yaml_to_python(result.stdout)


def test_services_and_profile(config: dict[str, Any]) -> None:
    services = config["services"]
    assert set(services) == SERVICES
    assert services["simulator"]["profiles"] == ["simulator"]
    assert services["alerts"]["profiles"] == ["alerts"]
    assert sorted(name for name, svc in services.items() if svc.get("profiles")) == [
        "alerts", "simulator"]
    profiles = _run("--profiles")
    assert profiles.returncode == 0 and sorted(profiles.stdout.split()) == ["alerts", "simulator"]


def test_images_commands_and_replicas(config: dict[str, Any]) -> None:
    services = config["services"]
    assert services["kafka"]["image"] == "apache/kafka:4.1.1"
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert any(v.endswith(":/var/lib/clickhouse:rw") or v.endswith(":/var/lib/clickhouse")
               for v in services["clickhouse"]["volumes"])
    assert services["worker"]["command"] == ["ctower", "worker"]
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["sink"]["command"] == ["ctower", "sink"]
    assert services["dashboard"]["command"] == ["ctower", "dashboard"]
    assert services["simulator"]["command"] == ["ctower", "simulate", "--rate", "200"]
    assert services["alerts"]["command"][:3] == ["ctower", "alerts", "deliver"]
    # the webhook URLs come from a compose secret, not the environment
    assert services["alerts"]["secrets"][0]["source"] == "ctower_webhooks"
    assert "/run/secrets/ctower_webhooks" in services["alerts"]["command"]
    assert {"published": 8501, "target": 8501} in services["dashboard"]["ports"]
    for name in ("topics", "worker", "sink", "dashboard", "simulator", "alerts"):
        build = services[name]["build"]
        assert Path(build["context"]) == ROOT and build["dockerfile"] == "Dockerfile"
        env = services[name]["environment"]
        assert env["KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert env["CTOWER_STORE_DSN"] == "http://clickhouse:8123"


def test_healthchecks_and_start_order(config: dict[str, Any]) -> None:
    services = config["services"]
    assert "kafka-broker-api-versions" in " ".join(services["kafka"]["healthcheck"]["test"])
    assert "http://localhost:8123/ping" in services["clickhouse"]["healthcheck"]["test"]
    assert "/_stcore/health" in " ".join(services["dashboard"]["healthcheck"]["test"])
    healthy = {"condition": "service_healthy"}
    for name in ("worker", "sink"):
        assert services[name]["depends_on"]["kafka"] == healthy
        assert services[name]["depends_on"]["clickhouse"] == healthy
        assert services[name]["depends_on"]["topics"] == {
            "condition": "service_completed_successfully"}
    assert services["dashboard"]["depends_on"]["clickhouse"] == healthy
    assert services["simulator"]["depends_on"]["kafka"] == healthy
    assert services["topics"]["command"] == ["ctower", "kafka", "topics"]


def test_password_comes_from_the_host_environment(config: dict[str, Any]) -> None:
    services = config["services"]
    assert services["clickhouse"]["environment"]["CLICKHOUSE_PASSWORD"] == SENTINEL
    for name in ("topics", "worker", "sink", "dashboard", "simulator"):
        assert services[name]["environment"]["CTOWER_STORE_PASSWORD"] == SENTINEL
    missing = _run(password=None)
    assert missing.returncode != 0
    assert "CTOWER_STORE_PASSWORD" in missing.stderr


def test_no_secret_is_hard_coded(raw_config: dict[str, Any]) -> None:
    text = COMPOSE_FILE.read_text()
    assert SENTINEL not in text
    checked = 0
    for name, service in raw_config["services"].items():
        env = service.get("environment") or {}
        assert isinstance(env, dict), f"{name}: use a mapping for environment"
        for key, value in env.items():
            if not SECRET_NAME.search(key):
                continue
            checked += 1
            # Only a required reference to the host's environment: no literal,
            # and no ${VAR:-fallback} that would smuggle in a default secret.
            assert re.fullmatch(r"\$\{[A-Z0-9_]+(:?\?[^}]*)?\}", str(value)), (
                f"{name}: {key} must come from the environment, got {value!r}"
            )
    assert checked >= 2


def test_dockerfile_is_slim_and_unprivileged() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    instructions = [line.strip() for line in dockerfile.splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
    assert instructions[0] == "FROM python:3.11-slim"
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    # The project itself is pip-installed from the copied sources, not editable.
    assert "COPY . /src/" in instructions
    assert any(re.search(r"pip install (--no-deps )?/src( |$)", line) for line in instructions)
    assert not any(re.search(r"pip install .*(-e|--editable) ", line) for line in instructions)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv"} <= set(ignored)
