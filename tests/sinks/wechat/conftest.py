"""Fixtures of the WeChat Work delivery tests: alerts, routing files, and
delivery settings pointing at the fake webhook (``webhook_server``)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ctower.schemas.control import Alert

_ids = itertools.count(1)


@pytest.fixture
def make_alert() -> Callable[..., Alert]:
    """An open alert; keyword arguments override any field."""

    def make(**fields: Any) -> Alert:
        n = next(_ids)
        values: dict[str, Any] = {
            "alert_id": f"a{n:05d}",
            "key": f"stock_out|S001|K{n}",
            "kind": "stock_out",
            "severity": "warning",
            "status": "open",
            "message": f"门店 S001 商品 K{n} 库存为零",
            "evidence": {"on_hand": 0, "threshold": 5, "window_min": 15},
            "action": "从 S002 调拨 20 件",
            "opened_at": int(time.time() * 1000),
            "region": "east",
            "store_id": "S001",
            "sku": f"K{n}",
        }
        values.update(fields)
        return Alert(**values)

    return make


@pytest.fixture
def write_routes(tmp_path: Path) -> Callable[[str], Path]:
    """Write a routing file (TOML text) and return its path."""

    def write(text: str) -> Path:
        path = tmp_path / f"routes-{next(_ids)}.toml"
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def write_secrets(tmp_path: Path) -> Callable[[dict[str, str]], Path]:
    """Write a webhook secrets file (robot = URL) and return its path."""

    def write(urls: dict[str, str]) -> Path:
        path = tmp_path / f"webhooks-{next(_ids)}.toml"
        path.write_text("".join(f'{k} = "{v}"\n' for k, v in urls.items()), encoding="utf-8")
        path.chmod(0o600)
        return path

    return write
