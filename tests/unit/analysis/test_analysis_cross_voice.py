"""The cross-synthesizer set: its pairs (scripts/make_corpus.py) and its table
(scripts/evaluate_analysis.py), on hand-built entries and results (no audio, no Festival)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parents[3] / "scripts"


def _script(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def corpus() -> ModuleType:
    return _script("make_corpus")


@pytest.fixture(scope="module")
def evaluate() -> ModuleType:
    return _script("evaluate_analysis")


def test_cross_entries_every_ordered_pair_same_and_different(corpus: ModuleType) -> None:
    voices = [corpus.Voice("en-us", 130, 50), corpus.Voice("festival:kal", 0, 0)]
    sentences = [(f"s{i}", f"text {i}", i >= 4) for i in range(5)]
    rows = corpus.cross_entries(voices, sentences)
    assert len(rows) == 2 * 5 * 2  # ordered pairs x sentences x (same, different)
    assert {(r["reference_family"], r["family"]) for r in rows} == {
        ("espeak", "human"),
        ("human", "espeak"),
    }
    same = [r for r in rows if r["variant"] == "same"]
    assert all(r["sentence_id"] == r["reference_sentence_id"] for r in same)
    diff = [r for r in rows if r["variant"] == "different"]
    assert all(r["sentence_id"] != r["reference_sentence_id"] for r in diff)
    # the file a voice reads a sentence in is shared by every pair that uses it
    assert all(":" not in r["path"] and ":" not in r["reference_path"] for r in rows)
    assert {r["held_out"] for r in rows if r["reference_sentence_id"] == "s4"} == {True}


def test_cross_sentences_keep_each_lists_held_out_half(corpus: ModuleType) -> None:
    sentences = corpus.cross_sentences()
    assert len({sid for sid, _, _ in sentences}) == len(sentences)
    held = [sid for sid, _, h in sentences if h]
    assert 0 < len(held) < len(sentences)


def test_voice_family(corpus: ModuleType) -> None:
    assert corpus.voice_family(corpus.Voice("festival:slt", 0, 0)) == "human"
    assert corpus.voice_family(corpus.Voice("en-gb+m3", 125, 45)) == "espeak"


def _outcome(evaluate: ModuleType, variant: str, level: int | None, pron: float, **kw: Any) -> Any:
    entry = {
        "variant": variant,
        "reference_family": kw.get("ref", "human"),
        "family": kw.get("fam", "human"),
        "held_out": kw.get("held_out", True),
        "reference_voice": "a",
        "voice": "b",
    }
    result = None if level is None else {"level": level, "pronunciation_accuracy": pron}
    return evaluate.Outcome(entry, result)


def test_cross_measures(evaluate: ModuleType) -> None:
    outcomes = [
        _outcome(evaluate, "same", 1, 95.0),
        _outcome(evaluate, "same", 5, 0.5),
        _outcome(evaluate, "different", 5, 1.0),
        _outcome(evaluate, "different", 5, 0.0),
    ]
    m = evaluate.cross_measures(outcomes)
    assert m["auc"] == pytest.approx(0.75)
    assert m["same_le2"] == 0.5
    assert m["same_5"] == 0.5
    assert m["different_5"] == 1.0


def test_cross_measures_count_a_failed_analysis_as_the_worst_case(evaluate: ModuleType) -> None:
    outcomes = [
        _outcome(evaluate, "same", None, 0.0),
        _outcome(evaluate, "different", None, 0.0),
    ]
    m = evaluate.cross_measures(outcomes)
    assert m["auc"] == 0.0
    assert m["same_le2"] == 0.0
    assert m["same_5"] == 1.0


def test_cross_table_enforces_only_listed_held_out_rows(evaluate: ModuleType) -> None:
    outcomes = [
        _outcome(evaluate, v, lvl, p, ref=r, fam=f, held_out=h)
        for r, f in (("espeak", "human"), ("espeak", "espeak"))
        for h in (True, False)
        for v, lvl, p in (("same", 5, 0.0), ("different", 5, 0.0))
    ]
    rows = evaluate.cross_table(outcomes)
    assert all(r["subset"] == "held-out" for r in rows if r["check"])
    enforced = {(r["direction"], r["name"]) for r in rows if r["check"]}
    right = "right sentence: level <= 2"
    assert ("espeak -> espeak", right) in enforced
    assert ("espeak -> human", right) not in enforced
    assert ("espeak -> human", "different sentence: level 5") in enforced
    text = evaluate.cross_markdown(rows, evaluate.cross_pairs(outcomes))
    assert "| info |" in text and "| FAIL |" in text
