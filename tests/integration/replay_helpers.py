"""Shared by the replay tests: events over days, written straight to events.raw."""

from __future__ import annotations

import time
import uuid
from typing import Any

from app import replay as rp
from app.verify import overall, verify
from tests.integration.conftest import Pipeline
from tests.integration.conftest import send_event_batches as send  # noqa: F401 - the replay tests' name

DAY_MS = 86_400_000


def events_over_days(n: int, days: float, seed: int = 0, phone_every: int = 0) -> list[dict[str, Any]]:
    """*n* events spread over the last *days* days, a few users and countries."""
    now = int(time.time() * 1000)
    out = []
    for i in range(n):
        props = {"country": ["DE", "FR", "US", "BR"][(i + seed) % 4],
                 "device_type": ["desktop", "mobile"][(i // 3) % 2]}
        if phone_every and i % phone_every == 0:
            props["contact"] = f"+49 30 {1_000_000 + i % 97}"
        out.append({"event": ["button_click", "page_view", "purchase"][i % 3], "user_id": f"u{(i * 7 + seed) % 150}",
                    "timestamp": now - int(days * DAY_MS) + i * int(days * DAY_MS) // n,
                    "event_id": str(uuid.UUID(int=(seed << 64) + i + 1)), "properties": props})
    return out


def exact(pipeline: Pipeline, total: int) -> bool:
    """Every event stored once and every rollup equal to a GROUP BY over them."""
    if pipeline.scalar("SELECT count() FROM events") != total:
        return False
    return overall(verify(pipeline.ch, pipeline.settings.aggregate.rollups)) == "exact"


def replay_jobs(pipeline: Pipeline) -> list[rp.Job]:
    return rp.status(pipeline.settings)
