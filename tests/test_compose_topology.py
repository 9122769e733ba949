"""docker-compose.yml as it runs: its services as processes, without Docker.

No Docker engine runs on our machines, so the topology is run here from the
file itself: ``docker-compose config`` resolves it, and every ctower service
starts with its own ``command`` and ``environment``, translated to one host
as :func:`local_services` says (service hostnames become 127.0.0.1 ports,
``/run/secrets`` and ``/etc/ctower`` become the files compose would mount,
``kafka:9092`` the session's broker, ``clickhouse:8123`` an embedded store
that the sink owns and serves to the others). Only what keeps this test apart
from others is added: a topic prefix, an application id, a data folder per
container, the store's port.

The static test checks that every feature finds the settings it needs in
each service's environment, by loading the settings as the process would.
The topology test checks what the features do:

- a reservation sent to the worker that does not own its campaign is
  forwarded to the one that does, and granted;
- a pickup rush throttles a store-pickup campaign, and the coupon decision
  reaches the store (read back with ``ctower sql``, as an operator would);
- the rush's alert reaches the robot (a fake WeChat Work webhook) its route
  names;
- every healthcheck command passes.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
CTOWER = Path(sys.executable).with_name("ctower")
TOKEN_FILES = ("clickhouse_password", "coupon_api_token", "operator_token",
               "grafana_admin_password")
IMAGE_ENV = {"PYTHONSAFEPATH": "1", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
"""The Dockerfile's ENV lines (its CTOWER_DATA_DIR is one folder per container here)."""
RUSH_STORE = "S001"
RUSH_CAMPAIGN = "CMP01"
"""A store of deploy/master_data.json and a store-pickup campaign that runs there."""


# --------------------------------------------------------------------------
# The compose file, resolved
# --------------------------------------------------------------------------


def _compose() -> str:
    found = shutil.which("docker-compose") or (
        "/usr/bin/docker-compose" if Path("/usr/bin/docker-compose").exists() else None
    )
    if not found:
        pytest.fail("docker-compose is not installed: run `make setup` (Debian: docker-compose)")
    return found


def resolved_compose(secrets_dir: Path) -> dict[str, Any]:
    """``docker-compose config`` of the file, with the secrets in ``secrets_dir``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CTOWER_", "COMPOSE_"))}
    env["CTOWER_SECRETS_DIR"] = str(secrets_dir)
    result = subprocess.run(
        [_compose(), "-f", str(COMPOSE_FILE), "--project-directory", str(ROOT), "config"],
        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = _yaml(result.stdout)
    return config


def _yaml(text: str) -> Any:
    """YAML through PyYAML of the interpreter docker-compose runs on: the venv does not need it."""
    shebang = Path(_compose()).read_text(errors="replace").splitlines()[0]
    interpreter = shebang[2:].strip().split()[0] if shebang.startswith("#!") else "python3"
    parsed = subprocess.run(
        [interpreter, "-c", "import sys, json, yaml; json.dump(yaml.safe_load(sys.stdin), "
         "sys.stdout)"], input=text, capture_output=True, text=True, timeout=60,
        check=True,
    )
    return json.loads(parsed.stdout)


def write_secrets(folder: Path, webhook_url: Callable[[str], str]) -> dict[str, str]:
    """What deploy/make-secrets.sh writes, with every robot of the routing file
    given a URL (``webhook_url(robot)``); returns the tokens by file name."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = {name: secrets.token_urlsafe(24) for name in TOKEN_FILES}
    for name, value in tokens.items():
        (folder / name).write_text(value + "\n")
    routes = tomllib.loads((ROOT / "deploy" / "alert-routes.toml").read_text())
    robots = sorted({r for route in (*routes.get("routes", []), routes.get("fallback", {}))
                     for r in route.get("robots", [route.get("name")]) if r})
    (folder / "webhooks.toml").write_text(
        "".join(f'{robot} = "{webhook_url(robot)}"\n' for robot in robots))
    return tokens


# --------------------------------------------------------------------------
# Compose services -> local processes
# --------------------------------------------------------------------------


@dataclass
class LocalService:
    name: str
    command: list[str]
    env: dict[str, str]
    healthcheck: list[str] | None
    ports: dict[int, int] = field(default_factory=dict)
    """Container port -> the 127.0.0.1 port it is here."""

    def url(self, container_port: int) -> str:
        return f"http://127.0.0.1:{self.ports[container_port]}"


@dataclass
class Topology:
    services: dict[str, LocalService]
    store_port: int
    """Where the sink serves the embedded store (ClickHouse's ``clickhouse:8123``)."""
    bootstrap: str
    prefix: str


def local_services(
    config: dict[str, Any], bootstrap: str, work: Path, free_port: Callable[[], int],
    prefix: str | None = None,
) -> Topology:
    """Each ctower service of ``config`` (those built from the Dockerfile) with
    its command and environment translated to this host, each on its own
    ``free_port()`` (the conftest's: never one handed out before)."""
    prefix = prefix or f"t{uuid.uuid4().hex[:8]}."
    services = config["services"]
    store_port = free_port()
    store_dsn = f"chdb://{work / 'store' / 'clickhouse'}"
    # every (hostname, container port) a service listens on -> a port here
    listen: dict[tuple[str, int], int] = {}
    published: dict[int, int] = {}
    for name, svc in services.items():
        host = svc.get("hostname", name)
        if "build" not in svc:
            continue  # prometheus, grafana: not run here
        for port in svc.get("ports", []):
            local = listen.setdefault((host, int(port["target"])), free_port())
            listen.setdefault((name, int(port["target"])), local)
            if port.get("published"):
                published[int(port["published"])] = local
        for exposed in svc.get("expose", []):  # reached inside the network only (metrics)
            local = listen.setdefault((host, int(exposed)), free_port())
            listen.setdefault((name, int(exposed)), local)

    def translate(value: str, files: dict[str, str], host: str, key: str) -> str:
        if value in files:  # a mounted config or secret
            return files[value]
        if key == "KAFKA_BOOTSTRAP":
            return bootstrap
        if key == "CTOWER_STORE_DSN":
            assert value == "http://clickhouse:8123", value
            return store_dsn
        if value == "0.0.0.0":
            return "127.0.0.1"
        if key.endswith("_PORT") and value.isdigit() and (host, int(value)) in listen:
            return str(listen[(host, int(value))])

        def url(match: re.Match[str]) -> str:
            where, port = match.group(1), int(match.group(2))
            if where == "localhost" and port in published:
                return f"http://127.0.0.1:{published[port]}"
            if (where, port) in listen:
                return f"http://127.0.0.1:{listen[(where, port)]}"
            raise AssertionError(f"{key}={value}: no service listens at {where}:{port}")

        return re.sub(r"http://([A-Za-z0-9_.\-]+):(\d+)", url, value)

    found: dict[str, LocalService] = {}
    for name, svc in services.items():
        if "build" not in svc:
            continue  # kafka, clickhouse: the local broker and the embedded store stand in
        host = svc.get("hostname", name)
        files = {c["target"]: config["configs"][c["source"]]["file"]
                 for c in svc.get("configs", [])}
        files.update({s.get("target", f"/run/secrets/{s['source']}"):
                      config["secrets"][s["source"]]["file"] for s in svc.get("secrets", [])})
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CTOWER_", "STREAMLIT_")) and k != "KAFKA_BOOTSTRAP"}
        env.update(IMAGE_ENV)
        for key, value in (svc.get("environment") or {}).items():
            env[key] = translate(str(value), files, host, key)
        env.update({  # keeps this test apart from the others on the session's broker
            "CTOWER_TOPIC_PREFIX": prefix,
            "CTOWER_APP_ID": f"ctower-{prefix.rstrip('.')}",
            "CTOWER_DATA_DIR": str(work / name),
            "CTOWER_STORE_HTTP_PORT": str(store_port),
        })
        command = list(svc["command"])
        assert command[0] == "ctower", f"{name}: {command}"
        test = (svc.get("healthcheck") or {}).get("test")
        if test is not None:
            assert test[0] == "CMD" and test[1] == "ctower", f"{name}: {test}"
            test = [str(CTOWER), *test[2:]]
        ports = {int(p["target"]): listen[(host, int(p["target"]))] for p in svc.get("ports", [])}
        ports.update({int(e): listen[(host, int(e))] for e in svc.get("expose", [])})
        found[name] = LocalService(name, [str(CTOWER), *command[1:]], env, test, ports)
    return Topology(found, store_port, bootstrap, prefix)


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    with mock.patch.dict(os.environ, env, clear=True):
        yield


# --------------------------------------------------------------------------
# Static: every feature finds its settings in compose
# --------------------------------------------------------------------------


def test_every_feature_finds_its_settings_in_compose(
    tmp_path: Path, free_port: Callable[[], int],
) -> None:
    from ctower.rules.config import load_rules
    from ctower.schemas.master_data import load_master_data
    from ctower.settings import load_settings
    from ctower.sinks.wechat.routes import load_routes
    from ctower.sinks.wechat.webhooks import resolve_webhooks

    tokens = write_secrets(tmp_path / "secrets",
                           lambda robot: f"https://example.invalid/send?key={robot}-key-1234")
    config = resolved_compose(tmp_path / "secrets")
    raw = config["services"]
    topology = local_services(config, "127.0.0.1:9092", tmp_path / "run", free_port)
    services = topology.services
    assert set(services) == {"topics", "worker-1", "worker-2", "sink", "dashboard", "alerts",
                             "simulator", "warehouse"}

    def settings_of(name: str) -> Any:
        with environment(services[name].env):
            return load_settings()

    # the coupon API and the rules, on both workers
    urls = set()
    for name in ("worker-1", "worker-2"):
        env = raw[name]["environment"]
        s = settings_of(name)
        assert s.coupon_api_token is not None
        assert s.coupon_api_token.get_secret_value() == tokens["coupon_api_token"]
        assert env["CTOWER_WORKER_WEB_BIND"] == "0.0.0.0", "the API must be reachable"
        assert env["CTOWER_WORKER_ADVERTISED_URL"] == (
            f"http://{raw[name]['hostname']}:{env['CTOWER_WORKER_WEB_PORT']}"), name
        assert {"target": int(env["CTOWER_WORKER_WEB_PORT"])}.items() <= raw[name]["ports"][
            0].items(), f"{name}: the coupon API is not published"
        urls.add(env["CTOWER_WORKER_ADVERTISED_URL"])
        master = load_master_data(s.master_data_file)
        assert any(c.kind == "store_pickup" for c in master.campaigns)
        assert all(store.pickup_capacity > 0 for store in master.stores)
        assert s.rules_file is not None
        load_rules(s.rules_file)
        assert s.topic_partitions == 4
    assert len(urls) == 2, "each replica must advertise its own URL"

    # the sink and the dashboard reach the store with its password
    for name in ("sink", "dashboard"):
        assert raw[name]["environment"]["CTOWER_STORE_DSN"] == "http://clickhouse:8123"
        password = settings_of(name).store_password.get_secret_value()
        assert password == tokens["clickhouse_password"], name
    assert raw["clickhouse"]["secrets"] == [{"source": "clickhouse_password"}]
    assert "/run/secrets/clickhouse_password" in " ".join(raw["clickhouse"]["entrypoint"])

    # the dashboard: its controls unlock with the operator token; regions from master data
    dashboard = settings_of("dashboard")
    assert dashboard.operator_token.get_secret_value() == tokens["operator_token"]
    assert dashboard.master_data_file is not None
    assert raw["dashboard"]["environment"]["CTOWER_DASHBOARD_HOST"] == "0.0.0.0"

    # the alert service: a routing file whose every robot has a URL in the secret
    alerts = settings_of("alerts")
    assert alerts.alert_routes_file is not None and alerts.webhook_secrets_file is not None
    table = load_routes(alerts.alert_routes_file)
    with environment(services["alerts"].env):
        urls_by_robot = resolve_webhooks(alerts, table.robots)
    assert set(urls_by_robot) == table.robots
    assert alerts.dashboard_url, "alert messages link to the dashboard"
    template = (ROOT / "deploy" / "make-secrets.sh").read_text()
    assert all(f"# {robot} = " in template for robot in table.robots)

    # the simulator plays the chain the master data describes
    command = raw["simulator"]["command"]
    seed = int(command[command.index("--seed") + 1])
    assert json.loads((ROOT / "deploy" / "master_data.json").read_text())["seed"] == seed
    # the warehouse answers the workers' action orders on the same broker and topics
    warehouse = settings_of("warehouse")
    assert (warehouse.bootstrap, warehouse.topic("actions")) == (
        settings_of("worker-1").bootstrap, settings_of("worker-1").topic("actions"))

    # Prometheus scrapes each process where it serves /metrics
    scrape = _yaml((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {job["job_name"]: {t for c in job["static_configs"] for t in c["targets"]}
               for job in scrape["scrape_configs"]}
    served = {"ctower-worker": {
        f"{raw[w]['hostname']}:{raw[w]['environment']['CTOWER_WORKER_WEB_PORT']}"
        for w in ("worker-1", "worker-2")}}
    for name, setting in (("sink", "sink_metrics_port"), ("alerts", "alerts_metrics_port")):
        assert getattr(settings_of(name), setting), f"{name}: no metrics"
        port = raw[name]["environment"][f"CTOWER_{setting.upper()}"]
        assert port in raw[name]["expose"], f"{name}: its metrics port is not exposed"
        assert raw[name]["environment"]["CTOWER_METRICS_BIND"] == "0.0.0.0", name
        served[f"ctower-{name}"] = {f"{raw[name].get('hostname', name)}:{port}"}
    assert targets == served

    # every setting the services are given is one the settings know
    from ctower.settings import Settings

    known = {f"CTOWER_{n.upper()}" for n in Settings.model_fields}
    known |= {f"CTOWER_{n.upper()}_FILE" for n in ("store_password", "coupon_api_token",
                                                   "operator_token")}
    for name, svc in raw.items():
        for key in svc.get("environment") or {}:
            if key.startswith("CTOWER_"):
                assert key in known, f"{name}: {key} is no setting"


# --------------------------------------------------------------------------
# The topology, running
# --------------------------------------------------------------------------


def _get(url: str, timeout: float = 5) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (OSError, ValueError):
        return 0, None


def _post(url: str, body: dict[str, Any], token: str) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


class Processes:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, service: LocalService) -> None:
        log = (self.logs / f"{service.name}.log").open("ab")
        self.started[service.name] = subprocess.Popen(
            service.command, env=service.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.logs,
        )

    def tail(self, name: str, chars: int = 2500) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def check(self) -> None:
        for name, proc in self.started.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")

    def stop(self) -> None:
        for proc in reversed(self.started.values()):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.started.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _health(service: LocalService) -> subprocess.CompletedProcess[str]:
    assert service.healthcheck is not None
    return subprocess.run(service.healthcheck, env=service.env, capture_output=True,
                          text=True, timeout=30)


def _send_pickups(topology: Topology, store: str, orders: list[str]) -> None:
    from kafka import KafkaProducer

    from ctower.topics import partition_for

    ts = int(time.time() * 1000)
    value = json.dumps([{"ts": ts, "order_id": o, "store_id": store, "state": "arrived"}
                        for o in orders]).encode()
    producer = KafkaProducer(bootstrap_servers=topology.bootstrap, acks="all")
    try:
        producer.send(f"{topology.prefix}pickup", value=value, key=store.encode(),
                      partition=partition_for(store.encode(), 4)).get(timeout=30)
    finally:
        producer.close()


@pytest.mark.kafka
@pytest.mark.slow
def test_the_compose_topology_runs_every_feature(
    kafka_bootstrap: str, webhook_server: Any, tmp_path: Path, poll: Callable[..., Any],
    log_digest: Callable[[Path], str], free_port: Callable[[], int],
) -> None:
    keys = {}

    def robot_url(robot: str) -> str:
        keys[robot] = f"{robot}-{uuid.uuid4().hex[:12]}"
        return webhook_server.add_key(keys[robot])

    tokens = write_secrets(tmp_path / "secrets", robot_url)
    config = resolved_compose(tmp_path / "secrets")
    topology = local_services(config, kafka_bootstrap, tmp_path / "run", free_port)
    services = topology.services
    for name in ("worker-1", "worker-2"):  # one dead letter in 5 s raises the system alert
        services[name].env.update({"CTOWER_SYSTEM_DEAD_LETTERS_PER_MINUTE": "1",
                                   "CTOWER_SYSTEM_DEAD_LETTER_WINDOW_SECONDS": "5"})
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = Processes(logs)
    try:
        # `topics` runs to completion first (depends_on: service_completed_successfully)
        topics = services["topics"]
        done = subprocess.run(topics.command, env=topics.env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        for name in ("sink", "worker-1", "worker-2", "alerts", "dashboard", "simulator",
                     "warehouse"):
            procs.start(services[name])

        # every healthcheck command passes (as compose would run it, beside the process)
        pending = {n for n in procs.started}

        def healthy() -> bool:
            procs.check()
            for name in sorted(pending):
                if _health(services[name]).returncode == 0:
                    pending.discard(name)
            return not pending

        poll(healthy, 120, "services never became healthy", every=1.0)

        # the two workers split the campaign partitions between them
        workers = [services["worker-1"], services["worker-2"]]

        seen: list[Any] = []

        def split() -> list[set[int]] | None:
            procs.check()
            answers = [_get(f"{w.url(6066)}/coupons/") for w in workers]
            seen[:] = answers
            owned = [set((body or {}).get("owned_partitions") or ()) for _, body in answers]
            ok = all(owned) and not owned[0] & owned[1] and owned[0] | owned[1] == {0, 1, 2, 3}
            return owned if ok else None

        try:
            owned = poll(split, 90, "the workers never split the partitions", every=0.5)
        except AssertionError as exc:
            digests = "\n".join(f"----- {w.name} -----\n{log_digest(logs / f'{w.name}.log')}"
                              for w in workers)
            raise AssertionError(f"{exc}; they answered {seen!r}\n{digests}") from None
        from ctower.coupons.policy import campaign_partition

        partition = campaign_partition(RUSH_CAMPAIGN, 4)
        owner, other = (workers if partition in owned[0] else workers[::-1])

        # a reservation sent to the worker that does not own the campaign: forwarded, granted
        code, answer = _post(f"{other.url(6066)}/coupons/{RUSH_CAMPAIGN}/reserve",
                             {"store_id": "S002", "member_id": "M1"}, tokens["coupon_api_token"])
        assert code == 200 and answer["granted"], (code, answer, procs.tail(other.name))
        code, status = _get(f"{other.url(6066)}/coupons/{RUSH_CAMPAIGN}/status")
        assert code == 200 and status["worker"] == owner.url(6066), status
        assert status["windows"]["*"]["count"] >= 1, status

        # a pickup rush at a store: its store-pickup campaign is throttled there, the
        # decision reaches the store, and the congestion alert reaches the robot
        from ctower.schemas.master_data import load_master_data

        master = load_master_data(ROOT / "deploy" / "master_data.json")
        capacity = master.store_by_id[RUSH_STORE].pickup_capacity
        run = uuid.uuid4().hex[:8]
        _send_pickups(topology, RUSH_STORE, [f"R{run}-{n}" for n in range(capacity + 1)])
        dashboard = services["dashboard"]
        query = ("SELECT state, reason FROM coupon_decisions FINAL WHERE campaign_id = "
                 f"'{RUSH_CAMPAIGN}' AND store_id = '{RUSH_STORE}'")
        extra = [0]

        def throttled() -> Any:
            procs.check()
            extra[0] += 1  # one more arrival a second: the rules judge as event time passes
            _send_pickups(topology, RUSH_STORE, [f"R{run}-x{extra[0]}"])
            result = subprocess.run([str(CTOWER), "sql", "--format", "json", query],
                                    env=dashboard.env, capture_output=True, text=True,
                                    timeout=60)
            if result.returncode != 0:
                return None
            rows = json.loads(result.stdout or "[]")
            return rows if any(r["state"] == "throttled" for r in rows) else None

        rows = poll(throttled, 60, "no throttle decision in the store", every=1.0)
        assert any(r["reason"] == "pickup_pressure" for r in rows), rows

        def alerted() -> Any:
            procs.check()
            return [r for r in webhook_server.delivered(keys["stores"])
                    if RUSH_STORE in json.dumps(r["body"], ensure_ascii=False)]

        poll(alerted, 60, "the congestion alert never reached the stores robot")

        # a malformed event: the pipeline's own alert takes the same path to its route
        # (deploy/alert-routes.toml: pipeline -> ops), opened and then resolved
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=topology.bootstrap, acks="all")
        producer.send(f"{topology.prefix}pickup", value=b"not json {", key=b"S002").get(30)
        producer.close()

        def told_ops() -> Any:
            procs.check()
            said = [json.dumps(r["body"], ensure_ascii=False)
                    for r in webhook_server.delivered(keys["ops"])]
            return said if len([t for t in said if "死信" in t]) >= 2 else None

        said = poll(told_ops, 60, "the dead-letter rate alert and its resolution never reached "
                                  "the ops robot")
        assert not any(RUSH_STORE in text for text in said), "business alerts stay off ops"

        # /metrics of every process, with what this test did in it
        from ctower.metrics import scrape, total

        worker_metrics = [scrape(f"{w.url(6066)}/metrics") for w in workers]
        assert sum(total(m, "ctower_dead_letters_total", lambda x: x["reason"] == "not_json")
                   for m in worker_metrics) == 1
        assert sum(total(m, "ctower_events_out_total", lambda x: x["stream"] == "pickup")
                   for m in worker_metrics) >= capacity + 1
        assert total(scrape(f"{other.url(6066)}/metrics"), "ctower_reservation_seconds_count") >= 1
        assert sum(total(m, "ctower_event_to_alert_seconds_count")
                   for m in worker_metrics) >= 1
        sink_metrics = scrape(f"{services['sink'].url(9464)}/metrics")
        assert total(sink_metrics, "ctower_sink_rows_total",
                     lambda x: x["table"] == "coupon_decisions") >= 1
        alert_metrics = scrape(f"{services['alerts'].url(9465)}/metrics")
        assert total(alert_metrics, "ctower_webhook_results_total",
                     lambda x: x["errcode"] == "0" and x["robot"] == "stores") >= 1

        # and still healthy, every one
        for name in procs.started:
            result = _health(services[name])
            assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"
        # the images' own checks, against what stands in for them here
        from ctower.settings import load_settings

        with environment(services["sink"].env):
            assert load_settings().store_is_embedded
        # clickhouse's `wget --spider .../ping`: the embedded store's front answers /ping
        with urllib.request.urlopen(f"http://127.0.0.1:{topology.store_port}/ping",
                                    timeout=5) as answer:
            assert answer.read() == b"Ok.\n"
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)  # the broker answers
        try:
            assert admin.describe_cluster()["brokers"]
        finally:
            admin.close()
    except BaseException:
        for name in procs.started:
            print(f"----- {name} -----\n{procs.tail(name)}")
        raise
    finally:
        procs.stop()
    # a stopped process is no longer healthy
    for name in ("sink", "alerts", "simulator", "warehouse"):
        result = _health(services[name])
        assert result.returncode == 1 and "unhealthy" in result.stderr, (name, result.stderr)
