"""The worker side's failover rules, without a server: which replies mean "reconnect", what the
worker's connections do with them, the reaper's clock, and what the app is built with."""

from __future__ import annotations

from typing import Any

import pytest
import redis
import redis.sentinel
from redis._parsers import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from vocalborn_tasks.config import TaskSettings
from vocalborn_tasks.worker.factory import create_celery_app
from vocalborn_tasks.worker.failover import (
    FailoverConnection,
    FailoverError,
    FailoverSSLConnection,
    NoReplicasError,
    SentinelFailoverConnection,
    SentinelFailoverSSLConnection,
    _FailoverMixin,
    connection_class,
    failover_code,
)
from vocalborn_tasks.worker.heartbeat import ServerWatch

SENTINELS = {"redis_sentinels": "127.0.0.1:1,127.0.0.1:2", "redis_sentinel_master": "vb"}


def _reply(text: str) -> Exception:
    """The exception redis-py makes of an error reply (its own parser's mapping)."""
    exc: Exception = BaseParser.parse_error(text)
    return exc


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        ("UNBLOCKED force unblock from blocking operation, instance state changed", "UNBLOCKED"),
        ("READONLY You can't write against a read only replica.", "READONLY"),
        (
            "READONLY You can't write against a read only replica. script: x, on @user_script:1.",
            "READONLY",
        ),
        (
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "MASTERDOWN",
        ),
        ("NOREPLICAS Not enough good replicas to write.", "NOREPLICAS"),
        ("NOREPLICAS Not enough good replicas to write. script: on @user_script:47.", "NOREPLICAS"),
        # Redis 6 wraps an error raised inside a script.
        (
            "ERR Error running script (call to f_1): @user_script:1: @user_script: 1: "
            "-READONLY You can't write against a read only replica.",
            "READONLY",
        ),
        # A confirmation's WAIT on a demoted master.
        ("ERR WAIT cannot be used with replica instances. Please also note that", "READONLY"),
        ("NOSCRIPT No matching script. Please use EVAL.", None),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", None),
        ("ERR unknown command 'FOO'", None),
        ("ERR Error running script (call to f_1): @user_script:3: attempt to index nil", None),
    ],
)
def test_failover_replies(reply: str, code: str | None) -> None:
    assert failover_code(_reply(reply)) == code


def test_loading_is_a_connection_error_already() -> None:
    # redis-py raises it as BusyLoadingError, a ConnectionError: every retry covers it.
    exc = _reply("LOADING Redis is loading the dataset in memory")
    assert isinstance(exc, RedisConnectionError)
    assert failover_code(exc) is None  # nothing left to map
    assert failover_code(RedisConnectionError("Connection closed by server.")) is None


class _Base:
    """Stands in for redis-py's connection under the mixin: replies with ``reply``."""

    def __init__(self, reply: Exception | str) -> None:
        self.reply = reply
        self.host, self.port = "10.0.0.1", 6380
        self.disconnected = 0

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply

    def disconnect(self, *args: Any) -> None:
        self.disconnected += 1


class _Connection(_FailoverMixin, _Base):
    pass


def test_a_failover_reply_drops_the_connection_and_is_a_connection_error() -> None:
    conn = _Connection(_reply("READONLY You can't write against a read only replica."))
    with pytest.raises(FailoverError) as raised:
        conn.read_response()
    assert isinstance(raised.value, RedisConnectionError)
    assert not isinstance(raised.value, NoReplicasError)
    assert raised.value.code == "READONLY"
    assert "10.0.0.1:6380" in str(raised.value) and "READONLY" in str(raised.value)
    assert conn.disconnected == 1  # the replies still due on it go with it
    assert conn.vb_drops == 1  # a reservation held on it cannot be confirmed any more


def test_noreplicas_is_its_own_kind() -> None:
    conn = _Connection(_reply("NOREPLICAS Not enough good replicas to write."))
    with pytest.raises(NoReplicasError) as raised:
        conn.read_response()
    assert raised.value.code == "NOREPLICAS"


def test_other_replies_pass_through_untouched() -> None:
    noscript = _reply("NOSCRIPT No matching script. Please use EVAL.")
    conn = _Connection(noscript)
    with pytest.raises(ResponseError) as raised:
        conn.read_response()
    assert raised.value is noscript
    assert conn.disconnected == 0
    assert _Connection("OK").read_response() == "OK"


def test_connection_classes_by_topology() -> None:
    assert connection_class(TaskSettings(_env_file=None, redis_url="redis://h:1")) is (
        FailoverConnection
    )
    assert connection_class(TaskSettings(_env_file=None, redis_url="rediss://h:1")) is (
        FailoverSSLConnection
    )
    assert connection_class(TaskSettings(_env_file=None, **SENTINELS)) is (
        SentinelFailoverConnection
    )
    tls = TaskSettings(_env_file=None, redis_tls=True, **SENTINELS)
    assert connection_class(tls) is SentinelFailoverSSLConnection
    # Each keeps what redis-py's own class does (address lookup, TLS).
    assert issubclass(SentinelFailoverConnection, redis.sentinel.SentinelManagedConnection)
    assert issubclass(SentinelFailoverSSLConnection, redis.SSLConnection)


def test_server_watch_counts_only_an_unbroken_watch_of_one_server() -> None:
    watch = ServerWatch(max_gap_s=1.0)
    assert watch.observe("a", 10.0) == 0.0
    assert watch.observe("a", 10.5) == 0.5
    assert watch.observe("a", 11.4) == pytest.approx(1.4)
    # Another server (a failover, a restart): the clock starts again.
    assert watch.observe("b", 11.9) == 0.0
    assert watch.observe("b", 12.8) == pytest.approx(0.9)
    # A gap: our own calls were failing or retrying meanwhile.
    assert watch.observe("b", 14.0) == 0.0
    # A failed beat.
    watch.reset()
    assert watch.server is None
    assert watch.observe("b", 14.5) == 0.0


def test_app_in_sentinel_mode() -> None:
    settings = TaskSettings(
        _env_file=None,
        redis_password="master-secret",
        redis_sentinel_password="sentinel-secret",
        **SENTINELS,
    )
    app = create_celery_app(settings, register=False)
    conf = app.conf
    assert conf.broker_transport == "vocalborn_tasks.worker.transport:SentinelTransport"
    options = conf.broker_transport_options
    assert options["master_name"] == "vb"
    assert options["sentinel_kwargs"]["password"] == "sentinel-secret"
    # The backend builds its pool from the settings: the sentinels' secret is not copied there.
    assert "sentinel_kwargs" not in conf.result_backend_transport_options
    backend = app.backend
    pool = backend.client.connection_pool  # built lazily; connects on first use only
    assert isinstance(pool, redis.sentinel.SentinelConnectionPool)
    assert pool.service_name == "vb"
    assert pool.connection_kwargs["db"] == settings.redis_db_backend
    assert pool.connection_kwargs["password"] == "master-secret"
    assert pool.connection_class is SentinelFailoverConnection
    uri = backend.as_uri()
    assert "secret" not in uri and uri.count("sentinel://") == 2


def test_app_on_one_server_keeps_its_transport_with_failover_aware_connections() -> None:
    app = create_celery_app(TaskSettings(_env_file=None, redis_url="redis://h:1"), register=False)
    assert app.conf.broker_transport == "vocalborn_tasks.worker.transport:Transport"
    pool = app.backend.client.connection_pool
    assert pool.connection_class is FailoverConnection
    assert pool.connection_kwargs["host"] == "h"
