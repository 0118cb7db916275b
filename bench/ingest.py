"""Ingest throughput on the default corpora, next to a plain single-process loop.

    .venv/bin/python bench/ingest.py [--repeats 3] [--data-root data] [--only midi video-320x240]

For each corpus, in the same run, three timings (medians of --repeats runs, taken in turn so
that load from other jobs falls on all three alike):

- end to end: the pipeline's ingest (hash, decode in worker processes, dedupe, write shards;
  each repeat starts from an empty output folder, so everything is decoded);
- decode only: the modality's `decode` called on every file in this process, one after the
  other (what one file costs the decoder, without the engine around it);
- the plain loop: PIL open + convert (images), pretty_midi.PrettyMIDI (MIDI), OpenCV
  VideoCapture read (video), also in this process.

Targets (ratios against the plain loop in the same run): MIDI at least 50x a plain
pretty_midi load loop end to end; video at least the frames/s of a plain OpenCV read loop;
images at least a plain PIL open-and-convert loop.
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
from corpora.ingest import DecodeTask, IngestSettings, ingest  # noqa: E402
from corpora.scanning import scan  # noqa: E402
from corpora.midi import MIDI, MidiCorpusConfig  # noqa: E402
from corpora.video import VIDEO, VideoCorpusConfig, write_video  # noqa: E402
from provenance.licences import is_licence_file  # noqa: E402


# the targets: our speed / the plain loop's, end to end
TARGETS = {"images": ">= 1x", "painting": ">= 1x", "midi": ">= 50x", "video": ">= 1x (frames/s)"}


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


def timed(run) -> tuple[float, object]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def decode_loop(modality, config, files):
    for f in files:
        try:
            modality.decode(DecodeTask(str(f.path), f.relpath, config))
        except Exception:  # noqa: BLE001 - a rejected file costs what it costs, as in the pipeline
            pass
    return len(files)


def bench_corpus(name, modality, config, raw: Path, baseline, repeats: int, workers: int):
    files = scan(raw, keep=lambda relpath: not is_licence_file(relpath))  # as the ingest counts them
    megabytes = sum(f.size for f in files) / 1e6

    def pipeline():
        with tempfile.TemporaryDirectory() as out:
            return ingest(modality, config, raw, out, IngestSettings(workers=workers), progress=lambda _: None)

    times = {"pipeline": [], "decode": [], "baseline": []}
    report = baseline_units = None
    for _ in range(repeats):  # in turn, so that a burst of load from elsewhere hits all three
        seconds, report = timed(pipeline)
        times["pipeline"].append(seconds)
        seconds, _ = timed(lambda: decode_loop(modality, config, files))
        times["decode"].append(seconds)
        seconds, baseline_units = timed(lambda: baseline(files))
        times["baseline"].append(seconds)
    pipeline_s, decode_s, baseline_s = (statistics.median(times[k]) for k in ("pipeline", "decode", "baseline"))
    return {
        "corpus": name, "files": len(files), "MB": megabytes, "pipeline_s": pipeline_s,
        "files_per_s": len(files) / pipeline_s, "MB_per_s": megabytes / pipeline_s,
        "decode_s": decode_s, "baseline_s": baseline_s, "baseline_files_per_s": len(files) / baseline_s,
        "speedup": baseline_s / pipeline_s, "decode_speedup": baseline_s / decode_s, "rows": report.counts["rows"],
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
    print("| corpus | files | MB | end to end s | files/s | decode only s | plain loop s | "
          "end to end / plain | decode only / plain | target |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['corpus']} | {r['files']} | {r['MB']:.1f} | {r['pipeline_s']:.2f} | {r['files_per_s']:.0f} | "
            f"{r['decode_s']:.2f} | {r['baseline_s']:.2f} | {r['speedup']:.2f}x | {r['decode_speedup']:.2f}x | "
            f"{TARGETS[r['corpus'].split('-')[0]]} |"
        )
    for r in rows:
        if "frames" in r:
            print(f"\n{r['corpus']}: {r['frames']} frames; end to end {r['frames'] / r['pipeline_s']:.0f} frames/s "
                  f"(decode + resample + resize + shard), decode only {r['frames'] / r['decode_s']:.0f} frames/s, "
                  f"OpenCV loop {r['frames'] / r['baseline_s']:.0f} frames/s")
    print("\nplain loops: PIL open+convert (images, painting), pretty_midi.PrettyMIDI (midi), "
          "cv2.VideoCapture read (video).\nratios: plain loop time / our time (higher is faster).")


if __name__ == "__main__":
    main()
