"""Fixtures for the store and its HTTP front: real chdb in a temporary folder,
a real StoreHttpServer on a free port, real clickhouse-connect clients, and a
real second process when a test is about two processes.

No Kafka here: these fixtures build their own settings instead of using the
session-wide ``settings`` fixture, which starts a broker.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client

from ctower.settings import Settings, load_settings
from ctower.store import open_store
from ctower.store_server import StoreHttpServer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def store_settings(tmp_path: Path) -> Settings:
    """Embedded store in tmp_path, front on a free port."""
    return load_settings(data_dir=tmp_path / "data", store_http_port=free_port(), store_dsn=None)


@pytest.fixture
def front(store_settings: Settings) -> Iterator[StoreHttpServer]:
    """This process owns the store (as the sink does) and serves it."""
    owner = open_store(store_settings, owner=True)
    server = StoreHttpServer(store_settings, owner).start()
    try:
        yield server
    finally:
        server.stop()
        owner.close()


@pytest.fixture
def connect(front: StoreHttpServer) -> Iterator[Callable[..., Client]]:
    """New clickhouse-connect HTTP clients of the front, as ``open_store`` makes them
    (no compression, no session) unless options say otherwise; closed after the test."""
    made: list[Client] = []

    def make(**options: Any) -> Client:
        client = clickhouse_connect.get_client(
            host="127.0.0.1", port=_port(front.url),
            **{"compress": False, "autogenerate_session_id": False, **options},
        )
        made.append(client)
        return client

    try:
        yield make
    finally:
        for client in made:
            client.close()


@pytest.fixture
def http_client(connect: Callable[..., Client]) -> Client:
    return connect()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


OWNER_SCRIPT = textwrap.dedent(
    """
    import sys
    from ctower.settings import load_settings
    from ctower.store import open_store
    from ctower.store_server import StoreHttpServer

    settings = load_settings(data_dir=sys.argv[1], store_http_port=int(sys.argv[2]))
    owner = open_store(settings, owner=True)
    owner.command("CREATE TABLE IF NOT EXISTS born (n UInt32, who String) "
                  "ENGINE = MergeTree ORDER BY n")
    owner.insert("born", [[1, "child"]], column_names=["n", "who"])
    server = StoreHttpServer(settings, owner).start() if sys.argv[3] == "serve" else None
    print(server.url if server else "holding", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    if server:
        server.stop()
    owner.close()
    print("bye", flush=True)
    """
)


class OwnerProcesses:
    """``python -c`` processes that own the store, serving it or only holding it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started: list[subprocess.Popen[str]] = []

    def start(self, serve: bool = True) -> tuple[subprocess.Popen[str], str]:
        """The process and its first line: the front's URL, or ``holding``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CTOWER_")}
        env["PYTHONSAFEPATH"] = "1"
        proc = subprocess.Popen(
            [sys.executable, "-c", OWNER_SCRIPT, str(self.settings.data_dir),
             str(self.settings.store_http_port), "serve" if serve else "hold"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        self.started.append(proc)
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        assert first, f"owner process died (exit {proc.wait(timeout=10)})"
        return proc, first

    @staticmethod
    def stop(proc: subprocess.Popen[str]) -> None:
        """Ask an owner process to stop cleanly and wait for it."""
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        assert proc.stdout.readline().strip() == "bye"
        assert proc.wait(timeout=30) == 0

    def kill_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def owners(store_settings: Settings) -> Iterator[OwnerProcesses]:
    processes = OwnerProcesses(store_settings)
    try:
        yield processes
    finally:
        processes.kill_all()
