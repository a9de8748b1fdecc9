"""What `rearview replay` prints: the plan, the progress bar, job status lines."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from app.replay.jobs import Job


class Bar:
    """`advance(n)` per batch of events; `total(n)` once the plan's estimate is known."""

    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int) -> None:
        self._progress.advance(self._task, n)
        speed = self._progress.tasks[0].speed
        self._progress.update(self._task, rate=f"{speed:,.0f}" if speed else "-")

    def total(self, n: int) -> None:
        self._progress.update(self._task, total=n or None)


@contextmanager
def progress_bar(total: int | None, what: str = "replaying") -> Iterator[Bar]:
    """A rich progress bar of events with their rate and an ETA (on a terminal; silent otherwise)."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]} events/s"), TimeElapsedColumn(),
               TimeRemainingColumn()]
    with Progress(*columns, disable=not sys.stderr.isatty(), transient=False) as progress:
        yield Bar(progress, progress.add_task(what, total=total or None, rate="-"))


def job_lines(job: Job) -> list[str]:
    t = job.totals()
    head = (f"{job.job_id}: {', '.join(job.targets)}, generation {job.generation}, {job.status},"
            f" source {job.source}, {t.get('events', 0):,} events read, {t.get('rows', 0):,} rows,"
            f" {t.get('letters', 0):,} dead letters, {t.get('duplicates', 0):,} duplicates,"
            f" {job.rate:,.0f} events/s")
    lines = [head]
    for key, p in sorted(job.partitions.items(), key=lambda kv: kv[0].zfill(12)):
        stop = "caught up" if p.stop is None else str(p.stop)
        done = "" if p.stop is None else f" ({min(100.0, 100 * (p.committed - p.start) / max(1, p.stop - p.start)):.0f}%)"
        lines.append(f"  partition {key}: {p.source}, {p.start} .. {stop}, committed {p.committed}{done},"
                     f" {p.events:,} events")
    if job.error:
        lines.append(f"  refused: {job.error}")
    return lines
