"""Ingest at growing corpus sizes: throughput, peak memory, a one-file change, a resume.

    .venv/bin/python bench/scale.py [--images 10000,100000,1000000] [--midi 10000,176000]
                                    [--video 1000,10000] [--scratch /tmp/atelier-scale] [--no-resume]
                                    [--additions 40] [--rounds 3]

Each size is a fresh synthetic corpus of unique files in the scratch folder (32x32 PNGs;
MIDI files of four random voices; 3-second 32x32 MP4 clips). Every ingest runs in a child
process, so the peak RSS is that of the whole process tree (the child and its decoder
workers, summed over /proc every 50 ms). Columns:

- full: a first ingest, everything decoded (the ingest call's own time, without the child's
  start and imports);
- peak MB: the tree's largest summed RSS during the full ingest; main MB: the ingest process's
  own peak (`bench.memory.own_peak_bytes`), without its decoder workers;
- add, edit, remove: adding a file, giving one new content, removing one, each followed by an
  ingest, `--rounds` times each (medians); one-file / full is the median of all of them over
  the full time, and its range the fastest and the slowest of them over the same;
- one-file CPU s: the median CPU seconds of the ingest process itself over them (the
  decoders' one file aside): steadier than seconds on a shared machine, to compare two codes;
- one-file peak MB: the tree's largest peak over the one-file changes, which can lie above the
  full ingest's;
- resume: a fresh ingest SIGKILLed once half the files are in the row cache, then the rerun;
- with --additions N, a second table: N more files added one at a time, each followed by an
  ingest, as a corpus edited a file at a time is: the row cache's batch count before, at most
  and after (each change adds a batch; `RowCache.compact` merges small ones), and the median
  CPU seconds of the first and the last five changes.

Targets (on 2 cores): peak RSS at the largest size within 1.5x of the smallest; a one-file
change under 5% of the full ingest; a resume that costs about the half not yet done.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

INGEST_CHILD = """
import json, sys, time
from bench.memory import own_peak_bytes
from bench.scale import modality_and_config
from corpora.ingest import IngestSettings, ingest
modality, config = modality_and_config(sys.argv[1])
started, cpu = time.perf_counter(), time.process_time()
report = ingest(modality, config, sys.argv[2], sys.argv[3], IngestSettings(workers=2), progress=lambda m: None)
print(json.dumps({"seconds": time.perf_counter() - started, "cpu_s": time.process_time() - cpu,
                  "decoded": report.decoded_files,
                  "main_peak_mb": own_peak_bytes() / 1e6}))
"""


def modality_and_config(kind: str):
    """The modality of a corpus kind and the config its synthetic files are ingested with."""
    if kind == "images":
        from corpora.images import IMAGES, ImageCorpusConfig
        return IMAGES, ImageCorpusConfig(resolution=32)
    if kind == "midi":
        from corpora.midi import MIDI, MidiCorpusConfig
        return MIDI, MidiCorpusConfig()
    from corpora.video import VIDEO, VideoCorpusConfig
    return VIDEO, VideoCorpusConfig(resolution=32, clip_frames=10, clip_hop_frames=10)


def tree_rss_bytes(root_pid: int) -> int:
    """Summed RSS of `root_pid` and every descendant, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack += children.get(pid, [])
    return total


def run_ingest(kind: str, raw: Path, out: Path, kill_when=None) -> dict:
    """One ingest in a child process: wall time, peak tree RSS, and whether it was killed."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", INGEST_CHILD, kind, str(raw), str(out)], cwd=PROJECT,
                             env={**os.environ, "PYTHONPATH": str(PROJECT)}, stdout=subprocess.PIPE,
                             start_new_session=True, text=True)
    peak, killed = 0, False

    def sample() -> None:
        nonlocal peak
        while child.poll() is None:
            peak = max(peak, tree_rss_bytes(child.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    while child.poll() is None:
        if kill_when is not None and kill_when():
            os.killpg(child.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    output = child.communicate()[0]
    sampler.join()
    wall = time.perf_counter() - started
    if killed:
        return {"seconds": wall, "peak_mb": peak / 1e6, "killed": True}
    if child.returncode != 0:
        raise RuntimeError(f"ingest of {raw} failed with exit code {child.returncode}")
    # the ingest's own time, without the interpreter's start and imports
    return {**json.loads(output.strip().splitlines()[-1]), "peak_mb": peak / 1e6, "killed": False}


def cached_files(out: Path) -> int:
    from corpora.row_cache import CACHE_DIR, INDEX_SUFFIX, read_index

    return sum(read_index(path, ["sha256"]).num_rows for path in (out / CACHE_DIR).glob(f"*/*{INDEX_SUFFIX}"))


# ---- synthetic corpora: unique files, written with the libraries directly ----------------------
def write_images(folder: Path, start: int, count: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(start)
    for index in range(start, start + count):
        path = folder / f"c{index % 10}" / f"{index:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(path, compress_level=1)


def write_midis(folder: Path, start: int, count: int) -> None:
    # symusic, not pretty_midi: about 0.4 ms a file against 13 (176,000 files in about two minutes, not 40)
    from symusic import Note, Score, Tempo, Track

    rng = np.random.default_rng(start)
    quarter = 220  # ticks
    onsets, lengths = np.arange(32, dtype=np.int32) * quarter, np.full(32, quarter, np.int32)
    loudness = np.full(32, 90, np.int8)
    for index in range(start, start + count):
        song = Score(quarter)
        song.tempos.append(Tempo(0, 120.0))
        for voice in range(4):
            pitches = 48 + 12 * voice // 2 + rng.integers(0, 12, 32)  # 8 bars of quarter notes
            track = Track(f"voice {voice}", 0, False)
            track.notes = Note.from_numpy(onsets, lengths, pitches.astype(np.int8), loudness)
            song.tracks.append(track)
        path = folder / f"p{index % 10}" / f"{index:07d}.mid"
        path.parent.mkdir(parents=True, exist_ok=True)
        song.dump_midi(str(path))


def write_videos(folder: Path, start: int, count: int) -> None:
    from corpora.video import write_video

    rng = np.random.default_rng(start)
    for index in range(start, start + count):
        base = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        frames = np.stack([np.roll(base, t, axis=1) for t in range(30)])  # 3 s at 10 fps
        write_video(folder / f"s{index % 10}" / f"{index:07d}.mp4", frames, fps=10)


WRITERS = {"images": write_images, "midi": write_midis, "video": write_videos}


def one_file_changes(kind: str, raw: Path, size: int, round_: int = 0) -> dict[str, Callable[[], None]]:
    """Adding a file, giving an existing file new content, and removing a file: each round its
    own new files (indexes from `size` on) and its own file to remove."""
    files = sorted(path for path in raw.rglob("*") if path.is_file())

    def edit() -> None:
        fresh = raw.parent / "fresh"
        WRITERS[kind](fresh, size + 2 * round_ + 1, 1)
        os.replace(next(path for path in fresh.rglob("*") if path.is_file()), files[round_])
        shutil.rmtree(fresh)

    return {"add": lambda: WRITERS[kind](raw, size + 2 * round_, 1), "edit": edit,
            "remove": lambda: files[size // 2 + round_].unlink()}


def cache_batches(out: Path) -> int:
    from corpora.row_cache import CACHE_DIR, INDEX_SUFFIX

    return len(list((out / CACHE_DIR).glob(f"*/b-*{INDEX_SUFFIX}")))


def repeated_additions(kind: str, raw: Path, out: Path, first_index: int, count: int) -> dict:
    before, batches, cpu = cache_batches(out), [], []
    for index in range(first_index, first_index + count):
        WRITERS[kind](raw, index, 1)
        cpu.append(run_ingest(kind, raw, out)["cpu_s"])
        batches.append(cache_batches(out))
    return {"additions": count, "batches_before": before, "batches_max": max(batches), "batches_after": batches[-1],
            "first_cpu_s": float(np.median(cpu[:5])), "last_cpu_s": float(np.median(cpu[-5:]))}


def bench_size(kind: str, size: int, scratch: Path, resume: bool = True, additions: int = 0,
               rounds: int = 1) -> dict:
    raw, out = scratch / f"{kind}-{size}" / "raw", scratch / f"{kind}-{size}" / "out"
    shutil.rmtree(raw.parent, ignore_errors=True)
    WRITERS[kind](raw, 0, size)
    full = run_ingest(kind, raw, out)
    one_file: dict[str, list[float]] = {}
    one_file_cpu, one_file_peak = [], 0.0
    for round_ in range(rounds):
        for change, make in one_file_changes(kind, raw, size, round_).items():
            make()
            result = run_ingest(kind, raw, out)
            one_file.setdefault(change, []).append(result["seconds"])
            one_file_cpu.append(result["cpu_s"])
            one_file_peak = max(one_file_peak, result["peak_mb"])
    changes = [seconds for times in one_file.values() for seconds in times]
    median = float(np.median(changes))
    result = {"kind": kind, "files": size, "full_s": full["seconds"], "files_per_s": size / full["seconds"],
              "peak_mb": full["peak_mb"], "main_peak_mb": full["main_peak_mb"],
              **{f"{change}_s": float(np.median(times)) for change, times in one_file.items()},
              "one_file_share": median / full["seconds"],
              "one_file_share_range": (min(changes) / full["seconds"], max(changes) / full["seconds"]),
              "one_file_cpu_s": float(np.median(one_file_cpu)),
              "one_file_peak_mb": one_file_peak,
              "killed_at_s": float("nan"), "resume_s": float("nan"), "resume_decoded": "-"}
    if additions:  # past the rounds' additions and edits
        result["additions"] = repeated_additions(kind, raw, out, size + 2 * rounds, additions)
    if resume:
        resumed_out = raw.parent / "resumed"
        half = (size + 1) // 2
        killed = run_ingest(kind, raw, resumed_out, kill_when=lambda: cached_files(resumed_out) >= half)
        rerun = run_ingest(kind, raw, resumed_out)
        result.update(killed_at_s=killed["seconds"] if killed["killed"] else float("nan"), resume_s=rerun["seconds"],
                      resume_decoded=rerun["decoded"])
    shutil.rmtree(raw.parent, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default="10000,100000,1000000")
    parser.add_argument("--midi", default="10000,176000")
    parser.add_argument("--video", default="1000,10000")
    parser.add_argument("--scratch", default="/tmp/atelier-scale")
    parser.add_argument("--no-resume", dest="resume", action="store_false", help="skip the kill-and-resume runs")
    parser.add_argument("--additions", type=int, default=0, help="then add this many files one at a time")
    parser.add_argument("--rounds", type=int, default=1,
                        help="one-file changes of each kind per size; medians over them (a shared machine's speed "
                             "moves by a sixth to a quarter between minutes)")
    args = parser.parse_args()
    rows = []
    for kind in WRITERS:
        for size in [int(s) for s in getattr(args, kind).split(",") if s and int(s) > 0]:
            rows.append(bench_size(kind, size, Path(args.scratch), args.resume, args.additions, args.rounds))
            print(rows[-1], flush=True)

    print("\n| corpus | files | full s | files/s | peak MB | main MB | add s | edit s | remove s | one-file / full "
          "| range | one-file CPU s | one-file peak MB | killed at s | resume s | resume decoded |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['files']} | {r['full_s']:.1f} | {r['files_per_s']:.0f} | {r['peak_mb']:.0f} | "
              f"{r['main_peak_mb']:.0f} | "
              f"{r['add_s']:.1f} | {r['edit_s']:.1f} | {r['remove_s']:.1f} | {r['one_file_share']:.1%} | "
              f"{r['one_file_share_range'][0]:.1%}-{r['one_file_share_range'][1]:.1%} | "
              f"{r['one_file_cpu_s']:.2f} | {r['one_file_peak_mb']:.0f} | {r['killed_at_s']:.1f} | {r['resume_s']:.1f} | "
              f"{r['resume_decoded']} |")
    if args.additions:
        print("\n| corpus | files | additions | cache batches before | at most | after | first 5: CPU s | last 5: CPU s |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            a = r["additions"]
            print(f"| {r['kind']} | {r['files']} | {a['additions']} | {a['batches_before']} | {a['batches_max']} | "
                  f"{a['batches_after']} | {a['first_cpu_s']:.2f} | {a['last_cpu_s']:.2f} |")
    for kind in WRITERS:
        sizes = [r for r in rows if r["kind"] == kind]
        if len(sizes) > 1:
            print(f"{kind}: peak RSS at {sizes[-1]['files']} files is {sizes[-1]['peak_mb'] / sizes[0]['peak_mb']:.2f}x "
                  f"that at {sizes[0]['files']} (full ingests), "
                  f"{sizes[-1]['one_file_peak_mb'] / sizes[0]['one_file_peak_mb']:.2f}x (one-file changes)")


if __name__ == "__main__":
    main()
