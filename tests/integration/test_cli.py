"""The ``vocalborn-tasks`` CLI as an operator runs it: subprocesses against a real server.

Most tests use the session server and the module's shared worker. The unreachable-server
tests point ``REDIS_URL`` at a closed port; the demo test runs with no Redis configured at
all, so the demo starts (and must stop) its own embedded server and worker.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import pytest

from support import WorkerProcess
from vocalborn_tasks import Monitor, TaskManager, TaskSettings, TaskState, task_definition
from vocalborn_tasks.embedded import free_port
from vocalborn_tasks.samples import sample_path
from vocalborn_tasks.tasks import TaskContext

pytestmark = pytest.mark.integration

CLI_TIMEOUT_S = 120.0
#: A queue no worker consumes, so a task sent there stays queued until it is cancelled.
HELD_QUEUE = "cli-test-held"


@task_definition(name="tests.cli.never_runs", queue=HELD_QUEUE)
def never_runs(ctx: TaskContext) -> None:
    """Sent to a queue without consumers (the worker would not know it anyway)."""


def cli_env(redis_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "CELERY_"))}
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    env["COLUMNS"] = "200"  # rich: wide enough that table cells never wrap
    return env


def cli(
    *args: str, redis_url: str | None, cwd: Path | None = None, timeout: float = CLI_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vocalborn_tasks", *args],
        env=cli_env(redis_url),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


# --- against the session server and a live worker -------------------------------------------------


def test_test_command_echoes(redis_url: str, worker: WorkerProcess) -> None:
    proc = cli("test", "--message", "hi", redis_url=redis_url)
    assert proc.returncode == 0, explain(proc)
    assert re.search(r"worker \S+ \(pid \d+\) answered: hi$", proc.stdout.strip()), proc.stdout


def test_health_ok_while_a_worker_is_up(redis_url: str, worker: WorkerProcess) -> None:
    proc = cli("health", redis_url=redis_url)
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout.split()[0] in ("healthy", "degraded")
    assert "workers 1" in proc.stdout


def test_health_json(redis_url: str, worker: WorkerProcess) -> None:
    proc = cli("health", "--json", redis_url=redis_url)
    assert proc.returncode == 0, explain(proc)
    report = json.loads(proc.stdout)
    assert report["workers"] == 1
    assert {q["name"] for q in report["queues"]} == {"ai_analysis", "maintenance", "health"}


def test_status_shows_worker_and_queues(redis_url: str, worker: WorkerProcess) -> None:
    proc = cli("status", redis_url=redis_url)
    assert proc.returncode == 0, explain(proc)
    assert worker.hostname in proc.stdout
    assert str(worker.pid) in proc.stdout
    rows = {line.split("│")[1].strip() for line in proc.stdout.splitlines() if "│" in line}
    assert {"ai_analysis", "maintenance", "health"} <= rows, proc.stdout


def test_task_unknown_id_is_not_found(redis_url: str, worker: WorkerProcess) -> None:
    task_id = str(uuid.uuid4())
    proc = cli("task", task_id, redis_url=redis_url)
    assert proc.returncode == 1, explain(proc)
    assert f"{task_id} NOT_FOUND" in proc.stdout


def test_submit_json(redis_url: str, worker: WorkerProcess) -> None:
    proc = cli(
        "submit",
        str(sample_path("en_other_voice")),
        "--reference",
        str(sample_path("en_reference")),
        "--record-id",
        f"cli-{uuid.uuid4().hex[:8]}",
        "--language",
        "en",
        "--json",
        redis_url=redis_url,
    )
    assert proc.returncode == 0, explain(proc) + worker.log_tail()
    results = json.loads(proc.stdout)  # progress went to stderr: stdout is pure JSON
    assert len(results) == 1
    assert 0 <= results[0]["overall_score"] <= 100
    assert 1 <= results[0]["level"] <= 5


def test_submit_table(redis_url: str, worker: WorkerProcess) -> None:
    proc = cli(
        "submit",
        str(sample_path("zh_truncated_half")),
        "-r",
        str(sample_path("zh_reference")),
        "-l",
        "zh-TW",
        redis_url=redis_url,
    )
    assert proc.returncode == 0, explain(proc) + worker.log_tail()
    assert "Analysis results" in proc.stdout
    assert "completeness" in proc.stdout
    assert "zh_truncated_half" in proc.stdout


def test_submit_unreadable_recording_fails_in_one_line(
    redis_url: str, worker: WorkerProcess, tmp_path: Path
) -> None:
    bogus = tmp_path / "notes.wav"
    bogus.write_text("not audio\n" * 50)
    proc = cli(
        "submit", str(bogus), "--reference", str(sample_path("en_reference")), redis_url=redis_url
    )
    assert proc.returncode == 1, explain(proc)
    assert "Traceback" not in proc.stderr
    # Refused at submit or failed on the worker: either way one line, saying why.
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "not a readable audio file" in proc.stderr


def test_purge_queue(redis_url: str, worker: WorkerProcess) -> None:
    proc = cli("purge", "--queue", "maintenance", "--yes", redis_url=redis_url)
    assert proc.returncode == 0, explain(proc)
    assert re.fullmatch(r"purged \d+ tasks from maintenance", proc.stdout.strip()), proc.stdout


async def test_cancel_queued_task(base_settings: TaskSettings, redis_url: str) -> None:
    async with TaskManager(base_settings) as manager:
        handle = await manager.submit(never_runs)
        try:
            assert (await manager.get_task_status(handle)).state is TaskState.PENDING
            cancel = await anyio.run_process(
                [sys.executable, "-m", "vocalborn_tasks", "cancel", handle.id],
                env=cli_env(redis_url),
                check=False,
            )
            assert cancel.returncode == 0, cancel.stderr.decode()
            assert cancel.stdout.decode().strip() == f"{handle.id}: REVOKED"
            assert (await manager.get_task_status(handle)).state is TaskState.REVOKED

            shown = await anyio.run_process(
                [sys.executable, "-m", "vocalborn_tasks", "task", handle.id],
                env=cli_env(redis_url),
                check=False,
            )
            assert shown.returncode == 0, shown.stderr.decode()
            assert f"{handle.id} REVOKED" in shown.stdout.decode()
        finally:
            async with Monitor(base_settings) as monitor:
                await monitor.purge_queue(HELD_QUEUE)


# --- Redis unreachable --------------------------------------------------------------------------


def assert_unreachable(proc: subprocess.CompletedProcess[str], port: int) -> None:
    assert proc.returncode == 3, explain(proc)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"127.0.0.1:{port}" in lines[0]


def test_test_command_unreachable_server(tmp_path: Path) -> None:
    port = free_port()
    proc = cli("test", redis_url=f"redis://127.0.0.1:{port}", cwd=tmp_path, timeout=10)
    assert_unreachable(proc, port)


def test_health_unreachable_server(tmp_path: Path) -> None:
    port = free_port()
    proc = cli("health", redis_url=f"redis://127.0.0.1:{port}", cwd=tmp_path, timeout=10)
    assert_unreachable(proc, port)


# --- the demo, from nothing -----------------------------------------------------------------------


@pytest.mark.slow
def test_demo_starts_and_stops_everything_itself(tmp_path: Path) -> None:
    """No REDIS_* at all (and no .env in its directory): the demo brings its own server."""
    env = cli_env(None)
    env["TMPDIR"] = str(tmp_path)  # its server's data dir and worker log land here
    proc = subprocess.Popen(
        [sys.executable, "-m", "vocalborn_tasks", "demo", "--workers", "2"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=CLI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # like Ctrl+C: it stops its own server and worker
        try:
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        raise AssertionError(f"demo did not finish:\n{stdout}\n{stderr}") from None
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert result.returncode == 0, explain(result)
    assert "starting embedded Valkey" in stdout
    assert "Analysis results" in stdout
    header = next(line for line in stdout.splitlines() if line.startswith("record"))
    assert header.split() == [
        "record",
        "overall",
        "level",
        "pronunciation",
        "fluency",
        "rhythm",
        "tone",
        "clarity",
        "completeness",
        "reliable",
    ]
    for sample in ("en_other_voice", "en_truncated_half", "zh_other_voice", "zh_truncated_half"):
        assert f"demo-{sample}" in stdout
    # Everything it started is gone: no server data dir, no worker log left behind.
    assert not list(tmp_path.glob("vocalborn-server-*")), list(tmp_path.iterdir())
    assert not list(tmp_path.glob("vocalborn-demo-worker-*.log"))
