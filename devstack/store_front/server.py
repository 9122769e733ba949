"""ClickHouse's HTTP interface in front of the embedded (chdb) store.

Only one process can open a chdb directory, so the process that owns it (the
sink) also answers ClickHouse's HTTP protocol on 127.0.0.1. The dashboard and
``ctower sql`` then use the ordinary clickhouse-connect HTTP client, the same
code that talks to a real ClickHouse server, and the embedded mode needs no
second client path.

What is served (and what is refused) is :mod:`ctower.devstack.store_front.handler`; the
ClickHouse error model and SQL lexing it needs are :mod:`ctower.devstack.store_front.protocol`.
This module is the HTTP server around them: aiohttp on an event loop of its
own in a background thread (HTTP/1.1, keep-alive and chunked bodies are
aiohttp's, not ours), each request's chdb work on a thread pool so requests
run in parallel, and the front's lifecycle: the URL published in
``data_dir/store.url``, requests in flight finished on stop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any

from aiohttp import web

from ctower.devstack.store_front.handler import MAX_BODY_BYTES, ConnectionPool, Reply, StoreFront
from ctower.devstack.store_front.protocol import (
    NOT_IMPLEMENTED,
    QUERY_IS_TOO_LARGE,
    StoreQueryError,
)
from ctower.settings import Settings, SettingsError
from ctower.store import (
    STORE_PATH_HEADER,
    STORE_URL_FILE,
    StoreUnavailable,
    describe_process,
    lock_holder,
)

logger = logging.getLogger(__name__)

QUERY_THREADS = 16
"""Requests whose chdb work runs at once (chdb releases the GIL while it works)."""
STOP_WAIT_S = 10.0
"""How long a stopping front lets requests in flight finish (an insert is not cut off)."""


class _Http:
    """The aiohttp application: routes, bodies in, replies out."""

    def __init__(self, front: StoreFront, executor: ThreadPoolExecutor) -> None:
        self.front = front
        self.executor = executor
        self.requests = 0
        self.app = web.Application(client_max_size=MAX_BODY_BYTES)
        self.app.router.add_route("*", "/ping", self.ping)
        self.app.router.add_route("*", "/replicas_status", self.ping)
        self.app.router.add_get("/", self.query)
        self.app.router.add_post("/", self.query)
        self.app.router.add_route("*", "/{tail:.*}", self.unknown)

    def _ok(self) -> web.Response:
        return web.Response(body=b"Ok.\n", headers={
            "Content-Type": "text/plain; charset=UTF-8", STORE_PATH_HEADER: self.front.store_path,
        })

    async def ping(self, request: web.Request) -> web.Response:
        self.requests += 1
        return self._ok()

    async def unknown(self, request: web.Request) -> web.Response:
        self.requests += 1
        message = f"There is no handle {request.path}. Use / or /ping."
        reply = self.front.error(StoreQueryError(NOT_IMPLEMENTED, message))
        return self._response(Reply(404, reply.body, reply.headers))

    async def query(self, request: web.Request) -> web.Response:
        self.requests += 1
        if request.method == "GET" and not request.query.get("query"):
            return self._ok()  # as ClickHouse: a GET without a query is a health check
        try:
            params, body = await self._read(request)
        except StoreQueryError as exc:
            return self._response(self.front.error(exc, request.query.get("query_id")))
        method = "POST" if request.method == "POST" else "GET"  # HEAD reads, as GET does
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(self.executor, self.front.execute, method, params,
                                           request.headers, body)
        return self._response(reply)

    @staticmethod
    async def _read(request: web.Request) -> tuple[dict[str, str], bytes]:
        """The URL parameters (plus a multipart form's fields) and the raw body."""
        params = dict(request.query)
        try:
            if request.content_type != "multipart/form-data":
                return params, await request.read()
            for name, value in (await request.post()).items():
                if isinstance(value, web.FileField):
                    raise StoreQueryError(
                        NOT_IMPLEMENTED,
                        "External data (file fields) is not supported by the store front")
                params[name] = (
                    value.decode("utf-8") if isinstance(value, bytes | bytearray) else value
                )
            return params, b""
        except web.HTTPRequestEntityTooLarge:
            raise StoreQueryError(
                QUERY_IS_TOO_LARGE, f"The request body is larger than {MAX_BODY_BYTES} bytes"
            ) from None

    @staticmethod
    def _response(reply: Reply) -> web.Response:
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)


class StoreHttpServer:
    """Serves the embedded store's engine over ClickHouse's HTTP interface.

    Runs in the process that owns the chdb directory (the sink), in a background
    thread, bound to 127.0.0.1 only: there is no authentication. While it runs,
    ``data_dir/store.url`` holds its URL so the other processes find it.
    """

    def __init__(self, settings: Settings, engine_client: Any = None, *,
                 port: int | None = None) -> None:
        if not settings.store_is_embedded:
            raise SettingsError("store_dsn: the store front serves only an embedded (chdb) store")
        self.settings = settings
        self.store_path = os.path.realpath(settings.chdb_path)
        if engine_client is not None:
            client_path = getattr(engine_client, "path", None)
            if client_path is None or os.path.realpath(client_path) != self.store_path:
                raise ValueError(
                    f"engine_client is not a chdb client on {self.store_path} (got {client_path!r})"
                )
        self._engine_client = engine_client
        self._port = settings.store_http_port if port is None else port
        self._bound_port: int | None = None
        self._pool: ConnectionPool | None = None
        self._http: _Http | None = None
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.url_file = settings.data_dir / STORE_URL_FILE

    @property
    def requests_served(self) -> int:
        """HTTP requests answered so far (pings included): a cheap liveness gauge."""
        return self._http.requests if self._http is not None else 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._bound_port or self._port}"

    def start(self) -> StoreHttpServer:
        """Open the engine (if not open yet), listen, and publish the URL."""
        if self._runner is not None:
            return self
        Path(self.store_path).mkdir(parents=True, exist_ok=True)
        try:
            pool = ConnectionPool(self.store_path)
        except RuntimeError as exc:
            holder = lock_holder(Path(self.store_path))
            if holder is None or holder == os.getpid():
                raise
            raise StoreUnavailable(
                f"store front: {self.store_path} is open in {describe_process(holder)}"
            ) from exc
        executor = ThreadPoolExecutor(QUERY_THREADS, thread_name_prefix="ctower-store-query")
        http = _Http(StoreFront(pool, self.store_path), executor)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="ctower-store-front",
                                  daemon=True)
        thread.start()
        try:
            runner = asyncio.run_coroutine_threadsafe(self._listen(http), loop).result()
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            executor.shutdown(wait=False)
            pool.close()
            raise
        self._pool, self._http, self._runner = pool, http, runner
        self._loop, self._thread, self._executor = loop, thread, executor
        self._publish()
        logger.info("store front for %s at %s", self.store_path, self.url)
        return self

    async def _listen(self, http: _Http) -> web.AppRunner:
        # auto_decompress off: a compressed body reaches the front as sent, which refuses
        # it in ClickHouse's words rather than aiohttp's.
        runner = web.AppRunner(http.app, access_log=None, handle_signals=False,
                               shutdown_timeout=STOP_WAIT_S, auto_decompress=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self._port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(
                exc.errno, f"store front: cannot listen on 127.0.0.1:{self._port}: {exc.strerror}"
            ) from exc
        self._bound_port = int(runner.addresses[0][1])
        return runner

    def _publish(self) -> None:
        self.url_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.url_file.with_name(f".{STORE_URL_FILE}.{os.getpid()}")
        tmp.write_text(self.url + "\n")
        os.replace(tmp, self.url_file)

    def stop(self) -> None:
        """Stop listening, let requests in flight finish (up to ``STOP_WAIT_S``), close."""
        runner, loop, pool = self._runner, self._loop, self._pool
        if runner is None or loop is None or pool is None:
            return
        with suppress(OSError):
            if self.url_file.read_text().strip() == self.url:
                self.url_file.unlink()
        try:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(STOP_WAIT_S + 5)
        except Exception:  # stopping anyway: the process may be on its way out
            logger.warning("store front: unclean stop", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=STOP_WAIT_S)
        if not loop.is_running():
            loop.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        pool.close()
        self._runner = self._loop = self._thread = self._executor = None
        self._pool = self._http = None
        self._bound_port = None

    def __enter__(self) -> StoreHttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
