"""Workers dying, being stopped, and choking on input: nothing is lost, nothing stored twice."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from faults.helpers import EXEC_KEY, SINK_KEY
from support import AUDIO, WorkerProcess, wait_until
from vocalborn_tasks import (
    AnalysisRequest,
    TaskFailedError,
    TaskManager,
    TaskSettings,
    TaskState,
)
from vocalborn_tasks.tasks import echo

pytestmark = pytest.mark.faults

ANALYSIS_ENV = {
    "ANALYZER": "faults.helpers:FaultAnalyzer",
    "RESULT_SINK": "faults.helpers:counting_sink",
}


def _request(record: str, attempt: Path | None = None) -> AnalysisRequest:
    return AnalysisRequest(
        practice_record_id=record,
        recording=str(attempt or AUDIO / "en_other_voice.flac"),
        reference=str(AUDIO / "en_reference.flac"),
        language="en",
    )


def _client(settings: TaskSettings) -> redis.Redis:
    return redis.Redis.from_url(settings.backend_url, decode_responses=True)


def _holder(settings: TaskSettings, workers: list[WorkerProcess]) -> WorkerProcess | None:
    """The worker whose heartbeat says it is running a task."""
    client = _client(settings)
    try:
        for w in workers:
            if client.hget(settings.key("worker", w.hostname), "active") == "1":
                return w
    finally:
        client.close()
    return None


async def _wait_progress(manager: TaskManager, task_id: str, percent: float) -> None:
    async for status in manager.watch(task_id):
        if status.state is TaskState.PROGRESS and (status.progress or 0) >= percent:
            return
    raise AssertionError("the task finished before it reached the expected progress")


async def test_sigkill_worker_main_process_mid_analysis(
    make_settings: Callable[..., TaskSettings], start_worker: Callable[..., WorkerProcess]
) -> None:
    """Scenario 1: the task completes on the other worker within a minute, sink called once."""
    settings = make_settings()
    env = {**ANALYSIS_ENV, "FAULTS_ANALYSIS_DELAY": "4"}
    workers = [start_worker(settings, f"w{i}", extra_env=env, wait=False) for i in (1, 2)]
    for w in workers:  # both start side by side; each is ready once its heartbeat is in Redis
        w.wait_ready()
    async with TaskManager(settings) as manager:
        task_id = await manager.submit_audio_analysis(_request("rec-kill-main"))
        await asyncio.wait_for(_wait_progress(manager, task_id, 40.0), 30)
        victim = wait_until(lambda: _holder(settings, workers), 5, what="the busy worker")
        killed_at = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)  # the main process only; its pool child is orphaned
        result = await manager.wait_for_result(task_id, timeout=60)
        elapsed = time.monotonic() - killed_at
        status = await manager.get_task_status(task_id)
    assert elapsed < 60, elapsed
    assert result.practice_record_id == "rec-kill-main"
    assert status.state is TaskState.SUCCESS
    client = _client(settings)
    executions = int(client.hget(EXEC_KEY, "en_other_voice.flac") or 0)
    sink_calls = int(client.hget(SINK_KEY, task_id) or 0)
    client.close()
    assert executions >= 2, "the task was not run again after its worker died"
    assert sink_calls == 1


async def test_sigkill_pool_child_and_poison_recording(
    make_settings: Callable[..., TaskSettings],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    """Scenario 2: a killed pool child's task is redelivered and completes; a recording that
    always kills the child ends as FAILURE ``delivery_limit`` after N deliveries, and later
    tasks still complete."""
    settings = make_settings(max_deliveries=3)
    env = {**ANALYSIS_ENV, "FAULTS_ANALYSIS_DELAY": "2"}
    worker = start_worker(settings, "solo-child", extra_env=env)
    poison = tmp_path / "poison.flac"
    shutil.copy(AUDIO / "en_other_voice.flac", poison)
    async with TaskManager(settings) as manager:
        task_id = await manager.submit_audio_analysis(_request("rec-kill-child"))
        await asyncio.wait_for(_wait_progress(manager, task_id, 30.0), 30)
        (child,) = worker.child_pids()
        os.kill(child, signal.SIGKILL)
        result = await manager.wait_for_result(task_id, timeout=60)
        assert result.practice_record_id == "rec-kill-child"

        poison_id = await manager.submit_audio_analysis(_request("rec-poison", poison))
        after_id = await manager.submit_audio_analysis(_request("rec-after-poison"))
        with pytest.raises(TaskFailedError) as failed:
            await manager.wait_for_result(poison_id, timeout=90)
        after = await manager.wait_for_result(after_id, timeout=60)
    assert failed.value.code == "delivery_limit", failed.value
    assert after.practice_record_id == "rec-after-poison"
    client = _client(settings)
    assert int(client.hget(EXEC_KEY, "en_other_voice.flac") or 0) == 3  # 2 runs + the later one
    assert int(client.hget(EXEC_KEY, "poison.flac") or 0) == settings.max_deliveries
    assert int(client.hget(SINK_KEY, task_id) or 0) == 1
    assert int(client.hget(SINK_KEY, after_id) or 0) == 1
    assert client.hget(SINK_KEY, poison_id) is None
    client.close()
    assert worker.proc is not None and worker.proc.poll() is None, "the worker itself died"


async def test_sigterm_mid_task_requeues_it(
    make_settings: Callable[..., TaskSettings], start_worker: Callable[..., WorkerProcess]
) -> None:
    """Scenario 3: SIGTERM soft-stops the worker; the running task is handed back and finishes
    on the other worker; nothing is lost and the sink sees it once."""
    settings = make_settings(worker_soft_shutdown_s=2.0)
    env = {**ANALYSIS_ENV, "FAULTS_ANALYSIS_DELAY": "10"}
    first = start_worker(settings, "term1", extra_env=env)
    async with TaskManager(settings) as manager:
        task_id = await manager.submit_audio_analysis(_request("rec-sigterm"))
        queued_id = await manager.submit_audio_analysis(_request("rec-sigterm-queued"))
        await asyncio.wait_for(_wait_progress(manager, task_id, 5.0), 30)
        second = start_worker(settings, "term2", extra_env={**env, "FAULTS_ANALYSIS_DELAY": "0"})
        first.signal(signal.SIGTERM)
        assert first.proc is not None
        first.proc.wait(timeout=30)  # 2 s of soft shutdown, then cold: the task goes back
        results = [await manager.wait_for_result(t, timeout=60) for t in (task_id, queued_id)]
    assert [r.practice_record_id for r in results] == ["rec-sigterm", "rec-sigterm-queued"]
    client = _client(settings)
    assert int(client.hget(SINK_KEY, task_id) or 0) == 1
    assert int(client.hget(SINK_KEY, queued_id) or 0) == 1
    client.close()
    assert second.proc is not None and second.proc.poll() is None


def _queue_drained(settings: TaskSettings, queue: str) -> bool:
    client = redis.Redis.from_url(settings.broker_url)
    try:
        return client.llen(queue) == 0 and client.hlen("unacked") == 0
    finally:
        client.close()


async def test_revocations_survive_a_restart_of_every_worker(
    make_settings: Callable[..., TaskSettings], start_worker: Callable[..., WorkerProcess]
) -> None:
    """Scenario 9: one running and one queued task revoked, all workers restarted: both stay
    REVOKED, neither runs to SUCCESS, and the queue moves on past them."""
    settings = make_settings(worker_soft_shutdown_s=1.0)
    first = start_worker(settings, "rev1")
    async with TaskManager(settings) as manager:
        running = await manager.submit(echo, "running", delay_s=30.0)
        queued = await manager.submit(echo, "queued")
        async for status in manager.watch(running):
            if status.state is TaskState.PROGRESS:
                break
        for handle in (running, queued):
            assert (await manager.cancel(handle)).state is TaskState.REVOKED
        first.stop()
        second = start_worker(settings, "rev2")
        sentinel = await manager.submit(echo, "after")
        assert (await manager.wait_for_result(sentinel, timeout=60)).message == "after"
        await asyncio.to_thread(
            wait_until, lambda: _queue_drained(settings, "health"), 30, 0.1, "drained"
        )
        states = [(await manager.get_task_status(h)).state for h in (running, queued)]
    assert states == [TaskState.REVOKED, TaskState.REVOKED]
    assert second.proc is not None and second.proc.poll() is None


async def test_pickle_unknown_task_and_malformed_json_are_discarded(
    make_settings: Callable[..., TaskSettings],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    """Scenario 10: hostile or broken messages are dropped; the worker keeps working."""
    import base64
    import pickle

    from vocalborn_tasks._protocol import build_task_message
    from vocalborn_tasks.record import new_task_id

    settings = make_settings()
    worker = start_worker(settings, "hostile", pool="solo")
    pwned = tmp_path / "pickle-was-loaded"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.mkdir, (str(pwned),))

    pickled = json.loads(build_task_message(new_task_id(), "vocalborn.test", {}, "health"))
    pickled["content-type"] = "application/x-python-serialize"
    pickled["content-encoding"] = "binary"
    pickled["body"] = base64.b64encode(pickle.dumps(((), {"x": Exploit()}, {}))).decode()
    unknown = build_task_message(new_task_id(), "no.such.task", {}, "health")
    client = redis.Redis.from_url(settings.broker_url)
    client.lpush(
        "health",
        json.dumps(pickled),
        unknown,
        b"{this is not json",
        json.dumps({"body": "!!", "headers": "wrong shape"}),
    )
    client.close()
    async with TaskManager(settings) as manager:
        handle = await manager.submit(echo, "still healthy")
        assert (await manager.wait_for_result(handle, timeout=60)).message == "still healthy"
    await asyncio.to_thread(
        wait_until, lambda: _queue_drained(settings, "health"), 30, 0.1, "drained"
    )
    assert not pwned.exists(), "the worker unpickled a message"
    assert worker.proc is not None and worker.proc.poll() is None


# --- issue 16: worker names ---------------------------------------------------------------------
def _ready(worker: WorkerProcess) -> bool:
    """Celery's "<name> ready." line: the worker consumes (whatever name it runs under)."""
    if worker.proc is not None and worker.proc.poll() is not None:
        raise AssertionError(f"worker {worker.name} exited: {worker.log_tail()}")
    return " ready." in worker.log_path.read_text(errors="replace")


def _executions(settings: TaskSettings, task_ids: list[str]) -> list[int]:
    client = _client(settings)
    try:
        return [int(client.hget(EXEC_KEY, t) or 0) for t in task_ids]
    finally:
        client.close()


async def _two_long_tasks_on_two_workers(settings: TaskSettings) -> list[str]:
    """Submit a 4 s and a 9 s ``faults.count``, wait until both run (one per worker: each has
    one process), then for both results. Returns their ids.

    The dead-worker reaper runs every 0.5 s and hands back any message reserved for more than
    2 s that no live heartbeat lists: with two workers sharing a heartbeat, each one's tasks
    vanish from it at every beat of the other, and the 9 s task runs again once the worker of
    the 4 s one is free.
    """
    from faults.helpers import count

    async with TaskManager(settings) as manager:
        handles = [
            await manager.submit(count, 1, delay_s=4.0),
            await manager.submit(count, 2, delay_s=9.0),
        ]
        ids = [str(h) for h in handles]
        await asyncio.to_thread(
            wait_until, lambda: _executions(settings, ids) == [1, 1], 30, 0.05, "both running"
        )
        results = [await manager.wait_for_result(h, timeout=60) for h in handles]
    assert results == [1, 2]
    return ids


async def test_two_workers_with_the_default_name_run_each_task_once(
    make_settings: Callable[..., TaskSettings], start_worker: Callable[..., WorkerProcess]
) -> None:
    """Issue 16, bug 1: two workers started as the README shows (no ``-n``) get distinct
    names, both show in the status, and neither runs the other's tasks again."""
    from vocalborn_tasks import Monitor

    settings = make_settings()
    workers = [
        start_worker(
            settings,
            f"default{i}",
            node_name=None,
            wait=False,
            args=("--include", "faults.helpers"),
        )
        for i in (1, 2)
    ]
    for w in workers:
        await asyncio.to_thread(wait_until, lambda w=w: _ready(w), 60, 0.05, f"{w.name} ready")
    ids = await _two_long_tasks_on_two_workers(settings)
    # A second run would have started by now (the 9 s task's copy goes back while it runs).
    assert _executions(settings, ids) == [1, 1]
    async with Monitor(settings) as monitor:
        names = sorted(s.hostname for s in await monitor.get_worker_stats())
    assert names == sorted(w.hostname for w in workers), names
    client = _client(settings)
    assert [int(client.hget(SINK_KEY, t) or 0) for t in ids] == [1, 1]
    client.close()
    assert all(w.proc is not None and w.proc.poll() is None for w in workers)


async def test_a_second_worker_under_a_live_name_refuses_to_start(
    make_settings: Callable[..., TaskSettings], start_worker: Callable[..., WorkerProcess]
) -> None:
    """Issue 16, bug 1: two workers started at once with one ``-n``: exactly one runs, the
    other exits 2 with one line; every task body runs once."""
    settings = make_settings()
    name = "same@test"
    pair = [
        start_worker(
            settings, f"same{i}", node_name=name, wait=False, args=("--include", "faults.helpers")
        )
        for i in (1, 2)
    ]

    def settled() -> bool:
        return any(w.proc is not None and w.proc.poll() is not None for w in pair) and any(
            " ready." in w.log_path.read_text(errors="replace") for w in pair
        )

    await asyncio.to_thread(wait_until, settled, 60, 0.05, "one ready, one refused")
    refused = next(w for w in pair if w.proc is not None and w.proc.poll() is not None)
    running = next(w for w in pair if w is not refused)
    assert refused.proc is not None and refused.proc.returncode == 2
    lines = [ln for ln in refused.log_path.read_text().splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert "same@test" in lines[0] and "held by a live worker" in lines[0]
    assert running.proc is not None and running.proc.poll() is None
    # A third one, started later, is refused too; the running one is not disturbed.
    late = start_worker(settings, "same3", node_name=name, wait=False)
    assert late.proc is not None and late.proc.wait(timeout=60) == 2

    from faults.helpers import count

    async with TaskManager(settings) as manager:
        handles = [await manager.submit(count, i, delay_s=3.0) for i in (1, 2)]
        assert [await manager.wait_for_result(h, timeout=60) for h in handles] == [1, 2]
    assert _executions(settings, [str(h) for h in handles]) == [1, 1]


# --- issue 16: workers that differ in --include -------------------------------------------------
#: A value only the message body holds: no log line may contain it.
BODY_MARKER = 987654321


def _logs(*workers: WorkerProcess) -> list[str]:
    return [ln for w in workers for ln in w.log_path.read_text(errors="replace").splitlines()]


async def test_a_task_reaches_the_worker_that_knows_it(
    make_settings: Callable[..., TaskSettings], start_worker: Callable[..., WorkerProcess]
) -> None:
    """Issue 16, bug 4: a worker without the host's module hands the task back (one line,
    no body) until a worker with ``--include`` takes it; it runs exactly once."""
    from faults.helpers import count

    settings = make_settings(unknown_task_max_offers=10)
    stranger = start_worker(settings, "stranger", queues="ai_analysis")
    async with TaskManager(settings) as manager:
        handle = await manager.submit(count, BODY_MARKER)
        await asyncio.to_thread(
            wait_until,
            lambda: any(str(handle) in ln and "handed back" in ln for ln in _logs(stranger)),
            30,
            0.05,
            "the first hand-back",
        )
        knower = start_worker(
            settings, "knower", queues="ai_analysis", args=("--include", "faults.helpers")
        )
        assert await manager.wait_for_result(handle, timeout=90) == BODY_MARKER
    assert _executions(settings, [str(handle)]) == [1]
    lines = _logs(stranger, knower)
    assert not [ln for ln in lines if str(BODY_MARKER) in ln], "a log line holds the body"
    assert not [ln for ln in lines if "NotRegistered" in ln or "Traceback" in ln]


async def test_a_task_no_worker_knows_fails_after_the_bound(
    make_settings: Callable[..., TaskSettings], start_worker: Callable[..., WorkerProcess]
) -> None:
    """Issue 16, bug 4: with no worker knowing it, the task ends FAILURE ``unknown_task`` after
    ``UNKNOWN_TASK_MAX_OFFERS`` hand-backs, logged without its body; the worker goes on."""
    from faults.helpers import count

    settings = make_settings()  # unknown_task_max_offers=3
    stranger = start_worker(settings, "stranger", queues="ai_analysis,health")
    async with TaskManager(settings) as manager:
        handle = await manager.submit(count, BODY_MARKER)
        with pytest.raises(TaskFailedError) as failed:
            await manager.wait_for_result(handle, timeout=60)
        after = await manager.submit(echo, "still serving")
        assert (await manager.wait_for_result(after, timeout=60)).message == "still serving"
    assert failed.value.code == "unknown_task", failed.value
    lines = _logs(stranger)
    mine = [ln for ln in lines if str(handle) in ln]
    assert len([ln for ln in mine if "handed back" in ln]) == settings.unknown_task_max_offers - 1
    assert len([ln for ln in mine if "[unknown_task]" in ln]) == 1
    assert not [ln for ln in lines if str(BODY_MARKER) in ln], "a log line holds the body"
    assert _executions(settings, [str(handle)]) == [0]


# --- issue 16: cancel(terminate=True) without a Celery app in the host ---------------------------
_HOST_CANCEL = """
import asyncio, sys
from vocalborn_tasks import TaskManager, TaskSettings, TaskState
from vocalborn_tasks.tasks import TaskContext, task_definition

@task_definition(name="faults.count", queue="ai_analysis")
def count(ctx: TaskContext, n: int, delay_s: float = 0.0, gate_dir: str | None = None) -> int:
    raise AssertionError("runs on the worker only")

async def main() -> None:
    async with TaskManager(TaskSettings()) as manager:
        handle = await manager.submit(count, 1, delay_s=120.0)
        async for status in manager.watch(handle):
            if status.state is TaskState.STARTED:
                break
        print("running", handle, flush=True)
        sys.stdin.readline()  # the test noted the pool child running it
        print("cancelled", (await manager.cancel(handle, terminate=True)).state, flush=True)

asyncio.run(main())
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("celery", "kombu", "billiard"))
print("loaded", loaded, flush=True)
"""


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"
    except (OSError, IndexError):
        return True


async def test_cancel_terminate_stops_the_task_without_celery_in_the_host(
    make_settings: Callable[..., TaskSettings], start_worker: Callable[..., WorkerProcess]
) -> None:
    """Issue 16: a host process cancels a running task with terminate=True: the pool child
    running it is stopped, and the host never imported celery, kombu or billiard."""
    import sys

    from support import ROOT, settings_env

    settings = make_settings()
    worker = start_worker(
        settings, "term", queues="ai_analysis", args=("--include", "faults.helpers")
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "TASK_", "CELERY_"))}
    env.update(settings_env(settings))
    env["PYTHONPATH"] = str(ROOT / "src")
    host = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _HOST_CANCEL,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert host.stdout is not None and host.stdin is not None
        line = (await asyncio.wait_for(host.stdout.readline(), 60)).decode()
        assert line.startswith("running "), line
        (child,) = worker.child_pids()
        host.stdin.write(b"\n")
        await host.stdin.drain()
        raw_out, raw_err = await asyncio.wait_for(host.communicate(), 60)
        out, err = raw_out.decode(), raw_err.decode()
    finally:
        if host.returncode is None:
            host.kill()
            await host.wait()
    assert host.returncode == 0, err
    assert "cancelled REVOKED" in out, out
    assert "loaded []" in out, out
    await asyncio.to_thread(wait_until, lambda: _gone(child), 30, 0.05, "the child terminated")
    assert worker.proc is not None and worker.proc.poll() is None


async def test_a_missed_terminate_message_is_caught_by_the_heartbeat(
    make_settings: Callable[..., TaskSettings], start_worker: Callable[..., WorkerProcess]
) -> None:
    """Issue 16: a terminate the worker never heard (written while it was reconnecting: here,
    the record without the message) stops the running copy within one heartbeat."""
    from faults.helpers import count
    from vocalborn_tasks.record import RecordKeys

    settings = make_settings()
    worker = start_worker(
        settings, "term", queues="ai_analysis", args=("--include", "faults.helpers")
    )
    async with TaskManager(settings) as manager:
        handle = await manager.submit(count, 1, delay_s=120.0)
        async for status in manager.watch(handle):
            if status.state is TaskState.STARTED:
                break
        (child,) = worker.child_pids()
        # The cancel as the revoke script records it, minus the message on the channel.
        keys = RecordKeys.of(settings)
        client = _client(settings)
        client.zadd(keys.revoked, {str(handle): time.time()})
        client.zadd(keys.terminate, {str(handle): time.time()})
        client.close()
        await asyncio.to_thread(wait_until, lambda: _gone(child), 30, 0.05, "the child terminated")
    assert _executions(settings, [str(handle)]) == [1]
