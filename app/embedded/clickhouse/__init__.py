"""The embedded ClickHouse: chdb served over the ClickHouse HTTP interface.

Every Rearview process talks to it with clickhouse-connect exactly as to a real server
(``http://127.0.0.1:8123``). For notebooks and unit tests that want chdb in-process with
no server, clickhouse-connect itself accepts ``clickhouse_connect.get_client(dsn="chdb:///path")``
(its chdb backend), on a directory no endpoint is serving.

Entry points: :func:`app.embedded.clickhouse.server.serve` (blocks until SIGINT/SIGTERM),
:func:`app.embedded.clickhouse.server.create_app`, and ``python -m app.embedded.clickhouse``.
"""
