"""``ctower sql`` prints query results from every kind of store: the embedded
path with nobody holding it, the sink's front while a sink owns the path
(another process here), and a server URL given with ``--dsn``."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner

from ctower.devstack.store_front.server import StoreHttpServer
from ctower.settings import Settings
from ctower.sql_command import render, sql


def _env(settings: Settings) -> dict[str, str]:
    return {
        "CTOWER_DATA_DIR": str(settings.data_dir),
        "CTOWER_STORE_HTTP_PORT": str(settings.store_http_port),
        "CTOWER_STORE_DSN": "",
    }


def _run(settings: Settings, *args: str) -> str:
    result = CliRunner().invoke(sql, list(args), env=_env(settings))
    assert result.exit_code == 0, result.output
    return result.output


def test_sql_on_the_path_when_no_sink_runs(store_settings: Settings):
    assert _run(store_settings, "CREATE TABLE shops (id UInt32, name String, revenue Float64) "
                                "ENGINE = MergeTree ORDER BY id") == "Ok.\n"
    _run(store_settings, "INSERT INTO shops VALUES (1, '徐汇店', 1234.5), (20, 'Pudong', 99)")
    table = _run(store_settings, "SELECT id, name, revenue FROM shops ORDER BY id")
    assert table.splitlines() == [
        "id  name    revenue",
        "--  ------  -------",
        " 1  徐汇店   1234.5",
        "20  Pudong     99.0",
        "(2 rows)",
    ]
    rows = list(csv.reader(io.StringIO(_run(store_settings, "SELECT * FROM shops ORDER BY id",
                                            "--format", "csv"))))
    assert rows == [["id", "name", "revenue"], ["1", "徐汇店", "1234.5"], ["20", "Pudong", "99.0"]]
    records = json.loads(_run(store_settings, "SELECT id, name FROM shops ORDER BY id",
                              "--format", "json"))
    assert records == [{"id": 1, "name": "徐汇店"}, {"id": 20, "name": "Pudong"}]
    assert _run(store_settings, "SELECT 1 WHERE 0") == "(0 rows)\n"


def test_sql_through_the_front_while_another_process_owns_the_store(store_settings: Settings,
                                                                     owners):
    proc, url = owners.start(serve=True)
    assert url.startswith("http://")
    assert _run(store_settings, "SELECT who, n FROM born").splitlines()[2] == "child  1"
    _run(store_settings, "INSERT INTO born VALUES (7, 'cli')")
    assert json.loads(_run(store_settings, "SELECT count() AS c FROM born", "--format", "json")) \
        == [{"c": 2}]
    owners.stop(proc)


def test_sql_against_a_server_url(front: StoreHttpServer, tmp_path):
    elsewhere = {"CTOWER_DATA_DIR": str(tmp_path / "unused"), "CTOWER_STORE_DSN": ""}
    result = CliRunner().invoke(
        sql, ["SELECT number * 2 AS doubled FROM numbers(3)", "--dsn", front.url,
              "--format", "csv"], env=elsewhere,
    )
    assert result.exit_code == 0, result.output
    assert result.output == "doubled\n0\n2\n4\n"
    assert not (tmp_path / "unused" / "clickhouse").exists()  # never touched a local path


def test_sql_errors_exit_non_zero_with_the_clickhouse_message(store_settings: Settings):
    result = CliRunner().invoke(sql, ["SELECT * FROM no_such_table"], env=_env(store_settings))
    assert result.exit_code == 1
    assert "UNKNOWN_TABLE" in result.output and "no_such_table" in result.output


def test_sql_reports_who_holds_the_store(store_settings: Settings, owners):
    proc, _ = owners.start(serve=False)
    result = CliRunner().invoke(sql, ["SELECT 1"], env=_env(store_settings))
    assert result.exit_code == 1
    assert f"pid {proc.pid}" in result.output
    owners.stop(proc)


@pytest.mark.parametrize(("fmt", "expected"), [
    ("table", "a  b\n-  -\n1  x\n(1 row)\n"),
    ("csv", "a,b\n1,x\n"),
    ("json", '[\n  {\n    "a": 1,\n    "b": "x"\n  }\n]\n'),
])
def test_render_formats(fmt: str, expected: str):
    assert render(["a", "b"], [[1, "x"]], fmt) == expected
