"""Real processes for the integration and fault tests: servers and workers we own by PID."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import redis

from vocalborn_tasks._connections import sync_redis
from vocalborn_tasks.config import TaskSettings
from vocalborn_tasks.embedded import die_with_parent
from vocalborn_tasks.testing.worker import child_pids, stop_process_tree

ROOT = Path(__file__).resolve().parent.parent
AUDIO = ROOT / "tests" / "data" / "audio"


def wait_until(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy (test helper only)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}")
        time.sleep(interval)


async def async_wait_until(
    predicate: Callable[[], Awaitable[Any]], timeout: float, interval: float = 0.05, what: str = ""
) -> Any:
    """:func:`wait_until` for async tests: polls ``await predicate()``, never blocking the loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}")
        await asyncio.sleep(interval)


def run_count(settings: TaskSettings, task: str, outcome: str) -> int:
    """How many runs of ``task`` ended with ``outcome`` in the statistics (``stats:count``)."""
    client = redis.Redis.from_url(settings.backend_url)
    try:
        return int(client.hget(settings.key("stats", "count"), f"{task}|{outcome}") or 0)
    finally:
        client.close()


async def wait_for_runs(
    settings: TaskSettings, task: str, outcome: str, at_least: int, timeout: float = 30.0
) -> None:
    """Return once the statistics count ``at_least`` runs of ``task`` ending in ``outcome``.

    A busy worker process writes its runs' statistics folded, at most every 0.5 s
    (``worker/stats_recorder.py``): a test that reads them right after a burst waits for them.
    """

    async def counted() -> bool:
        return await asyncio.to_thread(run_count, settings, task, outcome) >= at_least

    await async_wait_until(counted, timeout, what=f"{at_least} {outcome} runs of {task}")


async def wait_subscribed(
    settings: TaskSettings, task_ids: list[str], *, count: int = 1, timeout: float = 30.0
) -> None:
    """Return once each task's result channel has ``count`` subscribers on the server.

    What a test waits for before an event its waiters must see (a restart, a cancel): the
    server's own answer (PUBSUB NUMSUB), not a pause long enough on an idle machine.
    """
    import redis.asyncio as aioredis

    from vocalborn_tasks.record import RecordKeys

    channels = [RecordKeys.meta(t) for t in task_ids]
    client = aioredis.Redis.from_url(settings.backend_url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            pending = []
            for start in range(0, len(channels), 500):
                pairs = await client.pubsub_numsub(*channels[start : start + 500])
                pending += [c for c, n in pairs if int(n) != count]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(pending)} channels without {count} subscriber(s)")
            await asyncio.sleep(0.02)
    finally:
        await client.aclose()


def settings_env(settings: TaskSettings) -> dict[str, str]:
    """Environment variables that give a worker process the same settings."""
    env: dict[str, str] = {}
    for name, field in type(settings).model_fields.items():
        if name not in settings.model_fields_set:
            continue
        value = getattr(settings, name)
        alias = field.validation_alias
        env_name = (
            alias.choices[0] if alias is not None and hasattr(alias, "choices") else name.upper()
        )
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if isinstance(value, list):
            import json

            value = json.dumps([str(v) for v in value])
        env[str(env_name)] = str(value)
    return env


class WorkerProcess:
    """A ``vocalborn-tasks worker`` subprocess with the given settings.

    Ready means its heartbeat is in Redis: it has connected and its pool is up.
    """

    def __init__(
        self,
        settings: TaskSettings,
        *,
        name: str,
        queues: str = "ai_analysis,maintenance,health",
        concurrency: int = 1,
        pool: str = "prefork",
        extra_env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        module: str = "vocalborn_tasks",
        args: tuple[str, ...] = (),
        node_name: str | None = "",
    ) -> None:
        self.settings = settings
        self.name = name
        # ``node_name``: "" for ``<name>@test``; None to give no ``--hostname`` (the worker's
        # default name, ``celery-<pid>@<host>``, known once the process is started).
        self.explicit_name = node_name is not None
        self.hostname = node_name or f"{name}@test"
        self.queues = queues
        self.concurrency = concurrency
        self.pool = pool
        self.extra_env = dict(extra_env or {})
        self.log_path = (log_dir or Path("/tmp")) / f"worker-{name}-{os.getpid()}.log"
        self.module = module  # a host's worker module works too: ``python -m <module> worker``
        self.args = args  # more ``worker`` options, e.g. ("--include", "myapp.tasks")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, *, wait: bool = True, timeout: float = 60.0) -> WorkerProcess:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "TASK_", "CELERY_"))
        }
        env.update(settings_env(self.settings))
        env.update(self.extra_env)
        # Soft shutdown on SIGTERM; a host's worker module does not re-exec itself to set it.
        env.setdefault("REMAP_SIGTERM", "SIGQUIT")
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "tests"), str(ROOT), env.get("PYTHONPATH", "")]
        )
        cmd = [
            sys.executable,
            "-m",
            self.module,
            "worker",
            "--queues",
            self.queues,
            "--concurrency",
            str(self.concurrency),
            "--pool",
            self.pool,
            *(("--hostname", self.hostname) if self.explicit_name else ()),
            *self.args,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # a crashed test run leaves no worker behind
        )
        log.close()
        if not self.explicit_name:
            self.hostname = f"celery-{self.proc.pid}@{socket.gethostname()}"
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        client = sync_redis(self.settings, "backend", max_connections=1)  # sentinels too
        key = self.settings.key("worker", self.hostname)
        try:

            def ready() -> bool:
                if self.proc is not None and self.proc.poll() is not None:
                    raise AssertionError(f"worker {self.name} exited: {self.log_tail()}")
                # The name is taken before the worker starts; its first beat says it is up.
                return bool(client.hexists(key, "last_seen"))

            wait_until(ready, timeout, what=f"worker {self.name} heartbeat")
        finally:
            client.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def child_pids(self) -> list[int]:
        """PIDs of the pool processes (children of the main process)."""
        return child_pids(self.pid)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL (of the whole process tree) if it lingers."""
        if self.proc is not None:
            stop_process_tree(self.proc, timeout)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the main process (its pool children die with it or are killed too)."""
        proc = self.proc
        if proc is None:
            return
        children = self.child_pids()
        proc.kill()
        proc.wait(timeout=10)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc = None


@contextlib.contextmanager
def running_worker(settings: TaskSettings, **kwargs: Any) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(settings, **kwargs)
    try:
        worker.start()
        yield worker
    finally:
        worker.stop()


def flush(settings: TaskSettings) -> None:
    """Empty both databases (between tests that must not see each other's tasks)."""
    for url in (settings.broker_url, settings.backend_url):
        client = redis.Redis.from_url(url)
        try:
            client.flushdb()
        finally:
            client.close()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(
        ["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30, text=True
    )


def _make_ca(directory: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip


def make_test_certs(directory: Path) -> dict[str, Path]:
    """In ``directory``: a CA, a server certificate it signed for 127.0.0.1, and a second,
    unrelated CA (``ca``, ``cert``, ``key``, ``other_ca``)."""
    _make_ca(directory, "ca")
    _make_ca(directory, "other-ca")
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
        cwd=directory,
    )  # fmt: skip
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.cnf",
        cwd=directory,
    )  # fmt: skip
    return {
        "ca": directory / "ca.crt",
        "other_ca": directory / "other-ca.crt",
        "cert": directory / "server.crt",
        "key": directory / "server.key",
    }
