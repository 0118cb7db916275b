"""Items/s of a model family through the shared trainer against a plain loop over its own
train_step, interleaved per repeat so machine load hits both alike. Used by the per-family
bench modules (music, painting, video); the image GAN's plain loop is written out in
bench/train.py because it also counts FLOPs.

- pipeline: the family through models.trainer.fit (sampler, uint8 -> batch, RNG bookkeeping,
  logging, one checkpoint at the end), as the asset runs it;
- plain loop: the same family's train_step on batches built in memory beforehand, in the
  memory layout the trainer picks;
- pipeline, channels_last off: the first row in the NCHW layout, to show what NHWC gains
  (the families without convolutions ignore the layout).
"""
from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable

import torch

from models.distributed import Distributed
from models.trainer import autocast_for, bf16_supported, fit, uses_channels_last


def pipeline_rate(make_family: Callable, config, steps: int, channels_last: str = "auto") -> float:
    family = make_family()
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        fit(family, config.trainer_config(steps=steps, log_every=steps, checkpoint_every=steps,
                                          channels_last=channels_last), run_dir)
        return steps * config.batch_size / (time.perf_counter() - started)


def plain_rate(make_family: Callable, config, steps: int) -> float:
    family = make_family()
    device = torch.device("cpu")
    family.to(device, uses_channels_last(config.trainer_config(), device))
    autocast = autocast_for(device, bf16_supported(device))
    source = family.rows.batches(config.batch_size, config.seed, Distributed())
    batches = [family.make_batch(next(source), device) for _ in range(steps)]
    source.close()
    started = time.perf_counter()
    for step, batch in enumerate(batches):
        family.train_step(batch, step, autocast)
    return steps * config.batch_size / (time.perf_counter() - started)


def throughput_table(title: str, unit: str, make_family: Callable, config, steps: int, repeats: int) -> str:
    rows = {"pipeline (fit)": [], "pipeline, channels_last off": [], "plain loop": []}
    for _ in range(repeats):
        rows["pipeline (fit)"].append(pipeline_rate(make_family, config, steps))
        rows["pipeline, channels_last off"].append(pipeline_rate(make_family, config, steps, channels_last="off"))
        rows["plain loop"].append(plain_rate(make_family, config, steps))
    medians = {name: statistics.median(values) for name, values in rows.items()}
    return "\n".join([
        f"{title} (batch {config.batch_size}, {steps} steps x {repeats} repeats)",
        f"| loop | {unit}/s median | min | max |", "|---|---|---|---|",
        *(f"| {name} | {medians[name]:.1f} | {min(values):.1f} | {max(values):.1f} |" for name, values in rows.items()),
        f"pipeline / plain = {medians['pipeline (fit)'] / medians['plain loop']:.2f}; "
        f"channels_last on / off = {medians['pipeline (fit)'] / medians['pipeline, channels_last off']:.2f}",
    ])
