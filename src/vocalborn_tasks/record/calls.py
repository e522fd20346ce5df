"""Every transition of the record as one typed call: the only place KEYS and ARGV are built.

A builder (``submit``, ``claim``, ``begin``...) turns typed arguments into a :class:`ScriptCall`
whose keys and arguments are named, in the order the script's header lists them (a test
checks each builder against its ``.lua`` header). Two runners execute them: :class:`Record`
on a synchronous client (the worker side) and :class:`AsyncRecord` on ``redis.asyncio`` (the
caller side). Every write a caller acts on goes through one of their few ``_run`` methods, so a
rule that must hold for all of them (a replication wait, a retry) is added in one place.

The worker's reservation is the exception that proves the rule: kombu's event loop sends it
on its own connection and reads the reply later, so :func:`reserve` only builds the call and
:meth:`ScriptCall.command` renders it; the transport sends that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

from redis.exceptions import NoScriptError, RedisError

from .confirm import (
    Confirmation,
    ConfirmedRun,
    relocate,
    relocate_sync,
    split_tail,
)
from .keys import RecordKeys, queue_lists
from .meta import celery_meta, read_meta, revoked_meta, revoked_meta_template
from .scripts import ScriptSet, script_sha, script_source
from .task_ids import epoch_seconds

if TYPE_CHECKING:
    import redis
    import redis.asyncio as aioredis

__all__ = [
    "AsyncRecord",
    "BeginVerdict",
    "PurgeBatch",
    "QueuePosition",
    "Record",
    "RecordRead",
    "ScriptCall",
    "ServerEpoch",
    "begin",
    "claim",
    "epoch",
    "lock",
    "position",
    "progress",
    "purge",
    "release",
    "reserve",
    "restore",
    "revoke",
    "store",
    "submit",
    "take_name",
]

Arg = str | int | float | bytes
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class ScriptCall(Generic[R]):
    """One run of a record script: its keys and arguments with their names, and its reply's type.

    ``key_names``/``arg_names`` are the header's names (a variadic tail is named once, as
    ``name...``); they exist for the header test and for error messages, not for Redis.
    ``parse`` turns the raw reply into ``R``.
    """

    script: str
    key_names: tuple[str, ...]
    keys: tuple[str, ...]
    arg_names: tuple[str, ...]
    args: tuple[Arg, ...]
    parse: Callable[[Any], R]
    #: ``(channel, message)`` the runner publishes once the write is confirmed (the script
    #: itself then does not: waiters must not hear an outcome a failover can take back), and
    #: only if the reply is true: the script says whether ``message`` is what is stored.
    publish_after: tuple[str, Arg] | None = None

    def command(self, *, by_source: bool = False) -> tuple[Arg, ...]:
        """The raw command (EVALSHA, or EVAL with the source after a NOSCRIPT)."""
        head: Arg = script_source(self.script) if by_source else script_sha(self.script)
        return (
            "EVAL" if by_source else "EVALSHA",
            head,
            len(self.keys),
            *self.keys,
            *self.args,
        )


def _identity(reply: Any) -> Any:
    return reply


def _call(
    script: str,
    keys: Mapping[str, str],
    args: Mapping[str, Arg],
    parse: Callable[[Any], R],
    *,
    more_keys: tuple[str, Sequence[str]] | None = None,
) -> ScriptCall[R]:
    key_names, key_values = tuple(keys), tuple(keys.values())
    if more_keys is not None:
        key_names += (more_keys[0] + "...",)
        key_values += tuple(more_keys[1])
    return ScriptCall(script, key_names, key_values, tuple(args), tuple(args.values()), parse)


# --- replies ----------------------------------------------------------------------------------
class BeginVerdict(NamedTuple):
    """``begin``'s reply: the delivery number and what to do with it."""

    delivery: int
    #: 0 run it, 1 revoked, 2 already finished (acknowledge, do not run again).
    verdict: int


class QueuePosition(NamedTuple):
    """``position``'s reply."""

    #: 1-based index of the list holding the message (in consumption order); 0: not queued.
    list_index: int
    ahead: int
    total: int


class ServerEpoch(NamedTuple):
    """``epoch``'s reply, in Unix seconds (None: unreadable)."""

    epoch_s: float | None
    server_now_s: float | None


class PurgeBatch(NamedTuple):
    """``purge``'s reply: messages removed by this call, and messages still queued."""

    taken: int
    left: int


def _purge_reply(reply: Any) -> PurgeBatch:
    return PurgeBatch(int(reply[0]), int(reply[1]))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _none(reply: Any) -> None:
    return None


def _begin_reply(reply: Any) -> BeginVerdict:
    return BeginVerdict(int(reply[0]), int(reply[1]))


def _position_reply(reply: Any) -> QueuePosition:
    return QueuePosition(int(reply[0]), int(reply[1]), int(reply[2]))


def _epoch_reply(reply: Any) -> ServerEpoch:
    return ServerEpoch(epoch_seconds(reply[0]), epoch_seconds(reply[1]))


# --- builders: one per transition -------------------------------------------------------------
def submit(
    keys: RecordKeys,
    *,
    task_id: str,
    task_name: str,
    queue: str,
    message: str | bytes,
    marker_ttl_s: int,
    broker_db: int,
    submitted_at: float | None = None,
) -> ScriptCall[None]:
    """(none) -> queued: the submit marker, the message and its wake-up token in one step."""
    return _call(
        "submit",
        {
            "marker": keys.marker(task_id),
            "epoch": keys.epoch,
            "queue": queue,
            "wake": keys.wake(queue),
        },
        {
            "task_name": task_name,
            "queue": queue,
            "submitted_at": repr(time.time() if submitted_at is None else submitted_at),
            "marker_ttl": int(marker_ttl_s),
            "broker_db": int(broker_db),
            "message": message,
        },
        _none,
    )


def claim(
    keys: RecordKeys,
    *,
    task_id: str,
    task_name: str,
    queue: str,
    practice_record_id: str,
    message: str | bytes,
    marker_ttl_s: int,
    broker_db: int,
    force: bool = False,
    submitted_at: float | None = None,
    owner: str | None = None,
) -> ScriptCall[str]:
    """Like :func:`submit`, holding the practice record's in-flight slot (returns its holder).

    ``owner`` is an :func:`~vocalborn_tasks.record.keys.owner_tag` (never the identity): the
    slot is then per (owner, practice record) and the marker records the owner.
    """
    return _call(
        "claim",
        {
            "inflight": keys.inflight(practice_record_id, owner),
            "marker": keys.marker(task_id),
            "epoch": keys.epoch,
            "queue": queue,
            "wake": keys.wake(queue),
        },
        {
            "task_id": task_id,
            "marker_ttl": int(marker_ttl_s),
            "task_name": task_name,
            "queue": queue,
            "submitted_at": repr(time.time() if submitted_at is None else submitted_at),
            "force": "1" if force else "0",
            "meta_prefix": keys.meta(""),
            "marker_prefix": keys.marker_prefix,
            "practice_record_id": practice_record_id,
            "broker_db": int(broker_db),
            "owner": owner or "",
            "message": message,
        },
        _text,
    )


def reserve(
    keys: RecordKeys,
    *,
    lists: Sequence[str],
    token: str,
    acks: Sequence[str],
    now: float | None = None,
) -> ScriptCall[Any]:
    """queued -> reserved: pop the next message from ``lists`` into ``unacked``, applying
    ``acks`` first; ``token`` is the queue whose wake-up token the caller consumed ('')."""
    return _call(
        "reserve",
        {"unacked": keys.unacked, "unacked_index": keys.unacked_index},
        {
            "now": repr(time.time() if now is None else now),
            "token": token,
            "acks": json.dumps(list(acks)),
            "wake_prefix": keys.wake_prefix,
        },
        _identity,
        more_keys=("lists", lists),
    )


def begin(
    keys: RecordKeys,
    *,
    task_id: str,
    retries: int,
    hostname: str,
    running_entry: str,
    deliveries_ttl_s: int,
    meta_ttl_s: int,
) -> ScriptCall[BeginVerdict]:
    """reserved -> STARTED: count the delivery, check revoke set and outcome, list as running."""
    started = celery_meta(task_id, "STARTED", {"pid": os.getpid(), "hostname": hostname})
    return _call(
        "begin",
        {
            "deliveries": keys.deliveries(task_id, retries),
            "revoked": keys.revoked,
            "running": keys.running,
            "meta": keys.meta(task_id),
        },
        {
            "task_id": task_id,
            "deliveries_ttl": int(deliveries_ttl_s),
            "running_entry": running_entry,
            "started_meta": started,
            "meta_ttl": max(1, int(meta_ttl_s)),
        },
        _begin_reply,
    )


def progress(
    keys: RecordKeys, *, task_id: str, step: str, percent: float, meta_ttl_s: int
) -> ScriptCall[bool]:
    """STARTED/PROGRESS -> PROGRESS, never over a final state."""
    return _call(
        "progress",
        {"meta": keys.meta(task_id)},
        {
            "progress_meta": celery_meta(task_id, "PROGRESS", {"step": step, "percent": percent}),
            "meta_ttl": max(1, int(meta_ttl_s)),
        },
        bool,
    )


def store(
    keys: RecordKeys,
    *,
    task_id: str,
    meta: str,
    meta_ttl_s: int,
    state: str,
    stats: str | None,
    delivery_tag: str | None,
    broker_db: int,
    result_db: int,
    stats_if_revoked: str | None = None,
    publish: bool = True,
) -> ScriptCall[bool]:
    """-> RETRY/SUCCESS/FAILURE/REVOKED and, with a ``delivery_tag``, its ack: one step.

    ``publish=False`` leaves the publish to the runner, after the write is confirmed.
    """
    call = _call(
        "store",
        {
            "meta": keys.meta(task_id),
            "marker": keys.marker(task_id),
            "unacked": keys.unacked,
            "unacked_index": keys.unacked_index,
        },
        {
            "meta": meta,
            "meta_ttl": int(meta_ttl_s),
            "state": state,
            "stats": stats or "",
            "delivery_tag": delivery_tag or "",
            "broker_db": int(broker_db),
            "result_db": int(result_db),
            "stats_if_revoked": stats_if_revoked or "",
            "publish": "1" if publish else "0",
        },
        bool,
    )
    return call if publish else _publishing_after(call, keys.meta(task_id), meta)


def retry(
    keys: RecordKeys,
    *,
    task_id: str,
    retry: int,
    meta: str,
    meta_ttl_s: int,
    queue: str,
    priority: int,
    message: str | bytes,
    stats: str | None,
    delivery_tag: str | None,
    broker_db: int,
    result_db: int,
    stats_if_revoked: str | None = None,
    publish: bool = True,
) -> ScriptCall[bool]:
    """running -> RETRY, with retry ``retry``'s message queued and this delivery acked: one step.

    False when a final state got there first (a cancel): nothing is queued. ``publish=False``
    leaves publishing RETRY to the runner, after the write is confirmed.
    """
    call = _call(
        "retry",
        {
            "meta": keys.meta(task_id),
            "retried": keys.retried(task_id, retry),
            "queue_list": keys.queue_list(queue, priority),
            "wake": keys.wake(queue),
            "unacked": keys.unacked,
            "unacked_index": keys.unacked_index,
        },
        {
            "meta": meta,
            "meta_ttl": int(meta_ttl_s),
            "stats": stats or "",
            "delivery_tag": delivery_tag or "",
            "broker_db": int(broker_db),
            "result_db": int(result_db),
            "message": message,
            "retried_ttl": max(int(meta_ttl_s), 3600),
            "publish": "1" if publish else "0",
            "stats_if_revoked": stats_if_revoked or "",
        },
        bool,
    )
    return call if publish else _publishing_after(call, keys.meta(task_id), meta)


def _publishing_after(call: ScriptCall[R], channel: str, message: Arg) -> ScriptCall[R]:
    return ScriptCall(
        call.script,
        call.key_names,
        call.keys,
        call.arg_names,
        call.args,
        call.parse,
        publish_after=(channel, message),
    )


def revoke(
    keys: RecordKeys,
    *,
    task_id: str,
    meta_ttl_s: int,
    terminate: bool = False,
    revoked_at: float | None = None,
    publish: bool = True,
) -> ScriptCall[bool]:
    """Any unfinished state -> REVOKED, persisted in the revoke set and published; with
    ``terminate``, the worker running it is told to stop it now (False: already finished).
    ``publish=False``: the runner publishes REVOKED once the write is confirmed."""
    meta = revoked_meta(task_id)
    call = _call(
        "revoke",
        {
            "revoked": keys.revoked,
            "meta": keys.meta(task_id),
            "marker": keys.marker(task_id),
            "terminate": keys.terminate,
            "terminate_channel": keys.terminate_channel,
        },
        {
            "task_id": task_id,
            "revoked_at": repr(time.time() if revoked_at is None else revoked_at),
            "revoked_meta": meta,
            "meta_ttl": int(meta_ttl_s),
            "terminate": "1" if terminate else "0",
            "publish": "1" if publish else "0",
        },
        bool,
    )
    return call if publish else _publishing_after(call, keys.meta(task_id), meta)


def take_name(
    keys: RecordKeys,
    *,
    name: str,
    pid: int,
    machine: str,
    ttl_ms: int,
    stale_pid: int | None = None,
) -> ScriptCall[str]:
    """Take a worker's node name (its heartbeat hash) unless a live worker holds it.

    The reply is '' when taken, else ``'<machine> <pid>'`` of the holder; a holder on this
    machine with ``stale_pid`` (a process the caller found gone) is replaced.
    """
    return _call(
        "take_name",
        {"worker": keys.worker(name)},
        {
            "pid": int(pid),
            "machine": machine,
            "ttl_ms": max(1, int(ttl_ms)),
            "stale_pid": "" if stale_pid is None else int(stale_pid),
            "name": name,
        },
        _text,
    )


def purge(
    keys: RecordKeys,
    *,
    queue: str,
    limit: int,
    broker_db: int,
    result_db: int,
    meta_ttl_s: int,
) -> ScriptCall[PurgeBatch]:
    """queued -> REVOKED (code ``purged``) for up to ``limit`` messages of ``queue``."""
    head, tail = revoked_meta_template("purged")
    return _call(
        "purge",
        {"wake": keys.wake(queue)},
        {
            "limit": int(limit),
            "broker_db": int(broker_db),
            "result_db": int(result_db),
            "meta_prefix": keys.meta(""),
            "marker_prefix": keys.marker_prefix,
            "inflight_prefix": keys.inflight(""),
            "revoked_head": head,
            "revoked_tail": tail,
            "meta_ttl": int(meta_ttl_s),
            "owned_inflight_prefix": keys.owned_inflight_prefix,
        },
        _purge_reply,
        more_keys=("lists", queue_lists(queue)),
    )


def restore(keys: RecordKeys, *, delivery_tag: str) -> ScriptCall[bool]:
    """reserved by a dead worker -> queued (the reaper's step)."""
    return _call(
        "restore",
        {"unacked": keys.unacked, "unacked_index": keys.unacked_index},
        {"delivery_tag": delivery_tag, "wake_prefix": keys.wake_prefix},
        bool,
    )


def release(*, key: str, token: str) -> ScriptCall[bool]:
    """Drop a claim or lock, only if it still holds ``token``."""
    return _call("release", {"lock": key}, {"token": token}, bool)


def lock(*, key: str, token: str, ttl_ms: int) -> ScriptCall[bool]:
    """Take a lock, or extend it when ``token`` holds it."""
    return _call("lock", {"lock": key}, {"token": token, "ttl_ms": int(ttl_ms)}, bool)


def position(*, queue: str, task_id: str) -> ScriptCall[QueuePosition]:
    """Where ``task_id``'s message waits in ``queue`` (a read)."""
    return _call(
        "position",
        {},
        {"task_id": task_id},
        _position_reply,
        more_keys=("lists", queue_lists(queue)),
    )


def epoch(keys: RecordKeys) -> ScriptCall[ServerEpoch]:
    """The server's epoch (written if missing) and its clock (a read, bar that first write)."""
    return _call("epoch", {"epoch": keys.epoch}, {}, _epoch_reply)


# --- runners ----------------------------------------------------------------------------------
class RecordRead(NamedTuple):
    """What :meth:`AsyncRecord.read` saw, in one round trip."""

    #: Per task id: its decoded meta (None: none) and its submit marker (empty: none).
    entries: list[tuple[dict[str, Any] | None, dict[str, str]]]
    epoch: ServerEpoch


class Record:
    """Runs the record's calls on a synchronous client (the worker, beat and their threads).

    ``confirm`` (see :mod:`.confirm`): replicas that must hold a write run with
    :meth:`run_confirmed`; None confirms nothing (a single server).
    """

    def __init__(self, client: redis.Redis, confirm: Confirmation | None = None) -> None:
        self.client = client
        self.confirm = confirm
        self._scripts = ScriptSet(client)

    @property
    def confirms(self) -> bool:
        """Whether confirmed runs wait for replicas (then scripts leave publishing to us)."""
        return self.confirm is not None

    def run(self, call: ScriptCall[R]) -> R:
        """Run one transition and return its typed reply."""
        return call.parse(self._scripts[call.script](keys=list(call.keys), args=list(call.args)))

    def run_confirmed(self, call: ScriptCall[R]) -> R:
        """Run a transition a caller or an external system acts on; return once replicas
        hold it (see :mod:`.confirm`), publishing its outcome only then.

        Raises:
            ReplicaShortfallError: too few replicas confirmed within ``REDIS_FAILOVER_WAIT_S``.
            redis.RedisError: not a failover error, or one that outlasted the wait.
        """
        confirm = self.confirm
        if confirm is None:
            value = self.run(call)
        else:
            run = ConfirmedRun(confirm)
            while True:
                try:
                    with self.client.pipeline(transaction=False) as pipe:
                        self._scripts[call.script](
                            keys=list(call.keys), args=list(call.args), client=pipe
                        )
                        tail = run.tail()
                        for command in tail:
                            pipe.execute_command(*command)  # type: ignore[no-untyped-call]
                        replies, acks, info = split_tail(pipe.execute(), len(tail))
                except Exception as exc:
                    pause = run.after_error(exc)
                    if pause is None:
                        raise
                    relocate_sync(self.client)
                    time.sleep(pause)
                    continue
                if run.after_reply(acks, info):
                    break
                relocate_sync(self.client)
            value = call.parse(replies[0])
        if call.publish_after is not None and value:
            self.client.publish(*call.publish_after)
        return value

    def meta_status(self, keys: RecordKeys, task_id: str) -> str | None:
        """The stored meta's status (e.g. after a refused store: who got there first)."""
        meta = read_meta(self.client.get(keys.meta(task_id)))
        status = None if meta is None else meta.get("status")
        return status if isinstance(status, str) else None


#: Sends of a caller pipeline that meet NOSCRIPT before it gives up. Two were not enough: the
#: scripts were loaded on a server that was restarting, redis-py's retry resent the pipeline
#: to the new, empty one, and a waiter failed with ``BrokerUnavailableError`` (a CI run of the
#: restart-without-persistence test).
_NOSCRIPT_ATTEMPTS = 3


class AsyncRecord:
    """Runs the record's calls on ``redis.asyncio`` (TaskManager, Monitor, alerts).

    ``confirm``: as for :class:`Record`.
    """

    def __init__(self, client: aioredis.Redis, confirm: Confirmation | None = None) -> None:
        self.client = client
        self.confirm = confirm
        self._scripts = ScriptSet(client)

    @property
    def confirms(self) -> bool:
        """Whether confirmed runs wait for replicas (then scripts leave publishing to us)."""
        return self.confirm is not None

    async def run_confirmed(self, call: ScriptCall[R]) -> R:
        """:meth:`Record.run_confirmed` on ``redis.asyncio``."""
        (value,) = await self.run_many_confirmed([call])
        return value

    async def run_many_confirmed(self, calls: Sequence[ScriptCall[R]]) -> list[R]:
        """Run transitions in one round trip and return once replicas hold them (see
        :meth:`Record.run_confirmed`); each must be harmless to run twice."""
        confirm = self.confirm
        if confirm is None:
            values = await self.run_many(calls)
        else:
            run = ConfirmedRun(confirm)
            while True:
                try:
                    async with self.client.pipeline(transaction=False) as pipe:
                        for call in calls:
                            self._queue(pipe, call)
                        tail = run.tail()
                        for command in tail:
                            pipe.execute_command(*command)
                        replies, acks, info = split_tail(await pipe.execute(), len(tail))
                except Exception as exc:
                    pause = run.after_error(exc)
                    if pause is None:
                        raise
                    await relocate(self.client)
                    if isinstance(exc, NoScriptError):  # a new master, or a flushed cache
                        with contextlib.suppress(RedisError):  # the next attempt says why
                            await self._load(calls)
                    await asyncio.sleep(pause)
                    continue
                if run.after_reply(acks, info):
                    break
                await relocate(self.client)
            values = [call.parse(r) for call, r in zip(calls, replies, strict=True)]
        for call, value in zip(calls, values, strict=True):
            if call.publish_after is not None and value:
                await self.client.publish(*call.publish_after)
        return values

    async def run(self, call: ScriptCall[R]) -> R:
        """Run one transition and return its typed reply."""
        script = self._scripts[call.script]
        return call.parse(await script(keys=list(call.keys), args=list(call.args)))

    async def run_many(self, calls: Sequence[ScriptCall[R]]) -> list[R]:
        """Run transitions in one pipelined round trip; replies in order.

        Only for transitions that may run twice (claim, reads): see :meth:`_pipeline`.
        """

        async def queue(pipe: Any) -> None:
            for call in calls:
                self._queue(pipe, call)

        replies = await self._pipeline(queue, calls)
        return [call.parse(reply) for call, reply in zip(calls, replies, strict=True)]

    @staticmethod
    def _queue(pipe: Any, call: ScriptCall[Any]) -> None:
        # A bare EVALSHA: a script registered on the pipeline would have redis-py ask the
        # server which scripts it holds (SCRIPT EXISTS) before every execute, a second round
        # trip per submit and per status read. A missing script is loaded after its NOSCRIPT.
        pipe.execute_command(*call.command())

    async def _load(self, calls: Sequence[ScriptCall[Any]]) -> None:
        for name in sorted({call.script for call in calls}):
            await self.client.script_load(script_source(name))

    async def _pipeline(
        self, queue: Callable[[Any], Awaitable[None]], calls: Sequence[ScriptCall[Any]]
    ) -> list[Any]:
        """Build a pipeline with ``queue`` and execute it, once more after a NOSCRIPT.

        The scripts (``calls``) go as bare EVALSHA: a server that does not hold one (new, or
        restarted under the call, or its cache flushed) answers NOSCRIPT for it and runs the
        rest; the scripts are then loaded and the whole pipeline sent again (up to
        :data:`_NOSCRIPT_ATTEMPTS` times: a restart can fall between the load and the resend,
        and redis-py then resends to the new, empty server). A transition
        sent twice must be harmless (claim returns the slot's holder: the id the first
        attempt took, if it ran).
        """
        for attempt in range(1, _NOSCRIPT_ATTEMPTS + 1):
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    await queue(pipe)
                    return list(await pipe.execute())
            except NoScriptError:
                if attempt == _NOSCRIPT_ATTEMPTS:
                    raise
                await self._load(calls)
        raise AssertionError("unreachable")

    async def read(self, keys: RecordKeys, task_ids: Sequence[str]) -> RecordRead:
        """Metas and markers of ``task_ids`` and the server's epoch, in one round trip.

        The epoch is written if missing, by the server's clock (as a submit would), so an id
        the server forgot (LOST) is told from one it never had (NOT_FOUND) the same way in
        every process.
        """

        async def queue(pipe: Any) -> None:
            for task_id in task_ids:
                pipe.get(keys.meta(task_id))
                pipe.hgetall(keys.marker(task_id))
            self._queue(pipe, read_epoch)

        read_epoch = epoch(keys)
        raw = await self._pipeline(queue, [read_epoch])
        entries = []
        for i in range(len(task_ids)):
            marker = {_text(k): _text(v) for k, v in raw[2 * i + 1].items()}
            entries.append((read_meta(raw[2 * i]), marker))
        return RecordRead(entries, _epoch_reply(raw[-1]))
