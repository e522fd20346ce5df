"""Alerting: rules over the health report, sinks, and one notice per outage.

The periodic health task (``vocalborn.health.check``, sent by beat) calls
:func:`evaluate_alerts_sync` (no event loop in a worker's pool process); hosts may call
:func:`evaluate_alerts` with a Monitor. Both take the same report (see
:mod:`vocalborn_tasks.health`) and the same decisions. Each rule of
:class:`~vocalborn_tasks.config.TaskSettings` yields the alerts that hold now, each with a
stable key (``no_workers:ai_analysis``). Their state lives in Redis
(``<prefix>:alerts:state``), so it is shared by every worker and survives restarts:

* an alert that starts holding is sent once (``firing``), not at every evaluation;
* when it stops holding, one ``resolved`` notice follows;
* within ``alert_cooldown_s`` of its last notice, a flapping alert stays quiet: it is neither
  re-sent nor resolved until the cool-down has passed (the next evaluation after that catches
  up with the current truth).

Evaluations are serialised by a short Redis lock, so two health tasks running at once (two
workers) never both send the same notice.

Rules: queue backlog (``alert_queue_backlog``), oldest waiting message
(``alert_oldest_message_age_s``), a queue without live workers (``alert_no_workers``), task
failure rate over a window (``alert_failure_rate``), Redis memory share of ``maxmemory``
(``alert_memory_ratio``), and, always on, the server being unreachable and every topology issue
of the health report (``redis_topology:<kind>``: the server is a replica or refuses writes, fewer
replicas than ``REDIS_REPLICA_ACKS``, no write fencing, sentinels silent, lost, disagreeing or
without quorum; none for a single server with ``REDIS_REPLICA_ACKS`` 0).

A server that refuses writes cannot keep the alert state either: then, as when it is
unreachable, each holding condition is sent as it is, at every evaluation.

Sinks: :class:`LoggingSink` (always), :class:`WebhookSink` (``alert_webhook_url``, JSON POST)
and anything in ``alert_sinks`` (an :class:`AlertSink` or a plain callable ``fn(alert)``).
"""

from __future__ import annotations

import json
import logging
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import anyio
from pydantic import BaseModel, ConfigDict, Field

from ._redis import redis_errors, sync_redis_errors
from .config import TaskSettings
from .errors import ConfigurationError
from .health import HealthReport, TaskTypeStats, queues_without_worker, topology_issues
from .record import AsyncRecord, Record, calls

if TYPE_CHECKING:
    from .monitor import Monitor

__all__ = [
    "Alert",
    "AlertSink",
    "AlertStatus",
    "CallableAlertSink",
    "LoggingSink",
    "WebhookSink",
    "alert_sinks",
    "as_alert_sink",
    "current_alerts",
    "evaluate_alerts",
    "evaluate_alerts_sync",
]

logger = logging.getLogger(__name__)


class AlertStatus(StrEnum):
    """Whether a notice opens or closes an alert."""

    FIRING = "firing"  # the condition started to hold
    RESOLVED = "resolved"  # it stopped holding


class Alert(BaseModel):
    """One notice sent to the sinks."""

    model_config = ConfigDict(frozen=True)

    #: Stable identity, e.g. ``no_workers:ai_analysis``; firing and resolved share it.
    key: str
    #: The rule: ``queue_backlog``, ``oldest_message_age``, ``no_workers``, ``failure_rate``,
    #: ``redis_memory``, ``redis_unreachable`` or ``redis_topology``.
    rule: str
    status: AlertStatus
    message: str
    #: When the condition was first seen holding.
    since: datetime
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    details: dict[str, Any] = Field(default_factory=dict)


@runtime_checkable
class AlertSink(Protocol):
    """Receives alert notices. Raising is logged and does not stop the other sinks."""

    def send(self, alert: Alert) -> None:
        """Deliver one notice."""
        ...


class LoggingSink:
    """Logs notices on ``vocalborn_tasks.alerts`` (WARNING when firing, INFO when resolved)."""

    def send(self, alert: Alert) -> None:
        level = logging.WARNING if alert.status is AlertStatus.FIRING else logging.INFO
        logger.log(level, "alert %s %s: %s", alert.status.value, alert.key, alert.message)


class WebhookSink:
    """POSTs each notice as JSON (``Alert.model_dump(mode="json")``) to a URL.

    Args:
        url: the endpoint (may embed a token: it is never logged).
        timeout: seconds before the POST is abandoned.
    """

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigurationError("ALERT_WEBHOOK_URL must be an http:// or https:// URL")
        self._url = url
        self._timeout = timeout

    def __repr__(self) -> str:
        return "<WebhookSink ***>"

    def send(self, alert: Alert) -> None:
        body = alert.model_dump_json().encode()
        request = urllib.request.Request(
            self._url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "vocalborn-tasks"},
        )
        with urllib.request.urlopen(request, timeout=self._timeout) as response:
            response.read()


class CallableAlertSink:
    """Adapts a plain function ``fn(alert)`` to :class:`AlertSink`."""

    def __init__(self, fn: Callable[[Alert], object]) -> None:
        self._fn = fn

    def send(self, alert: Alert) -> None:
        self._fn(alert)


def as_alert_sink(obj: object) -> AlertSink:
    """Accept an AlertSink or any one-argument callable.

    Raises:
        TypeError: ``obj`` is neither.
    """
    if isinstance(obj, AlertSink):
        return obj
    if callable(obj):
        return CallableAlertSink(obj)
    raise TypeError(f"{type(obj).__name__} is not an AlertSink nor a callable")


def alert_sinks(settings: TaskSettings) -> list[AlertSink]:
    """The sinks the settings configure: logging, the webhook if set, then ``alert_sinks``."""
    sinks: list[AlertSink] = [LoggingSink()]
    if settings.alert_webhook_url is not None:
        sinks.append(
            WebhookSink(
                settings.alert_webhook_url.get_secret_value(),
                timeout=settings.alert_webhook_timeout_s,
            )
        )
    from ._imports import load_object

    for path in settings.alert_sinks:
        obj = load_object(path, "ALERT_SINKS")
        try:
            sinks.append(as_alert_sink(obj))
        except TypeError as exc:
            raise ConfigurationError(f"ALERT_SINKS: {path}: {exc}") from exc
    return sinks


# --- rules --------------------------------------------------------------------------------------


class _Holding(BaseModel):
    """An alert condition that holds now."""

    key: str
    rule: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


def current_alerts(
    settings: TaskSettings, report: HealthReport, task_stats: Sequence[TaskTypeStats] = ()
) -> list[_Holding]:
    """The alert conditions that hold in ``report`` (and the recent task statistics)."""
    s = settings
    out: list[_Holding] = []
    if not report.reachable:
        reason = report.reasons[0] if report.reasons else "unreachable"
        out.append(_Holding(key="redis_unreachable", rule="redis_unreachable", message=reason))
        return out
    for issue in topology_issues(s, report.topology) if report.topology is not None else ():
        out.append(
            _Holding(
                key=f"redis_topology:{issue.kind}",
                rule="redis_topology",
                message=issue.reason,
                details={"kind": issue.kind, "level": issue.level.value},
            )
        )
    unserved = {q.name for q in queues_without_worker(report.queues, s.health_required_queues)}
    for q in report.queues:
        if s.alert_no_workers and q.name in unserved:
            out.append(
                _Holding(
                    key=f"no_workers:{q.name}",
                    rule="no_workers",
                    message=f"queue {q.name} has no live worker ({q.length} waiting)",
                    details={"queue": q.name, "length": q.length},
                )
            )
        if s.alert_queue_backlog is not None and q.length >= s.alert_queue_backlog:
            out.append(
                _Holding(
                    key=f"queue_backlog:{q.name}",
                    rule="queue_backlog",
                    message=f"queue {q.name} has {q.length} waiting tasks "
                    f"(threshold {s.alert_queue_backlog})",
                    details={"queue": q.name, "length": q.length},
                )
            )
        if (
            s.alert_oldest_message_age_s is not None
            and q.oldest_age_s is not None
            and q.oldest_age_s >= s.alert_oldest_message_age_s
        ):
            out.append(
                _Holding(
                    key=f"oldest_message_age:{q.name}",
                    rule="oldest_message_age",
                    message=f"queue {q.name}: oldest waiting task is {q.oldest_age_s:.0f} s old "
                    f"(threshold {s.alert_oldest_message_age_s:g} s)",
                    details={"queue": q.name, "age_s": q.oldest_age_s},
                )
            )
    if s.alert_failure_rate is not None:
        for t in task_stats:
            finished = t.succeeded + t.failed
            if (
                finished >= s.alert_failure_min_runs
                and t.failure_rate is not None
                and t.failure_rate >= s.alert_failure_rate
            ):
                out.append(
                    _Holding(
                        key=f"failure_rate:{t.task}",
                        rule="failure_rate",
                        message=f"{t.task}: {t.failure_rate:.0%} of {finished} runs failed in the "
                        f"last {t.window_s:g} s (threshold {s.alert_failure_rate:.0%})",
                        details={"task": t.task, "failure_rate": t.failure_rate, "runs": finished},
                    )
                )
    if (
        s.alert_memory_ratio is not None
        and report.maxmemory_bytes
        and report.used_memory_bytes is not None
        and report.used_memory_bytes >= s.alert_memory_ratio * report.maxmemory_bytes
    ):
        ratio = report.used_memory_bytes / report.maxmemory_bytes
        out.append(
            _Holding(
                key="redis_memory",
                rule="redis_memory",
                message=f"Redis uses {ratio:.0%} of maxmemory (threshold "
                f"{s.alert_memory_ratio:.0%})",
                details={"used": report.used_memory_bytes, "maxmemory": report.maxmemory_bytes},
            )
        )
    return out


# --- evaluation ---------------------------------------------------------------------------------


async def evaluate_alerts(
    monitor: Monitor, sinks: Iterable[AlertSink] | None = None
) -> list[Alert]:
    """Check every rule once, notify the sinks of what changed, and return those notices.

    Args:
        monitor: an open Monitor (its settings hold the rules).
        sinks: where notices go; :func:`alert_sinks` of the monitor's settings if omitted.

    Returns:
        The notices sent now (empty when nothing changed, or another evaluation is running).
    """
    s = monitor.settings
    targets = list(sinks) if sinks is not None else alert_sinks(s)
    report = await monitor.health()
    stats: Sequence[TaskTypeStats] = ()
    if report.reachable and s.alert_failure_rate is not None:
        stats = await monitor.get_task_type_stats(s.alert_failure_window_s)
    holding = {h.key: h for h in current_alerts(s, report, stats)}
    if _no_alert_state(s, report):
        # Alert state lives in Redis: without it, tell the sinks directly (no de-duplication).
        notices = _unreachable_notices(holding)
        await _deliver_off_loop(targets, notices)
        return notices
    _, backend = monitor._clients()
    state_key, lock_key = s.key("alerts", "state"), s.key("alerts", "lock")
    token = uuid.uuid4().hex
    async with redis_errors(s, "alerts"):
        if not await backend.set(lock_key, token, nx=True, px=_LOCK_MS):
            logger.info("alerts: another evaluation is running; skipping this one")
            return []
        try:
            state = _parse_state(await backend.hgetall(state_key))
            notices, changed, removed = _transitions(s, state, holding, time.time())
            await _deliver_off_loop(targets, notices)
            writes = _state_writes(state_key, changed, removed)
            if writes:
                pipe = backend.pipeline(transaction=False)
                for command in writes:
                    pipe.execute_command(*command)
                await pipe.execute()
        finally:
            await AsyncRecord(backend).run(calls.release(key=lock_key, token=token))
    return notices


def evaluate_alerts_sync(
    settings: TaskSettings, sinks: Iterable[AlertSink] | None = None
) -> list[Alert]:
    """:func:`evaluate_alerts` for synchronous code (the periodic health task in a worker).

    Starts no event loop: it reads through :class:`~vocalborn_tasks.health.SyncHealthReader`
    (the same steps and rules as :meth:`Monitor.health`, so the same report) and keeps the
    alert state with a synchronous client. Safe to call from any thread, even one whose
    event loop is running (it then blocks that loop for the evaluation).

    Args:
        settings: the rules and the server.
        sinks: where notices go; :func:`alert_sinks` of ``settings`` if omitted.
    """
    from .health import SyncHealthReader

    s = settings
    targets = list(sinks) if sinks is not None else alert_sinks(s)
    with SyncHealthReader(s) as reader:
        report = reader.health()
        stats: Sequence[TaskTypeStats] = ()
        if report.reachable and s.alert_failure_rate is not None:
            stats = reader.get_task_type_stats(s.alert_failure_window_s)
        holding = {h.key: h for h in current_alerts(s, report, stats)}
        if _no_alert_state(s, report):
            notices = _unreachable_notices(holding)
            _deliver(targets, notices)
            return notices
        backend = reader.backend
        state_key, lock_key = s.key("alerts", "state"), s.key("alerts", "lock")
        token = uuid.uuid4().hex
        with sync_redis_errors(s, "alerts"):
            if not backend.set(lock_key, token, nx=True, px=_LOCK_MS):
                logger.info("alerts: another evaluation is running; skipping this one")
                return []
            try:
                state = _parse_state(backend.hgetall(state_key))
                notices, changed, removed = _transitions(s, state, holding, time.time())
                _deliver(targets, notices)
                writes = _state_writes(state_key, changed, removed)
                if writes:
                    pipe = backend.pipeline(transaction=False)
                    for command in writes:
                        pipe.execute_command(*command)  # type: ignore[no-untyped-call]
                    pipe.execute()
            finally:
                Record(backend).run(calls.release(key=lock_key, token=token))
    return notices


#: How long an evaluation may hold the alert lock (a crashed one frees it by expiry).
_LOCK_MS = 30_000


def _no_alert_state(settings: TaskSettings, report: HealthReport) -> bool:
    """True when the alert state cannot be kept in Redis: unreachable, or refusing writes."""
    if not report.reachable:
        return True
    if report.topology is None:
        return False
    return any(i.kind in ("role", "writes") for i in topology_issues(settings, report.topology))


def _unreachable_notices(holding: dict[str, _Holding]) -> list[Alert]:
    """Without the server there is no alert state: each condition is told as it is."""
    return [_notice(h, AlertStatus.FIRING, datetime.now(UTC)) for h in holding.values()]


def _parse_state(raw: Mapping[Any, Any]) -> dict[str, dict[str, Any]]:
    """The stored alert state (entries that do not parse are ignored, then overwritten)."""
    state: dict[str, dict[str, Any]] = {}
    for k, v in raw.items():
        try:
            state[_text(k)] = dict(json.loads(_text(v)))
        except ValueError:
            continue
    return state


def _state_writes(
    state_key: str, changed: dict[str, dict[str, Any]], removed: list[str]
) -> list[tuple[Any, ...]]:
    """The commands that store the new alert state (for either client's pipeline)."""
    writes: list[tuple[Any, ...]] = []
    if changed:
        fields = [part for k, v in changed.items() for part in (k, json.dumps(v))]
        writes.append(("HSET", state_key, *fields))
    if removed:
        writes.append(("HDEL", state_key, *removed))
    return writes


def _transitions(
    settings: TaskSettings,
    state: dict[str, dict[str, Any]],
    holding: dict[str, _Holding],
    now: float,
) -> tuple[list[Alert], dict[str, dict[str, Any]], list[str]]:
    """Decide the notices. State per key: since, notified (bool), last (time of last notice)."""
    cooldown = settings.alert_cooldown_s
    notices: list[Alert] = []
    changed: dict[str, dict[str, Any]] = {}
    removed: list[str] = []
    for key, h in holding.items():
        entry = state.get(key)
        if entry is None:
            entry = {"since": now, "notified": False, "last": 0.0, "holding": True}
        entry = {**entry, "holding": True, "rule": h.rule, "message": h.message}
        quiet = now - float(entry.get("last", 0.0)) < cooldown
        if not entry.get("notified") and not quiet:
            notices.append(
                _notice(h, AlertStatus.FIRING, datetime.fromtimestamp(entry["since"], UTC))
            )
            entry.update(notified=True, last=now)
        changed[key] = entry
    for key, entry in state.items():
        if key in holding:
            continue
        quiet = now - float(entry.get("last", 0.0)) < cooldown
        if entry.get("notified"):
            if quiet:
                # Within the cool-down: keep it open; the recovery notice comes after it.
                if entry.get("holding"):
                    changed[key] = {**entry, "holding": False}
                continue
            h = _Holding(
                key=key,
                rule=str(entry.get("rule", key.split(":", 1)[0])),
                message=f"resolved: {entry.get('message', key)}",
            )
            notices.append(
                _notice(h, AlertStatus.RESOLVED, datetime.fromtimestamp(entry["since"], UTC))
            )
            if cooldown > 0:
                # Remember the notice time so a relapse inside the cool-down stays quiet.
                changed[key] = {"since": now, "notified": False, "last": now, "holding": False}
            else:
                removed.append(key)
        elif not quiet:
            removed.append(key)
    return notices, changed, removed


def _notice(h: _Holding, status: AlertStatus, since: datetime) -> Alert:
    return Alert(
        key=h.key, rule=h.rule, status=status, message=h.message, since=since, details=h.details
    )


async def _deliver_off_loop(sinks: Sequence[AlertSink], notices: Sequence[Alert]) -> None:
    """Deliver in a worker thread: sinks are synchronous (the webhook's POST may take up to
    ``alert_webhook_timeout_s``, a host's sink anything), and the event loop running the
    evaluation also serves the host's requests and waiters."""
    if notices:
        await anyio.to_thread.run_sync(_deliver, sinks, notices)


def _deliver(sinks: Sequence[AlertSink], notices: Sequence[Alert]) -> None:
    for notice in notices:
        for sink in sinks:
            try:
                sink.send(notice)
            except Exception as exc:
                logger.error(
                    "alert sink %s failed for %s: %s", type(sink).__name__, notice.key, exc
                )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
