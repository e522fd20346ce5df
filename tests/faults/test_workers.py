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
    workers = [start_worker(settings, f"w{i}", extra_env=env) for i in (1, 2)]
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
