"""The health check's decisions are pure functions of what a reader found (either reader)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

from vocalborn_tasks.config import TaskSettings
from vocalborn_tasks.health import (
    HealthLevel,
    HealthReport,
    QueueStats,
    RedisTopology,
    SentinelStats,
    WorkerStats,
    drain_verdict,
    health_report,
    redis_topology,
    sentinel_commands,
    sentinel_stats,
    task_type_stats,
    topology_issues,
    write_refusal,
)
from vocalborn_tasks.stats import RunRecord

NOW = 1_000_000.0


def _worker(processed: int, active: int = 0, concurrency: int = 1) -> WorkerStats:
    return WorkerStats(
        hostname="w@h",
        pid=1,
        concurrency=concurrency,
        queues=["q"],
        active=active,
        reserved=active,
        processed=processed,
        rss_kb=0,
        last_seen=datetime.fromtimestamp(NOW, UTC),
    )


def test_drain_verdicts() -> None:
    q = QueueStats(name="q", length=2, consumers=1)
    w = [_worker(5)]
    empty = QueueStats(name="q", length=0, consumers=1)
    assert drain_verdict(empty, w, "", {}, NOW, 120) == (True, True)
    assert drain_verdict(q, w, "a", {}, NOW, 120) == (None, True)  # first sighting
    assert drain_verdict(q, [], "a", {"head": "a"}, NOW, 120) == (None, True)  # no consumer
    assert drain_verdict(q, w, "b", {"head": "a"}, NOW, 120) == (True, True)  # head moved
    recent = {"head": "a", "processed": "5", "ts": repr(NOW - 10), "verdict": "0"}
    assert drain_verdict(q, w, "a", recent, NOW, 120) == (False, False)  # keep the old one
    stale = {**recent, "ts": repr(NOW - 200)}
    assert drain_verdict(q, w, "a", stale, NOW, 120) == (False, True)  # stuck, slot free
    assert drain_verdict(q, [_worker(6)], "a", stale, NOW, 120) == (True, True)  # moved
    assert drain_verdict(q, [_worker(5, active=1)], "a", stale, NOW, 120) == (True, True)  # busy


def test_health_report_levels_and_reasons() -> None:
    settings = TaskSettings(health_required_queues=["health"])
    queues = [
        QueueStats(name="health", length=0, consumers=0),
        QueueStats(name="maintenance", length=0, consumers=0),
    ]
    report = health_report(
        settings,
        persistence_info={"aof_enabled": 1},
        memory_info={"maxmemory_policy": b"noeviction", "used_memory": 10, "maxmemory": 0},
        workers=[],
        queues=queues,
        broker_ms=1.23456,
        backend_ms=2.0,
        checked_at=datetime.fromtimestamp(NOW, UTC),
    )
    assert report.level is HealthLevel.UNHEALTHY
    assert report.reasons == ["queue health has no live worker (0 waiting)"]
    assert report.broker_latency_ms == 1.235 and report.persistence is True


def test_task_type_stats_from_run_records() -> None:
    runs = [
        RunRecord("a", "t", "q", "w", NOW, 1.0, "success"),
        RunRecord("b", "t", "q", "w", NOW, 3.0, "failure"),
        RunRecord("c", "t", "q", "w", NOW, 0.1, "retry"),
    ]
    (stats,) = task_type_stats({"t": ("q", runs)}, 60.0)
    assert (stats.runs, stats.succeeded, stats.failed, stats.retried) == (3, 1, 1, 1)
    assert stats.failure_rate == 0.5 and stats.p50_s == 2.0 and stats.mean_s == 2.0


# --- the replication topology ---------------------------------------------------------------

#: ``INFO replication`` of a lone server, as redis-py parses it.
LONE = {"role": "master", "connected_slaves": 0, "master_repl_offset": 0}


def _replication(*lags: int, state: str = "online", good: int | None = None) -> dict[str, Any]:
    """``INFO replication`` of a master with one replica per lag (``good``: fencing on)."""
    info: dict[str, Any] = {
        "role": "master",
        "connected_slaves": len(lags),
        "master_repl_offset": 1000,
    }
    for i, lag in enumerate(lags):
        info[f"slave{i}"] = {
            "ip": "10.0.0.2",
            "port": 6380 + i,
            "state": state,
            "offset": 990,
            "lag": lag,
        }
    if good is not None:
        info["min_slaves_good_slaves"] = good
    return info


def _fenced(to_write: int = 1, max_lag: int = 10) -> dict[bytes, bytes]:
    """``CONFIG GET min-replicas-*`` as a RESP3 map."""
    return {
        b"min-replicas-to-write": str(to_write).encode(),
        b"min-replicas-max-lag": str(max_lag).encode(),
    }


def _report(settings: TaskSettings, topology: RedisTopology | None) -> HealthReport:
    return health_report(
        settings,
        persistence_info={"aof_enabled": 1},
        memory_info={"maxmemory_policy": "noeviction", "used_memory": 10, "maxmemory": 0},
        workers=[],
        queues=[],
        broker_ms=1.0,
        backend_ms=1.0,
        checked_at=datetime.fromtimestamp(NOW, UTC),
        topology=topology,
    )


SENTINELS = {"redis_sentinels": "10.0.0.9:26379,10.0.0.10:26379", "redis_sentinel_master": "vb"}


def test_a_lone_server_needing_no_replica_reports_as_before() -> None:
    settings = TaskSettings()
    assert settings.replica_acks == 0
    for config in (_fenced(0, 10), None):  # read, or CONFIG GET refused
        topology = redis_topology(settings, replication_info=LONE, min_replicas=config)
        assert topology_issues(settings, topology) == []
        with_topology = _report(settings, topology)
        without = _report(settings, None)
        assert with_topology.level is without.level is HealthLevel.HEALTHY
        assert with_topology.model_dump(exclude={"topology"}) == without.model_dump(
            exclude={"topology"}
        )


def test_two_replicas_with_fencing_are_healthy_with_one_ack() -> None:
    settings = TaskSettings(redis_replica_acks=1)
    topology = redis_topology(
        settings, replication_info=_replication(0, 1, good=2), min_replicas=_fenced()
    )
    assert topology.role == "master" and topology.connected_replicas == 2
    assert [r.address for r in topology.replicas] == ["10.0.0.2:6380", "10.0.0.2:6381"]
    assert topology.replicas[1].lag_s == 1 and topology.replicas[1].behind_bytes == 10
    assert (topology.min_replicas_to_write, topology.min_replicas_max_lag_s) == (1, 10)
    assert topology.write_fencing is True and topology.good_replicas == 2
    assert topology_issues(settings, topology) == []
    assert _report(settings, topology).level is HealthLevel.HEALTHY


def test_acks_without_fencing_are_degraded_with_the_failover_reason() -> None:
    settings = TaskSettings(redis_replica_acks=1)
    reason = "a resumed old master can acknowledge writes that a failover discards"
    for config, setting in (
        (_fenced(0, 10), "min-replicas-to-write is 0"),
        (_fenced(1, 0), "min-replicas-max-lag is 0, which turns min-replicas-to-write off"),
    ):
        topology = redis_topology(
            settings, replication_info=_replication(0, 0), min_replicas=config
        )
        assert topology.write_fencing is False and topology.good_replicas is None
        (issue,) = topology_issues(settings, topology)
        assert issue.kind == "fencing" and issue.level is HealthLevel.DEGRADED
        assert issue.reason.startswith(f"{setting}: {reason}")
        report = _report(settings, topology)
        assert report.level is HealthLevel.DEGRADED and report.reasons == [issue.reason]
    # Without required acknowledgements, the same server is nobody's concern.
    lone = TaskSettings(redis_replica_acks=0)
    topology = redis_topology(lone, replication_info=_replication(0), min_replicas=_fenced(0))
    assert topology_issues(lone, topology) == []


def test_fewer_connected_replicas_than_acks_is_degraded() -> None:
    settings = TaskSettings(redis_replica_acks=2, redis_failover_wait_s=7)
    # One online, one still synchronising, one online but silent past min-replicas-max-lag.
    info = _replication(0, 0, 30, good=1)
    info["slave1"]["state"] = "wait_bgsave"
    topology = redis_topology(settings, replication_info=info, min_replicas=_fenced())
    assert topology.connected_replicas == 1 and len(topology.replicas) == 3
    (issue,) = topology_issues(settings, topology)
    assert issue.kind == "replicas" and issue.level is HealthLevel.DEGRADED
    assert issue.reason == (
        "1 replicas connected but REDIS_REPLICA_ACKS is 2: confirmed writes (submit, cancel, "
        "final results) wait up to REDIS_FAILOVER_WAIT_S (7 s) for acknowledgements, then fail"
    )


def test_a_fenced_master_without_good_replicas_refuses_writes() -> None:
    settings = TaskSettings(redis_replica_acks=1)
    topology = redis_topology(
        settings, replication_info=_replication(good=0), min_replicas=_fenced()
    )
    kinds = {i.kind: i for i in topology_issues(settings, topology)}
    assert set(kinds) == {"writes", "replicas"}
    assert kinds["writes"].level is HealthLevel.UNHEALTHY
    assert kinds["writes"].reason.startswith("the server refuses writes (NOREPLICAS): 0 replicas")
    assert _report(settings, topology).level is HealthLevel.UNHEALTHY
    # A refusal the check met itself is reported as the server worded it, instead.
    seen = redis_topology(
        settings,
        replication_info=_replication(good=0),
        min_replicas=_fenced(),
        writes_refused="NOREPLICAS Not enough good replicas to write.",
    )
    (writes,) = [i for i in topology_issues(settings, seen) if i.kind == "writes"]
    assert "(NOREPLICAS Not enough good replicas to write.)" in writes.reason


def test_config_get_refused_is_unknown_and_info_still_tells_fencing() -> None:
    settings = TaskSettings(redis_replica_acks=1)
    fenced = redis_topology(settings, replication_info=_replication(0, 0, good=2))
    assert fenced.min_replicas_to_write is None and fenced.min_replicas_max_lag_s is None
    assert fenced.write_fencing is True and fenced.good_replicas == 2
    assert topology_issues(settings, fenced) == []
    # INFO shows no count: fencing off, or a server that does not say; unknown, no verdict.
    silent = redis_topology(settings, replication_info=_replication(0, 0))
    assert silent.write_fencing is None
    assert topology_issues(settings, silent) == []
    # The same fact in RESP2's flat list form.
    flat = [b"min-replicas-to-write", b"1", b"min-replicas-max-lag", b"10"]
    as_list = redis_topology(settings, replication_info=_replication(0), min_replicas=flat)
    assert (as_list.min_replicas_to_write, as_list.write_fencing) == (1, True)


def test_a_replica_is_unhealthy_and_names_its_master() -> None:
    info = {"role": "slave", "master_host": "10.0.0.1", "master_port": 6379, "connected_slaves": 0}
    direct = TaskSettings()
    topology = redis_topology(direct, replication_info=info, min_replicas=_fenced(0))
    assert topology.role == "replica" and topology.following == "10.0.0.1:6379"
    (issue,) = topology_issues(direct, topology)
    assert issue.kind == "role" and issue.level is HealthLevel.UNHEALTHY
    assert issue.reason == (
        "the server is a replica of 10.0.0.1:6379: it refuses writes (READONLY); point "
        "REDIS_URL at the master, or use REDIS_SENTINELS"
    )


def _sentinel(address: str, master: str | None = "10.0.0.1:6379", **kw: Any) -> SentinelStats:
    return SentinelStats(address=address, reachable=True, master=master, quorum=True, **kw)


def test_sentinel_answers_and_what_they_mean() -> None:
    s = TaskSettings(**SENTINELS)
    a, b = "10.0.0.9:26379", "10.0.0.10:26379"
    assert sentinel_commands(s) == [
        ("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "vb"),
        ("SENTINEL", "CKQUORUM", "vb"),
    ]
    ok = sentinel_stats(a, [[b"10.0.0.1", b"6379"], b"OK 3 usable Sentinels."])
    assert ok == _sentinel(a)
    no_quorum = sentinel_stats(a, [[b"10.0.0.1", b"6379"], ResponseError("NOQUORUM 1 usable")])
    assert (no_quorum.quorum, no_quorum.error) == (False, "NOQUORUM 1 usable")
    stranger = sentinel_stats(a, [None, ResponseError("ERR No such master with that name")])
    assert (stranger.reachable, stranger.master, stranger.quorum) == (True, None, None)
    silent = sentinel_stats(b, RedisConnectionError("Connection refused"))
    assert (silent.reachable, silent.error) == (False, "Connection refused")

    def issues(*answers: SentinelStats) -> dict[str, str]:
        topology = redis_topology(
            s, replication_info=_replication(0, good=1), min_replicas=_fenced(), sentinels=answers
        )
        return {i.kind: i.reason for i in topology_issues(s, topology)}

    assert issues(_sentinel(a), _sentinel(b)) == {}
    assert (
        redis_topology(
            s, replication_info=LONE, sentinels=[_sentinel(a), _sentinel(b, "10.0.0.3:6379"), ok]
        ).master
        == "10.0.0.1:6379"
    )  # what most of them say
    assert issues(_sentinel(a), silent) == {
        "sentinels_unreachable": f"1 of 2 sentinels did not answer ({b}: Connection refused): "
        "fewer are left to agree on a failover"
    }
    assert set(issues(silent, silent.model_copy(update={"address": a}))) == {
        "sentinels_unreachable"
    }
    assert "no sentinel answered" in issues(silent)["sentinels_unreachable"]
    assert issues(_sentinel(a), _sentinel(b, "10.0.0.3:6379")) == {
        "sentinels_disagree": f"the sentinels disagree on the master ({a} names 10.0.0.1:6379, "
        f"{b} names 10.0.0.3:6379): a failover is under way, or a sentinel is cut off"
    }
    assert issues(_sentinel(a), stranger.model_copy(update={"address": b})) == {
        "sentinels_unknown_master": f"sentinels {b} do not monitor 'vb' (REDIS_SENTINEL_MASTER)"
    }
    two_without = [no_quorum, no_quorum.model_copy(update={"address": b})]
    assert issues(*two_without) == {
        "sentinels_quorum": f"no failover could be authorised now ({a}, {b}: NOQUORUM 1 usable)"
    }
    # Every sentinel issue degrades; none makes the check unhealthy on its own.
    topology = redis_topology(s, replication_info=_replication(0, good=1), sentinels=[silent])
    assert _report(s, topology).level is HealthLevel.DEGRADED


def test_write_refusals_as_redis_py_raises_them() -> None:
    pipeline = "Command # 1 (HSET k f v) of pipeline caused error: "
    assert write_refusal(
        ResponseError(pipeline + "NOREPLICAS Not enough good replicas to write.")
    ) == ("NOREPLICAS Not enough good replicas to write.")
    assert write_refusal(
        ReadOnlyError(pipeline + "You can't write against a read only replica.")
    ) == ("READONLY You can't write against a read only replica.")
    # redis.asyncio's pipeline writes the error's args tuple instead of its message.
    assert write_refusal(
        ReadOnlyError(pipeline + repr(("You can't write against a read only replica.",)))
    ) == ("READONLY You can't write against a read only replica.")
    assert write_refusal(
        ResponseError(pipeline + repr(("NOREPLICAS Not enough good replicas to write.",)))
    ) == ("NOREPLICAS Not enough good replicas to write.")
    # redis-py 8.2 sets status_code on errors it has no class for and keeps the code in the
    # message (8.1 left status_code unset there): the code is not repeated.
    for text in (
        pipeline + "NOREPLICAS Not enough good replicas to write.",
        "NOREPLICAS Not enough good replicas to write.",
    ):
        assert write_refusal(ResponseError(text, status_code="NOREPLICAS")) == (
            "NOREPLICAS Not enough good replicas to write."
        )
    assert write_refusal(OutOfMemoryError("command not allowed when used memory > 'maxmemory'."))
    assert write_refusal(ResponseError("MISCONF Errors writing to the AOF file")) is not None
    assert write_refusal(ResponseError(pipeline + "WRONGTYPE Operation against a key")) is None
    assert write_refusal(RedisConnectionError("Connection refused")) is None
