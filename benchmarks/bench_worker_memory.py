"""Worker memory: RSS and PSS of the main and pool processes, idle and after analyses.

``python benchmarks/bench_worker_memory.py [--runs 3] [--n 1000] [--seconds 1]
[--json out.json] [--server-binary /usr/bin/redis-server]``

Per run: a library worker (prefork, 2 pool processes, library defaults including
``max_tasks_per_child``) and, for comparison, a raw Celery worker with default settings
(prefork 2, no analysis engine). Memory comes from ``/proc/<pid>/smaps_rollup`` (Rss, Pss)
of every process of each worker; "idle" is after start-up plus one analysis per pool process
(engine imported); "after" is after ``n`` analyses of short (``--seconds``) recordings.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
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
    tree,
    write_json,
)
from bench_analysis_tasks import make_pair


def rollup(pid: int) -> tuple[float, float]:
    """(Rss, Pss) in MiB."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if parts[0] == "Rss:":
            rss = int(parts[1])
        elif parts[0] == "Pss:":
            pss = int(parts[1])
    return rss / 1024, pss / 1024


def snapshot(proc: Proc) -> dict[str, float]:
    pids = tree(proc.pid)
    main_rss, main_pss = rollup(pids[0])
    kids = [rollup(p) for p in pids[1:]]
    return {
        "main RSS MiB": main_rss,
        "main PSS MiB": main_pss,
        "pool RSS MiB (max)": max((k[0] for k in kids), default=0.0),
        "pool PSS MiB (max)": max((k[1] for k in kids), default=0.0),
        "total PSS MiB": main_pss + sum(k[1] for k in kids),
        "processes": float(len(pids)),
    }


async def analyses(url: str, rec: Path, ref: Path, n: int, tag: str) -> None:
    from vocalborn_tasks import AnalysisRequest, TaskManager, TaskSettings

    async with TaskManager(TaskSettings(redis_url=url)) as manager:
        ids = [
            await manager.submit_audio_analysis(
                AnalysisRequest(
                    practice_record_id=f"{tag}-{i}", recording=str(rec), reference=str(ref)
                )
            )
            for i in range(n)
        ]
        await asyncio.gather(*(manager.wait_for_result(i, timeout=900) for i in ids))


def main() -> None:
    p = parser(__doc__ or "", n_default=1000)
    p.add_argument("--seconds", type=float, default=1.0, help="length of both recordings")
    args = p.parse_args()
    rows: dict[str, list[float]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="vocalborn-bench-audio-") as tmp:
        rec, ref = make_pair(Path(tmp), args.seconds)
        with local_server(args.server_binary) as server:
            url = server.url
            info = {**machine(), "server": server_version(url), "n": args.n}
            print(info)
            env = bench_env(url, {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
            for run in range(args.runs):
                flush_all(url)
                plain = Proc(
                    f"mem-plain-{run}",
                    [sys.executable, "-m", "celery", "-A", "celery_plain", "worker", "-c", "2"],
                    env,
                )
                time.sleep(5)
                plain.check()
                for k, v in snapshot(plain).items():
                    rows[f"Celery defaults idle: {k}"].append(v)
                plain.stop()
                cmd = library_worker_cmd(pool="prefork", concurrency=2, queues="ai_analysis")
                worker = Proc(f"mem-{run}", cmd, env)
                try:
                    asyncio.run(analyses(url, rec, ref, 4, f"w{run}"))
                    time.sleep(1)
                    for k, v in snapshot(worker).items():
                        rows[f"library idle: {k}"].append(v)
                    t = time.perf_counter()
                    asyncio.run(analyses(url, rec, ref, args.n, f"r{run}"))
                    print(f"run {run + 1}: {args.n} analyses in {time.perf_counter() - t:.1f} s")
                    time.sleep(1)
                    for k, v in snapshot(worker).items():
                        rows[f"library after {args.n}: {k}"].append(v)
                finally:
                    worker.stop()
    print_table(
        f"Worker memory, median (min-max) of {args.runs} runs",
        ["measure", "value"],
        [[k, fmt(v, 1)] for k, v in rows.items()],
    )
    write_json(args.json, {"machine": info, "runs": args.runs, "results": rows})


if __name__ == "__main__":
    main()
