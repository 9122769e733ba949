"""Shared fixtures: they start real processes (a Kafka broker, a webhook
server, workers), never mocks of them. The one stand-in is the WeChat Work
webhook service itself (:class:`FakeWebhook`), a real HTTP server on
127.0.0.1 that answers as the documented API does.

The store fixtures need no broker: an embedded store in a temporary folder,
its HTTP front, clients and owner processes.

The broker is started once per test session by the project's own launcher
(``ctower.devstack.broker.local``) on a free port with its data in a temporary folder;
``KAFKA_BOOTSTRAP`` in the environment points the tests at an existing
cluster instead. Each test gets its own topic prefix, so tests never see each
other's events.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client

from ctower.devstack.store_front.server import StoreHttpServer
from ctower.settings import Settings, load_settings
from ctower.store import open_store


def _port_block() -> range:
    """This pytest process's own ports: below the kernel's ephemeral range, one
    block per xdist worker.

    Ports from ``bind(0)`` came from the ephemeral range, which the kernel
    hands out again once closed (124 repeats in 2,000 binds here) and gives
    to every outgoing connection: two settings of one test once got the same
    port (CI: "CTOWER_DASHBOARD_PORT and CTOWER_WORKER_WEB_PORT are both
    47157"), and a port given to a worker could be taken by another test's
    process, or by a client's connection, before the worker bound it. Below
    the ephemeral range no connection takes a port, and a block per worker
    keeps the other pytest process out.
    """
    try:
        first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range")
                              .read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first_ephemeral = 32768
    low = 10_000
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(name[2:]) if name[2:].isdigit() else 0
    size = (first_ephemeral - low) // workers
    if size < 200:  # an unusual ephemeral range: no room below it
        return range(0)
    return range(low + index * size, low + (index + 1) * size - 1)


_PORTS = _port_block()
_next_port = [0]


def free_port() -> int:
    """A TCP port nobody listens on now (and its neighbour, for Kafka's
    controller): the next free pair of this process's block (``_port_block``),
    so never one handed out before in this run."""
    for _ in range(len(_PORTS) // 2):
        port = _PORTS[_next_port[0] % len(_PORTS)]
        _next_port[0] += 2
        if _bindable(port) and _bindable(port + 1):
            return port
    return _ephemeral_pair()


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_pair() -> int:
    """The fallback when the block is spent or empty: a pair from the kernel."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port < 65000 and _bindable(port + 1):
            return port
    raise RuntimeError("no free port pair found")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of a real Apache Kafka broker for the whole session."""
    existing = os.environ.get("KAFKA_BOOTSTRAP") or os.environ.get("CTOWER_KAFKA_BOOTSTRAP")
    if existing:
        yield existing
        return
    from ctower.devstack.broker.local import LocalKafka

    data_dir = tmp_path_factory.mktemp("kafka")
    # the suite's consumer groups have one member each: none waits for another
    broker_settings = load_settings(
        data_dir=data_dir, kafka_port=free_port(), kafka_initial_rebalance_delay_ms=0
    )
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


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Client]:
    """A fresh embedded store; closed after the test so the next can open another path."""
    client = open_store(load_settings(data_dir=tmp_path / "data"), owner=True)
    try:
        yield client
    finally:
        client.close()


class MemoryTable:
    """What RuleState and WindowState use of a Faust table: ``data`` and
    ``send_changelog``, the changelog kept as a list."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.changelog: list[tuple[int | None, bytes, bytes | None]] = []

    def send_changelog(self, partition: int | None, key: Any, value: Any) -> None:
        self.changelog.append((partition, key, value))


@pytest.fixture
def memory_table() -> MemoryTable:
    return MemoryTable()


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

    def log_digest(self) -> str:
        return log_digest(self.log_path)

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


def log_digest(path: Path, keep: int = 40) -> str:
    """What a failed test should show of a process's log, however long it ran:
    its last warnings and errors (a repeat of the line before counted, not
    shown again) and every stall report of ``streams/stall_report.py`` whole.
    A tail alone showed the last seconds of routine lines and cut the one
    warning that said why."""
    if not path.exists():
        return "(no log)"
    kept: list[str] = []
    stalls: list[str] = []
    in_stall = False
    last_text, repeats = "", 0
    for line in path.read_text(errors="replace").splitlines():
        if in_stall and line.startswith("  "):
            stalls.append(line)
            continue
        in_stall = "rebalance not done after" in line
        if in_stall:
            stalls.append(line)
        if not any(level in line for level in (" WARNING ", " ERROR ", " CRITICAL ", "Traceback")):
            continue
        text = line.split(" ", 2)[-1]  # without the date and time
        if text == last_text:
            repeats += 1
            continue
        if repeats:
            kept.append(f"    (the line above {repeats} more times)")
        last_text, repeats = text, 0
        kept.append(line)
    if repeats:
        kept.append(f"    (the line above {repeats} more times)")
    digest = kept[-keep:]
    return "\n".join(([*stalls, "-- warnings and errors:"] if stalls else []) + digest)


@pytest.fixture(name="log_digest")
def log_digest_fixture() -> Callable[[Path], str]:
    """``log_digest`` for tests (conftest is not importable in importlib mode)."""
    return log_digest


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


def read_topic_records(settings: Settings, name: str) -> list[dict[str, Any]]:
    """Every JSON record a control topic holds now, from the start (1.5 s idle ends it)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        settings.topic(name), bootstrap_servers=settings.bootstrap,
        auto_offset_reset="earliest", consumer_timeout_ms=1_500,
    )
    try:
        return [json.loads(message.value) for message in consumer]
    finally:
        consumer.close()


@pytest.fixture
def read_topic() -> Callable[[Settings, str], list[dict[str, Any]]]:
    """``read_topic_records`` for tests (conftest is not importable in importlib mode)."""
    return read_topic_records


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


# --------------------------------------------------------------------------
# A local WeChat Work group robot webhook
# --------------------------------------------------------------------------

WEBHOOK_PATH = "/cgi-bin/webhook/send"
WEBHOOK_LIMITS = {"text": 2048, "markdown": 4096, "markdown_v2": 4096}


class FakeWebhook:
    """Answers as ``qyapi.weixin.qq.com/cgi-bin/webhook/send`` is documented to
    (in WeChat Work's "群机器人配置说明", document 91770), on 127.0.0.1, in a real server thread.

    - errcode 0 with HTTP 200 for a good message to a known key;
    - 93000 for an unknown key; 40008 for an unknown msgtype; 44004 for empty
      content; 45002 for content over its byte limit;
    - 45009 once a key has had ``per_window`` requests in the last ``window``
      seconds - every request counts, failed ones too;
    - on demand (:meth:`fail`): errcode -1 or an HTTP status (500) for the next
      requests of a key; and a ``delay`` before every answer.

    Every request is kept in :attr:`received`, in arrival order.
    """

    def __init__(self, per_window: int = 20, window: float = 60.0) -> None:
        self.per_window = per_window
        self.window = window
        self.delay = 0.0
        self.keys: set[str] = set()
        self.received: list[dict[str, Any]] = []
        self._forced: dict[str, list[tuple[int, int | None]]] = {}
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the test reads fake.received instead

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                status, answer = fake._answer(self.path, raw)
                if fake.delay:
                    time.sleep(fake.delay)
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout) or was killed

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> FakeWebhook:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def url(self, key: str) -> str:
        return f"http://127.0.0.1:{self.port}{WEBHOOK_PATH}?key={key}"

    def add_key(self, key: str) -> str:
        """Make ``key`` a valid robot; returns its webhook URL."""
        with self._lock:
            self.keys.add(key)
        return self.url(key)

    def fail(self, key: str, *answers: tuple[int, int | None]) -> None:
        """The next requests of ``key`` get these (http status, errcode) answers:
        ``(200, -1)`` system busy, ``(500, None)`` an HTTP error."""
        with self._lock:
            self._forced.setdefault(key, []).extend(answers)

    def _answer(self, path: str, raw: bytes) -> tuple[int, Any]:
        now = time.time()
        parts = urlsplit(path)
        key = (parse_qs(parts.query).get("key") or [""])[0]
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        entry: dict[str, Any] = {"t": now, "key": key, "body": body}
        with self._lock:
            recent = [r for r in self.received
                      if r["key"] == key and r["t"] > now - self.window]
            self.received.append(entry)
            forced = self._forced.get(key)
            if parts.path != WEBHOOK_PATH:
                status, answer = 404, b"not found"
            elif key not in self.keys:
                status, answer = 200, {"errcode": 93000, "errmsg": "invalid webhook url"}
            elif len(recent) >= self.per_window:
                status, answer = 200, {"errcode": 45009, "errmsg": "api freq out of limit"}
            elif forced:
                code, errcode = forced.pop(0)
                answer = ({"errcode": errcode, "errmsg": "system busy"} if errcode is not None
                          else b"<html>Internal Server Error</html>")
                status = code
            else:
                status, answer = 200, self._check(body)
        entry["status"] = status
        entry["errcode"] = answer.get("errcode") if isinstance(answer, dict) else None
        return status, answer

    @staticmethod
    def _check(body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or body.get("msgtype") not in WEBHOOK_LIMITS:
            return {"errcode": 40008, "errmsg": "invalid message type"}
        content = (body.get(body["msgtype"]) or {}).get("content") or ""
        if not content:
            return {"errcode": 44004, "errmsg": "empty content"}
        if len(content.encode("utf-8")) > WEBHOOK_LIMITS[body["msgtype"]]:
            return {"errcode": 45002, "errmsg": "content size out of limit"}
        return {"errcode": 0, "errmsg": "ok"}

    def delivered(self, key: str | None = None) -> list[dict[str, Any]]:
        """The requests answered errcode 0 (of one key, or all), in order."""
        with self._lock:
            return [r for r in self.received
                    if r["errcode"] == 0 and (key is None or r["key"] == key)]

    def answers(self, key: str | None = None) -> list[int | None]:
        with self._lock:
            return [r["errcode"] for r in self.received if key is None or r["key"] == key]

    def max_in_window(self, key: str) -> int:
        """The most requests ``key`` had in any ``window`` seconds."""
        with self._lock:
            times = sorted(r["t"] for r in self.received if r["key"] == key)
        best = 0
        start = 0
        for end, t in enumerate(times):
            while times[start] <= t - self.window:
                start += 1
            best = max(best, end - start + 1)
        return best


@pytest.fixture
def webhook_server() -> Iterator[FakeWebhook]:
    """A fake WeChat Work webhook on 127.0.0.1 (see :class:`FakeWebhook`)."""
    server = FakeWebhook().start()
    try:
        yield server
    finally:
        server.stop()


# The store and its HTTP front, with no Kafka: real chdb in a temporary
# folder, a real StoreHttpServer on a free port, real clickhouse-connect
# clients, and a real second process when a test is about two processes.

class FakeClock:
    """A wall clock the test moves (``clock.now += 1``), for code that takes a clock."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def offline_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings for code that needs no broker nor store (data in tmp_path): unlike
    ``settings_factory``, they start no broker."""
    return lambda **overrides: load_settings(data_dir=tmp_path / "data", **overrides)


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
    from ctower.devstack.store_front.server import StoreHttpServer

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
