"""What confirming submits with replicas costs, and what it buys in a failover.

``python benchmarks/bench_confirmed_submit.py [--n 2000] [--runs 3] [--server-binary PATH]
[--loss-runs 2]``

Starts a master, two replicas and three sentinels on loopback (``SentinelGroup``) and, in the
same run, measures ``TaskManager.submit`` (an echo task, no worker) with
``REDIS_REPLICA_ACKS=0`` (no confirmation) and ``1`` (the default with sentinels):

- latency: ``n`` submits one after another, p50/p99 in ms;
- throughput: ``n`` submits 100 at a time (``asyncio.gather``), submits/s.

With ``--loss-runs``, it then counts acknowledged submits missing on the new master after a
manual ``SENTINEL FAILOVER`` under back-to-back submits, for three rules: no confirmation,
plain ``WAIT 1`` (the replica grace turned off), and the library's rule (``WAIT`` for every
replica seen on the same master in the last 5 s).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from typing import Any

import redis

from vocalborn_tasks import TaskManager
from vocalborn_tasks.config import TaskSettings
from vocalborn_tasks.embedded import SentinelGroup
from vocalborn_tasks.record import RecordKeys
from vocalborn_tasks.record import confirm as confirm_module
from vocalborn_tasks.tasks import echo


def _settings(group: SentinelGroup, acks: int) -> TaskSettings:
    return TaskSettings(_env_file=None, **group.settings_values(), redis_replica_acks=acks)


async def _latency(settings: TaskSettings, n: int) -> tuple[float, float]:
    samples = []
    async with TaskManager(settings) as manager:
        await manager.submit(echo, "warm")
        for _ in range(n):
            started = time.perf_counter()
            await manager.submit(echo, "x")
            samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


async def _throughput(settings: TaskSettings, n: int) -> float:
    async with TaskManager(settings) as manager:
        await manager.submit(echo, "warm")
        started = time.perf_counter()
        for _ in range(n // 100):
            await asyncio.gather(*(manager.submit(echo, "x") for _ in range(100)))
        return n / (time.perf_counter() - started)


async def _loss(group: SentinelGroup, acks: int, grace_s: float) -> tuple[int, int, float]:
    settings = _settings(group, acks)
    original = confirm_module.Confirmation.of

    def of(settings: Any) -> confirm_module.Confirmation | None:
        found = original(settings)
        if found is not None:
            found.grace_s = grace_s
        return found

    confirm_module.Confirmation.of = of  # type: ignore[method-assign,assignment]
    try:
        acknowledged: list[str] = []
        worst = 0.0
        done = threading.Event()
        thread = threading.Thread(target=lambda: (group.failover(), done.set()), daemon=True)
        async with TaskManager(settings) as manager:
            thread.start()
            while not done.is_set():
                started = time.perf_counter()
                try:
                    handle = await manager.submit(echo, "x")
                except Exception:
                    continue
                worst = max(worst, time.perf_counter() - started)
                acknowledged.append(handle.id)
        thread.join()
        port = group.wait_for_master()
        keys = RecordKeys.of(settings)
        client = redis.Redis(port=port, db=settings.redis_db_backend)
        pipe = client.pipeline(transaction=False)
        for task_id in acknowledged:
            pipe.exists(keys.marker(task_id))
        missing = sum(1 for there in pipe.execute() if not there)
        client.close()
        return missing, len(acknowledged), worst
    finally:
        confirm_module.Confirmation.of = original  # type: ignore[method-assign]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--loss-runs", type=int, default=0)
    parser.add_argument("--server-binary", default=None)
    args = parser.parse_args()
    with SentinelGroup(binary=args.server_binary) as group:
        rows: dict[int, list[tuple[float, float, float]]] = {0: [], 1: []}
        for _ in range(args.runs):
            for acks in (0, 1):
                settings = _settings(group, acks)
                p50, p99 = await _latency(settings, args.n)
                rate = await _throughput(settings, args.n)
                rows[acks].append((p50, p99, rate))
        print(f"n = {args.n}, median of {args.runs} runs")
        print("| confirming replicas | submit p50 ms | submit p99 ms | submits/s (100 at a time) |")
        print("|---|---|---|---|")
        for acks, runs in rows.items():
            p50 = statistics.median(r[0] for r in runs)
            p99 = statistics.median(r[1] for r in runs)
            rate = statistics.median(r[2] for r in runs)
            print(f"| {acks} | {p50:.3f} | {p99:.3f} | {rate:,.0f} |")
        if args.loss_runs:
            print("\n| rule | acknowledged submits lost in a manual failover | worst submit s |")
            print("|---|---|---|")
            for label, acks, grace in (
                ("no confirmation (acks 0)", 0, 0.0),
                ("plain WAIT 1 (no replica grace)", 1, 0.0),
                ("WAIT every replica seen in 5 s (ours)", 1, confirm_module.REPLICA_GRACE_S),
            ):
                for _ in range(args.loss_runs):
                    missing, total, worst = await _loss(group, acks, grace)
                    print(f"| {label} | {missing} of {total} | {worst:.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
