"""Findings, improvement areas and suggestions, in English or Traditional Chinese.

Each finding has a stable ``code`` (for a host that words things its own way) and a message
that names the concrete fact behind it: which part is missing, how many pauses and how long,
how much slower, where the pitch differs.
"""

from __future__ import annotations

from dataclasses import dataclass

from vocalborn_tasks.models import Finding

from .compare import Comparison
from .profile import Profile
from .scoring import PRON_PEAK_KNEE, TEMPO_FAST, TEMPO_SLOW, Scores, is_tonal

__all__ = ["SUPPORTED_LANGUAGES", "Advice", "UnitFlag", "advise", "locale_for", "ordinal"]

#: Languages the engine was evaluated on and writes advice in (primary subtags). Any other
#: valid tag is analysed the same way (the comparison is acoustic, not linguistic) but gets
#: English advice, and the result says so (``advice_language``, ``metrics.language_supported``).
SUPPORTED_LANGUAGES: tuple[str, ...] = ("en", "zh", "cmn")

_AREA_THRESHOLD = 70.0
#: Below this tone score the place where the pitch differs most is reported. Other voices
#: reading the same tones stay above it in 9 cases out of 10 (docs/analysis.md).
_TONE_FINDING = 88.0
_NUMBERS_EN = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_NUMBERS_ZH = ("零", "一", "兩", "三", "四", "五", "六", "七", "八", "九")


def locale_for(language: str | None) -> str:
    """``"zh-TW"`` for any Chinese language tag, ``"en"`` for everything else."""
    if language and language.lower().replace("_", "-").split("-")[0] in {"zh", "cmn", "yue"}:
        return "zh-TW"
    return "en"


def is_supported(language: str | None) -> bool:
    """True when ``language`` (or no language at all: English) has its own advice."""
    if not language:
        return True
    return language.lower().replace("_", "-").split("-")[0] in SUPPORTED_LANGUAGES


def ordinal(n: int) -> str:
    """``1st``, ``2nd``, ``3rd``, ``11th``, ``22nd`` ..."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@dataclass(frozen=True, slots=True)
class UnitFlag:
    """A unit judged wrong: what the advice needs to name it.

    ``code`` is ``mispronounced`` or ``pitch_contour``; ``index`` is 1-based; ``span`` is
    in the practice recording; ``question`` marks a missed final rise of a question.
    """

    code: str
    index: int
    kind: str
    label: str | None
    span: tuple[float, float]
    strength: float
    question: bool = False


@dataclass(frozen=True, slots=True)
class Advice:
    """What the result says to the patient and the therapist."""

    findings: list[Finding]
    improvement_areas: list[str]
    suggestions: list[str]


def _count(n: int, zh: bool) -> str:
    if zh:
        return _NUMBERS_ZH[n] if n < len(_NUMBERS_ZH) else str(n)
    return _NUMBERS_EN[n] if n < len(_NUMBERS_EN) else str(n)


def _portion(share: float, zh: bool) -> str:
    """A share of the sentence in words a patient understands."""
    table = (
        (0.2, "a small part", "一小部分"),
        (0.3, "the last quarter", "最後四分之一"),
        (0.42, "the last third", "最後三分之一"),
        (0.6, "the second half", "後半部"),
        (0.8, "most", "大部分"),
        (1.01, "almost all", "幾乎全部"),
    )
    for bound, en, zh_text in table:
        if share < bound:
            return zh_text if zh else en
    return "幾乎全部" if zh else "almost all"


_T: dict[str, tuple[str, str]] = {
    # code: (English, Traditional Chinese)
    "missing_end": (
        "{portion} of the sentence is missing ({pct:.0f}% of the reference)",
        "句子的{portion}沒有唸到（參考錄音的 {pct:.0f}%）",
    ),
    "missing_start": (
        "the beginning of the sentence is missing ({pct:.0f}% of the reference)",
        "句子的開頭沒有唸到（參考錄音的 {pct:.0f}%）",
    ),
    "wrong_sentence": (
        "the recording does not match the reference sentence",
        "錄音內容與參考句子不符",
    ),
    "mispronounced": (
        "pronunciation differs most from the reference at {start:.1f}-{end:.1f} s",
        "在 {start:.1f}-{end:.1f} 秒處的發音與參考錄音差異最大",
    ),
    "extra_pauses": (
        "{count} extra pause{plural}, {total:.1f} s in all",
        "多了{count}次停頓，共 {total:.1f} 秒",
    ),
    "slow": (
        "{ratio:.1f}x slower than the reference",
        "比參考錄音慢 {ratio:.1f} 倍",
    ),
    "fast": (
        "{ratio:.1f}x faster than the reference",
        "比參考錄音快 {ratio:.1f} 倍",
    ),
    "uneven_rhythm": (
        "the speaking tempo is uneven",
        "說話速度不平均",
    ),
    "pitch_contour": (
        "pitch contour differs at {start:.1f}-{end:.1f} s",
        "在 {start:.1f}-{end:.1f} 秒處的音調走向與參考錄音不同",
    ),
    "mispronounced_unit": (
        "the {nth} {kind}{label} sounds different from the reference ({start:.1f}-{end:.1f} s)",
        "第 {n} 個{kind_zh}{label}的發音與參考錄音不同（{start:.1f}-{end:.1f} 秒）",
    ),
    "pitch_contour_unit": (
        "the tone of the {nth} {kind}{label} differs from the reference ({start:.1f}-{end:.1f} s)",
        "第 {n} 個{kind_zh}{label}的聲調與參考錄音不同（{start:.1f}-{end:.1f} 秒）",
    ),
    "question": (
        "the voice does not rise at the end as in the reference's question "
        "({start:.1f}-{end:.1f} s)",
        "句尾的語調沒有像參考錄音的問句一樣上揚（{start:.1f}-{end:.1f} 秒）",
    ),
    "mispronounced_general": (
        "pronunciation differs from the reference in places",
        "部分發音與參考錄音不同",
    ),
    "pitch_contour_general": (
        "the tones differ from the reference in places",
        "部分聲調與參考錄音不同",
    ),
    "noise": (
        "background noise (signal-to-noise ratio about {snr:.0f} dB)",
        "背景噪音（訊噪比約 {snr:.0f} dB）",
    ),
    "clipped": (
        "the recording is distorted (too loud: {pct:.1f}% of samples clipped)",
        "錄音失真（音量過大：{pct:.1f}% 的樣本被削波）",
    ),
    "truncated": (
        "only the first {limit:.0f} s of the recording were analysed",
        "只分析了錄音的前 {limit:.0f} 秒",
    ),
}

_SUGGEST: dict[str, tuple[str, str]] = {
    "missing_end": (
        "Read the sentence through to the end before stopping the recording.",
        "請把整個句子唸完再停止錄音。",
    ),
    "missing_start": (
        "Start the recording first, then begin reading from the first word.",
        "請先開始錄音，再從第一個字開始唸。",
    ),
    "wrong_sentence": (
        "Listen to the reference again and read exactly that sentence.",
        "請再聽一次參考錄音，並唸出相同的句子。",
    ),
    "mispronounced": (
        "Listen to the reference around {start:.1f} s and repeat that part slowly.",
        "請重聽參考錄音約 {start:.1f} 秒處，並慢慢重複那一段。",
    ),
    "extra_pauses": (
        "Try to read the sentence in one breath; practise the words around the pauses.",
        "試著一口氣唸完句子；多練習停頓前後的詞語。",
    ),
    "slow": (
        "Aim for the reference's pace: practise the sentence a few times, then speed up.",
        "以參考錄音的速度為目標：先多練習幾次，再逐漸加快。",
    ),
    "fast": (
        "Slow down to the reference's pace and pronounce each word fully.",
        "放慢到參考錄音的速度，把每個字唸清楚。",
    ),
    "uneven_rhythm": (
        "Keep an even pace: tap a steady beat and read one word per tap.",
        "保持穩定的速度：可以打拍子，每一拍唸一個字。",
    ),
    "pitch_contour": (
        "Imitate the rise and fall of the voice in the reference at {start:.1f}-{end:.1f} s.",
        "模仿參考錄音在 {start:.1f}-{end:.1f} 秒處聲音的高低起伏。",
    ),
    "mispronounced_unit": (
        "Listen to the {nth} {kind} of the reference{label} and repeat it slowly.",
        "請重聽參考錄音的第 {n} 個{kind_zh}{label}，並慢慢重複。",
    ),
    "pitch_contour_unit": (
        "Listen to the tone of the {nth} {kind}{label} in the reference and imitate it.",
        "請仔細聽參考錄音第 {n} 個{kind_zh}{label}的聲調，並模仿它。",
    ),
    "question": (
        "It is a question: let the voice rise at the end, as in the reference.",
        "這是問句：句尾的聲音要像參考錄音一樣上揚。",
    ),
    "mispronounced_general": (
        "Listen to the reference again and repeat it slowly, word by word.",
        "請再聽一次參考錄音，並一個字一個字慢慢重複。",
    ),
    "pitch_contour_general": (
        "Listen to the tones of the reference and imitate them syllable by syllable.",
        "請仔細聽參考錄音的聲調，一個字一個字模仿。",
    ),
    "noise": (
        "Record again in a quieter room, closer to the microphone.",
        "請在較安靜的地方、靠近麥克風重新錄音。",
    ),
    "clipped": (
        "Record again a little further from the microphone or speak a little softer.",
        "請離麥克風稍遠一點或小聲一點重新錄音。",
    ),
    "truncated": (
        "Keep practice recordings short: one sentence per recording.",
        "練習錄音請保持簡短：每次錄一個句子。",
    ),
}

_AREAS: dict[str, tuple[str, str]] = {
    "pronunciation": ("pronunciation", "發音"),
    "completeness": ("completeness", "完整度"),
    "fluency": ("fluency", "流暢度"),
    "rhythm": ("rhythm", "節奏"),
    "tone": ("tone and intonation", "聲調與語調"),
    "clarity": ("recording clarity", "錄音清晰度"),
}


def advise(
    cmp: Comparison,
    sample: Profile,
    scores: Scores,
    *,
    language: str | None,
    max_duration_s: float,
    units: tuple[UnitFlag, ...] = (),
) -> Advice:
    """Turn measurements and scores into findings, areas and suggestions.

    Timed findings about what was said come only from ``units`` (units whose own evidence
    stood out, see :mod:`.units`): the sentence-level evidence (the worst window, the tone
    score) says *that* something differs, never where, so without a flagged unit it gives an
    untimed finding, and pitch only for tonal languages.
    """
    zh = locale_for(language) == "zh-TW"
    tonal = is_tonal(language)
    items: list[tuple[str, str, dict[str, float | str], float | None, float | None, float]] = []

    def add(
        code: str,
        severity: float,
        span: tuple[float, float] | None = None,
        template: str | None = None,
        **values: float | str,
    ) -> None:
        start, end = span if span is not None else (None, None)
        severity = max(0.0, min(1.0, severity))
        items.append((code, template or code, values, start, end, severity))

    wrong = scores.pronunciation < 30.0
    if wrong:
        add("wrong_sentence", 1.0)
    else:
        if cmp.missing_end >= 0.15:
            add(
                "missing_end",
                cmp.missing_end,
                portion=_portion(cmp.missing_end, zh),
                pct=100 * cmp.missing_end,
            )
        if cmp.missing_start >= 0.15:
            add("missing_start", cmp.missing_start, pct=100 * cmp.missing_start)
        for flag in units:
            label = f' ("{flag.label}")' if flag.label and not zh else ""
            if flag.label and zh:
                label = f"「{flag.label}」"
            template = f"{flag.code}_unit" if not flag.question else "question"
            add(
                flag.code,
                min(1.0, 0.4 + 0.2 * flag.strength),
                flag.span,
                template,
                nth=ordinal(flag.index),
                n=flag.index,
                kind=flag.kind,
                kind_zh="字" if flag.kind == "syllable" else "詞",
                label=label,
                start=flag.span[0],
                end=flag.span[1],
            )
        codes = {f.code for f in units}
        if (
            "mispronounced" not in codes
            and scores.pronunciation < 90.0
            and cmp.peak > PRON_PEAK_KNEE
        ):
            add(
                "mispronounced",
                1 - scores.pronunciation / 100,
                template="mispronounced_general",
            )
        notable = cmp.notable_pauses()
        if notable:
            n = len(notable)
            total = sum(p.value for p in notable)
            add(
                "extra_pauses",
                min(1.0, total / 3),
                (notable[0].start_s, notable[-1].end_s),
                count=_count(n, zh),
                plural="" if n == 1 else "s",
                total=total,
            )
        if cmp.tempo > TEMPO_SLOW[0]:
            add("slow", min(1.0, cmp.tempo - 1), ratio=cmp.tempo)
        elif cmp.tempo < TEMPO_FAST[0]:
            add("fast", min(1.0, 1 / cmp.tempo - 1), ratio=1 / cmp.tempo)
        if scores.rhythm < _AREA_THRESHOLD and not cmp.extra_pauses:
            add("uneven_rhythm", 1 - scores.rhythm / 100)
        if (
            tonal
            and "pitch_contour" not in codes
            and scores.tone < _TONE_FINDING
            and cmp.pitch_worst is not None
        ):
            add("pitch_contour", 1 - scores.tone / 100, template="pitch_contour_general")
    if sample.snr_db < 25.0:
        add("noise", min(1.0, (25.0 - sample.snr_db) / 25.0), snr=sample.snr_db)
    if "clipped" in scores.reliability_issues:
        add("clipped", min(1.0, sample.clipped_fraction * 20), pct=100 * sample.clipped_fraction)
    if sample.truncated:
        add("truncated", 0.2, limit=max_duration_s)

    findings: list[Finding] = []
    suggestions: list[str] = []
    for code, template, values, start, end, severity in items:
        text = _T[template][1 if zh else 0].format(**values)
        if not zh:
            text = text[0].upper() + text[1:]
        findings.append(
            Finding(
                code=code,
                message=text,
                start_s=None if start is None else round(start, 2),
                end_s=None if end is None else round(end, 2),
                severity=round(severity, 2),
            )
        )
        suggestion = _SUGGEST[template][1 if zh else 0].format(**values)
        if suggestion not in suggestions:
            suggestions.append(suggestion)

    by_area = {
        "pronunciation": scores.pronunciation,
        "completeness": scores.completeness,
        "fluency": scores.fluency,
        "rhythm": scores.rhythm,
        "tone": scores.tone,
        "clarity": scores.clarity,
    }
    areas = [f.message for f in sorted(findings, key=lambda f: -f.severity)]
    if not findings:
        for name, value in sorted(by_area.items(), key=lambda kv: kv[1]):
            if value < _AREA_THRESHOLD:
                label = _AREAS[name][1 if zh else 0]
                areas.append(f"{label}：{value:.0f}/100" if zh else f"{label}: {value:.0f}/100")
    return Advice(findings=findings, improvement_areas=areas, suggestions=suggestions)
