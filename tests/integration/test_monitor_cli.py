"""The operator's terminal: ``monitor`` rendered in a real tmux pane (captured text),
``status`` tables, and ``task ID`` with position and wait estimate.

Uses the session server and the module's shared worker. The tmux server runs on its own
socket and is stopped by PID.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from support import WorkerProcess, wait_until
from vocalborn_tasks import Monitor, TaskManager, TaskSettings, task_definition
from vocalborn_tasks.tasks import TaskContext

pytestmark = pytest.mark.integration

HELD = "ops-cli-held"


@task_definition(name="tests.monitor_cli.held", queue=HELD)
def held(ctx: TaskContext) -> None:
    """Never runs (nobody consumes HELD)."""


def cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "CELERY_"))}
    env.update(REDIS_URL=redis_url, COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "vocalborn_tasks", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class Tmux:
    """A private tmux server (own socket) with one detached session."""

    def __init__(self) -> None:
        self.socket = f"vocalborn-test-{uuid.uuid4().hex[:8]}"
        self.pid: int | None = None

    def run(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout

    def start(self, command: str, env: dict[str, str]) -> None:
        flags = [arg for k, v in env.items() for arg in ("-e", f"{k}={v}")]
        self.run("new-session", "-d", "-s", "mon", "-x", "180", "-y", "60", *flags, command)
        self.run("set-option", "-t", "mon", "remain-on-exit", "on")  # keep a crash readable
        self.pid = int(self.run("display-message", "-p", "#{pid}").strip())

    def capture(self) -> str:
        return self.run("capture-pane", "-p", "-t", "mon")

    def close(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self.run("kill-server")
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    t = Tmux()
    try:
        yield t
    finally:
        t.close()


def test_monitor_renders_in_tmux(redis_url: str, worker: WorkerProcess, tmux: Tmux) -> None:
    command = f"{sys.executable} -m vocalborn_tasks monitor --interval 0.5"
    # COLUMNS/LINES: the pane size (the test runner may export its own, which rich would use).
    tmux.start(command, {"REDIS_URL": redis_url, "COLUMNS": "180", "LINES": "60"})

    def rendered() -> str | None:
        text = tmux.capture()
        needed = (
            "vocalborn-tasks monitor",
            "health",
            "Workers",
            "Queues",
            worker.hostname,
            "ai_analysis",
        )
        return text if all(n in text for n in needed) else None

    try:
        first = wait_until(rendered, 60, interval=0.2, what="monitor in the tmux pane")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- pane ---\n{tmux.capture()}") from None
    assert re.search(r"\b(healthy|degraded)\b", first), first
    assert "maintenance" in first and "Tasks (last hour)" in first
    assert "redis://127.0.0.1" in first and "Traceback" not in first
    stamp = re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", first)
    assert stamp is not None
    # It refreshes: the clock in the header moves on.
    wait_until(lambda: stamp.group(0) not in tmux.capture(), 15, interval=0.2, what="a refresh")


async def test_status_and_task_position(
    redis_url: str, base_settings: TaskSettings, worker: WorkerProcess
) -> None:
    status = cli(redis_url, "status")
    assert status.returncode == 0, status.stderr
    for title in ("Workers", "Queues", "Tasks (last hour)"):
        assert title in status.stdout
    assert worker.hostname in status.stdout

    async with TaskManager(base_settings) as manager:
        handles = [await manager.submit(held) for _ in range(3)]
    try:
        shown = cli(redis_url, "task", handles[1].id)
        assert shown.returncode == 0, shown.stderr
        assert f"{handles[1].id} PENDING" in shown.stdout
        assert f"position: 2 of 3 in {HELD}" in shown.stdout, shown.stdout
        assert "estimated wait: unknown" in shown.stdout  # nobody consumes HELD
    finally:
        async with Monitor(base_settings) as monitor:
            await monitor.purge_queue(HELD)
