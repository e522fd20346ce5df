"""The real workload: analyses per minute per worker process, and the system's share of it.

``python benchmarks/bench_analysis_tasks.py [--runs 3] [--n 200] [--seconds 5]
[--json out.json] [--server-binary /usr/bin/redis-server]``

Builds a recording/reference pair of ``--seconds`` s from the bundled espeak-ng samples
(``vocalborn_tasks.samples``, tiled with numpy + soundfile into a temporary directory),
starts one library worker (solo pool: one process; ``--pool prefork``: ``--concurrency``
processes) and queues ``n`` analyses through ``TaskManager.submit_audio_analysis`` (distinct
practice record ids), awaiting them all.

* analyses/min per worker process = n / wall time of the batch / processes (queue kept full);
* share outside the analysis = 1 - sum(result.processing_time_s) / (wall time x processes):
  queueing, messaging, state writes, validation, file checks and (de)serialisation,
  everything the task system adds around the engine on a busy worker.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf
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

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "vocalborn_tasks" / "samples"


def make_pair(directory: Path, seconds: float) -> tuple[Path, Path]:
    out = []
    for name in ("en_other_voice.flac", "en_reference.flac"):
        x, rate = sf.read(SAMPLES / name, dtype="float64")
        reps = int(np.ceil(seconds * rate / x.size))
        y = np.tile(x, reps)[: int(seconds * rate)]
        path = directory / name.replace(".flac", f"_{seconds:g}s.wav")
        sf.write(path, y, rate, subtype="PCM_16")
        out.append(path)
    return out[0], out[1]


async def batch(
    url: str, rec: Path, ref: Path, n: int, tag: str, procs: int = 1
) -> dict[str, float]:
    from vocalborn_tasks import AnalysisRequest, TaskManager, TaskSettings

    async with TaskManager(TaskSettings(redis_url=url)) as manager:

        def request(i: int) -> AnalysisRequest:
            return AnalysisRequest(
                practice_record_id=f"{tag}-{i}", recording=str(rec), reference=str(ref)
            )

        for i in range(3):  # warm-up (imports, reference cache), waits for the worker
            await manager.wait_for_result(
                await manager.submit_audio_analysis(request(-1 - i)), timeout=300
            )
        single: list[float] = []
        single_engine: list[float] = []
        for i in range(5):  # sequential round trips on an idle worker
            t = time.perf_counter()
            r = await manager.wait_for_result(
                await manager.submit_audio_analysis(request(10_000 + i)), timeout=300
            )
            single.append(time.perf_counter() - t)
            single_engine.append(r.processing_time_s)
        t0 = time.perf_counter()
        ids = [await manager.submit_audio_analysis(request(i)) for i in range(n)]
        results = await asyncio.gather(*(manager.wait_for_result(i, timeout=900) for i in ids))
        wall = time.perf_counter() - t0
    engine = sum(r.processing_time_s for r in results)
    return {
        "analyses/min/process": n / wall * 60 / procs,
        "engine s/analysis": engine / n,
        "task s/analysis (wall/n)": wall / n,
        "share outside analysis %": 100 * (1 - engine / (wall * procs)),
        "idle round trip s": float(np.median(single)),
        "idle round trip outside analysis %": 100
        * (1 - float(np.median(single_engine)) / float(np.median(single))),
    }


def main() -> None:
    p = parser(__doc__ or "", n_default=200)
    p.add_argument("--seconds", type=float, default=5.0, help="length of both recordings")
    p.add_argument(
        "--pool",
        choices=("solo", "prefork"),
        default="solo",
        help="worker pool: solo (one process) or prefork with --concurrency processes",
    )
    p.add_argument("--concurrency", type=int, default=2, help="prefork processes (default 2)")
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
                procs = 1 if args.pool == "solo" else args.concurrency
                cmd = library_worker_cmd(pool=args.pool, concurrency=procs, queues="ai_analysis")
                worker = Proc(f"analysis-{run}", cmd, env)
                try:
                    res = asyncio.run(batch(url, rec, ref, args.n, f"r{run}", procs))
                finally:
                    worker.stop()
                for k, v in res.items():
                    rows[k].append(v)
                print(f"run {run + 1}: {res}", flush=True)
    print_table(
        f"Analysis tasks, {args.seconds:g} s pairs, n={args.n}, worker pool {args.pool}"
        f"{'' if args.pool == 'solo' else f' {args.concurrency}'}, "
        f"median (min-max) of {args.runs} runs",
        ["measure", "value"],
        [[k, fmt(v, 3 if " s" in k else 1)] for k, v in rows.items()],
    )
    write_json(args.json, {"machine": info, "runs": args.runs, "results": rows})


if __name__ == "__main__":
    main()
