#!/usr/bin/env python3
"""Score the analysis engine against the espeak-ng corpus and check every validity bar.

Commands (run from the repository root, with the dev venv)::

    python scripts/make_corpus.py --out corpus/          # once: the corpus (about 20 s)
    python scripts/evaluate_analysis.py --corpus corpus/ [--json out.json]
    python scripts/make_corpus.py --units corpus-units/  # issue 20: known wrong spans
    python scripts/evaluate_analysis.py --units corpus-units/ [--with-text]
    python scripts/make_corpus.py --cross corpus-cross/  # espeak-ng and Festival voices
    python scripts/evaluate_analysis.py --cross corpus-cross/
    python scripts/evaluate_analysis.py --corpus corpus/ \\
        --analyzer scripts/evaluate_analysis.py:stand_in_analyzer     # test the harness itself

Why: the engine has no labelled human recordings to learn from, so its validity is argued on
recordings whose truth is known by construction (see ``scripts/make_corpus.py``). Each bar of
the analysis issue is computed here, printed with PASS/FAIL and the rule used, and the exit
status is 1 when any bar fails, so CI and the engine author get the same verdict.

``--analyzer`` takes ``package.module:function`` or ``path/to/file.py:function``; the function
is called as ``f(recording, reference, language=...)`` and must return an ``AnalysisResult`` (or
any object with ``model_dump()``, or a dict with the same fields). Default: the real engine.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

DEFAULT_ANALYZER = "vocalborn_tasks.analysis:analyze_recording"
SCORES = (
    "overall_score",
    "pronunciation_accuracy",
    "fluency_score",
    "rhythm_score",
    "tone_score",
    "clarity_score",
    "completeness_score",
)
LANGUAGES = ("en", "zh-TW")
#: Variants whose analysis must complete (everything that is ordinary speech).
SPEECH_ROLES = ("attempt",)

#: The subsets every bar is reported on: (label, framing, held-out sentences only).
#: The held-out half is sentences 5-8 of each language (``held_out`` in the manifest):
#: thresholds changed in analyzer 1.2.0 (issue 11) were fitted on sentences 1-4 only.
SUBSETS: tuple[tuple[str, str, bool], ...] = (
    ("padded", "padded", False),
    ("tight", "tight", False),
    ("room", "room", False),
    ("padded held-out", "padded", True),
    ("tight held-out", "tight", True),
    ("room held-out", "room", True),
)
#: Valid speech in another format, and the heavily clipped file, per framing.
FORMAT_VARIANTS = {
    "padded": ("stereo_44k", "pcm8", "float32"),
    "tight": ("tight_stereo_44k", "tight_pcm8", "tight_float32"),
}
CLIPPED_VARIANTS = {"padded": "clipped", "tight": "tight_clipped"}
#: Issue 11 raised the "different sentence -> level 5" bar to 95 % of pairs.
DIFFERENT_SENTENCE_SHARE = 0.95

Analyzer = Callable[..., Any]


def framing_of(entry: dict[str, Any]) -> str:
    """The entry's framing (corpora made before framings existed are all padded)."""
    return str(entry.get("framing", "padded"))


def subset(outcomes: Sequence[Outcome], framing: str, held_out_only: bool) -> list[Outcome]:
    """Outcomes of one framing, optionally only the held-out sentences (no bad files then)."""
    return [
        o
        for o in outcomes
        if framing_of(o.entry) == framing
        and (not held_out_only or (o.entry.get("held_out") and o.entry["role"] == "attempt"))
    ]


# --------------------------------------------------------------------------- running


def load_analyzer(spec: str) -> Analyzer:
    """Resolve ``module:function`` or ``file.py:function`` to a callable."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise SystemExit(f"--analyzer must look like module:function, got {spec!r}")
    if target.endswith(".py"):
        path = Path(target).resolve()
        module_spec = importlib.util.spec_from_file_location(f"_analyzer_{path.stem}", path)
        if module_spec is None or module_spec.loader is None:
            raise SystemExit(f"cannot load {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    function = getattr(module, name, None)
    if not callable(function):
        raise SystemExit(f"{spec!r} is not a callable")
    return function  # type: ignore[no-any-return]


_worker_analyzer: Analyzer | None = None


def _init_worker(spec: str) -> None:
    global _worker_analyzer
    _worker_analyzer = load_analyzer(spec)


def as_dict(result: Any) -> dict[str, Any]:
    """An analyzer's return value as a JSON-like dict (pydantic model, dataclass or dict)."""
    if hasattr(result, "model_dump"):
        dumped: dict[str, Any] = result.model_dump(mode="json")
        return dumped
    if isinstance(result, dict):
        return dict(result)
    raise TypeError(f"analyzer returned {type(result).__name__}, not a result model or dict")


@dataclass
class Outcome:
    """One analysed pair: the manifest entry, the result (or the error) and the time taken."""

    entry: dict[str, Any]
    result: dict[str, Any] | None = None
    error: str | None = None
    seconds: float = 0.0

    def score(self, name: str) -> float | None:
        """A numeric field of the result, or ``None`` when the analysis failed."""
        if self.result is None or self.result.get(name) is None:
            return None
        return float(self.result[name])


def _analyze(job: tuple[dict[str, Any], str]) -> Outcome:
    entry, root = job
    if _worker_analyzer is None:  # pragma: no cover - initializer always runs
        raise RuntimeError("worker not initialised")
    started = time.perf_counter()
    try:
        result = _worker_analyzer(
            str(Path(root) / entry["path"]),
            str(Path(root) / entry["reference_path"]),
            language=entry["language"],
        )
        return Outcome(entry, as_dict(result), None, time.perf_counter() - started)
    except Exception as exc:  # every failure is data for the report
        code = getattr(exc, "code", None)
        text = f"{type(exc).__name__}{f'[{code}]' if code else ''}: {exc}"
        return Outcome(entry, None, text[:300], time.perf_counter() - started)


def run(
    entries: Sequence[dict[str, Any]],
    root: Path,
    spec: str,
    workers: int,
    progress: Callable[[int, int], None],
) -> list[Outcome]:
    """Analyse every entry in a process pool; outcomes come back in manifest order."""
    outcomes: list[Outcome] = []
    jobs = [(e, str(root)) for e in entries]
    with ProcessPoolExecutor(
        max_workers=workers, initializer=_init_worker, initargs=(spec,)
    ) as pool:
        for i, outcome in enumerate(pool.map(_analyze, jobs, chunksize=4), start=1):
            outcomes.append(outcome)
            progress(i, len(jobs))
    return outcomes


# --------------------------------------------------------------------------- metrics


def auc(positives: Iterable[float], negatives: Iterable[float]) -> float:
    """Area under the ROC curve, Mann-Whitney form: P(pos > neg) + P(pos == neg) / 2.

    Exact over all pairs (the corpus has at most a few hundred of each), so ties are counted
    as half, as in the U statistic. ``nan`` when either side is empty.
    """
    pos = np.asarray(list(positives), dtype=np.float64)
    neg = np.asarray(list(negatives), dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    greater: npt.NDArray[np.bool_] = pos[:, None] > neg[None, :]
    ties: npt.NDArray[np.bool_] = pos[:, None] == neg[None, :]
    return float(greater.mean() + 0.5 * ties.mean())


@dataclass
class Bar:
    """One "done when" bar: what was measured, the rule, the verdict."""

    name: str
    rule: str
    value: str
    passed: bool
    n: int
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    #: Reported, but not a pass condition (it does not change the exit status).
    informative: bool = False


def select(outcomes: Sequence[Outcome], language: str | None, *variants: str) -> list[Outcome]:
    """Outcomes of the given variants (and language, unless ``None``)."""
    return [
        o
        for o in outcomes
        if o.entry["variant"] in variants and (language is None or o.entry["language"] == language)
    ]


def scores(outcomes: Sequence[Outcome], name: str) -> list[float]:
    """The named score of every successful outcome."""
    return [s for o in outcomes if (s := o.score(name)) is not None]


def auc_bar(
    name: str,
    outcomes: Sequence[Outcome],
    language: str,
    pos_variants: Sequence[str],
    neg_variants: Sequence[str],
    score: str,
    threshold: float,
    min_voices: int = 0,
) -> Bar:
    """AUC of ``score`` separating positives (should score higher) from negatives."""
    pos = select(outcomes, language, *pos_variants)
    neg = select(outcomes, language, *neg_variants)
    value = auc(scores(pos, score), scores(neg, score))
    voices = {o.entry["reference_voice"] for o in (*pos, *neg)}
    failed = sum(o.result is None for o in (*pos, *neg))
    rule = f"AUC({score}: {'+'.join(pos_variants)} > {'+'.join(neg_variants)}) >= {threshold}"
    ok = bool(value >= threshold) and failed == 0
    detail = f"{len(voices)} reference voices"
    if min_voices:
        rule += f", >= {min_voices} reference voices"
        ok = ok and len(voices) >= min_voices
    if failed:
        detail += f"; {failed} analyses failed (bar fails)"
    return Bar(
        name,
        rule,
        f"{value:.3f}",
        ok,
        len(pos) + len(neg),
        detail,
        {
            "auc": value,
            "positives": len(pos),
            "negatives": len(neg),
            "reference_voices": sorted(voices),
            "failed": failed,
        },
    )


def share_bar(
    name: str,
    outcomes: Sequence[Outcome],
    language: str | None,
    variant: str,
    condition: Callable[[dict[str, Any]], bool],
    condition_text: str,
    means_of: Sequence[str],
    min_share: float,
) -> Bar:
    """Share of cases meeting ``condition`` (failed analyses count as not meeting it)."""
    cases = select(outcomes, language, variant)
    met = sum(1 for o in cases if o.result is not None and condition(o.result))
    share = met / len(cases) if cases else float("nan")
    means = {m: float(np.mean(v)) if (v := scores(cases, m)) else float("nan") for m in means_of}
    detail = ", ".join(f"mean {m.removesuffix('_score')} {v:.1f}" for m, v in means.items())
    failed = sum(o.result is None for o in cases)
    if failed:
        detail += f"; {failed} failed"
    return Bar(
        name,
        f"share({condition_text}) >= {min_share:.0%}",
        f"{share:.0%}",
        bool(share >= min_share),
        len(cases),
        detail,
        {"share": share, "met": met, "means": means, "failed": failed},
    )


def compute_bars(outcomes: Sequence[Outcome], min_share: float) -> list[Bar]:
    """Every bar of the analysis issue, per language where the issue says so."""
    bars: list[Bar] = []
    speech = [o for o in outcomes if o.entry["role"] in SPEECH_ROLES]
    failed = [o for o in speech if o.result is None]
    bars.append(
        Bar(
            "every speech pair analysed",
            "no analysis error on any attempt",
            f"{len(speech) - len(failed)}/{len(speech)}",
            not failed,
            len(speech),
            "; ".join(sorted({f.error or "" for f in failed}))[:200],
        )
    )
    for lang in LANGUAGES:
        bars.append(
            auc_bar(
                f"same vs different sentence [{lang}]",
                outcomes,
                lang,
                ["clean"],
                ["different_sentence"],
                "pronunciation_accuracy",
                0.99,
                min_voices=4,
            )
        )
        bars.append(
            auc_bar(
                f"same vs different sentence at 0 dB [{lang}]",
                outcomes,
                lang,
                ["noise_0db"],
                ["different_sentence_noise_0db"],
                "pronunciation_accuracy",
                0.95,
                min_voices=4,
            )
        )
    substitution = auc_bar(
        "one-word substitution [en] (informative)",
        outcomes,
        "en",
        ["clean"],
        ["substitution"],
        "pronunciation_accuracy",
        0.95,
    )
    # Decided in issue 11: cross-voice one-word minimal pairs are a known weakness
    # (docs/analysis.md), reported but no longer a pass condition.
    substitution.informative = True
    bars.append(substitution)
    bars.append(
        auc_bar(
            "tone substitution [zh-TW]",
            outcomes,
            "zh-TW",
            ["clean"],
            ["tone_substitution"],
            "tone_score",
            0.95,
        )
    )
    tone_subs = select(outcomes, "zh-TW", "tone_substitution")
    pron = scores(tone_subs, "pronunciation_accuracy")
    mean_pron = float(np.mean(pron)) if pron else float("nan")
    bars.append(
        Bar(
            "tone substitution keeps pronunciation [zh-TW]",
            "mean(pronunciation_accuracy | tone_substitution) >= 90",
            f"{mean_pron:.1f}",
            bool(mean_pron >= 90),
            len(tone_subs),
            data={"mean": mean_pron},
        )
    )
    for lang in LANGUAGES:
        bars.append(
            share_bar(
                f"pauses -> fluency, rhythm [{lang}]",
                outcomes,
                lang,
                "pauses",
                lambda r: (
                    r["fluency_score"] < 70
                    and r["rhythm_score"] < 70
                    and r["pronunciation_accuracy"] >= 90
                ),
                "fluency < 70 and rhythm < 70 and pronunciation >= 90",
                ("fluency_score", "rhythm_score", "pronunciation_accuracy"),
                min_share,
            )
        )
        bars.append(
            share_bar(
                f"half the sentence -> completeness [{lang}]",
                outcomes,
                lang,
                "truncated_half",
                lambda r: r["completeness_score"] < 30 and r["level"] >= 3,
                "completeness < 30 and level >= 3",
                ("completeness_score", "level"),
                min_share,
            )
        )
        bars.append(
            share_bar(
                f"10 dB SNR -> clarity [{lang}]",
                outcomes,
                lang,
                "noise_10db",
                lambda r: r["clarity_score"] < 60 and r["tone_score"] >= 85,
                "clarity < 60 and tone >= 85",
                ("clarity_score", "tone_score"),
                min_share,
            )
        )
        bars.append(
            share_bar(
                f"0 dB SNR -> unreliable [{lang}]",
                outcomes,
                lang,
                "noise_0db",
                lambda r: r["reliable"] is False,
                "reliable is false",
                (),
                min_share,
            )
        )
        bars.append(
            share_bar(
                f"different sentence -> level 5 [{lang}]",
                outcomes,
                lang,
                "different_sentence",
                lambda r: r["level"] == 5,
                "level == 5",
                ("level", "pronunciation_accuracy"),
                max(min_share, DIFFERENT_SENTENCE_SHARE),
            )
        )
        bars.append(
            share_bar(
                f"pitch-shifted voice -> tone [{lang}]",
                outcomes,
                lang,
                "pitch_shift",
                lambda r: r["tone_score"] >= 90,
                "tone >= 90",
                ("tone_score",),
                min_share,
            )
        )
    bars.extend(format_bars(outcomes))
    return bars


def format_bars(outcomes: Sequence[Outcome]) -> list[Bar]:
    """Other formats are analysed like the original; the heavily clipped file is unreliable.

    Only where the subset holds those files (they are readings of sentence 1, so never in the
    held-out half).
    """
    bars: list[Bar] = []
    framings = {framing_of(o.entry) for o in outcomes}
    for framing in sorted(framings):
        cases = [
            o
            for o in outcomes
            if framing_of(o.entry) == framing
            and o.entry["variant"] in FORMAT_VARIANTS.get(framing, ())
        ]
        if cases:
            ok = [o for o in cases if o.result is not None and o.result["level"] <= 2]
            bars.append(
                Bar(
                    "other formats analysed (float32, 8-bit, stereo 44.1 kHz)",
                    "every file analysed at level <= 2",
                    f"{len(ok)}/{len(cases)}",
                    len(ok) == len(cases),
                    len(cases),
                    "; ".join(
                        f"{o.entry['variant']}: "
                        + (o.error or f"level {o.result['level'] if o.result else '-'}")
                        for o in cases
                    )[:200],
                )
            )
        clipped = [
            o
            for o in outcomes
            if framing_of(o.entry) == framing
            and o.entry["variant"] == CLIPPED_VARIANTS.get(framing)
        ]
        for o in clipped:
            r = o.result
            flagged = r is not None and not r["reliable"] and "clipped" in r["reliability_issues"]
            typed = o.error is not None and "clip" in o.error.split(":")[0]
            outcome = (
                o.error
                if r is None
                else f"reliable {r['reliable']} {r['reliability_issues']}, level {r['level']}"
            )
            bars.append(
                Bar(
                    "heavily clipped -> unreliable",
                    "analysed with reliable false and 'clipped', or a clipping error code",
                    "yes" if flagged or typed else "no",
                    flagged or typed,
                    1,
                    f"{o.entry['variant']}: {outcome or ''}"[:200],
                )
            )
    return bars


def variant_stats(outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    """Per (language, variant): count, failures, mean/min/max of each sub-score, reliable share."""
    groups: dict[tuple[str, str], list[Outcome]] = defaultdict(list)
    for o in outcomes:
        groups[(framing_of(o.entry), o.entry["language"], o.entry["variant"])].append(o)
    rows: list[dict[str, Any]] = []
    for (framing, lang, variant), cases in sorted(groups.items()):
        ok = [o for o in cases if o.result is not None]
        row: dict[str, Any] = {
            "framing": framing,
            "language": lang,
            "variant": variant,
            "expected": cases[0].entry["expected"],
            "n": len(cases),
            "failed": len(cases) - len(ok),
        }
        for name in (*SCORES, "level"):
            values = scores(ok, name)
            row[name] = (
                {
                    "mean": float(np.mean(values)),
                    "min": float(np.min(values)),
                    "max": float(np.max(values)),
                }
                if values
                else None
            )
        row["reliable_share"] = (
            sum(bool(o.result and o.result.get("reliable")) for o in ok) / len(ok) if ok else None
        )
        row["mean_seconds"] = float(np.mean([o.seconds for o in cases]))
        errors = sorted({o.error for o in cases if o.error})
        row["errors"] = errors[:3]
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- stand-in


def stand_in_analyzer(
    recording: str,
    reference: str,
    *,
    language: str | None = None,
    on_progress: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """A trivial analyzer for testing this harness before the engine exists.

    It compares durations and loudness only, so it passes the truncation bar and fails most
    others: that is the point, the harness must be able to say FAIL.
    """
    import soundfile as sf

    del on_progress
    rec, rec_rate = sf.read(recording, dtype="float64", always_2d=True)
    ref, ref_rate = sf.read(reference, dtype="float64", always_2d=True)
    if len(rec) < rec_rate // 10:
        raise ValueError("recording shorter than 0.1 s")
    rec_s, ref_s = len(rec) / rec_rate, len(ref) / ref_rate
    completeness = float(min(100.0, 100.0 * max(0.0, rec_s / ref_s - 0.3) / 0.7))
    rms = float(np.sqrt(np.mean(rec**2)))
    level = 1 if completeness > 80 else 4
    return {
        "overall_score": completeness,
        "level": level,
        "pronunciation_accuracy": completeness,
        "fluency_score": 80.0,
        "rhythm_score": 80.0,
        "tone_score": 90.0,
        "clarity_score": float(min(100.0, 400 * rms)),
        "completeness_score": completeness,
        "reliable": rms > 1e-4,
        "language": language,
        "analyzer": {"name": "stand-in", "version": "0"},
        "processing_time_s": 0.0,
    }


# --------------------------------------------------------------------------- output


def _fmt(cell: dict[str, float] | None, digits: int = 0) -> str:
    if cell is None:
        return "-"
    return f"{cell['mean']:.{digits}f}/{cell['min']:.{digits}f}"


def print_report(
    bar_sets: dict[str, list[Bar]],
    stats: Sequence[dict[str, Any]],
    bad: Sequence[Outcome],
    min_share: float,
) -> None:
    """Tables: per-variant scores (mean/min), bad inputs, then every bar on every subset."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=220)
    table = Table(title="Scores per variant (mean/min)", show_lines=False)
    for column in (
        "framing",
        "lang",
        "variant",
        "expected",
        "n",
        "fail",
        "overall",
        "pron",
        "flu",
        "rhy",
        "tone",
        "clar",
        "compl",
        "level",
        "reliable",
        "s/pair",
    ):
        table.add_column(column, justify="left" if column in ("variant", "expected") else "right")
    for row in stats:
        if row["variant"] in ("reference",):
            continue
        table.add_row(
            row["framing"],
            row["language"],
            row["variant"],
            row["expected"],
            str(row["n"]),
            str(row["failed"]),
            *(_fmt(row[s]) for s in SCORES),
            _fmt(row["level"], 1),
            "-" if row["reliable_share"] is None else f"{row['reliable_share']:.0%}",
            f"{row['mean_seconds']:.2f}",
        )
    console.print(table)

    if bad:
        table = Table(title="Bad inputs and other formats")
        for column in ("file", "expected", "outcome"):
            table.add_column(column)
        for o in bad:
            if o.result is not None:
                outcome = (
                    f"analysed: level {o.result.get('level')}, reliable "
                    f"{o.result.get('reliable')} {o.result.get('reliability_issues', '')}"
                )
            else:
                outcome = f"error {o.error}"
            table.add_row(escape(o.entry["path"]), o.entry["expected"], escape(outcome[:120]))
        console.print(table)

    labels = list(bar_sets)
    table = Table(
        title=f"Analysis validity bars per framing and on the held-out sentences (share bars "
        f"pass at >= {min_share:.0%}; a failed analysis counts as not meeting the condition)"
    )
    for column in ("bar", "rule", *labels):
        table.add_column(column)
    rules: dict[str, str] = {}
    cells: dict[str, dict[str, str]] = defaultdict(dict)
    for label, bars in bar_sets.items():
        for bar in bars:
            rules.setdefault(bar.name, bar.rule)
            verdict = (
                "info"
                if bar.informative
                else "[green]PASS[/green]"
                if bar.passed
                else "[red]FAIL[/red]"
            )
            cells[bar.name][label] = f"{bar.value} {verdict} (n={bar.n})"
    for name, rule in rules.items():
        table.add_row(escape(name), escape(rule), *(cells[name].get(lb, "-") for lb in labels))
    console.print(table)
    counted = [b for bars in bar_sets.values() for b in bars if not b.informative]
    failed = [
        f"{label}: {b.name}"
        for label, bars in bar_sets.items()
        for b in bars
        if not b.informative and not b.passed
    ]
    console.print(
        f"{len(counted)}/{len(counted)} bar checks pass"
        if not failed
        else f"[red]{len(failed)} of {len(counted)} bar checks FAIL[/red]: "
        + escape("; ".join(failed))
    )


def markdown_report(bar_sets: dict[str, list[Bar]], stats: Sequence[dict[str, Any]]) -> str:
    """The bars (one column per subset) and the per-variant means, as Markdown tables."""
    labels = list(bar_sets)
    rules: dict[str, str] = {}
    cells: dict[str, dict[str, str]] = defaultdict(dict)
    for label, bars in bar_sets.items():
        for bar in bars:
            rules.setdefault(bar.name, bar.rule)
            verdict = "info" if bar.informative else "PASS" if bar.passed else "**FAIL**"
            cells[bar.name][label] = f"{bar.value} {verdict}"
    lines = [
        "| bar | rule | " + " | ".join(labels) + " |",
        "|---|---|" + "---:|" * len(labels),
    ]
    for name, rule in rules.items():
        row = [cells[name].get(label, "-") for label in labels]
        cell_name, cell_rule = name.replace("|", "\\|"), rule.replace("|", "\\|")
        lines.append(f"| {cell_name} | {cell_rule} | " + " | ".join(row) + " |")
    lines += [
        "",
        "| framing | lang | variant | n | fail | overall | pron | flu | rhy | tone | clar | compl"
        " | level | reliable |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in stats:
        if row["variant"] == "reference":
            continue
        means = ["-" if row[s] is None else f"{row[s]['mean']:.0f}" for s in SCORES]
        level = "-" if row["level"] is None else f"{row['level']['mean']:.1f}"
        reliable = "-" if row["reliable_share"] is None else f"{row['reliable_share']:.0%}"
        lines.append(
            f"| {row['framing']} | {row['language']} | {row['variant']} | {row['n']} | "
            f"{row['failed']} | " + " | ".join(means) + f" | {level} | {reliable} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- units (issue 20)

#: Issue 20's table: (name, language, variant, measure, target, at most (True) or at least).
UNIT_CHECKS: tuple[tuple[str, str, str, str, float, bool], ...] = (
    ("one word replaced: a timed finding overlaps it", "en", "wrong", "hit", 0.90, False),
    ("one word replaced: the top finding overlaps it", "en", "wrong", "top_hit", 0.80, False),
    ("one tone changed: a timed finding overlaps it", "zh-TW", "wrong", "hit", 0.90, False),
    ("right sentence, other voice: any timed finding", "en", "right", "timed", 0.10, True),
    ("right sentence, other voice: any timed finding", "zh-TW", "right", "timed", 0.10, True),
    ("different sentence: level 5 (raw framing)", "zh-TW", "different", "level5", 0.95, False),
)
#: Subsets of the units corpus the table is reported on; only the held-out ones are checks.
UNIT_SUBSETS: tuple[tuple[str, str, bool], ...] = (
    ("tight held-out", "tight", True),
    ("padded held-out", "padded", True),
    ("noisy held-out", "noisy", True),
    ("tight fit", "tight", False),
    ("padded fit", "padded", False),
    ("noisy fit", "noisy", False),
)


def timed_findings(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Findings that point at a time span of the recording."""
    return [
        f
        for f in result.get("findings", [])
        if f.get("start_s") is not None and f.get("end_s") is not None
    ]


def overlaps(finding: dict[str, Any], span: Sequence[float]) -> bool:
    """True when the finding's span and ``span`` (seconds) share any time."""
    return bool(finding["start_s"] < span[1] and finding["end_s"] > span[0])


def unit_measures(entry: dict[str, Any], result: dict[str, Any] | None) -> dict[str, bool]:
    """Per pair: any/top timed finding over the wrong span, any timed finding, level 5."""
    if result is None:
        return {"hit": False, "top_hit": False, "timed": True, "level5": False}
    timed = timed_findings(result)
    span = entry.get("span_s")
    hit = bool(span) and any(overlaps(f, span) for f in timed)
    top = max(timed, key=lambda f: float(f.get("severity", 0.0)), default=None)
    top_hit = bool(span) and top is not None and overlaps(top, span)
    return {"hit": hit, "top_hit": top_hit, "timed": bool(timed), "level5": result["level"] == 5}


def _analyze_unit(job: tuple[dict[str, Any], str, bool]) -> Outcome:
    entry, root, with_text = job
    if _worker_analyzer is None:  # pragma: no cover - initializer always runs
        raise RuntimeError("worker not initialised")
    extra = {"reference_text": entry["reference_text"]} if with_text else {}
    started = time.perf_counter()
    try:
        result = _worker_analyzer(
            str(Path(root) / entry["path"]),
            str(Path(root) / entry["reference_path"]),
            language=entry["language"],
            **extra,
        )
        return Outcome(entry, as_dict(result), None, time.perf_counter() - started)
    except Exception as exc:  # every failure is data for the report
        return Outcome(entry, None, f"{type(exc).__name__}: {exc}"[:300], 0.0)


def unit_table(outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    """Issue 20's table on every subset; rows with ``check`` true decide the exit status."""
    rows: list[dict[str, Any]] = []
    for name, lang, variant, measure, target, at_most in UNIT_CHECKS:
        subsets = UNIT_SUBSETS
        if variant == "different":
            subsets = (("raw held-out", "raw", True), ("raw fit", "raw", False))
        for label, framing, held_out in subsets:
            cases = [
                o
                for o in outcomes
                if o.entry["language"] == lang
                and o.entry["variant"] == variant
                and o.entry["framing"] == framing
                and bool(o.entry["held_out"]) == held_out
            ]
            if not cases:
                continue
            value = float(np.mean([unit_measures(o.entry, o.result)[measure] for o in cases]))
            ok = value <= target if at_most else value >= target
            rows.append(
                {
                    "name": f"{name} [{lang}]",
                    "subset": label,
                    "n": len(cases),
                    "value": value,
                    "target": f"{'<=' if at_most else '>='} {target:.2f}",
                    "passed": bool(ok),
                    "check": held_out and framing in ("tight", "padded", "raw"),
                }
            )
    return rows


def units_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The units table as Markdown (checks first)."""
    lines = ["| measure | subset | n | value | target | verdict |", "|---|---|---:|---:|---|---|"]
    for row in sorted(rows, key=lambda r: not r["check"]):
        verdict = ("PASS" if row["passed"] else "FAIL") if row["check"] else "info"
        lines.append(
            f"| {row['name']} | {row['subset']} | {row['n']} | {row['value']:.2f} | "
            f"{row['target']} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def evaluate_units(args: argparse.Namespace) -> int:
    """``--units DIR``: issue 20's table on ``DIR/units.json`` (make_corpus.py --units)."""
    doc = _read_document(args.units, "units")
    if doc is None:
        return 2
    entries = doc["entries"]
    if args.held_out_only and args.fit_only:
        print("--held-out-only and --fit-only exclude each other")
        return 2
    if args.held_out_only:
        entries = [e for e in entries if e["held_out"]]
    if args.fit_only:
        entries = [e for e in entries if not e["held_out"]]
    outcomes, started = _analyze_pairs(args, entries, args.units, with_text=args.with_text)
    rows = unit_table(outcomes)
    return _report_pairs(
        args, units_markdown(rows), outcomes, started, rows=rows, with_text=args.with_text
    )


def _read_document(folder: Path, kind: str) -> dict[str, Any] | None:
    """``folder/<kind>.json`` as written by ``make_corpus.py --<kind> folder``, or None (said)."""
    path = folder / f"{kind}.json"
    if not path.is_file():
        print(f"{path} not found: run scripts/make_corpus.py --{kind} {folder}")
        return None
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document


def _analyze_pairs(
    args: argparse.Namespace, entries: list[dict[str, Any]], root: Path, *, with_text: bool
) -> tuple[list[Outcome], float]:
    """Analyse ``entries`` (units or cross-synthesizer pairs) on ``args.workers`` processes."""
    load_analyzer(args.analyzer)
    started = time.perf_counter()
    jobs = [(e, str(root), with_text) for e in entries]
    with ProcessPoolExecutor(
        max_workers=args.workers, initializer=_init_worker, initargs=(args.analyzer,)
    ) as pool:
        outcomes = list(pool.map(_analyze_unit, jobs, chunksize=8))
    return outcomes, started


def _report_pairs(
    args: argparse.Namespace,
    text: str,
    outcomes: list[Outcome],
    started: float,
    rows: list[dict[str, Any]],
    **extra: Any,
) -> int:
    """Print and write (``--markdown``, ``--json``: ``rows``, ``extra``, results) a table;
    1 when a check or a pair failed."""
    print(text)
    failed = [o for o in outcomes if o.result is None]
    print(f"{len(outcomes)} pairs in {time.perf_counter() - started:.0f} s, {len(failed)} failed")
    if args.markdown is not None:
        args.markdown.write_text(text, encoding="utf-8")
    if args.json is not None:
        results = [{"entry": o.entry, "result": o.result} for o in outcomes]
        args.json.write_text(
            json.dumps({"rows": rows, **extra, "results": results}, ensure_ascii=False, default=str)
            + "\n",
            encoding="utf-8",
        )
    return 0 if all(r["passed"] for r in rows if r["check"]) and not failed else 1


# --------------------------------------------------------------------------- cross-synthesizer

#: Directions of the cross-synthesizer set: (reference family, practice family). ``human`` is a
#: Festival voice built from human recordings (make_corpus.FESTIVAL_VOICES).
CROSS_DIRECTIONS: tuple[tuple[str, str], ...] = (
    ("espeak", "espeak"),
    ("espeak", "human"),
    ("human", "espeak"),
    ("human", "human"),
)
#: (name, measure, target, at most (True) or at least). Measures: ``auc`` of pronunciation,
#: same sentence above different; ``same_le2`` share of same-sentence pairs at level <= 2;
#: ``same_5`` share of same-sentence pairs at level 5 (told "a different sentence");
#: ``different_5`` share of different-sentence pairs at level 5.
CROSS_CHECKS: tuple[tuple[str, str, float, bool], ...] = (
    ("same vs different sentence: AUC(pronunciation)", "auc", 0.95, False),
    ("right sentence: level <= 2", "same_le2", 0.90, False),
    ("right sentence: level 5 (told a different sentence)", "same_5", 0.05, True),
    ("different sentence: level 5", "different_5", 0.95, False),
)
#: The (direction, measure) rows that decide the exit status: the sentence is told apart in
#: every direction (AUC, different sentence at level 5), and espeak-ng -> espeak-ng in full.
#: The right-sentence levels across synthesizers are reported only: in analyzer 1.3.2 a right
#: sentence read by the other family reaches level <= 2 in 0.17-0.78 of pairs and level 5 in
#: 0.15-0.76 (docs/analysis.md, "Across synthesizers").
CROSS_ENFORCED: frozenset[tuple[tuple[str, str], str]] = frozenset(
    {
        *((d, m) for d in CROSS_DIRECTIONS for m in ("auc", "different_5")),
        *((("espeak", "espeak"), m) for m in ("same_le2", "same_5")),
    }
)


def cross_measures(outcomes: Sequence[Outcome]) -> dict[str, float]:
    """The :data:`CROSS_CHECKS` measures of a group of cross-set pairs (failed = worst case)."""
    same = [o for o in outcomes if o.entry["variant"] == "same"]
    diff = [o for o in outcomes if o.entry["variant"] == "different"]

    def level(o: Outcome) -> int:
        return int(o.result["level"]) if o.result is not None else 5

    def pron(o: Outcome) -> float:
        return float(o.result["pronunciation_accuracy"]) if o.result is not None else 0.0

    return {
        "auc": auc([pron(o) for o in same], [101.0 if o.result is None else pron(o) for o in diff]),
        "same_le2": float(np.mean([level(o) <= 2 for o in same])) if same else float("nan"),
        "same_5": float(np.mean([level(o) == 5 for o in same])) if same else float("nan"),
        "different_5": float(np.mean([level(o) == 5 for o in diff])) if diff else float("nan"),
        "same_pron_median": float(np.median([pron(o) for o in same])) if same else float("nan"),
    }


def cross_table(outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    """Per direction and subset (all, held-out), one row per :data:`CROSS_CHECKS` measure."""
    rows: list[dict[str, Any]] = []
    for direction in CROSS_DIRECTIONS:
        for label, held in (("held-out", True), ("all", None)):
            cases = [
                o
                for o in outcomes
                if (o.entry["reference_family"], o.entry["family"]) == direction
                and (held is None or bool(o.entry["held_out"]) == held)
            ]
            if not cases:
                continue
            values = cross_measures(cases)
            for name, measure, target, at_most in CROSS_CHECKS:
                value = values[measure]
                ok = value <= target if at_most else value >= target
                rows.append(
                    {
                        "name": name,
                        "direction": f"{direction[0]} -> {direction[1]}",
                        "subset": label,
                        "n": len(cases),
                        "value": value,
                        "target": f"{'<=' if at_most else '>='} {target:.2f}",
                        "passed": bool(ok),
                        "check": label == "held-out" and (direction, measure) in CROSS_ENFORCED,
                    }
                )
    return rows


def cross_pairs(outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    """The measures per ordered voice pair (reference voice -> practice voice), for the docs."""
    groups: dict[tuple[str, str], list[Outcome]] = defaultdict(list)
    for o in outcomes:
        groups[(o.entry["reference_voice"], o.entry["voice"])].append(o)
    return [
        {"reference_voice": r, "voice": v, "n": len(cases), **cross_measures(cases)}
        for (r, v), cases in sorted(groups.items())
    ]


def cross_markdown(rows: Sequence[dict[str, Any]], pairs: Sequence[dict[str, Any]]) -> str:
    """The cross-synthesizer table, then the per-voice-pair figures, as Markdown."""
    lines = [
        "| measure | reference -> practice | subset | n | value | target | verdict |",
        "|---|---|---|---:|---:|---|---|",
    ]
    for row in sorted(rows, key=lambda r: not r["check"]):
        verdict = ("PASS" if row["passed"] else "FAIL") if row["check"] else "info"
        lines.append(
            f"| {row['name']} | {row['direction']} | {row['subset']} | {row['n']} | "
            f"{row['value']:.2f} | {row['target']} | {verdict} |"
        )
    lines += [
        "",
        "| reference voice | practice voice | AUC | same: median pron. | same: level <= 2 "
        "| same: level 5 | different: level 5 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for p in pairs:
        lines.append(
            f"| {p['reference_voice']} | {p['voice']} | {p['auc']:.3f} | "
            f"{p['same_pron_median']:.1f} | {p['same_le2']:.2f} | {p['same_5']:.2f} | "
            f"{p['different_5']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def evaluate_cross(args: argparse.Namespace) -> int:
    """``--cross DIR``: the cross-synthesizer table on ``DIR/cross.json``."""
    doc = _read_document(args.cross, "cross")
    if doc is None:
        return 2
    for note in doc.get("missing", []):
        print(note)
    entries = doc["entries"]
    outcomes, started = _analyze_pairs(args, entries, args.cross, with_text=False)
    rows = cross_table(outcomes)
    pairs = cross_pairs(outcomes)
    return _report_pairs(
        args, cross_markdown(rows, pairs), outcomes, started, rows=rows, pairs=pairs
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 1 when any bar fails, 2 on usage errors."""
    parser = argparse.ArgumentParser(
        description="Check the analysis engine's validity bars on the espeak-ng corpus."
    )
    parser.add_argument(
        "--corpus",
        type=Path,
        help="folder with manifest.json (scripts/make_corpus.py --out)",
    )
    parser.add_argument(
        "--units",
        type=Path,
        help="instead: issue 20's table on units.json (scripts/make_corpus.py --units)",
    )
    parser.add_argument(
        "--cross",
        type=Path,
        help="instead: the cross-synthesizer table on cross.json (make_corpus.py --cross)",
    )
    parser.add_argument(
        "--with-text",
        action="store_true",
        help="with --units: pass each reference's text as reference_text",
    )
    parser.add_argument(
        "--held-out-only",
        action="store_true",
        help="with --units: analyse the held-out half only",
    )
    parser.add_argument(
        "--fit-only",
        action="store_true",
        help="with --units: analyse the fitting half only (sentences 1-8; for choosing "
        "thresholds without looking at the held-out half)",
    )
    parser.add_argument("--json", type=Path, help="write bars, per-variant stats and results")
    parser.add_argument(
        "--analyzer",
        default=DEFAULT_ANALYZER,
        help="module:function or file.py:function (default: %(default)s)",
    )
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    parser.add_argument(
        "--min-share",
        type=float,
        default=0.9,
        help="share of cases a condition bar needs (default 0.9)",
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        help="write the bar table (every subset) and per-variant means as Markdown",
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="do not analyse the bad-input files (the 10-minute one is slow)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=0,
        help="analyse only the first N references' groups (quick runs)",
    )
    args = parser.parse_args(argv)
    if args.units is not None:
        return evaluate_units(args)
    if args.cross is not None:
        return evaluate_cross(args)
    if args.corpus is None:
        parser.error("--corpus, --units or --cross is required")

    manifest_path = args.corpus / "manifest.json"
    if not manifest_path.is_file():
        print(
            f"{manifest_path} not found: run scripts/make_corpus.py --out {args.corpus}",
            file=sys.stderr,
        )
        return 2
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    entries = [
        e
        for e in manifest["entries"]
        if e["role"] != "reference" and not (args.skip_bad and e["role"] == "bad")
    ]
    if args.limit:
        keep = sorted({e["reference"] for e in entries if e["role"] == "attempt"})
        chosen = set(keep[:: max(1, len(keep) // args.limit)][: args.limit])
        entries = [e for e in entries if e["reference"] in chosen or e["role"] == "bad"]
    load_analyzer(args.analyzer)  # fail fast, in the parent, on a wrong spec

    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if done % max(1, total // 10) == 0 or done == total:
            print(
                f"{done}/{total} pairs, {time.perf_counter() - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    outcomes = run(entries, args.corpus, args.analyzer, args.workers, progress)
    bar_sets = {
        label: compute_bars(subset(outcomes, framing, held_out), args.min_share)
        for label, framing, held_out in SUBSETS
    }
    bar_sets = {label: bars for label, bars in bar_sets.items() if bars[0].n > 0}
    passed = all(b.passed for bars in bar_sets.values() for b in bars if not b.informative)
    stats = variant_stats([o for o in outcomes if o.entry["role"] != "bad"])
    bad = [o for o in outcomes if o.entry["role"] == "bad"]
    print_report(bar_sets, stats, bad, args.min_share)
    if args.markdown is not None:
        args.markdown.write_text(markdown_report(bar_sets, stats), encoding="utf-8")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "analyzer": args.analyzer,
                    "corpus": str(args.corpus),
                    "min_share": args.min_share,
                    "seconds": time.perf_counter() - started,
                    "passed": passed,
                    "bars": {label: [asdict(b) for b in bars] for label, bars in bar_sets.items()},
                    "variants": stats,
                    "results": [
                        {
                            "id": o.entry["id"],
                            "variant": o.entry["variant"],
                            "framing": framing_of(o.entry),
                            "held_out": bool(o.entry.get("held_out")),
                            "language": o.entry["language"],
                            "error": o.error,
                            "seconds": o.seconds,
                            "result": o.result,
                        }
                        for o in outcomes
                    ],
                },
                indent=1,
                ensure_ascii=False,
                default=str,
            )
            + "\n",
            encoding="utf-8",
        )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
