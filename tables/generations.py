"""Table generations: a replay's tables beside the live ones, swapped in atomically.

A replay rebuilds a *target* (`TARGET_EVENTS`: the events table and every configured rollup in
one pass; or `rollup_target(name)`: one rollup table) into a new *generation* of its tables,
named ``<live>__gen<N>``, while the live pipeline keeps writing the live tables. Once the
generation is verified, `swap` exchanges each pair (``EXCHANGE TABLES live AND gen``), so the
live names hold the rebuilt data and the generation's names hold what it replaced.

Same DDL as the live tables
---------------------------
The events table's definition is the sum of the migrations (0001 creates it, 0004 adds the
dedup columns and indexes by ALTER, and a later migration may alter it again): rendering the
migration files for another name would mean rewriting ALTERs and skipping the views created
beside them. ``CREATE TABLE gen AS events`` copies the live table's definition as ClickHouse
holds it (columns, defaults, indexes, engine, keys): the migrations' result, written once.
A rollup's generation is created by `rollup_tables.create_statement` under the generation's
name: the definition as configured now (a table upgraded in place from before projects gets the
current sorting key back through a rebuild). A rollup just added to the configuration has no
live table yet: `create` creates it, empty, so that the swap has a pair.

Which data is where: table comments
-----------------------------------
Every generation table carries the comment ``rearview generation N``, and ``EXCHANGE`` moves a
table's comment with its data. The comments, not the control table, say which tables a swap
has already exchanged: a swap (or rollback) interrupted after some pairs is simply run again,
and exchanges only the pairs still to do. The ``generations`` control table records the
lifecycle (`Generation.state`) and when each swap happened:

``building`` -> ``verified`` -> ``live`` (swapped in) ; ``failed`` (a build given up).
A live generation's tables hold the data it replaced. When every table of a live generation has
been replaced by later swaps, it becomes ``retired``. `rollback` exchanges a live generation's
pairs back (it becomes ``retired``, its tables holding its own data again, and the generations
it had replaced are ``live`` again). `gc` drops the tables of retired and failed generations
and, but for the newest *keep*, the previous data held by live ones (after which they cannot be
rolled back); a generation whose tables are dropped is ``dropped``.

Atomicity
---------
``EXCHANGE TABLES`` is atomic per pair only in an Atomic database (the default engine of
``CREATE DATABASE``, used by `rearview migrate` and by the embedded endpoint; chdb's own
``default`` database is not one): a query sees the old table or the new one, never neither.
`swap` and `rollback` refuse any other engine. Several pairs in one statement are not atomic
together, so a query joining two tables could see one swapped and not the other; the live
store does not write while the replay holds its fence (tables/fence.py), which is what keeps
the pairs consistent with each other for the pipeline. One replay at a time: the generation
number is max + 1, and a second `create` racing for it fails on the table that exists.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from clickhouse_connect.driver.client import Client

from core.exceptions import RearviewError
from tables import rollup_tables
from tables.rollups import RollupSpec

TARGET_EVENTS = "events"
EVENTS_TABLE = "events"
CONTROL_TABLE = "generations"
STATES = ("building", "verified", "live", "retired", "failed", "dropped")
_ROLLUP_PREFIX = "rollup:"
_COMMENT = "rearview generation {n}"
_COMMENT_RE = re.compile(r"^rearview generation (\d+)$")


class GenerationError(RearviewError):
    pass


def rollup_target(name: str) -> str:
    return f"{_ROLLUP_PREFIX}{name}"


def generation_table(live: str, number: int) -> str:
    return f"{live}__gen{number}"


@dataclass(frozen=True)
class Generation:
    number: int
    targets: tuple[str, ...]
    tables: dict[str, str]  # live table name -> this generation's table name
    state: str  # building | verified | live | retired | failed | dropped
    created_at: datetime
    swapped_at: datetime | None
    note: str = ""
    revision: int = 0


def _now() -> datetime:
    """Now, to the millisecond the control table keeps."""
    now = datetime.now(tz=UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _specs_by_name(rollups: Sequence[RollupSpec]) -> dict[str, RollupSpec]:
    return {spec.name: spec for spec in rollups}


def _tables_of(rollups: Sequence[RollupSpec], targets: Sequence[str]) -> list[tuple[str, RollupSpec | None]]:
    """(live table, spec or None for the events table) of *targets*, each table once."""
    if not targets:
        raise GenerationError("a generation needs at least one target")
    specs = _specs_by_name(rollups)
    out: dict[str, RollupSpec | None] = {}
    for target in targets:
        if target == TARGET_EVENTS:
            out[EVENTS_TABLE] = None
            for spec in rollups:
                out[rollup_tables.table_name(spec)] = spec
        elif target.startswith(_ROLLUP_PREFIX):
            name = target[len(_ROLLUP_PREFIX):]
            if name not in specs:
                raise GenerationError(
                    f"target {target!r}: no rollup named {name!r} is configured"
                    f" (configured: {', '.join(sorted(specs)) or 'none'})")
            out[rollup_tables.table_name(specs[name])] = specs[name]
        else:
            raise GenerationError(f"unknown target {target!r}: use 'events' or 'rollup:<name>'")
    return list(out.items())


def database_engine(client: Client) -> str:
    rows = client.query("SELECT engine FROM system.databases WHERE name = currentDatabase()").result_rows
    return str(rows[0][0]) if rows else ""


def check_atomic(client: Client) -> None:
    """Refuse a database whose engine cannot exchange tables atomically."""
    engine = database_engine(client)
    if engine != "Atomic":
        database = client.query("SELECT currentDatabase()").result_rows[0][0]
        raise GenerationError(
            f"database {database!r} uses the {engine or 'unknown'} engine: swapping tables needs"
            " an Atomic database (create it with CREATE DATABASE, whose default engine is Atomic)")


def _comments(client: Client, names: Sequence[str]) -> dict[str, str]:
    rows = client.query(
        "SELECT name, comment FROM system.tables WHERE database = currentDatabase()"
        " AND name IN {names:Array(String)}", parameters={"names": list(names)}).result_rows
    return {str(name): str(comment) for name, comment in rows}


def _generation_of(comment: str) -> int | None:
    match = _COMMENT_RE.match(comment)
    return int(match.group(1)) if match else None


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def create(client: Client, rollups: Sequence[RollupSpec], targets: Sequence[str],
           legacy_project: str) -> Generation:
    """A new generation of *targets*' tables, empty, recorded as ``building``.

    *rollups* are the configured rollups (an `events` target rebuilds them all); a target
    rollup without a live table gets one, empty (created as `rearview migrate` would, rows
    written before projects reading *legacy_project*)."""
    pairs = _tables_of(rollups, targets)
    check_atomic(client)
    specs = [spec for _, spec in pairs if spec is not None]
    if specs:
        rollup_tables.ensure_tables(client, specs, legacy_project)
    number = _next_number(client)
    comment = _literal(_COMMENT.format(n=number))
    tables: dict[str, str] = {}
    for live, spec in pairs:
        gen = generation_table(live, number)
        if spec is None:
            client.command(f"CREATE TABLE {_quote(gen)} AS {_quote(live)} COMMENT {comment}")
        else:
            statement = rollup_tables.create_statement(spec).replace(
                "CREATE TABLE IF NOT EXISTS " + _quote(live), "CREATE TABLE " + _quote(gen), 1)
            if _quote(gen) not in statement:
                raise GenerationError(f"cannot render the DDL of {live} for {gen}")
            client.command(f"{statement}\nCOMMENT {comment}")
        tables[live] = gen
    created = Generation(number, tuple(targets), tables, "building", _now(), None)
    _record(client, created)
    return created


def _next_number(client: Client) -> int:
    rows = client.query(f"SELECT max(number), count() FROM {CONTROL_TABLE}").result_rows
    return int(rows[0][0]) + 1 if rows and rows[0][1] else 1


def _record(client: Client, gen: Generation) -> None:
    client.insert(
        CONTROL_TABLE,
        [[gen.number, gen.revision, list(gen.targets), gen.tables, gen.state, gen.note, gen.created_at,
          gen.swapped_at, _now()]],
        column_names=["number", "revision", "targets", "tables", "state", "note", "created_at",
                      "swapped_at", "updated_at"])


def _update(client: Client, gen: Generation, **changes: Any) -> Generation:
    fields = {**gen.__dict__, **changes, "revision": gen.revision + 1}
    new = Generation(**fields)
    _record(client, new)
    return new


_SELECT = (f"SELECT number, revision, targets, tables, state, note, created_at, swapped_at"
           f" FROM {CONTROL_TABLE} FINAL")


def _row(row: Sequence[Any]) -> Generation:
    number, revision, targets, tables, state, note, created_at, swapped_at = row
    return Generation(int(number), tuple(str(t) for t in targets), {str(k): str(v) for k, v in tables.items()},
                      str(state), _utc(created_at), None if swapped_at is None else _utc(swapped_at),
                      str(note), int(revision))


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def get(client: Client, number: int) -> Generation:
    rows = client.query(_SELECT + " WHERE number = {n:UInt32}", parameters={"n": number}).result_rows
    if not rows:
        raise GenerationError(f"no generation {number}")
    return _row(rows[0])


def all_generations(client: Client) -> list[Generation]:
    return [_row(r) for r in client.query(_SELECT + " ORDER BY number").result_rows]


def mark(client: Client, number: int, state: str, note: str = "") -> None:
    """Set a generation's state (the replay: ``verified`` or ``failed``); the swap states
    (``live``, ``retired``, ``dropped``) are set by `swap`, `rollback` and `gc` themselves."""
    if state not in STATES:
        raise GenerationError(f"unknown generation state {state!r} (one of {', '.join(STATES)})")
    gen = get(client, number)
    _update(client, gen, state=state, note=note or gen.note)


def _exchange(client: Client, gen: Generation, into_live: bool) -> None:
    """Exchange the pairs of *gen* so that its own data ends in the live tables (*into_live*)
    or back in its generation tables. Pairs already where they should be (an interrupted run)
    are left alone; a pair holding neither is refused, naming what it holds."""
    names = [*gen.tables, *gen.tables.values()]
    comments = _comments(client, names)
    missing = [n for n in names if n not in comments]
    if missing:
        raise GenerationError(f"generation {gen.number}: tables missing: {', '.join(missing)}")
    for live, table in gen.tables.items():
        target, other = (live, table) if into_live else (table, live)
        if _generation_of(comments[target]) == gen.number:
            continue
        if _generation_of(comments[other]) != gen.number:
            raise GenerationError(
                f"generation {gen.number}: neither {live} nor {table} holds its data"
                f" ({live}: {comments[live] or 'no generation'}, {table}: {comments[table] or 'no generation'})")
        client.command(f"EXCHANGE TABLES {_quote(live)} AND {_quote(table)}")


def _held_by(client: Client, live_tables: Sequence[str]) -> dict[str, int | None]:
    """The generation whose data each live table holds (None: built before any generation)."""
    return {name: _generation_of(c) for name, c in _comments(client, list(live_tables)).items()}


def swap(client: Client, number: int) -> None:
    """Put a verified generation live: ``EXCHANGE TABLES`` per pair (atomic per table).

    The generation becomes ``live``; a live generation all of whose tables it replaced becomes
    ``retired``. After an interruption, run it again: it exchanges only what is left."""
    check_atomic(client)
    gen = get(client, number)
    if gen.state not in ("verified", "live"):
        raise GenerationError(f"generation {number} is {gen.state}: only a verified generation can be swapped in")
    _exchange(client, gen, into_live=True)
    if gen.state == "live":
        return
    _update(client, gen, state="live", swapped_at=_now())
    for other in all_generations(client):
        if other.number != number and other.state == "live":
            held = _held_by(client, list(other.tables))
            if all((owner or 0) > other.number for owner in held.values()):
                _update(client, other, state="retired")


def rollback(client: Client, number: int) -> None:
    """Undo the swap of live generation *number*: exchange its pairs back. It becomes
    ``retired`` (its tables hold its own data again) and the generations whose data comes back
    to the live tables are ``live`` again.

    Refused when a later generation was swapped into one of its tables (roll that one back
    first) or when `gc` dropped the tables holding what it replaced."""
    check_atomic(client)
    gen = get(client, number)
    if gen.state != "live":
        raise GenerationError(f"generation {number} is {gen.state}: only a live generation can be rolled back")
    comments = _comments(client, [*gen.tables, *gen.tables.values()])
    dropped = [t for t in gen.tables.values() if t not in comments]
    if dropped:
        raise GenerationError(f"generation {number} cannot be rolled back: gc dropped {', '.join(dropped)}")
    later = sorted({owner for owner in _held_by(client, list(gen.tables)).values()
                    if owner is not None and owner > number})
    if later:
        raise GenerationError(
            f"generation {number} was partly replaced by generation {later[-1]}: roll that back first")
    _exchange(client, gen, into_live=False)
    _update(client, gen, state="retired", note=f"rolled back at {_now().isoformat()}")
    restored = set(_held_by(client, list(gen.tables)).values())
    for other in all_generations(client):
        if other.number in restored and other.state in ("retired", "dropped"):
            _update(client, other, state="live")


def gc(client: Client, keep: int = 0) -> list[str]:
    """Drop the tables no live name can come back to: those of retired and failed generations,
    and the previous data held by live generations but the newest *keep* of them. Returns the
    dropped table names."""
    if keep < 0:
        raise GenerationError("keep must be 0 or more")
    gens = all_generations(client)
    live = sorted((g for g in gens if g.state == "live"), key=lambda g: g.swapped_at or g.created_at, reverse=True)
    victims = [g for g in gens if g.state in ("retired", "failed")] + live[keep:]
    dropped: list[str] = []
    for gen in victims:
        comments = _comments(client, list(gen.tables.values()))
        for table in gen.tables.values():
            if table in comments:
                client.command(f"DROP TABLE IF EXISTS {_quote(table)} SYNC")
                dropped.append(table)
        if gen.state != "live":
            _update(client, gen, state="dropped")
        elif comments:
            _update(client, gen, note=f"previous tables dropped by gc at {_now().isoformat()}")
    return dropped
