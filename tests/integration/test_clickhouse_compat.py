"""ClickHouse server compatibility of the embedded endpoint, the way clickhouse-connect uses one.

In the spirit of clickhouse-connect's own integration suite, written here: sessions and their
temporary tables, the protocol-version negotiation and timezones, bound parameters in every
kind of statement, external data, compression, streaming, progress headers and a client that
goes away mid-answer. One endpoint process serves the module.
"""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
import uuid
import zoneinfo
from collections.abc import Iterator
from typing import Any

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError
from clickhouse_connect.driver.external import ExternalData

from tests.integration.test_clickhouse_endpoint import HOST, Endpoint, start_endpoint

pytestmark = pytest.mark.integration

CHICAGO = zoneinfo.ZoneInfo("America/Chicago")
PROTOCOL_VERSION_WITH_LOW_CARD = 54405


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    tmp = tmp_path_factory.mktemp("clickhouse-compat")
    ep = start_endpoint(tmp / "data", tmp / "clickhouse.log")
    try:
        yield ep
    finally:
        ep.process.stop()


def new_client(endpoint: Endpoint, **kwargs: Any) -> Client:
    return clickhouse_connect.get_client(host=HOST, port=endpoint.port, **kwargs)


@pytest.fixture
def client(endpoint: Endpoint) -> Iterator[Client]:
    c = new_client(endpoint, compress="lz4")
    try:
        yield c
    finally:
        c.close()


def table_name() -> str:
    return f"t_{uuid.uuid4().hex[:8]}"


# -- sessions -------------------------------------------------------------------------------


def test_temporary_tables_belong_to_their_session(endpoint: Endpoint) -> None:
    alice = new_client(endpoint, session_id=f"alice-{uuid.uuid4()}")
    bob = new_client(endpoint, session_id=f"bob-{uuid.uuid4()}")
    anonymous = new_client(endpoint, autogenerate_session_id=False)
    alice.command("CREATE TEMPORARY TABLE scratch (x UInt32)")
    alice.command("INSERT INTO scratch VALUES (1), (2)")
    for _ in range(20):  # every request of the session sees it, whichever engine connection
        assert alice.command("SELECT sum(x) FROM scratch") == 3
    with pytest.raises(DatabaseError, match="UNKNOWN_TABLE|Unknown table"):
        bob.query("SELECT * FROM scratch")
    with pytest.raises(DatabaseError, match="UNKNOWN_TABLE|Unknown table"):
        anonymous.query("SELECT * FROM scratch")
    bob.command("CREATE TEMPORARY TABLE scratch (y String)")  # the same name, another table
    bob.command("INSERT INTO scratch VALUES ('b')")
    assert bob.command("SELECT y FROM scratch") == "b"
    assert alice.command("SELECT sum(x) FROM scratch") == 3


def test_a_temporary_table_without_a_session_is_refused(endpoint: Endpoint) -> None:
    anonymous = new_client(endpoint, autogenerate_session_id=False)
    with pytest.raises(DatabaseError, match="THERE_IS_NO_SESSION"):
        anonymous.command("CREATE TEMPORARY TABLE nope (x UInt8)")


def test_session_settings_and_database_survive_and_stay_private(endpoint: Endpoint) -> None:
    first = new_client(endpoint, session_id=f"s-{uuid.uuid4()}")
    other = new_client(endpoint, session_id=f"s-{uuid.uuid4()}")
    db = table_name()
    first.command(f"CREATE DATABASE {db}")
    first.command("SET max_threads = 3")
    first.command(f"USE {db}")
    assert first.command("SELECT getSetting('max_threads')") == 3
    assert first.command("SELECT currentDatabase()") == db
    assert other.command("SELECT getSetting('max_threads')") != 3
    assert other.command("SELECT currentDatabase()") == "default"
    # A URL setting lasts for its request only.
    assert first.command("SELECT getSetting('max_threads')", settings={"max_threads": 2}) == 2
    assert first.command("SELECT getSetting('max_threads')") == 3


def test_sessions_expire_with_their_timeout(endpoint: Endpoint) -> None:
    session = f"short-{uuid.uuid4()}"
    params = {"session_id": session, "session_timeout": "1"}
    assert endpoint.http(params, b"CREATE TEMPORARY TABLE gone (x UInt8)")[0] == 200
    assert endpoint.http(params, b"SELECT count() FROM gone")[2] == b"0\n"
    time.sleep(2.5)
    status, headers, body = endpoint.http({**params, "session_check": "1"}, b"SELECT 1")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (404, "372") or status == 500
    assert b"SESSION_NOT_FOUND" in body
    status, _, body = endpoint.http(params, b"SELECT count() FROM gone")  # a new session
    assert status == 404 and b"UNKNOWN_TABLE" in body


def test_close_session_ends_it(endpoint: Endpoint) -> None:
    params = {"session_id": f"c-{uuid.uuid4()}"}
    endpoint.http(params, b"CREATE TEMPORARY TABLE once (x UInt8)")
    assert endpoint.http({**params, "close_session": "1"}, b"SELECT 1")[0] == 200
    assert b"UNKNOWN_TABLE" in endpoint.http(params, b"SELECT * FROM once")[2]


def test_concurrent_use_of_one_session_is_refused_with_373(endpoint: Endpoint) -> None:
    params = {"session_id": f"busy-{uuid.uuid4()}"}
    results: list[tuple[int, dict[str, str], bytes]] = []
    slow = threading.Thread(
        target=lambda: results.append(endpoint.http(params, b"SELECT sleep(2)")), daemon=True
    )
    slow.start()
    time.sleep(0.5)
    status, headers, body = endpoint.http(params, b"SELECT 1")
    slow.join(10)
    assert headers["X-ClickHouse-Exception-Code"] == "373"
    assert b"SESSION_IS_LOCKED" in body and status >= 400
    assert results and results[0][0] == 200
    assert endpoint.http(params, b"SELECT 1")[2] == b"1\n"  # free again once released


# -- protocol version and timezones ---------------------------------------------------------


def test_the_protocol_version_probe_succeeds(client: Client) -> None:
    assert client.protocol_version == PROTOCOL_VERSION_WITH_LOW_CARD


def test_datetime_columns_come_back_in_their_zone(client: Client) -> None:
    result = client.query(
        "SELECT toDateTime('2024-03-10 01:30:00', 'America/Chicago') AS chicago, "
        "toDateTime('2024-03-10 01:30:00', 'UTC') AS utc, "
        "toDateTime64('2024-03-10 01:30:00.123', 3, 'America/Chicago') AS chicago64, "
        "'label' AS before_it, toDateTime('2024-07-01 12:00:00', 'Asia/Tokyo') AS tokyo"
    )
    chicago, utc, chicago64, _, tokyo = result.result_rows[0]
    assert chicago == dt.datetime(2024, 3, 10, 1, 30, tzinfo=CHICAGO)
    assert chicago.tzinfo is not None and chicago.utcoffset() == dt.timedelta(hours=-6)
    assert chicago64.tzinfo is not None
    assert tokyo.utcoffset() == dt.timedelta(hours=9)
    assert utc.replace(tzinfo=dt.UTC) == dt.datetime(2024, 3, 10, 1, 30, tzinfo=dt.UTC)
    assert result.column_types[0].name == "DateTime('America/Chicago')"


def test_zoned_columns_from_a_table_across_many_blocks(endpoint: Endpoint, client: Client) -> None:
    name = table_name()
    client.command(
        f"CREATE TABLE {name} (label String, at DateTime('America/Chicago'), n UInt32) "
        "ENGINE = MergeTree ORDER BY n"
    )
    client.command(
        f"INSERT INTO {name} SELECT toString(number), toDateTime(1700000000 + number, "
        "'America/Chicago'), number FROM numbers(200000)"
    )
    rows = client.query(
        f"SELECT label, at FROM {name} ORDER BY n", settings={"max_block_size": 10000}
    ).result_rows
    assert len(rows) == 200_000
    assert all(at.tzinfo is not None for _, at in rows[::997])
    assert rows[-1][1] == dt.datetime.fromtimestamp(1700000000 + 199_999, CHICAGO)
    # A session whose temporary table is the source: DESCRIBE runs on the session itself.
    session = new_client(endpoint, session_id=f"tz-{uuid.uuid4()}")
    session.command("CREATE TEMPORARY TABLE zoned (at DateTime('Asia/Tokyo'))")
    session.command("INSERT INTO zoned VALUES (1700000000)")
    (at,) = session.query("SELECT at FROM zoned").result_rows[0]
    assert at.utcoffset() == dt.timedelta(hours=9)


# -- bound parameters -----------------------------------------------------------------------


def test_parameters_in_every_kind_of_statement(client: Client) -> None:
    name = table_name()
    client.command(
        f"CREATE TABLE {name} (id UInt32, label String) ENGINE = MergeTree ORDER BY id "
        "SETTINGS index_granularity = {g:UInt32}",
        parameters={"g": 1024},
    )
    client.command(
        f"INSERT INTO {name} VALUES ({{id:UInt32}}, {{label:String}})",
        parameters={"id": 7, "label": "o'reilly"},
    )
    client.command(
        f"INSERT INTO {name} SELECT number, {{label:String}} FROM numbers({{n:UInt32}})",
        parameters={"label": "bulk", "n": 3},
    )
    assert client.query(
        f"SELECT label FROM {name} WHERE id = {{id:UInt32}}", parameters={"id": 7}
    ).result_rows == [("o'reilly",)]
    client.command(
        f"ALTER TABLE {name} DELETE WHERE label = {{l:String}}", parameters={"l": "bulk"}
    )
    assert client.command(f"SELECT count() FROM {name}") == 1
    # Server-side binding through the client's %(name)s style too.
    assert client.query(f"SELECT count() FROM {name} WHERE id = %(id)s", {"id": 7}).result_rows == [
        (1,)
    ]


def test_sqlalchemy_style_insert_with_server_side_parameters(endpoint: Endpoint) -> None:
    client = new_client(endpoint)
    name = table_name()
    client.command(f"CREATE TABLE {name} (id UInt32, at DateTime) ENGINE = Memory")
    status, _, body = endpoint.http(
        {"param_id": "42", "param_at": "2024-01-02 03:04:05"},
        f"INSERT INTO {name} (id, at) VALUES ({{id:UInt32}}, {{at:DateTime}})".encode(),
    )
    assert status == 200, body
    assert client.query(f"SELECT id, toString(at) FROM {name}").result_rows == [
        (42, "2024-01-02 03:04:05")
    ]


# -- external data --------------------------------------------------------------------------


def test_external_data_joins_a_query(client: Client) -> None:
    ids = ExternalData(
        file_name="ids", data=b"1\tone\n2\ttwo\n5\tfive\n", structure="id UInt32, name String"
    )
    rows = client.query(
        "SELECT n.number, ids.name FROM numbers(10) AS n INNER JOIN ids ON n.number = ids.id "
        "ORDER BY n.number",
        external_data=ids,
    ).result_rows
    assert rows == [(1, "one"), (2, "two"), (5, "five")]
    csv = ExternalData(file_name="vals", data=b"3\n4\n", fmt="CSV", types="UInt8")
    assert client.query("SELECT sum(_1) FROM vals", external_data=csv).result_rows == [(7,)]
    with pytest.raises(DatabaseError, match="UNKNOWN_TABLE|Unknown table"):
        client.query("SELECT * FROM vals")  # it lived for that query only


def test_external_data_in_a_session_leaves_no_table(endpoint: Endpoint) -> None:
    client = new_client(endpoint, session_id=f"ext-{uuid.uuid4()}")
    ids = ExternalData(file_name="ids", data=b"1\n", structure="id UInt32")
    assert client.query("SELECT count() FROM ids", external_data=ids).result_rows == [(1,)]
    assert client.query("SELECT count() FROM ids", external_data=ids).result_rows == [(1,)]
    with pytest.raises(DatabaseError, match="UNKNOWN_TABLE|Unknown table"):
        client.query("SELECT * FROM ids")


# -- compression and streaming --------------------------------------------------------------


@pytest.mark.parametrize("compress", ["lz4", "zstd", "gzip", False])
def test_inserts_and_streams_under_every_compression(endpoint: Endpoint, compress: Any) -> None:
    client = new_client(endpoint, compress=compress)
    name = table_name()
    client.command(f"CREATE TABLE {name} (n UInt64, s String) ENGINE = MergeTree ORDER BY n")
    rows = [[i, f"row {i}"] for i in range(50_000)]
    client.insert(name, rows, column_names=["n", "s"])
    total = 0
    with client.query_row_block_stream(
        f"SELECT n, s FROM {name} ORDER BY n", settings={"max_block_size": 4096}
    ) as stream:
        for block in stream:
            total += len(block)
            assert block[0][1] == f"row {block[0][0]}"
    assert total == 50_000


def test_clickhouse_block_compression_is_refused_by_name(endpoint: Endpoint) -> None:
    status, headers, body = endpoint.http({"compress": "1"}, b"SELECT 1")
    assert status == 501 and headers["X-ClickHouse-Exception-Code"] == "48"
    assert b"compress=1" in body and b"README" in body


def test_progress_headers_when_asked(endpoint: Endpoint) -> None:
    status, headers, _ = endpoint.http(
        {"send_progress_in_http_headers": "1"}, b"SELECT count() FROM numbers(100000)"
    )
    assert status == 200
    progress = headers["X-ClickHouse-Progress"]
    assert '"read_rows":"100000"' in progress
    assert "X-ClickHouse-Progress" not in endpoint.http(params={}, body=b"SELECT 1")[1]


def test_a_client_that_goes_away_mid_stream_costs_one_log_line(endpoint: Endpoint) -> None:
    query = b"SELECT number, toString(number) FROM numbers(50000000) FORMAT TSV"
    request = (
        f"POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(query)}\r\n\r\n".encode() + query
    )
    with socket.create_connection((HOST, endpoint.port)) as sock:
        sock.sendall(request)
        assert sock.recv(65536)  # the answer has started
    time.sleep(1.5)
    assert new_client(endpoint).command("SELECT 1") == 1  # still serving
    log = endpoint.log_path.read_text()
    assert "clickhouse_client_gone" in log
    assert "Traceback" not in log and "Error handling request" not in log
