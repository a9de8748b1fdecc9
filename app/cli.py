"""`rearview`: one command, a subcommand per process and per operation.

Settings come from the environment (RV_*, see app/settings.py); options override them.
Errors are one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import click

from app.settings import Settings
from core.exceptions import RearviewError


def _settings(ctx: click.Context) -> Settings:
    return ctx.ensure_object(dict)["settings"]  # type: ignore[no-any-return]


def _with(settings: Settings, section: str, **changes: Any) -> Settings:
    """A copy of *settings* with fields of one section changed (None values ignored)."""
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        return settings
    updated = getattr(settings, section).model_copy(update=changes)
    return settings.model_copy(update={section: updated})


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
@click.pass_context
def cli(ctx: click.Context, log_level: str | None) -> None:
    """Rearview: event analytics on Kafka, Faust and ClickHouse."""
    from app.logs import configure

    settings = Settings()
    if log_level:
        settings = _with(settings, "log", level=log_level)
    configure(settings.log)
    ctx.ensure_object(dict)["settings"] = settings


@cli.command()
@click.option("--host", default=None, help="Listen address [127.0.0.1].")
@click.option("--port", type=int, default=None, help="Listen port [9092].")
@click.pass_context
def broker(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Run the embedded Kafka broker (Tansu, in memory) and create the pipeline's topics."""
    from app.embedded.broker import serve

    s = _with(_settings(ctx), "broker", host=host, port=port)
    serve(s.broker.host, s.broker.port, s.kafka)


@cli.command()
@click.option("--host", default=None, help="Listen address [127.0.0.1].")
@click.option("--port", type=int, default=None, help="Listen port [8081].")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Where schemas are stored durably [.rearview/registry].")
@click.pass_context
def registry(ctx: click.Context, host: str | None, port: int | None, data_dir: Path | None) -> None:
    """Run the embedded schema registry (Confluent Schema Registry API)."""
    from app.embedded.registry.server import serve

    s = _with(_settings(ctx), "registry", host=host, port=port, data_dir=data_dir)
    serve(s.registry.host, s.registry.port, s.registry.data_dir)


@cli.command()
@click.option("--host", default=None, help="Listen address [127.0.0.1].")
@click.option("--port", type=int, default=None, help="Listen port [8123].")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="chdb data path [.rearview/clickhouse].")
@click.pass_context
def clickhouse(ctx: click.Context, host: str | None, port: int | None, data_dir: Path | None) -> None:
    """Run the embedded ClickHouse (chdb) behind the ClickHouse HTTP interface."""
    from app.embedded.clickhouse.server import serve

    s = _with(_settings(ctx), "clickhouse", host=host, port=port, data_dir=data_dir)
    serve(s.clickhouse.host, s.clickhouse.port, s.clickhouse.data_dir)


@cli.group()
def schemas() -> None:
    """Register Avro schemas, or check a change against the registry (a dry run for CI).

    Subjects follow TopicRecordNameStrategy: <topic>-<record full name>, e.g.
    events.raw-io.rearview.events.Purchase. Without FILES, the schemas Rearview ships.
    """


def _schema_files(files: tuple[Path, ...]) -> list[Any]:
    from agents.schema_registry import SchemaFile

    return [SchemaFile.load(f) for f in files] if files else SchemaFile.bundled()


@schemas.command("register")
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--topic", default=None, help="Topic the subjects belong to [events.raw].")
@click.pass_context
def schemas_register(ctx: click.Context, files: tuple[Path, ...], topic: str | None) -> None:
    """Register schemas (idempotent); refuse an incompatible change with the registry's reason."""
    from agents.schema_registry import register_file

    s = _settings(ctx)
    for schema in _schema_files(files):
        subject, schema_id, version = register_file(s.registry.url, topic or s.kafka.topics.raw, schema)
        click.echo(f"{subject}: id {schema_id}, version {version}")


@schemas.command("check")
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--topic", default=None, help="Topic the subjects belong to [events.raw].")
@click.pass_context
def schemas_check(ctx: click.Context, files: tuple[Path, ...], topic: str | None) -> None:
    """Dry run: would these schemas be accepted? Exit 1 naming each incompatibility."""
    from agents.schema_registry import check_file

    s = _settings(ctx)
    failed = False
    for schema in _schema_files(files):
        subject, problems = check_file(s.registry.url, topic or s.kafka.topics.raw, schema)
        if problems:
            failed = True
            click.echo(f"{subject}: INCOMPATIBLE")
            for problem in problems:
                click.echo(f"  {problem}")
        else:
            click.echo(f"{subject}: compatible")
    if failed:
        sys.exit(1)


@cli.group()
def dlq() -> None:
    """Dead letters: counts, listing, one letter in full, and redrive through validation."""


def _dlq_filters(reason: str | None, stage: str | None, error_class: str | None,
                 since: str | None, project: str | None = None) -> Any:
    from app.dlq import Filters
    from app.query import parse_time

    return Filters(reason, stage, error_class, parse_time("--since", since),
                   (project,) if project is not None else None)


_filter_options = [
    click.option("--project", default=None,
                 help="Only this project's letters ('' for those whose project cannot be read)."),
    click.option("--reason", default=None, help="Only letters whose reason contains this text."),
    click.option("--stage", default=None, help="decode, validate or sink."),
    click.option("--error-class", default=None, help="e.g. FramingError, ResolutionError."),
    click.option("--since", default=None, help="ISO-8601 time or epoch ms."),
]


def _with_filters(f: Any) -> Any:
    for option in reversed(_filter_options):
        f = option(f)
    return f


@dlq.command("stats")
@_with_filters
@click.pass_context
def dlq_stats(ctx: click.Context, project: str | None, reason: str | None, stage: str | None,
              error_class: str | None, since: str | None) -> None:
    """Dead letters by hour, stage and error class."""
    from app.clickhouse import connect
    from app.dlq import stats

    client = connect(_settings(ctx).clickhouse)
    try:
        rows = stats(client, _dlq_filters(reason, stage, error_class, since, project))
    finally:
        client.close()
    click.echo(f"{'hour':<17} {'stage':<9} {'error class':<20} {'letters':>8}  example reason")
    for hour, st, cls, n, example in rows:
        click.echo(f"{hour:%Y-%m-%d %H:%M} {st:<9} {cls:<20} {n:>8}  {example[:60]}")
    click.echo(f"{sum(r[3] for r in rows)} letters")


@dlq.command("list")
@_with_filters
@click.option("--limit", type=int, default=50, show_default=True)
@click.pass_context
def dlq_list(ctx: click.Context, project: str | None, reason: str | None, stage: str | None,
             error_class: str | None, since: str | None, limit: int) -> None:
    """Letters not redriven yet, oldest first (LETTER is PARTITION:OFFSET in the DLQ topic)."""
    from app.clickhouse import connect
    from app.dlq import pending

    client = connect(_settings(ctx).clickhouse)
    try:
        rows = pending(client, _dlq_filters(reason, stage, error_class, since, project), limit)
    finally:
        client.close()
    for r in rows:
        index = "" if r["event_index"] < 0 else f"[{r['event_index']}]"
        click.echo(f"{r['dlq_partition']}:{r['dlq_offset']:<8} {r['failed_at']:%Y-%m-%d %H:%M:%S}"
                   f" {r['stage']:<9} {r['error_class']:<18} raw {r['source_partition']}:{r['source_offset']}{index}"
                   f" attempt {r['attempt']}  {r['reason'][:80]}")


@dlq.command("show")
@click.argument("letter")
@click.pass_context
def dlq_show(ctx: click.Context, letter: str) -> None:
    """One letter in full: headers, redacted preview, redrive status."""
    from app.clickhouse import connect
    from app.dlq import parse_position, show

    partition, offset = parse_position(letter)
    client = connect(_settings(ctx).clickhouse)
    try:
        row = show(client, partition, offset)
    finally:
        client.close()
    if row is None:
        raise click.ClickException(f"no letter {letter} in the dlq table")
    for key, value in row.items():
        click.echo(f"{key:>16}: {value}")


def admin_projects(ctx: click.Context, key: str | None, project: str | None) -> tuple[str, ...] | None:
    """The projects an operation may touch, from its admin *key*: the key's project and what
    no project can be told for (''). None (everything, or *project* alone) when keys are off."""
    s = _settings(ctx)
    if not s.auth.required:
        return (project,) if project is not None else None
    from app.auth import Keyring

    keyring = Keyring()
    keyring.set(_key_store(ctx).list_keys())
    principal = keyring.check(key)
    if principal is None or principal.kind != "admin":
        raise click.ClickException(
            "an admin key is required (--key or RV_ADMIN_KEY; `rearview keys create --kind admin`)"
            if principal is None else f"a {principal.kind} key cannot do this: use an admin key")
    allowed = principal.letter_projects()
    assert allowed is not None
    if project is not None and project not in allowed:
        raise click.ClickException(f"this admin key is project {principal.project_id!r}'s, not {project!r}'s")
    return (project,) if project is not None else allowed


_admin_key = click.option("--key", envvar="RV_ADMIN_KEY", default=None,
                          help="An admin key (env RV_ADMIN_KEY).")


@dlq.command("redrive")
@_with_filters
@_admin_key
@click.option("--dry-run", is_flag=True, help="Only say which letters would be sent.")
@click.pass_context
def dlq_redrive(ctx: click.Context, project: str | None, reason: str | None, stage: str | None,
                error_class: str | None, since: str | None, key: str | None, dry_run: bool) -> None:
    """Send matching letters back through validation (after a schema or rule fix), once each.
    Needs an admin key: it redrives that project's letters (and those of no readable project)."""
    from dataclasses import replace

    from rich.progress import Progress

    from app.clickhouse import connect
    from app.dlq import pending, redrive

    s = _settings(ctx)
    allowed = admin_projects(ctx, key, project)
    client = connect(s.clickhouse)
    try:
        filters = replace(_dlq_filters(reason, stage, error_class, since), projects=allowed)
        letters = pending(client, filters)
        if dry_run or not letters:
            click.echo(f"{len(letters)} letters would be redriven" if dry_run else "no letters to redrive")
            return
        with Progress(disable=not sys.stderr.isatty(), transient=True) as progress:
            task = progress.add_task("redriving", total=len(letters))
            result = redrive(client, s.kafka.bootstrap_servers, s.kafka.topics.dlq, s.kafka.topics.raw,
                             letters, lambda n: progress.advance(task, n),
                             producer_config=s.kafka.producer_config)
    finally:
        client.close()
    click.echo(f"redrove {result.sent} letters to {s.kafka.topics.raw}")
    problems = [(pos, f"refused by {s.kafka.topics.raw}: {why}") for pos, why in result.refused]
    problems += result.unreadable
    if problems:
        for (p, o), why in problems[:10]:
            click.echo(f"  not redriven: {p}:{o} {why}", err=True)
        raise click.ClickException(f"{len(problems)} letters could not be redriven; they stay pending")


@cli.group()
def archive() -> None:
    """The raw archive: every events.raw record as Parquet files (docs/archive.md)."""


@archive.command("run")
@click.option("--url", default=None, help="Archive folder or URL (file://, s3://) [archive.url].")
@click.pass_context
def archive_run(ctx: click.Context, url: str | None) -> None:
    """Archive events.raw until stopped: a file per partition at the roll thresholds."""
    from app.archive import run

    run(_with(_settings(ctx), "archive", url=url))


@archive.command("status")
@click.option("--url", default=None, help="Archive folder or URL [archive.url].")
@click.option("--format", "output", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.pass_context
def archive_status(ctx: click.Context, url: str | None, output: str) -> None:
    """Per partition: archived offsets, files, bytes, and lag behind the consumer groups."""
    from app.archive import status

    status(_with(_settings(ctx), "archive", url=url), output)


@cli.group()
def epochs() -> None:
    """Log epochs: positions that continue when the broker begins a new log (docs/archive.md)."""


@epochs.command("status")
@click.pass_context
def epochs_status(ctx: click.Context) -> None:
    """Every log epoch: when it began and its bases (position = base + broker offset)."""
    from app.clickhouse import connect
    from tables.logs import epochs as list_epochs

    client = connect(_settings(ctx).clickhouse)
    try:
        found = list_epochs(client)
    finally:
        client.close()
    if not found:
        click.echo("no log epoch: one log, positions are the broker's offsets")
    for bases, began in found:
        click.echo(f"{began:%Y-%m-%d %H:%M:%S} UTC  {bases.describe()}")


@epochs.command("begin")
@_admin_key
@click.pass_context
def epochs_begin(ctx: click.Context, key: str | None) -> None:
    """Begin a new epoch after the topics were emptied or created again (stop the workers and
    the archiver first: they read the bases when they start). `rearview up` does this itself."""
    admin_projects(ctx, key, None)  # every project's positions move: an operator's work
    from app.archive import begin_log_epoch

    bases = begin_log_epoch(_settings(ctx))
    click.echo(f"began {bases.describe()}")
    click.echo("start the workers and the archiver again: they read the bases when they start")


@cli.command()
@click.pass_context
def topics(ctx: click.Context) -> None:
    """Create the pipeline's topics on the configured Kafka (existing ones are kept)."""
    from app.embedded.broker import ensure_topics, pipeline_topics

    s = _settings(ctx)
    specs = pipeline_topics(s.kafka)
    ensure_topics(s.kafka.bootstrap_servers, specs)
    for t in specs:
        click.echo(f"{t.name}: {t.partitions} partitions")


@cli.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Apply the numbered ClickHouse migrations from tables/migrations."""
    from app.clickhouse import connect, ensure_database
    from tables.migrate import migrate as run_migrations
    from tables.rollup_tables import ensure_tables

    s = _settings(ctx)
    ensure_database(s.clickhouse)
    client = connect(s.clickhouse)
    try:
        applied = run_migrations(
            client, on_apply=lambda m: click.echo(f"applied {m.version:04d}_{m.name}")
        )
        tables = ensure_tables(client, s.aggregate.rollups, legacy_project=s.project_id)
        mixed = _projects_stored(client) if tables.upgraded else []
    finally:
        client.close()
    for table in tables.created:
        click.echo(f"created rollup table {table}")
    for table in tables.upgraded:
        click.echo(f"upgraded rollup table {table}: partials are kept per project; the rows"
                   f" stored before are project {s.project_id!r}'s")
    if len(mixed) > 1:
        click.echo(f"warning: events of several projects are stored ({', '.join(mixed[:5])}"
                   f"{', ...' if len(mixed) > 5 else ''}): rollup rows written before this upgrade"
                   " may mix them; `rearview verify` shows which windows, rebuild those by replay",
                   err=True)
    if not applied and not tables.created and not tables.upgraded:
        click.echo(f"database {s.clickhouse.database} is up to date")


def _projects_stored(client: Any) -> list[str]:
    """Up to 6 of the projects with stored events (only whether there are several matters)."""
    rows = client.query("SELECT DISTINCT project_id FROM events LIMIT 6").result_rows
    return sorted(str(r[0]) for r in rows)


# --- projects and keys -------------------------------------------------------------------------


def _key_store(ctx: click.Context) -> Any:
    from app.auth import KeyStore
    from app.clickhouse import connect

    s = _settings(ctx)
    return KeyStore(connect(s.clickhouse), s.validation.project_id_pattern,
                    s.validation.max_project_id_length)


def _auth_call(action: Callable[[], Any]) -> Any:
    from app.auth import AuthError

    try:
        return action()
    except AuthError as exc:
        raise click.ClickException(str(exc)) from None


@cli.group()
def projects() -> None:
    """Projects: each event belongs to one, each key speaks for one."""


@projects.command("create")
@click.argument("project_id")
@click.option("--name", default="", help="A human name [the id].")
@click.pass_context
def projects_create(ctx: click.Context, project_id: str, name: str) -> None:
    """Create a project (then `rearview keys create --project PROJECT_ID`)."""
    project = _auth_call(lambda: _key_store(ctx).create_project(project_id, name))
    click.echo(f"created project {project.project_id} ({project.name})")


@projects.command("list")
@click.pass_context
def projects_list(ctx: click.Context) -> None:
    """Every project, with its number of active keys."""
    store = _key_store(ctx)
    active: dict[str, int] = {}
    for key in store.list_keys():
        active[key.project_id] = active.get(key.project_id, 0) + key.active
    click.echo(f"{'project':<24} {'name':<28} {'active keys':>11}  created")
    for p in store.projects():
        click.echo(f"{p.project_id:<24} {p.name[:28]:<28} {active.get(p.project_id, 0):>11}"
                   f"  {p.created_at:%Y-%m-%d %H:%M}")


@cli.group()
def keys() -> None:
    """API keys: write (send events), read (queries, dashboard), admin (read + operations)."""


@keys.command("create")
@click.option("--project", required=True, help="The project the key speaks for.")
@click.option("--kind", type=click.Choice(["write", "read", "admin"]), required=True)
@click.option("--name", default="", help="What the key is for (shown in `keys list`).")
@click.pass_context
def keys_create(ctx: click.Context, project: str, kind: str, name: str) -> None:
    """Create a key and print it: it is shown this once (only its hash is stored)."""
    record, key = _auth_call(lambda: _key_store(ctx).create_key(project, kind, name))  # type: ignore[arg-type]
    click.echo(key)
    click.echo(f"{record.kind} key {record.key_id} of project {record.project_id}: store it now,"
               " it cannot be shown again", err=True)


@keys.command("list")
@click.option("--project", default=None, help="Only this project's keys.")
@click.pass_context
def keys_list(ctx: click.Context, project: str | None) -> None:
    """Keys by their public id (never the secret), kind and state."""
    click.echo(f"{'key id':<14} {'project':<20} {'kind':<6} {'state':<8} {'created':<17} name")
    for k in _key_store(ctx).list_keys(project):
        state = "active" if k.active else "revoked"
        click.echo(f"{k.key_id:<14} {k.project_id[:20]:<20} {k.kind:<6} {state:<8}"
                   f" {k.created_at:%Y-%m-%d %H:%M} {k.name}")


@keys.command("revoke")
@click.argument("key_id")
@click.pass_context
def keys_revoke(ctx: click.Context, key_id: str) -> None:
    """Revoke a key (by its id or the whole key): every API refuses it within seconds."""
    key = _auth_call(lambda: _key_store(ctx).revoke(key_id))
    click.echo(f"revoked {key.kind} key {key.key_id} of project {key.project_id}")


@cli.command()
@click.option("--show", type=int, default=20, show_default=True, help="Cells to print per rollup.")
@click.option("--project", default=None, help="Verify this project only [every project].")
@click.pass_context
def verify(ctx: click.Context, show: int, project: str | None) -> None:
    """Check every rollup against a GROUP BY over the raw events, project by project.

    Exit 0: exact. Exit 2: incomplete (windows miss events: not applied yet, or to rebuild by
    replay). Exit 1: differs (a rollup counts more than the raw events: a bug).
    """
    from app.clickhouse import connect
    from app.verify import EXIT_CODES, overall, projects
    from app.verify import verify as run_verify

    s = _settings(ctx)
    client = connect(s.clickhouse)
    try:
        reports = run_verify(client, s.aggregate.rollups, project)
    finally:
        client.close()
    covered = projects(reports)
    if not covered:
        click.echo("nothing to verify: no events and no rollup rows")
    # One project (the usual deployment): the rollups alone; several: grouped by project.
    grouped = len(covered) > 1 or project is not None
    indent = "  " if grouped else ""
    for name in covered:
        mine = [r for r in reports if r.project_id == name]
        if grouped:
            click.echo(f"project {name}: {overall(mine)}")
        for r in mine:
            line = (f"{indent}{r.rollup}: {r.verdict}: {r.cells} cells, {r.rollup_events} of"
                    f" {r.raw_events} raw events")
            if r.missing:
                line += f", {len(r.missing)} cells miss {r.missing_events} events"
            if r.excess:
                line += f", {len(r.excess)} cells count {sum(d.rollup_count - d.raw_count for d in r.excess)} too many"
            if r.max_uniques_error is not None:
                line += f", uniques max error {r.max_uniques_error:.2%} over {r.estimating_cells} estimated cells"
            click.echo(line)
            for d in (r.excess + r.missing)[:show]:
                click.echo(f"{indent}  {d.window_start:%Y-%m-%d %H:%M} {'/'.join(d.dims)}: rollup {d.rollup_count},"
                           f" raw {d.raw_count}")
    verdict = overall(reports)
    click.echo(verdict)
    sys.exit(EXIT_CODES[verdict])


@cli.group()
def replay() -> None:
    """Rebuild tables into a new generation from events.raw (Kafka or the archive), verify, swap."""


@replay.command("start")
@_admin_key
@click.argument("targets", nargs=-1, required=True)
@click.option("--source", type=click.Choice(["kafka", "archive", "auto"]), default="auto", show_default=True,
              help="auto: the archive up to where Kafka's log begins, then Kafka.")
@click.option("--from", "from_time", default=None, help="ISO-8601 time or epoch ms (planned, see --dry-run).")
@click.option("--offsets", default=None, help="p:start-stop,... of events.raw (planned, see --dry-run).")
@click.option("--rate", type=float, default=0.0, show_default=True, help="Events/s at most; 0: no cap.")
@click.option("--archive", "archive_url", default=None, help="Raw archive URL [archive.url].")
@click.option("--dry-run", is_flag=True, help="Print the plan and exit.")
@click.pass_context
def replay_start(ctx: click.Context, targets: tuple[str, ...], source: str, from_time: str | None,
                 offsets: str | None, rate: float, archive_url: str | None, dry_run: bool,
                 key: str | None) -> None:
    """Rebuild TARGETS: events, rollups, or rollup:<name> (several)."""
    admin_projects(ctx, key, None)  # replay rebuilds every project's tables: an operator's work
    from app import replay as rp
    from app.replay.console import job_lines, progress_bar

    s = _settings(ctx)
    request = rp.Request(targets, source, from_time, offsets, rate)
    archive = rp.archive_of(s, archive_url)
    if dry_run:
        plan = rp.start(s, request, dry_run=True, archive=archive)
        assert isinstance(plan, rp.Plan)
        click.echo("\n".join(plan.describe()))
        return
    with progress_bar(None) as bar:
        job = rp.start(s, request, archive=archive, advance=bar.advance,
                       on_plan=lambda plan: bar.total(plan.estimated_events))
    assert isinstance(job, rp.Job)
    click.echo("\n".join(job_lines(job)))
    if job.status != "swapped":
        raise click.ClickException(f"job {job.job_id} not swapped: {job.error or job.status}")


@replay.command("resume")
@_admin_key
@click.argument("job_id")
@click.option("--rate", type=float, default=None, help="Events/s at most; 0: no cap [as started].")
@click.option("--archive", "archive_url", default=None, help="Raw archive URL [archive.url].")
@click.pass_context
def replay_resume(ctx: click.Context, job_id: str, rate: float | None, archive_url: str | None,
                  key: str | None) -> None:
    """Continue JOB_ID from its committed positions (after a crash or a kill)."""
    admin_projects(ctx, key, None)  # replay rebuilds every project's tables: an operator's work
    from app import replay as rp
    from app.replay.console import job_lines, progress_bar

    s = _settings(ctx)
    with progress_bar(None, "resuming") as bar:
        job = rp.resume(s, job_id, archive=rp.archive_of(s, archive_url), advance=bar.advance, rate=rate)
    click.echo("\n".join(job_lines(job)))
    if job.status != "swapped":
        raise click.ClickException(f"job {job.job_id} not swapped: {job.error or job.status}")


@replay.command("status")
@click.pass_context
def replay_status(ctx: click.Context) -> None:
    """Every replay job: targets, generation, state, progress per partition, rate."""
    from app import replay as rp
    from app.replay.console import job_lines

    found = rp.status(_settings(ctx))
    if not found:
        click.echo("no replay jobs")
    for job in found:
        click.echo("\n".join(job_lines(job)))


@replay.command("cancel")
@_admin_key
@click.argument("job_id")
@click.pass_context
def replay_cancel(ctx: click.Context, job_id: str, key: str | None) -> None:
    """Give up an unfinished job (its generation is marked failed; `gc` drops it)."""
    admin_projects(ctx, key, None)  # replay rebuilds every project's tables: an operator's work
    from app import replay as rp

    job = rp.cancel(_settings(ctx), job_id)
    click.echo(f"{job.job_id} cancelled")


@replay.command("rollback")
@_admin_key
@click.argument("generation", type=int)
@click.pass_context
def replay_rollback(ctx: click.Context, generation: int, key: str | None) -> None:
    """Swap GENERATION out again: the tables it replaced become live (under a fence)."""
    admin_projects(ctx, key, None)  # replay rebuilds every project's tables: an operator's work
    from app import replay as rp

    rp.rollback(_settings(ctx), generation)
    click.echo(f"generation {generation} rolled back")


@replay.command("gc")
@_admin_key
@click.option("--keep", type=int, default=0, show_default=True, help="Retired generations to keep.")
@click.pass_context
def replay_gc(ctx: click.Context, keep: int, key: str | None) -> None:
    """Drop the tables of retired generations."""
    admin_projects(ctx, key, None)  # replay rebuilds every project's tables: an operator's work
    from app import replay as rp

    dropped = rp.gc(_settings(ctx), keep)
    click.echo("\n".join(f"dropped {t}" for t in dropped) or "nothing to drop")


@cli.command()
@click.option("--host", default=None, help="Address of the worker's status page [127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port of the worker's status page [6066].")
@click.pass_context
def worker(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Run the Faust worker: validate events.raw, store events.clean into ClickHouse."""
    from app.worker import run

    s = _settings(ctx)
    run(s, host or "127.0.0.1", port or s.worker.web_port)


@cli.command()
@click.option("--host", default=None, help="Listen address [127.0.0.1].")
@click.option("--port", type=int, default=None, help="Listen port [8000].")
@click.option("--grpc-port", type=int, default=None, help="gRPC collector port; 0: off [50051].")
@click.pass_context
def api(ctx: click.Context, host: str | None, port: int | None, grpc_port: int | None) -> None:
    """Run the collector (HTTP and gRPC), the query API and the dashboard."""
    from app.api import serve

    s = _with(_settings(ctx), "api", host=host, port=port, grpc_port=grpc_port)
    serve(s, s.api.host, s.api.port)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address every service binds.")
@click.option("--port", type=int, default=None, help="Port of the API and dashboard [8000].")
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path(".rearview"),
              show_default=True, help="Where the registry, ClickHouse and logs keep their files.")
@click.option("--demo/--no-demo", default=False, help="Also send steady demo traffic.")
@click.option("--demo-rate", type=float, default=50.0, show_default=True, help="Demo events/s.")
@click.option("--free-ports", is_flag=True, help="Pick free ports for every service.")
@click.pass_context
def up(ctx: click.Context, host: str, port: int | None, data_dir: Path, demo: bool,
       demo_rate: float, free_ports: bool) -> None:
    """Start the whole stack, wait until it is healthy, print its URLs; Ctrl-C stops it all."""
    from app.up import Stack

    stack = Stack(_settings(ctx), host, data_dir, api_port=port, free_ports=free_ports)
    sys.exit(stack.run(demo_rate=demo_rate if demo else None))


@cli.command()
@click.option("--count", type=int, default=10_000, show_default=True, help="Events to send; 0 sends forever.")
@click.option("--rate", type=float, default=0.0, show_default=True, help="Events/s; 0 is as fast as possible.")
@click.option("--users", type=int, default=1000, show_default=True, help="Size of the user population.")
@click.option("--seed", type=int, default=None, help="Random seed, for repeatable traffic.")
@click.option("--target", type=click.Choice(["http", "kafka"]), default="http", show_default=True,
              help="The collector over HTTP, or EventBatch messages straight to Kafka.")
@click.option("--url", default=None, help="Collector URL [http://127.0.0.1:8000].")
@click.option("--batch-size", type=int, default=500, show_default=True, help="Events per request or message.")
@click.option("--key", envvar="RV_WRITE_KEY", default=None,
              help="A write key for the collector (env RV_WRITE_KEY); its project gets the events.")
@click.option("--project", default=None,
              help="--target kafka: the project of the events [the project_id setting].")
@click.pass_context
def generate(ctx: click.Context, count: int, rate: float, users: int, seed: int | None,
             target: str, url: str | None, batch_size: int, key: str | None,
             project: str | None) -> None:
    """Send synthetic, realistic events (sessions, a signup funnel, countries, devices)."""
    import asyncio

    from rich.progress import Progress

    import schemas
    from agents.schema_registry import register
    from app.generate import EventGenerator, send_http, send_kafka

    s = _settings(ctx)
    events = EventGenerator(users, seed).events()
    with Progress(disable=count == 0 or not sys.stderr.isatty(), transient=True) as progress:
        task = progress.add_task("sending events", total=count or None)

        def advance(n: int) -> None:
            progress.advance(task, n)

        if target == "http":
            base = url or f"http://{s.api.host}:{s.api.port}"
            sent = asyncio.run(send_http(base, events, count, rate, batch_size, advance, key))
        else:
            topic = s.kafka.topics.raw
            schema_id = register(s.registry.url, topic, schemas.EVENT_BATCH)
            sent = send_kafka(s.kafka.bootstrap_servers, topic, schema_id, events, count, rate,
                              batch_size, advance, project or s.project_id)
    click.echo(f"sent {sent} events")


# --- rearview query ----------------------------------------------------------------------------

# Which flags each kind takes, and the request field each one fills.
_QUERY_FLAGS: dict[str, tuple[str, ...]] = {
    "timeseries": ("--event", "--metric", "--interval"),
    "breakdown": ("--event", "--by", "--metric", "--interval", "--limit"),
    "funnel": ("--event", "--by", "--limit"),
    "retention": ("--event", "--interval"),
    "uniques": ("--event",),
}


def _names(values: Sequence[str]) -> list[str]:
    """Repeated flags, each possibly a comma-separated list (no event name, dimension or metric
    holds a comma)."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def query_body_from_flags(kind: str | None = None, events: Sequence[str] = (),
                          by: Sequence[str] = (), metrics: Sequence[str] = (),
                          interval: str | None = None, date_range: str | None = None,
                          timezone: str | None = None, limit: int | None = None,
                          source: str | None = None) -> dict[str, Any]:
    """The POST /v1/query body that `rearview query`'s flags stand for.

    The kind defaults to ``breakdown`` when dimensions are given (``--by``), else
    ``timeseries``. ``--event`` is the series of a time series, the events counted by a
    breakdown or uniques, the steps of a funnel, and the start (then the return) event of a
    retention; ``--by`` is a funnel's breakdown; ``--interval`` a retention's period. A range
    ``FROM,TO`` is an absolute range. Only the fields of given flags are set: the request's
    defaults are the query layer's. A flag the kind does not take is a BadQuery naming it;
    everything else is left to `app.query.request.parse`.
    """
    from app.query.errors import BadQuery
    from app.query.request import KINDS

    kind = kind or ("breakdown" if by else "timeseries")
    if kind not in KINDS:
        raise BadQuery("--kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    events, by, metrics = _names(events), _names(by), _names(metrics)
    given = {"--event": events, "--by": by, "--metric": metrics, "--interval": interval,
             "--limit": limit}
    for flag, value in given.items():
        if value not in (None, []) and flag not in _QUERY_FLAGS[kind]:
            raise BadQuery(flag, f"a {kind} query does not take {flag}; give the JSON body for"
                                 " anything the flags do not cover")
    body: dict[str, Any] = {"kind": kind}
    if kind == "funnel":
        body["steps"] = events
        if len(by) > 1:
            raise BadQuery("--by", "a funnel breaks down by one dimension")
        if by:
            body["breakdown"] = by[0]
    elif kind == "retention":
        if not events or len(events) > 2:
            raise BadQuery("--event", "a retention takes the start event, then optionally the"
                                      " return event: -e signup [-e purchase]")
        body["start_event"] = events[0]
        if len(events) == 2:
            body["return_event"] = events[1]
        if interval is not None:
            body["period"] = interval
    else:
        if events:
            body["events"] = events
        if kind == "breakdown":
            if not by:
                raise BadQuery("--by", "a breakdown needs 1 to 3 dimensions: --by country")
            body["dimensions"] = by
    if metrics:
        body["metrics"] = metrics
    if interval is not None and kind in ("timeseries", "breakdown"):
        body["interval"] = interval
    if limit is not None:
        body["limit"] = limit
    if date_range is not None:
        parts = [p.strip() for p in date_range.split(",")]
        body["date_range"] = parts if len(parts) == 2 else date_range
    if timezone is not None:
        body["timezone"] = timezone
    if source is not None:
        body["source"] = source
    return body


def query_body_from_text(text: str | bytes) -> Any:
    """The JSON document of a query given as BODY, on stdin or in a file; BadQuery if none."""
    import orjson

    from app.query.errors import BadQuery

    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise BadQuery("", f"the query is not valid JSON: {exc}") from None


def format_cell(value: Any) -> str:
    """A value of an answer row as table text: null as an em dash, floats to 4 decimals."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.3g}"
        return text.rstrip("0").rstrip(".") if "." in text and "e" not in text else text
    return str(value)


def meta_line(answer: dict[str, Any]) -> str:
    """The table's footer: time, rows, groups, exactness and the resolved range."""
    meta = answer["meta"]
    parts = [f"{meta['elapsed_ms']:g} ms", f"{meta['rows']} rows"]
    if "total_groups" in meta:
        truncated = ", the rest in $other" if meta.get("truncated") else ""
        parts.append(f"{meta['total_groups']} groups{truncated}")
    how = [str(meta["method"])] if "method" in meta else []
    if "lg_k" in meta:
        how.append(f"lg_k {meta['lg_k']}")
    if "standard_error" in meta:
        how.append(f"±{meta['standard_error']:.2%}")
    exactness = "approximate" if meta.get("approximate") else "exact"
    parts.append(exactness + (f" ({', '.join(how)})" if how else ""))
    date_range = answer["query"].get("date_range") or {}
    if "from" in date_range and "to" in date_range:
        parts.append(f"{date_range['from']} → {date_range['to']}")
    return " · ".join(parts)


def answer_title(answer: dict[str, Any]) -> str:
    return f"{answer['query']['kind']} · source {answer['source']}"


def answer_table(answer: dict[str, Any]) -> Any:
    """A rich Table of *answer*'s rows: columns in answer order, numbers right-aligned, every
    value plain text (never markup)."""
    from rich.table import Table
    from rich.text import Text

    rows: list[dict[str, Any]] = answer["rows"]
    table = Table()
    for column in answer["columns"]:
        numeric = any(isinstance(r.get(column), int | float) and not isinstance(r.get(column), bool)
                      for r in rows)
        table.add_column(Text(column), justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        table.add_row(*(Text(format_cell(row.get(c))) for c in answer["columns"]))
    return table


def print_answer(answer: dict[str, Any]) -> None:
    """The title (kind, source), the table, and the meta line under it."""
    from rich.console import Console
    from rich.text import Text

    console = Console()
    if not console.is_terminal:  # a pipe or a file gets whole rows, however wide
        console = Console(width=100_000)
    console.print(Text(answer_title(answer), style="bold"), soft_wrap=True)
    console.print(answer_table(answer))
    console.print(Text(meta_line(answer), style="dim"), soft_wrap=True)


def _query_fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _connect_error(url: str, exc: BaseException) -> str:
    """One line for a failed connection: unreachable (refused, unresolvable, timed out), or
    reached but failing (ClickHouse's own error)."""
    import re

    from clickhouse_connect.driver.exceptions import OperationalError

    text = str(exc)
    if isinstance(exc, OperationalError | OSError):
        errno = re.search(r"\[Errno -?\d+\][^\"')]*", text)
        reason = errno.group(0).strip() if errno else text.splitlines()[0][:200] if text else ""
        return f"ClickHouse at {url} is unreachable ({reason or type(exc).__name__}); is it running?"
    server = re.search(r"Code: \d+\. .*", text)
    return f"ClickHouse at {url} failed: {(server.group(0) if server else text)[:300]}"


@cli.command()
@click.argument("body", required=False)
@click.option("--file", "-f", "file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Read the JSON query from this file.")
@click.option("--kind", "-k", default=None,
              help="timeseries, breakdown, funnel, retention or uniques"
                   " [breakdown with --by, else timeseries].")
@click.option("--event", "-e", "events", multiple=True,
              help="Event (repeatable): series, counted events, funnel steps, retention start"
                   " then return.")
@click.option("--by", "-b", multiple=True, help="Dimension (repeatable): country, prop:plan, ...")
@click.option("--metric", "-m", "metrics", multiple=True,
              help="Metric (repeatable): events, users, sum:<key>, avg:<key>.")
@click.option("--interval", "-i", default=None,
              help="minute, hour, day, week or month (a retention's period).")
@click.option("--range", "-r", "date_range", default=None,
              help="7d, 24h, today, all, ... or FROM,TO [query.date_range].")
@click.option("--timezone", "--tz", default=None, help="IANA timezone [query.timezone].")
@click.option("--limit", "-n", type=int, default=None, help="Groups in a breakdown or funnel.")
@click.option("--source", default=None, help="auto, events or rollup [auto].")
@click.option("--format", "output", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="A table, or the answer exactly as POST /v1/query sends it.")
@click.pass_context
def query(ctx: click.Context, body: str | None, file: Path | None, kind: str | None,
          events: tuple[str, ...], by: tuple[str, ...], metrics: tuple[str, ...],
          interval: str | None, date_range: str | None, timezone: str | None, limit: int | None,
          source: str | None, output: str) -> None:
    """Answer a query (docs/query.md) from ClickHouse, as POST /v1/query would.

    BODY is the JSON request, or - to read it from stdin; without BODY or --file, the flags
    make one.

    \b
      rearview query -e page_view -e signup -i hour -r 24h
      rearview query --by country --by device_type -m events -m users -n 10
      rearview query -k funnel -e page_view -e signup -e purchase --by prop:plan
      rearview query -k retention -e signup -e purchase -i week -r 8w
      rearview query '{"kind": "uniques", "method": "hll"}' --format json
      rearview query - < saved-query.json

    A refused request prints "error: <field>: <why>" and exits 2, before connecting; an
    unreachable ClickHouse or a query past its limits exits 1.
    """
    from datetime import UTC, datetime

    import orjson

    from app.query import BadQuery, QueryConfig, QueryTimeout, QueryTooExpensive, run
    from app.query.request import parse

    flags = (kind, events, by, metrics, interval, date_range, timezone, limit, source)
    if body is not None and file is not None:
        raise click.UsageError("give the query as BODY or with --file, not both")
    if (body is not None or file is not None) and any(f not in (None, ()) for f in flags):
        raise click.UsageError("give the query as JSON (BODY or --file) or with flags, not both")
    settings = _settings(ctx)
    config = QueryConfig.from_settings(settings)
    now = datetime.now(UTC)
    try:
        if file is not None:
            request = query_body_from_text(file.read_bytes())
        elif body is not None:
            request = query_body_from_text(click.get_text_stream("stdin").read() if body == "-"
                                           else body)
        else:
            request = query_body_from_flags(*flags)
        parse(request, config.defaults, now)  # a bad request is refused before connecting
    except BadQuery as exc:
        _query_fail(str(exc), 2)

    from clickhouse_connect.driver.exceptions import Error as ClickHouseError

    from app.clickhouse import connect
    from core.exceptions import ConfigurationError, ServiceUnavailable

    if settings.log.level != "debug":  # the one-line error below says it all
        import logging

        for name in ("urllib3", "clickhouse_connect"):
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        client = connect(settings.clickhouse)
    except ConfigurationError as exc:
        _query_fail(str(exc), 1)
    except (ClickHouseError, OSError) as exc:  # refused, unresolvable, timed out
        _query_fail(_connect_error(settings.clickhouse.url, exc), 1)
    try:
        answer = run(client, request, config, now)
    except BadQuery as exc:
        _query_fail(str(exc), 2)
    except (QueryTimeout, QueryTooExpensive, ServiceUnavailable) as exc:
        _query_fail(str(exc), 1)
    finally:
        client.close()
    if output == "json":
        click.echo(orjson.dumps(answer))
    else:
        print_answer(answer)


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except RearviewError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
