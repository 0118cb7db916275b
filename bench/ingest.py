"""Ingest throughput on the default corpora, next to a naive single-process loop.

    .venv/bin/python bench/ingest.py [--repeats 3] [--data-root data]

For each corpus: the pipeline's ingest (hash, decode in worker processes, dedupe, write
shards; each repeat starts from an empty output folder, so everything is decoded) against a
plain loop that only decodes (PIL for images, pretty_midi for MIDI, OpenCV VideoCapture for
video), in the same run. Medians of --repeats runs. Targets on 2 cores: MIDI >= 20x the
pretty_midi loop, video decode >= 500 frames/s at 320x240, images >= 5,000 files/s.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corpora.defaults import seed_if_empty  # noqa: E402
from corpora.images import IMAGES, ImageCorpusConfig  # noqa: E402
from corpora.ingest import IngestSettings, ingest  # noqa: E402
from corpora.scanning import scan  # noqa: E402
from corpora.midi import MIDI, MidiCorpusConfig  # noqa: E402
from corpora.video import VIDEO, VideoCorpusConfig, write_video  # noqa: E402


def pil_loop(files):
    from PIL import Image

    for f in files:
        with Image.open(f.path) as image:
            np.asarray(image.convert("L"))
    return len(files)


def pretty_midi_loop(files):
    import pretty_midi

    for f in files:
        pretty_midi.PrettyMIDI(str(f.path))
    return len(files)


def opencv_loop(files):
    import cv2

    frames = 0
    for f in files:
        capture = cv2.VideoCapture(str(f.path))
        while True:
            ok, _ = capture.read()
            if not ok:
                break
            frames += 1
        capture.release()
    return frames


def median_time(run, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def bench_corpus(name, modality, config, raw: Path, baseline, repeats: int, workers: int):
    files = scan(raw)
    megabytes = sum(f.size for f in files) / 1e6

    def pipeline():
        with tempfile.TemporaryDirectory() as out:
            return ingest(modality, config, raw, out, IngestSettings(workers=workers), progress=lambda _: None)

    pipeline_s, report = median_time(pipeline, repeats)
    baseline_s, baseline_units = median_time(lambda: baseline(files), repeats)
    return {
        "corpus": name, "files": len(files), "MB": megabytes, "pipeline_s": pipeline_s,
        "files_per_s": len(files) / pipeline_s, "MB_per_s": megabytes / pipeline_s,
        "baseline_s": baseline_s, "baseline_files_per_s": len(files) / baseline_s,
        "speedup": baseline_s / pipeline_s, "rows": report.counts["rows"],
        "baseline_units": baseline_units,
    }


def synthetic_video_folder(folder: Path, count: int = 6, frames: int = 300) -> Path:
    """320x240 H.264 clips with moving content (the decode target is stated at this size)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:240, 0:320]
    for index in range(count):
        phase = rng.uniform(0, 6.28)
        clip = np.stack([
            np.stack([(128 + 127 * np.sin(x / 17 + t / 5 + phase + c)).astype(np.uint8) for c in range(3)], axis=-1)
            for t in range(frames)
        ])
        write_video(folder / f"synthetic-{index}.mp4", clip, fps=30)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="corpora to run (default: all)")
    args = parser.parse_args()
    raw_root = Path(args.data_root) / "raw"
    corpora = {
        "images": (IMAGES, ImageCorpusConfig(), pil_loop),
        "painting": (IMAGES, ImageCorpusConfig(resolution=128, channels=3, label_from_path=False), pil_loop),
        "midi": (MIDI, MidiCorpusConfig(), pretty_midi_loop),
        "video": (VIDEO, VideoCorpusConfig(), opencv_loop),
    }
    rows = []
    for name, (modality, config, baseline) in corpora.items():
        if args.only and name not in args.only:
            continue
        seed_if_empty(name, raw_root / name)
        rows.append(bench_corpus(name, modality, config, raw_root / name, baseline, args.repeats, args.workers))
    if not args.only or "video-320x240" in args.only:
        with tempfile.TemporaryDirectory() as folder:
            raw = synthetic_video_folder(Path(folder) / "raw")
            # keep the source rate so every decoded frame is also resampled, resized and stored
            config = VideoCorpusConfig(fps=30.0)
            row = bench_corpus("video-320x240", VIDEO, config, raw, opencv_loop, args.repeats, args.workers)
            row["frames"] = row["baseline_units"]
            rows.append(row)

    print(f"\ningest benchmark: median of {args.repeats} runs, {args.workers} worker processes\n")
    print("| corpus | files | MB | pipeline s | files/s | MB/s | naive loop s | naive files/s | pipeline / naive |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['corpus']} | {r['files']} | {r['MB']:.1f} | {r['pipeline_s']:.2f} | {r['files_per_s']:.0f} | "
            f"{r['MB_per_s']:.1f} | {r['baseline_s']:.2f} | {r['baseline_files_per_s']:.0f} | {r['speedup']:.1f}x |"
        )
    for r in rows:
        if "frames" in r:
            print(f"\n{r['corpus']}: {r['frames']} frames; pipeline {r['frames'] / r['pipeline_s']:.0f} frames/s "
                  f"(decode + resample + resize + shard), OpenCV loop {r['frames'] / r['baseline_s']:.0f} frames/s")
    print("\nnaive loops: PIL open+convert (images), pretty_midi.PrettyMIDI (midi), cv2.VideoCapture read (video).")


if __name__ == "__main__":
    main()
