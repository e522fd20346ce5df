"""Fixtures for the fault tests: a server of each test's own, and workers it owns by PID.

Each test gets a fresh server (the session's Valkey, or ``VOCALBORN_TEST_SERVER_BINARY``) with
its own data directory, so it can kill and restart it without disturbing other tests. Workers
are started through :func:`start_worker` and always stopped at teardown, SIGKILLed if needed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support import ROOT, WorkerProcess, settings_env
from vocalborn_tasks.config import TaskSettings
from vocalborn_tasks.embedded import LocalServer, die_with_parent

#: Settings every fault test starts from: fast heartbeats so a dead worker is noticed in ~2 s.
FAULT_DEFAULTS: dict[str, Any] = {
    "celery_log_level": "INFO",
    "worker_heartbeat_s": 0.5,
    "worker_dead_after_s": 2.0,
    "max_deliveries": 3,
    "retry_backoff_s": 0.2,
    "retry_backoff_max_s": 1.0,
}


class HostWorker(WorkerProcess):
    """A host's own worker module (``python -m faults.helpers worker``) with ``faults.count``."""

    def start(self, *, wait: bool = True, timeout: float = 60.0) -> WorkerProcess:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "TASK_", "CELERY_"))
        }
        env.update(settings_env(self.settings))
        env.update(self.extra_env)
        env["REMAP_SIGTERM"] = "SIGQUIT"
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "tests"), str(ROOT), env.get("PYTHONPATH", "")]
        )
        cmd = [
            sys.executable,
            "-m",
            "faults.helpers",
            "worker",
            "--queues",
            self.queues,
            "--concurrency",
            str(self.concurrency),
            "--pool",
            self.pool,
            "--hostname",
            self.hostname,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        log.close()
        if wait:
            self.wait_ready(timeout)
        return self


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
    """Start workers (``vocalborn-tasks worker``, or ``host=True`` for :class:`HostWorker`).

    Every worker and every pool child it ever had is killed at teardown.
    """
    started: list[WorkerProcess] = []
    children: set[int] = set()

    def start(
        settings: TaskSettings, name: str, *, host: bool = False, wait: bool = True, **kw: Any
    ) -> WorkerProcess:
        cls = HostWorker if host else WorkerProcess
        worker = cls(settings, name=name, log_dir=tmp_path, **kw)
        started.append(worker)
        worker.start(wait=wait)
        children.update(worker.child_pids())
        return worker

    yield start
    for worker in started:
        if worker.proc is not None:
            children.update(worker.child_pids())
        worker.stop(timeout=15)
    for pid in children:  # orphans of a SIGKILLed main process
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
