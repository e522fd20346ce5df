"""Issue 17, the worker side: workers ride out a failover, a demotion and a refusing master.

The failover scenarios use real processes only: a master, two replicas and three sentinels
(``embedded.SentinelGroup``, ``min-replicas-to-write 1`` as docs/operations.md recommends),
two ``vocalborn-tasks worker`` processes through the sentinels, and a ``TaskManager``
submitting analyses. Each analysis appends its recording's name to a run log file
(``FAULTS_RUN_LOG``, see faults/helpers.py): a record of body runs that a failover cannot roll
back, unlike a counter in Redis. Each asserts that the tasks running across the failover finish
once, on the worker that ran them (no reaper hands them back: a new master holds no
heartbeats), that every acknowledged submit ends SUCCESS, that no body runs twice, that both
workers stay up and both consume tasks submitted after the failover, and that neither logs
"Unrecoverable error". Submits that fail typed meanwhile are retried with the same request, as
a host would (the practice record's in-flight slot makes that idempotent).

One more makes the window of an unconfirmed reservation exact: a task taken from the old
master after the promotion, still queued on the new one.

The other tests put one server, without sentinels, in the states a failover leaves a worker
facing: silent for longer than ``WORKER_DEAD_AFTER`` under running tasks, demoted to a
replica (``READONLY``, ``MASTERDOWN``, a blocked read unblocked), refusing writes
(``NOREPLICAS``), an empty script cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from support import AUDIO, WorkerProcess, wait_until
from vocalborn_tasks import (
    AnalysisRequest,
    BrokerUnavailableError,
    TaskManager,
    TaskSettings,
    TaskState,
    VocalbornTasksError,
)
from vocalborn_tasks.embedded import LocalServer, SentinelGroup, free_port
from vocalborn_tasks.tasks import echo

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

#: faults/conftest.py's FAULT_DEFAULTS, for a server of our own.
SETTINGS: dict[str, Any] = {
    "celery_log_level": "INFO",
    "worker_heartbeat_s": 0.5,
    "worker_dead_after_s": 2.0,
    "max_deliveries": 3,
    "retry_backoff_s": 0.2,
    "retry_backoff_max_s": 1.0,
    "worker_soft_shutdown_s": 1.0,
}

#: Slow analyses run across the failover's start (and keep the workers' reservations of
#: them on the old master, made before the promotion).
SLOW_S = 3.0
SHORT_S = 0.2


@pytest.fixture
def group(server_binary: str | None) -> Iterator[SentinelGroup]:
    """Master, two replicas, three sentinels; the master refuses writes without a replica."""
    with SentinelGroup(binary=server_binary, min_replicas_to_write=1, die_with_parent=True) as g:
        yield g


@dataclass
class Scenario:
    """The shared part of the scenarios: settings, workers, recordings, the run log."""

    settings: TaskSettings
    workers: list[WorkerProcess]
    run_log: Path
    audio_dir: Path
    #: recording name -> task id, for every request a submit returned an id for.
    ids: dict[str, str] = field(default_factory=dict)

    def request(self, name: str) -> AnalysisRequest:
        recording = self.audio_dir / f"{name}.flac"
        if not recording.exists():
            shutil.copy(AUDIO / "en_other_voice.flac", recording)
        return AnalysisRequest(
            practice_record_id=f"rec-{name}",
            recording=str(recording),
            reference=str(AUDIO / "en_reference.flac"),
            language="en",
        )

    def runs(self) -> list[tuple[str, str, float]]:
        """(recording name, worker, epoch seconds) of every body run so far."""
        if not self.run_log.exists():
            return []
        rows = []
        for line in self.run_log.read_text().splitlines():
            name, worker, at = line.split()
            rows.append((name.removesuffix(".flac"), worker, float(at)))
        return rows


def _start(
    settings: TaskSettings,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
    *,
    slow_s: float = SLOW_S,
) -> Scenario:
    """Two workers (``w1``, ``w2``) running the fault analyzer, which logs every body run."""
    run_log = tmp_path / "runs.log"
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    env = {
        "ANALYZER": "faults.helpers:FaultAnalyzer",
        "FAULTS_ANALYSIS_DELAY": str(SHORT_S),
        "FAULTS_SLOW_ANALYSIS_DELAY": str(slow_s),
        "FAULTS_RUN_LOG": str(run_log),
    }
    workers = [
        start_worker(settings, name, wait=False, extra_env={**env, "FAULTS_WORKER": name})
        for name in ("w1", "w2")
    ]
    for worker in workers:
        worker.wait_ready()
    return Scenario(settings, workers, run_log, audio_dir)


@pytest.fixture
def scenario(
    group: SentinelGroup, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> Scenario:
    settings = TaskSettings(_env_file=None, **group.settings_values(), **SETTINGS)
    return _start(settings, start_worker, tmp_path)


async def _submit(scenario: Scenario, manager: TaskManager, name: str) -> str:
    """Submit ``name``'s analysis, retrying a typed failure with the same request."""
    deadline = time.monotonic() + 30
    while True:
        try:
            task_id = await manager.submit_audio_analysis(scenario.request(name))
        except VocalbornTasksError:
            pass
        else:
            scenario.ids[name] = task_id
            return task_id
        if time.monotonic() > deadline:
            raise AssertionError(f"submit of {name} did not succeed within 30 s")
        await asyncio.sleep(0.1)


async def _final_states(manager: TaskManager, ids: dict[str, str]) -> dict[str, TaskState]:
    async def final(task_id: str) -> TaskState:
        deadline = time.monotonic() + 45
        while True:
            try:
                with contextlib.suppress(VocalbornTasksError):
                    await manager.wait_for_result(task_id, timeout=30)
                return (await manager.get_task_status(task_id)).state
            except BrokerUnavailableError:
                # A read on a master refusing writes (its epoch check writes) fails typed and
                # retryable; a host polls again, so does this.
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    states = await asyncio.gather(*(final(t) for t in ids.values()))
    return dict(zip(ids, states, strict=True))


async def _run_scenario(
    scenario: Scenario, fault: Callable[[], Awaitable[Any]]
) -> tuple[dict[str, TaskState], int, float]:
    """Two slow analyses running, ``fault`` (awaited while more are submitted, one every
    0.15 s), then six short ones. Returns the final state of every submitted request, how
    many were submitted during the fault, and when it started (monotonic)."""
    async with TaskManager(scenario.settings) as manager:
        for name in ("slow-1", "slow-2"):
            await _submit(scenario, manager, name)
        await asyncio.to_thread(
            wait_until,
            lambda: len(scenario.runs()) == 2,
            30,
            0.02,
            "both slow analyses running",
        )
        started = time.monotonic()
        faulting = asyncio.ensure_future(fault())
        n = 0
        while not faulting.done():
            await _submit(scenario, manager, f"during-{n}")
            n += 1
            await asyncio.sleep(0.15)
        await faulting
        for i in range(6):
            await _submit(scenario, manager, f"after-{i}")
        states = await _final_states(manager, scenario.ids)
    return states, n, started


def _assert_rode_out(scenario: Scenario, states: dict[str, TaskState]) -> None:
    runs = scenario.runs()
    counts = Counter(name for name, _, _ in runs)
    twice = {name: n for name, n in counts.items() if n > 1}
    assert not twice, f"bodies run more than once: {twice}"
    # The two slow analyses ran across the failover, one on each worker, and finished there.
    slow_workers = {worker for name, worker, _ in runs if name.startswith("slow-")}
    assert slow_workers == {"w1", "w2"}, runs
    not_done = {name: state for name, state in states.items() if state is not TaskState.SUCCESS}
    assert not not_done, f"acknowledged but not finished: {not_done}"
    assert set(counts) == set(states), "a finished task whose body never ran"
    # Both workers are up and both took some of the analyses submitted after the failover.
    after: defaultdict[str, int] = defaultdict(int)
    for name, worker, _ in runs:
        if name.startswith("after-"):
            after[worker] += 1
    assert set(after) == {"w1", "w2"}, f"after the failover only {dict(after)} consumed"
    for worker in scenario.workers:
        assert worker.proc is not None and worker.proc.poll() is None, worker.log_tail()
        log = worker.log_path.read_text(errors="replace")
        assert "Unrecoverable error" not in log, worker.log_tail(80)


def _ride_out(scenario: Scenario, started_epoch: float) -> dict[str, float]:
    """Per worker: seconds from the fault to its first body run that started after it."""
    first: dict[str, float] = {}
    for name, worker, at in scenario.runs():
        if not name.startswith("slow-") and at > started_epoch:
            first[worker] = min(first.get(worker, at), at)
    return {w: round(at - started_epoch, 2) for w, at in sorted(first.items())}


async def test_manual_failover_under_load(group: SentinelGroup, scenario: Scenario) -> None:
    """``SENTINEL FAILOVER`` while two analyses run and more are submitted.

    The old master keeps taking writes for about a second after the promotion (until the
    sentinels move its last replica; then ``min-replicas-to-write`` makes it answer
    NOREPLICAS) and is demoted, every client of it disconnected, about 8 s later: the workers
    must leave it for the new master, and still consume after the demotion.
    """
    epoch = time.time()
    states, during, started = await _run_scenario(
        scenario, lambda: asyncio.to_thread(group.failover)
    )
    elapsed = time.monotonic() - started
    _assert_rode_out(scenario, states)
    print(
        f"\nmanual failover: settled in {elapsed:.1f} s, first runs after it "
        f"{_ride_out(scenario, epoch)} s, {during} submitted meanwhile"
    )


async def test_master_killed_under_load(group: SentinelGroup, scenario: Scenario) -> None:
    """``kill -9`` of the master while two analyses run and more are submitted."""
    old = group.master
    epoch = time.time()

    async def kill() -> None:
        old.kill()
        await asyncio.to_thread(group.wait_for_master, not_port=old.port)

    states, during, started = await _run_scenario(scenario, kill)
    elapsed = time.monotonic() - started
    _assert_rode_out(scenario, states)
    print(
        f"\nmaster killed: new master settled in {elapsed:.1f} s, first runs after it "
        f"{_ride_out(scenario, epoch)} s, {during} submitted meanwhile"
    )


# --- one server, in the states a failover leaves a worker's connections facing ---------------
async def test_outage_longer_than_dead_after_reruns_no_running_task(
    server: LocalServer,
    make_settings: Callable[..., TaskSettings],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    """The server answers nothing (SIGSTOP) for longer than ``WORKER_DEAD_AFTER`` while one
    worker runs a task, and that worker comes back a second after the server (its main
    process stopped too; its pool child runs on). When the server answers again every
    heartbeat has expired: the idle worker's reaper must not take the busy one for dead and
    hand its running task back (the idle worker would run it again at once). A reaper judges
    nothing until it has watched the server, without a break, for ``WORKER_DEAD_AFTER``."""
    settings = make_settings()
    scenario = _start(settings, start_worker, tmp_path, slow_s=settings.worker_dead_after_s + 4)
    async with TaskManager(settings) as manager:
        await _submit(scenario, manager, "slow-1")
        await asyncio.to_thread(
            wait_until, lambda: scenario.runs(), 30, 0.02, "the analysis running"
        )
        (busy,) = [w for w in scenario.workers if w.name == scenario.runs()[0][1]]
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        busy.signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(settings.worker_dead_after_s + 1.0)
            os.kill(server.pid, signal.SIGCONT)
            await asyncio.sleep(1.0)  # the idle worker's reaper beats twice meanwhile
        finally:
            os.kill(server.pid, signal.SIGCONT)
            busy.signal(signal.SIGCONT)
        states = await _final_states(manager, scenario.ids)
    assert states == {"slow-1": TaskState.SUCCESS}
    runs = scenario.runs()
    assert [name for name, _, _ in runs] == ["slow-1"], f"the running task ran again: {runs}"


def _log(worker: WorkerProcess) -> str:
    return worker.log_path.read_text(errors="replace")


async def _echo(manager: TaskManager, message: str, timeout: float = 30) -> str:
    handle = await manager.submit(echo, message)
    return (await manager.wait_for_result(handle, timeout=timeout)).message


def _commands_processed(admin: redis.Redis) -> int:
    return int(admin.info("stats")["total_commands_processed"])


async def _refusing_for(admin: redis.Redis, seconds: float) -> int:
    """Commands the server processed in ``seconds`` (a worker retrying in a tight loop would
    send thousands)."""
    before = _commands_processed(admin)
    await asyncio.sleep(seconds)
    return _commands_processed(admin) - before


async def test_worker_waits_out_its_server_demoted(
    server: LocalServer,
    make_settings: Callable[..., TaskSettings],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """The server turns into a replica under an idle worker (its blocked read is answered
    with an error), serves stale reads then none (``MASTERDOWN``), becomes a master again with
    an empty script cache: the worker stays up, does not spin, and consumes again.

    Kombu reads each of these replies as a channel error: the worker used to exit with
    "Unrecoverable error".
    """
    settings = make_settings()
    worker = start_worker(settings, "demoted")
    admin = redis.Redis.from_url(server.url)
    try:
        async with TaskManager(settings) as manager:
            assert await _echo(manager, "before") == "before"
            admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))  # never answers
            await asyncio.to_thread(
                wait_until,
                lambda: "taking no task until a master accepts writes" in _log(worker),
                15,
                0.05,
                "the worker to see its server demoted",
            )
            assert await _refusing_for(admin, 1.0) < 200
            admin.config_set("replica-serve-stale-data", "no")  # every reply is MASTERDOWN
            assert await _refusing_for(admin, 1.0) < 200
            admin.config_set("replica-serve-stale-data", "yes")
            admin.execute_command("REPLICAOF", "NO", "ONE")
            admin.script_flush()  # a new master knows none of our scripts
            assert await _echo(manager, "after") == "after"
    finally:
        admin.close()
    assert worker.proc is not None and worker.proc.poll() is None, worker.log_tail()
    log = _log(worker)
    assert "Unrecoverable error" not in log, worker.log_tail(80)
    assert "READONLY" in log or "UNBLOCKED" in log, worker.log_tail(80)


async def test_worker_waits_out_a_master_refusing_writes(
    server: LocalServer,
    make_settings: Callable[..., TaskSettings],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """``min-replicas-to-write`` unmet (no replica at all): every reservation is refused with
    NOREPLICAS. The worker takes nothing meanwhile, stays up without spinning, and consumes
    once writes are accepted again."""
    settings = make_settings()
    worker = start_worker(settings, "norepl")
    admin = redis.Redis.from_url(server.url)
    try:
        async with TaskManager(settings) as manager:
            assert await _echo(manager, "before") == "before"
            admin.config_set("min-replicas-to-write", "1")
            await asyncio.to_thread(
                wait_until,
                lambda: "NOREPLICAS" in _log(worker),
                15,
                0.05,
                "the worker to see writes refused",
            )
            assert await _refusing_for(admin, 1.0) < 200
            admin.config_set("min-replicas-to-write", "0")
            assert await _echo(manager, "after") == "after"
    finally:
        admin.close()
    assert worker.proc is not None and worker.proc.poll() is None, worker.log_tail()
    assert "Unrecoverable error" not in _log(worker), worker.log_tail(80)


async def test_a_task_taken_from_the_old_master_after_the_promotion_runs_once(
    group: SentinelGroup, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """The window of an unconfirmed reservation, made exact. Both workers are stopped
    (SIGSTOP) long enough for their idle reads to time out, a task is queued, the failover
    promotes a replica; ``w1`` resumes at once and takes the task from the old master, which
    still takes writes (one replica follows it until the sentinels move it); ``w2`` resumes
    once the old master refuses writes, and so connects to the new master, where the task is
    still queued. Unconfirmed, ``w1``'s reservation ran the task there while ``w2`` ran it
    again here (5 runs of 5); confirmed, ``w1`` leaves it to the new master."""
    settings = TaskSettings(
        _env_file=None, **group.settings_values(), **{**SETTINGS, "worker_dead_after_s": 10.0}
    )
    # Long enough that the second copy starts before the first one's result reaches the new
    # master (which takes writes only once a replica has synced from it).
    scenario = _start(settings, start_worker, tmp_path, slow_s=8.0)
    w1 = scenario.workers[0]
    old = group.master
    replicas = [s for s in group.servers if s is not old]
    old_client = redis.Redis(port=old.port, socket_timeout=1.0)

    def old_refuses_writes() -> bool:
        try:
            old_client.set("vocalborn-test:probe", "1")
        except redis.ResponseError as exc:
            return "NOREPLICAS" in str(exc)
        return False

    for worker in scenario.workers:
        # Consuming, so each has seen the master's replicas (a reservation waits for every
        # replica seen in the last seconds: one that never saw them cannot tell one is gone).
        await asyncio.to_thread(
            wait_until, lambda w=worker: " ready." in _log(w), 60, 0.05, f"{worker.name} ready"
        )
    for worker in scenario.workers:
        worker.signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(1.2)  # their idle BRPOPs (1 s) time out: each reserves on resume
        async with TaskManager(settings) as manager:
            await _submit(scenario, manager, "slow-1")
        with redis.Redis(port=group.sentinels[0].port) as sentinel:
            sentinel.execute_command("SENTINEL", "FAILOVER", group.master_name)
        await asyncio.to_thread(
            wait_until,
            lambda: any(group.role(s) == "master" for s in replicas),
            10,
            0.005,
            "a replica promoted",
        )
        w1.signal(signal.SIGCONT)
        await asyncio.to_thread(wait_until, old_refuses_writes, 10, 0.01, "NOREPLICAS")
    finally:
        for worker in scenario.workers:  # w2 now: its first reservation is refused
            worker.signal(signal.SIGCONT)
        old_client.close()
    async with TaskManager(settings) as manager:
        states = await _final_states(manager, scenario.ids)
    assert states == {"slow-1": TaskState.SUCCESS}
    runs = scenario.runs()
    assert [name for name, _, _ in runs] == ["slow-1"], f"ran on both masters: {runs}"


async def test_a_retry_is_heard_only_once_replicas_hold_it(
    group: SentinelGroup, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """A retryable failure's RETRY, its next attempt and the acknowledgement are one write,
    confirmed like a final state: with every replica frozen the master holds the write (and
    the next attempt), but nobody hears RETRY until a replica confirms it; then the next
    attempt runs once and the task ends SUCCESS."""
    from faults.helpers import EXEC_KEY, count

    settings = TaskSettings(_env_file=None, **group.settings_values(), **SETTINGS)
    hold = tmp_path / "hold"
    hold.mkdir()
    start_worker(
        settings,
        "w1",
        host=True,
        pool="solo",
        extra_env={"VOCALBORN_FAULT_POINT": "before_retry", "VOCALBORN_FAULT_HOLD": str(hold)},
    )
    master = group.master
    reader = redis.Redis(port=master.port, db=settings.redis_db_backend, socket_timeout=5)
    pubsub = reader.pubsub()  # type: ignore[no-untyped-call]
    replicas = [s for s in group.servers if s is not master]
    try:
        async with TaskManager(settings) as manager:
            handle = await manager.submit(count, 7, fail_first=True)
            await asyncio.to_thread(wait_until, (hold / "reached").exists, 30, 0.02, "the retry")
            pubsub.subscribe(f"celery-task-meta-{handle.id}")
            assert pubsub.get_message(timeout=5.0)["type"] == "subscribe"
            for replica in replicas:
                group.freeze(replica)
            (hold / "release").write_text("")

            def retry_written() -> bool:
                raw = reader.get(f"celery-task-meta-{handle.id}")
                return raw is not None and b'"RETRY"' in raw

            await asyncio.to_thread(wait_until, retry_written, 10, 0.02, "RETRY on the master")
            # Unconfirmed, it would be published in the same script: a second is plenty.
            assert pubsub.get_message(timeout=1.0) is None, "RETRY heard before a replica held it"
            for replica in replicas:
                group.thaw(replica)
            heard = pubsub.get_message(timeout=10.0)
            assert heard is not None and b'"RETRY"' in heard["data"], heard
            assert await manager.wait_for_result(handle, timeout=30) == 7
        assert int(reader.hget(EXEC_KEY, handle.id) or 0) == 2
    finally:
        for replica in replicas:
            group.thaw(replica)
        pubsub.close()
        reader.close()
