"""`rearview up` stopped and started again: its broker begins a new, empty log while ClickHouse
and the archive keep everything. Nothing stored is lost or doubled, the live rollups go on
exact, old dead letters stay, and a replay from the archive restores every event exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import clickhouse_connect
import httpx
import pytest
from confluent_kafka import Producer

from agents.archive import Archive
from tests.integration.conftest import QUICK_GROUPS, wait_for
from tests.integration.replay_helpers import events_over_days

pytestmark = pytest.mark.integration


@dataclass
class Up:
    """One run of `rearview up` and the addresses and keys it printed."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    lines: dict[str, str]

    @property
    def api(self) -> str:
        return self.lines["dashboard"].partition("/#key=")[0]

    def env(self, data_dir: Path) -> dict[str, str]:
        """What a CLI command run next to this stack needs to reach it (as `up`'s children)."""
        return {**os.environ, "RV_KAFKA__BOOTSTRAP_SERVERS": self.lines["kafka"],
                "RV_REGISTRY__URL": self.lines["registry"], "RV_CLICKHOUSE__URL": self.lines["clickhouse"],
                "RV_WORKER__DATA_DIR": str(data_dir / "worker"), "RV_ARCHIVE__URL": str(data_dir / "archive"),
                "RV_ADMIN_KEY": self.lines["admin key"]}

    def stop(self) -> None:
        os.kill(self.proc.pid, signal.SIGTERM)
        assert self.proc.wait(90) == 0, self.log_path.read_text()[-3000:]


def start_up(data_dir: Path, log_path: Path, **settings: str) -> Up:
    """`rearview up` on *data_dir* with RV_* *settings*, once it printed its addresses."""
    log = open(log_path, "w")  # noqa: SIM115 - the child writes it; closed below
    quick_groups = {f"RV_KAFKA__{name.upper()}": str(value) for name, value in QUICK_GROUPS.items()}
    env = {**os.environ, "RV_ARCHIVE__ROLL_INTERVAL_S": "1", **quick_groups, **settings}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "up", "--free-ports", "--data-dir", str(data_dir)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    log.close()
    up = Up(proc, log_path, {})

    def printed() -> bool:
        text = log_path.read_text()
        assert proc.poll() is None, text[-3000:]
        if "Press Ctrl-C to stop." not in text:
            return False
        for line in text.splitlines():
            for name in ("dashboard", "write key", "admin key", "kafka", "registry", "clickhouse"):
                if line.strip().startswith(name):
                    up.lines[name] = line.split()[-1]
        return True

    try:
        wait_for(printed, 180, "`rearview up` to print its addresses")
    except BaseException:
        _kill(up)
        raise
    return up


def _kill(up: Up) -> None:
    if up.proc.poll() is None:
        os.killpg(up.proc.pid, signal.SIGKILL)
        up.proc.wait()


@pytest.fixture
def ups() -> Iterator[list[Up]]:
    started: list[Up] = []
    yield started
    for up in started:
        if up.proc.poll() is None:
            os.killpg(up.proc.pid, signal.SIGTERM)
            try:
                up.proc.wait(60)
            except subprocess.TimeoutExpired:
                _kill(up)


def track(up: Up, events: list[dict[str, Any]]) -> None:
    headers = {"Authorization": f"Bearer {up.lines['write key']}"}
    for i in range(0, len(events), 500):
        answer = httpx.post(f"{up.api}/v1/batch", json={"events": events[i:i + 500]}, headers=headers, timeout=30)
        assert answer.status_code in (200, 202), answer.text


def corrupt(up: Up, n: int, tag: bytes) -> None:
    """*n* messages straight to events.raw that no schema decodes: dead letters."""
    producer = Producer({"bootstrap.servers": up.lines["kafka"]})
    for i in range(n):
        producer.produce("events.raw", value=b"\x00\x00\x00\x00\x09not avro " + tag + bytes([i]))
    assert producer.flush(30) == 0


def with_emails(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Personal data the stored events must carry hashed with the live secret, also after a replay."""
    for i, e in enumerate(events):
        if i % 25 == 0:
            e["properties"]["contact_email"] = f"user{i}@example.org"
    return events


class Store:
    def __init__(self, url: str) -> None:
        parsed = httpx.URL(url)
        self.client = clickhouse_connect.get_client(host=parsed.host, port=parsed.port, database="rearview")

    def scalar(self, sql: str) -> Any:
        return self.client.query(sql).result_rows[0][0]

    def digest(self, provenance: bool = True) -> list[tuple[Any, ...]]:
        """Every stored event; with its position in events.raw unless *provenance* is False
        (an event a client sent twice within one log is kept, live, as the copy that reached
        events.clean first, and by a replay as the copy it reads first: docs/replay.md)."""
        columns = "toString(event_id), event_name, user_id, ts, toString(properties)"
        if provenance:
            columns += ", _partition, _offset"
        return [tuple(r) for r in self.client.query(f"SELECT {columns} FROM events ORDER BY event_id").result_rows]


def rearview(up: Up, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], env=up.env(data_dir),
                          capture_output=True, text=True, timeout=300, check=False)


def archived_through(data_dir: Path, stored_max: dict[int, int]) -> bool:
    archive = Archive(str(data_dir / "archive"))
    return all(archive.next_offset("events.raw", p) > top for p, top in stored_max.items())


def test_a_restarted_up_keeps_every_event_and_letter_and_a_replay_restores_them(
        tmp_path: Path, ups: list[Up]) -> None:
    data = tmp_path / "data"
    first = start_up(data, tmp_path / "up1.log")
    ups.append(first)
    assert "log epoch 1" in first.log_path.read_text()
    old = with_emails(events_over_days(1500, 3, phone_every=40))
    track(first, old)
    corrupt(first, 2, b"first")
    store = Store(first.lines["clickhouse"])
    wait_for(lambda: store.scalar("SELECT count() FROM events") == 1500, 120, "1,500 events stored")
    wait_for(lambda: store.scalar("SELECT count() FROM dlq FINAL") == 2, 60, "2 dead letters")
    wait_for(lambda: rearview(first, data, "verify").returncode == 0, 60, "the first log's rollups exact")
    stored_max = dict(store.client.query("SELECT _partition, max(_offset) FROM events GROUP BY _partition")
                      .result_rows)
    letters = set(store.client.query("SELECT dlq_partition, dlq_offset, source_offset FROM dlq FINAL").result_rows)
    wait_for(lambda: archived_through(data, stored_max), 60, "the first log archived")
    first.stop()

    second = start_up(data, tmp_path / "up2.log")
    ups.append(second)
    assert "log epoch 2" in second.log_path.read_text()
    listed = rearview(second, data, "epochs", "status").stdout.splitlines()
    assert [line.split()[4] for line in listed] == ["1:", "2:"], listed
    assert "events.raw[" in listed[1], "the second log's positions begin past the first's"
    store = Store(second.lines["clickhouse"])
    assert store.scalar("SELECT count() FROM events") == 1500, "ClickHouse kept the first log's events"
    new = with_emails(events_over_days(1000, 1, seed=7))
    track(second, new + old[:300])  # new events, and a client retrying 300 of the first log's
    corrupt(second, 1, b"second")
    wait_for(lambda: store.scalar("SELECT count() FROM events") == 2500, 120, "2,500 events stored")
    wait_for(lambda: store.scalar("SELECT count() FROM dlq FINAL") == 3, 60, "3 dead letters")
    # The new log's positions lie past the first's, so no event of the new log sits under an
    # old position and the rollups' applied positions do not swallow new events.
    firsts = dict(store.client.query(
        "SELECT _partition, min(_offset) FROM events WHERE event_id IN {ids:Array(UUID)} GROUP BY _partition",
        parameters={"ids": [e["event_id"] for e in new]}).result_rows)
    assert all(firsts[p] > stored_max.get(p, -1) for p in firsts), (firsts, stored_max)
    now = set(store.client.query("SELECT dlq_partition, dlq_offset, source_offset FROM dlq FINAL").result_rows)
    assert letters < now, "the second log's dead letter must not replace one of the first's"
    wait_for(lambda: rearview(second, data, "verify").returncode == 0, 60, "every rollup exact across the logs",
             lambda: rearview(second, data, "verify").stdout[-2000:])
    before = store.digest()

    # A replay reads the first log from the archive and the second from Kafka.
    plan = rearview(second, data, "replay", "start", "events", "--source", "auto", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "archive" in plan.stdout and "kafka" in plan.stdout, plan.stdout
    replayed = rearview(second, data, "replay", "start", "events", "--source", "auto")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "swapped" in replayed.stdout
    assert store.digest() == before, "the replay restores every event exactly, with the same hashes"
    assert store.scalar("SELECT count() FROM dlq FINAL") == 3, "no dead letter written twice"
    final = rearview(second, data, "verify")
    assert final.returncode == 0 and "exact" in final.stdout, final.stdout
    second.stop()
