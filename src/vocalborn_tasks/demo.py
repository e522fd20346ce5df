"""The ``demo`` and ``submit`` commands' engine: follow analyses with progress bars, show results.

:func:`run_demo` is the zero-setup tour: with no Redis configured it starts the embedded Valkey
server, starts one worker process, analyses the bundled sample recordings and prints a table,
then stops everything it started (also on Ctrl+C). :func:`follow_analyses` and
:func:`render_results` are shared with ``vocalborn-tasks submit``.

Nothing here prints: everything goes through the rich :class:`~rich.console.Console` the caller
passes, diagnostics through :mod:`logging`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import redis
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ._connections import sync_redis
from .config import TaskSettings
from .errors import (
    BrokerUnavailableError,
    ConfigurationError,
    TaskTimeoutError,
)
from .manager import TaskManager
from .models import AnalysisRequest, AnalysisResult, TaskState
from .record import RecordKeys

__all__ = ["demo_requests", "follow_analyses", "render_results", "run_demo"]

logger = logging.getLogger(__name__)

#: How long the demo waits for its worker to send its first heartbeat.
WORKER_READY_TIMEOUT_S = 60.0
#: How long the demo waits for all its analyses.
DEMO_ANALYSIS_TIMEOUT_S = 120.0
#: Grace period after SIGTERM before the demo worker is killed.
WORKER_STOP_TIMEOUT_S = 15.0

#: (header, short header for narrow terminals, AnalysisResult field) of each score column.
_SCORE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("overall", "ovr", "overall_score"),
    ("pronunciation", "pron", "pronunciation_accuracy"),
    ("fluency", "flu", "fluency_score"),
    ("rhythm", "rhy", "rhythm_score"),
    ("tone", "tone", "tone_score"),
    ("clarity", "clar", "clarity_score"),
    ("completeness", "comp", "completeness_score"),
)


# --- following and rendering -----------------------------------------------------------------


async def follow_analyses(
    settings: TaskSettings,
    requests: list[AnalysisRequest],
    *,
    timeout: float,
    console: Console,
    force: bool = False,
    on_submitted: Callable[[list[str]], None] | None = None,
) -> list[AnalysisResult]:
    """Submit ``requests`` as one batch, show a progress bar per task, return their results.

    Args:
        settings: where to connect.
        requests: the analyses to run.
        timeout: seconds to wait for all of them, in total.
        console: where the progress bars are drawn.
        force: queue new runs even for practice records already in flight.
        on_submitted: called with the task ids (one per request) as soon as they are queued.

    Returns:
        One result per request, in the order of ``requests``.

    Raises:
        InvalidRequestError: a request was refused; nothing was queued.
        BrokerUnavailableError: Redis could not be reached.
        TaskFailedError: an analysis failed (the first to fail; the others are not awaited).
        TaskTimeoutError: not everything finished within ``timeout``.
        TaskRevokedError, TaskNotFoundError: an analysis was cancelled or lost.
    """
    if not requests:
        return []
    deadline = time.monotonic() + timeout
    async with TaskManager(settings) as manager:
        task_ids = await manager.submit_batch(requests, force=force)
        logger.info("submitted %d analyses: %s", len(task_ids), ", ".join(task_ids))
        if on_submitted is not None:
            on_submitted(list(task_ids))
        unique_ids = list(dict.fromkeys(task_ids))  # the same record in flight twice: one task
        labels = {tid: req.practice_record_id for tid, req in zip(task_ids, requests, strict=True)}
        progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[step]}"),
            TimeElapsedColumn(),
            console=console,
        )
        results: dict[str, AnalysisResult] = {}

        async def follow(task_id: str, bar: TaskID, watching: asyncio.Event) -> None:
            remaining = deadline - time.monotonic()
            try:
                async with asyncio.timeout(max(remaining, 0.0)):
                    async for status in manager.watch(task_id):
                        watching.set()
                        step = status.step or status.state.value.lower()
                        if status.state is TaskState.SUCCESS:
                            progress.update(bar, completed=100, step="done")
                        elif status.is_final:
                            progress.update(bar, step=f"[red]{status.state.value}")
                        else:
                            progress.update(bar, completed=status.progress or 0.0, step=step)
            except TimeoutError:
                progress.update(bar, step="[red]timed out")
                raise TaskTimeoutError(
                    f"task {task_id} did not finish within {timeout:g} s", task_id=task_id
                ) from None
            finally:
                watching.set()
            # Final now: this returns at once with the typed result or raises the typed error.
            results[task_id] = await manager.wait_for_result(task_id, timeout=timeout)

        with progress:
            followers: list[asyncio.Task[None]] = []
            try:
                for tid in unique_ids:
                    bar = progress.add_task(labels[tid], total=100, step="queued")
                    watching = asyncio.Event()
                    follower = asyncio.create_task(follow(tid, bar, watching))
                    followers.append(follower)
                    # Start the watchers one after the other: the first opens the manager's
                    # shared pub/sub connection, and PubSubHub does not yet guard against
                    # several coroutines opening it at once.
                    await watching.wait()
                # Raise the first error as soon as it happens, not in submission order.
                for finished in asyncio.as_completed(followers):
                    await finished
            finally:
                for follower in followers:
                    follower.cancel()
                await asyncio.gather(*followers, return_exceptions=True)
    return [results[tid] for tid in task_ids]


def _score(value: float) -> str:
    colour = "green" if value >= 75 else "yellow" if value >= 50 else "red"
    return f"[{colour}]{value:.0f}[/]"


def _results_table(
    requests: list[AnalysisRequest], results: list[AnalysisResult], *, short: bool
) -> Table:
    headers = [short_name if short else name for name, short_name, _ in _SCORE_COLUMNS]
    table = Table(title="Analysis results", box=box.SIMPLE_HEAD, padding=(0, 0), show_edge=False)
    table.add_column("record", overflow="fold")
    table.add_column(headers[0], justify="right")
    table.add_column("lvl" if short else "level", justify="right")
    for header in headers[1:]:
        table.add_column(header, justify="right")
    table.add_column("ok" if short else "reliable")
    for request, result in zip(requests, results, strict=True):
        record = result.practice_record_id or request.practice_record_id
        scores = [_score(float(getattr(result, field))) for _, _, field in _SCORE_COLUMNS]
        reliable = "[green]yes[/]" if result.reliable else "[red]no[/]"
        table.add_row(record, scores[0], str(result.level), *scores[1:], reliable)
    return table


def _legend(*, short: bool) -> str:
    """What the columns mean; with the short names spelled out when they are used."""
    lines = [
        "scores 0-100, higher is better (green from 75, red below 50); "
        "level 1 (best) to 5 (needs the most practice)",
        "tone: how closely the pitch contour follows the reference (the tones of zh-TW, "
        "the intonation of en); reliable: the recording was clean and complete enough to "
        "trust the scores",
    ]
    if short:
        names = [f"{s}={n}" for n, s, _ in _SCORE_COLUMNS if s != n]
        lines.append(", ".join(["lvl=level", *names, "ok=reliable"]))
    return "\n".join(lines)


def render_results(
    console: Console, requests: list[AnalysisRequest], results: list[AnalysisResult]
) -> None:
    """Print a table of scores, then each result's improvement areas and suggestions.

    Scores are 0-100 (green from 75, red below 50); level runs from 1 (best) to 5. A console
    too narrow for the full column names gets short ones and a legend.
    """
    table = _results_table(requests, results, short=False)
    unbounded = console.options.update_width(10_000)
    short = Measurement.get(console, unbounded, table).maximum > console.width
    if short:
        table = _results_table(requests, results, short=True)
    table.caption = _legend(short=short)
    table.caption_justify = "left"
    console.print(table)
    for request, result in zip(requests, results, strict=True):
        record = result.practice_record_id or request.practice_record_id
        console.print(f"[bold]{record}[/] (level {result.level})", highlight=False)
        if result.reliability_issues:
            console.print(
                "  [red]unreliable:[/] " + "; ".join(result.reliability_issues), highlight=False
            )
        if result.improvement_areas:
            console.print("  improve: " + ", ".join(result.improvement_areas), highlight=False)
        for suggestion in result.suggestions:
            console.print(f"  - {suggestion}", highlight=False)
        if not (result.improvement_areas or result.suggestions):
            console.print("  nothing to improve", highlight=False)


# --- the demo --------------------------------------------------------------------------------


def demo_requests() -> list[AnalysisRequest]:
    """One request per bundled attempt, each paired with its reference (from the manifest)."""
    from .samples import sample_manifest, sample_path

    requests = []
    for entry in sample_manifest()["entries"]:
        if entry.get("role") != "attempt" or not entry.get("reference_path"):
            continue
        requests.append(
            AnalysisRequest(
                practice_record_id=f"demo-{entry['id']}",
                recording=str(sample_path(entry["path"])),
                reference=str(sample_path(entry["reference_path"])),
                language=entry.get("language"),
            )
        )
    return requests


class _DemoWorker:
    """The one worker process the demo starts, owned by PID, with its log in a temp file."""

    def __init__(self, settings: TaskSettings, *, redis_url: str | None, concurrency: int) -> None:
        self.settings = settings
        self.hostname = f"demo-{os.getpid()}@{socket.gethostname()}"
        fd, name = tempfile.mkstemp(prefix="vocalborn-demo-worker-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)
        env = dict(os.environ)
        if redis_url is not None:
            env["REDIS_URL"] = redis_url
        env["REMAP_SIGTERM"] = "SIGQUIT"  # SIGTERM: a quick, requeueing shutdown
        cmd = [
            sys.executable,
            "-m",
            "vocalborn_tasks",
            "worker",
            "--concurrency",
            str(concurrency),
            "--hostname",
            self.hostname,
        ]
        with self.log_path.open("ab") as log:
            # Its own session: Ctrl+C in the terminal reaches us only, and we stop it in order.
            self.proc = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        logger.info("started demo worker pid %d, log %s", self.proc.pid, self.log_path)

    @property
    def exited(self) -> bool:
        return self.proc.poll() is not None

    def wait_ready(self, timeout: float) -> None:
        """Block until the worker's heartbeat is in Redis.

        Raises:
            ConfigurationError: the worker exited, or sent no heartbeat in time.
        """
        client = sync_redis(self.settings, "backend", max_connections=1)
        key = RecordKeys.of(self.settings).worker(self.hostname)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.exited:
                    raise ConfigurationError(
                        f"the demo worker exited with code {self.proc.returncode}; "
                        f"see its log: {self.log_path}"
                    )
                try:
                    if client.exists(key):
                        return
                except redis.RedisError as exc:
                    raise BrokerUnavailableError(
                        f"cannot reach Redis at {self.settings.server_address}: {exc}"
                    ) from exc
                time.sleep(0.1)
        finally:
            client.close()
        raise ConfigurationError(
            f"the demo worker sent no heartbeat within {timeout:g} s; see its log: {self.log_path}"
        )

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL the worker and anything left in its process group."""
        proc = self.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=WORKER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                logger.warning("demo worker %d ignored SIGTERM; killing it", proc.pid)
                proc.kill()
                proc.wait(timeout=10)
        # Pool children share the worker's process group (its own session, led by its PID).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def remove_log(self) -> None:
        with contextlib.suppress(OSError):
            self.log_path.unlink()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Treat SIGTERM like Ctrl+C while the demo runs, so ``kill`` also stops what it started."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread: signals are not ours to handle
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _embedded_server(console: Console) -> Iterator[str]:
    from .embedded import LocalServer

    server = LocalServer()
    console.print(f"No Redis configured: starting embedded Valkey on 127.0.0.1:{server.port}")
    try:
        server.start()
        yield server.url
    finally:
        server.close()


def run_demo(*, redis_url: str | None, concurrency: int, console: Console) -> int:
    """Analyse the bundled samples end to end; start and stop whatever that needs.

    With no Redis configured (``redis_url`` is None and the environment names none), an
    embedded Valkey server is started on a free loopback port. One worker process is always
    started (and always stopped, also on Ctrl+C).

    Returns:
        The exit code: 0 on success, 130 when interrupted.

    Raises:
        VocalbornTasksError: the library's errors (unreachable Redis, a failed analysis...).
    """
    base = TaskSettings() if redis_url is None else TaskSettings(redis_url=redis_url)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_sigterm_interrupts())
        if base.redis_configured:
            settings = base
            worker_url = redis_url
        else:
            worker_url = stack.enter_context(_embedded_server(console))
            settings = TaskSettings(redis_url=worker_url)
        return _run_with_worker(settings, worker_url, concurrency, console)
    raise AssertionError("unreachable")  # pragma: no cover (ExitStack does not swallow)


def _run_with_worker(
    settings: TaskSettings, worker_url: str | None, concurrency: int, console: Console
) -> int:
    requests = demo_requests()
    console.print(f"Starting a worker ({concurrency} processes) on {settings.server_address}...")
    worker = _DemoWorker(settings, redis_url=worker_url, concurrency=concurrency)
    ok = False
    try:
        worker.wait_ready(WORKER_READY_TIMEOUT_S)
        console.print(f"Worker {worker.hostname} is ready; analysing {len(requests)} recordings")
        results = asyncio.run(
            follow_analyses(
                settings, requests, timeout=DEMO_ANALYSIS_TIMEOUT_S, console=console, force=True
            )
        )
        render_results(console, requests, results)
        ok = True
        return 0
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]; stopping the demo worker")
        ok = True  # nothing went wrong: its log is of no interest
        return 130
    except Exception as exc:
        if str(worker.log_path) not in str(exc):
            state = f"exited with code {worker.proc.returncode}" if worker.exited else "was running"
            console.print(f"the demo worker {state}; its log is {worker.log_path}", highlight=False)
        raise
    finally:
        worker.stop()
        if ok:
            worker.remove_log()
