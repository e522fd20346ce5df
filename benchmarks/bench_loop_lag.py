"""Event-loop lag while a host submits 1,000 tasks and serves other coroutines.

``python benchmarks/bench_loop_lag.py [--runs 3] [--n 1000] [--json out.json]
[--server-binary /usr/bin/redis-server]``

A ticker coroutine sleeps 1 ms in a loop and records how late it wakes up; 50 "request
handler" coroutines run alongside (each a short CPU burst and a 1 ms sleep). Three phases
per run, same loop, same worker (library worker, prefork 2):

* idle: no task traffic (the floor of this machine);
* TaskManager: a producer coroutine submits ``n`` tasks one after the other, each awaited by
  its own coroutine (``wait_for_result``);
* TaskManager, ``n`` concurrent submits: ``n`` coroutines submit at the same moment (a burst
  of requests); submits that fail are counted (the client pool holds 64 connections);
* raw Celery from the loop: ``send_task`` called directly by the producer (kombu blocks),
  results read with ``AsyncResult.get()`` in ``asyncio.to_thread`` (what a host would do
  without the facade).

``--nice-workers`` runs the worker at nice 19: on two shared cores the worker processes
otherwise preempt the host's loop, and the lag then measures the machine, not the library.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from _harness import (
    Proc,
    bench_env,
    flush_all,
    fmt,
    library_worker_cmd,
    local_server,
    machine,
    parser,
    percentile,
    print_table,
    server_version,
    write_json,
)


async def measure(work: Callable[[], Awaitable[Any]]) -> dict[str, float]:
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append((time.perf_counter() - t - 0.001) * 1000)

    async def handler() -> None:
        while not stop.is_set():
            sum(range(200))  # a little work per "request"
            await asyncio.sleep(0.001)

    tasks = [asyncio.create_task(ticker())] + [asyncio.create_task(handler()) for _ in range(50)]
    t0 = time.perf_counter()
    await work()
    wall = time.perf_counter() - t0
    stop.set()
    await asyncio.gather(*tasks)
    lags.sort()
    return {"p50": percentile(lags, 50), "p99": percentile(lags, 99), "max": lags[-1], "s": wall}


async def one_run(url: str, n: int) -> dict[str, dict[str, float]]:
    from noop_worker import noop

    from vocalborn_tasks import TaskManager, TaskSettings, create_celery_app

    out: dict[str, dict[str, float]] = {}
    app = create_celery_app(TaskSettings(redis_url=url))
    async with TaskManager(TaskSettings(redis_url=url)) as manager:
        for _ in range(10):
            await manager.wait_for_result(await manager.submit(noop), timeout=120)
        await asyncio.to_thread(
            lambda: app.send_task("bench.noop", kwargs={}, queue="health").get(timeout=60)
        )

        out["idle (1 s)"] = await measure(lambda: asyncio.sleep(1.0))

        async def facade() -> None:
            # The host's producer submits one task after the other; each result is awaited
            # by its own coroutine (a request handler waiting for its task).
            waits = []
            for _ in range(n):
                h = await manager.submit(noop)
                waits.append(asyncio.create_task(manager.wait_for_result(h, timeout=300)))
            await asyncio.gather(*waits)

        out["TaskManager submit + wait"] = await measure(facade)

        failed = 0

        async def facade_burst() -> None:
            # n handlers submitting at the same moment (a burst of web requests).
            nonlocal failed

            async def one() -> None:
                h = await manager.submit(noop)
                await manager.wait_for_result(h, timeout=300)

            results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
            failed = sum(isinstance(r, BaseException) for r in results)

        out["TaskManager, n concurrent submits"] = await measure(facade_burst)
        out["TaskManager, n concurrent submits"]["failed"] = failed

        async def raw() -> None:
            waits = []
            for _ in range(n):
                r = app.send_task("bench.noop", kwargs={}, queue="health")  # blocks the loop
                waits.append(asyncio.create_task(asyncio.to_thread(r.get, timeout=300)))
            await asyncio.gather(*waits)

        out["Celery send_task + to_thread(get)"] = await measure(raw)
    app.close()
    return out


def main() -> None:
    p = parser(__doc__ or "", n_default=1000)
    p.add_argument(
        "--nice-workers",
        action="store_true",
        help="run the worker at nice 19, so the host loop is not preempted by it: separates "
        "what the library blocks from what two shared cores cost",
    )
    args = p.parse_args()
    rows: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with local_server(args.server_binary) as server:
        url = server.url
        info = {
            **machine(),
            "server": server_version(url),
            "n": args.n,
            "nice_workers": args.nice_workers,
        }
        print(info)
        for run in range(args.runs):
            flush_all(url)
            cmd = library_worker_cmd(pool="prefork", concurrency=2)
            if args.nice_workers:
                cmd = ["nice", "-n", "19", *cmd]
            worker = Proc(f"lag-{run}", cmd, bench_env(url))
            try:
                res = asyncio.run(one_run(url, args.n))
            finally:
                worker.stop()
            for phase, vals in res.items():
                for k, v in vals.items():
                    rows[phase][k].append(v)
            print(f"run {run + 1}: {res}", flush=True)
    cols = ["p50", "p99", "max", "s", "failed"]
    print_table(
        f"Event-loop lag ms (1 ms ticker), n={args.n}, median (min-max) of {args.runs} runs",
        ["phase", "lag p50", "lag p99", "lag max", "phase wall s", "failed submits"],
        [[phase, *(fmt(v[c], 2) for c in cols)] for phase, v in rows.items()],
    )
    write_json(args.json, {"machine": info, "runs": args.runs, "results": rows})


if __name__ == "__main__":
    main()
