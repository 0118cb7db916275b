"""Music VAE rows of bench/train.py: sequences/s (trainer vs plain loop) and the held-out report
(reconstruction, -ELBO and baselines; statistics of prior samples at the gallery's temperature).

    .venv/bin/python -m bench.train --family music [--kind chorale] [--quality --minutes 20]

Throughput: bench/throughput.py (trainer vs plain loop, medians of interleaved repeats).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from bench import throughput
from models.music_vae import metrics as music_metrics
from models.music_vae.config import MusicVaeConfig
from models.music_vae.training import MusicVaeFamily, load_windows
from models.trainer import fit

DEFAULT_MANIFEST = Path("data/shards/midi/manifest.json")


def throughput_table(manifest: Path, kind: str, steps: int, repeats: int) -> str:
    windows = load_windows(manifest, kind)["train"]
    config = MusicVaeConfig.profile("demo", kind=kind)
    return throughput.throughput_table(f"music VAE ({kind}, demo profile)", "sequences",
                                       lambda: MusicVaeFamily(config, windows), config, steps, repeats)


def quality_table(manifest: Path, kind: str, minutes: float | None) -> str:
    data = load_windows(manifest, kind)
    runs = {"demo": MusicVaeConfig.profile("demo", kind=kind)}
    if minutes:
        runs[f"cpu-long {minutes:g} min"] = MusicVaeConfig.profile("cpu-long", kind=kind)
    out = []
    for name, config in runs.items():
        family = MusicVaeFamily(config, data["train"])
        budget = {"max_minutes": minutes} if name != "demo" else {}
        with tempfile.TemporaryDirectory() as run_dir:
            result = fit(family, config.trainer_config(**budget), run_dir)
        family.model.cpu()
        report = music_metrics.evaluate(family.model, data["train"], data["heldout"], seed=config.seed)
        out += [f"### {name}: {result.step} steps in {result.seconds:.0f} s", music_metrics.format_report(report), ""]
    return "\n".join(out)
