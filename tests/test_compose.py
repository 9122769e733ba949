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
SERVICES = {"kafka", "clickhouse", "topics", "worker-1", "worker-2", "sink", "dashboard",
            "simulator", "warehouse", "alerts", "prometheus", "grafana"}
OBSERVABILITY = {"prometheus", "grafana"}
CTOWER_SERVICES = SERVICES - {"kafka", "clickhouse"} - OBSERVABILITY
LONG_RUNNING = SERVICES - {"topics"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|WEBHOOK|API_KEY|PRIVATE", re.IGNORECASE)


def _compose() -> str:
    found = shutil.which("docker-compose") or (
        "/usr/bin/docker-compose" if Path("/usr/bin/docker-compose").exists() else None
    )
    if not found:
        pytest.fail("docker-compose is not installed: run `make setup` (Debian: docker-compose)")
    return found


def _run(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CTOWER_", "COMPOSE_"))}
    env.update(extra_env)
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
    assert services["warehouse"]["profiles"] == ["simulator"]  # it answers simulated orders
    assert services["alerts"]["profiles"] == ["alerts"]
    for name in OBSERVABILITY:
        assert services[name]["profiles"] == ["observability"]
    assert sorted(name for name, svc in services.items() if svc.get("profiles")) == [
        "alerts", "grafana", "prometheus", "simulator", "warehouse"]
    profiles = _run("--profiles")
    assert profiles.returncode == 0 and sorted(profiles.stdout.split()) == [
        "alerts", "observability", "simulator"]


def test_images_commands_and_replicas(config: dict[str, Any]) -> None:
    services = config["services"]
    assert services["kafka"]["image"] == "apache/kafka:4.1.1"
    # worker-1 and worker-2 start together: the group waits for both (Kafka's default)
    assert services["kafka"]["environment"]["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "3000"
    assert re.fullmatch(r"clickhouse/clickhouse-server:\d+\.\d+\.\d+\.\d+",
                        services["clickhouse"]["image"])
    assert any(v.endswith(":/var/lib/clickhouse:rw") or v.endswith(":/var/lib/clickhouse")
               for v in services["clickhouse"]["volumes"])
    for name in ("worker-1", "worker-2"):
        assert services[name]["command"] == ["ctower", "worker"]
    assert services["sink"]["command"] == ["ctower", "sink"]
    assert services["dashboard"]["command"] == ["ctower", "dashboard"]
    assert services["simulator"]["command"][:4] == ["ctower", "simulate", "--rate", "200"]
    assert services["warehouse"]["command"][:2] == ["ctower", "warehouse"]
    assert services["alerts"]["command"] == ["ctower", "alerts", "deliver"]
    assert {"published": 8501, "target": 8501} in services["dashboard"]["ports"]
    for name in CTOWER_SERVICES:
        build = services[name]["build"]
        assert Path(build["context"]) == ROOT and build["dockerfile"] == "Dockerfile"
        env = services[name]["environment"]
        assert env["KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert env["CTOWER_STORE_DSN"] == "http://clickhouse:8123"
        # the image is the project's version, never a moving tag
        assert services[name]["image"] == f"ctower:{_version()}"


def _version() -> str:
    import tomllib

    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def test_two_workers_advertise_their_own_hostname(config: dict[str, Any]) -> None:
    """Each replica listens on all interfaces, publishes the coupon API and
    advertises the URL the other reaches it at (coupon requests are forwarded
    to a campaign's owner there)."""
    services = config["services"]
    published = set()
    for name in ("worker-1", "worker-2"):
        svc = services[name]
        env = svc["environment"]
        assert svc["hostname"] == name
        assert env["CTOWER_WORKER_WEB_BIND"] == "0.0.0.0"
        port = int(env["CTOWER_WORKER_WEB_PORT"])
        assert env["CTOWER_WORKER_ADVERTISED_URL"] == f"http://{name}:{port}"
        (mapping,) = svc["ports"]
        assert mapping["target"] == port
        published.add(mapping["published"])
        assert "replicas" not in svc.get("deploy", {})
    assert published == {6066, 6067}


def test_healthchecks_restarts_limits_and_start_order(config: dict[str, Any]) -> None:
    services = config["services"]
    assert "kafka-broker-api-versions" in " ".join(services["kafka"]["healthcheck"]["test"])
    assert "http://localhost:8123/ping" in services["clickhouse"]["healthcheck"]["test"]
    roles = {"worker-1": "worker", "worker-2": "worker", "sink": "sink",
             "dashboard": "dashboard", "alerts": "alerts", "simulator": "simulator",
             "warehouse": "warehouse"}
    for name, role in roles.items():
        assert services[name]["healthcheck"]["test"] == ["CMD", "ctower", "health", role], name
    for name in LONG_RUNNING:
        assert services[name]["restart"] == "unless-stopped", name
        assert services[name].get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
    assert services["topics"]["restart"] == "no"  # one-shot
    for name, svc in services.items():
        limits = svc["deploy"]["resources"]["limits"]
        assert limits["cpus"] and limits["memory"], f"{name}: no resource limits"
        image = svc["image"]
        assert ":" in image and not image.endswith((":latest", ":")), f"{name}: {image}"
    healthy = {"condition": "service_healthy"}
    for name in ("worker-1", "worker-2", "sink", "dashboard", "alerts", "simulator",
                 "warehouse"):
        assert services[name]["depends_on"]["kafka"] == healthy
        assert services[name]["depends_on"]["topics"] == {
            "condition": "service_completed_successfully"}
    for name in ("sink", "dashboard"):
        assert services[name]["depends_on"]["clickhouse"] == healthy
    assert services["topics"]["command"] == ["ctower", "kafka", "topics"]


def test_configs_are_mounted_from_the_repository(config: dict[str, Any]) -> None:
    configs = config["configs"]
    assert Path(configs["master_data"]["file"]) == ROOT / "deploy" / "master_data.json"
    assert Path(configs["rules"]["file"]) == ROOT / "rules" / "rules.toml"
    assert Path(configs["alert_routes"]["file"]) == ROOT / "deploy" / "alert-routes.toml"
    for entry in configs.values():
        assert Path(entry["file"]).is_file(), entry
    services = config["services"]
    for name in CTOWER_SERVICES:
        mounted = {c["source"]: c["target"] for c in services[name]["configs"]}
        env = services[name]["environment"]
        assert mounted["master_data"] == env["CTOWER_MASTER_DATA_FILE"], name
    for name in ("worker-1", "worker-2"):
        mounted = {c["source"]: c["target"] for c in services[name]["configs"]}
        assert mounted["rules"] == services[name]["environment"]["CTOWER_RULES_FILE"]
    mounted = {c["source"]: c["target"] for c in services["alerts"]["configs"]}
    assert mounted["alert_routes"] == services["alerts"]["environment"][
        "CTOWER_ALERT_ROUTES_FILE"]


def test_secrets_are_files_under_run_secrets(config: dict[str, Any]) -> None:
    """Every secret is a compose secret, read through ``CTOWER_<NAME>_FILE``; a
    service mounts exactly the secrets its variables name."""
    assert set(config["secrets"]) == {"clickhouse_password", "coupon_api_token",
                                      "operator_token", "webhooks", "grafana_admin_password"}
    for entry in config["secrets"].values():
        assert Path(entry["file"]).parent == ROOT / "secrets"
    custom = _run(CTOWER_SECRETS_DIR="/srv/ctower-secrets")
    assert custom.returncode == 0 and "/srv/ctower-secrets/clickhouse_password" in custom.stdout
    for name, svc in config["services"].items():
        mounted = {s["source"] for s in svc.get("secrets", [])}
        named = {value.removeprefix("/run/secrets/")
                 for key, value in (svc.get("environment") or {}).items()
                 if key.endswith("_FILE") and value.startswith("/run/secrets/")}
        if name == "clickhouse":  # the image reads CLICKHOUSE_PASSWORD: set from the file
            named = {"clickhouse_password"}
            assert "/run/secrets/clickhouse_password" in " ".join(svc["entrypoint"])
            assert "CLICKHOUSE_PASSWORD" not in (svc.get("environment") or {})
        assert mounted == named, f"{name}: mounts {mounted}, its variables name {named}"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "secrets" in ignored, "the secrets must stay out of the image"
    assert "/secrets/" in (ROOT / ".gitignore").read_text().split()


def test_the_observability_profile_scrapes_every_process_and_shows_its_series(
    config: dict[str, Any],
) -> None:
    """Prometheus (pinned) reads deploy/prometheus/prometheus.yml; Grafana
    (pinned) gets its data source and the dashboard JSON from the repository,
    and every series the dashboard draws is one ctower/metrics.py exports.
    (That the scrape targets are the services' metrics ports is checked with
    the settings, in test_compose_topology.py.)"""
    services = config["services"]
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", services["prometheus"]["image"])
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", services["grafana"]["image"])
    configs = config["configs"]
    mounted = {c["source"]: c["target"] for c in services["prometheus"]["configs"]}
    assert Path(configs["prometheus"]["file"]) == ROOT / "deploy" / "prometheus" / "prometheus.yml"
    assert mounted["prometheus"] in services["prometheus"]["command"][0]
    grafana = {c["source"]: c["target"] for c in services["grafana"]["configs"]}
    assert grafana["grafana_datasource"].startswith("/etc/grafana/provisioning/datasources/")
    assert grafana["grafana_dashboards"].startswith("/etc/grafana/provisioning/dashboards/")
    provider = (ROOT / "deploy" / "grafana" / "dashboards.yml").read_text()
    folder = re.search(r"path: (\S+)", provider)
    assert folder and grafana["grafana_dashboard_pipeline"].startswith(folder.group(1) + "/")
    source = (ROOT / "deploy" / "grafana" / "datasource.yml").read_text()
    assert "url: http://prometheus:9090" in source and "uid: ctower-prometheus" in source
    for name in OBSERVABILITY:  # their pages stay on this host
        assert all((p.get("host_ip") if isinstance(p, dict) else str(p).split(":")[0])
                   == "127.0.0.1" for p in services[name]["ports"]), name

    dashboard = json.loads(Path(configs["grafana_dashboard_pipeline"]["file"]).read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    drawn = {re.sub(r"_(total|bucket|sum|count)$", "", name)
             for expr in exprs for name in re.findall(r"\bctower_[a-z0-9_]+", expr)}
    exported = set(re.findall(r'"(ctower_[a-z0-9_]+)"', (ROOT / "ctower" / "metrics.py")
                              .read_text()))
    assert drawn <= exported, drawn - exported
    for series in ("ctower_events_in", "ctower_dead_letters", "ctower_late_events",
                   "ctower_duplicate_events", "ctower_consumer_lag",
                   "ctower_window_close_delay_seconds", "ctower_event_to_alert_seconds",
                   "ctower_reservation_seconds", "ctower_sink_rows",
                   "ctower_sink_insert_seconds", "ctower_outbox_depth",
                   "ctower_webhook_results", "ctower_gc_pause_seconds"):
        assert series in drawn, f"the dashboard does not show {series}"
    assert all(p.get("datasource", {}).get("uid") in (None, "ctower-prometheus")
               for p in dashboard["panels"])


def test_no_secret_is_hard_coded(raw_config: dict[str, Any]) -> None:
    checked = 0
    for name, service in raw_config["services"].items():
        env = service.get("environment") or {}
        assert isinstance(env, dict), f"{name}: use a mapping for environment"
        for key, value in env.items():
            if not SECRET_NAME.search(key):
                continue
            checked += 1
            # only the path of a mounted secret: never a value, nor a default
            assert key.endswith("_FILE") and re.fullmatch(r"/run/secrets/[a-z_]+", str(value)), (
                f"{name}: {key} must be CTOWER_<NAME>_FILE=/run/secrets/<secret>, got {value!r}"
            )
    assert checked >= 5


def test_dockerfile_is_slim_and_unprivileged() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    instructions = [line.strip() for line in dockerfile.splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
    # a pinned interpreter (major.minor.patch), the slim variant
    assert re.fullmatch(r"FROM python:3\.11\.\d+-slim(-[a-z]+)?", instructions[0])
    # the dependencies are installed with the pins of constraints.txt
    assert "COPY pyproject.toml constraints.txt /src/" in instructions
    assert any("pip install -c /src/constraints.txt -r /tmp/requirements.txt" in line
               for line in instructions)
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    # The project itself is pip-installed from the copied sources, not editable.
    assert "COPY . /src/" in instructions
    assert any(re.search(r"pip install (--no-deps )?/src( |$)", line) for line in instructions)
    assert not any(re.search(r"pip install .*(-e|--editable) ", line) for line in instructions)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv"} <= set(ignored)


def test_constraints_pin_every_dependency_and_not_the_project() -> None:
    """constraints.txt pins (==) every declared dependency, test tools included,
    and never the project itself (pip refuses to constrain an editable install)."""
    import tomllib

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not a pin: {line!r}"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    assert "ctower" not in pins
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    for requirement in declared:
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
        assert re.sub(r"[-_.]+", "-", name).lower() in pins, f"{name} is not pinned"
