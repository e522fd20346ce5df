"""The shipped demo samples and the committed audio fixtures are present, readable and described.

Other tests and the demo rely on these files having the format their manifest claims; a
regeneration with a different espeak-ng or libsndfile must not silently change them.
Regenerate with ``scripts/make_corpus.py --fixtures tests/data/audio`` and
``--samples src/vocalborn_tasks/samples``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from vocalborn_tasks.samples import list_samples, sample_manifest, sample_path

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "audio"
SAMPLE_RATE = 16_000

#: Files whose manifest ``expected`` is a rejection and that libsndfile cannot open at all.
UNREADABLE = {"empty.wav", "corrupt_header.wav", "not_audio.wav"}


def _fixture_manifest() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "manifest.json").read_text(encoding="utf-8"))
    return data


def _fixture_entries() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = _fixture_manifest()["entries"]
    return entries


# ----------------------------------------------------------------------------- shipped samples


def test_samples_are_listed_with_both_languages() -> None:
    names = list_samples()
    assert names == sorted(names)
    for language in ("en", "zh"):
        for kind in ("reference", "other_voice", "truncated_half"):
            assert f"{language}_{kind}.flac" in names


@pytest.mark.parametrize("name", list_samples())
def test_sample_is_small_16k_mono_speech(name: str) -> None:
    path = sample_path(name)
    assert path.is_file()
    assert path.stat().st_size < 100_000
    data, rate = sf.read(str(path), dtype="float64", always_2d=True)
    assert rate == SAMPLE_RATE
    assert data.shape[1] == 1
    assert 0.5 < len(data) / rate < 6.0
    assert float(np.max(np.abs(data))) > 0.05  # speech, not silence


def test_sample_path_accepts_stem_and_rejects_unknown() -> None:
    assert sample_path("en_reference") == sample_path("en_reference.flac")
    with pytest.raises(KeyError, match="en_reference"):
        sample_path("no_such_sample")


def test_sample_manifest_matches_files() -> None:
    manifest = sample_manifest()
    entries: list[dict[str, Any]] = manifest["entries"]
    assert sorted(e["path"] for e in entries) == list_samples()
    ids = {e["id"] for e in entries}
    for entry in entries:
        info = sf.info(str(sample_path(entry["path"])))
        assert (info.samplerate, info.channels) == (entry["sample_rate"], entry["channels"])
        if entry["role"] == "reference":
            assert entry["reference"] is None
        else:
            assert entry["reference"] in ids
            assert sample_path(entry["reference_path"]).is_file()
            assert entry["language"] == next(
                e["language"] for e in entries if e["id"] == entry["reference"]
            )


def test_half_read_sample_is_shorter_than_its_reference() -> None:
    for language in ("en", "zh"):
        half = sf.info(str(sample_path(f"{language}_truncated_half"))).duration
        full = sf.info(str(sample_path(f"{language}_other_voice"))).duration
        assert half < 0.7 * full


# ----------------------------------------------------------------------------- test fixtures


def test_fixture_manifest_lists_exactly_the_files() -> None:
    on_disk = {p.name for p in FIXTURES.iterdir()} - {"manifest.json", "README.md"}
    assert {e["path"] for e in _fixture_entries()} == on_disk


def test_fixtures_stay_small_enough_to_commit() -> None:
    # 3 MB until 1.4.0, when every espeak-ng file was (by a generator bug) half its real
    # length; at the real rate the same 42 files take 3.9 MB.
    total = sum(p.stat().st_size for p in FIXTURES.iterdir())
    assert total < 4_500_000


def test_fixture_readme_mentions_every_file() -> None:
    readme = (FIXTURES / "README.md").read_text(encoding="utf-8")
    for entry in _fixture_entries():
        assert f"`{entry['path']}`" in readme, entry["path"]


def test_fixture_references_resolve() -> None:
    entries = _fixture_entries()
    by_id = {e["id"]: e for e in entries}
    assert len(by_id) == len(entries)
    for entry in entries:
        if entry["role"] == "reference":
            continue
        reference = by_id[entry["reference"]]
        assert reference["role"] == "reference"
        assert reference["path"] == entry["reference_path"]
        assert entry["expected"] in _fixture_manifest()["expected_values"]


@pytest.mark.parametrize(
    "entry",
    [e for e in _fixture_entries() if e["path"] not in UNREADABLE],
    ids=lambda e: e["path"],
)
def test_readable_fixture_matches_its_manifest(entry: dict[str, Any]) -> None:
    data, rate = sf.read(str(FIXTURES / entry["path"]), dtype="float64", always_2d=True)
    assert rate == entry["sample_rate"]
    assert data.shape[1] == entry["channels"]
    if entry["path"].endswith(".flac") and entry["role"] != "bad":
        assert (rate, data.shape[1]) == (SAMPLE_RATE, 1)


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_unreadable_fixture_is_rejected_by_soundfile(name: str) -> None:
    with pytest.raises(sf.LibsndfileError):
        sf.read(str(FIXTURES / name))


@pytest.mark.parametrize(
    ("name", "rate", "channels", "subtype"),
    [
        ("stereo_44k.wav", 44_100, 2, "PCM_16"),
        ("pcm8.wav", SAMPLE_RATE, 1, "PCM_U8"),
        ("float32.wav", SAMPLE_RATE, 1, "FLOAT"),
        ("clipped.wav", SAMPLE_RATE, 1, "PCM_16"),
        ("tight_stereo_44k.flac", 44_100, 2, "PCM_16"),
        ("tight_pcm8.wav", SAMPLE_RATE, 1, "PCM_U8"),
        ("tight_float32.wav", SAMPLE_RATE, 1, "FLOAT"),
        ("tight_clipped.wav", SAMPLE_RATE, 1, "PCM_16"),
    ],
)
def test_format_fixtures_have_their_format(
    name: str, rate: int, channels: int, subtype: str
) -> None:
    info = sf.info(str(FIXTURES / name))
    assert (info.samplerate, info.channels, info.subtype) == (rate, channels, subtype)


def test_bad_fixtures_are_what_their_names_say() -> None:
    assert (FIXTURES / "empty.wav").stat().st_size == 0
    silence, _ = sf.read(str(FIXTURES / "silence.wav"))
    assert len(silence) == 2 * SAMPLE_RATE
    assert not np.any(silence)
    tiny, _ = sf.read(str(FIXTURES / "tiny_10ms.wav"))
    assert len(tiny) == SAMPLE_RATE // 100
    clipped, _ = sf.read(str(FIXTURES / "clipped.wav"))
    assert np.mean(np.abs(clipped) > 0.99) > 0.05
    raw = (FIXTURES / "truncated_file.wav").read_bytes()
    claimed = int.from_bytes(raw[40:44], "little")
    assert raw[36:40] == b"data"
    assert len(raw) - 44 < claimed
    assert (FIXTURES / "not_audio.wav").read_text(encoding="utf-8").startswith("This is not")
