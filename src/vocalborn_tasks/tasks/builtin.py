"""The built-in tasks: audio analysis, maintenance, health, and the seed's test task.

Thin bodies in the spirit of web views: validate, delegate to pure functions, return a model.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigurationError, InvalidRequestError
from ..models import AnalysisRequest, AnalysisResult
from ..record import RecordKeys
from ..recordings import check_recording_location, local_path
from .definition import TaskContext, task_definition

if TYPE_CHECKING:
    from ..worker.runtime import WorkerRuntime

__all__ = [
    "BUILTIN_DEFINITIONS",
    "CleanupReport",
    "EchoResult",
    "HealthPing",
    "analyze_audio",
    "cleanup",
    "echo",
    "health_check",
]

logger = logging.getLogger(__name__)


def _runtime(ctx: TaskContext) -> WorkerRuntime:
    if ctx.runtime is None:
        raise ConfigurationError("this task needs a worker runtime; run it through a worker")
    return ctx.runtime


def _open_recording(location: str, runtime: WorkerRuntime, what: str) -> str | bytes | Path:
    """The worker re-checks every location: it does not trust what came through the queue."""
    checked = check_recording_location(location, runtime.settings, what=what)
    if local_path(checked) is not None:
        return checked
    return runtime.resolver.fetch(checked)


@task_definition(name="vocalborn.analyze_audio", queue="ai_analysis")
def analyze_audio(ctx: TaskContext, request: AnalysisRequest) -> AnalysisResult:
    """Compare a practice recording with its reference and hand the result to the sink."""
    runtime = _runtime(ctx)
    if request.recording is None or request.reference is None:
        raise InvalidRequestError("the request reached the worker without recording locations")
    ctx.report_progress("fetching", 1.0)
    recording = _open_recording(request.recording, runtime, "recording")
    reference = _open_recording(request.reference, runtime, "reference")
    from ..analysis import AnalysisOptions, BuiltinAnalyzer

    options = AnalysisOptions(max_duration_s=runtime.settings.analysis_max_duration_s)
    analyzer = runtime.analyzer
    analyze: Callable[..., AnalysisResult] = analyzer.analyze
    if isinstance(analyzer, BuiltinAnalyzer):
        # The text labels the built-in engine's units; a host's analyzer keeps the protocol's
        # signature (it may read the text from the request itself).
        analyze = functools.partial(analyzer.analyze, reference_text=request.reference_text)
    result = analyze(
        recording,
        reference,
        language=request.language,
        on_progress=ctx.report_progress,
        options=options,
    )
    result = result.model_copy(update={"practice_record_id": request.practice_record_id})
    sink = runtime.sink
    if sink is not None:
        runtime.deliver_once(ctx.task_id, lambda: sink.store(ctx.task_id, result))
    return result


class CleanupReport(BaseModel):
    """What a maintenance run removed."""

    model_config = ConfigDict(frozen=True)

    files_removed: int
    bytes_freed: int
    revocations_trimmed: int


@task_definition(name="vocalborn.maintenance.cleanup", queue="maintenance")
def cleanup(ctx: TaskContext) -> CleanupReport:
    """Delete expired temporary files and uploads; forget revocations older than any result."""
    runtime = _runtime(ctx)
    settings = runtime.settings
    files = freed = 0
    for directory, max_age in (
        (settings.temp_dir, settings.temp_max_age_s),
        (settings.upload_dir, settings.upload_retention_s),
    ):
        if directory is None or not directory.is_dir():
            continue
        cutoff = time.time() - max_age
        for path in directory.rglob("*"):
            try:
                stat = path.lstat()
                if path.is_file() and not path.is_symlink() and stat.st_mtime < cutoff:
                    path.unlink()
                    files += 1
                    freed += stat.st_size
            except OSError as exc:  # a file vanishing under us is not an error worth failing on
                logger.debug("cleanup: skipping %s: %s", path, exc)
    horizon = time.time() - settings.result_expires_s - settings.visibility_timeout_s
    keys = RecordKeys.of(settings)
    pipe = runtime.redis.pipeline(transaction=False)
    pipe.zremrangebyscore(keys.revoked, "-inf", horizon)
    pipe.zremrangebyscore(keys.terminate, "-inf", horizon)
    trimmed = int(pipe.execute()[0])
    return CleanupReport(files_removed=files, bytes_freed=freed, revocations_trimmed=trimmed)


class HealthPing(BaseModel):
    """Proof that a message went broker -> worker -> backend and back."""

    model_config = ConfigDict(frozen=True)

    worker: str
    pid: int
    backend_latency_ms: float
    checked_at: datetime
    #: Keys of the alert notices this check sent (see :mod:`vocalborn_tasks.alerts`).
    alerts: list[str] = Field(default_factory=list)


@task_definition(name="vocalborn.health.check", queue="health")
def health_check(ctx: TaskContext) -> HealthPing:
    """Run on the health queue: a worker consumed it, and it writes and reads the backend.

    Then evaluate the alert rules against a full health report and notify the alert sinks of
    what changed (one notice per outage, one on recovery).
    """
    runtime = _runtime(ctx)
    key = runtime.settings.key("health", ctx.task_id)
    started = time.perf_counter()
    pipe = runtime.redis.pipeline(transaction=False)
    pipe.set(key, "1", ex=60)
    pipe.get(key)
    pipe.delete(key)
    pipe.execute()
    latency = (time.perf_counter() - started) * 1000
    from ..alerts import evaluate_alerts_sync

    notices = evaluate_alerts_sync(runtime.settings)
    return HealthPing(
        worker=socket.gethostname(),
        pid=os.getpid(),
        backend_latency_ms=round(latency, 3),
        checked_at=datetime.now(UTC),
        alerts=[f"{n.status.value}:{n.key}" for n in notices],
    )


class EchoResult(BaseModel):
    """What the seed's ``test --message`` task returns."""

    model_config = ConfigDict(frozen=True)

    message: str
    worker: str
    pid: int


@task_definition(name="vocalborn.test", queue="health")
def echo(
    ctx: TaskContext, message: str, delay_s: Annotated[float, Field(ge=0.0, le=600.0)] = 0.0
) -> EchoResult:
    """Echo a message back: proves the whole path works end to end.

    ``delay_s`` keeps the task running that long (reporting progress every 0.1 s): a stand-in
    for a long analysis when checking cancellation, shutdown and redelivery.
    """
    if delay_s > 0:
        deadline = time.monotonic() + delay_s
        while (left := deadline - time.monotonic()) > 0:
            ctx.report_progress("waiting", round(100.0 * (1 - left / delay_s), 1))
            time.sleep(min(0.1, left))
    # No "100 %" report: the result itself follows at once, and a report costs a round trip.
    return EchoResult(message=message, worker=socket.gethostname(), pid=os.getpid())


BUILTIN_DEFINITIONS = (analyze_audio, cleanup, health_check, echo)
