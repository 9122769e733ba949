"""The local broker launcher against real processes: a real JVM, real Kafka.

Each lifecycle test starts its own broker on a free port with its data in
``tmp_path``; tests that only need *a* broker use the session fixture.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer

from ctower.cpu_slice import slice_ms
from ctower.devstack.broker.local import BrokerError, LocalKafka, fetch_jars, jars_dir
from ctower.settings import load_settings

pytestmark = pytest.mark.kafka


def _consume_all(bootstrap: str, topic: str, expect: int, timeout: float = 30) -> list[bytes]:
    """Read ``topic`` from the beginning until ``expect`` messages came or time ran out."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=1000,
    )
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while len(values) < expect and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                values.extend(record.value for record in records)
    finally:
        consumer.close()
    return values


def _pid_exists(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    if not stat.exists():
        return False
    return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def broker(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[LocalKafka]:
    local = LocalKafka(load_settings(data_dir=tmp_path / "data", kafka_port=free_port()))
    try:
        yield local
    finally:
        local.down()


def test_lifecycle_keeps_data_across_restarts(broker: LocalKafka) -> None:
    port = broker.settings.kafka_port
    bootstrap = f"127.0.0.1:{port}"
    # Start it from another Python process that then exits: the broker must
    # outlive the process that started it (own session, detached).
    code = (
        "import sys; from ctower.settings import load_settings; "
        "from ctower.devstack.broker.local import LocalKafka; "
        f"print(LocalKafka(load_settings(data_dir={str(broker.settings.data_dir)!r}, "
        f"kafka_port={port})).up(timeout=120))"
    )
    started = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=150,
        env={**os.environ, "PYTHONSAFEPATH": "1"},
    )
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == bootstrap

    status = broker.status()
    assert status.running and status.reachable and status.local
    assert status.pid is not None and _pid_exists(status.pid)
    assert status.bootstrap == bootstrap
    assert status.version == broker.settings.kafka_version
    assert status.data_dir == broker.settings.data_dir / "kafka"
    assert status.log_file is not None and status.log_file.stat().st_size > 0
    log = status.log_file.read_text()
    assert "Kafka Server started" in log  # the log is not silent
    # a new group waits for more members (Kafka's default, not the tests' 0)
    assert "group.initial.rebalance.delay.ms = 3000" in log
    # every thread of the broker takes a core as it wakes (CTOWER_LATENCY_SLICE_MS)
    if slice_ms() is not None:  # a kernel that keeps a slice per thread (Linux 6.12+)
        threads = [int(tid) for tid in os.listdir(f"/proc/{status.pid}/task")]
        assert len(threads) > 10 and {slice_ms(tid) for tid in threads} == {
            broker.settings.latency_slice_ms}

    # Idempotent: a second up() finds it running and starts nothing.
    assert broker.up(timeout=30) == bootstrap
    assert broker.status().pid == status.pid

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    producer.send("lifecycle", b"kept across restarts").get(timeout=30)
    producer.close()
    assert _consume_all(bootstrap, "lifecycle", expect=1) == [b"kept across restarts"]

    broker.down()
    after = broker.status()
    assert not after.running and after.pid is None and not after.reachable
    assert not _pid_exists(status.pid)
    assert not (broker.settings.data_dir / "kafka" / "broker.pid").exists()
    broker.down()  # stopping a stopped broker is fine

    assert broker.up(timeout=120) == bootstrap
    restarted = broker.status()
    assert restarted.running and restarted.pid != status.pid
    if slice_ms() is not None:  # started from this process, which keeps the default
        assert slice_ms(restarted.pid) == broker.settings.latency_slice_ms != slice_ms()
    assert _consume_all(bootstrap, "lifecycle", expect=1) == [b"kept across restarts"]


@pytest.mark.parametrize("taken", ["client", "controller"])
def test_taken_port_is_a_clear_error(
    tmp_path: Path, taken: str, free_port: Callable[[], int]
) -> None:
    port = free_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port if taken == "client" else port + 1))
        squatter.listen()
        local = LocalKafka(load_settings(data_dir=tmp_path, kafka_port=port))
        with pytest.raises(BrokerError) as caught:
            local.up(timeout=10)
    message = str(caught.value)
    assert "CTOWER_KAFKA_PORT" in message
    assert str(port if taken == "client" else port + 1) in message
    assert "already in use" in message
    assert not local.status().running


def test_broker_exiting_early_quotes_its_log(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    # Storage "formatted" for another node: the real broker refuses to start.
    local = LocalKafka(load_settings(data_dir=tmp_path, kafka_port=free_port()))
    meta = tmp_path / "kafka" / "data" / "meta.properties"
    meta.parent.mkdir(parents=True)
    meta.write_text("version=1\ncluster.id=AAAAAAAAAAAAAAAAAAAAAA\nnode.id=7\n")
    with pytest.raises(BrokerError) as caught:
        local.up(timeout=60)
    message = str(caught.value)
    assert "exited during start-up" in message
    assert "Last lines of" in message and "broker.log" in message
    assert "node" in message.lower()  # the broker's own complaint about node.id 7 vs 1
    assert not local.status().running
    assert not (tmp_path / "kafka" / "broker.pid").exists()


def test_external_cluster_is_only_checked(tmp_path: Path, kafka_bootstrap: str) -> None:
    remote = LocalKafka(load_settings(kafka_bootstrap=kafka_bootstrap, data_dir=tmp_path))
    assert remote.up(timeout=30) == kafka_bootstrap
    status = remote.status()
    assert status.running and status.reachable and not status.local and status.pid is None
    remote.down()  # never stops a cluster it does not run
    assert remote.status().running
    assert not (tmp_path / "kafka").exists()  # nothing was started or written here


def test_unreachable_external_cluster_is_a_clear_error(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    remote = LocalKafka(load_settings(kafka_bootstrap=nowhere, data_dir=tmp_path))
    with pytest.raises(BrokerError, match="KAFKA_BOOTSTRAP") as caught:
        remote.up(timeout=3)
    assert nowhere in str(caught.value)
    assert not remote.status().running


def test_cached_jars_are_not_fetched_again(capsys: pytest.CaptureFixture[str]) -> None:
    version = load_settings().kafka_version
    libs = fetch_jars(version)  # fetches only if no broker of this session needed it yet
    capsys.readouterr()
    started = time.monotonic()
    assert fetch_jars(version) == libs == jars_dir(version)
    assert time.monotonic() - started < 1
    assert (libs / f"kafka_2.13-{version}.jar").is_file()
    assert "fetching" not in capsys.readouterr().err


def test_failed_fetch_quotes_maven(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTOWER_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(BrokerError) as caught:
        fetch_jars("0.0.1-no-such-version")
    message = str(caught.value)
    assert "CTOWER_KAFKA_VERSION" in message
    assert "[ERROR]" in message  # Maven's own explanation is quoted
    assert not (tmp_path / "cache" / "kafka" / "0.0.1-no-such-version" / "libs").exists()


def test_missing_java_and_maven_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free_port: Callable[[], int]
) -> None:
    java = shutil.which("java")
    assert java, "these tests need Java"
    monkeypatch.setenv("CTOWER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    local = LocalKafka(load_settings(data_dir=tmp_path, kafka_port=free_port()))
    with pytest.raises(BrokerError, match="Java is not installed"):
        local.up(timeout=10)

    java_only = tmp_path / "java-bin"
    java_only.mkdir()
    (java_only / "java").symlink_to(Path(java).resolve())
    monkeypatch.setenv("PATH", str(java_only))
    with pytest.raises(BrokerError, match=r"Maven \(`mvn`\) is not on PATH"):
        fetch_jars("4.1.1")
