"""The confirmation rule of record/confirm.py: who must hold a write, decided from reports."""

from __future__ import annotations

from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from vocalborn_tasks.config import TaskSettings
from vocalborn_tasks.record.confirm import Confirmation, is_failover_error, split_tail


def _report(replid: str, *replicas: tuple[int, str]) -> dict[str, Any]:
    info: dict[str, Any] = {"role": "master", "master_replid": replid}
    for i, (port, state) in enumerate(replicas):
        info[f"slave{i}"] = {"ip": "127.0.0.1", "port": port, "state": state}
    return info


def test_nothing_to_confirm_without_replica_acks() -> None:
    assert Confirmation.of(TaskSettings(_env_file=None, redis_url="redis://h:1/0")) is None
    found = Confirmation.of(TaskSettings(_env_file=None, redis_replica_acks=2))
    assert found is not None and found.replicas == 2


def test_every_replica_seen_must_confirm_until_reports_miss_it_for_the_grace() -> None:
    c = Confirmation(replicas=1, wait_s=15)
    assert c.needed() == 1
    c.observe(_report("a", (1, "online"), (2, "online")), now=0)
    assert c.needed() == 2
    # The promoted replica left the old master: still expected for the grace period, counted
    # from the first report without it.
    c.observe(_report("a", (2, "online")), now=1)
    assert c.needed() == 2
    c.observe(_report("a", (2, "online")), now=5.9)
    assert c.needed() == 2
    c.observe(_report("a", (2, "online")), now=6.0)
    assert c.needed() == 1


def test_a_pause_through_a_failover_forgets_no_replica() -> None:
    """A process stopped for longer than the grace (SIGSTOP, swap) comes back to the old
    master, which the promoted replica has left: it must still expect that replica (the CI
    run where a wall-clock grace let the remaining replica alone confirm a reservation on the
    old master, and the task ran twice)."""
    c = Confirmation(replicas=1, wait_s=15)
    c.observe(_report("a", (1, "online"), (2, "online")), now=0)
    c.observe(_report("a", (2, "online")), now=100)
    assert c.needed() == 2
    assert not c.accepted(1, 2)
    c.observe(_report("a", (2, "online")), now=104)
    assert c.needed() == 2
    c.observe(_report("a", (2, "online")), now=105)
    assert c.needed() == 1


def test_a_replica_back_before_the_grace_is_expected_again() -> None:
    c = Confirmation(replicas=1, wait_s=15)
    c.observe(_report("a", (1, "online"), (2, "online")), now=0)
    c.observe(_report("a", (2, "online")), now=1)
    c.observe(_report("a", (1, "online"), (2, "online")), now=3)
    c.observe(_report("a", (2, "online")), now=7)  # missing again: the grace starts over
    assert c.needed() == 2
    c.observe(_report("a", (2, "online")), now=12)
    assert c.needed() == 1


def test_a_replica_still_syncing_is_not_expected() -> None:
    c = Confirmation(replicas=1, wait_s=15)
    c.observe(_report("a", (1, "online"), (2, "wait_bgsave")), now=0)
    assert c.needed() == 1


def test_a_new_master_starts_from_its_own_replicas() -> None:
    c = Confirmation(replicas=1, wait_s=15)
    c.observe(_report("old", (1, "online"), (2, "online")), now=0)
    c.observe(_report("new", (2, "online")), now=1)
    assert c.needed() == 1


def test_a_raw_info_text_is_read_too() -> None:
    c = Confirmation(replicas=1, wait_s=15)
    text = (
        "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n"
        "slave0:ip=127.0.0.1,port=7001,state=online,offset=10,lag=0\r\n"
        "slave1:ip=127.0.0.1,port=7002,state=online,offset=10,lag=1\r\n"
        "master_replid:abc\r\n"
    )
    c.observe(text.encode(), now=0)
    assert c.needed() == 2


def test_a_short_wait_is_not_accepted_and_asks_for_a_report() -> None:
    c = Confirmation(replicas=1, wait_s=15)
    assert [cmd[0] for cmd in c.tail(1, 10)] == ["WAIT", "INFO"]
    c.observe(_report("a", (1, "online")))
    assert [cmd[0] for cmd in c.tail(1, 10)] == ["WAIT"]  # reported a moment ago
    assert not c.accepted(0, 1)
    c.doubt()
    assert [cmd[0] for cmd in c.tail(1, 10)] == ["WAIT", "INFO"]
    assert c.accepted(1, 1)


def test_split_tail() -> None:
    assert split_tail(["r1", "r2", 1, {"role": "master"}], 2) == (
        ["r1", "r2"],
        1,
        {"role": "master"},
    )
    assert split_tail(["r1", 2], 1) == (["r1"], 2, None)


def test_failover_errors() -> None:
    assert is_failover_error(RedisConnectionError("gone"))
    for reply in (
        "NOREPLICAS Not enough good replicas",
        "MASTERDOWN x",
        "UNBLOCKED x",
        "LOADING x",
    ):
        assert is_failover_error(ResponseError(reply))
    assert not is_failover_error(ResponseError("ERR wrong number of arguments"))
    assert not is_failover_error(ValueError("x"))


def test_a_confirmed_run_accepts_retries_and_gives_up_by_the_rule() -> None:
    """The one copy of the retry rule both runners (sync and async) follow."""
    from vocalborn_tasks.record.confirm import ConfirmedRun, ReplicaShortfallError

    run = ConfirmedRun(Confirmation(replicas=1, wait_s=15))
    wait, report = run.tail()  # the first attempt carries the replication report
    assert wait[:2] == ("WAIT", 1) and report == ("INFO", "replication")
    # A report naming a second replica raises what this very attempt needed.
    assert not run.after_reply(1, _report("a", (1, "online"), (2, "online")))
    assert run.attempt == 1
    assert run.tail()[0][:2] == ("WAIT", 2)  # a fresh report is due after the shortfall
    assert run.after_reply(2, None)
    # Failover errors pause (50 ms doubling), others are let out at once.
    assert run.after_error(RedisConnectionError("gone")) == 0.1
    assert run.after_error(RedisConnectionError("gone")) == 0.2
    assert run.after_error(ValueError("a bug")) is None

    late = ConfirmedRun(Confirmation(replicas=2, wait_s=-1))  # its deadline already passed
    late.tail()
    assert late.after_error(RedisConnectionError("gone")) is None  # past the deadline
    with pytest.raises(ReplicaShortfallError, match="only 1 of 2 replicas"):
        late.after_reply(1, None)
