"""Every error ctower raises on purpose derives from CtowerError, and keeps the
built-in base its callers catch."""

from __future__ import annotations

import importlib

import pytest

from ctower.errors import CtowerError

ERRORS = [
    ("ctower.settings", "SettingsError", RuntimeError),
    ("ctower.devstack.broker.local", "BrokerError", RuntimeError),
    ("ctower.store", "StoreUnavailable", RuntimeError),
    ("ctower.devstack.store_front.protocol", "StoreQueryError", Exception),
    ("ctower.bench.coupons", "BenchError", RuntimeError),
    ("ctower.coupons.policy", "PolicyError", RuntimeError),
    ("ctower.sinks.clickhouse.sink", "SinkError", RuntimeError),
    ("ctower.control.alert_acks", "AckError", RuntimeError),
    ("ctower.control.actions", "ActionError", RuntimeError),
    ("ctower.rules.config", "RulesError", ValueError),
    ("ctower.schemas.master_data", "MasterDataError", ValueError),
    ("ctower.schemas.wire", "DuplicateKeyError", ValueError),
    ("ctower.schemas.migrations", "MigrationError", RuntimeError),
]


@pytest.mark.parametrize(("module", "name", "builtin"), ERRORS)
def test_each_error_derives_from_the_root(module: str, name: str, builtin: type) -> None:
    error = getattr(importlib.import_module(module), name)
    assert issubclass(error, CtowerError)
    assert issubclass(error, builtin)
