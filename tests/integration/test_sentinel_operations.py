"""Issue 17, what operators see: health, ``status`` and the CLI on a real Sentinel group.

A master, two replicas and three sentinels on loopback (``embedded.SentinelGroup``, the
session's server binary), ``min-replicas-to-write 1`` as docs/operations.md recommends. No
worker runs here: the settings require no queue (``HEALTH_REQUIRED_QUEUES=[]``), so the
verdicts below are the topology's alone. The CLI runs as an operator runs it, with only
``REDIS_SENTINELS``/``REDIS_SENTINEL_MASTER`` set. The module's group ends with a failover (the
test that makes one runs last); the test that kills replicas has a group of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from support import async_wait_until, wait_until
from vocalborn_tasks import HealthLevel, HealthReport, Monitor, TaskSettings
from vocalborn_tasks.embedded import SentinelGroup, die_with_parent, free_port
from vocalborn_tasks.health import SyncHealthReader
from vocalborn_tasks.metrics import build_registry

pytestmark = pytest.mark.integration

CLI_TIMEOUT_S = 60.0
FAILOVER_REASON = "a resumed old master can acknowledge writes that a failover discards"


def _settings(group: SentinelGroup, **extra: Any) -> TaskSettings:
    return TaskSettings(**group.settings_values(), health_required_queues=[], **extra)


def _wait_for_quorum(settings: TaskSettings) -> None:
    """Sentinels find each other a second or two after they start: until then each one
    rightly answers NOQUORUM (asked through the reader's own call)."""
    with SyncHealthReader(settings) as reader:
        wait_until(
            lambda: all(s.quorum for s in reader.ask_sentinels()),
            30,
            interval=0.1,
            what="the sentinels to find each other",
        )


@pytest.fixture(scope="module")
def group(server_binary: str | None) -> Iterator[SentinelGroup]:
    with SentinelGroup(binary=server_binary, min_replicas_to_write=1, die_with_parent=True) as g:
        _wait_for_quorum(_settings(g))
        yield g


@pytest.fixture
def settings(group: SentinelGroup) -> TaskSettings:
    return _settings(group)


def _address(port: int) -> str:
    return f"127.0.0.1:{port}"


def _client(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=5, decode_responses=True)


def _sentinel_env(group: SentinelGroup) -> dict[str, str]:
    """An operator's environment naming only the sentinels (no REDIS_URL, no REDIS_HOST)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("REDIS_", "CELERY_", "HEALTH_", "TASK_", "FLOWER_")) and k != "COLUMNS"
    }
    env.update(
        REDIS_SENTINELS=group.sentinel_env(),
        REDIS_SENTINEL_MASTER=group.master_name,
        HEALTH_REQUIRED_QUEUES="[]",
    )
    return env


def _cli(group: SentinelGroup, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vocalborn_tasks", *args],
        env=_sentinel_env(group),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def _explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def _rows(table_output: str, first: str) -> list[list[str]]:
    """Cells of the table rows whose first cell is ``first``."""
    rows = []
    for line in table_output.splitlines():
        if "│" in line:
            cells = [c.strip() for c in line.split("│")[1:-1]]
            if cells and cells[0] == first:
                rows.append(cells)
    return rows


def _stable(report: HealthReport) -> dict[str, Any]:
    """The topology without what moves between two reads (replica lag and offsets)."""
    assert report.topology is not None
    return report.topology.model_dump(exclude={"replicas": {"__all__": {"lag_s", "behind_bytes"}}})


async def test_health_reports_the_topology_and_is_healthy(
    group: SentinelGroup, settings: TaskSettings
) -> None:
    assert settings.replica_acks == 1  # the default with sentinels
    master = group.master
    replicas = {_address(s.port) for s in group.servers if s is not master}
    async with Monitor(settings) as monitor:
        report = await monitor.health()
    with SyncHealthReader(settings) as reader:
        sync_report = reader.health()

    assert report.level is HealthLevel.HEALTHY, report.reasons
    assert report.reasons == []
    t = report.topology
    assert t is not None
    assert t.role == "master" and t.following is None
    assert t.master == _address(master.port)
    assert {r.address for r in t.replicas} == replicas
    assert all(r.state == "online" and r.lag_s is not None and r.lag_s <= 10 for r in t.replicas)
    assert t.connected_replicas == 2
    assert (t.min_replicas_to_write, t.min_replicas_max_lag_s) == (1, 10)
    assert t.write_fencing is True and t.good_replicas == 2
    assert t.replica_acks == 1 and t.writes_refused is None
    assert [s.address for s in t.sentinels] == group.sentinel_env().split(",")
    for s in t.sentinels:
        assert (s.reachable, s.master, s.quorum, s.error) == (True, t.master, True, None)

    # The synchronous reader (the periodic health task's) reads and decides the same.
    assert sync_report.level is HealthLevel.HEALTHY and sync_report.reasons == []
    assert _stable(sync_report) == _stable(report)


async def test_min_replicas_to_write_0_is_degraded_when_writes_need_a_replica(
    group: SentinelGroup, settings: TaskSettings
) -> None:
    with _client(group.master.port) as master:
        master.config_set("min-replicas-to-write", 0)
        try:
            async with Monitor(settings) as monitor:
                report = await monitor.health()
            with SyncHealthReader(settings) as reader:
                sync_report = reader.health()
            without_acks = _settings(group, redis_replica_acks=0)
            async with Monitor(without_acks) as monitor:
                unasked = await monitor.health()
        finally:
            master.config_set("min-replicas-to-write", 1)

    for r in (report, sync_report):
        assert r.level is HealthLevel.DEGRADED
        (reason,) = r.reasons
        assert reason.startswith(f"min-replicas-to-write is 0: {FAILOVER_REASON}"), reason
        assert r.topology is not None
        assert r.topology.min_replicas_to_write == 0 and r.topology.write_fencing is False
        assert r.topology.connected_replicas == 2
    # Nobody waits for a replica's confirmation: nothing a failover could take back was promised.
    assert unasked.level is HealthLevel.HEALTHY and unasked.reasons == []


async def test_config_get_refused_is_unknown_not_an_error(group: SentinelGroup) -> None:
    """Managed Redis forbids CONFIG: here an ACL user without it, on the master."""
    user, password = "ops-no-config", "ops-no-config-password"
    with _client(group.master.port) as master:
        master.execute_command(
            "ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all", "-config"
        )
        try:
            limited = _settings(group, redis_username=user, redis_password=password)
            async with Monitor(limited) as monitor:
                report = await monitor.health()
            with SyncHealthReader(limited) as reader:
                sync_report = reader.health()
        finally:
            master.execute_command("ACL", "DELUSER", user)

    for r in (report, sync_report):
        assert r.reachable and r.level is HealthLevel.HEALTHY, r.reasons
        t = r.topology
        assert t is not None
        assert t.min_replicas_to_write is None and t.min_replicas_max_lag_s is None
        # INFO still says the master is fenced, and how many replicas count.
        assert t.write_fencing is True and t.good_replicas == 2


async def test_a_client_pointed_at_a_replica_is_unhealthy(group: SentinelGroup) -> None:
    master = group.master
    replica = next(s for s in group.servers if s is not master)
    direct = TaskSettings(redis_url=f"redis://127.0.0.1:{replica.port}", health_required_queues=[])
    async with Monitor(direct) as monitor:
        report = await monitor.health()
    assert report.reachable and report.level is HealthLevel.UNHEALTHY
    t = report.topology
    assert t is not None
    assert t.role == "replica" and t.following == _address(master.port)
    assert t.sentinels == [] and t.master is None
    # The check's own bookkeeping write met the refusal a submit would meet.
    assert t.writes_refused is not None and t.writes_refused.startswith("READONLY ")
    assert (
        f"the server is a replica of {_address(master.port)}: it refuses writes (READONLY); "
        "point REDIS_URL at the master, or use REDIS_SENTINELS"
    ) in report.reasons


def test_cli_health_and_status_with_only_sentinel_settings(group: SentinelGroup) -> None:
    master = _address(group.master.port)
    sentinels = group.sentinel_env().split(",")

    health = _cli(group, "health")
    assert health.returncode == 0, _explain(health)
    assert health.stdout.split()[0] == "healthy", _explain(health)
    assert (
        f"master {master} (as 3 of 3 sentinels name it: {', '.join(sentinels)})" in health.stdout
    ), health.stdout
    assert "replicas: 2 connected (" in health.stdout
    assert "min-replicas-to-write 1, min-replicas-max-lag 10 s, REDIS_REPLICA_ACKS 1" in (
        health.stdout
    )

    as_json = _cli(group, "health", "--json")
    assert as_json.returncode == 0, _explain(as_json)
    topology = json.loads(as_json.stdout)["topology"]
    assert topology["master"] == master and topology["connected_replicas"] == 2

    status = _cli(group, "status")
    assert status.returncode == 0, _explain(status)
    assert _rows(status.stdout, "master") == [
        ["master", master, "master, min-replicas-to-write 1 (max lag 10 s), REDIS_REPLICA_ACKS 1"]
    ], status.stdout
    assert len(_rows(status.stdout, "replica")) == 2, status.stdout
    assert [row[1:] for row in _rows(status.stdout, "sentinel")] == [
        [s, f"names {master}, quorum ok"] for s in sentinels
    ], status.stdout
    assert "Workers" in status.stdout and "Queues" in status.stdout


def test_metrics_scrape_through_the_sentinels(group: SentinelGroup, settings: TaskSettings) -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    text = generate_latest(build_registry(settings)).decode()
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }
    assert values["vocalborn_up"] == 1
    assert values["vocalborn_health_status"] == 0  # healthy
    assert values["vocalborn_redis_connected_replicas"] == 2
    assert 0 <= values["vocalborn_redis_replica_max_lag_seconds"] <= 10


def test_flower_starts_and_authenticates_with_only_sentinel_settings(
    group: SentinelGroup, tmp_path: Path
) -> None:
    """What Flower shows of the broker depends on the worker side's Sentinel transport (see
    docs/operations.md); here: it runs, and never without its password."""
    port = free_port()
    env = {**_sentinel_env(group), "FLOWER_BASIC_AUTH": "ops:correct-horse-battery"}
    log = tmp_path / "flower.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vocalborn_tasks", "flower", "--port", str(port)],
            env=env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def answers() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(f"{base}/healthcheck", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, 60, interval=0.2, what="flower")
        for path in ("/", "/workers", "/api/workers"):
            assert httpx.get(base + path, timeout=30).status_code == 401, path
        ok = httpx.get(base + "/", auth=("ops", "correct-horse-battery"), timeout=30)
        assert ok.status_code == 200 and "Flower" in ok.text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


async def test_after_a_failover_health_and_status_name_the_new_master(
    group: SentinelGroup, settings: TaskSettings
) -> None:
    """Runs last in the module: the group goes on with another master."""
    old = group.master.port
    async with Monitor(settings) as monitor:
        before = await monitor.health()
        assert before.topology is not None and before.topology.master == _address(old)
        new = group.failover()

        async def settled() -> HealthReport | None:
            # The same Monitor: its connections to the old master were cut by the sentinels.
            r = await monitor.health()
            t = r.topology
            done = (
                r.level is HealthLevel.HEALTHY
                and t is not None
                and t.master == _address(new)
                and t.connected_replicas == 2
            )
            return r if done else None

        after = await async_wait_until(settled, 30, interval=0.2, what="health after failover")
    t = after.topology
    assert t is not None and t.role == "master"
    assert _address(old) in {r.address for r in t.replicas}  # the old master follows now
    assert {s.master for s in t.sentinels} == {_address(new)}

    status = _cli(group, "status")
    assert status.returncode == 0, _explain(status)
    assert [row[1] for row in _rows(status.stdout, "master")] == [_address(new)], status.stdout
    health = _cli(group, "health", "--json")
    assert health.returncode == 0, _explain(health)
    assert json.loads(health.stdout)["topology"]["master"] == _address(new)


async def test_replicas_gone_degrade_health_and_a_fenced_master_refuses_writes(
    server_binary: str | None,
) -> None:
    with SentinelGroup(
        binary=server_binary, min_replicas_to_write=1, die_with_parent=True
    ) as group:
        settings = _settings(group)
        _wait_for_quorum(settings)
        master = group.master
        for server in group.servers:
            if server is not master:
                server.kill()
        expected_replicas = (
            "0 replicas connected but REDIS_REPLICA_ACKS is 1: confirmed writes (submit, "
            "cancel, final results) wait up to REDIS_FAILOVER_WAIT_S (15 s) for "
            "acknowledgements, then fail"
        )
        async with Monitor(settings) as monitor:

            async def replicas_gone() -> HealthReport | None:
                r = await monitor.health()
                return r if r.topology is not None and not r.topology.replicas else None

            fenced = await async_wait_until(replicas_gone, 20, interval=0.1, what="no replica")
            # min-replicas-to-write 1 and no replica: the master refuses every write, which
            # the check's own write met; submits would fail, so the verdict is UNHEALTHY.
            assert fenced.level is HealthLevel.UNHEALTHY, fenced.reasons
            assert fenced.topology is not None
            assert fenced.topology.writes_refused == "NOREPLICAS Not enough good replicas to write."
            assert expected_replicas in fenced.reasons
            assert (
                "the server refuses writes (NOREPLICAS Not enough good replicas to write.): "
                "submits, cancels and results fail until it takes them again"
            ) in fenced.reasons

            with _client(master.port) as client:
                client.config_set("min-replicas-to-write", 0)
            report = await monitor.health()
        with SyncHealthReader(settings) as reader:
            sync_report = reader.health()

    # Without fencing the master takes writes again: DEGRADED, for the two reasons.
    for r in (report, sync_report):
        assert r.level is HealthLevel.DEGRADED
        assert r.reasons[0] == expected_replicas
        assert r.reasons[1].startswith(f"min-replicas-to-write is 0: {FAILOVER_REASON}")
        assert len(r.reasons) == 2, r.reasons
