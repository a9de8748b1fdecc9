"""Pure parts of the embedded ClickHouse endpoint: statement splitting, codecs, protocol."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import lz4.frame
import pytest
from clickhouse_connect.driver.compression import get_compressor
from clickhouse_connect.driver.exceptions import error_code_from_header
from clickhouse_connect.driver.transform import extract_exception_with_tag
from hypothesis import given, settings
from hypothesis import strategies as st

from app.embedded.clickhouse.compression import (
    choose_response_encoding,
    request_decoder,
    response_encoder,
    zstd,
)
from app.embedded.clickhouse.connection import PooledConnection
from app.embedded.clickhouse.exceptions import QueryFailed
from app.embedded.clickhouse.protocol import (
    content_type,
    error_body,
    exception_block,
    http_status,
    parse_options,
)
from app.embedded.clickhouse.sessions import SessionStore
from app.embedded.clickhouse.statement import (
    InsertWithData,
    Statement,
    first_keyword,
    output_format,
    split_input,
)

FORMATS = frozenset({"Native", "JSON", "JSONEachRow", "TabSeparated", "Arrow", "CSV"})
BINARY = bytes(range(256)) * 4


# -- statement splitting ----------------------------------------------------------------


def test_insert_format_native_data_starts_after_the_newline() -> None:
    head = b"INSERT INTO db.events (`a`, b) FORMAT Native\n"
    split = split_input(head + BINARY, complete=False)
    assert split == InsertWithData("INSERT INTO db.events (`a`, b)", "Native", len(head))


def test_insert_with_settings_keeps_them_in_the_statement() -> None:
    buf = b'INSERT INTO t SETTINGS async_insert = 0 FORMAT JSONEachRow {"a": 1}'
    split = split_input(buf, complete=True)
    assert isinstance(split, InsertWithData)
    assert split.statement == "INSERT INTO t SETTINGS async_insert = 0"
    assert buf[split.data_offset :] == b'{"a": 1}'


def test_insert_values_data_is_everything_after_values() -> None:
    buf = b"insert into t values (1, 'a'), (2, 'FORMAT x')"
    split = split_input(buf, complete=True)
    assert split == InsertWithData("insert into t", "Values", buf.index(b"(1"))


def test_a_table_named_format_is_not_the_format_clause() -> None:
    split = split_input(b"INSERT INTO format FORMAT CSV\n1,2\n", complete=True)
    assert isinstance(split, InsertWithData)
    assert (split.statement, split.input_format) == ("INSERT INTO format", "CSV")


def test_format_inside_strings_comments_and_parentheses_is_ignored() -> None:
    buf = (
        b"INSERT INTO t (c) -- FORMAT Fake\n/* FORMAT Fake2 */ "
        b"SETTINGS x = 'FORMAT no' FORMAT TabSeparated\n1\n"
    )
    split = split_input(buf, complete=True)
    assert isinstance(split, InsertWithData)
    assert split.input_format == "TabSeparated"
    assert buf[split.data_offset :] == b"1\n"


@pytest.mark.parametrize(
    "buf",
    [
        b"INSERT INTO t SELECT * FROM s",
        b"INSERT INTO t (a) WITH 1 AS x SELECT x",
        b"INSERT INTO t FROM INFILE 'f.csv' FORMAT CSV",
        b"SELECT 1 FORMAT Native",
        b"  (SELECT 1)",
    ],
)
def test_statements_without_inline_data_are_whole_queries(buf: bytes) -> None:
    assert split_input(buf, complete=True) == Statement(buf.decode())
    assert split_input(buf, complete=False) is None  # a query needs the whole body


@pytest.mark.parametrize(
    "partial",
    [b"INSERT INTO t FORM", b"INSERT INTO t FORMAT Nat", b"INSERT INTO t FORMAT Native",
     b"INSERT INTO t FORMAT Native  ", b"INSERT INTO t (a, 'unterminated", b"INS"],
)  # fmt: skip
def test_a_head_cut_mid_token_asks_for_more(partial: bytes) -> None:
    assert split_input(partial, complete=False) is None


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(min_value=0, max_value=80), data=st.binary(max_size=64))
def test_split_is_the_same_whatever_the_chunking(cut: int, data: bytes) -> None:
    """Fed the first *cut* bytes, then everything: never a different answer."""
    whole = b"INSERT INTO events (a, b) SETTINGS x='y' FORMAT RowBinary\n" + data
    expected = split_input(whole, complete=True)
    early = split_input(whole[:cut], complete=False)
    assert early is None or early == expected
    assert isinstance(expected, InsertWithData)
    assert whole[expected.data_offset :] == data


def test_first_keyword() -> None:
    assert first_keyword(b"/* c */ -- x\n select 1", complete=False) == "SELECT"
    assert first_keyword(b"  ", complete=False) is None
    assert first_keyword(b"", complete=True) == ""


def test_output_format_is_the_top_level_clause_spelled_canonically() -> None:
    assert output_format("SELECT 1 FORMAT jsoneachrow", FORMATS) == "JSONEachRow"
    assert output_format("SELECT format FROM t", FORMATS) is None
    assert output_format("SELECT format('{}', 'x') AS s", FORMATS) is None
    assert output_format("SELECT (SELECT 1 FORMAT JSON) FORMAT CSV", FORMATS) == "CSV"
    assert output_format("SELECT 'FORMAT JSON'", FORMATS) is None


# -- request bodies and responses --------------------------------------------------------


def _feed(encoding: str, body: bytes, step: int) -> bytes:
    decoder = request_decoder(encoding)
    out = b"".join(decoder.feed(body[i : i + step]) for i in range(0, len(body), step))
    return out + decoder.finish()


@pytest.mark.parametrize("encoding", ["lz4", "zstd", "gzip"])
@pytest.mark.parametrize("step", [1, 7, 4096, 1 << 20])
def test_multi_frame_bodies_from_clickhouse_connect_decode_exactly(
    encoding: str, step: int
) -> None:
    blocks = [bytes([i]) * (1000 + 997 * i) + BINARY for i in range(5)]
    if encoding == "gzip":
        body = b"".join(gzip.compress(b) for b in blocks)  # several gzip members
    else:
        # clickhouse-connect compresses every insert block on its own: one frame each.
        compressor = get_compressor(encoding)
        body = b"".join(compressor.compress_block(b) for b in blocks)
    if step == 1 and encoding == "gzip":
        step = 3
    assert _feed(encoding, body, step) == b"".join(blocks)


def test_deflate_and_identity_bodies() -> None:
    assert _feed("deflate", zlib.compress(BINARY), 100) == BINARY
    assert _feed("", BINARY, 100) == BINARY


def test_a_truncated_or_corrupt_body_is_a_clickhouse_error() -> None:
    body = lz4.frame.compress(BINARY)
    with pytest.raises(QueryFailed) as truncated:
        _feed("lz4", body[:-5], 1 << 20)
    assert truncated.value.code == 271  # CANNOT_DECOMPRESS
    with pytest.raises(QueryFailed) as corrupt:
        _feed("zstd", b"not zstd at all", 1 << 20)
    assert corrupt.value.code == 271
    with pytest.raises(QueryFailed) as unknown:
        request_decoder("snappy")
    assert unknown.value.code == 89  # UNKNOWN_COMPRESSION_METHOD


@pytest.mark.parametrize("encoding", ["lz4", "zstd", "gzip", "deflate"])
def test_streamed_responses_are_one_stream_the_client_can_decode(encoding: str) -> None:
    encoder = response_encoder(encoding)
    chunks = [BINARY * (i + 1) for i in range(4)]
    body = b"".join(encoder.compress(c) for c in chunks) + encoder.finish()
    if encoding == "lz4":
        # clickhouse-connect reads lz4 responses with one LZ4FrameDecompressor
        decoded = lz4.frame.LZ4FrameDecompressor().decompress(body)
    elif encoding == "zstd":
        decoded = zstd.ZstdDecompressor().decompress(body)
    else:
        decoded = zlib.decompressobj(wbits=47).decompress(body)  # gzip or zlib header
    assert decoded == b"".join(chunks)


def test_response_encoding_follows_the_clients_order() -> None:
    assert choose_response_encoding("lz4,zstd,br,gzip,deflate") == "lz4"
    assert choose_response_encoding("br, gzip;q=0.8") == "gzip"
    assert choose_response_encoding("identity") is None
    assert choose_response_encoding(None) is None


# -- URL arguments, errors, headers ------------------------------------------------------


def test_url_arguments_are_sorted_into_params_settings_and_options() -> None:
    opts = parse_options(
        [
            ("query", "SELECT {x:String}"),
            ("param_x", "it's"),
            ("database", "rv"),
            ("max_threads", "2"),
            ("wait_end_of_query", "1"),
            ("session_id", "s1"),
            ("session_timeout", "5"),
            ("query_id", "q1"),
            ("client_protocol_version", "54405"),
        ],
        {},
    )
    assert opts.query == "SELECT {x:String}"
    assert opts.params == {"x": "it's"}
    assert opts.settings == {"max_threads": "2"}
    assert (opts.database, opts.session_id, opts.session_timeout_s) == ("rv", "s1", 5.0)
    assert opts.wait_end_of_query and opts.query_id == "q1"
    assert opts.default_format == "TabSeparated"


def test_headers_can_carry_database_and_default_format() -> None:
    opts = parse_options([], {"X-ClickHouse-Database": "rv", "X-ClickHouse-Format": "JSON"})
    assert (opts.database, opts.default_format) == ("rv", "JSON")


@pytest.mark.parametrize(
    ("args", "code"),
    [
        ([("bad-name", "1")], 115),
        ([("session_timeout", "0")], 374),
        ([("session_timeout", "abc")], 374),
        ([("compress", "1")], 48),
    ],
)
def test_bad_arguments_are_clickhouse_errors(args: list[tuple[str, str]], code: int) -> None:
    with pytest.raises(QueryFailed) as err:
        parse_options(args, {})
    assert err.value.code == code


def test_engine_errors_become_clickhouse_error_bodies() -> None:
    raw = RuntimeError(
        "Code: 60. DB::Exception: Unknown table expression identifier 'nope'. (UNKNOWN_TABLE) "
        "(version 26.9.2.1)"
    )
    error = QueryFailed.from_engine(raw)
    assert (error.code, error.name) == (60, "UNKNOWN_TABLE")
    body = error_body(error, "26.9.2.1").decode()
    assert body == (
        "Code: 60. DB::Exception: Unknown table expression identifier 'nope'. (UNKNOWN_TABLE) "
        "(version 26.9.2.1)\n"
    )
    assert http_status(60) == 404 and http_status(62) == 400 and http_status(395) == 500
    assert error_code_from_header(str(error.code)) == 60
    odd = QueryFailed.from_engine(RuntimeError("something without a code"))
    assert odd.code == 1002


def test_the_late_exception_marker_parses_with_clickhouse_connect() -> None:
    error = QueryFailed(395, "Value passed to 'throwIf' function is non-zero. (FUNCTION_THROW)")
    block = exception_block("a1b2c3d4", error, "26.9.2.1")
    message = extract_exception_with_tag(b"some rows\n" + block, "a1b2c3d4")
    assert message is not None
    assert message.startswith("Code: 395. DB::Exception: Value passed")


def test_content_types() -> None:
    assert content_type("Native") == "application/octet-stream"
    assert content_type("JSON") == "application/json; charset=UTF-8"
    assert content_type("TabSeparated").startswith("text/tab-separated-values")
    assert content_type(None).startswith("text/plain")


def test_sessions_expire_and_check_fails_for_unknown_ones() -> None:
    now = [100.0]
    store = SessionStore(clock=lambda: now[0])
    state = store.acquire("s", timeout_s=10, check=False)
    state.settings["max_threads"] = "1"
    store.release(state)
    now[0] += 9
    again = store.acquire("s", timeout_s=10, check=True)
    assert again.settings == {"max_threads": "1"}
    now[0] += 100  # a session in use never expires
    assert len(store) == 1
    store.release(again)
    now[0] += 10.5
    assert len(store) == 0
    with pytest.raises(QueryFailed) as err:
        store.acquire("s", timeout_s=10, check=True)
    assert err.value.code == 372


def test_a_session_in_use_is_locked() -> None:
    store = SessionStore()
    held = store.acquire("s", timeout_s=10, check=False)
    with pytest.raises(QueryFailed) as err:
        store.acquire("s", timeout_s=10, check=False)
    assert err.value.code == 373 and "locked by a concurrent client" in err.value.message
    store.release(held)
    store.release(store.acquire("s", timeout_s=10, check=False), close=True)
    assert len(store) == 0


# -- the pooled connection's handling of chdb (a recording stand-in for chdb) -----------


class FakeChdb:
    """Records calls; fails the ones named in *failures* with the given exception."""

    def __init__(self, failures: dict[str, Exception] | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.failures = failures or {}

    def _call(self, name: str, arg: Any = None) -> Any:
        self.calls.append((name, arg))
        if name in self.failures:
            raise self.failures[name]
        return FakeResult()

    def query(self, sql: str, fmt: str, params: Any = None) -> Any:
        return self._call("query", sql)

    def send_insert(self, statement: str, fmt: str) -> Any:
        return self._call("send_insert", statement)

    def insert_append(self, handle: Any, data: bytes) -> None:
        self._call("insert_append", len(data))

    def insert_done(self, handle: Any) -> Any:
        return self._call("insert_done")

    def insert_cancel(self, handle: Any) -> None:
        self._call("insert_cancel")

    def close(self) -> None:
        self._call("close")

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


class FakeResult:
    def rows_written(self) -> int:
        return 3

    def bytes_written(self) -> int:
        return 30

    def elapsed(self) -> float:
        return 0.001


def _connection(fake: FakeChdb) -> PooledConnection:
    conn = PooledConnection(lambda: fake, 1, {"implicit_select": "1"})
    return conn


def test_a_codeless_append_failure_is_ended_with_done_never_cancel() -> None:
    """chdb 4.4.0 aborts the process on insert_cancel after such a failure."""
    fake = FakeChdb({"insert_append": RuntimeError("streaming insert append failed")})
    conn = _connection(fake)
    handle = conn.begin_insert("INSERT INTO t", "Native")
    with pytest.raises(QueryFailed) as err:
        conn.append(handle, b"garbage")
    assert err.value.code == 117  # INCORRECT_DATA, not a codeless 1002
    conn.abort_insert(handle)
    assert fake.names() == ["send_insert", "insert_append", "insert_done"]
    assert not conn.poisoned and not conn.broken
    conn.abandon()


def test_an_append_failure_with_a_code_is_cancelled() -> None:
    fake = FakeChdb(
        {"insert_append": RuntimeError("Code: 33. DB::Exception: Cannot read all data")}
    )
    conn = _connection(fake)
    handle = conn.begin_insert("INSERT INTO t", "Native")
    with pytest.raises(QueryFailed) as err:
        conn.append(handle, b"x")
    assert err.value.code == 33
    conn.abort_insert(handle)
    conn.abort_insert(handle)  # idempotent
    assert fake.names() == ["send_insert", "insert_append", "insert_cancel"]
    conn.abandon()


def test_an_engine_message_with_binary_bytes_keeps_its_code() -> None:
    raw = b"Code: 27. DB::Exception: Cannot parse input: \xe6\x00 (CANNOT_PARSE)"
    failure = UnicodeDecodeError("utf-8", raw, 46, 47, "invalid continuation byte")
    conn = _connection(FakeChdb({"query": failure}))
    with pytest.raises(QueryFailed) as err:
        conn.query(b"SELECT 1", "Native", {})
    assert err.value.code == 27
    conn.abandon()


def test_prepare_sets_only_what_differs_and_resets_the_rest() -> None:
    fake = FakeChdb()
    conn = _connection(fake)
    conn.prepare("default", {"implicit_select": "1", "max_threads": "2"})
    conn.prepare("default", {"implicit_select": "1", "max_threads": "2"})  # nothing to do
    conn.prepare("rv", {"implicit_select": "1"})
    assert [sql for _, sql in fake.calls] == [
        "SET max_threads = '2'",
        "USE `rv`",
        "SET max_threads = DEFAULT",
    ]
    conn.abandon()


def test_a_failed_set_marks_the_connection_for_closing() -> None:
    conn = _connection(
        FakeChdb({"query": RuntimeError("Code: 115. DB::Exception: Unknown setting")})
    )
    with pytest.raises(QueryFailed) as err:
        conn.prepare("default", {"no_such_setting": "1"})
    assert err.value.code == 115 and conn.broken
    conn.abandon()
