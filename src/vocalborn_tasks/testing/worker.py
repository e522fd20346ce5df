"""A real worker process for a host's tests: started with exact settings, stopped by PID.

:class:`WorkerProcess` runs ``python -m vocalborn_tasks worker`` (the same command operators
run) with the built-in tasks plus the host's task modules. Its environment is built from a
:class:`~vocalborn_tasks.TaskSettings` object and nothing else: every variable the settings
read is removed from the inherited environment first, so neither a developer's ``REDIS_URL``
nor a ``CELERY_*`` left by an earlier run leaks in, and the test process's own ``os.environ``
is never changed. It is ready when its heartbeat key is in Redis (the worker writes it once its
pool is up): an event in the server, not a sleep or a line in a log.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from pydantic_core import to_jsonable_python

from .._connections import sync_redis
from ..config import QUEUES, TaskSettings
from ..embedded import die_with_parent
from ..errors import ConfigurationError
from ..record import RecordKeys

__all__ = ["WorkerProcess", "child_pids", "settings_environment", "stop_process_tree"]


def child_pids(pid: int) -> list[int]:
    """PIDs of a process's children (a worker's pool processes); [] when it is gone."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def stop_process_tree(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM ``proc``, SIGKILL it after ``timeout``, then SIGKILL its children by PID.

    The children are listed first: once the main process is gone they are orphans that no
    longer show up under it, and a pool child must not outlive a test.
    """
    children = child_pids(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _env_names() -> set[str]:
    """Every environment variable name :class:`TaskSettings` reads (upper case)."""
    names: set[str] = set()
    for name, spec in TaskSettings.model_fields.items():
        names.add(name.upper())
        alias = spec.validation_alias
        for choice in getattr(alias, "choices", ()):
            if isinstance(choice, str):
                names.add(choice.upper())
    return names


def _env_name(field: str) -> str:
    alias = TaskSettings.model_fields[field].validation_alias
    choices = getattr(alias, "choices", ())
    return str(choices[0]) if choices else field.upper()


def settings_environment(
    settings: TaskSettings, base: dict[str, str] | None = None
) -> dict[str, str]:
    """An environment in which ``TaskSettings()`` equals ``settings``.

    Starts from ``base`` (``os.environ`` if omitted; not modified), drops every variable the
    settings read and every ``CELERY*`` variable (Celery reads some of its own), then sets each
    field that differs from its default.
    """
    env = dict(os.environ if base is None else base)
    ours = _env_names()
    for key in list(env):
        if key.upper() in ours or key.upper().startswith("CELERY"):
            del env[key]
    defaults = TaskSettings.model_construct()
    for name in TaskSettings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if value == getattr(defaults, name, object()):
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if isinstance(value, list | dict | tuple):
            text = json.dumps(to_jsonable_python(value))
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        env[_env_name(name)] = text
    return env


class WorkerProcess:
    """``python -m vocalborn_tasks worker`` as a subprocess owned by PID.

    Args:
        settings: the worker's settings (exactly these; see :func:`settings_environment`).
        task_modules: host modules whose task definitions it runs (``--include``).
        queues: queues to consume; all three built-in ones by default, plus ``HOST_QUEUES``.
        concurrency: pool processes.
        pool: ``prefork`` (cancel stops a running task) or ``solo``.
        hostname: the Celery node name; unique per process by default.
        pythonpath: directories put first on the worker's ``sys.path`` (where the host's
            modules live); this process's ``sys.path`` follows.
        cwd: the worker's working directory (a fresh temporary one by default, so no ``.env``
            file is read).
        log_path: where its output goes (a temporary file by default).
    """

    def __init__(
        self,
        settings: TaskSettings,
        *,
        task_modules: Sequence[str] = (),
        queues: Sequence[str] | None = None,
        concurrency: int = 1,
        pool: str = "prefork",
        hostname: str | None = None,
        pythonpath: Sequence[str | Path] = (),
        cwd: str | Path | None = None,
        log_path: str | Path | None = None,
    ) -> None:
        self.settings = settings
        self.task_modules = tuple(task_modules)
        self.queues = tuple(queues) if queues is not None else (*QUEUES, *settings.host_queues)
        self.concurrency = concurrency
        self.pool = pool
        self.hostname = hostname or f"vocalborn-test-{os.getpid()}-{time.monotonic_ns()}@localhost"
        self.pythonpath = [str(p) for p in pythonpath]
        self._own_dir: Path | None = None
        self.cwd = Path(cwd) if cwd is not None else None
        self.log_path = Path(log_path) if log_path is not None else None
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<WorkerProcess {self.hostname} pid={self.pid} modules={list(self.task_modules)}>"

    @property
    def pid(self) -> int | None:
        """PID of the worker's main process while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the main process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        """The command line the worker runs with."""
        cmd = [
            sys.executable,
            "-m",
            "vocalborn_tasks",
            "worker",
            "--queues",
            ",".join(self.queues),
            "--concurrency",
            str(self.concurrency),
            "--pool",
            self.pool,
            "--hostname",
            self.hostname,
        ]
        for module in self.task_modules:
            cmd += ["--include", module]
        return cmd

    def environment(self) -> dict[str, str]:
        """The worker's environment: the settings, its ``sys.path``, a quick SIGTERM."""
        env = settings_environment(self.settings)
        path = [*self.pythonpath, *(p for p in sys.path if p and Path(p).is_dir())]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
        # SIGTERM hands running tasks back to the queue at once instead of waiting for them.
        env["REMAP_SIGTERM"] = "SIGQUIT"
        return env

    def start(self, *, timeout: float = 60.0) -> Self:
        """Start the worker and return once it is ready (its heartbeat key exists).

        Raises:
            ConfigurationError: it exited, or was not ready within ``timeout`` seconds (the
                message ends with its last log lines).
        """
        if self._proc is not None:
            return self
        if self.cwd is None:
            self._own_dir = Path(tempfile.mkdtemp(prefix="vocalborn-worker-"))
            self.cwd = self._own_dir
        if self.log_path is None:
            self.log_path = self.cwd / "worker.log"
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.command(),
                env=self.environment(),
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # a crashed test run leaves no worker behind
            )
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the worker's heartbeat key is in Redis.

        Raises:
            ConfigurationError: the process exited first, or ``timeout`` passed.
        """
        key = RecordKeys.of(self.settings).worker(self.hostname)
        client = sync_redis(self.settings, "backend", max_connections=1)
        deadline = time.monotonic() + timeout
        try:
            while not client.exists(key):
                if not self.running:
                    raise ConfigurationError(
                        f"worker {self.hostname} exited before it was ready:\n{self.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise ConfigurationError(
                        f"worker {self.hostname} not ready within {timeout:g} s:\n{self.log_tail()}"
                    )
                # Checked every 20 ms: the wait ends on the key, not on the clock.
                time.sleep(0.02)
        finally:
            client.close()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the worker's output."""
        if self.log_path is None:
            return "(no log)"
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (running tasks go back to the queue), then SIGKILL; pool children by PID."""
        proc = self._proc
        if proc is None:
            return
        stop_process_tree(proc, timeout)
        self._proc = None
        if self._own_dir is not None:
            import shutil

            shutil.rmtree(self._own_dir, ignore_errors=True)
            self._own_dir = None
            self.cwd = None
            self.log_path = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
