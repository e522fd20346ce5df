"""Every Python block of README.md runs, as a script, against the test server and a real worker.

A block that says "Save this as NAME.py" is written under that name; the block that is a worker
app module (it mentions ``celery -A``) is also started as the worker, so the custom task it
defines is registered next to the built-in ones and every block has a worker to talk to.
Also checked: the extras the README names exist in pyproject, and the Quick start keeps
exactly its two set-up commands.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import ROOT, WorkerProcess, flush, settings_env
from vocalborn_tasks import TaskSettings

pytestmark = pytest.mark.integration

README = ROOT / "README.md"
SCRIPT_TIMEOUT_S = 120.0


def python_blocks() -> list[tuple[str, str]]:
    """``(file name, code)`` of each python block, named as the README tells the reader to."""
    text = README.read_text(encoding="utf-8")
    blocks: list[tuple[str, str]] = []
    for i, match in enumerate(re.finditer(r"```python\n(.*?)```", text, re.S)):
        before = text[: match.start()].rstrip().rsplit("\n\n", 1)[-1]
        named = re.search(r"[Ss]ave this as `(\w+)\.py`", before)
        blocks.append((f"{named.group(1)}.py" if named else f"readme_block_{i}.py", match.group(1)))
    return blocks


BLOCKS = python_blocks()


class ReadmeWorker(WorkerProcess):
    """``celery -A <the README's worker module> worker``, run from the directory of the blocks."""

    def __init__(self, settings: TaskSettings, *, module: str, cwd: Path, log_dir: Path) -> None:
        super().__init__(settings, name="readme", concurrency=2, log_dir=log_dir)
        self.app_module = module
        self.cwd = cwd

    def start(self, *, wait: bool = True, timeout: float = 60.0) -> ReadmeWorker:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "TASK_", "CELERY_"))
        }
        env.update(settings_env(self.settings))
        env["REMAP_SIGTERM"] = "SIGQUIT"
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            self.app_module,
            "worker",
            "--queues",
            self.queues,
            "--concurrency",
            str(self.concurrency),
            "--hostname",
            self.hostname,
            "--without-gossip",
            "--without-mingle",
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if wait:
            self.wait_ready(timeout)
        return self


@pytest.fixture(scope="module")
def blocks_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("readme")
    for name, code in BLOCKS:
        (where / name).write_text(code, encoding="utf-8")
    return where


@pytest.fixture(scope="module")
def readme_worker(
    base_settings: TaskSettings, blocks_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ReadmeWorker]:
    modules = [Path(name).stem for name, code in BLOCKS if "celery -A" in code]
    assert len(modules) == 1, f"expected one worker app module among the README blocks: {modules}"
    flush(base_settings)
    worker = ReadmeWorker(
        base_settings,
        module=modules[0],
        cwd=blocks_dir,
        log_dir=tmp_path_factory.mktemp("readme-logs"),
    )
    try:
        worker.start()
        yield worker
    finally:
        worker.stop()


def test_readme_has_the_blocks_we_expect() -> None:
    assert len(BLOCKS) >= 2
    assert any("submit_audio_analysis" in code for _, code in BLOCKS)
    assert any(name == "count_words.py" for name, _ in BLOCKS)


@pytest.mark.parametrize(("name", "code"), BLOCKS, ids=[name for name, _ in BLOCKS])
def test_readme_block_runs(
    name: str, code: str, redis_url: str, blocks_dir: Path, readme_worker: ReadmeWorker
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "CELERY_"))}
    env["REDIS_URL"] = redis_url
    proc = subprocess.run(
        [sys.executable, name],
        cwd=blocks_dir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, (
        f"{name}: exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}\n"
        f"worker log:\n{readme_worker.log_tail()}"
    )
    assert proc.stdout.strip(), f"{name} printed nothing"
    if "submit_audio_analysis" in code:
        assert "SUCCESS" in proc.stdout, proc.stdout
    if name == "count_words.py":
        assert proc.stdout.strip().splitlines()[-1] == "3", proc.stdout


def test_readme_extras_exist_and_quick_start_has_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
            "optional-dependencies"
        ]
    )
    named = set(re.findall(r"\.\[([a-z,]+)\]", text))
    for group in named:
        assert set(group.split(",")) <= extras, group
    assert {"all", "metrics", "flower", "embedded"} <= extras
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", quick, re.S)
    assert len(commands) == 2, commands
    assert commands[0].strip().endswith("vocalborn-tasks demo")
    assert commands[1].strip().endswith("pytest")
