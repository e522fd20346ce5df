"""PubSubHub and ResultReader on their own, against the real server (issue 16).

Subscriptions are reference-counted, a connection the server drops is reopened and every
waiter re-reads its key, fetches are batched, watch and wait end at a final state, and a reader
that dies of an error that is not Redis's is restarted without leaving a waiter hanging.
Every wait is on a condition the server reports (PUBSUB NUMSUB, CLIENT LIST), never a pause.

The module works in databases 12 and 13 of the session server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from support import async_wait_until, flush, wait_subscribed
from vocalborn_tasks import TaskManager, TaskSettings, TaskState, task_definition
from vocalborn_tasks._redis import pubsub_connection_factory
from vocalborn_tasks.record import RecordKeys, celery_meta
from vocalborn_tasks.results import _MAX_FLUSHES, RECHECK, PubSubHub, ResultReader
from vocalborn_tasks.tasks import TaskContext

pytestmark = pytest.mark.integration

#: A queue no worker consumes: the tasks stay PENDING until the test stores a state.
HELD = "hub-held"
READER_NAME = "hub-test-reader"


@task_definition(name="tests.hub.held", queue=HELD)
def held(ctx: TaskContext, n: int) -> int:
    """Never runs (nobody consumes HELD)."""
    return n


@pytest.fixture(scope="module")
def settings(redis_url: str) -> TaskSettings:
    s = TaskSettings(redis_url=redis_url, redis_db_broker=12, redis_db_backend=13)
    flush(s)
    return s


@pytest.fixture
async def server(settings: TaskSettings) -> AsyncIterator[aioredis.Redis]:
    """The test's own connection: stores states and asks the server what it sees."""
    client = aioredis.Redis.from_url(settings.backend_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def hub(settings: TaskSettings) -> AsyncIterator[PubSubHub]:
    h = PubSubHub(pubsub_connection_factory(settings), max_backoff_s=0.2)
    try:
        yield h
    finally:
        await h.aclose()


@pytest.fixture
async def reader(settings: TaskSettings, hub: PubSubHub) -> AsyncIterator[ResultReader]:
    backend = aioredis.Redis.from_url(
        settings.backend_url, client_name=READER_NAME, max_connections=64
    )
    try:
        yield ResultReader(backend, hub, keys=RecordKeys.of(settings), record_ttl_s=600)
    finally:
        await backend.aclose()


async def submit_held(settings: TaskSettings, count: int = 1) -> list[str]:
    """Queue ``count`` tasks through the real submit path; they wait for ever."""
    async with TaskManager(settings) as manager:
        return [(await manager.submit(held, i)).id for i in range(count)]


async def store(server: aioredis.Redis, task_id: str, status: str, result: Any) -> None:
    """Store a state and publish it, as the worker's store script does."""
    meta = celery_meta(task_id, status, result, done=status in ("SUCCESS", "FAILURE"))
    await server.set(RecordKeys.meta(task_id), meta)
    await server.publish(RecordKeys.meta(task_id), meta)


async def numsub(server: aioredis.Redis, task_id: str) -> int:
    ((_, n),) = await server.pubsub_numsub(RecordKeys.meta(task_id))
    return int(n)


async def wait_unsubscribed(server: aioredis.Redis, task_id: str) -> None:
    async def gone() -> bool:
        return await numsub(server, task_id) == 0

    await async_wait_until(gone, 30, 0.02, f"no subscriber on {task_id}")


async def test_subscriptions_are_counted_per_channel(
    settings: TaskSettings, hub: PubSubHub, server: aioredis.Redis
) -> None:
    first_id, other_id = await submit_held(settings, 2)
    channel = RecordKeys.meta(first_id)
    a = await hub.subscribe(channel)
    b = await hub.subscribe(channel)
    assert await numsub(server, first_id) == 1  # two waiters, one subscription

    await server.publish(channel, b"hello")
    assert await asyncio.wait_for(a.get(), 10) == b"hello"
    assert await asyncio.wait_for(b.get(), 10) == b"hello"

    await hub.unsubscribe(channel, a)
    # Another channel's confirmation comes after anything the hub sent before it on the same
    # connection: had the first waiter's leaving sent an UNSUBSCRIBE, it would show now.
    other = await hub.subscribe(RecordKeys.meta(other_id))
    assert await numsub(server, first_id) == 1
    await server.publish(channel, b"still here")
    assert await asyncio.wait_for(b.get(), 10) == b"still here"
    assert a.empty()

    await hub.unsubscribe(channel, b)  # the last one out unsubscribes
    await wait_unsubscribed(server, first_id)
    assert await numsub(server, other_id) == 1
    await hub.unsubscribe(RecordKeys.meta(other_id), other)
    await wait_unsubscribed(server, other_id)


async def test_watch_and_wait_end_at_the_final_state(
    settings: TaskSettings, reader: ResultReader, server: aioredis.Redis
) -> None:
    (task_id,) = await submit_held(settings)
    seen: list[TaskState] = []
    watch = reader.watch(task_id)
    first = await anext(watch)
    assert first.state is TaskState.PENDING and first.task_name == held.name
    seen.append(first.state)
    waiter = asyncio.ensure_future(reader.wait(task_id))
    await wait_subscribed(settings, [task_id])  # both share the one subscription

    await store(server, task_id, "PROGRESS", {"step": "half", "percent": 50})
    progress = await asyncio.wait_for(anext(watch), 10)
    assert (progress.state, progress.step, progress.progress) == (TaskState.PROGRESS, "half", 50)
    assert progress.task_name == held.name  # a PROGRESS message names no task: kept
    seen.append(progress.state)
    assert not waiter.done()  # wait() only peeks at a state that is not final

    await store(server, task_id, "SUCCESS", 7)
    final = await asyncio.wait_for(anext(watch), 10)
    seen.append(final.state)
    with pytest.raises(StopAsyncIteration):
        await anext(watch)  # the stream ends at the final state
    assert seen == [TaskState.PENDING, TaskState.PROGRESS, TaskState.SUCCESS]
    assert final.result == 7
    done = await asyncio.wait_for(waiter, 10)
    assert done.state is TaskState.SUCCESS and done.result == 7
    await wait_unsubscribed(server, task_id)  # both left: nothing stays subscribed


async def test_watch_never_goes_back_to_a_message_older_than_its_read(
    settings: TaskSettings, reader: ResultReader, server: aioredis.Redis
) -> None:
    """A message published before the watch's read, delivered after it, is skipped.

    The window is forced: the key holds PROGRESS 50 when the watch reads it, then the older
    PROGRESS 10 arrives on the channel (as it does when a worker reports between the
    subscription and the read), then a newer report.
    """
    (task_id,) = await submit_held(settings)
    key = RecordKeys.meta(task_id)
    await server.set(key, celery_meta(task_id, "PROGRESS", {"step": "b", "percent": 50}))
    watch = reader.watch(task_id)
    first = await anext(watch)
    assert (first.state, first.progress) == (TaskState.PROGRESS, 50)
    await server.publish(key, celery_meta(task_id, "PROGRESS", {"step": "a", "percent": 10}))
    await store(server, task_id, "PROGRESS", {"step": "c", "percent": 60})
    following = await asyncio.wait_for(anext(watch), 10)
    assert (following.step, following.progress) == ("c", 60)
    await store(server, task_id, "RETRY", {"exc_type": "E", "exc_message": ["x"]})
    assert (await asyncio.wait_for(anext(watch), 10)).state is TaskState.RETRY
    # After a retry the next attempt starts over: STARTED is news, not a stale message.
    await store(server, task_id, "STARTED", {"pid": 1})
    assert (await asyncio.wait_for(anext(watch), 10)).state is TaskState.STARTED
    await store(server, task_id, "SUCCESS", 1)
    assert (await asyncio.wait_for(anext(watch), 10)).state is TaskState.SUCCESS
    await watch.aclose()


async def _kill_hub_connection(server: aioredis.Redis) -> int:
    """CLIENT KILL the subscribed connection(s) of database 13; how many were killed."""
    killed = 0
    for client in await server.client_list():
        if int(client.get("sub", 0)) > 0 and client.get("db") == "13":
            killed += int(await server.execute_command("CLIENT", "KILL", "ID", client["id"]))
    return killed


async def test_reconnect_after_the_server_drops_the_connection_rechecks_every_waiter(
    settings: TaskSettings, reader: ResultReader, hub: PubSubHub, server: aioredis.Redis
) -> None:
    ids = await submit_held(settings, 3)
    waiters = [asyncio.ensure_future(reader.wait(t)) for t in ids]
    raw = await hub.subscribe(RecordKeys.meta(ids[0]))  # a raw waiter sees the RECHECK itself
    await wait_subscribed(settings, ids)
    # States stored without a message: after the reconnect only a re-read can find them.
    for task_id in ids:
        meta = celery_meta(task_id, "SUCCESS", task_id, done=True)
        await server.set(RecordKeys.meta(task_id), meta)

    assert await _kill_hub_connection(server) == 1
    assert await asyncio.wait_for(raw.get(), 30) is RECHECK
    results = await asyncio.wait_for(asyncio.gather(*waiters), 30)
    assert [(s.state, s.result) for s in results] == [(TaskState.SUCCESS, t) for t in ids]
    assert hub.restarts == 0  # a dropped connection is the reader's own business
    # Resubscribed: a message published now reaches the raw waiter.
    await server.publish(RecordKeys.meta(ids[0]), b"after")
    assert await asyncio.wait_for(raw.get(), 10) == b"after"
    await hub.unsubscribe(RecordKeys.meta(ids[0]), raw)


async def test_fetches_in_one_turn_share_round_trips_and_connections(
    settings: TaskSettings, reader: ResultReader, server: aioredis.Redis
) -> None:
    ids = await submit_held(settings, 50)
    for task_id in ids[:10]:
        await store(server, task_id, "SUCCESS", 1)
    unknown = "00000000-0000-4000-8000-000000000000"
    statuses = await asyncio.gather(*(reader.fetch(t) for t in [*ids, unknown] * 20))
    by_id = {s.task_id: s.state for s in statuses}
    assert [by_id[t] for t in ids] == [TaskState.SUCCESS] * 10 + [TaskState.PENDING] * 40
    assert by_id[unknown] is TaskState.NOT_FOUND
    # 1,020 fetches at once: at most _MAX_FLUSHES pipelines in flight, so as many connections
    # (a fetch each would have filled the pool of 64).
    opened = [c for c in await server.client_list() if c.get("name") == READER_NAME]
    assert 1 <= len(opened) <= _MAX_FLUSHES, opened


class _FailingHub(PubSubHub):
    """A hub whose reader hits a bug on the next message it dispatches (test-only)."""

    fail_next = False

    def _dispatch(self, response: Any) -> None:
        if self.fail_next and isinstance(response, list) and response[:1] == [b"message"]:
            self.fail_next = False
            raise RuntimeError(f"bug while dispatching {response[2]!r}")  # quotes the message
        super()._dispatch(response)


async def test_a_reader_killed_by_a_bug_is_restarted_and_no_waiter_hangs(
    settings: TaskSettings, server: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    hub = _FailingHub(pubsub_connection_factory(settings), max_backoff_s=0.2)
    backend = aioredis.Redis.from_url(settings.backend_url)
    reader = ResultReader(backend, hub, keys=RecordKeys.of(settings), record_ttl_s=600)
    try:
        ids = await submit_held(settings, 3)
        waiters = [asyncio.ensure_future(reader.wait(t)) for t in ids]
        await wait_subscribed(settings, ids)
        hub.fail_next = True
        with caplog.at_level(logging.DEBUG, logger="vocalborn_tasks.results"):
            # The first message kills the reader; its waiter must still learn the outcome.
            for task_id in ids:
                await store(server, task_id, "SUCCESS", {"patient": "secret-score-93"})
            results = await asyncio.wait_for(asyncio.gather(*waiters), 30)
        assert [s.state for s in results] == [TaskState.SUCCESS] * 3
        assert hub.restarts == 1
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, errors
        assert "RuntimeError" in errors[0].getMessage()
        assert all("secret" not in r.getMessage() for r in caplog.records)

        # The restarted reader serves new waiters as before.
        (later,) = await submit_held(settings)
        waiter = asyncio.ensure_future(reader.wait(later))
        await wait_subscribed(settings, [later])
        await store(server, later, "SUCCESS", 1)
        assert (await asyncio.wait_for(waiter, 10)).state is TaskState.SUCCESS
    finally:
        await hub.aclose()
        await backend.aclose()
