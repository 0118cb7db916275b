"""Painting GAN rows of bench/train.py: images/s (trainer vs plain loop) and the KID table.

    .venv/bin/python -m bench.train --family painting [--quality]
    .venv/bin/python -m bench.train --family painting --quality --skip-throughput --profile demo --seed 1
    .venv/bin/python -m bench.train --family painting --quality --skip-throughput --profile cpu-long
    .venv/bin/python -m bench.train --family painting --quality --skip-throughput --sheets /tmp/sheets  # + samples

Throughput of both demo profiles (StyleGAN2-lite at 32x32, FastGAN at 64x64); quality of each
profile asked for (default: both demos) to its end, against the real-vs-real floor and an
untrained generator (models.painting_gan.metrics).
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

from bench import throughput
from bench.runs import row_name, timed_fit
from common.atomic import atomic_write_bytes
from corpora.preview import contact_sheet
from corpora.shards import png_bytes
from models.bundle import save_bundle
from models.painting_gan import metrics
from models.painting_gan.config import PaintingGanConfig
from models.painting_gan.sampling import load_generator, sample
from models.painting_gan.training import PaintingGanFamily, export_bundle, load_pictures

DEFAULT_MANIFEST = Path("data/shards/painting/manifest.json")
EVAL_SAMPLES = 512
SHEET_SAMPLES, SHEET_CELL = 16, 128  # a contact sheet's samples, and their side on it (64x64 shown at 2x)
DEMO_PROFILES = ("demo", "stylegan2-demo")


def throughput_table(manifest: Path, steps: int, repeats: int) -> str:
    pictures = load_pictures(manifest)["train"]
    tables = []
    for profile in DEMO_PROFILES:
        config = PaintingGanConfig.profile(profile)
        title = f"painting GAN ({profile} profile, {config.architecture}, {config.resolution}x{config.resolution} crops)"
        tables.append(throughput.throughput_table(title, "images", lambda: PaintingGanFamily(config, pictures), config,
                                                  steps, repeats))
    return "\n\n".join(tables)


def quality_table(manifest: Path, profiles=DEMO_PROFILES, seeds=(0,), overrides: dict | None = None,
                  sheets: Path | None = None) -> str:
    """The kid_style table of each profile and seed; with `sheets`, each row's SHEET_SAMPLES samples
    (seed 0, shown at SHEET_CELL pixels) as a PNG in that folder, named after the row."""
    pictures = load_pictures(manifest)
    out = []
    for profile in profiles:
        for seed in seeds:
            config = PaintingGanConfig.profile(profile, seed=seed, **(overrides or {}))
            family = PaintingGanFamily(config, pictures["train"])
            with tempfile.TemporaryDirectory() as run_dir:
                run = timed_fit(family, config.trainer_config(), run_dir)
                generator = load_generator(save_bundle(export_bundle(family, run.result.step), Path(run_dir) / "bundle.pt"))
            report = metrics.painting_reports(
                {"untrained_generator": metrics.untrained_generator(config), "model": generator},
                pictures["train"], heldout=pictures["heldout"], n=EVAL_SAMPLES)
            row = row_name(profile, seed, overrides or {})
            if sheets is not None:
                picture = contact_sheet(sample(generator, SHEET_SAMPLES, seed=0), cell=SHEET_CELL)
                file_name = re.sub(r"[^\w.=-]+", "_", row) + ".png"
                atomic_write_bytes(Path(sheets) / file_name, png_bytes(picture))
            out += [f"### {run.describe(row)}",
                    metrics.format_painting_report(report), ""]
    return "\n".join(out)
