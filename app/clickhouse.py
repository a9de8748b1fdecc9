"""ClickHouse clients from settings: the same code for the embedded endpoint and a server."""

from __future__ import annotations

import time
from urllib.parse import urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import OperationalError

from app.settings import ClickHouseSettings
from core.exceptions import ConfigurationError
from tables import logs
from tables.logs import LogBases


def connect(settings: ClickHouseSettings, database: str | None = None, **kwargs: object) -> Client:
    """A clickhouse-connect client for ``settings.url`` (http or https), in *database*.

    The database defaults to the configured one; pass ``database="default"`` to reach a server
    before `rearview migrate` created it.
    """
    # No HTTP session unless asked for: clickhouse-connect refuses a second query on a client
    # while one runs in its session ("concurrent queries within the same session"), and a
    # ClickHouse server locks a session per query, so one client shared by the API's request
    # threads would answer concurrent requests with errors. Nothing here relies on sessions.
    kwargs.setdefault("autogenerate_session_id", False)
    url = urlparse(settings.url)
    if url.scheme not in {"http", "https"}:
        raise ConfigurationError(
            f"clickhouse.url must be http(s)://host:port, got {settings.url!r}"
        )
    return clickhouse_connect.get_client(
        host=url.hostname or "127.0.0.1",
        port=url.port or (8443 if url.scheme == "https" else 8123),
        secure=url.scheme == "https",
        username=settings.username,
        password=settings.password.get_secret_value(),
        database=database or settings.database,
        compress="lz4",
        **kwargs,
    )


def ensure_database(settings: ClickHouseSettings) -> None:
    client = connect(settings, database="default")
    try:
        client.command(f"CREATE DATABASE IF NOT EXISTS `{settings.database}`")
    finally:
        client.close()


def _has_table(settings: ClickHouseSettings, table: str) -> bool:
    """Whether the configured database holds *table*, asked from ``default`` (a client in a
    database that does not exist yet fails as it connects)."""
    client = connect(settings, database="default")
    try:
        return bool(client.command(
            "SELECT count() FROM system.tables WHERE database = {db:String} AND name = {t:String}",
            parameters={"db": settings.database, "t": table}))
    finally:
        client.close()


def log_bases(settings: ClickHouseSettings, wait_s: float = 60.0) -> LogBases:
    """The current log epoch's bases (tables/logs.py), waiting up to *wait_s* for ClickHouse:
    a process that stores or reads positions must not start with the wrong ones."""
    deadline = time.monotonic() + wait_s
    delay = 0.2
    while True:
        try:
            if not _has_table(settings, "log_epochs"):
                return logs.NO_EPOCH  # before `rearview migrate`: no epoch was begun
            client = connect(settings)
            try:
                return logs.load_bases(client)
            finally:
                client.close()
        except OperationalError:
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
