from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from vocalborn_tasks.config import TaskSettings, redact_url
from vocalborn_tasks.errors import ConfigurationError, InvalidSettingsError

_ENV = (
    "REDIS_URL",
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_PASSWORD",
    "REDIS_USERNAME",
    "REDIS_DB_BROKER",
    "REDIS_DB_BACKEND",
    "CELERY_WORKER_CONCURRENCY",
    "REDIS_TLS",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_are_not_configured() -> None:
    s = TaskSettings()
    assert not s.redis_configured
    assert s.broker_url == "redis://localhost:6379/0"
    assert s.backend_url == "redis://localhost:6379/1"


def test_seed_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_HOST", "cache.internal")
    monkeypatch.setenv("REDIS_PORT", "6380")
    monkeypatch.setenv("REDIS_PASSWORD", "s3cr/t@x")
    monkeypatch.setenv("REDIS_DB_BROKER", "2")
    monkeypatch.setenv("REDIS_DB_BACKEND", "3")
    monkeypatch.setenv("CELERY_WORKER_CONCURRENCY", "4")
    s = TaskSettings()
    assert s.redis_configured
    assert s.broker_url == "redis://:s3cr%2Ft%40x@cache.internal:6380/2"
    assert s.backend_url.endswith("@cache.internal:6380/3")
    assert s.celery_worker_concurrency == 4
    assert "s3cr" not in repr(s)
    assert "s3cr" not in s.redacted_broker_url


def test_url_wins_and_arguments_beat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_HOST", "ignored")
    monkeypatch.setenv("REDIS_URL", "redis://env-host:1234")
    assert TaskSettings().broker_url == "redis://env-host:1234/0"
    assert TaskSettings(redis_url="redis://arg-host:1/").backend_url == "redis://arg-host:1/1"


def test_dotenv_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("REDIS_URL=redis://from-dotenv:7000\n")
    assert TaskSettings().broker_url == "redis://from-dotenv:7000/0"


def test_password_is_merged_into_url_and_redacted() -> None:
    s = TaskSettings(redis_url="redis://h:1", redis_password="pw")
    assert s.broker_url == "redis://:pw@h:1/0"
    assert s.redacted_broker_url == "redis://:***@h:1/0"
    assert redact_url("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"


def test_tls_options() -> None:
    import ssl

    s = TaskSettings(redis_url="rediss://h:1", redis_ssl_ca_certs=Path("/ca.pem"))
    opts = s.ssl_options()
    assert opts is not None
    assert opts["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert opts["ssl_ca_certs"] == "/ca.pem"
    assert TaskSettings(redis_url="redis://h:1").ssl_options() is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"visibility_timeout_s": 100, "task_time_limit_s": 200, "task_soft_time_limit_s": 100},
        {"task_soft_time_limit_s": 400, "task_time_limit_s": 300},
        {"redis_db_broker": 1, "redis_db_backend": 1},
        {"redis_url": "http://nope"},
        {"worker_heartbeat_s": 5, "worker_dead_after_s": 6},
    ],
)
def test_unsafe_configurations_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        TaskSettings.model_validate(kwargs)


def test_key_namespace() -> None:
    assert TaskSettings(key_prefix="vb").key("task", "abc") == "vb:task:abc"


def test_validation_errors_do_not_echo_a_password() -> None:
    with pytest.raises(InvalidSettingsError) as info:
        TaskSettings(redis_url="http://user:hunter2-secret@h:1")
    assert "hunter2-secret" not in str(info.value)
    assert "hunter2-secret" not in repr(info.value)


# --- issue 12: a database in REDIS_URL is honoured or refused, never ignored -------------------


@pytest.mark.parametrize(
    ("url", "kwargs", "dbs"),
    [
        ("redis://h:6379", {}, (0, 1)),
        ("redis://h:6379/", {}, (0, 1)),
        ("redis://h:6379/0", {}, (0, 1)),
        ("redis://h:6379/5", {}, (5, 6)),
        ("redis://h:6379/5", {"redis_db_backend": 9}, (5, 9)),
        ("redis://h:6379/5", {"redis_db_broker": 5}, (5, 6)),
        ("redis://h:6379/15", {"redis_db_backend": 14}, (15, 14)),
    ],
)
def test_url_database_is_honoured(url: str, kwargs: dict[str, int], dbs: tuple[int, int]) -> None:
    s = TaskSettings(redis_url=url, **kwargs)
    assert (s.redis_db_broker, s.redis_db_backend) == dbs
    assert s.broker_url.endswith(f"/{dbs[0]}") and s.backend_url.endswith(f"/{dbs[1]}")


@pytest.mark.parametrize(
    ("url", "kwargs", "needle"),
    [
        ("redis://h:6379/15", {}, "REDIS_DB_BACKEND"),
        ("redis://h:6379/5", {"redis_db_broker": 3}, "set only one"),
        ("redis://h:6379/x", {}, "database number"),
        ("redis://h:6379/16", {}, "database number"),
        ("redis://h:6379?db=3", {}, "in the path"),
        ("redis://h:6379/5", {"redis_db_backend": 5}, "must differ"),
    ],
)
def test_url_database_conflicts_are_refused(url: str, kwargs: dict[str, int], needle: str) -> None:
    with pytest.raises(InvalidSettingsError, match=re.escape(needle)):
        TaskSettings(redis_url=url, **kwargs)


# --- issue 16, bug 3: list settings as operators write them --------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "field", "expected"),
    [
        ("RECORDING_ROOTS", "/srv/x", "recording_roots", [Path("/srv/x")]),
        ("RECORDING_ROOTS", "/srv/a, /srv/b,", "recording_roots", [Path("/srv/a"), Path("/srv/b")]),
        (
            "RECORDING_ROOTS",
            '["/srv/a", "/srv/b"]',
            "recording_roots",
            [Path("/srv/a"), Path("/srv/b")],
        ),
        ("RECORDING_ROOTS", "", "recording_roots", []),
        ("TASK_MODULES", "count_words", "task_modules", ["count_words"]),
        ("TASK_MODULES", "a.tasks,b.tasks", "task_modules", ["a.tasks", "b.tasks"]),
        ("HOST_QUEUES", "videos", "host_queues", ["videos"]),
        ("HOST_QUEUES", '["videos"]', "host_queues", ["videos"]),
        ("HEALTH_REQUIRED_QUEUES", "ai_analysis", "health_required_queues", ["ai_analysis"]),
        ("RECORDING_SCHEMES", "file, S3", "recording_schemes", ["file", "s3"]),
        ("ALERT_SINKS", "app.alerts:page", "alert_sinks", ["app.alerts:page"]),
    ],
)
def test_list_settings_accept_comma_separated_and_json(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, field: str, expected: list[object]
) -> None:
    monkeypatch.setenv(name, value)
    assert getattr(TaskSettings(), field) == expected


def test_list_settings_from_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("HOST_QUEUES=videos,images\n")
    assert TaskSettings().host_queues == ["videos", "images"]


def test_list_settings_from_arguments_stay_lists() -> None:
    assert TaskSettings(host_queues=["a,b"]).host_queues == ["a,b"]


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("HOST_QUEUES", "[videos", "HOST_QUEUES: not a valid JSON list"),
        ("TASK_MODULES", "[1, 2]", "TASK_MODULES: a JSON list here must hold strings only"),
        ("RECORDING_ROOTS", '["/srv/a"]]', "RECORDING_ROOTS: not a valid JSON list"),
        ("BEAT_SCHEDULE", "nope", "BEAT_SCHEDULE: not valid JSON"),
        ("REDIS_PORT", "secret-ish", "REDIS_PORT"),
    ],
)
def test_invalid_settings_are_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(InvalidSettingsError) as info:
        TaskSettings()
    exc = info.value
    message = str(exc)
    assert message.startswith("invalid configuration: ") and needle in message, message
    assert "\n" not in message
    assert value not in message or value in needle  # never the value itself
    # A host (uvicorn importing the app) sees this one error, not a chain of three.
    assert exc.__cause__ is None and exc.__suppress_context__
    assert isinstance(exc, ConfigurationError) and isinstance(exc, ValueError)


def test_sentinel_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_SENTINELS", "10.0.0.1:26379, 10.0.0.2:26380")
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "clinic")
    monkeypatch.setenv("REDIS_SENTINEL_PASSWORD", "s3cret")
    monkeypatch.setenv("REDIS_PASSWORD", "m4ster")
    monkeypatch.setenv("REDIS_FAILOVER_WAIT_S", "7")
    settings = TaskSettings(_env_file=None)
    assert settings.redis_configured and settings.uses_sentinel
    assert settings.sentinel_addresses == [("10.0.0.1", 26379), ("10.0.0.2", 26380)]
    assert settings.replica_acks == 1
    assert settings.redis_failover_wait_s == 7
    assert "clinic" in settings.server_address and "s3cret" not in settings.server_address
    assert "m4ster" not in settings.redacted_broker_url
    assert TaskSettings(_env_file=None, redis_replica_acks=0).replica_acks == 0


def test_replica_acks_default_to_zero_on_one_server() -> None:
    assert TaskSettings(_env_file=None, redis_url="redis://h:6379/0").replica_acks == 0


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"REDIS_SENTINELS": "h:26379", "REDIS_URL": "redis://h:6379/0"}, "both set"),
        ({"REDIS_SENTINELS": "h:26379", "REDIS_HOST": "h"}, "both set"),
        ({"REDIS_SENTINELS": "h:26379"}, "REDIS_SENTINEL_MASTER"),
        ({"REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS is not"),
        ({"REDIS_SENTINELS": "h", "REDIS_SENTINEL_MASTER": "m"}, "host:port"),
    ],
)
def test_sentinel_conflicts_are_one_line(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], needle: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InvalidSettingsError) as info:
        TaskSettings(_env_file=None)
    assert needle in str(info.value) and "\n" not in str(info.value)
