"""`rearview up` bounds its broker's memory: past a budget it begins a new log (a new broker, a
new log epoch) once the current one is read and archived. Clients retrying across a roll, dead
letters and rollups stay exact, and a replay restores every event from the archive."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Self

import httpx
import pytest

from app.embedded.drain import holds_records
from tests.integration.conftest import wait_for
from tests.integration.replay_helpers import events_over_days
from tests.integration.test_up_restart import (
    Store,
    Up,
    corrupt,
    rearview,
    start_up,
    ups,
    with_emails,
)

pytestmark = pytest.mark.integration
__all__ = ["ups"]  # the fixture, shared with test_up_restart

ROLLS = {
    "RV_BROKER__LOG_BUDGET_MB": "1",  # below any broker's size: every check with records rolls
    "RV_BROKER__LOG_CHECK_S": "2",
    "RV_ARCHIVE__ROLL_INTERVAL_S": "1",
}


def track_retrying(up: Up, events: list[dict[str, Any]], per_request: int = 250) -> int:
    """Send *events* as a client with retries does: a batch that fails (the collector is down
    while the log rolls) is sent again, with the same event ids. Returns the retries made."""
    headers = {"Authorization": f"Bearer {up.lines['write key']}"}
    retries = 0
    for i in range(0, len(events), per_request):
        deadline = time.monotonic() + 120
        while True:
            try:
                answer = httpx.post(f"{up.api}/v1/batch", json={"events": events[i:i + per_request]},
                                    headers=headers, timeout=30)
                if answer.status_code in (200, 202):
                    break
                assert answer.status_code == 503, answer.text
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the collector did not come back"
            retries += 1
            time.sleep(0.3)
    return retries


class Prober:
    """Sends one event again and again (a retry: stored once) while a roll is under way, and
    keeps every answer: what a client meets while the collector is away."""

    def __init__(self, up: Up, event: dict[str, Any]) -> None:
        self.answers: list[tuple[int, str | None, str]] = []  # status, Retry-After, body
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(up, event), daemon=True)

    def _run(self, up: Up, event: dict[str, Any]) -> None:
        headers = {"Authorization": f"Bearer {up.lines['write key']}"}
        while not self._stop.wait(0.25):
            try:
                answer = httpx.post(f"{up.api}/v1/batch", json={"events": [event]}, headers=headers, timeout=30)
                self.answers.append((answer.status_code, answer.headers.get("Retry-After"), answer.text))
            except httpx.TransportError:
                self.refused += 1

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def epochs_printed(up: Up) -> int:
    return up.log_path.read_text().count("log epoch ")


def settled(up: Up) -> bool:
    """No roll under way and the current log empty (rolled after the last record): no roll can
    begin until new records come."""
    text = up.log_path.read_text()
    begun = text.count("beginning a new log")
    ended = text.count("log rolled in") + text.count("the log is kept")
    topics = {"events.raw": 4, "events.clean": 4}
    return begun == ended and not holds_records(up.lines["kafka"], topics)


def test_a_rolled_log_keeps_every_event_and_a_replay_restores_them(tmp_path: Path, ups: list[Up]) -> None:
    data = tmp_path / "data"
    up = start_up(data, tmp_path / "up.log", **ROLLS)
    ups.append(up)
    store = Store(up.lines["clickhouse"])
    first = with_emails(events_over_days(1500, 3, phone_every=40))
    track_retrying(up, first)
    corrupt(up, 2, b"first")
    wait_for(lambda: store.scalar("SELECT count() FROM events") == 1500, 120, "1,500 events stored")
    wait_for(lambda: epochs_printed(up) >= 2, 120, "the broker's log to roll",
             lambda: up.log_path.read_text()[-2000:])
    text = up.log_path.read_text()
    assert "beginning a new log" in text, text[-2000:]

    # Traffic during rolls: new events and a client retrying 300 of the first ones.
    second = with_emails(events_over_days(1000, 1, seed=7))
    rolled = epochs_printed(up)
    with Prober(up, first[0]) as prober:  # its requests are records: the next check rolls
        track_retrying(up, second[:500] + first[:300])
        wait_for(lambda: epochs_printed(up) > rolled, 120, "another roll",
                 lambda: up.log_path.read_text()[-2000:])
        wait_for(lambda: prober.answers and prober.answers[-1][0] == 202, 60, "the collector back after the roll")
    # While the collector was away, its port said why and when to come back, rather than
    # refusing the connection (a request caught as the API stops may still see a reset).
    away = [a for a in prober.answers if a[0] != 202]
    assert away and all(status == 503 and retry_after for status, retry_after, _ in away), away[:5]
    assert any("beginning a new log" in body for *_, body in away), away[:5]
    # A roll stops one listener of two at each end of its pause: a request caught there may be
    # reset, the many in between are answered.
    assert prober.refused < len(away) / 4, f"{prober.refused} connections failed, {len(away)} answered 503"
    track_retrying(up, second[500:])
    corrupt(up, 1, b"second")
    wait_for(lambda: store.scalar("SELECT count() FROM events") == 2500, 120, "2,500 events stored")
    wait_for(lambda: store.scalar("SELECT count() FROM dlq FINAL") == 3, 60, "3 dead letters")
    epochs = rearview(up, data, "epochs", "status").stdout.splitlines()
    assert len(epochs) >= 3, epochs
    wait_for(lambda: settled(up), 120, "the last records' log to roll", lambda: up.log_path.read_text()[-2000:])
    wait_for(lambda: rearview(up, data, "verify").returncode == 0, 60, "every rollup exact across the rolls",
             lambda: rearview(up, data, "verify").stdout[-2000:])
    # The replay reads the archive partition by partition, so of an event sent twice it may keep
    # the retry (a later log, another partition) where the live store kept the original: the
    # same event, at another position (docs/replay.md, "Limits").
    before = store.digest(provenance=False)

    # Every earlier log is in the archive only: a replay reads it there, the current one in Kafka.
    replayed = rearview(up, data, "replay", "start", "events", "--source", "auto")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "swapped" in replayed.stdout
    after = store.digest(provenance=False)
    assert after == before, ("the replay restores every event exactly", set(before) ^ set(after))
    assert store.scalar("SELECT count() FROM dlq FINAL") == 3, "no dead letter written twice"
    final = rearview(up, data, "verify")
    assert final.returncode == 0 and "exact" in final.stdout, final.stdout
    up.stop()
