"""Music VAE rows of bench/train.py: sequences/s (trainer vs plain loop) and the held-out report
(reconstruction, -ELBO and baselines; statistics of prior samples at the gallery's temperature).

    .venv/bin/python -m bench.train --family music [--kind chorale] [--quality [--profile cpu-long]]

Throughput: bench/throughput.py (trainer vs plain loop, medians of interleaved repeats).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from bench import throughput
from bench.runs import row_name, timed_fit
from models.music_vae import metrics as music_metrics
from models.music_vae.config import MusicVaeConfig
from models.music_vae.training import MusicVaeFamily, load_windows

DEFAULT_MANIFEST = Path("data/shards/midi/manifest.json")


def throughput_table(manifest: Path, steps: int, repeats: int, kind: str = "chorale") -> str:
    windows = load_windows(manifest, kind)["train"]
    config = MusicVaeConfig.profile("demo", kind=kind)
    return throughput.throughput_table(f"music VAE ({kind}, demo profile)", "sequences",
                                       lambda: MusicVaeFamily(config, windows), config, steps, repeats)


def quality_table(manifest: Path, profiles=("demo",), seeds=(0,), overrides: dict | None = None,
                  kind: str = "chorale") -> str:
    data = load_windows(manifest, kind)
    out = []
    for profile in profiles:
        for seed in seeds:
            config = MusicVaeConfig.profile(profile, kind=kind, seed=seed, **(overrides or {}))
            family = MusicVaeFamily(config, data["train"])
            with tempfile.TemporaryDirectory() as run_dir:
                run = timed_fit(family, config.trainer_config(), run_dir)
            family.model.cpu()
            report = music_metrics.evaluate(family.model, data["train"], data["heldout"], seed=config.seed)
            out += [f"### {run.describe(row_name(profile, seed, overrides or {}))}", music_metrics.format_report(report), ""]
    return "\n".join(out)
