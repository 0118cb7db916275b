"""Music VAE rows of bench/train.py: sequences/s (trainer vs plain loop) and the accuracy table.

    .venv/bin/python -m bench.train --family music [--kind chorale] [--quality --minutes 20]

Throughput, interleaved per repeat so machine load hits both alike (medians):
- pipeline: MusicVaeFamily through models.trainer.fit (sampler, uint8 -> batch, transposition,
  logging, a checkpoint at the end), as the music_vae asset runs it;
- plain loop: the same family's train_step on batches built in memory beforehand.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from models import music_metrics
from models.music_vae import MusicVaeConfig, MusicVaeFamily, load_windows
from models.trainer import autocast_for, bf16_supported, fit

DEFAULT_MANIFEST = Path("data/shards/midi/manifest.json")


def _pipeline_rate(config: MusicVaeConfig, windows, steps: int) -> float:
    family = MusicVaeFamily(config, windows)
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        fit(family, config.trainer_config(steps=steps, log_every=steps, checkpoint_every=steps), run_dir)
        return steps * config.batch_size / (time.perf_counter() - started)


def _plain_rate(config: MusicVaeConfig, windows, steps: int) -> float:
    family = MusicVaeFamily(config, windows)
    device = torch.device("cpu")
    family.to(device, channels_last=False)
    autocast = autocast_for(device, bf16_supported(device))
    generator = torch.Generator().manual_seed(config.seed)
    batches = [family.make_batch(torch.randint(0, len(windows), (config.batch_size,), generator=generator), device)
               for _ in range(steps)]
    started = time.perf_counter()
    for step, batch in enumerate(batches):
        family.train_step(batch, step, autocast)
    return steps * config.batch_size / (time.perf_counter() - started)


def throughput_table(manifest: Path, kind: str, steps: int, repeats: int) -> str:
    windows = load_windows(manifest, kind)["train"]
    config = MusicVaeConfig.profile("demo", kind=kind)
    pipeline, plain = [], []
    for _ in range(repeats):
        pipeline.append(_pipeline_rate(config, windows, steps))
        plain.append(_plain_rate(config, windows, steps))
    ratio = statistics.median(pipeline) / statistics.median(plain)
    return "\n".join([
        f"music VAE ({kind}, demo profile, batch {config.batch_size}, {steps} steps x {repeats} repeats)",
        "| loop | sequences/s median | min | max |", "|---|---|---|---|",
        f"| pipeline (fit) | {statistics.median(pipeline):.0f} | {min(pipeline):.0f} | {max(pipeline):.0f} |",
        f"| plain loop | {statistics.median(plain):.0f} | {min(plain):.0f} | {max(plain):.0f} |",
        f"pipeline / plain = {ratio:.2f}",
    ])


def quality_table(manifest: Path, kind: str, minutes: float | None) -> str:
    data = load_windows(manifest, kind)
    runs = {"demo": MusicVaeConfig.profile("demo", kind=kind)}
    if minutes:
        runs[f"cpu-long {minutes:g} min"] = MusicVaeConfig.profile("cpu-long", kind=kind)
    out = []
    for name, config in runs.items():
        family = MusicVaeFamily(config, data["train"])
        budget = {"max_seconds": minutes * 60} if name != "demo" else {}
        with tempfile.TemporaryDirectory() as run_dir:
            result = fit(family, config.trainer_config(**budget), run_dir)
        family.model.cpu()
        report = music_metrics.evaluate(family.model, data["train"], data["heldout"], n_samples=64, seed=0)
        out += [f"### {name}: {result.step} steps in {result.seconds:.0f} s", music_metrics.format_report(report), ""]
    return "\n".join(out)
