"""``vocalborn-tasks flower``: refuses to start without credentials, loopback by default, and
answers 401 without credentials and 200 with them (real Flower, real HTTP)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support import WorkerProcess, wait_until
from vocalborn_tasks.embedded import die_with_parent, free_port

pytestmark = pytest.mark.integration

USER, PASSWORD = "ops", "correct-horse-battery"


def flower_env(redis_url: str, auth: str | None) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "CELERY_", "FLOWER_"))
    }
    env["REDIS_URL"] = redis_url
    if auth is not None:
        env["FLOWER_BASIC_AUTH"] = auth
    return env


@pytest.fixture(scope="module")
def flower(
    redis_url: str, worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    port = free_port()
    cwd = tmp_path_factory.mktemp("flower")
    log = cwd / "flower.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vocalborn_tasks", "flower", "--port", str(port)],
            env=flower_env(redis_url, f"{USER}:{PASSWORD}"),
            cwd=cwd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    try:

        def answers() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return (
                    httpx.get(f"http://127.0.0.1:{port}/healthcheck", timeout=5).status_code == 200
                )
            except httpx.HTTPError:
                return False

        wait_until(answers, 60, interval=0.2, what="flower")
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def test_flower_requires_credentials(flower: int) -> None:
    base = f"http://127.0.0.1:{flower}"
    for path in ("/", "/workers", "/api/workers"):
        assert httpx.get(base + path, timeout=30).status_code == 401, path
        wrong = httpx.get(base + path, auth=(USER, "wrong-password"), timeout=30)
        assert wrong.status_code == 401, path
    ok = httpx.get(base + "/", auth=(USER, PASSWORD), timeout=30)
    assert ok.status_code == 200
    assert "Flower" in ok.text


def test_flower_binds_loopback_only(flower: int) -> None:
    listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    sockets = [
        line.split()[3] for line in listening.splitlines() if line.split()[3].endswith(f":{flower}")
    ]
    assert sockets == [f"127.0.0.1:{flower}"], listening


@pytest.mark.parametrize("auth", [None, "", "ops", "ops:short"])
def test_flower_refuses_to_start_without_usable_credentials(
    redis_url: str, tmp_path: Path, auth: str | None
) -> None:
    port = free_port()
    proc = subprocess.run(
        [sys.executable, "-m", "vocalborn_tasks", "flower", "--port", str(port)],
        env=flower_env(redis_url, auth),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "FLOWER_BASIC_AUTH" in proc.stderr
    assert "Traceback" not in proc.stderr
