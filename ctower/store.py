"""How every process reaches the ClickHouse store, with clickhouse-connect.

- Server mode (``http://host:8123``): everybody connects to the server.
- Embedded mode (``chdb:///path``): only one process may open the path. The
  sink owns it (``owner=True``) and serves ClickHouse's HTTP interface on
  127.0.0.1 (:mod:`ctower.devstack.store_front.server`); the dashboard and ``ctower sql``
  connect there, exactly as they would to a server. When no sink runs, they
  open the path themselves.
"""

from __future__ import annotations

import http.client
import os
import re
import threading
from contextlib import suppress
from pathlib import Path
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ProgrammingError
from clickhouse_connect.driver.httputil import get_pool_manager
from urllib3 import PoolManager

from ctower.errors import CtowerError
from ctower.settings import Settings

STORE_URL_FILE = "store.url"
"""In ``data_dir``: the URL of the running store front, one line."""
STORE_PATH_HEADER = "X-Ctower-Store-Path"
"""Sent by the store front: which chdb directory it serves, so a client never takes
another data folder's front (or an unrelated ClickHouse) for its own."""


class StoreUnavailable(CtowerError, RuntimeError):
    """The embedded store is held by another process, and no front of it answers."""


def open_store(settings: Settings, *, owner: bool = False, path_fallback: bool = True) -> Client:
    """A clickhouse-connect client for the configured store.

    ``owner`` is for the one process that writes an embedded store (the sink).
    Everybody else gets the owner's HTTP front if one answers, else the path
    itself; :class:`StoreUnavailable` says who holds the path when neither works.
    A long-lived reader (the dashboard) passes ``path_fallback=False``: while it
    held the path, a sink could not start.
    """
    if not settings.store_is_embedded:
        url = urlsplit(settings.dsn)
        return clickhouse_connect.get_client(
            host=url.hostname or "127.0.0.1",
            port=url.port or (8443 if url.scheme == "https" else 8123),
            secure=url.scheme == "https",
            username=settings.store_user,
            password=settings.store_password.get_secret_value(),
            # one client is shared by the dashboard's threads: no server session
            autogenerate_session_id=False,
        )
    path = settings.chdb_path
    if not owner:
        front = find_store_front(settings)
        if front is not None:
            return _front_client(front)
        if not path_fallback:
            raise StoreUnavailable(
                f"no store front answers for {settings.chdb_path} (looked at "
                f"{settings.data_dir / STORE_URL_FILE} and port {settings.store_http_port}): "
                "is the sink running?"
            )
    holder = lock_holder(path)
    if holder is not None and holder != os.getpid():
        raise StoreUnavailable(_unavailable_message(settings, holder, owner))
    path.mkdir(parents=True, exist_ok=True)
    try:
        return clickhouse_connect.get_client(interface="chdb", path=str(path))
    except ProgrammingError as exc:  # taken between our look and our open
        holder = lock_holder(path)
        if holder is None or holder == os.getpid():
            raise
        raise StoreUnavailable(_unavailable_message(settings, holder, owner)) from exc


def find_store_front(settings: Settings, timeout: float = 1.0) -> str | None:
    """The URL of a live front serving this store: the one ``store.url`` names,
    else the configured port. A file left by a dead server does not answer (or
    answers for another path) and is passed over."""
    candidates: list[str] = []
    with suppress(OSError, ValueError):
        candidates.append((settings.data_dir / STORE_URL_FILE).read_text().strip())
    candidates.append(f"http://127.0.0.1:{settings.store_http_port}")
    wanted = os.path.realpath(settings.chdb_path)
    for url in dict.fromkeys(c for c in candidates if c):
        if _front_serves(url, wanted, timeout):
            return url
    return None


def _front_serves(url: str, store_path: str, timeout: float) -> bool:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # a mangled store.url
        return False
    if parts.scheme != "http" or not parts.hostname or not port:
        return False
    conn = http.client.HTTPConnection(parts.hostname, port, timeout=timeout)
    try:
        conn.request("GET", "/ping")
        response = conn.getresponse()
        body = response.read()
        return (
            response.status == 200
            and body == b"Ok.\n"
            and response.getheader(STORE_PATH_HEADER) == store_path
        )
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


_pools: dict[int, PoolManager] = {}
_pools_lock = threading.Lock()


def _loopback_pool() -> PoolManager:
    """One proxy-free connection pool per process: an ``http_proxy`` in the
    environment must never carry loopback traffic (urllib3 pools do not survive
    fork, hence per pid)."""
    with _pools_lock:
        pool = _pools.get(os.getpid())
        if pool is None:
            pool = _pools[os.getpid()] = get_pool_manager(maxsize=16)
        return pool


def _front_client(url: str) -> Client:
    """An HTTP client for the local front. Compression only costs CPU on
    loopback; no session id, so one client can serve several threads."""
    parts = urlsplit(url)
    return clickhouse_connect.get_client(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 8124,
        compress=False,
        autogenerate_session_id=False,
        pool_mgr=_loopback_pool(),
    )


def lock_holder(path: Path) -> int | None:
    """The pid holding the chdb directory's lock, or None if nobody does.

    ClickHouse flocks ``<path>/status`` while the engine runs and writes its pid
    there; the file outlives a killed process, so only the lock counts. Linux
    lists flocks in /proc/locks, read without touching the lock (probing it
    with flock could make a starting sink fail); elsewhere we probe.
    """
    status = path / "status"
    try:
        stat = status.stat()
    except OSError:
        return None
    pid_in_file = _pid_in_status(status)
    try:
        locks = Path("/proc/locks").read_text()
    except OSError:
        return pid_in_file if _probe_locked(status) else None
    inode = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    for line in locks.splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == inode:
            return int(fields[4]) if fields[4].isdigit() else pid_in_file
    return None


def _pid_in_status(status: Path) -> int | None:
    with suppress(OSError, ValueError):
        match = re.search(r"PID:\s*(\d+)", status.read_text(errors="replace"))
        return int(match.group(1)) if match else None
    return None


def _probe_locked(status: Path) -> bool:
    import fcntl

    fd = os.open(status, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def describe_process(pid: int) -> str:
    """``the sink (pid 42: ctower sink)``: enough to tell which process to look at."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        cmdline = " ".join(b" ".join(args).decode(errors="replace").split())
    except OSError:
        return f"process {pid}"
    kinds = [("streamlit", "the dashboard"), (" sink", "the sink"), (" worker", "a worker"),
             (" demo", "ctower demo"), ("ctower", "a ctower command"), ("pytest", "a test run")]
    kind = next((name for needle, name in kinds if needle in cmdline), "another process")
    if len(cmdline) > 120:
        cmdline = cmdline[:117] + "..."
    return f"{kind} (pid {pid}: {cmdline})"


def _unavailable_message(settings: Settings, pid: int, owner: bool = False) -> str:
    if owner:
        return (
            f"the embedded store {settings.chdb_path} is already open in "
            f"{describe_process(pid)}; only one process can own it (is a sink already running?)"
        )
    return (
        f"the embedded store {settings.chdb_path} is open in {describe_process(pid)}, "
        f"which serves no store front: nothing answers at the URL in "
        f"{settings.data_dir / STORE_URL_FILE} or at http://127.0.0.1:{settings.store_http_port}. "
        "Only one process can open the store's folder: run the sink (it serves the store "
        "to other processes), stop that process, or point CTOWER_STORE_DSN at a ClickHouse server."
    )
