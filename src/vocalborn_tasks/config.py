"""Settings: one pydantic-settings object that every other part is built from.

Constructor arguments beat environment variables, which beat a ``.env`` file. The variable
names are the seed system's (``REDIS_URL``, ``REDIS_HOST``, ``CELERY_WORKER_CONCURRENCY``...)
so an existing deployment keeps its environment. Nothing here connects to anything.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from .errors import InvalidSettingsError

__all__ = ["QUEUES", "BeatEntry", "TaskSettings", "redact_url", "split_list"]

#: The three queues, highest priority first.
QUEUES: tuple[str, ...] = ("ai_analysis", "maintenance", "health")


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (for logs and messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class BeatEntry(BaseModel):
    """One periodic job of ``vocalborn-tasks beat`` (see ``TaskSettings.beat_schedule``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str
    every_s: float = Field(gt=0)
    queue: str | None = None
    kwargs: dict[str, object] = Field(default_factory=dict)


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


def split_list(value: object) -> object:
    """A list setting from the environment: a JSON list, or the plain comma-separated form.

    ``RECORDING_ROOTS=/srv/a,/srv/b`` is how an operator writes a list; requiring
    ``'["/srv/a"]'`` made every command crash on the natural form. A value that starts with
    ``[`` must be a JSON list of strings (a half-written one is refused, not read as a name);
    anything else is split on commas, blanks trimmed, empty items dropped. Non-strings
    (constructor arguments) pass through to the field's own validation.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except ValueError:
            raise ValueError(
                'not a valid JSON list; write a comma-separated list (a,b) or JSON (["a","b"])'
            ) from None
        if not isinstance(parsed, list) or not all(isinstance(i, str) for i in parsed):
            raise ValueError("a JSON list here must hold strings only")
        return parsed
    return [item.strip() for item in text.split(",") if item.strip()]


#: A list setting: JSON or comma-separated in the environment (see :func:`split_list`).
StrList = Annotated[list[str], NoDecode]
PathList = Annotated[list[Path], NoDecode]


class TaskSettings(BaseSettings):
    """Everything the library needs to know, from the environment or from arguments.

    Redis: set ``REDIS_URL`` (wins when set), or ``REDIS_HOST``/``REDIS_PORT``/``REDIS_PASSWORD``.
    When neither is set, :attr:`redis_configured` is false and the demo and tests start an
    embedded Valkey server instead.

    Reliability: ``task_time_limit_s`` must stay below ``visibility_timeout_s``, or Redis would
    hand a still-running task to a second worker; such a configuration is refused.
    """

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        validate_default=True,
        # A rejected REDIS_URL may carry a password: never echo inputs in validation errors.
        hide_input_in_errors=True,
    )

    def __init__(self, **values: Any) -> None:
        """Read the settings; a bad value is one :class:`InvalidSettingsError` line.

        pydantic's own errors span many lines (and a value the environment source cannot
        decode used to end a web server's start in a 90-line traceback); a host, a worker and
        the CLI all want the variable's name and the problem, in one line, without the value
        (it may be a password).

        Raises:
            InvalidSettingsError: a value is invalid or the combination cannot work.
        """
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise InvalidSettingsError(
                _one_line(exc), errors=_error_list(exc, type(self))
            ) from None
        except SettingsError as exc:
            # pydantic-settings could not decode a value (e.g. BEAT_SCHEDULE that is not JSON).
            found = re.search(r'field "(\w+)"', str(exc))
            name = _env_name((found.group(1),), type(self)) if found else ""
            raise InvalidSettingsError(
                f"invalid configuration: {name}: not valid JSON" if name else str(exc)
            ) from None

    # --- Redis -------------------------------------------------------------------------
    redis_url: str | None = Field(default=None, validation_alias=_env("REDIS_URL", "redis_url"))
    redis_host: str = Field(default="localhost", validation_alias=_env("REDIS_HOST", "redis_host"))
    redis_port: int = Field(
        default=6379, ge=1, le=65535, validation_alias=_env("REDIS_PORT", "redis_port")
    )
    redis_username: str | None = Field(
        default=None, validation_alias=_env("REDIS_USERNAME", "redis_username")
    )
    redis_password: SecretStr | None = Field(
        default=None, validation_alias=_env("REDIS_PASSWORD", "redis_password")
    )
    redis_db_broker: int = Field(
        default=0, ge=0, le=15, validation_alias=_env("REDIS_DB_BROKER", "redis_db_broker")
    )
    redis_db_backend: int = Field(
        default=1, ge=0, le=15, validation_alias=_env("REDIS_DB_BACKEND", "redis_db_backend")
    )
    redis_tls: bool = Field(default=False, validation_alias=_env("REDIS_TLS", "redis_tls"))
    redis_ssl_ca_certs: Path | None = Field(
        default=None, validation_alias=_env("REDIS_SSL_CA_CERTS", "redis_ssl_ca_certs")
    )
    redis_ssl_certfile: Path | None = Field(
        default=None, validation_alias=_env("REDIS_SSL_CERTFILE", "redis_ssl_certfile")
    )
    redis_ssl_keyfile: Path | None = Field(
        default=None, validation_alias=_env("REDIS_SSL_KEYFILE", "redis_ssl_keyfile")
    )
    redis_ssl_cert_reqs: Literal["required", "optional", "none"] = Field(
        default="required", validation_alias=_env("REDIS_SSL_CERT_REQS", "redis_ssl_cert_reqs")
    )
    #: How long a client waits to connect before it reports the server unreachable.
    redis_connect_timeout_s: float = Field(
        default=5.0, gt=0, validation_alias=_env("REDIS_CONNECT_TIMEOUT", "redis_connect_timeout_s")
    )
    # --- Sentinel (high availability) --------------------------------------------------------
    #: ``host:port`` of each sentinel (comma-separated or JSON); set instead of REDIS_URL/HOST.
    redis_sentinels: StrList = Field(
        default_factory=list, validation_alias=_env("REDIS_SENTINELS", "redis_sentinels")
    )
    #: The name the sentinels monitor the master under (``sentinel monitor <name> ...``).
    redis_sentinel_master: str | None = Field(
        default=None, validation_alias=_env("REDIS_SENTINEL_MASTER", "redis_sentinel_master")
    )
    #: The sentinels' own credentials (the master's stay REDIS_USERNAME/REDIS_PASSWORD).
    redis_sentinel_username: str | None = Field(
        default=None, validation_alias=_env("REDIS_SENTINEL_USERNAME", "redis_sentinel_username")
    )
    redis_sentinel_password: SecretStr | None = Field(
        default=None, validation_alias=_env("REDIS_SENTINEL_PASSWORD", "redis_sentinel_password")
    )
    #: Replicas that must confirm (``WAIT``) a write a caller or the result sink acts on:
    #: submit, cancel, a final result, the sink's claim, beat's lock. None: 1 with sentinels,
    #: 0 without (a single server has nothing to confirm with).
    redis_replica_acks: int | None = Field(
        default=None, ge=0, le=16, validation_alias=_env("REDIS_REPLICA_ACKS", "redis_replica_acks")
    )
    #: How long submit, cancel and a worker's confirmed writes ride out a failover (or missing
    #: replica confirmations) before they fail with BrokerUnavailableError/broker_unavailable.
    redis_failover_wait_s: float = Field(
        default=15.0, gt=0, validation_alias=_env("REDIS_FAILOVER_WAIT_S", "redis_failover_wait_s")
    )

    key_prefix: str = Field(
        default="vocalborn",
        min_length=1,
        validation_alias=_env("VOCALBORN_KEY_PREFIX", "key_prefix"),
    )

    # --- Worker --------------------------------------------------------------------------
    celery_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", validation_alias=_env("CELERY_LOG_LEVEL", "celery_log_level")
    )
    celery_worker_concurrency: int | None = Field(
        default=None,
        ge=1,
        validation_alias=_env("CELERY_WORKER_CONCURRENCY", "celery_worker_concurrency"),
    )
    # Recycle a pool process when it grows past a memory bound, not after a fixed count:
    # replacing a child costs a fork and a re-import (seconds of worst-case latency on a
    # 2-core host), and the analysis engine holds no leak that a count would cure.
    celery_worker_max_tasks_per_child: int | None = Field(
        default=None,
        ge=1,
        validation_alias=_env(
            "CELERY_WORKER_MAX_TASKS_PER_CHILD", "celery_worker_max_tasks_per_child"
        ),
    )
    celery_worker_max_memory_per_child_kb: int | None = Field(
        default=512 * 1024,
        ge=1,
        validation_alias=_env(
            "CELERY_WORKER_MAX_MEMORY_PER_CHILD", "celery_worker_max_memory_per_child_kb"
        ),
    )

    # --- Task limits and delivery -----------------------------------------------------------
    task_soft_time_limit_s: float = Field(
        default=300.0, gt=0, validation_alias=_env("TASK_SOFT_TIME_LIMIT", "task_soft_time_limit_s")
    )
    task_time_limit_s: float = Field(
        default=360.0, gt=0, validation_alias=_env("TASK_TIME_LIMIT", "task_time_limit_s")
    )
    visibility_timeout_s: float = Field(
        default=3600.0, gt=0, validation_alias=_env("VISIBILITY_TIMEOUT", "visibility_timeout_s")
    )
    result_expires_s: float = Field(
        default=86400.0, gt=0, validation_alias=_env("RESULT_EXPIRES", "result_expires_s")
    )
    max_retries: int = Field(
        default=3, ge=0, validation_alias=_env("TASK_MAX_RETRIES", "max_retries")
    )
    retry_backoff_s: float = Field(
        default=2.0, gt=0, validation_alias=_env("TASK_RETRY_BACKOFF", "retry_backoff_s")
    )
    retry_backoff_max_s: float = Field(
        default=120.0, gt=0, validation_alias=_env("TASK_RETRY_BACKOFF_MAX", "retry_backoff_max_s")
    )
    #: A message delivered this many times without finishing (its worker died each time)
    #: ends as FAILURE with code ``delivery_limit`` instead of looping forever.
    max_deliveries: int = Field(
        default=3, ge=1, validation_alias=_env("TASK_MAX_DELIVERIES", "max_deliveries")
    )
    #: A task that reaches workers which do not know it (they differ in ``--include``) is
    #: handed back to its queue for one that does, this many times (each worker pausing 1, 2,
    #: 4 .. 10 s after each); then it ends as FAILURE with code ``unknown_task``.
    unknown_task_max_offers: int = Field(
        default=10,
        ge=1,
        validation_alias=_env("UNKNOWN_TASK_MAX_OFFERS", "unknown_task_max_offers"),
    )

    #: How long a worker waits out a broker outage in the middle of a task (storing progress,
    #: the sink's claim and acknowledgement, the result) before giving up on that step.
    #: Longer outages end the task with code ``broker_unavailable``; shorter ones cost nothing.
    broker_outage_tolerance_s: float = Field(
        default=60.0,
        gt=0,
        validation_alias=_env("BROKER_OUTAGE_TOLERANCE", "broker_outage_tolerance_s"),
    )

    #: How often a worker writes its heartbeat, and how long without one makes it dead (its
    #: unacknowledged tasks are then handed back to the queue by the other workers).
    worker_heartbeat_s: float = Field(
        default=2.0, gt=0, validation_alias=_env("WORKER_HEARTBEAT", "worker_heartbeat_s")
    )
    worker_dead_after_s: float = Field(
        default=10.0, gt=0, validation_alias=_env("WORKER_DEAD_AFTER", "worker_dead_after_s")
    )

    #: On SIGTERM a worker lets running tasks finish for this long, then hands the rest back
    #: to the queue (acks late) and exits, well inside an orchestrator's grace period.
    worker_soft_shutdown_s: float = Field(
        default=10.0,
        ge=0,
        validation_alias=_env("WORKER_SOFT_SHUTDOWN_TIMEOUT", "worker_soft_shutdown_s"),
    )

    # --- Recordings and analysis --------------------------------------------------------------
    #: Directories recordings may be read from. Empty means "any local path" (development
    #: only): a worker started without roots logs a WARNING at start-up, and the web
    #: integration (:mod:`vocalborn_tasks.fastapi`) refuses to start. Set it in production so
    #: a request cannot name /etc/shadow.
    recording_roots: PathList = Field(
        default_factory=list, validation_alias=_env("RECORDING_ROOTS", "recording_roots")
    )
    #: URI schemes accepted besides plain paths; a resolver must handle anything but ``file``.
    recording_schemes: StrList = Field(
        default_factory=lambda: ["file"],
        validation_alias=_env("RECORDING_SCHEMES", "recording_schemes"),
    )
    #: ``package.module:attr`` of a RecordingResolver (maps record ids and URIs to local files).
    recording_resolver: str | None = Field(
        default=None, validation_alias=_env("RECORDING_RESOLVER", "recording_resolver")
    )
    #: ``package.module:attr`` of an Analyzer; None means the built-in signal-processing one.
    analyzer: str | None = Field(default=None, validation_alias=_env("ANALYZER", "analyzer"))
    #: ``package.module:attr`` of a ResultSink that stores each finished analysis once.
    result_sink: str | None = Field(
        default=None, validation_alias=_env("RESULT_SINK", "result_sink")
    )
    #: Host modules whose task definitions a worker registers (``worker --include``).
    task_modules: StrList = Field(
        default_factory=list, validation_alias=_env("TASK_MODULES", "task_modules")
    )
    analysis_max_duration_s: float = Field(
        default=60.0,
        gt=0,
        validation_alias=_env("ANALYSIS_MAX_DURATION", "analysis_max_duration_s"),
    )
    # Results of analyses are health data: workers keep them out of their INFO lines unless
    # the host opts in (see _result_logging.py).
    log_task_results: bool = Field(
        default=False, validation_alias=_env("LOG_TASK_RESULTS", "log_task_results")
    )
    # A progress write costs a round trip; a task's first quarter second is already covered
    # by STARTED, and a watcher gains nothing from more than a few updates per second.
    progress_min_interval_s: float = Field(
        default=0.25,
        ge=0,
        validation_alias=_env("PROGRESS_MIN_INTERVAL", "progress_min_interval_s"),
    )

    # --- Maintenance ---------------------------------------------------------------------------
    temp_dir: Path | None = Field(
        default=None, validation_alias=_env("VOCALBORN_TEMP_DIR", "temp_dir")
    )
    temp_max_age_s: float = Field(
        default=86400.0, gt=0, validation_alias=_env("TEMP_MAX_AGE", "temp_max_age_s")
    )
    #: Where the web integration stores uploads (inside RECORDING_ROOTS); the maintenance task
    #: deletes files there older than ``upload_retention_s``.
    upload_dir: Path | None = Field(default=None, validation_alias=_env("UPLOAD_DIR", "upload_dir"))
    upload_retention_s: float = Field(
        default=86400.0, gt=0, validation_alias=_env("UPLOAD_RETENTION", "upload_retention_s")
    )
    #: Where the web integration finds therapists' reference recordings by id
    #: (``<reference_id>.<audio extension>``), inside RECORDING_ROOTS. Patients never upload
    #: the reference: a patient who sent their own attempt as it would score 100.
    reference_dir: Path | None = Field(
        default=None, validation_alias=_env("REFERENCE_DIR", "reference_dir")
    )
    maintenance_interval_s: float = Field(
        default=3600.0,
        gt=0,
        validation_alias=_env("MAINTENANCE_INTERVAL", "maintenance_interval_s"),
    )
    health_interval_s: float = Field(
        default=300.0, gt=0, validation_alias=_env("HEALTH_INTERVAL", "health_interval_s")
    )

    @field_validator("celery_log_level", mode="before")
    @classmethod
    def _log_level_name(cls, value: object) -> object:
        # Celery exports CELERY_LOG_LEVEL as a number ("20") inside its worker processes, so
        # TaskSettings() built there (by a host's sink or resolver) must accept that form too.
        import logging

        if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
            return logging.getLevelName(int(value))
        return value.upper() if isinstance(value, str) else value

    # --- Operations: statistics, health, alerts, beat, Flower ----------------------------------
    #: Window over which failure/retry rates and p50/p95 durations are computed.
    stats_window_s: float = Field(
        default=3600.0, gt=0, validation_alias=_env("STATS_WINDOW", "stats_window_s")
    )
    #: Recent runs kept per task type (older ones are dropped as new ones finish).
    stats_keep: int = Field(default=1000, ge=10, validation_alias=_env("STATS_KEEP", "stats_keep"))
    #: Queues that must have a live worker; a queue without one makes health UNHEALTHY.
    health_required_queues: StrList = Field(
        default_factory=lambda: list(QUEUES),
        validation_alias=_env("HEALTH_REQUIRED_QUEUES", "health_required_queues"),
    )
    #: A host application's own queues (its task definitions' ``queue=``): ``vocalborn-tasks
    #: worker --queues`` warns about any queue that is neither one of :data:`QUEUES` nor here.
    host_queues: StrList = Field(
        default_factory=list, validation_alias=_env("HOST_QUEUES", "host_queues")
    )
    #: A queue whose oldest message and whose consumers' processed counts have not moved for
    #: this long, while a consumer had a free slot, is "not draining" (UNHEALTHY).
    health_stall_after_s: float = Field(
        default=120.0, gt=0, validation_alias=_env("HEALTH_STALL_AFTER", "health_stall_after_s")
    )
    #: A waiting message older than this makes health DEGRADED.
    health_max_message_age_s: float = Field(
        default=900.0,
        gt=0,
        validation_alias=_env("HEALTH_MAX_MESSAGE_AGE", "health_max_message_age_s"),
    )
    #: Redis used memory above this share of ``maxmemory`` makes health DEGRADED.
    health_max_memory_ratio: float = Field(
        default=0.9,
        gt=0,
        le=1,
        validation_alias=_env("HEALTH_MAX_MEMORY_RATIO", "health_max_memory_ratio"),
    )

    #: Alert rules (None disables a rule). See :mod:`vocalborn_tasks.alerts`.
    alert_queue_backlog: int | None = Field(
        default=500, ge=1, validation_alias=_env("ALERT_QUEUE_BACKLOG", "alert_queue_backlog")
    )
    alert_oldest_message_age_s: float | None = Field(
        default=600.0,
        gt=0,
        validation_alias=_env("ALERT_OLDEST_MESSAGE_AGE", "alert_oldest_message_age_s"),
    )
    alert_no_workers: bool = Field(
        default=True, validation_alias=_env("ALERT_NO_WORKERS", "alert_no_workers")
    )
    alert_failure_rate: float | None = Field(
        default=0.25, gt=0, le=1, validation_alias=_env("ALERT_FAILURE_RATE", "alert_failure_rate")
    )
    #: The failure-rate rule needs at least this many runs in ``alert_failure_window_s``.
    alert_failure_min_runs: int = Field(
        default=10, ge=1, validation_alias=_env("ALERT_FAILURE_MIN_RUNS", "alert_failure_min_runs")
    )
    alert_failure_window_s: float = Field(
        default=900.0, gt=0, validation_alias=_env("ALERT_FAILURE_WINDOW", "alert_failure_window_s")
    )
    alert_memory_ratio: float | None = Field(
        default=0.8, gt=0, le=1, validation_alias=_env("ALERT_MEMORY_RATIO", "alert_memory_ratio")
    )
    #: After an alert (or its recovery notice) the same alert stays quiet this long: a flapping
    #: condition does not page every minute.
    alert_cooldown_s: float = Field(
        default=900.0, ge=0, validation_alias=_env("ALERT_COOLDOWN", "alert_cooldown_s")
    )
    #: JSON POST target for alerts (e.g. a chat or paging webhook).
    alert_webhook_url: SecretStr | None = Field(
        default=None, validation_alias=_env("ALERT_WEBHOOK_URL", "alert_webhook_url")
    )
    alert_webhook_timeout_s: float = Field(
        default=5.0, gt=0, validation_alias=_env("ALERT_WEBHOOK_TIMEOUT", "alert_webhook_timeout_s")
    )
    #: ``package.module:attr`` of further AlertSinks or callables ``fn(alert)``.
    alert_sinks: StrList = Field(
        default_factory=list, validation_alias=_env("ALERT_SINKS", "alert_sinks")
    )

    #: Replaces or adds periodic jobs by name; ``null`` removes a default job. Defaults:
    #: ``vocalborn-maintenance-cleanup`` and ``vocalborn-health-check``.
    beat_schedule: dict[str, BeatEntry | None] = Field(
        default_factory=dict, validation_alias=_env("BEAT_SCHEDULE", "beat_schedule")
    )
    #: A beat process holds a Redis lock this long (renewed while alive); a second beat waits.
    beat_lock_ttl_s: float = Field(
        default=30.0, gt=0, validation_alias=_env("BEAT_LOCK_TTL", "beat_lock_ttl_s")
    )

    #: ``user:password`` for Flower (required: Flower never runs without authentication).
    flower_basic_auth: SecretStr | None = Field(
        default=None, validation_alias=_env("FLOWER_BASIC_AUTH", "flower_basic_auth")
    )
    flower_address: str = Field(
        default="127.0.0.1", validation_alias=_env("FLOWER_ADDRESS", "flower_address")
    )
    flower_port: int = Field(
        default=5555, ge=1, le=65535, validation_alias=_env("FLOWER_PORT", "flower_port")
    )

    @field_validator(
        "recording_roots",
        "recording_schemes",
        "task_modules",
        "health_required_queues",
        "host_queues",
        "alert_sinks",
        mode="before",
    )
    @classmethod
    def _split_lists(cls, value: object) -> object:
        return split_list(value)

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _split_sentinels(cls, value: object) -> object:
        return split_list(value)

    @field_validator("redis_sentinels")
    @classmethod
    def _check_sentinels(cls, value: list[str]) -> list[str]:
        for item in value:
            host, sep, port = item.rpartition(":")
            if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"each sentinel must be host:port, not {item!r}")
        return value

    @field_validator("recording_schemes")
    @classmethod
    def _lower_schemes(cls, value: list[str]) -> list[str]:
        return [s.lower().rstrip(":/") for s in value]

    @field_validator("redis_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        scheme = urlsplit(value).scheme
        if scheme not in ("redis", "rediss", "valkey", "valkeys"):
            raise ValueError(f"must start with redis:// or rediss://, not {scheme!r}")
        return value

    @model_validator(mode="after")
    def _check_limits(self) -> TaskSettings:
        if self.task_soft_time_limit_s >= self.task_time_limit_s:
            raise ValueError(
                "task_soft_time_limit_s must be below task_time_limit_s "
                f"({self.task_soft_time_limit_s} >= {self.task_time_limit_s})"
            )
        if self.visibility_timeout_s <= self.task_time_limit_s:
            raise ValueError(
                "visibility_timeout_s must exceed task_time_limit_s, or Redis redelivers a task "
                f"that is still running ({self.visibility_timeout_s} <= {self.task_time_limit_s})"
            )
        if self.worker_dead_after_s < 2 * self.worker_heartbeat_s:
            raise ValueError("worker_dead_after_s must be at least twice worker_heartbeat_s")
        self._check_sentinel_settings()
        self._apply_url_database()
        if self.redis_db_broker == self.redis_db_backend:
            raise ValueError("redis_db_broker and redis_db_backend must differ")
        return self

    def _check_sentinel_settings(self) -> None:
        if not self.redis_sentinels:
            if self.redis_sentinel_master is not None:
                raise ValueError("REDIS_SENTINEL_MASTER is set but REDIS_SENTINELS is not")
            return
        if self.redis_url is not None or "redis_host" in self.model_fields_set:
            raise ValueError(
                "REDIS_SENTINELS and REDIS_URL/REDIS_HOST are both set: the sentinels name the "
                "master, set only one of them"
            )
        if not self.redis_sentinel_master:
            raise ValueError("REDIS_SENTINELS needs REDIS_SENTINEL_MASTER (the monitored name)")

    def _apply_url_database(self) -> None:
        """Honour a database number in REDIS_URL: broker = that database, results = the next.

        ``REDIS_DB_BROKER``/``REDIS_DB_BACKEND`` given as well must agree with it (broker) or
        override it (results); anything else is refused rather than silently ignored.
        """
        if self.redis_url is None:
            return
        parts = urlsplit(self.redis_url)
        if "db" in parse_qs(parts.query):
            raise ValueError("REDIS_URL: put the database in the path (redis://host:6379/0)")
        path = parts.path.strip("/")
        if not path:
            return
        if not path.isdigit() or not 0 <= int(path) <= 15:
            raise ValueError(f"REDIS_URL: the path must be a database number 0-15, not /{path}")
        db = int(path)
        explicit = self.model_fields_set
        if "redis_db_broker" in explicit and self.redis_db_broker != db:
            raise ValueError(
                f"REDIS_URL names database {db} but REDIS_DB_BROKER is {self.redis_db_broker}: "
                "set only one of them"
            )
        self.__dict__["redis_db_broker"] = db
        if "redis_db_backend" not in explicit:
            if db == 15:
                raise ValueError(
                    "REDIS_URL names database 15, the last one: results need another one, "
                    "set REDIS_DB_BACKEND"
                )
            self.__dict__["redis_db_backend"] = db + 1

    def __repr_args__(self) -> Iterator[tuple[str | None, object]]:
        # repr() and str() mask a password inside REDIS_URL (SecretStr fields mask themselves).
        for name, value in super().__repr_args__():
            if name == "redis_url" and isinstance(value, str):
                value = redact_url(value)
            yield name, value

    # --- Derived values (properties, never stored copies) -----------------------------------
    @property
    def redis_configured(self) -> bool:
        """True when the host named a server (URL, host or sentinels); false: 'use embedded'."""
        return (
            self.redis_url is not None
            or "redis_host" in self.model_fields_set
            or bool(self.redis_sentinels)
        )

    @property
    def uses_sentinel(self) -> bool:
        """True when the sentinels name the master (``REDIS_SENTINELS``)."""
        return bool(self.redis_sentinels)

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """``(host, port)`` of each sentinel."""
        return [(h, int(p)) for h, _, p in (s.rpartition(":") for s in self.redis_sentinels)]

    @property
    def replica_acks(self) -> int:
        """Replicas that must confirm a write callers act on (see ``redis_replica_acks``)."""
        if self.redis_replica_acks is not None:
            return self.redis_replica_acks
        return 1 if self.uses_sentinel else 0

    @property
    def uses_tls(self) -> bool:
        """True for ``rediss://`` URLs or ``REDIS_TLS=1``."""
        if self.redis_url is not None:
            return urlsplit(self.redis_url).scheme in ("rediss", "valkeys")
        return self.redis_tls

    def _server_url(self, db: int) -> str:
        if self.uses_sentinel:
            # kombu's Sentinel transport form; the master comes from the transport options.
            # The credentials are the master's (the sentinels' own go in sentinel_kwargs).
            auth = ""
            if self.redis_password is not None:
                user = quote(self.redis_username or "", safe="")
                auth = f"{user}:{quote(self.redis_password.get_secret_value(), safe='')}@"
            elif self.redis_username:
                auth = f"{quote(self.redis_username, safe='')}@"
            return ";".join(f"sentinel://{auth}{s}/{db}" for s in self.redis_sentinels)
        if self.redis_url is not None:
            parts = urlsplit(self.redis_url)
            scheme = {"valkey": "redis", "valkeys": "rediss"}.get(parts.scheme, parts.scheme)
            netloc = parts.netloc
            if self.redis_password is not None and parts.password is None:
                user = quote(parts.username or self.redis_username or "", safe="")
                host = netloc.rsplit("@", 1)[-1]
                netloc = f"{user}:{quote(self.redis_password.get_secret_value(), safe='')}@{host}"
            return urlunsplit((scheme, netloc, f"/{db}", parts.query, ""))
        scheme = "rediss" if self.redis_tls else "redis"
        auth = ""
        if self.redis_password is not None:
            user = quote(self.redis_username or "", safe="")
            auth = f"{user}:{quote(self.redis_password.get_secret_value(), safe='')}@"
        elif self.redis_username:
            auth = f"{quote(self.redis_username, safe='')}@"
        return f"{scheme}://{auth}{self.redis_host}:{self.redis_port}/{db}"

    @property
    def broker_url(self) -> str:
        """URL of the broker database (contains the password: never log it; see redacted_*)."""
        return self._server_url(self.redis_db_broker)

    @property
    def backend_url(self) -> str:
        """URL of the result-backend database (contains the password: never log it)."""
        return self._server_url(self.redis_db_backend)

    @property
    def redacted_broker_url(self) -> str:
        """The broker URL with the password masked, for messages."""
        return ";".join(redact_url(u) for u in self.broker_url.split(";"))

    @property
    def server_address(self) -> str:
        """``host:port`` of the server (or the sentinels' master name), for error messages."""
        if self.uses_sentinel:
            return (
                f"master {self.redis_sentinel_master!r} of sentinels "
                f"{','.join(self.redis_sentinels)}"
            )
        parts = urlsplit(self.broker_url)
        return f"{parts.hostname}:{parts.port or 6379}"

    def ssl_options(self) -> dict[str, object] | None:
        """TLS options in the shape Celery's ``broker_use_ssl`` expects, or None without TLS."""
        if not self.uses_tls:
            return None
        import ssl

        reqs = {
            "required": ssl.CERT_REQUIRED,
            "optional": ssl.CERT_OPTIONAL,
            "none": ssl.CERT_NONE,
        }[self.redis_ssl_cert_reqs]
        options: dict[str, object] = {"ssl_cert_reqs": reqs}
        if self.redis_ssl_ca_certs is not None:
            options["ssl_ca_certs"] = str(self.redis_ssl_ca_certs)
        if self.redis_ssl_certfile is not None:
            options["ssl_certfile"] = str(self.redis_ssl_certfile)
        if self.redis_ssl_keyfile is not None:
            options["ssl_keyfile"] = str(self.redis_ssl_keyfile)
        return options

    def redis_client_kwargs(self) -> dict[str, object]:
        """Keyword arguments for ``redis.Redis.from_url`` and its asyncio twin (TLS, timeouts)."""
        kwargs: dict[str, object] = {
            "socket_connect_timeout": self.redis_connect_timeout_s,
            "health_check_interval": 30,
        }
        ssl_opts = self.ssl_options()
        if ssl_opts is not None:
            kwargs["ssl_cert_reqs"] = self.redis_ssl_cert_reqs
            for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
                if key in ssl_opts:
                    kwargs[key] = ssl_opts[key]
        return kwargs

    @property
    def result_expires(self) -> timedelta:
        """``result_expires_s`` as a timedelta."""
        return timedelta(seconds=self.result_expires_s)

    def key(self, *parts: str) -> str:
        """A namespaced Redis key for the library's own bookkeeping."""
        return ":".join((self.key_prefix, *parts))


def _env_name(loc: tuple[int | str, ...], settings_cls: type[BaseSettings]) -> str:
    """The environment variable an error's location names (``HOST_QUEUES``), else the field."""
    if not loc:
        return ""
    name = str(loc[0])
    field = settings_cls.model_fields.get(name)
    alias = field.validation_alias if field is not None else None
    if isinstance(alias, AliasChoices) and alias.choices:
        name = str(alias.choices[0])
    return ".".join([name, *(str(p) for p in loc[1:])])


def _error_list(exc: ValidationError, settings_cls: type[BaseSettings]) -> list[dict[str, object]]:
    """Each problem as ``{"loc": ..., "msg": ...}``, never the rejected value."""
    return [
        {"loc": _env_name(tuple(e["loc"]), settings_cls), "msg": str(e["msg"])}
        for e in exc.errors(include_input=False, include_url=False)
    ]


def _one_line(exc: ValidationError) -> str:
    """``invalid configuration: NAME: problem (and N more)``."""
    errors = _error_list(exc, TaskSettings)
    first = errors[0]
    msg = str(first["msg"]).removeprefix("Value error, ")
    text = f"{first['loc']}: {msg}" if first["loc"] else msg
    more = len(errors) - 1
    return "invalid configuration: " + text + (f" (and {more} more)" if more else "")
