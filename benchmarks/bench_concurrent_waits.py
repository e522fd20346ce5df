"""10,000 tasks awaited at once from one event loop: wall time, threads, caller memory.

``python benchmarks/bench_concurrent_waits.py [--runs 3] [--n 10000] [--json out.json]
[--server-binary /usr/bin/redis-server]``

One library worker (prefork 2, library defaults) runs the no-op task. The caller submits
``n`` tasks through ``TaskManager`` and then awaits all of them with ``asyncio.gather``.
Threads are counted with ``threading.active_count()`` before, after and at the peak (sampled
from the event loop every 5 ms); memory is the caller's RSS (``/proc/self/status``) before
and after, and its peak (VmHWM, reset before each run through ``/proc/self/clear_refs``).
Each run's caller is a fresh Python process (``--child``), so a run does not reuse the heap a
previous run grew.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

from _harness import (
    Proc,
    bench_env,
    flush_all,
    fmt,
    library_worker_cmd,
    local_server,
    machine,
    parser,
    print_table,
    server_version,
    write_json,
)

from vocalborn_tasks.embedded import die_with_parent


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak_rss() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


async def one_run(url: str, n: int) -> dict[str, float]:
    from noop_worker import noop

    from vocalborn_tasks import TaskManager, TaskSettings

    async with TaskManager(TaskSettings(redis_url=url)) as manager:
        for _ in range(10):  # warm-up, and waits for the worker
            await manager.wait_for_result(await manager.submit(noop), timeout=120)
        reset_peak_rss()
        threads0 = threading.active_count()
        rss0 = status_kib("VmRSS")
        peak_threads = threads0
        stop = asyncio.Event()

        async def sampler() -> None:
            nonlocal peak_threads
            while not stop.is_set():
                peak_threads = max(peak_threads, threading.active_count())
                await asyncio.sleep(0.005)

        sampling = asyncio.create_task(sampler())
        t0 = time.perf_counter()
        handles = [await manager.submit(noop) for _ in range(n)]
        t_sub = time.perf_counter()
        await asyncio.gather(*(manager.wait_for_result(h, timeout=600) for h in handles))
        t_end = time.perf_counter()
        stop.set()
        await sampling
        return {
            "submit s": t_sub - t0,
            "wait-all s": t_end - t_sub,
            "wall s": t_end - t0,
            "threads before": threads0,
            "threads peak": peak_threads,
            "threads after": threading.active_count(),
            "extra threads (peak)": peak_threads - threads0,
            "RSS delta MB": (status_kib("VmRSS") - rss0) / 1024,
            "RSS peak delta MB": (status_kib("VmHWM") - rss0) / 1024,
        }


def child(url: str, n: int) -> None:
    print("RESULT " + json.dumps(asyncio.run(one_run(url, n))), flush=True)


def main() -> None:
    p = parser(__doc__ or "", n_default=10_000)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.n)
        return
    rows: dict[str, list[float]] = defaultdict(list)
    with local_server(args.server_binary) as server:
        url = server.url
        info = {**machine(), "server": server_version(url), "n": args.n}
        print(info)
        for run in range(args.runs):
            flush_all(url)
            worker = Proc(
                f"waits-{run}", library_worker_cmd(pool="prefork", concurrency=2), bench_env(url)
            )
            try:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", url, "--n", str(args.n)],
                    capture_output=True,
                    text=True,
                    timeout=900,
                    check=True,
                    preexec_fn=die_with_parent,
                ).stdout
                line = next(x for x in out.splitlines() if x.startswith("RESULT "))
                res: dict[str, float] = json.loads(line.removeprefix("RESULT "))
            finally:
                worker.stop()
            for k, v in res.items():
                rows[k].append(v)
            print(f"run {run + 1}: {res}", flush=True)
    print_table(
        f"{args.n} tasks awaited at once (TaskManager), median (min-max) of {args.runs} runs",
        ["measure", "value"],
        [[k, fmt(v, 1)] for k, v in rows.items()],
    )
    write_json(args.json, {"machine": info, "runs": args.runs, "results": rows})


if __name__ == "__main__":
    main()
