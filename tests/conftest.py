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
import socket
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
