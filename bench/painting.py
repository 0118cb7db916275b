"""Painting GAN rows of bench/train.py: images/s (trainer vs plain loop) and the KID table.

    .venv/bin/python -m bench.train --family painting [--quality --minutes 20]
    .venv/bin/python -m bench.train --family painting --quality --skip-throughput --profile demo --seed 1

Throughput and quality of both demo profiles (StyleGAN2-lite at 32x32, FastGAN at 64x64): each
to its end, and with --minutes a cpu-long run stopped by that budget, each against the
real-vs-real floor and an untrained generator (models.painting_gan.metrics).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from bench import throughput
from models.bundle import save_bundle
from models.painting_gan import metrics
from models.painting_gan.config import PaintingGanConfig
from models.painting_gan.sampling import load_generator
from models.painting_gan.training import PaintingGanFamily, export_bundle, load_pictures
from models.trainer import fit

DEFAULT_MANIFEST = Path("data/shards/painting/manifest.json")
EVAL_SAMPLES = 512
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


def quality_table(manifest: Path, minutes: float | None, profiles=DEMO_PROFILES, seeds=(0,)) -> str:
    pictures = load_pictures(manifest)
    runs = {f"{profile} seed {seed}": (PaintingGanConfig.profile(profile, seed=seed), {})
            for profile in profiles for seed in seeds}
    if minutes:
        runs[f"cpu-long {minutes:g} min"] = (PaintingGanConfig.profile("cpu-long"), {"max_minutes": minutes})
    out = []
    for name, (config, budget) in runs.items():
        family = PaintingGanFamily(config, pictures["train"])
        with tempfile.TemporaryDirectory() as run_dir:
            result = fit(family, config.trainer_config(**budget), run_dir)
            generator = load_generator(save_bundle(export_bundle(family, result.step), Path(run_dir) / "bundle.pt"))
        report = metrics.painting_reports(
            {"untrained_generator": metrics.untrained_generator(config), "model": generator},
            pictures["train"], heldout=pictures["heldout"], n=EVAL_SAMPLES)
        out += [f"### {name}: {result.step} steps in {result.seconds:.0f} s",
                metrics.format_painting_report(report), ""]
    return "\n".join(out)
