"""``vocalborn-tasks metrics`` as Prometheus scrapes it: a real HTTP server, parsed text format.

Uses the session server and the module's shared worker (databases 0 and 1): runs a few echo
tasks, one failure and one real analysis, then checks every documented series is served with
the values those runs imply, from the CLI's server and from the ASGI app a host would mount.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import WorkerProcess, wait_for_runs, wait_until
from vocalborn_tasks import AnalysisRequest, TaskManager, TaskSettings
from vocalborn_tasks.embedded import die_with_parent, free_port
from vocalborn_tasks.metrics import METRIC_NAMES, metrics_asgi_app
from vocalborn_tasks.samples import sample_path
from vocalborn_tasks.tasks import echo

pytestmark = pytest.mark.integration


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)] of a Prometheus text exposition."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def value(found: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    matches = [
        v for lab, v in found.get(name, []) if all(lab.get(k) == x for k, x in labels.items())
    ]
    assert len(matches) == 1, (name, labels, found.get(name))
    return matches[0]


@pytest.fixture(scope="module")
def exporter(
    redis_url: str, worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "CELERY_"))}
    env["REDIS_URL"] = redis_url
    log = tmp_path_factory.mktemp("metrics") / "metrics.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vocalborn_tasks", "metrics", "--port", str(port)],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    try:

        def answers() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5):
                    return True
            except OSError:
                return False

        wait_until(answers, 30, interval=0.1, what="metrics server")
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    assert proc.returncode == 0, log.read_text()


async def test_metrics_endpoint_serves_documented_series(
    base_settings: TaskSettings, worker: WorkerProcess, exporter: int
) -> None:
    async with TaskManager(base_settings) as manager:
        for i in range(2):
            await manager.wait_for_result(await manager.submit(echo, f"m{i}"), timeout=30)
        bad = await manager.submit(echo, "bad", delay_s="soon")  # type: ignore[arg-type]
        with pytest.raises(Exception):  # noqa: B017, PT011 - refused on the worker
            await manager.wait_for_result(bad, timeout=30)
        task_id = await manager.submit_audio_analysis(
            AnalysisRequest(
                practice_record_id="metrics-1",
                recording=str(sample_path("en_other_voice")),
                reference=str(sample_path("en_reference")),
                language="en",
            ),
            force=True,
        )
        result = await manager.wait_for_result(task_id, timeout=120)
    await wait_for_runs(base_settings, "vocalborn.analyze_audio", "success", 1)
    await wait_for_runs(base_settings, "vocalborn.test", "failure", 1)
    await wait_for_runs(base_settings, "vocalborn.test", "success", 2)

    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{exporter}/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)

    names = set(found)
    for name in METRIC_NAMES:
        assert name in names or f"{name}_bucket" in names, (name, sorted(names))

    assert value(found, "vocalborn_up") == 1
    assert value(found, "vocalborn_workers") == 1
    assert value(found, "vocalborn_worker_pool_processes", worker=worker.hostname) == 2
    assert value(found, "vocalborn_worker_memory_bytes", worker=worker.hostname) > 0
    for queue in ("ai_analysis", "maintenance", "health"):
        assert value(found, "vocalborn_queue_length", queue=queue) == 0
        assert value(found, "vocalborn_queue_consumers", queue=queue) == 1
    assert value(found, "vocalborn_tasks_total", task="vocalborn.test", state="success") >= 2
    assert value(found, "vocalborn_tasks_total", task="vocalborn.test", state="failure") >= 1
    assert (
        value(found, "vocalborn_tasks_total", task="vocalborn.analyze_audio", state="success") >= 1
    )
    count = value(found, "vocalborn_task_duration_seconds_count", task="vocalborn.test")
    assert count >= 3
    assert (
        value(found, "vocalborn_task_duration_seconds_bucket", task="vocalborn.test", le="+Inf")
        == count
    )
    assert value(found, "vocalborn_analysis_score_count", dimension="overall") >= 1
    assert value(found, "vocalborn_analysis_score_sum", dimension="overall") >= result.overall_score
    assert value(found, "vocalborn_analysis_level_total", level=str(result.level)) >= 1
    assert value(found, "vocalborn_redis_used_memory_bytes") > 0
    assert value(found, "vocalborn_health_status") in (0, 1)


async def test_metrics_mounted_in_a_host_asgi_app(
    base_settings: TaskSettings, worker: WorkerProcess
) -> None:
    app = metrics_asgi_app(base_settings)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://host"
    ) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    found = samples(response.text)
    assert value(found, "vocalborn_up") == 1
    assert value(found, "vocalborn_workers") == 1
