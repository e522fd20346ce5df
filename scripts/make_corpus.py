#!/usr/bin/env python3
"""Generate real-speech audio with espeak-ng for evaluating and testing the analysis engine.

Commands (run from the repository root, with the dev venv)::

    python scripts/make_corpus.py --out corpus/                # evaluation corpus (gitignored)
    python scripts/make_corpus.py --fixtures tests/data/audio  # small committed test fixtures
    python scripts/make_corpus.py --samples src/vocalborn_tasks/samples  # shipped demo files
    python scripts/make_corpus.py --units corpus-units/       # issue 20: known wrong spans
    python scripts/make_corpus.py --cross corpus-cross/       # espeak-ng and Festival voices

Why synthetic speech: the analysis must be validated on recordings whose truth we know
(same sentence or not, which word or tone was changed, how much noise was added), spoken by
several voices so that a score cannot lean on the speaker being the same. espeak-ng is a
Debian package, needs no downloaded model, and is deterministic for the same input, so the
corpus is reproducible bit for bit (noise uses fixed, per-file seeds).

Mandarin is spoken by the ``cmn-latn-pinyin`` voice fed tone-numbered pinyin
(``jin1 tian1 tian1 qi4 hen3 hao3``): espeak-ng 1.51's ``cmn`` voice reads the tone digits
aloud in English.

Every output folder gets a ``manifest.json`` (schema in :func:`manifest_document`) naming, for
each practice recording, the reference it is compared against and the expected outcome.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import soundfile as sf
from scipy.signal import lfilter, resample_poly

FloatArray = npt.NDArray[np.float64]

SAMPLE_RATE = 16_000
ESPEAK_RATE = 22_050
SCHEMA_VERSION = 1
#: Silence put around every utterance: real recordings never start on the first phoneme.
PAD_S = 0.25
Language = Literal["en", "zh-TW"]
#: How a file is framed: ``padded`` puts PAD_S of digital silence around the speech (a
#: recording started before the first word); ``tight`` runs from the first to the last
#: non-zero sample (a trimmed clip, a TTS reference, an app that records on voice), keeping
#: espeak-ng's exact digital zeros between words; ``room`` is the tight clip with
#: ROOM_PAD_S of room tone either side and the same room tone under the speech (issue 11's
#: "0.5 s of room noise added around the clips"). Every criterion is reported on each.
Framing = Literal["padded", "tight", "room"]
FRAMINGS: tuple[Framing, ...] = ("padded", "tight", "room")
ROOM_PAD_S = 0.5
#: Room tone level: this many dB below the power of the clip's active speech.
ROOM_TONE_DB = 40.0
#: Sentences 1-4 of each language are the fitting half: thresholds changed in analyzer 1.2.0
#: were chosen looking at these only; sentences 5-8 are the held-out half.
FIT_SENTENCES = 4
#: Gain of the heavily clipped tight file (the issue's "x8, clipped to full scale").
TIGHT_CLIP_GAIN = 8.0
ZH_VOICE = "cmn-latn-pinyin"


@dataclass(frozen=True)
class Voice:
    """An espeak-ng speaker: voice name (with ``+variant``), words per minute and pitch 0-99."""

    name: str
    speed: int
    pitch: int

    @property
    def label(self) -> str:
        """Short, file-name-safe label used in ids."""
        base = self.name.replace(ZH_VOICE, "cmn").replace("+", "_")
        return f"{base}-s{self.speed}-p{self.pitch}"


@dataclass(frozen=True)
class Sentence:
    """A practice sentence and the altered readings the corpus derives from it.

    ``alternates`` are full alternative texts with the changed words (English minimal pairs or
    one different word) or changed tones (Mandarin: same syllables, one or two tones changed),
    each with a description of the change.
    """

    sid: str
    language: Language
    text: str
    gloss: str
    alternates: tuple[tuple[str, str], ...]


EN_SENTENCES: tuple[Sentence, ...] = (
    Sentence(
        "en-s01",
        "en",
        "The big ship is waiting in the harbor tonight.",
        "",
        (
            ("The big sheep is waiting in the harbor tonight.", "ship->sheep"),
            ("The big ship is waiting in the garden tonight.", "harbor->garden"),
        ),
    ),
    Sentence(
        "en-s02",
        "en",
        "Please put the red pen on my desk.",
        "",
        (
            ("Please put the red pin on my desk.", "pen->pin"),
            ("Please put the red cup on my desk.", "pen->cup"),
        ),
    ),
    Sentence(
        "en-s03",
        "en",
        "She bought a new hat at the market yesterday.",
        "",
        (
            ("She bought a new cat at the market yesterday.", "hat->cat"),
            ("She bought a new hat at the station yesterday.", "market->station"),
        ),
    ),
    Sentence(
        "en-s04",
        "en",
        "We walked to the park after lunch on Sunday.",
        "",
        (
            ("We walked to the bank after lunch on Sunday.", "park->bank"),
            ("We walked to the park after dinner on Sunday.", "lunch->dinner"),
        ),
    ),
    Sentence(
        "en-s05",
        "en",
        "The light in the kitchen is very bright today.",
        "",
        (
            ("The night in the kitchen is very bright today.", "light->night"),
            ("The light in the kitchen is very weak today.", "bright->weak"),
        ),
    ),
    Sentence(
        "en-s06",
        "en",
        "Can you pass me the salt and the bread, please?",
        "",
        (
            ("Can you pass me the bolt and the bread, please?", "salt->bolt"),
            ("Can you pass me the salt and the milk, please?", "bread->milk"),
        ),
    ),
    Sentence(
        "en-s07",
        "en",
        "My little brother likes to read books before bed.",
        "",
        (
            ("My little brother likes to lead books before bed.", "read->lead"),
            ("My little brother likes to read games before bed.", "books->games"),
        ),
    ),
    Sentence(
        "en-s08",
        "en",
        "The black cat sat quietly on the warm mat.",
        "",
        (
            ("The black cap sat quietly on the warm mat.", "cat->cap"),
            ("The black cat sat quietly on the warm bed.", "mat->bed"),
        ),
    ),
)

ZH_SENTENCES: tuple[Sentence, ...] = (
    Sentence(
        "zh-s01",
        "zh-TW",
        "jin1 tian1 tian1 qi4 zhen1 de5 hen3 hao3",
        "今天天氣真的很好",
        (
            ("jin1 tian1 tian1 qi2 zhen1 de5 hen3 hao3", "qi4->qi2"),
            ("jin4 tian1 tian1 qi4 zhen1 de5 hen3 hao1", "jin1->jin4,hao3->hao1"),
        ),
    ),
    Sentence(
        "zh-s02",
        "zh-TW",
        "wo3 xiang3 he1 yi4 bei1 re4 de5 shui3",
        "我想喝一杯熱的水",
        (
            ("wo3 xiang3 he4 yi4 bei1 re4 de5 shui3", "he1->he4"),
            ("wo3 xiang1 he1 yi4 bei3 re4 de5 shui3", "xiang3->xiang1,bei1->bei3"),
        ),
    ),
    Sentence(
        "zh-s03",
        "zh-TW",
        "qing3 ni3 man4 man4 de5 zai4 shuo1 yi2 ci4",
        "請你慢慢地再說一次",
        (
            ("qing3 ni3 man4 man4 de5 zai4 shuo3 yi2 ci4", "shuo1->shuo3"),
            ("qing1 ni3 man4 man4 de5 zai2 shuo1 yi2 ci4", "qing3->qing1,zai4->zai2"),
        ),
    ),
    Sentence(
        "zh-s04",
        "zh-TW",
        "wo3 men5 ming2 tian1 qu4 gong1 yuan2 san4 bu4",
        "我們明天去公園散步",
        (
            ("wo3 men5 ming2 tian1 qu4 gong4 yuan2 san4 bu4", "gong1->gong4"),
            ("wo3 men5 ming2 tian1 qu1 gong1 yuan3 san4 bu4", "qu4->qu1,yuan2->yuan3"),
        ),
    ),
    Sentence(
        "zh-s05",
        "zh-TW",
        "ta1 mei3 tian1 zao3 shang4 dou1 qu4 pao3 bu4",
        "他每天早上都去跑步",
        (
            ("ta1 mei3 tian2 zao3 shang4 dou1 qu4 pao3 bu4", "tian1->tian2"),
            ("ta4 mei3 tian1 zao3 shang1 dou1 qu4 pao3 bu4", "ta1->ta4,shang4->shang1"),
        ),
    ),
    Sentence(
        "zh-s06",
        "zh-TW",
        "zhe4 ge4 hong2 se4 de5 ping2 guo3 hen3 tian2",
        "這個紅色的蘋果很甜",
        (
            ("zhe4 ge4 hong2 se4 de5 ping2 guo3 hen3 tian1", "tian2->tian1"),
            ("zhe4 ge4 hong2 se4 de5 ping4 guo1 hen3 tian2", "ping2->ping4,guo3->guo1"),
        ),
    ),
    Sentence(
        "zh-s07",
        "zh-TW",
        "ma1 ma1 zheng4 zai4 chu2 fang2 li3 zuo4 fan4",
        "媽媽正在廚房裡做飯",
        (
            ("ma1 ma1 zheng4 zai4 chu2 fang2 li3 zuo4 fan2", "fan4->fan2"),
            ("ma3 ma1 zheng4 zai4 chu4 fang2 li3 zuo4 fan4", "ma1->ma3,chu2->chu4"),
        ),
    ),
    Sentence(
        "zh-s08",
        "zh-TW",
        "xie4 xie4 ni3 zuo2 tian1 de5 bang1 zhu4",
        "謝謝你昨天的幫助",
        (
            ("xie4 xie4 ni3 zuo2 tian1 de5 bang3 zhu4", "bang1->bang3"),
            ("xie4 xie4 ni3 zuo3 tian1 de5 bang1 zhu1", "zuo2->zuo3,zhu4->zhu1"),
        ),
    ),
)

#: Therapists: the voices references are read in (slow, clear practice readings).
REFERENCE_VOICES: dict[Language, tuple[Voice, ...]] = {
    "en": (
        Voice("en-us", 130, 50),
        Voice("en-us+f2", 135, 60),
        Voice("en-gb+m3", 125, 45),
        Voice("en-us+f4", 140, 65),
    ),
    "zh-TW": (
        Voice(ZH_VOICE, 120, 50),
        Voice(f"{ZH_VOICE}+f2", 120, 65),
        Voice(f"{ZH_VOICE}+m3", 115, 40),
        Voice(f"{ZH_VOICE}+f4", 125, 70),
    ),
}
#: Patients: never the same (voice, speed, pitch) as any therapist.
PATIENT_VOICES: dict[Language, tuple[Voice, ...]] = {
    "en": (
        Voice("en-us+m3", 115, 40),
        Voice("en-gb+f3", 145, 60),
        Voice("en-us+m7", 125, 35),
        Voice("en-gb", 135, 55),
        Voice("en-us+f5", 120, 72),
    ),
    "zh-TW": (
        Voice(f"{ZH_VOICE}+m1", 110, 35),
        Voice(f"{ZH_VOICE}+f3", 130, 60),
        Voice(f"{ZH_VOICE}+m7", 120, 45),
        Voice(f"{ZH_VOICE}+f5", 115, 75),
        Voice(ZH_VOICE, 105, 30),
    ),
}
#: Words (syllables) per minute of the speed variants.
SLOW_SPEED = 85
FAST_SPEED = 200
#: Pauses inserted into the ``pauses`` variant, in order; the chunks between are read fluently.
PAUSES_MS = (800, 1000)
PAUSES_NOTE = "the sentence read in three chunks separated by 0.8 s and 1.0 s of silence"

#: What the engine is expected to conclude, per variant kind (see the README of the fixtures).
EXPECTED: dict[str, str] = {
    "reference": "reference",
    "identical": "match",
    "clean": "match",
    "speed_slow": "match",
    "speed_fast": "match",
    "pitch_shift": "match",
    "noise_20db": "match",
    "noise_10db": "noisy",
    "noise_0db": "unreliable",
    "pauses": "disfluent",
    "truncated_half": "incomplete",
    "substitution": "mispronounced",
    "tone_substitution": "mispronounced",
    "different_sentence": "wrong_sentence",
    "different_sentence_noise_0db": "wrong_sentence",
    # files that are not ordinary recordings
    "stereo_44k": "match",
    "pcm8": "match",
    "float32": "match",
    "clipped": "unreliable",
    "tight_stereo_44k": "match",
    "tight_pcm8": "match",
    "tight_float32": "match",
    "tight_clipped": "unreliable",
    "silence": "reject",
    "tiny_10ms": "reject",
    "empty": "reject",
    "corrupt_header": "reject",
    "truncated_file": "reject_or_partial",
    "not_audio": "reject",
    "ten_minutes": "too_long",
}


@dataclass
class Entry:
    """One file of a manifest. Paths are relative to the manifest's folder.

    ``reference``/``reference_path`` name the reference recording a practice recording is
    compared against (``None`` for references). ``expected`` is one of the values of
    :data:`EXPECTED`. ``changes`` lists what differs from the reference text (``ship->sheep``).
    """

    id: str
    path: str
    role: Literal["reference", "attempt", "bad"]
    language: Language
    sentence_id: str
    text: str
    voice: str
    speed: int
    pitch: int
    variant: str
    expected: str
    reference: str | None = None
    reference_path: str | None = None
    reference_voice: str | None = None
    reference_text: str | None = None
    same_sentence: bool | None = None
    snr_db: float | None = None
    changes: list[str] = field(default_factory=list)
    duration_s: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    format: str | None = None
    subtype: str | None = None
    note: str = ""
    framing: Framing = "padded"
    held_out: bool = False


# --------------------------------------------------------------------------- synthesis


def synthesize(text: str, voice: Voice) -> FloatArray:
    """Speak ``text`` with espeak-ng and return 16 kHz mono float64 samples, padded with silence.

    espeak-ng writes 22050 Hz; resampling here (320/441, polyphase: 22050 * 320 / 441 = 16000)
    keeps every corpus file at the rate the engine works at and the files small. (Until the
    cross-synthesizer check this was 160/441, the ratio for 44.1 kHz: every espeak-ng file came
    out at 8000 samples a second labelled 16 kHz, so it played twice as fast with every
    frequency doubled: pitch, formants and all.)
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.wav"
        cmd = [
            "espeak-ng",
            "-v",
            voice.name,
            "-s",
            str(voice.speed),
            "-p",
            str(voice.pitch),
            "-w",
            str(out),
        ]
        subprocess.run([*cmd, text], check=True, capture_output=True, timeout=60)
        data, rate = sf.read(str(out), dtype="float64", always_2d=False)
    if rate != ESPEAK_RATE:
        raise RuntimeError(f"espeak-ng wrote {rate} Hz, expected {ESPEAK_RATE}")
    audio = np.asarray(resample_poly(data, 320, 441), dtype=np.float64)
    pad = np.zeros(int(PAD_S * SAMPLE_RATE))
    return np.concatenate([pad, audio, pad])


def synthesize_with_pauses(text: str, voice: Voice, pause_ms: Sequence[int]) -> FloatArray:
    """Read ``text`` as a hesitant patient: exact silent pauses between evenly spread chunks.

    SSML ``<break>`` is not used because espeak-ng scales break lengths with the speaking rate
    (a 700 ms break comes out near 340 ms at 130 wpm). Each chunk is synthesized on its own and
    trimmed to its speech, so each pause is exactly ``pause_ms`` of digital silence (plus the
    ~20 ms margins kept around each chunk).
    """
    words = text.split()
    slots = len(pause_ms)
    cuts = [round(len(words) * (i + 1) / (slots + 1)) for i in range(slots)]
    bounds = [0, *cuts, len(words)]
    margin = int(0.02 * SAMPLE_RATE)
    parts: list[FloatArray] = [np.zeros(int(PAD_S * SAMPLE_RATE))]
    for i in range(len(bounds) - 1):
        chunk = synthesize(" ".join(words[bounds[i] : bounds[i + 1]]), voice)
        start, end = speech_span(chunk)
        parts.append(chunk[max(0, start - margin) : end + margin])
        if i < slots:
            parts.append(np.zeros(int(pause_ms[i] * SAMPLE_RATE / 1000)))
    parts.append(np.zeros(int(PAD_S * SAMPLE_RATE)))
    return np.concatenate(parts)


def active_mask(audio: FloatArray, frame: int = 320) -> npt.NDArray[np.bool_]:
    """Per-frame voice activity: energy within 35 dB of the loudest 20 ms frame."""
    n = len(audio) // frame
    frames = audio[: n * frame].reshape(n, frame)
    energy = 10.0 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    mask: npt.NDArray[np.bool_] = energy > (energy.max() - 35.0)
    return mask


def speech_span(audio: FloatArray, frame: int = 320) -> tuple[int, int]:
    """First and last sample of speech (by :func:`active_mask`)."""
    idx = np.flatnonzero(active_mask(audio, frame))
    return int(idx[0] * frame), int((idx[-1] + 1) * frame)


def seed_for(key: str) -> int:
    """A stable RNG seed per file (Python's ``hash`` is salted per process)."""
    return zlib.crc32(key.encode("utf-8"))


def add_noise(audio: FloatArray, snr_db: float, key: str) -> FloatArray:
    """Add white Gaussian noise at ``snr_db`` relative to the power of the *active* speech.

    Measured over speech frames only, so leading silence does not make the SNR look better
    than what a listener hears. The result is scaled down (never up) to avoid clipping.
    """
    frame = 320
    mask = np.repeat(active_mask(audio, frame), frame)
    speech = audio[: len(mask)][mask]
    power = float(np.mean(speech**2))
    rng = np.random.default_rng(seed_for(key))
    noise = rng.standard_normal(len(audio)) * np.sqrt(power / 10.0 ** (snr_db / 10.0))
    mixed: FloatArray = audio + noise
    peak = float(np.max(np.abs(mixed)))
    return mixed * (0.95 / peak) if peak > 0.95 else mixed


def tighten(audio: FloatArray) -> FloatArray:
    """From the first to the last sample that is not digital silence at 16-bit PCM.

    Samples under half a 16-bit step are written as exact zeros, so they do not count.
    """
    idx = np.flatnonzero(np.abs(audio) >= 0.5 / 32768.0)
    if idx.size == 0:
        return audio
    return audio[int(idx[0]) : int(idx[-1]) + 1].copy()


def add_room(audio: FloatArray, key: str) -> FloatArray:
    """Pad with ROOM_PAD_S of silence either side and lay a room tone under everything.

    The tone is mostly low-frequency (white noise through a one-pole low-pass, like
    ventilation hum) plus a little white noise, ROOM_TONE_DB below the active speech, with
    a fixed per-file seed.
    """
    pad = np.zeros(int(ROOM_PAD_S * SAMPLE_RATE))
    x = np.concatenate([pad, audio, pad])
    frame = 320
    mask = np.repeat(active_mask(x, frame), frame)
    power = float(np.mean(x[: len(mask)][mask] ** 2)) / 10.0 ** (ROOM_TONE_DB / 10.0)
    rng = np.random.default_rng(seed_for(key))
    white = rng.standard_normal(len(x))
    hum = np.asarray(lfilter([1.0], [1.0, -0.95], rng.standard_normal(len(x))), dtype=np.float64)
    tone = hum / hum.std() + 0.5 * white
    return np.asarray(x + tone * np.sqrt(power / float(np.mean(tone**2))), dtype=np.float64)


def truncate_tight_half(audio: FloatArray) -> FloatArray:
    """The first half of a tight clip's samples, cut dead: an attempt stopped mid-sentence."""
    return audio[: len(audio) // 2].copy()


def truncate_half(audio: FloatArray) -> FloatArray:
    """Keep the first half of the speech (by time), as if the patient stopped mid-sentence."""
    start, end = speech_span(audio)
    cut = start + (end - start) // 2
    head = audio[:cut].copy()
    fade = min(len(head), int(0.02 * SAMPLE_RATE))
    head[len(head) - fade :] *= np.linspace(1.0, 0.0, fade)
    return np.concatenate([head, np.zeros(int(PAD_S * SAMPLE_RATE))])


def write_audio(
    path: Path,
    audio: FloatArray,
    *,
    fmt: str = "WAV",
    subtype: str = "PCM_16",
    rate: int = SAMPLE_RATE,
) -> None:
    """Write ``audio`` (mono or frames x channels) with soundfile, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(audio, -1.0, 1.0), rate, format=fmt, subtype=subtype)


def write_float32_wav(path: Path, audio: FloatArray, rate: int = SAMPLE_RATE) -> None:
    """Write a mono IEEE-float WAV by hand.

    libsndfile adds a ``PEAK`` chunk holding the current time to float files, which would make
    the committed fixture change at every regeneration.
    """
    data = np.clip(audio, -1.0, 1.0).astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHHH", 3, 1, rate, rate * 4, 4, 32, 0)
    fact = struct.pack("<I", len(audio))
    body = (
        b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"fact"
        + struct.pack("<I", 4)
        + fact
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def describe(entry: Entry, root: Path) -> Entry:
    """Fill duration, rate, channels and format from the file itself (when it is readable)."""
    path = root / entry.path
    try:
        info = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError):
        return entry
    return replace(
        entry,
        duration_s=round(float(info.duration), 3),
        sample_rate=info.samplerate,
        channels=info.channels,
        format=info.format,
        subtype=info.subtype,
    )


# --------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class Group:
    """One reference (a sentence read by one therapist voice) and all attempts compared to it."""

    sentence_index: int
    voice_index: int
    language: Language
    framing: Framing = "padded"


def sentences_for(language: Language) -> tuple[Sentence, ...]:
    """The sentence list of a language."""
    return EN_SENTENCES if language == "en" else ZH_SENTENCES


def build_group(group: Group, out: Path) -> list[Entry]:
    """Synthesize one reference and its attempts; return their manifest entries.

    The patient voice rotates with the variant and the therapist voice, so every variant kind
    is read by several different patients across the corpus and never by the therapist.
    """
    sentences = sentences_for(group.language)
    sentence = sentences[group.sentence_index]
    ref_voice = REFERENCE_VOICES[group.language][group.voice_index]
    patients = PATIENT_VOICES[group.language]
    lang_dir = "en" if group.language == "en" else "zh"
    padded = group.framing == "padded"
    folder = f"{group.framing}/{lang_dir}/{sentence.sid}/{ref_voice.label}"
    label = ref_voice.label if padded else f"{ref_voice.label}.{group.framing}"
    ref_id = f"{sentence.sid}.{label}.reference"
    held_out = group.sentence_index >= FIT_SENTENCES

    def frame(audio: FloatArray) -> FloatArray:
        """The speech itself: as synthesized (padded) or trimmed to its samples."""
        return audio if padded else tighten(audio)

    def finish(audio: FloatArray, key: str) -> FloatArray:
        """What the file holds around (and under) the speech."""
        return add_room(audio, key) if group.framing == "room" else audio

    def synth(text: str, voice: Voice) -> FloatArray:
        return frame(synthesize(text, voice))

    ref_path = f"{folder}/reference.wav"
    entries: list[Entry] = []

    def patient(k: int) -> Voice:
        return patients[(group.voice_index + group.sentence_index + k) % len(patients)]

    def save(
        variant: str,
        audio: FloatArray,
        voice: Voice,
        *,
        text: str,
        sid: str,
        suffix: str = "",
        finished: bool = False,
        **extra: Any,
    ) -> None:
        name = f"{variant}{suffix}"
        rel = f"{folder}/{name}.wav"
        write_audio(out / rel, audio if finished else finish(audio, f"{ref_id}.{name}"))
        entries.append(
            Entry(
                id=f"{sentence.sid}.{label}.{name}",
                path=rel,
                role="attempt",
                language=group.language,
                sentence_id=sid,
                text=text,
                voice=voice.name,
                speed=voice.speed,
                pitch=voice.pitch,
                variant=variant,
                expected=EXPECTED[variant],
                reference=ref_id,
                reference_path=ref_path,
                reference_voice=ref_voice.label,
                reference_text=sentence.text,
                same_sentence=sid == sentence.sid,
                framing=group.framing,
                held_out=held_out,
                **extra,
            )
        )

    reference = synth(sentence.text, ref_voice)
    write_audio(out / ref_path, finish(reference, ref_id))
    entries.append(
        Entry(
            id=ref_id,
            path=ref_path,
            role="reference",
            language=group.language,
            sentence_id=sentence.sid,
            text=sentence.text,
            voice=ref_voice.name,
            speed=ref_voice.speed,
            pitch=ref_voice.pitch,
            variant="reference",
            expected="reference",
            note=sentence.gloss,
            framing=group.framing,
            held_out=held_out,
        )
    )
    entries.append(
        Entry(
            id=f"{sentence.sid}.{label}.identical",
            path=ref_path,
            role="attempt",
            language=group.language,
            sentence_id=sentence.sid,
            text=sentence.text,
            voice=ref_voice.name,
            speed=ref_voice.speed,
            pitch=ref_voice.pitch,
            variant="identical",
            expected="match",
            reference=ref_id,
            reference_path=ref_path,
            reference_voice=ref_voice.label,
            reference_text=sentence.text,
            same_sentence=True,
            note="the reference file compared with itself: the ceiling",
            framing=group.framing,
            held_out=held_out,
        )
    )

    text, sid = sentence.text, sentence.sid
    clean = synth(text, patient(0))
    save("clean", clean, patient(0), text=text, sid=sid)
    clean_b = synth(text, patient(1))
    save("clean", clean_b, patient(1), text=text, sid=sid, suffix="_b")
    slow = replace(patient(2), speed=SLOW_SPEED)
    save("speed_slow", synth(text, slow), slow, text=text, sid=sid)
    fast = replace(patient(3), speed=FAST_SPEED)
    save("speed_fast", synth(text, fast), fast, text=text, sid=sid)
    shifted = replace(patient(4), pitch=5 if (group.voice_index + group.sentence_index) % 2 else 95)
    save(
        "pitch_shift",
        synth(text, shifted),
        shifted,
        text=text,
        sid=sid,
        note="same words, extreme espeak pitch (-p)",
    )
    for snr in (20, 10, 0):
        noisy = add_noise(finish(clean, f"{ref_id}.clean"), float(snr), f"{ref_id}.noise{snr}")
        save(
            f"noise_{snr}db",
            noisy,
            patient(0),
            text=text,
            sid=sid,
            snr_db=float(snr),
            finished=True,
        )
    save(
        "pauses",
        frame(synthesize_with_pauses(text, patient(1), PAUSES_MS)),
        patient(1),
        text=text,
        sid=sid,
        note=PAUSES_NOTE,
    )
    save(
        "truncated_half",
        truncate_half(clean) if padded else truncate_tight_half(clean),
        patient(0),
        text=text,
        sid=sid,
        note="first half of the speech only",
    )
    kind = "substitution" if group.language == "en" else "tone_substitution"
    for j, (alt_text, change) in enumerate(sentence.alternates):
        voice = patient(2 + j)
        save(
            kind,
            synth(alt_text, voice),
            voice,
            text=alt_text,
            sid=sid,
            suffix=f"_{j + 1}",
            changes=change.split(","),
        )
    other = sentences[(group.sentence_index + 1 + group.voice_index) % len(sentences)]
    if other.sid == sid:
        other = sentences[(group.sentence_index + 1) % len(sentences)]
    different = synth(other.text, patient(0))
    save("different_sentence", different, patient(0), text=other.text, sid=other.sid)
    save(
        "different_sentence_noise_0db",
        add_noise(finish(different, f"{ref_id}.different_sentence"), 0.0, f"{ref_id}.diff0"),
        patient(0),
        text=other.text,
        sid=other.sid,
        snr_db=0.0,
        finished=True,
    )
    return [describe(e, out) for e in entries]


def _bad_reference_entry(entry_id: str, rel: str, *, framing: str | None = None) -> Entry:
    """The therapist reading of ``en-s01`` the bad-input files are compared against."""
    sentence, voice = EN_SENTENCES[0], REFERENCE_VOICES["en"][0]
    extra: dict[str, Any] = {} if framing is None else {"framing": framing}
    return Entry(
        id=entry_id,
        path=rel,
        role="reference",
        language="en",
        sentence_id=sentence.sid,
        text=sentence.text,
        voice=voice.name,
        speed=voice.speed,
        pitch=voice.pitch,
        variant="reference",
        expected="reference",
        **extra,
    )


def _bad_entry(
    entry_id: str,
    variant: str,
    rel: str,
    note: str,
    *,
    reference_id: str,
    reference_path: str,
    text: str | None = None,
    framing: str | None = None,
) -> Entry:
    """A "bad input" entry: the ``en-s01`` patient reading, altered as ``variant`` says."""
    sentence = EN_SENTENCES[0]
    voice = PATIENT_VOICES["en"][0]
    extra: dict[str, Any] = {} if framing is None else {"framing": framing}
    return Entry(
        id=entry_id,
        path=rel,
        role="bad",
        language="en",
        sentence_id=sentence.sid,
        text=sentence.text if text is None else text,
        voice=voice.name,
        speed=voice.speed,
        pitch=voice.pitch,
        variant=variant,
        expected=EXPECTED[variant],
        reference=reference_id,
        reference_path=reference_path,
        reference_voice=REFERENCE_VOICES["en"][0].label,
        reference_text=sentence.text,
        same_sentence=True,
        note=note,
        **extra,
    )


def bad_files(out: Path, prefix: str, *, include_long: bool) -> list[Entry]:
    """Write files that are not ordinary recordings: each tests one input-validation path.

    All are readings of ``en-s01`` by a patient voice, compared against the ``en-us``
    reference of ``en-s01``, so a file that should be accepted also has a known right answer.
    """
    sentence = EN_SENTENCES[0]
    voice = PATIENT_VOICES["en"][0]
    speech = synthesize(sentence.text, voice)
    ref_voice = REFERENCE_VOICES["en"][0]
    entries: list[Entry] = []
    ref_rel = f"{prefix}reference.wav" if include_long else "en_reference.flac"
    ref_id = "bad.reference" if include_long else "en_reference"
    if include_long:
        write_audio(out / ref_rel, synthesize(sentence.text, ref_voice))
        entries.append(_bad_reference_entry(ref_id, ref_rel))

    def entry(variant: str, rel: str, note: str, text: str = sentence.text) -> Entry:
        return _bad_entry(
            f"bad.{variant}" if include_long else variant,
            variant,
            rel,
            note,
            text=text,
            reference_id=ref_id,
            reference_path=ref_rel,
        )

    rel = f"{prefix}silence.wav"
    write_audio(out / rel, np.zeros(2 * SAMPLE_RATE))
    entries.append(entry("silence", rel, "2 s of digital silence, PCM 16-bit", text=""))

    rel = f"{prefix}tiny_10ms.wav"
    start, end = speech_span(speech)
    mid = (start + end) // 2
    write_audio(out / rel, speech[mid : mid + SAMPLE_RATE // 100])
    entries.append(entry("tiny_10ms", rel, "10 ms (160 samples) of speech", text=""))

    rel = f"{prefix}empty.wav"
    (out / rel).write_bytes(b"")
    entries.append(entry("empty", rel, "0 bytes", text=""))

    rel = f"{prefix}clipped.wav"
    write_audio(out / rel, np.clip(speech * 12.0, -1.0, 1.0))
    entries.append(entry("clipped", rel, "speech amplified x12 and hard-clipped at full scale"))

    rel = f"{prefix}stereo_44k.wav"
    wide = np.asarray(resample_poly(speech, 441, 160), dtype=np.float64)
    delayed = np.concatenate([np.zeros(22), wide[:-22]]) * 0.8
    write_audio(out / rel, np.stack([wide, delayed], axis=1), rate=44_100)
    entries.append(
        entry("stereo_44k", rel, "stereo 44.1 kHz PCM 16-bit; right channel 0.8x and 0.5 ms late")
    )

    rel = f"{prefix}pcm8.wav"
    write_audio(out / rel, speech, subtype="PCM_U8")
    entries.append(entry("pcm8", rel, "8-bit unsigned PCM, 16 kHz mono"))

    rel = f"{prefix}float32.wav"
    write_float32_wav(out / rel, speech)
    entries.append(entry("float32", rel, "32-bit float WAV (WAVE_FORMAT_IEEE_FLOAT), 16 kHz"))

    rel = f"{prefix}corrupt_header.wav"
    buffer = io.BytesIO()
    sf.write(buffer, speech, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    raw = bytearray(buffer.getvalue())
    garbage = np.random.default_rng(seed_for("corrupt_header")).integers(0, 256, 28)
    raw[8:36] = bytes(int(b) for b in garbage)
    (out / rel).write_bytes(bytes(raw))
    entries.append(
        entry(
            "corrupt_header",
            rel,
            "valid PCM WAV whose bytes 8-35 ('WAVEfmt ' "
            "and the fmt chunk) are random; the data is intact",
        )
    )

    rel = f"{prefix}truncated_file.wav"
    whole = buffer.getvalue()
    (out / rel).write_bytes(whole[: 44 + (len(whole) - 44) // 2])
    entries.append(
        entry(
            "truncated_file",
            rel,
            "PCM WAV cut off half-way through the data "
            "chunk; the header still claims the full length",
        )
    )

    rel = f"{prefix}not_audio.wav"
    (out / rel).write_text(
        "This is not audio. It is a text file named .wav.\n" * 20, encoding="utf-8"
    )
    entries.append(entry("not_audio", rel, "UTF-8 text with a .wav name", text=""))

    if include_long:
        rel = f"{prefix}ten_minutes.wav"
        unit = np.concatenate([speech, np.zeros(SAMPLE_RATE)])
        reps = int(np.ceil(600 * SAMPLE_RATE / len(unit)))
        write_audio(out / rel, np.tile(unit, reps)[: 600 * SAMPLE_RATE])
        entries.append(
            entry(
                "ten_minutes",
                rel,
                "10 minutes: the sentence repeated with 1 s gaps, PCM 16-bit 16 kHz (19 MB)",
            )
        )
    return [describe(e, out) for e in entries]


def tight_format_files(
    out: Path, prefix: str, *, reference: str, reference_id: str, stereo_format: str = "WAV"
) -> list[Entry]:
    """The ``en-s01`` patient reading, tightly framed, in other formats and heavily clipped.

    Valid speech in another container or sample format must be analysed like the 16-bit
    original; the clip amplified x8 and clipped to full scale must be analysed as unreliable.
    ``reference`` (a tight reading by the ``en-us`` therapist voice) must already exist.
    ``stereo_format`` "FLAC" keeps the committed fixture small (a 44.1 kHz stereo WAV is
    three times the size).
    """
    sentence = EN_SENTENCES[0]
    voice = PATIENT_VOICES["en"][0]
    speech = tighten(synthesize(sentence.text, voice))
    entries: list[Entry] = []

    def add(variant: str, rel: str, note: str) -> None:
        entries.append(
            _bad_entry(
                f"{prefix.replace('/', '.')}{variant}",
                variant,
                rel,
                note,
                reference_id=reference_id,
                reference_path=reference,
                framing="tight",
            )
        )

    rel = f"{prefix}tight_float32.wav"
    write_float32_wav(out / rel, speech)
    add("tight_float32", rel, "tight clip, 32-bit float WAV, 16 kHz")
    rel = f"{prefix}tight_pcm8.wav"
    write_audio(out / rel, speech, subtype="PCM_U8")
    add("tight_pcm8", rel, "tight clip, 8-bit unsigned PCM, 16 kHz mono")
    rel = f"{prefix}tight_stereo_44k.{stereo_format.lower()}"
    wide = np.asarray(resample_poly(speech, 441, 160), dtype=np.float64)
    write_audio(out / rel, np.stack([wide, 0.8 * wide], axis=1), rate=44_100, fmt=stereo_format)
    add("tight_stereo_44k", rel, "tight clip, stereo 44.1 kHz PCM 16-bit (right channel 0.8x)")
    rel = f"{prefix}tight_clipped.wav"
    write_audio(out / rel, np.clip(speech * TIGHT_CLIP_GAIN, -1.0, 1.0))
    add("tight_clipped", rel, f"tight clip amplified x{TIGHT_CLIP_GAIN:g} and clipped")
    return [describe(e, out) for e in entries]


def _bad_job(out: Path) -> list[Entry]:
    entries = bad_files(out, "bad/", include_long=True)
    sentence, ref_voice = EN_SENTENCES[0], REFERENCE_VOICES["en"][0]
    ref_rel = "bad/reference_tight.wav"
    write_audio(out / ref_rel, tighten(synthesize(sentence.text, ref_voice)))
    entries.append(_bad_reference_entry("bad.reference_tight", ref_rel, framing="tight"))
    entries += tight_format_files(
        out, "bad/", reference=ref_rel, reference_id="bad.reference_tight"
    )
    return entries


def _group_job(args: tuple[Group, Path]) -> list[Entry]:
    return build_group(*args)


def espeak_version() -> str:
    """The espeak-ng version line, recorded in manifests so a corpus can be traced."""
    result = subprocess.run(
        ["espeak-ng", "--version"], check=True, capture_output=True, text=True, timeout=30
    )
    return result.stdout.strip()


def manifest_document(entries: list[Entry], kind: str) -> dict[str, Any]:
    """The manifest: global facts plus one object per file (fields of :class:`Entry`)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "generator": "scripts/make_corpus.py",
        "espeak_ng": espeak_version(),
        "sample_rate": SAMPLE_RATE,
        "snr_definition": "white Gaussian noise; SNR relative to mean power of active speech "
        "frames (20 ms frames within 35 dB of the loudest)",
        "expected_values": sorted(set(EXPECTED.values())),
        "sentences": [
            {
                "id": s.sid,
                "language": s.language,
                "text": s.text,
                "gloss": s.gloss,
                "alternates": [{"text": t, "changes": c.split(",")} for t, c in s.alternates],
            }
            for s in (*EN_SENTENCES, *ZH_SENTENCES)
            if s.sid in {e.sentence_id for e in entries}
        ],
        "entries": [asdict(e) for e in entries],
    }


def write_manifest(out: Path, entries: list[Entry], kind: str) -> Path:
    """Write ``manifest.json`` atomically (readers may poll for it)."""
    path = out / "manifest.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(
        json.dumps(manifest_document(entries, kind), indent=1, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    os.replace(tmp, path)
    return path


def make_corpus(out: Path, workers: int) -> list[Entry]:
    """Regenerate the full evaluation corpus into ``out``, replacing its previous content.

    The corpus is built in a sibling folder and swapped in at the end, so a reader of
    ``out/manifest.json`` never sees a half-written corpus.
    """
    if out.exists() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise SystemExit(f"{out} is not empty and holds no manifest.json: not replacing it")
    build = out.parent / f".{out.name}.building"
    if build.exists():
        shutil.rmtree(build)
    build.mkdir(parents=True)
    groups = [
        Group(s, v, lang, framing)
        for framing in FRAMINGS
        for lang in ("en", "zh-TW")
        for s in range(len(sentences_for(lang)))
        for v in range(len(REFERENCE_VOICES[lang]))
    ]
    entries: list[Entry] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        bad = pool.submit(_bad_job, build)
        for chunk in pool.map(_group_job, [(g, build) for g in groups]):
            entries.extend(chunk)
        entries.extend(bad.result())
    write_manifest(build, entries, "corpus")
    if out.exists():
        old = out.parent / f".{out.name}.old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
        os.replace(build, out)
        shutil.rmtree(old)
    else:
        os.replace(build, out)
    return entries


# --------------------------------------------------------------------------- units (issue 20)

#: Sentences of the units corpus, none of them in the committed corpus: (id, before, target,
#: wrong, after). English: the target word and the word read instead; Mandarin (tone-numbered
#: pinyin): the target syllable and the same syllable with another tone. ``before``/``after``
#: may be empty (target at an edge). The first half of each list is the fitting half, the
#: second the held-out half (:data:`UNITS_FIT`).
UNITS_EN: tuple[tuple[str, str, str, str, str], ...] = (
    ("en-u01", "The old man sold his", "boat", "coat", "last week."),
    ("en-u02", "Please give the", "dog", "log", "some water."),
    ("en-u03", "I saw a", "bird", "word", "on the roof this morning."),
    ("en-u04", "Put the green", "box", "fox", "under the table."),
    ("en-u05", "We will", "meet", "eat", "at the station at noon."),
    ("en-u06", "The children played in the", "sand", "band", "all afternoon."),
    ("en-u07", "Her", "coffee", "toffee", "was still too hot to drink."),
    ("en-u08", "Turn left at the corner and walk to the", "gate", "lake", ""),
    ("en-u09", "My sister bought a", "dress", "chest", "for the party."),
    ("en-u10", "The teacher wrote a", "number", "letter", "on the board."),
    ("en-u11", "Could you open the", "window", "cabinet", "for me please?"),
    ("en-u12", "He lost his", "keys", "shoes", "on the train yesterday."),
    ("en-u13", "The", "rain", "wind", "stopped just before dinner."),
    ("en-u14", "They planted a small", "tree", "rose", "in the yard."),
    ("en-u15", "I would like a cup of", "tea", "soup", "with lemon."),
    ("en-u16", "The baby fell asleep on the", "sofa", "floor", ""),
)
UNITS_ZH: tuple[tuple[str, str, str, str, str], ...] = (
    ("zh-u01", "wo3 de5", "peng2", "peng4", "you3 zhu4 zai4 tai2 bei3"),
    ("zh-u02", "qing3 ba3 shu1", "fang4", "fang1", "zai4 zhuo1 shang4"),
    ("zh-u03", "ta1 jin1 tian1", "mai3", "mai4", "le5 san1 ge4 bao1 zi5"),
    ("zh-u04", "wo3 men5 yi4 qi3", "chi1", "chi2", "wan3 fan4 hao3 ma5"),
    ("zh-u05", "zhe4 tiao2", "lu4", "lu2", "bu4 tai4 hao3 zou3"),
    ("zh-u06", "", "ma1", "ma3", "ma5 qu4 shang1 dian4 le5"),
    ("zh-u07", "ni3 ke3 yi3", "bang1", "bang4", "wo3 na2 yi1 xia4 ma5"),
    ("zh-u08", "ming2 tian1 hui4 xia4", "yu3", "yu2", ""),
    ("zh-u09", "wo3 xi3 huan1", "he1", "he2", "lv4 cha2"),
    ("zh-u10", "ba4 ba5 zai4", "kan4", "kan3", "bao4 zhi3"),
    ("zh-u11", "xiao3 mao1", "shui4", "shui3", "zai4 sha1 fa1 shang4"),
    ("zh-u12", "qing3 ni3", "deng3", "deng1", "wo3 wu3 fen1 zhong1"),
    ("zh-u13", "ta1 de5", "tou2", "tou4", "fa5 hen3 chang2"),
    ("zh-u14", "wo3 men5 zuo4", "che1", "che3", "qu4 xue2 xiao4"),
    ("zh-u15", "mei4 mei5 hen3 xi3 huan1", "hua4", "hua1", "hua4"),
    ("zh-u16", "jin1 tian1 de5 tang1 hen3", "xian2", "xian1", ""),
)
#: Sentences before this index (in each list) are the fitting half.
UNITS_FIT = 8
UNITS_REFERENCE_VOICES: dict[Language, tuple[Voice, ...]] = {
    "en": (Voice("en-us", 130, 50), Voice("en-us+f2", 135, 60)),
    "zh-TW": (Voice(ZH_VOICE, 120, 50), Voice(f"{ZH_VOICE}+f2", 120, 65)),
}
#: Practice voices: other espeak-ng voices, and for English Festival's ``kal_diphone``
#: (``festival:kal``) when Festival is installed (``apt-get install festival``).
UNITS_PATIENT_VOICES: dict[Language, tuple[Voice, ...]] = {
    "en": (
        Voice("en-gb+m3", 125, 45),
        Voice("en-us+f5", 120, 72),
        Voice("en-gb-scotland", 140, 40),
        Voice("festival:kal", 0, 0),
    ),
    "zh-TW": (
        Voice(f"{ZH_VOICE}+m1", 110, 35),
        Voice(f"{ZH_VOICE}+f3", 130, 60),
        Voice(f"{ZH_VOICE}+m7", 120, 45),
    ),
}
#: Festival voices built from human recordings, by the key used in ``festival:<key>``:
#: two diphone voices (American men, concatenated from recorded diphones) and an HTS voice
#: (an American woman, a statistical voice trained on her recordings). Debian packages
#: ``festvox-kallpc16k``, ``festvox-kdlpc16k``, ``festvox-us-slt-hts``.
FESTIVAL_VOICES: dict[str, str] = {
    "kal": "kal_diphone",
    "ked": "ked_diphone",
    "slt": "cmu_us_slt_arctic_hts",
}
#: Silence joining the before/target/after segments, per voice (short: under a pause).
UNITS_GAPS_S = (0.04, 0.07, 0.1)
#: Framings of the units corpus: ``noisy`` is ``padded`` with white noise at 20 dB SNR.
UNITS_FRAMINGS = ("tight", "padded", "noisy")


def synthesize_festival(text: str, voice: str | None = None) -> FloatArray:
    """Speak ``text`` with Festival (``text2wave``), 16 kHz mono, padded.

    ``voice`` is a Festival voice name (``ked_diphone``); ``None`` is Festival's default voice
    (``kal_diphone`` on Debian), which the units corpus uses.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.wav"
        select = ["-eval", f"(voice_{voice})"] if voice else []
        subprocess.run(
            ["text2wave", *select, "-o", str(out), "-F", str(SAMPLE_RATE)],
            input=text.encode("utf-8"),
            check=True,
            capture_output=True,
            timeout=60,
        )
        data, rate = sf.read(str(out), dtype="float64", always_2d=False)
    if rate != SAMPLE_RATE:
        data = resample_poly(data, SAMPLE_RATE, rate)
    pad = np.zeros(int(PAD_S * SAMPLE_RATE))
    return np.concatenate([pad, np.asarray(data, dtype=np.float64), pad])


def speak(text: str, voice: Voice) -> FloatArray:
    """:func:`synthesize` or :func:`synthesize_festival`, by the voice's name.

    ``festival:kal`` is Festival's default voice; ``festival:<key>`` another voice of
    :data:`FESTIVAL_VOICES`.
    """
    if voice.name.startswith("festival:"):
        key = voice.name.removeprefix("festival:")
        return synthesize_festival(text, None if key == "kal" else FESTIVAL_VOICES[key])
    return synthesize(text, voice)


def units_voices(language: Language) -> tuple[Voice, ...]:
    """The practice voices of the units corpus that this machine can speak."""
    voices = UNITS_PATIENT_VOICES[language]
    if shutil.which("text2wave") is None:
        voices = tuple(v for v in voices if not v.name.startswith("festival:"))
    return voices


def joined(parts: Sequence[str], voice: Voice, gap_s: float) -> tuple[FloatArray, list[float]]:
    """Each non-empty part spoken on its own, trimmed, joined by ``gap_s`` of silence.

    Returns the tight audio and the sample-exact start/end (seconds) of every part, so the
    span of the target word is known exactly.
    """
    gap = np.zeros(int(gap_s * SAMPLE_RATE))
    chunks: list[FloatArray] = []
    edges: list[float] = []
    pos = 0
    for text in parts:
        if not text:
            edges += [pos / SAMPLE_RATE, pos / SAMPLE_RATE]
            continue
        if chunks:
            chunks.append(gap)
            pos += gap.size
        # Trimmed to its active speech (plus 20 ms), not only to non-zero samples: some
        # voices end every utterance with ~0.25 s of near-silent tail, which joined up
        # would make real pauses the reference does not have.
        spoken = speak(text, voice)
        start, end = speech_span(spoken)
        margin = int(0.02 * SAMPLE_RATE)
        audio = tighten(spoken[max(0, start - margin) : end + margin])
        edges += [pos / SAMPLE_RATE, (pos + audio.size) / SAMPLE_RATE]
        chunks.append(audio)
        pos += audio.size
    return np.concatenate(chunks), edges


def units_frame(audio: FloatArray, framing: str, key: str) -> tuple[FloatArray, float]:
    """Frame a tight joined clip; returns the audio and the offset added before the speech."""
    if framing == "tight":
        return audio, 0.0
    pad = np.zeros(int(PAD_S * SAMPLE_RATE))
    padded = np.concatenate([pad, audio, pad])
    if framing == "noisy":
        padded = add_noise(padded, 20.0, key)
    return padded, PAD_S


def _units_job(args: tuple[Language, int, Path]) -> list[dict[str, Any]]:
    """All pairs of one units sentence: every framing, reference voice and practice voice."""
    language, index, out = args
    table = UNITS_EN if language == "en" else UNITS_ZH
    sid, before, target, wrong, after = table[index]
    held_out = index >= UNITS_FIT
    text = " ".join(p for p in (before, target, after) if p)
    other = table[(index + 3) % len(table)]
    other_text = " ".join(p for p in (other[1], other[2], other[4]) if p)
    rows: list[dict[str, Any]] = []
    lang_dir = "en" if language == "en" else "zh"
    voices = units_voices(language)
    for r, ref_voice in enumerate(UNITS_REFERENCE_VOICES[language]):
        ref_audio, ref_edges = joined((before, target, after), ref_voice, UNITS_GAPS_S[r])
        # Each practice reading is synthesized once and framed three ways.
        readings: list[tuple[Voice, str, tuple[str, str, str], FloatArray, list[float]]] = []
        for k, voice in enumerate(voices):
            gap = UNITS_GAPS_S[(k + r) % len(UNITS_GAPS_S)]
            for variant, parts in (
                ("right", (before, target, after)),
                ("wrong", (before, wrong, after)),
            ):
                readings.append((voice, variant, parts, *joined(parts, voice, gap)))
        for framing in UNITS_FRAMINGS:
            folder = f"{framing}/{lang_dir}/{sid}/{ref_voice.label}"
            ref_rel = f"{folder}/reference.wav"
            audio, off = units_frame(ref_audio, framing, ref_rel)
            write_audio(out / ref_rel, audio)
            ref_span = [ref_edges[2] + off, ref_edges[3] + off]
            for voice, variant, parts, prac, edges in readings:
                rel = f"{folder}/{variant}.{voice.label.replace(':', '_')}.wav"
                p_audio, p_off = units_frame(prac, framing, rel)
                write_audio(out / rel, p_audio)
                rows.append(
                    {
                        "id": rel.removesuffix(".wav"),
                        "path": rel,
                        "reference_path": ref_rel,
                        "language": language,
                        "sentence_id": sid,
                        "text": " ".join(p for p in parts if p),
                        "reference_text": text,
                        "target": target,
                        "said": parts[1],
                        "target_index": len(before.split()),
                        "variant": variant,
                        "framing": framing,
                        "voice": voice.label,
                        "reference_voice": ref_voice.label,
                        "held_out": held_out,
                        "span_s": [edges[2] + p_off, edges[3] + p_off],
                        "reference_span_s": ref_span,
                    }
                )
        if language == "zh-TW":
            # Raw framing: whole sentences spoken in one go, as the main corpus does.
            folder = f"raw/{lang_dir}/{sid}/{ref_voice.label}"
            raw_rel = f"{folder}/reference.wav"
            write_audio(out / raw_rel, synthesize(text, ref_voice))
            for voice in voices:
                rel = f"{folder}/different.{voice.label}.wav"
                write_audio(out / rel, synthesize(other_text, voice))
                rows.append(
                    {
                        "id": rel.removesuffix(".wav"),
                        "path": rel,
                        "reference_path": raw_rel,
                        "language": language,
                        "sentence_id": other[0],
                        "text": other_text,
                        "reference_text": text,
                        "variant": "different",
                        "framing": "raw",
                        "voice": voice.label,
                        "reference_voice": ref_voice.label,
                        "held_out": held_out,
                    }
                )
    return rows


def make_units_corpus(out: Path, workers: int) -> list[dict[str, Any]]:
    """The issue-20 corpus: pairs whose wrong span is known exactly (``units.json``).

    The reference reads before/target/after as separate segments joined by short silences in
    a therapist voice; the practice reads the same or the wrong target in another voice (and
    Festival for English when installed). Written to ``out/units.json``; regenerate with
    ``python scripts/make_corpus.py --units corpus-units``.
    """
    out.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[Language, int, Path]] = [
        (lang, i, out)
        for lang in ("en", "zh-TW")
        for i in range(len(UNITS_EN if lang == "en" else UNITS_ZH))
    ]
    rows: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for chunk in pool.map(_units_job, jobs):
            rows.extend(chunk)
    doc = {
        "kind": "units",
        "generator": "scripts/make_corpus.py --units",
        "espeak_ng": espeak_version(),
        "fit_sentences": UNITS_FIT,
        "entries": rows,
    }
    tmp = out / "units.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / "units.json")
    return rows


# --------------------------------------------------------------------------- cross-synthesizer

#: The cross-synthesizer set: the same English sentences read by espeak-ng voices and by the
#: Festival voices built from human recordings (:data:`FESTIVAL_VOICES`). Every ordered pair
#: of two different voices is compared, on the same sentence and on a different one, so each
#: direction (espeak-ng reference -> human-origin practice, and so on) is measured on its own.
CROSS_ESPEAK_VOICES: tuple[Voice, ...] = (
    Voice("en-us", 130, 50),
    Voice("en-gb+m3", 125, 45),
    Voice("en-us+f5", 120, 72),
)
#: The reference of a "different" pair reads the sentence this many places further on.
CROSS_OFFSET = 3


def voice_family(voice: Voice) -> str:
    """``espeak`` for an espeak-ng voice, ``human`` for a Festival voice (human recordings)."""
    return "human" if voice.name.startswith("festival:") else "espeak"


def cross_sentences() -> list[tuple[str, str, bool]]:
    """``(sentence id, text, held out)`` of the cross set: the main corpus's English sentences
    and the units corpus's (right target), each list's own held-out half kept held out."""
    rows = [(s.sid, s.text, i >= FIT_SENTENCES) for i, s in enumerate(sentences_for("en"))]
    rows += [
        (sid, " ".join(p for p in (before, target, after) if p), i >= UNITS_FIT)
        for i, (sid, before, target, _wrong, after) in enumerate(UNITS_EN)
    ]
    return rows


@lru_cache(maxsize=8)
def festival_has_voice(key: str) -> bool:
    """True when ``text2wave`` is installed and speaks with ``FESTIVAL_VOICES[key]``."""
    if shutil.which("text2wave") is None:
        return False
    try:
        audio = synthesize_festival("test", FESTIVAL_VOICES[key])
    except (subprocess.SubprocessError, OSError, RuntimeError):
        return False
    return bool(np.abs(audio).max() > 0.01)


def cross_voices() -> tuple[list[Voice], list[str]]:
    """The voices of the cross set this machine can speak, and a note per missing one."""
    voices = list(CROSS_ESPEAK_VOICES)
    missing: list[str] = []
    for key, name in FESTIVAL_VOICES.items():
        if festival_has_voice(key):
            voices.append(Voice(f"festival:{key}", 0, 0))
        else:
            missing.append(f"Festival voice {name} not available (skipped)")
    return voices, missing


def cross_entries(
    voices: Sequence[Voice], sentences: Sequence[tuple[str, str, bool]]
) -> list[dict[str, Any]]:
    """Every ordered pair of two different voices, same and different sentence (no audio)."""
    rows: list[dict[str, Any]] = []
    n = len(sentences)

    def rel(voice: Voice, sid: str) -> str:
        return f"voices/{voice.label.replace(':', '_')}/{sid}.wav"

    for ref in voices:
        for practice in voices:
            if practice == ref:
                continue
            for i, (sid, text, held_out) in enumerate(sentences):
                other_sid, other_text, _ = sentences[(i + CROSS_OFFSET) % n]
                for variant, said_sid, said in (
                    ("same", sid, text),
                    ("different", other_sid, other_text),
                ):
                    rows.append(
                        {
                            "id": f"{ref.label}/{practice.label}/{sid}/{variant}",
                            "path": rel(practice, said_sid),
                            "reference_path": rel(ref, sid),
                            "language": "en",
                            "sentence_id": said_sid,
                            "reference_sentence_id": sid,
                            "text": said,
                            "reference_text": text,
                            "variant": variant,
                            "framing": "padded",
                            "voice": practice.label,
                            "reference_voice": ref.label,
                            "family": voice_family(practice),
                            "reference_family": voice_family(ref),
                            "held_out": held_out,
                        }
                    )
    return rows


def _cross_voice_job(args: tuple[Voice, Path]) -> int:
    """Every cross-set sentence in one voice; returns how many files were written."""
    voice, out = args
    folder = out / "voices" / voice.label.replace(":", "_")
    sentences = cross_sentences()
    for sid, text, _ in sentences:
        write_audio(folder / f"{sid}.wav", speak(text, voice))
    return len(sentences)


def make_cross_corpus(out: Path, workers: int) -> tuple[list[dict[str, Any]], list[str]]:
    """The cross-synthesizer set (``out/cross.json``), and notes on voices left out.

    Without Festival only the espeak-ng voices are written, with a note saying so.
    Regenerate with ``python scripts/make_corpus.py --cross corpus-cross``.
    """
    out.mkdir(parents=True, exist_ok=True)
    voices, missing = cross_voices()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_cross_voice_job, [(v, out) for v in voices]))
    rows = cross_entries(voices, cross_sentences())
    doc = {
        "kind": "cross",
        "generator": "scripts/make_corpus.py --cross",
        "espeak_ng": espeak_version(),
        "voices": [asdict(v) for v in voices],
        "missing": missing,
        "entries": rows,
    }
    tmp = out / "cross.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / "cross.json")
    return rows, missing


# --------------------------------------------------------------------------- fixtures, samples


def _pair_files(
    out: Path,
    language: Language,
    fmt: str,
    ext: str,
    subtype: str,
    variants: Sequence[str],
    framing: Framing = "padded",
) -> list[Entry]:
    """Reference plus selected attempts of sentence 1 of ``language``, in ``fmt``.

    ``tight`` files get a ``_tight`` suffix and are compared with the tight reference.
    """
    sentences = sentences_for(language)
    sentence = sentences[0]
    ref_voice = REFERENCE_VOICES[language][0]
    patient = PATIENT_VOICES[language][1]
    tight = framing == "tight"
    suffix = "_tight" if tight else ""
    prefix = "en" if language == "en" else "zh"

    def synth(text: str, voice: Voice) -> FloatArray:
        audio = synthesize(text, voice)
        return tighten(audio) if tight else audio

    ref_id = f"{prefix}_reference{suffix}"
    ref_rel = f"{ref_id}.{ext}"
    clean = synth(sentence.text, patient)
    write_audio(out / ref_rel, synth(sentence.text, ref_voice), fmt=fmt, subtype=subtype)
    entries = [
        Entry(
            id=ref_id,
            path=ref_rel,
            role="reference",
            language=language,
            sentence_id=sentence.sid,
            text=sentence.text,
            voice=ref_voice.name,
            speed=ref_voice.speed,
            pitch=ref_voice.pitch,
            variant="reference",
            expected="reference",
            note=sentence.gloss,
            framing=framing,
        )
    ]
    for variant in variants:
        text, sid, voice, snr = sentence.text, sentence.sid, patient, None
        changes: list[str] = []
        name = variant
        if variant == "clean":
            audio, name = clean, "other_voice"
        elif variant == "noise_0db":
            audio, snr = add_noise(clean, 0.0, f"{ref_id}.noise0"), 0.0
        elif variant == "truncated_half":
            audio = truncate_tight_half(clean) if tight else truncate_half(clean)
        elif variant == "pauses":
            audio = synthesize_with_pauses(text, patient, PAUSES_MS)
            audio = tighten(audio) if tight else audio
        elif variant in ("substitution", "tone_substitution"):
            text, change = sentence.alternates[0]
            changes = change.split(",")
            audio = synth(text, patient)
        elif variant == "different_sentence":
            other = sentences[1]
            text, sid = other.text, other.sid
            audio = synth(text, patient)
        else:
            raise ValueError(variant)
        name += suffix
        rel = f"{prefix}_{name}.{ext}"
        write_audio(out / rel, audio, fmt=fmt, subtype=subtype)
        entries.append(
            Entry(
                note=PAUSES_NOTE if variant == "pauses" else "",
                id=f"{prefix}_{name}",
                path=rel,
                role="attempt",
                language=language,
                sentence_id=sid,
                text=text,
                voice=voice.name,
                speed=voice.speed,
                pitch=voice.pitch,
                variant=variant,
                expected=EXPECTED[variant],
                reference=ref_id,
                reference_path=ref_rel,
                reference_voice=ref_voice.label,
                reference_text=sentence.text,
                same_sentence=sid == sentence.sid,
                snr_db=snr,
                changes=changes,
                framing=framing,
            )
        )
    return [describe(e, out) for e in entries]


FIXTURE_VARIANTS: dict[Language, tuple[str, ...]] = {
    "en": ("clean", "different_sentence", "truncated_half", "pauses", "noise_0db", "substitution"),
    "zh-TW": (
        "clean",
        "different_sentence",
        "truncated_half",
        "pauses",
        "noise_0db",
        "tone_substitution",
    ),
}


def make_fixtures(out: Path) -> list[Entry]:
    """The small committed set the default test suite reads (FLAC speech + bad WAV files).

    Every speech fixture comes in both framings (``en_reference.flac`` and
    ``en_reference_tight.flac``); the other formats come padded and tight.
    """
    out.mkdir(parents=True, exist_ok=True)
    entries: list[Entry] = []
    # Padded and tight only: a "room" pass would write the same file names again (the room
    # framing is the full corpus' own; the fixtures have no "_room" files).
    for framing in ("padded", "tight"):
        for language in ("en", "zh-TW"):
            variants = FIXTURE_VARIANTS[language]
            entries += _pair_files(out, language, "FLAC", "flac", "PCM_16", variants, framing)
    entries += bad_files(out, "", include_long=False)
    entries += tight_format_files(
        out,
        "",
        reference="en_reference_tight.flac",
        reference_id="en_reference_tight",
        stereo_format="FLAC",
    )
    write_manifest(out, entries, "fixtures")
    return entries


def make_samples(out: Path) -> list[Entry]:
    """Demo recordings shipped in the wheel: per language a reference, an attempt, a half read.

    FLAC rather than OGG Vorbis: libsndfile gives every Ogg stream a random serial number, so
    Vorbis files would change at each regeneration; FLAC output is byte-for-byte reproducible.
    """
    out.mkdir(parents=True, exist_ok=True)
    entries: list[Entry] = []
    for language in ("en", "zh-TW"):
        entries += _pair_files(out, language, "FLAC", "flac", "PCM_16", ("clean", "truncated_half"))
    write_manifest(out, entries, "samples")
    return entries


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; exactly one of ``--out``, ``--fixtures``, ``--samples``,
    ``--units``, ``--cross``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--out", type=Path, help="write the full evaluation corpus here")
    mode.add_argument("--fixtures", type=Path, help="write the committed test fixtures here")
    mode.add_argument("--samples", type=Path, help="write the shipped demo samples here")
    mode.add_argument("--units", type=Path, help="write the issue-20 units corpus here")
    mode.add_argument(
        "--cross", type=Path, help="write the cross-synthesizer set here (Festival optional)"
    )
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    args = parser.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        print("espeak-ng not found: apt-get install espeak-ng", file=sys.stderr)
        return 2
    started = time.perf_counter()
    if args.units is not None:
        rows = make_units_corpus(args.units, args.workers)
        print(f"{len(rows)} pairs in {args.units} ({time.perf_counter() - started:.1f} s)")
        return 0
    if args.cross is not None:
        rows, missing = make_cross_corpus(args.cross, args.workers)
        for note in missing:
            print(note, file=sys.stderr)
        print(f"{len(rows)} pairs in {args.cross} ({time.perf_counter() - started:.1f} s)")
        return 0
    if args.out is not None:
        entries = make_corpus(args.out, args.workers)
        target = args.out
    elif args.fixtures is not None:
        entries, target = make_fixtures(args.fixtures), args.fixtures
    else:
        entries, target = make_samples(args.samples), args.samples
    files = {e.path for e in entries}
    size = sum((target / p).stat().st_size for p in files)
    print(
        f"{len(entries)} entries, {len(files)} files, {size / 1e6:.1f} MB in {target} "
        f"({time.perf_counter() - started:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
