"""No-op throughput: enqueue rate, end-to-end tasks/s, worker/server CPU and commands per task.

``python benchmarks/bench_throughput.py [--runs 3] [--n 5000] [--json out.json]
[--server-binary /usr/bin/redis-server] [--only NAME] [--no-peers] [--library-log-level WARNING]``

Starts one server on loopback and, per run, every worker configuration in turn (see
``_systems.py``): the library's worker (prefork 2 and solo) measured through ``TaskManager``
and through raw Celery ``send_task`` + ``AsyncResult.get()``; raw Celery with its default
settings (prefork 2, solo); taskiq + taskiq-redis and dramatiq (2 x 1 and 2 x 8 threads) when
installed. Each client submits ``n`` tasks, then awaits them all.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import Any

from _harness import (
    Proc,
    bench_env,
    commandstats,
    cpu_seconds,
    flush_all,
    fmt,
    local_server,
    machine,
    parser,
    print_table,
    reset_commandstats,
    self_cpu_seconds,
    server_version,
    slug,
    write_json,
)
from _systems import groups


def main() -> None:
    p = parser(__doc__ or "", n_default=5000)
    p.add_argument("--no-peers", action="store_true", help="skip taskiq and dramatiq")
    p.add_argument("--only", default=None, help="run only groups whose name contains this")
    p.add_argument(
        "--library-log-level",
        default=None,
        help="CELERY_LOG_LEVEL of the library's workers (default: the library's, INFO, which "
        "logs two lines per task; WARNING matches the Celery-defaults rows)",
    )
    args = p.parse_args()
    rows: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    cmds: dict[str, Counter[str]] = defaultdict(Counter)
    with local_server(args.server_binary) as server:
        url = server.url
        assert server.pid is not None
        server_pid = server.pid
        info: dict[str, Any] = {**machine(), "server": server_version(url), "n": args.n}
        print(info)
        selected = [g for g in groups(not args.no_peers) if not args.only or args.only in g.name]
        for run in range(args.runs):
            for group in selected:
                flush_all(url)
                extra = (
                    {"CELERY_LOG_LEVEL": args.library_log_level}
                    if args.library_log_level and group.name.startswith("library")
                    else {}
                )
                worker = Proc(f"{slug(group.name)}-{run}", group.cmd, bench_env(url, extra))
                try:
                    for label, client in group.clients:
                        marks: dict[str, float] = {}

                        def begin(worker: Proc = worker, marks: dict[str, float] = marks) -> None:
                            worker.check()
                            marks["worker"] = worker.cpu()
                            marks["server"] = cpu_seconds(server_pid)
                            marks["client"] = self_cpu_seconds()
                            reset_commandstats(url)

                        started = time.perf_counter()
                        res = client(url, "throughput", args.n, begin)
                        stats = commandstats(url)
                        n = args.n
                        r = rows[label]
                        r["enqueue/s"].append(n / res["enqueue_s"])
                        r["tasks/s"].append(n / res["total_s"])
                        r["worker CPU ms/task"].append((worker.cpu() - marks["worker"]) * 1000 / n)
                        r["server CPU ms/task"].append(
                            (cpu_seconds(server_pid) - marks["server"]) * 1000 / n
                        )
                        r["client CPU ms/task"].append(
                            (self_cpu_seconds() - marks["client"]) * 1000 / n
                        )
                        r["commands/task"].append(sum(stats.values()) / n)
                        cmds[label].update(stats)
                        print(
                            f"run {run + 1}: {label}: {n / res['enqueue_s']:,.0f} enq/s, "
                            f"{n / res['total_s']:,.0f} tasks/s, "
                            f"{sum(stats.values()) / n:.1f} cmds/task "
                            f"({time.perf_counter() - started:.1f} s)",
                            flush=True,
                        )
                finally:
                    worker.stop()
    cols = [
        "enqueue/s",
        "tasks/s",
        "worker CPU ms/task",
        "server CPU ms/task",
        "client CPU ms/task",
        "commands/task",
    ]
    print_table(
        f"No-op throughput, n={args.n}, median (min-max) of {args.runs} runs",
        ["system", *cols],
        [
            [label, *(fmt(v[c], 0 if c.endswith("/s") else 2) for c in cols)]
            for label, v in rows.items()
        ],
    )
    per_task: dict[str, dict[str, float]] = {}
    for label, counter in cmds.items():
        total_n = args.n * args.runs
        per_task[label] = {
            k: round(v / total_n, 2) for k, v in counter.most_common() if v / total_n >= 0.05
        }
        print(f"\ncommands per task, {label}: {per_task[label]}")
    write_json(
        args.json,
        {"machine": info, "runs": args.runs, "results": rows, "commands_per_task": per_task},
    )


if __name__ == "__main__":
    main()
