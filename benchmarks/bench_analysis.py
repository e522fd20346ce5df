"""CPU cost of the analysis engine: ``OMP_NUM_THREADS=1 python benchmarks/bench_analysis.py``.

Measures process CPU time (not wall time) on one core:

* a 5 s recording against a 5 s reference, with a cold reference cache (both recordings
  measured) and with a warm one (the usual case: one reference, many patients);
* feature extraction per second of audio, for a recording (all speaker warps) and for a
  reference (one warp);
* peak memory (tracemalloc) of the 5 s + 5 s pair with a cold cache;
* refusing a 10-minute recording and capping a 10-minute pair: time and peak memory.

The speech is the committed espeak-ng fixtures (``tests/data/audio``) repeated to 5 s, so the
script needs no network and no espeak-ng. Results go to ``docs/benchmarks.md`` by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
import soundfile as sf

from vocalborn_tasks.analysis import AnalysisOptions, BuiltinAnalyzer
from vocalborn_tasks.analysis.io import SAMPLE_RATE, load_audio
from vocalborn_tasks.analysis.profile import WARPS, build_profile
from vocalborn_tasks.errors import AudioError

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "data" / "audio"


def _five_seconds(name: str) -> bytes:
    x, rate = sf.read(FIXTURES / name, dtype="float64")
    reps = int(np.ceil(5.0 * rate / x.size))
    y = np.tile(x, reps)[: int(5.0 * rate)]
    buf = io.BytesIO()
    sf.write(buf, y, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _cpu(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median and minimum CPU seconds of ``fn`` over ``runs`` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(runs):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times), min(times)


def _ten_minutes(path: Path) -> None:
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    second = (0.3 * np.sin(2 * np.pi * 150 * t) * (t < 0.7)).astype(np.float32)
    with sf.SoundFile(path, "w", SAMPLE_RATE, 1, subtype="PCM_16") as f:
        for _ in range(600):
            f.write(second)


def _peak(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall seconds and tracemalloc peak (MiB) of one call; AudioError counts as done."""
    tracemalloc.start()
    start = time.perf_counter()
    with contextlib.suppress(AudioError):
        fn()
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return elapsed, peak / 2**20


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    if not FIXTURES.is_dir():
        print(f"{FIXTURES} is missing", file=sys.stderr)
        return 2

    reference = _five_seconds("en_reference.flac")
    recording = _five_seconds("en_other_voice.flac")

    def cold() -> object:
        return BuiltinAnalyzer().analyze(recording, reference, language="en")

    warm_analyzer = BuiltinAnalyzer()

    def warm() -> object:
        return warm_analyzer.analyze(recording, reference, language="en")

    audio = load_audio(recording, max_duration_s=60.0, min_duration_s=0.3)

    def features_sample() -> object:
        return build_profile(audio, warps=WARPS)

    def features_reference() -> object:
        return build_profile(audio)

    rows = [
        ("5 s recording + 5 s reference, cold cache", *_cpu(cold, args.runs), 1.0),
        ("5 s recording + 5 s reference, warm cache", *_cpu(warm, args.runs), 1.0),
        ("recording features (7 warps), per s of audio", *_cpu(features_sample, args.runs), 5.0),
        ("reference features (1 warp), per s of audio", *_cpu(features_reference, args.runs), 5.0),
    ]
    pair_peak = _peak(cold)[1]
    print(f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, {args.runs} runs, CPU time\n")
    print("| measurement | median ms | min ms |")
    print("|---|---:|---:|")
    for name, median, best, per in rows:
        print(f"| {name} | {1000 * median / per:.1f} | {1000 * best / per:.1f} |")

    with tempfile.TemporaryDirectory() as tmp:
        long = Path(tmp) / "ten_minutes.wav"
        _ten_minutes(long)
        ref_path = Path(tmp) / "reference.wav"
        ref_path.write_bytes(reference)
        refused = _peak(lambda: BuiltinAnalyzer().analyze(long, ref_path))
        capped = _peak(
            lambda: BuiltinAnalyzer(AnalysisOptions(max_duration_s=60.0)).analyze(long, long)
        )
    print(f"\n5 s + 5 s pair, cold cache: tracemalloc peak {pair_peak:.1f} MiB")
    print("\n| 10-minute file | wall s | tracemalloc peak MiB |")
    print("|---|---:|---:|")
    print(f"| refused (5 s reference) | {refused[0]:.3f} | {refused[1]:.1f} |")
    print(f"| capped to 60 s (10-minute reference) | {capped[0]:.3f} | {capped[1]:.1f} |")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nprocess max RSS: {maxrss:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
