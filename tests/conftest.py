"""Shared fixtures: they start real processes (a Kafka broker, a webhook
server, workers), never mocks of them.

The broker is started once per test session by the project's own launcher
(``ctower.broker.local``) on a free port with its data in a temporary folder;
``KAFKA_BOOTSTRAP`` in the environment points the tests at an existing
cluster instead. Each test gets its own topic prefix, so tests never see each
other's events.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ctower.settings import Settings, load_settings


def free_port() -> int:
    """A TCP port nobody listens on now (and its neighbour, for Kafka's controller)."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port < 65000:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair found")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of a real Apache Kafka broker for the whole session."""
    existing = os.environ.get("KAFKA_BOOTSTRAP") or os.environ.get("CTOWER_KAFKA_BOOTSTRAP")
    if existing:
        yield existing
        return
    from ctower.broker.local import LocalKafka

    data_dir = tmp_path_factory.mktemp("kafka")
    broker_settings = load_settings(data_dir=data_dir, kafka_port=free_port())
    broker = LocalKafka(broker_settings)
    bootstrap = broker.up(timeout=180)
    try:
        yield bootstrap
    finally:
        broker.down()


@pytest.fixture
def settings_factory(
    tmp_path: Path, kafka_bootstrap: str
) -> Callable[..., Settings]:
    """Settings for one test: own topic prefix, own data folder, free ports."""
    prefix = f"t{uuid.uuid4().hex[:8]}."

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "kafka_bootstrap": kafka_bootstrap,
            "topic_prefix": prefix,
            "app_id": f"ctower-{prefix.rstrip('.')}",
            "data_dir": tmp_path / "data",
            "worker_web_port": free_port(),
            "store_http_port": free_port(),
            "dashboard_port": free_port(),
        }
        values.update(overrides)
        return load_settings(**values)

    return make


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory()


class CtowerProcess:
    """A real ``python -m ctower ...`` child with its log kept for failures."""

    def __init__(self, settings: Settings, log_dir: Path, name: str, *args: str) -> None:
        self.name = name
        self.args = args
        self.settings = settings
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> CtowerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ctower", *self.args],
            env=self.settings.child_env(), stdout=log, stderr=subprocess.STDOUT,
        )
        return self

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no chance to flush or commit anything."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def wait_http(self, url: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1):
                    return
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"{url} did not answer in {timeout} s:\n{self.log_tail()}")


@pytest.fixture
def ctower_process(tmp_path: Path) -> Iterator[Callable[..., CtowerProcess]]:
    """Start ``ctower`` subcommands as real processes; all are stopped afterwards."""
    started: list[CtowerProcess] = []
    log_dir = tmp_path / "logs"
    log_dir.mkdir(exist_ok=True)

    def start(settings: Settings, name: str, *args: str) -> CtowerProcess:
        process = CtowerProcess(settings, log_dir, name, *args).start()
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        process.stop()


def wait_until(
    condition: Callable[[], Any], timeout: float, message: str, every: float = 0.5
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``message``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{message} (last: {last!r})")


@pytest.fixture
def poll() -> Callable[..., Any]:
    """``wait_until`` for tests (conftest is not importable in importlib mode)."""
    return wait_until


@pytest.fixture
def env_for() -> Callable[[Settings], dict[str, str]]:
    """The environment that gives a child process a Settings object's values."""
    return Settings.child_env


@pytest.fixture(name="free_port")
def free_port_fixture() -> Callable[[], int]:
    """``free_port`` for tests (conftest is not importable in importlib mode)."""
    return free_port
