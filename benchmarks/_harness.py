"""Shared plumbing for the benchmark scripts: server, worker processes, CPU, statistics.

Every process a benchmark starts is started here, with ``die_with_parent`` as ``preexec_fn``
(the kernel kills it if the benchmark dies) and stopped by PID at the end (SIGTERM, then
SIGKILL of the whole tree that was seen).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import redis

from vocalborn_tasks.embedded import LocalServer, die_with_parent

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOG_DIR = Path(tempfile.mkdtemp(prefix="vocalborn-bench-"))


def parser(description: str, n_default: int) -> argparse.ArgumentParser:
    """The options every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--runs", type=int, default=3, help="repetitions (median and min-max)")
    p.add_argument("--json", type=Path, default=None, help="write raw results here")
    p.add_argument("--n", type=int, default=n_default, help="tasks per measurement")
    p.add_argument(
        "--server-binary", default=None, help="e.g. /usr/bin/redis-server (default: Valkey)"
    )
    return p


@contextlib.contextmanager
def local_server(binary: str | None) -> Iterator[LocalServer]:
    """A fresh server on a free loopback port, stopped at the end."""
    server = LocalServer(binary=binary, die_with_parent=True)
    server.start()
    try:
        yield server
    finally:
        server.close()


def server_version(url: str) -> str:
    client = redis.Redis.from_url(url)
    try:
        info: dict[str, Any] = client.info("server")
        name = "valkey" if "valkey_version" in info else "redis"
        return f"{name} {info.get('valkey_version') or info.get('redis_version')}"
    finally:
        client.close()


def flush_all(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.flushall()
    finally:
        client.close()


def reset_commandstats(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.config_resetstat()
    finally:
        client.close()


def commandstats(url: str) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT (the INFO/RESETSTAT calls excluded)."""
    client = redis.Redis.from_url(url)
    try:
        info: dict[str, Any] = client.info("commandstats")
    finally:
        client.close()
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}
    calls.pop("info", None)
    calls.pop("config|resetstat", None)
    return calls


def bench_env(url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment for worker processes pointing at ``url``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "TASK_", "CELERY_"))}
    env["REDIS_URL"] = url
    env["BENCH_REDIS_URL"] = url
    env["REMAP_SIGTERM"] = "SIGQUIT"
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH_DIR), str(ROOT), env.get("PYTHONPATH", "")])
    env.update(extra or {})
    return env


def children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                out.extend(int(p) for p in text.split())
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    seen = [pid]
    i = 0
    while i < len(seen):
        seen.extend(c for c in children(seen[i]) if c not in seen)
        i += 1
    return seen


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(root: int) -> float:
    """CPU time of a process tree: live processes' utime+stime plus reaped children's time.

    Children reaped by a live process move into its cutime/cstime, so pool processes recycled
    between two readings are still counted.
    """
    total = 0
    for pid in tree(root):
        with contextlib.suppress(OSError):
            f = _stat_fields(pid)
            # fields 14-17 of /proc/pid/stat (utime stime cutime cstime) are f[11:15] here
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total / CLK_TCK


def self_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class Proc:
    """One process we start and stop by PID (its descendants too)."""

    def __init__(self, name: str, cmd: Sequence[str], env: Mapping[str, str]) -> None:
        self.name = name
        self.log_path = LOG_DIR / f"{name}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed once the child has it
        self.proc = subprocess.Popen(
            list(cmd),
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(BENCH_DIR),
            preexec_fn=die_with_parent,
        )
        log.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited: {self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self, timeout: float = 20.0) -> None:
        pids = tree(self.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for pid in pids[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def running(name: str, cmd: Sequence[str], env: Mapping[str, str]) -> Iterator[Proc]:
    proc = Proc(name, cmd, env)
    try:
        yield proc
    finally:
        proc.stop()


def library_worker_cmd(
    *, pool: str, concurrency: int, queues: str = "health", module: str = "noop_worker"
) -> list[str]:
    """A library worker (host module with the bench no-op registered, library defaults)."""
    return [
        sys.executable,
        "-m",
        module,
        "worker",
        "--queues",
        queues,
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "--hostname",
        f"bench-{pool}-{os.getpid()}@127.0.0.1",
    ]


def slug(name: str) -> str:
    """A file-name-safe form of a system or group name (for log files)."""
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- statistics -----------------------------------------------------------------------------
def summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt(values: Sequence[float], digits: int = 0) -> str:
    """``median (min-max)``."""
    if not values:
        return "n/a"
    s = summary(values)
    return f"{s['median']:,.{digits}f} ({s['min']:,.{digits}f}-{s['max']:,.{digits}f})"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    print(f"\n{title}")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def write_json(path: Path | None, data: Any) -> None:
    if path is not None:
        path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
        print(f"raw results: {path}")


def machine() -> dict[str, str]:
    import platform

    import celery
    import redis as redis_py

    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "redis-py": redis_py.__version__,
    }
