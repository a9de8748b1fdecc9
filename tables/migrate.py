"""Numbered, forward-only ClickHouse migrations, recorded in ClickHouse itself.

Each file ``tables/migrations/NNNN_name.sql`` holds one or more statements separated by ``;``
at the end of a line. A migration that has been applied is never edited: its checksum is
recorded, and a mismatch stops `rearview migrate` with an error naming the file. New DDL is a
new file with the next number. Statements use unqualified table names: they run in the
configured database, which the runner creates.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from clickhouse_connect.driver.client import Client

from core.exceptions import RearviewError

log = structlog.get_logger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LEDGER = "schema_migrations"


class MigrationError(RearviewError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        body = "\n".join(
            line for line in self.sql.splitlines() if not line.strip().startswith("--")
        )
        return [s.strip() for s in re.split(r";\s*(?:\n|$)", body) if s.strip()]


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"migration numbers must run 1..N without gaps, found {versions}")
    return found


def applied(client: Client) -> dict[int, str]:
    client.command(
        f"CREATE TABLE IF NOT EXISTS {_LEDGER} (version UInt32, name String, checksum String,"
        " applied_at DateTime64(3, 'UTC') DEFAULT now64(3))"
        " ENGINE = ReplacingMergeTree ORDER BY version"
    )
    rows = client.query(f"SELECT version, checksum FROM {_LEDGER} FINAL").result_rows
    return {int(v): str(c) for v, c in rows}


def migrate(
    client: Client,
    migrations: list[Migration] | None = None,
    on_apply: Callable[[Migration], None] | None = None,
) -> list[Migration]:
    """Apply every migration not yet recorded, in order. Returns the ones applied now."""
    migrations = discover() if migrations is None else migrations
    done = applied(client)
    for m in migrations:
        if m.version in done and done[m.version] != m.checksum:
            raise MigrationError(
                f"migration {m.version:04d}_{m.name}.sql changed after it was applied;"
                " migrations are forward-only: add a new file instead"
            )
    new = [m for m in migrations if m.version not in done]
    for m in new:
        for statement in m.statements():
            client.command(statement)
        client.insert(_LEDGER, [[m.version, m.name, m.checksum]], column_names=["version", "name", "checksum"])
        log.info("migration_applied", version=m.version, name=m.name)
        if on_apply:
            on_apply(m)
    return new
