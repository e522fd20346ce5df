"""The record's typed calls against their scripts' headers, and the record as sole caller.

Each ``.lua`` file documents its KEYS and ARGV by name in its header; each builder of
:mod:`vocalborn_tasks.record.calls` names what it passes. They must agree name for name: a
builder that passes arguments in another order than the script reads them fails here, not in
production.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vocalborn_tasks.record import (
    FINAL_STATES,
    PRIORITY_SEP,
    PRIORITY_STEPS,
    SCRIPT_NAMES,
    RecordKeys,
    calls,
    script_header,
    script_source,
)

KEYS = RecordKeys("t")
TASK = "0190c3a8-0000-7000-8000-000000000001"

SAMPLES: dict[str, Callable[[], calls.ScriptCall[Any]]] = {
    "submit": lambda: calls.submit(
        KEYS, task_id=TASK, task_name="n", queue="q", message="{}", marker_ttl_s=9, broker_db=0
    ),
    "claim": lambda: calls.claim(
        KEYS,
        task_id=TASK,
        task_name="n",
        queue="q",
        practice_record_id="r",
        message="{}",
        marker_ttl_s=9,
        broker_db=0,
    ),
    "reserve": lambda: calls.reserve(KEYS, lists=["a", "b"], token="", acks=["x"]),
    "begin": lambda: calls.begin(
        KEYS,
        task_id=TASK,
        retries=0,
        hostname="h",
        running_entry="{}",
        deliveries_ttl_s=9,
        meta_ttl_s=9,
    ),
    "progress": lambda: calls.progress(KEYS, task_id=TASK, step="s", percent=1.0, meta_ttl_s=9),
    "store": lambda: calls.store(
        KEYS,
        task_id=TASK,
        meta="{}",
        meta_ttl_s=9,
        state="SUCCESS",
        stats=None,
        delivery_tag="tag",
        broker_db=0,
        result_db=1,
    ),
    "retry": lambda: calls.retry(
        KEYS,
        task_id=TASK,
        retry=1,
        meta="{}",
        meta_ttl_s=9,
        queue="q",
        priority=0,
        message="{}",
        stats=None,
        delivery_tag="tag",
        broker_db=0,
        result_db=1,
    ),
    "revoke": lambda: calls.revoke(KEYS, task_id=TASK, meta_ttl_s=9),
    "purge": lambda: calls.purge(KEYS, queue="q", limit=5, broker_db=0, result_db=1, meta_ttl_s=9),
    "restore": lambda: calls.restore(KEYS, delivery_tag="tag"),
    "release": lambda: calls.release(key="k", token="t"),
    "lock": lambda: calls.lock(key="k", token="t", ttl_ms=9),
    "position": lambda: calls.position(queue="q", task_id=TASK),
    "epoch": lambda: calls.epoch(KEYS),
    "take_name": lambda: calls.take_name(KEYS, name="w@h", pid=1, machine="h", ttl_ms=9),
}


def header_names(name: str, what: str) -> list[str]:
    """The names a script's header lists after ``-- KEYS:`` or ``-- ARGV:``.

    A list may go on over following comment lines indented by at least two spaces; text in
    parentheses is commentary; ``(none)`` is an empty list.
    """
    lines = script_header(name).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"-- {what}:"))
    text = lines[start].split(":", 1)[1]
    for line in lines[start + 1 :]:
        if not re.match(r"^--\s{2,}\S", line):
            break
        text += " " + line[2:]
    text = re.sub(r"\([^)]*\)", "", text)
    return [part.strip() for part in re.split(r"[,;]", text) if part.strip()]


def test_every_script_has_one_builder() -> None:
    assert sorted(SAMPLES) == sorted(SCRIPT_NAMES)
    for name in SCRIPT_NAMES:
        assert callable(getattr(calls, name)), name


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_builder_matches_script_header(name: str) -> None:
    call = SAMPLES[name]()
    assert call.script == name
    assert list(call.key_names) == header_names(name, "KEYS")
    assert list(call.arg_names) == header_names(name, "ARGV")
    variadic = call.key_names[-1].endswith("...") if call.key_names else False
    fixed = len(call.key_names) - (1 if variadic else 0)
    if variadic:
        assert len(call.keys) >= fixed
    else:
        assert len(call.keys) == fixed
    assert len(call.args) == len(call.arg_names)


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_script_reads_no_argument_or_key_beyond_its_header(name: str) -> None:
    body = script_header(name)
    argv = {int(n) for n in re.findall(r"ARGV\[(\d+)\]", body)}
    assert argv <= set(range(1, len(header_names(name, "ARGV")) + 1))
    keys = {int(n) for n in re.findall(r"KEYS\[(\d+)\]", body)}
    names = header_names(name, "KEYS")
    if not (names and names[-1].endswith("...")):
        assert keys <= set(range(1, len(names) + 1))


@pytest.mark.parametrize("priority", range(10))
def test_queue_list_is_the_highest_step_not_above_the_priority(priority: int) -> None:
    """As kombu's ``Channel._q_for_pri`` (and the prelude's ``priority_list``) name it."""
    step = max((s for s in PRIORITY_STEPS if s <= priority), default=0)
    expected = f"q{PRIORITY_SEP}{step}" if step else "q"
    assert RecordKeys.queue_list("q", priority) == expected
    assert expected in RecordKeys.queue_lists("q")


def test_command_renders_evalsha_and_eval() -> None:
    call = calls.reserve(KEYS, lists=["a"], token="", acks=[])
    by_sha = call.command()
    assert (
        by_sha[0] == "EVALSHA"
        and by_sha[2] == 3
        and by_sha[3:6]
        == (
            KEYS.unacked,
            KEYS.unacked_index,
            "a",
        )
    )
    by_source = call.command(by_source=True)
    assert by_source[0] == "EVAL" and by_source[1] == script_source("reserve")


def test_generated_prelude_carries_the_python_rules() -> None:
    source = script_source("begin")
    finals = re.search(r"local FINAL = \{([^}]*)\}", source)
    assert finals is not None
    assert set(re.findall(r"(\w+) = true", finals.group(1))) == set(FINAL_STATES)
    steps = re.search(r"local PRIORITY_STEPS = \{([^}]*)\}", source)
    assert steps is not None
    assert tuple(int(s) for s in steps.group(1).split(",")) == PRIORITY_STEPS
    sep = re.search(r"local PRIORITY_SEP = '([^']*)'", source)
    assert sep is not None
    assert bytes(int(n) for n in re.findall(r"\\(\d{3})", sep.group(1))).decode() == PRIORITY_SEP


SRC = Path(__file__).resolve().parents[2] / "src" / "vocalborn_tasks"


def _script_calls_outside_record() -> list[str]:
    """Places outside ``record/`` that run a script by hand (derived from the code)."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if "record" in path.relative_to(SRC).parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            where = f"{path.relative_to(SRC)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Attribute) and node.attr in {
                "register_script",
                "evalsha",
                "eval",
                "script_load",
                "fcall",
            }:
                found.append(f"{where} .{node.attr}")
            elif isinstance(node, ast.Name | ast.Attribute) and (
                getattr(node, "id", None) in {"ScriptSet", "script_source", "script_sha"}
                or getattr(node, "attr", None) in {"ScriptSet", "script_source", "script_sha"}
            ):
                found.append(f"{where} {getattr(node, 'id', getattr(node, 'attr', ''))}")
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value.upper() in {"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO"}
            ):
                found.append(f"{where} {node.value!r}")
    return found


def test_only_the_record_runs_scripts() -> None:
    # The transport names EVALSHA once to parse the reply it reads later: that is all.
    calls_found = _script_calls_outside_record()
    found = [f for f in calls_found if not f.startswith("worker/transport.py")]
    assert found == []
    transport = [f for f in calls_found if f.startswith("worker/transport.py")]
    assert [f.rsplit(" ", 1)[1] for f in transport] == ["'EVALSHA'"]
