"""The task record's Lua scripts against the real server: one test per transition and refusal.

Every test works under its own key prefix (and its own unacked hash, queues and task ids), so
nothing here sees another test's keys; the fixture deletes them afterwards.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from vocalborn_tasks.config import TaskSettings
from vocalborn_tasks.record import (
    FINAL_STATES,
    SCRIPT_NAMES,
    AsyncRecord,
    Record,
    RecordKeys,
    ScriptSet,
    calls,
    celery_meta,
    epoch_seconds,
    id_time,
    new_task_id,
    owner_tag,
    revoked_meta,
    script_source,
)
from vocalborn_tasks.record.keys import queue_lists
from vocalborn_tasks.record.meta import revoked_meta_template, revoked_reason
from vocalborn_tasks.record.purge import purge_queue

pytestmark = pytest.mark.integration

FINALS = sorted(FINAL_STATES)
TTL = 600


@dataclass
class Rec:
    """One test's view of the record: clients on both databases and its own key names."""

    settings: TaskSettings
    result: redis.Redis
    broker: redis.Redis
    keys: RecordKeys
    ids: list[str] = field(default_factory=list)
    subs: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rs = ScriptSet(self.result)  # scripts run on the result database
        self.bs = ScriptSet(self.broker)  # scripts run on the broker database
        self.queue = self.k("q")
        self.unacked = self.k("unacked")
        self.index = self.k("unacked_index")

    def k(self, *parts: str) -> str:
        return ":".join((self.keys.prefix, *parts))

    def new_id(self) -> str:
        task_id = new_task_id()
        self.ids.append(task_id)
        return task_id

    def meta(self, task_id: str) -> str:
        return RecordKeys.meta(task_id)

    def listen(self, task_id: str) -> Any:
        """A pubsub on the task's meta channel, its subscription confirmed."""
        pubsub = redis.Redis.from_url(self.settings.backend_url).pubsub()  # type: ignore[no-untyped-call]
        self.subs.append(pubsub)
        pubsub.subscribe(self.meta(task_id))
        assert pubsub.get_message(timeout=5.0)["type"] == "subscribe"
        return pubsub

    def set_meta(self, task_id: str, status: str) -> str:
        value = celery_meta(task_id, status, None, done=status in FINAL_STATES)
        self.result.set(self.meta(task_id), value)
        return value

    def get_meta(self, task_id: str) -> Any:
        raw = self.result.get(self.meta(task_id))
        return None if raw is None else json.loads(raw)

    def submit(self, task_id: str, message: bytes = b"{}") -> Any:
        k, q, db = self.keys, self.queue, self.settings.redis_db_broker
        return self.rs["submit"](
            keys=[k.marker(task_id), k.epoch, q, k.wake(q)],
            args=["t.name", q, "1700000000.5", TTL, db, message],
        )

    def claim(
        self,
        task_id: str,
        record: str,
        force: str = "0",
        message: bytes = b"m",
        owner: str = "",
    ) -> Any:
        k, q, db = self.keys, self.queue, self.settings.redis_db_broker
        return self.rs["claim"](
            keys=[k.inflight(record, owner), k.marker(task_id), k.epoch, q, k.wake(q)],
            args=[task_id, TTL, "t.analyse", q, "1700000000.5", force, "celery-task-meta-",
                  k.marker_prefix, record, db, owner, message],
        )  # fmt: skip

    def reserve(self, lists: list[str], token: str = "", acks: tuple[str, ...] = ()) -> Any:
        return self.bs["reserve"](
            keys=[self.unacked, self.index, *lists],
            args=["1234.5", token, json.dumps(list(acks)), self.keys.wake_prefix],
        )

    def store(
        self, task_id: str, state: str, tag: str = "", expiry: int = 60, stats: str = ""
    ) -> Any:
        value = celery_meta(task_id, state, 42, done=state in FINAL_STATES)
        dbs = (self.settings.redis_db_broker, self.settings.redis_db_backend)
        return self.rs["store"](
            keys=[self.meta(task_id), self.keys.marker(task_id), self.unacked, self.index],
            args=[value, expiry, state, stats, tag, *dbs],
        )

    def retry(
        self, task_id: str, value: str, tag: str = "", stats: str = "", if_revoked: str = ""
    ) -> Any:
        """The ``retry`` script for retry 1, its message queued on ``queue`` priority 3."""
        dbs = (self.settings.redis_db_broker, self.settings.redis_db_backend)
        return self.rs["retry"](
            keys=[self.meta(task_id), self.keys.retried(task_id, 1),
                  RecordKeys.queue_list(self.queue, 3), self.keys.wake(self.queue),
                  self.unacked, self.index],
            args=[value, 60, stats, tag, *dbs, f"next-{task_id}", 120, "1", if_revoked],
        )  # fmt: skip

    def put_unacked(self, tag: str, entry: bytes = b'[{},"","q"]') -> None:
        self.broker.hset(self.unacked, tag, entry)
        self.broker.zadd(self.index, {tag: 1.0})

    def reserved(self) -> list[Any]:
        """Tags in ``unacked`` (sorted), checked to match the index."""
        tags = sorted(self.broker.hkeys(self.unacked))
        assert sorted(self.broker.zrange(self.index, 0, -1)) == tags
        return tags

    def restore(self, tag: str) -> Any:
        return self.bs["restore"](
            keys=[self.unacked, self.index], args=[tag, self.keys.wake_prefix]
        )

    def queued(self, name: str | None = None) -> list[Any]:
        return self.broker.lrange(name or self.queue, 0, -1)

    def tokens(self, queue: str | None = None) -> int:
        return self.broker.llen(self.keys.wake(queue or self.queue))


@pytest.fixture
def rec(base_settings: TaskSettings) -> Iterator[Rec]:
    result = redis.Redis.from_url(base_settings.backend_url, single_connection_client=True)
    broker = redis.Redis.from_url(base_settings.broker_url, single_connection_client=True)
    r = Rec(base_settings, result, broker, RecordKeys(prefix=f"t-{uuid.uuid4().hex}"))
    try:
        yield r
    finally:
        for pubsub in r.subs:
            pubsub.close()
        for client in (result, broker):
            stale = list(client.scan_iter(match=f"{r.keys.prefix}*", count=1000))
            stale += [r.meta(task_id) for task_id in r.ids]
            if stale:
                client.delete(*stale)
            client.close()


def envelope(tag: str | None, routing_key: str | None = None, **headers: Any) -> bytes:
    props: dict[str, Any] = {"correlation_id": "c", "body_encoding": "base64", "priority": 0}
    if tag is not None:
        props["delivery_tag"] = tag
    if routing_key is not None:
        props["delivery_info"] = {"exchange": "", "routing_key": routing_key}
    return json.dumps(
        {"body": "e30=", "headers": {"id": "x", **headers}, "properties": props}
    ).encode()


def published(pubsub: Any) -> Any:
    """The next published message on a subscribed pubsub (bounded wait), or None."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=0.5)
        if msg is not None and msg["type"] == "message":
            return msg["data"]
    return None


# --- task ids and the epoch --------------------------------------------------------------------
def test_new_task_id_is_uuid7() -> None:
    parsed = uuid.UUID(new_task_id())
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert abs(id_time(str(parsed)) - time.time()) < 5  # type: ignore[operator]


def test_task_ids_are_time_ordered() -> None:
    ids = [new_task_id() for _ in range(200)]
    times = [id_time(i) or 0.0 for i in ids]
    assert all(times) and times == sorted(times)
    assert sorted(ids, key=lambda i: id_time(i) or 0.0) == ids  # stable: creation order
    assert len(set(ids)) == len(ids)


# Named ids: a fresh uuid4 each run, yet the same test id in every pytest-xdist process.
@pytest.mark.parametrize(
    "value",
    [str(uuid.uuid4()), "not-a-uuid", "", "1234"],
    ids=["uuid4", "not-a-uuid", "empty", "digits"],
)
def test_id_time_none_without_a_time(value: str) -> None:
    assert id_time(value) is None


def test_epoch_seconds_decodes_what_the_prelude_writes(rec: Rec) -> None:
    before = rec.result.time()
    rec.submit(rec.new_id())
    after = rec.result.time()
    epoch = epoch_seconds(rec.result.get(rec.keys.epoch))
    assert epoch is not None
    assert before[0] + before[1] / 1e6 <= epoch <= after[0] + after[1] / 1e6
    assert epoch_seconds(None) is None and epoch_seconds(b"garbage") is None


# --- submit -------------------------------------------------------------------------------------
def test_epoch_is_written_once_by_the_server_clock(rec: Rec) -> None:
    record = Record(rec.result)
    before = rec.result.time()
    first = record.run(calls.epoch(rec.keys))
    after = rec.result.time()
    assert first.epoch_s is not None and first.server_now_s is not None
    assert before[0] + before[1] / 1e6 <= first.epoch_s <= after[0] + after[1] / 1e6
    assert first.epoch_s <= first.server_now_s <= after[0] + after[1] / 1e6
    second = record.run(calls.epoch(rec.keys))
    assert second.epoch_s == first.epoch_s  # kept, not moved
    assert second.server_now_s is not None and second.server_now_s >= first.server_now_s


def test_epoch_keeps_an_epoch_a_submit_wrote(rec: Rec) -> None:
    rec.result.set(rec.keys.epoch, "1000000")
    assert Record(rec.result).run(calls.epoch(rec.keys)).epoch_s == 1.0


async def test_async_read_decodes_metas_markers_and_the_epoch(rec: Rec) -> None:
    done, queued, unknown, garbled = rec.new_id(), rec.new_id(), rec.new_id(), rec.new_id()
    rec.set_meta(done, "SUCCESS")
    rec.result.set(rec.meta(garbled), b"not json")
    rec.result.hset(rec.keys.marker(queued), mapping={"name": "n", "queue": "q", "t": "1.5"})
    client = aioredis.Redis.from_url(rec.settings.backend_url)
    try:
        read = await AsyncRecord(client).read(rec.keys, [done, queued, unknown, garbled])
    finally:
        await client.aclose()
    (done_meta, done_marker), (queued_meta, queued_marker), unknown_entry, garbled_entry = (
        read.entries
    )
    assert done_meta is not None and done_meta["status"] == "SUCCESS" and done_marker == {}
    assert queued_meta is None and queued_marker == {"name": "n", "queue": "q", "t": "1.5"}
    assert unknown_entry == (None, {})
    assert garbled_entry == (None, {})  # unreadable meta: as if missing, never an exception
    assert read.epoch.epoch_s is not None
    assert epoch_seconds(rec.result.get(rec.keys.epoch)) == read.epoch.epoch_s


async def test_async_pipelines_survive_a_server_that_forgot_the_scripts(rec: Rec) -> None:
    """A pipeline sends its scripts as bare EVALSHA (no SCRIPT EXISTS round trip first): a
    server with an empty cache (restarted, or a new master) answers NOSCRIPT; the scripts are
    loaded and the pipeline sent again, and a transition in it takes effect once."""
    task_id = rec.new_id()
    client = aioredis.Redis.from_url(rec.settings.backend_url)
    try:
        await client.script_flush()
        read = await AsyncRecord(client).read(rec.keys, [task_id])
        assert read.entries == [(None, {})] and read.epoch.epoch_s is not None
        await client.script_flush()
        claim = calls.claim(
            rec.keys,
            task_id=task_id,
            task_name="n",
            queue=rec.queue,
            practice_record_id=rec.k("record"),
            message=envelope("tag"),
            marker_ttl_s=TTL,
            broker_db=rec.settings.redis_db_broker,
        )
        assert await AsyncRecord(client).run_many([claim]) == [task_id]
    finally:
        await client.aclose()
    assert rec.broker.llen(rec.queue) == 1


async def test_async_pipelines_survive_losing_the_scripts_again_after_loading_them(
    rec: Rec,
) -> None:
    """A restart can fall between the load after a NOSCRIPT and the resend (redis-py resends
    to the new, empty server): forced here by flushing the cache right after the load, once."""

    class ForgetsOnce(AsyncRecord):
        forgotten = 0

        async def _load(self, calls: Any) -> None:
            await super()._load(calls)
            if not self.forgotten:
                self.forgotten += 1
                await self.client.script_flush()

    task_id = rec.new_id()
    client = aioredis.Redis.from_url(rec.settings.backend_url)
    try:
        await client.script_flush()
        record = ForgetsOnce(client)
        read = await record.read(rec.keys, [task_id])
        assert record.forgotten == 1
        assert read.entries == [(None, {})] and read.epoch.epoch_s is not None
    finally:
        await client.aclose()


def test_submit_writes_marker_and_queues_message_with_a_token(rec: Rec) -> None:
    task_id = rec.new_id()
    assert rec.submit(task_id, b'{"raw": 1}') == 1
    marker = rec.keys.marker(task_id)
    fields = {b"name": b"t.name", b"queue": rec.queue.encode(), b"t": b"1700000000.5"}
    assert rec.result.hgetall(marker) == fields
    assert 0 < rec.result.ttl(marker) <= TTL
    assert rec.queued() == [b'{"raw": 1}']
    assert rec.broker.lrange(rec.keys.wake(rec.queue), 0, -1) == [b"1"]
    assert not rec.result.exists(rec.queue, rec.keys.wake(rec.queue))  # broker db only


def test_submit_writes_the_epoch_once(rec: Rec) -> None:
    rec.submit(rec.new_id())
    first = rec.result.get(rec.keys.epoch)
    assert first is not None and first.isdigit()
    rec.submit(rec.new_id())
    assert rec.result.get(rec.keys.epoch) == first
    assert rec.tokens() == 2 and len(rec.queued()) == 2


def test_submit_leaves_the_client_on_the_result_db(rec: Rec) -> None:
    rec.submit(rec.new_id())
    probe = rec.k("probe")
    rec.result.set(probe, "1")
    assert rec.result.client_info()["db"] == rec.settings.redis_db_backend
    assert rec.broker.get(probe) is None
    assert redis.Redis.from_url(rec.settings.backend_url).get(probe) == b"1"


# --- claim --------------------------------------------------------------------------------------
def test_claim_takes_a_free_slot(rec: Rec) -> None:
    task_id = rec.new_id()
    assert rec.claim(task_id, "rec-1", message=b"msg") == task_id.encode()
    slot = rec.keys.inflight("rec-1")
    assert rec.result.get(slot) == task_id.encode()
    assert 0 < rec.result.ttl(slot) <= TTL
    marker = rec.result.hgetall(rec.keys.marker(task_id))
    assert marker[b"record"] == b"rec-1" and marker[b"name"] == b"t.analyse"
    assert b"done" not in marker
    assert rec.result.exists(rec.keys.epoch)
    assert rec.queued() == [b"msg"] and rec.tokens() == 1
    assert rec.result.client_info()["db"] == rec.settings.redis_db_backend


def test_claim_refuses_while_the_slot_task_is_queued(rec: Rec) -> None:
    first, second = rec.new_id(), rec.new_id()
    rec.claim(first, "rec-1")
    assert rec.claim(second, "rec-1") == first.encode()  # no meta, live marker
    assert rec.queued() == [b"m"] and rec.tokens() == 1
    assert rec.result.get(rec.keys.inflight("rec-1")) == first.encode()
    assert not rec.result.exists(rec.keys.marker(second))


@pytest.mark.parametrize("status", ["STARTED", "PROGRESS", "RETRY", "PENDING", "unreadable"])
def test_claim_refuses_while_the_slot_task_has_a_non_final_meta(rec: Rec, status: str) -> None:
    first, second = rec.new_id(), rec.new_id()
    rec.claim(first, "rec-1")
    if status == "unreadable":
        rec.result.set(rec.meta(first), b"not json")
    else:
        rec.set_meta(first, status)
    rec.result.hset(rec.keys.marker(first), "done", "SUCCESS")  # the meta decides, not the marker
    assert rec.claim(second, "rec-1") == first.encode()
    assert rec.queued() == [b"m"] and rec.tokens() == 1


@pytest.mark.parametrize("status", FINALS)
def test_claim_takes_over_from_a_final_task(rec: Rec, status: str) -> None:
    first, second = rec.new_id(), rec.new_id()
    rec.claim(first, "rec-1")
    rec.set_meta(first, status)
    assert rec.claim(second, "rec-1", message=b"m2") == second.encode()
    assert rec.result.get(rec.keys.inflight("rec-1")) == second.encode()
    assert rec.queued() == [b"m2", b"m"] and rec.tokens() == 2


def test_claim_takes_over_when_the_marker_is_done(rec: Rec) -> None:
    first, second = rec.new_id(), rec.new_id()
    rec.claim(first, "rec-1")
    rec.result.hset(rec.keys.marker(first), "done", "SUCCESS")  # result expired, marker kept
    assert rec.claim(second, "rec-1") == second.encode()
    assert rec.tokens() == 2


def test_claim_takes_over_when_the_slot_task_is_forgotten(rec: Rec) -> None:
    second = rec.new_id()
    rec.result.set(rec.keys.inflight("rec-1"), rec.new_id())  # no meta, no marker
    assert rec.claim(second, "rec-1") == second.encode()
    assert rec.tokens() == 1


def test_claim_force_always_queues(rec: Rec) -> None:
    first, second = rec.new_id(), rec.new_id()
    rec.claim(first, "rec-1")
    rec.set_meta(first, "STARTED")
    assert rec.claim(second, "rec-1", "1", b"m2") == second.encode()
    assert rec.result.get(rec.keys.inflight("rec-1")) == second.encode()
    assert rec.queued() == [b"m2", b"m"] and rec.tokens() == 2


def test_claim_slots_are_per_owner_and_the_marker_records_the_digest(rec: Rec) -> None:
    alice, bob = owner_tag("alice@example.org"), owner_tag("bob@example.org")
    first, second, third = rec.new_id(), rec.new_id(), rec.new_id()
    assert rec.claim(first, "rec-1", owner=alice) == first.encode()
    # Another owner, the same practice record: a task of its own, not the first one's id.
    assert rec.claim(second, "rec-1", message=b"m2", owner=bob) == second.encode()
    # The same owner again while in flight: the first task's id, nothing queued.
    assert rec.claim(third, "rec-1", message=b"m3", owner=alice) == first.encode()
    assert rec.queued() == [b"m2", b"m"] and rec.tokens() == 2
    assert rec.result.get(rec.keys.inflight("rec-1", alice)) == first.encode()
    assert rec.result.get(rec.keys.inflight("rec-1", bob)) == second.encode()
    assert not rec.result.exists(rec.keys.inflight("rec-1"))  # the unowned slot is untouched
    marker = rec.result.hgetall(rec.keys.marker(first))
    assert marker[b"owner"] == alice.encode()
    assert b"alice" not in b"".join([*marker.values(), *rec.result.keys(rec.keys.prefix + "*")])
    assert b"owner" not in rec.result.hgetall(rec.keys.marker(rec.new_id()))


def test_owner_tag_is_a_stable_digest() -> None:
    tag = owner_tag("user-42")
    assert tag == owner_tag("user-42") != owner_tag("user-43")
    assert len(tag) == 32 and "user" not in tag


# --- reserve ------------------------------------------------------------------------------------
def test_reserve_takes_from_the_first_non_empty_list_in_order(rec: Rec) -> None:
    a, b, c = rec.k("a"), rec.k("b"), rec.k("c")
    rec.broker.lpush(b, envelope("tb1", b), envelope("tb2", b))  # tb1 is the oldest (RPOP end)
    rec.broker.lpush(c, envelope("tc", c))
    lst, raw, tag = rec.reserve([a, b, c])
    assert (lst, tag) == (b.encode(), b"tb1")
    assert json.loads(raw)["properties"]["delivery_tag"] == "tb1"
    assert rec.queued(b) == [envelope("tb2", b)] and rec.queued(c) == [envelope("tc", c)]


def test_reserve_writes_unacked_verbatim_with_the_index(rec: Rec) -> None:
    # Spacing, a float and an escape cjson would re-encode differently: kept byte for byte.
    raw = (
        b'{"body":  "e30=", "n": 1.10, "s": "\\u00e9\xc3\xa9", "properties": {"delivery_tag": "t1",'
        b' "delivery_info": {"exchange": "ex", "routing_key": "rk"}}}'
    )
    rec.broker.lpush(rec.queue, raw)
    assert rec.reserve([rec.queue]) == [rec.queue.encode(), raw, b"t1"]
    assert rec.broker.hgetall(rec.unacked) == {b"t1": b"[" + raw + b',"ex","rk"]'}
    assert rec.broker.zrange(rec.index, 0, -1, withscores=True) == [(b"t1", 1234.5)]


def test_reserve_routing_key_defaults_to_the_base_queue(rec: Rec) -> None:
    priority = rec.queue + "\x06\x163"
    rec.broker.lpush(priority, envelope("t1"))
    rec.broker.lpush(rec.keys.wake(rec.queue), "1")
    lst, _, tag = rec.reserve([priority])
    assert (lst, tag) == (priority.encode(), b"t1")
    entry = json.loads(rec.broker.hget(rec.unacked, "t1") or b"null")
    assert entry[1:] == ["", rec.queue]
    assert rec.tokens() == 0  # the priority list's token is the base queue's


def test_reserve_applies_acks_first(rec: Rec) -> None:
    rec.put_unacked("old1")
    rec.put_unacked("old2")
    rec.put_unacked("keep")
    rec.broker.lpush(rec.queue, envelope("new"))
    rec.reserve([rec.queue], acks=("old1", "old2"))
    assert rec.reserved() == [b"keep", b"new"]
    assert rec.reserve([rec.queue], acks=("keep",)) is None  # applied when nothing is queued too
    assert rec.reserved() == [b"new"]


def test_reserve_consumes_the_taken_queue_token_when_caller_had_none(rec: Rec) -> None:
    rec.broker.lpush(rec.queue, envelope("t1"), envelope("t2"))
    rec.broker.lpush(rec.keys.wake(rec.queue), "1", "1")
    rec.reserve([rec.queue])
    assert rec.tokens() == 1


def test_reserve_keeps_tokens_when_caller_consumed_the_taken_queue_token(rec: Rec) -> None:
    rec.broker.lpush(rec.queue, envelope("t1"), envelope("t2"))
    rec.broker.lpush(rec.keys.wake(rec.queue), "1")  # the other token: the caller BRPOPed it
    rec.reserve([rec.queue], token=rec.queue)
    assert rec.tokens() == 1


def test_reserve_gives_another_queue_token_back(rec: Rec) -> None:
    other = rec.k("other")
    rec.broker.lpush(rec.queue, envelope("t1"))
    rec.broker.lpush(rec.keys.wake(rec.queue), "1")
    rec.broker.lpush(other, envelope("o1"))  # its token was consumed by the caller
    lst, _, _ = rec.reserve([rec.queue, other], token=other)
    assert lst == rec.queue.encode()
    assert rec.tokens() == 0 and rec.tokens(other) == 1


@pytest.mark.parametrize(
    "raw",
    [b"not json", b'{"properties": {"delivery_info": {}}}', b'{"properties": {"delivery_tag": 7}}',
     b'{"properties": {"delivery_tag": ""}}', b"[1, 2]", b'"text"'],
)  # fmt: skip
def test_reserve_hands_over_a_non_task_entry_without_reserving_it(rec: Rec, raw: bytes) -> None:
    rec.broker.lpush(rec.queue, raw)
    rec.broker.lpush(rec.keys.wake(rec.queue), "1")
    assert rec.reserve([rec.queue]) == [rec.queue.encode(), raw, None]
    assert not rec.broker.exists(rec.unacked, rec.index)
    assert rec.queued() == [] and rec.tokens() == 0


def test_reserve_empty_returns_nil_and_deletes_stale_tokens(rec: Rec) -> None:
    other = rec.k("other")
    rec.broker.lpush(rec.keys.wake(rec.queue), "1", "1")
    rec.broker.lpush(rec.keys.wake(other), "1")
    assert rec.reserve([rec.queue + "\x06\x163", other], token=rec.queue) is None
    assert rec.tokens() == 0 and rec.tokens(other) == 0
    assert not rec.broker.exists(rec.unacked)


# --- begin --------------------------------------------------------------------------------------
def _begin(rec: Rec, task_id: str, retry: int = 0) -> Any:
    started = celery_meta(task_id, "STARTED", {"pid": 1})
    k = rec.keys
    return rec.rs["begin"](
        keys=[k.deliveries(task_id, retry), k.revoked, k.running, rec.meta(task_id)],
        args=[task_id, 300, '{"t": 1}', started, 60],
    )


def test_begin_starts_a_task(rec: Rec) -> None:
    task_id = rec.new_id()
    pubsub = rec.listen(task_id)
    assert _begin(rec, task_id) == [1, 0]
    counter = rec.keys.deliveries(task_id, 0)
    assert rec.result.get(counter) == b"1" and 0 < rec.result.ttl(counter) <= 300
    assert rec.result.hget(rec.keys.running, task_id) == b'{"t": 1}'
    assert rec.get_meta(task_id)["status"] == "STARTED"
    assert 0 < rec.result.ttl(rec.meta(task_id)) <= 60
    assert json.loads(published(pubsub))["status"] == "STARTED"


def test_begin_counts_deliveries(rec: Rec) -> None:
    task_id = rec.new_id()
    assert _begin(rec, task_id) == [1, 0]
    assert _begin(rec, task_id) == [2, 0]
    assert _begin(rec, task_id, retry=1) == [1, 0]  # counted per retry


def test_begin_refuses_a_revoked_task(rec: Rec) -> None:
    task_id = rec.new_id()
    rec.result.zadd(rec.keys.revoked, {task_id: 1.0})
    assert _begin(rec, task_id) == [1, 1]
    assert _begin(rec, task_id) == [2, 1]
    assert rec.result.get(rec.meta(task_id)) is None
    assert not rec.result.hexists(rec.keys.running, task_id)


@pytest.mark.parametrize("status", FINALS)
def test_begin_refuses_a_finished_task(rec: Rec, status: str) -> None:
    task_id = rec.new_id()
    before = rec.set_meta(task_id, status)
    assert _begin(rec, task_id) == [1, 2]
    assert rec.result.get(rec.meta(task_id)) == before.encode()
    assert not rec.result.hexists(rec.keys.running, task_id)


# --- progress -----------------------------------------------------------------------------------
def _progress(rec: Rec, task_id: str) -> Any:
    value = celery_meta(task_id, "PROGRESS", {"done": 3})
    return rec.rs["progress"](keys=[rec.meta(task_id)], args=[value, 60])


@pytest.mark.parametrize("before", [None, "STARTED", "PROGRESS"])
def test_progress_is_stored_and_published(rec: Rec, before: str | None) -> None:
    task_id = rec.new_id()
    if before:
        rec.set_meta(task_id, before)
    pubsub = rec.listen(task_id)
    assert _progress(rec, task_id) == 1
    assert rec.get_meta(task_id)["result"] == {"done": 3}
    assert 0 < rec.result.ttl(rec.meta(task_id)) <= 60
    assert json.loads(published(pubsub))["status"] == "PROGRESS"


@pytest.mark.parametrize("status", FINALS)
def test_progress_is_refused_after_a_final_state(rec: Rec, status: str) -> None:
    task_id = rec.new_id()
    before = rec.set_meta(task_id, status)
    pubsub = rec.listen(task_id)
    assert _progress(rec, task_id) == 0
    assert rec.result.get(rec.meta(task_id)) == before.encode()
    assert pubsub.get_message(timeout=0.2) is None


# --- store --------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", FINALS)
def test_store_final_state_publishes_marks_done_and_acks(rec: Rec, status: str) -> None:
    task_id = rec.new_id()
    rec.submit(task_id)
    rec.put_unacked("tag1")
    rec.put_unacked("other")
    pubsub = rec.listen(task_id)
    assert rec.store(task_id, status, tag="tag1") == 1
    assert rec.get_meta(task_id)["status"] == status
    assert 0 < rec.result.ttl(rec.meta(task_id)) <= 60
    assert json.loads(published(pubsub))["status"] == status
    assert rec.result.hget(rec.keys.marker(task_id), "done") == status.encode()
    assert rec.reserved() == [b"other"]
    assert rec.result.client_info()["db"] == rec.settings.redis_db_backend


def test_store_retry_acks_without_marking_done(rec: Rec) -> None:
    task_id = rec.new_id()
    rec.submit(task_id)
    rec.put_unacked("tag1")
    assert rec.store(task_id, "RETRY", tag="tag1") == 1
    assert rec.get_meta(task_id)["status"] == "RETRY"
    assert not rec.result.hexists(rec.keys.marker(task_id), "done")
    assert not rec.broker.exists(rec.unacked, rec.index)


def test_store_sent_again_says_stored_and_counts_nothing_twice(rec: Rec) -> None:
    """A confirmed store whose replicas were slow is sent again: it finds its own SUCCESS."""
    task_id = rec.new_id()
    value = celery_meta(task_id, "SUCCESS", 42, done=True)
    stats = json.dumps([["HINCRBY", rec.k("stats"), "succeeded", 1]])
    dbs = (rec.settings.redis_db_broker, rec.settings.redis_db_backend)
    keys = [rec.meta(task_id), rec.keys.marker(task_id), rec.unacked, rec.index]
    args = [value, 60, "SUCCESS", stats, "tag1", *dbs]
    rec.put_unacked("tag1")
    assert rec.rs["store"](keys=keys, args=args) == 1
    assert rec.rs["store"](keys=keys, args=args) == 1  # its own outcome: publish it
    assert rec.result.hget(rec.k("stats"), "succeeded") == b"1"
    # Another run's SUCCESS is not this store's: refused, nothing to publish.
    other = celery_meta(task_id, "SUCCESS", 43, done=True)
    assert rec.rs["store"](keys=keys, args=[other, *args[1:]]) == 0
    assert rec.get_meta(task_id)["result"] == 42


# --- retry --------------------------------------------------------------------------------------
def test_retry_stores_queues_and_acks_in_one_step(rec: Rec) -> None:
    task_id = rec.new_id()
    rec.set_meta(task_id, "STARTED")
    rec.put_unacked("tag1")
    rec.put_unacked("other")
    pubsub = rec.listen(task_id)
    value = celery_meta(task_id, "RETRY", {"exc_type": "OSError"})
    stats = json.dumps([["HINCRBY", rec.k("stats"), "retried", 1]])
    assert rec.retry(task_id, value, tag="tag1", stats=stats) == 1
    assert rec.get_meta(task_id)["status"] == "RETRY"
    assert json.loads(published(pubsub))["status"] == "RETRY"
    # The next attempt went to the message's priority list, with its wake-up token.
    assert rec.queued(RecordKeys.queue_list(rec.queue, 3)) == [f"next-{task_id}".encode()]
    assert rec.tokens() == 1
    assert rec.reserved() == [b"other"]
    assert rec.result.hget(rec.k("stats"), "retried") == b"1"
    assert rec.result.client_info()["db"] == rec.settings.redis_db_backend


def test_retry_sent_again_queues_nothing_twice(rec: Rec) -> None:
    """Even after the next attempt began (its STARTED replaced RETRY), a second send of the same
    retry (a confirmed write whose replicas were slow) queues no second message."""
    task_id = rec.new_id()
    rec.put_unacked("tag1")
    value = celery_meta(task_id, "RETRY", None)
    stats = json.dumps([["HINCRBY", rec.k("stats"), "retried", 1]])
    assert rec.retry(task_id, value, tag="tag1", stats=stats) == 1
    assert rec.retry(task_id, value, tag="tag1", stats=stats) == 1  # still its RETRY: publish
    rec.set_meta(task_id, "STARTED")
    assert rec.retry(task_id, value, tag="tag1", stats=stats) == 0  # moved on: do not publish
    assert rec.get_meta(task_id)["status"] == "STARTED"
    assert len(rec.queued(RecordKeys.queue_list(rec.queue, 3))) == 1
    assert rec.tokens() == 1
    assert rec.result.hget(rec.k("stats"), "retried") == b"1"
    assert rec.reserved() == []


@pytest.mark.parametrize("status", FINALS)
def test_retry_after_a_final_state_queues_nothing_and_acks(rec: Rec, status: str) -> None:
    """A cancel landed while the failing attempt ran: no next attempt, the delivery is acked
    and the run counts as the cancel says."""
    task_id = rec.new_id()
    rec.set_meta(task_id, status)
    rec.put_unacked("tag1")
    value = celery_meta(task_id, "RETRY", None)
    stats = json.dumps([["HINCRBY", rec.k("stats"), "retried", 1]])
    revoked = json.dumps([["HINCRBY", rec.k("stats"), "revoked", 1]])
    assert rec.retry(task_id, value, tag="tag1", stats=stats, if_revoked=revoked) == 0
    assert rec.get_meta(task_id)["status"] == status
    assert rec.queued(RecordKeys.queue_list(rec.queue, 3)) == []
    assert rec.tokens() == 0
    assert rec.reserved() == []
    counted = "revoked" if status == "REVOKED" else "retried"
    assert rec.result.hgetall(rec.k("stats")) == {counted.encode(): b"1"}


@pytest.mark.parametrize("status", ["STARTED", "PROGRESS"])
def test_store_non_final_state_keeps_the_delivery_reserved(rec: Rec, status: str) -> None:
    task_id = rec.new_id()
    rec.submit(task_id)
    rec.put_unacked("tag1")
    assert rec.store(task_id, status, tag="tag1") == 1
    assert rec.get_meta(task_id)["status"] == status
    assert not rec.result.hexists(rec.keys.marker(task_id), "done")
    assert rec.reserved() == [b"tag1"]


@pytest.mark.parametrize("status", FINALS)
def test_store_refuses_over_a_final_state_but_acks_and_counts(rec: Rec, status: str) -> None:
    task_id = rec.new_id()
    before = rec.set_meta(task_id, "REVOKED")
    rec.put_unacked("tag1")
    pubsub = rec.listen(task_id)
    stats = json.dumps([["HINCRBY", rec.k("stats"), "runs", 1]])
    assert rec.store(task_id, status, "tag1", stats=stats) == 0
    assert rec.result.get(rec.meta(task_id)) == before.encode()
    assert pubsub.get_message(timeout=0.2) is None
    assert not rec.broker.exists(rec.unacked, rec.index)
    assert rec.result.hget(rec.k("stats"), "runs") == b"1"


@pytest.mark.parametrize(("existing", "counted"), [("REVOKED", "revoked"), ("SUCCESS", "ok")])
def test_store_counts_a_run_a_cancel_overtook_as_revoked(
    rec: Rec, existing: str, counted: str
) -> None:
    """Issue 12: the statistics for "a cancel got there first" apply only over REVOKED."""
    task_id = rec.new_id()
    rec.set_meta(task_id, existing)
    ok = json.dumps([["HINCRBY", rec.k("stats"), "ok", 1]])
    revoked = json.dumps([["HINCRBY", rec.k("stats"), "revoked", 1]])
    dbs = (rec.settings.redis_db_broker, rec.settings.redis_db_backend)
    value = celery_meta(task_id, "SUCCESS", 42, done=True)
    stored = rec.rs["store"](
        keys=[rec.meta(task_id), rec.keys.marker(task_id), rec.unacked, rec.index],
        args=[value, 60, "SUCCESS", ok, "", *dbs, revoked],
    )
    assert stored == 0
    assert rec.result.hgetall(rec.k("stats")) == {counted.encode(): b"1"}


def test_store_applies_statistics(rec: Rec) -> None:
    task_id = rec.new_id()
    stats = json.dumps([["HINCRBY", rec.k("stats"), "ok", 2], ["HDEL", rec.keys.running, task_id]])
    rec.result.hset(rec.keys.running, task_id, "{}")
    assert rec.store(task_id, "SUCCESS", stats=stats) == 1
    assert rec.result.hget(rec.k("stats"), "ok") == b"2"
    assert not rec.result.hexists(rec.keys.running, task_id)


def test_store_without_tag_touches_no_unacked_entry(rec: Rec) -> None:
    task_id = rec.new_id()
    rec.put_unacked("tag1")
    rec.put_unacked("")  # even an entry named '' is left alone
    assert rec.store(task_id, "SUCCESS", tag="") == 1
    assert rec.reserved() == [b"", b"tag1"]


def test_store_expiry_zero_means_no_ttl_and_no_marker_created(rec: Rec) -> None:
    task_id = rec.new_id()
    assert rec.store(task_id, "SUCCESS", expiry=0) == 1
    assert rec.result.ttl(rec.meta(task_id)) == -1
    assert not rec.result.exists(rec.keys.marker(task_id))  # mark_done never creates a marker


# --- revoke -------------------------------------------------------------------------------------
def _revoke(rec: Rec, task_id: str, terminate: str = "0", meta: str | None = None) -> Any:
    keys = rec.keys
    return rec.rs["revoke"](
        keys=[
            keys.revoked,
            rec.meta(task_id),
            keys.marker(task_id),
            keys.terminate,
            keys.terminate_channel,
        ],
        args=[task_id, "1700000000.25", meta or revoked_meta(task_id), 60, terminate],
    )


def test_revoke_sent_again_says_revoked_another_cancel_does_not(rec: Rec) -> None:
    """A confirmed cancel whose replicas were slow is sent again: it finds its own REVOKED
    (the caller hears "cancelled", and it is published); a later cancel finds a finished task."""
    task_id = rec.new_id()
    rec.submit(task_id)
    mine = revoked_meta(task_id)
    assert _revoke(rec, task_id, meta=mine) == 1
    assert _revoke(rec, task_id, meta=mine) == 1
    time.sleep(0.001)  # another cancel's meta has another date_done
    assert _revoke(rec, task_id) == 0
    assert rec.result.get(rec.meta(task_id)) == mine.encode()


@pytest.mark.parametrize("before", [None, "STARTED", "PROGRESS", "RETRY"])
def test_revoke_stores_revoked_and_marks_done(rec: Rec, before: str | None) -> None:
    task_id = rec.new_id()
    rec.submit(task_id)
    if before:
        rec.set_meta(task_id, before)
    pubsub = rec.listen(task_id)
    assert _revoke(rec, task_id) == 1
    assert rec.result.zscore(rec.keys.revoked, task_id) == 1700000000.25
    assert rec.get_meta(task_id)["status"] == "REVOKED"
    assert 0 < rec.result.ttl(rec.meta(task_id)) <= 60
    assert json.loads(published(pubsub))["status"] == "REVOKED"
    assert rec.result.hget(rec.keys.marker(task_id), "done") == b"REVOKED"


def test_revoke_without_marker_creates_none(rec: Rec) -> None:
    task_id = rec.new_id()
    assert _revoke(rec, task_id) == 1
    assert not rec.result.exists(rec.keys.marker(task_id))


@pytest.mark.parametrize("status", FINALS)
def test_revoke_refuses_a_finished_task(rec: Rec, status: str) -> None:
    task_id = rec.new_id()
    rec.submit(task_id)
    before = rec.set_meta(task_id, status)
    assert _revoke(rec, task_id) == 0
    assert rec.result.get(rec.meta(task_id)) == before.encode()
    assert rec.result.zscore(rec.keys.revoked, task_id) is None
    assert not rec.result.hexists(rec.keys.marker(task_id), "done")


def test_revoke_with_terminate_records_and_announces_it(rec: Rec) -> None:
    task_id = rec.new_id()
    rec.submit(task_id)
    rec.set_meta(task_id, "STARTED")
    pubsub = redis.Redis.from_url(rec.settings.backend_url).pubsub()  # type: ignore[no-untyped-call]
    rec.subs.append(pubsub)
    pubsub.subscribe(rec.keys.terminate_channel)
    assert pubsub.get_message(timeout=5.0)["type"] == "subscribe"
    assert _revoke(rec, task_id, terminate="1") == 1
    assert rec.result.zscore(rec.keys.terminate, task_id) == 1700000000.25
    assert published(pubsub) == task_id.encode()


def test_revoke_without_terminate_leaves_a_running_copy_be(rec: Rec) -> None:
    task_id = rec.new_id()
    rec.submit(task_id)
    assert _revoke(rec, task_id, terminate="0") == 1
    assert rec.result.zscore(rec.keys.terminate, task_id) is None


def test_revoke_with_terminate_refuses_a_finished_task(rec: Rec) -> None:
    task_id = rec.new_id()
    rec.submit(task_id)
    rec.set_meta(task_id, "SUCCESS")
    assert _revoke(rec, task_id, terminate="1") == 0
    assert rec.result.zscore(rec.keys.terminate, task_id) is None


# --- take_name ----------------------------------------------------------------------------------
def test_take_name_one_holder_at_a_time(rec: Rec) -> None:
    from vocalborn_tasks.record.workers import NameHolder, release_worker_name, take_worker_name

    name = f"w-{rec.new_id()}@test"
    key = rec.keys.worker(name)
    assert take_worker_name(rec.result, rec.keys, name, pid=11, machine="m1", ttl_s=30) is None
    assert 0 < rec.result.pttl(key) <= 30_000
    held = take_worker_name(rec.result, rec.keys, name, pid=12, machine="m1", ttl_s=30)
    assert held == NameHolder("m1", 11)
    # A stale pid only replaces a holder on the same machine with exactly that pid.
    assert take_worker_name(
        rec.result, rec.keys, name, pid=12, machine="m2", ttl_s=30, stale_pid=11
    ) == NameHolder("m1", 11)
    assert take_worker_name(
        rec.result, rec.keys, name, pid=12, machine="m1", ttl_s=30, stale_pid=10
    ) == NameHolder("m1", 11)
    assert (
        take_worker_name(rec.result, rec.keys, name, pid=12, machine="m1", ttl_s=30, stale_pid=11)
        is None
    )
    assert not release_worker_name(rec.result, rec.keys, name, pid=11)  # no longer its name
    assert release_worker_name(rec.result, rec.keys, name, pid=12)
    assert not rec.result.exists(key)


# --- restore ------------------------------------------------------------------------------------
def test_restore_moves_a_reserved_message_back_to_its_queue(rec: Rec) -> None:
    # Headers a cjson round trip would change: an empty array, a 17-digit number, a slash.
    raw = envelope(
        "t1",
        rec.queue,
        timelimit=[None, None],
        stamps={},
        retries=0,
        stamped_headers=[],
        big=12345678901234567,
        path="a/b",
    )
    rec.broker.lpush(rec.queue, envelope("t0", rec.queue), raw)
    rec.reserve([rec.queue])  # t0
    rec.reserve([rec.queue])  # t1
    assert rec.queued() == []
    assert rec.restore("t1") == 1
    assert rec.reserved() == [b"t0"]
    assert rec.tokens() == 1
    [back] = rec.queued()
    assert back == raw  # byte for byte

    # RPUSH: at the RPOP end, so it is the next message reserved.
    rec.broker.lpush(rec.queue, envelope("t2", rec.queue))
    assert rec.reserve([rec.queue], token=rec.queue)[2] == b"t1"


def test_restore_returns_a_message_to_its_priority_list(rec: Rec) -> None:
    high = rec.queue + "\x06\x163"
    message = json.loads(envelope("t1", rec.queue))
    message["properties"]["priority"] = 4
    raw = json.dumps(message).encode()
    rec.broker.lpush(high, raw)
    rec.reserve([rec.queue, high])
    assert rec.restore("t1") == 1
    assert rec.broker.lrange(high, 0, -1) == [raw]
    assert rec.broker.llen(rec.queue) == 0


def test_restore_of_an_entry_kombu_wrote_keeps_the_message(rec: Rec) -> None:
    # kombu's QoS.append writes json.dumps([message, exchange, routing key]) (", " separators).
    message = json.loads(envelope("t1", rec.queue, stamped_headers=[]))
    rec.put_unacked("t1", json.dumps([message, "", rec.queue]).encode())
    assert rec.restore("t1") == 1
    [back] = rec.queued()
    assert json.loads(back) == message
    assert b'"stamped_headers": []' in back


def test_restore_unknown_tag_returns_zero(rec: Rec) -> None:
    rec.put_unacked("t1")
    assert rec.restore("nope") == 0
    assert rec.reserved() == [b"t1"] and rec.queued() == [] and rec.tokens() == 0


# --- purge --------------------------------------------------------------------------------------
def _purge(rec: Rec, batch_size: int = 500) -> int:
    """The typed purge of the record, on this test's key prefix and queue."""
    settings = rec.settings.model_copy(update={"key_prefix": rec.keys.prefix})

    async def go() -> int:
        client = aioredis.Redis.from_url(settings.broker_url)
        try:
            return await purge_queue(client, settings, rec.queue, batch_size=batch_size)
        finally:
            await client.aclose()

    return asyncio.run(go())


def _claim_queued(rec: Rec, record: str, force: str = "0", owner: str = "") -> str:
    task_id = rec.new_id()
    assert (
        rec.claim(task_id, record, force, envelope(f"tag-{task_id}", id=task_id), owner)
        == task_id.encode()
    )
    return task_id


def test_purge_ends_every_queued_task_as_revoked_purged(rec: Rec) -> None:
    claimed = [_claim_queued(rec, f"rec-{n}") for n in range(2)]
    plain = rec.new_id()
    rec.submit(plain, envelope("tag-plain", id=plain))
    high = rec.new_id()  # a priority list (Celery's own send with priority 4)
    rec.broker.lpush(rec.queue + "\x06\x163", envelope("tag-high", id=high))
    pubsub = rec.listen(claimed[0])
    assert rec.tokens() == 3

    assert _purge(rec) == 4

    for task_id in [*claimed, plain, high]:
        meta = rec.get_meta(task_id)
        assert meta["status"] == "REVOKED" and meta["task_id"] == task_id
        assert revoked_reason(meta["result"]) == "purged"
        assert meta["date_done"] is not None
        assert 0 < rec.result.ttl(rec.meta(task_id)) <= rec.settings.result_expires_s
    for task_id in [*claimed, plain]:
        assert rec.result.hget(rec.keys.marker(task_id), "done") == b"REVOKED"
    assert not rec.result.exists(rec.keys.marker(high))  # mark_done never creates a marker
    assert json.loads(published(pubsub))["status"] == "REVOKED"  # waiters are told at once
    for n in range(2):
        assert not rec.result.exists(rec.keys.inflight(f"rec-{n}"))
    assert all(rec.broker.llen(key) == 0 for key in queue_lists(rec.queue))
    assert rec.tokens() == 0


def test_purge_frees_the_practice_record_for_a_new_submit(rec: Rec) -> None:
    old = _claim_queued(rec, "rec-1")
    assert _purge(rec) == 1
    assert rec.get_meta(old)["status"] == "REVOKED"
    new = rec.new_id()
    assert rec.claim(new, "rec-1", message=envelope("tag-new", id=new)) == new.encode()


def test_purge_releases_an_owned_slot(rec: Rec) -> None:
    alice = owner_tag("alice")
    _claim_queued(rec, "rec-1", owner=alice)
    unowned = _claim_queued(rec, "rec-2")
    assert _purge(rec) == 2
    assert not rec.result.exists(rec.keys.inflight("rec-1", alice))
    assert not rec.result.exists(rec.keys.inflight("rec-2"))
    assert rec.get_meta(unowned)["status"] == "REVOKED"
    new = rec.new_id()
    assert rec.claim(new, "rec-1", message=envelope("n", id=new), owner=alice) == new.encode()


def test_purge_releases_no_slot_another_task_holds(rec: Rec) -> None:
    old = _claim_queued(rec, "rec-1")
    newer = _claim_queued(rec, "rec-1", force="1")  # forced: the slot points at the newer run
    rec.broker.lrem(rec.queue, 0, rec.queued()[0])  # the newer one was taken by a worker
    assert [json.loads(m)["headers"]["id"] for m in rec.queued()] == [old]
    assert _purge(rec) == 1
    assert rec.result.get(rec.keys.inflight("rec-1")) == newer.encode()
    assert rec.get_meta(newer) is None


@pytest.mark.parametrize("status", FINALS)
def test_purge_keeps_a_final_state(rec: Rec, status: str) -> None:
    """A message whose task already ended (e.g. cancelled while queued) only leaves the list."""
    task_id = rec.new_id()
    rec.submit(task_id, envelope("t", id=task_id))
    before = rec.set_meta(task_id, status)
    assert _purge(rec) == 1
    assert rec.result.get(rec.meta(task_id)) == before.encode()
    assert not rec.result.hexists(rec.keys.marker(task_id), "done")
    assert rec.queued() == []


def test_purge_removes_a_foreign_message_too(rec: Rec) -> None:
    rec.broker.lpush(rec.queue, b"not json", json.dumps({"headers": {}}).encode())
    assert _purge(rec) == 2
    assert rec.queued() == []


def test_purge_of_an_empty_queue_drops_stale_tokens(rec: Rec) -> None:
    rec.broker.lpush(rec.keys.wake(rec.queue), "1", "1")
    assert _purge(rec) == 0
    assert rec.tokens() == 0


def test_purge_works_in_bounded_batches(rec: Rec) -> None:
    ids = [rec.new_id() for _ in range(7)]
    for task_id in ids:
        rec.submit(task_id, envelope(f"tag-{task_id}", id=task_id))
    # One call of the script takes at most its batch, consumption end first, and says what is left.
    head, tail = revoked_meta_template("purged")
    taken, left = rec.bs["purge"](
        keys=[rec.keys.wake(rec.queue), *queue_lists(rec.queue)],
        args=[3, rec.settings.redis_db_broker, rec.settings.redis_db_backend, "celery-task-meta-",
              rec.keys.marker_prefix, rec.keys.inflight(""), head, tail, 60],
    )  # fmt: skip
    assert (taken, left) == (3, 4)
    assert [rec.get_meta(i) is not None for i in ids] == [True] * 3 + [False] * 4
    assert rec.tokens() == 4
    # The loop goes on until the queue is empty.
    assert _purge(rec, batch_size=3) == 4
    assert all(rec.get_meta(i)["status"] == "REVOKED" for i in ids)
    assert rec.queued() == [] and rec.tokens() == 0


def test_revoked_meta_template_makes_the_meta_of_any_id() -> None:
    head, tail = revoked_meta_template("purged")
    task_id = new_task_id()
    meta = json.loads(head + json.dumps(task_id) + tail)
    expected = json.loads(revoked_meta(task_id, "purged"))
    assert meta | {"date_done": None} == expected | {"date_done": None}
    assert revoked_reason(meta["result"]) == "purged"
    assert revoked_reason(json.loads(revoked_meta(task_id))["result"]) == "revoked"


# --- release and lock ---------------------------------------------------------------------------
def test_release_deletes_only_with_the_right_token(rec: Rec) -> None:
    key = rec.k("lock")
    rec.result.set(key, "mine")
    assert rec.rs["release"](keys=[key], args=["theirs"]) == 0
    assert rec.result.get(key) == b"mine"
    assert rec.rs["release"](keys=[key], args=["mine"]) == 1
    assert not rec.result.exists(key)
    assert rec.rs["release"](keys=[key], args=["mine"]) == 0


@pytest.mark.parametrize(("holder", "taken"), [(None, 1), ("mine", 1), ("theirs", 0)])
def test_lock_takes_a_free_lock_renews_its_own_refuses_another(
    rec: Rec, holder: str | None, taken: int
) -> None:
    key = rec.k("lock")
    if holder:
        rec.result.set(key, holder, px=1000)
    assert rec.rs["lock"](keys=[key], args=["mine", 60000]) == taken
    assert rec.result.get(key) == (b"mine" if taken else b"theirs")
    assert (rec.result.pttl(key) > 1000) == bool(taken)  # taken or renewed: the new TTL


def test_script_source_has_the_prelude_and_refuses_unknown_names() -> None:
    assert "local FINAL" in script_source("store") and "put_meta(KEYS[1]" in script_source("store")
    with pytest.raises(KeyError):
        script_source("nope")


# --- position (read only) -------------------------------------------------------------------------
def test_position_counts_what_workers_take_first(rec: Rec) -> None:
    high = rec.queue + "\x06\x163"
    # Workers take the base list first, from its RPOP end; then the priority lists.
    rec.broker.lpush(rec.queue, envelope("a", rec.queue), envelope("b", rec.queue))
    target = json.loads(envelope("c", rec.queue))
    target["headers"]["id"] = "wanted"
    rec.broker.lpush(high, json.dumps(target).encode(), envelope("d", rec.queue))
    before = rec.broker.lrange(high, 0, -1)
    position = rec.bs["position"]
    assert position(keys=[rec.queue, high], args=["wanted"]) == [2, 2, 4]
    assert position(keys=[rec.queue, high], args=["nowhere"]) == [0, 4, 4]
    assert rec.broker.lrange(high, 0, -1) == before  # changes nothing


def test_every_lua_file_is_a_named_script() -> None:
    from importlib.resources import files

    lua = files("vocalborn_tasks.record").joinpath("lua")
    stems = {p.name.removesuffix(".lua") for p in lua.iterdir() if p.name.endswith(".lua")}
    assert stems - {"_prelude"} == set(SCRIPT_NAMES)
