"""TaskManager against a real server and a real worker process (no mocks)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from support import AUDIO, WorkerProcess, flush, running_worker, wait_subscribed, wait_until
from vocalborn_tasks import (
    AnalysisRequest,
    AnalysisResult,
    BrokerUnavailableError,
    InvalidRequestError,
    ManagerClosedError,
    RecordingAccessError,
    TaskDefinition,
    TaskFailedError,
    TaskManager,
    TaskNotFoundError,
    TaskRevokedError,
    TaskSettings,
    TaskState,
    TaskTimeoutError,
)
from vocalborn_tasks.embedded import free_port
from vocalborn_tasks.tasks import EchoResult, TaskContext, echo, task_definition
from vocalborn_tasks.worker.result_logging import HIDDEN

pytestmark = pytest.mark.integration


@task_definition(name="tests.never_consumed", queue="nobody_listens")
def never_consumed(ctx: TaskContext, n: int) -> int:
    return n


def _request(
    record: str, attempt: str = "en_other_voice.flac", reference: str = "en_reference.flac"
) -> AnalysisRequest:
    return AnalysisRequest(
        practice_record_id=record,
        recording=str(AUDIO / attempt),
        reference=str(AUDIO / reference),
        language="en",
    )


def _keys(settings: TaskSettings, pattern: str) -> int:
    client = redis.Redis.from_url(settings.backend_url)
    try:
        return len(list(client.scan_iter(pattern, count=1000)))
    finally:
        client.close()


async def test_analysis_end_to_end_with_progress(
    base_settings: TaskSettings, tmp_path: Path
) -> None:
    # An analysis takes well under the default 0.25 s between stored progress reports, so
    # this worker stores every report (its own databases: the shared worker cannot take it).
    settings = TaskSettings(
        redis_url=base_settings.redis_url,
        redis_db_broker=4,
        redis_db_backend=5,
        worker_heartbeat_s=0.5,
        progress_min_interval_s=0.0,
        log_task_results=True,
    )
    flush(settings)
    with running_worker(settings, name="progress", pool="solo", log_dir=tmp_path) as own:
        async with TaskManager(settings) as manager:
            task_id = await manager.submit_audio_analysis(_request("rec-e2e"))
            seen = [status async for status in manager.watch(task_id)]
            result = await manager.wait_for_result(task_id, timeout=60)
            status = await manager.get_task_status(task_id)
        # The result is stored before the worker logs it: wait for the line before stopping
        # the worker (a solo worker's SIGTERM handler would otherwise hold the main thread).
        await asyncio.to_thread(
            wait_until,
            lambda: f"[{task_id}] succeeded" in own.log_path.read_text(errors="replace"),
            30,
            0.05,
            "the worker's success line",
        )
    assert seen[-1].state is TaskState.SUCCESS
    progress = [s.progress for s in seen if s.state is TaskState.PROGRESS]
    assert progress, [s.state for s in seen]
    assert progress == sorted(progress)
    steps = {s.step for s in seen if s.step}
    assert len(steps) >= 3, steps
    assert isinstance(result, AnalysisResult)
    assert result.practice_record_id == "rec-e2e"
    assert 1 <= result.level <= 5
    assert result.analyzer.name
    assert status.state is TaskState.SUCCESS
    assert status.task_name == "vocalborn.analyze_audio"
    assert status.queue == "ai_analysis"
    # This worker opted in to logging results (LOG_TASK_RESULTS=true).
    assert "'overall_score'" in own.log_path.read_text(errors="replace")


async def test_progress_is_stored_at_most_every_quarter_second_by_default(
    base_settings: TaskSettings, worker: WorkerProcess
) -> None:
    # echo reports every 0.1 s: 15 reports in 1.5 s, of which the default interval (0.25 s,
    # counted from the start) stores at most 6; each stored one reaches a watcher.
    async with TaskManager(base_settings) as manager:
        handle = await manager.submit(echo, "throttled", delay_s=1.5)
        seen = [status async for status in manager.watch(handle)]
    progress = [s for s in seen if s.state is TaskState.PROGRESS]
    assert seen[-1].state is TaskState.SUCCESS
    assert 2 <= len(progress) <= 6, [(s.state, s.progress) for s in seen]


async def test_same_sentence_scores_above_a_different_sentence(
    base_settings: TaskSettings, worker: WorkerProcess
) -> None:
    async with TaskManager(base_settings) as manager:
        ids = await manager.submit_batch(
            [_request("rec-same"), _request("rec-diff", attempt="en_different_sentence.flac")]
        )
        same, diff = await asyncio.gather(*(manager.wait_for_result(i, timeout=60) for i in ids))
    assert same.pronunciation_accuracy > diff.pronunciation_accuracy
    assert diff.level >= same.level

    # Patients' scores stay out of the worker's log by default; the success line remains.
    def both_logged() -> str:
        # Two pool processes write the log: wait for both tasks' "succeeded" lines.
        text = worker.log_path.read_text(errors="replace")
        done = [line for line in text.splitlines() if "succeeded" in line]
        return text if all(any(i in line for line in done) for i in ids) else ""

    log = wait_until(both_logged, timeout=10)
    succeeded = [line for line in log.splitlines() if ids[0] in line and "succeeded" in line]
    assert succeeded and all(HIDDEN in line for line in succeeded), succeeded
    assert "overall_score" not in log


async def test_reference_text_reaches_the_worker_engine(
    base_settings: TaskSettings, worker: WorkerProcess
) -> None:
    """The request's ``reference_text`` travels through the queue and labels the units."""
    text = "The big ship is waiting in the harbor tonight."
    labelled = _request("rec-text").model_copy(update={"reference_text": text})
    async with TaskManager(base_settings) as manager:
        ids = await manager.submit_batch([labelled, _request("rec-no-text")])
        with_text, without = await asyncio.gather(
            *(manager.wait_for_result(i, timeout=60) for i in ids)
        )
    assert with_text.metrics["units_expected"] == len(text.split())
    assert without.metrics["units_expected"] is None


async def test_inflight_resubmission_returns_the_same_id(base_settings: TaskSettings) -> None:
    # No worker consumes ai_analysis here... but the module worker does: use a record whose
    # first task cannot finish before the second submit (same event-loop turn, pipelined).
    async with TaskManager(base_settings) as manager:
        first, second = await manager.submit_batch([_request("rec-dup"), _request("rec-dup")])
        assert first == second
        third = await manager.submit_audio_analysis(_request("rec-dup"))
        status = await manager.get_task_status(first)
        if not status.is_final:
            assert third == first
        forced = await manager.submit_audio_analysis(_request("rec-dup"), force=True)
        assert forced != first
        await manager.wait_for_result(forced, timeout=60)
        # Once finished, a resubmission is a new analysis.
        again = await manager.submit_audio_analysis(_request("rec-dup"))
        assert again not in (first, forced)
        await manager.wait_for_result(again, timeout=60)


async def test_seed_keyword_form_uses_the_resolver(
    base_settings: TaskSettings, worker: WorkerProcess
) -> None:
    class Resolver:
        async def locate(
            self, practice_record_id: str, analysis_params: dict[str, object]
        ) -> tuple[str, str]:
            assert analysis_params == {"analysis_type": "full"}
            return str(AUDIO / "zh_other_voice.flac"), str(AUDIO / "zh_reference.flac")

        def fetch(self, location: str) -> bytes | Path:
            raise AssertionError("local files need no fetch")

    async with TaskManager(base_settings, resolver=Resolver()) as manager:
        task_id = await manager.submit_audio_analysis(
            practice_record_id="123", analysis_params={"analysis_type": "full"}
        )
        result = await manager.wait_for_result(task_id, timeout=60)
    assert result.practice_record_id == "123"


async def test_seed_keyword_form_without_resolver_is_a_clear_error(
    base_settings: TaskSettings,
) -> None:
    async with TaskManager(base_settings) as manager:
        with pytest.raises(InvalidRequestError, match="no recording resolver"):
            await manager.submit_audio_analysis(practice_record_id="123")


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        (
            {"practice_record_id": "r1", "recording": "/nonexistent.wav", "reference": "REF"},
            RecordingAccessError,
        ),
        (
            {"practice_record_id": "r1", "recording": "http://evil/x.wav", "reference": "REF"},
            RecordingAccessError,
        ),
        (
            {"practice_record_id": "r1", "recording": "/etc/passwd", "reference": "REF"},
            RecordingAccessError,
        ),
        (
            {"practice_record_id": "r1", "recording": "NOT_AUDIO", "reference": "REF"},
            InvalidRequestError,
        ),
        (
            {"practice_record_id": "r1", "recording": "EMPTY", "reference": "REF"},
            InvalidRequestError,
        ),
        ({"practice_record_id": "", "recording": "REF", "reference": "REF"}, InvalidRequestError),
        (
            {
                "practice_record_id": "r1",
                "recording": "REF",
                "reference": "REF",
                "analysis_params": {"x": "y" * 1_000_000},
            },
            InvalidRequestError,
        ),
        ({"practice_record_id": 42, "recording": "REF", "reference": "REF"}, InvalidRequestError),
    ],
)
async def test_bad_requests_are_refused_before_anything_is_queued(
    base_settings: TaskSettings, fields: dict[str, object], error: type[Exception]
) -> None:
    swap = {
        "REF": str(AUDIO / "en_reference.flac"),
        "NOT_AUDIO": str(AUDIO / "not_audio.wav"),
        "EMPTY": str(AUDIO / "empty.wav"),
    }
    fields = {k: swap.get(v, v) if isinstance(v, str) else v for k, v in fields.items()}
    settings = base_settings.model_copy(update={"recording_roots": [AUDIO]})
    before = _keys(settings, settings.key("task", "*"))
    async with TaskManager(settings) as manager:
        with pytest.raises(error):
            await manager.submit_audio_analysis(**fields)  # type: ignore[arg-type]
    assert _keys(settings, settings.key("task", "*")) == before


async def test_unreadable_audio_inside_a_readable_header_fails_with_a_code(
    base_settings: TaskSettings, worker: WorkerProcess
) -> None:
    async with TaskManager(base_settings) as manager:
        task_id = await manager.submit_audio_analysis(
            _request("rec-silence", attempt="silence.wav")
        )
        with pytest.raises(TaskFailedError) as info:
            await manager.wait_for_result(task_id, timeout=60)
        status = await manager.get_task_status(task_id)
    assert info.value.code == "no_speech"
    assert info.value.remote_type == "AudioError"
    assert status.state is TaskState.FAILURE
    assert status.error is not None
    assert status.error.code == "no_speech"


async def test_typed_custom_task_round_trip(
    base_settings: TaskSettings, worker: WorkerProcess
) -> None:
    async with TaskManager(base_settings) as manager:
        handle = await manager.submit(echo, "bonjour")
        result = await manager.wait_for_result(handle, timeout=30)
        with pytest.raises(InvalidRequestError):
            await manager.submit(echo)  # type: ignore[call-arg]
    assert isinstance(result, EchoResult)
    assert result.message == "bonjour"


async def test_timeout_cancel_and_revoked(base_settings: TaskSettings) -> None:
    definition: TaskDefinition[[int], int] = never_consumed
    async with TaskManager(base_settings) as manager:
        handle = await manager.submit(definition, 7)
        assert (await manager.get_task_status(handle)).state is TaskState.PENDING
        with pytest.raises(TaskTimeoutError):
            await manager.wait_for_result(handle, timeout=0.3)
        waiter = asyncio.ensure_future(manager.wait_for_result(handle, timeout=30))
        await wait_subscribed(base_settings, [handle.id])  # the cancel's message reaches it
        status = await manager.cancel(handle)
        assert status.state is TaskState.REVOKED
        with pytest.raises(TaskRevokedError):
            await waiter


async def test_cancel_running_task(base_settings: TaskSettings, worker: WorkerProcess) -> None:
    async with TaskManager(base_settings) as manager:
        handle = await manager.submit(echo, "slow", delay_s=30)
        async for status in manager.watch(handle):
            if status.state is TaskState.PROGRESS:
                break
        started = time.monotonic()
        await manager.cancel(handle)
        with pytest.raises(TaskRevokedError):
            await manager.wait_for_result(handle, timeout=10)
        # The pool process was told to stop: a new task runs well before the 30 s are up.
        follow = await manager.submit(echo, "after")
        assert (await manager.wait_for_result(follow, timeout=20)).message == "after"
        assert time.monotonic() - started < 25


async def test_unknown_ids(base_settings: TaskSettings) -> None:
    async with TaskManager(base_settings) as manager:
        assert (await manager.get_task_status("no-such-task")).state is TaskState.NOT_FOUND
        with pytest.raises(TaskNotFoundError):
            await manager.wait_for_result("no-such-task", timeout=5)


async def test_closed_manager_refuses_use(base_settings: TaskSettings) -> None:
    manager = TaskManager(base_settings)
    async with manager:
        pass
    with pytest.raises(ManagerClosedError):
        await manager.get_task_status("x")


async def test_unreachable_server_fails_fast(base_settings: TaskSettings) -> None:
    port = free_port()
    settings = TaskSettings(redis_url=f"redis://127.0.0.1:{port}", redis_connect_timeout_s=2)
    async with TaskManager(settings) as manager:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailableError, match=f"127.0.0.1:{port}"):
            await manager.submit_audio_analysis(_request("rec-down"))
        assert time.monotonic() - started < 5
        with pytest.raises(BrokerUnavailableError):
            await manager.wait_for_result("some-id", timeout=5)


async def test_many_waiters_share_one_connection(
    base_settings: TaskSettings, worker: WorkerProcess
) -> None:
    client = redis.Redis.from_url(base_settings.backend_url)
    try:
        async with TaskManager(base_settings) as manager:
            handles = [await manager.submit(echo, f"m{i}") for i in range(200)]
            before = len(client.client_list())
            waits = [asyncio.ensure_future(manager.wait_for_result(h, timeout=60)) for h in handles]
            results = await asyncio.gather(*waits)
            during = len(client.client_list())
        assert [r.message for r in results] == [f"m{i}" for i in range(200)]
        # One pub/sub connection plus at most a pool of command connections, not 200.
        assert during - before <= 12, (before, during)
    finally:
        client.close()


async def test_a_burst_of_concurrent_submits_waits_for_pooled_connections(
    base_settings: TaskSettings,
) -> None:
    client = redis.Redis.from_url(base_settings.broker_url)
    try:
        before = len(client.client_list())
        async with TaskManager(base_settings) as manager:
            handles = await asyncio.gather(
                *(manager.submit(never_consumed, i) for i in range(1000))
            )
            assert len({h.id for h in handles}) == 1000
            assert client.llen("nobody_listens") >= 1000
            # Bounded pools: two of 64 connections at most (broker and backend databases).
            assert len(client.client_list()) - before <= 2 * 64
    finally:
        client.delete("nobody_listens")
        client.close()


def test_opening_warms_the_probe_so_the_first_submit_imports_nothing(
    base_settings: TaskSettings,
) -> None:
    # Importing soundfile (and numpy) holds the GIL for 30-45 ms: at open, not in a submit.
    code = f"""
import asyncio, sys
from vocalborn_tasks import AnalysisRequest, TaskManager, TaskSettings

async def main():
    async with TaskManager(TaskSettings(redis_url={base_settings.backend_url!r})) as manager:
        assert "soundfile" in sys.modules and "numpy" in sys.modules
        before = set(sys.modules)
        await manager.submit_audio_analysis(AnalysisRequest(
            practice_record_id="rec-warm", recording={str(AUDIO / "en_other_voice.flac")!r},
            reference={str(AUDIO / "en_reference.flac")!r}), force=True)
        print(sorted(set(sys.modules) - before))

asyncio.run(main())
"""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


async def test_a_single_submit_and_a_status_read_are_one_round_trip_each(
    base_settings: TaskSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pipeline would first send SCRIPT EXISTS: two round trips where one does.
    client = redis.Redis.from_url(base_settings.broker_url)
    try:
        async with TaskManager(base_settings) as manager:
            await manager.submit(never_consumed, 0)  # connects, loads the script
            assert manager._backend is not None
            connection_class: Any = manager._backend.connection_pool.connection_class
            sent = 0
            original = connection_class.send_packed_command

            async def counting(self: Any, *args: Any, **kwargs: Any) -> None:
                nonlocal sent
                sent += 1
                await original(self, *args, **kwargs)

            monkeypatch.setattr(connection_class, "send_packed_command", counting)
            handle = await manager.submit(never_consumed, 1)
            assert sent == 1
            await manager.submit_audio_analysis(_request("rec-one-trip"), force=True)
            assert sent == 2
            # A status read pipelines GETs with the epoch script: one round trip as well.
            assert (await manager.get_task_status(handle)).state is TaskState.PENDING
            assert sent == 3
    finally:
        client.delete("nobody_listens")
        client.close()


async def test_a_lone_submit_reloads_its_script_after_the_server_forgot_it(
    base_settings: TaskSettings,
) -> None:
    # A restarted server has an empty script cache: the lone EVALSHA gets NOSCRIPT, loads the
    # script and runs again (the same as the pipelined form did).
    client = redis.Redis.from_url(base_settings.broker_url)
    try:
        async with TaskManager(base_settings) as manager:
            await manager.submit(never_consumed, 0)
            client.script_flush()
            handle = await manager.submit(never_consumed, 1)
            first = await manager.submit_audio_analysis(_request("rec-flushed"), force=True)
            client.script_flush()
            again = await manager.submit_audio_analysis(_request("rec-flushed"))
            assert again == first  # the in-flight slot still answers after the reload
            client.script_flush()  # a status read pipelines the epoch script: it reloads too
            assert (await manager.get_task_status(handle)).state is TaskState.PENDING
    finally:
        client.delete("nobody_listens")
        client.close()
