"""One contract, two managers: every test runs on ``FakeTaskManager`` and on ``TaskManager``.

The fake is what host applications test against, so it must behave like the real manager
(with a real server and a real worker process, from the library's own pytest plugin) in every
way the shared protocol promises: validation, states, progress, typed results, errors and their
codes, cancellation, idempotent submission, closing, an unreachable broker. A behaviour change
in either that the other does not follow fails here.

Where the two need different set-up, :class:`Subject` hides it: a task that stays PENDING is a
held task on the fake and a task on a queue no worker consumes on the real side; an unreachable
broker is ``broker_outage()`` on the fake and a manager pointed at a closed port on the real side.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from contract_tasks import crash, parked, reject, shout

from vocalborn_tasks import (
    AnalysisRequest,
    AnalysisResult,
    BrokerUnavailableError,
    InvalidRequestError,
    ManagerClosedError,
    RecordingAccessError,
    TaskFailedError,
    TaskManager,
    TaskNotFoundError,
    TaskRevokedError,
    TaskSettings,
    TaskState,
    TaskTimeoutError,
)
from vocalborn_tasks.embedded import free_port
from vocalborn_tasks.facade import TaskManagerProtocol
from vocalborn_tasks.record import new_task_id
from vocalborn_tasks.samples import sample_path
from vocalborn_tasks.tasks import TaskHandle
from vocalborn_tasks.testing import FakeTaskManager, WorkerProcess, isolated_settings

#: The environment before any fixture of this module ran.
ENVIRON_AT_IMPORT = dict(os.environ)

pytestmark = [pytest.mark.integration, pytest.mark.vocalborn_task_modules("contract_tasks")]

WAIT_S = 120.0


def analysis(record: str, *, recording: str = "en_other_voice") -> AnalysisRequest:
    return AnalysisRequest(
        practice_record_id=record,
        recording=str(sample_path(recording)),
        reference=str(sample_path("en_reference")),
        language="en",
    )


@dataclass
class Subject:
    """One manager under contract, with what its kind needs to set a scene up."""

    kind: str
    manager: TaskManagerProtocol
    settings: TaskSettings
    worker: WorkerProcess | None = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Everything submitted meanwhile stays PENDING (the real worker is SIGSTOPped)."""
        if isinstance(self.manager, FakeTaskManager):
            self.manager.hold()
            try:
                yield
            finally:
                self.manager.release(run_held=False)
            return
        assert self.worker is not None and self.worker.pid is not None
        pid = self.worker.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids = [pid, *map(int, children)]
        for p in pids:
            os.kill(p, signal.SIGSTOP)
        try:
            yield
        finally:
            for p in pids:
                os.kill(p, signal.SIGCONT)

    async def pending(self) -> TaskHandle[str]:
        """A submitted task that stays PENDING until the test is done with it."""
        if isinstance(self.manager, FakeTaskManager):
            self.manager.hold()
            try:
                return await self.manager.submit(parked)
            finally:
                self.manager.release(run_held=False)
        return await self.manager.submit(parked)

    @contextlib.asynccontextmanager
    async def unreachable(self) -> AsyncIterator[TaskManagerProtocol]:
        """The same kind of manager with its broker unreachable."""
        if isinstance(self.manager, FakeTaskManager):
            with self.manager.broker_outage():
                yield self.manager
            return
        settings = isolated_settings(
            redis_url=f"redis://127.0.0.1:{free_port()}",
            redis_connect_timeout_s=0.5,
            broker_outage_tolerance_s=0.5,
            recording_roots=self.settings.recording_roots,
        )
        async with TaskManager(settings) as manager:
            yield manager


@pytest.fixture(params=["fake", "real"])
async def subject(
    request: pytest.FixtureRequest, vocalborn_settings: TaskSettings
) -> AsyncIterator[Subject]:
    manager: TaskManagerProtocol
    worker = None
    if request.param == "real":
        worker = request.getfixturevalue("vocalborn_worker")
        manager = TaskManager(vocalborn_settings)
    else:
        manager = FakeTaskManager(vocalborn_settings)
    async with manager:
        yield Subject(request.param, manager, vocalborn_settings, worker)


def record_id(subject: Subject, name: str, tmp_path: Path) -> str:
    # Unique per run: the real server outlives a test, and in-flight records are shared.
    return f"{name}-{subject.kind}-{tmp_path.name}"[:120]


# --- analyses -----------------------------------------------------------------------------------


async def test_an_analysis_runs_with_progress_to_a_typed_result(
    subject: Subject, tmp_path: Path
) -> None:
    m = subject.manager
    rid = record_id(subject, "analysis", tmp_path)
    task_id = await m.submit_audio_analysis(analysis(rid))
    seen = [status async for status in m.watch(task_id)]
    assert seen[-1].state is TaskState.SUCCESS
    assert all(s.task_name == "vocalborn.analyze_audio" for s in seen)
    assert [s for s in seen[:-1] if s.is_final] == []
    cursors = [s.cursor for s in seen]
    assert cursors == sorted(cursors, key=lambda c: tuple(map(int, c.split("."))))
    result = await m.wait_for_result(task_id, timeout=WAIT_S)
    assert isinstance(result, AnalysisResult)
    assert result.practice_record_id == rid
    assert 0 <= result.overall_score <= 100
    status = await m.get_task_status(task_id)
    assert status.state is TaskState.SUCCESS
    assert AnalysisResult.model_validate(status.result) == result
    # Resuming after the final status yields nothing; cancelling a finished task changes nothing.
    assert [s async for s in m.watch(task_id, after=seen[-1].cursor)] == []
    assert (await m.cancel(task_id)).state is TaskState.SUCCESS


async def test_the_same_record_in_flight_gives_the_same_task_unless_forced(
    subject: Subject, tmp_path: Path
) -> None:
    m = subject.manager
    rid = record_id(subject, "dedup", tmp_path)
    first, again = await m.submit_batch([analysis(rid), analysis(rid)])
    assert first == again
    forced = await m.submit_audio_analysis(analysis(rid), force=True)
    assert forced != first
    for task_id in (first, forced):
        await m.cancel(task_id)  # no need to spend the worker's time on them


async def test_a_silent_recording_fails_with_the_engines_code(
    subject: Subject, tmp_path: Path
) -> None:
    silence = tmp_path / "silence.wav"
    soundfile.write(silence, np.zeros(32000), 16000)
    m = subject.manager
    task_id = await m.submit_audio_analysis(
        practice_record_id=record_id(subject, "silent", tmp_path),
        recording=str(silence),
        reference=str(sample_path("en_reference")),
    )
    with pytest.raises(TaskFailedError) as failed:
        await m.wait_for_result(task_id, timeout=WAIT_S)
    assert (failed.value.code, failed.value.cause) == ("no_speech", "input")
    assert failed.value.public_message == "no speech was found in the recording"
    status = await m.get_task_status(task_id)
    assert status.state is TaskState.FAILURE
    assert status.error is not None
    assert status.error.type == "AudioError"


async def test_owners_never_share_a_task_and_see_only_their_own(
    subject: Subject, tmp_path: Path
) -> None:
    """Two users, one practice record id: two tasks; each user's id is unknown to the other
    on every path (status, batch status, watch, wait, cancel), exactly like a made-up id."""
    m = subject.manager
    rid = record_id(subject, "owners", tmp_path)
    with subject.held():
        await _owners_scene(m, rid)


async def _owners_scene(m: TaskManagerProtocol, rid: str) -> None:
    alice = bob = ""
    unowned = None
    try:
        alice = await m.submit_audio_analysis(analysis(rid), owner="alice@example.org")
        bob = await m.submit_audio_analysis(analysis(rid), owner="bob@example.org")
        assert alice != bob
        # The same owner again while in flight: a duplicate, told as one.
        (again,) = await m.submit_analyses([analysis(rid)], owner="alice@example.org")
        assert again.task_id == alice and again.duplicate
        (unowned,) = await m.submit_analyses([analysis(rid)])
        assert not unowned.duplicate and unowned.task_id not in (alice, bob)

        # A made-up id in the real format (the fake issues that format too).
        unknown = await m.get_task_status(new_task_id(), owner="bob")
        assert unknown.state is TaskState.NOT_FOUND
        for task_id, who in ((alice, "bob@example.org"), (bob, "alice@example.org")):
            seen = await m.get_task_status(task_id, owner=who)
            assert seen.state is TaskState.NOT_FOUND
            assert seen.model_dump(exclude={"task_id"}) == unknown.model_dump(exclude={"task_id"})
            (batch,) = await m.get_statuses([task_id], owner=who)
            assert batch.state is TaskState.NOT_FOUND
            with pytest.raises(TaskNotFoundError):
                [s async for s in m.watch(task_id, owner=who)]
            with pytest.raises(TaskNotFoundError):
                await m.wait_for_result(task_id, timeout=WAIT_S, owner=who)
            assert (await m.cancel(task_id, owner=who)).state is TaskState.NOT_FOUND
            assert (await m.get_task_status(task_id)).state is TaskState.PENDING  # not cancelled
        # An unowned task is unknown to every owner; the unscoped view sees them all.
        assert (await m.get_task_status(unowned.task_id, owner="bob")).state is (
            TaskState.NOT_FOUND
        )
        mine = await m.get_task_status(alice, owner="alice@example.org")
        assert (mine.state, mine.task_name) == (TaskState.PENDING, "vocalborn.analyze_audio")
        first = await anext(m.watch(bob, owner="bob@example.org"))
        assert first.state is TaskState.PENDING
        with pytest.raises(InvalidRequestError):
            await m.get_task_status(alice, owner="")
    finally:
        for task_id in (alice, bob, unowned.task_id if unowned else ""):
            if task_id:
                await m.cancel(task_id)


# --- validation: nothing is queued ------------------------------------------------------------


async def test_invalid_requests_are_refused_before_anything_is_queued(
    subject: Subject, tmp_path: Path
) -> None:
    m = subject.manager
    with pytest.raises(InvalidRequestError) as bad_id:
        await m.submit_audio_analysis(
            practice_record_id="../etc", recording="a.wav", reference="b.wav"
        )
    assert bad_id.value.errors
    with pytest.raises(RecordingAccessError):
        await m.submit_audio_analysis(
            practice_record_id="outside", recording="/etc/passwd", reference="/etc/hosts"
        )
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not audio at all" * 100)
    with pytest.raises(InvalidRequestError) as unreadable:
        await m.submit_audio_analysis(
            practice_record_id="garbage",
            recording=str(garbage),
            reference=str(sample_path("en_reference")),
        )
    assert unreadable.value.code == "unreadable_audio"
    with pytest.raises(InvalidRequestError):  # the seed's form, with no resolver configured
        await m.submit_audio_analysis(practice_record_id="no-files")
    with pytest.raises(InvalidRequestError):
        await m.submit(shout, 1, 2)  # type: ignore[call-arg]


# --- host task definitions --------------------------------------------------------------------


async def test_a_host_task_returns_its_declared_type(subject: Subject) -> None:
    m = subject.manager
    handle = await m.submit(shout, "hello")
    assert str(handle) == handle.id
    words: str = await m.wait_for_result(handle, timeout=WAIT_S)
    assert words == "HELLO"
    (status,) = await m.get_statuses([handle])
    assert status.state is TaskState.SUCCESS
    assert status.task_name == "contract.shout"
    assert status.result == "HELLO"


async def test_a_host_task_failure_keeps_its_code_and_hides_paths(subject: Subject) -> None:
    m = subject.manager
    handle = await m.submit(reject, "too_short")
    with pytest.raises(TaskFailedError) as failed:
        await m.wait_for_result(handle, timeout=WAIT_S)
    assert failed.value.code == "too_short"
    assert failed.value.cause == "input"
    assert "/srv" not in failed.value.public_message
    status = await m.get_task_status(handle)
    assert status.state is TaskState.FAILURE
    assert status.error is not None
    assert (status.error.code, status.error.type) == ("too_short", "AudioError")


async def test_a_host_task_crash_is_a_system_failure(subject: Subject) -> None:
    m = subject.manager
    handle = await m.submit(crash)
    with pytest.raises(TaskFailedError) as failed:
        await m.wait_for_result(handle, timeout=WAIT_S)
    assert (failed.value.code, failed.value.cause) == ("internal", "system")
    assert failed.value.remote_type == "RuntimeError"
    assert "/srv" not in failed.value.public_message


# --- pending, cancel, timeout -----------------------------------------------------------------


async def test_a_pending_task_times_out_then_cancels(subject: Subject) -> None:
    m = subject.manager
    handle = await subject.pending()
    status = await m.get_task_status(handle)
    assert (status.state, status.task_name) == (TaskState.PENDING, "contract.parked")
    with pytest.raises(TaskTimeoutError) as timed_out:
        await m.wait_for_result(handle, timeout=0.2)
    assert timed_out.value.task_id == handle.id
    cancelled = await m.cancel(handle)
    assert cancelled.state is TaskState.REVOKED
    with pytest.raises(TaskRevokedError):
        await m.wait_for_result(handle, timeout=WAIT_S)
    assert [s.state async for s in m.watch(handle)] == [TaskState.REVOKED]
    assert (await m.cancel(handle)).state is TaskState.REVOKED


async def test_a_watcher_sees_a_cancel(subject: Subject) -> None:
    m = subject.manager
    handle = await subject.pending()
    stream = m.watch(handle)
    first = await anext(stream)
    assert first.state is TaskState.PENDING
    await m.cancel(handle)
    rest = [s.state async for s in stream]
    assert rest[-1] is TaskState.REVOKED


# --- unknown ids, closing, the broker ---------------------------------------------------------


async def test_an_unknown_id_is_not_found(subject: Subject) -> None:
    m = subject.manager
    unknown = "4b1f3c5e-0000-4000-8000-000000000000"
    assert (await m.get_task_status(unknown)).state is TaskState.NOT_FOUND
    with pytest.raises(TaskNotFoundError):
        await m.wait_for_result(unknown, timeout=WAIT_S)
    with pytest.raises(TaskNotFoundError):
        [s async for s in m.watch(unknown)]
    assert (await m.cancel(unknown)).state is TaskState.NOT_FOUND


async def test_a_closed_manager_refuses_use(subject: Subject) -> None:
    m = subject.manager
    await m.aclose()
    await m.aclose()  # idempotent
    calls: list[Any] = [
        m.get_task_status("x"),
        m.submit(shout, "x"),
        m.submit_audio_analysis(analysis("closed")),
    ]
    for call in calls:
        with pytest.raises(ManagerClosedError):
            await call


async def test_an_unreachable_broker_is_broker_unavailable(subject: Subject) -> None:
    async with subject.unreachable() as m:
        with pytest.raises(BrokerUnavailableError) as down:
            await m.submit_audio_analysis(analysis("broker-down"))
        assert down.value.retryable
        assert down.value.code == "broker_unavailable"
        with pytest.raises(BrokerUnavailableError):
            await m.get_task_status("some-id")
        with pytest.raises(BrokerUnavailableError):
            await m.submit(shout, "x")
        with pytest.raises(BrokerUnavailableError):
            await m.ping()
        # Validation still comes first: a bad request is the caller's fault, whatever Redis does.
        with pytest.raises(InvalidRequestError):
            await m.submit_audio_analysis(
                practice_record_id="bad id!", recording="a", reference="b"
            )


def test_the_worker_fixture_leaves_the_environment_alone(vocalborn_worker: WorkerProcess) -> None:
    """The worker gets its settings through its own environment, never through ours."""
    assert vocalborn_worker.running
    assert vocalborn_worker.task_modules == ("contract_tasks",)
    now = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}  # pytest's own
    assert now == {k: v for k, v in ENVIRON_AT_IMPORT.items() if k != "PYTEST_CURRENT_TEST"}
