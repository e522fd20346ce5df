"""Fixtures for the fault tests: a server of each test's own, and workers it owns by PID.

Each test gets a fresh server (the session's Valkey, or ``VOCALBORN_TEST_SERVER_BINARY``) with
its own data directory, so it can kill and restart it without disturbing other tests. Workers
are started through :func:`start_worker` and always stopped at teardown, SIGKILLed if needed.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from support import WorkerProcess
from vocalborn_tasks.config import TaskSettings
from vocalborn_tasks.embedded import LocalServer

#: Settings every fault test starts from: fast heartbeats so a dead worker is noticed in ~2 s.
FAULT_DEFAULTS: dict[str, Any] = {
    "celery_log_level": "INFO",
    "worker_heartbeat_s": 0.5,
    "worker_dead_after_s": 2.0,
    "max_deliveries": 3,
    "unknown_task_max_offers": 3,
    "retry_backoff_s": 0.2,
    "retry_backoff_max_s": 1.0,
    # Teardown: a task still running when a test ends goes back to its queue after 1 s instead
    # of waiting the production 10 s (tests of the shutdown itself set their own value).
    "worker_soft_shutdown_s": 1.0,
}


@pytest.fixture
def server(tmp_path: Path, server_binary: str | None) -> Iterator[LocalServer]:
    """A server of this test's own, with AOF, on a free port."""
    srv = LocalServer(binary=server_binary, data_dir=tmp_path / "server", die_with_parent=True)
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def make_settings(server: LocalServer) -> Callable[..., TaskSettings]:
    """Settings for this test's server: the fault defaults, overridden by keyword."""

    def make(**overrides: Any) -> TaskSettings:
        return TaskSettings(redis_url=server.url, **{**FAULT_DEFAULTS, **overrides})

    return make


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start workers (``vocalborn-tasks worker``, or ``host=True`` for the host module
    ``python -m faults.helpers worker``, which also registers ``faults.count``).

    Every worker and every pool child it ever had is killed at teardown.
    """
    started: list[WorkerProcess] = []
    children: set[int] = set()

    def start(
        settings: TaskSettings, name: str, *, host: bool = False, wait: bool = True, **kw: Any
    ) -> WorkerProcess:
        module = "faults.helpers" if host else "vocalborn_tasks"
        worker = WorkerProcess(settings, name=name, log_dir=tmp_path, module=module, **kw)
        started.append(worker)
        worker.start(wait=wait)
        children.update(worker.child_pids())
        return worker

    yield start
    for worker in started:
        if worker.proc is not None:
            children.update(worker.child_pids())
    # Side by side: each stop waits 1-2 s for its own worker's shutdown.
    with ThreadPoolExecutor(max_workers=max(len(started), 1)) as pool:
        list(pool.map(lambda w: w.stop(timeout=15), started))
    for pid in children:  # orphans of a SIGKILLed main process
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
