"""Training data in memory against streamed from the shards (models/batches.py, corpora/streaming.py).

    .venv/bin/python bench/loader.py [--quick] [--repeats 5] [--scratch /tmp/atelier-loader]

Synthetic corpora written straight as shards (no image files): a demo-sized image corpus (60k
32x32 grey, 10 classes), chorale windows (4 voices x 32 steps), and painting corpora of 128x128 RGB
pictures. Every number is a median of interleaved repeats, the two sources side by side:

- raw: rows/s of the batch source alone (`next()` on 64-row batches);
- in a family: items/s of models.trainer.fit at the family's demo profile (image GAN, music
  VAE), timed from building the family's rows (reading the split, for the in-memory source) to
  the last step; the streamed split forced on with the default window;
- memory: peak RSS of a child process that trains the painting GAN (demo profile, 32x32 crops)
  from a streamed corpus and then reads what its metrics read (`eval_rows` of each split).

Targets: streaming at least 0.9 of in-memory in a family's loop; peak RSS at the largest
painting corpus within 1.2x of the smallest. docs/streaming.md has the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from corpora.readers import training_rows  # noqa: E402
from corpora.shards import ShardWriter, TableSpec, TensorColumn, tensor_table  # noqa: E402
from models.batches import LoaderConfig  # noqa: E402
from models.distributed import Distributed  # noqa: E402
from models.trainer import fit  # noqa: E402

SOURCES = {"in memory": LoaderConfig(stream="off"), "streamed": LoaderConfig(stream="on")}
HELDOUT_EVERY = 10  # every 10th row held out, as ingest holds out about 10%
CHUNK = 1000  # rows generated and appended at a time
EVAL_ROWS = 2000  # what the memory child's metrics read of each split (LoaderConfig.eval_rows)

MEMORY_CHILD = """
import json, sys, tempfile
import torch
from bench.memory import own_peak_bytes
torch.set_num_threads(1)
from corpora.readers import training_rows
from models.batches import LoaderConfig
from models.painting_gan.config import PaintingGanConfig
from models.painting_gan.training import PaintingGanFamily, load_pictures
from models.trainer import fit
manifest, steps, eval_rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
loader = LoaderConfig(stream="on", eval_rows=eval_rows)
config = PaintingGanConfig.profile("demo", steps=steps)
family = PaintingGanFamily(config, training_rows(manifest, "images", ["pixels"], loader))
with tempfile.TemporaryDirectory() as run_dir:
    result = fit(family, config.trainer_config(checkpoint_every=steps), run_dir)
trained_kb = own_peak_bytes() // 1024
pictures = load_pictures(manifest, max_rows=loader.eval_rows)
print(json.dumps({"train_rows": family.rows.num_rows, "batch_size": config.batch_size, "trained_kb": trained_kb, "seconds": result.seconds,
                  "eval_read": {name: len(values) for name, values in pictures.items()},
                  "peak_kb": own_peak_bytes() // 1024}))
"""


def write_corpus(folder: Path, spec: TableSpec, count: int, make: Callable[[np.random.Generator, int], tuple]) -> Path:
    """`count` rows of `spec` as shards (ShardWriter, as ingest writes them) and their manifest;
    `make(rng, n)` gives n rows' (tensors, plain columns)."""
    folder.mkdir(parents=True, exist_ok=True)
    writer, rng = ShardWriter(spec, folder, folder, shard_megabytes=256), np.random.default_rng(0)
    for start in range(0, count, CHUNK):
        n = min(CHUNK, count - start)
        tensors, columns = make(rng, n)
        split = ["heldout" if row % HELDOUT_EVERY == 0 else "train" for row in range(start, start + n)]
        writer.append(tensor_table(spec, tensors, {**columns, "split": split}))
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps({"tables": {spec.name: {"shards": [s.to_json() for s in writer.close()]}}}))
    return manifest


def pictures(size: int, channels: int) -> Callable:
    def make(rng: np.random.Generator, n: int) -> tuple:
        # smooth gradients in a random colour with a little noise: compresses about as photos do
        ramp = np.linspace(0, 1, size, dtype=np.float32)
        base = rng.uniform(0, 255, (n, 1, 1, channels)).astype(np.float32)
        image = (base * ramp[None, :, None, None] * ramp[None, None, :, None]
                 + rng.normal(0, 4, (n, size, size, channels)))
        return np.clip(image, 0, 255).astype(np.uint8), {}
    return make


def labelled_images(rng: np.random.Generator, n: int) -> tuple:
    tensors, _ = pictures(32, 1)(rng, n)
    return tensors, {"label": [f"class-{i}" for i in rng.integers(0, 10, n)]}


def chorale_windows(rng: np.random.Generator, n: int) -> tuple:
    from models.music_vae.testing import token_windows

    return token_windows(n=n, voices=4, steps=32, seed=int(rng.integers(1 << 31))), {}


SPECS = {
    "images": TableSpec("images", TensorColumn("pixels", (32, 32, 1)), {"label": pa.string(), "split": pa.string()}),
    "chorale_windows": TableSpec("chorale_windows", TensorColumn("voices", (4, 32)), {"split": pa.string()}),
    "paintings": TableSpec("images", TensorColumn("pixels", (128, 128, 3)), {"split": pa.string()}),
}


def median_row(name: str, rates: dict[str, list[float]], unit: str) -> str:
    memory, streamed = statistics.median(rates["in memory"]), statistics.median(rates["streamed"])
    return f"| {name} | {unit} | {memory:,.0f} | {streamed:,.0f} | {streamed / memory:.2f} |"


def raw_rates(manifest: Path, repeats: int, batches: int) -> dict[str, list[float]]:
    rates = {name: [] for name in SOURCES}
    for _ in range(repeats):
        for name, loader in SOURCES.items():
            rows = training_rows(manifest, "images", ["pixels", "label"], loader,
                                 convert={"label": lambda names: np.zeros(len(names), np.int64)})
            started = time.perf_counter()
            source = rows.batches(64, seed=0, distributed=Distributed())
            for _ in range(batches):
                next(source)
            rates[name].append(batches * 64 / (time.perf_counter() - started))
            source.close()
    return rates


def family_rates(make_family: Callable, repeats: int, steps: int) -> dict[str, list[float]]:
    """Items/s from the manifest to the last step: the in-memory source reads its split before
    `fit`, the streamed one its first window inside it, so both pay for their reading."""
    rates = {name: [] for name in SOURCES}
    for _ in range(repeats):
        for name, loader in SOURCES.items():
            started = time.perf_counter()
            family, config = make_family(loader, steps)
            with tempfile.TemporaryDirectory() as run_dir:
                fit(family, config.trainer_config(checkpoint_every=steps, log_every=steps), run_dir)
            rates[name].append(steps * config.batch_size / (time.perf_counter() - started))
    return rates


def image_gan(manifest: Path) -> Callable:
    from models.image_gan.config import ImageGanConfig
    from models.image_gan.data import class_names_of, training_images
    from models.image_gan.training import ImageGanFamily

    names = class_names_of(manifest)

    def make(loader: LoaderConfig, steps: int):
        config = ImageGanConfig.profile("demo", resolution=32, channels=1, num_classes=len(names), steps=steps)
        return ImageGanFamily(config, training_images(manifest, loader, names), class_names=names), config

    return make


def music_vae(manifest: Path) -> Callable:
    from models.music_vae.config import MusicVaeConfig
    from models.music_vae.training import MusicVaeFamily, training_windows

    def make(loader: LoaderConfig, steps: int):
        config = MusicVaeConfig.profile("demo", kind="chorale", steps=steps)
        return MusicVaeFamily(config, training_windows(manifest, config, loader)), config

    return make


def memory_row(manifest: Path, count: int, steps: int) -> dict:
    child = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(manifest), str(steps), str(EVAL_ROWS)],
                           cwd=PROJECT, capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONPATH": str(PROJECT)})
    return {"pictures": count, **json.loads(child.stdout.strip().splitlines()[-1])}


def throughput_table(scratch: Path, images: int, windows: int, repeats: int, steps: int, raw_batches: int) -> None:
    image_manifest = write_corpus(scratch / "images", SPECS["images"], images, labelled_images)
    music_manifest = write_corpus(scratch / "midi", SPECS["chorale_windows"], windows, chorale_windows)
    print(f"rows/s and items/s, medians of {repeats} interleaved repeats; streamed / in memory\n")
    print("| loop | unit | in memory | streamed | ratio |\n|---|---|---|---|---|")
    print(median_row(f"raw batch source, {images:,} 32x32 images", raw_rates(image_manifest, repeats, raw_batches),
                     "rows/s"))
    print(median_row(f"image GAN demo, rows + fit, {steps} steps", family_rates(image_gan(image_manifest), repeats, steps),
                     "images/s"))
    print(median_row(f"music VAE demo (chorale), rows + fit, {steps} steps",
                     family_rates(music_vae(music_manifest), repeats, steps), "windows/s"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller corpora and fewer steps (a few minutes on an idle machine)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "atelier-loader")
    parser.add_argument("--skip-memory", action="store_true", help="only the throughput table")
    parser.add_argument("--skip-throughput", action="store_true", help="only the memory table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images, windows = (10_000, 10_000) if args.quick else (60_000, 20_000)  # the demo corpora: 60k images
    paintings = (5000, 15_000) if args.quick else (10_000, 50_000)
    steps, raw_batches, memory_steps = (10, 200, 40) if args.quick else (30, 1000, 100)
    shutil.rmtree(args.scratch, ignore_errors=True)
    try:
        if not args.skip_throughput:
            throughput_table(args.scratch, images, windows, args.repeats, steps, raw_batches)
        if args.skip_memory:
            return
        rows = []
        for count in paintings:
            manifest = write_corpus(args.scratch / f"painting-{count}", SPECS["paintings"], count, pictures(128, 3))
            rows.append(memory_row(manifest, count, memory_steps))
            shutil.rmtree(manifest.parent)
        print(f"\npainting GAN demo streamed from 128x128 pictures: {memory_steps} steps, then the metrics' read "
              f"(eval_rows {EVAL_ROWS}); peak RSS of the child\n")
        print("| pictures | corpus MB (uncompressed) | train rows | peak MB after fit | peak MB with eval read | "
              "images/s |\n|---|---|---|---|---|---|")
        for row in rows:
            print(f"| {row['pictures']:,} | {row['pictures'] * 128 * 128 * 3 / 2**20:,.0f} | {row['train_rows']:,} | "
                  f"{row['trained_kb'] / 1024:.0f} | {row['peak_kb'] / 1024:.0f} | "
                  f"{memory_steps * row['batch_size'] / row['seconds']:.1f} |")
        print(f"\npeak RSS at {rows[-1]['pictures']:,} pictures is {rows[-1]['peak_kb'] / rows[0]['peak_kb']:.2f}x "
              f"that at {rows[0]['pictures']:,} (target: within 1.2x)")
    finally:
        shutil.rmtree(args.scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
