"""Sequential round trips (submit, then wait for the result): p50/p95/p99 in ms.

``python benchmarks/bench_latency.py [--runs 3] [--n 300] [--json out.json]
[--server-binary /usr/bin/redis-server] [--no-peers]``

The same systems as ``bench_throughput.py`` (``_systems.py``): ``TaskManager.submit`` +
``wait_for_result`` against ``send_task``/``apply_async`` + ``AsyncResult.get()`` on the
library's worker and on raw Celery defaults (solo and prefork 2), and against taskiq (1 ms
result checks) and dramatiq.
"""

from __future__ import annotations

from collections import defaultdict

from _harness import (
    Proc,
    bench_env,
    flush_all,
    fmt,
    local_server,
    machine,
    parser,
    percentile,
    print_table,
    server_version,
    slug,
    write_json,
)
from _systems import groups


def main() -> None:
    p = parser(__doc__ or "", n_default=300)
    p.add_argument("--no-peers", action="store_true", help="skip taskiq and dramatiq")
    p.add_argument("--only", default=None, help="run only groups whose name contains this")
    args = p.parse_args()
    rows: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with local_server(args.server_binary) as server:
        url = server.url
        info = {**machine(), "server": server_version(url), "n": args.n}
        print(info)
        selected = [g for g in groups(not args.no_peers) if not args.only or args.only in g.name]
        for run in range(args.runs):
            for group in selected:
                flush_all(url)
                name = f"lat-{slug(group.name)}-{run}"
                worker = Proc(name, group.cmd, bench_env(url))
                try:
                    for label, client in group.clients:
                        res = client(url, "latency", args.n, worker.check)
                        lat = sorted(res["latencies_ms"])
                        r = rows[label]
                        for q in (50, 95, 99):
                            r[f"p{q}"].append(percentile(lat, q))
                        r["max"].append(lat[-1])
                        print(
                            f"run {run + 1}: {label}: p50 {r['p50'][-1]:.2f} "
                            f"p99 {r['p99'][-1]:.2f} ms",
                            flush=True,
                        )
                finally:
                    worker.stop()
    cols = ["p50", "p95", "p99", "max"]
    print_table(
        f"Round trip ms, {args.n} sequential, median (min-max) of {args.runs} runs",
        ["system", *cols],
        [[label, *(fmt(v[c], 2) for c in cols)] for label, v in rows.items()],
    )
    write_json(args.json, {"machine": info, "runs": args.runs, "results": rows})


if __name__ == "__main__":
    main()
