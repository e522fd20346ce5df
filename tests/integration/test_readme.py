"""Every Python block of README.md runs, as a script, against the test server and a real worker.

A block that says "Save this as NAME.py" is written under that name; the worker is started with
``--include`` of every block that defines a task, as the README says, so the custom task is
registered next to the built-in ones and every block has a worker to talk to. A block without
output (the web service) must at least run to its end.
Also checked: the extras the README names exist in pyproject, and the Quick start keeps
exactly its two set-up commands.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import ROOT, WorkerProcess, flush
from vocalborn_tasks import TaskSettings
from vocalborn_tasks.samples import sample_path

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


@pytest.fixture(scope="module")
def blocks_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("readme")
    for name, code in BLOCKS:
        (where / name).write_text(code, encoding="utf-8")
    return where


@pytest.fixture(scope="module")
def readme_worker(
    base_settings: TaskSettings, blocks_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """``vocalborn-tasks worker --include <each block that defines a task>``, as the README says."""
    includes: list[str] = []
    for name, code in BLOCKS:
        if "@task_definition" in code:
            includes += ["--include", Path(name).stem]
    assert includes, "no README block defines a task"
    flush(base_settings)
    worker = WorkerProcess(
        base_settings,
        name="readme",
        concurrency=2,
        args=tuple(includes),
        extra_env={"PYTHONPATH": str(blocks_dir)},
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
    name: str,
    code: str,
    redis_url: str,
    blocks_dir: Path,
    readme_worker: WorkerProcess,
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "CELERY_"))}
    env["REDIS_URL"] = redis_url
    # The web block's settings comment asks for these; the others do not mind them.
    env["RECORDING_ROOTS"] = json.dumps([str(tmp_path), str(sample_path("en_reference").parent)])
    env["UPLOAD_DIR"] = str(tmp_path / "uploads")
    env["REFERENCE_DIR"] = str(sample_path("en_reference").parent)
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
    if "print(" in code:
        assert proc.stdout.strip(), f"{name} printed nothing"
    if "submit_audio_analysis" in code:
        assert "SUCCESS" in proc.stdout, proc.stdout
    if name == "count_words.py":
        assert proc.stdout.strip().splitlines()[-1] == "3", proc.stdout
    if name.startswith("test_"):
        # A test block runs as the README says: pytest, with the testing plugin's own server and
        # worker (pytest-asyncio off: anyio's plugin runs it, as with only [testing] installed).
        web = ("RECORDING_ROOTS", "UPLOAD_DIR", "REFERENCE_DIR")
        env = {k: v for k, v in env.items() if k not in web}
        tested = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:asyncio", name],
            cwd=blocks_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT_S,
            check=False,
        )
        assert tested.returncode == 0, f"{name}:\n{tested.stdout}\n{tested.stderr}"
        assert "1 passed" in tested.stdout, tested.stdout


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
