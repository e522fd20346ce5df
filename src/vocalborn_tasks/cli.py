"""The ``vocalborn-tasks`` command (also ``python -m vocalborn_tasks``).

The only module that configures logging or writes to the terminal. Every command reads
:class:`TaskSettings` from the environment (and ``.env``); errors are one clear line with a
non-zero exit code, never a traceback (``--debug`` shows it).

Exit codes: 0 ok, 1 the thing checked is not ok (unhealthy, task failed), 2 usage or
configuration error, 3 Redis unreachable or refused us.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .config import QUEUES, TaskSettings
from .errors import BrokerError, BrokerUnavailableError, ConfigurationError, VocalbornTasksError

__all__ = ["main"]

T = TypeVar("T")

EXIT_NOT_OK = 1
EXIT_CONFIG = 2
EXIT_UNREACHABLE = 3

#: Width of output that is not a terminal (a pipe, a file): wide enough that hostnames and
#: paths are never cut; COLUMNS still wins.
PIPE_WIDTH = 1000


def _console(*, stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    piped = not (hasattr(stream, "isatty") and stream.isatty())
    width = PIPE_WIDTH if piped and not os.environ.get("COLUMNS") else None
    return Console(stderr=stderr, width=width)


console = _console()
err_console = _console(stderr=True)


def _settings(ctx: click.Context) -> TaskSettings:
    obj: dict[str, Any] = ctx.ensure_object(dict)
    if "settings" not in obj:
        overrides = {k: v for k, v in obj.get("overrides", {}).items() if v is not None}
        # An invalid value raises InvalidSettingsError (a ConfigurationError): one line, rc 2.
        obj["settings"] = TaskSettings(**overrides)
    settings: TaskSettings = obj["settings"]
    return settings


def _one_line(exc: ValidationError) -> str:
    """The first problem of a pydantic error, as ``field: message`` on one line."""
    first = exc.errors()[0]
    msg = str(first["msg"]).removeprefix("Value error, ")
    loc = ".".join(str(p) for p in first["loc"])
    more = len(exc.errors()) - 1
    text = f"{loc}: {msg}" if loc else msg
    return text + (f" (and {more} more)" if more else "")


def _fail(message: str, code: int) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def handle_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn the library's errors into one line and an exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except BrokerError as exc:  # unreachable or refused us: both say "check the server"
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                raise
            _fail(str(exc), EXIT_UNREACHABLE)
        except ConfigurationError as exc:
            _fail(str(exc), EXIT_CONFIG)
        except ValidationError as exc:
            _fail(f"invalid input: {_one_line(exc)}", EXIT_CONFIG)
        except VocalbornTasksError as exc:
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                raise
            _fail(f"{exc} [{exc.code}]", EXIT_NOT_OK)
        raise AssertionError("unreachable")  # pragma: no cover

    return wrapper


def run_async(coro: Coroutine[Any, Any, T] | Awaitable[T]) -> T:
    async def runner() -> T:
        return await coro

    return asyncio.run(runner())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--redis-url",
    envvar="REDIS_URL",
    help="Redis/Valkey URL (default: REDIS_URL or REDIS_HOST/PORT).",
)
@click.option("--debug", is_flag=True, help="Verbose logging and full tracebacks.")
@click.version_option(package_name="vocalborn-tasks")
@click.pass_context
def main(ctx: click.Context, redis_url: str | None, debug: bool) -> None:
    """Typed, reliable audio-analysis jobs on Celery + Redis."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    ctx.ensure_object(dict)["overrides"] = {"redis_url": redis_url}


# --- processes -----------------------------------------------------------------------------


def _reexec_with_soft_shutdown() -> None:
    """Celery reads REMAP_SIGTERM when it is imported: set it and start over, once."""
    if os.environ.get("REMAP_SIGTERM"):
        return
    os.environ["REMAP_SIGTERM"] = "SIGQUIT"
    os.execv(sys.executable, [sys.executable, "-m", "vocalborn_tasks", *sys.argv[1:]])


@main.command()
@click.option(
    "-Q", "--queues", default=",".join(QUEUES), show_default=True, help="Queues to consume."
)
@click.option("-c", "--concurrency", type=int, default=None, help="Pool processes (default: CPUs).")
@click.option("-P", "--pool", type=click.Choice(["prefork", "solo", "threads"]), default=None)
@click.option(
    "-n",
    "--hostname",
    default=None,
    help="Worker node name, e.g. analysis1@%h (default celery-<pid>@<host>); refused while a "
    "live worker holds it.",
)
@click.option(
    "-I",
    "--include",
    multiple=True,
    metavar="MODULE",
    help="Host module whose task definitions to run (repeatable; adds to TASK_MODULES).",
)
@click.pass_context
@handle_errors
def worker(
    ctx: click.Context,
    queues: str,
    concurrency: int | None,
    pool: str | None,
    hostname: str | None,
    include: tuple[str, ...],
) -> None:
    """Run a worker (SIGTERM: running tasks get a grace period, then go back to the queue)."""
    settings = _settings(ctx)
    if include:
        modules = [*settings.task_modules, *(m for m in include if m not in settings.task_modules)]
        settings = settings.model_copy(update={"task_modules": modules})
    _reexec_with_soft_shutdown()
    from .worker import run_worker
    from .worker.celery_private import say_shutdown_in_our_words

    names = [q.strip() for q in queues.split(",") if q.strip()]
    known = [*QUEUES, *settings.host_queues]
    for name in names:
        if name not in known:
            err_console.print(
                f"[yellow]warning:[/] queue {escape(name)!r} is not one of "
                f"{', '.join(known)}: no task goes there unless a host sends it; "
                "declare a host's own queues in HOST_QUEUES",
                highlight=False,
                soft_wrap=True,
            )
    processes = concurrency or settings.celery_worker_concurrency

    def announce(name: str) -> None:
        err_console.print(
            f"worker {escape(name)}: queues "
            f"{','.join(names)}, {processes or 'one per CPU'} {pool or 'prefork'} processes, "
            f"broker {escape(settings.redacted_broker_url)}. SIGTERM, SIGQUIT or a second "
            f"Ctrl+C: running tasks get {settings.worker_soft_shutdown_s:g} s, then go back to "
            "their queue; Ctrl+C: stop once they finish.",
            highlight=False,
            soft_wrap=True,
        )

    say_shutdown_in_our_words(settings.worker_soft_shutdown_s)
    run_worker(
        settings,
        queues=names,
        concurrency=processes,
        pool=pool,
        hostname=hostname,
        announce=announce,
    )


@main.command()
@click.option("--schedule-file", default=None, help="Where beat keeps its schedule state.")
@click.pass_context
@handle_errors
def beat(ctx: click.Context, schedule_file: str | None) -> None:
    """Run the periodic scheduler (maintenance cleanup, health checks)."""
    from .worker import run_beat

    run_beat(_settings(ctx), schedule_file=schedule_file)


@main.command()
@click.option("--port", type=int, default=6379, show_default=True)
@click.option(
    "--data-dir", type=click.Path(path_type=Path), default=None, help="Keep data here (AOF)."
)
@handle_errors
def server(port: int, data_dir: Path | None) -> None:
    """Run the embedded Valkey server in the foreground on 127.0.0.1.

    Ctrl+C, SIGTERM or SIGHUP stop it and remove its temporary data directory.
    """
    import signal

    from .embedded import LocalServer, port_in_use

    if port_in_use(port):
        raise ConfigurationError(
            f"port {port} on 127.0.0.1 is already in use (another server?): choose another "
            "with --port"
        )

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Handlers, not a blocked mask: a blocked mask would be inherited by the server process.
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, stop)
    srv = LocalServer(port=port, data_dir=data_dir, die_with_parent=True)
    try:
        srv.start()
        console.print(
            f"Valkey listening on [bold]redis://127.0.0.1:{port}[/] (pid {srv.pid}, data in "
            f"{srv.data_dir})",
            highlight=False,
            soft_wrap=True,
        )
        console.print(f"Use it with: export REDIS_URL=redis://127.0.0.1:{port}", highlight=False)
        console.file.flush()
        while True:
            signal.pause()
    except KeyboardInterrupt:
        console.print("stopped", highlight=False)
    finally:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # the clean-up must not be interrupted
        srv.close() if data_dir is None else srv.stop()


# --- reading ---------------------------------------------------------------------------------


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@handle_errors
def health(ctx: click.Context, as_json: bool) -> None:
    """Check server, workers and queues; exits 1 when unhealthy (a liveness probe)."""
    from .monitor import HealthLevel, Monitor

    async def check() -> Any:
        async with Monitor(_settings(ctx)) as monitor:
            return await monitor.health()

    report = run_async(check())
    if as_json:
        click.echo(report.model_dump_json(indent=2))
        if not report.reachable:
            sys.exit(EXIT_UNREACHABLE)
    elif not report.reachable:
        _fail(report.reasons[0], EXIT_UNREACHABLE)
    else:
        colour = {"healthy": "green", "degraded": "yellow", "unhealthy": "red"}[report.level.value]
        console.print(f"[bold {colour}]{report.level.value}[/]")
        for reason in report.reasons:
            console.print(f"  - {escape(reason)}", highlight=False)
        if report.broker_latency_ms is not None:
            console.print(
                f"  broker round trip {report.broker_latency_ms:.2f} ms, workers {report.workers}"
            )
            for q in report.queues:
                console.print(
                    f"  queue {q.name}: {q.length} waiting, {q.consumers} workers, oldest "
                    f"{_seconds(q.oldest_age_s)}",
                    highlight=False,
                )
        for line in _topology_lines(_settings(ctx), report):
            console.print(f"  {escape(line)}", highlight=False, soft_wrap=True)
    if report.level is HealthLevel.UNHEALTHY:
        sys.exit(EXIT_NOT_OK)


@main.command()
@click.pass_context
@handle_errors
def status(ctx: click.Context) -> None:
    """The Redis master (as the sentinels name it), workers, queues and task statistics."""
    # With the health check: its drain verdicts are what ``monitor`` shows too.
    snap = run_async(_snapshot(_settings(ctx), with_health=True))
    for table in _dashboard_tables(_settings(ctx), snap):
        console.print(table)


class _Snapshot:
    """What one refresh of ``status``/``monitor`` shows."""

    def __init__(self, workers: Any, queues: Any, types: Any, report: Any) -> None:
        self.workers = workers
        self.queues = queues
        self.types = types
        self.report = report


async def _snapshot(settings: TaskSettings, *, with_health: bool = False) -> _Snapshot:
    from .monitor import Monitor

    async with Monitor(settings) as monitor:
        report = await monitor.health() if with_health else None
        workers = await monitor.get_worker_stats()
        queues = report.queues if report is not None else await monitor.get_queue_stats()
        types = await monitor.get_task_type_stats()
        return _Snapshot(workers, queues, types, report)


def _shows_topology(settings: TaskSettings, topology: Any) -> bool:
    """Whether there is a topology to show: sentinels, replicas, replicas required, or a
    server that is not a master. A lone server needing no replica shows as it always did."""
    return topology is not None and bool(
        settings.uses_sentinel
        or topology.replicas
        or topology.replica_acks
        or topology.role != "master"
    )


def _known(value: int | None, unit: str = "") -> str:
    return "unknown" if value is None else f"{value}{unit}"


def _topology_lines(settings: TaskSettings, report: Any) -> list[str]:
    """The health text's lines about the topology: the master, replicas, the fencing settings."""
    t = report.topology
    if not _shows_topology(settings, t):
        return []
    lines = []
    if settings.uses_sentinel:
        answered = sum(1 for s in t.sentinels if s.reachable)
        lines.append(
            f"master {t.master or 'unknown'} (as {answered} of {len(t.sentinels)} sentinels "
            f"name it: {', '.join(s.address for s in t.sentinels)})"
        )
        if t.role != "master":
            lines.append(f"the server this client reaches is a {t.role}")
    else:
        following = f" of {t.following}" if t.following else ""
        lines.append(f"server {settings.server_address}: {t.role}{following}")
    replicas = "; ".join(f"{r.address} {r.state}, lag {_known(r.lag_s, ' s')}" for r in t.replicas)
    lines.append(
        f"replicas: {t.connected_replicas} connected" + (f" ({replicas})" if replicas else "")
    )
    lines.append(
        f"min-replicas-to-write {_known(t.min_replicas_to_write)}, min-replicas-max-lag "
        f"{_known(t.min_replicas_max_lag_s, ' s')}, REDIS_REPLICA_ACKS {t.replica_acks}"
    )
    return lines


def _topology_table(settings: TaskSettings, report: Any) -> Table | None:
    """``status``/``monitor``: who is the master (as the sentinels name it), its replicas and
    the sentinels, one row each."""
    t = report.topology if report is not None else None
    if t is None:
        return None
    table = Table(title="Redis", title_justify="left")
    for col in ("redis", "address", "state"):
        table.add_column(col)
    fencing = (
        f"min-replicas-to-write {_known(t.min_replicas_to_write)} (max lag "
        f"{_known(t.min_replicas_max_lag_s, ' s')}), REDIS_REPLICA_ACKS {t.replica_acks}"
    )
    if settings.uses_sentinel:
        state = f"{t.role}, {fencing}"
        table.add_row("master", escape(t.master or "unknown"), state)
    else:
        following = f" of {t.following}" if t.following else ""
        replicas = fencing if _shows_topology(settings, t) else "no replicas"
        table.add_row("server", escape(settings.server_address), f"{t.role}{following}, {replicas}")
    for r in t.replicas:
        behind = "" if r.behind_bytes is None else f", {r.behind_bytes} bytes behind"
        table.add_row(
            "replica", escape(r.address), f"{r.state}, lag {_known(r.lag_s, ' s')}{behind}"
        )
    for s in t.sentinels:
        if not s.reachable:
            state = f"[red]no answer[/] ({escape(s.error or '')})"
        elif s.master is None:
            state = f"[red]does not monitor {escape(settings.redis_sentinel_master or '')}[/]"
        else:
            quorum = "quorum ok" if s.quorum else f"[red]{escape(s.error or 'no quorum')}[/]"
            state = f"names {escape(s.master)}, {quorum}"
        table.add_row("sentinel", escape(s.address), state)
    return table


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f} s"
    if value < 600:
        return f"{value:.0f} s"
    return f"{value / 60:.0f} min"


def _dashboard_tables(settings: TaskSettings, snap: _Snapshot) -> list[Table]:
    workers = Table(title="Workers", title_justify="left")
    for col in ("worker", "pid", "procs", "queues", "active", "reserved", "processed", "memory"):
        workers.add_column(col, justify="right" if col in ("active", "reserved") else "left")
    for w in snap.workers:
        workers.add_row(
            escape(w.hostname),
            str(w.pid),
            str(w.concurrency),
            ",".join(w.queues),
            str(w.active),
            str(max(w.reserved - w.active, 0)),
            str(w.processed),
            f"{w.rss_kb / 1024:.0f} MiB",
        )
    if not snap.workers:
        workers.add_row("[red]no live worker[/]", "", "", "", "", "", "", "")
    queues = Table(title="Queues", title_justify="left")
    for col in ("queue", "waiting", "by priority 0/3/6/9", "consumers", "oldest", "draining"):
        queues.add_column(col, justify="left" if col == "queue" else "right")
    for q in snap.queues:
        by_pri = "/".join(str(q.priority_lengths.get(p, 0)) for p in (0, 3, 6, 9))
        consumers = f"{q.consumers} ({q.consumer_processes} proc)"
        if q.consumers == 0:
            consumers = f"[red]{consumers}[/]"
        queues.add_row(
            q.name, str(q.length), by_pri, consumers, _seconds(q.oldest_age_s), _draining(q)
        )
    types = Table(title="Tasks (last hour)", title_justify="left")
    for col in ("task", "queue", "runs", "ok", "failed", "retried", "fail %", "p50", "p95"):
        types.add_column(col, justify="left" if col in ("task", "queue") else "right")
    for t in snap.types:
        rate = "-" if t.failure_rate is None else f"{t.failure_rate:.0%}"
        types.add_row(
            t.task,
            t.queue,
            str(t.runs),
            str(t.succeeded),
            str(t.failed),
            str(t.retried),
            rate,
            _seconds(t.p50_s),
            _seconds(t.p95_s),
        )
    redis_table = _topology_table(settings, snap.report)
    return [*([redis_table] if redis_table is not None else []), workers, queues, types]


def _draining(queue: Any) -> str:
    """One word for a queue's flow, the same in ``status`` and ``monitor``.

    ``idle``: nothing waiting; ``NO (no worker)``: work waits and nobody consumes the queue;
    ``NO (stalled)``: consumers exist but nothing moved for ``health_stall_after_s``;
    ``yes``: work is being taken; ``?``: not judged yet (needs two observations).
    """
    if queue.length == 0:
        return "idle"
    if queue.consumers == 0:
        return "[red]NO (no worker)[/]"
    return {True: "yes", False: "[red]NO (stalled)[/]", None: "?"}[queue.draining]


def _health_line(report: Any) -> str:
    colour = {"healthy": "green", "degraded": "yellow", "unhealthy": "red"}[report.level.value]
    line = f"[bold {colour}]{report.level.value}[/]"
    if report.broker_latency_ms is not None:
        line += (
            f"  broker {report.broker_latency_ms:.1f} ms, backend "
            f"{report.backend_latency_ms:.1f} ms, memory "
            f"{(report.used_memory_bytes or 0) / 2**20:.1f} MiB, policy {report.maxmemory_policy}"
        )
    for reason in report.reasons:
        line += f"\n  - {escape(reason)}"
    return line


def _monitor_view(settings: TaskSettings, snap: _Snapshot) -> Any:
    from datetime import UTC, datetime

    from rich.console import Group
    from rich.panel import Panel

    header = (
        f"[bold]vocalborn-tasks monitor[/]  {escape(settings.redacted_broker_url)}  "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC"
    )
    parts: list[Any] = [header]
    if snap.report is not None:
        parts.append(
            Panel(_health_line(snap.report), title="health", title_align="left", expand=False)
        )
    parts.extend(_dashboard_tables(settings, snap))
    return Group(*parts)


@main.command("monitor")
@click.option(
    "--interval", type=float, default=2.0, show_default=True, help="Seconds between refreshes."
)
@click.option("--once", is_flag=True, help="Print one refresh and exit.")
@click.pass_context
@handle_errors
def monitor_cmd(ctx: click.Context, interval: float, once: bool) -> None:
    """Live view of health, workers, queues and task statistics (Ctrl+C quits)."""
    from rich.live import Live

    settings = _settings(ctx)

    async def loop() -> None:
        snap = await _snapshot(settings, with_health=True)
        if once:
            console.print(_monitor_view(settings, snap))
            return
        if not console.is_terminal:
            # No screen to redraw (a pipe, a file): print one snapshot per refresh.
            while True:
                console.print(_monitor_view(settings, snap))
                console.print()
                console.file.flush()
                await asyncio.sleep(max(interval, 0.2))
                snap = await _snapshot(settings, with_health=True)
        with Live(
            _monitor_view(settings, snap), console=console, screen=False, auto_refresh=False
        ) as live:
            while True:
                await asyncio.sleep(max(interval, 0.2))
                try:
                    snap = await _snapshot(settings, with_health=True)
                    live.update(_monitor_view(settings, snap), refresh=True)
                except BrokerUnavailableError as exc:
                    live.update(f"[bold red]Redis unreachable:[/] {escape(str(exc))}", refresh=True)

    with contextlib.suppress(KeyboardInterrupt):
        run_async(loop())


main.add_command(monitor_cmd, "monitor-cmd")


@main.command("task")
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handle_errors
def task_cmd(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """Show one task: state, progress, result or error."""
    from .manager import TaskManager
    from .models import TaskState
    from .monitor import Monitor

    async def read() -> tuple[Any, Any]:
        settings = _settings(ctx)
        async with TaskManager(settings) as manager, Monitor(settings) as monitor:
            st = await manager.get_task_status(task_id)
            position = None
            if not st.is_final:
                position = await monitor.get_task_position(task_id, queue=st.queue)
            return st, position

    st, position = run_async(read())
    if as_json:
        data = st.model_dump(mode="json")
        data["position"] = position.model_dump(mode="json") if position is not None else None
        click.echo(json.dumps(data, indent=2))
    else:
        console.print(f"[bold]{st.task_id}[/] {st.state.value}", highlight=False)
        if st.task_name:
            console.print(f"  task: {st.task_name} (queue {st.queue or '?'})", highlight=False)
        if st.progress is not None:
            console.print(f"  progress: {st.progress:.0f}% {st.step or ''}", highlight=False)
        if position is not None and position.state == "waiting":
            wait = position.estimated_wait_s
            console.print(
                f"  position: {position.position} of {position.queue_length} in {position.queue}"
                f" ({position.ahead} ahead, {position.consumer_processes} worker processes)",
                highlight=False,
            )
            console.print(
                "  estimated wait: "
                + (_seconds(wait) if wait is not None else "unknown (no recent runs or no worker)"),
                highlight=False,
            )
        elif position is not None and position.state == "running":
            console.print("  running now", highlight=False)
        if st.error is not None:
            console.print(
                escape(f"  error: {st.error.type}: {st.error.message} [{st.error.code or '-'}]"),
                highlight=False,
            )
        if st.result is not None:
            console.print_json(json.dumps(st.result))
    if st.state in (TaskState.FAILURE, TaskState.NOT_FOUND, TaskState.EXPIRED, TaskState.LOST):
        sys.exit(EXIT_NOT_OK)


# --- serving -----------------------------------------------------------------------------------


def _wait_for_stop_signal() -> None:
    import signal

    with contextlib.suppress(KeyboardInterrupt):
        signal.sigwait({signal.SIGINT, signal.SIGTERM})


@main.command()
@click.option("--port", type=int, default=9808, show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.pass_context
@handle_errors
def metrics(ctx: click.Context, port: int, address: str) -> None:
    """Serve Prometheus metrics on http://ADDRESS:PORT/metrics (SIGTERM/Ctrl+C stops)."""
    import signal

    try:
        import prometheus_client  # noqa: F401 - only whether it is there
    except ImportError:
        raise ConfigurationError(
            "prometheus-client is not installed: pip install 'vocalborn-tasks[metrics]'"
        ) from None
    from .metrics import serve

    settings = _settings(ctx)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        server = serve(settings, port, address)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve metrics on {address}:{port}: {exc.strerror or exc}; "
            "choose another with --port"
        ) from None
    console.print(f"serving metrics on http://{address}:{port}/metrics", highlight=False)
    try:
        _wait_for_stop_signal()
    finally:
        server.shutdown()


@main.command()
@click.option("--port", type=int, default=None, help="Default: FLOWER_PORT or 5555.")
@click.option("--address", default=None, help="Default: FLOWER_ADDRESS or 127.0.0.1.")
@click.pass_context
@handle_errors
def flower(ctx: click.Context, port: int | None, address: str | None) -> None:
    """Run Flower against this app; needs FLOWER_BASIC_AUTH=user:password."""
    from .flower import run_flower

    run_flower(_settings(ctx), address=address, port=port)


# --- acting ------------------------------------------------------------------------------------


@main.command()
@click.argument("task_id")
@click.pass_context
@handle_errors
def cancel(ctx: click.Context, task_id: str) -> None:
    """Cancel a task (queued: never runs; running: stopped)."""
    from .manager import TaskManager

    async def go() -> Any:
        async with TaskManager(_settings(ctx)) as manager:
            return await manager.cancel(task_id)

    from .models import TaskState

    st = run_async(go())
    console.print(f"{task_id}: {st.state.value}", highlight=False)
    if st.state in (TaskState.NOT_FOUND, TaskState.EXPIRED, TaskState.LOST):
        sys.exit(EXIT_NOT_OK)  # like ``task``: there was nothing to cancel


@main.command()
@click.option(
    "--queue",
    "-q",
    required=True,
    help=f"One of {', '.join(QUEUES)} or a queue named in HOST_QUEUES.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
@handle_errors
def purge(ctx: click.Context, queue: str, yes: bool) -> None:
    """Delete every waiting task of a queue; each ends REVOKED with code ``purged``."""
    from .monitor import Monitor

    known = [*QUEUES, *_settings(ctx).host_queues]
    if queue not in known:
        raise ConfigurationError(
            f"unknown queue {queue!r}: choose one of {', '.join(known)} "
            "(declare a host's own queues in HOST_QUEUES)"
        )
    if not yes:
        if not sys.stdin.isatty():
            _fail(f"not purging {queue}: no terminal to confirm on; pass --yes", EXIT_CONFIG)
        if not click.confirm(f"Delete every waiting task in {queue}?"):
            _fail(f"not purging {queue}: not confirmed", EXIT_NOT_OK)

    async def go() -> int:
        async with Monitor(_settings(ctx)) as monitor:
            return await monitor.purge_queue(queue)

    console.print(f"purged {run_async(go())} tasks from {queue}")


@main.command("test")
@click.option("--message", "-m", default="hello", show_default=True)
@click.option("--timeout", type=float, default=30.0, show_default=True)
@click.pass_context
@handle_errors
def test_cmd(ctx: click.Context, message: str, timeout: float) -> None:
    """Send a test task through broker, worker and backend, and print its answer."""
    from .manager import TaskManager
    from .tasks import echo

    async def go() -> Any:
        async with TaskManager(_settings(ctx)) as manager:
            handle = await manager.submit(echo, message)
            return await manager.wait_for_result(handle, timeout=timeout)

    result = run_async(go())
    console.print(
        f"worker {result.worker} (pid {result.pid}) answered: {result.message}", highlight=False
    )


@main.command()
@click.argument("recording", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--reference", "-r", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True
)
@click.option("--record-id", default=None, help="Practice record id (default: the file name).")
@click.option("--language", "-l", default=None, help="e.g. en, zh-TW")
@click.option("--timeout", type=float, default=300.0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handle_errors
def submit(
    ctx: click.Context,
    recording: Path,
    reference: Path,
    record_id: str | None,
    language: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Submit one analysis, follow its progress and print the result."""
    from .models import AnalysisRequest

    request = AnalysisRequest(
        practice_record_id=record_id or _safe_id(recording.stem),
        recording=str(recording.resolve()),
        reference=str(reference.resolve()),
        language=language,
    )
    from .demo import follow_analyses, render_results
    from .errors import TaskTimeoutError

    task_ids: list[str] = []

    def queued(ids: list[str]) -> None:
        task_ids.extend(ids)
        for tid in ids:
            err_console.print(
                f"queued task {tid} ({request.practice_record_id})", highlight=False, soft_wrap=True
            )

    try:
        results = run_async(
            follow_analyses(
                _settings(ctx),
                [request],
                timeout=timeout,
                console=err_console,
                on_submitted=queued,
            )
        )
    except TaskTimeoutError as exc:
        tid = exc.task_id or (task_ids[0] if task_ids else "?")
        _fail(
            f"task {tid} did not finish within {timeout:g} s; it stays queued (or running): "
            f"follow it with `vocalborn-tasks task {tid}`, stop it with "
            f"`vocalborn-tasks cancel {tid}` [timeout]",
            EXIT_NOT_OK,
        )
        raise AssertionError("unreachable") from None  # pragma: no cover
    if as_json:
        rows = [
            {"task_id": tid, **r.model_dump(mode="json")}
            for tid, r in zip(task_ids, results, strict=True)
        ]
        click.echo(json.dumps(rows, indent=2))
    else:
        render_results(console, [request], results)


def _safe_id(stem: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in stem).strip("-._")
    return (cleaned or "recording")[:128]


@main.command()
@click.option(
    "--workers", type=int, default=2, show_default=True, help="Pool processes of the demo worker."
)
@click.pass_context
@handle_errors
def demo(ctx: click.Context, workers: int) -> None:
    """Start what is needed (embedded Valkey if no Redis is set), analyse the bundled samples."""
    from .demo import run_demo

    obj = ctx.ensure_object(dict)
    redis_url = obj.get("overrides", {}).get("redis_url")
    sys.exit(run_demo(redis_url=redis_url, concurrency=workers, console=console))


if __name__ == "__main__":  # pragma: no cover
    main()
