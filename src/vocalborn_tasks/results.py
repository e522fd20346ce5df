"""Native async reading of task states from the Redis result backend.

Celery's Redis backend stores each task's state at ``celery-task-meta-<id>`` and PUBLISHes the
same JSON on a channel of that name at every change. We SUBSCRIBE on one dedicated connection
shared by every waiter of a manager, wait for the server to confirm the subscription, and only
then GET the key, so no change can slip between the read and the subscription. No thread per
waiter, no polling loop, no ``AsyncResult.get()``.

If that connection drops (a server restart), the hub reconnects with backoff, subscribes every
channel again and tells each waiter to re-read its key: anything published while we were away
is picked up, and a task the server has forgotten is reported LOST instead of waited on forever.

The reader task is supervised: an error that is not Redis's (a bug, a reply it cannot parse)
is logged once, the connection is dropped and the reader restarted, which resubscribes and
re-reads every waiter's key the same way. No waiter is left hanging on a dead reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from .errors import TaskLostError, TaskNotFoundError
from .models import TaskErrorInfo, TaskState, TaskStatus, parse_cursor, state_from_celery
from .record import (
    META_PREFIX,
    AsyncRecord,
    RecordKeys,
    is_final_status,
    may_be_final,
    missing_state,
    read_meta,
)
from .record.meta import revoked_reason

__all__ = ["META_PREFIX", "PubSubHub", "ResultReader", "status_from_meta"]

logger = logging.getLogger(__name__)

#: Coalesced status reads in flight at once per reader (each holds one pooled connection);
#: reads requested meanwhile wait and go together in the next round trip.
_MAX_FLUSHES: Final = 4


class _Recheck:
    """Sentinel queued to waiters after a reconnect: re-read your key."""


RECHECK: Final = _Recheck()

# Errors Celery raises that we can name better than by their class.
_KNOWN_CODES: Final[dict[str, str]] = {
    "SoftTimeLimitExceeded": "time_limit",
    "TimeLimitExceeded": "time_limit",
    "WorkerLostError": "worker_lost",
    "NotRegistered": "unknown_task",
}


def _error_info(raw: Any, *, retrying: bool = False) -> TaskErrorInfo:
    if not isinstance(raw, Mapping):
        return TaskErrorInfo(type="Error", message=str(raw), retryable=retrying)
    exc_type = str(raw.get("exc_type") or "Error")
    exc_module = str(raw.get("exc_module") or "")
    args = raw.get("exc_message")
    if isinstance(args, list | tuple):
        message = str(args[0]) if args else ""
        code = str(args[1]) if exc_module.startswith("vocalborn_tasks") and len(args) > 1 else None
    else:
        message = "" if args is None else str(args)
        code = None
    if code is None:
        code = _KNOWN_CODES.get(exc_type)
    return TaskErrorInfo(type=exc_type, message=message, code=code, retryable=retrying)


def _parse_time(value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        if isinstance(value, int | float):
            return datetime.fromtimestamp(float(value), UTC)
        parsed = datetime.fromisoformat(str(value))
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _decode(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


def status_from_meta(
    task_id: str,
    meta: Mapping[str, Any] | None,
    marker: Mapping[str, str] | None = None,
    *,
    missing: TaskState = TaskState.NOT_FOUND,
) -> TaskStatus:
    """Build a :class:`TaskStatus` from Celery's stored meta and our submit marker.

    Without meta, the marker tells a queued task (PENDING) from one whose result has expired
    (EXPIRED); with neither, the state is ``missing`` (NOT_FOUND, or LOST/EXPIRED as the id's
    time and the server epoch tell: see :func:`vocalborn_tasks.record.missing_state`). Celery
    alone would say PENDING for all of them.
    """
    marker = marker or {}
    submitted_at = _parse_time(float(marker["t"])) if marker.get("t") else None
    common: dict[str, Any] = {
        "task_id": task_id,
        "task_name": marker.get("name"),
        "queue": marker.get("queue"),
        "submitted_at": submitted_at,
    }
    if meta is None:
        if not marker:
            return TaskStatus(state=missing, **common)
        if marker.get("done"):
            return TaskStatus(state=TaskState.EXPIRED, **common)
        return TaskStatus(state=TaskState.PENDING, **common)
    state = state_from_celery(str(meta.get("status", "PENDING")))
    result = meta.get("result")
    common["retries"] = int(meta.get("retries") or 0)
    common["date_done"] = _parse_time(meta.get("date_done"))
    if meta.get("name"):
        common["task_name"] = meta["name"]
    if state is TaskState.SUCCESS:
        return TaskStatus(state=state, result=result, progress=100.0, **common)
    if state is TaskState.FAILURE:
        return TaskStatus(state=state, error=_error_info(result), **common)
    if state is TaskState.RETRY:
        return TaskStatus(state=state, error=_error_info(result, retrying=True), **common)
    if state is TaskState.REVOKED:
        reason = revoked_reason(result)  # "revoked" (a cancel) or "purged" (its queue was)
        return TaskStatus(
            state=state,
            error=TaskErrorInfo(type="TaskRevokedError", message=reason, code=reason),
            **common,
        )
    if state is TaskState.STARTED:
        return TaskStatus(state=state, step="started", progress=0.0, **common)
    if state is TaskState.PROGRESS and isinstance(result, Mapping):
        percent = result.get("percent")
        progress = None if percent is None else max(0.0, min(100.0, float(percent)))
        step = result.get("step")
        return TaskStatus(
            state=state, step=None if step is None else str(step), progress=progress, **common
        )
    return TaskStatus(state=state, **common)


ConnectionFactory = Callable[[], aioredis.Connection]


class PubSubHub:
    """One subscribed connection, shared by any number of waiters.

    Each waiter gets an :class:`asyncio.Queue` of raw messages for its channel (plus RECHECK
    after a reconnect). Subscriptions are reference-counted per channel.

    Attributes:
        restarts: how many times the reader failed with an error that was not Redis's and
            was restarted (0 in a healthy process; the first failure is logged as an ERROR).
    """

    def __init__(
        self,
        connect: ConnectionFactory,
        *,
        max_backoff_s: float = 2.0,
        ping_interval_s: float = 1.0,
        connect_timeout_s: float = 5.0,
        on_reconnect: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._connect = connect
        self._max_backoff_s = max_backoff_s
        self._ping_interval_s = ping_interval_s
        self._connect_timeout_s = connect_timeout_s
        self._last_pong = 0.0
        self._watch: asyncio.Task[None] | None = None
        #: Run after a reconnect, before waiters re-read their tasks (the manager points its
        #: reading client at the current master, so a re-read does not ask the old one).
        self._on_reconnect = on_reconnect
        self._conn: aioredis.Connection | None = None
        self._waiters: dict[str, set[asyncio.Queue[bytes | _Recheck]]] = {}
        self._confirmed: dict[str, asyncio.Future[None]] = {}
        self._send_lock = asyncio.Lock()
        self._to_subscribe: set[str] = set()
        self._to_unsubscribe: set[str] = set()
        self._flush_scheduled = False
        self._flushes: set[asyncio.Task[None]] = set()
        self._start_lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closed = False
        self.restarts = 0

    async def _ensure_reader(self) -> None:
        if self._reader is not None:
            return
        async with self._start_lock:  # many first waiters at once must share one connection
            if self._reader is None:
                await self._open()
                loop = asyncio.get_running_loop()
                self._reader = loop.create_task(self._supervise(), name="vocalborn-pubsub-reader")
                self._watch = loop.create_task(self._keep_watch(), name="vocalborn-pubsub-watch")

    async def _open(self) -> None:
        conn = self._connect()
        try:
            # A frozen server accepts the TCP connection and never answers AUTH: bounded.
            async with asyncio.timeout(self._connect_timeout_s):
                await conn.connect()  # type: ignore[no-untyped-call]
        except TimeoutError as exc:
            with contextlib.suppress(Exception):
                await conn.disconnect()
            raise RedisConnectionError("the result pub/sub connection timed out") from exc
        self._conn = conn
        self._last_pong = time.monotonic()
        self._connected.set()

    async def _keep_watch(self) -> None:
        """Drop the subscribed connection when its server stops being the one to listen to.

        A subscribed connection reports nothing when its server freezes, and a master demoted
        in a failover keeps its subscribers, who then hear nothing the new master publishes.
        So every ``ping_interval_s`` the hub PINGs (answered in subscribed mode too) and, with
        sentinels, asks them for the master; no PONG for three intervals, or a master elsewhere,
        and the connection is dropped: the reader reconnects, resubscribes and tells every
        waiter to re-read its task.
        """
        interval = self._ping_interval_s
        while not self._closed:
            await asyncio.sleep(interval)
            conn = self._conn
            if conn is None or not self._connected.is_set():
                continue
            reason = ""
            if time.monotonic() - self._last_pong > 3 * interval:
                reason = f"no answer to PING for {3 * interval:g} s"
            else:
                with contextlib.suppress(RedisError, OSError):
                    await self._send("PING")
                locate = getattr(self._connect, "master_address", None)
                if locate is not None:
                    try:
                        async with asyncio.timeout(self._connect_timeout_s):
                            master = await locate()
                    except (RedisError, OSError, TimeoutError):
                        master = None
                    here = (str(getattr(conn, "host", "")), int(getattr(conn, "port", 0)))
                    if master is not None and master != here:
                        reason = f"the master is now {master[0]}:{master[1]}"
            if reason and conn is self._conn:
                logger.warning("result pub/sub connection dropped (%s); reconnecting", reason)
                await self._drop_connection()

    async def _send(self, *args: str) -> None:
        async with self._send_lock:
            if self._closed or self._conn is None or not self._connected.is_set():
                return  # the reader resubscribes everything once it has reconnected
            await self._conn.send_command(*args, check_health=False)

    def _queue_change(self, channel: str, subscribe: bool) -> None:
        """Send (UN)SUBSCRIBE for ``channel`` with the others asked for in this loop turn.

        Ten thousand waiters starting together cost one SUBSCRIBE command, not ten thousand
        writes; waiters ending together share one UNSUBSCRIBE.
        """
        if self._closed:
            return
        (self._to_subscribe if subscribe else self._to_unsubscribe).add(channel)
        (self._to_unsubscribe if subscribe else self._to_subscribe).discard(channel)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._start_changes)

    def _start_changes(self) -> None:
        self._flush_scheduled = False
        task = asyncio.get_running_loop().create_task(self._send_changes())
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _send_changes(self) -> None:
        # A channel that gained a waiter again before we got here stays subscribed.
        unsubscribe = [c for c in self._to_unsubscribe if c not in self._waiters]
        subscribe = list(self._to_subscribe)
        self._to_unsubscribe.clear()
        self._to_subscribe.clear()
        for channel in unsubscribe:
            self._confirmed.pop(channel, None)
        with contextlib.suppress(RedisError, OSError):
            if unsubscribe:
                await self._send("UNSUBSCRIBE", *unsubscribe)
            if subscribe:
                await self._send("SUBSCRIBE", *subscribe)

    async def subscribe(self, channel: str) -> asyncio.Queue[bytes | _Recheck]:
        """Subscribe a new waiter to ``channel``; returns once the server has confirmed it."""
        if self._closed:
            raise RuntimeError("the pub/sub hub is closed")
        await self._ensure_reader()
        queue: asyncio.Queue[bytes | _Recheck] = asyncio.Queue()
        waiters = self._waiters.get(channel)
        if waiters is None:
            self._waiters[channel] = {queue}
            confirmed = self._confirmed.get(channel)
            if channel in self._to_unsubscribe and confirmed is not None:
                # Its last waiter just left and the UNSUBSCRIBE has not gone out: keep it.
                self._to_unsubscribe.discard(channel)
            else:
                confirmed = asyncio.get_running_loop().create_future()
                self._confirmed[channel] = confirmed
                self._queue_change(channel, subscribe=True)
        else:
            waiters.add(queue)
            confirmed = self._confirmed.get(channel) or _done_future()
        try:
            await asyncio.shield(confirmed)
        except BaseException:
            await self.unsubscribe(channel, queue)
            raise
        return queue

    async def unsubscribe(self, channel: str, queue: asyncio.Queue[bytes | _Recheck]) -> None:
        """Remove one waiter; the last one out unsubscribes the channel."""
        waiters = self._waiters.get(channel)
        if waiters is None:
            return
        waiters.discard(queue)
        if not waiters:
            del self._waiters[channel]
            fut = self._confirmed.get(channel)
            if fut is not None and not fut.done():
                fut.cancel()
                self._confirmed.pop(channel, None)
            if channel in self._to_subscribe:  # never sent: nothing to undo
                self._to_subscribe.discard(channel)
                self._confirmed.pop(channel, None)
            else:
                self._queue_change(channel, subscribe=False)

    async def _supervise(self) -> None:
        """Run the reader; restart it after an error that is not a Redis one.

        Redis errors are the reader's own business (it reconnects). Anything else is a bug or
        a reply we cannot parse: the stream position is unknown, so the connection is dropped
        and the reader restarted, which resubscribes and tells every waiter to re-read its key
        (a message lost with the failure cannot leave a waiter hanging). Only the exception's
        type is logged: its text could quote a message, and messages hold patients' results.
        """
        backoff = 0.05
        while not self._closed:
            try:
                await self._read_forever()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closed:
                    return
                self.restarts += 1
                log = logger.error if self.restarts == 1 else logger.debug
                log(
                    "result pub/sub reader failed (%s); restarting it and re-reading every "
                    "waiter's task (restart %d)",
                    type(exc).__name__,
                    self.restarts,
                )
                await self._drop_connection()
                await asyncio.sleep(backoff)  # a bug that fails every time must not spin
                backoff = min(self._max_backoff_s, backoff * 2)

    async def _drop_connection(self) -> None:
        """Forget the connection; the reader's next turn reconnects and resubscribes."""
        conn, self._conn = self._conn, None
        self._connected.clear()
        if conn is not None:
            # Closing a broken connection: whatever it raises, it is gone all the same.
            with contextlib.suppress(Exception):
                await conn.disconnect()

    async def _read_forever(self) -> None:
        backoff = 0.05
        while not self._closed:
            conn = self._conn
            try:
                if conn is None:
                    await self._reconnect()
                    backoff = 0.05
                    continue
                response = await conn.read_response(timeout=math.inf, disconnect_on_error=True)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self._closed:
                    return
                logger.warning("result pub/sub connection lost (%s); reconnecting", exc)
                await self._drop_connection()
                await asyncio.sleep(backoff)
                backoff = min(self._max_backoff_s, backoff * 2)
                continue
            self._dispatch(response)
            # A burst of buffered messages would otherwise be parsed, and every waiter woken,
            # in one turn of the event loop: let the host's other coroutines run in between.
            await asyncio.sleep(0)

    async def _reconnect(self) -> None:
        await self._open()
        if self._on_reconnect is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._on_reconnect()
        channels = list(self._waiters)
        for channel in channels:
            fut = self._confirmed.get(channel)
            if fut is None or fut.done():
                self._confirmed[channel] = asyncio.get_running_loop().create_future()
        if channels:
            async with self._send_lock:
                assert self._conn is not None
                await self._conn.send_command("SUBSCRIBE", *channels, check_health=False)
        # Tell every waiter to re-read its key once its channel is confirmed again.
        for channel in channels:
            self._confirmed[channel].add_done_callback(
                functools.partial(self._on_resubscribed, channel)
            )
        logger.info("result pub/sub reconnected; %d channels resubscribed", len(channels))

    def _on_resubscribed(self, channel: str, fut: asyncio.Future[None]) -> None:
        if not fut.cancelled():
            self._recheck(channel)

    def _recheck(self, channel: str) -> None:
        for queue in self._waiters.get(channel, ()):
            queue.put_nowait(RECHECK)

    def _dispatch(self, response: Any) -> None:
        # PING's answer: ["pong", ""] while subscribed to something, plain PONG otherwise.
        if (isinstance(response, list) and response and _decode(response[0]) == "pong") or (
            isinstance(response, (bytes, str)) and _decode(response) == "PONG"
        ):
            self._last_pong = time.monotonic()
            return
        if not isinstance(response, list) or len(response) < 3:
            return
        kind = _decode(response[0])
        channel = _decode(response[1]) or ""
        if kind == "message":
            data = response[2]
            for queue in self._waiters.get(channel, ()):
                queue.put_nowait(data if isinstance(data, bytes) else str(data).encode())
        elif kind == "subscribe":
            fut = self._confirmed.get(channel)
            if fut is not None and not fut.done():
                fut.set_result(None)

    async def aclose(self) -> None:
        """Stop the reader and close the connection; waiters are cancelled by their owners."""
        self._closed = True
        for task in list(self._flushes):
            task.cancel()
        for running in (self._watch, self._reader):
            if running is not None:
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await running
        close_factory = getattr(self._connect, "aclose", None)
        if close_factory is not None:
            with contextlib.suppress(Exception):
                await close_factory()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            self._connected.clear()
            with contextlib.suppress(Exception):
                await conn.disconnect()
        for fut in self._confirmed.values():
            if not fut.done():
                fut.cancel()
        self._waiters.clear()
        self._confirmed.clear()


def _done_future() -> asyncio.Future[None]:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    fut.set_result(None)
    return fut


class ResultReader:
    """Reads and awaits task states; owned by a TaskManager or Monitor."""

    def __init__(
        self,
        backend: aioredis.Redis,
        hub: PubSubHub,
        *,
        keys: RecordKeys,
        record_ttl_s: float,
    ) -> None:
        self._backend = backend
        self._record = AsyncRecord(backend)
        self._hub = hub
        self._keys = keys
        self._record_ttl_s = record_ttl_s
        self._pending: list[tuple[str, str | None, asyncio.Future[TaskStatus]]] = []
        self._flush_scheduled = False
        self._flushing = 0

    async def fetch(self, task_id: str, owner: str | None = None) -> TaskStatus:
        """The task's stored meta and our marker, mapped to a TaskStatus.

        With ``owner`` (an :func:`~vocalborn_tasks.record.owner_tag`), a task recorded for
        another owner, or for none, reads exactly as an unknown id would (see
        :meth:`fetch_many`).

        Fetches requested in the same event-loop turn are coalesced into one pipelined round
        trip on one connection, and at most ``_MAX_FLUSHES`` such round trips are in flight:
        ten thousand waiters starting at once cost a handful of round trips and connections.
        """
        fut: asyncio.Future[TaskStatus] = asyncio.get_running_loop().create_future()
        self._pending.append((task_id, owner, fut))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._start_flush)
        return await fut

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        if self._flushing >= _MAX_FLUSHES:
            return  # the next flush to finish takes what has piled up, as one batch
        batch, self._pending = self._pending, []
        batch = [entry for entry in batch if not entry[2].done()]
        if batch:
            self._flushing += 1
            asyncio.get_running_loop().create_task(self._flush(batch))

    async def _flush(self, batch: list[tuple[str, str | None, asyncio.Future[TaskStatus]]]) -> None:
        try:
            await self._flush_batch(batch)
        finally:
            self._flushing -= 1
            if self._pending and not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._start_flush)

    async def _flush_batch(
        self, batch: list[tuple[str, str | None, asyncio.Future[TaskStatus]]]
    ) -> None:
        try:
            statuses = await self.fetch_many(
                [task_id for task_id, _, _ in batch], owners=[owner for _, owner, _ in batch]
            )
        except BaseException as exc:
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, fut), status in zip(batch, statuses, strict=True):
            if not fut.done():
                fut.set_result(status)

    async def fetch_many(
        self, task_ids: list[str], *, owners: Sequence[str | None] | None = None
    ) -> list[TaskStatus]:
        """Statuses of many tasks in one pipelined round trip.

        The server epoch and clock ride along (the epoch is written if missing, as a submit
        would): they tell an id the server forgot (LOST) from one it never had (NOT_FOUND).

        Args:
            owners: per task id, the owner digest the caller is scoped to (None: unscoped).
                A task whose marker records another owner (or none) is reported as if
                neither its meta nor its marker existed, and a scoped read reports every id
                without a visible record as ``NOT_FOUND`` (never LOST or EXPIRED by the id's
                age: a made-up id in the real format would otherwise read LOST while a
                hidden one read NOT_FOUND, confirming that it exists). The price: an owner
                whose task the server forgot sees NOT_FOUND, not LOST (its record, owner
                included, is gone).
        """
        read = await self._record.read(self._keys, task_ids)
        epoch, now = read.epoch
        scopes = owners if owners is not None else [None] * len(task_ids)
        statuses = []
        for task_id, owner, (meta, marker) in zip(task_ids, scopes, read.entries, strict=True):
            if owner is not None:
                missing = TaskState.NOT_FOUND
                if marker.get("owner") != owner:
                    meta, marker = None, {}
            else:
                missing = TaskState(
                    missing_state(task_id, epoch, record_ttl_s=self._record_ttl_s, now=now)
                )
            statuses.append(status_from_meta(task_id, meta, marker, missing=missing))
        return statuses

    async def watch(
        self, task_id: str, owner: str | None = None
    ) -> AsyncGenerator[TaskStatus, None]:
        """Yield the task's status now and at every change, ending at a final state.

        ``owner`` scopes it as :meth:`fetch` does: another owner's task is unknown.

        Raises:
            TaskNotFoundError: the id is unknown (or its result expired) at the start.
            TaskLostError: the server forgot the task while we were waiting.
        """
        async for status in self._follow(task_id, final_only=False, owner=owner):
            yield status

    async def wait(self, task_id: str, owner: str | None = None) -> TaskStatus:
        """Wait for a final state and return it (no timeout: the caller sets one).

        Like :meth:`watch`, but a message for a state that is not final is only peeked at:
        no status is built for the STARTED and PROGRESS steps nobody is shown.
        """
        last: TaskStatus | None = None
        async for status in self._follow(task_id, final_only=True, owner=owner):
            last = status
        assert last is not None
        if last.state is TaskState.LOST:
            raise TaskLostError(
                f"task {task_id} was lost: the server no longer knows it (was it restarted "
                "without persistence?)",
                task_id=task_id,
            )
        return last

    async def _follow(
        self, task_id: str, *, final_only: bool, owner: str | None = None
    ) -> AsyncGenerator[TaskStatus, None]:
        """Subscribe, read the key, then yield each change until a final state.

        With ``final_only``, messages for states that are not final are skipped undecoded.
        With ``owner``, every read is scoped (the first one decides whether the task is
        known; the channel's messages are only followed after it).
        """
        channel = META_PREFIX + task_id
        queue = await self._hub.subscribe(channel)
        try:
            status = await self.fetch(task_id, owner)
            if status.state is TaskState.NOT_FOUND:
                raise TaskNotFoundError(
                    f"task {task_id} is unknown or has expired", task_id=task_id
                )
            status = _lost_if_gone(status)
            yield status
            last = status
            while not status.is_final:
                item = await queue.get()
                if isinstance(item, _Recheck):
                    status = _lost_if_gone(await self.fetch(task_id, owner))
                    if status.task_name is None:
                        status = status.model_copy(update={"task_name": last.task_name})
                else:
                    if final_only and not may_be_final(item):
                        continue  # STARTED or PROGRESS: not worth decoding here
                    meta = read_meta(item)
                    if meta is None:
                        continue
                    if final_only and not is_final_status(meta.get("status")):
                        continue
                    status = status_from_meta(task_id, meta)
                    if _older(status, last):
                        # Published before the read that gave ``last`` (the subscription is
                        # confirmed first, so its messages can predate the read): stale.
                        status = last
                        continue
                    status = status.model_copy(
                        update={
                            "submitted_at": last.submitted_at,
                            "queue": last.queue,
                            # A PROGRESS message names no task: keep the name we know.
                            "task_name": status.task_name or last.task_name,
                        }
                    )
                if status != last:
                    yield status
                    last = status
        finally:
            await self._hub.unsubscribe(channel, queue)


def _older(status: TaskStatus, last: TaskStatus) -> bool:
    """Whether a published ``status`` lies before ``last`` in the task's life.

    Within an attempt a task only moves forward (queued, started, progress up, final); after
    a RETRY the next attempt starts again, so nothing counts as older then.
    """
    if last.state is TaskState.RETRY or status.is_final:
        return False
    new, old = parse_cursor(status.cursor), parse_cursor(last.cursor)
    return new is not None and old is not None and new < old


def _lost_if_gone(status: TaskStatus) -> TaskStatus:
    if status.state is TaskState.NOT_FOUND:
        return status.model_copy(update={"state": TaskState.LOST})
    return status
