"""Event-loop lag while a host submits 1,000 tasks and serves other coroutines.

``python benchmarks/bench_loop_lag.py [--runs 3] [--n 1000] [--json out.json]
[--server-binary /usr/bin/redis-server] [--nice-workers] [--only-analyses]``

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

Two more phases measure the analysis submit path (issue 21) with no worker running at all,
so nothing competes for the cores but the server:

* first analysis submit of a process: a fresh interpreter opens a ``TaskManager`` (its
  ``async with``), then submits one analysis; the longest stall of each step is reported
  (open pays the one-off imports by design);
* TaskManager, ``n`` analyses: ``submit_audio_analysis`` one after the other (two 1 s WAV
  files, distinct practice records), nothing awaited.

``--only-analyses`` runs only those two.

``--nice-workers`` runs the worker at nice 19: on two shared cores the worker processes
otherwise preempt the host's loop, and the lag then measures the machine, not the library.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
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


def analysis_request(rec: Path, ref: Path, record: str) -> Any:
    from vocalborn_tasks import AnalysisRequest

    return AnalysisRequest(practice_record_id=record, recording=str(rec), reference=str(ref))


async def analyses_run(url: str, rec: Path, ref: Path, n: int) -> dict[str, dict[str, float]]:
    """The idle floor, then ``n`` sequential analysis submits, with no worker running."""
    from vocalborn_tasks import TaskManager, TaskSettings

    async with TaskManager(TaskSettings(redis_url=url)) as manager:
        for i in range(10):
            await manager.submit_audio_analysis(analysis_request(rec, ref, f"warm-{i}"))
        idle = await measure(lambda: asyncio.sleep(1.0))

        async def submits() -> None:
            for i in range(n):
                await manager.submit_audio_analysis(analysis_request(rec, ref, f"lag-{i}"))

        return {"idle": idle, "submits": await measure(submits)}


async def first_submit(url: str, rec: Path, ref: Path) -> dict[str, float]:
    """In a fresh process: the longest stall while opening, then during the first submit."""
    from vocalborn_tasks import TaskManager, TaskSettings

    assert "numpy" not in sys.modules, "the fresh process must not have imported numpy yet"
    manager = TaskManager(TaskSettings(redis_url=url))

    async def open_() -> None:
        await manager.__aenter__()
        await manager.ping()

    opened = await measure(open_)
    await asyncio.sleep(0.2)
    first = await measure(
        lambda: manager.submit_audio_analysis(analysis_request(rec, ref, "first"), force=True)
    )
    await manager.aclose()
    return {
        "open max": opened["max"],
        "open s": opened["s"],
        "first submit max": first["max"],
        "first submit s": first["s"],
    }


def first_submit_in_fresh_process(url: str, rec: Path, ref: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--first-submit", url, str(rec), str(ref)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


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
    if len(sys.argv) == 5 and sys.argv[1] == "--first-submit":
        url, rec, ref = sys.argv[2:]
        print(json.dumps(asyncio.run(first_submit(url, Path(rec), Path(ref)))))
        return
    p = parser(__doc__ or "", n_default=1000)
    p.add_argument(
        "--nice-workers",
        action="store_true",
        help="run the worker at nice 19, so the host loop is not preempted by it: separates "
        "what the library blocks from what two shared cores cost",
    )
    p.add_argument(
        "--only-analyses",
        action="store_true",
        help="only the analysis submit phases (first submit of a process, n analyses), which "
        "run with no worker",
    )
    args = p.parse_args()
    from bench_analysis_tasks import make_pair  # numpy: not in the --first-submit process

    audio = Path(tempfile.mkdtemp(prefix="vocalborn-bench-audio-"))
    rec, ref = make_pair(audio, 1.0)
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
            # No worker runs during these two phases: only the caller and the server.
            first = first_submit_in_fresh_process(url, rec, ref)
            rows["first analysis submit of a process (no worker)"]["max"].append(
                first["first submit max"]
            )
            rows["first analysis submit of a process (no worker)"]["s"].append(
                first["first submit s"]
            )
            rows["TaskManager open, fresh process (no worker)"]["max"].append(first["open max"])
            rows["TaskManager open, fresh process (no worker)"]["s"].append(first["open s"])
            flush_all(url)
            res_a = asyncio.run(analyses_run(url, rec, ref, args.n))
            for k, v in res_a["idle"].items():
                rows["idle (1 s, no worker)"][k].append(v)
            for k, v in res_a["submits"].items():
                rows["TaskManager submit_audio_analysis x n (no worker)"][k].append(v)
            print(f"run {run + 1}: first {first}, analyses {res_a}", flush=True)
            flush_all(url)
            if args.only_analyses:
                continue
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
