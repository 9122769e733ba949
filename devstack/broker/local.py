"""A real Apache Kafka broker on this machine, without Docker or a tarball.

Why this exists: the project must run end to end on a machine that has Java
and Maven but no container engine. Kafka's broker is an ordinary Java
program, so its jars are fetched once from Maven Central (``pom.xml`` next to
this file) into a per-user cache outside the repository, the KRaft storage is
formatted once, and ``kafka.Kafka`` is started as a detached process in its
own session, so it outlives the command that started it (``ctower kafka up``
returns, the broker keeps running until ``ctower kafka down``).

Layout under ``settings.data_dir / "kafka"``::

    server.properties   the rendered broker configuration (from the template here)
    data/               log.dirs: topic data and the KRaft metadata log
    broker.log          the broker's own log (stdout and stderr of the JVM)
    broker.pid          the pid of the running broker

When ``KAFKA_BOOTSTRAP`` names another cluster, nothing is started: ``up``
only checks that cluster answers, so the same commands work in both set-ups.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO

from ctower.cpu_slice import slice_for_children
from ctower.errors import CtowerError
from ctower.settings import Settings

_TAIL_LINES = 25
_LOG_ROTATE_BYTES = 20 * 1024 * 1024
_MANIFEST = ".complete"

# Brokers started by this process, kept so they can be reaped (no zombies while
# a long-lived caller such as pytest lives on) and so Python does not warn that
# a subprocess is "still running" when the Popen object is garbage-collected.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class BrokerError(CtowerError, RuntimeError):
    """The broker could not be fetched, started, stopped or reached.

    The message says what failed and what to do, quoting the broker's own log
    when the broker is what failed, so nobody has to go and find the log.
    """


@dataclass(frozen=True)
class BrokerStatus:
    """What ``ctower kafka status`` reports.

    ``running`` means the broker process is alive (local) or the cluster
    answered (``local`` is False); ``reachable`` means it answered a metadata
    request just now. ``pid``, ``data_dir`` and ``log_file`` are None for a
    cluster this machine does not run.
    """

    running: bool
    pid: int | None
    bootstrap: str
    version: str | None
    data_dir: Path | None
    log_file: Path | None
    local: bool = True
    reachable: bool = False


# --------------------------------------------------------------------------
# The jar cache
# --------------------------------------------------------------------------
def cache_root() -> Path:
    """``$CTOWER_CACHE_DIR``, else ``$XDG_CACHE_HOME/ctower``, else ``~/.cache/ctower``.

    Outside the repository on purpose: 43 MB of jars are shared by every
    checkout and every test run, and never end up in git.
    """
    explicit = os.environ.get("CTOWER_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ctower"


def _check_version(version: str) -> str:
    if not re.fullmatch(r"[0-9A-Za-z][0-9A-Za-z.\-]{0,40}", version):
        raise BrokerError(
            f"CTOWER_KAFKA_VERSION: {version!r} is not an Apache Kafka version (e.g. 4.1.1)"
        )
    return version


def jars_dir(version: str) -> Path:
    """Where the runtime jars of Kafka ``version`` live (or will live)."""
    return cache_root() / "kafka" / _check_version(version) / "libs"


def _jars_complete(libs: Path, version: str) -> bool:
    """True when a previous fetch finished: its manifest lists jars that all exist.

    The manifest is written last, so an interrupted fetch is never mistaken
    for a complete one.
    """
    manifest = libs / _MANIFEST
    if not manifest.is_file():
        return False
    names = [line.strip() for line in manifest.read_text().splitlines() if line.strip()]
    return f"kafka_2.13-{version}.jar" in names and all((libs / n).is_file() for n in names)


@contextlib.contextmanager
def _file_lock(path: Path, waiting_message: str | None = None) -> Iterator[None]:
    """An exclusive advisory lock, so two processes never fetch or start at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting_message:
                print(waiting_message, file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise BrokerError(
            "Java is not installed (no `java` on PATH and no $JAVA_HOME/bin/java): the local "
            "Kafka broker needs Java 17 or newer (Debian: apt-get install "
            "openjdk-17-jre-headless). "
            "Or point KAFKA_BOOTSTRAP at an existing Kafka cluster."
        )
    return found


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _maven_complaint(line: str) -> bool:
    """A warning or error of Maven's that explains a failure (not its boilerplate)."""
    if not line.startswith(("[ERROR]", "[WARNING]")):
        return False
    boilerplate = ("re-run Maven", "Re-run Maven", "For more information", "[Help 1] http")
    return line not in ("[ERROR]", "[WARNING]") and not any(b in line for b in boilerplate)


def _maven_progress(line: str) -> str | None:
    """The part of one line of Maven's output worth showing as progress.

    Maven prints some 700 lines on a first fetch (every pom of every
    plugin); a person wants to see the jars arrive, and any warning or error.
    """
    match = re.search(r"Downloaded from \S+: \S+/maven2/(\S+\.jar) \((.*?)\)", line)
    if match:
        return f"  fetched {match.group(1).rsplit('/', 1)[-1]} ({match.group(2)})"
    return line if _maven_complaint(line) else None


def fetch_jars(version: str, out: IO[str] | None = None) -> Path:
    """Fetch Kafka ``version``'s runtime jars with Maven, once; return their folder.

    Skipped when a complete fetch is already cached. Maven's own output is
    shown as progress (the first fetch downloads about 43 MB); on failure its
    last lines are quoted in the error.
    """
    out = out or sys.stderr
    libs = jars_dir(version)
    if _jars_complete(libs, version):
        return libs
    version_dir = libs.parent
    with _file_lock(
        version_dir / ".lock",
        f"ctower: waiting for another process that is fetching Kafka {version} ...",
    ):
        if _jars_complete(libs, version):  # the other process finished it
            return libs
        _find_java()  # Maven needs it too; say so in our words, not Maven's
        mvn = shutil.which("mvn")
        if not mvn:
            raise BrokerError(
                "Maven (`mvn`) is not on PATH: it fetches Apache Kafka's jars from Maven Central "
                "the first time the local broker starts (Debian: apt-get install maven). "
                "Or point KAFKA_BOOTSTRAP at an existing Kafka cluster."
            )
        pom = version_dir / "pom.xml"
        pom.write_bytes(resources.files("ctower.devstack.broker").joinpath("pom.xml").read_bytes())
        partial = version_dir / f"libs.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        cmd = [
            # -U: re-try artifacts whose earlier download failed; Maven otherwise
            # caches a network failure in ~/.m2 for a day and keeps failing.
            mvn, "-B", "-U", "-Dstyle.color=never", "-f", str(pom),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={partial}",
            f"-Dkafka.version={version}",
        ]
        print(
            f"ctower: fetching Apache Kafka {version} (org.apache.kafka:kafka_2.13 and its "
            f"runtime dependencies, about 45 jars / 45 MB) from Maven Central into {libs} "
            "- first use only",
            file=out, flush=True,
        )
        started = time.monotonic()
        tail: deque[str] = deque(maxlen=_TAIL_LINES)
        complaints: list[str] = []
        try:
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                cwd=version_dir, stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            raise BrokerError(f"could not run Maven ({mvn}): {exc}") from exc
        assert proc.stdout is not None
        with proc:
            for raw in proc.stdout:
                line = _ANSI.sub("", raw).rstrip()
                tail.append(line)
                if _maven_complaint(line):
                    complaints.append(line)
                shown = _maven_progress(line)
                if shown:
                    print(shown, file=out, flush=True)
        if proc.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            raise BrokerError(
                f"fetching Apache Kafka {version} from Maven Central failed (mvn exit code "
                f"{proc.returncode}); is CTOWER_KAFKA_VERSION right and Maven Central reachable? "
                "Maven said:\n" + "\n".join(complaints[-_TAIL_LINES:] or tail)
            )
        names = sorted(p.name for p in partial.glob("*.jar"))
        if f"kafka_2.13-{version}.jar" not in names:
            shutil.rmtree(partial, ignore_errors=True)
            raise BrokerError(
                f"Maven finished but kafka_2.13-{version}.jar is not among the fetched jars "
                f"({len(names)} jars in {partial})"
            )
        (partial / _MANIFEST).write_text("\n".join(names) + "\n")
        shutil.rmtree(libs, ignore_errors=True)
        os.replace(partial, libs)
        size = sum((libs / n).stat().st_size for n in names)
        print(
            f"ctower: fetched {len(names)} jars ({size / 1e6:.0f} MB) in "
            f"{time.monotonic() - started:.0f} s into {libs}",
            file=out, flush=True,
        )
        return libs


# --------------------------------------------------------------------------
# Small process and network helpers
# --------------------------------------------------------------------------
def _port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` now.

    SO_REUSEADDR, as the JVM sets it, so connections of a broker that just
    stopped (TIME_WAIT) do not count as "taken"; a listener does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def _answers_metadata(bootstrap: str, timeout_ms: int = 3000) -> tuple[bool, str]:
    """Ask the cluster for its brokers; (answered with at least one broker, why not)."""
    from kafka import KafkaAdminClient  # imported late: a plain `status` should stay cheap

    admin = None
    try:
        # kafka-python 3 bounds the first connection with bootstrap_timeout_ms;
        # 2.x calls it api_version_auto_timeout_ms and rejects unknown keys.
        limit = ("bootstrap_timeout_ms" if "bootstrap_timeout_ms" in KafkaAdminClient.DEFAULT_CONFIG
                 else "api_version_auto_timeout_ms")
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="ctower-probe",
            request_timeout_ms=timeout_ms,
            **{limit: timeout_ms},
        )
        cluster = admin.describe_cluster()
        brokers = [b for b in cluster.get("brokers", []) if not b.get("is_fenced")]
        if not brokers:
            return False, "the cluster reports no active broker yet"
        return True, ""
    except Exception as exc:  # any failure simply means "not answering (yet)"
        return False, f"{type(exc).__name__}: {exc}"
    finally:
        if admin is not None:
            with contextlib.suppress(Exception):
                admin.close()


def _tail(path: Path, lines: int = _TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or f"({path} is empty)"


def _broker_complaint(log_tail: str) -> str | None:
    """The broker's own last word on why it stopped (an exception message), if any."""
    for line in reversed(log_tail.splitlines()):
        match = re.search(r"^[\w.$]+(?:Exception|Error): (.+)$", line.strip())
        if match:
            return match.group(1)
    for line in reversed(log_tail.splitlines()):
        if " ERROR " in line:
            return line.split(" - ", 1)[-1]
    return None


def _random_cluster_id() -> str:
    """A KRaft cluster id as Kafka makes them: 16 random bytes, URL-safe base64.

    Like Kafka's ``Uuid.randomUuid`` it never starts with '-', which a
    command line would read as an option.
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


# --------------------------------------------------------------------------
# The broker
# --------------------------------------------------------------------------
class LocalKafka:
    """Start, stop and inspect the single-node broker of ``settings``.

    Every method is safe to call in any state: ``up`` on a running broker
    returns its address, ``down`` on a stopped one does nothing.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.version = settings.kafka_version
        self.port = settings.kafka_port
        self.controller_port = settings.kafka_port + 1
        self.home = settings.data_dir / "kafka"
        self.log_dirs = self.home / "data"
        self.config_file = self.home / "server.properties"
        self.log_file = self.home / "broker.log"
        self.pid_file = self.home / "broker.pid"

    @property
    def bootstrap(self) -> str:
        return self.settings.bootstrap

    # --- public API -------------------------------------------------------
    def up(self, timeout: float = 120) -> str:
        """Make sure the broker runs and answers; return its bootstrap address.

        The first call fetches the jars (see :func:`fetch_jars`) and formats
        the storage; later calls reuse both, so data survives restarts.
        """
        deadline = time.monotonic() + timeout
        if not self.settings.uses_local_kafka:
            self._wait_for_remote(deadline, timeout)
            return self.bootstrap
        with _file_lock(self.home / ".lock"):
            pid = self._running_pid()
            if pid is not None:
                running_port = self._configured_port()
                if running_port is not None and running_port != self.port:
                    raise BrokerError(
                        f"the local Kafka broker (pid {pid}, data in {self.home}) already runs "
                        f"on port {running_port}, but CTOWER_KAFKA_PORT is {self.port}: "
                        "stop it first with `ctower kafka down` (same data_dir)"
                    )
                self._wait_ready(pid, deadline, timeout, started_here=False)
                return self.bootstrap
            self._check_ports()
            java = _find_java()
            libs = fetch_jars(self.version)
            self.home.mkdir(parents=True, exist_ok=True)
            self._write_config()
            self._format_storage(java, libs)
            pid = self._start(java, libs)
            self._wait_ready(pid, deadline, timeout, started_here=True)
            return self.bootstrap

    def down(self, timeout: float = 30) -> None:
        """Stop the broker: SIGTERM (Kafka's clean shutdown), SIGKILL after ``timeout``."""
        if not self.settings.uses_local_kafka:
            return
        pid = self._running_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self._wait_exit(pid, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not self._wait_exit(pid, 10):
                raise BrokerError(f"the Kafka broker (pid {pid}) did not exit even after SIGKILL")
        self.pid_file.unlink(missing_ok=True)

    def status(self) -> BrokerStatus:
        """Whether the broker runs, where, and where its files are. Starts nothing."""
        if not self.settings.uses_local_kafka:
            answered, _ = _answers_metadata(self.bootstrap)
            return BrokerStatus(
                running=answered, pid=None, bootstrap=self.bootstrap, version=None,
                data_dir=None, log_file=None, local=False, reachable=answered,
            )
        pid = self._running_pid()
        reachable = pid is not None and _port_open(self.port) and _answers_metadata(
            self.bootstrap)[0]
        return BrokerStatus(
            running=pid is not None, pid=pid, bootstrap=self.bootstrap, version=self.version,
            data_dir=self.home, log_file=self.log_file, local=True, reachable=reachable,
        )

    # --- steps of up() ----------------------------------------------------
    def _check_ports(self) -> None:
        for port, role in ((self.port, "client"), (self.controller_port, "controller")):
            if not _port_free(port):
                raise BrokerError(
                    f"port {port} on 127.0.0.1 (the local Kafka broker's {role} port) is already "
                    "in use by another program. Choose another port with CTOWER_KAFKA_PORT "
                    f"(now {self.port}; the broker also uses the next port for its controller), "
                    "stop that program, or point KAFKA_BOOTSTRAP at a cluster that runs there."
                )

    def _write_config(self) -> None:
        template = string.Template(
            resources.files("ctower.devstack.broker").joinpath("server.properties").read_text()
        )
        text = template.substitute(
            port=self.port,
            controller_port=self.controller_port,
            log_dirs=self.log_dirs,
            partitions=self.settings.topic_partitions,
            initial_rebalance_delay_ms=self.settings.kafka_initial_rebalance_delay_ms,
        )
        tmp = self.config_file.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_file)

    def _configured_port(self) -> int | None:
        try:
            text = self.config_file.read_text()
        except OSError:
            return None
        match = re.search(r"^listeners=PLAINTEXT://[^:]+:(\d+)", text, re.MULTILINE)
        return int(match.group(1)) if match else None

    def _format_storage(self, java: str, libs: Path) -> None:
        """Format the KRaft storage on first start only: formatting again would lose data."""
        if (self.log_dirs / "meta.properties").is_file():
            return
        cmd = [
            java, "-Xmx256m", "-cp", f"{libs}{os.sep}*", "kafka.tools.StorageTool", "format",
            "--standalone", "--ignore-formatted",
            "-t", _random_cluster_id(), "-c", str(self.config_file),
        ]
        try:
            result = subprocess.run(
                cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise BrokerError(f"formatting Kafka's storage in {self.log_dirs} timed out") from exc
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip().splitlines()[-_TAIL_LINES:]
            raise BrokerError(
                f"formatting Kafka's storage in {self.log_dirs} failed "
                f"(exit code {result.returncode}):\n" + "\n".join(output)
            )

    def _start(self, java: str, libs: Path) -> int:
        if self.log_file.exists() and self.log_file.stat().st_size > _LOG_ROTATE_BYTES:
            os.replace(self.log_file, self.log_file.with_name(self.log_file.name + ".1"))
        cmd = [
            java, "-Xmx512m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
            # slf4j-simple (see pom.xml): timestamps, and the two chatty loggers quieter.
            "-Dorg.slf4j.simpleLogger.logFile=System.out",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd HH:mm:ss,SSS",
            "-Dorg.slf4j.simpleLogger.log.kafka.request.logger=warn",
            "-Dorg.slf4j.simpleLogger.log.state.change.logger=warn",
            "-cp", f"{libs}{os.sep}*", "kafka.Kafka", str(self.config_file),
        ]
        with self.log_file.open("ab") as log:
            log.write(
                f"\n===== ctower: starting Apache Kafka {self.version} on 127.0.0.1:{self.port} "
                f"at {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n".encode()
            )
            log.flush()
            try:
                # every reservation waits for the broker's ack: its threads take a
                # core as they wake (CTOWER_LATENCY_SLICE_MS, ctower/cpu_slice.py)
                with slice_for_children(self.settings.latency_slice_ms):
                    proc = subprocess.Popen(
                        cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                        cwd=self.home, start_new_session=True, close_fds=True,
                    )
            except OSError as exc:
                raise BrokerError(f"could not start the Kafka broker ({java}): {exc}") from exc
        _CHILDREN[proc.pid] = proc
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc.pid

    def _wait_ready(self, pid: int, deadline: float, timeout: float, started_here: bool) -> None:
        why = "the port is not open yet"
        while True:
            if not self._alive(pid):
                self.pid_file.unlink(missing_ok=True)
                tail = _tail(self.log_file)
                reason = _broker_complaint(tail)
                raise BrokerError(
                    f"the Kafka broker (pid {pid}) exited during start-up"
                    + (f": {reason}" if reason else "")
                    + f"\nLast lines of {self.log_file}:\n{tail}"
                )
            if _port_open(self.port):
                answered, why = _answers_metadata(self.bootstrap, timeout_ms=2000)
                if answered:
                    return
            if time.monotonic() > deadline:
                if started_here:  # do not leave a half-started broker behind
                    with contextlib.suppress(BrokerError):
                        self.down(timeout=10)
                raise BrokerError(
                    f"the Kafka broker (pid {pid}) did not answer on {self.bootstrap} within "
                    f"{timeout:.0f} s ({why}){'; it was stopped' if started_here else ''}. "
                    f"Last lines of {self.log_file}:\n{_tail(self.log_file)}"
                )
            time.sleep(0.2)

    def _wait_for_remote(self, deadline: float, timeout: float) -> None:
        why = ""
        while time.monotonic() <= deadline:
            remaining_ms = int(max(1.0, min(5.0, deadline - time.monotonic())) * 1000)
            answered, why = _answers_metadata(self.bootstrap, timeout_ms=remaining_ms)
            if answered:
                return
            time.sleep(0.5)
        raise BrokerError(
            f"the Kafka cluster at {self.bootstrap} (KAFKA_BOOTSTRAP) did not answer a metadata "
            f"request within {timeout:.0f} s: {why}. Nothing is started locally while "
            "KAFKA_BOOTSTRAP is set; unset it to use the local broker."
        )

    # --- process bookkeeping ---------------------------------------------
    def _running_pid(self) -> int | None:
        """The pid in the pid file if that process is alive and is this broker.

        A stale pid file (crash, reboot, pid reused by another program) is
        removed, so it can never make us signal a stranger.
        """
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if self._alive(pid):
            return pid
        self.pid_file.unlink(missing_ok=True)
        return None

    def _alive(self, pid: int) -> bool:
        proc = _CHILDREN.get(pid)
        if proc is not None:
            if proc.poll() is None:
                return True
            del _CHILDREN[pid]
            return False
        try:  # our child, but not through a Popen we kept: reap it if it exited
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return False
        except ChildProcessError:
            pass
        proc_dir = Path("/proc") / str(pid)
        if Path("/proc/self").exists():
            try:
                cmdline = (proc_dir / "cmdline").read_bytes().split(b"\0")
                state = (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                return False
            return (
                state != "Z"
                and b"kafka.Kafka" in cmdline
                and str(self.config_file).encode() in cmdline
            )
        try:  # no /proc (macOS): trust the pid file
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._alive(pid):
                return True
            time.sleep(0.1)
        return not self._alive(pid)
