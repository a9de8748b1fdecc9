"""`rearview up`: the whole stack from one command, and nothing left behind on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_up_with_demo_traffic_serves_a_growing_count_and_sigterm_leaves_no_process(tmp_path: Path) -> None:
    log = open(tmp_path / "up.log", "w+")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "up", "--demo", "--demo-rate", "200", "--free-ports",
         "--data-dir", str(tmp_path / "data")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        def url() -> str | None:
            for line in (tmp_path / "up.log").read_text().splitlines():
                if line.strip().startswith("dashboard"):
                    return line.split()[-1]
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
            return None

        # Keys are on: the dashboard's address carries the demo project's read key.
        dashboard = wait_for(url, 180, "`rearview up` to print the dashboard URL")
        api, _, read_key = dashboard.partition("/#key=")
        printed = (tmp_path / "up.log").read_text()
        assert read_key.startswith("rvr_") and f"read key     {read_key}" in printed
        assert "write key    rvw_" in printed and "admin key    rva_" in printed
        page = httpx.get(f"{api}/")
        assert "text/html" in page.headers["content-type"] and "Online now" in page.text
        assert httpx.get(f"{api}/v1/events/count", timeout=10).status_code == 401
        headers = {"Authorization": f"Bearer {read_key}"}

        def count() -> int:
            return int(httpx.get(f"{api}/v1/events/count", headers=headers, timeout=10).json()["count"])

        first = wait_for(count, 60, "demo events in ClickHouse")
        wait_for(lambda: count() > first, 60, "the count to grow")
        # The live figures come from the rollups, flushed by the aggregate agent a moment
        # after the sink's inserts: they follow the count within a few seconds.
        def live() -> dict[str, Any] | None:
            answer = httpx.get(f"{api}/v1/live", headers=headers, timeout=10).json()
            return answer if answer["active_users"]["15m"] > 0 and answer["top_events"] else None

        wait_for(live, 60, "active users and top events in /v1/live")

        tree = _descendants(proc.pid)
        assert len(tree) >= 6, "broker, tansu, registry, clickhouse, worker, api, demo"
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == 0
        time.sleep(0.5)
        left = [pid for pid in tree if _running(pid)]
        assert left == [], f"processes left behind: {left}"
        assert "stopping Rearview" in (tmp_path / "up.log").read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in _descendants(proc.pid):
            os.kill(pid, signal.SIGKILL)
        log.close()
