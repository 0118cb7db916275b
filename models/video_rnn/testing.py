"""A tiny video RNN for the tests that run every family (tests/reliability): the same family
from the same synthetic clips every time it is built, in any process.

The shape every family's `testing` module shares: `VARIANTS`, `tiny(steps, checkpoint_every,
variant)`, `bundle_round_trip(family, folder)` and `WEIGHTS_LOADERS`.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from models.bundle import save_bundle
from models.video_rnn.config import VideoRnnConfig
from models.video_rnn.sampling import load_bundle, load_model
from models.video_rnn.training import VideoRnnFamily, export_bundle

VARIANTS: tuple[str, ...] = ("",)


def tiny(steps: int, checkpoint_every: int, variant: str = ""):
    """(family, models.trainer.TrainerConfig): an 8x8 ConvLSTM with a PixelCNN head on noise clips."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown video RNN variant {variant!r}: choose one of {VARIANTS}")
    clips = np.random.default_rng(3).integers(0, 256, size=(10, 6, 8, 8, 3), dtype=np.uint8)  # T=6 > M+K: random starts
    config = VideoRnnConfig.profile("demo", context_frames=3, horizon=2, resolution=8, channels=1, patch=2, hidden=(8,),
                                    kernel=3, cond_channels=4, head_width=8, head_layers=2, head_first_kernel=3,
                                    head_kernel=3, head_frames=1, batch_size=4, steps=steps, seed=6)
    trainer = config.trainer_config(steps=steps, checkpoint_every=checkpoint_every, log_every=1000, keep_checkpoints=3)
    return VideoRnnFamily(config, clips), trainer


def bundle_round_trip(family: VideoRnnFamily, folder: Path) -> tuple[dict, dict]:
    """(exported bundle, the bundle read back weights-only); the weights must fit the model."""
    bundle = export_bundle(family, step=0)
    loaded = load_bundle(save_bundle(bundle, Path(folder) / "bundle.pt"))
    load_model(loaded)
    return bundle, loaded


# every loader of a file a registry or a user may hand the family
WEIGHTS_LOADERS: dict[str, Callable[[Path], object]] = {"load_bundle": load_bundle}


# Asset config (by asset name) that makes the family's Dagster side run in seconds on tiny corpora:
# what the end-to-end tests pass for this family.
TINY_RUN_CONFIG = {
    "video_rnn": {"steps": 2, "batch_size": 4},
    "video_gallery": {"clips": 1, "sampled_clips": 0},
}
