"""Items/s of a model family through the shared trainer against a plain loop over its own
train_step, interleaved per repeat so machine load hits both alike. Used by the per-family
bench modules (music, painting, video); the image GAN's plain loop is written out in
bench/train.py because it also counts FLOPs.

- pipeline: the family through models.trainer.fit (sampler, uint8 -> batch, RNG bookkeeping,
  logging, one checkpoint at the end), as the asset runs it;
- plain loop: the same family's train_step on batches built in memory beforehand.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable

import torch

from models.distributed import Distributed
from models.trainer import autocast_for, bf16_supported, fit


def pipeline_rate(make_family: Callable, config, steps: int) -> float:
    family = make_family()
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        fit(family, config.trainer_config(steps=steps, log_every=steps, checkpoint_every=steps), run_dir)
        return steps * config.batch_size / (time.perf_counter() - started)


def plain_rate(make_family: Callable, config, steps: int) -> float:
    family = make_family()
    device = torch.device("cpu")
    family.to(device, channels_last=False)
    autocast = autocast_for(device, bf16_supported(device))
    source = family.rows.batches(config.batch_size, config.seed, Distributed())
    batches = [family.make_batch(next(source), device) for _ in range(steps)]
    source.close()
    started = time.perf_counter()
    for step, batch in enumerate(batches):
        family.train_step(batch, step, autocast)
    return steps * config.batch_size / (time.perf_counter() - started)


def throughput_table(title: str, unit: str, make_family: Callable, config, steps: int, repeats: int) -> str:
    pipeline, plain = [], []
    for _ in range(repeats):
        pipeline.append(pipeline_rate(make_family, config, steps))
        plain.append(plain_rate(make_family, config, steps))
    ratio = statistics.median(pipeline) / statistics.median(plain)
    return "\n".join([
        f"{title} (batch {config.batch_size}, {steps} steps x {repeats} repeats)",
        f"| loop | {unit}/s median | min | max |", "|---|---|---|---|",
        f"| pipeline (fit) | {statistics.median(pipeline):.1f} | {min(pipeline):.1f} | {max(pipeline):.1f} |",
        f"| plain loop | {statistics.median(plain):.1f} | {min(plain):.1f} | {max(plain):.1f} |",
        f"pipeline / plain = {ratio:.2f}",
    ])
