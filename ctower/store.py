"""How every process reaches the ClickHouse store, with clickhouse-connect.

- Server mode (``http://host:8123``): everybody connects to the server.
- Embedded mode (``chdb:///path``): only one process may open the path. The
  sink owns it (``owner=True``) and serves ClickHouse's HTTP interface on
  127.0.0.1; the dashboard and ``ctower sql`` connect there, exactly as they
  would to a server. When no sink runs, they open the path themselves.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from ctower.settings import Settings


def open_store(settings: Settings, *, owner: bool = False) -> Client:
    """A clickhouse-connect client for the configured store.

    ``owner`` is for the one process that writes an embedded store (the sink).
    """
    if not settings.store_is_embedded:
        url = urlsplit(settings.dsn)
        return clickhouse_connect.get_client(
            host=url.hostname or "127.0.0.1",
            port=url.port or (8443 if url.scheme == "https" else 8123),
            secure=url.scheme == "https",
            username=settings.store_user,
            password=settings.store_password,
        )
    path = settings.chdb_path
    path.mkdir(parents=True, exist_ok=True)
    return clickhouse_connect.get_client(interface="chdb", path=str(path))
