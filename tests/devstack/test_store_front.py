"""The store front speaks enough ClickHouse HTTP for clickhouse-connect as our
code makes it (no compression, no session), refuses the rest clearly, and
open_store finds it from another process.

Everything is real: chdb in tmp_path, the server on a free port, the
clickhouse-connect HTTP client, and (for the cross-process cases) a second
Python process that owns the store.
"""

from __future__ import annotations

import datetime as dt
import gzip
import http.client
import threading
import uuid
from urllib.parse import urlencode

import pandas as pd
import pyarrow as pa
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError
from clickhouse_connect.driver.httpclient import HttpClient

from ctower.devstack.store_front.protocol import output_format, split_insert, statement_kind
from ctower.devstack.store_front.server import StoreHttpServer
from ctower.settings import Settings, load_settings
from ctower.store import (
    STORE_PATH_HEADER,
    StoreUnavailable,
    find_store_front,
    lock_holder,
    open_store,
)

EVENTS_DDL = (
    "CREATE TABLE events (id UInt64, store String, amount Float64, ts DateTime) "
    "ENGINE = MergeTree ORDER BY id"
)


def _raw(server: StoreHttpServer, method: str, params: dict[str, str], body: bytes = b"",
         headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    """One plain HTTP request, to check the wire format the client relies on."""
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request(method, "/?" + urlencode(params), body=body or None, headers=headers or {})
    response = conn.getresponse()
    response.body = response.read()  # type: ignore[attr-defined]
    conn.close()
    return response


# --- the SQL scanning the front relies on ------------------------------------------
def test_split_insert_finds_the_data_after_format_and_ignores_quoted_keywords():
    head = split_insert("INSERT INTO t (`FORMAT`, b) SETTINGS x='FORMAT y' FORMAT Native\n\x01\x02")
    assert head is not None
    assert head.sql == "INSERT INTO t (`FORMAT`, b) SETTINGS x='FORMAT y'"
    assert head.fmt == "Native"
    text = "INSERT INTO t FORMAT CSV 1,2\n"
    assert text[split_insert(text).data_start :] == "1,2\n"  # type: ignore[union-attr]
    assert split_insert("INSERT INTO t VALUES (1, 'FORMAT CSV')") is None
    assert split_insert("INSERT INTO t SELECT * FROM s FORMAT Native") is None
    assert split_insert("SELECT 1 FORMAT Native") is None


def test_statement_kind_and_output_format():
    assert statement_kind("  -- note\n(SELECT 1)") == "SELECT"
    assert statement_kind("/* x */ set max_threads = 1") == "SET"
    assert output_format("SELECT 'FORMAT CSV' FORMAT JSONEachRow SETTINGS a=1") == "JSONEachRow"
    assert output_format("SELECT x FROM (SELECT 1 AS x FORMAT CSV)") is None
    assert output_format("SELECT 1") is None


# --- the protocol, through clickhouse-connect --------------------------------------
def test_ping_headers_and_url_file(front: StoreHttpServer, store_settings: Settings):
    url_file = store_settings.data_dir / "store.url"
    assert url_file.read_text().strip() == front.url
    response = _raw(front, "GET", {})
    assert response.status == 200 and response.body == b"Ok.\n"  # type: ignore[attr-defined]
    host, port = front.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("GET", "/ping")
    ping = conn.getresponse()
    assert ping.read() == b"Ok.\n"
    assert ping.getheader(STORE_PATH_HEADER) == str(store_settings.chdb_path.resolve())
    conn.close()
    assert find_store_front(store_settings) == front.url
    front.stop()
    assert not url_file.exists()
    url_file.write_text(front.url + "\n")  # a stale file, as a killed sink leaves it
    assert find_store_front(store_settings) is None


def test_command_insert_and_queries_round_trip(http_client: Client):
    assert http_client.command(EVENTS_DDL).written_rows == 0  # a summary, not a result set
    rows = [[i, f"s{i % 3}", i * 1.5, dt.datetime(2024, 1, 1, 0, 0, i % 60)] for i in range(1000)]
    summary = http_client.insert("events", rows, column_names=["id", "store", "amount", "ts"])
    assert summary.written_rows == 1000

    result = http_client.query(
        "SELECT store, count() AS n, sum(amount) AS total FROM events "
        "WHERE id >= {low:UInt64} AND store != {skip:String} GROUP BY store ORDER BY store",
        parameters={"low": 10, "skip": "s'2"},
    )
    expected = {}
    for row in rows[10:]:
        n, total = expected.get(row[1], (0, 0.0))
        expected[row[1]] = (n + 1, total + row[2])
    assert result.column_names == ("store", "n", "total")
    assert [(s, n, t) for s, n, t in result.result_rows] == [
        (s, n, pytest.approx(t)) for s, (n, t) in sorted(expected.items())
    ]

    frame = http_client.query_df("SELECT id, store, ts FROM events WHERE id < 3 ORDER BY id")
    assert list(frame["id"]) == [0, 1, 2]
    assert frame["ts"].iloc[2] == pd.Timestamp("2024-01-01 00:00:02")

    http_client.insert_df("events", pd.DataFrame({
        "id": [5000, 5001], "store": ["df", "df"], "amount": [1.0, 2.0],
        "ts": [pd.Timestamp("2024-02-01"), pd.Timestamp("2024-02-02")],
    }))
    http_client.insert_arrow("events", pa.table({
        "id": pa.array([6000, 6001, 6002], pa.uint64()), "store": ["ar"] * 3,
        "amount": [0.5] * 3,
        "ts": pa.array([dt.datetime(2024, 3, 1)] * 3, pa.timestamp("s")),
    }))
    table = http_client.query_arrow(
        "SELECT store, count() AS n FROM events WHERE store IN ('df', 'ar') GROUP BY store "
        "ORDER BY store"
    )
    assert table.to_pylist() == [{"store": "ar", "n": 3}, {"store": "df", "n": 2}]
    assert http_client.command("SELECT count() FROM events") == 1005
    assert http_client.command("SELECT 1 WHERE 0") == ""  # an empty result set, not a summary


def test_inserts_of_several_blocks_and_raw_csv(http_client: Client):
    http_client.command("CREATE TABLE nums (n UInt64, s String) ENGINE = MergeTree ORDER BY n")
    n = 120_000  # several Native blocks in one body
    http_client.insert("nums", [[i, str(i)] for i in range(n)], column_names=["n", "s"])
    assert http_client.query("SELECT count(), sum(n), sum(length(s)) FROM nums").result_rows == [
        (n, n * (n - 1) // 2, sum(len(str(i)) for i in range(n)))
    ]
    http_client.raw_insert("nums", ["n", "s"], b"1,one\n2,two\n", fmt="CSV")
    assert http_client.command("SELECT count() FROM nums WHERE s IN ('one', 'two')") == 2


@pytest.mark.parametrize("options", [{"compress": "lz4"}, {"compress": "gzip"},
                                     {"autogenerate_session_id": True}])
def test_a_client_relying_on_a_dropped_feature_is_told_so(connect, http_client: Client,
                                                          options: dict[str, object]):
    """Compressed bodies and sessions are not served: such a client fails with a
    ClickHouse error naming the feature and the client option, never a wrong answer
    (a lz4 body run as SQL, a session's SET forgotten)."""
    http_client.command("CREATE TABLE kept (n UInt8) ENGINE = MergeTree ORDER BY n")
    with pytest.raises(DatabaseError) as caught:  # connecting already sends a session id
        client = connect(**options)
        client.insert("kept", [[1]], column_names=["n"])  # a compressed body
    message = str(caught.value)
    assert "NOT_IMPLEMENTED" in message and "store front" in message
    assert ("compress=False" in message) != ("autogenerate_session_id=False" in message)
    assert http_client.command("SELECT count() FROM kept") == 0


def test_errors_surface_with_clickhouse_text_and_code(http_client: Client, front: StoreHttpServer):
    http_client.command(EVENTS_DDL)
    with pytest.raises(DatabaseError) as caught:
        http_client.query("SELECT nosuch FROM events")
    assert "Code: 47" in str(caught.value) and "UNKNOWN_IDENTIFIER" in str(caught.value)
    assert caught.value.code == 47

    with pytest.raises(DatabaseError, match="CANNOT_PARSE"):
        http_client.raw_insert("events", ["id", "store", "amount", "ts"], b"x,y\n", fmt="CSV")
    assert http_client.command("SELECT count() FROM events") == 0  # nothing half-inserted

    response = _raw(front, "POST", {}, b"SELECT * FROM missing_table")
    assert response.status == 404  # ClickHouse's status for UNKNOWN_TABLE
    assert response.getheader("X-ClickHouse-Exception-Code") == "60"
    assert response.body.startswith(b"Code: 60. DB::Exception:")  # type: ignore[attr-defined]
    assert http_client.command("SELECT 42") == 42  # the server is fine afterwards


def test_wire_format_params_forms_compression_and_readonly_get(front: StoreHttpServer):
    plain = _raw(front, "POST", {"query": "SELECT number, {w:String} AS w FROM numbers(2)",
                                 "param_w": "a\\tb"})  # escaped, as ClickHouse wants
    assert plain.status == 200
    assert plain.getheader("X-ClickHouse-Format") == "TabSeparated"
    assert plain.body == b"0\ta\\tb\n1\ta\\tb\n"  # type: ignore[attr-defined]
    assert plain.getheader("X-ClickHouse-Timezone")
    assert '"read_rows":"2"' in plain.getheader("X-ClickHouse-Summary", "")

    query_id = str(uuid.uuid4())
    joined = _raw(front, "POST", {"query": "SELECT number FROM numbers(5)", "query_id": query_id,
                                  "enable_http_compression": "1", "default_format": "CSV"},
                  b"WHERE number > 2", {"Accept-Encoding": "gzip"})
    assert joined.getheader("X-ClickHouse-Query-Id") == query_id
    assert joined.getheader("Content-Encoding") is None  # plain, which HTTP allows
    assert joined.body == b"3\n4\n"  # type: ignore[attr-defined]

    boundary = "b0undary"
    form = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"query\"\r\n\r\n"
        "SELECT {v:UInt32} + 1 FORMAT JSONEachRow\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"param_v\"\r\n\r\n41\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    multipart = _raw(front, "POST", {}, form,
                     {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert multipart.getheader("X-ClickHouse-Format") == "JSONEachRow"
    assert multipart.body == b'{"plus(_CAST(41, \'UInt32\'), 1)":42}\n'  # type: ignore[attr-defined]

    assert _raw(front, "POST", {}, b"CREATE TABLE two (a UInt8) ENGINE = Memory").status == 200
    inline = _raw(front, "POST", {}, b"INSERT INTO two FORMAT CSV\n1\n2\n")  # data after the head
    assert inline.status == 200 and '"written_rows":"2"' in inline.getheader("X-ClickHouse-Summary")
    gzipped = _raw(front, "POST", {}, gzip.compress(b"INSERT INTO two FORMAT CSV\n3\n"),
                   {"Content-Encoding": "gzip"})
    assert gzipped.status == 501 and gzipped.getheader("X-ClickHouse-Exception-Code") == "48"
    assert b"Content-Encoding: gzip" in gzipped.body  # type: ignore[attr-defined]
    counted = _raw(front, "POST", {}, b"SELECT count(), sum(a) FROM two")
    assert counted.body == b"2\t3\n"  # type: ignore[attr-defined]

    write_by_get = _raw(front, "GET", {"query": "CREATE TABLE nope (a UInt8) ENGINE = Memory"})
    assert write_by_get.status != 200
    assert b"readonly" in write_by_get.body.lower()  # type: ignore[attr-defined]
    write_by_head = _raw(front, "HEAD", {"query": "CREATE TABLE nope (a UInt8) ENGINE = Memory"})
    assert write_by_head.status != 200
    assert _raw(front, "POST", {}, b"EXISTS TABLE nope").body == b"0\n"  # type: ignore[attr-defined]


def test_query_settings_apply_per_query_and_set_is_forgotten(connect):
    one, other = connect(), connect()
    default = other.command("SELECT getSetting('max_block_size')")
    assert one.query("SELECT getSetting('max_block_size')",
                     settings={"max_block_size": 1234}).result_rows == [(1234,)]
    assert one.command("SELECT getSetting('max_block_size')") == default  # that query only
    one.command("SET max_block_size = 555")  # no session: forgotten at once
    assert one.command("SELECT getSetting('max_block_size')") == default
    assert other.command("SELECT getSetting('max_block_size')") == default
    with pytest.raises(DatabaseError, match=r"Unknown setting|UNKNOWN_SETTING"):
        other.query("SELECT 1", settings={"no_such_setting_here": 1})


def test_eight_threads_query_concurrently(connect, http_client: Client):
    http_client.command("CREATE TABLE series (n UInt64) ENGINE = MergeTree ORDER BY n")
    http_client.command("INSERT INTO series SELECT number FROM numbers(200000)")
    wrong: list[str] = []
    answered = [0] * 8
    clients = [connect() for _ in range(8)]

    def work(k: int) -> None:
        client = clients[k]
        try:
            for i in range(15):
                low = (k * 15 + i) * 1000
                got = client.query("SELECT count(), sum(n) FROM series WHERE n >= {low:UInt64}",
                                   parameters={"low": low}).result_rows[0]
                want = (200000 - low, sum(range(low, 200000)))
                if got != want:
                    wrong.append(f"thread {k}: {got} != {want}")
                answered[k] += 1
        except Exception as exc:  # collected and asserted below
            wrong.append(f"thread {k}: {exc!r}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not wrong
    assert answered == [15] * 8


def test_data_written_through_the_front_is_visible_to_a_new_client(front: StoreHttpServer,
                                                                    store_settings: Settings,
                                                                    connect):
    writer = open_store(store_settings)  # this process serves the front: open_store uses it
    assert isinstance(writer, HttpClient)
    writer.command("CREATE TABLE notes (k String) ENGINE = MergeTree ORDER BY k")
    writer.insert("notes", [["written-through-front"]], column_names=["k"])
    writer.close()
    served_before = front.requests_served
    reader = connect()
    assert reader.command("SELECT k FROM notes") == "written-through-front"
    assert front.requests_served > served_before


def test_streaming_insert_of_a_large_arrow_table(http_client: Client):
    http_client.command("CREATE TABLE big (n UInt64, s String) ENGINE = MergeTree ORDER BY n")
    n = 300_000
    table = pa.table({"n": pa.array(range(n), pa.uint64()),
                      "s": pa.array([f"row-{i}" for i in range(n)])})
    assert http_client.insert_arrow("big", table).written_rows == n
    assert http_client.query("SELECT count(), max(n), uniqExact(s) FROM big").result_rows == [
        (n, n - 1, n)
    ]


# --- open_store across processes ---------------------------------------------------------
def test_open_store_uses_the_front_of_another_process_then_the_path(store_settings: Settings,
                                                                     owners):
    proc, url = owners.start(serve=True)
    assert url.startswith("http://127.0.0.1:")
    assert lock_holder(store_settings.chdb_path) == proc.pid
    client = open_store(store_settings)
    assert isinstance(client, HttpClient)
    assert client.query("SELECT n, who FROM born").result_rows == [(1, "child")]
    client.insert("born", [[2, "parent"]], column_names=["n", "who"])
    client.close()

    owners.stop(proc)
    assert not (store_settings.data_dir / "store.url").exists()
    assert lock_holder(store_settings.chdb_path) is None
    with pytest.raises(StoreUnavailable, match="is the sink running"):
        open_store(store_settings, path_fallback=False)  # a dashboard must not grab the path
    direct = open_store(store_settings)  # nobody serves: the path itself
    try:
        assert not isinstance(direct, HttpClient)
        assert direct.query("SELECT n, who FROM born ORDER BY n").result_rows == [
            (1, "child"), (2, "parent")
        ]
    finally:
        direct.close()


def test_open_store_names_the_process_that_holds_the_path(store_settings: Settings, owners):
    proc, first = owners.start(serve=False)
    assert first == "holding"
    with pytest.raises(StoreUnavailable) as caught:
        open_store(store_settings)
    message = str(caught.value)
    assert f"pid {proc.pid}" in message and str(store_settings.chdb_path) in message
    assert "store.url" in message  # says where it looked for a front
    with pytest.raises(StoreUnavailable):  # the would-be owner is told too, not a chdb riddle
        open_store(store_settings, owner=True)
    owners.stop(proc)


def test_a_front_for_another_store_is_never_used(front: StoreHttpServer, tmp_path):
    stranger = load_settings(data_dir=tmp_path / "other", store_http_port=18999)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "store.url").write_text(front.url + "\n")
    assert find_store_front(stranger) is None
